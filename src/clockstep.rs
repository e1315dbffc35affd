//! Forward steps of the wall clock, so a message's age is not taken from them.
//!
//! Why: routers and many small boards have no real-time clock. They boot with an old time (the
//! firmware's build date, or the last time saved to flash), take mail at once (a "booted"
//! alert), and set the clock right only once NTP answers, days or months later. A message
//! queued before that step would look that much older, and one failed attempt after the step
//! would bounce it as "gave up after 5 days" minutes after it arrived. The relay watches the
//! wall clock against the monotonic one and counts the age of messages queued before a step
//! from after it. A time spent suspended counts the same way (the monotonic clock stops).

use std::time::Instant;

/// A wall clock that moved this much further than the monotonic one between two looks has
/// been stepped (NTP slews small errors; it steps only large ones).
const STEP_MS: u64 = 60_000;
/// Steps remembered: enough for a few NTP corrections in one run.
const MAX_STEPS: usize = 16;

/// One forward step of the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Wall-clock time just before the step (ms): a message that arrived up to then came
    /// before it.
    pub before_ms: u64,
    /// How far the clock moved forward (ms).
    pub by_ms: u64,
}

/// ClockWatch compares the wall clock with the monotonic one at each look.
#[derive(Debug, Default)]
pub struct ClockWatch {
    last: Option<(u64, Instant)>,
    steps: Vec<Step>,
}

impl ClockWatch {
    /// observe takes a look at the clocks (`wall_ms` since the epoch, `mono` now) and returns
    /// the step found since the last look, if any.
    pub fn observe(&mut self, wall_ms: u64, mono: Instant) -> Option<Step> {
        let (w0, m0) = self.last.replace((wall_ms, mono))?;
        let expected = w0.saturating_add(mono.saturating_duration_since(m0).as_millis() as u64);
        if wall_ms <= expected.saturating_add(STEP_MS) {
            return None;
        }
        let step = Step {
            before_ms: expected,
            by_ms: wall_ms - expected,
        };
        if self.steps.len() == MAX_STEPS {
            self.steps.remove(0);
        }
        self.steps.push(step);
        Some(step)
    }

    /// shift_s is how many seconds to add to an arrival time (seconds since the epoch) so that
    /// the message's age does not include the steps after it.
    pub fn shift_s(&self, arrival_s: u64) -> u64 {
        let at = arrival_s.saturating_mul(1000);
        self.steps
            .iter()
            .filter(|s| at <= s.before_ms)
            .map(|s| s.by_ms)
            .sum::<u64>()
            / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_forward_step_shifts_the_messages_queued_before_it() {
        let t0 = Instant::now();
        let mut c = ClockWatch::default();
        let boot = 1_600_000_000_000; // the clock a board boots with
        assert_eq!(c.observe(boot, t0), None);
        // One second later, by both clocks: no step.
        assert_eq!(c.observe(boot + 1000, t0 + Duration::from_secs(1)), None);
        // NTP: the wall clock jumps 200 days while 1 s passes.
        let jump = 200 * 86_400_000;
        let step = c
            .observe(boot + 2000 + jump, t0 + Duration::from_secs(2))
            .expect("a step");
        assert_eq!(
            step,
            Step {
                before_ms: boot + 2000,
                by_ms: jump
            }
        );
        // Queued before it: aged from after it; queued after it: as is.
        assert_eq!(c.shift_s((boot + 1000) / 1000), jump / 1000);
        assert_eq!(c.shift_s((boot + 3000 + jump) / 1000), 0);
        // Small differences (a slew, a busy second) are no step; a step back is none either.
        assert_eq!(
            c.observe(boot + 3000 + jump + 30_000, t0 + Duration::from_secs(3)),
            None
        );
        assert_eq!(c.observe(boot, t0 + Duration::from_secs(4)), None);
    }

    #[test]
    fn steps_add_up_and_are_bounded() {
        let t0 = Instant::now();
        let mut c = ClockWatch::default();
        let mut wall = 1_000_000_000;
        c.observe(wall, t0);
        for i in 1..=(MAX_STEPS as u64 + 4) {
            wall += 120_000;
            assert!(c.observe(wall, t0 + Duration::from_millis(i)).is_some());
        }
        assert_eq!(c.steps.len(), MAX_STEPS);
        // A message from the very start counts the remembered steps, each ~120 s.
        let s = c.shift_s(1_000_000);
        assert!(
            s >= 119 * MAX_STEPS as u64 && s <= 120 * MAX_STEPS as u64,
            "{s}"
        );
    }
}
