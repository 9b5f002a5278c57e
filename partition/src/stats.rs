//! Counters of exits by reason and hypercalls by code, with the time spent.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use exit_decoder::VpExit;
use hv_defs::{HvStatus, HypercallCode};

use crate::hyperv::HYPERCALL_PORT;

/// A count and the total time of the events counted.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// How many.
    pub count: u64,
    /// How many of them failed (hypercalls: a status other than success).
    pub failed: u64,
    /// Total time.
    pub time: Duration,
}

/// Exit and hypercall counters of a partition, updated by every VP thread.
#[derive(Debug, Default)]
pub struct Stats {
    exits: Mutex<BTreeMap<&'static str, Counter>>,
    hypercalls: Mutex<BTreeMap<u16, Counter>>,
    switches: Mutex<VtlSwitchStats>,
    intercepts: std::sync::atomic::AtomicU64,
}

/// Where the time of the VP's VTL switches (HvCallVtlCall, HvCallVtlReturn)
/// went, up to the target VTL's `KVM_RUN`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VtlSwitchStats {
    /// Completing the caller's trapping port write (a `KVM_RUN` that runs no
    /// guest instruction).
    pub completion: Counter,
    /// Reading the shared state from the caller's vCPU and loading it into
    /// the target's (with the target's entry reason).
    pub copy: Counter,
}

impl Stats {
    /// Counts `exit`, which took `time` from `KVM_RUN` entry. [`crate::Vp::run`]
    /// counts its own exits; a VMM's own loop calls this after each `KVM_RUN`
    /// (through [`crate::Partition::stats`]) to feed the same table.
    pub fn record_exit(&self, exit: &VpExit<'_>, time: Duration) {
        self.exit(exit_name(exit), time);
    }

    fn exit(&self, reason: &'static str, time: Duration) {
        let mut m = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        let c = m.entry(reason).or_default();
        c.count += 1;
        c.time += time;
    }

    pub(crate) fn hypercall(&self, code: HypercallCode, status: HvStatus, time: Duration) {
        let mut m = self.hypercalls.lock().unwrap_or_else(|e| e.into_inner());
        let c = m.entry(code.0).or_default();
        c.count += 1;
        c.failed += (status != HvStatus::SUCCESS) as u64;
        c.time += time;
    }

    pub(crate) fn vtl_switch(&self, completion: Duration, copy: Duration) {
        let mut s = self.switches.lock().unwrap_or_else(|e| e.into_inner());
        s.completion.count += 1;
        s.completion.time += completion;
        s.copy.count += 1;
        s.copy.time += copy;
    }

    pub(crate) fn intercept(&self) {
        self.intercepts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many memory intercepts (accesses a higher VTL's protection
    /// refused) were delivered to a higher VTL.
    pub fn intercepts(&self) -> u64 {
        self.intercepts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The VTL switches so far and where their time went.
    pub fn vtl_switches(&self) -> VtlSwitchStats {
        *self.switches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Exits by reason, each timed from KVM_RUN entry to the exit (guest execution
    /// included).
    pub fn exits(&self) -> Vec<(&'static str, Counter)> {
        let m = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Hypercalls by code, timed from the trap to the result.
    pub fn hypercalls(&self) -> Vec<(HypercallCode, Counter)> {
        let m = self.hypercalls.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (HypercallCode(*k), *v)).collect()
    }

    /// How many hypercalls with `code` were made.
    pub fn hypercall_count(&self, code: HypercallCode) -> u64 {
        self.hypercall_counter(code).count
    }

    /// The counter of hypercalls with `code`.
    pub fn hypercall_counter(&self, code: HypercallCode) -> Counter {
        let m = self.hypercalls.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&code.0).copied().unwrap_or_default()
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let avg = |c: &Counter| c.time.as_secs_f64() * 1e6 / c.count.max(1) as f64;
        let (n, ms) = ("count", "in KVM ms");
        writeln!(f, "{:<34} {n:>10} {ms:>12} {:>10}", "exit reason", "avg us")?;
        for (k, c) in self.exits() {
            let ms = c.time.as_secs_f64() * 1e3;
            writeln!(f, "{k:<34} {:>10} {ms:>12.3} {:>10.2}", c.count, avg(&c))?;
        }
        let (failed, ms) = ("failed", "handling ms");
        writeln!(
            f,
            "{:<34} {n:>10} {failed:>7} {ms:>12} {:>10}",
            "hypercall", "avg us"
        )?;
        for (k, c) in self.hypercalls() {
            let name = match k.name() {
                Some(n) => format!("{n} ({:#06x})", k.0),
                None => format!("{:#06x}", k.0),
            };
            let ms = c.time.as_secs_f64() * 1e3;
            writeln!(
                f,
                "{name:<34} {:>10} {:>7} {ms:>12.3} {:>10.2}",
                c.count,
                c.failed,
                avg(&c)
            )?;
        }
        let v = self.vtl_switches();
        if v.completion.count > 0 {
            writeln!(
                f,
                "VTL switches {}: completion {:.2} us, shared-state copy {:.2} us (avg)",
                v.completion.count,
                avg(&v.completion),
                avg(&v.copy)
            )?;
        }
        Ok(())
    }
}

/// A stable name for an exit, as the statistics count it: exit-decoder's
/// [`VpExit::name`], with writes to the hypercall trap port counted apart.
pub fn exit_name(e: &VpExit<'_>) -> &'static str {
    if let VpExit::IoPortAccess {
        port: HYPERCALL_PORT,
        ..
    } = e
    {
        return "IoPortAccess (hypercall)";
    }
    e.name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use exit_decoder::Access;

    #[test]
    fn exits_are_counted_by_name_with_the_trap_port_apart() {
        let stats = Stats::default();
        let trap = VpExit::IoPortAccess {
            port: HYPERCALL_PORT,
            access: Access::Write(&[0; 4]),
        };
        let port = VpExit::IoPortAccess {
            port: 0x3F8,
            access: Access::Write(&[0]),
        };
        stats.record_exit(&trap, Duration::from_micros(3));
        stats.record_exit(&port, Duration::from_micros(1));
        stats.record_exit(&port, Duration::from_micros(1));
        stats.record_exit(&VpExit::Halt, Duration::ZERO);
        let exits = stats.exits();
        let count = |n: &str| exits.iter().find(|(k, _)| *k == n).map(|(_, c)| c.count);
        assert_eq!(count("IoPortAccess (hypercall)"), Some(1));
        assert_eq!(count("IoPortAccess"), Some(2));
        assert_eq!(count("Halt"), Some(1));
        let shown = format!("{stats}");
        assert!(shown.contains("IoPortAccess (hypercall)"), "{shown}");
    }

    #[test]
    fn vtl_switches_are_timed_by_phase() {
        let stats = Stats::default();
        assert!(!format!("{stats}").contains("VTL switches"));
        stats.vtl_switch(Duration::from_micros(2), Duration::from_micros(6));
        stats.vtl_switch(Duration::from_micros(4), Duration::from_micros(10));
        let v = stats.vtl_switches();
        assert_eq!((v.completion.count, v.copy.count), (2, 2));
        assert_eq!(v.completion.time, Duration::from_micros(6));
        assert_eq!(v.copy.time, Duration::from_micros(16));
        let shown = format!("{stats}");
        assert!(
            shown.contains("VTL switches 2: completion 3.00 us, shared-state copy 8.00 us"),
            "{shown}"
        );
    }
}
