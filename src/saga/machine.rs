//! The saga state machine (docs/contract.md §1) as a pure function:
//! `decide(saga, input, policy, now) -> Decision | InvalidTransition`.
//!
//! The orchestrator loads a saga, asks `decide`, stores the decision (state,
//! history row, saga events) in one transaction, then carries out
//! `Decision::next`. Keeping this free of I/O is what lets every transition
//! and every failure path be tested exhaustively below.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::{Reply, ReplyStatus, RetryPolicy, Saga, SagaState, Step};
use crate::envelope::{EventType, MessageStatus};

/// Something that happened to a saga.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The saga was just recorded: start the first step.
    Begin,
    /// The participant did the step (`alliance_id` on create; `detail`
    /// for the history when there is more to say, e.g. an alliance that
    /// already existed).
    StepSucceeded {
        step: Step,
        alliance_id: Option<String>,
        detail: Option<String>,
    },
    /// The participant refused for a business reason: no retry will help.
    StepRejected { step: Step, error: String },
    /// A transient failure (timeout, 5xx, 429, refused connection).
    StepFailed {
        step: Step,
        error: String,
        retry_after: Option<Duration>,
    },
    /// `deadline_at` passed while still moving forward.
    DeadlinePassed,
    /// An operator forces compensation of a live saga.
    ForceCompensate { reason: String },
    /// An operator re-drives a `failed` saga's compensation.
    RetryFailed { reason: String },
    /// Broker mode: the step's command is committed to the outbox; its
    /// reply is due by `reply_by`.
    CommandSent { step: Step, reply_by: DateTime<Utc> },
    /// Broker mode: a participant replied on `saga-replies`. A heartbeat
    /// (`started`, `progress`) moves the reply deadline to `reply_by`.
    Replied {
        reply: Reply,
        reply_by: DateTime<Utc>,
    },
    /// Broker mode: no final reply came before the reply deadline.
    ReplyTimedOut { step: Step },
    /// Broker mode: the reply deadline passed while the broker does not
    /// answer, so neither the command nor a reply can have moved: wait
    /// until `until` without spending an attempt.
    BrokerUnreachable { step: Step, until: DateTime<Utc> },
}

/// Why a transition happened; stored in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    PartnerCreated,
    AllianceRequested,
    AllianceCreated,
    AllianceRejected,
    AttemptFailed,
    RetriesExhausted,
    DeadlinePassed,
    PartnerDeleted,
    CompensationExhausted,
    CompensationDeadlinePassed,
    ForcedByOperator,
    RetriedByOperator,
    CommandSent,
    ParticipantStarted,
    ParticipantProgress,
    AllianceCreatedLate,
    BrokerUnreachable,
}

impl Reason {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PartnerCreated => "partner_created",
            Self::AllianceRequested => "alliance_requested",
            Self::AllianceCreated => "alliance_created",
            Self::AllianceRejected => "alliance_rejected",
            Self::AttemptFailed => "attempt_failed",
            Self::RetriesExhausted => "retries_exhausted",
            Self::DeadlinePassed => "deadline_passed",
            Self::PartnerDeleted => "partner_deleted",
            Self::CompensationExhausted => "compensation_exhausted",
            Self::CompensationDeadlinePassed => "compensation_deadline_passed",
            Self::ForcedByOperator => "forced_by_operator",
            Self::RetriedByOperator => "retried_by_operator",
            Self::CommandSent => "command_sent",
            Self::ParticipantStarted => "participant_started",
            Self::ParticipantProgress => "participant_progress",
            Self::AllianceCreatedLate => "alliance_created_late",
            Self::BrokerUnreachable => "broker_unreachable",
        }
    }
}

/// A saga event to publish on `saga-events`; the orchestrator wraps it in an
/// envelope with the saga's ids.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaEvent {
    pub event_type: EventType,
    pub status: MessageStatus,
    pub payload: Map<String, Value>,
}

/// What to do once the decision is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAction {
    /// Call the participant for `step` at `at` (now, or after a backoff);
    /// in broker mode, send its command then.
    Call { step: Step, at: DateTime<Utc> },
    /// Broker mode: wait for the participant's reply; with none by
    /// `until`, the attempt has failed.
    AwaitReply { step: Step, until: DateTime<Utc> },
    /// Terminal: nothing more to do.
    Done,
}

