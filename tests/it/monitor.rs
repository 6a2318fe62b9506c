//! The monitor reads beside the orchestrator: it sees a saga's messages on
//! every channel, and the orchestrator still receives and acks every one of
//! them (nothing stolen, nothing left pending).

use std::time::{Duration, Instant};

use saga_orchestrator::config::Channels;
use saga_orchestrator::tools::monitor::{
    self, BlockRules, Blocks, ChannelKind, Filter, GroupBy, Observed, Printer, StartAt, Style, Tap,
};

use crate::broker::pulsar_subscriptions;
use crate::helpers::{
    alliance_created, mocks, on_create_alliance, partner, spawn_app, BrokerKind, TestApp,
    TestBroker,
};

/// How long the monitor may take to see what a test waits for.
const SEEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A tap on every channel of `app` (its own, prefixed names) from now.
async fn tap(app: &TestApp) -> Tap {
    let channels = monitor::all_channels(&app.channels);
    Tap::open(&app.config.settings.broker.url, &channels, StartAt::Now)
        .await
        .expect("the monitor opens")
}

/// Reads until `done` holds for what passed `filter`; returns all of it.
async fn watch(
    tap: &mut Tap,
    channels: &Channels,
    filter: &Filter,
    done: impl Fn(&[Observed]) -> bool,
) -> Vec<Observed> {
    let started = Instant::now();
    let mut seen = Vec::new();
    while !done(&seen) {
        assert!(
            started.elapsed() < SEEN_TIMEOUT,
            "the monitor saw only {:?}",
            seen.iter()
                .map(|o: &Observed| (&o.channel, &o.event_type))
                .collect::<Vec<_>>()
        );
        for t in tap.next_batch().await.expect("the monitor reads") {
            let o = Observed::parse(&t, ChannelKind::of(&t.channel, channels), 1 << 20);
            if filter.matches(&o) {
                seen.push(o);
            }
        }
    }
    seen
}

