//! Virtual Secure Mode on the real `/dev/kvm`: a guest of this test's own that
//! enables VTL 1, enters it with HvCallVtlCall through the hypercall page and
//! comes back with HvCallVtlReturn, checking what the TLFS says each VTL keeps
//! and shares ("Virtual Secure Mode": "VTL Entry and Exit", "Virtual
//! Processor State Isolation", the VSM registers; HvCallEnablePartitionVtl,
//! HvCallEnableVpVtl, HvCallVtlCall, HvCallVtlReturn). VTL 1 runs in a KVM VM
//! of its own, on the same VP thread.

mod common;

use common::*;
use hv_defs::vsm::{VsmCodePageOffsets, VsmPartitionStatus};
use hv_defs::{EnableVpVtlInput, HvError, HvStatus, InitialVpContext, PartitionId, VpIndex, Vtl};
use hv_partition::Partition;
use hv_regs::HvRegisterName;
use vm_memory::{Bytes, GuestAddress};
use zerocopy::IntoBytes;

/// VTL 1's code, stack, GDT copy and PML4 copy; its hypercall and assist pages.
const VTL1_CODE: u64 = 0x30000;
const VTL1_STACK: u64 = 0x2F000;
const VTL1_GDT: u64 = 0x8800;
const VTL1_PML4: u64 = 0x9800;
const VTL1_HYPERCALL: u64 = 0x6000;
const VTL1_ASSIST: u64 = 0x50000;
const IDTR: u64 = 0x2FF0;
const IDT: u64 = 0x3000;
/// The VSM configuration registers' hypercall inputs (0x40 apart) and, at
/// +0x800, their outputs.
const CONFIG_INPUTS: u64 = DATA + 0x2000;
/// A second PML4 (the same mappings) VTL 1 gives VTL 0.
const ALT_PML4: u64 = 0x4E000;
/// The guest's #UD handler (in VTL 0's code blob).
const UD_HANDLER: u64 = CODE + 0x800;

