//! Where each HV register lives in KVM vCPU state, and conversions of the
//! pieces that are not plain 64-bit copies.

use hv_defs::{SegmentAttributes, SegmentRegister, TableRegister, Vtl};
use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

use crate::HvRegisterName;

/// A general-purpose register in `kvm_regs`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Gpr {
    /// RAX.
    Rax,
    /// RCX.
    Rcx,
    /// RDX.
    Rdx,
    /// RBX.
    Rbx,
    /// RSP.
    Rsp,
    /// RBP.
    Rbp,
    /// RSI.
    Rsi,
    /// RDI.
    Rdi,
    /// R8.
    R8,
    /// R9.
    R9,
    /// R10.
    R10,
    /// R11.
    R11,
    /// R12.
    R12,
    /// R13.
    R13,
    /// R14.
    R14,
    /// R15.
    R15,
    /// RIP.
    Rip,
    /// RFLAGS.
    Rflags,
}

impl Gpr {
    /// The register's field in `regs`.
    pub fn field(self, regs: &kvm_regs) -> u64 {
        match self {
            Gpr::Rax => regs.rax,
            Gpr::Rcx => regs.rcx,
            Gpr::Rdx => regs.rdx,
            Gpr::Rbx => regs.rbx,
            Gpr::Rsp => regs.rsp,
            Gpr::Rbp => regs.rbp,
            Gpr::Rsi => regs.rsi,
            Gpr::Rdi => regs.rdi,
            Gpr::R8 => regs.r8,
            Gpr::R9 => regs.r9,
            Gpr::R10 => regs.r10,
            Gpr::R11 => regs.r11,
            Gpr::R12 => regs.r12,
            Gpr::R13 => regs.r13,
            Gpr::R14 => regs.r14,
            Gpr::R15 => regs.r15,
            Gpr::Rip => regs.rip,
            Gpr::Rflags => regs.rflags,
        }
    }

    /// The register's field in `regs`, for writing.
    pub fn field_mut(self, regs: &mut kvm_regs) -> &mut u64 {
        match self {
            Gpr::Rax => &mut regs.rax,
            Gpr::Rcx => &mut regs.rcx,
            Gpr::Rdx => &mut regs.rdx,
            Gpr::Rbx => &mut regs.rbx,
            Gpr::Rsp => &mut regs.rsp,
            Gpr::Rbp => &mut regs.rbp,
            Gpr::Rsi => &mut regs.rsi,
            Gpr::Rdi => &mut regs.rdi,
            Gpr::R8 => &mut regs.r8,
            Gpr::R9 => &mut regs.r9,
            Gpr::R10 => &mut regs.r10,
            Gpr::R11 => &mut regs.r11,
            Gpr::R12 => &mut regs.r12,
            Gpr::R13 => &mut regs.r13,
            Gpr::R14 => &mut regs.r14,
            Gpr::R15 => &mut regs.r15,
            Gpr::Rip => &mut regs.rip,
            Gpr::Rflags => &mut regs.rflags,
        }
    }
}

/// A segment register in `kvm_sregs`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// ES.
    Es,
    /// CS.
    Cs,
    /// SS.
    Ss,
    /// DS.
    Ds,
    /// FS.
    Fs,
    /// GS.
    Gs,
    /// LDTR (`kvm_sregs::ldt`).
    Ldtr,
    /// TR.
    Tr,
}

impl Segment {
    /// The segment's field in `sregs`.
    pub fn field(self, sregs: &kvm_sregs) -> &kvm_segment {
        match self {
            Segment::Es => &sregs.es,
            Segment::Cs => &sregs.cs,
            Segment::Ss => &sregs.ss,
            Segment::Ds => &sregs.ds,
            Segment::Fs => &sregs.fs,
            Segment::Gs => &sregs.gs,
            Segment::Ldtr => &sregs.ldt,
            Segment::Tr => &sregs.tr,
        }
    }

