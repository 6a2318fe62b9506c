//! `saga-orchestrator`: parse the command line, load settings, set up
//! telemetry, run the subcommand. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use saga_orchestrator::config::{LogFormat, Settings};
use saga_orchestrator::demo::{self, DemoOptions};
use saga_orchestrator::simulator::{self, Simulator, SimulatorConfig};
use saga_orchestrator::startup::Application;
use saga_orchestrator::{telemetry, transport};
use tokio_util::sync::CancellationToken;

mod load_cli;
mod monitor_cli;

#[derive(Parser)]
#[command(
    name = "saga-orchestrator",
    version,
    about = "Runs a saga per PartnerCreated event: alliance, or compensation"
)]
struct Cli {
    /// Settings file (TOML; keys as the environment variables, any case).
    /// Environment variables override it.
    #[arg(long, global = true, env = "SAGA_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the orchestrator: consumer, sagas, API (the default).
    Serve {
        /// Do not apply database migrations on start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Run both participants as local simulators (HTTP, and the broker with --broker).
    Simulate(SimulateArgs),
    /// Everything embedded (SQLite, in-memory broker, simulators): run a batch and show the outcome.
    Demo(DemoArgs),
    /// Publish test PartnerCreated events on the broker, as integrations would.
    Publish(load_cli::PublishCmd),
    /// Publish at a rate, wait for every saga to settle, report throughput and latency.
    LoadTest(load_cli::LoadTestCmd),
    /// Live view of every channel's messages, without taking any from the orchestrator.
    Monitor(monitor_cli::MonitorCmd),
}

/// How the simulated participants behave.
#[derive(Args, Clone)]
struct Behaviour {
    /// Added to every participant answer, in milliseconds.
    #[arg(long, default_value_t = 2)]
    latency_ms: u64,
    /// Share of sagas whose alliance is refused (business rejection → compensation).
    #[arg(long, default_value_t = 0.1, value_parser = ratio)]
    reject_ratio: f64,
    /// Share of calls answered 503 (over the broker: left unanswered).
    #[arg(long, default_value_t = 0.05, value_parser = ratio)]
    transient_ratio: f64,
    /// Share of partners whose deletion always fails (compensation → failed).
    #[arg(long, default_value_t = 0.2, value_parser = ratio)]
    delete_fail_ratio: f64,
    /// Seed for the random choices, to repeat a run.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

impl From<&Behaviour> for SimulatorConfig {
    fn from(b: &Behaviour) -> Self {
        Self {
            latency: Duration::from_millis(b.latency_ms),
            reject_ratio: b.reject_ratio,
            transient_ratio: b.transient_ratio,
            delete_fail_ratio: b.delete_fail_ratio,
            seed: b.seed,
        }
    }
}

#[derive(Args)]
struct SimulateArgs {
    #[command(flatten)]
    behaviour: Behaviour,
    /// Where the simulated alliances service listens.
    #[arg(long, default_value = "127.0.0.1:8002")]
    alianzas_addr: SocketAddr,
    /// Where the simulated integrations service listens.
    #[arg(long, default_value = "127.0.0.1:8001")]
    integraciones_addr: SocketAddr,
    /// Also answer commands on the broker named by BROKER_URL.
    #[arg(long)]
    broker: bool,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    behaviour: Behaviour,
    /// How many PartnerCreated events to publish.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// The orchestrator's API port (a free one is used if it is taken).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Where the demo's SQLite store goes (recreated on each run).
    #[arg(long, default_value = ".dev/demo")]
    data_dir: PathBuf,
    /// Keep the orchestrator and its API running after the summary, until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Stop waiting for sagas to settle after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

pub(crate) fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("expected a ratio from 0 to 1, got {s:?}")),
    }
}

