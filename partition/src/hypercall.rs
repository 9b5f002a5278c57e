//! Guest hypercalls trapped by the hypercall page, served from the guest's input
//! and output pages.

use std::sync::Arc;
use std::time::Instant;

use exit_decoder::CallerMode;
use hv_defs::{
    HvError, HvInputVtl, HvRegisterValue, HvResult, HypercallCode, InitialVpContext, PartitionId,
    VpIndex, Vtl,
};
use hv_hypercall::{
    Caller, EnablePartitionVtl, EnableVpVtl, GetPartitionId, GetVpIndexFromApicId, GetVpRegisters,
    HvRepResult, HypercallInput, ModifyVtlProtectionMask, NotifyLongSpinWait, SetVpRegisters,
    StartVirtualProcessor,
};
use hv_regs::{location, HvRegisterName, KvmRegister, Synthetic};

use crate::partition::start_vp;
use crate::shared::VpShared;
use crate::vp::{access_status, Vp};
use crate::vsm::Switch;

impl Vp {
    /// Serves the hypercall whose registers KVM synced at the trap (through the
    /// `hv-hypercall` dispatcher, this VP's calls behind it), and arranges for
    /// its result to be in RAX (EDX:EAX for a 32-bit caller) when the guest
    /// resumes.
    pub(crate) fn handle_hypercall(&mut self, mode: CallerMode) {
        let start = Instant::now();
        let regs = self.synced_regs();
        let Some(hc) = mode.hypercall(&regs) else {
            return;
        };
        let partition = self.partition().clone();
        let code = hc.control.code();
        if code == HypercallCode::VTL_CALL || code == HypercallCode::VTL_RETURN {
            // The page's VTL sequences moved the guest's control input to RAX
            // (a 32-bit caller's to EDX:ECX; see `hyperv::HYPERCALL_PAGE`).
            let control = match mode {
                CallerMode::Long => regs.rax,
                CallerMode::Protected | CallerMode::Illegal => {
                    ((regs.rdx & 0xFFFF_FFFF) << 32) | (regs.rcx & 0xFFFF_FFFF)
                }
            };
            let kind = if code == HypercallCode::VTL_CALL {
                Switch::Call
            } else {
                Switch::Return
            };
            self.vtl_switch(kind, control);
            partition
                .stats
                .hypercall(code, hv_defs::HvStatus::SUCCESS, start.elapsed());
            return;
        }
        let call = HypercallInput {
            control: hc.control,
            input: hc.rdx,
            output: hc.r8,
        };
        if !self.parameters_accessible(&call) {
            // A parameter page a higher VTL protects from the caller: the
            // VMM does not read or write it on the caller's behalf.
            let result = hv_defs::HypercallResult::error(HvError::ACCESS_DENIED);
            self.set_result(result.0, mode);
            return;
        }
        let result = hv_hypercall::dispatch(partition.memory(), call, &mut GuestCalls(self, mode));
        self.set_result(result.0, mode);
        partition
            .stats
            .hypercall(hc.control.code(), result.status(), start.elapsed());
    }
}

impl Vp {
    /// Whether the caller's VTL may read the input page and write the output
    /// page of a memory-form call (TLFS "Memory Access Protections": a
    /// higher VTL's protections apply to everything done on the lower VTL's
    /// behalf). Only the calls served here that write output have their
    /// output page checked; a fast call has no parameter pages.
    fn parameters_accessible(&self, call: &HypercallInput) -> bool {
        if call.control.fast() {
            return true;
        }
        let p = self.partition();
        let writes_output = matches!(
            call.control.code(),
            HypercallCode::GET_VP_REGISTERS
                | HypercallCode::GET_VP_INDEX_FROM_APIC_ID
                | HypercallCode::GET_PARTITION_ID
        );
        p.vtl_may_access(self.vtl, call.input, 1, false)
            && (!writes_output || p.vtl_may_access(self.vtl, call.output, 1, true))
    }
}

/// The calls this partition serves to its guests, for the dispatcher: the
/// calling VP and the mode it called from.
struct GuestCalls<'a>(&'a mut Vp, CallerMode);

impl GuestCalls<'_> {
    /// The calling VP, for the TLFS checks `hv-hypercall` shares.
    fn caller(&self) -> Caller {
        Caller {
            partition: self.0.partition().id(),
            vp: self.0.index(),
            vtl: self.0.shared().lock().state.active_vtl(),
        }
    }

    /// The VP a guest names: HV_VP_INDEX_SELF or an existing VP.
    fn target(&self, caller: &Caller, index: VpIndex) -> HvResult<Arc<VpShared>> {
        let index = caller.vp(index);
        if index == self.0.index() {
            return Ok(self.0.shared().clone());
        }
        self.0
            .partition()
            .vp_shared(index)
            .ok_or(HvError::INVALID_VP_INDEX)
    }

    /// The target of a Get/SetVpRegisters call, after its header's checks:
    /// the VP and the VTL ([`Caller::input_vtl`]: the caller's own, a lower
    /// one, never a higher one).
    fn registers_target(
        &self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        input_vtl: HvInputVtl,
    ) -> HvResult<(Arc<VpShared>, Vtl)> {
        let caller = self.caller();
        caller.partition(partition_id)?;
        let target = self.target(&caller, vp_index)?;
        let vtl = caller.input_vtl(input_vtl)?;
        Ok((target, vtl))
    }
}

