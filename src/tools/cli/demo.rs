//! `demo`: everything embedded (SQLite, in-memory broker, simulators), a
//! batch of events through the real orchestrator, and the outcome.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::Behaviour;
use crate::startup::shutdown_signal;
use crate::tools::demo::{self, DemoOptions, DemoReport};
use crate::tools::simulator::SimulatorConfig;

/// `demo`'s options.
#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub behaviour: Behaviour,
    /// How many PartnerCreated events to publish.
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// The orchestrator's API port (a free one is used if it is taken).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Where the demo's SQLite store goes (recreated on each run).
    #[arg(long, default_value = ".dev/demo")]
    pub data_dir: PathBuf,
    /// Keep the orchestrator and its API running after the summary, until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Stop waiting for sagas to settle after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

/// Runs the demo; fails when a saga did not settle or a check found a problem.
pub async fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let options = DemoOptions {
        count: args.count,
        simulator: SimulatorConfig::from(&args.behaviour),
        data_dir: args.data_dir.clone(),
        api_addr: api_addr(args.port),
        timeout: Duration::from_secs(args.timeout_secs),
    };
    print_intro(args);
    let bar = ProgressBar::new(args.count as u64);
    bar.set_style(
        ProgressStyle::with_template("  {bar:40.green/dim} {pos:>5}/{len} settled  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let running = demo::run(&options, |p| {
        bar.set_position(p.done() as u64);
        bar.set_message(format!(
            "completed {} · compensated {} · failed {}",
            p.completed, p.compensated, p.failed
        ));
    })
    .await?;
    bar.finish_and_clear();
    let report = &running.report;
    print!("{}", demo::render(report));
    let ok = report.problems.is_empty() && report.progress.done() == report.progress.total;
    if args.keep {
        print_keep_hints(report);
        shutdown_signal().await;
    } else {
        println!("Run `make demo ARGS=--keep` (or `saga-orchestrator demo --keep`) to keep its API and console up at {}.", report.api);
    }
    running.stop().await;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The wanted loopback port, or any free one if it is taken.
fn api_addr(port: u16) -> SocketAddr {
    let wanted = SocketAddr::from(([127, 0, 0, 1], port));
    match std::net::TcpListener::bind(wanted) {
        Ok(_) => wanted,
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

fn print_intro(args: &DemoArgs) {
    let b = &args.behaviour;
    println!(
        "saga-orchestrator demo: {} PartnerCreated events through the real orchestrator, embedded:\n  SQLite store in {}, in-memory broker, simulated alliances and integrations on loopback\n  ({:.0}% of alliances refused, {:.0}% of calls answered 503, {:.0}% of partners cannot be deleted, {} ms latency)\n",
        args.count,
        args.data_dir.display(),
        b.reject_ratio * 100.0,
        b.transient_ratio * 100.0,
        b.delete_fail_ratio * 100.0,
        b.latency_ms
    );
}

fn print_keep_hints(report: &DemoReport) {
    println!("\nThe orchestrator is still running; explore it (Ctrl-C to stop):");
    println!("  curl -s '{}/sagas?state=failed' | jq", report.api);
    println!("  curl -s {}/sagas/<saga_id> | jq", report.api);
    println!(
        "  curl -s -XPOST {}/sagas/<saga_id>/retry -H 'Authorization: Bearer demo'",
        report.api
    );
    println!(
        "  curl -s -XPOST {}/sagas -H 'Authorization: Bearer demo' -H 'content-type: application/json' \\\n      -d '{{\"payload\":{{\"partner_id\":\"p-try\",\"name\":\"Try\"}}}}'",
        report.api
    );
    println!("  curl -s {}/metrics", report.api);
}
