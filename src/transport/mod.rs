//! The broker-neutral transport: one small trait, an adapter per broker.
//!
//! Adapters implement three things: send raw messages to a channel,
//! subscribe to a channel (deliveries with explicit ack / nack), and answer
//! a health check. Encoding envelopes and building dead letters are shared
//! default methods, so every broker dead-letters the same way. A broker
//! that needs upkeep from its clients (Redis: trimming streams) says so
//! through [`Transport::maintenance_interval`]. Each broker's code is in
//! its own folder, with its passive reader ([`tap`]) beside its adapter.

mod memory;
mod pulsar;
mod redis_streams;
pub mod tap;

/// Reads socket options off this process's own sockets: the broker
/// clients open theirs out of our reach, and their tests check them.
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod socket_probe {
    use std::net::SocketAddr;
    use std::os::fd::BorrowedFd;

    /// A loopback server that accepts and never answers: a client's
    /// handshake waits, with its socket open to be looked at.
    pub(crate) struct SilentServer {
        listener: tokio::net::TcpListener,
    }

    impl SilentServer {
        pub(crate) async fn bind() -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            Self { listener }
        }

        pub(crate) fn addr(&self) -> SocketAddr {
            self.listener.local_addr().expect("addr")
        }

        /// The `TCP_NODELAY` of the next client's socket, read once the
        /// client has written its first byte (its socket is set up by then).
        pub(crate) async fn nodelay_of_next_client(&self) -> Option<bool> {
            let (mut accepted, client_end) = self.listener.accept().await.expect("a client");
            let mut first = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut accepted, &mut first)
                .await
                .expect("the client's first byte");
            nodelay_of_socket(client_end, self.addr())
        }
    }

    /// This process's TCP socket from `local` to `peer`, if any: its
    /// `TCP_NODELAY`. (The peer too: an ephemeral port may be bound by
    /// several sockets to different peers.)
    fn nodelay_of_socket(local: SocketAddr, peer: SocketAddr) -> Option<bool> {
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // SAFETY: only read here, and only while the test holds the
            // connection open; an fd closed meanwhile fails the getsockname.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let bound = socket.local_addr().ok().and_then(|a| a.as_socket());
            let connected = socket.peer_addr().ok().and_then(|a| a.as_socket());
            if bound == Some(local) && connected == Some(peer) {
                return socket.tcp_nodelay().ok();
            }
        }
        None
    }
}

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;

pub use self::pulsar::{probe as probe_pulsar, topic as pulsar_topic, PulsarTransport};
pub use memory::MemoryTransport;
pub use redis_streams::RedisTransport;

use crate::config::{BrokerUrl, Settings};
use crate::envelope::{format_time, DecodeError, Envelope};

/// Broker failures. The caller retries; messages are never acked on error.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("pulsar: {0}")]
    Pulsar(Box<::pulsar::Error>),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("a publishing task failed: {0}")]
    Task(String),
    #[error("subscription closed")]
    Closed,
    /// The broker answered a send by refusing the message (Pulsar's
    /// `SendError`), e.g. over its maximum message size.
    #[error("the broker refused the message: {code}: {message}")]
    Refused { code: String, message: String },
}

/// Redis error codes that say the server takes nothing right now, not
/// that one message is wrong.
const REDIS_UNAVAILABLE: [&str; 9] = [
    "OOM",
    "LOADING",
    "BUSY",
    "READONLY",
    "MASTERDOWN",
    "MISCONF",
    "NOREPLICAS",
    "TRYAGAIN",
    "CLUSTERDOWN",
];

/// Pulsar server errors of the same kind (backlog quota, overload, storage).
const PULSAR_UNAVAILABLE: [&str; 5] = [
    "ServiceNotReady",
    "PersistenceError",
    "TooManyRequests",
    "ProducerBlockedQuotaExceededError",
    "ProducerBlockedQuotaExceededException",
];

/// The smallest `proto-max-bulk-len` Redis accepts: a value longer than
/// its limit makes redis-server close the connection (the sender mostly
/// sees a broken pipe), and no limit is below this.
const REDIS_MIN_BULK_LIMIT: usize = 1024 * 1024;

