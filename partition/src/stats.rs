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
}
