//! Virtual Secure Mode on more than one VP, on the real `/dev/kvm`: VTL 1
//! enabled on application processors by HvCallEnableVpVtl from another VP,
//! an AP started directly in VTL 1 by HvCallStartVirtualProcessor, and an
//! INIT/SIPI aimed at a VP's VTL 0 while its VTL 1 is enabled, which the TLFS
//! drops ("Virtual Secure Mode", "Virtual Interrupts": "INIT and SIPI aimed
//! at a lower VTL are ignored once a higher VTL is enabled").
//!
//! VP 0 (VTL 0) enables VTL 1 for the partition and itself, starts VP 1 in
//! VTL 0 and calls VTL 1. VP 0's VTL 1 enables VTL 1 on VPs 1 and 2 and
//! starts VP 2 in VTL 1. VP 1 calls its VTL 1, which waits while VP 0's
//! VTL 0 sends INIT and SIPI to VP 1, then returns: VP 1's VTL 0 must resume
//! after its call sequence, not at the SIPI vector.

mod common;

use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;
use hv_defs::{
    EnableVpVtlInput, HvError, HvStatus, PartitionId, StartVirtualProcessorInput, VpIndex, Vtl,
};
use hv_partition::Partition;
use vm_memory::{Bytes, GuestAddress};
use zerocopy::IntoBytes;

/// Every VP's VTL 1 code (it branches on the VP index).
const VTL1_CODE: u64 = 0x30000;
/// VTL 1's hypercall page (VTL 0's is [`HYPERCALL_PAGE`]).
const VTL1_HYPERCALL: u64 = 0x6000;
/// Where a SIPI would start VP 1's VTL 0 (vector 0x0C).
const SIPI_CODE: u64 = 0xC000;
/// Flags the VPs hand each other, one u32 each.
const FLAGS: u64 = DATA + 0x900;
/// The port a VP's VTL 0 writes if a SIPI started it.
const SIPI_PORT: u16 = 0x7E;

fn vtl1_stack(vp: u32) -> u64 {
    0x2F000 - 0x400 * vp as u64 - 0x10
}

