//! The storm view: how fast mail arrives and whether the queue grows, so that `status` can
//! answer "is mail flowing?" honestly during an alert storm (a failing disk, a flapping UPS).
//! Fixed memory whatever the load; times are passed in, so it is tested without a clock.

/// Arrivals per second for the last minute and per minute for the last hour, and the queue
/// length once a second for the last minute.
#[derive(Debug, Clone)]
pub struct Storm {
    /// (unix second, arrivals in it), indexed by second % 60.
    seconds: [(u64, u64); 60],
    /// (unix minute, arrivals in it), indexed by minute % 60.
    minutes: [(u64, u64); 60],
    /// (unix second, queue length), indexed by second % 60.
    queue: [(u64, usize); 60],
    /// The growth warning was given and the queue has not stopped growing since.
    warned: bool,
}

impl Default for Storm {
    fn default() -> Storm {
        Storm {
            seconds: [(u64::MAX, 0); 60],
            minutes: [(u64::MAX, 0); 60],
            queue: [(u64::MAX, 0); 60],
            warned: false,
        }
    }
}

/// bump adds `n` to the bucket of `stamp` in a ring of 60.
fn bump(ring: &mut [(u64, u64); 60], stamp: u64, n: u64) {
    let b = &mut ring[(stamp % 60) as usize];
    if b.0 != stamp {
        *b = (stamp, 0);
    }
    b.1 = b.1.saturating_add(n);
}

/// within sums the buckets stamped in (now - 60, now].
fn within(ring: &[(u64, u64); 60], now: u64) -> u64 {
    ring.iter()
        .filter(|(t, _)| *t != u64::MAX && *t <= now && now - *t < 60)
        .map(|(_, n)| n)
        .sum()
}

impl Storm {
    /// arrived counts `n` new messages at `now` (unix seconds).
    pub fn arrived(&mut self, now: u64, n: u64) {
        bump(&mut self.seconds, now, n);
        bump(&mut self.minutes, now / 60, n);
    }

    /// last_minute is how many messages arrived in the last 60 seconds.
    pub fn last_minute(&self, now: u64) -> u64 {
        within(&self.seconds, now)
    }

    /// last_hour is how many arrived in the last 60 minutes (by whole minutes).
    pub fn last_hour(&self, now: u64) -> u64 {
        within(&self.minutes, now / 60)
    }

    /// sample records the queue length at `now`.
    pub fn sample(&mut self, now: u64, queued: usize) {
        self.queue[(now % 60) as usize] = (now, queued);
    }

    /// growth_per_minute is how much the queue grew over the last minute (negative: it
    /// shrank), scaled from the oldest sample of that minute; 0 without two samples.
    pub fn growth_per_minute(&self, now: u64) -> i64 {
        let recent = self
            .queue
            .iter()
            .filter(|(t, _)| *t != u64::MAX && *t <= now && now - *t < 60);
        let (Some(old), Some(new)) = (
            recent.clone().min_by_key(|(t, _)| *t),
            recent.max_by_key(|(t, _)| *t),
        ) else {
            return 0;
        };
        let span = new.0.saturating_sub(old.0);
        if span == 0 {
            return 0;
        }
        let grown = new.1 as i64 - old.1 as i64;
        grown.saturating_mul(60) / span as i64
    }

    /// check gives the warning to log, once, when the queue grows faster than the pace
    /// allows (`pace_per_minute`: what the smarthost may take, None when not paced), with an
    /// estimate of when it drains once arrivals stop. Re-armed when the queue stops growing.
    pub fn check(
        &mut self,
        now: u64,
        queued: usize,
        pace_per_minute: Option<f64>,
    ) -> Option<String> {
        let growth = self.growth_per_minute(now);
        if growth <= 0 {
            self.warned = false;
            return None;
        }
        let pace = pace_per_minute.filter(|p| *p > 0.0)?;
        let arriving = self.last_minute(now) as f64;
        if self.warned || arriving <= pace {
            return None;
        }
        self.warned = true;
        let minutes = (queued as f64 / pace).ceil() as u64;
        Some(format!(
            "queue growing faster than the smarthost's pace: {arriving:.0} message(s) arrived in the last minute, {pace:.1} a minute may be sent, {queued} queued: drains in about {} once the storm stops",
            crate::queue_cmd::human(minutes.saturating_mul(60))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_over_the_last_minute_and_hour() {
        let mut s = Storm::default();
        let t0 = 1_800_000_000;
        for i in 0..120 {
            s.arrived(t0 + i, 2);
        }
        let now = t0 + 119;
        assert_eq!(s.last_minute(now), 120, "60 seconds of 2");
        assert_eq!(s.last_hour(now), 240);
        assert_eq!(s.last_minute(now + 600), 0);
        assert_eq!(s.last_hour(now + 3600), 0);
        // Buckets are reused, never grown.
        s.arrived(now + 7200, 5);
        assert_eq!((s.last_minute(now + 7200), s.last_hour(now + 7200)), (5, 5));
    }

    #[test]
    fn growth_and_the_warning_given_once() {
        let mut s = Storm::default();
        let t0 = 1_800_000_000;
        assert_eq!(s.growth_per_minute(t0), 0);
        // 3 arrive a second, 1 a second is sent: +2 a second.
        for i in 0..=30 {
            s.arrived(t0 + i, 3);
            s.sample(t0 + i, 10 + 2 * i as usize);
        }
        let now = t0 + 30;
        assert_eq!(s.growth_per_minute(now), 120);
        let w = s.check(now, 70, Some(60.0)).expect("a warning");
        assert!(w.contains("drains in about 2m"), "{w}");
        assert_eq!(s.check(now, 70, Some(60.0)), None, "once");
        // Not paced: nothing to compare with.
        let mut unpaced = s.clone();
        unpaced.warned = false;
        assert_eq!(unpaced.check(now, 70, None), None);
        // The queue shrinks: re-armed.
        for i in 31..=90 {
            s.sample(t0 + i, 70usize.saturating_sub(i as usize - 30));
        }
        assert!(s.growth_per_minute(t0 + 90) < 0);
        assert_eq!(s.check(t0 + 90, 10, Some(60.0)), None);
        assert!(!s.warned);
    }
}
