//! What stock KVM does with the accesses VTL memory protections will be made
//! of (`shared/docs/vsm.md` §4.3, §6: "probe it"): a read of a GPA with no
//! memslot, a write to a read-only memslot, `rep movs` from a hole, an
//! instruction fetch from a hole and a page-table walk through a hole; and
//! whether an MMIO exit can be completed without the instruction retiring
//! (KVM_RUN with `immediate_exit`, then the registers put back), so that the
//! access is retried once the page is mapped. Raw KVM, no partition: the
//! memslots are this test's own. Runs on both tiers.
//!
//! Found (PVM and the nested tier alike unless said): a read exits with RIP
//! at the load and can be aborted (completed, registers put back) and
//! retried; a write exits with RIP already past the store (only the data is
//! deferred), so aborting one needs the instruction's length; `rep movsb`
//! exits per byte, RIP at the instruction; a fetch is an emulation failure
//! at the fetched address; a page walk through a hole is an MMIO read of the
//! entry on hardware paging, a guest fault on PVM; 32764 memslots.

mod common;

use common::*;
use hv_partition::kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use hv_partition::kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// A read-only page, then a hole (no memslot), inside the first 2 MiB.
const RO: u64 = 0x10_0000;
const HOLE: u64 = 0x10_1000;
const AFTER: u64 = 0x10_2000;

struct Vm {
    _kvm: Kvm,
    vm: VmFd,
    vcpu: VcpuFd,
    mem: GuestMemoryMmap,
    host: u64,
}

fn region(slot: u32, gpa: u64, len: u64, host: u64, flags: u32) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: len,
        userspace_addr: host + gpa,
    }
}

fn make_vm(code: &[u8]) -> Vm {
    let kvm = Kvm::new().unwrap_or_else(|e| panic!("{e}: the probe needs /dev/kvm"));
    assert!(
        kvm.check_extension(Cap::ReadonlyMem),
        "KVM_CAP_READONLY_MEM is missing on this KVM"
    );
    let vm = kvm.create_vm().unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    let regions = [
        region(0, 0, RO, host, 0),
        region(1, RO, 0x1000, host, KVM_MEM_READONLY),
        region(2, AFTER, RAM - AFTER, host, 0),
    ];
    for r in regions {
        // SAFETY: every region lies inside `mem`'s mapping, which outlives
        // the VM (both are in the returned Vm, the VM dropped first).
        unsafe { vm.set_user_memory_region(r) }.unwrap();
    }
    write_tables(&mem);
    mem.write_slice(code, GuestAddress(CODE)).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let cpuid = kvm
        .get_supported_cpuid(hv_partition::kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    vcpu.set_cpuid2(&cpuid).unwrap();
    let k = hv_regs::context_to_kvm(&ctx64(CODE, stack(0)), &vcpu.get_sregs().unwrap()).unwrap();
    vcpu.set_sregs(&k.sregs).unwrap();
    vcpu.set_regs(&k.regs).unwrap();
    Vm {
        _kvm: kvm,
        vm,
        vcpu,
        mem,
        host,
    }
}

/// One exit, owned.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Read(u64, usize),
    Write(u64, Vec<u8>),
    Out(u16, u32),
    Other(String),
}

