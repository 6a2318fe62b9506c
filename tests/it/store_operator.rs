//! The operator tables' store contract (`OperatorStore`), each case run on
//! PostgreSQL and SQLite by `on_both!` in `store.rs`: dead letters indexed
//! once and taken once, jobs idempotent by body key, leased to one owner,
//! each item counted once.

use std::sync::Arc;

use chrono::{Duration, Utc};
use saga_orchestrator::store::operator::{
    AuditEntry, DeadLetterQuery, DeadLetterRecord, ItemOutcome, JobKind, JobState, LetterAction,
    LetterState, NewJob, Taken,
};
use saga_orchestrator::store::SagaStore;
use serde_json::json;
use uuid::Uuid;

fn letter(id: &str, channel: &str, reason: &str) -> DeadLetterRecord {
    DeadLetterRecord {
        id: id.into(),
        channel: channel.into(),
        message_id: id.into(),
        source_channel: channel.trim_end_matches("-dlq").into(),
        dlq_reason: reason.into(),
        failed_at: Utc::now(),
        raw: r#"{"form":"fields","fields":[["event_id","e\u0000"]]}"#.into(),
    }
}

fn audit(action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: Utc::now(),
        actor: "alice".into(),
        action: action.into(),
        target: target.into(),
        reason: "why".into(),
        detail: Some(json!({"n": 1})),
    }
}

