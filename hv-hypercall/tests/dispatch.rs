//! The dispatcher played by a guest, without KVM: guest memory is a vm-memory
//! mmap filled with a pattern, the VMM is a recorder that answers as told. Every
//! case checks the result value, what the handler was given, and that nothing
//! outside the output block it names changed (TLFS Hypercall Interface:
//! "Hypercall Inputs", "Hypercall Outputs", "Common Hypercall Status Codes",
//! and each call's own page).

use hv_defs::{
    HvError, HvInputVtl, HvRegisterName, HvRegisterValue, HvResult, HvStatus, HypercallCode,
    HypercallControl, HypercallResult, InitialVpContext, PartitionId, VpIndex, Vtl,
};
use hv_hypercall::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x10000;
const FILL: u8 = 0xA5;
const IN: u64 = 0x3000;
const OUT: u64 = 0x5000;

/// What the handler saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    PartitionId,
    Spin(u64),
    GetRegs(PartitionId, VpIndex, HvInputVtl, Vec<HvRegisterName>),
    SetRegs(
        PartitionId,
        VpIndex,
        HvInputVtl,
        Vec<(HvRegisterName, HvRegisterValue)>,
    ),
    Enable(PartitionId, VpIndex, Vtl, u64),
    EnablePartition(PartitionId, Vtl, u8),
    Start(PartitionId, VpIndex, Vtl, u64),
    ApicIds(PartitionId, HvInputVtl, Vec<u32>),
    Protect(PartitionId, u32, HvInputVtl, Vec<u64>),
}

/// A VMM that serves every call, records it, and fails where told.
#[derive(Default)]
struct Recorder {
    seen: Vec<Seen>,
    /// For rep calls: fail the rep at this index (of those given) with this status.
    fail_rep: Option<(usize, HvError)>,
    /// For simple calls: fail with this status.
    fail: Option<HvError>,
    serve: bool,
}

impl Recorder {
    fn serving() -> Self {
        Recorder {
            serve: true,
            ..Default::default()
        }
    }
    fn simple(&self) -> HvResult<()> {
        self.fail.map_or(Ok(()), Err)
    }
    fn reps(&self, n: usize) -> HvRepResult {
        match self.fail_rep {
            Some((i, e)) if i < n => Err((e, i)),
            _ => Ok(()),
        }
    }
}

impl GetPartitionId for Recorder {
    fn get_partition_id(&mut self) -> HvResult<PartitionId> {
        self.seen.push(Seen::PartitionId);
        self.simple().map(|()| PartitionId(0x1122_3344_5566_7788))
    }
}
impl NotifyLongSpinWait for Recorder {
    fn notify_long_spin_wait(&mut self, spin_count: u64) -> HvResult<()> {
        self.seen.push(Seen::Spin(spin_count));
        self.simple()
    }
}
impl GetVpRegisters for Recorder {
    fn get_vp_registers(
        &mut self,
        p: PartitionId,
        vp: VpIndex,
        vtl: HvInputVtl,
        names: &[HvRegisterName],
        values: &mut [HvRegisterValue],
    ) -> HvRepResult {
        self.seen.push(Seen::GetRegs(p, vp, vtl, names.to_vec()));
        for (v, n) in values.iter_mut().zip(names) {
            *v = HvRegisterValue {
                low: n.0 as u64 | 0xFEED_0000_0000_0000,
                high: !(n.0 as u64),
            };
        }
        self.reps(names.len())
    }
}
impl SetVpRegisters for Recorder {
    fn set_vp_registers(
        &mut self,
        p: PartitionId,
        vp: VpIndex,
        vtl: HvInputVtl,
        regs: &[(HvRegisterName, HvRegisterValue)],
    ) -> HvRepResult {
        self.seen.push(Seen::SetRegs(p, vp, vtl, regs.to_vec()));
        self.reps(regs.len())
    }
}
impl EnableVpVtl for Recorder {
    fn enable_vp_vtl(
        &mut self,
        p: PartitionId,
        vp: VpIndex,
        vtl: Vtl,
        c: &InitialVpContext,
    ) -> HvResult<()> {
        self.seen.push(Seen::Enable(p, vp, vtl, c.rip));
        self.simple()
    }
}
impl EnablePartitionVtl for Recorder {
    fn enable_partition_vtl(&mut self, p: PartitionId, vtl: Vtl, flags: u8) -> HvResult<()> {
        self.seen.push(Seen::EnablePartition(p, vtl, flags));
        self.simple()
    }
}
impl StartVirtualProcessor for Recorder {
    fn start_virtual_processor(
        &mut self,
        p: PartitionId,
        vp: VpIndex,
        vtl: Vtl,
        c: &InitialVpContext,
    ) -> HvResult<()> {
        self.seen.push(Seen::Start(p, vp, vtl, c.rip));
        self.simple()
    }
}
impl GetVpIndexFromApicId for Recorder {
    fn get_vp_index_from_apic_id(
        &mut self,
        p: PartitionId,
        vtl: HvInputVtl,
        ids: &[u32],
        out: &mut [VpIndex],
    ) -> HvRepResult {
        self.seen.push(Seen::ApicIds(p, vtl, ids.to_vec()));
        for (o, id) in out.iter_mut().zip(ids) {
            *o = VpIndex(id + 100);
        }
        self.reps(ids.len())
    }
}
impl ModifyVtlProtectionMask for Recorder {
    fn modify_vtl_protection_mask(
        &mut self,
        p: PartitionId,
        flags: u32,
        vtl: HvInputVtl,
        pages: &[u64],
    ) -> HvRepResult {
        self.seen.push(Seen::Protect(p, flags, vtl, pages.to_vec()));
        self.reps(pages.len())
    }
}
impl Calls for Recorder {
    fn hv_call_get_partition_id(&mut self) -> Option<&mut dyn GetPartitionId> {
        self.serve.then_some(self)
    }
    fn hv_call_notify_long_spin_wait(&mut self) -> Option<&mut dyn NotifyLongSpinWait> {
        self.serve.then_some(self)
    }
    fn hv_call_get_vp_registers(&mut self) -> Option<&mut dyn GetVpRegisters> {
        self.serve.then_some(self)
    }
    fn hv_call_set_vp_registers(&mut self) -> Option<&mut dyn SetVpRegisters> {
        self.serve.then_some(self)
    }
    fn hv_call_enable_vp_vtl(&mut self) -> Option<&mut dyn EnableVpVtl> {
        self.serve.then_some(self)
    }
    fn hv_call_enable_partition_vtl(&mut self) -> Option<&mut dyn EnablePartitionVtl> {
        self.serve.then_some(self)
    }
    fn hv_call_start_virtual_processor(&mut self) -> Option<&mut dyn StartVirtualProcessor> {
        self.serve.then_some(self)
    }
    fn hv_call_get_vp_index_from_apic_id(&mut self) -> Option<&mut dyn GetVpIndexFromApicId> {
        self.serve.then_some(self)
    }
    fn hv_call_modify_vtl_protection_mask(&mut self) -> Option<&mut dyn ModifyVtlProtectionMask> {
        self.serve.then_some(self)
    }
}

