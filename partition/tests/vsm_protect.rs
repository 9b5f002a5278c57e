//! VTL memory protections and intercepts on the real `/dev/kvm` (TLFS
//! "Virtual Secure Mode": "Memory Access Protections", "Secure Intercepts",
//! "VTL Entry and Exit"; HvCallModifyVtlProtectionMask; "SynIC Messages";
//! HV_X64_MEMORY_INTERCEPT_MESSAGE as Linux `hvhdk.h` lays it out).
//!
//! A guest of this test's own enables VTL 1, which turns on
//! EnableVtlProtection and its SynIC, checks the call's refusals, then makes
//! pages of VTL 0 inaccessible or read-only. VTL 0 reads, writes, executes,
//! `rep movsb`s from and `rep stosb`s into them; each access enters VTL 1
//! with a GpaIntercept message in its SIMP's SINT0 slot (entry reason 2), or,
//! once it set InterceptPage, in its VP assist page (entry reason 3). VTL 1
//! reports the message, checks that nothing was written, lifts the
//! protection and returns; the access is retried and succeeds.

mod common;

use common::*;
use hv_defs::{EnableVpVtlInput, HvError, HvStatus, InitialVpContext, PartitionId, VpIndex, Vtl};
use hv_partition::Partition;
use zerocopy::IntoBytes;

const VTL1_CODE: u64 = 0x30000;
const VTL1_STACK: u64 = 0x2F000;
const VTL1_GDT: u64 = 0x8800;
const VTL1_PML4: u64 = 0x9800;
const VTL1_HYPERCALL: u64 = 0x6000;
const VTL1_ASSIST: u64 = 0x50000;
const VTL1_SIMP: u64 = 0x51000;
/// ModifyVtlProtectionMask inputs, 0x40 apart.
const PROT: u64 = DATA + 0x2000;
/// SetVpRegisters inputs (VsmPartitionConfig), 0x40 apart.
const CFG: u64 = DATA + 0x3000;
/// The rep movsb destination.
const DST: u64 = DATA + 0x4000;
/// VTL 0 pages VTL 1 protects: read/written, executed, copied from,
/// stored into, a hypercall input page, and one for the partial call.
const P: u64 = 0x60000;
const X: u64 = 0x61000;
const Q: u64 = 0x62000;
const W: u64 = 0x63000;
const H: u64 = 0x64000;
/// A hypercall output page VTL 1 protects.
const O: u64 = 0x68000;
/// A page VTL 1 protects and VTL 0 maps its hypercall page over.
const P4: u64 = 0x69000;
const P3: u64 = 0x65000;
/// A GPA inside the GPA space that is not RAM (RAM is 4 MiB).
const NOT_RAM: u64 = 0x1000_0000;

