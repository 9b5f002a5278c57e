//! Runs the example VMM on the real /dev/kvm: its guest starts every AP with
//! HvCallStartVirtualProcessor, and a second start of VP 1 is refused.

#[test]
fn the_guest_starts_every_ap_through_the_example_vmm() {
    for n in [2u32, 4, 8] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hvkvm-mini-vmm"))
            .args(["--vcpus", &n.to_string()])
            .output()
            .expect("run mini-vmm");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
        for i in 1..n {
            assert!(
                stdout.contains(&format!("VP {i} started by HvCallStartVirtualProcessor")),
                "{stdout}"
            );
        }
        // TLFS HvCallStartVirtualProcessor: a started VP is HV_STATUS_INVALID_VP_STATE.
        assert!(
            stdout.contains("second start of VP 1: HV_STATUS 0x0015 (INVALID_VP_STATE)"),
            "{stdout}"
        );
    }
}

#[test]
fn the_same_guest_runs_with_hv_partition_adopted_by_the_vmm() {
    // The VMM's own VM, irqchip, vCPUs and loops; hv-partition adopted with the
    // default kick; the guest's own hypercall page (its MSR writes pause every
    // VP from inside VP 0's exit) and StartVirtualProcessor through it.
    for n in [2u32, 4, 8] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hvkvm-mini-vmm"))
            .args(["--vcpus", &n.to_string(), "--partition"])
            .output()
            .expect("run mini-vmm");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
        for i in 1..n {
            assert!(
                stdout.contains(&format!("VP {i} started by HvCallStartVirtualProcessor")),
                "{stdout}"
            );
        }
        assert!(
            stdout.contains("second start of VP 1: HV_STATUS 0x0015 (INVALID_VP_STATE)"),
            "{stdout}"
        );
        // n - 1 starts and the refused second one.
        assert!(
            stdout.contains(&format!("hypercalls served by hv-partition: {n}")),
            "{stdout}"
        );
    }
}

#[test]
fn bad_arguments_are_one_usage_line_and_status_2() {
    for args in [&["--vcpus", "1"][..], &["--vcpus"], &["--bogus"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hvkvm-mini-vmm"))
            .args(args)
            .output()
            .expect("run mini-vmm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("usage: mini-vmm"), "{stderr}");
    }
}