pub async fn dead_letters_are_indexed_once_and_taken_once(store: Arc<dyn SagaStore>) {
    let now = Utc::now();
    let first = [
        letter("a.1-0", "a-dlq", "too big\0"),
        letter("a.2-0", "a-dlq", "bad JSON"),
    ];
    assert_eq!(store.index_dead_letters(&first, now).await.unwrap(), 2);
    let again = [
        letter("a.2-0", "a-dlq", "bad JSON"),
        letter("b.1-0", "b-dlq", "bad JSON"),
    ];
    assert_eq!(
        store.index_dead_letters(&again, now).await.unwrap(),
        1,
        "a redelivery is not new"
    );

    let query = |channel: Option<&str>, reason: Option<&str>| DeadLetterQuery {
        channel: channel.map(str::to_string),
        reason_contains: reason.map(str::to_string),
        limit: 10,
        ..DeadLetterQuery::default()
    };
    let ids = |letters: Vec<saga_orchestrator::store::operator::StoredDeadLetter>| -> Vec<String> {
        letters.into_iter().map(|l| l.record.id).collect()
    };
    assert_eq!(
        ids(store.dead_letters(&query(None, None)).await.unwrap()),
        ["b.1-0", "a.2-0", "a.1-0"]
    );
    // A bulk job's targets: the same selection, ids alone.
    assert_eq!(
        store
            .dead_letter_ids(&query(Some("a-dlq"), None))
            .await
            .unwrap(),
        ["a.2-0", "a.1-0"]
    );
    assert_eq!(
        ids(store
            .dead_letters(&query(Some("a-dlq"), Some("JSON")))
            .await
            .unwrap()),
        ["a.2-0"]
    );

    let take = |id: &str, to| LetterAction {
        id: id.into(),
        to,
        job_id: None,
        audit: audit("dead_letter.redrive", id),
    };
    let Taken::Taken(taken) = store
        .take_dead_letter(&take("a.1-0", LetterState::Redriving))
        .await
        .unwrap()
    else {
        panic!("a pending letter is taken")
    };
    assert_eq!(taken.state, LetterState::Redriving);
    assert_eq!(taken.acted_by.as_deref(), Some("alice"));
    assert_eq!(
        store
            .take_dead_letter(&take("a.1-0", LetterState::Discarded))
            .await
            .unwrap(),
        Taken::Handled(LetterState::Redriving)
    );
    assert_eq!(
        store
            .take_dead_letter(&take("zz.9-0", LetterState::Discarded))
            .await
            .unwrap(),
        Taken::Missing
    );
    let cut_short = store
        .claim_unsettled_redrives(Utc::now() + Duration::seconds(1), Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!(ids(cut_short), ["a.1-0"]);
    store.settle_redrive("a.1-0", None).await.unwrap();
    assert!(store
        .claim_unsettled_redrives(Utc::now() + Duration::seconds(1), Utc::now(), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.dead_letter("a.1-0").await.unwrap().unwrap().state,
        LetterState::Redriven
    );
    assert_eq!(
        ids(store
            .dead_letters(&query(Some("a-dlq"), None))
            .await
            .unwrap()),
        ["a.2-0"]
    );

    let record = store.audit_log(None, 10).await.unwrap();
    assert_eq!(record.len(), 1, "only the taking is audited: {record:?}");
    assert_eq!(
        (record[0].actor.as_str(), record[0].detail.clone()),
        ("alice", Some(json!({"n": 1})))
    );
}

pub async fn jobs_are_one_per_body_leased_and_counted_once(store: Arc<dyn SagaStore>) {
    let job = NewJob {
        job_id: Uuid::now_v7(),
        body_key: "k-1".into(),
        kind: JobKind::SagaRetry,
        name: "incident".into(),
        reason: "healed".into(),
        actor: "alice".into(),
        body: json!({"max": 3}),
        targets: vec!["t0".into(), "t1".into(), "t2".into()],
        created_at: Utc::now(),
    };
    let created = store
        .create_job(&job, &audit("job.start", "j"))
        .await
        .unwrap()
        .expect("new");
    assert_eq!((created.matched, created.state), (3, JobState::Running));
    let twin = NewJob {
        job_id: Uuid::now_v7(),
        ..job.clone()
    };
    let existing = store
        .create_job(&twin, &audit("job.start", "j"))
        .await
        .unwrap()
        .expect_err("same body");
    assert_eq!(existing.job_id, job.job_id);

    let now = Utc::now();
    let lease = now + Duration::seconds(10);
    assert!(store.claim_job("a", now, lease).await.unwrap().is_some());
    assert!(
        store.claim_job("b", now, lease).await.unwrap().is_none(),
        "leased to a"
    );
    assert!(!store.renew_job(job.job_id, "b", lease).await.unwrap());
    assert!(store.renew_job(job.job_id, "a", lease).await.unwrap());
    assert!(
        store
            .claim_job("b", lease + Duration::seconds(1), lease)
            .await
            .unwrap()
            .is_some(),
        "a lapsed lease"
    );

    let items = store.open_items(job.job_id, 10).await.unwrap();
    assert_eq!(
        items,
        [(0, "t0".to_string()), (1, "t1".into()), (2, "t2".into())]
    );
    for _ in 0..2 {
        store
            .settle_item(job.job_id, 0, ItemOutcome::Done, None, now)
            .await
            .unwrap();
    }
    store
        .settle_item(job.job_id, 1, ItemOutcome::Skipped, Some("gone"), now)
        .await
        .unwrap();
    store
        .settle_item(job.job_id, 2, ItemOutcome::Error, Some("no"), now)
        .await
        .unwrap();
    let counted = store.job(job.job_id).await.unwrap().unwrap();
    assert_eq!((counted.done, counted.skipped, counted.errors), (1, 1, 1));
    assert!(store.open_items(job.job_id, 10).await.unwrap().is_empty());
    store
        .finish_job(job.job_id, "b", JobState::Done, now)
        .await
        .unwrap();
    let (done, stopped) = store
        .abort_job(job.job_id, &audit("job.abort", "j"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((done.state, stopped), (JobState::Done, false));
    assert!(store
        .abort_job(Uuid::now_v7(), &audit("job.abort", "x"))
        .await
        .unwrap()
        .is_none());
}

/// A redrive left `redriving` is claimed by one runner of however many
/// look at once: the claim moves its `acted_at` on, so a second (another
/// instance's, or the same one's next round) finds nothing to resend
/// until that claim lapses in turn.
pub async fn an_unsettled_redrive_is_claimed_once(store: Arc<dyn SagaStore>) {
    store
        .index_dead_letters(&[letter("c.1-0", "c-dlq", "why")], Utc::now())
        .await
        .unwrap();
    let take = LetterAction {
        id: "c.1-0".into(),
        to: LetterState::Redriving,
        job_id: None,
        audit: audit("dead_letter.redrive", "c.1-0"),
    };
    assert!(matches!(
        store.take_dead_letter(&take).await.unwrap(),
        Taken::Taken(_)
    ));
    let lapsed = Utc::now() + Duration::seconds(1);
    let (a, b) = tokio::join!(
        store.claim_unsettled_redrives(lapsed, Utc::now() + Duration::seconds(2), 10),
        store.claim_unsettled_redrives(lapsed, Utc::now() + Duration::seconds(2), 10),
    );
    let claimed = a.unwrap().len() + b.unwrap().len();
    assert_eq!(claimed, 1, "two runners resend one letter once");
    let later = store
        .claim_unsettled_redrives(lapsed, Utc::now() + Duration::seconds(2), 10)
        .await
        .unwrap();
    assert!(later.is_empty(), "claimed: not resent before it lapses");
}

/// A redrive whose publish failed puts the letter back as it was before:
/// pending, and nobody named as having acted on it.
pub async fn a_failed_redrive_leaves_no_actor(store: Arc<dyn SagaStore>) {
    store
        .index_dead_letters(&[letter("d.1-0", "d-dlq", "why")], Utc::now())
        .await
        .unwrap();
    let take = LetterAction {
        id: "d.1-0".into(),
        to: LetterState::Redriving,
        job_id: None,
        audit: audit("dead_letter.redrive", "d.1-0"),
    };
    assert!(matches!(
        store.take_dead_letter(&take).await.unwrap(),
        Taken::Taken(_)
    ));
    let failed = AuditEntry {
        detail: Some(json!({"error": "broker down"})),
        ..audit("dead_letter.redrive_failed", "d.1-0")
    };
    store.settle_redrive("d.1-0", Some(&failed)).await.unwrap();
    let back = store.dead_letter("d.1-0").await.unwrap().unwrap();
    assert_eq!(back.state, LetterState::Pending);
    assert_eq!(
        (back.acted_by, back.action_reason, back.acted_at),
        (None, None, None)
    );
    let record = store.audit_log(None, 10).await.unwrap();
    assert_eq!(
        record.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["dead_letter.redrive_failed", "dead_letter.redrive"],
        "the failure is on record after the attempt"
    );
}
