//! The part of a VP other threads reach ([`VpShared`]), and the partition-wide
//! state of the synthetic MSRs.

use std::sync::{Arc, MutexGuard};

use hv_defs::vsm::VsmVpSecureVtlConfig;
use hv_defs::{HvError, HvResult, InitialVpContext, VpIndex, Vtl};
use hv_regs::Synthetic;
use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;
use vp_state::VpState;

use crate::kick::VpKicker;
use crate::run_state::{RunGate, RunState, Runnable};
use crate::vtl::{VsmShared, VSM_CAPABILITIES};

/// The synthetic MSRs a partition keeps once per VTL.
#[derive(Debug, Default)]
pub(crate) struct HvPartitionState {
    pub guest_os_id: u64,
    pub hypercall: u64,
}

/// A vCPU made for a VTL of the VP by HvCallEnableVpVtl, with the context it
/// starts in at its first entry, for the VP's thread to take.
#[derive(Debug)]
pub(crate) struct VtlVcpu {
    pub vtl: Vtl,
    pub vcpu: VcpuFd,
    pub first_entry: InitialVpContext,
}

/// What a VP's thread must do next, besides running.
#[derive(Debug)]
pub(crate) struct VpInner {
    pub state: VpState,
    /// A context handed over by StartVirtualProcessor, to load before running.
    pub pending_start: Option<(Vtl, InitialVpContext)>,
    /// The host asked to cancel the current or next run.
    pub cancel: bool,
    /// The run protocol's part ([`crate::run_state`]).
    pub run: RunState,
    pub initial_apic_id: u32,
    /// HV_X64_MSR_VP_ASSIST_PAGE, per VTL.
    pub vp_assist_page: [u64; 3],
    /// vCPUs of newly enabled VTLs, not yet taken by the VP's thread.
    pub new_vtls: Vec<VtlVcpu>,
    /// HvRegisterVsmVpSecureConfigVtl`n`: `[higher][n]`, the higher VTL's
    /// configuration of lower VTL `n` on this VP.
    pub secure_config: [[u64; 3]; 3],
    /// The SynIC of each VTL.
    pub synic: [crate::synic::Synic; 3],
    /// A higher VTL to enter before the VP next runs its lower VTL, with
    /// entry reason Interrupt (a message the host posted to it).
    pub pending_entry: Option<Vtl>,
}

impl VpInner {
    pub fn new(state: VpState, initial_apic_id: u32) -> Self {
        VpInner {
            state,
            pending_start: None,
            cancel: false,
            run: RunState::default(),
            initial_apic_id,
            vp_assist_page: [0; 3],
            new_vtls: Vec::new(),
            secure_config: [[0; 3]; 3],
            synic: Default::default(),
            pending_entry: None,
        }
    }
}

impl VpInner {
    /// A VTL return from `vtl`: the TLB locks it holds on lower VTLs are
    /// released (TLFS "Configuring Lower VTLs", TlbLocked).
    pub fn release_tlb_locks(&mut self, vtl: Vtl) {
        if let Some(row) = self.secure_config.get_mut(vtl.0 as usize) {
            for c in row {
                *c &= !VsmVpSecureVtlConfig::TLB_LOCKED;
            }
        }
    }
}

impl Runnable for VpInner {
    fn run_state(&mut self) -> &mut RunState {
        &mut self.run
    }

    /// The VP model sees the run end.
    fn on_leave(&mut self) {
        if let Ok(s) = self.state.exit_run() {
            self.state = s;
        }
    }
}

/// The part of a VP other threads reach.
#[derive(Debug)]
pub(crate) struct VpShared {
    pub index: VpIndex,
    /// The vendor the vCPU's CPUID presents, for vendor-specific register rules.
    pub vendor: hv_regs::CpuVendor,
    /// The vCPU's CPUID as set when the VP was made (the partition's or the
    /// VMM's): the start checks load contexts with it.
    pub cpuid: CpuId,
    /// The guest TSC frequency (HV_X64_MSR_TSC_FREQUENCY), 0 if KVM does not say.
    pub tsc_hz: u64,
    /// The VP lock, its condition variable and its kicker.
    pub gate: RunGate<VpInner, VpKicker>,
    /// The partition's VSM state, for the VSM registers.
    pub vsm: Arc<VsmShared>,
}

