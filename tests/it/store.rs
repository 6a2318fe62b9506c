//! The `SagaStore` contract — dedup, optimistic concurrency, leases, the
//! outbox, listing — checked directly, once against PostgreSQL and once
//! against SQLite: each case is a function over `dyn SagaStore`, and
//! `on_both!` makes a test of it per backend.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use saga_orchestrator::envelope::{Envelope, EventType};
use saga_orchestrator::saga::{
    self, HistoryEntry, Input, Reply, ReplyStatus, RetryKind, RetryPolicy, Saga, SagaState, Step,
};
use saga_orchestrator::store::{
    Created, Lease, ListQuery, NewSaga, OutboxFault, OutboxHold, OutboxMessage, PostgresStore,
    SagaStore, SqliteStore, TransitionWrite,
};
use secrecy::SecretString;
use serde_json::Map;
use uuid::Uuid;

use crate::helpers::fresh_database;
use crate::outbox_rows::{long_correlation_event, sqlite_url, Db};
use crate::store_operator::{
    a_failed_redrive_leaves_no_actor, an_unsettled_redrive_is_claimed_once,
    dead_letters_are_indexed_once_and_taken_once, jobs_are_one_per_body_leased_and_counted_once,
};

async fn postgres() -> Arc<dyn SagaStore> {
    postgres_with_db().await.0
}

async fn sqlite() -> Arc<dyn SagaStore> {
    sqlite_with_db().await.0
}

/// PostgreSQL, with direct SQL on its database for rows the store would never write.
async fn postgres_with_db() -> (Arc<dyn SagaStore>, Db) {
    let url = fresh_database().await;
    let store = PostgresStore::connect(&SecretString::from(url.clone()), 4)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    (Arc::new(store), Db::from_url(&url))
}

/// SQLite, with direct SQL on its file.
async fn sqlite_with_db() -> (Arc<dyn SagaStore>, Db) {
    let url = sqlite_url("store");
    let store = SqliteStore::connect(&url).await.expect("open");
    store.migrate().await.expect("migrate");
    (Arc::new(store), Db::from_url(&url))
}

/// As [`on_both`], for cases that also write rows by hand.
macro_rules! on_both_with_db {
    ($($case:ident),* $(,)?) => {
        mod postgres_store_raw {
            $(#[tokio::test] async fn $case() {
                let (store, db) = super::postgres_with_db().await;
                super::$case(store, db).await
            })*
        }
        mod sqlite_store_raw {
            $(#[tokio::test] async fn $case() {
                let (store, db) = super::sqlite_with_db().await;
                super::$case(store, db).await
            })*
        }
    };
}

/// One `#[tokio::test]` per backend for each named case.
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod postgres_store {
            $(#[tokio::test] async fn $case() { super::$case(super::postgres().await).await })*
        }
        mod sqlite_store {
            $(#[tokio::test] async fn $case() { super::$case(super::sqlite().await).await })*
        }
    };
}

on_both!(
    create_dedups_by_event_id_within_and_across_batches,
    a_saga_recorded_awaiting_its_reply_reads_back_awaiting,
    one_saga_per_partner_until_it_is_compensated,
    a_driver_write_is_fenced_by_another_owners_lease,
    a_stale_transition_writes_nothing,
    many_sagas_are_read_at_once_and_unknown_ids_are_left_out,
    a_batch_of_transitions_commits_each_and_refuses_the_stale,
    a_write_of_several_decisions_keeps_a_history_row_for_each,
    one_saga_twice_in_a_batch_applies_once_and_messages_keep_batch_order,
    claim_due_takes_only_due_sagas_with_lapsed_leases,
    leases_handed_back_are_claimable_at_once_but_those_kept,
    a_lease_is_renewed_only_by_its_owner_at_the_same_version,
    outbox_claims_are_exclusive_until_they_lapse,
    list_filters_and_orders_newest_first,
    dead_letters_are_indexed_once_and_taken_once,
    jobs_are_one_per_body_leased_and_counted_once,
    an_unsettled_redrive_is_claimed_once,
    a_failed_redrive_leaves_no_actor,
);

on_both_with_db!(
    a_row_that_cannot_be_read_does_not_fail_the_claim,
    failed_attempts_are_counted_and_parking_keeps_them,
);

fn policy() -> RetryPolicy {
    RetryPolicy {
        kind: RetryKind::Exponential,
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        compensation_deadline: Duration::from_secs(60),
    }
}

fn lease(owner: &str, until: DateTime<Utc>) -> Option<Lease> {
    Some(Lease {
        owner: owner.into(),
        until,
    })
}

