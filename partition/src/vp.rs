//! A virtual processor, owned and run by one thread.

use std::cell::Cell;

use polonius_the_crab::prelude::*;
use std::sync::Arc;
use std::time::Instant;

use exit_decoder::{decode, enable_sync_regs, Access, CallerMode, VpExit};

use crate::hyperv::HYPERCALL_PORT;
use hv_defs::{HvError, HvRegisterValue, InitialVpContext, VpIndex, Vtl};
use hv_regs::{AccessError, HvRegisterName, Synthetic, VcpuRegisters};
use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_regs, kvm_sregs, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS,
};
use kvm_ioctls::{SyncReg, VcpuFd};
use vp_state::Activity;

use crate::error::VpError;
use crate::intercept::Violation;
use crate::memview::AccessKind;
use crate::partition::Partition;
use crate::shared::VpShared;

/// IA32_MTRR_DEF_TYPE.
const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;
const EINVAL: i32 = 22;
const EBUSY: i32 = 16;
const CR0_PG: u64 = 1 << 31;
/// #UD and #GP.
pub(crate) const VECTOR_UD: u8 = 6;
const VECTOR_GP: u8 = 13;

/// What [`Vp::run`] does after an exit it keeps.
enum Next {
    /// A write to the trap port, with its bytes.
    TrapPort([u8; 4], usize),
    /// A write to the hypercall overlay page, at this GPA.
    OverlayWrite(u64),
    /// A guest write to an MTRR (index, value), which every VTL shares.
    MtrrWrite(u32, u64),
    /// An access a higher VTL's protection refuses, and that VTL.
    Intercept(crate::intercept::Violation, Vtl),
    /// An emulation failure while some of the VTL's memory is protected:
    /// perhaps an instruction fetch from a page without access.
    CheckFetch,
    /// Served; run again.
    Continue,
}

/// The VP left KVM_RUN: a result loaded from the synced registers is consumed,
/// and the run protocol marks the thread out ([`crate::run_state`]).
fn leave_run(sync: &mut SyncDirty, synced: &mut bool, shared: &VpShared) {
    if *sync == SyncDirty::Armed {
        *sync = SyncDirty::Consumed;
    }
    *synced = true;
    shared.gate.leave();
}

/// What the partition did with an exit a VMM's own run loop handed it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The partition served it; run the VP again.
    Served,
    /// Not the partition's: the VMM handles it as it would without one.
    NotMine,
}

/// What a 4-byte OUT to the trap port is, by where and how it was executed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Trap {
    /// A hypercall through the enabled hypercall page from CPL 0 in protected
    /// mode ([`CallerMode::Long`] or [`CallerMode::Protected`], whose register
    /// ABIs differ).
    Serve(CallerMode),
    /// The hypercall page executed in real mode, virtual-8086 mode or at CPL > 0:
    /// #UD (TLFS "Legal Hypercall Environments").
    Undefined,
    /// Not the hypercall page: a plain port write, for the VMM.
    PortIo,
}

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
    /// Whether the special registers are also pending in the synced copy (a
    /// start context), with the GPRs (`sync` is then Armed).
    sregs_armed: bool,
    /// Whether a KVM_RUN has returned since creation, so `kvm_run` holds the
    /// registers KVM synced at that exit.
    synced: bool,
    /// Set when the VP's own GPRs were written with KVM_SET_REGS while a hypercall
    /// was served, so the exit-time copy in `kvm_run` is stale.
    wrote_regs: Cell<bool>,
    /// The bytes of a trap-port write handed to the VMM as plain port I/O.
    port_write: [u8; 4],
    /// The last translation of the hypercall page's linear address, so that a
    /// hypercall costs no KVM_TRANSLATE while the paging state is the same.
    pub(crate) page_translation: Cell<Option<PageTranslation>>,
    /// The VTL whose vCPU `vcpu` is (the active VTL once the VP runs).
    pub(crate) vtl: Vtl,
    /// The vCPUs of the VP's other enabled VTLs, by VTL.
    pub(crate) parked: [Option<Parked>; 3],
    /// Whether guest MTRR writes exit to be shared by the VP's VTLs (a
    /// partition that may enable a VTL: [`crate::mtrr`]).
    mtrrs_shared: bool,
}

/// A vCPU of a VTL that is not running on the VP now.
#[derive(Debug)]
pub(crate) struct Parked {
    pub vcpu: VcpuFd,
    /// Whether its `kvm_run` holds registers KVM synced at an exit.
    pub synced: bool,
    /// The EnableVpVtl context, until the VTL's first entry.
    pub first_entry: Option<InitialVpContext>,
    /// The state shared across VTLs as the vCPU held it when it was parked
    /// (read from it by the switch that parked it).
    pub shared_state: Option<crate::vsm::SharedState>,
    /// Set by a register write through [`RegAccess`] while parked: its
    /// `kvm_run` copy and `shared_state` may be stale.
    pub touched: Cell<bool>,
    /// The VTL's last translation of its hypercall page's linear address
    /// (checked against the paging state at use, like the running one's).
    pub page_translation: Option<PageTranslation>,
}

