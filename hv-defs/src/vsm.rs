//! Virtual Secure Mode (TLFS "Virtual Secure Mode"): the bit layouts of the
//! VSM registers and the VTL control area of the VP assist page.
//!
//! ```
//! use hv_defs::vsm::{VsmCodePageOffsets, VsmPartitionStatus};
//! use hv_defs::Vtl;
//! let s = VsmPartitionStatus::new(0b11, Vtl::VTL2);
//! assert_eq!(s.0, 0b11 | (2 << 16));
//! assert_eq!(s.maximum_vtl(), Vtl::VTL2);
//! let o = VsmCodePageOffsets::new(0x10, 0x20);
//! assert_eq!((o.vtl_call(), o.vtl_return()), (0x10, 0x20));
//! ```

use crate::Vtl;

/// HvRegisterVsmPartitionStatus: bits 15:0 EnabledVtlSet, 19:16 MaximumVtl,
/// 35:20 MbecEnabledVtlSet, the rest reserved.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct VsmPartitionStatus(pub u64);

impl VsmPartitionStatus {
    /// The status with `enabled` (bit n: VTL n) and `maximum` VTL, no MBEC.
    pub const fn new(enabled: u16, maximum: Vtl) -> Self {
        VsmPartitionStatus(enabled as u64 | ((maximum.0 as u64 & 0xF) << 16))
    }
    /// EnabledVtlSet.
    pub const fn enabled_vtls(self) -> u16 {
        self.0 as u16
    }
    /// MaximumVtl.
    pub const fn maximum_vtl(self) -> Vtl {
        Vtl(((self.0 >> 16) & 0xF) as u8)
    }
}

/// HvRegisterVsmCodePageOffsets: bits 11:0 VtlCallOffset, 23:12
/// VtlReturnOffset (byte offsets in the hypercall page), the rest reserved.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct VsmCodePageOffsets(pub u64);

impl VsmCodePageOffsets {
    /// The offsets of the VTL call and VTL return sequences.
    pub const fn new(vtl_call: u16, vtl_return: u16) -> Self {
        VsmCodePageOffsets((vtl_call as u64 & 0xFFF) | ((vtl_return as u64 & 0xFFF) << 12))
    }
    /// VtlCallOffset.
    pub const fn vtl_call(self) -> u16 {
        (self.0 & 0xFFF) as u16
    }
    /// VtlReturnOffset.
    pub const fn vtl_return(self) -> u16 {
        ((self.0 >> 12) & 0xFFF) as u16
    }
}

/// HvRegisterVsmCapabilities, in the layout Linux (`union
/// hv_register_vsm_capabilities`) and guests use: bit 0 Dr6Shared, 16:1
/// MbecVtlMask, 17 DenyLowerVtlStartup, ..., 27 InterceptPageAvailable, 28
/// ReturnActionAvailable. (The TLFS page's table puts Dr6Shared at bit 63;
/// the guests that read the register follow the layout here.)
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct VsmCapabilities(pub u64);

impl VsmCapabilities {
    /// Dr6Shared: DR6 is shared between VTLs.
    pub const DR6_SHARED: u64 = 1;
    /// MbecVtlMask (bits 16:1): the VTLs that may enable MBEC.
    pub const MBEC_VTL_MASK: u64 = 0xFFFF << 1;
    /// DenyLowerVtlStartup.
    pub const DENY_LOWER_VTL_STARTUP: u64 = 1 << 17;
    /// InterceptPageAvailable.
    pub const INTERCEPT_PAGE_AVAILABLE: u64 = 1 << 27;
    /// ReturnActionAvailable.
    pub const RETURN_ACTION_AVAILABLE: u64 = 1 << 28;
}

/// HvRegisterVsmPartitionConfig, one instance per VTL above 0 (TLFS "Virtual
/// Secure Mode", "Partition Configuration"): bit 0 EnableVtlProtection
/// (write-once), 4:1 DefaultVtlProtectionMask (HV_MAP_GPA flags: read,
/// write, kernel execute, user execute; fixed once set), 5 ZeroMemoryOnReset,
/// 6 DenyLowerVtlStartup, 9 InterceptVpStartup; 8:7 and 63:10 RsvdZ.
///
/// ```
/// use hv_defs::vsm::VsmPartitionConfig;
/// let c = VsmPartitionConfig(VsmPartitionConfig::ENABLE_VTL_PROTECTION | (0xF << 1));
/// assert!(c.enable_vtl_protection());
/// assert_eq!(c.default_protection_mask(), 0xF);
/// assert_eq!(c.0 & VsmPartitionConfig::RESERVED, 0);
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct VsmPartitionConfig(pub u64);

