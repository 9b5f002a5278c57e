//! A tiny SMP guest that starts its APs one at a time and times each start with
//! the TSC, by one of three paths:
//!
//! - `m`: the ACPI MP wakeup mailbox (the VMM answers with StartVirtualProcessor);
//! - `h`: HvCallEnableVpVtl + HvCallStartVirtualProcessor through the hypercall
//!   page (needs `--hyperv vtl2`);
//! - `s`: INIT and SIPI through the local APIC's ICR (KVM's in-kernel LAPIC).
//!
//! The path and the vCPU count are the first three characters of the kernel
//! command line, e.g. `s04`. Every path ends at the same 64-bit entry, in the
//! BSP's paging and GDT: StartVirtualProcessor puts the AP there directly, a
//! SIPI starts it in real mode at a trampoline that enters long mode as an OS's
//! does. The guest starts all APs, then prints for each AP `n`
//! `HVKVM-AP nn tttttttttttttttt` (hex: TSC ticks from the BSP's request to the
//! AP's first instruction at the 64-bit entry, or `TIMEOUT`; for SIPI also the
//! ticks to its first real-mode instruction), then `HVKVM-APS tttttttttttttttt`
//! (ticks from the first request to the last arrival), then powers off (ACPI S5).
//!
//! The code is assembled with the test binary (`global_asm!`) and copied out of
//! it; it uses only RIP-relative and absolute low addresses, so it runs wherever
//! it is loaded. Fixed guest addresses: the real-mode trampoline at 0x10000 (its
//! arrival record at 0x10800: TSC, then a flag at 0x10808), the hypercall page
//! at 0x12000, a page directory for 3-4 GiB at 0x13000 (the mailbox and the
//! LAPIC live there), the hypercall input at `INPUT`.
#![allow(dead_code)]

use hv_defs::InitialVpContext;
use zerocopy::IntoBytes;

/// Where the ELF's segment is loaded.
pub const BASE: u64 = 0x100_0000;
/// File (and segment) offset of the code.
const CODE_OFFSET: u64 = 0x1000;
/// File (and segment) offset of the hypercall input template.
const INPUT_OFFSET: u64 = 0x8000;
/// The hypercall input's GPA.
pub const INPUT: u64 = BASE + INPUT_OFFSET;
/// The ACPI MP wakeup mailbox of reference-vmm.
pub const MAILBOX: u64 = 0xFEB0_0000;

// Offsets in the hypercall input: 16 bytes of header, then the context.
const CTX: usize = 16;
const CTX_GDTR_LIMIT: usize = CTX + 174;
const CTX_GDTR_BASE: usize = CTX + 176;
const CTX_CR3: usize = CTX + 200;

