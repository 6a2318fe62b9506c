//! `publish` and `load-test` against the real service: events go out on
//! the suite's broker, sagas are read back through the API, and the report
//! adds up.

use std::sync::Arc;
use std::time::Duration;

use saga_orchestrator::tools::load::{self, PublishPlan};
use saga_orchestrator::transport;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{alliance_created, mocks, on_create_alliance, on_delete_partner, spawn_app};

#[tokio::test]
async fn a_load_test_reports_every_saga_by_outcome() {
    let (alliances, integrations) = mocks().await;
    // Alliances refuses what the load tool marks to fail, as the simulator does.
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
    let app = spawn_app(alliances, integrations).await;
    let transport = transport::from_settings(&app.config.settings)
        .await
        .expect("broker");

    let plan = PublishPlan {
        count: 40,
        rate: Some(400.0),
        concurrency: 3,
        fail_ratio: 0.25,
        correlation_id: format!("load-{}", app.channels.partner_events),
    };
    let events = load::events(&plan);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let published = load::publish(
        transport,
        &app.channels.partner_events,
        events,
        &plan,
        move |n| {
            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        },
    )
    .await
    .expect("publish");
    assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), 40);

    let partners = published
        .events
        .iter()
        .filter_map(|e| e.partner_id().map(str::to_string))
        .collect();
    let waited = load::wait_for_sagas(
        &app.address,
        &plan.correlation_id,
        &partners,
        Duration::from_secs(30),
        |_, _| {},
    )
    .await
    .expect("the API answers");
    assert!(waited.complete, "every saga settles");
    let report = load::collect(
        &plan.correlation_id,
        &published.events,
        published.took,
        &waited.sagas,
    );

    assert!(report.is_clean(), "{}", report.render());
    assert_eq!(
        (report.events, report.settled, report.duplicates),
        (40, 40, 0)
    );
    assert_eq!(report.outcomes["completed"].count, 30);
    assert_eq!(report.outcomes["compensated"].count, 10);
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 <= report.latency_ms.max);
    assert!(report.sagas_per_sec > 0.0);
    let text = report.render();
    assert!(text.contains("settled      40 of 40"), "{text}");
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["outcomes"]["compensated"]["count"], 10);
}

#[tokio::test]
async fn waiting_for_sagas_that_never_come_stops_at_the_timeout_with_the_count() {
    let (alliances, integrations) = mocks().await;
    let app = spawn_app(alliances, integrations).await;
    let partners = ["a", "b", "c"].map(String::from).into_iter().collect();
    let waited = load::wait_for_sagas(
        &app.address,
        "nobody",
        &partners,
        Duration::from_millis(300),
        |_, _| {},
    )
    .await
    .expect("the API answers");
    assert!(!waited.complete);
    assert_eq!((waited.settled, waited.sagas.len()), (0, 0));
}