impl VsmPartitionConfig {
    /// EnableVtlProtection: the VTL may apply memory protections.
    pub const ENABLE_VTL_PROTECTION: u64 = 1;
    /// DefaultVtlProtectionMask (bits 4:1).
    pub const DEFAULT_PROTECTION_MASK: u64 = 0xF << 1;
    /// ZeroMemoryOnReset.
    pub const ZERO_MEMORY_ON_RESET: u64 = 1 << 5;
    /// DenyLowerVtlStartup: lower VTLs may not start or reset VPs.
    pub const DENY_LOWER_VTL_STARTUP: u64 = 1 << 6;
    /// InterceptVpStartup: a VP start or reset is intercepted to this VTL.
    pub const INTERCEPT_VP_STARTUP: u64 = 1 << 9;
    /// InterceptPage: this VTL's intercept messages go to its VP assist
    /// page's intercept message area, not to SINT0 (with
    /// [`VsmCapabilities::INTERCEPT_PAGE_AVAILABLE`]).
    pub const INTERCEPT_PAGE: u64 = 1 << 12;
    /// The RsvdZ bits.
    pub const RESERVED: u64 = !(0x7F | Self::INTERCEPT_VP_STARTUP | Self::INTERCEPT_PAGE);

    /// EnableVtlProtection.
    pub const fn enable_vtl_protection(self) -> bool {
        self.0 & Self::ENABLE_VTL_PROTECTION != 0
    }
    /// DefaultVtlProtectionMask, as HV_MAP_GPA flags (bit 0 read, 1 write,
    /// 2 kernel-mode execute, 3 user-mode execute).
    pub const fn default_protection_mask(self) -> u8 {
        ((self.0 >> 1) & 0xF) as u8
    }
}

/// HV_REGISTER_VSM_VP_SECURE_VTL_CONFIG (HvRegisterVsmVpSecureConfigVtl`n`):
/// a higher VTL's configuration of lower VTL `n` on one VP. Bit 0
/// MbecEnabled, 1 TlbLocked (released when the VP returns to a lower VTL),
/// 63:2 RsvdZ.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct VsmVpSecureVtlConfig(pub u64);

impl VsmVpSecureVtlConfig {
    /// MbecEnabled.
    pub const MBEC_ENABLED: u64 = 1;
    /// TlbLocked.
    pub const TLB_LOCKED: u64 = 1 << 1;
    /// The RsvdZ bits.
    pub const RESERVED: u64 = !3;
}

/// HV_MAP_GPA_FLAGS as VTL protections use them: bit 0 readable, 1 writable,
/// 2 kernel-mode executable, 3 user-mode executable (the same bit without
/// MBEC); no bit is no access.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct MapGpaFlags(pub u32);

impl MapGpaFlags {
    /// No access.
    pub const NO_ACCESS: MapGpaFlags = MapGpaFlags(0);
    /// HV_MAP_GPA_READABLE.
    pub const READABLE: u32 = 1;
    /// HV_MAP_GPA_WRITABLE.
    pub const WRITABLE: u32 = 1 << 1;
    /// HV_MAP_GPA_KERNEL_EXECUTABLE.
    pub const KERNEL_EXECUTABLE: u32 = 1 << 2;
    /// HV_MAP_GPA_USER_EXECUTABLE.
    pub const USER_EXECUTABLE: u32 = 1 << 3;
    /// Every access.
    pub const ALL: MapGpaFlags = MapGpaFlags(0xF);

    /// Readable.
    pub const fn readable(self) -> bool {
        self.0 & Self::READABLE != 0
    }
    /// Writable.
    pub const fn writable(self) -> bool {
        self.0 & Self::WRITABLE != 0
    }
    /// Executable in either mode.
    pub const fn executable(self) -> bool {
        self.0 & (Self::KERNEL_EXECUTABLE | Self::USER_EXECUTABLE) != 0
    }
}

/// HV_VTL_ENTRY_REASON: why a higher VTL was entered, in its VP assist page's
/// VTL control area.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum VtlEntryReason {
    /// A lower VTL made a VTL call (HvCallVtlCall).
    VtlCall = 1,
    /// An interrupt for the higher VTL.
    Interrupt = 2,
    /// An intercept, delivered through the intercept page.
    Intercept = 3,
}

