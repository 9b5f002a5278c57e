//! Boots the minimal 6.12 guest built by guests/build.sh with 4 vCPUs, as deep as
//! the host allows, and checks that every AP was started through
//! StartVirtualProcessor.
//!
//! On hardware KVM the busybox /init prints its CPU count and online list and
//! powers off (status 0). On a PVM host guest user space cannot make system calls,
//! so the test /init's first instruction is `ud2`: the kernel's report of that
//! fault at init's IP proves init ran; the guest then panics and reboots
//! (status 3).

mod common;

use std::time::Duration;

use common::*;

/// Catches hangs only; a boot on PVM takes a few minutes.
const LIMIT: Duration = Duration::from_secs(20 * 60);

/// The successful calls in the `--stats` hypercall table for the call named `name`
/// (count minus failed); `None` if the table has no such row.
fn hypercalls(r: &Run, name: &str) -> Option<u64> {
    let row = r.stderr.lines().find(|l| l.starts_with(name))?;
    let cols: Vec<u64> = row
        .split_whitespace()
        .skip(2)
        .take(2)
        .filter_map(|c| c.parse().ok())
        .collect();
    match cols[..] {
        [count, failed] => Some(count - failed),
        _ => None,
    }
}

/// The deepest check of user space this host allows: on hardware KVM the busybox
/// /init's output and a power-off; on PVM init's first instruction and a reboot.
fn check_init(r: &Run, pvm: bool) {
    let tail = r.tail();
    assert!(r.has("smp: Brought up 1 node, 4 CPUs"), "{tail}");
    assert!(r.has("Run /init as init process"), "{tail}");
    if pvm {
        // The probe's entry point: 0x400000 + ELF header + program header.
        assert!(
            r.has("init[1] trap invalid opcode ip:400078"),
            "init's first instruction: {tail}"
        );
        assert_eq!(
            r.status,
            Some(3),
            "panic=-1 reboots through the ACPI reset register: {tail}"
        );
    } else {
        assert!(r.has("HVKVM-NPROC: 4"), "{tail}");
        assert!(r.has("HVKVM-ONLINE: 0-3"), "{tail}");
        assert_eq!(
            r.status,
            Some(0),
            "busybox poweroff -f through ACPI S5: {tail}"
        );
    }
}

fn initramfs(pvm: bool) -> String {
    let i = guest(if pvm { "probe.cpio" } else { "busybox.cpio" });
    eprintln!(
        "boot test: {} host, /init = {i}",
        if pvm {
            "PVM (no guest syscalls): the probe"
        } else {
            "hardware KVM: busybox"
        }
    );
    i
}

#[test]
fn vtl2_linux_starts_its_aps_with_hypercalls() {
    let pvm = pvm_host();
    let (kernel, init) = (guest("vtl2/vmlinux"), initramfs(pvm));
    let r = vmm(
        &[
            "--kernel",
            &kernel,
            "--vcpus",
            "4",
            "--initramfs",
            &init,
            "--hyperv",
            "vtl2",
            "--timings",
            "--stats",
        ],
        LIMIT,
    );
    let tail = r.tail();
    assert!(r.has("Linux runs in Hyper-V Virtual Trust Level"), "{tail}");
    // Exactly three successful calls of each: one per AP.
    assert_eq!(hypercalls(&r, "START_VIRTUAL_PROCESSOR"), Some(3), "{tail}");
    assert_eq!(hypercalls(&r, "ENABLE_VP_VTL"), Some(3), "{tail}");
    assert_eq!(
        hypercalls(&r, "GET_VP_INDEX_FROM_APIC_ID"),
        Some(3),
        "{tail}"
    );
    assert_eq!(
        r.count("started through StartVirtualProcessor (VTL 2)"),
        3,
        "{tail}"
    );
    assert_eq!(
        r.count("mailbox wakeup"),
        0,
        "no mailbox in VTL2 mode: {tail}"
    );
    check_init(&r, pvm);
    eprintln!(
        "VTL2 boot passed in {:.1} s\n{}",
        r.elapsed.as_secs_f64(),
        r.stderr
    );
}

#[test]
fn the_vtl2_kernel_boots_through_the_mailbox_without_hyperv() {
    let pvm = pvm_host();
    let (kernel, init) = (guest("vtl2/vmlinux"), initramfs(pvm));
    let r = vmm(
        &[
            "--kernel",
            &kernel,
            "--vcpus",
            "4",
            "--initramfs",
            &init,
            "--timings",
        ],
        LIMIT,
    );
    let tail = r.tail();
    assert_eq!(r.count("mailbox wakeup: APIC id"), 3, "{tail}");
    assert_eq!(
        r.count("started through StartVirtualProcessor (VTL 0)"),
        3,
        "{tail}"
    );
    assert!(!r.has("Hyper-V"), "{tail}");
    check_init(&r, pvm);
}

