//! The hypercall ABI of the Microsoft Hypervisor Top-Level Functional Specification
//! (TLFS), as plain data.
//!
//! * [`HypercallCode`], [`HypercallControl`] and [`HypercallResult`]: the call code,
//!   the input value a guest passes in RCX and the result value it gets in RAX;
//! * [`HvStatus`] and [`HvError`]: HV_STATUS, with an error type that cannot hold
//!   success;
//! * `#[repr(C)]` layouts of the inputs and outputs of the processor-management
//!   hypercalls ([`StartVirtualProcessorInput`], [`InitialVpContext`],
//!   [`CreateVpInput`], [`VpRegistersHeader`], ...), each with its size and every
//!   field offset asserted at compile time against the TLFS tables;
//! * identifiers: [`PartitionId`], [`VpIndex`], [`Vtl`], [`HvInputVtl`].
//!
//! Guest-visible enumerations are *open*: transparent newtypes with associated
//! constants (see [`open_enum!`]), so an unknown value a guest sends round-trips.
//! Reading a layout from guest bytes ([`GuestInput::read_from_guest`]) is total:
//! short, misaligned, page-crossing or RsvdZ-violating input is an error value.
//!
//! The crate is `no_std`, has no `unsafe` and does not depend on KVM.
//!
//! ```
//! use hv_defs::*;
//!
//! // A guest asks to start VP 1 at VTL 0; its input page holds the TLFS layout.
//! let mut page = [0u8; 4096];
//! page[0..8].copy_from_slice(&u64::MAX.to_le_bytes()); // HV_PARTITION_ID_SELF
//! page[8..12].copy_from_slice(&1u32.to_le_bytes());    // VpIndex
//! page[16..24].copy_from_slice(&0x1000u64.to_le_bytes()); // VpContext.Rip
//!
//! let control = HypercallControl(0x0099);
//! assert_eq!(control.check(), Ok(CallKind::Simple));
//! let input = StartVirtualProcessorInput::read_from_guest(&page, 0x5000).unwrap();
//! assert_eq!(input.partition_id, PartitionId::SELF);
//! assert_eq!(input.vp_index, VpIndex(1));
//! assert_eq!(input.vp_context.rip, 0x1000);
//!
//! // A misaligned input GPA is the guest's error, reported as HV_STATUS.
//! let err = StartVirtualProcessorInput::read_from_guest(&page, 0x5004).unwrap_err();
//! assert_eq!(HvError::from(err), HvError::INVALID_ALIGNMENT);
//! let rax = HypercallResult::error(err.into());
//! assert_eq!(rax.status(), HvStatus::INVALID_ALIGNMENT);
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
// Guest-visible enums are matched without catch-all arms, so a new variant breaks
// the build until it is handled.
#![deny(clippy::wildcard_enum_match_arm)]
#![forbid(unsafe_code)]

#[doc(hidden)]
pub use zerocopy as __zerocopy;

/// Asserts at compile time a type's size, alignment and the offset of each field.
macro_rules! assert_layout {
    ($t:ty, size $size:expr, align $align:expr, { $($f:ident @ $off:expr),* $(,)? }) => {
        const _: () = {
            assert!(::core::mem::size_of::<$t>() == $size);
            assert!(::core::mem::align_of::<$t>() == $align);
            $(assert!(::core::mem::offset_of!($t, $f) == $off);)*
        };
    };
}
pub(crate) use assert_layout;

mod open_enum;

mod exit;
mod hypercall;
mod ids;
mod input;
pub mod message;
mod regname;
mod status;
pub mod synthetic;
pub mod vsm;
mod x64;

pub use exit::WhvRunVpExitReason;
pub use hypercall::{CallKind, HypercallCode, HypercallControl, HypercallResult};
pub use ids::{HvInputVtl, PartitionId, VpIndex, Vtl};
pub use input::{
    check_parameter_block, ApicIdElement, CreateVpInput, EnablePartitionVtlInput, EnableVpVtlInput,
    GetPartitionIdOutput, GetVpIndexFromApicIdHeader, GetVpRegistersElement, GuestInput,
    InputError, ModifyVtlProtectionMaskHeader, ProximityDomainFlags, ProximityDomainInfo,
    SetVpRegistersElement, StartVirtualProcessorInput, VpIndexElement, VpRegistersHeader,
    HV_CALL_ALIGNMENT, HV_PAGE_SIZE,
};
pub use regname::HvRegisterName;
pub use status::{HvError, HvResult, HvStatus};
pub use x64::{
    HvRegisterValue, InitialVpContext, SegmentAttributes, SegmentRegister, TableRegister,
};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