/// Guest memory filled with [`FILL`], with `inputs` written at their GPAs.
fn memory(inputs: &[(u64, &[u8])]) -> GuestMemoryMmap {
    let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    m.write_slice(&[FILL; MEM], GuestAddress(0)).unwrap();
    for (gpa, bytes) in inputs {
        m.write_slice(bytes, GuestAddress(*gpa)).unwrap();
    }
    m
}

fn snapshot(m: &GuestMemoryMmap) -> Vec<u8> {
    let mut b = vec![0u8; MEM];
    m.read_slice(&mut b, GuestAddress(0)).unwrap();
    b
}

/// Runs `call` and checks that only `written` (start, len) changed.
fn run(
    m: &GuestMemoryMmap,
    control: u64,
    input: u64,
    output: u64,
    vmm: &mut Recorder,
    written: Option<(u64, usize)>,
) -> HypercallResult {
    let before = snapshot(m);
    let r = dispatch(
        m,
        HypercallInput {
            control: HypercallControl(control),
            input,
            output,
        },
        vmm,
    );
    let after = snapshot(m);
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        let inside = written.is_some_and(|(s, l)| (i as u64) >= s && (i as u64) < s + l as u64);
        if !inside {
            assert_eq!(a, b, "byte {i:#x} outside the output block changed");
        }
    }
    r
}

fn status(e: HvError) -> HvStatus {
    e.status()
}

fn rep(code: u64, count: u64, start: u64) -> u64 {
    code | (count << 32) | (start << 48)
}

fn header(partition: u64, vp: u32, vtl: u8) -> Vec<u8> {
    let mut h = partition.to_le_bytes().to_vec();
    h.extend(vp.to_le_bytes());
    h.extend([vtl, 0, 0, 0]);
    h
}

fn start_input(rip: u64) -> Vec<u8> {
    let mut b = PartitionId::SELF.0.to_le_bytes().to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend([2, 0, 0, 0]);
    let ctx = InitialVpContext {
        rip,
        ..Default::default()
    };
    b.extend(zerocopy::IntoBytes::as_bytes(&ctx));
    b
}

