//! Every transition of the machine and every failure path.

use super::*;
use crate::saga::{RetryKind, Saga};

fn policy() -> RetryPolicy {
    RetryPolicy {
        kind: RetryKind::Exponential,
        max_attempts: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
        compensation_deadline: Duration::from_secs(60),
    }
}

fn now() -> DateTime<Utc> {
    crate::saga::test_now()
}

fn saga(state: SagaState, step: Step, attempts: u32) -> Saga {
    crate::saga::test_saga(state, step, attempts)
}

fn types(d: &Decision) -> Vec<EventType> {
    d.events.iter().map(|e| e.event_type).collect()
}

fn ok(s: &Saga, input: Input) -> Decision {
    decide(s, &input, &policy(), now()).expect("valid transition")
}

fn failed(step: Step) -> Input {
    Input::StepFailed {
        step,
        error: "503 Service Unavailable".into(),
        retry_after: None,
    }
}

fn succeeded(step: Step) -> Input {
    Input::StepSucceeded {
        step,
        alliance_id: Some("a-9".into()),
        detail: None,
    }
}

fn rejected(step: Step) -> Input {
    Input::StepRejected {
        step,
        error: "422 invalid email".into(),
    }
}

#[test]
fn begin_starts_the_alliance_call_now() {
    let s = saga(SagaState::Started, Step::CreateAlliance, 0);
    let d = begin(&s, now());
    assert_eq!(d, ok(&s, Input::Begin));
    assert_eq!(
        (d.from, d.to),
        (SagaState::Started, SagaState::CreatingAlliance)
    );
    assert_eq!(d.attempts, 1);
    assert_eq!(d.reason, Reason::AllianceRequested);
    assert_eq!(
        d.next,
        NextAction::Call {
            step: Step::CreateAlliance,
            at: now()
        }
    );
    assert_eq!(types(&d), [EventType::SagaStarted]);
    assert_eq!(d.events[0].status, MessageStatus::Started);
    assert_eq!(d.events[0].payload["partner_id"], "p-1");
}

#[test]
fn alliance_created_completes_from_creating_and_awaiting() {
    for state in [SagaState::CreatingAlliance, SagaState::AwaitingAlliance] {
        let d = ok(
            &saga(state, Step::CreateAlliance, 2),
            succeeded(Step::CreateAlliance),
        );
        assert_eq!(d.to, SagaState::Completed);
        assert_eq!(d.alliance_id.as_deref(), Some("a-9"));
        assert_eq!(d.last_error, None);
        assert_eq!(d.next, NextAction::Done);
        assert_eq!(
            types(&d),
            [EventType::SagaStepSucceeded, EventType::SagaCompleted]
        );
        assert_eq!(d.events[1].status, MessageStatus::Completed);
        assert_eq!(d.events[1].payload["alliance_id"], "a-9");
    }
}

#[test]
fn a_success_without_an_id_says_why_in_the_history() {
    let s = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1);
    let d = ok(
        &s,
        Input::StepSucceeded {
            step: Step::CreateAlliance,
            alliance_id: None,
            detail: Some("alliance exists (409) without an alliance_id".into()),
        },
    );
    assert_eq!(d.to, SagaState::Completed);
    assert_eq!(d.alliance_id, None);
    assert_eq!(
        d.detail.as_deref(),
        Some("alliance exists (409) without an alliance_id")
    );
    assert_eq!(
        ok(&s, succeeded(Step::CreateAlliance)).detail.as_deref(),
        Some("alliance_id=a-9")
    );
}

#[test]
fn business_rejection_compensates_at_once() {
    let d = ok(
        &saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1),
        rejected(Step::CreateAlliance),
    );
    assert_eq!(d.to, SagaState::Compensating);
    assert_eq!(d.step, Step::DeletePartner);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.reason, Reason::AllianceRejected);
    assert!(d
        .last_error
        .as_deref()
        .unwrap()
        .contains("422 invalid email"));
    assert_eq!(
        d.next,
        NextAction::Call {
            step: Step::DeletePartner,
            at: now()
        }
    );
    assert_eq!(
        types(&d),
        [EventType::SagaStepFailed, EventType::SagaCompensating]
    );
    assert_eq!(d.events[0].payload["will_retry"], false);
}

