//! `/dead-letters`: list and read dead letters, redrive or discard one.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{body, channel_filter, cursor, letter_id, required_reason};
use crate::api::auth::authorize;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::paging::{limit, page};
use crate::api::sagas::non_empty;
use crate::api::AppState;
use crate::operator::{letter, ActionError};
use crate::store::operator::{DeadLetterQuery, StoredDeadLetter};

/// A dead letter as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeadLetter)]
pub struct DeadLetterView {
    /// Its id: the dead-letter channel and the broker's message id, URL-safe.
    #[schema(example = "partner-events-dlq.1764600000000-0")]
    pub id: String,
    /// The dead-letter channel (`<source>-dlq`).
    pub channel: String,
    /// Where it was consumed from, and where a redrive sends it back.
    pub source_channel: String,
    /// Why it was set aside.
    pub dlq_reason: String,
    pub failed_at: DateTime<Utc>,
    /// The original fields as received (Redis: each field as text; Pulsar:
    /// the body's JSON object, or `raw` when it was not one).
    #[schema(value_type = Object)]
    pub message: Value,
    /// In a listing, text values of `message` over 4 KiB are cut to that
    /// and this is `true`; `GET /dead-letters/{id}` always gives them whole.
    pub truncated: bool,
    /// `pending` (listed), `redriving`, `redriven` or `discarded`.
    #[schema(example = "pending")]
    pub state: String,
    /// The admin token's name that redrove or discarded it.
    #[schema(required = true)]
    pub acted_by: Option<String>,
    /// Why it was redriven or discarded.
    #[schema(required = true)]
    pub action_reason: Option<String>,
    #[schema(required = true)]
    pub acted_at: Option<DateTime<Utc>>,
}

/// The most of one `message` value a listing shows: a page of 500 letters
/// stays a few MiB however big the payloads were.
const LISTED_VALUE_BYTES: usize = 4096;

/// `text` cut to at most `LISTED_VALUE_BYTES`, on a character boundary.
fn cut(text: &mut String) -> bool {
    if text.len() <= LISTED_VALUE_BYTES {
        return false;
    }
    let end = (0..=LISTED_VALUE_BYTES)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text.truncate(end);
    true
}

/// Cuts every text value of `message` (nested ones too); whether any was.
fn truncate(message: &mut Value) -> bool {
    match message {
        Value::String(text) => cut(text),
        Value::Array(items) => items.iter_mut().fold(false, |t, v| truncate(v) | t),
        Value::Object(map) => map.values_mut().fold(false, |t, v| truncate(v) | t),
        _ => false,
    }
}

impl DeadLetterView {
    /// As a listing shows it: big values cut.
    pub(crate) fn listed(l: StoredDeadLetter) -> Self {
        let mut view = Self::of(l);
        view.truncated = truncate(&mut view.message);
        view
    }

    pub(crate) fn of(l: StoredDeadLetter) -> Self {
        let message = letter::message_view(&l.record.raw)
            .unwrap_or_else(|e| serde_json::json!({ "unreadable": e.to_string() }));
        Self {
            truncated: false,
            id: l.record.id,
            channel: l.record.channel,
            source_channel: l.record.source_channel,
            dlq_reason: l.record.dlq_reason,
            failed_at: l.record.failed_at,
            message,
            state: l.state.as_str().to_string(),
            acted_by: l.acted_by,
            action_reason: l.action_reason,
            acted_at: l.acted_at,
        }
    }
}

/// `GET /dead-letters` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this dead-letter channel's (e.g. `partner-events-dlq`).
    channel: Option<String>,
    /// Only those whose `dlq_reason` contains this text.
    reason: Option<String>,
    /// Page size, 1 to 500.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500, default = 50)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// `GET /dead-letters` answer: one page, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetterView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /dead-letters`: pending dead letters of every channel.
#[utoipa::path(
    get,
    path = "/dead-letters",
    tag = "admin",
    summary = "List dead letters",
    description = "Dead letters not yet redriven or discarded, newest first, from every `<channel>-dlq` the service consumes (admin: they hold whatever a producer sent). Page with `cursor`. Text values of `message` over 4 KiB are cut to that, with `truncated: true`; `GET /dead-letters/{id}` gives them whole.",
    params(ListParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "One page of dead letters.", body = DeadLetterPage),
        (status = 400, description = "A `limit` outside 1–500, a malformed `cursor`, or a `channel` with a control character.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no admin token is configured.", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    authorize(&state, &headers)?;
    let Query(p) = params?;
    let limit = limit(p.limit)?;
    let query = DeadLetterQuery {
        channel: channel_filter("channel", p.channel)?,
        reason_contains: non_empty(p.reason),
        since: None,
        until: None,
        before: cursor(p.cursor)?,
        limit: limit + 1,
    };
    let store = state.operator.orchestrator().store();
    let letters = store.dead_letters(&query).await?;
    let (letters, next_cursor) = page(letters, limit, |l| l.seq.to_string());
    let items = letters.into_iter().map(DeadLetterView::listed).collect();
    Ok(Json(DeadLetterPage { items, next_cursor }))
}

