//! KVM's own verdict on a StartVirtualProcessor context, before the target's
//! thread is handed it: the context is loaded on a spare vCPU that never runs,
//! with the target's CPUID, so a context the target could not load is refused
//! synchronously with `HV_STATUS_INVALID_REGISTER_VALUE` and the target is left
//! unstarted.

use hv_defs::{HvError, InitialVpContext};
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{VcpuFd, VmFd};

use crate::error::VpError;
use crate::partition::Partition;
use crate::shared::VpShared;

/// The spare vCPU of the start checks.
#[derive(Debug)]
pub(crate) struct Trial {
    /// A VM of its own, or none when the vCPU is a spare one of the partition's.
    _vm: Option<VmFd>,
    vcpu: VcpuFd,
    /// The CPUID the vCPU has, as [`cpuid_key`] (APIC ids left out).
    cpuid: Vec<[u32; 6]>,
    /// Contexts KVM accepted with that CPUID, as [`trial_key`]s: a start whose
    /// key is here is not loaded again.
    accepted: Vec<InitialVpContext>,
}

/// How many accepted contexts [`Trial`] remembers.
const TRIAL_MEMORY: usize = 8;
const EINVAL: i32 = 22;

/// The part of a start context KVM's verdict depends on. KVM_SET_SREGS checks
/// CR0, CR3, CR4, EFER and CS.L against the vCPU's CPUID; KVM_SET_MSRS checks
/// the PAT; KVM_SET_REGS checks nothing; no segment or table base is checked.
/// Everything else is kept, to stay on the safe side.
fn trial_key(ctx: &InitialVpContext) -> InitialVpContext {
    let mut k = *ctx;
    k.rip = 0;
    k.rsp = 0;
    for seg in [
        &mut k.cs,
        &mut k.ds,
        &mut k.es,
        &mut k.fs,
        &mut k.gs,
        &mut k.ss,
        &mut k.tr,
        &mut k.ldtr,
    ] {
        seg.base = 0;
    }
    k.idtr.base = 0;
    k.gdtr.base = 0;
    k
}

/// A CPUID without the fields that only name the processor (APIC ids), which
/// KVM's checks of a context do not read: two VPs of one configuration share it.
fn cpuid_key(cpuid: &CpuId) -> Vec<[u32; 6]> {
    cpuid
        .as_slice()
        .iter()
        .map(|e| {
            let (mut ebx, mut edx, mut eax) = (e.ebx, e.edx, e.eax);
            match e.function {
                1 => ebx &= 0x00FF_FFFF,
                0xB | 0x1F => edx = 0,
                0x8000_001E => eax = 0,
                _ => {}
            }
            [e.function, e.index, eax, ebx, e.ecx, edx]
        })
        .collect()
}

