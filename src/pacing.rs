//! The pacing budget: when the smarthost's `rate` and `daily_recipients` limits let the next message go (pure; times are passed in).
//!
//! Both limits are sliding windows: at most N messages in any `rate` interval, at most R
//! recipients in any 24 hours. A send leaves the window exactly one window length after it
//! happened. Times are unix milliseconds from the caller, so no clock lives here and the tests
//! need none.
//!
//! Memory is bounded by the limits, not by the traffic: only the N newest send times can
//! decide the next rate slot, so no more are kept; recipients are kept as (time, count) pairs,
//! at most R of them (merged, oldest into the next, when more would be needed). Entries that
//! have left their window are dropped whenever the budget is spent (`record`) or loaded
//! (`decode`); the read-only questions skip them.
//!
//! A time later than `now` (the clock went back while running) counts as `now`: the budget it
//! spent is kept, and no wait ever runs past `now` plus one window.

use std::collections::VecDeque;
use std::fmt::Write as _;

use crate::config::Rate;

/// The `daily_recipients` window: a sliding 24 hours, in milliseconds.
pub const DAY_MS: u64 = 86_400_000;

/// The first line of the state file. A file that starts otherwise is ignored whole.
const HEADER: &str = "picorelay-pacing 1";

/// Pacer is what the smarthost has been handed in the current windows, and so when the next
/// message may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pacer {
    /// `rate` as (messages, window in ms); None = no limit.
    rate: Option<(u64, u64)>,
    /// `daily_recipients`; None = no limit.
    daily: Option<u64>,
    /// Send times, oldest first, at most `rate.0` of them; empty without a rate.
    sends: VecDeque<u64>,
    /// (time, recipients), oldest first, at most `daily` pairs, each count at most `daily`
    /// (more blocks the whole window just the same); empty without a daily limit.
    rcpts: VecDeque<(u64, u64)>,
}

impl Pacer {
    /// new is an empty budget. A rate of 0 messages or a zero interval is no limit (the config
    /// refuses both), as is a daily limit of 0: a limit that never lets anything go would only
    /// hold the queue until every message expires.
    pub fn new(rate: Option<Rate>, daily_recipients: Option<u64>) -> Pacer {
        let rate = rate
            .map(|r| {
                let ms = u64::try_from(r.per.as_millis()).unwrap_or(u64::MAX);
                (r.count, ms)
            })
            .filter(|&(n, ms)| n > 0 && ms > 0);
        Pacer {
            rate,
            daily: daily_recipients.filter(|&r| r > 0),
            sends: VecDeque::new(),
            rcpts: VecDeque::new(),
        }
    }