/// The outcome of one input: the saga's new fields and what follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub from: SagaState,
    pub to: SagaState,
    pub step: Step,
    pub attempts: u32,
    pub alliance_id: Option<String>,
    pub last_error: Option<String>,
    /// The bound of the phase the saga is in after this decision: moving
    /// forward (then it compensates) or compensating (then it is parked).
    pub deadline_at: DateTime<Utc>,
    pub reason: Reason,
    pub detail: Option<String>,
    pub events: Vec<SagaEvent>,
    /// Broker mode: the command for this step goes out with the decision.
    pub command: Option<Step>,
    pub next: NextAction,
}

impl Decision {
    /// The `event_type` of each saga event, in order: what the history row
    /// records of them.
    pub fn event_types(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| e.event_type.as_str().to_string())
            .collect()
    }

    /// The saga as it is once this decision is stored.
    pub fn apply(&self, saga: &Saga, now: DateTime<Utc>) -> Saga {
        Saga {
            state: self.to,
            step: self.step,
            attempts: self.attempts,
            alliance_id: self.alliance_id.clone(),
            last_error: self.last_error.clone(),
            deadline_at: self.deadline_at,
            updated_at: now,
            next_attempt_at: match self.next {
                NextAction::Call { at, .. } | NextAction::AwaitReply { until: at, .. } => Some(at),
                NextAction::Done => None,
            },
            awaiting_reply: matches!(self.next, NextAction::AwaitReply { .. }),
            version: saga.version + 1,
            ..saga.clone()
        }
    }
}

/// The input does not apply to the saga as it is now: a stale or duplicate
/// result, or an operator action the state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input} does not apply to a saga in state {state} (step {step})")]
pub struct InvalidTransition {
    pub state: SagaState,
    pub step: Step,
    pub input: &'static str,
}

/// Starts a saga in state `started`: the first alliance call, now.
/// Infallible, so recording a new saga never has a failure path here.
pub fn begin(saga: &Saga, now: DateTime<Utc>) -> Decision {
    Decision {
        to: SagaState::CreatingAlliance,
        step: Step::CreateAlliance,
        attempts: 1,
        reason: Reason::AllianceRequested,
        detail: None,
        events: vec![event(
            EventType::SagaStarted,
            MessageStatus::Started,
            saga,
            json!({}),
        )],
        next: NextAction::Call {
            step: Step::CreateAlliance,
            at: now,
        },
        ..keep(saga)
    }
}

/// The state machine: what `input` does to `saga` at time `now`.
///
/// Sorted by what the input is about, each part deciding on its own: a
/// participant's reply, the broker round trip of an attempt, an operator's
/// action, or a step's outcome (or deadline) in the phase the saga is in.
/// Listing every input, without a catch-all, makes a new one choose.
pub fn decide(
    saga: &Saga,
    input: &Input,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
) -> Result<Decision, InvalidTransition> {
    let decision = match input {
        Input::Replied { reply, reply_by } => return replied(saga, reply, *reply_by, policy, now),
        Input::Begin => (saga.state == SagaState::Started).then(|| begin(saga, now)),
        Input::CommandSent { .. }
        | Input::BrokerUnreachable { .. }
        | Input::ReplyTimedOut { .. } => round_trip(saga, input, policy, now),
        Input::ForceCompensate { .. } | Input::RetryFailed { .. } => {
            by_operator(saga, input, policy, now)
        }
        Input::StepSucceeded { .. }
        | Input::StepRejected { .. }
        | Input::StepFailed { .. }
        | Input::DeadlinePassed => {
            if saga.state.is_forward() {
                forward(saga, input, policy, now)
            } else {
                compensation(saga, input, policy, now)
            }
        }
    };
    decision.ok_or_else(|| InvalidTransition {
        state: saga.state,
        step: saga.step,
        input: input_name(input),
    })
}

/// Broker mode: an attempt's command going out, and its reply not coming.
/// The command of an attempt goes out once; its outcome comes back once.
/// `None`: the input does not apply.
fn round_trip(
    saga: &Saga,
    input: &Input,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
) -> Option<Decision> {
    use SagaState::*;
    let on_step = |step: &Step| *step == saga.step;
    let awaiting = |step: &Step| on_step(step) && saga.awaiting_reply;
    // No reply by the deadline is a failed attempt like a transient error.
    let no_reply = "no reply before the step deadline";
    match (saga.state, input) {
        (CreatingAlliance | Compensating, Input::CommandSent { step, reply_by })
            if on_step(step) && !saga.awaiting_reply =>
        {
            Some(command_sent(saga, *step, *reply_by))
        }
        (AwaitingAlliance | Compensating, Input::BrokerUnreachable { step, until })
            if awaiting(step) =>
        {
            Some(Decision {
                reason: Reason::BrokerUnreachable,
                detail: Some(format!(
                    "no reply to attempt {} and the broker does not answer; waiting without spending an attempt",
                    saga.attempts
                )),
                next: await_reply(saga, *step, *until),
                ..keep(saga)
            })
        }
        (AwaitingAlliance | Compensating, Input::ReplyTimedOut { step }) if awaiting(step) => {
            Some(attempt_failed(saga, no_reply, None, policy, now))
        }
        _ => None,
    }
}