std::arch::global_asm!(
    r#"
    .pushsection .rodata.hvkvm_vsm_guest, "a"
    // A memory-form hypercall through `page`; its status to `port`.
    .macro hvcall page, control, input, output, port
    mov rcx, \control
    mov edx, \input
    mov r8d, \output
    mov eax, \page
    call rax
    out \port, eax
    .endm
    .globl hvkvm_vsm_vtl0_start
hvkvm_vsm_vtl0_start:
    .code64
    lidt [{idtr}]
    // An MTRR (IA32_MTRR_PHYSBASE1: 256 MiB, write-protect) before VTL 1
    // exists.
    mov ecx, 0x202
    mov eax, 0x10000005
    xor edx, edx
    wrmsr
    // The guest OS id and VTL 0's hypercall page.
    mov ecx, 0x40000000
    mov eax, 1
    mov edx, 0x81000000
    wrmsr
    mov ecx, 0x40000001
    mov eax, {hc0} + 1
    xor edx, edx
    wrmsr
    // Discovery: CPUID 0x40000003 EBX (privileges).
    mov eax, 0x40000003
    xor ecx, ecx
    cpuid
    mov eax, ebx
    out 0x30, eax
    // GetVpRegisters of the four VSM registers (rep 4).
    mov rcx, 0x0000000400000050
    mov edx, {data}
    mov r8d, {data} + 0x1000
    mov eax, {hc0}
    call rax
    out 0x31, eax
    // EnableVpVtl(self, 1) before the partition has VTL 1.
    mov ecx, 0x0F
    mov edx, {data} + 0x100
    xor r8d, r8d
    mov eax, {hc0}
    call rax
    out 0x32, eax
    // EnablePartitionVtl(1) with EnableMbec.
    mov ecx, 0x0D
    mov edx, {data} + 0x200
    xor r8d, r8d
    mov eax, {hc0}
    call rax
    out 0x33, eax
    // A VTL call with no higher VTL enabled: #UD (the handler reports 6 on
    // port 0x3F and returns past the call).
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    // EnablePartitionVtl(1), fast: RDX = partition, R8 = VTL and flags.
    mov ecx, 0x1000D
    mov rdx, -1
    mov r8d, 1
    mov eax, {hc0}
    call rax
    out 0x34, eax
    mov ecx, 0x1000D
    mov rdx, -1
    mov r8d, 1
    mov eax, {hc0}
    call rax
    out 0x35, eax
    // VsmPartitionConfig has no VTL 0 instance.
    hvcall {hc0}, 0x0000000100000050, {cfg}, {cfg} + 0x800, 0x39
    // EnableVpVtl(self, 1, VTL 1's context).
    mov ecx, 0x0F
    mov edx, {data} + 0x100
    xor r8d, r8d
    mov eax, {hc0}
    call rax
    out 0x36, eax
    mov ecx, 0x0F
    mov edx, {data} + 0x100
    xor r8d, r8d
    mov eax, {hc0}
    call rax
    out 0x37, eax
    // GetVpRegisters naming VTL 1 (above the caller's): ACCESS_DENIED.
    mov rcx, 0x0000000100000050
    mov edx, {data} + 0x400
    mov r8d, {data} + 0x1300
    mov eax, {hc0}
    call rax
    out 0x38, eax
    // A VTL return from VTL 0: #UD.
    xor ecx, ecx
    mov eax, {hc0} + 0x20
    call rax
    // A VTL call with a reserved control bit: #UD.
    mov ecx, 1
    mov eax, {hc0} + 0x10
    call rax
    // The VTL call: shared and private state set first.
    mov ecx, 0xC0000082
    mov eax, 0xAAAA0000
    xor edx, edx
    wrmsr
    mov ecx, 0xC0000102
    mov eax, 0xAAAA0102
    xor edx, edx
    wrmsr
    mov rax, 0x400
    mov dr7, rax
    xor eax, eax
    mov dr0, rax
    mov rbx, 0x1111
    mov rdx, 0x3333
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    // Back in VTL 0 after VTL 1's non-fast return.
    out 0x40, eax
    mov eax, ecx
    out 0x41, eax
    mov eax, ebx
    out 0x42, eax
    mov eax, edx
    out 0x43, eax
    mov ecx, 0xC0000082
    rdmsr
    out 0x45, eax
    mov rax, cr3
    out 0x46, eax
    mov rax, cr2
    out 0x47, eax
    mov ecx, 0x200
    rdmsr
    out 0x4F, eax
    // Private: KERNEL_GS_BASE, DR7, GDTR, IDTR; shared: DR0.
    mov ecx, 0xC0000102
    rdmsr
    out 0x5C, eax
    mov rax, dr7
    out 0x5E, eax
    mov rax, dr0
    out 0x5F, eax
    sgdt [{data} + 0x1800]
    sidt [{data} + 0x1810]
    // The second VTL call resumes VTL 1 after its return sequence; it comes
    // back with a fast return.
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    out 0x48, eax
    mov eax, ebx
    out 0x49, eax
    // A third VTL call: VTL 1 moves VTL 0's RIP and CR3 and sets RBX.
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    // Not reached: VTL 1 moved the RIP.
    mov eax, 0xBAD
    out 0x4E, eax
    .globl hvkvm_vsm_vtl0_landing
hvkvm_vsm_vtl0_landing:
    mov eax, 1
    out 0x4B, eax
    mov rax, cr3
    out 0x4C, eax
    mov eax, ebx
    out 0x4D, eax
    out 0x1F, eax
2:  jmp 2b

    .balign 16
    .globl hvkvm_vsm_vtl0_end
hvkvm_vsm_vtl0_end:

    .globl hvkvm_vsm_ud_start
hvkvm_vsm_ud_start:
    mov eax, 6
    out 0x3F, eax
    iretq
    .globl hvkvm_vsm_ud_end
hvkvm_vsm_ud_end:

    .globl hvkvm_vsm_vtl1_start
hvkvm_vsm_vtl1_start:
    // First entry at the EnableVpVtl context's RIP.
    mov eax, 1
    out 0x50, eax
    mov rax, cr3
    out 0x51, eax
    // The VP's MTRRs, and one written in VTL 1 (PHYSBASE0: write-back).
    mov ecx, 0x202
    rdmsr
    out 0x5B, eax
    mov ecx, 0x200
    mov eax, 6
    xor edx, edx
    wrmsr
    // VTL 1's own guest OS id, hypercall page and VP assist page.
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
    // VsmVpStatus in VTL 1, then VTL 0's RIP, CR3 and LSTAR by input VTL.
    mov rcx, 0x0000000100000050
    mov edx, {data} + 0x300
    mov r8d, {data} + 0x1100
    mov eax, {hc1}
    call rax
    out 0x52, eax
    mov rcx, 0x0000000300000050
    mov edx, {data} + 0x380
    mov r8d, {data} + 0x1200
    mov eax, {hc1}
    call rax
    out 0x53, eax
    // What VTL 0 left in the shared registers.
    mov eax, ebx
    out 0x54, eax
    // VsmPartitionConfig and VsmVpSecureConfigVtl0 (inputs: see the test).
    hvcall {hc1}, 0x0000000100000051, {cfg} + 0x000, 0, 0x60
    hvcall {hc1}, 0x0000000100000051, {cfg} + 0x040, 0, 0x61
    hvcall {hc1}, 0x0000000100000051, {cfg} + 0x080, 0, 0x62
    hvcall {hc1}, 0x0000000100000051, {cfg} + 0x0C0, 0, 0x63
    hvcall {hc1}, 0x0000000100000051, {cfg} + 0x100, 0, 0x64
    hvcall {hc1}, 0x0000000100000050, {cfg} + 0x140, {cfg} + 0x800, 0x65
    hvcall {hc1}, 0x0000000100000051, {cfg} + 0x180, 0, 0x66
    hvcall {hc1}, 0x0000000100000051, {cfg} + 0x1C0, 0, 0x67
    hvcall {hc1}, 0x0000000100000051, {cfg} + 0x200, 0, 0x68
    hvcall {hc1}, 0x0000000100000051, {cfg} + 0x240, 0, 0x69
    hvcall {hc1}, 0x0000000100000050, {cfg} + 0x280, {cfg} + 0x810, 0x6A
    // Private state of VTL 1's own, and shared state for VTL 0.
    mov ecx, 0xC0000082
    mov eax, 0xBBBB0000
    xor edx, edx
    wrmsr
    mov ecx, 0xC0000102
    mov eax, 0xBBBB0102
    xor edx, edx
    wrmsr
    mov rax, 0x700
    mov dr7, rax
    mov rax, 0xD0D0000
    mov dr0, rax
    sgdt [{data} + 0x1820]
    sidt [{data} + 0x1830]
    mov rbx, 0x2222
    mov rdx, 0x4444
    mov rsi, 0x7000
    mov cr2, rsi
    // A non-fast return: VTL 0's RAX and RCX from the control area.
    mov qword ptr [{assist} + 16], 0x7777
    mov qword ptr [{assist} + 24], 0x8888
    xor ecx, ecx
    mov eax, {hc1} + 0x20
    call rax
    // The next VTL call resumes here, after the return sequence.
    mov eax, dword ptr [{assist} + 8]
    out 0x56, eax
    // The VTL return released VTL 1's TLB lock on VTL 0.
    hvcall {hc1}, 0x0000000100000050, {cfg} + 0x280, {cfg} + 0x820, 0x6B
    mov ecx, 0xC0000082
    rdmsr
    out 0x57, eax
    mov rbx, 0x5555
    // A fast return: VTL 0 keeps RAX and RCX as they are at the return.
    mov ecx, 1
    mov eax, {hc1} + 0x20
    call rax
    // The third call: VTL 0's RIP, CR3 (private) and RBX (shared) written
    // by input VTL, VTL 0's RAX read (shared: VTL 1's own).
    hvcall {hc1}, 0x0000000300000051, {data} + 0x500, 0, 0x58
    hvcall {hc1}, 0x0000000100000050, {data} + 0x580, {data} + 0x1500, 0x59
    mov eax, ebx
    out 0x5A, eax
    mov ecx, 1
    mov eax, {hc1} + 0x20
    call rax
3:  jmp 3b
    .globl hvkvm_vsm_vtl1_end
hvkvm_vsm_vtl1_end:
    .popsection
"#,
    idtr = const IDTR,
    hc0 = const HYPERCALL_PAGE,
    hc1 = const VTL1_HYPERCALL,
    data = const DATA,
    assist = const VTL1_ASSIST,
    cfg = const CONFIG_INPUTS,
);

