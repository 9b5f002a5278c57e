//! reference-vmm: boots Linux on KVM with every secondary processor started
//! through the TLFS StartVirtualProcessor model of the `partition` crate.

mod acpi;
mod boot;
mod devices;
mod layout;
mod pvm;
mod timeline;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use hv_defs::{VpIndex, Vtl};
use partition::{Access, HyperVConfig, Partition, PartitionConfig, Vp, VpExit};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::{Devices, GuestExit};
use crate::timeline::Timeline;

/// The default kernel command line: the serial console, reboot on panic, no PCI
/// bus to probe. On a PVM host the options of `pvm::PVM_CMDLINE` are added.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1 pci=off";

/// How the guest sees its hypervisor.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum HyperV {
    /// A plain KVM guest; APs start through the ACPI MP wakeup mailbox.
    Off,
    /// Microsoft Hyper-V with the guest in VTL 2: CPUID leaves, synthetic MSRs, the
    /// hypercall page; a CONFIG_HYPERV_VTL_MODE kernel starts its APs with
    /// HvCallStartVirtualProcessor. Adds `noxsave`, which VTL mode requires.
    Vtl2,
}

/// Boots a Linux kernel on KVM; every AP is started through StartVirtualProcessor.
///
/// Exit status: 0 the guest powered off (ACPI S5); 1 a VMM error (bad input, no
/// KVM); 2 bad command-line usage; 3 the guest rebooted (ACPI reset register or
/// i8042 reset); 4 the guest crashed (triple fault, unhandleable emulation
/// failure).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, after_help = EXIT_HELP)]
struct Args {
    /// The kernel: a bzImage, or an ELF vmlinux (PVH ELF included).
    #[arg(long)]
    kernel: PathBuf,
    /// Number of virtual processors.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory, with an optional K, M or G suffix.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    memory: u64,
    /// An initramfs (cpio, optionally compressed as the kernel supports).
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Present Hyper-V to the guest.
    #[arg(long, value_enum, default_value_t = HyperV::Off)]
    hyperv: HyperV,
    /// Print a boot timeline on stderr.
    #[arg(long)]
    timings: bool,
    /// At exit, print exits by reason and hypercalls by code on stderr.
    #[arg(long)]
    stats: bool,
}

const EXIT_HELP: &str = "Exit status: 0 guest powered off, 1 VMM error, 2 usage error, \
3 guest rebooted, 4 guest crashed (triple fault, unhandleable emulation failure).";

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 512M, 2G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Everything that ends the VMM with status 1.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The kernel image.
    #[error("kernel {0}: {1}")]
    Kernel(PathBuf, String),
    /// The initramfs.
    #[error("initramfs {0}: {1}")]
    Initramfs(PathBuf, String),
    /// The vCPU count.
    #[error("--vcpus {0}: must be between 1 and {1} on this host")]
    Vcpus(u32, u32),
    /// Memory too small.
    #[error(
        "--memory {memory} bytes is too small: the kernel and initramfs need at least {needed}"
    )]
    TooSmall {
        /// Requested.
        memory: u64,
        /// Needed.
        needed: u64,
    },
    /// Memory too large.
    #[error("--memory {0} bytes is more than this host has ({1} bytes)")]
    TooLarge(u64, u64),
    /// KVM.
    #[error("{0}")]
    Partition(#[from] partition::PartitionError),
    /// A guest-memory write.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The command line.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Anything else during setup.
    #[error("{0}")]
    Setup(String),
}

fn host_memory() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() {
    let args = Args::parse();
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("reference-vmm: error: {e}");
            std::process::exit(1);
        }
    }
}

/// Reads stdin into the serial port and watches for the guest's end.
struct Console {
    devices: Arc<Devices>,
    done: bool,
}

impl MutEventSubscriber for Console {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.devices.exit.event.as_raw_fd() {
            self.done = true;
            return;
        }
        let mut buf = [0u8; 64];
        // SAFETY: reading into a local buffer of the given length from fd 0.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // EOF or error: stop watching stdin (CI has none).
            let _ = ops.remove(Events::empty_raw(0));
            return;
        }
        let mut s = self
            .devices
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _ = s.enqueue_raw_bytes(&buf[..n as usize]);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.devices.exit.event, EventSet::IN));
        // No stdin (a closed descriptor) simply means no console input.
        let _ = ops.add(Events::new_raw(0, EventSet::IN));
    }
}