/// A new saga already begun, as the orchestrator records it.
fn new_saga(event_id: &str, lease_until: Option<DateTime<Utc>>) -> NewSaga {
    // PostgreSQL keeps microseconds; start there so read-backs compare equal.
    let now = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("in range");
    let started = Saga {
        saga_id: Uuid::now_v7(),
        event_id: event_id.into(),
        correlation_id: format!("corr-{event_id}"),
        partner_id: format!("p-{event_id}"),
        state: SagaState::Started,
        step: Step::CreateAlliance,
        attempts: 0,
        alliance_id: None,
        last_error: None,
        payload: serde_json::json!({"partner_id": format!("p-{event_id}"), "name": "N"})
            .as_object()
            .cloned()
            .unwrap(),
        created_at: now,
        updated_at: now,
        deadline_at: now + chrono::Duration::seconds(300),
        next_attempt_at: Some(now),
        traceparent: None,
        awaiting_reply: false,
        version: 1,
    };
    let decision = saga::begin(&started, now);
    let saga = decision.apply(&started, now);
    let history = vec![
        HistoryEntry {
            seq: 1,
            from_state: None,
            to_state: SagaState::Started,
            reason: "partner_created".into(),
            detail: None,
            at: now,
            instance_id: Some("store-test-instance".into()),
            events: Vec::new(),
        },
        HistoryEntry {
            seq: 2,
            from_state: Some(SagaState::Started),
            to_state: SagaState::CreatingAlliance,
            reason: "alliance_requested".into(),
            detail: None,
            // As rows stored before instances were recorded.
            instance_id: None,
            events: Vec::new(),
            at: now,
        },
    ];
    let envelope = Envelope::new(
        EventType::SagaStarted,
        saga.correlation_id.clone(),
        Some(saga.saga_id),
        None,
        Map::new(),
    );
    NewSaga {
        saga,
        history,
        outbox: vec![OutboxMessage::new("events", envelope)],
        lease: lease_until.and_then(|u| lease("me", u)),
    }
}

/// The write that moves `saga` by `input`.
fn transition(saga: &Saga, input: Input, lease_until: Option<DateTime<Utc>>) -> TransitionWrite {
    folded(saga, &[input], lease_until)
}

/// The one write that moves `saga` by each of `inputs` in turn, with a
/// history row for each, as the orchestrator folds a saga's replies.
fn folded(saga: &Saga, inputs: &[Input], lease_until: Option<DateTime<Utc>>) -> TransitionWrite {
    let now = Utc::now();
    let mut after = saga.clone();
    let mut history = Vec::new();
    for input in inputs {
        let decision = saga::decide(&after, input, &policy(), now).expect("valid");
        after = decision.apply(&after, now);
        history.push(HistoryEntry {
            seq: after.version,
            from_state: Some(decision.from),
            to_state: decision.to,
            reason: decision.reason.as_str().into(),
            detail: decision.detail.clone(),
            at: now,
            instance_id: Some("me".into()),
            // As the orchestrator records them, so every transition these
            // tests store round-trips its events on both stores.
            events: decision.event_types(),
        });
    }
    TransitionWrite {
        history,
        expected_version: saga.version,
        outbox: vec![],
        lease: lease_until.and_then(|u| lease("me", u)),
        fence: None,
        lease_unchanged: false,
        saga: after,
    }
}

async fn create_dedups_by_event_id_within_and_across_batches(store: Arc<dyn SagaStore>) {
    let a = new_saga("e-a", None);
    let a_again = new_saga("e-a", None);
    let b = new_saga("e-b", None);
    let created = store
        .create(&[a.clone(), a_again.clone(), b.clone()])
        .await
        .unwrap();
    assert_eq!(
        created,
        [
            Created::New(a.saga.saga_id),
            Created::Duplicate(a.saga.saga_id),
            Created::New(b.saga.saga_id)
        ]
    );

    let later = store.create(&[new_saga("e-b", None)]).await.unwrap();
    assert_eq!(later, [Created::Duplicate(b.saga.saga_id)]);

    let stored = store.get(a.saga.saga_id).await.unwrap().expect("stored");
    assert_eq!(stored, a.saga, "read back exactly as written");
    assert_eq!(store.history(a.saga.saga_id).await.unwrap().len(), 2);
    assert!(store.get(a_again.saga.saga_id).await.unwrap().is_none());
    assert_eq!(
        store.outbox_backlog().await.unwrap(),
        2,
        "one event per new saga, none for duplicates"
    );
}

/// Broker mode records a saga with its first command already sent: it is
/// stored waiting for the reply, on both ways of recording.
async fn a_saga_recorded_awaiting_its_reply_reads_back_awaiting(store: Arc<dyn SagaStore>) {
    let awaiting = |event_id: &str| {
        let mut new = new_saga(event_id, None);
        new.saga.awaiting_reply = true;
        new
    };
    let (plain, held) = (awaiting("e-await-a"), awaiting("e-await-b"));
    store.create(std::slice::from_ref(&plain)).await.unwrap();
    let hold = OutboxHold {
        owner: "i-await".into(),
        until: Utc::now() + chrono::Duration::seconds(30),
    };
    store
        .create_held(std::slice::from_ref(&held), Some(&hold))
        .await
        .unwrap();
    for new in [plain, held] {
        let stored = store.get(new.saga.saga_id).await.unwrap().expect("stored");
        assert!(stored.awaiting_reply, "{}", new.saga.event_id);
        assert_eq!(stored, new.saga, "read back exactly as written");
    }
}

