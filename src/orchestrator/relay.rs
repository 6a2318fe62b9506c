//! The outbox relay: publishes committed messages, then deletes them.
//!
//! A crash between publish and delete republishes (at least once); readers
//! dedup by `event_id`. Several instances relay safely side by side: each
//! claims its batch with a short lease.
//!
//! A pass sends one run per channel, a saga's messages in order on each.
//!
//! On the hot path nothing is claimed: this instance's writes store their
//! rows already held by it for a few seconds and hand them over in memory
//! (`outbox_writes`), so a message costs no claim round trip and no row
//! rewritten. What a claim must find — rows written unheld, rows of other
//! instances or of a crash, rows given back after a failure — it finds
//! first, and while a failure is being retried handed rows go the claim's
//! way too: a saga's messages keep their order on each channel either way.
//!
//! No single message can stop the relay. A stored row that is no message
//! is parked at once. A failed send is an outage — the batch is retried
//! later from its oldest message, in order — unless the broker positively
//! refused a message on its own merits (too large, corrupt:
//! [`TransportError::blames_the_message`]; or Redis dropped the connection
//! on a value longer than any limit it can have, and answers again). Only then is the run sent again
//! one message at a time to find the one it refuses; that one counts a
//! failed attempt and, after [`PARK_AFTER`], is parked with the broker's
//! reason, so the messages behind it go on. Anything else (permissions, a
//! topic that cannot be produced to, timeouts) can hit every message of a
//! channel, and parking them one by one would throw the channel away.
//! Nothing behind an offender is sent again before it is parked, so a
//! saga's messages keep their order on its channel (a parked one is
//! skipped); a pass stops at a failed channel, and the channels after it
//! wait for the next pass with it. The failed
//! send itself may already have taken some of them (brokers pipeline
//! sends); they are sent again later, at least once as always.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;

use super::outbox_writes::Handed;
use super::{loop_backoff, pause, Orchestrator};
use crate::store::{OutboxFault, OutboxHold, OutboxMessage, StoreError};
use crate::telemetry;
use crate::transport::{OutboundMessage, TransportError};

/// How long rows written held are this relay's alone (see
/// [`OutboxHold`]): far longer than a pass takes when all is well, short
/// enough that rows a crash left held wait little.
const HOLD: Duration = Duration::from_secs(10);
/// Handed rows with less left of their hold go to the claim instead:
/// published now, they could race a relay that claims them as they lapse
/// (by its own clock: this covers the instances' clock skew too).
const HOLD_MARGIN: Duration = Duration::from_secs(4);

/// A hold on rows written now, for `owner`'s relay.
pub(super) fn hold(owner: &str) -> OutboxHold {
    OutboxHold {
        owner: owner.to_string(),
        until: crate::saga::later(Utc::now(), HOLD),
    }
}

/// How long a delete of published rows waits for others to join it: it
/// is off the hot path (the messages are out), and at low load every pass
/// would otherwise cost a statement of its own.
const DELETE_LINGER: Duration = Duration::from_millis(20);

/// The deletes of published rows, gathered into few statements by a task
/// of the relay's own, which ends once the relay has (so shutdown waits
/// for the last of them).
struct Deletes {
    ids: mpsc::UnboundedSender<Vec<i64>>,
}

impl Deletes {
    fn start(orch: &Orchestrator) -> Self {
        let (ids, mut queued) = mpsc::unbounded_channel::<Vec<i64>>();
        let store = orch.inner.store.clone();
        orch.inner.relay.spawn(async move {
            while let Some(mut batch) = queued.recv().await {
                tokio::time::sleep(DELETE_LINGER).await;
                while let Ok(more) = queued.try_recv() {
                    batch.extend(more);
                }
                delete(&*store, &batch).await;
            }
        });
        Self { ids }
    }

    /// Deletes `sent` soon: no claim takes them meanwhile, they are ours.
    fn later(&self, sent: Vec<i64>) {
        if sent.is_empty() {
            return;
        }
        if let Err(mpsc::error::SendError(sent)) = self.ids.send(sent) {
            // The task is gone (never while the relay runs): published
            // again once their claim lapses, at least once as always.
            tracing::warn!(count = sent.len(), "outbox delete not queued");
        }
    }
}

/// What the relay remembers between passes.
struct Passes {
    deletes: Deletes,
    /// A publish or a claim failed: until a claim finds the outbox empty,
    /// every pass sends its rows in hand through the claim, so that none
    /// overtakes an older row of its saga the failure left there.
    degraded: bool,
    /// Passes in a row whose claim failed: their pause grows.
    failures: u32,
    last_claim: Instant,
}