std::arch::global_asm!(
    r#"
    .pushsection .rodata.hvkvm_vsmp_guest, "a"
    // The guest OS id, then the hypercall page at `page`.
    .macro hypercall_page page
    mov ecx, 0x40000000
    mov eax, 1
    mov edx, 0x81000000
    wrmsr
    mov ecx, 0x40000001
    mov eax, \page + 1
    xor edx, edx
    wrmsr
    .endm
    // VTL 1's VP assist page, its SIMP at `simp`, SCONTROL.
    .macro vtl1_pages simp
    mov ecx, 0x40000073
    mov eax, {assist} + 1
    wrmsr
    mov ecx, 0x40000083
    mov eax, \simp + 1
    wrmsr
    mov ecx, 0x40000080
    mov eax, 1
    wrmsr
    .endm
    // EnablePartitionVtl(1) (fast; status on 0x30), EnableVpVtl(self, 1)
    // (status on 0x31).
    .macro enable_vtl1
    mov ecx, 0x1000D
    mov rdx, -1
    mov r8d, 1
    mov eax, {hc0}
    call rax
    out 0x30, eax
    hvcall {hc0}, 0x0F, {data} + 0x100, 0, 0x31
    .endm
    .macro hvcall page, control, input, output, port
    mov rcx, \control
    mov edx, \input
    mov r8d, \output
    mov eax, \page
    call rax
    out \port, eax
    .endm
    // VTL 1 entered: VTL 0's RAX and RCX kept for the non-fast return,
    // VTL 0's RCX, RSI and RDI reported, the other registers VTL 1 uses
    // saved (the VTLs share them).
    .macro enter_vtl1
    mov qword ptr [{assist} + 16], rax
    mov qword ptr [{assist} + 24], rcx
    mov eax, ecx
    out 0x7A, eax
    mov eax, esi
    out 0x7B, eax
    mov eax, edi
    out 0x7D, eax
    push rbx
    push rsi
    push rdi
    push rdx
    push r8
    .endm
    .macro leave_vtl1
    pop r8
    pop rdx
    pop rdi
    pop rsi
    pop rbx
    xor ecx, ecx
    mov eax, {hc1} + 0x20
    call rax
    .endm
    // The SINT0 slot: reported, freed, EOM.
    .macro take_message
    mov ebx, {simp}
    call 8f
    mov dword ptr [{simp}], 0
    mov ecx, 0x40000084
    xor eax, eax
    xor edx, edx
    wrmsr
    .endm

    .globl hvkvm_vsmp_vtl0_start
hvkvm_vsmp_vtl0_start:
    .code64
    hypercall_page {hc0}
    enable_vtl1
    // VTL 1 sets up and protects P and X.
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    mov ebx, 0xC0FFEE
    .globl hvkvm_vsmp_read_p
hvkvm_vsmp_read_p:
    mov rax, qword ptr [{p}]
    .globl hvkvm_vsmp_write_p
hvkvm_vsmp_write_p:
    out 0x40, eax
    mov dword ptr [{p}], ebx
    mov eax, dword ptr [{p}]
    out 0x41, eax
    mov eax, {x}
    call rax
    mov rsi, {q}
    mov rdi, {dst}
    mov ecx, 16
    .globl hvkvm_vsmp_movs
hvkvm_vsmp_movs:
    rep movsb
    mov eax, dword ptr [{dst}]
    out 0x43, eax
    mov rdi, {w} + 0x100
    mov ecx, 8
    mov al, 0x77
    .globl hvkvm_vsmp_stos
hvkvm_vsmp_stos:
    rep stosb
    mov eax, dword ptr [{w} + 0x100]
    out 0x44, eax
    mov eax, ecx
    out 0x45, eax
    // VTL 0 protecting (its own VTL: "a VTL can only place protections on
    // a lower VTL").
    hvcall {hc0}, 0x10000000C, {prot} + 0x240, 0, 0x46
    // A hypercall whose input page VTL 1 made inaccessible.
    hvcall {hc0}, 0x0000000100000050, {h}, {data} + 0x1000, 0x47
    // One whose output page VTL 1 made inaccessible.
    hvcall {hc0}, 0x0000000100000050, {data} + 0x600, {o}, 0x49
    // VTL 0's hypercall page over P4: VTL 0 reads its own overlay, not
    // the RAM VTL 1 protects, and no intercept comes of it.
    mov ecx, 0x40000001
    mov eax, {p4} + 1
    xor edx, edx
    wrmsr
    mov eax, dword ptr [{p4}]
    out 0x4A, eax
    mov ecx, 0x40000001
    mov eax, {hc0} + 1
    xor edx, edx
    wrmsr
    // VTL 1 switches to the intercept page and protects P again.
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    .globl hvkvm_vsmp_read_p2
hvkvm_vsmp_read_p2:
    mov rax, qword ptr [{p}]
    out 0x48, eax
    out 0x1F, eax
2:  jmp 2b
    .globl hvkvm_vsmp_vtl0_end
hvkvm_vsmp_vtl0_end:

    .globl hvkvm_vsmp_vtl1_start
hvkvm_vsmp_vtl1_start:
    hypercall_page {hc1}
    mov ecx, 0x40000073
    mov eax, {assist} + 1
    wrmsr
    // The SynIC: SIMP, then SCONTROL (SINT0 stays masked: polled).
    mov ecx, 0x40000083
    mov eax, {simp} + 1
    wrmsr
    mov ecx, 0x40000080
    mov eax, 1
    wrmsr
    // Before EnableVtlProtection.
    hvcall {hc1}, 0x10000000C, {prot} + 0x000, 0, 0x60
    hvcall {hc1}, 0x0000000100000051, {cfg} + 0x000, 0, 0x61
    // Read-only without execute: no memslot gives it.
    hvcall {hc1}, 0x10000000C, {prot} + 0x040, 0, 0x62
    // VTL 1's own memory.
    hvcall {hc1}, 0x10000000C, {prot} + 0x080, 0, 0x63
    // [P3, not RAM, P3]: one page done.
    hvcall {hc1}, 0x30000000C, {prot} + 0x0C0, 0, 0x64
    shr rax, 32
    out 0x65, eax
    // No access to P and X; P3 back to full access.
    hvcall {hc1}, 0x20000000C, {prot} + 0x100, 0, 0x66
    hvcall {hc1}, 0x10000000C, {prot} + 0x140, 0, 0x67
    xor ecx, ecx
    mov eax, {hc1} + 0x20
    call rax
    // 1: VTL 0 read P. P becomes read+execute.
    enter_vtl1
    take_message
    hvcall {hc1}, 0x10000000C, {prot} + 0x180, 0, 0x68
    leave_vtl1
    // 2: VTL 0 wrote P. P unchanged; P full access, Q none.
    enter_vtl1
    take_message
    mov eax, dword ptr [{p}]
    out 0x7C, eax
    hvcall {hc1}, 0x10000000C, {prot} + 0x1C0, 0, 0x69
    hvcall {hc1}, 0x10000000C, {prot} + 0x200, 0, 0x6A
    leave_vtl1
    // 3: VTL 0 executed X. X full access.
    enter_vtl1
    take_message
    hvcall {hc1}, 0x10000000C, {prot} + 0x280, 0, 0x6B
    leave_vtl1
    // 4: VTL 0 copied from Q. Q full access, W read+execute.
    enter_vtl1
    take_message
    hvcall {hc1}, 0x10000000C, {prot} + 0x2C0, 0, 0x6C
    hvcall {hc1}, 0x10000000C, {prot} + 0x300, 0, 0x6D
    leave_vtl1
    // 5: VTL 0 stored into W. W unchanged; W full access, H none.
    enter_vtl1
    take_message
    mov eax, dword ptr [{w} + 0x100]
    out 0x7C, eax
    hvcall {hc1}, 0x10000000C, {prot} + 0x340, 0, 0x6E
    hvcall {hc1}, 0x30000000C, {prot} + 0x380, 0, 0x6F
    leave_vtl1
    // 6: a VTL call. InterceptPage on, P none.
    enter_vtl1
    mov eax, dword ptr [{assist} + 8]
    out 0x7E, eax
    hvcall {hc1}, 0x0000000100000051, {cfg} + 0x040, 0, 0x58
    hvcall {hc1}, 0x10000000C, {prot} + 0x3C0, 0, 0x59
    leave_vtl1
    // 7: VTL 0 read P; the message is in the assist page. P full access.
    enter_vtl1
    mov ebx, {assist} + 112
    call 8f
    hvcall {hc1}, 0x10000000C, {prot} + 0x1C0, 0, 0x5A
    leave_vtl1
3:  jmp 3b
    // The message at RBX, and the entry reason.
8:  mov eax, dword ptr [rbx]
    out 0x70, eax
    mov eax, dword ptr [rbx + 16]
    out 0x71, eax
    movzx eax, byte ptr [rbx + 20]
    out 0x72, eax
    movzx eax, byte ptr [rbx + 21]
    out 0x73, eax
    movzx eax, word ptr [rbx + 22]
    out 0x74, eax
    mov eax, dword ptr [rbx + 40]
    out 0x75, eax
    movzx eax, byte ptr [rbx + 60]
    out 0x76, eax
    mov eax, dword ptr [rbx + 72]
    out 0x77, eax
    mov eax, dword ptr [rbx + 80]
    out 0x78, eax
    mov eax, dword ptr [{assist} + 8]
    out 0x79, eax
    mov eax, dword ptr [rbx + 4]
    out 0x7F, eax
    ret
    .globl hvkvm_vsmp_vtl1_end
hvkvm_vsmp_vtl1_end:
    .popsection

    .pushsection .rodata.hvkvm_vsmi_guest, "a"
    .globl hvkvm_vsmi_vtl0_start
hvkvm_vsmi_vtl0_start:
    .code64
    hypercall_page {hc0}
    // VTL 0's own SynIC.
    mov ecx, 0x40000083
    mov eax, {simp0} + 1
    wrmsr
    mov ecx, 0x40000080
    mov eax, 1
    wrmsr
    enable_vtl1
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    // Interrupts off, then spin: only a secure interrupt gets VTL 1 in.
    cli
    out 0x20, eax
2:  jmp 2b
    .globl hvkvm_vsmi_vtl0_end
hvkvm_vsmi_vtl0_end:

    .globl hvkvm_vsmi_vtl1_start
hvkvm_vsmi_vtl1_start:
    hypercall_page {hc1}
    vtl1_pages {simp1}
    // SINT 5 raises vector 0x50 (VTL 1 runs with IF clear: it stays
    // pending in VTL 1's LAPIC).
    mov ecx, 0x40000095
    mov eax, 0x50
    wrmsr
    xor ecx, ecx
    mov eax, {hc1} + 0x20
    call rax
    // Entered by the host's message on SINT 5; the host posts a second
    // one and says so.
6:  mov eax, dword ptr [{data} + 0x5004]
    test eax, eax
    jz 6b
    mov eax, dword ptr [{assist} + 8]
    out 0x79, eax
    mov eax, dword ptr [{simp1} + 5 * 256]
    out 0x70, eax
    mov eax, dword ptr [{simp1} + 5 * 256 + 16]
    out 0x71, eax
    // A second message waits: MessagePending; freed and EOM, it is there.
    movzx eax, byte ptr [{simp1} + 5 * 256 + 5]
    out 0x73, eax
    mov dword ptr [{simp1} + 5 * 256], 0
    mov ecx, 0x40000084
    xor eax, eax
    xor edx, edx
    wrmsr
    mov eax, dword ptr [{simp1} + 5 * 256 + 16]
    out 0x74, eax
    // VTL 0's SIMP protected from VTL 0: a message for VTL 0 is not
    // written there.
    mov rcx, 0x0000000100000051
    mov edx, {cfg}
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    out 0x62, eax
    mov rcx, 0x10000000C
    mov edx, {prot} + 0x480
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    out 0x63, eax
    out 0x21, eax
    // The host says when it has posted.
5:  mov eax, dword ptr [{data} + 0x5000]
    test eax, eax
    jz 5b
    mov eax, dword ptr [{simp0} + 3 * 256]
    out 0x76, eax
    mov rcx, 0x10000000C
    mov edx, {prot} + 0x4C0
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    out 0x64, eax
    // A message for VTL 0 while VTL 1 runs: VTL 1 is not left for it.
    out 0x22, eax
4:  mov eax, dword ptr [{simp0} + 3 * 256]
    test eax, eax
    jz 4b
    out 0x72, eax
    out 0x1F, eax
3:  jmp 3b
    .globl hvkvm_vsmi_vtl1_end
hvkvm_vsmi_vtl1_end:
    .popsection

    .pushsection .rodata.hvkvm_vsmw_guest, "a"
    .globl hvkvm_vsmw_vtl0_start
hvkvm_vsmw_vtl0_start:
    .code64
    hypercall_page {hc0}
    enable_vtl1
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    // The walk of this address reads the protected page directory (RBX:
    // VTL 1 leaves it alone, the VTLs share it).
    mov rbx, {walked}
    mov rax, qword ptr [rbx]
    out 0x40, eax
    out 0x1F, eax
2:  jmp 2b
    .globl hvkvm_vsmw_vtl0_end
hvkvm_vsmw_vtl0_end:

    .globl hvkvm_vsmw_vtl1_start
hvkvm_vsmw_vtl1_start:
    hypercall_page {hc1}
    vtl1_pages {simp}
    mov rcx, 0x0000000100000051
    mov edx, {cfg}
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    mov rcx, 0x10000000C
    mov edx, {prot} + 0x400
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    out 0x60, eax
    mov ecx, 1
    mov eax, {hc1} + 0x20
    call rax
    // The intercept.
    movzx eax, byte ptr [{simp} + 21]
    out 0x73, eax
    mov eax, dword ptr [{simp} + 72]
    out 0x77, eax
    mov dword ptr [{simp}], 0
    mov ecx, 0x40000084
    xor eax, eax
    xor edx, edx
    wrmsr
    mov rcx, 0x10000000C
    mov edx, {prot} + 0x440
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    out 0x61, eax
    mov ecx, 1
    mov eax, {hc1} + 0x20
    call rax
3:  jmp 3b
    .globl hvkvm_vsmw_vtl1_end
hvkvm_vsmw_vtl1_end:

    // The flood: VP 0's VTL 0 reads P forever, VTL 1 never lifts it.
    .globl hvkvm_vsmf_vtl0_start
hvkvm_vsmf_vtl0_start:
    hypercall_page {hc0}
    enable_vtl1
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    out 0x81, eax
2:  mov rax, qword ptr [{p}]
    jmp 2b
    .globl hvkvm_vsmf_vtl0_end
hvkvm_vsmf_vtl0_end:
    .globl hvkvm_vsmf_vtl1_start
hvkvm_vsmf_vtl1_start:
    hypercall_page {hc1}
    vtl1_pages {simp}
    hvcall {hc1}, 0x0000000100000051, {cfg}, 0, 0x80
    hvcall {hc1}, 0x10000000C, {prot}, 0, 0x80
3:  mov ecx, 1
    mov eax, {hc1} + 0x20
    call rax
    mov dword ptr [{simp}], 0
    mov ecx, 0x40000084
    xor eax, eax
    xor edx, edx
    wrmsr
    jmp 3b
    .globl hvkvm_vsmf_vtl1_end
hvkvm_vsmf_vtl1_end:
    // VP 1 (VTL 1 not enabled on it) reads P: #GP; then it counts.
    .globl hvkvm_vsmf_vp1_start
hvkvm_vsmf_vp1_start:
    lidt [{idtr1}]
    .globl hvkvm_vsmf_vp1_read
hvkvm_vsmf_vp1_read:
    mov rax, qword ptr [{p}]
    out 0x92, eax
4:  mov ecx, 20000
5:  dec ecx
    jnz 5b
    out 0x91, eax
    jmp 4b
    .globl hvkvm_vsmf_gp
hvkvm_vsmf_gp:
    // #GP: the error code, then the faulting RIP.
    mov eax, dword ptr [rsp]
    out 0x93, eax
    mov eax, dword ptr [rsp + 8]
    out 0x90, eax
    add rsp, 8
    jmp 4b
    .globl hvkvm_vsmf_vp1_end
hvkvm_vsmf_vp1_end:
    .popsection
"#,
    hc0 = const HYPERCALL_PAGE,
    hc1 = const VTL1_HYPERCALL,
    data = const DATA,
    assist = const VTL1_ASSIST,
    simp = const VTL1_SIMP,
    prot = const PROT,
    cfg = const CFG,
    dst = const DST,
    p = const P,
    x = const X,
    q = const Q,
    w = const W,
    h = const H,
    o = const O,
    p4 = const P4,
    simp0 = const VTL0_SIMP,
    simp1 = const VTL1_SIMP,
    walked = const WALKED,
    idtr1 = const VP1_IDTR,
);

