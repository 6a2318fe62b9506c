//! Runs the state machine against the world: records sagas, drives their
//! steps, relays their messages and recovers what a crash left behind.
//!
//! The happy path never waits on polling: once a transition commits, the
//! next step runs at once in the same task. The sweeper only picks up what
//! nobody holds a live lease on (crashes, other instances, sagas recorded
//! while this instance was at capacity).

pub mod clock;
mod commands;
mod consumer;
mod driver;
mod outbox_writes;
mod relay;
mod replies;
mod shutdown;
mod statistics;
mod sweeper;
mod upkeep;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{Channels, ParticipantMode, Settings};
use crate::envelope::{Envelope, PartnerCreated};
use crate::participants::Participants;
use crate::saga::{self, Decision, HistoryEntry, Input, RetryPolicy, Saga, SagaState, Step};
use crate::stats::{self, Stats};
use crate::store::{Created, Lease, NewSaga, OutboxMessage, SagaStore, StoreError};
use crate::telemetry;

/// Slack on top of the step timeout before another instance may take a
/// saga over: covers the commit after a slow call.
const LEASE_GRACE: Duration = Duration::from_secs(5);

/// The orchestrator's own settings, taken from [`Settings`].
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    pub retry: RetryPolicy,
    pub step_timeout: Duration,
    pub saga_deadline: Duration,
    pub channels: Channels,
    pub instance_id: String,
    pub max_message_bytes: usize,
    pub max_in_flight: usize,
    pub sweep_interval: Duration,
    pub shutdown_grace: Duration,
    /// How alliances are asked: HTTP calls or broker commands.
    pub alliances_mode: ParticipantMode,
    /// How integrations are asked: HTTP calls or broker commands.
    pub integrations_mode: ParticipantMode,
}

impl OrchestratorConfig {
    /// Whether `step` goes out as a broker command rather than an HTTP call.
    pub fn over_broker(&self, step: Step) -> bool {
        let mode = match step {
            Step::CreateAlliance => self.alliances_mode,
            Step::DeletePartner => self.integrations_mode,
        };
        mode == ParticipantMode::Broker
    }

    /// Whether any participant answers on `saga-replies`.
    pub fn uses_replies(&self) -> bool {
        self.over_broker(Step::CreateAlliance) || self.over_broker(Step::DeletePartner)
    }

    /// The channels this instance consumes: the only ones whose upkeep on
    /// the broker is ours (who reads the others is not ours to know).
    pub fn consumed_channels(&self) -> Vec<String> {
        let mut channels = vec![self.channels.partner_events.clone()];
        if self.uses_replies() {
            channels.push(self.channels.saga_replies.clone());
        }
        channels
    }
}

impl From<&Settings> for OrchestratorConfig {
    fn from(s: &Settings) -> Self {
        Self {
            retry: s.retry,
            step_timeout: s.participants.step_timeout,
            saga_deadline: s.limits.saga_deadline,
            channels: s.broker.channels.clone(),
            instance_id: s.instance.id.clone(),
            max_message_bytes: s.limits.max_message_bytes,
            max_in_flight: s.limits.max_in_flight,
            sweep_interval: s.instance.sweep_interval,
            shutdown_grace: s.instance.shutdown_grace,
            alliances_mode: s.participants.alliances_mode,
            integrations_mode: s.participants.integrations_mode,
        }
    }
}

/// The slots of sagas waiting for a reply here, with when each expires.
type Awaiting = HashMap<Uuid, (OwnedSemaphorePermit, DateTime<Utc>)>;

/// The slot a saga waited in for its reply, while an operation on it may
/// use it (see [`Orchestrator::operate`]).
#[derive(Default)]
struct Wait {
    slot: Option<(OwnedSemaphorePermit, DateTime<Utc>)>,
    /// Whether the saga, as last read, still waits for a reply.
    still_waits: bool,
}

/// A request to start one saga (from the broker or the API).
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// The dedup key: the same id twice starts one saga.
    pub event_id: String,
    pub correlation_id: String,
    pub partner: PartnerCreated,
    pub traceparent: Option<String>,
}

