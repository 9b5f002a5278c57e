//! The run protocol without KVM: a fake vCPU whose `KVM_RUN` returns at once
//! when `immediate_exit` is set and otherwise blocks until a signal arrives
//! while it is inside (a signal sent before it is inside is lost, as with an
//! empty handler), driven by real threads.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

#[derive(Default)]
struct Cpu {
    inside: bool,
    signal: bool,
    /// Signals still to drop although the thread is inside (a lost kick).
    drop_signals: u32,
}

#[derive(Default)]
struct FakeVcpu {
    immediate_exit: AtomicBool,
    cpu: Mutex<Cpu>,
    cv: Condvar,
    /// Whether the kick is a VMM callback (made without the VP lock).
    callback: bool,
    interrupts: AtomicUsize,
    /// Entries into the fake KVM_RUN that reached the guest (not refused by
    /// immediate_exit), and how many threads are inside now.
    entries: AtomicUsize,
    /// Entries refused because immediate_exit was set.
    refused: AtomicUsize,
    inside_now: AtomicU32,
    /// If set, each KVM_RUN waits on this before it looks at immediate_exit.
    entry_hold: Mutex<Option<mpsc::Receiver<()>>>,
}

impl FakeVcpu {
    fn signal(&self) {
        self.interrupts.fetch_add(1, Ordering::SeqCst);
        let mut c = self.cpu.lock().unwrap();
        if c.inside {
            if c.drop_signals > 0 {
                c.drop_signals -= 1;
                return;
            }
            c.signal = true;
            self.cv.notify_all();
        }
    }

    /// KVM_RUN: `true` if it entered the guest, `false` if immediate_exit
    /// refused the entry.
    fn kvm_run(&self) -> bool {
        if let Some(rx) = self.entry_hold.lock().unwrap().take() {
            let _ = rx.recv();
        }
        let mut c = self.cpu.lock().unwrap();
        if self.immediate_exit.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        c.inside = true;
        self.entries.fetch_add(1, Ordering::SeqCst);
        self.inside_now.fetch_add(1, Ordering::SeqCst);
        while !c.signal {
            c = self.cv.wait(c).unwrap();
        }
        c.signal = false;
        c.inside = false;
        self.inside_now.fetch_sub(1, Ordering::SeqCst);
        true
    }
}

impl Interrupter for Arc<FakeVcpu> {
    fn current_thread(&self) -> Thread {
        // SAFETY: pthread_self has no preconditions.
        unsafe { libc::pthread_self() }
    }
    fn set_immediate_exit(&self, on: bool) {
        self.immediate_exit.store(on, Ordering::SeqCst);
    }
    fn interrupt_locked(&self, _thread: Thread) -> bool {
        if self.callback {
            return false;
        }
        self.signal();
        true
    }
    fn interrupt_unlocked(&self) {
        assert!(self.callback);
        self.signal();
    }
}

#[derive(Default)]
struct Inner {
    run: RunState,
    stop: bool,
    leaves: u32,
}

impl Runnable for Inner {
    fn run_state(&mut self) -> &mut RunState {
        &mut self.run
    }
    fn on_leave(&mut self) {
        self.leaves += 1;
    }
}

type Gate = RunGate<Inner, Arc<FakeVcpu>>;

fn gate(callback: bool) -> (Arc<Gate>, Arc<FakeVcpu>) {
    let cpu = Arc::new(FakeVcpu {
        callback,
        ..Default::default()
    });
    (Arc::new(RunGate::new(Inner::default(), cpu.clone())), cpu)
}

/// A VP thread as `Vp::run` drives it: enter under the lock unless paused or
/// stopped, KVM_RUN, leave.
fn vp_thread(gate: Arc<Gate>, cpu: Arc<FakeVcpu>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || loop {
        {
            let mut g = gate.lock();
            loop {
                if g.stop {
                    return;
                }
                if gate.enter(&mut g) {
                    break;
                }
                g = gate.wait(g);
            }
        }
        cpu.kvm_run();
        gate.leave();
    })
}

