//! The real [`Interrupter`]: `kvm_run.immediate_exit` of a VP's vCPU, and the
//! signal or VMM callback that interrupts its thread.

use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use std::sync::Mutex;

use hv_defs::VpIndex;
use vmm_sys_util::signal::{register_signal_handler, Killable};

use crate::config::Kick;
use crate::run_state::{Interrupter, Thread};

/// How one VP's thread is interrupted.
#[derive(Debug)]
pub(crate) struct VpKicker {
    pub index: VpIndex,
    pub kick: Kick,
    /// `kvm_run.immediate_exit` of the VP's vCPU while its [`crate::Vp`] lives
    /// (null after). Written only with the VP lock held.
    immediate_exit: AtomicPtr<u8>,
}

impl VpKicker {
    pub fn new(index: VpIndex, kick: Kick) -> Self {
        VpKicker {
            index,
            kick,
            immediate_exit: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Records where the vCPU's `immediate_exit` is (`null` withdraws it). The
    /// caller holds the VP lock, and keeps the mapping alive until it withdraws it.
    pub fn set_target(&self, immediate_exit: *mut u8) {
        self.immediate_exit.store(immediate_exit, Ordering::Release);
    }
}

impl Interrupter for VpKicker {
    fn current_thread(&self) -> Thread {
        // SAFETY: pthread_self has no preconditions.
        unsafe { libc::pthread_self() }
    }

    fn set_immediate_exit(&self, on: bool) {
        let p = self.immediate_exit.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: non-null only while the Vp owning the vCPU (and its
            // kvm_run mapping) lives; Vp's drop nulls it under the VP lock, which
            // the caller holds. A byte-sized atomic store: KVM reads the field
            // at KVM_RUN entry.
            unsafe { (*(p as *const AtomicU8)).store(on as u8, Ordering::Release) }
        }
    }

    fn interrupt_locked(&self, thread: Thread) -> bool {
        match &self.kick {
            Kick::Signal(signal) => {
                log::trace!("kick VP {} (signal {signal})", self.index.0);
                // The thread is alive: it clears its mark under the VP lock,
                // which the caller holds, before it can leave its run loop.
                let _ = ThreadHandle(thread).kill(*signal);
                true
            }
            Kick::Callback(_) => false,
        }
    }

    fn interrupt_unlocked(&self) {
        if let Kick::Callback(f) = &self.kick {
            log::trace!("kick VP {} (VMM callback)", self.index.0);
            f(self.index);
        }
    }
}

struct ThreadHandle(libc::pthread_t);

// SAFETY: the handle is only used while the thread it names is marked in
// KVM_RUN, which the caller checks under the VP lock.
unsafe impl Killable for ThreadHandle {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

extern "C" fn kick_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signals checked (and, where they had no handler, given the empty one).
static KICK_SIGNALS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Whether `signal` has a handler of its own now (not the default action, not
/// ignored).
pub(crate) fn has_handler(signal: i32) -> Result<bool, vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::validate_signal_num(signal)?;
    // SAFETY: a zeroed sigaction is a valid out-parameter; a null new action
    // only reads the current one.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers, a validated signal number; the return is checked.
    if unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) } != 0 {
        return Err(vmm_sys_util::errno::Error::last());
    }
    Ok(old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN)
}

/// Makes sure `signal` interrupts a thread in `KVM_RUN` without killing the
/// process: a handler the VMM installed is kept (it runs on each kick); a signal
/// without one gets an empty handler. Each signal is looked at once.
pub(crate) fn prepare_signal(signal: i32) -> Result<(), vmm_sys_util::errno::Error> {
    let mut done = KICK_SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
    if done.contains(&signal) {
        return Ok(());
    }
    if has_handler(signal)? {
        log::debug!("VP kicks use signal {signal} with the VMM's own handler");
    } else {
        register_signal_handler(signal, kick_handler)?;
        log::debug!("VP kicks use signal {signal} with an empty handler");
    }
    done.push(signal);
    Ok(())
}
