//! `GET /metrics/summary`: the numbers an operator looks at first, as JSON.
//!
//! Saga counts and the outbox (backlog, parked) come from the store, so they cover
//! every instance sharing it; in-flight work, dead letters and rates are
//! this instance's own (from [`crate::stats`]), like the Prometheus
//! counters at `/metrics`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::saga::SagaState;
use crate::stats::Rates;

/// Sagas in the store by state, across every instance sharing it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SagaCounts {
    /// Recorded, nothing asked yet (normally only for an instant).
    pub started: i64,
    /// Asking alliances to create the partner's alliance.
    pub creating_alliance: i64,
    /// Broker mode: waiting for alliances' reply.
    pub awaiting_alliance: i64,
    /// Asking integrations to delete the partner.
    pub compensating: i64,
    /// Terminal: the alliance exists.
    pub completed: i64,
    /// Terminal: the partner was deleted.
    pub compensated: i64,
    /// Terminal until retried: compensation gave up; needs a person.
    pub failed: i64,
    /// All of the above.
    pub total: i64,
}

impl SagaCounts {
    /// Sums the store's counts; a state the store does not mention is 0.
    pub fn from_counts(counts: &[(SagaState, i64)]) -> Self {
        let mut out = Self::default();
        for &(state, n) in counts {
            // Exhaustive on purpose: a new state fails to compile here
            // until the summary (and its schema) shows it.
            let field = match state {
                SagaState::Started => &mut out.started,
                SagaState::CreatingAlliance => &mut out.creating_alliance,
                SagaState::AwaitingAlliance => &mut out.awaiting_alliance,
                SagaState::Compensating => &mut out.compensating,
                SagaState::Completed => &mut out.completed,
                SagaState::Compensated => &mut out.compensated,
                SagaState::Failed => &mut out.failed,
            };
            *field += n;
            out.total += n;
        }
        out
    }
}

/// Events per second seen by this instance, averaged over the last 60
/// seconds (so they read low during an instance's first minute).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SummaryRates {
    /// New sagas recorded (duplicate deliveries not counted).
    pub started_per_sec_1m: f64,
    /// Sagas that reached `completed`.
    pub completed_per_sec_1m: f64,
    /// Sagas that reached `compensated`.
    pub compensated_per_sec_1m: f64,
    /// Sagas that reached `failed`.
    pub failed_per_sec_1m: f64,
    /// Messages sent to a dead-letter queue.
    pub dead_letters_per_sec_1m: f64,
}

impl From<Rates> for SummaryRates {
    fn from(r: Rates) -> Self {
        Self {
            started_per_sec_1m: r.started,
            completed_per_sec_1m: r.completed,
            compensated_per_sec_1m: r.compensated,
            failed_per_sec_1m: r.failed,
            dead_letters_per_sec_1m: r.dead_letters,
        }
    }
}

/// `GET /metrics/summary` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "generated_at": "2026-11-22T14:00:00.123Z",
    "instance_id": "orchestrator-1",
    "uptime_secs": 3600,
    "sagas": {
        "started": 0, "creating_alliance": 3, "awaiting_alliance": 0, "compensating": 1,
        "completed": 178, "compensated": 18, "failed": 4, "total": 204
    },
    "in_flight": 4,
    "max_in_flight": 256,
    "outbox_backlog": 0,
    "outbox_parked": 0,
    "dead_letters": {"partner-events": 2},
    "rates": {
        "started_per_sec_1m": 3.4, "completed_per_sec_1m": 3.0,
        "compensated_per_sec_1m": 0.3, "failed_per_sec_1m": 0.05,
        "dead_letters_per_sec_1m": 0.0
    }
}))]
pub struct Summary {
    /// When this summary was computed.
    pub generated_at: DateTime<Utc>,
    /// The instance that answered (`INSTANCE_ID`): the fields marked
    /// "this instance" are its own.
    pub instance_id: String,
    /// Seconds since this instance started.
    pub uptime_secs: u64,
    pub sagas: SagaCounts,
    /// Sagas this instance is driving now (at most `max_in_flight`).
    pub in_flight: u64,
    /// `MAX_IN_FLIGHT`: when `in_flight` stays here, events queue in the broker.
    pub max_in_flight: usize,
    /// Messages waiting in the store's outbox to be published (all instances).
    pub outbox_backlog: i64,
    /// Messages the relay parked for a person, in the store's
    /// `outbox_parked` (all instances): rows that cannot be read back as a
    /// message, or that the broker kept refusing. Not in `outbox_backlog`.
    pub outbox_parked: i64,
    /// Messages this instance sent to a dead-letter queue since it
    /// started, by the channel they came from (their queue is
    /// `<channel>-dlq`). Consumed channels are listed even at 0.
    #[schema(example = json!({"partner-events": 0}))]
    pub dead_letters: BTreeMap<String, u64>,
    pub rates: SummaryRates,
}

/// `GET /metrics/summary`: sagas by state, in-flight work, dead letters and rates.
#[utoipa::path(
    get,
    path = "/metrics/summary",
    tag = "operations",
    summary = "Metrics summary (JSON)",
    description = "What an operator checks first. `sagas`, `outbox_backlog` and `outbox_parked` come from the store, cover every instance and are at most 2 s old; `in_flight`, `dead_letters` and `rates` are the answering instance's own, like the counters at `/metrics`.",
    responses(
        (status = 200, description = "The summary.", body = Summary),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
pub async fn summary(State(state): State<AppState>) -> Result<Json<Summary>, ApiError> {
    let counts = state
        .counts
        .get(state.orchestrator.store().as_ref())
        .await?;
    let stats = state.orchestrator.stats().snapshot();
    Ok(Json(Summary {
        generated_at: Utc::now(),
        instance_id: stats.instance_id,
        uptime_secs: stats.uptime.as_secs(),
        sagas: SagaCounts::from_counts(&counts.by_state),
        in_flight: stats.in_flight,
        max_in_flight: stats.max_in_flight,
        outbox_backlog: counts.outbox_backlog,
        outbox_parked: counts.outbox_parked,
        dead_letters: stats.dead_letters,
        rates: stats.rates.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cover_every_state_and_sum_to_total() {
        let counts: Vec<_> = SagaState::ALL
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, i as i64 + 1))
            .collect();
        let summary = SagaCounts::from_counts(&counts);
        let json = serde_json::to_value(&summary).expect("serializes");
        for (state, n) in &counts {
            assert_eq!(json[state.as_str()], *n, "{state}");
        }
        assert_eq!(summary.total, (1..=7).sum::<i64>());
        assert_eq!(
            SagaCounts::from_counts(&[]),
            SagaCounts::default(),
            "absent states are 0"
        );
    }
}
