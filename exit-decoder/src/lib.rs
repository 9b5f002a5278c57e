//! KVM vCPU exits as typed exit contexts modelled on `WHV_RUN_VP_EXIT_CONTEXT`.
//!
//! [`decode`] turns what `VcpuFd::run` returned into a [`VpExit`]: memory access,
//! port I/O, MSR access, halt, interrupt window, APIC EOI, unrecoverable exception
//! (shutdown / triple fault), invalid VP register value (failed entry), canceled,
//! system event, internal error, and an explicit [`VpExit::Other`] that keeps the raw
//! KVM exit reason. It is total: every exit and every `run` error maps to a variant.
//!
//! It reports; the caller decides. Reads (port IN, MMIO read, RDMSR) carry the
//! buffer the caller fills to complete them, exactly as KVM expects.
//!
//! A hypercall page that traps with a 32-bit `OUT` to a port the VMM chose (the
//! choice is the VMM's: this crate has no policy) is recognised by
//! [`VpExit::is_hypercall_trap`], and [`HypercallExit::from_regs`] (64-bit caller)
//! or [`HypercallExit::from_regs_x86`] (32-bit caller) decodes the TLFS register
//! ABI from the GPRs KVM syncs into `kvm_run` (enable [`enable_sync_regs`]),
//! without a `KVM_GET_REGS` round trip. Every exit keeps the data KVM gave:
//! debug exits their `kvm_debug_exit_arch`, KVM's own hypercall exit its number,
//! arguments and return slot.
//!
//! ```
//! use exit_decoder::{decode, VpExit};
//! use kvm_ioctls::VcpuExit;
//!
//! let exit = decode(Ok(VcpuExit::IoOut(0x3F8, &[b'A'])));
//! assert!(matches!(exit, VpExit::IoPortAccess { port: 0x3F8, .. }));
//! let canceled = decode(Err(kvm_ioctls::Error::new(libc_eintr())));
//! assert!(matches!(canceled, VpExit::Canceled));
//! # fn libc_eintr() -> i32 { 4 }
//! ```
#![deny(missing_docs)]
// Guest-visible enums are matched without catch-all arms, so a new variant breaks
// the build until it is handled.
#![deny(clippy::wildcard_enum_match_arm)]

use hv_defs::HypercallControl;
use kvm_bindings::{
    kvm_regs, kvm_run, kvm_sregs, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
};
use kvm_ioctls::{MsrExitReason, VcpuExit, VcpuFd};

/// Errno values `KVM_RUN` returns when it was interrupted before entering the guest.
const EINTR: i32 = 4;
const EAGAIN: i32 = 11;

/// Direction and data of a port or memory access.
#[derive(Debug, PartialEq, Eq)]
pub enum Access<'a> {
    /// A read: fill the buffer with the value to return to the guest.
    Read(&'a mut [u8]),
    /// A write of these bytes.
    Write(&'a [u8]),
}

impl Access<'_> {
    /// Size of the access in bytes.
    pub fn len(&self) -> usize {
        match self {
            Access::Read(d) => d.len(),
            Access::Write(d) => d.len(),
        }
    }

    /// Whether the access has no bytes (never the case for a KVM exit).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the access is a write.
    pub fn is_write(&self) -> bool {
        matches!(self, Access::Write(_))
    }

    /// The written value as a little-endian integer (up to 8 bytes), if a write.
    pub fn written_value(&self) -> Option<u64> {
        match self {
            Access::Write(d) => {
                let mut b = [0u8; 8];
                let n = d.len().min(8);
                b[..n].copy_from_slice(&d[..n]);
                Some(u64::from_le_bytes(b))
            }
            Access::Read(_) => None,
        }
    }
}

/// An MSR access that reached user space (KVM_CAP_X86_USER_SPACE_MSR).
#[derive(Debug)]
pub struct MsrAccess<'a> {
    /// The MSR index.
    pub index: u32,
    /// Why KVM forwarded it.
    pub reason: MsrExitReason,
    /// `Some(value)` for WRMSR; `None` for RDMSR.
    pub written: Option<u64>,
    /// For RDMSR: the value to return.
    pub read: Option<&'a mut u64>,
    /// Set to 1 to inject #GP instead of completing the access.
    pub error: &'a mut u8,
}

