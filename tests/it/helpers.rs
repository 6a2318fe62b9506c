//! Test harness: a real service on port 0, a fresh PostgreSQL database and
//! its own channel names per test, the broker `TEST_BROKER` names (Redis
//! Streams or Pulsar, see `broker.rs`), and wiremock standing in for the
//! participants' HTTP APIs.
//!
//! Needs `TEST_DATABASE_URL` (a superuser URL; each test creates its own
//! database) and `TEST_REDIS_URL` / `TEST_PULSAR_URL`: `make test` starts
//! them all.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use saga_orchestrator::config::{
    BrokerUrl, Channels, InstanceSettings, LogFormat, ParticipantMode, Settings,
};
use saga_orchestrator::startup::Application;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Terminal saga states.
pub const TERMINAL: [&str; 3] = ["completed", "compensated", "failed"];

/// How long a test waits for a saga to settle before failing.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

pub use crate::broker::{BrokerKind, Entry, PrivatePulsar, TestBroker};

pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with `make test`"))
}

/// The binary, run in `dir` with only `env` (and `PATH`) for an
/// environment: nothing from the developer's own .env or environment.
pub fn binary(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_saga-orchestrator"));
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied());
    command
}

/// The `CHANNEL_*` settings that give a service run as a process channels
/// of its own: each default name behind `prefix`.
pub fn channel_settings(prefix: &str) -> Vec<(String, String)> {
    [
        "partner-events",
        "saga-events",
        "saga-replies",
        "alliance-commands",
        "integration-commands",
    ]
    .iter()
    .map(|name| {
        let setting = format!("CHANNEL_{}", name.to_uppercase().replace('-', "_"));
        (setting, format!("{prefix}{name}"))
    })
    .collect()
}

/// A fresh, empty database on the test server; returns its URL.
pub async fn fresh_database() -> String {
    let admin_url = env("TEST_DATABASE_URL");
    let name = format!("test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .expect("connect to TEST_DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}

/// Settings for one test: its own database, channels and mocks. A test
/// tailors `settings` field by field before spawning. Its instance id is
/// never a running service's: each launch takes a fresh one.
#[derive(Clone)]
pub struct TestConfig {
    pub settings: Settings,
}

impl TestConfig {
    /// Fast retries and short timeouts, so failure paths finish in seconds.
    pub async fn new(alliances: &MockServer, integrations: &MockServer) -> Self {
        let prefix = format!("t{}-", &Uuid::new_v4().simple().to_string()[..12]);
        let mut s = Settings::default();
        s.broker.url = broker_url(&BrokerKind::from_env().url());
        s.broker.channels = Channels::prefixed(&prefix);
        s.broker.claim_idle = Duration::from_secs(1);
        // Tests read whole channels with XRANGE: nothing may trim them
        // under their feet (the upkeep's own test turns it on).
        s.broker.trim_interval = None;
        s.database.url = fresh_database().await.into();
        s.database.max_connections = 5;
        s.api.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        s.api.admin_token = Some(TEST_ADMIN_TOKEN.into());
        s.participants.alliances_url = mock_url(alliances);
        s.participants.integrations_url = mock_url(integrations);
        s.participants.step_timeout = Duration::from_secs(2);
        s.retry.max_attempts = 3;
        s.retry.base_delay = Duration::from_millis(20);
        s.retry.max_delay = Duration::from_millis(100);
        s.instance.sweep_interval = Duration::from_millis(200);
        s.instance.shutdown_grace = Duration::from_secs(2);
        s.telemetry.log_format = LogFormat::Pretty;
        Self { settings: s }
    }

    /// The test's own channel names.
    pub fn channels(&self) -> &Channels {
        &self.settings.broker.channels
    }

    /// The test's own database, for tests that look into it.
    pub fn database_url(&self) -> &str {
        self.settings.database.url.expose_secret()
    }

    /// Both participants asked over the broker, each reply awaited up to
    /// `step_timeout`.
    pub fn over_broker(&mut self, step_timeout: Duration) -> &mut Self {
        let participants = &mut self.settings.participants;
        participants.alliances_mode = ParticipantMode::Broker;
        participants.integrations_mode = ParticipantMode::Broker;
        participants.step_timeout = step_timeout;
        self
    }
}

/// The admin token every test service has, unless its test removes it.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token";

/// `url` as the service's `BROKER_URL`.
pub fn broker_url(url: &str) -> BrokerUrl {
    url.parse()
        .unwrap_or_else(|problem| panic!("test broker URL {url}: {problem}"))
}

/// A mock participant's base URL.
fn mock_url(server: &MockServer) -> url::Url {
    url::Url::parse(&server.uri()).expect("wiremock serves on a URL")
}

/// The URL the service under test connects to, password and all, for the
/// test's own connection to the same broker.
fn connect_url(url: &BrokerUrl) -> &str {
    match url {
        BrokerUrl::Redis(url) | BrokerUrl::Pulsar(url) => url.as_str(),
        BrokerUrl::Memory => panic!("the integration tests run on Redis or Pulsar"),
    }
}

/// A running service and everything a test needs to drive it from outside.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub alliances: MockServer,
    pub integrations: MockServer,
    pub channels: Channels,
    pub broker: TestBroker,
    pub config: TestConfig,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Alliances' success: 201 with `alliance_id`.
pub fn alliance_created(alliance_id: &str) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({ "alliance_id": alliance_id }))
}