fn run(args: Args) -> Result<i32, VmmError> {
    let start = Instant::now();
    let timeline = Arc::new(Timeline::new(start, args.timings));
    timeline.mark("VMM start");

    // Input checks that need no KVM.
    boot::kernel_format(&args.kernel)?;
    if let Some(i) = &args.initramfs {
        std::fs::metadata(i).map_err(|e| VmmError::Initramfs(i.clone(), e.to_string()))?;
    }
    if let Some(total) = host_memory() {
        if args.memory > total {
            return Err(VmmError::TooLarge(args.memory, total));
        }
    }
    if args.memory < (64 << 20) {
        return Err(VmmError::TooSmall {
            memory: args.memory,
            needed: 64 << 20,
        });
    }
    let kvm_max = kvm_ioctls::Kvm::new()
        .map_err(partition::PartitionError::OpenKvm)?
        .get_max_vcpus()
        .min(254) as u32;
    if args.vcpus == 0 || args.vcpus > kvm_max {
        return Err(VmmError::Vcpus(args.vcpus, kvm_max));
    }

    let hyperv = match args.hyperv {
        HyperV::Off => None,
        HyperV::Vtl2 => Some(HyperVConfig {
            boot_vtl: Vtl::VTL2,
        }),
    };
    let pvm = pvm::is_pvm_host();
    let partition = Partition::new(PartitionConfig {
        max_vps: args.vcpus,
        memory: layout::ram_ranges(args.memory),
        hyperv,
        cpuid_masks: if pvm { pvm::pvm_cpuid_masks() } else { vec![] },
    })?;
    let mem = partition.memory().clone();
    let t = timeline.clone();
    partition.set_start_observer(Box::new(move |vp, vtl| {
        t.mark(&format!(
            "AP {} started through StartVirtualProcessor (VTL {})",
            vp.0, vtl.0
        ))
    }));

    let (loaded, setup_header) = boot::load_kernel(&mem, &args.kernel)?;
    let initrd = match &args.initramfs {
        Some(path) => {
            let max = setup_header.map_or(0x7FFF_FFFF, |h| h.initrd_addr_max as u64);
            Some(boot::load_initramfs(
                &mem,
                path,
                args.memory,
                loaded.kernel_end,
                max,
            )?)
        }
        None => None,
    };
    if loaded.kernel_end + (16 << 20) > layout::low_ram_top(args.memory) {
        return Err(VmmError::TooSmall {
            memory: args.memory,
            needed: loaded.kernel_end + (16 << 20),
        });
    }
    boot::write_page_tables_and_gdt(&mem)?;
    let tables = acpi::build(&acpi::MadtConfig {
        apic_ids: (0..args.vcpus as u8).collect(),
        mp_wakeup: hyperv.is_none(),
    });
    for (addr, bytes) in &tables.pieces {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|e| VmmError::Memory(e.to_string()))?;
    }
    let mut cmdline = args.cmdline.clone();
    let mut add = |opt: &str| {
        if !cmdline.split_whitespace().any(|w| w == opt) {
            cmdline.push(' ');
            cmdline.push_str(opt);
        }
    };
    if hyperv.is_some() {
        add("noxsave");
    }
    if pvm {
        eprintln!(
            "reference-vmm: this host's KVM is PVM (kvm_pvm): adding '{}' to the kernel command line and hiding KVM's hypercall-based paravirtual features",
            pvm::PVM_CMDLINE
        );
        pvm::PVM_CMDLINE.split_whitespace().for_each(&mut add);
    }
    boot::write_boot_params(
        &mem,
        args.memory,
        &cmdline,
        setup_header,
        initrd,
        tables.rsdp,
    )?;
    timeline.mark(&format!("kernel loaded (entry {:#x})", loaded.entry));

    // Devices.
    let serial_irq =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::Setup(e.to_string()))?;
    partition
        .vm()
        .register_irqfd(&serial_irq, 4)
        .map_err(|e| VmmError::Setup(format!("KVM_IRQFD: {e}")))?;
    let devices = Arc::new(
        Devices::new(
            partition.clone(),
            serial_irq,
            Box::new(std::io::stdout()),
            timeline.clone(),
        )
        .map_err(|e| VmmError::Setup(e.to_string()))?,
    );

    // VPs: created suspended; the BSP's registers set by HV name; then released.
    let mut vps = vec![];
    for i in 0..args.vcpus {
        let vp = partition
            .create_vp(VpIndex(i))
            .map_err(|e| VmmError::Setup(format!("HvCreateVp {i}: {e}")))?;
        vps.push(vp);
    }
    vps[0]
        .set_registers(&boot::bsp_registers(loaded.entry))
        .map_err(|e| VmmError::Setup(format!("BSP registers: {e}")))?;
    let mut threads = vec![];
    for vp in vps {
        let (d, t) = (devices.clone(), timeline.clone());
        let name = format!("vp{}", vp.index().0);
        let h = std::thread::Builder::new()
            .name(name)
            .spawn(move || vp_loop(vp, d, t))
            .map_err(|e| VmmError::Setup(e.to_string()))?;
        threads.push(h);
    }
    for i in 0..args.vcpus {
        partition
            .set_explicit_suspend(VpIndex(i), false)
            .map_err(|e| VmmError::Setup(e.to_string()))?;
    }

    let mut em = EventManager::<Console>::new().map_err(|e| VmmError::Setup(format!("{e:?}")))?;
    let id = em.add_subscriber(Console {
        devices: devices.clone(),
        done: false,
    });
    loop {
        let _ = em.run_with_timeout(200);
        let done = em.subscriber_mut(id).map(|c| c.done).unwrap_or(true);
        if done || devices.exit.get().is_some() {
            break;
        }
    }
    let exit = devices
        .exit
        .get()
        .unwrap_or(GuestExit::Crash("no exit recorded".into()));
    for i in 0..args.vcpus {
        let _ = partition.cancel_run(VpIndex(i));
    }
    for t in threads {
        let _ = t.join();
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
    match &exit {
        GuestExit::PowerOff => timeline.mark("exit: guest powered off"),
        GuestExit::Reboot => timeline.mark("exit: guest rebooted"),
        GuestExit::Crash(why) => {
            timeline.mark("exit: guest crashed");
            eprintln!("reference-vmm: guest crashed: {why}");
        }
    }
    if args.stats {
        eprint!("{}", partition.stats());
        for (what, n) in devices.handled() {
            eprintln!("emulation failures handled by the VMM: {what} x {n}");
        }
    }
    Ok(exit.status())
}