/// "Common Hypercall Status Codes" and "Hypercall Inputs": the control word.
#[test]
fn control_word_errors_reach_no_handler() {
    let m = memory(&[]);
    let cases: &[(&str, u64, HvError)] = &[
        ("unknown call code", 0x7777, HvError::INVALID_HYPERCALL_CODE),
        (
            "RsvdZ bit 27",
            0x46 | (1 << 27),
            HvError::INVALID_HYPERCALL_INPUT,
        ),
        (
            "nested bit 31",
            0x46 | (1 << 31),
            HvError::INVALID_HYPERCALL_INPUT,
        ),
        (
            "RsvdZ bit 44",
            0x46 | (1 << 44),
            HvError::INVALID_HYPERCALL_INPUT,
        ),
        (
            "RsvdZ bit 60",
            0x46 | (1 << 60),
            HvError::INVALID_HYPERCALL_INPUT,
        ),
        (
            "rep count on a simple call",
            rep(0x99, 1, 0),
            HvError::INVALID_HYPERCALL_INPUT,
        ),
        (
            "rep call with no reps",
            rep(0x50, 0, 0),
            HvError::INVALID_HYPERCALL_INPUT,
        ),
        (
            "rep start not below count",
            rep(0x9A, 2, 2),
            HvError::INVALID_HYPERCALL_INPUT,
        ),
        (
            "fast StartVirtualProcessor",
            0x99 | (1 << 16),
            HvError::INVALID_HYPERCALL_INPUT,
        ),
        (
            "variable header on StartVP",
            0x99 | (1 << 17),
            HvError::INVALID_HYPERCALL_INPUT,
        ),
        (
            "variable header on NotifyLongSpinWait",
            0x08 | (1 << 16) | (1 << 17),
            HvError::INVALID_HYPERCALL_INPUT,
        ),
    ];
    for &(case, control, want) in cases {
        let mut vmm = Recorder::serving();
        let r = run(&m, control, IN, OUT, &mut vmm, None);
        assert_eq!(
            (r.status(), r.reps_completed()),
            (status(want), 0),
            "{case}"
        );
        assert!(vmm.seen.is_empty(), "{case}: {:?}", vmm.seen);
    }
    // A known call the VMM does not serve.
    let mut vmm = Recorder::default();
    for code in [0x46u64, 0x08, 0x0F, 0x99] {
        let r = run(&m, code, IN, OUT, &mut vmm, None);
        assert_eq!(
            r.status(),
            status(HvError::INVALID_HYPERCALL_CODE),
            "{code:#x}"
        );
    }
    for code in [0x50u64, 0x51, 0x9A] {
        let r = run(&m, rep(code, 1, 0), IN, OUT, &mut vmm, None);
        assert_eq!(
            r.status(),
            status(HvError::INVALID_HYPERCALL_CODE),
            "{code:#x}"
        );
    }
}

/// HvCallGetPartitionId and HvCallNotifyLongSpinWait.
#[test]
fn simple_calls_write_only_their_output() {
    let m = memory(&[]);
    let mut vmm = Recorder::serving();
    let r = run(&m, 0x46, 0, OUT, &mut vmm, Some((OUT, 8)));
    assert_eq!(r.status(), HvStatus::SUCCESS);
    assert_eq!(
        m.read_obj::<u64>(GuestAddress(OUT)).unwrap(),
        0x1122_3344_5566_7788
    );
    // "Common Hypercall Status Codes": misaligned, outside the GPA space.
    for (case, out) in [
        ("misaligned output", OUT + 4),
        ("output outside memory", MEM as u64),
    ] {
        let mut vmm = Recorder::serving();
        let r = run(&m, 0x46, 0, out, &mut vmm, None);
        assert_eq!(r.status(), status(HvError::INVALID_ALIGNMENT), "{case}");
        assert!(vmm.seen.is_empty(), "{case}: checked before the call acts");
    }
    // The handler's refusal: nothing written.
    let mut vmm = Recorder {
        fail: Some(HvError::ACCESS_DENIED),
        ..Recorder::serving()
    };
    let r = run(&m, 0x46, 0, OUT + 0x100, &mut vmm, None);
    assert_eq!(r.status(), status(HvError::ACCESS_DENIED));
    // NotifyLongSpinWait is a fast call: the count is the input "GPA".
    let mut vmm = Recorder::serving();
    let r = run(&m, 0x08 | (1 << 16), 0x40, 0, &mut vmm, None);
    assert_eq!(r.status(), HvStatus::SUCCESS);
    assert_eq!(vmm.seen, vec![Seen::Spin(0x40)]);
}

