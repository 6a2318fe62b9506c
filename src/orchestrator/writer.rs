//! Group commit: the transitions that many sagas' drivers (and the replies
//! consumer) produce at the same moment are written in one transaction,
//! so they share one durable flush instead of paying one each.
//!
//! Nothing waits to fill a batch: a writer takes whatever is queued when
//! it is free, so a lone transition is written at once, and under load the
//! batches grow by themselves while the previous one commits.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::outbox_writes::{InFlight, OutboxWrites};
use super::relay;
use crate::store::{SagaStore, StoreError, TransitionWrite};
use crate::telemetry;

/// Transitions written per transaction at most.
const MAX_BATCH: usize = 128;
/// Writers working side by side: one collects while another commits.
const WRITERS: usize = 2;

/// What a transition write came to, with the write handed back.
type Written = (TransitionWrite, Result<bool, StoreError>);

struct Job {
    write: TransitionWrite,
    done: oneshot::Sender<Written>,
    /// Travels with the job, so the write stays under way (and is counted
    /// once done) even when its caller has gone.
    writing: InFlight,
}

/// The queue in front of the store's transition writes.
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
    outbox: Arc<OutboxWrites>,
}

impl Writer {
    /// Starts the writers; they stop once the `Writer` is dropped and the
    /// queue is empty.
    /// Each write is under way in `outbox` from when it is asked for to
    /// when its commit is done, whether or not its caller still waits.
    /// The outbox rows are written held by `instance_id` and handed to its
    /// relay (see `outbox_writes`).
    pub(super) fn start(
        store: Arc<dyn SagaStore>,
        outbox: Arc<OutboxWrites>,
        instance_id: String,
    ) -> Self {
        let (jobs, queue) = mpsc::channel(MAX_BATCH * WRITERS * 2);
        let queue = Arc::new(Mutex::new(queue));
        let instance_id: Arc<str> = instance_id.into();
        for _ in 0..WRITERS {
            let to = Target {
                store: store.clone(),
                outbox: outbox.clone(),
                instance_id: instance_id.clone(),
            };
            tokio::spawn(run(to, queue.clone()));
        }
        Self { jobs, outbox }
    }

    /// Writes one transition, batched with whatever else is being written
    /// now. `Ok(Some(write))`: stored; `Ok(None)`: the saga's version had
    /// moved, nothing was written (as [`SagaStore::commit`]).
    pub(super) async fn commit(
        &self,
        write: TransitionWrite,
    ) -> Result<Option<TransitionWrite>, StoreError> {
        let (done, result) = oneshot::channel();
        let stopped = || StoreError::Unreachable("the transition writer has stopped".into());
        // Counts nothing until the writer takes the job: a caller that
        // goes away before it is queued wrote nothing.
        let writing = self.outbox.in_flight().queued();
        let asked = Instant::now();
        self.jobs
            .send(Job {
                write,
                done,
                writing,
            })
            .await
            .map_err(|_| stopped())?;
        let (write, applied) = result.await.map_err(|_| stopped())?;
        let applied = applied?;
        metrics::histogram!(telemetry::TRANSITION_COMMIT_SECONDS)
            .record(asked.elapsed().as_secs_f64());
        Ok(applied.then_some(write))
    }
}

/// Where a writer writes: the store, and this instance's relay.
struct Target {
    store: Arc<dyn SagaStore>,
    outbox: Arc<OutboxWrites>,
    instance_id: Arc<str>,
}

async fn run(to: Target, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let jobs = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            jobs
        };
        let mut writes = Vec::with_capacity(jobs.len());
        let mut dones = Vec::with_capacity(jobs.len());
        let mut writing = Vec::with_capacity(jobs.len());
        for job in jobs {
            writes.push(job.write);
            dones.push(job.done);
            writing.push(job.writing.taken());
        }
        let results = write(&to, &mut writes, writing).await;
        for ((write, done), result) in writes.into_iter().zip(dones).zip(results) {
            let _ = done.send((write, result));
        }
    }
}

/// Writes a batch, its outbox rows held and handed to the relay; ends
/// `writing` (counted or handed) before the callers hear of it.
async fn write(
    to: &Target,
    writes: &mut [TransitionWrite],
    writing: Vec<InFlight>,
) -> Vec<Result<bool, StoreError>> {
    let hold = relay::hold(&to.instance_id);
    let began = Instant::now();
    match to.store.commit_batch_held(writes, Some(&hold)).await {
        Ok((applied, held)) => {
            telemetry::store_write("transition", writes.len(), began.elapsed());
            let outboxes = writes
                .iter_mut()
                .zip(&applied)
                .filter(|(_, applied)| **applied)
                .map(|(w, _)| &mut w.outbox);
            to.outbox.settle(writing, &held, hold.until, outboxes);
            applied.into_iter().map(Ok).collect()
        }
        // One write's data can fail the whole transaction: write them
        // one by one so only that one fails (unheld: a rare path). The
        // failed batch may have committed before its answer was lost.
        Err(_) if writes.len() > 1 => {
            let mut results = Vec::with_capacity(writes.len());
            for write in writes.iter() {
                results.push(to.store.commit(write).await);
            }
            // Ended after the writes above, so they are under way till then.
            writing.into_iter().for_each(InFlight::orphaned);
            results
        }
        Err(e) => {
            writing.into_iter().for_each(InFlight::orphaned);
            vec![Err(e)]
        }
    }
}