impl Drop for Vp {
    fn drop(&mut self) {
        // Under the VP lock, which a kicker holds while it writes through it.
        let _g = self.shared.lock();
        self.shared
            .gate
            .interrupter()
            .set_target(std::ptr::null_mut());
    }
}

/// A linear page and the GPA page it mapped to under one paging state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct PageTranslation {
    paging: [u64; 4],
    linear_page: u64,
    gpa_page: u64,
}

/// [`VcpuRegisters`] over a vCPU and its VP model.
pub(crate) struct RegAccess<'a> {
    pub vcpu: &'a VcpuFd,
    pub shared: &'a VpShared,
    pub wrote_regs: &'a Cell<bool>,
    /// The VTL the vCPU belongs to (the instance of a per-VTL VSM register).
    pub vtl: Vtl,
    /// A parked vCPU's [`Parked::touched`], set by every write.
    pub touched: Option<&'a Cell<bool>>,
}

/// A KVM failure of `what`, with its source.
fn kvm<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VpError> {
    r.map_err(VpError::kvm(what))
}

impl RegAccess<'_> {
    fn touch(&self) {
        if let Some(t) = self.touched {
            t.set(true);
        }
    }

    /// The KVM backend of `hv-regs` over this vCPU.
    fn kvm(&self) -> hv_regs::KvmVcpu<'_> {
        hv_regs::KvmVcpu {
            fd: self.vcpu,
            vendor: self.shared.vendor,
        }
    }
}

/// KVM's vCPU state through `hv_regs::KvmVcpu`, the VP model's registers from
/// [`VpShared`]. A KVM failure is a [`VpError::Kvm`] with its source; what a
/// guest gets for it is [`access_status`]'s.
impl VcpuRegisters for RegAccess<'_> {
    type Error = VpError;
    fn get_regs(&self) -> Result<kvm_regs, VpError> {
        kvm("KVM_GET_REGS", self.kvm().get_regs())
    }
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), VpError> {
        self.touch();
        self.wrote_regs.set(true);
        kvm("KVM_SET_REGS", self.kvm().set_regs(regs))
    }
    fn get_sregs(&self) -> Result<kvm_sregs, VpError> {
        kvm("KVM_GET_SREGS", self.kvm().get_sregs())
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), VpError> {
        self.touch();
        kvm("KVM_SET_SREGS", self.kvm().set_sregs(sregs))
    }
    fn get_debugregs(&self) -> Result<kvm_debugregs, VpError> {
        kvm("KVM_GET_DEBUGREGS", self.kvm().get_debugregs())
    }
    fn set_debugregs(&self, d: &kvm_debugregs) -> Result<(), VpError> {
        self.touch();
        kvm("KVM_SET_DEBUGREGS", self.kvm().set_debugregs(d))
    }
    fn get_xcr0(&self) -> Result<u64, VpError> {
        kvm("KVM_GET_XCRS", self.kvm().get_xcr0())
    }
    fn set_xcr0(&self, value: u64) -> Result<(), VpError> {
        self.touch();
        kvm("KVM_SET_XCRS", self.kvm().set_xcr0(value))
    }
    fn get_msr(&self, index: u32) -> Result<u64, VpError> {
        kvm("KVM_GET_MSRS", self.kvm().get_msr(index))
    }
    fn set_msr(&self, index: u32, data: u64) -> Result<(), VpError> {
        self.touch();
        kvm("KVM_SET_MSRS", self.kvm().set_msr(index, data))
    }
    fn get_mp_state(&self) -> Result<u32, VpError> {
        kvm("KVM_GET_MP_STATE", self.kvm().get_mp_state())
    }
    fn set_mp_state(&self, mp_state: u32) -> Result<(), VpError> {
        self.touch();
        kvm("KVM_SET_MP_STATE", self.kvm().set_mp_state(mp_state))?;
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
    fn get_synthetic(&self, reg: Synthetic) -> Option<Result<u64, VpError>> {
        Some(self.shared.synthetic(reg, self.vtl).map_err(VpError::from))
    }
    fn set_synthetic(&self, reg: Synthetic, value: u64) -> Option<Result<(), VpError>> {
        Some(
            self.shared
                .set_synthetic(reg, self.vtl, value)
                .map_err(VpError::from),
        )
    }
    fn cpu_vendor(&self) -> hv_regs::CpuVendor {
        self.shared.vendor
    }
}