/// Pulsar `SendError` codes that blame the message itself.
const PULSAR_MESSAGE_REFUSALS: [&str; 1] = ["ChecksumError"];

impl TransportError {
    /// The broker refused this one message on its own merits (over its
    /// size limit, corrupt): the only failure for which a message is
    /// charged and, in the end, parked. Everything else — an outage,
    /// permissions, a topic that cannot be produced to, a timeout — may hit
    /// every message of a channel, so no message is blamed for it.
    pub fn blames_the_message(&self) -> bool {
        match self {
            Self::Refused { code, message } => {
                PULSAR_MESSAGE_REFUSALS.contains(&code.as_str())
                    || (code == "NotAllowedError" && message.to_ascii_lowercase().contains("size"))
            }
            // redis-server answers a value over proto-max-bulk-len so.
            Self::Redis(e) => e
                .to_string()
                .to_ascii_lowercase()
                .contains("invalid bulk length"),
            _ => false,
        }
    }

    /// Redis dropped the connection on a send whose largest value
    /// (`largest_value` bytes) is over the lowest limit it can have: what
    /// it does when it refuses a value as too long — or what an outage
    /// looks like, so the caller must check the broker answers before
    /// blaming the message.
    pub fn maybe_too_long(&self, largest_value: usize) -> bool {
        let dropped = matches!(self, Self::Redis(e)
            if (e.is_io_error() || e.is_connection_dropped()) && !e.is_connection_refusal());
        dropped && largest_value > REDIS_MIN_BULK_LIMIT
    }

    /// The broker answered, but takes nothing now (out of memory, loading,
    /// over quota, overloaded): as much an outage as a broker that does not
    /// answer, so no message is to blame for it, whatever a ping says.
    pub fn is_unavailable(&self) -> bool {
        match self {
            // Every server error, also those of a pipeline's commands.
            Self::Redis(e) => e.clone().into_server_errors().is_some_and(|errors| {
                errors
                    .iter()
                    .any(|(_, err)| REDIS_UNAVAILABLE.contains(&err.code()))
            }),
            Self::Refused { code, .. } => PULSAR_UNAVAILABLE.contains(&code.as_str()),
            _ => false,
        }
    }
}

impl From<::pulsar::Error> for TransportError {
    fn from(e: ::pulsar::Error) -> Self {
        Self::Pulsar(Box::new(e))
    }
}

impl From<::pulsar::error::ConsumerError> for TransportError {
    fn from(e: ::pulsar::error::ConsumerError) -> Self {
        Self::Pulsar(Box::new(e.into()))
    }
}

/// A message as it is on the wire, before or without decoding.
#[derive(Debug, Clone, PartialEq)]
pub enum RawMessage {
    /// Redis stream entry fields, in order, as bytes.
    Fields(Vec<(String, Vec<u8>)>),
    /// A body with string properties (Pulsar, in-memory).
    Body {
        data: Vec<u8>,
        properties: Vec<(String, String)>,
    },
}

impl RawMessage {
    /// Decodes the envelope, honouring the size limit.
    pub fn decode(&self, max_bytes: usize) -> Result<Envelope, DecodeError> {
        match self {
            Self::Fields(fields) => Envelope::from_fields(fields, max_bytes),
            Self::Body { data, properties } => {
                let mut envelope = Envelope::from_json_bytes(data, max_bytes)?;
                if envelope.traceparent.is_none() {
                    envelope.traceparent = property(properties, "traceparent").map(str::to_string);
                }
                Ok(envelope)
            }
        }
    }

    /// A field (Redis) or top-level JSON key / property (body), as text.
    pub fn field(&self, name: &str) -> Option<String> {
        match self {
            Self::Fields(fields) => fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned()),
            Self::Body { data, properties } => serde_json::from_slice::<Value>(data)
                .ok()
                .and_then(|v| {
                    v.get(name)
                        .map(|f| f.as_str().map_or_else(|| f.to_string(), str::to_string))
                })
                .or_else(|| property(properties, name).map(str::to_string)),
        }
    }
}

fn property<'a>(properties: &'a [(String, String)], name: &str) -> Option<&'a str> {
    properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Which wire form an adapter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// Flat stream fields (Redis).
    Fields,
    /// JSON body plus properties (Pulsar, in-memory).
    Body,
}