/// What to do after an exit's borrow of the VP has ended.
enum Next {
    Continue,
    Stop,
    InternalError,
}

fn vp_loop(mut vp: Vp, devices: Arc<Devices>, timeline: Arc<Timeline>) {
    let index = vp.index().0;
    let mut first = true;
    loop {
        if first && index == 0 {
            timeline.mark("BSP first entry");
        }
        first = false;
        let next = match vp.run() {
            VpExit::IoPortAccess {
                port,
                access: Access::Write(d),
            } => {
                devices.io_out(port, d);
                Next::Continue
            }
            VpExit::IoPortAccess {
                port,
                access: Access::Read(d),
            } => {
                devices.io_in(port, d);
                Next::Continue
            }
            VpExit::MemoryAccess {
                gpa,
                access: Access::Write(d),
            } => {
                devices.mmio_write(gpa, d);
                Next::Continue
            }
            VpExit::MemoryAccess {
                gpa,
                access: Access::Read(d),
            } => {
                devices.mmio_read(gpa, d);
                Next::Continue
            }
            VpExit::MsrAccess(m) => {
                // An MSR neither KVM nor the partition knows: #GP, as hardware.
                *m.error = 1;
                Next::Continue
            }
            VpExit::Halt | VpExit::InterruptWindow | VpExit::ApicEoi { .. } => Next::Continue,
            VpExit::Canceled => Next::Stop,
            VpExit::UnrecoverableException => {
                devices
                    .exit
                    .set(GuestExit::Crash(format!("VP {index}: triple fault")));
                Next::Stop
            }
            VpExit::SystemEvent { kind, .. } => {
                devices.exit.set(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => GuestExit::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => GuestExit::Reboot,
                    k => GuestExit::Crash(format!("VP {index}: system event {k}")),
                });
                Next::Stop
            }
            VpExit::InternalError => Next::InternalError,
            e @ (VpExit::InvalidVpRegisterValue { .. }
            | VpExit::MemoryFault { .. }
            | VpExit::Exception
            | VpExit::Other { .. }
            | VpExit::RunFailed { .. }) => {
                devices
                    .exit
                    .set(GuestExit::Crash(format!("VP {index}: {e:?}")));
                Next::Stop
            }
        };
        match next {
            Next::Continue => {}
            Next::Stop => break,
            Next::InternalError => match pvm::handle_internal_error(&mut vp) {
                pvm::Handled::Resumed(what) => devices.count_handled(what),
                pvm::Handled::Fatal(why) => {
                    devices
                        .exit
                        .set(GuestExit::Crash(format!("VP {index}: {why}")));
                    break;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999G").is_err());
        assert!(parse_size("").is_err());
    }
}
