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

/// How long counting may take before the scrape (or page) goes on
/// without it.
pub const COUNT_TIMEOUT: Duration = Duration::from_secs(3);

/// One store read shared by every request for `ttl`: requests that arrive
/// while it is being taken wait for that one read instead of starting
/// their own, a read that outlasts `timeout` fails, and for `ttl` after a
/// failure requests fail at once instead of each waiting on a store that
/// is down.
#[derive(Debug)]
pub struct Shared<T> {
    ttl: Duration,
    timeout: Duration,
    latest: Mutex<Latest<T>>,
}

#[derive(Debug)]
struct Latest<T> {
    value: Option<(Instant, T)>,
    failed_at: Option<Instant>,
}

impl<T: Clone> Shared<T> {
    /// Reads kept for `ttl`, each allowed `timeout`.
    pub fn new(ttl: Duration, timeout: Duration) -> Self {
        Self {
            ttl,
            timeout,
            latest: Mutex::new(Latest {
                value: None,
                failed_at: None,
            }),
        }
    }

    /// The value read at most `ttl` ago, or `read`'s now; `what` names the
    /// read in its errors.
    pub async fn get<F>(&self, what: &str, read: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut latest = self.latest.lock().await;
        if let Some((at, value)) = latest.value.as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(value.clone());
            }
        }
        if latest.failed_at.is_some_and(|at| at.elapsed() < self.ttl) {
            return Err(StoreError::Unreachable(format!("{what} failed just now")));
        }
        let read = tokio::time::timeout(self.timeout, read)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unreachable(format!("{what} timed out"))));
        match read {
            Ok(value) => {
                latest.value = Some((Instant::now(), value.clone()));
                latest.failed_at = None;
                Ok(value)
            }
            Err(e) => {
                latest.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }
}

/// The latest counts and when they were taken.
#[derive(Debug)]
pub struct CountsCache(Shared<StoreCounts>);

impl Default for CountsCache {
    fn default() -> Self {
        Self(Shared::new(COUNTS_TTL, COUNT_TIMEOUT))
    }
}

impl CountsCache {
    /// Fresh enough counts, shared (see [`Shared`]).
    pub async fn get(&self, store: &dyn SagaStore) -> Result<StoreCounts, StoreError> {
        self.0
            .get("counting sagas", async {
                Ok(StoreCounts {
                    by_state: store.count_by_state().await?,
                    outbox_backlog: store.outbox_backlog().await?,
                    outbox_parked: store.outbox_parked().await?,
                })
            })
            .await
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
        cache.0.latest.lock().await.value = Some((Instant::now() - COUNTS_TTL, first));
        assert_eq!(cache.get(&store).await.expect("counts").outbox_backlog, 1);
    }
}
