//! A VP's VTLs on its one thread (TLFS "Virtual Secure Mode", "VTL Entry and
//! Exit"): HvCallVtlCall and HvCallVtlReturn switch the VP between the vCPUs
//! it has in each enabled VTL's VM, copying only the state the VTLs share.
//!
//! Shared (copied on a switch): RAX-R15 except RSP, CR2, DR0-DR3, the x87,
//! SSE and AVX state and XCR0. Private (each vCPU keeps its own): RIP, RSP,
//! RFLAGS, the control registers, EFER, PAT, segments, descriptor tables,
//! DR6 (Dr6Shared is not offered), DR7, the SYSCALL/SYSENTER MSRs, FS/GS/
//! KERNEL_GS bases, TSC_AUX, the local APIC, and the synthetic MSRs private
//! to a VTL (kept by the partition per VTL).

use std::cell::Cell;
use std::time::Instant;

use hv_defs::vsm::{assist, VtlEntryReason, VTL_RETURN_FAST};
use hv_defs::{InitialVpContext, Vtl};
use kvm_bindings::{
    kvm_fpu, kvm_regs, kvm_sync_regs, kvm_xcrs, kvm_xsave, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS,
    KVM_VCPUEVENT_VALID_SMM,
};
use kvm_ioctls::{SyncReg, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::error::VpError;
use crate::shared::VtlVcpu;
use crate::vp::{Parked, Vp, VECTOR_UD};

/// Whether `name` is one of the registers a VP's VTLs share (TLFS "Virtual
/// Processor State Isolation"): RAX-R15 but RSP, CR2, DR0-DR3 and XCR0. There
/// is one of each per VP, so an access naming any VTL reaches the running
/// vCPU's, which holds it. (MTRRs, shared in the TLFS, are kept per VTL:
/// `choices`.)
pub(crate) fn shared_across_vtls(name: hv_regs::HvRegisterName) -> bool {
    use hv_regs::{Control, DebugRegister, Gpr, KvmRegister as K};
    match hv_regs::location(name) {
        Some(K::Gpr(Gpr::Rsp | Gpr::Rip | Gpr::Rflags)) => false,
        Some(K::Gpr(_)) => true,
        Some(K::Control(Control::Cr2)) => true,
        Some(K::Control(
            Control::Cr0
            | Control::Cr3
            | Control::Cr4
            | Control::Cr8
            | Control::Efer
            | Control::ApicBase,
        )) => false,
        Some(K::Debug(DebugRegister::Dr(_))) => true,
        Some(K::Debug(DebugRegister::Dr6 | DebugRegister::Dr7)) => false,
        Some(K::Xcr0) => true,
        Some(K::Msr(_) | K::Segment(_) | K::Table(_) | K::MpState | K::Synthetic(_)) | None => {
            false
        }
    }
}

/// An INIT (and the SIPI after it) that the VTL's in-kernel LAPIC latched
/// while the VP ran a higher VTL is dropped before the VTL resumes: "INIT and
/// SIPI aimed at a lower VTL are ignored once a higher VTL is enabled" (TLFS
/// "Virtual Secure Mode", virtual interrupts). KVM keeps a latched INIT in the
/// vCPU events' SMM block; with it cleared, the SIPI finds no INIT-received
/// state and KVM discards it. An INIT that reaches the lower VTL while it runs
/// is taken by KVM before user space sees it (a stock-KVM limit, `choices`).
fn drop_latched_init(v: &kvm_ioctls::VcpuFd, vp: u32, vtl: Vtl) -> Result<(), VpError> {
    let mut events = v
        .get_vcpu_events()
        .map_err(VpError::kvm("KVM_GET_VCPU_EVENTS"))?;
    if events.flags & KVM_VCPUEVENT_VALID_SMM == 0 || events.smi.latched_init == 0 {
        return Ok(());
    }
    events.smi.latched_init = 0;
    v.set_vcpu_events(&events)
        .map_err(VpError::kvm("KVM_SET_VCPU_EVENTS"))?;
    log::debug!(
        "VP {vp}: INIT to VTL {} dropped (a higher VTL is enabled)",
        vtl.0
    );
    Ok(())
}

/// HvCallVtlCall or HvCallVtlReturn, or an entry of a higher VTL the VP did
/// not ask for (TLFS "VTL Entry and Exit": entry reasons).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Switch {
    Call,
    Return,
    /// An interrupt (a SynIC message, an intercept on SINT0) for the higher
    /// VTL: entry reason 2.
    Interrupt,
    /// An intercept in the higher VTL's intercept page: entry reason 3.
    Intercept,
}

