//! A guest that drives the partition with hypercalls through the hypercall page,
//! on the real `/dev/kvm`: the Linux VTL2 AP bring-up sequence, and every error
//! path with its exact HV_STATUS while the other VPs keep running.

mod common;

use std::sync::mpsc::channel;
use std::thread;

use common::*;
use hv_defs::{
    HvStatus, HypercallCode, InitialVpContext, PartitionId, StartVirtualProcessorInput, VpIndex,
    Vtl,
};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::IntoBytes;

const GUEST_OS_ID: u64 = 0x8100_0000_0000_0000;

fn start_input(vp: VpIndex, vtl: Vtl, ctx: InitialVpContext) -> StartVirtualProcessorInput {
    StartVirtualProcessorInput {
        partition_id: PartitionId::SELF,
        vp_index: vp,
        target_vtl: vtl,
        rsvdz: [0; 3],
        vp_context: ctx,
    }
}

/// A rep-call control word.
fn rep(code: u64, count: u64) -> u64 {
    code | (count << 32)
}

fn enable_hypercalls() -> Asm {
    Asm::default()
        .wrmsr(0x4000_0000, GUEST_OS_ID)
        .wrmsr(0x4000_0001, HYPERCALL_PAGE | 1)
}

/// Runs VP0 with `code` and VPs 1..max as APs that report when started; returns
/// the ordered port writes of each VP.
fn run_guest(
    p: &std::sync::Arc<hv_partition::Partition>,
    max: u32,
    code: &[u8],
) -> Vec<Vec<(u16, u32)>> {
    put(p, CODE, code);
    put(p, AP_CODE, &report_code());
    let mut txs = vec![];
    let mut threads = vec![];
    let mut rxs = vec![];
    for i in 0..max {
        let mut v = p.create_vp(vp(i)).unwrap();
        if i == 0 {
            v.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
        }
        let (tx, rx) = channel();
        rxs.push(rx);
        txs.push(tx.clone());
        threads.push(thread::spawn(move || run_reporting(v, tx)));
    }
    // Release every VP once all exist, as a TLFS parent does.
    for i in 0..max {
        p.set_explicit_suspend(vp(i), false).unwrap();
    }
    // VP0 finishes first; APs that were never started are canceled.
    let vp0: Vec<_> = rxs[0]
        .iter()
        .take_while(|r| r.port != DONE)
        .map(|r| (r.port, r.value))
        .collect();
    let mut out = vec![vp0];
    for i in 1..max {
        let started = p.vp_state(vp(i)).unwrap().started();
        if started {
            out.push(
                rxs[i as usize]
                    .iter()
                    .take_while(|r| r.port != DONE)
                    .map(|r| (r.port, r.value))
                    .collect(),
            );
        } else {
            out.push(vec![]);
        }
        p.cancel_run(vp(i)).unwrap();
    }
    drop(txs);
    for t in threads {
        t.join().unwrap();
    }
    out
}