extern "C" {
    static hvkvm_vsmp_vtl0_start: u8;
    static hvkvm_vsmp_vtl0_end: u8;
    static hvkvm_vsmp_read_p: u8;
    static hvkvm_vsmp_write_p: u8;
    static hvkvm_vsmp_movs: u8;
    static hvkvm_vsmp_stos: u8;
    static hvkvm_vsmp_read_p2: u8;
    static hvkvm_vsmp_vtl1_start: u8;
    static hvkvm_vsmp_vtl1_end: u8;
}

/// HvCallModifyVtlProtectionMask's input: partition, flags, target VTL
/// (HV_INPUT_VTL), the pages.
fn prot(flags: u32, target: u8, gpas: &[u64]) -> Vec<u8> {
    let mut b = PartitionId::SELF.0.to_le_bytes().to_vec();
    b.extend(flags.to_le_bytes());
    b.extend([target, 0, 0, 0]);
    for g in gpas {
        b.extend((g >> 12).to_le_bytes());
    }
    b
}

/// Where the guest's labelled instructions are, as offsets into VTL 0's code.
struct Labels {
    read_p: u64,
    write_p: u64,
    movs: u64,
    stos: u64,
    read_p2: u64,
}

fn setup_guest(p: &Partition) -> (Labels, Vec<u8>) {
    // SAFETY: the statics are symbols the global_asm! above defines (read
    // only by address here); `blob` reads the bytes between them.
    let (vtl0, vtl1, labels) = unsafe {
        let start = &hvkvm_vsmp_vtl0_start as *const u8 as u64;
        let at = |s: &u8| s as *const u8 as u64 - start;
        (
            blob(&hvkvm_vsmp_vtl0_start, &hvkvm_vsmp_vtl0_end),
            blob(&hvkvm_vsmp_vtl1_start, &hvkvm_vsmp_vtl1_end),
            Labels {
                read_p: at(&hvkvm_vsmp_read_p),
                write_p: at(&hvkvm_vsmp_write_p),
                movs: at(&hvkvm_vsmp_movs),
                stos: at(&hvkvm_vsmp_stos),
                read_p2: at(&hvkvm_vsmp_read_p2),
            },
        )
    };
    put(p, CODE, vtl0);
    put(p, VTL1_CODE, vtl1);
    let mut gdt = [0u8; 32];
    vm_memory::Bytes::read_slice(p.memory(), &mut gdt, vm_memory::GuestAddress(GDT)).unwrap();
    put(p, VTL1_GDT, &gdt);
    put(p, VTL1_PML4, &(PDPT | 3).to_le_bytes());
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
    // HV_INPUT_VTL 0x10: VTL 0 (use-target); 0x11: VTL 1.
    const VTL0: u8 = 0x10;
    const NONE: u32 = 0;
    const RX: u32 = 0b1101;
    const RWX: u32 = 0b1111;
    let inputs: [(u64, Vec<u8>); 16] = [
        (0x000, prot(NONE, VTL0, &[P])),
        (0x040, prot(0b0001, VTL0, &[P])),
        (0x080, prot(NONE, 0x11, &[P])),
        (0x0C0, prot(NONE, VTL0, &[P3, NOT_RAM, P3])),
        (0x100, prot(NONE, VTL0, &[P, X])),
        (0x140, prot(RWX, VTL0, &[P3])),
        (0x180, prot(RX, VTL0, &[P])),
        (0x1C0, prot(RWX, VTL0, &[P])),
        (0x200, prot(NONE, VTL0, &[Q])),
        (0x240, prot(NONE, 0, &[P])),
        (0x280, prot(RWX, VTL0, &[X])),
        (0x2C0, prot(RWX, VTL0, &[Q])),
        (0x300, prot(RX, VTL0, &[W])),
        (0x340, prot(RWX, VTL0, &[W])),
        (0x380, prot(NONE, VTL0, &[H, O, P4])),
        (0x3C0, prot(NONE, VTL0, &[P])),
    ];
    for (off, b) in &inputs {
        assert!(b.len() <= 0x40);
        put(p, PROT + off, b);
    }
    const CONFIG: u32 = 0x000D_0007;
    let set = |v: u64| set_registers_input(0, &[(hv_regs::HvRegisterName(CONFIG), v.into())]);
    put(p, CFG, &set(0x1F));
    put(p, CFG + 0x40, &set(0x1F | (1 << 12)));
    put(p, H, &registers_input(0, &[0x000D_0003]));
    put(p, DATA + 0x600, &registers_input(0, &[0x000D_0003]));
    put(p, O, &[0xA5; 16]);
    put(p, P4, &0x5EC2_E700u32.to_le_bytes());
    put(p, P, &0x1122_3344_5566_7788u64.to_le_bytes());
    put(p, Q, &(1..=16u8).collect::<Vec<_>>());
    // X: mov eax, 0x5151; out 0x42, eax; ret
    put(p, X, &[0xB8, 0x51, 0x51, 0, 0, 0xE7, 0x42, 0xC3]);
    (labels, vtl0.to_vec())
}