impl GetPartitionId for GuestCalls<'_> {
    fn get_partition_id(&mut self) -> HvResult<PartitionId> {
        Ok(self.0.partition().id())
    }
}

impl NotifyLongSpinWait for GuestCalls<'_> {
    fn notify_long_spin_wait(&mut self, _spin_count: u64) -> HvResult<()> {
        // A hint; nothing to do.
        Ok(())
    }
}

impl GetVpRegisters for GuestCalls<'_> {
    fn get_vp_registers(
        &mut self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        input_vtl: HvInputVtl,
        names: &[HvRegisterName],
        values: &mut [HvRegisterValue],
    ) -> HvRepResult {
        let (target, vtl) = self
            .registers_target(partition_id, vp_index, input_vtl)
            .map_err(|e| (e, 0))?;
        let own = Arc::ptr_eq(&target, self.0.shared());
        for (i, (&name, value)) in names.iter().zip(values.iter_mut()).enumerate() {
            let v = if name == HvRegisterName::VSM_CODE_PAGE_OFFSETS
                && self.1 == CallerMode::Protected
            {
                // The sequences a 32-bit caller can execute.
                Ok(crate::hyperv::VSM_CODE_PAGE_OFFSETS_32.0.into())
            } else if let Some(s) = shared_register(name) {
                target.synthetic(s, vtl).map(HvRegisterValue::from)
            } else if own {
                match self.0.regs_for(name, vtl) {
                    Some(regs) => hv_regs::get_register(&regs, name).map_err(access_status),
                    None => Err(HvError::INVALID_VTL_STATE),
                }
            } else {
                synthetic_of_other(&target, name, vtl)
            };
            *value = v.map_err(|e| (e, i))?;
        }
        Ok(())
    }
}

impl SetVpRegisters for GuestCalls<'_> {
    fn set_vp_registers(
        &mut self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        input_vtl: HvInputVtl,
        registers: &[(HvRegisterName, HvRegisterValue)],
    ) -> HvRepResult {
        let (target, vtl) = self
            .registers_target(partition_id, vp_index, input_vtl)
            .map_err(|e| (e, 0))?;
        if Arc::ptr_eq(&target, self.0.shared()) {
            // One batch: a context's registers are consistent together, not
            // necessarily one by one (KVM checks each load of the special
            // registers).
            return self
                .0
                .set_vtl_registers_at(vtl, registers, true)
                .map_err(|(i, e)| (access_status(e), i));
        }
        for (i, &(name, value)) in registers.iter().enumerate() {
            set_synthetic_of_other(&target, name, vtl, value).map_err(|e| (e, i))?;
            if name == HvRegisterName::VSM_PARTITION_CONFIG {
                self.0
                    .partition()
                    .apply_default_protection(vtl)
                    .map_err(|e| (e, i))?;
            }
        }
        Ok(())
    }
}

impl ModifyVtlProtectionMask for GuestCalls<'_> {
    /// TLFS HvCallModifyVtlProtectionMask: the partition
    /// (`HV_STATUS_ACCESS_DENIED` for another); the target VTL's selector
    /// (reserved bits `HV_STATUS_INVALID_PARAMETER`); "a VTL can only place
    /// protections on a lower VTL" (`HV_STATUS_ACCESS_DENIED` for the
    /// caller's own VTL or a higher one, and for a caller that has not set
    /// EnableVtlProtection, [`crate::choices`]); then the flags and pages
    /// ([`crate::Partition`]'s rules: only what a memslot enforces, only
    /// RAM).
    fn modify_vtl_protection_mask(
        &mut self,
        partition_id: PartitionId,
        map_flags: u32,
        target_vtl: HvInputVtl,
        gpa_pages: &[u64],
    ) -> HvRepResult {
        let caller = self.caller();
        caller.partition(partition_id).map_err(|e| (e, 0))?;
        let target = target_vtl
            .target()
            .map_err(|e| (e, 0))?
            .unwrap_or(caller.vtl);
        let partition = self.0.partition().clone();
        if target >= caller.vtl || !partition.vsm.protection_enabled(caller.vtl) {
            return Err((HvError::ACCESS_DENIED, 0));
        }
        partition.modify_protection(caller.vtl, target, map_flags, gpa_pages)
    }
}

impl EnablePartitionVtl for GuestCalls<'_> {
    /// TLFS HvCallEnablePartitionVtl: the caller's checks ([`Caller`]), then
    /// EnableMbec refused with `HV_STATUS_INVALID_PARAMETER` (stock KVM cannot
    /// give execute permissions per mode; see [`crate::choices`]); then the
    /// VTL's VM is made (`HV_STATUS_INSUFFICIENT_MEMORY` if the host fails).
    fn enable_partition_vtl(
        &mut self,
        partition_id: PartitionId,
        target_vtl: Vtl,
        flags: u8,
    ) -> HvResult<()> {
        let partition = self.0.partition().clone();
        let (enabled, max) = partition.vsm_partition_status();
        self.caller()
            .enable_partition_vtl(partition_id, target_vtl, enabled, max)?;
        if flags & hv_defs::EnablePartitionVtlInput::ENABLE_MBEC != 0 {
            return Err(HvError::INVALID_PARAMETER);
        }
        partition.create_vtl_space(target_vtl).map_err(|e| {
            log::error!("cannot enable VTL {}: {e}", target_vtl.0);
            HvError::INSUFFICIENT_MEMORY
        })
    }
}