fn stop(gate: &Gate) {
    gate.lock().stop = true;
    gate.notify();
    gate.kick_and_wait(|_| true);
}

fn until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn a_kick_during_entry_is_not_lost() {
    // The thread is marked in KVM_RUN but not inside yet when the kick comes:
    // the signal is lost, immediate_exit makes the entry return at once.
    let (gate, cpu) = gate(false);
    let (release, hold) = mpsc::channel();
    *cpu.entry_hold.lock().unwrap() = Some(hold);
    let t = vp_thread(gate.clone(), cpu.clone());
    until("marked in KVM_RUN", || gate.lock().run.in_kvm());
    gate.kick(|_| true);
    assert_eq!(cpu.interrupts.load(Ordering::SeqCst), 1);
    assert!(cpu.immediate_exit.load(Ordering::SeqCst));
    let waiter = {
        let gate = gate.clone();
        std::thread::spawn(move || gate.wait_left(|g| g.leaves == 0))
    };
    release.send(()).unwrap();
    waiter.join().unwrap();
    assert!(gate.lock().leaves >= 1);
    assert_eq!(
        cpu.refused.load(Ordering::SeqCst),
        1,
        "the entry was refused"
    );
    // Leaving disarmed immediate_exit: the next entry reaches the guest.
    until("inside again", || {
        cpu.inside_now.load(Ordering::SeqCst) == 1
    });
    assert_eq!(cpu.entries.load(Ordering::SeqCst), 1);
    assert!(!cpu.immediate_exit.load(Ordering::SeqCst));
    stop(&gate);
    t.join().unwrap();
}

#[test]
fn a_kick_after_the_exit_does_nothing() {
    let (gate, cpu) = gate(false);
    gate.kick(|_| true);
    gate.wait_left(|_| true);
    assert_eq!(cpu.interrupts.load(Ordering::SeqCst), 0);
    assert!(!cpu.immediate_exit.load(Ordering::SeqCst));
}

#[test]
fn a_request_already_seen_is_not_kicked() {
    let (gate, cpu) = gate(false);
    let t = vp_thread(gate.clone(), cpu.clone());
    until("inside", || cpu.inside_now.load(Ordering::SeqCst) == 1);
    gate.kick_and_wait(|_| false);
    assert_eq!(cpu.interrupts.load(Ordering::SeqCst), 0);
    stop(&gate);
    t.join().unwrap();
}

#[test]
fn a_thread_never_kicks_or_waits_for_itself() {
    // An own loop between KVM_RUN and finish_run: marked in, running this.
    let (gate, cpu) = gate(false);
    {
        let mut g = gate.lock();
        assert!(gate.enter(&mut g));
    }
    gate.kick_and_wait(|_| true);
    assert_eq!(cpu.interrupts.load(Ordering::SeqCst), 0);
    assert!(!cpu.immediate_exit.load(Ordering::SeqCst));
    // Pausing from inside its own exit marks it out first.
    let paused = pause(vec![&*gate]);
    assert!(!gate.lock().run.in_kvm());
    assert_eq!(gate.lock().leaves, 1);
    {
        let mut g = gate.lock();
        assert!(!gate.enter(&mut g), "paused: no entry");
    }
    drop(paused);
    let mut g = gate.lock();
    assert!(gate.enter(&mut g));
}

