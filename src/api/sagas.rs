//! `/sagas`: start, list, inspect, and (admin) retry or force compensation.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::authorize;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::envelope::{check_id, PartnerCreated};
use crate::orchestrator::{Source, StartRequest};
use crate::saga::{HistoryEntry, Input, Saga, SagaState};
use crate::store::{Created, ListQuery};

/// The longest operator reason kept: it is stored in the saga's history.
const MAX_REASON_CHARS: usize = 1000;

/// A saga as the API shows it (docs/contract.md §5).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Saga)]
pub struct SagaView {
    /// The saga's id (UUID v7: time-ordered, also the paging cursor).
    pub saga_id: Uuid,
    /// Propagated unchanged from the starting event to every message.
    pub correlation_id: String,
    pub partner_id: String,
    /// The `event_id` of the `PartnerCreated` that started it (the dedup key).
    pub event_id: String,
    pub state: SagaState,
    pub step: crate::saga::Step,
    /// Attempts made at the current step, the first included.
    pub attempts: u32,
    /// Set once alliances created the alliance.
    #[schema(required = true)]
    pub alliance_id: Option<String>,
    /// The latest failure, if any.
    #[schema(required = true)]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The bound of the saga's phase: past it a saga still moving forward
    /// is compensated; once compensating, it is the compensation's own
    /// deadline, past which the saga is parked as `failed`.
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
#[derive(Debug, Deserialize, ToSchema)]
pub struct StartBody {
    /// A `PartnerCreated` payload: `partner_id` and `name` required,
    /// `email` optional, any other fields kept and passed on to alliances.
    #[schema(schema_with = super::openapi::partner_payload_schema)]
    pub payload: Map<String, Value>,
    /// Generated (a UUID) when absent or empty. At most 256 characters,
    /// no NUL (the id rule of every input path).
    #[schema(example = json!(null), max_length = 256)]
    pub correlation_id: Option<String>,
    /// The dedup key: the same `event_id` twice starts one saga. Generated
    /// when absent or empty (leave it out when trying the API: a fixed
    /// example would answer every caller with the first caller's saga).
    /// At most 256 characters, no NUL.
    #[schema(example = json!(null), max_length = 256)]
    pub event_id: Option<String>,
}

/// `POST /sagas` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Started {
    pub saga_id: Uuid,
    /// The saga's; for a duplicate, the one stored with the first request.
    pub correlation_id: String,
    /// The saga's starting event id; for a duplicate, the stored one.
    pub event_id: String,
    /// `true` when this `event_id` had already started this saga.
    pub duplicate: bool,
}

