//! Small 64-bit test guests: memory layout, page tables, contexts, and an
//! assembler for the few plain integer instructions the guests use.
#![allow(dead_code)]

use std::sync::mpsc::Sender;
use std::sync::Arc;

use hv_defs::{
    HvRegisterValue, InitialVpContext, SegmentAttributes, SegmentRegister, VpIndex, Vtl,
};
use hv_partition::{Access, HyperVConfig, Partition, PartitionConfig, Vp, VpExit};
use hv_regs::HvRegisterName;
use vm_memory::{Bytes, GuestAddress};

pub const RAM: u64 = 4 << 20;
pub const HYPERCALL_PAGE: u64 = 0x5000;
pub const TSS: u64 = 0x7000;
pub const GDT: u64 = 0x8000;
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xA000;
pub const PD: u64 = 0xB000;
pub const CODE: u64 = 0x10000;
pub const AP_CODE: u64 = 0x18000;
pub const STACKS: u64 = 0x20000;
pub const DATA: u64 = 0x40000;
/// The port a guest writes when it is done.
pub const DONE: u16 = 0x1F;

pub fn stack(vp: u32) -> u64 {
    STACKS + 0x1000 * (vp as u64 + 1) - 0x10
}

/// A partition with `max_vps` VPs' worth of indexes and the page tables and GDT
/// every test guest uses.
pub fn partition(max_vps: u32, hyperv: Option<Vtl>) -> Arc<Partition> {
    partition_with(max_vps, hyperv, vec![])
}

/// [`partition`] with CPUID masks.
pub fn partition_with(
    max_vps: u32,
    hyperv: Option<Vtl>,
    cpuid_masks: Vec<hv_partition::CpuidMask>,
) -> Arc<Partition> {
    let p = Partition::new(PartitionConfig {
        max_vps,
        memory: vec![(0, RAM)],
        hyperv: hyperv.map(HyperVConfig::booting_in),
        cpuid_masks,
    })
    .unwrap_or_else(|e| panic!("{e}: the partition tests need /dev/kvm"));
    write_tables(p.memory());
    p
}