/// Where a saga's starting event came from (the `source` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A `PartnerCreated` on the broker.
    Broker,
    /// `POST /sagas`.
    Api,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Self::Broker => "broker",
            Self::Api => "api",
        }
    }
}

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    #[error("saga {0} not found")]
    NotFound(Uuid),
    #[error(transparent)]
    NotAllowed(#[from] saga::InvalidTransition),
    #[error("saga {0} kept changing; try again")]
    Busy(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The running orchestrator; cheap to clone.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SagaStore>,
    transport: Arc<dyn crate::transport::Transport>,
    participants: Arc<dyn Participants>,
    config: OrchestratorConfig,
    /// One permit per saga driven at once.
    permits: Arc<Semaphore>,
    /// This instance's outbox writes, and the relay's wake-up (see
    /// `outbox_writes`).
    outbox: Arc<outbox_writes::OutboxWrites>,
    /// When shutdown's grace ends; set when it begins.
    stop_deadline: std::sync::OnceLock<tokio::time::Instant>,
    /// Whether this instance ever leased a saga: only then has it leases
    /// to hand back when it stops.
    leased_any: std::sync::atomic::AtomicBool,
    /// Group commit of transitions.
    writer: writer::Writer,
    /// Slots of sagas waiting for a broker reply, until their deadline
    /// (plus grace): released when the reply is applied or the deadline
    /// handled; dropped by the sweeper once overdue, e.g. when another
    /// instance took the reply.
    awaiting: std::sync::Mutex<Awaiting>,
    /// Sagas a driver task of this instance is on now: the sweeper never
    /// starts a second one beside it (its lease can lapse while it waits
    /// on a stalled store, and the lease owner is this instance either way).
    /// (A count: an operator's action may start a driver while the one it
    /// superseded is still winding down.)
    driving: std::sync::Mutex<HashMap<Uuid, usize>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// The relay stops after everything else: its last pass must publish
    /// what the drivers' final commits wrote during shutdown.
    relay: TaskTracker,
    relay_stop: CancellationToken,
    /// Live counters for `GET /metrics/summary` (see `crate::stats`).
    stats: Stats,
}

impl Orchestrator {
    /// Wires the parts; nothing runs until [`Orchestrator::spawn_background`].
    pub fn new(
        store: Arc<dyn SagaStore>,
        transport: Arc<dyn crate::transport::Transport>,
        participants: Arc<dyn Participants>,
        config: OrchestratorConfig,
        cancel: CancellationToken,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        let stats = Stats::new(
            config.instance_id.clone(),
            config.max_in_flight,
            [config.channels.partner_events.clone()],
        );
        let outbox = Arc::new(outbox_writes::OutboxWrites::default());
        outbox.set_holds(store.holds_outbox());
        let writer =
            writer::Writer::start(store.clone(), outbox.clone(), config.instance_id.clone());
        Self {
            inner: Arc::new(Inner {
                store,
                transport,
                participants,
                config,
                permits,
                outbox,
                stop_deadline: std::sync::OnceLock::new(),
                leased_any: std::sync::atomic::AtomicBool::new(false),
                writer,
                awaiting: std::sync::Mutex::default(),
                driving: std::sync::Mutex::default(),
                tasks: TaskTracker::new(),
                cancel,
                relay: TaskTracker::new(),
                relay_stop: CancellationToken::new(),
                stats,
            }),
        }
    }

    /// Starts the partner-events consumer, the outbox relay, the sweeper,
    /// the broker's upkeep and the store's statistics check, and in broker
    /// mode the `saga-replies` consumer.
    pub fn spawn_background(&self) {
        self.spawn_loop(consumer::run(self.clone()));
        if self.inner.config.uses_replies() {
            self.spawn_loop(replies::run(self.clone()));
        }
        self.inner.relay.spawn(relay::run(self.clone()));
        self.spawn_loop(sweeper::run(self.clone()));
        self.spawn_loop(upkeep::run(self.clone()));
        self.spawn_loop(statistics::run(self.clone()));
    }

    /// Runs a background loop until shutdown, which drops it wherever it
    /// waits (a pool acquire, a broker reconnect): everything it does is
    /// safe to cut short (unacked messages are redelivered, a lapsed claim
    /// is claimed again), and nothing in flight waits on it.
    pub(crate) fn spawn_loop(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.inner.cancel.clone();
        self.inner
            .tasks
            .spawn(async move { cancel.run_until_cancelled_owned(work).await });
    }

    /// Records sagas (deduplicated by `event_id`) and drives the new ones
    /// that came with a permit; the others wait for the sweeper.
    pub async fn start(
        &self,
        source: Source,
        requests: Vec<(StartRequest, Option<OwnedSemaphorePermit>)>,
    ) -> Result<Vec<Created>, StoreError> {
        let now = Utc::now();
        let mut new = Vec::with_capacity(requests.len());
        let mut decisions = Vec::with_capacity(requests.len());
        let mut permits = Vec::with_capacity(requests.len());
        for (request, permit) in requests {
            let (draft, decided) = self.draft(request, now, permit.is_some());
            new.push(draft);
            decisions.push(decided);
            permits.push(permit);
        }
        // Held from before the write, so whichever relay sends a command
        // (another instance's, for rows the store wrote unheld), a reply
        // applied here at once finds its saga's slot to free. Otherwise
        // that slot would stay taken until the reply deadline.
        let mut waiting = self.hold_awaiting_slots(&new, &decisions, &mut permits);
        let writing = self.inner.outbox.in_flight();
        let hold = relay::hold(&self.inner.config.instance_id);
        let asked = std::time::Instant::now();
        let (created, held) = match self.inner.store.create_held(&new, Some(&hold)).await {
            Ok(done) => {
                telemetry::store_write("record", new.len(), asked.elapsed());
                done
            }
            Err(e) => {
                // It may have committed before failing: rows held, unhanded.
                writing.orphaned();
                // The holds go with `waiting`: committed or not, the
                // sweeper drives these sagas at their deadline, and a reply
                // meanwhile takes a free slot.
                return Err(e);
            }
        };
        for (draft, outcome) in new.iter().zip(&created) {
            if matches!(outcome, Created::New(_)) {
                waiting.keep(draft.saga.saga_id);
            }
        }
        // A duplicate was never stored under its draft's id: nothing will
        // reply to it.
        drop(waiting);
        let outboxes = new
            .iter_mut()
            .zip(&created)
            .filter(|(_, outcome)| matches!(outcome, Created::New(_)))
            .map(|(draft, _)| &mut draft.outbox);
        // Handed before any driver runs: a saga's first events reach the
        // relay before the ones its driver writes next.
        self.inner
            .outbox
            .settle([writing], &held, hold.until, outboxes);
        for (((draft, decided), permit), outcome) in
            new.into_iter().zip(decisions).zip(permits).zip(&created)
        {
            match outcome {
                Created::New(_) => {
                    self.inner.stats.record(stats::Event::Started);
                    metrics::counter!(telemetry::STARTED, "source" => source.label()).increment(1);
                    decided.iter().for_each(count_transition);
                    let next = decided.last().map(|d| d.next);
                    if let Some(saga::NextAction::AwaitReply { .. }) = next {
                        // No driver tells of it: the record sent its command.
                        tracing::info!(saga_id = %draft.saga.saga_id, correlation_id = %draft.saga.correlation_id,
                            partner_id = %draft.saga.partner_id, to = draft.saga.state.as_str(),
                            reason = saga::Reason::CommandSent.as_str(), attempts = draft.saga.attempts,
                            "saga recorded with its command; awaiting the reply");
                    }
                    if let (Some(permit), Some(lease), Some(next)) = (permit, draft.lease, next) {
                        self.spawn_driver(draft.saga, next, lease.until, permit);
                    }
                }
                Created::Duplicate(id) => {
                    tracing::info!(saga_id = %id, event_id = %draft.saga.event_id, "duplicate event; saga already recorded");
                    metrics::counter!(telemetry::DUPLICATES).increment(1);
                }
            }
        }
        Ok(created)
    }

    /// Keeps the slot of each new saga to be recorded waiting for its
    /// reply (its command goes out with the record) until the reply
    /// deadline, under a guard that gives back those the record does not
    /// keep.
    fn hold_awaiting_slots(
        &self,
        new: &[NewSaga],
        decisions: &[Vec<Decision>],
        permits: &mut [Option<OwnedSemaphorePermit>],
    ) -> PendingHolds<'_> {
        let mut held = PendingHolds {
            orch: self,
            ids: Vec::new(),
        };
        for ((draft, decided), permit) in new.iter().zip(decisions).zip(permits) {
            let next = decided.last().map(|d| d.next);
            if let Some(saga::NextAction::AwaitReply { until, .. }) = next {
                if let Some(permit) = permit.take() {
                    let (saga_id, expires) = (draft.saga.saga_id, hold_expiry(until));
                    self.hold_until(saga_id, permit, expires);
                    held.ids.push((saga_id, expires));
                }
            }
        }
        held
    }

    /// Applies an input from outside a driver (an operator's retry or
    /// forced compensation, a participant's reply) to the saga as stored
    /// now, and drives the saga from there.
    pub async fn operate(&self, saga_id: Uuid, input: Input) -> Result<Saga, OperateError> {
        self.operate_from(saga_id, input, None).await
    }

    /// [`Orchestrator::operate`], deciding first on `known`, the saga as
    /// the caller read it (one read for a batch of replies): a commit
    /// fenced by a newer version, or an input refused by that state, is
    /// decided again on the saga as stored.
    pub(crate) async fn operate_from(
        &self,
        saga_id: Uuid,
        input: Input,
        known: Option<Saga>,
    ) -> Result<Saga, OperateError> {
        let (saga, _) = self.operate_run(saga_id, &input, &[], known).await?;
        Ok(saga)
    }

    /// [`Orchestrator::operate_from`] for `first`, folding into the same
    /// write as many of `more` (the inputs that came after it, in order)
    /// as follow on while the saga still waits for its reply: a
    /// participant's `started` and `progress` replies and the final one
    /// that came with them cost one write, not one each. Returns the saga
    /// as stored and how many inputs the write took (`first` included);
    /// the caller applies the rest next. An error is `first`'s alone.
    pub(crate) async fn operate_run(
        &self,
        saga_id: Uuid,
        first: &Input,
        more: &[Input],
        known: Option<Saga>,
    ) -> Result<(Saga, usize), OperateError> {
        let mut wait = Wait::default();
        let outcome = self
            .operate_in(saga_id, first, more, known, &mut wait)
            .await;
        if let Some((permit, expires)) = wait.slot {
            // Unused: back to the saga only if it still waits (never over
            // a newer hold), else free.
            if wait.still_waits {
                self.keep_waiting(saga_id, permit, expires);
            }
        }
        outcome
    }

    /// The saga as stored now.
    async fn read(&self, saga_id: Uuid) -> Result<Saga, OperateError> {
        self.inner
            .store
            .get(saga_id)
            .await?
            .ok_or(OperateError::NotFound(saga_id))
    }

    /// [`Orchestrator::operate_run`]'s tries. A saga driven on after its
    /// wait uses the slot it waited in (`wait`): at capacity a free one is
    /// rare, and without one it would be left to the sweeper's next pass.
    async fn operate_in(
        &self,
        saga_id: Uuid,
        first: &Input,
        more: &[Input],
        mut known: Option<Saga>,
        wait: &mut Wait,
    ) -> Result<(Saga, usize), OperateError> {
        // Three tries on the saga as stored, whatever the caller's copy.
        let tries = 3 + usize::from(known.is_some());
        for _ in 0..tries {
            let (saga, read_now) = match known.take() {
                Some(saga) => (saga, false),
                None => (self.read(saga_id).await?, true),
            };
            wait.still_waits = saga.awaiting_reply;
            let now = Utc::now();
            let decision = match saga::decide(&saga, first, &self.inner.config.retry, now) {
                Ok(decision) => decision,
                // The caller's copy may be older than the store.
                Err(_) if !read_now => continue,
                Err(e) => return Err(e.into()),
            };
            if is_late_news(&decision) {
                // Recorded beside whoever drives the saga: no second driver,
                // and their lease and slot stay as they are.
                let decisions = [decision];
                if let Some(after) = self.commit(&saga, &decisions, false, false).await? {
                    return Ok((after, 1));
                }
                continue;
            }
            let decisions = self.fold(&saga, decision, more, now);
            let next = decisions[decisions.len() - 1].next;
            let waits_on = matches!(next, saga::NextAction::AwaitReply { .. });
            if wait.slot.is_none() && !waits_on {
                wait.slot = self.take_awaiting(saga_id);
            }
            let (permit, expires) = match wait.slot.take() {
                Some((permit, expires)) => (Some(permit), Some(expires)),
                None => (self.try_permit(), None),
            };
            let committed = self
                .commit(&saga, &decisions, permit.is_some(), false)
                .await;
            let after = match committed {
                Ok(Some(after)) => after,
                // Moved under us, or failed: the slot it waited in is kept
                // for the next try, or given back by `operate_run`.
                Ok(None) | Err(_) => {
                    if let (Some(permit), Some(expires)) = (permit, expires) {
                        wait.slot = Some((permit, expires));
                    }
                    committed?;
                    continue;
                }
            };
            self.carry_on(&after, next, permit);
            return Ok((after, decisions.len()));
        }
        Err(OperateError::Busy(saga_id))
    }

    /// `first` and, while the saga still waits for its reply after it,
    /// the decisions of the inputs in `more` in turn, each on what the one
    /// before it left; it stops at the first that does not apply or is
    /// late news (that one is applied on its own, next).
    fn fold(
        &self,
        saga: &Saga,
        first: Decision,
        more: &[Input],
        now: DateTime<Utc>,
    ) -> Vec<Decision> {
        let mut after = first.apply(saga, now);
        let mut decisions = vec![first];
        for input in more {
            if !after.awaiting_reply {
                break;
            }
            match saga::decide(&after, input, &self.inner.config.retry, now) {
                Ok(next) if !is_late_news(&next) => {
                    after = next.apply(&after, now);
                    decisions.push(next);
                }
                _ => break,
            }
        }
        decisions
    }

    /// What follows a stored outside input: a saga still waiting keeps its
    /// slot, if it has one here, until the new deadline; otherwise its
    /// wait's slot is freed, and a next call is driven with `permit`.
    fn carry_on(&self, after: &Saga, next: saga::NextAction, permit: Option<OwnedSemaphorePermit>) {
        let saga_id = after.saga_id;
        if let saga::NextAction::AwaitReply { until, .. } = next {
            if !self.extend_awaiting(saga_id, until) {
                if let Some(permit) = permit {
                    self.hold_while_awaiting(saga_id, permit, until);
                }
            }
        } else {
            // (Its own wait's slot was taken by the caller; this frees one
            // a driver of ours put there meanwhile.)
            self.release_awaiting(saga_id);
            if let (Some(permit), saga::NextAction::Call { at, .. }) = (permit, next) {
                // The lease commit wrote for this call.
                let lease_end = self.lease_until(at).until;
                self.spawn_driver(after.clone(), next, lease_end, permit);
            }
        }
    }

    /// Keeps `permit` while `saga_id` waits for its reply (until `until`).
    fn hold_while_awaiting(
        &self,
        saga_id: Uuid,
        permit: OwnedSemaphorePermit,
        until: DateTime<Utc>,
    ) {
        self.hold_until(saga_id, permit, hold_expiry(until));
    }

    /// Takes the slot `saga_id` waits in here, with when it expires.
    fn take_awaiting(&self, saga_id: Uuid) -> Option<(OwnedSemaphorePermit, DateTime<Utc>)> {
        self.change_awaiting(|held| held.remove(&saga_id))
    }

    /// Gives `saga_id` back the slot it waited in, unless it holds a newer one.
    fn keep_waiting(&self, saga_id: Uuid, permit: OwnedSemaphorePermit, expires: DateTime<Utc>) {
        self.change_awaiting(|held| {
            held.entry(saga_id).or_insert((permit, expires));
        });
    }

    /// Keeps `permit` for `saga_id`'s wait until `expires`.
    fn hold_until(&self, saga_id: Uuid, permit: OwnedSemaphorePermit, expires: DateTime<Utc>) {
        self.change_awaiting(|held| held.insert(saga_id, (permit, expires)));
    }

    /// Moves the end of `saga_id`'s wait; `false` if it holds no slot here.
    fn extend_awaiting(&self, saga_id: Uuid, until: DateTime<Utc>) -> bool {
        self.change_awaiting(|held| match held.get_mut(&saga_id) {
            Some((_, expires)) => {
                *expires = hold_expiry(until);
                true
            }
            None => false,
        })
    }

    /// Frees the slot `saga_id` held while waiting, if any.
    fn release_awaiting(&self, saga_id: Uuid) {
        drop(self.take_awaiting(saga_id));
    }

    /// Frees the slots of waits that should have ended by `now`.
    fn expire_awaiting(&self, now: DateTime<Utc>) {
        self.change_awaiting(|held| held.retain(|_, (_, expires)| *expires > now));
    }

    /// Runs `change` on the slots of waiting sagas, the gauge kept in step.
    fn change_awaiting<R>(&self, change: impl FnOnce(&mut Awaiting) -> R) -> R {
        let mut held = self
            .inner
            .awaiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before = held.len();
        let out = change(&mut held);
        if held.len() != before {
            metrics::gauge!(telemetry::AWAITING).set(held.len() as f64);
        }
        out
    }

    /// Marks `saga_id` as driven here until the guard is dropped.
    fn driving(&self, saga_id: Uuid) -> DrivingGuard {
        let mut driving = self.inner.driving.lock().unwrap_or_else(|e| e.into_inner());
        *driving.entry(saga_id).or_default() += 1;
        DrivingGuard {
            orch: self.clone(),
            saga_id,
        }
    }

    /// Whether a driver of this instance is on `saga_id` now.
    fn is_driving(&self, saga_id: Uuid) -> bool {
        let driving = self.inner.driving.lock().unwrap_or_else(|e| e.into_inner());
        driving.contains_key(&saga_id)
    }

    /// A permit to drive one saga, if one is free now.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.permits.clone().try_acquire_owned().ok()
    }

    /// This instance's settings (channels, instance id…).
    pub fn config(&self) -> &OrchestratorConfig {
        &self.inner.config
    }

    /// The store, for the API's reads.
    pub fn store(&self) -> &Arc<dyn SagaStore> {
        &self.inner.store
    }

    /// The transport, for readiness checks.
    pub fn transport(&self) -> &Arc<dyn crate::transport::Transport> {
        &self.inner.transport
    }

    /// This instance's live counters, for `GET /metrics/summary`.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// A new saga already moved past `started` by its first decision and,
    /// when it has a slot (`leased`) and its first step goes out over the
    /// broker, by that step's command too: it is then recorded waiting for
    /// the reply, and nothing is written between the event and the command.
    fn draft(
        &self,
        request: StartRequest,
        now: DateTime<Utc>,
        leased: bool,
    ) -> (NewSaga, Vec<Decision>) {
        let cfg = &self.inner.config;
        let saga_id = Uuid::now_v7();
        // The saga's own span in the event's trace (a new trace when the
        // event carried none); stored, so every later step and message of
        // the saga joins it. Without OpenTelemetry the event's traceparent
        // is kept as it came.
        let span = tracing::info_span!("saga_started", saga_id = %saga_id, correlation_id = %request.correlation_id);
        telemetry::continue_trace(&span, request.traceparent.as_deref());
        let traceparent = telemetry::traceparent_of(&span).or(request.traceparent);
        let saga = Saga {
            saga_id,
            event_id: request.event_id,
            correlation_id: request.correlation_id,
            partner_id: request.partner.partner_id,
            state: SagaState::Started,
            step: Step::CreateAlliance,
            attempts: 0,
            alliance_id: None,
            last_error: None,
            payload: request.partner.payload,
            created_at: now,
            updated_at: now,
            deadline_at: saga::later(now, cfg.saga_deadline),
            next_attempt_at: Some(now),
            traceparent,
            awaiting_reply: false,
            version: 1,
        };
        let created = HistoryEntry {
            seq: 1,
            from_state: None,
            to_state: SagaState::Started,
            reason: saga::Reason::PartnerCreated.as_str().to_string(),
            detail: Some(format!("event_id={}", saga.event_id)),
            at: now,
            instance_id: Some(cfg.instance_id.clone()),
            events: Vec::new(),
        };
        let mut decisions = vec![saga::begin(&saga, now)];
        if leased && cfg.over_broker(saga::Step::CreateAlliance) {
            let begun = decisions[0].apply(&saga, now);
            let sent = Input::CommandSent {
                step: begun.step,
                reply_by: saga::later(now, cfg.step_timeout),
            };
            decisions.extend(saga::decide(&begun, &sent, &cfg.retry, now).ok());
        }
        let (after, mut history, outbox) = self.written(&saga, &decisions, now);
        history.insert(0, created);
        let calls_next = matches!(
            decisions.last().map(|d| d.next),
            Some(saga::NextAction::Call { .. })
        );
        let new = NewSaga {
            history,
            outbox,
            lease: (leased && calls_next).then(|| self.lease_until(now)),
            saga: after,
        };
        (new, decisions)
    }

    /// The saga once `decisions` are applied in turn from `saga`, with the
    /// history row and the outgoing messages (saga events, and a command
    /// where one goes out) that each of them writes.
    fn written(
        &self,
        saga: &Saga,
        decisions: &[Decision],
        now: DateTime<Utc>,
    ) -> (Saga, Vec<HistoryEntry>, Vec<OutboxMessage>) {
        let mut after = saga.clone();
        let mut history = Vec::with_capacity(decisions.len());
        let mut outbox = Vec::new();
        for decision in decisions {
            after = decision.apply(&after, now);
            history.push(self.history_entry(decision, after.version, now));
            outbox.extend(self.saga_events(&after, decision));
            if let Some(step) = decision.command {
                outbox.push(commands::command(&self.inner.config.channels, &after, step));
            }
        }
        (after, history, outbox)
    }

    /// Stores `decisions` (one, or several folded into one write, each
    /// deciding on what the one before left) for `saga`; returns the saga
    /// as stored. `Ok(None)`: the saga moved under us (another driver or an
    /// operator) or, when `fenced`, another instance holds its lease: it is
    /// theirs now. Drivers write fenced; operators and replies act on the
    /// saga as it is.
    async fn commit(
        &self,
        saga: &Saga,
        decisions: &[Decision],
        keep_lease: bool,
        fenced: bool,
    ) -> Result<Option<Saga>, StoreError> {
        let Some(last) = decisions.last() else {
            return Ok(Some(saga.clone()));
        };
        let now = Utc::now();
        let (after, history, outbox) = self.written(saga, decisions, now);
        let lease = match last.next {
            saga::NextAction::Call { at, .. } if keep_lease => Some(self.lease_until(at)),
            _ => None,
        };
        let write = crate::store::TransitionWrite {
            history,
            outbox,
            expected_version: saga.version,
            lease,
            fence: fenced.then(|| self.inner.config.instance_id.clone()),
            lease_unchanged: is_late_news(last),
            saga: after,
        };
        let Some(write) = self.inner.writer.commit(write).await? else {
            return Ok(None);
        };
        let after = write.saga;
        decisions.iter().for_each(count_transition);
        if after.state.is_terminal() {
            if let Some(event) = terminal_event(after.state) {
                self.inner.stats.record(event);
            }
            let seconds = (now - after.created_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!(telemetry::SAGA_SECONDS, "outcome" => after.state.as_str())
                .record(seconds);
        }
        Ok(Some(after))
    }

    /// The history row of `decision`, made by this instance.
    fn history_entry(&self, decision: &Decision, seq: i32, at: DateTime<Utc>) -> HistoryEntry {
        HistoryEntry {
            seq,
            from_state: Some(decision.from),
            to_state: decision.to,
            reason: decision.reason.as_str().to_string(),
            detail: decision.detail.clone(),
            at,
            instance_id: Some(self.inner.config.instance_id.clone()),
            // Exactly what `saga_events` turns into outbox messages.
            events: decision.event_types(),
        }
    }

    fn lease_until(&self, at: DateTime<Utc>) -> Lease {
        self.inner
            .leased_any
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Lease {
            owner: self.inner.config.instance_id.clone(),
            until: saga::later(at, self.inner.config.step_timeout + LEASE_GRACE),
        }
    }

    /// The decision's saga events as outbox messages on `saga-events`.
    fn saga_events(&self, saga: &Saga, decision: &Decision) -> Vec<OutboxMessage> {
        decision
            .events
            .iter()
            .map(|event| {
                let mut payload = event.payload.clone();
                payload.insert("state".into(), Value::from(saga.state.as_str()));
                // An event about a step (a failed attempt) keeps that step;
                // the others name the step the saga is on now.
                payload
                    .entry("step")
                    .or_insert_with(|| Value::from(saga.step.as_str()));
                let mut envelope = Envelope::new(
                    event.event_type,
                    saga.correlation_id.clone(),
                    Some(saga.saga_id),
                    Some(event.status),
                    payload,
                );
                envelope.traceparent = saga.traceparent.clone();
                OutboxMessage::new(self.inner.config.channels.saga_events.clone(), envelope)
            })
            .collect()
    }

    /// Drives `saga` under the lease just written for it, which ends at
    /// `lease_end`.
    fn spawn_driver(
        &self,
        saga: Saga,
        next: saga::NextAction,
        lease_end: DateTime<Utc>,
        permit: OwnedSemaphorePermit,
    ) {
        self.inner
            .tasks
            .spawn(driver::drive(self.clone(), saga, next, lease_end, permit));
    }
}

