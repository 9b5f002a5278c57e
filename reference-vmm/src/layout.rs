//! The guest-physical memory map.
//!
//! ```text
//! 0x0000_0000  usable RAM below 640 KiB-ish: the real-mode trampoline Linux needs
//!              for the MADT wakeup path lives here; the zero page and the command
//!              line too (the kernel copies both early)
//! 0x0008_0000  reserved: VMM page tables, GDT, ACPI tables (the kernel owns usable
//!              RAM long before it starts APs, so AP page tables live here)
//! 0x0010_0000  usable RAM up to the end of memory, below the MMIO hole
//! 0xC000_0000  MMIO hole: virtio-mmio devices (0xD000_0000, 4 KiB each), the MP
//!              wakeup mailbox (unbacked), IOAPIC, LAPIC
//! 0x1_0000_0000 the rest of RAM, if any
//! ```

/// Where the zero page (boot_params) goes.
pub const ZERO_PAGE: u64 = 0x7000;
/// The boot stack of the BSP.
pub const BOOT_STACK: u64 = 0x8FF0;
/// Where the kernel command line goes.
pub const CMDLINE: u64 = 0x20000;
/// Room for the command line.
pub const CMDLINE_MAX: usize = 0x10000;
/// End of usable low RAM.
pub const LOW_RAM_END: u64 = 0x8_0000;
/// Start of the reserved area below 1 MiB.
pub const RESERVED_START: u64 = LOW_RAM_END;
/// The PML4 of the VMM's identity map (0-4 GiB, 2 MiB pages).
pub const PML4: u64 = 0x8_0000;
/// The PDPT of the identity map.
pub const PDPT: u64 = 0x8_1000;
/// The four page directories of the identity map.
pub const PD: u64 = 0x8_2000;
/// The GDT the BSP and woken APs start with.
pub const GDT: u64 = 0x8_6000;
/// Where the ACPI tables start (RSDP first, at the legacy scan address).
pub const ACPI_START: u64 = 0xE_0000;
/// End of the ACPI area.
pub const ACPI_END: u64 = 0x10_0000;
/// Start of high RAM.
pub const HIGH_RAM: u64 = 0x10_0000;
/// Where the MMIO hole below 4 GiB starts.
pub const MMIO_HOLE: u64 = 0xC000_0000;
/// 4 GiB.
pub const FOUR_GIB: u64 = 1 << 32;
/// The first virtio-mmio device's register window; the next ones follow at
/// [`VIRTIO_STRIDE`].
pub const VIRTIO_MMIO: u64 = 0xD000_0000;
/// The distance between two virtio-mmio devices.
pub const VIRTIO_STRIDE: u64 = 0x1000;
/// The GSI of the first virtio-mmio device; the next ones take the next GSIs
/// (COM1 has GSI 4).
pub const VIRTIO_GSI: u32 = 5;
/// The most virtio-mmio devices (GSIs 5 to 12 of the IOAPIC's 24).
pub const VIRTIO_MAX: usize = 8;

/// The register window and GSI of virtio-mmio device `i`.
pub fn virtio_slot(i: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO + i as u64 * VIRTIO_STRIDE,
        VIRTIO_GSI + i as u32,
    )
}

/// The ACPI MP wakeup mailbox: an unbacked page, so the guest's accesses exit.
pub const MAILBOX: u64 = 0xFEB0_0000;
/// The IOAPIC.
pub const IOAPIC: u64 = 0xFEC0_0000;
/// The local APIC.
pub const LAPIC: u64 = 0xFEE0_0000;

/// e820 types.
pub const E820_RAM: u32 = 1;
/// e820 reserved.
pub const E820_RESERVED: u32 = 2;

/// Guest RAM ranges for `size` bytes of memory: below the MMIO hole, and the rest
/// above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_HOLE {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_HOLE), (FOUR_GIB, size - MMIO_HOLE)]
    }
}

/// The e820 map for `size` bytes of memory: (address, size, type).
pub fn e820(size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, LOW_RAM_END, E820_RAM),
        (RESERVED_START, HIGH_RAM - RESERVED_START, E820_RESERVED),
    ];
    for (start, len) in ram_ranges(size) {
        let s = start.max(HIGH_RAM);
        let e = start + len;
        if e > s {
            map.push((s, e - s, E820_RAM));
        }
    }
    map
}

/// The end of RAM below 4 GiB.
pub fn low_ram_top(size: u64) -> u64 {
    size.min(MMIO_HOLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_for_small_and_large_guests() {
        assert_eq!(
            e820(512 << 20),
            vec![
                (0, 0x8_0000, 1),
                (0x8_0000, 0x8_0000, 2),
                (0x10_0000, (512 << 20) - 0x10_0000, 1)
            ]
        );
        let big = e820(4 << 30);
        assert_eq!(big[2], (0x10_0000, MMIO_HOLE - 0x10_0000, 1));
        assert_eq!(big[3], (FOUR_GIB, (4 << 30) - MMIO_HOLE, 1));
        assert_eq!(ram_ranges(4 << 30).len(), 2);
        assert_eq!(low_ram_top(4 << 30), MMIO_HOLE);
    }
}
