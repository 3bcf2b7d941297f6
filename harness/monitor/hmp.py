"""HMP's words: how QEMU 7.2's human monitor prints migration state and reads values.

Strategy: pure functions from QMP-shaped data (what our peers answer, which is what QEMU
answers) to the lines QEMU 7.2's HMP prints, and from the text a person types to QMP
arguments.  The output formats are facts read off a real QEMU 7.2.22 monitor and from
migration/migration-hmp-cmds.c / monitor/hmp-cmds.c (hmp_info_migrate,
hmp_info_migrate_capabilities, hmp_info_migrate_parameters, hmp_migrate_set_parameter,
hmp_info_status); no QEMU code is carried over.  Values are checked by the scenario
models (harness.scenario), so a bad size reads the same here as in a scenario file.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from harness.errors import ControlFailure, ScenarioFailure
from harness.migration.config import CAPABILITIES, PARAMETER_DEFAULTS
from harness.scenario.base import FieldError, unknown_name
from harness.scenario.parameters import MigrationParameters

__all__ = [
    "CAPABILITIES", "INFO_TOPICS", "PARAMETERS", "MonitorError", "UsageError",
    "capability_state", "format_capabilities", "format_info_migrate", "format_parameters",
    "format_status", "parameter_arguments", "progress_line",
]

#: the parameters QEMU 7.2's `info migrate_parameters` prints, in its order (observed on
#: 7.2.22); the unit each is printed with (hmp_info_migrate_parameters)
PARAMETER_UNITS: dict[str, str] = {
    "announce-initial": " ms", "announce-max": " ms", "announce-rounds": "",
    "announce-step": " ms", "compress-level": "", "compress-threads": "",
    "compress-wait-thread": "", "decompress-threads": "", "throttle-trigger-threshold": "",
    "cpu-throttle-initial": "", "cpu-throttle-increment": "", "cpu-throttle-tailslow": "",
    "max-cpu-throttle": "", "tls-creds": "", "tls-hostname": "",
    "max-bandwidth": " bytes/second", "downtime-limit": " ms", "x-checkpoint-delay": " ms",
    "block-incremental": "", "multifd-channels": "", "multifd-compression": "",
    "xbzrle-cache-size": " bytes", "max-postcopy-bandwidth": "", "tls-authz": "",
}
#: every parameter `migrate_set_parameter` takes (QEMU 7.2's MigrateSetParameters)
PARAMETERS: tuple[str, ...] = tuple(PARAMETER_DEFAULTS)
#: `info` topics: the three of QEMU's HMP, `status`, and the harness's own
INFO_TOPICS: dict[str, str] = {
    "migrate": "show migration status",
    "migrate_capabilities": "show current migration capabilities",
    "migrate_parameters": "show current migration parameters",
    "status": "show the current VM status (running|paused)",
    "peers": "show the peers this console drives (address, pid, alive)",
    "proxy": "show the fault proxy's sessions, bytes, armed and fired faults",
    "triggers": "show the triggers armed from this console and whether they fired",
}
_KB = 1024
_ON = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


class MonitorError(ControlFailure):
    """A refused command: printed as HMP prints them, `Error: <text>`."""


class UsageError(ScenarioFailure):
    """Bad arguments: printed bare, then `Try "help CMD" for more information` (as HMP)."""

    def __init__(self, command: str, text: str) -> None:
        super().__init__(text)
        self.command = command

    def lines(self) -> list[str]:
        return [str(self), f'Try "help {self.command}" for more information']


# ---------------------------------------------------------------------- info migrate
def format_info_migrate(info: dict[str, Any]) -> list[str]:
    """`info migrate` from a query-migrate reply (migration-hmp-cmds.c: hmp_info_migrate,
    7.2 layout: "Migration status", then times in ms, then RAM in kbytes/pages)."""
    lines: list[str] = []
    reasons = info.get("blocked-reasons") or []
    if reasons:
        lines.append("Outgoing migration blocked:")
        lines += [f"  {reason}" for reason in reasons]
    status = info.get("status")
    if status:
        error = info.get("error-desc")
        lines.append(f"Migration status: {status}"
                     + (f" ({error})" if status == "failed" and error else ""))
    for key, label in (("total-time", "total time"), ("expected-downtime", "expected downtime"),
                       ("downtime", "downtime"), ("setup-time", "setup")):
        if key in info:
            lines.append(f"{label}: {int(info[key])} ms")
    if info.get("ram"):
        lines += _ram_lines(info["ram"])
    if info.get("xbzrle-cache"):
        lines += _stat_lines(info["xbzrle-cache"], _XBZRLE_LINES)
    if info.get("compression"):
        lines += _stat_lines(info["compression"], _COMPRESSION_LINES)
    if "cpu-throttle-percentage" in info:
        lines.append(f"cpu throttle percentage: {int(info['cpu-throttle-percentage'])}")
    addresses = info.get("socket-address") or []
    if addresses:
        lines.append("socket address: [")
        lines += [f"\t{_socket_address(a)}" for a in addresses]
        lines.append("]")
    return lines


def _ram_lines(ram: dict[str, Any]) -> list[str]:
    def n(key: str) -> int:
        return int(ram.get(key, 0) or 0)

    lines = [
        f"transferred ram: {n('transferred') // _KB} kbytes",
        f"throughput: {float(ram.get('mbps', 0) or 0):0.2f} mbps",
        f"remaining ram: {n('remaining') // _KB} kbytes",
        f"total ram: {n('total') // _KB} kbytes",
        f"duplicate: {n('duplicate')} pages",
        f"skipped: {n('skipped')} pages",
        f"normal: {n('normal')} pages",
        f"normal bytes: {n('normal-bytes') // _KB} kbytes",
        f"dirty sync count: {n('dirty-sync-count')}",
        f"page size: {n('page-size') // _KB} kbytes",
        f"multifd bytes: {n('multifd-bytes') // _KB} kbytes",
        f"pages-per-second: {n('pages-per-second')}",
    ]
    if n("dirty-pages-rate"):
        lines.append(f"dirty pages rate: {n('dirty-pages-rate')} pages")
    if n("postcopy-requests"):
        lines.append(f"postcopy request count: {n('postcopy-requests')}")
    for key, label in (("precopy-bytes", "precopy ram"), ("downtime-bytes", "downtime ram"),
                       ("postcopy-bytes", "postcopy ram")):
        if n(key):
            lines.append(f"{label}: {n(key) // _KB} kbytes")
    if n("dirty-sync-missed-zero-copy"):
        lines.append("Zero-copy-send fallbacks happened: "
                     f"{n('dirty-sync-missed-zero-copy')} times")
    return lines


def _kb(value: Any) -> int:
    return int(value) // _KB


def _rate(value: Any) -> str:
    return f"{float(value):0.2f}"


#: (line, member, conversion) of hmp_info_migrate's xbzrle and compression blocks
_XBZRLE_LINES = (("cache size: {} bytes", "cache-size", int),
                 ("xbzrle transferred: {} kbytes", "bytes", _kb),
                 ("xbzrle pages: {} pages", "pages", int),
                 ("xbzrle cache miss: {} pages", "cache-miss", int),
                 ("xbzrle cache miss rate: {}", "cache-miss-rate", _rate),
                 ("xbzrle encoding rate: {}", "encoding-rate", _rate),
                 ("xbzrle overflow: {}", "overflow", int))
_COMPRESSION_LINES = (("compression pages: {} pages", "pages", int),
                      ("compression busy: {}", "busy", int),
                      ("compression busy rate: {}", "busy-rate", _rate),
                      ("compressed size: {} kbytes", "compressed-size", _kb),
                      ("compression rate: {}", "compression-rate", _rate))


def _stat_lines(stats: dict[str, Any], rows: tuple[tuple[str, str, Any], ...]) -> list[str]:
    return [line.format(convert(stats.get(key, 0) or 0)) for line, key, convert in rows]


def _socket_address(addr: dict[str, Any]) -> str:
    kind = addr.get("type", "inet")
    if kind in ("inet", "tcp") or "port" in addr:
        return f"tcp:{addr.get('host')}:{addr.get('port')}"
    if kind == "unix":
        return f"unix:{addr.get('path')}"
    return str(addr)


# ---------------------------------------------------------------------- other info
def format_capabilities(caps: list[dict[str, Any]]) -> list[str]:
    """`info migrate_capabilities`: `name: on|off`, one a line, in QEMU's order."""
    return [f"{c.get('capability')}: {'on' if c.get('state') else 'off'}" for c in caps]