/// Messages claimed per round trip.
const BATCH: u32 = 500;
/// After this an unfinished claim may be taken by another relay.
const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// Poll interval when nothing woke the relay (other instances' writes).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Sends the broker refuses the message in, before it is parked.
const PARK_AFTER: u32 = 3;

pub(super) async fn run(orch: Orchestrator) {
    let inner = &orch.inner;
    let mut passes = Passes {
        deletes: Deletes::start(&orch),
        degraded: false,
        failures: 0,
        last_claim: Instant::now(),
    };
    loop {
        tokio::select! {
            () = inner.outbox.wake.notified() => {}
            () = tokio::time::sleep(IDLE_POLL) => {}
            () = inner.relay_stop.cancelled() => {
                // One last pass, once the drivers are done (see
                // `Orchestrator::shutdown`), so their final events go out;
                // none when we wrote nothing since the outbox was last
                // empty (the store may be gone: asking it would only wait).
                if inner.outbox.pending() {
                    pass(&orch, &mut passes, true).await;
                }
                return;
            }
        }
        tokio::select! {
            () = pass(&orch, &mut passes, false) => {}
            () = stopped_with_nothing_to_relay(&orch) => return,
        }
    }
}

/// Publishes what was handed since the last pass, or gives it to the
/// claim (see [`claim_first`]): when a claim is due at all, every
/// [`IDLE_POLL`] too (not in the last pass: what is in hand needs no store
/// to go out), the rows in hand go out through it, in id order with
/// whatever a claim finds.
async fn pass(orch: &Orchestrator, passes: &mut Passes, last: bool) {
    let inner = &orch.inner;
    // Taken before looking at the counts: a counted write of a saga whose
    // later rows are in hand was counted before they were handed.
    let mut in_hand = inner.outbox.take_handed();
    let mut handed: Vec<OutboxMessage> = Vec::new();
    let mut untils = Vec::new();
    for Handed { until, messages } in std::mem::take(&mut in_hand.entries) {
        untils.push(until);
        handed.extend(messages);
    }
    let orphans = inner.outbox.take_orphans();
    let claim_due = orphans
        || passes.degraded
        || !fresh(&untils)
        || inner.outbox.claim_wanted()
        || (!last && passes.last_claim.elapsed() >= IDLE_POLL);
    if claim_due {
        let emptied = claim_first(orch, passes, &handed, orphans).await;
        passes.degraded = !emptied;
        passes.failures = if emptied { 0 } else { passes.failures + 1 };
        if !emptied {
            // The failure counted the rows, which wakes the next pass at
            // once: not before a pause, or a store that fails fast spins.
            pause(&inner.relay_stop, loop_backoff(passes.failures)).await;
        }
        return;
    }
    if handed.is_empty() {
        return;
    }
    handed.sort_by_key(|m| m.id);
    if let Err(stop) = relay(orch, &handed, &passes.deletes).await {
        // What was not sent `relay` gave back (or, failing that, marked
        // orphaned): the claim takes it from here, and the next pass too.
        tracing::warn!(error = %stop, "publishing handed outbox rows failed; will retry");
        metrics::counter!(telemetry::LOOP_ERRORS, "component" => "relay").increment(1);
        inner.outbox.written();
        passes.degraded = true;
    }
    // Held until here: pending (for shutdown) while being published.
    drop(in_hand);
}

/// Whether every hold in `untils` has [`HOLD_MARGIN`] left.
fn fresh(untils: &[chrono::DateTime<Utc>]) -> bool {
    let fresh_until = crate::saga::later(Utc::now(), HOLD_MARGIN);
    untils.iter().all(|until| *until >= fresh_until)
}

/// Gives back the rows in hand (with `all`, every row this instance holds)
/// and drains the outbox by claims, oldest first; `true` once a claim
/// found it empty. A counted row, or one held but never handed (a write
/// cut short, a failed give-back), may be older than rows in hand of the
/// same saga: this way none overtakes another. (With `all`, a row sent
/// whose delete is still queued is published again: at least once.)
async fn claim_first(
    orch: &Orchestrator,
    passes: &mut Passes,
    in_hand: &[OutboxMessage],
    all: bool,
) -> bool {
    let inner = &orch.inner;
    let owner = &inner.config.instance_id;
    passes.last_claim = Instant::now();
    let given_back = if all {
        inner.store.release_all_outbox(owner).await
    } else {
        let ids: Vec<i64> = in_hand.iter().map(|m| m.id).collect();
        inner.store.release_outbox(owner, &ids).await
    };
    if let Err(e) = given_back {
        tracing::warn!(error = %e, "could not give held outbox rows back to the claim; retrying");
        metrics::counter!(telemetry::LOOP_ERRORS, "component" => "relay").increment(1);
        // Held still: the next pass gives back all this instance holds.
        inner.outbox.orphaned();
        return false;
    }
    let emptied = drain(orch, &passes.deletes).await;
    if !emptied {
        inner.outbox.written();
    }
    emptied
}

