//! A VP's run protocol: its thread entering and leaving `KVM_RUN`, other threads
//! kicking it out, and waiting until it is out. The one place that knows the
//! rules; [`crate::vp`] and the partition use it through [`RunGate`].
//!
//! The rules:
//! - A VP's thread marks itself in `KVM_RUN` ([`RunGate::enter`]) under the VP
//!   lock, after checking every request, and out of it ([`RunGate::leave`]) as
//!   soon as `KVM_RUN` returns (`Vp::run`) or its own loop says so
//!   (`Vp::finish_run`).
//! - A kick ([`RunGate::kick`]) arms `kvm_run.immediate_exit` under the same lock
//!   (a `KVM_RUN` about to be entered returns at once) and then interrupts the
//!   thread (a signal, or the VMM's callback): one kick is enough.
//! - A thread never kicks or waits for itself: while it runs this code it is not
//!   in `KVM_RUN`, whatever the mark says (an own loop between `KVM_RUN` and
//!   `finish_run`).
//! - An operation that needs every VP out of `KVM_RUN` ([`pause`]) first marks the
//!   calling VP's thread out ([`RunGate::leave_if_current`]): two VPs pausing at
//!   once from their own exits never wait for each other.
//! - Every kind of kick is waited for; a wait re-kicks with a growing interval
//!   (an interrupt that raced with the entry is repeated), and says once in the
//!   log when it has waited long.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A thread, as [`Interrupter::current_thread`] names it.
pub(crate) type Thread = libc::pthread_t;

/// What the run protocol needs from the host: the seam a test fakes.
pub(crate) trait Interrupter: Send + Sync {
    /// The calling thread.
    fn current_thread(&self) -> Thread;
    /// Sets or clears the vCPU's `kvm_run.immediate_exit`. Called with the VP
    /// lock held.
    fn set_immediate_exit(&self, on: bool);
    /// Interrupts `thread`, which is marked in `KVM_RUN` (and so alive), with
    /// the VP lock held. `false` if this kick must be made without the lock
    /// ([`Self::interrupt_unlocked`]).
    fn interrupt_locked(&self, thread: Thread) -> bool;
    /// Interrupts the VP's thread without the VP lock held (a VMM's callback,
    /// which may call back into the partition).
    fn interrupt_unlocked(&self);
}

/// The run part of a VP's locked state.
#[derive(Debug, Default)]
pub(crate) struct RunState {
    /// The thread inside (or about to enter) `KVM_RUN`.
    in_kvm: Option<Thread>,
    /// While non-zero the VP's thread must not enter `KVM_RUN`.
    paused: u32,
    /// Threads waiting for the VP to leave `KVM_RUN`: only then does leaving
    /// notify the condition variable.
    waiters: u32,
}

impl RunState {
    /// Whether the VP's thread is marked in `KVM_RUN`.
    #[cfg(test)]
    pub fn in_kvm(&self) -> bool {
        self.in_kvm.is_some()
    }

    /// Whether the VP is held out of `KVM_RUN`.
    pub fn paused(&self) -> bool {
        self.paused > 0
    }
}

/// A VP's locked state, as the run protocol sees it.
pub(crate) trait Runnable {
    /// The run part.
    fn run_state(&mut self) -> &mut RunState;
    /// Called under the lock whenever the VP's thread leaves `KVM_RUN`.
    fn on_leave(&mut self) {}
}

/// A VP's lock, its condition variable and its interrupter.
#[derive(Debug)]
pub(crate) struct RunGate<I, K> {
    inner: Mutex<I>,
    wake: Condvar,
    interrupter: K,
}

/// The first interval after which a wait kicks again, and the longest.
const REKICK_FIRST: Duration = Duration::from_millis(1);
const REKICK_MAX: Duration = Duration::from_millis(64);
/// A wait longer than this is logged once.
const SLOW_WAIT: Duration = Duration::from_secs(1);

impl<I: Runnable, K: Interrupter> RunGate<I, K> {
    pub fn new(inner: I, interrupter: K) -> Self {
        RunGate {
            inner: Mutex::new(inner),
            wake: Condvar::new(),
            interrupter,
        }
    }

    /// The VP lock. A VP thread that panicked while holding it leaves valid data.
    pub fn lock(&self) -> MutexGuard<'_, I> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The interrupter.
    pub fn interrupter(&self) -> &K {
        &self.interrupter
    }

    /// Wakes every thread waiting on the VP's condition variable.
    pub fn notify(&self) {
        self.wake.notify_all();
    }

