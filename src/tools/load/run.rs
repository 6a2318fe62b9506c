//! The two ways to offer load, both timed by the terminal events read on
//! `saga-events` (never by polling the API):
//!
//! - [`closed_loop`]: `in_flight` sagas at a time, a new event published
//!   only when one of them reaches its terminal state, as the peers were
//!   measured (docs/running.md, issue 12's table): throughput is then
//!   `in_flight` ÷ the time from event to terminal event.
//! - [`burst`]: every event published (at a rate, or as fast as the broker
//!   takes them), then waited for: queueing as much as the service.
//!
//! A saga with no terminal event `timeout` after its event was sent is
//! given up on: the run publishes nothing more, waits for the others still
//! within their time, and reports what never finished.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::ledger::Ledger;
use super::watch::TerminalWatch;
use super::{publish, LoadError, PublishPlan};
use crate::envelope::Envelope;
use crate::transport::{Transport, TransportError};

/// How often overdue sagas are looked for (and progress shown when quiet).
const TICK: Duration = Duration::from_millis(500);

/// What a run ended with.
#[derive(Debug)]
pub struct Finished {
    pub ledger: Ledger,
    /// How long publishing took (burst mode).
    pub publish: Option<Duration>,
}

/// The ledger of `events`' partners, nothing sent yet.
fn ledger_of(events: &[Envelope]) -> Ledger {
    Ledger::new(
        events
            .iter()
            .filter_map(|e| e.partner_id().map(str::to_string)),
    )
}

/// Publishes `events` to `channel` keeping `in_flight` sagas between send
/// and terminal event; `progress` sees the ledger after every change.
pub async fn closed_loop(
    transport: Arc<dyn Transport>,
    channel: &str,
    events: Vec<Envelope>,
    in_flight: usize,
    timeout: Duration,
    watch: &mut TerminalWatch,
    progress: &mut (dyn FnMut(&Ledger) + Send),
) -> Result<Finished, LoadError> {
    let mut ledger = ledger_of(&events);
    let mut queue: VecDeque<Envelope> = events.into();
    let mut given_up = false;
    let mut tick = tokio::time::interval(TICK);
    loop {
        if !given_up {
            refill(&*transport, channel, &mut queue, &mut ledger, in_flight).await?;
        }
        progress(&ledger);
        if ledger.in_flight() == 0 && (queue.is_empty() || given_up) {
            break;
        }
        tokio::select! {
            batch = watch.recv() => {
                settle(&mut ledger, batch?);
                // Everything already read, before the next refill: one send
                // for all the room it made.
                while let Some(batch) = watch.try_recv() {
                    settle(&mut ledger, batch?);
                }
            }
            _ = tick.tick() => {
                let now = Utc::now();
                given_up |= ledger.overdue(now, timeout) > 0;
                if given_up && ledger.waiting(now, timeout) == 0 {
                    break;
                }
            }
        }
    }
    Ok(Finished {
        ledger,
        publish: None,
    })
}

/// Sends as many queued events as there is room for, in one batch; each is
/// counted as sent (and stamped) before the send, so its terminal event
/// cannot arrive first.
async fn refill(
    transport: &dyn Transport,
    channel: &str,
    queue: &mut VecDeque<Envelope>,
    ledger: &mut Ledger,
    in_flight: usize,
) -> Result<(), LoadError> {
    let room = in_flight
        .saturating_sub(ledger.in_flight())
        .min(queue.len());
    if room == 0 {
        return Ok(());
    }
    let mut batch: Vec<Envelope> = queue.drain(..room).collect();
    let now = Utc::now();
    for event in &mut batch {
        event.timestamp = now;
        if let Some(partner) = event.partner_id() {
            ledger.sent(partner, now);
        }
    }
    transport.publish(channel, &batch).await?;
    Ok(())
}

fn settle(ledger: &mut Ledger, batch: Vec<super::Seen>) {
    for seen in batch {
        ledger.seen(seen);
    }
}

/// Publishes every event as `plan` says (at its rate, by its publishers)
/// while counting terminal events, until each event has one or is over
/// the timeout.
pub async fn burst(
    transport: Arc<dyn Transport>,
    channel: &str,
    events: Vec<Envelope>,
    plan: &PublishPlan,
    timeout: Duration,
    watch: &mut TerminalWatch,
    progress: &mut (dyn FnMut(&Ledger) + Send),
) -> Result<Finished, LoadError> {
    let mut ledger = ledger_of(&events);
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Vec<(String, DateTime<Utc>)>>();
    let on_sent = move |chunk: &[Envelope]| {
        let sent = chunk
            .iter()
            .filter_map(|e| e.partner_id().map(|p| (p.to_string(), e.timestamp)))
            .collect();
        let _ = sent_tx.send(sent);
    };
    let started = tokio::time::Instant::now();
    let mut publishing = {
        let (transport, channel, plan) = (transport.clone(), channel.to_string(), plan.clone());
        tokio::spawn(async move { publish(transport, &channel, events, &plan, on_sent).await })
    };
    let mut published: Option<Duration> = None;
    let mut given_up = false;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            Some(sent) = sent_rx.recv() => record_sent(&mut ledger, sent),
            done = &mut publishing, if published.is_none() && !given_up => {
                let sent = done.map_err(|e| LoadError::Publish(TransportError::Task(e.to_string())))??;
                published = Some(sent.took);
                // Every send was reported before the task ended.
                while let Ok(sent) = sent_rx.try_recv() {
                    record_sent(&mut ledger, sent);
                }
            }
            batch = watch.recv() => settle(&mut ledger, batch?),
            _ = tick.tick() => {
                let now = Utc::now();
                if !given_up && ledger.overdue(now, timeout) > 0 {
                    given_up = true;
                    publishing.abort();
                }
                if given_up && ledger.waiting(now, timeout) == 0 {
                    break;
                }
            }
        }
        progress(&ledger);
        if published.is_some() && ledger.in_flight() == 0 {
            break;
        }
    }
    Ok(Finished {
        ledger,
        publish: Some(published.unwrap_or_else(|| started.elapsed())),
    })
}