/// `POST /sagas`: starts a saga from a `PartnerCreated` payload; the same
/// `event_id` twice answers with the same saga.
#[utoipa::path(
    post,
    path = "/sagas",
    tag = "sagas",
    summary = "Start a saga",
    description = "Records a saga for a `PartnerCreated` payload, as if the event had arrived on `partner-events`, and starts driving it (admin: it can lead to the partner's deletion). The same `event_id` twice, or a second start for a partner that already has a saga not `compensated`, answers with the existing saga (`duplicate: true`).",
    request_body(content = StartBody, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Recorded (or already recorded); the saga runs on its own.", body = Started),
        (status = 400, description = "The body is not valid JSON.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no `ADMIN_TOKEN` is configured.", body = ErrorBody),
        (status = 413, description = "The body exceeds `MAX_MESSAGE_BYTES`.", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`.", body = ErrorBody),
        (status = 422, description = "The JSON is not a valid start request (a required field missing or of the wrong type, an id over 256 characters, a partner id of `.` or `..`, a NUL character…).", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<StartBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    authorize(&state, &headers)?;
    let Json(body) = body?;
    let partner = PartnerCreated::from_payload(&body.payload)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let correlation_id = optional_id(
        "correlation_id",
        body.correlation_id,
        ApiError::Unprocessable,
    )?
    .unwrap_or_else(|| Uuid::new_v4().to_string());
    let event_id = optional_id("event_id", body.event_id, ApiError::Unprocessable)?
        .unwrap_or_else(|| Uuid::new_v4().to_string());
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
    let body = Started {
        saga_id,
        correlation_id,
        event_id,
        duplicate,
    };
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// `GET /sagas` query; all text, parsed here so errors can say exactly
/// what is wrong. The documented types are what the parsing accepts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only sagas in this state.
    #[param(value_type = Option<SagaState>)]
    state: Option<String>,
    /// Only this partner's sagas.
    partner_id: Option<String>,
    /// Only sagas with this correlation id.
    correlation_id: Option<String>,
    /// Only sagas last changed (for a failed one: parked) at or after this
    /// time, RFC 3339: what a bulk retry's `since` takes.
    #[param(value_type = Option<DateTime<Utc>>)]
    since: Option<String>,
    /// … and before this time.
    #[param(value_type = Option<DateTime<Utc>>)]
    until: Option<String>,
    /// Page size, 1 to 500.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500, default = 50)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    #[param(value_type = Option<Uuid>)]
    cursor: Option<String>,
}

/// `GET /sagas` answer: one page, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaPage {
    pub items: Vec<SagaView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /sagas`: newest first, filtered, cursor-paged.
#[utoipa::path(
    get,
    path = "/sagas",
    tag = "sagas",
    summary = "List sagas",
    description = "Newest first; filters combine. Page with `cursor` = the previous page's `next_cursor` until it is `null`.",
    params(ListParams),
    responses(
        (status = 200, description = "One page of sagas.", body = SagaPage),
        (status = 400, description = "An unknown `state`, a `limit` outside 1–500, a `since` or `until` that is not an RFC 3339 time, or a malformed `cursor`.", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<SagaPage>, ApiError> {
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
    let limit = super::paging::limit(p.limit)?;
    let before = match non_empty(p.cursor) {
        None => None,
        Some(c) => Some(
            Uuid::parse_str(&c)
                .map_err(|_| ApiError::BadRequest(format!("invalid cursor {c:?}")))?,
        ),
    };
    let query = ListQuery {
        state: saga_state,
        partner_id: optional_id("partner_id", p.partner_id, ApiError::BadRequest)?,
        correlation_id: optional_id("correlation_id", p.correlation_id, ApiError::BadRequest)?,
        since: optional_time("since", p.since, ApiError::BadRequest)?,
        until: optional_time("until", p.until, ApiError::BadRequest)?,
        before,
        // One more than asked tells whether another page exists.
        limit: limit + 1,
    };
    let sagas = state.orchestrator.store().list(&query).await?;
    let (sagas, next_cursor) = super::paging::page(sagas, limit, |s| s.saga_id.to_string());
    let items: Vec<SagaView> = sagas.into_iter().map(SagaView::from).collect();
    Ok(Json(SagaPage { items, next_cursor }))
}

/// A saga with its history.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaDetail {
    #[serde(flatten)]
    pub saga: SagaView,
    /// Every transition, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// `GET /sagas/{saga_id}`: the saga and its full transition history.
#[utoipa::path(
    get,
    path = "/sagas/{saga_id}",
    tag = "sagas",
    summary = "Inspect a saga",
    description = "The saga and its full transition history, oldest first.",
    params(("saga_id" = Uuid, Path, description = "The saga's id.")),
    responses(
        (status = 200, description = "The saga.", body = SagaDetail),
        (status = 400, description = "`saga_id` is not a UUID.", body = ErrorBody),
        (status = 404, description = "No such saga.", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
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

/// Admin action body; the whole body is optional.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ReasonBody {
    /// Stored in the saga's history; a default is used when absent. At
    /// most 1000 characters, no NUL.
    #[schema(example = "integrations fixed the partner's record", max_length = 1000)]
    pub reason: Option<String>,
}

/// `POST /sagas/{saga_id}/retry`: re-drives a `failed` saga's compensation.
#[utoipa::path(
    post,
    path = "/sagas/{saga_id}/retry",
    tag = "admin",
    summary = "Retry a failed saga",
    description = "Re-drives the compensation of a `failed` saga (admin). The body is optional; without a JSON content type it is ignored.",
    params(("saga_id" = Uuid, Path, description = "The saga's id.")),
    request_body(content = Option<ReasonBody>, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Compensation is running again; the saga as it is now.", body = SagaView),
        (status = 400, description = "`saga_id` is not a UUID, or the body is not valid JSON.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no `ADMIN_TOKEN` is configured.", body = ErrorBody),
        (status = 404, description = "No such saga.", body = ErrorBody),
        (status = 409, description = "The saga is not `failed` (or kept changing; try again).", body = ErrorBody),
        (status = 413, description = "The body exceeds `MAX_MESSAGE_BYTES`.", body = ErrorBody),
        (status = 422, description = "The body is JSON but not `{\"reason\": string}`.", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    post,
    path = "/sagas/{saga_id}/compensate",
    tag = "admin",
    summary = "Force compensation",
    description = "Forces compensation of a saga that is still moving forward (admin): integrations is asked to delete the partner. The body is optional; without a JSON content type it is ignored.",
    params(("saga_id" = Uuid, Path, description = "The saga's id.")),
    request_body(content = Option<ReasonBody>, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Compensation started; the saga as it is now.", body = SagaView),
        (status = 400, description = "`saga_id` is not a UUID, or the body is not valid JSON.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no `ADMIN_TOKEN` is configured.", body = ErrorBody),
        (status = 404, description = "No such saga.", body = ErrorBody),
        (status = 409, description = "The saga is already compensating or terminal (or kept changing; try again).", body = ErrorBody),
        (status = 413, description = "The body exceeds `MAX_MESSAGE_BYTES`.", body = ErrorBody),
        (status = 422, description = "The body is JSON but not `{\"reason\": string}`.", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
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
    let admin = authorize(&state, headers)?;
    // Who acted goes into the saga's history with the reason.
    let reason = crate::operator::attributed(&reason(body, default_reason)?, &admin, None);
    let saga = state
        .orchestrator
        .operate(parse_id(&id)?, input(reason))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(saga.into())))
}

pub(super) fn reason(
    body: Result<Json<ReasonBody>, JsonRejection>,
    default: &str,
) -> Result<String, ApiError> {
    match body {
        Ok(Json(b)) => match non_empty(b.reason) {
            None => Ok(default.to_string()),
            Some(r) if r.chars().count() > MAX_REASON_CHARS => Err(ApiError::Unprocessable(
                format!("invalid field reason: longer than {MAX_REASON_CHARS} characters"),
            )),
            Some(r) if r.contains('\0') => Err(ApiError::Unprocessable(
                "invalid field reason: contains a NUL character".into(),
            )),
            Some(r) => Ok(r),
        },
        // An empty body is fine: the reason is optional.
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(default.to_string()),
        Err(e) => Err(e.into()),
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::BadRequest(format!("saga_id must be a UUID, got {id:?}")))
}

/// An optional RFC 3339 time from a request; `refused` says what is wrong
/// (422 in a body, 400 in a query).
pub(super) fn optional_time(
    field: &str,
    value: Option<String>,
    refused: fn(String) -> ApiError,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    non_empty(value)
        .map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    refused(format!(
                        "invalid field {field}: expected an RFC 3339 time, got {t:?}"
                    ))
                })
        })
        .transpose()
}

/// An optional id from a request: absent or blank is `None` (a body's
/// caller gets one generated, a filter is left out); anything else must
/// obey the id rule, or `refused` says why (422 in a body, 400 in a query).
pub(super) fn optional_id(
    field: &'static str,
    value: Option<String>,
    refused: fn(String) -> ApiError,
) -> Result<Option<String>, ApiError> {
    let Some(id) = non_empty(value) else {
        return Ok(None);
    };
    check_id(field, &id).map_err(|e| refused(e.to_string()))?;
    Ok(Some(id))
}

pub(super) fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}