/// Why KVM could not run or emulate the guest (`KVM_EXIT_INTERNAL_ERROR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalError {
    /// KVM's sub-error (`KVM_INTERNAL_ERROR_*`).
    pub suberror: u32,
    /// The extra data words KVM supplied (at most 16).
    pub data: Vec<u64>,
    /// For an emulation failure that reports them, the instruction bytes KVM could
    /// not emulate.
    pub instruction_bytes: Option<Vec<u8>>,
}

impl InternalError {
    /// `KVM_INTERNAL_ERROR_EMULATION`: the instruction emulator failed.
    pub const EMULATION: u32 = 1;
    /// `KVM_INTERNAL_ERROR_SIMUL_EX`: an exception while delivering an exception.
    pub const SIMUL_EX: u32 = 2;
    /// `KVM_INTERNAL_ERROR_DELIVERY_EV`: an event could not be delivered.
    pub const DELIVERY_EV: u32 = 3;
    /// `KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON`.
    pub const UNEXPECTED_EXIT_REASON: u32 = 4;

    /// Reads the internal-error details KVM left in `run`. Call it after a
    /// [`VpExit::InternalError`], once the exit's borrow of the vCPU has ended.
    pub fn from_run(run: &kvm_run) -> InternalError {
        // SAFETY: `internal` is a plain-old-data view (u32, u32, [u64; 16]) of the
        // kvm_run exit union; every bit pattern is a valid value of it, and KVM
        // wrote it for KVM_EXIT_INTERNAL_ERROR.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let data = internal.data[..ndata].to_vec();
        let mut instruction_bytes = None;
        // The emulation_failure view overlays the same words: flags in data[0],
        // then insn_size (one byte) and up to 15 instruction bytes.
        if internal.suberror == Self::EMULATION
            && ndata >= 3
            && data[0] & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES as u64 != 0
        {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&data[1].to_le_bytes());
            raw[8..].copy_from_slice(&data[2].to_le_bytes());
            let len = (raw[0] as usize).min(15);
            instruction_bytes = Some(raw[1..1 + len].to_vec());
        }
        InternalError {
            suberror: internal.suberror,
            data,
            instruction_bytes,
        }
    }
}

/// A typed vCPU exit, after `WHV_RUN_VP_EXIT_CONTEXT`.
#[derive(Debug)]
pub enum VpExit<'a> {
    /// WHvRunVpExitReasonMemoryAccess: an access to a GPA with no memory behind it.
    MemoryAccess {
        /// The guest-physical address.
        gpa: u64,
        /// Direction and data.
        access: Access<'a>,
    },
    /// WHvRunVpExitReasonX64IoPortAccess. For a string or REP instruction the data
    /// holds every element (size x count bytes).
    IoPortAccess {
        /// The port.
        port: u16,
        /// Direction and data.
        access: Access<'a>,
    },
    /// WHvRunVpExitReasonX64MsrAccess.
    MsrAccess(MsrAccess<'a>),
    /// WHvRunVpExitReasonX64Halt (no in-kernel LAPIC).
    Halt,
    /// WHvRunVpExitReasonX64InterruptWindow: the guest can take an interrupt.
    InterruptWindow,
    /// WHvRunVpExitReasonX64ApicEoi: an EOI for a level-triggered vector (split
    /// irqchip).
    ApicEoi {
        /// The vector.
        vector: u8,
    },
    /// WHvRunVpExitReasonUnrecoverableException: shutdown, e.g. a triple fault.
    UnrecoverableException,
    /// WHvRunVpExitReasonInvalidVpRegisterValue: VM entry failed on the state.
    InvalidVpRegisterValue {
        /// The hardware's entry-failure reason.
        hardware_reason: u64,
        /// The physical CPU.
        cpu: u32,
    },
    /// WHvRunVpExitReasonCanceled: the run was interrupted by the host (a signal,
    /// `immediate_exit`, or KVM_EXIT_INTR).
    Canceled,
    /// A KVM system event (shutdown, reset, crash).
    SystemEvent {
        /// `KVM_SYSTEM_EVENT_*`.
        kind: u32,
        /// Event data.
        data: &'a [u64],
    },
    /// KVM could not run or emulate the guest; read the details with
    /// [`InternalError::from_run`].
    InternalError,
    /// A guest access KVM reported as a memory fault (guest_memfd, attributes).
    MemoryFault {
        /// The GPA.
        gpa: u64,
        /// The size.
        size: u64,
        /// `KVM_MEMORY_EXIT_FLAG_*`.
        flags: u64,
    },
    /// A KVM exception exit (KVM_EXIT_EXCEPTION).
    Exception,
    /// A debug exit (KVM_EXIT_DEBUG: a guest debug event the VMM asked for with
    /// KVM_SET_GUEST_DEBUG), with the exception, PC and debug registers.
    Debug(kvm_bindings::kvm_debug_exit_arch),
    /// KVM's own hypercall exit (KVM_EXIT_HYPERCALL, for the hypercalls a VMM
    /// enabled with KVM_CAP_EXIT_HYPERCALL): write the result to `ret`.
    KvmHypercall {
        /// The hypercall number.
        nr: u64,
        /// Its arguments.
        args: [u64; 6],
        /// The value the guest gets back.
        ret: &'a mut u64,
        /// Whether the caller was in long mode.
        longmode: bool,
    },
    /// An NMI window or NMI exit (KVM_EXIT_NMI).
    Nmi,
    /// KVM's in-kernel Hyper-V emulation exit (KVM_EXIT_HYPERV: SynIC or
    /// hypercall); read the details from `kvm_run` once the exit's borrow ends.
    Hyperv,
    /// Any other exit, with KVM's raw exit reason.
    Other {
        /// `KVM_EXIT_*`, or 0 if unknown.
        reason: u32,
    },
    /// `KVM_RUN` failed with this errno.
    RunFailed {
        /// The errno.
        errno: i32,
    },
}

