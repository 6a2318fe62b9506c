//! Logging and metrics, set up once per process.
//!
//! Metric names live here so the exposition stays consistent and a reader
//! finds them all in one place.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

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
/// Participant answers that did not come from its business logic (401,
/// 403, 404, 405…: a wrong URL, an ingress, credentials), by
/// `participant` and `status`; each is retried, never read as a refusal.
pub const PARTICIPANT_MISCONFIGURED: &str = "saga_participant_misconfigured_total";
/// Time from a saga's start to its terminal state, by `outcome`.
pub const SAGA_SECONDS: &str = "saga_duration_seconds";
/// Sagas being driven by this instance now.
pub const IN_FLIGHT: &str = "saga_in_flight";
/// Outbox messages published to the broker.
pub const RELAYED: &str = "saga_outbox_relayed_total";
/// Outbox messages waiting (gauge, refreshed on scrape).
pub const OUTBOX_BACKLOG: &str = "saga_outbox_backlog";
/// Outbox messages parked by this instance, by `reason` (`unreadable`: the
/// stored row is no message; `refused`: the broker kept refusing it).
pub const OUTBOX_PARKED_TOTAL: &str = "saga_outbox_parked_total";
/// Outbox messages parked for a person (gauge, all instances, refreshed on scrape).
pub const OUTBOX_PARKED: &str = "saga_outbox_parked";
/// Participants' replies (broker mode), by `step`, `status` and `outcome`
/// (`applied` | `late_success` | `stale` | `unknown_saga`).
pub const REPLIES: &str = "saga_replies_total";
/// Attempts that failed and were scheduled again, by `step`.
pub const RETRIES: &str = "saga_retries_total";
/// Sagas waiting for a participant's reply that hold a slot of this
/// instance (broker mode).
pub const AWAITING: &str = "saga_awaiting_replies";
/// Commands sent to participants (broker mode), by `step`.
pub const COMMANDS: &str = "saga_commands_total";
/// Broker consumers rebuilt after a failure, by `channel`.
pub const CONSUMER_RECONNECTS: &str = "saga_consumer_reconnects_total";
/// Redis stream entries trimmed once every consumer group had
/// acknowledged them, by `channel`.
pub const REDIS_TRIMMED: &str = "saga_redis_trimmed_entries_total";
/// Consumers of instances that are gone, removed from our Redis consumer
/// group, by `channel`.
pub const REDIS_CONSUMERS_REMOVED: &str = "saga_redis_consumers_removed_total";
/// How long one batched store write that succeeded took, from asking
/// the pool to the durable answer, by `write` (`record`: new sagas;
/// `transition`: their transitions).
pub const STORE_WRITE_SECONDS: &str = "saga_store_write_seconds";
/// Sagas or transitions in those writes, by `write`: over the histogram's
/// count, the mean batch.
pub const STORE_WRITE_ITEMS: &str = "saga_store_write_items_total";
/// One transition's wait from being asked for to its commit's answer, the
/// writer's queue included (answered ones only).
pub const TRANSITION_COMMIT_SECONDS: &str = "saga_transition_commit_seconds";
/// Broker or store errors that made a loop back off, by `component`.
pub const LOOP_ERRORS: &str = "saga_loop_errors_total";
/// Gauge: this instance's clock minus the database's, in seconds.
pub const CLOCK_SKEW: &str = "saga_clock_skew_seconds";

/// Why telemetry could not be set up; names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid setting OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// Keeps the OpenTelemetry pipeline alive; dropping it flushes the spans
/// not yet exported.
#[must_use = "dropping the guard stops span export"]
pub struct TracingGuard(Option<SdkTracerProvider>);

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Initialises the global tracing subscriber: structured logs (JSON or
/// pretty) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans exported over
/// OTLP/HTTP. Later calls are no-ops (tests build many applications in one
/// process).
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<TracingGuard, TelemetryError> {
    let filter =
        EnvFilter::try_new(quiet_libraries(filter)).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_target(true)
            .boxed(),
        // Colour codes only where someone reads them: not in files or pipes.
        LogFormat::Pretty => fmt::layer()
            .with_target(true)
            .with_ansi(colour_on(std::io::stdout().is_terminal()))
            .boxed(),
    };
    let provider = otlp_provider()?;
    let spans = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("saga-orchestrator")));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init();
    Ok(TracingGuard(provider))
}