fn main() -> ExitCode {
    // A missing .env is normal; a broken one is worth saying.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("error: cannot read .env: {e}");
            return ExitCode::from(2);
        }
    }
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve { no_migrate: false });
    let settings = match &command {
        // The demo is the same on every machine: it reads no settings.
        Command::Demo(_) => None,
        _ => match Settings::load(cli.config.as_deref()) {
            Ok(settings) => Some(settings),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    // Held to the end of main: dropping it flushes the spans not yet exported.
    let _telemetry = match &settings {
        // The monitor's standard output is the messages: logs go elsewhere.
        Some(_) if matches!(command, Command::Monitor(_)) => {
            monitor_cli::init_tracing();
            None
        }
        Some(_) if matches!(command, Command::Publish(_) | Command::LoadTest(_)) => {
            telemetry::init_tool_tracing();
            None
        }
        Some(s) => match telemetry::init_tracing(s.log_format, &s.log_filter) {
            Ok(guard) => Some(guard),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => telemetry::init_tracing(
            LogFormat::Pretty,
            &std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .ok(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match (command, settings) {
            (Command::Serve { no_migrate }, Some(mut settings)) => {
                settings.migrate_on_start &= !no_migrate;
                serve(&settings).await
            }
            (Command::Migrate, Some(settings)) => migrate(&settings).await,
            (Command::Simulate(args), Some(settings)) => simulate(&args, &settings).await,
            (Command::Demo(args), _) => run_demo(&args).await,
            (Command::Publish(cmd), Some(settings)) => load_cli::publish(&cmd, &settings).await,
            (Command::LoadTest(cmd), Some(settings)) => load_cli::load_test(&cmd, &settings).await,
            (Command::Monitor(cmd), Some(settings)) => monitor_cli::run(&cmd, &settings).await,
            (_, None) => Err(anyhow::anyhow!("settings were not loaded")),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // Our errors carry their cause in their message: print it once.
            tracing::error!(error = %e, "exiting");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: &Settings) -> anyhow::Result<ExitCode> {
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal())
        .await
        .map_err(|e| anyhow::anyhow!("API server failed: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = saga_orchestrator::store::connect(&settings.database_url, 1).await?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}

async fn simulate(args: &SimulateArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let sim = Simulator::new(SimulatorConfig::from(&args.behaviour));
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
    };
    let alianzas = bind(args.alianzas_addr).await?;
    let integraciones = bind(args.integraciones_addr).await?;
    let stop = CancellationToken::new();
    let http = tokio::spawn(simulator::http::serve(
        sim.clone(),
        alianzas,
        integraciones,
        stop.clone(),
    ));
    println!(
        "simulated alliances:     http://{}  (POST /alliances, GET /stats)",
        args.alianzas_addr
    );
    println!(
        "simulated integrations:  http://{}  (DELETE /partners/{{id}}, GET /stats)",
        args.integraciones_addr
    );
    let broker = if args.broker {
        // The participants' own consumer group, apart from the orchestrator's.
        let mut own = settings.clone();
        own.subscription = "saga-participants".into();
        let transport = transport::from_settings(&own).await?;
        println!(
            "answering commands on {} and {}",
            own.channels.alliance_commands, own.channels.integration_commands
        );
        Some(tokio::spawn(simulator::broker::run(
            sim.clone(),
            transport,
            own.channels.clone(),
            own.max_message_bytes,
            stop.clone(),
        )))
    } else {
        None
    };
    shutdown_signal().await;
    stop.cancel();
    let _ = http.await;
    if let Some(broker) = broker {
        let _ = broker.await;
    }
    println!("{}", serde_json::to_string_pretty(&sim.stats())?);
    Ok(ExitCode::SUCCESS)
}

async fn run_demo(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let wanted = SocketAddr::from(([127, 0, 0, 1], args.port));
    let api_addr = match std::net::TcpListener::bind(wanted) {
        Ok(_) => wanted,
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let options = DemoOptions {
        count: args.count,
        simulator: SimulatorConfig::from(&args.behaviour),
        data_dir: args.data_dir.clone(),
        api_addr,
        timeout: Duration::from_secs(args.timeout_secs),
    };
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
        shutdown_signal().await;
    } else {
        println!("Run `make demo ARGS=--keep` (or `saga-orchestrator demo --keep`) to keep its API up at {}.", report.api);
    }
    running.stop().await;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Ctrl-C or SIGTERM (what container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