/// A saga of `partner` started by `event_id`.
fn partner_saga(event_id: &str, partner: &str) -> NewSaga {
    let mut new = new_saga(event_id, None);
    new.saga.partner_id = partner.into();
    new
}

async fn one_saga_per_partner_until_it_is_compensated(store: Arc<dyn SagaStore>) {
    // Two events for one partner in one batch, then another later: one saga.
    let first = partner_saga("e-p1", "p-shared");
    let second = partner_saga("e-p2", "p-shared");
    let created = store
        .create(&[first.clone(), second.clone()])
        .await
        .unwrap();
    let id = first.saga.saga_id;
    assert_eq!(created, [Created::New(id), Created::Duplicate(id)]);
    let again = store
        .create(&[partner_saga("e-p3", "p-shared")])
        .await
        .unwrap();
    assert_eq!(
        again,
        [Created::Duplicate(id)],
        "answered with the live saga"
    );

    // Once compensated (the partner is gone) the partner may start anew.
    let saga = store.get(id).await.unwrap().unwrap();
    let compensating = transition(&saga, Input::ForceCompensate { reason: "t".into() }, None);
    assert!(store.commit(&compensating).await.unwrap());
    // Compensation's own deadline is stored with the transition.
    let stored = store.get(id).await.unwrap().unwrap();
    let drift = stored.deadline_at - compensating.saga.deadline_at;
    assert!(drift.num_milliseconds().abs() < 1, "{drift}");
    let left = (stored.deadline_at - Utc::now()).num_seconds();
    assert!(
        (55..=60).contains(&left),
        "the policy's 60 s, not the forward 300 s: {left}"
    );
    let deleted = transition(
        &compensating.saga,
        Input::StepSucceeded {
            step: Step::DeletePartner,
            alliance_id: None,
            detail: None,
        },
        None,
    );
    assert!(store.commit(&deleted).await.unwrap());
    assert_eq!(deleted.saga.state, SagaState::Compensated);
    // Each row keeps the saga events its transition emitted.
    let events: Vec<Vec<String>> = store
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.events)
        .collect();
    assert_eq!(
        events[events.len() - 2..],
        [
            vec!["SagaCompensating".to_string()],
            vec!["SagaStepSucceeded".into(), "SagaCompensated".into()]
        ]
    );
    let anew = partner_saga("e-p4", "p-shared");
    assert_eq!(
        store.create(std::slice::from_ref(&anew)).await.unwrap(),
        [Created::New(anew.saga.saga_id)]
    );
}

async fn a_driver_write_is_fenced_by_another_owners_lease(store: Arc<dyn SagaStore>) {
    let mut new = new_saga("e-fence", None);
    new.lease = lease("other", Utc::now() + chrono::Duration::seconds(60));
    store.create(std::slice::from_ref(&new)).await.unwrap();
    let mut write = transition(&new.saga, failed_call(), None);

    write.fence = Some("me".into());
    assert!(
        !store.commit(&write).await.unwrap(),
        "another owner's live lease refuses my driver's write"
    );
    write.fence = Some("other".into());
    assert!(store.commit(&write).await.unwrap(), "the owner writes");

    // An operator's write (no fence) goes through whoever holds the lease.
    let mut operator = transition(
        &write.saga,
        Input::ForceCompensate { reason: "t".into() },
        None,
    );
    operator.fence = None;
    assert!(store.commit(&operator).await.unwrap());
}

/// The alliance call succeeded, with alliance `a`.
fn alliance_created() -> Input {
    Input::StepSucceeded {
        step: Step::CreateAlliance,
        alliance_id: Some("a".into()),
        detail: None,
    }
}

fn failed_call() -> Input {
    Input::StepFailed {
        step: Step::CreateAlliance,
        error: "503".into(),
        retry_after: None,
    }
}

async fn a_stale_transition_writes_nothing(store: Arc<dyn SagaStore>) {
    let new = new_saga("e-stale", None);
    store.create(std::slice::from_ref(&new)).await.unwrap();
    let saga = new.saga;

    let first = transition(&saga, alliance_created(), None);
    assert!(store.commit(&first).await.unwrap());
    // A second driver decided on the same old version.
    let mut second = transition(
        &saga,
        Input::StepRejected {
            step: Step::CreateAlliance,
            error: "no".into(),
        },
        None,
    );
    second.outbox.push(OutboxMessage::new(
        "events",
        Envelope::new(
            EventType::SagaCompensating,
            "c",
            Some(saga.saga_id),
            None,
            Map::new(),
        ),
    ));
    assert!(!store.commit(&second).await.unwrap());

    let stored = store.get(saga.saga_id).await.unwrap().unwrap();
    assert_eq!(stored.state, SagaState::Completed);
    assert_eq!(stored.version, saga.version + 1);
    let history = store.history(saga.saga_id).await.unwrap();
    assert_eq!(
        history.iter().map(|h| h.to_state).collect::<Vec<_>>(),
        [
            SagaState::Started,
            SagaState::CreatingAlliance,
            SagaState::Completed
        ]
    );
    assert_eq!(
        store.outbox_backlog().await.unwrap(),
        1,
        "the stale write's message was not enqueued"
    );
}