#[test]
fn transient_failure_retries_with_backoff() {
    let s = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1);
    let d = ok(&s, failed(Step::CreateAlliance));
    assert_eq!(d.to, SagaState::CreatingAlliance);
    assert_eq!(d.attempts, 2);
    assert_eq!(d.reason, Reason::AttemptFailed);
    let NextAction::Call { step, at } = d.next else {
        panic!("expected a call")
    };
    assert_eq!(step, Step::CreateAlliance);
    let wait = (at - now()).num_milliseconds();
    assert!((80..=100).contains(&wait), "first backoff ≈ base: {wait}ms");
    assert_eq!(types(&d), [EventType::SagaStepFailed]);
    assert_eq!(d.events[0].payload["will_retry"], true);
    assert_eq!(d.last_error.as_deref(), Some("503 Service Unavailable"));
}

#[test]
fn retry_after_sets_the_next_attempt() {
    let s = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1);
    let input = Input::StepFailed {
        step: Step::CreateAlliance,
        error: "429".into(),
        retry_after: Some(Duration::from_secs(7)),
    };
    let NextAction::Call { at, .. } = ok(&s, input).next else {
        panic!()
    };
    assert_eq!(at, now() + chrono::Duration::seconds(7));
}

#[test]
fn exhausted_retries_compensate() {
    let s = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 3);
    let d = ok(&s, failed(Step::CreateAlliance));
    assert_eq!(d.to, SagaState::Compensating);
    assert_eq!(d.reason, Reason::RetriesExhausted);
    assert_eq!(d.step, Step::DeletePartner);
    assert_eq!(
        types(&d),
        [EventType::SagaStepFailed, EventType::SagaCompensating]
    );
}

#[test]
fn retry_policy_none_compensates_on_first_failure() {
    let none = RetryPolicy {
        kind: RetryKind::None,
        ..policy()
    };
    let s = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1);
    let d = decide(&s, &failed(Step::CreateAlliance), &none, now()).unwrap();
    assert_eq!(d.to, SagaState::Compensating);
}

#[test]
fn a_retry_past_the_deadline_compensates_instead() {
    let mut s = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1);
    s.deadline_at = now() + chrono::Duration::milliseconds(10);
    let d = ok(&s, failed(Step::CreateAlliance));
    assert_eq!(d.to, SagaState::Compensating);
    assert_eq!(d.reason, Reason::DeadlinePassed);
}

#[test]
fn deadline_compensates_every_forward_state() {
    for (state, step) in [
        (SagaState::Started, Step::CreateAlliance),
        (SagaState::CreatingAlliance, Step::CreateAlliance),
        (SagaState::AwaitingAlliance, Step::CreateAlliance),
    ] {
        let d = ok(&saga(state, step, 1), Input::DeadlinePassed);
        assert_eq!(d.to, SagaState::Compensating, "{state}");
        assert_eq!(d.reason, Reason::DeadlinePassed);
        assert_eq!(types(&d), [EventType::SagaCompensating]);
    }
}

#[test]
fn partner_deleted_compensates() {
    let mut s = saga(SagaState::Compensating, Step::DeletePartner, 1);
    s.last_error = Some("alliance_rejected: 422".into());
    let d = ok(&s, succeeded(Step::DeletePartner));
    assert_eq!(d.to, SagaState::Compensated);
    assert_eq!(d.reason, Reason::PartnerDeleted);
    assert_eq!(d.next, NextAction::Done);
    // The alliance id from a delete reply is not an alliance.
    assert_eq!(d.alliance_id, None);
    assert_eq!(
        types(&d),
        [EventType::SagaStepSucceeded, EventType::SagaCompensated]
    );
    assert_eq!(
        d.last_error, s.last_error,
        "the cause of compensation stays visible"
    );
}

#[test]
fn delete_failures_retry_then_park_as_failed() {
    let s = saga(SagaState::Compensating, Step::DeletePartner, 1);
    let d = ok(&s, failed(Step::DeletePartner));
    assert_eq!(d.to, SagaState::Compensating);
    assert_eq!(d.attempts, 2);
    assert!(matches!(
        d.next,
        NextAction::Call {
            step: Step::DeletePartner,
            ..
        }
    ));

    let last = saga(SagaState::Compensating, Step::DeletePartner, 3);
    let d = ok(&last, failed(Step::DeletePartner));
    assert_eq!(d.to, SagaState::Failed);
    assert_eq!(d.reason, Reason::CompensationExhausted);
    assert_eq!(d.next, NextAction::Done);
    assert!(d
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("compensation failed"));
    assert_eq!(
        types(&d),
        [EventType::SagaStepFailed, EventType::SagaFailed]
    );
    assert_eq!(d.events[1].status, MessageStatus::Failed);
}

