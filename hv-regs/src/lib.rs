//! Microsoft Hypervisor register names (HV_REGISTER_NAME, x64) mapped to KVM vCPU
//! state.
//!
//! * [`HvRegisterName`]: the open enum of register names, with TLFS values;
//! * [`location`]: where a name lives in KVM state ([`KvmRegister`]: a field of
//!   `kvm_regs` or `kvm_sregs`, a debug register, XCR0, an MSR index, the
//!   multiprocessing state, or the VP model's own state);
//! * [`validate`]: the checks HvSetVpRegisters makes (reserved bits, fixed bits,
//!   width, read-only), each failure a [`RegisterFault`] with its HV_STATUS;
//! * [`get_register`] / [`set_register`]: access by name through any
//!   [`VcpuRegisters`] implementation (the seam a VMM implements over its vCPU);
//! * [`context_to_kvm`] / [`load_context`]: an HV_INITIAL_VP_CONTEXT as KVM state.
//!
//! ```
//! use hv_regs::{location, validate, Control, HvRegisterName, KvmRegister};
//!
//! assert_eq!(location(HvRegisterName::CR3), Some(KvmRegister::Control(Control::Cr3)));
//! // CR0.PG without CR0.PE is refused with HV_STATUS_INVALID_PARAMETER.
//! let fault = validate(HvRegisterName::CR0, 0x8000_0000u64.into()).unwrap_err();
//! assert_eq!(fault.status(), hv_defs::HvError::INVALID_PARAMETER);
//! ```
#![deny(missing_docs)]
// Guest-visible enums are matched without catch-all arms, so a new variant breaks
// the build until it is handled.
#![deny(clippy::wildcard_enum_match_arm)]
#![forbid(unsafe_code)]

mod access;
mod context;
#[cfg(feature = "kvm")]
mod kvm;
mod location;
mod name;
mod validate;
mod vendor;

pub use access::{
    get_register, set_register, set_registers, AccessError, HvRegisterAccess, VcpuRegisters,
    VsmVpStatus,
};
pub use context::{context_registers, context_status, context_to_kvm, load_context, KvmVpContext};
#[cfg(feature = "kvm")]
pub use kvm::KvmVcpu;
/// The kvm-bindings crate this one's signatures use.
pub use kvm_bindings;
pub use location::{
    activity_from_mp_state, location, mp_state, mp_state_from_activity, msr, segment_from_kvm,
    segment_to_kvm, table_from_kvm, table_to_kvm, Control, DebugRegister, Gpr, KvmRegister,
    Segment, Synthetic, Table, ACTIVITY_HALT_SUSPEND, ACTIVITY_IDLE_SUSPEND,
    ACTIVITY_STARTUP_SUSPEND,
};
pub use name::HvRegisterName;
pub use validate::{
    check_control, check_segment, check_table, is_canonical, validate, validate_for, RegisterFault,
    ACTIVITY_RESERVED, APIC_BASE_RESERVED, CR0_RESERVED, CR3_RESERVED, CR4_RESERVED, CR8_RESERVED,
    DR6_FIXED1, DR6_RESERVED, DR7_FIXED1, DR7_RESERVED, EFER_RESERVED, RFLAGS_FIXED1,
    RFLAGS_RESERVED, XCR0_KNOWN,
};
pub use vendor::CpuVendor;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