impl Switch {
    /// The entry reason the target VTL reads in its VP assist page, if it
    /// is entered from below.
    fn entry_reason(self) -> Option<VtlEntryReason> {
        match self {
            Switch::Call => Some(VtlEntryReason::VtlCall),
            Switch::Interrupt => Some(VtlEntryReason::Interrupt),
            Switch::Intercept => Some(VtlEntryReason::Intercept),
            Switch::Return => None,
        }
    }
}

const EINTR: i32 = 4;
/// IA32_EFER.LMA: the vCPU is in long mode.
const EFER_LMA: u64 = 1 << 10;

impl Vp {
    /// vCPUs made by HvCallEnableVpVtl for this VP (set up already), taken
    /// onto its thread.
    pub(crate) fn take_vtl_vcpus(&mut self, new: Vec<VtlVcpu>) {
        for VtlVcpu {
            vtl,
            vcpu,
            first_entry,
        } in new
        {
            self.park_new(vtl, vcpu, Some(first_entry));
        }
    }

    /// A VTL's vCPU that has never run, parked with the VP's MTRRs (the
    /// VTLs share them, `crate::mtrr`) and, for an EnableVpVtl, the context
    /// of its first entry.
    fn park_new(&mut self, vtl: Vtl, vcpu: VcpuFd, first_entry: Option<InitialVpContext>) {
        if let Err(e) = crate::mtrr::copy(self.vcpu_mut(), &vcpu) {
            log::warn!(
                "VP {}: MTRRs not copied to VTL {}: {e}",
                self.index().0,
                vtl.0
            );
        }
        if let Some(slot) = self.parked.get_mut(vtl.0 as usize) {
            *slot = Some(Parked {
                vcpu,
                synced: false,
                first_entry,
                shared_state: None,
                touched: Cell::new(false),
                page_translation: None,
            });
        }
    }

    /// In a partition booted above VTL 0, the VP's VTL 0 vCPU, made at its
    /// first use (a VTL return to it, a register access naming it), with the
    /// VP's MTRRs. Nothing to do once it exists, or in a partition booted in
    /// VTL 0.
    pub(crate) fn ensure_vtl0(&mut self) -> Result<(), VpError> {
        if self.vtl == Vtl::VTL0
            || self.parked[0].is_some()
            || self.partition().boot_vtl() == Vtl::VTL0
        {
            return Ok(());
        }
        let partition = self.partition().clone();
        let vcpu = partition.vtl0_vcpu(self.shared())?;
        log::debug!("VP {}: VTL 0 vCPU made", self.index().0);
        self.park_new(Vtl::VTL0, vcpu, None);
        Ok(())
    }

    /// Before a start context is loaded in `vtl`: that VTL's vCPU becomes the
    /// running one (a VP started in a VTL above its boot VTL, or its boot VTL
    /// after such a start). No state is carried over: the VP has not run.
    pub(crate) fn activate_for_start(&mut self, vtl: Vtl) -> Result<(), VpError> {
        if vtl == self.vtl {
            return Ok(());
        }
        let mut next = self
            .parked
            .get_mut(vtl.0 as usize)
            .and_then(Option::take)
            .ok_or(hv_defs::HvError::INVALID_VP_STATE)?;
        next.first_entry = None;
        self.swap_in(vtl, next, None, None);
        Ok(())
    }

    /// HvCallVtlCall / HvCallVtlReturn from the hypercall page: `control` is the
    /// call's control input (RCX of the caller at its CALL into the page). The
    /// TLFS #UD cases (a reserved control bit, no higher VTL enabled on the VP
    /// for a call, a return from VTL 0) raise #UD in the caller; otherwise the
    /// VP continues in the target VTL when its thread next enters KVM_RUN.
    pub(crate) fn vtl_switch(&mut self, kind: Switch, control: u64) {
        let (state, new) = {
            let mut g = self.shared().lock();
            (g.state, std::mem::take(&mut g.new_vtls))
        };
        let (target, reserved) = match kind {
            Switch::Call | Switch::Interrupt | Switch::Intercept => {
                (state.vtl_call_target(), control)
            }
            Switch::Return => (state.vtl_return_target(), control & !VTL_RETURN_FAST),
        };
        self.take_vtl_vcpus(new);
        if target == Some(Vtl::VTL0) {
            if let Err(e) = self.ensure_vtl0() {
                log::error!("VP {}: no VTL 0 vCPU: {e}", self.index().0);
            }
        }
        let target = target.filter(|t| reserved == 0 && self.parked[t.0 as usize].is_some());
        let Some(target) = target else {
            log::debug!(
                "VP {}: VTL {kind:?} from VTL {} refused (#UD)",
                self.index().0,
                self.vtl.0
            );
            self.inject_exception(VECTOR_UD, None);
            return;
        };
        if let Err(e) = self.switch_to(kind, target, control & VTL_RETURN_FAST != 0, true) {
            log::error!(
                "VP {}: VTL {kind:?} to VTL {} failed: {e}",
                self.index().0,
                target.0
            );
        }
    }