std::arch::global_asm!(
    r#"
    .pushsection .rodata.hvkvm_smp_guest, "a"
    .balign 16
    .globl hvkvm_smp_guest_start
hvkvm_smp_guest_start:
    .code64
    // RSI: the zero page. R15: the command line; R14: the path; R13: vCPUs.
    mov r15d, dword ptr [rsi + 0x228]
    movzx r14d, byte ptr [r15]
    movzx eax, byte ptr [r15 + 1]
    sub eax, 0x30
    imul eax, eax, 10
    movzx ecx, byte ptr [r15 + 2]
    sub ecx, 0x30
    add eax, ecx
    mov r13d, eax
    // 3-4 GiB in 2 MiB pages, uncached, through PDPT[3] of the current tables.
    mov edi, 0x13000
    mov rax, 0xC000009B
    mov ecx, 512
2:  mov qword ptr [rdi], rax
    add rax, 0x200000
    add rdi, 8
    dec ecx
    jnz 2b
    mov rax, cr3
    and rax, -4096
    mov rbx, qword ptr [rax]
    and rbx, -4096
    mov qword ptr [rbx + 24], 0x13003
    mov rax, cr3
    mov cr3, rax
    // The real-mode trampoline at 0x10000 (SIPI vector 0x10) and what it needs
    // to reach the 64-bit entry: this GDTR at 0x10820, CR3 at 0x10828, the
    // far pointer (entry, selector 0x10) at 0x10830.
    lea rsi, [rip + 7f]
    mov edi, 0x10000
    mov ecx, 128
    rep movsb
    sgdt [0x10820]
    mov rax, cr3
    mov dword ptr [0x10828], eax
    lea rax, [rip + 9f]
    mov dword ptr [0x10830], eax
    mov word ptr [0x10834], 0x10
    lea rsi, [rip + 30f]
    call 50f
    mov al, r14b
    call 52f
    mov al, 10
    call 52f
    cmp r14b, 0x68
    jne 3f
    // The Hyper-V interface signature (CPUID 0x40000001 EAX), printed.
    mov eax, 0x40000001
    cpuid
    mov ebp, eax
    lea rsi, [rip + 36f]
    call 50f
    mov edi, ebp
    mov esi, 8
    call 51f
    mov al, 10
    call 52f
    // Hypercalls: a guest OS id, the hypercall page at 0x12000, and the start
    // context completed with the AP entry, this CR3 and this GDT.
    mov ecx, 0x40000000
    mov eax, 1
    mov edx, 0x8100
    wrmsr
    mov ecx, 0x40000001
    mov eax, 0x12001
    xor edx, edx
    wrmsr
    mov edi, {input}
    lea rax, [rip + 9f]
    mov qword ptr [rdi + {ctx}], rax
    mov rax, cr3
    mov qword ptr [rdi + {cr3}], rax
    movzx eax, word ptr [0x10820]
    mov word ptr [rdi + {gdtr_limit}], ax
    mov rax, qword ptr [0x10822]
    mov qword ptr [rdi + {gdtr_base}], rax
    // A fourth character 'w': let the VMM settle first (2^28 ticks, about 0.1 s),
    // as an OS's boot does before it starts its APs.
3:  cmp byte ptr [r15 + 3], 0x77
    jne 3f
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rbp, rax
27: pause
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, rbp
    shr rax, 28
    jz 27b
    // Start the APs one after the other; per AP, the ticks to its 64-bit entry
    // at 0x14000 + 8 n and (SIPI) to its first real-mode instruction at
    // 0x15000 + 8 n; -1 for a timeout.
3:  rdtsc
    shl rdx, 32
    or rax, rdx
    mov r12, rax
    mov ebx, 1
4:  cmp ebx, r13d
    jae 20f
    mov byte ptr [0x10808], 0
    mov qword ptr [0x10810], 0
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rbp, rax
    cmp r14b, 0x6D
    je 18f
    cmp r14b, 0x68
    je 12f
    // INIT, then SIPI with vector 0x10, to APIC id EBX.
    mov edi, 0xFEE00000
    mov eax, ebx
    shl eax, 24
    mov dword ptr [rdi + 0x310], eax
    mov dword ptr [rdi + 0x300], 0x4500
    mov dword ptr [rdi + 0x310], eax
    mov dword ptr [rdi + 0x300], 0x4610
    jmp 13f
    // The mailbox: APIC id, wakeup vector, then the command (1, wakeup).
18: mov rdi, {mailbox}
    mov dword ptr [rdi + 4], ebx
    lea rax, [rip + 9f]
    mov qword ptr [rdi + 8], rax
    mov word ptr [rdi], 1
    jmp 13f
    // HvCallEnableVpVtl (0x0F) and HvCallStartVirtualProcessor (0x99), VTL 2.
12: mov edi, {input}
    mov dword ptr [rdi + 8], ebx
    mov ecx, 0x0F
    mov edx, {input}
    xor r8d, r8d
    mov eax, 0x12000
    call rax
    test ax, ax
    jnz 15f
    mov ecx, 0x99
    mov edx, {input}
    xor r8d, r8d
    mov eax, 0x12000
    call rax
    test ax, ax
    jnz 15f
    // Wait for the arrival, at most 2^36 ticks.
13: cmp byte ptr [0x10808], 1
    je 14f
    pause
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, rbp
    shr rax, 36
    jz 13b
    mov qword ptr [0x14000 + rbx * 8], -1
    mov qword ptr [0x15000 + rbx * 8], -1
    jmp 16f
14: mov rax, qword ptr [0x10800]
    sub rax, rbp
    mov qword ptr [0x14000 + rbx * 8], rax
    mov rax, qword ptr [0x10810]
    sub rax, rbp
    mov qword ptr [0x15000 + rbx * 8], rax
16: inc ebx
    jmp 4b
    // A refused hypercall: its status, then the end.
15: mov rbp, rax
    lea rsi, [rip + 34f]
    call 50f
    mov rdi, rbx
    mov esi, 2
    call 51f
    mov al, 0x20
    call 52f
    mov rdi, rbp
    mov esi, 4
    call 51f
    mov al, 10
    call 52f
    jmp 21f
    // All started: the total, then one line per AP.
20: rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, r12
    mov r12, rax
    mov ebx, 1
23: cmp ebx, r13d
    jae 24f
    lea rsi, [rip + 31f]
    call 50f
    mov rdi, rbx
    mov esi, 2
    call 51f
    mov al, 0x20
    call 52f
    mov rdi, qword ptr [0x14000 + rbx * 8]
    cmp rdi, -1
    je 25f
    mov esi, 16
    call 51f
    cmp r14b, 0x73
    jne 26f
    mov al, 0x20
    call 52f
    mov rdi, qword ptr [0x15000 + rbx * 8]
    mov esi, 16
    call 51f
26: mov al, 10
    call 52f
    inc ebx
    jmp 23b
25: lea rsi, [rip + 33f]
    call 50f
    inc ebx
    jmp 23b
24: lea rsi, [rip + 32f]
    call 50f
    mov rdi, r12
    mov esi, 16
    call 51f
    mov al, 10
    call 52f
    // ACPI S5.
21: mov dx, 0x600
    mov al, 0x34
    out dx, al
22: hlt
    jmp 22b

    // Puts the NUL-terminated string at RSI on COM1.
50: lodsb
    test al, al
    jz 53f
    call 52f
    jmp 50b
53: ret
    // Puts the low ESI nibbles of RDI in hex on COM1.
51: mov ecx, esi
    shl ecx, 2
54: sub ecx, 4
    mov rax, rdi
    shr rax, cl
    and eax, 15
    lea rdx, [rip + 35f]
    mov al, byte ptr [rdx + rax]
    call 52f
    test ecx, ecx
    jnz 54b
    ret
    // Puts AL on COM1.
52: mov dx, 0x3F8
    out dx, al
    ret

    // The AP's 64-bit entry (the mailbox's and the hypercalls' start RIP, and
    // where the trampoline goes).
9:  rdtsc
    mov dword ptr [0x10800], eax
    mov dword ptr [0x10804], edx
    mov byte ptr [0x10808], 1
17: cli
    hlt
    jmp 17b

    // An AP started by SIPI, in real mode at 1000:0000: notes its first
    // instruction, then enters long mode as an OS trampoline does (the BSP's
    // GDT and CR3, PAE, EFER.LME, CR0.PG|PE) and far-jumps to the entry.
    .code16
7:  rdtsc
    mov dword ptr cs:[0x810], eax
    mov dword ptr cs:[0x814], edx
    mov ax, cs
    mov ds, ax
    .byte 0x66, 0x0F, 0x01, 0x16
    .word 0x820
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, dword ptr [0x828]
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax
    .byte 0x66, 0xFF, 0x2E
    .word 0x830
    .code64

30: .asciz "HVKVM-SMP "
31: .asciz "HVKVM-AP "
32: .asciz "HVKVM-APS "
33: .asciz "TIMEOUT\n"
34: .asciz "HVKVM-HCFAIL "
36: .asciz "HVKVM-SIG "
35: .ascii "0123456789abcdef"
    .globl hvkvm_smp_guest_end
hvkvm_smp_guest_end:
    .popsection
"#,
    input = const INPUT,
    mailbox = const MAILBOX,
    ctx = const CTX,
    cr3 = const CTX_CR3,
    gdtr_limit = const CTX_GDTR_LIMIT,
    gdtr_base = const CTX_GDTR_BASE,
);

