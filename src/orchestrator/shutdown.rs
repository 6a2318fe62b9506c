//! Stopping: no new work, the sagas in flight given the grace period to
//! reach a durable point, then one last relay pass, each wait said.

use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::Orchestrator;

/// The relay's last pass gets at least this, even when the grace is spent.
const LAST_PASS_MIN: Duration = Duration::from_secs(1);
/// The longest the store is waited for to hand leases back.
const HAND_BACK_MAX: Duration = Duration::from_secs(2);
/// Saga ids named in a log line at most.
const NAMED: usize = 5;

impl Orchestrator {
    /// Stops taking work: the consumers, recovery and upkeep stop at once,
    /// wherever they wait, and drivers start no new call. Called when the
    /// signal comes, so the grace period counts from then; idempotent.
    pub fn stop_taking_work(&self) {
        let inner = &self.inner;
        let grace = inner.config.shutdown_grace;
        if inner.stop_deadline.set(Instant::now() + grace).is_ok() {
            inner.cancel.cancel();
            inner.tasks.close();
        }
    }

    /// Stops taking work (if not done yet) and waits, at most the shutdown
    /// grace (`SHUTDOWN_GRACE_SECS`) from [`Orchestrator::stop_taking_work`],
    /// for the sagas in flight; those still mid-step are left to recovery
    /// (durable, leased, retried with the same idempotency keys). When all
    /// of them finished in time, the leases of the sagas left are handed
    /// back (see [`Orchestrator::hand_back_leases`]). The relay
    /// stops last, with one final pass when this instance wrote to the
    /// outbox since it was last seen empty, so the events of the drivers'
    /// last commits go out now rather than at the next start.
    pub async fn shutdown(&self) {
        self.stop_taking_work();
        let inner = &self.inner;
        let deadline = inner
            .stop_deadline
            .get()
            .copied()
            .unwrap_or_else(Instant::now);
        let in_flight = self.driven_now();
        if !in_flight.is_empty() {
            tracing::info!(
                in_flight = in_flight.len(),
                sagas = %named(&in_flight),
                "shutting down: waiting up to {} s (SHUTDOWN_GRACE_SECS) for the sagas in flight to finish their step",
                secs_left(deadline)
            );
        }
        let waited = async {
            inner.tasks.wait().await;
            // Writes whose callers were dropped still land: the last
            // relay pass must come after them.
            inner.outbox.settled().await;
        };
        let finished = tokio::time::timeout_at(deadline, waited).await.is_ok();
        if !finished {
            let left = self.driven_now();
            if left.is_empty() {
                tracing::warn!("shutdown grace elapsed with transitions still being written");
            } else {
                tracing::warn!(
                    left = left.len(),
                    sagas = %named(&left),
                    "shutdown grace elapsed with sagas in flight; recovery will resume them"
                );
            }
        }
        let last_pass = deadline.max(Instant::now() + LAST_PASS_MIN);
        if finished {
            self.hand_back_leases(last_pass).await;
        }
        self.stop_relay(last_pass).await;
    }

    /// Hands back the leases of the sagas this instance leaves unfinished
    /// (recorded but not yet driven, waiting for a retry), so whichever
    /// instance runs next takes them when due rather than after their
    /// leases. Only once every task and write has finished: a write still
    /// queued (its caller dropped at the end of the grace) could otherwise
    /// land after another instance claimed the saga — a claim does not
    /// move its version. Sagas still being driven keep their leases: the
    /// participant may still be working on their call.
    async fn hand_back_leases(&self, deadline: Instant) {
        let inner = &self.inner;
        if !inner.leased_any.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        // Worth a moment, not the rest of the grace: leases lapse anyway.
        let deadline = deadline.min(Instant::now() + HAND_BACK_MAX);
        let keep = self.driven_now();
        let release = inner.store.release_leases(&inner.config.instance_id, &keep);
        match tokio::time::timeout_at(deadline, release).await {
            Ok(Ok(0)) => {}
            Ok(Ok(sagas)) => {
                tracing::info!(sagas, "handed back the leases of the sagas left unfinished")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not hand back the leases of the sagas left; they lapse instead")
            }
            Err(_) => tracing::warn!(
                "the store did not answer in time to hand back the leases of the sagas left; they lapse instead"
            ),
        }
    }

    async fn stop_relay(&self, deadline: Instant) {
        let inner = &self.inner;
        if inner.outbox.pending() {
            tracing::info!(
                "relaying the last events written, for up to {} s",
                secs_left(deadline)
            );
        }
        inner.relay_stop.cancel();
        inner.relay.close();
        if tokio::time::timeout_at(deadline, inner.relay.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "the outbox relay's last pass did not finish; the next start relays the rest"
            );
        }
    }

    /// The sagas a driver of this instance is on now.
    fn driven_now(&self) -> Vec<Uuid> {
        let driving = self.inner.driving.lock().unwrap_or_else(|e| e.into_inner());
        driving.keys().copied().collect()
    }
}

/// Whole seconds until `deadline`, rounded up, for a log line.
fn secs_left(deadline: Instant) -> f64 {
    deadline
        .saturating_duration_since(Instant::now())
        .as_secs_f64()
        .ceil()
}

/// A few of `ids`, for a log line: "id, id, … and 12 more".
fn named(ids: &[Uuid]) -> String {
    let mut shown: Vec<String> = ids.iter().take(NAMED).map(Uuid::to_string).collect();
    if ids.len() > NAMED {
        shown.push(format!("and {} more", ids.len() - NAMED));
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_names_a_few_sagas_and_counts_the_rest() {
        let ids: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
        let shown = named(&ids);
        assert!(shown.starts_with(&ids[0].to_string()), "{shown}");
        assert!(shown.ends_with(", and 2 more"), "{shown}");
        assert_eq!(named(&ids[..2]), format!("{}, {}", ids[0], ids[1]));
        assert_eq!(named(&[]), "");
    }
}
