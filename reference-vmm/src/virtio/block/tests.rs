//! KVM-free tests of the request path: a driver played through rust-vmm's mock
//! split queue over real guest memory, against a real file. Guest buffers are
//! pre-filled with a pattern so that any byte the device writes outside the
//! request's writable buffers shows. Sections cited are VIRTIO 1.2.

use std::path::PathBuf;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{self, Outcome, S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use super::{Block, DiskFile};
use crate::virtio::VirtioDevice;

/// VIRTQ_DESC_F_WRITE (§2.7.5).
const W: u16 = 2;
/// VIRTQ_DESC_F_NEXT.
const NEXT: u16 = 1;
const MEM: u64 = 0x40_0000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const FILL: u8 = 0xA5;
const SECTORS: u64 = 64;

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A disk of SECTORS sectors; sector n holds bytes equal to n.
fn disk(ro: bool) -> (DiskFile, Tmp) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "hvkvm-blk-{}-{}.img",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let bytes: Vec<u8> = (0..SECTORS * 512).map(|i| (i / 512) as u8).collect();
    std::fs::write(&p, bytes).unwrap();
    (DiskFile::open(&p, ro).unwrap(), Tmp(p))
}

fn memory() -> GuestMemoryMmap {
    let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    m.write_slice(&vec![FILL; (MEM - HDR) as usize], GuestAddress(HDR))
        .unwrap();
    m
}

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// Serves the chain `descs` (NEXT flags set by the mock) against `disk`.
fn serve(mem: &GuestMemoryMmap, disk: &DiskFile, descs: &[RawDescriptor]) -> request::Served {
    let q = MockSplitQueue::new(mem, 16);
    let chain = q.build_desc_chain(descs).unwrap();
    request::serve(chain, mem, disk, &|_, _, _| true)
}

