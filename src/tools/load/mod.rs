//! Load tools: `publish` announces test partners on the broker the way
//! integrations would; `load-test` also reads their sagas' terminal events
//! on `saga-events` and reports throughput and latency, in a closed loop
//! (a new event as each saga ends) or a burst ([`run`]).
//!
//! Every partner's events carry its own correlation id (its `partner_id`)
//! unless one is asked for, so the monitor shows one saga per group.
//!
//! A share of the partners can be made to fail on purpose: their email is
//! at the simulator's refused domain, so alliances refuses them and their
//! sagas compensate.

mod ledger;
mod report;
mod run;
mod watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

pub use ledger::{Ledger, Outcome, Seen, Verdict};
pub use report::{LatencyMs, LoadReport, Mode, OutcomeStats, RunInfo};
pub use run::{burst, closed_loop, Finished};
pub use watch::TerminalWatch;

use crate::envelope::{Envelope, EventType};
use crate::tools::simulator::REFUSED_DOMAIN;
use crate::transport::tap::TapError;
use crate::transport::{Transport, TransportError};

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub count: usize,
    /// Events per second across all publishers; `None`: as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Publishers working side by side.
    pub concurrency: usize,
    /// Share of partners (0–1) made to fail on purpose.
    pub fail_ratio: f64,
    /// Shared by every event; `None`: each partner's events carry its own
    /// (the `partner_id`).
    pub correlation_id: Option<String>,
    /// Names the run's partners (`load-<run_id>-000042`).
    pub run_id: String,
}

/// A fresh run id: short, and unique enough that two runs' partners never meet.
pub fn run_id() -> String {
    Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Why a load run stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("publishing failed: {0}")]
    Publish(#[from] TransportError),
    #[error("cannot read saga-events: {0}")]
    Watch(TapError),
    #[error("reading saga-events stopped: {0}")]
    WatchLost(String),
}

/// The run's `PartnerCreated` events: unique partners, every
/// `1/fail_ratio`-th one at the refused domain (spread evenly, so any
/// prefix of the run has about the right share).
pub fn events(plan: &PublishPlan) -> Vec<Envelope> {
    let run = &plan.run_id;
    let mut failed_so_far = 0usize;
    (0..plan.count)
        .map(|i| {
            let fail_by_now = ((i + 1) as f64 * plan.fail_ratio.clamp(0.0, 1.0)).floor() as usize;
            let fails = fail_by_now > failed_so_far;
            failed_so_far = fail_by_now;
            let partner_id = format!("load-{run}-{i:06}");
            let domain = if fails {
                REFUSED_DOMAIN
            } else {
                "@example.test"
            };
            let payload = json!({
                "partner_id": partner_id,
                "name": format!("Load partner {i}"),
                "email": format!("{partner_id}{domain}"),
            });
            let correlation_id = plan.correlation_id.clone().unwrap_or(partner_id);
            Envelope::new(
                EventType::PartnerCreated,
                correlation_id,
                None,
                None,
                payload.as_object().cloned().unwrap_or_default(),
            )
        })
        .collect()
}

/// What publishing did: the events as sent, and how long it took.
#[derive(Debug, Clone)]
pub struct Published {
    /// Each event's `timestamp` is when it was sent, so latency measured
    /// from it never includes the wait for its turn at a paced rate.
    pub events: Vec<Envelope>,
    pub took: Duration,
}

