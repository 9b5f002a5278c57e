//! Reading and writing registers by HV name through a vCPU's KVM state.

use core::fmt;

use hv_defs::{HvError, HvRegisterValue};
use kvm_bindings::{kvm_debugregs, kvm_regs, kvm_sregs};

use crate::location::{
    activity_from_mp_state, location, mp_state_from_activity, segment_from_kvm, segment_to_kvm,
    table_from_kvm, table_to_kvm, DebugRegister, KvmRegister, Synthetic,
};
use crate::validate::{validate_for, RegisterFault};
use crate::{CpuVendor, HvRegisterName};

/// A vCPU's state, grouped the way KVM's ioctls group it: the seam between the
/// HV register names and a KVM-shaped backend.
///
/// [`KvmVcpu`](crate::KvmVcpu) (feature `kvm`) implements it over a
/// `kvm_ioctls::VcpuFd`. The registers a VP model keeps rather than the vCPU
/// (explicit and intercept suspend, VP index, VSM status, initial APIC id) are
/// optional: a backend without a VP model leaves [`Self::get_synthetic`] and
/// [`Self::set_synthetic`] to their defaults, and those names are refused as
/// unknown. A backend that speaks HV names natively (MSHV) implements
/// [`HvRegisterAccess`] instead. Every method takes `&self`, as KVM's vCPU ioctls
/// do.
pub trait VcpuRegisters {
    /// The backend's error (an ioctl failure, for KVM).
    type Error;

    /// KVM_GET_REGS.
    fn get_regs(&self) -> Result<kvm_regs, Self::Error>;
    /// KVM_SET_REGS.
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), Self::Error>;
    /// KVM_GET_SREGS.
    fn get_sregs(&self) -> Result<kvm_sregs, Self::Error>;
    /// KVM_SET_SREGS.
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), Self::Error>;
    /// KVM_GET_DEBUGREGS.
    fn get_debugregs(&self) -> Result<kvm_debugregs, Self::Error>;
    /// KVM_SET_DEBUGREGS.
    fn set_debugregs(&self, dregs: &kvm_debugregs) -> Result<(), Self::Error>;
    /// XCR0 through KVM_GET_XCRS.
    fn get_xcr0(&self) -> Result<u64, Self::Error>;
    /// XCR0 through KVM_SET_XCRS.
    fn set_xcr0(&self, value: u64) -> Result<(), Self::Error>;
    /// One MSR through KVM_GET_MSRS.
    fn get_msr(&self, index: u32) -> Result<u64, Self::Error>;
    /// One MSR through KVM_SET_MSRS.
    fn set_msr(&self, index: u32, value: u64) -> Result<(), Self::Error>;
    /// KVM_GET_MP_STATE.
    fn get_mp_state(&self) -> Result<u32, Self::Error>;
    /// KVM_SET_MP_STATE.
    fn set_mp_state(&self, state: u32) -> Result<(), Self::Error>;
    /// A register of the VP model; `None` if the backend has no VP model.
    fn get_synthetic(&self, reg: Synthetic) -> Option<Result<u64, Self::Error>> {
        let _ = reg;
        None
    }
    /// Writes a register of the VP model (the value has been validated); `None`
    /// if the backend has no VP model.
    fn set_synthetic(&self, reg: Synthetic, value: u64) -> Option<Result<(), Self::Error>> {
        let _ = (reg, value);
        None
    }
    /// The processor vendor the vCPU presents in CPUID, for the vendor-specific
    /// register rules of [`validate_for`].
    fn cpu_vendor(&self) -> CpuVendor;
}

/// Why a register access failed.
#[derive(Debug, PartialEq, Eq)]
pub enum AccessError<E> {
    /// The name or value was refused; the vCPU was not touched.
    Fault(RegisterFault),
    /// The backend failed.
    Backend(E),
}

impl<E> AccessError<E> {
    /// The HV_STATUS to report: the fault's status, or `HV_STATUS_INVALID_PARAMETER`
    /// when the backend (KVM) refused the value.
    pub fn status(&self) -> HvError {
        match self {
            AccessError::Fault(f) => f.status(),
            AccessError::Backend(_) => HvError::INVALID_PARAMETER,
        }
    }
}

