//! The partition: a KVM VM with guest memory, an in-kernel irqchip, and the shared
//! state of its virtual processors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
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
use vp_state::{Activity, VpState};

use crate::config::{Kick, PartitionConfig, PartitionOptions, VmParts};
use crate::error::{PartitionError, VpError};
use crate::hyperv;
use crate::kick::{prepare_signal, VpKicker};
use crate::memview::{MemoryView, SlotNumbers};
use crate::overlay::{Overlay, RamSlot};
use crate::run_state::{pause, RunGate};
use crate::shared::{VpInner, VpShared};
use crate::start_check::Trial;
use crate::stats::Stats;
use crate::vp::Vp;
use crate::vtl::{VsmShared, VtlSpace, NO_OVERLAY};

static NEXT_PARTITION_ID: AtomicU64 = AtomicU64::new(1);

/// A partition: a KVM VM, its guest memory, and its VPs.
///
/// Shared between the VP threads as `Arc<Partition>`. The host-facing calls
/// ([`Partition::start_virtual_processor`], [`Partition::enable_vp_vtl`],
/// [`Partition::cancel_run`], ...) may be made from any thread and report failures
/// as HV_STATUS values, host failures with their sources.
#[derive(Debug)]
pub struct Partition {
    pub(crate) kvm: Arc<Kvm>,
    pub(crate) vm: Arc<VmFd>,
    pub(crate) config: PartitionConfig,
    pub(crate) options: PartitionOptions,
    pub(crate) supported_cpuid: CpuId,
    pub(crate) id: PartitionId,
    pub(crate) vps: Vec<Mutex<Option<Arc<VpShared>>>>,
    pub(crate) stats: Stats,
    start_observer: OnceLock<Observer>,
    /// Per VTL: its VM, hypercall overlay and private synthetic MSRs; the boot
    /// VTL's from creation, the others from their HvCallEnablePartitionVtl.
    pub(crate) vtls: [OnceLock<VtlSpace>; 3],
    /// Held while VTL 0's VM of a partition booted above VTL 0 is made.
    vtl0_creation: Mutex<()>,
    pub(crate) vsm: Arc<VsmShared>,
    /// The RAM slots, registered alike in every VTL's VM.
    ram: Vec<RamSlot>,
    /// HV_X64_MSR_TSC_INVARIANT_CONTROL (partition-wide, shared by the VTLs).
    pub(crate) tsc_invariant_control: AtomicU64,
    /// One past the highest GPA (from the guest's MAXPHYADDR).
    gpa_limit: u64,
    /// A vCPU of a VM of its own, with the partition's CPUID, on which a start
    /// context is loaded first: KVM's own verdict on it, before the target's
    /// thread is handed the context.
    pub(crate) trial: Mutex<Option<Trial>>,
    /// Whether the partition created its VM (not adopted): the start checks may
    /// then use a spare vCPU of it.
    pub(crate) own_vm: bool,
    /// VPs below this index are promised by [`Partition::expect_vps`]: a lookup of
    /// one not yet created waits on `created` for its creation.
    expected: Mutex<u32>,
    created: Condvar,
    /// Guest RAM; the last field, so it is unmapped after every VM of the
    /// partition (each VTL's too) is closed.
    pub(crate) memory: GuestMemoryMmap,
}