#[test]
fn delete_refusals_are_retried_like_transient_failures() {
    let s = saga(SagaState::Compensating, Step::DeletePartner, 1);
    let d = ok(&s, rejected(Step::DeletePartner));
    assert_eq!((d.to, d.attempts), (SagaState::Compensating, 2));
    let last = saga(SagaState::Compensating, Step::DeletePartner, 3);
    assert_eq!(
        ok(&last, rejected(Step::DeletePartner)).to,
        SagaState::Failed
    );
}

#[test]
fn compensation_gets_a_deadline_of_its_own() {
    // Entering compensation starts its own bound, whatever the forward
    // deadline was: a saga past it, or a failed one retried days later,
    // still gets its full compensation time.
    let mut late = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1);
    late.deadline_at = now() - chrono::Duration::seconds(1);
    let d = ok(&late, Input::DeadlinePassed);
    assert_eq!(d.to, SagaState::Compensating);
    assert_eq!(d.deadline_at, now() + chrono::Duration::seconds(60));
    let parked = saga(SagaState::Failed, Step::DeletePartner, 3);
    let retried = ok(&parked, Input::RetryFailed { reason: "r".into() });
    assert_eq!(retried.deadline_at, now() + chrono::Duration::seconds(60));
    assert_eq!(
        retried.apply(&parked, now()).deadline_at,
        retried.deadline_at
    );
}

#[test]
fn compensation_past_its_deadline_is_parked_as_failed() {
    let mut s = saga(SagaState::Compensating, Step::DeletePartner, 1);
    s.deadline_at = now() - chrono::Duration::seconds(1);
    for input in [Input::DeadlinePassed, failed(Step::DeletePartner)] {
        let d = ok(&s, input);
        assert_eq!(d.to, SagaState::Failed);
        assert_eq!(d.reason, Reason::CompensationDeadlinePassed);
        assert!(types(&d).contains(&EventType::SagaFailed));
        assert_eq!(d.next, NextAction::Done);
    }
    // Within it, a failure is retried as before.
    let s = saga(SagaState::Compensating, Step::DeletePartner, 1);
    assert_eq!(
        ok(&s, failed(Step::DeletePartner)).to,
        SagaState::Compensating
    );
}

#[test]
fn a_heartbeat_past_the_deadline_applies_the_deadline() {
    let mut compensating = saga(SagaState::Compensating, Step::DeletePartner, 2);
    compensating.awaiting_reply = true;
    compensating.deadline_at = now() - chrono::Duration::seconds(1);
    let mut forward = saga(SagaState::AwaitingAlliance, Step::CreateAlliance, 1);
    forward.awaiting_reply = true;
    forward.deadline_at = now() - chrono::Duration::seconds(1);
    for (s, to) in [
        (compensating, SagaState::Failed),
        (forward, SagaState::Compensating),
    ] {
        let reply = Reply {
            step: s.step,
            attempt: None,
            status: ReplyStatus::Progress { detail: None },
        };
        let reply_by = now() + chrono::Duration::seconds(10);
        let d = ok(&s, Input::Replied { reply, reply_by });
        assert_eq!(d.to, to, "{}", s.state);
    }
}

#[test]
fn heartbeats_never_keep_a_compensation_past_its_deadline() {
    let mut s = saga(SagaState::Compensating, Step::DeletePartner, 2);
    s.awaiting_reply = true;
    let far = now() + chrono::Duration::days(1);
    let reply = Reply {
        step: Step::DeletePartner,
        attempt: Some(2),
        status: ReplyStatus::Progress { detail: None },
    };
    let d = ok(
        &s,
        Input::Replied {
            reply,
            reply_by: far,
        },
    );
    assert_eq!(
        d.next,
        NextAction::AwaitReply {
            step: Step::DeletePartner,
            until: s.deadline_at
        }
    );
}

#[test]
fn operators_can_force_compensation_of_live_sagas_only() {
    for state in [
        SagaState::Started,
        SagaState::CreatingAlliance,
        SagaState::AwaitingAlliance,
    ] {
        let d = ok(
            &saga(state, Step::CreateAlliance, 1),
            Input::ForceCompensate {
                reason: "fraud".into(),
            },
        );
        assert_eq!(d.to, SagaState::Compensating);
        assert_eq!(d.reason, Reason::ForcedByOperator);
        assert_eq!(d.detail.as_deref(), Some("fraud"));
    }
    for state in [
        SagaState::Compensating,
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Failed,
    ] {
        let err = decide(
            &saga(state, Step::DeletePartner, 1),
            &Input::ForceCompensate { reason: "x".into() },
            &policy(),
            now(),
        )
        .unwrap_err();
        assert_eq!(err.state, state);
    }
}