#[test]
fn vp0_starts_the_aps_the_way_linux_vtl2_does() {
    let p = partition(4, Some(Vtl::VTL2));
    // GetVpRegisters(VsmVpStatus) with output == input, as Linux's get_vtl() does.
    let mut getvtl = vec![];
    getvtl.extend(PartitionId::SELF.0.to_le_bytes());
    getvtl.extend(VpIndex::SELF.0.to_le_bytes());
    getvtl.extend([0u8; 4]);
    getvtl.extend(0x000D_0003u32.to_le_bytes());
    put(&p, DATA, &getvtl);
    // The RAM the hypercall page will cover.
    put(&p, HYPERCALL_PAGE, &[0x77; 4096]);
    let mut code = enable_hypercalls()
        .hypercall(rep(0x50, 1), DATA, DATA, 0x20)
        .load_eax(DATA)
        .out(0x22);
    for i in 1..4u32 {
        let page = DATA + 0x1000 * i as u64;
        // GetVpIndexFromApicId: output at input + 24, as Linux places it.
        let mut apic = vec![];
        apic.extend(PartitionId::SELF.0.to_le_bytes());
        apic.extend([0u8; 8]);
        apic.extend(i.to_le_bytes());
        put(&p, page, &apic);
        let start = start_input(vp(i), Vtl::VTL2, ctx64(AP_CODE, stack(i)));
        put(&p, page + 0x800, start.as_bytes());
        code = code
            .hypercall(rep(0x9A, 1), page, page + 24, 0x24)
            .load_eax(page + 24)
            .out(0x26)
            .hypercall(0x0F, page + 0x800, 0, 0x28)
            .hypercall(0x99, page + 0x800, 0, 0x2A);
    }
    let code = code.out(DONE as u8).spin().0;
    let reports = run_guest(&p, 4, &code);

    // HvRegisterVsmVpStatus (TLFS VSM registers): ActiveVtl 2 in bits 3:0,
    // EnabledVtlSet {0, 2} in bits 31:16.
    let mut want = vec![(0x20, 0), (0x21, 1), (0x22, 0x0005_0002)];
    for i in 1..4 {
        want.extend([
            (0x24, 0),
            (0x25, 1),
            (0x26, i),
            (0x28, 0),
            (0x29, 0),
            (0x2A, 0),
            (0x2B, 0),
        ]);
    }
    assert_eq!(reports[0], want, "VP0's hypercall results");
    for i in 1..4u32 {
        assert_eq!(
            reports[i as usize],
            vec![(0x10, i), (0x11, stack(i) as u32), (0x12, 0x1122_3344)],
            "AP {i}"
        );
        let s = p.vp_state(vp(i)).unwrap();
        assert_eq!(s.active_vtl(), Vtl::VTL2);
    }
    // The hypercall page is an overlay (TLFS "Establishing the Hypercall
    // Interface"): the RAM beneath it is not written.
    let mut page = [0u8; 4096];
    p.memory()
        .read_slice(&mut page, GuestAddress(HYPERCALL_PAGE))
        .unwrap();
    assert!(page.iter().all(|&b| b == 0x77));
    assert_eq!(p.hypercall_overlay(), Some(HYPERCALL_PAGE));
    let stats = p.stats();
    assert_eq!(
        stats.hypercall_count(HypercallCode::START_VIRTUAL_PROCESSOR),
        3
    );
    assert_eq!(stats.hypercall_count(HypercallCode::ENABLE_VP_VTL), 3);
    assert_eq!(
        stats.hypercall_count(HypercallCode::GET_VP_INDEX_FROM_APIC_ID),
        3
    );
    assert_eq!(stats.hypercall_count(HypercallCode::GET_VP_REGISTERS), 1);
    for code in [
        HypercallCode::START_VIRTUAL_PROCESSOR,
        HypercallCode::ENABLE_VP_VTL,
    ] {
        assert_eq!(stats.hypercall_counter(code).failed, 0, "{code:?}");
    }
    assert!(format!("{stats}").contains("START_VIRTUAL_PROCESSOR (0x0099)"));
}

