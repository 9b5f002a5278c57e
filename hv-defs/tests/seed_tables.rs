//! Builds guest input pages byte by byte from the TLFS tables in `shared/seeds/` and
//! the TLFS data-type pages, with a distinct value in every field, and checks that
//! every field decodes from the offset the table gives. Offsets here are literals
//! taken from the tables, never from the structs.

use hv_defs::*;

const GPA: u64 = 0x7_3000;

/// A page with `bytes` written at `offset`.
fn put(page: &mut [u8], offset: usize, bytes: &[u8]) {
    page[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// Writes an HV_X64_SEGMENT_REGISTER at `off`: base @0/8, limit @8/4,
/// selector @12/2, attributes @14/2.
fn put_segment(page: &mut [u8], off: usize, seed: u64) {
    put(page, off, &(0x1000_0000_0000_0000 | seed).to_le_bytes());
    put(page, off + 8, &(0x2000_0000u32 | seed as u32).to_le_bytes());
    put(page, off + 12, &(0x3000u16 | seed as u16).to_le_bytes());
    put(page, off + 14, &(0x8000u16 | seed as u16).to_le_bytes());
}

fn check_segment(s: SegmentRegister, seed: u64) {
    assert_eq!(s.base, 0x1000_0000_0000_0000 | seed);
    assert_eq!(s.limit, 0x2000_0000 | seed as u32);
    assert_eq!(s.selector, 0x3000 | seed as u16);
    assert_eq!(s.attributes.0, 0x8000 | seed as u16);
}

/// Writes an HV_X64_TABLE_REGISTER at `off`: pad @0/6, limit @6/2, base @8/8.
fn put_table(page: &mut [u8], off: usize, seed: u64) {
    put(page, off + 6, &(0x4000u16 | seed as u16).to_le_bytes());
    put(page, off + 8, &(0x5000_0000_0000_0000 | seed).to_le_bytes());
}

fn check_table(t: TableRegister, seed: u64) {
    assert_eq!(t.pad, [0; 3]);
    assert_eq!(t.limit, 0x4000 | seed as u16);
    assert_eq!(t.base, 0x5000_0000_0000_0000 | seed);
}

/// Writes an HV_INITIAL_VP_CONTEXT at `base` with a distinct value in every field
/// (offsets from the TLFS HV_INITIAL_VP_CONTEXT table).
fn put_context(page: &mut [u8], base: usize) {
    put(page, base, &0x1111_1111_0000_0001u64.to_le_bytes()); // Rip
    put(page, base + 8, &0x1111_1111_0000_0002u64.to_le_bytes()); // Rsp
    put(page, base + 16, &0x1111_1111_0000_0003u64.to_le_bytes()); // Rflags
    for (i, off) in [24, 40, 56, 72, 88, 104, 120, 136].into_iter().enumerate() {
        put_segment(page, base + off, 0x10 + i as u64); // Cs Ds Es Fs Gs Ss Tr Ldtr
    }
    put_table(page, base + 152, 0x20); // Idtr
    put_table(page, base + 168, 0x21); // Gdtr
    put(page, base + 184, &0x1111_1111_0000_0004u64.to_le_bytes()); // Efer
    put(page, base + 192, &0x1111_1111_0000_0005u64.to_le_bytes()); // Cr0
    put(page, base + 200, &0x1111_1111_0000_0006u64.to_le_bytes()); // Cr3
    put(page, base + 208, &0x1111_1111_0000_0007u64.to_le_bytes()); // Cr4
    put(page, base + 216, &0x1111_1111_0000_0008u64.to_le_bytes()); // MsrCrPat
}

fn check_context(c: &InitialVpContext) {
    assert_eq!(c.rip, 0x1111_1111_0000_0001);
    assert_eq!(c.rsp, 0x1111_1111_0000_0002);
    assert_eq!(c.rflags, 0x1111_1111_0000_0003);
    let segs = [c.cs, c.ds, c.es, c.fs, c.gs, c.ss, c.tr, c.ldtr];
    for (i, s) in segs.into_iter().enumerate() {
        check_segment(s, 0x10 + i as u64);
    }
    check_table(c.idtr, 0x20);
    check_table(c.gdtr, 0x21);
    assert_eq!(c.efer, 0x1111_1111_0000_0004);
    assert_eq!(c.cr0, 0x1111_1111_0000_0005);
    assert_eq!(c.cr3, 0x1111_1111_0000_0006);
    assert_eq!(c.cr4, 0x1111_1111_0000_0007);
    assert_eq!(c.msr_cr_pat, 0x1111_1111_0000_0008);
}

#[test]
fn start_virtual_processor_input() {
    // Seed 000/001: PartitionId 0/8, VpIndex 8/4, TargetVtl 12/1, VpContext 16/224.
    let mut page = [0u8; 4096];
    put(&mut page, 0, &0x0102_0304_0506_0708u64.to_le_bytes());
    put(&mut page, 8, &0x0A0B_0C0Du32.to_le_bytes());
    put(&mut page, 12, &[0x02]);
    put_context(&mut page, 16);
    let i = StartVirtualProcessorInput::read_from_guest(&page, GPA).unwrap();
    assert_eq!(i.partition_id, PartitionId(0x0102_0304_0506_0708));
    assert_eq!(i.vp_index, VpIndex(0x0A0B_0C0D));
    assert_eq!(i.target_vtl, Vtl::VTL2);
    check_context(&i.vp_context);
    // The 240-byte block ends exactly at the end of a page.
    assert!(StartVirtualProcessorInput::read_from_guest(&page, 0x1000 - 240).is_ok());
    // Reserved bytes 13..16 are RsvdZ.
    for off in 13..16 {
        let mut bad = page;
        bad[off] = 1;
        let e = StartVirtualProcessorInput::read_from_guest(&bad, GPA).unwrap_err();
        assert!(matches!(e, InputError::Reserved { .. }), "{e}");
        assert_eq!(HvError::from(e), HvError::INVALID_PARAMETER);
    }
}

#[test]
fn enable_vp_vtl_input() {
    // TLFS HvCallEnableVpVtl: PartitionId 0/8, VpIndex 8/4, TargetVtl 12/1,
    // RsvdZ 13/3, VpVtlContext 16/224.
    let mut page = [0u8; 4096];
    put(&mut page, 0, &PartitionId::SELF.0.to_le_bytes());
    put(&mut page, 8, &0x0000_0003u32.to_le_bytes());
    put(&mut page, 12, &[0x01]);
    put_context(&mut page, 16);
    let i = EnableVpVtlInput::read_from_guest(&page, GPA).unwrap();
    assert_eq!(i.partition_id, PartitionId::SELF);
    assert_eq!(i.vp_index, VpIndex(3));
    assert_eq!(i.target_vtl, Vtl::VTL1);
    check_context(&i.vp_vtl_context);
    page[14] = 0x80;
    assert!(EnableVpVtlInput::read_from_guest(&page, GPA).is_err());
}

#[test]
fn create_vp_input() {
    // Seed 002: PartitionId 0/8, VpIndex 8/4 + padding 4, ProximityDomainInfo 16/8,
    // Flags 24/8. HV_PROXIMITY_DOMAIN_INFO: Id 0/4, Flags 4/4.
    let mut page = [0u8; 4096];
    put(&mut page, 0, &0x1122_3344_5566_7788u64.to_le_bytes());
    put(&mut page, 8, &0x0000_0042u32.to_le_bytes());
    put(&mut page, 12, &[0xEE; 4]); // padding is not RsvdZ
    put(&mut page, 16, &0x0000_0007u32.to_le_bytes());
    put(&mut page, 20, &0x8000_0001u32.to_le_bytes());
    let i = CreateVpInput::read_from_guest(&page, GPA).unwrap();
    assert_eq!(i.partition_id, PartitionId(0x1122_3344_5566_7788));
    assert_eq!(i.vp_index, VpIndex(0x42));
    assert_eq!(i.proximity_domain_info.domain_id, 7);
    assert!(i.proximity_domain_info.flags.proximity_preferred());
    assert!(i.proximity_domain_info.flags.proximity_info_valid());
    assert_eq!(i.flags, 0);
    // Flags must be zero, and the reserved proximity flags too.
    let mut bad = page;
    put(&mut bad, 24, &1u64.to_le_bytes());
    assert!(CreateVpInput::read_from_guest(&bad, GPA).is_err());
    let mut bad = page;
    put(&mut bad, 20, &0x0000_0002u32.to_le_bytes());
    assert!(CreateVpInput::read_from_guest(&bad, GPA).is_err());
}

#[test]
fn get_set_vp_registers_header_and_elements() {
    // Seed 003 header: PartitionId 0/8, VpIndex 8/4, then (newer TLFS) InputVtl 12/1,
    // RsvdZ 13/3. Set element: name 0/4, RsvdZ 4/12, value low 16/8, high 24/8.
    // Get element: name 0/4.
    let mut page = [0u8; 4096];
    put(&mut page, 0, &0xFFFF_FFFF_FFFF_FFFFu64.to_le_bytes());
    put(&mut page, 8, &0xFFFF_FFFEu32.to_le_bytes());
    put(&mut page, 12, &[0x12]); // use target VTL, VTL 2
    put(&mut page, 16, &0x0002_0010u32.to_le_bytes()); // element 0 name: Rip
    put(&mut page, 32, &0xAAAA_BBBB_CCCC_DDDDu64.to_le_bytes());
    put(&mut page, 40, &0x1234_5678_9ABC_DEF0u64.to_le_bytes());
    let h = VpRegistersHeader::read_from_guest(&page, GPA).unwrap();
    assert_eq!(h.partition_id, PartitionId::SELF);
    assert_eq!(h.vp_index, VpIndex::SELF);
    assert_eq!(h.input_vtl.target(), Ok(Some(Vtl::VTL2)));
    let e = SetVpRegistersElement::read_from_guest(&page[16..], GPA + 16).unwrap();
    assert_eq!(e.name, 0x0002_0010);
    assert_eq!(e.value.low, 0xAAAA_BBBB_CCCC_DDDD);
    assert_eq!(e.value.high, 0x1234_5678_9ABC_DEF0);
    let g = GetVpRegistersElement::read_from_guest(&page[16..], GPA + 16).unwrap();
    assert_eq!(g.name, 0x0002_0010);
    for off in [20usize, 27, 31] {
        let mut bad = page;
        bad[off] = 0x55;
        let e = SetVpRegistersElement::read_from_guest(&bad[16..], GPA + 16).unwrap_err();
        assert_eq!(
            e,
            InputError::Reserved {
                field: "SetVpRegisters.Element.RsvdZ"
            }
        );
    }
    // Reserved bits in the input VTL and the RsvdZ bytes are rejected.
    for (off, v) in [(12usize, 0x20u8), (13, 1), (15, 0x80)] {
        let mut bad = page;
        bad[off] = v;
        assert!(
            VpRegistersHeader::read_from_guest(&bad, GPA).is_err(),
            "offset {off}"
        );
    }
}

#[test]
fn get_vp_index_from_apic_id() {
    // PartitionId 0/8, TargetVtl 8/1, RsvdZ 9/7, ApicIds[] from 16, 4 bytes each.
    let mut page = [0u8; 4096];
    put(&mut page, 0, &0x0000_0000_0000_0009u64.to_le_bytes());
    put(&mut page, 8, &[0x11]);
    put(&mut page, 16, &0x0000_00A1u32.to_le_bytes());
    put(&mut page, 20, &0x0000_00B2u32.to_le_bytes());
    let h = GetVpIndexFromApicIdHeader::read_from_guest(&page, GPA).unwrap();
    assert_eq!(h.partition_id, PartitionId(9));
    assert_eq!(h.target_vtl.target(), Ok(Some(Vtl::VTL1)));
    let a0 = ApicIdElement::read_from_guest(&page[16..], GPA + 16).unwrap();
    // Rep elements of 4 bytes sit at 4-byte offsets: parse() does not check placement.
    let a1 = ApicIdElement::parse(&page[20..]).unwrap();
    assert!(ApicIdElement::read_from_guest(&page[20..], GPA + 20).is_err());
    assert_eq!((a0.apic_id, a1.apic_id), (0xA1, 0xB2));
    for off in 9..16 {
        let mut bad = page;
        bad[off] = 1;
        assert!(GetVpIndexFromApicIdHeader::read_from_guest(&bad, GPA).is_err());
    }
    let mut bad = page;
    bad[8] = 0x40;
    assert!(GetVpIndexFromApicIdHeader::read_from_guest(&bad, GPA).is_err());
}

#[test]
fn output_layouts_encode_where_the_tlfs_says() {
    use zerocopy::IntoBytes;
    let out = GetPartitionIdOutput {
        partition_id: PartitionId(0x0102_0304_0506_0708),
    };
    assert_eq!(out.as_bytes(), &[8, 7, 6, 5, 4, 3, 2, 1]);
    let vp = VpIndexElement {
        vp_index: VpIndex(0x0A0B_0C0D),
    };
    assert_eq!(vp.as_bytes(), &[0x0D, 0x0C, 0x0B, 0x0A]);
    let v = HvRegisterValue { low: 1, high: 2 };
    assert_eq!(&v.as_bytes()[..8], &1u64.to_le_bytes());
    assert_eq!(&v.as_bytes()[8..], &2u64.to_le_bytes());
}

#[test]
fn hostile_placements_are_errors_not_panics() {
    let page = [0u8; 4096];
    // Short input.
    let e = StartVirtualProcessorInput::read_from_guest(&page[..239], GPA).unwrap_err();
    assert_eq!(
        e,
        InputError::Short {
            needed: 240,
            available: 239
        }
    );
    assert!(StartVirtualProcessorInput::read_from_guest(&[], GPA).is_err());
    // Misaligned GPA.
    for delta in 1..8 {
        let e = CreateVpInput::read_from_guest(&page, GPA + delta).unwrap_err();
        assert_eq!(e.status(), HvError::INVALID_ALIGNMENT);
    }
    // Straddles a page: 240 bytes starting 232 bytes before the page end.
    let e = StartVirtualProcessorInput::read_from_guest(&page, 0x2000 - 232).unwrap_err();
    assert_eq!(
        e,
        InputError::CrossesPage {
            gpa: 0x2000 - 232,
            len: 240
        }
    );
    // TLFS Hypercall Interface, "Common Hypercall Status Codes": a parameter list
    // that spans pages is HV_STATUS_INVALID_ALIGNMENT.
    assert_eq!(e.status(), HvError::INVALID_ALIGNMENT);
    // The highest GPA does not overflow.
    assert!(check_parameter_block(u64::MAX - 7, 16).is_err());
    assert!(check_parameter_block(0, 4097).is_err());
    // Every error formats.
    for e in [
        InputError::Short {
            needed: 1,
            available: 0,
        },
        InputError::Misaligned { gpa: 1 },
        InputError::CrossesPage { gpa: 8, len: 4096 },
        InputError::Reserved { field: "x" },
    ] {
        assert!(!e.to_string().is_empty());
    }
}
