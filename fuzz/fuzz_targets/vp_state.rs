//! The VP lifecycle driven by an arbitrary sequence of events and observations:
//! never a panic, a refused event changes nothing, and the invariants hold after
//! every step (no VTL above 2 enabled or active, a running VP is not suspended,
//! the boot processor is always started).
#![no_main]

use hv_defs::{VpIndex, Vtl};
use libfuzzer_sys::fuzz_target;
use vp_state::{Activity, Event, VpState};

fn event(op: u8, arg: u8) -> Result<Event, Activity> {
    Ok(match op % 13 {
        0 => Event::SetExplicitSuspend(arg & 1 != 0),
        1 => Event::SetInterceptSuspend(arg & 1 != 0),
        2 => Event::Init,
        3 => Event::Sipi(arg),
        4 => Event::Start(Vtl(arg % 20)),
        5 => Event::EnableVtl(Vtl(arg % 20)),
        6 => Event::EnterRun,
        7 => Event::ExitRun,
        8 => Event::Halt,
        9 => Event::Wake,
        10 => return Err(Activity::WaitForSipi),
        11 => return Err(Activity::Runnable),
        _ => return Err(Activity::Halted),
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let index = VpIndex((data[0] % 4) as u32);
    let Ok(mut s) = VpState::new(index, Vtl(data[1] % 4)) else {
        assert!(data[1] % 4 > 2);
        return;
    };
    for pair in data[2..].chunks_exact(2) {
        match event(pair[0], pair[1]) {
            Ok(e) => match s.apply(e) {
                Ok(next) => s = next,
                Err(_) => {} // the state is a value: nothing to undo
            },
            Err(observed) => s = s.observe(observed),
        }
        assert!(s.active_vtl().0 <= 2, "{s:?}");
        assert_eq!(s.enabled_vtls() & !0b111, 0, "{s:?}");
        assert!(s.vtl_enabled(s.active_vtl()) || !s.started(), "{s:?}");
        if s.is_bsp() {
            assert!(s.started(), "{s:?}");
        }
    }
});
