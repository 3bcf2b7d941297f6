# The migration-harness real guest, rendered from harness/realguest/image.py.
# GuestProgram(memory=268435456, dirty_rate=67108864, pattern='uniform', hotset=None)
# as --32 -o g.o realguest.S && ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o g.bin g.o
.intel_syntax noprefix
.text
.globl _start
.code16
    # real mode, CS:IP = 0000:7c00, DL = boot drive (F6)
_start:
    cli                                      # 07c00: fa
    xor ax, ax                               # 07c01: 31 c0
    mov ds, ax                               # 07c03: 8e d8
    mov es, ax                               # 07c05: 8e c0
    mov ss, ax                               # 07c07: 8e d0
    mov sp, 0x7c00                           # 07c09: bc 00 7c
    mov ax, 0x203                            # 07c0c: b8 03 02  int 13h AH=02h: read AL sectors
    mov cx, 0x2                              # 07c0f: b9 02 00  cylinder 0, from sector 2
    mov dh, 0x0                              # 07c12: b6 00  head 0
    mov bx, 0x7e00                           # 07c14: bb 00 7e  to ES:BX = 0000:7e00
    int 0x13                                 # 07c17: cd 13
    jc disk_error                            # 07c19: 72 1c
    in al, 0x92                              # 07c1b: e4 92  A20 on; bit 0 (fast reset) stays 0
    or al, 0x2                               # 07c1d: 0c 02
    and al, 0xfe                             # 07c1f: 24 fe
    out 0x92, al                             # 07c21: e6 92
    lgdt [gdtr]                              # 07c23: 0f 01 16 58 7c
    mov eax, cr0                             # 07c28: 0f 20 c0
    or eax, 0x1                              # 07c2b: 66 83 c8 01  PE
    mov cr0, eax                             # 07c2f: 0f 22 c0
    jmp 0x8:pm32                             # 07c32: ea 00 7e 08 00  far jump into 32-bit code
disk_error:
    mov dx, 0x3f8                            # 07c37: ba f8 03
    mov al, 0x45                             # 07c3a: b0 45  'E': the disk read failed
    out dx, al                               # 07c3c: ee
halt16:
    hlt                                      # 07c3d: f4
    jmp halt16                               # 07c3e: eb fd
    .p2align 3, 0                            # 07c40: 0 zeros
gdt:
    .quad 0x0                                # 07c40: 00 00 00 00 00 00 00 00  null
    .quad 0xcf9a000000ffff                   # 07c48: ff ff 00 00 00 9a cf 00  0x08: code, base 0, 4 GiB, 32-bit
    .quad 0xcf92000000ffff                   # 07c50: ff ff 00 00 00 92 cf 00  0x10: data, base 0, 4 GiB
gdtr:
    .word 0x17                               # 07c58: 17 00
    .long gdt                                # 07c5a: 40 7c 00 00
    .org 0x1e0, 0                            # 07c5e: 386 zeros  parameter block (PARAMS_GPA)
p_start:
    .long 0x100000                           # 07de0: 00 00 10 00  first page of the range
p_end:
    .long 0xff00000                          # 07de4: 00 00 f0 0f  end of the range (init pass)
p_sweep_end:
    .long 0xff00000                          # 07de8: 00 00 f0 0f  end of the swept part
p_rate:
    .long 0x12bf75                           # 07dec: 75 bf 12 00  pages per PM timer unit, 4.28
p_cap:
    .long 0x66665e4                          # 07df0: e4 65 66 06  budget cap, 16.16 pages
p_pit:
    .long 0x4a9                              # 07df4: a9 04 00 00  PIT channel 0 divisor
    .org 0x1fe, 0                            # 07df8: 6 zeros
    .byte 0x55                               # 07dfe: 55
    .byte 0xaa                               # 07dff: aa
.code32
    # 32-bit protected mode, flat segments, no paging (F7)
