//! `publish` and `load-test`: the command-line side (arguments, progress
//! bars, output) of the library's [`crate::tools::load`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;
use crate::tools::load::{self, PublishPlan};
use crate::transport;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use uuid::Uuid;

/// What to publish (shared by `publish` and `load-test`).
#[derive(Args)]
pub struct PublishArgs {
    /// Events per second across all publishers (0: as fast as the broker takes them).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    rate: f64,
    /// Share of partners (0–1) that alliances will refuse (email at @reject.test),
    /// so their sagas compensate. Needs the simulator (`saga-orchestrator simulate`).
    #[arg(long, default_value_t = 0.0, value_parser = super::ratio)]
    fail_ratio: f64,
    /// Correlation id shared by every event (default: a fresh `load-…` id).
    #[arg(long)]
    correlation_id: Option<String>,
    /// Publishers working side by side.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
}

#[derive(Args)]
pub struct PublishCmd {
    /// How many PartnerCreated events to publish.
    #[arg(long, default_value_t = 10)]
    count: usize,
    #[command(flatten)]
    publish: PublishArgs,
}

#[derive(Args)]
pub struct LoadTestCmd {
    /// How many PartnerCreated events to publish.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    #[command(flatten)]
    publish: PublishArgs,
    /// The orchestrator's API, where the sagas are read back (default: from API_ADDR).
    #[arg(long)]
    api: Option<String>,
    /// Give up waiting for sagas after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Print the summary as JSON (for machines) instead of text.
    #[arg(long)]
    json: bool,
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r >= 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "expected a number of events per second (0 or more), got {s:?}"
        )),
    }
}

fn plan(count: usize, args: &PublishArgs) -> PublishPlan {
    PublishPlan {
        count,
        rate: (args.rate > 0.0).then_some(args.rate),
        concurrency: usize::from(args.concurrency),
        fail_ratio: args.fail_ratio,
        correlation_id: args
            .correlation_id
            .clone()
            .unwrap_or_else(|| format!("load-{}", &Uuid::new_v4().simple().to_string()[..12])),
    }
}

fn bar(len: usize, what: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = format!("  {{bar:40.green/dim}} {{pos:>6}}/{{len}} {what}  {{per_sec}} {{msg}}");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

async fn publish_events(
    settings: &Settings,
    plan: &PublishPlan,
    events: Vec<crate::envelope::Envelope>,
    quiet: bool,
) -> anyhow::Result<load::Published> {
    let transport = transport::from_settings(settings).await?;
    let progress = bar(events.len(), "published", quiet);
    let counter = progress.clone();
    let published = load::publish(
        transport,
        &settings.broker.channels.partner_events,
        events,
        plan,
        move |n| counter.inc(n as u64),
    )
    .await?;
    progress.finish_and_clear();
    Ok(published)
}

pub async fn publish(cmd: &PublishCmd, settings: &Settings) -> anyhow::Result<ExitCode> {
    let plan = plan(cmd.count, &cmd.publish);
    let published = publish_events(settings, &plan, load::events(&plan), false).await?;
    println!(
        "published {} PartnerCreated events to {} in {:.2} s (correlation_id {})",
        published.events.len(),
        settings.broker.channels.partner_events,
        published.took.as_secs_f64(),
        plan.correlation_id
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn load_test(cmd: &LoadTestCmd, settings: &Settings) -> anyhow::Result<ExitCode> {
    let plan = plan(cmd.events, &cmd.publish);
    let api = cmd
        .api
        .clone()
        .unwrap_or_else(|| api_url(settings.api.addr));
    if !cmd.json {
        println!(
            "load test {}: {} events to {} on {}, sagas read back from {api}",
            plan.correlation_id,
            plan.count,
            settings.broker.channels.partner_events,
            settings.broker.url.redacted(),
        );
    }
    let events = load::events(&plan);
    let partners: HashSet<String> = events
        .iter()
        .filter_map(|e| e.partner_id().map(str::to_string))
        .collect();
    // Publishing and settling overlap: watch the sagas while publishing.
    let mut publishing = {
        let settings = settings.clone();
        let plan = plan.clone();
        let quiet = cmd.json;
        tokio::spawn(async move { publish_events(&settings, &plan, events, quiet).await })
    };
    let settled = bar(plan.count, "settled", cmd.json);
    let watcher = settled.clone();
    let timeout = Duration::from_secs(cmd.timeout_secs);
    let waiting = load::wait_for_sagas(
        &api,
        &plan.correlation_id,
        &partners,
        timeout,
        move |done, seen| {
            watcher.set_position(done as u64);
            watcher.set_message(format!("({seen} recorded)"));
        },
    );
    tokio::pin!(waiting);
    // A failed publish ends the run at once rather than after the timeout.
    let (published, waited) = tokio::select! {
        published = &mut publishing => {
            let published = published??;
            (published, waiting.await?)
        }
        waited = &mut waiting => (publishing.await??, waited?),
    };
    settled.finish_and_clear();
    let report = load::collect(
        &plan.correlation_id,
        &published.events,
        published.took,
        &waited.sagas,
    );
    if cmd.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if !waited.complete {
        eprintln!(
            "error: {} of {} sagas settled within {} s",
            waited.settled, plan.count, cmd.timeout_secs
        );
    }
    Ok(if report.is_clean() && waited.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The API's base URL from `API_ADDR`; a wildcard address means this host.
fn api_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    format!("http://{host}:{}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_url_comes_from_api_addr() {
        assert_eq!(
            api_url("0.0.0.0:8000".parse().unwrap()),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            api_url("10.1.2.3:9000".parse().unwrap()),
            "http://10.1.2.3:9000"
        );
    }

    #[test]
    fn rates_must_be_non_negative_numbers() {
        assert_eq!(non_negative("200"), Ok(200.0));
        assert!(non_negative("-1").is_err());
        assert!(non_negative("fast").is_err());
        assert!(non_negative("inf").is_err());
    }
}
