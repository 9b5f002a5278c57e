//! SIGTERM and SIGINT: the handler records the signal and wakes the main loop
//! through the exit eventfd (both async-signal-safe); the main loop then ends the
//! guest, flushes the console and exits with 128 + the signal number.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::register_signal_handler;

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signo: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    RECEIVED.store(signo, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64;
        // SAFETY: write(2) is async-signal-safe; `one` is 8 readable bytes and
        // `fd` is the exit eventfd, which lives until the process exits.
        let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Installs the handlers; `wake` is written when a signal arrives.
pub fn install(wake: &EventFd) -> Result<(), vmm_sys_util::errno::Error> {
    WAKE_FD.store(wake.as_raw_fd(), Ordering::SeqCst);
    register_signal_handler(libc::SIGTERM, on_signal)?;
    register_signal_handler(libc::SIGINT, on_signal)
}

/// The signal received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}
