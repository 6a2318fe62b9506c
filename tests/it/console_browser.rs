//! The web console in a real headless Chromium (scripts, htmx and CSP
//! included), with every lookup outside this host failing: the overview
//! follows a saga to its end without a reload, the list's filters, a failed
//! saga's timeline, and a redrive from the dead-letter page. Every page
//! visited must be whole and local. The screenshots go to
//! `target/tmp/screenshots/`.

use std::time::Duration;

use crate::browser::{screenshot_path, Browser};
use crate::helpers::{
    alliance_created, mocks, on_create_alliance, partner, spawn_app, TestApp, TEST_ADMIN_TOKEN,
};
use crate::operator::big_partners_dead_lettered;
use crate::operator_jobs::{failed_sagas, failing_participants};

/// Opens `path` of `app` and checks the page is whole and local.
async fn open(browser: &Browser, app: &TestApp, path: &str) {
    browser.goto(&format!("{}{path}", app.address)).await;
    browser.assert_loaded_from_this_host().await;
}

/// Signs in through the sign-in page, as a person would.
async fn sign_in(browser: &Browser, app: &TestApp) {
    open(browser, app, "/ui/sign-in").await;
    browser.fill("#token", TEST_ADMIN_TOKEN).await;
    browser.click("#sign-in-submit").await;
    browser
        .wait_for_text("#signed-in", "signed in", |t| !t.is_empty())
        .await;
}

/// The overview's counts follow a saga that completes while the page is
/// open: the same document (not a reload) shows it.
#[tokio::test]
async fn the_overview_updates_when_a_saga_completes() {
    let (alliances, integrations) = mocks().await;
    on_create_alliance(&alliances, alliance_created("a-1"), None).await;
    let app = spawn_app(alliances, integrations).await;
    let browser = Browser::start().await;
    open(&browser, &app, "/ui").await;
    assert_eq!(browser.text("#count-completed").await, "0");
    browser.run("window.__sameDocument = true").await;

    let saga = app.start_saga(&partner(), "Acme").await;
    assert_eq!(
        app.settled_saga(&saga, Duration::from_secs(30)).await["state"],
        "completed"
    );
    browser
        .wait_for_text("#count-completed", "1", |t| t == "1")
        .await;
    // The chart is cached for a few seconds longer than the counts.
    browser
        .wait_for(
            "return document.querySelector('#ended-chart')?.dataset.completed ?? null",
            "the completion in the chart",
            "1".into(),
        )
        .await;
    assert_eq!(
        browser.run("return window.__sameDocument === true").await,
        true,
        "the counts changed in place, not by a reload"
    );
    browser.assert_loaded_from_this_host().await;
    browser.screenshot(&screenshot_path("overview")).await;
    browser.close().await;
}

/// The state and partner filters, chosen in the form, narrow the list:
/// of a completed saga and two failed ones, `failed` shows the two, a
/// partner one of them, and `completed` with that partner none.
#[tokio::test]
async fn the_saga_list_filters_narrow_what_it_shows() {
    let (alliances, integrations) = failing_participants().await;
    let lucky = partner();
    wiremock::Mock::given(wiremock::matchers::body_partial_json(
        serde_json::json!({ "partner_id": lucky }),
    ))
    .respond_with(alliance_created("a-lucky"))
    .with_priority(1)
    .mount(&alliances)
    .await;
    let app = spawn_app(alliances, integrations).await;
    let completed = app.start_saga(&lucky, "Lucky").await;
    assert_eq!(
        app.settled_saga(&completed, Duration::from_secs(30)).await["state"],
        "completed"
    );
    let sagas = failed_sagas(&app, 2).await;
    let first = app.saga(&sagas[0]).await;
    let browser = Browser::start().await;
    open(&browser, &app, "/ui/sagas").await;
    let mut everything = sagas_sorted(&sagas);
    everything.push(completed);
    everything.sort();
    assert_eq!(shown(&browser).await, everything);

    choose_state(&browser, "failed").await;
    filter(&browser, "state=failed").await;
    assert_eq!(shown(&browser).await, sagas_sorted(&sagas));

    let partner_id = first["partner_id"].as_str().expect("partner_id");
    browser
        .fill("#filters input[name=partner_id]", partner_id)
        .await;
    filter(&browser, &format!("partner_id={partner_id}")).await;
    assert_eq!(shown(&browser).await, vec![sagas[0].clone()]);

    choose_state(&browser, "completed").await;
    filter(&browser, "state=completed").await;
    browser.find("#no-sagas").await;
    browser.close().await;
}

