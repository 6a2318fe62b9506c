//! Liveness, readiness and metrics.

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::saga::SagaState;
use crate::telemetry;

/// `GET /health` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: an answer at all is the signal.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `GET /health`: the process answers.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Liveness",
    description = "Answers while the process runs; checks nothing else (see `/ready`).",
    responses((status = 200, description = "The process is alive.", body = Health))
)]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// One dependency's state in a readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    /// `ok` or `down`.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// Why it is down; absent when `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    fn of(result: Option<String>) -> Self {
        match result {
            None => Self {
                status: "ok",
                error: None,
            },
            Some(e) => Self {
                status: "down",
                error: Some(e),
            },
        }
    }
}

/// The dependencies `/ready` checks.
#[derive(Debug, Serialize, ToSchema)]
pub struct Checks {
    /// The saga store (PostgreSQL or SQLite).
    pub store: Check,
    /// The message broker.
    pub broker: Check,
}

/// How long `/ready` waits for each dependency. A store that is gone
/// without closing its connections (a crashed host, a paused server) makes
/// a pool wait for its whole acquire timeout: the probe must still answer
/// in time, and a dependency this slow is not ready.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `None` when `ping` answers in time, else what went wrong.
async fn within_check_timeout<E: std::fmt::Display>(
    ping: impl Future<Output = Result<(), E>>,
) -> Option<String> {
    match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
    }
}

/// `GET /ready` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` (200) or `unavailable` (503).
    #[schema(example = "ready")]
    pub status: &'static str,
    pub checks: Checks,
}

/// `GET /ready`: 200 only when the store and the broker both answer.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    summary = "Readiness",
    description = "200 only when both the store and the broker answer, each within 2 s; otherwise 503 naming what is down (a dependency that does not answer in time counts as down).",
    responses(
        (status = 200, description = "Store and broker answer.", body = Readiness),
        (status = 503, description = "The store or the broker (or both) is down.", body = Readiness),
    )
)]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let orchestrator = &state.orchestrator;
    let (store, broker) = tokio::join!(
        within_check_timeout(orchestrator.store().ping()),
        within_check_timeout(orchestrator.transport().ping()),
    );
    let ok = store.is_none() && broker.is_none();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ok { "ready" } else { "unavailable" },
        checks: Checks {
            store: Check::of(store),
            broker: Check::of(broker),
        },
    };
    (status, Json(body))
}

/// `GET /metrics`: Prometheus text; store-derived gauges refreshed first.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "Prometheus text exposition (format 0.0.4). Store-derived gauges (`saga_sagas`, `saga_outbox_backlog`, `saga_outbox_parked`) are at most 2 s old: scrapes share one count of the store rather than each scanning it; if the store is down they keep their last values and the scrape still succeeds.",
    responses((status = 200, description = "The metrics.", body = String, content_type = "text/plain; version=0.0.4"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    refresh_gauges(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn refresh_gauges(state: &AppState) {
    let store = state.orchestrator.store();
    match state.counts.get(store.as_ref()).await {
        Ok(counts) => {
            for s in SagaState::ALL {
                let n = counts
                    .by_state
                    .iter()
                    .find(|(state, _)| *state == s)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!(telemetry::SAGAS, "state" => s.as_str()).set(n as f64);
            }
            metrics::gauge!(telemetry::OUTBOX_BACKLOG).set(counts.outbox_backlog as f64);
            metrics::gauge!(telemetry::OUTBOX_PARKED).set(counts.outbox_parked as f64);
        }
        Err(e) => tracing::warn!(error = %e, "could not count sagas for metrics"),
    }
}
