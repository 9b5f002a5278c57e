//! A VMM outside this crate, as a new user writes one: its own `Kvm`, `VmFd`,
//! `GuestMemoryMmap` and in-kernel irqchip, two vCPUs it creates, one thread and
//! one run loop per vCPU, and hv-partition adopted with the default kick (a
//! signal for which the VMM already has a handler of its own). The guest writes
//! HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL, starts VP 1 with
//! HvCallStartVirtualProcessor, and then moves the hypercall page while VP 1
//! spins in its own loop: each MSR write pauses every VP from inside VP 0's own
//! exit handling, which must neither wait for VP 0 itself nor miss VP 1.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use exit_decoder::{decode, Access, VpExit};
use hv_defs::{PartitionId, StartVirtualProcessorInput, Vtl};
use hv_partition::hyperv::HYPERCALL_PORT;
use hv_partition::{Handled, HyperVConfig, Partition, PartitionConfig, PartitionOptions};
use hv_partition::{Kick, VmParts, Vp};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::IntoBytes;

/// Where the guest moves its hypercall page to.
const MOVED_PAGE: u64 = 0x6000;
/// The BSP writes this port once VP 1 must be running: the VMM holds the BSP
/// there until VP 1 has reported.
const PORT_WAIT_FOR_AP: u16 = 0x40;
/// A report port the guest writes the StartVirtualProcessor status to, and the
/// GetPartitionId status through the moved page.
const PORT_START: u8 = 0x20;
const PORT_MOVED: u8 = 0x22;

static VMM_HANDLER_RUNS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn vmm_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    VMM_HANDLER_RUNS.fetch_add(1, Ordering::SeqCst);
}

/// The VMM's loop for one vCPU, as its own code would be: KVM_RUN through
/// `prepare_run`/`finish_run`, the partition's exits handed to it, its own
/// ports reported to `tx`; it ends when the partition cancels the run.
fn vmm_loop(
    mut vp: Vp,
    tx: Sender<Report>,
    ap_done: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
) {
    let p = vp.partition().clone();
    let index = vp.index();
    loop {
        if let Some(exit) = vp.prepare_run() {
            assert!(matches!(exit, VpExit::Canceled), "{exit:?}");
            return;
        }
        let start = Instant::now();
        let mut trap = false;
        let mut overlay_write = None;
        let mut report = None;
        {
            let exit = decode(vp.vcpu_for_run().run());
            p.stats().record_exit(&exit, start.elapsed());
            match exit {
                VpExit::IoPortAccess {
                    port: HYPERCALL_PORT,
                    access: Access::Write(_),
                } => trap = true,
                VpExit::IoPortAccess {
                    port,
                    access: Access::Write(d),
                } => {
                    let mut b = [0u8; 4];
                    b[..d.len().min(4)].copy_from_slice(&d[..d.len().min(4)]);
                    report = Some((port, u32::from_le_bytes(b)));
                }
                // The partition's MSRs, served while the exit still borrows the
                // vCPU: placing the hypercall page pauses every VP from here.
                VpExit::MsrAccess(mut m) => {
                    if p.handle_msr(index, &mut m) == Handled::NotMine {
                        *m.error = 1;
                    }
                }
                VpExit::MemoryAccess {
                    gpa,
                    access: Access::Write(_),
                } => overlay_write = Some(gpa),
                VpExit::Canceled => {}
                other => panic!("VP {}: unexpected exit {other:?}", index.0),
            }
        }
        vp.finish_run();
        if trap {
            assert_eq!(vp.serve_trap_port(), Handled::Served);
        }
        if let Some(gpa) = overlay_write {
            assert_eq!(vp.serve_memory_write(gpa), Handled::Served);
        }
        if let Some((port, value)) = report {
            if port == PORT_WAIT_FOR_AP {
                let (done, cv) = &*ap_done;
                let mut d = done.lock().unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !*d {
                    assert!(Instant::now() < deadline, "VP 1 never reported");
                    d = cv.wait_timeout(d, Duration::from_millis(50)).unwrap().0;
                }
                continue;
            }
            if index.0 == 1 && port == DONE {
                let (done, cv) = &*ap_done;
                *done.lock().unwrap() = true;
                cv.notify_all();
            }
            let _ = tx.send(Report {
                vp: index.0,
                port,
                value,
            });
        }
    }
}

