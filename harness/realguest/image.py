"""The harness's own x86 guest: a boot sector program, generated as annotated bytes.

Strategy: SeaBIOS loads sector 0 at 0x7c00; that real-mode code reads the next
`LOADED_SECTORS` sectors to 0x7e00 (int 13h AH=02h), turns A20 on, loads a flat GDT and
enters 32-bit protected mode (no paging).  There it zeroes the heartbeat, remaps the 8259
(IRQ0 -> vector 0x20, all other IRQs masked), sets PIT channel 0 to ~1 kHz (mode 2),
loads an IDT, then makes every page of [start, end) a wave page of generation 0 (SeaBIOS
leaves garbage there, F9) and writes 'S' to COM1.

Main loop (rate control on a clock, not a calibrated delay loop): the clock is the ACPI
PM timer (3.579545 MHz, 24 bits; `info mtree` shows acpi-tmr at port 0x608 on pc and q35
once SeaBIOS set PMBASE; QEMU derives it from the virtual clock, so nothing is lost when
a wake-up comes late).  Each read adds the elapsed time to the heartbeat's ticks (ms) and
credits `rate` (4.28 fixed-point pages per timer unit) times the units elapsed -- at
most `BURST_SECONDS` (100 ms) worth, and the budget (16.16 pages) is capped there: a vCPU
the host did not run for a while (a loaded CI machine) catches up that much, so its rate
holds, and never bursts beyond it.  While a whole page is in the budget the loop rewrites the next page -- u32@0 +=
1 (generation), u32@4 = GPA>>12, u32@4092 += 1 -- then publishes (cursor, gen) with one
8-byte store (cmpxchg8b) so a stopped guest never shows them torn.  Out of budget it
does `sti; hlt` (an idle or slow guest does not burn a host core) until the PIT
interrupt, whose handler drops its frame and jumps back to the clock read: interrupts
are enabled only inside that hlt, so no iret is needed -- KVM's emulator cannot run a
protected-mode iret, and PVM emulates non-paged guest code (F1), so only instructions
it knows are used (no MMX/SSE, no paging).  Flat out (a budget larger than the guest
can write) it never halts and reads the clock every `RECHECK_PAGES` pages.  Serial:
'a'+(gen&15) per finished sweep, and '.' every 1000 ticks.

The parameter block sits at fixed addresses in sector 0 (`PARAMS_GPA`); only its bytes
depend on the `GuestProgram`.  `build_image` returns the code sectors; `write_image`
pads the raw disk sparsely to 1 MiB (q35's AHCI needs >= 1008 sectors, F11).
Facts used: ../shared/reference/qemu-7.2-real-guests.md F4-F11, F31.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .asm import Asm

__all__ = [
    "BURST_SECONDS", "GUEST_SCRATCH", "HEARTBEAT_GPA", "HEARTBEAT_MAGIC", "HEARTBEAT_SIZE",
    "LOADED_SECTORS", "PAGE_SIZE", "PARAMS_GPA", "TICK_HZ", "GuestProgram", "build_image",
    "program_listing", "write_image",
]

MiB = 1 << 20
PAGE_SIZE = 4096
ORIGIN = 0x7C00
LOADED_SECTORS = 3             # sectors after the boot sector, read to 0x7e00
IMAGE_SIZE = MiB               # raw disk size (F11: q35 needs >= 1008 sectors)
SWEEP_START = 0x100000         # first swept page: above the BIOS area (F10)
LOW_RAM_LIMIT = 2048 * MiB     # q35 keeps at most 2 GiB below 4G when RAM >= 2816 MiB (F31)

HEARTBEAT_GPA = 0x6000         # free low memory, below the stack
HEARTBEAT_SIZE = 32
HEARTBEAT_MAGIC = int.from_bytes(b"RGH1", "little")
HB_MAGIC, HB_TICKS, HB_CURSOR, HB_GEN = 0, 4, 8, 12
HB_PAGES = 16                  # u64 pages written
HB_FRACTION, HB_NEXT_DOT = 24, 28  # ticks' 0.32 fraction; tick of the next '.' on serial
STACK_TOP = 0x7000             # the 32-bit stack grows down into the heartbeat's page
#: GPA range the running guest itself changes outside the swept pages (heartbeat, stack)
GUEST_SCRATCH = (HEARTBEAT_GPA, STACK_TOP)

PARAMS_OFFSET = 0x1E0
PARAMS_GPA = ORIGIN + PARAMS_OFFSET
PIT_HZ = 1193182               # i8254 input clock
PIT_DIVISOR = 1193
TICK_HZ = PIT_HZ / PIT_DIVISOR  # 1000.15 Hz
PM_TIMER_PORT = 0x608          # ACPI PM timer: PMBASE 0x600 (SeaBIOS) + 8, pc and q35
PM_TIMER_HZ = 3579545          # hw/acpi/core.c: PM_TIMER_FREQUENCY
PM_TIMER_MASK = 0xFFFFFF       # 24-bit counter, wraps every 4.7 s
BURST_SECONDS = 0.1            # time credited at most per refill, and budget cap: a vCPU
#                                the host did not run for up to 100 ms catches up
BURST_UNITS = round(BURST_SECONDS * PM_TIMER_HZ)
RATE_SHIFT = 28                # rate: pages per PM timer unit, 4.28 fixed point
FIXED_ONE = 1 << 16            # one page in the 16.16 budget
DOTS_EVERY = 1000              # ticks per '.' on serial
TICK_PER_UNIT = round((1 << 32) * 1000 / PM_TIMER_HZ)  # ms per PM timer unit, 0.32
RECHECK_PAGES = 1024           # pages written flat out between two PM timer reads
COM1 = 0x3F8


@dataclass(frozen=True)
class GuestProgram:
    """What the guest does: RAM size, dirty rate (bytes/s, 4 KiB pages) and pattern."""

    memory: int
    dirty_rate: int = 0
    pattern: str = "uniform"
    hotset: int | None = None

    def __post_init__(self) -> None:
        if self.memory % MiB or self.memory < 4 * MiB:
            raise ValueError(f"memory {self.memory}: a multiple of 1 MiB, at least 4 MiB")
        if self.dirty_rate < 0:
            raise ValueError(f"dirty_rate {self.dirty_rate}: must be >= 0 bytes/s")
        if self.pattern not in ("uniform", "hotset"):
            raise ValueError(f"pattern {self.pattern!r}: uniform or hotset")
        if (self.pattern == "hotset") != (self.hotset is not None):
            raise ValueError("hotset (bytes) is given exactly when pattern is hotset")
        if self.hotset is not None and (self.hotset % PAGE_SIZE or
                                        not PAGE_SIZE <= self.hotset <= self.end - self.start):
            raise ValueError(f"hotset {self.hotset}: whole pages within the "
                             f"{self.end - self.start}-byte range")

    @property
    def start(self) -> int:
        """GPA of the first page of the range (1 MiB)."""
        return SWEEP_START

    @property
    def end(self) -> int:
        """GPA just past the range: RAM below 4G minus 1 MiB (SeaBIOS's top, F10)."""
        return min(self.memory, LOW_RAM_LIMIT) - MiB

    @property
    def pages(self) -> int:
        """Pages in [start, end) (all made wave pages by the init pass)."""
        return (self.end - self.start) // PAGE_SIZE

    @property
    def sweep_end(self) -> int:
        """GPA just past the written part: end, or start + hotset."""
        return self.end if self.hotset is None else self.start + self.hotset

    @property
    def swept_pages(self) -> int:
        return (self.sweep_end - self.start) // PAGE_SIZE

    @property
    def rate_fixed(self) -> int:
        """Pages per PM timer unit, 4.28 fixed point (what the guest reads)."""
        if self.dirty_rate == 0:
            return 0
        exact = self.dirty_rate / PAGE_SIZE / PM_TIMER_HZ * (1 << RATE_SHIFT)
        return min(max(round(exact), 1), 0xFFFFFFFF)

    @property
    def budget_cap(self) -> int:
        """Largest budget (16.16 pages): BURST_SECONDS' worth, at least two pages."""
        burst = self.rate_fixed * BURST_UNITS >> (RATE_SHIFT - 16)
        return min(max(burst, 2 * FIXED_ONE), 0xFFFFFFFF)

    @property
    def paced_rate(self) -> float:
        """The dirty rate the guest aims at after fixed-point rounding, bytes/s."""
        return self.rate_fixed / (1 << RATE_SHIFT) * PM_TIMER_HZ * PAGE_SIZE


def build_image(program: GuestProgram) -> bytes:
    """The code sectors (boot sector + LOADED_SECTORS), without the disk padding."""
    code = _assemble(program).assemble()
    size = (1 + LOADED_SECTORS) * 512
    if len(code) > size:
        raise AssertionError(f"guest code is {len(code)} bytes, {size} are loaded")
    return code + bytes(size - len(code))


def write_image(program: GuestProgram, path: Path) -> Path:
    """Write the raw disk image: the code sectors, sparse-padded to IMAGE_SIZE."""
    path = Path(path)
    data = build_image(program)
    with open(path, "wb") as out:
        out.write(data)
        out.truncate(IMAGE_SIZE)
    os.chmod(path, 0o600)
    return path


def program_listing(program: GuestProgram) -> str:
    """The program as a GNU as source file (what tests/data/realguest.S holds)."""
    header = ("The migration-harness real guest, rendered from harness/realguest/image.py.\n"
              f"GuestProgram(memory={program.memory}, dirty_rate={program.dirty_rate}, "
              f"pattern={program.pattern!r}, hotset={program.hotset})\n"
              "as --32 -o g.o realguest.S && "
              "ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o g.bin g.o")
    return _assemble(program).listing(header)


# ---------------------------------------------------------------------- the program
def _assemble(program: GuestProgram) -> Asm:
    a = Asm(ORIGIN)
    _real_mode(a)
    _gdt(a)
    _parameters(a, program)
    a.mode(32)
    _setup32(a)
    _init_pass(a)
    _start_loop(a)
    _main_loop(a)
    _handlers(a)
    _idt(a)
    return a


def _real_mode(a: Asm) -> None:
    a.mode(16)
    a.note("real mode, CS:IP = 0000:7c00, DL = boot drive (F6)")
    a.label("_start")
    a.ins("fa", "cli")
    a.ins("31 c0", "xor ax, ax")
    a.ins("8e d8", "mov ds, ax")
    a.ins("8e c0", "mov es, ax")
    a.ins("8e d0", "mov ss, ax")
    a.ins("bc 00 7c", "mov sp, 0x7c00")
    a.ins(f"b8 {LOADED_SECTORS:02x} 02", f"mov ax, {0x200 + LOADED_SECTORS:#x}",
          "int 13h AH=02h: read AL sectors")
    a.ins("b9 02 00", "mov cx, 0x2", "cylinder 0, from sector 2")
    a.ins("b6 00", "mov dh, 0x0", "head 0")
    a.ins("bb 00 7e", "mov bx, 0x7e00", "to ES:BX = 0000:7e00")
    a.ins("cd 13", "int 0x13")
    a.jump("jc", "disk_error")
    a.ins("e4 92", "in al, 0x92", "A20 on; bit 0 (fast reset) stays 0")
    a.ins("0c 02", "or al, 0x2")
    a.ins("24 fe", "and al, 0xfe")
    a.ins("e6 92", "out 0x92, al")
    a.ins("0f 01 16", "lgdt [gdtr]", ref="gdtr", width=2)
    a.ins("0f 20 c0", "mov eax, cr0")
    a.ins("66 83 c8 01", "or eax, 0x1", "PE")
    a.ins("0f 22 c0", "mov cr0, eax")
    a.ins("ea", "jmp 0x8:pm32", "far jump into 32-bit code", ref="pm32", width=2,
          after="08 00")
    a.label("disk_error")
    a.ins("ba f8 03", f"mov dx, {COM1:#x}")
    a.ins("b0 45", "mov al, 0x45", "'E': the disk read failed")
    a.ins("ee", "out dx, al")
    a.label("halt16")
    a.ins("f4", "hlt")
    a.jump("jmp", "halt16")


def _gdt(a: Asm) -> None:
    a.align(3)
    a.label("gdt")
    a.data(8, 0, "null")
    a.data(8, 0x00CF9A000000FFFF, "0x08: code, base 0, 4 GiB, 32-bit")
    a.data(8, 0x00CF92000000FFFF, "0x10: data, base 0, 4 GiB")
    a.label("gdtr")
    a.data(2, 3 * 8 - 1)
    a.data(4, "gdt")


def _parameters(a: Asm, program: GuestProgram) -> None:
    a.org(PARAMS_OFFSET, "parameter block (PARAMS_GPA)")
    for name, value, note in (
            ("p_start", program.start, "first page of the range"),
            ("p_end", program.end, "end of the range (init pass)"),
            ("p_sweep_end", program.sweep_end, "end of the swept part"),
            ("p_rate", program.rate_fixed, "pages per PM timer unit, 4.28"),
            ("p_cap", program.budget_cap, "budget cap, 16.16 pages"),
            ("p_pit", PIT_DIVISOR, "PIT channel 0 divisor")):
        a.label(name)
        a.data(4, value, note)
    a.org(0x1FE)
    a.data(1, 0x55)
    a.data(1, 0xAA)


def _setup32(a: Asm) -> None:
    a.note("32-bit protected mode, flat segments, no paging (F7)")
    a.label("pm32")
    a.ins("66 b8 10 00", "mov ax, 0x10")
    for sreg, modrm in (("ds", "d8"), ("es", "c0"), ("ss", "d0"), ("fs", "e0"), ("gs", "e8")):
        a.ins(f"8e {modrm}", f"mov {sreg}, ax")
    a.ins(f"bc {_hex32(STACK_TOP)}", f"mov esp, {STACK_TOP:#x}")
    a.ins("fc", "cld")
    a.ins("31 c0", "xor eax, eax", "zero the heartbeat")
    a.ins(f"bf {_hex32(HEARTBEAT_GPA)}", f"mov edi, {HEARTBEAT_GPA:#x}")
    a.ins(f"b9 {_hex32(HEARTBEAT_SIZE // 4)}", f"mov ecx, {HEARTBEAT_SIZE // 4:#x}")
    a.ins("f3 ab", "rep stosd")
    a.ins("66 ba fb 03", f"mov dx, {COM1 + 3:#x}", "COM1 LCR = 3: 8N1, DLAB = 0")
    a.ins("b0 03", "mov al, 0x3")
    a.ins("ee", "out dx, al")
    a.note("8259 pair: ICW1-4, IRQ0 at vector 0x20, slave at 0x28, only IRQ0 unmasked")
    for value, ports in ((0x11, (0x20, 0xA0)), (0x20, (0x21,)), (0x28, (0xA1,)),
                         (0x04, (0x21,)), (0x02, (0xA1,)), (0x01, (0x21, 0xA1)),
                         (0xFE, (0x21,)), (0xFF, (0xA1,))):
        a.ins(f"b0 {value:02x}", f"mov al, {value:#x}")
        for port in ports:
            a.ins(f"e6 {port:02x}", f"out {port:#x}, al")
    a.note("PIT channel 0, lobyte/hibyte, mode 2 (rate generator)")
    a.ins("b0 34", "mov al, 0x34")
    a.ins("e6 43", "out 0x43, al")
    a.ins("a1", "mov eax, dword ptr [p_pit]", ref="p_pit")
    a.ins("e6 40", "out 0x40, al")
    a.ins("88 e0", "mov al, ah")
    a.ins("e6 40", "out 0x40, al")
    a.ins("0f 01 1d", "lidt [idtr]", ref="idtr")


def _init_pass(a: Asm) -> None:
    a.note("init pass: every page of [start, end) becomes gen 0, pfn, tail 0 (F9)")
    a.ins("8b 35", "mov esi, dword ptr [p_start]", ref="p_start")
    a.label("init_page")
    a.ins("c7 06 00 00 00 00", "mov dword ptr [esi], 0x0")
    a.ins("89 f0", "mov eax, esi")
    a.ins("c1 e8 0c", "shr eax, 0xc")
    a.ins("89 46 04", "mov dword ptr [esi+4], eax")
    a.ins("c7 86 fc 0f 00 00 00 00 00 00", "mov dword ptr [esi+4092], 0x0")
    a.ins("81 c6 00 10 00 00", "add esi, 0x1000")
    a.ins("3b 35", "cmp esi, dword ptr [p_end]", ref="p_end")
    a.jump("jb", "init_page")


def _start_loop(a: Asm) -> None:
    a.note("ebx = cursor (next page), ecx = gen, edi = budget (16.16 pages),")
    a.note("ebp = PM timer at the last credit, esi = pages left before the next read")
    a.note("IF stays 0 except in sti;hlt: the timer interrupt only ends a hlt")
    a.ins("8b 1d", "mov ebx, dword ptr [p_start]", ref="p_start")
    a.ins("b9 01 00 00 00", "mov ecx, 0x1")
    _publish(a)
    next_dot = HEARTBEAT_GPA + HB_NEXT_DOT
    a.ins(f"c7 05 {_hex32(next_dot)} {_hex32(DOTS_EVERY)}",
          f"mov dword ptr [{next_dot:#x}], {DOTS_EVERY:#x}")
    a.ins(f"c7 05 {_hex32(HEARTBEAT_GPA + HB_MAGIC)} {_hex32(HEARTBEAT_MAGIC)}",
          f"mov dword ptr [{HEARTBEAT_GPA + HB_MAGIC:#x}], {HEARTBEAT_MAGIC:#x}",
          "magic last: a valid heartbeat is a running loop")
    _serial(a, "53", "'S': the loop starts")
    a.ins("31 ff", "xor edi, edi")
    _read_pm_timer(a)
    a.ins("89 c5", "mov ebp, eax")


def _main_loop(a: Asm) -> None:
    a.label("refill")
    _read_pm_timer(a)
    a.ins("89 c2", "mov edx, eax")
    a.ins("29 e8", "sub eax, ebp")
    a.ins("89 d5", "mov ebp, edx")
    a.ins(f"25 {_hex32(PM_TIMER_MASK)}", f"and eax, {PM_TIMER_MASK:#x}",
          "eax = PM timer units since the last credit")
    _clock(a)
    a.ins(f"3d {_hex32(BURST_UNITS)}", f"cmp eax, {BURST_UNITS:#x}")
    a.jump("jbe", "credit")
    a.ins(f"b8 {_hex32(BURST_UNITS)}", f"mov eax, {BURST_UNITS:#x}")
    a.label("credit")
    a.ins("f7 25", "mul dword ptr [p_rate]", "edx:eax = units * rate (pages, 4.28)",
          ref="p_rate")
    a.ins(f"0f ac d0 {RATE_SHIFT - 16:02x}", f"shrd eax, edx, {RATE_SHIFT - 16:#x}",
          "to 16.16 pages")
    a.ins(f"c1 ea {RATE_SHIFT - 16:02x}", f"shr edx, {RATE_SHIFT - 16:#x}")
    a.jump("jnz", "full")
    a.ins("01 c7", "add edi, eax")
    a.jump("jc", "full")
    a.ins("3b 3d", "cmp edi, dword ptr [p_cap]", ref="p_cap")
    a.jump("jbe", "credited")
    a.label("full")
    a.ins("8b 3d", "mov edi, dword ptr [p_cap]", ref="p_cap")
    a.label("credited")
    a.ins(f"be {_hex32(RECHECK_PAGES)}", f"mov esi, {RECHECK_PAGES:#x}")
    a.label("budget")
    a.ins(f"81 ff {_hex32(FIXED_ONE)}", f"cmp edi, {FIXED_ONE:#x}")
    a.jump("jb", "wait")
    _write_page(a)
    a.ins("4e", "dec esi")
    a.jump("jz", "refill", "flat out: read the clock now and then")
    a.jump("jmp", "budget")
    a.label("wait")
    a.ins("fb", "sti", "the tick can only come inside the hlt (sti's shadow)")
    a.ins("f4", "hlt")
    a.ins("fa", "cli")
    a.jump("jmp", "refill")


def _clock(a: Asm) -> None:
    """ticks += eax PM timer units in ms (0.32 fraction kept); '.' every 1000 ticks."""
    ticks, fraction = HEARTBEAT_GPA + HB_TICKS, HEARTBEAT_GPA + HB_FRACTION
    next_dot = HEARTBEAT_GPA + HB_NEXT_DOT
    a.ins("50", "push eax")
    a.ins(f"ba {_hex32(TICK_PER_UNIT)}", f"mov edx, {TICK_PER_UNIT:#x}", "ms per unit, 0.32")
    a.ins("f7 e2", "mul edx")
    a.ins(f"03 05 {_hex32(fraction)}", f"add eax, dword ptr [{fraction:#x}]")
    a.ins("83 d2 00", "adc edx, 0x0")
    a.ins(f"a3 {_hex32(fraction)}", f"mov dword ptr [{fraction:#x}], eax")
    a.ins(f"01 15 {_hex32(ticks)}", f"add dword ptr [{ticks:#x}], edx")
    a.ins(f"a1 {_hex32(ticks)}", f"mov eax, dword ptr [{ticks:#x}]")
    a.ins(f"3b 05 {_hex32(next_dot)}", f"cmp eax, dword ptr [{next_dot:#x}]")
    a.jump("jb", "no_dot")
    a.ins(f"81 05 {_hex32(next_dot)} {_hex32(DOTS_EVERY)}",
          f"add dword ptr [{next_dot:#x}], {DOTS_EVERY:#x}")
    _serial(a, "2e", "'.': 1000 more ticks")
    a.label("no_dot")
    a.ins("58", "pop eax")


def _write_page(a: Asm) -> None:
    pages = HEARTBEAT_GPA + HB_PAGES
    a.note("one page: gen, pfn, tail (F7/F8), then count it and move the cursor")
    a.ins("83 03 01", "add dword ptr [ebx], 0x1")
    a.ins("89 d8", "mov eax, ebx")
    a.ins("c1 e8 0c", "shr eax, 0xc")
    a.ins("89 43 04", "mov dword ptr [ebx+4], eax")
    a.ins("83 83 fc 0f 00 00 01", "add dword ptr [ebx+4092], 0x1")
    a.ins(f"83 05 {_hex32(pages)} 01", f"add dword ptr [{pages:#x}], 0x1")
    a.ins(f"83 15 {_hex32(pages + 4)} 00", f"adc dword ptr [{pages + 4:#x}], 0x0")
    a.ins(f"81 ef {_hex32(FIXED_ONE)}", f"sub edi, {FIXED_ONE:#x}")
    a.ins("81 c3 00 10 00 00", "add ebx, 0x1000")
    a.ins("3b 1d", "cmp ebx, dword ptr [p_sweep_end]", ref="p_sweep_end")
    a.jump("jb", "publish")
    a.ins("88 c8", "mov al, cl", "sweep done: 'a'+(gen&15) (F7)")
    a.ins("24 0f", "and al, 0xf")
    a.ins("04 61", "add al, 0x61")
    a.ins("66 ba f8 03", f"mov dx, {COM1:#x}")
    a.ins("ee", "out dx, al")
    a.ins("41", "inc ecx")
    a.ins("8b 1d", "mov ebx, dword ptr [p_start]", ref="p_start")
    a.label("publish")
    _publish(a)


def _handlers(a: Asm) -> None:
    """No iret anywhere (KVM's emulator cannot run a protected-mode iret, F1)."""
    a.label("isr_timer")
    a.ins("b0 20", "mov al, 0x20", "non-specific EOI to the master 8259")
    a.ins("e6 20", "out 0x20, al")
    a.label("isr_ignore")
    a.ins("83 c4 0c", "add esp, 0xc", "drop the frame: it ended the hlt in wait")
    a.jump("jmp", "refill", "IF = 0 again (interrupt gate)")
    a.label("isr_fault")
    _serial(a, "21", "'!': a CPU exception, the guest stops")
    a.label("fault_halt")
    a.ins("fa", "cli")
    a.ins("f4", "hlt")
    a.jump("jmp", "fault_halt")


def _read_pm_timer(a: Asm) -> None:
    a.ins(f"66 ba {PM_TIMER_PORT & 0xFF:02x} {PM_TIMER_PORT >> 8:02x}",
          f"mov dx, {PM_TIMER_PORT:#x}")
    a.ins("ed", "in eax, dx", "ACPI PM timer")


def _idt(a: Asm) -> None:
    a.align(3)
    a.label("idt")
    for vector in range(0x30):
        handler = "isr_fault" if vector < 0x20 else \
            "isr_timer" if vector == 0x20 else "isr_ignore"
        a.data(2, handler, f"vector {vector:#04x}")
        a.data(2, 0x08)
        a.data(1, 0)
        a.data(1, 0x8E, "32-bit interrupt gate, present")
        a.data(2, 0, "handlers are below 64 KiB")
    a.label("idtr")
    a.data(2, 0x30 * 8 - 1)
    a.data(4, "idt")


def _publish(a: Asm) -> None:
    """(cursor, gen) = ebx, ecx to the heartbeat in one 8-byte store.

    cmpxchg8b stores ecx:ebx where edx:eax equals the old value, which the loop (the only
    writer) has just loaded; unlike an MMX movq, KVM's instruction emulator runs it.
    """
    cursor, gen = HEARTBEAT_GPA + HB_CURSOR, HEARTBEAT_GPA + HB_GEN
    a.ins(f"a1 {_hex32(cursor)}", f"mov eax, dword ptr [{cursor:#x}]")
    a.ins(f"8b 15 {_hex32(gen)}", f"mov edx, dword ptr [{gen:#x}]")
    a.ins(f"0f c7 0d {_hex32(cursor)}", f"cmpxchg8b qword ptr [{cursor:#x}]")


def _serial(a: Asm, char: str, note: str) -> None:
    a.ins("66 ba f8 03", f"mov dx, {COM1:#x}")
    a.ins(f"b0 {char}", f"mov al, 0x{char}", note)
    a.ins("ee", "out dx, al")


def _hex32(value: int) -> str:
    return value.to_bytes(4, "little").hex(" ")
