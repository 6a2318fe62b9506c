//! Pulsar: per topic, a subscription of the reader's own
//! (`saga-monitor-<random>` for the monitor, non-durable and exclusive),
//! never the orchestrator's.
//!
//! This is what the crate's `Reader` does, but done by hand with a consumer
//! so that the subscription can also be removed explicitly: a real Pulsar
//! drops a non-durable subscription when its consumer disconnects, but
//! pulsar-lite (our development broker) keeps it, and a subscription nobody
//! reads retains every later message. So every broker entry is acked as
//! its last message is read (the crate acks whole entries), and on a clean
//! stop each subscription is unsubscribed. A reader that must keep up
//! (`load-test`) asks for a durable Shared subscription
//! instead (see [`TapSubscription`] for the measurement): it is removed the
//! same way.
//!
//! A task per topic owns its consumer and forwards what it reads. Like the
//! service's consumers, one whose stream ends, keeps failing, or whose
//! connection check fails while idle is rebuilt on the same subscription,
//! starting after the last message it forwarded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use pulsar::consumer::{InitialPosition, Message};
use pulsar::proto::MessageIdData;
use pulsar::{Consumer, ConsumerOptions, Pulsar, SubType, TokioExecutor};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{connection_retry_options, topic as pulsar_topic, Watchdog as PulsarWatchdog};
use crate::transport::tap::{StartAt, TapError, TapSubscription, Tapped, LOG_TARGET};
use crate::transport::RawMessage;

/// How long one `next_batch` waits for a first message.
const POLL: Duration = Duration::from_millis(1000);
/// Messages read ahead of the printer, across all topics.
const QUEUE: usize = 1024;
/// Consecutive read errors after which a consumer is rebuilt.
const MAX_ERRORS: u32 = 3;

