//! The participants section: where alliances and integrations are, how
//! they are asked, and how long one answer may take.

use std::time::Duration;

use url::Url;

use super::values::{fixed_url, keyword, parse_http_url, positive_millis, Values, HOUR_MS};
use super::ConfigError;
use crate::redact;

/// The two participants (docs/contract.md §2–4). Its `Debug` shows the
/// URLs without credentials (see the impl).
#[derive(Clone, PartialEq, Eq)]
pub struct ParticipantsSettings {
    /// Alliances' base URL; a path prefix is kept (`ALIANZAS_API_URL`).
    pub alliances_url: Url,
    /// How alliances are asked (`ALIANZAS_MODE`).
    pub alliances_mode: ParticipantMode,
    /// Integrations' base URL; a path prefix is kept (`INTEGRACIONES_API_URL`).
    pub integrations_url: Url,
    /// How integrations are asked (`INTEGRACIONES_MODE`).
    pub integrations_mode: ParticipantMode,
    /// Bound on one participant call or one broker reply wait
    /// (`STEP_TIMEOUT_MS`).
    pub step_timeout: Duration,
}

/// How the orchestrator talks to a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantMode {
    /// Synchronous HTTP calls (docs/contract.md §4).
    Http,
    /// Commands and replies over the broker (docs/contract.md §2–3).
    Broker,
}

impl Default for ParticipantsSettings {
    fn default() -> Self {
        Self {
            alliances_url: fixed_url("http://localhost:8002"),
            alliances_mode: ParticipantMode::Http,
            integrations_url: fixed_url("http://localhost:8001"),
            integrations_mode: ParticipantMode::Http,
            step_timeout: Duration::from_secs(10),
        }
    }
}

impl ParticipantsSettings {
    /// The names this section reads.
    pub(super) const NAMES: &'static [&'static str] = &[
        "ALIANZAS_API_URL",
        "ALIANZAS_MODE",
        "INTEGRACIONES_API_URL",
        "INTEGRACIONES_MODE",
        "STEP_TIMEOUT_MS",
    ];

    pub(super) fn parse(v: &Values) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            alliances_url: v.parse("ALIANZAS_API_URL", d.alliances_url, parse_http_url)?,
            alliances_mode: v.parse("ALIANZAS_MODE", d.alliances_mode, parse_mode)?,
            integrations_url: v.parse(
                "INTEGRACIONES_API_URL",
                d.integrations_url,
                parse_http_url,
            )?,
            integrations_mode: v.parse("INTEGRACIONES_MODE", d.integrations_mode, parse_mode)?,
            step_timeout: v.parse("STEP_TIMEOUT_MS", d.step_timeout, positive_millis(HOUR_MS))?,
        })
    }
}

/// Every field, listed by destructuring so that a new one cannot be
/// forgotten here; the URLs may carry credentials and are shown redacted.
impl std::fmt::Debug for ParticipantsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            alliances_url,
            alliances_mode,
            integrations_url,
            integrations_mode,
            step_timeout,
        } = self;
        f.debug_struct("ParticipantsSettings")
            .field("alliances_url", &redact::url(alliances_url))
            .field("alliances_mode", alliances_mode)
            .field("integrations_url", &redact::url(integrations_url))
            .field("integrations_mode", integrations_mode)
            .field("step_timeout", step_timeout)
            .finish()
    }
}

fn parse_mode(s: &str) -> Result<ParticipantMode, String> {
    let modes = [
        ("http", ParticipantMode::Http),
        ("broker", ParticipantMode::Broker),
    ];
    keyword(s, &modes, "http or broker")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::parse_pairs;

    #[test]
    fn defaults_match_the_contract() {
        let d = ParticipantsSettings::default();
        assert_eq!(d.alliances_url.as_str(), "http://localhost:8002/");
        assert_eq!(d.integrations_url.as_str(), "http://localhost:8001/");
        assert_eq!(d.alliances_mode, ParticipantMode::Http);
        assert_eq!(d.integrations_mode, ParticipantMode::Http);
        assert_eq!(d.step_timeout, Duration::from_secs(10));
        assert_eq!(
            parse_pairs(&[], ParticipantsSettings::parse).expect("defaults parse"),
            d
        );
    }
}
