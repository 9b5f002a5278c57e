//! HV_INITIAL_VP_CONTEXT to KVM state.

use hv_defs::{HvError, InitialVpContext};
use kvm_bindings::{kvm_regs, kvm_sregs};

use crate::access::{AccessError, VcpuRegisters};
use crate::location::{msr, segment_to_kvm, table_to_kvm, Control};
use crate::validate::{check_control, check_segment, check_table, validate, RegisterFault};
use crate::HvRegisterName as N;

/// The KVM state an [`InitialVpContext`] denotes.
#[derive(Clone, Debug, PartialEq)]
pub struct KvmVpContext {
    /// General-purpose registers: RIP, RSP and RFLAGS from the context, the rest zero.
    pub regs: kvm_regs,
    /// Special registers: the context's segments, tables, CR0/CR3/CR4 and EFER on
    /// top of the vCPU's other sregs fields (CR2, CR8, APIC base, pending
    /// interrupts), which the context does not carry.
    pub sregs: kvm_sregs,
    /// IA32_PAT.
    pub pat: u64,
}

const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;

fn fault(name: N, bad: bool, why: &'static str) -> Result<(), RegisterFault> {
    if bad {
        Err(RegisterFault::Inconsistent { name, why })
    } else {
        Ok(())
    }
}

/// Validates `ctx` and converts it to KVM state, on top of `base` (the vCPU's
/// current special registers).
///
/// Every field is checked as HvSetVpRegisters would check it, and the whole as a
/// processor would on entry: long mode (EFER.LME with CR0.PG) needs CR4.PAE and
/// EFER.LMA, EFER.LMA needs both, and a 64-bit CS needs long mode. A failure is a
/// [`RegisterFault`], whose HV_STATUS for StartVirtualProcessor is
/// `HV_STATUS_INVALID_REGISTER_VALUE` ([`context_status`]).
///
/// The context is destructured exhaustively: a new field breaks the build here
/// until it is handled.
pub fn context_to_kvm(
    ctx: &InitialVpContext,
    base: &kvm_sregs,
) -> Result<KvmVpContext, RegisterFault> {
    let InitialVpContext {
        rip,
        rsp,
        rflags,
        cs,
        ds,
        es,
        fs,
        gs,
        ss,
        tr,
        ldtr,
        idtr,
        gdtr,
        efer,
        cr0,
        cr3,
        cr4,
        msr_cr_pat,
    } = *ctx;

    validate(N::RIP, rip.into())?;
    validate(N::RFLAGS, rflags.into())?;
    for (name, seg) in [
        (N::CS, &cs),
        (N::DS, &ds),
        (N::ES, &es),
        (N::FS, &fs),
        (N::GS, &gs),
        (N::SS, &ss),
        (N::TR, &tr),
        (N::LDTR, &ldtr),
    ] {
        check_segment(name, seg)?;
    }
    check_table(N::IDTR, &idtr)?;
    check_table(N::GDTR, &gdtr)?;
    check_control(N::EFER, Control::Efer, efer)?;
    check_control(N::CR0, Control::Cr0, cr0)?;
    check_control(N::CR3, Control::Cr3, cr3)?;
    check_control(N::CR4, Control::Cr4, cr4)?;
    validate(N::PAT, msr_cr_pat.into())?;

    let long_mode = efer & EFER_LME != 0 && cr0 & CR0_PG != 0;
    fault(
        N::CR4,
        long_mode && cr4 & CR4_PAE == 0,
        "long mode without CR4.PAE",
    )?;
    fault(
        N::EFER,
        long_mode != (efer & EFER_LMA != 0),
        "EFER.LMA disagrees with LME and PG",
    )?;
    fault(
        N::CS,
        cs.attributes.long() && !long_mode,
        "64-bit CS outside long mode",
    )?;

    let regs = kvm_regs {
        rip,
        rsp,
        rflags,
        ..Default::default()
    };
    let mut sregs = *base;
    sregs.cs = segment_to_kvm(cs);
    sregs.ds = segment_to_kvm(ds);
    sregs.es = segment_to_kvm(es);
    sregs.fs = segment_to_kvm(fs);
    sregs.gs = segment_to_kvm(gs);
    sregs.ss = segment_to_kvm(ss);
    sregs.tr = segment_to_kvm(tr);
    sregs.ldt = segment_to_kvm(ldtr);
    sregs.idt = table_to_kvm(idtr);
    sregs.gdt = table_to_kvm(gdtr);
    sregs.efer = efer;
    sregs.cr0 = cr0;
    sregs.cr3 = cr3;
    sregs.cr4 = cr4;
    Ok(KvmVpContext {
        regs,
        sregs,
        pat: msr_cr_pat,
    })
}