std::arch::global_asm!(
    r#"
    .pushsection .rodata.hvkvm_vsm_aps_guest, "a"
    .globl hvkvm_vsm_aps_vp0_start
hvkvm_vsm_aps_vp0_start:
    .code64
    mov ecx, 0x40000000
    mov eax, 1
    mov edx, 0x81000000
    wrmsr
    mov ecx, 0x40000001
    mov eax, {hc0} + 1
    xor edx, edx
    wrmsr
    // x2APIC, for the INIT/SIPI below.
    mov ecx, 0x1B
    rdmsr
    or eax, 0x400
    wrmsr
    // EnablePartitionVtl(1), fast.
    mov ecx, 0x1000D
    mov rdx, -1
    mov r8d, 1
    mov eax, {hc0}
    call rax
    out 0x30, eax
    // EnableVpVtl(self, 1).
    mov ecx, 0x0F
    mov edx, {data} + 0x100
    xor r8d, r8d
    mov eax, {hc0}
    call rax
    out 0x31, eax
    // StartVirtualProcessor(VP 1, VTL 0).
    mov ecx, 0x99
    mov edx, {data} + 0x400
    xor r8d, r8d
    mov eax, {hc0}
    call rax
    out 0x32, eax
    // Into VTL 1, which enables VTL 1 on VPs 1 and 2.
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    mov eax, ebx
    out 0x33, eax
    // VP 1 may call its VTL 1 now; wait until it is there.
    mov dword ptr [{flags}], 1
2:  cmp dword ptr [{flags} + 4], 0
    je 2b
    // INIT, then SIPI (vector 0x0C), to APIC id 1 while VP 1 is in VTL 1.
    mov ecx, 0x830
    mov edx, 1
    mov eax, 0x4500
    wrmsr
    mov eax, 0x460C
    wrmsr
    mov dword ptr [{flags} + 8], 1
3:  cmp dword ptr [{flags} + 12], 0
    je 3b
    out 0x1F, eax
4:  jmp 4b
    .globl hvkvm_vsm_aps_vp0_end
hvkvm_vsm_aps_vp0_end:

    .globl hvkvm_vsm_aps_vp1_start
hvkvm_vsm_aps_vp1_start:
    mov ecx, 0x40000002
    rdmsr
    out 0x60, eax
5:  cmp dword ptr [{flags}], 0
    je 5b
    mov ebx, 0x1234
    xor ecx, ecx
    mov eax, {hc0} + 0x10
    call rax
    // Back in VTL 0 after VTL 1's return, past the call sequence.
    mov eax, ebx
    out 0x61, eax
    mov dword ptr [{flags} + 12], 1
    out 0x1F, eax
6:  jmp 6b
    .globl hvkvm_vsm_aps_vp1_end
hvkvm_vsm_aps_vp1_end:

    .globl hvkvm_vsm_aps_vtl1_start
hvkvm_vsm_aps_vtl1_start:
    mov r12d, ebx
    mov ecx, 0x40000002
    rdmsr
    cmp eax, 1
    je 20f
    cmp eax, 2
    je 30f
    // VP 0 in VTL 1: its own guest OS id and hypercall page.
    mov ecx, 0x40000000
    mov eax, 1
    mov edx, 0x81000000
    wrmsr
    mov ecx, 0x40000001
    mov eax, {hc1} + 1
    xor edx, edx
    wrmsr
    // EnableVpVtl(VP 1, 1) and EnableVpVtl(VP 2, 1) from VTL 1.
    mov ecx, 0x0F
    mov edx, {data} + 0x200
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    out 0x40, eax
    mov ecx, 0x0F
    mov edx, {data} + 0x300
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    out 0x41, eax
    // StartVirtualProcessor(VP 2, VTL 1), then VP 1 again (started already).
    mov ecx, 0x99
    mov edx, {data} + 0x500
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    out 0x42, eax
    mov ecx, 0x99
    mov edx, {data} + 0x600
    xor r8d, r8d
    mov eax, {hc1}
    call rax
    out 0x43, eax
    mov ebx, 0xC0DE
    mov ecx, 1
    mov eax, {hc1} + 0x20
    call rax
9:  jmp 9b

20: // VP 1 in VTL 1 (first entry by its VTL call).
    mov eax, r12d
    out 0x50, eax
    mov rcx, 0x0000000100000050
    mov edx, {data} + 0x700
    mov r8d, {data} + 0x1010
    mov eax, {hc1}
    call rax
    out 0x51, eax
    mov dword ptr [{flags} + 4], 1
21: cmp dword ptr [{flags} + 8], 0
    je 21b
    mov ebx, 0x5678
    mov ecx, 1
    mov eax, {hc1} + 0x20
    call rax
    jmp 9b

30: // VP 2, started in VTL 1.
    mov rcx, 0x0000000100000050
    mov edx, {data} + 0x700
    mov r8d, {data} + 0x1020
    mov eax, {hc1}
    call rax
    out 0x70, eax
    mov rax, rsp
    out 0x71, eax
    out 0x1F, eax
    jmp 9b
    .globl hvkvm_vsm_aps_vtl1_end
hvkvm_vsm_aps_vtl1_end:
    .popsection
"#,
    hc0 = const HYPERCALL_PAGE,
    hc1 = const VTL1_HYPERCALL,
    data = const DATA,
    flags = const FLAGS,
);

extern "C" {
    static hvkvm_vsm_aps_vp0_start: u8;
    static hvkvm_vsm_aps_vp0_end: u8;
    static hvkvm_vsm_aps_vp1_start: u8;
    static hvkvm_vsm_aps_vp1_end: u8;
    static hvkvm_vsm_aps_vtl1_start: u8;
    static hvkvm_vsm_aps_vtl1_end: u8;
}