#[test]
fn hostile_hypercalls_get_their_status_and_the_partition_keeps_running() {
    let p = partition(4, Some(Vtl::VTL2));
    let ctx = ctx64(AP_CODE, stack(1));
    let base = DATA;
    let pages: Vec<(u64, Vec<u8>)> = vec![
        (base, start_input(vp(1), Vtl::VTL2, ctx).as_bytes().to_vec()),
        (base + 0x100, {
            let mut i = start_input(vp(1), Vtl::VTL2, ctx);
            i.vp_context.rip = 0x0000_8000_0000_0000;
            i.as_bytes().to_vec()
        }),
        (base + 0x200, {
            let mut i = start_input(vp(1), Vtl::VTL2, ctx);
            i.partition_id = PartitionId(0x1234);
            i.as_bytes().to_vec()
        }),
        (
            base + 0x300,
            start_input(vp(7), Vtl::VTL2, ctx).as_bytes().to_vec(),
        ),
        (
            base + 0x400,
            start_input(vp(0), Vtl::VTL2, ctx).as_bytes().to_vec(),
        ),
        (
            base + 0x500,
            start_input(VpIndex::SELF, Vtl::VTL2, ctx)
                .as_bytes()
                .to_vec(),
        ),
        (
            base + 0x600,
            start_input(vp(1), Vtl(3), ctx).as_bytes().to_vec(),
        ),
        (base + 0x700, {
            let mut i = start_input(vp(1), Vtl::VTL2, ctx);
            i.rsvdz = [0, 1, 0];
            i.as_bytes().to_vec()
        }),
        // GetVpIndexFromApicId for APIC ids 1, 0x55 (none), 2.
        (
            base + 0x800,
            [
                &PartitionId::SELF.0.to_le_bytes()[..],
                &[0; 8],
                &1u32.to_le_bytes(),
                &0x55u32.to_le_bytes(),
                &2u32.to_le_bytes(),
            ]
            .concat(),
        ),
        // GetVpRegisters of an unknown name; of VP 2's RIP; of VP 2's VP index.
        (
            base + 0x900,
            [
                &PartitionId::SELF.0.to_le_bytes()[..],
                &VpIndex::SELF.0.to_le_bytes(),
                &[0; 4],
                &0x7777u32.to_le_bytes(),
            ]
            .concat(),
        ),
        (
            base + 0x980,
            [
                &PartitionId::SELF.0.to_le_bytes()[..],
                &2u32.to_le_bytes(),
                &[0; 4],
                &0x0002_0010u32.to_le_bytes(),
            ]
            .concat(),
        ),
        (
            base + 0xA00,
            [
                &PartitionId::SELF.0.to_le_bytes()[..],
                &2u32.to_le_bytes(),
                &[0; 4],
                &0x0009_0003u32.to_le_bytes(),
            ]
            .concat(),
        ),
        // SetVpRegisters of the read-only VP index.
        (
            base + 0xB00,
            [
                &PartitionId::SELF.0.to_le_bytes()[..],
                &VpIndex::SELF.0.to_le_bytes(),
                &[0; 4],
                &0x0009_0003u32.to_le_bytes(),
                &[0; 12],
                &1u64.to_le_bytes(),
                &[0; 8],
            ]
            .concat(),
        ),
        // SetVpRegisters: VP 2's explicit suspend (kept by the VP model).
        (
            base + 0xC00,
            [
                &PartitionId::SELF.0.to_le_bytes()[..],
                &2u32.to_le_bytes(),
                &[0; 4],
                &0u32.to_le_bytes(),
                &[0; 12],
                &1u64.to_le_bytes(),
                &[0; 8],
            ]
            .concat(),
        ),
        // GetVpRegisters(VpIndex) with input VTL 3 (above), 0 (below), 2 (own).
        (
            base + 0xC80,
            [
                &PartitionId::SELF.0.to_le_bytes()[..],
                &VpIndex::SELF.0.to_le_bytes(),
                &[0x13, 0, 0, 0],
                &0x0009_0003u32.to_le_bytes(),
            ]
            .concat(),
        ),
        (
            base + 0xD00,
            [
                &PartitionId::SELF.0.to_le_bytes()[..],
                &VpIndex::SELF.0.to_le_bytes(),
                &[0x10, 0, 0, 0],
                &0x0009_0003u32.to_le_bytes(),
            ]
            .concat(),
        ),
        (
            base + 0xD80,
            [
                &PartitionId::SELF.0.to_le_bytes()[..],
                &VpIndex::SELF.0.to_le_bytes(),
                &[0x12, 0, 0, 0],
                &0x0009_0003u32.to_le_bytes(),
            ]
            .concat(),
        ),
        // GetVpIndexFromApicId for APIC ids 0x55 (none) and 3, started at rep 1.
        (
            base + 0xE00,
            [
                &PartitionId::SELF.0.to_le_bytes()[..],
                &[0; 8],
                &0x55u32.to_le_bytes(),
                &3u32.to_le_bytes(),
            ]
            .concat(),
        ),
        // A good StartVP input whose 240 bytes cross into the next page.
        (
            base + 0x1000 - 232,
            start_input(vp(1), Vtl::VTL2, ctx).as_bytes().to_vec(),
        ),
    ];
    for (gpa, bytes) in &pages {
        put(&p, *gpa, bytes);
    }
    let out = base + 0x2000;
    let outside = 0x1_0000_0000u64;
    let cases: Vec<(&str, u64, u64, u64, u16, u32)> = vec![
        ("unknown call code", 0x1234, base, 0, 0x02, 0),
        ("reserved control bit", 0x46 | (1 << 27), 0, out, 0x03, 0),
        ("rep count on a simple call", rep(0x99, 1), base, 0, 0x03, 0),
        ("rep call with no reps", 0x9A, base + 0x800, out, 0x03, 0),
        (
            "rep start not below count",
            rep(0x9A, 1) | (1 << 48),
            base + 0x800,
            out,
            0x03,
            0,
        ),
        ("fast StartVP", 0x99 | (1 << 16), base, 0, 0x03, 0),
        (
            "variable header on StartVP",
            0x99 | (1 << 17),
            base,
            0,
            0x03,
            0,
        ),
        ("misaligned input", 0x99, base + 4, 0, 0x04, 0),
        // TLFS Hypercall Interface, "Common Hypercall Status Codes": a list that
        // spans pages or a GPA outside the GPA space is HV_STATUS_INVALID_ALIGNMENT.
        (
            "input crosses a page",
            0x99,
            base + 0x1000 - 232,
            0,
            0x04,
            0,
        ),
        ("input outside guest RAM", 0x99, outside, 0, 0x04, 0),
        ("output outside guest RAM", 0x46, 0, RAM, 0x04, 0),
        (
            "misaligned output",
            rep(0x50, 1),
            base + 0xA00,
            out + 4,
            0x04,
            0,
        ),
        ("another partition", 0x99, base + 0x200, 0, 0x06, 0),
        ("VP out of range", 0x99, base + 0x300, 0, 0x0E, 0),
        ("start the caller", 0x99, base + 0x400, 0, 0x05, 0),
        ("start HV_VP_INDEX_SELF", 0x99, base + 0x500, 0, 0x05, 0),
        ("VTL above the caller's", 0x99, base + 0x600, 0, 0x06, 0),
        ("VTL not enabled on the target", 0x99, base, 0, 0x15, 0),
        ("reserved input bytes", 0x99, base + 0x700, 0, 0x05, 0),
        ("enable VTL 2 on VP 1", 0x0F, base, 0, 0x00, 0),
        ("enable it again", 0x0F, base, 0, 0x86, 0),
        ("non-canonical RIP", 0x99, base + 0x100, 0, 0x50, 0),
        ("start VP 1", 0x99, base, 0, 0x00, 0),
        ("start VP 1 again", 0x99, base, 0, 0x15, 0),
        (
            "unknown APIC id at rep 1",
            rep(0x9A, 3),
            base + 0x800,
            out,
            0x05,
            1,
        ),
        (
            "unknown register name",
            rep(0x50, 1),
            base + 0x900,
            out,
            0x05,
            0,
        ),
        ("another VP's RIP", rep(0x50, 1), base + 0x980, out, 0x15, 0),
        (
            "another VP's VP index",
            rep(0x50, 1),
            base + 0xA00,
            out,
            0x00,
            1,
        ),
        (
            "write a read-only register",
            rep(0x51, 1),
            base + 0xB00,
            0,
            0x05,
            0,
        ),
        ("suspend another VP", rep(0x51, 1), base + 0xC00, 0, 0x00, 1),
        (
            "input VTL above the caller's",
            rep(0x50, 1),
            base + 0xC80,
            out + 0x300,
            0x06,
            0,
        ),
        // HvRegisterVpIndex is the same in every VTL of the VP: served for a
        // lower input VTL (TLFS HV_INPUT_VTL; "Virtual Secure Mode").
        (
            "a shared register at an input VTL below the caller's",
            rep(0x50, 1),
            base + 0xD00,
            out + 0x300,
            0x00,
            1,
        ),
        (
            "input VTL the caller's own",
            rep(0x50, 1),
            base + 0xD80,
            out + 0x300,
            0x00,
            1,
        ),
        (
            "rep start index 1",
            rep(0x9A, 2) | (1 << 48),
            base + 0xE00,
            out + 0x200,
            0x00,
            2,
        ),
        // VTL 3 is not enabled for the partition (an x64 partition has VTLs 0
        // to 2): TLFS HvCallEnableVpVtl, "it must first be enabled for the
        // partition".
        (
            "enable a VTL the partition has not enabled",
            0x0F,
            base + 0x600,
            0,
            0x05,
            0,
        ),
        ("partition id", 0x46, 0, out + 0x100, 0x00, 0),
        ("long spin wait", 0x08 | (1 << 16), 1, 0, 0x00, 0),
        ("extended call not offered", 0x8001, 0, out, 0x02, 0),
    ];
    let mut code = enable_hypercalls();
    for &(_, control, input, output, _, _) in &cases {
        code = code.hypercall(control, input, output, 0x20);
    }
    let code = code.load_eax(out).out(0x22).out(DONE as u8).spin().0;
    let reports = run_guest(&p, 4, &code);

    let got = &reports[0];
    assert_eq!(got.len(), 2 * cases.len() + 1);
    for (k, &(what, _, _, _, status, reps)) in cases.iter().enumerate() {
        let (s, r) = (got[2 * k].1 as u16, got[2 * k + 1].1);
        assert_eq!(
            (HvStatus(s), r),
            (HvStatus(status), reps),
            "case {k}: {what}"
        );
    }
    assert_eq!(got.last().unwrap().1, 2, "VP 2's index read by VP 0");
    // Of the hostile sequence's StartVirtualProcessor calls, only "start VP 1" worked.
    let starts = p
        .stats()
        .hypercall_counter(HypercallCode::START_VIRTUAL_PROCESSOR);
    assert_eq!(starts.failed, starts.count - 1, "{starts:?}");
    let mut id = [0u8; 8];
    p.memory()
        .read_slice(&mut id, GuestAddress(out + 0x100))
        .unwrap();
    assert_eq!(u64::from_le_bytes(id), p.id().0);
    // VP 1, started in the middle of the hostile sequence, ran normally.
    assert_eq!(
        reports[1],
        vec![(0x10, 1), (0x11, stack(1) as u32), (0x12, 0x1122_3344)]
    );
    assert!(
        reports[2].is_empty() && reports[3].is_empty(),
        "VP 2 and 3 were never started"
    );
}

