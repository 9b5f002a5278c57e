//! ACPI tables for a hardware-reduced, legacy-free guest: RSDP, XSDT, FADT (sleep
//! control/status and reset registers), DSDT (COM1 and \_S5), and a MADT with one
//! local APIC per VP, the IOAPIC and, optionally, the Multiprocessor Wakeup
//! structure. Built with the acpi_tables crate; the MADT entries it lacks (MP
//! wakeup) are written here.

use acpi_tables::aml;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml as _;
use zerocopy::IntoBytes;

use crate::layout::{ACPI_END, ACPI_START, IOAPIC, LAPIC, MAILBOX};

const OEM_ID: [u8; 6] = *b"HVKVM ";
const OEM_TABLE: [u8; 8] = *b"HVKVMREF";

/// The port the guest writes SLP_TYP | SLP_EN to (FADT SLEEP_CONTROL_REG).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// FADT SLEEP_STATUS_REG.
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// FADT RESET_REG.
pub const RESET_PORT: u16 = 0x602;
/// FADT RESET_VALUE.
pub const RESET_VALUE: u8 = 0x1;
/// SLEEP_CONTROL bit 5: SLP_EN.
pub const SLP_EN: u8 = 1 << 5;

/// What the MADT lists.
pub struct MadtConfig {
    /// One local APIC per VP, by APIC id.
    pub apic_ids: Vec<u8>,
    /// Publish the MP wakeup mailbox (Path A). A Hyper-V VTL2 guest starts its APs
    /// itself and does not need it.
    pub mp_wakeup: bool,
    /// virtio-mmio devices for the DSDT: (register window, GSI).
    pub virtio_mmio: Vec<(u64, u32)>,
}

/// Generic Address Structure for an 8-bit SystemIO register.
fn gas_io(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // SystemIO
    g[1] = 8; // bit width
    g[3] = 1; // byte access
    g[4..12].copy_from_slice(&(port as u64).to_le_bytes());
    g
}

fn fadt(dsdt: u64) -> Sdt {
    let mut f = Sdt::new(*b"FACP", 276, 6, OEM_ID, OEM_TABLE, 1);
    f.write_u32(40, dsdt as u32);
    // IAPC_BOOT_ARCH: no VGA, no MSI, no CMOS RTC; the 8042 bit stays clear.
    f.write_u16(109, (1 << 2) | (1 << 3) | (1 << 5));
    // Flags: power and sleep buttons absent, reset register supported, hardware
    // reduced.
    f.write_u32(112, (1 << 4) | (1 << 5) | (1 << 10) | (1 << 20));
    f.write_bytes(116, &gas_io(RESET_PORT));
    f.write_u8(128, RESET_VALUE);
    f.write_u8(131, 5); // FADT minor version
    f.write_u64(140, dsdt);
    f.write_bytes(244, &gas_io(SLEEP_CONTROL_PORT));
    f.write_bytes(256, &gas_io(SLEEP_STATUS_PORT));
    f.write_bytes(268, b"HVKVMHV\0");
    f
}

/// AML bytes made elsewhere.
struct Raw(Vec<u8>);

impl acpi_tables::Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// A virtio-mmio device as Linux's virtio_mmio driver finds it through ACPI:
/// `_HID` LNRO0005, one 4 KiB memory window and one edge-triggered,
/// active-high, exclusive interrupt.
fn virtio_device(i: usize, base: u64, gsi: u32) -> Raw {
    let hid: aml::AmlStr = "LNRO0005";
    let hid = aml::Name::new("_HID".into(), &hid);
    let uid = aml::Name::new("_UID".into(), &(i as u32));
    let cca = aml::Name::new("_CCA".into(), &aml::ONE);
    let mem = aml::Memory32Fixed::new(true, base as u32, crate::layout::VIRTIO_STRIDE as u32);
    let irq = aml::Interrupt::new(true, true, false, false, gsi);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&mem, &irq]));
    let name = format!("VR{i:02}");
    let mut bytes = Vec::new();
    aml::Device::new(name.as_str().into(), vec![&hid, &uid, &cca, &crs]).to_aml_bytes(&mut bytes);
    Raw(bytes)
}

