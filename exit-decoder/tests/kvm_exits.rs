//! Real exits from a small real-mode guest on `/dev/kvm`, decoded.

use exit_decoder::*;
use kvm_bindings::{kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_X86_USER_SPACE_MSR};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The trap port these tests' guests use (the VMM's choice, not this crate's).
const HYPERCALL_PORT: u16 = 0xE0;

const RAM: usize = 0x8000; // 0x8000 and up is MMIO.
const CODE: u64 = 0x1000;

struct Guest {
    _kvm: Kvm,
    _vm: VmFd,
    _mem: GuestMemoryMmap,
    vcpu: VcpuFd,
}

fn guest(code: &[u8]) -> Guest {
    let kvm = Kvm::new().unwrap_or_else(|e| {
        panic!("cannot open /dev/kvm ({e}): these tests need KVM on the host running them")
    });
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
    mem.write_slice(code, GuestAddress(CODE)).unwrap();
    let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: RAM as u64,
        userspace_addr: host,
    };
    // SAFETY: `mem` maps RAM bytes at `host`; both it and the VM are kept in the
    // returned Guest, whose field order drops the VM before the memory.
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    // Unknown MSRs exit to user space instead of raising #GP in the kernel.
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [kvm_bindings::KVM_MSR_EXIT_REASON_UNKNOWN as u64, 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).expect("KVM_CAP_X86_USER_SPACE_MSR");
    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    enable_sync_regs(&mut vcpu);
    Guest {
        _kvm: kvm,
        _vm: vm,
        _mem: mem,
        vcpu,
    }
}

#[test]
fn port_mmio_msr_hypercall_and_halt() {
    #[rustfmt::skip]
    let code = [
        0xB0, 0x42,             // mov al, 0x42
        0xE6, 0x10,             // out 0x10, al
        0xE4, 0x11,             // in al, 0x11
        0xE6, 0x12,             // out 0x12, al        (echo)
        0xA2, 0x00, 0x80,       // mov [0x8000], al    (MMIO write)
        0xA0, 0x08, 0x80,       // mov al, [0x8008]    (MMIO read)
        0xE6, 0x13,             // out 0x13, al        (echo)
        0x66, 0xB9, 0x01, 0x00, 0xAD, 0xDE, // mov ecx, 0xDEAD0001
        0x0F, 0x32,             // rdmsr               (unknown MSR -> user space)
        0xE6, 0x14,             // out 0x14, al        (low byte of the MSR value)
        0x66, 0xB9, 0x99, 0x00, 0x01, 0x00, // mov ecx, 0x00010099 (StartVP, fast)
        0x66, 0xBA, 0x00, 0x50, 0x00, 0x00, // mov edx, 0x5000
        0x66, 0xE7, 0xE0,       // out 0xE0, eax       (the hypercall page's trap)
        0xF4,                   // hlt
    ];
    let mut g = guest(&code);

    match decode(g.vcpu.run()) {
        VpExit::IoPortAccess { port: 0x10, access } => {
            assert_eq!(access, Access::Write(&[0x42]));
            assert_eq!(access.written_value(), Some(0x42));
            assert!(access.is_write() && !access.is_empty());
        }
        e => panic!("expected OUT 0x10, got {e:?}"),
    }
    match decode(g.vcpu.run()) {
        VpExit::IoPortAccess {
            port: 0x11,
            access: Access::Read(d),
        } => d[0] = 0x77,
        e => panic!("expected IN 0x11, got {e:?}"),
    }
    match decode(g.vcpu.run()) {
        VpExit::IoPortAccess { port: 0x12, access } => {
            assert_eq!(access.written_value(), Some(0x77))
        }
        e => panic!("expected OUT 0x12, got {e:?}"),
    }
    match decode(g.vcpu.run()) {
        VpExit::MemoryAccess {
            gpa: 0x8000,
            access,
        } => {
            assert_eq!(access, Access::Write(&[0x77]));
            assert_eq!(access.len(), 1);
        }
        e => panic!("expected MMIO write, got {e:?}"),
    }
    match decode(g.vcpu.run()) {
        VpExit::MemoryAccess {
            gpa: 0x8008,
            access: Access::Read(d),
        } => {
            assert_eq!(d.len(), 1);
            d[0] = 0x5C;
        }
        e => panic!("expected MMIO read, got {e:?}"),
    }
    match decode(g.vcpu.run()) {
        VpExit::IoPortAccess { port: 0x13, access } => {
            assert_eq!(access.written_value(), Some(0x5C))
        }
        e => panic!("expected OUT 0x13, got {e:?}"),
    }
    match decode(g.vcpu.run()) {
        VpExit::MsrAccess(m) => {
            assert_eq!(m.index, 0xDEAD_0001);
            assert_eq!(m.written, None);
            *m.read.unwrap() = 0x1234_5678_9ABC_DE3C;
        }
        e => panic!("expected RDMSR, got {e:?}"),
    }
    match decode(g.vcpu.run()) {
        VpExit::IoPortAccess { port: 0x14, access } => {
            assert_eq!(access.written_value(), Some(0x3C))
        }
        e => panic!("expected OUT 0x14, got {e:?}"),
    }
    let trap = decode(g.vcpu.run()).is_hypercall_trap(HYPERCALL_PORT);
    assert!(
        trap,
        "the 32-bit OUT to the hypercall port is a hypercall trap"
    );
    let hc = HypercallExit::from_regs(&sync_regs(&g.vcpu));
    assert_eq!(
        hc.control.code(),
        hv_defs::HypercallCode::START_VIRTUAL_PROCESSOR
    );
    assert!(hc.control.fast());
    assert_eq!(hc.control.rep_count(), 0);
    assert_eq!(hc.rdx, 0x5000);
    set_rax_on_next_run(&mut g.vcpu, 0x15);
    assert!(matches!(decode(g.vcpu.run()), VpExit::Halt));
    // The result written through the synced registers reached the guest.
    assert_eq!(g.vcpu.get_regs().unwrap().rax & 0xFFFF, 0x15);
}

