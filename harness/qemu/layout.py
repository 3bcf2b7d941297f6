"""A real machine's device layout, learned once from a probe migration's VM description.

Strategy: QEMU describes every device section it writes in the JSON trailer after EOF of
a precopy stream (the "vmdesc", facts F42-F43); walked field by field it frames every
section exactly.  But it arrives after the sections, and postcopy streams carry none, and
`-dump-vmstate` is not enough (F44-F45).  So a `MachineLayout` is learned once per QEMU
binary, machine and device set: `learn_layout` starts the same QEMU paused (`-S`, its
serial/QMP paths replaced, its disks behind `-snapshot`), migrates it to `exec:cat > FILE`
(the state a paused source sends), lets it run for a moment and migrates it again (what a
running guest adds: subsections such as cpu/msr_smi_count), and keeps the RAM blocks of
the ram section START and the union of both vmdescs.  The layout is cached as one JSON
file per key under $HARNESS_CACHE (or $XDG_CACHE_HOME/migration-harness/layouts, 0700);
the key hashes the binary (path, size, mtime, `-version`) and the arguments that change
the device set, never paths of files, sockets or disks.  `merge` learns what a later
stream's vmdesc shows (a subsection first seen live).  Everything read back from a cache
file or a stream is bounded and validated (`from_json`, `load_vmdesc`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import mmap
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.errors import EnvironmentFailure
from harness.protocol import RemoteProtocolError, StreamDecoder
from harness.protocol.events import Configuration, RamMemSize, VmDescription
from harness.protocol.vmstate import DeviceDescription, devices_from_vmdesc

from .launch import QemuProcess, find_qemu
from .qmp import QMPError, wait_migration

__all__ = [
    "LayoutError",
    "MachineLayout",
    "cache_dir",
    "cache_path",
    "find_trailer",
    "layout_from_stream",
    "layout_key",
    "learn_layout",
    "load_vmdesc",
    "probe_args",
    "read_layout",
]

log = logging.getLogger(__name__)

FORMAT = 1  # of the cache files
MAX_VMDESC_BYTES = 16 << 20  # QEMU's pc trailer is 99 KB (F42)
MAX_DEPTH = 64  # JSON levels (QEMU's nest about ten)
MAX_DEVICES = 4096
MAX_BLOCKS = 1024
MAX_TEXT = 256  # an idstr, a machine name
CHUNK = 1 << 20
RUN_SECONDS = 0.3  # the probe's guest runs this long before the second capture


class LayoutError(EnvironmentFailure, ValueError):
    """A layout document, stream or probe that cannot give a layout (says why)."""


class TooDeep(LayoutError):
    """A VM description nested deeper than MAX_DEPTH levels."""


# ------------------------------------------------------------------------- the layout


@dataclass(frozen=True)
class MachineLayout:
    """What a machine's stream holds: its RAM blocks and every device section's description.

    `probe` says what learning it cost ({"seconds", "stream_bytes", "cached", ...});
    it is not part of the layout's identity."""

    key: str
    machine: str
    blocks: tuple[tuple[str, int], ...]
    vmdesc: Mapping[str, Any]
    probe: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def devices(self) -> list[DeviceDescription]:
        """The descriptions a decoder loads device sections with."""
        return devices_from_vmdesc(self.vmdesc)

    def device_names(self) -> list[str]:
        return [str(e["name"]) for e in self.vmdesc.get("devices", [])]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "machine": self.machine,
                "blocks": [[name, size] for name, size in self.blocks],
                "vmdesc": self.vmdesc, "probe": dict(self.probe)}

    @classmethod
    def from_json(cls, doc: Any) -> MachineLayout:
        """A layout from `to_json`'s document; LayoutError when anything is off."""
        if not isinstance(doc, dict):
            raise LayoutError("a layout is a JSON object")
        extra = sorted(set(doc) - {"format", "key", "machine", "blocks", "vmdesc", "probe"})
        if extra:
            raise LayoutError(f"unexpected key {extra[0]!r} in a layout")
        if doc.get("format") != FORMAT:
            raise LayoutError(f"layout format {doc.get('format')!r}, expected {FORMAT}")
        key = _text(doc.get("key"), "key")
        if not re.fullmatch(r"[0-9a-f]{1,128}", key):
            raise LayoutError("key: expected hex digits")
        blocks = doc.get("blocks")
        if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
            raise LayoutError(f"blocks: expected a list of at most {MAX_BLOCKS}")
        parsed = tuple(_block(b) for b in blocks)
        probe = doc.get("probe", {})
        if not isinstance(probe, dict) or len(json.dumps(probe)) > 4096:
            raise LayoutError("probe: expected a small object")
        return cls(key, _text(doc.get("machine"), "machine"), parsed,
                   check_vmdesc(doc.get("vmdesc")), probe)

    def merge(self, vmdesc: Mapping[str, Any]) -> MachineLayout:
        """This layout plus the devices and subsections `vmdesc` shows that it lacks
        (self when there is nothing new).  A field list that differs is left as known."""
        devices = [dict(e) for e in self.vmdesc.get("devices", [])]
        index = {(e["name"], e["instance_id"]): i for i, e in enumerate(devices)}
        changed = False
        for entry in check_vmdesc(vmdesc)["devices"]:
            at = index.get((entry["name"], entry["instance_id"]))
            if at is None:
                index[(entry["name"], entry["instance_id"])] = len(devices)
                devices.append(entry)
                changed = True
                continue
            merged = merge_entry(devices[at], entry)
            if merged is not devices[at]:
                devices[at] = merged
                changed = True
        if not changed:
            return self
        return replace(self, vmdesc={**self.vmdesc, "devices": devices})