pm32:
    mov ax, 0x10                             # 07e00: 66 b8 10 00
    mov ds, ax                               # 07e04: 8e d8
    mov es, ax                               # 07e06: 8e c0
    mov ss, ax                               # 07e08: 8e d0
    mov fs, ax                               # 07e0a: 8e e0
    mov gs, ax                               # 07e0c: 8e e8
    mov esp, 0x7000                          # 07e0e: bc 00 70 00 00
    cld                                      # 07e13: fc
    xor eax, eax                             # 07e14: 31 c0  zero the heartbeat
    mov edi, 0x6000                          # 07e16: bf 00 60 00 00
    mov ecx, 0x8                             # 07e1b: b9 08 00 00 00
    rep stosd                                # 07e20: f3 ab
    mov dx, 0x3fb                            # 07e22: 66 ba fb 03  COM1 LCR = 3: 8N1, DLAB = 0
    mov al, 0x3                              # 07e26: b0 03
    out dx, al                               # 07e28: ee
    # 8259 pair: ICW1-4, IRQ0 at vector 0x20, slave at 0x28, only IRQ0 unmasked
    mov al, 0x11                             # 07e29: b0 11
    out 0x20, al                             # 07e2b: e6 20
    out 0xa0, al                             # 07e2d: e6 a0
    mov al, 0x20                             # 07e2f: b0 20
    out 0x21, al                             # 07e31: e6 21
    mov al, 0x28                             # 07e33: b0 28
    out 0xa1, al                             # 07e35: e6 a1
    mov al, 0x4                              # 07e37: b0 04
    out 0x21, al                             # 07e39: e6 21
    mov al, 0x2                              # 07e3b: b0 02
    out 0xa1, al                             # 07e3d: e6 a1
    mov al, 0x1                              # 07e3f: b0 01
    out 0x21, al                             # 07e41: e6 21
    out 0xa1, al                             # 07e43: e6 a1
    mov al, 0xfe                             # 07e45: b0 fe
    out 0x21, al                             # 07e47: e6 21
    mov al, 0xff                             # 07e49: b0 ff
    out 0xa1, al                             # 07e4b: e6 a1
    # PIT channel 0, lobyte/hibyte, mode 2 (rate generator)
    mov al, 0x34                             # 07e4d: b0 34
    out 0x43, al                             # 07e4f: e6 43
    mov eax, dword ptr [p_pit]               # 07e51: a1 f4 7d 00 00
    out 0x40, al                             # 07e56: e6 40
    mov al, ah                               # 07e58: 88 e0
    out 0x40, al                             # 07e5a: e6 40
    lidt [idtr]                              # 07e5c: 0f 01 1d 58 81 00 00
    # init pass: every page of [start, end) becomes gen 0, pfn, tail 0 (F9)
    mov esi, dword ptr [p_start]             # 07e63: 8b 35 e0 7d 00 00
init_page:
    mov dword ptr [esi], 0x0                 # 07e69: c7 06 00 00 00 00
    mov eax, esi                             # 07e6f: 89 f0
    shr eax, 0xc                             # 07e71: c1 e8 0c
    mov dword ptr [esi+4], eax               # 07e74: 89 46 04
    mov dword ptr [esi+4092], 0x0            # 07e77: c7 86 fc 0f 00 00 00 00 00 00
    add esi, 0x1000                          # 07e81: 81 c6 00 10 00 00
    cmp esi, dword ptr [p_end]               # 07e87: 3b 35 e4 7d 00 00
    jb init_page                             # 07e8d: 72 da
    # ebx = cursor (next page), ecx = gen, edi = budget (16.16 pages),
    # ebp = PM timer at the last credit, esi = pages left before the next read
    # IF stays 0 except in sti;hlt: the timer interrupt only ends a hlt
    mov ebx, dword ptr [p_start]             # 07e8f: 8b 1d e0 7d 00 00
    mov ecx, 0x1                             # 07e95: b9 01 00 00 00
    mov eax, dword ptr [0x6008]              # 07e9a: a1 08 60 00 00
    mov edx, dword ptr [0x600c]              # 07e9f: 8b 15 0c 60 00 00
    cmpxchg8b qword ptr [0x6008]             # 07ea5: 0f c7 0d 08 60 00 00
    mov dword ptr [0x601c], 0x3e8            # 07eac: c7 05 1c 60 00 00 e8 03 00 00
    mov dword ptr [0x6000], 0x31484752       # 07eb6: c7 05 00 60 00 00 52 47 48 31  magic last: a valid heartbeat is a running loop
    mov dx, 0x3f8                            # 07ec0: 66 ba f8 03
    mov al, 0x53                             # 07ec4: b0 53  'S': the loop starts
    out dx, al                               # 07ec6: ee
    xor edi, edi                             # 07ec7: 31 ff
    mov dx, 0x608                            # 07ec9: 66 ba 08 06
    in eax, dx                               # 07ecd: ed  ACPI PM timer
    mov ebp, eax                             # 07ece: 89 c5
