//! `/sagas`: start, list, inspect, and (admin) retry or force compensation.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::envelope::PartnerCreated;
use crate::orchestrator::{Source, StartRequest};
use crate::saga::{HistoryEntry, Input, Saga, SagaState};
use crate::store::{Created, ListQuery};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

/// A saga as the API shows it (CONTRACT §5).
#[derive(Debug, Serialize)]
pub struct SagaView {
    pub saga_id: Uuid,
    pub correlation_id: String,
    pub partner_id: String,
    pub event_id: String,
    pub state: SagaState,
    pub step: crate::saga::Step,
    pub attempts: u32,
    pub alliance_id: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
}

impl From<Saga> for SagaView {
    fn from(s: Saga) -> Self {
        Self {
            saga_id: s.saga_id,
            correlation_id: s.correlation_id,
            partner_id: s.partner_id,
            event_id: s.event_id,
            state: s.state,
            step: s.step,
            attempts: s.attempts,
            alliance_id: s.alliance_id,
            last_error: s.last_error,
            created_at: s.created_at,
            updated_at: s.updated_at,
            deadline_at: s.deadline_at,
        }
    }
}

/// `POST /sagas` body.
#[derive(Debug, Deserialize)]
pub struct StartBody {
    pub payload: Map<String, Value>,
    pub correlation_id: Option<String>,
    pub event_id: Option<String>,
}

/// `POST /sagas`: starts a saga from a `PartnerCreated` payload; the same
/// `event_id` twice answers with the same saga.
pub async fn start(
    State(state): State<AppState>,
    body: Result<Json<StartBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let partner = PartnerCreated::from_payload(&body.payload)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let correlation_id =
        non_empty(body.correlation_id).unwrap_or_else(|| Uuid::new_v4().to_string());
    let event_id = non_empty(body.event_id).unwrap_or_else(|| Uuid::new_v4().to_string());
    let request = StartRequest {
        event_id: event_id.clone(),
        correlation_id: correlation_id.clone(),
        partner,
        traceparent: None,
    };
    let permit = state.orchestrator.try_permit();
    let created = state
        .orchestrator
        .start(Source::Api, vec![(request, permit)])
        .await
        .map_err(super::error::store_error)?;
    let outcome = created
        .first()
        .ok_or_else(|| ApiError::Unavailable("the store recorded nothing; try again".into()))?;
    let (saga_id, duplicate) = match outcome {
        Created::New(id) => (*id, false),
        Created::Duplicate(id) => (*id, true),
    };
    // A duplicate answers with the saga that exists, whose ids may differ
    // from this request's (a generated correlation_id, for one).
    let (correlation_id, event_id) = if duplicate {
        match state.orchestrator.store().get(saga_id).await? {
            Some(saga) => (saga.correlation_id, saga.event_id),
            None => (correlation_id, event_id),
        }
    } else {
        (correlation_id, event_id)
    };
    let body = serde_json::json!({
        "saga_id": saga_id,
        "correlation_id": correlation_id,
        "event_id": event_id,
        "duplicate": duplicate,
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// `GET /sagas` query; all text, parsed here so errors can say exactly what is wrong.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    state: Option<String>,
    partner_id: Option<String>,
    correlation_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /sagas`: newest first, filtered, cursor-paged.
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params?;
    let saga_state = match non_empty(p.state) {
        None => None,
        Some(s) => Some(SagaState::parse(&s).ok_or_else(|| {
            let valid: Vec<_> = SagaState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!(
                "unknown state {s:?}; expected one of {}",
                valid.join(", ")
            ))
        })?),
    };
    let limit = match non_empty(p.limit) {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "limit must be 1 to {MAX_LIMIT}, got {l:?}"
                )))
            }
        },
    };
    let before = match non_empty(p.cursor) {
        None => None,
        Some(c) => Some(
            Uuid::parse_str(&c)
                .map_err(|_| ApiError::BadRequest(format!("invalid cursor {c:?}")))?,
        ),
    };
    let query = ListQuery {
        state: saga_state,
        partner_id: non_empty(p.partner_id),
        correlation_id: non_empty(p.correlation_id),
        before,
        // One more than asked tells whether another page exists.
        limit: limit + 1,
    };
    let mut sagas = state.orchestrator.store().list(&query).await?;
    let next_cursor = if sagas.len() > limit as usize {
        sagas.truncate(limit as usize);
        sagas.last().map(|s| s.saga_id.to_string())
    } else {
        None
    };
    let items: Vec<SagaView> = sagas.into_iter().map(SagaView::from).collect();
    Ok(Json(
        serde_json::json!({ "items": items, "next_cursor": next_cursor }),
    ))
}

/// A saga with its history.
#[derive(Debug, Serialize)]
pub struct SagaDetail {
    #[serde(flatten)]
    pub saga: SagaView,
    pub history: Vec<HistoryEntry>,
}

/// `GET /sagas/{saga_id}`: the saga and its full transition history.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SagaDetail>, ApiError> {
    let saga_id = parse_id(&id)?;
    let store = state.orchestrator.store();
    let saga = store
        .get(saga_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("saga {saga_id} not found")))?;
    let history = store.history(saga_id).await?;
    Ok(Json(SagaDetail {
        saga: saga.into(),
        history,
    }))
}

/// Admin action body.
#[derive(Debug, Deserialize)]
pub struct ReasonBody {
    pub reason: Option<String>,
}

/// `POST /sagas/{saga_id}/retry`: re-drives a `failed` saga's compensation.
pub async fn retry(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    body: Result<Json<ReasonBody>, JsonRejection>,
) -> Result<(StatusCode, Json<SagaView>), ApiError> {
    operate(state, &headers, id, body, "retried by operator", |reason| {
        Input::RetryFailed { reason }
    })
    .await
}

/// `POST /sagas/{saga_id}/compensate`: forces compensation of a live saga.
pub async fn compensate(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    body: Result<Json<ReasonBody>, JsonRejection>,
) -> Result<(StatusCode, Json<SagaView>), ApiError> {
    operate(
        state,
        &headers,
        id,
        body,
        "compensation forced by operator",
        |reason| Input::ForceCompensate { reason },
    )
    .await
}

/// An admin action: authorize, read the optional reason, apply the input.
async fn operate(
    State(state): State<AppState>,
    headers: &HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<ReasonBody>, JsonRejection>,
    default_reason: &str,
    input: impl FnOnce(String) -> Input,
) -> Result<(StatusCode, Json<SagaView>), ApiError> {
    authorize(&state, headers)?;
    let reason = reason(body, default_reason)?;
    let saga = state
        .orchestrator
        .operate(parse_id(&id)?, input(reason))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(saga.into())))
}

/// Admin routes need `Authorization: Bearer $ADMIN_TOKEN`; with no token
/// configured they are refused, never open.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::AdminDisabled);
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if constant_time_eq(given.as_bytes(), expected.expose_secret().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Compares without an early exit, so response time does not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn reason(
    body: Result<Json<ReasonBody>, JsonRejection>,
    default: &str,
) -> Result<String, ApiError> {
    match body {
        Ok(Json(b)) => Ok(non_empty(b.reason).unwrap_or_else(|| default.to_string())),
        // An empty body is fine: the reason is optional.
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(default.to_string()),
        Err(e) => Err(e.into()),
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::BadRequest(format!("saga_id must be a UUID, got {id:?}")))
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison_needs_exact_match() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