/// A message to send: its routing key (the partner) and its wire form.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    pub key: Option<String>,
    pub raw: RawMessage,
}

impl OutboundMessage {
    /// The size of its largest single value (a stream field, or the body):
    /// what a broker's per-value limit applies to.
    pub fn largest_value(&self) -> usize {
        match &self.raw {
            RawMessage::Fields(fields) => fields.iter().map(|(_, v)| v.len()).max().unwrap_or(0),
            RawMessage::Body { data, .. } => data.len(),
        }
    }

    /// Encodes an envelope in `format` (docs/contract.md §3).
    pub fn encode(envelope: &Envelope, format: WireFormat) -> Self {
        let raw = match format {
            WireFormat::Fields => RawMessage::Fields(
                envelope
                    .to_fields()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into_bytes()))
                    .collect(),
            ),
            WireFormat::Body => {
                let mut properties = vec![
                    (
                        "correlation_id".to_string(),
                        envelope.correlation_id.clone(),
                    ),
                    ("event_type".to_string(), envelope.event_type.clone()),
                ];
                if let Some(id) = envelope.saga_id {
                    properties.push(("saga_id".into(), id.to_string()));
                }
                if let Some(tp) = &envelope.traceparent {
                    properties.push(("traceparent".into(), tp.clone()));
                }
                RawMessage::Body {
                    data: envelope.to_json_bytes(),
                    properties,
                }
            }
        };
        Self {
            key: envelope.partner_id().map(str::to_string),
            raw,
        }
    }
}

/// Settles one delivery with its broker.
#[async_trait]
pub trait Settle: Send + Sync {
    /// Done with it: the broker may forget it.
    async fn ack(&self) -> Result<(), TransportError>;
    /// Not processed: the broker redelivers it later.
    async fn nack(&self) -> Result<(), TransportError>;
}

/// One received message, to be acked or nacked exactly once.
pub struct Delivery {
    /// Where it came from.
    pub channel: String,
    /// The broker's id for it (for logs).
    pub id: String,
    pub raw: RawMessage,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("channel", &self.channel)
            .field("id", &self.id)
            .finish()
    }
}

impl Delivery {
    /// A delivery settled through `settle`.
    pub fn new(
        channel: impl Into<String>,
        id: impl Into<String>,
        raw: RawMessage,
        settle: Box<dyn Settle>,
    ) -> Self {
        Self {
            channel: channel.into(),
            id: id.into(),
            raw,
            settle,
        }
    }

    /// Acknowledges: call only after what it caused is committed.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.settle.ack().await
    }

    /// Gives it back for redelivery.
    pub async fn nack(self) -> Result<(), TransportError> {
        self.settle.nack().await
    }
}

/// A consumer of one channel within the shared subscription / group.
#[async_trait]
pub trait Subscription: Send {
    /// Up to `max` deliveries; an empty batch means nothing arrived within
    /// the adapter's short wait, so callers can check for shutdown.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, TransportError>;
}