    /// Waits on the VP's condition variable.
    pub fn wait<'a>(&self, g: MutexGuard<'a, I>) -> MutexGuard<'a, I> {
        self.wake.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    /// Under the VP lock, by the VP's thread: marks it in `KVM_RUN`. `false`
    /// (nothing marked) while the VP is paused: the thread waits and checks again.
    pub fn enter(&self, g: &mut I) -> bool {
        let r = g.run_state();
        if r.paused > 0 {
            return false;
        }
        r.in_kvm = Some(self.interrupter.current_thread());
        true
    }

    /// The VP's thread is out of `KVM_RUN`: the mark and `immediate_exit` are
    /// cleared, [`Runnable::on_leave`] runs, and waiting kickers wake.
    pub fn leave(&self) {
        self.leave_and_notify(self.lock());
    }

    /// Marks the thread out under `g`, releases the lock, and wakes waiting
    /// kickers if there are any.
    fn leave_and_notify(&self, mut g: MutexGuard<'_, I>) {
        let r = g.run_state();
        let was_in = r.in_kvm.take().is_some();
        let waiters = r.waiters > 0;
        // Under the lock: a kick arms it only while the mark is set.
        self.interrupter.set_immediate_exit(false);
        if was_in {
            g.on_leave();
        }
        drop(g);
        if waiters {
            self.wake.notify_all();
        }
    }

    /// If the calling thread is the one marked in `KVM_RUN` (an own loop that
    /// has not called `finish_run` yet), marks it out, as [`Self::leave`] does:
    /// it is running this, not the guest. Returns whether it was.
    pub fn leave_if_current(&self) -> bool {
        let mut g = self.lock();
        if g.run_state().in_kvm != Some(self.interrupter.current_thread()) {
            return false;
        }
        self.leave_and_notify(g);
        true
    }

    /// Gets the VP's thread out of `KVM_RUN`, if it is marked in it and is not
    /// the calling thread, so it sees what was just requested (`pending` says
    /// whether the request is still unseen). Does not wait.
    pub fn kick(&self, pending: impl Fn(&I) -> bool) {
        let g = self.lock();
        self.kick_locked(g, &pending);
    }

    fn kick_locked(&self, mut g: MutexGuard<'_, I>, pending: &impl Fn(&I) -> bool) {
        if !pending(&g) {
            return;
        }
        let Some(thread) = g.run_state().in_kvm else {
            return;
        };
        if thread == self.interrupter.current_thread() {
            return;
        }
        self.interrupter.set_immediate_exit(true);
        if self.interrupter.interrupt_locked(thread) {
            return;
        }
        drop(g);
        self.interrupter.interrupt_unlocked();
    }

    /// Waits until the VP's thread is out of `KVM_RUN` (or is the calling
    /// thread, or the request was seen), kicking again after growing intervals.
    pub fn wait_left(&self, pending: impl Fn(&I) -> bool) {
        let me = self.interrupter.current_thread();
        let started = Instant::now();
        let mut interval = REKICK_FIRST;
        let mut warned = false;
        let mut g = self.lock();
        loop {
            match g.run_state().in_kvm {
                None => return,
                Some(t) if t == me => return,
                Some(_) => {}
            }
            if !pending(&g) {
                return;
            }
            g.run_state().waiters += 1;
            let (g2, timeout) = self
                .wake
                .wait_timeout(g, interval)
                .unwrap_or_else(|e| e.into_inner());
            g = g2;
            g.run_state().waiters -= 1;
            if timeout.timed_out() && g.run_state().in_kvm.is_some() && pending(&g) {
                if !warned && started.elapsed() >= SLOW_WAIT {
                    warned = true;
                    log::warn!(
                        "a VP thread has not left KVM_RUN after {:?} of kicks",
                        started.elapsed()
                    );
                }
                interval = (interval * 2).min(REKICK_MAX);
                self.kick_locked(g, &pending);
                g = self.lock();
            }
        }
    }

    /// [`Self::kick`], then [`Self::wait_left`].
    pub fn kick_and_wait(&self, pending: impl Fn(&I) -> bool) {
        self.kick(&pending);
        self.wait_left(pending);
    }
}

/// Holds VPs out of `KVM_RUN` while it lives ([`pause`]).
pub(crate) struct Paused<'a, I: Runnable, K: Interrupter> {
    gates: Vec<&'a RunGate<I, K>>,
}

/// Holds every VP of `gates` out of `KVM_RUN`: each is marked paused and kicked
/// (one round for all), then each waited for. The calling thread, if it is one of
/// the VPs' (inside its own exit handling), is marked out first. Dropping the
/// result releases them.
pub(crate) fn pause<'a, I: Runnable, K: Interrupter>(
    gates: Vec<&'a RunGate<I, K>>,
) -> Paused<'a, I, K> {
    for gate in &gates {
        gate.leave_if_current();
    }
    for gate in &gates {
        gate.lock().run_state().paused += 1;
    }
    // Each VP stays paused until the result is dropped: the request is pending
    // for as long as it is marked in KVM_RUN.
    for gate in &gates {
        gate.kick(|_| true);
    }
    for gate in &gates {
        gate.wait_left(|_| true);
    }
    Paused { gates }
}

impl<I: Runnable, K: Interrupter> Drop for Paused<'_, I, K> {
    fn drop(&mut self) {
        for gate in &self.gates {
            gate.lock().run_state().paused -= 1;
            gate.notify();
        }
    }
}

#[cfg(test)]
mod tests;
