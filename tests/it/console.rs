//! The web console (`/ui`) over HTTP, as a browser without scripts would
//! use it: pages and their headers, signing in, and every action through
//! its form — retry, bulk retry, redrive and discard — with who acted in
//! the history or the audit record. The same in a real Chromium, scripts
//! and all, is in `console_browser.rs`.

use std::time::Duration;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use saga_orchestrator::config::NamedToken;
use serde_json::json;

use crate::helpers::{partner, spawn_app, spawn_app_with, TestApp, TestConfig};
use crate::operator::{audit, dead_letters, finished_job, get};
use crate::operator_jobs::{failed_sagas, failing_participants, heal};

const ALICE: &str = "alice-console-token";

/// A browser session on the console: its cookie, and no redirects
/// followed (tests look at them).
pub struct Console {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

impl Console {
    pub fn new(app: &TestApp) -> Self {
        let http = reqwest::Client::builder()
            .redirect(Policy::none())
            .build()
            .expect("client");
        Self {
            base: app.address.clone(),
            http,
            cookie: None,
        }
    }

    /// Signs in with `token`: the answer's status, and the cookie kept.
    pub async fn sign_in(&mut self, token: &str) -> reqwest::Response {
        let response = self
            .http
            .post(format!("{}/ui/sign-in", self.base))
            .form(&[("token", token)])
            .send()
            .await
            .expect("sign in");
        if let Some(set) = response.headers().get(SET_COOKIE) {
            let set = set.to_str().expect("ascii").to_string();
            self.cookie = set.split(';').next().map(str::to_string);
        }
        response
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        let response = request.send().await.expect("GET");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    }

    /// Posts `fields` (and the CSRF token of the page at `from`) to `path`:
    /// the status and where it sends the browser.
    pub async fn post(&self, from: &str, path: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let (_, page) = self.get(from).await;
        let csrf = csrf_of(&page).unwrap_or_default();
        let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf)];
        form.extend_from_slice(fields);
        self.post_raw(path, &form).await
    }

    pub async fn post_raw(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let mut request = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        let response = request.send().await.expect("POST");
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().expect("ascii").to_string());
        let body = response.text().await.expect("body");
        (status, location.unwrap_or(body))
    }
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(page: &str) -> Option<String> {
    let start = page.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    page[start..].split('"').next().map(str::to_string)
}

fn with_alice(config: &mut TestConfig) {
    config.settings.api.admin_tokens = vec![NamedToken {
        name: "alice".into(),
        token: ALICE.into(),
    }];
}

