//! One error type for every route: JSON `{"error", "detail"}` with the
//! right status. 4xx say what to fix; 5xx are logged and say little.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::orchestrator::OperateError;
use crate::store::StoreError;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `unprocessable_entity`,
    /// `invalid_request` (a body refused before parsing: too large, not
    /// JSON…), `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `conflict` or `unavailable`.
    pub error: &'static str,
    /// What went wrong, for a person.
    pub detail: String,
}

/// Everything a route can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    /// An extractor's rejection, keeping its status (413 too large, 415 not JSON…).
    #[error("{detail}")]
    Rejected { status: StatusCode, detail: String },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("admin routes are disabled: set ADMIN_TOKEN to enable them")]
    AdminDisabled,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub(super) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_entity"),
            Self::Rejected { status, .. } => (*status, "invalid_request"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::AdminDisabled => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Unavailable(_) | Self::Store(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let detail = match &self {
            // The cause goes to the log, not to the caller.
            Self::Store(e) => {
                tracing::error!(error = %e, "store error while serving a request");
                "the saga store is unavailable; try again".to_string()
            }
            other => other.to_string(),
        };
        (
            status,
            Json(ErrorBody {
                error: code,
                detail,
            }),
        )
            .into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::Rejected {
            status: rejection.status(),
            detail: rejection.body_text(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl From<OperateError> for ApiError {
    fn from(e: OperateError) -> Self {
        match e {
            OperateError::NotFound(_) => Self::NotFound(e.to_string()),
            OperateError::NotAllowed(_) | OperateError::Busy(_) => Self::Conflict(e.to_string()),
            OperateError::Store(e) => Self::Store(e),
        }
    }
}

/// Store errors from a request's own data are the caller's to fix (422);
/// everything else is an outage (503).
pub fn store_error(e: StoreError) -> ApiError {
    if e.is_data_error() {
        ApiError::Unprocessable(format!("the store refused this input: {e}"))
    } else {
        ApiError::Store(e)
    }
}
