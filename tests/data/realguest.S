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
    .long 0x12bf75                           # 07dec: 75 bf 12 00  pages per PM timer unit, 4.28
p_cap:
    .long 0x51ebd8                           # 07df0: d8 eb 51 00  budget cap, 16.16 pages
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
    lidt [idtr]                              # 07e5c: 0f 01 1d 40 81 00 00
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
    # esi = cursor (next page), ebx = gen, edi = budget (16.16 pages),
    # ecx = PIT tick seen, ebp = PM timer at the last credit
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
    xor ecx, ecx                             # 07ec7: 31 c9
    mov dx, 0x608                            # 07ec9: 66 ba 08 06
    in eax, dx                               # 07ecd: ed
    mov ebp, eax                             # 07ece: 89 c5
    sti                                      # 07ed0: fb
idle:
    cli                                      # 07ed1: fa  sti;hlt below is atomic: no tick is missed
    mov eax, dword ptr [0x6004]              # 07ed2: a1 04 60 00 00
    cmp eax, ecx                             # 07ed7: 39 c8
    jne refill                               # 07ed9: 75 04
    sti                                      # 07edb: fb
    hlt                                      # 07edc: f4
    jmp idle                                 # 07edd: eb f2
refill:
    sti                                      # 07edf: fb
    mov ecx, eax                             # 07ee0: 89 c1  a new tick: credit the time since the last one
    mov dx, 0x608                            # 07ee2: 66 ba 08 06
    in eax, dx                               # 07ee6: ed
    mov edx, eax                             # 07ee7: 89 c2
    sub eax, ebp                             # 07ee9: 29 e8
    mov ebp, edx                             # 07eeb: 89 d5
    and eax, 0xffffff                        # 07eed: 25 ff ff ff 00  eax = PM timer units elapsed
    cmp eax, 0x45ea                          # 07ef2: 3d ea 45 00 00
    jbe credit                               # 07ef7: 76 05
    mov eax, 0x45ea                          # 07ef9: b8 ea 45 00 00
credit:
    mul dword ptr [p_rate]                   # 07efe: f7 25 ec 7d 00 00  edx:eax = units * rate (pages, 4.28)
    shrd eax, edx, 0xc                       # 07f04: 0f ac d0 0c  to 16.16 pages
    shr edx, 0xc                             # 07f08: c1 ea 0c
    jnz full                                 # 07f0b: 75 0c
    add edi, eax                             # 07f0d: 01 c7
    jc full                                  # 07f0f: 72 08
    cmp edi, dword ptr [p_cap]               # 07f11: 3b 3d f0 7d 00 00
    jbe budget                               # 07f17: 76 06
full:
    mov edi, dword ptr [p_cap]               # 07f19: 8b 3d f0 7d 00 00
budget:
    cmp edi, 0x10000                         # 07f1f: 81 ff 00 00 01 00
    jb idle                                  # 07f25: 72 aa
    # one page: gen, pfn, tail (F7/F8), then count it and move the cursor
    add dword ptr [esi], 0x1                 # 07f27: 83 06 01
    mov eax, esi                             # 07f2a: 89 f0
    shr eax, 0xc                             # 07f2c: c1 e8 0c
    mov dword ptr [esi+4], eax               # 07f2f: 89 46 04
    add dword ptr [esi+4092], 0x1            # 07f32: 83 86 fc 0f 00 00 01
    add dword ptr [0x6010], 0x1              # 07f39: 83 05 10 60 00 00 01
    adc dword ptr [0x6014], 0x0              # 07f40: 83 15 14 60 00 00 00
    sub edi, 0x10000                         # 07f47: 81 ef 00 00 01 00
    add esi, 0x1000                          # 07f4d: 81 c6 00 10 00 00
    cmp esi, dword ptr [p_sweep_end]         # 07f53: 3b 35 e8 7d 00 00
    jb publish                               # 07f59: 72 12
    mov al, bl                               # 07f5b: 88 d8  sweep done: 'a'+(gen&15) (F7)
    and al, 0xf                              # 07f5d: 24 0f
    add al, 0x61                             # 07f5f: 04 61
    mov dx, 0x3f8                            # 07f61: 66 ba f8 03
    out dx, al                               # 07f65: ee
    inc ebx                                  # 07f66: 43
    mov esi, dword ptr [p_start]             # 07f67: 8b 35 e0 7d 00 00
