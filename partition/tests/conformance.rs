//! TLFS conformance of the guest interface, played by real guests on `/dev/kvm`.
//!
//! Each case names the TLFS section it follows (MicrosoftDocs
//! Virtualization-Documentation, `tlfs/`): "Hypercall Interface" (legal
//! environments, register mapping, common status codes, establishing the hypercall
//! interface), "GPA Overlay Pages", "HvCallSetVpRegisters" and
//! "HvCallStartVirtualProcessor". Where the TLFS leaves the answer open, the
//! answer is the one `hv_partition::choices` documents.

mod common;

use std::sync::mpsc::channel;
use std::sync::Arc;

use common::*;
use hv_defs::{HvError, InitialVpContext, SegmentAttributes, SegmentRegister, TableRegister, Vtl};
use hv_partition::{HyperVConfig, Partition, PartitionConfig, PartitionError};
use vm_memory::{Bytes, GuestAddress};

const GUEST_OS_ID: u64 = 0x8100_0000_0000_0000;
const MSR_GUEST_OS_ID: u32 = 0x4000_0000;
const MSR_HYPERCALL: u32 = 0x4000_0001;
/// The IDT, its handlers, and the port a handler reports its vector on.
const IDT: u64 = 0xC000;
const HANDLERS: u64 = 0xD000;
const EXC: u16 = 0x3E;
/// Pages the tests fill with a pattern, to see what an overlay covers.
const PAGE_A: u64 = 0x5000;
const PAGE_B: u64 = 0x6000;
/// A GPA in the hole above the 4 MiB of RAM (identity mapped by the test tables).
const HOLE: u64 = 0x80_0000;
/// HvCallGetPartitionId: a simple call with an 8-byte output.
const GET_PARTITION_ID: u64 = 0x46;

/// The bytes the hypercall page starts with, as a guest's 32-bit load sees them:
/// `out %eax, $0xE0; ret; int3`.
const PAGE_WORD: u32 = u32::from_le_bytes([0xE7, 0xE0, 0xC3, 0xCC]);

fn fill(p: &Partition, gpa: u64, byte: u8) {
    put(p, gpa, &[byte; 4096]);
}

fn ram_page(p: &Partition, gpa: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    p.memory().read_slice(&mut b, GuestAddress(gpa)).unwrap();
    b
}

