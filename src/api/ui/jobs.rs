//! Bulk work from the console: a bulk form is previewed (how many it
//! would touch, nothing done), then started as a job whose page shows its
//! progress live and can abort it. The jobs are the API's: the same
//! checks, the same idempotency (the same form twice is one job), the same
//! pacing and bound.

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

use super::page::{self, UiError};
use super::session::Session;
use crate::api::error::ApiError;
use crate::api::operator::jobs::{job_id, job_request};
use crate::api::AppState;
use crate::operator::jobs::{Selection, Started};
use crate::store::operator::Job;

/// What every bulk form asks: the job's name, why, at most how many.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct BulkFields {
    /// The job's name, after the incident.
    #[serde(default)]
    pub name: String,
    /// Why, recorded with the job and every item it touches.
    #[serde(default)]
    pub reason: String,
    /// Empty: `JOB_MAX_ITEMS`.
    #[serde(default)]
    pub max: String,
    /// `preview` or `start`.
    #[serde(default)]
    pub step: String,
}

/// The inputs for [`BulkFields`].
pub fn bulk_inputs(f: &BulkFields) -> Markup {
    html! {
        label { "job name " input name="name" required maxlength="100" value=(f.name)
            placeholder="incident-2026-12-02-alliances-down"; }
        label { "reason " input name="reason" required maxlength="1000" value=(f.reason); }
        label { "at most " input name="max" inputmode="numeric" size="6" value=(f.max); }
    }
}

/// Previews a bulk form (`step=preview`) or starts its job: `form` is the
/// form's action, its filter's hidden inputs, and what the count means.
pub async fn preview_or_start(
    state: &AppState,
    session: &Session,
    selection: Selection,
    bulk: BulkFields,
    (action, hidden, what): (&str, Markup, &str),
) -> Result<Response, UiError> {
    let max =
        match bulk.max.trim() {
            "" => None,
            m => Some(m.parse::<u32>().map_err(|_| {
                ApiError::Unprocessable(format!("at most: a whole number, got {m:?}"))
            })?),
        };
    let name = Some(bulk.name.clone());
    let reason = Some(bulk.reason.clone());
    let request = job_request(state, session.admin.clone(), selection, max, name, reason)?;
    let dry_run = bulk.step != "start";
    // A preview of a form that already ran shows that run: starting it
    // would touch nothing.
    if dry_run {
        if let Some(job) = state.operator.earlier_job(&request).await? {
            return Ok(duplicate(&job));
        }
    }
    match state.operator.start_job(request, dry_run).await? {
        Started::Preview { matched } => {
            let body = html! {
                h1 { "Preview" }
                p #matched data-matched=(matched) { strong { (matched) } " " (what) "." }
                form method="post" action=(action) {
                    (page::csrf_field(session))
                    (hidden)
                    (page::hidden_inputs(&[("name", &bulk.name), ("reason", &bulk.reason), ("max", &bulk.max)]))
                    button #start-job type="submit" name="step" value="start" disabled[matched == 0] {
                        "Start the job"
                    }
                }
            };
            Ok(page::ok("Preview", Some(session), body))
        }
        Started::New(job) => Ok(page::see_other(&format!("/ui/jobs/{}", job.job_id))),
        Started::Existing(job) => Ok(duplicate(&job)),
    }
}

/// To the job a form already started.
fn duplicate(job: &Job) -> Response {
    page::see_other(&format!("/ui/jobs/{}?notice=duplicate", job.job_id))
}

async fn load(state: &AppState, id: &str) -> Result<Job, UiError> {
    let job_id = job_id(id)?;
    state
        .operator
        .orchestrator()
        .store()
        .job(job_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {job_id}")).into())
}

/// `GET /ui/jobs/{job_id}`.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<page::NoticeQuery>,
) -> Result<Response, UiError> {
    let session = page::signed_in(&state, &headers)?;
    let job = load(&state, &id).await?;
    let body = html! {
        (page::notice(Some(q.notice.as_str())))
        h1 { "Job " (job.name) }
        (progress(&job))
        @if job.state.as_str() == "running" {
            form method="post" action={ "/ui/jobs/" (job.job_id) "/abort" } {
                (page::csrf_field(&session))
                label { "reason " input name="reason" placeholder="aborted by operator"; }
                button #abort-job type="submit" { "Abort" }
            }
        }
    };
    Ok(page::ok("Job", Some(&session), body))
}

/// `GET /ui/jobs/{job_id}/live`: the progress alone, polled while it runs.
pub async fn live(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    page::signed_in(&state, &headers)?;
    let job = load(&state, &id).await?;
    Ok(page::respond(StatusCode::OK, progress(&job)))
}

fn progress(job: &Job) -> Markup {
    let running = job.state.as_str() == "running";
    let settled = job.done + job.skipped + job.errors;
    html! {
        div #job-progress data-state=(job.state.as_str())
            hx-get=[running.then(|| format!("/ui/jobs/{}/live", job.job_id))]
            hx-trigger=[running.then_some("every 1s")] hx-swap="outerHTML" {
            progress max=(job.matched.max(1)) value=(settled) {}
            dl {
                dt { "state" } dd #job-state { (job.state.as_str()) }
                dt { "kind" } dd { (job.kind.as_str()) }
                dt { "matched" } dd { (job.matched) }
                dt { "done" } dd #job-done { (job.done) }
                dt { "skipped" } dd { (job.skipped) }
                dt { "errors" } dd { (job.errors) }
                dt { "reason" } dd { (job.reason) }
                dt { "started by" } dd { (job.actor) " at " (page::time(job.created_at)) }
            }
        }
    }
}

/// `POST /ui/jobs/{job_id}/abort`.
pub async fn abort(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<page::ReasonForm>,
) -> Result<Response, UiError> {
    let session = page::form_session(&state, &headers, &form.csrf)?;
    let job_id = job_id(&id)?;
    let reason = match form.reason.trim() {
        "" => "aborted by operator".to_string(),
        r => crate::api::operator::required_reason(Some(r.to_string()))?,
    };
    match state
        .operator
        .abort_job(job_id, &session.admin, &reason)
        .await?
    {
        None => Err(ApiError::NotFound(format!("no job {job_id}")).into()),
        Some((job, false)) => Err(ApiError::Conflict(format!(
            "job {job_id} is {}, not running",
            job.state.as_str()
        ))
        .into()),
        Some((_, true)) => Ok(page::see_other(&format!(
            "/ui/jobs/{job_id}?notice=aborted"
        ))),
    }
}
