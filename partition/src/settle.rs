//! KVM_CREATE_IRQCHIP leaves an SRCU grace period of the VM pending, and the
//! next memory-slot change waits for it (4-8 ms measured on this project's
//! hosts), as does the VM's destruction when no slot changed since (12-18 ms:
//! `close` of the VM fd, the whole of a short-lived VMM's tear-down). Measured
//! with the same steps outside the partition: RAM slot then irqchip then close,
//! 12-16 ms in close; irqchip then RAM slot, 4-8 ms in the slot; a close 30 ms
//! after the irqchip, 0.5 ms. A split irqchip leaves nothing pending.
//!
//! So the partition's own VM forces that grace period on a thread of its own,
//! at once, while the VMM goes on setting up and the guest runs: a one-page slot
//! at the top of the guest-physical address space (below the guest's
//! MAXPHYADDR, where no RAM or device is) is registered and deleted again. The
//! page is the thread's own zeroed page; a guest that touches it in those few
//! milliseconds reads zeros and writes nothing that matters.

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegion;

use crate::overlay::PAGE;

/// Starts the thread; `slot` is free and `gpa_limit` is one past the highest
/// guest-physical address.
pub(crate) fn settle_in_background(vm: Arc<VmFd>, slot: u32, gpa_limit: u64) {
    let spawned = std::thread::Builder::new()
        .name("hvkvm-settle".into())
        .spawn(move || {
            let Ok(page) = MmapRegion::<()>::new(PAGE as usize) else {
                return;
            };
            let region = |len: u64| kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa_limit - PAGE,
                memory_size: len,
                userspace_addr: if len == 0 { 0 } else { page.as_ptr() as u64 },
            };
            let start = std::time::Instant::now();
            // SAFETY: the page is mapped for PAGE bytes and lives until after
            // the slot is deleted below (or, if the deletion fails, the VM is
            // gone: the thread keeps the page until it returns, after the VM's
            // last use here).
            let r = unsafe { vm.set_user_memory_region(region(PAGE)) };
            if let Err(e) = r {
                log::debug!("settle: cannot add the slot: {e}");
                return;
            }
            // SAFETY: deleting the slot registered above.
            if let Err(e) = unsafe { vm.set_user_memory_region(region(0)) } {
                log::warn!("settle: cannot delete slot {slot}: {e}");
                // Keep the page mapped for as long as the process lives.
                std::mem::forget(page);
                return;
            }
            log::debug!(
                "settle: the irqchip's grace period took {:?}",
                start.elapsed()
            );
        });
    if let Err(e) = spawned {
        log::debug!("settle: no thread: {e}");
    }
}
