//! Guest hypercalls trapped by the hypercall page, served from the guest's input
//! and output pages.

use std::time::Instant;

use exit_decoder::HypercallExit;
use hv_defs::{
    check_parameter_block, ApicIdElement, EnableVpVtlInput, GetPartitionIdOutput,
    GetVpIndexFromApicIdHeader, GetVpRegistersElement, GuestInput, HvError, HvRegisterValue,
    HvResult, HvStatus, HypercallCode, HypercallControl, HypercallResult, PartitionId,
    SetVpRegistersElement, StartVirtualProcessorInput, VpIndex, VpIndexElement, VpRegistersHeader,
    Vtl,
};
use hv_regs::{location, HvRegisterName, KvmRegister, Synthetic};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::IntoBytes;

use crate::partition::{start_vp, VpShared};
use crate::vp::{access_status, Vp};

/// A rep call's outcome: the status and how many reps completed.
struct Reps {
    status: HvStatus,
    completed: u16,
}

impl Reps {
    fn done(n: u16) -> Self {
        Reps {
            status: HvStatus::SUCCESS,
            completed: n,
        }
    }
    fn failed(e: HvError, completed: u16) -> Self {
        Reps {
            status: e.status(),
            completed,
        }
    }
}

impl Vp {
    /// Serves the hypercall whose registers KVM synced at the trap, and arranges
    /// for its result to be in RAX (EDX:EAX for a 32-bit caller) when the guest
    /// resumes.
    pub(crate) fn handle_hypercall(&mut self, long: bool) {
        let start = Instant::now();
        let regs = self.synced_regs();
        let hc = if long {
            HypercallExit::from_regs(&regs)
        } else {
            HypercallExit::from_regs_x86(&regs)
        };
        let result = self.dispatch(hc);
        self.set_result(result.0, long);
        self.partition()
            .stats
            .hypercall(hc.control.code(), result.status(), start.elapsed());
    }

    fn dispatch(&mut self, hc: HypercallExit) -> HypercallResult {
        let control = hc.control;
        if let Err(e) = control.check() {
            return HypercallResult::error(e);
        }
        let code = control.code();
        if code == HypercallCode::NOTIFY_LONG_SPIN_WAIT {
            // A hint; nothing to do.
            return HypercallResult::new(HvStatus::SUCCESS, 0);
        }
        // Every other call served here takes its input from memory.
        if control.fast() || control.variable_header_size() != 0 {
            return HypercallResult::error(HvError::INVALID_HYPERCALL_INPUT);
        }
        let simple = |r: HvResult<()>| HypercallResult::new(HvStatus::from(r), 0);
        let rep = |r: Reps| HypercallResult::new(r.status, r.completed);
        match code {
            HypercallCode::GET_PARTITION_ID => simple(self.get_partition_id(hc.r8)),
            HypercallCode::GET_VP_REGISTERS => rep(self.get_vp_registers(control, hc.rdx, hc.r8)),
            HypercallCode::SET_VP_REGISTERS => rep(self.set_vp_registers(control, hc.rdx)),
            HypercallCode::ENABLE_VP_VTL => simple(self.enable_vp_vtl(hc.rdx)),
            HypercallCode::START_VIRTUAL_PROCESSOR => simple(self.start_vp(hc.rdx)),
            HypercallCode::GET_VP_INDEX_FROM_APIC_ID => {
                rep(self.get_vp_index_from_apic_id(control, hc.rdx, hc.r8))
            }
            _ => HypercallResult::error(HvError::INVALID_HYPERCALL_CODE),
        }
    }

