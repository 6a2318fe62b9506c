//! The tests' own view of the broker, independent of the service's
//! adapters: publishes what integrations and participants would, reads
//! channels the way an operator would, and tells what the orchestrator
//! left unacknowledged.
//!
//! `TEST_BROKER` picks the broker for the whole suite: `redis` (default,
//! `TEST_REDIS_URL`) or `pulsar` (`TEST_PULSAR_URL`); `make test` runs the
//! suite once on each.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, Producer, Pulsar, SubType, TokioExecutor};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use uuid::Uuid;

use saga_orchestrator::envelope::{Envelope, EventType};

/// The orchestrator's subscription / consumer group (the default setting).
pub const SUBSCRIPTION: &str = "saga-orchestrator";

/// Which broker the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Redis,
    Pulsar,
}

impl BrokerKind {
    /// From `TEST_BROKER`.
    pub fn from_env() -> Self {
        match std::env::var("TEST_BROKER").as_deref() {
            Ok("pulsar") => Self::Pulsar,
            Ok("redis") | Err(_) => Self::Redis,
            Ok(other) => panic!("TEST_BROKER={other}: expected redis or pulsar"),
        }
    }

    /// The `BROKER_URL` the service under test gets.
    pub fn url(self) -> String {
        match self {
            Self::Redis => crate::helpers::env("TEST_REDIS_URL"),
            Self::Pulsar => crate::helpers::env("TEST_PULSAR_URL"),
        }
    }
}

/// A channel entry as flat text fields (Redis's shape; on Pulsar the JSON
/// body's top-level keys, with `payload` as JSON text, plus the message's
/// properties).
pub type Entry = HashMap<String, String>;

/// A connection to the suite's broker.
pub enum TestBroker {
    Redis(MultiplexedConnection),
    Pulsar(Box<PulsarProbe>),
}

/// A channel's private reader and everything it has read so far.
type Reader = (Consumer<Vec<u8>, TokioExecutor>, Vec<Entry>);

/// Pulsar, through the `pulsar` crate directly.
pub struct PulsarProbe {
    client: Pulsar<TokioExecutor>,
    producers: Mutex<HashMap<String, Producer<TokioExecutor>>>,
    /// Per channel: a private subscription and everything read so far.
    readers: Mutex<HashMap<String, Reader>>,
}

fn topic(channel: &str) -> String {
    format!("persistent://public/default/{channel}")
}

impl TestBroker {
    /// Connects to the broker `TEST_BROKER` names.
    pub async fn connect() -> Self {
        Self::connect_to(BrokerKind::from_env()).await
    }

    pub async fn connect_to(kind: BrokerKind) -> Self {
        Self::connect_url(&kind.url()).await
    }

    /// Connects to the broker at `url` (`redis://…` or `pulsar://…`).
    pub async fn connect_url(url: &str) -> Self {
        match url.starts_with("pulsar") {
            false => {
                let client = redis::Client::open(url).expect("redis url");
                Self::Redis(
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .expect("connect to redis"),
                )
            }
            true => {
                let client = Pulsar::builder(url, TokioExecutor)
                    .build()
                    .await
                    .expect("connect to pulsar");
                Self::Pulsar(Box::new(PulsarProbe {
                    client,
                    producers: Mutex::default(),
                    readers: Mutex::default(),
                }))
            }
        }
    }

    /// Publishes a `PartnerCreated` the way integrations does.
    pub async fn publish_partner(
        &self,
        channel: &str,
        partner_id: &str,
        event_id: &str,
        correlation_id: &str,
    ) {
        let envelope = partner_created(partner_id, event_id, correlation_id);
        self.publish_envelope(channel, &envelope).await;
    }

