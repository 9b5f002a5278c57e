//! SynIC messages (TLFS "Inter-Partition Communication", "SynIC Messages")
//! and the intercept message a higher VTL receives for a lower VTL's memory
//! access (TLFS "Virtual Secure Mode", "Memory Access Protections"; the
//! layout Linux's `hvhdk.h` and guests use).
//!
//! ```
//! use hv_defs::message::{HvMessage, HvMessageType, MemoryInterceptMessage};
//! use zerocopy::FromZeros;
//! let mut m = HvMessage::new_zeroed();
//! m.header.message_type = HvMessageType::GPA_INTERCEPT;
//! m.header.payload_size = core::mem::size_of::<MemoryInterceptMessage>() as u8;
//! assert_eq!(m.header.payload_size, 0x50);
//! assert_eq!(core::mem::size_of::<HvMessage>(), 256);
//! ```

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::x64::SegmentRegister;

crate::open_enum! {
    /// HV_MESSAGE_TYPE (u32). Values with bit 31 set come from the
    /// hypervisor. Unknown types round-trip.
    pub struct HvMessageType(u32) {
        /// HvMessageTypeNone: the message slot is free.
        NONE = 0x0000_0000,
        /// HvMessageTypeUnmappedGpa: an access to a GPA with nothing mapped.
        UNMAPPED_GPA = 0x8000_0000,
        /// HvMessageTypeGpaIntercept: an access a VTL protection refused.
        GPA_INTERCEPT = 0x8000_0001,
    }
}

/// HV_MESSAGE_HEADER (16 bytes): type @0, payload size @4, flags @5 (bit 0
/// MessagePending), reserved @6, sender (port id or partition id) @8.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvMessageHeader {
    /// MessageType @0.
    pub message_type: HvMessageType,
    /// PayloadSize @4, in bytes (at most [`HvMessage::PAYLOAD_SIZE`]).
    pub payload_size: u8,
    /// MessageFlags @5.
    pub message_flags: u8,
    /// Reserved @6.
    pub reserved: [u8; 2],
    /// Sender @8: the port id or the sending partition's id.
    pub sender: u64,
}

impl HvMessageHeader {
    /// MessageFlags.MessagePending: another message waits for this slot.
    pub const MESSAGE_PENDING: u8 = 1;
}

/// HV_MESSAGE (256 bytes): the header and 240 bytes of payload, one per
/// SINT in a SynIC message page.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvMessage {
    /// The header @0.
    pub header: HvMessageHeader,
    /// The payload @16.
    pub payload: [u8; HvMessage::PAYLOAD_SIZE],
}

impl HvMessage {
    /// HV_MESSAGE_PAYLOAD_BYTE_COUNT.
    pub const PAYLOAD_SIZE: usize = 240;
}

/// HV_X64_INTERCEPT_MESSAGE_HEADER (40 bytes): VP index @0, instruction
/// length (bits 3:0) and CR8 (bits 7:4) @4, access type @5, execution state
/// @6, CS @8, RIP @24, RFLAGS @32.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct InterceptMessageHeader {
    /// VpIndex @0.
    pub vp_index: u32,
    /// InstructionLength (bits 3:0) and Cr8 (bits 7:4) @4.
    pub instruction_length_and_cr8: u8,
    /// InterceptAccessType @5 ([`InterceptMessageHeader::ACCESS_READ`], ...).
    pub intercept_access_type: u8,
    /// ExecutionState @6 (HV_X64_VP_EXECUTION_STATE:
    /// [`InterceptMessageHeader::execution_state`]).
    pub execution_state: u16,
    /// CsSegment @8.
    pub cs_segment: SegmentRegister,
    /// Rip @24.
    pub rip: u64,
    /// Rflags @32.
    pub rflags: u64,
}

impl InterceptMessageHeader {
    /// HV_INTERCEPT_ACCESS_READ.
    pub const ACCESS_READ: u8 = 0;
    /// HV_INTERCEPT_ACCESS_WRITE.
    pub const ACCESS_WRITE: u8 = 1;
    /// HV_INTERCEPT_ACCESS_EXECUTE.
    pub const ACCESS_EXECUTE: u8 = 2;