def merge_entry(old: Mapping[str, Any], new: Mapping[str, Any]) -> Mapping[str, Any]:
    """`old` with the subsections (at any depth) that only `new` has; `old` if none."""
    out: dict[str, Any] | None = None
    fields = list(old.get("fields", []))
    new_fields = list(new.get("fields", []))
    if _field_shape(fields) == _field_shape(new_fields):
        for i, (a, b) in enumerate(zip(fields, new_fields)):
            if "struct" in a and "struct" in b:
                merged = merge_entry(a["struct"], b["struct"])
                if merged is not a["struct"]:
                    fields[i] = {**a, "struct": merged}
                    out = {**old, "fields": fields}
    subs = list(old.get("subsections", []))
    names = {s.get("vmsd_name"): i for i, s in enumerate(subs)}
    for sub in new.get("subsections", []):
        at = names.get(sub.get("vmsd_name"))
        if at is None:
            subs.append(sub)
        else:
            merged = merge_entry(subs[at], sub)
            if merged is subs[at]:
                continue
            subs[at] = merged
        out = {**(out or old), "subsections": subs}
    return old if out is None else out


def _field_shape(fields: list[Any]) -> list[tuple[Any, ...]]:
    return [(f.get("name"), f.get("type"), f.get("index"), f.get("array_len"),
             None if "struct" in f else f.get("size")) for f in fields]


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT or not value.isprintable():
        raise LayoutError(f"{what}: expected printable text of 1-{MAX_TEXT} characters")
    return value


def _block(item: Any) -> tuple[str, int]:
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], int)
            and not isinstance(item[1], bool) and 0 < item[1] < 1 << 48):
        raise LayoutError(f"blocks: expected [idstr, used length], got {str(item)[:80]}")
    return _text(item[0], "block idstr"), item[1]


# ------------------------------------------------------------------- vmdesc documents