impl VpShared {
    pub fn lock(&self) -> MutexGuard<'_, VpInner> {
        self.gate.lock()
    }

    /// A register the VP model keeps, as VTL `vtl` of the VP sees it (the
    /// instance of a per-VTL VSM register).
    pub fn synthetic(&self, reg: Synthetic, vtl: Vtl) -> HvResult<u64> {
        let g = self.lock();
        Ok(match reg {
            Synthetic::ExplicitSuspend => g.state.explicit_suspend() as u64,
            Synthetic::InterceptSuspend => g.state.intercept_suspend() as u64,
            Synthetic::VpIndex => self.index.0 as u64,
            Synthetic::VsmVpStatus => {
                hv_regs::VsmVpStatus::new(g.state.active_vtl(), g.state.enabled_vtls()).0
            }
            Synthetic::VsmPartitionStatus => self.vsm.status(),
            Synthetic::VsmCapabilities => VSM_CAPABILITIES,
            Synthetic::VsmCodePageOffsets => crate::hyperv::VSM_CODE_PAGE_OFFSETS.0,
            Synthetic::InitialApicId => g.initial_apic_id as u64,
            Synthetic::VsmPartitionConfig => self.vsm.config(vtl)?,
            Synthetic::VsmVpSecureConfig(lower) => {
                secure_config_instance(&g, vtl, lower).map(|(h, l)| g.secure_config[h][l])?
            }
        })
    }

    /// Writes a register the VP model keeps (the value has been validated). The
    /// initial APIC id may change only while the VP is explicitly suspended, before
    /// its parent releases it; VP index and VSM status are read-only. A suspend
    /// returns once the VP's thread is out of KVM_RUN (unless it is the caller's).
    pub fn set_synthetic(&self, reg: Synthetic, vtl: Vtl, value: u64) -> HvResult<()> {
        let mut g = self.lock();
        match reg {
            Synthetic::VsmPartitionConfig => return self.vsm.set_config(vtl, value),
            Synthetic::VsmVpSecureConfig(lower) => {
                let (h, l) = secure_config_instance(&g, vtl, lower)?;
                if value & VsmVpSecureVtlConfig::MBEC_ENABLED != 0 {
                    // Stock KVM cannot give separate user and supervisor
                    // execute permissions (no MBEC in VsmCapabilities).
                    return Err(HvError::INVALID_REGISTER_VALUE);
                }
                g.secure_config[h][l] = value;
                return Ok(());
            }
            Synthetic::ExplicitSuspend => g.state = g.state.set_explicit_suspend(value != 0),
            Synthetic::InterceptSuspend => g.state = g.state.set_intercept_suspend(value != 0),
            Synthetic::InitialApicId if !g.state.explicit_suspend() => {
                return Err(HvError::INVALID_VP_STATE)
            }
            Synthetic::InitialApicId => g.initial_apic_id = value as u32,
            Synthetic::VpIndex
            | Synthetic::VsmVpStatus
            | Synthetic::VsmPartitionStatus
            | Synthetic::VsmCapabilities
            | Synthetic::VsmCodePageOffsets => return Err(HvError::ACCESS_DENIED),
        }
        let suspended = g.state.suspended();
        drop(g);
        self.gate.notify();
        if suspended {
            self.gate.kick_and_wait(|g| g.state.suspended());
        }
        Ok(())
    }

    /// Cancels the VP's current or next run: its thread is woken or kicked, and
    /// its [`crate::Vp::run`] returns `Canceled`. Does not wait.
    pub fn cancel(&self) {
        self.lock().cancel = true;
        self.gate.notify();
        self.gate.kick(|g| g.cancel);
    }
}

/// The instance of HvRegisterVsmVpSecureConfigVtl`lower` that `vtl` reaches:
/// `HV_STATUS_INVALID_PARAMETER` unless `lower` is below `vtl` (each VTL above
/// 0 has one per lower VTL), `HV_STATUS_INVALID_VTL_STATE` unless `vtl` is
/// enabled on the VP.
fn secure_config_instance(g: &VpInner, vtl: Vtl, lower: Vtl) -> HvResult<(usize, usize)> {
    if lower >= vtl || vtl > Vtl::MAX_X64 {
        return Err(HvError::INVALID_PARAMETER);
    }
    if !g.state.vtl_enabled(vtl) {
        return Err(HvError::INVALID_VTL_STATE);
    }
    Ok((vtl.0 as usize, lower.0 as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TLFS "Configuring Lower VTLs", without KVM: each VTL above 0 has one
    /// instance per lower VTL; a return releases the TLB locks it holds.
    #[test]
    fn secure_config_instances_and_tlb_lock_release() {
        let state = VpState::new(VpIndex(0), Vtl::VTL0).unwrap();
        let mut g = VpInner::new(state.enable_vtl(Vtl::VTL1).unwrap(), 0);
        let at = |g: &VpInner, v, l| secure_config_instance(g, Vtl(v), Vtl(l));
        assert_eq!(at(&g, 1, 0), Ok((1, 0)));
        assert_eq!(at(&g, 1, 1), Err(HvError::INVALID_PARAMETER));
        assert_eq!(at(&g, 0, 0), Err(HvError::INVALID_PARAMETER));
        assert_eq!(at(&g, 3, 0), Err(HvError::INVALID_PARAMETER));
        assert_eq!(at(&g, 2, 0), Err(HvError::INVALID_VTL_STATE));
        g.secure_config[1][0] = VsmVpSecureVtlConfig::TLB_LOCKED;
        g.secure_config[2][1] = VsmVpSecureVtlConfig::TLB_LOCKED;
        g.release_tlb_locks(Vtl::VTL1);
        assert_eq!(g.secure_config[1][0], 0);
        assert_eq!(g.secure_config[2][1], VsmVpSecureVtlConfig::TLB_LOCKED);
        g.release_tlb_locks(Vtl(9));
    }
}