/// TLFS "Memory Access Protections" and HvCallModifyVtlProtectionMask, the
/// intercept message (HV_X64_MEMORY_INTERCEPT_MESSAGE on SINT0, entry
/// reason 2; in the intercept page, entry reason 3), and the retried access.
#[test]
fn protections_intercept_lower_vtl_accesses_and_lifting_retries_them() {
    let p = vsm_partition(1, Vtl::VTL0, Vtl::VTL1);
    let (l, code) = setup_guest(&p);
    let got = run_bsp_reports(&p, &bsp_registers(CODE, stack(0)));
    let port = |n: u16| writes_to(&got, n);
    let one = |n: u16| only(&got, n);
    let status = |n: u16| HvStatus(one(n) as u16);
    assert_eq!(status(0x30), HvStatus::SUCCESS, "{got:x?}");
    assert_eq!(status(0x31), HvStatus::SUCCESS);
    // Before VTL 1 set EnableVtlProtection: ACCESS_DENIED (`choices`).
    assert_eq!(status(0x60), HvError::ACCESS_DENIED.status());
    assert_eq!(status(0x61), HvStatus::SUCCESS);
    // R without X: INVALID_PARAMETER (`choices`: what a memslot enforces).
    assert_eq!(status(0x62), HvError::INVALID_PARAMETER.status());
    // "A VTL can only place protections on a lower VTL."
    assert_eq!(status(0x63), HvError::ACCESS_DENIED.status());
    // "Any attempt to apply VTL protections on non-RAM ranges will fail
    // with HV_STATUS_INVALID_PARAMETER", after the pages before it.
    assert_eq!(status(0x64), HvError::INVALID_PARAMETER.status());
    assert_eq!(one(0x65) & 0xFFF, 1, "reps completed");
    for n in [
        0x66, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x58, 0x59, 0x5A,
    ] {
        assert_eq!(status(n), HvStatus::SUCCESS, "port {n:#x}");
    }
    // VTL 0 saw its accesses retried and done.
    assert_eq!(one(0x40), 0x5566_7788);
    assert_eq!(one(0x41), 0xC0FFEE);
    assert_eq!(one(0x42), 0x5151, "the code at X ran once X was executable");
    assert_eq!(one(0x43), 0x0403_0201);
    assert_eq!(one(0x44), 0x7777_7777);
    assert_eq!(one(0x45), 0, "rep stosb ran all its iterations");
    assert_eq!(one(0x48), 0xC0FFEE);
    // VTL 0 protecting its own memory; a hypercall input page it cannot read.
    assert_eq!(status(0x46), HvError::ACCESS_DENIED.status());
    assert_eq!(status(0x47), HvError::ACCESS_DENIED.status());
    assert_eq!(status(0x49), HvError::ACCESS_DENIED.status());
    let mut out = [0u8; 16];
    vm_memory::Bytes::read_slice(p.memory(), &mut out, vm_memory::GuestAddress(O)).unwrap();
    assert_eq!(
        out, [0xA5; 16],
        "nothing written in the protected output page"
    );
    let page = hv_partition::hyperv::HYPERCALL_PAGE;
    assert_eq!(
        one(0x4A),
        u32::from_le_bytes(page[..4].try_into().unwrap()),
        "the overlay, not the protected RAM beneath it"
    );
    // Nothing was written by the refused writes.
    assert_eq!(port(0x7C), [0x5566_7788, 0]);
    // The messages, in order: read P, write P, execute X, rep movsb from Q,
    // rep stosb into W, read P (intercept page).
    let rip = |off: u64| (CODE + off) as u32;
    let bytes =
        |off: u64| u32::from_le_bytes(code[off as usize..off as usize + 4].try_into().unwrap());
    let len = |a: u64, b: u64| (b - a) as u32;
    assert_eq!(port(0x70), [0x8000_0001; 6], "HvMessageTypeGpaIntercept");
    assert_eq!(port(0x7F), [0x50; 6], "payload size");
    assert_eq!(port(0x71), [0; 6], "VP index");
    let lengths: Vec<u32> = port(0x72).iter().map(|v| v & 0xF).collect();
    assert_eq!(
        lengths,
        [
            len(l.read_p, l.write_p),
            7,
            0,
            2,
            2,
            len(l.read_p2, l.read_p2 + 8)
        ],
        "instruction lengths"
    );
    assert_eq!(
        port(0x73),
        [0, 1, 2, 0, 1, 0],
        "access types: read, write, execute"
    );
    for s in port(0x74) {
        // CPL 0, CR0.PE, EFER.LMA, VTL 0 (AM as the guest has it).
        assert_eq!(s & !0x8, 0x14, "execution state {s:#x}");
    }
    assert_eq!(
        port(0x75),
        [
            rip(l.read_p),
            rip(l.write_p) + 2,
            X as u32,
            rip(l.movs),
            rip(l.stos),
            rip(l.read_p2)
        ],
        "RIP of the faulting instruction"
    );
    assert_eq!(
        port(0x76),
        [16, 16, 0, 16, 16, 16],
        "instruction byte counts"
    );
    assert_eq!(
        port(0x77),
        [
            P as u32,
            P as u32,
            X as u32,
            Q as u32,
            W as u32 + 0x100,
            P as u32
        ],
        "GPAs"
    );
    assert_eq!(
        port(0x78),
        [
            bytes(l.read_p),
            bytes(l.write_p + 2),
            0,
            bytes(l.movs),
            bytes(l.stos),
            bytes(l.read_p2)
        ],
        "instruction bytes"
    );
    assert_eq!(port(0x79), [2, 2, 2, 2, 2, 3], "entry reasons");
    assert_eq!(port(0x7E), [1], "the VTL call's entry reason");
    // The registers at the intercepts: the string instructions not retired.
    let rcx = port(0x7A);
    let (rsi, rdi) = (port(0x7B), port(0x7D));
    assert_eq!(rcx.len(), 7, "seven entries of VTL 1 after its first");
    assert_eq!(
        (rcx[3], rsi[3]),
        (16, Q as u32),
        "rep movsb: RCX, RSI as before it"
    );
    assert_eq!(
        (rcx[4], rdi[4]),
        (8, W as u32 + 0x100),
        "rep stosb: RCX, RDI as before it"
    );
    assert_eq!(p.stats().intercepts(), 6);
}

