"""vmstate: declarative device state, encoded and decoded as QEMU does.

Strategy: a device is a `VMStateDescription` (name, version_id, minimum_version_id, fields,
subsections, a `needed` rule) made of `Field`s whose element type is a `FieldType`
(integers of each width, bool, buffers, QEMU's special infos) or a nested description
(`struct`, or `tmp` whose fields are described inline).  Values are plain dicts keyed by
the field's description name; arrays are lists; subsections are nested dicts keyed by the
subsection's name.

`save_state` writes the fields in declaration order, then the needed subsections, and
returns the JSON description QEMU's `vmstate_save_state_v` writes into the VM description
trailer (same keys, same order, sizes measured while writing).  `load_state` mirrors
`vmstate_load_state` (`migration/vmstate.c`): version checks with QEMU's messages, fields
present by version or `exists` rule, subsections peeked by name.  `from_vmdesc` turns a
VM description JSON entry back into a description, so any device QEMU wrote can be
decoded and re-encoded byte for byte from the trailer alone.  `field_rows` lays loaded
values out for people: every field with its type, wire size and a short value.
"""

from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from .constants import SectionType
from .errors import LocalProtocolError, RemoteProtocolError
from .wire import NeedData, Reader, Truncated, pack_be32, str8

Values = dict[str, Any]


@dataclass(frozen=True)
class FieldType:
    """A VMStateInfo: `name` is its JSON type name; `fmt` a struct format for integers."""

    name: str
    size: int | None = None  # fixed element size; None = the field gives it
    fmt: str | None = None  # ">q", ">B", ... for integers
    is_bool: bool = False
    counted: bool = False  # a str8 (the configuration's "capability" info)

    @property
    def is_int(self) -> bool:
        return self.fmt is not None


def _int(name: str, fmt: str) -> FieldType:
    return FieldType(name, struct.calcsize(fmt), fmt)


INT8, INT16, INT32, INT64 = (_int("int8", ">b"), _int("int16", ">h"), _int("int32", ">i"),
                             _int("int64", ">q"))
UINT8, UINT16, UINT32, UINT64 = (_int("uint8", ">B"), _int("uint16", ">H"),
                                 _int("uint32", ">I"), _int("uint64", ">Q"))
BOOL = FieldType("bool", 1, ">B", is_bool=True)
TIMER = _int("timer", ">q")  # be64 expiry in ns, -1 = not armed
INT32_EQUAL = _int("int32 equal", ">i")
UINT8_EQUAL = _int("uint8 equal", ">B")
UINT16_EQUAL = _int("uint16 equal", ">H")
UINT32_EQUAL = _int("uint32 equal", ">I")
UINT64_EQUAL = _int("uint64 equal", ">Q")
INT32_LE = _int("int32 le", ">i")
CAPABILITY = FieldType("capability", counted=True)
BUFFER = FieldType("buffer")
UNUSED_BUFFER = FieldType("unused_buffer")

KNOWN_TYPES: dict[str, FieldType] = {
    t.name: t for t in (INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64, BOOL, TIMER,
                        INT32_EQUAL, UINT8_EQUAL, UINT16_EQUAL, UINT32_EQUAL, UINT64_EQUAL,
                        INT32_LE, BUFFER, UNUSED_BUFFER, CAPABILITY)
}


@dataclass(frozen=True)
class Field:
    """One VMStateField.

    `count` None is a scalar; an int is a fixed array (a list value).  `count_from` names
    an earlier integer field holding the element count (VMSTATE_VARRAY_*); `size_from` one
    holding a buffer's byte size (VMSTATE_VBUFFER).  A field is on the wire when its
    `version_id` <= the stream's version, or when `exists(values, version)` says so.
    `compress` overrides QEMU's vmdesc rule for arrays (used by `from_vmdesc`).
    """

    name: str
    type: FieldType | None = None
    size: int | None = None
    count: int | None = None
    count_from: str | None = None
    size_from: str | None = None
    struct: VMStateDescription | None = None
    inline: bool = False  # VMSTATE_WITH_TMP: JSON type "tmp", nested description inline
    version_id: int = 0
    exists: Callable[[Mapping[str, Any], int], bool] | None = None
    compress: bool | None = None

    @property
    def type_name(self) -> str:
        if self.struct is not None:
            return "tmp" if self.inline else "struct"
        assert self.type is not None
        return self.type.name

    def element_size(self, values: Mapping[str, Any]) -> int:
        if self.size_from is not None:
            return int(values[self.size_from])
        if self.size is not None:
            return self.size
        assert self.type is not None and self.type.size is not None, self.name
        return self.type.size

    def can_compress(self) -> bool:
        """migration/vmstate.c: vmsd_can_compress."""
        if self.compress is not None:
            return self.compress
        if self.exists is not None:
            return False
        if self.struct is not None:
            if self.struct.subsections:
                return False
            return all(f.can_compress() for f in self.struct.fields)
        return True


