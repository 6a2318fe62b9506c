//! Redis Streams adapter: one stream per channel, the consumer group is the
//! shared subscription.
//!
//! - The group is created at id `0` with MKSTREAM, so events published
//!   before the first start are consumed.
//! - Reads block on a connection of their own (`XREADGROUP … BLOCK`): a
//!   blocking command on the shared multiplexed connection would stall every
//!   publish and ack queued behind it.
//! - Entries left pending by a consumer that died are taken over with
//!   `XAUTOCLAIM` once idle for `REDIS_CLAIM_IDLE_MS`. A nacked entry is
//!   made to look idle that long, less [`NACK_REDELIVERY`], so it comes back
//!   within about a second rather than after the whole threshold.
//! - Streams are never capped at `XADD`: the orchestrator cannot know what
//!   another group still needs. Its periodic upkeep (`upkeep.rs`) trims
//!   the streams it consumes below what every group has acknowledged.

pub(crate) mod tap;
mod upkeep;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Value};

use super::{
    is_dead_letter_channel, Delivery, OutboundMessage, RawMessage, Settle, Subscription, Transport,
    TransportError, WireFormat,
};

/// How long one blocking read waits before returning an empty batch.
const BLOCK: Duration = Duration::from_millis(500);

/// How soon a nacked entry is handed out again: soon enough that a store
/// that came back is used at once, late enough that a store outage does
/// not turn into a tight loop of redeliveries.
const NACK_REDELIVERY: Duration = Duration::from_secs(1);

/// Streams on one Redis server.
#[derive(Clone)]
pub struct RedisTransport {
    client: Client,
    /// Shared, auto-reconnecting connection for publishes and acks.
    conn: ConnectionManager,
    group: String,
    consumer: String,
    claim_idle: Duration,
    /// How often the consumed streams get their upkeep; `None`: never.
    maintenance: Option<Duration>,
    /// Entries younger than this are never trimmed.
    trim_min_age: Duration,
}

impl RedisTransport {
    /// Connects; `group` is the consumer group, `consumer` this instance's name in it.
    pub async fn connect(
        url: &str,
        group: &str,
        consumer: &str,
        claim_idle: Duration,
    ) -> Result<Self, TransportError> {
        let client = client(url)?;
        let conn = ConnectionManager::new(client.clone()).await?;
        Ok(Self {
            client,
            conn,
            group: group.to_string(),
            consumer: consumer.to_string(),
            claim_idle,
            maintenance: None,
            trim_min_age: Duration::ZERO,
        })
    }

    /// Asks for the upkeep of consumed streams (trimming, removing dead
    /// consumers of our group) every `every`; `None` turns it off.
    pub fn with_maintenance(mut self, every: Option<Duration>, min_age: Duration) -> Self {
        self.maintenance = every;
        self.trim_min_age = min_age;
        self
    }

