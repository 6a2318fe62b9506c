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

/// Sagas by state and the outbox backlog, as of `COUNTS_TTL` ago at most.
#[derive(Debug, Clone, Default)]
pub struct StoreCounts {
    pub by_state: Vec<(SagaState, i64)>,
    pub outbox_backlog: i64,
}

/// The latest counts and when they were taken.
#[derive(Debug, Default)]
pub struct CountsCache {
    latest: Mutex<Option<(Instant, StoreCounts)>>,
}

impl CountsCache {
    /// Fresh enough counts; requests that arrive while they are being
    /// taken wait for that one query instead of starting their own.
    pub async fn get(&self, store: &dyn SagaStore) -> Result<StoreCounts, StoreError> {
        let mut latest = self.latest.lock().await;
        if let Some((at, counts)) = latest.as_ref() {
            if at.elapsed() < COUNTS_TTL {
                return Ok(counts.clone());
            }
        }
        let counts = StoreCounts {
            by_state: store.count_by_state().await?,
            outbox_backlog: store.outbox_backlog().await?,
        };
        *latest = Some((Instant::now(), counts.clone()));
        Ok(counts)
    }
}