    /// Switches the VP to `target`. With `complete`, the exit in flight is
    /// completed first (a VTL call's or return's trapping OUT: RIP moves past
    /// it, to the stub's RET, without a further instruction run; KVM stores
    /// the registers in `kvm_run` as that KVM_RUN returns); without, the
    /// caller did that and left the registers to copy in `kvm_run`.
    pub(crate) fn switch_to(
        &mut self,
        kind: Switch,
        target: Vtl,
        fast: bool,
        complete: bool,
    ) -> Result<(), VpError> {
        let from = self.vtl;
        let kvm = VpError::kvm;
        let start = Instant::now();
        if complete {
            self.complete_pending_exit()?;
        }
        let completed = Instant::now();
        let cur = self.vcpu_mut();
        let (regs, cr2) = match synced_copy(cur) {
            Some(s) => (s.regs, s.sregs.cr2),
            None => (
                cur.get_regs().map_err(kvm("KVM_GET_REGS"))?,
                cur.get_sregs().map_err(kvm("KVM_GET_SREGS"))?.cr2,
            ),
        };
        let shared = SharedState::read(cur)?;
        let mut next = self.parked[target.0 as usize]
            .take()
            .ok_or(hv_defs::HvError::INVALID_VP_STATE)?;
        let (armed, sregs_armed) =
            match self.load_target(&mut next, target, kind, fast, &regs, cr2, &shared) {
                Ok(armed) => armed,
                Err(e) => {
                    next.vcpu.get_kvm_run().kvm_dirty_regs = 0;
                    self.parked[target.0 as usize] = Some(next);
                    return Err(e);
                }
            };
        next.first_entry = None;
        if kind == Switch::Return {
            self.shared().lock().release_tlb_locks(from);
        }
        if let Some(reason) = kind.entry_reason() {
            if let Some(page) = self.assist_page(target) {
                let _ = self
                    .partition()
                    .memory()
                    .write_obj(reason as u32, GuestAddress(page + assist::ENTRY_REASON));
            }
        }
        self.swap_in(target, next, Some(shared), armed.then_some(sregs_armed));
        self.partition()
            .stats
            .vtl_switch(completed - start, completed.elapsed());
        Ok(())
    }