impl EnableVpVtl for GuestCalls<'_> {
    fn enable_vp_vtl(
        &mut self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        target_vtl: Vtl,
        context: &InitialVpContext,
    ) -> HvResult<()> {
        let caller = self.caller();
        let partition = self.0.partition().clone();
        let mut found = None;
        caller.enable_vtl_target(
            partition_id,
            vp_index,
            target_vtl,
            partition.vsm.enabled(),
            |i| {
                found = self.target(&caller, i).ok();
                found.is_some()
            },
        )?;
        let target = found.ok_or(HvError::INVALID_VP_INDEX)?;
        partition.enable_vtl_on(&target, target_vtl, context)
    }
}

impl StartVirtualProcessor for GuestCalls<'_> {
    /// Checked in the TLFS order: partition, VP exists, not the caller, VTL not
    /// above the caller's, VTL enabled on the target, target not started,
    /// context valid (and loadable: see [`crate::Partition`]).
    fn start_virtual_processor(
        &mut self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        target_vtl: Vtl,
        context: &InitialVpContext,
    ) -> HvResult<()> {
        let caller = self.caller();
        let mut found = None;
        caller.start_target(partition_id, vp_index, target_vtl, |i| {
            found = self.target(&caller, i).ok();
            found.is_some()
        })?;
        let target = found.ok_or(HvError::INVALID_VP_INDEX)?;
        start_vp(self.0.partition(), &target, target_vtl, context).map_err(|e| e.status())?;
        self.0.partition().started(target.index, target_vtl);
        Ok(())
    }
}

impl GetVpIndexFromApicId for GuestCalls<'_> {
    fn get_vp_index_from_apic_id(
        &mut self,
        partition_id: PartitionId,
        target_vtl: HvInputVtl,
        apic_ids: &[u32],
        vp_indexes: &mut [VpIndex],
    ) -> HvRepResult {
        let caller = self.caller();
        caller.partition(partition_id).map_err(|e| (e, 0))?;
        // Every VTL of a VP has the VP's APIC id.
        caller.input_vtl(target_vtl).map_err(|e| (e, 0))?;
        for (i, (&apic_id, out)) in apic_ids.iter().zip(vp_indexes.iter_mut()).enumerate() {
            *out = self
                .0
                .partition()
                .vp_index_from_apic_id(apic_id)
                .map_err(|e| (e, i))?;
        }
        Ok(())
    }
}

hv_hypercall::impl_calls!(GuestCalls<'_>:
    GetPartitionId,
    NotifyLongSpinWait,
    GetVpRegisters,
    SetVpRegisters,
    EnablePartitionVtl,
    EnableVpVtl,
    StartVirtualProcessor,
    GetVpIndexFromApicId,
    ModifyVtlProtectionMask,
);

/// The registers one VP shares across its VTLs, and the partition's, served
/// whatever the input VTL names (TLFS "Virtual Secure Mode": VsmVpStatus is
/// shared across VTLs; VP index; the partition-wide VSM registers, of which
/// VsmPartitionConfig has one instance per VTL, the one the input VTL names).
fn shared_register(name: HvRegisterName) -> Option<Synthetic> {
    match location(name) {
        Some(KvmRegister::Synthetic(
            s @ (Synthetic::VpIndex
            | Synthetic::VsmVpStatus
            | Synthetic::VsmPartitionStatus
            | Synthetic::VsmCapabilities
            | Synthetic::VsmCodePageOffsets
            | Synthetic::VsmPartitionConfig),
        )) => Some(s),
        _ => None,
    }
}

/// Another VP's registers are reachable only where the VP model keeps them: its
/// vCPU belongs to its own thread, which may be running.
fn other_vp_synthetic(name: HvRegisterName) -> HvResult<Synthetic> {
    match location(name) {
        Some(KvmRegister::Synthetic(s)) => Ok(s),
        Some(_) => Err(HvError::INVALID_VP_STATE),
        None => Err(HvError::INVALID_PARAMETER),
    }
}

fn synthetic_of_other(vp: &VpShared, name: HvRegisterName, vtl: Vtl) -> HvResult<HvRegisterValue> {
    vp.synthetic(other_vp_synthetic(name)?, vtl)
        .map(HvRegisterValue::from)
}

fn set_synthetic_of_other(
    vp: &VpShared,
    name: HvRegisterName,
    vtl: Vtl,
    value: HvRegisterValue,
) -> HvResult<()> {
    hv_regs::validate(name, value)?;
    vp.set_synthetic(other_vp_synthetic(name)?, vtl, value.low)
}