#[test]
fn operators_can_retry_failed_sagas_only() {
    let mut s = saga(SagaState::Failed, Step::DeletePartner, 3);
    s.last_error = Some("compensation failed: 500".into());
    let d = ok(
        &s,
        Input::RetryFailed {
            reason: "integrations is back".into(),
        },
    );
    assert_eq!(d.to, SagaState::Compensating);
    assert_eq!(d.attempts, 1, "a re-drive gets a fresh set of attempts");
    assert_eq!(d.reason, Reason::RetriedByOperator);
    assert_eq!(d.last_error, s.last_error);
    assert_eq!(
        d.next,
        NextAction::Call {
            step: Step::DeletePartner,
            at: now()
        }
    );
    for state in [
        SagaState::Started,
        SagaState::CreatingAlliance,
        SagaState::Compensating,
        SagaState::Completed,
        SagaState::Compensated,
    ] {
        assert!(decide(
            &saga(state, Step::CreateAlliance, 1),
            &Input::RetryFailed { reason: "x".into() },
            &policy(),
            now()
        )
        .is_err());
    }
}

#[test]
fn terminal_states_accept_no_participant_result() {
    for state in [
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Failed,
    ] {
        for step in [Step::CreateAlliance, Step::DeletePartner] {
            let s = saga(state, step, 1);
            for input in [
                rejected(step),
                failed(step),
                Input::Begin,
                Input::DeadlinePassed,
            ] {
                assert!(
                    decide(&s, &input, &policy(), now()).is_err(),
                    "{state} {input:?}"
                );
            }
        }
    }
}

#[test]
fn a_late_success_is_recorded_never_dropped_and_never_reopens_a_saga() {
    // An alliance created after compensation began (an operator forced it,
    // or another instance took over, while the call was in flight).
    for state in [
        SagaState::Compensating,
        SagaState::Compensated,
        SagaState::Failed,
    ] {
        let s = saga(state, Step::DeletePartner, 1);
        let d = ok(&s, succeeded(Step::CreateAlliance));
        assert_eq!(d.to, state, "{state}: the saga carries on as it was");
        assert_eq!(d.reason, Reason::AllianceCreatedLate);
        assert_eq!(d.alliance_id.as_deref(), Some("a-9"));
        let detail = d.detail.as_deref().unwrap_or_default();
        assert!(
            detail.contains("was created after compensation began"),
            "{detail}"
        );
        let mut recorded = s.clone();
        recorded.alliance_id = d.alliance_id.clone();
        assert!(
            decide(
                &recorded,
                &succeeded(Step::CreateAlliance),
                &policy(),
                now()
            )
            .is_err(),
            "{state}: reported once"
        );
    }
    // A partner deleted after compensation was given up is gone after all.
    let parked = saga(SagaState::Failed, Step::DeletePartner, 3);
    assert_eq!(
        ok(&parked, succeeded(Step::DeletePartner)).to,
        SagaState::Compensated
    );
    // A completed saga has nothing to learn from either step.
    let done = saga(SagaState::Completed, Step::CreateAlliance, 1);
    for step in [Step::CreateAlliance, Step::DeletePartner] {
        assert!(decide(&done, &succeeded(step), &policy(), now()).is_err());
    }
    let compensated = saga(SagaState::Compensated, Step::DeletePartner, 1);
    assert!(decide(
        &compensated,
        &succeeded(Step::DeletePartner),
        &policy(),
        now()
    )
    .is_err());
}

#[test]
fn results_for_another_step_are_stale() {
    // A late alliance answer after compensation began must not complete
    // the saga (a success is recorded as late, see above).
    let s = saga(SagaState::Compensating, Step::DeletePartner, 1);
    for input in [rejected(Step::CreateAlliance), failed(Step::CreateAlliance)] {
        let err = decide(&s, &input, &policy(), now()).unwrap_err();
        assert_eq!(err.state, SagaState::Compensating);
    }
    assert_eq!(
        ok(&s, succeeded(Step::CreateAlliance)).to,
        SagaState::Compensating
    );
    let s = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1);
    assert!(decide(&s, &succeeded(Step::DeletePartner), &policy(), now()).is_err());
}