#[test]
fn rejected_msr_write_and_8_bit_trap_is_not_a_hypercall() {
    #[rustfmt::skip]
    let code = [
        0x66, 0xB9, 0x02, 0x00, 0xAD, 0xDE, // mov ecx, 0xDEAD0002
        0x66, 0xB8, 0x44, 0x33, 0x22, 0x11, // mov eax, 0x11223344
        0x66, 0xBA, 0x88, 0x77, 0x66, 0x55, // mov edx, 0x55667788
        0x0F, 0x30,                         // wrmsr
        0xE6, 0xE0,                         // out 0xE0, al: 1 byte, not the trap
        0xF4,
    ];
    let mut g = guest(&code);
    match decode(g.vcpu.run()) {
        VpExit::MsrAccess(m) => {
            assert_eq!(
                (m.index, m.written),
                (0xDEAD_0002, Some(0x5566_7788_1122_3344))
            );
            assert!(m.read.is_none());
        }
        e => panic!("expected WRMSR, got {e:?}"),
    }
    let e = decode(g.vcpu.run());
    assert!(!e.is_hypercall_trap(HYPERCALL_PORT), "{e:?}");
    assert!(matches!(e, VpExit::IoPortAccess { port: 0xE0, .. }));
}

#[test]
fn canceled_by_immediate_exit() {
    let mut g = guest(&[0xF4]);
    g.vcpu.set_kvm_immediate_exit(1);
    assert!(matches!(decode(g.vcpu.run()), VpExit::Canceled));
    g.vcpu.set_kvm_immediate_exit(0);
    assert!(matches!(decode(g.vcpu.run()), VpExit::Halt));
}

#[test]
fn triple_fault_is_an_unrecoverable_exception() {
    #[rustfmt::skip]
    let code = [
        0x0F, 0x01, 0x1E, 0x00, 0x11, // lidt [0x1100]: limit 0, base 0
        0x0F, 0x0B,                   // ud2: #UD cannot be delivered -> shutdown
    ];
    let g = &mut guest(&code);
    let e = decode(g.vcpu.run());
    match e {
        VpExit::UnrecoverableException => {}
        VpExit::InternalError => {
            // Some hosts (PVM) end real-mode exception delivery in the emulator.
            let ie = InternalError::from_run(g.vcpu.get_kvm_run());
            panic!("got an internal error instead of a shutdown: {ie:?}");
        }
        e => panic!("expected shutdown, got {e:?}"),
    }
}

