//! The host API on the real `/dev/kvm`: creating VPs, registers by HV name,
//! StartVirtualProcessor from the host, concurrent starts, and canceling runs.

mod common;

use std::sync::mpsc::channel;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::*;
use hv_defs::{HvError, HvRegisterValue, VpIndex, Vtl};
use hv_partition::{Partition, PartitionConfig, VpExit};
use hv_regs::HvRegisterName;
use vm_memory::{Bytes, GuestAddress};
use vp_state::Activity;

#[test]
fn four_vps_started_by_the_host_report_in_64_bit_mode() {
    let p = partition(4, Some(Vtl::VTL0));
    p.memory()
        .write_slice(&report_code(), GuestAddress(CODE))
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let s = seen.clone();
    p.set_start_observer(Box::new(move |vp, vtl| {
        s.lock().unwrap().push((vp.0, vtl.0))
    }));
    let (tx, rx) = channel();
    let mut threads = vec![];
    for i in 0..4 {
        let mut vp = p.create_vp(vp(i)).unwrap();
        if i == 0 {
            // The boot processor, the TLFS way: registers by name, then release.
            vp.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
        }
        let tx = tx.clone();
        threads.push(thread::spawn(move || run_reporting(vp, tx)));
    }
    drop(tx);
    for i in 0..4 {
        p.set_explicit_suspend(vp(i), false).unwrap();
    }
    for i in 1..4 {
        // APs wait for a start; their threads sit in KVM_RUN until it comes.
        assert_eq!(p.vp_activity(vp(i)).unwrap(), Activity::WaitForSipi);
        p.start_virtual_processor(vp(i), Vtl::VTL0, &ctx64(CODE, stack(i)))
            .unwrap();
    }
    let mut reports: Vec<Report> = rx.iter().collect();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![(1, 0), (2, 0), (3, 0)],
        "the start observer saw every start"
    );
    reports.sort_by_key(|r| (r.vp, r.port));
    for i in 0..4u32 {
        let mine: Vec<_> = reports
            .iter()
            .filter(|r| r.vp == i)
            .map(|r| (r.port, r.value))
            .collect();
        assert_eq!(
            mine,
            vec![
                (0x10, i),
                (0x11, stack(i) as u32),
                (0x12, 0x1122_3344),
                (DONE, 0x1122_3344)
            ],
            "VP {i}"
        );
    }
    for t in threads {
        let mut vp = t.join().unwrap();
        // Each VP ran in 64-bit mode: CS.L is set and EFER.LMA too.
        let v = vp
            .get_registers(&[HvRegisterName::CS, HvRegisterName::EFER])
            .unwrap();
        assert!(v[0].as_segment().attributes.long(), "VP {}", vp.index().0);
        assert_eq!(v[1].low & 0x500, 0x500);
    }
    for i in 1..4 {
        assert_eq!(
            p.start_virtual_processor(vp(i), Vtl::VTL0, &ctx64(CODE, stack(i)))
                .map_err(|e| e.status()),
            Err(HvError::INVALID_VP_STATE),
            "a VP starts at most once"
        );
    }
}

