//! One virtio-blk request (VIRTIO 1.2 §5.2.6): its descriptor chain checked
//! and split into the header, the data and the status byte, then served from
//! the disk file straight into or out of guest memory (`preadv`/`pwritev`).
//!
//! What a hostile driver can do and what it gets:
//! - a chain that loops, or whose next index runs past the table: it has no
//!   last descriptor, so no status byte either; nothing is written, and the
//!   chain is returned with used length 0;
//! - a buffer outside guest memory, a device-readable descriptor after a
//!   device-writable one, a header shorter than 16 bytes:
//!   VIRTIO_BLK_S_IOERR, nothing else read or written;
//! - no device-writable byte for the status: nothing at all (used length 0);
//! - data in the wrong direction (writable data for OUT, readable data for
//!   IN), a length that is not whole sectors, a range past the end of the
//!   disk, OUT to a read-only disk: IOERR before the file is touched;
//! - a file that shrinks or fails under the VMM: IOERR;
//! - an unknown request type: VIRTIO_BLK_S_UNSUPP.
//!
//! The device writes only into the request's own device-writable buffers.

use std::os::fd::AsRawFd;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::{BitmapSlice, BS};
use vm_memory::{GuestMemory, Permissions, VolatileSlice};

use super::disk::{DiskFile, SECTOR};

/// VIRTIO_BLK_T_IN: read sectors.
pub const T_IN: u32 = 0;
/// VIRTIO_BLK_T_OUT: write sectors.
pub const T_OUT: u32 = 1;
/// VIRTIO_BLK_T_FLUSH: make written data durable.
pub const T_FLUSH: u32 = 4;
/// VIRTIO_BLK_T_GET_ID: the device ID string.
pub const T_GET_ID: u32 = 8;
/// Success.
pub const S_OK: u8 = 0;
/// The request failed.
pub const S_IOERR: u8 = 1;
/// The request type is not supported.
pub const S_UNSUPP: u8 = 2;
/// The request header: type, reserved, sector.
pub const HEADER: usize = 16;
/// The length of the GET_ID string.
pub const ID_LEN: usize = 20;

/// What a request did, for the device's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Served; the type and the data bytes moved.
    Done {
        /// The request type.
        kind: u32,
        /// Data bytes read or written.
        bytes: u64,
    },
    /// Answered with this status (IOERR or UNSUPP).
    Failed(u8),
    /// No status byte to answer in: returned with used length 0.
    Unanswerable,
}

/// The result of serving one chain: the used length and what happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    /// Bytes the device wrote into the chain's writable buffers.
    pub used_len: u32,
    /// What happened.
    pub outcome: Outcome,
}

/// Guest buffers of one direction, as host slices.
struct Bufs<'a, B> {
    slices: Vec<VolatileSlice<'a, B>>,
    len: u64,
}

impl<'a, B: BitmapSlice> Bufs<'a, B> {
    fn new() -> Self {
        Bufs {
            slices: Vec::new(),
            len: 0,
        }
    }

    /// Removes the first `n` bytes (n <= len) into `out`.
    fn take_front(&mut self, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let s = self.slices.remove(0);
            let n = (out.len() - done).min(s.len());
            s.subslice(0, n)
                .map(|h| h.copy_to(&mut out[done..done + n]))
                .unwrap_or_default();
            done += n;
            if n < s.len() {
                if let Ok(rest) = s.offset(n) {
                    self.slices.insert(0, rest);
                }
            }
        }
        self.len -= out.len() as u64;
    }

    /// Removes the last byte's slice (len >= 1).
    fn take_last_byte(&mut self) -> Option<VolatileSlice<'a, B>> {
        let last = self.slices.pop()?;
        let n = last.len();
        let byte = last.offset(n - 1).ok()?;
        if n > 1 {
            self.slices.push(last.subslice(0, n - 1).ok()?);
        }
        self.len -= 1;
        Some(byte)
    }
}

/// Maps each descriptor of `descs` to host slices; false if one is not in
/// guest memory.
fn map<'a, M: GuestMemory>(
    mem: &'a M,
    descs: impl Iterator<Item = Descriptor>,
    access: Permissions,
    guard: &dyn Fn(u64, u64, bool) -> bool,
    out: &mut Bufs<'a, BS<'a, M::Bitmap>>,
) -> bool {
    for d in descs {
        if d.len() == 0 {
            continue;
        }
        if !guard(d.addr().0, d.len().into(), access == Permissions::Write) {
            return false;
        }
        let Ok(slices) = mem.get_slices(d.addr(), d.len() as usize, access) else {
            return false;
        };
        for s in slices {
            match s {
                Ok(s) => out.slices.push(s),
                Err(_) => return false,
            }
        }
        out.len += d.len() as u64;
    }
    true
}

