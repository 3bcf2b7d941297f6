"""The scenario model: DESIGN.md section 3's scenario file as frozen pydantic models.

Strategy: one model per mapping of the file, keys kebab-case in the file and snake_case in
Python (`guest.workload.dirty_rate`), unknown keys refused everywhere. Values are held in
base units (bytes, bytes/s, seconds; `downtime-limit` in ms as QMP has it). Checks that
need one section are validators on that section; checks that join sections (a step's
`after:` naming another step, a host named in `hosts`, what a real QEMU peer can be,
postcopy actions needing `postcopy-ram`) are in `Scenario._cross_checks`, which reports
every problem it finds, each with its own path. Loading from YAML, with line numbers,
is `loader.py`'s job; `Scenario.model_validate(data)` works on plain data too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    StrictInt,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from .base import (
    Duration,
    Fraction,
    Issue,
    PathItem,
    Rate,
    ScenarioModel,
    Size,
    Text,
    choice,
    fail,
    in_range,
    non_empty,
    raise_issues,
)
from .disks import Disk, DiskExpectation, disk_issues
from .names import (
    ACCELS,
    CAPABILITIES,
    CONTENT_KINDS,
    DEFAULT_DEVICES,
    DEVICE_NAMES,
    GUEST_PLACES,
    MEMORY_EXPECTATIONS,
    PEER_KINDS,
    POSTCOPY_ACTIONS,
    QEMU_DEVICES,
    QEMU_MACHINE,
    QEMU_RAM_BLOCK,
    REAL_MACHINE,
    REAL_MACHINE_FORMS,
    TARGET_PAGE_SIZE,
    TRANSPORT_SCHEMES,
    WORKLOAD_PATTERNS,
    Accel,
    ContentKind,
    DeviceName,
    GuestPlace,
    MemoryExpectation,
    PeerKind,
    TransportScheme,
    WorkloadPattern,
    multifd_channel_id,
)
from .parameters import (
    Capabilities,
    MigrationParameters,
    PeerCapabilities,
    capability_issues,
    harness_peer_issues,
    throttle_issue,
)
from .steps import (
    Action,
    BytesCondition,
    BytesTrigger,
    CommandAction,
    CommandTrigger,
    EventTrigger,
    Fault,
    FrameTrigger,
    LinkFault,
    NetFault,
    PassTrigger,
    ProcessFault,
    ProgressTrigger,
    RemainingCondition,
    RemainingTrigger,
    SetParametersAction,
    Status,
    StatusCondition,
    StatusTrigger,
    Step,
    TimeTrigger,
    Trigger,
    TriggerBase,
)
from .tls import Tls, tls_issues
from .units import format_size

DEFAULT_MEMORY = 64 * 1024 * 1024
#: capabilities a peer may not set on its own: the steps (postcopy actions) and the proxy
#: (the preempt channel) read them from the scenario
SCENARIO_WIDE_CAPABILITIES = ("postcopy-ram", "postcopy-preempt", "events")
DEFAULT_TIMEOUT = 60.0


def _whole_pages(value: int) -> int:
    if value <= 0 or value % TARGET_PAGE_SIZE:
        raise ValueError(f"expected a positive whole number of {TARGET_PAGE_SIZE // 1024} KiB "
                         f"pages, got {value} bytes ({format_size(value)})")
    return value


def _idstr(value: str) -> str:
    if len(value.encode()) > 255:  # a RAM block idstr travels as u8 length + bytes
        raise ValueError("a block name is at most 255 bytes (QEMU writes it with a u8 length)")
    return value


_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def _scenario_name(value: str) -> str:
    """A scenario's name names its work directory and report entries: one path component."""
    if not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{value!r} is not a scenario name (1 to 100 letters, digits, '.', "
                         "'_' or '-', not starting with '.' and without '..'; a file whose "
                         "stem is not one needs name:)")
    return value


PageSize = Annotated[Size, AfterValidator(_whole_pages)]

# --- guest ------------------------------------------------------------------------------


class Block(ScenarioModel):
    """One RAM block: `{name: pc.ram, size: 256MiB}`."""

    name: Annotated[Text, AfterValidator(_idstr)]
    size: PageSize


