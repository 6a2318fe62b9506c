//! The saga's participants: alliances (create the alliance) and
//! integrations (delete the partner, to compensate).
//!
//! A call's outcome is classified where it happens — succeeded, rejected
//! (a business "no": compensate now) or failed (transient: retry) — so the
//! state machine never has to look at status codes.

mod http;

use std::time::Duration;

use async_trait::async_trait;

pub use http::HttpParticipants;

use crate::saga::{Input, Saga, Step};

/// What one participant call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// Done (or already done before). `detail` says what the saga's
    /// history should show beyond the id, e.g. an existing alliance whose
    /// id was not given.
    Succeeded {
        alliance_id: Option<String>,
        detail: Option<String>,
    },
    /// Refused for a business reason; retrying will not help.
    Rejected { error: String },
    /// Transient: timeout, refused connection, 408, 429, 5xx.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
}

impl CallOutcome {
    /// The machine input this outcome is for `step`.
    pub fn into_input(self, step: Step) -> Input {
        match self {
            Self::Succeeded {
                alliance_id,
                detail,
            } => Input::StepSucceeded {
                step,
                alliance_id,
                detail,
            },
            Self::Rejected { error } => Input::StepRejected { step, error },
            Self::Failed { error, retry_after } => Input::StepFailed {
                step,
                error,
                retry_after,
            },
        }
    }

    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Succeeded { .. } => "succeeded",
            Self::Rejected { .. } => "rejected",
            Self::Failed { .. } => "failed",
        }
    }
}

/// Carries out saga steps against the participants.
#[async_trait]
pub trait Participants: Send + Sync + 'static {
    /// Performs `step` for `saga` once; never panics, never returns early
    /// without an outcome (a timeout is a `Failed`).
    async fn call(&self, saga: &Saga, step: Step) -> CallOutcome;
}