    /// Loads the caller's shared state (`regs` but RSP, RIP and RFLAGS; `cr2`;
    /// `shared`) into the target VTL's vCPU, over the target's own private
    /// state or, at its first entry, its EnableVpVtl context. The GPRs and
    /// special registers go through the target's `kvm_run` copy where KVM
    /// syncs it (applied by its next KVM_RUN; returned: whether they are
    /// pending, and the special registers with them); what the target already
    /// holds is not loaded again.
    #[allow(clippy::too_many_arguments)]
    fn load_target(
        &self,
        next: &mut Parked,
        target: Vtl,
        kind: Switch,
        fast: bool,
        regs: &kvm_regs,
        cr2: u64,
        shared: &SharedState,
    ) -> Result<(bool, bool), VpError> {
        let kvm = VpError::kvm;
        let from = self.vtl;
        let fresh = next.synced && !next.touched.get();
        let v = &mut next.vcpu;
        let first_entry = next.first_entry;
        let (mut tregs, mut tsregs) = match (first_entry, fresh.then(|| synced_copy(v)).flatten()) {
            (Some(ctx), _) => {
                // The VTL's first entry: its EnableVpVtl context over the
                // vCPU's reset state.
                let base = v.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
                let k = crate::vp::context_on(v, self.shared().vendor, &ctx, &base)?;
                (k.regs, k.sregs)
            }
            (None, Some(s)) => (s.regs, s.sregs),
            (None, None) => (
                v.get_regs().map_err(kvm("KVM_GET_REGS"))?,
                v.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            ),
        };
        let (rsp, rip, rflags) = (tregs.rsp, tregs.rip, tregs.rflags);
        tregs = *regs;
        tregs.rsp = rsp;
        tregs.rip = rip;
        tregs.rflags = rflags;
        if kind == Switch::Return && !fast {
            // A non-fast return: the lower VTL's RAX and RCX from the
            // returning VTL's control area (TLFS HvCallVtlReturn).
            if let Some(page) = self.assist_page(from) {
                let mem = self.partition().memory();
                let rd = |off| mem.read_obj::<u64>(GuestAddress(page + off)).ok();
                let rd32 = |off| mem.read_obj::<u32>(GuestAddress(page + off)).ok();
                if tsregs.efer & EFER_LMA == 0 {
                    // A 32-bit lower VTL: VtlReturnX86Eax/Ecx/Edx.
                    if let (Some(eax), Some(ecx), Some(edx)) = (
                        rd32(assist::VTL_RETURN_X86_EAX),
                        rd32(assist::VTL_RETURN_X86_ECX),
                        rd32(assist::VTL_RETURN_X86_EDX),
                    ) {
                        tregs.rax = eax.into();
                        tregs.rcx = ecx.into();
                        tregs.rdx = edx.into();
                    }
                } else if let (Some(rax), Some(rcx)) = (
                    rd(assist::VTL_RETURN_X64_RAX),
                    rd(assist::VTL_RETURN_X64_RCX),
                ) {
                    tregs.rax = rax;
                    tregs.rcx = rcx;
                }
            }
        }
        // Loading the special registers resets KVM's MMU: only for a first
        // entry or a CR2 the other VTL changed.
        let load_sregs = first_entry.is_some() || tsregs.cr2 != cr2;
        tsregs.cr2 = cr2;
        let armed = synced_copy(v).is_some();
        if armed {
            let s = v.sync_regs_mut();
            s.regs = tregs;
            v.set_sync_dirty_reg(SyncReg::Register);
            if load_sregs {
                v.sync_regs_mut().sregs = tsregs;
                v.set_sync_dirty_reg(SyncReg::SystemRegister);
            }
        } else {
            if load_sregs {
                v.set_sregs(&tsregs).map_err(kvm("KVM_SET_SREGS"))?;
            }
            v.set_regs(&tregs).map_err(kvm("KVM_SET_REGS"))?;
        }
        let held = next.shared_state.as_ref().filter(|_| !next.touched.get());
        shared.load(v, held)?;
        if kind == Switch::Return {
            drop_latched_init(v, self.index().0, target)?;
        }
        Ok((armed, load_sregs))
    }

    /// The GPA of `vtl`'s VP assist page, if enabled.
    pub(crate) fn assist_page(&self, vtl: Vtl) -> Option<u64> {
        let v = self.shared().lock().vp_assist_page[vtl.0 as usize];
        // A page a higher VTL protects from `vtl` is not used for it.
        (v & 1 != 0)
            .then_some(v & !0xFFF)
            .filter(|&page| self.partition().vtl_may_access(vtl, page, 0x1000, true))
    }