@dataclass(frozen=True)
class VMStateDescription:
    """A VMStateDescription.

    `needed(values)`: for a device, whether its section is sent at all; for a subsection,
    whether it is written after its parent's fields (given the parent's values).  None
    means: a subsection is needed when the parent's values hold it; a device always.
    `post_load(values, version)` may raise ValueError with QEMU's message.
    `legacy_size` marks an old-style (non-vmsd) handler described by its byte count.
    """

    name: str
    version_id: int
    fields: tuple[Field, ...] = ()
    minimum_version_id: int = 0
    subsections: tuple[VMStateDescription, ...] = ()
    needed: Callable[[Mapping[str, Any]], bool] | None = None
    post_load: Callable[[Values, int], None] | None = None
    legacy_size: int | None = None

    def subsection(self, name: str) -> VMStateDescription | None:
        for sub in self.subsections:
            if sub.name == name:
                return sub
        return None

    @cached_property
    def keys(self) -> list[str]:
        """The value key of each field: its name, with QEMU's "[n]" when not unique."""
        names = [f.name for f in self.fields]
        out = []
        for i, name in enumerate(names):
            if names.count(name) > 1:
                out.append(f"{name}[{names[:i].count(name)}]")
            else:
                out.append(name)
        return out


def _present(f: Field, values: Mapping[str, Any], version: int) -> bool:
    if f.exists is not None:
        return bool(f.exists(values, version))
    return f.version_id <= version


def _count(f: Field, values: Mapping[str, Any]) -> int:
    if f.count_from is not None:
        return int(values[f.count_from])
    return 1 if f.count is None else f.count


# ---------------------------------------------------------------------------- saving


def save_state(vmsd: VMStateDescription, values: Mapping[str, Any], out: bytearray,
               version: int | None = None) -> dict[str, Any]:
    """Append the payload of `vmsd` to `out`; return its JSON description.

    The description has QEMU's keys in QEMU's order: vmsd_name, version, fields and, when
    a subsection was written, subsections (migration/vmstate.c: vmstate_save_state_v).
    """
    version = vmsd.version_id if version is None else version
    if vmsd.legacy_size is not None:
        data = values.get("data", b"")
        if len(data) != vmsd.legacy_size:
            raise LocalProtocolError(f"{vmsd.name}: legacy data must be {vmsd.legacy_size} bytes")
        out += data
        return {"size": vmsd.legacy_size,
                "fields": [{"name": "data", "size": vmsd.legacy_size, "type": "buffer"}]}
    desc: dict[str, Any] = {"vmsd_name": vmsd.name, "version": version}
    fields_desc: list[dict[str, Any]] = []
    desc["fields"] = fields_desc
    for key, f in zip(vmsd.keys, vmsd.fields):
        if not _present(f, values, version):
            continue
        if key not in values and f.type is not UNUSED_BUFFER:
            raise LocalProtocolError(f"{vmsd.name}: no value for field '{key}'")
        _save_field(vmsd, key, f, values, out, fields_desc, version)
    subs = _save_subsections(vmsd, values, out)
    if subs:
        desc["subsections"] = subs
    return desc


