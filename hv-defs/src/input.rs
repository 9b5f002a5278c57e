//! Hypercall input and output layouts, and reading them from guest bytes.
//!
//! Every layout here is `#[repr(C)]` with its size and every field offset asserted
//! at compile time against the TLFS tables. Reading one from guest memory goes
//! through [`GuestInput::read_from_guest`], which is total: short, misaligned,
//! page-crossing or RsvdZ-violating input is an [`InputError`], never a panic.
//!
//! Fields the TLFS calls *RsvdZ* are checked; fields it calls *padding* are ignored.

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ids::{HvInputVtl, PartitionId, VpIndex, Vtl};
use crate::status::HvError;
use crate::x64::{HvRegisterValue, InitialVpContext};

/// Size of a hypervisor page.
pub const HV_PAGE_SIZE: u64 = 4096;

/// Required alignment of hypercall input and output GPAs.
pub const HV_CALL_ALIGNMENT: u64 = 8;

/// Why guest bytes could not be read as a hypercall layout.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum InputError {
    /// Fewer bytes than the layout needs.
    Short {
        /// Bytes the layout needs.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The GPA is not 8-byte aligned.
    Misaligned {
        /// The offending GPA.
        gpa: u64,
    },
    /// The parameter block crosses a page boundary.
    CrossesPage {
        /// Start of the block.
        gpa: u64,
        /// Length of the block.
        len: u64,
    },
    /// A field the TLFS declares RsvdZ is not zero.
    Reserved {
        /// The field's name.
        field: &'static str,
    },
}

impl InputError {
    /// The HV_STATUS a hypercall returns for this error. The TLFS common status
    /// table (Hypercall Interface, "Common Hypercall Status Codes") gives
    /// `INVALID_ALIGNMENT` for a GPA not 8-byte aligned and for a parameter list
    /// that spans pages; a short list or a set RsvdZ field is `INVALID_PARAMETER`.
    pub const fn status(self) -> HvError {
        match self {
            InputError::Misaligned { .. } | InputError::CrossesPage { .. } => {
                HvError::INVALID_ALIGNMENT
            }
            InputError::Short { .. } | InputError::Reserved { .. } => HvError::INVALID_PARAMETER,
        }
    }
}

impl From<InputError> for HvError {
    fn from(e: InputError) -> Self {
        e.status()
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InputError::Short { needed, available } => {
                write!(f, "input too short: need {needed} bytes, have {available}")
            }
            InputError::Misaligned { gpa } => write!(f, "GPA {gpa:#x} is not 8-byte aligned"),
            InputError::CrossesPage { gpa, len } => {
                write!(f, "{len} bytes at GPA {gpa:#x} cross a page boundary")
            }
            InputError::Reserved { field } => write!(f, "reserved field {field} is not zero"),
        }
    }
}

impl core::error::Error for InputError {}

/// Checks that a parameter block of `len` bytes at `gpa` is 8-byte aligned and
/// stays within one page, as the TLFS requires of hypercall input and output.
///
/// ```
/// use hv_defs::{check_parameter_block, InputError};
/// assert!(check_parameter_block(0x1000, 4096).is_ok());
/// assert_eq!(check_parameter_block(0x1004, 8), Err(InputError::Misaligned { gpa: 0x1004 }));
/// assert!(check_parameter_block(0x1FF8, 16).is_err());
/// ```
pub const fn check_parameter_block(gpa: u64, len: u64) -> Result<(), InputError> {
    if gpa % HV_CALL_ALIGNMENT != 0 {
        return Err(InputError::Misaligned { gpa });
    }
    let offset = gpa % HV_PAGE_SIZE;
    if len > HV_PAGE_SIZE - offset {
        return Err(InputError::CrossesPage { gpa, len });
    }
    Ok(())
}

/// A fixed-size hypercall input layout that can be read from guest bytes.
pub trait GuestInput: FromBytes + IntoBytes + KnownLayout + Immutable + Sized {
    /// Checks the RsvdZ fields of a value already read.
    fn check_reserved(&self) -> Result<(), InputError>;

    /// Reads the layout from `bytes`, which were read from guest memory at `gpa`.
    ///
    /// Fails, without panicking, when `gpa` is misaligned, the layout would cross a
    /// page, `bytes` is short, or an RsvdZ field is set.
    fn read_from_guest(bytes: &[u8], gpa: u64) -> Result<Self, InputError> {
        check_parameter_block(gpa, core::mem::size_of::<Self>() as u64)?;
        Self::parse(bytes)
    }