def load_vmdesc(text: bytes | str) -> dict[str, Any]:
    """The trailer's JSON, bounded (size, nesting) and checked (`check_vmdesc`)."""
    if len(text) > MAX_VMDESC_BYTES:
        raise LayoutError(f"VM description of {len(text)} bytes exceeds {MAX_VMDESC_BYTES}")
    try:
        doc = json.loads(text)
    except RecursionError:
        raise TooDeep(f"VM description nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:
        raise LayoutError(f"VM description is not JSON: {str(err)[:120]}") from None
    return check_vmdesc(doc)


def check_vmdesc(doc: Any) -> dict[str, Any]:
    """`doc` if it is a vmdesc the codec can read (nesting, names, sizes); else LayoutError."""
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list):
        raise LayoutError("a VM description is an object with a 'devices' list")
    if len(doc["devices"]) > MAX_DEVICES:
        raise LayoutError(f"more than {MAX_DEVICES} devices")
    _check_depth(doc)
    for entry in doc["devices"]:
        if not isinstance(entry, dict):
            raise LayoutError("a device entry is an object")
        _text(entry.get("name"), "device name")
        if not isinstance(entry.get("instance_id"), int) or isinstance(entry["instance_id"], bool):
            raise LayoutError(f"device {entry['name']!r}: instance_id is not an integer")
    try:
        devices_from_vmdesc(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise LayoutError(f"VM description does not describe devices: "
                          f"{type(err).__name__}: {str(err)[:120]}") from None
    return doc


def _check_depth(doc: Any) -> None:
    todo = [(doc, 1)]
    while todo:  # iterative: the document may nest deeper than Python recurses
        value, depth = todo.pop()
        children = value.values() if isinstance(value, dict) else \
            value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_DEPTH:
                    raise TooDeep(f"VM description nests deeper than {MAX_DEPTH} levels")
                todo.append((child, depth + 1))


def find_trailer(data: bytes | mmap.mmap) -> bytes | None:
    """The VM description JSON at the end of a precopy stream, found as QEMU's
    `scripts/analyze-migration.py` finds it: the last NUL, the first '{' after it, 0x06
    and a be32 length just before it, the JSON running to the end."""
    n = len(data)
    nul = data.rfind(b"\x00", max(0, n - MAX_VMDESC_BYTES))
    if nul < 0:
        return None
    brace = data.find(b"{", nul)
    if brace < 5 or data[brace - 5] != 0x06:
        return None
    length = int.from_bytes(data[brace - 4:brace], "big")
    if brace + length != n:
        return None
    return bytes(data[brace:brace + length])


# --------------------------------------------------------------------- from a stream


@contextlib.contextmanager
def _mapped(data: bytes | Path) -> Iterator[bytes | mmap.mmap]:
    if not isinstance(data, (str, Path)):
        yield data
        return
    with Path(data).open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped


def layout_from_stream(data: bytes | Path, key: str | None = None) -> MachineLayout:
    """The layout of a captured precopy stream with its vmdesc trailer (`key`: by default
    the sha256 of the trailer).

    The stream is decoded once more with the trailer's descriptions and nothing else: it
    must land exactly on every footer, on EOF and on the trailer (RemoteProtocolError
    otherwise), so the layout is known to frame this stream exactly."""
    with _mapped(data) as buf:
        trailer = find_trailer(buf)
        if trailer is None:
            raise LayoutError("the stream has no VM description trailer (a precopy stream "
                              "without suppress-vmdesc has one)")
        vmdesc = load_vmdesc(trailer)
        decoder = StreamDecoder(ram="discard", devices=devices_from_vmdesc(vmdesc))
        machine, blocks, seen = "", (), False
        for start in range(0, len(buf) + 1, CHUNK):
            decoder.receive_data(buf[start:start + CHUNK] or b"")
            for ev in decoder.events():
                if isinstance(ev, Configuration):
                    machine = ev.machine
                elif isinstance(ev, RamMemSize) and not blocks:
                    blocks = tuple((b.idstr, b.used_length) for b in ev.blocks)
                elif isinstance(ev, VmDescription):
                    seen = ev.json_text == trailer
    if not seen:
        raise LayoutError("the decoder did not reach the VM description trailer")
    if not machine:
        raise LayoutError("the stream has no configuration section (no machine name)")
    return MachineLayout(key or hashlib.sha256(trailer).hexdigest(), machine, blocks, vmdesc)


def read_layout(path: Path) -> MachineLayout:
    """A layout from a file: a cached/saved layout (JSON) or a precopy stream with its
    vmdesc (QEMU's magic first).  LayoutError, RemoteProtocolError or OSError."""
    with Path(path).open("rb") as fh:
        head = fh.read(4)
        if head == b"QEVM":
            fh.close()
            return layout_from_stream(Path(path))
        text = head + fh.read(MAX_VMDESC_BYTES + 65536)
    if len(text) > MAX_VMDESC_BYTES + 65536:
        raise LayoutError("larger than a layout can be")
    try:
        return MachineLayout.from_json(json.loads(text))
    except (ValueError, RecursionError) as err:
        raise LayoutError(f"not a layout: {str(err)[:160]}") from None


# ---------------------------------------------------------------------- the cache key

#: options QEMU takes without a value (everything else starting with "-" takes one)
_FLAGS = {"-S", "-nodefaults", "-no-user-config", "-enable-kvm", "-no-hpet", "-no-acpi",
          "-no-reboot", "-no-shutdown", "-snapshot", "-daemonize", "-nographic",
          "-no-fd-bootchk", "-usb", "-enable-fips", "-s", "-full-screen", "-alt-grab",
          "-ctrl-grab", "-no-quit", "-only-migratable", "-preconfig"}
#: options that never change what the stream holds (monitors, logs, display, how to start)
_IGNORED = {"-S", "-qmp", "-monitor", "-mon", "-incoming", "-daemonize", "-pidfile", "-D",
            "-d", "-display", "-vnc", "-nographic", "-name", "-trace", "-msg", "-snapshot",
            "-no-shutdown", "-no-reboot", "-run-with", "-sandbox", "-qmp-pretty"}
#: options naming a chardev/disk whose file or socket paths are irrelevant
_PATHS = {"-serial", "-parallel", "-chardev", "-drive", "-blockdev", "-debugcon"}
_PATH_KEYS = ("path", "file", "filename", "logfile")


def option_pairs(args: list[str]) -> list[tuple[str, str | None]]:
    """`args` as (option, value) pairs ("-m 64" -> ("-m", "64")); "--x" counts as "-x"."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        opt = args[i]
        norm = "-" + opt.lstrip("-") if opt.startswith("-") else opt
        if norm in _FLAGS or not opt.startswith("-") or i + 1 >= len(args):
            out.append((norm, None))
            i += 1
        else:
            out.append((norm, args[i + 1]))
            i += 2
    return out


def _scrub(opt: str, value: str) -> str:
    """A chardev or disk option without its paths ("file:/x/y" -> "file")."""
    if opt in ("-serial", "-parallel", "-debugcon") and ":" in value:
        return value.split(":", 1)[0]
    parts = [p for p in value.split(",") if p.split("=", 1)[0] not in _PATH_KEYS]
    return ",".join(parts)


def key_args(args: list[str]) -> list[str]:
    """The arguments that change the device set, in order, paths scrubbed."""
    out: list[str] = []
    for opt, value in option_pairs(args):
        if opt in _IGNORED:
            continue
        out.append(opt)
        if value is not None:
            out.append(_scrub(opt, value) if opt in _PATHS else value)
    return out


def _version_text(binary: str) -> str:
    st = Path(binary).stat()
    return _version_of(binary, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _version_of(binary: str, size: int, mtime_ns: int) -> str:
    """`binary -version`, asked once per binary file (a run keys its layout and its
    reference ROMs by it)."""
    try:
        done = subprocess.run([binary, "-version"], capture_output=True, timeout=10,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LayoutError(f"{binary} -version failed: {err}") from None
    return done.stdout.decode(errors="replace")[:4096]


def layout_key(binary: str, args: list[str]) -> str:
    """sha256 of the binary's identity and of `key_args(args)` (hex)."""
    path = Path(binary).resolve()
    st = path.stat()
    ident = {"binary": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "version": _version_text(str(path)), "args": key_args(args)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def cache_dir() -> Path:
    """$HARNESS_CACHE, else $XDG_CACHE_HOME (~/.cache) /migration-harness/layouts."""
    explicit = os.environ.get("HARNESS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "migration-harness" / "layouts"


# ------------------------------------------------------------------------- the cache


def cache_path(key: str, directory: Path | None = None) -> Path:
    """Where the layout of `key` is cached (what `harness proxy --layout` takes)."""
    return (directory or cache_dir()) / f"{key}.json"


def read_cached(key: str, directory: Path | None = None) -> MachineLayout | None:
    """The cached layout for `key`, or None (absent, unreadable or invalid: logged)."""
    path = cache_path(key, directory)
    try:
        with path.open("rb") as fh:
            text = fh.read(MAX_VMDESC_BYTES + 65536 + 1)
        layout = MachineLayout.from_json(json.loads(text))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as err:
        log.warning("layout cache %s ignored: %s", path, err)
        return None
    return layout if layout.key == key else None


def store(layout: MachineLayout, directory: Path | None = None) -> Path:
    """Write `layout` to the cache (atomically: a temporary file renamed)."""
    where = directory or cache_dir()
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=where, prefix=".layout-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(layout.to_json(), fh, separators=(",", ":"))
        target = cache_path(layout.key, where)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def remember(layout: MachineLayout, vmdesc: Mapping[str, Any],
             directory: Path | None = None) -> MachineLayout:
    """Merge a later stream's vmdesc into `layout`; store it when it learned something."""
    merged = layout.merge(vmdesc)
    if merged is not layout:
        store(merged, directory)
        log.info("layout %s learned from a stream's VM description", layout.key[:12])
    return merged


# ------------------------------------------------------------------------- the probe


def probe_args(args: list[str]) -> list[str]:
    """`args` for a probe: no monitor, incoming, -S or pid file; serial ports and chardevs
    to null; disks behind -snapshot (nothing of the real run is touched)."""
    out: list[str] = []
    for opt, value in option_pairs(args):
        if opt in ("-S", "-qmp", "-monitor", "-mon", "-incoming", "-daemonize", "-pidfile",
                   "-D", "-snapshot"):
            continue
        if opt in ("-serial", "-parallel", "-debugcon") and value is not None:
            value = "null" if value not in ("none", "null") else value
        elif opt == "-chardev" and value is not None:
            ident = [p for p in value.split(",") if p.startswith("id=")]
            value = ",".join(["null", *ident])
        out.append(opt)
        if value is not None:
            out.append(value)
    return [*out, "-snapshot", "-S"]


def learn_layout(binary: str | None, args: list[str], workdir: Path, timeout: float = 30,
                 *, directory: Path | None = None, run_seconds: float = RUN_SECONDS
                 ) -> MachineLayout:
    """The layout of the machine `binary args` makes: from the cache, or probed and stored.

    `layout.probe` reports the cost: {"cached", "seconds", and for a probe
    "stream_bytes", "captures"}.  LayoutError/QemuError when it cannot be learned."""
    t0 = time.monotonic()
    binary = binary or find_qemu()
    if binary is None:
        raise LayoutError("no QEMU binary (set HARNESS_QEMU or install qemu-system-x86_64)")
    key = layout_key(binary, args)
    cached = read_cached(key, directory)
    if cached is not None:
        return replace(cached, probe={**cached.probe, "cached": True,
                                      "seconds": round(time.monotonic() - t0, 4)})
    layout, size = _probe(binary, args, Path(workdir), key, timeout, run_seconds)
    layout = replace(layout, probe={"cached": False, "seconds": round(time.monotonic() - t0, 3),
                                    "stream_bytes": size, "captures": 2})
    store(layout, directory)
    log.info("layout %s learned in %.2f s (%d stream bytes)", key[:12], layout.probe["seconds"],
             size)
    return layout


def _probe(binary: str, args: list[str], workdir: Path, key: str, timeout: float,
           run_seconds: float) -> tuple[MachineLayout, int]:
    deadline = time.monotonic() + timeout
    workdir.mkdir(parents=True, exist_ok=True)
    probe_dir = Path(tempfile.mkdtemp(prefix="layout-probe-", dir=workdir))
    qemu = QemuProcess(probe_args(args), probe_dir, name="layout-probe", binary=binary)
    try:
        qemu.start(timeout=max(1.0, deadline - time.monotonic()))
        layout, size = _capture(qemu, probe_dir / "paused.bin", key, deadline)
        qemu.qmp.execute("cont", timeout=_left(deadline))
        time.sleep(min(run_seconds, _left(deadline)))
        qemu.qmp.execute("stop", timeout=_left(deadline))
        running, more = _capture(qemu, probe_dir / "running.bin", key, deadline)
        # the running machine's field lists win (a booted guest's ide drive writes its
        # identify data, a paused fresh one does not); the paused capture adds what only
        # it showed
        merged = running.merge(layout.vmdesc)
        return replace(merged, blocks=layout.blocks or merged.blocks), size + more
    except QMPError as err:
        raise LayoutError(f"layout probe: {err}; QEMU stderr: "
                          f"{qemu.stderr_text()[-400:]!r}") from None
    finally:
        qemu.close()
        for leftover in probe_dir.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            probe_dir.rmdir()


def _capture(qemu: QemuProcess, target: Path, key: str, deadline: float
             ) -> tuple[MachineLayout, int]:
    """Migrate `qemu` to `exec:cat > target`; the layout of what it wrote."""
    if "'" in str(target):
        raise LayoutError(f"cannot quote {target} for exec:")
    qemu.qmp.execute("migrate", {"uri": f"exec:cat > '{target}'"}, timeout=_left(deadline))
    info = wait_migration(qemu.qmp, timeout=_left(deadline))
    if info.get("status") != "completed":
        raise LayoutError(f"layout probe: migration {info.get('status')}: "
                          f"{info.get('error-desc', '')}")
    _wait_written(target, deadline)
    try:
        layout = layout_from_stream(target, key)
    except RemoteProtocolError as err:
        raise LayoutError(f"layout probe: its own stream does not decode: {err}") from None
    size = target.stat().st_size
    target.unlink()
    return layout, size


def _wait_written(target: Path, deadline: float) -> None:
    """`cat` may still be writing when QEMU reports completed: wait for the trailer."""
    while True:
        with contextlib.suppress(OSError), _mapped(target) as buf:
            if find_trailer(buf) is not None:
                return
        if time.monotonic() >= deadline:
            raise LayoutError(f"layout probe: {target} has no VM description trailer")
        time.sleep(0.01)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise LayoutError("layout probe: out of time")
    return left