def _save_field(vmsd: VMStateDescription, key: str, f: Field, values: Mapping[str, Any],
                out: bytearray, fields_desc: list[dict[str, Any]], version: int) -> None:
    n = _count(f, values)
    scalar = f.count is None and f.count_from is None
    value = values.get(key)
    elements = [value] if scalar else list(value if value is not None else [])
    if f.type is UNUSED_BUFFER and value is None:
        elements = [None] * n
    if len(elements) != n:
        raise LocalProtocolError(f"{vmsd.name}: field '{key}' needs {n} elements, "
                                 f"got {len(elements)}")
    compress = f.can_compress()
    for i, element in enumerate(elements):
        start = len(out)
        entry: dict[str, Any] = {"name": key}
        if n > 1:
            entry["array_len" if compress else "index"] = n if compress else i
        entry["type"] = f.type_name
        if f.struct is not None:
            nested = save_state(f.struct, element or {}, out, f.struct.version_id)
            if f.inline:
                entry.update(nested)
            else:
                entry["struct"] = nested
        else:
            _save_scalar(vmsd, key, f, element, values, out)
        entry["size"] = len(out) - start
        if i == 0 or not compress:
            fields_desc.append(entry)


def _save_scalar(vmsd: VMStateDescription, key: str, f: Field, element: Any,
                 values: Mapping[str, Any], out: bytearray) -> None:
    t = f.type
    assert t is not None
    if t.fmt is not None:
        try:
            out += struct.pack(t.fmt, int(element))
        except (struct.error, TypeError, ValueError) as err:
            raise LocalProtocolError(f"{vmsd.name}: field '{key}': {err}") from None
        return
    if t.counted:
        out += str8(element)
        return
    size = f.element_size(values)
    if element is None and t is UNUSED_BUFFER:
        element = bytes(size)
    raw = bytes(element)
    if len(raw) != size:
        raise LocalProtocolError(f"{vmsd.name}: field '{key}' must be {size} bytes, "
                                 f"got {len(raw)}")
    out += raw


def _save_subsections(vmsd: VMStateDescription, values: Mapping[str, Any],
                      out: bytearray) -> list[dict[str, Any]]:
    """migration/vmstate.c: vmstate_subsection_save."""
    written = []
    for sub in vmsd.subsections:
        needed = sub.needed(values) if sub.needed is not None else sub.name in values
        if not needed:
            continue
        out.append(SectionType.SUBSECTION)
        out += str8(sub.name)
        out += pack_be32(sub.version_id)
        written.append(save_state(sub, values.get(sub.name, {}), out))
    return written


# --------------------------------------------------------------------------- loading


def load_state(r: Reader, vmsd: VMStateDescription, version: int) -> Values:
    """Read the payload of `vmsd` sent at `version` (migration/vmstate.c: vmstate_load_state)."""
    if vmsd.legacy_size is not None:
        return {"data": r.take(vmsd.legacy_size)}
    if version > vmsd.version_id:
        raise RemoteProtocolError(f"{vmsd.name}: incoming version_id {version} is too new "
                                  f"for local version_id {vmsd.version_id}")
    if version < vmsd.minimum_version_id:
        # QEMU 7.2's words, with its two spaces
        raise RemoteProtocolError(f"{vmsd.name}: incoming version_id {version} is too old "
                                  f"for local minimum version_id  {vmsd.minimum_version_id}")
    values: Values = {}
    for key, f in zip(vmsd.keys, vmsd.fields):
        if not _present(f, values, version):
            continue
        try:
            values[key] = _load_field(r, f, values, version)
        except NeedData:
            raise
        except Truncated as err:
            raise RemoteProtocolError(f"Failed to load {vmsd.name}:{f.name}", offset=err.offset,
                                      errno=_errno.EIO) from None
        except RemoteProtocolError as err:
            raise err.with_context(f"Failed to load {vmsd.name}:{f.name}")
    _load_subsections(r, vmsd, values)
    if vmsd.post_load is not None:
        try:
            vmsd.post_load(values, version)
        except ValueError as err:
            raise RemoteProtocolError(str(err)) from None
    return values


def _load_field(r: Reader, f: Field, values: Values, version: int) -> Any:
    n = _count(f, values)
    scalar = f.count is None and f.count_from is None
    items = [_load_element(r, f, values, version) for _ in range(n)]
    return items[0] if scalar else items


