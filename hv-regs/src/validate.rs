//! Validation of register values as HvSetVpRegisters requires: reserved bits zero,
//! architecturally fixed bits right, bits beyond the register's width zero,
//! read-only registers refused.

use core::fmt;

use hv_defs::{HvError, HvRegisterValue, SegmentRegister, TableRegister};

use crate::location::{
    location, mp_state_from_activity, msr, Control, DebugRegister, Gpr, KvmRegister, Synthetic,
};
use crate::{CpuVendor, HvRegisterName};

/// Why a register value was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RegisterFault {
    /// The name is not one this crate maps.
    UnknownName(HvRegisterName),
    /// The register is read-only.
    ReadOnly(HvRegisterName),
    /// Bits beyond the register's architectural width are set.
    BeyondWidth(HvRegisterName),
    /// Reserved bits are set.
    Reserved {
        /// The register.
        name: HvRegisterName,
        /// The offending bits.
        bits: u64,
    },
    /// Bits the architecture fixes to one are clear.
    FixedBits {
        /// The register.
        name: HvRegisterName,
        /// The fixed bits that are wrong.
        bits: u64,
    },
    /// An address is not canonical.
    NonCanonical {
        /// The register.
        name: HvRegisterName,
        /// The address.
        value: u64,
    },
    /// The value contradicts itself (e.g. CR0.PG without CR0.PE).
    Inconsistent {
        /// The register.
        name: HvRegisterName,
        /// What is wrong.
        why: &'static str,
    },
}

impl RegisterFault {
    /// The HV_STATUS HvSetVpRegisters returns for this fault:
    /// `HV_STATUS_INVALID_PARAMETER`, which the TLFS gives for an invalid register
    /// name, a read-only register and an invalid value alike.
    pub const fn status(self) -> HvError {
        HvError::INVALID_PARAMETER
    }
}

impl From<RegisterFault> for HvError {
    fn from(f: RegisterFault) -> Self {
        f.status()
    }
}

impl fmt::Display for RegisterFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RegisterFault::UnknownName(n) => write!(f, "unknown register {n:?}"),
            RegisterFault::ReadOnly(n) => write!(f, "{n:?} is read-only"),
            RegisterFault::BeyondWidth(n) => write!(f, "{n:?}: bits beyond the register width set"),
            RegisterFault::Reserved { name, bits } => {
                write!(f, "{name:?}: reserved bits {bits:#x} set")
            }
            RegisterFault::FixedBits { name, bits } => {
                write!(f, "{name:?}: fixed-one bits {bits:#x} clear")
            }
            RegisterFault::NonCanonical { name, value } => {
                write!(f, "{name:?}: {value:#x} is not canonical")
            }
            RegisterFault::Inconsistent { name, why } => write!(f, "{name:?}: {why}"),
        }
    }
}

impl std::error::Error for RegisterFault {}

/// Whether `addr` is canonical for 48-bit virtual addresses.
pub const fn is_canonical(addr: u64) -> bool {
    let top = (addr as i64) >> 47;
    top == 0 || top == -1
}

/// RFLAGS: bit 1 is fixed to one; bits 3, 5, 15 and 63:22 are reserved.
pub const RFLAGS_FIXED1: u64 = 1 << 1;
/// Reserved RFLAGS bits.
pub const RFLAGS_RESERVED: u64 = (1 << 3) | (1 << 5) | (1 << 15) | !((1 << 22) - 1);
/// Reserved CR0 bits: 63:32, 28:19, 17, 15:6.
pub const CR0_RESERVED: u64 = !0xFFFF_FFFFu64 | (0x3FF << 19) | (1 << 17) | (0x3FF << 6);
/// Reserved CR3 bits 63:52.
pub const CR3_RESERVED: u64 = 0xFFF << 52;
/// Reserved CR4 bits: 15 and 63:25.
pub const CR4_RESERVED: u64 = !0x01FF_7FFFu64;
/// Reserved CR8 bits 63:4.
pub const CR8_RESERVED: u64 = !0xF;
/// Reserved EFER bits: all but SCE(0), LME(8), LMA(10), NXE(11), SVME(12), LMSLE(13),
/// FFXSR(14), TCE(15).
pub const EFER_RESERVED: u64 = !0xFD01u64;
/// Reserved IA32_APIC_BASE bits: 7:0, 9 and 63:52.
pub const APIC_BASE_RESERVED: u64 = 0xFF | (1 << 9) | (0xFFF << 52);
/// XCR0 bits this crate accepts: x87, SSE, AVX, MPX (2), AVX-512 (3), PT (8 is
/// supervisor, excluded), PKRU, AMX (17, 18), APX (19).
pub const XCR0_KNOWN: u64 = 0xFF | (1 << 9) | (1 << 17) | (1 << 18) | (1 << 19);
/// DR6 bits fixed to one on every processor (4:10, 17:31; 11 and 16 may be
/// cleared by processors with bus-lock detection and RTM).
pub const DR6_FIXED1: u64 = 0xFFFE_07F0;
/// DR6 reserved-zero bit 12.
pub const DR6_RESERVED: u64 = 1 << 12;
/// DR7 bit 10 is fixed to one.
pub const DR7_FIXED1: u64 = 1 << 10;
/// DR7 reserved-zero bits 12, 14 and 15.
pub const DR7_RESERVED: u64 = (1 << 12) | (1 << 14) | (1 << 15);
/// Reserved bits of HvRegisterInternalActivityState (63:3).
pub const ACTIVITY_RESERVED: u64 = !0x7;