/// How long a call naming an expected but not yet created VP waits for it.
pub const CREATION_WAIT: Duration = Duration::from_secs(10);

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
                .map_err(|_| PartitionError::Thread("KVM_GET_SUPPORTED_CPUID"));
            made.and_then(|(vm, memory, ram)| Ok((vm, memory, ram, supported?)))
        })?;
        let supported = supported.map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        Self::finish(
            Arc::new(kvm),
            Arc::new(vm),
            memory,
            ram,
            None,
            config,
            options,
            Some(supported),
        )
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
        register_ram(&vm, &ram)?;
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
    /// use std::sync::Arc;
    ///
    /// let kvm = Arc::new(kvm_ioctls::Kvm::new().unwrap());
    /// let vm = Arc::new(kvm.create_vm().unwrap());
    /// let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    /// // ... the VMM registers `memory` as slot 0, creates its irqchip ...
    /// let p = Partition::adopt(
    ///     VmParts {
    ///         kvm,
    ///         vm: vm.clone(), // the VMM keeps its own reference
    ///         memory,
    ///         ram_slots: vec![0],
    ///         overlay_slots: Some([1, 2]),
    ///     },
    ///     PartitionConfig {
    ///         max_vps: 2,
    ///         memory: vec![(0, 64 << 20)],
    ///         hyperv: Some(HyperVConfig::booting_in(hv_defs::Vtl::VTL0)),
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
            overlay_slots,
        } = parts;
        let regions: Vec<(u64, u64)> = memory.iter().map(|r| (r.start_addr().0, r.len())).collect();
        if regions != config.memory {
            return Err(PartitionError::Memory(format!(
                "config.memory {:x?} does not describe the adopted memory {regions:x?}",
                config.memory
            )));
        }
        let ram = ram_slots(&memory, &slots)?;
        if let Some(o) = overlay_slots {
            if o[0] == o[1] || slots.contains(&o[0]) || slots.contains(&o[1]) {
                return Err(PartitionError::OverlaySlots(o));
            }
        }
        Self::finish(kvm, vm, memory, ram, overlay_slots, config, options, None)
    }

    /// What both constructors share once the VM and its memory exist. The
    /// partition's own VM comes with the CPUID queried alongside it; an adopted
    /// one without.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        kvm: Arc<Kvm>,
        vm: Arc<VmFd>,
        memory: GuestMemoryMmap,
        ram: Vec<RamSlot>,
        overlay_slots: Option<[u32; 2]>,
        config: PartitionConfig,
        options: PartitionOptions,
        supported_cpuid: Option<CpuId>,
    ) -> Result<Arc<Partition>, PartitionError> {
        let own_vm = supported_cpuid.is_some();
        let max = kvm.get_max_vcpus().min(u32::MAX as usize) as u32;
        if config.max_vps == 0 || config.max_vps > max {
            return Err(PartitionError::VpCount {
                requested: config.max_vps,
                max,
            });
        }
        let kvm_err = |what| move |source| PartitionError::Kvm { what, source };
        apply_vm_policies(&kvm, &vm, &config, &options)?;
        let supported_cpuid = match supported_cpuid {
            Some(c) => c,
            None => kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?,
        };
        if let Kick::Signal(signal) = options.kick {
            prepare_signal(signal).map_err(PartitionError::Signal)?;
        }
        let vps = (0..config.max_vps).map(|_| Mutex::new(None)).collect();
        let overlay = Overlay::new(&hyperv::HYPERCALL_PAGE).map_err(PartitionError::Overlay)?;
        let gpa_limit = gpa_limit_of(&supported_cpuid);
        let (highest, nr_slots) = slot_bounds(&kvm, &ram);
        let numbers = match (own_vm, overlay_slots) {
            // The partition's own VM: its slots are the RAM's, so every
            // number above them is free; the last one settles the irqchip.
            (true, _) => SlotNumbers::up(highest, nr_slots - 1),
            // An adopted VM: the VMM's overlay pair, then from the top down.
            (false, Some(o)) => {
                SlotNumbers::given_then_down(&o, nr_slots - 1, highest.max(o[0]).max(o[1]) + 1)
            }
            (false, None) => SlotNumbers::up(highest, nr_slots),
        };
        if own_vm && options.create_irqchip {
            crate::settle::settle_in_background(vm.clone(), nr_slots - 1, gpa_limit);
        }
        let view = MemoryView::new(ram.clone(), numbers);
        let boot_vtl = config.hyperv.map_or(Vtl::VTL0, |h| h.boot_vtl);
        let max_vtl = config.hyperv.map_or(Vtl::VTL0, |h| h.max_vtl);
        let vtls: [OnceLock<VtlSpace>; 3] = Default::default();
        let _ = vtls[boot_vtl.0 as usize].set(VtlSpace::new(vm.clone(), overlay, view));
        let vsm = VsmShared::new(max_vtl, 1 | (1 << boot_vtl.0));
        Ok(Arc::new(Partition {
            kvm,
            vm,
            memory,
            config,
            options,
            supported_cpuid,
            id: PartitionId(NEXT_PARTITION_ID.fetch_add(1, Ordering::Relaxed)),
            vps,
            stats: Stats::default(),
            start_observer: OnceLock::new(),
            vtls,
            vtl0_creation: Mutex::new(()),
            vsm,
            ram,
            tsc_invariant_control: AtomicU64::new(0),
            gpa_limit,
            trial: Mutex::new(None),
            own_vm,
            expected: Mutex::new(0),
            created: Condvar::new(),
        }))
    }

    /// The KVM handle.
    pub fn kvm(&self) -> &Arc<Kvm> {
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
    pub fn vm(&self) -> &Arc<VmFd> {
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
        let cpuid = if self.options.set_cpuid {
            let cpuid = self.vp_cpuid(index);
            vcpu.set_cpuid2(&cpuid)
                .map_err(VpError::kvm("KVM_SET_CPUID2"))?;
            cpuid
        } else {
            crate::start_check::vcpu_cpuid(&vcpu)?
        };
        refresh_apic_map(&vcpu)?;
        // The constructors refused a boot VTL above 2.
        let state = VpState::new(index, self.boot_vtl())?;
        let shared = Arc::new(VpShared {
            index,
            vendor: hv_regs::CpuVendor::of(cpuid.as_slice()),
            cpuid,
            tsc_hz: vcpu.get_tsc_khz().map_or(0, |khz| khz as u64 * 1000),
            gate: RunGate::new(
                VpInner::new(state, index.0),
                VpKicker::new(index, self.options.kick.clone()),
            ),
            vsm: self.vsm.clone(),
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

    /// The GPA of the boot VTL's hypercall overlay page while the guest has it
    /// enabled.
    pub fn hypercall_overlay(&self) -> Option<u64> {
        self.hypercall_overlay_of(self.boot_vtl())
    }

    /// The GPA of `vtl`'s hypercall overlay page while that VTL has it enabled.
    pub fn hypercall_overlay_of(&self, vtl: Vtl) -> Option<u64> {
        self.space(vtl)?.overlay_at()
    }

    /// The VM and private state of `vtl`, once the VTL is enabled.
    pub(crate) fn space(&self, vtl: Vtl) -> Option<&VtlSpace> {
        self.vtls.get(vtl.0 as usize)?.get()
    }

    /// Maps `vtl`'s hypercall overlay page at `to` or unmaps it, with every VP
    /// held out of KVM_RUN while the memory slots change. Called from a VP's
    /// own exit handling (an MSR write) as well: the calling VP's thread is
    /// marked out of KVM_RUN before anything is waited for, so it never waits
    /// for itself, nor for another VP doing the same.
    pub(crate) fn place_hypercall_overlay(
        &self,
        vtl: Vtl,
        to: Option<u64>,
    ) -> Result<(), kvm_ioctls::Error> {
        let Some(space) = self.space(vtl) else {
            return Err(kvm_ioctls::Error::new(22));
        };
        let vps: Vec<Arc<VpShared>> = (0..self.config.max_vps)
            .filter_map(|i| self.existing_vp(VpIndex(i)))
            .collect();
        for vp in &vps {
            vp.gate.leave_if_current();
        }
        if space.view().overlay_at() == to {
            return Ok(());
        }
        // VPs first, then the view (the order `protect` keeps).
        let paused = pause(vps.iter().map(|vp| &vp.gate).collect());
        let mut view = space.view();
        let host = space.overlay.host();
        let r = view.set_overlay(&*space.vm, to.map(|gpa| (gpa, host)));
        space
            .overlay_at
            .store(view.overlay_at().unwrap_or(NO_OVERLAY), Ordering::Release);
        drop(view);
        drop(paused);
        r.map_err(|e| match e {
            crate::memview::ViewError::Kvm(e) => e,
            // ENOSPC: no slot number left.
            crate::memview::ViewError::TooManySlots { .. } => kvm_ioctls::Error::new(28),
        })
    }

    /// Enables `vtl` for the partition (HvCallEnablePartitionVtl once its
    /// checks passed): a KVM VM of its own with the partition's RAM registered
    /// in the same slots, the same KVM-wide policies, and an overlay page of
    /// its own. A host failure is returned with its source; the VTL is then
    /// not enabled.
    pub(crate) fn create_vtl_space(&self, vtl: Vtl) -> Result<(), PartitionError> {
        let slot = self
            .vtls
            .get(vtl.0 as usize)
            .ok_or(PartitionError::BootVtl(vtl.0))?;
        if slot.get().is_some() {
            return Ok(());
        }
        let kvm_err = |what| move |source| PartitionError::Kvm { what, source };
        let vm = self.kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        register_ram(&vm, &self.ram)?;
        apply_vm_policies(&self.kvm, &vm, &self.config, &self.options)?;
        let overlay = Overlay::new(&hyperv::HYPERCALL_PAGE).map_err(PartitionError::Overlay)?;
        let (highest, nr_slots) = slot_bounds(&self.kvm, &self.ram);
        let mut view = MemoryView::new(self.ram.clone(), SlotNumbers::up(highest, nr_slots));
        // The default masks higher VTLs configured before this VM existed.
        for by in vtl.0 + 1..=Vtl::MAX_X64.0 {
            let default = self.vsm.default_access(Vtl(by));
            if default != crate::memview::Access::Full {
                let p = crate::memview::Protections {
                    default,
                    pages: Default::default(),
                };
                view.set_protections(&vm, Vtl(by), p)
                    .map_err(|e| PartitionError::Memory(e.to_string()))?;
            }
        }
        let restricted = view.restricted();
        let space = VtlSpace::new(Arc::new(vm), overlay, view);
        space
            .restricted
            .store(restricted, std::sync::atomic::Ordering::Release);
        let _ = slot.set(space);
        self.vsm.mark_enabled(vtl);
        log::info!("partition {}: VTL {} enabled", self.id.0, vtl.0);
        Ok(())
    }

    /// Enables `vtl` for the partition as the host calls it
    /// (HvCallEnablePartitionVtl without the guest's privilege checks):
    /// `HV_STATUS_INVALID_PARAMETER` above the configured maximum VTL,
    /// `HV_STATUS_VTL_ALREADY_ENABLED` if it is; a host failure with its
    /// source.
    pub fn enable_partition_vtl(&self, vtl: Vtl) -> Result<(), VpError> {
        if vtl > self.vsm.max_vtl {
            return Err(HvError::INVALID_PARAMETER.into());
        }
        if self.vsm.enabled() & (1 << vtl.0) != 0 {
            return Err(HvError::VTL_ALREADY_ENABLED.into());
        }
        self.create_vtl_space(vtl).map_err(|e| {
            log::error!("cannot enable VTL {}: {e}", vtl.0);
            VpError::Status(HvError::INSUFFICIENT_MEMORY)
        })
    }

    /// The partition's enabled-VTL set (bit n for VTL n) and maximum VTL, as
    /// HvRegisterVsmPartitionStatus reports them.
    pub fn vsm_partition_status(&self) -> (u16, Vtl) {
        (self.vsm.enabled(), self.vsm.max_vtl)
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

    /// Enables `vtl` on VP `index` with `context` for its first entry
    /// (HvCallEnableVpVtl, as the host calls it, without the guest's privilege
    /// checks): `HV_STATUS_INVALID_VP_INDEX` for no such VP,
    /// `HV_STATUS_INVALID_PARAMETER` if the partition has not enabled `vtl`,
    /// `HV_STATUS_VTL_ALREADY_ENABLED` if the VP has.
    pub fn enable_vp_vtl(
        &self,
        index: VpIndex,
        vtl: Vtl,
        context: &InitialVpContext,
    ) -> HvResult<()> {
        let vp = self.vp_shared(index).ok_or(HvError::INVALID_VP_INDEX)?;
        if vtl > Vtl::MAX_X64 || self.vsm.enabled() & (1 << vtl.0) == 0 {
            return Err(HvError::INVALID_PARAMETER);
        }
        self.enable_vtl_on(&vp, vtl, context)
    }

    /// Enables `vtl` on `vp` once the caller's checks passed: the VP model's
    /// (already enabled), the context's, then, for a VTL other than the boot
    /// VTL, a vCPU of the VP in that VTL's VM, handed to the VP's thread with
    /// the context for its first entry. The active VTL does not change.
    pub(crate) fn enable_vtl_on(
        &self,
        vp: &VpShared,
        vtl: Vtl,
        context: &InitialVpContext,
    ) -> HvResult<()> {
        let mut g = vp.lock();
        let enabled = g.state.enable_vtl(vtl)?;
        hv_regs::context_to_kvm(context, &Default::default()).map_err(hv_regs::context_status)?;
        if vtl != self.boot_vtl() {
            let vcpu = self.create_vtl_vcpu(vp, vtl).map_err(|e| {
                log::error!("VP {}: cannot make its VTL {} vCPU: {e}", vp.index.0, vtl.0);
                HvError::INSUFFICIENT_MEMORY
            })?;
            g.new_vtls.push(crate::shared::VtlVcpu {
                vtl,
                vcpu,
                first_entry: *context,
            });
        }
        g.state = enabled;
        drop(g);
        vp.gate.notify();
        Ok(())
    }

    /// The vCPU of `vp` in VTL 0 of a partition booted above it, made at its
    /// first use (VTL 0 is always enabled, TLFS "Virtual Secure Mode"): VTL
    /// 0's VM is made with the first such vCPU. The vCPU is in KVM's reset
    /// state (the boot processor's runnable, an application processor's
    /// waiting for SIPI) until the higher VTL sets its registers.
    pub(crate) fn vtl0_vcpu(&self, vp: &VpShared) -> Result<VcpuFd, VpError> {
        if self.boot_vtl() == Vtl::VTL0 {
            return Err(HvError::INVALID_VTL_STATE.into());
        }
        self.ensure_vtl0_space().map_err(|e| {
            log::error!("cannot make VTL 0's VM: {e}");
            VpError::Status(HvError::INSUFFICIENT_MEMORY)
        })?;
        self.create_vtl_vcpu(vp, Vtl::VTL0)
    }

    /// VTL 0's VM of a partition booted above it, made at its first use
    /// (a VP's VTL 0 vCPU, a protection of VTL 0's memory).
    pub(crate) fn ensure_vtl0_space(&self) -> Result<(), PartitionError> {
        // One VTL 0 VM, whichever thread gets here first.
        let _g = self.vtl0_creation.lock().unwrap_or_else(|e| e.into_inner());
        if self.space(Vtl::VTL0).is_none() {
            self.create_vtl_space(Vtl::VTL0)?;
        }
        Ok(())
    }

    /// The vCPU of `vp` in `vtl`'s VM: the VP's CPUID, its APIC id, set up as
    /// the VP's first vCPU is ([`crate::vp::set_up_vcpu`]).
    fn create_vtl_vcpu(&self, vp: &VpShared, vtl: Vtl) -> Result<VcpuFd, VpError> {
        let space = self.space(vtl).ok_or(HvError::INVALID_PARAMETER)?;
        let mut vcpu = space
            .vm
            .create_vcpu(vp.index.0 as u64)
            .map_err(VpError::kvm("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(&vp.cpuid)
            .map_err(VpError::kvm("KVM_SET_CPUID2"))?;
        refresh_apic_map(&vcpu)?;
        crate::vp::set_up_vcpu(&mut vcpu, self.options.mtrr_write_back, vp.vendor)?;
        Ok(vcpu)
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
        vp.set_synthetic(Synthetic::ExplicitSuspend, Vtl::VTL0, suspend as u64)
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

    /// The VTL VP `index` runs in: for a returned exit, the VTL it came from
    /// (the exit borrows the [`Vp`]; this is read through the partition).
    pub fn active_vtl(&self, index: VpIndex) -> HvResult<Vtl> {
        Ok(self.vp_state(index)?.active_vtl())
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
        // spare vCPU: a context the target could not load is refused here,
        // with the target left unstarted.
        partition.check_context_loads(vp, context)?;
        g.state = started;
        g.pending_start = Some((vtl, *context));
    }
    vp.gate.notify();
    vp.gate.kick(|g| g.pending_start.is_some());
    Ok(())
}

/// The KVM-wide policies `options` selects, applied to `vm`: the in-kernel
/// irqchip, MSR exits and the MSR filter (the synthetic range with Hyper-V).
fn apply_vm_policies(
    kvm: &Kvm,
    vm: &VmFd,
    config: &PartitionConfig,
    options: &PartitionOptions,
) -> Result<(), PartitionError> {
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
        let both = MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE;
        let mut ranges: Vec<(u32, u32, MsrFilterRangeFlags)> = options
            .msr_filter
            .iter()
            .map(|&(base, n)| (base, n, both))
            .collect();
        if let Some(h) = config.hyperv {
            ranges.push((hyperv::MSR_FIRST, hyperv::MSR_COUNT, both));
            if h.max_vtl > h.boot_vtl {
                // MTRR writes reach every VTL's vCPU of the VP (`mtrr`).
                for &(base, n) in &crate::mtrr::RANGES {
                    ranges.push((base, n, MsrFilterRangeFlags::WRITE));
                }
            }
        }
        if !ranges.is_empty() {
            let bitmaps: Vec<Vec<u8>> = ranges
                .iter()
                .map(|&(_, n, _)| vec![0u8; n.div_ceil(8) as usize])
                .collect();
            let filter: Vec<MsrFilterRange<'_>> = ranges
                .iter()
                .zip(&bitmaps)
                .map(|(&(base, msr_count, flags), bitmap)| MsrFilterRange {
                    flags,
                    base,
                    msr_count,
                    bitmap,
                })
                .collect();
            vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &filter)
                .map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))?;
        }
    }
    Ok(())
}

/// KVM recomputes its APIC map while it creates a vCPU, before that vCPU counts
/// as online, so the newest vCPU is missing from the map until the next
/// recomputation and IPIs to it (an INIT/SIPI) are dropped. Setting its LAPIC
/// state (unchanged) recomputes the map with it. Nothing to do without an
/// in-kernel LAPIC.
fn refresh_apic_map(vcpu: &VcpuFd) -> Result<(), VpError> {
    if let Ok(lapic) = vcpu.get_lapic() {
        vcpu.set_lapic(&lapic)
            .map_err(VpError::kvm("KVM_SET_LAPIC"))?;
    }
    Ok(())
}

/// Registers the RAM slots in `vm` (a partition's own VM, or a VTL's).
/// One past the highest RAM slot number, and the slot count KVM allows
/// (KVM_CAP_NR_MEMSLOTS, at least one past the RAM's).
fn slot_bounds(kvm: &Kvm, ram: &[RamSlot]) -> (u32, u32) {
    let highest = ram.iter().map(|r| r.slot + 1).max().unwrap_or(0);
    let nr = kvm.get_nr_memslots().min(u16::MAX as usize) as u32;
    (highest, nr.max(highest + 1))
}

fn register_ram(vm: &VmFd, ram: &[RamSlot]) -> Result<(), PartitionError> {
    for r in ram {
        let region = kvm_userspace_memory_region {
            slot: r.slot,
            flags: 0,
            guest_phys_addr: r.gpa,
            memory_size: r.len,
            userspace_addr: r.host,
        };
        // SAFETY: the region is mapped for `len` bytes at `host` and is owned by
        // the partition's `memory`, which outlives every VM of the partition.
        unsafe { vm.set_user_memory_region(region) }.map_err(|source| PartitionError::Kvm {
            what: "KVM_SET_USER_MEMORY_REGION",
            source,
        })?;
    }
    Ok(())
}

/// The checks on a configuration that need no KVM.
fn check_config(config: &PartitionConfig) -> Result<(), PartitionError> {
    if let Some(h) = config.hyperv {
        if h.boot_vtl > Vtl::MAX_X64 {
            return Err(PartitionError::BootVtl(h.boot_vtl.0));
        }
        if h.max_vtl < h.boot_vtl || h.max_vtl > Vtl::MAX_X64 {
            return Err(PartitionError::MaxVtl {
                boot: h.boot_vtl.0,
                max: h.max_vtl.0,
            });
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

/// One past the highest guest-physical address, from the CPUID's MAXPHYADDR.
fn gpa_limit_of(cpuid: &CpuId) -> u64 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(1u64 << 36, |e| 1u64 << (e.eax & 0xFF).clamp(32, 52))
}
