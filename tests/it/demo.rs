//! The embedded demo end to end: SQLite, in-memory broker, simulators over
//! loopback HTTP; its numbers must agree with the simulators' own records.

use std::time::Duration;

use saga_orchestrator::tools::demo::{self, DemoOptions};
use saga_orchestrator::tools::simulator::SimulatorConfig;

#[tokio::test]
async fn the_demo_settles_every_saga_and_its_numbers_are_real() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("demo-{}", uuid::Uuid::new_v4().simple()));
    let options = DemoOptions {
        count: 80,
        simulator: SimulatorConfig {
            latency: Duration::from_millis(1),
            reject_ratio: 0.3,
            transient_ratio: 0.1,
            delete_fail_ratio: 0.5,
            seed: 7,
        },
        data_dir: dir.clone(),
        api_addr: "127.0.0.1:0".parse().unwrap(),
        timeout: Duration::from_secs(60),
    };
    let mut updates = 0;
    let running = demo::run(&options, |_| updates += 1)
        .await
        .expect("demo runs");
    let report = running.report.clone();

    let p = report.progress;
    assert_eq!(p.done(), 80, "every saga settled: {p:?}");
    assert!(
        p.completed > 0 && p.compensated > 0 && p.failed > 0,
        "all three outcomes occur: {p:?}"
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.simulator.alliances.created, p.completed as u64);
    assert_eq!(report.simulator.integrations.deleted, p.compensated as u64);
    assert!(updates > 0, "progress was reported");
    assert_eq!(report.examples.len(), 3);
    assert!(report.latency.p50 <= report.latency.p99 && report.latency.p99 <= report.latency.max);
    assert!(dir.join("sagas.db").exists());

    // The API is up while the demo runs, on the demo's own store.
    let failed: serde_json::Value =
        reqwest::get(format!("{}/sagas?state=failed&limit=500", report.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(failed["items"].as_array().unwrap().len(), p.failed);

    // One malformed announcement is set aside, for the console to act on.
    assert_eq!(report.dead_letters, 1, "the demo's malformed event");
    let console = reqwest::get(format!("{}/ui", report.api)).await.unwrap();
    assert_eq!(console.status(), 200);

    let text = demo::render(&report);
    assert!(text.contains("✓ the store agrees"), "{text}");
    assert!(text.contains(&format!("{}/ui", report.api)), "{text}");
    assert!(text.contains("1 dead letter"), "{text}");
    running.stop().await;
}
