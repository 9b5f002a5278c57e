//! x64 register layouts: segment and table registers, HV_REGISTER_VALUE and
//! HV_INITIAL_VP_CONTEXT.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The attribute word of an HV_X64_SEGMENT_REGISTER.
///
/// | Bits  | Field |
/// |-------|-------|
/// | 3:0   | segment type |
/// | 4     | S (non-system / code-or-data) |
/// | 6:5   | DPL |
/// | 7     | P (present) |
/// | 11:8  | reserved |
/// | 12    | AVL |
/// | 13    | L (64-bit code) |
/// | 14    | D/B (default size) |
/// | 15    | G (granularity) |
///
/// ```
/// use hv_defs::SegmentAttributes;
/// // The 64-bit kernel code segment Linux uses: 0xA09B.
/// let a = SegmentAttributes(0xA09B);
/// assert_eq!(a.segment_type(), 0xB);
/// assert!(a.non_system() && a.present() && a.long() && a.granularity());
/// assert!(!a.default_big());
/// ```
#[repr(transparent)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SegmentAttributes(pub u16);

impl SegmentAttributes {
    /// Mask of the reserved bits 11:8.
    pub const RESERVED_MASK: u16 = 0x0F00;

    /// Builds an attribute word from its fields; values are truncated to their widths.
    #[allow(clippy::too_many_arguments)]
    pub const fn from_fields(
        segment_type: u8,
        non_system: bool,
        dpl: u8,
        present: bool,
        available: bool,
        long: bool,
        default_big: bool,
        granularity: bool,
    ) -> Self {
        SegmentAttributes(
            (segment_type as u16 & 0xF)
                | ((non_system as u16) << 4)
                | ((dpl as u16 & 3) << 5)
                | ((present as u16) << 7)
                | ((available as u16) << 12)
                | ((long as u16) << 13)
                | ((default_big as u16) << 14)
                | ((granularity as u16) << 15),
        )
    }

    /// Segment type (bits 3:0).
    pub const fn segment_type(self) -> u8 {
        (self.0 & 0xF) as u8
    }
    /// S: code or data segment rather than a system segment (bit 4).
    pub const fn non_system(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// Descriptor privilege level (bits 6:5).
    pub const fn dpl(self) -> u8 {
        ((self.0 >> 5) & 3) as u8
    }
    /// Present (bit 7).
    pub const fn present(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// Reserved bits 11:8 as set.
    pub const fn reserved_bits(self) -> u16 {
        self.0 & Self::RESERVED_MASK
    }
    /// Available for software (bit 12).
    pub const fn available(self) -> bool {
        self.0 & (1 << 12) != 0
    }
    /// L: 64-bit code segment (bit 13).
    pub const fn long(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// D/B: default operation size 32-bit (bit 14).
    pub const fn default_big(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// G: limit in 4 KiB units (bit 15).
    pub const fn granularity(self) -> bool {
        self.0 & (1 << 15) != 0
    }
}

/// HV_X64_SEGMENT_REGISTER (16 bytes): base @0, limit @8, selector @12,
/// attributes @14. The limit is the byte-granular (expanded) limit.
#[repr(C)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SegmentRegister {
    /// Segment base.
    pub base: u64,
    /// Segment limit in bytes.
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Attribute word.
    pub attributes: SegmentAttributes,
}

/// HV_X64_TABLE_REGISTER (16 bytes), used for GDTR and IDTR: three 16-bit pad
/// words @0, limit @6, base @8.
#[repr(C)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct TableRegister {
    /// Padding; should be zero.
    pub pad: [u16; 3],
    /// Table limit.
    pub limit: u16,
    /// Table base.
    pub base: u64,
}

/// HV_REGISTER_VALUE: 16 bytes, 16-byte aligned; a 64-bit register uses the low half.
///
/// ```
/// use hv_defs::HvRegisterValue;
/// let v = HvRegisterValue::from(0x1234u64);
/// assert_eq!((v.low, v.high), (0x1234, 0));
/// assert_eq!(v.as_u64(), Some(0x1234));
/// assert_eq!(HvRegisterValue { low: 1, high: 1 }.as_u64(), None);
/// ```
#[repr(C, align(16))]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvRegisterValue {
    /// Bits 63:0.
    pub low: u64,
    /// Bits 127:64.
    pub high: u64,
}

impl HvRegisterValue {
    /// The value as a 64-bit register, or `None` if bits 127:64 are not zero.
    pub const fn as_u64(self) -> Option<u64> {
        if self.high == 0 {
            Some(self.low)
        } else {
            None
        }
    }
}

impl From<u64> for HvRegisterValue {
    fn from(v: u64) -> Self {
        HvRegisterValue { low: v, high: 0 }
    }
}

impl From<SegmentRegister> for HvRegisterValue {
    fn from(s: SegmentRegister) -> Self {
        let [low, high]: [u64; 2] = zerocopy::transmute!(s);
        HvRegisterValue { low, high }
    }
}

impl From<TableRegister> for HvRegisterValue {
    fn from(t: TableRegister) -> Self {
        let [low, high]: [u64; 2] = zerocopy::transmute!(t);
        HvRegisterValue { low, high }
    }
}

impl HvRegisterValue {
    /// The value read as a segment register.
    pub fn as_segment(self) -> SegmentRegister {
        zerocopy::transmute!([self.low, self.high])
    }

