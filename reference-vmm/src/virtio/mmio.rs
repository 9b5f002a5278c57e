//! The virtio-mmio transport, version 2 (VIRTIO 1.2 §4.2.2): the register
//! file, feature negotiation, queue set-up and the interrupt status, around a
//! [`VirtioDevice`].
//!
//! Every value comes from the guest and is checked: a register write out of
//! order or out of range is ignored (and the register keeps its value), a
//! feature set the device did not offer or without VIRTIO_F_VERSION_1 is
//! refused at FEATURES_OK, a queue whose rings are not in guest memory is not
//! served and the device asks for a reset (DEVICE_NEEDS_RESET).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory};

use super::{status, Interrupt, VirtioDevice, F_VERSION_1};

/// "virt", little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The register window of one device; the configuration space starts at 0x100.
pub const WINDOW: u64 = 0x1000;
/// The vendor ID the device reports ("HVKV").
pub const VENDOR_ID: u32 = 0x564B_5648;

/// Register offsets (VIRTIO 1.2 §4.2.2, table "MMIO Device Register Layout").
pub mod reg {
    /// Magic value.
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Version: 2.
    pub const VERSION: u64 = 0x004;
    /// Device ID.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor ID.
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features, 32 bits selected by DEVICE_FEATURES_SEL.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Device features word selection.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features, 32 bits selected by DRIVER_FEATURES_SEL.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver features word selection.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue selection.
    pub const QUEUE_SEL: u64 = 0x030;
    /// The selected queue's largest size (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// The selected queue's size.
    pub const QUEUE_NUM: u64 = 0x038;
    /// The selected queue is ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notifier: the index of the queue with new buffers.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring address, low 32 bits.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Available ring address, high 32 bits.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Used ring address, low 32 bits.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Used ring address, high 32 bits.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Configuration atomicity value.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// InterruptStatus bit 0: the device used a buffer.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit 1: the configuration changed (or the device needs a
/// reset).
pub const INT_CONFIG: u32 = 2;

/// A device behind the virtio-mmio register file.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    interrupt_status: Arc<AtomicU32>,
    interrupt: Box<dyn Interrupt>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `device` behind a register file; `interrupt` is raised when the device
    /// uses a buffer the guest wants to hear of.
    pub fn new(device: D, interrupt: Box<dyn Interrupt>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&n| Queue::new(n).unwrap_or_else(|_| Queue::new(1).expect("size 1 is valid")))
            .collect();
        MmioTransport {
            device,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            interrupt,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device status register (VIRTIO 1.2 §2.1).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The interrupt status, shared so that a VMM can read it without the
    /// transport's lock.
    pub fn interrupt_status(&self) -> Arc<AtomicU32> {
        self.interrupt_status.clone()
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A guest read of `data.len()` bytes at `offset` in the register window.
    /// Registers are 32 bits wide and read only whole; anything else reads 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        data.fill(0);
        if data.len() != 4 {
            return;
        }
        let q = self.queues.get(self.queue_sel as usize);
        let v = match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| q.max_size() as u32),
            reg::QUEUE_READY => q.is_some_and(|q| q.ready()) as u32,
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A guest write at `offset` in the register window. A QueueNotify write
    /// serves the queue in `mem` at once (a VMM with an ioeventfd on that
    /// register calls [`MmioTransport::notify`] instead).
    pub fn write<M: GuestMemory>(&mut self, offset: u64, data: &[u8], mem: &M) {
        if offset >= reg::CONFIG {
            // The driver may change configuration only once it is ready.
            if self.status & status::DRIVER != 0 {
                self.device.write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(bytes);
        // Queue and feature registers may change only before DRIVER_OK, and
        // features only before FEATURES_OK.
        let negotiating = self.status & (status::FEATURES_OK | status::DRIVER_OK) == 0
            && self.status & status::DRIVER != 0;
        let configuring = self.status & status::DRIVER_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES if negotiating => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xFFFF_FFFF) | v as u64,
                1 => {
                    self.driver_features = (self.driver_features & 0xFFFF_FFFF) | ((v as u64) << 32)
                }
                _ => {}
            },
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if configuring => {
                if let Some(q) = self.queue().filter(|q| !q.ready()) {
                    // A size that is 0, above the maximum or not a power of two
                    // is refused; the queue then stays unusable.
                    if q.try_set_size(v.min(u16::MAX as u32 + 1) as u16).is_err() {
                        log::debug!("virtio-mmio: queue size {v} refused");
                    }
                }
            }
            reg::QUEUE_READY if configuring => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH
                if configuring =>
            {
                if let Some(q) = self.queue().filter(|q| !q.ready()) {
                    let current = match offset & !4 {
                        reg::QUEUE_DESC_LOW => q.desc_table(),
                        reg::QUEUE_DRIVER_LOW => q.avail_ring(),
                        _ => q.used_ring(),
                    };
                    let addr = GuestAddress(if offset & 4 == 0 {
                        (current & !0xFFFF_FFFF) | v as u64
                    } else {
                        (current & 0xFFFF_FFFF) | ((v as u64) << 32)
                    });
                    // A misaligned address is refused (the queue keeps the old
                    // one and fails validation when the driver uses it).
                    let _ = match offset & !4 {
                        reg::QUEUE_DESC_LOW => q.try_set_desc_table_address(addr),
                        reg::QUEUE_DRIVER_LOW => q.try_set_avail_ring_address(addr),
                        _ => q.try_set_used_ring_address(addr),
                    };
                }
            }
            reg::QUEUE_NOTIFY => self.notify(v as usize, mem),
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            reg::STATUS => self.set_status(v, mem),
            _ => {}
        }
    }

