//! The TLFS checks that depend on who makes a call, shared by every VMM that
//! serves the calls: which partition, which VP and which VTL a call may name.
//! A handler asks its [`Caller`] instead of re-writing them.

use hv_defs::{HvError, HvInputVtl, HvResult, PartitionId, VpIndex, Vtl};

/// Who makes a hypercall: the partition, the VP and the VTL it runs in.
///
/// ```
/// use hv_defs::{HvError, HvInputVtl, PartitionId, VpIndex, Vtl};
/// use hv_hypercall::Caller;
///
/// let caller = Caller { partition: PartitionId(3), vp: VpIndex(0), vtl: Vtl::VTL0 };
/// assert_eq!(caller.partition(PartitionId::SELF), Ok(()));
/// assert_eq!(caller.partition(PartitionId(4)), Err(HvError::ACCESS_DENIED));
/// assert_eq!(caller.vp(VpIndex::SELF), VpIndex(0));
/// assert_eq!(caller.input_vtl(HvInputVtl::CURRENT), Ok(Vtl::VTL0));
/// assert_eq!(
///     caller.input_vtl(HvInputVtl::targeting(Vtl::VTL1)),
///     Err(HvError::ACCESS_DENIED)
/// );
/// // StartVirtualProcessor of VP 1 (which exists) at VTL 0.
/// let exists = |vp: VpIndex| vp.0 < 2;
/// assert_eq!(caller.start_target(PartitionId::SELF, VpIndex(1), Vtl::VTL0, exists), Ok(VpIndex(1)));
/// assert_eq!(
///     caller.start_target(PartitionId::SELF, VpIndex(0), Vtl::VTL0, exists),
///     Err(HvError::INVALID_PARAMETER)
/// );
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The caller's partition.
    pub partition: PartitionId,
    /// The calling VP.
    pub vp: VpIndex,
    /// The VTL the calling VP runs in.
    pub vtl: Vtl,
}

impl Caller {
    /// A partition id a guest names: `HV_PARTITION_ID_SELF` or its own id; any
    /// other is `HV_STATUS_ACCESS_DENIED` (a guest reaches no other partition).
    pub fn partition(&self, named: PartitionId) -> HvResult<()> {
        if named == PartitionId::SELF || named == self.partition {
            Ok(())
        } else {
            Err(HvError::ACCESS_DENIED)
        }
    }

    /// A VP index a guest names, with `HV_VP_INDEX_SELF` resolved to the caller.
    /// Whether that VP exists is the VMM's to say.
    pub fn vp(&self, named: VpIndex) -> VpIndex {
        if named == VpIndex::SELF {
            self.vp
        } else {
            named
        }
    }

    /// The VTL an HV_INPUT_VTL selects: the caller's own when use-target-VTL is
    /// clear; a higher VTL than the caller's is `HV_STATUS_ACCESS_DENIED`;
    /// reserved bits are `HV_STATUS_INVALID_PARAMETER`. A lower VTL is returned:
    /// what may be done there is the call's to say.
    pub fn input_vtl(&self, selector: HvInputVtl) -> HvResult<Vtl> {
        match selector.target()? {
            None => Ok(self.vtl),
            Some(v) if v > self.vtl => Err(HvError::ACCESS_DENIED),
            Some(v) => Ok(v),
        }
    }

    /// The checks of HvCallStartVirtualProcessor before the target's state, in
    /// the TLFS order: the partition ([`Self::partition`]); the VP exists
    /// (`exists`, the VMM's) or `HV_STATUS_INVALID_VP_INDEX`; not the caller
    /// itself, `HV_STATUS_INVALID_PARAMETER`; a target VTL above the caller's,
    /// `HV_STATUS_ACCESS_DENIED`. Returns the target VP.
    pub fn start_target(
        &self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        target_vtl: Vtl,
        exists: impl FnOnce(VpIndex) -> bool,
    ) -> HvResult<VpIndex> {
        let target = self.existing_vp(partition_id, vp_index, exists)?;
        if target == self.vp {
            return Err(HvError::INVALID_PARAMETER);
        }
        self.vtl_at_most_own(target_vtl)?;
        Ok(target)
    }

