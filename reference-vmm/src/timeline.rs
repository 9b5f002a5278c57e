//! The `--timings` boot timeline on stderr.

use std::time::Instant;

/// Marks events with the time since the VMM started.
pub struct Timeline {
    start: Instant,
    enabled: bool,
}

impl Timeline {
    /// A timeline starting now; silent unless `enabled`.
    pub fn new(start: Instant, enabled: bool) -> Self {
        Timeline { start, enabled }
    }

    /// Prints `what` with the elapsed time.
    pub fn mark(&self, what: &str) {
        if self.enabled {
            crate::diag::line(format_args!(
                "[{:>10.6} s] {what}\n",
                self.start.elapsed().as_secs_f64()
            ));
        }
    }
}
