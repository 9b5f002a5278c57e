//! The hypercall layer (`hv-hypercall`) as a guest drives it: an arbitrary
//! control word, input and output GPAs, and guest memory contents, against a VMM
//! that serves every call and fails some reps. Never a panic, and nothing
//! outside the output block the call names is ever written.
#![no_main]

use hv_defs::{
    HvError, HvInputVtl, HvRegisterName, HvRegisterValue, HvResult, HvStatus, HypercallCode,
    HypercallControl, HypercallResult, InitialVpContext, PartitionId, VpIndex, Vtl,
};
use hv_hypercall::*;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x4000;

/// Serves every call; fails the rep at `fail_at` if set.
struct Vmm {
    fail_at: Option<usize>,
}

impl Vmm {
    fn reps(&self, n: usize) -> HvRepResult {
        match self.fail_at {
            Some(i) if i < n => Err((HvError::INVALID_PARAMETER, i)),
            _ => Ok(()),
        }
    }
}

impl GetPartitionId for Vmm {
    fn get_partition_id(&mut self) -> HvResult<PartitionId> {
        Ok(PartitionId(1))
    }
}
impl NotifyLongSpinWait for Vmm {
    fn notify_long_spin_wait(&mut self, _: u64) -> HvResult<()> {
        Ok(())
    }
}
impl GetVpRegisters for Vmm {
    fn get_vp_registers(
        &mut self,
        _: PartitionId,
        _: VpIndex,
        _: HvInputVtl,
        names: &[HvRegisterName],
        values: &mut [HvRegisterValue],
    ) -> HvRepResult {
        assert_eq!(names.len(), values.len());
        values.fill(HvRegisterValue { low: !0, high: !0 });
        self.reps(names.len())
    }
}
impl SetVpRegisters for Vmm {
    fn set_vp_registers(
        &mut self,
        _: PartitionId,
        _: VpIndex,
        _: HvInputVtl,
        regs: &[(HvRegisterName, HvRegisterValue)],
    ) -> HvRepResult {
        self.reps(regs.len())
    }
}
impl EnableVpVtl for Vmm {
    fn enable_vp_vtl(&mut self, _: PartitionId, _: VpIndex, _: Vtl, _: &InitialVpContext) -> HvResult<()> {
        Ok(())
    }
}
impl StartVirtualProcessor for Vmm {
    fn start_virtual_processor(
        &mut self,
        _: PartitionId,
        _: VpIndex,
        _: Vtl,
        _: &InitialVpContext,
    ) -> HvResult<()> {
        Ok(())
    }
}
impl GetVpIndexFromApicId for Vmm {
    fn get_vp_index_from_apic_id(
        &mut self,
        _: PartitionId,
        _: HvInputVtl,
        ids: &[u32],
        out: &mut [VpIndex],
    ) -> HvRepResult {
        assert_eq!(ids.len(), out.len());
        out.fill(VpIndex(u32::MAX));
        self.reps(ids.len())
    }
}
/// Every call the dispatcher leaves to the VMM: it writes nothing.
impl Fallback for Vmm {
    fn hypercall(&mut self, call: HypercallInput) -> HypercallResult {
        HypercallResult::new(HvStatus::SUCCESS, call.control.rep_count())
    }
}
hv_hypercall::impl_calls!(Vmm:
    GetPartitionId,
    NotifyLongSpinWait,
    GetVpRegisters,
    SetVpRegisters,
    EnableVpVtl,
    StartVirtualProcessor,
    GetVpIndexFromApicId,
    Fallback,
);

fuzz_target!(|data: &[u8]| {
    if data.len() < 25 {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
    // Codes mostly from the served set, so the layouts get exercised.
    let served = [0x46u64, 0x08, 0x50, 0x51, 0x0F, 0x99, 0x9A];
    let mut control = word(0);
    if control & (1 << 15) == 0 {
        control = (control & !0xFFFF) | served[(control as usize >> 8) % served.len()];
    }
    let (input, output) = (word(8) % (MEM as u64 + 64), word(16) % (MEM as u64 + 64));
    let fail_at = (data[24] & 0x80 != 0).then_some((data[24] & 0x7F) as usize);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let mut image = vec![0xA5u8; MEM];
    for (i, b) in data[25..].iter().enumerate().take(MEM) {
        image[(input as usize + i) % MEM] = *b;
    }
    mem.write_slice(&image, GuestAddress(0)).unwrap();
    let c = HypercallControl(control);
    let r = dispatch(
        &mem,
        HypercallInput { control: c, input, output },
        &mut Vmm { fail_at },
    );
    let out_len = match c.code() {
        HypercallCode::GET_PARTITION_ID => 8,
        HypercallCode::GET_VP_REGISTERS => 16 * c.rep_count() as u64,
        HypercallCode::GET_VP_INDEX_FROM_APIC_ID => 4 * c.rep_count() as u64,
        _ => 0,
    };
    let mut after = vec![0u8; MEM];
    mem.read_slice(&mut after, GuestAddress(0)).unwrap();
    for (i, (a, b)) in image.iter().zip(&after).enumerate() {
        let i = i as u64;
        if a != b {
            assert!(
                i >= output && i < output + out_len,
                "byte {i:#x} written outside the output block {output:#x}+{out_len} ({r:?})"
            );
        }
    }
    assert!(r.reps_completed() <= c.rep_count());
});
