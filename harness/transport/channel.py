"""`Channel`: one connected byte stream for the migration stream and its return path.

Strategy: the base class owns everything that is the same for every transport -- the
send/receive loops (`sendall`, scatter-gather `send_buffers`, `read_exact`), byte
counters, per-call deadlines, the one-reader/one-writer rule, and the
OPEN -> SHUT_DOWN -> CLOSED run-state -- on top of two primitives a backend supplies:
`_read_once` and `_write_once` (one syscall's worth, waiting if needed).  Two backends:

* `SocketChannel` (tcp, unix, an inherited socket).  Without a deadline the socket
  blocks in the kernel like QEMU's migration thread does (no extra syscall per 1 MiB);
  with one, `poll()` + `MSG_DONTWAIT`, so the socket's own mode never changes and a
  reader and a writer can use different timeouts.  `shutdown()` is
  `shutdown(SHUT_RDWR)`, as QEMU's `migrate_cancel` does (`qemu_file_shutdown`); it
  wakes threads blocked in the kernel and tells the peer.
* `FdChannel` (exec pipes, files, an inherited pipe).  The fds are non-blocking and a
  thread only ever blocks in `poll()` together with a self-pipe, which `shutdown()`
  fires.  An `exec:` child's exit status turns EOF/EPIPE into `ExecFailed`.

`close()` is idempotent: it wakes a thread still inside a call, waits (bounded) for it to
leave, then releases the fds and reaps an exec child.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Self

from .errors import ChannelClosed, ChannelTimeout, ExecFailed, TransportError
from .exec_child import ExecChild
from .waiting import Deadline, Wait, Waker, wait_fd

__all__ = [
    "IOV_MAX",
    "UNIX_SOCKET_BUFFER",
    "Buffer",
    "Channel",
    "ChannelClosed",
    "ChannelState",
    "ChannelTimeout",
    "FdChannel",
    "SocketChannel",
]

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
#: iovecs per sendmsg/writev call (Linux UIO_MAXIOV)
IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 1024
#: SO_SNDBUF/SO_RCVBUF for unix sockets (the kernel caps it at net.core.wmem_max/rmem_max)
UNIX_SOCKET_BUFFER = 4 * 1024 * 1024
#: prefer_latency(): socket buffers, and the unsent bytes TCP may hold (TCP_NOTSENT_LOWAT)
LATENCY_SOCKET_BUFFER = 128 << 10
LATENCY_UNSENT = 16 << 10
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # linux/tcp.h
#: socket flags as plain ints (IntFlag's `|` costs microseconds on every send)
_NOSIGNAL = int(socket.MSG_NOSIGNAL)
_DONTWAIT = int(socket.MSG_DONTWAIT)
#: how long close() waits for a woken thread to leave a send/receive
_LEAVE_TIMEOUT = 5.0
_EXEC_EXIT_TIMEOUT = 10.0
_EXEC_JUDGE_WAIT = 1.0
#: after shutdown() (migrate_cancel) the command's verdict is moot: kill it sooner
_EXEC_ABANDON_WAIT = 1.0


class ChannelState(enum.Enum):
    OPEN = "open"
    SHUT_DOWN = "shut-down"
    CLOSED = "closed"


class Channel:
    """A connected bidirectional byte stream (abstract: see `SocketChannel`, `FdChannel`).

    At most one thread receives and one thread sends at a time (the return-path reader
    and the migration thread); `shutdown()` and `close()` may come from any thread.
    """

    def __init__(self, peer: str, *, readable: bool, writable: bool) -> None:
        self.peer = peer
        self.bytes_sent = 0
        self.bytes_received = 0
        self._readable = readable
        self._writable = writable
        self._timeout: float | None = None
        self._state = ChannelState.OPEN
        self._state_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._waker = Waker()

    # -- what a backend provides --------------------------------------------------------

    def fileno(self) -> int:
        """The fd to poll for incoming data (the write fd for a write-only channel)."""
        raise NotImplementedError

    @property
    def has_return_path(self) -> bool:
        """Whether both directions work (sockets: always; exec: stdout connected; file: no)."""
        return self._readable and self._writable

    def prefer_latency(self) -> None:
        """Keep little data queued in this channel (postcopy: a requested page must not
        wait behind much of the background push).  Only sockets have queues to shrink."""

    def wait_writable(self, timeout: float) -> bool:
        """Wait up to `timeout` s until a send would not block (so that a writer need not
        block inside a lock others wait for); False if it still would.  Channels without
        a socket queue to poll say True at once."""
        return True

    def _read_once(self, view: memoryview, deadline: Deadline | None) -> int:
        raise NotImplementedError

    def _write_once(self, views: list[memoryview], deadline: Deadline | None) -> int:
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Wake threads blocked inside a syscall (the waker covers those in poll())."""

    def _release(self, abandoned: bool) -> ExecFailed | None:
        """Close the fds (and reap a child); return an error to raise from close().
        `abandoned`: the channel was shut down first, so nobody waits for a verdict."""
        raise NotImplementedError

    def _broken(self, exc: OSError, verb: str) -> ChannelClosed:
        return ChannelClosed(f"{self.peer}: {verb} failed: {exc.strerror or exc}")

    def _at_eof(self) -> None:
        """Called when a receive sees EOF; may raise (an exec command that failed)."""

    # -- public API -----------------------------------------------------------------------

    @property
    def state(self) -> ChannelState:
        return self._state

    @property
    def timeout(self) -> float | None:
        return self._timeout

    def set_timeout(self, seconds: float | None) -> None:
        """Deadline for each later send/receive call (None: wait until data or shutdown)."""
        if seconds is not None:
            Deadline(seconds)  # validates
        self._timeout = seconds

    def sendall(self, data: Buffer) -> None:
        """Send every byte of `data` (raises ChannelClosed / ChannelTimeout)."""
        self.send_buffers([data])

    def send_buffers(self, buffers: Sequence[Buffer]) -> None:
        """Send the concatenation of `buffers` with scatter-gather syscalls (<= IOV_MAX
        iovecs each), resuming correctly after partial sends."""
        views = [view for view in _byte_views(buffers) if len(view)]
        with self._using(self._write_lock, "send"):
            deadline = Deadline.after(self._timeout)
            index, offset = 0, 0
            while index < len(views):
                batch = views[index:index + IOV_MAX]
                batch[0] = batch[0][offset:]
                sent = self._write_op(batch, deadline)
                self.bytes_sent += sent
                index, offset = _advance(views, index, offset, sent)

    def send_gathered(self, total: int, write: Callable[[int, int, int], int]) -> None:
        """Send `total` bytes that `write(fd, flags, done)` puts straight into the fd, one
        syscall's worth per call from byte `done` on (flags >= 0: sendmsg flags; < 0: a
        writev) -- compiled page records with iovecs from guest RAM (ram_saver.Records)
        -- under the lock, deadline, shutdown and counters of `send_buffers`."""
        with self._using(self._write_lock, "send"):
            deadline = Deadline.after(self._timeout)
            fd, flags = self._gather_target(deadline)
            done = 0
            while done < total:
                try:
                    sent = write(fd, flags, done)
                except BlockingIOError:
                    self._wait(fd, select.POLLOUT, deadline, "send")
                    continue
                except OSError as exc:
                    self._raise_if_stopped()
                    raise self._broken(exc, "send") from exc
                done += sent
                self.bytes_sent += sent

    def _gather_target(self, deadline: Deadline | None) -> tuple[int, int]:
        """(fd, flags) for `send_gathered`'s writes."""
        raise NotImplementedError

    def recv_into(self, view: Buffer) -> int:
        """Receive up to len(view) bytes into `view`; 0 means EOF."""
        target = _writable_view(view)
        with self._using(self._read_lock, "receive"):
            count = self._read_op(target, Deadline.after(self._timeout))
            if count == 0 and len(target):
                self._at_eof()
        self.bytes_received += count
        return count

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly `n` bytes; EOF first -> ChannelClosed.  `timeout` bounds the whole
        call (default: the channel's timeout)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"read_exact needs a byte count >= 0, not {n!r}")
        buffer = bytearray(n)
        self.recv_exact_into(buffer, timeout)
        return bytes(buffer)

    def recv_exact_into(self, view: Buffer, timeout: float | None = None) -> None:
        """Fill all of `view` (no intermediate copy); EOF first -> ChannelClosed."""
        target = _writable_view(view)
        with self._using(self._read_lock, "receive"):
            deadline = Deadline.after(self._timeout if timeout is None else timeout)
            got = 0
            while got < len(target):
                count = self._read_op(target[got:], deadline)
                if count == 0:
                    self._at_eof()
                    raise ChannelClosed(f"{self.peer}: connection closed after {got} of "
                                        f"{len(target)} bytes")
                got += count
                self.bytes_received += count

    def shutdown(self) -> None:
        """Stop the channel now: threads blocked in send/receive raise ChannelClosed
        (`migrate_cancel`).  Sockets also tell the peer (FIN).  Idempotent."""
        with self._state_lock:
            if self._state is not ChannelState.OPEN:
                return
            self._state = ChannelState.SHUT_DOWN
        self._wake_all()

    def close(self) -> None:
        """Release everything (idempotent).  An exec command that failed raises
        ExecFailed here, once, unless the channel had been shut down."""
        with self._state_lock:
            if self._state is ChannelState.CLOSED:
                return
            was_open = self._state is ChannelState.OPEN
            self._state = ChannelState.CLOSED
        if not self._wait_until_idle():
            log.warning("%s: a thread is still inside send/receive; leaking its fds", self.peer)
            return
        error = self._release(abandoned=not was_open)
        self._waker.close()
        if error is not None and was_open:
            raise error

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.peer} {self._state.value} "
                f"sent={self.bytes_sent} received={self.bytes_received}>")

    # -- machinery ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _using(self, lock: threading.Lock, verb: str) -> Iterator[None]:
        allowed = self._readable if verb == "receive" else self._writable
        if not allowed:
            direction = "write-only" if verb == "receive" else "read-only"
            raise ChannelClosed(f"{self.peer}: cannot {verb}: the channel is {direction}"
                                + (" (it has no return path)" if verb == "receive" else ""))
        if not lock.acquire(blocking=False):
            self._raise_if_stopped()
            raise TransportError(f"{self.peer}: two threads tried to {verb} at once "
                                 "(a channel has one reader and one writer)")
        try:
            self._raise_if_stopped()
            yield
        finally:
            lock.release()

    def _raise_if_stopped(self) -> None:
        if self._state is ChannelState.SHUT_DOWN:
            raise ChannelClosed(f"{self.peer}: the channel was shut down")
        if self._state is ChannelState.CLOSED:
            raise ChannelClosed(f"{self.peer}: the channel is closed")

    def _read_op(self, view: memoryview, deadline: Deadline | None) -> int:
        try:
            count = self._read_once(view, deadline)
        except TransportError:
            raise
        except OSError as exc:
            self._raise_if_stopped()
            raise self._broken(exc, "receive") from exc
        if count == 0:
            self._raise_if_stopped()  # a shutdown looks like EOF from inside recv()
        return count

    def _write_op(self, views: list[memoryview], deadline: Deadline | None) -> int:
        try:
            return self._write_once(views, deadline)
        except TransportError:
            raise
        except OSError as exc:
            self._raise_if_stopped()
            raise self._broken(exc, "send") from exc

    def _wait(self, fd: int, events: int, deadline: Deadline | None, verb: str) -> None:
        """Block until `fd` is ready; raise if shut down or out of time."""
        outcome = wait_fd(fd, events, self._waker, deadline)
        if outcome is Wait.WOKEN:
            self._raise_if_stopped()
            raise ChannelClosed(f"{self.peer}: {verb} was interrupted")
        if outcome is Wait.EXPIRED:
            seconds = deadline.seconds if deadline else 0.0
            raise ChannelTimeout(f"{self.peer}: {verb} timed out after {seconds:g} s")

    def _wake_all(self) -> None:
        # the socket's shutdown first: a woken thread may close the channel at once, and
        # a shutdown after that close would be lost (see SocketChannel._release)
        self._interrupt()
        self._waker.wake()

    def _wait_until_idle(self) -> bool:
        """Take both direction locks, waking their holders first if needed."""
        for lock in (self._read_lock, self._write_lock):
            if lock.acquire(blocking=False):
                continue
            self._wake_all()
            if not lock.acquire(timeout=_LEAVE_TIMEOUT):
                return False
        return True