/// Waits (up to 20 s: the metrics lag) for `channel`'s subscription count
/// to satisfy `ok`; `false` if it never did or cannot be read.
async fn pulsar_subscriptions_become(channel: &str, ok: impl Fn(u64) -> bool) -> bool {
    if BrokerKind::from_env() != BrokerKind::Pulsar {
        return false;
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if pulsar_subscriptions(channel).await.is_some_and(&ok) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

fn has(seen: &[Observed], event_type: &str) -> bool {
    seen.iter()
        .any(|o| o.event_type.as_deref() == Some(event_type))
}

#[tokio::test]
async fn the_monitor_sees_a_saga_and_steals_nothing_from_the_orchestrator() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-mon"), None).await;
    let mut app = spawn_app(alliances, integrations).await;
    let mut tap = tap(&app).await;
    let p = partner();
    let corr = format!("corr-{p}");

    app.publish_partner(&p, &format!("evt-{p}"), &corr).await;
    let filter = Filter {
        correlation_ids: vec![corr.clone()],
        ..Filter::default()
    };
    let seen = watch(&mut tap, &app.channels, &filter, |seen| {
        ["PartnerCreated", "SagaStarted", "SagaCompleted"]
            .iter()
            .all(|t| has(seen, t))
    })
    .await;

    // The orchestrator got the event all the same and finished the saga.
    let saga = app.settled(&p).await;
    assert_eq!(saga["state"], "completed");
    let saga_id = saga["saga_id"].as_str().expect("saga_id");
    for o in &seen {
        assert_eq!(o.malformed, None, "{o:?}");
        assert_eq!(o.correlation_id.as_deref(), Some(corr.as_str()));
        let expected_channel = match o.event_type.as_deref() {
            Some("PartnerCreated") => &app.channels.partner_events,
            _ => &app.channels.saga_events,
        };
        assert_eq!(&o.channel, expected_channel, "{o:?}");
        if o.kind == ChannelKind::SagaEvents {
            assert_eq!(o.saga_id.as_deref(), Some(saga_id));
        }
    }
    let completed = seen
        .iter()
        .find(|o| o.event_type.as_deref() == Some("SagaCompleted"))
        .expect("SagaCompleted");
    assert_eq!(
        completed.payload_text("alliance_id").as_deref(),
        Some("a-mon")
    );

    // What an operator would read: one block, the saga's PartnerCreated
    // (which has no saga_id) in it, headed by the saga and its outcome.
    let mut printer = Printer::new(
        Style::Text { colour: false },
        GroupBy::Saga,
        &monitor::all_channels(&app.channels),
    );
    let mut blocks = Blocks::new(GroupBy::Saga, BlockRules::default());
    let now = Instant::now();
    for o in &seen {
        assert_eq!(blocks.push(o.clone(), now), Vec::new(), "{o:?}");
    }
    let printed = blocks.drain(now);
    assert_eq!(printed.len(), 1, "{printed:#?}");
    let text = printer.block(&printed[0]);
    assert!(
        text[0].starts_with(&format!("── saga {saga_id} · partner {p} · completed")),
        "{text:#?}"
    );
    assert_eq!(text.len(), seen.len() + 1, "{text:#?}");
    assert!(text[1].contains("PartnerCreated"), "{text:#?}");
    assert!(text
        .iter()
        .any(|l| l.contains("SagaCompleted") && l.contains(&saga_id[saga_id.len() - 8..])));

    // Redis: no consumer group of the monitor's, only the orchestrator's.
    if let TestBroker::Redis(conn) = &app.broker {
        let groups: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&app.channels.partner_events)
            .query_async(&mut conn.clone())
            .await
            .expect("XINFO GROUPS");
        assert_eq!(groups.len(), 1, "only the orchestrator's group: {groups:?}");
    }
    // pulsar-lite keeps even a non-durable subscription after its consumer
    // leaves (and then retains every message for it): the monitor removes
    // its own when it stops. Nobody else subscribes to saga-events here.
    let saga_events = app.channels.saga_events.clone();
    let on_pulsar_lite = pulsar_subscriptions_become(&saga_events, |n| n == 1).await;
    tap.close().await;
    if on_pulsar_lite {
        assert!(
            pulsar_subscriptions_become(&saga_events, |n| n == 0).await,
            "the monitor's subscription on {saga_events} was left behind"
        );
    }
    let channel = app.channels.partner_events.clone();
    assert_eq!(
        app.stop_and_count_unacked(&channel).await,
        0,
        "the orchestrator acked everything it was given"
    );
}

#[tokio::test]
async fn the_monitor_shows_malformed_input_and_its_dead_letter() {
    let (alliances, integrations) = mocks().await;
    let app = spawn_app(alliances, integrations).await;
    let mut tap = tap(&app).await;
    let corr = format!("corr-bad-{}", partner());
    let fields: Vec<(String, String)> = [
        ("event_id", "evt-bad"),
        ("correlation_id", corr.as_str()),
        ("event_type", "PartnerCreated"),
        ("payload", "{not json"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    app.publish_fields(&app.channels.partner_events, &fields)
        .await;
    let filter = Filter {
        correlation_ids: vec![corr],
        ..Filter::default()
    };
    let seen = watch(&mut tap, &app.channels, &filter, |seen| {
        seen.iter().any(|o| o.kind == ChannelKind::Dlq)
            && seen.iter().any(|o| o.kind == ChannelKind::Events)
    })
    .await;

    let original = seen.iter().find(|o| o.kind == ChannelKind::Events).unwrap();
    let reason = original.malformed.as_deref().expect("marked malformed");
    assert!(reason.contains("invalid JSON"), "{reason}");
    let dead = seen.iter().find(|o| o.kind == ChannelKind::Dlq).unwrap();
    assert_eq!(dead.channel, format!("{}-dlq", app.channels.partner_events));
    assert!(dead
        .dlq_reason
        .as_deref()
        .is_some_and(|r| r.contains("invalid JSON")));
    assert_eq!(
        dead.source_channel.as_deref(),
        Some(app.channels.partner_events.as_str())
    );
    let printer = Printer::new(Style::Text { colour: false }, GroupBy::None, &[]);
    assert!(printer.line(original).contains("MALFORMED"));
    assert!(printer.line(dead).contains("dlq_reason=invalid JSON"));
    tap.close().await;
}
