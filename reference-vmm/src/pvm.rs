//! Hosts whose KVM runs guest kernel code in an instruction emulator (PVM): what is
//! detected, what the VMM handles generically, and what the guest must avoid.

use hv_partition::{InternalError, Vp};
use vm_memory::{Bytes, GuestAddress};

/// Kernel command-line options that keep a guest kernel off instructions PVM's
/// emulator cannot execute (XRSTOR, POPCNT, CLAC, CMPXCHG16B, ...). KVM_SET_CPUID2
/// cannot hide those features on such a host, so the guest is told instead.
pub const PVM_CMDLINE: &str =
    "noxsave clearcpuid=popcnt,smap,fsgsbase,invpcid,pcid,rdseed,rdrand,clflushopt,cx16";

/// KVM paravirtual features (CPUID 0x40000001 EAX) that work by hypercall
/// (PV_UNHALT bit 7, PV_SEND_IPI bit 11, PV_SCHED_YIELD bit 13). Under PVM, KVM
/// rewrites the guest's VMMCALL in place, which faults once the kernel text is
/// read-only; hidden on such a host only. With `hyperv` the partition presents
/// the Hyper-V leaves instead of KVM's, and 0x40000001 is the interface
/// signature ("Hv#1"): nothing of KVM's is there to hide.
pub fn pvm_cpuid_masks(hyperv: bool) -> Vec<hv_partition::CpuidMask> {
    if hyperv {
        return vec![];
    }
    vec![hv_partition::CpuidMask {
        function: 0x4000_0001,
        index: 0,
        clear: [(1 << 7) | (1 << 11) | (1 << 13), 0, 0, 0],
    }]
}

/// Whether this host's KVM is PVM (the kvm_pvm module is loaded).
pub fn is_pvm_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// What became of a KVM internal error.
pub enum Handled {
    /// The instruction was completed; the guest continues.
    Resumed(&'static str),
    /// The guest cannot continue; the line says why.
    Fatal(String),
}

/// Handles a KVM internal error on `vp` where that can be done generically:
/// an `int3` the emulator could not deliver becomes RIP + 1 and an injected #BP
/// (the kernel's text-poke breakpoints rely on it), and an `fwait` with no pending
/// x87 exception is skipped. Anything else is fatal, with the RIP and instruction
/// bytes.
pub fn handle_internal_error(vp: &mut Vp) -> Handled {
    let mem = vp.partition().memory().clone();
    let vcpu = vp.vcpu_mut();
    let ie = InternalError::from_run(vcpu.get_kvm_run());
    let mut regs = match vcpu.get_regs() {
        Ok(r) => r,
        Err(e) => return Handled::Fatal(format!("KVM internal error {} ({e})", ie.suberror)),
    };
    let bytes = ie.instruction_bytes.clone().unwrap_or_else(|| {
        // Not reported by this KVM: read them through the guest's page tables.
        let mut b = [0u8; 15];
        vcpu.translate_gva(regs.rip)
            .ok()
            .filter(|t| t.valid != 0)
            .and_then(|t| {
                mem.read_slice(&mut b, GuestAddress(t.physical_address))
                    .ok()
            })
            .map_or_else(Vec::new, |()| b.to_vec())
    });
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let rip = regs.rip;
    let fatal = |what: &str| {
        Handled::Fatal(format!(
            "{what} at RIP {:#x} (KVM internal error {}), instruction bytes [{}]",
            rip,
            ie.suberror,
            hex.join(" ")
        ))
    };
    if ie.suberror != InternalError::EMULATION {
        return fatal("unhandleable KVM internal error");
    }
    match bytes.first() {
        Some(0xCC) => {
            regs.rip += 1;
            let mut ev = match vcpu.get_vcpu_events() {
                Ok(ev) => ev,
                Err(_) => return fatal("int3 emulation failure"),
            };
            ev.exception.injected = 1;
            ev.exception.nr = 3;
            ev.exception.has_error_code = 0;
            if vcpu.set_regs(&regs).is_err() || vcpu.set_vcpu_events(&ev).is_err() {
                return fatal("int3 emulation failure");
            }
            Handled::Resumed("int3")
        }
        Some(0x9B) => {
            regs.rip += 1;
            if vcpu.set_regs(&regs).is_err() {
                return fatal("fwait emulation failure");
            }
            Handled::Resumed("fwait")
        }
        _ => fatal("unhandleable emulation failure"),
    }
}