#[test]
fn create_vp_follows_hvcreatevp_rules() {
    let p = partition(2, None);
    let _v0 = p.create_vp(vp(0)).unwrap();
    assert_eq!(
        p.create_vp(vp(0)).err().map(|e| e.status()),
        Some(HvError::INVALID_VP_INDEX),
        "duplicate"
    );
    assert_eq!(
        p.create_vp(vp(2)).err().map(|e| e.status()),
        Some(HvError::INVALID_VP_INDEX),
        "out of range"
    );
    assert_eq!(
        p.create_vp(VpIndex::SELF).err().map(|e| e.status()),
        Some(HvError::INVALID_VP_INDEX)
    );
    let _v1 = p.create_vp(vp(1)).unwrap();
    let s = p.vp_state(vp(1)).unwrap();
    assert!(s.explicit_suspend() && s.activity() == Activity::WaitForSipi);
    assert!(p.vp_state(vp(0)).unwrap().explicit_suspend());
    assert_eq!(p.vp_index_from_apic_id(1), Ok(vp(1)));
    assert_eq!(p.vp_index_from_apic_id(9), Err(HvError::INVALID_PARAMETER));
    assert_eq!(
        p.start_virtual_processor(vp(0), Vtl::VTL0, &ctx64(CODE, 0))
            .map_err(|e| e.status()),
        Err(HvError::INVALID_VP_STATE)
    );
    assert_eq!(
        p.start_virtual_processor(vp(5), Vtl::VTL0, &ctx64(CODE, 0))
            .map_err(|e| e.status()),
        Err(HvError::INVALID_VP_INDEX)
    );
    let mut bad = ctx64(CODE, 0);
    bad.cr0 = 0x8000_0000;
    assert_eq!(
        p.start_virtual_processor(vp(1), Vtl::VTL0, &bad)
            .map_err(|e| e.status()),
        Err(HvError::INVALID_REGISTER_VALUE)
    );
    let ctx = ctx64(CODE, 0);
    assert_eq!(
        p.enable_vp_vtl(vp(1), Vtl::VTL0, &ctx),
        Err(HvError::VTL_ALREADY_ENABLED)
    );
    assert_eq!(
        p.enable_vp_vtl(vp(1), Vtl(3), &ctx),
        Err(HvError::INVALID_PARAMETER)
    );
    // Not enabled for the partition (TLFS HvCallEnableVpVtl: "it must first
    // be enabled for the partition"); this one's maximum VTL is 0.
    assert_eq!(
        p.enable_vp_vtl(vp(1), Vtl::VTL1, &ctx),
        Err(HvError::INVALID_PARAMETER)
    );
    assert_eq!(
        p.enable_partition_vtl(Vtl::VTL1).map_err(|e| e.status()),
        Err(HvError::INVALID_PARAMETER)
    );
    assert_eq!(
        p.enable_vp_vtl(vp(4), Vtl::VTL1, &ctx),
        Err(HvError::INVALID_VP_INDEX)
    );
    assert!(matches!(
        Partition::new(PartitionConfig {
            max_vps: 0,
            memory: vec![(0, RAM)],
            hyperv: None,
            cpuid_masks: vec![],
        }),
        Err(hv_partition::PartitionError::VpCount { .. })
    ));
    assert!(matches!(
        Partition::new(PartitionConfig {
            max_vps: 1,
            memory: vec![],
            hyperv: None,
            cpuid_masks: vec![],
        }),
        Err(hv_partition::PartitionError::Memory(_))
    ));
}

#[test]
fn registers_by_name_round_trip_and_refusals_are_hv_status() {
    use HvRegisterName as N;
    let p = partition(2, Some(Vtl::VTL2));
    let mut v0 = p.create_vp(vp(0)).unwrap();
    v0.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    v0.set_registers(&[(N::RBX, 0x1234u64.into()), (N::R15, u64::MAX.into())])
        .unwrap();
    let got = v0
        .get_registers(&[
            N::RBX,
            N::R15,
            N::RIP,
            N::CR3,
            N::VP_INDEX,
            N::VSM_VP_STATUS,
        ])
        .unwrap();
    assert_eq!(got[0].low, 0x1234);
    assert_eq!(got[1].low, u64::MAX);
    assert_eq!(got[2].low, CODE);
    assert_eq!(got[3].low, PML4);
    assert_eq!(got[4].low, 0);
    assert_eq!(got[5].low & 0xF, 2, "VTL2 partition: the BSP runs at VTL 2");
    // TLFS HvRegisterVsmVpStatus: EnabledVtlSet in bits 31:16.
    assert_eq!(got[5].low >> 16 & 0xFFFF, 0b101, "VTL 0 and 2 enabled");
    // Refused: read-only, unknown, reserved bits; nothing of the batch is written.
    assert_eq!(
        status(v0.set_registers(&[(N::VP_INDEX, 1u64.into())])),
        Err(HvError::INVALID_PARAMETER)
    );
    assert_eq!(
        status(v0.set_registers(&[(N::RAX, 7u64.into()), (N(0x7777), 0u64.into())])),
        Err(HvError::INVALID_PARAMETER)
    );
    assert_eq!(
        v0.get_registers(&[N::RAX]).unwrap()[0].low,
        0,
        "batch refused as a whole"
    );
    assert_eq!(
        status(v0.get_registers(&[N(0x7777)])),
        Err(HvError::INVALID_PARAMETER)
    );
    // A KVM refusal (paging off while in long mode) is the host's error, with
    // the ioctl and its errno; nothing is disguised as an HV_STATUS.
    match v0.set_registers(&[(N::CR0, 0x11u64.into())]) {
        Err(hv_partition::VpError::Kvm { what, source }) => {
            assert_eq!((what, source.errno()), ("KVM_SET_SREGS", libc::EINVAL));
        }
        other => panic!("{other:?}"),
    }
    // Explicit suspend through the register; the initial APIC id only while suspended.
    v0.set_registers(&[(N::INITIAL_APIC_ID, 0u64.into())])
        .unwrap();
    v0.set_registers(&[(N::EXPLICIT_SUSPEND, 0u64.into())])
        .unwrap();
    assert!(!p.vp_state(vp(0)).unwrap().explicit_suspend());
    assert_eq!(
        status(v0.set_registers(&[(N::INITIAL_APIC_ID, 3u64.into())])),
        Err(HvError::INVALID_VP_STATE)
    );
    let v: HvRegisterValue = v0.get_registers(&[N::EXPLICIT_SUSPEND]).unwrap()[0];
    assert_eq!(v.low, 0);
    // Every other class of state: debug registers, XCR0, MSRs, MP state, VP model.
    let values: Vec<(N, HvRegisterValue)> = vec![
        (N::DR0, 0x1000u64.into()),
        (N::DR6, 0xFFFF_0FF0u64.into()),
        (N::DR7, 0x401u64.into()),
        (N::XFEM, 0x3u64.into()),
        (N::LSTAR, 0xFFFF_FFFF_8100_0000u64.into()),
        (N::INTERNAL_ACTIVITY_STATE, 2u64.into()),
        (N::INTERCEPT_SUSPEND, 1u64.into()),
    ];
    v0.set_registers(&values).unwrap();
    let names: Vec<N> = values.iter().map(|v| v.0).collect();
    let got = v0.get_registers(&names).unwrap();
    for ((n, want), got) in values.iter().zip(got) {
        assert_eq!(*want, got, "{n:?}");
    }
    let s = p.vp_state(vp(0)).unwrap();
    assert!(s.intercept_suspend() && s.activity() == Activity::Halted);
    assert_eq!(p.vp_activity(vp(0)), Ok(Activity::Halted));
    assert_eq!(p.vp_state(vp(9)).err(), Some(HvError::INVALID_VP_INDEX));
    assert_eq!(p.vp_activity(vp(9)).err(), Some(HvError::INVALID_VP_INDEX));
    assert_eq!(
        p.set_explicit_suspend(vp(9), true),
        Err(HvError::INVALID_VP_INDEX)
    );
    assert_eq!(p.config().max_vps, 2);
    assert!(p.kvm().get_max_vcpus() >= 2);
    let _ = p.vm();
    let _ = v0.vcpu_mut().get_regs().unwrap();
}