/// Slots held for sagas being recorded with their command, given back when
/// dropped unless kept: the write failed, the event was a duplicate, or
/// the record was dropped half-way (an API caller that hung up, or the
/// consumer stopped at shutdown). Only the hold made here is given back:
/// one a reply has moved on since (a heartbeat's, a next step's) stays.
struct PendingHolds<'a> {
    orch: &'a Orchestrator,
    /// Each saga's id and when the hold made for it expires.
    ids: Vec<(Uuid, DateTime<Utc>)>,
}

impl PendingHolds<'_> {
    /// The saga was recorded: its slot stays held.
    fn keep(&mut self, saga_id: Uuid) {
        self.ids.retain(|(id, _)| *id != saga_id);
    }
}

impl Drop for PendingHolds<'_> {
    fn drop(&mut self) {
        for (id, expires) in self.ids.drain(..) {
            self.orch.change_awaiting(|held| {
                if held.get(&id).is_some_and(|(_, at)| *at == expires) {
                    held.remove(&id);
                }
            });
        }
    }
}

/// Unmarks a saga as driven here when its driver ends, however it ends.
struct DrivingGuard {
    orch: Orchestrator,
    saga_id: Uuid,
}

impl Drop for DrivingGuard {
    fn drop(&mut self) {
        let mut driving = self
            .orch
            .inner
            .driving
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = driving.get_mut(&self.saga_id) {
            *n -= 1;
            if *n == 0 {
                driving.remove(&self.saga_id);
            }
        }
    }
}