/// Alliances answers `POST /alliances` with `answer`; only the first
/// `times` requests when given (later mocks answer the rest).
pub async fn on_create_alliance(server: &MockServer, answer: ResponseTemplate, times: Option<u64>) {
    let mock = Mock::given(method("POST"))
        .and(path("/alliances"))
        .respond_with(answer);
    match times {
        Some(n) => mock.up_to_n_times(n).mount(server).await,
        None => mock.mount(server).await,
    }
}

/// Integrations answers every `DELETE` (whatever its path: tests that care
/// about the path check what was received) with `answer`; only the first
/// `times` requests when given (later mocks answer the rest).
pub async fn on_delete_partner(server: &MockServer, answer: ResponseTemplate, times: Option<u64>) {
    let mock = Mock::given(method("DELETE")).respond_with(answer);
    match times {
        Some(n) => mock.up_to_n_times(n).mount(server).await,
        None => mock.mount(server).await,
    }
}

/// Mocks first (tests mount their expectations), then the service.
pub async fn mocks() -> (MockServer, MockServer) {
    (MockServer::start().await, MockServer::start().await)
}

/// Starts the service with the default test configuration.
pub async fn spawn_app(alliances: MockServer, integrations: MockServer) -> TestApp {
    let config = TestConfig::new(&alliances, &integrations).await;
    spawn_app_with(alliances, integrations, config).await
}

/// Starts the service with a tailored configuration.
pub async fn spawn_app_with(
    alliances: MockServer,
    integrations: MockServer,
    config: TestConfig,
) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        // No OTLP endpoint in tests: there is no span pipeline to keep alive.
        let _ = saga_orchestrator::telemetry::init_tracing(LogFormat::Pretty, "info,sqlx=warn");
    }
    let (address, stop, server) = launch(&config).await;
    let broker = TestBroker::connect_url(connect_url(&config.settings.broker.url)).await;
    TestApp {
        address,
        http: reqwest::Client::new(),
        alliances,
        integrations,
        channels: config.channels().clone(),
        broker,
        config,
        stop,
        server: Some(server),
    }
}

async fn launch(config: &TestConfig) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    // A new process to the store and the broker, as after a crash.
    let mut settings = config.settings.clone();
    settings.instance.id = InstanceSettings::unique_id();
    let app = Application::build(&settings).await.expect("service builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let server = tokio::spawn(async move {
        app.run_until_stopped(shutdown).await.expect("service runs");
    });
    (address, stop, server)
}

impl TestApp {
    /// Stops the service as a SIGTERM would, and waits for it.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    /// Stops this instance and starts a new one on the same database,
    /// channels and participants, with a fresh instance id: what a crash and
    /// a restart look like to the store (leases held by the old id lapse).
    pub async fn restart(&mut self) {
        self.stop().await;
        let (address, stop, server) = launch(&self.config).await;
        self.address = address;
        self.stop = stop;
        self.server = Some(server);
    }

    /// Publishes a `PartnerCreated` on `partner-events` the way integrations does.
    pub async fn publish_partner(&self, partner_id: &str, event_id: &str, correlation_id: &str) {
        let channel = &self.channels.partner_events;
        self.broker
            .publish_partner(channel, partner_id, event_id, correlation_id)
            .await;
    }

    /// Publishes an entry given as text fields (see [`TestBroker::publish_fields`]).
    pub async fn publish_fields(&self, channel: &str, fields: &[(String, String)]) {
        self.broker.publish_fields(channel, fields).await;
    }