    /// The segment's field in `sregs`, for writing.
    pub fn field_mut(self, sregs: &mut kvm_sregs) -> &mut kvm_segment {
        match self {
            Segment::Es => &mut sregs.es,
            Segment::Cs => &mut sregs.cs,
            Segment::Ss => &mut sregs.ss,
            Segment::Ds => &mut sregs.ds,
            Segment::Fs => &mut sregs.fs,
            Segment::Gs => &mut sregs.gs,
            Segment::Ldtr => &mut sregs.ldt,
            Segment::Tr => &mut sregs.tr,
        }
    }
}

/// A descriptor-table register in `kvm_sregs`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// IDTR.
    Idtr,
    /// GDTR.
    Gdtr,
}

impl Table {
    /// The table register's field in `sregs`, for writing.
    pub fn field_mut(self, sregs: &mut kvm_sregs) -> &mut kvm_dtable {
        match self {
            Table::Idtr => &mut sregs.idt,
            Table::Gdtr => &mut sregs.gdt,
        }
    }

    /// The table register's field in `sregs`.
    pub fn field(self, sregs: &kvm_sregs) -> &kvm_dtable {
        match self {
            Table::Idtr => &sregs.idt,
            Table::Gdtr => &sregs.gdt,
        }
    }
}

/// A 64-bit control field of `kvm_sregs`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Control {
    /// CR0.
    Cr0,
    /// CR2.
    Cr2,
    /// CR3.
    Cr3,
    /// CR4.
    Cr4,
    /// CR8 (the TPR).
    Cr8,
    /// IA32_EFER.
    Efer,
    /// IA32_APIC_BASE.
    ApicBase,
}

impl Control {
    /// The field in `sregs`, for writing.
    pub fn field_mut(self, sregs: &mut kvm_sregs) -> &mut u64 {
        match self {
            Control::Cr0 => &mut sregs.cr0,
            Control::Cr2 => &mut sregs.cr2,
            Control::Cr3 => &mut sregs.cr3,
            Control::Cr4 => &mut sregs.cr4,
            Control::Cr8 => &mut sregs.cr8,
            Control::Efer => &mut sregs.efer,
            Control::ApicBase => &mut sregs.apic_base,
        }
    }

    /// The field in `sregs`.
    pub fn field(self, sregs: &kvm_sregs) -> u64 {
        match self {
            Control::Cr0 => sregs.cr0,
            Control::Cr2 => sregs.cr2,
            Control::Cr3 => sregs.cr3,
            Control::Cr4 => sregs.cr4,
            Control::Cr8 => sregs.cr8,
            Control::Efer => sregs.efer,
            Control::ApicBase => sregs.apic_base,
        }
    }
}

/// A debug register in `kvm_debugregs`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DebugRegister {
    /// DR0..DR3: `kvm_debugregs::db[n]`.
    Dr(u8),
    /// DR6.
    Dr6,
    /// DR7.
    Dr7,
}

/// A register the VP model keeps itself rather than KVM.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Synthetic {
    /// HvRegisterExplicitSuspend.
    ExplicitSuspend,
    /// HvRegisterInterceptSuspend.
    InterceptSuspend,
    /// HvRegisterVpIndex (read-only).
    VpIndex,
    /// HvRegisterVsmVpStatus (read-only).
    VsmVpStatus,
    /// HvRegisterVsmCodePageOffsets (read-only, partition-wide).
    VsmCodePageOffsets,
    /// HvRegisterVsmPartitionStatus (read-only, partition-wide).
    VsmPartitionStatus,
    /// HvRegisterVsmCapabilities (read-only, partition-wide).
    VsmCapabilities,
    /// HvRegisterVsmPartitionConfig (partition-wide, one instance per VTL
    /// above 0: the VMM picks the instance by the access's VTL).
    VsmPartitionConfig,
    /// HvRegisterVsmVpSecureConfigVtl`n`: a higher VTL's configuration of
    /// the lower VTL `n` on the VP (one instance per higher VTL).
    VsmVpSecureConfig(Vtl),
    /// HvX64RegisterInitialApicId.
    InitialApicId,
}

