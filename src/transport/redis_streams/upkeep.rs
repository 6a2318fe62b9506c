//! Upkeep of the streams the orchestrator consumes, one round every
//! `REDIS_TRIM_INTERVAL_MS`.
//!
//! Trimming: `XTRIM <stream> MINID <id>`, where `<id>` is the oldest entry
//! some consumer group still needs, over every group of the stream (other
//! teams' too): its oldest pending entry, or, with nothing pending, the
//! entry after the last one it was handed. What lies below was read and
//! acknowledged by every group. A group created or moved back after a
//! round cannot get back what that round trimmed, as after any trim.
//!
//! Dead consumers: every process joins our group under its own name
//! (`INSTANCE_ID`), so each restart would leave one more behind. Those of
//! our group (only ours) that hold nothing and have long been idle are
//! removed, never this instance's own.

use redis::Value;

use super::{millis, text, RedisTransport, TransportError};
use crate::telemetry;

/// A consumer is removed once idle this many claim thresholds: by then a
/// dead instance's entries have long been reclaimed by the living. A live
/// one reads twice a second; one at capacity may be silent longer, and
/// removing it costs nothing (it holds nothing, and its next read brings
/// it back).
const DEAD_CONSUMER_IDLE_FACTOR: u32 = 4;

/// Removes the consumers of group `ARGV[1]` on stream `KEYS[1]` that hold
/// no pending entry and have been idle at least `ARGV[2]` ms, except
/// `ARGV[3]` (this instance); returns their names. A script, so it is
/// atomic: a consumer cannot take an entry between the check and the
/// removal, which would make that entry unclaimable.
const REMOVE_DEAD_CONSUMERS: &str = r"
local removed = {}
for _, flat in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local c = {}
  for i = 1, #flat, 2 do c[flat[i]] = flat[i + 1] end
  if c['name'] ~= ARGV[3] and c['pending'] == 0 and c['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c['name'])
    removed[#removed + 1] = c['name']
  end
end
return removed
";

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EntryId {
    ms: u64,
    seq: u64,
}

impl EntryId {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The smallest id after this one (itself at the very end of the range,
    /// which only keeps one entry more).
    fn next(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { seq, ..self },
            None => self
                .ms
                .checked_add(1)
                .map_or(self, |ms| Self { ms, seq: 0 }),
        }
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One consumer group of a stream, from `XINFO GROUPS`.
#[derive(Debug, PartialEq)]
struct Group {
    name: String,
    /// `None` when unreadable: then nothing of the stream is trimmed.
    last_delivered: Option<EntryId>,
}

impl RedisTransport {
    /// One round on `stream`: trimmed below what every group still needs,
    /// and our group rid of the consumers of instances that are gone.
    pub(super) async fn tidy(&self, stream: &str) -> Result<(), TransportError> {
        let groups = self.groups(stream).await?;
        self.trim(stream, &groups).await?;
        if groups.iter().any(|g| g.name == self.group) {
            self.remove_dead_consumers(stream).await?;
        }
        Ok(())
    }

    async fn remove_dead_consumers(&self, stream: &str) -> Result<(), TransportError> {
        let idle = self.claim_idle.saturating_mul(DEAD_CONSUMER_IDLE_FACTOR);
        let removed: Vec<String> = redis::cmd("EVAL")
            .arg(REMOVE_DEAD_CONSUMERS)
            .arg(1)
            .arg(stream)
            .arg(&self.group)
            .arg(millis(idle))
            .arg(&self.consumer)
            .query_async(&mut self.conn.clone())
            .await?;
        if !removed.is_empty() {
            tracing::info!(%stream, group = %self.group, ?removed, "removed idle consumers that held nothing");
            metrics::counter!(telemetry::REDIS_CONSUMERS_REMOVED, "channel" => stream.to_string())
                .increment(removed.len() as u64);
        }
        Ok(())
    }

    /// The groups of `stream`; none when the stream does not exist (yet).
    async fn groups(&self, stream: &str) -> Result<Vec<Group>, TransportError> {
        let reply: Result<Value, _> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut self.conn.clone())
            .await;
        match reply {
            Ok(reply) => Ok(groups(reply)),
            Err(e) if e.detail().is_some_and(|d| d.contains("no such key")) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// The oldest entry `group` has been handed and not acknowledged
    /// (`Some(None)`: nothing pending; `None`: the answer was unreadable).
    async fn oldest_pending(
        &self,
        stream: &str,
        group: &str,
    ) -> Result<Option<Option<EntryId>>, TransportError> {
        let summary: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(oldest_pending(summary))
    }

    /// The oldest entry of `stream` some group still needs; `None` when
    /// that cannot be told (no group, an unreadable id): keep everything.
    async fn oldest_needed(
        &self,
        stream: &str,
        groups: &[Group],
    ) -> Result<Option<EntryId>, TransportError> {
        let mut oldest: Option<EntryId> = None;
        for group in groups {
            // Pending entries all lie at or below the last one handed out,
            // so the oldest of them, when there is one, is what it needs.
            let needed = match self.oldest_pending(stream, &group.name).await? {
                Some(Some(id)) => id,
                Some(None) => match group.last_delivered {
                    Some(last) => last.next(),
                    None => return Ok(None),
                },
                // Something is pending but we cannot tell what: keep all.
                None => return Ok(None),
            };
            oldest = Some(oldest.map_or(needed, |o| o.min(needed)));
        }
        Ok(oldest)
    }

    /// Trims `stream` below what every group still needs.
    async fn trim(&self, stream: &str, groups: &[Group]) -> Result<(), TransportError> {
        let Some(needed) = self.oldest_needed(stream, groups).await? else {
            return Ok(());
        };
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        // Entries younger than the minimum age stay, acknowledged or not:
        // readers without a group (the monitor, an `XRANGE` replay) still
        // see recent traffic.
        let recent = EntryId {
            ms: now_ms.saturating_sub(millis(self.trim_min_age)),
            seq: 0,
        };
        let keep_from = needed.min(recent);
        // Exact, not `~`: a round trims at most an interval's traffic, and
        // only exact trimming ever frees a stream that sees little of it.
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(stream)
            .arg("MINID")
            .arg(keep_from.to_string())
            .query_async(&mut self.conn.clone())
            .await?;
        if trimmed > 0 {
            tracing::debug!(%stream, trimmed, %keep_from, "trimmed entries every group has acknowledged");
            metrics::counter!(telemetry::REDIS_TRIMMED, "channel" => stream.to_string())
                .increment(trimmed);
        }
        Ok(())
    }
}

/// `XINFO GROUPS`: one record per group (flat `key value …` arrays, or
/// RESP3 maps). Records without a name are skipped.
fn groups(reply: Value) -> Vec<Group> {
    let Value::Array(records) = reply else {
        return Vec::new();
    };
    records
        .into_iter()
        .filter_map(|r| {
            let record = record(r);
            let name = text(field(&record, "name")?)?;
            let last_delivered = field(&record, "last-delivered-id")
                .and_then(text)
                .and_then(|id| EntryId::parse(&id));
            Some(Group {
                name,
                last_delivered,
            })
        })
        .collect()
}

/// `XPENDING <stream> <group>`: `[count, oldest, newest, per consumer]`;
/// `Some(None)` when nothing is pending, `None` when it cannot be read (so
/// nothing is trimmed rather than an entry still pending).
fn oldest_pending(summary: Value) -> Option<Option<EntryId>> {
    let Value::Array(parts) = summary else {
        return None;
    };
    match parts.as_slice() {
        [Value::Int(0), ..] => Some(None),
        [Value::Int(n), oldest, ..] if *n > 0 => EntryId::parse(&text(oldest)?).map(Some),
        _ => None,
    }
}

/// A reply record as pairs: a flat `key value …` array (RESP2) or a map (RESP3).
fn record(value: Value) -> Vec<(String, Value)> {
    match value {
        Value::Array(flat) => {
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = text(&k) {
                    out.push((k, v));
                }
            }
            out
        }
        Value::Map(map) => map
            .into_iter()
            .filter_map(|(k, v)| Some((text(&k)?, v)))
            .collect(),
        _ => Vec::new(),
    }
}

fn field<'a>(record: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    record.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn id(s: &str) -> EntryId {
        EntryId::parse(s).unwrap()
    }

    #[test]
    fn entry_ids_order_and_step_as_redis_does() {
        assert!(id("9-5") < id("10-0"));
        assert!(id("10-2") < id("10-10"));
        assert_eq!(id("10-2").next(), id("10-3"));
        assert_eq!(id(&format!("10-{}", u64::MAX)).next(), id("11-0"));
        let last = id(&format!("{0}-{0}", u64::MAX));
        assert_eq!(last.next(), last);
        assert_eq!(id("0-0").next().to_string(), "0-1");
        for bad in ["", "12", "a-1", "1-", "-1", "1-2-3"] {
            assert_eq!(EntryId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn groups_are_read_from_resp2_and_resp3_records() {
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("saga-orchestrator"),
            bulk("consumers"),
            Value::Int(2),
            bulk("last-delivered-id"),
            bulk("1700000000000-3"),
            bulk("entries-read"),
            Value::Nil,
        ])]);
        let resp3 = Value::Array(vec![Value::Map(vec![
            (bulk("name"), bulk("other-team")),
            (bulk("last-delivered-id"), bulk("0-0")),
        ])]);
        assert_eq!(
            groups(resp2),
            [Group {
                name: "saga-orchestrator".into(),
                last_delivered: Some(id("1700000000000-3")),
            }]
        );
        assert_eq!(
            groups(resp3),
            [Group {
                name: "other-team".into(),
                last_delivered: Some(id("0-0")),
            }]
        );
        let unreadable = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("g"),
            bulk("last-delivered-id"),
            Value::Int(7),
        ])]);
        assert_eq!(groups(unreadable)[0].last_delivered, None);
    }

    #[test]
    fn the_pending_summary_gives_the_oldest_pending_entry() {
        let some = Value::Array(vec![
            Value::Int(2),
            bulk("5-1"),
            bulk("6-0"),
            Value::Array(vec![]),
        ]);
        assert_eq!(oldest_pending(some), Some(Some(id("5-1"))));
        let none = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(oldest_pending(none), Some(None));
        let unreadable = Value::Array(vec![Value::Int(3), bulk("not-an-id"), Value::Nil]);
        assert_eq!(
            oldest_pending(unreadable),
            None,
            "fail closed: trim nothing"
        );
    }
}
