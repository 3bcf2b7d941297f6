"""Annotated machine code: bytes written by hand, each with the instruction it encodes.

Strategy: the real guest is a few hundred bytes of x86, so no assembler is needed at
install or run time -- each instruction is given as its encoding (hex) together with its
GNU as Intel-syntax text.  This module only lays the items out: labels, absolute label
references (disp16/disp32 and data words), jumps relaxed like gas relaxes them (every
jump starts short, one that does not reach grows to near, repeated until nothing
changes), `.p2align N, 0` and `.org N, 0` zero padding.  `listing()` renders the same
items as a GNU as source file; assembling that file (`as --32`, `ld -Ttext ORIGIN
--oformat binary`) must give `assemble()`'s bytes exactly, which is how the tests prove
that every annotation is the instruction its bytes encode.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError

__all__ = ["Asm", "AsmError"]

# condition-code nibble of Jcc (70+cc rel8, 0f 80+cc rel16/32): Intel SDM vol. 2, "Jcc"
_CC = {"jo": 0x0, "jno": 0x1, "jb": 0x2, "jc": 0x2, "jae": 0x3, "jnc": 0x3, "je": 0x4,
       "jz": 0x4, "jne": 0x5, "jnz": 0x5, "jbe": 0x6, "ja": 0x7, "js": 0x8, "jns": 0x9,
       "jl": 0xC, "jge": 0xD, "jle": 0xE, "jg": 0xF}
_WIDTH_DIRECTIVE = {1: ".byte", 2: ".word", 4: ".long", 8: ".quad"}


class AsmError(HarnessError, ValueError):
    """A label is missing or defined twice, a value does not fit, a padding goes back."""


@dataclass
class _Item:
    kind: str            # "ins" | "data" | "jump" | "align" | "org" | "label" | "mode" | "note"
    text: str = ""       # the gas line (instruction, directive, label name, comment)
    code: bytes = b""    # fixed bytes (ins: before the reference)
    ref: str | None = None   # label whose absolute address follows `code`
    width: int = 0       # bytes of that address (ins/data) or of the data value
    value: int = 0       # data: the constant (when ref is None); align: power; org: offset
    after: bytes = b""   # ins: bytes after the reference (an immediate)
    note: str = ""       # comment for humans
    bits: int = 32       # code size the item is assembled in (jumps)


class Asm:
    """A program at `origin`: add items in order, then `assemble()` or `listing()`."""

    def __init__(self, origin: int) -> None:
        self.origin = origin
        self._items: list[_Item] = []
        self._bits = 16

    # ------------------------------------------------------------------ items
    def mode(self, bits: int) -> None:
        """Switch code size (`.code16` / `.code32`); the program starts in 16-bit code."""
        if bits not in (16, 32):
            raise AsmError(f"code size {bits}: only 16 and 32")
        self._bits = bits
        self._items.append(_Item("mode", f".code{bits}", bits=bits))

    def label(self, name: str) -> None:
        self._items.append(_Item("label", name))

    def note(self, text: str) -> None:
        """A comment line in the listing (no bytes)."""
        self._items.append(_Item("note", text))

    def ins(self, hexcode: str, text: str, note: str = "", ref: str | None = None,
            width: int = 4, after: str = "") -> None:
        """One instruction: `hexcode`, then the address of `ref` (width bytes), then `after`."""
        self._items.append(_Item("ins", text, bytes.fromhex(hexcode), ref,
                                 width if ref else 0, after=bytes.fromhex(after), note=note,
                                 bits=self._bits))

    def jump(self, op: str, target: str, note: str = "") -> None:
        """`jmp`/`jcc` to a label: rel8 when it reaches, else rel16 (16-bit) / rel32."""
        if op != "jmp" and op not in _CC:
            raise AsmError(f"unknown jump {op!r}")
        self._items.append(_Item("jump", f"{op} {target}", ref=target, note=note,
                                 bits=self._bits))

    def data(self, width: int, value: int | str, note: str = "") -> None:
        """A `.byte/.word/.long/.quad` of a constant or of a label's address."""
        ref = value if isinstance(value, str) else None
        const = 0 if isinstance(value, str) else value
        if ref is None and not 0 <= const < 1 << (8 * width):
            raise AsmError(f"{const:#x} does not fit {width} bytes")
        text = f"{_WIDTH_DIRECTIVE[width]} {ref if ref else hex(const)}"
        self._items.append(_Item("data", text, ref=ref, width=width, value=const, note=note))

    def align(self, power: int, note: str = "") -> None:
        """Zero bytes up to a multiple of 2**power (gas `.p2align power, 0`: no NOPs, F4)."""
        self._items.append(_Item("align", f".p2align {power}, 0", value=power, note=note))

    def org(self, offset: int, note: str = "") -> None:
        """Zero bytes up to `origin + offset` (gas `.org offset, 0`)."""
        self._items.append(_Item("org", f".org {offset:#x}, 0", value=offset, note=note))

    # ------------------------------------------------------------------ output
    def labels(self) -> dict[str, int]:
        """Every label's absolute address."""
        return self._layout(self._relax())[1]

    def assemble(self) -> bytes:
        near = self._relax()
        addresses, labels = self._layout(near)
        out = bytearray()
        for index, item in enumerate(self._items):
            here = addresses[index]
            if self.origin + len(out) != here:
                raise AsmError(f"layout drift at {item.text!r}")
            out += self._encode(item, index in near, here, labels)
        return bytes(out)

    def listing(self, header: str = "") -> str:
        """The program as a GNU as source (Intel syntax); comments carry the bytes."""
        near = self._relax()
        addresses, labels = self._layout(near)
        lines = [f"# {line}".rstrip() for line in header.splitlines()]
        lines += [".intel_syntax noprefix", ".text", ".globl _start"]
        for index, item in enumerate(self._items):
            lines.append(self._render(item, addresses[index], near, index, labels))
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ layout
    def _size(self, item: _Item, is_near: bool, here: int) -> int:
        if item.kind == "ins":
            return len(item.code) + item.width + len(item.after)
        if item.kind == "data":
            return item.width
        if item.kind == "jump":
            if not is_near:
                return 2
            rel = 2 if item.bits == 16 else 4
            return 1 + rel if item.text.startswith("jmp ") else 2 + rel
        if item.kind == "align":
            step = 1 << item.value
            return -(here - self.origin) % step
        if item.kind == "org":
            gap = self.origin + item.value - here
            if gap < 0:
                raise AsmError(f".org {item.value:#x}: already at {here - self.origin:#x}")
            return gap
        return 0

    def _layout(self, near: set[int]) -> tuple[list[int], dict[str, int]]:
        addresses, labels, here = [], {}, self.origin
        for index, item in enumerate(self._items):
            addresses.append(here)
            if item.kind == "label":
                if item.text in labels:
                    raise AsmError(f"label {item.text!r} defined twice")
                labels[item.text] = here
            here += self._size(item, index in near, here)
        return addresses, labels

    def _relax(self) -> set[int]:
        near: set[int] = set()
        while True:
            addresses, labels = self._layout(near)
            grow = {i for i, item in enumerate(self._items)
                    if item.kind == "jump" and i not in near
                    and not -128 <= _target(labels, item) - (addresses[i] + 2) <= 127}
            if not grow:
                return near
            near |= grow

    # ------------------------------------------------------------------ encoding
    def _encode(self, item: _Item, is_near: bool, here: int, labels: dict[str, int]) -> bytes:
        if item.kind == "ins":
            address = _le(_target(labels, item), item.width) if item.ref else b""
            return item.code + address + item.after
        if item.kind == "data":
            return _le(_target(labels, item) if item.ref else item.value, item.width)
        if item.kind == "jump":
            return _jump_bytes(item, is_near, here, _target(labels, item))
        return bytes(self._size(item, is_near, here))

    def _render(self, item: _Item, here: int, near: set[int], index: int,
                labels: dict[str, int]) -> str:
        if item.kind == "label":
            return f"{item.text}:"
        if item.kind in ("mode", "note"):
            return item.text if item.kind == "mode" else f"    # {item.text}"
        code = self._encode(item, index in near, here, labels)
        shown = code.hex(" ") if item.kind in ("ins", "jump", "data") else f"{len(code)} zeros"
        comment = f"{here:05x}: {shown}" + (f"  {item.note}" if item.note else "")
        return f"    {item.text:<40} # {comment}"


def _target(labels: dict[str, int], item: _Item) -> int:
    assert item.ref is not None
    try:
        return labels[item.ref]
    except KeyError:
        raise AsmError(f"{item.text!r}: no label {item.ref!r}") from None


def _le(value: int, width: int) -> bytes:
    if not 0 <= value < 1 << (8 * width):
        raise AsmError(f"address {value:#x} does not fit {width} bytes")
    return value.to_bytes(width, "little")


def _jump_bytes(item: _Item, is_near: bool, here: int, target: int) -> bytes:
    op = item.text.split()[0]
    if not is_near:
        opcode = b"\xeb" if op == "jmp" else bytes([0x70 | _CC[op]])
        return opcode + (target - here - 2).to_bytes(1, "little", signed=True)
    rel = 2 if item.bits == 16 else 4
    opcode = b"\xe9" if op == "jmp" else bytes([0x0F, 0x80 | _CC[op]])
    end = here + len(opcode) + rel
    return opcode + ((target - end) & ((1 << (8 * rel)) - 1)).to_bytes(rel, "little")