/// The registers an HV_INITIAL_VP_CONTEXT sets, by HV name, in an order a batch
/// write ([`crate::set_registers`]) accepts: what a TLFS parent writes with
/// HvSetVpRegisters to start a boot processor the way StartVirtualProcessor starts
/// an application processor. Destructured exhaustively, like [`context_to_kvm`].
pub fn context_registers(ctx: &InitialVpContext) -> Vec<(N, hv_defs::HvRegisterValue)> {
    let InitialVpContext {
        rip,
        rsp,
        rflags,
        cs,
        ds,
        es,
        fs,
        gs,
        ss,
        tr,
        ldtr,
        idtr,
        gdtr,
        efer,
        cr0,
        cr3,
        cr4,
        msr_cr_pat,
    } = *ctx;
    vec![
        (N::CR0, cr0.into()),
        (N::CR3, cr3.into()),
        (N::CR4, cr4.into()),
        (N::EFER, efer.into()),
        (N::CS, cs.into()),
        (N::DS, ds.into()),
        (N::ES, es.into()),
        (N::FS, fs.into()),
        (N::GS, gs.into()),
        (N::SS, ss.into()),
        (N::TR, tr.into()),
        (N::LDTR, ldtr.into()),
        (N::GDTR, gdtr.into()),
        (N::IDTR, idtr.into()),
        (N::PAT, msr_cr_pat.into()),
        (N::RIP, rip.into()),
        (N::RSP, rsp.into()),
        (N::RFLAGS, rflags.into()),
    ]
}

/// The HV_STATUS StartVirtualProcessor and EnableVpVtl return for an invalid
/// context: `HV_STATUS_INVALID_REGISTER_VALUE`.
pub const fn context_status(_: RegisterFault) -> HvError {
    HvError::INVALID_REGISTER_VALUE
}

