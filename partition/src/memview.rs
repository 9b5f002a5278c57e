//! One VTL's view of guest RAM as the KVM memslots of that VTL's VM (TLFS
//! "Virtual Secure Mode", "Memory Access Protections"; "GPA Overlay Pages").
//!
//! The view is computed, not edited: the RAM regions, minus the pages a
//! higher VTL made inaccessible, with the pages it made read-only in
//! read-only slots, and the VTL's overlay page (the hypercall page) in a
//! read-only slot of its own over whatever it covers. A change recomputes the
//! wanted slots and applies the difference to KVM: slots that are no longer
//! wanted are deleted first, then the new ones registered; a slot that is
//! unchanged keeps its number. Unprotecting pages joins the pieces again.
//!
//! Stock KVM gives a slot three strengths: none (no slot: every access is an
//! MMIO exit, a fetch an emulation failure), read and execute
//! (`KVM_MEM_READONLY`: writes exit), and all. So a page's access here is
//! one of [`Access`]; the HV_MAP_GPA_FLAGS a guest asks for are mapped onto
//! it by [`Access::from_map_flags`], and the rest are refused.

use std::collections::BTreeMap;

use kvm_bindings::KVM_MEM_READONLY;

use crate::overlay::{RamSlot, PAGE};

/// What a lower VTL may do with a page of RAM, as a KVM memslot can enforce
/// it. Ordered from least to most access: the effective access of a page
/// protected by several higher VTLs is the least of theirs.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Access {
    /// No slot: reads, writes and fetches are refused.
    None,
    /// A read-only slot: reads and fetches are allowed, writes refused.
    ReadExecute,
    /// A normal slot.
    Full,
}

impl Access {
    /// The access HV_MAP_GPA_FLAGS `flags` ask for, if a memslot can give
    /// exactly that: no access (0), readable and executable without being
    /// writable (R with KX, with or without UX), or readable, writable and
    /// executable. A readable page that is not executable, a writable page
    /// that is not readable, or one that is not executable cannot be
    /// expressed ([`crate::choices`]).
    pub fn from_map_flags(flags: u32) -> Option<Access> {
        use hv_defs::vsm::MapGpaFlags as F;
        let (r, w, kx) = (
            flags & F::READABLE != 0,
            flags & F::WRITABLE != 0,
            flags & F::KERNEL_EXECUTABLE != 0,
        );
        if flags & !0xF != 0 {
            return None;
        }
        match (r, w, kx) {
            _ if flags == 0 => Some(Access::None),
            (true, false, true) => Some(Access::ReadExecute),
            (true, true, true) => Some(Access::Full),
            _ => None,
        }
    }

    /// Whether an access of this kind is allowed.
    pub fn allows(self, kind: AccessKind) -> bool {
        match (self, kind) {
            (Access::Full, _) => true,
            (Access::ReadExecute, AccessKind::Read | AccessKind::Execute) => true,
            (Access::ReadExecute, AccessKind::Write) => false,
            (Access::None, _) => false,
        }
    }
}

/// The kind of a memory access (HV_INTERCEPT_ACCESS_TYPE).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum AccessKind {
    Read,
    Write,
    Execute,
}

/// The protections one higher VTL applies to this VTL's RAM: a default
/// (VsmPartitionConfig.DefaultVtlProtectionMask once EnableVtlProtection is
/// set) and the pages HvCallModifyVtlProtectionMask changed.
#[derive(Clone, Debug)]
pub(crate) struct Protections {
    pub default: Access,
    /// GPA page number -> access, for pages whose access differs from the
    /// default.
    pub pages: BTreeMap<u64, Access>,
}

impl Default for Protections {
    fn default() -> Self {
        Protections {
            default: Access::Full,
            pages: BTreeMap::new(),
        }
    }
}

impl Protections {
    fn at(&self, page: u64) -> Access {
        self.pages.get(&page).copied().unwrap_or(self.default)
    }

    /// Sets `page`'s access, keeping only pages that differ from the default.
    pub fn set(&mut self, page: u64, access: Access) {
        if access == self.default {
            self.pages.remove(&page);
        } else {
            self.pages.insert(page, access);
        }
    }
}

/// One memslot as it is, or should be, registered.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Region {
    pub gpa: u64,
    pub len: u64,
    pub host: u64,
    pub flags: u32,
}

impl Region {
    /// The slot of a whole RAM region.
    fn whole(r: &RamSlot) -> Region {
        Region {
            gpa: r.gpa,
            len: r.len,
            host: r.host,
            flags: 0,
        }
    }
}

