//! Every reachable (state, event) pair against a reference table.
//!
//! The states are every state reachable from HvCreateVp (boot processor and
//! application processor, VTL 0 and VTL 2 partitions) through the events below; the
//! reference table states, per event, the TLFS rule for the outcome.

use std::collections::{HashSet, VecDeque};

use hv_defs::{HvError, HvResult, VpIndex, Vtl};
use vp_state::{Activity, Event, VpState};

fn events() -> Vec<Event> {
    let mut e = vec![
        Event::SetExplicitSuspend(true),
        Event::SetExplicitSuspend(false),
        Event::SetInterceptSuspend(true),
        Event::SetInterceptSuspend(false),
        Event::Init,
        Event::Sipi(0x9A),
        Event::EnterRun,
        Event::ExitRun,
        Event::Halt,
        Event::Wake,
    ];
    for v in 0..=3 {
        e.push(Event::Start(Vtl(v)));
        e.push(Event::EnableVtl(Vtl(v)));
    }
    e
}

/// The reference table: what each event does to each state.
fn reference(s: VpState, e: Event) -> HvResult<VpState> {
    let bad = Err(HvError::INVALID_VP_STATE);
    match e {
        // Suspend registers can always be written.
        Event::SetExplicitSuspend(b) => Ok(s.set_explicit_suspend(b)),
        Event::SetInterceptSuspend(b) => Ok(s.set_intercept_suspend(b)),
        // INIT: APs back to wait-for-SIPI (startable again), the BSP stays runnable.
        Event::Init => Ok(s.init()),
        // SIPI: only a VP waiting for SIPI leaves its wait, at VTL 0.
        Event::Sipi(_) if s.activity() != Activity::WaitForSipi => bad,
        Event::Sipi(v) => {
            let n = s.sipi(v)?;
            assert_eq!(
                (n.activity(), n.started(), n.active_vtl(), n.sipi_vector()),
                (Activity::Runnable, true, Vtl::VTL0, Some(v))
            );
            Ok(n)
        }
        // StartVirtualProcessor: never the BSP, only an enabled VTL, at most once
        // until reset, only from wait-for-SIPI.
        Event::Start(_) if s.is_bsp() => bad,
        Event::Start(vtl) if !s.vtl_enabled(vtl) => bad,
        Event::Start(_) if s.started() => bad,
        Event::Start(_) if s.activity() != Activity::WaitForSipi => bad,
        Event::Start(vtl) => {
            let n = s.start(vtl)?;
            assert_eq!(
                (n.activity(), n.started(), n.active_vtl()),
                (Activity::Runnable, true, vtl)
            );
            assert_eq!(n.suspended(), s.suspended(), "start leaves suspend alone");
            Ok(n)
        }
        // EnableVpVtl: x64 has VTL 0..=2; VTL 0 and enabled VTLs are already enabled.
        Event::EnableVtl(vtl) if vtl.0 > 2 => Err(HvError::INVALID_PARAMETER),
        Event::EnableVtl(vtl) if vtl.0 == 0 || s.vtl_enabled(vtl) => {
            Err(HvError::VTL_ALREADY_ENABLED)
        }
        Event::EnableVtl(vtl) => {
            let n = s.enable_vtl(vtl)?;
            assert!(n.vtl_enabled(vtl));
            assert_eq!(n.enabled_vtls(), s.enabled_vtls() | (1 << vtl.0));
            Ok(n)
        }
        // A suspended VP does not run; one thread at a time.
        Event::EnterRun if s.suspended() || s.running() => bad,
        Event::EnterRun => {
            let n = s.enter_run()?;
            assert!(n.running());
            Ok(n)
        }
        Event::ExitRun if !s.running() => bad,
        Event::ExitRun => s.exit_run(),
        Event::Halt if s.activity() != Activity::Runnable => bad,
        Event::Halt => s.halt(),
        Event::Wake if s.activity() != Activity::Halted => bad,
        Event::Wake => s.wake(),
    }
}