fn record_sent(ledger: &mut Ledger, sent: Vec<(String, DateTime<Utc>)>) {
    for (partner, at) in sent {
        ledger.sent(&partner, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::load::{events, Outcome, Seen};
    use crate::transport::MemoryTransport;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CHANNEL: &str = "partner-events";

    fn plan(count: usize) -> PublishPlan {
        PublishPlan {
            count,
            rate: None,
            concurrency: 2,
            fail_ratio: 0.25,
            correlation_id: None,
            run_id: "t".into(),
        }
    }

    /// A stand-in for the service: takes each event from the broker and,
    /// a moment later, answers with its terminal event, counting for
    /// itself how many of them it ever held at once (published and not yet
    /// answered). Every `silent_every`-th partner is never answered.
    fn fake_service(
        transport: MemoryTransport,
        silent_every: Option<usize>,
    ) -> (TerminalWatch, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::channel(1024);
        let most_held = Arc::new(AtomicUsize::new(0));
        let held_max = most_held.clone();
        tokio::spawn(async move {
            let mut sub = transport.subscribe(CHANNEL).await.expect("subscribe");
            let answered = Arc::new(AtomicUsize::new(0));
            let mut n = 0usize;
            loop {
                let Ok(batch) = sub.next_batch(16).await else {
                    return;
                };
                for delivery in batch {
                    n += 1;
                    let published = transport.messages(CHANNEL).len();
                    let held = published - answered.load(Ordering::SeqCst);
                    held_max.fetch_max(held, Ordering::SeqCst);
                    let event = delivery.raw.decode(1 << 20).expect("an envelope");
                    let _ = delivery.ack().await;
                    if silent_every.is_some_and(|k| n.is_multiple_of(k)) {
                        continue;
                    }
                    let (tx, answered) = (tx.clone(), answered.clone());
                    let partner = event.partner_id().unwrap_or_default().to_string();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis((n % 3) as u64)).await;
                        // Counted as answered before the tool can hear of it.
                        answered.fetch_add(1, Ordering::SeqCst);
                        let seen = Seen {
                            saga_id: Some(format!("s-{partner}")),
                            partner_id: partner,
                            outcome: Outcome::Completed,
                            at: Utc::now(),
                        };
                        let _ = tx.send(vec![seen.clone(), seen]).await;
                    });
                }
            }
        });
        (TerminalWatch::from_channel(rx), most_held)
    }

    #[tokio::test]
    async fn the_closed_loop_keeps_its_bound_and_counts_every_saga_once() {
        let transport = MemoryTransport::new();
        let (mut watch, most_held) = fake_service(transport.clone(), None);
        let mut most_seen = 0;
        let finished = closed_loop(
            Arc::new(transport.clone()),
            CHANNEL,
            events(&plan(200)),
            8,
            Duration::from_secs(30),
            &mut watch,
            &mut |l: &Ledger| most_seen = most_seen.max(l.in_flight()),
        )
        .await
        .expect("the run ends");
        let l = &finished.ledger;
        assert_eq!((l.sent_count(), l.settled(), l.in_flight()), (200, 200, 0));
        assert_eq!(
            l.repeats(),
            200,
            "every copy counted as a repeat, not a saga"
        );
        assert_eq!(
            transport.messages(CHANNEL).len(),
            200,
            "each event sent once"
        );
        assert_eq!(l.max_in_flight(), 8, "the loop fills up to its bound");
        assert!(most_seen <= 8);
        assert!(
            most_held.load(Ordering::SeqCst) <= 8,
            "the service held {} at once",
            most_held.load(Ordering::SeqCst)
        );
    }

    #[tokio::test]
    async fn a_saga_that_never_ends_stops_the_loop_at_its_timeout() {
        let transport = MemoryTransport::new();
        let (mut watch, _) = fake_service(transport.clone(), Some(10));
        let finished = closed_loop(
            Arc::new(transport.clone()),
            CHANNEL,
            events(&plan(1000)),
            4,
            Duration::from_millis(300),
            &mut watch,
            &mut |_: &Ledger| {},
        )
        .await
        .expect("the run ends");
        let l = &finished.ledger;
        assert!(
            l.settled() < 1000 && l.sent_count() < 1000,
            "it stopped early"
        );
        assert!(!l.unfinished().is_empty());
        assert_eq!(l.settled() + l.unfinished().len(), l.sent_count());
    }

    #[tokio::test]
    async fn a_burst_publishes_everything_then_waits_for_every_saga() {
        let transport = MemoryTransport::new();
        let (mut watch, most_held) = fake_service(transport.clone(), None);
        let finished = burst(
            Arc::new(transport.clone()),
            CHANNEL,
            events(&plan(300)),
            &plan(300),
            Duration::from_secs(30),
            &mut watch,
            &mut |_: &Ledger| {},
        )
        .await
        .expect("the run ends");
        let l = &finished.ledger;
        assert_eq!((l.sent_count(), l.settled(), l.in_flight()), (300, 300, 0));
        assert!(finished.publish.is_some());
        assert!(
            most_held.load(Ordering::SeqCst) > 8,
            "nothing holds a burst back"
        );
    }
}