extern "C" {
    static hvkvm_vsm_vtl0_start: u8;
    static hvkvm_vsm_vtl0_end: u8;
    static hvkvm_vsm_vtl0_landing: u8;
    static hvkvm_vsm_ud_start: u8;
    static hvkvm_vsm_ud_end: u8;
    static hvkvm_vsm_vtl1_start: u8;
    static hvkvm_vsm_vtl1_end: u8;
}

fn setup_guest(p: &Partition) {
    let (vtl0, ud, vtl1) =
        // SAFETY: the statics are symbols the global_asm! above defines (read
        // only by address here); `blob` reads the bytes between them.
        unsafe {
        (
            blob(&hvkvm_vsm_vtl0_start, &hvkvm_vsm_vtl0_end),
            blob(&hvkvm_vsm_ud_start, &hvkvm_vsm_ud_end),
            blob(&hvkvm_vsm_vtl1_start, &hvkvm_vsm_vtl1_end),
        )
    };
    assert!(vtl0.len() < 0x800);
    put(p, CODE, vtl0);
    put(p, UD_HANDLER, ud);
    put(p, VTL1_CODE, vtl1);
    // VTL 0's IDT: a #UD gate to the handler.
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(UD_HANDLER as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&0x10u16.to_le_bytes());
    gate[5] = 0x8E;
    gate[6..8].copy_from_slice(&((UD_HANDLER >> 16) as u16).to_le_bytes());
    put(p, IDT + 6 * 16, &gate);
    let mut idtr = 0xFFFu16.to_le_bytes().to_vec();
    idtr.extend(IDT.to_le_bytes());
    put(p, IDTR, &idtr);
    // VTL 1's own GDT and PML4 (copies over the same page tables).
    let mut gdt = [0u8; 32];
    p.memory().read_slice(&mut gdt, GuestAddress(GDT)).unwrap();
    put(p, VTL1_GDT, &gdt);
    put(p, VTL1_PML4, &(PDPT | 3).to_le_bytes());
    // Hypercall inputs (see the guest).
    put(
        p,
        DATA,
        &registers_input(0, &[0x000D_0003, 0x000D_0004, 0x000D_0006, 0x000D_0002]),
    );
    let ctx = InitialVpContext::long_mode(VTL1_CODE, VTL1_STACK, VTL1_PML4)
        .with_gdt(VTL1_GDT, 0x1F)
        .with_tss(TSS);
    let enable = EnableVpVtlInput {
        partition_id: PartitionId::SELF,
        vp_index: VpIndex::SELF,
        target_vtl: Vtl::VTL1,
        rsvdz: [0; 3],
        vp_vtl_context: ctx,
    };
    put(p, DATA + 0x100, enable.as_bytes());
    let mut mbec = PartitionId::SELF.0.to_le_bytes().to_vec();
    mbec.extend([1u8, 1, 0, 0, 0, 0, 0, 0]);
    put(p, DATA + 0x200, &mbec);
    put(p, DATA + 0x300, &registers_input(0, &[0x000D_0003]));
    // RIP, CR3, LSTAR of VTL 0 (HV_INPUT_VTL: use-target bit 4, VTL 0).
    put(
        p,
        DATA + 0x380,
        &registers_input(0x10, &[0x0002_0010, 0x0004_0002, 0x0008_0009]),
    );
    put(p, DATA + 0x400, &registers_input(0x11, &[0x000D_0003]));
    // VTL 0's RIP, CR3 and RBX set by input VTL 0 (HV_INPUT_VTL 0x10), then
    // its RAX read.
    // SAFETY: symbols the global_asm! above defines, read by address only.
    let landing = unsafe {
        (&hvkvm_vsm_vtl0_landing as *const u8 as u64) - (&hvkvm_vsm_vtl0_start as *const u8 as u64)
    };
    let set = set_registers_input(
        0x10,
        &[
            (HvRegisterName::RIP, (CODE + landing).into()),
            (HvRegisterName::CR3, ALT_PML4.into()),
            (HvRegisterName::RBX, 0xB0B0u64.into()),
        ],
    );
    put(p, DATA + 0x500, &set);
    put(p, DATA + 0x580, &registers_input(0x10, &[0x0002_0000]));
    put(p, ALT_PML4, &(PDPT | 3).to_le_bytes());
    // VSM configuration (TLFS "Partition Configuration", "Configuring Lower
    // VTLs"): one SetVpRegisters element or GetVpRegisters name each.
    const CONFIG: u32 = 0x000D_0007;
    const SECURE_VTL0: u32 = 0x000D_0010;
    const SECURE_VTL1: u32 = 0x000D_0011;
    let set = |vtl: u8, name: u32, value: u64| {
        set_registers_input(vtl, &[(HvRegisterName(name), value.into())])
    };
    let inputs: [Vec<u8>; 11] = [
        // EnableVtlProtection with the full-access default mask.
        set(0, CONFIG, 0x1F),
        // EnableVtlProtection cleared again.
        set(0, CONFIG, 0),
        // The default mask changed once protections are enabled.
        set(0, CONFIG, 0x1 | (0x3 << 1)),
        // A reserved bit (bit 7: InterceptAcceptance, not offered).
        set(0, CONFIG, 0x1F | (1 << 7)),
        // DenyLowerVtlStartup: not offered (VsmCapabilities bit 17 clear).
        set(0, CONFIG, 0x1F | (1 << 6)),
        registers_input(0, &[CONFIG]),
        // VTL 0's instance (input VTL 0): there is none.
        set(0x10, CONFIG, 0x1F),
        // VTL 1's TLB lock on VTL 0.
        set(0, SECURE_VTL0, 2),
        // MbecEnabled: no MBEC.
        set(0, SECURE_VTL0, 1),
        // A configuration of VTL 1 held by VTL 1 itself.
        set(0, SECURE_VTL1, 0),
        registers_input(0, &[SECURE_VTL0]),
    ];
    for (i, b) in inputs.iter().enumerate() {
        put(p, CONFIG_INPUTS + 0x40 * i as u64, b);
    }
    put(p, CONFIG_INPUTS + 0x800, &[0xA5; 0x30]);
}