#[test]
fn begin_only_applies_once() {
    for state in SagaState::ALL
        .into_iter()
        .filter(|s| *s != SagaState::Started)
    {
        assert!(decide(
            &saga(state, Step::CreateAlliance, 1),
            &Input::Begin,
            &policy(),
            now()
        )
        .is_err());
    }
}

#[test]
fn started_accepts_no_participant_result() {
    let s = saga(SagaState::Started, Step::CreateAlliance, 0);
    for input in [
        succeeded(Step::CreateAlliance),
        rejected(Step::CreateAlliance),
        failed(Step::CreateAlliance),
    ] {
        assert!(decide(&s, &input, &policy(), now()).is_err());
    }
}

#[test]
fn apply_bumps_the_version_and_schedules_the_next_call() {
    let s = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1);
    let d = ok(&s, failed(Step::CreateAlliance));
    let later = now() + chrono::Duration::seconds(1);
    let next = d.apply(&s, later);
    assert_eq!(next.version, s.version + 1);
    assert_eq!(next.updated_at, later);
    assert_eq!(next.attempts, 2);
    let NextAction::Call { at, .. } = d.next else {
        panic!()
    };
    assert_eq!(next.next_attempt_at, Some(at));
    let done = ok(&s, succeeded(Step::CreateAlliance)).apply(&s, later);
    assert_eq!(done.next_attempt_at, None);
    assert_eq!(done.created_at, s.created_at);
}

#[test]
fn a_full_unhappy_path_walks_to_failed() {
    let p = policy();
    let mut s = saga(SagaState::Started, Step::CreateAlliance, 0);
    let mut states = vec![s.state];
    let inputs = [
        Input::Begin,
        failed(Step::CreateAlliance),
        failed(Step::CreateAlliance),
        failed(Step::CreateAlliance),
        failed(Step::DeletePartner),
        failed(Step::DeletePartner),
        failed(Step::DeletePartner),
    ];
    for input in inputs {
        let d = decide(&s, &input, &p, now()).unwrap();
        s = d.apply(&s, now());
        states.push(s.state);
    }
    use SagaState::*;
    assert_eq!(
        states,
        [
            Started,
            CreatingAlliance,
            CreatingAlliance,
            CreatingAlliance,
            Compensating,
            Compensating,
            Compensating,
            Failed
        ]
    );
    assert_eq!(s.version, 8);
}

// --- Broker mode: commands, replies, reply deadlines ---

fn reply_by() -> DateTime<Utc> {
    now() + chrono::Duration::seconds(10)
}

/// A saga whose command for `step`, attempt `attempts`, is out.
fn awaiting(state: SagaState, step: Step, attempts: u32) -> Saga {
    Saga {
        awaiting_reply: true,
        next_attempt_at: Some(reply_by()),
        ..saga(state, step, attempts)
    }
}

fn replied(step: Step, attempt: Option<u32>, status: ReplyStatus) -> Input {
    Input::Replied {
        reply: Reply {
            step,
            attempt,
            status,
        },
        reply_by: reply_by() + chrono::Duration::seconds(5),
    }
}

fn completed_reply(step: Step, attempt: Option<u32>) -> Input {
    replied(
        step,
        attempt,
        ReplyStatus::Completed {
            alliance_id: Some("a-7".into()),
        },
    )
}

fn failed_reply(step: Step, retryable: bool) -> Input {
    replied(
        step,
        Some(1),
        ReplyStatus::Failed {
            error: "partner blocked".into(),
            retryable,
        },
    )
}

fn invalid(s: &Saga, input: Input) -> InvalidTransition {
    decide(s, &input, &policy(), now()).expect_err("must not apply")
}

#[test]
fn sending_create_alliance_awaits_its_reply() {
    let s = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1);
    let d = ok(
        &s,
        Input::CommandSent {
            step: Step::CreateAlliance,
            reply_by: reply_by(),
        },
    );
    assert_eq!(
        (d.from, d.to, d.reason),
        (
            SagaState::CreatingAlliance,
            SagaState::AwaitingAlliance,
            Reason::CommandSent
        )
    );
    assert_eq!(d.command, Some(Step::CreateAlliance));
    assert_eq!(d.attempts, 1, "sending is the attempt, not a new one");
    assert!(d.events.is_empty());
    assert_eq!(
        d.next,
        NextAction::AwaitReply {
            step: Step::CreateAlliance,
            until: reply_by()
        }
    );
    let after = d.apply(&s, now());
    assert!(after.awaiting_reply);
    assert_eq!(after.next_attempt_at, Some(reply_by()));
}

