//! `/ui/sagas`: the list with its filters and cursor paging, a saga's page
//! (its timeline, [`super::timeline`]), and the actions on sagas: retry a
//! failed one, force compensation, and retry every failed saga a filter
//! matches as a job (previewed first).

use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Datelike, NaiveDateTime, SecondsFormat, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use super::jobs::{self, BulkFields};
use super::page::{self, UiError};
use super::session::Session;
use super::timeline;
use crate::api::error::ApiError;
use crate::api::operator::jobs::{saga_selection, SagaFilterBody};
use crate::api::sagas::{non_empty, optional_id, reason, ReasonBody};
use crate::api::AppState;
use crate::saga::{Input, Saga, SagaState};
use crate::store::ListQuery;

/// Rows per page.
const PAGE: u32 = 50;

/// The list's filters, as the form sends them (and its links carry them).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Filters {
    /// A saga state; empty: any.
    #[serde(default)]
    pub state: String,
    /// One partner's sagas.
    #[serde(default)]
    pub partner_id: String,
    /// The sagas of one correlation id.
    #[serde(default)]
    pub correlation_id: String,
    /// Changed at or after: `YYYY-MM-DDTHH:MM` (a `datetime-local`
    /// field, read as UTC) or RFC 3339.
    #[serde(default)]
    pub since: String,
    /// Changed before; written as `since` is.
    #[serde(default)]
    pub until: String,
    /// The last saga of the page before: the next page starts after it.
    #[serde(default)]
    pub cursor: String,
    /// See [`page::notice`].
    #[serde(default)]
    pub notice: String,
}

/// A time from a filter field: RFC 3339, or a `datetime-local` value in UTC.
pub fn filter_time(field: &str, value: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let refused = || {
        ApiError::BadRequest(format!(
            "{field} must be a time like 2026-12-02T10:00 (UTC), got {value:?}"
        ))
    };
    let time = DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S%.f"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(value, f).ok())
                .map(|t| t.and_utc())
        })
        .ok_or_else(refused)?;
    // chrono reads years of any length and sign; the stores hold 1 to 9999.
    if !(1..=9999).contains(&time.year()) {
        return Err(refused());
    }
    Ok(Some(time))
}

impl Filters {
    fn query(&self) -> Result<ListQuery, ApiError> {
        let state = match non_empty(Some(self.state.clone())) {
            None => None,
            Some(s) => Some(
                SagaState::parse(&s)
                    .ok_or_else(|| ApiError::BadRequest(format!("unknown state {s:?}")))?,
            ),
        };
        let before = match non_empty(Some(self.cursor.clone())) {
            None => None,
            Some(c) => Some(
                uuid::Uuid::parse_str(&c)
                    .map_err(|_| ApiError::BadRequest(format!("invalid cursor {c:?}")))?,
            ),
        };
        let id = |field, v: &String| optional_id(field, Some(v.clone()), ApiError::BadRequest);
        Ok(ListQuery {
            state,
            partner_id: id("partner_id", &self.partner_id)?,
            correlation_id: id("correlation_id", &self.correlation_id)?,
            since: filter_time("since", &self.since)?,
            until: filter_time("until", &self.until)?,
            before,
            limit: PAGE + 1,
        })
    }

    /// The filters as a query string (without the cursor).
    fn encoded(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("state", &self.state),
                ("partner_id", &self.partner_id),
                ("correlation_id", &self.correlation_id),
                ("since", &self.since),
                ("until", &self.until),
            ])
            .finish()
    }
}

/// `GET /ui/sagas`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Result<Response, UiError> {
    let session = page::session_of(&state, &headers);
    let mut sagas = state.orchestrator.store().list(&filters.query()?).await?;
    let next = (sagas.len() > PAGE as usize).then(|| {
        sagas.truncate(PAGE as usize);
        sagas.last().map(|s| s.saga_id.to_string())
    });
    let body = html! {
        (page::notice(Some(filters.notice.as_str())))
        h1 { "Sagas" }
        (filter_form(&filters))
        (saga_table(&sagas))
        @if let Some(Some(cursor)) = next {
            p { a #older rel="next" href={ "/ui/sagas?" (filters.encoded()) "&cursor=" (cursor) } { "Older →" } }
        }
        @if let Some(s) = &session {
            (bulk_retry_form(s, &filters))
        }
    };
    Ok(page::ok("Sagas", session.as_ref(), body))
}

