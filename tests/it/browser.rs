//! A real headless Chromium for the console's tests, over WebDriver
//! (Debian's `chromium` and `chromium-driver`, installed by `make test`;
//! `CHROMIUM` and `CHROMEDRIVER` point elsewhere). Each test gets its own
//! chromedriver on a free loopback port and its own empty profile.
//!
//! The browser cannot reach anything but this host: every host name fails
//! to resolve (`--host-resolver-rules`) and every non-loopback request goes
//! to a proxy that is not there. [`Browser::assert_loaded_from_this_host`]
//! then checks a page is whole: every resource it references is on its own
//! origin and loaded, and no Content-Security-Policy violation happened.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// How long a wait for the page lasts before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

fn binary(var: &str, default: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_string());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: `make test` (or `cargo xtask install chromium`) installs it, \
         or set {var}"
    );
    path
}

/// Recorded in every document before its own scripts run, so violations
/// during load are caught too.
const WATCH_CSP: &str = "window.__cspViolations = []; \
    document.addEventListener('securitypolicyviolation', e => \
    window.__cspViolations.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));";

/// What makes a page incomplete, empty when it is whole.
const PROBLEMS: &str = r#"
const origin = location.origin, problems = [];
const foreign = u => { try { return new URL(u, location.href).origin !== origin; } catch (e) { return true; } };
for (const e of performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'))) {
  if (foreign(e.name)) problems.push('requested ' + e.name);
  else if (e.responseStatus && e.responseStatus >= 400) problems.push(e.responseStatus + ' for ' + e.name);
}
for (const el of document.querySelectorAll('script[src], link[href], img[src], iframe[src]')) {
  const url = el.src || el.href;
  if (foreign(url)) problems.push(el.tagName.toLowerCase() + ' from ' + url);
}
for (const link of document.querySelectorAll('link[rel=stylesheet]')) {
  let rules = 0;
  try { rules = link.sheet ? link.sheet.cssRules.length : 0; } catch (e) {}
  if (!rules) problems.push('stylesheet not loaded: ' + link.href);
}
for (const s of document.querySelectorAll('script[src]')) {
  // A request that never got an answer has status 0.
  const seen = performance.getEntriesByName(s.src).some(e => e.responseStatus > 0 && e.responseStatus < 400);
  if (!seen) problems.push('script not loaded: ' + s.src);
}
for (const img of document.images) {
  if (!img.complete || !img.naturalWidth) problems.push('image not loaded: ' + img.src);
}
for (const v of (window.__cspViolations || ['the CSP watch did not run'])) problems.push('CSP: ' + v);
return problems;
"#;

/// chromedriver's own command for a DevTools call.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (reqwest::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (reqwest::Method::POST, Some(body.to_string()))
    }
}

/// A headless Chromium and its driver; both end with it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Starts chromedriver in a process group of its own (so the browsers it
/// starts are stopped with it), dying with the test process.
fn start_driver(port: u16) -> Child {
    let mut command = Command::new(binary("CHROMEDRIVER", "/usr/bin/chromedriver"));
    command
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; it only marks this child to be
    // killed when the test process dies.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn().expect("chromedriver starts")
}

