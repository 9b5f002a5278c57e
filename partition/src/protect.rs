//! VTL memory protections (TLFS "Virtual Secure Mode", "Memory Access
//! Protections"; HvCallModifyVtlProtectionMask): a higher VTL restricts a
//! lower VTL's access to pages of RAM, and the lower VTL's VM gets the
//! memslots that enforce it ([`crate::memview`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hv_defs::{HvError, Vtl};
use hv_hypercall::HvRepResult;

use crate::memview::{Access, AccessKind, Protections, ViewError};
use crate::overlay::PAGE;
use crate::partition::Partition;
use crate::run_state::pause;
use crate::shared::VpShared;
use crate::vtl::VtlSpace;

impl Partition {
    /// Applies `flags` (HV_MAP_GPA_FLAGS) for `by` to `target`'s access to
    /// each page of `pages` (GPA page numbers), once the caller's checks
    /// passed (`by` above `target`, protections enabled). In the TLFS
    /// order: flags no memslot can give, `HV_STATUS_INVALID_PARAMETER` (no
    /// page done); a page that is not RAM, `HV_STATUS_INVALID_PARAMETER`
    /// after the pages before it are done; more memslots than KVM has,
    /// `HV_STATUS_INSUFFICIENT_MEMORY` with nothing changed.
    pub(crate) fn modify_protection(
        &self,
        by: Vtl,
        target: Vtl,
        flags: u32,
        pages: &[u64],
    ) -> HvRepResult {
        let access = Access::from_map_flags(flags).ok_or((HvError::INVALID_PARAMETER, 0))?;
        let space = self
            .space_for_protection(target)
            .ok_or((HvError::INVALID_VTL_STATE, 0))?;
        let view = space.view();
        let valid = pages
            .iter()
            .take_while(|&&p| p < self.gpa_limit() / PAGE && view.is_ram(p * PAGE))
            .count();
        let mut protections = view.protections(by).clone();
        drop(view);
        for &page in &pages[..valid] {
            protections.set(page, access);
        }
        self.reshape(space, by, protections)
            .map_err(|_| (HvError::INSUFFICIENT_MEMORY, 0))?;
        if valid < pages.len() {
            log::debug!(
                "VTL {} protection: GPA page {:#x} is not RAM",
                by.0,
                pages[valid]
            );
            return Err((HvError::INVALID_PARAMETER, valid));
        }
        Ok(())
    }

    /// Gives every lower VTL's memory the default access `by` configured
    /// (VsmPartitionConfig.DefaultVtlProtectionMask once EnableVtlProtection
    /// is set), after a write of that register. Nothing to do when it is
    /// unchanged.
    pub(crate) fn apply_default_protection(&self, by: Vtl) -> Result<(), HvError> {
        let default = self.vsm.default_access(by);
        for lower in 0..by.0 {
            let Some(space) = self.space(Vtl(lower)) else {
                continue;
            };
            let mut p = space.view().protections(by).clone();
            if p.default == default {
                continue;
            }
            p.default = default;
            // Pages set to the new default are no longer exceptions.
            p.pages.retain(|_, a| *a != default);
            self.reshape(space, by, p)
                .map_err(|_| HvError::INSUFFICIENT_MEMORY)?;
        }
        Ok(())
    }

    /// The VTL whose protection refuses a `kind` access by `vtl` to `gpa`,
    /// if one does (RAM only: a GPA that is not RAM is the VMM's).
    pub(crate) fn refused_by(&self, vtl: Vtl, gpa: u64, kind: AccessKind) -> Option<Vtl> {
        let space = self.space(vtl)?;
        if !space.restricted.load(Ordering::Acquire) {
            return None;
        }
        let view = space.view();
        if !view.is_ram(gpa) || view.overlay_at() == Some(gpa & !(PAGE - 1)) {
            return None;
        }
        match view.access(gpa / PAGE) {
            (a, Some(by)) if !a.allows(kind) => Some(by),
            _ => None,
        }
    }

    /// Whether a higher VTL restricts any page of `vtl`'s memory.
    pub(crate) fn restricted(&self, vtl: Vtl) -> bool {
        self.space(vtl)
            .is_some_and(|s| s.restricted.load(Ordering::Acquire))
    }

    /// Whether `vtl` may make a `kind` access to `len` bytes at `gpa`, for
    /// the VMM's own accesses on its behalf (hypercall parameters, device
    /// memory): every page they touch must allow it.
    pub fn vtl_may_access(&self, vtl: Vtl, gpa: u64, len: u64, write: bool) -> bool {
        let kind = if write {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        let Some(space) = self.space(vtl) else {
            // No VM yet (VTL 0 of a partition booted above it): only the
            // higher VTLs' default masks can apply.
            return (vtl.0 + 1..=Vtl::MAX_X64.0)
                .all(|by| self.vsm.default_access(Vtl(by)).allows(kind));
        };
        if !space.restricted.load(Ordering::Acquire) || len == 0 {
            return true;
        }
        let view = space.view();
        let (first, last) = (gpa / PAGE, gpa.saturating_add(len - 1) / PAGE);
        (first..=last).all(|p| view.access(p).0.allows(kind))
    }

    /// The space of `target`, made now if it is VTL 0 of a partition
    /// booted above it.
    fn space_for_protection(&self, target: Vtl) -> Option<&VtlSpace> {
        if self.space(target).is_none() && target == Vtl::VTL0 {
            if let Err(e) = self.ensure_vtl0_space() {
                log::error!("cannot make VTL 0's VM: {e}");
            }
        }
        self.space(target)
    }

    /// Sets `by`'s protections of `space`'s memory with every VP held out of
    /// KVM_RUN while the slots change (as for the hypercall overlay).
    fn reshape(
        &self,
        space: &VtlSpace,
        by: Vtl,
        protections: Protections,
    ) -> Result<(), ViewError> {
        let vps: Vec<Arc<VpShared>> = (0..self.config.max_vps)
            .filter_map(|i| self.existing_vp(hv_defs::VpIndex(i)))
            .collect();
        for vp in &vps {
            vp.gate.leave_if_current();
        }
        // VPs first, then the view: a VP thread may hold its own lock while
        // it asks the view (vtl_may_access).
        let paused = pause(vps.iter().map(|vp| &vp.gate).collect());
        let mut view = space.view();
        let r = view.set_protections(&*space.vm, by, protections);
        space.restricted.store(view.restricted(), Ordering::Release);
        drop(view);
        drop(paused);
        if let Err(e) = &r {
            log::warn!("VTL {} protections not applied: {e}", by.0);
        }
        r
    }
}
