//! Guest hypercalls of the Microsoft Hypervisor (TLFS), dispatched without KVM.
//!
//! A VMM that traps a guest's hypercall (through a hypercall page, a VMCALL exit,
//! whatever its hypervisor gives it) hands this crate the call as a
//! [`HypercallInput`] (control word, input and output GPAs), its guest memory
//! through rust-vmm's [`vm_memory`] traits (any [`GuestMemoryBackend`]), and the
//! calls it serves ([`Calls`], one trait per call). [`dispatch`] then does what
//! the TLFS "Hypercall Interface" requires of every call, in one place:
//!
//! * the control word: an unknown code is `HV_STATUS_INVALID_HYPERCALL_CODE`;
//!   RsvdZ bits, the nested flag, rep fields wrong for the call's kind, the fast
//!   flag or a variable header on a call that takes neither are
//!   `HV_STATUS_INVALID_HYPERCALL_INPUT`;
//! * the parameter blocks: misaligned, spanning a page, or outside guest memory
//!   is `HV_STATUS_INVALID_ALIGNMENT`; the output block is checked before the call
//!   acts; RsvdZ input fields are `HV_STATUS_INVALID_PARAMETER`;
//! * rep calls: the list is read from the rep start index, the handler sees only
//!   the reps still to do, and the result counts reps completed over the whole list;
//!   the outputs of completed reps are written at their place in the output list,
//!   and nothing outside the output block is ever written.
//!
//! What each call means is the handler's: the dispatcher validates shapes, not
//! semantics, and has no policy. The checks that depend only on who calls
//! (partition id, `HV_VP_INDEX_SELF`, HV_INPUT_VTL, StartVirtualProcessor's and
//! EnableVpVtl's order of checks) are shared as [`Caller`]. Codes this crate does
//! not parse, and calls the VMM does not list, go to its [`Fallback`]; the
//! accessors are written by [`impl_calls!`].
//!
//! ```
//! use hv_defs::{HvResult, HypercallCode, HypercallControl, PartitionId};
//! use hv_hypercall::{dispatch, Calls, GetPartitionId, HypercallInput};
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//!
//! struct Vmm;
//! impl GetPartitionId for Vmm {
//!     fn get_partition_id(&mut self) -> HvResult<PartitionId> {
//!         Ok(PartitionId(7))
//!     }
//! }
//! impl Calls for Vmm {
//!     fn hv_call_get_partition_id(&mut self) -> Option<&mut dyn GetPartitionId> {
//!         Some(self)
//!     }
//! }
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
//! let call = HypercallInput {
//!     control: HypercallControl::new(HypercallCode::GET_PARTITION_ID),
//!     input: 0,
//!     output: 0x2000,
//! };
//! let result = dispatch(&mem, call, &mut Vmm);
//! assert_eq!(result.status(), hv_defs::HvStatus::SUCCESS);
//! assert_eq!(mem.read_obj::<u64>(GuestAddress(0x2000)).unwrap(), 7);
//! // A call the VMM does not serve.
//! let other = HypercallInput { control: HypercallControl::new(HypercallCode(0x7777)), ..call };
//! assert_eq!(dispatch(&mem, other, &mut Vmm).status(), hv_defs::HvError::INVALID_HYPERCALL_CODE.status());
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
// Guest-visible enums are matched without catch-all arms.
#![deny(clippy::wildcard_enum_match_arm)]

use hv_defs::{
    check_parameter_block, ApicIdElement, EnablePartitionVtlInput, EnableVpVtlInput,
    GetVpIndexFromApicIdHeader, GetVpRegistersElement, GuestInput, HvError, HvInputVtl,
    HvRegisterName, HvRegisterValue, HvResult, HvStatus, HypercallCode, HypercallControl,
    HypercallResult, InitialVpContext, ModifyVtlProtectionMaskHeader, PartitionId,
    SetVpRegistersElement, StartVirtualProcessorInput, VpIndex, VpIndexElement, VpRegistersHeader,
    Vtl,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use zerocopy::IntoBytes;

pub use caller::Caller;
pub use vm_memory;

mod caller;

/// A hypercall as the guest issued it: the TLFS register ABI, already taken
/// from the caller's registers (RCX, RDX, R8 for a 64-bit caller; EDX:EAX,
/// EBX:ECX, EDI:ESI for a 32-bit one).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HypercallInput {
    /// The hypercall input value.
    pub control: HypercallControl,
    /// The input parameters' GPA, or the first fast input.
    pub input: u64,
    /// The output parameters' GPA, or the second fast input.
    pub output: u64,
}

