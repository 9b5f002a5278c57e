//! A virtual processor, owned and run by one thread.

use std::sync::Arc;
use std::time::Instant;

use exit_decoder::{decode, enable_sync_regs, MsrAccess, VpExit, HYPERCALL_PAGE, HYPERCALL_PORT};
use hv_defs::{HvError, HvRegisterValue, HvResult, InitialVpContext, VpIndex};
use hv_regs::{AccessError, HvRegisterName, Synthetic, VcpuRegisters};
use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_xcrs, Msrs,
};
use kvm_ioctls::{SyncReg, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vp_state::Activity;

use crate::hyperv;
use crate::partition::{Partition, VpShared};

/// IA32_MTRR_DEF_TYPE.
const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;
const EINVAL: i32 = 22;
const EBUSY: i32 = 16;

/// Whether RAX written through the synced registers is still to be loaded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SyncDirty {
    Clean,
    /// Set; the next KVM_RUN loads it.
    Armed,
    /// Loaded by a KVM_RUN; the flag must be cleared before the next one.
    Consumed,
}

/// A virtual processor: the KVM vCPU and its VP model. Owned by the one thread
/// that runs it; other threads reach it through the [`Partition`].
#[derive(Debug)]
pub struct Vp {
    partition: Arc<Partition>,
    shared: Arc<VpShared>,
    vcpu: VcpuFd,
    sync: SyncDirty,
    tsc_hz: u64,
}

/// [`VcpuRegisters`] over a vCPU and its VP model.
pub(crate) struct RegAccess<'a> {
    pub vcpu: &'a VcpuFd,
    pub shared: &'a VpShared,
}

fn kvm<T>(r: Result<T, kvm_ioctls::Error>) -> Result<T, HvError> {
    r.map_err(|_| HvError::INVALID_PARAMETER)
}

impl VcpuRegisters for RegAccess<'_> {
    type Error = HvError;
    fn get_regs(&self) -> HvResult<kvm_regs> {
        kvm(self.vcpu.get_regs())
    }
    fn set_regs(&self, regs: &kvm_regs) -> HvResult<()> {
        kvm(self.vcpu.set_regs(regs))
    }
    fn get_sregs(&self) -> HvResult<kvm_sregs> {
        kvm(self.vcpu.get_sregs())
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> HvResult<()> {
        kvm(self.vcpu.set_sregs(sregs))
    }
    fn get_debugregs(&self) -> HvResult<kvm_debugregs> {
        kvm(self.vcpu.get_debug_regs())
    }
    fn set_debugregs(&self, d: &kvm_debugregs) -> HvResult<()> {
        kvm(self.vcpu.set_debug_regs(d))
    }
    fn get_xcr0(&self) -> HvResult<u64> {
        let x = kvm(self.vcpu.get_xcrs())?;
        let n = (x.nr_xcrs as usize).min(x.xcrs.len());
        Ok(x.xcrs[..n]
            .iter()
            .find(|x| x.xcr == 0)
            .map_or(0, |x| x.value))
    }
    fn set_xcr0(&self, value: u64) -> HvResult<()> {
        let mut x = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        x.xcrs[0].value = value;
        kvm(self.vcpu.set_xcrs(&x))
    }
    fn get_msr(&self, index: u32) -> HvResult<u64> {
        let mut m = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|_| HvError::INVALID_PARAMETER)?;
        match kvm(self.vcpu.get_msrs(&mut m))? {
            1 => Ok(m.as_slice()[0].data),
            _ => Err(HvError::INVALID_PARAMETER),
        }
    }
    fn set_msr(&self, index: u32, data: u64) -> HvResult<()> {
        let m = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }])
        .map_err(|_| HvError::INVALID_PARAMETER)?;
        match kvm(self.vcpu.set_msrs(&m))? {
            1 => Ok(()),
            _ => Err(HvError::INVALID_PARAMETER),
        }
    }
    fn get_mp_state(&self) -> HvResult<u32> {
        Ok(kvm(self.vcpu.get_mp_state())?.mp_state)
    }
    fn set_mp_state(&self, mp_state: u32) -> HvResult<()> {
        kvm(self.vcpu.set_mp_state(kvm_mp_state { mp_state }))?;
        let mut g = self.shared.lock();
        g.state = g.state.observe(match mp_state {
            hv_regs::mp_state::HALTED => Activity::Halted,
            hv_regs::mp_state::UNINITIALIZED | hv_regs::mp_state::INIT_RECEIVED => {
                Activity::WaitForSipi
            }
            _ => Activity::Runnable,
        });
        Ok(())
    }
    fn get_synthetic(&self, reg: Synthetic) -> HvResult<u64> {
        Ok(self.shared.synthetic(reg))
    }
    fn set_synthetic(&self, reg: Synthetic, value: u64) -> HvResult<()> {
        self.shared.set_synthetic(reg, value)
    }
    fn cpu_vendor(&self) -> hv_regs::CpuVendor {
        self.shared.vendor
    }
}

