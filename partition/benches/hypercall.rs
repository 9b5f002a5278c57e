//! A guest looping a null hypercall (HvCallNotifyLongSpinWait through the hypercall
//! page) next to the same guest loop calling a page that exits with a bare port
//! write. The guest instructions are identical; only what the VMM does per exit
//! differs. One iteration is a batch of 100 exits: divide by 100 for one.
//! The third case is a VTL call into VTL 1 and its VTL return (two VTL
//! switches, each a completion KVM_RUN, the shared-state copy and the other
//! vCPU's KVM_RUN) per iteration of the same loop.
//!
//! `cargo bench -p partition --bench hypercall` (needs /dev/kvm).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hv_defs::{
    HvRegisterValue, InitialVpContext, SegmentAttributes, SegmentRegister, TableRegister, VpIndex,
    Vtl,
};
use hv_partition::{Access, HyperVConfig, Partition, PartitionConfig, Vp, VpExit};
use hv_regs::HvRegisterName as N;
use vm_memory::{Bytes, GuestAddress};

const BATCH: u64 = 100;
const HYPERCALL_PAGE: u64 = 0x5000;
const BARE_PAGE: u64 = 0x6000;
const GDT: u64 = 0x8000;
const PML4: u64 = 0x9000;
const CODE: u64 = 0x10000;
const STACK: u64 = 0x20FF0;
const DONE_PORT: u8 = 0x21;

fn seg(selector: u16, attr: u16) -> SegmentRegister {
    SegmentRegister {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        attributes: SegmentAttributes(attr),
    }
}

fn registers(rip: u64) -> Vec<(N, HvRegisterValue)> {
    let c = InitialVpContext {
        cs: seg(0x10, 0xA09B),
        ss: seg(0x18, 0xC093),
        ds: seg(0x18, 0xC093),
        tr: SegmentRegister {
            base: 0x7000,
            limit: 0x67,
            selector: 0,
            attributes: SegmentAttributes(0x8B),
        },
        gdtr: TableRegister {
            pad: [0; 3],
            limit: 0x1F,
            base: GDT,
        },
        ..Default::default()
    };
    vec![
        (N::CR0, 0x8005_0033u64.into()),
        (N::CR3, PML4.into()),
        (N::CR4, 0x20u64.into()),
        (N::EFER, 0xD00u64.into()),
        (N::CS, c.cs.into()),
        (N::SS, c.ss.into()),
        (N::DS, c.ds.into()),
        (N::TR, c.tr.into()),
        (N::GDTR, c.gdtr.into()),
        (N::RIP, rip.into()),
        (N::RSP, STACK.into()),
        (N::RFLAGS, 2u64.into()),
    ]
}

/// start: mov rbx, BATCH; loop: mov rcx, control; mov rax, page; call rax;
/// dec rbx; jnz loop; out DONE_PORT, eax; jmp start
fn loop_code(page: u64, control: u64) -> Vec<u8> {
    let mut c = vec![0x48, 0xBB];
    c.extend(BATCH.to_le_bytes());
    let top = c.len();
    c.extend([0x48, 0xB9]);
    c.extend(control.to_le_bytes());
    c.extend([0x48, 0xB8]);
    c.extend(page.to_le_bytes());
    c.extend([0xFF, 0xD0, 0x48, 0xFF, 0xCB, 0x75]);
    c.push((top as i64 - (c.len() as i64 + 1)) as u8);
    c.extend([0xE7, DONE_PORT, 0xE9]);
    c.extend((-(c.len() as i32 + 4)).to_le_bytes());
    c
}

fn setup() -> (Arc<Partition>, Vp) {
    let p = Partition::new(PartitionConfig {
        max_vps: 1,
        memory: vec![(0, 4 << 20)],
        hyperv: Some(HyperVConfig {
            boot_vtl: Vtl::VTL0,
            max_vtl: Vtl::VTL1,
        }),
        cpuid_masks: vec![],
    })
    .expect("the benchmark needs /dev/kvm");
    let m = p.memory();
    m.write_obj(0xA003u64, GuestAddress(PML4)).unwrap();
    m.write_obj(0xB003u64, GuestAddress(0xA000)).unwrap();
    m.write_obj(0x83u64, GuestAddress(0xB000)).unwrap();
    m.write_obj(
        [0u64, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF],
        GuestAddress(GDT),
    )
    .unwrap();
    m.write_slice(&[0xE7, 0x22, 0xC3], GuestAddress(BARE_PAGE))
        .unwrap();
    let vp = p.create_vp(VpIndex(0)).unwrap();
    (p, vp)
}