    /// is_unlimited: neither a rate nor a daily recipient limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.rate.is_none() && self.daily.is_none()
    }

    /// next_slot is None when a message with `recipients` recipients may go at `now`, else the
    /// earliest time both limits allow it. A message with more recipients than the whole daily
    /// budget needs the whole window (it goes once the window is empty), so it is never held
    /// for ever.
    pub fn next_slot(&self, now: u64, recipients: usize) -> Option<u64> {
        let t = self.rate_slot(now).max(self.rcpt_slot(now, recipients));
        (t > now).then_some(t)
    }

    /// record spends the budget: a message with `recipients` recipients was handed to the
    /// smarthost at `now` (whether or not `next_slot` allowed it: the provider counted it).
    pub fn record(&mut self, now: u64, recipients: usize) {
        self.prune(now);
        if self.rate.is_some() {
            self.sends.push_back(now);
        }
        if let Some(r) = self.daily {
            let count = u64::try_from(recipients).unwrap_or(u64::MAX).min(r);
            match self.rcpts.back_mut() {
                _ if count == 0 => {}
                Some((t, c)) if *t == now => *c = c.saturating_add(count).min(r),
                _ => self.rcpts.push_back((now, count)),
            }
        }
        self.bound();
    }

    /// budget_left is how many more messages the rate window takes at `now`; None without a
    /// rate limit.
    pub fn budget_left(&self, now: u64) -> Option<u64> {
        let (n, w) = self.rate?;
        let inside = self.sends.len() - self.sends_from(now, w);
        Some(n.saturating_sub(inside as u64))
    }

    /// refills_at is when the oldest send in the rate window leaves it (and the budget grows
    /// by one); None without a rate limit or when nothing is in the window.
    pub fn refills_at(&self, now: u64) -> Option<u64> {
        let (_, w) = self.rate?;
        let oldest = *self.sends.get(self.sends_from(now, w))?;
        Some(oldest.min(now).saturating_add(w))
    }

    /// recipients_left is how many more recipients the 24 h window takes at `now`; None
    /// without a daily limit.
    pub fn recipients_left(&self, now: u64) -> Option<u64> {
        let r = self.daily?;
        let used = self
            .rcpts
            .range(self.rcpts_from(now)..)
            .fold(0u64, |sum, &(_, c)| sum.saturating_add(c));
        Some(r.saturating_sub(used))
    }

    /// slot_of is when the k-th (0-based) waiting one-recipient message could go if nothing
    /// else is sent and the ones before it go at their own slots: None when at `now`.
    /// `slot_of(now, 0)` is `next_slot(now, 1)`. It walks k steps; to label a whole queue, use
    /// `slots` once instead.
    #[cfg(test)]
    pub fn slot_of(&self, now: u64, k: usize) -> Option<u64> {
        self.slots(now).nth(k).filter(|&t| t > now)
    }

    /// slots yields, in order, the times at which waiting one-recipient messages could go if
    /// nothing else is sent (times ≥ `now`; `now` itself means "at once"). It keeps at most the
    /// limits' worth of simulated sends (O(window)), whatever the number of steps.
    pub fn slots(&self, now: u64) -> Slots<'_> {
        let lane = |limit, span, sum| Lane {
            limit,
            span,
            at: 0,
            simulated: VecDeque::new(),
            sum,
        };
        Slots {
            pacer: self,
            now,
            prev: now,
            rate: self.rate.map(|(n, w)| lane(n, w, self.sends.len() as u64)),
            daily: self.daily.map(|r| {
                let sum = self
                    .rcpts
                    .iter()
                    .fold(0u64, |s, &(_, c)| s.saturating_add(c));
                lane(r, DAY_MS, sum)
            }),
        }
    }

    /// encode is the state file: the header line, then `send TIME` and `rcpt TIME COUNT` lines
    /// (unix milliseconds), oldest first.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(32 + 20 * (self.sends.len() + self.rcpts.len()));
        out.push_str(HEADER);
        out.push_str("\n# send UNIX_MS | rcpt UNIX_MS RECIPIENTS: what the smarthost was handed in the current windows\n");
        for t in &self.sends {
            let _ = writeln!(out, "send {t}");
        }
        for (t, c) in &self.rcpts {
            let _ = writeln!(out, "rcpt {t} {c}");
        }
        out
    }

    /// decode reads a state file written by `encode` for the limits configured now. It never
    /// fails: a file with another header gives an empty budget; bad lines are skipped; entries
    /// later than `now` (a clock that went back, or a file from elsewhere: nothing vouches for
    /// them) or outside their window at `now` are dropped; after a config change what still
    /// fits is kept (the newest sends of a smaller rate, nothing of a limit now unset).
    pub fn decode(
        text: &str,
        rate: Option<Rate>,
        daily_recipients: Option<u64>,
        now: u64,
    ) -> Pacer {
        let mut p = Pacer::new(rate, daily_recipients);
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(HEADER) {
            return p;
        }
        let mut sends = Vec::new();
        let mut rcpts = Vec::new();
        let fresh = |t: u64, span: u64| t <= now && t.saturating_add(span) > now;
        for line in lines {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            match (fields.first().copied(), fields.len()) {
                (Some("send"), 2) => match (num(1), p.rate) {
                    (Some(t), Some((_, w))) if fresh(t, w) => sends.push(t),
                    _ => {}
                },
                (Some("rcpt"), 3) => match (num(1), num(2), p.daily) {
                    (Some(t), Some(c), Some(r)) if c > 0 && fresh(t, DAY_MS) => {
                        rcpts.push((t, c.min(r)))
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        // A file edited by hand may be out of order; the windows need oldest first.
        sends.sort_unstable();
        rcpts.sort_unstable();
        p.sends = sends.into();
        for (t, c) in rcpts {
            match p.rcpts.back_mut() {
                Some((last, sum)) if *last == t => *sum = sum.saturating_add(c),
                _ => p.rcpts.push_back((t, c)),
            }
        }
        if let Some(r) = p.daily {
            for (_, c) in p.rcpts.iter_mut() {
                *c = (*c).min(r);
            }
        }
        p.bound();
        p
    }

    /// rate_slot is the earliest time ≥ `now` the rate window takes one more message.
    fn rate_slot(&self, now: u64) -> u64 {
        let Some((n, w)) = self.rate else { return now };
        let from = self.sends_from(now, w);
        let inside = (self.sends.len() - from) as u64;
        if inside < n {
            return now;
        }
        // The window takes one more once all but n - 1 of its sends have left it; `inside`
        // is at least n here, so the index is inside the deque.
        let leaving = from + (inside - n) as usize;
        self.sends[leaving].min(now).saturating_add(w)
    }

    /// rcpt_slot is the earliest time ≥ `now` the 24 h window takes `recipients` more
    /// (at most the whole budget: see `next_slot`).
    fn rcpt_slot(&self, now: u64, recipients: usize) -> u64 {
        let Some(r) = self.daily else { return now };
        let need = u64::try_from(recipients).unwrap_or(u64::MAX).min(r);
        if need == 0 {
            return now;
        }
        let inside = self.rcpts.range(self.rcpts_from(now)..);
        let mut used = inside
            .clone()
            .fold(0u64, |sum, &(_, c)| sum.saturating_add(c));
        if used.saturating_add(need) <= r {
            return now;
        }
        for &(t, c) in inside {
            used = used.saturating_sub(c);
            if used.saturating_add(need) <= r {
                return t.min(now).saturating_add(DAY_MS);
            }
        }
        // Not reached: with every entry gone, need <= r fits.
        now
    }

    /// sends_from is the index of the first send still in the rate window at `now`.
    fn sends_from(&self, now: u64, w: u64) -> usize {
        self.sends.partition_point(|&t| t.saturating_add(w) <= now)
    }

    /// rcpts_from is the index of the first recipients entry still in the 24 h window at `now`.
    fn rcpts_from(&self, now: u64) -> usize {
        self.rcpts
            .partition_point(|&(t, _)| t.saturating_add(DAY_MS) <= now)
    }

    /// prune drops what has left the windows at `now` and brings times later than `now` back
    /// to `now` (see the module comment), which keeps both lists in order.
    fn prune(&mut self, now: u64) {
        for t in self.sends.iter_mut().rev() {
            if *t <= now {
                break;
            }
            *t = now;
        }
        for (t, _) in self.rcpts.iter_mut().rev() {
            if *t <= now {
                break;
            }
            *t = now;
        }
        if let Some((_, w)) = self.rate {
            let from = self.sends_from(now, w);
            self.sends.drain(..from);
        }
        let from = self.rcpts_from(now);
        self.rcpts.drain(..from);
    }

    /// bound keeps memory within the limits: the n newest sends (older ones cannot decide a
    /// slot any more), and at most r recipient entries, merging the oldest into the next one
    /// (its recipients then count a little longer: the safe side).
    fn bound(&mut self) {
        match self.rate {
            Some((n, _)) => {
                let excess = (self.sends.len() as u64).saturating_sub(n) as usize;
                self.sends.drain(..excess);
            }
            None => self.sends.clear(),
        }
        match self.daily {
            Some(r) => {
                while self.rcpts.len() as u64 > r {
                    let Some((_, c)) = self.rcpts.pop_front() else {
                        break;
                    };
                    if let Some((_, next)) = self.rcpts.front_mut() {
                        *next = next.saturating_add(c).min(r);
                    }
                }
            }
            None => self.rcpts.clear(),
        }
    }
}

/// Slots is the iterator of `Pacer::slots`: it simulates one-recipient sends, each at the
/// earliest time both limits allow after the previous one. It never ends.
pub struct Slots<'a> {
    pacer: &'a Pacer,
    now: u64,
    /// The previous slot (messages go in arrival order), at first `now`.
    prev: u64,
    /// The rate window, when limited.
    rate: Option<Lane>,
    /// The 24 h recipients window, when limited.
    daily: Option<Lane>,
}

/// Lane is one sliding window as the simulation sees it: the pacer's entries from `at` on
/// (times later than the start counted at the start), then the simulated sends.
struct Lane {
    /// Units the window holds.
    limit: u64,
    /// Window length in ms.
    span: u64,
    /// The pacer's first entry not yet left behind.
    at: usize,
    /// Simulated one-unit sends still counted, oldest first: at most `limit` of them.
    simulated: VecDeque<u64>,
    /// Units counted: the pacer's entries from `at` plus `simulated.len()`.
    sum: u64,
}

impl Lane {
    /// fit is the earliest time ≥ `t` the window takes one more unit. `entry(i)` is the
    /// pacer's i-th (time, units), oldest first; all of them are older than every simulated one.
    fn fit(&mut self, mut t: u64, entry: impl Fn(usize) -> Option<(u64, u64)>) -> u64 {
        loop {
            let pacer_entry = entry(self.at);
            let oldest = pacer_entry.or_else(|| self.simulated.front().map(|&s| (s, 1)));
            let Some((time, units)) = oldest else { break };
            let leaves = time.saturating_add(self.span);
            if leaves > t && self.sum.saturating_add(1) <= self.limit {
                break;
            }
            // Gone by t already, or it has to go before one more fits.
            t = t.max(leaves);
            if pacer_entry.is_some() {
                self.at += 1;
            } else {
                self.simulated.pop_front();
            }
            self.sum = self.sum.saturating_sub(units);
        }
        t
    }

    /// add counts a simulated send at `t`.
    fn add(&mut self, t: u64) {
        self.simulated.push_back(t);
        self.sum = self.sum.saturating_add(1);
    }
}

impl Iterator for Slots<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let (p, now) = (self.pacer, self.now);
        let mut t = self.prev;
        // The rate slot first: a later recipients slot only lets more sends leave the rate
        // window, so it cannot undo it.
        if let Some(lane) = self.rate.as_mut() {
            t = lane.fit(t, |i| p.sends.get(i).map(|&s| (s.min(now), 1)));
        }
        if let Some(lane) = self.daily.as_mut() {
            t = lane.fit(t, |i| p.rcpts.get(i).map(|&(s, c)| (s.min(now), c)));
        }
        for lane in [self.rate.as_mut(), self.daily.as_mut()]
            .into_iter()
            .flatten()
        {
            lane.add(t);
        }
        self.prev = t;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: u64 = 1000;
    const MIN: u64 = 60 * S;

    fn rate(count: u64, secs: u64) -> Option<Rate> {
        Some(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }

    /// One scenario: the limits, then (now, recipients, what next_slot says); a message that
    /// may go is recorded, as delivery would.
    struct Case {
        name: &'static str,
        rate: Option<Rate>,
        daily: Option<u64>,
        steps: Vec<(u64, usize, Option<u64>)>,
    }

    #[test]
    fn windows() {
        let mut gmail_day: Vec<(u64, usize, Option<u64>)> =
            (0..500).map(|i| (i * S, 1, None)).collect();
        gmail_day.extend([
            (500 * S, 1, Some(DAY_MS)),
            (DAY_MS - 1, 1, Some(DAY_MS)),
            (DAY_MS, 1, None),
            (DAY_MS, 1, Some(DAY_MS + S)),
            (DAY_MS + S, 1, None),
        ]);
        let cases = vec![
            Case {
                name: "5/2s: five go, the sixth waits until the first leaves the window",
                rate: rate(5, 2),
                daily: None,
                steps: vec![
                    (0, 1, None),
                    (100, 1, None),
                    (200, 1, None),
                    (300, 1, None),
                    (400, 1, None),
                    (500, 1, Some(2000)),
                    (1999, 40, Some(2000)),
                    (2000, 1, None),
                    (2001, 1, Some(2100)),
                    (2100, 1, None),
                    (2100, 1, Some(2200)),
                    (10_000, 1, None),
                ],
            },
            Case {
                name: "500/1d (Gmail)",
                rate: rate(500, 86400),
                daily: None,
                steps: gmail_day,
            },
            Case {
                name: "10 recipients a day, messages of several recipients",
                rate: None,
                daily: Some(10),
                steps: vec![
                    (0, 4, None),
                    (1, 4, None),
                    (2, 4, Some(DAY_MS)),
                    (2, 2, None),
                    (3, 1, Some(DAY_MS)),
                    (4, 0, None),
                    (DAY_MS, 1, None),
                    (DAY_MS, 4, Some(DAY_MS + 1)),
                    (DAY_MS + 1, 4, None),
                ],
            },
            Case {
                name: "both limits: the rate first, then the daily recipients",
                rate: rate(2, 60),
                daily: Some(3),
                steps: vec![
                    (0, 1, None),
                    (1, 1, None),
                    (2, 1, Some(MIN)),
                    (MIN, 1, None),
                    (MIN + 1, 1, Some(DAY_MS)),
                    (DAY_MS, 1, None),
                    (DAY_MS, 1, Some(DAY_MS + 1)),
                ],
            },
            Case {
                name: "more recipients than the daily budget: it waits for an empty window",
                rate: None,
                daily: Some(10),
                steps: vec![
                    (0, 25, None),
                    (1, 1, Some(DAY_MS)),
                    (DAY_MS, 3, None),
                    (DAY_MS + 5, 25, Some(2 * DAY_MS)),
                    (2 * DAY_MS - 1, 11, Some(2 * DAY_MS)),
                    (2 * DAY_MS, 25, None),
                ],
            },
            Case {
                name: "no limits",
                rate: None,
                daily: None,
                steps: (0..20).map(|i| (i, 1000, None)).collect(),
            },
        ];
        for case in cases {
            let mut p = Pacer::new(case.rate, case.daily);
            for (i, &(now, rcpts, want)) in case.steps.iter().enumerate() {
                assert_eq!(
                    p.next_slot(now, rcpts),
                    want,
                    "{}: step {i} at {now}",
                    case.name
                );
                if want.is_none() {
                    p.record(now, rcpts);
                }
                assert!(
                    p.sends.len() as u64 <= case.rate.map_or(0, |r| r.count),
                    "{}",
                    case.name
                );
                assert!(
                    p.rcpts.len() as u64 <= case.daily.unwrap_or(0),
                    "{}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn budget_questions() {
        let mut p = Pacer::new(rate(5, 2), Some(10));
        // (now, budget_left, refills_at, recipients_left), after sends at 0, 100 (3 rcpts), 200.
        p.record(0, 1);
        p.record(100, 3);
        p.record(200, 1);
        type Row = (u64, Option<u64>, Option<u64>, Option<u64>);
        let table: &[Row] = &[
            (200, Some(2), Some(2000), Some(5)),
            (1999, Some(2), Some(2000), Some(5)),
            (2000, Some(3), Some(2100), Some(5)),
            (2200, Some(5), None, Some(5)),
            (DAY_MS, Some(5), None, Some(6)),
            (DAY_MS + 100, Some(5), None, Some(9)),
            (DAY_MS + 200, Some(5), None, Some(10)),
        ];
        for &(now, budget, refill, left) in table {
            assert_eq!(p.budget_left(now), budget, "budget_left at {now}");
            assert_eq!(p.refills_at(now), refill, "refills_at at {now}");
            assert_eq!(p.recipients_left(now), left, "recipients_left at {now}");
        }
        let none = Pacer::new(None, None);
        assert_eq!(
            (
                none.budget_left(5),
                none.refills_at(5),
                none.recipients_left(5)
            ),
            (None, None, None)
        );
    }

    #[test]
    fn slot_of_on_5_per_2s() {
        let mut p = Pacer::new(rate(5, 2), None);
        for t in [0, 100, 200, 300, 400] {
            p.record(t, 1);
        }
        let want = [
            2000, 2100, 2200, 2300, 2400, 4000, 4100, 4200, 4300, 4400, 6000, 6100, 6200,
        ];
        for (k, w) in want.iter().enumerate() {
            assert_eq!(p.slot_of(500, k), Some(*w), "k = {k}");
        }
        // An empty budget: five at once, then one window per five.
        let empty = Pacer::new(rate(5, 2), None);
        let want: [Option<u64>; 13] = [
            None,
            None,
            None,
            None,
            None,
            Some(3000),
            Some(3000),
            Some(3000),
            Some(3000),
            Some(3000),
            Some(5000),
            Some(5000),
            Some(5000),
        ];
        for (k, w) in want.iter().enumerate() {
            assert_eq!(empty.slot_of(1000, k), *w, "empty, k = {k}");
        }
    }

    #[test]
    fn slots_agree_with_sending_at_each_next_slot() {
        // Whatever the limits and history, the k-th slot is where delivery would send the k-th
        // one-recipient message by asking next_slot and recording.
        type History = Vec<(u64, usize)>;
        let cases: Vec<(Option<Rate>, Option<u64>, History)> = vec![
            (rate(5, 2), None, vec![(0, 1), (100, 1), (200, 1)]),
            (None, Some(7), vec![(0, 3), (50, 1), (60, 2)]),
            (rate(3, 60), Some(8), vec![(0, 1), (10, 5), (20, 1)]),
            (rate(2, 1), Some(5), vec![]),
            (rate(4, 3600), Some(3), vec![(0, 40)]),
            (rate(30, 60), Some(10000), vec![(0, 1); 30]),
        ];
        for (r, d, history) in cases {
            let mut p = Pacer::new(r, d);
            for &(t, n) in &history {
                p.record(t, n);
            }
            let now = 100;
            let mut sim = p.clone();
            let mut t = now;
            for (k, slot) in p.slots(now).take(40).enumerate() {
                if let Some(next) = sim.next_slot(t, 1) {
                    t = next;
                }
                assert_eq!(slot, t, "{r:?} {d:?} {history:?}: k = {k}");
                assert_eq!(p.slot_of(now, k), (t > now).then_some(t));
                sim.record(t, 1);
            }
        }
    }

    #[test]
    fn restart_keeps_the_budget() {
        let mut p = Pacer::new(rate(5, 2), Some(10));
        for (t, n) in [(0, 1), (100, 3), (200, 1), (300, 2), (400, 1)] {
            p.record(t, n);
        }
        let text = p.encode();
        assert!(text.starts_with("picorelay-pacing 1\n"), "{text}");
        let q = Pacer::decode(&text, rate(5, 2), Some(10), 500);
        assert_eq!(q, p);
        assert_eq!(q.next_slot(500, 1), Some(2000));
        assert_eq!(q.recipients_left(500), Some(2));
        assert_eq!(q.next_slot(2000, 3), Some(DAY_MS));

        // Later: what has left its window is dropped on load.
        let later = Pacer::decode(&text, rate(5, 2), Some(10), 2150);
        assert_eq!(later.sends, [200, 300, 400]);
        assert_eq!(later.rcpts.len(), 5);
        // A changed config keeps what still fits.
        let smaller = Pacer::decode(&text, rate(2, 2), Some(3), 500);
        assert_eq!(smaller.sends, [300, 400]);
        // 8 recipients for a budget of 3: the two oldest entries merge into the third.
        assert_eq!(smaller.rcpts, [(200, 3), (300, 2), (400, 1)]);
        assert_eq!(smaller.next_slot(500, 1), Some(DAY_MS + 300));
        let unset = Pacer::decode(&text, None, None, 500);
        assert_eq!(unset, Pacer::new(None, None));
        let rate_only = Pacer::decode(&text, rate(5, 2), None, 500);
        assert!(rate_only.rcpts.is_empty());
        assert_eq!(rate_only.sends.len(), 5);
    }

    #[test]
    fn bad_state_files_give_what_can_be_trusted() {
        let r = rate(5, 1);
        // (file, sends kept, recipient entries kept) at now = 1000, with 5/1s and 10 a day
        type Row = (&'static str, &'static [u64], &'static [(u64, u64)]);
        let table: &[Row] = &[
            ("", &[], &[]),
            ("garbage\nsend 5\n", &[], &[]),
            ("picorelay-pacing 2\nsend 500\n", &[], &[]),
            ("\u{0}\u{fffd}\n\n", &[], &[]),
            ("picorelay-pacing 1", &[], &[]),
            (
                "picorelay-pacing 1\nsend 900\nsend x\nsend\nsend 1 2\nsend -5\nsend 99999999999999999999\nrcpt 900\nrcpt 900 0\nrcpt 900 x\nrcpt 800 2\nsnd 5\n# comment\n\n",
                &[900],
                &[(800, 2)],
            ),
            // From the future: dropped. Out of the window: dropped. Out of order: sorted.
            (
                "picorelay-pacing 1\nsend 1001\nsend 900\nsend 0\nsend 800\nrcpt 2000 1\nrcpt 950 1\nrcpt 900 3\nrcpt 950 2\n",
                &[800, 900],
                &[(900, 3), (950, 3)],
            ),
            // Too many: the newest sends, recipients merged and capped.
            (
                "picorelay-pacing 1\nsend 990\nsend 991\nsend 992\nsend 993\nsend 994\nsend 995\nsend 996\nrcpt 1 99\n",
                &[992, 993, 994, 995, 996],
                &[(1, 10)],
            ),
        ];
        for (file, sends, rcpts) in table {
            let p = Pacer::decode(file, r, Some(10), 1000);
            assert_eq!(p.sends, *sends, "{file:?}");
            assert_eq!(p.rcpts, *rcpts, "{file:?}");
        }
        let mut big = String::from("picorelay-pacing 1\n");
        for i in 0..5000 {
            big.push_str(&format!("rcpt {} 1\nsend {i}\n", i % 1000));
        }
        let p = Pacer::decode(&big, r, Some(10), 1000);
        assert!(p.rcpts.len() <= 10 && p.sends.len() <= 5);
        assert_eq!(p.recipients_left(1000), Some(0));
    }

    #[test]
    fn memory_stays_within_the_limits() {
        // Sends past the budget (a probe, or a caller that did not ask) are still counted,
        // without growing the lists past the limits.
        let mut p = Pacer::new(rate(5, 60), Some(10));
        for t in 0..1000 {
            p.record(t, 1);
        }
        assert_eq!(p.sends.len(), 5);
        assert_eq!(p.rcpts.len(), 10);
        assert_eq!(p.budget_left(1000), Some(0));
        assert_eq!(p.recipients_left(1000), Some(0));
        // The merged entries count a little longer, never for ever.
        let slot = p.next_slot(1000, 1).unwrap();
        assert!(slot > 1000 && slot <= 1000 + DAY_MS, "{slot}");
    }

    #[test]
    fn a_clock_that_goes_back_never_holds_longer_than_a_window() {
        let mut p = Pacer::new(rate(1, 60), Some(1));
        p.record(10 * MIN, 1);
        // The clock now says 1 minute: the send counts as made now.
        assert_eq!(p.next_slot(MIN, 1), Some(MIN + DAY_MS));
        assert_eq!(p.refills_at(MIN), Some(2 * MIN));
        p.record(MIN, 0);
        assert_eq!(p.sends, [MIN]);
        assert_eq!(p.rcpts, [(MIN, 1)]);
    }
}
