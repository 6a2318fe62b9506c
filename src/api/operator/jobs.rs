//! Bulk jobs: `POST /sagas/retry`, `POST /dead-letters/redrive`,
//! `GET /jobs/{job_id}`, `POST /jobs/{job_id}/abort`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{body, channel_filter, job_name, required_reason, time};
use crate::api::auth::authorize;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::sagas::{non_empty, optional_id, reason, ReasonBody};
use crate::api::AppState;
use crate::operator::jobs::{JobRequest, Selection, Started};
use crate::saga::SagaState;
use crate::store::operator::{DeadLetterQuery, Job, SagaFilter};

/// `POST /sagas/retry` filter.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SagaFilterBody {
    /// Only `failed` (the default): the one state a retry applies to.
    #[schema(value_type = Option<SagaState>, example = "failed")]
    pub state: Option<String>,
    pub partner_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Sagas last changed (for a failed one: parked) at or after this time.
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub since: Option<String>,
    /// … and before this time.
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub until: Option<String>,
}

/// `POST /dead-letters/redrive` filter.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct LetterFilterBody {
    /// Only this dead-letter channel's (e.g. `partner-events-dlq`).
    pub channel: Option<String>,
    /// Only those whose `dlq_reason` contains this text.
    pub reason_contains: Option<String>,
    /// Failed at or after this time.
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub since: Option<String>,
    /// … and before this time.
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub until: Option<String>,
}

/// A bulk request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BulkBody<F> {
    #[serde(default)]
    pub filter: F,
    /// At most this many (1 to `JOB_MAX_ITEMS`, which is also the default).
    pub max: Option<u32>,
    /// Named after the incident; required.
    #[schema(example = "incident-2026-12-02-alliances-down")]
    pub name: Option<String>,
    /// Why; required, kept in the audit record and each saga's history.
    #[schema(example = "alliances fixed their database")]
    pub reason: Option<String>,
    /// Only count what would be touched.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a bulk request answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobStarted {
    /// `null` for a dry run.
    #[schema(required = true)]
    pub job_id: Option<Uuid>,
    /// How many it takes on (at most `max`).
    pub matched: u32,
    /// `true` when the same body had been posted before: that job, untouched.
    pub duplicate: bool,
}

/// A job as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Job)]
pub struct JobView {
    pub job_id: Uuid,
    pub name: String,
    /// `saga_retry` or `dead_letter_redrive`.
    pub kind: String,
    /// `running`, `done`, `aborted` or `failed` (every item failed).
    pub state: String,
    pub matched: u32,
    pub done: u32,
    /// Nothing to do any more (no longer failed, already handled).
    pub skipped: u32,
    pub errors: u32,
    pub reason: String,
    /// The admin token's name that started it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        Self {
            job_id: j.job_id,
            name: j.name,
            kind: j.kind.as_str().into(),
            state: j.state.as_str().into(),
            matched: j.matched,
            done: j.done,
            skipped: j.skipped,
            errors: j.errors,
            reason: j.reason,
            created_by: j.actor,
            created_at: j.created_at,
            updated_at: j.updated_at,
        }
    }
}

