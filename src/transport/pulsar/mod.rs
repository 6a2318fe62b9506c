//! Apache Pulsar adapter (crate `pulsar`, tokio runtime).
//!
//! - Each channel is the topic `persistent://public/default/<channel>`; the
//!   subscription is Shared and durable, created at `Earliest`.
//! - Messages carry the envelope as JSON, the partner as key and the
//!   routing fields as properties (built by [`OutboundMessage::encode`]).
//! - One task per subscription owns the crate's consumer: it forwards
//!   messages, performs acks and nacks by message id, and rebuilds the
//!   consumer when its stream ends, errors, or a periodic connection check
//!   fails while idle. The crate reconnects on its own, but consumers have
//!   been seen to stop yielding after a broker restart; the rebuild does not
//!   rely on that. Unacked messages of a dropped consumer are redelivered and
//!   deduplicated downstream.
//! - Sends go through one producer per topic with the outbound queue bounded:
//!   receipts are awaited every [`SEND_WINDOW`] messages, and a `SlowDown`
//!   (queue full) waits for the receipts out before resending.
//! - The producers batch (unless built [`PulsarTransport::without_batching`]):
//!   the messages of one send share broker entries of up to [`SEND_WINDOW`]
//!   messages and [`BATCH_BYTES`], each message keeping its key and
//!   properties. The broker then stores, dispatches and acks one entry
//!   where it did each message: on pulsar-lite a closed loop ran 30% faster
//!   for it. A send flushes each entry as it closes and awaits its receipts
//!   before filling the next, so no message waits for a batch to fill, and
//!   an entry that fails has nothing after it already on its way (which
//!   would overtake it when sent again). A send of several messages has its
//!   channel's producer to itself. A send runs in a task of its own: a
//!   caller that gives up does not leave messages in an entry nobody
//!   flushes (the send goes on, at least once, as it did unbatched).