#[test]
fn linux_boots_with_4_cpus_started_through_start_virtual_processor() {
    let kernel = guest("minimal/vmlinux");
    let pvm = pvm_host();
    let initramfs = initramfs(pvm);
    let r = vmm(
        &[
            "--kernel",
            &kernel,
            "--vcpus",
            "4",
            "--initramfs",
            &initramfs,
            "--timings",
            "--stats",
        ],
        LIMIT,
    );
    let tail = r.tail();
    assert_eq!(
        r.count("mailbox wakeup: APIC id"),
        3,
        "three mailbox wakeups: {tail}"
    );
    assert_eq!(
        r.count("started through StartVirtualProcessor (VTL 0)"),
        3,
        "three APs through StartVirtualProcessor: {tail}"
    );
    check_init(&r, pvm);
    eprintln!(
        "boot test passed in {:.1} s\n{}",
        r.elapsed.as_secs_f64(),
        r.stderr
    );
}

/// A root file system on a virtio-blk disk (virtio-mmio, found through the
/// DSDT), with no initramfs: the kernel mounts /dev/vda and runs its
/// /sbin/init. On PVM the disk's init is the ud2 probe (read-only disk); on
/// real KVM the busybox init writes 1 MiB, syncs and powers off, and the next
/// boot reads the same bytes back.
#[test]
fn linux_boots_from_a_virtio_blk_root_disk() {
    let kernel = guest("minimal/vmlinux");
    let pvm = pvm_host();
    let base = [
        "--kernel",
        kernel.as_str(),
        "--vcpus",
        "4",
        "--timings",
        "--stats",
    ];
    let check_disk = |r: &Run| {
        let tail = r.tail();
        assert!(
            r.has("virtio_blk virtio0: [vda]"),
            "the driver found the disk: {tail}"
        );
        assert!(r.has("EXT4-fs (vda): mounted filesystem"), "{tail}");
        assert!(r.has("Run /sbin/init as init process"), "{tail}");
        assert_eq!(
            r.count("started through StartVirtualProcessor (VTL 0)"),
            3,
            "{tail}"
        );
    };
    if pvm {
        let disk = format!("{},ro", guest("probe-root.img"));
        let r = vmm(&[&base[..], &["--disk", &disk]].concat(), LIMIT);
        check_disk(&r);
        assert!(
            r.has("init[1] trap invalid opcode ip:400078"),
            "{}",
            r.tail()
        );
        assert_eq!(r.status, Some(3), "{}", r.tail());
        return;
    }
    let disk = DiskCopy::of("busybox-root.img", "root-persist.img");
    let seed = format!("hvkvm_seed={}", std::process::id());
    let cmdline = |mode: &str| format!("{DEFAULT_CMDLINE} hvkvm={mode} {seed}");
    let w = cmdline("write");
    let r = vmm(
        &[&base[..], &["--disk", &disk.path(), "--cmdline", &w]].concat(),
        LIMIT,
    );
    check_disk(&r);
    assert_eq!(r.status, Some(0), "{}", r.tail());
    assert!(r.has("HVKVM-NPROC: 4"), "{}", r.tail());
    let wrote = marker(&r, "HVKVM-WROTE: ");
    let rd = cmdline("read");
    let r2 = vmm(
        &[&base[..], &["--disk", &disk.path(), "--cmdline", &rd]].concat(),
        LIMIT,
    );
    assert_eq!(r2.status, Some(0), "{}", r2.tail());
    let read = marker(&r2, "HVKVM-READ: ");
    assert_eq!(
        read,
        format!("{wrote} {}", std::process::id()),
        "{}",
        r2.tail()
    );
    assert!(
        r.has("disk ") && r.has(" writes ("),
        "--stats disk line: {}",
        r.tail()
    );
}

/// Data the guest synced is on the disk even when the VMM is killed right
/// after (SIGKILL, no clean-up): the guest writes 1 MiB, runs `sync` (a
/// virtio FLUSH, served with fdatasync before it completes), prints its
/// checksum, and the VMM is killed on that line. Needs guest user space, so
/// real KVM: scripts/test-all.sh runs it in the nested tier.
#[test]
fn nested_tier_synced_data_survives_sigkill_of_the_vmm() {
    assert!(
        !pvm_host(),
        "this test needs guest user space, which PVM lacks: the nested real-KVM tier \
         (scripts/nested.py, run by scripts/test-all.sh) runs it"
    );
    let kernel = guest("minimal/vmlinux");
    let disk = DiskCopy::of("busybox-root.img", "root-sigkill.img");
    let pid = std::process::id();
    let w = format!("{DEFAULT_CMDLINE} hvkvm=write-hang hvkvm_seed={pid}");
    let args = ["--kernel", &kernel, "--vcpus", "2", "--disk", &disk.path()];
    let r = vmm_until(
        &[&args[..], &["--cmdline", &w]].concat(),
        "HVKVM-SYNCED: ",
        LIMIT,
    );
    assert_eq!(r.status, None, "killed on the marker: {}", r.tail());
    let synced = marker(&r, "HVKVM-SYNCED: ");
    let rd = format!("{DEFAULT_CMDLINE} hvkvm=read");
    let r2 = vmm(&[&args[..], &["--cmdline", &rd]].concat(), LIMIT);
    assert_eq!(r2.status, Some(0), "{}", r2.tail());
    assert_eq!(
        marker(&r2, "HVKVM-READ: "),
        format!("{synced} {pid}"),
        "{}",
        r2.tail()
    );
}

/// The rest of the line after `prefix` in the guest's output.
fn marker(r: &Run, prefix: &str) -> String {
    r.stdout
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no '{prefix}' line: {}", r.tail()))
}