/// When the slot of a saga waiting for its reply until `until` is given up.
fn hold_expiry(until: DateTime<Utc>) -> DateTime<Utc> {
    saga::later(until, LEASE_GRACE)
}

/// Counts a stored transition, the command it sent and the retry it is.
fn count_transition(decision: &Decision) {
    metrics::counter!(telemetry::TRANSITIONS, "from" => decision.from.as_str(), "to" => decision.to.as_str(), "reason" => decision.reason.as_str()).increment(1);
    if let Some(step) = decision.command {
        metrics::counter!(telemetry::COMMANDS, "step" => step.as_str()).increment(1);
    }
    if decision.reason == saga::Reason::AttemptFailed {
        metrics::counter!(telemetry::RETRIES, "step" => decision.step.as_str()).increment(1);
    }
}

/// A decision that only records news (an alliance created after the saga
/// moved on) and changes nothing of what the saga does next.
fn is_late_news(decision: &Decision) -> bool {
    decision.reason == saga::Reason::AllianceCreatedLate
}

/// The rate-window event for reaching a terminal state.
fn terminal_event(state: SagaState) -> Option<stats::Event> {
    match state {
        SagaState::Completed => Some(stats::Event::Completed),
        SagaState::Compensated => Some(stats::Event::Compensated),
        SagaState::Failed => Some(stats::Event::Failed),
        _ => None,
    }
}