impl<E: fmt::Display> fmt::Display for AccessError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessError::Fault(x) => write!(f, "{x}"),
            AccessError::Backend(e) => write!(f, "KVM refused the access: {e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for AccessError<E> {}

fn backend<E>(e: E) -> AccessError<E> {
    AccessError::Backend(e)
}

/// Reads register `name` of `vcpu`.
pub fn get_register<V: VcpuRegisters>(
    vcpu: &V,
    name: HvRegisterName,
) -> Result<HvRegisterValue, AccessError<V::Error>> {
    let loc = location(name).ok_or(AccessError::Fault(RegisterFault::UnknownName(name)))?;
    Ok(match loc {
        KvmRegister::Gpr(g) => g.field(&vcpu.get_regs().map_err(backend)?).into(),
        KvmRegister::Segment(s) => {
            segment_from_kvm(s.field(&vcpu.get_sregs().map_err(backend)?)).into()
        }
        KvmRegister::Table(t) => {
            table_from_kvm(t.field(&vcpu.get_sregs().map_err(backend)?)).into()
        }
        KvmRegister::Control(c) => c.field(&vcpu.get_sregs().map_err(backend)?).into(),
        KvmRegister::Debug(d) => {
            let dr = vcpu.get_debugregs().map_err(backend)?;
            match d {
                DebugRegister::Dr(n) => dr.db[(n & 3) as usize],
                DebugRegister::Dr6 => dr.dr6,
                DebugRegister::Dr7 => dr.dr7,
            }
            .into()
        }
        KvmRegister::Xcr0 => vcpu.get_xcr0().map_err(backend)?.into(),
        KvmRegister::Msr(i) => vcpu.get_msr(i).map_err(backend)?.into(),
        KvmRegister::MpState => {
            activity_from_mp_state(vcpu.get_mp_state().map_err(backend)?).into()
        }
        KvmRegister::Synthetic(s) => vcpu
            .get_synthetic(s)
            .ok_or(AccessError::Fault(RegisterFault::UnknownName(name)))?
            .map_err(backend)?
            .into(),
    })
}

/// Writes `value` to register `name` of `vcpu`, after [`validate_for`]; a refused value
/// leaves the vCPU untouched.
///
/// Like HvSetVpRegisters, it has no side effects beyond the register itself.
pub fn set_register<V: VcpuRegisters>(
    vcpu: &V,
    name: HvRegisterName,
    value: HvRegisterValue,
) -> Result<(), AccessError<V::Error>> {
    validate_for(name, value, vcpu.cpu_vendor()).map_err(AccessError::Fault)?;
    let loc = location(name).ok_or(AccessError::Fault(RegisterFault::UnknownName(name)))?;
    let low = value.low;
    match loc {
        KvmRegister::Gpr(g) => {
            let mut regs = vcpu.get_regs().map_err(backend)?;
            *g.field_mut(&mut regs) = low;
            vcpu.set_regs(&regs).map_err(backend)
        }
        KvmRegister::Segment(s) => {
            let mut sregs = vcpu.get_sregs().map_err(backend)?;
            *s.field_mut(&mut sregs) = segment_to_kvm(value.as_segment());
            vcpu.set_sregs(&sregs).map_err(backend)
        }
        KvmRegister::Table(t) => {
            let mut sregs = vcpu.get_sregs().map_err(backend)?;
            *t.field_mut(&mut sregs) = table_to_kvm(value.as_table());
            vcpu.set_sregs(&sregs).map_err(backend)
        }
        KvmRegister::Control(c) => {
            let mut sregs = vcpu.get_sregs().map_err(backend)?;
            *c.field_mut(&mut sregs) = low;
            vcpu.set_sregs(&sregs).map_err(backend)
        }
        KvmRegister::Debug(d) => {
            let mut dr = vcpu.get_debugregs().map_err(backend)?;
            match d {
                DebugRegister::Dr(n) => dr.db[(n & 3) as usize] = low,
                DebugRegister::Dr6 => dr.dr6 = low,
                DebugRegister::Dr7 => dr.dr7 = low,
            }
            vcpu.set_debugregs(&dr).map_err(backend)
        }
        KvmRegister::Xcr0 => vcpu.set_xcr0(low).map_err(backend),
        KvmRegister::Msr(i) => vcpu.set_msr(i, low).map_err(backend),
        KvmRegister::MpState => {
            // validate() guarantees the value is representable.
            let mp = mp_state_from_activity(low).ok_or(AccessError::Fault(
                RegisterFault::Inconsistent {
                    name,
                    why: "activity state KVM cannot represent",
                },
            ))?;
            vcpu.set_mp_state(mp).map_err(backend)
        }
        KvmRegister::Synthetic(s) => vcpu
            .set_synthetic(s, low)
            .ok_or(AccessError::Fault(RegisterFault::UnknownName(name)))?
            .map_err(backend),
    }
}

/// Writes several registers as one batch, the way HvSetVpRegisters applies a rep
/// list: every value is validated first (a refused one is reported with its
/// position and nothing is written); then each group of KVM state (`kvm_sregs`,
/// `kvm_regs`, debug registers, XCR0, MSRs, MP state, VP model) is read once,
/// updated with all of its registers, and written once. A batch can therefore move
/// a vCPU into long mode (CR0, CR4, EFER and CS together), which single writes
/// cannot because KVM checks each intermediate state.
///
/// On a backend failure the position is that of the first register of the group
/// KVM refused; groups written before it stay written.
pub fn set_registers<V: VcpuRegisters>(
    vcpu: &V,
    values: &[(HvRegisterName, HvRegisterValue)],
) -> Result<(), (usize, AccessError<V::Error>)> {
    let mut locs = Vec::with_capacity(values.len());
    let vendor = vcpu.cpu_vendor();
    for (i, &(name, value)) in values.iter().enumerate() {
        validate_for(name, value, vendor).map_err(|f| (i, AccessError::Fault(f)))?;
        let loc =
            location(name).ok_or((i, AccessError::Fault(RegisterFault::UnknownName(name))))?;
        locs.push(loc);
    }
    let first = |pred: &dyn Fn(&KvmRegister) -> bool| locs.iter().position(pred);
    let fail = |i: Option<usize>| move |e| (i.unwrap_or(0), AccessError::Backend(e));

    let is_sregs = |l: &KvmRegister| {
        matches!(
            l,
            KvmRegister::Segment(_) | KvmRegister::Table(_) | KvmRegister::Control(_)
        )
    };
    if let Some(i0) = first(&is_sregs) {
        let mut sregs = vcpu.get_sregs().map_err(fail(Some(i0)))?;
        for (loc, &(_, value)) in locs.iter().zip(values) {
            match *loc {
                KvmRegister::Segment(s) => {
                    *s.field_mut(&mut sregs) = segment_to_kvm(value.as_segment())
                }
                KvmRegister::Table(t) => *t.field_mut(&mut sregs) = table_to_kvm(value.as_table()),
                KvmRegister::Control(c) => *c.field_mut(&mut sregs) = value.low,
                KvmRegister::Gpr(_)
                | KvmRegister::Debug(_)
                | KvmRegister::Xcr0
                | KvmRegister::Msr(_)
                | KvmRegister::MpState
                | KvmRegister::Synthetic(_) => {}
            }
        }
        vcpu.set_sregs(&sregs).map_err(fail(Some(i0)))?;
    }
    if let Some(i0) = first(&|l| matches!(l, KvmRegister::Gpr(_))) {
        let mut regs = vcpu.get_regs().map_err(fail(Some(i0)))?;
        for (loc, &(_, value)) in locs.iter().zip(values) {
            if let KvmRegister::Gpr(g) = *loc {
                *g.field_mut(&mut regs) = value.low;
            }
        }
        vcpu.set_regs(&regs).map_err(fail(Some(i0)))?;
    }
    if let Some(i0) = first(&|l| matches!(l, KvmRegister::Debug(_))) {
        let mut dr = vcpu.get_debugregs().map_err(fail(Some(i0)))?;
        for (loc, &(_, value)) in locs.iter().zip(values) {
            match *loc {
                KvmRegister::Debug(DebugRegister::Dr(n)) => dr.db[(n & 3) as usize] = value.low,
                KvmRegister::Debug(DebugRegister::Dr6) => dr.dr6 = value.low,
                KvmRegister::Debug(DebugRegister::Dr7) => dr.dr7 = value.low,
                KvmRegister::Gpr(_)
                | KvmRegister::Segment(_)
                | KvmRegister::Table(_)
                | KvmRegister::Control(_)
                | KvmRegister::Xcr0
                | KvmRegister::Msr(_)
                | KvmRegister::MpState
                | KvmRegister::Synthetic(_) => {}
            }
        }
        vcpu.set_debugregs(&dr).map_err(fail(Some(i0)))?;
    }
    for (i, (loc, &(name, value))) in locs.iter().zip(values).enumerate() {
        match *loc {
            KvmRegister::Xcr0
            | KvmRegister::Msr(_)
            | KvmRegister::MpState
            | KvmRegister::Synthetic(_) => set_register(vcpu, name, value).map_err(|e| (i, e))?,
            KvmRegister::Gpr(_)
            | KvmRegister::Segment(_)
            | KvmRegister::Table(_)
            | KvmRegister::Control(_)
            | KvmRegister::Debug(_) => {}
        }
    }
    Ok(())
}

/// HvRegisterVsmVpStatus (TLFS "Virtual Secure Mode", VSM registers): active VTL
/// (bits 3:0), active MBEC (bit 4), reserved (bits 15:5), enabled VTL set (bits
/// 31:16), reserved (bits 63:32).
///
/// ```
/// use hv_regs::VsmVpStatus;
/// use hv_defs::Vtl;
/// let s = VsmVpStatus::new(Vtl::VTL2, 0b101);
/// assert_eq!(s.active_vtl(), Vtl::VTL2);
/// assert_eq!(s.enabled_vtl_set(), 0b101);
/// assert_eq!(s.0, 0x0005_0002);
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct VsmVpStatus(pub u64);

impl VsmVpStatus {
    /// A status with `active` as the active VTL and `enabled` as the enabled set.
    pub const fn new(active: hv_defs::Vtl, enabled: u16) -> Self {
        VsmVpStatus((active.0 as u64 & 0xF) | ((enabled as u64) << 16))
    }
    /// Active VTL (bits 3:0).
    pub const fn active_vtl(self) -> hv_defs::Vtl {
        hv_defs::Vtl((self.0 & 0xF) as u8)
    }
    /// Active MBEC (bit 4).
    pub const fn active_mbec_enabled(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// Set of enabled VTLs, bit n for VTL n (bits 31:16).
    pub const fn enabled_vtl_set(self) -> u16 {
        ((self.0 >> 16) & 0xFFFF) as u16
    }
}

/// Register access by HV name: the seam a VMM's hypercall or management code
/// uses, whatever the backend. Every [`VcpuRegisters`] backend has it through the
/// KVM mapping of this crate (validation included); a backend that speaks HV
/// register names natively (MSHV, a VP model of one's own) implements it
/// directly.
pub trait HvRegisterAccess {
    /// The backend's error.
    type Error;
    /// Reads `names` into `values` (same length); `Err((i, e))` if name `i`
    /// failed, with `values[..i]` read.
    fn get_hv_registers(
        &self,
        names: &[HvRegisterName],
        values: &mut [HvRegisterValue],
    ) -> Result<(), (usize, Self::Error)>;
    /// Writes `registers` as one batch; `Err((i, e))` names the register that
    /// failed.
    fn set_hv_registers(
        &self,
        registers: &[(HvRegisterName, HvRegisterValue)],
    ) -> Result<(), (usize, Self::Error)>;
}

impl<V: VcpuRegisters> HvRegisterAccess for V {
    type Error = AccessError<V::Error>;
    fn get_hv_registers(
        &self,
        names: &[HvRegisterName],
        values: &mut [HvRegisterValue],
    ) -> Result<(), (usize, Self::Error)> {
        for (i, (&name, value)) in names.iter().zip(values.iter_mut()).enumerate() {
            *value = get_register(self, name).map_err(|e| (i, e))?;
        }
        Ok(())
    }
    fn set_hv_registers(
        &self,
        registers: &[(HvRegisterName, HvRegisterValue)],
    ) -> Result<(), (usize, Self::Error)> {
        set_registers(self, registers)
    }
}