fn status(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

fn bytes(mem: &GuestMemoryMmap, at: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    mem.read_slice(&mut v, GuestAddress(at)).unwrap();
    v
}

fn file(t: &Tmp) -> Vec<u8> {
    std::fs::read(&t.0).unwrap()
}

/// A read request: header, a data buffer of `len` bytes, the status byte.
fn read_chain(len: u32) -> Vec<RawDescriptor> {
    vec![d(HDR, 16, 0), d(DATA, len, W), d(STATUS, 1, W)]
}

#[test]
fn in_reads_the_sectors_into_the_buffer_only() {
    // §5.2.6: VIRTIO_BLK_T_IN reads `sector` onwards into the data buffers.
    let (disk, _t) = disk(false);
    let mem = memory();
    header(&mem, T_IN, 3);
    let r = serve(&mem, &disk, &read_chain(1024));
    assert_eq!(status(&mem), S_OK);
    assert_eq!(r.used_len, 1025, "data and status written");
    assert_eq!(
        r.outcome,
        Outcome::Done {
            kind: T_IN,
            bytes: 1024
        }
    );
    let data = bytes(&mem, DATA, 1024 + 16);
    assert!(data[..512].iter().all(|&b| b == 3));
    assert!(data[512..1024].iter().all(|&b| b == 4));
    assert!(data[1024..].iter().all(|&b| b == FILL), "past the buffer");
    assert_eq!(bytes(&mem, STATUS + 1, 15), vec![FILL; 15]);
}

/// A data buffer the guard refuses (memory a higher VTL protects from the
/// driver's VTL, TLFS "Virtual Secure Mode": DMA has VTL 0's rights) is
/// treated as outside guest memory: IOERR, and nothing is written there. A
/// header the device may not read is the same.
#[test]
fn the_dma_guard_keeps_the_device_out_of_refused_memory() {
    let (disk, _t) = disk(false);
    let mem = memory();
    header(&mem, T_IN, 3);
    let chain = MockSplitQueue::new(&mem, 16);
    let descs = read_chain(1024);
    let c = chain.build_desc_chain(&descs).unwrap();
    let no_writes_to_data =
        |gpa: u64, len: u64, write: bool| !(write && gpa < DATA + 0x1000 && gpa + len > DATA);
    let r = request::serve(c, &mem, &disk, &no_writes_to_data);
    assert_eq!(status(&mem), S_IOERR);
    assert_eq!(r.outcome, Outcome::Failed(S_IOERR));
    assert_eq!(bytes(&mem, DATA, 1024), vec![FILL; 1024], "nothing written");
    let q = MockSplitQueue::new(&mem, 16);
    let c = q.build_desc_chain(&descs).unwrap();
    let no_header = |gpa: u64, _: u64, write: bool| write || gpa != HDR;
    mem.write_obj(FILL, GuestAddress(STATUS)).unwrap();
    let r = request::serve(c, &mem, &disk, &no_header);
    assert_eq!(r.outcome, Outcome::Failed(S_IOERR));
    assert_eq!(bytes(&mem, DATA, 1024), vec![FILL; 1024]);
}

#[test]
fn in_with_many_segments_and_a_shared_status_descriptor() {
    // §2.7.4: the device makes no assumption about the descriptors' layout:
    // a split header, several data buffers, the status as the last byte of
    // the last data descriptor.
    let (disk, _t) = disk(false);
    let mem = memory();
    header(&mem, T_IN, 10);
    let r = serve(
        &mem,
        &disk,
        &[
            d(HDR, 4, 0),
            d(HDR + 4, 12, 0),
            d(DATA, 512, W),
            d(DATA + 0x1000, 512 + 1, W),
        ],
    );
    assert_eq!(r.used_len, 1025);
    assert!(bytes(&mem, DATA, 512).iter().all(|&b| b == 10));
    assert!(bytes(&mem, DATA + 0x1000, 512).iter().all(|&b| b == 11));
    assert_eq!(bytes(&mem, DATA + 0x1000 + 512, 1), vec![S_OK]);
}

#[test]
fn out_writes_the_sectors() {
    let (disk, t) = disk(false);
    let mem = memory();
    header(&mem, T_OUT, 5);
    mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    let r = serve(
        &mem,
        &disk,
        &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, W)],
    );
    assert_eq!((status(&mem), r.used_len), (S_OK, 1));
    let f = file(&t);
    assert!(f[5 * 512..6 * 512].iter().all(|&b| b == 0x77));
    assert!(f[4 * 512..5 * 512].iter().all(|&b| b == 4));
    assert!(f[6 * 512..7 * 512].iter().all(|&b| b == 6));
    assert_eq!(f.len() as u64, SECTORS * 512, "the image does not grow");
}

#[test]
fn out_to_a_read_only_disk_is_ioerr_and_the_file_is_untouched() {
    // §5.2.6.2: with VIRTIO_BLK_F_RO the device rejects writes (IOERR).
    let (disk, t) = disk(true);
    let before = file(&t);
    let mem = memory();
    header(&mem, T_OUT, 0);
    let r = serve(
        &mem,
        &disk,
        &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, W)],
    );
    assert_eq!(
        (status(&mem), r.outcome),
        (S_IOERR, Outcome::Failed(S_IOERR))
    );
    assert_eq!(file(&t), before);
    assert_ne!(Block::new(disk).features() & super::F_RO, 0, "RO offered");
}

#[test]
fn ranges_past_the_end_and_partial_sectors_are_ioerr() {
    let (disk, t) = disk(false);
    let before = file(&t);
    let mem = memory();
    for (kind, sector, len) in [
        (T_IN, SECTORS - 1, 1024),
        (T_IN, SECTORS, 512),
        (T_IN, u64::MAX / 512, 512),
        (T_IN, u64::MAX, 512),
        (T_IN, 0, 100),
        (T_OUT, SECTORS - 1, 1024),
        (T_OUT, u64::MAX, 512),
        (T_OUT, 0, 513),
    ] {
        header(&mem, kind, sector);
        let flags = if kind == T_IN { W } else { 0 };
        let r = serve(
            &mem,
            &disk,
            &[d(HDR, 16, 0), d(DATA, len, flags), d(STATUS, 1, W)],
        );
        assert_eq!(
            status(&mem),
            S_IOERR,
            "type {kind} sector {sector} len {len}"
        );
        assert_eq!(r.used_len, 1);
        assert!(bytes(&mem, DATA, 1024).iter().all(|&b| b == FILL));
    }
    assert_eq!(file(&t), before);
}