refill:
    mov dx, 0x608                            # 07ed0: 66 ba 08 06
    in eax, dx                               # 07ed4: ed  ACPI PM timer
    mov edx, eax                             # 07ed5: 89 c2
    sub eax, ebp                             # 07ed7: 29 e8
    mov ebp, edx                             # 07ed9: 89 d5
    and eax, 0xffffff                        # 07edb: 25 ff ff ff 00  eax = PM timer units since the last credit
    push eax                                 # 07ee0: 50
    mov edx, 0x124ef8                        # 07ee1: ba f8 4e 12 00  ms per unit, 0.32
    mul edx                                  # 07ee6: f7 e2
    add eax, dword ptr [0x6018]              # 07ee8: 03 05 18 60 00 00
    adc edx, 0x0                             # 07eee: 83 d2 00
    mov dword ptr [0x6018], eax              # 07ef1: a3 18 60 00 00
    add dword ptr [0x6004], edx              # 07ef6: 01 15 04 60 00 00
    mov eax, dword ptr [0x6004]              # 07efc: a1 04 60 00 00
    cmp eax, dword ptr [0x601c]              # 07f01: 3b 05 1c 60 00 00
    jb no_dot                                # 07f07: 72 11
    add dword ptr [0x601c], 0x3e8            # 07f09: 81 05 1c 60 00 00 e8 03 00 00
    mov dx, 0x3f8                            # 07f13: 66 ba f8 03
    mov al, 0x2e                             # 07f17: b0 2e  '.': 1000 more ticks
    out dx, al                               # 07f19: ee
no_dot:
    pop eax                                  # 07f1a: 58
    cmp eax, 0x57642                         # 07f1b: 3d 42 76 05 00
    jbe credit                               # 07f20: 76 05
    mov eax, 0x57642                         # 07f22: b8 42 76 05 00
credit:
    mul dword ptr [p_rate]                   # 07f27: f7 25 ec 7d 00 00  edx:eax = units * rate (pages, 4.28)
    shrd eax, edx, 0xc                       # 07f2d: 0f ac d0 0c  to 16.16 pages
    shr edx, 0xc                             # 07f31: c1 ea 0c
    jnz full                                 # 07f34: 75 0c
    add edi, eax                             # 07f36: 01 c7
    jc full                                  # 07f38: 72 08
    cmp edi, dword ptr [p_cap]               # 07f3a: 3b 3d f0 7d 00 00
    jbe credited                             # 07f40: 76 06
full:
    mov edi, dword ptr [p_cap]               # 07f42: 8b 3d f0 7d 00 00
credited:
    mov esi, 0x400                           # 07f48: be 00 04 00 00