/// The OTLP/HTTP span pipeline, when an endpoint is configured. The
/// exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables itself.
fn otlp_provider() -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let configured = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !configured("OTEL_EXPORTER_OTLP_ENDPOINT")
        && !configured("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut resource = Resource::builder();
    if !configured("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("saga-orchestrator");
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// Makes `span` continue the trace of a W3C `traceparent` (an event's, or
/// the one stored with a saga). Without OpenTelemetry this does nothing.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// `span` as a W3C `traceparent`, when OpenTelemetry records it; `None`
/// otherwise (then callers pass on the traceparent they were given).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Logging for the command-line tools (`publish`, `load-test`): warnings
/// and errors only, to standard error, so standard output carries just the
/// tool's own report (`--json` included). `RUST_LOG` is the service's
/// setting (`.env` sets it to `info`), so it is not read here: a tool's
/// report is never interleaved with the service's kind of log lines.
pub fn init_tool_tracing() {
    let filter =
        EnvFilter::try_new(quiet_libraries("warn")).unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour_on(std::io::stderr().is_terminal()))
        .with_env_filter(filter)
        .try_init();
}

/// Libraries whose INFO lines are about their own plumbing (`Connected n°…
/// to pulsar://…`, `check connection for id …` every few seconds, each
/// pooled connection): shown from WARN up unless the filter names them.
const QUIET_LIBRARIES: &[&str] = &[
    "pulsar",
    "sqlx",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
    "tower",
    "redis",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
];

/// The filter as asked for, with the libraries' own chatter kept down:
/// each library of [`QUIET_LIBRARIES`] the filter does not name is shown
/// from WARN up, and the `pulsar` crate's connection attempts (logged at
/// WARN, the first, successful one included; real failures reach us as
/// errors anyway) only as errors.
fn quiet_libraries(filter: &str) -> String {
    let named = |library: &str| {
        filter.split(',').any(|directive| {
            let target = directive.split('=').next().unwrap_or("").trim();
            target == library || target.starts_with(&format!("{library}::"))
        })
    };
    let mut out = filter.to_string();
    for library in QUIET_LIBRARIES.iter().filter(|l| !named(l)) {
        out.push_str(&format!(",{library}=warn"));
    }
    if !named("pulsar") {
        out.push_str(",pulsar::retry_op=error");
    }
    out
}

/// Whether output gets colours: only on a terminal, never with `NO_COLOR`
/// set to anything non-empty (no-color.org) or on `TERM=dumb`.
pub fn colour_wanted(no_color: Option<&str>, term: Option<&str>, is_terminal: bool) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty) && term != Some("dumb")
}

/// [`colour_wanted`] for a stream that `is_terminal`, from this process's
/// environment.
pub fn colour_on(is_terminal: bool) -> bool {
    let no_color = std::env::var("NO_COLOR").ok();
    let term = std::env::var("TERM").ok();
    colour_wanted(no_color.as_deref(), term.as_deref(), is_terminal)
}

/// Counts one batched store write of `items` that succeeded in `took`.
pub fn store_write(write: &'static str, items: usize, took: std::time::Duration) {
    metrics::histogram!(STORE_WRITE_SECONDS, "write" => write).record(took.as_secs_f64());
    metrics::counter!(STORE_WRITE_ITEMS, "write" => write).increment(items as u64);
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
    fn libraries_are_quiet_unless_the_filter_names_them() {
        let quiet = quiet_libraries("info,sqlx=warn");
        assert!(quiet.starts_with("info,sqlx=warn,"), "{quiet}");
        for directive in [
            "pulsar=warn",
            "hyper=warn",
            "redis=warn",
            "pulsar::retry_op=error",
        ] {
            assert!(
                quiet.split(',').any(|d| d == directive),
                "{directive} in {quiet}"
            );
        }
        assert_eq!(quiet.matches("sqlx").count(), 1, "named once: {quiet}");

        let asked = quiet_libraries("info,pulsar=debug");
        assert!(!asked.contains("pulsar=warn"), "{asked}");
        assert!(!asked.contains("pulsar::retry_op"), "{asked}");
        let asked = quiet_libraries("debug,pulsar::consumer=trace");
        assert!(!asked.contains("pulsar=warn"), "{asked}");
        // `hyper_util` is a library of its own, not a module of `hyper`.
        let asked = quiet_libraries("hyper_util=debug");
        assert!(asked.contains(",hyper=warn"), "{asked}");
        assert!(!asked.contains("hyper_util=warn"), "{asked}");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(None, Some("xterm-256color"), true));
        assert!(!colour_wanted(None, None, false), "not a terminal");
        assert!(!colour_wanted(Some("1"), None, true));
        assert!(
            colour_wanted(Some(""), None, true),
            "empty NO_COLOR is unset"
        );
        assert!(!colour_wanted(None, Some("dumb"), true));
    }
}