    /// Re-enters KVM_RUN with `immediate_exit` set, so KVM completes the exit
    /// in flight (an OUT's RIP moves past it) and returns at once with
    /// `EINTR`, no guest instruction run. Under the VP lock, so no kick's
    /// `immediate_exit` is lost.
    pub(crate) fn complete_pending_exit(&mut self) -> Result<(), VpError> {
        let shared = self.shared().clone();
        let vcpu = self.vcpu_mut();
        let g = shared.lock();
        let before = vcpu.get_kvm_run().immediate_exit;
        vcpu.set_kvm_immediate_exit(1);
        let r = vcpu.run().map(|_| ());
        vcpu.set_kvm_immediate_exit(before);
        drop(g);
        match r {
            Err(e) if e.errno() != EINTR => Err(VpError::Kvm {
                what: "KVM_RUN (completion)",
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// `next` (of `vtl`) becomes the running vCPU; the one running is parked
    /// with the shared state it holds (`shared`, if read). `armed`: registers pending
    /// in the incoming `kvm_run` copy (`Some(true)`: the special registers
    /// too).
    fn swap_in(
        &mut self,
        vtl: Vtl,
        next: Parked,
        shared: Option<SharedState>,
        armed: Option<bool>,
    ) {
        let Parked {
            vcpu: mut incoming,
            synced,
            first_entry,
            shared_state: _,
            touched: _,
            page_translation,
        } = next;
        let vp = self.shared().clone();
        let mut g = vp.lock();
        let outgoing_synced = self.replace_vcpu(&mut incoming, synced);
        if let Some(sregs) = armed {
            self.arm_synced(sregs);
        }
        let ptr: *mut u8 = &mut self.vcpu_for_run().get_kvm_run().immediate_exit;
        vp.gate.interrupter().set_target(ptr);
        if let Ok(s) = g.state.switch_vtl(vtl) {
            g.state = s;
        }
        drop(g);
        let from = self.vtl;
        self.parked[from.0 as usize] = Some(Parked {
            vcpu: incoming,
            synced: outgoing_synced,
            first_entry,
            shared_state: shared,
            touched: Cell::new(false),
            page_translation: self.page_translation.replace(page_translation),
        });
        self.vtl = vtl;
    }
}

/// The registers KVM stored in `vcpu`'s `kvm_run` at its last KVM_RUN, if it
/// syncs both the GPRs and the special registers there.
fn synced_copy(vcpu: &mut VcpuFd) -> Option<kvm_sync_regs> {
    let both = (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS) as u64;
    (vcpu.get_kvm_run().kvm_valid_regs & both == both).then(|| vcpu.sync_regs())
}

/// The state a VP's VTLs share that has ioctls of its own: DR0-DR3, the x87/
/// SSE/AVX state (XSAVE, or the legacy FPU image where KVM has no XSAVE) and
/// XCR0.
#[derive(Debug)]
pub(crate) struct SharedState {
    db: [u64; 4],
    fpu: Fpu,
    xcrs: Option<kvm_xcrs>,
}

#[derive(Debug)]
enum Fpu {
    Xsave(Box<kvm_xsave>),
    Legacy(Box<kvm_fpu>),
}

impl Fpu {
    fn same(&self, other: &Fpu) -> bool {
        match (self, other) {
            (Fpu::Xsave(a), Fpu::Xsave(b)) => a.region == b.region,
            (Fpu::Legacy(a), Fpu::Legacy(b)) => a == b,
            (Fpu::Xsave(_), Fpu::Legacy(_)) | (Fpu::Legacy(_), Fpu::Xsave(_)) => false,
        }
    }
}

impl SharedState {
    fn read(vcpu: &VcpuFd) -> Result<SharedState, VpError> {
        let kvm = VpError::kvm;
        let db = vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?.db;
        let fpu = match vcpu.get_xsave() {
            Ok(x) => Fpu::Xsave(Box::new(x)),
            Err(_) => Fpu::Legacy(Box::new(vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?)),
        };
        let xcrs = vcpu.get_xcrs().ok();
        Ok(SharedState { db, fpu, xcrs })
    }

    /// Loads this state into `vcpu`, skipping what `held` (the state `vcpu`
    /// holds, if known) already has.
    fn load(&self, vcpu: &VcpuFd, held: Option<&SharedState>) -> Result<(), VpError> {
        let kvm = VpError::kvm;
        if held.map(|h| h.db) != Some(self.db) {
            let mut d = vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
            if d.db != self.db {
                d.db = self.db;
                vcpu.set_debug_regs(&d).map_err(kvm("KVM_SET_DEBUGREGS"))?;
            }
        }
        if !held.is_some_and(|h| h.fpu.same(&self.fpu)) {
            match &self.fpu {
                Fpu::Xsave(x) => {
                    // SAFETY: `x` was read by KVM_GET_XSAVE from a vCPU of the
                    // same VP, with the same CPUID, so its layout is the one
                    // KVM expects.
                    unsafe { vcpu.set_xsave(x) }.map_err(kvm("KVM_SET_XSAVE"))?
                }
                Fpu::Legacy(f) => vcpu.set_fpu(f).map_err(kvm("KVM_SET_FPU"))?,
            }
        }
        if let Some(x) = &self.xcrs {
            if held.and_then(|h| h.xcrs.as_ref()) != Some(x) {
                vcpu.set_xcrs(x).map_err(kvm("KVM_SET_XCRS"))?;
            }
        }
        Ok(())
    }
}