    async fn ensure_group(&self, stream: &str) -> Result<(), TransportError> {
        let created: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn.clone())
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Transport for RedisTransport {
    fn format(&self) -> WireFormat {
        WireFormat::Fields
    }

    async fn send(
        &self,
        channel: &str,
        messages: Vec<OutboundMessage>,
    ) -> Result<(), TransportError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for message in &messages {
            let cmd = pipe.cmd("XADD").arg(channel).arg("*");
            match &message.raw {
                RawMessage::Fields(fields) => {
                    for (k, v) in fields {
                        cmd.arg(k).arg(v);
                    }
                }
                // A body that reached a Redis channel (e.g. a dead letter
                // built elsewhere) is kept whole under `raw`.
                RawMessage::Body { data, .. } => {
                    cmd.arg("raw").arg(data);
                }
            }
            cmd.ignore();
        }
        let () = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<Box<dyn Subscription>, TransportError> {
        self.ensure_group(channel).await?;
        let settler = Arc::new(Settler {
            conn: self.conn.clone(),
            stream: channel.to_string(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            claim_idle: self.claim_idle,
            reclaim_at: Mutex::default(),
        });
        Ok(Box::new(RedisSubscription {
            transport: self.clone(),
            stream: channel.to_string(),
            reader: None,
            next_claim: Instant::now(),
            claim_cursor: "0-0".to_string(),
            settler,
            rescan_at: None,
        }))
    }

    async fn ping(&self) -> Result<(), TransportError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    fn maintenance_interval(&self) -> Option<Duration> {
        self.maintenance
    }

    /// Each stream on its own: one that fails does not spare the others
    /// their upkeep. The first error is returned.
    async fn maintain(&self, channels: &[String]) -> Result<(), TransportError> {
        let mut first_error = None;
        for stream in channels {
            // Dead letters wait for a person, however many groups read them.
            if is_dead_letter_channel(stream) {
                continue;
            }
            if let Err(e) = self.tidy(stream).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// `XDEL`: a stream, unlike a Pulsar topic, can drop one entry.
    async fn forget(&self, channel: &str, id: &str) -> Result<(), TransportError> {
        let _: i64 = redis::cmd("XDEL")
            .arg(channel)
            .arg(id)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

struct RedisSubscription {
    transport: RedisTransport,
    stream: String,
    /// Dedicated connection for blocking reads; rebuilt after an error.
    reader: Option<MultiplexedConnection>,
    next_claim: Instant,
    claim_cursor: String,
    /// Shared with the deliveries handed out, which ask for a pass on nack.
    settler: Arc<Settler>,
    /// When a pass from the start of the pending list is due for a nack.
    rescan_at: Option<Instant>,
}

impl RedisSubscription {
    /// Takes in the pass a nack asked for. It starts over at the beginning
    /// of the pending list: a pass under way may be past the nacked entry.
    fn plan_rescan(&mut self) {
        if let Some(at) = self.settler.take_reclaim() {
            self.rescan_at = Some(self.rescan_at.map_or(at, |r| r.min(at)));
        }
        let now = Instant::now();
        if self.rescan_at.is_some_and(|at| now >= at) {
            self.rescan_at = None;
            self.claim_cursor = "0-0".to_string();
            self.next_claim = now;
        }
    }

    /// How long the next read may block: no later than the next claim
    /// pass, so a nacked entry is not kept waiting behind a read.
    fn block(&self) -> Duration {
        let due = self
            .rescan_at
            .map_or(self.next_claim, |at| at.min(self.next_claim));
        // BLOCK 0 would mean "forever".
        BLOCK
            .min(due.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1))
    }

    async fn reader(&mut self) -> Result<MultiplexedConnection, TransportError> {
        if let Some(conn) = &self.reader {
            return Ok(conn.clone());
        }
        let conn = blocking_connection(&self.transport.client, BLOCK).await?;
        self.reader = Some(conn.clone());
        Ok(conn)
    }

    /// One page of entries idle past the claim threshold, taken over by us.
    async fn autoclaim(&mut self, max: usize) -> Result<Vec<Delivery>, TransportError> {
        let t = &self.transport;
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&t.group)
            .arg(&t.consumer)
            .arg(millis(t.claim_idle))
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(max)
            .query_async(&mut t.conn.clone())
            .await?;
        let Value::Array(parts) = reply else {
            return Ok(Vec::new());
        };
        let mut parts = parts.into_iter();
        let cursor = parts
            .next()
            .and_then(|v| text(&v))
            .unwrap_or_else(|| "0-0".into());
        let entries = parts.next().map(|v| self.entries(v)).unwrap_or_default();
        if cursor == "0-0" {
            // A full pass is done: the next one after half the idle threshold.
            self.next_claim = Instant::now() + t.claim_idle / 2;
        }
        self.claim_cursor = cursor;
        Ok(entries)
    }

    async fn read(&mut self, max: usize) -> Result<Vec<Delivery>, TransportError> {
        let mut conn = self.reader().await?;
        let block = self.block();
        let t = &self.transport;
        let reply: Result<Value, _> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&t.group)
            .arg(&t.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(millis(block))
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut conn)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                self.reader = None;
                // The stream (and its group) was deleted under us: recreate.
                if e.code() == Some("NOGROUP") {
                    self.transport.ensure_group(&self.stream).await?;
                }
                return Err(e.into());
            }
        };
        Ok(stream_replies(reply)
            .into_iter()
            .flat_map(|(_, entries)| self.entries(entries))
            .collect())
    }

    /// Entries `[[id, [field, value, …]], …]` as deliveries. Entries deleted
    /// while pending come back without fields and are skipped (XAUTOCLAIM
    /// already dropped them from the pending list).
    fn entries(&self, value: Value) -> Vec<Delivery> {
        stream_entries(value)
            .into_iter()
            .map(|(id, fields)| {
                let settle = RedisSettle {
                    settler: self.settler.clone(),
                    id: id.clone(),
                };
                Delivery::new(
                    self.stream.clone(),
                    id,
                    RawMessage::Fields(fields),
                    Box::new(settle),
                )
            })
            .collect()
    }
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, TransportError> {
        self.plan_rescan();
        if Instant::now() >= self.next_claim {
            let claimed = self.autoclaim(max).await?;
            if !claimed.is_empty() {
                tracing::info!(stream = %self.stream, count = claimed.len(), "reclaimed idle pending entries");
                return Ok(claimed);
            }
        }
        self.read(max).await
    }
}

/// What the deliveries of one subscription need to settle.
struct Settler {
    conn: ConnectionManager,
    stream: String,
    group: String,
    consumer: String,
    claim_idle: Duration,
    /// The earliest claim pass a nack asked for, not yet taken in by the
    /// subscription.
    reclaim_at: Mutex<Option<Instant>>,
}

impl Settler {
    fn request_reclaim(&self, at: Instant) {
        let mut due = self.reclaim_at.lock().unwrap_or_else(|e| e.into_inner());
        *due = Some(due.map_or(at, |d| d.min(at)));
    }