def _load_element(r: Reader, f: Field, values: Values, version: int) -> Any:
    if f.struct is not None:
        # a tmp loads at the field's version (get_tmp), a struct at its own (VMS_STRUCT)
        return load_state(r, f.struct, f.version_id if f.inline else f.struct.version_id)
    t = f.type
    assert t is not None
    if t.fmt is not None:
        size = t.size or 0
        r.require(size)
        (v,) = struct.unpack_from(t.fmt, r.buf, r.pos)
        r.pos += size
        return bool(v) if t.is_bool else v
    if t.counted:
        return r.str8().decode("latin-1")
    return r.take(f.element_size(values))


def _load_subsections(r: Reader, vmsd: VMStateDescription, values: Values) -> None:
    """migration/vmstate.c: vmstate_subsection_load: peek for 0x05 and a name of ours."""
    prefix = vmsd.name.encode()
    while True:
        try:
            if r.peek(0) != SectionType.SUBSECTION:
                return
            length = r.peek(1)
            if length < len(prefix) + 1:
                return
            name = r.peek_bytes(2, length)
        except Truncated:
            return  # QEMU's peek fails at the end of input: no more subsections
        if not name.startswith(prefix):
            return
        sub = vmsd.subsection(name.decode("latin-1"))
        if sub is None:
            raise RemoteProtocolError(
                f"{vmsd.name}: unknown subsection '{name.decode('latin-1')}'",
                offset=r.offset, errno=_errno.ENOENT)
        r.skip(2 + length)
        sub_version = r.be32()
        values[sub.name] = load_state(r, sub, sub_version)


# ------------------------------------------------------------- descriptions from JSON


def from_vmdesc(entry: Mapping[str, Any]) -> VMStateDescription:
    """A description of what one VM description entry says was written.

    Works for device entries ({"name", "instance_id", "vmsd_name", ...}), nested struct and
    subsection objects, and old-style entries ({"name", "instance_id", "size", "fields"}).
    Non-integer QEMU infos become raw byte fields of the written size.
    """
    if "vmsd_name" not in entry:
        size = int(entry["size"])
        if size < 0:
            raise ValueError(f"device '{entry.get('name')}': negative size")
        return VMStateDescription(str(entry.get("name", "")), 0, legacy_size=size)
    fields: list[Field] = []
    for run in _indexed_runs(entry.get("fields", [])):
        described = [_field_from_vmdesc(item) for item in run]
        if len(run) > 1 and not _same_elements(described):
            # elements of one array written differently (ide_drive's identify_data only
            # where a drive is attached): each is its own field, in order
            fields += [replace(fd, name=f"{fd.name}[{item['index']}]")
                       for fd, item in zip(described, run)]
            continue
        merged = described[0]
        for fd in described[1:]:
            merged = _merge_indexed(merged, fd)
        fields.append(merged)
    subsections = tuple(from_vmdesc(s) for s in entry.get("subsections", []))
    return VMStateDescription(str(entry["vmsd_name"]), int(entry["version"]), tuple(fields),
                              subsections=subsections)


def _field_from_vmdesc(item: Mapping[str, Any]) -> Field:
    name = str(item["name"])
    type_name = str(item["type"])
    size = int(item["size"])
    count = int(item["array_len"]) if "array_len" in item else None
    if size < 0 or (count is not None and count < 0):
        raise ValueError(f"field '{name}': negative size or count in the VM description")
    compress: bool | None = None
    if "index" in item:
        count, compress = 1, False
    if type_name == "struct":
        return Field(name, struct=from_vmdesc(item["struct"]), count=count, compress=compress)
    if type_name == "tmp":
        return Field(name, struct=from_vmdesc(item), inline=True, count=count, compress=compress)
    known = KNOWN_TYPES.get(type_name)
    if known is not None and known.fmt is not None and known.size == size:
        return Field(name, known, count=count, compress=compress)
    ftype = known if known is not None else FieldType(type_name)
    return Field(name, ftype, size=size, count=count, compress=compress)


