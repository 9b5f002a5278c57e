//! reference-vmm: boots Linux on KVM with every secondary processor started
//! through the TLFS StartVirtualProcessor model of the `partition` crate.

mod acpi;
mod boot;
mod devices;
mod diag;
mod disks;
mod image;
mod layout;
mod pvm;
mod seccomp;
mod signals;
mod timeline;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use hv_defs::{VpIndex, Vtl};
use hv_partition::{Access, HyperVConfig, Partition, PartitionConfig, Vp, VpExit};
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
    /// Microsoft Hyper-V with Virtual Secure Mode: the guest boots in VTL 0 and
    /// may enable VTL 1 and VTL 2 (HvCallEnablePartitionVtl, HvCallEnableVpVtl,
    /// HvCallVtlCall/VtlReturn through the hypercall page, the VSM registers;
    /// each VTL a KVM VM of its own). No MBEC and no execute-only protection
    /// (stock KVM cannot express them). APs start as without Hyper-V (the
    /// mailbox, or `--ap-start init-sipi`). Adds `noxsave`.
    Vsm,
}

/// How a guest without Hyper-V starts its APs.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ApStart {
    /// The MADT advertises the ACPI MP wakeup mailbox; each wakeup is served with
    /// StartVirtualProcessor.
    Mailbox,
    /// No mailbox: the guest sends INIT/SIPI, which KVM's in-kernel local APIC
    /// handles (for comparison with StartVirtualProcessor). Every VP is created
    /// before the BSP runs, as an IPI to a vCPU not yet created would be lost.
    InitSipi,
}

/// Boots a Linux kernel on KVM; every AP is started through StartVirtualProcessor.
///
/// Exit status: 0 the guest powered off (ACPI S5); 1 a VMM error (bad input, no
/// KVM, a failure of the VMM while the guest ran, a system call the seccomp
/// filter forbids); 2 bad command-line usage; 3 the guest rebooted (ACPI reset
/// register or i8042 reset); 4 the guest crashed (triple fault, unhandleable
/// emulation failure); 128 + N stopped by signal N (130 SIGINT, 143 SIGTERM).
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
    /// A raw disk image as a virtio-blk device (virtio-mmio, found through the
    /// ACPI DSDT); `PATH,ro` for read-only. Repeatable: the first is /dev/vda,
    /// and `root=/dev/vda` is added to the command line unless it names a root.
    #[arg(long, value_name = "PATH[,ro]", value_parser = disks::parse_disk)]
    disk: Vec<disks::DiskSpec>,
    /// The kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Present Hyper-V to the guest.
    #[arg(long, value_enum, default_value_t = HyperV::Off)]
    hyperv: HyperV,
    /// How APs start without Hyper-V: the MP wakeup mailbox (StartVirtualProcessor)
    /// or, with the mailbox withheld, INIT/SIPI in KVM's local APIC.
    #[arg(long, value_enum, default_value_t = ApStart::Mailbox)]
    ap_start: ApStart,
    /// Print a boot timeline on stderr.
    #[arg(long)]
    timings: bool,
    /// At exit, print exits by reason and hypercalls by code on stderr.
    #[arg(long)]
    stats: bool,
    /// Run without the seccomp filters (for debugging with strace or gdb).
    #[arg(long)]
    no_seccomp: bool,
    /// Test hook: VP N makes a system call its seccomp filter forbids once the
    /// filter is installed.
    #[arg(long, hide = true, value_name = "N")]
    debug_forbidden_syscall: Option<u32>,
}

const EXIT_HELP: &str = "Exit status: 0 guest powered off, 1 VMM error, 2 usage error, \
3 guest rebooted, 4 guest crashed (triple fault, unhandleable emulation failure), \
130/143 stopped by SIGINT/SIGTERM.";

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
    /// A disk.
    #[error("{0}")]
    Disk(String),
    /// The vCPU count.
    #[error("--vcpus {0}: must be between 1 and {1} on this host")]
    Vcpus(u32, u32),
    /// Memory too small.
    #[error(
        "--memory {} is too small: {what} need at least {}",
        diag::size(*memory),
        diag::size(*needed)
    )]
    TooSmall {
        /// Requested (RAM below 4 GiB where that is what counts).
        memory: u64,
        /// Needed.
        needed: u64,
        /// What needs it.
        what: String,
    },
    /// Memory not a whole number of pages.
    #[error("--memory {0} bytes is not a multiple of 4 KiB (4096 bytes)")]
    NotPages(u64),
    /// Memory too large.
    #[error("--memory {} is more than this host has ({})", diag::size(*.0), diag::size(*.1))]
    TooLarge(u64, u64),
    /// KVM.
    #[error("{0}")]
    Partition(#[from] hv_partition::PartitionError),
    /// A guest-memory write.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The command line.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Anything else during setup.
    #[error("{0}")]
    Setup(String),
    /// A VP thread ended without the guest ending (a panic, or a run that failed
    /// in the VMM itself).
    #[error("{0}")]
    VpThread(String),
}

