//! Side by side with other VMMs: the same tiny guest (prints one line on COM1,
//! then powers off through ACPI S5 at port 0x600, or, for a VMM without that
//! device, resets through the i8042) booted by reference-vmm and by the VMMs
//! whose binaries are given, interleaved round by round with an idle gap between
//! runs (a VM's deferred kernel clean-up otherwise lands in the next run).
//!
//! Prints, per VMM and vCPU count, the median time to the guest's first serial
//! output and to process exit (from spawn), peak RSS and CPU time (wait4
//! rusage), and the median of the per-round ratios reference-vmm / peer.
//!
//! ```text
//! HVKVM_PEER_FIRECRACKER=/path/firecracker \
//! HVKVM_PEER_CLOUD_HYPERVISOR=/path/cloud-hypervisor \
//! HVKVM_PEER_ROUNDS=21 HVKVM_PEER_VCPUS=1,4,64 \
//!   cargo bench -p reference-vmm --bench peers
//! ```
//!
//! No peer is installed by the benchmark; without the variables only
//! reference-vmm runs. Firecracker takes at most 32 vCPUs.
//! `HVKVM_PEER_BASELINE` adds another reference-vmm build as a peer (A/B).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One run's measurements.
#[derive(Clone, Copy, Debug)]
struct Sample {
    first_output_ms: f64,
    exit_ms: f64,
    max_rss_kb: i64,
    cpu_ms: f64,
}

/// A VMM under test.
struct Vmm {
    name: &'static str,
    binary: PathBuf,
}

/// The tiny guest: an ELF64 with one segment at 16 MiB and a PVH note, whose
/// code works in 32- and 64-bit mode (only `mov dx, imm16; mov al, imm8; out dx,
/// al`): "HVKVM-TINY\n" on COM1, S5, i8042 reset, hlt.
fn tiny_guest() -> Vec<u8> {
    let mut code = vec![];
    for &b in b"HVKVM-TINY\n" {
        code.extend([0x66, 0xBA, 0xF8, 0x03, 0xB0, b, 0xEE]);
    }
    code.extend([0x66, 0xBA, 0x00, 0x06, 0xB0, 0x34, 0xEE]);
    code.extend([0x66, 0xBA, 0x64, 0x00, 0xB0, 0xFE, 0xEE]);
    code.extend([0xF4, 0xEB, 0xFD]);
    let base: u64 = 0x100_0000;
    let (ehdr, phdr) = (64u64, 56u64);
    let note_off = ehdr + 2 * phdr;
    let code_off = note_off + 20;
    let entry = base + code_off;
    let mut f = Vec::new();
    f.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend(2u16.to_le_bytes());
    f.extend(62u16.to_le_bytes());
    f.extend(1u32.to_le_bytes());
    f.extend(entry.to_le_bytes());
    f.extend(ehdr.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend(0u32.to_le_bytes());
    f.extend((ehdr as u16).to_le_bytes());
    f.extend((phdr as u16).to_le_bytes());
    f.extend(2u16.to_le_bytes());
    f.extend([0u8; 6]);
    let size = code_off + code.len() as u64;
    for (kind, flags, off, len, align) in
        [(1u32, 5u32, 0u64, size, 0x1000u64), (4, 4, note_off, 20, 4)]
    {
        f.extend(kind.to_le_bytes());
        f.extend(flags.to_le_bytes());
        f.extend(off.to_le_bytes());
        f.extend((base + off).to_le_bytes());
        f.extend((base + off).to_le_bytes());
        f.extend(len.to_le_bytes());
        f.extend(len.to_le_bytes());
        f.extend(align.to_le_bytes());
    }
    // XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen".
    f.extend(4u32.to_le_bytes());
    f.extend(4u32.to_le_bytes());
    f.extend(18u32.to_le_bytes());
    f.extend(b"Xen\0");
    f.extend((entry as u32).to_le_bytes());
    f.extend(code);
    f
}

fn command(vmm: &Vmm, kernel: &Path, vcpus: u32, dir: &Path) -> Option<Command> {
    let k = kernel.to_string_lossy().into_owned();
    let mut c = Command::new(&vmm.binary);
    match vmm.name {
        "reference-vmm" | "reference-vmm-base" => {
            c.args([
                "--kernel",
                &k,
                "--vcpus",
                &vcpus.to_string(),
                "--memory",
                "512M",
            ]);
        }
        "cloud-hypervisor" => {
            c.args([
                "--kernel",
                &k,
                "--cpus",
                &format!("boot={vcpus}"),
                "--memory",
                "size=512M",
                "--serial",
                "tty",
                "--console",
                "off",
            ]);
        }
        "firecracker" => {
            if vcpus > 32 {
                return None;
            }
            let cfg = dir.join(format!("fc-{vcpus}.json"));
            std::fs::write(
                &cfg,
                format!(
                    r#"{{"boot-source": {{"kernel_image_path": "{k}", "boot_args": "console=ttyS0"}},
                        "drives": [], "machine-config": {{"vcpu_count": {vcpus}, "mem_size_mib": 512}}}}"#
                ),
            )
            .ok()?;
            c.args(["--no-api", "--level", "Error", "--config-file"]);
            c.arg(cfg);
        }
        _ => return None,
    }
    Some(c)
}