#[test]
fn cpuid_masks_hide_features() {
    let mask = hv_partition::CpuidMask {
        function: 0x4000_0003,
        index: 0,
        clear: [1 << 11, 0, 0, 1 << 8],
    };
    let p = partition_with(1, Some(Vtl::VTL2), vec![mask]);
    let code = Asm::default()
        .cpuid(0x4000_0003)
        .out(0x33)
        .eax_from_edx()
        .out(0x34)
        .out(DONE as u8)
        .spin()
        .0;
    put(&p, CODE, &code);
    let mut v0 = p.create_vp(vp(0)).unwrap();
    v0.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();
    let (tx, rx) = channel();
    run_reporting(v0, tx);
    let got: Vec<(u16, u32)> = rx.iter().map(|r| (r.port, r.value)).collect();
    assert_eq!(&got[..2], &[(0x33, 0x8064), (0x34, 0)]);
}

#[test]
fn cpuid_leaves_and_synthetic_msrs_seen_by_the_guest() {
    let p = partition(3, Some(Vtl::VTL2));
    let code = Asm::default()
        .cpuid(0x4000_0000)
        .out(0x30) // max leaf
        .eax_from_ebx()
        .out(0x31) // "Micr"
        .cpuid(0x4000_0001)
        .out(0x32) // "Hv#1"
        .cpuid(0x4000_0003)
        .out(0x33) // features
        .eax_from_edx()
        .out(0x34)
        .cpuid(0x4000_0005)
        .out(0x35) // max VPs
        .cpuid(1)
        .eax_from_ebx()
        .out(0x36) // APIC id in 31:24
        .rdmsr(0x4000_0022)
        .out(0x40) // TSC frequency (low half)
        .rdmsr(0x4000_0023)
        .out(0x41) // APIC frequency
        .rdmsr(0x4000_0001)
        .out(0x42) // hypercall MSR before enabling
        .wrmsr(0x4000_0001, HYPERCALL_PAGE | 1) // ignored: no guest OS id yet
        .rdmsr(0x4000_0001)
        .out(0x43)
        .wrmsr(0x4000_0000, GUEST_OS_ID)
        .rdmsr(0x4000_0000)
        .eax_from_edx()
        .out(0x44)
        .wrmsr(0x4000_0001, HYPERCALL_PAGE | 1)
        .rdmsr(0x4000_0001)
        .out(0x45)
        .wrmsr(0x4000_0073, 0x7_F001)
        .rdmsr(0x4000_0073)
        .out(0x46)
        .wrmsr(0x4000_0118, 1)
        .rdmsr(0x4000_0118)
        .out(0x47)
        .rdmsr(0x4000_0002)
        .out(0x48)
        // An MSR of the synthetic range that is not offered: #GP, which with no IDT
        // ends this VP in a triple fault.
        .rdmsr(0x4000_0020)
        .out(0x4F)
        .0;
    put(&p, CODE, &code);
    let mut v0 = p.create_vp(vp(0)).unwrap();
    v0.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    let _v1 = p.create_vp(vp(1)).unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();
    let mut got = vec![];
    let end = loop {
        match v0.run() {
            hv_partition::VpExit::IoPortAccess {
                port,
                access: hv_partition::Access::Write(d),
            } => got.push((port, u32::from_le_bytes(d[..4].try_into().unwrap()))),
            other => break format!("{other:?}"),
        }
    };
    assert_eq!(end, "UnrecoverableException", "the #GP on an unoffered MSR");
    let get = |port| {
        got.iter()
            .find(|(p, _)| *p == port)
            .map(|&(_, v)| v)
            .unwrap()
    };
    assert_eq!(get(0x30), 0x4000_0005);
    assert_eq!(get(0x31), 0x7263_694D);
    assert_eq!(get(0x32), 0x3123_7648);
    assert_eq!(get(0x33), 0x8864);
    assert_eq!(get(0x34), 0x100);
    assert_eq!(get(0x35), 3);
    assert_eq!(get(0x36) >> 24, 0);
    assert_ne!(get(0x40), 0, "TSC frequency");
    assert_eq!(get(0x41), 1_000_000_000);
    assert_eq!(get(0x42), 0);
    assert_eq!(
        get(0x43),
        HYPERCALL_PAGE as u32,
        "enable ignored without a guest OS id"
    );
    assert_eq!(get(0x44), 0x8100_0000);
    assert_eq!(get(0x45), HYPERCALL_PAGE as u32 | 1);
    assert_eq!(get(0x46), 0x7_F001);
    assert_eq!(get(0x47), 1);
    assert_eq!(get(0x48), 0);
    assert!(!got.iter().any(|(p, _)| *p == 0x4F));
}
