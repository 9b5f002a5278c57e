//! Virtual Secure Mode from a 32-bit VTL 0, on the real `/dev/kvm`: the
//! x86 column of the TLFS VTL call convention ("VTL Call": the control input
//! in EDX:EAX, ECX reserved), the hypercall page's 32-bit sequences at the
//! offsets HvRegisterVsmCodePageOffsets gives a 32-bit caller, and a non-fast
//! VTL return from a 64-bit VTL 1 that restores EAX, ECX and EDX from the
//! VTL control area's x86 fields (HV_VP_VTL_CONTROL).

mod common;

use common::*;
use hv_defs::vsm::VsmCodePageOffsets;
use hv_defs::{EnableVpVtlInput, HvStatus, PartitionId, VpIndex, Vtl};
use zerocopy::IntoBytes;

const VTL1_CODE: u64 = 0x30000;
const VTL1_STACK: u64 = 0x2F000;
const VTL1_HYPERCALL: u64 = 0x6000;
const VTL1_ASSIST: u64 = 0x50000;

std::arch::global_asm!(
    r#"
    .pushsection .rodata.hvkvm_vsm32_guest, "a"
    .globl hvkvm_vsm32_vtl0_start
hvkvm_vsm32_vtl0_start:
    .code32
    mov ecx, 0x40000000
    mov eax, 1
    mov edx, 0x81000000
    wrmsr
    mov ecx, 0x40000001
    mov eax, {hc0} + 1
    xor edx, edx
    wrmsr
    mov ebp, {hc0}
    // GetVpRegisters(VsmCodePageOffsets), rep 1: EDX:EAX control, EBX:ECX
    // input, EDI:ESI output.
    mov edx, 1
    mov eax, 0x50
    xor ebx, ebx
    mov ecx, {data}
    xor edi, edi
    mov esi, {data} + 0x800
    call ebp
    out 0x30, eax
    // EnablePartitionVtl(1), then EnableVpVtl(self, 1, a 64-bit context).
    xor edx, edx
    mov eax, 0x0D
    xor ebx, ebx
    mov ecx, {data} + 0x40
    xor edi, edi
    xor esi, esi
    call ebp
    out 0x31, eax
    xor edx, edx
    mov eax, 0x0F
    xor ebx, ebx
    mov ecx, {data} + 0x100
    xor edi, edi
    xor esi, esi
    call ebp
    out 0x32, eax
    // The VTL call through the 32-bit sequence the register named.
    mov esi, dword ptr [{data} + 0x800]
    and esi, 0xFFF
    add esi, {hc0}
    xor edx, edx
    xor eax, eax
    call esi
    // After VTL 1's non-fast return: EAX, ECX, EDX from its control area.
    out 0x33, eax
    mov eax, ecx
    out 0x34, eax
    mov eax, edx
    out 0x35, eax
    out 0x1F, eax
2:  jmp 2b
    .globl hvkvm_vsm32_vtl0_end
hvkvm_vsm32_vtl0_end:

    .globl hvkvm_vsm32_vtl1_start
hvkvm_vsm32_vtl1_start:
    .code64
    mov eax, 1
    out 0x50, eax
    mov ecx, 0x40000000
    mov eax, 1
    mov edx, 0x81000000
    wrmsr
    mov ecx, 0x40000001
    mov eax, {hc1} + 1
    xor edx, edx
    wrmsr
    mov ecx, 0x40000073
    mov eax, {assist} + 1
    xor edx, edx
    wrmsr
    // VsmCodePageOffsets as VTL 1 (64-bit) reads it.
    mov rcx, 0x0000000100000050
    mov edx, {data}
    mov r8d, {data} + 0x810
    mov eax, {hc1}
    call rax
    out 0x51, eax
    mov dword ptr [{assist} + 16], 0x1111
    mov dword ptr [{assist} + 20], 0x2222
    mov dword ptr [{assist} + 24], 0x3333
    mov rdx, 0x4444
    xor ecx, ecx
    mov eax, {hc1} + 0x20
    call rax
3:  jmp 3b
    .globl hvkvm_vsm32_vtl1_end
hvkvm_vsm32_vtl1_end:
    .popsection
"#,
    hc0 = const HYPERCALL_PAGE,
    hc1 = const VTL1_HYPERCALL,
    data = const DATA,
    assist = const VTL1_ASSIST,
);

extern "C" {
    static hvkvm_vsm32_vtl0_start: u8;
    static hvkvm_vsm32_vtl0_end: u8;
    static hvkvm_vsm32_vtl1_start: u8;
    static hvkvm_vsm32_vtl1_end: u8;
}

#[test]
fn a_32_bit_vtl0_calls_vtl1_through_the_32_bit_sequences() {
    let p = vsm_partition(1, Vtl::VTL0, Vtl::VTL1);
    // SAFETY: symbols of the global_asm! above, read by address.
    let (vtl0, vtl1) = unsafe {
        (
            blob(&hvkvm_vsm32_vtl0_start, &hvkvm_vsm32_vtl0_end),
            blob(&hvkvm_vsm32_vtl1_start, &hvkvm_vsm32_vtl1_end),
        )
    };
    put(&p, CODE, vtl0);
    put(&p, VTL1_CODE, vtl1);
    put(&p, DATA, &registers_input(0, &[0x000D_0002]));
    let mut enable = PartitionId::SELF.0.to_le_bytes().to_vec();
    enable.extend([1u8, 0, 0, 0, 0, 0, 0, 0]);
    put(&p, DATA + 0x40, &enable);
    let ctx = ctx64(VTL1_CODE, VTL1_STACK);
    let input = EnableVpVtlInput {
        partition_id: PartitionId::SELF,
        vp_index: VpIndex::SELF,
        target_vtl: Vtl::VTL1,
        rsvdz: [0; 3],
        vp_vtl_context: ctx,
    };
    put(&p, DATA + 0x100, input.as_bytes());
    let ctx = protected_mode(p.memory(), CODE, stack(0));
    let got = run_bsp_reports(&p, &hv_regs::context_registers(&ctx));
    let one = |n: u16| only(&got, n);
    let value = |gpa: u64| read_u64(&p, gpa);
    for port in [0x30, 0x31, 0x32] {
        assert_eq!(HvStatus(one(port) as u16), HvStatus::SUCCESS, "{port:#x}");
    }
    // A 32-bit caller is given the 32-bit sequences, VTL 1 in long mode the
    // 64-bit ones; both inside the page and distinct.
    let o32 = VsmCodePageOffsets(value(DATA + 0x800));
    assert_eq!((o32.vtl_call(), o32.vtl_return()), (0x30, 0x40));
    assert_eq!(HvStatus(one(0x51) as u16), HvStatus::SUCCESS);
    let o64 = VsmCodePageOffsets(value(DATA + 0x810));
    assert_eq!((o64.vtl_call(), o64.vtl_return()), (0x10, 0x20));
    // VTL 1 entered at its context from the 32-bit call sequence.
    assert_eq!(one(0x50), 1);
    // HV_VP_VTL_CONTROL for a 32-bit lower VTL: VtlReturnX86Eax/Ecx/Edx.
    assert_eq!(one(0x33), 0x1111);
    assert_eq!(one(0x34), 0x2222);
    assert_eq!(one(0x35), 0x3333);
}