/// The step's command is committed to the outbox: await its reply.
fn command_sent(saga: &Saga, step: Step, reply_by: DateTime<Utc>) -> Decision {
    let to = match saga.state {
        SagaState::CreatingAlliance => SagaState::AwaitingAlliance,
        state => state,
    };
    Decision {
        to,
        reason: Reason::CommandSent,
        detail: Some(format!("attempt {}", saga.attempts)),
        command: Some(step),
        next: await_reply(saga, step, reply_by),
        ..keep(saga)
    }
}

/// An operator forces compensation of a live saga, or re-drives a parked
/// one's. `None`: the state does not allow it.
fn by_operator(
    saga: &Saga,
    input: &Input,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
) -> Option<Decision> {
    match input {
        Input::ForceCompensate { reason } if saga.state.is_forward() => Some(compensate(
            policy,
            saga,
            now,
            Reason::ForcedByOperator,
            reason,
            vec![],
        )),
        Input::RetryFailed { reason } if saga.state == SagaState::Failed => {
            let mut decision =
                compensate(policy, saga, now, Reason::RetriedByOperator, reason, vec![]);
            // Keep the original cause visible: the operator's reason goes to
            // the history, not over the error that parked the saga.
            decision.last_error = saga.last_error.clone();
            Some(decision)
        }
        _ => None,
    }
}

/// Moving forward: the alliance call's outcome, or the deadline passing.
/// A saga still `started` has made no call, so no outcome answers it.
/// `None`: the input does not apply (a stale or duplicate outcome).
fn forward(
    saga: &Saga,
    input: &Input,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
) -> Option<Decision> {
    let on_step = |step: &Step| *step == saga.step && saga.state != SagaState::Started;
    match input {
        Input::StepSucceeded {
            step,
            alliance_id,
            detail,
        } if on_step(step) => Some(alliance_created(saga, *step, alliance_id, detail)),
        Input::StepRejected { step, error } if on_step(step) => {
            let failed = step_failed(saga, error, None);
            Some(compensate(
                policy,
                saga,
                now,
                Reason::AllianceRejected,
                error,
                vec![failed],
            ))
        }
        Input::StepFailed {
            step,
            error,
            retry_after,
        } if on_step(step) => Some(attempt_failed(saga, error, *retry_after, policy, now)),
        Input::DeadlinePassed => {
            let detail = format!(
                "deadline {} passed",
                crate::envelope::format_time(saga.deadline_at)
            );
            Some(compensate(
                policy,
                saga,
                now,
                Reason::DeadlinePassed,
                &detail,
                vec![],
            ))
        }
        _ => None,
    }
}

/// The alliance exists: `completed`.
fn alliance_created(
    saga: &Saga,
    step: Step,
    alliance_id: &Option<String>,
    detail: &Option<String>,
) -> Decision {
    let details = json!({ "step": step.as_str(), "alliance_id": alliance_id });
    Decision {
        to: SagaState::Completed,
        alliance_id: alliance_id.clone(),
        last_error: None,
        reason: Reason::AllianceCreated,
        detail: detail
            .clone()
            .or_else(|| alliance_id.as_ref().map(|id| format!("alliance_id={id}"))),
        events: vec![
            event(
                EventType::SagaStepSucceeded,
                MessageStatus::Progress,
                saga,
                details.clone(),
            ),
            event(
                EventType::SagaCompleted,
                MessageStatus::Completed,
                saga,
                details,
            ),
        ],
        next: NextAction::Done,
        ..keep(saga)
    }
}