/// Subscriptions on a set of topics, merged into one queue.
pub(crate) struct PulsarTap {
    rx: mpsc::Receiver<Tapped>,
    /// Messages the broker delivered again, skipped (see `ReaderTask::tapped`).
    repeats: Arc<AtomicU64>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl PulsarTap {
    /// Connects and subscribes to every topic before returning, so their
    /// positions are fixed (and a broker that is down is reported).
    pub async fn open(
        url: &str,
        channels: &[String],
        start: StartAt,
        kind: TapSubscription,
    ) -> Result<Self, TapError> {
        let client = Pulsar::builder(url, TokioExecutor)
            .with_connection_retry_options(connection_retry_options())
            .build()
            .await?;
        let subscription = format!(
            "{}-{}",
            kind.prefix,
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        // A topic that cannot be subscribed stops those already subscribed.
        let undo = stop.clone().drop_guard();
        let mut tasks = Vec::with_capacity(channels.len());
        let repeats = Arc::new(AtomicU64::new(0));
        for channel in channels {
            let task = ReaderTask {
                client: client.clone(),
                channel: channel.clone(),
                subscription: subscription.clone(),
                durable: kind.durable,
                shared: kind.shared,
                start,
                last: None,
                repeats: repeats.clone(),
                tx: tx.clone(),
            };
            let consumer = task.build().await?;
            tasks.push(tokio::spawn(task.run(consumer, stop.clone())));
        }
        undo.disarm();
        Ok(Self {
            rx,
            repeats,
            stop,
            tasks,
        })
    }

    /// What the consumers forwarded, waiting up to [`POLL`] for the first.
    pub async fn next_batch(&mut self) -> Result<Vec<Tapped>, TapError> {
        let first = match tokio::time::timeout(POLL, self.rx.recv()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => return Err(TapError::Closed),
            Ok(Some(t)) => t,
        };
        let mut batch = vec![first];
        while let Ok(t) = self.rx.try_recv() {
            batch.push(t);
        }
        Ok(batch)
    }

    /// Counts the messages the broker delivered again (and that were skipped).
    pub fn repeats(&self) -> Arc<AtomicU64> {
        self.repeats.clone()
    }

    /// Stops reading and waits for the subscriptions to be removed.
    pub async fn close(mut self) {
        self.stop.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

impl Drop for PulsarTap {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Owns one topic's consumer.
struct ReaderTask {
    client: Pulsar<TokioExecutor>,
    channel: String,
    subscription: String,
    durable: bool,
    shared: bool,
    start: StartAt,
    /// The last message forwarded: a rebuilt consumer starts after it.
    last: Option<MessageIdData>,
    repeats: Arc<AtomicU64>,
    tx: mpsc::Sender<Tapped>,
}

type TopicConsumer = Consumer<Vec<u8>, TokioExecutor>;

impl ReaderTask {
    async fn build(&self) -> Result<TopicConsumer, pulsar::Error> {
        let position = match self.start {
            StartAt::Now => InitialPosition::Latest,
            StartAt::Beginning => InitialPosition::Earliest,
        };
        let mut options = ConsumerOptions::default()
            .durable(self.durable)
            .with_initial_position(position);
        // A durable subscription resumes at its own cursor anyway; the
        // start message is what a non-durable one needs.
        if let Some(last) = &self.last {
            options = options.starting_on_message(last.clone());
        }
        self.client
            .consumer()
            .with_topic(pulsar_topic(&self.channel))
            .with_subscription(&self.subscription)
            .with_subscription_type(if self.shared {
                SubType::Shared
            } else {
                SubType::Exclusive
            })
            .with_consumer_name(format!("{}-{}", self.subscription, self.channel))
            .with_options(options)
            .build()
            .await
    }

    async fn run(mut self, mut consumer: TopicConsumer, stop: CancellationToken) {
        loop {
            let why = tokio::select! {
                () = stop.cancelled() => break,
                why = self.forward(&mut consumer) => match why {
                    Some(why) => why,
                    // The monitor is gone.
                    None => break,
                },
            };
            tracing::warn!(target: LOG_TARGET, channel = %self.channel, reason = %why, "rebuilding the monitor's Pulsar consumer");
            drop(consumer);
            consumer = tokio::select! {
                () = stop.cancelled() => return,
                fresh = self.rebuild() => fresh,
            };
        }
        // Unsubscribing removes the subscription on any broker (see the
        // module overview), not only on one that honours non-durability.
        let bye = async {
            if let Err(e) = consumer.unsubscribe().await {
                tracing::warn!(target: LOG_TARGET, channel = %self.channel, error = %e, "could not remove the monitor's subscription");
            }
            let _ = consumer.close().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), bye).await;
    }

    /// Forwards messages; returns why the consumer needs rebuilding, or
    /// `None` when nobody reads the queue any more.
    async fn forward(&mut self, consumer: &mut TopicConsumer) -> Option<String> {
        let mut errors = 0;
        let mut last_activity = Instant::now();
        let mut watchdog = PulsarWatchdog::new();
        loop {
            tokio::select! {
                next = consumer.next() => {
                    last_activity = Instant::now();
                    match next {
                        Some(Ok(message)) => {
                            errors = 0;
                            // Only our own subscription's cursor moves. The
                            // crate acks whole entries: acked at an entry's
                            // last message, a rebuild mid-entry gets it again
                            // (what was shown is skipped), not past it.
                            if ends_its_entry(&message) {
                                if let Err(e) = consumer.ack(&message).await {
                                    return Some(format!("ack failed: {e}"));
                                }
                            }
                            if let Some(tapped) = self.tapped(message) {
                                self.tx.send(tapped).await.ok()?;
                            }
                        }
                        Some(Err(e)) => {
                            errors += 1;
                            if errors >= MAX_ERRORS {
                                return Some(format!("{errors} consecutive errors, last: {e}"));
                            }
                        }
                        None => return Some("the consumer's stream ended".into()),
                    }
                }
                () = watchdog.due() => {
                    if self.tx.is_closed() {
                        return None;
                    }
                    if let Some(why) = watchdog.check(consumer, last_activity.elapsed()).await {
                        return Some(why);
                    }
                }
            }
        }
    }

    /// Builds a new consumer, backing off between attempts.
    async fn rebuild(&self) -> TopicConsumer {
        let mut failures: u32 = 0;
        loop {
            match self.build().await {
                Ok(consumer) => return consumer,
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(target: LOG_TARGET, channel = %self.channel, error = %e, "cannot rebuild the monitor's Pulsar consumer yet; retrying");
                    }
                    let delay = Duration::from_millis(200u64 << failures.min(5));
                    tokio::time::sleep(delay.min(Duration::from_secs(5))).await;
                }
            }
        }
    }

    /// The message as read; `None` for the one a rebuilt consumer may repeat
    /// (its start position is the last message forwarded).
    fn tapped(&mut self, message: Message<Vec<u8>>) -> Option<Tapped> {
        let id = message.message_id.id;
        // A topic's ids only grow: one at or before the last shown is a
        // redelivery (a rebuilt consumer's start, or an ack the broker did
        // not see), already on screen.
        if self.last.as_ref().is_some_and(|last| !is_after(&id, last)) {
            self.repeats.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let metadata = message.payload.metadata;
        let properties = metadata
            .properties
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        // Messages of one batched entry share its ledger and entry ids.
        let shown_id = match id.batch_index {
            Some(index) => format!("{}:{}:{index}", id.ledger_id, id.entry_id),
            None => format!("{}:{}", id.ledger_id, id.entry_id),
        };
        self.last = Some(id);
        let mut tapped = Tapped::new(
            self.channel.clone(),
            shown_id,
            RawMessage::Body {
                data: message.payload.data,
                properties,
            },
            Utc::now(),
        );
        tapped.broker_time_ms = Some(metadata.publish_time);
        Some(tapped)
    }
}

/// Whether `message` is the last of its broker entry (or alone in it).
fn ends_its_entry(message: &Message<Vec<u8>>) -> bool {
    let id = &message.message_id;
    is_last_of_entry(id.id.batch_index, id.batch_size)
}

/// Whether message `index` of an entry of `size` messages is its last; a
/// message with neither is alone in its entry.
fn is_last_of_entry(index: Option<i32>, size: Option<i32>) -> bool {
    match (index, size) {
        (Some(index), Some(size)) => index.saturating_add(1) >= size,
        _ => true,
    }
}

/// Whether `a` comes after `b` in one topic partition.
fn is_after(a: &MessageIdData, b: &MessageIdData) -> bool {
    let key = |m: &MessageIdData| (m.ledger_id, m.entry_id, m.batch_index.unwrap_or(-1));
    key(a) > key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ledger: u64, entry: u64, batch: Option<i32>) -> MessageIdData {
        MessageIdData {
            ledger_id: ledger,
            entry_id: entry,
            batch_index: batch,
            ..Default::default()
        }
    }

    #[test]
    fn an_entry_is_acked_at_its_last_message_only() {
        assert!(!is_last_of_entry(Some(0), Some(3)));
        assert!(!is_last_of_entry(Some(1), Some(3)));
        assert!(is_last_of_entry(Some(2), Some(3)));
        assert!(is_last_of_entry(Some(0), Some(1)), "an entry of one");
        assert!(is_last_of_entry(None, None), "not batched");
        assert!(is_last_of_entry(Some(i32::MAX), Some(i32::MAX)));
    }

    #[test]
    fn only_later_messages_are_new() {
        let last = id(4, 2122, None);
        assert!(is_after(&id(4, 2123, None), &last));
        assert!(is_after(&id(5, 0, None), &last));
        assert!(!is_after(&id(4, 2122, None), &last), "the same one again");
        assert!(!is_after(&id(4, 2000, None), &last), "a redelivery");
        assert!(is_after(&id(4, 2122, Some(1)), &id(4, 2122, Some(0))));
    }
}