/// HvCallGetVpRegisters: rep list, outputs at their place, partial completion.
#[test]
fn get_vp_registers_reps() {
    let mut input = header(PartitionId::SELF.0, VpIndex::SELF.0, 0x12);
    for n in [0x0002_0000u32, 0x0002_0010, 0x000D_0003] {
        input.extend(n.to_le_bytes());
    }
    let m = memory(&[(IN, &input)]);
    let names: Vec<HvRegisterName> = [0x0002_0000, 0x0002_0010, 0x000D_0003]
        .map(HvRegisterName)
        .to_vec();
    // All three.
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x50, 3, 0), IN, OUT, &mut vmm, Some((OUT, 48)));
    assert_eq!((r.status(), r.reps_completed()), (HvStatus::SUCCESS, 3));
    assert_eq!(
        vmm.seen,
        vec![Seen::GetRegs(
            PartitionId::SELF,
            VpIndex::SELF,
            HvInputVtl(0x12),
            names.clone()
        )]
    );
    let v: [u64; 2] = m.read_obj(GuestAddress(OUT + 16)).unwrap();
    assert_eq!(v, [0xFEED_0000_0002_0010, !0x0002_0010u64]);
    // From rep 1: the handler sees names 1.., outputs land at their place.
    let m = memory(&[(IN, &input)]);
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x50, 3, 1), IN, OUT, &mut vmm, Some((OUT + 16, 32)));
    assert_eq!((r.status(), r.reps_completed()), (HvStatus::SUCCESS, 3));
    assert!(matches!(&vmm.seen[0], Seen::GetRegs(_, _, _, n) if n == &names[1..]));
    // Rep 1 fails: one rep's output written, reps completed 1.
    let m = memory(&[(IN, &input)]);
    let mut vmm = Recorder {
        fail_rep: Some((1, HvError::INVALID_PARAMETER)),
        ..Recorder::serving()
    };
    let r = run(&m, rep(0x50, 3, 0), IN, OUT, &mut vmm, Some((OUT, 16)));
    assert_eq!(
        (r.status(), r.reps_completed()),
        (status(HvError::INVALID_PARAMETER), 1)
    );
    // Output == input, as Linux's get_vtl() passes it.
    let m = memory(&[(IN, &input)]);
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x50, 1, 0), IN, IN, &mut vmm, Some((IN, 16)));
    assert_eq!(r.status(), HvStatus::SUCCESS);
    // Placement and RsvdZ errors reach no handler.
    let page_end = 0x2000 - 16;
    let cases: Vec<(&str, u64, u64, HvError)> = vec![
        ("misaligned input", IN + 4, OUT, HvError::INVALID_ALIGNMENT),
        (
            "input list spans a page",
            page_end,
            OUT,
            HvError::INVALID_ALIGNMENT,
        ),
        (
            "input outside memory",
            MEM as u64,
            OUT,
            HvError::INVALID_ALIGNMENT,
        ),
        ("misaligned output", IN, OUT + 4, HvError::INVALID_ALIGNMENT),
        (
            "output list spans a page",
            IN,
            0x6000 - 16,
            HvError::INVALID_ALIGNMENT,
        ),
        (
            "output outside memory",
            IN,
            MEM as u64 - 16,
            HvError::INVALID_ALIGNMENT,
        ),
    ];
    for (case, i, o, want) in cases {
        let m = memory(&[(IN, &input), (page_end, &input)]);
        let mut vmm = Recorder::serving();
        let r = run(&m, rep(0x50, 3, 0), i, o, &mut vmm, None);
        assert_eq!(
            (r.status(), r.reps_completed()),
            (status(want), 0),
            "{case}"
        );
        assert!(vmm.seen.is_empty(), "{case}");
    }
    let mut bad = input.clone();
    bad[13] = 1; // RsvdZ after the input VTL
    let m = memory(&[(IN, &bad)]);
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x50, 3, 0), IN, OUT, &mut vmm, None);
    assert_eq!(r.status(), status(HvError::INVALID_PARAMETER));
    assert!(vmm.seen.is_empty());
}

/// HvCallSetVpRegisters: elements with RsvdZ set end the list.
#[test]
fn set_vp_registers_reps() {
    let mut input = header(PartitionId::SELF.0, 2, 0);
    for (n, v) in [(0x0002_0003u32, 5u64), (0x0002_0006, 6), (0x0002_0007, 7)] {
        input.extend(n.to_le_bytes());
        input.extend([0u8; 12]);
        input.extend(v.to_le_bytes());
        input.extend(0u64.to_le_bytes());
    }
    let regs = |i: usize| {
        [(0x0002_0003u32, 5u64), (0x0002_0006, 6), (0x0002_0007, 7)][i..]
            .iter()
            .map(|&(n, v)| (HvRegisterName(n), HvRegisterValue::from(v)))
            .collect::<Vec<_>>()
    };
    let m = memory(&[(IN, &input)]);
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x51, 3, 0), IN, 0, &mut vmm, None);
    assert_eq!((r.status(), r.reps_completed()), (HvStatus::SUCCESS, 3));
    assert_eq!(
        vmm.seen,
        vec![Seen::SetRegs(
            PartitionId::SELF,
            VpIndex(2),
            HvInputVtl(0),
            regs(0)
        )]
    );
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x51, 3, 2), IN, 0, &mut vmm, None);
    assert_eq!((r.status(), r.reps_completed()), (HvStatus::SUCCESS, 3));
    assert_eq!(
        vmm.seen,
        vec![Seen::SetRegs(
            PartitionId::SELF,
            VpIndex(2),
            HvInputVtl(0),
            regs(2)
        )]
    );
    // Element 1's RsvdZ bytes set: element 0 is written, then INVALID_PARAMETER.
    let mut bad = input.clone();
    bad[16 + 32 + 5] = 1;
    let m = memory(&[(IN, &bad)]);
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x51, 3, 0), IN, 0, &mut vmm, None);
    assert_eq!(
        (r.status(), r.reps_completed()),
        (status(HvError::INVALID_PARAMETER), 1)
    );
    assert_eq!(
        vmm.seen,
        vec![Seen::SetRegs(
            PartitionId::SELF,
            VpIndex(2),
            HvInputVtl(0),
            regs(0)[..1].to_vec()
        )]
    );
    // The handler refuses rep 2.
    let m = memory(&[(IN, &input)]);
    let mut vmm = Recorder {
        fail_rep: Some((2, HvError::INVALID_VP_STATE)),
        ..Recorder::serving()
    };
    let r = run(&m, rep(0x51, 3, 0), IN, 0, &mut vmm, None);
    assert_eq!(
        (r.status(), r.reps_completed()),
        (status(HvError::INVALID_VP_STATE), 2)
    );
    // Input spanning a page: nothing reaches the handler.
    let m = memory(&[(0x2000 - 64, &input)]);
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x51, 3, 0), 0x2000 - 64, 0, &mut vmm, None);
    assert_eq!(r.status(), status(HvError::INVALID_ALIGNMENT));
    assert!(vmm.seen.is_empty());
}