const VTL0_SIMP: u64 = 0x52000;

extern "C" {
    static hvkvm_vsmi_vtl0_start: u8;
    static hvkvm_vsmi_vtl0_end: u8;
    static hvkvm_vsmi_vtl1_start: u8;
    static hvkvm_vsmi_vtl1_end: u8;
}

fn message(message_type: u32, tag: u32) -> hv_defs::message::HvMessage {
    use zerocopy::FromZeros;
    let mut m = hv_defs::message::HvMessage::new_zeroed();
    m.header.message_type = hv_defs::message::HvMessageType(message_type);
    m.header.payload_size = 4;
    m.payload[..4].copy_from_slice(&tag.to_le_bytes());
    m
}

/// TLFS "Virtual Interrupts": an interrupt for a higher VTL switches to it
/// at once, RFLAGS.IF of the running VTL ignored (entry reason 2); one for
/// a lower VTL waits until the VP enters it (here: the message waits in VTL
/// 0's SIMP and VTL 1 keeps running). "SynIC Messages": the message is in
/// its SINT's slot.
#[test]
fn a_message_for_vtl1_preempts_vtl0_with_interrupts_off() {
    let p = vsm_partition(1, Vtl::VTL0, Vtl::VTL1);
    // SAFETY: symbols the global_asm! above defines; `blob` reads between them.
    let (vtl0, vtl1) = unsafe {
        (
            blob(&hvkvm_vsmi_vtl0_start, &hvkvm_vsmi_vtl0_end),
            blob(&hvkvm_vsmi_vtl1_start, &hvkvm_vsmi_vtl1_end),
        )
    };
    setup_guest(&p);
    put(&p, CODE, vtl0);
    put(&p, VTL1_CODE, vtl1);
    put(&p, PROT + 0x480, &prot(0, 0x10, &[VTL0_SIMP]));
    put(&p, PROT + 0x4C0, &prot(0xF, 0x10, &[VTL0_SIMP]));
    // VTL 1 not enabled on the VP yet: refused.
    let mut v = p.create_vp(vp(0)).unwrap();
    assert_eq!(
        p.post_message(vp(0), Vtl::VTL1, 5, &message(1, 0)),
        Err(HvError::INVALID_VTL_STATE)
    );
    assert_eq!(
        p.post_message(vp(0), Vtl::VTL0, 16, &message(1, 0)),
        Err(HvError::INVALID_PARAMETER)
    );
    v.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || run_reporting(v, tx));
    let mut got = vec![];
    for r in rx.iter() {
        got.push((r.port, r.value));
        match r.port {
            0x20 => {
                // VTL 0 spins with IF clear.
                std::thread::sleep(std::time::Duration::from_millis(20));
                assert_eq!(
                    p.post_message(vp(0), Vtl::VTL1, 5, &message(0x1234, 0xABCD)),
                    Ok(true)
                );
                assert_eq!(
                    p.post_message(vp(0), Vtl::VTL1, 5, &message(0x1234, 0xBCDE)),
                    Ok(true),
                    "queued behind the first"
                );
                put(&p, DATA + 0x5004, &1u32.to_le_bytes());
            }
            0x21 => {
                assert_eq!(
                    p.post_message(vp(0), Vtl::VTL0, 3, &message(0x4321, 0)),
                    Ok(false),
                    "VTL 0's SIMP is protected from VTL 0: dropped"
                );
                put(&p, DATA + 0x5000, &1u32.to_le_bytes());
            }
            0x22 => {
                assert_eq!(
                    p.post_message(vp(0), Vtl::VTL0, 3, &message(0x4321, 0)),
                    Ok(true)
                );
            }
            _ => {}
        }
    }
    t.join().expect("VP thread");
    assert_eq!(only(&got, 0x31), 0, "{got:x?}");
    assert_eq!(only(&got, 0x79), 2, "entry reason Interrupt");
    assert_eq!(only(&got, 0x70), 0x1234, "the message in SINT 5's slot");
    assert_eq!(only(&got, 0x71), 0xABCD);
    for port in [0x62, 0x63, 0x64] {
        assert_eq!(only(&got, port), 0, "port {port:#x}: {got:x?}");
    }
    assert_eq!(only(&got, 0x76), 0, "nothing written in the protected SIMP");
    assert_eq!(only(&got, 0x73), 1, "MessagePending");
    assert_eq!(only(&got, 0x74), 0xBCDE, "delivered at EOM");
    assert_eq!(
        only(&got, 0x72),
        0x4321,
        "VTL 0's message waits in its SIMP"
    );
    assert_eq!(only(&got, DONE), 0x4321);
}

