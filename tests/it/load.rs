//! `publish` and `load-test` against the real service: events go out on
//! the suite's broker, each saga's terminal event is read back on
//! `saga-events` by the tool's own reader, and the report adds up — in the
//! closed loop (the bound counted by the tool itself) and in a burst, and
//! through the binary, whose exit status says whether every saga ended.

use std::process::Command;
use std::time::{Duration, Instant};

use saga_orchestrator::config::Channels;
use saga_orchestrator::tools::load::{self, LoadReport, Mode, PublishPlan, RunInfo, TerminalWatch};
use saga_orchestrator::transport;
use serde_json::Value;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::broker::pulsar_subscriptions;
use crate::helpers::{
    alliance_created, mocks, on_create_alliance, on_delete_partner, spawn_app, BrokerKind, TestApp,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A service whose alliances refuse what the load tool marks to fail, as
/// the simulator does, so those sagas compensate.
async fn app() -> TestApp {
    let (alliances, integrations) = mocks().await;
    Mock::given(method("POST"))
        .and(path("/alliances"))
        .and(body_string_contains("@reject.test"))
        .respond_with(
            ResponseTemplate::new(422).set_body_json(serde_json::json!({"error": "refused"})),
        )
        .with_priority(1)
        .mount(&alliances)
        .await;
    on_create_alliance(&alliances, alliance_created("a-load"), None).await;
    on_delete_partner(&integrations, ResponseTemplate::new(204), None).await;
    spawn_app(alliances, integrations).await
}

fn plan(count: usize) -> PublishPlan {
    PublishPlan {
        count,
        rate: Some(400.0),
        concurrency: 3,
        fail_ratio: 0.25,
        correlation_id: None,
        run_id: load::run_id(),
    }
}

async fn watch(app: &TestApp) -> TerminalWatch {
    let settings = &app.config.settings;
    TerminalWatch::open(&settings.broker.url, &app.channels.saga_events, 1 << 20)
        .await
        .expect("saga-events can be read")
}

fn report(mode: Mode, in_flight: Option<usize>, finished: &load::Finished) -> LoadReport {
    let info = RunInfo {
        run_id: "it".into(),
        mode,
        in_flight,
        correlation_id: None,
        timeout: TIMEOUT,
        publish: finished.publish,
        broker_repeats: 0,
    };
    LoadReport::new(&info, &finished.ledger)
}

/// Whether `channel`'s subscription count became `n` within 20 s (the
/// metrics lag); `None` when not on pulsar-lite.
async fn pulsar_subscriptions_become(channel: &str, n: u64) -> Option<bool> {
    if BrokerKind::from_env() != BrokerKind::Pulsar {
        return None;
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if pulsar_subscriptions(channel).await == Some(n) {
            return Some(true);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Some(false)
}

#[tokio::test]
async fn a_closed_loop_counts_every_saga_once_and_never_exceeds_its_bound() {
    let app = app().await;
    let transport = transport::from_settings(&app.config.settings)
        .await
        .expect("broker");
    let mut watch = watch(&app).await;
    let saga_events = app.channels.saga_events.clone();
    let reader_there = pulsar_subscriptions_become(&saga_events, 1).await;

    let mut most_in_flight = 0;
    let finished = load::closed_loop(
        transport,
        &app.channels.partner_events,
        load::events(&plan(48)),
        6,
        TIMEOUT,
        &mut watch,
        &mut |l: &load::Ledger| most_in_flight = most_in_flight.max(l.in_flight()),
    )
    .await
    .expect("the run ends");
    watch.close().await;

    let report = report(Mode::ClosedLoop, Some(6), &finished);
    assert!(report.is_clean(), "{}", report.render());
    assert_eq!(
        (
            report.events,
            report.published,
            report.settled,
            report.duplicates
        ),
        (48, 48, 48, 0)
    );
    assert_eq!(
        report.max_in_flight, 6,
        "filled to its bound, never past it"
    );
    assert!(most_in_flight <= 6);
    assert_eq!(report.outcomes["completed"].count, 36);
    assert_eq!(report.outcomes["compensated"].count, 12);
    assert_eq!(report.ignored_events, 0, "the test's own channels");
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 <= report.latency_ms.max);
    // Each saga was recorded exactly once in the store too.
    let sagas = app.get("/sagas?limit=500").await;
    let sagas: Value = sagas.json().await.expect("a saga list");
    assert_eq!(sagas["items"].as_array().map(Vec::len), Some(48));
    // Pulsar: the reader's subscription existed, and is gone again.
    if let Some(seen) = reader_there {
        assert!(
            seen,
            "the load test's subscription on {saga_events} never showed"
        );
        assert_eq!(
            pulsar_subscriptions_become(&saga_events, 0).await,
            Some(true),
            "the load test's subscription on {saga_events} was left behind"
        );
    }
}

#[tokio::test]
async fn a_burst_is_waited_for_on_saga_events() {
    let app = app().await;
    let transport = transport::from_settings(&app.config.settings)
        .await
        .expect("broker");
    let mut watch = watch(&app).await;
    let p = plan(40);
    let finished = load::burst(
        transport,
        &app.channels.partner_events,
        load::events(&p),
        &p,
        TIMEOUT,
        &mut watch,
        &mut |_: &load::Ledger| {},
    )
    .await
    .expect("the run ends");
    watch.close().await;

    let report = report(Mode::Burst, None, &finished);
    assert!(report.is_clean(), "{}", report.render());
    assert_eq!((report.published, report.settled), (40, 40));
    assert_eq!(report.outcomes["compensated"].count, 10);
    assert!(report.publish_secs.is_some_and(|s| s > 0.0));
    let text = report.render();
    assert!(text.contains("settled      40 of 40"), "{text}");
}

/// `load-test` run as a process on the suite's broker and `channels`, in a
/// bare environment; its exit code and JSON report.
fn load_test_binary(channels: &Channels, args: &[&str]) -> (Option<i32>, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_saga-orchestrator"));
    cmd.current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BROKER_URL", BrokerKind::from_env().url())
        .env("CHANNEL_PARTNER_EVENTS", &channels.partner_events)
        .env("CHANNEL_SAGA_EVENTS", &channels.saga_events)
        .arg("load-test")
        .args(args)
        .arg("--json");
    let out = cmd.output().expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

#[tokio::test]
async fn the_binary_runs_the_closed_loop_and_gives_each_partner_its_correlation_id() {
    let app = app().await;
    let channels = app.channels.clone();
    let args = ["--events", "20", "--in-flight", "4", "--fail-ratio", "0.1"];
    let (code, report) = tokio::task::spawn_blocking(move || load_test_binary(&channels, &args))
        .await
        .expect("the binary ran");
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["mode"], "closed_loop");
    assert_eq!(
        (report["settled"].as_u64(), report["max_in_flight"].as_u64()),
        (Some(20), Some(4))
    );
    assert_eq!(report["outcomes"]["compensated"]["count"], 2);
    assert_eq!(report["correlation_id"], Value::Null);
    let sagas: Value = app
        .get("/sagas?limit=500")
        .await
        .json()
        .await
        .expect("sagas");
    for saga in sagas["items"].as_array().expect("items") {
        assert_eq!(saga["correlation_id"], saga["partner_id"], "{saga}");
    }
}

#[tokio::test]
async fn sagas_that_never_end_stop_the_binary_with_a_failure_naming_them() {
    // Nobody consumes these channels: no saga ever starts.
    let channels = Channels::prefixed(&format!("load-none-{}-", load::run_id()));
    let args = ["--events", "5", "--in-flight", "2", "--timeout-secs", "1"];
    let (code, report) = tokio::task::spawn_blocking(move || load_test_binary(&channels, &args))
        .await
        .expect("the binary ran");
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["settled"], 0);
    assert_eq!(
        report["published"], 2,
        "nothing more once a saga is given up on"
    );
    assert_eq!(report["unfinished"], 2);
    assert_eq!(report["unsettled"], 5);
    assert_eq!(
        report["unfinished_partners"].as_array().map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn an_interrupted_binary_removes_its_pulsar_subscription() {
    // Redis: the reader is a plain XREAD and leaves nothing behind.
    if BrokerKind::from_env() != BrokerKind::Pulsar {
        return;
    }
    let channels = Channels::prefixed(&format!("load-int-{}-", load::run_id()));
    let child = Command::new(env!("CARGO_BIN_EXE_saga-orchestrator"))
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BROKER_URL", BrokerKind::from_env().url())
        .env("CHANNEL_PARTNER_EVENTS", &channels.partner_events)
        .env("CHANNEL_SAGA_EVENTS", &channels.saga_events)
        .args(["load-test", "--events", "5", "--in-flight", "2", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Its subscription exists once it is reading: interrupt it then.
    assert_eq!(
        pulsar_subscriptions_become(&channels.saga_events, 1).await,
        Some(true),
        "the load test never subscribed"
    );
    let interrupt = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(interrupt.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("it exits")
        .expect("its output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(
        pulsar_subscriptions_become(&channels.saga_events, 0).await,
        Some(true),
        "the interrupted load test left its subscription on {}",
        channels.saga_events
    );
}