/// Where an HV register lives in KVM vCPU state.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvmRegister {
    /// A field of `kvm_regs` (KVM_GET/SET_REGS).
    Gpr(Gpr),
    /// A segment of `kvm_sregs` (KVM_GET/SET_SREGS).
    Segment(Segment),
    /// A descriptor table of `kvm_sregs`.
    Table(Table),
    /// A control field of `kvm_sregs`.
    Control(Control),
    /// A field of `kvm_debugregs` (KVM_GET/SET_DEBUGREGS).
    Debug(DebugRegister),
    /// XCR0 (KVM_GET/SET_XCRS).
    Xcr0,
    /// A model-specific register (KVM_GET/SET_MSRS) by index.
    Msr(u32),
    /// The multiprocessing state (KVM_GET/SET_MP_STATE), as
    /// HvRegisterInternalActivityState.
    MpState,
    /// The VP model's own state.
    Synthetic(Synthetic),
}

/// Where `name` lives in KVM state, or `None` for a name this crate does not map.
///
/// ```
/// use hv_regs::{location, Gpr, HvRegisterName, KvmRegister};
/// assert_eq!(location(HvRegisterName::RIP), Some(KvmRegister::Gpr(Gpr::Rip)));
/// assert_eq!(location(HvRegisterName::LSTAR), Some(KvmRegister::Msr(0xC000_0082)));
/// assert_eq!(location(HvRegisterName(0xDEAD)), None);
/// ```
pub fn location(name: HvRegisterName) -> Option<KvmRegister> {
    use KvmRegister as K;
    Some(match name {
        HvRegisterName::EXPLICIT_SUSPEND => K::Synthetic(Synthetic::ExplicitSuspend),
        HvRegisterName::INTERCEPT_SUSPEND => K::Synthetic(Synthetic::InterceptSuspend),
        HvRegisterName::INTERNAL_ACTIVITY_STATE => K::MpState,
        HvRegisterName::RAX => K::Gpr(Gpr::Rax),
        HvRegisterName::RCX => K::Gpr(Gpr::Rcx),
        HvRegisterName::RDX => K::Gpr(Gpr::Rdx),
        HvRegisterName::RBX => K::Gpr(Gpr::Rbx),
        HvRegisterName::RSP => K::Gpr(Gpr::Rsp),
        HvRegisterName::RBP => K::Gpr(Gpr::Rbp),
        HvRegisterName::RSI => K::Gpr(Gpr::Rsi),
        HvRegisterName::RDI => K::Gpr(Gpr::Rdi),
        HvRegisterName::R8 => K::Gpr(Gpr::R8),
        HvRegisterName::R9 => K::Gpr(Gpr::R9),
        HvRegisterName::R10 => K::Gpr(Gpr::R10),
        HvRegisterName::R11 => K::Gpr(Gpr::R11),
        HvRegisterName::R12 => K::Gpr(Gpr::R12),
        HvRegisterName::R13 => K::Gpr(Gpr::R13),
        HvRegisterName::R14 => K::Gpr(Gpr::R14),
        HvRegisterName::R15 => K::Gpr(Gpr::R15),
        HvRegisterName::RIP => K::Gpr(Gpr::Rip),
        HvRegisterName::RFLAGS => K::Gpr(Gpr::Rflags),
        HvRegisterName::CR0 => K::Control(Control::Cr0),
        HvRegisterName::CR2 => K::Control(Control::Cr2),
        HvRegisterName::CR3 => K::Control(Control::Cr3),
        HvRegisterName::CR4 => K::Control(Control::Cr4),
        HvRegisterName::CR8 => K::Control(Control::Cr8),
        HvRegisterName::XFEM => K::Xcr0,
        HvRegisterName::DR0 => K::Debug(DebugRegister::Dr(0)),
        HvRegisterName::DR1 => K::Debug(DebugRegister::Dr(1)),
        HvRegisterName::DR2 => K::Debug(DebugRegister::Dr(2)),
        HvRegisterName::DR3 => K::Debug(DebugRegister::Dr(3)),
        HvRegisterName::DR6 => K::Debug(DebugRegister::Dr6),
        HvRegisterName::DR7 => K::Debug(DebugRegister::Dr7),
        HvRegisterName::ES => K::Segment(Segment::Es),
        HvRegisterName::CS => K::Segment(Segment::Cs),
        HvRegisterName::SS => K::Segment(Segment::Ss),
        HvRegisterName::DS => K::Segment(Segment::Ds),
        HvRegisterName::FS => K::Segment(Segment::Fs),
        HvRegisterName::GS => K::Segment(Segment::Gs),
        HvRegisterName::LDTR => K::Segment(Segment::Ldtr),
        HvRegisterName::TR => K::Segment(Segment::Tr),
        HvRegisterName::IDTR => K::Table(Table::Idtr),
        HvRegisterName::GDTR => K::Table(Table::Gdtr),
        HvRegisterName::TSC => K::Msr(msr::TSC),
        HvRegisterName::EFER => K::Control(Control::Efer),
        HvRegisterName::KERNEL_GS_BASE => K::Msr(msr::KERNEL_GS_BASE),
        HvRegisterName::APIC_BASE => K::Control(Control::ApicBase),
        HvRegisterName::PAT => K::Msr(msr::PAT),
        HvRegisterName::SYSENTER_CS => K::Msr(msr::SYSENTER_CS),
        HvRegisterName::SYSENTER_EIP => K::Msr(msr::SYSENTER_EIP),
        HvRegisterName::SYSENTER_ESP => K::Msr(msr::SYSENTER_ESP),
        HvRegisterName::STAR => K::Msr(msr::STAR),
        HvRegisterName::LSTAR => K::Msr(msr::LSTAR),
        HvRegisterName::CSTAR => K::Msr(msr::CSTAR),
        HvRegisterName::SFMASK => K::Msr(msr::SFMASK),
        HvRegisterName::INITIAL_APIC_ID => K::Synthetic(Synthetic::InitialApicId),
        HvRegisterName::TSC_AUX => K::Msr(msr::TSC_AUX),
        HvRegisterName::VP_INDEX => K::Synthetic(Synthetic::VpIndex),
        HvRegisterName::VSM_VP_STATUS => K::Synthetic(Synthetic::VsmVpStatus),
        HvRegisterName::VSM_CODE_PAGE_OFFSETS => K::Synthetic(Synthetic::VsmCodePageOffsets),
        HvRegisterName::VSM_PARTITION_STATUS => K::Synthetic(Synthetic::VsmPartitionStatus),
        HvRegisterName::VSM_CAPABILITIES => K::Synthetic(Synthetic::VsmCapabilities),
        HvRegisterName::VSM_PARTITION_CONFIG => K::Synthetic(Synthetic::VsmPartitionConfig),
        n => match n.secure_config_vtl() {
            Some(lower) => K::Synthetic(Synthetic::VsmVpSecureConfig(lower)),
            None => return None,
        },
    })
}

