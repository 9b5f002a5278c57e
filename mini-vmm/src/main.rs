//! mini-vmm: the crates of this workspace cherry-picked by a VMM of its own.
//!
//! It owns everything `partition` would otherwise own: the `Kvm`, the `VmFd`, a
//! `GuestMemoryMmap`, one thread per vCPU and their run loops, and its own
//! hypercall trampoline (`out %eax, $0xE0; ret` at a GPA it chose). From the
//! workspace it takes only:
//!
//! * `exit-decoder` to decode each exit and the hypercall registers;
//! * `hv-hypercall` to dispatch the guest's hypercalls over its memory;
//! * `vp-state` for each VP's lifecycle (created, started once, VTL 0);
//! * `hv-regs` (`KvmVcpu`) to validate and load an HV_INITIAL_VP_CONTEXT (and
//!   make the AP runnable: the VM has KVM's in-kernel irqchip, so its APs are
//!   created waiting for INIT/SIPI);
//! * `hv-hypercall`'s `Caller` for the TLFS checks of the call.
//!
//! The guest's boot processor starts every other VP with
//! HvCallStartVirtualProcessor, then tries to start VP 1 a second time; each AP
//! reports its stack pointer. `mini-vmm --vcpus N` prints what happened and exits
//! 0, or 1 with a line saying what went wrong.
//!
//! `--partition` runs the same guest with `hv-partition` adopted into the same
//! kind of VM ([`adopted`]), as an outside VMM takes it: the VMM's own objects
//! and loops, the default kick, the guest's own hypercall page (it writes
//! HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL first).

mod adopted;

use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use exit_decoder::{decode, Access, HypercallExit, VpExit};
use hv_defs::{HvResult, InitialVpContext, PartitionId, VpIndex, Vtl};
use hv_hypercall::{dispatch, Caller, HypercallInput, StartVirtualProcessor};
use hv_regs::KvmVcpu;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vp_state::VpState;
use zerocopy::IntoBytes;

const RAM: u64 = 4 << 20;
/// This VMM's one partition, as HvCallGetPartitionId would name it.
const PARTITION: PartitionId = PartitionId(1);
const TRAMPOLINE: u64 = 0x5000;
const TRAP_PORT: u8 = 0xE0;
const TSS: u64 = 0x7000;
const GDT: u64 = 0x8000;
const PML4: u64 = 0x9000;
const BSP_CODE: u64 = 0x10000;
const AP_CODE: u64 = 0x18000;
const INPUTS: u64 = 0x40000;
/// Ports the guest reports on.
const PORT_STATUS: u8 = 0x20;
const PORT_AGAIN: u8 = 0x21;
const PORT_AP_RSP: u8 = 0x11;
const PORT_DONE: u8 = 0x1F;

fn stack(vp: u32) -> u64 {
    0x20000 + 0x1000 * (vp as u64 + 1) - 0x10
}

/// The VMM's view of one VP: its lifecycle and a context handed over by a start.
struct VpSlot {
    state: Mutex<(VpState, Option<InitialVpContext>)>,
    started: Condvar,
}

/// What the guest's hypercalls reach.
struct Shared {
    vps: Vec<VpSlot>,
}

/// The calls this VMM serves, for one calling VP.
struct GuestCalls<'a> {
    shared: &'a Shared,
    caller: VpIndex,
}

impl StartVirtualProcessor for GuestCalls<'_> {
    fn start_virtual_processor(
        &mut self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        target_vtl: Vtl,
        context: &InitialVpContext,
    ) -> HvResult<()> {
        // The TLFS checks every VMM shares: partition, VP exists, not the
        // caller, VTL not above the caller's.
        let caller = Caller {
            partition: PARTITION,
            vp: self.caller,
            vtl: Vtl::VTL0,
        };
        let vps = &self.shared.vps;
        let target = caller.start_target(partition_id, vp_index, target_vtl, |i| {
            (i.0 as usize) < vps.len()
        })?;
        let slot = &vps[target.0 as usize];
        let mut g = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        let started = g.0.start(target_vtl)?;
        hv_regs::context_to_kvm(context, &Default::default()).map_err(hv_regs::context_status)?;
        *g = (started, Some(*context));
        slot.started.notify_all();
        Ok(())
    }
}

