//! The backing file of a virtio-blk device: a raw image (a regular file or a
//! block device), opened read-write or read-only, locked against a second
//! writer, with its size in 512-byte sectors.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A sector: the unit of every virtio-blk offset and size (VIRTIO 1.2 §5.2.6).
pub const SECTOR: u64 = 512;

/// Why a disk cannot be used. Each is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Opening the file.
    #[error("disk {0}: {1}")]
    Open(PathBuf, #[source] std::io::Error),
    /// Its size.
    #[error("disk {0}: cannot tell its size: {1}")]
    Size(PathBuf, #[source] std::io::Error),
    /// Smaller than one sector.
    #[error("disk {0}: {1} bytes is less than one 512-byte sector")]
    Empty(PathBuf, u64),
    /// Not a file or block device.
    #[error("disk {0}: not a regular file or block device")]
    NotAFile(PathBuf),
    /// Another process holds the lock.
    #[error("disk {0}: in use by another process (it holds a lock on the file)")]
    Locked(PathBuf),
}

/// An open raw disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
    id: [u8; 20],
}

impl DiskFile {
    /// Opens `path` (read-only if `read_only`) and takes a lock on it: shared
    /// for a read-only disk, exclusive otherwise, so two VMMs never write one
    /// image. A size that is not a whole number of sectors is rounded down.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let p = || path.to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| DiskError::Open(p(), e))?;
        let meta = file.metadata().map_err(|e| DiskError::Size(p(), e))?;
        let ft = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(DiskError::NotAFile(p()));
        }
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => DiskError::Locked(p()),
                _ => DiskError::Open(p(), e),
            });
        }
        let bytes = {
            use std::io::Seek;
            let mut f = &file;
            f.seek(std::io::SeekFrom::End(0))
                .map_err(|e| DiskError::Size(p(), e))?
        };
        if bytes < SECTOR {
            return Err(DiskError::Empty(p(), bytes));
        }
        if bytes % SECTOR != 0 {
            log::warn!(
                "disk {}: {bytes} bytes is not a whole number of sectors; the last {} bytes \
                 are not visible to the guest",
                path.display(),
                bytes % SECTOR
            );
        }
        // GET_ID: the device and inode, which tell images apart on this host.
        let mut id = [0u8; 20];
        let s = format!("hvkvm{:x}.{:x}", meta.dev(), meta.ino());
        let n = s.len().min(20);
        id[..n].copy_from_slice(&s.as_bytes()[..n]);
        Ok(DiskFile {
            file,
            path: path.to_path_buf(),
            sectors: bytes / SECTOR,
            read_only,
            id,
        })
    }

    /// The image's size in sectors, as the guest sees it.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device ID string (GET_ID), NUL-padded.
    pub fn id(&self) -> &[u8; 20] {
        &self.id
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }
}