/// Resolves when the relay is told to stop and this instance has nothing
/// of its own left to publish: a pass then in progress (perhaps waiting on
/// a store that is gone) is not worth waiting for.
async fn stopped_with_nothing_to_relay(orch: &Orchestrator) {
    orch.inner.relay_stop.cancelled().await;
    if orch.inner.outbox.pending() {
        std::future::pending::<()>().await;
    }
}

/// Why a pass over a batch stopped before its end.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("broker unavailable: {0}")]
    Outage(TransportError),
    #[error("message {id} refused (attempt {attempts} of {PARK_AFTER}): {error}")]
    Refused {
        id: i64,
        attempts: u32,
        error: TransportError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Relays until the outbox is empty (`true`) or publishing keeps failing.
async fn drain(orch: &Orchestrator, deletes: &Deletes) -> bool {
    let inner = &orch.inner;
    let mut failures = 0;
    loop {
        // Read before the claim: an empty claim sees every write up to here.
        let mark = inner.outbox.mark();
        let claim = match inner
            .store
            .claim_outbox(&inner.config.instance_id, Utc::now(), CLAIM_LEASE, BATCH)
            .await
        {
            Ok(claim) if claim.is_empty() => {
                inner.outbox.seen_through(mark);
                return true;
            }
            Ok(claim) => claim,
            Err(e) => {
                tracing::warn!(error = %e, "outbox claim failed");
                metrics::counter!(telemetry::LOOP_ERRORS, "component" => "relay").increment(1);
                return false;
            }
        };
        // Left claimed if parking fails: retried once the claim lapses.
        park(orch, &claim.unreadable, "unreadable").await;
        let Err(stop) = relay(orch, &claim.messages, deletes).await else {
            failures = 0;
            continue;
        };
        failures += 1;
        tracing::warn!(error = %stop, failures, "outbox publish failed; will retry");
        metrics::counter!(telemetry::LOOP_ERRORS, "component" => "relay").increment(1);
        if failures > 3 || !pause(&inner.relay_stop, loop_backoff(failures)).await {
            return false;
        }
    }
}

/// Publishes a claimed batch: deletes what the broker took, and when it
/// stopped early, gives the rest back so the retry starts from the oldest
/// message again and a saga's later events never overtake earlier ones.
async fn relay(
    orch: &Orchestrator,
    batch: &[OutboxMessage],
    deletes: &Deletes,
) -> Result<(), Stop> {
    let store = &orch.inner.store;
    let mut done = Done::default();
    let mut outcome = Ok(());
    for run in runs_by_channel(batch) {
        outcome = send_run(orch, &run, &mut done).await;
        if outcome.is_err() {
            break;
        }
    }
    metrics::counter!(telemetry::RELAYED).increment(done.sent.len() as u64);
    if outcome.is_ok() {
        // What was sent is claimed (or held) by us, so no claim takes it
        // again before its delete, unless it lapses first (a stalled
        // store): then it is published twice, at least once as always.
        deletes.later(done.sent);
        return outcome;
    }
    delete(&**store, &done.sent).await;
    let settled: HashSet<i64> = done.sent.iter().chain(&done.parked).copied().collect();
    let rest: Vec<i64> = batch
        .iter()
        .map(|m| m.id)
        .filter(|id| !settled.contains(id))
        .collect();
    if let Err(e) = store
        .release_outbox(&orch.inner.config.instance_id, &rest)
        .await
    {
        // Until they lapse, newer rows of their sagas could go first: the
        // next pass gives back everything this instance holds.
        tracing::warn!(error = %e, "could not release outbox claim; retried by the next pass");
        orch.inner.outbox.orphaned();
    }
    outcome
}

/// The batch as one run per channel, each in id order, the channels in
/// the order they first appear. A saga's messages keep their order on each
/// channel, which is all a reader can see (a channel's readers never see
/// another channel's order); and a batch whose channels interleave (a
/// record's saga events and commands, saga by saga) costs a send per
/// channel rather than one per message, each waiting for the broker.
fn runs_by_channel(batch: &[OutboxMessage]) -> Vec<Vec<&OutboxMessage>> {
    let mut runs: Vec<Vec<&OutboxMessage>> = Vec::new();
    for m in batch {
        match runs.iter_mut().find(|run| run[0].channel == m.channel) {
            Some(run) => run.push(m),
            None => runs.push(vec![m]),
        }
    }
    runs
}

/// Deletes what the broker took; a failure publishes them again later.
async fn delete(store: &dyn crate::store::SagaStore, sent: &[i64]) {
    if let Err(e) = store.delete_outbox(sent).await {
        tracing::warn!(error = %e, "outbox delete failed; messages may be published twice");
    }
}

/// What a pass did with its messages so far.
#[derive(Debug, Default)]
struct Done {
    sent: Vec<i64>,
    parked: Vec<i64>,
}

/// Sends one run of same-channel messages, in id order.
async fn send_run(
    orch: &Orchestrator,
    run: &[&OutboxMessage],
    done: &mut Done,
) -> Result<(), Stop> {
    let transport = &orch.inner.transport;
    // Encoded straight from the stored envelopes: no copy of each one.
    let messages: Vec<OutboundMessage> = run
        .iter()
        .map(|m| OutboundMessage::encode(&m.envelope, transport.format()))
        .collect();
    let largest = messages.iter().map(OutboundMessage::largest_value).max();
    match transport.send(&run[0].channel, messages).await {
        Ok(()) => {
            done.sent.extend(run.iter().map(|m| m.id));
            Ok(())
        }
        Err(e) if blames(orch, &e, largest.unwrap_or(0)).await => isolate(orch, run, done).await,
        Err(e) => Err(Stop::Outage(e)),
    }
}

/// Sends a run the broker refused part of, one message at a time, to find
/// the one it refuses. Stops at an offender not yet parked: what follows it
/// waits, so that it cannot overtake it.
async fn isolate(orch: &Orchestrator, run: &[&OutboxMessage], done: &mut Done) -> Result<(), Stop> {
    let transport = &orch.inner.transport;
    for m in run {
        let message = OutboundMessage::encode(&m.envelope, transport.format());
        let size = message.largest_value();
        let error = match transport.send(&m.channel, vec![message]).await {
            Ok(()) => {
                done.sent.push(m.id);
                continue;
            }
            Err(e) if !blames(orch, &e, size).await => return Err(Stop::Outage(e)),
            Err(e) => e,
        };
        let reason = crate::participants::text::storable(&error.to_string(), 600);
        let attempts = orch
            .inner
            .store
            .record_outbox_failure(&orch.inner.config.instance_id, m.id, &reason)
            .await?;
        if attempts < PARK_AFTER {
            return Err(Stop::Refused {
                id: m.id,
                attempts,
                error,
            });
        }
        let fault = OutboxFault { id: m.id, reason };
        if park(orch, std::slice::from_ref(&fault), "refused").await == 0 {
            return Err(Stop::Refused {
                id: m.id,
                attempts,
                error,
            });
        }
        done.parked.push(m.id);
    }
    Ok(())
}

/// Whether the failed send `e` blames its message (see the module docs): a
/// positive refusal, or a connection Redis dropped on a value too long for
/// any limit it can have — if, and only if, it answers again right after.
async fn blames(orch: &Orchestrator, e: &TransportError, largest_value: usize) -> bool {
    if e.blames_the_message() {
        return true;
    }
    if !e.maybe_too_long(largest_value) {
        return false;
    }
    // The first ping meets the dropped connection; the client's next one
    // is new.
    let answers = async {
        for _ in 0..3 {
            if orch.inner.transport.ping().await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(3), answers)
        .await
        .unwrap_or(false)
}

/// Parks `faults` (`kind` is the metric's `reason`); returns how many were
/// parked. Each is logged once, when parked.
async fn park(orch: &Orchestrator, faults: &[OutboxFault], kind: &'static str) -> u64 {
    if faults.is_empty() {
        return 0;
    }
    let owner = &orch.inner.config.instance_id;
    match orch
        .inner
        .store
        .park_outbox(owner, faults, Utc::now())
        .await
    {
        Ok(parked) => {
            for fault in faults {
                tracing::warn!(outbox_id = fault.id, reason = %fault.reason, kind, "outbox message parked: it cannot be published");
            }
            metrics::counter!(telemetry::OUTBOX_PARKED_TOTAL, "reason" => kind).increment(parked);
            parked
        }
        Err(e) => {
            tracing::warn!(error = %e, count = faults.len(), "could not park outbox messages; retried once their claim lapses");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::config::Settings;
    use crate::envelope::{Envelope, EventType};
    use crate::orchestrator::test_orchestrator;
    use crate::store::{SagaStore, SqliteStore};
    use crate::transport::{MemoryTransport, Subscription, Transport, WireFormat};

    /// The in-memory broker, counting the sends it is asked for; sends to
    /// `down` time out.
    #[derive(Clone, Default)]
    struct CountedSends {
        broker: MemoryTransport,
        sends: Arc<AtomicUsize>,
        down: Option<&'static str>,
    }

    #[async_trait]
    impl Transport for CountedSends {
        fn format(&self) -> WireFormat {
            self.broker.format()
        }
        async fn send(
            &self,
            channel: &str,
            messages: Vec<OutboundMessage>,
        ) -> Result<(), TransportError> {
            self.sends.fetch_add(1, Ordering::Relaxed);
            if self.down == Some(channel) {
                return Err(TransportError::Timeout("send"));
            }
            self.broker.send(channel, messages).await
        }
        async fn subscribe(&self, channel: &str) -> Result<Box<dyn Subscription>, TransportError> {
            self.broker.subscribe(channel).await
        }
        async fn ping(&self) -> Result<(), TransportError> {
            self.broker.ping().await
        }
    }

    fn message(id: i64, channel: &str, saga: &str) -> OutboxMessage {
        let envelope = Envelope::new(
            EventType::SagaStarted,
            saga,
            None,
            None,
            serde_json::Map::new(),
        );
        OutboxMessage {
            id,
            ..OutboxMessage::new(channel, envelope)
        }
    }

    /// The correlation ids of what `broker` holds on `channel`, in order.
    fn sent(broker: &MemoryTransport, channel: &str) -> Vec<String> {
        broker
            .messages(channel)
            .iter()
            .filter_map(|m| m.decode(1 << 20).ok())
            .map(|e| e.correlation_id)
            .collect()
    }

    /// Relays, through `transport`, four sagas' event and command written
    /// side by side, as a broker-mode record writes them.
    async fn relay_interleaved(transport: &CountedSends) -> Result<(), Stop> {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        store.migrate().await.expect("migrate");
        let orch = test_orchestrator(store, Arc::new(transport.clone()), &Settings::default());
        let batch: Vec<OutboxMessage> = (0..4)
            .flat_map(|i| {
                let saga = format!("s-{i}");
                [
                    message(2 * i, "events", &saga),
                    message(2 * i + 1, "commands", &saga),
                ]
            })
            .collect();
        let deletes = Deletes::start(&orch);
        relay(&orch, &batch, &deletes).await
    }

    const EACH: [&str; 4] = ["s-0", "s-1", "s-2", "s-3"];

    /// One send per channel, not one a message.
    #[tokio::test]
    async fn an_interleaved_batch_is_one_send_per_channel_in_order() {
        let transport = CountedSends::default();
        relay_interleaved(&transport).await.expect("relayed");
        assert_eq!(transport.sends.load(Ordering::Relaxed), 2);
        assert_eq!(sent(&transport.broker, "events"), EACH);
        assert_eq!(sent(&transport.broker, "commands"), EACH);
    }

    /// A channel that fails stops the pass there: what went out before it
    /// is out, in order, and the channels after it wait for the next pass.
    #[tokio::test]
    async fn a_failed_channel_stops_the_pass_after_the_channels_before_it() {
        let last_down = CountedSends {
            down: Some("commands"),
            ..CountedSends::default()
        };
        let stop = relay_interleaved(&last_down).await;
        assert!(matches!(stop, Err(Stop::Outage(_))), "{stop:?}");
        assert_eq!(last_down.sends.load(Ordering::Relaxed), 2);
        assert_eq!(sent(&last_down.broker, "events"), EACH);
        assert!(sent(&last_down.broker, "commands").is_empty());

        let first_down = CountedSends {
            down: Some("events"),
            ..CountedSends::default()
        };
        let stop = relay_interleaved(&first_down).await;
        assert!(matches!(stop, Err(Stop::Outage(_))), "{stop:?}");
        assert_eq!(
            first_down.sends.load(Ordering::Relaxed),
            1,
            "no send after it"
        );
        assert!(sent(&first_down.broker, "commands").is_empty());
    }
}
