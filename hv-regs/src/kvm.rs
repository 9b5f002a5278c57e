//! The KVM backend: [`VcpuRegisters`] over a `kvm_ioctls::VcpuFd`.

use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_xcrs, Msrs,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;

use crate::{CpuVendor, VcpuRegisters};

/// A KVM vCPU as a register backend: each [`VcpuRegisters`] method is the KVM
/// ioctl of its name. It keeps no VP model of its own (the VP-model registers
/// are refused as unknown); wrap it to add one.
///
/// ```no_run
/// use hv_regs::{get_register, set_register, HvRegisterName, KvmVcpu};
/// let kvm = kvm_ioctls::Kvm::new().unwrap();
/// let vm = kvm.create_vm().unwrap();
/// let fd = vm.create_vcpu(0).unwrap();
/// let vcpu = KvmVcpu::new(&fd).unwrap();
/// set_register(&vcpu, HvRegisterName::RAX, 0x1234u64.into()).unwrap();
/// assert_eq!(get_register(&vcpu, HvRegisterName::RAX).unwrap().low, 0x1234);
/// ```
#[derive(Debug)]
pub struct KvmVcpu<'a> {
    /// The vCPU.
    pub fd: &'a VcpuFd,
    /// The vendor its CPUID presents.
    pub vendor: CpuVendor,
}

impl<'a> KvmVcpu<'a> {
    /// The backend for `fd`, with the vendor read from the vCPU's CPUID
    /// (KVM_GET_CPUID2); a vCPU whose CPUID was never set presents
    /// [`CpuVendor::Other`].
    pub fn new(fd: &'a VcpuFd) -> Result<Self, kvm_ioctls::Error> {
        // No CPUID set yet (E2BIG/EINVAL on some hosts) presents no vendor.
        let vendor = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_or(CpuVendor::Other, |c| CpuVendor::of(c.as_slice()));
        Ok(KvmVcpu { fd, vendor })
    }
}

const EINVAL: i32 = 22;

impl VcpuRegisters for KvmVcpu<'_> {
    type Error = kvm_ioctls::Error;
    fn get_regs(&self) -> Result<kvm_regs, Self::Error> {
        self.fd.get_regs()
    }
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), Self::Error> {
        self.fd.set_regs(regs)
    }
    fn get_sregs(&self) -> Result<kvm_sregs, Self::Error> {
        self.fd.get_sregs()
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), Self::Error> {
        self.fd.set_sregs(sregs)
    }
    fn get_debugregs(&self) -> Result<kvm_debugregs, Self::Error> {
        self.fd.get_debug_regs()
    }
    fn set_debugregs(&self, d: &kvm_debugregs) -> Result<(), Self::Error> {
        self.fd.set_debug_regs(d)
    }
    fn get_xcr0(&self) -> Result<u64, Self::Error> {
        let x = self.fd.get_xcrs()?;
        let n = (x.nr_xcrs as usize).min(x.xcrs.len());
        Ok(x.xcrs[..n]
            .iter()
            .find(|x| x.xcr == 0)
            .map_or(0, |x| x.value))
    }
    fn set_xcr0(&self, value: u64) -> Result<(), Self::Error> {
        let mut x = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        x.xcrs[0].value = value;
        self.fd.set_xcrs(&x)
    }
    fn get_msr(&self, index: u32) -> Result<u64, Self::Error> {
        let mut m = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|_| kvm_ioctls::Error::new(EINVAL))?;
        match self.fd.get_msrs(&mut m)? {
            1 => Ok(m.as_slice()[0].data),
            _ => Err(kvm_ioctls::Error::new(EINVAL)),
        }
    }
    fn set_msr(&self, index: u32, data: u64) -> Result<(), Self::Error> {
        let m = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }])
        .map_err(|_| kvm_ioctls::Error::new(EINVAL))?;
        match self.fd.set_msrs(&m)? {
            1 => Ok(()),
            _ => Err(kvm_ioctls::Error::new(EINVAL)),
        }
    }
    fn get_mp_state(&self) -> Result<u32, Self::Error> {
        Ok(self.fd.get_mp_state()?.mp_state)
    }
    fn set_mp_state(&self, mp_state: u32) -> Result<(), Self::Error> {
        self.fd.set_mp_state(kvm_mp_state { mp_state })
    }
    fn cpu_vendor(&self) -> CpuVendor {
        self.vendor
    }
}
