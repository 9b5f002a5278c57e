//! reference-vmm's virtio-blk device behind its virtio-mmio transport, as a
//! hostile driver drives it: the driver brings the device up the way Linux
//! does (queue 0 of 16 entries at fixed addresses), then the input is a list of
//! operations: guest memory writes (descriptors, rings, request headers),
//! register writes and reads, and queue notifications. Never a panic or a
//! hang; the disk file never changes size; a read-only disk's bytes never
//! change.
#![no_main]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use reference_vmm::virtio::block::{Block, DiskFile};
use reference_vmm::virtio::mmio::{reg, MmioTransport};
use reference_vmm::virtio::{status, Interrupt, F_RING_EVENT_IDX, F_VERSION_1};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Two regions with a hole between them, so that buffers straddling or
/// missing guest memory are easy to reach.
const LOW: u64 = 0x1_0000;
const HIGH: u64 = 0x2_0000;
const DESC: u64 = 0x0000;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const SECTORS: usize = 32;

struct Count(AtomicU64);

impl Interrupt for Count {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn image() -> Vec<u8> {
    (0..SECTORS * 512).map(|i| (i / 512) as u8 ^ 0x5A).collect()
}

fn disk_path() -> PathBuf {
    std::env::temp_dir().join(format!("hvkvm-fuzz-blk-{}.img", std::process::id()))
}

struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn w(t: &mut MmioTransport<Block>, mem: &GuestMemoryMmap, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes(), mem);
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let read_only = flags & 1 != 0;
    let path = disk_path();
    std::fs::write(&path, image()).unwrap();
    let disk = DiskFile::open(&path, read_only).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), LOW as usize),
        (GuestAddress(HIGH), LOW as usize),
    ])
    .unwrap();
    let mut t = MmioTransport::new(Block::new(disk), Box::new(Count(AtomicU64::new(0))));

    // The driver's bring-up (VIRTIO 1.2 §3.1.1), unless the input asks to
    // do it all itself.
    if flags & 2 == 0 {
        w(
            &mut t,
            &mem,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER,
        );
        let feats = F_VERSION_1 | if flags & 4 != 0 { F_RING_EVENT_IDX } else { 0 };
        w(&mut t, &mem, reg::DRIVER_FEATURES_SEL, 0);
        w(&mut t, &mem, reg::DRIVER_FEATURES, feats as u32);
        w(&mut t, &mem, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, &mem, reg::DRIVER_FEATURES, (feats >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(&mut t, &mem, reg::STATUS, s);
        w(&mut t, &mem, reg::QUEUE_SEL, 0);
        w(&mut t, &mem, reg::QUEUE_NUM, 16);
        w(&mut t, &mem, reg::QUEUE_DESC_LOW, DESC as u32);
        w(&mut t, &mem, reg::QUEUE_DRIVER_LOW, AVAIL as u32);
        w(&mut t, &mem, reg::QUEUE_DEVICE_LOW, USED as u32);
        w(&mut t, &mem, reg::QUEUE_READY, 1);
        w(&mut t, &mem, reg::STATUS, s | status::DRIVER_OK);
    }

    let mut ops = Ops(rest);
    // A bound on the work one input can ask for.
    for _ in 0..256 {
        let Some(op) = ops.take(1).map(|b| b[0]) else {
            break;
        };
        match (op & 0x7f) % 5 {
            0 => {
                // Guest memory: up to 64 bytes at an address in either region
                // (the top bit of the operation picks the high one).
                let (Some(at), Some(len)) = (ops.u16(), ops.take(1).map(|b| b[0] % 65)) else {
                    break;
                };
                let Some(bytes) = ops.take(len as usize) else {
                    break;
                };
                let base = if op & 0x80 != 0 { HIGH } else { 0 };
                let _ = mem.write_slice(bytes, GuestAddress(base + at as u64));
            }
            1 => {
                // A register write (the whole window and the config space).
                let (Some(off), Some(v)) = (ops.u16(), ops.u32()) else {
                    break;
                };
                w(&mut t, &mem, (off & 0x1ff) as u64, v);
            }
            2 => {
                let Some(off) = ops.u16() else {
                    break;
                };
                let mut b = [0u8; 4];
                let n = 1 + (op as usize >> 3) % 4;
                t.read((off & 0x1ff) as u64, &mut b[..n]);
            }
            3 => t.notify(0, &mem),
            _ => {
                // The avail ring's index: the usual last step of a driver.
                let Some(idx) = ops.u16() else {
                    break;
                };
                let _ = mem.write_obj(idx, GuestAddress(AVAIL + 2));
                w(&mut t, &mem, reg::QUEUE_NOTIFY, 0);
            }
        }
    }
    drop(t);
    let after = std::fs::read(&path).unwrap();
    assert_eq!(after.len(), SECTORS * 512, "the disk changed size");
    if read_only {
        assert!(after == image(), "a read-only disk was written");
    }
});