    /// Reads the layout from the start of `bytes` without a placement check: for
    /// the elements of a rep list, whose whole block was checked (elements of 4
    /// bytes are not 8-byte aligned). Short input or a set RsvdZ field is an error.
    fn parse(bytes: &[u8]) -> Result<Self, InputError> {
        let size = core::mem::size_of::<Self>();
        let value = Self::read_from_prefix(bytes)
            .map_err(|_| InputError::Short {
                needed: size,
                available: bytes.len(),
            })?
            .0;
        value.check_reserved()?;
        Ok(value)
    }
}

fn rsvdz(ok: bool, field: &'static str) -> Result<(), InputError> {
    if ok {
        Ok(())
    } else {
        Err(InputError::Reserved { field })
    }
}

/// HvCallStartVirtualProcessor (0x0099) input: 240 bytes.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StartVirtualProcessorInput {
    /// Partition @0.
    pub partition_id: PartitionId,
    /// VP to start @8.
    pub vp_index: VpIndex,
    /// Target VTL @12.
    pub target_vtl: Vtl,
    /// RsvdZ @13.
    pub rsvdz: [u8; 3],
    /// Initial context @16.
    pub vp_context: InitialVpContext,
}

impl GuestInput for StartVirtualProcessorInput {
    fn check_reserved(&self) -> Result<(), InputError> {
        rsvdz(self.rsvdz == [0; 3], "StartVirtualProcessor.RsvdZ")
    }
}

/// HvCallEnableVpVtl (0x000F) input: 240 bytes.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EnableVpVtlInput {
    /// Partition @0.
    pub partition_id: PartitionId,
    /// VP @8.
    pub vp_index: VpIndex,
    /// VTL to enable @12.
    pub target_vtl: Vtl,
    /// RsvdZ @13.
    pub rsvdz: [u8; 3],
    /// Initial context of the VP in the new VTL @16.
    pub vp_vtl_context: InitialVpContext,
}

impl GuestInput for EnableVpVtlInput {
    fn check_reserved(&self) -> Result<(), InputError> {
        rsvdz(self.rsvdz == [0; 3], "EnableVpVtl.RsvdZ")
    }
}

/// HvCallEnablePartitionVtl (0x000D) input: 16 bytes.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EnablePartitionVtlInput {
    /// Partition @0.
    pub partition_id: PartitionId,
    /// VTL to enable @8 (a plain HV_VTL).
    pub target_vtl: Vtl,
    /// HV_ENABLE_PARTITION_VTL_FLAGS @9: bit 0 EnableMbec
    /// ([`EnablePartitionVtlInput::ENABLE_MBEC`]), bits 7:1 reserved.
    pub flags: u8,
    /// RsvdZ @10.
    pub rsvdz: [u8; 6],
}

impl EnablePartitionVtlInput {
    /// HV_ENABLE_PARTITION_VTL_FLAGS.EnableMbec.
    pub const ENABLE_MBEC: u8 = 1;
}

impl GuestInput for EnablePartitionVtlInput {
    fn check_reserved(&self) -> Result<(), InputError> {
        rsvdz(self.rsvdz == [0; 6], "EnablePartitionVtl.RsvdZ")?;
        rsvdz(
            self.flags & !Self::ENABLE_MBEC == 0,
            "EnablePartitionVtl.Flags.Reserved",
        )
    }
}

/// HvCallModifyVtlProtectionMask (0x000C, rep) input header: 16 bytes,
/// followed by the rep list of GPA page numbers (u64 each).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ModifyVtlProtectionMaskHeader {
    /// Partition @0.
    pub partition_id: PartitionId,
    /// HV_MAP_GPA_FLAGS @8 ([`crate::vsm::MapGpaFlags`]).
    pub map_flags: u32,
    /// The VTL whose access is protected @12 (HV_INPUT_VTL).
    pub target_vtl: HvInputVtl,
    /// RsvdZ @13.
    pub rsvdz: [u8; 3],
}

impl GuestInput for ModifyVtlProtectionMaskHeader {
    fn check_reserved(&self) -> Result<(), InputError> {
        rsvdz(self.rsvdz == [0; 3], "ModifyVtlProtectionMask.RsvdZ")
    }
}

/// HV_PROXIMITY_DOMAIN_FLAGS: bit 0 proximity preferred, bits 30:1 reserved,
/// bit 31 proximity info valid.
#[repr(transparent)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ProximityDomainFlags(pub u32);

impl ProximityDomainFlags {
    /// Mask of the reserved bits 30:1.
    pub const RESERVED_MASK: u32 = 0x7FFF_FFFE;
    /// Proximity preferred (bit 0).
    pub const fn proximity_preferred(self) -> bool {
        self.0 & 1 != 0
    }
    /// Proximity info valid (bit 31).
    pub const fn proximity_info_valid(self) -> bool {
        self.0 & (1 << 31) != 0
    }
    /// Reserved bits as set.
    pub const fn reserved_bits(self) -> u32 {
        self.0 & Self::RESERVED_MASK
    }
}