pub(crate) fn access_status(e: AccessError<HvError>) -> HvError {
    match e {
        AccessError::Fault(f) => f.status(),
        AccessError::Backend(e) => e,
    }
}

impl Vp {
    pub(crate) fn new(
        partition: Arc<Partition>,
        shared: Arc<VpShared>,
        mut vcpu: VcpuFd,
    ) -> HvResult<Vp> {
        enable_sync_regs(&mut vcpu);
        // KVM resets the MTRRs to uncached; make memory write-back as firmware would.
        let access = RegAccess {
            vcpu: &vcpu,
            shared: &shared,
        };
        access.set_msr(MSR_MTRR_DEF_TYPE, 0x806)?;
        let tsc_hz = vcpu.get_tsc_khz().map_or(0, |khz| khz as u64 * 1000);
        Ok(Vp {
            partition,
            shared,
            vcpu,
            sync: SyncDirty::Clean,
            tsc_hz,
        })
    }

    /// The VP's index.
    pub fn index(&self) -> VpIndex {
        self.shared.index
    }

    /// The partition the VP belongs to.
    pub fn partition(&self) -> &Arc<Partition> {
        &self.partition
    }

    /// The KVM vCPU, for what this crate does not model (LAPIC state, events,
    /// `kvm_run` after an internal error). Any result of a hypercall still pending
    /// in the synced registers is loaded first.
    pub fn vcpu_mut(&mut self) -> &mut VcpuFd {
        self.flush_sync_regs();
        &mut self.vcpu
    }

    /// Loads RAX still pending in the synced registers with KVM_SET_REGS, so that
    /// ioctl-based register access sees and keeps it.
    fn flush_sync_regs(&mut self) {
        match self.sync {
            SyncDirty::Clean => {}
            SyncDirty::Armed => {
                let regs = self.vcpu.sync_regs().regs;
                self.vcpu.clear_sync_dirty_reg(SyncReg::Register);
                let _ = self.vcpu.set_regs(&regs);
            }
            SyncDirty::Consumed => self.vcpu.clear_sync_dirty_reg(SyncReg::Register),
        }
        self.sync = SyncDirty::Clean;
    }