fn dsdt(virtio: &[(u64, u32)]) -> Sdt {
    let hid = aml::EISAName::new("PNP0501");
    let io = aml::IO::new(0x3F8, 0x3F8, 0, 8);
    let irq = aml::Interrupt::new(true, true, false, false, 4);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let (hid, uid, crs) = (
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_UID".into(), &aml::ONE),
        aml::Name::new("_CRS".into(), &crs),
    );
    let com1 = aml::Device::new("COM1".into(), vec![&hid, &uid, &crs]);
    let devices: Vec<Raw> = virtio
        .iter()
        .enumerate()
        .map(|(i, &(base, gsi))| virtio_device(i, base, gsi))
        .collect();
    let mut children: Vec<&dyn acpi_tables::Aml> = vec![&com1];
    children.extend(devices.iter().map(|d| d as &dyn acpi_tables::Aml));
    let sb = aml::Scope::new("\\_SB_".into(), children);
    let five: u8 = 5;
    let s5_package = aml::Package::new(vec![&five, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    let s5 = aml::Name::new("_S5_".into(), &s5_package);
    let mut bytes = Vec::new();
    sb.to_aml_bytes(&mut bytes);
    s5.to_aml_bytes(&mut bytes);
    let mut d = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE, 1);
    d.append_slice(&bytes);
    d
}

fn madt(cfg: &MadtConfig) -> Sdt {
    let mut m = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE, 1);
    m.write_u32(36, LAPIC as u32);
    m.write_u32(40, 0); // no PCAT_COMPAT: there is no legacy PIC
    for (uid, &apic) in cfg.apic_ids.iter().enumerate() {
        // Type 0, Processor Local APIC: uid, APIC id, flags = enabled.
        let mut e = [0u8, 8, uid as u8, apic, 0, 0, 0, 0];
        e[4..8].copy_from_slice(&1u32.to_le_bytes());
        m.append_slice(&e);
    }
    // Type 1, I/O APIC: id, reserved, address, GSI base 0.
    let mut io = [1u8, 12, cfg.apic_ids.len() as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    io[4..8].copy_from_slice(&(IOAPIC as u32).to_le_bytes());
    m.append_slice(&io);
    if cfg.mp_wakeup {
        // Type 16, Multiprocessor Wakeup (version 0, 16 bytes): mailbox address.
        let mut w = [0u8; 16];
        w[0] = 16;
        w[1] = 16;
        w[8..16].copy_from_slice(&MAILBOX.to_le_bytes());
        m.append_slice(&w);
    }
    m
}

/// The ACPI tables, laid out from [`ACPI_START`]: (guest address, bytes) pieces
/// and the RSDP address.
pub struct Tables {
    /// Pieces to write into guest memory.
    pub pieces: Vec<(u64, Vec<u8>)>,
    /// The RSDP's address, for boot_params.acpi_rsdp_addr.
    pub rsdp: u64,
}

/// Builds the tables.
pub fn build(cfg: &MadtConfig) -> Tables {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_START;
    let mut at = align(rsdp_addr + Rsdp::len() as u64);
    let dsdt = dsdt(&cfg.virtio_mmio);
    let dsdt_addr = at;
    at = align(at + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let fadt_addr = at;
    at = align(at + fadt.len() as u64);
    let madt = madt(cfg);
    let madt_addr = at;
    at = align(at + madt.len() as u64);
    let mut xsdt = Sdt::new(*b"XSDT", 36, 1, OEM_ID, OEM_TABLE, 1);
    xsdt.append(fadt_addr);
    xsdt.append(madt_addr);
    let xsdt_addr = at;
    at += xsdt.len() as u64;
    assert!(at <= ACPI_END, "ACPI tables overflow their area");
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    Tables {
        pieces: vec![
            (rsdp_addr, rsdp.as_bytes().to_vec()),
            (dsdt_addr, dsdt.as_slice().to_vec()),
            (fadt_addr, fadt.as_slice().to_vec()),
            (madt_addr, madt.as_slice().to_vec()),
            (xsdt_addr, xsdt.as_slice().to_vec()),
        ],
        rsdp: rsdp_addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
    }

    #[test]
    fn tables_are_well_formed() {
        let t = build(&MadtConfig {
            apic_ids: vec![0, 1, 2, 3],
            mp_wakeup: true,
            virtio_mmio: vec![(0xD000_0000, 5), (0xD000_1000, 6)],
        });
        let find = |sig: &[u8]| {
            t.pieces
                .iter()
                .find(|(_, b)| &b[..sig.len()] == sig)
                .unwrap()
                .clone()
        };
        let (_, rsdp) = find(b"RSD PTR ");
        assert_eq!(rsdp.len(), 36);
        let (_, fadt) = find(b"FACP");
        assert_eq!(fadt.len(), 276);
        assert!(checksum_ok(&fadt));
        assert_eq!(
            u32::from_le_bytes(fadt[112..116].try_into().unwrap()) & (1 << 20),
            1 << 20
        );
        let (madt_addr, madt) = find(b"APIC");
        assert!(checksum_ok(&madt));
        assert_eq!(madt.len(), 44 + 4 * 8 + 12 + 16);
        assert_eq!(madt[44 + 3], 0, "APIC id of VP 0");
        assert_eq!(madt[44 + 3 * 8 + 3], 3, "APIC id of VP 3");
        let wake = &madt[44 + 32 + 12..];
        assert_eq!((wake[0], wake[1]), (16, 16));
        assert_eq!(u64::from_le_bytes(wake[8..16].try_into().unwrap()), MAILBOX);
        let (_, dsdt) = find(b"DSDT");
        assert!(checksum_ok(&dsdt));
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"COM1"));
        assert!(dsdt.windows(4).any(|w| w == b"VR00"));
        assert!(dsdt.windows(4).any(|w| w == b"VR01"));
        assert!(dsdt.windows(8).any(|w| w == b"LNRO0005"));
        // Memory32Fixed (0x86): read-write, the window's base and 4 KiB.
        let mut m = vec![0x86, 9, 0, 1];
        m.extend(0xD000_1000u32.to_le_bytes());
        m.extend(0x1000u32.to_le_bytes());
        assert!(dsdt.windows(m.len()).any(|w| w == m), "second window");
        // Extended interrupt (0x89): consumer, edge, active high; GSI 6.
        let irq = [0x89, 6, 0, 0x03, 1, 6, 0, 0, 0];
        assert!(dsdt.windows(9).any(|w| w == irq), "second GSI");
        let (_, xsdt) = find(b"XSDT");
        assert_eq!(
            u64::from_le_bytes(xsdt[44..52].try_into().unwrap()),
            madt_addr
        );
        let no_wake = build(&MadtConfig {
            apic_ids: vec![0],
            mp_wakeup: false,
            virtio_mmio: vec![],
        });
        let m = &no_wake
            .pieces
            .iter()
            .find(|(_, b)| &b[..4] == b"APIC")
            .unwrap()
            .1;
        assert_eq!(m.len(), 44 + 8 + 12);
    }
}