/// Validates `ctx` and loads it into `vcpu`, as StartVirtualProcessor does:
/// special registers, then PAT, then the general-purpose registers, and then
/// the vCPU is made runnable (`KVM_MP_STATE_RUNNABLE`): with KVM's in-kernel
/// irqchip an application processor is otherwise `UNINITIALIZED`, waiting for
/// an INIT/SIPI, and would never run the context. A refused context leaves the
/// vCPU untouched.
pub fn load_context<V: VcpuRegisters>(
    vcpu: &V,
    ctx: &InitialVpContext,
) -> Result<(), AccessError<V::Error>> {
    let base = vcpu.get_sregs().map_err(AccessError::Backend)?;
    let k = context_to_kvm(ctx, &base).map_err(AccessError::Fault)?;
    vcpu.set_sregs(&k.sregs).map_err(AccessError::Backend)?;
    vcpu.set_msr(msr::PAT, k.pat)
        .map_err(AccessError::Backend)?;
    vcpu.set_regs(&k.regs).map_err(AccessError::Backend)?;
    vcpu.set_mp_state(crate::mp_state::RUNNABLE)
        .map_err(AccessError::Backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_defs::{SegmentAttributes, SegmentRegister, TableRegister};

    /// The context Linux's VTL code passes for an AP (guest-boot.md §10.3).
    pub(crate) fn linux_ap_context() -> InitialVpContext {
        let flat = |sel, attr| SegmentRegister {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: sel,
            attributes: SegmentAttributes(attr),
        };
        InitialVpContext {
            rip: 0xFFFF_FFFF_8101_2A2D,
            rsp: 0xFFFF_8880_0019_BF58,
            rflags: 0x2,
            cs: flat(0x10, 0xA09B),
            ss: flat(0x18, 0xC093),
            tr: SegmentRegister {
                base: 0xFFFF_FE00_0000_3000,
                limit: 0x4087,
                selector: 0x40,
                attributes: SegmentAttributes(0x8B),
            },
            ldtr: SegmentRegister {
                selector: 0x50,
                attributes: SegmentAttributes(0x82),
                ..Default::default()
            },
            idtr: TableRegister {
                pad: [0; 3],
                limit: 0xFFF,
                base: 0xFFFF_FE00_0000_0000,
            },
            gdtr: TableRegister {
                pad: [0; 3],
                limit: 0x7F,
                base: 0xFFFF_FE00_0000_1000,
            },
            efer: 0xD01,
            cr0: 0x8005_0033,
            cr3: 0x161_4000,
            cr4: 0x10_06B0,
            msr_cr_pat: 0x0007_0406_0007_0406,
            ..Default::default()
        }
    }

    #[test]
    fn linux_context_converts() {
        let base = kvm_sregs {
            cr8: 3,
            apic_base: 0xFEE0_0900,
            ..Default::default()
        };
        let k = context_to_kvm(&linux_ap_context(), &base).unwrap();
        assert_eq!(k.regs.rip, 0xFFFF_FFFF_8101_2A2D);
        assert_eq!(k.regs.rsp, 0xFFFF_8880_0019_BF58);
        assert_eq!(k.regs.rflags, 2);
        assert_eq!(k.regs.rax, 0);
        assert_eq!(
            (k.sregs.cs.selector, k.sregs.cs.l, k.sregs.cs.db),
            (0x10, 1, 0)
        );
        assert_eq!((k.sregs.ss.selector, k.sregs.ss.db), (0x18, 1));
        assert_eq!((k.sregs.ds.unusable, k.sregs.ds.present), (1, 0));
        assert_eq!(
            (k.sregs.tr.type_, k.sregs.tr.base),
            (0xB, 0xFFFF_FE00_0000_3000)
        );
        assert_eq!(k.sregs.ldt.selector, 0x50);
        assert_eq!((k.sregs.gdt.limit, k.sregs.idt.limit), (0x7F, 0xFFF));
        assert_eq!(
            (k.sregs.cr0, k.sregs.cr3, k.sregs.cr4, k.sregs.efer),
            (0x8005_0033, 0x161_4000, 0x10_06B0, 0xD01)
        );
        assert_eq!(
            (k.sregs.cr8, k.sregs.apic_base),
            (3, 0xFEE0_0900),
            "kept from base"
        );
        assert_eq!(k.pat, 0x0007_0406_0007_0406);
    }

    #[test]
    fn invalid_contexts_are_refused() {
        let good = linux_ap_context();
        let base = kvm_sregs::default();
        let bad: Vec<InitialVpContext> = vec![
            InitialVpContext {
                rip: 0x0000_8000_0000_0000,
                ..good
            },
            InitialVpContext { rflags: 0, ..good },
            InitialVpContext {
                cr4: 0x10_0690,
                ..good
            },
            InitialVpContext {
                efer: 0x901,
                ..good
            },
            InitialVpContext {
                efer: 0x401,
                cr0: 0x11,
                cs: SegmentRegister {
                    attributes: SegmentAttributes(0xC09B),
                    ..good.cs
                },
                ..good
            },
            InitialVpContext {
                cr0: 0x11,
                efer: 0x101,
                ..good
            },
            InitialVpContext {
                msr_cr_pat: 2,
                ..good
            },
            InitialVpContext {
                cr3: 1 << 63,
                ..good
            },
            InitialVpContext {
                cr0: 1 << 40,
                ..good
            },
            InitialVpContext {
                gdtr: TableRegister {
                    base: 1 << 60,
                    ..good.gdtr
                },
                ..good
            },
            InitialVpContext {
                tr: SegmentRegister {
                    attributes: SegmentAttributes(0x0F8B),
                    ..good.tr
                },
                ..good
            },
        ];
        for (i, c) in bad.iter().enumerate() {
            let e = context_to_kvm(c, &base).unwrap_err();
            assert_eq!(
                context_status(e),
                HvError::INVALID_REGISTER_VALUE,
                "case {i}: {e}"
            );
        }
    }
}
