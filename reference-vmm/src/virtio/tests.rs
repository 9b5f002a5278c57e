//! KVM-free tests of the virtio-mmio transport (VIRTIO 1.2 §4.2.2 and the
//! initialization sequence of §3.1.1), played as a driver would, with a
//! virtio-blk device behind it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::{Block, DiskFile};
use super::mmio::{reg, MmioTransport, INT_CONFIG, INT_VRING, MAGIC};
use super::{status, Interrupt, F_RING_EVENT_IDX, F_VERSION_1};

#[derive(Default)]
struct Count(Arc<AtomicU32>);
impl Interrupt for Count {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Rig {
    t: MmioTransport<Block>,
    mem: GuestMemoryMmap,
    irqs: Arc<AtomicU32>,
    path: std::path::PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn rig() -> Rig {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "hvkvm-mmio-{}-{}.img",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, vec![7u8; 64 * 512]).unwrap();
    let disk = DiskFile::open(&path, false).unwrap();
    let irqs = Arc::new(AtomicU32::new(0));
    let t = MmioTransport::new(Block::new(disk), Box::new(Count(irqs.clone())));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    Rig { t, mem, irqs, path }
}

impl Rig {
    fn r(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes(), &self.mem);
    }
    fn features(&mut self) -> u64 {
        self.w(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.r(reg::DEVICE_FEATURES) as u64;
        self.w(reg::DEVICE_FEATURES_SEL, 1);
        lo | (self.r(reg::DEVICE_FEATURES) as u64) << 32
    }
    fn accept(&mut self, f: u64) {
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, f as u32);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, (f >> 32) as u32);
    }
    /// §3.1.1 up to FEATURES_OK; returns the status read back.
    fn negotiate(&mut self, f: u64) -> u32 {
        self.w(reg::STATUS, status::ACKNOWLEDGE);
        self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.accept(f);
        self.w(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.r(reg::STATUS)
    }
    fn queue(&mut self, desc: u64, avail: u64, used: u64, size: u32) {
        self.w(reg::QUEUE_SEL, 0);
        self.w(reg::QUEUE_NUM, size);
        for (lo, a) in [
            (reg::QUEUE_DESC_LOW, desc),
            (reg::QUEUE_DRIVER_LOW, avail),
            (reg::QUEUE_DEVICE_LOW, used),
        ] {
            self.w(lo, a as u32);
            self.w(lo + 4, (a >> 32) as u32);
        }
        self.w(reg::QUEUE_READY, 1);
    }
    fn driver_ok(&mut self) {
        let s = self.r(reg::STATUS);
        self.w(reg::STATUS, s | status::DRIVER_OK);
    }
}

#[test]
fn identification_registers() {
    let mut r = rig();
    assert_eq!(r.r(reg::MAGIC_VALUE), MAGIC);
    assert_eq!(r.r(reg::VERSION), 2, "modern transport only");
    assert_eq!(r.r(reg::DEVICE_ID), 2, "block");
    assert_eq!(r.r(reg::QUEUE_NUM_MAX), 256);
    r.w(reg::QUEUE_SEL, 1);
    assert_eq!(r.r(reg::QUEUE_NUM_MAX), 0, "§4.2.2: no queue 1");
    let f = r.features();
    assert_ne!(f & F_VERSION_1, 0);
    r.w(reg::DEVICE_FEATURES_SEL, 7);
    assert_eq!(r.r(reg::DEVICE_FEATURES), 0);
    // Accesses that are not 32 bits wide read 0 and change nothing.
    let mut b = [0xFFu8; 2];
    r.t.read(reg::MAGIC_VALUE, &mut b);
    assert_eq!(b, [0, 0]);
    r.t.write(reg::STATUS, &[1, 0], &r.mem.clone());
    assert_eq!(r.r(reg::STATUS), 0);
    // Config space: capacity in sectors.
    let mut cap = [0u8; 8];
    r.t.read(reg::CONFIG, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 64);
}

