//! Microsoft Hypervisor (TLFS) partitions and virtual processors over KVM.
//!
//! A [`Partition`] is a KVM VM with guest memory (vm-memory) and an in-kernel
//! irqchip. Its VPs are created suspended ([`Partition::create_vp`]); registers are
//! read and written by HV name ([`Vp::get_registers`], [`Vp::set_registers`]); a VP
//! is started with a target VTL and an HV_INITIAL_VP_CONTEXT
//! ([`Partition::start_virtual_processor`]) and run by its own thread ([`Vp::run`],
//! which returns decoded exits); another thread can cancel a run
//! ([`Partition::cancel_run`]). Failures are HV_STATUS values.
//!
//! With [`HyperVConfig`], the guest sees a Hyper-V partition served entirely from
//! user space: CPUID leaves 0x40000000-0x40000005, the synthetic MSRs (guest OS id,
//! hypercall page, VP index, TSC and APIC frequencies, VP assist page, TSC
//! invariant control), and a hypercall page whose `out %eax, $0xE0; ret` traps to
//! the VMM with the TLFS register ABI intact. The page is a GPA overlay (a
//! read-only memslot over whatever the guest places it on), and its trap is a
//! hypercall only from the page itself at CPL 0 in protected mode. Served hypercalls:
//! HvCallGetVpRegisters, HvCallSetVpRegisters, HvCallEnablePartitionVtl,
//! HvCallEnableVpVtl, HvCallVtlCall, HvCallVtlReturn, HvCallModifyVtlProtectionMask,
//! HvCallStartVirtualProcessor, HvCallGetVpIndexFromApicId, HvCallGetPartitionId and
//! HvCallNotifyLongSpinWait; anything else is `HV_STATUS_INVALID_HYPERCALL_CODE`.
//!
//! Virtual Secure Mode: each enabled VTL is a KVM VM of its own over the same
//! RAM, each VP a vCPU per VTL run by the VP's thread. A higher VTL's memory
//! protections reshape the lower VTL's memslots, and a refused access reaches
//! the higher VTL as a GpaIntercept message through its SynIC
//! ([`Partition::post_message`] sends the host's own messages).
//!
//! ```no_run
//! use hv_defs::{VpIndex, Vtl};
//! use hv_partition::{HyperVConfig, Partition, PartitionConfig};
//!
//! let p = Partition::new(PartitionConfig {
//!     max_vps: 2,
//!     memory: vec![(0, 64 << 20)],
//!     hyperv: Some(HyperVConfig::booting_in(Vtl::VTL2)),
//!     cpuid_masks: vec![],
//! })
//! .expect("partition");
//! let mut bsp = p.create_vp(VpIndex(0)).unwrap();
//! let ap = p.create_vp(VpIndex(1)).unwrap();
//! // ... load the BSP's registers with bsp.set_registers(), then:
//! p.set_explicit_suspend(VpIndex(0), false).unwrap();
//! let exit = bsp.run();
//! # drop((exit, ap));
//! ```
#![deny(missing_docs)]
// Guest-visible enums are matched without catch-all arms, so a new variant breaks
// the build until it is handled.
#![deny(clippy::wildcard_enum_match_arm)]

pub mod choices;
mod config;
mod error;
mod hypercall;
pub mod hyperv;
mod intercept;
mod kick;
mod memview;
mod messages;
mod msr;
mod mtrr;
mod overlay;
mod partition;
mod protect;
mod rewind;
mod run_state;
mod settle;
mod shared;
mod start_check;
mod stats;
mod synic;
mod vp;
mod vsm;
mod vtl;

pub use config::{CpuidMask, HyperVConfig, Kick, PartitionConfig, PartitionOptions, VmParts};
pub use error::{PartitionError, VpError};
pub use exit_decoder::{Access, InternalError, MsrAccess, VpExit};
pub use partition::{Partition, StartObserver, CREATION_WAIT};
pub use stats::{exit_name, Counter, Stats, VtlSwitchStats};
pub use vp::{Handled, Vp};

// The dependencies whose types appear in this crate's public signatures.
pub use exit_decoder;
pub use hv_defs;
pub use hv_regs;
pub use kvm_bindings;
pub use kvm_ioctls;
pub use vm_memory;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