fn reserved(name: HvRegisterName, value: u64, mask: u64) -> Result<(), RegisterFault> {
    match value & mask {
        0 => Ok(()),
        bits => Err(RegisterFault::Reserved { name, bits }),
    }
}

fn fixed1(name: HvRegisterName, value: u64, mask: u64) -> Result<(), RegisterFault> {
    match !value & mask {
        0 => Ok(()),
        bits => Err(RegisterFault::FixedBits { name, bits }),
    }
}

fn canonical(name: HvRegisterName, value: u64) -> Result<(), RegisterFault> {
    if is_canonical(value) {
        Ok(())
    } else {
        Err(RegisterFault::NonCanonical { name, value })
    }
}

/// The XSETBV consistency rules (Intel SDM vol. 1 13.3, "Enabling the XSAVE
/// feature set"): AVX needs SSE; the two MPX components go together; the three
/// AVX-512 components go together and need AVX; the two AMX components go
/// together. KVM refuses the same values, so a batch checked here is not left half
/// written by a late KVM refusal.
fn check_xcr0(name: HvRegisterName, v: u64) -> Result<(), RegisterFault> {
    let all_or_none = |mask: u64| v & mask == 0 || v & mask == mask;
    inconsistent(
        name,
        v & 0b100 != 0 && v & 0b10 == 0,
        "AVX state without SSE state",
    )?;
    inconsistent(
        name,
        !all_or_none(0b1_1000),
        "BNDREGS without BNDCSR or the reverse",
    )?;
    inconsistent(
        name,
        !all_or_none(0b1110_0000),
        "AVX-512 state components not all set together",
    )?;
    inconsistent(
        name,
        v & 0b1110_0000 != 0 && v & 0b100 == 0,
        "AVX-512 state without AVX state",
    )?;
    inconsistent(
        name,
        !all_or_none(0b11 << 17),
        "XTILECFG without XTILEDATA or the reverse",
    )
}

fn width(name: HvRegisterName, value: u64, bits: u32) -> Result<(), RegisterFault> {
    if value.checked_shr(bits).unwrap_or(0) == 0 {
        Ok(())
    } else {
        Err(RegisterFault::BeyondWidth(name))
    }
}

fn inconsistent(name: HvRegisterName, bad: bool, why: &'static str) -> Result<(), RegisterFault> {
    if bad {
        Err(RegisterFault::Inconsistent { name, why })
    } else {
        Ok(())
    }
}

/// Checks a segment register value (attribute reserved bits, canonical base,
/// limit/granularity agreement, no L+D code segment).
pub fn check_segment(name: HvRegisterName, s: &SegmentRegister) -> Result<(), RegisterFault> {
    let a = s.attributes;
    reserved(name, a.reserved_bits() as u64, 0xFFFF)?;
    canonical(name, s.base)?;
    if a.present() {
        if a.granularity() {
            inconsistent(
                name,
                s.limit & 0xFFF != 0xFFF,
                "G set but limit not page-granular",
            )?;
        } else {
            inconsistent(name, s.limit > 0xF_FFFF, "G clear but limit above 1 MiB")?;
        }
        let code = a.non_system() && a.segment_type() & 0x8 != 0;
        inconsistent(
            name,
            code && a.long() && a.default_big(),
            "L and D both set",
        )?;
    }
    Ok(())
}

