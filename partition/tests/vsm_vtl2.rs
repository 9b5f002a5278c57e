//! A partition booted in VTL 2 (the paravisor layout) has VTL 0 all along
//! (TLFS "Virtual Secure Mode": VTL 0 is always enabled): VTL 2 reads and
//! writes VTL 0's private registers by input VTL, returns into it with
//! HvCallVtlReturn, and VTL 0 calls back with HvCallVtlCall, on the real
//! `/dev/kvm`. VTL 0's vCPU is made at its first use.

mod common;

use common::*;
use hv_defs::{HvStatus, Vtl};

const VTL0_CODE: u64 = 0x30000;
const VTL0_STACK: u64 = 0x2F000;
/// VTL 0's own hypercall page (VTL 2's is [`HYPERCALL_PAGE`]).
const VTL0_HYPERCALL: u64 = 0x6000;

std::arch::global_asm!(
    r#"
    .pushsection .rodata.hvkvm_vsm_vtl2_guest, "a"
    .macro hvcall2 page, control, input, output, port
    mov rcx, \control
    mov edx, \input
    mov r8d, \output
    mov eax, \page
    call rax
    out \port, eax
    .endm
    .globl hvkvm_vsm_vtl2_start
hvkvm_vsm_vtl2_start:
    .code64
    mov ecx, 0x40000000
    mov eax, 1
    mov edx, 0x81000000
    wrmsr
    mov ecx, 0x40000001
    mov eax, {hc2} + 1
    xor edx, edx
    wrmsr
    // VTL 0's RIP by input VTL 0: its reset state.
    hvcall2 {hc2}, 0x0000000100000050, {data}, {data} + 0x800, 0x30
    // VTL 0's context by input VTL 0 (the element count is at +0xFF8).
    mov rcx, qword ptr [{data} + 0xFF8]
    mov edx, {data} + 0x100
    xor r8d, r8d
    mov eax, {hc2}
    call rax
    out 0x31, eax
    // Into VTL 0 with a fast VTL return; RBX is shared.
    mov rbx, 0x2B2B
    mov ecx, 1
    mov eax, {hc2} + 0x20
    call rax
    // VTL 0's VTL call resumes VTL 2 here.
    mov eax, ebx
    out 0x33, eax
    out 0x1F, eax
2:  jmp 2b
    .globl hvkvm_vsm_vtl2_end
hvkvm_vsm_vtl2_end:

    .globl hvkvm_vsm_vtl2_vtl0_start
hvkvm_vsm_vtl2_vtl0_start:
    mov eax, ebx
    out 0x40, eax
    mov ecx, 0x40000000
    mov eax, 1
    mov edx, 0x81000000
    wrmsr
    mov ecx, 0x40000001
    mov eax, {hc0} + 1
    xor edx, edx
    wrmsr
    // VsmVpStatus as VTL 0 reads it.
    hvcall2 {hc0}, 0x0000000100000050, {data} + 0x80, {data} + 0x810, 0x41
    mov ebx, 0x0B0B
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
3:  jmp 3b
    .globl hvkvm_vsm_vtl2_vtl0_end
hvkvm_vsm_vtl2_vtl0_end:
    .popsection
"#,
    hc2 = const HYPERCALL_PAGE,
    hc0 = const VTL0_HYPERCALL,
    data = const DATA,
);

extern "C" {
    static hvkvm_vsm_vtl2_start: u8;
    static hvkvm_vsm_vtl2_end: u8;
    static hvkvm_vsm_vtl2_vtl0_start: u8;
    static hvkvm_vsm_vtl2_vtl0_end: u8;
}

#[test]
fn vtl2_returns_into_vtl0_and_vtl0_calls_back() {
    let p = vsm_partition(1, Vtl::VTL2, Vtl::VTL2);
    let put = |gpa: u64, b: &[u8]| put(&p, gpa, b);
    // SAFETY: symbols of the global_asm! above, read by address.
    let (vtl2, vtl0) = unsafe {
        (
            blob(&hvkvm_vsm_vtl2_start, &hvkvm_vsm_vtl2_end),
            blob(&hvkvm_vsm_vtl2_vtl0_start, &hvkvm_vsm_vtl2_vtl0_end),
        )
    };
    put(CODE, vtl2);
    put(VTL0_CODE, vtl0);
    // GetVpRegisters(input VTL 0: RIP); GetVpRegisters(VsmVpStatus).
    put(DATA, &registers_input(0x10, &[0x0002_0010]));
    put(DATA + 0x80, &registers_input(0, &[0x000D_0003]));
    // SetVpRegisters(input VTL 0) of a 64-bit context, the order a batch
    // write takes.
    let regs = hv_regs::context_registers(&ctx64(VTL0_CODE, VTL0_STACK));
    let set = set_registers_input(0x10, &regs);
    assert!(set.len() <= 0xEF8, "the input fits before the count");
    put(DATA + 0x100, &set);
    let control = 0x51u64 | ((regs.len() as u64) << 32);
    put(DATA + 0xFF8, &control.to_le_bytes());

    let got = run_bsp_reports(&p, &bsp_registers(CODE, stack(0)));
    let one = |n: u16| only(&got, n);
    let value = |gpa: u64| read_u64(&p, gpa);
    // VTL 0's private RIP, read from VTL 2: the architectural reset value.
    assert_eq!(HvStatus(one(0x30) as u16), HvStatus::SUCCESS);
    assert_eq!(value(DATA + 0x800), 0xFFF0);
    assert_eq!(HvStatus(one(0x31) as u16), HvStatus::SUCCESS, "{got:x?}");
    // VTL 0 runs at the context VTL 2 gave it, with VTL 2's RBX (shared).
    assert_eq!(one(0x40), 0x2B2B);
    // VsmVpStatus in VTL 0: ActiveVtl 0, EnabledVtlSet {0, 2}.
    assert_eq!(HvStatus(one(0x41) as u16), HvStatus::SUCCESS);
    assert_eq!(value(DATA + 0x810), 0b101 << 16);
    // VTL 0's VTL call enters VTL 2 after its return sequence, with RBX.
    assert_eq!(one(0x33), 0x0B0B);
    assert_eq!(p.active_vtl(vp(0)).unwrap(), Vtl::VTL2);
}