async fn many_sagas_are_read_at_once_and_unknown_ids_are_left_out(store: Arc<dyn SagaStore>) {
    let a = new_saga("e-many-a", None);
    let b = new_saga("e-many-b", None);
    store.create(&[a.clone(), b.clone()]).await.unwrap();
    let moved = transition(&b.saga, alliance_created(), None);
    assert!(store.commit(&moved).await.unwrap());

    let unknown = uuid::Uuid::now_v7();
    let ids = [b.saga.saga_id, unknown, a.saga.saga_id, b.saga.saga_id];
    let mut read = store.get_many(&ids).await.unwrap();
    read.sort_by_key(|s| s.saga_id);
    let mut expected = vec![
        store.get(a.saga.saga_id).await.unwrap().unwrap(),
        store.get(b.saga.saga_id).await.unwrap().unwrap(),
    ];
    expected.sort_by_key(|s| s.saga_id);
    // Each once, as stored now (b after its transition), payload included.
    assert_eq!(read, expected);
    assert_eq!(
        read.iter()
            .find(|s| s.saga_id == b.saga.saga_id)
            .map(|s| s.state),
        Some(SagaState::Completed)
    );
    assert!(store.get_many(&[]).await.unwrap().is_empty());
    assert!(store.get_many(&[unknown]).await.unwrap().is_empty());
}