fn filter_form(f: &Filters) -> Markup {
    html! {
        form.filters #filters method="get" action="/ui/sagas" {
            label { "state "
                select name="state" {
                    option value="" selected[f.state.is_empty()] { "any" }
                    @for s in SagaState::ALL {
                        option value=(s.as_str()) selected[f.state == s.as_str()] { (s.as_str()) }
                    }
                }
            }
            label { "partner " input name="partner_id" value=(f.partner_id); }
            label { "correlation id " input name="correlation_id" value=(f.correlation_id); }
            label { "changed since (UTC) " input type="datetime-local" name="since" step="any" value=(f.since); }
            label { "until (UTC) " input type="datetime-local" name="until" step="any" value=(f.until); }
            button type="submit" { "Filter" }
        }
    }
}

fn saga_table(sagas: &[Saga]) -> Markup {
    html! {
        @if sagas.is_empty() {
            p #no-sagas { "No saga matches." }
        } @else {
            table #sagas {
                thead { tr { th { "saga" } th { "partner" } th { "state" } th { "step" }
                    th { "attempts" } th { "last error" } th { "last change" } } }
                tbody {
                    @for s in sagas {
                        tr data-saga=(s.saga_id) data-state=(s.state.as_str()) {
                            td { a href={ "/ui/sagas/" (s.saga_id) } { code { (s.saga_id) } } }
                            td { (s.partner_id) }
                            td { (page::state_badge(s.state)) }
                            td { (s.step.as_str()) }
                            td.num { (s.attempts) }
                            td.error-text { (s.last_error.as_deref().unwrap_or("")) }
                            td { (page::time(s.updated_at)) }
                        }
                    }
                }
            }
        }
    }
}

/// A bulk retry's filter, carried from the list to the preview and on.
fn hidden_filters(partner_id: &str, correlation_id: &str, since: &str, until: &str) -> Markup {
    page::hidden_inputs(&[
        ("partner_id", partner_id),
        ("correlation_id", correlation_id),
        ("since", since),
        ("until", until),
    ])
}

fn bulk_retry_form(session: &Session, f: &Filters) -> Markup {
    html! {
        section.panel.admin #bulk-retry {
            h2 { "Retry every failed saga matching these filters" }
            p.hint { "State is failed whatever the filter says. You see how many first." }
            form method="post" action="/ui/sagas/retry" {
                (page::csrf_field(session))
                (hidden_filters(&f.partner_id, &f.correlation_id, &f.since, &f.until))
                (jobs::bulk_inputs(&BulkFields::default()))
                button type="submit" name="step" value="preview" { "Preview" }
            }
        }
    }
}

/// The bulk retry form as posted.
#[derive(Debug, Deserialize)]
pub struct BulkRetry {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    partner_id: String,
    #[serde(default)]
    correlation_id: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(flatten)]
    bulk: BulkFields,
}

/// `POST /ui/sagas/retry`: preview, then start, a bulk retry.
pub async fn bulk_retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<BulkRetry>,
) -> Result<Response, UiError> {
    let session = page::form_session(&state, &headers, &form.csrf)?;
    // To the nanosecond, so the job takes exactly what the list showed.
    let iso = |field, v: &str| {
        filter_time(field, v).map(|t| t.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
    };
    let filter = SagaFilterBody {
        state: Some("failed".into()),
        partner_id: non_empty(Some(form.partner_id.clone())),
        correlation_id: non_empty(Some(form.correlation_id.clone())),
        since: iso("since", &form.since)?,
        until: iso("until", &form.until)?,
    };
    let hidden = hidden_filters(
        &form.partner_id,
        &form.correlation_id,
        &form.since,
        &form.until,
    );
    let what = "failed sagas would be retried (compensation runs again)";
    jobs::preview_or_start(
        &state,
        &session,
        saga_selection(filter)?,
        form.bulk,
        ("/ui/sagas/retry", hidden, what),
    )
    .await
}

/// `GET /ui/sagas/{saga_id}`: the saga, its timeline and its actions.
pub async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<page::NoticeQuery>,
) -> Result<Response, UiError> {
    let session = page::session_of(&state, &headers);
    let saga_id = parse_id(&id)?;
    let store = state.orchestrator.store();
    let saga = store
        .get(saga_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("saga {saga_id} not found")))?;
    let history = store.history(saga_id).await?;
    let body = html! {
        (page::notice(Some(q.notice.as_str())))
        h1 { "Saga " code { (saga.saga_id) } " " (page::state_badge(saga.state)) }
        (timeline::facts(&saga))
        @if let Some(s) = &session { (actions(s, &saga)) }
        (timeline::render(&saga, &history, Utc::now()))
    };
    Ok(page::ok("Saga", session.as_ref(), body))
}