/// `GET /dead-letters/{id}`: one dead letter, in whatever state.
#[utoipa::path(
    get,
    path = "/dead-letters/{id}",
    tag = "admin",
    summary = "Read a dead letter",
    description = "One dead letter with the original fields as received, and what was done with it (admin).",
    params(("id" = String, Path, description = "The dead letter's id.")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The dead letter.", body = DeadLetterView),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no admin token is configured.", body = ErrorBody),
        (status = 404, description = "No such dead letter (or the id is not one: malformed, or with a control character).", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterView>, ApiError> {
    authorize(&state, &headers)?;
    letter_id(&id)?;
    let letter = state
        .operator
        .orchestrator()
        .store()
        .dead_letter(&id)
        .await?;
    letter
        .map(|l| Json(DeadLetterView::of(l)))
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {}", id.escape_default())))
}

/// Body of a redrive or a discard.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LetterActionBody {
    /// Why: kept in the audit record. Required; at most 1000 characters.
    #[schema(example = "MAX_MESSAGE_BYTES raised to 4 MiB", max_length = 1000)]
    pub reason: Option<String>,
}

/// `POST /dead-letters/{id}/redrive` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redriven {
    pub redriven: bool,
    pub id: String,
    /// Where the original went back to.
    pub source_channel: String,
}

/// `POST /dead-letters/{id}/redrive`: the original back on its source channel, once.
#[utoipa::path(
    post,
    path = "/dead-letters/{id}/redrive",
    tag = "admin",
    summary = "Redrive a dead letter",
    description = "Puts the original message (its `event_id` unchanged, so a saga it starts is still started once) back on its source channel and takes the entry out of the listing, recording who and why in the audit record (admin). A second call answers 409: never a second copy.",
    params(("id" = String, Path, description = "The dead letter's id.")),
    request_body(content = LetterActionBody, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Sent back to its source channel.", body = Redriven),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no admin token is configured.", body = ErrorBody),
        (status = 404, description = "No such dead letter (or the id is not one: malformed, or with a control character).", body = ErrorBody),
        (status = 409, description = "Already redriven or discarded.", body = ErrorBody),
        (status = 422, description = "No `reason`, or one over 1000 characters; or the letter cannot be sent back: the broker refused the message itself (e.g. over its size limit), unreadable, or its `source_channel` is not its dead-letter channel's source (`<channel>` of `<channel>-dlq`) or not a channel the service consumes (it stays listed).", body = ErrorBody),
        (status = 503, description = "The store or the broker is unavailable; the letter stays listed; try again.", body = ErrorBody),
    )
)]
pub async fn redrive(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    request: Result<Json<LetterActionBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Redriven>), ApiError> {
    let admin = authorize(&state, &headers)?;
    letter_id(&id)?;
    let reason = required_reason(body(request)?.reason)?;
    let letter = state
        .operator
        .redrive(&id, &admin, &reason, None)
        .await
        .map_err(action_error)?;
    let answer = Redriven {
        redriven: true,
        id,
        source_channel: letter.record.source_channel,
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// `POST /dead-letters/{id}/discard` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Discarded {
    pub discarded: bool,
    pub id: String,
}

/// `POST /dead-letters/{id}/discard`: dropped from the listing, with a reason.
#[utoipa::path(
    post,
    path = "/dead-letters/{id}/discard",
    tag = "admin",
    summary = "Discard a dead letter",
    description = "Takes the entry out of the listing without sending it anywhere, recording who and why in the audit record (admin).",
    params(("id" = String, Path, description = "The dead letter's id.")),
    request_body(content = LetterActionBody, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Discarded.", body = Discarded),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no admin token is configured.", body = ErrorBody),
        (status = 404, description = "No such dead letter (or the id is not one: malformed, or with a control character).", body = ErrorBody),
        (status = 409, description = "Already redriven or discarded.", body = ErrorBody),
        (status = 422, description = "No `reason`, or one over 1000 characters.", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
pub async fn discard(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    request: Result<Json<LetterActionBody>, JsonRejection>,
) -> Result<Json<Discarded>, ApiError> {
    let admin = authorize(&state, &headers)?;
    letter_id(&id)?;
    let reason = required_reason(body(request)?.reason)?;
    state
        .operator
        .discard(&id, &admin, &reason)
        .await
        .map_err(action_error)?;
    Ok(Json(Discarded {
        discarded: true,
        id,
    }))
}

pub(crate) fn action_error(e: ActionError) -> ApiError {
    match e {
        ActionError::NotFound(_) => ApiError::NotFound(e.to_string()),
        ActionError::Handled { .. } => ApiError::Conflict(e.to_string()),
        ActionError::Unreadable(_) | ActionError::ForeignSource(_) => {
            ApiError::Unprocessable(e.to_string())
        }
        ActionError::Store(e) => ApiError::Store(e),
        ActionError::Interrupted => ApiError::Unavailable(e.to_string()),
        // Sending it again would be refused again: the caller's to fix
        // (e.g. the broker's size limit), and the letter stays listed.
        ActionError::Transport(e) if e.blames_the_message() => {
            ApiError::Unprocessable(format!("the broker refused the message: {e}"))
        }
        ActionError::Transport(e) => {
            tracing::warn!(error = %e, "a redrive's publish failed; the letter stays listed");
            ApiError::Unavailable("the broker did not take the message; try again".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;
    use crate::transport::TransportError;

    /// A broker that refuses the message itself (over its size limit) is
    /// not unavailable: trying again would be refused again.
    #[test]
    fn a_refusal_of_the_message_is_422_and_an_outage_503() {
        let refused = ActionError::Transport(TransportError::Refused {
            code: "NotAllowedError".into(),
            message: "Exceed maximum message size".into(),
        });
        let status = action_error(refused).into_response().status();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let down = ActionError::Transport(TransportError::Timeout("send"));
        let status = action_error(down).into_response().status();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
