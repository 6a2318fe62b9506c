//! The command line: one binary, every subcommand. `main.rs` parses it and
//! dispatches here; each subcommand's arguments and body live in their own
//! file.
//!
//! - [`service`]: `serve` and `migrate`, the service itself.
//! - [`simulate`]: both participants as local simulators.
//! - [`demo`]: the embedded demo.
//! - [`load`]: `publish` and `load-test`.
//! - [`monitor`]: the live view of the channels.
//! - [`dlq`], [`sagas`]: operator actions through the API (dead letters,
//!   retries, bulk jobs), sharing [`api_client`].

pub mod api_client;
pub mod demo;
pub mod dlq;
pub mod load;
pub mod monitor;
pub mod sagas;
pub mod service;
pub mod simulate;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{LogFormat, Settings};
use crate::telemetry::{self, TracingGuard};
use crate::tools::simulator::SimulatorConfig;

/// The command line of `saga-orchestrator`.
#[derive(Parser)]
#[command(
    name = "saga-orchestrator",
    version,
    about = "Runs a saga per PartnerCreated event: alliance, or compensation",
    // A bare call shows this usage: starting a server is asked for by name.
    arg_required_else_help = true,
    after_help = SETTINGS_HELP
)]
pub struct Cli {
    /// Settings file (TOML; keys as the environment variables, any case).
    /// Environment variables override it.
    #[arg(long, global = true, env = "SAGA_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Where settings come from, said under every `--help`.
const SETTINGS_HELP: &str = "Settings come from the environment, read after a .env file in the \
current directory and an optional --config file (the environment wins). \
Copy .env.example to .env to start; every setting is listed in docs/contract.md §6.";

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the orchestrator: consumer, sagas, API.
    #[command(after_help = SETTINGS_HELP)]
    Serve(service::ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Run both participants as local simulators (HTTP, and the broker with --broker).
    Simulate(simulate::SimulateArgs),
    /// Everything embedded (SQLite, in-memory broker, simulators): run a batch and show the outcome.
    Demo(demo::DemoArgs),
    /// Publish test PartnerCreated events on the broker, as integrations would.
    Publish(load::PublishCmd),
    /// Drive sagas through the service (closed loop, or --burst) and report throughput and latency.
    LoadTest(load::LoadTestCmd),
    /// Live view of every channel's messages, without taking any from the orchestrator.
    Monitor(monitor::MonitorCmd),
    /// Dead letters through the API: list, show, redrive (one, or --all as a job), discard.
    Dlq(dlq::DlqCmd),
    /// Sagas through the API: retry failed ones, one or in bulk as a job.
    Sagas(sagas::SagasCmd),
}

impl Command {
    /// Whether the command reads the settings: the demo is the same on
    /// every machine, so it reads none.
    pub fn reads_settings(&self) -> bool {
        // The operator commands are clients of the API: its settings are
        // the service's business, not theirs.
        !matches!(self, Command::Demo(_) | Command::Dlq(_) | Command::Sagas(_))
    }

    /// Whether this command's logs are JSON lines (for a collector): the
    /// service's, with `LOG_FORMAT=json`; the tools always write text.
    pub fn logs_as_json(&self, settings: Option<&Settings>) -> bool {
        let tool = matches!(
            self,
            Command::Monitor(_)
                | Command::Publish(_)
                | Command::LoadTest(_)
                | Command::Demo(_)
                | Command::Dlq(_)
                | Command::Sagas(_)
        );
        !tool && settings.is_some_and(|s| s.telemetry.log_format == LogFormat::Json)
    }

    /// Sets up logging for this command. The service logs as configured;
    /// the tools keep their standard output for their own report.
    pub fn init_telemetry(
        &self,
        settings: Option<&Settings>,
    ) -> Result<Option<TracingGuard>, telemetry::TelemetryError> {
        match (self, settings) {
            (Command::Monitor(_), _) => {
                monitor::init_tracing();
                Ok(None)
            }
            (
                Command::Publish(_) | Command::LoadTest(_) | Command::Dlq(_) | Command::Sagas(_),
                _,
            ) => {
                telemetry::init_tool_tracing();
                Ok(None)
            }
            (_, Some(s)) => {
                telemetry::init_tracing(s.telemetry.log_format, &s.telemetry.log_filter).map(Some)
            }
            (_, None) => Ok(telemetry::init_tracing(
                LogFormat::Pretty,
                &std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .ok()),
        }
    }
}

/// How the simulated participants behave (`simulate` and `demo`).
#[derive(Args, Clone)]
pub struct Behaviour {
    /// Added to every participant answer, in milliseconds.
    #[arg(long, default_value_t = 2)]
    pub latency_ms: u64,
    /// Share of sagas whose alliance is refused (business rejection → compensation).
    #[arg(long, default_value_t = 0.1, value_parser = ratio)]
    pub reject_ratio: f64,
    /// Share of calls answered 503 (over the broker: left unanswered).
    #[arg(long, default_value_t = 0.05, value_parser = ratio)]
    pub transient_ratio: f64,
    /// Share of partners whose deletion always fails (compensation → failed).
    #[arg(long, default_value_t = 0.2, value_parser = ratio)]
    pub delete_fail_ratio: f64,
    /// Seed for the random choices, to repeat a run.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
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

/// A clap value parser for shares: a number from 0 to 1.
pub(crate) fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("expected a ratio from 0 to 1, got {s:?}")),
    }
}
