//! `/ui/dead-letters`: per channel, the letters waiting with their reason,
//! source and time; one letter with its original fields as received; and
//! redrive or discard, one at a time or (redrive) every letter of a
//! channel whose reason matches, as a job. All of it needs a sign-in, as
//! the API's routes need the token: letters hold whatever was sent.

use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

use super::jobs::{self, BulkFields};
use super::page::{self, UiError};
use super::session::Session;
use crate::api::error::ApiError;
use crate::api::operator::dead_letters::{action_error, DeadLetterView};
use crate::api::operator::jobs::{letter_selection, LetterFilterBody};
use crate::api::operator::{channel_filter, letter_id, required_reason};
use crate::api::sagas::non_empty;
use crate::api::AppState;
use crate::store::operator::DeadLetterQuery;

/// Letters per page.
const PAGE: u32 = 50;

/// The list's filters.
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    /// A dead-letter channel (`<source>-dlq`); empty: every channel.
    #[serde(default)]
    channel: String,
    /// Only letters whose reason contains this.
    #[serde(default)]
    reason: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    notice: String,
}

/// `GET /ui/dead-letters`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Result<Response, UiError> {
    let session = page::signed_in(&state, &headers)?;
    let store = state.orchestrator.store();
    let before = match f.cursor.trim() {
        "" => None,
        c => Some(
            c.parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid cursor {c:?}")))?,
        ),
    };
    let query = DeadLetterQuery {
        channel: channel_filter("channel", Some(f.channel.clone()))?,
        reason_contains: non_empty(Some(f.reason.clone())),
        since: None,
        until: None,
        before,
        limit: PAGE + 1,
    };
    let mut letters = store.dead_letters(&query).await?;
    let next = (letters.len() > PAGE as usize).then(|| {
        letters.truncate(PAGE as usize);
        letters.last().map(|l| l.seq)
    });
    // Fresh, like the list beside them (the overview's are shared).
    let depths = store.dead_letter_depths().await?;
    let channels = state.operator.dead_letter_channels();
    let letters: Vec<DeadLetterView> = letters.into_iter().map(DeadLetterView::listed).collect();
    let query_string = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("channel", &f.channel), ("reason", &f.reason)])
        .finish();
    let body = html! {
        (page::notice(Some(f.notice.as_str())))
        h1 { "Dead letters" }
        nav.tabs #channels {
            a href="/ui/dead-letters" class=[f.channel.is_empty().then_some("current")] { "every channel" }
            @for channel in &channels {
                @let n = depths.iter().find(|(c, _)| c == channel).map(|(_, n)| *n).unwrap_or(0);
                a href=(page::channel_href(channel))
                    class=[(f.channel == *channel).then_some("current")] { (channel) " (" (n) ")" }
            }
        }
        form.filters method="get" action="/ui/dead-letters" {
            input type="hidden" name="channel" value=(f.channel);
            label { "reason contains " input name="reason" value=(f.reason); }
            button type="submit" { "Filter" }
        }
        (letter_table(&letters))
        @if let Some(Some(cursor)) = next {
            p { a #older href={ "/ui/dead-letters?" (query_string) "&cursor=" (cursor) } { "Older →" } }
        }
        (bulk_redrive_form(&session, &f))
    };
    Ok(page::ok("Dead letters", Some(&session), body))
}

fn letter_table(letters: &[DeadLetterView]) -> Markup {
    html! {
        @if letters.is_empty() {
            p #no-letters { "No dead letter waits here." }
        } @else {
            table #letters {
                thead { tr { th { "failed at" } th { "channel" } th { "source" } th { "reason" } th { "" } } }
                tbody {
                    @for l in letters {
                        tr data-letter=(l.id) {
                            td { (page::time(l.failed_at)) }
                            td { (l.channel) }
                            td { (l.source_channel) }
                            td.error-text { (l.dlq_reason) }
                            td { a href={ "/ui/dead-letters/" (l.id) } { "inspect" } }
                        }
                    }
                }
            }
        }
    }
}

fn bulk_redrive_form(session: &Session, f: &Filters) -> Markup {
    html! {
        section.panel.admin #bulk-redrive {
            h2 { "Redrive every letter listed here" }
            p.hint { "Those of " (if f.channel.is_empty() { "every channel" } else { &f.channel })
                @if !f.reason.is_empty() { " whose reason contains “" (f.reason) "”" }
                ". Each goes back to its source once; you see how many first." }
            form method="post" action="/ui/dead-letters/redrive" {
                (page::csrf_field(session))
                (page::hidden_inputs(&[("channel", &f.channel), ("reason_contains", &f.reason)]))
                (jobs::bulk_inputs(&BulkFields::default()))
                button #preview-redrive type="submit" name="step" value="preview" { "Preview" }
            }
        }
    }
}

