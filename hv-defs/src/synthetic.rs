//! The Hyper-V interface a guest discovers: the numbers of the synthetic MSRs
//! (the TLFS names them HV_X64_MSR_*) and the feature and privilege bits of
//! CPUID leaf 0x40000003 (TLFS "Feature Discovery",
//! HV_PARTITION_PRIVILEGE_MASK).

/// HV_X64_MSR_GUEST_OS_ID.
pub const MSR_GUEST_OS_ID: u32 = 0x4000_0000;
/// HV_X64_MSR_HYPERCALL.
pub const MSR_HYPERCALL: u32 = 0x4000_0001;
/// HV_X64_MSR_VP_INDEX.
pub const MSR_VP_INDEX: u32 = 0x4000_0002;
/// HV_X64_MSR_TSC_FREQUENCY.
pub const MSR_TSC_FREQUENCY: u32 = 0x4000_0022;
/// HV_X64_MSR_APIC_FREQUENCY.
pub const MSR_APIC_FREQUENCY: u32 = 0x4000_0023;
/// HV_X64_MSR_VP_ASSIST_PAGE.
pub const MSR_VP_ASSIST_PAGE: u32 = 0x4000_0073;
/// HV_X64_MSR_TSC_INVARIANT_CONTROL.
pub const MSR_TSC_INVARIANT_CONTROL: u32 = 0x4000_0118;
/// First synthetic MSR (0x40000000); the range `[MSR_FIRST, MSR_FIRST +
/// MSR_COUNT)` holds every x64 synthetic MSR.
pub const MSR_FIRST: u32 = 0x4000_0000;
/// Number of MSRs in the synthetic range.
pub const MSR_COUNT: u32 = 0x200;

/// CPUID 0x40000003 EAX: AccessSynicRegs (bit 2): SCONTROL, SVERSION,
/// SIEFP, SIMP, EOM and SINT0-15.
pub const FEAT_SYNIC_MSRS: u32 = 1 << 2;
/// CPUID 0x40000003 EAX: AccessHypercallMsrs (bit 5).
pub const FEAT_HYPERCALL_MSRS: u32 = 1 << 5;
/// CPUID 0x40000003 EAX: AccessVpIndex (bit 6).
pub const FEAT_VP_INDEX: u32 = 1 << 6;
/// CPUID 0x40000003 EAX: AccessFrequencyMsrs (bit 11).
pub const FEAT_FREQUENCY_MSRS: u32 = 1 << 11;
/// CPUID 0x40000003 EAX: AccessTscInvariantControls (bit 15).
pub const FEAT_TSC_INVARIANT: u32 = 1 << 15;
/// CPUID 0x40000003 EBX: AccessVsm (privilege bit 48).
pub const PRIV_ACCESS_VSM: u32 = 1 << 16;
/// CPUID 0x40000003 EBX: AccessVpRegisters (privilege bit 49).
pub const PRIV_ACCESS_VP_REGISTERS: u32 = 1 << 17;
/// CPUID 0x40000003 EBX: StartVirtualProcessor (privilege bit 53).
pub const PRIV_START_VIRTUAL_PROCESSOR: u32 = 1 << 21;
/// CPUID 0x40000003 EDX: frequency MSRs available (bit 8).
pub const FEAT_EDX_FREQUENCY_MSRS: u32 = 1 << 8;
