//! The partition: a KVM VM with guest memory, an in-kernel irqchip, and the shared
//! state of its virtual processors.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hv_defs::{HvError, HvResult, InitialVpContext, PartitionId, VpIndex, Vtl};
use hv_regs::Synthetic;
use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, CpuId, KVM_CAP_X86_USER_SPACE_MSR,
    KVM_MAX_CPUID_ENTRIES, KVM_MSR_EXIT_REASON_FILTER, KVM_MSR_EXIT_REASON_UNKNOWN,
};
use kvm_ioctls::{
    Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd,
};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};
use vp_state::{Activity, VpState};

use crate::hyperv;
use crate::overlay::{Overlay, RamSlot};
use crate::stats::Stats;
use crate::vp::Vp;

/// How the partition presents the Hyper-V interface to its guest.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HyperVConfig {
    /// The VTL the boot processor runs in. A Linux kernel built with
    /// `CONFIG_HYPERV_VTL_MODE` expects [`Vtl::VTL2`].
    pub boot_vtl: Vtl,
}

/// Bits to clear from one CPUID leaf of every VP, after the partition has built it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CpuidMask {
    /// The leaf (EAX input).
    pub function: u32,
    /// The sub-leaf (ECX input), for leaves that have them.
    pub index: u32,
    /// Bits to clear in EAX, EBX, ECX, EDX.
    pub clear: [u32; 4],
}

/// What to build a partition with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionConfig {
    /// The number of VP indexes (0..max_vps) VPs may be created with.
    pub max_vps: u32,
    /// Guest RAM as (guest-physical address, size) ranges, page aligned.
    pub memory: Vec<(u64, u64)>,
    /// `Some` to present the Hyper-V CPUID leaves, synthetic MSRs, hypercall page
    /// and hypercalls; `None` for a plain KVM guest.
    pub hyperv: Option<HyperVConfig>,
    /// Features to hide from the guest (e.g. KVM paravirtual features a host cannot
    /// serve). Empty for KVM's full supported set.
    pub cpuid_masks: Vec<CpuidMask>,
}

/// How the partition gets a VP's thread out of `KVM_RUN` when another thread
/// needs it to see a request (a start, a cancel, a suspend, a memory-slot change).
#[derive(Clone)]
pub enum Kick {
    /// Send this signal to the thread inside [`Vp::run`] (the partition installs
    /// an empty handler for it), with the vCPU's `kvm_run.immediate_exit` set
    /// first under the VP lock, so one signal is enough even if the thread is
    /// just entering `KVM_RUN` (the partition clears it when `KVM_RUN` returns).
    /// Pick a signal the VMM does not use for anything else.
    Signal(i32),
    /// Call this with the VP's index; the VMM gets its own vCPU thread out of
    /// `KVM_RUN` (its signal, `immediate_exit`). For VMMs that run the vCPU in
    /// their own loop ([`Vp::prepare_run`]).
    Callback(Arc<dyn Fn(VpIndex) + Send + Sync>),
}

impl std::fmt::Debug for Kick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kick::Signal(n) => write!(f, "Kick::Signal({n})"),
            Kick::Callback(_) => f.write_str("Kick::Callback(..)"),
        }
    }
}

impl Default for Kick {
    /// `SIGRTMIN + 2` (Cloud Hypervisor kicks its vCPUs with SIGRTMIN).
    fn default() -> Self {
        Kick::Signal(SIGRTMIN() + 2)
    }
}

/// The KVM-wide policies a partition applies to its VM and VPs. Each can be
/// declined by a VMM that does it its own way; [`Default`] applies them all.
#[derive(Clone, Debug)]
pub struct PartitionOptions {
    /// Create KVM's in-kernel irqchip (`KVM_CREATE_IRQCHIP`).
    pub create_irqchip: bool,
    /// Route unknown MSRs (and, with Hyper-V, the synthetic range) to user space
    /// (`KVM_CAP_X86_USER_SPACE_MSR` and an MSR filter). The filter denies the
    /// synthetic range plus [`Self::msr_filter`], the VMM's own ranges.
    pub msr_exits: bool,
    /// MSR ranges (first, count) the VMM wants in user space too, merged into the
    /// partition's filter rather than replaced by it.
    pub msr_filter: Vec<(u32, u32)>,
    /// Set each VP's CPUID (KVM's supported set with the VP's APIC id, the Hyper-V
    /// leaves, the masks). Off: the VMM sets it before the VP first runs.
    pub set_cpuid: bool,
    /// Make memory write-back by default (IA32_MTRR_DEF_TYPE 0x806) on each VP,
    /// as firmware would; KVM resets the MTRRs to uncached.
    pub mtrr_write_back: bool,
    /// How VP threads are kicked.
    pub kick: Kick,
}

impl Default for PartitionOptions {
    fn default() -> Self {
        PartitionOptions {
            create_irqchip: true,
            msr_exits: true,
            msr_filter: vec![],
            set_cpuid: true,
            mtrr_write_back: true,
            kick: Kick::default(),
        }
    }
}

/// A VM the VMM already created, to build a partition over
/// ([`Partition::adopt`]): the KVM handle, the VM, its guest memory, and the
/// memory slot the VMM registered each region of `memory` in (in region
/// order). The partition uses slots above the highest for its hypercall overlay.
#[derive(Debug)]
pub struct VmParts {
    /// `/dev/kvm`.
    pub kvm: Kvm,
    /// The VM.
    pub vm: VmFd,
    /// Its guest RAM, already registered with KVM.
    pub memory: GuestMemoryMmap,
    /// The KVM slot of each region of `memory`, in region order.
    pub ram_slots: Vec<u32>,
}

