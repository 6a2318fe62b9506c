//! Planner statistics for a young `sagas` table.
//!
//! Each pooled connection prepares the store's statements once and, after
//! a few executions, PostgreSQL caches a generic plan for each. On a new
//! database those plans are made while `sagas` holds a few hundred rows, so
//! the batched transition's `UPDATE … FROM UNNEST` becomes a hash join over
//! a sequential scan of `sagas`, and stays one until something invalidates
//! it. Every write then reads the whole table: a fresh database under load
//! got slower with every saga it recorded (20,000 sagas: 3,049 sequential
//! scans of `sagas` in one run, against 82 when the plan was made later).
//! Autovacuum's `ANALYZE` invalidates those plans, but only after its
//! nap (a minute by default) and a tenth of the table changed.
//!
//! So the store asks for that `ANALYZE` itself, and only when `sagas` has
//! far outgrown what its statistics say: more than twice the pages, and
//! more than [`MIN_GROWTH_PAGES`] beyond them. That is a handful of times
//! in a table's youth (at each doubling while autovacuum lags behind), and
//! never once autovacuum keeps up, since it analyses at a tenth's growth.

use std::time::Duration;

use sqlx::PgPool;

use crate::store::{Reanalyzed, StoreError};

/// How often the store checks whether `sagas` outgrew its statistics:
/// often enough to catch a young table within its first few thousand
/// sagas; the check reads two numbers of `pg_class`.
pub(super) const INTERVAL: Duration = Duration::from_secs(1);

/// Pages (8 KiB) the table must grow beyond its statistics before it is
/// analysed: below a few hundred sagas a sequential scan is the right plan
/// anyway.
pub(super) const MIN_GROWTH_PAGES: i64 = 64;

/// SQLSTATE of a lock not granted within `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The table's size on disk and the size its statistics were taken at
/// (`relpages`: 0 until the first `ANALYZE` or `VACUUM`), in pages.
const SIZES: &str =
    "SELECT pg_relation_size(c.oid) / current_setting('block_size')::int8 AS pages, \
        c.relpages::int8 AS planned \
     FROM pg_class c WHERE c.oid = 'sagas'::regclass";

/// Whether a table of `pages` has outgrown statistics taken at `planned`.
pub(super) fn outgrown(pages: i64, planned: i64) -> bool {
    let planned = planned.max(0);
    pages > planned.saturating_mul(2) && pages - planned > MIN_GROWTH_PAGES
}

/// Analyses `sagas` if it has outgrown its statistics; says so, and
/// whether the statistics took (an `ANALYZE` by a role that may not
/// maintain the table is skipped with only a warning). `None` too when
/// another session holds a lock in the way (another instance's `ANALYZE`,
/// a `VACUUM`, a migration's DDL): the next check sees what that did.
pub(super) async fn refresh(pool: &PgPool) -> Result<Option<Reanalyzed>, StoreError> {
    match bounded_refresh(pool).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
            Ok(None)
        }
        done => Ok(done?),
    }
}

/// The check in one transaction whose statements are bounded on the
/// server: one the caller gave up on would otherwise go on holding one of
/// the writers' connections.
async fn bounded_refresh(pool: &PgPool) -> Result<Option<Reanalyzed>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "SELECT set_config('lock_timeout', '1s', true), \
            set_config('statement_timeout', '20s', true)",
    )
    .execute(&mut *tx)
    .await?;
    let (pages, planned): (i64, i64) = sqlx::query_as(SIZES).fetch_one(&mut *tx).await?;
    if !outgrown(pages, planned) {
        return Ok(None);
    }
    sqlx::query("ANALYZE sagas").execute(&mut *tx).await?;
    // ANALYZE writes relpages in place: seen at once, also in here.
    let (_, now_planned): (i64, i64) = sqlx::query_as(SIZES).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(Some(Reanalyzed {
        pages,
        planned_pages: planned,
        took: !outgrown(pages, now_planned),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_table_is_never_analysed_whatever_its_statistics_say() {
        assert!(!outgrown(0, 0));
        assert!(!outgrown(MIN_GROWTH_PAGES, 0));
        assert!(!outgrown(MIN_GROWTH_PAGES, -1));
        assert!(outgrown(MIN_GROWTH_PAGES + 1, 0));
    }

    #[test]
    fn a_table_is_analysed_once_it_doubled_past_its_statistics() {
        assert!(!outgrown(2_000, 1_000));
        assert!(outgrown(2_001, 1_000));
        // Growth autovacuum keeps up with (a tenth) never asks for one.
        assert!(!outgrown(1_100, 1_000));
        // Nor does a table that shrank.
        assert!(!outgrown(10, 1_000));
    }

    #[test]
    fn sizes_beyond_any_table_do_not_overflow() {
        assert!(!outgrown(i64::MAX, i64::MAX));
        assert!(outgrown(i64::MAX, 1));
    }
}
