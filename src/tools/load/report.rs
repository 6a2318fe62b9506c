//! What a load test found: the ledger summed up as throughput, latency
//! from each event's send to its saga's terminal event, and outcomes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::ledger::{Ledger, Outcome};

/// Partners named in the report when some never finished: enough to look
/// a few up, not a wall of ids.
const UNFINISHED_SHOWN: usize = 20;

/// Latency percentiles in milliseconds, from an event's send to its saga's
/// terminal event seen on `saga-events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencyMs {
    /// Nearest-rank percentiles of `times` (all zero when empty).
    pub fn of(mut times: Vec<Duration>) -> Self {
        if times.is_empty() {
            return Self::default();
        }
        times.sort();
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        // Nearest rank: the smallest value with at least q of all at or below it.
        let at = |q: f64| {
            let rank = (q * times.len() as f64).ceil() as usize;
            ms(times[rank.clamp(1, times.len()) - 1])
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p95: at(0.95),
            p99: at(0.99),
            max: ms(times[times.len() - 1]),
        }
    }
}

/// Sagas that ended one way.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeStats {
    pub count: usize,
    pub latency_ms: LatencyMs,
}

/// How the run offered its load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A new event only when a saga ends: `in_flight` at a time.
    ClosedLoop,
    /// Every event published (at a rate, or at once), then waited for.
    Burst,
}

/// How the run was set up, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub run_id: String,
    pub mode: Mode,
    /// The closed loop's bound.
    pub in_flight: Option<usize>,
    /// Shared by every event when asked for; else each partner has its own.
    pub correlation_id: Option<String>,
    pub timeout: Duration,
    /// How long publishing took (burst mode).
    pub publish: Option<Duration>,
    /// Messages the broker delivered to the reader twice.
    pub broker_repeats: u64,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub run_id: String,
    pub mode: Mode,
    pub in_flight: Option<usize>,
    /// Counted by the tool: the most sagas between send and terminal event.
    pub max_in_flight: usize,
    /// `null`: one correlation id per partner (its `partner_id`).
    pub correlation_id: Option<String>,
    pub events: usize,
    pub published: usize,
    pub publish_secs: Option<f64>,
    /// Events (partners) with a terminal saga event.
    pub settled: usize,
    /// Events with none: `unfinished` plus those never published.
    pub unsettled: usize,
    /// Published, and no terminal event within the timeout.
    pub unfinished: usize,
    /// The first of them, sorted.
    pub unfinished_partners: Vec<String>,
    pub timeout_secs: f64,
    /// Sagas beyond one per event: must be 0.
    pub duplicates: usize,
    /// Terminal events seen again for a saga already counted.
    pub repeated_events: usize,
    /// Terminal events of partners not of this run, ignored.
    pub ignored_events: usize,
    /// saga-events messages the broker delivered to the reader again,
    /// skipped before counting (Pulsar redeliveries).
    pub broker_redeliveries: u64,
    /// First send to the last terminal event.
    pub elapsed_secs: f64,
    pub sagas_per_sec: f64,
    pub latency_ms: LatencyMs,
    /// By terminal state: completed, compensated, failed.
    pub outcomes: BTreeMap<String, OutcomeStats>,
}

impl LoadReport {
    /// Sums up `ledger`.
    pub fn new(info: &RunInfo, ledger: &Ledger) -> Self {
        let by_outcome = ledger.latencies();
        let all: Vec<Duration> = by_outcome.values().flatten().copied().collect();
        let elapsed = ledger.elapsed();
        let unfinished = ledger.unfinished();
        let settled = ledger.settled();
        LoadReport {
            run_id: info.run_id.clone(),
            mode: info.mode,
            in_flight: info.in_flight,
            max_in_flight: ledger.max_in_flight(),
            correlation_id: info.correlation_id.clone(),
            events: ledger.partners(),
            published: ledger.sent_count(),
            publish_secs: info.publish.map(|d| round3(d.as_secs_f64())),
            settled,
            unsettled: ledger.partners().saturating_sub(settled),
            unfinished: unfinished.len(),
            unfinished_partners: unfinished.into_iter().take(UNFINISHED_SHOWN).collect(),
            timeout_secs: info.timeout.as_secs_f64(),
            duplicates: ledger.second_sagas(),
            repeated_events: ledger.repeats(),
            ignored_events: ledger.strangers(),
            broker_redeliveries: info.broker_repeats,
            elapsed_secs: round3(elapsed.as_secs_f64()),
            sagas_per_sec: if elapsed.is_zero() {
                0.0
            } else {
                (settled as f64 / elapsed.as_secs_f64()).round()
            },
            latency_ms: LatencyMs::of(all),
            outcomes: by_outcome
                .into_iter()
                .map(|(outcome, times)| {
                    let stats = OutcomeStats {
                        count: times.len(),
                        latency_ms: LatencyMs::of(times),
                    };
                    (outcome.as_str().to_string(), stats)
                })
                .collect(),
        }
    }

