//! The scenario's load: `PartnerCreated` events published in a closed loop
//! (a new one only while fewer than `in_flight` sagas are unfinished), as
//! integrations would, through the service's own transport adapter. A send
//! the broker did not take is sent again, as a real producer does: a second
//! copy of an event is for the service's dedup to absorb.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_orchestrator::envelope::{Envelope, EventType};
use saga_orchestrator::transport::{
    OutboundMessage, PulsarTransport, RedisTransport, Transport, WireFormat,
};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::broker::BrokerKind;

/// What the store holds for the scenario's sagas.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub sagas: i64,
    pub terminal: i64,
}

/// The store, read with short timeouts: it may be down or paused.
pub async fn store_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(url)
        .expect("a database URL")
}

/// Sagas and terminal sagas now; `None` while the store does not answer.
pub async fn progress(pool: &PgPool) -> Option<Progress> {
    let query = sqlx::query_as::<_, (i64, i64)>(
        "SELECT count(*), count(*) FILTER (WHERE state IN ('completed', 'compensated', 'failed')) \
         FROM sagas",
    )
    .fetch_one(pool);
    let (sagas, terminal) = tokio::time::timeout(Duration::from_secs(3), query)
        .await
        .ok()?
        .ok()?;
    Some(Progress { sagas, terminal })
}

/// The partner of the scenario's `n`th event.
pub fn partner(prefix: &str, n: usize) -> String {
    format!("{prefix}p{n}")
}

/// The scenario's `n`th event in the broker's wire form.
fn event(prefix: &str, n: usize, format: WireFormat) -> OutboundMessage {
    let partner = partner(prefix, n);
    let payload = json!({"partner_id": partner, "name": format!("Partner {n}"), "email": format!("{partner}@example.test")});
    let mut envelope = Envelope::new(
        EventType::PartnerCreated,
        &partner,
        None,
        None,
        payload.as_object().cloned().unwrap_or_default(),
    );
    envelope.event_id = format!("evt-{partner}");
    OutboundMessage::encode(&envelope, format)
}

/// When each partner's event was first offered to the broker.
pub type Offered = Arc<Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>>;

/// How fast a load publishes.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// At most this many sagas unfinished at once.
    pub in_flight: usize,
    /// No faster than this many events a second, when given.
    pub per_second: Option<f64>,
    /// Stop before the event of this index until [`Load::release`], when
    /// given: a scenario can make sure work is left for a step it takes.
    pub hold_at: Option<usize>,
}

/// A publisher running in the background.
pub struct Load {
    pub published: Arc<AtomicUsize>,
    pub offered: Offered,
    /// Sends the broker did not take and that were made again.
    resent: Arc<AtomicUsize>,
    /// The index of the first event not to publish yet.
    hold: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Load {
    /// Publishes `events` events to `channel` at `pace`.
    pub async fn start(
        kind: BrokerKind,
        broker_url: &str,
        channel: &str,
        store_url: &str,
        prefix: &str,
        events: usize,
        pace: Pace,
    ) -> Self {
        let transport = connect(kind, broker_url).await;
        let pool = store_pool(store_url).await;
        let published = Arc::new(AtomicUsize::new(0));
        let resent = Arc::new(AtomicUsize::new(0));
        let hold = Arc::new(AtomicUsize::new(pace.hold_at.unwrap_or(usize::MAX)));
        let offered = Offered::default();
        let task = tokio::spawn(publish(
            transport,
            pool,
            channel.to_string(),
            prefix.to_string(),
            (events, pace),
            (
                published.clone(),
                resent.clone(),
                hold.clone(),
                offered.clone(),
            ),
        ));
        Self {
            published,
            offered,
            resent,
            hold,
            task,
        }
    }

    /// Lets a load held by [`Pace::hold_at`] go on.
    pub fn release(&self) {
        self.hold.store(usize::MAX, Ordering::SeqCst);
    }

    pub fn published(&self) -> usize {
        self.published.load(Ordering::SeqCst)
    }

    /// Waits until every event is sent; how many sends were made again.
    pub async fn finish(self) -> usize {
        self.task.await.expect("the publisher ends");
        self.resent.load(Ordering::SeqCst)
    }
}

async fn connect(kind: BrokerKind, url: &str) -> Arc<dyn Transport> {
    let name = format!("fault-load-{}", uuid::Uuid::new_v4().simple());
    match kind {
        BrokerKind::Redis => Arc::new(
            RedisTransport::connect(url, "fault-load", &name, Duration::from_secs(30))
                .await
                .expect("connect to redis"),
        ),
        BrokerKind::Pulsar => Arc::new(
            PulsarTransport::connect(url, "fault-load", &name)
                .await
                .expect("connect to pulsar"),
        ),
    }
}

async fn publish(
    transport: Arc<dyn Transport>,
    pool: PgPool,
    channel: String,
    prefix: String,
    (events, pace): (usize, Pace),
    (published, resent, hold, offered): (
        Arc<AtomicUsize>,
        Arc<AtomicUsize>,
        Arc<AtomicUsize>,
        Offered,
    ),
) {
    let mut done = Progress::default();
    let began = tokio::time::Instant::now();
    for n in 0..events {
        if let Some(rate) = pace.per_second {
            tokio::time::sleep_until(began + Duration::from_secs_f64(n as f64 / rate)).await;
        }
        loop {
            if let Some(now) = progress(&pool).await {
                done = now;
            }
            if (n as i64) - done.terminal < pace.in_flight as i64 && n < hold.load(Ordering::SeqCst)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let message = event(&prefix, n, transport.format());
        offered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partner(&prefix, n), chrono::Utc::now());
        while transport
            .send(&channel, vec![message.clone()])
            .await
            .is_err()
        {
            resent.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        published.fetch_add(1, Ordering::SeqCst);
    }
}
