//! The worker pool under pressure: which idle session to end so that a waiting client is
//! served, and which to end early while the pool is nearly full (Postfix's stress mode is
//! the model). Pure decisions over a list of session states, tested without sockets;
//! server.rs acts on them.
//!
//! A thread per session means a LAN can hold every worker with sessions that say nothing:
//! a camera keeping its session open, a hung script, anyone. Many devices never retry a 421
//! at connect, so an idle session is worth less than a client that wants to send now.

use std::cmp::Reverse;
use std::net::IpAddr;
use std::time::Duration;

/// A session idle at least this long may be ended for a waiting client: long enough that a
/// client between two commands of a normal exchange is never caught.
pub const MIN_IDLE: Duration = Duration::from_secs(2);
/// While the pool is nearly full, an idle session gets this long for its next command
/// instead of `command_timeout` (Postfix's stress mode uses 10 s too).
pub const STRESS_IDLE: Duration = Duration::from_secs(10);

/// What the decisions need to know of one session being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The session id.
    pub id: u64,
    /// The client's address.
    pub ip: IpAddr,
    /// How long it has waited for a command outside a transaction; None while it is busy (a
    /// command, a MAIL transaction, DATA, a TLS handshake) or already being ended.
    pub idle: Option<Duration>,
}

/// under_pressure tells whether at least three quarters of the workers serve sessions.
pub fn under_pressure(busy: usize, workers: usize) -> bool {
    workers > 0 && busy.saturating_mul(4) >= workers.saturating_mul(3)
}

/// victim picks the session to end for a waiting client: one idle at least MIN_IDLE; of
/// those, one from the address holding the most sessions, then the one idle longest (then
/// the oldest, so the choice is stable). None when every session is busy or just spoke.
pub fn victim(sessions: &[View]) -> Option<u64> {
    let held = |ip: IpAddr| sessions.iter().filter(|s| s.ip == ip).count();
    sessions
        .iter()
        .filter_map(|s| {
            let idle = s.idle.filter(|d| *d >= MIN_IDLE)?;
            Some(((held(s.ip), idle, Reverse(s.id)), s.id))
        })
        .max()
        .map(|(_, id)| id)
}

/// stale lists the sessions to end because the pool is nearly full and they have waited
/// longer than STRESS_IDLE for their next command. None while there is room.
pub fn stale(sessions: &[View], workers: usize) -> Vec<u64> {
    if !under_pressure(sessions.len(), workers) {
        return Vec::new();
    }
    sessions
        .iter()
        .filter(|s| s.idle.is_some_and(|d| d > STRESS_IDLE))
        .map(|s| s.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: u64, ip: u8, idle_ms: Option<u64>) -> View {
        View {
            id,
            ip: IpAddr::from([192, 0, 2, ip]),
            idle: idle_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn pressure_starts_at_three_quarters() {
        let cases = [
            (0, 0, false),
            (3, 4, true),
            (2, 4, false),
            (12, 16, true),
            (11, 16, false),
            (1, 1, true),
            (0, 1, false),
        ];
        for (busy, workers, want) in cases {
            assert_eq!(under_pressure(busy, workers), want, "{busy}/{workers}");
        }
    }

    #[test]
    fn victim_table() {
        // (sessions, the one to end)
        let cases: Vec<(Vec<View>, Option<u64>)> = vec![
            (vec![], None),
            // Busy sessions (a transaction, DATA, a handshake) are never chosen.
            (vec![v(1, 1, None), v(2, 1, None)], None),
            // Idle, but not long enough: a client between two commands.
            (vec![v(1, 1, Some(1999)), v(2, 2, Some(500))], None),
            (vec![v(1, 1, Some(2000))], Some(1)),
            // The longest idle among single-session addresses.
            (
                vec![
                    v(1, 1, Some(3000)),
                    v(2, 2, Some(9000)),
                    v(3, 3, Some(5000)),
                ],
                Some(2),
            ),
            // The address holding the most sessions first, even when another idled longer.
            (
                vec![
                    v(1, 1, Some(60_000)),
                    v(2, 2, Some(3000)),
                    v(3, 2, Some(4000)),
                    v(4, 2, None),
                ],
                Some(3),
            ),
            // Its busy sessions count for the address, but only its idle ones can go.
            (
                vec![v(1, 1, Some(5000)), v(2, 2, None), v(3, 2, None)],
                Some(1),
            ),
            // A tie goes to the oldest session.
            (vec![v(7, 1, Some(3000)), v(5, 2, Some(3000))], Some(5)),
        ];
        for (i, (sessions, want)) in cases.into_iter().enumerate() {
            assert_eq!(victim(&sessions), want, "case {i}: {sessions:?}");
        }
    }

    #[test]
    fn stale_only_under_pressure() {
        let idle = |id, ms| v(id, id as u8, Some(ms));
        let four = vec![
            idle(1, 11_000),
            idle(2, 9000),
            v(3, 3, None),
            idle(4, 60_000),
        ];
        assert_eq!(stale(&four, 4), vec![1, 4]);
        // Four sessions in a pool of eight: room enough, nobody is cut short.
        assert!(stale(&four, 8).is_empty());
        assert_eq!(stale(&four[..3], 4), vec![1]);
    }
}