    /// Every entry of a channel so far, as text fields, oldest first.
    pub async fn entries(&self, channel: &str) -> Vec<Entry> {
        self.broker.entries(channel).await
    }

    /// Stops the service, then counts what its subscription left unacked
    /// on `channel` (see [`TestBroker::unacked`]).
    pub async fn stop_and_count_unacked(&mut self, channel: &str) -> usize {
        self.stop().await;
        self.broker.unacked(channel).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("GET")
    }

    /// A POST as an operator would make it: with the test's admin token,
    /// which every route that changes state needs (`POST /sagas` too).
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        let mut request = self.http.post(format!("{}{path}", self.address)).json(body);
        if let Some(token) = &self.config.settings.api.admin_token {
            request = request.bearer_auth(token.expose_secret());
        }
        request.send().await.expect("POST")
    }

    /// A POST without any credentials, as an outside caller would make it.
    pub async fn post_anonymous(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// An admin POST with the test token (or `token`).
    pub async fn admin_post(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}{path}", self.address))
            .json(&json!({"reason": "test"}));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("POST")
    }

    /// Sagas for a partner, newest first.
    pub async fn sagas_of(&self, partner_id: &str) -> Vec<Value> {
        let body: Value = self
            .get(&format!("/sagas?partner_id={partner_id}"))
            .await
            .json()
            .await
            .expect("json");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Starts a saga for `partner_id` over the API (with the admin token);
    /// returns its id.
    pub async fn start_saga(&self, partner_id: &str, name: &str) -> String {
        let body = json!({"payload": {"partner_id": partner_id, "name": name}});
        let response = self.post("/sagas", &body).await;
        assert_eq!(response.status(), 202, "start {partner_id:?}");
        let started: Value = response.json().await.expect("json");
        started["saga_id"].as_str().expect("saga_id").to_string()
    }

    /// Waits at most `within` until saga `saga_id` is terminal; returns it
    /// with its history. By id, so any partner id works (a partner id need
    /// not survive a query string unencoded).
    pub async fn settled_saga(&self, saga_id: &str, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let saga = self.saga(saga_id).await;
            if TERMINAL.contains(&saga["state"].as_str().unwrap_or_default()) {
                return saga;
            }
            assert!(
                started.elapsed() < within,
                "saga {saga_id} still {} after {within:?}: {saga}",
                saga["state"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every DELETE integrations received, as (idempotency key, raw path).
    pub async fn deletes(&self) -> Vec<(String, String)> {
        let requests = self.integrations.received_requests().await;
        requests
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.method.as_str() == "DELETE")
            .map(|r| {
                let key = r.headers.get("idempotency-key");
                let key = key.and_then(|k| k.to_str().ok()).unwrap_or_default();
                (key.to_string(), r.url.path().to_string())
            })
            .collect()
    }

    /// Waits until `partner_id`'s saga is terminal; returns it with its history.
    pub async fn settled(&self, partner_id: &str) -> Value {
        let started = Instant::now();
        loop {
            if let Some(saga) = self.sagas_of(partner_id).await.first() {
                if TERMINAL.contains(&saga["state"].as_str().unwrap_or_default()) {
                    return self.saga(saga["saga_id"].as_str().expect("saga_id")).await;
                }
            }
            assert!(
                started.elapsed() < SETTLE_TIMEOUT,
                "saga of {partner_id} did not settle in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One saga with its history.
    pub async fn saga(&self, saga_id: &str) -> Value {
        let response = self.get(&format!("/sagas/{saga_id}")).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }

    /// Waits until `stream` has at least `n` entries matching `pred`.
    pub async fn wait_for_entries(
        &self,
        stream: &str,
        n: usize,
        pred: impl Fn(&Entry) -> bool,
    ) -> Vec<Entry> {
        let started = Instant::now();
        loop {
            let matching: Vec<_> = self
                .entries(stream)
                .await
                .into_iter()
                .filter(|e| pred(e))
                .collect();
            if matching.len() >= n {
                return matching;
            }
            assert!(
                started.elapsed() < SETTLE_TIMEOUT,
                "{stream}: {} of {n} entries",
                matching.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The states a saga went through, from its history.
pub fn states(saga: &Value) -> Vec<String> {
    saga["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["to_state"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A unique partner id for one test.
pub fn partner() -> String {
    format!("p-{}", &Uuid::new_v4().simple().to_string()[..10])
}
