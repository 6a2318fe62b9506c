//! `GET /audit`: every operator action on dead letters and jobs, newest
//! first (actions on one saga are in its history).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::cursor;
use crate::api::auth::authorize;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::paging::{limit, page};
use crate::api::AppState;

/// One operator action.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// The admin token's name.
    pub actor: String,
    /// `dead_letter.redrive`, `dead_letter.discard`, `job.start` or `job.abort`.
    pub action: String,
    /// A dead-letter id or a job id.
    pub target: String,
    pub reason: String,
    /// More about it (a job's body and count, the job a redrive was part of).
    #[schema(value_type = Option<Object>, required = true)]
    pub detail: Option<Value>,
}

/// `GET /audit` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Page size, 1 to 500.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500, default = 50)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// `GET /audit` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditView>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /audit`: the audit record.
#[utoipa::path(
    get,
    path = "/audit",
    tag = "admin",
    summary = "Read the audit record",
    description = "Who did what to dead letters and jobs, and why, newest first (admin).",
    params(AuditParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "One page of the record.", body = AuditPage),
        (status = 400, description = "A `limit` outside 1–500 or a malformed `cursor`.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 403, description = "Admin routes are disabled: no admin token is configured.", body = ErrorBody),
        (status = 503, description = "The store is unavailable; try again.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    authorize(&state, &headers)?;
    let Query(p) = params?;
    let limit = limit(p.limit)?;
    let store = state.operator.orchestrator().store();
    let entries = store.audit_log(cursor(p.cursor)?, limit + 1).await?;
    let (entries, next_cursor) = page(entries, limit, |e| e.seq.to_string());
    let items = entries
        .into_iter()
        .map(|e| AuditView {
            seq: e.seq,
            at: e.at,
            actor: e.actor,
            action: e.action,
            target: e.target,
            reason: e.reason,
            detail: e.detail,
        })
        .collect();
    Ok(Json(AuditPage { items, next_cursor }))
}