def _indexed_runs(items: list[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """The vmdesc's fields, consecutive elements of one array (`index` 0, 1, ...) grouped."""
    runs: list[list[Mapping[str, Any]]] = []
    for item in items:
        last = runs[-1][-1] if runs else None
        if last is not None and "index" in item and int(item["index"]) > 0 \
                and "index" in last and str(last["name"]) == str(item["name"]):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _same_elements(fields: list[Field]) -> bool:
    """Whether array elements are written alike: the same fields and sizes (subsections
    may differ: they are peeked by name on the wire, so one description holds them all)."""
    def shape(f: Field) -> Any:
        if f.struct is None:
            return (f.type_name, f.size)
        return tuple(shape(x) for x in f.struct.fields)
    return len({shape(f) for f in fields}) == 1


def _merge_indexed(prev: Field, item: Field) -> Field:
    """Fold element i of a non-compressible array into the field of elements 0..i-1."""
    struct_desc = prev.struct
    if struct_desc is not None and item.struct is not None:
        known = {s.name for s in struct_desc.subsections}
        extra = tuple(s for s in item.struct.subsections if s.name not in known)
        struct_desc = replace(struct_desc, subsections=struct_desc.subsections + extra)
    return replace(prev, count=(prev.count or 1) + 1, struct=struct_desc)


@dataclass
class DeviceDescription:
    """A device as the destination knows it: its idstr, instance and description."""

    idstr: str
    instance_id: int
    vmsd: VMStateDescription
    version_id: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.version_id < 0:
            self.version_id = self.vmsd.version_id


def devices_from_vmdesc(vmdesc: Mapping[str, Any]) -> list[DeviceDescription]:
    """Every device a VM description trailer describes."""
    out = []
    for entry in vmdesc.get("devices", []):
        vmsd = from_vmdesc(entry)
        version = int(entry.get("version", 0))
        out.append(DeviceDescription(str(entry["name"]), int(entry["instance_id"]), vmsd,
                                     version))
    return out


def vmdesc_entry(idstr: str, instance_id: int, desc: Mapping[str, Any]) -> dict[str, Any]:
    """A device's entry in the trailer: name and instance, then its description."""
    return {"name": idstr, "instance_id": instance_id, **desc}


# ------------------------------------------------------------------ values, for people

_SHORT_BYTES = 16
_SHORT_ITEMS = 8


def field_rows(vmsd: VMStateDescription, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every field `load_state` read, in wire order: {name, type, size (wire bytes), value
    (short: an int, "0x..", "zeros(N)", a few items)}, a struct's or tmp's `fields`, and
    the subsections read ({subsection, version, size, fields})."""
    rows: list[dict[str, Any]] = []
    for key, f in zip(vmsd.keys, vmsd.fields):
        if key in values:
            rows.append(_row(key, f, values[key], values))
    for sub in vmsd.subsections:
        if sub.name in values:
            inner = field_rows(sub, values[sub.name])
            rows.append({"subsection": sub.name, "version": sub.version_id,
                         "size": 1 + 1 + len(sub.name) + 4 + sum(r["size"] for r in inner),
                         "fields": inner})
    return rows


def _row(key: str, f: Field, value: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    scalar = f.count is None and f.count_from is None
    elements = [value] if scalar else list(value)
    row: dict[str, Any] = {"name": key, "type": f.type_name}
    if not scalar:
        row["count"] = len(elements)
    if f.struct is not None:
        nested = [field_rows(f.struct, e) for e in elements]
        row["size"] = sum(r["size"] for rows in nested for r in rows)
        row["fields"] = nested[0] if scalar else nested
        return row
    row["size"] = sum(_scalar_size(f, e, values) for e in elements)
    row["value"] = short_value(value)
    return row


def _scalar_size(f: Field, element: Any, values: Mapping[str, Any]) -> int:
    t = f.type
    assert t is not None
    if t.fmt is not None:
        return t.size or 0
    if t.counted:
        return 1 + len(str(element).encode("latin-1"))
    return f.element_size(values)


def short_value(value: Any) -> Any:
    """A value in a few characters: ints as they are (hex when large), bytes as hex."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -0x10000 < value < 0x10000 else hex(value)
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        if not any(raw):
            return f"zeros({len(raw)})"
        text = raw[:_SHORT_BYTES].hex()
        return text if len(raw) <= _SHORT_BYTES else f"{text}..(+{len(raw) - _SHORT_BYTES} bytes)"
    if isinstance(value, list):
        items = [short_value(v) for v in value[:_SHORT_ITEMS]]
        return items if len(value) <= _SHORT_ITEMS else [*items, f"..(+{len(value) - _SHORT_ITEMS})"]
    return value