/// An IDT whose #UD (6) and #GP (13) handlers report their vector on [`EXC`]
/// and then DONE.
fn install_idt(p: &Partition) {
    for v in [6u64, 13] {
        let handler = HANDLERS + v * 32;
        let code = Asm::default()
            .mov_rax(v)
            .out(EXC as u8)
            .out(DONE as u8)
            .spin()
            .0;
        put(p, handler, &code);
        let mut gate = [0u8; 16];
        gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
        gate[2..4].copy_from_slice(&0x10u16.to_le_bytes());
        gate[5] = 0x8E;
        gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
        gate[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
        put(p, IDT + 16 * v, &gate);
    }
}

fn with_idt(mut ctx: InitialVpContext) -> InitialVpContext {
    ctx.idtr = TableRegister {
        pad: [0; 3],
        limit: 16 * 32 - 1,
        base: IDT,
    };
    ctx
}

/// Runs VP 0 alone from `ctx` with `code` at [`CODE`]; returns its port writes
/// up to DONE.
fn run_bsp(p: &Arc<Partition>, ctx: InitialVpContext, code: &[u8]) -> Vec<(u16, u32)> {
    put(p, CODE, code);
    let mut v = p.create_vp(vp(0)).unwrap();
    v.set_registers(&hv_regs::context_registers(&ctx)).unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();
    let (tx, rx) = channel();
    let t = std::thread::spawn(move || run_reporting(v, tx));
    let out: Vec<(u16, u32)> = rx
        .iter()
        .take_while(|r| r.port != DONE)
        .map(|r| (r.port, r.value))
        .collect();
    t.join().unwrap();
    out
}

fn bsp64(p: &Arc<Partition>, code: Asm) -> Vec<(u16, u32)> {
    install_idt(p);
    let code = code.out(DONE as u8).spin().0;
    run_bsp(p, with_idt(ctx64(CODE, stack(0))), &code)
}

fn hyperv() -> Arc<Partition> {
    partition(2, Some(Vtl::VTL0))
}

/// A hypercall through the page at `page` (not the default one).
fn hypercall_at(a: Asm, page: u64, control: u64, input: u64, output: u64, port: u8) -> Asm {
    a.mov_rcx(control)
        .mov_rdx(input)
        .mov_r8(output)
        .mov_rax(page)
        .call_rax()
        .out(port)
}

trait More {
    fn store_eax(self, addr: u64) -> Self;
    fn mov_rax_rbx(self) -> Self;
    fn mov_rax_rsi(self) -> Self;
    fn mov_rsi(self, v: u64) -> Self;
}

impl More for Asm {
    /// mov [addr], eax (absolute 64-bit address).
    fn store_eax(mut self, addr: u64) -> Self {
        self.0.push(0xA3);
        self.0.extend(addr.to_le_bytes());
        self
    }
    fn mov_rax_rbx(mut self) -> Self {
        self.0.extend([0x48, 0x89, 0xD8]);
        self
    }
    fn mov_rax_rsi(mut self) -> Self {
        self.0.extend([0x48, 0x89, 0xF0]);
        self
    }
    fn mov_rsi(mut self, v: u64) -> Self {
        self.0.extend([0x48, 0xBE]);
        self.0.extend(v.to_le_bytes());
        self
    }
}

/// "Establishing the Hypercall Interface" and "GPA Overlay Pages": the page
/// covers RAM without destroying it, uncovers it when disabled or moved, and
/// works over a GPA with nothing beneath.
#[test]
fn the_hypercall_page_is_an_overlay_over_ram_and_holes() {
    let p = hyperv();
    fill(&p, PAGE_A, 0x5A);
    fill(&p, PAGE_B, 0x6B);
    let out = DATA;
    let code = Asm::default()
        .wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID)
        .wrmsr(MSR_HYPERCALL, PAGE_A | 1)
        .load_eax(PAGE_A)
        .out(0x30); // the overlay, not the RAM
    let code = hypercall_at(code, PAGE_A, GET_PARTITION_ID, 0, out, 0x31)
        .wrmsr(MSR_HYPERCALL, PAGE_B | 1) // moved
        .load_eax(PAGE_A)
        .out(0x32) // uncovered
        .load_eax(PAGE_B)
        .out(0x33);
    let code = hypercall_at(code, PAGE_B, GET_PARTITION_ID, 0, out, 0x34)
        .wrmsr(MSR_HYPERCALL, HOLE | 1) // over nothing
        .load_eax(PAGE_B)
        .out(0x35);
    let code = hypercall_at(code, HOLE, GET_PARTITION_ID, 0, out, 0x36)
        .load_eax(HOLE)
        .out(0x37)
        .wrmsr(MSR_HYPERCALL, HOLE) // disabled
        .rdmsr(MSR_HYPERCALL)
        .out(0x38);
    let reports = bsp64(&p, code);
    let pat = |b: u8| u32::from_le_bytes([b; 4]);
    let table: [(&str, u16, u32); 9] = [
        ("overlay visible over RAM", 0x30, PAGE_WORD),
        ("hypercall through it", 0x31, 0),
        ("moved: RAM below uncovered", 0x32, pat(0x5A)),
        ("moved: new page visible", 0x33, PAGE_WORD),
        ("hypercall through the moved page", 0x34, 0),
        ("moved to a hole: RAM uncovered", 0x35, pat(0x6B)),
        ("hypercall through a page over a hole", 0x36, 0),
        ("overlay visible over a hole", 0x37, PAGE_WORD),
        ("disabled: enable bit clear", 0x38, HOLE as u32),
    ];
    for (case, port, want) in table {
        assert!(
            reports.contains(&(port, want)),
            "{case}: want {want:#x} on {port:#x}; got {reports:x?}"
        );
    }
    assert_eq!(reports.len(), table.len(), "{reports:x?}");
    // The RAM the page covered is intact on the host side too.
    assert!(ram_page(&p, PAGE_A).iter().all(|&b| b == 0x5A));
    assert!(ram_page(&p, PAGE_B).iter().all(|&b| b == 0x6B));
    assert_eq!(p.hypercall_overlay(), None);
    let mut id = [0u8; 8];
    p.memory().read_slice(&mut id, GuestAddress(out)).unwrap();
    assert_eq!(u64::from_le_bytes(id), p.id().0);
}