#[test]
fn features_outside_the_offer_or_without_version_1_are_refused() {
    // §3.1.1 step 6 / §6.1: the device does not set FEATURES_OK for a subset it
    // cannot support; a legacy driver (no VERSION_1) is not served.
    let mut r = rig();
    let f = r.features();
    assert_eq!(r.negotiate(f & !F_VERSION_1) & status::FEATURES_OK, 0);
    r.w(reg::STATUS, 0);
    assert_eq!(r.negotiate(f | 1 << 40) & status::FEATURES_OK, 0);
    r.w(reg::STATUS, 0);
    assert_ne!(r.negotiate(f) & status::FEATURES_OK, 0);
    assert_eq!(r.t.driver_features(), f);
    // Features cannot change after FEATURES_OK.
    r.accept(0);
    assert_eq!(r.t.driver_features(), f);
    // DRIVER_OK without FEATURES_OK is ignored.
    r.w(reg::STATUS, 0);
    r.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    r.w(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(r.r(reg::STATUS) & status::DRIVER_OK, 0);
    // Status bits are never taken away except by a reset.
    r.w(reg::STATUS, status::ACKNOWLEDGE);
    assert_eq!(r.r(reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
}

fn request(r: &Rig, q: &MockSplitQueue<GuestMemoryMmap>, sector: u64) {
    let mut h = [0u8; 16];
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    r.mem.write_slice(&h, GuestAddress(0x10_0000)).unwrap();
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(0x10_0000, 16, 0, 0)),
        RawDescriptor::from(SplitDescriptor::new(0x20_0000, 512, 2, 0)),
        RawDescriptor::from(SplitDescriptor::new(0x30_0000, 1, 2, 0)),
    ];
    q.build_desc_chain(&descs).unwrap();
}

#[test]
fn a_request_through_the_registers_interrupts_and_acks() {
    for event_idx in [false, true] {
        let mut r = rig();
        let mut f = r.features();
        if !event_idx {
            f &= !F_RING_EVENT_IDX;
        }
        assert_ne!(r.negotiate(f) & status::FEATURES_OK, 0);
        let mem = r.mem.clone();
        let q = MockSplitQueue::new(&mem, 16);
        r.queue(q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0, 16);
        assert_eq!(r.r(reg::QUEUE_READY), 1);
        // A request made available before DRIVER_OK is served at DRIVER_OK.
        request(&r, &q, 1);
        r.driver_ok();
        assert_eq!(q.used().idx().load(), 1);
        assert_eq!(r.irqs.load(Ordering::SeqCst), 1);
        assert_eq!(r.r(reg::INTERRUPT_STATUS), INT_VRING);
        r.w(reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(r.r(reg::INTERRUPT_STATUS), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(), 0);
        // A notify with nothing new: no interrupt.
        r.w(reg::QUEUE_NOTIFY, 0);
        assert_eq!(r.irqs.load(Ordering::SeqCst), 1);
        // Queue registers are frozen once the queue is ready.
        r.w(reg::QUEUE_DESC_LOW, 0x1000);
        r.w(reg::QUEUE_NOTIFY, 5);
        assert_eq!(r.r(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        // Reset (§2.1.2, status 0) clears everything.
        r.w(reg::STATUS, 0);
        assert_eq!(
            (
                r.r(reg::STATUS),
                r.r(reg::QUEUE_READY),
                r.r(reg::INTERRUPT_STATUS)
            ),
            (0, 0, 0)
        );
    }
}

#[test]
fn a_queue_outside_guest_memory_is_never_served() {
    // §2.1.2: the device sets DEVICE_NEEDS_RESET and interrupts with a
    // configuration change.
    let mut r = rig();
    let f = r.features();
    r.negotiate(f);
    r.queue(0x40_0000 - 0x10, 0x1000, 0x2000, 16);
    r.driver_ok();
    r.w(reg::QUEUE_NOTIFY, 0);
    assert_ne!(r.r(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.r(reg::INTERRUPT_STATUS), INT_CONFIG);
    let n = r.irqs.load(Ordering::SeqCst);
    // Further notifications do nothing (and log nothing) until a reset.
    for _ in 0..100 {
        r.w(reg::QUEUE_NOTIFY, 0);
    }
    assert_eq!(r.irqs.load(Ordering::SeqCst), n);
    r.w(reg::STATUS, 0);
    assert_eq!(r.r(reg::STATUS), 0);
}

#[test]
fn queue_sizes_and_addresses_are_checked() {
    let mut r = rig();
    let f = r.features();
    r.negotiate(f);
    let mem = r.mem.clone();
    let q = MockSplitQueue::new(&mem, 16);
    // Not a power of two, zero, above the maximum: refused; the queue keeps
    // its size (256, the maximum) and, with rings sized for 16, fails
    // validation only if the rings fall outside memory.
    for bad in [3, 0, 512, 70000] {
        r.w(reg::QUEUE_NUM, bad);
    }
    // A misaligned descriptor table is refused (§2.7: 16-byte alignment).
    r.w(reg::QUEUE_DESC_LOW, 0x1001);
    r.queue(q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0, 16);
    request(&r, &q, 0);
    r.driver_ok();
    assert_eq!(
        q.used().idx().load(),
        1,
        "a valid queue after the bad writes"
    );
}

#[test]
fn an_avail_index_far_ahead_is_not_served() {
    // §2.7.13.3: avail->idx - last seen > queue size is a driver error.
    let mut r = rig();
    let f = r.features();
    r.negotiate(f);
    let mem = r.mem.clone();
    let q = MockSplitQueue::new(&mem, 16);
    r.queue(q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0, 16);
    r.driver_ok();
    q.avail().idx().store(1000);
    r.w(reg::QUEUE_NOTIFY, 0);
    assert_eq!(q.used().idx().load(), 0);
    assert_ne!(r.r(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
}
