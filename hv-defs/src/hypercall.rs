//! Hypercall call codes, the hypercall input value (control word) and the result value.

use crate::status::{HvError, HvResult, HvStatus};

crate::open_enum! {
    /// A hypercall call code (input value bits 15:0).
    ///
    /// Unknown codes round-trip: a guest may send any 16-bit value, and the
    /// dispatcher answers those with `HV_STATUS_INVALID_HYPERCALL_CODE`.
    pub struct HypercallCode(u16) {
        /// HvCallSwitchVirtualAddressSpace (simple).
        SWITCH_VIRTUAL_ADDRESS_SPACE = 0x0001,
        /// HvCallFlushVirtualAddressSpace (simple).
        FLUSH_VIRTUAL_ADDRESS_SPACE = 0x0002,
        /// HvCallFlushVirtualAddressList (rep).
        FLUSH_VIRTUAL_ADDRESS_LIST = 0x0003,
        /// HvCallNotifyLongSpinWait (simple).
        NOTIFY_LONG_SPIN_WAIT = 0x0008,
        /// HvCallSendSyntheticClusterIpi (simple).
        SEND_SYNTHETIC_CLUSTER_IPI = 0x000B,
        /// HvCallModifyVtlProtectionMask (rep).
        MODIFY_VTL_PROTECTION_MASK = 0x000C,
        /// HvCallEnablePartitionVtl (simple).
        ENABLE_PARTITION_VTL = 0x000D,
        /// HvCallEnableVpVtl (simple).
        ENABLE_VP_VTL = 0x000F,
        /// HvCallVtlCall (simple).
        VTL_CALL = 0x0011,
        /// HvCallVtlReturn (simple).
        VTL_RETURN = 0x0012,
        /// HvCallFlushVirtualAddressSpaceEx (simple, variable header).
        FLUSH_VIRTUAL_ADDRESS_SPACE_EX = 0x0013,
        /// HvCallFlushVirtualAddressListEx (rep, variable header).
        FLUSH_VIRTUAL_ADDRESS_LIST_EX = 0x0014,
        /// HvCallSendSyntheticClusterIpiEx (simple, variable header).
        SEND_SYNTHETIC_CLUSTER_IPI_EX = 0x0015,
        /// HvCallGetPartitionId (simple).
        GET_PARTITION_ID = 0x0046,
        /// HvCallCreateVp (simple).
        CREATE_VP = 0x004E,
        /// HvCallGetVpRegisters (rep).
        GET_VP_REGISTERS = 0x0050,
        /// HvCallSetVpRegisters (rep).
        SET_VP_REGISTERS = 0x0051,
        /// HvCallPostMessage (simple).
        POST_MESSAGE = 0x005C,
        /// HvCallSignalEvent (simple).
        SIGNAL_EVENT = 0x005D,
        /// HvCallStartVirtualProcessor (simple).
        START_VIRTUAL_PROCESSOR = 0x0099,
        /// HvCallGetVpIndexFromApicId (rep).
        GET_VP_INDEX_FROM_APIC_ID = 0x009A,
        /// HvExtCallQueryCapabilities (extended, simple).
        EXT_QUERY_CAPABILITIES = 0x8001,
    }
}

/// Whether a call is a simple call or a rep call; they differ in which control-word
/// fields must be zero.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// A simple call: rep count and rep start index must be zero.
    Simple,
    /// A rep call: rep count must be non-zero and rep start index below it.
    Rep,
}

impl HypercallCode {
    /// The kind of a known call code, or `None` for a code this crate does not know.
    pub const fn kind(self) -> Option<CallKind> {
        match self {
            Self::FLUSH_VIRTUAL_ADDRESS_LIST
            | Self::MODIFY_VTL_PROTECTION_MASK
            | Self::FLUSH_VIRTUAL_ADDRESS_LIST_EX
            | Self::GET_VP_REGISTERS
            | Self::SET_VP_REGISTERS
            | Self::GET_VP_INDEX_FROM_APIC_ID => Some(CallKind::Rep),
            c if c.is_known() => Some(CallKind::Simple),
            _ => None,
        }
    }
}