/// A broker adapter.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The adapter's wire form.
    fn format(&self) -> WireFormat;

    /// Sends messages to `channel`, in order. `Ok`: the broker took them
    /// all. An error: it may still have taken some (a prefix, and on a
    /// broker that pipelines sends, like Pulsar, some after the failed
    /// one too), so callers send again and readers dedup by `event_id`.
    /// [`TransportError::Refused`] names a message the broker refused on
    /// its merits; [`TransportError::is_unavailable`] a broker that takes
    /// nothing now.
    async fn send(
        &self,
        channel: &str,
        messages: Vec<OutboundMessage>,
    ) -> Result<(), TransportError>;

    /// Joins the shared subscription on `channel`, creating it at the
    /// channel's beginning the first time.
    async fn subscribe(&self, channel: &str) -> Result<Box<dyn Subscription>, TransportError>;

    /// Answers when the broker is reachable.
    async fn ping(&self) -> Result<(), TransportError>;

    /// How often [`Transport::maintain`] should run; `None` when the broker
    /// keeps house itself (Pulsar's retention is the broker's own).
    fn maintenance_interval(&self) -> Option<Duration> {
        None
    }

    /// One round of upkeep of `channels`, the ones this process consumes
    /// (never those it only produces to: their readers are unknown to it).
    /// It must never take what a reader still needs; on error the caller
    /// tries again on the next round.
    async fn maintain(&self, _channels: &[String]) -> Result<(), TransportError> {
        Ok(())
    }

    /// Drops message `id` from `channel` where the broker can (a Redis
    /// stream entry), so that a handled dead letter is gone for readers of
    /// the broker too; a no-op where it cannot (a Pulsar topic keeps every
    /// entry until its retention ends).
    async fn forget(&self, _channel: &str, _id: &str) -> Result<(), TransportError> {
        Ok(())
    }

    /// Publishes envelopes to `channel`.
    async fn publish(&self, channel: &str, envelopes: &[Envelope]) -> Result<(), TransportError> {
        let format = self.format();
        let messages = envelopes
            .iter()
            .map(|e| OutboundMessage::encode(e, format))
            .collect();
        self.send(channel, messages).await
    }

    /// Moves a delivery to `<channel>-dlq` with the reason, then acks it.
    /// When the dead letter cannot be sent the delivery is nacked, so the
    /// broker hands it out again (and it is dead-lettered then).
    async fn dead_letter(&self, delivery: Delivery, reason: &str) -> Result<(), TransportError> {
        let dlq = dead_letter_channel(&delivery.channel);
        let raw = dead_letter_message(&delivery.raw, reason, &delivery.channel);
        if let Err(e) = self
            .send(&dlq, vec![OutboundMessage { key: None, raw }])
            .await
        {
            let _ = delivery.nack().await;
            return Err(e);
        }
        delivery.ack().await
    }
}

/// The dead-letter channel of `channel`.
pub fn dead_letter_channel(channel: &str) -> String {
    format!("{channel}-dlq")
}

/// Whether `channel` is named as a dead-letter channel.
pub fn is_dead_letter_channel(channel: &str) -> bool {
    channel.ends_with("-dlq")
}

/// The original message as received, plus `dlq_reason`, `source_channel`
/// and `failed_at`; a body that is not a JSON object goes under `raw`.
pub fn dead_letter_message(raw: &RawMessage, reason: &str, source_channel: &str) -> RawMessage {
    let failed_at = format_time(Utc::now());
    match raw {
        RawMessage::Fields(fields) => {
            let mut fields = fields.clone();
            fields.push(("dlq_reason".into(), reason.as_bytes().to_vec()));
            fields.push(("source_channel".into(), source_channel.as_bytes().to_vec()));
            fields.push(("failed_at".into(), failed_at.into_bytes()));
            RawMessage::Fields(fields)
        }
        RawMessage::Body { data, properties } => {
            let mut obj = match serde_json::from_slice::<Value>(data) {
                Ok(Value::Object(obj)) => obj,
                _ => {
                    let mut obj = serde_json::Map::new();
                    obj.insert(
                        "raw".into(),
                        String::from_utf8_lossy(data).into_owned().into(),
                    );
                    obj
                }
            };
            obj.insert("dlq_reason".into(), reason.into());
            obj.insert("source_channel".into(), source_channel.into());
            obj.insert("failed_at".into(), failed_at.into());
            let mut properties = properties.clone();
            properties.push(("dlq_reason".into(), reason.to_string()));
            RawMessage::Body {
                data: serde_json::to_vec(&obj).unwrap_or_default(),
                properties,
            }
        }
    }
}

