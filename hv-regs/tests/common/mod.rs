//! A [`VcpuRegisters`] implementation over a bare `kvm_ioctls::VcpuFd`, shared by the
//! KVM tests and the example.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;

use hv_defs::{InitialVpContext, SegmentAttributes, SegmentRegister, TableRegister};
use hv_regs::*;
use kvm_bindings::{kvm_debugregs, kvm_regs, kvm_sregs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// A bare KVM vCPU with the VP model's registers in a map.
pub struct TestVcpu {
    pub fd: VcpuFd,
    pub vendor: CpuVendor,
    pub synthetic: RefCell<HashMap<Synthetic, u64>>,
}

pub type E = kvm_ioctls::Error;

impl TestVcpu {
    /// The shipped KVM backend over this vCPU.
    fn kvm(&self) -> KvmVcpu<'_> {
        KvmVcpu {
            fd: &self.fd,
            vendor: self.vendor,
        }
    }
}

/// The KVM groups through [`KvmVcpu`]; the VP model's registers in a map.
impl VcpuRegisters for TestVcpu {
    type Error = E;
    fn get_regs(&self) -> Result<kvm_regs, E> {
        self.kvm().get_regs()
    }
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), E> {
        self.kvm().set_regs(regs)
    }
    fn get_sregs(&self) -> Result<kvm_sregs, E> {
        self.kvm().get_sregs()
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), E> {
        self.kvm().set_sregs(sregs)
    }
    fn get_debugregs(&self) -> Result<kvm_debugregs, E> {
        self.kvm().get_debugregs()
    }
    fn set_debugregs(&self, d: &kvm_debugregs) -> Result<(), E> {
        self.kvm().set_debugregs(d)
    }
    fn get_xcr0(&self) -> Result<u64, E> {
        self.kvm().get_xcr0()
    }
    fn set_xcr0(&self, value: u64) -> Result<(), E> {
        self.kvm().set_xcr0(value)
    }
    fn get_msr(&self, index: u32) -> Result<u64, E> {
        self.kvm().get_msr(index)
    }
    fn set_msr(&self, index: u32, data: u64) -> Result<(), E> {
        self.kvm().set_msr(index, data)
    }
    fn get_mp_state(&self) -> Result<u32, E> {
        self.kvm().get_mp_state()
    }
    fn set_mp_state(&self, mp_state: u32) -> Result<(), E> {
        self.kvm().set_mp_state(mp_state)
    }
    fn get_synthetic(&self, reg: Synthetic) -> Option<Result<u64, E>> {
        Some(Ok(self.synthetic.borrow().get(&reg).copied().unwrap_or(0)))
    }
    fn set_synthetic(&self, reg: Synthetic, value: u64) -> Option<Result<(), E>> {
        self.synthetic.borrow_mut().insert(reg, value);
        Some(Ok(()))
    }
    fn cpu_vendor(&self) -> CpuVendor {
        self.vendor
    }
}

pub fn open_kvm() -> Kvm {
    match Kvm::new() {
        Ok(k) => k,
        Err(e) => panic!(
            "cannot open /dev/kvm ({e}): these tests need KVM; run them on a host with \
             /dev/kvm readable and writable by this user"
        ),
    }
}

/// A VM with an in-kernel irqchip and one vCPU whose CPUID is KVM's supported set,
/// in 64-bit mode with the context Linux gives its APs.
pub fn long_mode_vcpu() -> (Kvm, VmFd, TestVcpu) {
    long_mode_vcpu_as(None)
}

/// [`long_mode_vcpu`] presenting the CPUID vendor string `vendor` (KVM's supported
/// set otherwise): register rules that differ by vendor follow the vendor the guest
/// is shown, in KVM as in hv-regs.
pub fn long_mode_vcpu_as(vendor: Option<&[u8; 12]>) -> (Kvm, VmFd, TestVcpu) {
    let kvm = open_kvm();
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let fd = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported CPUID");
    let leaf0 = cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == 0)
        .expect("CPUID leaf 0");
    if let Some(id) = vendor {
        let word = |i: usize| u32::from_le_bytes(id[i..i + 4].try_into().unwrap());
        (leaf0.ebx, leaf0.edx, leaf0.ecx) = (word(0), word(4), word(8));
    }
    let vendor = CpuVendor::of(cpuid.as_slice());
    fd.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
    let vcpu = TestVcpu {
        fd,
        vendor,
        synthetic: RefCell::new(HashMap::new()),
    };
    load_context(&vcpu, &long_mode_context()).expect("load a 64-bit context");
    (kvm, vm, vcpu)
}

pub fn seg(base: u64, limit: u32, selector: u16, attr: u16) -> SegmentRegister {
    SegmentRegister {
        base,
        limit,
        selector,
        attributes: SegmentAttributes(attr),
    }
}

pub fn long_mode_context() -> InitialVpContext {
    InitialVpContext {
        rip: 0x1000,
        rsp: 0x8000,
        rflags: 0x2,
        cs: seg(0, 0xFFFF_FFFF, 0x10, 0xA09B),
        ds: seg(0, 0xFFFF_FFFF, 0x18, 0xC093),
        es: seg(0, 0xFFFF_FFFF, 0x18, 0xC093),
        fs: seg(0, 0xFFFF_FFFF, 0x18, 0xC093),
        gs: seg(0, 0xFFFF_FFFF, 0x18, 0xC093),
        ss: seg(0, 0xFFFF_FFFF, 0x18, 0xC093),
        tr: seg(0x3000, 0x67, 0x20, 0x008B),
        ldtr: seg(0, 0, 0, 0x0082),
        idtr: TableRegister {
            pad: [0; 3],
            limit: 0xFFF,
            base: 0x4000,
        },
        gdtr: TableRegister {
            pad: [0; 3],
            limit: 0x27,
            base: 0x5000,
        },
        efer: 0xD01,
        cr0: 0x8005_0033,
        cr3: 0x10_0000,
        cr4: 0x20,
        msr_cr_pat: 0x0007_0406_0007_0406,
    }
}
