//! A real headless Chromium for the console's tests, over WebDriver
//! (Debian's `chromium` and `chromium-driver`, installed by `make test`;
//! `CHROMIUM` and `CHROMEDRIVER` point elsewhere). Each test gets its own
//! chromedriver and profile ([`driver`]).
//!
//! The browser cannot reach anything but this host: every host name fails
//! to resolve (`--host-resolver-rules`), and every request not to loopback
//! goes to a proxy this harness owns, which answers nothing (Chromium's
//! own background traffic, to update and account services, ends there
//! too). [`Browser::assert_loaded_from_this_host`] then checks a page is
//! whole and local: every request the page made (from Chromium's network
//! log: documents, scripts, styles, images, fonts, fetches) was to its own
//! origin, every resource it references loaded, and no
//! Content-Security-Policy violation happened.

mod driver;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use driver::Driver;

/// How long a wait for the page lasts before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

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

/// One of chromedriver's own commands: a POST of `body` to
/// `session/{id}/{path}` (a DevTools call, the log).
#[derive(Debug)]
struct DriverCommand {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for DriverCommand {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/{}",
            session.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (reqwest::Method, Option<String>) {
        (reqwest::Method::POST, Some(self.body.to_string()))
    }
}

/// A headless Chromium and its driver; both end with it.
pub struct Browser {
    /// The WebDriver session, for what the helpers below do not cover.
    pub client: Client,
    outside: Outside,
    _driver: Driver,
}

/// The proxy every request not to loopback goes to: it reads where each
/// was going, records it and closes, so nothing goes further.
struct Outside {
    port: u16,
    reached: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Outside {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the proxy");
        let port = listener.local_addr().expect("its address").port();
        let reached = Arc::new(Mutex::new(Vec::new()));
        let record = reached.clone();
        let task = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let target = proxied_target(connection).await;
                    record.lock().expect("not poisoned").push(target);
                });
            }
        });
        Self {
            port,
            reached,
            task,
        }
    }
}

/// Where a proxied request was going: its request line's target (`CONNECT
/// host:443`, or `GET http://host/…`), or `?` when it never said.
async fn proxied_target(mut connection: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(2), connection.read(&mut head)).await;
    let n = read.ok().and_then(Result::ok).unwrap_or(0);
    let line = String::from_utf8_lossy(&head[..n]).into_owned();
    line.split_whitespace().nth(1).unwrap_or("?").to_string()
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn capabilities(profile: &Path, proxy_port: u16) -> Capabilities {
    let mut args: Vec<String> = [
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
        // No name resolves but this host's address.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ]
    .map(String::from)
    .to_vec();
    // Loopback bypasses a proxy by default; everything else goes to ours.
    args.push(format!("--proxy-server=http://127.0.0.1:{proxy_port}"));
    args.push(format!("--user-data-dir={}", profile.display()));
    let options = json!({
        "binary": driver::binary("CHROMIUM", "/usr/bin/chromium"),
        "args": args,
    });
    let mut caps = Capabilities::new();
    caps.insert("goog:chromeOptions".into(), options);
    // The network log: every request the pages make.
    caps.insert("goog:loggingPrefs".into(), json!({ "performance": "ALL" }));
    caps
}

impl Browser {
    /// A new browser, its CSP watch in place.
    pub async fn start() -> Self {
        let driver = Driver::start().await;
        let outside = Outside::start().await;
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities(&driver.profile(), outside.port))
            .connect(&driver.url())
            .await
            .expect("a Chromium session");
        let watch = DriverCommand {
            path: "goog/cdp/execute",
            body: json!({
                "cmd": "Page.addScriptToEvaluateOnNewDocument",
                "params": { "source": WATCH_CSP },
            }),
        };
        client.issue_cmd(watch).await.expect("CSP watch installed");
        Self {
            client,
            outside,
            _driver: driver,
        }
    }

    /// Where the requests that tried to leave the host were going (they
    /// reached the proxy and went no further), Chromium's own included.
    pub fn outside_requests(&self) -> Vec<String> {
        self.outside.reached.lock().expect("not poisoned").clone()
    }

    /// Opens `url` in the window.
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

    /// Clicks the element `css` selects, once it is there.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Waits until `script` returns `expected`.
    pub async fn wait_for(&self, script: &str, what: &str, expected: Value) {
        let started = Instant::now();
        loop {
            let got = self.run(script).await;
            if got == expected {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "never {what}: {got} rather than {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    /// Why the current page is not whole (empty when it is).
    async fn load_problems(&self) -> Vec<String> {
        // Everything the page started loading has finished first.
        let ready = "return document.readyState";
        self.wait_for(ready, "the page finished loading", "complete".into())
            .await;
        serde_json::from_value(self.run(PROBLEMS).await).expect("a list of problems")
    }

    /// The URLs the pages asked for since the last call, in order.
    async fn requested(&self) -> Vec<String> {
        // The entries of this kind since the last read.
        let read = DriverCommand {
            path: "se/log",
            body: json!({ "type": "performance" }),
        };
        let entries = self.client.issue_cmd(read).await.expect("network log");
        let entries = entries.as_array().expect("log entries").clone();
        entries
            .iter()
            .map(|e| e["message"].as_str().expect("a logged message"))
            .map(|m| serde_json::from_str::<Value>(m).expect("a DevTools event"))
            .filter_map(|m| {
                let params = &m["message"]["params"];
                match m["message"]["method"].as_str() {
                    Some("Network.requestWillBeSent") => params["request"]["url"].as_str(),
                    Some("Network.webSocketCreated") => params["url"].as_str(),
                    _ => None,
                }
                .map(String::from)
            })
            .collect()
    }

    /// Why the current page is not whole and local, empty when it is:
    /// [`Self::load_problems`], and every request made since the last look
    /// that went over the network to anywhere but the page's own origin.
    pub async fn problems(&self) -> Vec<String> {
        let mut problems = self.load_problems().await;
        let url = self.client.current_url().await.expect("url");
        let origin = url.origin().ascii_serialization();
        // Over the network, that is: not `data:`, nor Chromium's own
        // `chrome://` pages (its blank first tab).
        let networked = |u: &str| {
            ["http:", "https:", "ws:", "wss:"]
                .iter()
                .any(|s| u.starts_with(s))
        };
        let foreign = |u: &&String| networked(u) && !u.starts_with(&format!("{origin}/"));
        problems.extend(
            self.requested()
                .await
                .iter()
                .filter(|u| foreign(u))
                .map(|u| format!("asked for {u}")),
        );
        problems
    }

    /// The current page is whole and local ([`Self::problems`]).
    pub async fn assert_loaded_from_this_host(&self) {
        let problems = self.problems().await;
        let url = self.client.current_url().await.expect("url");
        assert!(problems.is_empty(), "{url} is not whole: {problems:?}");
    }

    /// A PNG of the window, written to `path` (for the notes).
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(path, png).expect("screenshot written");
    }

    /// Ends the session, then the driver and its browsers.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// Where a test's screenshots go: `target/tmp/screenshots/`, kept after
/// the run.
pub fn screenshot_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir.join(format!("{name}.png"))
}

/// The checks themselves can fail: a page that asks for a script
/// elsewhere, and one with inline style and script, are reported, and the
/// outside request is caught by the harness's proxy.
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
    let problems = browser.problems().await.join("\n");
    for expected in [
        "asked for http://example.com/tracker.js",
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
    let outside = browser.outside_requests();
    assert!(
        outside.iter().any(|t| t.contains("example.com")),
        "the request for example.com reached the harness's proxy, and no further: {outside:?}"
    );
    browser.close().await;
}