/// Architectural MSR indexes used by the mapping.
pub mod msr {
    /// IA32_TIME_STAMP_COUNTER.
    pub const TSC: u32 = 0x10;
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_PAT.
    pub const PAT: u32 = 0x277;
    /// IA32_STAR.
    pub const STAR: u32 = 0xC000_0081;
    /// IA32_LSTAR.
    pub const LSTAR: u32 = 0xC000_0082;
    /// IA32_CSTAR.
    pub const CSTAR: u32 = 0xC000_0083;
    /// IA32_FMASK.
    pub const SFMASK: u32 = 0xC000_0084;
    /// IA32_KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
    /// IA32_TSC_AUX.
    pub const TSC_AUX: u32 = 0xC000_0103;
}

/// Converts a TLFS segment register to KVM's form. A segment whose present bit is
/// clear is marked unusable, as VMX and SVM expect of a null selector.
pub fn segment_to_kvm(s: SegmentRegister) -> kvm_segment {
    let SegmentRegister {
        base,
        limit,
        selector,
        attributes: a,
    } = s;
    kvm_segment {
        base,
        limit,
        selector,
        type_: a.segment_type(),
        present: a.present() as u8,
        dpl: a.dpl(),
        db: a.default_big() as u8,
        s: a.non_system() as u8,
        l: a.long() as u8,
        g: a.granularity() as u8,
        avl: a.available() as u8,
        unusable: (!a.present()) as u8,
        padding: 0,
    }
}