/// The hypercall input value (RCX on x64), bit-exact.
///
/// | Bits  | Field |
/// |-------|-------|
/// | 15:0  | call code |
/// | 16    | fast |
/// | 26:17 | variable header size (8-byte units) |
/// | 30:27 | RsvdZ |
/// | 31    | is nested |
/// | 43:32 | rep count |
/// | 47:44 | RsvdZ |
/// | 59:48 | rep start index |
/// | 63:60 | RsvdZ |
///
/// ```
/// use hv_defs::{HypercallControl, HypercallCode};
/// let c = HypercallControl::new(HypercallCode::GET_VP_REGISTERS).with_rep_count(1);
/// assert_eq!(c.0, 0x0000_0001_0000_0050);
/// assert_eq!(c.code(), HypercallCode::GET_VP_REGISTERS);
/// assert!(c.check().is_ok());
/// ```
#[repr(transparent)]
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct HypercallControl(pub u64);

impl HypercallControl {
    /// Mask of all RsvdZ bits (30:27, 47:44, 63:60).
    pub const RESERVED_MASK: u64 = (0xF << 27) | (0xF << 44) | (0xF << 60);
    /// Largest rep count / rep start index (12 bits).
    pub const MAX_REP: u16 = 0xFFF;

    /// A control word for `code` with every other field zero.
    pub const fn new(code: HypercallCode) -> Self {
        HypercallControl(code.0 as u64)
    }

    /// Call code (bits 15:0).
    pub const fn code(self) -> HypercallCode {
        HypercallCode(self.0 as u16)
    }

    /// Fast (register-based) calling convention (bit 16).
    pub const fn fast(self) -> bool {
        self.0 & (1 << 16) != 0
    }

    /// Variable header size in 8-byte units (bits 26:17).
    pub const fn variable_header_size(self) -> u16 {
        ((self.0 >> 17) & 0x3FF) as u16
    }

    /// Is-nested flag (bit 31): the call is for the L0 hypervisor of a nested guest.
    pub const fn is_nested(self) -> bool {
        self.0 & (1 << 31) != 0
    }

    /// Rep count (bits 43:32).
    pub const fn rep_count(self) -> u16 {
        ((self.0 >> 32) & 0xFFF) as u16
    }

    /// Rep start index (bits 59:48).
    pub const fn rep_start_index(self) -> u16 {
        ((self.0 >> 48) & 0xFFF) as u16
    }

    /// The RsvdZ bits as they were set (zero in a well-formed control word).
    pub const fn reserved_bits(self) -> u64 {
        self.0 & Self::RESERVED_MASK
    }

    /// Sets or clears the fast flag.
    pub const fn with_fast(self, fast: bool) -> Self {
        HypercallControl((self.0 & !(1 << 16)) | ((fast as u64) << 16))
    }

    /// Sets the variable header size (in 8-byte units, truncated to 10 bits).
    pub const fn with_variable_header_size(self, size: u16) -> Self {
        HypercallControl((self.0 & !(0x3FF << 17)) | (((size as u64) & 0x3FF) << 17))
    }

    /// Sets the rep count (truncated to 12 bits).
    pub const fn with_rep_count(self, n: u16) -> Self {
        HypercallControl((self.0 & !(0xFFF << 32)) | (((n as u64) & 0xFFF) << 32))
    }

    /// Sets the rep start index (truncated to 12 bits).
    pub const fn with_rep_start_index(self, n: u16) -> Self {
        HypercallControl((self.0 & !(0xFFF << 48)) | (((n as u64) & 0xFFF) << 48))
    }

