"""A migration peer process: its guest, its control server, and the QMP commands both roles share.

Strategy: `harness source` and `harness destination` are one frame with a role plugged in.
The frame owns the guest (shared-memory RAM, workload process, devices), the capabilities
and parameters, and a `ControlServer` answering QMP-shaped commands on the runner's
address (with `--qmp unix:PATH`, also real QMP on that socket, the same handlers); the
role adds its commands (`migrate`, `migrate_cancel` or `migrate-incoming`) and its
`query-migrate`.  The main thread only serves commands; the migration runs in
its own thread and reports through events.  `quit`, SIGTERM or the end of the runner
all lead to the same cleanup: the migration is cancelled, the workload reaped, the
shared memory unlinked.  Commands beyond QMP's are prefixed `x-` (digests and checks of
guest memory for the runner's invariants).  Once serving, a peer prints one line per
address it listens on (control, QMP, incoming), so a peer started by hand says where it is;
a failure to start ends in `PeerStartError`, which the CLI prints as one line (exit 2).
What acts on the host beyond the peer's own sockets -- `exec:`/`file:` URIs, `x-record` --
is refused unless `--allow-exec` (`harness.control.guard`); `--keys DIR` makes the control
server a CURVE server.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.control import CommandError, ControlServer
from harness.control.curve import ServerKeys
from harness.control.guard import host_effect_refusal
from harness.control.qmp_socket import QmpSocketError, QmpSocketServer, query_version
from harness.control.server import BlobResult
from harness.errors import EnvironmentFailure
from harness.guest import Guest, GuestSpec
from harness.guest.disk_writer import DiskWriter
from harness.guest.disks import Drive, open_drive
from harness.transport.tls import TlsObjects

from .config import ConfigError, MigrationConfig
from .status import RUNNING

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Any]


class PeerStartError(EnvironmentFailure):
    """The peer could not start (an address it cannot listen on, ...): nothing ran yet."""


@dataclass
class PeerOptions:
    role: str  # "source" | "destination"
    control: str  # the control server's address (ipc:// or tcp://)
    guest: GuestSpec
    fds: dict[str, int] = field(default_factory=dict)
    autostart: bool = True  # QEMU's autostart: -S turns it off
    incoming: str | None = None  # destination: a URI, "defer", or None (not a destination)
    qmp: str | None = None  # a unix socket path to serve real QMP on too (`--qmp unix:PATH`)
    uuid: bytes | None = None  # QEMU's -uuid (`--uuid`): the configuration's, validate-uuid
    announce: bool = True  # print where the peer listens once it serves (stdout)
    allow_exec: bool = False  # exec:/file: URIs and x-record (`--allow-exec`)
    keys: ServerKeys | None = None  # CURVE for the control server (`--keys DIR`)
    drives: dict[str, Drive] = field(default_factory=dict)  # `--drive id=NAME,file=PATH`
    objects: list[str] = field(default_factory=list)  # `--object` (QEMU's -object): TLS
    replay: Any = None  # source: a paused QEMU's devices (`--replay-devices`, qemu/replay.py)


class Peer:
    """One peer process: serve commands until `quit`."""

    def __init__(self, options: PeerOptions) -> None:
        self.options = options
        self.config = MigrationConfig.default()
        self.tls = TlsObjects()  # -object tls-creds-x509 / authz-simple (harness.transport.tls)
        for text in options.objects:
            try:
                self.tls.add_option(text)
            except ValueError as err:
                raise PeerStartError(f"--object {text}: {err}") from None
        self.quit_requested = threading.Event()
        try:  # block migration's drives: the source reads them, the destination writes
            drives = {name: open_drive(name, drive.path, writable=options.role != "source"
                                       or drive.write_rate > 0)
                      for name, drive in options.drives.items()}
        except ValueError as err:
            raise PeerStartError(str(err)) from None
        # a destination's RAM is backed up front: it then loads without a page fault per
        # page.  A source's is not: pages its content never wrote stay holes, which the
        # migration sends as zero pages without reading them (GuestMemory.holes), as QEMU
        # reads untouched guest RAM as the shared zero page
        self.guest = Guest.create(options.guest, initial_content=options.role == "source",
                                  prefault=options.role != "source")
        if options.replay is not None:
            from harness.qemu.replay import install

            install(self.guest, options.replay)
        self.server = ControlServer(options.control, keys=options.keys)
        self.qmp: QmpSocketServer | None = None
        if options.qmp:
            try:
                self.qmp = QmpSocketServer(options.qmp, self.server)
            except QmpSocketError:
                self.server.close()
                self.guest.close()
                raise
        self.guest.on_running.append(lambda running: self.emit("RESUME" if running else "STOP",
                                                                {}))
        self.migration: Any = None  # OutgoingMigration or IncomingMigration
        self.guest.uuid = options.uuid  # type: ignore[attr-defined]
        self.guest.drives = drives  # type: ignore[attr-defined]
        # the source's guest writing its disks (block migration's dirty phase)
        rates = {name: d.write_rate for name, d in options.drives.items() if d.write_rate}
        self.disk_writer = DiskWriter(self.guest, drives, rates, options.guest.seed) \
            if rates and options.role == "source" else None
        self.guest.disk_writer = self.disk_writer  # type: ignore[attr-defined]
        #: what the peer says it listens on once serving: (what, address); a role adds its own
        self.listening: list[tuple[str, str]] = []
        if not self.server.address.startswith("inproc://"):
            self.listening.append(("control", self.server.address))
        if options.qmp:
            self.listening.append(("QMP", f"unix:{options.qmp}"))
        self._register_common()

    # ------------------------------------------------------------------ lifecycle
    def register(self, name: str, handler: Handler) -> None:
        def wrapped(arguments: dict[str, Any]) -> Any:
            refusal = None if self.options.allow_exec else host_effect_refusal(
                name, arguments or {}, "this peer")
            if refusal:
                raise CommandError("GenericError", refusal)
            try:
                return handler(arguments or {})
            except (ConfigError, ValueError) as err:
                raise CommandError("GenericError", str(err)) from None

        self.server.register(name, wrapped)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.quit_requested.set())
        if self.disk_writer is not None:
            self.disk_writer.start()  # writes only while the guest runs
        try:
            if self.qmp is not None:
                self.qmp.start()
            if self.options.announce:
                self._announce()
            self.server.serve_forever(self.quit_requested)
        finally:
            self.close()
        return 0

    def _announce(self) -> None:
        """One line per address on stdout; a stdout that is gone is no reason to stop."""
        try:
            for what, address in self.listening:
                print(f"harness {self.options.role}: {what} listening on {address}",
                      flush=True)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        migration = self.migration
        try:
            if hasattr(migration, "cancel") and migration.state.status in RUNNING:
                migration.cancel()
                migration.join(5.0)
            if migration is not None and hasattr(migration, "close"):
                migration.close()
        finally:
            if self.disk_writer is not None:
                self.disk_writer.close()
            self.guest.close()
            self.server.close()  # first: it answers QMP commands still waiting for it
            if self.qmp is not None:
                self.qmp.close()

    def emit(self, name: str, data: dict[str, Any]) -> None:
        self.server.emit(name, data)

    def migration_running(self) -> bool:
        return self.migration is not None and self.migration.state.status in RUNNING

    # ------------------------------------------------------------------ commands
    def _register_common(self) -> None:
        r = self.register
        r("query-status", lambda a: {"running": self.guest.runstate == "running",
                                     "singlestep": False, "status": self.guest.runstate})
        r("stop", self._stop)
        r("cont", self._cont)
        r("quit", self._quit)
        r("migrate-set-capabilities", self._set_capabilities)
        r("migrate-set-parameters", self._set_parameters)
        r("query-migrate-capabilities", lambda a: self.config.query_capabilities())
        r("query-migrate-parameters", lambda a: self.config.query_parameters())
        r("query-migrate", lambda a: self.migration.query() if self.migration else {})
        r("query-version", query_version)
        r("x-guest-info", self._guest_info)
        r("x-guest-digests", self._digests)
        r("x-guest-check", self._check)
        r("x-native", _native_path)  # which page path this process runs (harness bench)
        r("object-add", self._object_add)
        r("object-del", self._object_del)

    def _object_add(self, args: dict[str, Any]) -> dict[str, Any]:
        """object-add (7.2: flat arguments): the TLS objects of harness.transport.tls."""
        self.tls.add(str(args.get("qom-type")), {k: v for k, v in args.items()
                                                 if k != "qom-type"})
        return {}

    def _object_del(self, args: dict[str, Any]) -> dict[str, Any]:
        self.tls.delete(str(args.get("id")))
        return {}

    def _set_capabilities(self, args: dict[str, Any]) -> dict[str, Any]:
        self.config.set_capabilities(args.get("capabilities", []), self.migration_running())
        return {}

    def _set_parameters(self, args: dict[str, Any]) -> dict[str, Any]:
        self.config.set_parameters(args, self.migration_running())
        return {}

    def _stop(self, _: dict[str, Any]) -> dict[str, Any]:
        if self.guest.runstate == "running":
            self.guest.stop("paused")
        return {}

    def _cont(self, _: dict[str, Any]) -> dict[str, Any]:
        if self.guest.runstate == "inmigrate":
            raise CommandError("GenericError", "Guest is waiting for an incoming migration")
        if self.guest.runstate != "running":
            self.guest.cont()
        return {}

    def _quit(self, _: dict[str, Any]) -> dict[str, Any]:
        self.quit_requested.set()
        return {}

    def _guest_info(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"runstate": self.guest.runstate, "pid": os.getpid(),
                "machine": self.guest.machine,
                "blocks": [{"name": b.name, "size": b.size} for b in self.guest.spec.blocks],
                "writes": int(getattr(self.guest, "writes", 0))}

    def _digests(self, args: dict[str, Any]) -> Any:
        """Per-page digests of every block: metadata, plus the uint64 array as a blob.

        `{"at": "incoming"}`: as the incoming migration loaded them (before the guest ran)."""
        if args.get("at") == "incoming":
            digests = getattr(self.migration, "loaded_digests", None)
            if digests is None:
                raise CommandError("GenericError", "no incoming migration has completed")
        else:
            digests = self.guest.digests()
        blocks = [{"name": name, "pages": int(d.size)} for name, d in digests.items()]
        blob = b"".join(np.ascontiguousarray(d, dtype=np.uint64).tobytes()
                        for d in digests.values())
        return BlobResult({"blocks": blocks}, blob)

    def _check(self, _: dict[str, Any]) -> dict[str, Any]:
        """Pages that differ from what the workload wrote (an intact guest has none).

        A running workload is paused for the check (without a runstate change): a page is
        only comparable with its version when no write is in flight."""
        workload = self.guest.workload if self.guest.runstate == "running" else None
        if workload is not None:
            workload.pause(10.0)
        try:
            bad = self.guest.mismatched_pages()
        finally:
            if workload is not None:
                workload.resume(10.0)
        return {"mismatched": {name: int(p.size) for name, p in bad.items()},
                "first": {name: [int(x) for x in p[:8]] for name, p in bad.items() if p.size}}


def parse_guest_json(text: str) -> GuestSpec:
    """A GuestSpec from the JSON the runner passes on the command line; ValueError naming
    --guest-json when it is not one."""
    try:
        return _guest_spec(json.loads(text))
    except KeyError as err:
        raise ValueError(f"--guest-json: {err} is missing") from None
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"--guest-json: {err}") from None


def _guest_spec(doc: Any) -> GuestSpec:
    from harness.guest import BlockSpec, WorkloadSpec

    if not isinstance(doc, dict):
        raise TypeError("expected a JSON object")
    workload = doc.get("workload")
    return GuestSpec(
        machine=doc.get("machine", "none"),
        blocks=[BlockSpec(b["name"], int(b["size"])) for b in doc.get("blocks", [])]
        or [BlockSpec("ram", 16 << 20)],
        fill=float(doc.get("fill", 0.0)),
        seed=int(doc.get("seed", 0)),
        workload=WorkloadSpec(**workload) if workload else None,
        devices=list(doc.get("devices", ["timer", "globalstate"])),
        content=str(doc.get("content", "random")),
    )


def parse_uuid(text: str) -> bytes:
    """`--uuid`: QEMU's -uuid takes the 8-4-4-4-12 hex form (util/uuid.c: qemu_uuid_parse)."""
    if not re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", text):
        raise ValueError(f"--uuid {text}: not a UUID (write it as "
                         "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, hex digits)")
    return uuid.UUID(text).bytes


def record_dir(args: dict[str, Any]) -> Path:
    """The directory of an `x-record` command (`harness run --record`), checked."""
    directory = Path(str(args.get("dir", ".")))
    if not directory.is_dir():
        raise CommandError("GenericError", f"x-record: {directory} is not a directory")
    return directory


def _native_path(_: dict[str, Any]) -> dict[str, Any]:
    """`x-native`: this peer's page path, C or Python (harness.native), and why."""
    from harness import native

    return {"path": native.path(), "parts": native.describe()}