/// Where a view's slot changes go: KVM (a VM) or, in tests, a recorder.
pub(crate) trait SlotSink {
    /// Registers `region` as `slot`, or deletes `slot` (`None`).
    fn set(&mut self, slot: u32, region: Option<&Region>) -> Result<(), kvm_ioctls::Error>;
}

impl SlotSink for &kvm_ioctls::VmFd {
    fn set(&mut self, slot: u32, region: Option<&Region>) -> Result<(), kvm_ioctls::Error> {
        let r = region.copied().unwrap_or(Region {
            gpa: 0,
            len: 0,
            host: 0,
            flags: 0,
        });
        let r = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: r.flags,
            guest_phys_addr: r.gpa,
            memory_size: r.len,
            userspace_addr: r.host,
        };
        // SAFETY: every region a view registers is a part of a RAM region the
        // partition owns for as long as its VMs exist, or the overlay page the
        // VTL's space owns for as long as its VM exists; a deletion has no
        // memory.
        unsafe { self.set_user_memory_region(r) }
    }
}

/// Slot numbers a view may use: numbers given back, then fresh ones counted
/// up from `next` (the partition's own VM) or down from it (an adopted VM,
/// whose VMM owns the low numbers), never past `stop`.
#[derive(Clone, Debug)]
pub(crate) struct SlotNumbers {
    free: Vec<u32>,
    next: u32,
    stop: u32,
    down: bool,
}

impl SlotNumbers {
    /// Counting up from `first` to below `end`.
    pub fn up(first: u32, end: u32) -> SlotNumbers {
        SlotNumbers {
            free: Vec::new(),
            next: first,
            stop: end,
            down: false,
        }
    }

    /// `given` first, then counting down from `top` to above `floor`.
    pub fn given_then_down(given: &[u32], top: u32, floor: u32) -> SlotNumbers {
        SlotNumbers {
            free: given.iter().rev().copied().collect(),
            next: top,
            stop: floor,
            down: true,
        }
    }

    fn take(&mut self) -> Option<u32> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        if self.down {
            (self.next > self.stop).then(|| {
                self.next -= 1;
                self.next + 1
            })
        } else {
            (self.next < self.stop).then(|| {
                self.next += 1;
                self.next - 1
            })
        }
    }

    fn give(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// How many more numbers can be taken.
    fn available(&self) -> usize {
        let fresh = if self.down {
            self.next.saturating_sub(self.stop)
        } else {
            self.stop.saturating_sub(self.next)
        };
        self.free.len() + fresh as usize
    }
}

/// The protections and overlay of one VTL's memory, and the slots that
/// give them.
#[derive(Debug)]
pub(crate) struct MemoryView {
    ram: Vec<RamSlot>,
    /// The overlay page (GPA, host address) while mapped.
    overlay: Option<(u64, u64)>,
    /// By the protecting VTL (index): its protections of this VTL's RAM.
    by: [Protections; 3],
    /// The registered slots by GPA.
    applied: BTreeMap<u64, (u32, Region)>,
    numbers: SlotNumbers,
}

/// A change a view could not make; the view is as it was.
#[derive(Debug)]
pub(crate) enum ViewError {
    /// More slots than KVM_CAP_NR_MEMSLOTS leaves.
    TooManySlots { wanted: usize },
    /// KVM refused a slot change (the view may be partly applied).
    Kvm(kvm_ioctls::Error),
}

impl std::fmt::Display for ViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ViewError::TooManySlots { wanted } => {
                write!(f, "{wanted} memory slots wanted, more than KVM offers")
            }
            ViewError::Kvm(e) => write!(f, "KVM_SET_USER_MEMORY_REGION: {e}"),
        }
    }
}

impl MemoryView {
    /// The view of a VM whose RAM is registered as `ram` (every region
    /// whole, no protections, no overlay), taking new slot numbers from
    /// `numbers`.
    pub fn new(ram: Vec<RamSlot>, numbers: SlotNumbers) -> MemoryView {
        let applied = ram
            .iter()
            .map(|r| (r.gpa, (r.slot, Region::whole(r))))
            .collect();
        MemoryView {
            ram,
            overlay: None,
            by: Default::default(),
            applied,
            numbers,
        }
    }

    /// Whether `gpa` is guest RAM.
    pub fn is_ram(&self, gpa: u64) -> bool {
        self.ram.iter().any(|r| gpa >= r.gpa && gpa - r.gpa < r.len)
    }

    /// The overlay page's GPA while mapped.
    pub fn overlay_at(&self) -> Option<u64> {
        self.overlay.map(|(gpa, _)| gpa)
    }

    /// The protections `vtl` applies to this view's RAM.
    pub fn protections(&self, vtl: hv_defs::Vtl) -> &Protections {
        &self.by[(vtl.0 as usize).min(2)]
    }