/// "Establishing the Hypercall Interface": "Attempts to write to the hypercall
/// page will result in a protection (#GP) exception."
#[test]
fn a_write_to_the_hypercall_page_raises_gp() {
    let p = hyperv();
    fill(&p, PAGE_A, 0x5A);
    let code = Asm::default()
        .wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID)
        .wrmsr(MSR_HYPERCALL, PAGE_A | 1)
        .mov_rax(0xDEAD_BEEF)
        .store_eax(PAGE_A + 8)
        .out(0x30); // not reached
    assert_eq!(bsp64(&p, code), vec![(EXC, 13)]);
    assert!(ram_page(&p, PAGE_A).iter().all(|&b| b == 0x5A));
}

/// "Establishing the Hypercall Interface": the MSR's fields.
#[test]
fn the_hypercall_msr_follows_its_field_table() {
    let limit = hyperv().gpa_limit();
    // (case, code, expected reports)
    type Case = (&'static str, Asm, Vec<(u16, u32)>);
    let cases: Vec<Case> = vec![
        (
            "enable without a guest OS id: the enable bit stays zero",
            Asm::default()
                .wrmsr(MSR_HYPERCALL, PAGE_A | 1)
                .rdmsr(MSR_HYPERCALL)
                .out(0x30),
            vec![(0x30, PAGE_A as u32)],
        ),
        (
            "RsvdP bits 11:2 are kept, not refused",
            Asm::default()
                .wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID)
                .wrmsr(MSR_HYPERCALL, PAGE_A | 0x7FC | 1)
                .rdmsr(MSR_HYPERCALL)
                .out(0x30),
            vec![(0x30, PAGE_A as u32 | 0x7FD)],
        ),
        (
            "a GPFN beyond the GPA space is #GP",
            Asm::default()
                .wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID)
                .wrmsr(MSR_HYPERCALL, limit | 1)
                .out(0x30),
            vec![(EXC, 13)],
        ),
        (
            "locked: the same value again is accepted",
            Asm::default()
                .wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID)
                .wrmsr(MSR_HYPERCALL, PAGE_A | 3)
                .wrmsr(MSR_HYPERCALL, PAGE_A | 3)
                .rdmsr(MSR_HYPERCALL)
                .out(0x30),
            vec![(0x30, PAGE_A as u32 | 3)],
        ),
        (
            "locked: relocation is #GP (hv_partition::choices)",
            Asm::default()
                .wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID)
                .wrmsr(MSR_HYPERCALL, PAGE_A | 3)
                .wrmsr(MSR_HYPERCALL, PAGE_B | 1)
                .out(0x30),
            vec![(EXC, 13)],
        ),
        (
            "clearing the guest OS id disables the page",
            Asm::default()
                .wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID)
                .wrmsr(MSR_HYPERCALL, PAGE_A | 1)
                .wrmsr(MSR_GUEST_OS_ID, 0)
                .rdmsr(MSR_HYPERCALL)
                .out(0x30)
                .load_eax(PAGE_A)
                .out(0x31),
            vec![(0x30, PAGE_A as u32), (0x31, u32::from_le_bytes([0x5A; 4]))],
        ),
    ];
    for (case, code, want) in cases {
        let p = hyperv();
        fill(&p, PAGE_A, 0x5A);
        assert_eq!(bsp64(&p, code), want, "{case}");
    }
}

