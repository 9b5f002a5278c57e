//! Soak: many consecutive partitions of a tiny 4-VP guest whose BSP starts its
//! three APs with HvCallEnableVpVtl + HvCallStartVirtualProcessor, in one
//! process. Every run must end the same way, and the process must not leak file
//! descriptors or threads, nor grow its resident memory.
//!
//! `HVKVM_SOAK_RUNS` sets the number of runs (CI: 100; by hand, e.g. 1000).

mod common;

use std::sync::mpsc::channel;

use common::*;
use hv_defs::{PartitionId, StartVirtualProcessorInput, Vtl};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::IntoBytes;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// Port writes of one VP, in order.
type Writes = Vec<(u16, u32)>;

/// One run: VP0 starts VPs 1-3 by hypercall; each AP reports its VP index.
/// Returns the ports VP0 wrote (the hypercall statuses) and each AP's reports.
fn one_run() -> (Writes, Vec<Writes>) {
    let p = partition(4, Some(Vtl::VTL2));
    let mut code = Asm::default()
        .wrmsr(0x4000_0000, 0x8100_0000_0000_0000)
        .wrmsr(0x4000_0001, HYPERCALL_PAGE | 1);
    for i in 1..4u32 {
        let input = StartVirtualProcessorInput {
            partition_id: PartitionId::SELF,
            vp_index: vp(i),
            target_vtl: Vtl::VTL2,
            rsvdz: [0; 3],
            vp_context: ctx64(AP_CODE, stack(i)),
        };
        let at = DATA + 0x1000 * i as u64;
        p.memory()
            .write_slice(input.as_bytes(), GuestAddress(at))
            .unwrap();
        code = code
            .hypercall(0x0F, at, 0, 0x28)
            .hypercall(0x99, at, 0, 0x2A);
    }
    let code = code.out(DONE as u8).spin().0;
    p.memory().write_slice(&code, GuestAddress(CODE)).unwrap();
    p.memory()
        .write_slice(&report_code(), GuestAddress(AP_CODE))
        .unwrap();
    let mut rxs = vec![];
    let mut threads = vec![];
    for i in 0..4 {
        let mut v = p.create_vp(vp(i)).unwrap();
        if i == 0 {
            v.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
        }
        let (tx, rx) = channel();
        rxs.push(rx);
        threads.push(std::thread::spawn(move || run_reporting(v, tx)));
    }
    for i in 0..4 {
        p.set_explicit_suspend(vp(i), false).unwrap();
    }
    let reports: Vec<Writes> = rxs
        .iter()
        .map(|rx| {
            rx.iter()
                .take_while(|r| r.port != DONE)
                .map(|r| (r.port, r.value))
                .collect()
        })
        .collect();
    for t in threads {
        drop(t.join().unwrap());
    }
    let mut aps = reports;
    let bsp = aps.remove(0);
    (bsp, aps)
}

#[test]
fn consecutive_4_vp_partitions_leak_nothing() {
    let runs: usize = std::env::var("HVKVM_SOAK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let want_bsp: Writes = (0..3)
        .flat_map(|_| [(0x28, 0), (0x29, 0), (0x2A, 0), (0x2B, 0)])
        .collect();
    // The first run initializes what lives for the process (the kick handler).
    let first = one_run();
    assert_eq!(first.0, want_bsp);
    let (fds, threads, rss_first) = (count("/proc/self/fd"), count("/proc/self/task"), rss_kib());
    let start = std::time::Instant::now();
    let mut failures = 0;
    for run in 0..runs {
        let (bsp, aps) = one_run();
        let ok = bsp == want_bsp
            && aps
                .iter()
                .enumerate()
                .all(|(i, r)| r.first() == Some(&(0x10, i as u32 + 1)) && r.len() == 3);
        if !ok {
            failures += 1;
            eprintln!("run {run}: BSP {bsp:x?}, APs {aps:x?}");
        }
    }
    let (fds_last, threads_last, rss_last) =
        (count("/proc/self/fd"), count("/proc/self/task"), rss_kib());
    eprintln!(
        "soak: {runs} runs in {:.1} s, {failures} failures; fds {fds} -> {fds_last}, \
         threads {threads} -> {threads_last}, RSS {rss_first} KiB -> {rss_last} KiB",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(failures, 0);
    assert_eq!(fds_last, fds, "file descriptors leaked");
    assert_eq!(threads_last, threads, "threads leaked");
    // Allocator slack, not growth per run: the bound does not scale with runs.
    assert!(
        rss_last <= rss_first + 8 * 1024,
        "RSS grew from {rss_first} KiB to {rss_last} KiB"
    );
}