/// What a guest's Get/SetVpRegisters gets for a failure: the TLFS status of a
/// refused name or value; for a value KVM refused (`EINVAL`),
/// `HV_STATUS_INVALID_PARAMETER`; for any other host failure
/// `HV_STATUS_OPERATION_FAILED` (logged with its source).
pub(crate) fn access_status(e: AccessError<VpError>) -> HvError {
    match e {
        AccessError::Fault(f) => f.status(),
        AccessError::Backend(VpError::Kvm { source, .. }) if source.errno() == EINVAL => {
            HvError::INVALID_PARAMETER
        }
        AccessError::Backend(e) => e.status(),
    }
}

/// What every vCPU of a VP gets before it first runs (the boot VTL's and each
/// other VTL's): registers synced through `kvm_run` (the hypercall trap checks
/// the caller's mode and CPL without an ioctl) and, with `mtrr_write_back`,
/// write-back memory as firmware would leave it (KVM resets the MTRRs to
/// uncached).
pub(crate) fn set_up_vcpu(
    vcpu: &mut VcpuFd,
    mtrr_write_back: bool,
    vendor: hv_regs::CpuVendor,
) -> Result<(), VpError> {
    enable_sync_regs(vcpu);
    vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
    if mtrr_write_back {
        hv_regs::KvmVcpu { fd: vcpu, vendor }
            .set_msr(MSR_MTRR_DEF_TYPE, 0x806)
            .map_err(VpError::kvm("KVM_SET_MSRS (IA32_MTRR_DEF_TYPE)"))?;
    }
    Ok(())
}

/// `ctx` over the special registers `base` as KVM state, with what has no
/// register ioctl of its own already loaded on `vcpu` (PAT, the runnable
/// state): what a start and a VTL's first entry share. The caller loads the
/// GPRs and special registers it returns.
pub(crate) fn context_on(
    vcpu: &VcpuFd,
    vendor: hv_regs::CpuVendor,
    ctx: &InitialVpContext,
    base: &kvm_sregs,
) -> Result<hv_regs::KvmVpContext, VpError> {
    let k = hv_regs::context_to_kvm(ctx, base).map_err(hv_regs::context_status)?;
    kvm(
        "KVM_SET_MSRS (PAT)",
        hv_regs::KvmVcpu { fd: vcpu, vendor }.set_msr(hv_regs::msr::PAT, k.pat),
    )?;
    kvm(
        "KVM_SET_MP_STATE",
        vcpu.set_mp_state(kvm_mp_state {
            mp_state: hv_regs::mp_state::RUNNABLE,
        }),
    )?;
    Ok(k)
}

/// The host's view of the same failure: a TLFS status, or the host error.
fn access_error(e: AccessError<VpError>) -> VpError {
    match e {
        AccessError::Fault(f) => VpError::Status(f.status()),
        AccessError::Backend(e) => e,
    }
}