hv_hypercall::impl_calls!(GuestCalls<'_>: StartVirtualProcessor);

/// What a VP thread saw.
enum Report {
    Port(u32, u8, u32),
    Failed(String),
}

fn asm_mov(reg: u8, v: u64) -> Vec<u8> {
    let (rex, op) = if reg >= 8 {
        (0x49, 0xB8 + reg - 8)
    } else {
        (0x48, 0xB8 + reg)
    };
    let mut c = vec![rex, op];
    c.extend(v.to_le_bytes());
    c
}

/// The boot processor: HvCallStartVirtualProcessor for VPs 1..n through the
/// trampoline (status on PORT_STATUS), once more for VP 1 (PORT_AGAIN), done.
fn bsp_code(n: u32) -> Vec<u8> {
    let call = |c: &mut Vec<u8>, input: u64, port: u8| {
        c.extend(asm_mov(1, 0x99)); // rcx: HvCallStartVirtualProcessor
        c.extend(asm_mov(2, input)); // rdx: input GPA
        c.extend(asm_mov(8, 0)); // r8
        c.extend(asm_mov(0, TRAMPOLINE));
        c.extend([0xFF, 0xD0, 0xE7, port]); // call rax; out port, eax
    };
    let mut c = vec![];
    for i in 1..n {
        call(&mut c, INPUTS + 0x1000 * i as u64, PORT_STATUS);
    }
    call(&mut c, INPUTS + 0x1000, PORT_AGAIN);
    c.extend([0xE7, PORT_DONE, 0xEB, 0xFE]);
    c
}

fn setup_memory(mem: &GuestMemoryMmap, n: u32) -> Result<(), String> {
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|e| e.to_string())
    };
    w(0xA000 | 3, PML4)?;
    w(0xB000 | 3, 0xA000)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, 0xB000 + 8 * i)?;
    }
    for (i, d) in [0u64, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF]
        .into_iter()
        .enumerate()
    {
        w(d, GDT + 8 * i as u64)?;
    }
    let put = |b: &[u8], at: u64| {
        mem.write_slice(b, GuestAddress(at))
            .map_err(|e| e.to_string())
    };
    put(&[0xE7, TRAP_PORT, 0xC3], TRAMPOLINE)?;
    put(&bsp_code(n), BSP_CODE)?;
    // mov rax, rsp; out PORT_AP_RSP, eax; jmp $
    put(&[0x48, 0x89, 0xE0, 0xE7, PORT_AP_RSP, 0xEB, 0xFE], AP_CODE)?;
    for i in 1..n {
        let mut input = PartitionId::SELF.0.to_le_bytes().to_vec();
        input.extend(i.to_le_bytes());
        input.extend([0u8; 4]); // VTL 0, RsvdZ
        let ctx = context(AP_CODE, stack(i));
        input.extend(ctx.as_bytes());
        put(&input, INPUTS + 0x1000 * i as u64)?;
    }
    Ok(())
}

fn context(rip: u64, rsp: u64) -> InitialVpContext {
    InitialVpContext::long_mode(rip, rsp, PML4)
        .with_gdt(GDT, 0x1F)
        .with_tss(TSS)
}

/// One VP's thread: an AP waits to be started, loads the context it was given
/// and runs; every VP serves the hypercall trap and reports its port writes.
fn vp_thread(
    index: u32,
    fd: VcpuFd,
    mem: GuestMemoryMmap,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Report>,
) {
    let fail = |why: String| {
        let _ = tx.send(Report::Failed(format!("VP {index}: {why}")));
    };
    let mut fd = fd;
    let vcpu = match KvmVcpu::new(&fd) {
        Ok(v) => v,
        Err(e) => return fail(e.to_string()),
    };
    let ctx = if index == 0 {
        context(BSP_CODE, stack(0))
    } else {
        let slot = &shared.vps[index as usize];
        let mut g = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(c) = g.1.take() {
                break c;
            }
            g = slot.started.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    };
    if let Err(e) = hv_regs::load_context(&vcpu, &ctx) {
        return fail(format!("loading its context: {e}"));
    }
    loop {
        let hypercall = match decode(fd.run()) {
            e if e.is_hypercall_trap(TRAP_PORT as u16) => true,
            VpExit::IoPortAccess {
                port,
                access: Access::Write(d),
            } => {
                let mut v = [0u8; 4];
                v[..d.len().min(4)].copy_from_slice(&d[..d.len().min(4)]);
                let _ = tx.send(Report::Port(index, port as u8, u32::from_le_bytes(v)));
                if port as u8 == PORT_DONE || port as u8 == PORT_AP_RSP {
                    return;
                }
                false
            }
            other => return fail(format!("unexpected exit {other:?}")),
        };
        if hypercall {
            let mut regs = match fd.get_regs() {
                Ok(r) => r,
                Err(e) => return fail(e.to_string()),
            };
            let hc = HypercallExit::from_regs(&regs);
            let call = HypercallInput {
                control: hc.control,
                input: hc.rdx,
                output: hc.r8,
            };
            let mut calls = GuestCalls {
                shared: &shared,
                caller: VpIndex(index),
            };
            regs.rax = dispatch(&mem, call, &mut calls).0;
            if let Err(e) = fd.set_regs(&regs) {
                return fail(e.to_string());
            }
        }
    }
}

