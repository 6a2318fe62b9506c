//! `monitor`: the command-line side (arguments, terminal detection,
//! printing, Ctrl-C) of the library's [`crate::tools::monitor`].
//!
//! Standard output carries only messages (text or JSON lines), so it can be
//! piped; notes and broker trouble go to standard error.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::telemetry;
use crate::tools::monitor::{
    self, Block, BlockRules, Blocks, ChannelKind, Filter, GroupBy, Observed, Printer, StartAt,
    Style, Tap, TapError, Tapped,
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
    /// Group by saga (its PartnerCreated included), correlation, or none.
    /// A group is printed as one block, in time order, under a header, once
    /// its saga has finished (every saga of a correlation id) or it has been
    /// quiet for --idle; `none` prints each message as it is read.
    #[arg(long, default_value = "saga", value_name = "KEY")]
    group_by: GroupBy,
    /// Seconds without a new message after which a group not finished
    /// (a saga stuck mid-way) is printed anyway, e.g. 0.5 or 60. The
    /// default is above the default STEP_TIMEOUT_MS (10 s), so a saga
    /// waiting out a participant's timeout is not cut in two.
    #[arg(long, default_value = "15", value_name = "SECS", value_parser = parse_idle)]
    idle: Duration,
    /// First replay what the broker still holds (Redis from id 0, Pulsar from
    /// Earliest), then follow. Default: only messages from now on.
    #[arg(long)]
    from_start: bool,
    /// One JSON object per line (for machines) instead of text.
    #[arg(long)]
    json: bool,
    /// Exit after this many matching messages (what is buffered is printed first).
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
        blocks: (cmd.group_by != GroupBy::None)
            .then(|| Blocks::new(cmd.group_by, BlockRules::with_quiet(cmd.idle))),
        limit: cmd.limit,
        shown: 0,
    };
    let followed = follow(&mut tap, &mut output).await;
    // Stopped (Ctrl-C, --limit, the readers gone): what is buffered is
    // still shown, unfinished groups included.
    output.finish();
    followed?;
    tap.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `--idle`: seconds, more than none and at most an hour.
fn parse_idle(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected seconds, e.g. 3 or 0.5, got {text:?}"))?;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!(
            "expected more than 0 and at most 3600 seconds, got {text}"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
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
                // Also after an empty read (about a second of silence), so
                // quiet groups are printed on time.
                if !(output.print(batch) && output.tick()) {
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
                if !output.tick() {
                    return Ok(());
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
    /// The grouped view's buffer; `None` for the flat view.
    blocks: Option<Blocks>,
    limit: Option<u64>,
    shown: u64,
}

impl Output<'_> {
    /// Shows the matching messages of `batch`: printed at once in the flat
    /// view, buffered in their groups otherwise. `false`: stop, `--limit`
    /// is reached or the reader went away.
    fn print(&mut self, batch: Vec<Tapped>) -> bool {
        let now = Instant::now();
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
            let written = match &mut self.blocks {
                None => write_lines([self.printer.line(&observed)]),
                Some(blocks) => {
                    let due = blocks.push(observed, now);
                    write_blocks(&mut self.printer, due)
                }
            };
            self.shown += 1;
            if !written || self.limit.is_some_and(|limit| self.shown >= limit) {
                return false;
            }
        }
        true
    }

    /// Prints the groups due now. `false`: the reader went away.
    fn tick(&mut self) -> bool {
        match &mut self.blocks {
            None => true,
            Some(blocks) => {
                let due = blocks.due(Instant::now());
                write_blocks(&mut self.printer, due)
            }
        }
    }

    /// Prints every buffered group: the monitor is stopping.
    fn finish(&mut self) {
        if let Some(blocks) = &mut self.blocks {
            let all = blocks.drain(Instant::now());
            write_blocks(&mut self.printer, all);
        }
    }
}

/// Writes `blocks` to standard output. `false`: the reader went away.
fn write_blocks(printer: &mut Printer, blocks: Vec<Block>) -> bool {
    blocks.iter().all(|block| write_lines(printer.block(block)))
}

/// Writes `lines` to standard output and flushes it. `false`: the reader
/// went away (`| head`), which is the end, not an error.
fn write_lines(lines: impl IntoIterator<Item = String>) -> bool {
    let mut out = std::io::stdout().lock();
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return false;
        }
    }
    out.flush().is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        monitor: MonitorCmd,
    }

    #[test]
    fn by_default_sagas_are_grouped_with_the_library_idle_time() {
        let cmd = Command::try_parse_from(["monitor"]).expect("no arguments needed");
        assert_eq!(cmd.monitor.group_by, GroupBy::Saga);
        assert_eq!(cmd.monitor.idle, monitor::group::DEFAULT_QUIET);
    }

    #[test]
    fn the_idle_time_is_seconds_within_reason() {
        assert_eq!(parse_idle("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_idle(" 10 "), Ok(Duration::from_secs(10)));
        for bad in ["0", "-1", "soon", "3601", "NaN", "inf"] {
            assert!(parse_idle(bad).is_err(), "{bad}");
        }
    }
}
