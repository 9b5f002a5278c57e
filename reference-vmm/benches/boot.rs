//! Boot-time harness: boots the minimal guest (guests/build.sh) with 1, 2, 4 and 8
//! vCPUs, several times each, and reports its phases: kernel loaded, BSP first
//! entry, first and last AP started (the VMM's `--timings` clock), all APs
//! online and user space ("Run /init"; on hardware KVM the /init marker), both
//! from the spawn, the kernel's own SMP bring-up time (its printk clock, from
//! "smp: Bringing up secondary CPUs" to "smp: Brought up"), exit, and the VMM's
//! peak RSS.
//!
//!     cargo bench -p reference-vmm --bench boot
//!
//! HVKVM_BOOT_VCPUS (e.g. "1,4") and HVKVM_BOOT_RUNS (default 3) change the sweep;
//! HVKVM_BOOT_HYPERV=vtl2 boots the VTL2 kernel with `--hyperv vtl2` instead (its
//! APs started by the guest's own hypercalls); HVKVM_BOOT_AP_START=init-sipi
//! withholds the mailbox (APs by INIT/SIPI, which the VMM does not see: no AP
//! start times). HVKVM_BOOT_KERNEL and HVKVM_BOOT_INITRAMFS boot other files
//! (e.g. a distribution kernel; the nested tier passes the paths it carries).

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

#[derive(Default, Clone, Debug)]
struct Sample {
    loaded: Option<f64>,
    bsp_entry: Option<f64>,
    first_ap: Option<f64>,
    last_ap: Option<f64>,
    bringup_ms: Option<f64>,
    aps_online: Option<f64>,
    init: Option<f64>,
    exit: f64,
    status: Option<i32>,
    rss_mib: f64,
}

