//! The operator subcommands' client of the service's HTTP API (`dlq`,
//! `sagas`): the admin token from `ADMIN_TOKEN` in the environment (never
//! a flag, so it stays out of shell histories and `ps`), errors shown as
//! the API's own `detail`, and bulk jobs watched to the end with progress.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::Value;

/// Where the API is; every operator subcommand takes these.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// The orchestrator's API.
    #[arg(
        long = "api",
        env = "SAGA_API_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub url: String,
}

/// An admin client of one API.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ApiClient {
    /// A client of `args.url` with `ADMIN_TOKEN` from the environment.
    pub fn from_env(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = std::env::var("ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("set ADMIN_TOKEN to an admin token of the service"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            base: args.url.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// `method path` with an optional JSON body; the answer's JSON, or the
    /// API's error as the error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the API at {}", self.base))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = answer["detail"].as_str().unwrap_or("no detail");
            bail!("{method} {path}: {status}: {detail}");
        }
        Ok(answer)
    }

    /// Polls `GET /jobs/{job_id}` with a progress bar until the job is no
    /// longer running; returns it as it ended.
    pub async fn watch_job(&self, job_id: &str) -> anyhow::Result<Value> {
        let path = format!("/jobs/{job_id}");
        let mut job = self.call(Method::GET, &path, None).await?;
        let bar = ProgressBar::new(count(&job, "matched"));
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(job["name"].as_str().unwrap_or("job").to_string());
        loop {
            let settled = count(&job, "done") + count(&job, "skipped") + count(&job, "errors");
            bar.set_position(settled);
            if job["state"] != "running" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            job = self.call(Method::GET, &path, None).await?;
        }
        bar.finish_and_clear();
        Ok(job)
    }
}

fn count(job: &Value, field: &str) -> u64 {
    job[field].as_u64().unwrap_or(0)
}

/// The line that sums a finished job up.
pub fn job_summary(job: &Value) -> String {
    format!(
        "job {} ({}) {}: {} matched, {} done, {} skipped, {} errors",
        job["job_id"].as_str().unwrap_or("?"),
        job["name"].as_str().unwrap_or("?"),
        job["state"].as_str().unwrap_or("?"),
        count(job, "matched"),
        count(job, "done"),
        count(job, "skipped"),
        count(job, "errors"),
    )
}

/// Starts (or previews) a bulk job at `path` with `body`, watches it and
/// says how it ended; a job that did not end `done` is a failure.
pub async fn run_job(
    client: &ApiClient,
    path: &str,
    body: &Value,
    dry_run: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let started = client.call(Method::POST, path, Some(body)).await?;
    if dry_run {
        println!(
            "{} would be touched (dry run: nothing done)",
            count(&started, "matched")
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let job_id = started["job_id"]
        .as_str()
        .ok_or_else(|| anyhow!("the API answered no job_id: {started}"))?;
    if started["duplicate"] == true {
        eprintln!("the same job was started before: watching it (nothing is done twice)");
    }
    let job = client.watch_job(job_id).await?;
    println!("{}", job_summary(&job));
    Ok(if job["state"] == "done" {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// What every bulk command takes besides its own filter.
#[derive(Args, Clone)]
pub struct BulkArgs {
    /// Only what failed (a saga: was parked) at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// … and before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many.
    #[arg(long)]
    pub max: Option<u32>,
    /// Only count what would be touched.
    #[arg(long)]
    pub dry_run: bool,
}

impl BulkArgs {
    /// The job body: `filter` with the time range, `max`, `name`, `reason`.
    pub fn body(&self, mut filter: Value, name: Option<&str>, reason: &str) -> Value {
        put(&mut filter, "since", self.since.clone());
        put(&mut filter, "until", self.until.clone());
        let mut body =
            serde_json::json!({ "filter": filter, "reason": reason, "dry_run": self.dry_run });
        put(&mut body, "name", name);
        put(&mut body, "max", self.max);
        body
    }
}

/// Puts `value` under `key` of a JSON object when given.
pub fn put(object: &mut Value, key: &str, value: Option<impl Into<Value>>) {
    if let (Some(v), Some(map)) = (value, object.as_object_mut()) {
        map.insert(key.to_string(), v.into());
    }
}
