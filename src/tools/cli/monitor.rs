//! `monitor`: the command-line side (arguments, terminal detection,
//! printing, Ctrl-C) of the library's [`crate::tools::monitor`].
//!
//! Standard output carries only messages (text or JSON lines), so it can be
//! piped; notes and broker trouble go to standard error.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;
use crate::telemetry;
use crate::tools::monitor::{
    self, ChannelKind, Filter, GroupBy, Observed, Printer, StartAt, Style, Tap, TapError, Tapped,
};
use clap::Args;

#[derive(Args)]
pub struct MonitorCmd {
    /// A channel to watch (repeatable). Default: every configured channel and its -dlq.
    #[arg(long = "channel", value_name = "NAME")]
    channels: Vec<String>,
    /// Only messages with this correlation_id (repeatable: any of them).
    #[arg(long = "correlation-id", value_name = "ID")]
    correlation_ids: Vec<String>,
    /// Only messages of this saga; its start or end is enough, e.g. the short id shown (repeatable).
    #[arg(long = "saga-id", value_name = "ID")]
    saga_ids: Vec<String>,
    /// Only messages of this event_type, e.g. SagaFailed (repeatable).
    #[arg(long = "event-type", value_name = "TYPE")]
    event_types: Vec<String>,
    /// Group the text view: correlation, saga or none. A header line is
    /// printed when the group changes; each group keeps one colour.
    #[arg(long, default_value = "correlation", value_name = "KEY")]
    group_by: GroupBy,
    /// First replay what the broker still holds (Redis from id 0, Pulsar from
    /// Earliest), then follow. Default: only messages from now on.
    #[arg(long)]
    from_start: bool,
    /// One JSON object per line (for machines) instead of text.
    #[arg(long)]
    json: bool,
    /// Exit after this many matching messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
}

/// Logs go to standard error, quietly: standard output is the monitor's.
/// Only the monitor's own warnings (a reader being rebuilt) and the
/// `pulsar` crate's errors are shown; the fatal error is printed once by
/// `main`, not logged as well.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "warn,pulsar=error,saga_orchestrator=off,{}=warn",
        crate::transport::tap::LOG_TARGET
    ));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(telemetry::colour_on(std::io::stderr().is_terminal()))
        .with_env_filter(filter)
        .try_init();
}

/// Runs until Ctrl-C / SIGTERM, `--limit` messages, or standard output closes.
pub async fn run(cmd: &MonitorCmd, settings: &Settings) -> anyhow::Result<ExitCode> {
    let channels = channels(cmd, settings);
    let filter = Filter {
        correlation_ids: cmd.correlation_ids.clone(),
        saga_ids: cmd.saga_ids.clone(),
        event_types: cmd.event_types.clone(),
    };
    let style = if cmd.json {
        Style::Json
    } else {
        Style::Text {
            colour: telemetry::colour_on(std::io::stdout().is_terminal()),
        }
    };
    let start = if cmd.from_start {
        StartAt::Beginning
    } else {
        StartAt::Now
    };
    let mut tap = Tap::open(&settings.broker.url, &channels, start).await?;
    eprintln!(
        "monitoring {} channel{} on {} {} (Ctrl-C to stop)",
        channels.len(),
        if channels.len() == 1 { "" } else { "s" },
        settings.broker.url.redacted(),
        if cmd.from_start {
            "from the start"
        } else {
            "from now"
        },
    );
    let mut output = Output {
        kinds: channels
            .iter()
            .map(|c| (c.as_str(), ChannelKind::of(c, &settings.broker.channels)))
            .collect(),
        max_message_bytes: settings.limits.max_message_bytes,
        filter,
        printer: Printer::new(style, cmd.group_by, &channels),
        limit: cmd.limit,
        shown: 0,
    };
    follow(&mut tap, &mut output).await?;
    tap.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Prints what `tap` reads until Ctrl-C / SIGTERM, `--limit` or a closed
/// standard output. The broker going away is not the end: it is said once
/// per attempt and retried, keeping the positions read so far. Only a
/// closed tap is an error.
async fn follow(tap: &mut Tap, output: &mut Output<'_>) -> Result<(), TapError> {
    let mut failures: u32 = 0;
    let shutdown = crate::startup::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            () = &mut shutdown => return Ok(()),
            batch = tap.next_batch() => batch,
        };
        match batch {
            Ok(batch) => {
                failures = 0;
                if !output.print(batch) {
                    return Ok(());
                }
            }
            Err(TapError::Closed) => return Err(TapError::Closed),
            Err(e) => {
                failures += 1;
                eprintln!("monitor: {e} (retrying)");
                let wait = Duration::from_millis(250 << failures.min(4));
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Which messages are shown and how; counts them against `--limit`.
struct Output<'a> {
    kinds: HashMap<&'a str, ChannelKind>,
    max_message_bytes: usize,
    filter: Filter,
    printer: Printer,
    limit: Option<u64>,
    shown: u64,
}

impl Output<'_> {
    /// Prints the matching messages of `batch` to standard output.
    /// `false`: stop, `--limit` is reached or the reader went away.
    fn print(&mut self, batch: Vec<Tapped>) -> bool {
        let mut out = std::io::stdout().lock();
        for tapped in batch {
            let kind = self
                .kinds
                .get(tapped.channel.as_str())
                .copied()
                .unwrap_or(ChannelKind::Other);
            let observed = Observed::parse(&tapped, kind, self.max_message_bytes);
            if !self.filter.matches(&observed) {
                continue;
            }
            for line in self.printer.lines(&observed) {
                // The reader went away (`| head`): done, not an error.
                if writeln!(out, "{line}").is_err() {
                    return false;
                }
            }
            self.shown += 1;
            if self.limit.is_some_and(|limit| self.shown >= limit) {
                let _ = out.flush();
                return false;
            }
        }
        let _ = out.flush();
        true
    }
}

/// The channels asked for, each once, in the order given; or all of them.
fn channels(cmd: &MonitorCmd, settings: &Settings) -> Vec<String> {
    if cmd.channels.is_empty() {
        return monitor::all_channels(&settings.broker.channels);
    }
    let mut seen = Vec::with_capacity(cmd.channels.len());
    for c in &cmd.channels {
        if !seen.contains(c) {
            seen.push(c.clone());
        }
    }
    seen
}
