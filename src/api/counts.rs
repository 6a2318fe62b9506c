//! Store-wide counts for `/metrics` and `/metrics/summary`, shared and
//! cached briefly: counting every saga is a scan of the table, which a
//! Prometheus scraper (or several, or a console polling) must not be able
//! to run on every request.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::saga::SagaState;
use crate::store::{SagaStore, StoreError};

/// How stale the counts may be.
pub const COUNTS_TTL: Duration = Duration::from_secs(2);

/// Sagas by state and the outbox (backlog, parked), as of `COUNTS_TTL`
/// ago at most.
#[derive(Debug, Clone, Default)]
pub struct StoreCounts {
    pub by_state: Vec<(SagaState, i64)>,
    pub outbox_backlog: i64,
    pub outbox_parked: i64,
}

/// How long counting may take before the scrape goes on without it.
const COUNT_TIMEOUT: Duration = Duration::from_secs(3);

/// The latest counts and when they were taken.
#[derive(Debug, Default)]
pub struct CountsCache {
    latest: Mutex<Latest>,
}

#[derive(Debug, Default)]
struct Latest {
    counts: Option<(Instant, StoreCounts)>,
    /// When counting last failed: for `COUNTS_TTL` requests fail at once
    /// instead of each waiting on a store that is down.
    failed_at: Option<Instant>,
}

impl CountsCache {
    /// Fresh enough counts; requests that arrive while they are being
    /// taken wait for that one query instead of starting their own.
    pub async fn get(&self, store: &dyn SagaStore) -> Result<StoreCounts, StoreError> {
        let mut latest = self.latest.lock().await;
        if let Some((at, counts)) = latest.counts.as_ref() {
            if at.elapsed() < COUNTS_TTL {
                return Ok(counts.clone());
            }
        }
        if latest.failed_at.is_some_and(|at| at.elapsed() < COUNTS_TTL) {
            return Err(StoreError::Unreachable(
                "counting sagas failed just now".into(),
            ));
        }
        let counted = tokio::time::timeout(COUNT_TIMEOUT, async {
            Ok::<_, StoreError>(StoreCounts {
                by_state: store.count_by_state().await?,
                outbox_backlog: store.outbox_backlog().await?,
                outbox_parked: store.outbox_parked().await?,
            })
        })
        .await
        .unwrap_or_else(|_| Err(StoreError::Unreachable("counting sagas timed out".into())));
        match counted {
            Ok(counts) => {
                latest.counts = Some((Instant::now(), counts.clone()));
                latest.failed_at = None;
                Ok(counts)
            }
            Err(e) => {
                latest.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn requests_within_the_lifetime_share_one_count() {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        store.migrate().await.expect("migrate");
        let cache = CountsCache::default();
        let first = cache.get(&store).await.expect("counts");
        assert!(first.by_state.is_empty());
        // The store changes; a request right after is served the shared count.
        sqlx::query("INSERT INTO outbox (channel, message, created_at) VALUES ('c', '{}', 0)")
            .execute(store.pool())
            .await
            .expect("insert");
        assert_eq!(cache.get(&store).await.expect("counts").outbox_backlog, 0);
        // Once it has aged, the store is counted again.
        cache.latest.lock().await.counts = Some((Instant::now() - COUNTS_TTL, first));
        assert_eq!(cache.get(&store).await.expect("counts").outbox_backlog, 1);
    }
}