    /// The value read as a table register.
    pub fn as_table(self) -> TableRegister {
        zerocopy::transmute!([self.low, self.high])
    }
}

/// HV_INITIAL_VP_CONTEXT (224 bytes): the x64 register state a VP starts with.
#[repr(C)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct InitialVpContext {
    /// RIP @0.
    pub rip: u64,
    /// RSP @8.
    pub rsp: u64,
    /// RFLAGS @16.
    pub rflags: u64,
    /// CS @24.
    pub cs: SegmentRegister,
    /// DS @40.
    pub ds: SegmentRegister,
    /// ES @56.
    pub es: SegmentRegister,
    /// FS @72.
    pub fs: SegmentRegister,
    /// GS @88.
    pub gs: SegmentRegister,
    /// SS @104.
    pub ss: SegmentRegister,
    /// TR @120.
    pub tr: SegmentRegister,
    /// LDTR @136.
    pub ldtr: SegmentRegister,
    /// IDTR @152.
    pub idtr: TableRegister,
    /// GDTR @168.
    pub gdtr: TableRegister,
    /// EFER @184.
    pub efer: u64,
    /// CR0 @192.
    pub cr0: u64,
    /// CR3 @200.
    pub cr3: u64,
    /// CR4 @208.
    pub cr4: u64,
    /// IA32_PAT @216.
    pub msr_cr_pat: u64,
}

impl InitialVpContext {
    /// A flat 64-bit context, as Linux gives its APs and a VMM gives a 64-bit
    /// kernel: RIP and RSP as given, RFLAGS 0x2 (interrupts off), CS selector
    /// 0x10 a long-mode code segment, DS/ES/FS/GS/SS selector 0x18 flat data, a
    /// busy 64-bit TSS (selector 0, limit 0x67), paging on with `cr3` (CR0 PE,
    /// MP, ET, NE, WP, AM, PG; CR4 PAE), EFER LME, LMA and NXE, and the
    /// power-on PAT. Change what differs with the `with_*` methods or struct
    /// update syntax.
    ///
    /// ```
    /// use hv_defs::{InitialVpContext, TableRegister};
    /// let ctx = InitialVpContext::long_mode(0x10_0000, 0x8FF0, 0x9000)
    ///     .with_gdt(0x8000, 0x1F)
    ///     .with_tss(0x7000);
    /// assert_eq!(ctx.cs.attributes.0, 0xA09B);
    /// assert_eq!(ctx.efer, 0xD00);
    /// assert_eq!(ctx.gdtr, TableRegister { pad: [0; 3], limit: 0x1F, base: 0x8000 });
    /// ```
    pub const fn long_mode(rip: u64, rsp: u64, cr3: u64) -> Self {
        let data = SegmentRegister {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: 0x18,
            attributes: SegmentAttributes(0xC093),
        };
        InitialVpContext {
            rip,
            rsp,
            rflags: 0x2,
            cs: SegmentRegister {
                base: 0,
                limit: 0xFFFF_FFFF,
                selector: 0x10,
                attributes: SegmentAttributes(0xA09B),
            },
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: SegmentRegister {
                base: 0,
                limit: 0x67,
                selector: 0,
                attributes: SegmentAttributes(0x008B),
            },
            ldtr: SegmentRegister {
                base: 0,
                limit: 0,
                selector: 0,
                attributes: SegmentAttributes(0),
            },
            idtr: TableRegister {
                pad: [0; 3],
                limit: 0,
                base: 0,
            },
            gdtr: TableRegister {
                pad: [0; 3],
                limit: 0,
                base: 0,
            },
            efer: 0xD00,
            cr0: 0x8005_0033,
            cr3,
            cr4: 0x20,
            msr_cr_pat: 0x0007_0406_0007_0406,
        }
    }

    /// The same context with the GDT at `base` (`limit` bytes minus one).
    pub const fn with_gdt(mut self, base: u64, limit: u16) -> Self {
        self.gdtr = TableRegister {
            pad: [0; 3],
            limit,
            base,
        };
        self
    }