    /// HV_X64_VP_EXECUTION_STATE: bits 1:0 Cpl, 2 Cr0Pe, 3 Cr0Am, 4 EferLma,
    /// 5 DebugActive, 6 InterruptionPending, 11:8 Vtl, 12 EnclaveMode, 13
    /// InterruptShadow.
    pub const fn execution_state(
        cpl: u8,
        cr0_pe: bool,
        cr0_am: bool,
        efer_lma: bool,
        vtl: crate::Vtl,
    ) -> u16 {
        (cpl as u16 & 3)
            | (cr0_pe as u16) << 2
            | (cr0_am as u16) << 3
            | (efer_lma as u16) << 4
            | ((vtl.0 as u16 & 0xF) << 8)
    }
}

/// HV_X64_MEMORY_INTERCEPT_MESSAGE (0x50 bytes): the header, then cache type
/// @40, instruction byte count @44, memory access info @45 (bit 0
/// GvaValid, 1 GvaGpaValid, 2 HypercallOutputPending, 3 TlbLocked), TPR
/// priority @46, GVA @48, GPA @56, the instruction bytes @64.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MemoryInterceptMessage {
    /// The intercept header @0.
    pub header: InterceptMessageHeader,
    /// CacheType @40 (HV_CACHE_TYPE).
    pub cache_type: u32,
    /// InstructionByteCount @44: how many of `instruction_bytes` are valid.
    pub instruction_byte_count: u8,
    /// MemoryAccessInfo @45.
    pub memory_access_info: u8,
    /// TprPriority @46.
    pub tpr_priority: u8,
    /// Reserved @47.
    pub reserved: u8,
    /// GuestVirtualAddress @48.
    pub guest_virtual_address: u64,
    /// GuestPhysicalAddress @56.
    pub guest_physical_address: u64,
    /// InstructionBytes @64.
    pub instruction_bytes: [u8; 16],
}

impl MemoryInterceptMessage {
    /// MemoryAccessInfo.GvaValid.
    pub const GVA_VALID: u8 = 1;
    /// MemoryAccessInfo.GvaGpaValid.
    pub const GVA_GPA_VALID: u8 = 1 << 1;
}

crate::assert_layout!(HvMessageHeader, size 16, align 8, {
    message_type @ 0, payload_size @ 4, message_flags @ 5, reserved @ 6, sender @ 8,
});
crate::assert_layout!(HvMessage, size 256, align 8, { header @ 0, payload @ 16 });
crate::assert_layout!(InterceptMessageHeader, size 40, align 8, {
    vp_index @ 0, instruction_length_and_cr8 @ 4, intercept_access_type @ 5,
    execution_state @ 6, cs_segment @ 8, rip @ 24, rflags @ 32,
});
crate::assert_layout!(MemoryInterceptMessage, size 0x50, align 8, {
    header @ 0, cache_type @ 40, instruction_byte_count @ 44, memory_access_info @ 45,
    tpr_priority @ 46, reserved @ 47, guest_virtual_address @ 48,
    guest_physical_address @ 56, instruction_bytes @ 64,
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Vtl;

    /// TLFS HV_MESSAGE_TYPE values the VSM intercepts use.
    #[test]
    fn message_types_and_flags() {
        assert_eq!(HvMessageType::GPA_INTERCEPT.0, 0x8000_0001);
        assert_eq!(HvMessageType::UNMAPPED_GPA.0, 0x8000_0000);
        assert_eq!(HvMessageType::from(0x1234).name(), None);
        assert_eq!(HvMessageHeader::MESSAGE_PENDING, 1);
        assert!(core::mem::size_of::<MemoryInterceptMessage>() <= HvMessage::PAYLOAD_SIZE);
    }

    /// HV_X64_VP_EXECUTION_STATE bit positions.
    #[test]
    fn execution_state_bits() {
        assert_eq!(
            InterceptMessageHeader::execution_state(0, true, false, true, Vtl::VTL0),
            0b1_0100
        );
        assert_eq!(
            InterceptMessageHeader::execution_state(3, false, true, false, Vtl::VTL1),
            0x10B
        );
        assert_eq!(
            InterceptMessageHeader::execution_state(7, false, false, false, Vtl(0x1F)),
            0xF03
        );
    }
}