/// Runs until the guest reports a finished batch; bare exits go back to the guest.
fn batch(vp: &mut Vp) {
    loop {
        match vp.run() {
            VpExit::IoPortAccess {
                port,
                access: Access::Write(_),
            } if port == DONE_PORT as u16 => return,
            VpExit::IoPortAccess { port: 0x22, .. } => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("exit round trip");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(20);
    for (name, page, control, hyperv_setup) in [
        ("bare port-I/O exit", BARE_PAGE, NULL_CALL, false),
        ("null hypercall", HYPERCALL_PAGE, NULL_CALL, true),
        ("VTL call + VTL return", HYPERCALL_PAGE + 0x10, 0, true),
    ] {
        let (p, mut vp) = setup();
        p.memory()
            .write_slice(&loop_code(page, control), GuestAddress(CODE))
            .unwrap();
        vp.set_registers(&registers(CODE)).unwrap();
        p.set_explicit_suspend(VpIndex(0), false).unwrap();
        if hyperv_setup {
            // Enable the hypercall page the way a guest does, through the MSRs,
            // by running a short prologue first.
            p.memory()
                .write_slice(&hypercall_prologue(0x5001), GuestAddress(CODE + 0x1000))
                .unwrap();
            vp.set_registers(&[(N::RIP, (CODE + 0x1000).into())])
                .unwrap();
            batch(&mut vp);
            vp.set_registers(&[(N::RIP, CODE.into())]).unwrap();
        }
        if control == 0 {
            // VTL 1: its own hypercall page at 0x4000, then a loop of VTL
            // returns (each VTL call resumes it after the return sequence).
            let mut vtl1 = hypercall_prologue(0x4001);
            vtl1.truncate(vtl1.len() - 2);
            vtl1.extend([0x31, 0xC9, 0xB8, 0x20, 0x40, 0, 0, 0xFF, 0xD0, 0xEB, 0xF5]);
            p.memory()
                .write_slice(&vtl1, GuestAddress(CODE + 0x2000))
                .unwrap();
            p.enable_partition_vtl(Vtl::VTL1).unwrap();
            let ctx = InitialVpContext::long_mode(CODE + 0x2000, STACK - 0x800, PML4)
                .with_gdt(GDT, 0x1F)
                .with_tss(0x7000);
            p.enable_vp_vtl(VpIndex(0), Vtl::VTL1, &ctx).unwrap();
        }
        g.bench_function(name, |b| b.iter(|| batch(&mut vp)));
        let s = p.stats();
        eprintln!("{name}: {s}");
        if control == 0 {
            split(&p, &mut vp);
        }
    }
    g.finish();
}

/// The VTL round trip's cost split, from batches timed here and the
/// partition's switch phases over the same batches: the two completions, the
/// two shared-state copies, and the rest (both VTLs' KVM_RUNs with their
/// trap decode).
fn split(p: &Partition, vp: &mut Vp) {
    const BATCHES: u32 = 50;
    let before = p.stats().vtl_switches();
    let start = Instant::now();
    for _ in 0..BATCHES {
        batch(vp);
    }
    let round_trip = start.elapsed().as_secs_f64() * 1e6 / (BATCHES as f64 * BATCH as f64);
    let after = p.stats().vtl_switches();
    let per = |a: Duration, b: Duration, n: u64| (a - b).as_secs_f64() * 1e6 / n as f64;
    let n = after.completion.count - before.completion.count;
    let completion = per(after.completion.time, before.completion.time, n);
    let copy = per(after.copy.time, before.copy.time, n);
    eprintln!(
        "VTL round trip split: {round_trip:.2} us = 2 x {completion:.2} completion + \
         2 x {copy:.2} shared-state copy + {:.2} the two VTLs' KVM_RUNs and trap decode",
        round_trip - 2.0 * (completion + copy)
    );
}

/// HvCallNotifyLongSpinWait, fast.
const NULL_CALL: u64 = 0x1_0008;

/// wrmsr GUEST_OS_ID = 0x8100_0000_0000_0000; wrmsr HYPERCALL = `msr`; out
/// DONE_PORT.
fn hypercall_prologue(msr: u32) -> Vec<u8> {
    let mut c = vec![
        0xB9, 0x00, 0x00, 0x00, 0x40, 0xB8, 0x00, 0x00, 0x00, 0x00, 0xBA, 0x00, 0x00, 0x00, 0x81,
        0x0F, 0x30, 0xB9, 0x01, 0x00, 0x00, 0x40, 0xB8,
    ];
    c.extend(msr.to_le_bytes());
    c.extend([0xBA, 0x00, 0x00, 0x00, 0x00, 0x0F, 0x30, 0xE7, DONE_PORT]);
    c
}

criterion_group!(benches, bench);
criterion_main!(benches);
