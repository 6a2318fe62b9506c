//! Load tools: `publish` announces test partners on the broker the way
//! integrations would; `load-test` also waits for their sagas through the
//! API and reports throughput and latency.
//!
//! A share of the partners can be made to fail on purpose: their email is
//! at the simulator's refused domain, so alliances refuses them and their
//! sagas compensate.

mod report;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

pub use report::{collect, LoadReport, OutcomeStats, SagaOutcome};

use crate::envelope::{Envelope, EventType};
use crate::tools::simulator::REFUSED_DOMAIN;
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
    /// Shared by every event, so the run's sagas can be found again.
    pub correlation_id: String,
}

/// Why a load run stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("publishing failed: {0}")]
    Publish(#[from] TransportError),
    #[error("the API at {url} did not answer: {source}")]
    Api { url: String, source: reqwest::Error },
    #[error("the API at {url} answered {status}: {body}")]
    ApiStatus {
        url: String,
        status: u16,
        body: String,
    },
}

/// The run's `PartnerCreated` events: unique partners, every
/// `1/fail_ratio`-th one at the refused domain (spread evenly, so any
/// prefix of the run has about the right share).
pub fn events(plan: &PublishPlan) -> Vec<Envelope> {
    let run = &Uuid::new_v4().simple().to_string()[..8];
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
            Envelope::new(
                EventType::PartnerCreated,
                plan.correlation_id.clone(),
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
/// `plan.concurrency` publishers; `on_sent` is called with each count sent.
pub async fn publish(
    transport: Arc<dyn Transport>,
    channel: &str,
    events: Vec<Envelope>,
    plan: &PublishPlan,
    on_sent: impl Fn(usize) + Send + Sync + 'static,
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
                on_sent(chunk.len());
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

/// What waiting for a run's sagas found.
#[derive(Debug, Clone)]
pub struct Waited {
    /// Every saga of the run, as last read.
    pub sagas: Vec<SagaOutcome>,
    /// Partners of the run with a terminal saga.
    pub settled: usize,
    /// Whether every partner had one before the timeout.
    pub complete: bool,
}

/// Polls the API until every partner in `partners` has a terminal saga of
/// `correlation_id`, or the timeout; `on_progress` gets (settled, sagas
/// seen) after each poll. Counting partners, not sagas, keeps a duplicate
/// (or a saga of an earlier run with the same correlation id) from ending
/// the wait early.
pub async fn wait_for_sagas(
    api: &str,
    correlation_id: &str,
    partners: &HashSet<String>,
    timeout: Duration,
    on_progress: impl Fn(usize, usize),
) -> Result<Waited, LoadError> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let sagas = fetch_sagas(&http, api, correlation_id).await?;
        let settled: HashSet<&str> = sagas
            .iter()
            .filter(|s| s.is_terminal() && partners.contains(&s.partner_id))
            .map(|s| s.partner_id.as_str())
            .collect();
        let settled = settled.len();
        on_progress(settled, sagas.len());
        let complete = settled >= partners.len();
        if complete || started.elapsed() >= timeout {
            return Ok(Waited {
                sagas,
                settled,
                complete,
            });
        }
        tokio::time::sleep(poll_interval(partners.len())).await;
    }
}

/// Each poll reads every saga of the run, so large runs poll less often:
/// the reads would otherwise take a noticeable share of the machine being
/// measured. Timings come from the sagas' own timestamps, not from polls.
fn poll_interval(sagas: usize) -> Duration {
    Duration::from_millis((sagas as u64 / 5).clamp(250, 2_000))
}

/// Every saga of `correlation_id`, all pages.
async fn fetch_sagas(
    http: &reqwest::Client,
    api: &str,
    correlation_id: &str,
) -> Result<Vec<SagaOutcome>, LoadError> {
    let mut sagas = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = format!("{}/sagas", api.trim_end_matches('/'));
        let mut query = vec![
            ("correlation_id", correlation_id.to_string()),
            ("limit", "500".to_string()),
        ];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let api_error = |source| LoadError::Api {
            url: url.clone(),
            source,
        };
        let response = http
            .get(&url)
            .query(&query)
            .send()
            .await
            .map_err(api_error)?;
        let status = response.status();
        let body = response.text().await.map_err(api_error)?;
        if !status.is_success() {
            return Err(LoadError::ApiStatus {
                url,
                status: status.as_u16(),
                body,
            });
        }
        let page = report::parse_page(&body).map_err(|e| LoadError::ApiStatus {
            url: url.clone(),
            status: status.as_u16(),
            body: format!("unexpected body ({e})"),
        })?;
        sagas.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(sagas),
        }
    }
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
            correlation_id: "load-c".into(),
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
    fn events_are_unique_valid_partners_sharing_the_correlation_id() {
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
            assert_eq!(e.correlation_id, "load-c");
            assert!(crate::envelope::PartnerCreated::from_payload(&e.payload).is_ok());
        }
        assert_eq!(failing(&events), 0);
    }

    #[test]
    fn large_runs_poll_less_often() {
        assert_eq!(poll_interval(100), Duration::from_millis(250));
        assert_eq!(poll_interval(5_000), Duration::from_millis(1_000));
        assert_eq!(poll_interval(100_000), Duration::from_secs(2));
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
            move |n| {
                counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
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