class Workload(ScenarioModel):
    """How the guest dirties its RAM while it migrates."""

    dirty_rate: Rate = 0
    """How fast the guest writes its RAM (0: it stays idle)."""
    pattern: Annotated[WorkloadPattern, choice("a workload pattern", WORKLOAD_PATTERNS)] = \
        "uniform"
    """Which pages it writes: all alike, a hot set, or in order."""
    hotset: Size | None = None
    """With pattern: hotset, the size of the hot part of RAM."""

    @model_validator(mode="after")
    def _hotset_with_pattern(self) -> Workload:
        if self.pattern == "hotset" and not self.hotset:
            fail(("hotset",), "pattern: hotset needs hotset: SIZE (the hot part of RAM)")
        if self.pattern != "hotset" and self.hotset is not None:
            fail(("hotset",), f"hotset: applies to pattern: hotset only, not {self.pattern}",
                 at_key=True)
        return self


def _no_duplicates(noun: str) -> AfterValidator:
    def check(values: tuple[Any, ...]) -> tuple[Any, ...]:
        seen: set[Any] = set()
        for index, value in enumerate(values):
            key = getattr(value, "name", value)
            if key in seen:
                fail((index,), f"{noun} {key!r} is listed twice")
            seen.add(key)
        return values

    return AfterValidator(check)


class Guest(ScenarioModel):
    """The simulated VM: RAM (`memory:` or `blocks:`), fill, workload and devices."""

    machine: Text = QEMU_MACHINE
    """The machine name sent in the stream's configuration section; for QEMU peers the
    machine QEMU runs: none (RAM only), or pc, q35, pc-i440fx-X.Y, pc-q35-X.Y, which boot
    the harness's own x86 guest (its workload runs inside the VM)."""
    accel: Annotated[Accel, choice("an accelerator", ACCELS)] = "auto"
    """QEMU peers on a real machine: auto (KVM only with hardware virtualization, else
    TCG), kvm or tcg."""
    memory: PageSize | None = None
    """Guest RAM as one block named "ram" (64 MiB when neither this nor blocks is given)."""
    blocks: Annotated[tuple[Block, ...], AfterValidator(non_empty),
                      _no_duplicates("block")] | None = None
    """Named RAM blocks instead of memory."""
    fill: Fraction = 0.5
    """The share of pages with non-zero content at the start (0 to 1)."""
    content: Annotated[ContentKind, choice("a content kind", CONTENT_KINDS)] = "random"
    """What non-zero pages hold."""
    workload: Workload = Field(default_factory=Workload)
    """How the guest writes its RAM during the migration."""
    devices: Annotated[tuple[Annotated[DeviceName, choice("a device", DEVICE_NAMES)], ...],
                       _no_duplicates("device")] = DEFAULT_DEVICES
    """Device state migrated besides RAM; blocker makes the guest unmigratable."""
    disks: Annotated[tuple[Disk, ...], _no_duplicates("disk")] = ()
    """Raw disks for block migration (capability block), written from the seed."""

    @model_validator(mode="before")
    @classmethod
    def _default_memory(cls, data: Any) -> Any:
        if isinstance(data, dict) and "memory" not in data and "blocks" not in data:
            return {**data, "memory": DEFAULT_MEMORY}
        return data

    @model_validator(mode="after")
    def _memory_layout(self) -> Guest:
        if self.memory is not None and self.blocks is not None:
            fail(("blocks",), "give memory: (one block named \"ram\") or blocks:, not both",
                 at_key=True)
        hotset = self.workload.hotset
        if hotset is not None and hotset > self.total_memory:
            fail(("workload", "hotset"), f"the hotset ({format_size(hotset)}) does not fit in "
                 f"the guest's memory ({format_size(self.total_memory)})")
        return self

    @property
    def ram_blocks(self) -> tuple[Block, ...]:
        """The RAM blocks, `memory:` being one block named "ram"."""
        if self.blocks is not None:
            return self.blocks
        return (Block(name=QEMU_RAM_BLOCK, size=self.memory or DEFAULT_MEMORY),)

    @property
    def total_memory(self) -> int:
        return sum(block.size for block in self.ram_blocks)

    @property
    def real_machine(self) -> bool:
        """A machine with a vCPU and devices that boots the harness's own x86 guest."""
        return REAL_MACHINE.fullmatch(self.machine) is not None


