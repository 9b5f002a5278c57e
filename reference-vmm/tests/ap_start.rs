//! The three ways the tiny SMP guest (`common/smp_guest.rs`) starts its APs,
//! each AP timed by the guest: the ACPI MP wakeup mailbox (served with
//! StartVirtualProcessor), HvCallEnableVpVtl + HvCallStartVirtualProcessor
//! through the hypercall page, and INIT/SIPI in KVM's local APIC. The guest
//! starts AP 1 as soon as it runs, while the VMM may still be creating the APs:
//! the starts must wait for them, not fail.

mod common;
#[path = "common/smp_guest.rs"]
mod smp_guest;

use std::time::Duration;

use common::*;

fn boot(kind: char, vcpus: u32) -> smp_guest::Report {
    boot_with(kind, vcpus, &[])
}

fn boot_with(kind: char, vcpus: u32, extra: &[&str]) -> smp_guest::Report {
    let kernel = temp_file(&format!("smp-{kind}-{vcpus}.elf"), &smp_guest::image());
    let mut args = smp_guest::args(&kernel, kind, vcpus, false);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = vmm(&args, Duration::from_secs(120));
    assert_eq!(r.status, Some(0), "{}", r.tail());
    let report = smp_guest::parse(&r.stdout);
    assert_eq!(report.refused, None, "{}", r.tail());
    let vps: Vec<u32> = report.aps.iter().map(|a| a.vp).collect();
    assert_eq!(vps, (1..vcpus).collect::<Vec<_>>(), "{}", r.tail());
    for a in &report.aps {
        assert!(a.ticks.is_some(), "AP {} never arrived\n{}", a.vp, r.tail());
    }
    assert!(report.total.is_some(), "{}", r.tail());
    report
}

#[test]
fn aps_start_through_the_mailbox() {
    boot('m', 4);
}

/// The guest discovers the interface first: CPUID 0x40000001 EAX is "Hv#1"
/// (TLFS "Hypervisor Discovery", interface identification), on every host —
/// a host-specific mask of KVM's own leaf must not reach the Hyper-V leaf that
/// replaces it.
#[test]
fn aps_start_through_guest_hypercalls() {
    let r = boot('h', 4);
    assert_eq!(r.signature, Some(0x3123_7648), "interface signature");
}

/// `--hyperv vsm`: the guest boots in VTL 0 with the Hyper-V interface and
/// finds the mailbox, so its APs start through StartVirtualProcessor as
/// without Hyper-V.
#[test]
fn aps_start_through_the_mailbox_in_vsm_mode() {
    boot_with('m', 4, &["--hyperv", "vsm"]);
}

#[test]
fn aps_start_through_init_sipi() {
    boot('s', 4);
}

/// 16 vCPUs: the guest's first starts come while the VMM still creates APs.
#[test]
fn starts_of_aps_still_being_created_wait_for_them() {
    boot('m', 16);
    boot('h', 16);
}

/// 16 vCPUs through INIT/SIPI: KVM drops an IPI to a vCPU that does not exist
/// yet, so with `--ap-start init-sipi` every VP is created before the BSP runs.
#[test]
fn init_sipi_reaches_all_16_aps() {
    boot('s', 16);
}

/// 2 vCPUs through INIT/SIPI: the AP is the newest vCPU, which KVM leaves out of
/// its APIC map at creation (IPIs to it were dropped until the partition set
/// its LAPIC state after creating it).
#[test]
fn init_sipi_reaches_the_newest_vcpu() {
    boot('s', 2);
}