/// A KVM refusal of a context (`EINVAL`) is the guest's; anything else is the
/// host's, with its source.
fn refusal(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VpError {
    move |source| {
        if source.errno() == EINVAL {
            VpError::Status(HvError::INVALID_REGISTER_VALUE)
        } else {
            VpError::Kvm { what, source }
        }
    }
}

impl Partition {
    /// Loads `context` on the spare vCPU with `target`'s CPUID: what KVM
    /// refuses there (a CR4 bit the CPUID does not offer, CR3 above
    /// MAXPHYADDR, ...) the target could not load either. Refusals are
    /// `HV_STATUS_INVALID_REGISTER_VALUE`; a spare vCPU the host cannot provide
    /// is a host error with its source.
    pub(crate) fn check_context_loads(
        &self,
        target: &VpShared,
        context: &InitialVpContext,
    ) -> Result<(), VpError> {
        let mut trial = self.trial.lock().unwrap_or_else(|e| e.into_inner());
        let t = match &mut *trial {
            Some(t) => t,
            None => trial.insert(self.new_trial(&target.cpuid)?),
        };
        let key = cpuid_key(&target.cpuid);
        if t.cpuid != key {
            // The vCPU never ran: KVM takes a new CPUID.
            t.vcpu
                .set_cpuid2(&target.cpuid)
                .map_err(VpError::kvm("KVM_SET_CPUID2 (start check)"))?;
            t.cpuid = key;
            t.accepted.clear();
        }
        // The VP model's own checks (canonical RIP, segment attributes, ...) run
        // on every start; KVM's only for a context it has not accepted yet.
        let key = trial_key(context);
        if t.accepted.contains(&key) {
            return hv_regs::context_to_kvm(context, &Default::default())
                .map(|_| ())
                .map_err(|e| hv_regs::context_status(e).into());
        }
        let base = t
            .vcpu
            .get_sregs()
            .map_err(VpError::kvm("KVM_GET_SREGS (start check)"))?;
        let k = hv_regs::context_to_kvm(context, &base).map_err(hv_regs::context_status)?;
        t.vcpu
            .set_sregs(&k.sregs)
            .map_err(refusal("KVM_SET_SREGS (start check)"))?;
        t.vcpu
            .set_regs(&k.regs)
            .map_err(refusal("KVM_SET_REGS (start check)"))?;
        let pat = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: hv_regs::msr::PAT,
            data: k.pat,
            ..Default::default()
        }])
        .map_err(|_| VpError::Kvm {
            what: "an MSR list (start check)",
            source: kvm_ioctls::Error::new(libc::ENOMEM),
        })?;
        match t.vcpu.set_msrs(&pat) {
            Ok(1) => {
                if t.accepted.len() == TRIAL_MEMORY {
                    t.accepted.remove(0);
                }
                t.accepted.push(key);
                Ok(())
            }
            Ok(_) => Err(HvError::INVALID_REGISTER_VALUE.into()),
            Err(e) => Err(refusal("KVM_SET_MSRS (start check)")(e)),
        }
    }

    /// The spare vCPU of [`Self::check_context_loads`], with `cpuid`.
    fn new_trial(&self, cpuid: &CpuId) -> Result<Trial, VpError> {
        // A spare vCPU of the partition's own VM (id max_vps, beyond every VP;
        // it never runs and no table names it) costs no VM: creating and
        // destroying a VM each waits for KVM's grace periods. A VMM's adopted VM
        // is left alone: a VM of its own.
        let spare = (self.own_vm && (self.config.max_vps as usize) < self.kvm.get_max_vcpus())
            .then(|| self.vm.create_vcpu(self.config.max_vps as u64).ok())
            .flatten();
        let (vm, vcpu) = match spare {
            Some(vcpu) => (None, vcpu),
            None => {
                let vm = self
                    .kvm
                    .create_vm()
                    .map_err(VpError::kvm("KVM_CREATE_VM (start check)"))?;
                let vcpu = vm
                    .create_vcpu(0)
                    .map_err(VpError::kvm("KVM_CREATE_VCPU (start check)"))?;
                (Some(vm), vcpu)
            }
        };
        vcpu.set_cpuid2(cpuid)
            .map_err(VpError::kvm("KVM_SET_CPUID2 (start check)"))?;
        Ok(Trial {
            _vm: vm,
            vcpu,
            cpuid: cpuid_key(cpuid),
            accepted: Vec::new(),
        })
    }

    /// Prepares what the first StartVirtualProcessor needs (a spare vCPU on
    /// which start contexts are loaded for KVM's verdict) now, on the calling
    /// thread, and checks the `expected` contexts (say, the one a VMM's mailbox
    /// starts APs with) with the CPUID of the highest VP that exists, so starts
    /// with the same system state skip KVM's check; without this the first start
    /// pays for both. A VMM calls it once its APs are created, while the BSP
    /// runs. Failures are left for the starts to report.
    pub fn prepare_starts(&self, expected: &[InitialVpContext]) {
        let Some(vp) = (0..self.config.max_vps)
            .rev()
            .find_map(|i| self.existing_vp(hv_defs::VpIndex(i)))
        else {
            return;
        };
        for ctx in expected {
            let _ = self.check_context_loads(&vp, ctx);
        }
        if expected.is_empty() {
            let mut trial = self.trial.lock().unwrap_or_else(|e| e.into_inner());
            if trial.is_none() {
                *trial = self.new_trial(&vp.cpuid).ok();
            }
        }
    }
}

/// The CPUID a vCPU of the VMM's has (with [`crate::PartitionOptions::set_cpuid`] off).
pub(crate) fn vcpu_cpuid(vcpu: &VcpuFd) -> Result<CpuId, VpError> {
    vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(VpError::kvm("KVM_GET_CPUID2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpuid_key_ignores_apic_ids_only() {
        let entry = |function, eax, ebx, edx| kvm_bindings::kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            edx,
            ..Default::default()
        };
        let a = CpuId::from_entries(&[entry(1, 1, 0x0100_0800, 2), entry(0xB, 0, 0, 1)]).unwrap();
        let b = CpuId::from_entries(&[entry(1, 1, 0x0300_0800, 2), entry(0xB, 0, 0, 3)]).unwrap();
        let c = CpuId::from_entries(&[entry(1, 1, 0x0300_0801, 2), entry(0xB, 0, 0, 3)]).unwrap();
        assert_eq!(cpuid_key(&a), cpuid_key(&b));
        assert_ne!(cpuid_key(&a), cpuid_key(&c));
    }

    #[test]
    fn only_einval_is_the_guests_refusal() {
        assert!(matches!(
            refusal("x")(kvm_ioctls::Error::new(EINVAL)),
            VpError::Status(HvError::INVALID_REGISTER_VALUE)
        ));
        assert!(matches!(
            refusal("x")(kvm_ioctls::Error::new(libc::ENOMEM)),
            VpError::Kvm { what: "x", .. }
        ));
    }
}
