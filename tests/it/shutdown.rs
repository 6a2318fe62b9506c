//! Stopping the binary, run as a separate process: SIGTERM waits for the
//! sagas in flight (saying so), at most the grace period, and never on a
//! store or a broker that cannot answer when nothing is in flight.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use serde_json::{json, Value};
use sqlx::Connection;
use wiremock::MockServer;

use crate::cut::Cut;
use crate::helpers::{
    alliance_created, binary, broker_url, channel_settings, fresh_database, on_create_alliance,
    BrokerKind,
};

/// Where a PostgreSQL URL points.
fn database_address(url: &str) -> String {
    let url = url::Url::parse(url).expect("a URL");
    let host = url.host_str().expect("a host");
    format!("{host}:{}", url.port().unwrap_or(5432))
}

/// Where a broker URL points, each scheme's default port as the service
/// knows it.
fn broker_address(url: &str) -> String {
    let (host, port) = broker_url(url).host_and_port().expect("a network broker");
    format!("{host}:{port}")
}

/// `serve`, run as a separate process with `env` on top of a test's own
/// channels, until it said it is ready.
struct Serve {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    shown: Vec<String>,
    api: String,
}

const ADMIN_TOKEN: &str = "shutdown-test-token";

impl Serve {
    async fn start(env: &[(&str, String)]) -> Self {
        let prefix = format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let bare = [
            ("LOG_FORMAT", "pretty"),
            ("API_ADDR", "127.0.0.1:0"),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ];
        let mut command =
            tokio::process::Command::from(binary(&std::env::temp_dir(), &["serve"], &bare));
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command.envs(channel_settings(&prefix));
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = command.spawn().expect("serve starts");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut serve = Self {
            child,
            lines,
            shown: Vec::new(),
            api: String::new(),
        };
        serve.api = serve.ready().await;
        serve
    }

    /// Reads the log up to the ready line; the API's address from it.
    async fn ready(&mut self) -> String {
        let read = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                self.shown.push(line.clone());
                if line.contains("API listening") {
                    return Some(line);
                }
            }
            None
        });
        let line = read.await.ok().flatten();
        let line = line.unwrap_or_else(|| panic!("serve got ready: {:#?}", self.shown));
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .expect("the ready line names the address");
        format!("http://{addr}")
    }

    /// Sends SIGTERM; returns how it exited and how long that took, with
    /// the rest of its log read.
    async fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id().expect("running") as libc::pid_t;
        // SAFETY: a plain signal to our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let asked = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(90), self.child.wait())
            .await
            .expect("exits within the grace period")
            .expect("waited");
        let took = asked.elapsed();
        while let Ok(Some(line)) = self.lines.next_line().await {
            self.shown.push(line);
        }
        eprintln!("exited {status} {took:?} after SIGTERM");
        (status, took)
    }

    fn said(&self, words: &str) -> bool {
        self.shown.iter().any(|line| line.contains(words))
    }
}

#[tokio::test]
async fn with_the_store_and_broker_gone_and_nothing_in_flight_sigterm_exits_at_once() {
    let database = fresh_database().await;
    let broker = BrokerKind::from_env().url();
    let mut store_link = Cut::to(database_address(&database)).await;
    let mut broker_link = Cut::to(broker_address(&broker)).await;
    let mut serve = Serve::start(&[
        ("DATABASE_URL", store_link.in_front_of(&database)),
        ("BROKER_URL", broker_link.in_front_of(&broker)),
        ("SHUTDOWN_GRACE_SECS", "60".into()),
    ])
    .await;
    store_link.cut();
    broker_link.cut();
    // Long enough for every loop to be stuck in a reconnection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, took) = serve.terminate().await;
    let shown = &serve.shown;
    assert!(status.success(), "{status}: {shown:#?}");
    // A pool acquire on a gone database gives up after 10 s: stopping
    // sooner shows shutdown waited on nothing that cannot answer.
    assert!(
        took < Duration::from_secs(8),
        "took {took:?} with nothing in flight: {shown:#?}"
    );
    assert!(serve.said("shutting down"), "{shown:#?}");
}

/// A service whose one saga is in its alliance call, which answers after
/// `answer_after`, when SIGTERM comes; with `grace` seconds to stop in.
async fn sigterm_during_a_call(
    answer_after: Duration,
    grace: &str,
) -> (Serve, String, String, Duration) {
    let alliances = MockServer::start().await;
    let integrations = MockServer::start().await;
    on_create_alliance(
        &alliances,
        alliance_created("a-1").set_delay(answer_after),
        None,
    )
    .await;
    let database = fresh_database().await;
    let mut serve = Serve::start(&[
        ("DATABASE_URL", database.clone()),
        ("BROKER_URL", BrokerKind::from_env().url()),
        ("ALIANZAS_API_URL", alliances.uri()),
        ("INTEGRACIONES_API_URL", integrations.uri()),
        ("SHUTDOWN_GRACE_SECS", grace.into()),
    ])
    .await;
    let started: Value = reqwest::Client::new()
        .post(format!("{}/sagas", serve.api))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"payload": {"partner_id": crate::helpers::partner(), "name": "Acme"}}))
        .send()
        .await
        .expect("POST /sagas")
        .json()
        .await
        .expect("json");
    let saga_id = started["saga_id"].as_str().expect("saga_id").to_string();
    while alliances
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, took) = serve.terminate().await;
    assert!(status.success(), "{status}: {:#?}", serve.shown);
    (serve, database, saga_id, took)
}

/// The saga's state and the rows left in the outbox, from the store.
async fn stored(database: &str, saga_id: &str) -> (String, i64) {
    let mut db = sqlx::PgConnection::connect(database)
        .await
        .expect("connect");
    let state: String = sqlx::query_scalar("SELECT state FROM sagas WHERE saga_id = $1::uuid")
        .bind(saga_id)
        .fetch_one(&mut db)
        .await
        .expect("the saga");
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut db)
        .await
        .expect("the outbox");
    (state, unsent)
}

#[tokio::test]
async fn sigterm_lets_the_saga_in_flight_finish_its_step_and_says_it_waits() {
    let (serve, database, saga_id, _) = sigterm_during_a_call(Duration::from_secs(3), "60").await;
    let shown = &serve.shown;
    assert!(
        serve.said("waiting up to 60 s (SHUTDOWN_GRACE_SECS) for the sagas in flight")
            && serve.said(&saga_id),
        "says what it waits for: {shown:#?}"
    );
    assert!(
        !serve.said("shutdown grace elapsed"),
        "the step finished in the grace: {shown:#?}"
    );
    // Its step done, its events out (woken by the commit, or in the last
    // pass): nothing left for the next start.
    let (state, unsent) = stored(&database, &saga_id).await;
    assert_eq!((state.as_str(), unsent), ("completed", 0), "{shown:#?}");
}

#[tokio::test]
async fn a_step_longer_than_the_grace_is_left_to_recovery_and_named() {
    let (serve, database, saga_id, took) =
        sigterm_during_a_call(Duration::from_secs(30), "1").await;
    let shown = &serve.shown;
    // The call answers after 30 s: stopping well before shows the grace,
    // not the call, decided when.
    assert!(took < Duration::from_secs(10), "took {took:?}: {shown:#?}");
    assert!(
        serve.said("shutdown grace elapsed with sagas in flight") && serve.said(&saga_id),
        "names what it leaves: {shown:#?}"
    );
    // Left as it was, durable and leased: recovery makes the call again
    // under the same idempotency key.
    let (state, _) = stored(&database, &saga_id).await;
    assert_eq!(state, "creating_alliance", "{shown:#?}");
}