impl VpExit<'_> {
    /// The WHV_RUN_VP_EXIT_REASON a WHvRunVirtualProcessor-shaped consumer sees
    /// for this exit; `None` for what that interface has no reason for (KVM system
    /// events, internal errors, unknown exits, a failed `KVM_RUN`), which such a
    /// consumer treats as a failure of the run itself.
    ///
    /// ```
    /// use exit_decoder::VpExit;
    /// use hv_defs::WhvRunVpExitReason as R;
    /// assert_eq!(VpExit::Halt.whv_exit_reason(), Some(R::X64_HALT));
    /// assert_eq!(VpExit::Canceled.whv_exit_reason(), Some(R::CANCELED));
    /// assert_eq!(VpExit::RunFailed { errno: 22 }.whv_exit_reason(), None);
    /// ```
    pub fn whv_exit_reason(&self) -> Option<hv_defs::WhvRunVpExitReason> {
        use hv_defs::WhvRunVpExitReason as R;
        match self {
            VpExit::MemoryAccess { .. } | VpExit::MemoryFault { .. } => Some(R::MEMORY_ACCESS),
            VpExit::IoPortAccess { .. } => Some(R::X64_IO_PORT_ACCESS),
            VpExit::MsrAccess(_) => Some(R::X64_MSR_ACCESS),
            VpExit::Halt => Some(R::X64_HALT),
            VpExit::InterruptWindow => Some(R::X64_INTERRUPT_WINDOW),
            VpExit::ApicEoi { .. } => Some(R::X64_APIC_EOI),
            VpExit::UnrecoverableException => Some(R::UNRECOVERABLE_EXCEPTION),
            VpExit::InvalidVpRegisterValue { .. } => Some(R::INVALID_VP_REGISTER_VALUE),
            VpExit::Canceled => Some(R::CANCELED),
            VpExit::Exception | VpExit::Debug(_) => Some(R::EXCEPTION),
            VpExit::KvmHypercall { .. }
            | VpExit::Nmi
            | VpExit::Hyperv
            | VpExit::SystemEvent { .. }
            | VpExit::InternalError
            | VpExit::Other { .. }
            | VpExit::RunFailed { .. } => None,
        }
    }

    /// A stable name for the exit (its variant's), for statistics and logs.
    ///
    /// ```
    /// assert_eq!(exit_decoder::VpExit::Halt.name(), "Halt");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            VpExit::MemoryAccess { .. } => "MemoryAccess",
            VpExit::IoPortAccess { .. } => "IoPortAccess",
            VpExit::MsrAccess(_) => "MsrAccess",
            VpExit::Halt => "Halt",
            VpExit::InterruptWindow => "InterruptWindow",
            VpExit::ApicEoi { .. } => "ApicEoi",
            VpExit::UnrecoverableException => "UnrecoverableException",
            VpExit::InvalidVpRegisterValue { .. } => "InvalidVpRegisterValue",
            VpExit::Canceled => "Canceled",
            VpExit::SystemEvent { .. } => "SystemEvent",
            VpExit::InternalError => "InternalError",
            VpExit::MemoryFault { .. } => "MemoryFault",
            VpExit::Exception => "Exception",
            VpExit::Debug(_) => "Debug",
            VpExit::KvmHypercall { .. } => "KvmHypercall",
            VpExit::Nmi => "Nmi",
            VpExit::Hyperv => "Hyperv",
            VpExit::Other { .. } => "Other",
            VpExit::RunFailed { .. } => "RunFailed",
        }
    }

    /// Whether this exit is the hypercall page's trap: a 4-byte OUT to `port`.
    pub fn is_hypercall_trap(&self, port: u16) -> bool {
        matches!(self, VpExit::IoPortAccess { port: p, access: Access::Write(d) } if *p == port && d.len() == 4)
    }
}