    fn take_reclaim(&self) -> Option<Instant> {
        self.reclaim_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

struct RedisSettle {
    settler: Arc<Settler>,
    id: String,
}

#[async_trait]
impl Settle for RedisSettle {
    async fn ack(&self) -> Result<(), TransportError> {
        let s = &self.settler;
        let _: i64 = redis::cmd("XACK")
            .arg(&s.stream)
            .arg(&s.group)
            .arg(&self.id)
            .query_async(&mut s.conn.clone())
            .await?;
        Ok(())
    }

    /// Stays pending (never lost), made to look idle for the claim
    /// threshold less [`NACK_REDELIVERY`]: then any consumer's `XAUTOCLAIM`
    /// may take it, and this subscription runs one at that moment. `JUSTID`
    /// leaves the delivery count alone; the pass that hands it out counts.
    /// Had another consumer taken it over meanwhile (we held it past the
    /// threshold), this takes it back: a repeat the store deduplicates.
    async fn nack(&self) -> Result<(), TransportError> {
        let s = &self.settler;
        let delay = NACK_REDELIVERY.min(s.claim_idle);
        let _: Value = redis::cmd("XCLAIM")
            .arg(&s.stream)
            .arg(&s.group)
            .arg(&s.consumer)
            .arg(0)
            .arg(&self.id)
            .arg("IDLE")
            .arg(millis(s.claim_idle - delay))
            .arg("JUSTID")
            .query_async(&mut s.conn.clone())
            .await?;
        // Counted from after Redis answered, so by its clock too the entry
        // has reached the threshold when the pass runs.
        s.request_reclaim(Instant::now() + delay);
        Ok(())
    }
}

/// A connection of its own for blocking reads (`XREAD[GROUP] BLOCK`): on a
/// shared connection a blocking read stalls everything behind it. Its
/// response timeout allows for the block.
pub(crate) async fn blocking_connection(
    client: &Client,
    block: Duration,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(block + Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// `XREAD[GROUP]`'s reply as (stream, entries): RESP2 `[[stream, entries]…]`,
/// RESP3 `{stream: entries}`, nil on timeout.
pub(crate) fn stream_replies(reply: Value) -> Vec<(String, Value)> {
    match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(pair) => {
                    let mut pair = pair.into_iter();
                    Some((text(&pair.next()?)?, pair.next()?))
                }
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams
            .into_iter()
            .filter_map(|(k, v)| Some((text(&k)?, v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// A duration as whole milliseconds, for Redis arguments.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A stream entry: its id and its fields in order, values as bytes.
pub(crate) type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// Entries `[[id, [field, value, …]], …]` (RESP2 arrays or RESP3 maps for
/// the fields); malformed or field-less entries are skipped.
pub(crate) fn stream_entries(value: Value) -> Vec<StreamEntry> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let mut parts = parts.into_iter();
            let id = text(&parts.next()?)?;
            let fields = match parts.next()? {
                Value::Array(flat) => pairs(flat),
                Value::Map(map) => map
                    .into_iter()
                    .filter_map(|(k, v)| Some((text(&k)?, bytes(v)?)))
                    .collect(),
                _ => return None,
            };
            Some((id, fields))
        })
        .collect()
}

/// A client for `url` whose connections turn Nagle off: the crate leaves
/// it on, and a command written while an earlier one on the same
/// connection is unanswered would wait for the server's delayed ACK.
pub(crate) fn client(url: &str) -> redis::RedisResult<Client> {
    let info = url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    Client::open(info)
}

/// A reply value as text (bulk or simple string).
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A reply value as bytes (bulk or simple string, or an integer's digits).
pub(crate) fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// An entry's flat `field value …` array as pairs; unreadable pairs are skipped.
pub(crate) fn pairs(flat: Vec<Value>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let (Some(k), Some(v)) = (text(&k), bytes(v)) {
            out.push((k, v));
        }
    }
    out
}

#[cfg(all(test, target_os = "linux"))]
mod nagle_tests {
    use crate::transport::socket_probe::SilentServer;

    /// Commands are small and pipelined from many tasks on one connection:
    /// with Nagle on, one written while an earlier one is unanswered (a
    /// blocking read, a slow command) waits for the server's delayed ACK.
    #[tokio::test]
    async fn the_clients_connections_do_not_wait_for_nagle() {
        let server = SilentServer::bind().await;
        let client = super::client(&format!("redis://{}", server.addr())).expect("a valid url");
        // No timeouts: a slow test machine must not close the socket first.
        let patient = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        let connecting = tokio::spawn(async move {
            client
                .get_multiplexed_async_connection_with_config(&patient)
                .await
        });
        let nodelay = server.nodelay_of_next_client().await;
        connecting.abort();
        assert_eq!(nodelay, Some(true), "TCP_NODELAY of the client's socket");
    }
}