/// The outcome of the reps a rep-call handler was given: `Err((status, n))`
/// when rep `n` of them (counted from the first one given) failed, after `n`
/// completed.
pub type HvRepResult = Result<(), (HvError, usize)>;

/// HvCallGetPartitionId.
pub trait GetPartitionId {
    /// The caller's partition id.
    fn get_partition_id(&mut self) -> HvResult<PartitionId>;
}

/// HvCallNotifyLongSpinWait (a fast call; RDX holds the spin count).
pub trait NotifyLongSpinWait {
    /// A hint that the caller has spun `spin_count` times on a lock.
    fn notify_long_spin_wait(&mut self, spin_count: u64) -> HvResult<()>;
}

/// HvCallGetVpRegisters (rep).
pub trait GetVpRegisters {
    /// Reads `names` of VP `vp_index` at `input_vtl` into `values` (same length).
    fn get_vp_registers(
        &mut self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        input_vtl: HvInputVtl,
        names: &[HvRegisterName],
        values: &mut [HvRegisterValue],
    ) -> HvRepResult;
}

/// HvCallSetVpRegisters (rep).
pub trait SetVpRegisters {
    /// Writes `registers` of VP `vp_index` at `input_vtl`, in order.
    fn set_vp_registers(
        &mut self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        input_vtl: HvInputVtl,
        registers: &[(HvRegisterName, HvRegisterValue)],
    ) -> HvRepResult;
}

/// HvCallEnableVpVtl.
pub trait EnableVpVtl {
    /// Enables `target_vtl` on VP `vp_index` with `context` as its initial state.
    fn enable_vp_vtl(
        &mut self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        target_vtl: Vtl,
        context: &InitialVpContext,
    ) -> HvResult<()>;
}

/// HvCallEnablePartitionVtl.
pub trait EnablePartitionVtl {
    /// Enables `target_vtl` for the partition; `flags` is
    /// HV_ENABLE_PARTITION_VTL_FLAGS (reserved bits already refused).
    fn enable_partition_vtl(
        &mut self,
        partition_id: PartitionId,
        target_vtl: Vtl,
        flags: u8,
    ) -> HvResult<()>;
}

/// HvCallStartVirtualProcessor.
pub trait StartVirtualProcessor {
    /// Starts VP `vp_index` at `target_vtl` with `context`.
    fn start_virtual_processor(
        &mut self,
        partition_id: PartitionId,
        vp_index: VpIndex,
        target_vtl: Vtl,
        context: &InitialVpContext,
    ) -> HvResult<()>;
}

/// HvCallGetVpIndexFromApicId (rep).
pub trait GetVpIndexFromApicId {
    /// The VP index of each of `apic_ids`, into `vp_indexes` (same length).
    fn get_vp_index_from_apic_id(
        &mut self,
        partition_id: PartitionId,
        target_vtl: HvInputVtl,
        apic_ids: &[u32],
        vp_indexes: &mut [VpIndex],
    ) -> HvRepResult;
}

/// HvCallModifyVtlProtectionMask (rep).
pub trait ModifyVtlProtectionMask {
    /// Applies `map_flags` (HV_MAP_GPA_FLAGS) to `target_vtl`'s access to
    /// each of `gpa_pages` (GPA page numbers), in order; on a failure, the
    /// status with how many pages were done.
    fn modify_vtl_protection_mask(
        &mut self,
        partition_id: PartitionId,
        map_flags: u32,
        target_vtl: HvInputVtl,
        gpa_pages: &[u64],
    ) -> HvRepResult;
}

/// The calls the VMM serves itself: any code this crate does not parse
/// (unknown to `hv-defs`: no control-word check has been made, the VMM makes
/// its own), and any code whose accessor in [`Calls`] returns `None` (its
/// control word checked).
pub trait Fallback {
    /// Serves `call` and returns its result value.
    fn hypercall(&mut self, call: HypercallInput) -> HypercallResult;
}