/// Byte offsets in the VP assist page (HV_VP_ASSIST_PAGE) of a VTL above 0:
/// its HV_VP_VTL_CONTROL area.
pub mod assist {
    /// VtlEntryReason (u32).
    pub const ENTRY_REASON: u64 = 8;
    /// VinaStatus (bit 0 VinaAsserted).
    pub const VINA_STATUS: u64 = 12;
    /// VtlReturnX64Rax: RAX of the lower VTL after a non-fast VTL return.
    pub const VTL_RETURN_X64_RAX: u64 = 16;
    /// VtlReturnX64Rcx: RCX of the lower VTL after a non-fast VTL return.
    pub const VTL_RETURN_X64_RCX: u64 = 24;
    /// VtlReturnX86Eax (u32): EAX of a 32-bit lower VTL after a non-fast
    /// VTL return.
    pub const VTL_RETURN_X86_EAX: u64 = 16;
    /// VtlReturnX86Ecx (u32).
    pub const VTL_RETURN_X86_ECX: u64 = 20;
    /// VtlReturnX86Edx (u32).
    pub const VTL_RETURN_X86_EDX: u64 = 24;
    /// The intercept message area (one HV_MESSAGE, 256 bytes) a VTL that set
    /// VsmPartitionConfig.InterceptPage receives its intercepts in (entry
    /// reason [`super::VtlEntryReason::Intercept`]); Linux
    /// `hv_vp_assist_page.intercept_message`.
    pub const INTERCEPT_MESSAGE: u64 = 112;
}

/// HvCallVtlReturn's control input (RCX at the VTL return): bit 0 is a fast
/// return (the lower VTL keeps RAX and RCX), bits 63:1 are reserved.
pub const VTL_RETURN_FAST: u64 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    /// TLFS "Virtual Secure Mode": VSM register layouts.
    #[test]
    fn register_layouts() {
        let s = VsmPartitionStatus::new(0b101, Vtl::VTL2);
        assert_eq!(s.enabled_vtls(), 0b101);
        assert_eq!(s.maximum_vtl(), Vtl::VTL2);
        assert_eq!(s.0 >> 20, 0, "no MBEC-enabled VTLs");
        let o = VsmCodePageOffsets::new(0xABC, 0x123);
        assert_eq!(o.0, 0x123ABC);
        assert_eq!(VsmCodePageOffsets::new(0x1FFF, 0).vtl_call(), 0xFFF);
        assert_eq!(VsmCodePageOffsets::new(0, 0x1FFF).vtl_return(), 0xFFF);
        assert_eq!(o.vtl_return(), 0x123);
        assert_eq!(VsmCapabilities::MBEC_VTL_MASK, 0x1FFFE);
        assert_eq!(VtlEntryReason::VtlCall as u32, 1);
        assert_eq!(VtlEntryReason::Intercept as u32, 3);
        assert_eq!(assist::VTL_RETURN_X64_RCX, 24);
        assert_eq!(
            (
                assist::VTL_RETURN_X86_EAX,
                assist::VTL_RETURN_X86_ECX,
                assist::VTL_RETURN_X86_EDX
            ),
            (16, 20, 24)
        );
    }

    /// TLFS "Partition Configuration" and "Configuring Lower VTLs" layouts.
    #[test]
    fn configuration_layouts() {
        assert_eq!(VsmPartitionConfig::DEFAULT_PROTECTION_MASK, 0b1_1110);
        assert_eq!(VsmPartitionConfig::ZERO_MEMORY_ON_RESET, 0x20);
        assert_eq!(VsmPartitionConfig::DENY_LOWER_VTL_STARTUP, 0x40);
        assert_eq!(VsmPartitionConfig::INTERCEPT_VP_STARTUP, 0x200);
        assert_eq!(VsmPartitionConfig::RESERVED, !0x127F);
        assert_eq!(VsmPartitionConfig::INTERCEPT_PAGE, 1 << 12);
        assert_eq!(assist::INTERCEPT_MESSAGE, 112);
        let c = VsmPartitionConfig(0b0_0111);
        assert!(c.enable_vtl_protection());
        assert_eq!(c.default_protection_mask(), 0b0011);
        assert!(!VsmPartitionConfig::default().enable_vtl_protection());
        assert_eq!(VsmVpSecureVtlConfig::TLB_LOCKED, 2);
        assert_eq!(VsmVpSecureVtlConfig::RESERVED, !3);
    }

    /// TLFS HV_MAP_GPA_FLAGS.
    #[test]
    fn map_gpa_flags() {
        assert_eq!(MapGpaFlags::ALL.0, 0xF);
        let rx = MapGpaFlags(MapGpaFlags::READABLE | MapGpaFlags::KERNEL_EXECUTABLE);
        assert!(rx.readable() && !rx.writable() && rx.executable());
        let none = MapGpaFlags::NO_ACCESS;
        assert!(!none.readable() && !none.writable() && !none.executable());
        assert!(MapGpaFlags(MapGpaFlags::USER_EXECUTABLE).executable());
    }
}