/// Decodes the result of `VcpuFd::run`. Total: every exit and every error maps to a
/// variant.
pub fn decode<'a>(result: Result<VcpuExit<'a>, kvm_ioctls::Error>) -> VpExit<'a> {
    let exit = match result {
        Ok(e) => e,
        Err(e) if e.errno() == EINTR || e.errno() == EAGAIN => return VpExit::Canceled,
        Err(e) => return VpExit::RunFailed { errno: e.errno() },
    };
    match exit {
        VcpuExit::IoOut(port, data) => VpExit::IoPortAccess {
            port,
            access: Access::Write(data),
        },
        VcpuExit::IoIn(port, data) => VpExit::IoPortAccess {
            port,
            access: Access::Read(data),
        },
        VcpuExit::MmioRead(gpa, data) => VpExit::MemoryAccess {
            gpa,
            access: Access::Read(data),
        },
        VcpuExit::MmioWrite(gpa, data) => VpExit::MemoryAccess {
            gpa,
            access: Access::Write(data),
        },
        VcpuExit::X86Rdmsr(m) => VpExit::MsrAccess(MsrAccess {
            index: m.index,
            reason: m.reason,
            written: None,
            read: Some(m.data),
            error: m.error,
        }),
        VcpuExit::X86Wrmsr(m) => VpExit::MsrAccess(MsrAccess {
            index: m.index,
            reason: m.reason,
            written: Some(m.data),
            read: None,
            error: m.error,
        }),
        VcpuExit::Hlt => VpExit::Halt,
        VcpuExit::IrqWindowOpen => VpExit::InterruptWindow,
        VcpuExit::IoapicEoi(vector) => VpExit::ApicEoi { vector },
        VcpuExit::Shutdown => VpExit::UnrecoverableException,
        VcpuExit::FailEntry(hardware_reason, cpu) => VpExit::InvalidVpRegisterValue {
            hardware_reason,
            cpu,
        },
        VcpuExit::Intr => VpExit::Canceled,
        VcpuExit::SystemEvent(kind, data) => VpExit::SystemEvent { kind, data },
        VcpuExit::InternalError => VpExit::InternalError,
        VcpuExit::MemoryFault { flags, gpa, size } => VpExit::MemoryFault { gpa, size, flags },
        VcpuExit::Exception => VpExit::Exception,
        VcpuExit::Debug(arch) => VpExit::Debug(arch),
        VcpuExit::Unsupported(reason) => VpExit::Other { reason },
        VcpuExit::Hypercall(h) => VpExit::KvmHypercall {
            nr: h.nr,
            args: h.args,
            ret: h.ret,
            longmode: h.longmode != 0,
        },
        VcpuExit::SetTpr => VpExit::Other {
            reason: kvm_bindings::KVM_EXIT_SET_TPR,
        },
        VcpuExit::TprAccess => VpExit::Other {
            reason: kvm_bindings::KVM_EXIT_TPR_ACCESS,
        },
        VcpuExit::Nmi => VpExit::Nmi,
        VcpuExit::Hyperv => VpExit::Hyperv,
        VcpuExit::Unknown
        | VcpuExit::S390Sieic
        | VcpuExit::S390Reset
        | VcpuExit::Dcr
        | VcpuExit::Osi
        | VcpuExit::PaprHcall
        | VcpuExit::S390Ucontrol
        | VcpuExit::Watchdog
        | VcpuExit::S390Tsch
        | VcpuExit::Epr
        | VcpuExit::S390Stsi => VpExit::Other { reason: 0 },
    }
}

