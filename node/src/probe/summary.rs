//! What a probe run saw, reduced to the figures chaos scenarios assert on:
//! failures, the longest outage, and whether sticky sessions kept their
//! backend. Pure: outcomes in, summary out.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// One request's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// When it started, from the run's start.
    pub at: Duration,
    /// The sticky session it carried, if any (index into the sessions).
    pub session: Option<usize>,
    /// `Some(backend)` for a 200 (the backend that X-Backend named, or
    /// "" when absent); `None` for anything else.
    pub served_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Failed / sent, in percent.
    pub error_percent: f64,
    /// The longest time between two successful requests' starts, in ms;
    /// also counting the run's start and end, so a run that never
    /// succeeds has the whole run as its outage.
    pub longest_outage_ms: u64,
    pub sessions: u64,
    /// Sessions with at least one successful request, all of which went
    /// to the backend that created them.
    pub sessions_kept: u64,
    /// For each session that moved, its first request served elsewhere:
    /// what a failed chaos run is read by.
    pub moves: Vec<Move>,
    pub by_backend: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    pub session: usize,
    /// The backend that created the session.
    pub origin: String,
    pub served_by: String,
    /// When that request started, in ms from the run's start.
    pub at_ms: u64,
}

/// `sessions[i]` is the backend that created session `i`.
pub fn summarize(outcomes: &[Outcome], sessions: &[String], run: Duration) -> Summary {
    let mut starts: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.served_by.is_some())
        .map(|o| o.at)
        .collect();
    starts.sort_unstable();
    let bounds = std::iter::once(Duration::ZERO)
        .chain(starts.iter().copied())
        .chain(std::iter::once(run.max(starts.last().copied().unwrap_or_default())));
    let mut longest = Duration::ZERO;
    let mut prev: Option<Duration> = None;
    for t in bounds {
        if let Some(p) = prev {
            longest = longest.max(t.saturating_sub(p));
        }
        prev = Some(t);
    }

    let mut moved: Vec<Option<Move>> = vec![None; sessions.len()];
    let mut served = vec![false; sessions.len()];
    let mut by_backend = BTreeMap::new();
    for o in outcomes {
        if let Some(b) = &o.served_by {
            *by_backend.entry(b.clone()).or_insert(0) += 1;
            if let Some(i) = o.session
                && let (Some(m), Some(s), Some(origin)) = (moved.get_mut(i), served.get_mut(i), sessions.get(i))
            {
                *s = true;
                // Outcomes arrive in completion order: keep the earliest start.
                if origin != b && m.as_ref().is_none_or(|m| o.at.as_millis() < u128::from(m.at_ms)) {
                    *m = Some(Move {
                        session: i,
                        origin: origin.clone(),
                        served_by: b.clone(),
                        at_ms: u64::try_from(o.at.as_millis()).unwrap_or(u64::MAX),
                    });
                }
            }
        }
    }
    let sent = outcomes.len() as u64;
    let ok = starts.len() as u64;
    let failed = sent - ok;
    Summary {
        sent,
        ok,
        failed,
        error_percent: if sent == 0 {
            0.0
        } else {
            (failed as f64 * 10_000.0 / sent as f64).round() / 100.0
        },
        longest_outage_ms: u64::try_from(longest.as_millis()).unwrap_or(u64::MAX),
        sessions: sessions.len() as u64,
        sessions_kept: moved.iter().zip(&served).filter(|(m, s)| m.is_none() && **s).count() as u64,
        moves: moved.into_iter().flatten().collect(),
        by_backend,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn o(at: u64, session: Option<usize>, by: Option<&str>) -> Outcome {
        Outcome {
            at: ms(at),
            session,
            served_by: by.map(str::to_string),
        }
    }

    #[test]
    fn outage_is_the_longest_gap_between_successes_including_the_ends() {
        let run = [
            o(0, None, Some("a")),
            o(10, None, Some("a")),
            o(20, None, None),
            o(30, None, None),
            o(40, None, Some("b")),
            o(50, None, Some("b")),
        ];
        let s = summarize(&run, &[], ms(60));
        assert_eq!((s.sent, s.ok, s.failed), (6, 4, 2));
        assert_eq!(s.longest_outage_ms, 30);
        assert!((s.error_percent - 33.33).abs() < 1e-9, "{}", s.error_percent);
        assert_eq!(s.by_backend.get("a"), Some(&2));

        // Failing at the end counts up to the end of the run.
        let s = summarize(&[o(0, None, Some("a")), o(10, None, None)], &[], ms(500));
        assert_eq!(s.longest_outage_ms, 500);
        // Never served: the whole run.
        let s = summarize(&[o(0, None, None)], &[], ms(200));
        assert_eq!((s.longest_outage_ms, s.ok), (200, 0));
    }

    #[test]
    fn a_session_is_kept_only_if_every_success_went_to_its_backend() {
        let sessions = vec!["a".to_string(), "b".to_string(), "a".to_string(), "b".to_string()];
        let run = [
            o(0, Some(0), Some("a")),
            o(1, Some(1), Some("b")),
            o(2, Some(2), Some("a")),
            // Failures do not move a session; another backend does.
            o(3, Some(0), None),
            o(4, Some(2), Some("b")),
            // Out of range indexes are ignored, not a panic.
            o(5, Some(9), Some("a")),
        ];
        // Session 3 was never served: not counted as kept.
        let s = summarize(&run, &sessions, ms(10));
        assert_eq!((s.sessions, s.sessions_kept), (4, 2));
        assert_eq!(
            s.moves,
            vec![Move {
                session: 2,
                origin: "a".into(),
                served_by: "b".into(),
                at_ms: 4
            }]
        );
    }

    #[test]
    fn a_move_names_the_sessions_earliest_request_served_elsewhere() {
        let sessions = vec!["a".to_string()];
        // Completion order differs from start order.
        let run = [
            o(30, Some(0), Some("c")),
            o(20, Some(0), Some("b")),
            o(25, Some(0), Some("a")),
        ];
        let s = summarize(&run, &sessions, ms(40));
        assert_eq!(s.sessions_kept, 0);
        assert_eq!(
            (s.moves.len(), s.moves[0].served_by.as_str(), s.moves[0].at_ms),
            (1, "b", 20)
        );
    }
}
