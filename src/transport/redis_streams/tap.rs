//! Redis: one `XREAD BLOCK` over every stream, no consumer group, so the
//! orchestrator's group, its pending lists and its acks are never touched.

use std::time::Duration;

use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::{Client, Value};

use super::{blocking_connection, client, stream_entries, stream_replies};
use crate::transport::tap::{StartAt, TapError, Tapped};
use crate::transport::RawMessage;

/// How long one read blocks before returning an empty batch.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries per stream per read.
const COUNT: usize = 256;

/// Reads streams by position, remembering the last id seen on each.
pub(crate) struct RedisTap {
    client: Client,
    /// A connection of its own: a blocking read stalls everything behind it.
    conn: Option<MultiplexedConnection>,
    /// Per stream, the id after which to read.
    cursors: Vec<(String, String)>,
}

impl RedisTap {
    /// Connects and fixes each stream's start: `0-0`, or its last entry now.
    pub async fn open(url: &str, channels: &[String], start: StartAt) -> Result<Self, TapError> {
        let mut tap = Self {
            client: client(url)?,
            conn: None,
            cursors: Vec::with_capacity(channels.len()),
        };
        let mut conn = tap.connection().await?;
        for channel in channels {
            let id = match start {
                StartAt::Beginning => "0-0".to_string(),
                // Not `$`: that means "now" anew on every call, so entries
                // arriving between two reads of a quiet stream would be lost.
                StartAt::Now => last_id(&mut conn, channel).await?,
            };
            tap.cursors.push((channel.clone(), id));
        }
        Ok(tap)
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection, TapError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let conn = blocking_connection(&self.client, BLOCK).await?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// The entries after each stream's cursor, waiting up to [`BLOCK`].
    pub async fn next_batch(&mut self) -> Result<Vec<Tapped>, TapError> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(COUNT)
            .arg("BLOCK")
            .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(1000))
            .arg("STREAMS");
        for (stream, _) in &self.cursors {
            cmd.arg(stream);
        }
        for (_, id) in &self.cursors {
            cmd.arg(id);
        }
        let reply: Value = match cmd.query_async(&mut conn).await {
            Ok(reply) => reply,
            Err(e) => {
                self.conn = None;
                return Err(e.into());
            }
        };
        let mut batch = Vec::new();
        for (stream, entries) in stream_replies(reply) {
            let entries = stream_entries(entries);
            if let (Some((last, _)), Some(cursor)) = (
                entries.last(),
                self.cursors.iter_mut().find(|(s, _)| *s == stream),
            ) {
                cursor.1.clone_from(last);
            }
            let now = Utc::now();
            batch.extend(entries.into_iter().map(|(id, fields)| {
                let mut t = Tapped::new(stream.clone(), id, RawMessage::Fields(fields), now);
                t.broker_time_ms = entry_millis(&t.id);
                t
            }));
        }
        Ok(batch)
    }
}

/// The id of a stream's last entry, or `0-0` when it is empty or absent.
async fn last_id(conn: &mut MultiplexedConnection, stream: &str) -> Result<String, TapError> {
    let reply: Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(stream_entries(reply)
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_string(), |(id, _)| id))
}

/// The milliseconds part of an entry id `ms-seq`.
fn entry_millis(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn xread_replies_parse_in_both_protocols() {
        let entries = Value::Array(vec![Value::Array(vec![
            bulk("1700000000000-0"),
            Value::Array(vec![
                bulk("event_type"),
                bulk("X"),
                bulk("payload"),
                bulk("{}"),
            ]),
        ])]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s1"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("s1"), entries)]);
        for reply in [resp2, resp3] {
            let streams = stream_replies(reply);
            assert_eq!(streams.len(), 1);
            let (name, entries) = streams.into_iter().next().unwrap();
            assert_eq!(name, "s1");
            let entries = stream_entries(entries);
            assert_eq!(entries[0].0, "1700000000000-0");
            assert_eq!(entries[0].1[0], ("event_type".into(), b"X".to_vec()));
        }
        assert!(stream_replies(Value::Nil).is_empty());
        assert_eq!(entry_millis("1700000000000-3"), Some(1_700_000_000_000));
        assert_eq!(entry_millis("garbage"), None);
    }

    #[test]
    fn odd_entries_are_skipped_not_fatal() {
        let odd = Value::Array(vec![
            Value::Int(3),
            Value::Array(vec![bulk("1-0"), Value::Nil]),
            Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("k")])]),
        ]);
        let entries = stream_entries(odd);
        assert_eq!(entries.len(), 1, "the dangling key makes an empty entry");
        assert_eq!(entries[0].0, "2-0");
        assert!(entries[0].1.is_empty());
    }
}