fn guest(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests")
        .join(rel);
    assert!(
        p.exists(),
        "{} is missing: run guests/build.sh first",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

fn boot(vcpus: u32, kernel: &str, initramfs: &str, init_marker: &str, extra: &[&str]) -> Sample {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_reference-vmm"))
        .args(["--kernel", kernel, "--initramfs", initramfs, "--timings"])
        .args(["--vcpus", &vcpus.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reference-vmm");
    let (tx, rx) = mpsc::channel::<(bool, String, f64)>();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let t1 = {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((true, l, start.elapsed().as_secs_f64()));
            }
        })
    };
    let t2 = std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send((false, l, start.elapsed().as_secs_f64()));
        }
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child process; the pointers are to locals.
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let exit = start.elapsed().as_secs_f64();
    // Already reaped by wait4 (which also gave the peak RSS); this only tells std.
    let _ = child.wait();
    let _ = (t1.join(), t2.join());
    let mut s = Sample {
        exit,
        status: std::process::ExitStatus::from_raw(status).code(),
        rss_mib: usage.ru_maxrss as f64 / 1024.0,
        ..Default::default()
    };
    // "[   0.012345 s] BSP first entry" (the VMM's clock) or "[    0.123456]
    // smp: ..." (the kernel's printk clock): the leading number.
    let stamp = |line: &str| -> Option<f64> {
        line.trim_start_matches('[')
            .split([' ', ']'])
            .find(|w| !w.is_empty())
            .and_then(|v| v.parse().ok())
    };
    let mut bringup_from = None;
    for (stdout, line, t) in rx.try_iter() {
        if !stdout && line.contains("] kernel loaded") {
            s.loaded = stamp(&line);
        }
        if !stdout && line.ends_with("BSP first entry") {
            s.bsp_entry = stamp(&line);
        }
        if !stdout && line.contains("started through StartVirtualProcessor") {
            let v = stamp(&line);
            s.first_ap = s.first_ap.or(v);
            s.last_ap = v.or(s.last_ap);
        }
        if stdout && line.contains("smp: Bringing up secondary CPUs") {
            bringup_from = stamp(&line);
        }
        if stdout && line.contains("smp: Brought up") {
            if let (Some(a), Some(b)) = (bringup_from, stamp(&line)) {
                s.bringup_ms = Some((b - a) * 1000.0);
            }
        }
        if stdout && s.aps_online.is_none() && line.contains("smp: Brought up") {
            s.aps_online = Some(t);
        }
        if stdout && s.init.is_none() && line.contains(init_marker) {
            s.init = Some(t);
        }
    }
    s
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

fn fmt4(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: only
    // run the sweep when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let vtl2 = std::env::var("HVKVM_BOOT_HYPERV").is_ok_and(|v| v == "vtl2");
    let sipi = std::env::var("HVKVM_BOOT_AP_START").is_ok_and(|v| v == "init-sipi");
    let mut extra: Vec<&str> = vec![];
    let kernel = std::env::var("HVKVM_BOOT_KERNEL").unwrap_or_else(|_| {
        guest(if vtl2 {
            "vtl2/vmlinux"
        } else {
            "minimal/vmlinux"
        })
    });
    if vtl2 {
        extra.extend(["--hyperv", "vtl2"]);
    }
    if sipi {
        extra.extend(["--ap-start", "init-sipi"]);
    }
    let (cpio, marker) = if pvm {
        ("probe.cpio", "Run /init as init process")
    } else {
        ("busybox.cpio", "HVKVM-INIT")
    };
    let initramfs = std::env::var("HVKVM_BOOT_INITRAMFS").unwrap_or_else(|_| guest(cpio));
    let vcpus: Vec<u32> = std::env::var("HVKVM_BOOT_VCPUS")
        .unwrap_or_else(|_| "1,2,4,8".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let runs: u32 = std::env::var("HVKVM_BOOT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!(
        "boot harness: {} host, {} guest, /init marker {marker:?}, {runs} run(s) per vCPU count",
        if pvm { "PVM" } else { "hardware KVM" },
        if vtl2 {
            "VTL2 (--hyperv vtl2, APs by hypercall)"
        } else if sipi {
            "minimal (APs by INIT/SIPI, --ap-start init-sipi)"
        } else {
            "minimal (APs by mailbox)"
        }
    );
    println!("kernel {kernel}, initramfs {initramfs}; VMM clock: loaded .. last AP; spawn clock: online, init, exit");
    println!(
        "{:>5} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>6} {:>8}",
        "vcpus",
        "run",
        "loaded s",
        "BSP s",
        "1st AP s",
        "last AP s",
        "online s",
        "bring-up ms",
        "init s",
        "exit s",
        "status",
        "RSS MiB"
    );
    for &n in &vcpus {
        let mut all = vec![];
        for run in 1..=runs {
            let s = boot(n, &kernel, &initramfs, marker, &extra);
            println!(
                "{n:>5} {run:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8.2} {:>6} {:>8.1}",
                fmt4(s.loaded),
                fmt4(s.bsp_entry),
                fmt4(s.first_ap),
                fmt4(s.last_ap),
                fmt(s.aps_online),
                fmt(s.bringup_ms),
                fmt(s.init),
                s.exit,
                s.status.map_or("-".into(), |c| c.to_string()),
                s.rss_mib
            );
            all.push(s);
        }
        let m = |f: &dyn Fn(&Sample) -> Option<f64>| median(all.iter().filter_map(f).collect());
        println!(
            "{n:>5} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>6} {:>8}",
            "med",
            fmt4(m(&|s| s.loaded)),
            fmt4(m(&|s| s.bsp_entry)),
            fmt4(m(&|s| s.first_ap)),
            fmt4(m(&|s| s.last_ap)),
            fmt(m(&|s| s.aps_online)),
            fmt(m(&|s| s.bringup_ms)),
            fmt(m(&|s| s.init)),
            fmt(m(&|s| Some(s.exit))),
            "",
            fmt(m(&|s| Some(s.rss_mib)))
        );
    }
}
