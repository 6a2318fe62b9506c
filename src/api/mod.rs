//! The orchestrator's HTTP API (CONTRACT §5), with axum.

mod error;
mod health;
mod sagas;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;

pub use error::ApiError;

use crate::orchestrator::Orchestrator;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub orchestrator: Orchestrator,
    pub metrics: PrometheusHandle,
    /// `None`: admin routes refused.
    pub admin_token: Option<SecretString>,
}

/// All routes; request bodies are capped at `max_body_bytes`.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/sagas", post(sagas::start).get(sagas::list))
        .route("/sagas/{saga_id}", get(sagas::get))
        .route("/sagas/{saga_id}/retry", post(sagas::retry))
        .route("/sagas/{saga_id}/compensate", post(sagas::compensate))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