/// Serves one request chain against `disk`.
/// `guard` says which guest memory the device may touch
/// ([`super::DmaGuard`]); a buffer it refuses is treated as outside guest
/// memory.
pub fn serve<M: GuestMemory>(
    chain: DescriptorChain<&M>,
    mem: &M,
    disk: &DiskFile,
    guard: &dyn Fn(u64, u64, bool) -> bool,
) -> Served {
    // The chain, checked whole first: it ends (no loop, no index past the
    // queue, every descriptor readable), readable descriptors come first.
    let mut descs: Vec<Descriptor> = Vec::with_capacity(4);
    let mut order_ok = true;
    let mut seen_writable = false;
    for d in chain {
        if d.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            order_ok = false;
        }
        descs.push(d);
    }
    // The iterator stopped early if the last descriptor still has a next: a
    // loop (its hop count ran out), a next index past the table, or a
    // descriptor it could not read.
    let complete = descs.last().is_some_and(|d| !d.has_next());
    if !complete {
        return Served {
            used_len: 0,
            outcome: Outcome::Unanswerable,
        };
    }
    let mut readable = Bufs::new();
    let mut writable = Bufs::new();
    let r_ok = map(
        mem,
        descs.iter().copied().filter(|d| !d.is_write_only()),
        Permissions::Read,
        guard,
        &mut readable,
    );
    // The status byte is the chain's last writable byte: map the last
    // writable descriptor on its own so that a bad data buffer still leaves a
    // status to answer in.
    let last_w = descs.iter().rposition(|d| d.is_write_only() && d.len() > 0);
    let Some(last_w) = last_w else {
        return Served {
            used_len: 0,
            outcome: Outcome::Unanswerable,
        };
    };
    let w_ok = map(
        mem,
        descs[..last_w]
            .iter()
            .copied()
            .filter(|d| d.is_write_only()),
        Permissions::Write,
        guard,
        &mut writable,
    );
    let mut tail = Bufs::new();
    if !map(
        mem,
        std::iter::once(descs[last_w]),
        Permissions::Write,
        guard,
        &mut tail,
    ) {
        return Served {
            used_len: 0,
            outcome: Outcome::Unanswerable,
        };
    }
    let Some(status) = tail.take_last_byte() else {
        return Served {
            used_len: 0,
            outcome: Outcome::Unanswerable,
        };
    };
    writable.slices.append(&mut tail.slices);
    writable.len += tail.len;

    let fail = |st: u8| {
        status.copy_from(&[st]);
        Served {
            used_len: 1,
            outcome: Outcome::Failed(st),
        }
    };
    if !(order_ok && r_ok && w_ok) || readable.len < HEADER as u64 {
        return fail(S_IOERR);
    }
    let mut header = [0u8; HEADER];
    readable.take_front(&mut header);
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());

    let in_range = |len: u64| {
        len % SECTOR == 0
            && sector
                .checked_mul(SECTOR)
                .and_then(|off| off.checked_add(len))
                .is_some_and(|end| end <= disk.sectors() * SECTOR)
    };
    let (result, written) = match kind {
        T_IN => {
            if readable.len != 0 || !in_range(writable.len) {
                return fail(S_IOERR);
            }
            let r = vectored(disk, &writable.slices, sector * SECTOR, false);
            (r.map(|()| writable.len), writable.len)
        }
        T_OUT => {
            if writable.len != 0 || disk.read_only() || !in_range(readable.len) {
                return fail(S_IOERR);
            }
            let r = vectored(disk, &readable.slices, sector * SECTOR, true);
            (r.map(|()| readable.len), 0)
        }
        T_FLUSH => {
            let r = if disk.read_only() {
                Ok(())
            } else {
                disk.file().sync_data()
            };
            (r.map(|()| 0), 0)
        }
        T_GET_ID => {
            let mut left = ID_LEN;
            let mut n = 0;
            for s in &writable.slices {
                let k = left.min(s.len());
                if let Ok(h) = s.subslice(0, k) {
                    h.copy_from(&disk.id()[n..n + k]);
                }
                n += k;
                left -= k;
            }
            (Ok(n as u64), n as u64)
        }
        _ => return fail(S_UNSUPP),
    };
    match result {
        Ok(bytes) => {
            status.copy_from(&[S_OK]);
            Served {
                used_len: written as u32 + 1,
                outcome: Outcome::Done { kind, bytes },
            }
        }
        Err(e) => {
            log::debug!(
                "disk {}: request type {kind} failed: {e}",
                disk.path().display()
            );
            fail(S_IOERR)
        }
    }
}

/// The most iovecs one system call takes (IOV_MAX).
const IOV_MAX: usize = 1024;

/// Reads the file at `offset` into `slices` (or writes them there), all of
/// it: a short transfer is continued, the end of the file is an error.
fn vectored<B: BitmapSlice>(
    disk: &DiskFile,
    slices: &[VolatileSlice<'_, B>],
    mut offset: u64,
    write: bool,
) -> std::io::Result<()> {
    let fd = disk.file().as_raw_fd();
    // (slice index, bytes of it already done)
    let (mut i, mut skip) = (0usize, 0usize);
    while i < slices.len() {
        let guards: Vec<_> = slices[i..]
            .iter()
            .take(IOV_MAX)
            .map(|s| s.ptr_guard_mut())
            .collect();
        let iov: Vec<libc::iovec> = guards
            .iter()
            .zip(&slices[i..])
            .enumerate()
            .map(|(k, (g, s))| {
                let off = if k == 0 { skip } else { 0 };
                libc::iovec {
                    // SAFETY: `off` is less than the slice's length (a slice is
                    // skipped once done), so the pointer stays inside it.
                    iov_base: unsafe { g.as_ptr().add(off) }.cast(),
                    iov_len: s.len() - off,
                }
            })
            .collect();
        let off = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: every iovec points into a slice of guest memory that the
        // guards keep mapped for the call; the kernel reads or writes at most
        // iov_len bytes of each.
        let n = unsafe {
            if write {
                libc::pwritev(fd, iov.as_ptr(), iov.len() as i32, off)
            } else {
                libc::preadv(fd, iov.as_ptr(), iov.len() as i32, off)
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the disk file ended before the request did (it shrank)",
            ));
        }
        let mut n = n as usize;
        offset += n as u64;
        while n > 0 && i < slices.len() {
            let left = slices[i].len() - skip;
            if n >= left {
                if !write {
                    slices[i].bitmap().mark_dirty(0, slices[i].len());
                }
                n -= left;
                i += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}
