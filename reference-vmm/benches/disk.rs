//! Disks side by side: the same minimal Linux kernel and busybox root image
//! (target/guests, built by guests/build.sh) booted from virtio-blk by
//! reference-vmm and by the peers whose binaries are given, interleaved round
//! by round. Per VMM it prints the median of
//!
//! - time to a shell: from spawn to the disk root's init printing
//!   `HVKVM-SHELL` (kernel boot, the root mount, init);
//! - sequential direct-I/O throughput in the guest: busybox `dd` of 64 MiB
//!   with 1 MiB blocks to and from a second disk (`oflag=direct` /
//!   `iflag=direct`), timed by the guest's init with /proc/uptime;
//!
//! and the median of the per-round ratios peer / reference-vmm for
//! throughput (reference-vmm / peer for time), so that >= 1.0 means
//! reference-vmm is at least as good. Run it in the nested real-KVM tier:
//!
//! ```text
//! scripts/disk-bench.sh            # builds, then runs this inside L1
//! ```
//!
//! Variables: HVKVM_PEER_FIRECRACKER, HVKVM_PEER_CLOUD_HYPERVISOR (binaries),
//! HVKVM_DISK_ROUNDS (default 5), HVKVM_DISK_KERNEL, HVKVM_DISK_ROOT.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one VMM is and how it boots the guest.
struct Vmm {
    name: &'static str,
    binary: PathBuf,
}

/// One run: time to a marker line, and the guest's dd figures.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    shell_ms: Option<f64>,
    write_mbs: Option<f64>,
    read_mbs: Option<f64>,
}

const CMDLINE: &str = "console=ttyS0 panic=-1 reboot=k";

fn command(
    vmm: &Vmm,
    kernel: &Path,
    root: &Path,
    scratch: &Path,
    mode: &str,
    dir: &Path,
) -> Command {
    let (k, r, s) = (
        kernel.to_string_lossy(),
        root.to_string_lossy(),
        scratch.to_string_lossy(),
    );
    let mut c = Command::new(&vmm.binary);
    match vmm.name {
        "reference-vmm" => {
            c.args(["--kernel", &k, "--vcpus", "2", "--memory", "512M"]);
            c.args(["--disk", &r, "--disk", &s]);
            c.args(["--cmdline", &format!("{CMDLINE} pci=off hvkvm={mode}")]);
        }
        "cloud-hypervisor" => {
            c.args(["--kernel", &k, "--cpus", "boot=2", "--memory", "size=512M"]);
            c.args(["--disk", &format!("path={r}"), &format!("path={s}")]);
            c.args([
                "--cmdline",
                &format!("{CMDLINE} root=/dev/vda rw hvkvm={mode}"),
            ]);
            c.args(["--serial", "tty", "--console", "off"]);
        }
        _ => {
            let cfg = dir.join(format!("fc-{mode}.json"));
            let json = format!(
                r#"{{"boot-source": {{"kernel_image_path": "{k}", "boot_args": "{CMDLINE} pci=off hvkvm={mode}"}},
                    "drives": [
                      {{"drive_id": "root", "path_on_host": "{r}", "is_root_device": true, "is_read_only": false}},
                      {{"drive_id": "scratch", "path_on_host": "{s}", "is_root_device": false, "is_read_only": false}}],
                    "machine-config": {{"vcpu_count": 2, "mem_size_mib": 512}}}}"#
            );
            std::fs::write(&cfg, json).expect("firecracker config");
            c.args(["--no-api", "--level", "Error", "--config-file"]);
            c.arg(cfg);
        }
    }
    c
}

