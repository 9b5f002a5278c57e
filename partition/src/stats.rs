//! Counters of exits by reason and hypercalls by code, with the time spent.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use hv_defs::HypercallCode;

/// A count and the total time of the events counted.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// How many.
    pub count: u64,
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
    pub(crate) fn exit(&self, reason: &'static str, time: Duration) {
        let mut m = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        let c = m.entry(reason).or_default();
        c.count += 1;
        c.time += time;
    }

    pub(crate) fn hypercall(&self, code: HypercallCode, time: Duration) {
        let mut m = self.hypercalls.lock().unwrap_or_else(|e| e.into_inner());
        let c = m.entry(code.0).or_default();
        c.count += 1;
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
        let m = self.hypercalls.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&code.0).map_or(0, |c| c.count)
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<34} {:>10} {:>12} {:>10}",
            "exit reason", "count", "in KVM ms", "avg us"
        )?;
        for (k, c) in self.exits() {
            row(f, k, c)?;
        }
        writeln!(
            f,
            "{:<34} {:>10} {:>12} {:>10}",
            "hypercall", "count", "handling ms", "avg us"
        )?;
        for (k, c) in self.hypercalls() {
            let name = match k.name() {
                Some(n) => format!("{n} ({:#06x})", k.0),
                None => format!("{:#06x}", k.0),
            };
            row(f, &name, c)?;
        }
        Ok(())
    }
}

fn row(f: &mut fmt::Formatter<'_>, name: &str, c: Counter) -> fmt::Result {
    let avg = if c.count == 0 {
        0.0
    } else {
        c.time.as_secs_f64() * 1e6 / c.count as f64
    };
    writeln!(
        f,
        "{:<34} {:>10} {:>12.3} {:>10.2}",
        name,
        c.count,
        c.time.as_secs_f64() * 1e3,
        avg
    )
}