/// "Legal Hypercall Environments": only the hypercall page at CPL 0 in protected
/// mode is a hypercall. A port write anywhere else is plain port I/O for the VMM.
#[test]
fn the_trap_port_is_a_hypercall_only_from_the_page() {
    // Page enabled, guest OS id set, but the OUT is in ordinary code.
    let p = hyperv();
    let code = Asm::default()
        .wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID)
        .wrmsr(MSR_HYPERCALL, PAGE_A | 1)
        .mov_rcx(0x99)
        .mov_rax(0x1234)
        .out(0xE0)
        .out(0x30);
    assert_eq!(
        bsp64(&p, code),
        vec![(0xE0, 0x1234), (0x30, 0x1234)],
        "the VMM sees the port write and RAX is untouched"
    );
    // The page's code copied into RAM by a guest that never enabled the page.
    let p = hyperv();
    put(&p, PAGE_A, &[0xE7, 0xE0, 0xC3]);
    let code = Asm::default()
        .wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID)
        .mov_rcx(0x99)
        .mov_rax(PAGE_A)
        .call_rax()
        .out(0x30);
    assert_eq!(
        bsp64(&p, code),
        vec![(0xE0, PAGE_A as u32), (0x30, PAGE_A as u32)]
    );
    assert_eq!(p.stats().hypercall_count(hv_defs::HypercallCode(0x99)), 0);
}

/// "Legal Hypercall Environments": "hypercalls are not allowed in real mode ...
/// An attempt to invoke a hypercall within an illegal processor mode will
/// generate a #UD".
#[test]
fn the_hypercall_page_in_real_mode_raises_ud() {
    let p = hyperv();
    let seg16 = |attr| SegmentRegister {
        base: 0,
        limit: 0xFFFF,
        selector: 0,
        attributes: SegmentAttributes(attr),
    };
    let ctx = InitialVpContext {
        rip: 0x6000,
        rsp: 0x4F00,
        rflags: 2,
        cs: seg16(0x9B),
        ds: seg16(0x93),
        es: seg16(0x93),
        fs: seg16(0x93),
        gs: seg16(0x93),
        ss: seg16(0x93),
        tr: seg16(0x8B),
        ldtr: seg16(0x82),
        idtr: TableRegister {
            pad: [0; 3],
            limit: 0x3FF,
            base: 0,
        },
        gdtr: TableRegister::default(),
        efer: 0,
        cr0: 0x10,
        cr3: 0,
        cr4: 0,
        msr_cr_pat: 0x0007_0406_0007_0406,
    };
    // IVT entry 6 -> 0000:7000, where the handler reports 6 and ends.
    put(&p, 6 * 4, &[0x00, 0x70, 0x00, 0x00]);
    put(
        &p,
        0x7000,
        &[0xB0, 0x06, 0xE6, EXC as u8, 0xE6, DONE as u8, 0xEB, 0xFE],
    );
    let wrmsr16 = |msr: u32, v: u64| {
        let mut c = vec![0x66, 0xB9];
        c.extend(msr.to_le_bytes());
        c.extend([0x66, 0xB8]);
        c.extend((v as u32).to_le_bytes());
        c.extend([0x66, 0xBA]);
        c.extend(((v >> 32) as u32).to_le_bytes());
        c.extend([0x0F, 0x30]);
        c
    };
    let mut code = wrmsr16(MSR_GUEST_OS_ID, GUEST_OS_ID);
    code.extend(wrmsr16(MSR_HYPERCALL, PAGE_A | 1));
    // mov ax, 0x5000; call ax; out 0x30, al; out DONE, al
    code.extend([0xB8, 0x00, 0x50, 0xFF, 0xD0, 0xE6, 0x30, 0xE6, DONE as u8]);
    put(&p, 0x6000, &code);
    let mut v = p.create_vp(vp(0)).unwrap();
    v.set_registers(&hv_regs::context_registers(&ctx)).unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();
    let (tx, rx) = channel();
    let t = std::thread::spawn(move || run_reporting(v, tx));
    let out: Vec<(u16, u32)> = rx
        .iter()
        .take_while(|r| r.port != DONE)
        .map(|r| (r.port, r.value & 0xFF))
        .collect();
    t.join().unwrap();
    assert_eq!(out, vec![(EXC, 6)]);
}

