//! The simulated participants over HTTP (docs/contract.md §4), each on its own
//! listener as the real services are: alliances (`POST /alliances`) and
//! integrations (`DELETE /partners/{partner_id}`). Both answer
//! `GET /stats` and `GET /health`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Answer, Simulator};

/// Routes of the simulated alliances service.
pub fn alliances_router(sim: Simulator) -> Router {
    Router::new()
        .route("/alliances", post(create_alliance))
        .route("/stats", get(stats))
        .route("/health", get(health))
        .with_state(sim)
}

/// Routes of the simulated integrations service.
pub fn integrations_router(sim: Simulator) -> Router {
    Router::new()
        .route("/partners/{partner_id}", delete(delete_partner))
        .route("/stats", get(stats))
        .route("/health", get(health))
        .with_state(sim)
}

/// Serves both until `stop` is cancelled.
pub async fn serve(
    sim: Simulator,
    alliances: TcpListener,
    integrations: TcpListener,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let a = axum::serve(alliances, alliances_router(sim.clone()))
        .with_graceful_shutdown(stop.clone().cancelled_owned());
    let i = axum::serve(integrations, integrations_router(sim))
        .with_graceful_shutdown(stop.cancelled_owned());
    let (a, i) = tokio::join!(a, i);
    a.and(i)
}

fn idempotency_key(headers: &HeaderMap) -> Option<&str> {
    headers.get("idempotency-key").and_then(|v| v.to_str().ok())
}

async fn create_alliance(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let partner_id = body
        .as_ref()
        .and_then(|Json(b)| b.get("partner_id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let Some(partner_id) = partner_id else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "partner_id is required"})),
        )
            .into_response();
    };
    tokio::time::sleep(sim.config().latency).await;
    let email = body
        .as_ref()
        .and_then(|Json(b)| b.get("email"))
        .and_then(Value::as_str);
    match sim.create_alliance(idempotency_key(&headers), email) {
        Answer::Done {
            alliance_id,
            replay,
        } => {
            let status = if replay {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (
                status,
                Json(json!({"alliance_id": alliance_id, "partner_id": partner_id})),
            )
                .into_response()
        }
        Answer::Refused { error } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": error})),
        )
            .into_response(),
        Answer::Unavailable => unavailable(),
    }
}

async fn delete_partner(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(partner_id): Path<String>,
) -> Response {
    tokio::time::sleep(sim.config().latency).await;
    match sim.delete_partner(idempotency_key(&headers), &partner_id) {
        Answer::Done { .. } => StatusCode::NO_CONTENT.into_response(),
        Answer::Refused { error } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": error})),
        )
            .into_response(),
        Answer::Unavailable => unavailable(),
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "simulated outage, try again"})),
    )
        .into_response()
}

async fn stats(State(sim): State<Simulator>) -> Json<super::Stats> {
    Json(sim.stats())
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}
