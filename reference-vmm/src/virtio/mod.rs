//! Virtio devices over the virtio-mmio transport (virtio 1.x, modern only).
//!
//! The seam is small so that the code could move into a crate of its own: a
//! device implements [`VirtioDevice`] (its type, features, configuration space
//! and how it serves a queue); [`mmio::MmioTransport`] implements the register
//! interface of VIRTIO 1.2 §4.2.2 around it; the guest memory is any
//! `vm_memory::GuestMemory`, and the used-buffer interrupt is any
//! [`Interrupt`]. The queues are `virtio_queue::Queue` (rust-vmm's
//! `virtio-queue`). [`block::Block`] is a virtio-blk device over a raw image
//! file.

pub mod block;
pub mod mmio;

use vm_memory::GuestMemory;

/// VIRTIO_F_VERSION_1 (VIRTIO 1.2 §6): the device is modern. Always offered; a
/// driver that does not accept it is refused at FEATURES_OK.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX (§2.7.10): used_event / avail_event suppression.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;

/// Device status bits (VIRTIO 1.2 §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Raises the device's interrupt in the guest (an irqfd, in a VMM).
pub trait Interrupt: Send + Sync {
    /// Signals the interrupt once.
    fn trigger(&self) -> std::io::Result<()>;
}

impl Interrupt for vmm_sys_util::eventfd::EventFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.write(1)
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (VIRTIO 1.2 §5: 2 is a block device).
    fn device_type(&self) -> u32;
    /// The feature bits the device offers (transport bits included).
    fn features(&self) -> u64;
    /// The largest size of each queue; the device has this many queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the configuration space at `offset`; bytes past its end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space (a device may ignore writes).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Called once the driver set DRIVER_OK, with the features it accepted.
    fn activate(&mut self, features: u64);
    /// Serves queue `index`'s available buffers; returns whether the guest
    /// must be interrupted (a used buffer it asked to hear of).
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queue: &mut virtio_queue::Queue,
        mem: &M,
    ) -> bool;
    /// Puts the device back to its state before the driver found it.
    fn reset(&mut self);
}

#[cfg(test)]
mod tests;