fn run_once(mut c: Command) -> Option<Sample> {
    let start = Instant::now();
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut out = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut first = None;
        let mut buf = [0u8; 256];
        let mut seen: Vec<u8> = Vec::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend(&buf[..n]);
            if first.is_none() && seen.windows(10).any(|w| w == b"HVKVM-TINY") {
                first = Some(start.elapsed());
            }
        }
        first
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, written by wait4 for the child we spawned.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let exit = start.elapsed();
    let first = reader.join().ok().flatten();
    if r != pid {
        return None;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    Some(Sample {
        first_output_ms: ms(first?),
        exit_ms: ms(exit),
        max_rss_kb: ru.ru_maxrss,
        cpu_ms: tv(ru.ru_utime) + tv(ru.ru_stime),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let env = |k: &str| std::env::var(k).ok();
    let rounds: usize = env("HVKVM_PEER_ROUNDS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let gap = Duration::from_millis(
        env("HVKVM_PEER_GAP_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200),
    );
    let sweep: Vec<u32> = env("HVKVM_PEER_VCPUS")
        .unwrap_or_else(|| "1,4,64".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let mut vmms = vec![Vmm {
        name: "reference-vmm",
        binary: PathBuf::from(env!("CARGO_BIN_EXE_reference-vmm")),
    }];
    for (var, name) in [
        ("HVKVM_PEER_BASELINE", "reference-vmm-base"),
        ("HVKVM_PEER_CLOUD_HYPERVISOR", "cloud-hypervisor"),
        ("HVKVM_PEER_FIRECRACKER", "firecracker"),
    ] {
        match env(var) {
            Some(p) => vmms.push(Vmm {
                name,
                binary: PathBuf::from(p),
            }),
            None => println!("peers: {var} not set: {name} not measured"),
        }
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp");
    std::fs::create_dir_all(&dir).expect("bench-tmp");
    let kernel = dir.join("tiny-guest.elf");
    std::fs::write(&kernel, tiny_guest()).expect("write the tiny guest");
    println!(
        "peers: {rounds} interleaved rounds, {} ms idle gap, tiny guest {}",
        gap.as_millis(),
        kernel.display()
    );
    println!(
        "{:>5} {:<17} {:>13} {:>9} {:>11} {:>8} {:>16} {:>11}",
        "vcpus",
        "vmm",
        "first out ms",
        "exit ms",
        "maxrss KB",
        "cpu ms",
        "first-out ratio",
        "exit ratio"
    );
    for &vcpus in &sweep {
        let mut samples: Vec<Vec<Option<Sample>>> = vec![vec![]; vmms.len()];
        for round in 0..rounds {
            // Rotate the order each round so no VMM always runs first.
            for k in 0..vmms.len() {
                let i = (k + round) % vmms.len();
                let s = command(&vmms[i], &kernel, vcpus, &dir).and_then(run_once);
                samples[i].push(s);
                std::thread::sleep(gap);
            }
        }
        for (i, vmm) in vmms.iter().enumerate() {
            let ok: Vec<Sample> = samples[i].iter().flatten().copied().collect();
            if ok.is_empty() {
                println!(
                    "{vcpus:>5} {:<17} (not run: unsupported or failed)",
                    vmm.name
                );
                continue;
            }
            // Per-round ratios reference-vmm / this VMM, then their median.
            let ratio = |f: fn(&Sample) -> f64| {
                median(
                    samples[0]
                        .iter()
                        .zip(&samples[i])
                        .filter_map(|(a, b)| Some(f(a.as_ref()?) / f(b.as_ref()?)))
                        .collect(),
                )
            };
            let (r_first, r_exit) = if i == 0 {
                (f64::NAN, f64::NAN)
            } else {
                (ratio(|s| s.first_output_ms), ratio(|s| s.exit_ms))
            };
            println!(
                "{vcpus:>5} {:<17} {:>13.2} {:>9.2} {:>11.0} {:>8.2} {:>16.3} {:>11.3}   ({} of {rounds} runs)",
                vmm.name,
                median(ok.iter().map(|s| s.first_output_ms).collect()),
                median(ok.iter().map(|s| s.exit_ms).collect()),
                median(ok.iter().map(|s| s.max_rss_kb as f64).collect()),
                median(ok.iter().map(|s| s.cpu_ms).collect()),
                r_first,
                r_exit,
                ok.len()
            );
        }
    }
}
