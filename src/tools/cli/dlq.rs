//! `dlq list|show|redrive|discard`: dead letters through the service's API
//! (docs/contract.md §5, "Operator routes").

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::api_client::{put, run_job, ApiArgs, ApiClient, BulkArgs};

/// `dlq`'s subcommands.
#[derive(Args)]
pub struct DlqCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub action: DlqAction,
}

/// What to do with dead letters.
#[derive(Subcommand)]
pub enum DlqAction {
    /// Dead letters not yet redriven or discarded, newest first.
    List {
        /// Only this dead-letter channel's (e.g. partner-events-dlq).
        #[arg(long)]
        channel: Option<String>,
        /// Only those whose reason contains this text.
        #[arg(long)]
        reason: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One dead letter, with the original message as received.
    Show { id: String },
    /// Put one back on its source channel (an ID), or every one matching
    /// the filter (--all) as a job, with progress.
    Redrive(RedriveArgs),
    /// Drop one from the listing, with a reason.
    Discard {
        id: String,
        /// Why (kept in the audit record).
        #[arg(long)]
        reason: String,
    },
}

/// `dlq redrive`'s options.
#[derive(Args)]
pub struct RedriveArgs {
    /// The dead letter to redrive; leave out with --all.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Every pending dead letter matching the filter, as a bulk job.
    #[arg(long)]
    pub all: bool,
    /// Why (kept in the audit record).
    #[arg(long)]
    pub reason: String,
    /// The job's name, after the incident (with --all).
    #[arg(long, required_if_eq("all", "true"))]
    pub name: Option<String>,
    /// Only this dead-letter channel's (with --all).
    #[arg(long)]
    pub channel: Option<String>,
    /// Only those whose reason contains this text (with --all).
    #[arg(long)]
    pub reason_contains: Option<String>,
    #[command(flatten)]
    pub bulk: BulkArgs,
}

/// Runs `dlq …` against the API.
pub async fn run(cmd: &DlqCmd) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_env(&cmd.api)?;
    match &cmd.action {
        DlqAction::List {
            channel,
            reason,
            limit,
        } => list(&client, channel, reason, *limit).await,
        DlqAction::Show { id } => {
            let letter = client
                .call(Method::GET, &format!("/dead-letters/{id}"), None)
                .await?;
            println!("{}", shown(&letter)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Redrive(args) if args.all => redrive_all(&client, args).await,
        DlqAction::Redrive(args) => {
            let id = args.id.as_deref().unwrap_or_default();
            let body = json!({ "reason": args.reason });
            let done = client
                .call(
                    Method::POST,
                    &format!("/dead-letters/{id}/redrive"),
                    Some(&body),
                )
                .await?;
            println!(
                "redriven {} to {}",
                printable(id),
                printable(done["source_channel"].as_str().unwrap_or("?"))
            );
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Discard { id, reason } => {
            let body = json!({ "reason": reason });
            client
                .call(
                    Method::POST,
                    &format!("/dead-letters/{id}/discard"),
                    Some(&body),
                )
                .await?;
            println!("discarded {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(
    client: &ApiClient,
    channel: &Option<String>,
    reason: &Option<String>,
    limit: u32,
) -> anyhow::Result<ExitCode> {
    let mut query = vec![format!("limit={limit}")];
    for (key, value) in [("channel", channel), ("reason", reason)] {
        if let Some(v) = value {
            query.push(format!(
                "{key}={}",
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            ));
        }
    }
    let page = client
        .call(
            Method::GET,
            &format!("/dead-letters?{}", query.join("&")),
            None,
        )
        .await?;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    for item in &items {
        println!("{}", line(item));
    }
    eprintln!(
        "{} dead letter(s){}",
        items.len(),
        if page["next_cursor"].is_null() {
            ""
        } else {
            " (more: raise --limit)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// A letter as `dlq show` prints it: pretty JSON, with DEL and the C1
/// controls (which JSON leaves as they are) escaped too.
fn shown(letter: &Value) -> anyhow::Result<String> {
    let pretty = serde_json::to_string_pretty(letter)?;
    Ok(pretty.chars().fold(String::new(), |mut out, c| {
        if c.is_control() && c != '\n' {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
        out
    }))
}

/// Text from a dead letter (a producer's) made safe for a terminal line:
/// every control character shown as `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One dead letter on one line: id, when, from where, why.
fn line(item: &Value) -> String {
    let text = |k: &str| printable(item[k].as_str().unwrap_or(""));
    format!(
        "{}  {}  {}  {}",
        text("id"),
        text("failed_at"),
        text("source_channel"),
        text("dlq_reason")
    )
}

async fn redrive_all(client: &ApiClient, args: &RedriveArgs) -> anyhow::Result<ExitCode> {
    let mut filter = json!({});
    put(&mut filter, "channel", args.channel.clone());
    put(&mut filter, "reason_contains", args.reason_contains.clone());
    let body = args.bulk.body(filter, args.name.as_deref(), &args.reason);
    run_job(client, "/dead-letters/redrive", &body, args.bulk.dry_run).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer's text reaches an operator's terminal: no escape
    /// sequence, line break or C1 control of it gets there as such.
    #[test]
    fn printed_lines_carry_no_control_characters() {
        let item = json!({"id": "c-dlq.1-0", "failed_at": "t", "source_channel": "c",
            "dlq_reason": "bad\u{1b}]0;owned\u{7}\r\nfake line\u{9b}2J"});
        let printed = line(&item);
        assert!(!printed.chars().any(char::is_control), "{printed:?}");
        let shown = shown(&json!({"message": {"x": "a\u{1b}[2J\u{7f}\u{9b}b"}})).unwrap();
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{shown:?}"
        );
    }
}