/// "67108864 bytes copied, 0.5 seconds" (the disk init's line, timed with
/// /proc/uptime): MiB/s from the bytes and seconds.
fn dd_rate(line: &str) -> Option<f64> {
    let bytes: f64 = line.split_whitespace().find_map(|w| w.parse().ok())?;
    let secs = line
        .split(", ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()?;
    (secs > 0.0).then(|| bytes / secs / (1 << 20) as f64)
}

/// Runs until `until` shows on the console (then kills the VMM) or 90 s.
fn run_once(mut c: Command, until: &str) -> Sample {
    let start = Instant::now();
    let Ok(mut child) = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return Sample::default();
    };
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(l) = line else { break };
            if tx.send((start.elapsed(), l)).is_err() {
                break;
            }
        }
    });
    let mut s = Sample::default();
    while let Ok((t, line)) =
        rx.recv_timeout(Duration::from_secs(90).saturating_sub(start.elapsed()))
    {
        if line.contains("HVKVM-SHELL") {
            s.shell_ms = Some(t.as_secs_f64() * 1000.0);
        }
        if let Some((_, rest)) = line.split_once("HVKVM-DD-WRITE: ") {
            s.write_mbs = dd_rate(rest);
        }
        if let Some((_, rest)) = line.split_once("HVKVM-DD-READ: ") {
            s.read_mbs = dd_rate(rest);
        }
        if line.contains(until) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    s
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
    // The parent by name, not "..": in the nested tier only the files given
    // exist, not reference-vmm/ itself.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf();
    let rounds: usize = env("HVKVM_DISK_ROUNDS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let kernel = env("HVKVM_DISK_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/guests/minimal/vmlinux"));
    let image = env("HVKVM_DISK_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/guests/busybox-root.img"));
    let mut vmms = vec![Vmm {
        name: "reference-vmm",
        binary: PathBuf::from(env!("CARGO_BIN_EXE_reference-vmm")),
    }];
    for (var, name) in [
        ("HVKVM_PEER_CLOUD_HYPERVISOR", "cloud-hypervisor"),
        ("HVKVM_PEER_FIRECRACKER", "firecracker"),
    ] {
        match env(var) {
            Some(p) => vmms.push(Vmm {
                name,
                binary: PathBuf::from(p),
            }),
            None => println!("disk: {var} not set: {name} not measured"),
        }
    }
    let dir = std::env::temp_dir().join(format!("hvkvm-disk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let root = dir.join("root.img");
    let scratch = dir.join("scratch.img");
    std::fs::File::create(&scratch)
        .and_then(|f| f.set_len(80 << 20))
        .expect("scratch disk");
    println!(
        "disk: {rounds} interleaved rounds; kernel {}, root {}",
        kernel.display(),
        image.display()
    );
    let mut samples: Vec<Vec<(Sample, Sample)>> = vec![vec![]; vmms.len()];
    for round in 0..rounds {
        for k in 0..vmms.len() {
            let i = (k + round) % vmms.len();
            std::fs::copy(&image, &root).expect("copy the root image");
            let shell = run_once(
                command(&vmms[i], &kernel, &root, &scratch, "shell", &dir),
                "HVKVM-SHELL",
            );
            std::fs::copy(&image, &root).expect("copy the root image");
            let dd = run_once(
                command(&vmms[i], &kernel, &root, &scratch, "dd", &dir),
                "HVKVM-DD-READ",
            );
            println!(
                "disk: round {} {}: shell {} ms, dd write {} MiB/s, read {} MiB/s",
                round + 1,
                vmms[i].name,
                shell.shell_ms.map_or("-".into(), |v| format!("{v:.0}")),
                dd.write_mbs.map_or("-".into(), |v| format!("{v:.1}")),
                dd.read_mbs.map_or("-".into(), |v| format!("{v:.1}")),
            );
            samples[i].push((shell, dd));
        }
    }
    println!(
        "{:<17} {:>14} {:>15} {:>14} {:>11} {:>12} {:>11}",
        "vmm",
        "shell ms",
        "dd write MiB/s",
        "dd read MiB/s",
        "shell ratio",
        "write ratio",
        "read ratio"
    );
    let ratio = |i: usize, f: fn(&(Sample, Sample)) -> Option<f64>, inverse: bool| {
        median(
            samples[0]
                .iter()
                .zip(&samples[i])
                .filter_map(|(a, b)| {
                    let (a, b) = (f(a)?, f(b)?);
                    Some(if inverse { a / b } else { b / a })
                })
                .collect(),
        )
    };
    for (i, vmm) in vmms.iter().enumerate() {
        let col = |f: fn(&(Sample, Sample)) -> Option<f64>| {
            median(samples[i].iter().filter_map(f).collect())
        };
        let shell = |s: &(Sample, Sample)| s.0.shell_ms;
        let write = |s: &(Sample, Sample)| s.1.write_mbs;
        let read = |s: &(Sample, Sample)| s.1.read_mbs;
        let n = samples[i]
            .iter()
            .filter(|s| s.0.shell_ms.is_some() && s.1.read_mbs.is_some())
            .count();
        // Ratios: > 1 means reference-vmm is better (faster shell: peer / ours
        // in time; more throughput: ours / peer).
        let (rs, rw, rr) = if i == 0 {
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            (
                ratio(i, shell, false),
                ratio(i, write, true),
                ratio(i, read, true),
            )
        };
        println!(
            "{:<17} {:>14.0} {:>15.1} {:>14.1} {:>11.3} {:>12.3} {:>11.3}   ({n} of {rounds} rounds complete)",
            vmm.name,
            col(shell),
            col(write),
            col(read),
            rs,
            rw,
            rr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