    pub(crate) fn regs(&mut self) -> RegAccess<'_> {
        self.flush_sync_regs();
        RegAccess {
            vcpu: &self.vcpu,
            shared: &self.shared,
        }
    }

    /// Reads registers by HV name (HvGetVpRegisters, as the host calls it).
    pub fn get_registers(&mut self, names: &[HvRegisterName]) -> HvResult<Vec<HvRegisterValue>> {
        let regs = self.regs();
        names
            .iter()
            .map(|&n| hv_regs::get_register(&regs, n).map_err(access_status))
            .collect()
    }

    /// Writes registers by HV name (HvSetVpRegisters, as the host calls it) as one
    /// batch: all are validated before any is written, and KVM checks the
    /// combined state (see [`hv_regs::set_registers`]).
    pub fn set_registers(&mut self, values: &[(HvRegisterName, HvRegisterValue)]) -> HvResult<()> {
        let regs = self.regs();
        hv_regs::set_registers(&regs, values).map_err(|(_, e)| access_status(e))
    }

    /// Runs the VP until an exit the host must handle (WHvRunVirtualProcessor).
    ///
    /// Handled here and not returned: hypercalls through the hypercall page,
    /// synthetic MSR accesses, contexts handed over by StartVirtualProcessor, and
    /// waits while the VP is suspended. [`VpExit::Canceled`] is returned only for
    /// [`Partition::cancel_run`].
    pub fn run(&mut self) -> VpExit<'_> {
        let vcpu: *mut VcpuFd = &mut self.vcpu;
        loop {
            if let Some(exit) = self.before_run() {
                return exit;
            }
            let start = Instant::now();
            // SAFETY: `vcpu` points at `self.vcpu`, which outlives the exit (the
            // exit's lifetime is that of `&mut self`). Every path that continues
            // the loop drops the exit before `self.vcpu` is used again, and the
            // handlers called while it is alive do not touch `self.vcpu`; the one
            // path that keeps it returns it. This is the borrow today's borrow
            // checker cannot express across loop iterations, not an aliasing one.
            let mut exit = decode(unsafe { &mut *vcpu }.run());
            let elapsed = start.elapsed();
            self.after_run();
            self.partition.stats.exit(exit_name(&exit), elapsed);
            let hyperv = self.partition.config.hyperv.is_some();
            if hyperv && exit.is_hypercall_trap(HYPERCALL_PORT) {
                // `exit` is not used past this point (see the SAFETY note above).
                self.handle_hypercall();
                continue;
            }
            match exit {
                VpExit::MsrAccess(ref mut m) if hyperv && hyperv::is_synthetic(m.index) => {
                    self.synthetic_msr(m);
                }
                VpExit::Canceled => {
                    let mut g = self.shared.lock();
                    if g.cancel {
                        g.cancel = false;
                        return VpExit::Canceled;
                    }
                }
                other @ (VpExit::MemoryAccess { .. }
                | VpExit::IoPortAccess { .. }
                | VpExit::MsrAccess(_)
                | VpExit::Halt
                | VpExit::InterruptWindow
                | VpExit::ApicEoi { .. }
                | VpExit::UnrecoverableException
                | VpExit::InvalidVpRegisterValue { .. }
                | VpExit::SystemEvent { .. }
                | VpExit::InternalError
                | VpExit::MemoryFault { .. }
                | VpExit::Exception
                | VpExit::Other { .. }
                | VpExit::RunFailed { .. }) => return other,
            }
        }
    }

    /// Serves requests and waits until the VP may enter KVM_RUN. `Some(exit)` if
    /// the run ends before entering the guest.
    fn before_run(&mut self) -> Option<VpExit<'static>> {
        if self.sync == SyncDirty::Consumed {
            self.vcpu.clear_sync_dirty_reg(SyncReg::Register);
            self.sync = SyncDirty::Clean;
        }
        loop {
            let mut g = self.shared.lock();
            if g.cancel {
                g.cancel = false;
                return Some(VpExit::Canceled);
            }
            if let Some(ctx) = g.pending_start.take() {
                drop(g);
                if self.load_start_context(&ctx).is_err() {
                    return Some(VpExit::RunFailed { errno: EINVAL });
                }
                continue;
            }
            if g.state.activity() == Activity::WaitForSipi {
                // An INIT/SIPI delivered by KVM's in-kernel LAPIC starts the VP too.
                if let Ok(mp) = self.vcpu.get_mp_state() {
                    if mp.mp_state == hv_regs::mp_state::RUNNABLE {
                        g.state = g.state.observe(Activity::Runnable);
                    }
                }
            }
            if g.state.suspended() {
                drop(self.shared.wake.wait(g).unwrap_or_else(|e| e.into_inner()));
                continue;
            }
            match g.state.enter_run() {
                Ok(s) => {
                    g.state = s;
                    // SAFETY: pthread_self has no preconditions.
                    g.in_kvm = Some(unsafe { libc::pthread_self() });
                    return None;
                }
                Err(_) => return Some(VpExit::RunFailed { errno: EBUSY }),
            }
        }
    }

    fn after_run(&mut self) {
        if self.sync == SyncDirty::Armed {
            self.sync = SyncDirty::Consumed;
        }
        let mut g = self.shared.lock();
        g.in_kvm = None;
        if let Ok(s) = g.state.exit_run() {
            g.state = s;
        }
    }

    fn load_start_context(&mut self, ctx: &InitialVpContext) -> HvResult<()> {
        let regs = self.regs();
        hv_regs::load_context(&regs, ctx).map_err(access_status)?;
        kvm(regs.vcpu.set_mp_state(kvm_mp_state {
            mp_state: hv_regs::mp_state::RUNNABLE,
        }))
    }

    /// Writes the hypercall result into RAX through the synced registers.
    pub(crate) fn set_result(&mut self, rax: u64) {
        exit_decoder::set_rax_on_next_run(&mut self.vcpu, rax);
        self.sync = SyncDirty::Armed;
    }

    pub(crate) fn synced_regs(&self) -> kvm_regs {
        exit_decoder::sync_regs(&self.vcpu)
    }

    /// Serves a synthetic MSR access. Must not touch `self.vcpu` (see `run`).
    fn synthetic_msr(&self, m: &mut MsrAccess<'_>) {
        let value = match (m.index, m.written) {
            (hyperv::MSR_GUEST_OS_ID, None) => Some(self.hv().guest_os_id),
            (hyperv::MSR_GUEST_OS_ID, Some(v)) => {
                let mut hv = self.hv();
                hv.guest_os_id = v;
                if v == 0 {
                    // Clearing the guest OS id disables the hypercall page.
                    hv.hypercall &= !1;
                }
                None
            }
            (hyperv::MSR_HYPERCALL, None) => Some(self.hv().hypercall),
            (hyperv::MSR_HYPERCALL, Some(v)) => match self.write_hypercall_msr(v) {
                Ok(()) => None,
                Err(()) => {
                    *m.error = 1;
                    return;
                }
            },
            (hyperv::MSR_VP_INDEX, None) => Some(self.shared.index.0 as u64),
            (hyperv::MSR_TSC_FREQUENCY, None) => Some(self.tsc_hz),
            (hyperv::MSR_APIC_FREQUENCY, None) => Some(1_000_000_000),
            (hyperv::MSR_VP_ASSIST_PAGE, None) => Some(self.shared.lock().vp_assist_page),
            (hyperv::MSR_VP_ASSIST_PAGE, Some(v)) => {
                self.shared.lock().vp_assist_page = v;
                None
            }
            (hyperv::MSR_TSC_INVARIANT_CONTROL, None) => Some(self.hv().tsc_invariant_control),
            (hyperv::MSR_TSC_INVARIANT_CONTROL, Some(v)) if v & !1 == 0 => {
                self.hv().tsc_invariant_control = v;
                None
            }
            _ => {
                *m.error = 1;
                return;
            }
        };
        if let (Some(v), Some(out)) = (value, m.read.as_deref_mut()) {
            *out = v;
        }
    }

    fn hv(&self) -> std::sync::MutexGuard<'_, crate::partition::HvPartitionState> {
        self.partition.hv.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// HV_X64_MSR_HYPERCALL: bit 0 enables the page at bits 63:12; bit 1 (locked)
    /// and bits 11:2 are reserved here. The page is written before the guest
    /// resumes. `Err` means #GP.
    fn write_hypercall_msr(&self, v: u64) -> Result<(), ()> {
        if v & 0xFFE != 0 {
            return Err(());
        }
        let mut hv = self.hv();
        if v & 1 != 0 && hv.guest_os_id == 0 {
            // The TLFS ignores the enable bit until the guest OS id is set.
            hv.hypercall = v & !1;
            return Ok(());
        }
        if v & 1 != 0 {
            let gpa = GuestAddress(v & !0xFFF);
            let mem = &self.partition.memory;
            if !mem.check_range(gpa, 4096) {
                return Err(());
            }
            let mut page = [0xCCu8; 4096];
            page[..HYPERCALL_PAGE.len()].copy_from_slice(&HYPERCALL_PAGE);
            mem.write_slice(&page, gpa).map_err(|_| ())?;
        }
        hv.hypercall = v;
        Ok(())
    }

    pub(crate) fn shared(&self) -> &Arc<VpShared> {
        &self.shared
    }
}

/// A stable name for an exit, for the statistics.
pub(crate) fn exit_name(e: &VpExit<'_>) -> &'static str {
    match e {
        VpExit::MemoryAccess { .. } => "MemoryAccess",
        VpExit::IoPortAccess { port, .. } if *port == HYPERCALL_PORT => "IoPortAccess (hypercall)",
        VpExit::IoPortAccess { .. } => "IoPortAccess",
        VpExit::MsrAccess(_) => "MsrAccess",
        VpExit::Halt => "Halt",
        VpExit::InterruptWindow => "InterruptWindow",
        VpExit::ApicEoi { .. } => "ApicEoi",
        VpExit::UnrecoverableException => "UnrecoverableException",
        VpExit::InvalidVpRegisterValue { .. } => "InvalidVpRegisterValue",
        VpExit::Canceled => "Canceled",
        VpExit::SystemEvent { .. } => "SystemEvent",
        VpExit::InternalError => "InternalError",
        VpExit::MemoryFault { .. } => "MemoryFault",
        VpExit::Exception => "Exception",
        VpExit::Other { .. } => "Other",
        VpExit::RunFailed { .. } => "RunFailed",
    }
}
