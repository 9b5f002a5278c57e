//! Diagnostics on stderr, written so that nothing the environment does to stderr
//! can hurt the VMM: a closed or broken stderr loses the text and nothing else (no
//! panic, no changed exit status), and what a guest can trigger over and over is
//! rate-limited.
//!
//! The library crates report through the `log` facade; [`init`] installs the
//! stderr backend for it. The VMM's own lines (errors, the `--timings` timeline,
//! the `--stats` tables) go through [`line()`].

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `log` backend: `reference-vmm: <level>: <message>` on stderr.
struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            line(format_args!("reference-vmm: {level}: {}\n", record.args()));
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the stderr logger for the `log` facade at `level`. A second call
/// changes nothing.
pub fn init(level: log::LevelFilter) {
    static LOGGER: std::sync::OnceLock<StderrLogger> = std::sync::OnceLock::new();
    let logger = LOGGER.get_or_init(|| StderrLogger { level });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Writes `args` to stderr; a write error (EPIPE, EBADF, a full disk) is
/// ignored.
pub fn line(args: fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// A limit on how often one guest-triggerable message is printed: the first 8
/// times, then only at the 16th, 32nd, 64th, ... occurrence, each saying how many
/// there have been. A guest that triggers a message a million times gets about 25
/// lines.
#[derive(Debug, Default)]
pub struct RateLimit {
    count: AtomicU64,
}

impl RateLimit {
    /// A limit with nothing counted yet.
    pub const fn new() -> Self {
        RateLimit {
            count: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence; `Some(n)` (the occurrences so far) when this one
    /// should be printed.
    pub fn allow(&self) -> Option<u64> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        (n <= 8 || n.is_power_of_two()).then_some(n)
    }
}

/// A byte count as a person reads it: `512 MiB`, `1.5 GiB`, `68.2 MiB`,
/// `4097 bytes`.
pub fn size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            return if bytes % scale == 0 {
                format!("{} {unit}", bytes / scale)
            } else {
                format!("{:.1} {unit}", bytes as f64 / scale as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_prints_a_log_of_the_occurrences() {
        let r = RateLimit::new();
        let printed = (0..1_000_000).filter(|_| r.allow().is_some()).count();
        assert_eq!(printed, 8 + 16, "1..=8, then 16, 32, ... 2^19");
    }

    #[test]
    fn sizes_read_as_a_person_reads_them() {
        assert_eq!(size(512 << 20), "512 MiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(size(4097), "4.0 KiB");
        assert_eq!(size(100), "100 bytes");
        assert_eq!(size(68 * (1 << 20) + (1 << 19)), "68.5 MiB");
    }
}
