//! The telemetry section: how the service's own logs look. Spans go to an
//! OTLP collector configured by the standard `OTEL_*` variables, which the
//! exporter reads itself (see `crate::telemetry`).

use super::values::{keyword, Values};
use super::ConfigError;

/// The service's log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// Log line format (`LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Filter directives (`RUST_LOG`).
    pub log_filter: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            // sqlx logs every server notice at info; keep those out by default.
            log_filter: "info,sqlx=warn".into(),
        }
    }
}

impl TelemetrySettings {
    /// The names this section reads.
    pub(super) const NAMES: &'static [&'static str] = &["LOG_FORMAT", "RUST_LOG"];

    pub(super) fn parse(v: &Values) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            log_format: v.parse("LOG_FORMAT", d.log_format, parse_log_format)?,
            log_filter: v.get("RUST_LOG").unwrap_or(d.log_filter),
        })
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    let formats = [
        ("json", LogFormat::Json),
        ("pretty", LogFormat::Pretty),
        ("text", LogFormat::Pretty),
    ];
    keyword(s, &formats, "json or pretty")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::parse_pairs;

    #[test]
    fn defaults_match_the_contract() {
        let d = TelemetrySettings::default();
        assert_eq!(d.log_format, LogFormat::Json);
        assert_eq!(d.log_filter, "info,sqlx=warn");
        assert_eq!(
            parse_pairs(&[], TelemetrySettings::parse).expect("defaults parse"),
            d
        );
    }
}