/// Checks a table register value (zero padding, canonical base).
pub fn check_table(name: HvRegisterName, t: &TableRegister) -> Result<(), RegisterFault> {
    let pad = t.pad.iter().fold(0u64, |acc, &p| acc | p as u64);
    reserved(name, pad, u64::MAX)?;
    canonical(name, t.base)
}

/// Checks a 64-bit value for a register in `kvm_sregs`' control fields.
pub fn check_control(name: HvRegisterName, c: Control, v: u64) -> Result<(), RegisterFault> {
    match c {
        Control::Cr0 => {
            reserved(name, v, CR0_RESERVED)?;
            inconsistent(name, v & (1 << 31) != 0 && v & 1 == 0, "PG set without PE")?;
            inconsistent(
                name,
                v & (1 << 29) != 0 && v & (1 << 30) == 0,
                "NW set without CD",
            )
        }
        Control::Cr2 => Ok(()),
        Control::Cr3 => reserved(name, v, CR3_RESERVED),
        Control::Cr4 => reserved(name, v, CR4_RESERVED),
        Control::Cr8 => reserved(name, v, CR8_RESERVED),
        Control::Efer => {
            reserved(name, v, EFER_RESERVED)?;
            inconsistent(
                name,
                v & (1 << 10) != 0 && v & (1 << 8) == 0,
                "LMA set without LME",
            )
        }
        Control::ApicBase => {
            reserved(name, v, APIC_BASE_RESERVED)?;
            inconsistent(
                name,
                v & (1 << 10) != 0 && v & (1 << 11) == 0,
                "x2APIC enabled while the APIC is disabled",
            )
        }
    }
}

fn check_msr(name: HvRegisterName, index: u32, v: u64) -> Result<(), RegisterFault> {
    match index {
        msr::PAT => {
            for i in 0..8 {
                let t = (v >> (i * 8)) & 0xFF;
                if !matches!(t, 0 | 1 | 4 | 5 | 6 | 7) {
                    return Err(RegisterFault::Reserved {
                        name,
                        bits: t << (i * 8),
                    });
                }
            }
            Ok(())
        }
        msr::SYSENTER_CS | msr::SFMASK | msr::TSC_AUX => width(name, v, 32),
        msr::SYSENTER_EIP | msr::SYSENTER_ESP | msr::LSTAR | msr::CSTAR | msr::KERNEL_GS_BASE => {
            canonical(name, v)
        }
        _ => Ok(()),
    }
}

/// Checks that `value` may be written to `name` with HvSetVpRegisters.
///
/// ```
/// use hv_regs::{validate, HvRegisterName, RegisterFault};
/// use hv_defs::{HvError, HvRegisterValue};
/// assert!(validate(HvRegisterName::RFLAGS, 0x202u64.into()).is_ok());
/// let e = validate(HvRegisterName::RFLAGS, 0x200u64.into()).unwrap_err();
/// assert!(matches!(e, RegisterFault::FixedBits { .. }));
/// assert_eq!(HvError::from(e), HvError::INVALID_PARAMETER);
/// assert_eq!(
///     validate(HvRegisterName::VP_INDEX, 1u64.into()),
///     Err(RegisterFault::ReadOnly(HvRegisterName::VP_INDEX))
/// );
/// ```
pub fn validate(name: HvRegisterName, value: HvRegisterValue) -> Result<(), RegisterFault> {
    validate_checks(name, value, None)
}

/// [`validate`] plus the rules that depend on the processor vendor the vCPU
/// presents ([`CpuVendor`]): on AMD processors IA32_SYSENTER_EIP and
/// IA32_SYSENTER_ESP are 32 bits wide, so a value with the upper half set is
/// refused rather than silently truncated. [`set_register`](crate::set_register)
/// and [`set_registers`](crate::set_registers) validate with this.
///
/// ```
/// use hv_regs::{validate_for, CpuVendor, HvRegisterName, RegisterFault};
/// let eip = HvRegisterName::SYSENTER_EIP;
/// let high = 0xFFFF_FFFF_8160_0000u64;
/// assert!(validate_for(eip, high.into(), CpuVendor::Intel).is_ok());
/// assert_eq!(
///     validate_for(eip, high.into(), CpuVendor::Amd),
///     Err(RegisterFault::BeyondWidth(eip))
/// );
/// assert!(validate_for(eip, 0x8160_0000u64.into(), CpuVendor::Amd).is_ok());
/// ```
pub fn validate_for(
    name: HvRegisterName,
    value: HvRegisterValue,
    vendor: CpuVendor,
) -> Result<(), RegisterFault> {
    validate_checks(name, value, Some(vendor))
}