    /// Every event has exactly one terminal saga.
    pub fn is_clean(&self) -> bool {
        self.unsettled == 0 && self.duplicates == 0
    }

    /// The human summary.
    pub fn render(&self) -> String {
        let mut out = format!("load test {}\n", self.run_id);
        out.push_str(&format!("  mode         {}\n", self.mode_text()));
        let l = &self.latency_ms;
        out.push_str(&format!(
            "  settled      {} of {} in {:.2} s  →  {} sagas/s\n  latency      p50 {} · p90 {} · p99 {} · max {}  (event → terminal event)\n",
            self.settled,
            self.events,
            self.elapsed_secs,
            self.sagas_per_sec,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max),
        ));
        for outcome in Outcome::ALL {
            let Some(stats) = self.outcomes.get(outcome.as_str()) else {
                continue;
            };
            let l = &stats.latency_ms;
            out.push_str(&format!("  {:<12} {:>6}", outcome.as_str(), stats.count));
            if stats.count > 0 {
                out.push_str(&format!(
                    "   p50 {} · p90 {} · p99 {}",
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99)
                ));
            }
            out.push('\n');
        }
        if self.broker_redeliveries > 0 {
            out.push_str(&format!(
                "  note         the broker delivered {} saga-events messages to the reader again (skipped)\n",
                self.broker_redeliveries
            ));
        }
        out.push_str(&self.problems());
        out
    }

    fn mode_text(&self) -> String {
        let correlation = match &self.correlation_id {
            Some(id) => format!("correlation id {id}"),
            None => "a correlation id per partner".to_string(),
        };
        match (self.mode, self.in_flight) {
            (Mode::ClosedLoop, Some(n)) => format!(
                "closed loop, {n} in flight (at most {} seen); {correlation}",
                self.max_in_flight
            ),
            _ => match self.publish_secs {
                Some(secs) => format!(
                    "burst, {} published in {secs:.2} s; {correlation}",
                    self.published
                ),
                None => format!("burst, {} published; {correlation}", self.published),
            },
        }
    }

    /// A line for each way the run fell short.
    fn problems(&self) -> String {
        let mut out = String::new();
        if self.unfinished > 0 {
            out.push_str(&format!(
                "  ✗ {} sagas had no terminal event within {} s of their event, e.g. {}\n",
                self.unfinished,
                self.timeout_secs,
                self.unfinished_partners
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let never_sent = self.events.saturating_sub(self.published);
        if never_sent > 0 {
            out.push_str(&format!(
                "  ✗ {never_sent} events were never published: the run stopped at the first saga over the timeout\n"
            ));
        }
        if self.duplicates > 0 {
            out.push_str(&format!("  ✗ {} duplicate sagas\n", self.duplicates));
        }
        out
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn ms(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} s", x / 1000.0)
    } else if x >= 10.0 {
        format!("{x:.0} ms")
    } else {
        // Fast sagas: whole milliseconds would hide the difference.
        format!("{x:.1} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::load::ledger::Seen;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    fn t(ms: i64) -> DateTime<Utc> {
        "2026-11-22T14:00:00Z".parse::<DateTime<Utc>>().unwrap()
            + chrono::Duration::milliseconds(ms)
    }

    fn seen(partner: &str, outcome: Outcome, at: i64) -> Seen {
        Seen {
            partner_id: partner.into(),
            saga_id: Some(format!("s-{partner}")),
            outcome,
            at: t(at),
        }
    }

    fn info(mode: Mode) -> RunInfo {
        RunInfo {
            run_id: "r1".into(),
            mode,
            in_flight: (mode == Mode::ClosedLoop).then_some(4),
            correlation_id: None,
            timeout: Duration::from_secs(5),
            publish: (mode == Mode::Burst).then_some(Duration::from_millis(40)),
            broker_repeats: 0,
        }
    }

    #[test]
    fn latency_runs_from_the_send_to_the_terminal_event_by_outcome() {
        let mut ledger = Ledger::new((0..10).map(|i| format!("p{i}")));
        for i in 0..10 {
            ledger.sent(&format!("p{i}"), t(0));
        }
        for i in 0..8 {
            ledger.seen(seen(&format!("p{i}"), Outcome::Completed, 100 * (i + 1)));
        }
        ledger.seen(seen("p8", Outcome::Compensated, 2000));
        ledger.seen(seen("stranger", Outcome::Completed, 99_999));

        let r = LoadReport::new(&info(Mode::Burst), &ledger);
        assert_eq!(
            (r.settled, r.unsettled, r.unfinished, r.duplicates),
            (9, 1, 1, 0)
        );
        assert_eq!(r.unfinished_partners, ["p9"]);
        assert_eq!(r.ignored_events, 1);
        assert_eq!(r.elapsed_secs, 2.0, "to the last terminal event of ours");
        assert_eq!(r.sagas_per_sec, 5.0);
        assert_eq!(r.outcomes["completed"].count, 8);
        assert_eq!(r.outcomes["completed"].latency_ms.p50, 400.0);
        assert_eq!(r.outcomes["completed"].latency_ms.max, 800.0);
        assert_eq!(r.outcomes["compensated"].latency_ms.p99, 2000.0);
        assert_eq!(r.outcomes["failed"].count, 0);
        assert_eq!(r.latency_ms.max, 2000.0);
        assert!(!r.is_clean());

        let text = r.render();
        assert!(
            text.contains("settled      9 of 10 in 2.00 s  →  5 sagas/s"),
            "{text}"
        );
        assert!(text.contains("burst, 10 published in 0.04 s"), "{text}");
        assert!(text.contains("completed         8   p50 400 ms"), "{text}");
        assert!(text.contains("compensated       1   p50 2.00 s"), "{text}");
        assert!(text.contains("failed            0\n"), "{text}");
        assert!(
            text.contains("✗ 1 sagas had no terminal event within 5 s of their event, e.g. p9"),
            "{text}"
        );

        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["outcomes"]["completed"]["latency_ms"]["p90"], 800.0);
        assert_eq!(json["mode"], "burst");
        assert_eq!(json["unsettled"], 1);
        assert_eq!(json["correlation_id"], serde_json::Value::Null);
    }

    #[test]
    fn a_closed_loop_says_its_bound_and_what_it_never_published() {
        let mut ledger = Ledger::new(["a", "b", "c"].map(String::from));
        ledger.sent("a", t(0));
        ledger.seen(seen("a", Outcome::Completed, 3));
        ledger.seen(Seen {
            saga_id: Some("another".into()),
            ..seen("a", Outcome::Completed, 4)
        });
        let r = LoadReport::new(&info(Mode::ClosedLoop), &ledger);
        assert_eq!((r.published, r.unsettled, r.duplicates), (1, 2, 1));
        let text = r.render();
        assert!(
            text.contains(
                "closed loop, 4 in flight (at most 1 seen); a correlation id per partner"
            ),
            "{text}"
        );
        assert!(text.contains("latency      p50 3.0 ms"), "{text}");
        assert!(text.contains("✗ 2 events were never published"), "{text}");
        assert!(text.contains("✗ 1 duplicate sagas"), "{text}");
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let times: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        let l = LatencyMs::of(times);
        assert_eq!(
            (l.p50, l.p90, l.p95, l.p99, l.max),
            (50.0, 90.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(LatencyMs::of(vec![]), LatencyMs::default());
        let one = LatencyMs::of(vec![Duration::from_millis(7)]);
        assert_eq!((one.p50, one.max), (7.0, 7.0));
    }

    proptest! {
        /// Each percentile is one of the values, they never decrease, and at
        /// least that share of all values is at or below it.
        #[test]
        fn percentiles_are_ordered_values_of_the_input(micros in proptest::collection::vec(0u64..10_000_000, 1..300)) {
            let times: Vec<Duration> = micros.iter().map(|m| Duration::from_micros(*m)).collect();
            let l = LatencyMs::of(times.clone());
            let ms: Vec<f64> = micros.iter().map(|m| (*m as f64).round() / 1e3).collect();
            let pairs = [(0.50, l.p50), (0.90, l.p90), (0.95, l.p95), (0.99, l.p99), (1.0, l.max)];
            for w in pairs.windows(2) {
                prop_assert!(w[0].1 <= w[1].1);
            }
            for (q, v) in pairs {
                prop_assert!(ms.contains(&v), "{} is not an input", v);
                let at_or_below = ms.iter().filter(|x| **x <= v).count();
                prop_assert!(at_or_below as f64 >= q * ms.len() as f64);
            }
        }
    }
}