#[test]
fn an_outside_vmm_with_its_own_loops_and_the_default_kick() {
    let kvm = kvm_ioctls::Kvm::new().expect("the partition tests need /dev/kvm");
    let (vm, memory) = vm_with_ram(&kvm, 0);
    let vm = Arc::new(vm);
    vm.create_irq_chip().unwrap();
    write_tables(&memory);
    // The VMM has its own handler for the signal the default kick uses.
    let Kick::Signal(signal) = Kick::default() else {
        panic!("the default kick is a signal");
    };
    vmm_sys_util::signal::register_signal_handler(signal, vmm_handler).unwrap();

    let p = Partition::adopt(
        VmParts {
            kvm: Arc::new(kvm),
            vm: vm.clone(),
            memory,
            ram_slots: vec![0],
            overlay_slots: None,
        },
        PartitionConfig {
            max_vps: 2,
            memory: vec![(0, RAM)],
            hyperv: Some(HyperVConfig::booting_in(Vtl::VTL0)),
            cpuid_masks: vec![],
        },
        PartitionOptions {
            create_irqchip: false,
            ..Default::default()
        },
    )
    .unwrap();
    // The partition kept the VMM's handler.
    // SAFETY: a zeroed sigaction is a valid out-parameter; null reads only.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers and signal number.
    let read = unsafe { libc::sigaction(signal, std::ptr::null(), &mut act) };
    assert_eq!(read, 0);
    assert_eq!(
        act.sa_sigaction, vmm_handler as *const () as usize,
        "handler replaced"
    );

    let mut bsp = p.adopt_vp(vp(0), vm.create_vcpu(0).unwrap()).unwrap();
    let ap = p.adopt_vp(vp(1), vm.create_vcpu(1).unwrap()).unwrap();
    bsp.set_registers(&bsp_registers(CODE, stack(0))).unwrap();
    let input = StartVirtualProcessorInput {
        partition_id: PartitionId::SELF,
        vp_index: vp(1),
        target_vtl: Vtl::VTL0,
        rsvdz: [0; 3],
        vp_context: ctx64(AP_CODE, stack(1)),
    };
    p.memory()
        .write_slice(input.as_bytes(), GuestAddress(DATA + 0x100))
        .unwrap();
    let code = Asm::default()
        .wrmsr(0x4000_0000, 0x8100_0000_0000_0000)
        .wrmsr(0x4000_0001, HYPERCALL_PAGE | 1)
        .hypercall(0x99, DATA + 0x100, 0, PORT_START)
        .out(PORT_WAIT_FOR_AP as u8)
        // VP 1 spins in KVM_RUN now: moving the page must get it out.
        .wrmsr(0x4000_0001, MOVED_PAGE | 1)
        .mov_rcx(0x46)
        .mov_rdx(0)
        .mov_r8(DATA)
        .mov_rax(MOVED_PAGE)
        .call_rax()
        .out(PORT_MOVED)
        .out(DONE as u8)
        .spin()
        .0;
    p.memory().write_slice(&code, GuestAddress(CODE)).unwrap();
    p.memory()
        .write_slice(&report_code(), GuestAddress(AP_CODE))
        .unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();
    p.set_explicit_suspend(vp(1), false).unwrap();

    let (tx, rx) = channel();
    let ap_done = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let threads: Vec<_> = [bsp, ap]
        .into_iter()
        .map(|v| {
            let (tx, ap_done) = (tx.clone(), ap_done.clone());
            std::thread::spawn(move || vmm_loop(v, tx, ap_done))
        })
        .collect();
    drop(tx);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.iter().filter(|r: &&Report| r.port == DONE).count() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => seen.push(r),
            Err(_) => panic!("the VMM hung (a VP waiting for itself?): saw {seen:?}"),
        }
    }
    p.cancel_all();
    for t in threads {
        t.join().unwrap();
    }
    let on = |vp: u32, port: u8| -> Vec<u32> {
        seen.iter()
            .filter(|r| r.vp == vp && r.port == port as u16)
            .map(|r| r.value)
            .collect()
    };
    assert_eq!(on(0, PORT_START), vec![0], "StartVirtualProcessor: success");
    assert_eq!(on(1, 0x10), vec![1], "VP 1 reads its own VP index");
    assert_eq!(on(1, 0x11), vec![stack(1) as u32], "VP 1 runs its context");
    assert_eq!(on(1, 0x12), vec![0x1122_3344]);
    assert_eq!(
        on(0, PORT_MOVED),
        vec![0],
        "a hypercall through the moved page"
    );
    assert_eq!(p.hypercall_overlay(), Some(MOVED_PAGE));
    assert_eq!(
        p.memory().read_obj::<u64>(GuestAddress(DATA)).unwrap(),
        p.id().0
    );
    // The loops fed the exit table; the VMM's handler ran for the kicks.
    let exits = p.stats().exits();
    let count = |name: &str| {
        exits
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, c)| c.count)
    };
    assert!(count("MsrAccess") >= 3, "{exits:?}");
    assert!(count("IoPortAccess (hypercall)") >= 2, "{exits:?}");
    assert!(VMM_HANDLER_RUNS.load(Ordering::SeqCst) >= 1);
}
