//! Group commit: the transitions that many sagas' drivers (and the replies
//! consumer) produce at the same moment are written in one transaction,
//! so they share one durable flush instead of paying one each.
//!
//! Nothing waits to fill a batch: a writer takes whatever is queued when
//! it is free, so a lone transition is written at once, and under load the
//! batches grow by themselves while the previous one commits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::outbox_writes::OutboxWrites;
use crate::store::{SagaStore, StoreError, TransitionWrite};

/// Transitions written per transaction at most.
const MAX_BATCH: usize = 128;
/// Writers working side by side: one collects while another commits.
const WRITERS: usize = 2;

/// What a transition write came to, with the write handed back.
type Written = (TransitionWrite, Result<bool, StoreError>);

struct Job {
    write: TransitionWrite,
    done: oneshot::Sender<Written>,
}

/// The queue in front of the store's transition writes.
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
    load: Arc<Load>,
}

/// Jobs queued, and jobs done: idle when they match.
#[derive(Default)]
struct Load {
    queued: AtomicU64,
    done: AtomicU64,
}

/// One job counted as queued; uncounted on drop unless it got in.
struct Queued<'a>(Option<&'a Load>);

impl<'a> Queued<'a> {
    fn count(load: &'a Load) -> Self {
        load.queued.fetch_add(1, Ordering::AcqRel);
        Self(Some(load))
    }

    fn in_the_queue(mut self) {
        self.0 = None;
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(load) = self.0 {
            load.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// How often [`Writer::idle`] looks (at shutdown only).
const IDLE_POLL: Duration = Duration::from_millis(5);

impl Writer {
    /// Starts the writers; they stop once the `Writer` is dropped and the
    /// queue is empty.
    /// Each commit is counted in `outbox` once it went through, whether
    /// or not its caller still waits for it.
    pub(super) fn start(store: Arc<dyn SagaStore>, outbox: Arc<OutboxWrites>) -> Self {
        let (jobs, queue) = mpsc::channel(MAX_BATCH * WRITERS * 2);
        let queue = Arc::new(Mutex::new(queue));
        let load = Arc::new(Load::default());
        for _ in 0..WRITERS {
            tokio::spawn(run(
                store.clone(),
                queue.clone(),
                outbox.clone(),
                load.clone(),
            ));
        }
        Self { jobs, load }
    }

    /// Resolves once every write queued so far is done, even those whose
    /// callers were dropped: shutdown's last relay pass must come after.
    pub(super) async fn idle(&self) {
        loop {
            let queued = self.load.queued.load(Ordering::Acquire);
            if self.load.done.load(Ordering::Acquire) >= queued {
                return;
            }
            tokio::time::sleep(IDLE_POLL).await;
        }
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
        // Counted before the send, so `done` never runs ahead of it; given
        // back if the job never got into the queue.
        let queued = Queued::count(&self.load);
        self.jobs
            .send(Job { write, done })
            .await
            .map_err(|_| stopped())?;
        queued.in_the_queue();
        let (write, applied) = result.await.map_err(|_| stopped())?;
        Ok(applied?.then_some(write))
    }
}

async fn run(
    store: Arc<dyn SagaStore>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    outbox: Arc<OutboxWrites>,
    load: Arc<Load>,
) {
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
        let (writes, dones): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.write, j.done)).unzip();
        let results = match store.commit_batch(&writes).await {
            Ok(applied) => applied.into_iter().map(Ok).collect(),
            // One write's data can fail the whole transaction: write them
            // one by one so only that one fails.
            Err(_) if writes.len() > 1 => {
                let mut results = Vec::with_capacity(writes.len());
                for write in &writes {
                    results.push(store.commit(write).await);
                }
                results
            }
            Err(e) => vec![Err(e)],
        };
        if results.iter().any(|r| matches!(r, Ok(true))) {
            outbox.written();
        }
        let finished = dones.len() as u64;
        for ((write, done), result) in writes.into_iter().zip(dones).zip(results) {
            let _ = done.send((write, result));
        }
        load.done.fetch_add(finished, Ordering::AcqRel);
    }
}
