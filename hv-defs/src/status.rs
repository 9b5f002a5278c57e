//! HV_STATUS: the 16-bit result of every hypercall.
//!
//! [`HvStatus`] is the open enum a guest sees in RAX bits 15:0, success included.
//! [`HvError`] is the error half: it cannot hold `HV_STATUS_SUCCESS`, so
//! `Result<T, HvError>` ([`HvResult`]) is the natural return type of anything that
//! implements a hypercall.

use core::fmt;
use core::num::NonZeroU16;

macro_rules! statuses {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident = $val:expr,
    )*) => {
        crate::open_enum! {
            /// An HV_STATUS value, as returned to the guest in RAX bits 15:0.
            ///
            /// Unknown values round-trip unchanged. [`HvStatus::SUCCESS`] is 0; every
            /// other constant has the same name and meaning as the [`HvError`]
            /// constant of that name.
            pub struct HvStatus(u16) {
                /// The operation succeeded.
                SUCCESS = 0x0000,
                $(
                    $(#[doc = $doc])+
                    $name = $val,
                )*
            }
        }

        impl HvError {
            $(
                $(#[doc = $doc])+
                pub const $name: HvError = HvError::from_const($val);
            )*

            /// Every error code this crate knows, in numeric order.
            pub const KNOWN: &'static [HvError] = &[$(HvError::$name),*];

            /// A one-line description of the error, from the TLFS.
            pub const fn description(self) -> &'static str {
                match self.0.get() {
                    $(v if v == $val => skip_leading_space(concat!($($doc),+)),)*
                    _ => "unknown hypervisor status",
                }
            }
        }
    };
}

/// Doc comments start with a space; descriptions should not.
const fn skip_leading_space(s: &str) -> &str {
    match s.as_bytes() {
        [b' ', rest @ ..] => match core::str::from_utf8(rest) {
            Ok(t) => t,
            Err(_) => s,
        },
        _ => s,
    }
}