fn reachable() -> Vec<VpState> {
    let mut seen = HashSet::new();
    let mut queue: VecDeque<VpState> = [
        VpState::new(VpIndex(0), Vtl::VTL0).unwrap(),
        VpState::new(VpIndex(0), Vtl::VTL2).unwrap(),
        VpState::new(VpIndex(1), Vtl::VTL0).unwrap(),
        VpState::new(VpIndex(3), Vtl::VTL2).unwrap(),
    ]
    .into_iter()
    .collect();
    while let Some(s) = queue.pop_front() {
        if !seen.insert(s) {
            continue;
        }
        for e in events() {
            if let Ok(n) = s.apply(e) {
                queue.push_back(n);
            }
        }
    }
    seen.into_iter().collect()
}

#[test]
fn every_reachable_state_and_event_matches_the_table() {
    let states = reachable();
    assert!(states.len() > 200, "only {} states reached", states.len());
    let mut pairs = 0;
    for &s in &states {
        for e in events() {
            let got = s.apply(e);
            let want = reference(s, e);
            assert_eq!(got, want, "state {s:?}, event {e:?}");
            if let Ok(n) = got {
                // Invariants of every state.
                assert_eq!(n.index(), s.index());
                assert!(n.vtl_enabled(Vtl::VTL0));
                assert!(n.vtl_enabled(n.active_vtl()) || n.active_vtl() == Vtl::VTL0);
                if n.is_bsp() {
                    assert!(n.started() && n.activity() != Activity::WaitForSipi);
                } else {
                    assert_eq!(n.started(), n.activity() != Activity::WaitForSipi);
                }
            }
            pairs += 1;
        }
    }
    eprintln!(
        "{} states x {} events = {pairs} pairs checked",
        states.len(),
        events().len()
    );
}

#[test]
fn creation_follows_hvcreatevp() {
    let bsp = VpState::new(VpIndex(0), Vtl::VTL2).unwrap();
    assert!(bsp.explicit_suspend() && !bsp.intercept_suspend());
    assert_eq!(bsp.activity(), Activity::Runnable);
    assert_eq!(bsp.active_vtl(), Vtl::VTL2);
    assert_eq!(bsp.enabled_vtls(), 0b101);
    assert_eq!(
        bsp.enter_run(),
        Err(HvError::INVALID_VP_STATE),
        "suspended until cleared"
    );
    let bsp = bsp.set_explicit_suspend(false).enter_run().unwrap();
    assert!(bsp.running());
    let ap = VpState::new(VpIndex(5), Vtl::VTL2).unwrap();
    assert!(ap.explicit_suspend());
    assert_eq!(ap.activity(), Activity::WaitForSipi);
    assert_eq!(ap.enabled_vtls(), 0b1);
    assert_eq!(ap.index(), VpIndex(5));
}

#[test]
fn the_linux_vtl2_sequence() {
    // Partition start clears explicit suspend everywhere; Linux then calls
    // EnableVpVtl(VTL2) and StartVirtualProcessor(VTL2) for each AP.
    let ap = VpState::new(VpIndex(1), Vtl::VTL2)
        .unwrap()
        .set_explicit_suspend(false);
    let ap = ap.enter_run().unwrap(); // the VP thread waits in KVM for SIPI
    let ap = ap.enable_vtl(Vtl::VTL2).unwrap();
    assert_eq!(ap.enable_vtl(Vtl::VTL2), Err(HvError::VTL_ALREADY_ENABLED));
    let ap = ap.start(Vtl::VTL2).unwrap();
    assert_eq!(
        (ap.activity(), ap.active_vtl(), ap.running()),
        (Activity::Runnable, Vtl::VTL2, true)
    );
    assert_eq!(ap.start(Vtl::VTL2), Err(HvError::INVALID_VP_STATE));
    // INIT resets it; it may be started again.
    let ap = ap.init();
    assert!(!ap.started());
    assert!(ap.start(Vtl::VTL2).is_ok());
}