/// Publishes `events` to `channel`, paced to `plan.rate` across
/// `plan.concurrency` publishers; `on_sent` is called with each batch
/// sent, stamped with when it went.
pub async fn publish(
    transport: Arc<dyn Transport>,
    channel: &str,
    events: Vec<Envelope>,
    plan: &PublishPlan,
    on_sent: impl Fn(&[Envelope]) + Send + Sync + 'static,
) -> Result<Published, LoadError> {
    let started = Instant::now();
    let workers = plan.concurrency.clamp(1, events.len().max(1));
    // Unpaced, events go in batches; paced, one at a time on a schedule.
    let batch = if plan.rate.is_some() { 1 } else { 100 };
    let per_worker_interval = plan
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(workers as f64 / r));
    let on_sent = Arc::new(on_sent);
    let mut shares: Vec<Vec<Envelope>> = vec![Vec::new(); workers];
    for (i, event) in events.into_iter().enumerate() {
        shares[i % workers].push(event);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (w, share) in shares.into_iter().enumerate() {
        let transport = transport.clone();
        let channel = channel.to_string();
        let on_sent = on_sent.clone();
        tasks.spawn(async move {
            // Workers start staggered so the combined rate is even.
            let offset = per_worker_interval.map(|i| i.mul_f64(w as f64 / workers as f64));
            let start = tokio::time::Instant::now() + offset.unwrap_or_default();
            let mut share = share;
            for (n, chunk) in share.chunks_mut(batch).enumerate() {
                if let Some(interval) = per_worker_interval {
                    tokio::time::sleep_until(start + interval * n as u32).await;
                }
                let now = chrono::Utc::now();
                for event in chunk.iter_mut() {
                    event.timestamp = now;
                }
                transport.publish(&channel, chunk).await?;
                on_sent(chunk);
            }
            Ok::<_, TransportError>(share)
        });
    }
    let mut sent = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(result) => sent.extend(result?),
            Err(e) => return Err(LoadError::Publish(TransportError::Task(e.to_string()))),
        }
    }
    Ok(Published {
        events: sent,
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(count: usize, fail_ratio: f64) -> PublishPlan {
        PublishPlan {
            count,
            rate: None,
            concurrency: 1,
            fail_ratio,
            correlation_id: None,
            run_id: "r1".into(),
        }
    }

    fn failing(events: &[Envelope]) -> usize {
        events
            .iter()
            .filter(|e| {
                e.payload["email"]
                    .as_str()
                    .is_some_and(|m| m.ends_with(REFUSED_DOMAIN))
            })
            .count()
    }

    #[test]
    fn events_are_unique_valid_partners_each_with_its_own_correlation_id() {
        let events = events(&plan(50, 0.0));
        assert_eq!(events.len(), 50);
        let ids: std::collections::HashSet<_> = events
            .iter()
            .map(|e| {
                e.payload["partner_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(ids.len(), 50);
        for e in &events {
            assert_eq!(Some(e.correlation_id.as_str()), e.partner_id());
            assert!(e.correlation_id.starts_with("load-r1-"));
            assert!(crate::envelope::PartnerCreated::from_payload(&e.payload).is_ok());
        }
        assert_eq!(failing(&events), 0);
    }

    #[test]
    fn a_correlation_id_asked_for_is_shared_by_every_event() {
        let mut p = plan(5, 0.0);
        p.correlation_id = Some("mine".into());
        assert!(events(&p).iter().all(|e| e.correlation_id == "mine"));
    }

    #[test]
    fn the_fail_ratio_is_exact_and_spread_out() {
        let run = events(&plan(1000, 0.1));
        assert_eq!(failing(&run), 100);
        assert_eq!(failing(&run[..100]), 10, "any prefix has its share");
        assert_eq!(failing(&events(&plan(10, 1.0))), 10);
        assert_eq!(failing(&events(&plan(10, 7.0))), 10, "clamped to 1");
    }

    #[tokio::test]
    async fn publishing_paces_to_the_rate_and_sends_everything() {
        let transport = crate::transport::MemoryTransport::new();
        let mut p = plan(20, 0.0);
        p.rate = Some(200.0);
        p.concurrency = 4;
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        let before = chrono::Utc::now();
        let published = publish(
            Arc::new(transport.clone()),
            "partner-events",
            events(&p),
            &p,
            move |chunk| {
                counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            },
        )
        .await
        .unwrap();
        assert_eq!(transport.messages("partner-events").len(), 20);
        assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), 20);
        assert_eq!(published.events.len(), 20);
        // 20 events at 200/s take about 0.1 s: never all at once.
        assert!(
            published.took >= Duration::from_millis(80),
            "{:?}",
            published.took
        );
        // Each is stamped when sent, not when the plan was made: the last
        // went out a pacing interval after the first.
        let mut stamps: Vec<_> = published.events.iter().map(|e| e.timestamp).collect();
        stamps.sort();
        assert!(stamps[0] >= before);
        assert!(
            stamps[19] - stamps[0] >= chrono::Duration::milliseconds(80),
            "{stamps:?}"
        );
    }
}