extern "C" {
    static hvkvm_smp_guest_start: u8;
    static hvkvm_smp_guest_end: u8;
}

/// The guest's code.
fn code() -> &'static [u8] {
    // SAFETY: both symbols are defined by the global_asm! above, in one read-only
    // section, `end` after `start`; the bytes between them are initialized.
    unsafe {
        let start = std::ptr::addr_of!(hvkvm_smp_guest_start);
        let end = std::ptr::addr_of!(hvkvm_smp_guest_end);
        std::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// The guest as an ELF64 image: one segment at [`BASE`] holding the headers,
/// the code at `BASE + 0x1000` (the entry, 64-bit) and the hypercall input at
/// [`INPUT`] (HV_PARTITION_ID_SELF, VP index patched per AP, target VTL 2, a
/// long-mode context whose RIP, CR3 and GDTR the guest fills in).
pub fn image() -> Vec<u8> {
    let code = code();
    assert!((code.len() as u64) < INPUT_OFFSET - CODE_OFFSET);
    let mut input = u64::MAX.to_le_bytes().to_vec();
    input.extend(0u32.to_le_bytes());
    input.extend([2u8, 0, 0, 0]);
    input.extend(InitialVpContext::long_mode(0, 0, 0).as_bytes());
    let size = INPUT_OFFSET + input.len() as u64;
    let mut f = vec![0u8; size as usize];
    let mut put = |at: usize, b: &[u8]| f[at..at + b.len()].copy_from_slice(b);
    let mut h = Vec::new();
    h.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    h.extend(2u16.to_le_bytes()); // ET_EXEC
    h.extend(62u16.to_le_bytes()); // x86-64
    h.extend(1u32.to_le_bytes());
    h.extend((BASE + CODE_OFFSET).to_le_bytes()); // entry
    h.extend(64u64.to_le_bytes()); // phoff
    h.extend(0u64.to_le_bytes()); // shoff
    h.extend(0u32.to_le_bytes());
    h.extend(64u16.to_le_bytes());
    h.extend(56u16.to_le_bytes());
    h.extend(1u16.to_le_bytes());
    h.extend([0u8; 6]);
    h.extend(1u32.to_le_bytes()); // PT_LOAD
    h.extend(7u32.to_le_bytes()); // RWX
    h.extend(0u64.to_le_bytes()); // offset
    h.extend(BASE.to_le_bytes()); // vaddr
    h.extend(BASE.to_le_bytes()); // paddr
    h.extend(size.to_le_bytes());
    h.extend(size.to_le_bytes());
    h.extend(0x1000u64.to_le_bytes());
    put(0, &h);
    put(CODE_OFFSET as usize, code);
    put(INPUT_OFFSET as usize, &input);
    f
}

/// One AP's start as the guest timed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApStart {
    /// VP index (= APIC id).
    pub vp: u32,
    /// TSC ticks from the request to the AP's first instruction at the 64-bit
    /// entry; `None` for a timeout.
    pub ticks: Option<u64>,
    /// INIT/SIPI only: ticks from the request to the AP's first (real-mode)
    /// instruction, before its trampoline reached long mode.
    pub first_ticks: Option<u64>,
}