#[test]
fn data_in_the_wrong_direction_is_ioerr() {
    let (disk, t) = disk(false);
    let before = file(&t);
    let mem = memory();
    // IN whose data buffer is device-readable.
    header(&mem, T_IN, 0);
    serve(
        &mem,
        &disk,
        &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, W)],
    );
    assert_eq!(status(&mem), S_IOERR);
    assert!(bytes(&mem, DATA, 512).iter().all(|&b| b == FILL));
    // OUT whose data buffer is device-writable.
    header(&mem, T_OUT, 0);
    serve(
        &mem,
        &disk,
        &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)],
    );
    assert_eq!(status(&mem), S_IOERR);
    assert!(bytes(&mem, DATA, 512).iter().all(|&b| b == FILL));
    // A readable descriptor after a writable one (§2.7.4.2).
    header(&mem, T_OUT, 0);
    serve(
        &mem,
        &disk,
        &[
            d(HDR, 16, 0),
            d(STATUS + 8, 1, W),
            d(DATA, 512, 0),
            d(STATUS, 1, W),
        ],
    );
    assert_eq!(status(&mem), S_IOERR);
    // The header in a writable descriptor: no header at all.
    serve(&mem, &disk, &[d(HDR, 16, W), d(STATUS, 1, W)]);
    assert_eq!(status(&mem), S_IOERR);
    assert_eq!(file(&t), before);
}

#[test]
fn buffers_outside_guest_memory_are_ioerr() {
    let (disk, t) = disk(false);
    let before = file(&t);
    let mem = memory();
    header(&mem, T_IN, 0);
    for bad in [MEM, MEM - 256, u64::MAX - 100] {
        let r = serve(
            &mem,
            &disk,
            &[d(HDR, 16, 0), d(bad, 512, W), d(STATUS, 1, W)],
        );
        assert_eq!((status(&mem), r.used_len), (S_IOERR, 1), "data at {bad:#x}");
    }
    header(&mem, T_OUT, 0);
    serve(
        &mem,
        &disk,
        &[d(HDR, 16, 0), d(MEM - 8, 512, 0), d(STATUS, 1, W)],
    );
    assert_eq!(status(&mem), S_IOERR);
    // The header itself outside memory.
    serve(&mem, &disk, &[d(MEM, 16, 0), d(STATUS, 1, W)]);
    assert_eq!(status(&mem), S_IOERR);
    assert_eq!(file(&t), before);
}

#[test]
fn no_status_byte_gets_no_answer() {
    let (disk, _t) = disk(false);
    let mem = memory();
    header(&mem, T_IN, 0);
    for chain in [
        vec![d(HDR, 16, 0)],
        vec![d(HDR, 16, 0), d(DATA, 512, 0)],
        vec![d(HDR, 16, 0), d(DATA, 0, W)],
        vec![d(HDR, 16, 0), d(MEM + 0x1000, 1, W)],
    ] {
        let r = serve(&mem, &disk, &chain);
        assert_eq!((r.used_len, r.outcome), (0, Outcome::Unanswerable));
    }
    assert!(bytes(&mem, DATA, 512).iter().all(|&b| b == FILL));
}