async fn choose_state(browser: &Browser, state: &str) {
    let select = browser.find("#filters select[name=state]").await;
    select.select_by_value(state).await.expect("state chosen");
}

/// Submits the filter form and waits for the list it leads to (its URL
/// has `expected`), checking that page too.
async fn filter(browser: &Browser, expected: &str) {
    browser.click("#filters button[type=submit]").await;
    let script = format!("return location.search.includes('{expected}')");
    browser.wait_for(&script, expected, true.into()).await;
    browser.assert_loaded_from_this_host().await;
}

/// The saga ids of the rows on the page, sorted.
async fn shown(browser: &Browser) -> Vec<String> {
    let ids = browser
        .run("return [...document.querySelectorAll('#sagas tbody tr')].map(r => r.dataset.saga)")
        .await;
    let mut ids: Vec<String> = serde_json::from_value(ids).expect("saga ids");
    ids.sort();
    ids
}

fn sagas_sorted(sagas: &[String]) -> Vec<String> {
    let mut sorted = sagas.to_vec();
    sorted.sort();
    sorted
}

/// A saga whose alliance is refused and whose compensation keeps failing:
/// its timeline has a bar per transition and shows each failed delete.
#[tokio::test]
async fn a_failed_sagas_timeline_shows_its_compensation_attempts() {
    let (alliances, integrations) = failing_participants().await;
    let app = spawn_app(alliances, integrations).await;
    let saga = failed_sagas(&app, 1).await.remove(0);
    let history = app.saga(&saga).await["history"]
        .as_array()
        .map_or(0, Vec::len);
    let browser = Browser::start().await;
    open(&browser, &app, &format!("/ui/sagas/{saga}")).await;

    let count = |css: &str| format!("return document.querySelectorAll('{css}').length");
    assert_eq!(browser.run(&count("#history tbody tr")).await, history);
    assert_eq!(browser.run(&count("#timeline svg rect.bar")).await, history);
    let failed_deletes = browser
        .run("return [...document.querySelectorAll('#history tr[data-outcome=failed]')].map(r => r.textContent)")
        .await;
    let failed_deletes: Vec<String> = serde_json::from_value(failed_deletes).expect("rows");
    assert!(
        failed_deletes.len() >= 2
            && failed_deletes
                .iter()
                .all(|row| row.contains("delete_partner: failed")),
        "every compensation attempt shows as failed: {failed_deletes:?}"
    );
    let refused = browser.text("#history").await;
    assert!(refused.contains("create_alliance: refused"), "{refused}");
    // And what each step told the world.
    let parked = browser
        .text("#history tr[data-reason=compensation_exhausted] td.events")
        .await;
    assert_eq!(parked, "SagaStepFailed SagaFailed");
    browser.screenshot(&screenshot_path("saga-timeline")).await;
    browser.close().await;
}

/// The scenario redrive exists for, clicked through: a partner too big
/// for the limit is dead-lettered; once the limit is raised, the redrive
/// button on its page sends it back and it becomes one completed saga.
#[tokio::test]
async fn a_redrive_from_the_dead_letter_page_starts_a_saga() {
    let (mut app, partners, letters) = big_partners_dead_lettered(1).await;
    let dlq = format!("{}-dlq", app.channels.partner_events);
    let partner_id = partners[0].clone();
    let letter_id = letters[0]["id"].as_str().expect("id").to_string();
    app.config.settings.limits.max_message_bytes = 1 << 20;
    app.restart().await;

    let browser = Browser::start().await;
    sign_in(&browser, &app).await;
    open(&browser, &app, &format!("/ui/dead-letters?channel={dlq}")).await;
    let reason = browser.text("#letters").await;
    assert!(reason.contains("MAX_MESSAGE_BYTES"), "{reason}");
    browser.screenshot(&screenshot_path("dead-letters")).await;

    browser
        .click(&format!("#letters a[href='/ui/dead-letters/{letter_id}']"))
        .await;
    browser.find("#letter-message").await;
    browser.assert_loaded_from_this_host().await;
    browser
        .fill("#letter-actions input[name=reason]", "limit raised")
        .await;
    browser.click("#redrive").await;
    browser
        .wait_for_text("#letter-state", "redriven", |t| t.contains("redriven"))
        .await;
    browser.assert_loaded_from_this_host().await;

    let saga = app.settled(&partner_id).await;
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(app.sagas_of(&partner_id).await.len(), 1);
    browser.close().await;
}
