//! The hypercall page as a GPA overlay (TLFS "Establishing the Hypercall
//! Interface" and "GPA Overlay Pages"): a read-only KVM memslot over one page of
//! the GPA space, covering whatever is beneath it (RAM or nothing) and uncovering
//! it again when the page is moved or disabled. The RAM slot under the page is
//! split around it; guest writes to the page reach user space as MMIO exits.

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
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

impl RamSlot {
    fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa - self.gpa < self.len
    }
}

/// The overlay page's memory and where it is mapped.
#[derive(Debug)]
pub(crate) struct Overlay {
    page: MmapRegion<()>,
    ram: Vec<RamSlot>,
    /// The slot numbers used for the overlay and for the RAM above it.
    overlay_slot: u32,
    upper_slot: u32,
    /// The mapped GPA, if any.
    at: Option<u64>,
    /// Whether the RAM below / above the mapped page has a slot of its own (a
    /// slot KVM does not have cannot be deleted).
    lower: bool,
    upper: bool,
}

impl Overlay {
    /// An overlay page holding `contents` (padded with `int3`), not yet mapped.
    /// The overlay uses `slots` (the page's, the RAM above it), or the two
    /// slots above the highest RAM slot.
    pub fn new(
        contents: &[u8],
        ram: Vec<RamSlot>,
        slots: Option<[u32; 2]>,
    ) -> std::io::Result<Overlay> {
        let page = MmapRegion::new(PAGE as usize).map_err(std::io::Error::other)?;
        let mut bytes = vec![0xCCu8; PAGE as usize];
        bytes[..contents.len()].copy_from_slice(contents);
        // SAFETY: `page` is a fresh private anonymous mapping of PAGE bytes that
        // nothing else references yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), page.as_ptr(), bytes.len()) };
        let next = ram.iter().map(|r| r.slot + 1).max().unwrap_or(0);
        let [overlay_slot, upper_slot] = slots.unwrap_or([next, next + 1]);
        Ok(Overlay {
            page,
            ram,
            overlay_slot,
            upper_slot,
            at: None,
            lower: false,
            upper: false,
        })
    }

    /// The two slots the overlay uses (the page's, the RAM above it).
    pub fn slots(&self) -> [u32; 2] {
        [self.overlay_slot, self.upper_slot]
    }

    /// The GPA of the page, if mapped.
    pub fn at(&self) -> Option<u64> {
        self.at
    }

    /// Maps the page at `to` (page aligned) or unmaps it (`None`), restoring what
    /// it covered. The caller keeps every vCPU out of KVM_RUN meanwhile: a RAM
    /// slot is briefly absent while it is split or joined.
    pub fn place(&mut self, vm: &VmFd, to: Option<u64>) -> Result<(), kvm_ioctls::Error> {
        if self.at == to {
            return Ok(());
        }
        if let Some(from) = self.at.take() {
            self.set(vm, self.overlay_slot, from, 0, 0, 0)?;
            if let Some(r) = self.ram_at(from) {
                // Join the RAM slot again: drop both halves, register it whole.
                if std::mem::take(&mut self.upper) {
                    self.set(vm, self.upper_slot, 0, 0, 0, 0)?;
                }
                if std::mem::take(&mut self.lower) {
                    self.set(vm, r.slot, 0, 0, 0, 0)?;
                }
                self.set(vm, r.slot, r.gpa, r.len, r.host, 0)?;
            }
        }
        if let Some(gpa) = to {
            if let Some(r) = self.ram_at(gpa) {
                self.set(vm, r.slot, 0, 0, 0, 0)?;
                let below = gpa - r.gpa;
                if below > 0 {
                    self.set(vm, r.slot, r.gpa, below, r.host, 0)?;
                    self.lower = true;
                }
                let above = r.len.saturating_sub(below + PAGE);
                if above > 0 {
                    self.set(
                        vm,
                        self.upper_slot,
                        gpa + PAGE,
                        above,
                        r.host + below + PAGE,
                        0,
                    )?;
                    self.upper = true;
                }
            }
            let host = self.page.as_ptr() as u64;
            self.set(vm, self.overlay_slot, gpa, PAGE, host, KVM_MEM_READONLY)?;
            self.at = Some(gpa);
        }
        Ok(())
    }

    fn ram_at(&self, gpa: u64) -> Option<RamSlot> {
        self.ram.iter().copied().find(|r| r.contains(gpa))
    }

    fn set(
        &self,
        vm: &VmFd,
        slot: u32,
        gpa: u64,
        len: u64,
        host: u64,
        flags: u32,
    ) -> Result<(), kvm_ioctls::Error> {
        let r = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: `host` is either 0 with `len` 0 (deleting the slot), the overlay
        // page this struct owns, or a part of a RAM region the partition owns for
        // as long as the VM exists; every range lies inside its mapping.
        unsafe { vm.set_user_memory_region(r) }
    }
}
