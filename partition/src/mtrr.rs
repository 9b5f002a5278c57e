//! MTRRs, which the TLFS shares between a VP's VTLs ("Virtual Processor State
//! Isolation"). Each VTL of a VP is a vCPU of its own, each with KVM's copy of
//! the MTRRs; in a partition that may enable a VTL, the guest's MTRR writes
//! exit to user space (a write-only MSR filter) and are applied to every
//! vCPU of the VP, and a VTL's new vCPU starts with the VP's MTRRs. Reads stay
//! in the kernel. A VTL switch copies nothing.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use crate::error::VpError;
use crate::vp::Vp;

/// The MTRR MSRs as (first, count) ranges: the variable pairs, the fixed
/// ranges and IA32_MTRR_DEF_TYPE (Intel SDM vol. 3 11.11; KVM keeps them per
/// vCPU). IA32_MTRRCAP is read-only.
pub(crate) const RANGES: [(u32, u32); 5] = [
    (0x200, 0x10),
    (0x250, 1),
    (0x258, 2),
    (0x268, 8),
    (0x2FF, 1),
];

/// Whether `index` is one of [`RANGES`].
pub(crate) fn is_mtrr(index: u32) -> bool {
    RANGES
        .iter()
        .any(|&(first, n)| (first..first + n).contains(&index))
}

fn all_entries() -> Vec<kvm_msr_entry> {
    RANGES
        .iter()
        .flat_map(|&(first, n)| first..first + n)
        .map(|index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect()
}

/// Copies every MTRR of `from` into `to` (two ioctls).
pub(crate) fn copy(from: &VcpuFd, to: &VcpuFd) -> Result<(), VpError> {
    let mut msrs = Msrs::from_entries(&all_entries())
        .map_err(|_| VpError::Status(hv_defs::HvError::INSUFFICIENT_MEMORY))?;
    let n = from
        .get_msrs(&mut msrs)
        .map_err(VpError::kvm("KVM_GET_MSRS (MTRRs)"))?;
    let read = Msrs::from_entries(&msrs.as_slice()[..n])
        .map_err(|_| VpError::Status(hv_defs::HvError::INSUFFICIENT_MEMORY))?;
    to.set_msrs(&read)
        .map_err(VpError::kvm("KVM_SET_MSRS (MTRRs)"))?;
    Ok(())
}

fn set(vcpu: &VcpuFd, index: u32, data: u64) -> bool {
    Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .ok()
    .and_then(|m| vcpu.set_msrs(&m).ok())
        == Some(1)
}

impl Vp {
    /// The guest wrote `data` to MTRR `index` (an MSR exit of the filter):
    /// applied to the running vCPU and the VP's parked ones. `false` if KVM
    /// refused the value on the running vCPU (the guest then gets #GP, as
    /// KVM would give it).
    pub(crate) fn share_mtrr_write(&mut self, index: u32, data: u64) -> bool {
        if !set(self.vcpu_mut(), index, data) {
            return false;
        }
        for parked in self.parked.iter().flatten() {
            if !set(&parked.vcpu, index, data) {
                log::warn!(
                    "VP {}: MTRR {index:#x} not copied to a parked VTL",
                    self.index().0
                );
            }
        }
        true
    }

    /// The MSR write exit still in `kvm_run` gets #GP when the VP runs again.
    pub(crate) fn refuse_msr_exit(&mut self) {
        let run = self.vcpu_mut().get_kvm_run();
        if run.exit_reason == kvm_bindings::KVM_EXIT_X86_WRMSR {
            // The exit reason says `msr` is the union's active member.
            run.__bindgen_anon_1.msr.error = 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mtrr_msrs() {
        for i in [0x200, 0x20F, 0x250, 0x258, 0x259, 0x268, 0x26F, 0x2FF] {
            assert!(is_mtrr(i), "{i:#x}");
        }
        for i in [0xFE, 0x1FF, 0x210, 0x251, 0x25A, 0x267, 0x270, 0x277, 0x300] {
            assert!(!is_mtrr(i), "{i:#x}");
        }
        assert_eq!(all_entries().len(), 28);
    }
}