    /// Whether any higher VTL restricts any page.
    pub fn restricted(&self) -> bool {
        self.by
            .iter()
            .any(|p| p.default != Access::Full || !p.pages.is_empty())
    }

    /// The access a lower VTL has to RAM page `page` (a GPA page number),
    /// and the VTL that restricts it most (for its intercept), if any does.
    pub fn access(&self, page: u64) -> (Access, Option<hv_defs::Vtl>) {
        let mut best = (Access::Full, None);
        // The highest VTL whose protection is the strictest.
        for (vtl, p) in self.by.iter().enumerate().rev() {
            let a = p.at(page);
            if a < best.0 {
                best = (a, Some(hv_defs::Vtl(vtl as u8)));
            }
        }
        best
    }

    /// Maps the overlay page (host address `host`) at `gpa`, or unmaps it.
    pub fn set_overlay(
        &mut self,
        sink: impl SlotSink,
        overlay: Option<(u64, u64)>,
    ) -> Result<(), ViewError> {
        let old = std::mem::replace(&mut self.overlay, overlay);
        self.apply(sink).inspect_err(|_| self.overlay = old)
    }

    /// Replaces the protections `vtl` applies and reshapes the slots; on a
    /// failure to fit the slots the protections are as before.
    pub fn set_protections(
        &mut self,
        sink: impl SlotSink,
        vtl: hv_defs::Vtl,
        protections: Protections,
    ) -> Result<(), ViewError> {
        let i = (vtl.0 as usize).min(2);
        let old = std::mem::replace(&mut self.by[i], protections);
        match self.apply(sink) {
            Err(e @ ViewError::TooManySlots { .. }) => {
                self.by[i] = old;
                Err(e)
            }
            r => r,
        }
    }

    /// The slots the view wants, in GPA order.
    pub fn wanted(&self) -> Vec<Region> {
        let mut out = Vec::new();
        for r in &self.ram {
            let (start, end) = (r.gpa, r.gpa + r.len);
            // Every page whose access may differ from its neighbours' starts
            // and ends a run.
            let mut cuts: Vec<u64> = vec![start, end];
            for p in &self.by {
                let first = start / PAGE;
                let last = end.div_ceil(PAGE);
                for (&page, _) in p.pages.range(first..last) {
                    cuts.push((page * PAGE).max(start));
                    cuts.push(((page + 1) * PAGE).min(end));
                }
            }
            if let Some((gpa, _)) = self.overlay {
                if gpa < end && gpa + PAGE > start {
                    cuts.push(gpa.max(start));
                    cuts.push((gpa + PAGE).min(end));
                }
            }
            cuts.sort_unstable();
            cuts.dedup();
            let mut run: Option<(u64, u64, Access)> = None;
            let flush = |run: Option<(u64, u64, Access)>, out: &mut Vec<Region>| {
                if let Some((s, e, a)) = run {
                    let flags = match a {
                        Access::None => return,
                        Access::ReadExecute => KVM_MEM_READONLY,
                        Access::Full => 0,
                    };
                    out.push(Region {
                        gpa: s,
                        len: e - s,
                        host: r.host + (s - r.gpa),
                        flags,
                    });
                }
            };
            for w in cuts.windows(2) {
                let (s, e) = (w[0], w[1]);
                let covered = self.overlay.is_some_and(|(g, _)| s >= g && s < g + PAGE);
                if covered {
                    flush(run.take(), &mut out);
                    continue;
                }
                let a = self.access(s / PAGE).0;
                run = match run {
                    Some((rs, re, ra)) if re == s && ra == a => Some((rs, e, a)),
                    other => {
                        flush(other, &mut out);
                        Some((s, e, a))
                    }
                };
            }
            flush(run, &mut out);
        }
        if let Some((gpa, host)) = self.overlay {
            out.push(Region {
                gpa,
                len: PAGE,
                host,
                flags: KVM_MEM_READONLY,
            });
        }
        out.sort_unstable();
        out
    }

