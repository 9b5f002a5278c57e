//! The partition's errors: TLFS statuses where the TLFS defines them, host
//! failures with their sources everywhere else.

use hv_defs::HvError;

/// Why a VP could not be created or started by the host: a TLFS status, or a
/// failure of the host itself with its source.
#[derive(Debug, thiserror::Error)]
pub enum VpError {
    /// What the TLFS defines (an index out of range, a VP in the wrong state, ...).
    #[error("{0}")]
    Status(#[from] HvError),
    /// A KVM ioctl failed (the host's failure, not a TLFS status).
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
    /// A KVM failure while doing `what`.
    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VpError {
        move |source| VpError::Kvm { what, source }
    }

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
    /// [`crate::VmParts::ram_slots`] does not name one slot per memory region.
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
    /// The maximum VTL is below the boot VTL or above the highest VTL of an
    /// x64 partition (2).
    #[error("maximum VTL {max} must be between the boot VTL {boot} and 2")]
    MaxVtl {
        /// The boot VTL.
        boot: u8,
        /// The maximum VTL asked for.
        max: u8,
    },
    /// The hypercall overlay page could not be allocated.
    #[error("cannot allocate the hypercall overlay page: {0}")]
    Overlay(#[source] std::io::Error),
    /// The kick signal handler could not be read or installed.
    #[error("cannot install the VP kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The overlay slots named in [`crate::VmParts::overlay_slots`] are not two
    /// distinct slots free of RAM.
    #[error("overlay slots {0:?} must be two distinct slots that hold no RAM")]
    OverlaySlots([u32; 2]),
    /// A set-up thread of the partition's failed.
    #[error("the partition's {0} thread panicked")]
    Thread(&'static str),
}