#[test]
fn sending_delete_partner_awaits_while_compensating() {
    let s = saga(SagaState::Compensating, Step::DeletePartner, 2);
    let far = now() + chrono::Duration::days(1);
    let d = ok(
        &s,
        Input::CommandSent {
            step: Step::DeletePartner,
            reply_by: far,
        },
    );
    assert_eq!(d.to, SagaState::Compensating);
    assert_eq!(d.command, Some(Step::DeletePartner));
    // The wait ends at the compensation's deadline at the latest.
    assert_eq!(
        d.next,
        NextAction::AwaitReply {
            step: Step::DeletePartner,
            until: s.deadline_at
        }
    );
}

#[test]
fn a_forward_wait_never_outlasts_the_saga_deadline() {
    let s = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1);
    let d = ok(
        &s,
        Input::CommandSent {
            step: Step::CreateAlliance,
            reply_by: now() + chrono::Duration::days(1),
        },
    );
    assert_eq!(
        d.next,
        NextAction::AwaitReply {
            step: Step::CreateAlliance,
            until: s.deadline_at
        }
    );
}

#[test]
fn a_command_goes_out_once_per_attempt_and_only_on_its_step() {
    let send = |step| Input::CommandSent {
        step,
        reply_by: reply_by(),
    };
    invalid(
        &awaiting(SagaState::AwaitingAlliance, Step::CreateAlliance, 1),
        send(Step::CreateAlliance),
    );
    invalid(
        &awaiting(SagaState::Compensating, Step::DeletePartner, 1),
        send(Step::DeletePartner),
    );
    invalid(
        &saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1),
        send(Step::DeletePartner),
    );
    for state in [
        SagaState::Started,
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Failed,
    ] {
        invalid(
            &saga(state, Step::CreateAlliance, 1),
            send(Step::CreateAlliance),
        );
    }
}

#[test]
fn heartbeats_keep_the_attempt_alive_without_moving_it() {
    let s = awaiting(SagaState::AwaitingAlliance, Step::CreateAlliance, 1);
    let started = ok(
        &s,
        replied(Step::CreateAlliance, Some(1), ReplyStatus::Started),
    );
    assert_eq!(started.reason, Reason::ParticipantStarted);
    let progress = ok(
        &s,
        replied(
            Step::CreateAlliance,
            None,
            ReplyStatus::Progress {
                detail: Some("half way".into()),
            },
        ),
    );
    assert_eq!(progress.reason, Reason::ParticipantProgress);
    assert_eq!(progress.detail.as_deref(), Some("half way"));
    for d in [started, progress] {
        assert_eq!(d.to, SagaState::AwaitingAlliance);
        assert_eq!(d.attempts, 1);
        assert!(d.events.is_empty() && d.command.is_none());
        assert_eq!(
            d.next,
            NextAction::AwaitReply {
                step: Step::CreateAlliance,
                until: reply_by() + chrono::Duration::seconds(5)
            }
        );
        assert!(d.apply(&s, now()).awaiting_reply);
    }
    let deleting = awaiting(SagaState::Compensating, Step::DeletePartner, 1);
    let d = ok(
        &deleting,
        replied(Step::DeletePartner, Some(1), ReplyStatus::Started),
    );
    assert_eq!(d.to, SagaState::Compensating);
}

#[test]
fn a_completed_reply_finishes_the_step() {
    let s = awaiting(SagaState::AwaitingAlliance, Step::CreateAlliance, 1);
    let d = ok(&s, completed_reply(Step::CreateAlliance, Some(1)));
    assert_eq!(d.to, SagaState::Completed);
    assert_eq!(d.alliance_id.as_deref(), Some("a-7"));
    assert!(!d.apply(&s, now()).awaiting_reply);

    let s = awaiting(SagaState::Compensating, Step::DeletePartner, 1);
    let d = ok(&s, completed_reply(Step::DeletePartner, Some(1)));
    assert_eq!(d.to, SagaState::Compensated);
}

