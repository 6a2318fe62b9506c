//! Logging and metrics, set up once per process.
//!
//! Metric names live here so the exposition stays consistent and a reader
//! finds them all in one place.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Transitions stored, by `from`, `to` and `reason`.
pub const TRANSITIONS: &str = "saga_transitions_total";
/// Sagas by state (gauge, refreshed from the store on each scrape).
pub const SAGAS: &str = "saga_sagas";
/// Sagas started, by `source` (`broker` | `api`).
pub const STARTED: &str = "saga_started_total";
/// Deliveries that were duplicates of an already-recorded event.
pub const DUPLICATES: &str = "saga_duplicate_events_total";
/// Dead-lettered messages, by `channel`.
pub const DEAD_LETTERS: &str = "saga_dead_letters_total";
/// Messages of types we do not handle, acked and ignored, by `channel` and `event_type`.
pub const IGNORED: &str = "saga_ignored_messages_total";
/// Participant calls, by `step` and `outcome`.
pub const PARTICIPANT_CALLS: &str = "saga_participant_calls_total";
/// Participant call latency in seconds, by `step` and `outcome`.
pub const PARTICIPANT_SECONDS: &str = "saga_participant_call_seconds";
/// Time from a saga's start to its terminal state, by `outcome`.
pub const SAGA_SECONDS: &str = "saga_duration_seconds";
/// Sagas being driven by this instance now.
pub const IN_FLIGHT: &str = "saga_in_flight";
/// Outbox messages published to the broker.
pub const RELAYED: &str = "saga_outbox_relayed_total";
/// Outbox messages waiting (gauge, refreshed on scrape).
pub const OUTBOX_BACKLOG: &str = "saga_outbox_backlog";
/// Participants' replies (broker mode), by `step`, `status` and `outcome`
/// (`applied` | `stale` | `unknown_saga`).
pub const REPLIES: &str = "saga_replies_total";
/// Commands sent to participants (broker mode), by `step`.
pub const COMMANDS: &str = "saga_commands_total";
/// Broker consumers rebuilt after a failure, by `channel`.
pub const CONSUMER_RECONNECTS: &str = "saga_consumer_reconnects_total";
/// Broker or store errors that made a loop back off, by `component`.
pub const LOOP_ERRORS: &str = "saga_loop_errors_total";

/// Initialises the global tracing subscriber; later calls are no-ops
/// (tests build many applications in one process).
pub fn init_tracing(format: LogFormat, filter: &str) {
    let filter =
        EnvFilter::try_new(quiet_pulsar_retries(filter)).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Logging for the command-line tools (`publish`, `load-test`): warnings
/// and errors only, to standard error, so standard output carries just the
/// tool's own output (`--json` included).
pub fn init_tool_tracing() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let filter = EnvFilter::try_new(quiet_pulsar_retries(&filter))
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}

/// The `pulsar` crate logs every connection attempt at WARN, the first
/// (successful) one included; real failures reach us as errors anyway.
/// Kept unless the filter says something about `pulsar` itself.
fn quiet_pulsar_retries(filter: &str) -> String {
    if filter.contains("pulsar") {
        filter.to_string()
    } else {
        format!("{filter},pulsar::retry_op=error")
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (embedding application):
                // keep a private one so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulsar_connection_attempts_are_quiet_unless_asked_for() {
        assert_eq!(quiet_pulsar_retries("info"), "info,pulsar::retry_op=error");
        assert_eq!(
            quiet_pulsar_retries("info,pulsar=debug"),
            "info,pulsar=debug"
        );
    }
}