/// Converts a KVM segment to the TLFS form. An unusable segment reads as not
/// present.
pub fn segment_from_kvm(k: &kvm_segment) -> SegmentRegister {
    SegmentRegister {
        base: k.base,
        limit: k.limit,
        selector: k.selector,
        attributes: SegmentAttributes::from_fields(
            k.type_,
            k.s != 0,
            k.dpl,
            k.present != 0 && k.unusable == 0,
            k.avl != 0,
            k.l != 0,
            k.db != 0,
            k.g != 0,
        ),
    }
}

/// Converts a TLFS table register to KVM's form.
pub fn table_to_kvm(t: TableRegister) -> kvm_dtable {
    kvm_dtable {
        base: t.base,
        limit: t.limit,
        padding: [0; 3],
    }
}

/// Converts a KVM descriptor table to the TLFS form.
pub fn table_from_kvm(k: &kvm_dtable) -> TableRegister {
    TableRegister {
        pad: [0; 3],
        limit: k.limit,
        base: k.base,
    }
}

/// KVM multiprocessing states (`KVM_MP_STATE_*`).
pub mod mp_state {
    /// Runnable.
    pub const RUNNABLE: u32 = 0;
    /// Not yet initialised (an AP before INIT/SIPI).
    pub const UNINITIALIZED: u32 = 1;
    /// INIT received, waiting for SIPI.
    pub const INIT_RECEIVED: u32 = 2;
    /// Halted.
    pub const HALTED: u32 = 3;
    /// SIPI received, about to run.
    pub const SIPI_RECEIVED: u32 = 4;
}

/// HvRegisterInternalActivityState bit 0: StartupSuspend (waiting for SIPI).
pub const ACTIVITY_STARTUP_SUSPEND: u64 = 1 << 0;
/// HvRegisterInternalActivityState bit 1: HaltSuspend.
pub const ACTIVITY_HALT_SUSPEND: u64 = 1 << 1;
/// HvRegisterInternalActivityState bit 2: IdleSuspend.
pub const ACTIVITY_IDLE_SUSPEND: u64 = 1 << 2;

/// HvRegisterInternalActivityState as KVM's multiprocessing state shows it.
pub fn activity_from_mp_state(mp: u32) -> u64 {
    match mp {
        mp_state::UNINITIALIZED | mp_state::INIT_RECEIVED => ACTIVITY_STARTUP_SUSPEND,
        mp_state::HALTED => ACTIVITY_HALT_SUSPEND,
        _ => 0,
    }
}