# --- peers, hosts, transport ------------------------------------------------------------


def _args_as_text(value: Any) -> Any:
    """`args: [-m, 16]`: numbers on a command line are text."""
    if isinstance(value, list):
        return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                for v in value]
    return value


class Peer(ScenarioModel):
    """`source:` / `destination:`: the harness's own peer or a real QEMU."""

    kind: Annotated[PeerKind, choice("a peer kind", PEER_KINDS)] = "harness"
    """The harness's own peer, or a real QEMU."""
    args: Annotated[tuple[str, ...], BeforeValidator(_args_as_text)] = ()
    """kind: qemu only: extra QEMU arguments."""
    host: Text | None = None
    """The host (a key of hosts) whose agent runs this peer."""
    binary: Path | None = None
    """kind: qemu only: the QEMU binary to run."""
    capabilities: PeerCapabilities | None = None
    """This peer's migrate-set-capabilities over the scenario's (a name set here wins);
    for settings the two sides of a real migration can disagree on (multifd)."""
    parameters: MigrationParameters | None = None
    """This peer's migrate-set-parameters over the scenario's (a name set here wins),
    e.g. multifd-channels 3 on the source and 2 on the destination."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = dict(handler(core_schema))  # a peer's capabilities: QMP names, as the top's
        schema["properties"]["capabilities"]["anyOf"][0]["propertyNames"] = {
            "enum": list(CAPABILITIES)}
        return schema

    @model_validator(mode="after")
    def _qemu_only_keys(self) -> Peer:
        if self.kind != "qemu":
            issues = [Issue((key,), f"{key}: applies to kind: qemu only", at_key=True)
                      for key, value in (("args", self.args), ("binary", self.binary)) if value]
            raise_issues(issues)
        return self


def _agent_url(url: str) -> str:
    if not re.fullmatch(r"[a-z]+://\S+", url):
        raise ValueError(f"{url!r} is not an agent endpoint (expected a URL such as "
                         "tcp://10.0.0.2:5555)")
    return url


class Host(ScenarioModel):
    """A host of a multi-host run: where its agent listens; `address`, the address the
    other host's peer uses to reach it (default: the host part of `agent`); `keys`, the
    runner's CURVE keys for this agent (client keypair + the agent's public key)."""

    agent: Annotated[Text, AfterValidator(_agent_url)]
    address: Text | None = None
    keys: Path | None = None
    qemu: Path | None = None
    """The QEMU binary kind: qemu peers on this host run (default: the agent's PATH's
    qemu-system-x86_64); a path on that host."""
    workdir: Path | None = None
    """Where the agent of this host keeps the run's files (default: the agent's own
    work directory); an existing directory on that host."""

    @property
    def peer_address(self) -> str:
        """Where the migration stream reaches this host."""
        if self.address:
            return self.address
        rest = self.agent.split("://", 1)[1]
        return rest.rsplit(":", 1)[0].strip("[]") if ":" in rest else rest


class ProxyPlace(ScenarioModel):
    """`proxy:`: where the protocol-aware proxy runs when the scenario needs one."""

    host: Text | None = None
    """The host (a key of hosts) whose agent runs the proxy (default: the destination's
    host when the peers are on hosts, else beside the runner)."""


_URI_FORMS = {
    "tcp": (re.compile(r"tcp:(\[[^\]]+\]|[^:]*):(\d+)"), "tcp:HOST:PORT"),
    "unix": (re.compile(r"unix:.+"), "unix:PATH"),
    "exec": (re.compile(r"exec:.*\S.*"), "exec:COMMAND"),
    "fd": (re.compile(r"fd:\S+"), "fd:NAME"),
    "file": (re.compile(r"file:[^,]+(,offset=\d+)?"), "file:PATH[,offset=N]"),
}


class Transport(ScenarioModel):
    """`transport: tcp` (the runner picks the address) or `transport: {uri: "tcp:..."}`."""

    scheme: Annotated[TransportScheme, choice("a transport", TRANSPORT_SCHEMES)] = "tcp"
    uri: str | None = None

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        written = {"type": "string", "pattern": "^[a-z]+(:.*)?$", "description": (
            "a scheme (" + ", ".join(TRANSPORT_SCHEMES) + ") or a migration URI "
            "(" + ", ".join(form for _, form in _URI_FORMS.values()) + ")")}
        return {"anyOf": [written, handler(core_schema)]}

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"uri": data} if ":" in data else {"scheme": data}
        if isinstance(data, dict) and isinstance(data.get("uri"), str) and "scheme" not in data:
            prefix = data["uri"].split(":", 1)[0]
            return {**data, "scheme": prefix} if prefix in _URI_FORMS else data
        return data

    @model_validator(mode="after")
    def _uri_form(self) -> Transport:
        if self.uri is None:
            return self
        forms = ", ".join(form for _, form in _URI_FORMS.values())
        pattern, form = _URI_FORMS[self.scheme]
        prefix = self.uri.split(":", 1)[0]
        if prefix in _URI_FORMS and prefix != self.scheme:
            fail(("uri",), f"{self.uri!r} is a {prefix} URI, but scheme: is {self.scheme}")
        if not self.uri.startswith(self.scheme + ":"):
            fail(("uri",), f"{self.uri!r} is not a migration URI the harness speaks "
                 f"(expected one of: {forms})")
        match = pattern.fullmatch(self.uri)
        if match is None or (self.scheme == "tcp" and int(match[2]) > 65535):
            fail(("uri",), f"{self.uri!r} is not a {self.scheme} URI (expected {form})")
        return self


# --- expectations -----------------------------------------------------------------------


class Expect(ScenarioModel):
    """What the run must end with; a key left out is not checked."""

    source: Status | None = None
    """The source's final migration status."""
    destination: Status | None = None
    """The destination's final migration status."""
    memory: Annotated[MemoryExpectation, choice("a memory expectation",
                                                MEMORY_EXPECTATIONS)] | None = None
    """What the guest's RAM must be at the end."""
    disks: Annotated[DiskExpectation, choice("a disk expectation", ("identical",))] | None = None
    """identical: every sector of every disk equal on both sides at the end."""
    guest_runs_on: Annotated[GuestPlace, choice("a place", GUEST_PLACES)] | None = None
    """Where the guest runs at the end."""
    delivered: bool | None = None
    """true: a source that reports completed must have delivered the guest -- the
    destination completed too, with every page (when memory is compared).  QEMU 7.2's
    source reports completed without knowing (facts X2): invariant
    completed-means-delivered."""