/// "Hypercall Inputs" / "Hypercall Outputs", x86 column: a 32-bit caller passes
/// the control word in EDX:EAX, the input GPA in EBX:ECX, the output GPA in
/// EDI:ESI, and gets the result in EDX:EAX.
#[test]
fn a_32_bit_caller_uses_the_x86_register_mapping() {
    let p = hyperv();
    // A 32-bit code segment beside the test GDT's entries.
    let ctx = protected_mode(p.memory(), CODE, stack(0));
    let out = DATA;
    let call32 = |c: &mut Vec<u8>, control: u64, output: u64, port: u8| {
        let mov = |c: &mut Vec<u8>, op: u8, v: u32| {
            c.push(op);
            c.extend(v.to_le_bytes());
        };
        mov(c, 0xBA, (control >> 32) as u32); // edx
        mov(c, 0xB8, control as u32); // eax
        mov(c, 0xBB, 0); // ebx: input GPA high
        mov(c, 0xB9, 0); // ecx: input GPA low
        mov(c, 0xBF, (output >> 32) as u32); // edi
        mov(c, 0xBE, output as u32); // esi
        mov(c, 0xBD, PAGE_A as u32); // ebp = page
        c.extend([0xFF, 0xD5]); // call ebp
        c.extend([0xE7, port]); // out port, eax (status)
        c.extend([0x89, 0xD0, 0xE7, port + 1]); // mov eax, edx; out (reps completed)
    };
    // Enable the page (the wrmsr encoding is the same in 32-bit mode).
    let mut code = Asm::default()
        .wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID)
        .wrmsr(MSR_HYPERCALL, PAGE_A | 1)
        .0;
    call32(&mut code, GET_PARTITION_ID, out, 0x30);
    call32(&mut code, GET_PARTITION_ID, out + 4, 0x32);
    // A rep count on a simple call: INVALID_HYPERCALL_INPUT (3).
    call32(&mut code, GET_PARTITION_ID | (1 << 32), out, 0x34);
    code.extend([0xE7, DONE as u8, 0xEB, 0xFE]);
    let reports = run_bsp(&p, ctx, &code);
    assert_eq!(
        reports,
        vec![
            (0x30, 0),
            (0x31, 0),
            (0x32, HvError::INVALID_ALIGNMENT.status().0 as u32),
            (0x33, 0),
            (0x34, HvError::INVALID_HYPERCALL_INPUT.status().0 as u32),
            (0x35, 0),
        ]
    );
    let mut id = [0u8; 8];
    p.memory().read_slice(&mut id, GuestAddress(out)).unwrap();
    assert_eq!(u64::from_le_bytes(id), p.id().0);
}

/// "HvCallSetVpRegisters": the caller's own general-purpose registers keep the
/// values the call wrote once the hypercall returns.
#[test]
fn set_vp_registers_on_the_callers_own_gprs_sticks() {
    let p = hyperv();
    // Header (partition SELF, VP SELF, input VTL current) and two elements:
    // RBX (0x00020003) and RSI (0x00020006).
    let mut input = vec![];
    input.extend(hv_defs::PartitionId::SELF.0.to_le_bytes());
    input.extend(hv_defs::VpIndex::SELF.0.to_le_bytes());
    input.extend([0u8; 4]);
    for (name, value) in [
        (0x0002_0003u32, 0x1122_3344_5566_7788u64),
        (0x0002_0006, 0x99AA_BBCC_DDEE_FF00),
    ] {
        input.extend(name.to_le_bytes());
        input.extend([0u8; 12]);
        input.extend(value.to_le_bytes());
        input.extend(0u64.to_le_bytes());
    }
    put(&p, DATA, &input);
    let code = Asm::default()
        .wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID)
        .wrmsr(MSR_HYPERCALL, HYPERCALL_PAGE | 1)
        .mov_rbx(1)
        .mov_rsi(2)
        .hypercall(0x51 | (2 << 32), DATA, 0, 0x30)
        .mov_rax_rbx()
        .out(0x32)
        .shr_rax_32()
        .out(0x33)
        .mov_rax_rsi()
        .out(0x34)
        .shr_rax_32()
        .out(0x35);
    assert_eq!(
        bsp64(&p, code),
        vec![
            (0x30, 0),
            (0x31, 2),
            (0x32, 0x5566_7788),
            (0x33, 0x1122_3344),
            (0x34, 0xDDEE_FF00),
            (0x35, 0x99AA_BBCC),
        ]
    );
}

