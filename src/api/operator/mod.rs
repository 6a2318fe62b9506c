//! The operator routes (docs/contract.md §5, "Operator routes"): dead
//! letters, bulk jobs and the audit record. Every one needs an admin token,
//! the reads too: dead letters hold whatever a broken producer sent.

pub mod audit;
pub mod dead_letters;
pub mod jobs;

use axum::extract::rejection::JsonRejection;
use axum::Json;
use chrono::{DateTime, Utc};

use super::error::ApiError;
use super::sagas::non_empty;

/// The longest reason kept (as for saga actions).
const MAX_REASON_CHARS: usize = 1000;
/// The longest job name.
const MAX_NAME_CHARS: usize = 100;

/// A required operator reason: what the audit record says as why.
pub(crate) fn required_reason(reason: Option<String>) -> Result<String, ApiError> {
    let reason = non_empty(reason)
        .ok_or_else(|| ApiError::Unprocessable("missing field reason: say why".into()))?;
    bounded_text("reason", reason, MAX_REASON_CHARS)
}

/// A job's name: required, after the incident.
fn job_name(name: Option<String>) -> Result<String, ApiError> {
    let name = non_empty(name).ok_or_else(|| {
        ApiError::Unprocessable("missing field name: name the job (after the incident)".into())
    })?;
    bounded_text("name", name, MAX_NAME_CHARS)
}

fn bounded_text(field: &str, text: String, max: usize) -> Result<String, ApiError> {
    if text.chars().count() > max {
        return Err(ApiError::Unprocessable(format!(
            "invalid field {field}: longer than {max} characters"
        )));
    }
    if text.contains('\0') {
        return Err(ApiError::Unprocessable(format!(
            "invalid field {field}: contains a NUL character"
        )));
    }
    Ok(text)
}

/// An optional RFC 3339 time from a filter.
fn time(field: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    super::sagas::optional_time(field, value, ApiError::Unprocessable)
}

/// A numeric paging cursor from a query.
/// A channel filter: no control character (a NUL would only fail in the
/// store, as a 503; no channel is named with one), else 400.
pub(crate) fn channel_filter(
    field: &str,
    value: Option<String>,
) -> Result<Option<String>, ApiError> {
    let channel = non_empty(value);
    if channel
        .as_deref()
        .is_some_and(|c| c.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest(format!(
            "{field} holds a control character; no channel is named with one"
        )));
    }
    Ok(channel)
}

/// A dead letter's id from a path: one [`crate::operator::id::encode`]
/// could have made, else 404 (it names no letter) before the store sees it.
pub(crate) fn letter_id(id: &str) -> Result<(), ApiError> {
    crate::operator::id::decode(id)
        .map(|_| ())
        .map_err(|e| ApiError::NotFound(format!("no dead letter {}: {e}", id.escape_default())))
}

fn cursor(value: Option<String>) -> Result<Option<i64>, ApiError> {
    non_empty(value)
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid cursor {c:?}")))
        })
        .transpose()
}

/// A JSON body that must be there.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    Ok(body?.0)
}
