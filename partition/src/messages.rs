//! SynIC messages the host sends to a VTL of a VP (TLFS "SynIC Messages",
//! "Virtual Interrupts"): posted in the VTL's SIMP slot of the SINT, its
//! vector raised in that VTL's LAPIC, and, for a VTL above the one the VP
//! runs, the VP switched to it at once (entry reason Interrupt), whatever
//! the running VTL's RFLAGS.IF. One for a lower VTL waits in its SIMP and
//! LAPIC until the VP returns to it.

use hv_defs::message::HvMessage;
use hv_defs::{HvError, HvResult, VpIndex, Vtl};

use crate::partition::Partition;
use crate::synic::Posted;

impl Partition {
    /// Posts `message` on SINT `sint` (0-15) of VTL `vtl` of VP `index`:
    /// `HV_STATUS_INVALID_VP_INDEX` for no such VP, `HV_STATUS_INVALID_PARAMETER`
    /// for a SINT above 15, `HV_STATUS_INVALID_VTL_STATE` if `vtl` is not
    /// enabled on the VP. `Ok(true)` once the message is in its slot or waits
    /// for the slot (MessagePending set, delivered at the guest's EOM);
    /// `Ok(false)` if the VTL's SynIC or SIMP is disabled (dropped).
    ///
    /// ```no_run
    /// # fn f(p: &hv_partition::Partition) {
    /// use hv_defs::message::{HvMessage, HvMessageType};
    /// use zerocopy::FromZeros;
    /// let mut m = HvMessage::new_zeroed();
    /// m.header.message_type = HvMessageType(1);
    /// m.header.payload_size = 8;
    /// p.post_message(hv_defs::VpIndex(0), hv_defs::Vtl::VTL1, 2, &m).unwrap();
    /// # }
    /// ```
    pub fn post_message(
        &self,
        index: VpIndex,
        vtl: Vtl,
        sint: u8,
        message: &HvMessage,
    ) -> HvResult<bool> {
        let vp = self.vp_shared(index).ok_or(HvError::INVALID_VP_INDEX)?;
        if sint > 15 {
            return Err(HvError::INVALID_PARAMETER);
        }
        let mut g = vp.lock();
        if !g.state.vtl_enabled(vtl) {
            return Err(HvError::INVALID_VTL_STATE);
        }
        let may_write = |page| self.vtl_may_access(vtl, page, 0x1000, true);
        let posted = g.synic[vtl.0 as usize].post(sint.into(), message, &self.memory, &may_write);
        let preempt =
            matches!(posted, Posted::Delivered(_) | Posted::Queued) && vtl > g.state.active_vtl();
        if preempt {
            g.pending_entry = Some(vtl);
        }
        drop(g);
        if let Posted::Delivered(Some(vector)) = posted {
            self.raise(vtl, &vp, vector);
        }
        if preempt {
            vp.gate.notify();
            vp.gate.kick(|g| g.pending_entry.is_some());
        }
        Ok(!matches!(posted, Posted::Dropped))
    }

    /// Raises `vector` in the LAPIC of `vp`'s vCPU in `vtl` (an MSI to its
    /// APIC id in that VTL's VM): a SynIC message's SINT. A host failure is
    /// logged.
    pub(crate) fn raise(&self, vtl: hv_defs::Vtl, vp: &crate::shared::VpShared, vector: u8) {
        let Some(space) = self.space(vtl) else {
            return;
        };
        let apic_id = vp.lock().initial_apic_id;
        let msi = kvm_bindings::kvm_msi {
            address_lo: 0xFEE0_0000 | ((apic_id & 0xFF) << 12),
            address_hi: 0,
            data: vector.into(),
            ..Default::default()
        };
        if let Err(e) = space.vm.signal_msi(msi) {
            log::debug!(
                "VP {} VTL {}: SINT vector {vector:#x} not raised: {e}",
                vp.index.0,
                vtl.0
            );
        }
    }
}
