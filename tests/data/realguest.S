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
    jc disk_error                            # 07c19: 72 20
    in al, 0x92                              # 07c1b: e4 92  A20 on; bit 0 (fast reset) stays 0
    or al, 0x2                               # 07c1d: 0c 02
    and al, 0xfe                             # 07c1f: 24 fe
    out 0x92, al                             # 07c21: e6 92
    lgdt [gdtr]                              # 07c23: 0f 01 16 60 7c
    mov eax, cr0                             # 07c28: 0f 20 c0
    and eax, 0xfffffff3                      # 07c2b: 66 83 e0 f3  EM = TS = 0: MMX usable
    or eax, 0x1                              # 07c2f: 66 83 c8 01  PE
    mov cr0, eax                             # 07c33: 0f 22 c0
    jmp 0x8:pm32                             # 07c36: ea 00 7e 08 00  far jump into 32-bit code
disk_error:
    mov dx, 0x3f8                            # 07c3b: ba f8 03
    mov al, 0x45                             # 07c3e: b0 45  'E': the disk read failed
    out dx, al                               # 07c40: ee
halt16:
    hlt                                      # 07c41: f4
    jmp halt16                               # 07c42: eb fd
    .p2align 3, 0                            # 07c44: 4 zeros
gdt:
    .quad 0x0                                # 07c48: 00 00 00 00 00 00 00 00  null
    .quad 0xcf9a000000ffff                   # 07c50: ff ff 00 00 00 9a cf 00  0x08: code, base 0, 4 GiB, 32-bit
    .quad 0xcf92000000ffff                   # 07c58: ff ff 00 00 00 92 cf 00  0x10: data, base 0, 4 GiB
gdtr:
    .word 0x17                               # 07c60: 17 00
    .long gdt                                # 07c62: 48 7c 00 00
    .org 0x1e0, 0                            # 07c66: 378 zeros  parameter block (PARAMS_GPA)
p_start:
    .long 0x100000                           # 07de0: 00 00 10 00  first page of the range
p_end:
    .long 0xff00000                          # 07de4: 00 00 f0 0f  end of the range (init pass)
p_sweep_end:
    .long 0xff00000                          # 07de8: 00 00 f0 0f  end of the swept part
p_rate:
    .long 0x1061aa                           # 07dec: aa 61 10 00  pages per tick, 16.16
p_cap:
    .long 0x4186a8                           # 07df0: a8 86 41 00  budget cap, 16.16 pages
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
    lidt [idtr]                              # 07e5c: 0f 01 1d 28 81 00 00
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
    # esi = cursor (next page), ebx = gen, edi = budget (16.16), ebp = tick seen
    mov esi, dword ptr [p_start]             # 07e8f: 8b 35 e0 7d 00 00
    mov ebx, 0x1                             # 07e95: bb 01 00 00 00
    movd mm0, esi                            # 07e9a: 0f 6e c6
    movd mm1, ebx                            # 07e9d: 0f 6e cb
    punpckldq mm0, mm1                       # 07ea0: 0f 62 c1
    movq qword ptr [0x6008], mm0             # 07ea3: 0f 7f 05 08 60 00 00
    mov dword ptr [0x6018], 0x3e8            # 07eaa: c7 05 18 60 00 00 e8 03 00 00
    mov dword ptr [0x6000], 0x31484752       # 07eb4: c7 05 00 60 00 00 52 47 48 31  magic last: a valid heartbeat is a running loop
    mov dx, 0x3f8                            # 07ebe: 66 ba f8 03
    mov al, 0x53                             # 07ec2: b0 53  'S': the loop starts
    out dx, al                               # 07ec4: ee
    xor edi, edi                             # 07ec5: 31 ff
    xor ebp, ebp                             # 07ec7: 31 ed
    sti                                      # 07ec9: fb
idle:
    cli                                      # 07eca: fa  sti;hlt below is atomic: no tick is missed
    mov eax, dword ptr [0x6004]              # 07ecb: a1 04 60 00 00
    cmp eax, ebp                             # 07ed0: 39 e8
    jne refill                               # 07ed2: 75 04
    sti                                      # 07ed4: fb
    hlt                                      # 07ed5: f4
    jmp idle                                 # 07ed6: eb f2
refill:
    sti                                      # 07ed8: fb
    mov edx, eax                             # 07ed9: 89 c2
    sub eax, ebp                             # 07edb: 29 e8  eax = ticks elapsed
    mov ebp, edx                             # 07edd: 89 d5
    cmp eax, 0x4                             # 07edf: 83 f8 04
    jbe credit                               # 07ee2: 76 05
    mov eax, 0x4                             # 07ee4: b8 04 00 00 00