#[test]
fn a_looping_chain_is_ioerr() {
    // §2.7.5.3.1: a chain that loops is a driver error; the device stops
    // after as many descriptors as the queue has. The chain has no end, so
    // no status byte: nothing is written and the chain is returned unused.
    let (disk, _t) = disk(false);
    let mem = memory();
    header(&mem, T_IN, 0);
    let q = MockSplitQueue::new(&mem, 16);
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(DATA, 512, W | NEXT, 2)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, W | NEXT, 1)),
    ];
    let chain = q.build_multiple_desc_chains(&descs).unwrap();
    let r = request::serve(chain, &mem, &disk, &|_, _, _| true);
    assert_eq!((r.used_len, r.outcome), (0, Outcome::Unanswerable));
    assert_eq!(status(&mem), FILL);
    assert!(bytes(&mem, DATA, 512).iter().all(|&b| b == FILL));
    // A next index past the table.
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, W | NEXT, 99)),
    ];
    let chain = q.build_multiple_desc_chains(&descs).unwrap();
    let r = request::serve(chain, &mem, &disk, &|_, _, _| true);
    assert_eq!((r.used_len, status(&mem)), (0, FILL));
}

#[test]
fn unknown_types_are_unsupp_and_short_headers_ioerr() {
    let (disk, t) = disk(false);
    let before = file(&t);
    let mem = memory();
    for kind in [2, 3, 11, 13, 0xFFFF_FFFF] {
        header(&mem, kind, 0);
        let r = serve(&mem, &disk, &read_chain(512));
        assert_eq!((status(&mem), r.used_len), (S_UNSUPP, 1), "type {kind}");
        assert!(bytes(&mem, DATA, 512).iter().all(|&b| b == FILL));
    }
    header(&mem, T_IN, 0);
    serve(&mem, &disk, &[d(HDR, 15, 0), d(STATUS, 1, W)]);
    assert_eq!(status(&mem), S_IOERR);
    assert_eq!(file(&t), before);
}

#[test]
fn get_id_and_flush() {
    let (disk, _t) = disk(false);
    let mem = memory();
    header(&mem, T_GET_ID, 0);
    let r = serve(&mem, &disk, &read_chain(20));
    assert_eq!((status(&mem), r.used_len), (S_OK, 21));
    assert_eq!(bytes(&mem, DATA, 20), disk.id().to_vec());
    assert!(disk.id().starts_with(b"hvkvm"));
    assert_eq!(bytes(&mem, DATA + 20, 4), vec![FILL; 4]);
    // A shorter buffer gets what fits.
    let r = serve(&mem, &disk, &read_chain(8));
    assert_eq!(r.used_len, 9);
    header(&mem, T_FLUSH, 0);
    let r = serve(&mem, &disk, &[d(HDR, 16, 0), d(STATUS, 1, W)]);
    assert_eq!((status(&mem), r.used_len), (S_OK, 1));
    let (ro, _t2) = self::disk(true);
    let r = serve(&mem, &ro, &[d(HDR, 16, 0), d(STATUS, 1, W)]);
    assert_eq!(
        (status(&mem), r.outcome),
        (
            S_OK,
            Outcome::Done {
                kind: T_FLUSH,
                bytes: 0
            }
        )
    );
}

#[test]
fn a_file_that_shrinks_under_the_vmm_is_ioerr() {
    let (disk, t) = disk(false);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t.0)
        .unwrap()
        .set_len(4 * 512)
        .unwrap();
    let mem = memory();
    header(&mem, T_IN, 8);
    serve(&mem, &disk, &read_chain(512));
    assert_eq!(status(&mem), S_IOERR);
    // What is still there reads.
    header(&mem, T_IN, 1);
    serve(&mem, &disk, &read_chain(512));
    assert_eq!(status(&mem), S_OK);
}

#[test]
fn the_device_serves_a_queue_and_counts() {
    let (disk, _t) = disk(false);
    let mem = memory();
    let mut block = Block::new(disk);
    block.activate(crate::virtio::F_VERSION_1);
    let q = MockSplitQueue::new(&mem, 16);
    header(&mem, T_IN, 2);
    q.build_desc_chain(&read_chain(512)).unwrap();
    let mut queue: Queue = q.create_queue().unwrap();
    assert!(block.process_queue(0, &mut queue, &mem), "interrupt wanted");
    assert_eq!(queue.next_used(), 1);
    assert_eq!(q.used().idx().load(), 1);
    let c = block.counters();
    assert_eq!((c.reads, c.bytes_read, c.failed), (1, 512, 0));
    // Nothing new: no interrupt.
    assert!(!block.process_queue(0, &mut queue, &mem));
}