pub(crate) mod tap;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use pulsar::consumer::{InitialPosition, Message};
use pulsar::error::{ConnectionError, ProducerError};
use pulsar::producer::{self, SendFuture};
use pulsar::proto::MessageIdData;
use pulsar::{
    ConnectionRetryOptions, Consumer, ConsumerOptions, OperationRetryOptions, Producer,
    ProducerOptions, Pulsar, SubType, TokioExecutor,
};
use tokio::sync::{mpsc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tracing::Instrument;

use super::{
    Delivery, OutboundMessage, RawMessage, Settle, Subscription, Transport, TransportError,
    WireFormat,
};
use crate::telemetry;

/// Messages sent before their receipts are awaited: bounds memory and the
/// crate's outbound queue.
const SEND_WINDOW: usize = 256;
/// Payload bytes a batched entry may carry; a message of this size or more
/// is an entry of its own, so batching makes no entry the broker refuses
/// out of messages it takes one by one, as long as it takes entries of this
/// size and a little more (the messages' metadata is not counted). A
/// message the broker refuses fails its entry, and the relay then sends the
/// run one message at a time to find it (what was taken goes again: at
/// least once).
const BATCH_BYTES: usize = 128 * 1024;
/// The crate's per-connection outbound queue (default 100).
const OUTBOUND_QUEUE: usize = 1024;
/// Messages the broker may push to one consumer ahead of our reads.
const RECEIVER_QUEUE: u32 = 512;
/// How long one `next_batch` waits for a first message.
const POLL: Duration = Duration::from_millis(500);
/// Idle this long, the consumer's connection is checked (plus up to
/// [`CHECK_JITTER`]). The check is a ping, and the crate's own keep-alive
/// pings the same connection every 30 s: two pings in flight at once cancel
/// one of them, so checks must not fall into step with it.
const IDLE_CHECK: Duration = Duration::from_secs(10);
const CHECK_JITTER: Duration = Duration::from_secs(4);
/// Failed connection checks in a row that make the consumer be rebuilt: one
/// can be a ping cancelled by a concurrent keep-alive.
const FAILED_CHECKS: u32 = 2;
/// Consecutive stream errors after which the consumer is rebuilt.
const MAX_STREAM_ERRORS: u32 = 3;
/// Time allowed for a health check.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks an idle consumer's connection now and then, and says when the
/// consumer should be rebuilt. Shared by the adapter and the monitor.
pub(crate) struct Watchdog {
    failed: u32,
    next: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Watchdog {
    pub(crate) fn new() -> Self {
        Self {
            failed: 0,
            next: Box::pin(tokio::time::sleep(Self::interval())),
        }
    }

    fn interval() -> Duration {
        IDLE_CHECK + CHECK_JITTER.mul_f64(rand::random::<f64>())
    }

    /// Resolves when the next check is due (cancel-safe: it keeps its deadline).
    pub(crate) async fn due(&mut self) {
        (&mut self.next).await;
    }

    /// Checks the connection unless the consumer was busy lately; `Some`
    /// (why) when the consumer should be rebuilt.
    pub(crate) async fn check(
        &mut self,
        consumer: &mut Consumer<Vec<u8>, TokioExecutor>,
        idle_for: Duration,
    ) -> Option<String> {
        self.next
            .as_mut()
            .reset(tokio::time::Instant::now() + Self::interval());
        if idle_for < IDLE_CHECK {
            return None;
        }
        let problem = match tokio::time::timeout(PING_TIMEOUT, consumer.check_connection()).await {
            Ok(Ok(())) => {
                self.failed = 0;
                return None;
            }
            Ok(Err(e)) => format!("connection check failed: {e}"),
            Err(_) => "connection check timed out".to_string(),
        };
        self.failed += 1;
        tracing::debug!(%problem, failed = self.failed, "Pulsar consumer check failed");
        (self.failed >= FAILED_CHECKS)
            .then(|| format!("{} checks in a row: {problem}", self.failed))
    }
}

/// How clients (the adapter's, the monitor's) reconnect: quickly at first,
/// never more than 5 s apart, giving up on one attempt after 8 tries (the
/// consumer watchdog then starts over).
pub(crate) fn connection_retry_options() -> ConnectionRetryOptions {
    ConnectionRetryOptions {
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
        max_retries: 8,
        connection_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_secs(30),
        ..Default::default()
    }
}

/// One handshake with the broker at `url`, no retries and nothing
/// logged: start-up asks this until it answers (see `startup::reach`),
/// then builds the real client, whose reconnection loop logs every retry.
pub async fn probe(url: &str) -> Result<(), TransportError> {
    use tracing::instrument::WithSubscriber;
    // The crate logs each failed handshake at WARN or ERROR; the caller
    // says the failure once itself.
    let quiet = tracing::subscriber::NoSubscriber::default();
    let client = Pulsar::builder(url, TokioExecutor)
        .with_connection_retry_options(ConnectionRetryOptions {
            max_retries: 0,
            connection_timeout: PROBE_TIMEOUT,
            ..connection_retry_options()
        })
        .with_operation_retry_options(OperationRetryOptions {
            operation_timeout: PROBE_TIMEOUT,
            retry_delay: Duration::from_millis(100),
            max_retries: Some(0),
        })
        .build()
        .with_subscriber(quiet)
        .await?;
    drop(client);
    Ok(())
}

/// One start-up handshake at most.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The topic of a channel; a full topic name is kept as given.
pub fn topic(channel: &str) -> String {
    if channel.contains("://") {
        channel.to_string()
    } else {
        format!("persistent://public/default/{channel}")
    }
}

/// One shared producer per channel, built on first send.
type Producers = Arc<Mutex<HashMap<String, Arc<ChannelProducer>>>>;

/// A channel's producer, and the turns of the sends that use it.
struct ChannelProducer {
    producer: Mutex<Producer<TokioExecutor>>,
    /// A send of several messages has the producer to itself, so that no
    /// other send's flush closes its entry early (taking it past
    /// [`BATCH_BYTES`], or putting a second entry of its in flight); sends
    /// of one message, whose order is nobody else's, share it.
    turns: RwLock<()>,
}

/// A send's hold on its channel's producer (see [`ChannelProducer`]),
/// released when dropped.
#[allow(dead_code, reason = "the guards are held only for their drop")]
enum Turn<'a> {
    Alone(RwLockWriteGuard<'a, ()>),
    Shared(RwLockReadGuard<'a, ()>),
}

impl ChannelProducer {
    async fn turn(&self, messages: usize) -> Turn<'_> {
        if messages > 1 {
            Turn::Alone(self.turns.write().await)
        } else {
            Turn::Shared(self.turns.read().await)
        }
    }
}

/// A Pulsar cluster.
#[derive(Clone)]
pub struct PulsarTransport {
    client: Pulsar<TokioExecutor>,
    subscription: String,
    consumer_name: String,
    producers: Producers,
    /// Makes every consumer name unique: a rebuilt consumer must not
    /// collide with the registration of the one it replaces.
    generation: Arc<AtomicU64>,
    /// Whether producers put several messages in one broker entry.
    batching: bool,
}

impl PulsarTransport {
    /// Connects to `url` (`pulsar://` or `pulsar+ssl://`); `subscription`
    /// is the shared subscription, `consumer_name` this instance's name in it.
    pub async fn connect(
        url: &str,
        subscription: &str,
        consumer_name: &str,
    ) -> Result<Self, TransportError> {
        let client = Pulsar::builder(url, TokioExecutor)
            .with_connection_retry_options(connection_retry_options())
            .with_operation_retry_options(OperationRetryOptions {
                operation_timeout: Duration::from_secs(10),
                retry_delay: Duration::from_millis(500),
                max_retries: Some(5),
            })
            .with_outbound_channel_size(OUTBOUND_QUEUE)
            .build()
            .await?;
        Ok(Self {
            client,
            subscription: subscription.to_string(),
            consumer_name: consumer_name.to_string(),
            producers: Arc::default(),
            generation: Arc::default(),
            batching: true,
        })
    }

    /// One message per broker entry, for consumers that route by key
    /// (Key_Shared): an entry of several partners' messages goes to the
    /// consumer of one of them (`PULSAR_BATCHING=false`).
    #[must_use]
    pub fn without_batching(mut self) -> Self {
        self.batching = false;
        self
    }

    async fn producer(&self, channel: &str) -> Result<Arc<ChannelProducer>, TransportError> {
        let mut producers = self.producers.lock().await;
        if let Some(p) = producers.get(channel) {
            return Ok(p.clone());
        }
        let producer = self
            .client
            .producer()
            .with_topic(topic(channel))
            .with_options(ProducerOptions {
                // Wait for room in the outbound queue rather than fail.
                block_queue_if_full: true,
                // `send_all` closes entries by bytes itself, before a
                // message would take one over, and by count at the same
                // 256 as the crate; no timer, which could close an entry
                // while the one before is in flight.
                batch_size: self.batching.then_some(SEND_WINDOW as u32),
                ..Default::default()
            })
            .build()
            .await?;
        let producer = Arc::new(ChannelProducer {
            producer: Mutex::new(producer),
            turns: RwLock::new(()),
        });
        producers.insert(channel.to_string(), producer.clone());
        Ok(producer)
    }

    /// Drops a producer after an error so the next send builds a fresh one.
    async fn forget_producer(&self, channel: &str) {
        self.producers.lock().await.remove(channel);
    }

    async fn build_consumer(
        &self,
        channel: &str,
    ) -> Result<Consumer<Vec<u8>, TokioExecutor>, TransportError> {
        let n = self.generation.fetch_add(1, Ordering::Relaxed);
        let consumer = self
            .client
            .consumer()
            .with_topic(topic(channel))
            .with_subscription(&self.subscription)
            // Key_Shared needs metadata the crate does not send; correctness
            // does not depend on it (each saga is serialized in the store).
            .with_subscription_type(SubType::Shared)
            .with_consumer_name(format!("{}-{channel}-{n}", self.consumer_name))
            .with_options(
                ConsumerOptions::default()
                    .with_initial_position(InitialPosition::Earliest)
                    .with_receiver_queue_size(RECEIVER_QUEUE),
            )
            .build::<Vec<u8>>()
            .await?;
        Ok(consumer)
    }

    /// Sends `messages` in order, in entries of at most [`SEND_WINDOW`]
    /// messages and [`BATCH_BYTES`] when batching, one entry in flight at a
    /// time: what follows an entry is queued only once its receipts are in.
    async fn send_all(
        &self,
        channel: &str,
        messages: Vec<OutboundMessage>,
    ) -> Result<(), TransportError> {
        let channel_producer = self.producer(channel).await?;
        let _turn = channel_producer.turn(messages.len()).await;
        let producer = &channel_producer.producer;
        // Unbatched, each message is an entry anyway: only the window counts.
        let entry_bytes = if self.batching {
            BATCH_BYTES
        } else {
            usize::MAX
        };
        let mut open = Unsettled::default();
        for message in messages {
            let message = to_pulsar(message);
            let size = message.payload.len();
            if !open.receipts.is_empty() && open.bytes.saturating_add(size) > entry_bytes {
                self.settle_sent(producer, &mut open).await?;
            }
            self.enqueue(producer, message, &mut open).await?;
            open.bytes = open.bytes.saturating_add(size);
            if open.receipts.len() >= SEND_WINDOW || open.bytes >= entry_bytes {
                self.settle_sent(producer, &mut open).await?;
            }
        }
        self.settle_sent(producer, &mut open).await
    }

    /// Hands `message` to the producer; its receipt joins `open`.
    async fn enqueue(
        &self,
        producer: &Mutex<Producer<TokioExecutor>>,
        message: producer::Message,
        open: &mut Unsettled,
    ) -> Result<(), TransportError> {
        loop {
            let sent = producer
                .lock()
                .await
                .send_non_blocking(message.clone())
                .await;
            match sent {
                Ok(receipt) => {
                    open.receipts.push(receipt);
                    return Ok(());
                }
                Err(pulsar::Error::Producer(ProducerError::Connection(
                    ConnectionError::SlowDown,
                ))) => {
                    // The queue is full: let what is in it drain first.
                    if open.receipts.is_empty() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    self.settle_sent(producer, open).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Flushes the producer's open entry, if it batches (its receipts come
    /// only once it is sent), then awaits the receipts of `open`.
    async fn settle_sent(
        &self,
        producer: &Mutex<Producer<TokioExecutor>>,
        open: &mut Unsettled,
    ) -> Result<(), TransportError> {
        if self.batching && !open.receipts.is_empty() {
            // Its outcome is in the receipts.
            producer.lock().await.send_batch().await?;
        }
        open.bytes = 0;
        await_receipts(&mut open.receipts).await
    }
}

/// Messages of a send handed to the producer whose receipts are not in.
#[derive(Default)]
struct Unsettled {
    /// One for each message, in the order they were handed over.
    receipts: Vec<SendFuture>,
    /// Their payload bytes: what the open entry holds, when batching.
    bytes: usize,
}

/// Awaits `receipts` in order; the first failure is the send's.
async fn await_receipts(receipts: &mut Vec<SendFuture>) -> Result<(), TransportError> {
    for receipt in receipts.drain(..) {
        receipt.await.map_err(receipt_error)?;
    }
    Ok(())
}

/// A failed receipt as a transport error: [`TransportError::Refused`] when
/// the broker answered with a `SendError`. The crate reports that only as
/// the debug text of the whole response command, so the code and message
/// are read out of it.
fn receipt_error(e: pulsar::Error) -> TransportError {
    // A batch's messages share its entry's failure.
    let cause = match &e {
        pulsar::Error::Producer(ProducerError::Batch(cause)) => cause.as_ref(),
        e => e,
    };
    let pulsar::Error::Producer(ProducerError::Connection(ConnectionError::UnexpectedResponse(
        text,
    ))) = cause
    else {
        return e.into();
    };
    match send_error(text) {
        Some((code, message)) => TransportError::Refused { code, message },
        None => e.into(),
    }
}

/// `(error, message)` of the `CommandSendError` in a command's debug text.
fn send_error(text: &str) -> Option<(String, String)> {
    let fields = text.split_once("send_error: Some(CommandSendError {")?.1;
    let code = fields.split_once(" error: ")?.1;
    let code: String = code
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let quoted = fields.split_once(" message: \"")?.1;
    let mut message = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return (!code.is_empty()).then_some((code, message)),
            '\\' => message.extend(chars.next()),
            c => message.push(c),
        }
    }
    None
}

fn to_pulsar(message: OutboundMessage) -> producer::Message {
    let (payload, properties) = match message.raw {
        RawMessage::Body { data, properties } => (data, properties.into_iter().collect()),
        // Fields only come from Redis; carried as a JSON object if ever sent here.
        RawMessage::Fields(fields) => {
            let obj: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned().into()))
                .collect();
            (serde_json::to_vec(&obj).unwrap_or_default(), HashMap::new())
        }
    };
    producer::Message {
        payload,
        properties,
        partition_key: message.key,
        ..Default::default()
    }
}

#[async_trait]
impl Transport for PulsarTransport {
    fn format(&self) -> WireFormat {
        WireFormat::Body
    }

    async fn send(
        &self,
        channel: &str,
        messages: Vec<OutboundMessage>,
    ) -> Result<(), TransportError> {
        if messages.is_empty() {
            return Ok(());
        }
        let this = self.clone();
        let owned = channel.to_string();
        let send = async move {
            let result = this.send_all(&owned, messages).await;
            // A refusal is about one message: the producer is fine.
            if result
                .as_ref()
                .is_err_and(|e| !matches!(e, TransportError::Refused { .. }))
            {
                this.forget_producer(&owned).await;
            }
            result
        };
        tokio::spawn(send.in_current_span())
            .await
            .unwrap_or_else(|e| {
                if e.is_panic() {
                    tracing::error!(channel, error = %e, "a Pulsar send panicked");
                }
                Err(TransportError::Task(e.to_string()))
            })
    }

    async fn subscribe(&self, channel: &str) -> Result<Box<dyn Subscription>, TransportError> {
        // Built here once so a broker that is down is reported to the caller.
        let consumer = self.build_consumer(channel).await?;
        let (deliveries, rx) = mpsc::channel(RECEIVER_QUEUE as usize);
        let (settle, settlements) = mpsc::unbounded_channel();
        let owner = ConsumerTask {
            transport: self.clone(),
            channel: channel.to_string(),
            deliveries,
            settle,
            settlements,
            batches: Batches::default(),
        };
        tokio::spawn(owner.run(consumer));
        Ok(Box::new(PulsarSubscription { rx }))
    }

    async fn ping(&self) -> Result<(), TransportError> {
        let lookup = self.client.lookup_topic(topic("saga-orchestrator-ping"));
        match tokio::time::timeout(PING_TIMEOUT, lookup).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(TransportError::Timeout("pulsar lookup")),
        }
    }
}

/// An ack or nack for the consumer task to carry out.
struct Settlement {
    topic: String,
    id: MessageIdData,
    /// Messages in the broker entry this one came in (producer batching).
    batch_size: i32,
    ack: bool,
}

/// Entries that carry several messages (a batching producer, the default
/// of the Java and Go clients). The crate acks by entry, so acking one
/// message would ack its whole entry, and the rest would be lost if this
/// instance died before handling them. An entry is therefore settled only
/// once every message in it is: acked if all were, else given back whole
/// (the ones already handled are deduplicated on redelivery).
#[derive(Debug, Default)]
struct Batches {
    open: HashMap<(u64, u64, i32), OpenEntry>,
}

#[derive(Debug)]
struct OpenEntry {
    unsettled: i32,
    nacked: bool,
}

/// What to tell the broker about an entry.
#[derive(Debug, PartialEq, Eq)]
enum EntryVerdict {
    Ack,
    Nack,
    /// Some of its messages are still being handled.
    Wait,
}

fn entry_key(id: &MessageIdData) -> (u64, u64, i32) {
    (id.ledger_id, id.entry_id, id.partition.unwrap_or(-1))
}

impl Batches {
    /// A message was handed out (once per message of an entry).
    fn delivered(&mut self, id: &MessageIdData, batch_size: i32) {
        if batch_size > 1 {
            self.open.entry(entry_key(id)).or_insert(OpenEntry {
                unsettled: batch_size,
                nacked: false,
            });
        }
    }

    /// One message was settled: what its entry needs now.
    fn settled(&mut self, id: &MessageIdData, batch_size: i32, ack: bool) -> EntryVerdict {
        if batch_size <= 1 {
            return if ack {
                EntryVerdict::Ack
            } else {
                EntryVerdict::Nack
            };
        }
        let key = entry_key(id);
        let Some(entry) = self.open.get_mut(&key) else {
            // Delivered by a consumer since replaced: its entry comes again.
            return EntryVerdict::Wait;
        };
        entry.unsettled -= 1;
        entry.nacked |= !ack;
        if entry.unsettled > 0 {
            return EntryVerdict::Wait;
        }
        let nacked = entry.nacked;
        self.open.remove(&key);
        if nacked {
            EntryVerdict::Nack
        } else {
            EntryVerdict::Ack
        }
    }
}

struct PulsarSettle {
    settlement: std::sync::Mutex<Option<Settlement>>,
    tx: mpsc::UnboundedSender<Settlement>,
}

#[async_trait]
impl Settle for PulsarSettle {
    async fn ack(&self) -> Result<(), TransportError> {
        self.send(true)
    }

    async fn nack(&self) -> Result<(), TransportError> {
        self.send(false)
    }
}

impl PulsarSettle {
    fn send(&self, ack: bool) -> Result<(), TransportError> {
        let taken = self
            .settlement
            .lock()
            .map_err(|_| TransportError::Closed)?
            .take();
        let Some(mut settlement) = taken else {
            return Ok(());
        };
        settlement.ack = ack;
        self.tx.send(settlement).map_err(|_| TransportError::Closed)
    }
}

struct PulsarSubscription {
    rx: mpsc::Receiver<Delivery>,
}

#[async_trait]
impl Subscription for PulsarSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, TransportError> {
        let first = match tokio::time::timeout(POLL, self.rx.recv()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => return Err(TransportError::Closed),
            Ok(Some(d)) => d,
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        Ok(batch)
    }
}

/// Owns one channel's consumer for as long as its subscription lives.
struct ConsumerTask {
    transport: PulsarTransport,
    channel: String,
    deliveries: mpsc::Sender<Delivery>,
    settle: mpsc::UnboundedSender<Settlement>,
    settlements: mpsc::UnboundedReceiver<Settlement>,
    batches: Batches,
}

/// Why a consumer is being replaced.
enum Rebuild {
    Because(String),
    /// The subscription was dropped: stop.
    Stop,
}

impl ConsumerTask {
    async fn run(mut self, first: Consumer<Vec<u8>, TokioExecutor>) {
        let mut consumer = first;
        loop {
            let why = match self.serve(&mut consumer).await {
                Rebuild::Stop => {
                    let _ = consumer.close().await;
                    return;
                }
                Rebuild::Because(why) => why,
            };
            tracing::warn!(channel = %self.channel, reason = %why, "rebuilding the Pulsar consumer");
            metrics::counter!(telemetry::CONSUMER_RECONNECTS, "channel" => self.channel.clone())
                .increment(1);
            let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
            match self.rebuild().await {
                Some(fresh) => {
                    // The new consumer gets the unsettled entries again.
                    self.batches = Batches::default();
                    consumer = fresh;
                }
                None => return,
            }
        }
    }

    /// Builds a new consumer, backing off; logs the first failure and the
    /// recovery, not every attempt. `None` when the subscription is gone.
    async fn rebuild(&self) -> Option<Consumer<Vec<u8>, TokioExecutor>> {
        let mut failures: u32 = 0;
        loop {
            if self.deliveries.is_closed() {
                return None;
            }
            match self.transport.build_consumer(&self.channel).await {
                Ok(consumer) => {
                    tracing::info!(channel = %self.channel, attempts = failures + 1, "Pulsar consumer rebuilt");
                    return Some(consumer);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(channel = %self.channel, error = %e, "cannot rebuild the Pulsar consumer yet; retrying with backoff");
                    } else {
                        tracing::debug!(channel = %self.channel, error = %e, failures, "consumer rebuild failed");
                    }
                    let delay = Duration::from_millis(200u64 << failures.min(5));
                    tokio::time::sleep(delay.min(Duration::from_secs(5))).await;
                }
            }
        }
    }

    /// Forwards messages and settlements until the consumer needs replacing.
    async fn serve(&mut self, consumer: &mut Consumer<Vec<u8>, TokioExecutor>) -> Rebuild {
        let mut pending: Option<Delivery> = None;
        let mut errors = 0;
        let mut last_activity = Instant::now();
        let mut watchdog = Watchdog::new();
        loop {
            tokio::select! {
                biased;
                // The subscription was dropped (shutdown): close now, so the
                // broker hands what we hold to other instances at once.
                () = self.deliveries.closed() => {
                    // Acks of the last batch handled may still be queued.
                    while let Ok(s) = self.settlements.try_recv() {
                        if settle(&mut self.batches, consumer, s).await.is_err() {
                            break;
                        }
                    }
                    return Rebuild::Stop;
                }
                settlement = self.settlements.recv() => {
                    let Some(s) = settlement else { return Rebuild::Stop };
                    if let Err(e) = settle(&mut self.batches, consumer, s).await {
                        // Not acked: the broker redelivers it and the
                        // store's dedup makes that harmless.
                        return Rebuild::Because(format!("ack failed: {e}"));
                    }
                }
                permit = self.deliveries.reserve(), if pending.is_some() => {
                    let Ok(permit) = permit else { return Rebuild::Stop };
                    if let Some(d) = pending.take() {
                        permit.send(d);
                    }
                }
                next = consumer.next(), if pending.is_none() => {
                    last_activity = Instant::now();
                    match next {
                        Some(Ok(message)) => {
                            errors = 0;
                            self.batches.delivered(&message.message_id.id, message.message_id.batch_size.unwrap_or(1));
                            pending = Some(self.delivery(message));
                        }
                        Some(Err(e)) => {
                            errors += 1;
                            tracing::debug!(channel = %self.channel, error = %e, "Pulsar consumer error");
                            if errors >= MAX_STREAM_ERRORS {
                                return Rebuild::Because(format!("{errors} consecutive errors, last: {e}"));
                            }
                        }
                        None => return Rebuild::Because("the consumer stream ended".into()),
                    }
                }
                () = watchdog.due() => {
                    if let Some(why) = watchdog.check(consumer, last_activity.elapsed()).await {
                        return Rebuild::Because(why);
                    }
                }
            }
        }
    }

    fn delivery(&self, message: Message<Vec<u8>>) -> Delivery {
        let id = message.message_id.id.clone();
        let batch_size = message.message_id.batch_size.unwrap_or(1);
        let properties = message
            .payload
            .metadata
            .properties
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let settle = PulsarSettle {
            settlement: std::sync::Mutex::new(Some(Settlement {
                topic: message.topic.clone(),
                id: id.clone(),
                batch_size,
                ack: true,
            })),
            tx: self.settle.clone(),
        };
        Delivery::new(
            self.channel.clone(),
            format!(
                "{}:{}:{}:{}",
                id.ledger_id,
                id.entry_id,
                id.partition.unwrap_or(-1),
                id.batch_index.unwrap_or(-1)
            ),
            RawMessage::Body {
                data: message.payload.data,
                properties,
            },
            Box::new(settle),
        )
    }
}

