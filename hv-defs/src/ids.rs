//! Identifiers: partition id, VP index, VTL and the HV_INPUT_VTL selector.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// HV_PARTITION_ID: a 64-bit partition identifier.
#[repr(transparent)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct PartitionId(pub u64);

impl PartitionId {
    /// HV_PARTITION_ID_SELF: the calling partition.
    pub const SELF: PartitionId = PartitionId(u64::MAX);
    /// HV_PARTITION_ID_INVALID.
    pub const INVALID: PartitionId = PartitionId(0);
}

/// HV_VP_INDEX: a 32-bit virtual processor index.
#[repr(transparent)]
#[derive(
    Copy,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
pub struct VpIndex(pub u32);

impl VpIndex {
    /// HV_VP_INDEX_SELF: the calling virtual processor.
    pub const SELF: VpIndex = VpIndex(0xFFFF_FFFE);
    /// HV_ANY_VP: any virtual processor.
    pub const ANY: VpIndex = VpIndex(0xFFFF_FFFF);
    /// The boot processor.
    pub const BSP: VpIndex = VpIndex(0);
}

/// HV_VTL: a virtual trust level, 0 (least privileged) and up.
///
/// Any byte round-trips; x64 partitions have VTL 0 to [`Vtl::MAX_X64`].
#[repr(transparent)]
#[derive(
    Copy,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
pub struct Vtl(pub u8);

impl Vtl {
    /// VTL 0, the normal world.
    pub const VTL0: Vtl = Vtl(0);
    /// VTL 1.
    pub const VTL1: Vtl = Vtl(1);
    /// VTL 2.
    pub const VTL2: Vtl = Vtl(2);
    /// The highest VTL an x64 partition can have.
    pub const MAX_X64: Vtl = Vtl(2);
}

/// HV_INPUT_VTL: selects the VTL a call acts on.
///
/// | Bits | Field |
/// |------|-------|
/// | 3:0  | target VTL |
/// | 4    | use target VTL |
/// | 7:5  | reserved |
///
/// ```
/// use hv_defs::{HvInputVtl, Vtl};
/// assert_eq!(HvInputVtl::CURRENT.target(), Ok(None));
/// assert_eq!(HvInputVtl::targeting(Vtl::VTL1).target(), Ok(Some(Vtl::VTL1)));
/// assert!(HvInputVtl(0x20).target().is_err());
/// ```
#[repr(transparent)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvInputVtl(pub u8);

impl HvInputVtl {
    /// The caller's own VTL (use-target-VTL clear).
    pub const CURRENT: HvInputVtl = HvInputVtl(0);
    /// Mask of the reserved bits 7:5.
    pub const RESERVED_MASK: u8 = 0xE0;

    /// A selector for `vtl` (use-target-VTL set). `vtl` is truncated to 4 bits.
    pub const fn targeting(vtl: Vtl) -> Self {
        HvInputVtl((vtl.0 & 0xF) | 0x10)
    }

    /// Target VTL field (bits 3:0).
    pub const fn target_vtl(self) -> Vtl {
        Vtl(self.0 & 0xF)
    }

    /// Use-target-VTL flag (bit 4).
    pub const fn use_target_vtl(self) -> bool {
        self.0 & 0x10 != 0
    }

    /// Reserved bits 7:5 as set.
    pub const fn reserved_bits(self) -> u8 {
        self.0 & Self::RESERVED_MASK
    }

    /// The VTL selected: `None` for the caller's own VTL, `Some(vtl)` when
    /// use-target-VTL is set. Reserved bits set: `HV_STATUS_INVALID_PARAMETER`.
    pub const fn target(self) -> crate::HvResult<Option<Vtl>> {
        if self.reserved_bits() != 0 {
            Err(crate::HvError::INVALID_PARAMETER)
        } else if self.use_target_vtl() {
            Ok(Some(self.target_vtl()))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants() {
        assert_eq!(PartitionId::SELF.0, 0xFFFF_FFFF_FFFF_FFFF);
        assert_eq!(VpIndex::SELF.0, 0xFFFF_FFFE);
        assert_eq!(VpIndex::ANY.0, 0xFFFF_FFFF);
        assert_eq!(Vtl::VTL2.0, 2);
        assert_eq!(HvInputVtl::targeting(Vtl(0x1F)).0, 0x1F);
    }

    #[test]
    fn input_vtl_bits() {
        let v = HvInputVtl(0b0001_0110);
        assert_eq!(v.target_vtl(), Vtl(6));
        assert!(v.use_target_vtl());
        assert_eq!(v.reserved_bits(), 0);
        let plain = HvInputVtl(0b0000_0010);
        assert_eq!(
            plain.target(),
            Ok(None),
            "target ignored without use-target"
        );
        for bit in 5..8 {
            let r = HvInputVtl(1 << bit);
            assert_eq!(r.reserved_bits(), 1 << bit);
            assert_eq!(r.target(), Err(crate::HvError::INVALID_PARAMETER));
        }
    }
}
