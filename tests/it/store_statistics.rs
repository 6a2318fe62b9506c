//! The PostgreSQL store refreshes the planner's statistics of `sagas` once
//! the table has far outgrown them (`SagaStore::refresh_statistics`), and
//! only then; a role that may not analyse the table is told, not retried.

use saga_orchestrator::store::{PostgresStore, SagaStore};
use secrecy::SecretString;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::helpers::fresh_database;

/// A migrated store whose `sagas` autovacuum leaves alone, so that only
/// the store analyses it while the test looks.
async fn migrated_store(url: &str) -> PostgresStore {
    let store = PostgresStore::connect(&SecretString::from(url.to_string()), 2)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::query("ALTER TABLE sagas SET (autovacuum_enabled = off)")
        .execute(&mut conn)
        .await
        .expect("autovacuum off");
    store
}

/// Appends `n` completed sagas by hand, each with a payload of about
/// 300 bytes, as a burst of new sagas would grow the table.
async fn grow_sagas(url: &str, n: i32) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::query(
        "INSERT INTO sagas (saga_id, event_id, correlation_id, partner_id, state, step, attempts, \
            payload, created_at, updated_at, deadline_at, version) \
         SELECT id, 'evt-' || id, 'corr-' || id, 'partner-' || id, 'completed', 'create_alliance', \
            0, jsonb_build_object('name', repeat('x', 300)), now(), now(), now(), 2 \
         FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $1)) AS new",
    )
    .bind(n)
    .execute(&mut conn)
    .await
    .expect("grow sagas");
}

#[tokio::test]
async fn sagas_is_analysed_once_it_outgrew_its_statistics_and_not_again() {
    let url = fresh_database().await;
    let store = migrated_store(&url).await;
    assert!(store.statistics_interval().is_some());

    grow_sagas(&url, 100).await;
    assert_eq!(
        store.refresh_statistics().await.expect("check"),
        None,
        "a few pages are left to autovacuum"
    );

    grow_sagas(&url, 5_000).await;
    let done = store
        .refresh_statistics()
        .await
        .expect("check")
        .expect("5,000 sagas outgrow statistics of an empty table");
    assert!(done.took, "{done:?}");
    assert_eq!(done.planned_pages, 0, "{done:?}");
    assert!(done.pages > 100, "{done:?}");

    assert_eq!(
        store.refresh_statistics().await.expect("check"),
        None,
        "the statistics now match the table"
    );
}

#[tokio::test]
async fn a_role_that_may_not_analyse_sagas_is_told_so() {
    let url = fresh_database().await;
    migrated_store(&url).await;
    grow_sagas(&url, 5_000).await;

    let role = format!("reader_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&url).await.expect("connect");
    for statement in [
        format!("CREATE ROLE {role} LOGIN PASSWORD 'reader'"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(&statement)
            .execute(&mut admin)
            .await
            .expect("set up the role");
    }
    let mut as_role = url::Url::parse(&url).expect("url");
    as_role.set_username(&role).expect("user");
    as_role.set_password(Some("reader")).expect("password");
    let store = PostgresStore::connect(&SecretString::from(as_role.to_string()), 2)
        .await
        .expect("connect as the role");

    let done = store.refresh_statistics().await;

    // Roles belong to the whole cluster: dropped before any assertion.
    drop(store);
    for statement in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(&statement)
            .execute(&mut admin)
            .await
            .expect("drop the role");
    }
    let done = done
        .expect("a refused ANALYZE is a warning, not an error")
        .expect("the table outgrew its statistics");
    assert!(!done.took, "{done:?}");
}

#[tokio::test]
async fn an_analyze_another_session_holds_up_is_left_for_the_next_check() {
    let url = fresh_database().await;
    let store = migrated_store(&url).await;
    grow_sagas(&url, 5_000).await;

    // What another instance's ANALYZE, or a VACUUM, holds while it runs.
    let mut other = PgConnection::connect(&url).await.expect("connect");
    let mut held = other.begin().await.expect("begin");
    sqlx::query("LOCK TABLE sagas IN SHARE UPDATE EXCLUSIVE MODE")
        .execute(&mut *held)
        .await
        .expect("lock");
    let check = tokio::time::timeout(Duration::from_secs(15), store.refresh_statistics())
        .await
        .expect("the store's lock timeout ends the wait");
    assert_eq!(check.expect("not an error"), None);
    held.rollback().await.expect("release");

    let done = store.refresh_statistics().await.expect("check");
    assert!(done.is_some_and(|d| d.took), "{done:?}");
}
