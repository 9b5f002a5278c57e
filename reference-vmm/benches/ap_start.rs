//! AP start latency by path: the tiny SMP guest of `tests/common/smp_guest.rs`
//! starts its APs one at a time through the ACPI MP wakeup mailbox (served with
//! StartVirtualProcessor), through HvCallEnableVpVtl + HvCallStartVirtualProcessor
//! (`--hyperv vtl2`), and through INIT/SIPI in KVM's local APIC, timing each AP
//! with the TSC from the BSP's request to the AP's first instruction.
//!
//! Rounds interleave the three paths (rotating which goes first) with an idle
//! gap; prints per vCPU count and path the median per-AP start (to the AP's
//! first instruction at the common 64-bit entry; for INIT/SIPI also to its
//! first real-mode instruction), the median total (first request to last
//! arrival), and the medians of the per-round ratios to INIT/SIPI.
//!
//! ```text
//! HVKVM_APSTART_VCPUS=2,4,8,16,32,64 HVKVM_APSTART_ROUNDS=11 \
//!   cargo bench -p reference-vmm --bench ap_start
//! ```
//! `HVKVM_APSTART_GAP_MS` is the idle gap between runs (default 100; a VM's
//! deferred clean-up takes longer in the nested tier). `HVKVM_APSTART_VMM` names
//! another reference-vmm binary (the nested tier runs the bench executable and the
//! VMM inside L1); `HVKVM_APSTART_BASELINE` names a second build whose runs are
//! interleaved with the first's (A/B), with ratios.

#[path = "../tests/common/smp_guest.rs"]
mod smp_guest;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The guest's TSC frequency: KVM's default for a new vCPU.
fn tsc_khz() -> f64 {
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    vcpu.get_tsc_khz().expect("KVM_GET_TSC_KHZ") as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

const KINDS: [(char, &str); 3] = [
    ('m', "mailbox+SVP"),
    ('h', "hypercall SVP"),
    ('s', "INIT/SIPI"),
];

/// One boot as the guest timed it.
#[derive(Clone, Debug)]
struct Run {
    /// Each AP's start, microseconds.
    per_ap_us: Vec<f64>,
    /// First request to last arrival, milliseconds.
    total_ms: f64,
    /// INIT/SIPI: each AP's first (real-mode) instruction, microseconds.
    first_us: Vec<f64>,
}

/// A VMM binary and a start path.
struct Variant {
    vmm: String,
    label: String,
    kind: usize,
    baseline: bool,
}

fn boot(v: &Variant, kernel: &str, vcpus: u32, khz: f64) -> Option<Run> {
    let args = smp_guest::args(kernel, KINDS[v.kind].0, vcpus, true);
    let out = Command::new(&v.vmm)
        .args(&args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let rep = smp_guest::parse(&String::from_utf8_lossy(&out.stdout));
    let us = |ticks: u64| ticks as f64 / khz * 1000.0;
    let per_ap_us: Vec<f64> = rep
        .aps
        .iter()
        .map(|a| a.ticks.map(us))
        .collect::<Option<_>>()?;
    if per_ap_us.len() as u32 != vcpus - 1 {
        return None;
    }
    Some(Run {
        per_ap_us,
        total_ms: us(rep.total?) / 1000.0,
        first_us: rep
            .aps
            .iter()
            .filter_map(|a| a.first_ticks.map(us))
            .collect(),
    })
}

/// The median over rounds of a / b.
fn ratio(a: &[Option<Run>], b: &[Option<Run>], f: fn(&Run) -> f64) -> f64 {
    median(
        a.iter()
            .zip(b)
            .filter_map(|(a, b)| Some(f(a.as_ref()?) / f(b.as_ref()?)))
            .collect(),
    )
}

fn main() {
    let env = |k: &str| std::env::var(k).ok();
    let rounds: usize = env("HVKVM_APSTART_ROUNDS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let sweep: Vec<u32> = env("HVKVM_APSTART_VCPUS")
        .unwrap_or_else(|| "2,4,8,16,32,64".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let gap = Duration::from_millis(
        env("HVKVM_APSTART_GAP_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
    );
    let vmm =
        env("HVKVM_APSTART_VMM").unwrap_or_else(|| env!("CARGO_BIN_EXE_reference-vmm").to_string());
    let mut variants: Vec<Variant> = (0..KINDS.len())
        .map(|kind| Variant {
            vmm: vmm.clone(),
            label: KINDS[kind].1.to_string(),
            kind,
            baseline: false,
        })
        .collect();
    // A/B: the same paths through another build, interleaved.
    if let Some(b) = env("HVKVM_APSTART_BASELINE") {
        for (kind, (_, name)) in KINDS.iter().enumerate() {
            variants.push(Variant {
                vmm: b.clone(),
                label: format!("{name} (base)"),
                kind,
                baseline: true,
            });
        }
    }
    let dir = std::env::temp_dir().join(format!("hvkvm-apstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kernel: PathBuf = dir.join("smp-guest.elf");
    std::fs::write(&kernel, smp_guest::image()).expect("write the SMP guest");
    let kernel = kernel.to_string_lossy().into_owned();
    let khz = tsc_khz();
    println!("ap_start: {rounds} interleaved rounds, TSC {khz} kHz, VMM {vmm}");
    println!(
        "{:>5} {:<22} {:>9} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "vcpus",
        "path",
        "first us",
        "per-AP us",
        "p90 us",
        "total ms",
        "AP/SIPI",
        "total/SIPI",
        "AP/base",
        "total/base"
    );
    for &vcpus in &sweep {
        let mut runs: Vec<Vec<Option<Run>>> = vec![vec![]; variants.len()];
        for round in 0..rounds {
            for k in 0..variants.len() {
                let i = (k + round) % variants.len();
                runs[i].push(boot(&variants[i], &kernel, vcpus, khz));
                std::thread::sleep(gap);
            }
        }
        for (i, v) in variants.iter().enumerate() {
            let ok: Vec<&Run> = runs[i].iter().flatten().collect();
            if ok.is_empty() {
                println!("{vcpus:>5} {:<22} (failed)", v.label);
                continue;
            }
            let mut all: Vec<f64> = ok.iter().flat_map(|r| r.per_ap_us.clone()).collect();
            all.sort_by(|a, b| a.total_cmp(b));
            let p90 = all[(all.len() * 9 / 10).min(all.len() - 1)];
            let per_ap = |r: &Run| median(r.per_ap_us.clone());
            let total = |r: &Run| r.total_ms;
            let find = |kind: usize, baseline: bool| {
                variants
                    .iter()
                    .position(|w| w.kind == kind && w.baseline == baseline)
            };
            let vs = |j: Option<usize>| match j {
                Some(j) if j != i => (
                    ratio(&runs[i], &runs[j], per_ap),
                    ratio(&runs[i], &runs[j], total),
                ),
                _ => (f64::NAN, f64::NAN),
            };
            let (ap_sipi, total_sipi) = vs(find(KINDS.len() - 1, v.baseline));
            let (ap_base, total_base) = if v.baseline {
                (f64::NAN, f64::NAN)
            } else {
                vs(find(v.kind, true))
            };
            println!(
                "{vcpus:>5} {:<22} {:>9.1} {:>10.1} {:>10.1} {:>9.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}   ({} of {rounds} runs)",
                v.label,
                median(ok.iter().flat_map(|r| r.first_us.clone()).collect()),
                median(all),
                p90,
                median(ok.iter().map(|r| r.total_ms).collect()),
                ap_sipi,
                total_sipi,
                ap_base,
                total_base,
                ok.len()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