fn enable_input(vp: u32, rip: u64, rsp: u64) -> Vec<u8> {
    EnableVpVtlInput {
        partition_id: PartitionId::SELF,
        vp_index: VpIndex(vp),
        target_vtl: Vtl::VTL1,
        rsvdz: [0; 3],
        vp_vtl_context: ctx64(rip, rsp),
    }
    .as_bytes()
    .to_vec()
}

fn start_input(vp: u32, vtl: Vtl, rip: u64, rsp: u64) -> Vec<u8> {
    StartVirtualProcessorInput {
        partition_id: PartitionId::SELF,
        vp_index: VpIndex(vp),
        target_vtl: vtl,
        rsvdz: [0; 3],
        vp_context: ctx64(rip, rsp),
    }
    .as_bytes()
    .to_vec()
}

fn setup_guest(p: &Partition) {
    // SAFETY: the statics are symbols the global_asm! above defines (read only
    // by address here); `blob` reads the bytes between them.
    let (vp0, vp1, vtl1) = unsafe {
        (
            blob(&hvkvm_vsm_aps_vp0_start, &hvkvm_vsm_aps_vp0_end),
            blob(&hvkvm_vsm_aps_vp1_start, &hvkvm_vsm_aps_vp1_end),
            blob(&hvkvm_vsm_aps_vtl1_start, &hvkvm_vsm_aps_vtl1_end),
        )
    };
    put(p, CODE, vp0);
    put(p, AP_CODE, vp1);
    put(p, VTL1_CODE, vtl1);
    // Real mode at the SIPI vector: report, then done.
    put(
        p,
        SIPI_CODE,
        &[
            0xB0,
            0x7E,
            0xE6,
            SIPI_PORT as u8,
            0xE6,
            DONE as u8,
            0xEB,
            0xFE,
        ],
    );
    put(p, DATA + 0x100, &enable_input(0, VTL1_CODE, vtl1_stack(0)));
    put(p, DATA + 0x200, &enable_input(1, VTL1_CODE, vtl1_stack(1)));
    // VP 2's EnableVpVtl context is replaced by its start context.
    put(p, DATA + 0x300, &enable_input(2, 0xDEAD_0000, 0));
    put(
        p,
        DATA + 0x400,
        &start_input(1, Vtl::VTL0, AP_CODE, stack(1)),
    );
    put(
        p,
        DATA + 0x500,
        &start_input(2, Vtl::VTL1, VTL1_CODE, vtl1_stack(2)),
    );
    put(p, DATA + 0x600, &start_input(1, Vtl::VTL1, VTL1_CODE, 0));
    // GetVpRegisters(self, VsmVpStatus).
    put(p, DATA + 0x700, &registers_input(0, &[0x000D_0003]));
}

