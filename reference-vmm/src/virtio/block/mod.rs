//! A virtio-blk device (VIRTIO 1.2 §5.2) over a raw image: one request queue,
//! IN, OUT, FLUSH and GET_ID, and the features a Linux driver uses (SEG_MAX,
//! SIZE_MAX, BLK_SIZE, FLUSH, RO, EVENT_IDX).
//!
//! ```
//! use reference_vmm::virtio::block::{Block, DiskFile};
//! use reference_vmm::virtio::VirtioDevice;
//!
//! let path = std::env::temp_dir().join(format!("hvkvm-doc-{}.img", std::process::id()));
//! std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
//! let disk = DiskFile::open(&path, false).unwrap();
//! let block = Block::new(disk);
//! assert_eq!(block.device_type(), 2);
//! let mut capacity = [0u8; 8];
//! block.read_config(0, &mut capacity);
//! assert_eq!(u64::from_le_bytes(capacity), 2048); // 1 MiB in 512-byte sectors
//! std::fs::remove_file(&path).unwrap();
//! ```

mod disk;
pub mod request;

pub use disk::{DiskError, DiskFile, SECTOR};
use request::Outcome;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use super::{VirtioDevice, F_RING_EVENT_IDX, F_VERSION_1};

/// The virtio device ID of a block device.
pub const DEVICE_ID: u32 = 2;
/// VIRTIO_BLK_F_SIZE_MAX: `size_max` holds the largest segment.
pub const F_SIZE_MAX: u64 = 1 << 1;
/// VIRTIO_BLK_F_SEG_MAX: `seg_max` holds the most segments in a request.
pub const F_SEG_MAX: u64 = 1 << 2;
/// VIRTIO_BLK_F_RO: the disk is read-only.
pub const F_RO: u64 = 1 << 5;
/// VIRTIO_BLK_F_BLK_SIZE: `blk_size` holds the block size.
pub const F_BLK_SIZE: u64 = 1 << 6;
/// VIRTIO_BLK_F_FLUSH: the FLUSH command exists (a write-back cache).
pub const F_FLUSH: u64 = 1 << 9;
/// The size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The largest data segment the driver may use.
pub const SIZE_MAX: u32 = 1 << 20;
/// The configuration space's size (`struct virtio_blk_config` up to
/// `writeback` and its padding).
pub const CONFIG_LEN: usize = 36;

/// Request counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// IN requests served.
    pub reads: u64,
    /// OUT requests served.
    pub writes: u64,
    /// FLUSH requests served.
    pub flushes: u64,
    /// Bytes read from the disk.
    pub bytes_read: u64,
    /// Bytes written to the disk.
    pub bytes_written: u64,
    /// Requests answered IOERR or UNSUPP, or not answerable.
    pub failed: u64,
}

/// A virtio-blk device.
pub struct Block {
    disk: DiskFile,
    config: [u8; CONFIG_LEN],
    counters: Counters,
    event_idx: bool,
    sizes: [u16; 1],
    guard: Option<DmaGuard>,
}

/// Whether the device may touch guest memory on the driver's behalf:
/// `(gpa, len, write)`. A VMM with memory the driver must not reach (a
/// higher VTL's, TLFS "Virtual Secure Mode": DMA has VTL 0's rights) says
/// no for it; the device then treats the range as outside guest memory.
pub type DmaGuard = std::sync::Arc<dyn Fn(u64, u64, bool) -> bool + Send + Sync>;

impl Block {
    /// A device serving `disk`.
    pub fn new(disk: DiskFile) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        // Two descriptors of each chain are the header and the status.
        config[12..16].copy_from_slice(&(QUEUE_SIZE as u32 - 2).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        Block {
            disk,
            config,
            counters: Counters::default(),
            event_idx: false,
            sizes: [QUEUE_SIZE],
            guard: None,
        }
    }

    /// The device with `guard` consulted before every access to guest
    /// memory it makes for the driver: its rings (a ring it may not reach
    /// leaves the queue unserved) and each request's buffers (IOERR).
    pub fn with_guard(mut self, guard: DmaGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Whether the guard lets the device use the queue's rings.
    fn rings_allowed(&self, queue: &Queue) -> bool {
        use virtio_queue::QueueT;
        let Some(g) = &self.guard else {
            return true;
        };
        let n = u64::from(queue.size());
        g(queue.desc_table(), 16 * n, false)
            && g(queue.avail_ring(), 6 + 2 * n, false)
            && g(queue.used_ring(), 6 + 8 * n, true)
    }

    /// The backing disk.
    pub fn disk(&self) -> &DiskFile {
        &self.disk
    }

    /// The request counters since the device was created.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn count(&mut self, o: Outcome) {
        let c = &mut self.counters;
        match o {
            Outcome::Done { kind, bytes } => match kind {
                request::T_IN => {
                    c.reads += 1;
                    c.bytes_read += bytes;
                }
                request::T_OUT => {
                    c.writes += 1;
                    c.bytes_written += bytes;
                }
                request::T_FLUSH => c.flushes += 1,
                _ => {}
            },
            Outcome::Failed(_) | Outcome::Unanswerable => c.failed += 1,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.read_only() { F_RO } else { 0 };
        F_VERSION_1 | F_RING_EVENT_IDX | F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // `writeback` is writable only with VIRTIO_BLK_F_CONFIG_WCE, which is
        // not offered: the cache is always write-back.
    }

    fn activate(&mut self, features: u64) {
        self.event_idx = features & F_RING_EVENT_IDX != 0;
    }

    fn process_queue<M: GuestMemory>(&mut self, _index: usize, queue: &mut Queue, mem: &M) -> bool {
        let mut used = false;
        if !self.rings_allowed(queue) {
            log::debug!("virtio-blk: a queue ring is where the device may not go");
            return false;
        }
        let allow_all: DmaGuard = std::sync::Arc::new(|_, _, _| true);
        let guard = self.guard.clone().unwrap_or(allow_all);
        loop {
            if self.event_idx && queue.disable_notification(mem).is_err() {
                break;
            }
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let served = request::serve(chain, mem, &self.disk, guard.as_ref());
                self.count(served.outcome);
                if queue.add_used(mem, head, served.used_len).is_err() {
                    return used;
                }
                used = true;
            }
            if !self.event_idx || !queue.enable_notification(mem).unwrap_or(false) {
                break;
            }
        }
        used && queue.needs_notification(mem).unwrap_or(true)
    }

    fn reset(&mut self) {
        self.event_idx = false;
    }
}

#[cfg(test)]
mod tests;