#[test]
fn concurrent_starts_of_one_vp_exactly_one_wins() {
    for round in 0..8 {
        let p = partition(2, None);
        let _v1 = p.create_vp(vp(1)).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<_> = (0..2)
            .map(|_| {
                let (p, b) = (p.clone(), barrier.clone());
                thread::spawn(move || {
                    b.wait();
                    p.start_virtual_processor(vp(1), Vtl::VTL0, &ctx64(CODE, stack(1)))
                        .map_err(|e| e.status())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: {results:?}");
        assert!(results.contains(&Err(HvError::INVALID_VP_STATE)));
    }
}

#[test]
fn cancel_a_spinning_a_waiting_and_a_suspended_vp() {
    let p = partition(3, None);
    p.memory()
        .write_slice(&Asm::default().spin().0, GuestAddress(CODE))
        .unwrap();
    let mut v0 = p.create_vp(vp(0)).unwrap();
    v0.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    let v1 = p.create_vp(vp(1)).unwrap(); // waits for SIPI
    let v2 = p.create_vp(vp(2)).unwrap(); // stays suspended
    p.set_explicit_suspend(vp(0), false).unwrap();
    p.set_explicit_suspend(vp(1), false).unwrap();
    let runs: Vec<_> = [v0, v1, v2]
        .into_iter()
        .map(|mut v| {
            thread::spawn(move || {
                let canceled = matches!(v.run(), VpExit::Canceled);
                (v.index().0, canceled)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    for i in 0..3 {
        p.cancel_run(vp(i)).unwrap();
    }
    for t in runs {
        let (i, canceled) = t.join().unwrap();
        assert!(canceled, "VP {i} was not canceled");
    }
    assert_eq!(p.cancel_run(vp(7)), Err(HvError::INVALID_VP_INDEX));
    // A cancel before a run ends that run at once.
    let mut v = partition(1, None).create_vp(vp(0)).unwrap();
    v.partition().cancel_run(vp(0)).unwrap();
    assert!(matches!(v.run(), VpExit::Canceled));
}

#[test]
fn an_ap_started_by_init_sipi_in_kvms_lapic_is_tracked_by_the_vp_model() {
    let p = partition(2, None);
    // The BSP switches its LAPIC to x2APIC and sends INIT, then SIPI (vector 0x0C,
    // real-mode start at 0xC000) to APIC id 1 through the ICR MSR.
    #[rustfmt::skip]
    let mut bsp = vec![
        0xB9, 0x1B, 0x00, 0x00, 0x00, 0x0F, 0x32,   // rdmsr IA32_APIC_BASE
        0x0D, 0x00, 0x04, 0x00, 0x00, 0x0F, 0x30,   // or eax, x2APIC enable; wrmsr
        0xB9, 0x30, 0x08, 0x00, 0x00,               // mov ecx, ICR (0x830)
        0xBA, 0x01, 0x00, 0x00, 0x00,               // mov edx, destination 1
        0xB8, 0x00, 0x45, 0x00, 0x00, 0x0F, 0x30,   // INIT, assert
        0xB8, 0x0C, 0x46, 0x00, 0x00, 0x0F, 0x30,   // SIPI, vector 0x0C
    ];
    bsp.extend(Asm::default().out(DONE as u8).spin().0);
    // The AP, in real mode at 0xC000: report 0x5A, then DONE.
    let ap = [0xB0, 0x5A, 0xE6, 0x10, 0xE6, DONE as u8, 0xEB, 0xFE];
    p.memory().write_slice(&bsp, GuestAddress(CODE)).unwrap();
    p.memory().write_slice(&ap, GuestAddress(0xC000)).unwrap();
    let mut v0 = p.create_vp(vp(0)).unwrap();
    v0.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    let v1 = p.create_vp(vp(1)).unwrap();
    let (tx, rx) = channel();
    let t0 = {
        let tx = tx.clone();
        thread::spawn(move || run_reporting(v0, tx))
    };
    let t1 = thread::spawn(move || run_reporting(v1, tx));
    p.set_explicit_suspend(vp(1), false).unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();
    let reports: Vec<Report> = rx.iter().collect();
    t0.join().unwrap();
    t1.join().unwrap();
    let ap: Vec<_> = reports
        .iter()
        .filter(|r| r.vp == 1)
        .map(|r| r.port)
        .collect();
    assert_eq!(ap, vec![0x10, DONE], "the AP ran after INIT/SIPI");
    let s = p.vp_state(vp(1)).unwrap();
    assert!(s.started() && s.activity() == Activity::Runnable, "{s:?}");
    assert_eq!(
        p.start_virtual_processor(vp(1), Vtl::VTL0, &ctx64(CODE, stack(1)))
            .map_err(|e| e.status()),
        Err(HvError::INVALID_VP_STATE),
        "a VP started by SIPI is started"
    );
}

#[test]
fn expected_vps_are_waited_for_and_a_withdrawn_promise_releases_waiters() {
    let p = partition(3, Some(Vtl::VTL0));
    let _v0 = p.create_vp(vp(0)).unwrap();
    // No promise: a VP not yet created is HV_STATUS_INVALID_VP_INDEX at once.
    let t = std::time::Instant::now();
    assert_eq!(
        p.vp_index_from_apic_id(1),
        Err(HvError::INVALID_PARAMETER),
        "GetVpIndexFromApicId of an APIC id no VP has"
    );
    assert_eq!(
        p.start_virtual_processor(vp(1), Vtl::VTL0, &ctx64(CODE, 0))
            .err()
            .map(|e| e.status()),
        Some(HvError::INVALID_VP_INDEX)
    );
    assert!(t.elapsed() < Duration::from_secs(1));

    // Promised: the start waits for VP 1's creation on another thread.
    p.expect_vps(3);
    let creator = {
        let p = p.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            p.create_vp(vp(1)).unwrap()
        })
    };
    let t = std::time::Instant::now();
    p.start_virtual_processor(vp(1), Vtl::VTL0, &ctx64(CODE, 0))
        .expect("a start of an expected VP waits for its creation");
    assert!(t.elapsed() >= Duration::from_millis(90));
    assert_eq!(p.vp_activity(vp(1)), Ok(Activity::Runnable));
    let _v1 = creator.join().unwrap();

    // VP 2 is never created: withdrawing the promise releases the waiter.
    let waiter = {
        let p = p.clone();
        thread::spawn(move || p.vp_index_from_apic_id(2))
    };
    thread::sleep(Duration::from_millis(100));
    assert!(!waiter.is_finished(), "waits while VP 2 is expected");
    p.expect_vps(0);
    assert_eq!(waiter.join().unwrap(), Err(HvError::INVALID_PARAMETER));
}

#[test]
fn cancel_all_ends_every_run_in_one_pass() {
    let p = partition(8, Some(Vtl::VTL0));
    // Every VP spins in the guest (the BSP) or waits for a SIPI in KVM (the APs).
    p.memory()
        .write_slice(&Asm::default().spin().0, GuestAddress(CODE))
        .unwrap();
    let mut threads = vec![];
    for i in 0..8 {
        let mut v = p.create_vp(vp(i)).unwrap();
        if i == 0 {
            v.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
        }
        threads.push(thread::spawn(move || {
            let mut exits = 0u32;
            loop {
                match v.run() {
                    hv_partition::VpExit::Canceled => return exits,
                    _ => exits += 1,
                }
            }
        }));
        p.set_explicit_suspend(vp(i), false).unwrap();
    }
    thread::sleep(Duration::from_millis(100));
    let t = std::time::Instant::now();
    p.cancel_all();
    for t in threads {
        t.join().unwrap();
    }
    // A hang would be caught by the test's timeout; the time is for the log.
    eprintln!("cancel_all + join of 8 VPs: {:?}", t.elapsed());
}

/// A started VP's registers, read by the host after its pending start was
/// loaded (into `kvm_run`'s synced registers) but before it ran, are the start
/// context's; after it ran, its own. Nine starts with nine system states also
/// pass through the partition's memory of accepted contexts (eight).
#[test]
fn a_started_vp_reads_its_context_before_and_after_it_runs() {
    use HvRegisterName as N;
    let p = partition(11, Some(Vtl::VTL0));
    const OWN_CODE: u64 = 0x3F000;
    p.memory()
        .write_slice(&Asm::default().out(0x20).spin().0, GuestAddress(OWN_CODE))
        .unwrap();
    let mut vps: Vec<_> = (0..11).map(|i| p.create_vp(vp(i)).unwrap()).collect();
    for i in 1..11u32 {
        let mut ctx = ctx64(OWN_CODE, stack(i));
        if i > 2 {
            // Never run: any page-aligned root in RAM is a distinct system state.
            ctx.cr3 = DATA + 0x1000 * i as u64;
        }
        p.start_virtual_processor(vp(i), Vtl::VTL0, &ctx).unwrap();
    }
    p.set_explicit_suspend(vp(1), false).unwrap();
    let v1 = &mut vps[1];
    assert!(v1.prepare_run().is_none(), "runnable");
    let before = v1.get_registers(&[N::RIP, N::RSP, N::CR3]).unwrap();
    assert_eq!(
        [before[0].low, before[1].low, before[2].low],
        [OWN_CODE, stack(1), PML4]
    );
    match v1.vcpu_for_run().run() {
        Ok(kvm_ioctls::VcpuExit::IoOut(0x20, _)) => {}
        other => panic!("expected the guest's OUT to 0x20, got {other:?}"),
    }
    v1.finish_run();
    // KVM-SVM completes a port write to user space at the next entry (RIP still
    // at the OUT); PVM before the exit (RIP after it).
    let at_out = [OWN_CODE, OWN_CODE + 2];
    let after = v1.get_registers(&[N::RIP, N::RSP]).unwrap();
    assert!(at_out.contains(&after[0].low), "RIP {:#x}", after[0].low);
    assert_eq!(after[1].low, stack(1));
    // VP 2 runs on the synced copy directly, then its registers are read.
    p.set_explicit_suspend(vp(2), false).unwrap();
    let v2 = &mut vps[2];
    assert!(v2.prepare_run().is_none(), "runnable");
    match v2.vcpu_for_run().run() {
        Ok(kvm_ioctls::VcpuExit::IoOut(0x20, _)) => {}
        other => panic!("expected the guest's OUT to 0x20, got {other:?}"),
    }
    v2.finish_run();
    let after = v2.get_registers(&[N::RIP, N::RSP]).unwrap();
    assert!(at_out.contains(&after[0].low), "RIP {:#x}", after[0].low);
    assert_eq!(after[1].low, stack(2));
}

/// A partition adopted into a VMM's VM checks start contexts on a VM of its own
/// (it adds no vCPU to the VMM's VM), with the same verdicts.
#[test]
fn an_adopted_partition_checks_starts_outside_the_vmms_vm() {
    use hv_partition::VmParts;
    let kvm = kvm_ioctls::Kvm::new().expect("the partition tests need /dev/kvm");
    let (vm, memory) = vm_with_ram(&kvm, 0);
    let p = Partition::adopt(
        VmParts {
            kvm: Arc::new(kvm),
            vm: Arc::new(vm),
            memory,
            ram_slots: vec![0],
            overlay_slots: None,
        },
        PartitionConfig {
            max_vps: 2,
            memory: vec![(0, RAM)],
            hyperv: None,
            cpuid_masks: vec![],
        },
        hv_partition::PartitionOptions::default(),
    )
    .unwrap();
    write_tables(p.memory());
    let _v0 = p.create_vp(vp(0)).unwrap();
    let _v1 = p.create_vp(vp(1)).unwrap();
    let good = ctx64(AP_CODE, stack(1));
    let smxe = hv_defs::InitialVpContext {
        cr4: good.cr4 | (1 << 14),
        ..good
    };
    p.prepare_starts(&[good]);
    assert_eq!(
        p.start_virtual_processor(vp(1), Vtl::VTL0, &smxe)
            .map_err(|e| e.status()),
        Err(HvError::INVALID_REGISTER_VALUE)
    );
    p.start_virtual_processor(vp(1), Vtl::VTL0, &good).unwrap();
    // The VMM's VM holds only its VPs: vCPU id 2 is still free.
    assert!(p.vm().create_vcpu(2).is_ok());
}

#[test]
fn the_start_check_uses_the_cpuid_the_vmm_set() {
    // The VMM declines set_cpuid and gives its vCPUs a CPUID with a smaller
    // MAXPHYADDR (4 bits less, leaf 0x80000008) than KVM's: a start context whose
    // CR3 lies above it cannot load on them (KVM_SET_SREGS checks CR3 against
    // the vCPU's MAXPHYADDR in long mode), so the start is refused
    // synchronously (TLFS HvCallStartVirtualProcessor:
    // HV_STATUS_INVALID_REGISTER_VALUE) and the target stays unstarted, rather
    // than the target failing its next run.
    use hv_partition::VmParts;
    let kvm = kvm_ioctls::Kvm::new().expect("the partition tests need /dev/kvm");
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let leaf = cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == 0x8000_0008)
        .expect("KVM reports leaf 0x80000008");
    let host_bits = leaf.eax & 0xFF;
    assert!(
        host_bits >= 36,
        "this test needs a MAXPHYADDR of 36 or more ({host_bits})"
    );
    let vmm_bits = host_bits - 4;
    leaf.eax = (leaf.eax & !0xFF) | vmm_bits;
    let (vm, memory) = vm_with_ram(&kvm, 0);
    let p = Partition::adopt(
        VmParts {
            kvm: Arc::new(kvm),
            vm: Arc::new(vm),
            memory,
            ram_slots: vec![0],
            overlay_slots: None,
        },
        PartitionConfig {
            max_vps: 2,
            memory: vec![(0, RAM)],
            hyperv: None,
            cpuid_masks: vec![],
        },
        hv_partition::PartitionOptions {
            set_cpuid: false,
            ..Default::default()
        },
    )
    .unwrap();
    write_tables(p.memory());
    let vps: Vec<_> = (0..2u32)
        .map(|i| {
            let v = p.vm().create_vcpu(i as u64).unwrap();
            v.set_cpuid2(&cpuid).unwrap();
            p.adopt_vp(vp(i), v).unwrap()
        })
        .collect();
    let good = ctx64(AP_CODE, stack(1));
    // Below KVM's MAXPHYADDR, above the VMM's.
    let high_cr3 = hv_defs::InitialVpContext {
        cr3: 1 << (vmm_bits + 1),
        ..good
    };
    assert_eq!(
        status(p.start_virtual_processor(vp(1), Vtl::VTL0, &high_cr3)),
        Err(HvError::INVALID_REGISTER_VALUE),
        "CR3 above the VMM's MAXPHYADDR"
    );
    assert_eq!(
        p.vp_activity(vp(1)).unwrap(),
        vp_state::Activity::WaitForSipi
    );
    p.start_virtual_processor(vp(1), Vtl::VTL0, &good).unwrap();
    drop(vps);
}

/// The TLFS status of a host call's failure; a host error fails the test.
fn status<T: std::fmt::Debug>(r: Result<T, hv_partition::VpError>) -> Result<T, HvError> {
    r.map_err(|e| match e {
        hv_partition::VpError::Status(s) => s,
        other => panic!("a host error where a TLFS status was expected: {other}"),
    })
}