    /// Publishes an entry given as text fields. On Pulsar the body is a
    /// JSON object of them with `payload` spliced in verbatim, so a
    /// payload that is not JSON makes the whole body invalid JSON, as a
    /// broken producer's would be.
    pub async fn publish_fields(&self, channel: &str, fields: &[(String, String)]) {
        match self {
            Self::Redis(conn) => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(channel).arg("*");
                for (k, v) in fields {
                    cmd.arg(k).arg(v);
                }
                let _: String = cmd.query_async(&mut conn.clone()).await.expect("XADD");
            }
            Self::Pulsar(probe) => {
                let members: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| {
                        let value = if k == "payload" {
                            v.clone()
                        } else {
                            Value::from(v.as_str()).to_string()
                        };
                        format!("{}:{value}", Value::from(k.as_str()))
                    })
                    .collect();
                let body = format!("{{{}}}", members.join(","));
                let get = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                let key = get("payload")
                    .and_then(|p| serde_json::from_str::<Value>(&p).ok())
                    .and_then(|p| p["partner_id"].as_str().map(str::to_string));
                let mut properties = HashMap::new();
                for name in ["correlation_id", "event_type", "saga_id", "traceparent"] {
                    if let Some(v) = get(name) {
                        properties.insert(name.to_string(), v);
                    }
                }
                probe
                    .send(channel, body.into_bytes(), key, properties)
                    .await;
            }
        }
    }

    /// Publishes an envelope as a participant or integrations would.
    pub async fn publish_envelope(&self, channel: &str, envelope: &Envelope) {
        let fields: Vec<(String, String)> = envelope
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        self.publish_fields(channel, &fields).await;
    }

    /// Publishes `PartnerCreated` events the way a batching producer does
    /// (the Java and Go clients' default): on Pulsar all in one broker
    /// entry; Redis has no such thing, so there they go one by one.
    pub async fn publish_partners_batched(&self, channel: &str, partners: &[String]) {
        match self {
            Self::Redis(_) => {
                for p in partners {
                    self.publish_partner(channel, p, &format!("evt-{p}"), "corr-batched")
                        .await;
                }
            }
            Self::Pulsar(probe) => {
                let mut producer = probe
                    .client
                    .producer()
                    .with_topic(topic(channel))
                    .with_options(pulsar::ProducerOptions {
                        batch_size: Some(u32::try_from(partners.len()).expect("few")),
                        batch_timeout: Some(Duration::from_millis(200)),
                        ..Default::default()
                    })
                    .build()
                    .await
                    .expect("batching producer");
                let mut receipts = Vec::new();
                for p in partners {
                    let envelope = partner_created(p, &format!("evt-{p}"), "corr-batched");
                    let message = pulsar::producer::Message {
                        payload: envelope.to_json_bytes(),
                        partition_key: Some(p.clone()),
                        ..Default::default()
                    };
                    receipts.push(producer.send_non_blocking(message).await.expect("send"));
                }
                for receipt in receipts {
                    receipt.await.expect("receipt");
                }
            }
        }
    }

    /// Every entry of a channel so far, oldest first.
    pub async fn entries(&self, channel: &str) -> Vec<Entry> {
        match self {
            Self::Redis(conn) => {
                let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                    .arg(channel)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn.clone())
                    .await
                    .expect("XRANGE");
                entries
                    .into_iter()
                    .map(|(_, fields)| fields.into_iter().collect())
                    .collect()
            }
            Self::Pulsar(probe) => probe.read_all(channel).await,
        }
    }

    /// Messages of `channel` the orchestrator's subscription holds but has
    /// not acknowledged. On Pulsar that is only observable once no
    /// orchestrator is connected: call it after stopping the service. A
    /// consumer then joins the subscription and counts what the broker
    /// hands it, without acking.
    pub async fn unacked(&self, channel: &str) -> usize {
        match self {
            Self::Redis(conn) => {
                let summary: Vec<redis::Value> = redis::cmd("XPENDING")
                    .arg(channel)
                    .arg(SUBSCRIPTION)
                    .query_async(&mut conn.clone())
                    .await
                    .expect("XPENDING");
                match summary.first() {
                    Some(redis::Value::Int(n)) => usize::try_from(*n).unwrap_or(0),
                    other => panic!("unexpected XPENDING reply: {other:?}"),
                }
            }
            Self::Pulsar(probe) => {
                let mut consumer = probe.consumer(channel, SUBSCRIPTION).await;
                let mut n = 0;
                while let Ok(Some(Ok(_))) =
                    tokio::time::timeout(Duration::from_millis(1500), consumer.next()).await
                {
                    n += 1;
                }
                let _ = consumer.close().await;
                n
            }
        }
    }

    /// Delivers everything on `channel` to a consumer of the
    /// orchestrator's subscription that then dies without acking: what a
    /// crashed instance leaves behind.
    pub async fn leave_unacked_by_a_dead_consumer(&self, channel: &str) {
        match self {
            Self::Redis(conn) => {
                let mut conn = conn.clone();
                let created: Result<(), _> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(channel)
                    .arg(SUBSCRIPTION)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = created {
                    assert_eq!(e.code(), Some("BUSYGROUP"), "XGROUP CREATE: {e}");
                }
                let _: redis::Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(SUBSCRIPTION)
                    .arg("dead-consumer")
                    .arg("COUNT")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(channel)
                    .arg(">")
                    .query_async(&mut conn)
                    .await
                    .expect("XREADGROUP");
            }
            Self::Pulsar(probe) => {
                let mut consumer = probe.consumer(channel, SUBSCRIPTION).await;
                let got = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
                assert!(
                    matches!(got, Ok(Some(Ok(_)))),
                    "the doomed consumer got nothing"
                );
                // Gone without an ack: the broker must hand it to the next one.
                let _ = consumer.close().await;
            }
        }
    }
}

