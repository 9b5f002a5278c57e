//! Every hypercall input layout read from guest bytes at a guest-chosen GPA:
//! never a panic; accepted only when the block is 8-byte aligned, within one
//! page and long enough; what is accepted reads back as the same bytes; and an
//! accepted HV_INITIAL_VP_CONTEXT converts to KVM state or is refused cleanly.
#![no_main]

use hv_defs::{
    check_parameter_block, ApicIdElement, CreateVpInput, EnableVpVtlInput,
    GetVpIndexFromApicIdHeader, GetVpRegistersElement, GuestInput, InputError,
    SetVpRegistersElement, StartVirtualProcessorInput, VpRegistersHeader,
};
use libfuzzer_sys::fuzz_target;

fn one<T: GuestInput>(bytes: &[u8], gpa: u64) -> Option<T> {
    let size = core::mem::size_of::<T>();
    let r = T::read_from_guest(bytes, gpa);
    match &r {
        Ok(v) => {
            assert!(check_parameter_block(gpa, size as u64).is_ok());
            assert!(bytes.len() >= size);
            assert_eq!(v.as_bytes(), &bytes[..size]);
        }
        Err(InputError::Misaligned { .. }) => assert_ne!(gpa % 8, 0),
        Err(InputError::CrossesPage { .. }) => assert!(gpa % 4096 + size as u64 > 4096),
        Err(InputError::Short { needed, available }) => {
            assert_eq!((*needed, *available), (size, bytes.len()))
        }
        Err(InputError::Reserved { .. }) => {}
    }
    if let Err(e) = &r {
        let _ = (e.status(), e.to_string());
    }
    // parse() is the placement-free read of rep elements.
    let _ = T::parse(bytes);
    r.ok()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let gpa = u64::from_le_bytes(data[..8].try_into().unwrap());
    let bytes = &data[8..];
    if let Some(start) = one::<StartVirtualProcessorInput>(bytes, gpa) {
        let _ = hv_regs::context_to_kvm(&start.vp_context, &Default::default());
    }
    if let Some(enable) = one::<EnableVpVtlInput>(bytes, gpa) {
        let _ = hv_regs::context_to_kvm(&enable.vp_vtl_context, &Default::default());
    }
    one::<CreateVpInput>(bytes, gpa);
    if let Some(h) = one::<VpRegistersHeader>(bytes, gpa) {
        let _ = h.input_vtl.target();
    }
    one::<GetVpRegistersElement>(bytes, gpa);
    one::<SetVpRegistersElement>(bytes, gpa);
    if let Some(h) = one::<GetVpIndexFromApicIdHeader>(bytes, gpa) {
        let _ = h.target_vtl.target();
    }
    one::<ApicIdElement>(bytes, gpa);
});