credit:
    mul dword ptr [p_rate]                   # 07ee9: f7 25 ec 7d 00 00  edx:eax = ticks * rate
    test edx, edx                            # 07eef: 85 d2
    jnz full                                 # 07ef1: 75 0c
    add edi, eax                             # 07ef3: 01 c7
    jc full                                  # 07ef5: 72 08
    cmp edi, dword ptr [p_cap]               # 07ef7: 3b 3d f0 7d 00 00
    jbe budget                               # 07efd: 76 06
full:
    mov edi, dword ptr [p_cap]               # 07eff: 8b 3d f0 7d 00 00
budget:
    cmp edi, 0x10000                         # 07f05: 81 ff 00 00 01 00
    jb idle                                  # 07f0b: 72 bd
    # one page: gen, pfn, tail (F7/F8), then count it and move the cursor
    add dword ptr [esi], 0x1                 # 07f0d: 83 06 01
    mov eax, esi                             # 07f10: 89 f0
    shr eax, 0xc                             # 07f12: c1 e8 0c
    mov dword ptr [esi+4], eax               # 07f15: 89 46 04
    add dword ptr [esi+4092], 0x1            # 07f18: 83 86 fc 0f 00 00 01
    add dword ptr [0x6010], 0x1              # 07f1f: 83 05 10 60 00 00 01
    adc dword ptr [0x6014], 0x0              # 07f26: 83 15 14 60 00 00 00
    sub edi, 0x10000                         # 07f2d: 81 ef 00 00 01 00
    add esi, 0x1000                          # 07f33: 81 c6 00 10 00 00
    cmp esi, dword ptr [p_sweep_end]         # 07f39: 3b 35 e8 7d 00 00
    jb publish                               # 07f3f: 72 12
    mov al, bl                               # 07f41: 88 d8  sweep done: 'a'+(gen&15) (F7)
    and al, 0xf                              # 07f43: 24 0f
    add al, 0x61                             # 07f45: 04 61
    mov dx, 0x3f8                            # 07f47: 66 ba f8 03
    out dx, al                               # 07f4b: ee
    inc ebx                                  # 07f4c: 43
    mov esi, dword ptr [p_start]             # 07f4d: 8b 35 e0 7d 00 00
publish:
    movd mm0, esi                            # 07f53: 0f 6e c6
    movd mm1, ebx                            # 07f56: 0f 6e cb
    punpckldq mm0, mm1                       # 07f59: 0f 62 c1
    movq qword ptr [0x6008], mm0             # 07f5c: 0f 7f 05 08 60 00 00
    mov eax, dword ptr [0x6004]              # 07f63: a1 04 60 00 00
    cmp eax, ebp                             # 07f68: 39 e8
    jne refill                               # 07f6a: 0f 85 68 ff ff ff
    jmp budget                               # 07f70: eb 93
isr_timer:
    push eax                                 # 07f72: 50
    inc dword ptr [0x6004]                   # 07f73: ff 05 04 60 00 00
    dec dword ptr [0x6018]                   # 07f79: ff 0d 18 60 00 00
    jnz eoi                                  # 07f7f: 75 13
    mov dword ptr [0x6018], 0x3e8            # 07f81: c7 05 18 60 00 00 e8 03 00 00
    push edx                                 # 07f8b: 52
    mov dx, 0x3f8                            # 07f8c: 66 ba f8 03
    mov al, 0x2e                             # 07f90: b0 2e  '.': 1000 more ticks
    out dx, al                               # 07f92: ee
    pop edx                                  # 07f93: 5a
eoi:
    mov al, 0x20                             # 07f94: b0 20  non-specific EOI to the master 8259
    out 0x20, al                             # 07f96: e6 20
    pop eax                                  # 07f98: 58
    iretd                                    # 07f99: cf
isr_ignore:
    iretd                                    # 07f9a: cf  masked or spurious IRQ (IRQ7): no EOI
isr_fault:
    mov dx, 0x3f8                            # 07f9b: 66 ba f8 03
    mov al, 0x21                             # 07f9f: b0 21  '!': a CPU exception, the guest stops
    out dx, al                               # 07fa1: ee
fault_halt:
    cli                                      # 07fa2: fa
    hlt                                      # 07fa3: f4
    jmp fault_halt                           # 07fa4: eb fc
    .p2align 3, 0                            # 07fa6: 2 zeros
