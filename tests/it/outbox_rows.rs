//! Outbox rows the service itself would never write — as an older version,
//! a bug or a hand edit may have left them — put straight into its
//! database, and the parked rows read back the way an operator would: plain
//! SQL, on PostgreSQL or SQLite.

use std::str::FromStr;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, PgConnection, Row, SqliteConnection};
use uuid::Uuid;

use saga_orchestrator::envelope::{Envelope, EventType, MessageStatus};

/// A store's database, by its `DATABASE_URL`.
#[derive(Debug, Clone)]
pub enum Db {
    Postgres(String),
    Sqlite(String),
}

/// One row of `outbox_parked`.
#[derive(Debug, Clone)]
pub struct ParkedRow {
    pub id: i64,
    pub channel: String,
    /// The message as stored, as text.
    pub message: String,
    pub reason: String,
    pub attempts: i64,
}

/// A SQLite database file under the target dir, for one test.
pub fn sqlite_url(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.db", Uuid::new_v4().simple()));
    format!("sqlite://{}", path.display())
}

impl Db {
    /// The database `url` names.
    pub fn from_url(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            Self::Sqlite(url.to_string())
        } else {
            Self::Postgres(url.to_string())
        }
    }

    async fn sqlite(url: &str) -> SqliteConnection {
        // The service holds its own connection: wait for its writes.
        let options = SqliteConnectOptions::from_str(url)
            .expect("sqlite url")
            .busy_timeout(Duration::from_secs(10));
        SqliteConnection::connect_with(&options)
            .await
            .expect("open sqlite")
    }

    /// Appends a row to the outbox as it is; returns its id. On PostgreSQL
    /// `message` must be JSON (the column is jsonb); on SQLite it is any text.
    pub async fn insert_outbox(&self, channel: &str, message: &str) -> i64 {
        match self {
            Self::Postgres(url) => {
                let mut conn = PgConnection::connect(url).await.expect("connect");
                sqlx::query_scalar(
                    "INSERT INTO outbox (channel, message) VALUES ($1, $2::jsonb) RETURNING id",
                )
                .bind(channel)
                .bind(message)
                .fetch_one(&mut conn)
                .await
                .expect("insert outbox row")
            }
            Self::Sqlite(url) => {
                let mut conn = Self::sqlite(url).await;
                sqlx::query_scalar(
                    "INSERT INTO outbox (channel, message, created_at) VALUES (?, ?, ?) RETURNING id",
                )
                .bind(channel)
                .bind(message)
                .bind(chrono::Utc::now().timestamp_micros())
                .fetch_one(&mut conn)
                .await
                .expect("insert outbox row")
            }
        }
    }

    /// Every parked row, oldest first.
    pub async fn parked(&self) -> Vec<ParkedRow> {
        match self {
            Self::Postgres(url) => {
                let mut conn = PgConnection::connect(url).await.expect("connect");
                sqlx::query(
                    "SELECT id, channel, message::text AS message, reason, attempts::int8 AS attempts \
                     FROM outbox_parked ORDER BY id",
                )
                .fetch_all(&mut conn)
                .await
                .expect("read outbox_parked")
                .iter()
                .map(|r| parked_row(r.try_get("id"), r.try_get("channel"), r.try_get("message"), r.try_get("reason"), r.try_get("attempts")))
                .collect()
            }
            Self::Sqlite(url) => {
                let mut conn = Self::sqlite(url).await;
                sqlx::query(
                    "SELECT id, channel, message, reason, attempts FROM outbox_parked ORDER BY id",
                )
                .fetch_all(&mut conn)
                .await
                .expect("read outbox_parked")
                .iter()
                .map(|r| {
                    parked_row(
                        r.try_get("id"),
                        r.try_get("channel"),
                        r.try_get("message"),
                        r.try_get("reason"),
                        r.try_get("attempts"),
                    )
                })
                .collect()
            }
        }
    }
}

fn parked_row(
    id: Result<i64, sqlx::Error>,
    channel: Result<String, sqlx::Error>,
    message: Result<String, sqlx::Error>,
    reason: Result<String, sqlx::Error>,
    attempts: Result<i64, sqlx::Error>,
) -> ParkedRow {
    ParkedRow {
        id: id.expect("id"),
        channel: channel.expect("channel"),
        message: message.expect("message"),
        reason: reason.expect("reason"),
        attempts: attempts.expect("attempts"),
    }
}

/// A saga event as an older version could have stored it: a well-formed
/// envelope whose `correlation_id` (300 characters) today's inbound rule
/// refuses. The relay must still publish it: it is ours.
pub fn long_correlation_event(partner_id: &str) -> (String, Value) {
    let correlation_id = "c".repeat(300);
    let envelope = Envelope::new(
        EventType::SagaStarted,
        correlation_id.clone(),
        Some(Uuid::new_v4()),
        Some(MessageStatus::Started),
        json!({"partner_id": partner_id, "state": "creating_alliance", "step": "create_alliance"})
            .as_object()
            .cloned()
            .expect("object"),
    );
    (correlation_id, envelope.to_json())
}