/// The bulk redrive form as posted.
#[derive(Debug, Deserialize)]
pub struct BulkRedrive {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    reason_contains: String,
    #[serde(flatten)]
    bulk: BulkFields,
}

/// `POST /ui/dead-letters/redrive`: preview, then start, a bulk redrive.
pub async fn bulk_redrive(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<BulkRedrive>,
) -> Result<Response, UiError> {
    let session = page::form_session(&state, &headers, &form.csrf)?;
    let filter = LetterFilterBody {
        channel: non_empty(Some(form.channel.clone())),
        reason_contains: non_empty(Some(form.reason_contains.clone())),
        since: None,
        until: None,
    };
    let hidden = page::hidden_inputs(&[
        ("channel", &form.channel),
        ("reason_contains", &form.reason_contains),
    ]);
    let what = "dead letters would be redriven, each back to its source channel once";
    jobs::preview_or_start(
        &state,
        &session,
        letter_selection(filter)?,
        form.bulk,
        ("/ui/dead-letters/redrive", hidden, what),
    )
    .await
}

/// `GET /ui/dead-letters/{id}`: one letter, as received.
pub async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(f): Query<Filters>,
) -> Result<Response, UiError> {
    let session = page::signed_in(&state, &headers)?;
    letter_id(&id)?;
    let letter = state
        .orchestrator
        .store()
        .dead_letter(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {}", id.escape_default())))?;
    let view = DeadLetterView::of(letter);
    let fields = serde_json::to_string_pretty(&view.message).unwrap_or_default();
    let body = html! {
        (page::notice(Some(f.notice.as_str())))
        h1 { "Dead letter" }
        dl.facts #letter-facts {
            dt { "channel" } dd { (view.channel) }
            dt { "source" } dd { (view.source_channel) }
            dt { "reason" } dd.error-text #letter-reason { (view.dlq_reason) }
            dt { "failed at" } dd { (page::time(view.failed_at)) }
            dt { "state" } dd #letter-state { (view.state) }
            @if let Some(by) = &view.acted_by {
                dt { "by" } dd { (by) }
                dt { "why" } dd { (view.action_reason.as_deref().unwrap_or("")) }
            }
        }
        h2 { "As received" }
        pre #letter-message { (fields) }
        @if view.state == "pending" { (letter_actions(&session, &view.id)) }
    };
    Ok(page::ok("Dead letter", Some(&session), body))
}

fn letter_actions(session: &Session, id: &str) -> Markup {
    html! {
        section.panel.admin #letter-actions {
            form method="post" action={ "/ui/dead-letters/" (id) "/redrive" } {
                (page::csrf_field(session))
                label { "reason " input name="reason" required maxlength="1000"
                    placeholder="the cause is fixed"; }
                button #redrive type="submit" { "Redrive to its source" }
            }
            form method="post" action={ "/ui/dead-letters/" (id) "/discard" } {
                (page::csrf_field(session))
                label { "reason " input name="reason" required maxlength="1000"
                    placeholder="a test message"; }
                button #discard type="submit" { "Discard" }
            }
        }
    }
}

/// `POST /ui/dead-letters/{id}/redrive`.
pub async fn redrive(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<page::ReasonForm>,
) -> Result<Response, UiError> {
    let session = page::form_session(&state, &headers, &form.csrf)?;
    letter_id(&id)?;
    let reason = required_reason(Some(form.reason))?;
    state
        .operator
        .redrive(&id, &session.admin, &reason, None)
        .await
        .map_err(action_error)?;
    Ok(page::see_other(&format!(
        "/ui/dead-letters/{id}?notice=redriven"
    )))
}

/// `POST /ui/dead-letters/{id}/discard`.
pub async fn discard(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<page::ReasonForm>,
) -> Result<Response, UiError> {
    let session = page::form_session(&state, &headers, &form.csrf)?;
    letter_id(&id)?;
    let reason = required_reason(Some(form.reason))?;
    state
        .operator
        .discard(&id, &session.admin, &reason)
        .await
        .map_err(action_error)?;
    Ok(page::see_other(&format!(
        "/ui/dead-letters/{id}?notice=discarded"
    )))
}