/// `POST /sagas/retry`: every failed saga matching the filter, retried by a job.
#[utoipa::path(
    post,
    path = "/sagas/retry",
    tag = "admin",
    summary = "Retry failed sagas in bulk",
    description = "Starts a job that retries every `failed` saga matching the filter (oldest first, at most `max`), paced at `JOB_RATE_PER_SEC` (admin). The same body posted again, while the job runs or after, answers with that job and does nothing twice. `dry_run: true` only counts.",
    request_body(content = BulkBody<SagaFilterBody>, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`dry_run`: how many sagas it would retry.", body = JobStarted),
        (status = 202, description = "The job, started (or the one this body started before).", body = JobStarted),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no admin token is configured.", body = ErrorBody),
        (status = 422, description = "No `name` or `reason`, a `state` other than `failed`, a bad time or id, `max` out of range.", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
pub async fn retry_sagas(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Result<Json<BulkBody<SagaFilterBody>>, JsonRejection>,
) -> Result<Response, ApiError> {
    let admin = authorize(&state, &headers)?;
    let b = body(request)?;
    let selection = saga_selection(b.filter)?;
    start(&state, admin, selection, b.max, b.name, b.reason, b.dry_run).await
}

/// The failed sagas a bulk retry's filter chooses (the console's form too).
pub fn saga_selection(f: SagaFilterBody) -> Result<Selection, ApiError> {
    if let Some(s) = non_empty(f.state) {
        if SagaState::parse(&s) != Some(SagaState::Failed) {
            return Err(ApiError::Unprocessable(format!(
                "invalid field filter.state: only failed sagas can be retried, got {s:?}"
            )));
        }
    }
    Ok(Selection::Sagas(SagaFilter {
        state: Some(SagaState::Failed),
        partner_id: optional_id("filter.partner_id", f.partner_id, ApiError::Unprocessable)?,
        correlation_id: optional_id(
            "filter.correlation_id",
            f.correlation_id,
            ApiError::Unprocessable,
        )?,
        since: time("filter.since", f.since)?,
        until: time("filter.until", f.until)?,
    }))
}

/// `POST /dead-letters/redrive`: every dead letter matching the filter, redriven by a job.
#[utoipa::path(
    post,
    path = "/dead-letters/redrive",
    tag = "admin",
    summary = "Redrive dead letters in bulk",
    description = "Starts a job that redrives every pending dead letter matching the filter (oldest first, at most `max`), each once, paced at `JOB_RATE_PER_SEC` (admin). The same body posted again answers with that job and does nothing twice. `dry_run: true` only counts.",
    request_body(content = BulkBody<LetterFilterBody>, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`dry_run`: how many dead letters it would redrive.", body = JobStarted),
        (status = 202, description = "The job, started (or the one this body started before).", body = JobStarted),
        (status = 400, description = "`filter.channel` holds a control character.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no admin token is configured.", body = ErrorBody),
        (status = 422, description = "No `name` or `reason`, a bad time, `max` out of range.", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
pub async fn redrive_letters(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Result<Json<BulkBody<LetterFilterBody>>, JsonRejection>,
) -> Result<Response, ApiError> {
    let admin = authorize(&state, &headers)?;
    let b = body(request)?;
    let selection = letter_selection(b.filter)?;
    start(&state, admin, selection, b.max, b.name, b.reason, b.dry_run).await
}

/// The pending dead letters a bulk redrive's filter chooses (the console's
/// form too).
pub fn letter_selection(f: LetterFilterBody) -> Result<Selection, ApiError> {
    Ok(Selection::DeadLetters(DeadLetterQuery {
        channel: channel_filter("filter.channel", f.channel)?,
        reason_contains: non_empty(f.reason_contains),
        since: time("filter.since", f.since)?,
        until: time("filter.until", f.until)?,
        before: None,
        limit: 0,
    }))
}

/// A bulk request checked: `max` within `JOB_MAX_ITEMS`, a name and a reason.
pub fn job_request(
    state: &AppState,
    actor: String,
    selection: Selection,
    max: Option<u32>,
    name: Option<String>,
    reason: Option<String>,
) -> Result<JobRequest, ApiError> {
    let bound = state.operator.limits().max_items;
    let max = max.unwrap_or(bound);
    if !(1..=bound).contains(&max) {
        return Err(ApiError::Unprocessable(format!(
            "invalid field max: 1 to {bound} (JOB_MAX_ITEMS), got {max}"
        )));
    }
    Ok(JobRequest {
        selection,
        max,
        name: job_name(name)?,
        reason: required_reason(reason)?,
        actor,
    })
}

async fn start(
    state: &AppState,
    actor: String,
    selection: Selection,
    max: Option<u32>,
    name: Option<String>,
    reason: Option<String>,
    dry_run: bool,
) -> Result<Response, ApiError> {
    let request = job_request(state, actor, selection, max, name, reason)?;
    let (status, answer) = match state.operator.start_job(request, dry_run).await? {
        Started::Preview { matched } => (
            StatusCode::OK,
            JobStarted {
                job_id: None,
                matched,
                duplicate: false,
            },
        ),
        Started::New(job) => (
            StatusCode::ACCEPTED,
            JobStarted {
                job_id: Some(job.job_id),
                matched: job.matched,
                duplicate: false,
            },
        ),
        Started::Existing(job) => (
            StatusCode::ACCEPTED,
            JobStarted {
                job_id: Some(job.job_id),
                matched: job.matched,
                duplicate: true,
            },
        ),
    };
    Ok((status, Json(answer)).into_response())
}

/// `GET /jobs/{job_id}`: a job's progress.
#[utoipa::path(
    get,
    path = "/jobs/{job_id}",
    tag = "admin",
    summary = "Watch a job",
    description = "A bulk job and its progress: how many items it matched, and how many are done, skipped or failed so far (admin).",
    params(("job_id" = Uuid, Path, description = "The job's id.")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 400, description = "`job_id` is not a UUID.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no admin token is configured.", body = ErrorBody),
        (status = 404, description = "No such job.", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    authorize(&state, &headers)?;
    let job_id = job_id(&id)?;
    let job = state.operator.orchestrator().store().job(job_id).await?;
    job.map(|j| Json(j.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no job {job_id}")))
}

/// `POST /jobs/{job_id}/abort`: stops a running job before its next item.
#[utoipa::path(
    post,
    path = "/jobs/{job_id}/abort",
    tag = "admin",
    summary = "Abort a job",
    description = "Stops a running job before its next item; what it did stays done (admin). The body is optional; without a JSON content type it is ignored.",
    params(("job_id" = Uuid, Path, description = "The job's id.")),
    request_body(content = Option<ReasonBody>, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Aborted; the job as it is now.", body = JobView),
        (status = 400, description = "`job_id` is not a UUID.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no admin token is configured.", body = ErrorBody),
        (status = 404, description = "No such job.", body = ErrorBody),
        (status = 409, description = "The job is not running (done, aborted or failed).", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
pub async fn abort(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    request: Result<Json<ReasonBody>, JsonRejection>,
) -> Result<Json<JobView>, ApiError> {
    let admin = authorize(&state, &headers)?;
    let job_id = job_id(&id)?;
    let why = reason(request, "aborted by operator")?;
    match state.operator.abort_job(job_id, &admin, &why).await? {
        None => Err(ApiError::NotFound(format!("no job {job_id}"))),
        Some((job, true)) => Ok(Json(job.into())),
        Some((job, false)) => Err(ApiError::Conflict(format!(
            "job {job_id} is {}, not running",
            job.state.as_str()
        ))),
    }
}

/// A job id from a path, else 400.
pub fn job_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::BadRequest(format!("job_id must be a UUID, got {id:?}")))
}
