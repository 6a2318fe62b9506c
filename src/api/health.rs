//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::saga::SagaState;
use crate::telemetry;

/// `GET /health`: the process answers.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /ready`: 200 only when the store and the broker both answer.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let store = state
        .orchestrator
        .store()
        .ping()
        .await
        .err()
        .map(|e| e.to_string());
    let broker = state
        .orchestrator
        .transport()
        .ping()
        .await
        .err()
        .map(|e| e.to_string());
    let check = |err: &Option<String>| match err {
        None => json!({ "status": "ok" }),
        Some(e) => json!({ "status": "down", "error": e }),
    };
    let ok = store.is_none() && broker.is_none();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ok { "ready" } else { "unavailable" },
        "checks": { "store": check(&store), "broker": check(&broker) },
    });
    (status, Json(body))
}

/// `GET /metrics`: Prometheus text; store-derived gauges refreshed first.
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
    match store.count_by_state().await {
        Ok(counts) => {
            for s in SagaState::ALL {
                let n = counts
                    .iter()
                    .find(|(state, _)| *state == s)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!(telemetry::SAGAS, "state" => s.as_str()).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not count sagas for metrics"),
    }
    if let Ok(backlog) = store.outbox_backlog().await {
        metrics::gauge!(telemetry::OUTBOX_BACKLOG).set(backlog as f64);
    }
}