/// Builds the adapter `BROKER_URL` names.
pub async fn from_settings(settings: &Settings) -> Result<Arc<dyn Transport>, TransportError> {
    match &settings.broker.url {
        BrokerUrl::Redis(url) => Ok(Arc::new(
            RedisTransport::connect(
                url.as_str(),
                &settings.broker.subscription,
                &settings.instance.id,
                settings.broker.claim_idle,
            )
            .await?
            .with_maintenance(settings.broker.trim_interval, settings.broker.trim_min_age),
        )),
        BrokerUrl::Memory => Ok(Arc::new(MemoryTransport::new())),
        BrokerUrl::Pulsar(url) => {
            let pulsar = PulsarTransport::connect(
                url.as_str(),
                &settings.broker.subscription,
                &settings.instance.id,
            )
            .await?;
            Ok(Arc::new(if settings.broker.pulsar_batching {
                pulsar
            } else {
                pulsar.without_batching()
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::EventType;

    fn envelope() -> Envelope {
        let payload = serde_json::json!({"partner_id": "p-7", "name": "Acme"});
        Envelope::new(
            EventType::PartnerCreated,
            "c-1",
            None,
            None,
            payload.as_object().cloned().unwrap(),
        )
    }

    #[test]
    fn both_wire_forms_round_trip_and_key_by_partner() {
        for format in [WireFormat::Fields, WireFormat::Body] {
            let mut env = envelope();
            env.traceparent =
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
            let out = OutboundMessage::encode(&env, format);
            assert_eq!(out.key.as_deref(), Some("p-7"));
            let back = out.raw.decode(1 << 20).unwrap();
            assert_eq!(back.event_id, env.event_id);
            assert_eq!(back.traceparent, env.traceparent, "{format:?}");
        }
    }

    #[test]
    fn body_properties_repeat_the_routing_fields() {
        let out = OutboundMessage::encode(&envelope(), WireFormat::Body);
        let RawMessage::Body { properties, .. } = out.raw else {
            panic!()
        };
        assert_eq!(property(&properties, "correlation_id"), Some("c-1"));
        assert_eq!(property(&properties, "event_type"), Some("PartnerCreated"));
        assert_eq!(property(&properties, "saga_id"), None);
    }

    #[test]
    fn dead_letters_keep_the_original_and_say_why() {
        let fields = RawMessage::Fields(vec![
            ("event_id".into(), b"e-1".to_vec()),
            ("payload".into(), b"{bad".to_vec()),
        ]);
        let dl = dead_letter_message(&fields, "invalid JSON: payload", "partner-events");
        assert_eq!(dl.field("event_id").as_deref(), Some("e-1"));
        assert_eq!(dl.field("payload").as_deref(), Some("{bad"));
        assert_eq!(
            dl.field("dlq_reason").as_deref(),
            Some("invalid JSON: payload")
        );
        assert_eq!(
            dl.field("source_channel").as_deref(),
            Some("partner-events")
        );
        assert!(dl.field("failed_at").is_some());

        let garbage = RawMessage::Body {
            data: b"not json".to_vec(),
            properties: vec![],
        };
        let dl = dead_letter_message(&garbage, "invalid JSON", "partner-events");
        assert_eq!(dl.field("raw").as_deref(), Some("not json"));
        assert_eq!(dl.field("dlq_reason").as_deref(), Some("invalid JSON"));

        let body = OutboundMessage::encode(&envelope(), WireFormat::Body).raw;
        let dl = dead_letter_message(
            &body,
            "missing required field payload.name",
            "partner-events",
        );
        assert_eq!(dl.field("correlation_id").as_deref(), Some("c-1"));
        assert_eq!(
            dl.field("dlq_reason").as_deref(),
            Some("missing required field payload.name")
        );
    }

    #[test]
    fn a_busy_broker_is_unavailable_and_a_refused_message_is_not() {
        let server = |code: &str| {
            TransportError::Redis(redis::make_extension_error(code.into(), Some("…".into())))
        };
        assert!(server("OOM").is_unavailable());
        assert!(server("LOADING").is_unavailable());
        assert!(!server("WRONGTYPE").is_unavailable());
        let refused = |code: &str| TransportError::Refused {
            code: code.into(),
            message: "m".into(),
        };
        assert!(!refused("NotAllowedError").is_unavailable());
        assert!(refused("ServiceNotReady").is_unavailable());
        assert!(!TransportError::Timeout("send").is_unavailable());
    }

    #[test]
    fn dead_letter_channel_appends_dlq() {
        assert_eq!(
            dead_letter_channel("t1-partner-events"),
            "t1-partner-events-dlq"
        );
        assert!(is_dead_letter_channel(&dead_letter_channel("saga-replies")));
        assert!(!is_dead_letter_channel("saga-replies"));
    }
}