/// Why a VP could not be created or started by the host: a TLFS status, or a
/// failure of the host itself with its source.
#[derive(Debug, thiserror::Error)]
pub enum VpError {
    /// What the TLFS defines (an index out of range, a VP in the wrong state, ...).
    #[error("{0}")]
    Status(#[from] HvError),
    /// A KVM ioctl failed.
    #[error("KVM refused {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

impl VpError {
    /// The HV_STATUS a guest gets for this failure: the status itself, or
    /// `HV_STATUS_OPERATION_FAILED` when the host failed (logged).
    pub fn status(&self) -> HvError {
        match self {
            VpError::Status(e) => *e,
            VpError::Kvm { what, source } => {
                log::error!("KVM refused {what}: {source}");
                HvError::OPERATION_FAILED
            }
        }
    }
}

/// Why a partition could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed while building the partition.
    #[error("KVM refused {what}: {source}")]
    Kvm {
        /// What was being set up.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `max_vps` is zero or above what KVM supports.
    #[error("{requested} VPs requested; this KVM supports 1 to {max}")]
    VpCount {
        /// Requested.
        requested: u32,
        /// KVM's limit.
        max: u32,
    },
    /// [`VmParts::ram_slots`] does not name one slot per memory region.
    #[error("{regions} memory regions but {slots} memory slots")]
    Slots {
        /// Regions of the memory.
        regions: usize,
        /// Slots given.
        slots: usize,
    },
    /// Guest memory could not be allocated or is malformed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The boot VTL is above the highest VTL of an x64 partition (2).
    #[error("boot VTL {0} does not exist: an x64 partition has VTLs 0 to 2")]
    BootVtl(u8),
    /// The hypercall overlay page could not be allocated.
    #[error("cannot allocate the hypercall overlay page: {0}")]
    Overlay(#[source] std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("cannot install the VP kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// Partition-wide state of the synthetic MSRs.
#[derive(Debug, Default)]
pub(crate) struct HvPartitionState {
    pub guest_os_id: u64,
    pub hypercall: u64,
    pub tsc_invariant_control: u64,
}

/// What a VP's thread must do next, besides running.
#[derive(Debug)]
pub(crate) struct VpInner {
    pub state: VpState,
    /// A context handed over by StartVirtualProcessor, to load before running.
    pub pending_start: Option<InitialVpContext>,
    /// The host asked to cancel the current or next run.
    pub cancel: bool,
    /// Set while the VP's thread is inside (or about to enter) KVM_RUN.
    pub in_kvm: Option<libc::pthread_t>,
    /// While non-zero the VP's thread must not enter KVM_RUN (the partition is
    /// changing its memory slots).
    pub paused: u32,
    /// Threads waiting in [`VpShared::kick_and_wait`] for the VP to leave
    /// KVM_RUN: only then does leaving notify `wake`.
    pub kick_waiters: u32,
    pub initial_apic_id: u32,
    pub vp_assist_page: u64,
}

/// The part of a VP other threads reach.
#[derive(Debug)]
pub(crate) struct VpShared {
    pub index: VpIndex,
    /// The vendor the vCPU's CPUID presents, for vendor-specific register rules.
    pub vendor: hv_regs::CpuVendor,
    /// How to get the VP's thread out of KVM_RUN.
    pub kick: Kick,
    /// The guest TSC frequency (HV_X64_MSR_TSC_FREQUENCY), 0 if KVM does not say.
    pub tsc_hz: u64,
    pub inner: Mutex<VpInner>,
    pub wake: Condvar,
    /// `kvm_run.immediate_exit` of the VP's vCPU while its [`Vp`] lives (null
    /// after): set under the VP lock with a kick, so a KVM_RUN the thread is
    /// about to enter returns at once and one signal is always enough.
    pub immediate_exit: AtomicPtr<u8>,
}

impl VpShared {
    pub fn lock(&self) -> MutexGuard<'_, VpInner> {
        // A VP thread that panicked while holding the lock leaves valid data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A register the VP model keeps.
    pub fn synthetic(&self, reg: Synthetic) -> u64 {
        let g = self.lock();
        match reg {
            Synthetic::ExplicitSuspend => g.state.explicit_suspend() as u64,
            Synthetic::InterceptSuspend => g.state.intercept_suspend() as u64,
            Synthetic::VpIndex => self.index.0 as u64,
            Synthetic::VsmVpStatus => {
                hv_regs::VsmVpStatus::new(g.state.active_vtl(), g.state.enabled_vtls()).0
            }
            Synthetic::InitialApicId => g.initial_apic_id as u64,
        }
    }

    /// Writes a register the VP model keeps (the value has been validated). The
    /// initial APIC id may change only while the VP is explicitly suspended, before
    /// its parent releases it; VP index and VSM status are read-only.
    pub fn set_synthetic(&self, reg: Synthetic, value: u64) -> HvResult<()> {
        let mut g = self.lock();
        match reg {
            Synthetic::ExplicitSuspend => g.state = g.state.set_explicit_suspend(value != 0),
            Synthetic::InterceptSuspend => g.state = g.state.set_intercept_suspend(value != 0),
            Synthetic::InitialApicId if !g.state.explicit_suspend() => {
                return Err(HvError::INVALID_VP_STATE)
            }
            Synthetic::InitialApicId => g.initial_apic_id = value as u32,
            Synthetic::VpIndex | Synthetic::VsmVpStatus => return Err(HvError::ACCESS_DENIED),
        }
        let suspended = g.state.suspended();
        drop(g);
        self.wake.notify_all();
        if suspended {
            self.kick_and_wait(|g| g.state.suspended());
        }
        Ok(())
    }

    /// Cancels the VP's current or next run: its thread is woken or kicked, and
    /// its [`Vp::run`] returns `Canceled`. Does not wait.
    pub fn cancel(&self) {
        self.lock().cancel = true;
        self.wake.notify_all();
        self.kick(|g| g.cancel);
    }

    /// Sets or clears `kvm_run.immediate_exit`; the caller holds the VP lock.
    pub fn set_immediate_exit(&self, _locked: &VpInner, value: u8) {
        let p = self.immediate_exit.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: non-null only while the Vp owning the vCPU (and its kvm_run
            // mapping) lives; Vp's drop nulls it under the VP lock, which the
            // caller holds. A byte-sized atomic store: KVM reads the field at
            // KVM_RUN entry.
            unsafe { (*(p as *const std::sync::atomic::AtomicU8)).store(value, Ordering::Release) }
        }
    }

    /// Gets the VP's thread out of KVM_RUN, if it is in it, so it sees what was
    /// just requested (`pending` says whether the request is still unseen), and
    /// returns without waiting. With [`Kick::Signal`]: under the VP lock,
    /// `kvm_run.immediate_exit` is set (a KVM_RUN the thread is about to enter
    /// returns at once; the thread clears it as it leaves) and the signal sent
    /// once (a KVM_RUN in progress returns). With [`Kick::Callback`] the VMM is
    /// asked once.
    pub fn kick(&self, pending: impl Fn(&VpInner) -> bool) {
        let g = self.lock();
        if !pending(&g) {
            return;
        }
        match &self.kick {
            Kick::Callback(f) => {
                drop(g);
                log::trace!("kick VP {} (VMM callback)", self.index.0);
                f(self.index);
            }
            Kick::Signal(signal) => {
                let Some(thread) = g.in_kvm else { return };
                self.set_immediate_exit(&g, 1);
                // The thread is alive: it clears `in_kvm` under this lock before
                // it can leave its run loop.
                log::trace!("kick VP {} (signal {signal})", self.index.0);
                let _ = ThreadHandle(thread).kill(*signal);
            }
        }
    }

    /// [`Self::kick`], then [`Self::wait_left`].
    pub fn kick_and_wait(&self, pending: impl Fn(&VpInner) -> bool) {
        self.kick(&pending);
        self.wait_left(pending);
    }

    /// After a [`Self::kick`], waits (with [`Kick::Signal`]) until the thread has
    /// left KVM_RUN or seen the request. A callback is asked once and not waited
    /// for.
    pub fn wait_left(&self, pending: impl Fn(&VpInner) -> bool) {
        let Kick::Signal(signal) = self.kick else {
            return;
        };
        let mut g = self.lock();
        while let Some(thread) = g.in_kvm {
            if !pending(&g) {
                return;
            }
            g.kick_waiters += 1;
            g = self
                .wake
                .wait_timeout(g, Duration::from_millis(1))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            g.kick_waiters -= 1;
            if g.in_kvm == Some(thread) && pending(&g) {
                // Not expected with immediate_exit set; harmless.
                let _ = ThreadHandle(thread).kill(signal);
            }
        }
    }
}

struct ThreadHandle(libc::pthread_t);

// SAFETY: the handle is only used while the thread it names is inside its run loop
// (VpInner::in_kvm is Some), which the caller checks under the VP lock.
unsafe impl Killable for ThreadHandle {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

extern "C" fn kick_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signals an empty kick handler is installed for, once each.
static KICK_HANDLERS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn install_kick_handler(signal: i32) -> Result<(), vmm_sys_util::errno::Error> {
    let mut done = KICK_HANDLERS.lock().unwrap_or_else(|e| e.into_inner());
    if !done.contains(&signal) {
        register_signal_handler(signal, kick_handler)?;
        done.push(signal);
    }
    Ok(())
}
static NEXT_PARTITION_ID: AtomicU64 = AtomicU64::new(1);

/// A partition: a KVM VM, its guest memory, and its VPs.
///
/// Shared between the VP threads as `Arc<Partition>`. The host-facing calls
/// ([`Partition::start_virtual_processor`], [`Partition::enable_vp_vtl`],
/// [`Partition::cancel_run`], ...) may be made from any thread and report failures
/// as HV_STATUS values.
#[derive(Debug)]
pub struct Partition {
    pub(crate) kvm: Kvm,
    pub(crate) vm: VmFd,
    pub(crate) memory: GuestMemoryMmap,
    pub(crate) config: PartitionConfig,
    pub(crate) options: PartitionOptions,
    pub(crate) supported_cpuid: CpuId,
    pub(crate) id: PartitionId,
    pub(crate) vps: Vec<Mutex<Option<Arc<VpShared>>>>,
    pub(crate) hv: Mutex<HvPartitionState>,
    pub(crate) stats: Stats,
    start_observer: OnceLock<Observer>,
    /// The hypercall page's overlay slot; its GPA is mirrored in `overlay_at`
    /// (`NO_OVERLAY` when unmapped) for the run loop's lock-free check.
    overlay: Mutex<Overlay>,
    overlay_at: AtomicU64,
    /// One past the highest GPA (from the guest's MAXPHYADDR).
    gpa_limit: u64,
    /// A vCPU of a VM of its own, with the partition's CPUID, on which a start
    /// context is loaded first: KVM's own verdict on it, before the target's
    /// thread is handed the context.
    trial: Mutex<Option<Trial>>,
    /// Whether the partition created its VM (not adopted): the start checks may
    /// then use a spare vCPU of it.
    own_vm: bool,
    /// VPs below this index are promised by [`Partition::expect_vps`]: a lookup of
    /// one not yet created waits on `created` for its creation.
    expected: Mutex<u32>,
    created: Condvar,
}

/// How long a call naming an expected but not yet created VP waits for it.
pub const CREATION_WAIT: Duration = Duration::from_secs(10);

/// The scratch VM and vCPU of [`Partition::check_context_loads`].
#[derive(Debug)]
struct Trial {
    /// A VM of its own, or none when the vCPU is a spare one of the partition's.
    _vm: Option<VmFd>,
    vcpu: kvm_ioctls::VcpuFd,
    /// Contexts KVM accepted, as [`trial_key`]s: a start whose key is here is
    /// not loaded again.
    accepted: Vec<InitialVpContext>,
}

/// How many accepted contexts [`Trial`] remembers.
const TRIAL_MEMORY: usize = 8;

/// The part of a start context KVM's verdict depends on. KVM_SET_SREGS checks
/// CR0, CR3, CR4, EFER and CS.L against the vCPU's CPUID; KVM_SET_MSRS checks
/// the PAT; KVM_SET_REGS checks nothing; no segment or table base is checked.
/// Everything else is kept, to stay on the safe side.
fn trial_key(ctx: &InitialVpContext) -> InitialVpContext {
    let mut k = *ctx;
    k.rip = 0;
    k.rsp = 0;
    for seg in [
        &mut k.cs,
        &mut k.ds,
        &mut k.es,
        &mut k.fs,
        &mut k.gs,
        &mut k.ss,
        &mut k.tr,
        &mut k.ldtr,
    ] {
        seg.base = 0;
    }
    k.idtr.base = 0;
    k.gdtr.base = 0;
    k
}

const NO_OVERLAY: u64 = u64::MAX;

struct Observer(StartObserver);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartObserver")
    }
}

/// Called with the VP index and target VTL of every successful start.
pub type StartObserver = Box<dyn Fn(VpIndex, Vtl) + Send + Sync>;

impl Partition {
    /// Creates a partition: a KVM VM with `config.memory` as guest RAM, an
    /// in-kernel irqchip, and (with `config.hyperv`) synthetic MSR accesses routed
    /// to user space: [`Self::with_options`] with every policy applied.
    pub fn new(config: PartitionConfig) -> Result<Arc<Partition>, PartitionError> {
        Self::with_options(config, PartitionOptions::default())
    }

    /// Creates a partition with its own KVM VM and guest memory, applying the
    /// policies `options` selects.
    pub fn with_options(
        config: PartitionConfig,
        options: PartitionOptions,
    ) -> Result<Arc<Partition>, PartitionError> {
        check_config(&config)?;
        let kvm = Kvm::new().map_err(PartitionError::OpenKvm)?;
        let kvm_err = |what| move |source| PartitionError::Kvm { what, source };
        // KVM_GET_SUPPORTED_CPUID (a few hundred microseconds) runs on a thread
        // of its own while the VM and its memory are set up.
        let (vm, memory, ram, supported) = std::thread::scope(|scope| {
            let supported = scope.spawn(|| kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES));
            let made = Self::vm_with_memory(&kvm, &config);
            let supported = supported
                .join()
                .unwrap_or(Err(kvm_ioctls::Error::new(libc::EINTR)));
            made.map(|(vm, memory, ram)| (vm, memory, ram, supported))
        })?;
        let supported = supported.map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        Self::finish(kvm, vm, memory, ram, config, options, Some(supported))
    }

    /// A VM with `config.memory` registered as its RAM.
    fn vm_with_memory(
        kvm: &Kvm,
        config: &PartitionConfig,
    ) -> Result<(VmFd, GuestMemoryMmap, Vec<RamSlot>), PartitionError> {
        let kvm_err = |what| move |source| PartitionError::Kvm { what, source };
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let ranges: Vec<(GuestAddress, usize)> = config
            .memory
            .iter()
            .map(|&(gpa, size)| (GuestAddress(gpa), size as usize))
            .collect();
        if ranges.is_empty() {
            return Err(PartitionError::Memory("no memory ranges".into()));
        }
        let memory = GuestMemoryMmap::<()>::from_ranges(&ranges)
            .map_err(|e| PartitionError::Memory(e.to_string()))?;
        // Memory slots before the irqchip: a slot registered after it waits for
        // an SRCU grace period (milliseconds), one registered before does not.
        let ram = ram_slots(
            &memory,
            &(0..memory.num_regions() as u32).collect::<Vec<_>>(),
        )?;
        for r in &ram {
            let region = kvm_userspace_memory_region {
                slot: r.slot,
                flags: 0,
                guest_phys_addr: r.gpa,
                memory_size: r.len,
                userspace_addr: r.host,
            };
            // SAFETY: the region is mapped for `len` bytes at `host` and is owned by
            // `memory`, which the partition keeps for as long as the VM exists.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok((vm, memory, ram))
    }

    /// Builds a partition over a VM the VMM created and whose memory it
    /// registered ([`VmParts`]); `config.memory` must name the same regions.
    /// `options` says which KVM-wide policies the partition may apply (the
    /// irqchip, MSR exits merged with the VMM's filter, CPUID, MTRRs, the kick).
    ///
    /// ```no_run
    /// use hv_partition::{HyperVConfig, Kick, Partition, PartitionConfig, PartitionOptions, VmParts};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let kvm = kvm_ioctls::Kvm::new().unwrap();
    /// let vm = kvm.create_vm().unwrap();
    /// let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    /// // ... the VMM registers `memory` as slot 0, creates its irqchip ...
    /// let p = Partition::adopt(
    ///     VmParts { kvm, vm, memory, ram_slots: vec![0] },
    ///     PartitionConfig {
    ///         max_vps: 2,
    ///         memory: vec![(0, 64 << 20)],
    ///         hyperv: Some(HyperVConfig { boot_vtl: hv_defs::Vtl::VTL0 }),
    ///         cpuid_masks: vec![],
    ///     },
    ///     PartitionOptions {
    ///         create_irqchip: false,
    ///         kick: Kick::Callback(std::sync::Arc::new(|_vp| { /* the VMM's kick */ })),
    ///         ..Default::default()
    ///     },
    /// )
    /// .unwrap();
    /// # drop(p);
    /// ```
    pub fn adopt(
        parts: VmParts,
        config: PartitionConfig,
        options: PartitionOptions,
    ) -> Result<Arc<Partition>, PartitionError> {
        check_config(&config)?;
        let VmParts {
            kvm,
            vm,
            memory,
            ram_slots: slots,
        } = parts;
        let regions: Vec<(u64, u64)> = memory.iter().map(|r| (r.start_addr().0, r.len())).collect();
        if regions != config.memory {
            return Err(PartitionError::Memory(format!(
                "config.memory {:x?} does not describe the adopted memory {regions:x?}",
                config.memory
            )));
        }
        let ram = ram_slots(&memory, &slots)?;
        Self::finish(kvm, vm, memory, ram, config, options, None)
    }

    /// What both constructors share once the VM and its memory exist.
    fn finish(
        kvm: Kvm,
        vm: VmFd,
        memory: GuestMemoryMmap,
        ram: Vec<RamSlot>,
        config: PartitionConfig,
        options: PartitionOptions,
        supported_cpuid: Option<CpuId>,
    ) -> Result<Arc<Partition>, PartitionError> {
        // with_options hands the CPUID it queried alongside; adopt does not.
        let own_vm = supported_cpuid.is_some();
        let max = kvm.get_max_vcpus().min(u32::MAX as usize) as u32;
        if config.max_vps == 0 || config.max_vps > max {
            return Err(PartitionError::VpCount {
                requested: config.max_vps,
                max,
            });
        }
        let kvm_err = |what| move |source| PartitionError::Kvm { what, source };
        if options.create_irqchip {
            vm.create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        }
        if options.msr_exits {
            // Unknown MSRs (and the filtered ranges) exit to user space instead of
            // raising #GP in the kernel.
            if kvm.check_extension(Cap::X86UserSpaceMsr) {
                let cap = kvm_enable_cap {
                    cap: KVM_CAP_X86_USER_SPACE_MSR,
                    args: [
                        (KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER) as u64,
                        0,
                        0,
                        0,
                    ],
                    ..Default::default()
                };
                vm.enable_cap(&cap)
                    .map_err(kvm_err("KVM_CAP_X86_USER_SPACE_MSR"))?;
            }
            // Deny the synthetic range in the kernel (a host kernel with its own
            // Hyper-V emulation must not answer it) and the VMM's own ranges.
            let mut ranges: Vec<(u32, u32)> = options.msr_filter.clone();
            if config.hyperv.is_some() {
                ranges.push((hyperv::MSR_FIRST, hyperv::MSR_COUNT));
            }
            if !ranges.is_empty() {
                let bitmaps: Vec<Vec<u8>> = ranges
                    .iter()
                    .map(|&(_, n)| vec![0u8; n.div_ceil(8) as usize])
                    .collect();
                let filter: Vec<MsrFilterRange<'_>> = ranges
                    .iter()
                    .zip(&bitmaps)
                    .map(|(&(base, msr_count), bitmap)| MsrFilterRange {
                        flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                        base,
                        msr_count,
                        bitmap,
                    })
                    .collect();
                vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &filter)
                    .map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))?;
            }
        }
        let supported_cpuid = match supported_cpuid {
            Some(c) => c,
            None => kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?,
        };
        if let Kick::Signal(signal) = options.kick {
            install_kick_handler(signal).map_err(PartitionError::Signal)?;
        }
        let vps = (0..config.max_vps).map(|_| Mutex::new(None)).collect();
        let overlay =
            Overlay::new(&hyperv::HYPERCALL_PAGE, ram).map_err(PartitionError::Overlay)?;
        let gpa_limit = supported_cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0x8000_0008)
            .map_or(1u64 << 36, |e| 1u64 << (e.eax & 0xFF).clamp(32, 52));
        Ok(Arc::new(Partition {
            kvm,
            vm,
            memory,
            config,
            options,
            supported_cpuid,
            id: PartitionId(NEXT_PARTITION_ID.fetch_add(1, Ordering::Relaxed)),
            vps,
            hv: Mutex::new(HvPartitionState::default()),
            stats: Stats::default(),
            start_observer: OnceLock::new(),
            overlay: Mutex::new(overlay),
            overlay_at: AtomicU64::new(NO_OVERLAY),
            gpa_limit,
            trial: Mutex::new(None),
            own_vm,
            expected: Mutex::new(0),
            created: Condvar::new(),
        }))
    }

    /// The KVM handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The partition's id, as HvCallGetPartitionId reports it.
    pub fn id(&self) -> PartitionId {
        self.id
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM, for devices (irqfd, ioeventfd, IRQ lines).
    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// The configuration the partition was created with.
    pub fn config(&self) -> &PartitionConfig {
        &self.config
    }

    /// Exit and hypercall counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The VTL the boot processor runs in.
    pub fn boot_vtl(&self) -> Vtl {
        self.config.hyperv.map_or(Vtl::VTL0, |h| h.boot_vtl)
    }

    /// Creates VP `index` (HvCreateVp) with a vCPU of its own:
    /// `HV_STATUS_INVALID_VP_INDEX` if the index is not below `max_vps` or the VP
    /// exists; a KVM failure with its source. The VP starts with explicit suspend
    /// set; VP 0 is ready, every other VP waits for a SIPI or a start. The returned
    /// handle is run by one thread.
    pub fn create_vp(self: &Arc<Self>, index: VpIndex) -> Result<Vp, VpError> {
        self.check_new_vp(index)?;
        let vcpu = self
            .vm
            .create_vcpu(index.0 as u64)
            .map_err(|source| VpError::Kvm {
                what: "KVM_CREATE_VCPU",
                source,
            })?;
        self.adopt_vp(index, vcpu)
    }

    /// Makes VP `index` of a vCPU the VMM created (with `KVM_CREATE_VCPU` on this
    /// partition's VM, id `index`). With [`PartitionOptions::set_cpuid`] its CPUID
    /// is set here; otherwise the VMM has set it already.
    pub fn adopt_vp(self: &Arc<Self>, index: VpIndex, vcpu: VcpuFd) -> Result<Vp, VpError> {
        // Held until the VP is recorded: of two creations of one index, one wins.
        let mut slot = self
            .vps
            .get(index.0 as usize)
            .ok_or(HvError::INVALID_VP_INDEX)?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Err(HvError::INVALID_VP_INDEX.into());
        }
        let kvm_err = |what| move |source| VpError::Kvm { what, source };
        let cpuid = if self.options.set_cpuid {
            let cpuid = self.vp_cpuid(index);
            vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            cpuid
        } else {
            vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm_err("KVM_GET_CPUID2"))?
        };
        // KVM recomputes its APIC map while it creates a vCPU, before that vCPU
        // counts as online, so the newest vCPU is missing from the map until the
        // next recomputation and IPIs to it (an INIT/SIPI) are dropped. Setting
        // its LAPIC state (unchanged) recomputes the map with it.
        if let Ok(lapic) = vcpu.get_lapic() {
            vcpu.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
        }
        let shared = Arc::new(VpShared {
            index,
            vendor: hv_regs::CpuVendor::of(&cpuid),
            kick: self.options.kick.clone(),
            tsc_hz: vcpu.get_tsc_khz().map_or(0, |khz| khz as u64 * 1000),
            inner: Mutex::new(VpInner {
                // The constructors refused a boot VTL above 2.
                state: VpState::new(index, self.boot_vtl())?,
                pending_start: None,
                cancel: false,
                in_kvm: None,
                paused: 0,
                kick_waiters: 0,
                initial_apic_id: index.0,
                vp_assist_page: 0,
            }),
            wake: Condvar::new(),
            immediate_exit: AtomicPtr::new(std::ptr::null_mut()),
        });
        let vp = Vp::new(self.clone(), shared.clone(), vcpu)?;
        *slot = Some(shared);
        drop(slot);
        // Under `expected`'s lock: a waiter checks the slot and sleeps under it.
        let _g = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        self.created.notify_all();
        Ok(vp)
    }

    /// `HV_STATUS_INVALID_VP_INDEX` unless VP `index` may be created.
    fn check_new_vp(&self, index: VpIndex) -> HvResult<()> {
        let slot = self
            .vps
            .get(index.0 as usize)
            .ok_or(HvError::INVALID_VP_INDEX)?;
        if slot.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            return Err(HvError::INVALID_VP_INDEX);
        }
        Ok(())
    }

    /// The CPUID of VP `index`: KVM's supported set with the VP's APIC id, the
    /// Hyper-V leaves if configured, and the configured masks applied.
    fn vp_cpuid(&self, index: VpIndex) -> CpuId {
        let hv_max = self.config.hyperv.map(|_| self.config.max_vps);
        let mut cpuid = hyperv::vp_cpuid(&self.supported_cpuid, index.0, hv_max);
        for e in cpuid.as_mut_slice() {
            for m in &self.config.cpuid_masks {
                if e.function == m.function && e.index == m.index {
                    e.eax &= !m.clear[0];
                    e.ebx &= !m.clear[1];
                    e.ecx &= !m.clear[2];
                    e.edx &= !m.clear[3];
                }
            }
        }
        cpuid
    }

    /// One past the highest guest-physical address (the guest's MAXPHYADDR).
    pub fn gpa_limit(&self) -> u64 {
        self.gpa_limit
    }

    /// The GPA of the hypercall overlay page while the guest has it enabled.
    pub fn hypercall_overlay(&self) -> Option<u64> {
        match self.overlay_at.load(Ordering::Acquire) {
            NO_OVERLAY => None,
            gpa => Some(gpa),
        }
    }

    /// Maps the hypercall overlay page at `to` or unmaps it, with every VP held
    /// out of KVM_RUN while the memory slots change.
    pub(crate) fn place_hypercall_overlay(&self, to: Option<u64>) -> Result<(), kvm_ioctls::Error> {
        let mut overlay = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        if overlay.at() == to {
            return Ok(());
        }
        let vps: Vec<Arc<VpShared>> = (0..self.config.max_vps)
            .filter_map(|i| self.existing_vp(VpIndex(i)))
            .collect();
        for vp in &vps {
            vp.lock().paused += 1;
        }
        // Every thread kicked first, then each waited for: one round for all.
        for vp in &vps {
            vp.kick(|g| g.paused > 0);
        }
        for vp in &vps {
            vp.wait_left(|g| g.paused > 0);
        }
        let r = overlay.place(&self.vm, to);
        self.overlay_at
            .store(overlay.at().unwrap_or(NO_OVERLAY), Ordering::Release);
        for vp in &vps {
            vp.lock().paused -= 1;
            vp.wake.notify_all();
        }
        r
    }

    /// Loads `context` on a vCPU of a scratch VM with the partition's CPUID: what
    /// KVM refuses there (a CR4 bit the CPUID does not offer, CR3 above
    /// MAXPHYADDR, ...) the target could not load either. Refusals are
    /// `HV_STATUS_INVALID_REGISTER_VALUE`; a scratch VM the host cannot provide
    /// is a host error with its source.
    fn check_context_loads(&self, context: &InitialVpContext) -> HvResult<()> {
        let mut trial = self.trial.lock().unwrap_or_else(|e| e.into_inner());
        let t = match &mut *trial {
            Some(t) => t,
            None => trial.insert(self.new_trial()?),
        };
        // The VP model's own checks (canonical RIP, segment attributes, ...) run
        // on every start; KVM's only for a context it has not accepted yet.
        let key = trial_key(context);
        if t.accepted.contains(&key) {
            return hv_regs::context_to_kvm(context, &Default::default())
                .map(|_| ())
                .map_err(hv_regs::context_status);
        }
        let base = t
            .vcpu
            .get_sregs()
            .map_err(|_| HvError::INSUFFICIENT_MEMORY)?;
        let k = hv_regs::context_to_kvm(context, &base).map_err(hv_regs::context_status)?;
        let refused = |_| HvError::INVALID_REGISTER_VALUE;
        t.vcpu.set_sregs(&k.sregs).map_err(refused)?;
        t.vcpu.set_regs(&k.regs).map_err(refused)?;
        let pat = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: hv_regs::msr::PAT,
            data: k.pat,
            ..Default::default()
        }])
        .map_err(|_| HvError::INSUFFICIENT_MEMORY)?;
        match t.vcpu.set_msrs(&pat) {
            Ok(1) => {
                if t.accepted.len() == TRIAL_MEMORY {
                    t.accepted.remove(0);
                }
                t.accepted.push(key);
                Ok(())
            }
            _ => Err(HvError::INVALID_REGISTER_VALUE),
        }
    }

    /// The scratch VM and vCPU of [`Self::check_context_loads`].
    fn new_trial(&self) -> HvResult<Trial> {
        let no_room = |_| HvError::INSUFFICIENT_MEMORY;
        // A spare vCPU of the partition's own VM (id max_vps, beyond every VP;
        // it never runs and no table names it) costs no VM: creating and
        // destroying a VM each waits for KVM's grace periods. A VMM's adopted VM
        // is left alone: a VM of its own.
        let spare = (self.own_vm && (self.config.max_vps as usize) < self.kvm.get_max_vcpus())
            .then(|| self.vm.create_vcpu(self.config.max_vps as u64).ok())
            .flatten();
        let (vm, vcpu) = match spare {
            Some(vcpu) => (None, vcpu),
            None => {
                let vm = self.kvm.create_vm().map_err(no_room)?;
                let vcpu = vm.create_vcpu(0).map_err(no_room)?;
                (Some(vm), vcpu)
            }
        };
        vcpu.set_cpuid2(&self.vp_cpuid(VpIndex(0)))
            .map_err(no_room)?;
        Ok(Trial {
            _vm: vm,
            vcpu,
            accepted: Vec::new(),
        })
    }

    /// Prepares what the first StartVirtualProcessor needs (a scratch VM on which
    /// start contexts are loaded for KVM's verdict) now, on the calling thread,
    /// and checks the `expected` contexts (say, the one a VMM's mailbox starts
    /// APs with), so starts with the same system state skip KVM's check; without
    /// this the first start pays for both. A VMM calls it once its APs are
    /// created, while the BSP runs. Failures are left for the starts to report.
    pub fn prepare_starts(&self, expected: &[InitialVpContext]) {
        {
            let mut trial = self.trial.lock().unwrap_or_else(|e| e.into_inner());
            if trial.is_none() {
                *trial = self.new_trial().ok();
            }
        }
        for ctx in expected {
            let _ = self.check_context_loads(ctx);
        }
    }

    /// VP `index` if it exists now.
    pub(crate) fn existing_vp(&self, index: VpIndex) -> Option<Arc<VpShared>> {
        self.vps
            .get(index.0 as usize)?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// VP `index`; if it does not exist yet but [`Self::expect_vps`] promised it,
    /// after waiting up to [`CREATION_WAIT`] for its creation.
    pub(crate) fn vp_shared(&self, index: VpIndex) -> Option<Arc<VpShared>> {
        if let Some(vp) = self.existing_vp(index) {
            return Some(vp);
        }
        let deadline = Instant::now() + CREATION_WAIT;
        let mut expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(vp) = self.existing_vp(index) {
                return Some(vp);
            }
            let now = Instant::now();
            if index.0 >= *expected || now >= deadline {
                if index.0 < *expected {
                    log::warn!(
                        "VP {} was expected but not created within {:?}",
                        index.0,
                        CREATION_WAIT
                    );
                }
                return None;
            }
            expected = self
                .created
                .wait_timeout(expected, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Promises that VPs `0..count` are being created (by another thread, while
    /// the first ones already run): until each exists, calls that name it —
    /// the guest's StartVirtualProcessor, EnableVpVtl, GetVpIndexFromApicId, the
    /// host calls below — wait for its creation (at most [`CREATION_WAIT`])
    /// instead of failing with `HV_STATUS_INVALID_VP_INDEX`. This lets a VMM
    /// release the boot processor before it creates the others. `expect_vps(0)`
    /// withdraws the promise (say, when a creation failed) and wakes the waiters.
    ///
    /// ```no_run
    /// # use hv_partition::{Partition, PartitionConfig};
    /// # use hv_defs::VpIndex;
    /// # fn f(partition: std::sync::Arc<Partition>) -> Result<(), Box<dyn std::error::Error>> {
    /// partition.expect_vps(partition.config().max_vps);
    /// let bsp = partition.create_vp(VpIndex::BSP)?;
    /// // ... start the BSP's thread, release it, then create the others:
    /// for i in 1..partition.config().max_vps {
    ///     let ap = partition.create_vp(VpIndex(i))?;
    ///     // ... start its thread
    /// }
    /// # Ok(()) }
    /// ```
    pub fn expect_vps(&self, count: u32) {
        let mut expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        *expected = count.min(self.config.max_vps);
        self.created.notify_all();
    }

    /// Starts VP `index` at `vtl` with `context` (HvCallStartVirtualProcessor, as
    /// the host calls it). In order: `HV_STATUS_INVALID_VP_INDEX` if the VP does not
    /// exist; `HV_STATUS_INVALID_VP_STATE` if `vtl` is not enabled on it, it has
    /// started since creation or INIT, or it is the boot processor;
    /// `HV_STATUS_INVALID_REGISTER_VALUE` if the context is invalid.
    ///
    /// The VP's own thread loads the context and leaves its wait; this returns at
    /// once. Of two concurrent starts of one VP exactly one succeeds.
    pub fn start_virtual_processor(
        &self,
        index: VpIndex,
        vtl: Vtl,
        context: &InitialVpContext,
    ) -> Result<(), VpError> {
        let vp = self.vp_shared(index).ok_or(HvError::INVALID_VP_INDEX)?;
        start_vp(self, &vp, vtl, context)?;
        self.started(index, vtl);
        Ok(())
    }

    /// Installs `observer`, called on the starting thread after every successful
    /// StartVirtualProcessor, whether the host or the guest asked for it (a boot
    /// timeline, tracing). Only the first observer installed is kept.
    pub fn set_start_observer(&self, observer: StartObserver) {
        let _ = self.start_observer.set(Observer(observer));
    }

    pub(crate) fn started(&self, index: VpIndex, vtl: Vtl) {
        if let Some(o) = self.start_observer.get() {
            (o.0)(index, vtl);
        }
    }

    /// Enables `vtl` on VP `index` (HvCallEnableVpVtl, as the host calls it).
    pub fn enable_vp_vtl(&self, index: VpIndex, vtl: Vtl) -> HvResult<()> {
        let vp = self.vp_shared(index).ok_or(HvError::INVALID_VP_INDEX)?;
        let mut g = vp.lock();
        g.state = g.state.enable_vtl(vtl)?;
        Ok(())
    }

    /// The VP whose APIC id is `apic_id` (HvCallGetVpIndexFromApicId);
    /// `HV_STATUS_INVALID_PARAMETER` if none has it.
    pub fn vp_index_from_apic_id(&self, apic_id: u32) -> HvResult<VpIndex> {
        (0..self.config.max_vps)
            .filter_map(|i| self.vp_shared(VpIndex(i)))
            .find(|vp| vp.lock().initial_apic_id == apic_id)
            .map(|vp| vp.index)
            .ok_or(HvError::INVALID_PARAMETER)
    }

    /// Sets or clears HvRegisterExplicitSuspend of VP `index` from any thread; a VP
    /// whose thread waits for the suspend to clear resumes.
    pub fn set_explicit_suspend(&self, index: VpIndex, suspend: bool) -> HvResult<()> {
        let vp = self.vp_shared(index).ok_or(HvError::INVALID_VP_INDEX)?;
        vp.set_synthetic(Synthetic::ExplicitSuspend, suspend as u64)
    }

    /// Cancels the current (or next) run of VP `index` from another thread: its
    /// [`Vp::run`] returns [`exit_decoder::VpExit::Canceled`].
    pub fn cancel_run(&self, index: VpIndex) -> HvResult<()> {
        self.vp_shared(index)
            .ok_or(HvError::INVALID_VP_INDEX)?
            .cancel();
        Ok(())
    }

    /// Cancels the runs of every VP that exists, in one pass: each is marked and
    /// its thread kicked, without waiting for any. Each [`Vp::run`] returns
    /// [`exit_decoder::VpExit::Canceled`].
    pub fn cancel_all(&self) {
        for vp in (0..self.config.max_vps).filter_map(|i| self.existing_vp(VpIndex(i))) {
            vp.cancel();
        }
    }

    /// The activity of VP `index` as the VP model last saw it.
    pub fn vp_activity(&self, index: VpIndex) -> HvResult<Activity> {
        let vp = self.vp_shared(index).ok_or(HvError::INVALID_VP_INDEX)?;
        let a = vp.lock().state.activity();
        Ok(a)
    }

    /// The full VP model state of VP `index`.
    pub fn vp_state(&self, index: VpIndex) -> HvResult<VpState> {
        let vp = self.vp_shared(index).ok_or(HvError::INVALID_VP_INDEX)?;
        let s = vp.lock().state;
        Ok(s)
    }
}

/// The checks and hand-over of StartVirtualProcessor once the target is known.
pub(crate) fn start_vp(
    partition: &Partition,
    vp: &VpShared,
    vtl: Vtl,
    context: &InitialVpContext,
) -> Result<(), VpError> {
    {
        let mut g = vp.lock();
        let started = g.state.start(vtl)?;
        // Validate the context on the caller's thread, and let KVM judge it on a
        // scratch vCPU: a context the target could not load is refused here,
        // with the target left unstarted.
        partition.check_context_loads(context)?;
        g.state = started;
        g.pending_start = Some(*context);
    }
    vp.wake.notify_all();
    vp.kick(|g| g.pending_start.is_some());
    Ok(())
}

/// The checks on a configuration that need no KVM.
fn check_config(config: &PartitionConfig) -> Result<(), PartitionError> {
    if let Some(h) = config.hyperv {
        if h.boot_vtl > Vtl::MAX_X64 {
            return Err(PartitionError::BootVtl(h.boot_vtl.0));
        }
    }
    Ok(())
}

/// Each region of `memory` with the KVM slot it is registered in.
fn ram_slots(memory: &GuestMemoryMmap, slots: &[u32]) -> Result<Vec<RamSlot>, PartitionError> {
    if slots.len() != memory.num_regions() {
        return Err(PartitionError::Slots {
            regions: memory.num_regions(),
            slots: slots.len(),
        });
    }
    memory
        .iter()
        .zip(slots)
        .map(|(region, &slot)| {
            let host = memory
                .get_host_address(region.start_addr())
                .map_err(|e| PartitionError::Memory(e.to_string()))?;
            Ok(RamSlot {
                slot,
                gpa: region.start_addr().0,
                len: region.len(),
                host: host as u64,
            })
        })
        .collect()
}
