//! What a partition is built with: its configuration, the KVM-wide policies a
//! VMM may decline, and the parts of a VM a VMM hands over for adoption.

use std::sync::Arc;

use hv_defs::{VpIndex, Vtl};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::SIGRTMIN;

/// How the partition presents the Hyper-V interface to its guest.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HyperVConfig {
    /// The VTL the boot processor runs in. A Linux kernel built with
    /// `CONFIG_HYPERV_VTL_MODE` expects [`Vtl::VTL2`].
    pub boot_vtl: Vtl,
    /// The highest VTL the guest may enable with HvCallEnablePartitionVtl
    /// (HvRegisterVsmPartitionStatus.MaximumVtl); at least `boot_vtl`, at most
    /// [`Vtl::MAX_X64`]. Each VTL the guest enables gets a KVM VM of its own.
    pub max_vtl: Vtl,
}

impl HyperVConfig {
    /// The Hyper-V interface with the boot processor in `boot_vtl` and no
    /// VTL above it available.
    pub const fn booting_in(boot_vtl: Vtl) -> Self {
        HyperVConfig {
            boot_vtl,
            max_vtl: boot_vtl,
        }
    }
}

/// Bits to clear from one CPUID leaf of every VP, after the partition has built it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CpuidMask {
    /// The leaf (EAX input).
    pub function: u32,
    /// The sub-leaf (ECX input), for leaves that have them.
    pub index: u32,
    /// Bits to clear in EAX, EBX, ECX, EDX.
    pub clear: [u32; 4],
}

/// What to build a partition with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionConfig {
    /// The number of VP indexes (0..max_vps) VPs may be created with.
    pub max_vps: u32,
    /// Guest RAM as (guest-physical address, size) ranges, page aligned.
    pub memory: Vec<(u64, u64)>,
    /// `Some` to present the Hyper-V CPUID leaves, synthetic MSRs, hypercall page
    /// and hypercalls; `None` for a plain KVM guest.
    pub hyperv: Option<HyperVConfig>,
    /// Features to hide from the guest (e.g. KVM paravirtual features a host cannot
    /// serve). Empty for KVM's full supported set.
    pub cpuid_masks: Vec<CpuidMask>,
}

/// How the partition gets a VP's thread out of `KVM_RUN` when another thread
/// needs it to see a request (a start, a cancel, a suspend, a memory-slot change).
///
/// Whatever the kind, the partition first sets the vCPU's
/// `kvm_run.immediate_exit` under the VP lock (a `KVM_RUN` the thread is about to
/// enter returns at once, in [`crate::Vp::run`] and in a VMM's own loop alike),
/// then interrupts the thread, and waits for it where the request needs it
/// (pausing for a memory-slot change, a suspend), kicking again if it is slow
/// to leave. A VP's own thread is never kicked or waited for by itself.
#[derive(Clone)]
pub enum Kick {
    /// Send this signal to the thread marked in `KVM_RUN` (the one in
    /// [`crate::Vp::run`], or the own loop between [`crate::Vp::prepare_run`]
    /// and [`crate::Vp::finish_run`]). The partition never replaces a handler:
    /// if the VMM has one for the signal, that handler runs (it must return, and
    /// the signal must not be blocked on VP threads); if the signal has none
    /// (default or ignored), the partition installs an empty one, once.
    Signal(i32),
    /// Call this with the VP's index, without the VP lock held; the VMM
    /// interrupts its own vCPU thread (a signal of its own). `immediate_exit`
    /// is already set, so the VMM needs no access to `kvm_run`.
    Callback(Arc<dyn Fn(VpIndex) + Send + Sync>),
}

impl std::fmt::Debug for Kick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kick::Signal(n) => write!(f, "Kick::Signal({n})"),
            Kick::Callback(_) => f.write_str("Kick::Callback(..)"),
        }
    }
}

impl Default for Kick {
    /// `SIGRTMIN + 2` (Cloud Hypervisor kicks its vCPUs with SIGRTMIN).
    fn default() -> Self {
        Kick::Signal(SIGRTMIN() + 2)
    }
}

/// The KVM-wide policies a partition applies to its VM and VPs. Each can be
/// declined by a VMM that does it its own way; [`Default`] applies them all.
#[derive(Clone, Debug)]
pub struct PartitionOptions {
    /// Create KVM's in-kernel irqchip (`KVM_CREATE_IRQCHIP`).
    pub create_irqchip: bool,
    /// Route unknown MSRs (and, with Hyper-V, the synthetic range) to user space
    /// (`KVM_CAP_X86_USER_SPACE_MSR` and an MSR filter). The filter denies the
    /// synthetic range plus [`Self::msr_filter`], the VMM's own ranges.
    pub msr_exits: bool,
    /// MSR ranges (first, count) the VMM wants in user space too, merged into the
    /// partition's filter rather than replaced by it.
    pub msr_filter: Vec<(u32, u32)>,
    /// Set each VP's CPUID (KVM's supported set with the VP's APIC id, the Hyper-V
    /// leaves, the masks). Off: the VMM sets it before the VP first runs.
    pub set_cpuid: bool,
    /// Make memory write-back by default (IA32_MTRR_DEF_TYPE 0x806) on each VP,
    /// as firmware would; KVM resets the MTRRs to uncached.
    pub mtrr_write_back: bool,
    /// How VP threads are kicked.
    pub kick: Kick,
}

impl Default for PartitionOptions {
    fn default() -> Self {
        PartitionOptions {
            create_irqchip: true,
            msr_exits: true,
            msr_filter: vec![],
            set_cpuid: true,
            mtrr_write_back: true,
            kick: Kick::default(),
        }
    }
}

/// A VM the VMM already created, to build a partition over
/// ([`crate::Partition::adopt`]): the KVM handle and the VM (shared: the VMM keeps
/// its own references), its guest memory, the memory slot the VMM registered
/// each region of `memory` in (in region order), and the slots the partition
/// may use for the hypercall overlay.
#[derive(Debug)]
pub struct VmParts {
    /// `/dev/kvm`.
    pub kvm: Arc<Kvm>,
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Its guest RAM, already registered with KVM.
    pub memory: GuestMemoryMmap,
    /// The KVM slot of each region of `memory`, in region order.
    pub ram_slots: Vec<u32>,
    /// Two free KVM slots for the hypercall overlay page and the RAM above it
    /// while the overlay splits a RAM slot; `None` takes the two slots above
    /// the highest of `ram_slots`.
    pub overlay_slots: Option<[u32; 2]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kicks_show_their_kind() {
        assert_eq!(format!("{:?}", Kick::Signal(40)), "Kick::Signal(40)");
        let cb = Kick::Callback(Arc::new(|_| {}));
        assert_eq!(format!("{cb:?}"), "Kick::Callback(..)");
        assert!(matches!(Kick::default(), Kick::Signal(n) if n == SIGRTMIN() + 2));
    }
}