/// Every page carries the strict CSP, is kept by no cache, and loads only
/// this service's assets, which are served.
#[tokio::test]
async fn pages_are_private_and_load_only_this_services_assets() {
    let (alliances, integrations) = crate::helpers::mocks().await;
    let app = spawn_app(alliances, integrations).await;
    for path in ["/ui", "/ui/sagas", "/ui/sign-in", "/ui/overview/live"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let h = response.headers();
        let csp = h["content-security-policy"].to_str().unwrap().to_string();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        let html = response.text().await.unwrap();
        for attr in ["src=\"", "href=\""] {
            for part in html.split(attr).skip(1) {
                let url = part.split('"').next().unwrap_or_default();
                assert!(
                    url.starts_with('/') && !url.starts_with("//"),
                    "{path}: {url}"
                );
            }
        }
    }
    for (asset, kind) in [
        ("/ui/assets/htmx.min.js", "text/javascript"),
        ("/ui/assets/console.css", "text/css"),
    ] {
        let response = app.get(asset).await;
        assert_eq!(response.status(), 200, "{asset}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(content_type.starts_with(kind), "{asset}: {content_type}");
    }
}

/// The token is typed once; what the browser keeps is a cookie scripts
/// cannot read, sent to `/ui` only, that names no token; pages never show
/// the token. Without a session, dead letters and actions are refused.
#[tokio::test]
async fn signing_in_keeps_the_token_out_of_reach_of_scripts_and_pages() {
    let (alliances, integrations) = crate::helpers::mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    with_alice(&mut config);
    let app = spawn_app_with(alliances, integrations, config).await;
    let mut console = Console::new(&app);

    let (status, page) = console.get("/ui/dead-letters").await;
    assert_eq!(status, 401);
    assert!(
        page.contains(r#"id="sign-in-instead" href="/ui/sign-in""#),
        "{page}"
    );
    let wrong = console.sign_in("not-a-token").await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    assert!(wrong
        .text()
        .await
        .unwrap()
        .contains("not one of the configured admin tokens"));

    let right = console.sign_in(ALICE).await;
    assert_eq!(right.status(), 303);
    let set = right.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains(ALICE) && !set.contains("Max-Age"), "{set}");
    let (status, page) = console.get("/ui/dead-letters").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(r#"id="signed-in">alice<"#), "{page}");
    assert!(!page.contains(ALICE));

    // A bearer token is the API's way in, not the console's.
    let saga = app.start_saga(&partner(), "Acme").await;
    let bearer = app
        .http
        .post(format!("{}/ui/sagas/{saga}/compensate", app.address))
        .bearer_auth(ALICE)
        .form(&[("reason", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 401);

    // Signed out, the cookie is gone.
    let (status, _) = console.post("/ui", "/ui/sign-out", &[]).await;
    assert_eq!(status, 303);
}

/// A failed saga is retried from its page: a form without this session's
/// CSRF token is refused; the reason and who gave it go into the history.
#[tokio::test]
async fn a_failed_saga_is_retried_from_its_page_by_a_named_admin() {
    let (alliances, integrations) = failing_participants().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    with_alice(&mut config);
    let app = spawn_app_with(alliances, integrations, config).await;
    let saga = failed_sagas(&app, 1).await.remove(0);
    heal(&app).await;
    let mut console = Console::new(&app);
    console.sign_in(ALICE).await;
    let page = format!("/ui/sagas/{saga}");
    let (status, html) = console.get(&page).await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"id="action-retry""#), "{html}");
    assert!(
        html.contains("delete_partner: failed"),
        "the attempts show: {html}"
    );

    let retry = format!("/ui/sagas/{saga}/retry");
    let forged = console
        .post_raw(&retry, &[("csrf", "forged"), ("reason", "x")])
        .await;
    assert_eq!(forged.0, 403, "{forged:?}");
    let (status, to) = console
        .post(&page, &retry, &[("reason", "integrations unlocked it")])
        .await;
    assert_eq!(
        (status, to.as_str()),
        (303, format!("{page}?notice=retried").as_str())
    );
    let settled = app.settled_saga(&saga, Duration::from_secs(30)).await;
    assert_eq!(settled["state"], "compensated", "{settled}");
    let history = settled["history"].to_string();
    assert!(
        history.contains("integrations unlocked it (by alice)"),
        "{history}"
    );
}

/// The list filters by state, partner and time as the API does.
#[tokio::test]
async fn the_saga_list_filters_like_the_api() {
    let (alliances, integrations) = failing_participants().await;
    let app = spawn_app(alliances, integrations).await;
    let sagas = failed_sagas(&app, 2).await;
    let console = Console::new(&app);
    let (_, all) = console.get("/ui/sagas?state=failed").await;
    assert!(sagas.iter().all(|s| all.contains(s.as_str())), "{all}");
    let one: serde_json::Value = get(&app, &format!("/sagas/{}", sagas[0])).await;
    let partner_id = one["partner_id"].as_str().unwrap();
    let (_, only) = console
        .get(&format!("/ui/sagas?partner_id={partner_id}"))
        .await;
    assert!(
        only.contains(sagas[0].as_str()) && !only.contains(sagas[1].as_str()),
        "{only}"
    );
    let (_, later) = console.get("/ui/sagas?since=2999-01-01T00:00").await;
    assert!(later.contains(r#"id="no-sagas""#), "{later}");
    let (status, bad) = console.get("/ui/sagas?since=yesterday").await;
    assert_eq!(status, 400, "{bad}");
    // A year the store cannot hold is the caller's mistake, not an outage.
    let (status, bad) = console.get("/ui/sagas?since=-5000-01-01T00:00").await;
    assert_eq!(status, 400, "{bad}");
    let (status, page) = console.get("/ui/sagas?until=2999-01-01T10:00:00.5").await;
    assert_eq!(status, 200, "fractions of a second are a time too: {page}");
    // The API takes the same filter.
    let (status, body) = crate::operator::admin(
        &app,
        reqwest::Method::GET,
        "/sagas?state=failed&until=2000-01-01T00:00:00Z",
        None,
    )
    .await;
    assert_eq!((status, body["items"].clone()), (200, json!([])), "{body}");
}

/// Every failed saga matching the filter: previewed first, then one job;
/// the same form posted again is that job, not a second one.
#[tokio::test]
async fn a_bulk_retry_is_previewed_then_run_once() {
    let (alliances, integrations) = failing_participants().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    with_alice(&mut config);
    let app = spawn_app_with(alliances, integrations, config).await;
    let sagas = failed_sagas(&app, 2).await;
    heal(&app).await;
    let mut console = Console::new(&app);
    console.sign_in(ALICE).await;
    let fields = [
        ("name", "incident-console"),
        ("reason", "integrations healed"),
        ("max", ""),
    ];
    let mut preview = fields.to_vec();
    preview.push(("step", "preview"));
    let (status, html) = console.post("/ui/sagas", "/ui/sagas/retry", &preview).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(r#"data-matched="2""#), "{html}");
    let mut start = fields.to_vec();
    start.push(("step", "start"));
    let (status, job_page) = console.post("/ui/sagas", "/ui/sagas/retry", &start).await;
    assert_eq!(status, 303, "{job_page}");
    let job_id = job_page.trim_start_matches("/ui/jobs/").to_string();
    let job = finished_job(&app, &job_id, Duration::from_secs(30)).await;
    assert_eq!(job["done"], 2, "{job}");
    assert_eq!(job["created_by"], "alice", "{job}");
    let (_, again) = console.post("/ui/sagas", "/ui/sagas/retry", &start).await;
    assert_eq!(again, format!("/ui/jobs/{job_id}?notice=duplicate"));
    // Previewing the same form again says it ran, not what it would touch.
    let (status, again) = console.post("/ui/sagas", "/ui/sagas/retry", &preview).await;
    assert_eq!(
        (status, again),
        (303, format!("/ui/jobs/{job_id}?notice=duplicate"))
    );
    // A finished job cannot be aborted, and the page does not say it was.
    let job_page = format!("/ui/jobs/{job_id}");
    let abort = format!("{job_page}/abort");
    let (status, _) = console
        .post(&job_page, &abort, &[("reason", "too late")])
        .await;
    assert_eq!(status, 409);
    let (status, progress) = console.get(&format!("/ui/jobs/{job_id}")).await;
    assert_eq!(status, 200);
    assert!(progress.contains(r#"id="job-state">done<"#), "{progress}");
    for saga in &sagas {
        let settled = app.settled_saga(saga, Duration::from_secs(30)).await;
        assert_eq!(settled["state"], "compensated", "{settled}");
    }
}

/// A dead letter is listed per channel, read as received, redriven from
/// its page (once) or discarded, each with who and why in the audit.
#[tokio::test]
async fn dead_letters_are_inspected_redriven_and_discarded_from_their_pages() {
    let (alliances, integrations) = crate::helpers::mocks().await;
    let mut config = TestConfig::new(&alliances, &integrations).await;
    with_alice(&mut config);
    let app = spawn_app_with(alliances, integrations, config).await;
    let channel = app.channels.partner_events.clone();
    for n in 0..2 {
        let fields = [
            ("event_type", "PartnerCreated".to_string()),
            ("payload", format!("not json {n}")),
        ]
        .map(|(k, v)| (k.to_string(), v));
        app.publish_fields(&channel, &fields).await;
    }
    let dlq = format!("{channel}-dlq");
    let letters = dead_letters(&app, &dlq, 2).await;
    let mut console = Console::new(&app);
    console.sign_in(ALICE).await;
    let (_, list) = console
        .get(&format!("/ui/dead-letters?channel={dlq}"))
        .await;
    for l in &letters {
        assert!(list.contains(l["id"].as_str().unwrap()), "{list}");
    }
    assert!(list.contains(&format!("{dlq} (2)")), "{list}");
    let (status, bad) = console.get("/ui/dead-letters?channel=%00").await;
    assert_eq!(status, 400, "{bad}");

    let (one, two) = (
        letters[0]["id"].as_str().unwrap(),
        letters[1]["id"].as_str().unwrap(),
    );
    let page = format!("/ui/dead-letters/{one}");
    let (_, html) = console.get(&page).await;
    assert!(html.contains("not json"), "the fields as received: {html}");
    let (status, to) = console
        .post(
            &page,
            &format!("{page}/redrive"),
            &[("reason", "to see it again")],
        )
        .await;
    assert_eq!((status, to), (303, format!("{page}?notice=redriven")));
    let again = console
        .post(&page, &format!("{page}/redrive"), &[("reason", "twice")])
        .await;
    assert_eq!(again.0, 409, "never a second copy: {again:?}");
    let other = format!("/ui/dead-letters/{two}");
    let (status, _) = console
        .post(
            &other,
            &format!("{other}/discard"),
            &[("reason", "a test message")],
        )
        .await;
    assert_eq!(status, 303);
    let actions: Vec<(String, String)> = audit(&app)
        .await
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["actor"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("dead_letter.redrive".into(), "alice".into())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("dead_letter.discard".into(), "alice".into())),
        "{actions:?}"
    );
}
