//! The hypercall page as a GPA overlay (TLFS "Establishing the Hypercall
//! Interface" and "GPA Overlay Pages"): a page of the VMM's own memory that a
//! VTL's [`crate::memview::MemoryView`] maps read-only over whatever is beneath
//! it (RAM or nothing), uncovering it again when the page is moved or
//! disabled. Guest writes to the page reach user space as MMIO exits.

use vm_memory::mmap::MmapRegion;

/// Bytes in a page.
pub(crate) const PAGE: u64 = 4096;

/// One KVM memslot of guest RAM as the partition registered it.
#[derive(Copy, Clone, Debug)]
pub(crate) struct RamSlot {
    pub slot: u32,
    pub gpa: u64,
    pub len: u64,
    pub host: u64,
}

/// The overlay page's memory.
#[derive(Debug)]
pub(crate) struct Overlay {
    page: MmapRegion<()>,
}

impl Overlay {
    /// An overlay page holding `contents` (padded with `int3`).
    pub fn new(contents: &[u8]) -> std::io::Result<Overlay> {
        let page = MmapRegion::new(PAGE as usize).map_err(std::io::Error::other)?;
        let mut bytes = vec![0xCCu8; PAGE as usize];
        bytes[..contents.len()].copy_from_slice(contents);
        // SAFETY: `page` is a fresh private anonymous mapping of PAGE bytes that
        // nothing else references yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), page.as_ptr(), bytes.len()) };
        Ok(Overlay { page })
    }

    /// The page's host address, for its memslot.
    pub fn host(&self) -> u64 {
        self.page.as_ptr() as u64
    }
}
