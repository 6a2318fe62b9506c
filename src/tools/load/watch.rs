//! Terminal saga events, read from `saga-events` by a reader of the load
//! test's own: on Redis a plain `XREAD` from the stream's last entry at the
//! start (no consumer group to clean up, the orchestrator's untouched); on
//! Pulsar a durable Shared subscription `saga-load-test-…` created at the
//! latest message and removed again at [`TerminalWatch::close`] (see
//! [`TapSubscription`] for why: pulsar-lite floods an Exclusive one with
//! redeliveries).
//!
//! A task owns the reader so every event is stamped when it arrives, not
//! when the run gets round to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ledger::{Outcome, Seen};
use super::LoadError;
use crate::config::BrokerUrl;
use crate::transport::tap::{StartAt, Tap, TapError, TapSubscription, Tapped};
use crate::transport::RawMessage;

/// The load test's subscriptions on Pulsar.
const SUBSCRIPTION: TapSubscription = TapSubscription {
    prefix: "saga-load-test",
    durable: true,
    shared: true,
};
/// Batches read ahead of the run.
const QUEUE: usize = 1024;
/// Waits between attempts after a read error (the reader reconnects).
const RETRY: Duration = Duration::from_millis(500);
/// How long closing may take (Pulsar's unsubscribes).
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// What the reader forwards: terminal events, or why it stopped for good.
type Forwarded = Result<Vec<Seen>, String>;

/// Terminal saga events as they arrive, from the moment it was opened.
pub struct TerminalWatch {
    rx: mpsc::Receiver<Forwarded>,
    repeats: Arc<AtomicU64>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TerminalWatch {
    /// Starts reading `channel` (`saga-events`) on `broker`. When this
    /// returns the reader's position is fixed: every terminal event
    /// published afterwards is seen, none from before.
    pub async fn open(
        broker: &BrokerUrl,
        channel: &str,
        max_bytes: usize,
    ) -> Result<Self, LoadError> {
        let channels = [channel.to_string()];
        let tap = Tap::open_with(broker, &channels, StartAt::Now, SUBSCRIPTION)
            .await
            .map_err(LoadError::Watch)?;
        let repeats = tap.repeats();
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(read(tap, tx, stop.clone(), max_bytes));
        Ok(Self {
            rx,
            repeats,
            stop,
            task: Some(task),
        })
    }

    /// A watch fed by hand (tests, an in-process service): each batch sent
    /// on the other end arrives as read.
    pub fn from_channel(rx: mpsc::Receiver<Vec<Seen>>) -> Self {
        let (tx, forwarded) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay(rx, tx, stop.clone()));
        Self {
            rx: forwarded,
            repeats: Arc::default(),
            stop,
            task: Some(task),
        }
    }

    /// The next terminal events, waiting for them.
    pub async fn recv(&mut self) -> Result<Vec<Seen>, LoadError> {
        match self.rx.recv().await {
            Some(Ok(batch)) => Ok(batch),
            Some(Err(why)) => Err(LoadError::WatchLost(why)),
            None => Err(LoadError::WatchLost("the reader stopped".into())),
        }
    }

    /// What has arrived already, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<Vec<Seen>, LoadError>> {
        match self.rx.try_recv() {
            Ok(Ok(batch)) => Some(Ok(batch)),
            Ok(Err(why)) => Some(Err(LoadError::WatchLost(why))),
            Err(_) => None,
        }
    }

    /// Messages of any type the broker delivered to the reader again (and
    /// the reader skipped): a Shared Pulsar subscription should have none.
    pub fn broker_repeats(&self) -> u64 {
        self.repeats.load(Ordering::Relaxed)
    }

    /// Stops reading and removes the reader's subscription (Pulsar).
    pub async fn close(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(CLOSE_WAIT, task).await;
        }
    }
}