    /// The checks of HvCallEnableVpVtl before the target's state: the partition,
    /// the VP exists (`exists`) or `HV_STATUS_INVALID_VP_INDEX`, the VTL is
    /// enabled for the partition (`partition_vtls`, bit n for VTL n) or
    /// `HV_STATUS_INVALID_PARAMETER`, and a VTL above the caller's only from the
    /// highest VTL enabled for the partition below it (TLFS HvCallEnableVpVtl,
    /// "Restrictions"), else `HV_STATUS_ACCESS_DENIED`. Returns the target VP.
    pub fn enable_vtl_target(
        &self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        target_vtl: Vtl,
        partition_vtls: u16,
        exists: impl FnOnce(VpIndex) -> bool,
    ) -> HvResult<VpIndex> {
        let target = self.existing_vp(partition_id, vp_index, exists)?;
        if target_vtl > Vtl::MAX_X64 || partition_vtls & (1 << target_vtl.0) == 0 {
            return Err(HvError::INVALID_PARAMETER);
        }
        if target_vtl > self.vtl && highest_below(partition_vtls, target_vtl) != Some(self.vtl) {
            return Err(HvError::ACCESS_DENIED);
        }
        Ok(target)
    }

    /// The checks of HvCallEnablePartitionVtl, in this order: the partition
    /// ([`Self::partition`]); a target VTL above `maximum` is
    /// `HV_STATUS_INVALID_PARAMETER`; a VTL above the caller's may be enabled
    /// only by the highest VTL enabled for the partition below it (TLFS
    /// HvCallEnablePartitionVtl, "Restrictions"), else
    /// `HV_STATUS_ACCESS_DENIED`; one already in `enabled` (bit n for VTL n)
    /// is `HV_STATUS_VTL_ALREADY_ENABLED`.
    pub fn enable_partition_vtl(
        &self,
        partition_id: PartitionId,
        target_vtl: Vtl,
        enabled: u16,
        maximum: Vtl,
    ) -> HvResult<()> {
        self.partition(partition_id)?;
        if target_vtl > maximum || target_vtl > Vtl::MAX_X64 {
            return Err(HvError::INVALID_PARAMETER);
        }
        if target_vtl > self.vtl && highest_below(enabled, target_vtl) != Some(self.vtl) {
            return Err(HvError::ACCESS_DENIED);
        }
        if enabled & (1 << target_vtl.0) != 0 {
            return Err(HvError::VTL_ALREADY_ENABLED);
        }
        Ok(())
    }

    /// The partition, then the VP (`HV_STATUS_INVALID_VP_INDEX` unless `exists`).
    fn existing_vp(
        &self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        exists: impl FnOnce(VpIndex) -> bool,
    ) -> HvResult<VpIndex> {
        self.partition(partition_id)?;
        let target = self.vp(vp_index);
        if exists(target) {
            Ok(target)
        } else {
            Err(HvError::INVALID_VP_INDEX)
        }
    }

    /// A target VTL above the caller's is `HV_STATUS_ACCESS_DENIED`.
    /// The checks of HvCallModifyVtlProtectionMask before its pages: the
    /// partition ([`Self::partition`]); the target VTL ([`Self::input_vtl`]:
    /// reserved bits `HV_STATUS_INVALID_PARAMETER`, a higher VTL
    /// `HV_STATUS_ACCESS_DENIED`), which must be below the caller's: "A VTL
    /// can only place protections on a lower VTL" (TLFS
    /// HvCallModifyVtlProtectionMask), else `HV_STATUS_ACCESS_DENIED`. The
    /// caller's own VTL is the target when the input names none. Returns the
    /// protected VTL.
    pub fn protection_target(
        &self,
        partition_id: PartitionId,
        target_vtl: HvInputVtl,
    ) -> HvResult<Vtl> {
        self.partition(partition_id)?;
        let vtl = self.input_vtl(target_vtl)?;
        if vtl >= self.vtl {
            return Err(HvError::ACCESS_DENIED);
        }
        Ok(vtl)
    }

    fn vtl_at_most_own(&self, vtl: Vtl) -> HvResult<()> {
        if vtl > self.vtl {
            Err(HvError::ACCESS_DENIED)
        } else {
            Ok(())
        }
    }
}

