//! The VTLs of a partition (TLFS "Virtual Secure Mode"): one KVM VM per
//! enabled VTL over the same guest RAM (the same host mapping), each with its
//! own memslots for its own hypercall overlay page and its own instance of the
//! synthetic MSRs that are private to a VTL. The boot VTL's VM is the
//! partition's [`crate::Partition::vm`]; a VP has one vCPU in each VTL's VM it
//! has enabled, all run by the VP's one thread ([`crate::Vp`]).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hv_defs::vsm::VsmPartitionConfig;
use hv_defs::{HvError, HvResult, Vtl};
use kvm_ioctls::VmFd;

use crate::memview::{Access, MemoryView};
use crate::overlay::Overlay;
use crate::shared::HvPartitionState;

/// No overlay page mapped (the lock-free mirror of the view's overlay).
pub(crate) const NO_OVERLAY: u64 = u64::MAX;

/// One VTL of the partition: its VM, the memslots that give its view of
/// RAM (protections by higher VTLs, its hypercall overlay page) and its
/// private synthetic MSRs.
#[derive(Debug)]
pub(crate) struct VtlSpace {
    pub vm: Arc<VmFd>,
    /// The hypercall page's memory.
    pub overlay: Overlay,
    /// The VM's memslots; the overlay's GPA is mirrored in `overlay_at`
    /// ([`NO_OVERLAY`] when unmapped) and whether any page is restricted in
    /// `restricted`, for the run loop's lock-free checks.
    pub view: Mutex<MemoryView>,
    pub overlay_at: AtomicU64,
    pub restricted: AtomicBool,
    /// HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL of this VTL.
    pub hv: Mutex<HvPartitionState>,
}

impl VtlSpace {
    pub fn new(vm: Arc<VmFd>, overlay: Overlay, view: MemoryView) -> VtlSpace {
        VtlSpace {
            vm,
            overlay,
            view: Mutex::new(view),
            overlay_at: AtomicU64::new(NO_OVERLAY),
            restricted: AtomicBool::new(false),
            hv: Mutex::new(HvPartitionState::default()),
        }
    }

    pub fn view(&self) -> MutexGuard<'_, MemoryView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The GPA of the hypercall overlay page while this VTL has it enabled.
    pub fn overlay_at(&self) -> Option<u64> {
        match self.overlay_at.load(Ordering::Acquire) {
            NO_OVERLAY => None,
            gpa => Some(gpa),
        }
    }

    pub fn hv(&self) -> MutexGuard<'_, HvPartitionState> {
        self.hv.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The partition-wide VSM state every VP reads (HvRegisterVsmPartitionStatus).
#[derive(Debug)]
pub(crate) struct VsmShared {
    /// The highest VTL the partition may enable.
    pub max_vtl: Vtl,
    /// EnabledVtlSet: bit n for VTL n.
    enabled: AtomicU16,
    /// HvRegisterVsmPartitionConfig of each VTL above 0 (index: VTL).
    config: Mutex<[u64; 3]>,
}

impl VsmShared {
    pub fn new(max_vtl: Vtl, enabled: u16) -> Arc<VsmShared> {
        Arc::new(VsmShared {
            max_vtl,
            enabled: AtomicU16::new(enabled),
            config: Mutex::new([0; 3]),
        })
    }

    pub fn enabled(&self) -> u16 {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn mark_enabled(&self, vtl: Vtl) {
        self.enabled.fetch_or(1 << vtl.0, Ordering::AcqRel);
    }

    /// `vtl`'s instance of HvRegisterVsmPartitionConfig.
    pub fn config(&self, vtl: Vtl) -> HvResult<u64> {
        let i = self.config_instance(vtl)?;
        Ok(self.configs()[i])
    }

    /// Writes `vtl`'s instance of HvRegisterVsmPartitionConfig (reserved bits
    /// already refused), with the TLFS rules ("Partition Configuration"):
    /// EnableVtlProtection is write-once and DefaultVtlProtectionMask fixed
    /// once protections are enabled. What this crate cannot honour is
    /// `HV_STATUS_INVALID_REGISTER_VALUE` ([`crate::choices`]):
    /// DenyLowerVtlStartup and InterceptVpStartup, and a default mask a
    /// memslot cannot give ([`Access::from_map_flags`]). The partition
    /// applies the default mask to the lower VTLs' memory afterwards.
    pub fn set_config(&self, vtl: Vtl, value: u64) -> HvResult<()> {
        let i = self.config_instance(vtl)?;
        let mut configs = self.configs();
        let (old, new) = (VsmPartitionConfig(configs[i]), VsmPartitionConfig(value));
        let unsupported =
            VsmPartitionConfig::DENY_LOWER_VTL_STARTUP | VsmPartitionConfig::INTERCEPT_VP_STARTUP;
        let refused = value & unsupported != 0
            || (old.enable_vtl_protection()
                && (!new.enable_vtl_protection()
                    || new.default_protection_mask() != old.default_protection_mask()))
            || Access::from_map_flags(new.default_protection_mask().into()).is_none();
        if refused {
            return Err(HvError::INVALID_REGISTER_VALUE);
        }
        configs[i] = value;
        Ok(())
    }

    /// The default access `vtl` gives lower VTLs' pages: its
    /// DefaultVtlProtectionMask once EnableVtlProtection is set, full access
    /// before.
    pub fn default_access(&self, vtl: Vtl) -> Access {
        let c = VsmPartitionConfig(self.config(vtl).unwrap_or(0));
        if !c.enable_vtl_protection() {
            return Access::Full;
        }
        Access::from_map_flags(c.default_protection_mask().into()).unwrap_or(Access::Full)
    }

    /// Whether `vtl` enabled protections (EnableVtlProtection).
    pub fn protection_enabled(&self, vtl: Vtl) -> bool {
        VsmPartitionConfig(self.config(vtl).unwrap_or(0)).enable_vtl_protection()
    }

    /// Whether `vtl` takes its memory intercepts in its VP assist page
    /// (InterceptPage).
    pub fn intercept_page(&self, vtl: Vtl) -> bool {
        self.config(vtl).unwrap_or(0) & VsmPartitionConfig::INTERCEPT_PAGE != 0
    }

    /// One instance per VTL above 0 (`HV_STATUS_INVALID_PARAMETER` for VTL 0),
    /// for an enabled VTL (`HV_STATUS_INVALID_VTL_STATE` otherwise).
    fn config_instance(&self, vtl: Vtl) -> HvResult<usize> {
        if vtl == Vtl::VTL0 || vtl > Vtl::MAX_X64 {
            return Err(HvError::INVALID_PARAMETER);
        }
        if self.enabled() & (1 << vtl.0) == 0 {
            return Err(HvError::INVALID_VTL_STATE);
        }
        Ok(vtl.0 as usize)
    }

    fn configs(&self) -> MutexGuard<'_, [u64; 3]> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// HvRegisterVsmPartitionStatus.
    pub fn status(&self) -> u64 {
        hv_defs::vsm::VsmPartitionStatus::new(self.enabled(), self.max_vtl).0
    }
}

/// HvRegisterVsmCapabilities as this crate offers them: DR6 is private per
/// VTL (Dr6Shared clear), no MBEC (stock KVM cannot express it), no intercept
/// page and no return actions yet.
pub(crate) const VSM_CAPABILITIES: u64 = hv_defs::vsm::VsmCapabilities::INTERCEPT_PAGE_AVAILABLE;

#[cfg(test)]
mod tests {
    use super::*;