/// The calls a VMM serves: each accessor returns the handler of its call, or
/// `None` (the default): the call then goes to [`Calls::hv_call_fallback`]'s
/// handler, and without one the guest sees `HV_STATUS_INVALID_HYPERCALL_CODE`.
/// A type usually implements the call traits itself and lists them with
/// [`impl_calls!`], which writes the accessors.
pub trait Calls {
    /// HvCallGetPartitionId (0x0046).
    fn hv_call_get_partition_id(&mut self) -> Option<&mut dyn GetPartitionId> {
        None
    }
    /// HvCallNotifyLongSpinWait (0x0008).
    fn hv_call_notify_long_spin_wait(&mut self) -> Option<&mut dyn NotifyLongSpinWait> {
        None
    }
    /// HvCallGetVpRegisters (0x0050).
    fn hv_call_get_vp_registers(&mut self) -> Option<&mut dyn GetVpRegisters> {
        None
    }
    /// HvCallSetVpRegisters (0x0051).
    fn hv_call_set_vp_registers(&mut self) -> Option<&mut dyn SetVpRegisters> {
        None
    }
    /// HvCallEnablePartitionVtl (0x000D).
    fn hv_call_enable_partition_vtl(&mut self) -> Option<&mut dyn EnablePartitionVtl> {
        None
    }
    /// HvCallEnableVpVtl (0x000F).
    fn hv_call_enable_vp_vtl(&mut self) -> Option<&mut dyn EnableVpVtl> {
        None
    }
    /// HvCallStartVirtualProcessor (0x0099).
    fn hv_call_start_virtual_processor(&mut self) -> Option<&mut dyn StartVirtualProcessor> {
        None
    }
    /// HvCallGetVpIndexFromApicId (0x009A).
    fn hv_call_get_vp_index_from_apic_id(&mut self) -> Option<&mut dyn GetVpIndexFromApicId> {
        None
    }
    /// HvCallModifyVtlProtectionMask (0x000C).
    fn hv_call_modify_vtl_protection_mask(&mut self) -> Option<&mut dyn ModifyVtlProtectionMask> {
        None
    }
    /// Every call not served above ([`Fallback`]).
    fn hv_call_fallback(&mut self) -> Option<&mut dyn Fallback> {
        None
    }
}

/// Implements [`Calls`] for a type that implements the listed call traits
/// itself: each accessor returns `Some(self)`, the others `None`.
///
/// ```
/// use hv_defs::{HvResult, HypercallCode, HypercallControl, HypercallResult, PartitionId};
/// use hv_hypercall::{dispatch, Fallback, GetPartitionId, HypercallInput};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// struct Vmm;
/// impl GetPartitionId for Vmm {
///     fn get_partition_id(&mut self) -> HvResult<PartitionId> {
///         Ok(PartitionId(7))
///     }
/// }
/// // A call of the VMM's own (HvCallFlushVirtualAddressSpace, 0x0002).
/// impl Fallback for Vmm {
///     fn hypercall(&mut self, call: HypercallInput) -> HypercallResult {
///         match call.control.code() {
///             HypercallCode(0x0002) => HypercallResult::new(hv_defs::HvStatus::SUCCESS, 0),
///             _ => HypercallResult::error(hv_defs::HvError::INVALID_HYPERCALL_CODE),
///         }
///     }
/// }
/// hv_hypercall::impl_calls!(Vmm: GetPartitionId, Fallback);
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
/// let call = |code| HypercallInput {
///     control: HypercallControl::new(HypercallCode(code)),
///     input: 0,
///     output: 0x2000,
/// };
/// assert_eq!(dispatch(&mem, call(0x46), &mut Vmm).status(), hv_defs::HvStatus::SUCCESS);
/// assert_eq!(dispatch(&mem, call(0x02), &mut Vmm).status(), hv_defs::HvStatus::SUCCESS);
/// assert_eq!(
///     dispatch(&mem, call(0x7777), &mut Vmm).status(),
///     hv_defs::HvError::INVALID_HYPERCALL_CODE.status()
/// );
/// ```
#[macro_export]
macro_rules! impl_calls {
    ($ty:ty : $($call:ident),+ $(,)?) => {
        impl $crate::Calls for $ty {
            $( $crate::__calls_accessor!($call); )+
        }
    };
}