/// What the guest printed: each AP's start, and the ticks for all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Per AP, in start order.
    pub aps: Vec<ApStart>,
    /// From the first request to the last arrival.
    pub total: Option<u64>,
    /// A refused hypercall: (VP, HV_STATUS).
    pub refused: Option<(u32, u16)>,
    /// `h` only: CPUID 0x40000001 EAX, the interface signature.
    pub signature: Option<u32>,
}

/// Parses the guest's serial output.
pub fn parse(out: &str) -> Report {
    let mut r = Report {
        aps: vec![],
        total: None,
        refused: None,
        signature: None,
    };
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["HVKVM-AP", vp, t, rest @ ..] => {
                if let Ok(vp) = u32::from_str_radix(vp, 16) {
                    r.aps.push(ApStart {
                        vp,
                        ticks: u64::from_str_radix(t, 16).ok(),
                        first_ticks: rest.first().and_then(|f| u64::from_str_radix(f, 16).ok()),
                    });
                }
            }
            ["HVKVM-SIG", s] => r.signature = u32::from_str_radix(s, 16).ok(),
            ["HVKVM-APS", t] => r.total = u64::from_str_radix(t, 16).ok(),
            ["HVKVM-HCFAIL", vp, s] => {
                if let (Ok(vp), Ok(s)) = (u32::from_str_radix(vp, 16), u16::from_str_radix(s, 16)) {
                    r.refused = Some((vp, s));
                }
            }
            _ => {}
        }
    }
    r
}

/// The arguments that boot the guest at `path` with `vcpus` vCPUs on `path_kind`
/// (`m`, `h` or `s`); with `settle` the guest waits about 0.1 s before its first
/// start, so the VMM has created its VPs (as by the time an OS starts its APs).
pub fn args(path: &str, kind: char, vcpus: u32, settle: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "--kernel",
        path,
        "--vcpus",
        &vcpus.to_string(),
        "--memory",
        "256M",
        "--cmdline",
        &format!("{kind}{vcpus:02}{}", if settle { "w" } else { "" }),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match kind {
        'h' => a.extend(["--hyperv".into(), "vtl2".into()]),
        's' => a.extend(["--ap-start".into(), "init-sipi".into()]),
        _ => {}
    }
    a
}