fn run_once(v: &mut VcpuFd, read_data: u8) -> Seen {
    match v.run() {
        Ok(VcpuExit::MmioRead(gpa, data)) => {
            data.fill(read_data);
            Seen::Read(gpa, data.len())
        }
        Ok(VcpuExit::MmioWrite(gpa, data)) => Seen::Write(gpa, data.to_vec()),
        Ok(VcpuExit::IoOut(port, data)) => {
            let mut b = [0u8; 4];
            b[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
            Seen::Out(port, u32::from_le_bytes(b))
        }
        Ok(other) => Seen::Other(format!("{other:?}")),
        Err(e) => Seen::Other(format!("error {e}")),
    }
}

/// Completes the exit in flight without running a further instruction.
fn complete(v: &mut VcpuFd) {
    v.set_kvm_immediate_exit(1);
    let r = v.run().map(|e| format!("{e:?}")).map_err(|e| e.errno());
    v.set_kvm_immediate_exit(0);
    assert_eq!(r, Err(libc_eintr()), "completion");
}

fn libc_eintr() -> i32 {
    4
}

/// The abort technique for a protected read: the instruction does not
/// retire (RIP and the destination register as before the access) and, once
/// the page is mapped, the retried read returns the RAM's bytes.
#[test]
fn an_mmio_read_can_be_aborted_and_retried_after_mapping() {
    // mov rax, [HOLE]; out 0x10, eax; spin
    let mut code = vec![0x48, 0x8B, 0x04, 0x25];
    code.extend((HOLE as u32).to_le_bytes());
    code.extend([0xE7, 0x10, 0xEB, 0xFE]);
    let mut vm = make_vm(&code);
    vm.mem
        .write_obj(0x1122_3344_5566_7788u64, GuestAddress(HOLE))
        .unwrap();
    let before = vm.vcpu.get_regs().unwrap();
    assert_eq!(run_once(&mut vm.vcpu, 0xEE), Seen::Read(HOLE, 8));
    let at_exit = vm.vcpu.get_regs().unwrap();
    assert_eq!(at_exit.rip, CODE, "RIP at the faulting load");
    complete(&mut vm.vcpu);
    let done = vm.vcpu.get_regs().unwrap();
    assert_eq!(done.rax, 0xEEEE_EEEE_EEEE_EEEE, "the completion retired it");
    vm.vcpu.set_regs(&at_exit).unwrap();
    assert_eq!(vm.vcpu.get_regs().unwrap().rax, before.rax);
    // The page is mapped (the protection lifted): the read is retried.
    // SAFETY: inside `mem`'s mapping, as in `vm`.
    unsafe {
        vm.vm
            .set_user_memory_region(region(3, HOLE, 0x1000, vm.host, 0))
    }
    .unwrap();
    assert_eq!(run_once(&mut vm.vcpu, 0), Seen::Out(0x10, 0x5566_7788));
}

/// A write to a read-only memslot exits as an MMIO write with the data and
/// leaves RAM alone, but the store has already retired: RIP is past it at
/// the exit, on both tiers. Aborting a write therefore needs the
/// instruction's length, which the exit does not give.
#[test]
fn a_write_to_a_read_only_slot_exits_after_the_store_retired() {
    // mov rbx, imm64; mov [RO], rbx; out 0x10, eax; spin
    let mut code = vec![0x48, 0xBB];
    code.extend(0xAABB_CCDD_EEFF_0011u64.to_le_bytes());
    code.extend([0x48, 0x89, 0x1C, 0x25]);
    code.extend((RO as u32).to_le_bytes());
    code.extend([0xE7, 0x10, 0xEB, 0xFE]);
    let mut vm = make_vm(&code);
    vm.mem.write_obj(0x5A5A_5A5Au32, GuestAddress(RO)).unwrap();
    assert_eq!(
        run_once(&mut vm.vcpu, 0),
        Seen::Write(RO, 0xAABB_CCDD_EEFF_0011u64.to_le_bytes().to_vec())
    );
    let store = CODE + 10;
    assert_eq!(
        vm.vcpu.get_regs().unwrap().rip,
        store + 8,
        "RIP past the store"
    );
    complete(&mut vm.vcpu);
    assert_eq!(vm.vcpu.get_regs().unwrap().rip, store + 8);
    assert_eq!(
        vm.mem.read_obj::<u32>(GuestAddress(RO)).unwrap(),
        0x5A5A_5A5A
    );
    assert_eq!(run_once(&mut vm.vcpu, 0), Seen::Out(0x10, 0));
}

/// The memslot limit, and three accesses protections must turn into
/// intercepts: `rep movsb` from a hole exits once per byte with RIP at the
/// instruction and the registers of the iteration; an instruction fetch from
/// a hole is an emulation failure with RIP at the fetched address; a page
/// walk through a hole is an MMIO read of the table entry with RIP at the
/// instruction on hardware paging (the nested tier), while PVM's shadow
/// paging takes it as a fault the test guest cannot handle (a shutdown).
#[test]
fn rep_movs_fetch_and_page_walk_through_a_hole() {
    let kvm = Kvm::new().unwrap_or_else(|e| panic!("{e}: the probe needs /dev/kvm"));
    let slots = kvm.get_nr_memslots();
    eprintln!("KVM_CAP_NR_MEMSLOTS: {slots}");
    assert!(slots >= 509, "{slots} memslots");
    // mov rsi, HOLE; mov rdi, DATA; mov ecx, 16; rep movsb; out 0x11
    let mut code = vec![0x48, 0xC7, 0xC6];
    code.extend((HOLE as u32).to_le_bytes());
    code.extend([0x48, 0xC7, 0xC7]);
    code.extend((DATA as u32).to_le_bytes());
    code.extend([0xB9, 16, 0, 0, 0, 0xF3, 0xA4, 0xE7, 0x11, 0xEB, 0xFE]);
    let mut vm = make_vm(&code);
    assert_eq!(run_once(&mut vm.vcpu, 0x42), Seen::Read(HOLE, 1));
    let regs = vm.vcpu.get_regs().unwrap();
    assert_eq!((regs.rip, regs.rcx, regs.rsi), (CODE + 19, 16, HOLE));
    let mut reads = 1;
    let last = loop {
        let s = run_once(&mut vm.vcpu, 0x42);
        if !matches!(s, Seen::Read(..)) || reads > 64 {
            break s;
        }
        reads += 1;
    };
    assert_eq!((reads, last), (16, Seen::Out(0x11, 0)));
    assert_eq!(
        vm.mem.read_obj::<[u8; 16]>(GuestAddress(DATA)).unwrap(),
        [0x42; 16]
    );
    // mov rax, HOLE; jmp rax
    let mut code = vec![0x48, 0xC7, 0xC0];
    code.extend((HOLE as u32).to_le_bytes());
    code.extend([0xFF, 0xE0]);
    let mut vm = make_vm(&code);
    assert_eq!(
        run_once(&mut vm.vcpu, 0x90),
        Seen::Other("InternalError".into())
    );
    assert_eq!(vm.vcpu.get_regs().unwrap().rip, HOLE);
    // A 1 GiB region whose page directory is in the hole (PDPT[1] -> HOLE):
    // mov rax, 0x40000000; mov rax, [rax]
    let mut code = vec![0x48, 0xB8];
    code.extend(0x4000_0000u64.to_le_bytes());
    code.extend([0x48, 0x8B, 0x00, 0xE7, 0x12, 0xEB, 0xFE]);
    let mut vm = make_vm(&code);
    vm.mem.write_obj(HOLE | 3, GuestAddress(PDPT + 8)).unwrap();
    let walk = run_once(&mut vm.vcpu, 0);
    let rip = vm.vcpu.get_regs().unwrap().rip;
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(walk, Seen::Other("Shutdown".into()), "PVM");
    } else {
        assert_eq!((walk, rip), (Seen::Read(HOLE, 8), CODE + 10));
    }
}