idt:
    .word isr_fault                          # 07fa8: 9b 7f  vector 0x00
    .word 0x8                                # 07faa: 08 00
    .byte 0x0                                # 07fac: 00
    .byte 0x8e                               # 07fad: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fae: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fb0: 9b 7f  vector 0x01
    .word 0x8                                # 07fb2: 08 00
    .byte 0x0                                # 07fb4: 00
    .byte 0x8e                               # 07fb5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fb6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fb8: 9b 7f  vector 0x02
    .word 0x8                                # 07fba: 08 00
    .byte 0x0                                # 07fbc: 00
    .byte 0x8e                               # 07fbd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fbe: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fc0: 9b 7f  vector 0x03
    .word 0x8                                # 07fc2: 08 00
    .byte 0x0                                # 07fc4: 00
    .byte 0x8e                               # 07fc5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fc6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fc8: 9b 7f  vector 0x04
    .word 0x8                                # 07fca: 08 00
    .byte 0x0                                # 07fcc: 00
    .byte 0x8e                               # 07fcd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fce: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fd0: 9b 7f  vector 0x05
    .word 0x8                                # 07fd2: 08 00
    .byte 0x0                                # 07fd4: 00
    .byte 0x8e                               # 07fd5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fd6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fd8: 9b 7f  vector 0x06
    .word 0x8                                # 07fda: 08 00
    .byte 0x0                                # 07fdc: 00
    .byte 0x8e                               # 07fdd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fde: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fe0: 9b 7f  vector 0x07
    .word 0x8                                # 07fe2: 08 00
    .byte 0x0                                # 07fe4: 00
    .byte 0x8e                               # 07fe5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fe6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fe8: 9b 7f  vector 0x08
    .word 0x8                                # 07fea: 08 00
    .byte 0x0                                # 07fec: 00
    .byte 0x8e                               # 07fed: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fee: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07ff0: 9b 7f  vector 0x09
    .word 0x8                                # 07ff2: 08 00
    .byte 0x0                                # 07ff4: 00
    .byte 0x8e                               # 07ff5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07ff6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07ff8: 9b 7f  vector 0x0a
    .word 0x8                                # 07ffa: 08 00
    .byte 0x0                                # 07ffc: 00
    .byte 0x8e                               # 07ffd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07ffe: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08000: 9b 7f  vector 0x0b
    .word 0x8                                # 08002: 08 00
    .byte 0x0                                # 08004: 00
    .byte 0x8e                               # 08005: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08006: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08008: 9b 7f  vector 0x0c
    .word 0x8                                # 0800a: 08 00
    .byte 0x0                                # 0800c: 00
    .byte 0x8e                               # 0800d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0800e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08010: 9b 7f  vector 0x0d
    .word 0x8                                # 08012: 08 00
    .byte 0x0                                # 08014: 00
    .byte 0x8e                               # 08015: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08016: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08018: 9b 7f  vector 0x0e
    .word 0x8                                # 0801a: 08 00
    .byte 0x0                                # 0801c: 00
    .byte 0x8e                               # 0801d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0801e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08020: 9b 7f  vector 0x0f
    .word 0x8                                # 08022: 08 00
    .byte 0x0                                # 08024: 00
    .byte 0x8e                               # 08025: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08026: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08028: 9b 7f  vector 0x10
    .word 0x8                                # 0802a: 08 00
    .byte 0x0                                # 0802c: 00
    .byte 0x8e                               # 0802d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0802e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08030: 9b 7f  vector 0x11
    .word 0x8                                # 08032: 08 00
    .byte 0x0                                # 08034: 00
    .byte 0x8e                               # 08035: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08036: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08038: 9b 7f  vector 0x12
    .word 0x8                                # 0803a: 08 00
    .byte 0x0                                # 0803c: 00
    .byte 0x8e                               # 0803d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0803e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08040: 9b 7f  vector 0x13
    .word 0x8                                # 08042: 08 00
    .byte 0x0                                # 08044: 00
    .byte 0x8e                               # 08045: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08046: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08048: 9b 7f  vector 0x14
    .word 0x8                                # 0804a: 08 00
    .byte 0x0                                # 0804c: 00
    .byte 0x8e                               # 0804d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0804e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08050: 9b 7f  vector 0x15
    .word 0x8                                # 08052: 08 00
    .byte 0x0                                # 08054: 00
    .byte 0x8e                               # 08055: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08056: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08058: 9b 7f  vector 0x16
    .word 0x8                                # 0805a: 08 00
    .byte 0x0                                # 0805c: 00
    .byte 0x8e                               # 0805d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0805e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08060: 9b 7f  vector 0x17
    .word 0x8                                # 08062: 08 00
    .byte 0x0                                # 08064: 00
    .byte 0x8e                               # 08065: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08066: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08068: 9b 7f  vector 0x18
    .word 0x8                                # 0806a: 08 00
    .byte 0x0                                # 0806c: 00
    .byte 0x8e                               # 0806d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0806e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08070: 9b 7f  vector 0x19
    .word 0x8                                # 08072: 08 00
    .byte 0x0                                # 08074: 00
    .byte 0x8e                               # 08075: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08076: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08078: 9b 7f  vector 0x1a
    .word 0x8                                # 0807a: 08 00
    .byte 0x0                                # 0807c: 00
    .byte 0x8e                               # 0807d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0807e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08080: 9b 7f  vector 0x1b
    .word 0x8                                # 08082: 08 00
    .byte 0x0                                # 08084: 00
    .byte 0x8e                               # 08085: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08086: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08088: 9b 7f  vector 0x1c
    .word 0x8                                # 0808a: 08 00
    .byte 0x0                                # 0808c: 00
    .byte 0x8e                               # 0808d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0808e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08090: 9b 7f  vector 0x1d
    .word 0x8                                # 08092: 08 00
    .byte 0x0                                # 08094: 00
    .byte 0x8e                               # 08095: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08096: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08098: 9b 7f  vector 0x1e
    .word 0x8                                # 0809a: 08 00
    .byte 0x0                                # 0809c: 00
    .byte 0x8e                               # 0809d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0809e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080a0: 9b 7f  vector 0x1f
    .word 0x8                                # 080a2: 08 00
    .byte 0x0                                # 080a4: 00
    .byte 0x8e                               # 080a5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080a6: 00 00  handlers are below 64 KiB
    .word isr_timer                          # 080a8: 72 7f  vector 0x20
    .word 0x8                                # 080aa: 08 00
    .byte 0x0                                # 080ac: 00
    .byte 0x8e                               # 080ad: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080ae: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080b0: 9a 7f  vector 0x21
    .word 0x8                                # 080b2: 08 00
    .byte 0x0                                # 080b4: 00
    .byte 0x8e                               # 080b5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080b6: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080b8: 9a 7f  vector 0x22
    .word 0x8                                # 080ba: 08 00
    .byte 0x0                                # 080bc: 00
    .byte 0x8e                               # 080bd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080be: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080c0: 9a 7f  vector 0x23
    .word 0x8                                # 080c2: 08 00
    .byte 0x0                                # 080c4: 00
    .byte 0x8e                               # 080c5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080c6: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080c8: 9a 7f  vector 0x24
    .word 0x8                                # 080ca: 08 00
    .byte 0x0                                # 080cc: 00
    .byte 0x8e                               # 080cd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080ce: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080d0: 9a 7f  vector 0x25
    .word 0x8                                # 080d2: 08 00
    .byte 0x0                                # 080d4: 00
    .byte 0x8e                               # 080d5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080d6: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080d8: 9a 7f  vector 0x26
    .word 0x8                                # 080da: 08 00
    .byte 0x0                                # 080dc: 00
    .byte 0x8e                               # 080dd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080de: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080e0: 9a 7f  vector 0x27
    .word 0x8                                # 080e2: 08 00
    .byte 0x0                                # 080e4: 00
    .byte 0x8e                               # 080e5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080e6: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080e8: 9a 7f  vector 0x28
    .word 0x8                                # 080ea: 08 00
    .byte 0x0                                # 080ec: 00
    .byte 0x8e                               # 080ed: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080ee: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080f0: 9a 7f  vector 0x29
    .word 0x8                                # 080f2: 08 00
    .byte 0x0                                # 080f4: 00
    .byte 0x8e                               # 080f5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080f6: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080f8: 9a 7f  vector 0x2a
    .word 0x8                                # 080fa: 08 00
    .byte 0x0                                # 080fc: 00
    .byte 0x8e                               # 080fd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080fe: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08100: 9a 7f  vector 0x2b
    .word 0x8                                # 08102: 08 00
    .byte 0x0                                # 08104: 00
    .byte 0x8e                               # 08105: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08106: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08108: 9a 7f  vector 0x2c
    .word 0x8                                # 0810a: 08 00
    .byte 0x0                                # 0810c: 00
    .byte 0x8e                               # 0810d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0810e: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08110: 9a 7f  vector 0x2d
    .word 0x8                                # 08112: 08 00
    .byte 0x0                                # 08114: 00
    .byte 0x8e                               # 08115: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08116: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08118: 9a 7f  vector 0x2e
    .word 0x8                                # 0811a: 08 00
    .byte 0x0                                # 0811c: 00
    .byte 0x8e                               # 0811d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0811e: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08120: 9a 7f  vector 0x2f
    .word 0x8                                # 08122: 08 00
    .byte 0x0                                # 08124: 00
    .byte 0x8e                               # 08125: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08126: 00 00  handlers are below 64 KiB
idtr:
    .word 0x17f                              # 08128: 7f 01
    .long idt                                # 0812a: a8 7f 00 00