impl Vp {
    pub(crate) fn new(
        partition: Arc<Partition>,
        shared: Arc<VpShared>,
        mut vcpu: VcpuFd,
    ) -> Result<Vp, VpError> {
        set_up_vcpu(&mut vcpu, partition.options.mtrr_write_back, shared.vendor)?;
        let wrote_regs = Cell::new(false);
        let vtl = partition.boot_vtl();
        let mtrrs_shared = partition.options.msr_exits
            && partition
                .config
                .hyperv
                .is_some_and(|h| h.max_vtl > h.boot_vtl);
        // The kvm_run mapping stays where it is for the VcpuFd's life; Drop for
        // Vp withdraws the pointer.
        let immediate_exit: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
        {
            let _g = shared.lock();
            shared.gate.interrupter().set_target(immediate_exit);
        }
        Ok(Vp {
            partition,
            shared,
            vcpu,
            sync: SyncDirty::Clean,
            sregs_armed: false,
            synced: false,
            wrote_regs,
            port_write: [0; 4],
            page_translation: Cell::new(None),
            vtl,
            parked: [None, None, None],
            mtrrs_shared,
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

    /// Makes `incoming` the running vCPU (its `kvm_run` synced or not, as
    /// `synced` says) and hands back the one that ran in it, with whether its
    /// `kvm_run` was synced. A result pending in the synced registers is
    /// loaded into the outgoing vCPU first.
    pub(crate) fn replace_vcpu(&mut self, incoming: &mut VcpuFd, synced: bool) -> bool {
        self.flush_sync_regs();
        std::mem::swap(&mut self.vcpu, incoming);
        self.wrote_regs.set(false);
        std::mem::replace(&mut self.synced, synced)
    }

    /// The GPRs (and with `sregs` the special registers) were written into
    /// the running vCPU's `kvm_run` copy and marked dirty: the next KVM_RUN
    /// loads them.
    pub(crate) fn arm_synced(&mut self, sregs: bool) {
        self.sync = SyncDirty::Armed;
        self.sregs_armed = sregs;
    }

    /// Loads RAX still pending in the synced registers with KVM_SET_REGS, so that
    /// ioctl-based register access sees and keeps it.
    fn flush_sync_regs(&mut self) {
        match self.sync {
            SyncDirty::Clean => {}
            SyncDirty::Armed => {
                let synced = self.vcpu.sync_regs();
                self.vcpu.clear_sync_dirty_reg(SyncReg::Register);
                if self.sregs_armed {
                    self.vcpu.clear_sync_dirty_reg(SyncReg::SystemRegister);
                    let _ = self.vcpu.set_sregs(&synced.sregs);
                }
                let _ = self.vcpu.set_regs(&synced.regs);
            }
            SyncDirty::Consumed => {
                self.vcpu.clear_sync_dirty_reg(SyncReg::Register);
                self.vcpu.clear_sync_dirty_reg(SyncReg::SystemRegister);
            }
        }
        self.sync = SyncDirty::Clean;
        self.sregs_armed = false;
    }

    pub(crate) fn regs(&mut self) -> RegAccess<'_> {
        self.flush_sync_regs();
        RegAccess {
            vcpu: &self.vcpu,
            shared: &self.shared,
            wrote_regs: &self.wrote_regs,
            vtl: self.vtl,
            touched: None,
        }
    }

    /// Register access to the VP's vCPU in `vtl`: the running one, or a parked
    /// one of another enabled VTL; `None` if the VP has no vCPU in `vtl`.
    pub(crate) fn regs_of(&mut self, vtl: Vtl) -> Option<RegAccess<'_>> {
        if vtl == self.vtl {
            return Some(self.regs());
        }
        if vtl == Vtl::VTL0 {
            if let Err(e) = self.ensure_vtl0() {
                log::error!("VP {}: no VTL 0 vCPU: {e}", self.index().0);
            }
        }
        let parked = self.parked.get(vtl.0 as usize)?.as_ref()?;
        Some(RegAccess {
            vcpu: &parked.vcpu,
            shared: &self.shared,
            wrote_regs: &self.wrote_regs,
            vtl,
            touched: Some(&parked.touched),
        })
    }

    /// Register access for `name` in `vtl`: [`Self::regs_of`], except that a
    /// register the VTLs share is the running vCPU's (one per VP).
    pub(crate) fn regs_for(&mut self, name: HvRegisterName, vtl: Vtl) -> Option<RegAccess<'_>> {
        if vtl != self.vtl && crate::vsm::shared_across_vtls(name) {
            // The VP must have `vtl` (made now for VTL 0 where it is lazy).
            self.regs_of(vtl)?;
            return Some(self.regs());
        }
        self.regs_of(vtl)
    }

    /// The VTL the VP runs in (its running vCPU's).
    pub fn active_vtl(&self) -> Vtl {
        self.vtl
    }

    /// Reads registers of the VP's vCPU in `vtl` by HV name (HvGetVpRegisters
    /// with an input VTL, as the host calls it): `HV_STATUS_INVALID_VTL_STATE`
    /// if the VP has no vCPU in `vtl`; otherwise as [`Self::get_registers`].
    pub fn get_vtl_registers(
        &mut self,
        vtl: Vtl,
        names: &[HvRegisterName],
    ) -> Result<Vec<HvRegisterValue>, VpError> {
        names
            .iter()
            .map(|&n| {
                let regs = self.regs_for(n, vtl).ok_or(HvError::INVALID_VTL_STATE)?;
                hv_regs::get_register(&regs, n).map_err(access_error)
            })
            .collect()
    }

    /// Writes registers of the VP's vCPU in `vtl` by HV name as one batch
    /// (HvSetVpRegisters with an input VTL, as the host calls it).
    pub fn set_vtl_registers(
        &mut self,
        vtl: Vtl,
        values: &[(HvRegisterName, HvRegisterValue)],
    ) -> Result<(), VpError> {
        self.set_vtl_registers_at(vtl, values, false)
            .map_err(|(_, e)| access_error(e))
    }