/// "HvCallStartVirtualProcessor": a context the processor cannot take is
/// HV_STATUS_INVALID_REGISTER_VALUE, and the target stays unstarted.
#[test]
fn start_refuses_a_context_kvm_cannot_load_and_leaves_the_target_unstarted() {
    let p = hyperv();
    let _bsp = p.create_vp(vp(0)).unwrap();
    let _ap = p.create_vp(vp(1)).unwrap();
    let good = ctx64(AP_CODE, stack(1));
    let cases: [(&str, InitialVpContext); 2] = [
        (
            "CR4.SMXE, which no KVM CPUID offers",
            InitialVpContext {
                cr4: good.cr4 | (1 << 14),
                ..good
            },
        ),
        (
            "CR3 at the guest's MAXPHYADDR",
            InitialVpContext {
                cr3: p.gpa_limit(),
                ..good
            },
        ),
    ];
    for (case, ctx) in cases {
        assert_eq!(
            p.start_virtual_processor(vp(1), Vtl::VTL0, &ctx)
                .map_err(|e| e.status()),
            Err(HvError::INVALID_REGISTER_VALUE),
            "{case}"
        );
        assert!(!p.vp_state(vp(1)).unwrap().started(), "{case}");
    }
    p.start_virtual_processor(vp(1), Vtl::VTL0, &good).unwrap();
    assert!(p.vp_state(vp(1)).unwrap().started());
}

/// The same, once KVM has accepted a context with the same system state (the
/// partition then skips KVM's check): the VP model's checks still run on every
/// start, and a context that differs where KVM's verdict depends is checked
/// again.
#[test]
fn start_checks_hold_after_an_accepted_context() {
    let p = partition(4, Some(Vtl::VTL0));
    let _vps: Vec<_> = (0..4).map(|i| p.create_vp(vp(i)).unwrap()).collect();
    let good = ctx64(AP_CODE, stack(1));
    // Checked ahead of the starts, as a VMM's mailbox context would be.
    p.prepare_starts(&[ctx64(0, 0)]);
    p.start_virtual_processor(vp(1), Vtl::VTL0, &good).unwrap();
    let non_canonical = InitialVpContext {
        rip: 0x0000_8000_0000_0000,
        ..good
    };
    let smxe = InitialVpContext {
        cr4: good.cr4 | (1 << 14),
        ..good
    };
    for (case, ctx) in [("non-canonical RIP", non_canonical), ("CR4.SMXE", smxe)] {
        assert_eq!(
            p.start_virtual_processor(vp(2), Vtl::VTL0, &ctx)
                .map_err(|e| e.status()),
            Err(HvError::INVALID_REGISTER_VALUE),
            "{case}"
        );
        assert!(!p.vp_state(vp(2)).unwrap().started(), "{case}");
    }
    // Another stack and GDT base: the same system state, accepted.
    let mut other = ctx64(AP_CODE + 0x10, stack(2));
    other.gdtr.base += 0x100;
    p.start_virtual_processor(vp(2), Vtl::VTL0, &other).unwrap();
    assert!(p.vp_state(vp(2)).unwrap().started());
}

/// "Virtual Secure Mode": an x64 partition has VTLs 0 to 2.
#[test]
fn a_boot_vtl_above_2_is_refused() {
    for vtl in [3u8, 16, 18] {
        let r = Partition::new(PartitionConfig {
            max_vps: 1,
            memory: vec![(0, RAM)],
            hyperv: Some(HyperVConfig::booting_in(Vtl(vtl))),
            cpuid_masks: vec![],
        });
        assert!(
            matches!(r, Err(PartitionError::BootVtl(v)) if v == vtl),
            "VTL {vtl}"
        );
    }
}