/// The page directory of VTL 0's mapping at 1 GiB, which VTL 1 protects.
const PD_HIGH: u64 = 0x66000;
const WALKED: u64 = 0x4000_0000 + 0x67000;

extern "C" {
    static hvkvm_vsmf_vtl0_start: u8;
    static hvkvm_vsmf_vtl0_end: u8;
    static hvkvm_vsmf_vtl1_start: u8;
    static hvkvm_vsmf_vtl1_end: u8;
    static hvkvm_vsmf_vp1_start: u8;
    static hvkvm_vsmf_vp1_read: u8;
    static hvkvm_vsmf_gp: u8;
    static hvkvm_vsmf_vp1_end: u8;
    static hvkvm_vsmw_vtl0_start: u8;
    static hvkvm_vsmw_vtl0_end: u8;
    static hvkvm_vsmw_vtl1_start: u8;
    static hvkvm_vsmw_vtl1_end: u8;
}

/// A lower VTL's page walk through a page table a higher VTL made
/// inaccessible (TLFS "Memory Access Protections": the page is protected
/// whatever reads it). With hardware-assisted paging (the nested tier, real
/// KVM) KVM reports the walk's read of the entry: a read intercept at the
/// entry's GPA, retried once lifted. PVM's shadow paging raises a guest
/// fault instead, which this guest (no IDT) turns into a shutdown
/// (`choices`).
#[test]
fn a_page_walk_through_a_protected_table_is_an_intercept() {
    let p = vsm_partition(1, Vtl::VTL0, Vtl::VTL1);
    setup_guest(&p);
    // SAFETY: symbols the global_asm! above defines; `blob` reads between them.
    unsafe {
        put(&p, CODE, blob(&hvkvm_vsmw_vtl0_start, &hvkvm_vsmw_vtl0_end));
        put(
            &p,
            VTL1_CODE,
            blob(&hvkvm_vsmw_vtl1_start, &hvkvm_vsmw_vtl1_end),
        );
    }
    put(&p, PROT + 0x400, &prot(0, 0x10, &[PD_HIGH]));
    put(&p, PROT + 0x440, &prot(0xF, 0x10, &[PD_HIGH]));
    put(&p, PDPT + 8, &(PD_HIGH | 3).to_le_bytes());
    put(&p, PD_HIGH, &0x83u64.to_le_bytes());
    put(&p, 0x67000, &0xFACE_FEEDu32.to_le_bytes());
    let mut v = p.create_vp(vp(0)).unwrap();
    v.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();
    let mut got = vec![];
    let end = loop {
        match v.run() {
            hv_partition::VpExit::IoPortAccess {
                port,
                access: hv_partition::Access::Write(d),
            } => {
                got.push((port, u32::from_le_bytes(d[..4].try_into().unwrap())));
                if port == DONE {
                    break "done".to_string();
                }
            }
            other => break format!("{other:?}"),
        }
    };
    assert_eq!(status_of(&got, 0x60), HvStatus::SUCCESS, "{got:x?}");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(end, "UnrecoverableException", "PVM: {got:x?}");
        return;
    }
    assert_eq!(end, "done", "{got:x?}");
    assert_eq!(only(&got, 0x73), 0, "a read");
    assert_eq!(only(&got, 0x77), PD_HIGH as u32, "the table entry's GPA");
    assert_eq!(status_of(&got, 0x61), HvStatus::SUCCESS);
    assert_eq!(only(&got, 0x40), 0xFACE_FEED, "the retried access");
}

