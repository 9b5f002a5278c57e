//! HvSetVpRegisters as a guest drives it: arbitrary names and values, one by
//! one and as a batch, against an in-memory vCPU. Never a panic; a refused value
//! or batch leaves the vCPU exactly as it was; every accepted single write
//! passes validation for the vCPU's vendor.
#![no_main]

use std::cell::RefCell;
use std::collections::BTreeMap;

use hv_defs::HvRegisterValue;
use hv_regs::{
    get_register, set_register, set_registers, validate_for, AccessError, CpuVendor,
    HvRegisterName, Synthetic, VcpuRegisters,
};
use kvm_bindings::{kvm_debugregs, kvm_regs, kvm_sregs};
use libfuzzer_sys::fuzz_target;

#[derive(Clone, Default, PartialEq, Debug)]
struct State {
    regs: kvm_regs,
    sregs: kvm_sregs,
    dregs: kvm_debugregs,
    xcr0: u64,
    msrs: BTreeMap<u32, u64>,
    mp: u32,
    synthetic: BTreeMap<String, u64>,
}

struct Fake {
    s: RefCell<State>,
    vendor: CpuVendor,
}

impl VcpuRegisters for Fake {
    type Error = ();
    fn get_regs(&self) -> Result<kvm_regs, ()> {
        Ok(self.s.borrow().regs)
    }
    fn set_regs(&self, r: &kvm_regs) -> Result<(), ()> {
        self.s.borrow_mut().regs = *r;
        Ok(())
    }
    fn get_sregs(&self) -> Result<kvm_sregs, ()> {
        Ok(self.s.borrow().sregs)
    }
    fn set_sregs(&self, r: &kvm_sregs) -> Result<(), ()> {
        self.s.borrow_mut().sregs = *r;
        Ok(())
    }
    fn get_debugregs(&self) -> Result<kvm_debugregs, ()> {
        Ok(self.s.borrow().dregs)
    }
    fn set_debugregs(&self, d: &kvm_debugregs) -> Result<(), ()> {
        self.s.borrow_mut().dregs = *d;
        Ok(())
    }
    fn get_xcr0(&self) -> Result<u64, ()> {
        Ok(self.s.borrow().xcr0)
    }
    fn set_xcr0(&self, v: u64) -> Result<(), ()> {
        self.s.borrow_mut().xcr0 = v;
        Ok(())
    }
    fn get_msr(&self, i: u32) -> Result<u64, ()> {
        Ok(self.s.borrow().msrs.get(&i).copied().unwrap_or(0))
    }
    fn set_msr(&self, i: u32, v: u64) -> Result<(), ()> {
        self.s.borrow_mut().msrs.insert(i, v);
        Ok(())
    }
    fn get_mp_state(&self) -> Result<u32, ()> {
        Ok(self.s.borrow().mp)
    }
    fn set_mp_state(&self, m: u32) -> Result<(), ()> {
        self.s.borrow_mut().mp = m;
        Ok(())
    }
    fn get_synthetic(&self, r: Synthetic) -> Option<Result<u64, ()>> {
        Some(Ok(self.s.borrow().synthetic.get(&format!("{r:?}")).copied().unwrap_or(0)))
    }
    fn set_synthetic(&self, r: Synthetic, v: u64) -> Option<Result<(), ()>> {
        self.s.borrow_mut().synthetic.insert(format!("{r:?}"), v);
        Some(Ok(()))
    }
    fn cpu_vendor(&self) -> CpuVendor {
        self.vendor
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&v, rest)) = data.split_first() else {
        return;
    };
    let vendor = match v % 3 {
        0 => CpuVendor::Intel,
        1 => CpuVendor::Amd,
        _ => CpuVendor::Other,
    };
    let fake = Fake {
        s: RefCell::new(State::default()),
        vendor,
    };
    let mut batch = Vec::new();
    for chunk in rest.chunks_exact(20) {
        // Names are drawn mostly from the known set, so the values get exercised.
        let raw = u32::from_le_bytes(chunk[..4].try_into().unwrap());
        let name = if raw & 0x8000_0000 != 0 {
            HvRegisterName(raw & 0x7FFF_FFFF)
        } else {
            HvRegisterName::KNOWN[raw as usize % HvRegisterName::KNOWN.len()]
        };
        let value = HvRegisterValue {
            low: u64::from_le_bytes(chunk[4..12].try_into().unwrap()),
            high: u64::from_le_bytes(chunk[12..20].try_into().unwrap()),
        };
        batch.push((name, value));
    }
    let before = fake.s.borrow().clone();
    if let Err((i, e)) = set_registers(&fake, &batch) {
        assert!(i < batch.len());
        assert!(matches!(e, AccessError::Fault(_)), "the fake never fails");
        assert_eq!(*fake.s.borrow(), before, "a refused batch wrote something");
    }
    for &(name, value) in &batch {
        let before = fake.s.borrow().clone();
        match set_register(&fake, name, value) {
            Ok(()) => {
                assert!(validate_for(name, value, vendor).is_ok());
                let _ = get_register(&fake, name);
            }
            Err(e) => {
                let _ = (e.status(), format!("{e:?}"));
                assert_eq!(*fake.s.borrow(), before, "a refused write wrote something");
            }
        }
    }
});