/// The least guest memory the VMM accepts.
const MIN_MEMORY: u64 = 64 << 20;

fn host_memory() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() {
    // clap prints usage errors and exits 2 itself; --help and --version go to
    // stdout, whose errors clap ignores.
    let args = Args::parse();
    diag::init(log::LevelFilter::Warn);
    // A panic anywhere is a VMM error: one line, status 1, never a hang.
    std::panic::set_hook(Box::new(|info| {
        diag::line(format_args!(
            "reference-vmm: error: internal error: {info}\n"
        ));
    }));
    let code = match std::panic::catch_unwind(|| run(args)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            diag::line(format_args!("reference-vmm: error: {e}\n"));
            1
        }
        Err(_) => 1,
    };
    std::process::exit(code);
}

/// Reads stdin into the serial port and watches for the guest's end.
///
/// The port's receive FIFO holds 64 bytes: input beyond what fits is held
/// back, and stdin is not read, until the guest has read the FIFO empty
/// (`Devices::input_drained`), so pasted text reaches the guest whole.
struct Console {
    devices: Arc<Devices>,
    done: bool,
    /// Input read from stdin that the FIFO had no room for yet.
    pending: std::collections::VecDeque<u8>,
    /// Whether stdin is in the epoll set (not while input is held back, nor
    /// after EOF).
    watching_stdin: bool,
    stdin_eof: bool,
}

impl Console {
    fn new(devices: Arc<Devices>) -> Self {
        Console {
            devices,
            done: false,
            pending: Default::default(),
            watching_stdin: false,
            stdin_eof: false,
        }
    }

    /// Moves held-back input into the FIFO as far as it has room.
    fn feed(&mut self) {
        let mut s = self
            .devices
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let room = s.fifo_capacity().min(self.pending.len());
        if room == 0 {
            return;
        }
        let bytes: Vec<u8> = self.pending.drain(..room).collect();
        let _ = s.enqueue_raw_bytes(&bytes);
    }

    /// Watches stdin exactly when no input is held back and it is not at EOF.
    fn update_stdin(&mut self, ops: &mut EventOps) {
        let want = self.pending.is_empty() && !self.stdin_eof;
        if want && !self.watching_stdin {
            // No stdin (a closed descriptor) simply means no console input.
            self.watching_stdin = ops.add(Events::new_raw(0, EventSet::IN)).is_ok();
            self.stdin_eof |= !self.watching_stdin;
        } else if !want && self.watching_stdin {
            let _ = ops.remove(Events::empty_raw(0));
            self.watching_stdin = false;
        }
    }
}

impl MutEventSubscriber for Console {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.devices.exit.event.as_raw_fd() {
            self.done = true;
            return;
        }
        if fd == self.devices.input_drained.as_raw_fd() {
            let _ = self.devices.input_drained.read();
            self.feed();
            self.update_stdin(ops);
            return;
        }
        let mut buf = [0u8; 256];
        // SAFETY: reading into a local buffer of the given length from fd 0.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // EOF or error: stop watching stdin (CI has none).
            self.stdin_eof = true;
        } else {
            self.pending.extend(&buf[..n as usize]);
            self.feed();
        }
        self.update_stdin(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.devices.exit.event, EventSet::IN));
        let _ = ops.add(Events::new(&self.devices.input_drained, EventSet::IN));
        self.update_stdin(ops);
    }
}

