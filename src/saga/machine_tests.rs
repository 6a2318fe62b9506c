//! Every transition of the machine and every failure path.

use super::*;
use crate::saga::{RetryKind, Saga};
use uuid::Uuid;

fn policy() -> RetryPolicy {
    RetryPolicy {
        kind: RetryKind::Exponential,
        max_attempts: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
    }
}

fn now() -> DateTime<Utc> {
    "2026-11-22T14:00:00Z".parse().unwrap()
}

fn saga(state: SagaState, step: Step, attempts: u32) -> Saga {
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
        created_at: now(),
        updated_at: now(),
        deadline_at: now() + chrono::Duration::seconds(300),
        next_attempt_at: None,
        traceparent: None,
        version: 1,
    }
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
fn compensation_ignores_the_deadline() {
    let mut s = saga(SagaState::Compensating, Step::DeletePartner, 1);
    s.deadline_at = now() - chrono::Duration::seconds(1);
    assert_eq!(
        ok(&s, failed(Step::DeletePartner)).to,
        SagaState::Compensating
    );
    assert!(decide(&s, &Input::DeadlinePassed, &policy(), now()).is_err());
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
                succeeded(step),
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
fn results_for_another_step_are_stale() {
    // A late alliance answer after compensation began must not complete the saga.
    let s = saga(SagaState::Compensating, Step::DeletePartner, 1);
    for input in [
        succeeded(Step::CreateAlliance),
        rejected(Step::CreateAlliance),
        failed(Step::CreateAlliance),
    ] {
        let err = decide(&s, &input, &policy(), now()).unwrap_err();
        assert_eq!(err.state, SagaState::Compensating);
    }
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