async fn wait_until_ready(port: u16) {
    let started = Instant::now();
    let status = format!("http://127.0.0.1:{port}/status");
    loop {
        if let Ok(r) = reqwest::get(&status).await {
            if r.json::<Value>()
                .await
                .is_ok_and(|v| v["value"]["ready"] == true)
            {
                return;
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "chromedriver never answered on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn capabilities(profile: &std::path::Path) -> Capabilities {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--window-size=1280,1100",
        // Nothing outside this host: no name resolves, and whatever is
        // not loopback goes to a proxy that does not exist.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
    ]
    .map(String::from)
    .to_vec();
    let mut args = args;
    args.push(format!("--user-data-dir={}", profile.display()));
    let options = json!({
        "binary": binary("CHROMIUM", "/usr/bin/chromium"),
        "args": args,
    });
    let mut caps = Capabilities::new();
    caps.insert("goog:chromeOptions".into(), options);
    caps
}

impl Browser {
    /// A new browser, its CSP watch in place.
    pub async fn start() -> Self {
        let profile = std::env::temp_dir().join(format!("chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).expect("profile directory");
        let port = free_port();
        let driver = start_driver(port);
        let profile = TempDir(profile);
        wait_until_ready(port).await;
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities(&profile.0))
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        let watch = Cdp {
            cmd: "Page.addScriptToEvaluateOnNewDocument",
            params: json!({ "source": WATCH_CSP }),
        };
        client.issue_cmd(watch).await.expect("CSP watch installed");
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("page opens");
    }

    /// The element `css` selects, waiting for it to appear.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    /// The text of the element `css` selects, as shown, waiting for it to
    /// appear. Read in one script, so a live part swapped in meanwhile
    /// (htmx replaces elements) is never a stale reference.
    pub async fn text(&self, css: &str) -> String {
        let read = "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;";
        let started = Instant::now();
        loop {
            let text = self
                .client
                .execute(read, vec![json!(css)])
                .await
                .expect("script runs");
            if let Value::String(text) = text {
                return text.trim().to_string();
            }
            assert!(started.elapsed() < PATIENCE, "no {css} on the page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the field `css` selects.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("typing");
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Waits until `check` of the text of `css` holds, without reloading.
    pub async fn wait_for_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) {
        let started = Instant::now();
        loop {
            let text = self.text(css).await;
            if check(&text) {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{css} never became {what}: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The script's result.
    pub async fn run(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("script runs")
    }

    /// Why the current page is not whole and local (empty when it is).
    pub async fn load_problems(&self) -> Vec<String> {
        // Everything the page started loading has finished first.
        let started = Instant::now();
        while self.run("return document.readyState").await != "complete" {
            assert!(
                started.elapsed() < PATIENCE,
                "the page never finished loading"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        serde_json::from_value(self.run(PROBLEMS).await).expect("a list of problems")
    }

    pub async fn assert_loaded_from_this_host(&self) {
        let problems = self.load_problems().await;
        let url = self.client.current_url().await.expect("url");
        assert!(problems.is_empty(), "{url} is not whole: {problems:?}");
    }

    /// A PNG of the window, written to `path` (for the notes).
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(path, png).expect("screenshot written");
    }

    /// Ends the session, then the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        stop(&mut self.driver);
    }
}

fn stop(driver: &mut Child) {
    // The whole group: chromedriver and the browsers it started.
    // SAFETY: a plain kill(2) of a process group this test started.
    unsafe {
        libc::kill(-(driver.id() as i32), libc::SIGKILL);
    }
    let _ = driver.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        if matches!(self.driver.try_wait(), Ok(None)) {
            stop(&mut self.driver);
        }
    }
}

/// Where a test's screenshots go: `target/screenshots/`, kept after the run.
pub fn screenshot_path(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir.join(format!("{name}.png"))
}

/// The checks themselves can fail: a page that asks for a script
/// elsewhere, and one with inline style and script, are reported, and the
/// outside request never left the host.
#[tokio::test]
async fn a_page_that_reaches_outside_or_breaks_its_csp_is_reported() {
    let page = wiremock::MockServer::start().await;
    let html = r#"<!doctype html><html><head>
        <script src="http://example.com/tracker.js"></script>
        <link rel="stylesheet" href="/missing.css">
        </head><body style="color: red"><script>document.title = 'ran';</script>x</body></html>"#;
    wiremock::Mock::given(wiremock::matchers::path("/page"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .insert_header(
                    "content-security-policy",
                    "default-src 'none'; script-src 'self' http://example.com; style-src 'self'",
                )
                .set_body_raw(html, "text/html"),
        )
        .mount(&page)
        .await;
    let browser = Browser::start().await;
    browser.goto(&format!("{}/page", page.uri())).await;
    let problems = browser.load_problems().await.join("\n");
    for expected in [
        "script from http://example.com/tracker.js",
        "script not loaded: http://example.com/tracker.js",
        "stylesheet not loaded",
        "CSP: style-src",
        "CSP: script-src",
    ] {
        assert!(
            problems.contains(expected),
            "{expected} not in:\n{problems}"
        );
    }
    assert_ne!(browser.run("return document.title").await, "ran");
    browser.close().await;
}