/// One accessor of [`impl_calls!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __calls_accessor {
    (GetPartitionId) => {
        fn hv_call_get_partition_id(&mut self) -> Option<&mut dyn $crate::GetPartitionId> {
            Some(self)
        }
    };
    (NotifyLongSpinWait) => {
        fn hv_call_notify_long_spin_wait(&mut self) -> Option<&mut dyn $crate::NotifyLongSpinWait> {
            Some(self)
        }
    };
    (GetVpRegisters) => {
        fn hv_call_get_vp_registers(&mut self) -> Option<&mut dyn $crate::GetVpRegisters> {
            Some(self)
        }
    };
    (SetVpRegisters) => {
        fn hv_call_set_vp_registers(&mut self) -> Option<&mut dyn $crate::SetVpRegisters> {
            Some(self)
        }
    };
    (EnablePartitionVtl) => {
        fn hv_call_enable_partition_vtl(&mut self) -> Option<&mut dyn $crate::EnablePartitionVtl> {
            Some(self)
        }
    };
    (EnableVpVtl) => {
        fn hv_call_enable_vp_vtl(&mut self) -> Option<&mut dyn $crate::EnableVpVtl> {
            Some(self)
        }
    };
    (StartVirtualProcessor) => {
        fn hv_call_start_virtual_processor(
            &mut self,
        ) -> Option<&mut dyn $crate::StartVirtualProcessor> {
            Some(self)
        }
    };
    (GetVpIndexFromApicId) => {
        fn hv_call_get_vp_index_from_apic_id(
            &mut self,
        ) -> Option<&mut dyn $crate::GetVpIndexFromApicId> {
            Some(self)
        }
    };
    (ModifyVtlProtectionMask) => {
        fn hv_call_modify_vtl_protection_mask(
            &mut self,
        ) -> Option<&mut dyn $crate::ModifyVtlProtectionMask> {
            Some(self)
        }
    };
    (Fallback) => {
        fn hv_call_fallback(&mut self) -> Option<&mut dyn $crate::Fallback> {
            Some(self)
        }
    };
}

/// Guest memory as the dispatcher uses it: parameter blocks read and written by
/// GPA, every failure `HV_STATUS_INVALID_ALIGNMENT` (TLFS common status table:
/// misaligned, spanning pages, or outside the GPA space).
struct Params<'m, M: ?Sized> {
    memory: &'m M,
}

impl<M: GuestMemoryBackend + ?Sized> Params<'_, M> {
    fn read(&self, gpa: u64, len: usize) -> HvResult<Vec<u8>> {
        check_parameter_block(gpa, len as u64)?;
        let mut buf = vec![0u8; len];
        self.memory
            .read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|_| HvError::INVALID_ALIGNMENT)?;
        Ok(buf)
    }

    fn check_output(&self, gpa: u64, len: usize) -> HvResult<()> {
        check_parameter_block(gpa, len as u64)?;
        if len > 0 && !self.memory.check_range(GuestAddress(gpa), len) {
            return Err(HvError::INVALID_ALIGNMENT);
        }
        Ok(())
    }

    fn write(&self, gpa: u64, bytes: &[u8]) -> HvResult<()> {
        self.memory
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|_| HvError::INVALID_ALIGNMENT)
    }
}

fn simple(r: HvResult<()>) -> HypercallResult {
    HypercallResult::new(HvStatus::from(r), 0)
}

/// A rep call's result: `start` plus the reps the handler completed.
fn reps(start: usize, n: usize, r: HvRepResult) -> HypercallResult {
    match r {
        Ok(()) => HypercallResult::new(HvStatus::SUCCESS, (start + n) as u16),
        Err((e, done)) => HypercallResult::new(e.status(), (start + done.min(n)) as u16),
    }
}

/// Serves one hypercall: checks the control word and the parameter blocks,
/// reads the input from `memory`, calls the handler `calls` provides, and
/// writes the output. Returns the hypercall result value for the caller's RAX
/// (or EDX:EAX). Never panics, whatever the guest passed.
pub fn dispatch<M: GuestMemoryBackend + ?Sized>(
    memory: &M,
    call: HypercallInput,
    calls: &mut dyn Calls,
) -> HypercallResult {
    let result = dispatch_inner(&Params { memory }, call, calls);
    if result.status() != HvStatus::SUCCESS {
        log::debug!(
            "hypercall {:?} refused: {:?} after {} reps",
            call.control.code(),
            result.status(),
            result.reps_completed()
        );
    }
    result
}