statuses! {
    /// The hypercall code is not supported by the hypervisor.
    INVALID_HYPERCALL_CODE = 0x0002,
    /// The encoding of the hypercall input value is not supported: reserved bits are
    /// set, or the rep count or rep start index is wrong for this call.
    INVALID_HYPERCALL_INPUT = 0x0003,
    /// A parameter, such as an input or output GPA, has an invalid alignment.
    INVALID_ALIGNMENT = 0x0004,
    /// A parameter is invalid: out of range, reserved fields non-zero, or a parameter
    /// list that crosses a page or lies outside guest memory.
    INVALID_PARAMETER = 0x0005,
    /// Access to the specified object was denied.
    ACCESS_DENIED = 0x0006,
    /// The partition is entering, or is in, a state that does not allow the operation.
    INVALID_PARTITION_STATE = 0x0007,
    /// The operation is not allowed in the current state.
    OPERATION_DENIED = 0x0008,
    /// The partition property is not recognised.
    UNKNOWN_PROPERTY = 0x0009,
    /// The value of a partition property is out of range or violates an invariant.
    PROPERTY_VALUE_OUT_OF_RANGE = 0x000A,
    /// There is not enough memory in the hypervisor pool to complete the operation.
    INSUFFICIENT_MEMORY = 0x000B,
    /// The maximum partition depth has been exceeded for the partition hierarchy.
    PARTITION_TOO_DEEP = 0x000C,
    /// The partition identifier is not valid.
    INVALID_PARTITION_ID = 0x000D,
    /// The virtual processor index is not valid.
    INVALID_VP_INDEX = 0x000E,
    /// The requested object was not found.
    NOT_FOUND = 0x0010,
    /// The port identifier is not valid.
    INVALID_PORT_ID = 0x0011,
    /// The connection identifier is not valid.
    INVALID_CONNECTION_ID = 0x0012,
    /// Not enough buffers were supplied to send a message.
    INSUFFICIENT_BUFFERS = 0x0013,
    /// A previous virtual interrupt has not been acknowledged.
    NOT_ACKNOWLEDGED = 0x0014,
    /// A virtual processor is not in the state the operation requires.
    INVALID_VP_STATE = 0x0015,
    /// A previous virtual interrupt has already been acknowledged.
    ACKNOWLEDGED = 0x0016,
    /// A save or restore of the partition's state is not valid in this state.
    INVALID_SAVE_RESTORE_STATE = 0x0017,
    /// The synthetic interrupt controller is not in a state that allows the operation.
    INVALID_SYNIC_STATE = 0x0018,
    /// The object or value is in use.
    OBJECT_IN_USE = 0x0019,
    /// The proximity domain information is not valid.
    INVALID_PROXIMITY_DOMAIN_INFO = 0x001A,
    /// An attempt to retrieve data failed because none was available.
    NO_DATA = 0x001B,
    /// The physical connection being used for debugging has not recorded any
    /// receive activity since the last operation.
    INACTIVE = 0x001C,
    /// A resource is unavailable or an implementation limit has been reached.
    NO_RESOURCES = 0x001D,
    /// A hypervisor feature is not available to the caller.
    FEATURE_UNAVAILABLE = 0x001E,
    /// The debug packet returned is only a partial packet.
    PARTIAL_PACKET = 0x001F,
    /// A processor feature the partition needs is not supported.
    PROCESSOR_FEATURE_NOT_SUPPORTED = 0x0020,
    /// The processor's cache line flush size is incompatible.
    PROCESSOR_CACHE_LINE_FLUSH_SIZE_INCOMPATIBLE = 0x0030,
    /// The supplied buffer is too small.
    INSUFFICIENT_BUFFER = 0x0033,
    /// The processor is incompatible with the partition's requirements.
    INCOMPATIBLE_PROCESSOR = 0x0037,
    /// Not enough device domains are available.
    INSUFFICIENT_DEVICE_DOMAINS = 0x0038,
    /// A CPUID feature failed validation.
    CPUID_FEATURE_VALIDATION_ERROR = 0x003C,
    /// A CPUID XSAVE feature failed validation.
    CPUID_XSAVE_FEATURE_VALIDATION_ERROR = 0x003D,
    /// A processor did not start in time.
    PROCESSOR_STARTUP_TIMEOUT = 0x003E,
    /// SMX is enabled on the processor.
    SMX_ENABLED = 0x003F,
    /// The logical processor index is not valid.
    INVALID_LP_INDEX = 0x0041,
    /// A supplied register value is not valid.
    INVALID_REGISTER_VALUE = 0x0050,
    /// The state of a virtual trust level conflicts with the operation.
    INVALID_VTL_STATE = 0x0051,
    /// The processor does not support NX (no-execute).
    NX_NOT_DETECTED = 0x0055,
    /// The device identifier is not valid.
    INVALID_DEVICE_ID = 0x0057,
    /// The device is not in a state that allows the operation.
    INVALID_DEVICE_STATE = 0x0058,
    /// Page requests are still pending.
    PENDING_PAGE_REQUESTS = 0x0059,
    /// The page request is not valid.
    PAGE_REQUEST_INVALID = 0x0060,
    /// The key already exists.
    KEY_ALREADY_EXISTS = 0x0065,
    /// The device is already in a domain.
    DEVICE_ALREADY_IN_DOMAIN = 0x0066,
    /// The CPU group identifier is not valid.
    INVALID_CPU_GROUP_ID = 0x006F,
    /// The CPU group is not in a state that allows the operation.
    INVALID_CPU_GROUP_STATE = 0x0070,
    /// The operation failed.
    OPERATION_FAILED = 0x0071,
    /// The operation is not allowed while nested virtualization is active.
    NOT_ALLOWED_WITH_NESTED_VIRT_ACTIVE = 0x0072,
    /// Not enough root partition memory is available.
    INSUFFICIENT_ROOT_MEMORY = 0x0073,
    /// The event buffer has already been freed.
    EVENT_BUFFER_ALREADY_FREED = 0x0074,
    /// The hypercall is pending completion.
    CALL_PENDING = 0x0079,
    /// The requested virtual trust level is already enabled on this virtual processor.
    VTL_ALREADY_ENABLED = 0x0086,
}

/// A hypercall failure: any HV_STATUS except success.
///
/// ```
/// use hv_defs::{HvError, HvStatus};
/// let e = HvError::INVALID_VP_STATE;
/// assert_eq!(e.status(), HvStatus::INVALID_VP_STATE);
/// assert_eq!(HvStatus::SUCCESS.result(), Ok(()));
/// assert_eq!(HvStatus(0x15).result(), Err(e));
/// assert_eq!(HvError::new(0), None);
/// ```
#[repr(transparent)]
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HvError(NonZeroU16);

/// The result of an operation that reports failure as an HV_STATUS.
pub type HvResult<T> = Result<T, HvError>;

impl HvError {
    const fn from_const(v: u16) -> HvError {
        match NonZeroU16::new(v) {
            Some(n) => HvError(n),
            None => panic!("HV_STATUS_SUCCESS is not an error"),
        }
    }