/// `/dev/kvm`, a VM, and `RAM` bytes of guest memory registered as slot 0.
fn vm_with_ram() -> Result<(Kvm, kvm_ioctls::VmFd, GuestMemoryMmap), String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)])
        .map_err(|e| e.to_string())?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| e.to_string())?;
    // SAFETY: the region is mapped for RAM bytes at `host`, and the callers keep
    // `mem` (or a clone of the same mapping) for as long as the VM exists.
    unsafe {
        vm.set_user_memory_region(kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: RAM,
            userspace_addr: host as u64,
        })
    }
    .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    Ok((kvm, vm, mem))
}

fn run(n: u32) -> Result<Vec<String>, String> {
    let (kvm, vm, mem) = vm_with_ram()?;
    // KVM's in-kernel irqchip, as most VMMs have: every vCPU but the first is
    // then created UNINITIALIZED (waiting for INIT/SIPI), and a start must
    // make it runnable (hv_regs::load_context does).
    vm.create_irq_chip()
        .map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
    setup_memory(&mem, n)?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        vps: (0..n)
            .map(|i| {
                VpState::new(VpIndex(i), Vtl::VTL0).map(|s| VpSlot {
                    state: Mutex::new((s, None)),
                    started: Condvar::new(),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
    });
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let fd = vm
            .create_vcpu(i as u64)
            .map_err(|e| format!("KVM_CREATE_VCPU {i}: {e}"))?;
        fd.set_cpuid2(&cpuid).map_err(|e| e.to_string())?;
        let (mem, shared, tx) = (mem.clone(), shared.clone(), tx.clone());
        std::thread::spawn(move || vp_thread(i, fd, mem, shared, tx));
    }
    collect(&rx, n)
}

/// What the guest reported on `rx`, as lines, once every AP ran and the BSP is
/// done; an error line for a failed start, a failed VP or a guest that hangs.
fn collect(rx: &mpsc::Receiver<Report>, n: u32) -> Result<Vec<String>, String> {
    let mut lines = vec![];
    let mut aps = 0;
    let mut bsp_done = false;
    while aps < n - 1 || !bsp_done {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Report::Port(vp, PORT_AP_RSP, rsp)) => {
                aps += 1;
                if rsp as u64 != stack(vp) {
                    return Err(format!(
                        "VP {vp} runs with RSP {rsp:#x}, not {:#x}",
                        stack(vp)
                    ));
                }
                lines.push(format!(
                    "VP {vp} started by HvCallStartVirtualProcessor, RSP {rsp:#x}"
                ));
            }
            Ok(Report::Port(0, PORT_STATUS, s)) if s != 0 => {
                return Err(format!("a start failed with HV_STATUS {s:#x}"));
            }
            Ok(Report::Port(0, PORT_AGAIN, s)) => lines.push(format!(
                "second start of VP 1: HV_STATUS {s:#06x} ({})",
                hv_defs::HvStatus(s as u16).name().unwrap_or("?")
            )),
            Ok(Report::Port(0, PORT_DONE, _)) => bsp_done = true,
            Ok(Report::Port(..)) => {}
            Ok(Report::Failed(why)) => return Err(why),
            Err(_) => return Err("the guest did not finish in 60 s".into()),
        }
    }
    Ok(lines)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut n = 4;
    let mut with_partition = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.clone().next().map(|v| v.parse::<u32>())) {
            ("--vcpus", Some(Ok(v))) if (2..=64).contains(&v) => {
                n = v;
                it.next();
            }
            ("--partition", _) => with_partition = true,
            _ => {
                eprintln!("usage: mini-vmm [--vcpus N] [--partition]   (2 <= N <= 64)");
                std::process::exit(2);
            }
        }
    }
    let result = if with_partition {
        adopted::run(n)
    } else {
        run(n)
    };
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("mini-vmm: error: {e}");
            std::process::exit(1);
        }
    }
}