    /// [`Self::set_vtl_registers`] with the index of the element that failed
    /// (the guest's rep count): every element is checked first; with
    /// `prefix` the elements before a refused one are written (a guest's rep
    /// call), without it none is (the host's batch). The special registers
    /// are loaded together, so a context's registers may come in any order.
    /// The registers the VTLs share go to the running vCPU.
    pub(crate) fn set_vtl_registers_at(
        &mut self,
        vtl: Vtl,
        values: &[(HvRegisterName, HvRegisterValue)],
        prefix: bool,
    ) -> Result<(), (usize, AccessError<VpError>)> {
        let vendor = self.shared.vendor;
        let refused = values.iter().enumerate().find_map(|(i, &(n, v))| {
            hv_regs::validate_for(n, v, vendor)
                .err()
                .map(|f| (i, AccessError::Fault(f)))
        });
        let upto = match &refused {
            Some(_) if !prefix => 0,
            Some((i, _)) => *i,
            None => values.len(),
        };
        let values = &values[..upto];
        if vtl == self.vtl {
            let regs = self.regs();
            hv_regs::set_registers(&regs, values)?;
        } else {
            let (shared, private): (Vec<_>, Vec<_>) =
                (0..values.len()).partition(|&i| crate::vsm::shared_across_vtls(values[i].0));
            let pick = |idx: &[usize]| idx.iter().map(|&i| values[i]).collect::<Vec<_>>();
            let no_vcpu = (
                0,
                AccessError::Backend(VpError::Status(HvError::INVALID_VTL_STATE)),
            );
            let regs = self.regs_of(vtl).ok_or(no_vcpu)?;
            hv_regs::set_registers(&regs, &pick(&private)).map_err(|(i, e)| (private[i], e))?;
            let regs = self.regs();
            hv_regs::set_registers(&regs, &pick(&shared)).map_err(|(i, e)| (shared[i], e))?;
        }
        if values
            .iter()
            .any(|&(n, _)| n == HvRegisterName::VSM_PARTITION_CONFIG)
        {
            // A new DefaultVtlProtectionMask reaches the lower VTLs' memory.
            let e = |s| {
                (
                    upto.saturating_sub(1),
                    AccessError::Backend(VpError::Status(s)),
                )
            };
            self.partition.apply_default_protection(vtl).map_err(e)?;
        }
        match refused {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }

    /// Reads registers by HV name (HvGetVpRegisters, as the host calls it): a
    /// name the TLFS refuses is [`VpError::Status`], a KVM failure
    /// [`VpError::Kvm`] with its source.
    pub fn get_registers(
        &mut self,
        names: &[HvRegisterName],
    ) -> Result<Vec<HvRegisterValue>, VpError> {
        self.get_vtl_registers(self.vtl, names)
    }

    /// Writes registers by HV name (HvSetVpRegisters, as the host calls it) as one
    /// batch: all are validated before any is written, and KVM checks the
    /// combined state (see [`hv_regs::set_registers`]). A value the TLFS refuses
    /// is [`VpError::Status`]; one KVM refuses, or any other KVM failure,
    /// [`VpError::Kvm`] with its source.
    pub fn set_registers(
        &mut self,
        values: &[(HvRegisterName, HvRegisterValue)],
    ) -> Result<(), VpError> {
        self.set_vtl_registers(self.vtl, values)
    }

    /// Runs the VP until an exit the host must handle (WHvRunVirtualProcessor).
    ///
    /// Handled here and not returned: hypercalls through the hypercall page,
    /// synthetic MSR accesses, contexts handed over by StartVirtualProcessor, and
    /// waits while the VP is suspended. [`VpExit::Canceled`] is returned only for
    /// [`Partition::cancel_run`]. The VTL an exit came from is
    /// [`Partition::active_vtl`] while the exit is held (VTL calls and
    /// returns switch the VP's vCPU inside this call).
    pub fn run(&mut self) -> VpExit<'_> {
        let mut this = self;
        loop {
            if let Some(exit) = this.before_run() {
                return exit;
            }
            // The exit borrows the vCPU: it is either returned to the caller or
            // dropped, leaving only owned follow-up work (polonius-the-crab lets
            // stable Rust express the conditional return of the borrow).
            let next: Next = polonius!(|this| -> VpExit<'polonius> {
                let start = Instant::now();
                let result = this.vcpu.run();
                let elapsed = start.elapsed();
                leave_run(&mut this.sync, &mut this.synced, &this.shared);
                let mut exit = decode(result);
                this.partition.stats.record_exit(&exit, elapsed);
                let hyperv = this.partition.config.hyperv.is_some();
                let refused = if let VpExit::MemoryAccess { gpa, access } = &exit {
                    let (kind, data) = match access {
                        Access::Write(d) => (AccessKind::Write, &d[..]),
                        Access::Read(_) => (AccessKind::Read, &[][..]),
                    };
                    this.partition.refused_by(this.vtl, *gpa, kind).map(|by| {
                        let mut v = Violation {
                            gpa: *gpa,
                            kind,
                            data: [0; 8],
                            len: data.len().min(8),
                        };
                        v.data[..v.len].copy_from_slice(&data[..v.len]);
                        (v, by)
                    })
                } else {
                    None
                };
                let mut msr_served = false;
                if let VpExit::MsrAccess(m) = &mut exit {
                    msr_served = this.partition.handle_msr(this.shared.index, m) == Handled::Served;
                }
                match &mut exit {
                    _ if refused.is_some() => {
                        let (v, by) = refused.unwrap_or_else(|| unreachable!());
                        Next::Intercept(v, by)
                    }
                    VpExit::InternalError if this.partition.restricted(this.vtl) => {
                        Next::CheckFetch
                    }
                    // Any write to the trap port: the hypercall page's own is 4
                    // bytes in 32- and 64-bit code, 2 bytes in real mode.
                    VpExit::IoPortAccess {
                        port: HYPERCALL_PORT,
                        access: Access::Write(d),
                    } if hyperv => {
                        let n = d.len().min(4);
                        let mut b = [0u8; 4];
                        b[..n].copy_from_slice(&d[..n]);
                        Next::TrapPort(b, n)
                    }
                    VpExit::MemoryAccess {
                        gpa,
                        access: Access::Write(_),
                    } if this.partition.hypercall_overlay_of(this.vtl) == Some(*gpa & !0xFFF) => {
                        Next::OverlayWrite(*gpa)
                    }
                    VpExit::MsrAccess(_) if msr_served => Next::Continue,
                    VpExit::MsrAccess(m) if this.mtrrs_shared && crate::mtrr::is_mtrr(m.index) => {
                        match m.written {
                            Some(v) => Next::MtrrWrite(m.index, v),
                            None => {
                                // Reads are not filtered; not expected.
                                *m.error = 1;
                                Next::Continue
                            }
                        }
                    }
                    VpExit::Canceled => {
                        let mut g = this.shared.lock();
                        if g.cancel {
                            g.cancel = false;
                            polonius_return!(VpExit::Canceled);
                        }
                        Next::Continue
                    }
                    VpExit::MemoryAccess { .. }
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
                    | VpExit::Debug(_)
                    | VpExit::KvmHypercall { .. }
                    | VpExit::Nmi
                    | VpExit::Hyperv
                    | VpExit::Other { .. }
                    | VpExit::RunFailed { .. } => polonius_return!(exit),
                }
            });
            match next {
                Next::TrapPort(bytes, len) => {
                    if this.serve_trap_port() == Handled::NotMine {
                        this.port_write = bytes;
                        return VpExit::IoPortAccess {
                            port: HYPERCALL_PORT,
                            access: Access::Write(&this.port_write[..len]),
                        };
                    }
                }
                Next::OverlayWrite(gpa) => {
                    this.serve_memory_write(gpa);
                }
                Next::MtrrWrite(index, value) => {
                    if !this.share_mtrr_write(index, value) {
                        this.refuse_msr_exit();
                    }
                }
                Next::Intercept(v, by) => this.intercept(v, by),
                Next::CheckFetch => match this.refused_fetch() {
                    Some((v, by)) => this.intercept(v, by),
                    None => return VpExit::InternalError,
                },
                Next::Continue => {}
            }
        }
    }

    /// For a VMM that runs the vCPU in its own loop: call before each `KVM_RUN`
    /// on [`Self::vcpu_for_run`]. It loads a context a start handed over, waits
    /// while the VP is suspended, and returns `Some(exit)` (canceled) if the VP
    /// must not run now. Pair it with [`Self::finish_run`] after `KVM_RUN`.
    ///
    /// ```no_run
    /// # fn vmm_loop(mut vp: hv_partition::Vp) {
    /// use exit_decoder::{decode, VpExit};
    /// use hv_partition::{hyperv::HYPERCALL_PORT, Handled};
    /// loop {
    ///     if vp.prepare_run().is_some() {
    ///         break; // canceled
    ///     }
    ///     let partition = vp.partition().clone();
    ///     let index = vp.index();
    ///     let trap = match decode(vp.vcpu_for_run().run()) {
    ///         VpExit::IoPortAccess { port: HYPERCALL_PORT, .. } => true,
    ///         VpExit::MsrAccess(mut m) => {
    ///             if partition.handle_msr(index, &mut m) == Handled::NotMine {
    ///                 *m.error = 1; // the VMM's own MSRs would go here
    ///             }
    ///             false
    ///         }
    ///         VpExit::MemoryAccess { gpa, access: exit_decoder::Access::Write(_) } => {
    ///             let _ = gpa; // after the borrow: vp.serve_memory_write(gpa)
    ///             false
    ///         }
    ///         _ => false, // the VMM's devices
    ///     };
    ///     vp.finish_run();
    ///     if trap && vp.serve_trap_port() == Handled::NotMine {
    ///         // a plain port write to the trap port: the VMM's
    ///     }
    /// }
    /// # }
    /// ```
    pub fn prepare_run(&mut self) -> Option<VpExit<'static>> {
        self.before_run()
    }

    /// The vCPU, for the `KVM_RUN` of a VMM's own loop (between
    /// [`Self::prepare_run`] and [`Self::finish_run`]). Unlike [`Self::vcpu_mut`]
    /// it leaves a pending hypercall result in the synced registers, where
    /// `KVM_RUN` loads it.
    pub fn vcpu_for_run(&mut self) -> &mut VcpuFd {
        &mut self.vcpu
    }

    /// For a VMM that runs the vCPU in its own loop: call after each `KVM_RUN`.
    pub fn finish_run(&mut self) {
        leave_run(&mut self.sync, &mut self.synced, &self.shared);
    }

    /// For a VMM that runs the vCPU in its own loop: after an exit that wrote to
    /// [`crate::hyperv::HYPERCALL_PORT`] (once the exit's borrow has ended). A hypercall
    /// from the hypercall page is served (its result loads on the next
    /// `KVM_RUN`) and one from an illegal mode gets #UD: [`Handled::Served`]. A
    /// write from anywhere else is [`Handled::NotMine`]: plain port I/O.
    pub fn serve_trap_port(&mut self) -> Handled {
        if self.partition.config.hyperv.is_none() {
            return Handled::NotMine;
        }
        match self.trap() {
            Trap::Serve(mode) => self.handle_hypercall(mode),
            Trap::Undefined => self.inject_exception(VECTOR_UD, None),
            Trap::PortIo => return Handled::NotMine,
        }
        Handled::Served
    }

    /// For a VMM that runs the vCPU in its own loop: after an MMIO write exit at
    /// `gpa` (once the exit's borrow has ended). A write to the hypercall overlay
    /// page gets #GP (TLFS: the page is not writable; KVM has retired the write
    /// when it reports it, so the #GP is taken after the writing instruction):
    /// [`Handled::Served`]. Any other GPA is [`Handled::NotMine`].
    pub fn serve_memory_write(&mut self, gpa: u64) -> Handled {
        if self.partition.hypercall_overlay_of(self.vtl) != Some(gpa & !0xFFF) {
            return Handled::NotMine;
        }
        self.inject_exception(VECTOR_GP, Some(0));
        Handled::Served
    }

    /// Serves requests and waits until the VP may enter KVM_RUN. `Some(exit)` if
    /// the run ends before entering the guest.
    fn before_run(&mut self) -> Option<VpExit<'static>> {
        if self.sync == SyncDirty::Consumed {
            self.vcpu.clear_sync_dirty_reg(SyncReg::Register);
            self.vcpu.clear_sync_dirty_reg(SyncReg::SystemRegister);
            self.sync = SyncDirty::Clean;
            self.sregs_armed = false;
        }
        loop {
            let mut g = self.shared.lock();
            if g.cancel {
                g.cancel = false;
                return Some(VpExit::Canceled);
            }
            if !g.new_vtls.is_empty() {
                let new = std::mem::take(&mut g.new_vtls);
                drop(g);
                self.take_vtl_vcpus(new);
                continue;
            }
            if let Some(target) = g.pending_entry.take() {
                drop(g);
                if target > self.vtl && self.parked[target.0 as usize].is_some() {
                    // A message for a higher VTL preempts the running one,
                    // whatever its RFLAGS.IF (TLFS "Virtual Interrupts").
                    if let Err(e) =
                        self.switch_to(crate::vsm::Switch::Interrupt, target, false, true)
                    {
                        log::error!(
                            "VP {}: entry of VTL {} failed: {e}",
                            self.index().0,
                            target.0
                        );
                    }
                }
                continue;
            }
            if let Some((vtl, ctx)) = g.pending_start.take() {
                drop(g);
                let loaded = self
                    .activate_for_start(vtl)
                    .and_then(|()| self.load_start_context(&ctx));
                if let Err(e) = loaded {
                    log::error!("VP {}: cannot load its start context: {e}", self.index().0);
                    let errno = match e {
                        VpError::Kvm { source, .. } => source.errno(),
                        // The start checked the context; not expected.
                        VpError::Status(_) => EINVAL,
                    };
                    return Some(VpExit::RunFailed { errno });
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
            if g.state.suspended() || g.run.paused() {
                drop(self.shared.gate.wait(g));
                continue;
            }
            match g.state.enter_run() {
                Ok(s) => {
                    g.state = s;
                    // Not paused (checked under this lock): always marked.
                    let entered = self.shared.gate.enter(&mut g);
                    debug_assert!(entered);
                    return None;
                }
                Err(_) => return Some(VpExit::RunFailed { errno: EBUSY }),
            }
        }
    }

    /// Loads a start context: the GPRs and special registers through `kvm_run`'s
    /// synced copy, which the next KVM_RUN applies, so a start costs the
    /// target a KVM_SET_MSRS (PAT) and a KVM_SET_MP_STATE besides its KVM_RUN
    /// (it was five ioctls). Before the first run the special
    /// registers the context leaves alone are read with KVM_GET_SREGS.
    fn load_start_context(&mut self, ctx: &InitialVpContext) -> Result<(), VpError> {
        self.flush_sync_regs();
        let valid = self.vcpu.get_kvm_run().kvm_valid_regs;
        let sync_both = (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS) as u64;
        let base = if self.synced && valid & sync_both == sync_both {
            self.vcpu.sync_regs().sregs
        } else {
            kvm("KVM_GET_SREGS", self.vcpu.get_sregs())?
        };
        let k = context_on(&self.vcpu, self.shared.vendor, ctx, &base)?;
        if valid & sync_both == sync_both {
            let synced = self.vcpu.sync_regs_mut();
            synced.regs = k.regs;
            synced.sregs = k.sregs;
            self.vcpu.set_sync_dirty_reg(SyncReg::Register);
            self.vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
            self.sync = SyncDirty::Armed;
            self.sregs_armed = true;
        } else {
            kvm("KVM_SET_SREGS", self.vcpu.set_sregs(&k.sregs))?;
            kvm("KVM_SET_REGS", self.vcpu.set_regs(&k.regs))?;
        }
        Ok(())
    }

    /// Writes the hypercall result value into RAX (a 64-bit caller) or EDX:EAX (a
    /// 32-bit caller) through the synced registers, which KVM loads on the next
    /// entry. If the call wrote the caller's own GPRs with KVM_SET_REGS
    /// (HvCallSetVpRegisters), the exit-time copy is stale and the registers are
    /// read back first, so those writes are kept.
    pub(crate) fn set_result(&mut self, result: u64, mode: CallerMode) {
        let mut regs = self.synced_regs();
        if self.wrote_regs.replace(false) {
            if let Ok(r) = self.vcpu.get_regs() {
                regs = r;
            }
        }
        mode.write_result(&mut regs, result);
        self.vcpu.sync_regs_mut().regs = regs;
        self.vcpu.set_sync_dirty_reg(SyncReg::Register);
        self.sync = SyncDirty::Armed;
    }

    pub(crate) fn synced_regs(&self) -> kvm_regs {
        exit_decoder::sync_regs(&self.vcpu)
    }

    /// Classifies a write to the trap port from the registers KVM synced at the
    /// exit: served only when it is the first instruction of the enabled
    /// hypercall page (so the guest OS id is set: clearing it disables the page)
    /// executed at CPL 0 in protected mode.
    fn trap(&self) -> Trap {
        let Some(page) = self.partition.hypercall_overlay_of(self.vtl) else {
            return Trap::PortIo;
        };
        let sync = self.vcpu.sync_regs();
        let (regs, sregs) = (sync.regs, sync.sregs);
        let linear = crate::rewind::linear_ip(&sregs, regs.rip);
        let gpa = if sregs.cr0 & CR0_PG != 0 {
            let paging = [sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer];
            let linear_page = linear & !0xFFF;
            match self.page_translation.get() {
                Some(t) if t.paging == paging && t.linear_page == linear_page => {
                    t.gpa_page | (linear & 0xFFF)
                }
                _ => match self.vcpu.translate_gva(linear) {
                    Ok(t) if t.valid != 0 => {
                        self.page_translation.set(Some(PageTranslation {
                            paging,
                            linear_page,
                            gpa_page: t.physical_address & !0xFFF,
                        }));
                        t.physical_address
                    }
                    _ => return Trap::PortIo,
                },
            }
        } else {
            linear
        };
        // KVM reports the OUT's own RIP, or (PVM) the RIP after it: the offset
        // of one of the page's 2-byte OUTs, or 2 past it.
        let at = gpa.wrapping_sub(page);
        if !crate::hyperv::TRAP_OFFSETS
            .iter()
            .any(|&o| at == o || at == o + 2)
        {
            return Trap::PortIo;
        }
        match CallerMode::of(&regs, &sregs) {
            CallerMode::Illegal => Trap::Undefined,
            mode @ (CallerMode::Long | CallerMode::Protected) => Trap::Serve(mode),
        }
    }

    /// Injects exception `vector` (with `error_code` if it has one) into the
    /// guest on the next entry. A host refusal is logged; the guest then resumes
    /// without it.
    pub(crate) fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        let r = self.vcpu.get_vcpu_events().and_then(|mut ev| {
            ev.exception.injected = 1;
            ev.exception.nr = vector;
            ev.exception.has_error_code = error_code.is_some() as u8;
            ev.exception.error_code = error_code.unwrap_or(0);
            self.vcpu.set_vcpu_events(&ev)
        });
        if let Err(e) = r {
            log::error!(
                "VP {}: cannot inject exception {vector}: {e}",
                self.index().0
            );
        }
    }

    pub(crate) fn shared(&self) -> &Arc<VpShared> {
        &self.shared
    }
}
