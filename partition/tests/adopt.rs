//! A VMM that owns its KVM objects and its run loop: the partition is built over
//! the VMM's VM and registered memory (`Partition::adopt`, its own slot numbers,
//! its own irqchip), the VP over the VMM's vCPU (`adopt_vp`), with the VMM's own
//! MSR range merged into the partition's filter and a kick callback. The VMM runs
//! `KVM_RUN` itself and hands the partition only the exits that are its own.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use exit_decoder::{decode, Access, VpExit};
use hv_defs::Vtl;
use hv_partition::hyperv::HYPERCALL_PORT;
use hv_partition::{
    Handled, HyperVConfig, Kick, Partition, PartitionConfig, PartitionOptions, VmParts,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// An MSR only this VMM serves; its filter range is merged with the partition's.
const VMM_MSR: u32 = 0x4B56_4D50;

extern "C" fn on_sigusr1(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

#[test]
fn a_vmm_with_its_own_vm_vcpu_and_run_loop() {
    let kvm = kvm_ioctls::Kvm::new().expect("the partition tests need /dev/kvm");
    let (vm, memory) = vm_with_ram(&kvm, 5);
    vm.create_irq_chip().unwrap();
    write_tables(&memory);

    // The VMM's kick: a signal of its own to the VP thread, until the VP's loop
    // has seen the request.
    vmm_sys_util::signal::register_signal_handler(libc::SIGUSR1, on_sigusr1).unwrap();
    let thread: Arc<OnceLock<libc::pthread_t>> = Arc::new(OnceLock::new());
    let loop_done = Arc::new(AtomicBool::new(false));
    let kicks = Arc::new(AtomicUsize::new(0));
    let kick = {
        let (thread, loop_done, kicks) = (thread.clone(), loop_done.clone(), kicks.clone());
        Kick::Callback(Arc::new(move |_vp| {
            kicks.fetch_add(1, Ordering::SeqCst);
            let (thread, loop_done) = (thread.clone(), loop_done.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                while !loop_done.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10)
                {
                    if let Some(&t) = thread.get() {
                        // SAFETY: `t` is the VP thread, alive until `loop_done`.
                        unsafe { libc::pthread_kill(t, libc::SIGUSR1) };
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }))
    };
    let p = Partition::adopt(
        VmParts {
            kvm: Arc::new(kvm),
            vm: Arc::new(vm),
            memory,
            ram_slots: vec![5],
            // The overlay takes the slots the VMM names.
            overlay_slots: Some([9, 12]),
        },
        PartitionConfig {
            max_vps: 1,
            memory: vec![(0, RAM)],
            hyperv: Some(HyperVConfig::booting_in(Vtl::VTL0)),
            cpuid_masks: vec![],
        },
        PartitionOptions {
            create_irqchip: false,
            msr_filter: vec![(VMM_MSR, 1)],
            kick,
            ..Default::default()
        },
    )
    .unwrap();
    // Adopting with memory the configuration does not describe is refused.
    let other = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let kvm2 = kvm_ioctls::Kvm::new().unwrap();
    let vm2 = kvm2.create_vm().unwrap();
    assert!(Partition::adopt(
        VmParts {
            kvm: Arc::new(kvm2),
            vm: Arc::new(vm2),
            memory: other,
            ram_slots: vec![0, 1],
            overlay_slots: None,
        },
        p.config().clone(),
        PartitionOptions::default(),
    )
    .is_err());

    let vcpu = p.vm().create_vcpu(0).unwrap();
    let mut bsp = p.adopt_vp(vp(0), vcpu).unwrap();
    assert!(
        p.adopt_vp(vp(0), p.vm().create_vcpu(1).unwrap()).is_err(),
        "VP 0 exists"
    );
    bsp.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    p.memory()
        .write_slice(&[0x5A; 4096], GuestAddress(HYPERCALL_PAGE))
        .unwrap();
    let code = Asm::default()
        .wrmsr(0x4000_0000, 0x8100_0000_0000_0000)
        .wrmsr(0x4000_0001, HYPERCALL_PAGE | 1)
        .rdmsr(0x4000_0002) // VP index: the partition's
        .out(0x30)
        .hypercall(0x46, 0, DATA, 0x31) // HvCallGetPartitionId
        .rdmsr(VMM_MSR) // the VMM's
        .out(0x33)
        .mov_rax(0xABCD)
        .out(HYPERCALL_PORT as u8) // a plain port write: the VMM's
        .load_eax(HYPERCALL_PAGE) // the overlay (slot 5 split around it)
        .out(0x34)
        .out(DONE as u8)
        .spin()
        .0;
    p.memory().write_slice(&code, GuestAddress(CODE)).unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();

    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u16, u32)>::new()));
    let msr_reads = Arc::new(AtomicU64::new(0));
    let runner = {
        let (p, seen, msr_reads, thread, loop_done) = (
            p.clone(),
            seen.clone(),
            msr_reads.clone(),
            thread.clone(),
            loop_done.clone(),
        );
        std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            let _ = thread.set(unsafe { libc::pthread_self() });
            loop {
                if let Some(exit) = bsp.prepare_run() {
                    assert!(matches!(exit, VpExit::Canceled), "{exit:?}");
                    break;
                }
                let index = bsp.index();
                let trap = match decode(bsp.vcpu_for_run().run()) {
                    VpExit::IoPortAccess {
                        port: HYPERCALL_PORT,
                        access: Access::Write(_),
                    } => true,
                    VpExit::IoPortAccess {
                        port,
                        access: Access::Write(d),
                    } => {
                        let mut b = [0u8; 4];
                        b[..d.len().min(4)].copy_from_slice(&d[..d.len().min(4)]);
                        seen.lock().unwrap().push((port, u32::from_le_bytes(b)));
                        false
                    }
                    VpExit::MsrAccess(mut m) => {
                        if p.handle_msr(index, &mut m) == Handled::NotMine {
                            assert_eq!(m.index, VMM_MSR);
                            msr_reads.fetch_add(1, Ordering::SeqCst);
                            if let Some(r) = m.read {
                                *r = 0x77;
                            }
                        }
                        false
                    }
                    VpExit::Canceled => false,
                    other => panic!("unexpected exit {other:?}"),
                };
                bsp.finish_run();
                if trap && bsp.serve_trap_port() == Handled::NotMine {
                    seen.lock().unwrap().push((HYPERCALL_PORT, 0xABCD));
                }
            }
            loop_done.store(true, Ordering::SeqCst);
        })
    };
    let start = Instant::now();
    while !seen.lock().unwrap().iter().any(|&(port, _)| port == DONE) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The VMM's kick callback gets the spinning VP out of KVM_RUN.
    p.cancel_run(vp(0)).unwrap();
    runner.join().unwrap();
    assert!(kicks.load(Ordering::SeqCst) >= 1);
    let seen: Vec<(u16, u32)> = seen
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|&(port, _)| port != DONE)
        .collect();
    assert_eq!(
        seen,
        vec![
            (0x30, 0),                                            // VP index 0
            (0x31, 0),                                            // GetPartitionId: success
            (0x32, 0),                                            // reps completed
            (0x33, 0x77),                                         // the VMM's MSR
            (HYPERCALL_PORT, 0xABCD),                             // not a hypercall
            (0x34, u32::from_le_bytes([0xE7, 0xE0, 0xC3, 0xCC])), // the overlay
        ]
    );
    assert_eq!(msr_reads.load(Ordering::SeqCst), 1);
    assert_eq!(
        p.memory().read_obj::<u64>(GuestAddress(DATA)).unwrap(),
        p.id().0
    );
}