async fn claim_due_takes_only_due_sagas_with_lapsed_leases(store: Arc<dyn SagaStore>) {
    let now = Utc::now();
    let leased = new_saga("e-leased", Some(now + chrono::Duration::seconds(60)));
    let lapsed = new_saga("e-lapsed", Some(now - chrono::Duration::seconds(1)));
    let unleased = new_saga("e-free", None);
    let mut not_due = new_saga("e-later", None);
    not_due.saga.next_attempt_at = Some(now + chrono::Duration::seconds(60));
    let mut done = new_saga("e-done", None);
    done.saga.state = SagaState::Completed;
    done.saga.next_attempt_at = None;
    store
        .create(&[leased, lapsed.clone(), unleased.clone(), not_due, done])
        .await
        .unwrap();
    let now = Utc::now();

    let mut claimed: Vec<Uuid> = store
        .claim_due("sweeper", now, Duration::from_secs(30), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.saga_id)
        .collect();
    claimed.sort();
    let mut expected = vec![lapsed.saga.saga_id, unleased.saga.saga_id];
    expected.sort();
    assert_eq!(claimed, expected);
    // Now leased to the sweeper: nobody else gets them.
    assert!(store
        .claim_due("other", now, Duration::from_secs(30), 10)
        .await
        .unwrap()
        .is_empty());
    // Once that lease lapses, they are claimable again.
    let later = now + chrono::Duration::seconds(31);
    assert_eq!(
        store
            .claim_due("other", later, Duration::from_secs(30), 10)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn leases_handed_back_are_claimable_at_once_but_those_kept(store: Arc<dyn SagaStore>) {
    let until = Utc::now() + chrono::Duration::seconds(60);
    let kept = new_saga("e-kept", Some(until));
    let released = new_saga("e-released", Some(until));
    let mut others = new_saga("e-others", Some(until));
    others.lease = lease("someone-else", until);
    store
        .create(&[kept.clone(), released.clone(), others])
        .await
        .unwrap();

    let handed_back = store
        .release_leases("me", &[kept.saga.saga_id])
        .await
        .unwrap();

    assert_eq!(handed_back, 1);
    let claimed: Vec<Uuid> = store
        .claim_due("next", Utc::now(), Duration::from_secs(30), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.saga_id)
        .collect();
    assert_eq!(claimed, [released.saga.saga_id], "only the one handed back");
}

async fn a_lease_is_renewed_only_by_its_owner_at_the_same_version(store: Arc<dyn SagaStore>) {
    let lapsed = Utc::now() - chrono::Duration::seconds(1);
    let mine = new_saga("e-mine", Some(lapsed));
    let (id, version) = (mine.saga.saga_id, mine.saga.version);
    store.create(&[mine]).await.unwrap();
    let later = Utc::now() + chrono::Duration::seconds(30);

    assert!(
        !store
            .renew_lease(id, version, "other", later)
            .await
            .unwrap(),
        "not theirs"
    );
    assert!(
        !store
            .renew_lease(id, version + 1, "me", later)
            .await
            .unwrap(),
        "moved on"
    );
    // Lapsed but taken by nobody: still ours to renew.
    assert!(store.renew_lease(id, version, "me", later).await.unwrap());
    assert!(
        store
            .claim_due("sweeper", Utc::now(), Duration::from_secs(30), 10)
            .await
            .unwrap()
            .is_empty(),
        "renewed: nobody may claim it"
    );
}

async fn outbox_claims_are_exclusive_until_they_lapse(store: Arc<dyn SagaStore>) {
    store
        .create(&[
            new_saga("o-1", None),
            new_saga("o-2", None),
            new_saga("o-3", None),
        ])
        .await
        .unwrap();
    let now = Utc::now();

    let first = store
        .claim_outbox("relay-a", now, Duration::from_secs(30), 2)
        .await
        .unwrap()
        .messages;
    assert_eq!(first.len(), 2);
    assert!(first[0].id < first[1].id, "oldest first");
    let second = store
        .claim_outbox("relay-b", now, Duration::from_secs(30), 10)
        .await
        .unwrap()
        .messages;
    assert_eq!(second.len(), 1, "claimed messages are not handed out twice");
    assert_eq!(second[0].envelope.event_type, "SagaStarted");

    // A failed publish gives its claim back: the next claim takes it at once.
    // Only the relay that holds a claim gives it back.
    store
        .release_outbox("relay-b", &[first[1].id])
        .await
        .unwrap();
    let still_held = store
        .claim_outbox("relay-c", now, Duration::from_secs(30), 10)
        .await
        .unwrap()
        .messages;
    assert!(still_held.is_empty(), "{still_held:?}");
    store
        .release_outbox("relay-a", &[first[1].id])
        .await
        .unwrap();
    let released = store
        .claim_outbox("relay-c", now, Duration::from_secs(30), 10)
        .await
        .unwrap()
        .messages;
    assert_eq!(
        released.iter().map(|m| m.id).collect::<Vec<_>>(),
        [first[1].id]
    );

    store
        .delete_outbox(&first.iter().map(|m| m.id).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), 1);
    let after_lapse = store
        .claim_outbox(
            "relay-a",
            now + chrono::Duration::seconds(31),
            Duration::from_secs(30),
            10,
        )
        .await
        .unwrap()
        .messages;
    assert_eq!(
        after_lapse.iter().map(|m| m.id).collect::<Vec<_>>(),
        [second[0].id]
    );
}

async fn list_filters_and_orders_newest_first(store: Arc<dyn SagaStore>) {
    let sagas: Vec<NewSaga> = (0..5).map(|i| new_saga(&format!("l-{i}"), None)).collect();
    store.create(&sagas).await.unwrap();

    let all = store
        .list(&ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = all.iter().map(|s| s.saga_id).collect();
    let mut newest_first: Vec<_> = sagas.iter().map(|n| n.saga.saga_id).collect();
    newest_first.reverse();
    assert_eq!(ids, newest_first);
    // Listings do not read payloads (up to MAX_MESSAGE_BYTES each); one saga does.
    assert!(all.iter().all(|s| s.payload.is_empty()));
    let full = store.get(ids[0]).await.unwrap().expect("stored");
    assert_eq!(full.payload["name"], "N");

    let page = store
        .list(&ListQuery {
            limit: 2,
            before: Some(ids[1]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|s| s.saga_id).collect::<Vec<_>>(),
        ids[2..4]
    );

    let one = store
        .list(&ListQuery {
            partner_id: Some("p-l-3".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    let by_state = store
        .list(&ListQuery {
            state: Some(SagaState::CreatingAlliance),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_state.len(), 5);
    let counts = store.count_by_state().await.unwrap();
    assert_eq!(counts, [(SagaState::CreatingAlliance, 5)]);
}

mod postgres_store_holds {
    #[tokio::test]
    async fn held_rows_are_the_writers_until_their_hold_lapses() {
        super::held_rows_are_the_writers_until_their_hold_lapses(super::postgres().await, true)
            .await
    }
}

mod sqlite_store_holds {
    #[tokio::test]
    async fn held_rows_are_the_writers_until_their_hold_lapses() {
        super::held_rows_are_the_writers_until_their_hold_lapses(super::sqlite().await, false).await
    }
}

/// Rows written held come back with their ids, one per message of each
/// new saga or applied write in order, and no claim takes them before the
/// hold lapses; a store that cannot hold (`holds` false) says so and
/// leaves them to any claim at once.
async fn held_rows_are_the_writers_until_their_hold_lapses(store: Arc<dyn SagaStore>, holds: bool) {
    let now = Utc::now();
    let hold = OutboxHold {
        owner: "relay-a".into(),
        until: now + chrono::Duration::seconds(5),
    };
    let mut news = vec![new_saga("h-1", None), new_saga("h-2", None)];
    store.create(&news[1..]).await.unwrap();
    let (created, held) = store.create_held(&news, Some(&hold)).await.unwrap();
    assert!(matches!(created[0], Created::New(_)) && matches!(created[1], Created::Duplicate(_)));
    // A batch that met a duplicate gives its rows to the claim at once.
    assert!(!held.is_held(), "{held:?}");
    let first = store
        .claim_outbox("relay-b", now, Duration::from_secs(30), 10)
        .await
        .unwrap()
        .messages;
    assert_eq!(
        first.len(),
        2,
        "h-2's from the plain create, h-1's given back"
    );
    store
        .delete_outbox(&first.iter().map(|m| m.id).collect::<Vec<_>>())
        .await
        .unwrap();

    news.push(new_saga("h-3", None));
    let (_, held) = store.create_held(&news[2..], Some(&hold)).await.unwrap();
    let mut writes: Vec<TransitionWrite> = news[1..]
        .iter()
        .map(|n| {
            let mut w = transition(&n.saga, Input::DeadlinePassed, None);
            let event = Envelope::new(EventType::SagaCompensating, "c", None, None, Map::new());
            w.outbox = vec![
                OutboxMessage::new("events", event.clone()),
                OutboxMessage::new(
                    "events",
                    Envelope {
                        event_id: format!("{}-2", event.event_id),
                        ..event
                    },
                ),
            ];
            w
        })
        .collect();
    // h-2's saga moved: its write is stale and writes nothing.
    writes[0].expected_version += 5;
    let (applied, held_writes) = store.commit_batch_held(&writes, Some(&hold)).await.unwrap();
    assert_eq!(applied, [false, true]);
    // A batch of one is written by the single-transition statement.
    let mut single = transition(
        &writes[1].saga,
        Input::StepSucceeded {
            step: Step::DeletePartner,
            alliance_id: None,
            detail: None,
        },
        None,
    );
    let event = Envelope::new(EventType::SagaCompensated, "c", None, None, Map::new());
    single.outbox = vec![OutboxMessage::new("events", event)];
    let (applied, held_single) = store
        .commit_batch_held(std::slice::from_ref(&single), Some(&hold))
        .await
        .unwrap();
    assert_eq!(applied, [true]);
    let expected_events: Vec<String> = news[2]
        .outbox
        .iter()
        .chain(&writes[1].outbox)
        .chain(&single.outbox)
        .map(|m| m.envelope.event_id.clone())
        .collect();
    let mut mine = Vec::new();
    for (held, mut outbox) in [
        (&held, news[2].outbox.clone()),
        (&held_writes, writes[1].outbox.clone()),
        (&held_single, single.outbox.clone()),
    ] {
        assert_eq!(held.is_held(), holds, "{held:?}");
        mine.extend(held.assign([&mut outbox]).unwrap_or_default());
    }

    let before_lapse = store
        .claim_outbox("relay-b", now, Duration::from_secs(30), 10)
        .await
        .unwrap()
        .messages;
    // Only the holder gives held rows back.
    let mut not_given_back = Vec::new();
    if holds {
        store.release_all_outbox("relay-b").await.unwrap();
        not_given_back = store
            .claim_outbox("relay-c", now, Duration::from_secs(30), 10)
            .await
            .unwrap()
            .messages;
    }
    let after_lapse = store
        .claim_outbox(
            "relay-b",
            hold.until + chrono::Duration::seconds(1),
            Duration::from_secs(30),
            10,
        )
        .await
        .unwrap()
        .messages;
    let events = |ms: &[OutboxMessage]| {
        ms.iter()
            .map(|m| m.envelope.event_id.clone())
            .collect::<Vec<_>>()
    };
    if holds {
        assert!(
            before_lapse.is_empty(),
            "held rows claimed by another: {before_lapse:?}"
        );
        assert_eq!(events(&mine), expected_events);
        // The ids are the rows': what the claim finds once the hold lapses.
        let ids = |ms: &[OutboxMessage]| ms.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(&after_lapse), ids(&mine));
        assert_eq!(events(&after_lapse), expected_events);
        assert!(not_given_back.is_empty(), "{not_given_back:?}");
    } else {
        assert_eq!(events(&before_lapse), expected_events);
        assert!(after_lapse.is_empty());
    }
    // Whoever claims them now (relay-b) gives them all back at once.
    store.release_all_outbox("relay-b").await.unwrap();
    let given_back = store
        .claim_outbox("relay-c", now, Duration::from_secs(30), 10)
        .await
        .unwrap()
        .messages;
    assert_eq!(events(&given_back), expected_events);

    // The holder gives back what it holds before the hold lapses.
    let late = new_saga("h-4", None);
    let (_, held_late) = store
        .create_held(std::slice::from_ref(&late), Some(&hold))
        .await
        .unwrap();
    assert_eq!(held_late.is_held(), holds);
    assert_eq!(store.holds_outbox(), holds);
    store.release_all_outbox("relay-a").await.unwrap();
    let released = store
        .claim_outbox("relay-c", now, Duration::from_secs(30), 10)
        .await
        .unwrap()
        .messages;
    assert_eq!(events(&released), events(&late.outbox));
}

/// Broker mode folds a saga's command and replies into one write: each
/// decision keeps its history row, written alone or in a batch.
async fn a_write_of_several_decisions_keeps_a_history_row_for_each(store: Arc<dyn SagaStore>) {
    let news: Vec<NewSaga> = (0..3)
        .map(|i| new_saga(&format!("e-fold-{i}"), None))
        .collect();
    store.create(&news).await.unwrap();
    let reply = |status| Input::Replied {
        reply: Reply {
            step: Step::CreateAlliance,
            attempt: Some(1),
            status,
        },
        reply_by: Utc::now() + chrono::Duration::seconds(60),
    };
    let round_trip = || {
        [
            Input::CommandSent {
                step: Step::CreateAlliance,
                reply_by: Utc::now() + chrono::Duration::seconds(60),
            },
            reply(ReplyStatus::Started),
            reply(ReplyStatus::Completed {
                alliance_id: Some("a-fold".into()),
            }),
        ]
    };
    let alone = folded(&news[0].saga, &round_trip(), None);
    assert!(store.commit(&alone).await.unwrap());
    let batch = [
        folded(&news[1].saga, &round_trip(), None),
        transition(&news[2].saga, alliance_created(), None),
    ];
    assert_eq!(store.commit_batch(&batch).await.unwrap(), [true, true]);

    let folded_reasons = [
        "partner_created",
        "alliance_requested",
        "command_sent",
        "participant_started",
        "alliance_created",
    ];
    let single_reasons = ["partner_created", "alliance_requested", "alliance_created"];
    for (new, reasons) in news
        .iter()
        .zip([&folded_reasons[..], &folded_reasons, &single_reasons])
    {
        let id = new.saga.saga_id;
        let stored = store.get(id).await.unwrap().expect("stored");
        assert_eq!(stored.state, SagaState::Completed);
        let history = store.history(id).await.unwrap();
        let stored_reasons: Vec<&str> = history.iter().map(|h| h.reason.as_str()).collect();
        assert_eq!(stored_reasons, reasons);
        let seqs: Vec<i32> = history.iter().map(|h| h.seq).collect();
        let expected: Vec<i32> = (1..=stored.version).collect();
        assert_eq!(seqs, expected, "one row per version");
    }
}

async fn a_batch_of_transitions_commits_each_and_refuses_the_stale(store: Arc<dyn SagaStore>) {
    let news: Vec<NewSaga> = (0..5)
        .map(|i| new_saga(&format!("e-batch-{i}"), None))
        .collect();
    store.create(&news).await.unwrap();
    let done = |saga: &Saga| {
        transition(
            saga,
            Input::StepSucceeded {
                step: Step::CreateAlliance,
                alliance_id: Some("a-b".into()),
                detail: None,
            },
            None,
        )
    };
    let mut writes: Vec<TransitionWrite> = news.iter().map(|n| done(&n.saga)).collect();
    // The last one was decided on a version that has since moved.
    let moved = done(&news[4].saga);
    assert!(store.commit(&moved).await.unwrap());
    writes[4] = transition(
        &news[4].saga,
        Input::StepRejected {
            step: Step::CreateAlliance,
            error: "late".into(),
        },
        None,
    );

    let applied = store.commit_batch(&writes).await.unwrap();
    assert_eq!(applied, [true, true, true, true, false]);
    for new in &news {
        let stored = store.get(new.saga.saga_id).await.unwrap().unwrap();
        assert_eq!(stored.state, SagaState::Completed, "{}", new.saga.event_id);
        // Two rows from creation, one from the transition; none from the stale write.
        assert_eq!(store.history(new.saga.saga_id).await.unwrap().len(), 3);
    }
}

/// An operator and a driver may write one saga in the same group commit:
/// one of them wins, as if they had come one after the other, and the
/// outbox keeps the batch's order (each saga's messages in theirs).
async fn one_saga_twice_in_a_batch_applies_once_and_messages_keep_batch_order(
    store: Arc<dyn SagaStore>,
) {
    let news: Vec<NewSaga> = ["e-twice-a", "e-twice-b"]
        .iter()
        .map(|e| new_saga(e, None))
        .collect();
    store.create(&news).await.unwrap();
    let first = store
        .claim_outbox("relay", Utc::now(), Duration::from_secs(30), 100)
        .await
        .unwrap();
    let ids: Vec<i64> = first.messages.iter().map(|m| m.id).collect();
    store.delete_outbox(&ids).await.unwrap();
    let with_messages = |mut write: TransitionWrite, names: &[&str]| {
        for name in names {
            let mut envelope = Envelope::new(
                EventType::SagaStarted,
                write.saga.correlation_id.clone(),
                Some(write.saga.saga_id),
                None,
                Map::new(),
            );
            envelope.event_id = (*name).into();
            write.outbox.push(OutboxMessage::new("events", envelope));
        }
        write
    };
    let (a, b) = (&news[0].saga, &news[1].saga);
    let succeeded = Input::StepSucceeded {
        step: Step::CreateAlliance,
        alliance_id: None,
        detail: None,
    };
    let rejected = Input::StepRejected {
        step: Step::CreateAlliance,
        error: "no".into(),
    };
    let writes = vec![
        with_messages(transition(a, succeeded.clone(), None), &["a1", "a2"]),
        with_messages(transition(b, succeeded, None), &["b1"]),
        with_messages(transition(a, rejected, None), &["a3"]),
    ];

    let applied = store.commit_batch(&writes).await.unwrap();
    assert!(applied[1], "{applied:?}");
    assert!(
        applied[0] ^ applied[2],
        "exactly one write of saga a: {applied:?}"
    );
    assert_eq!(store.history(a.saga_id).await.unwrap().len(), 3);
    let claim = store
        .claim_outbox("relay", Utc::now(), Duration::from_secs(30), 100)
        .await
        .unwrap();
    let order: Vec<&str> = claim
        .messages
        .iter()
        .map(|m| m.envelope.event_id.as_str())
        .collect();
    let expected: &[&str] = if applied[0] {
        &["a1", "a2", "b1"]
    } else {
        &["b1", "a3"]
    };
    assert_eq!(order, expected);
}

async fn a_row_that_cannot_be_read_does_not_fail_the_claim(store: Arc<dyn SagaStore>, db: Db) {
    store.create(&[new_saga("q-1", None)]).await.unwrap();
    let not_envelope = db
        .insert_outbox("events", r#"{"hello": "not an envelope"}"#)
        .await;
    let (long_id, long) = long_correlation_event("p-long");
    let long_row = db.insert_outbox("events", &long.to_string()).await;
    let mut bad = vec![not_envelope];
    if matches!(db, Db::Sqlite(_)) {
        // Only SQLite's TEXT column can hold what is not JSON at all.
        bad.push(db.insert_outbox("events", "{not json").await);
    }
    // JSON the database holds but serde cannot read (a number beyond f64):
    // a hand edit's, and it fails only its own row.
    bad.push(db.insert_outbox("events", r#"{"n": 1e400}"#).await);
    store.create(&[new_saga("q-2", None)]).await.unwrap();

    let now = Utc::now();
    let claim = store
        .claim_outbox("relay", now, Duration::from_secs(30), 10)
        .await
        .expect("one bad row does not fail the claim");
    assert_eq!(claim.messages.len(), 3, "{claim:?}");
    assert!(claim.messages.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(claim.messages[1].id, long_row);
    assert_eq!(
        claim.messages[1].envelope.correlation_id, long_id,
        "what was stored is read back as it was"
    );
    let faults: Vec<i64> = claim.unreadable.iter().map(|f| f.id).collect();
    assert_eq!(faults, bad);
    assert!(claim.unreadable[0].reason.contains("event_id"), "{claim:?}");
    if let Some(not_json) = claim.unreadable.get(1) {
        assert!(not_json.reason.contains("invalid JSON"), "{not_json:?}");
    }

    // Parked: out of the queue and the backlog, kept as stored with why.
    let parked = store
        .park_outbox("relay", &claim.unreadable, now)
        .await
        .unwrap();
    assert_eq!(parked, bad.len() as u64);
    assert_eq!(store.outbox_backlog().await.unwrap(), 3);
    assert_eq!(store.outbox_parked().await.unwrap(), bad.len() as i64);
    let rows = db.parked().await;
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), bad);
    assert!(rows[0].message.contains("not an envelope"), "{rows:?}");
    assert_eq!(rows[0].reason, claim.unreadable[0].reason);
    assert_eq!(rows[0].attempts, 0);
    assert_eq!(
        store
            .park_outbox("relay", &claim.unreadable, now)
            .await
            .unwrap(),
        0,
        "parking again does nothing"
    );
    let later = now + chrono::Duration::seconds(31);
    let again = store
        .claim_outbox("relay", later, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert!(again.unreadable.is_empty(), "{again:?}");
    assert_eq!(again.messages.len(), 3);
}

async fn failed_attempts_are_counted_and_parking_keeps_them(store: Arc<dyn SagaStore>, db: Db) {
    store
        .create(&[new_saga("f-1", None), new_saga("f-2", None)])
        .await
        .unwrap();
    let now = Utc::now();
    let claim = store
        .claim_outbox("relay", now, Duration::from_secs(30), 10)
        .await
        .unwrap();
    let (refused, other) = (claim.messages[0].id, claim.messages[1].id);

    for n in 1..=3 {
        let error = format!("refused, attempt {n}");
        assert_eq!(
            store
                .record_outbox_failure("relay", refused, &error)
                .await
                .unwrap(),
            n
        );
    }
    assert_eq!(
        store
            .record_outbox_failure("relay", i64::MAX, "gone")
            .await
            .unwrap(),
        0,
        "a row that is gone has no attempts"
    );
    let fault = OutboxFault {
        id: refused,
        reason: "the broker refused the message: too large".into(),
    };
    assert_eq!(store.park_outbox("relay", &[fault], now).await.unwrap(), 1);
    let rows = db.parked().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, refused);
    assert_eq!(rows[0].channel, "events");
    assert_eq!(rows[0].attempts, 3);
    assert_eq!(rows[0].reason, "the broker refused the message: too large");
    let stored: serde_json::Value = serde_json::from_str(&rows[0].message).unwrap();
    assert_eq!(
        stored["event_id"], claim.messages[0].envelope.event_id,
        "the message is kept as stored"
    );

    store.release_outbox("relay", &[other]).await.unwrap();
    let rest = store
        .claim_outbox("relay", now, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(
        rest.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [other]
    );
    assert_eq!(store.outbox_backlog().await.unwrap(), 1);
    assert_eq!(store.outbox_parked().await.unwrap(), 1);
}