/// HvCallEnableVpVtl and HvCallStartVirtualProcessor: 240-byte inputs.
#[test]
fn enable_vp_vtl_and_start_virtual_processor() {
    let input = start_input(0xFFFF_FFFF_8100_0000);
    let m = memory(&[(IN, &input)]);
    for (code, seen) in [
        (
            0x0Fu64,
            Seen::Enable(PartitionId::SELF, VpIndex(3), Vtl(2), 0xFFFF_FFFF_8100_0000),
        ),
        (
            0x99,
            Seen::Start(PartitionId::SELF, VpIndex(3), Vtl(2), 0xFFFF_FFFF_8100_0000),
        ),
    ] {
        let mut vmm = Recorder::serving();
        let r = run(&m, code, IN, 0, &mut vmm, None);
        assert_eq!(r.status(), HvStatus::SUCCESS, "{code:#x}");
        assert_eq!(vmm.seen, vec![seen]);
        let mut vmm = Recorder {
            fail: Some(HvError::INVALID_VP_STATE),
            ..Recorder::serving()
        };
        let r = run(&m, code, IN, 0, &mut vmm, None);
        assert_eq!(r.status(), status(HvError::INVALID_VP_STATE), "{code:#x}");
        let mut bad = input.clone();
        bad[13] = 1; // RsvdZ after the target VTL
        let mb = memory(&[(IN, &bad), (0x2000 - 232, &input)]);
        for (case, gpa, want) in [
            ("RsvdZ set", IN, HvError::INVALID_PARAMETER),
            ("misaligned", IN + 8 + 4, HvError::INVALID_ALIGNMENT),
            ("spans a page", 0x2000 - 232, HvError::INVALID_ALIGNMENT),
            ("outside memory", MEM as u64 - 8, HvError::INVALID_ALIGNMENT),
        ] {
            let mut vmm = Recorder::serving();
            let r = run(&mb, code, gpa, 0, &mut vmm, None);
            assert_eq!(r.status(), status(want), "{code:#x} {case}");
            assert!(vmm.seen.is_empty(), "{code:#x} {case}");
        }
    }
}

/// HvCallEnablePartitionVtl (0x000D): a 16-byte input from memory or, as a
/// fast call (control bit 16), from RDX and R8 (TLFS "Hypercall Inputs",
/// register mapping for fast calls; HvCallEnablePartitionVtl input table).
#[test]
fn enable_partition_vtl_from_memory_and_fast() {
    let mut input = PartitionId::SELF.0.to_le_bytes().to_vec();
    input.extend([1u8, 1, 0, 0, 0, 0, 0, 0]);
    let m = memory(&[(IN, &input)]);
    let want = Seen::EnablePartition(PartitionId::SELF, Vtl(1), 1);
    let mut vmm = Recorder::serving();
    assert_eq!(
        run(&m, 0x0D, IN, 0, &mut vmm, None).status(),
        HvStatus::SUCCESS
    );
    assert_eq!(vmm.seen, vec![want.clone()]);
    let fast = 0x0D | (1 << 16);
    let r8 = u64::from_le_bytes(input[8..16].try_into().unwrap());
    let mut vmm = Recorder::serving();
    assert_eq!(
        run(&m, fast, PartitionId::SELF.0, r8, &mut vmm, None).status(),
        HvStatus::SUCCESS
    );
    assert_eq!(vmm.seen, vec![want]);
    // Reserved flag bits 7:1 and the RsvdZ bytes 10..16, in both forms.
    for (what, r8) in [("flags bit 1", 0x0201u64), ("RsvdZ", 0x0100_0000_0001)] {
        let mut vmm = Recorder::serving();
        let r = run(&m, fast, PartitionId::SELF.0, r8, &mut vmm, None);
        assert_eq!(r.status(), status(HvError::INVALID_PARAMETER), "{what}");
        assert!(vmm.seen.is_empty(), "{what}");
        let mut bad = input.clone();
        bad[8..16].copy_from_slice(&r8.to_le_bytes());
        let mb = memory(&[(IN, &bad)]);
        let mut vmm = Recorder::serving();
        let r = run(&mb, 0x0D, IN, 0, &mut vmm, None);
        assert_eq!(r.status(), status(HvError::INVALID_PARAMETER), "{what}");
        assert!(vmm.seen.is_empty(), "{what}");
    }
    // A variable header on the fast form.
    let mut vmm = Recorder::serving();
    let r = run(
        &m,
        fast | (1 << 17),
        PartitionId::SELF.0,
        r8,
        &mut vmm,
        None,
    );
    assert_eq!(r.status(), status(HvError::INVALID_HYPERCALL_INPUT));
    let mut vmm = Recorder::serving();
    let r = run(&m, 0x0D, IN + 4, 0, &mut vmm, None);
    assert_eq!(r.status(), status(HvError::INVALID_ALIGNMENT));
    assert!(vmm.seen.is_empty());
}