/// The KVM multiprocessing state for an HvRegisterInternalActivityState value,
/// or `None` if KVM cannot represent it (idle suspend, reserved bits, or both
/// startup and halt suspend).
pub fn mp_state_from_activity(activity: u64) -> Option<u32> {
    match activity {
        0 => Some(mp_state::RUNNABLE),
        ACTIVITY_STARTUP_SUSPEND => Some(mp_state::INIT_RECEIVED),
        ACTIVITY_HALT_SUSPEND => Some(mp_state::HALTED),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_name_is_mapped() {
        for &n in HvRegisterName::KNOWN {
            assert!(location(n).is_some(), "{n:?}");
        }
    }

    #[test]
    fn segment_round_trip() {
        let s = SegmentRegister {
            base: 0x1234_5000,
            limit: 0xFFFF_FFFF,
            selector: 0x10,
            attributes: SegmentAttributes(0xB09B),
        };
        assert_eq!(segment_from_kvm(&segment_to_kvm(s)), s);
        let all = SegmentAttributes(0xF0FF);
        let s2 = SegmentRegister {
            attributes: all,
            ..s
        };
        assert_eq!(segment_from_kvm(&segment_to_kvm(s2)), s2);
        let null = SegmentRegister::default();
        let k = segment_to_kvm(null);
        assert_eq!((k.present, k.unusable), (0, 1));
        assert_eq!(segment_from_kvm(&k), null);
    }

    #[test]
    fn mp_state_mapping() {
        assert_eq!(
            activity_from_mp_state(mp_state::UNINITIALIZED),
            ACTIVITY_STARTUP_SUSPEND
        );
        assert_eq!(
            activity_from_mp_state(mp_state::INIT_RECEIVED),
            ACTIVITY_STARTUP_SUSPEND
        );
        assert_eq!(
            activity_from_mp_state(mp_state::HALTED),
            ACTIVITY_HALT_SUSPEND
        );
        assert_eq!(activity_from_mp_state(mp_state::RUNNABLE), 0);
        assert_eq!(activity_from_mp_state(mp_state::SIPI_RECEIVED), 0);
        assert_eq!(mp_state_from_activity(0), Some(mp_state::RUNNABLE));
        assert_eq!(mp_state_from_activity(1), Some(mp_state::INIT_RECEIVED));
        assert_eq!(mp_state_from_activity(2), Some(mp_state::HALTED));
        assert_eq!(mp_state_from_activity(3), None);
        assert_eq!(mp_state_from_activity(ACTIVITY_IDLE_SUSPEND), None);
    }

    #[test]
    fn field_accessors_agree() {
        let mut regs = kvm_regs::default();
        let gprs = [
            Gpr::Rax,
            Gpr::Rcx,
            Gpr::Rdx,
            Gpr::Rbx,
            Gpr::Rsp,
            Gpr::Rbp,
            Gpr::Rsi,
            Gpr::Rdi,
            Gpr::R8,
            Gpr::R9,
            Gpr::R10,
            Gpr::R11,
            Gpr::R12,
            Gpr::R13,
            Gpr::R14,
            Gpr::R15,
            Gpr::Rip,
            Gpr::Rflags,
        ];
        for (i, g) in gprs.into_iter().enumerate() {
            *g.field_mut(&mut regs) = 0x100 + i as u64;
        }
        for (i, g) in gprs.into_iter().enumerate() {
            assert_eq!(g.field(&regs), 0x100 + i as u64, "{g:?}");
        }
        let mut sregs = kvm_sregs::default();
        let ctl = [
            Control::Cr0,
            Control::Cr2,
            Control::Cr3,
            Control::Cr4,
            Control::Cr8,
            Control::Efer,
            Control::ApicBase,
        ];
        for (i, c) in ctl.into_iter().enumerate() {
            *c.field_mut(&mut sregs) = 0x200 + i as u64;
        }
        for (i, c) in ctl.into_iter().enumerate() {
            assert_eq!(c.field(&sregs), 0x200 + i as u64, "{c:?}");
        }
        let segs = [
            Segment::Es,
            Segment::Cs,
            Segment::Ss,
            Segment::Ds,
            Segment::Fs,
            Segment::Gs,
            Segment::Ldtr,
            Segment::Tr,
        ];
        for (i, s) in segs.into_iter().enumerate() {
            s.field_mut(&mut sregs).selector = 0x300 + i as u16;
        }
        for (i, s) in segs.into_iter().enumerate() {
            assert_eq!(s.field(&sregs).selector, 0x300 + i as u16, "{s:?}");
        }
        Table::Idtr.field_mut(&mut sregs).limit = 1;
        Table::Gdtr.field_mut(&mut sregs).limit = 2;
        assert_eq!(
            (
                Table::Idtr.field(&sregs).limit,
                Table::Gdtr.field(&sregs).limit
            ),
            (1, 2)
        );
        let t = TableRegister {
            pad: [0; 3],
            limit: 0x7F,
            base: 0xFFFF_8000_0000_0000,
        };
        assert_eq!(table_from_kvm(&table_to_kvm(t)), t);
    }
}
