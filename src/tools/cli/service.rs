//! `serve` and `migrate`: the service itself, as the binary runs it.

use std::process::ExitCode;

use clap::Args;

use crate::config::Settings;
use crate::startup::{shutdown_signal, Application};

/// `serve`'s options.
#[derive(Args)]
pub struct ServeArgs {
    /// Do not apply database migrations on start.
    #[arg(long)]
    pub no_migrate: bool,
}

/// Runs the orchestrator until Ctrl-C or SIGTERM.
pub async fn serve(args: &ServeArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let mut settings = settings.clone();
    settings.database.migrate_on_start &= !args.no_migrate;
    let app = Application::build(&settings).await?;
    app.run_until_stopped(shutdown_signal())
        .await
        .map_err(|e| anyhow::anyhow!("API server failed: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Applies the database migrations and exits.
pub async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = crate::startup::reach::open_store(settings, 1).await?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}