    /// Reads `len` bytes of hypercall input at `gpa`: 8-byte aligned, within one
    /// page, inside guest memory. Each failure is HV_STATUS_INVALID_ALIGNMENT, as
    /// the TLFS common status table gives it (misaligned, spanning pages, outside
    /// the GPA space).
    fn read_input(&self, gpa: u64, len: usize) -> HvResult<Vec<u8>> {
        check_parameter_block(gpa, len as u64)?;
        let mut buf = vec![0u8; len];
        self.partition()
            .memory()
            .read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|_| HvError::INVALID_ALIGNMENT)?;
        Ok(buf)
    }

    /// Checks an output block of `len` bytes at `gpa` before anything is done,
    /// with the statuses of [`Vp::read_input`].
    fn check_output(&self, gpa: u64, len: usize) -> HvResult<()> {
        check_parameter_block(gpa, len as u64)?;
        let mem = self.partition().memory();
        if len > 0 && !vm_memory::GuestMemoryBackend::check_range(mem, GuestAddress(gpa), len) {
            return Err(HvError::INVALID_ALIGNMENT);
        }
        Ok(())
    }

    fn write_output(&self, gpa: u64, bytes: &[u8]) -> HvResult<()> {
        self.partition()
            .memory()
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|_| HvError::INVALID_ALIGNMENT)
    }

    /// The partition id a guest names must be its own.
    fn check_partition(&self, id: PartitionId) -> HvResult<()> {
        if id == PartitionId::SELF || id == self.partition().id() {
            Ok(())
        } else {
            Err(HvError::ACCESS_DENIED)
        }
    }

    /// The VP a guest names: HV_VP_INDEX_SELF or an existing VP.
    fn target(&self, index: VpIndex) -> HvResult<std::sync::Arc<VpShared>> {
        if index == VpIndex::SELF || index == self.index() {
            return Ok(self.shared().clone());
        }
        self.partition()
            .vp_shared(index)
            .ok_or(HvError::INVALID_VP_INDEX)
    }

    fn active_vtl(&self) -> Vtl {
        self.shared().lock().state.active_vtl()
    }

    /// An input VTL selector against the caller's VTL: only the caller's own VTL is
    /// served; a higher one is `ACCESS_DENIED`, a lower one `INVALID_VTL_STATE`
    /// (this partition keeps one register set per VP).
    fn check_input_vtl(&self, sel: hv_defs::HvInputVtl) -> HvResult<()> {
        let active = self.active_vtl();
        match sel.target()? {
            None => Ok(()),
            Some(v) if v == active => Ok(()),
            Some(v) if v > active => Err(HvError::ACCESS_DENIED),
            Some(_) => Err(HvError::INVALID_VTL_STATE),
        }
    }

    fn get_partition_id(&self, out: u64) -> HvResult<()> {
        let o = GetPartitionIdOutput {
            partition_id: self.partition().id(),
        };
        self.check_output(out, o.as_bytes().len())?;
        self.write_output(out, o.as_bytes())
    }

    /// Reads a Get/SetVpRegisters input (the header and `n` elements of `elem`
    /// bytes) and resolves the VP it names.
    fn vp_registers_input(
        &self,
        input: u64,
        elem: usize,
        n: usize,
    ) -> HvResult<(Vec<u8>, std::sync::Arc<VpShared>)> {
        let bytes = self.read_input(input, 16 + elem * n)?;
        let header = VpRegistersHeader::read_from_guest(&bytes, input)?;
        self.check_partition(header.partition_id)?;
        let target = self.target(header.vp_index)?;
        self.check_input_vtl(header.input_vtl)?;
        Ok((bytes, target))
    }

    /// Runs reps `start..count` of a rep call whose rep `i` yields `size` bytes of
    /// output, stopping at the first failure; writes the output of the completed
    /// reps at their place in the output list.
    fn rep_outputs(
        &mut self,
        c: HypercallControl,
        output: u64,
        size: usize,
        mut rep: impl FnMut(&mut Self, usize) -> HvResult<Vec<u8>>,
    ) -> Reps {
        let (n, start) = (c.rep_count() as usize, c.rep_start_index() as usize);
        let mut out = Vec::with_capacity(size * n.saturating_sub(start));
        let mut status = Ok(());
        for i in start..n {
            match rep(self, i) {
                Ok(bytes) => out.extend(bytes),
                Err(e) => {
                    status = Err(e);
                    break;
                }
            }
        }
        let done = start + out.len() / size;
        if done > start {
            if let Err(e) = self.write_output(output + (size * start) as u64, &out) {
                return Reps::failed(e, start as u16);
            }
        }
        match status {
            Ok(()) => Reps::done(done as u16),
            Err(e) => Reps::failed(e, done as u16),
        }
    }

    fn get_vp_registers(&mut self, c: HypercallControl, input: u64, output: u64) -> Reps {
        let n = c.rep_count() as usize;
        let prepared = self
            .vp_registers_input(input, 4, n)
            .and_then(|p| self.check_output(output, 16 * n).map(|()| p));
        let (bytes, target) = match prepared {
            Ok(p) => p,
            Err(e) => return Reps::failed(e, c.rep_start_index()),
        };
        let own = std::sync::Arc::ptr_eq(&target, self.shared());
        self.rep_outputs(c, output, 16, |vp, i| {
            let elem = GetVpRegistersElement::parse(&bytes[16 + 4 * i..])?;
            let name = HvRegisterName(elem.name);
            let value = if own {
                hv_regs::get_register(&vp.regs(), name).map_err(access_status)?
            } else {
                synthetic_of_other(&target, name)?
            };
            Ok(value.as_bytes().to_vec())
        })
    }

    fn set_vp_registers(&mut self, c: HypercallControl, input: u64) -> Reps {
        let n = c.rep_count() as usize;
        let start = c.rep_start_index() as usize;
        let (bytes, target) = match self.vp_registers_input(input, 32, n) {
            Ok(p) => p,
            Err(e) => return Reps::failed(e, c.rep_start_index()),
        };
        let own = std::sync::Arc::ptr_eq(&target, self.shared());
        for i in start..n {
            let off = 16 + 32 * i;
            let r = SetVpRegistersElement::parse(&bytes[off..])
                .map_err(HvError::from)
                .and_then(|e| {
                    let name = HvRegisterName(e.name);
                    if own {
                        hv_regs::set_register(&self.regs(), name, e.value).map_err(access_status)
                    } else {
                        set_synthetic_of_other(&target, name, e.value)
                    }
                });
            if let Err(e) = r {
                return Reps::failed(e, i as u16);
            }
        }
        Reps::done(n as u16)
    }

    fn enable_vp_vtl(&mut self, input: u64) -> HvResult<()> {
        let bytes = self.read_input(input, 240)?;
        let i = EnableVpVtlInput::read_from_guest(&bytes, input)?;
        self.check_partition(i.partition_id)?;
        let target = self.target(i.vp_index)?;
        if i.target_vtl > self.active_vtl() {
            return Err(HvError::ACCESS_DENIED);
        }
        let mut g = target.lock();
        let enabled = g.state.enable_vtl(i.target_vtl)?;
        hv_regs::context_to_kvm(&i.vp_vtl_context, &Default::default())
            .map_err(hv_regs::context_status)?;
        g.state = enabled;
        Ok(())
    }

    /// HvCallStartVirtualProcessor, checked in the TLFS order: partition, VP
    /// exists, not the caller, VTL not above the caller's, VTL enabled on the
    /// target, target not started, context valid.
    fn start_vp(&mut self, input: u64) -> HvResult<()> {
        let bytes = self.read_input(input, 240)?;
        let i = StartVirtualProcessorInput::read_from_guest(&bytes, input)?;
        self.check_partition(i.partition_id)?;
        let target = self.target(i.vp_index)?;
        if std::sync::Arc::ptr_eq(&target, self.shared()) {
            return Err(HvError::INVALID_PARAMETER);
        }
        if i.target_vtl > self.active_vtl() {
            return Err(HvError::ACCESS_DENIED);
        }
        start_vp(self.partition(), &target, i.target_vtl, &i.vp_context)?;
        self.partition().started(target.index, i.target_vtl);
        Ok(())
    }

    fn get_vp_index_from_apic_id(&mut self, c: HypercallControl, input: u64, output: u64) -> Reps {
        let n = c.rep_count() as usize;
        let prepared = (|| {
            let bytes = self.read_input(input, 16 + 4 * n)?;
            let header = GetVpIndexFromApicIdHeader::read_from_guest(&bytes, input)?;
            self.check_output(output, 4 * n)?;
            self.check_partition(header.partition_id)?;
            self.check_input_vtl(header.target_vtl)?;
            Ok(bytes)
        })();
        let bytes = match prepared {
            Ok(b) => b,
            Err(e) => return Reps::failed(e, c.rep_start_index()),
        };
        self.rep_outputs(c, output, 4, |vp, i| {
            let apic = ApicIdElement::parse(&bytes[16 + 4 * i..])?;
            let vp_index = vp.partition().vp_index_from_apic_id(apic.apic_id)?;
            Ok(VpIndexElement { vp_index }.as_bytes().to_vec())
        })
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

fn synthetic_of_other(vp: &VpShared, name: HvRegisterName) -> HvResult<HvRegisterValue> {
    Ok(vp.synthetic(other_vp_synthetic(name)?).into())
}

fn set_synthetic_of_other(
    vp: &VpShared,
    name: HvRegisterName,
    value: HvRegisterValue,
) -> HvResult<()> {
    hv_regs::validate(name, value)?;
    vp.set_synthetic(other_vp_synthetic(name)?, value.low)
}