budget:
    cmp edi, 0x10000                         # 07f4d: 81 ff 00 00 01 00
    jb wait                                  # 07f53: 72 61
    # one page: gen, pfn, tail (F7/F8), then count it and move the cursor
    add dword ptr [ebx], 0x1                 # 07f55: 83 03 01
    mov eax, ebx                             # 07f58: 89 d8
    shr eax, 0xc                             # 07f5a: c1 e8 0c
    mov dword ptr [ebx+4], eax               # 07f5d: 89 43 04
    add dword ptr [ebx+4092], 0x1            # 07f60: 83 83 fc 0f 00 00 01
    add dword ptr [0x6010], 0x1              # 07f67: 83 05 10 60 00 00 01
    adc dword ptr [0x6014], 0x0              # 07f6e: 83 15 14 60 00 00 00
    sub edi, 0x10000                         # 07f75: 81 ef 00 00 01 00
    add ebx, 0x1000                          # 07f7b: 81 c3 00 10 00 00
    cmp ebx, dword ptr [p_sweep_end]         # 07f81: 3b 1d e8 7d 00 00
    jb publish                               # 07f87: 72 12
    mov al, cl                               # 07f89: 88 c8  sweep done: 'a'+(gen&15) (F7)
    and al, 0xf                              # 07f8b: 24 0f
    add al, 0x61                             # 07f8d: 04 61
    mov dx, 0x3f8                            # 07f8f: 66 ba f8 03
    out dx, al                               # 07f93: ee
    inc ecx                                  # 07f94: 41
    mov ebx, dword ptr [p_start]             # 07f95: 8b 1d e0 7d 00 00
publish:
    mov eax, dword ptr [0x6008]              # 07f9b: a1 08 60 00 00
    mov edx, dword ptr [0x600c]              # 07fa0: 8b 15 0c 60 00 00
    cmpxchg8b qword ptr [0x6008]             # 07fa6: 0f c7 0d 08 60 00 00
    dec esi                                  # 07fad: 4e
    jz refill                                # 07fae: 0f 84 1c ff ff ff  flat out: read the clock now and then
    jmp budget                               # 07fb4: eb 97
wait:
    sti                                      # 07fb6: fb  the tick can only come inside the hlt (sti's shadow)
    hlt                                      # 07fb7: f4
    cli                                      # 07fb8: fa
    jmp refill                               # 07fb9: e9 12 ff ff ff
isr_timer:
    mov al, 0x20                             # 07fbe: b0 20  non-specific EOI to the master 8259
    out 0x20, al                             # 07fc0: e6 20
isr_ignore:
    add esp, 0xc                             # 07fc2: 83 c4 0c  drop the frame: it ended the hlt in wait
    jmp refill                               # 07fc5: e9 06 ff ff ff  IF = 0 again (interrupt gate)
isr_fault:
    mov dx, 0x3f8                            # 07fca: 66 ba f8 03
    mov al, 0x21                             # 07fce: b0 21  '!': a CPU exception, the guest stops
    out dx, al                               # 07fd0: ee
fault_halt:
    cli                                      # 07fd1: fa
    hlt                                      # 07fd2: f4
    jmp fault_halt                           # 07fd3: eb fc
    .p2align 3, 0                            # 07fd5: 3 zeros