/// A guest hypercall trapped by the hypercall page, with the TLFS register ABI
/// decoded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HypercallExit {
    /// The hypercall input value (RCX).
    pub control: HypercallControl,
    /// The input GPA, or the first fast input (RDX; EBX:ECX for a 32-bit caller).
    pub rdx: u64,
    /// The output GPA, or the second fast input (R8; EDI:ESI for a 32-bit caller).
    pub r8: u64,
    /// RIP of the trapping instruction's successor is RIP + 2 once KVM completes
    /// the OUT; this is the RIP KVM reported.
    pub rip: u64,
}

impl HypercallExit {
    /// Decodes the hypercall registers of a 64-bit caller (EFER.LMA and CS.L):
    /// RCX, RDX, R8.
    pub fn from_regs(regs: &kvm_regs) -> Self {
        HypercallExit {
            control: HypercallControl(regs.rcx),
            rdx: regs.rdx,
            r8: regs.r8,
            rip: regs.rip,
        }
    }

    /// Decodes the hypercall registers of a 32-bit caller (TLFS "Hypercall
    /// Inputs", x86 column): the control word in EDX:EAX, the input GPA in
    /// EBX:ECX, the output GPA in EDI:ESI. The result goes back in EDX:EAX.
    ///
    /// ```
    /// use exit_decoder::HypercallExit;
    /// use kvm_bindings::kvm_regs;
    /// let regs = kvm_regs {
    ///     rdx: 0x1, rax: 0x0099, rbx: 0x2, rcx: 0x3000, rdi: 0x4, rsi: 0x5000,
    ///     ..Default::default()
    /// };
    /// let hc = HypercallExit::from_regs_x86(&regs);
    /// assert_eq!(hc.control.0, 0x1_0000_0099);
    /// assert_eq!((hc.rdx, hc.r8), (0x2_0000_3000, 0x4_0000_5000));
    /// ```
    pub fn from_regs_x86(regs: &kvm_regs) -> Self {
        let pair = |hi: u64, lo: u64| (hi << 32) | (lo & 0xFFFF_FFFF);
        HypercallExit {
            control: HypercallControl(pair(regs.rdx, regs.rax)),
            rdx: pair(regs.rbx, regs.rcx),
            r8: pair(regs.rdi, regs.rsi),
            rip: regs.rip,
        }
    }
}

/// How the caller of a hypercall runs, by its registers (TLFS "Legal Hypercall
/// Environments"): only CPL 0 in protected mode may make hypercalls, and the
/// caller's mode selects its register ABI.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CallerMode {
    /// 64-bit code (EFER.LMA and CS.L): RCX, RDX, R8 in, RAX out.
    Long,
    /// 32-bit protected mode (or compatibility mode): EDX:EAX, EBX:ECX,
    /// EDI:ESI in, EDX:EAX out.
    Protected,
    /// Real mode, virtual-8086 mode or CPL > 0: the hypercall is #UD.
    Illegal,
}

const CR0_PE: u64 = 1;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_VM: u64 = 1 << 17;