/// The highest VTL in `set` (bit n for VTL n) below `vtl`.
fn highest_below(set: u16, vtl: Vtl) -> Option<Vtl> {
    (0..vtl.0.min(16))
        .rev()
        .find(|&v| set & (1 << v) != 0)
        .map(Vtl)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Caller = Caller {
        partition: PartitionId(9),
        vp: VpIndex(2),
        vtl: Vtl::VTL1,
    };

    /// TLFS HvCallEnablePartitionVtl, "Restrictions": a lower VTL always; a
    /// higher one only from the highest enabled VTL below it.
    #[test]
    fn enable_partition_vtl_rules() {
        let at = |vtl| Caller { vtl, ..ME };
        let s = PartitionId::SELF;
        let v0 = at(Vtl::VTL0);
        assert_eq!(
            v0.enable_partition_vtl(s, Vtl::VTL1, 0b1, Vtl::VTL2),
            Ok(())
        );
        assert_eq!(
            v0.enable_partition_vtl(s, Vtl::VTL2, 0b1, Vtl::VTL2),
            Ok(())
        );
        assert_eq!(
            v0.enable_partition_vtl(PartitionId(8), Vtl::VTL1, 0b1, Vtl::VTL2),
            Err(HvError::ACCESS_DENIED)
        );
        assert_eq!(
            v0.enable_partition_vtl(s, Vtl::VTL2, 0b1, Vtl::VTL1),
            Err(HvError::INVALID_PARAMETER)
        );
        assert_eq!(
            v0.enable_partition_vtl(s, Vtl(16), 0b1, Vtl(15)),
            Err(HvError::INVALID_PARAMETER)
        );
        // VTL1 is enabled: VTL0 is no longer the highest below VTL2.
        assert_eq!(
            v0.enable_partition_vtl(s, Vtl::VTL2, 0b11, Vtl::VTL2),
            Err(HvError::ACCESS_DENIED)
        );
        assert_eq!(
            at(Vtl::VTL1).enable_partition_vtl(s, Vtl::VTL2, 0b11, Vtl::VTL2),
            Ok(())
        );
        assert_eq!(
            v0.enable_partition_vtl(s, Vtl::VTL1, 0b11, Vtl::VTL2),
            Err(HvError::VTL_ALREADY_ENABLED)
        );
        // A lower VTL, from above.
        assert_eq!(
            at(Vtl::VTL2).enable_partition_vtl(s, Vtl::VTL1, 0b101, Vtl::VTL2),
            Ok(())
        );
        assert_eq!(highest_below(0b101, Vtl::VTL2), Some(Vtl::VTL0));
        assert_eq!(highest_below(0b100, Vtl::VTL2), None);
    }

    /// TLFS HvCallModifyVtlProtectionMask: "A VTL can only place protections
    /// on a lower VTL".
    #[test]
    fn protection_target_rules() {
        let at = |vtl| Caller { vtl, ..ME };
        let s = PartitionId::SELF;
        let vtl = |v: u8| HvInputVtl(0x10 | v);
        assert_eq!(at(Vtl::VTL1).protection_target(s, vtl(0)), Ok(Vtl::VTL0));
        assert_eq!(at(Vtl::VTL2).protection_target(s, vtl(1)), Ok(Vtl::VTL1));
        // Itself, named or implied; a higher VTL; from VTL 0.
        assert_eq!(
            at(Vtl::VTL1).protection_target(s, vtl(1)),
            Err(HvError::ACCESS_DENIED)
        );
        assert_eq!(
            at(Vtl::VTL1).protection_target(s, HvInputVtl(0)),
            Err(HvError::ACCESS_DENIED)
        );
        assert_eq!(
            at(Vtl::VTL1).protection_target(s, vtl(2)),
            Err(HvError::ACCESS_DENIED)
        );
        assert_eq!(
            at(Vtl::VTL0).protection_target(s, vtl(0)),
            Err(HvError::ACCESS_DENIED)
        );
        // Reserved HV_INPUT_VTL bits; another partition.
        assert_eq!(
            at(Vtl::VTL1).protection_target(s, HvInputVtl(0x30)),
            Err(HvError::INVALID_PARAMETER)
        );
        assert_eq!(
            at(Vtl::VTL1).protection_target(PartitionId(8), vtl(0)),
            Err(HvError::ACCESS_DENIED)
        );
    }

    /// TLFS HvCallEnableVpVtl, "Restrictions".
    #[test]
    fn enable_vp_vtl_rules() {
        let at = |vtl| Caller { vtl, ..ME };
        let all = |_: VpIndex| true;
        let s = PartitionId::SELF;
        let v0 = at(Vtl::VTL0);
        // VTL1 not enabled for the partition.
        assert_eq!(
            v0.enable_vtl_target(s, VpIndex::SELF, Vtl::VTL1, 0b1, all),
            Err(HvError::INVALID_PARAMETER)
        );
        assert_eq!(
            v0.enable_vtl_target(s, VpIndex::SELF, Vtl::VTL1, 0b11, all),
            Ok(VpIndex(2))
        );
        // VTL0 is not the highest enabled VTL below VTL2.
        assert_eq!(
            v0.enable_vtl_target(s, VpIndex(1), Vtl::VTL2, 0b111, all),
            Err(HvError::ACCESS_DENIED)
        );
        assert_eq!(
            at(Vtl::VTL2).enable_vtl_target(s, VpIndex(1), Vtl::VTL2, 0b101, all),
            Ok(VpIndex(1))
        );
        assert_eq!(
            v0.enable_vtl_target(s, VpIndex(1), Vtl(16), 0xFFFF, all),
            Err(HvError::INVALID_PARAMETER)
        );
    }

    #[test]
    fn partition_ids() {
        assert_eq!(ME.partition(PartitionId::SELF), Ok(()));
        assert_eq!(ME.partition(PartitionId(9)), Ok(()));
        assert_eq!(ME.partition(PartitionId(8)), Err(HvError::ACCESS_DENIED));
    }

    #[test]
    fn input_vtls() {
        assert_eq!(ME.input_vtl(HvInputVtl::CURRENT), Ok(Vtl::VTL1));
        assert_eq!(
            ME.input_vtl(HvInputVtl::targeting(Vtl::VTL0)),
            Ok(Vtl::VTL0)
        );
        assert_eq!(
            ME.input_vtl(HvInputVtl::targeting(Vtl::VTL1)),
            Ok(Vtl::VTL1)
        );
        assert_eq!(
            ME.input_vtl(HvInputVtl::targeting(Vtl::VTL2)),
            Err(HvError::ACCESS_DENIED)
        );
        // Reserved bits 7:5 (TLFS HV_INPUT_VTL).
        assert_eq!(
            ME.input_vtl(HvInputVtl(0x20)),
            Err(HvError::INVALID_PARAMETER)
        );
    }

    #[test]
    fn start_checks_come_in_the_tlfs_order() {
        let all = |_: VpIndex| true;
        let none = |_: VpIndex| false;
        // Partition before VP.
        assert_eq!(
            ME.start_target(PartitionId(1), VpIndex(7), Vtl::VTL0, none),
            Err(HvError::ACCESS_DENIED)
        );
        assert_eq!(
            ME.start_target(PartitionId::SELF, VpIndex(7), Vtl::VTL2, none),
            Err(HvError::INVALID_VP_INDEX)
        );
        // Self (by index or HV_VP_INDEX_SELF) before the VTL.
        for me in [VpIndex(2), VpIndex::SELF] {
            assert_eq!(
                ME.start_target(PartitionId::SELF, me, Vtl::VTL2, all),
                Err(HvError::INVALID_PARAMETER)
            );
        }
        assert_eq!(
            ME.start_target(PartitionId::SELF, VpIndex(3), Vtl::VTL2, all),
            Err(HvError::ACCESS_DENIED)
        );
        assert_eq!(
            ME.start_target(PartitionId(9), VpIndex(3), Vtl::VTL1, all),
            Ok(VpIndex(3))
        );
    }

    #[test]
    fn enable_checks() {
        let all = |_: VpIndex| true;
        assert_eq!(
            ME.enable_vtl_target(PartitionId(1), VpIndex(2), Vtl::VTL1, 0b111, all),
            Err(HvError::ACCESS_DENIED)
        );
        assert_eq!(
            ME.enable_vtl_target(PartitionId::SELF, VpIndex(5), Vtl::VTL1, 0b111, |_| false),
            Err(HvError::INVALID_VP_INDEX)
        );
        // VTL1 is the highest enabled VTL below VTL2: it may enable VTL2.
        assert_eq!(
            ME.enable_vtl_target(PartitionId::SELF, VpIndex::SELF, Vtl::VTL2, 0b111, all),
            Ok(VpIndex(2))
        );
        assert_eq!(
            ME.enable_vtl_target(PartitionId::SELF, VpIndex::SELF, Vtl::VTL1, 0b111, all),
            Ok(VpIndex(2))
        );
    }
}