#[test]
fn vtl1_is_entered_by_vtl_call_and_keeps_its_own_state() {
    let p = vsm_partition(2, Vtl::VTL0, Vtl::VTL2);
    setup_guest(&p);
    let got = run_bsp_reports(&p, &bsp_registers(CODE, stack(0)));
    let port = |n: u16| writes_to(&got, n);
    let one = |n: u16| only(&got, n);
    let status = |n: u16| HvStatus(one(n) as u16);
    // Discovery (TLFS "Feature Discovery": AccessVsm bit 16, AccessVpRegisters
    // bit 17 of CPUID 0x40000003 EBX).
    assert_eq!(one(0x30) & (3 << 16), 3 << 16);
    assert_eq!(status(0x31), HvStatus::SUCCESS);
    // VsmVpStatus: ActiveVtl 0, EnabledVtlSet {0} (TLFS VSM registers).
    assert_eq!(read_u64(&p, DATA + 0x1000), 1 << 16);
    // VsmPartitionStatus: EnabledVtlSet {0}, MaximumVtl 2.
    assert_eq!(
        read_u64(&p, DATA + 0x1010),
        VsmPartitionStatus::new(1, Vtl::VTL2).0
    );
    // VsmCapabilities: no Dr6Shared, no MBEC VTLs; the intercept page
    // (bit 27, hvdef/Linux numbering).
    assert_eq!(read_u64(&p, DATA + 0x1020), 1 << 27);
    // VsmCodePageOffsets: inside the page, the call's before the return's.
    let o = VsmCodePageOffsets(read_u64(&p, DATA + 0x1030));
    assert_eq!((o.vtl_call(), o.vtl_return()), (0x10, 0x20));
    // HvCallEnableVpVtl: "To enable a VTL on a VP, it must first be enabled for
    // the partition".
    assert_eq!(status(0x32), HvError::INVALID_PARAMETER.status());
    // EnableMbec: MBEC cannot be expressed on stock KVM.
    assert_eq!(status(0x33), HvError::INVALID_PARAMETER.status());
    // EnablePartitionVtl(1) fast, then again.
    assert_eq!(status(0x34), HvStatus::SUCCESS);
    assert_eq!(status(0x35), HvError::VTL_ALREADY_ENABLED.status());
    // EnableVpVtl, then again ("will fail if called to enable a VTL that is
    // already enabled for a VP").
    assert_eq!(status(0x36), HvStatus::SUCCESS);
    assert_eq!(status(0x37), HvError::VTL_ALREADY_ENABLED.status());
    // A lower VTL cannot read a higher VTL's state.
    assert_eq!(status(0x38), HvError::ACCESS_DENIED.status());
    // #UD (TLFS HvCallVtlCall / HvCallVtlReturn): a call with no higher VTL
    // enabled, a return from VTL 0, a reserved control bit.
    assert_eq!(port(0x3F), vec![6, 6, 6]);
    // VTL 1's first entry at its context's RIP, with its own CR3.
    assert_eq!(one(0x50), 1);
    assert_eq!(one(0x51) as u64, VTL1_PML4);
    assert_eq!(status(0x52), HvStatus::SUCCESS);
    // VsmVpStatus inside VTL 1: ActiveVtl 1, EnabledVtlSet {0, 1}.
    assert_eq!(read_u64(&p, DATA + 0x1100), 1 | (0b11 << 16));
    // VTL 0's private state read from VTL 1 by input VTL: RIP at the call
    // sequence's RET, VTL 0's CR3 and LSTAR.
    assert_eq!(status(0x53), HvStatus::SUCCESS);
    assert_eq!(read_u64(&p, DATA + 0x1200), HYPERCALL_PAGE + 0x1A);
    assert_eq!(read_u64(&p, DATA + 0x1210), PML4);
    assert_eq!(read_u64(&p, DATA + 0x1220), 0xAAAA_0000);
    // Shared: the GPRs and XMM registers VTL 0 set.
    assert_eq!(one(0x54), 0x1111);
    // HvRegisterVsmPartitionConfig: "one instance of this register for each
    // VTL (greater than 0)"; EnableVtlProtection "is write-once"; the default
    // mask "cannot be changed once it is set"; RsvdZ bits; what this crate
    // cannot honour is INVALID_REGISTER_VALUE (choices.rs).
    assert_eq!(status(0x39), HvError::INVALID_PARAMETER.status());
    assert_eq!(status(0x60), HvStatus::SUCCESS);
    assert_eq!(status(0x61), HvError::INVALID_REGISTER_VALUE.status());
    assert_eq!(status(0x62), HvError::INVALID_REGISTER_VALUE.status());
    assert_eq!(status(0x63), HvError::INVALID_PARAMETER.status());
    assert_eq!(status(0x64), HvError::INVALID_REGISTER_VALUE.status());
    assert_eq!(status(0x65), HvStatus::SUCCESS);
    assert_eq!(read_u64(&p, CONFIG_INPUTS + 0x800), 0x1F);
    assert_eq!(status(0x66), HvError::INVALID_PARAMETER.status());
    // HvRegisterVsmVpSecureConfigVtl0: TlbLocked kept, MbecEnabled refused,
    // an instance for a VTL not below the holder's refused.
    assert_eq!(status(0x67), HvStatus::SUCCESS);
    assert_eq!(status(0x68), HvError::INVALID_REGISTER_VALUE.status());
    assert_eq!(status(0x69), HvError::INVALID_PARAMETER.status());
    assert_eq!(status(0x6A), HvStatus::SUCCESS);
    assert_eq!(read_u64(&p, CONFIG_INPUTS + 0x810), 2);
    // "once a VP returns to a lower VTL, it releases all TLB locks which it
    // holds at the time".
    assert_eq!(status(0x6B), HvStatus::SUCCESS);
    assert_eq!(read_u64(&p, CONFIG_INPUTS + 0x820), 0);
    // Back in VTL 0 after a non-fast return: RAX and RCX from VTL 1's control
    // area; RBX, RDX, XMM1 and CR2 as VTL 1 left them (shared); LSTAR and CR3
    // VTL 0's own (private).
    assert_eq!(one(0x40), 0x7777);
    assert_eq!(one(0x41), 0x8888);
    assert_eq!(one(0x42), 0x2222);
    assert_eq!(one(0x43), 0x4444);
    assert_eq!(one(0x45), 0xAAAA_0000);
    assert_eq!(one(0x46) as u64, PML4);
    assert_eq!(one(0x47), 0x7000);
    // MTRRs are shared (TLFS "Virtual Processor State Isolation"): VTL 1
    // starts with VTL 0's, and VTL 0 sees the one VTL 1 wrote.
    assert_eq!(one(0x5B), 0x1000_0005);
    assert_eq!(one(0x4F), 6);
    // Private per VTL (TLFS "Virtual Processor State Isolation"): VTL 0's
    // KERNEL_GS_BASE, DR7, GDTR and IDTR survive what VTL 1 set; DR0-DR3 are
    // shared. (TSC_AUX: `fpu_state_crosses_vtl_switches_and_tsc_aux_stays`, as
    // PVM's guest CPUID has no RDTSCP.)
    assert_eq!(one(0x5C), 0xAAAA_0102);
    assert_eq!(one(0x5E), 0x400);
    assert_eq!(one(0x5F), 0xD0D_0000);
    let table = |gpa: u64| -> (u16, u64) {
        let mut b = [0u8; 10];
        p.memory().read_slice(&mut b, GuestAddress(gpa)).unwrap();
        (
            u16::from_le_bytes([b[0], b[1]]),
            u64::from_le_bytes(b[2..10].try_into().unwrap()),
        )
    };
    assert_eq!(table(DATA + 0x1800), (0x1F, GDT));
    assert_eq!(table(DATA + 0x1810), (0xFFF, IDT));
    // VTL 1 ran on its EnableVpVtl context's GDT, with no IDT of VTL 0's.
    assert_eq!(table(DATA + 0x1820), (0x1F, VTL1_GDT));
    assert_ne!(table(DATA + 0x1830).1, IDT);
    // The second call resumed VTL 1 after its return sequence, with entry
    // reason 1 (VTL call) in its VP assist page; its LSTAR kept.
    assert_eq!(one(0x56), 1);
    assert_eq!(one(0x57), 0xBBBB_0000);
    // A fast return leaves RAX as it was at the return (the sequence's
    // control input, 1), not the control area's 0x7777.
    assert_eq!(one(0x48), 1);
    assert_eq!(one(0x49), 0x5555);
    // SetVpRegisters by input VTL from VTL 1: VTL 0's private RIP and CR3
    // take effect at the return (VTL 0 resumes at the new RIP); RBX, shared,
    // is the one RBX of the VP, seen at once in VTL 1 and after the return in
    // VTL 0; VTL 0's RAX read from VTL 1 is VTL 1's (TLFS "Virtual Processor
    // State Isolation": shared registers).
    assert_eq!(status(0x58), HvStatus::SUCCESS);
    assert_eq!(status(0x59), HvStatus::SUCCESS);
    assert_eq!(read_u64(&p, DATA + 0x1500), VTL1_HYPERCALL);
    assert_eq!(one(0x5A), 0xB0B0);
    assert!(
        port(0x4E).is_empty(),
        "VTL 0 resumed at its old RIP: {got:x?}"
    );
    assert_eq!(one(0x4B), 1);
    assert_eq!(one(0x4C) as u64, ALT_PML4);
    assert_eq!(one(0x4D), 0xB0B0);
}

