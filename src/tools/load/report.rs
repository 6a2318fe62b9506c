//! What a load test found: read from the API's saga list, matched to the
//! events published, summarised as throughput and latency by outcome.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;

/// One saga as `GET /sagas` lists it (the fields a load test needs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SagaOutcome {
    pub saga_id: String,
    pub partner_id: String,
    pub state: String,
    pub updated_at: DateTime<Utc>,
}

impl SagaOutcome {
    /// In a state that no longer changes on its own.
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "completed" | "compensated" | "failed")
    }
}

/// One page of `GET /sagas`.
#[derive(Debug, Deserialize)]
pub(super) struct Page {
    pub items: Vec<SagaOutcome>,
    pub next_cursor: Option<String>,
}

pub(super) fn parse_page(body: &str) -> Result<Page, serde_json::Error> {
    serde_json::from_str(body)
}

/// Latency percentiles in milliseconds, from an event's timestamp to its
/// saga's terminal state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencyMs {
    fn of(mut times: Vec<Duration>) -> Self {
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

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub correlation_id: String,
    pub events: usize,
    pub publish_secs: f64,
    /// Events (partners) with a terminal saga.
    pub settled: usize,
    /// Events with no terminal saga (yet).
    pub unsettled: usize,
    /// Sagas beyond one per event: must be 0.
    pub duplicates: usize,
    /// First event's timestamp to the last saga's terminal state.
    pub elapsed_secs: f64,
    pub sagas_per_sec: f64,
    pub latency_ms: LatencyMs,
    /// By terminal state, sorted by name.
    pub outcomes: BTreeMap<String, OutcomeStats>,
}