#[test]
fn observing_kvm_tracks_init_sipi_done_in_the_lapic() {
    let ap = VpState::new(VpIndex(2), Vtl::VTL0)
        .unwrap()
        .set_explicit_suspend(false);
    let ap = ap.enter_run().unwrap().exit_run().unwrap();
    let ap = ap.observe(Activity::Runnable);
    assert!(ap.started());
    assert_eq!(ap.start(Vtl::VTL0), Err(HvError::INVALID_VP_STATE));
    let ap = ap.observe(Activity::Halted);
    assert_eq!(ap.activity(), Activity::Halted);
    let ap = ap.observe(Activity::WaitForSipi);
    assert!(!ap.started());
    let ap = VpState::new(VpIndex(2), Vtl::VTL0)
        .unwrap()
        .observe(Activity::Halted);
    assert!(ap.started() && ap.activity() == Activity::Halted);
    let same = VpState::new(VpIndex(2), Vtl::VTL0).unwrap();
    assert_eq!(same.observe(Activity::WaitForSipi), same);
}

#[test]
fn vtls_above_2_do_not_exist_on_x64() {
    // TLFS "Virtual Secure Mode": an x64 partition has VTLs 0, 1 and 2; a VTL
    // number is never taken modulo 16.
    for vtl in [3u8, 15, 16, 18, 255] {
        assert_eq!(
            VpState::new(VpIndex(0), Vtl(vtl)),
            Err(HvError::INVALID_PARAMETER),
            "boot VTL {vtl}"
        );
        let ap = VpState::new(VpIndex(1), Vtl::VTL0).unwrap();
        assert!(!ap.vtl_enabled(Vtl(vtl)), "VTL {vtl} enabled");
        assert_eq!(ap.enable_vtl(Vtl(vtl)), Err(HvError::INVALID_PARAMETER));
        assert_eq!(ap.start(Vtl(vtl)), Err(HvError::INVALID_VP_STATE));
    }
    // VTL 16 must not look like VTL 0, nor 18 like the enabled boot VTL 2.
    let bsp = VpState::new(VpIndex(0), Vtl::VTL2).unwrap();
    assert!(!bsp.vtl_enabled(Vtl(16)) && !bsp.vtl_enabled(Vtl(18)));
}

/// TLFS HvCallVtlCall ("switches into the next highest VTL enabled on the
/// VP") and HvCallVtlReturn (to the lower VTL; none from VTL 0).
#[test]
fn vtl_call_and_return_targets() {
    let s = VpState::new(VpIndex::BSP, Vtl::VTL0).unwrap();
    assert_eq!(s.vtl_call_target(), None);
    assert_eq!(s.vtl_return_target(), None);
    assert_eq!(s.switch_vtl(Vtl::VTL1), Err(HvError::INVALID_VP_STATE));
    let s = s.enable_vtl(Vtl::VTL2).unwrap();
    assert_eq!(s.vtl_call_target(), Some(Vtl::VTL2));
    let s = s.enable_vtl(Vtl::VTL1).unwrap();
    assert_eq!(s.vtl_call_target(), Some(Vtl::VTL1));
    let s1 = s.switch_vtl(Vtl::VTL1).unwrap();
    assert_eq!(s1.active_vtl(), Vtl::VTL1);
    assert_eq!(s1.vtl_call_target(), Some(Vtl::VTL2));
    assert_eq!(s1.vtl_return_target(), Some(Vtl::VTL0));
    let s2 = s1.switch_vtl(Vtl::VTL2).unwrap();
    assert_eq!(s2.vtl_call_target(), None);
    assert_eq!(s2.vtl_return_target(), Some(Vtl::VTL1));
    // Everything but the active VTL is kept.
    assert_eq!(s2.switch_vtl(Vtl::VTL0).unwrap(), s);
}
