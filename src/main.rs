//! `saga-orchestrator`: parse the command line, load settings, set up
//! telemetry, run the subcommand. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use saga_orchestrator::config::Settings;
use saga_orchestrator::startup::Application;
use saga_orchestrator::telemetry;

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
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing(settings.log_format, &settings.log_filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve { no_migrate: false }) {
            Command::Serve { no_migrate } => {
                settings.migrate_on_start &= !no_migrate;
                serve(&settings).await
            }
            Command::Migrate => migrate(&settings).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our errors carry their cause in their message: print it once.
            tracing::error!(error = %e, "exiting");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: &Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal())
        .await
        .map_err(|e| anyhow::anyhow!("API server failed: {e}"))
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let store = saga_orchestrator::store::connect(&settings.database_url, 1).await?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(())
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
