//! The guest-visible Hyper-V interface served from user space: CPUID leaves and
//! synthetic MSR numbers.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// The port the hypercall page traps on (this crate's choice; the TLFS leaves
/// the page's instructions to the hypervisor).
pub const HYPERCALL_PORT: u16 = 0xE0;

/// The hypercall page's code (the rest of the page is `int3`):
///
/// - offset 0, the hypercall: `out %eax, $0xE0; ret`. A 32-bit OUT exits to
///   user space with RCX, RDX and R8 (or EDX:EAX, EBX:ECX, EDI:ESI) intact;
///   only RAX (EDX:EAX) is written back.
/// - [`VTL_CALL_OFFSET`], HvCallVtlCall for a 64-bit caller: `mov %rcx, %rax;
///   mov $0x11, %ecx; out %eax, $0xE0; ret` (the guest's control input moves to
///   RAX, which the TLFS leaves clobbered; RCX carries the call code);
/// - [`VTL_RETURN_OFFSET`], HvCallVtlReturn the same with code 0x12;
/// - [`VTL_CALL_OFFSET_32`] and [`VTL_RETURN_OFFSET_32`], the same for a
///   32-bit caller: `mov %eax, %ecx; mov $code, %eax; out %eax, $0xE0; ret`
///   (the control input is EDX:EAX, ECX the reserved register; the low half
///   moves to ECX, EAX carries the call code, EDX keeps the high half).
pub const HYPERCALL_PAGE: [u8; 0x4B] = {
    let mut p = place([0xCCu8; 0x4B], 0, &[0xE7, HYPERCALL_PORT as u8, 0xC3]);
    let mut stub = 0;
    while stub < 2 {
        let code = [0x11u8, 0x12][stub];
        let at = [VTL_CALL_OFFSET, VTL_RETURN_OFFSET][stub] as usize;
        let seq64 = [
            0x48,
            0x89,
            0xC8,
            0xB9,
            code,
            0,
            0,
            0,
            0xE7,
            HYPERCALL_PORT as u8,
            0xC3,
        ];
        p = place(p, at, &seq64);
        let at = [VTL_CALL_OFFSET_32, VTL_RETURN_OFFSET_32][stub] as usize;
        let seq32 = [
            0x89,
            0xC1,
            0xB8,
            code,
            0,
            0,
            0,
            0xE7,
            HYPERCALL_PORT as u8,
            0xC3,
        ];
        p = place(p, at, &seq32);
        stub += 1;
    }
    p
};

/// `page` with `code` written at `at` (for building [`HYPERCALL_PAGE`]).
const fn place<const N: usize>(mut page: [u8; N], at: usize, code: &[u8]) -> [u8; N] {
    let mut i = 0;
    while i < code.len() {
        page[at + i] = code[i];
        i += 1;
    }
    page
}

/// Where the 64-bit VTL call sequence starts in the hypercall page.
pub const VTL_CALL_OFFSET: u16 = 0x10;
/// Where the 64-bit VTL return sequence starts in the hypercall page.
pub const VTL_RETURN_OFFSET: u16 = 0x20;
/// Where the 32-bit VTL call sequence starts in the hypercall page.
pub const VTL_CALL_OFFSET_32: u16 = 0x30;
/// Where the 32-bit VTL return sequence starts in the hypercall page.
pub const VTL_RETURN_OFFSET_32: u16 = 0x40;
/// The page offsets of the page's port writes (the hypercall's, then the
/// 64-bit and the 32-bit VTL call's and return's).
pub const TRAP_OFFSETS: [u64; 5] = [
    0,
    VTL_CALL_OFFSET as u64 + 8,
    VTL_RETURN_OFFSET as u64 + 8,
    VTL_CALL_OFFSET_32 as u64 + 7,
    VTL_RETURN_OFFSET_32 as u64 + 7,
];
/// HvRegisterVsmCodePageOffsets as a 64-bit caller reads it.
pub const VSM_CODE_PAGE_OFFSETS: hv_defs::vsm::VsmCodePageOffsets =
    hv_defs::vsm::VsmCodePageOffsets::new(VTL_CALL_OFFSET, VTL_RETURN_OFFSET);
/// HvRegisterVsmCodePageOffsets as a 32-bit caller reads it (the register
/// has one value per VTL; the offsets a caller can use depend on its mode).
pub const VSM_CODE_PAGE_OFFSETS_32: hv_defs::vsm::VsmCodePageOffsets =
    hv_defs::vsm::VsmCodePageOffsets::new(VTL_CALL_OFFSET_32, VTL_RETURN_OFFSET_32);

pub use hv_defs::synthetic::*;

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
            FEAT_SYNIC_MSRS
                | FEAT_HYPERCALL_MSRS
                | FEAT_VP_INDEX
                | FEAT_FREQUENCY_MSRS
                | FEAT_TSC_INVARIANT,
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