#[test]
fn a_pause_from_inside_an_exit_holds_every_other_vp_out() {
    let (g0, c0) = gate(false);
    let (g1, c1) = gate(false);
    let t1 = vp_thread(g1.clone(), c1.clone());
    until("VP 1 inside", || c1.inside_now.load(Ordering::SeqCst) == 1);
    // VP 0's own loop, in its exit handling.
    {
        let mut g = g0.lock();
        assert!(g0.enter(&mut g));
    }
    let paused = pause(vec![&*g0, &*g1]);
    assert_eq!(c1.inside_now.load(Ordering::SeqCst), 0);
    assert!(!g1.lock().run.in_kvm());
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(c1.inside_now.load(Ordering::SeqCst), 0, "paused VP entered");
    assert_eq!(
        c0.interrupts.load(Ordering::SeqCst),
        0,
        "VP 0 kicked itself"
    );
    drop(paused);
    until("VP 1 inside again", || {
        c1.inside_now.load(Ordering::SeqCst) == 1
    });
    stop(&g1);
    t1.join().unwrap();
}

#[test]
fn two_vps_pausing_at_once_from_their_exits_do_not_deadlock() {
    // Each own loop takes a partition-wide lock (the overlay's) after marking
    // itself out, then pauses everyone: the second waits for the lock, never
    // for the first VP's thread.
    let (g0, _c0) = gate(false);
    let (g1, _c1) = gate(false);
    let gates = [g0, g1];
    let overlay = Arc::new(Mutex::new(0u32));
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let gates = gates.clone();
            let overlay = overlay.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    {
                        let mut g = gates[i].lock();
                        while !gates[i].enter(&mut g) {
                            g = gates[i].wait(g);
                        }
                    }
                    // "exit": place the overlay from inside it.
                    gates[i].leave_if_current();
                    let mut o = overlay.lock().unwrap();
                    let paused = pause(gates.iter().map(|g| &**g).collect());
                    *o += 1;
                    drop(paused);
                    drop(o);
                    gates[i].leave();
                }
            })
        })
        .collect();
    let start = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*overlay.lock().unwrap(), 400);
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn many_vps_paused_again_and_again_never_run_while_paused() {
    let vps: Vec<_> = (0..8).map(|_| gate(false)).collect();
    let threads: Vec<_> = vps
        .iter()
        .map(|(g, c)| vp_thread(g.clone(), c.clone()))
        .collect();
    let total = |vps: &[(Arc<Gate>, Arc<FakeVcpu>)]| -> usize {
        vps.iter()
            .map(|(_, c)| c.entries.load(Ordering::SeqCst))
            .sum()
    };
    for _ in 0..100 {
        let paused = pause(vps.iter().map(|(g, _)| &**g).collect());
        for (g, c) in &vps {
            assert_eq!(c.inside_now.load(Ordering::SeqCst), 0);
            assert!(!g.lock().run.in_kvm());
        }
        let during = total(&vps);
        std::thread::sleep(Duration::from_micros(200));
        assert_eq!(total(&vps), during, "no VP entered while paused");
        drop(paused);
        // Released, the VPs run again before the next pause.
        until("a VP runs between pauses", || total(&vps) > during);
    }
    for (g, _) in &vps {
        stop(g);
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_callback_kick_is_made_without_the_lock_and_waited_for() {
    let (gate, cpu) = gate(true);
    let t = vp_thread(gate.clone(), cpu.clone());
    until("inside", || cpu.inside_now.load(Ordering::SeqCst) == 1);
    let paused = pause(vec![&*gate]);
    assert_eq!(cpu.inside_now.load(Ordering::SeqCst), 0);
    assert!(cpu.interrupts.load(Ordering::SeqCst) >= 1);
    drop(paused);
    stop(&gate);
    t.join().unwrap();
}

#[test]
fn a_lost_interrupt_is_repeated_until_the_thread_leaves() {
    let (gate, cpu) = gate(false);
    cpu.cpu.lock().unwrap().drop_signals = 3;
    let t = vp_thread(gate.clone(), cpu.clone());
    until("inside", || cpu.inside_now.load(Ordering::SeqCst) == 1);
    let paused = pause(vec![&*gate]);
    assert_eq!(cpu.inside_now.load(Ordering::SeqCst), 0);
    assert!(cpu.interrupts.load(Ordering::SeqCst) >= 4);
    drop(paused);
    stop(&gate);
    t.join().unwrap();
}