#[test]
fn vtl1_on_aps_by_enable_vp_vtl_and_start_and_init_sipi_to_vtl0_is_dropped() {
    let p = vsm_partition(3, Vtl::VTL0, Vtl::VTL1);
    setup_guest(&p);
    let (tx, rx) = channel();
    let mut threads = vec![];
    for i in 0..3 {
        let mut v = p.create_vp(vp(i)).unwrap();
        if i == 0 {
            v.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
        }
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || run_reporting(v, tx)));
    }
    drop(tx);
    p.set_explicit_suspend(vp(0), false).unwrap();
    for i in 1..3 {
        p.set_explicit_suspend(vp(i), false).unwrap();
    }
    // Every VP writes DONE; a SIPI that restarted VP 1 would leave VP 0
    // waiting for a flag, so a report on the SIPI port (or no progress for a
    // minute) ends the run.
    let mut got = vec![];
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(r) => {
                let stop = r.port == SIPI_PORT;
                got.push(r);
                if stop {
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => break,
        }
        if Instant::now() > deadline {
            break;
        }
    }
    for i in 0..3 {
        p.cancel_run(vp(i)).unwrap();
    }
    for t in threads {
        t.join().expect("VP thread");
    }
    let of = |vp: u32, port: u16| -> Vec<u32> {
        got.iter()
            .filter(|r| r.vp == vp && r.port == port)
            .map(|r| r.value)
            .collect()
    };
    let status = |vp: u32, port: u16| -> HvStatus {
        let v = of(vp, port);
        assert_eq!(v.len(), 1, "VP {vp} port {port:#x}: {v:x?} (all: {got:x?})");
        HvStatus(v[0] as u16)
    };
    let value = |gpa: u64| -> u64 { p.memory().read_obj(GuestAddress(gpa)).unwrap() };
    assert!(
        of(1, SIPI_PORT).is_empty(),
        "an INIT/SIPI to VP 1's VTL 0 restarted it though VTL 1 is enabled on it: {got:x?}"
    );
    // VP 0 (VTL 0): EnablePartitionVtl, EnableVpVtl(self), StartVP(VP 1, VTL 0).
    assert_eq!(status(0, 0x30), HvStatus::SUCCESS);
    assert_eq!(status(0, 0x31), HvStatus::SUCCESS);
    assert_eq!(status(0, 0x32), HvStatus::SUCCESS);
    // VP 0's VTL 1: HvCallEnableVpVtl on other VPs from VTL 1 (TLFS
    // HvCallEnableVpVtl: a VTL may enable its own VTL on another VP).
    assert_eq!(status(0, 0x40), HvStatus::SUCCESS);
    assert_eq!(status(0, 0x41), HvStatus::SUCCESS);
    // HvCallStartVirtualProcessor with target VTL 1 ("the only method for
    // starting a VP in a non-zero VTL"), then on VP 1, which is started.
    assert_eq!(status(0, 0x42), HvStatus::SUCCESS);
    assert_eq!(status(0, 0x43), HvError::INVALID_VP_STATE.status());
    // VP 0's VTL 0 after the fast return: RBX is shared.
    assert_eq!(of(0, 0x33), vec![0xC0DE]);
    assert_eq!(of(0, DONE).len(), 1, "{got:x?}");
    // VP 1's VTL 0 started at its context, its VTL 1 first entered by its
    // VTL call at the EnableVpVtl context's RIP with VTL 0's RBX (shared).
    assert_eq!(of(1, 0x60), vec![1]);
    assert_eq!(of(1, 0x50), vec![0x1234]);
    assert_eq!(status(1, 0x51), HvStatus::SUCCESS);
    // VsmVpStatus on VP 1 in VTL 1: ActiveVtl 1, EnabledVtlSet {0, 1}.
    assert_eq!(value(DATA + 0x1010), 1 | (0b11 << 16));
    // VP 1's VTL 0 resumed after its call sequence with VTL 1's RBX: the
    // INIT and SIPI sent while VTL 1 ran were dropped.
    assert_eq!(of(1, 0x61), vec![0x5678], "{got:x?}");
    assert_eq!(of(1, DONE).len(), 1, "{got:x?}");
    // VP 2 started in VTL 1 at its start context (not the EnableVpVtl one):
    // ActiveVtl 1, its start RSP.
    assert_eq!(status(2, 0x70), HvStatus::SUCCESS);
    assert_eq!(value(DATA + 0x1020), 1 | (0b11 << 16));
    assert_eq!(of(2, 0x71), vec![vtl1_stack(2) as u32]);
    let s2 = p.vp_state(vp(2)).unwrap();
    assert_eq!(s2.active_vtl(), Vtl::VTL1, "{s2:?}");
    let s1 = p.vp_state(vp(1)).unwrap();
    assert_eq!(s1.active_vtl(), Vtl::VTL0, "{s1:?}");
}