/// The identity map (1 GiB, 2 MiB pages) and GDT every test guest uses.
pub fn write_tables(m: &vm_memory::GuestMemoryMmap) {
    m.write_obj(PDPT | 3, GuestAddress(PML4)).unwrap();
    m.write_obj(PD | 3, GuestAddress(PDPT)).unwrap();
    for i in 0..512u64 {
        m.write_obj((i << 21) | 0x83, GuestAddress(PD + 8 * i))
            .unwrap();
    }
    let gdt: [u64; 4] = [0, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
    m.write_obj(gdt, GuestAddress(GDT)).unwrap();
}

fn seg(selector: u16, attr: u16, base: u64, limit: u32) -> SegmentRegister {
    SegmentRegister {
        base,
        limit,
        selector,
        attributes: SegmentAttributes(attr),
    }
}

/// A 64-bit context at `rip` with stack `rsp`, flat segments and identity paging.
pub fn ctx64(rip: u64, rsp: u64) -> InitialVpContext {
    InitialVpContext::long_mode(rip, rsp, PML4)
        .with_gdt(GDT, 0x1F)
        .with_tss(TSS)
}

/// The same state as HV register writes, for a boot processor set up the TLFS way.
pub fn bsp_registers(rip: u64, rsp: u64) -> Vec<(HvRegisterName, HvRegisterValue)> {
    hv_regs::context_registers(&ctx64(rip, rsp))
}

/// An assembler for the handful of instructions the test guests use.
#[derive(Default)]
pub struct Asm(pub Vec<u8>);

impl Asm {
    pub fn mov_rax(mut self, v: u64) -> Self {
        self.0.extend([0x48, 0xB8]);
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn mov_rcx(mut self, v: u64) -> Self {
        self.0.extend([0x48, 0xB9]);
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn mov_rdx(mut self, v: u64) -> Self {
        self.0.extend([0x48, 0xBA]);
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn mov_rbx(mut self, v: u64) -> Self {
        self.0.extend([0x48, 0xBB]);
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn mov_r8(mut self, v: u64) -> Self {
        self.0.extend([0x49, 0xB8]);
        self.0.extend(v.to_le_bytes());
        self
    }
    /// mov eax, [addr] (32-bit load from an absolute 64-bit address).
    pub fn load_eax(mut self, addr: u64) -> Self {
        self.0.push(0xA1);
        self.0.extend(addr.to_le_bytes());
        self
    }
    pub fn call_rax(mut self) -> Self {
        self.0.extend([0xFF, 0xD0]);
        self
    }
    pub fn call_rbx(mut self) -> Self {
        self.0.extend([0xFF, 0xD3]);
        self
    }
    pub fn out(mut self, port: u8) -> Self {
        self.0.extend([0xE7, port]);
        self
    }
    pub fn rdmsr(mut self, msr: u32) -> Self {
        self.0.push(0xB9);
        self.0.extend(msr.to_le_bytes());
        self.0.extend([0x0F, 0x32]);
        self
    }
    pub fn wrmsr(mut self, msr: u32, value: u64) -> Self {
        self.0.push(0xB9);
        self.0.extend(msr.to_le_bytes());
        self.0.push(0xB8);
        self.0.extend((value as u32).to_le_bytes());
        self.0.push(0xBA);
        self.0.extend(((value >> 32) as u32).to_le_bytes());
        self.0.extend([0x0F, 0x30]);
        self
    }
    pub fn mov_rax_rsp(mut self) -> Self {
        self.0.extend([0x48, 0x89, 0xE0]);
        self
    }
    pub fn shr_rax_32(mut self) -> Self {
        self.0.extend([0x48, 0xC1, 0xE8, 0x20]);
        self
    }
    pub fn ret(mut self) -> Self {
        self.0.push(0xC3);
        self
    }
    /// An endless loop.
    pub fn spin(mut self) -> Self {
        self.0.extend([0xEB, 0xFE]);
        self
    }
    /// dec rbx; jnz to `target` (an offset in this buffer).
    pub fn dec_rbx_jnz(mut self, target: usize) -> Self {
        self.0.extend([0x48, 0xFF, 0xCB, 0x75]);
        let rel = target as i64 - (self.0.len() as i64 + 1);
        self.0.push(rel as i8 as u8);
        self
    }
    /// jmp to `target` (an offset in this buffer).
    pub fn jmp(mut self, target: usize) -> Self {
        self.0.push(0xE9);
        let rel = target as i64 - (self.0.len() as i64 + 4);
        self.0.extend((rel as i32).to_le_bytes());
        self
    }
    /// A hypercall through the page: RCX, RDX, R8 set, RAX reported on `port`
    /// (status) and `port + 1` (reps completed).
    pub fn hypercall(self, control: u64, input: u64, output: u64, port: u8) -> Self {
        self.mov_rcx(control)
            .mov_rdx(input)
            .mov_r8(output)
            .mov_rax(HYPERCALL_PAGE)
            .call_rax()
            .out(port)
            .shr_rax_32()
            .out(port + 1)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// The code every started VP runs: reports its VP index (HV_X64_MSR_VP_INDEX) on
/// port 0x10, its RSP on 0x11, a value only 64-bit code computes on 0x12, then
/// writes DONE and spins.
pub fn report_code() -> Vec<u8> {
    Asm::default()
        .rdmsr(0x4000_0002)
        .out(0x10)
        .mov_rax_rsp()
        .out(0x11)
        .mov_rax(0x1122_3344_5566_7788)
        .shr_rax_32()
        .out(0x12)
        .out(DONE as u8)
        .spin()
        .0
}

/// What a VP wrote to a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub vp: u32,
    pub port: u16,
    pub value: u32,
}

/// Runs `vp` until it writes DONE (or its run is canceled), sending every port
/// write to `tx`. Any other exit fails the test.
pub fn run_reporting(mut vp: Vp, tx: Sender<Report>) -> Vp {
    let index = vp.index().0;
    loop {
        match vp.run() {
            VpExit::IoPortAccess {
                port,
                access: Access::Write(d),
            } => {
                let mut b = [0u8; 4];
                b[..d.len().min(4)].copy_from_slice(&d[..d.len().min(4)]);
                let value = u32::from_le_bytes(b);
                let _ = tx.send(Report {
                    vp: index,
                    port,
                    value,
                });
                if port == DONE {
                    break;
                }
            }
            VpExit::Canceled => break,
            VpExit::InternalError => {
                let e = hv_partition::InternalError::from_run(vp.vcpu_mut().get_kvm_run());
                panic!("VP {index}: internal error {e:?}");
            }
            other => panic!("VP {index}: unexpected exit {other:?}"),
        }
    }
    vp
}

pub fn vp(i: u32) -> VpIndex {
    VpIndex(i)
}

impl Asm {
    /// cpuid with EAX = `leaf`, ECX = 0.
    pub fn cpuid(mut self, leaf: u32) -> Self {
        self.0.push(0xB8);
        self.0.extend(leaf.to_le_bytes());
        self.0.extend([0x31, 0xC9, 0x0F, 0xA2]); // xor ecx, ecx; cpuid
        self
    }
    /// mov eax, ebx
    pub fn eax_from_ebx(mut self) -> Self {
        self.0.extend([0x89, 0xD8]);
        self
    }
    /// mov eax, edx
    pub fn eax_from_edx(mut self) -> Self {
        self.0.extend([0x89, 0xD0]);
        self
    }
}

/// A VM of the test's own (as a VMM outside the crate makes it) with `RAM`
/// bytes of guest memory registered as memory slot `slot`.
pub fn vm_with_ram(
    kvm: &kvm_ioctls::Kvm,
    slot: u32,
) -> (kvm_ioctls::VmFd, vm_memory::GuestMemoryMmap) {
    use vm_memory::GuestMemoryBackend;
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let memory =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let host = memory.get_host_address(GuestAddress(0)).unwrap();
    // SAFETY: the region is mapped for RAM bytes at `host`; the caller keeps
    // `memory` (and hands it to the partition) for as long as the VM exists.
    unsafe {
        vm.set_user_memory_region(kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: RAM,
            userspace_addr: host as u64,
        })
    }
    .expect("KVM_SET_USER_MEMORY_REGION");
    (vm, memory)
}

/// The bytes of a test guest between two symbols of the test's
/// `global_asm!`.
///
/// # Safety
///
/// `start` and `end` must be symbols the test's `global_asm!` defines in one
/// read-only section, `end` at or after `start`.
pub unsafe fn blob(start: &'static u8, end: &'static u8) -> &'static [u8] {
    let (s, e) = (start as *const u8, end as *const u8);
    // SAFETY: as the caller promises, the bytes between the two symbols are
    // one initialized, read-only range of the test binary.
    unsafe { std::slice::from_raw_parts(s, e as usize - s as usize) }
}

/// Writes `bytes` into the partition's RAM at `gpa`.
pub fn put(p: &Partition, gpa: u64, bytes: &[u8]) {
    p.memory().write_slice(bytes, GuestAddress(gpa)).unwrap();
}

/// A Get/SetVpRegisters header (partition and VP self, `input_vtl` as
/// HV_INPUT_VTL) followed by the names of a GetVpRegisters.
pub fn registers_input(input_vtl: u8, names: &[u32]) -> Vec<u8> {
    let mut b = hv_defs::PartitionId::SELF.0.to_le_bytes().to_vec();
    b.extend(VpIndex::SELF.0.to_le_bytes());
    b.extend([input_vtl, 0, 0, 0]);
    for n in names {
        b.extend(n.to_le_bytes());
    }
    b
}

/// A SetVpRegisters input: the header, then a 32-byte element per value.
pub fn set_registers_input(input_vtl: u8, values: &[(HvRegisterName, HvRegisterValue)]) -> Vec<u8> {
    let mut b = registers_input(input_vtl, &[]);
    for (name, value) in values {
        b.extend(name.0.to_le_bytes());
        b.extend([0u8; 12]);
        b.extend(value.low.to_le_bytes());
        b.extend(value.high.to_le_bytes());
    }
    b
}

/// A partition for the VSM tests: `max_vps` VPs, booting in `boot_vtl`, VTLs
/// up to `max_vtl` for the guest to enable, with the tables of
/// [`write_tables`].
pub fn vsm_partition(max_vps: u32, boot_vtl: Vtl, max_vtl: Vtl) -> Arc<Partition> {
    let p = Partition::new(PartitionConfig {
        max_vps,
        memory: vec![(0, RAM)],
        hyperv: Some(HyperVConfig { boot_vtl, max_vtl }),
        cpuid_masks: vec![],
    })
    .unwrap_or_else(|e| panic!("{e}: the VSM tests need /dev/kvm"));
    write_tables(p.memory());
    p
}

/// The GDT selector of the 32-bit code segment [`protected_mode`] uses.
pub const CODE32: u16 = 0x20;

/// 32-bit protected mode at `rip`: flat segments (code at [`CODE32`], which
/// this writes into the test GDT), no paging.
pub fn protected_mode(m: &vm_memory::GuestMemoryMmap, rip: u64, rsp: u64) -> InitialVpContext {
    m.write_obj(0x00CF_9B00_0000_FFFFu64, GuestAddress(GDT + CODE32 as u64))
        .unwrap();
    let flat = |sel, attr| seg(sel, attr, 0, 0xFFFF_FFFF);
    let data = flat(0x18, 0xC093);
    InitialVpContext {
        rip,
        rsp,
        rflags: 2,
        cs: flat(CODE32, 0xC09B),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: seg(0, 0x8B, TSS, 0x67),
        ldtr: SegmentRegister::default(),
        idtr: hv_defs::TableRegister::default(),
        gdtr: hv_defs::TableRegister {
            pad: [0; 3],
            limit: 0x27,
            base: GDT,
        },
        efer: 0,
        cr0: 0x11,
        cr3: 0,
        cr4: 0,
        msr_cr_pat: 0x0007_0406_0007_0406,
    }
}

/// Runs VP 0 with `registers` set and its suspend cleared, on a thread of its
/// own, until it writes DONE: every port write it made, in order.
pub fn run_bsp_reports(
    p: &Arc<Partition>,
    registers: &[(HvRegisterName, HvRegisterValue)],
) -> Vec<(u16, u32)> {
    let mut v = p.create_vp(vp(0)).unwrap();
    v.set_registers(registers).unwrap();
    p.set_explicit_suspend(vp(0), false).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || run_reporting(v, tx));
    let got: Vec<(u16, u32)> = rx.iter().map(|r| (r.port, r.value)).collect();
    t.join().expect("VP thread");
    got
}

/// The values written to `port` in `got`.
pub fn writes_to(got: &[(u16, u32)], port: u16) -> Vec<u32> {
    got.iter()
        .filter(|(q, _)| *q == port)
        .map(|&(_, v)| v)
        .collect()
}

/// The one value written to `port` in `got` (fails the test otherwise).
pub fn only(got: &[(u16, u32)], port: u16) -> u32 {
    let v = writes_to(got, port);
    assert_eq!(v.len(), 1, "port {port:#x}: {v:x?} (all: {got:x?})");
    v[0]
}

/// The u64 at `gpa` in the partition's RAM.
pub fn read_u64(p: &Partition, gpa: u64) -> u64 {
    p.memory().read_obj(GuestAddress(gpa)).unwrap()
}
