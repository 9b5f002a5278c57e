//! HV_REGISTER_NAME for x64: the open enum lives in `hv-defs` (an ABI fact);
//! this crate maps it to KVM state ([`crate::location`]).

pub use hv_defs::HvRegisterName;
