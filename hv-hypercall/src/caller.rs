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
    /// the VP exists (`exists`) or `HV_STATUS_INVALID_VP_INDEX`, and a VTL above
    /// the caller's is `HV_STATUS_ACCESS_DENIED`. Returns the target VP.
    pub fn enable_vtl_target(
        &self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        target_vtl: Vtl,
        exists: impl FnOnce(VpIndex) -> bool,
    ) -> HvResult<VpIndex> {
        let target = self.existing_vp(partition_id, vp_index, exists)?;
        self.vtl_at_most_own(target_vtl)?;
        Ok(target)
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
    fn vtl_at_most_own(&self, vtl: Vtl) -> HvResult<()> {
        if vtl > self.vtl {
            Err(HvError::ACCESS_DENIED)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Caller = Caller {
        partition: PartitionId(9),
        vp: VpIndex(2),
        vtl: Vtl::VTL1,
    };

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
            ME.enable_vtl_target(PartitionId(1), VpIndex(2), Vtl::VTL1, all),
            Err(HvError::ACCESS_DENIED)
        );
        assert_eq!(
            ME.enable_vtl_target(PartitionId::SELF, VpIndex(5), Vtl::VTL1, |_| false),
            Err(HvError::INVALID_VP_INDEX)
        );
        assert_eq!(
            ME.enable_vtl_target(PartitionId::SELF, VpIndex::SELF, Vtl::VTL2, all),
            Err(HvError::ACCESS_DENIED)
        );
        assert_eq!(
            ME.enable_vtl_target(PartitionId::SELF, VpIndex::SELF, Vtl::VTL1, all),
            Ok(VpIndex(2))
        );
    }
}
