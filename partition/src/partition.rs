//! The partition: a KVM VM with guest memory, an in-kernel irqchip, and the shared
//! state of its virtual processors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;

use hv_defs::{HvError, HvResult, InitialVpContext, PartitionId, VpIndex, Vtl};
use hv_regs::Synthetic;
use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, CpuId, KVM_CAP_X86_USER_SPACE_MSR,
    KVM_MAX_CPUID_ENTRIES, KVM_MSR_EXIT_REASON_FILTER, KVM_MSR_EXIT_REASON_UNKNOWN,
};
use kvm_ioctls::{Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
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
    pub initial_apic_id: u32,
    pub vp_assist_page: u64,
}

/// The part of a VP other threads reach.
#[derive(Debug)]
pub(crate) struct VpShared {
    pub index: VpIndex,
    /// The vendor the vCPU's CPUID presents, for vendor-specific register rules.
    pub vendor: hv_regs::CpuVendor,
    pub inner: Mutex<VpInner>,
    pub wake: Condvar,
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
            self.kick(|g| g.state.suspended());
        }
        Ok(())
    }

    /// Gets the VP's thread out of KVM_RUN, if it is in it, so it sees what was
    /// just requested (`pending` says whether the request is still unseen). The
    /// signal is re-sent until the thread has left KVM_RUN: one sent just before
    /// the thread enters the ioctl would otherwise be lost.
    pub fn kick(&self, pending: impl Fn(&VpInner) -> bool) {
        loop {
            let g = self.lock();
            let Some(thread) = g.in_kvm else { return };
            if !pending(&g) {
                return;
            }
            // The thread is alive: it clears `in_kvm` under this lock before it
            // can leave its run loop.
            let _ = ThreadHandle(thread).kill(kick_signal());
            drop(g);
            std::thread::sleep(Duration::from_micros(50));
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

/// The real-time signal used to get VP threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

static KICK_HANDLER: Once = Once::new();
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
}

/// The scratch VM and vCPU of [`Partition::check_context_loads`].
#[derive(Debug)]
struct Trial {
    _vm: VmFd,
    vcpu: kvm_ioctls::VcpuFd,
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
    /// to user space.
    pub fn new(config: PartitionConfig) -> Result<Arc<Partition>, PartitionError> {
        if let Some(h) = config.hyperv {
            if h.boot_vtl > Vtl::MAX_X64 {
                return Err(PartitionError::BootVtl(h.boot_vtl.0));
            }
        }
        let kvm = Kvm::new().map_err(PartitionError::OpenKvm)?;
        let max = kvm.get_max_vcpus().min(u32::MAX as usize) as u32;
        if config.max_vps == 0 || config.max_vps > max {
            return Err(PartitionError::VpCount {
                requested: config.max_vps,
                max,
            });
        }
        let kvm_err = |what| move |source| PartitionError::Kvm { what, source };
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;

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
        let mut ram = Vec::new();
        for (slot, region) in memory.iter().enumerate() {
            let host = memory
                .get_host_address(region.start_addr())
                .map_err(|e| PartitionError::Memory(e.to_string()))?;
            ram.push(RamSlot {
                slot: slot as u32,
                gpa: region.start_addr().0,
                len: region.len(),
                host: host as u64,
            });
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is mapped for `len` bytes at `host` and is owned by
            // `memory`, which the partition keeps for as long as the VM exists.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }

        // Unknown MSRs (and, with Hyper-V, the filtered synthetic range) exit to
        // user space instead of raising #GP in the kernel.
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
        if config.hyperv.is_some() {
            // Deny the synthetic range in the kernel, so a host kernel with its own
            // Hyper-V emulation does not answer it.
            let bitmap = vec![0u8; (hyperv::MSR_COUNT / 8) as usize];
            let range = MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base: hyperv::MSR_FIRST,
                msr_count: hyperv::MSR_COUNT,
                bitmap: &bitmap,
            };
            vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range])
                .map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))?;
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;

        let mut handler_result = Ok(());
        KICK_HANDLER
            .call_once(|| handler_result = register_signal_handler(kick_signal(), kick_handler));
        handler_result.map_err(PartitionError::Signal)?;

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

    /// Creates VP `index` (HvCreateVp): `HV_STATUS_INVALID_VP_INDEX` if the index is
    /// not below `max_vps` or the VP exists. The VP starts with explicit suspend
    /// set; VP 0 is ready, every other VP waits for a SIPI or a start. The returned
    /// handle is run by one thread.
    pub fn create_vp(self: &Arc<Self>, index: VpIndex) -> HvResult<Vp> {
        let slot = self
            .vps
            .get(index.0 as usize)
            .ok_or(HvError::INVALID_VP_INDEX)?;
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Err(HvError::INVALID_VP_INDEX);
        }
        let vcpu = self
            .vm
            .create_vcpu(index.0 as u64)
            .map_err(|_| HvError::NO_RESOURCES)?;
        let cpuid = self.vp_cpuid(index);
        vcpu.set_cpuid2(&cpuid)
            .map_err(|_| HvError::OPERATION_FAILED)?;
        let vendor = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0)
            .map_or(hv_regs::CpuVendor::Other, |e| {
                hv_regs::CpuVendor::from_cpuid0(e.ebx, e.ecx, e.edx)
            });
        let shared = Arc::new(VpShared {
            index,
            vendor,
            inner: Mutex::new(VpInner {
                // Partition::new refused a boot VTL above 2.
                state: VpState::new(index, self.boot_vtl())?,
                pending_start: None,
                cancel: false,
                in_kvm: None,
                paused: 0,
                initial_apic_id: index.0,
                vp_assist_page: 0,
            }),
            wake: Condvar::new(),
        });
        *slot = Some(shared.clone());
        Vp::new(self.clone(), shared, vcpu)
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
            .filter_map(|i| self.vp_shared(VpIndex(i)))
            .collect();
        for vp in &vps {
            vp.lock().paused += 1;
        }
        for vp in &vps {
            vp.kick(|g| g.paused > 0);
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
    /// is `HV_STATUS_INSUFFICIENT_MEMORY`.
    fn check_context_loads(&self, context: &InitialVpContext) -> HvResult<()> {
        let mut trial = self.trial.lock().unwrap_or_else(|e| e.into_inner());
        if trial.is_none() {
            let vm = self
                .kvm
                .create_vm()
                .map_err(|_| HvError::INSUFFICIENT_MEMORY)?;
            let vcpu = vm
                .create_vcpu(0)
                .map_err(|_| HvError::INSUFFICIENT_MEMORY)?;
            vcpu.set_cpuid2(&self.vp_cpuid(VpIndex(0)))
                .map_err(|_| HvError::INSUFFICIENT_MEMORY)?;
            *trial = Some(Trial { _vm: vm, vcpu });
        }
        let Some(t) = trial.as_ref() else {
            return Err(HvError::INSUFFICIENT_MEMORY);
        };
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
            Ok(1) => Ok(()),
            _ => Err(HvError::INVALID_REGISTER_VALUE),
        }
    }

    pub(crate) fn vp_shared(&self, index: VpIndex) -> Option<Arc<VpShared>> {
        self.vps
            .get(index.0 as usize)?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    ) -> HvResult<()> {
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
        let vp = self.vp_shared(index).ok_or(HvError::INVALID_VP_INDEX)?;
        vp.lock().cancel = true;
        vp.wake.notify_all();
        vp.kick(|g| g.cancel);
        Ok(())
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
) -> HvResult<()> {
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