    /// Validates the control word as the TLFS requires before a call is dispatched.
    ///
    /// * an unknown call code: `HV_STATUS_INVALID_HYPERCALL_CODE`;
    /// * RsvdZ bits or the nested flag set: `HV_STATUS_INVALID_HYPERCALL_INPUT`;
    /// * a simple call with a non-zero rep count or rep start index, or a rep call with
    ///   a zero rep count or a start index not below the count:
    ///   `HV_STATUS_INVALID_HYPERCALL_INPUT`.
    ///
    /// On success it returns the call's kind.
    pub const fn check(self) -> HvResult<CallKind> {
        let kind = match self.code().kind() {
            Some(k) => k,
            None => return Err(HvError::INVALID_HYPERCALL_CODE),
        };
        if self.reserved_bits() != 0 || self.is_nested() {
            return Err(HvError::INVALID_HYPERCALL_INPUT);
        }
        let ok = match kind {
            CallKind::Simple => self.rep_count() == 0 && self.rep_start_index() == 0,
            CallKind::Rep => self.rep_count() != 0 && self.rep_start_index() < self.rep_count(),
        };
        if ok {
            Ok(kind)
        } else {
            Err(HvError::INVALID_HYPERCALL_INPUT)
        }
    }
}

impl core::fmt::Debug for HypercallControl {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HypercallControl")
            .field("code", &self.code())
            .field("fast", &self.fast())
            .field("variable_header_size", &self.variable_header_size())
            .field("is_nested", &self.is_nested())
            .field("rep_count", &self.rep_count())
            .field("rep_start_index", &self.rep_start_index())
            .field(
                "reserved_bits",
                &format_args!("{:#x}", self.reserved_bits()),
            )
            .finish()
    }
}

/// The hypercall result value (RAX on x64), bit-exact.
///
/// | Bits  | Field |
/// |-------|-------|
/// | 15:0  | HV_STATUS |
/// | 31:16 | RsvdZ |
/// | 43:32 | reps completed |
/// | 63:44 | RsvdZ |
///
/// ```
/// use hv_defs::{HypercallResult, HvStatus};
/// let r = HypercallResult::new(HvStatus::SUCCESS, 3);
/// assert_eq!(r.0, 0x0000_0003_0000_0000);
/// assert_eq!(r.reps_completed(), 3);
/// ```
#[repr(transparent)]
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default, Debug)]
pub struct HypercallResult(pub u64);

impl HypercallResult {
    /// A result with `status` and `reps_completed` (truncated to 12 bits).
    pub const fn new(status: HvStatus, reps_completed: u16) -> Self {
        HypercallResult((status.0 as u64) | (((reps_completed as u64) & 0xFFF) << 32))
    }

    /// The result of a call that failed before completing any rep.
    pub const fn error(e: HvError) -> Self {
        Self::new(e.status(), 0)
    }

    /// HV_STATUS (bits 15:0).
    pub const fn status(self) -> HvStatus {
        HvStatus(self.0 as u16)
    }

