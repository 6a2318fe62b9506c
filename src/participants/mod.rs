//! The saga's participants: alliances (create the alliance) and
//! integrations (delete the partner, to compensate).
//!
//! A call's outcome is classified where it happens — succeeded, rejected
//! (a business "no": compensate now) or failed (transient: retry) — so the
//! state machine never has to look at status codes.

mod http;
pub mod text;

use std::time::Duration;

use async_trait::async_trait;

pub use http::HttpParticipants;

use crate::saga::{Input, Saga, Step};

/// The longest error kept from one call (the participant's own words in it
/// are cut shorter still).
const MAX_STORED_ERROR_CHARS: usize = 600;

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
    /// Transient (timeout, refused connection, 408, 429, 5xx), or an answer
    /// that did not come from the business logic (401, 403, 404…).
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

    /// This outcome fit to store in a saga and publish: every text with
    /// its control characters escaped (PostgreSQL refuses NUL), bounded,
    /// and without credentials.
    pub fn storable(self) -> Self {
        let clean = |t: String| text::storable(&crate::redact::in_text(&t), MAX_STORED_ERROR_CHARS);
        match self {
            Self::Succeeded {
                alliance_id,
                detail,
            } => Self::Succeeded {
                // Checked against the id rule where it was read; escaping
                // again only matters to a path that forgot to.
                alliance_id: alliance_id.map(|id| text::escape_controls(&id)),
                detail: detail.map(clean),
            },
            Self::Rejected { error } => Self::Rejected {
                error: clean(error),
            },
            Self::Failed { error, retry_after } => Self::Failed {
                error: clean(error),
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

/// Participants that must not be called: for tests where no step may
/// reach one.
#[cfg(test)]
pub(crate) struct Uncalled;

#[cfg(test)]
#[async_trait]
impl Participants for Uncalled {
    async fn call(&self, _: &Saga, step: Step) -> CallOutcome {
        panic!("no participant call expected, got {step:?}");
    }
}