/// Compensating: the partner deletion's outcome, or its deadline passing;
/// and, compensating or done, a step that finished after the saga stopped
/// waiting for it. `None`: the input does not apply.
fn compensation(
    saga: &Saga,
    input: &Input,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
) -> Option<Decision> {
    use SagaState::*;
    let compensating_on = |step: &Step| saga.state == Compensating && *step == saga.step;
    match input {
        Input::StepSucceeded { step, .. } if compensating_on(step) => {
            Some(partner_deleted(saga, *step))
        }
        // A step done after the saga stopped waiting for it (an operator
        // forced compensation, or another instance took over, while the
        // call was in flight): recorded, never dropped.
        Input::StepSucceeded {
            step, alliance_id, ..
        } if matches!(saga.state, Compensating | Compensated | Failed) => {
            late_success(saga, *step, alliance_id)
        }
        // Deleting a partner has no business rejection (docs/contract.md §4): any
        // refusal is retried like a transient failure, then parked.
        Input::StepFailed {
            step,
            error,
            retry_after,
        } if compensating_on(step) => Some(attempt_failed(saga, error, *retry_after, policy, now)),
        Input::StepRejected { step, error } if compensating_on(step) => {
            Some(attempt_failed(saga, error, None, policy, now))
        }
        Input::DeadlinePassed if saga.state == Compensating => {
            let error = format!(
                "compensation deadline {} passed",
                crate::envelope::format_time(saga.deadline_at)
            );
            let detail = error.clone();
            Some(park(
                saga,
                Reason::CompensationDeadlinePassed,
                &error,
                detail,
            ))
        }
        _ => None,
    }
}

/// The partner is gone: `compensated`.
fn partner_deleted(saga: &Saga, step: Step) -> Decision {
    Decision {
        to: SagaState::Compensated,
        reason: Reason::PartnerDeleted,
        detail: None,
        events: vec![
            event(
                EventType::SagaStepSucceeded,
                MessageStatus::Progress,
                saga,
                json!({ "step": step.as_str() }),
            ),
            event(
                EventType::SagaCompensated,
                MessageStatus::Completed,
                saga,
                json!({ "reason": saga.last_error }),
            ),
        ],
        next: NextAction::Done,
        ..keep(saga)
    }
}

/// A failed attempt at the step. It is tried again while the policy allows
/// and the next attempt comes within the phase's deadline: compensation
/// keeps trying past the forward deadline (the partner must go), but not
/// past its own. After the last attempt a forward saga compensates and a
/// compensating one is parked.
fn attempt_failed(
    saga: &Saga,
    error: &str,
    retry_after: Option<Duration>,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
) -> Decision {
    use LastAttempt::*;
    let last = match next_attempt(saga, policy, retry_after, now) {
        Ok(at) => return retry(saga, error, at),
        Err(last) => last,
    };
    let spent = || format!("{} attempts: {error}", saga.attempts);
    let compensate_now = |reason, detail: &str| {
        let failed = step_failed(saga, error, None);
        compensate(policy, saga, now, reason, detail, vec![failed])
    };
    match (saga.state, last) {
        (SagaState::Compensating, RetriesSpent) => {
            park(saga, Reason::CompensationExhausted, error, spent())
        }
        (SagaState::Compensating, PastDeadline) => {
            let detail = format!("next attempt would pass the compensation deadline: {error}");
            park(saga, Reason::CompensationDeadlinePassed, error, detail)
        }
        (_, RetriesSpent) => compensate_now(Reason::RetriesExhausted, &spent()),
        (_, PastDeadline) => compensate_now(
            Reason::DeadlinePassed,
            &format!("next attempt would pass the deadline: {error}"),
        ),
    }
}

/// Why a failed attempt was the step's last.
#[derive(Debug, Clone, Copy)]
enum LastAttempt {
    /// The policy allows no more attempts.
    RetriesSpent,
    /// The next one would come after the phase's deadline.
    PastDeadline,
}