/// Sleeps `delay` unless cancelled first; `false` when cancelled.
async fn pause(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = cancel.cancelled() => false,
    }
}

/// Backoff for loops that hit a broker or store error: 100 ms doubling to 5 s.
fn loop_backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5))
}

/// An orchestrator for unit tests on a `store` the caller has migrated,
/// with `transport`, the settings given, and participants that must not
/// be called. Nothing runs until a test calls it.
#[cfg(test)]
pub(crate) fn test_orchestrator(
    store: impl SagaStore,
    transport: Arc<dyn crate::transport::Transport>,
    settings: &Settings,
) -> Orchestrator {
    Orchestrator::new(
        Arc::new(store),
        transport,
        Arc::new(crate::participants::Uncalled),
        OrchestratorConfig::from(settings),
        CancellationToken::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::Step;
    use crate::store::NewSaga;
    use crate::store::SqliteStore;
    use crate::transport::MemoryTransport;

    fn failed_saga() -> Saga {
        Saga {
            saga_id: Uuid::now_v7(),
            event_id: "e-stale-copy".into(),
            last_error: Some("delete refused".into()),
            version: 4,
            ..saga::test_saga(SagaState::Failed, Step::DeletePartner, 3)
        }
    }

    fn retry() -> Input {
        Input::RetryFailed {
            reason: "operator".into(),
        }
    }

    /// An operator's retry of the failed saga `stored`, decided first on
    /// the caller's copy `older`: the saga as it is after.
    async fn retried_from(stored: &Saga, older: Saga) -> Result<Saga, OperateError> {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        store.migrate().await.expect("migrate");
        let created = store
            .create(&[NewSaga {
                saga: stored.clone(),
                history: Vec::new(),
                outbox: Vec::new(),
                lease: None,
            }])
            .await
            .expect("create");
        assert_eq!(created, [Created::New(stored.saga_id)]);
        let orch = test_orchestrator(
            store,
            Arc::new(MemoryTransport::new()),
            &Settings::default(),
        );
        // No slot free: the retry is committed and left to the sweeper, so
        // no driver calls a participant here.
        let slots = u32::try_from(orch.inner.config.max_in_flight).expect("slots");
        let _every_slot = orch
            .inner
            .permits
            .clone()
            .try_acquire_many_owned(slots)
            .expect("every slot taken");
        orch.operate_from(stored.saga_id, retry(), Some(older))
            .await
    }

    /// A caller's copy older than the store (here: still compensating,
    /// where an operator's retry is refused) must not refuse an input the
    /// saga as stored (failed) accepts.
    #[tokio::test]
    async fn an_input_refused_by_an_older_copy_is_decided_on_the_saga_as_stored() {
        let stored = failed_saga();
        let older = Saga {
            state: SagaState::Compensating,
            version: stored.version - 1,
            ..stored.clone()
        };
        let config = OrchestratorConfig::from(&Settings::default());
        assert!(
            saga::decide(&older, &retry(), &config.retry, Utc::now()).is_err(),
            "the older copy refuses the retry"
        );
        let after = retried_from(&stored, older)
            .await
            .expect("decided on the stored saga");
        assert_eq!(after.version, stored.version + 1);
        assert_eq!(after.state, SagaState::Compensating);
    }

    /// A copy that accepts the input but is a version behind: its commit
    /// is fenced, and the input is decided again on the saga as stored.
    #[tokio::test]
    async fn a_commit_fenced_by_a_newer_version_is_decided_again_on_the_saga_as_stored() {
        let stored = failed_saga();
        let older = Saga {
            version: stored.version - 1,
            ..stored.clone()
        };
        let after = retried_from(&stored, older)
            .await
            .expect("decided on the stored saga");
        assert_eq!(
            after.version,
            stored.version + 1,
            "applied once, on the stored version"
        );
        assert_eq!(after.state, SagaState::Compensating);
    }

    /// The guard of the slots a record holds gives back those it did not
    /// keep, and only the holds it made: not one a reply moved on since.
    #[tokio::test]
    async fn slots_held_for_a_record_are_given_back_unless_it_kept_them() {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        store.migrate().await.expect("migrate");
        let orch = test_orchestrator(
            store,
            Arc::new(MemoryTransport::new()),
            &Settings::default(),
        );
        let max = orch.inner.config.max_in_flight;
        let (kept, dropped, moved) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let expires = Utc::now() + chrono::Duration::minutes(10);
        for id in [kept, dropped, moved] {
            let slot = orch.try_permit().expect("a free slot");
            orch.hold_until(id, slot, expires);
        }
        // A heartbeat for `moved` came in meanwhile.
        assert!(orch.extend_awaiting(moved, expires + chrono::Duration::minutes(1)));
        let mut holds = PendingHolds {
            orch: &orch,
            ids: vec![(kept, expires), (dropped, expires), (moved, expires)],
        };
        holds.keep(kept);
        drop(holds);
        assert_eq!(orch.inner.permits.available_permits(), max - 2);
        assert!(
            orch.take_awaiting(kept).is_some(),
            "the kept one still waits"
        );
        assert!(orch.take_awaiting(dropped).is_none());
        assert!(orch.take_awaiting(moved).is_some(), "a reply's hold stays");
    }

    #[test]
    fn upkeep_covers_saga_replies_only_where_they_are_consumed() {
        let config = |mode| {
            let mut settings = Settings::default();
            settings.participants.alliances_mode = mode;
            OrchestratorConfig::from(&settings)
        };
        assert_eq!(
            config(ParticipantMode::Http).consumed_channels(),
            ["partner-events"]
        );
        assert_eq!(
            config(ParticipantMode::Broker).consumed_channels(),
            ["partner-events", "saga-replies"]
        );
    }
}