/// A queue whose used ring is where the guard lets the device not write is
/// not served: no used entry, no interrupt; allowed again, it is.
#[test]
fn the_dma_guard_covers_the_rings() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (disk, _t) = disk(false);
    let mem = memory();
    let q = MockSplitQueue::new(&mem, 16);
    let used = q.used_addr().0;
    let refuse = Arc::new(AtomicBool::new(true));
    let r = refuse.clone();
    let guard: super::DmaGuard = Arc::new(move |gpa, len, write| {
        !(r.load(Ordering::SeqCst) && write && gpa <= used && gpa + len > used)
    });
    let mut block = Block::new(disk).with_guard(guard);
    block.activate(crate::virtio::F_VERSION_1);
    header(&mem, T_IN, 2);
    q.build_desc_chain(&read_chain(512)).unwrap();
    let mut queue: Queue = q.create_queue().unwrap();
    assert!(!block.process_queue(0, &mut queue, &mem));
    assert_eq!(q.used().idx().load(), 0);
    assert_eq!(block.counters().reads, 0);
    refuse.store(false, Ordering::SeqCst);
    assert!(block.process_queue(0, &mut queue, &mem));
    assert_eq!(q.used().idx().load(), 1);
}

#[test]
fn config_space() {
    // §5.2.4: capacity, size_max, seg_max, blk_size.
    let (disk, _t) = disk(false);
    let b = Block::new(disk);
    let mut c = [0u8; super::CONFIG_LEN];
    b.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), SECTORS);
    assert_eq!(
        u32::from_le_bytes(c[8..12].try_into().unwrap()),
        super::SIZE_MAX
    );
    assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
    assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
    let mut far = [0xFFu8; 4];
    b.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
    b.read_config(34, &mut far);
    assert_eq!(far, [0; 4]);
    let f = b.features();
    for bit in [
        super::F_SEG_MAX,
        super::F_SIZE_MAX,
        super::F_BLK_SIZE,
        super::F_FLUSH,
    ] {
        assert_ne!(f & bit, 0);
    }
    assert_eq!(f & super::F_RO, 0);
}

#[test]
fn opening_bad_disks_fails_with_a_reason() {
    use super::DiskError;
    let dir = std::env::temp_dir();
    let missing = dir.join("hvkvm-no-such-disk.img");
    assert!(matches!(
        DiskFile::open(&missing, false),
        Err(DiskError::Open(..))
    ));
    assert!(matches!(
        DiskFile::open(&dir, true),
        Err(DiskError::NotAFile(..) | DiskError::Open(..))
    ));
    let small = dir.join(format!("hvkvm-small-{}.img", std::process::id()));
    std::fs::write(&small, [0u8; 100]).unwrap();
    let e = DiskFile::open(&small, false).unwrap_err();
    assert!(
        e.to_string().contains("less than one 512-byte sector"),
        "{e}"
    );
    std::fs::write(&small, [0u8; 1100]).unwrap();
    assert_eq!(
        DiskFile::open(&small, false).unwrap().sectors(),
        2,
        "rounded down"
    );
    // A second writer is refused while the first holds the image.
    let first = DiskFile::open(&small, false).unwrap();
    let e = DiskFile::open(&small, false).unwrap_err();
    assert!(matches!(e, DiskError::Locked(_)), "{e}");
    assert!(matches!(
        DiskFile::open(&small, true),
        Err(DiskError::Locked(_))
    ));
    drop(first);
    let r1 = DiskFile::open(&small, true).unwrap();
    let _r2 = DiskFile::open(&small, true).expect("readers share");
    assert!(r1.read_only());
    drop(r1);
    std::fs::remove_file(&small).unwrap();
}