    /// The same context with the IDT at `base` (`limit` bytes minus one).
    pub const fn with_idt(mut self, base: u64, limit: u16) -> Self {
        self.idtr = TableRegister {
            pad: [0; 3],
            limit,
            base,
        };
        self
    }

    /// The same context with the TSS at `base`.
    pub const fn with_tss(mut self, base: u64) -> Self {
        self.tr.base = base;
        self
    }
}

crate::assert_layout!(SegmentRegister, size 16, align 8, {
    base @ 0, limit @ 8, selector @ 12, attributes @ 14,
});
crate::assert_layout!(TableRegister, size 16, align 8, { pad @ 0, limit @ 6, base @ 8 });
crate::assert_layout!(HvRegisterValue, size 16, align 16, { low @ 0, high @ 8 });
crate::assert_layout!(SegmentAttributes, size 2, align 2, {});
crate::assert_layout!(InitialVpContext, size 224, align 8, {
    rip @ 0, rsp @ 8, rflags @ 16,
    cs @ 24, ds @ 40, es @ 56, fs @ 72, gs @ 88, ss @ 104, tr @ 120, ldtr @ 136,
    idtr @ 152, gdtr @ 168,
    efer @ 184, cr0 @ 192, cr3 @ 200, cr4 @ 208, msr_cr_pat @ 216,
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_fields() {
        // Every field set to a distinct non-zero value, bit by bit from the table.
        let raw: u16 = 0x9 | (1 << 4) | (2 << 5) | (1 << 7) | (1 << 12) | (1 << 14) | (1 << 15);
        let a = SegmentAttributes(raw);
        assert_eq!(a.segment_type(), 9);
        assert!(a.non_system());
        assert_eq!(a.dpl(), 2);
        assert!(a.present());
        assert_eq!(a.reserved_bits(), 0);
        assert!(a.available());
        assert!(!a.long());
        assert!(a.default_big());
        assert!(a.granularity());
        assert_eq!(
            SegmentAttributes::from_fields(9, true, 2, true, true, false, true, true),
            a
        );
        assert_eq!(SegmentAttributes(0x0A00).reserved_bits(), 0x0A00);
        assert!(SegmentAttributes(1 << 13).long());
    }

    #[test]
    fn register_value_views() {
        let s = SegmentRegister {
            base: 0x1122_3344_5566_7788,
            limit: 0xAABB_CCDD,
            selector: 0x0010,
            attributes: SegmentAttributes(0xA09B),
        };
        let v = HvRegisterValue::from(s);
        assert_eq!(v.low, 0x1122_3344_5566_7788);
        assert_eq!(v.high, 0xA09B_0010_AABB_CCDD);
        assert_eq!(v.as_segment(), s);
        let t = TableRegister {
            pad: [0; 3],
            limit: 0x7F,
            base: 0xFFFF_FE00_0000_1000,
        };
        let tv = HvRegisterValue::from(t);
        assert_eq!(tv.low, 0x007F_0000_0000_0000);
        assert_eq!(tv.high, 0xFFFF_FE00_0000_1000);
        assert_eq!(tv.as_table(), t);
    }
}

#[cfg(test)]
mod builder_tests {
    use super::*;

    #[test]
    fn the_long_mode_builder_gives_a_flat_64_bit_context() {
        let c = InitialVpContext::long_mode(0x1000, 0x8000, 0x9000)
            .with_gdt(0x8000, 0x27)
            .with_idt(0xC000, 0xFFF)
            .with_tss(0x7000);
        assert_eq!((c.rip, c.rsp, c.cr3, c.rflags), (0x1000, 0x8000, 0x9000, 2));
        assert_eq!(c.cs.attributes.0, 0xA09B, "present, DPL 0, code, L=1");
        for s in [c.ds, c.es, c.fs, c.gs, c.ss] {
            assert_eq!(
                (s.selector, s.attributes.0, s.limit),
                (0x18, 0xC093, 0xFFFF_FFFF)
            );
        }
        assert_eq!(
            (c.tr.base, c.tr.limit, c.tr.attributes.0),
            (0x7000, 0x67, 0x8B)
        );
        assert_eq!((c.gdtr.base, c.gdtr.limit), (0x8000, 0x27));
        assert_eq!((c.idtr.base, c.idtr.limit), (0xC000, 0xFFF));
        assert_eq!((c.efer, c.cr0, c.cr4), (0xD00, 0x8005_0033, 0x20));
        assert_eq!(c.msr_cr_pat, 0x0007_0406_0007_0406);
    }
}