fn validate_checks(
    name: HvRegisterName,
    value: HvRegisterValue,
    vendor: Option<CpuVendor>,
) -> Result<(), RegisterFault> {
    let loc = location(name).ok_or(RegisterFault::UnknownName(name))?;
    match loc {
        KvmRegister::Segment(_) => return check_segment(name, &value.as_segment()),
        KvmRegister::Table(_) => return check_table(name, &value.as_table()),
        KvmRegister::Gpr(_)
        | KvmRegister::Control(_)
        | KvmRegister::Debug(_)
        | KvmRegister::Xcr0
        | KvmRegister::Msr(_)
        | KvmRegister::MpState
        | KvmRegister::Synthetic(_) => {}
    }
    if let KvmRegister::Synthetic(
        Synthetic::VpIndex
        | Synthetic::VsmVpStatus
        | Synthetic::VsmCodePageOffsets
        | Synthetic::VsmPartitionStatus
        | Synthetic::VsmCapabilities,
    ) = loc
    {
        return Err(RegisterFault::ReadOnly(name));
    }
    let v = value.as_u64().ok_or(RegisterFault::BeyondWidth(name))?;
    match loc {
        KvmRegister::Gpr(Gpr::Rip) => canonical(name, v),
        KvmRegister::Gpr(Gpr::Rflags) => {
            fixed1(name, v, RFLAGS_FIXED1)?;
            reserved(name, v, RFLAGS_RESERVED)
        }
        KvmRegister::Gpr(_) => Ok(()),
        KvmRegister::Control(c) => check_control(name, c, v),
        KvmRegister::Debug(DebugRegister::Dr(_)) => Ok(()),
        KvmRegister::Debug(DebugRegister::Dr6) => {
            width(name, v, 32)?;
            fixed1(name, v, DR6_FIXED1)?;
            reserved(name, v, DR6_RESERVED)
        }
        KvmRegister::Debug(DebugRegister::Dr7) => {
            width(name, v, 32)?;
            fixed1(name, v, DR7_FIXED1)?;
            reserved(name, v, DR7_RESERVED)
        }
        KvmRegister::Xcr0 => {
            fixed1(name, v, 1)?;
            reserved(name, v, !XCR0_KNOWN)?;
            check_xcr0(name, v)
        }
        KvmRegister::Msr(index) => {
            if let (msr::SYSENTER_EIP | msr::SYSENTER_ESP, Some(vendor)) = (index, vendor) {
                width(name, v, vendor.sysenter_width())?;
            }
            check_msr(name, index, v)
        }
        KvmRegister::MpState => {
            reserved(name, v, ACTIVITY_RESERVED)?;
            inconsistent(
                name,
                mp_state_from_activity(v).is_none(),
                "activity state KVM cannot represent",
            )
        }
        KvmRegister::Synthetic(Synthetic::ExplicitSuspend | Synthetic::InterceptSuspend) => {
            reserved(name, v, !1)
        }
        KvmRegister::Synthetic(Synthetic::InitialApicId) => width(name, v, 32),
        KvmRegister::Synthetic(Synthetic::VsmPartitionConfig) => {
            reserved(name, v, hv_defs::vsm::VsmPartitionConfig::RESERVED)
        }
        KvmRegister::Synthetic(Synthetic::VsmVpSecureConfig(_)) => {
            reserved(name, v, hv_defs::vsm::VsmVpSecureVtlConfig::RESERVED)
        }
        KvmRegister::Synthetic(
            Synthetic::VpIndex
            | Synthetic::VsmVpStatus
            | Synthetic::VsmCodePageOffsets
            | Synthetic::VsmPartitionStatus
            | Synthetic::VsmCapabilities,
        )
        | KvmRegister::Segment(_)
        | KvmRegister::Table(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_defs::SegmentAttributes;

    fn v(x: u64) -> HvRegisterValue {
        x.into()
    }

    #[test]
    fn canonical_addresses() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x0000_7FFF_FFFF_FFFF));
        assert!(is_canonical(0xFFFF_8000_0000_0000));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(!is_canonical(0xFFFF_7FFF_FFFF_FFFF));
    }

    #[test]
    fn every_64_bit_register_refuses_high_bits() {
        for &n in HvRegisterName::KNOWN {
            let loc = location(n).unwrap();
            if matches!(loc, KvmRegister::Segment(_) | KvmRegister::Table(_)) {
                continue;
            }
            let r = validate(n, HvRegisterValue { low: 0, high: 1 });
            assert!(r.is_err(), "{n:?}");
            assert_eq!(r.unwrap_err().status(), HvError::INVALID_PARAMETER);
        }
    }

    #[test]
    fn xcr0_follows_the_xsetbv_rules() {
        // Intel SDM vol. 1 13.3: the values XSETBV accepts.
        for ok in [
            0b1u64,
            0b11,
            0b111,
            0b1_1111,
            0b1110_0111,
            0x2E7,
            (0b11 << 17) | 0b111,
        ] {
            assert!(validate(HvRegisterName::XFEM, ok.into()).is_ok(), "{ok:#x}");
        }
        for bad in [
            0b101u64,          // AVX without SSE
            0b1011,            // BNDREGS without BNDCSR
            0b1_0011,          // BNDCSR without BNDREGS
            0b0010_0111,       // opmask alone
            0b0110_0111,       // AVX-512 incomplete
            0b1110_0011,       // AVX-512 without AVX
            (1 << 17) | 0b111, // XTILECFG alone
            (1 << 18) | 0b111, // XTILEDATA alone
        ] {
            let r = validate(HvRegisterName::XFEM, bad.into());
            assert!(
                matches!(r, Err(RegisterFault::Inconsistent { .. })),
                "{bad:#x}: {r:?}"
            );
        }
    }

    #[test]
    fn table_of_refusals() {
        use HvRegisterName as N;
        let cases: &[(HvRegisterName, u64)] = &[
            (N::RIP, 0x0000_8000_0000_0000),
            (N::RFLAGS, 0),
            (N::RFLAGS, 0x2 | (1 << 3)),
            (N::RFLAGS, 0x2 | (1 << 22)),
            (N::CR0, 1 << 32),
            (N::CR0, 1 << 6),
            (N::CR0, 0x8000_0000),
            (N::CR0, 0x2000_0001),
            (N::CR3, 1 << 60),
            (N::CR4, 1 << 15),
            (N::CR4, 1 << 30),
            (N::CR8, 0x10),
            (N::EFER, 1 << 1),
            (N::EFER, 1 << 10),
            (N::APIC_BASE, 0xFEE0_0001),
            (N::APIC_BASE, 0xFEE0_0400),
            (N::XFEM, 0x2),
            (N::XFEM, 0x5),
            (N::XFEM, 0x3 | (1 << 40)),
            (N::DR6, 0),
            (N::DR6, 0xFFFF_0FF0 | (1 << 12)),
            (N::DR6, 1 << 32),
            (N::DR7, 0),
            (N::DR7, 0x400 | (1 << 14)),
            (N::PAT, 0x02),
            (N::PAT, 0x0800_0000_0000_0000),
            (N::SYSENTER_CS, 1 << 32),
            (N::SFMASK, 1 << 32),
            (N::TSC_AUX, 1 << 32),
            (N::LSTAR, 0x0000_8000_0000_0000),
            (N::KERNEL_GS_BASE, 0x0001_0000_0000_0000),
            (N::INTERNAL_ACTIVITY_STATE, 8),
            (N::INTERNAL_ACTIVITY_STATE, 3),
            (N::INTERNAL_ACTIVITY_STATE, 4),
            (N::EXPLICIT_SUSPEND, 2),
            (N::INTERCEPT_SUSPEND, 4),
            (N::INITIAL_APIC_ID, 1 << 32),
            (N::VSM_VP_STATUS, 0),
            (N::VSM_CODE_PAGE_OFFSETS, 0),
            (N::VSM_PARTITION_STATUS, 0),
            (N::VSM_CAPABILITIES, 0),
            // TLFS "Partition Configuration": bits 8:7 and 63:10 RsvdZ.
            (N::VSM_PARTITION_CONFIG, 1 << 7),
            (N::VSM_PARTITION_CONFIG, 1 << 10),
            // "Configuring Lower VTLs": bits 63:2 RsvdZ.
            (N::VSM_VP_SECURE_CONFIG_VTL0, 1 << 2),
            (N::VSM_VP_SECURE_CONFIG_VTL1, 1 << 63),
        ];
        for &(n, x) in cases {
            let e = validate(n, v(x));
            assert!(e.is_err(), "{n:?} = {x:#x} accepted");
            assert!(!e.unwrap_err().to_string().is_empty());
        }
        assert_eq!(
            validate(HvRegisterName(0x1234_5678), v(0)),
            Err(RegisterFault::UnknownName(HvRegisterName(0x1234_5678)))
        );
    }

    #[test]
    fn table_of_acceptances() {
        use HvRegisterName as N;
        let cases: &[(HvRegisterName, u64)] = &[
            (N::RAX, u64::MAX),
            (N::VSM_PARTITION_CONFIG, 0x27F),
            (N::VSM_VP_SECURE_CONFIG_VTL0, 3),
            (N::RIP, 0xFFFF_FFFF_8100_0000),
            (N::RFLAGS, 0x2),
            (N::RFLAGS, 0x3F_7FD7),
            (N::CR0, 0x8005_0033),
            (N::CR0, 0x6000_0010),
            (N::CR2, u64::MAX),
            (N::CR3, 0x000F_FFFF_FFFF_F000),
            (N::CR4, 0x1006B0),
            (N::CR8, 0xF),
            (N::EFER, 0xD01),
            (N::APIC_BASE, 0xFEE0_0900),
            (N::APIC_BASE, 0xFEE0_0D00),
            (N::XFEM, 0x7),
            (N::DR0, u64::MAX),
            (N::DR6, 0xFFFF_0FF0),
            (N::DR6, 0xFFFE_07F0),
            (N::DR7, 0x400),
            (N::PAT, 0x0007_0406_0007_0406),
            (N::TSC, u64::MAX),
            (N::STAR, u64::MAX),
            (N::SYSENTER_CS, 0xFFFF_FFFF),
            (N::INTERNAL_ACTIVITY_STATE, 1),
            (N::EXPLICIT_SUSPEND, 1),
            (N::INITIAL_APIC_ID, 0xFFFF_FFFF),
        ];
        for &(n, x) in cases {
            assert_eq!(validate(n, v(x)), Ok(()), "{n:?} = {x:#x}");
        }
    }

    #[test]
    fn segments_and_tables() {
        let cs = SegmentRegister {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: 0x10,
            attributes: SegmentAttributes(0xA09B),
        };
        assert_eq!(validate(HvRegisterName::CS, cs.into()), Ok(()));
        let bad = [
            SegmentRegister {
                attributes: SegmentAttributes(0xA19B),
                ..cs
            },
            SegmentRegister {
                attributes: SegmentAttributes(0xE09B),
                ..cs
            },
            SegmentRegister {
                limit: 0xFFFF_F000,
                ..cs
            },
            SegmentRegister {
                base: 0x0000_8000_0000_0000,
                ..cs
            },
            SegmentRegister {
                attributes: SegmentAttributes(0x209B),
                limit: 0x10_0000,
                ..cs
            },
        ];
        for s in bad {
            assert!(validate(HvRegisterName::CS, s.into()).is_err(), "{s:?}");
        }
        // A not-present segment's limit is not checked.
        let null = SegmentRegister {
            limit: 0xFFFF_F000,
            attributes: SegmentAttributes(0x8000),
            ..cs
        };
        assert_eq!(validate(HvRegisterName::DS, null.into()), Ok(()));
        let t = TableRegister {
            pad: [0; 3],
            limit: 0xFFF,
            base: 0xFFFF_FE00_0000_0000,
        };
        assert_eq!(validate(HvRegisterName::IDTR, t.into()), Ok(()));
        assert!(validate(
            HvRegisterName::GDTR,
            TableRegister {
                pad: [0, 1, 0],
                ..t
            }
            .into()
        )
        .is_err());
        assert!(validate(
            HvRegisterName::GDTR,
            TableRegister { base: 1 << 50, ..t }.into()
        )
        .is_err());
    }
}