/// HvCallModifyVtlProtectionMask (0x000C, rep): a 16-byte header (partition,
/// HV_MAP_GPA_FLAGS, HV_INPUT_VTL, RsvdZ), 8-byte GPA page numbers, no
/// output.
#[test]
fn modify_vtl_protection_mask_reps() {
    let header = |rsvdz: u8| {
        let mut b = PartitionId::SELF.0.to_le_bytes().to_vec();
        b.extend(0x5u32.to_le_bytes());
        b.extend([0x10, rsvdz, 0, 0]);
        for gpfn in [0x10u64, 0x11, 0x2000] {
            b.extend(gpfn.to_le_bytes());
        }
        b
    };
    let input = header(0);
    let m = memory(&[(IN, &input)]);
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x0C, 3, 0), IN, 0, &mut vmm, None);
    assert_eq!((r.status(), r.reps_completed()), (HvStatus::SUCCESS, 3));
    assert_eq!(
        vmm.seen,
        vec![Seen::Protect(
            PartitionId::SELF,
            5,
            HvInputVtl(0x10),
            vec![0x10, 0x11, 0x2000]
        )]
    );
    // A failing page: the pages before it count as done.
    let mut vmm = Recorder {
        fail_rep: Some((1, HvError::INVALID_PARAMETER)),
        ..Recorder::serving()
    };
    let r = run(&m, rep(0x0C, 3, 0), IN, 0, &mut vmm, None);
    assert_eq!(
        (r.status(), r.reps_completed()),
        (status(HvError::INVALID_PARAMETER), 1)
    );
    // From rep 2.
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x0C, 3, 2), IN, 0, &mut vmm, None);
    assert_eq!((r.status(), r.reps_completed()), (HvStatus::SUCCESS, 3));
    assert_eq!(
        vmm.seen,
        vec![Seen::Protect(
            PartitionId::SELF,
            5,
            HvInputVtl(0x10),
            vec![0x2000]
        )]
    );
    // RsvdZ set: HV_STATUS_INVALID_PARAMETER before any page.
    let m = memory(&[(IN, &header(1))]);
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x0C, 3, 0), IN, 0, &mut vmm, None);
    assert_eq!(
        (r.status(), r.reps_completed()),
        (status(HvError::INVALID_PARAMETER), 0)
    );
    assert!(vmm.seen.is_empty());
    // The list past the input page: HV_STATUS_INVALID_ALIGNMENT; a fast
    // call (XMM input, not served): HV_STATUS_INVALID_HYPERCALL_INPUT.
    let m = memory(&[(IN, &input)]);
    let r = run(&m, rep(0x0C, 600, 0), IN, 0, &mut vmm, None);
    assert_eq!(r.status(), status(HvError::INVALID_ALIGNMENT));
    let r = run(&m, rep(0x0C, 3, 0) | (1 << 16), IN, 0, &mut vmm, None);
    assert_eq!(r.status(), status(HvError::INVALID_HYPERCALL_INPUT));
    assert!(vmm.seen.is_empty());
    // Not served: HV_STATUS_INVALID_HYPERCALL_CODE.
    let mut vmm = Recorder::default();
    let r = run(&m, rep(0x0C, 3, 0), IN, 0, &mut vmm, None);
    assert_eq!(r.status(), status(HvError::INVALID_HYPERCALL_CODE));
}

/// HvCallGetVpIndexFromApicId: 4-byte elements, 4-byte outputs.
#[test]
fn get_vp_index_from_apic_id_reps() {
    let mut input = PartitionId::SELF.0.to_le_bytes().to_vec();
    input.extend([0u8; 8]);
    for id in [1u32, 2, 3] {
        input.extend(id.to_le_bytes());
    }
    let m = memory(&[(IN, &input)]);
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x9A, 3, 0), IN, OUT, &mut vmm, Some((OUT, 12)));
    assert_eq!((r.status(), r.reps_completed()), (HvStatus::SUCCESS, 3));
    assert_eq!(
        vmm.seen,
        vec![Seen::ApicIds(
            PartitionId::SELF,
            HvInputVtl(0),
            vec![1, 2, 3]
        )]
    );
    assert_eq!(
        m.read_obj::<[u32; 3]>(GuestAddress(OUT)).unwrap(),
        [101, 102, 103]
    );
    // Linux places the output at input + 24.
    let m = memory(&[(IN, &input)]);
    let mut vmm = Recorder {
        fail_rep: Some((1, HvError::INVALID_PARAMETER)),
        ..Recorder::serving()
    };
    let r = run(
        &m,
        rep(0x9A, 3, 0),
        IN,
        IN + 24,
        &mut vmm,
        Some((IN + 24, 4)),
    );
    assert_eq!(
        (r.status(), r.reps_completed()),
        (status(HvError::INVALID_PARAMETER), 1)
    );
    // From rep 2.
    let m = memory(&[(IN, &input)]);
    let mut vmm = Recorder::serving();
    let r = run(&m, rep(0x9A, 3, 2), IN, OUT, &mut vmm, Some((OUT + 8, 4)));
    assert_eq!((r.status(), r.reps_completed()), (HvStatus::SUCCESS, 3));
    assert_eq!(
        vmm.seen,
        vec![Seen::ApicIds(PartitionId::SELF, HvInputVtl(0), vec![3])]
    );
    for (case, i, o) in [
        ("output outside memory", IN, MEM as u64 - 8),
        ("misaligned output", IN, OUT + 4),
        ("input outside memory", MEM as u64 - 8, OUT),
    ] {
        let mut vmm = Recorder::serving();
        let r = run(&m, rep(0x9A, 3, 0), i, o, &mut vmm, None);
        assert_eq!(r.status(), status(HvError::INVALID_ALIGNMENT), "{case}");
        assert!(vmm.seen.is_empty(), "{case}");
    }
    let _ = HypercallCode::GET_VP_INDEX_FROM_APIC_ID;
}