fn status_of(got: &[(u16, u32)], port: u16) -> HvStatus {
    HvStatus(only(got, port) as u16)
}

/// TLFS "Partition Configuration": DefaultVtlProtectionMask applies to every
/// lower-VTL page once EnableVtlProtection is set (here through the host's
/// register access), also to the VTL 0 VM of a partition booted in VTL 1;
/// `vtl_may_access` (for a VMM's devices) follows it.
#[test]
fn the_default_protection_mask_covers_all_lower_vtl_ram() {
    use hv_regs::HvRegisterName as N;
    let p = vsm_partition(1, Vtl::VTL1, Vtl::VTL1);
    let mut v = p.create_vp(vp(0)).unwrap();
    assert!(
        p.vtl_may_access(Vtl::VTL0, P, 8, true),
        "no protections yet"
    );
    // EnableVtlProtection with a read+execute default (R, KX: 0b0101).
    v.set_registers(&[(N::VSM_PARTITION_CONFIG, (1u64 | (0b0101 << 1)).into())])
        .unwrap();
    assert!(p.vtl_may_access(Vtl::VTL0, P, 8, false));
    assert!(!p.vtl_may_access(Vtl::VTL0, P, 8, true));
    assert!(!p.vtl_may_access(Vtl::VTL0, 0, 1, true));
    // VTL 1's own memory is not protected by VTL 1.
    assert!(p.vtl_may_access(Vtl::VTL1, P, 8, true));
    // The mask is fixed once protections are enabled.
    assert!(v
        .set_registers(&[(N::VSM_PARTITION_CONFIG, 1u64.into())])
        .is_err());
    assert!(p.vtl_may_access(Vtl::VTL0, P + 0x1000, 0x2000, false));
    // VTL 0's VM, made at the first access naming it, has the default.
    v.get_vtl_registers(Vtl::VTL0, &[N::RIP]).unwrap();
    assert!(!p.vtl_may_access(Vtl::VTL0, P, 8, true));
    assert!(p.vtl_may_access(Vtl::VTL0, P, 8, false));
}