fn dispatch_inner<M: GuestMemoryBackend + ?Sized>(
    p: &Params<'_, M>,
    call: HypercallInput,
    calls: &mut dyn Calls,
) -> HypercallResult {
    let c = call.control;
    // What is not served here goes to the VMM's fallback, if it has one.
    let unserved = |calls: &mut dyn Calls| match calls.hv_call_fallback() {
        Some(f) => f.hypercall(call),
        None => HypercallResult::error(HvError::INVALID_HYPERCALL_CODE),
    };
    if c.code().kind().is_none() {
        return unserved(calls);
    }
    if let Err(e) = c.check() {
        return HypercallResult::error(e);
    }
    if c.code() == HypercallCode::NOTIFY_LONG_SPIN_WAIT {
        // A fast call: the spin count is in RDX.
        if c.variable_header_size() != 0 {
            return HypercallResult::error(HvError::INVALID_HYPERCALL_INPUT);
        }
        return match calls.hv_call_notify_long_spin_wait() {
            Some(h) => simple(h.notify_long_spin_wait(call.input)),
            None => unserved(calls),
        };
    }
    if c.code() == HypercallCode::ENABLE_PARTITION_VTL {
        // 16 bytes of input, from memory or, as a fast call, from RDX then R8
        // (TLFS "Register Mapping for Hypercall Inputs").
        if c.variable_header_size() != 0 {
            return HypercallResult::error(HvError::INVALID_HYPERCALL_INPUT);
        }
        let Some(h) = calls.hv_call_enable_partition_vtl() else {
            return unserved(calls);
        };
        return simple((|| {
            let i = if c.fast() {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&call.input.to_le_bytes());
                bytes[8..].copy_from_slice(&call.output.to_le_bytes());
                EnablePartitionVtlInput::parse(&bytes)?
            } else {
                let bytes = p.read(call.input, size_of::<EnablePartitionVtlInput>())?;
                EnablePartitionVtlInput::read_from_guest(&bytes, call.input)?
            };
            h.enable_partition_vtl(i.partition_id, i.target_vtl, i.flags)
        })());
    }
    // Every other call served here takes its input from memory.
    if c.fast() || c.variable_header_size() != 0 {
        return HypercallResult::error(HvError::INVALID_HYPERCALL_INPUT);
    }
    let (n, start) = (c.rep_count() as usize, c.rep_start_index() as usize);
    let failed = |e: HvError| HypercallResult::new(e.status(), start as u16);
    match c.code() {
        HypercallCode::GET_PARTITION_ID => {
            let Some(h) = calls.hv_call_get_partition_id() else {
                return unserved(calls);
            };
            simple((|| {
                p.check_output(call.output, 8)?;
                let id = h.get_partition_id()?;
                p.write(call.output, id.as_bytes())
            })())
        }
        HypercallCode::GET_VP_REGISTERS => {
            let Some(h) = calls.hv_call_get_vp_registers() else {
                return unserved(calls);
            };
            let input = (|| {
                let bytes = p.read(call.input, 16 + 4 * n)?;
                let header = VpRegistersHeader::read_from_guest(&bytes, call.input)?;
                p.check_output(call.output, 16 * n)?;
                let names = bytes[16 + 4 * start..]
                    .chunks_exact(4)
                    .map(|e| GetVpRegistersElement::parse(e).map(|e| HvRegisterName(e.name)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, HvError>((header, names))
            })();
            let (header, names) = match input {
                Ok(i) => i,
                Err(e) => return failed(e),
            };
            let mut values = vec![HvRegisterValue::default(); names.len()];
            let r = h.get_vp_registers(
                header.partition_id,
                header.vp_index,
                header.input_vtl,
                &names,
                &mut values,
            );
            let done = match r {
                Ok(()) => names.len(),
                Err((_, d)) => d.min(names.len()),
            };
            if done > 0 {
                if let Err(e) = p.write(call.output + 16 * start as u64, values[..done].as_bytes())
                {
                    return failed(e);
                }
            }
            reps(start, names.len(), r)
        }
        HypercallCode::SET_VP_REGISTERS => {
            let Some(h) = calls.hv_call_set_vp_registers() else {
                return unserved(calls);
            };
            let input = (|| {
                let bytes = p.read(call.input, 16 + 32 * n)?;
                let header = VpRegistersHeader::read_from_guest(&bytes, call.input)?;
                Ok::<_, HvError>((header, bytes))
            })();
            let (header, bytes) = match input {
                Ok(i) => i,
                Err(e) => return failed(e),
            };
            // Elements up to the first with a set RsvdZ field; that one fails.
            let mut regs = Vec::with_capacity(n - start);
            let mut bad = None;
            for e in bytes[16 + 32 * start..].chunks_exact(32) {
                match SetVpRegistersElement::parse(e) {
                    Ok(e) => regs.push((HvRegisterName(e.name), e.value)),
                    Err(err) => {
                        bad = Some(HvError::from(err));
                        break;
                    }
                }
            }
            let r = h.set_vp_registers(
                header.partition_id,
                header.vp_index,
                header.input_vtl,
                &regs,
            );
            match (r, bad) {
                (Ok(()), Some(e)) => reps(start, regs.len(), Err((e, regs.len()))),
                (r, _) => reps(start, regs.len(), r),
            }
        }
        HypercallCode::ENABLE_VP_VTL => {
            let Some(h) = calls.hv_call_enable_vp_vtl() else {
                return unserved(calls);
            };
            simple((|| {
                let bytes = p.read(call.input, size_of::<EnableVpVtlInput>())?;
                let i = EnableVpVtlInput::read_from_guest(&bytes, call.input)?;
                h.enable_vp_vtl(i.partition_id, i.vp_index, i.target_vtl, &i.vp_vtl_context)
            })())
        }
        HypercallCode::START_VIRTUAL_PROCESSOR => {
            let Some(h) = calls.hv_call_start_virtual_processor() else {
                return unserved(calls);
            };
            simple((|| {
                let bytes = p.read(call.input, size_of::<StartVirtualProcessorInput>())?;
                let i = StartVirtualProcessorInput::read_from_guest(&bytes, call.input)?;
                h.start_virtual_processor(i.partition_id, i.vp_index, i.target_vtl, &i.vp_context)
            })())
        }
        HypercallCode::GET_VP_INDEX_FROM_APIC_ID => {
            let Some(h) = calls.hv_call_get_vp_index_from_apic_id() else {
                return unserved(calls);
            };
            let input = (|| {
                let bytes = p.read(call.input, 16 + 4 * n)?;
                let header = GetVpIndexFromApicIdHeader::read_from_guest(&bytes, call.input)?;
                p.check_output(call.output, 4 * n)?;
                let ids = bytes[16 + 4 * start..]
                    .chunks_exact(4)
                    .map(|e| ApicIdElement::parse(e).map(|e| e.apic_id))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, HvError>((header, ids))
            })();
            let (header, ids) = match input {
                Ok(i) => i,
                Err(e) => return failed(e),
            };
            let mut out = vec![VpIndex(0); ids.len()];
            let r =
                h.get_vp_index_from_apic_id(header.partition_id, header.target_vtl, &ids, &mut out);
            let done = match r {
                Ok(()) => ids.len(),
                Err((_, d)) => d.min(ids.len()),
            };
            if done > 0 {
                let bytes: Vec<u8> = out[..done]
                    .iter()
                    .flat_map(|&vp_index| VpIndexElement { vp_index }.as_bytes().to_vec())
                    .collect();
                if let Err(e) = p.write(call.output + 4 * start as u64, &bytes) {
                    return failed(e);
                }
            }
            reps(start, ids.len(), r)
        }
        HypercallCode::MODIFY_VTL_PROTECTION_MASK => {
            let Some(h) = calls.hv_call_modify_vtl_protection_mask() else {
                return unserved(calls);
            };
            let input = (|| {
                let bytes = p.read(call.input, 16 + 8 * n)?;
                let header = ModifyVtlProtectionMaskHeader::read_from_guest(&bytes, call.input)?;
                let pages: Vec<u64> = bytes[16 + 8 * start..]
                    .chunks_exact(8)
                    .map(|e| u64::from_le_bytes(e.try_into().unwrap_or([0; 8])))
                    .collect();
                Ok::<_, HvError>((header, pages))
            })();
            let (header, pages) = match input {
                Ok(i) => i,
                Err(e) => return failed(e),
            };
            let r = h.modify_vtl_protection_mask(
                header.partition_id,
                header.map_flags,
                header.target_vtl,
                &pages,
            );
            reps(start, pages.len(), r)
        }
        _ => unserved(calls),
    }
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