    /// The error for a raw status, or `None` for `HV_STATUS_SUCCESS` (0).
    pub const fn new(v: u16) -> Option<HvError> {
        match NonZeroU16::new(v) {
            Some(n) => Some(HvError(n)),
            None => None,
        }
    }

    /// The raw 16-bit status code.
    pub const fn code(self) -> u16 {
        self.0.get()
    }

    /// The same code as an [`HvStatus`].
    pub const fn status(self) -> HvStatus {
        HvStatus(self.0.get())
    }
}

impl HvStatus {
    /// `Ok(())` for success, the [`HvError`] otherwise.
    pub const fn result(self) -> HvResult<()> {
        match HvError::new(self.0) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

impl From<HvError> for HvStatus {
    fn from(e: HvError) -> Self {
        e.status()
    }
}

impl<T> From<HvResult<T>> for HvStatus {
    fn from(r: HvResult<T>) -> Self {
        match r {
            Ok(_) => HvStatus::SUCCESS,
            Err(e) => e.status(),
        }
    }
}

impl fmt::Debug for HvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HvError({:?})", self.status())
    }
}

impl fmt::Display for HvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status().name() {
            Some(n) => write!(
                f,
                "HV_STATUS_{n} ({:#06x}): {}",
                self.code(),
                self.description()
            ),
            None => write!(f, "unknown HV_STATUS {:#06x}", self.code()),
        }
    }
}

impl core::error::Error for HvError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_tlfs() {
        // Spot checks against the TLFS appendix and the seed pages.
        assert_eq!(HvError::INVALID_HYPERCALL_CODE.code(), 2);
        assert_eq!(HvError::INVALID_HYPERCALL_INPUT.code(), 3);
        assert_eq!(HvError::INVALID_ALIGNMENT.code(), 4);
        assert_eq!(HvError::INVALID_PARAMETER.code(), 5);
        assert_eq!(HvError::ACCESS_DENIED.code(), 6);
        assert_eq!(HvError::INVALID_PARTITION_STATE.code(), 7);
        assert_eq!(HvError::INVALID_PARTITION_ID.code(), 0xD);
        assert_eq!(HvError::INVALID_VP_INDEX.code(), 0xE);
        assert_eq!(HvError::INVALID_VP_STATE.code(), 0x15);
        assert_eq!(HvError::INVALID_REGISTER_VALUE.code(), 0x50);
        assert_eq!(HvError::INVALID_VTL_STATE.code(), 0x51);
        assert_eq!(HvError::VTL_ALREADY_ENABLED.code(), 134);
    }

    #[test]
    fn every_known_error_round_trips() {
        let mut prev = 0u16;
        for &e in HvError::KNOWN {
            assert!(e.code() > prev, "KNOWN must be strictly ascending");
            prev = e.code();
            assert_eq!(HvError::new(e.code()), Some(e));
            assert_eq!(e.status().result(), Err(e));
            assert!(e.status().is_known());
            assert_ne!(e.description(), "unknown hypervisor status");
            let shown = format!("{e}");
            assert!(shown.starts_with("HV_STATUS_"), "{shown}");
        }
        // Every HvStatus except SUCCESS is an HvError.
        assert_eq!(HvStatus::KNOWN.len(), HvError::KNOWN.len() + 1);
    }

    #[test]
    fn unknown_codes_round_trip() {
        let s = HvStatus(0x7777);
        assert!(!s.is_known());
        let e = s.result().unwrap_err();
        assert_eq!(e.code(), 0x7777);
        assert_eq!(e.description(), "unknown hypervisor status");
        assert_eq!(format!("{e}"), "unknown HV_STATUS 0x7777");
        assert_eq!(format!("{e:?}"), "HvError(HvStatus(0x7777))");
        assert_eq!(
            format!("{:?}", HvError::ACCESS_DENIED),
            "HvError(ACCESS_DENIED)"
        );
    }

    #[test]
    fn result_conversions() {
        assert_eq!(HvStatus::from(Ok::<u8, HvError>(1)), HvStatus::SUCCESS);
        assert_eq!(
            HvStatus::from(Err::<u8, _>(HvError::NO_RESOURCES)),
            HvStatus::NO_RESOURCES
        );
        assert_eq!(HvStatus::from(HvError::NOT_FOUND), HvStatus::NOT_FOUND);
        assert_eq!(u16::from(HvStatus::SUCCESS), 0);
    }
}