def format_parameters(params: dict[str, Any]) -> list[str]:
    """`info migrate_parameters` as QEMU 7.2 prints it (strings quoted, booleans on/off)."""
    lines = []
    for name, unit in PARAMETER_UNITS.items():
        if name not in params:
            continue
        value = params[name]
        if isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, str) and name.startswith("tls-"):
            text = f"'{value}'"
        else:
            text = str(value)
        lines.append(f"{name}: {text}{unit}")
    return lines


def format_status(status: dict[str, Any]) -> str:
    """`info status` (monitor/hmp-cmds.c: hmp_info_status): running, or paused (reason)."""
    if status.get("running"):
        return "VM status: running"
    state = str(status.get("status", "paused"))
    return "VM status: paused" + (f" ({state})" if state != "paused" else "")


def progress_line(info: dict[str, Any]) -> str:
    """The line a synchronous `migrate` prints each second.  QEMU 7.2's
    hmp_migrate_status_cb prints "Completed %d %%" for block migration only; here it is
    the share of guest RAM no longer to be sent, with the status and what remains.  During
    block migration (query-migrate `disk`, B6) it is QEMU's figure: the share of the disks
    read for sending."""
    disk = info.get("disk")
    if disk:
        total = int(disk.get("total", 0) or 0)
        done = 100 if not disk.get("remaining") or not total \
            else int(disk.get("transferred", 0)) * 100 // total
        return (f"Completed {done} % ({info.get('status', 'setup')}, block migration, "
                f"{int(disk.get('remaining', 0)) // _KB} kbytes of disk remaining)")
    ram = info.get("ram") or {}
    total = int(ram.get("total", 0) or 0)
    remaining = int(ram.get("remaining", 0) or 0)
    percent = int(100 * (total - remaining) / total) if total else 0
    status = info.get("status", "setup")
    text = f"Completed {percent} % ({status}"
    if ram:
        text += (f", {remaining // _KB} kbytes remaining, pass "
                 f"{int(ram.get('dirty-sync-count', 0) or 0)}")
    return text + ")"


