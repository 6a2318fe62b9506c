//! `sagas retry`: failed sagas retried through the service's API, one by
//! id or every one matching a filter as a bulk job, with progress.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;

use super::api_client::{put, run_job, ApiArgs, ApiClient, BulkArgs};

/// `sagas`' subcommands.
#[derive(Args)]
pub struct SagasCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub action: SagasAction,
}

/// What to do with sagas.
#[derive(Subcommand)]
pub enum SagasAction {
    /// Retry failed sagas: one (--saga-id) or all matching the filter, as a job.
    Retry(RetryArgs),
}

/// `sagas retry`'s options.
#[derive(Args)]
pub struct RetryArgs {
    /// Only sagas in this state; `failed` is the one a retry applies to.
    #[arg(long, default_value = "failed")]
    pub state: String,
    /// Retry this one saga instead of a bulk job.
    #[arg(long)]
    pub saga_id: Option<String>,
    /// Only this partner's sagas.
    #[arg(long)]
    pub partner_id: Option<String>,
    /// Only sagas with this correlation id.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// The job's name, after the incident (a bulk job needs one).
    #[arg(long, required_unless_present = "saga_id")]
    pub name: Option<String>,
    /// Why (kept in each saga's history and the audit record).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub bulk: BulkArgs,
}

/// Runs `sagas …` against the API.
pub async fn run(cmd: &SagasCmd) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(&cmd.api)?;
    let SagasAction::Retry(args) = &cmd.action;
    if let Some(id) = &args.saga_id {
        let body = json!({ "reason": args.reason });
        let saga = client
            .call(Method::POST, &format!("/sagas/{id}/retry"), Some(&body))
            .await?;
        println!("saga {id} is {}", saga["state"].as_str().unwrap_or("?"));
        return Ok(ExitCode::SUCCESS);
    }
    let mut filter = json!({ "state": args.state });
    put(&mut filter, "partner_id", args.partner_id.clone());
    put(&mut filter, "correlation_id", args.correlation_id.clone());
    let body = args.bulk.body(filter, args.name.as_deref(), &args.reason);
    run_job(&client, "/sagas/retry", &body, args.bulk.dry_run).await
}