#[test]
fn a_failed_reply_is_a_rejection_unless_marked_retryable() {
    let s = awaiting(SagaState::AwaitingAlliance, Step::CreateAlliance, 1);
    let d = ok(&s, failed_reply(Step::CreateAlliance, false));
    assert_eq!(
        (d.to, d.reason),
        (SagaState::Compensating, Reason::AllianceRejected)
    );
    assert_eq!(d.step, Step::DeletePartner);

    let d = ok(&s, failed_reply(Step::CreateAlliance, true));
    assert_eq!(
        (d.to, d.reason),
        (SagaState::CreatingAlliance, Reason::AttemptFailed),
        "a retry sends a new command, so the saga is no longer awaiting"
    );
    assert_eq!(d.attempts, 2);
    assert!(matches!(d.next, NextAction::Call { step: Step::CreateAlliance, at } if at > now()));
    assert!(!d.apply(&s, now()).awaiting_reply);

    // Deleting has no business refusal: a failed reply is retried.
    let s = awaiting(SagaState::Compensating, Step::DeletePartner, 1);
    let d = ok(&s, failed_reply(Step::DeletePartner, false));
    assert_eq!((d.to, d.attempts), (SagaState::Compensating, 2));
}

#[test]
fn a_missed_reply_deadline_is_a_failed_attempt() {
    let s = awaiting(SagaState::AwaitingAlliance, Step::CreateAlliance, 1);
    let d = ok(
        &s,
        Input::ReplyTimedOut {
            step: Step::CreateAlliance,
        },
    );
    assert_eq!((d.to, d.attempts), (SagaState::CreatingAlliance, 2));
    assert!(d.last_error.as_deref().unwrap_or("").contains("no reply"));
    assert!(types(&d).contains(&EventType::SagaStepFailed));

    let last = awaiting(SagaState::AwaitingAlliance, Step::CreateAlliance, 3);
    let d = ok(
        &last,
        Input::ReplyTimedOut {
            step: Step::CreateAlliance,
        },
    );
    assert_eq!(
        (d.to, d.reason),
        (SagaState::Compensating, Reason::RetriesExhausted)
    );

    let deleting = awaiting(SagaState::Compensating, Step::DeletePartner, 3);
    let d = ok(
        &deleting,
        Input::ReplyTimedOut {
            step: Step::DeletePartner,
        },
    );
    assert_eq!(
        (d.to, d.reason),
        (SagaState::Failed, Reason::CompensationExhausted)
    );
}

#[test]
fn a_reply_deadline_only_applies_to_an_awaited_attempt() {
    let timed_out = Input::ReplyTimedOut {
        step: Step::CreateAlliance,
    };
    invalid(
        &saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1),
        timed_out.clone(),
    );
    invalid(
        &awaiting(SagaState::Compensating, Step::DeletePartner, 1),
        timed_out,
    );
}

#[test]
fn replies_to_an_attempt_no_longer_awaited_are_stale() {
    // Attempt 1 timed out; attempt 2's command is out.
    let s = awaiting(SagaState::AwaitingAlliance, Step::CreateAlliance, 2);
    for status in [
        ReplyStatus::Started,
        ReplyStatus::Progress { detail: None },
        ReplyStatus::Failed {
            error: "late".into(),
            retryable: false,
        },
    ] {
        let e = invalid(&s, replied(Step::CreateAlliance, Some(1), status));
        assert_eq!(e.input, "stale_reply");
    }
    // Waiting out a backoff: nothing is awaited at all.
    let backing_off = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 2);
    invalid(&backing_off, failed_reply(Step::CreateAlliance, false));
    invalid(
        &backing_off,
        replied(Step::CreateAlliance, None, ReplyStatus::Started),
    );
    // A reply for the other step.
    invalid(
        &awaiting(SagaState::Compensating, Step::DeletePartner, 1),
        failed_reply(Step::CreateAlliance, false),
    );
}

#[test]
fn a_late_success_still_counts_while_the_step_is_live() {
    // The participant did it under the step's idempotency key.
    let backing_off = saga(SagaState::CreatingAlliance, Step::CreateAlliance, 2);
    let d = ok(&backing_off, completed_reply(Step::CreateAlliance, Some(1)));
    assert_eq!(d.to, SagaState::Completed);
    let newer = awaiting(SagaState::AwaitingAlliance, Step::CreateAlliance, 3);
    assert_eq!(
        ok(&newer, completed_reply(Step::CreateAlliance, Some(2))).to,
        SagaState::Completed
    );
    // Once completed, the same success again changes nothing.
    invalid(
        &saga(SagaState::Completed, Step::CreateAlliance, 1),
        completed_reply(Step::CreateAlliance, None),
    );
}

