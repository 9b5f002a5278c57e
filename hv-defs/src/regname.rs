//! HV_REGISTER_NAME for x64.

crate::open_enum! {
    /// HV_REGISTER_NAME: a 32-bit register name with its TLFS value (x64).
    ///
    /// Unknown names round-trip. (The `hv-regs` crate maps each known name to
    /// KVM vCPU state.)
    ///
    /// ```
    /// use hv_defs::HvRegisterName;
    /// assert_eq!(HvRegisterName::RIP.0, 0x0002_0010);
    /// assert_eq!(HvRegisterName::from(0x000D_0003), HvRegisterName::VSM_VP_STATUS);
    /// ```
    pub struct HvRegisterName(u32) {
        /// HvRegisterExplicitSuspend: bit 0 suspends the VP.
        EXPLICIT_SUSPEND = 0x0000_0000,
        /// HvRegisterInterceptSuspend: bit 0 suspends the VP for an intercept.
        INTERCEPT_SUSPEND = 0x0000_0001,
        /// HvRegisterInternalActivityState: startup (wait-for-SIPI) and halt suspend.
        INTERNAL_ACTIVITY_STATE = 0x0000_0004,
        /// HvX64RegisterRax.
        RAX = 0x0002_0000,
        /// HvX64RegisterRcx.
        RCX = 0x0002_0001,
        /// HvX64RegisterRdx.
        RDX = 0x0002_0002,
        /// HvX64RegisterRbx.
        RBX = 0x0002_0003,
        /// HvX64RegisterRsp.
        RSP = 0x0002_0004,
        /// HvX64RegisterRbp.
        RBP = 0x0002_0005,
        /// HvX64RegisterRsi.
        RSI = 0x0002_0006,
        /// HvX64RegisterRdi.
        RDI = 0x0002_0007,
        /// HvX64RegisterR8.
        R8 = 0x0002_0008,
        /// HvX64RegisterR9.
        R9 = 0x0002_0009,
        /// HvX64RegisterR10.
        R10 = 0x0002_000A,
        /// HvX64RegisterR11.
        R11 = 0x0002_000B,
        /// HvX64RegisterR12.
        R12 = 0x0002_000C,
        /// HvX64RegisterR13.
        R13 = 0x0002_000D,
        /// HvX64RegisterR14.
        R14 = 0x0002_000E,
        /// HvX64RegisterR15.
        R15 = 0x0002_000F,
        /// HvX64RegisterRip.
        RIP = 0x0002_0010,
        /// HvX64RegisterRflags.
        RFLAGS = 0x0002_0011,
        /// HvX64RegisterCr0.
        CR0 = 0x0004_0000,
        /// HvX64RegisterCr2.
        CR2 = 0x0004_0001,
        /// HvX64RegisterCr3.
        CR3 = 0x0004_0002,
        /// HvX64RegisterCr4.
        CR4 = 0x0004_0003,
        /// HvX64RegisterCr8.
        CR8 = 0x0004_0004,
        /// HvX64RegisterXfem: XCR0.
        XFEM = 0x0004_0005,
        /// HvX64RegisterDr0.
        DR0 = 0x0005_0000,
        /// HvX64RegisterDr1.
        DR1 = 0x0005_0001,
        /// HvX64RegisterDr2.
        DR2 = 0x0005_0002,
        /// HvX64RegisterDr3.
        DR3 = 0x0005_0003,
        /// HvX64RegisterDr6.
        DR6 = 0x0005_0004,
        /// HvX64RegisterDr7.
        DR7 = 0x0005_0005,
        /// HvX64RegisterEs.
        ES = 0x0006_0000,
        /// HvX64RegisterCs.
        CS = 0x0006_0001,
        /// HvX64RegisterSs.
        SS = 0x0006_0002,
        /// HvX64RegisterDs.
        DS = 0x0006_0003,
        /// HvX64RegisterFs.
        FS = 0x0006_0004,
        /// HvX64RegisterGs.
        GS = 0x0006_0005,
        /// HvX64RegisterLdtr.
        LDTR = 0x0006_0006,
        /// HvX64RegisterTr.
        TR = 0x0006_0007,
        /// HvX64RegisterIdtr.
        IDTR = 0x0007_0000,
        /// HvX64RegisterGdtr.
        GDTR = 0x0007_0001,
        /// HvX64RegisterTsc.
        TSC = 0x0008_0000,
        /// HvX64RegisterEfer.
        EFER = 0x0008_0001,
        /// HvX64RegisterKernelGsBase.
        KERNEL_GS_BASE = 0x0008_0002,
        /// HvX64RegisterApicBase.
        APIC_BASE = 0x0008_0003,
        /// HvX64RegisterPat.
        PAT = 0x0008_0004,
        /// HvX64RegisterSysenterCs.
        SYSENTER_CS = 0x0008_0005,
        /// HvX64RegisterSysenterEip.
        SYSENTER_EIP = 0x0008_0006,
        /// HvX64RegisterSysenterEsp.
        SYSENTER_ESP = 0x0008_0007,
        /// HvX64RegisterStar.
        STAR = 0x0008_0008,
        /// HvX64RegisterLstar.
        LSTAR = 0x0008_0009,
        /// HvX64RegisterCstar.
        CSTAR = 0x0008_000A,
        /// HvX64RegisterSfmask.
        SFMASK = 0x0008_000B,
        /// HvX64RegisterInitialApicId: the APIC id the VP was created with.
        INITIAL_APIC_ID = 0x0008_000C,
        /// HvX64RegisterTscAux.
        TSC_AUX = 0x0008_007B,
        /// HvRegisterVpIndex (read-only).
        VP_INDEX = 0x0009_0003,
        /// HvRegisterVsmCodePageOffsets (read-only): where the VTL call and
        /// return sequences are in the hypercall page.
        VSM_CODE_PAGE_OFFSETS = 0x000D_0002,
        /// HvRegisterVsmVpStatus (read-only): active VTL and enabled-VTL set.
        VSM_VP_STATUS = 0x000D_0003,
        /// HvRegisterVsmPartitionStatus (read-only): enabled-VTL set and
        /// maximum VTL of the partition.
        VSM_PARTITION_STATUS = 0x000D_0004,
        /// HvRegisterVsmCapabilities (read-only).
        VSM_CAPABILITIES = 0x000D_0006,
        /// HvRegisterVsmPartitionConfig: one instance per VTL above 0
        /// (`vsm::VsmPartitionConfig`).
        VSM_PARTITION_CONFIG = 0x000D_0007,
        /// HvRegisterVsmVpSecureConfigVtl0: a higher VTL's configuration of
        /// VTL 0 on the VP (`vsm::VsmVpSecureVtlConfig`).
        VSM_VP_SECURE_CONFIG_VTL0 = 0x000D_0010,
        /// HvRegisterVsmVpSecureConfigVtl1: VTL 2's configuration of VTL 1.
        VSM_VP_SECURE_CONFIG_VTL1 = 0x000D_0011,
    }
}