/// The x87/SSE state is shared between VTLs (TLFS "Virtual Processor State
/// Isolation"): set by the host in one VTL's vCPU between exits (the guest
/// code stays free of SSE, which PVM's instruction emulator cannot run), it
/// is what the other VTL's vCPU holds after the switch. Through KVM's XSAVE
/// image (KVM_SET_FPU does not mark the SSE component in use, so an XSAVE
/// read would see it in its initial state). TSC_AUX, private, the same way
/// (PVM's guest CPUID has no RDTSCP, so the guest cannot write it).
#[test]
fn fpu_state_crosses_vtl_switches_and_tsc_aux_stays() {
    use hv_partition::{Access, VpExit};
    // Dword offsets in the XSAVE image (Intel SDM vol. 1 13.4): MXCSR at byte
    // 24, XMM0 at 160, XMM1 at 176, XSTATE_BV at 512.
    const MXCSR: usize = 6;
    const XMM0: usize = 40;
    const XMM1: usize = 44;
    const XSTATE_BV: usize = 128;
    let p = vsm_partition(2, Vtl::VTL0, Vtl::VTL2);
    setup_guest(&p);
    let mut v = p.create_vp(vp(0)).unwrap();
    v.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();
    let mut seen = vec![];
    loop {
        let (port, tagged) = match v.run() {
            // The exit's VTL, read while the exit holds the VP.
            VpExit::IoPortAccess {
                port,
                access: Access::Write(_),
            } => (port, p.active_vtl(vp(0)).unwrap()),
            other => panic!("unexpected exit {other:?}"),
        };
        let vtl = v.active_vtl();
        assert_eq!(tagged, vtl);
        let aux = v.get_registers(&[HvRegisterName::TSC_AUX]).unwrap()[0].low;
        match port {
            0x38 => v.set_registers(&[(HvRegisterName::TSC_AUX, 0xA3u64.into())]),
            0x50 => v.set_registers(&[(HvRegisterName::TSC_AUX, 0xB3u64.into())]),
            _ => Ok(()),
        }
        .unwrap();
        let vcpu = v.vcpu_mut();
        let Ok(mut x) = vcpu.get_xsave() else {
            panic!("KVM_GET_XSAVE: this host's KVM has no XSAVE image to check");
        };
        let set = |x: &mut hv_partition::kvm_bindings::kvm_xsave, at: usize, b: u32| {
            x.region[at..at + 4].copy_from_slice(&[b; 4]);
            // The x87 and SSE components in use.
            x.region[XSTATE_BV] |= 0b11;
        };
        let look = |x: &hv_partition::kvm_bindings::kvm_xsave| {
            (vtl, x.region[XMM0], x.region[XMM1], x.region[MXCSR], aux)
        };
        match port {
            // VTL 0, just before its first VTL call.
            0x38 => {
                set(&mut x, XMM0, 0xA0A0_A0A0);
                set(&mut x, XMM1, 0xA1A1_A1A1);
                // SAFETY: the image was read from this vCPU by KVM_GET_XSAVE.
                unsafe { vcpu.set_xsave(&x) }.unwrap();
            }
            // VTL 1's first entry.
            0x50 => {
                seen.push(look(&x));
                set(&mut x, XMM1, 0xB1B1_B1B1);
                x.region[MXCSR] = 0x1F00;
                // SAFETY: as above.
                unsafe { vcpu.set_xsave(&x) }.unwrap();
            }
            // Back in VTL 0 after the non-fast return.
            0x40 => seen.push(look(&x)),
            DONE => break,
            _ => {}
        }
    }
    assert_eq!(
        seen,
        vec![
            (Vtl::VTL1, 0xA0A0_A0A0, 0xA1A1_A1A1, 0x1F80, 0),
            (Vtl::VTL0, 0xA0A0_A0A0, 0xB1B1_B1B1, 0x1F00, 0xA3),
        ]
    );
}
