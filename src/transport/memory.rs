//! In-process transport for the embedded demo and tests.
//!
//! Mirrors the brokers' semantics that matter to the orchestrator: every
//! channel keeps its messages, a subscription created later starts at the
//! beginning, consumers of one subscription share the load, and a nacked
//! delivery is delivered again. Unlike a broker, a delivery dropped without
//! being settled is not redelivered (there is no consumer to time out), and
//! messages live in memory only: nothing survives the process.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    Delivery, OutboundMessage, RawMessage, Settle, Subscription, Transport, TransportError,
    WireFormat,
};

/// How long an idle `next_batch` waits before returning an empty batch.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// The in-memory broker; clones share the same channels.
#[derive(Clone, Default)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    channels: Mutex<HashMap<String, Channel>>,
    notify: Notify,
}

#[derive(Default)]
struct Channel {
    log: Vec<RawMessage>,
    /// The shared subscription's cursor and unsettled / redelivered offsets.
    next: usize,
    pending: HashSet<usize>,
    redeliver: VecDeque<usize>,
}

impl MemoryTransport {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message ever sent to `channel`, oldest first (tests, demo, monitor).
    pub fn messages(&self, channel: &str) -> Vec<RawMessage> {
        self.lock()
            .get(channel)
            .map(|c| c.log.clone())
            .unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        // A panic while holding the lock cannot leave a channel half-written
        // (every critical section is a few pushes), so poisoning is ignored.
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn format(&self) -> WireFormat {
        WireFormat::Body
    }

    async fn send(
        &self,
        channel: &str,
        messages: Vec<OutboundMessage>,
    ) -> Result<(), TransportError> {
        self.lock()
            .entry(channel.to_string())
            .or_default()
            .log
            .extend(messages.into_iter().map(|m| m.raw));
        self.inner.notify.notify_waiters();
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<Box<dyn Subscription>, TransportError> {
        self.lock().entry(channel.to_string()).or_default();
        Ok(Box::new(MemorySubscription {
            broker: self.clone(),
            channel: channel.to_string(),
        }))
    }

    async fn ping(&self) -> Result<(), TransportError> {
        Ok(())
    }
}

struct MemorySubscription {
    broker: MemoryTransport,
    channel: String,
}

impl MemorySubscription {
    fn take(&self, max: usize) -> Vec<Delivery> {
        let mut channels = self.broker.lock();
        let Some(ch) = channels.get_mut(&self.channel) else {
            return Vec::new();
        };
        let mut offsets = Vec::new();
        while offsets.len() < max {
            if let Some(offset) = ch.redeliver.pop_front() {
                offsets.push(offset);
            } else if ch.next < ch.log.len() {
                offsets.push(ch.next);
                ch.next += 1;
            } else {
                break;
            }
        }
        offsets
            .into_iter()
            .map(|offset| {
                ch.pending.insert(offset);
                let settle = MemorySettle {
                    broker: self.broker.clone(),
                    channel: self.channel.clone(),
                    offset,
                };
                Delivery::new(
                    self.channel.clone(),
                    offset.to_string(),
                    ch.log[offset].clone(),
                    Box::new(settle),
                )
            })
            .collect()
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, TransportError> {
        // Register interest before looking, so a send between the look and
        // the wait is not missed.
        let notified = self.broker.inner.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let batch = self.take(max);
        if !batch.is_empty() {
            return Ok(batch);
        }
        let _ = tokio::time::timeout(IDLE_WAIT, notified).await;
        Ok(self.take(max))
    }
}

struct MemorySettle {
    broker: MemoryTransport,
    channel: String,
    offset: usize,
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(&self) -> Result<(), TransportError> {
        if let Some(ch) = self.broker.lock().get_mut(&self.channel) {
            ch.pending.remove(&self.offset);
        }
        Ok(())
    }

    async fn nack(&self) -> Result<(), TransportError> {
        if let Some(ch) = self.broker.lock().get_mut(&self.channel) {
            if ch.pending.remove(&self.offset) {
                ch.redeliver.push_back(self.offset);
            }
        }
        self.broker.inner.notify.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8) -> OutboundMessage {
        OutboundMessage {
            key: None,
            raw: RawMessage::Body {
                data: vec![n],
                properties: vec![],
            },
        }
    }

    fn data(d: &Delivery) -> u8 {
        match &d.raw {
            RawMessage::Body { data, .. } => data[0],
            RawMessage::Fields(_) => unreachable!(),
        }
    }

    #[tokio::test]
    async fn late_subscribers_start_at_the_beginning() {
        let t = MemoryTransport::new();
        t.send("ch", vec![msg(1), msg(2)]).await.unwrap();
        let mut sub = t.subscribe("ch").await.unwrap();
        let batch = sub.next_batch(10).await.unwrap();
        assert_eq!(batch.iter().map(data).collect::<Vec<_>>(), [1, 2]);
    }

    #[tokio::test]
    async fn consumers_of_one_subscription_share_messages() {
        let t = MemoryTransport::new();
        let mut a = t.subscribe("ch").await.unwrap();
        let mut b = t.subscribe("ch").await.unwrap();
        t.send("ch", vec![msg(1), msg(2)]).await.unwrap();
        let first = a.next_batch(1).await.unwrap();
        let second = b.next_batch(10).await.unwrap();
        assert_eq!(first.len() + second.len(), 2);
        assert_ne!(data(&first[0]), data(&second[0]));
    }

    #[tokio::test]
    async fn nacked_messages_come_back_and_acked_ones_do_not() {
        let t = MemoryTransport::new();
        let mut sub = t.subscribe("ch").await.unwrap();
        t.send("ch", vec![msg(1), msg(2)]).await.unwrap();
        let mut batch = sub.next_batch(10).await.unwrap();
        let second = batch.pop().unwrap();
        batch.pop().unwrap().ack().await.unwrap();
        second.nack().await.unwrap();
        let again = sub.next_batch(10).await.unwrap();
        assert_eq!(again.iter().map(data).collect::<Vec<_>>(), [2]);
    }

    #[tokio::test]
    async fn an_idle_wait_wakes_on_send() {
        let t = MemoryTransport::new();
        let mut sub = t.subscribe("ch").await.unwrap();
        let sender = t.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sender.send("ch", vec![msg(9)]).await.unwrap();
        });
        let batch = sub.next_batch(10).await.unwrap();
        assert_eq!(batch.iter().map(data).collect::<Vec<_>>(), [9]);
    }
}
