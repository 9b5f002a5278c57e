//! Seccomp filters, one per thread class, installed once set-up is done: a VP
//! thread and the main (event loop) thread may make only the system calls their
//! work needs, and `ioctl` only with a KVM request (type 0xAE). Any other system
//! call raises SIGSYS, whose handler prints one line naming the call and ends the
//! VMM with status 1.
//!
//! Written with rust-vmm's `seccompiler`; `--no-seccomp` turns the filters off
//! for debugging.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// The compiled filters.
pub struct Filters {
    /// For each VP thread.
    pub vp: BpfProgram,
    /// For the main thread, once the VP threads are running.
    pub main: BpfProgram,
}

/// What every thread needs: memory (the allocator), futexes, signals (kicks and
/// their returns), time, clean exit, writing diagnostics.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
];

/// What the coverage runtime of an instrumented build (cargo llvm-cov sets
/// `cfg(coverage)`) does at exit: write its profile file.
#[cfg(coverage)]
const PROFILE: &[i64] = &[
    libc::SYS_prctl,
    libc::SYS_openat,
    libc::SYS_lseek,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_flock,
    libc::SYS_mkdir,
    libc::SYS_ftruncate,
    libc::SYS_pwrite64,
    libc::SYS_uname,
];
#[cfg(not(coverage))]
const PROFILE: &[i64] = &[];

/// A VP thread's extra calls: KVM (its vCPU, the scratch VM a start context is
/// tried on, the hypercall overlay's memory slots) and, where KVM gave a disk
/// no ioeventfd, that disk's I/O.
const VP: &[i64] = &[libc::SYS_ioctl, DISK_IO[0], DISK_IO[1], DISK_IO[2]];

/// A disk's I/O: vectored reads and writes at an offset, fdatasync (FLUSH).
const DISK_IO: [i64; 3] = [libc::SYS_preadv, libc::SYS_pwritev, libc::SYS_fdatasync];

/// The main thread's extra calls: the event loop.
const MAIN: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_ioctl,
    DISK_IO[0],
    DISK_IO[1],
    DISK_IO[2],
];

/// `ioctl` only with a KVM request: the request's type byte (bits 15:8) is
/// KVMIO, 0xAE.
fn kvm_ioctl_only() -> Result<Vec<SeccompRule>, String> {
    let c = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(0xFF00),
        0xAE00,
    )
    .map_err(|e| e.to_string())?;
    Ok(vec![SeccompRule::new(vec![c]).map_err(|e| e.to_string())?])
}

/// `fcntl(fd, F_GETFD)` only: what std's debug builds ask of a descriptor
/// before closing it.
fn fcntl_getfd_only() -> Result<Vec<SeccompRule>, String> {
    let c = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::F_GETFD as u64,
    )
    .map_err(|e| e.to_string())?;
    Ok(vec![SeccompRule::new(vec![c]).map_err(|e| e.to_string())?])
}

fn compile(extra: &[i64]) -> Result<BpfProgram, String> {
    let mut rules = std::collections::BTreeMap::new();
    for &nr in COMMON.iter().chain(extra).chain(PROFILE) {
        let r = match nr {
            libc::SYS_ioctl => kvm_ioctl_only()?,
            libc::SYS_fcntl if PROFILE.is_empty() => fcntl_getfd_only()?,
            _ => vec![],
        };
        rules.insert(nr, r);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        std::env::consts::ARCH
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

impl Filters {
    /// Compiles both filters and installs the SIGSYS handler.
    pub fn build() -> Result<Filters, String> {
        let f = Filters {
            vp: compile(VP)?,
            main: compile(MAIN)?,
        };
        vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
            .map_err(|e| format!("cannot install the SIGSYS handler: {e}"))?;
        Ok(f)
    }
}

/// Installs `filter` on the calling thread (for good).
pub fn apply(filter: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(filter).map_err(|e| format!("seccomp: {e}"))
}

/// SIGSYS from the filter: one line naming the system call, then status 1.
/// Only async-signal-safe calls (write, _exit), both allowed by every filter.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SIGSYS's siginfo: si_signo, si_errno, si_code, padding, then _sigsys with
    // the call address (8 bytes) and the system call number (int) at offset 24.
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler, and
    // siginfo_t is 128 bytes.
    let nr = unsafe { (info as *const u8).add(24).cast::<i32>().read_unaligned() };
    let mut msg = *b"reference-vmm: error: system call            forbidden by the seccomp filter (run with --no-seccomp to debug)\n";
    let mut n = nr.unsigned_abs();
    let mut digits = [b' '; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    let at = "reference-vmm: error: system call ".len();
    msg[at..at + 10].copy_from_slice(&digits);
    // SAFETY: write and _exit are async-signal-safe; `msg` is a local buffer.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(1);
    }
}

/// The test hook of `--debug-forbidden-syscall`: a system call no filter allows.
pub fn forbidden_syscall() {
    // SAFETY: getppid has no preconditions; under the filter it traps.
    let _ = unsafe { libc::syscall(libc::SYS_getppid) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile() {
        assert!(!compile(VP).unwrap().is_empty());
        assert!(!compile(MAIN).unwrap().is_empty());
    }
}
