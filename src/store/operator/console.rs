//! What the web console (`/ui`) reads beyond the API's queries: how many
//! dead letters wait on each channel, and sagas ended per minute for the
//! overview's chart. Both stores' statements are here, side by side.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::sqlite::{micros, time};
use crate::saga::SagaState;
use crate::store::rows::state_count;
use crate::store::{PostgresStore, SqliteStore, StoreError};

/// Sagas that reached one terminal state in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedInMinute {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// `completed`, `compensated` or `failed`.
    pub state: SagaState,
    /// How many sagas.
    pub count: i64,
}

/// The console's own reads.
#[async_trait]
pub trait ConsoleStore: Send + Sync {
    /// Pending dead letters per dead-letter channel; channels with none
    /// are absent.
    async fn dead_letter_depths(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// Sagas whose last change, at or after `since`, left them terminal,
    /// by minute and state, oldest minute first.
    async fn ended_per_minute(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<EndedInMinute>, StoreError>;
}

const DEPTHS: &str = "SELECT channel, count(*) AS n FROM dead_letters \
     WHERE state = 'pending' GROUP BY channel ORDER BY channel";

fn depth<R>(row: &R) -> Result<(String, i64), StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((row.try_get("channel")?, row.try_get("n")?))
}

#[async_trait]
impl ConsoleStore for PostgresStore {
    async fn dead_letter_depths(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(DEPTHS).fetch_all(self.pool()).await?;
        rows.iter().map(depth).collect()
    }

    async fn ended_per_minute(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<EndedInMinute>, StoreError> {
        let rows = sqlx::query(
            "SELECT date_trunc('minute', updated_at) AS minute, state, count(*) AS n \
             FROM sagas WHERE state IN ('completed', 'compensated', 'failed') \
             AND updated_at >= $1 GROUP BY 1, 2 ORDER BY 1",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let (state, count) = state_count(row)?;
                Ok(EndedInMinute {
                    minute: row.try_get("minute")?,
                    state,
                    count,
                })
            })
            .collect()
    }
}

/// A minute in SQLite's microseconds.
const MINUTE_MICROS: i64 = 60_000_000;

#[async_trait]
impl ConsoleStore for SqliteStore {
    async fn dead_letter_depths(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(DEPTHS).fetch_all(self.pool()).await?;
        rows.iter().map(depth).collect()
    }

    async fn ended_per_minute(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<EndedInMinute>, StoreError> {
        let rows = sqlx::query(
            "SELECT (updated_at / ?1) * ?1 AS minute, state, count(*) AS n \
             FROM sagas WHERE state IN ('completed', 'compensated', 'failed') \
             AND updated_at >= ?2 GROUP BY 1, 2 ORDER BY 1",
        )
        .bind(MINUTE_MICROS)
        .bind(micros(since))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let (state, count) = state_count(row)?;
                let minute: i64 = row.try_get("minute")?;
                Ok(EndedInMinute {
                    minute: time(uuid::Uuid::nil(), minute)?,
                    state,
                    count,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_counts_ended_sagas_by_minute_and_letters_by_channel() {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        crate::store::SagaStore::migrate(&store)
            .await
            .expect("migrate");
        let minute = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        for (i, (state, offset_secs)) in [
            ("completed", 5),
            ("completed", 50),
            ("failed", 70),
            ("creating_alliance", 10),
        ]
        .into_iter()
        .enumerate()
        {
            let at = micros(minute) + offset_secs * 1_000_000;
            sqlx::query(
                "INSERT INTO sagas (saga_id, event_id, correlation_id, partner_id, state, step, \
                 attempts, payload, created_at, updated_at, deadline_at, version) \
                 VALUES (?, ?, 'c', ?, ?, 'create_alliance', 1, '{}', ?, ?, ?, 1)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(format!("e{i}"))
            .bind(format!("p{i}"))
            .bind(state)
            .bind(at)
            .bind(at)
            .bind(at)
            .execute(store.pool())
            .await
            .expect("insert saga");
        }
        let ended = store.ended_per_minute(minute).await.expect("ended");
        let next = minute + chrono::Duration::minutes(1);
        assert_eq!(
            ended,
            vec![
                EndedInMinute {
                    minute,
                    state: SagaState::Completed,
                    count: 2
                },
                EndedInMinute {
                    minute: next,
                    state: SagaState::Failed,
                    count: 1
                },
            ]
        );
        assert!(store
            .ended_per_minute(next + chrono::Duration::minutes(1))
            .await
            .expect("ended")
            .is_empty());
        assert!(store.dead_letter_depths().await.expect("depths").is_empty());
    }
}