idt:
    .word isr_fault                          # 07fd8: ca 7f  vector 0x00
    .word 0x8                                # 07fda: 08 00
    .byte 0x0                                # 07fdc: 00
    .byte 0x8e                               # 07fdd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fde: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fe0: ca 7f  vector 0x01
    .word 0x8                                # 07fe2: 08 00
    .byte 0x0                                # 07fe4: 00
    .byte 0x8e                               # 07fe5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fe6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fe8: ca 7f  vector 0x02
    .word 0x8                                # 07fea: 08 00
    .byte 0x0                                # 07fec: 00
    .byte 0x8e                               # 07fed: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fee: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07ff0: ca 7f  vector 0x03
    .word 0x8                                # 07ff2: 08 00
    .byte 0x0                                # 07ff4: 00
    .byte 0x8e                               # 07ff5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07ff6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07ff8: ca 7f  vector 0x04
    .word 0x8                                # 07ffa: 08 00
    .byte 0x0                                # 07ffc: 00
    .byte 0x8e                               # 07ffd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07ffe: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08000: ca 7f  vector 0x05
    .word 0x8                                # 08002: 08 00
    .byte 0x0                                # 08004: 00
    .byte 0x8e                               # 08005: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08006: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08008: ca 7f  vector 0x06
    .word 0x8                                # 0800a: 08 00
    .byte 0x0                                # 0800c: 00
    .byte 0x8e                               # 0800d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0800e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08010: ca 7f  vector 0x07
    .word 0x8                                # 08012: 08 00
    .byte 0x0                                # 08014: 00
    .byte 0x8e                               # 08015: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08016: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08018: ca 7f  vector 0x08
    .word 0x8                                # 0801a: 08 00
    .byte 0x0                                # 0801c: 00
    .byte 0x8e                               # 0801d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0801e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08020: ca 7f  vector 0x09
    .word 0x8                                # 08022: 08 00
    .byte 0x0                                # 08024: 00
    .byte 0x8e                               # 08025: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08026: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08028: ca 7f  vector 0x0a
    .word 0x8                                # 0802a: 08 00
    .byte 0x0                                # 0802c: 00
    .byte 0x8e                               # 0802d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0802e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08030: ca 7f  vector 0x0b
    .word 0x8                                # 08032: 08 00
    .byte 0x0                                # 08034: 00
    .byte 0x8e                               # 08035: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08036: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08038: ca 7f  vector 0x0c
    .word 0x8                                # 0803a: 08 00
    .byte 0x0                                # 0803c: 00
    .byte 0x8e                               # 0803d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0803e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08040: ca 7f  vector 0x0d
    .word 0x8                                # 08042: 08 00
    .byte 0x0                                # 08044: 00
    .byte 0x8e                               # 08045: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08046: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08048: ca 7f  vector 0x0e
    .word 0x8                                # 0804a: 08 00
    .byte 0x0                                # 0804c: 00
    .byte 0x8e                               # 0804d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0804e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08050: ca 7f  vector 0x0f
    .word 0x8                                # 08052: 08 00
    .byte 0x0                                # 08054: 00
    .byte 0x8e                               # 08055: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08056: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08058: ca 7f  vector 0x10
    .word 0x8                                # 0805a: 08 00
    .byte 0x0                                # 0805c: 00
    .byte 0x8e                               # 0805d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0805e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08060: ca 7f  vector 0x11
    .word 0x8                                # 08062: 08 00
    .byte 0x0                                # 08064: 00
    .byte 0x8e                               # 08065: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08066: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08068: ca 7f  vector 0x12
    .word 0x8                                # 0806a: 08 00
    .byte 0x0                                # 0806c: 00
    .byte 0x8e                               # 0806d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0806e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08070: ca 7f  vector 0x13
    .word 0x8                                # 08072: 08 00
    .byte 0x0                                # 08074: 00
    .byte 0x8e                               # 08075: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08076: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08078: ca 7f  vector 0x14
    .word 0x8                                # 0807a: 08 00
    .byte 0x0                                # 0807c: 00
    .byte 0x8e                               # 0807d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0807e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08080: ca 7f  vector 0x15
    .word 0x8                                # 08082: 08 00
    .byte 0x0                                # 08084: 00
    .byte 0x8e                               # 08085: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08086: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08088: ca 7f  vector 0x16
    .word 0x8                                # 0808a: 08 00
    .byte 0x0                                # 0808c: 00
    .byte 0x8e                               # 0808d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0808e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08090: ca 7f  vector 0x17
    .word 0x8                                # 08092: 08 00
    .byte 0x0                                # 08094: 00
    .byte 0x8e                               # 08095: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08096: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08098: ca 7f  vector 0x18
    .word 0x8                                # 0809a: 08 00
    .byte 0x0                                # 0809c: 00
    .byte 0x8e                               # 0809d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0809e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080a0: ca 7f  vector 0x19
    .word 0x8                                # 080a2: 08 00
    .byte 0x0                                # 080a4: 00
    .byte 0x8e                               # 080a5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080a6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080a8: ca 7f  vector 0x1a
    .word 0x8                                # 080aa: 08 00
    .byte 0x0                                # 080ac: 00
    .byte 0x8e                               # 080ad: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080ae: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080b0: ca 7f  vector 0x1b
    .word 0x8                                # 080b2: 08 00
    .byte 0x0                                # 080b4: 00
    .byte 0x8e                               # 080b5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080b6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080b8: ca 7f  vector 0x1c
    .word 0x8                                # 080ba: 08 00
    .byte 0x0                                # 080bc: 00
    .byte 0x8e                               # 080bd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080be: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080c0: ca 7f  vector 0x1d
    .word 0x8                                # 080c2: 08 00
    .byte 0x0                                # 080c4: 00
    .byte 0x8e                               # 080c5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080c6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080c8: ca 7f  vector 0x1e
    .word 0x8                                # 080ca: 08 00
    .byte 0x0                                # 080cc: 00
    .byte 0x8e                               # 080cd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080ce: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080d0: ca 7f  vector 0x1f
    .word 0x8                                # 080d2: 08 00
    .byte 0x0                                # 080d4: 00
    .byte 0x8e                               # 080d5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080d6: 00 00  handlers are below 64 KiB
    .word isr_timer                          # 080d8: be 7f  vector 0x20
    .word 0x8                                # 080da: 08 00
    .byte 0x0                                # 080dc: 00
    .byte 0x8e                               # 080dd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080de: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080e0: c2 7f  vector 0x21
    .word 0x8                                # 080e2: 08 00
    .byte 0x0                                # 080e4: 00
    .byte 0x8e                               # 080e5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080e6: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080e8: c2 7f  vector 0x22
    .word 0x8                                # 080ea: 08 00
    .byte 0x0                                # 080ec: 00
    .byte 0x8e                               # 080ed: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080ee: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080f0: c2 7f  vector 0x23
    .word 0x8                                # 080f2: 08 00
    .byte 0x0                                # 080f4: 00
    .byte 0x8e                               # 080f5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080f6: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080f8: c2 7f  vector 0x24
    .word 0x8                                # 080fa: 08 00
    .byte 0x0                                # 080fc: 00
    .byte 0x8e                               # 080fd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080fe: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08100: c2 7f  vector 0x25
    .word 0x8                                # 08102: 08 00
    .byte 0x0                                # 08104: 00
    .byte 0x8e                               # 08105: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08106: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08108: c2 7f  vector 0x26
    .word 0x8                                # 0810a: 08 00
    .byte 0x0                                # 0810c: 00
    .byte 0x8e                               # 0810d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0810e: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08110: c2 7f  vector 0x27
    .word 0x8                                # 08112: 08 00
    .byte 0x0                                # 08114: 00
    .byte 0x8e                               # 08115: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08116: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08118: c2 7f  vector 0x28
    .word 0x8                                # 0811a: 08 00
    .byte 0x0                                # 0811c: 00
    .byte 0x8e                               # 0811d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0811e: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08120: c2 7f  vector 0x29
    .word 0x8                                # 08122: 08 00
    .byte 0x0                                # 08124: 00
    .byte 0x8e                               # 08125: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08126: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08128: c2 7f  vector 0x2a
    .word 0x8                                # 0812a: 08 00
    .byte 0x0                                # 0812c: 00
    .byte 0x8e                               # 0812d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0812e: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08130: c2 7f  vector 0x2b
    .word 0x8                                # 08132: 08 00
    .byte 0x0                                # 08134: 00
    .byte 0x8e                               # 08135: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08136: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08138: c2 7f  vector 0x2c
    .word 0x8                                # 0813a: 08 00
    .byte 0x0                                # 0813c: 00
    .byte 0x8e                               # 0813d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0813e: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08140: c2 7f  vector 0x2d
    .word 0x8                                # 08142: 08 00
    .byte 0x0                                # 08144: 00
    .byte 0x8e                               # 08145: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08146: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08148: c2 7f  vector 0x2e
    .word 0x8                                # 0814a: 08 00
    .byte 0x0                                # 0814c: 00
    .byte 0x8e                               # 0814d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0814e: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08150: c2 7f  vector 0x2f
    .word 0x8                                # 08152: 08 00
    .byte 0x0                                # 08154: 00
    .byte 0x8e                               # 08155: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08156: 00 00  handlers are below 64 KiB
idtr:
    .word 0x17f                              # 08158: 7f 01
    .long idt                                # 0815a: d8 7f 00 00