# --- the scenario -----------------------------------------------------------------------


class Scenario(ScenarioModel):
    """One scenario file. `source_file` is where it was loaded from (None if built in code)."""

    name: Annotated[Text, AfterValidator(_scenario_name), WithJsonSchema({
        "type": "string", "pattern": r"^(?!.*\.\.)[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$",
        "description": "What reports and the work directory call the scenario: letters, "
                       "digits, '.', '_', '-' (not starting with '.'); default: the file's "
                       "stem"})]
    description: str = ""
    """For humans: what the scenario does and why."""
    seed: Annotated[StrictInt, AfterValidator(
        in_range(0, 2**64 - 1, "an integer from 0 to 2**64 - 1"))] = 0
    """Drives guest content, the workload and random faults (0 to 2**64 - 1)."""
    timeout: Annotated[Duration, AfterValidator(
        in_range(1e-3, float("inf"), "a duration of at least 1ms"))] = DEFAULT_TIMEOUT
    """The watchdog of the whole scenario."""
    guest: Guest = Field(default_factory=Guest)
    """The simulated VM."""
    source: Peer = Field(default_factory=Peer)
    """The migration source."""
    destination: Peer = Field(default_factory=Peer)
    """The migration destination."""
    hosts: dict[Text, Host] = Field(default_factory=dict)
    """Multi-host runs: the hosts by name, each with its agent."""
    proxy: ProxyPlace = Field(default_factory=ProxyPlace)
    """Where the proxy runs (network faults and wire triggers need it)."""
    transport: Transport = Field(default_factory=Transport)
    """How the stream travels between the peers."""
    capabilities: Capabilities = Field(default_factory=dict)
    """migrate-set-capabilities, by QMP name."""
    parameters: MigrationParameters = Field(default_factory=MigrationParameters)
    """migrate-set-parameters before the migration starts, by QMP name."""
    steps: tuple[Step, ...] = ()
    """What happens during the migration: triggers, then actions or faults."""
    expect: Expect = Field(default_factory=Expect)
    """What the run must end with."""
    tls: Tls | None = None
    """TLS on every channel, with the run's own CA and certificates (harness/scenario/tls.py)."""

    _source_file: Path | None = PrivateAttr(default=None)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = dict(handler(core_schema))  # name: may be left out: the file's stem
        schema["required"] = [key for key in schema.get("required", []) if key != "name"]
        if not schema["required"]:
            del schema["required"]
        schema["properties"]["capabilities"]["propertyNames"] = {"enum": list(CAPABILITIES)}
        return schema

    @property
    def source_file(self) -> Path | None:
        return self._source_file

    @property
    def postcopy(self) -> bool:
        return bool(self.capabilities.get("postcopy-ram"))

    def qmp_capabilities(self, role: str | None = None) -> list[dict[str, Any]]:
        """The `migrate-set-capabilities` argument (of `role`: with its own over them)."""
        caps = self.capabilities if role is None else self.capabilities_of(role)
        return [{"capability": name, "state": state} for name, state in caps.items()]

    def capabilities_of(self, role: str) -> dict[str, bool]:
        """The capabilities `role` gets: the scenario's, then the peer's own over them."""
        return {**self.capabilities, **(getattr(self, role).capabilities or {})}

    def parameters_of(self, role: str) -> dict[str, Any]:
        """The `migrate-set-parameters` arguments `role` gets: the scenario's, then the
        peer's own over them."""
        own = getattr(self, role).parameters
        return {**self.parameters.qmp_arguments(), **(own.qmp_arguments() if own else {})}

    def multifd_channels(self) -> int:
        """The multifd connections the source opens after its main one (0: multifd off);
        QEMU 7.2's default multifd-channels is 2."""
        if not self.capabilities_of("source").get("multifd"):
            return 0
        return int(self.parameters_of("source").get("multifd-channels") or 2)

    def step_named(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no step named {name!r}")

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any, info: ValidationInfo) -> Any:
        default = (info.context or {}).get("default_name")
        if isinstance(data, dict) and "name" not in data and default:
            return {**data, "name": default}
        return data

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Scenario:
        raise_issues(self._step_order_issues() + self._host_issues() + self._qemu_issues()
                     + self._postcopy_issues() + self._throttle_issues()
                     + self._proxy_issues() + self._harness_peer_issues()
                     + self._peer_settings_issues()
                     + self._pause_issues() + self._preempt_issues() + disk_issues(self)
                     + self._multifd_issues() + tls_issues(self))
        source_file = (info.context or {}).get("source_file")
        if source_file is not None:
            self._source_file = Path(source_file)
        return self

    def _step_order_issues(self) -> list[Issue]:
        issues: list[Issue] = []
        looped: set[str | None] = set()
        first_index: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            if step.name is not None and step.name in first_index:
                issues.append(Issue(("steps", index, "name"), f"step name {step.name!r} is "
                                    f"already used by steps[{first_index[step.name]}]"))
            elif step.name is not None:
                first_index[step.name] = index
        for index, step in enumerate(self.steps):
            if step.name not in looped:
                issues += self._after_issues(index, step, first_index, looped)
        return issues

    def _after_issues(self, index: int, step: Step, names: dict[str, int],
                      looped: set[str | None]) -> list[Issue]:
        where: tuple[PathItem, ...] = ("steps", index, "after")
        if step.after is None:
            return []
        if step.after not in names:
            known = ", ".join(names) or "none: give steps a name: to refer to them"
            return [Issue(where, f"{step.after!r} is not the name of a step "
                          f"(steps named: {known})")]
        if step.after == step.name:
            return [Issue(where, "a step cannot come after itself")]
        chain = [step.name]
        current: Step | None = self.steps[names[step.after]]
        while current is not None and current.after is not None:
            chain.append(current.name)
            if current.after == step.name:
                looped.update(chain)
                loop = " -> ".join(repr(n) for n in [*chain, step.name])
                return [Issue(where, f"the after: chain {loop} is a loop: no step in it "
                              "could ever run")]
            if current.after not in names or current.name in chain[:-1]:
                break
            current = self.steps[names[current.after]]
        return []

    def _host_issues(self) -> list[Issue]:
        known = ", ".join(self.hosts) or "none: define them under hosts:"
        places: list[tuple[tuple[PathItem, ...], str | None]] = [
            (("source", "host"), self.source.host),
            (("destination", "host"), self.destination.host),
            (("proxy", "host"), self.proxy.host)]
        places += [(("steps", index, "fault", "host"), step.fault.host)
                   for index, step in enumerate(self.steps) if isinstance(step.fault, LinkFault)]
        return [Issue(path, f"{host!r} is not one of the hosts (hosts: {known})")
                for path, host in places if host is not None and host not in self.hosts]

    def _qemu_issues(self) -> list[Issue]:
        qemu_peers = [name for name in ("source", "destination")
                      if getattr(self, name).kind == "qemu"]
        issues = self._accel_issues(qemu_peers) + self._consistent_issues(qemu_peers)
        if not qemu_peers:
            return issues
        peer = f"{qemu_peers[0]}.kind: qemu"
        if self.guest.real_machine:
            return issues + self._real_machine_issues(qemu_peers)
        supports = (f"a QEMU peer runs machine {QEMU_MACHINE} (RAM only, one block "
                    f"\"{QEMU_RAM_BLOCK}\" and the devices {' and '.join(QEMU_DEVICES)}) or a "
                    f"real machine ({REAL_MACHINE_FORMS})")
        return issues + self._qemu_guest_issues(f"{supports} ({peer})")

    def _accel_issues(self, qemu_peers: list[str]) -> list[Issue]:
        if self.guest.accel == "auto" or (qemu_peers and self.guest.real_machine):
            return []
        return [Issue(("guest", "accel"), f"accel: {self.guest.accel} applies to a real machine "
                      f"({REAL_MACHINE_FORMS}) run by a QEMU peer", at_key=True)]

    def _consistent_issues(self, qemu_peers: list[str]) -> list[Issue]:
        if self.expect.memory != "consistent" or \
                (len(qemu_peers) == 2 and self.guest.real_machine):
            return []
        return [Issue(("expect", "memory"), "memory: consistent checks the pages the real guest "
                      "writes, so both peers must be kind: qemu on a real machine "
                      f"({REAL_MACHINE_FORMS}); the simulated guest uses identical")]

    def _real_machine_issues(self, qemu_peers: list[str]) -> list[Issue]:
        guest, issues = self.guest, []
        machine = f"machine {guest.machine} runs the harness's own x86 guest"
        if guest.blocks is not None:
            issues.append(Issue(("guest", "blocks"), f"{machine}: its RAM blocks are the "
                                "machine's own (write memory: SIZE instead)"))
        elif guest.total_memory % (1 << 20) or guest.total_memory < (16 << 20):
            issues.append(Issue(("guest", "memory"), f"{machine}: memory must be a whole "
                                "number of MiB, at least 16MiB (QEMU's -m)"))
        simulated = {"fill": "initialises its own memory", "content": "initialises its own "
                     "memory", "devices": "has the machine's own devices"}
        defaults = {key: Guest.model_fields[key].default for key in simulated}
        issues += [Issue(("guest", key), f"{key}: describes the simulated guest; the real "
                         f"guest of {machine[8:]} {why}", at_key=True)
                   for key, why in simulated.items() if getattr(guest, key) != defaults[key]]
        if qemu_peers == ["destination"]:  # the source replays a paused QEMU's devices
            issues += self._replay_issues(machine)
        if self.postcopy and self.expect.memory == "identical" and \
                "destination" in qemu_peers:
            issues.append(Issue(("expect", "memory"), "in postcopy the real guest runs on the "
                                "destination before its memory can be read: use memory: "
                                "consistent (every page self-consistent, none older than the "
                                "source's at the switchover)"))
        return issues

    def _replay_issues(self, machine: str) -> list[Issue]:
        """A harness source to a QEMU destination on a real machine sends the device
        sections of a paused QEMU of the destination's command line (harness/qemu/replay.py):
        in precopy, with both peers beside the runner."""
        why = (f"{machine}: a harness source replays the device state of a paused QEMU "
               "(precopy, peers beside the runner)")
        issues = [Issue((role, "host"), f"{why}; not with {role}.host", at_key=True)
                  for role in ("source", "destination") if getattr(self, role).host]
        if self.postcopy:
            issues.append(Issue(("capabilities", "postcopy-ram"), f"{why}; postcopy with "
                                "--replay-devices is not implemented by the harness peer",
                                at_key=True))
        return issues

    def _qemu_guest_issues(self, supports: str) -> list[Issue]:
        guest = self.guest
        issues = []
        if guest.machine != QEMU_MACHINE:
            issues.append(Issue(("guest", "machine"), f"{supports}; not machine {guest.machine}"))
        blocks = guest.ram_blocks
        if len(blocks) != 1 or blocks[0].name != QEMU_RAM_BLOCK:
            names = ", ".join(block.name for block in blocks)
            issues.append(Issue(("guest", "blocks"), f"{supports}; not the blocks {names} "
                                "(write memory: SIZE instead)"))
        issues += [Issue(("guest", "devices", index), f"{supports}; not {device}")
                   for index, device in enumerate(guest.devices) if device not in QEMU_DEVICES]
        missing = [d for d in QEMU_DEVICES if d not in guest.devices]
        if missing:
            issues.append(Issue(("guest", "devices"), f"{supports}; {' and '.join(missing)} "
                                "cannot be left out"))
        return issues

    def _postcopy_issues(self) -> list[Issue]:
        if self.postcopy:
            return []
        return [Issue(("steps", index, "do"), f"{step.action_name} needs capabilities: "
                      "{postcopy-ram: true} (QEMU: \"Enable postcopy with "
                      "migrate_set_capability before the start of migration\")")
                for index, step in enumerate(self.steps)
                if step.action_name in POSTCOPY_ACTIONS]

    def _pause_issues(self) -> list[Issue]:
        """migrate-continue, and a trigger on pre-switchover, need pause-before-switchover:
        without it the source never pauses (migration_maybe_pause), so the step would only
        be refused ("Migration not in expected state: ...") or never fire."""
        if self.capabilities.get("pause-before-switchover"):
            return []
        need = "needs capabilities: {pause-before-switchover: true}"
        issues = [Issue(("steps", index, "do"), f"migrate-continue {need}")
                  for index, step in enumerate(self.steps)
                  if step.action_name == "migrate-continue"]
        issues += [Issue(("steps", index, "on", "status", "is"), f"pre-switchover {need} "
                         "(no migration reaches it otherwise)")
                   for index, step in enumerate(self.steps)
                   if isinstance(step.on, StatusTrigger) and step.on.status.is_ == "pre-switchover"]
        return issues

    def _harness_peer_issues(self) -> list[Issue]:
        harness = [name for name in ("source", "destination")
                   if getattr(self, name).kind == "harness"]
        if not harness:
            return []
        places: list[tuple[tuple[PathItem, ...], MigrationParameters]] = [
            (("parameters",), self.parameters)]
        places += [(("steps", index, "do", "migrate-set-parameters"),
                    step.do.migrate_set_parameters) for index, step in enumerate(self.steps)
                   if isinstance(step.do, SetParametersAction)]
        issues = harness_peer_issues(harness[0], self.capabilities, places)
        for role in harness:  # what a harness peer was given of its own
            own = getattr(self, role)
            found = harness_peer_issues(role, own.capabilities or {}, [
                ((role, "parameters"), own.parameters)] if own.parameters else [])
            issues += [Issue((role, *i.path) if i.path[0] == "capabilities" else i.path,
                             i.message) for i in found]
        return issues

    def _peer_settings_issues(self) -> list[Issue]:
        """A peer's own capabilities: QEMU's combinations checked on what that peer gets;
        the postcopy ones stay scenario-wide (the steps and the proxy read them there)."""
        issues = []
        for role in ("source", "destination"):
            own = getattr(self, role).capabilities or {}
            issues += [Issue((role, "capabilities", name), f"{name} applies to both peers: "
                             "set it in the scenario's capabilities:", at_key=True)
                       for name in own if name in SCENARIO_WIDE_CAPABILITIES]
            issues += [Issue((role, "capabilities", *i.path), i.message)
                       for i in capability_issues(self.capabilities_of(role))
                       if own and i.path[0] in own]
        return issues

    def _proxy_issues(self) -> list[Issue]:
        """Network faults and wire triggers need the proxy, which sits on a socket."""
        if self.transport.scheme in ("tcp", "unix"):
            return []
        issues = []
        for index, step in enumerate(self.steps):
            if isinstance(step.fault, NetFault):
                issues.append(Issue(("steps", index, "fault", "kind"), (
                    f"{step.fault.kind} acts in the proxy between the peers, which needs "
                    f"transport: tcp or unix (this scenario uses {self.transport.scheme})")))
            if isinstance(step.on, (EventTrigger, CommandTrigger, FrameTrigger, BytesTrigger)):
                issues.append(Issue(("steps", index, "on"), (
                    f"the {step.on.KEY}: trigger is seen by the proxy between the peers, which "
                    f"needs transport: tcp or unix (this scenario uses "
                    f"{self.transport.scheme})")))
        return issues

    def _preempt_issues(self) -> list[Issue]:
        """channel: preempt names postcopy-preempt's second connection, which the source
        opens only when the capability is on (on both peers: the scenario's capabilities
        are set on each)."""
        if self.capabilities.get("postcopy-preempt"):
            return []
        need = ("channel: preempt needs capabilities: {postcopy-ram: true, postcopy-preempt: "
                "true} (without it there is no preempt connection)")
        issues = []
        for index, step in enumerate(self.steps):
            if isinstance(step.fault, NetFault) and step.fault.channel == "preempt":
                issues.append(Issue(("steps", index, "fault", "channel"), need))
            channel = step.on.bytes.channel if isinstance(step.on, BytesTrigger) else \
                step.on.channel if isinstance(step.on, FrameTrigger) else None
            if channel == "preempt":
                issues.append(Issue(("steps", index, "on", step.on.KEY, "channel")
                                    if isinstance(step.on, BytesTrigger)
                                    else ("steps", index, "on", "channel"), need))
        return issues

    def _multifd_issues(self) -> list[Issue]:
        """channel: multifd-N names the multifd connection whose init packet says id N:
        there is one only with capabilities: {multifd: true}, and N < multifd-channels."""
        count = self.multifd_channels()
        issues = []
        for index, step in enumerate(self.steps):
            places: list[tuple[tuple[PathItem, ...], str]] = []
            if isinstance(step.fault, NetFault):
                places.append((("steps", index, "fault", "channel"), step.fault.channel))
            if isinstance(step.on, BytesTrigger):
                places.append((("steps", index, "on", "bytes", "channel"), step.on.bytes.channel))
            elif isinstance(step.on, FrameTrigger) and step.on.channel is not None:
                places.append((("steps", index, "on", "channel"), step.on.channel))
            for path, channel in places:
                n = multifd_channel_id(channel)
                if n is None or n < count:
                    continue
                issues.append(Issue(path, (
                    f"{channel} needs capabilities: {{multifd: true}} (without it there is no "
                    "multifd connection)") if not count else (
                    f"{channel} names no channel: multifd-channels is {count}, so the ids are "
                    f"0 to {count - 1}")))
        return issues

    def _throttle_issues(self) -> list[Issue]:
        """max-cpu-throttle against the cpu-throttle-initial in force (a mapping that sets
        both was checked on its own already)."""
        initial = self.parameters.cpu_throttle_initial
        places: list[tuple[tuple[PathItem, ...], MigrationParameters]] = [
            (("parameters",), self.parameters)]
        places += [(("steps", index, "do", "migrate-set-parameters"),
                    step.do.migrate_set_parameters) for index, step in enumerate(self.steps)
                   if isinstance(step.do, SetParametersAction)]
        issues = []
        for path, params in places:
            found = params.cpu_throttle_initial is None and throttle_issue(params, initial)
            if found:
                issues.append(Issue((*path, *found.path), found.message))
        return issues


__all__ = [
    "Action", "Block", "BytesCondition", "BytesTrigger", "CommandAction", "CommandTrigger",
    "EventTrigger", "Expect", "Fault", "Guest", "Host", "LinkFault", "MigrationParameters",
    "NetFault", "PassTrigger", "Peer", "ProcessFault", "ProgressTrigger", "RemainingCondition",
    "RemainingTrigger", "Scenario", "SetParametersAction", "StatusCondition", "StatusTrigger",
    "Step", "TimeTrigger", "Transport", "Trigger", "TriggerBase", "Workload",
]