/// HV_PROXIMITY_DOMAIN_INFO: 8 bytes, domain id @0, flags @4.
#[repr(C)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ProximityDomainInfo {
    /// ACPI proximity domain id @0.
    pub domain_id: u32,
    /// Flags @4.
    pub flags: ProximityDomainFlags,
}

/// HvCreateVp (0x004E) input: 32 bytes.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CreateVpInput {
    /// Partition @0.
    pub partition_id: PartitionId,
    /// Index of the new VP @8.
    pub vp_index: VpIndex,
    /// Padding @12.
    pub padding: [u8; 4],
    /// NUMA placement @16.
    pub proximity_domain_info: ProximityDomainInfo,
    /// Flags @24; must be zero.
    pub flags: u64,
}

impl GuestInput for CreateVpInput {
    fn check_reserved(&self) -> Result<(), InputError> {
        rsvdz(
            self.proximity_domain_info.flags.reserved_bits() == 0,
            "CreateVp.ProximityDomainInfo.Flags.Reserved",
        )?;
        rsvdz(self.flags == 0, "CreateVp.Flags")
    }
}

/// The header of HvCallGetVpRegisters (0x0050) and HvCallSetVpRegisters (0x0051):
/// 16 bytes, followed by the rep list.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VpRegistersHeader {
    /// Partition @0.
    pub partition_id: PartitionId,
    /// VP @8.
    pub vp_index: VpIndex,
    /// VTL selector @12.
    pub input_vtl: HvInputVtl,
    /// RsvdZ @13.
    pub rsvdz: [u8; 3],
}

impl GuestInput for VpRegistersHeader {
    fn check_reserved(&self) -> Result<(), InputError> {
        rsvdz(
            self.input_vtl.reserved_bits() == 0,
            "VpRegisters.InputVtl.Reserved",
        )?;
        rsvdz(self.rsvdz == [0; 3], "VpRegisters.RsvdZ")
    }
}

/// One HvCallGetVpRegisters rep input element: a register name (4 bytes).
/// The matching output element is an [`HvRegisterValue`].
#[repr(C)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GetVpRegistersElement {
    /// HV_REGISTER_NAME @0.
    pub name: u32,
}

impl GuestInput for GetVpRegistersElement {
    fn check_reserved(&self) -> Result<(), InputError> {
        Ok(())
    }
}

/// One HvCallSetVpRegisters rep element: 32 bytes, name @0, RsvdZ @4 (12 bytes),
/// value @16. (The 2013 page calls bytes 4..16 padding; the current TLFS page
/// declares them RsvdZ, which is what is checked.)
#[repr(C)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SetVpRegistersElement {
    /// HV_REGISTER_NAME @0.
    pub name: u32,
    /// RsvdZ @4.
    pub rsvdz0: u32,
    /// RsvdZ @8.
    pub rsvdz1: u64,
    /// Value @16 (low @16, high @24).
    pub value: HvRegisterValue,
}

impl GuestInput for SetVpRegistersElement {
    fn check_reserved(&self) -> Result<(), InputError> {
        rsvdz(
            self.rsvdz0 == 0 && self.rsvdz1 == 0,
            "SetVpRegisters.Element.RsvdZ",
        )
    }
}

/// The header of HvCallGetVpIndexFromApicId (0x009A): 16 bytes, followed by a rep
/// list of 32-bit APIC ids. The output is a list of 32-bit VP indexes.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GetVpIndexFromApicIdHeader {
    /// Partition @0.
    pub partition_id: PartitionId,
    /// VTL selector @8.
    pub target_vtl: HvInputVtl,
    /// RsvdZ @9.
    pub rsvdz: [u8; 7],
}

impl GuestInput for GetVpIndexFromApicIdHeader {
    fn check_reserved(&self) -> Result<(), InputError> {
        rsvdz(
            self.target_vtl.reserved_bits() == 0,
            "GetVpIndexFromApicId.TargetVtl.Reserved",
        )?;
        rsvdz(self.rsvdz == [0; 7], "GetVpIndexFromApicId.RsvdZ")
    }
}

/// One HvCallGetVpIndexFromApicId rep input element: an APIC id (4 bytes).
#[repr(C)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ApicIdElement {
    /// APIC id @0.
    pub apic_id: u32,
}

impl GuestInput for ApicIdElement {
    fn check_reserved(&self) -> Result<(), InputError> {
        Ok(())
    }
}

