//! `publish` and `load-test`: the command-line side (arguments, progress
//! bars, output) of the library's [`crate::tools::load`].

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::startup::reach;
use crate::tools::load::{self, Ledger, LoadReport, Mode, PublishPlan, RunInfo, TerminalWatch};
use crate::transport::Transport;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Publishers when `--concurrency` is not given.
const DEFAULT_CONCURRENCY: u16 = 4;

/// What to publish (shared by `publish` and `load-test`).
#[derive(Args)]
pub struct PublishArgs {
    /// Events per second across all publishers (0: as fast as the broker takes them).
    /// For `load-test`, with --burst only.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    rate: f64,
    /// Share of partners (0–1) that alliances will refuse (email at @reject.test),
    /// so their sagas compensate. Needs the simulator (`saga-orchestrator simulate`).
    #[arg(long, default_value_t = 0.0, value_parser = super::ratio)]
    fail_ratio: f64,
    /// One correlation id for every event (default: each partner's own, its partner_id).
    #[arg(long)]
    correlation_id: Option<String>,
    /// Publishers working side by side [default: 4]. For `load-test`, with --burst only.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: Option<u16>,
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
    /// Closed loop: keep this many sagas between published event and terminal
    /// event on saga-events, publishing a new event only as one ends.
    #[arg(long, default_value_t = 64, conflicts_with = "burst",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    in_flight: u64,
    /// Burst (open loop) instead: publish every event (at --rate, by --concurrency
    /// publishers), then wait for them all.
    #[arg(long)]
    burst: bool,
    #[command(flatten)]
    publish: PublishArgs,
    /// Give up on a saga with no terminal event this many seconds after its
    /// event was published (and publish no more).
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
        concurrency: usize::from(args.concurrency.unwrap_or(DEFAULT_CONCURRENCY)),
        fail_ratio: args.fail_ratio,
        correlation_id: args.correlation_id.clone(),
        run_id: load::run_id(),
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

fn correlation_text(plan: &PublishPlan) -> String {
    match &plan.correlation_id {
        Some(id) => format!("correlation_id {id}"),
        None => "each partner's correlation_id is its partner_id".to_string(),
    }
}

pub async fn publish(cmd: &PublishCmd, settings: &Settings) -> anyhow::Result<ExitCode> {
    let plan = plan(cmd.count, &cmd.publish);
    let transport = reach::connect_broker(settings).await?;
    let progress = bar(plan.count, "published", false);
    let counter = progress.clone();
    let published = load::publish(
        transport,
        &settings.broker.channels.partner_events,
        load::events(&plan),
        &plan,
        move |chunk| counter.inc(chunk.len() as u64),
    )
    .await?;
    progress.finish_and_clear();
    println!(
        "published {} PartnerCreated events to {} in {:.2} s (partners load-{}-…; {})",
        published.events.len(),
        settings.broker.channels.partner_events,
        published.took.as_secs_f64(),
        plan.run_id,
        correlation_text(&plan)
    );
    Ok(ExitCode::SUCCESS)
}

/// The closed loop paces itself: a rate or publishers of its own would
/// mean nothing there, so asking for them is an error, not ignored.
fn check_mode(cmd: &LoadTestCmd) -> anyhow::Result<()> {
    if !cmd.burst && (cmd.publish.rate > 0.0 || cmd.publish.concurrency.is_some()) {
        anyhow::bail!(
            "--rate and --concurrency pace the burst mode: add --burst (the closed loop publishes as sagas end, --in-flight at a time)"
        );
    }
    Ok(())
}

pub async fn load_test(cmd: &LoadTestCmd, settings: &Settings) -> anyhow::Result<ExitCode> {
    check_mode(cmd)?;
    // Ctrl-C or SIGTERM from here on ends the run with its reader removed;
    // polled once now so the handlers are in place before anything opens.
    let mut interrupted = Box::pin(crate::startup::shutdown_signal());
    let _ = futures::FutureExt::now_or_never(&mut interrupted);
    let plan = plan(cmd.events, &cmd.publish);
    let channels = &settings.broker.channels;
    let mode = if cmd.burst {
        Mode::Burst
    } else {
        Mode::ClosedLoop
    };
    let in_flight = usize::try_from(cmd.in_flight).unwrap_or(usize::MAX);
    if !cmd.json {
        let how = match mode {
            Mode::ClosedLoop => format!("closed loop, {in_flight} in flight"),
            Mode::Burst => "burst".to_string(),
        };
        println!(
            "load test {}: {} events to {} on {} ({how}), terminal events read on {}; {}",
            plan.run_id,
            plan.count,
            channels.partner_events,
            settings.broker.url.redacted(),
            channels.saga_events,
            correlation_text(&plan),
        );
    }
    let transport = reach::connect_broker(settings).await?;
    // Open before anything is published, so no terminal event is missed.
    let mut watch = TerminalWatch::open(
        &settings.broker.url,
        &channels.saga_events,
        settings.limits.max_message_bytes,
    )
    .await?;
    let timeout = Duration::from_secs(cmd.timeout_secs);
    let run = drive(cmd, &plan, mode, in_flight, transport, settings, &mut watch);
    // Interrupted or not, the reader's subscription is removed.
    let finished = tokio::select! {
        finished = run => finished,
        () = &mut interrupted => Err(anyhow::anyhow!("interrupted: no report")),
    };
    let broker_repeats = watch.broker_repeats();
    watch.close().await;
    let finished = finished?;
    let info = RunInfo {
        run_id: plan.run_id.clone(),
        mode,
        in_flight: (mode == Mode::ClosedLoop).then_some(in_flight),
        correlation_id: plan.correlation_id.clone(),
        timeout,
        publish: finished.publish,
        broker_repeats,
    };
    print_report(cmd, &LoadReport::new(&info, &finished.ledger))
}

/// The report, and the exit status it deserves.
fn print_report(cmd: &LoadTestCmd, report: &LoadReport) -> anyhow::Result<ExitCode> {
    if cmd.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.render());
    }
    if !report.is_clean() {
        eprintln!(
            "error: {} of {} sagas reached a terminal state ({} never published, {} with no terminal event within {} s), {} duplicates",
            report.settled,
            report.events,
            report.events.saturating_sub(report.published),
            report.unfinished,
            cmd.timeout_secs,
            report.duplicates
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the chosen mode with a progress bar of settled sagas.
async fn drive(
    cmd: &LoadTestCmd,
    plan: &PublishPlan,
    mode: Mode,
    in_flight: usize,
    transport: Arc<dyn Transport>,
    settings: &Settings,
    watch: &mut TerminalWatch,
) -> anyhow::Result<load::Finished> {
    let settled = bar(plan.count, "settled", cmd.json);
    let mut progress = {
        let settled = settled.clone();
        move |l: &Ledger| {
            settled.set_position(l.settled() as u64);
            settled.set_message(format!("({} in flight)", l.in_flight()));
        }
    };
    let channel = &settings.broker.channels.partner_events;
    let timeout = Duration::from_secs(cmd.timeout_secs);
    let events = load::events(plan);
    let finished = match mode {
        Mode::ClosedLoop => {
            load::closed_loop(
                transport,
                channel,
                events,
                in_flight,
                timeout,
                watch,
                &mut progress,
            )
            .await?
        }
        Mode::Burst => {
            load::burst(
                transport,
                channel,
                events,
                plan,
                timeout,
                watch,
                &mut progress,
            )
            .await?
        }
    };
    settled.finish_and_clear();
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_must_be_non_negative_numbers() {
        assert_eq!(non_negative("200"), Ok(200.0));
        assert!(non_negative("-1").is_err());
        assert!(non_negative("fast").is_err());
        assert!(non_negative("inf").is_err());
    }
}