    /// Applies [`Self::wanted`] to `sink`: deletions first, then new slots.
    fn apply(&mut self, mut sink: impl SlotSink) -> Result<(), ViewError> {
        let wanted = self.wanted();
        let keep: std::collections::BTreeSet<Region> = wanted.iter().copied().collect();
        let stale: Vec<(u64, u32)> = self
            .applied
            .iter()
            .filter(|(_, (_, r))| !keep.contains(r))
            .map(|(&g, &(s, _))| (g, s))
            .collect();
        let new: Vec<Region> = wanted
            .iter()
            .filter(|r| self.applied.get(&r.gpa).map(|(_, a)| a) != Some(r))
            .copied()
            .collect();
        if new.len() > self.numbers.available() + stale.len() {
            return Err(ViewError::TooManySlots {
                wanted: wanted.len(),
            });
        }
        for (gpa, slot) in stale {
            sink.set(slot, None).map_err(ViewError::Kvm)?;
            self.applied.remove(&gpa);
            self.numbers.give(slot);
        }
        for r in new {
            let Some(slot) = self.numbers.take() else {
                return Err(ViewError::TooManySlots {
                    wanted: wanted.len(),
                });
            };
            if let Err(e) = sink.set(slot, Some(&r)) {
                self.numbers.give(slot);
                return Err(ViewError::Kvm(e));
            }
            self.applied.insert(r.gpa, (slot, r));
        }
        Ok(())
    }

