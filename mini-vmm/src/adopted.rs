//! The same guest with `hv-partition` adopted, as a VMM outside this workspace
//! takes it: the VMM creates the `Kvm`, the `VmFd` (shared as `Arc`), the guest
//! memory, the in-kernel irqchip and every vCPU itself, and runs each vCPU in a
//! loop of its own; the partition is built over them with the default kick
//! (`PartitionOptions::default()`, only the irqchip declined) and is handed
//! the exits that are its own. The guest enables the partition's hypercall page
//! at the trampoline's GPA (HV_X64_MSR_GUEST_OS_ID, then HV_X64_MSR_HYPERCALL)
//! and starts its APs through it.

use std::sync::{mpsc, Arc};
use std::time::Instant;

use exit_decoder::{decode, Access, VpExit};
use hv_defs::{VpIndex, Vtl};
use hv_partition::hyperv::HYPERCALL_PORT;
use hv_partition::{Handled, HyperVConfig, Partition, PartitionConfig, PartitionOptions};
use hv_partition::{VmParts, Vp};
use vm_memory::{Bytes, GuestAddress};

use crate::{bsp_code, collect, context, setup_memory, stack, vm_with_ram, Report};
use crate::{BSP_CODE, RAM, TRAMPOLINE};

/// HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL.
const MSR_GUEST_OS_ID: u32 = 0x4000_0000;
const MSR_HYPERCALL: u32 = 0x4000_0001;

/// `wrmsr` of `value` into `msr`.
fn wrmsr(msr: u32, value: u64) -> Vec<u8> {
    let mut c = vec![0xB9];
    c.extend(msr.to_le_bytes());
    c.push(0xB8);
    c.extend((value as u32).to_le_bytes());
    c.push(0xBA);
    c.extend(((value >> 32) as u32).to_le_bytes());
    c.extend([0x0F, 0x30]);
    c
}

/// Runs the guest of `n` VPs with the partition adopted; the lines to print.
pub fn run(n: u32) -> Result<Vec<String>, String> {
    let (kvm, vm, mem) = vm_with_ram()?;
    let vm = Arc::new(vm);
    vm.create_irq_chip()
        .map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
    setup_memory(&mem, n)?;
    // The guest enables the partition's hypercall page where the trampoline
    // was, then starts its APs through it as before.
    let mut code = wrmsr(MSR_GUEST_OS_ID, 0x8100_0000_0000_0000);
    code.extend(wrmsr(MSR_HYPERCALL, TRAMPOLINE | 1));
    code.extend(bsp_code(n));
    mem.write_slice(&code, GuestAddress(BSP_CODE))
        .map_err(|e| e.to_string())?;

    let p = Partition::adopt(
        VmParts {
            kvm: Arc::new(kvm),
            vm: vm.clone(),
            memory: mem,
            ram_slots: vec![0],
            overlay_slots: Some([1, 2]),
        },
        PartitionConfig {
            max_vps: n,
            memory: vec![(0, RAM)],
            hyperv: Some(HyperVConfig::booting_in(Vtl::VTL0)),
            cpuid_masks: vec![],
        },
        PartitionOptions {
            create_irqchip: false,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    // The BSP runs while the others are still being adopted: a start naming
    // one of them waits for it instead of failing with INVALID_VP_INDEX.
    p.expect_vps(n);
    let (tx, rx) = mpsc::channel();
    let mut threads = vec![];
    for i in 0..n {
        let fd = vm
            .create_vcpu(i as u64)
            .map_err(|e| format!("KVM_CREATE_VCPU {i}: {e}"))?;
        let mut vp = p.adopt_vp(VpIndex(i), fd).map_err(|e| e.to_string())?;
        if i == 0 {
            vp.set_registers(&hv_regs::context_registers(&context(BSP_CODE, stack(0))))
                .map_err(|e| format!("VP 0's registers: {e}"))?;
        }
        p.set_explicit_suspend(VpIndex(i), false)
            .map_err(|e| e.to_string())?;
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || vmm_loop(vp, tx)));
    }
    let lines = collect(&rx, n);
    p.cancel_all();
    for t in threads {
        let _ = t.join();
    }
    let mut lines = lines?;
    lines.push(format!(
        "hypercalls served by hv-partition: {}",
        p.stats()
            .hypercall_count(hv_defs::HypercallCode::START_VIRTUAL_PROCESSOR)
    ));
    Ok(lines)
}

/// One vCPU's loop, the VMM's own: `KVM_RUN` between `prepare_run` and
/// `finish_run`, the partition's exits handed to it, the guest's report ports
/// sent to `tx`. It ends when the partition cancels the run.
fn vmm_loop(mut vp: Vp, tx: mpsc::Sender<Report>) {
    let p = vp.partition().clone();
    let index = vp.index();
    let fail = |why: String| {
        let _ = tx.send(Report::Failed(format!("VP {}: {why}", index.0)));
    };
    loop {
        if let Some(exit) = vp.prepare_run() {
            if !matches!(exit, VpExit::Canceled) {
                fail(format!("cannot run: {exit:?}"));
            }
            return;
        }
        let start = Instant::now();
        let (mut trap, mut write_at, mut report) = (false, None, None);
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
                    let mut v = [0u8; 4];
                    v[..d.len().min(4)].copy_from_slice(&d[..d.len().min(4)]);
                    report = Some((port as u8, u32::from_le_bytes(v)));
                }
                VpExit::MsrAccess(mut m) => {
                    if p.handle_msr(index, &mut m) == Handled::NotMine {
                        *m.error = 1; // #GP: this VMM has no MSRs of its own
                    }
                }
                VpExit::MemoryAccess {
                    gpa,
                    access: Access::Write(_),
                } => write_at = Some(gpa),
                VpExit::Canceled => {}
                other => {
                    let why = format!("unexpected exit {other:?}");
                    vp.finish_run();
                    return fail(why);
                }
            }
        }
        vp.finish_run();
        if trap && vp.serve_trap_port() == Handled::NotMine {
            return fail("a plain write to the hypercall port".into());
        }
        if let Some(gpa) = write_at {
            if vp.serve_memory_write(gpa) == Handled::NotMine {
                return fail(format!("a write to {gpa:#x}, which is no device"));
            }
        }
        if let Some((port, value)) = report {
            let _ = tx.send(Report::Port(index.0, port, value));
        }
    }
}