impl Drop for TerminalWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn read(
    mut tap: Tap,
    tx: mpsc::Sender<Forwarded>,
    stop: CancellationToken,
    max_bytes: usize,
) {
    loop {
        let batch = tokio::select! {
            () = stop.cancelled() => break,
            batch = tap.next_batch() => batch,
        };
        match batch {
            Ok(batch) => {
                let seen: Vec<Seen> = batch
                    .iter()
                    .filter_map(|t| terminal(t, max_bytes))
                    .collect();
                if !seen.is_empty() && tx.send(Ok(seen)).await.is_err() {
                    break;
                }
            }
            Err(TapError::Closed) => {
                let _ = tx.send(Err("the saga-events reader stopped".into())).await;
                break;
            }
            Err(e) => {
                // The tap reconnects on the next call; the run's timeout
                // bounds how long this may go on.
                tracing::warn!(error = %e, "reading saga-events failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
    tap.close().await;
}

async fn relay(
    mut rx: mpsc::Receiver<Vec<Seen>>,
    tx: mpsc::Sender<Forwarded>,
    stop: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            () = stop.cancelled() => return,
            batch = rx.recv() => batch,
        };
        let Some(batch) = batch else { return };
        if tx.send(Ok(batch)).await.is_err() {
            return;
        }
    }
}

/// The terminal event in `tapped`, if it is one; anything else (other
/// event types, what does not decode, events without a partner) is `None`.
fn terminal(tapped: &Tapped, max_bytes: usize) -> Option<Seen> {
    // Most saga events are not terminal: look at the type before decoding.
    let outcome = Outcome::of_event_type(&event_type(&tapped.raw)?)?;
    let envelope = tapped.raw.decode(max_bytes).ok()?;
    Some(Seen {
        partner_id: envelope.partner_id()?.to_string(),
        saga_id: envelope.saga_id.map(|id| id.to_string()),
        outcome,
        at: tapped.received_at,
    })
}

fn event_type(raw: &RawMessage) -> Option<String> {
    match raw {
        RawMessage::Fields(fields) => fields
            .iter()
            .find(|(k, _)| k == "event_type")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned()),
        // Our producers repeat it as a property; others may not.
        RawMessage::Body { properties, .. } => properties
            .iter()
            .find(|(k, _)| k == "event_type")
            .map(|(_, v)| v.clone())
            .or_else(|| raw.field("event_type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, EventType};
    use crate::transport::{OutboundMessage, WireFormat};
    use chrono::Utc;
    use serde_json::json;

    fn saga_event(event_type: EventType, partner: Option<&str>) -> Envelope {
        let payload = match partner {
            Some(p) => json!({"partner_id": p, "step": "create_alliance"}),
            None => json!({"step": "create_alliance"}),
        };
        Envelope::new(
            event_type,
            "c-1",
            Some(uuid::Uuid::new_v4()),
            None,
            payload.as_object().cloned().unwrap_or_default(),
        )
    }

    #[test]
    fn only_terminal_events_of_a_partner_count_in_both_wire_forms() {
        for format in [WireFormat::Fields, WireFormat::Body] {
            let tapped = |e: &Envelope| {
                let raw = OutboundMessage::encode(e, format).raw;
                Tapped::new("saga-events", "1-0", raw, Utc::now())
            };
            let done = saga_event(EventType::SagaCompensated, Some("p-1"));
            let seen = terminal(&tapped(&done), 1 << 20).expect("terminal");
            assert_eq!(seen.partner_id, "p-1");
            assert_eq!(seen.outcome, Outcome::Compensated);
            assert_eq!(seen.saga_id, done.saga_id.map(|s| s.to_string()));

            let started = saga_event(EventType::SagaStepSucceeded, Some("p-1"));
            assert_eq!(terminal(&tapped(&started), 1 << 20), None, "{format:?}");
            let anonymous = saga_event(EventType::SagaFailed, None);
            assert_eq!(terminal(&tapped(&anonymous), 1 << 20), None);
        }
        let garbage = Tapped::new(
            "saga-events",
            "1-0",
            RawMessage::Body {
                data: b"{".to_vec(),
                properties: vec![("event_type".into(), "SagaCompleted".into())],
            },
            Utc::now(),
        );
        assert_eq!(terminal(&garbage, 1 << 20), None);
    }
}
