//! AP start latency by path: the tiny SMP guest of `tests/common/smp_guest.rs`
//! starts its APs one at a time through the ACPI MP wakeup mailbox (served with
//! StartVirtualProcessor), through HvCallEnableVpVtl + HvCallStartVirtualProcessor
//! (`--hyperv vtl2`), and through INIT/SIPI in KVM's local APIC, timing each AP
//! with the TSC from the BSP's request to the AP's first instruction.
//!
//! Rounds interleave the three paths (rotating which goes first) with an idle
//! gap; prints per vCPU count and path the median per-AP start and the median
//! total (first request to last arrival), and the medians of the per-round
//! ratios to INIT/SIPI.
//!
//! ```text
//! HVKVM_APSTART_VCPUS=2,4,8,16,32,64 HVKVM_APSTART_ROUNDS=11 \
//!   cargo bench -p reference-vmm --bench ap_start
//! ```
//! `HVKVM_APSTART_VMM` names another reference-vmm binary (the nested tier runs
//! the bench executable and the VMM inside L1).

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
    let vmm =
        env("HVKVM_APSTART_VMM").unwrap_or_else(|| env!("CARGO_BIN_EXE_reference-vmm").to_string());
    let dir = std::env::temp_dir().join(format!("hvkvm-apstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kernel: PathBuf = dir.join("smp-guest.elf");
    std::fs::write(&kernel, smp_guest::image()).expect("write the SMP guest");
    let khz = tsc_khz();
    println!("ap_start: {rounds} interleaved rounds, TSC {khz} kHz, VMM {vmm}");
    println!(
        "{:>5} {:<14} {:>12} {:>12} {:>10} {:>14} {:>14}",
        "vcpus", "path", "per-AP us", "p90 us", "total ms", "per-AP ratio", "total ratio"
    );
    let us = |ticks: u64| ticks as f64 / khz * 1000.0;
    for &vcpus in &sweep {
        // [kind][round] -> (per-AP us, total ms)
        let mut runs: Vec<Vec<Option<(Vec<f64>, f64)>>> = vec![vec![]; KINDS.len()];
        for round in 0..rounds {
            for k in 0..KINDS.len() {
                let i = (k + round) % KINDS.len();
                let args = smp_guest::args(&kernel.to_string_lossy(), KINDS[i].0, vcpus);
                let out = Command::new(&vmm)
                    .args(&args)
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output();
                let r = out.ok().and_then(|o| {
                    let rep = smp_guest::parse(&String::from_utf8_lossy(&o.stdout));
                    let aps: Option<Vec<f64>> = rep.aps.iter().map(|a| a.ticks.map(us)).collect();
                    let aps = aps.filter(|a| a.len() as u32 == vcpus - 1)?;
                    Some((aps, us(rep.total?) / 1000.0))
                });
                runs[i].push(r);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let sipi = KINDS.len() - 1;
        for (i, (_, name)) in KINDS.iter().enumerate() {
            let ok: Vec<&(Vec<f64>, f64)> = runs[i].iter().flatten().collect();
            if ok.is_empty() {
                println!("{vcpus:>5} {name:<14} (failed)");
                continue;
            }
            let all: Vec<f64> = ok.iter().flat_map(|r| r.0.iter().copied()).collect();
            let mut sorted = all.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let p90 = sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)];
            let ratio = |f: fn(&(Vec<f64>, f64)) -> f64| {
                median(
                    runs[i]
                        .iter()
                        .zip(&runs[sipi])
                        .filter_map(|(a, b)| Some(f(a.as_ref()?) / f(b.as_ref()?)))
                        .collect(),
                )
            };
            let (rp, rt) = if i == sipi {
                (f64::NAN, f64::NAN)
            } else {
                (ratio(|r| median(r.0.clone())), ratio(|r| r.1))
            };
            println!(
                "{vcpus:>5} {name:<14} {:>12.1} {:>12.1} {:>10.3} {:>14.3} {:>14.3}   ({} of {rounds} runs)",
                median(all),
                p90,
                median(ok.iter().map(|r| r.1).collect()),
                rp,
                rt,
                ok.len()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