/// Matches the sagas found to the events published and sums them up.
pub fn collect(
    correlation_id: &str,
    events: &[Envelope],
    publish: Duration,
    sagas: &[SagaOutcome],
) -> LoadReport {
    let sent_at: HashMap<&str, DateTime<Utc>> = events
        .iter()
        .filter_map(|e| e.partner_id().map(|p| (p, e.timestamp)))
        .collect();
    let mut per_partner: HashMap<&str, usize> = HashMap::new();
    let mut settled_partners: std::collections::HashSet<&str> = Default::default();
    let mut all = Vec::new();
    let mut by_state: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut last_end: Option<DateTime<Utc>> = None;
    for saga in sagas {
        let Some(sent) = sent_at.get(saga.partner_id.as_str()) else {
            continue;
        };
        *per_partner.entry(saga.partner_id.as_str()).or_default() += 1;
        if !saga.is_terminal() {
            continue;
        }
        settled_partners.insert(saga.partner_id.as_str());
        let took = (saga.updated_at - *sent).to_std().unwrap_or_default();
        all.push(took);
        by_state.entry(saga.state.clone()).or_default().push(took);
        last_end = last_end.max(Some(saga.updated_at));
    }
    let first_sent = events.iter().map(|e| e.timestamp).min();
    let elapsed = match (first_sent, last_end) {
        (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    // Partners, not sagas: a duplicate must not hide a missing one.
    let settled = settled_partners.len();
    LoadReport {
        correlation_id: correlation_id.to_string(),
        events: events.len(),
        publish_secs: round3(publish.as_secs_f64()),
        settled,
        unsettled: events.len().saturating_sub(settled),
        duplicates: per_partner.values().map(|n| n.saturating_sub(1)).sum(),
        elapsed_secs: round3(elapsed.as_secs_f64()),
        sagas_per_sec: if elapsed.is_zero() {
            0.0
        } else {
            (settled as f64 / elapsed.as_secs_f64()).round()
        },
        latency_ms: LatencyMs::of(all),
        outcomes: by_state
            .into_iter()
            .map(|(state, times)| {
                let stats = OutcomeStats {
                    count: times.len(),
                    latency_ms: LatencyMs::of(times),
                };
                (state, stats)
            })
            .collect(),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

impl LoadReport {
    /// The human summary.
    pub fn render(&self) -> String {
        let l = &self.latency_ms;
        let mut out = format!(
            "load test {}\n  events       {} published in {:.2} s\n  settled      {} of {} in {:.2} s  →  {} sagas/s\n  latency      p50 {} · p95 {} · p99 {} · max {}  (event → terminal state)\n",
            self.correlation_id,
            self.events,
            self.publish_secs,
            self.settled,
            self.events,
            self.elapsed_secs,
            self.sagas_per_sec,
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            ms(l.max),
        );
        for (state, stats) in &self.outcomes {
            let l = &stats.latency_ms;
            out.push_str(&format!(
                "  {state:<12} {:>6}   p50 {} · p95 {} · p99 {}\n",
                stats.count,
                ms(l.p50),
                ms(l.p95),
                ms(l.p99)
            ));
        }
        if self.unsettled > 0 {
            out.push_str(&format!(
                "  ✗ {} events have no terminal saga\n",
                self.unsettled
            ));
        }
        if self.duplicates > 0 {
            out.push_str(&format!("  ✗ {} duplicate sagas\n", self.duplicates));
        }
        out
    }

    /// Every event has exactly one terminal saga.
    pub fn is_clean(&self) -> bool {
        self.unsettled == 0 && self.duplicates == 0
    }
}

fn ms(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} s", x / 1000.0)
    } else {
        format!("{x:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::EventType;
    use serde_json::json;

    fn event(partner: &str, at: DateTime<Utc>) -> Envelope {
        let mut e = Envelope::new(
            EventType::PartnerCreated,
            "c",
            None,
            None,
            json!({"partner_id": partner, "name": "n"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        e.timestamp = at;
        e
    }

    fn saga(partner: &str, state: &str, at: DateTime<Utc>) -> SagaOutcome {
        SagaOutcome {
            saga_id: format!("s-{partner}"),
            partner_id: partner.into(),
            state: state.into(),
            updated_at: at,
        }
    }

    fn t(ms: i64) -> DateTime<Utc> {
        "2026-11-22T14:00:00Z".parse::<DateTime<Utc>>().unwrap()
            + chrono::Duration::milliseconds(ms)
    }

    #[test]
    fn api_pages_parse_and_ignore_fields_we_do_not_need() {
        let body = json!({"items": [{"saga_id": "s-p1", "correlation_id": "c", "partner_id": "p1",
            "state": "completed", "step": "create_alliance", "attempts": 1, "alliance_id": "a",
            "last_error": null, "created_at": "2026-11-22T14:00:00.000Z",
            "updated_at": "2026-11-22T14:00:00.250Z", "deadline_at": "2026-11-22T14:05:00.000Z"}],
            "next_cursor": "abc"})
        .to_string();
        let page = parse_page(&body).unwrap();
        assert_eq!(page.next_cursor.as_deref(), Some("abc"));
        assert_eq!(page.items, [saga("p1", "completed", t(250))]);
        assert!(parse_page("{\"items\": 3}").is_err());
    }

    #[test]
    fn latency_runs_from_the_event_to_the_terminal_state_by_outcome() {
        let events: Vec<_> = (0..10).map(|i| event(&format!("p{i}"), t(0))).collect();
        let mut sagas: Vec<_> = (0..8)
            .map(|i| saga(&format!("p{i}"), "completed", t(100 * (i + 1))))
            .collect();
        sagas.push(saga("p8", "compensated", t(2000)));
        sagas.push(saga("p9", "awaiting_alliance", t(50)));
        sagas.push(saga("stranger", "completed", t(99_999)));

        let r = collect("c", &events, Duration::from_millis(40), &sagas);
        assert_eq!((r.settled, r.unsettled, r.duplicates), (9, 1, 0));
        assert_eq!(r.elapsed_secs, 2.0, "to the last terminal saga of ours");
        assert_eq!(r.sagas_per_sec, 5.0);
        assert_eq!(r.outcomes["completed"].count, 8);
        assert_eq!(r.outcomes["completed"].latency_ms.p50, 400.0);
        assert_eq!(r.outcomes["completed"].latency_ms.max, 800.0);
        assert_eq!(r.outcomes["compensated"].latency_ms.p99, 2000.0);
        assert_eq!(r.latency_ms.max, 2000.0);
        assert!(!r.is_clean());

        let text = r.render();
        assert!(
            text.contains("settled      9 of 10 in 2.00 s  →  5 sagas/s"),
            "{text}"
        );
        assert!(text.contains("completed         8   p50 400 ms"), "{text}");
        assert!(text.contains("compensated       1   p50 2.00 s"), "{text}");
        assert!(text.contains("✗ 1 events have no terminal saga"), "{text}");

        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["outcomes"]["completed"]["latency_ms"]["p95"], 800.0);
        assert_eq!(json["unsettled"], 1);
    }

    #[test]
    fn a_second_saga_for_one_event_is_counted_as_a_duplicate() {
        let events = [event("p0", t(0))];
        let sagas = [
            saga("p0", "completed", t(10)),
            saga("p0", "completed", t(20)),
        ];
        let r = collect("c", &events, Duration::ZERO, &sagas);
        assert_eq!(r.duplicates, 1);
        assert!(r.render().contains("✗ 1 duplicate sagas"));

        // One duplicate and one missing must not cancel out.
        let events = [event("p0", t(0)), event("p1", t(0))];
        let r = collect("c", &events, Duration::ZERO, &sagas);
        assert_eq!((r.settled, r.unsettled, r.duplicates), (1, 1, 1));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let times: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        let l = LatencyMs::of(times);
        assert_eq!((l.p50, l.p95, l.p99, l.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(LatencyMs::of(vec![]), LatencyMs::default());
    }
}
