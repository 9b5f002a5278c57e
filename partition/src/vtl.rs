//! The VTLs of a partition (TLFS "Virtual Secure Mode"): one KVM VM per
//! enabled VTL over the same guest RAM (the same host mapping), each with its
//! own memslots for its own hypercall overlay page and its own instance of the
//! synthetic MSRs that are private to a VTL. The boot VTL's VM is the
//! partition's [`crate::Partition::vm`]; a VP has one vCPU in each VTL's VM it
//! has enabled, all run by the VP's one thread ([`crate::Vp`]).

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hv_defs::Vtl;
use kvm_ioctls::VmFd;

use crate::overlay::Overlay;
use crate::shared::HvPartitionState;

/// No overlay page mapped (the lock-free mirror of [`Overlay::at`]).
pub(crate) const NO_OVERLAY: u64 = u64::MAX;

/// One VTL of the partition: its VM, its hypercall overlay page and its
/// private synthetic MSRs.
#[derive(Debug)]
pub(crate) struct VtlSpace {
    pub vm: Arc<VmFd>,
    /// The hypercall page's overlay slot; its GPA is mirrored in `overlay_at`
    /// ([`NO_OVERLAY`] when unmapped) for the run loop's lock-free check.
    pub overlay: Mutex<Overlay>,
    pub overlay_at: AtomicU64,
    /// HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL of this VTL.
    pub hv: Mutex<HvPartitionState>,
}

impl VtlSpace {
    pub fn new(vm: Arc<VmFd>, overlay: Overlay) -> VtlSpace {
        VtlSpace {
            vm,
            overlay: Mutex::new(overlay),
            overlay_at: AtomicU64::new(NO_OVERLAY),
            hv: Mutex::new(HvPartitionState::default()),
        }
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
}

impl VsmShared {
    pub fn new(max_vtl: Vtl, enabled: u16) -> Arc<VsmShared> {
        Arc::new(VsmShared {
            max_vtl,
            enabled: AtomicU16::new(enabled),
        })
    }

    pub fn enabled(&self) -> u16 {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn mark_enabled(&self, vtl: Vtl) {
        self.enabled.fetch_or(1 << vtl.0, Ordering::AcqRel);
    }

    /// HvRegisterVsmPartitionStatus.
    pub fn status(&self) -> u64 {
        hv_defs::vsm::VsmPartitionStatus::new(self.enabled(), self.max_vtl).0
    }
}

/// HvRegisterVsmCapabilities as this crate offers them: DR6 is private per
/// VTL (Dr6Shared clear), no MBEC (stock KVM cannot express it), no intercept
/// page and no return actions yet.
pub(crate) const VSM_CAPABILITIES: u64 = 0;