    /// Reps completed (bits 43:32).
    pub const fn reps_completed(self) -> u16 {
        ((self.0 >> 32) & 0xFFF) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_fields_are_bit_exact() {
        // A distinct value in every field, assembled bit by bit from the TLFS table.
        let raw: u64 =
            0x0099 | (1 << 16) | (0x2A5 << 17) | (1 << 31) | (0xABC << 32) | (0x123 << 48);
        let c = HypercallControl(raw);
        assert_eq!(c.code(), HypercallCode::START_VIRTUAL_PROCESSOR);
        assert!(c.fast());
        assert_eq!(c.variable_header_size(), 0x2A5);
        assert!(c.is_nested());
        assert_eq!(c.rep_count(), 0xABC);
        assert_eq!(c.rep_start_index(), 0x123);
        assert_eq!(c.reserved_bits(), 0);
        let built = HypercallControl::new(HypercallCode::START_VIRTUAL_PROCESSOR)
            .with_fast(true)
            .with_variable_header_size(0x2A5)
            .with_rep_count(0xABC)
            .with_rep_start_index(0x123);
        assert_eq!(built.0 | (1 << 31), raw);
        assert!(!built.with_fast(false).fast());
    }

    #[test]
    fn reserved_bits_are_exposed() {
        for bit in (27..=30).chain(44..=47).chain(60..=63) {
            let c = HypercallControl(0x0046 | (1u64 << bit));
            assert_eq!(c.reserved_bits(), 1u64 << bit, "bit {bit}");
            assert_eq!(c.check(), Err(HvError::INVALID_HYPERCALL_INPUT));
        }
        for bit in (0..=26).chain(31..=43).chain(48..=59) {
            assert_eq!(
                HypercallControl(1u64 << bit).reserved_bits(),
                0,
                "bit {bit}"
            );
        }
    }

    #[test]
    fn check_simple_and_rep_rules() {
        let simple = HypercallControl::new(HypercallCode::START_VIRTUAL_PROCESSOR);
        assert_eq!(simple.check(), Ok(CallKind::Simple));
        assert_eq!(
            simple.with_rep_count(1).check(),
            Err(HvError::INVALID_HYPERCALL_INPUT)
        );
        assert_eq!(
            simple.with_rep_start_index(1).check(),
            Err(HvError::INVALID_HYPERCALL_INPUT)
        );
        let rep = HypercallControl::new(HypercallCode::GET_VP_INDEX_FROM_APIC_ID);
        assert_eq!(rep.check(), Err(HvError::INVALID_HYPERCALL_INPUT));
        assert_eq!(rep.with_rep_count(2).check(), Ok(CallKind::Rep));
        assert_eq!(
            rep.with_rep_count(2).with_rep_start_index(1).check(),
            Ok(CallKind::Rep)
        );
        assert_eq!(
            rep.with_rep_count(2).with_rep_start_index(2).check(),
            Err(HvError::INVALID_HYPERCALL_INPUT)
        );
        assert_eq!(
            HypercallControl(0x1234).check(),
            Err(HvError::INVALID_HYPERCALL_CODE)
        );
        assert_eq!(
            HypercallControl(0x0046 | (1 << 31)).check(),
            Err(HvError::INVALID_HYPERCALL_INPUT)
        );
    }

    #[test]
    fn every_known_code_has_a_kind() {
        for &c in HypercallCode::KNOWN {
            assert!(c.kind().is_some(), "{c:?}");
        }
        assert_eq!(HypercallCode(0x7FFF).kind(), None);
        // The codes a Linux guest issues, with their TLFS values.
        assert_eq!(HypercallCode::CREATE_VP.0, 0x004E);
        assert_eq!(HypercallCode::GET_VP_REGISTERS.0, 0x0050);
        assert_eq!(HypercallCode::SET_VP_REGISTERS.0, 0x0051);
        assert_eq!(HypercallCode::ENABLE_VP_VTL.0, 0x000F);
        assert_eq!(HypercallCode::START_VIRTUAL_PROCESSOR.0, 0x0099);
        assert_eq!(HypercallCode::GET_VP_INDEX_FROM_APIC_ID.0, 0x009A);
        assert_eq!(HypercallCode::GET_PARTITION_ID.0, 0x0046);
        assert_eq!(HypercallCode::NOTIFY_LONG_SPIN_WAIT.0, 0x0008);
        assert_eq!(HypercallCode::EXT_QUERY_CAPABILITIES.0, 0x8001);
    }

    #[test]
    fn result_value_is_bit_exact() {
        let r = HypercallResult::new(HvStatus::INVALID_VP_STATE, 0xFFF);
        assert_eq!(r.0, 0x0000_0FFF_0000_0015);
        assert_eq!(r.status(), HvStatus::INVALID_VP_STATE);
        assert_eq!(r.reps_completed(), 0xFFF);
        assert_eq!(HypercallResult::error(HvError::ACCESS_DENIED).0, 6);
        let dbg = format!("{:?}", HypercallControl(0x50 | (1 << 32)));
        assert!(dbg.contains("GET_VP_REGISTERS"), "{dbg}");
    }
}