publish:
    movd mm0, esi                            # 07f6d: 0f 6e c6
    movd mm1, ebx                            # 07f70: 0f 6e cb
    punpckldq mm0, mm1                       # 07f73: 0f 62 c1
    movq qword ptr [0x6008], mm0             # 07f76: 0f 7f 05 08 60 00 00
    mov eax, dword ptr [0x6004]              # 07f7d: a1 04 60 00 00
    cmp eax, ecx                             # 07f82: 39 c8
    jne refill                               # 07f84: 0f 85 55 ff ff ff
    jmp budget                               # 07f8a: eb 93
isr_timer:
    push eax                                 # 07f8c: 50
    inc dword ptr [0x6004]                   # 07f8d: ff 05 04 60 00 00
    dec dword ptr [0x6018]                   # 07f93: ff 0d 18 60 00 00
    jnz eoi                                  # 07f99: 75 13
    mov dword ptr [0x6018], 0x3e8            # 07f9b: c7 05 18 60 00 00 e8 03 00 00
    push edx                                 # 07fa5: 52
    mov dx, 0x3f8                            # 07fa6: 66 ba f8 03
    mov al, 0x2e                             # 07faa: b0 2e  '.': 1000 more ticks
    out dx, al                               # 07fac: ee
    pop edx                                  # 07fad: 5a
eoi:
    mov al, 0x20                             # 07fae: b0 20  non-specific EOI to the master 8259
    out 0x20, al                             # 07fb0: e6 20
    pop eax                                  # 07fb2: 58
    iretd                                    # 07fb3: cf
isr_ignore:
    iretd                                    # 07fb4: cf  masked or spurious IRQ (IRQ7): no EOI
isr_fault:
    mov dx, 0x3f8                            # 07fb5: 66 ba f8 03
    mov al, 0x21                             # 07fb9: b0 21  '!': a CPU exception, the guest stops
    out dx, al                               # 07fbb: ee
fault_halt:
    cli                                      # 07fbc: fa
    hlt                                      # 07fbd: f4
    jmp fault_halt                           # 07fbe: eb fc
    .p2align 3, 0                            # 07fc0: 0 zeros
