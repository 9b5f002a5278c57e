//! The guest-visible Hyper-V interface served from user space: CPUID leaves and
//! synthetic MSR numbers.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// The port the hypercall page traps on (this crate's choice; the TLFS leaves
/// the page's instructions to the hypervisor).
pub const HYPERCALL_PORT: u16 = 0xE0;

/// The hypercall page's code: `out %eax, $0xE0; ret` (the rest of the page is
/// `int3`). A 32-bit OUT exits to user space with RCX, RDX and R8 (or EDX:EAX,
/// EBX:ECX, EDI:ESI) intact; only RAX (EDX:EAX) is written back.
pub const HYPERCALL_PAGE: [u8; 3] = [0xE7, HYPERCALL_PORT as u8, 0xC3];

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
/// First synthetic MSR; the partition filters `[MSR_FIRST, MSR_FIRST + MSR_COUNT)`
/// so accesses reach user space whatever the host kernel supports.
pub const MSR_FIRST: u32 = 0x4000_0000;
/// Number of filtered synthetic MSRs.
pub const MSR_COUNT: u32 = 0x200;

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

/// The Hyper-V leaves this partition presents, for `max_vps` VPs: vendor
/// "Microsoft Hv", interface "Hv#1", version, features and privileges for exactly
/// what is implemented, no recommendations, and the VP limit.
pub fn hyperv_leaves(max_vps: u32) -> Vec<kvm_cpuid_entry2> {
    let leaf = |function, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
        function,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    vec![
        // "Microsoft Hv"
        leaf(
            0x4000_0000,
            0x4000_0005,
            0x7263_694D,
            0x666F_736F,
            0x7648_2074,
        ),
        // "Hv#1"
        leaf(0x4000_0001, 0x3123_7648, 0, 0, 0),
        // Build 20000, version 10.0.
        leaf(0x4000_0002, 20000, 0x000A_0000, 0, 0),
        leaf(
            0x4000_0003,
            FEAT_HYPERCALL_MSRS | FEAT_VP_INDEX | FEAT_FREQUENCY_MSRS | FEAT_TSC_INVARIANT,
            PRIV_ACCESS_VSM | PRIV_ACCESS_VP_REGISTERS | PRIV_START_VIRTUAL_PROCESSOR,
            0,
            FEAT_EDX_FREQUENCY_MSRS,
        ),
        // No recommendations; never notify long spin waits.
        leaf(0x4000_0004, 0, 0xFFFF_FFFF, 0, 0),
        leaf(0x4000_0005, max_vps, max_vps, 0, 0),
    ]
}

/// The CPUID of VP `index` (APIC id = `index`), from KVM's supported set: the
/// APIC id in leaves 1, 0xB, 0x1F and 0x8000001E, the hypervisor bit, TSC-deadline,
/// and, with `hyperv_max_vps`, KVM's own hypervisor leaves replaced by the Hyper-V
/// leaves.
pub fn vp_cpuid(supported: &CpuId, index: u32, hyperv_max_vps: Option<u32>) -> CpuId {
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| hyperv_max_vps.is_none() || !(0x4000_0000..0x4001_0000).contains(&e.function))
        .copied()
        .collect();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x00FF_FFFF) | (index << 24);
                e.ecx |= (1 << 31) | (1 << 24);
            }
            0xB | 0x1F => e.edx = index,
            0x8000_001E => e.eax = index,
            _ => {}
        }
    }
    if let Some(max) = hyperv_max_vps {
        entries.extend(hyperv_leaves(max));
    }
    // CpuId::from_entries fails only above KVM_MAX_CPUID_ENTRIES, which KVM's own
    // list (plus six leaves) does not reach.
    CpuId::from_entries(&entries).unwrap_or_else(|_| supported.clone())
}

/// Whether `index` is in the synthetic MSR range this partition serves.
pub fn is_synthetic(index: u32) -> bool {
    (MSR_FIRST..MSR_FIRST + MSR_COUNT).contains(&index)
}