#[test]
fn an_alliance_created_after_compensation_began_is_recorded_not_dropped() {
    // Compensating and waiting out a backoff: it carries on with that.
    let mut compensating = saga(SagaState::Compensating, Step::DeletePartner, 2);
    compensating.next_attempt_at = Some(now() + chrono::Duration::seconds(1));
    let d = ok(
        &compensating,
        completed_reply(Step::CreateAlliance, Some(3)),
    );
    assert_eq!(
        (d.from, d.to),
        (SagaState::Compensating, SagaState::Compensating)
    );
    assert_eq!(d.reason, Reason::AllianceCreatedLate);
    assert_eq!(d.alliance_id.as_deref(), Some("a-7"));
    assert!(d.detail.as_deref().unwrap_or("").contains("by hand"));
    assert_eq!(
        d.next,
        NextAction::Call {
            step: Step::DeletePartner,
            at: now() + chrono::Duration::seconds(1)
        }
    );
    // Waiting for the delete's reply: still waiting, same deadline.
    let waiting = awaiting(SagaState::Compensating, Step::DeletePartner, 1);
    let d = ok(&waiting, completed_reply(Step::CreateAlliance, Some(1)));
    assert_eq!(
        d.next,
        NextAction::AwaitReply {
            step: Step::DeletePartner,
            until: reply_by()
        }
    );
    assert!(d.apply(&waiting, now()).awaiting_reply);
    // Terminal: recorded, still terminal.
    for state in [SagaState::Compensated, SagaState::Failed] {
        let d = ok(
            &saga(state, Step::DeletePartner, 3),
            completed_reply(Step::CreateAlliance, None),
        );
        assert_eq!((d.to, d.next), (state, NextAction::Done));
        assert_eq!(d.reason, Reason::AllianceCreatedLate);
    }
    // Reported again once recorded: nothing new.
    let recorded = Saga {
        alliance_id: Some("a-7".into()),
        ..saga(SagaState::Compensated, Step::DeletePartner, 3)
    };
    invalid(&recorded, completed_reply(Step::CreateAlliance, None));
}

#[test]
fn a_partner_deleted_after_compensation_was_given_up_is_compensated() {
    let parked = saga(SagaState::Failed, Step::DeletePartner, 3);
    let d = ok(&parked, completed_reply(Step::DeletePartner, Some(3)));
    assert_eq!(
        (d.to, d.reason),
        (SagaState::Compensated, Reason::PartnerDeleted)
    );
    assert_eq!(types(&d), [EventType::SagaCompensated]);
    assert_eq!(d.next, NextAction::Done);
    // Other late news for a parked saga is stale.
    invalid(&parked, failed_reply(Step::DeletePartner, false));
}

#[test]
fn deadline_and_operators_override_an_awaited_reply() {
    let s = awaiting(SagaState::AwaitingAlliance, Step::CreateAlliance, 1);
    let d = ok(&s, Input::DeadlinePassed);
    assert_eq!(d.to, SagaState::Compensating);
    assert!(!d.apply(&s, now()).awaiting_reply);
    let d = ok(
        &s,
        Input::ForceCompensate {
            reason: "ops".into(),
        },
    );
    assert_eq!(d.to, SagaState::Compensating);
    assert_eq!(
        d.next,
        NextAction::Call {
            step: Step::DeletePartner,
            at: now()
        }
    );
}

#[test]
fn an_unreachable_broker_extends_the_wait_without_spending_an_attempt() {
    let later = now() + chrono::Duration::seconds(10);
    for (state, step) in [
        (SagaState::AwaitingAlliance, Step::CreateAlliance),
        (SagaState::Compensating, Step::DeletePartner),
    ] {
        let s = awaiting(state, step, 2);
        let d = ok(&s, Input::BrokerUnreachable { step, until: later });
        assert_eq!(
            (d.to, d.attempts, d.reason),
            (state, 2, Reason::BrokerUnreachable)
        );
        assert!(d.command.is_none() && d.events.is_empty());
        assert_eq!(d.next, NextAction::AwaitReply { step, until: later });
    }
    // Still never past the saga's deadline while moving forward.
    let s = awaiting(SagaState::AwaitingAlliance, Step::CreateAlliance, 1);
    let far = now() + chrono::Duration::days(1);
    let d = ok(
        &s,
        Input::BrokerUnreachable {
            step: Step::CreateAlliance,
            until: far,
        },
    );
    assert_eq!(
        d.next,
        NextAction::AwaitReply {
            step: Step::CreateAlliance,
            until: s.deadline_at
        }
    );
    // Only for an attempt being awaited.
    invalid(
        &saga(SagaState::CreatingAlliance, Step::CreateAlliance, 1),
        Input::BrokerUnreachable {
            step: Step::CreateAlliance,
            until: later,
        },
    );
}