impl HvRegisterName {
    /// HvRegisterVsmVpSecureConfigVtl`n` (0x000D0010 + n, n = 0..=14): a
    /// higher VTL's instance of the configuration of lower VTL `n`.
    pub const fn vsm_vp_secure_config(lower: crate::Vtl) -> Option<HvRegisterName> {
        if lower.0 <= 14 {
            Some(HvRegisterName(0x000D_0010 + lower.0 as u32))
        } else {
            None
        }
    }

    /// The lower VTL an HvRegisterVsmVpSecureConfigVtl`n` name configures.
    pub const fn secure_config_vtl(self) -> Option<crate::Vtl> {
        if self.0 >= 0x000D_0010 && self.0 <= 0x000D_001E {
            Some(crate::Vtl((self.0 - 0x000D_0010) as u8))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HvRegisterName;

    #[test]
    fn every_known_name_has_its_tlfs_value_and_a_name() {
        for &n in HvRegisterName::KNOWN {
            let name = n.name().expect("known");
            assert_eq!(format!("{n:?}"), name);
            assert_eq!(HvRegisterName::from(n.0), n);
        }
        // TLFS HV_REGISTER_NAME values the VTL2 boot path relies on.
        assert_eq!(HvRegisterName::VSM_VP_STATUS.0, 0x000D_0003);
        // TLFS "Virtual Secure Mode", VSM registers.
        assert_eq!(HvRegisterName::VSM_CODE_PAGE_OFFSETS.0, 0x000D_0002);
        assert_eq!(HvRegisterName::VSM_PARTITION_STATUS.0, 0x000D_0004);
        assert_eq!(HvRegisterName::VSM_CAPABILITIES.0, 0x000D_0006);
        assert_eq!(HvRegisterName::VSM_PARTITION_CONFIG.0, 0x000D_0007);
        assert_eq!(HvRegisterName::VSM_VP_SECURE_CONFIG_VTL0.0, 0x000D_0010);
        assert_eq!(HvRegisterName::VSM_VP_SECURE_CONFIG_VTL1.0, 0x000D_0011);
        assert_eq!(
            HvRegisterName::vsm_vp_secure_config(crate::Vtl::VTL1),
            Some(HvRegisterName::VSM_VP_SECURE_CONFIG_VTL1)
        );
        assert_eq!(HvRegisterName::vsm_vp_secure_config(crate::Vtl(15)), None);
        assert_eq!(
            HvRegisterName(0x000D_001E).secure_config_vtl(),
            Some(crate::Vtl(14))
        );
        assert_eq!(HvRegisterName(0x000D_001F).secure_config_vtl(), None);
        assert_eq!(HvRegisterName::VSM_CAPABILITIES.secure_config_vtl(), None);
        assert_eq!(HvRegisterName::VP_INDEX.0, 0x0009_0003);
        assert_eq!(HvRegisterName::RIP.0, 0x0002_0010);
        assert_eq!(HvRegisterName(0x0002_0099).name(), None);
    }
}