    fn set_status<M: GuestMemory>(&mut self, v: u32, mem: &M) {
        if v == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added (§2.1.1), FAILED aside.
        if v & self.status != self.status {
            return;
        }
        let new = v & !self.status;
        let mut v = v;
        if new & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0 || self.driver_features & F_VERSION_1 == 0 {
                log::debug!(
                    "virtio-mmio: features {:#x} refused (offered {offered:#x})",
                    self.driver_features
                );
                v &= !status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 {
            if v & status::FEATURES_OK == 0 {
                return;
            }
            let event_idx = self.driver_features & super::F_RING_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
            self.device.activate(self.driver_features);
        }
        self.status = v;
        if new & status::DRIVER_OK != 0 {
            // Buffers the driver made available before DRIVER_OK.
            for i in 0..self.queues.len() {
                self.notify(i, mem);
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
    }

    /// The driver made buffers available in queue `index`: serve them if the
    /// device is live and the queue usable, and interrupt the guest if it asked.
    pub fn notify<M: GuestMemory>(&mut self, index: usize, mem: &M) {
        if self.status & status::DRIVER_OK == 0 || self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        let Some(q) = self.queues.get_mut(index) else {
            return;
        };
        if !q.ready() {
            return;
        }
        if !q.is_valid(mem) {
            // Rings outside guest memory or misaligned: nothing is touched;
            // the driver is told to reset the device (§2.1.2).
            log::debug!("virtio-mmio: queue {index} is not valid; device needs reset");
            self.status |= status::DEVICE_NEEDS_RESET;
            self.raise(INT_CONFIG);
            return;
        }
        // An available index more than a queue's worth ahead (§2.7.13.3) is
        // a driver error: the queue is not served again before a reset.
        let ahead = q
            .avail_idx(mem, Ordering::Acquire)
            .map(|idx| (idx - std::num::Wrapping(q.next_avail())).0);
        if ahead.map_or(true, |n| n > q.size()) {
            log::debug!("virtio-mmio: queue {index}: bad available index; device needs reset");
            self.status |= status::DEVICE_NEEDS_RESET;
            self.raise(INT_CONFIG);
            return;
        }
        if self.device.process_queue(index, q, mem) {
            self.raise(INT_VRING);
        }
    }

    fn raise(&self, bit: u32) {
        self.interrupt_status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.interrupt.trigger() {
            log::warn!("virtio-mmio: raising the interrupt failed: {e}");
        }
    }
}