    /// How many slots are registered.
    #[cfg(test)]
    pub fn slots(&self) -> usize {
        self.applied.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_defs::Vtl;

    /// Records slot changes and checks KVM's rules: no overlap within the
    /// VM, no slot registered twice, no deletion of a slot that is absent.
    #[derive(Default)]
    struct Kvm {
        slots: BTreeMap<u32, Region>,
        ops: usize,
    }

    impl SlotSink for &mut Kvm {
        fn set(&mut self, slot: u32, region: Option<&Region>) -> Result<(), kvm_ioctls::Error> {
            self.ops += 1;
            match region {
                None => {
                    assert!(self.slots.remove(&slot).is_some(), "slot {slot} absent");
                }
                Some(r) => {
                    assert!(!self.slots.contains_key(&slot), "slot {slot} in use");
                    for o in self.slots.values() {
                        assert!(
                            r.gpa + r.len <= o.gpa || o.gpa + o.len <= r.gpa,
                            "{r:x?} overlaps {o:x?}"
                        );
                    }
                    self.slots.insert(slot, *r);
                }
            }
            Ok(())
        }
    }

    const HOST: u64 = 0x7000_0000_0000;

    fn view(limit: u32) -> (MemoryView, Kvm) {
        let ram = vec![
            RamSlot {
                slot: 0,
                gpa: 0,
                len: 0x10_0000,
                host: HOST,
            },
            RamSlot {
                slot: 1,
                gpa: 0x100_0000,
                len: 0x4000,
                host: HOST + 0x10_0000,
            },
        ];
        let mut kvm = Kvm::default();
        for r in &ram {
            kvm.slots.insert(r.slot, Region::whole(r));
        }
        (MemoryView::new(ram, SlotNumbers::up(2, limit)), kvm)
    }

    fn protect(v: &mut MemoryView, kvm: &mut Kvm, pages: &[u64], a: Access) {
        let mut p = v.protections(Vtl::VTL1).clone();
        for &page in pages {
            p.set(page, a);
        }
        v.set_protections(kvm, Vtl::VTL1, p).unwrap();
    }

    /// HV_MAP_GPA_FLAGS (TLFS "HV_MAP_GPA_FLAGS"): bit 0 R, 1 W, 2 KX, 3 UX;
    /// only what a memslot can give is accepted.
    #[test]
    fn map_flags_that_a_memslot_can_enforce() {
        assert_eq!(Access::from_map_flags(0), Some(Access::None));
        assert_eq!(Access::from_map_flags(0b0101), Some(Access::ReadExecute));
        assert_eq!(Access::from_map_flags(0b1101), Some(Access::ReadExecute));
        assert_eq!(Access::from_map_flags(0b0111), Some(Access::Full));
        assert_eq!(Access::from_map_flags(0b1111), Some(Access::Full));
        for refused in [0b0001, 0b0011, 0b0010, 0b0100, 0b1000, 0b1001, 0b0110, 0x10] {
            assert_eq!(Access::from_map_flags(refused), None, "{refused:#b}");
        }
        assert!(Access::ReadExecute.allows(AccessKind::Execute));
        assert!(!Access::ReadExecute.allows(AccessKind::Write));
        assert!(!Access::None.allows(AccessKind::Read));
    }

    /// A protected page splits its RAM slot in three; lifting it joins the
    /// slot again, with its original extent.
    #[test]
    fn protecting_a_page_splits_and_lifting_joins() {
        let (mut v, mut kvm) = view(100);
        protect(&mut v, &mut kvm, &[0x10], Access::None);
        let regions: Vec<Region> = kvm.slots.values().copied().collect();
        assert_eq!(regions.len(), 3, "{regions:x?}");
        assert!(kvm
            .slots
            .values()
            .all(|r| !(r.gpa..r.gpa + r.len).contains(&0x10_000)));
        assert_eq!(v.access(0x10), (Access::None, Some(Vtl::VTL1)));
        protect(&mut v, &mut kvm, &[0x11], Access::ReadExecute);
        let ro: Vec<&Region> = kvm
            .slots
            .values()
            .filter(|r| r.flags == KVM_MEM_READONLY)
            .collect();
        assert_eq!(ro.len(), 1);
        assert_eq!(
            (ro[0].gpa, ro[0].len, ro[0].host),
            (0x11000, 0x1000, HOST + 0x11000)
        );
        protect(&mut v, &mut kvm, &[0x10, 0x11], Access::Full);
        let mut all: Vec<Region> = kvm.slots.values().copied().collect();
        all.sort();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].gpa, all[0].len), (0, 0x10_0000));
        assert!(!v.restricted());
    }

    /// Adjacent pages with the same access share one slot; the overlay page
    /// sits over protected RAM in a slot of its own.
    #[test]
    fn runs_merge_and_the_overlay_covers() {
        let (mut v, mut kvm) = view(100);
        protect(&mut v, &mut kvm, &[0x20, 0x21, 0x22], Access::ReadExecute);
        assert_eq!(v.slots(), 4);
        v.set_overlay(&mut kvm, Some((0x21000, 0xAB_C000))).unwrap();
        let overlay: Vec<&Region> = kvm.slots.values().filter(|r| r.host == 0xAB_C000).collect();
        assert_eq!(overlay.len(), 1);
        assert_eq!(v.slots(), 6);
        v.set_overlay(&mut kvm, None).unwrap();
        assert_eq!(v.slots(), 4);
        // The second RAM region's last page, and a page past it (not RAM:
        // nothing to cut).
        protect(&mut v, &mut kvm, &[0x1003, 0x1004], Access::None);
        assert!(kvm
            .slots
            .values()
            .any(|r| r.gpa == 0x100_0000 && r.len == 0x3000));
    }

    /// The strictest protection wins, and the intercept goes to the VTL
    /// that set it (the highest of equals).
    #[test]
    fn several_higher_vtls() {
        let (mut v, mut kvm) = view(100);
        let mut p2 = Protections::default();
        p2.set(5, Access::ReadExecute);
        v.set_protections(&mut kvm, Vtl::VTL2, p2).unwrap();
        protect(&mut v, &mut kvm, &[5], Access::None);
        assert_eq!(v.access(5), (Access::None, Some(Vtl::VTL1)));
        protect(&mut v, &mut kvm, &[5], Access::ReadExecute);
        assert_eq!(v.access(5), (Access::ReadExecute, Some(Vtl::VTL2)));
        assert_eq!(v.access(6), (Access::Full, None));
    }

    /// A default mask applies to every page not named; past the slot
    /// budget a change is refused and nothing changes.
    #[test]
    fn default_mask_and_the_slot_budget() {
        let (mut v, mut kvm) = view(100);
        let p = Protections {
            default: Access::ReadExecute,
            pages: BTreeMap::new(),
        };
        v.set_protections(&mut kvm, Vtl::VTL1, p).unwrap();
        assert!(kvm.slots.values().all(|r| r.flags == KVM_MEM_READONLY));
        let (mut v, mut kvm) = view(5);
        // Three free numbers beyond the RAM's own: one split page costs two
        // (and gives the whole slot's number back).
        protect(&mut v, &mut kvm, &[0x40], Access::None);
        let before = kvm.slots.clone();
        let mut p = v.protections(Vtl::VTL1).clone();
        for page in [0x50, 0x60, 0x70] {
            p.set(page, Access::None);
        }
        assert!(matches!(
            v.set_protections(&mut kvm, Vtl::VTL1, p),
            Err(ViewError::TooManySlots { .. })
        ));
        assert_eq!(kvm.slots, before);
        assert_eq!(v.access(0x50).0, Access::Full);
        assert_eq!(v.access(0x40).0, Access::None);
    }

    /// Slot numbers of an adopted VM: the VMM's given pair first, then from
    /// the top down.
    #[test]
    fn slot_numbers() {
        let mut n = SlotNumbers::given_then_down(&[7, 8], 100, 98);
        assert_eq!(n.available(), 4);
        assert_eq!(
            [n.take(), n.take(), n.take(), n.take(), n.take()],
            [Some(7), Some(8), Some(100), Some(99), None]
        );
        n.give(99);
        assert_eq!(n.take(), Some(99));
        let mut up = SlotNumbers::up(3, 5);
        assert_eq!([up.take(), up.take(), up.take()], [Some(3), Some(4), None]);
    }
}