idt:
    .word isr_fault                          # 07fc0: b5 7f  vector 0x00
    .word 0x8                                # 07fc2: 08 00
    .byte 0x0                                # 07fc4: 00
    .byte 0x8e                               # 07fc5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fc6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fc8: b5 7f  vector 0x01
    .word 0x8                                # 07fca: 08 00
    .byte 0x0                                # 07fcc: 00
    .byte 0x8e                               # 07fcd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fce: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fd0: b5 7f  vector 0x02
    .word 0x8                                # 07fd2: 08 00
    .byte 0x0                                # 07fd4: 00
    .byte 0x8e                               # 07fd5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fd6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fd8: b5 7f  vector 0x03
    .word 0x8                                # 07fda: 08 00
    .byte 0x0                                # 07fdc: 00
    .byte 0x8e                               # 07fdd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fde: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fe0: b5 7f  vector 0x04
    .word 0x8                                # 07fe2: 08 00
    .byte 0x0                                # 07fe4: 00
    .byte 0x8e                               # 07fe5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fe6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07fe8: b5 7f  vector 0x05
    .word 0x8                                # 07fea: 08 00
    .byte 0x0                                # 07fec: 00
    .byte 0x8e                               # 07fed: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07fee: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07ff0: b5 7f  vector 0x06
    .word 0x8                                # 07ff2: 08 00
    .byte 0x0                                # 07ff4: 00
    .byte 0x8e                               # 07ff5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07ff6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 07ff8: b5 7f  vector 0x07
    .word 0x8                                # 07ffa: 08 00
    .byte 0x0                                # 07ffc: 00
    .byte 0x8e                               # 07ffd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 07ffe: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08000: b5 7f  vector 0x08
    .word 0x8                                # 08002: 08 00
    .byte 0x0                                # 08004: 00
    .byte 0x8e                               # 08005: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08006: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08008: b5 7f  vector 0x09
    .word 0x8                                # 0800a: 08 00
    .byte 0x0                                # 0800c: 00
    .byte 0x8e                               # 0800d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0800e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08010: b5 7f  vector 0x0a
    .word 0x8                                # 08012: 08 00
    .byte 0x0                                # 08014: 00
    .byte 0x8e                               # 08015: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08016: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08018: b5 7f  vector 0x0b
    .word 0x8                                # 0801a: 08 00
    .byte 0x0                                # 0801c: 00
    .byte 0x8e                               # 0801d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0801e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08020: b5 7f  vector 0x0c
    .word 0x8                                # 08022: 08 00
    .byte 0x0                                # 08024: 00
    .byte 0x8e                               # 08025: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08026: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08028: b5 7f  vector 0x0d
    .word 0x8                                # 0802a: 08 00
    .byte 0x0                                # 0802c: 00
    .byte 0x8e                               # 0802d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0802e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08030: b5 7f  vector 0x0e
    .word 0x8                                # 08032: 08 00
    .byte 0x0                                # 08034: 00
    .byte 0x8e                               # 08035: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08036: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08038: b5 7f  vector 0x0f
    .word 0x8                                # 0803a: 08 00
    .byte 0x0                                # 0803c: 00
    .byte 0x8e                               # 0803d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0803e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08040: b5 7f  vector 0x10
    .word 0x8                                # 08042: 08 00
    .byte 0x0                                # 08044: 00
    .byte 0x8e                               # 08045: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08046: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08048: b5 7f  vector 0x11
    .word 0x8                                # 0804a: 08 00
    .byte 0x0                                # 0804c: 00
    .byte 0x8e                               # 0804d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0804e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08050: b5 7f  vector 0x12
    .word 0x8                                # 08052: 08 00
    .byte 0x0                                # 08054: 00
    .byte 0x8e                               # 08055: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08056: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08058: b5 7f  vector 0x13
    .word 0x8                                # 0805a: 08 00
    .byte 0x0                                # 0805c: 00
    .byte 0x8e                               # 0805d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0805e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08060: b5 7f  vector 0x14
    .word 0x8                                # 08062: 08 00
    .byte 0x0                                # 08064: 00
    .byte 0x8e                               # 08065: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08066: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08068: b5 7f  vector 0x15
    .word 0x8                                # 0806a: 08 00
    .byte 0x0                                # 0806c: 00
    .byte 0x8e                               # 0806d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0806e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08070: b5 7f  vector 0x16
    .word 0x8                                # 08072: 08 00
    .byte 0x0                                # 08074: 00
    .byte 0x8e                               # 08075: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08076: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08078: b5 7f  vector 0x17
    .word 0x8                                # 0807a: 08 00
    .byte 0x0                                # 0807c: 00
    .byte 0x8e                               # 0807d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0807e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08080: b5 7f  vector 0x18
    .word 0x8                                # 08082: 08 00
    .byte 0x0                                # 08084: 00
    .byte 0x8e                               # 08085: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08086: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08088: b5 7f  vector 0x19
    .word 0x8                                # 0808a: 08 00
    .byte 0x0                                # 0808c: 00
    .byte 0x8e                               # 0808d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0808e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08090: b5 7f  vector 0x1a
    .word 0x8                                # 08092: 08 00
    .byte 0x0                                # 08094: 00
    .byte 0x8e                               # 08095: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08096: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 08098: b5 7f  vector 0x1b
    .word 0x8                                # 0809a: 08 00
    .byte 0x0                                # 0809c: 00
    .byte 0x8e                               # 0809d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0809e: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080a0: b5 7f  vector 0x1c
    .word 0x8                                # 080a2: 08 00
    .byte 0x0                                # 080a4: 00
    .byte 0x8e                               # 080a5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080a6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080a8: b5 7f  vector 0x1d
    .word 0x8                                # 080aa: 08 00
    .byte 0x0                                # 080ac: 00
    .byte 0x8e                               # 080ad: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080ae: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080b0: b5 7f  vector 0x1e
    .word 0x8                                # 080b2: 08 00
    .byte 0x0                                # 080b4: 00
    .byte 0x8e                               # 080b5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080b6: 00 00  handlers are below 64 KiB
    .word isr_fault                          # 080b8: b5 7f  vector 0x1f
    .word 0x8                                # 080ba: 08 00
    .byte 0x0                                # 080bc: 00
    .byte 0x8e                               # 080bd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080be: 00 00  handlers are below 64 KiB
    .word isr_timer                          # 080c0: 8c 7f  vector 0x20
    .word 0x8                                # 080c2: 08 00
    .byte 0x0                                # 080c4: 00
    .byte 0x8e                               # 080c5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080c6: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080c8: b4 7f  vector 0x21
    .word 0x8                                # 080ca: 08 00
    .byte 0x0                                # 080cc: 00
    .byte 0x8e                               # 080cd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080ce: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080d0: b4 7f  vector 0x22
    .word 0x8                                # 080d2: 08 00
    .byte 0x0                                # 080d4: 00
    .byte 0x8e                               # 080d5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080d6: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080d8: b4 7f  vector 0x23
    .word 0x8                                # 080da: 08 00
    .byte 0x0                                # 080dc: 00
    .byte 0x8e                               # 080dd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080de: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080e0: b4 7f  vector 0x24
    .word 0x8                                # 080e2: 08 00
    .byte 0x0                                # 080e4: 00
    .byte 0x8e                               # 080e5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080e6: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080e8: b4 7f  vector 0x25
    .word 0x8                                # 080ea: 08 00
    .byte 0x0                                # 080ec: 00
    .byte 0x8e                               # 080ed: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080ee: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080f0: b4 7f  vector 0x26
    .word 0x8                                # 080f2: 08 00
    .byte 0x0                                # 080f4: 00
    .byte 0x8e                               # 080f5: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080f6: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 080f8: b4 7f  vector 0x27
    .word 0x8                                # 080fa: 08 00
    .byte 0x0                                # 080fc: 00
    .byte 0x8e                               # 080fd: 8e  32-bit interrupt gate, present
    .word 0x0                                # 080fe: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08100: b4 7f  vector 0x28
    .word 0x8                                # 08102: 08 00
    .byte 0x0                                # 08104: 00
    .byte 0x8e                               # 08105: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08106: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08108: b4 7f  vector 0x29
    .word 0x8                                # 0810a: 08 00
    .byte 0x0                                # 0810c: 00
    .byte 0x8e                               # 0810d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0810e: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08110: b4 7f  vector 0x2a
    .word 0x8                                # 08112: 08 00
    .byte 0x0                                # 08114: 00
    .byte 0x8e                               # 08115: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08116: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08118: b4 7f  vector 0x2b
    .word 0x8                                # 0811a: 08 00
    .byte 0x0                                # 0811c: 00
    .byte 0x8e                               # 0811d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0811e: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08120: b4 7f  vector 0x2c
    .word 0x8                                # 08122: 08 00
    .byte 0x0                                # 08124: 00
    .byte 0x8e                               # 08125: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08126: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08128: b4 7f  vector 0x2d
    .word 0x8                                # 0812a: 08 00
    .byte 0x0                                # 0812c: 00
    .byte 0x8e                               # 0812d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0812e: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08130: b4 7f  vector 0x2e
    .word 0x8                                # 08132: 08 00
    .byte 0x0                                # 08134: 00
    .byte 0x8e                               # 08135: 8e  32-bit interrupt gate, present
    .word 0x0                                # 08136: 00 00  handlers are below 64 KiB
    .word isr_ignore                         # 08138: b4 7f  vector 0x2f
    .word 0x8                                # 0813a: 08 00
    .byte 0x0                                # 0813c: 00
    .byte 0x8e                               # 0813d: 8e  32-bit interrupt gate, present
    .word 0x0                                # 0813e: 00 00  handlers are below 64 KiB
idtr:
    .word 0x17f                              # 08140: 7f 01
    .long idt                                # 08142: c0 7f 00 00