impl CallerMode {
    /// The caller's mode from its registers at the trap.
    ///
    /// ```
    /// use exit_decoder::CallerMode;
    /// use kvm_bindings::{kvm_regs, kvm_sregs};
    /// let mut sregs = kvm_sregs { cr0: 1, efer: 1 << 10, ..Default::default() };
    /// sregs.cs.l = 1;
    /// assert_eq!(CallerMode::of(&kvm_regs::default(), &sregs), CallerMode::Long);
    /// sregs.ss.dpl = 3;
    /// assert_eq!(CallerMode::of(&kvm_regs::default(), &sregs), CallerMode::Illegal);
    /// ```
    pub fn of(regs: &kvm_regs, sregs: &kvm_sregs) -> CallerMode {
        let protected = sregs.cr0 & CR0_PE != 0 && regs.rflags & RFLAGS_VM == 0;
        if !protected || sregs.ss.dpl != 0 {
            CallerMode::Illegal
        } else if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
            CallerMode::Long
        } else {
            CallerMode::Protected
        }
    }

    /// The hypercall the caller made, by its mode's ABI; `None` for an illegal
    /// caller.
    pub fn hypercall(self, regs: &kvm_regs) -> Option<HypercallExit> {
        match self {
            CallerMode::Long => Some(HypercallExit::from_regs(regs)),
            CallerMode::Protected => Some(HypercallExit::from_regs_x86(regs)),
            CallerMode::Illegal => None,
        }
    }

    /// Writes a hypercall result value where the caller expects it: RAX for a
    /// 64-bit caller, EDX:EAX for a 32-bit one. Nothing for an illegal caller.
    ///
    /// ```
    /// use exit_decoder::CallerMode;
    /// let mut regs = kvm_bindings::kvm_regs::default();
    /// CallerMode::Protected.write_result(&mut regs, 0x0000_0002_0000_0005);
    /// assert_eq!((regs.rdx, regs.rax), (2, 5));
    /// CallerMode::Long.write_result(&mut regs, 0x0000_0002_0000_0005);
    /// assert_eq!(regs.rax, 0x0000_0002_0000_0005);
    /// ```
    pub fn write_result(self, regs: &mut kvm_regs, result: u64) {
        match self {
            CallerMode::Long => regs.rax = result,
            CallerMode::Protected => {
                regs.rax = result & 0xFFFF_FFFF;
                regs.rdx = result >> 32;
            }
            CallerMode::Illegal => {}
        }
    }
}

/// Asks KVM to copy the GPRs into `kvm_run` on every exit, so a hypercall exit can be
/// decoded with [`sync_regs`] instead of `KVM_GET_REGS`.
pub fn enable_sync_regs(vcpu: &mut VcpuFd) {
    vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
}

/// The GPRs KVM synced into `kvm_run` at the last exit ([`enable_sync_regs`]).
pub fn sync_regs(vcpu: &VcpuFd) -> kvm_regs {
    vcpu.sync_regs().regs
}