/// VP 1's code, IDT and IDTR.
const VP1_CODE: u64 = 0x70000;
const VP1_IDT: u64 = 0x71000;
const VP1_IDTR: u64 = 0x71FF0;

/// Counts the log records at warning level or above.
struct Loud(std::sync::atomic::AtomicUsize);

impl log::Log for Loud {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        if r.level() <= log::Level::Warn {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn flush(&self) {}
}

static LOUD: Loud = Loud(std::sync::atomic::AtomicUsize::new(0));

/// A hostile lower VTL (TLFS "Memory Access Protections"): VP 0's VTL 0
/// retries a refused read forever and its VTL 1 never lifts it. The flood
/// logs nothing at warning level and VP 1 keeps running. VP 1, which has no
/// VTL 1, reading the page VTL 1 protects gets #GP at the read (`choices`:
/// no VTL of that VP to deliver the intercept to).
#[test]
fn a_flood_of_violations_starves_no_vp_and_logs_nothing_loud() {
    let _ = log::set_logger(&LOUD);
    log::set_max_level(log::LevelFilter::Trace);
    let loud = LOUD.0.load(std::sync::atomic::Ordering::SeqCst);
    let p = vsm_partition(2, Vtl::VTL0, Vtl::VTL1);
    setup_guest(&p);
    // SAFETY: symbols the global_asm! above defines; `blob` reads between them.
    let read_at = unsafe {
        put(&p, CODE, blob(&hvkvm_vsmf_vtl0_start, &hvkvm_vsmf_vtl0_end));
        put(
            &p,
            VTL1_CODE,
            blob(&hvkvm_vsmf_vtl1_start, &hvkvm_vsmf_vtl1_end),
        );
        put(
            &p,
            VP1_CODE,
            blob(&hvkvm_vsmf_vp1_start, &hvkvm_vsmf_vp1_end),
        );
        let start = &hvkvm_vsmf_vp1_start as *const u8 as u64;
        let gp = VP1_CODE + (&hvkvm_vsmf_gp as *const u8 as u64 - start);
        let mut gate = [0u8; 16];
        gate[0..2].copy_from_slice(&(gp as u16).to_le_bytes());
        gate[2..4].copy_from_slice(&0x10u16.to_le_bytes());
        gate[5] = 0x8E;
        gate[6..8].copy_from_slice(&((gp >> 16) as u16).to_le_bytes());
        put(&p, VP1_IDT + 13 * 16, &gate);
        let mut idtr = 0xFFFu16.to_le_bytes().to_vec();
        idtr.extend(VP1_IDT.to_le_bytes());
        put(&p, VP1_IDTR, &idtr);
        VP1_CODE + (&hvkvm_vsmf_vp1_read as *const u8 as u64 - start)
    };
    let mut v0 = p.create_vp(vp(0)).unwrap();
    let v1 = p.create_vp(vp(1)).unwrap();
    v0.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();
    p.set_explicit_suspend(vp(1), false).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx1 = tx.clone();
    let t0 = std::thread::spawn(move || run_reporting(v0, tx));
    let t1 = std::thread::spawn(move || run_reporting(v1, tx1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut got = vec![];
    // VP 1's progress reports once the flood is under way (10 intercepts).
    let mut counted = 0;
    while counted < 3 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(r) = rx.recv_timeout(left) else {
            break;
        };
        got.push((r.port, r.value));
        match r.port {
            0x81 => p
                .start_virtual_processor(vp(1), Vtl::VTL0, &ctx64(VP1_CODE, stack(1)))
                .unwrap(),
            0x91 if p.stats().intercepts() >= 10 => counted += 1,
            _ => {}
        }
    }
    let intercepts = p.stats().intercepts();
    p.cancel_all();
    t0.join().expect("VP 0");
    t1.join().expect("VP 1");
    assert_eq!(writes_to(&got, 0x80), [0, 0], "{got:x?}");
    assert_eq!(counted, 3, "VP 1 made progress during the flood: {got:x?}");
    assert!(intercepts >= 10, "{intercepts} intercepts");
    assert_eq!(
        writes_to(&got, 0x92),
        Vec::<u32>::new(),
        "the read did not retire"
    );
    assert_eq!(only(&got, 0x93), 0, "#GP(0)");
    assert_eq!(only(&got, 0x90), read_at as u32, "#GP at the read");
    assert_eq!(
        LOUD.0.load(std::sync::atomic::Ordering::SeqCst),
        loud,
        "no warnings or errors logged"
    );
}