#[test]
fn internal_error_details_decode_from_kvm_run() {
    let mut run = kvm_bindings::kvm_run {
        exit_reason: kvm_bindings::KVM_EXIT_INTERNAL_ERROR,
        ..Default::default()
    };
    // SAFETY: writing plain data into the exit union of a local kvm_run.
    let internal = unsafe { &mut run.__bindgen_anon_1.internal };
    internal.suberror = InternalError::EMULATION;
    internal.ndata = 4;
    internal.data[0] = 1; // KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
                          // insn_size = 3, bytes 0F 01 CA (clac)
    internal.data[1] = u64::from_le_bytes([3, 0x0F, 0x01, 0xCA, 0, 0, 0, 0]);
    internal.data[2] = 0;
    internal.data[3] = 0xFFFF;
    let e = InternalError::from_run(&run);
    assert_eq!(e.suberror, InternalError::EMULATION);
    assert_eq!(e.data.len(), 4);
    assert_eq!(
        e.instruction_bytes.as_deref(),
        Some(&[0x0F, 0x01, 0xCA][..])
    );
    // Hostile contents: ndata beyond the array, an oversized length.
    // SAFETY: as above.
    let internal = unsafe { &mut run.__bindgen_anon_1.internal };
    internal.ndata = u32::MAX;
    internal.data[1] = u64::from_le_bytes([0xFF, 1, 2, 3, 4, 5, 6, 7]);
    let e = InternalError::from_run(&run);
    assert_eq!(e.data.len(), 16);
    assert_eq!(e.instruction_bytes.unwrap().len(), 15);
    // Other sub-errors carry no instruction bytes.
    // SAFETY: as above.
    let internal = unsafe { &mut run.__bindgen_anon_1.internal };
    internal.suberror = InternalError::SIMUL_EX;
    assert_eq!(InternalError::from_run(&run).instruction_bytes, None);
}

#[test]
fn every_vcpu_exit_variant_decodes() {
    use kvm_ioctls::VcpuExit as V;
    let mut byte = [0u8; 1];
    assert!(matches!(decode(Ok(V::Hlt)), VpExit::Halt));
    assert!(matches!(
        decode(Ok(V::IrqWindowOpen)),
        VpExit::InterruptWindow
    ));
    assert!(matches!(
        decode(Ok(V::IoapicEoi(0x31))),
        VpExit::ApicEoi { vector: 0x31 }
    ));
    assert!(matches!(
        decode(Ok(V::Shutdown)),
        VpExit::UnrecoverableException
    ));
    assert!(matches!(
        decode(Ok(V::FailEntry(7, 1))),
        VpExit::InvalidVpRegisterValue {
            hardware_reason: 7,
            cpu: 1
        }
    ));
    assert!(matches!(decode(Ok(V::Intr)), VpExit::Canceled));
    assert!(matches!(
        decode(Ok(V::SystemEvent(2, &[9]))),
        VpExit::SystemEvent { kind: 2, data: [9] }
    ));
    assert!(matches!(
        decode(Ok(V::InternalError)),
        VpExit::InternalError
    ));
    assert!(matches!(
        decode(Ok(V::MemoryFault {
            flags: 8,
            gpa: 0x1000,
            size: 4096
        })),
        VpExit::MemoryFault {
            gpa: 0x1000,
            size: 4096,
            flags: 8
        }
    ));
    assert!(matches!(decode(Ok(V::Exception)), VpExit::Exception));
    // Every datum KVM gives is kept.
    let arch = kvm_bindings::kvm_debug_exit_arch {
        exception: 1,
        pad: 0,
        pc: 0x1234,
        dr6: 0xFFFF_0FF1,
        dr7: 0x401,
    };
    assert!(
        matches!(decode(Ok(V::Debug(arch))), VpExit::Debug(a) if a.pc == 0x1234 && a.dr6 == 0xFFFF_0FF1)
    );
    let mut ret = 0u64;
    match decode(Ok(V::Hypercall(kvm_ioctls::HypercallExit {
        nr: 12,
        args: [1, 2, 3, 4, 5, 6],
        ret: &mut ret,
        longmode: 1,
    }))) {
        VpExit::KvmHypercall {
            nr: 12,
            args,
            ret,
            longmode: true,
        } => {
            assert_eq!(args, [1, 2, 3, 4, 5, 6]);
            *ret = 7;
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ret, 7);
    assert!(matches!(decode(Ok(V::Nmi)), VpExit::Nmi));
    assert!(matches!(decode(Ok(V::Hyperv)), VpExit::Hyperv));
    assert!(matches!(
        decode(Ok(V::Unsupported(99))),
        VpExit::Other { reason: 99 }
    ));
    for (e, reason) in [
        (V::SetTpr, kvm_bindings::KVM_EXIT_SET_TPR),
        (V::TprAccess, kvm_bindings::KVM_EXIT_TPR_ACCESS),
        (V::Unknown, 0),
        (V::Watchdog, 0),
    ] {
        assert!(matches!(decode(Ok(e)), VpExit::Other { reason: r } if r == reason));
    }
    assert!(matches!(
        decode(Err(kvm_ioctls::Error::new(11))),
        VpExit::Canceled
    ));
    assert!(matches!(
        decode(Err(kvm_ioctls::Error::new(14))),
        VpExit::RunFailed { errno: 14 }
    ));
    let r = decode(Ok(V::IoIn(0x60, &mut byte)));
    assert!(!r.is_hypercall_trap(0x60));
    assert_eq!(
        match r {
            VpExit::IoPortAccess { access, .. } => access.written_value(),
            _ => Some(1),
        },
        None
    );
}