/// Writes `rax` back through the synced registers: KVM loads it on the next
/// `KVM_RUN` without a `KVM_SET_REGS` (the hypercall result).
pub fn set_rax_on_next_run(vcpu: &mut VcpuFd, rax: u64) {
    vcpu.sync_regs_mut().regs.rax = rax;
    vcpu.set_sync_dirty_reg(kvm_ioctls::SyncReg::Register);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_defs::WhvRunVpExitReason as R;

    #[test]
    fn caller_modes_follow_the_legal_hypercall_environments() {
        // TLFS "Legal Hypercall Environments": protected mode at CPL 0 only.
        let mut regs = kvm_regs::default();
        let mut sregs = kvm_sregs::default();
        assert_eq!(
            CallerMode::of(&regs, &sregs),
            CallerMode::Illegal,
            "real mode"
        );
        sregs.cr0 = CR0_PE;
        assert_eq!(CallerMode::of(&regs, &sregs), CallerMode::Protected);
        regs.rflags = RFLAGS_VM;
        assert_eq!(CallerMode::of(&regs, &sregs), CallerMode::Illegal, "v8086");
        regs.rflags = 0;
        sregs.efer = EFER_LMA;
        assert_eq!(
            CallerMode::of(&regs, &sregs),
            CallerMode::Protected,
            "compatibility mode"
        );
        sregs.cs.l = 1;
        assert_eq!(CallerMode::of(&regs, &sregs), CallerMode::Long);
        sregs.ss.dpl = 1;
        assert_eq!(CallerMode::of(&regs, &sregs), CallerMode::Illegal, "CPL 1");
        assert_eq!(CallerMode::Illegal.hypercall(&regs), None);
        let mut r = kvm_regs {
            rax: 7,
            rdx: 9,
            ..Default::default()
        };
        CallerMode::Illegal.write_result(&mut r, u64::MAX);
        assert_eq!((r.rax, r.rdx), (7, 9));
        CallerMode::Protected.write_result(&mut r, 0x0000_0003_0000_0011);
        assert_eq!((r.rax, r.rdx), (0x11, 3));
        CallerMode::Long.write_result(&mut r, 0x0000_0003_0000_0011);
        assert_eq!((r.rax, r.rdx), (0x0000_0003_0000_0011, 3));
        assert_eq!(Access::Read(&mut [0u8; 2]).len(), 2);
        let regs = kvm_regs {
            rcx: 0x99,
            rdx: 0x1000,
            r8: 0x2000,
            rax: 0x46,
            ..Default::default()
        };
        assert_eq!(
            CallerMode::Long.hypercall(&regs),
            Some(HypercallExit::from_regs(&regs))
        );
        assert_eq!(
            CallerMode::Protected.hypercall(&regs),
            Some(HypercallExit::from_regs_x86(&regs))
        );
    }

    #[test]
    fn every_exit_has_its_whv_reason() {
        // shared/seeds 004: WHV_RUN_VP_EXIT_REASON.
        let (mut rd, mut m, mut e, mut ret) = ([0u8; 4], 0u64, 0u8, 0u64);
        let cases: Vec<(VpExit<'_>, Option<R>)> = vec![
            (
                VpExit::MemoryAccess {
                    gpa: 0,
                    access: Access::Read(&mut rd),
                },
                Some(R::MEMORY_ACCESS),
            ),
            (
                VpExit::MemoryFault {
                    gpa: 0,
                    size: 4096,
                    flags: 0,
                },
                Some(R::MEMORY_ACCESS),
            ),
            (
                VpExit::IoPortAccess {
                    port: 0x3F8,
                    access: Access::Write(&[1]),
                },
                Some(R::X64_IO_PORT_ACCESS),
            ),
            (
                VpExit::MsrAccess(MsrAccess {
                    index: 0x10,
                    reason: MsrExitReason::Unknown,
                    written: None,
                    read: Some(&mut m),
                    error: &mut e,
                }),
                Some(R::X64_MSR_ACCESS),
            ),
            (VpExit::Halt, Some(R::X64_HALT)),
            (VpExit::InterruptWindow, Some(R::X64_INTERRUPT_WINDOW)),
            (VpExit::ApicEoi { vector: 0x30 }, Some(R::X64_APIC_EOI)),
            (
                VpExit::UnrecoverableException,
                Some(R::UNRECOVERABLE_EXCEPTION),
            ),
            (
                VpExit::InvalidVpRegisterValue {
                    hardware_reason: 0,
                    cpu: 0,
                },
                Some(R::INVALID_VP_REGISTER_VALUE),
            ),
            (VpExit::Canceled, Some(R::CANCELED)),
            (VpExit::Exception, Some(R::EXCEPTION)),
            (VpExit::Debug(Default::default()), Some(R::EXCEPTION)),
            (
                VpExit::KvmHypercall {
                    nr: 12,
                    args: [0; 6],
                    ret: &mut ret,
                    longmode: true,
                },
                None,
            ),
            (VpExit::Nmi, None),
            (VpExit::Hyperv, None),
            (VpExit::SystemEvent { kind: 1, data: &[] }, None),
            (VpExit::InternalError, None),
            (VpExit::Other { reason: 0 }, None),
            (VpExit::RunFailed { errno: 22 }, None),
        ];
        for (exit, want) in &cases {
            assert_eq!(exit.whv_exit_reason(), *want, "{exit:?}");
        }
        // Every variant has a name of its own, the variant's.
        let mut names: Vec<&str> = cases.iter().map(|(e, _)| e.name()).collect();
        assert!(format!("{:?}", cases[0].0).starts_with(names[0]));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len());
    }
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod abi_tests {
    use super::*;

    #[test]
    fn hypercall_registers_of_64_and_32_bit_callers() {
        // TLFS "Hypercall Inputs": RCX, RDX, R8 for x64; EDX:EAX, EBX:ECX, EDI:ESI
        // for x86 (upper halves of the 64-bit registers ignored).
        let regs = kvm_regs {
            rax: 0xFFFF_FFFF_0000_0099,
            rbx: 0xAAAA_AAAA_0000_0001,
            rcx: 0x1_0000_0046,
            rdx: 0x2,
            rsi: 0x5000,
            rdi: 0x3,
            r8: 0x6000,
            rip: 0x1000,
            ..Default::default()
        };
        let x64 = HypercallExit::from_regs(&regs);
        assert_eq!(
            (x64.control.0, x64.rdx, x64.r8, x64.rip),
            (0x1_0000_0046, 0x2, 0x6000, 0x1000)
        );
        let x86 = HypercallExit::from_regs_x86(&regs);
        assert_eq!(x86.control.0, 0x2_0000_0099);
        assert_eq!(x86.rdx, 0x1_0000_0046 & 0xFFFF_FFFF | (1 << 32));
        assert_eq!(x86.r8, 0x3_0000_5000);
    }
}