    /// TLFS "Partition Configuration", without KVM.
    #[test]
    fn partition_config_instances_and_write_rules() {
        let vsm = VsmShared::new(Vtl::VTL2, 0b011);
        // One instance per VTL above 0, of an enabled VTL.
        assert_eq!(vsm.config(Vtl::VTL0), Err(HvError::INVALID_PARAMETER));
        assert_eq!(vsm.config(Vtl(3)), Err(HvError::INVALID_PARAMETER));
        assert_eq!(vsm.config(Vtl::VTL2), Err(HvError::INVALID_VTL_STATE));
        assert_eq!(
            vsm.set_config(Vtl::VTL2, 0),
            Err(HvError::INVALID_VTL_STATE)
        );
        assert_eq!(vsm.config(Vtl::VTL1), Ok(0));
        let bad = HvError::INVALID_REGISTER_VALUE;
        // Default masks a memslot cannot give (R without X, RW without X),
        // with or without protection.
        for v in [
            0x1 | (0b0011 << 1),
            0b0001 << 1,
            0b0011 << 1,
            0x1 | (0b1001 << 1),
        ] {
            assert_eq!(vsm.set_config(Vtl::VTL1, v), Err(bad), "{v:#x}");
        }
        // No access and read+execute are masks a memslot gives.
        let other = VsmShared::new(Vtl::VTL2, 0b111);
        assert_eq!(other.set_config(Vtl::VTL1, 0x1), Ok(()));
        assert_eq!(other.default_access(Vtl::VTL1), Access::None);
        assert_eq!(other.set_config(Vtl::VTL2, 0x1 | (0b0101 << 1)), Ok(()));
        assert_eq!(other.default_access(Vtl::VTL2), Access::ReadExecute);
        assert!(other.protection_enabled(Vtl::VTL2));
        assert_eq!(vsm.default_access(Vtl::VTL1), Access::Full);
        // Not offered: DenyLowerVtlStartup, InterceptVpStartup.
        assert_eq!(vsm.set_config(Vtl::VTL1, 1 << 6), Err(bad));
        assert_eq!(vsm.set_config(Vtl::VTL1, 1 << 9), Err(bad));
        // ZeroMemoryOnReset and a full-access mask before protection.
        assert_eq!(vsm.set_config(Vtl::VTL1, (1 << 5) | (0b0111 << 1)), Ok(()));
        assert_eq!(vsm.set_config(Vtl::VTL1, 0x1 | (0xF << 1)), Ok(()));
        assert_eq!(vsm.config(Vtl::VTL1), Ok(0x1F));
        // Write-once protection, fixed mask.
        assert_eq!(vsm.set_config(Vtl::VTL1, 0xF << 1), Err(bad));
        assert_eq!(vsm.set_config(Vtl::VTL1, 0x1 | (0b0111 << 1)), Err(bad));
        assert_eq!(vsm.set_config(Vtl::VTL1, 0x1F | (1 << 5)), Ok(()));
        assert_eq!(vsm.config(Vtl::VTL1), Ok(0x3F));
        assert_eq!(vsm.default_access(Vtl::VTL1), Access::Full);
        assert!(!vsm.intercept_page(Vtl::VTL1));
        assert_eq!(vsm.set_config(Vtl::VTL1, 0x3F | (1 << 12)), Ok(()));
        assert!(vsm.intercept_page(Vtl::VTL1));
        vsm.mark_enabled(Vtl::VTL2);
        assert_eq!(vsm.config(Vtl::VTL2), Ok(0));
    }
}
