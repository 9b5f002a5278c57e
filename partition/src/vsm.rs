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

use std::time::Instant;

use hv_defs::vsm::{assist, VtlEntryReason, VTL_RETURN_FAST};
use hv_defs::Vtl;
use kvm_bindings::KVM_VCPUEVENT_VALID_SMM;
use vm_memory::{Bytes, GuestAddress};

use crate::error::VpError;
use crate::shared::VtlVcpu;
use crate::vp::{Parked, Vp, VECTOR_UD};

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

/// HvCallVtlCall or HvCallVtlReturn.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Switch {
    Call,
    Return,
}

const EINTR: i32 = 4;

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
            if let Some(slot) = self.parked.get_mut(vtl.0 as usize) {
                *slot = Some(Parked {
                    vcpu,
                    synced: false,
                    first_entry: Some(first_entry),
                });
            }
        }
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
        self.swap_in(vtl, next);
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
            Switch::Call => (state.vtl_call_target(), control),
            Switch::Return => (state.vtl_return_target(), control & !VTL_RETURN_FAST),
        };
        self.take_vtl_vcpus(new);
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
        if let Err(e) = self.switch_to(kind, target, control & VTL_RETURN_FAST != 0) {
            log::error!(
                "VP {}: VTL {kind:?} to VTL {} failed: {e}",
                self.index().0,
                target.0
            );
        }
    }

    fn switch_to(&mut self, kind: Switch, target: Vtl, fast: bool) -> Result<(), VpError> {
        let from = self.vtl;
        let kvm = VpError::kvm;
        let start = Instant::now();
        // The trapping OUT is completed on the caller's vCPU (RIP moves past
        // it, to the stub's RET) without running a further instruction.
        self.complete_pending_exit()?;
        let completed = Instant::now();
        let cur = self.vcpu_mut();
        let regs = cur.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let cr2 = cur.get_sregs().map_err(kvm("KVM_GET_SREGS"))?.cr2;
        let debug = cur.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        let xsave = cur.get_xsave().ok();
        let fpu = match xsave {
            Some(_) => None,
            None => Some(cur.get_fpu().map_err(kvm("KVM_GET_FPU"))?),
        };
        let xcrs = cur.get_xcrs().ok();
        let mut next = self.parked[target.0 as usize]
            .take()
            .ok_or(hv_defs::HvError::INVALID_VP_STATE)?;
        let loaded = (|| {
            let v = &next.vcpu;
            let (mut tregs, mut tsregs) = match next.first_entry {
                Some(ctx) => {
                    // The VTL's first entry: its EnableVpVtl context over the
                    // vCPU's reset state.
                    let base = v.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
                    let k = crate::vp::context_on(v, self.shared().vendor, &ctx, &base)?;
                    (k.regs, k.sregs)
                }
                None => (
                    v.get_regs().map_err(kvm("KVM_GET_REGS"))?,
                    v.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
                ),
            };
            let (rsp, rip, rflags) = (tregs.rsp, tregs.rip, tregs.rflags);
            tregs = regs;
            tregs.rsp = rsp;
            tregs.rip = rip;
            tregs.rflags = rflags;
            if kind == Switch::Return && !fast {
                // A non-fast return: the lower VTL's RAX and RCX from the
                // returning VTL's control area (TLFS HvCallVtlReturn).
                if let Some(page) = self.assist_page(from) {
                    let mem = self.partition().memory();
                    let rd = |off| mem.read_obj::<u64>(GuestAddress(page + off)).ok();
                    if let (Some(rax), Some(rcx)) = (
                        rd(assist::VTL_RETURN_X64_RAX),
                        rd(assist::VTL_RETURN_X64_RCX),
                    ) {
                        tregs.rax = rax;
                        tregs.rcx = rcx;
                    }
                }
            }
            // KVM_SET_SREGS resets the MMU: only for a first entry or a CR2
            // the other VTL changed.
            if next.first_entry.is_some() || tsregs.cr2 != cr2 {
                tsregs.cr2 = cr2;
                v.set_sregs(&tsregs).map_err(kvm("KVM_SET_SREGS"))?;
            }
            v.set_regs(&tregs).map_err(kvm("KVM_SET_REGS"))?;
            let mut d = v.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
            if d.db != debug.db {
                d.db = debug.db;
                v.set_debug_regs(&d).map_err(kvm("KVM_SET_DEBUGREGS"))?;
            }
            match (&xsave, &fpu) {
                (Some(x), _) => {
                    // SAFETY: `x` was read by KVM_GET_XSAVE from a vCPU with
                    // the same CPUID, so its layout is the one KVM expects.
                    unsafe { v.set_xsave(x) }.map_err(kvm("KVM_SET_XSAVE"))?
                }
                (None, Some(f)) => v.set_fpu(f).map_err(kvm("KVM_SET_FPU"))?,
                (None, None) => {}
            }
            if let Some(x) = &xcrs {
                v.set_xcrs(x).map_err(kvm("KVM_SET_XCRS"))?;
            }
            if kind == Switch::Return {
                drop_latched_init(v, self.index().0, target)?;
            }
            Ok::<_, VpError>(())
        })();
        if let Err(e) = loaded {
            self.parked[target.0 as usize] = Some(next);
            return Err(e);
        }
        next.first_entry = None;
        if kind == Switch::Return {
            self.shared().lock().release_tlb_locks(from);
        }
        if kind == Switch::Call {
            if let Some(page) = self.assist_page(target) {
                let _ = self.partition().memory().write_obj(
                    VtlEntryReason::VtlCall as u32,
                    GuestAddress(page + assist::ENTRY_REASON),
                );
            }
        }
        self.swap_in(target, next);
        self.partition()
            .stats
            .vtl_switch(completed - start, completed.elapsed());
        Ok(())
    }

    /// The GPA of `vtl`'s VP assist page, if enabled.
    fn assist_page(&self, vtl: Vtl) -> Option<u64> {
        let v = self.shared().lock().vp_assist_page[vtl.0 as usize];
        (v & 1 != 0).then_some(v & !0xFFF)
    }

    /// Re-enters KVM_RUN with `immediate_exit` set, so KVM completes the exit
    /// in flight (an OUT's RIP moves past it) and returns at once with
    /// `EINTR`, no guest instruction run. Under the VP lock, so no kick's
    /// `immediate_exit` is lost.
    fn complete_pending_exit(&mut self) -> Result<(), VpError> {
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

    /// `next` (of `vtl`) becomes the running vCPU; the one running is parked.
    fn swap_in(&mut self, vtl: Vtl, next: Parked) {
        let Parked {
            vcpu: mut incoming,
            synced,
            first_entry,
        } = next;
        let shared = self.shared().clone();
        let mut g = shared.lock();
        let outgoing_synced = self.replace_vcpu(&mut incoming, synced);
        let ptr: *mut u8 = &mut self.vcpu_for_run().get_kvm_run().immediate_exit;
        shared.gate.interrupter().set_target(ptr);
        if let Ok(s) = g.state.switch_vtl(vtl) {
            g.state = s;
        }
        drop(g);
        let from = self.vtl;
        self.parked[from.0 as usize] = Some(Parked {
            vcpu: incoming,
            synced: outgoing_synced,
            first_entry,
        });
        self.vtl = vtl;
        self.page_translation.set(None);
    }
}