fn actions(session: &Session, saga: &Saga) -> Markup {
    let (path, label, why) = if saga.state == SagaState::Failed {
        (
            "retry",
            "Retry compensation",
            "integrations fixed the partner's record",
        )
    } else if saga.state.is_forward() {
        (
            "compensate",
            "Force compensation",
            "the partner must be undone",
        )
    } else {
        return html! {};
    };
    html! {
        section.panel.admin #saga-actions {
            form method="post" action={ "/ui/sagas/" (saga.saga_id) "/" (path) } {
                (page::csrf_field(session))
                label { "reason " input name="reason" required placeholder=(why) maxlength="1000"; }
                button #{ "action-" (path) } type="submit" { (label) }
            }
        }
    }
}

/// `POST /ui/sagas/{saga_id}/retry`.
pub async fn retry(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    form: Form<page::ReasonForm>,
) -> Result<Response, UiError> {
    act(state, headers, id, form, "retried", |reason| {
        Input::RetryFailed { reason }
    })
    .await
}

/// `POST /ui/sagas/{saga_id}/compensate`.
pub async fn compensate(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    form: Form<page::ReasonForm>,
) -> Result<Response, UiError> {
    act(state, headers, id, form, "compensating", |reason| {
        Input::ForceCompensate { reason }
    })
    .await
}

/// As the API's retry and compensate: the reason, with who gave it, goes
/// into the saga's history.
async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<page::ReasonForm>,
    notice: &str,
    input: impl FnOnce(String) -> Input,
) -> Result<Response, UiError> {
    let session = page::form_session(&state, &headers, &form.csrf)?;
    let saga_id = parse_id(&id)?;
    let given = Ok(axum::Json(ReasonBody {
        reason: Some(form.reason),
    }));
    let why = reason(given, "")?;
    if why.is_empty() {
        return Err(ApiError::Unprocessable("say why: the reason is required".into()).into());
    }
    let why = crate::operator::attributed(&why, &session.admin, None);
    state
        .orchestrator
        .operate(saga_id, input(why))
        .await
        .map_err(ApiError::from)?;
    Ok(page::see_other(&format!(
        "/ui/sagas/{saga_id}?notice={notice}"
    )))
}

fn parse_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(id)
        .map_err(|_| ApiError::NotFound(format!("no saga {}", id.escape_default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_times_are_utc_fields_or_rfc_3339_within_the_stores_years() {
        let at = |v| filter_time("since", v).map(|t| t.map(page::time));
        assert_eq!(at("").unwrap(), None);
        assert_eq!(
            at("2026-12-02T10:00").unwrap().as_deref(),
            Some("2026-12-02T10:00:00.000Z")
        );
        assert_eq!(
            at("2026-12-02T10:00:30.25").unwrap().as_deref(),
            Some("2026-12-02T10:00:30.250Z")
        );
        assert_eq!(
            at("2026-12-02T11:00:00+01:00").unwrap().as_deref(),
            Some("2026-12-02T10:00:00.000Z")
        );
        for bad in [
            "yesterday",
            "-5000-01-01T00:00",
            "+10000-01-01T00:00",
            "0000-01-01T00:00",
        ] {
            assert!(at(bad).is_err(), "{bad}");
        }
    }
}
