//! The hypercall input value (RCX / EDX:EAX) a guest passes, and the result
//! value built from it: decoding never panics, and `check` accepts exactly the
//! words the TLFS allows.
#![no_main]

use hv_defs::{CallKind, HvError, HypercallControl, HypercallResult, HvStatus};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: [u8; 8]| {
    let c = HypercallControl(u64::from_le_bytes(data));
    let _ = format!("{c:?}");
    let code = c.code();
    match c.check() {
        Ok(kind) => {
            assert_eq!(c.reserved_bits(), 0, "{c:?}");
            assert_eq!(code.kind(), Some(kind));
            match kind {
                CallKind::Simple => assert!(c.rep_count() == 0 && c.rep_start_index() == 0),
                CallKind::Rep => assert!(c.rep_start_index() < c.rep_count()),
            }
            let r = HypercallResult::new(HvStatus::SUCCESS, c.rep_count());
            assert_eq!(r.reps_completed(), c.rep_count());
        }
        Err(e) => {
            assert_ne!(e, HvError::INVALID_PARAMETER, "{c:?}");
            let r = HypercallResult::error(e);
            assert_eq!(r.status(), e.status());
            assert_eq!(r.reps_completed(), 0);
        }
    }
    // The builders keep every other field.
    let rebuilt = HypercallControl::new(code)
        .with_fast(c.fast())
        .with_variable_header_size(c.variable_header_size())
        .with_rep_count(c.rep_count())
        .with_rep_start_index(c.rep_start_index());
    assert_eq!(rebuilt.0 | c.reserved_bits() | (c.0 & (1 << 31)), c.0);
});