fn run(args: Args) -> Result<i32, VmmError> {
    let start = Instant::now();
    let timeline = Arc::new(Timeline::new(start, args.timings));
    timeline.mark("VMM start");
    // The seccomp filters are compiled on a thread of their own while the VM is
    // set up; the VP threads need them first.
    let no_seccomp = args.no_seccomp;
    let filters =
        std::thread::spawn(move || (!no_seccomp).then(seccomp::Filters::build).transpose());

    // Input checks that need no KVM: sizes, then the files, then the command line.
    if args.memory % 4096 != 0 {
        return Err(VmmError::NotPages(args.memory));
    }
    if let Some(total) = host_memory() {
        if args.memory > total {
            return Err(VmmError::TooLarge(args.memory, total));
        }
    }
    if args.memory < MIN_MEMORY {
        return Err(VmmError::TooSmall {
            memory: args.memory,
            needed: MIN_MEMORY,
            what: "the VMM's boot data and a kernel".into(),
        });
    }
    let ram_top = layout::low_ram_top(args.memory);
    let mut kernel = boot::open_kernel(&args.kernel, ram_top)?;
    let mut initramfs = match &args.initramfs {
        Some(path) => {
            let i = boot::open_initramfs(path)?;
            let addr = boot::place_initramfs(
                path,
                i.size,
                ram_top,
                kernel.needs_up_to(),
                kernel.initrd_addr_max(),
            )?;
            Some((path, i, addr))
        }
        None => None,
    };
    if kernel.needs_up_to().saturating_add(16 << 20) > ram_top {
        return Err(VmmError::TooSmall {
            memory: ram_top,
            needed: kernel.needs_up_to() + (16 << 20),
            what: "the kernel and 16 MiB for it to run in".into(),
        });
    }
    let disk_files = disks::open(&args.disk).map_err(VmmError::Disk)?;
    let hyperv = match args.hyperv {
        HyperV::Off => None,
        HyperV::Vtl2 => Some(HyperVConfig::booting_in(Vtl::VTL2)),
        HyperV::Vsm => Some(HyperVConfig {
            boot_vtl: Vtl::VTL0,
            max_vtl: Vtl::VTL2,
        }),
    };
    let pvm = pvm::is_pvm_host();
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
    if let Some(first) = args.disk.first() {
        if !args
            .cmdline
            .split_whitespace()
            .any(|w| w.starts_with("root="))
        {
            add("root=/dev/vda");
            add(if first.read_only { "ro" } else { "rw" });
        }
    }
    if pvm {
        pvm::PVM_CMDLINE.split_whitespace().for_each(&mut add);
    }
    if cmdline.len() > kernel.cmdline_max() {
        return Err(VmmError::Cmdline(format!(
            "{} bytes with the options the VMM adds; this kernel takes at most {} \
             (cmdline_size)",
            cmdline.len(),
            kernel.cmdline_max()
        )));
    }
    let kvm_max = kvm_ioctls::Kvm::new()
        .map_err(hv_partition::PartitionError::OpenKvm)?
        .get_max_vcpus()
        .min(254) as u32;
    if args.vcpus == 0 || args.vcpus > kvm_max {
        return Err(VmmError::Vcpus(args.vcpus, kvm_max));
    }
    if pvm {
        log::warn!(
            "this host's KVM is PVM (kvm_pvm): adding '{}' to the kernel command line and \
             hiding KVM's hypercall-based paravirtual features",
            pvm::PVM_CMDLINE
        );
    }

    let partition = Partition::new(PartitionConfig {
        max_vps: args.vcpus,
        memory: layout::ram_ranges(args.memory),
        hyperv,
        cpuid_masks: if pvm {
            pvm::pvm_cpuid_masks(hyperv.is_some())
        } else {
            vec![]
        },
    })?;
    let mem = partition.memory().clone();
    let t = timeline.clone();
    partition.set_start_observer(Box::new(move |vp, vtl| {
        t.mark(&format!(
            "AP {} started through StartVirtualProcessor (VTL {})",
            vp.0, vtl.0
        ))
    }));

    let (loaded, setup_header) = boot::load_kernel(&mem, &args.kernel, &mut kernel)?;
    let initrd = match &mut initramfs {
        Some((path, i, addr)) => Some(boot::load_initramfs(&mem, path, i, *addr)?),
        None => None,
    };
    boot::write_page_tables_and_gdt(&mem)?;
    // A guest booting in VTL 0 finds the mailbox; a VTL 2 kernel starts its
    // APs with hypercalls.
    let mp_wakeup =
        hyperv.is_none_or(|h| h.boot_vtl == Vtl::VTL0) && args.ap_start == ApStart::Mailbox;
    let tables = acpi::build(&acpi::MadtConfig {
        apic_ids: (0..args.vcpus as u8).collect(),
        mp_wakeup,
        virtio_mmio: (0..disk_files.len()).map(layout::virtio_slot).collect(),
    });
    for (addr, bytes) in &tables.pieces {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|e| VmmError::Memory(e.to_string()))?;
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
    // The devices' DMA has the rights of the VTL they belong to (the boot
    // VTL's VM holds them): memory a higher VTL protects from it is refused.
    let dma = {
        let p = partition.clone();
        let vtl = p.boot_vtl();
        let guard: reference_vmm::virtio::block::DmaGuard =
            Arc::new(move |gpa, len, write| p.vtl_may_access(vtl, gpa, len, write));
        guard
    };
    let disk_slots = disks::attach(partition.vm(), disk_files, dma).map_err(VmmError::Setup)?;
    let devices = Arc::new(
        Devices::new(
            partition.clone(),
            serial_irq,
            Box::new(std::io::stdout()),
            timeline.clone(),
            mp_wakeup,
            disk_slots,
        )
        .map_err(|e| VmmError::Setup(e.to_string()))?,
    );
    signals::install(&devices.exit.event).map_err(|e| VmmError::Setup(e.to_string()))?;

    // VPs: created suspended. The BSP first: its registers set by HV name, its
    // thread started and released; the APs are created while it runs (a guest
    // call naming one not yet created waits for it: `expect_vps`). An INIT/SIPI
    // cannot wait (KVM drops an IPI to a vCPU that does not exist yet), so with
    // `--ap-start init-sipi` every VP exists before the BSP is released.
    let before_bsp = if args.ap_start == ApStart::InitSipi {
        args.vcpus
    } else {
        1
    };
    let filters = filters
        .join()
        .map_err(|_| VmmError::Setup("compiling the seccomp filters panicked".into()))?
        .map_err(VmmError::Setup)?;
    partition.expect_vps(args.vcpus);
    let spawn = |vp: Vp| {
        let (d, t) = (devices.clone(), timeline.clone());
        let index = vp.index().0;
        let vp_filter = filters.as_ref().map(|f| f.vp.clone());
        let forbidden = args.debug_forbidden_syscall == Some(index);
        std::thread::Builder::new()
            .name(format!("vp{index}"))
            .spawn(move || {
                if let Some(f) = vp_filter {
                    if let Err(e) = seccomp::apply(&f) {
                        d.exit.set(GuestExit::VmmFailure(format!(
                            "VP {index}: cannot install the seccomp filter: {e}"
                        )));
                        return;
                    }
                }
                if forbidden {
                    seccomp::forbidden_syscall();
                }
                // A VP thread that dies for any reason ends the VM: the panic
                // hook has printed why.
                let run = std::panic::AssertUnwindSafe(|| vp_loop(vp, d.clone(), t));
                if std::panic::catch_unwind(run).is_err() {
                    d.exit.set(GuestExit::VmmFailure(format!(
                        "VP {index}: its thread panicked"
                    )));
                }
            })
            .map_err(|e| VmmError::Setup(e.to_string()))
    };
    let mut threads = vec![];
    let created = (|| {
        let mut bsp = partition
            .create_vp(VpIndex::BSP)
            .map_err(|e| VmmError::Setup(format!("HvCreateVp 0: {e}")))?;
        bsp.set_registers(&boot::bsp_registers(loaded.entry))
            .map_err(|e| VmmError::Setup(format!("BSP registers: {e}")))?;
        threads.push(spawn(bsp)?);
        let create = |i: u32| {
            let vp = partition
                .create_vp(VpIndex(i))
                .map_err(|e| VmmError::Setup(format!("HvCreateVp {i}: {e}")))?;
            let t = spawn(vp)?;
            // An AP released waits for its start (in KVM, for a SIPI).
            release(&partition, VpIndex(i))?;
            Ok::<_, VmmError>(t)
        };
        for i in 1..before_bsp {
            threads.push(create(i)?);
        }
        release(&partition, VpIndex::BSP)?;
        for i in before_bsp..args.vcpus {
            threads.push(create(i)?);
        }
        timeline.mark(&format!("{} VPs created", args.vcpus));
        if args.vcpus > 1 {
            // The mailbox starts every AP with the same system state.
            let mailbox = boot::context64(0, 0);
            partition.prepare_starts(if mp_wakeup {
                std::slice::from_ref(&mailbox)
            } else {
                &[]
            });
        }
        Ok::<(), VmmError>(())
    })();
    if let Err(e) = created {
        // Nothing waits for VPs that will not come; the running ones end.
        partition.expect_vps(0);
        partition.cancel_all();
        for t in threads {
            let _ = t.join();
        }
        return Err(e);
    }

    let mut em = EventManager::<Arc<std::sync::Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(|e| VmmError::Setup(format!("{e:?}")))?;
    let console = Arc::new(std::sync::Mutex::new(Console::new(devices.clone())));
    em.add_subscriber(console.clone());
    for slot in &devices.disks {
        if let Some(ev) = &slot.notify {
            let ev = ev.try_clone().map_err(|e| VmmError::Setup(e.to_string()))?;
            em.add_subscriber(Arc::new(std::sync::Mutex::new(disks::Notifier {
                transport: slot.transport.clone(),
                event: ev,
                mem: partition.memory().clone(),
            })));
        }
    }
    // Set-up is done: from here the main thread only runs the event loop.
    if let Some(f) = &filters {
        seccomp::apply(&f.main).map_err(VmmError::Setup)?;
    }
    loop {
        let _ = em.run_with_timeout(200);
        if let Some(n) = signals::received() {
            devices.exit.set(GuestExit::Signal(n));
        }
        if threads.iter().any(|t| t.is_finished()) {
            // Every normal end of a VP thread records an exit first.
            devices.exit.set(GuestExit::VmmFailure(
                "a VP thread ended without the guest ending".into(),
            ));
        }
        let done = console.lock().map(|c| c.done).unwrap_or(true);
        if done || devices.exit.get().is_some() {
            break;
        }
    }
    let exit = devices
        .exit
        .get()
        .unwrap_or(GuestExit::VmmFailure("no exit recorded".into()));
    partition.cancel_all();
    for t in threads {
        let _ = t.join();
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
    match &exit {
        GuestExit::PowerOff => timeline.mark("exit: guest powered off"),
        GuestExit::Reboot => timeline.mark("exit: guest rebooted"),
        GuestExit::Crash(why) => {
            timeline.mark("exit: guest crashed");
            diag::line(format_args!("reference-vmm: guest crashed: {why}\n"));
        }
        GuestExit::VmmFailure(why) => {
            timeline.mark("exit: VMM failure");
            diag::line(format_args!("reference-vmm: error: {why}\n"));
        }
        GuestExit::Signal(n) => {
            timeline.mark(&format!("exit: signal {n}"));
            diag::line(format_args!(
                "reference-vmm: stopped by signal {n}; the guest was ended\n"
            ));
        }
    }
    if args.stats {
        diag::line(format_args!("{}", partition.stats()));
        for (path, c) in disks::counters(&devices.disks) {
            diag::line(format_args!(
                "disk {}: {} reads ({} bytes), {} writes ({} bytes), {} flushes, {} failed\n",
                path.display(),
                c.reads,
                c.bytes_read,
                c.writes,
                c.bytes_written,
                c.flushes,
                c.failed
            ));
        }
        for (what, n) in devices.handled() {
            diag::line(format_args!(
                "emulation failures handled by the VMM: {what} x {n}\n"
            ));
        }
    }
    Ok(exit.status())
}

/// Clears a VP's explicit suspend (the VMM's "go").
fn release(partition: &Partition, vp: VpIndex) -> Result<(), VmmError> {
    partition
        .set_explicit_suspend(vp, false)
        .map_err(|e| VmmError::Setup(format!("releasing VP {}: {e}", vp.0)))
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
            // This VMM enables no KVM hypercall exits; -KVM_ENOSYS if one comes.
            VpExit::KvmHypercall { ret, .. } => {
                *ret = (-1000i64) as u64;
                Next::Continue
            }
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
            | VpExit::Debug(_)
            | VpExit::Nmi
            | VpExit::Hyperv
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