/// One HvCallGetVpIndexFromApicId rep output element: a VP index (4 bytes).
#[repr(C)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VpIndexElement {
    /// VP index @0.
    pub vp_index: VpIndex,
}

/// HvCallGetPartitionId (0x0046) output: 8 bytes.
#[repr(C)]
#[derive(
    Copy, Clone, PartialEq, Eq, Hash, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GetPartitionIdOutput {
    /// The caller's partition id @0.
    pub partition_id: PartitionId,
}

crate::assert_layout!(StartVirtualProcessorInput, size 240, align 8, {
    partition_id @ 0, vp_index @ 8, target_vtl @ 12, rsvdz @ 13, vp_context @ 16,
});
crate::assert_layout!(EnableVpVtlInput, size 240, align 8, {
    partition_id @ 0, vp_index @ 8, target_vtl @ 12, rsvdz @ 13, vp_vtl_context @ 16,
});
crate::assert_layout!(EnablePartitionVtlInput, size 16, align 8, {
    partition_id @ 0, target_vtl @ 8, flags @ 9, rsvdz @ 10,
});
crate::assert_layout!(ModifyVtlProtectionMaskHeader, size 16, align 8, {
    partition_id @ 0, map_flags @ 8, target_vtl @ 12, rsvdz @ 13,
});
crate::assert_layout!(ProximityDomainInfo, size 8, align 4, { domain_id @ 0, flags @ 4 });
crate::assert_layout!(CreateVpInput, size 32, align 8, {
    partition_id @ 0, vp_index @ 8, padding @ 12, proximity_domain_info @ 16, flags @ 24,
});
crate::assert_layout!(VpRegistersHeader, size 16, align 8, {
    partition_id @ 0, vp_index @ 8, input_vtl @ 12, rsvdz @ 13,
});
crate::assert_layout!(GetVpRegistersElement, size 4, align 4, { name @ 0 });
crate::assert_layout!(SetVpRegistersElement, size 32, align 16, {
    name @ 0, rsvdz0 @ 4, rsvdz1 @ 8, value @ 16,
});
crate::assert_layout!(GetVpIndexFromApicIdHeader, size 16, align 8, {
    partition_id @ 0, target_vtl @ 8, rsvdz @ 9,
});
crate::assert_layout!(ApicIdElement, size 4, align 4, { apic_id @ 0 });
crate::assert_layout!(VpIndexElement, size 4, align 4, { vp_index @ 0 });
crate::assert_layout!(GetPartitionIdOutput, size 8, align 8, { partition_id @ 0 });
crate::assert_layout!(PartitionId, size 8, align 8, {});
crate::assert_layout!(VpIndex, size 4, align 4, {});
crate::assert_layout!(Vtl, size 1, align 1, {});
crate::assert_layout!(HvInputVtl, size 1, align 1, {});

#[cfg(test)]
mod tests {
    use super::*;

    /// TLFS HvCallEnablePartitionVtl and HvCallModifyVtlProtectionMask: RsvdZ
    /// and reserved flag bits refused with HV_STATUS_INVALID_PARAMETER.
    #[test]
    fn vsm_inputs_refuse_reserved_bits() {
        let mut enable = [0u8; 16];
        enable[8] = 1;
        enable[9] = EnablePartitionVtlInput::ENABLE_MBEC;
        let i = EnablePartitionVtlInput::parse(&enable).unwrap();
        assert_eq!((i.target_vtl, i.flags), (Vtl::VTL1, 1));
        let status = |r: Result<EnablePartitionVtlInput, InputError>| r.unwrap_err().status();
        let mut bad = enable;
        bad[9] = 2;
        assert_eq!(
            status(EnablePartitionVtlInput::parse(&bad)),
            HvError::INVALID_PARAMETER
        );
        let mut bad = enable;
        bad[15] = 1;
        assert_eq!(
            status(EnablePartitionVtlInput::parse(&bad)),
            HvError::INVALID_PARAMETER
        );

        let mut protect = [0u8; 16];
        protect[8..12].copy_from_slice(&5u32.to_le_bytes());
        protect[12] = 0x10;
        let h = ModifyVtlProtectionMaskHeader::parse(&protect).unwrap();
        assert_eq!((h.map_flags, h.target_vtl), (5, HvInputVtl(0x10)));
        protect[14] = 1;
        assert_eq!(
            ModifyVtlProtectionMaskHeader::parse(&protect)
                .unwrap_err()
                .status(),
            HvError::INVALID_PARAMETER
        );
        assert!(ModifyVtlProtectionMaskHeader::parse(&protect[..15]).is_err());
    }
}