impl PulsarProbe {
    async fn send(
        &self,
        channel: &str,
        payload: Vec<u8>,
        key: Option<String>,
        properties: HashMap<String, String>,
    ) {
        let mut producers = self.producers.lock().await;
        if !producers.contains_key(channel) {
            let producer = self
                .client
                .producer()
                .with_topic(topic(channel))
                .build()
                .await
                .expect("pulsar producer");
            producers.insert(channel.to_string(), producer);
        }
        let producer = producers.get_mut(channel).expect("just inserted");
        let message = pulsar::producer::Message {
            payload,
            properties,
            partition_key: key,
            ..Default::default()
        };
        producer
            .send_non_blocking(message)
            .await
            .expect("pulsar send")
            .await
            .expect("pulsar receipt");
    }

    async fn consumer(
        &self,
        channel: &str,
        subscription: &str,
    ) -> Consumer<Vec<u8>, TokioExecutor> {
        self.client
            .consumer()
            .with_topic(topic(channel))
            .with_subscription(subscription)
            .with_subscription_type(SubType::Shared)
            .with_consumer_name(format!("test-{}", Uuid::new_v4().simple()))
            .with_options(
                ConsumerOptions::default().with_initial_position(InitialPosition::Earliest),
            )
            .build::<Vec<u8>>()
            .await
            .expect("pulsar consumer")
    }

    async fn read_all(&self, channel: &str) -> Vec<Entry> {
        let mut readers = self.readers.lock().await;
        if !readers.contains_key(channel) {
            let subscription = format!("test-reader-{}", Uuid::new_v4().simple());
            let consumer = self.consumer(channel, &subscription).await;
            readers.insert(channel.to_string(), (consumer, Vec::new()));
        }
        let (consumer, seen) = readers.get_mut(channel).expect("just inserted");
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
        {
            consumer.ack(&message).await.expect("ack");
            let mut entry = body_fields(&message.payload.data);
            // Properties the body does not repeat (traceparent) count too.
            for kv in &message.payload.metadata.properties {
                entry
                    .entry(kv.key.clone())
                    .or_insert_with(|| kv.value.clone());
            }
            seen.push(entry);
        }
        seen.clone()
    }
}

/// A JSON body as Redis-shaped fields: strings as they are, other values
/// as JSON text, nulls left out; a body that is not an object under `raw`.
fn body_fields(data: &[u8]) -> Entry {
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(obj)) => obj
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                (k, text)
            })
            .collect(),
        _ => HashMap::from([(
            "raw".to_string(),
            String::from_utf8_lossy(data).into_owned(),
        )]),
    }
}

/// The `PartnerCreated` integrations would announce.
pub fn partner_created(partner_id: &str, event_id: &str, correlation_id: &str) -> Envelope {
    let payload = json!({"partner_id": partner_id, "name": format!("Partner {partner_id}"), "email": format!("{partner_id}@example.test"), "tier": "gold"});
    let mut envelope = Envelope::new(
        EventType::PartnerCreated,
        correlation_id,
        None,
        None,
        payload.as_object().cloned().expect("object"),
    );
    envelope.event_id = event_id.to_string();
    envelope
}

/// A pulsar-lite (behind its compatibility proxy) of one test's own, for
/// tests that kill the broker: the suite's shared one must stay up.
pub struct PrivatePulsar {
    dir: std::path::PathBuf,
    /// The proxy's address: what clients use. It outlives broker restarts.
    pub url: String,
}

impl PrivatePulsar {
    fn ctl(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
        Self::ctl_with(dir, args, &[])
    }

    fn ctl_with(
        dir: &std::path::Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> std::process::Output {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pulsar-lite.sh");
        let mut cmd = std::process::Command::new(script);
        cmd.args(args)
            .env("PULSAR_LITE_DIR", dir)
            .envs(env.iter().cloned());
        let proxy = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/debug/pulsar-lite-proxy"
        );
        if std::path::Path::new(proxy).exists() {
            cmd.env("PULSAR_PROXY_BIN", proxy);
        }
        cmd.output().expect("run scripts/pulsar-lite.sh")
    }

