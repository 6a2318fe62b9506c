//! The saga domain: states, steps, the stored saga, retry policy and the
//! pure state machine. Nothing in here does I/O.

mod machine;
mod reply;
mod retry;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

pub use machine::{
    begin, decide, Decision, Input, InvalidTransition, NextAction, Reason, SagaEvent,
};
pub use reply::{Reply, ReplyStatus};
pub use retry::{RetryKind, RetryPolicy, MAX_RETRY_AFTER};

/// Where a saga is (docs/contract.md §1). Stored as text, checked by the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    /// Recorded, nothing asked yet.
    Started,
    /// Calling alliances to create the partner's alliance.
    CreatingAlliance,
    /// Broker mode: the command is out, the reply is pending.
    AwaitingAlliance,
    /// Undoing: asking integrations to delete the partner.
    Compensating,
    /// The alliance exists. Terminal.
    Completed,
    /// The partner was deleted. Terminal.
    Compensated,
    /// Compensation itself gave up: parked for a person. Terminal until retried.
    Failed,
}

impl SagaState {
    /// Every state, for metrics and validation.
    pub const ALL: [SagaState; 7] = [
        Self::Started,
        Self::CreatingAlliance,
        Self::AwaitingAlliance,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
        Self::Failed,
    ];

    /// The stored / wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::CreatingAlliance => "creating_alliance",
            Self::AwaitingAlliance => "awaiting_alliance",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
        }
    }

    /// Parses the stored / wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// No further transition happens on its own.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }

    /// Still trying to reach `completed`: the deadline applies.
    pub fn is_forward(self) -> bool {
        matches!(
            self,
            Self::Started | Self::CreatingAlliance | Self::AwaitingAlliance
        )
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The participant call a saga is on (or last made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Alliances: create the partner's alliance.
    CreateAlliance,
    /// Integrations: delete the partner (compensation).
    DeletePartner,
}

impl Step {
    /// The stored / wire spelling; also the idempotency-key suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateAlliance => "create_alliance",
            Self::DeletePartner => "delete_partner",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "create_alliance" => Some(Self::CreateAlliance),
            "delete_partner" => Some(Self::DeletePartner),
            _ => None,
        }
    }

    /// `Idempotency-Key` for this step of a saga: the same on every retry
    /// and recovery, so a participant does the work once.
    pub fn idempotency_key(self, saga_id: Uuid) -> String {
        let suffix = match self {
            Self::CreateAlliance => "create-alliance",
            Self::DeletePartner => "delete-partner",
        };
        format!("{saga_id}:{suffix}")
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A saga as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Saga {
    pub saga_id: Uuid,
    /// The `event_id` of the `PartnerCreated` that started it (dedup key).
    pub event_id: String,
    pub correlation_id: String,
    pub partner_id: String,
    pub state: SagaState,
    pub step: Step,
    /// Attempts made at the current step, the first included.
    pub attempts: u32,
    pub alliance_id: Option<String>,
    pub last_error: Option<String>,
    /// The `PartnerCreated` payload, passed on to the participants.
    pub payload: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The bound of the phase: a forward saga is compensated after it, a
    /// compensating one parked as `failed`.
    pub deadline_at: DateTime<Utc>,
    /// When the next participant call is due (`None` when terminal).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// W3C trace context of the event that started it.
    pub traceparent: Option<String>,
    /// Broker mode: the command for `step` (attempt `attempts`) is out and
    /// its reply is awaited until `next_attempt_at`.
    pub awaiting_reply: bool,
    /// Bumped by every transition: the optimistic-concurrency check that
    /// keeps two drivers from both moving one saga.
    pub version: i32,
}

/// One stored transition of a saga's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// 1-based position in the saga's history.
    pub seq: i32,
    /// `None` for the transition that created the saga.
    pub from_state: Option<SagaState>,
    pub to_state: SagaState,
    pub reason: String,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
    /// The instance (`INSTANCE_ID`) that made the transition; `None` for
    /// rows stored before instances were recorded.
    pub instance_id: Option<String>,
    /// The `event_type` of each saga event the transition emitted for
    /// `saga-events`, in order: written to the outbox with this row, and
    /// published from there (none recorded on rows stored before).
    pub events: Vec<String>,
}

/// `t + d`, saturating at the latest representable time instead of
/// panicking: durations come from settings and participants' `Retry-After`.
pub fn later(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A saga for tests in `state`, at `step` after `attempts`, everything
/// else plain: its times are [`test_now`], its deadline 300 s after.
#[cfg(test)]
pub(crate) fn test_saga(state: SagaState, step: Step, attempts: u32) -> Saga {
    Saga {
        saga_id: Uuid::new_v4(),
        event_id: "evt-1".into(),
        correlation_id: "corr-1".into(),
        partner_id: "p-1".into(),
        state,
        step,
        attempts,
        alliance_id: None,
        last_error: None,
        payload: Map::new(),
        created_at: test_now(),
        updated_at: test_now(),
        deadline_at: test_now() + chrono::Duration::seconds(300),
        next_attempt_at: None,
        traceparent: None,
        awaiting_reply: false,
        version: 1,
    }
}

/// The fixed moment [`test_saga`]s are made at.
#[cfg(test)]
pub(crate) fn test_now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_356_000, 0).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_saturates_instead_of_panicking() {
        let now = Utc::now();
        assert_eq!(
            later(now, std::time::Duration::from_secs(1)),
            now + chrono::Duration::seconds(1)
        );
        assert_eq!(
            later(now, std::time::Duration::MAX),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            later(now, std::time::Duration::from_secs(u64::MAX / 4)),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn states_round_trip_and_terminals_are_the_contracts() {
        for s in SagaState::ALL {
            assert_eq!(SagaState::parse(s.as_str()), Some(s));
        }
        let terminal: Vec<_> = SagaState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                SagaState::Completed,
                SagaState::Compensated,
                SagaState::Failed
            ]
        );
        assert_eq!(SagaState::parse("done"), None);
    }

    #[test]
    fn idempotency_keys_follow_the_contract() {
        let id = Uuid::nil();
        assert_eq!(
            Step::CreateAlliance.idempotency_key(id),
            "00000000-0000-0000-0000-000000000000:create-alliance"
        );
        assert_eq!(
            Step::DeletePartner.idempotency_key(id),
            "00000000-0000-0000-0000-000000000000:delete-partner"
        );
    }
}