/// Tells the broker about a settled message, entry by entry.
async fn settle(
    batches: &mut Batches,
    consumer: &mut Consumer<Vec<u8>, TokioExecutor>,
    s: Settlement,
) -> Result<(), pulsar::error::ConsumerError> {
    match batches.settled(&s.id, s.batch_size, s.ack) {
        EntryVerdict::Ack => consumer.ack_with_id(&s.topic, s.id).await,
        EntryVerdict::Nack => consumer.nack_with_id(&s.topic, s.id).await,
        EntryVerdict::Wait => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(entry: u64, batch_index: i32) -> MessageIdData {
        MessageIdData {
            ledger_id: 7,
            entry_id: entry,
            batch_index: Some(batch_index),
            ..Default::default()
        }
    }

    #[test]
    fn a_batched_entry_is_acked_once_all_its_messages_are() {
        let mut b = Batches::default();
        for i in 0..3 {
            b.delivered(&id(1, i), 3);
        }
        assert_eq!(b.settled(&id(1, 0), 3, true), EntryVerdict::Wait);
        assert_eq!(b.settled(&id(1, 2), 3, true), EntryVerdict::Wait);
        assert_eq!(b.settled(&id(1, 1), 3, true), EntryVerdict::Ack);
        assert!(b.open.is_empty());
    }

    #[test]
    fn one_nacked_message_gives_its_whole_entry_back() {
        let mut b = Batches::default();
        b.delivered(&id(2, 0), 2);
        b.delivered(&id(2, 1), 2);
        assert_eq!(b.settled(&id(2, 0), 2, false), EntryVerdict::Wait);
        assert_eq!(b.settled(&id(2, 1), 2, true), EntryVerdict::Nack);
    }

    #[test]
    fn single_messages_settle_at_once_and_strangers_wait() {
        let mut b = Batches::default();
        let single = MessageIdData {
            ledger_id: 7,
            entry_id: 9,
            ..Default::default()
        };
        assert_eq!(b.settled(&single, 1, true), EntryVerdict::Ack);
        assert_eq!(b.settled(&single, 1, false), EntryVerdict::Nack);
        // From an entry a replaced consumer delivered: it comes again whole.
        assert_eq!(b.settled(&id(3, 0), 4, true), EntryVerdict::Wait);
    }

    #[test]
    fn a_send_error_is_read_out_of_the_crates_debug_text() {
        // As the crate reported pulsar-lite's refusal of an oversize message.
        let text = "BaseCommand { r#type: SendError, connect: None, send_receipt: None, \
            send_error: Some(CommandSendError { producer_id: 0, sequence_id: 1, \
            error: NotAllowedError, message: \"Exceed maximum message size: 10024 > 4096\" }), \
            message: None, ack: None }";
        assert_eq!(
            send_error(text),
            Some((
                "NotAllowedError".to_string(),
                "Exceed maximum message size: 10024 > 4096".to_string()
            ))
        );
        let quoted = r#"send_error: Some(CommandSendError { error: PersistenceError, message: "a \"b\" \\ c" })"#;
        assert_eq!(
            send_error(quoted),
            Some(("PersistenceError".into(), r#"a "b" \ c"#.into()))
        );
        assert_eq!(send_error("BaseCommand { r#type: Pong }"), None);
        let e = receipt_error(pulsar::Error::Producer(ProducerError::Connection(
            ConnectionError::UnexpectedResponse(text.into()),
        )));
        assert!(matches!(e, TransportError::Refused { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "the broker refused the message: NotAllowedError: Exceed maximum message size: 10024 > 4096"
        );
        // A refused entry fails each of its messages so: still a refusal,
        // which the relay answers by sending the run one message at a time.
        let batched = receipt_error(pulsar::Error::Producer(ProducerError::Batch(Arc::new(
            pulsar::Error::Producer(ProducerError::Connection(
                ConnectionError::UnexpectedResponse(text.into()),
            )),
        ))));
        assert!(batched.blames_the_message(), "{batched}");
        let outage = receipt_error(pulsar::Error::Producer(ProducerError::Batch(Arc::new(
            pulsar::Error::Producer(ProducerError::Connection(ConnectionError::Disconnected)),
        ))));
        assert!(
            !matches!(outage, TransportError::Refused { .. }),
            "{outage}"
        );
    }

    #[test]
    fn channels_map_to_default_namespace_topics() {
        assert_eq!(
            topic("partner-events"),
            "persistent://public/default/partner-events"
        );
        assert_eq!(
            topic("persistent://acme/saga/partner-events"),
            "persistent://acme/saga/partner-events"
        );
    }

    #[test]
    fn outbound_messages_keep_key_and_properties() {
        let m = to_pulsar(OutboundMessage {
            key: Some("p-1".into()),
            raw: RawMessage::Body {
                data: b"{}".to_vec(),
                properties: vec![("correlation_id".into(), "c-1".into())],
            },
        });
        assert_eq!(m.partition_key.as_deref(), Some("p-1"));
        assert_eq!(
            m.properties.get("correlation_id").map(String::as_str),
            Some("c-1")
        );
        assert_eq!(m.payload, b"{}");
    }
}

/// The `pulsar` crate opens its broker connections itself, and 6.9.1 left
/// Nagle's algorithm on: an ack (which has no answer) followed by a send on
/// the same connection then held the send until the broker's delayed ACK,
/// 40 ms on Linux, at nearly every hop. The vendored copy (`vendor/pulsar`)
/// sets `TCP_NODELAY`; this checks it on the socket the client really opens.
#[cfg(all(test, target_os = "linux"))]
mod nagle_tests {
    use pulsar::{Pulsar, TokioExecutor};

    use crate::transport::socket_probe::SilentServer;

    #[tokio::test]
    async fn the_clients_broker_connection_does_not_wait_for_nagle() {
        let broker = SilentServer::bind().await;
        let url = format!("pulsar://{}", broker.addr());
        let client = tokio::spawn(async move { Pulsar::builder(url, TokioExecutor).build().await });
        let nodelay = broker.nodelay_of_next_client().await;
        client.abort();
        assert_eq!(nodelay, Some(true), "TCP_NODELAY of the client's socket");
    }
}