    /// Starts one on free loopback ports, with its data in a fresh directory.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts one whose broker refuses messages over `bytes` (pulsar-lite's
    /// `max_message_size_bytes`), as a real broker refuses oversize ones.
    pub async fn start_with_max_message_size(bytes: usize) -> Self {
        Self::start_with(&[("PULSAR_LITE_MAX_MESSAGE_SIZE_BYTES", bytes.to_string())]).await
    }

    /// Starts one with `scripts/pulsar-lite.sh`'s settings `env` (see its header).
    async fn start_with(env: &[(&str, String)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        // Free ports are picked, released, then bound: with several private
        // brokers starting at once another may take one in between, so a
        // clash is tried again on other ports.
        let mut tries = 0;
        let (dir, started) = loop {
            tries += 1;
            let dir =
                std::env::temp_dir().join(format!("saga-it-pulsar-{}", Uuid::new_v4().simple()));
            let started = tokio::task::spawn_blocking({
                let (dir, env) = (dir.clone(), env.clone());
                move || Self::ctl_with(&dir, &["start"], &env)
            })
            .await
            .expect("join");
            let clash = String::from_utf8_lossy(&started.stderr).contains("already in use");
            if started.status.success() || !clash || tries == 3 {
                break (dir, started);
            }
        };
        let stdout = String::from_utf8_lossy(&started.stdout);
        assert!(
            started.status.success(),
            "pulsar-lite did not start: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        let url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export TEST_PULSAR_URL="))
            .expect("TEST_PULSAR_URL in the script's output")
            .to_string();
        Self { dir, url }
    }

    async fn ctl_ok(&self, args: &'static [&'static str]) {
        let dir = self.dir.clone();
        let out = tokio::task::spawn_blocking(move || Self::ctl(&dir, args))
            .await
            .expect("join");
        assert!(
            out.status.success(),
            "pulsar-lite.sh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the broker (the proxy stays, so clients keep their address).
    pub async fn stop_broker(&self) {
        self.ctl_ok(&["stop-broker"]).await;
    }

    /// Kills the broker with SIGKILL (the proxy stays).
    pub async fn kill_broker(&self) {
        self.ctl_ok(&["stop-broker", "--kill"]).await;
    }

    /// Starts the broker again on the same port and data.
    pub async fn start_broker(&self) {
        self.ctl_ok(&["start-broker"]).await;
    }

    /// Kills the broker (SIGKILL: no clean shutdown) and starts it again on
    /// the same port and data.
    pub async fn kill_and_restart(&self) {
        let dir = self.dir.clone();
        let out =
            tokio::task::spawn_blocking(move || Self::ctl(&dir, &["restart-broker", "--kill"]))
                .await
                .expect("join");
        assert!(
            out.status.success(),
            "restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePulsar {
    fn drop(&mut self) {
        let _ = Self::ctl(&self.dir, &["stop", "--purge"]);
    }
}

/// A redis-server of one test's own, on a free loopback port, for tests
/// that need settings the suite's shared one must not have. Stopped (the
/// process this started, by its handle) when dropped.
pub struct PrivateRedis {
    child: std::process::Child,
    pub url: String,
}

impl PrivateRedis {
    /// Starts one with extra `redis-server` arguments, e.g.
    /// `["--proto-max-bulk-len", "1mb"]`.
    pub async fn start(args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
            .to_string();
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (cargo xtask install redis)");
        // Owned at once, so a failed start still stops it (on drop).
        let redis = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let client = redis::Client::open(redis.url.as_str()).expect("redis url");
        for _ in 0..100 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return redis;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not answer on {}", redis.url);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pulsar-lite's count of subscriptions on `channel`, from its metrics;
/// `None` when the suite is not on pulsar-lite or the topic is not listed.
pub async fn pulsar_subscriptions(channel: &str) -> Option<u64> {
    if BrokerKind::from_env() != BrokerKind::Pulsar {
        return None;
    }
    let dir = std::env::var("TEST_PULSAR_DIR").ok()?;
    let port = std::fs::read_to_string(format!("{dir}/metrics.port")).ok()?;
    let url = format!("http://127.0.0.1:{}/metrics", port.trim());
    let body = reqwest::get(url).await.ok()?.text().await.ok()?;
    let label = format!("topic=\"{channel}\"}}");
    body.lines()
        .find(|l| l.starts_with("pulsar_subscriptions_count{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