/// A VMM that serves nothing: every call, simple or rep, is
/// HV_STATUS_INVALID_HYPERCALL_CODE, and nothing is read or written.
#[test]
fn a_vmm_serving_nothing_gets_invalid_code_for_every_call() {
    struct Nothing;
    impl Calls for Nothing {}
    let m = memory(&[]);
    for control in [
        0x46u64,
        0x08 | (1 << 16),
        0x0F,
        0x99,
        rep(0x50, 1, 0),
        rep(0x51, 1, 0),
        rep(0x9A, 1, 0),
    ] {
        let before = snapshot(&m);
        let r = dispatch(
            &m,
            HypercallInput {
                control: HypercallControl(control),
                input: IN,
                output: OUT,
            },
            &mut Nothing,
        );
        assert_eq!(
            r.status(),
            status(HvError::INVALID_HYPERCALL_CODE),
            "{control:#x}"
        );
        assert_eq!(snapshot(&m), before);
    }
}

/// A VMM that serves HvCallGetPartitionId here and everything else itself.
#[derive(Default)]
struct OwnCalls {
    fallback: Vec<HypercallInput>,
}

impl GetPartitionId for OwnCalls {
    fn get_partition_id(&mut self) -> HvResult<PartitionId> {
        Ok(PartitionId(5))
    }
}

impl Fallback for OwnCalls {
    fn hypercall(&mut self, call: HypercallInput) -> HypercallResult {
        self.fallback.push(call);
        HypercallResult::new(HvStatus::SUCCESS, 1)
    }
}

hv_hypercall::impl_calls!(OwnCalls: GetPartitionId, Fallback);

#[test]
fn the_fallback_gets_unknown_and_unserved_calls_exactly_as_issued() {
    let m = memory(&[]);
    let mut vmm = OwnCalls::default();
    let before = snapshot(&m);
    // A code hv-defs does not know (its control word is the VMM's to check,
    // RsvdZ bits included), and a known call this VMM does not list.
    let calls = [
        HypercallInput {
            control: HypercallControl(0x7ABC | (1 << 16) | (3 << 32) | (1 << 63)),
            input: 0x1234,
            output: 0x5678,
        },
        HypercallInput {
            control: HypercallControl(0x0099),
            input: IN,
            output: 0,
        },
    ];
    for call in calls {
        let r = dispatch(&m, call, &mut vmm);
        assert_eq!(r, HypercallResult::new(HvStatus::SUCCESS, 1));
    }
    assert_eq!(vmm.fallback, calls);
    assert_eq!(snapshot(&m), before, "the dispatcher wrote nothing");
    // Served here: not the fallback's.
    let r = dispatch(
        &m,
        HypercallInput {
            control: HypercallControl(0x46),
            input: 0,
            output: OUT,
        },
        &mut vmm,
    );
    assert_eq!(r.status(), HvStatus::SUCCESS);
    assert_eq!(m.read_obj::<u64>(GuestAddress(OUT)).unwrap(), 5);
    assert_eq!(vmm.fallback.len(), 2);
}

#[test]
fn a_known_call_with_a_bad_control_word_never_reaches_the_fallback() {
    // TLFS "Hypercall Inputs": a simple call with a rep count is
    // HV_STATUS_INVALID_HYPERCALL_INPUT, whoever would serve it.
    let m = memory(&[]);
    let mut vmm = OwnCalls::default();
    for control in [rep(0x99, 1, 0), 0x46 | (1 << 63)] {
        let r = dispatch(
            &m,
            HypercallInput {
                control: HypercallControl(control),
                input: IN,
                output: OUT,
            },
            &mut vmm,
        );
        assert_eq!(
            r.status(),
            status(HvError::INVALID_HYPERCALL_INPUT),
            "{control:#x}"
        );
    }
    assert!(vmm.fallback.is_empty());
}