# ---------------------------------------------------------------------- values typed in
def capability_state(command: str, name: str, text: str) -> bool:
    """on/off of `migrate_set_capability NAME on|off` (hmp_migrate_set_capability)."""
    if name not in CAPABILITIES:
        raise MonitorError(f"invalid parameter value: {name} "
                           f"({unknown_name(name, 'a migration capability', CAPABILITIES)})")
    if text not in ("on", "off"):
        raise UsageError(command, "Expected 'on' or 'off'")
    return text == "on"


def parameter_arguments(name: str, text: str) -> dict[str, Any]:
    """The migrate-set-parameters arguments of `migrate_set_parameter NAME VALUE`.

    As HMP (hmp_migrate_set_parameter): a bare number for max-bandwidth is in MiB/s
    (`100` is 100 MiB/s), booleans are on/off; sizes take k/M/G and KiB/MiB/GiB;
    durations a number of ms or a unit.  Checked by the scenario model (QEMU's ranges)."""
    if name not in PARAMETERS:
        raise MonitorError(f"invalid parameter value: {name} "
                           f"({unknown_name(name, 'a migration parameter', PARAMETERS)})")
    value: Any = text
    default = PARAMETER_DEFAULTS[name]
    if isinstance(default, bool):
        if text.lower() not in _ON:
            raise MonitorError(f"Parameter '{name}' expects on or off, got {text!r}")
        value = _ON[text.lower()]
    elif name == "max-bandwidth" and re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        value = f"{text}M"
    elif isinstance(default, int) and re.fullmatch(r"[0-9]+", text):
        value = int(text)
    try:
        model = MigrationParameters.model_validate({name: value})
    except ValidationError as err:
        raise MonitorError(validation_text(err)) from None
    return model.qmp_arguments()


def validation_text(err: ValidationError, tags: frozenset[str] = frozenset()) -> str:
    """The problems of a scenario-model validation on one line, worded as for scenario
    files; `tags` are the union tags pydantic puts first in a location (dropped)."""
    texts: list[str] = []
    for error in err.errors():
        loc = [str(k) for k in error["loc"]]
        if loc and loc[0] in tags:
            loc = loc[1:]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            texts += [_issue(loc, issue.path, issue.message) for issue in cause.issues]
        elif error["type"] == "extra_forbidden":
            texts.append(f"unknown key {loc[-1]!r}" if loc else error["msg"])
        elif error["type"] == "missing":
            texts.append(f"missing required key {loc[-1]!r}" if loc else error["msg"])
        elif cause is not None:
            texts.append(_issue(loc, (), str(cause)))
        else:
            texts.append(_issue(loc, (), f"{error['msg'][:1].lower()}{error['msg'][1:]} "
                                         f"(got {error.get('input')!r})"))
    return "; ".join(dict.fromkeys(texts))


def _issue(loc: list[str], path: tuple[Any, ...], message: str) -> str:
    where = ".".join([*loc, *(str(p) for p in path)])
    return f"{where}: {message}" if where else message