/// When to try the step again after a failed attempt, or why not.
fn next_attempt(
    saga: &Saga,
    policy: &RetryPolicy,
    retry_after: Option<Duration>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, LastAttempt> {
    if !policy.allows_another(saga.attempts) {
        return Err(LastAttempt::RetriesSpent);
    }
    let delay = policy.delay(saga.attempts, saga.saga_id, retry_after);
    let at = super::later(now, delay);
    if at > saga.deadline_at {
        return Err(LastAttempt::PastDeadline);
    }
    Ok(at)
}

/// A participant's reply. A final one settles the attempt it answers; a
/// heartbeat keeps that attempt alive. A reply to an attempt no longer
/// awaited is stale, except success: the participant did the step under
/// its idempotency key, so a late `completed` still counts.
fn replied(
    saga: &Saga,
    reply: &Reply,
    reply_by: DateTime<Utc>,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
) -> Result<Decision, InvalidTransition> {
    let step = reply.step;
    let current = saga.awaiting_reply
        && step == saga.step
        && reply.attempt.is_none_or(|a| a == saga.attempts);
    let stale = || InvalidTransition {
        state: saga.state,
        step: saga.step,
        input: "stale_reply",
    };
    match &reply.status {
        ReplyStatus::Completed { alliance_id } => {
            let succeeded = Input::StepSucceeded {
                step,
                alliance_id: alliance_id.clone(),
                detail: None,
            };
            decide(saga, &succeeded, policy, now)
                .or_else(|stale| late_success(saga, step, alliance_id).ok_or(stale))
        }
        _ if !current => Err(stale()),
        // A heartbeat past the phase's deadline does not keep the saga
        // waiting (nor win a race with the sweeper's deadline): the
        // deadline is applied now.
        ReplyStatus::Started | ReplyStatus::Progress { .. } if now >= saga.deadline_at => {
            decide(saga, &Input::DeadlinePassed, policy, now)
        }
        ReplyStatus::Started => Ok(heartbeat(saga, Reason::ParticipantStarted, None, reply_by)),
        ReplyStatus::Progress { detail } => Ok(heartbeat(
            saga,
            Reason::ParticipantProgress,
            detail.clone(),
            reply_by,
        )),
        ReplyStatus::Failed { error, retryable } => {
            let input = if *retryable {
                Input::StepFailed {
                    step,
                    error: error.clone(),
                    retry_after: None,
                }
            } else {
                Input::StepRejected {
                    step,
                    error: error.clone(),
                }
            };
            decide(saga, &input, policy, now)
        }
    }
}

/// A step done after the saga stopped waiting for it. Never dropped
/// silently:
/// - an alliance created once compensation had begun exists for a partner
///   that is (being) deleted: it is recorded on the saga, in its history,
///   for a person to undo; the saga carries on as it was;
/// - a partner deleted after compensation was given up (`failed`) is gone
///   after all: the saga is `compensated`.
///
/// `None`: nothing new (e.g. the same late alliance reported again).
fn late_success(saga: &Saga, step: Step, alliance_id: &Option<String>) -> Option<Decision> {
    use SagaState::*;
    match (step, saga.state) {
        (Step::CreateAlliance, Compensating | Compensated | Failed)
            if saga.alliance_id.is_none() =>
        {
            let shown = alliance_id.as_deref().unwrap_or("(no id given)");
            let partner = match saga.state {
                Failed => "the partner's deletion was given up: check both",
                _ => "the partner is (being) deleted: undo it by hand",
            };
            Some(Decision {
                alliance_id: alliance_id.clone(),
                reason: Reason::AllianceCreatedLate,
                detail: Some(format!(
                    "alliance {shown} was created after compensation began; {partner}"
                )),
                next: unchanged_next(saga),
                ..keep(saga)
            })
        }
        (Step::DeletePartner, Failed) => Some(Decision {
            to: Compensated,
            reason: Reason::PartnerDeleted,
            detail: Some("the partner was deleted after compensation had been given up".into()),
            events: vec![event(
                EventType::SagaCompensated,
                MessageStatus::Completed,
                saga,
                json!({ "reason": saga.last_error, "late": true }),
            )],
            next: NextAction::Done,
            ..keep(saga)
        }),
        _ => None,
    }
}

/// Compensation gave up: `failed`, parked for a person (docs/contract.md §1).
fn park(saga: &Saga, reason: Reason, error: &str, detail: String) -> Decision {
    Decision {
        to: SagaState::Failed,
        last_error: Some(format!("compensation failed: {error}")),
        reason,
        detail: Some(detail),
        events: vec![
            step_failed(saga, error, None),
            event(
                EventType::SagaFailed,
                MessageStatus::Failed,
                saga,
                json!({ "error": error, "reason": reason.as_str() }),
            ),
        ],
        next: NextAction::Done,
        ..keep(saga)
    }
}

/// What the saga was going to do next, unchanged.
fn unchanged_next(saga: &Saga) -> NextAction {
    match saga.next_attempt_at {
        Some(at) if !saga.state.is_terminal() && saga.awaiting_reply => NextAction::AwaitReply {
            step: saga.step,
            until: at,
        },
        Some(at) if !saga.state.is_terminal() => NextAction::Call {
            step: saga.step,
            at,
        },
        _ => NextAction::Done,
    }
}

/// The participant is working on it: wait for it until `reply_by`.
fn heartbeat(
    saga: &Saga,
    reason: Reason,
    detail: Option<String>,
    reply_by: DateTime<Utc>,
) -> Decision {
    Decision {
        reason,
        detail,
        next: await_reply(saga, saga.step, reply_by),
        ..keep(saga)
    }
}

/// Waiting for a reply never outlasts the phase's deadline: at it a forward
/// saga compensates and a compensating one is parked, reply or not, so no
/// stream of heartbeats keeps a saga (and its slot) alive for ever.
fn await_reply(saga: &Saga, step: Step, reply_by: DateTime<Utc>) -> NextAction {
    NextAction::AwaitReply {
        step,
        until: reply_by.min(saga.deadline_at),
    }
}

/// A decision that changes nothing yet: the base the arms above override.
fn keep(saga: &Saga) -> Decision {
    Decision {
        from: saga.state,
        to: saga.state,
        step: saga.step,
        attempts: saga.attempts,
        alliance_id: saga.alliance_id.clone(),
        last_error: saga.last_error.clone(),
        deadline_at: saga.deadline_at,
        reason: Reason::AttemptFailed,
        detail: None,
        events: Vec::new(),
        command: None,
        next: NextAction::Done,
    }
}

/// Move to `compensating` and call integrations to delete the partner now;
/// compensation gets its own deadline, past which the saga is parked.
fn compensate(
    policy: &RetryPolicy,
    saga: &Saga,
    now: DateTime<Utc>,
    reason: Reason,
    detail: &str,
    mut events: Vec<SagaEvent>,
) -> Decision {
    events.push(event(
        EventType::SagaCompensating,
        MessageStatus::Progress,
        saga,
        json!({ "reason": reason.as_str(), "detail": detail }),
    ));
    Decision {
        to: SagaState::Compensating,
        step: Step::DeletePartner,
        attempts: 1,
        deadline_at: super::later(now, policy.compensation_deadline),
        last_error: Some(format!("{}: {detail}", reason.as_str())),
        reason,
        detail: Some(detail.to_string()),
        events,
        next: NextAction::Call {
            step: Step::DeletePartner,
            at: now,
        },
        ..keep(saga)
    }
}

/// Stay on the step and try it again at `at` (in broker mode: send a new
/// command then, under the same idempotency key).
fn retry(saga: &Saga, error: &str, at: DateTime<Utc>) -> Decision {
    Decision {
        to: match saga.state {
            SagaState::AwaitingAlliance => SagaState::CreatingAlliance,
            state => state,
        },
        attempts: saga.attempts + 1,
        last_error: Some(error.to_string()),
        reason: Reason::AttemptFailed,
        detail: Some(format!("attempt {} failed: {error}", saga.attempts)),
        events: vec![step_failed(saga, error, Some(at))],
        next: NextAction::Call {
            step: saga.step,
            at,
        },
        ..keep(saga)
    }
}

fn step_failed(saga: &Saga, error: &str, retry_at: Option<DateTime<Utc>>) -> SagaEvent {
    event(
        EventType::SagaStepFailed,
        MessageStatus::Progress,
        saga,
        json!({
            "step": saga.step.as_str(),
            "attempt": saga.attempts,
            "error": error,
            "will_retry": retry_at.is_some(),
            "retry_at": retry_at.map(crate::envelope::format_time),
        }),
    )
}

fn event(event_type: EventType, status: MessageStatus, saga: &Saga, extra: Value) -> SagaEvent {
    let mut payload = Map::new();
    payload.insert("partner_id".into(), saga.partner_id.clone().into());
    if let Value::Object(extra) = extra {
        payload.extend(extra);
    }
    SagaEvent {
        event_type,
        status,
        payload,
    }
}

fn input_name(input: &Input) -> &'static str {
    match input {
        Input::Begin => "begin",
        Input::StepSucceeded { .. } => "step_succeeded",
        Input::StepRejected { .. } => "step_rejected",
        Input::StepFailed { .. } => "step_failed",
        Input::DeadlinePassed => "deadline_passed",
        Input::ForceCompensate { .. } => "force_compensate",
        Input::RetryFailed { .. } => "retry_failed",
        Input::CommandSent { .. } => "command_sent",
        Input::Replied { .. } => "reply",
        Input::ReplyTimedOut { .. } => "reply_timed_out",
        Input::BrokerUnreachable { .. } => "broker_unreachable",
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