/// Every call trait, listed with impl_calls!: each handler records its call.
#[derive(Default)]
struct Everything(Vec<&'static str>);

impl GetPartitionId for Everything {
    fn get_partition_id(&mut self) -> HvResult<PartitionId> {
        self.0.push("GetPartitionId");
        Ok(PartitionId(1))
    }
}
impl NotifyLongSpinWait for Everything {
    fn notify_long_spin_wait(&mut self, _: u64) -> HvResult<()> {
        self.0.push("NotifyLongSpinWait");
        Ok(())
    }
}
impl GetVpRegisters for Everything {
    fn get_vp_registers(
        &mut self,
        _: PartitionId,
        _: VpIndex,
        _: HvInputVtl,
        _: &[HvRegisterName],
        _: &mut [HvRegisterValue],
    ) -> HvRepResult {
        self.0.push("GetVpRegisters");
        Ok(())
    }
}
impl SetVpRegisters for Everything {
    fn set_vp_registers(
        &mut self,
        _: PartitionId,
        _: VpIndex,
        _: HvInputVtl,
        _: &[(HvRegisterName, HvRegisterValue)],
    ) -> HvRepResult {
        self.0.push("SetVpRegisters");
        Ok(())
    }
}
impl EnablePartitionVtl for Everything {
    fn enable_partition_vtl(&mut self, _: PartitionId, _: Vtl, _: u8) -> HvResult<()> {
        self.0.push("EnablePartitionVtl");
        Ok(())
    }
}
impl EnableVpVtl for Everything {
    fn enable_vp_vtl(
        &mut self,
        _: PartitionId,
        _: VpIndex,
        _: Vtl,
        _: &InitialVpContext,
    ) -> HvResult<()> {
        self.0.push("EnableVpVtl");
        Ok(())
    }
}
impl StartVirtualProcessor for Everything {
    fn start_virtual_processor(
        &mut self,
        _: PartitionId,
        _: VpIndex,
        _: Vtl,
        _: &InitialVpContext,
    ) -> HvResult<()> {
        self.0.push("StartVirtualProcessor");
        Ok(())
    }
}
impl GetVpIndexFromApicId for Everything {
    fn get_vp_index_from_apic_id(
        &mut self,
        _: PartitionId,
        _: HvInputVtl,
        _: &[u32],
        _: &mut [VpIndex],
    ) -> HvRepResult {
        self.0.push("GetVpIndexFromApicId");
        Ok(())
    }
}
impl ModifyVtlProtectionMask for Everything {
    fn modify_vtl_protection_mask(
        &mut self,
        _: PartitionId,
        _: u32,
        _: HvInputVtl,
        _: &[u64],
    ) -> HvRepResult {
        self.0.push("ModifyVtlProtectionMask");
        Ok(())
    }
}
impl Fallback for Everything {
    fn hypercall(&mut self, _: HypercallInput) -> HypercallResult {
        self.0.push("Fallback");
        HypercallResult::new(HvStatus::SUCCESS, 0)
    }
}
hv_hypercall::impl_calls!(Everything:
    GetPartitionId,
    NotifyLongSpinWait,
    GetVpRegisters,
    SetVpRegisters,
    EnablePartitionVtl,
    EnableVpVtl,
    StartVirtualProcessor,
    GetVpIndexFromApicId,
    ModifyVtlProtectionMask,
    Fallback,
);

/// A well-formed control word for each call the dispatcher parses.
fn known_calls() -> [u64; 9] {
    [
        0x46,
        0x08 | (1 << 16),
        rep(0x50, 1, 0),
        rep(0x51, 1, 0),
        0x0D,
        0x0F,
        0x99,
        rep(0x9A, 1, 0),
        rep(0x0C, 1, 0),
    ]
}

/// `control` with zeroed, well-formed inputs, so the call reaches its handler.
fn call_zeroed(control: u64, vmm: &mut dyn Calls) -> HypercallResult {
    let m = memory(&[(IN, &[0u8; 0x400])]);
    dispatch(
        &m,
        HypercallInput {
            control: HypercallControl(control),
            input: IN,
            output: OUT,
        },
        vmm,
    )
}

#[test]
fn impl_calls_serves_every_listed_call() {
    // Zeroed, well-formed inputs: every call reaches its own handler.
    let mut vmm = Everything::default();
    for control in known_calls().into_iter().chain([0x7ABC]) {
        let r = call_zeroed(control, &mut vmm);
        assert_eq!(r.status(), HvStatus::SUCCESS, "{control:#x}");
    }
    assert_eq!(
        vmm.0,
        [
            "GetPartitionId",
            "NotifyLongSpinWait",
            "GetVpRegisters",
            "SetVpRegisters",
            "EnablePartitionVtl",
            "EnableVpVtl",
            "StartVirtualProcessor",
            "GetVpIndexFromApicId",
            "ModifyVtlProtectionMask",
            "Fallback",
        ]
    );
}

/// A VMM that serves nothing through [`Calls`]' defaults: every call the
/// dispatcher knows is HV_STATUS_INVALID_HYPERCALL_CODE (TLFS "Hypercall
/// Status Codes"), with no input read.
struct Nothing;
impl Calls for Nothing {}

#[test]
fn calls_defaults_serve_nothing() {
    for control in known_calls() {
        let r = call_zeroed(control, &mut Nothing);
        assert_eq!(
            r.status(),
            status(HvError::INVALID_HYPERCALL_CODE),
            "{control:#x}"
        );
    }
}