class SocketChannel(Channel):
    """A connected stream socket (tcp, unix, or inherited); owns the socket."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        super().__init__(peer, readable=True, writable=True)
        sock.setblocking(True)
        tune_socket(sock)
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def sock(self) -> socket.socket:
        """The underlying socket (for getsockopt and the like; do not read or write it)."""
        return self._sock

    def prefer_latency(self) -> None:
        """Small socket buffers, and for TCP little unsent data (TCP_NOTSENT_LOWAT)."""
        sock = self._sock
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LATENCY_SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LATENCY_SOCKET_BUFFER)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, LATENCY_UNSENT)

    def wait_writable(self, timeout: float) -> bool:
        fd = self._sock.fileno()
        if fd < 0:  # closed under us: let the send say so
            return True
        # woken (shut down) counts as writable too: the send then reports why
        return wait_fd(fd, select.POLLOUT, self._waker, Deadline(timeout)) is not Wait.EXPIRED

    def _read_once(self, view: memoryview, deadline: Deadline | None) -> int:
        if deadline is None:
            return self._sock.recv_into(view)
        while True:
            try:
                return self._sock.recv_into(view, 0, _DONTWAIT)
            except BlockingIOError:
                self._wait(self._sock.fileno(), select.POLLIN, deadline, "receive")

    def _gather_target(self, deadline: Deadline | None) -> tuple[int, int]:
        return self._sock.fileno(), _NOSIGNAL if deadline is None else _NOSIGNAL | _DONTWAIT

    def _write_once(self, views: list[memoryview], deadline: Deadline | None) -> int:
        flags = _NOSIGNAL if deadline is None else _NOSIGNAL | _DONTWAIT
        while True:
            try:
                if len(views) == 1:
                    return self._sock.send(views[0], flags)
                return self._sock.sendmsg(views, (), flags)
            except BlockingIOError:
                self._wait(self._sock.fileno(), select.POLLOUT, deadline, "send")

    def _interrupt(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _release(self, abandoned: bool) -> ExecFailed | None:
        if abandoned:
            # a shut-down channel ends its connection even if another process holds a dup
            # of the socket (the destination's vCPU process writes page requests on one):
            # close() alone would leave the peer waiting, and a shutdown that raced with
            # this close (the thread that asked for it preempted) would find no fd
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        return None


class FdChannel(Channel):
    """Pipes or a file: `read_fd` (None: write-only) and `write_fd` (None: read-only),
    owned by the channel, plus the exec child behind them, if any."""

    def __init__(self, peer: str, *, read_fd: int | None, write_fd: int | None,
                 child: ExecChild | None = None,
                 exit_timeout: float = _EXEC_EXIT_TIMEOUT) -> None:
        super().__init__(peer, readable=read_fd is not None, writable=write_fd is not None)
        for fd in (read_fd, write_fd):
            if fd is not None:
                os.set_blocking(fd, False)
        self._read_fd = read_fd
        self._write_fd = write_fd
        self.child = child
        self._exit_timeout = exit_timeout
        self._child_reported = False

    def fileno(self) -> int:
        fd = self._read_fd if self._read_fd is not None else self._write_fd
        assert fd is not None
        return fd

    def _read_once(self, view: memoryview, deadline: Deadline | None) -> int:
        assert self._read_fd is not None
        while True:
            try:
                return os.readv(self._read_fd, [view])
            except BlockingIOError:
                self._wait(self._read_fd, select.POLLIN, deadline, "receive")

    def _gather_target(self, deadline: Deadline | None) -> tuple[int, int]:
        assert self._write_fd is not None
        return self._write_fd, -1  # non-blocking fd: writev

    def _write_once(self, views: list[memoryview], deadline: Deadline | None) -> int:
        assert self._write_fd is not None
        while True:
            try:
                return os.writev(self._write_fd, views)
            except BlockingIOError:
                self._wait(self._write_fd, select.POLLOUT, deadline, "send")

    def _broken(self, exc: OSError, verb: str) -> ChannelClosed:
        if exc.errno == errno.EPIPE and self.child is not None:
            failure = self.child.failure(wait=_EXEC_JUDGE_WAIT)
            if failure is not None:
                self._child_reported = True
                return failure
            return ChannelClosed(f"{self.peer}: the command stopped reading its input "
                                 f"after {self.bytes_sent} bytes")
        return super()._broken(exc, verb)

    def _at_eof(self) -> None:
        if self.child is None:
            return
        failure = self.child.failure(wait=_EXEC_JUDGE_WAIT)
        if failure is not None:
            self._child_reported = True
            raise failure

    def _release(self, abandoned: bool) -> ExecFailed | None:
        for fd in (self._write_fd, self._read_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self.child is None:
            return None
        timeout = min(self._exit_timeout, _EXEC_ABANDON_WAIT) if abandoned else self._exit_timeout
        error = self.child.reap(timeout)
        return None if self._child_reported else error


def tune_socket(sock: socket.socket) -> None:
    """Unix: 4 MiB send/receive buffers; TCP: TCP_NODELAY (the return path is latency
    bound; bulk writes are >= 1 MiB anyway).  Best effort: the kernel may cap buffers."""
    with contextlib.suppress(OSError):
        if sock.family == socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UNIX_SOCKET_BUFFER)
        elif sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _byte_views(buffers: Sequence[Buffer]) -> list[memoryview]:
    if isinstance(buffers, (bytes, bytearray, memoryview)):
        raise TypeError("send_buffers takes a list of buffers, not a single buffer "
                        "(use sendall)")
    views = []
    for index, item in enumerate(buffers):
        try:
            view = memoryview(item)
        except TypeError:
            raise TypeError(f"buffer {index} is a {type(item).__name__}, "
                            "not a bytes-like object") from None
        views.append(_flat(view, f"buffer {index}"))
    return views


def _writable_view(buffer: Buffer) -> memoryview:
    try:
        view = memoryview(buffer)
    except TypeError:
        raise TypeError(f"cannot receive into a {type(buffer).__name__}: "
                        "it is not a bytes-like object") from None
    if view.readonly:
        raise TypeError(f"cannot receive into a read-only {type(buffer).__name__}")
    return _flat(view, "the receive buffer")


def _flat(view: memoryview, what: str) -> memoryview:
    if not view.c_contiguous:
        raise TypeError(f"{what} is not C-contiguous")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _advance(views: list[memoryview], index: int, offset: int, sent: int) -> tuple[int, int]:
    """Move the (buffer index, offset in it) cursor past `sent` bytes."""
    while sent and index < len(views):
        left = len(views[index]) - offset
        if sent < left:
            return index, offset + sent
        sent -= left
        index, offset = index + 1, 0
    return index, offset
