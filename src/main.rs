//! `saga-orchestrator`: parse the command line, load the settings, set up
//! logging, dispatch to the subcommand. Everything else lives in the
//! library: the service beside it in `src/`, the tools in `src/tools/`.

use std::process::ExitCode;

use clap::Parser;
use saga_orchestrator::config::Settings;
use saga_orchestrator::tools::cli::{self, Cli, Command};

fn main() -> ExitCode {
    // A missing .env is normal; a broken one is worth saying.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("error: cannot read .env: {e}");
            return ExitCode::from(2);
        }
    }
    let cli = Cli::parse();
    let command = cli.command;
    let settings = if command.reads_settings() {
        match Settings::load(cli.config.as_deref()) {
            Ok(settings) => Some(settings),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    // Held to the end of main: dropping it flushes the spans not yet exported.
    let _telemetry = match command.init_telemetry(settings.as_ref()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Said once: as a log line where logs are JSON for a collector, as
    // `error: …` for a person otherwise.
    let json_logs = command.logs_as_json(settings.as_ref());
    let outcome = runtime.block_on(dispatch(command, settings));
    // Dropping a runtime waits for its blocking tasks (a DNS lookup of a
    // host that is gone, say) without end: the exit must not.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(code) => code,
        Err(e) if json_logs => {
            tracing::error!(error = %e, "exiting");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, settings: Option<Settings>) -> anyhow::Result<ExitCode> {
    let settings = || {
        settings
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("settings were not loaded"))
    };
    match &command {
        Command::Serve(args) => cli::service::serve(args, settings()?).await,
        Command::Migrate => cli::service::migrate(settings()?).await,
        Command::Simulate(args) => cli::simulate::run(args, settings()?).await,
        Command::Demo(args) => cli::demo::run(args).await,
        Command::Publish(cmd) => cli::load::publish(cmd, settings()?).await,
        Command::LoadTest(cmd) => cli::load::load_test(cmd, settings()?).await,
        Command::Monitor(cmd) => cli::monitor::run(cmd, settings()?).await,
        Command::Dlq(cmd) => cli::dlq::run(cmd).await,
        Command::Sagas(cmd) => cli::sagas::run(cmd).await,
    }
}
