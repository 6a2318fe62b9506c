//! The broker section: which broker, the names used on it, and the Redis
//! consumer's upkeep.

use std::time::Duration;

use url::Url;

use super::values::{
    fixed_url, millis, name, not_a_url, parse_bool, positive_millis, secs_up_to, Values,
};
use super::values::{HOUR_MS, MONTH_SECS};
use super::ConfigError;
use crate::redact;

/// Where messages travel (docs/contract.md §2–3) and under which names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// Which broker adapter to build (`BROKER_URL`).
    pub url: BrokerUrl,
    /// Pulsar subscription / Redis consumer group shared by all instances
    /// (`SUBSCRIPTION_NAME`).
    pub subscription: String,
    /// Channel (topic / stream) names (`CHANNEL_*`).
    pub channels: Channels,
    /// Redis pending entries idle this long are reclaimed from dead
    /// consumers (`REDIS_CLAIM_IDLE_MS`).
    pub claim_idle: Duration,
    /// How often the Redis streams this instance consumes are trimmed of
    /// what every consumer group has acknowledged, and dead consumers
    /// removed from our group; `None` (`REDIS_TRIM_INTERVAL_MS=0`): never.
    pub trim_interval: Option<Duration>,
    /// Entries younger than this are never trimmed, acknowledged or not,
    /// so readers without a group (the monitor, replays) see recent
    /// traffic (`REDIS_TRIM_MIN_AGE_SECS`).
    pub trim_min_age: Duration,
    /// Whether Pulsar producers put several messages in one broker entry
    /// (`PULSAR_BATCHING`); off for consumers that route by key.
    pub pulsar_batching: bool,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: BrokerUrl::Pulsar(fixed_url("pulsar://localhost:6650")),
            subscription: "saga-orchestrator".into(),
            channels: Channels::default(),
            claim_idle: Duration::from_secs(30),
            // Once a minute: a round costs a few small commands per stream,
            // the stream holds about a minute of traffic beyond what is still
            // unacknowledged, and operators' XRANGE still sees recent events.
            trim_interval: Some(Duration::from_secs(60)),
            trim_min_age: Duration::from_secs(3600),
            pulsar_batching: true,
        }
    }
}

impl BrokerSettings {
    /// The names this section reads.
    pub(super) const NAMES: &'static [&'static str] = &[
        "BROKER_URL",
        "SUBSCRIPTION_NAME",
        "CHANNEL_PARTNER_EVENTS",
        "CHANNEL_ALLIANCE_COMMANDS",
        "CHANNEL_INTEGRATION_COMMANDS",
        "CHANNEL_SAGA_REPLIES",
        "CHANNEL_SAGA_EVENTS",
        "REDIS_CLAIM_IDLE_MS",
        "REDIS_TRIM_INTERVAL_MS",
        "REDIS_TRIM_MIN_AGE_SECS",
        "PULSAR_BATCHING",
    ];

    pub(super) fn parse(v: &Values) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            url: v.parse("BROKER_URL", d.url, str::parse)?,
            subscription: v.parse("SUBSCRIPTION_NAME", d.subscription, name)?,
            channels: Channels::parse(v, d.channels)?,
            claim_idle: v.parse(
                "REDIS_CLAIM_IDLE_MS",
                d.claim_idle,
                positive_millis(24 * HOUR_MS),
            )?,
            trim_interval: v.parse("REDIS_TRIM_INTERVAL_MS", d.trim_interval, |s| {
                Ok(Some(millis(s)?).filter(|every| !every.is_zero()))
            })?,
            trim_min_age: v.parse(
                "REDIS_TRIM_MIN_AGE_SECS",
                d.trim_min_age,
                secs_up_to(MONTH_SECS),
            )?,
            pulsar_batching: v.parse("PULSAR_BATCHING", d.pulsar_batching, parse_bool)?,
        })
    }
}

/// Which broker adapter to build, from `BROKER_URL`. Its `Debug` is
/// redacted like [`BrokerUrl::redacted`].
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// `pulsar://` or `pulsar+ssl://`.
    Pulsar(Url),
    /// `redis://` or `rediss://`.
    Redis(Url),
    /// `memory://`: in-process, for the embedded demo and tests.
    Memory,
}

impl BrokerUrl {
    /// The URL without any password, for logs and output.
    pub fn redacted(&self) -> String {
        match self {
            Self::Pulsar(url) | Self::Redis(url) => redact::url(url),
            Self::Memory => "memory://".to_string(),
        }
    }

    /// The host and port a network broker listens on (each scheme's
    /// default port when the URL names none); `None` in process.
    pub fn host_and_port(&self) -> Option<(String, u16)> {
        let (url, default_port) = match self {
            Self::Pulsar(url) if url.scheme() == "pulsar+ssl" => (url, 6651),
            Self::Pulsar(url) => (url, 6650),
            Self::Redis(url) => (url, 6379),
            Self::Memory => return None,
        };
        let host = url.host_str()?.trim_matches(['[', ']']).to_string();
        Some((host, url.port().unwrap_or(default_port)))
    }
}

/// Parses a `BROKER_URL`; the error says what is wrong, without the
/// value's password.
impl std::str::FromStr for BrokerUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = Url::parse(s).map_err(|e| not_a_url(&e, s))?;
        match url.scheme() {
            "pulsar" | "pulsar+ssl" => Ok(Self::Pulsar(url)),
            "redis" | "rediss" => Ok(Self::Redis(url)),
            "memory" => Ok(Self::Memory),
            other => Err(format!(
                "unsupported scheme {other:?}: expected pulsar://, pulsar+ssl://, redis://, rediss:// or memory://"
            )),
        }
    }
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Pulsar(_) => "Pulsar",
            Self::Redis(_) => "Redis",
            Self::Memory => "Memory",
        };
        f.debug_tuple(kind).field(&self.redacted()).finish()
    }
}

/// Channel (topic / stream) names; configurable so several deployments, or
/// several tests, can share one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    /// `PartnerCreated` events from integrations.
    pub partner_events: String,
    /// `CreateAlliance` commands to alliances (broker mode).
    pub alliance_commands: String,
    /// `DeletePartner` commands to integrations (broker mode).
    pub integration_commands: String,
    /// Participants' replies (broker mode).
    pub saga_replies: String,
    /// The orchestrator's own saga lifecycle events.
    pub saga_events: String,
}

impl Channels {
    /// Every channel name prefixed, e.g. to isolate one test's traffic.
    pub fn prefixed(prefix: &str) -> Self {
        let d = Self::default();
        Self {
            partner_events: format!("{prefix}{}", d.partner_events),
            alliance_commands: format!("{prefix}{}", d.alliance_commands),
            integration_commands: format!("{prefix}{}", d.integration_commands),
            saga_replies: format!("{prefix}{}", d.saga_replies),
            saga_events: format!("{prefix}{}", d.saga_events),
        }
    }

    fn parse(v: &Values, d: Self) -> Result<Self, ConfigError> {
        Ok(Self {
            partner_events: v.parse("CHANNEL_PARTNER_EVENTS", d.partner_events, name)?,
            alliance_commands: v.parse("CHANNEL_ALLIANCE_COMMANDS", d.alliance_commands, name)?,
            integration_commands: v.parse(
                "CHANNEL_INTEGRATION_COMMANDS",
                d.integration_commands,
                name,
            )?,
            saga_replies: v.parse("CHANNEL_SAGA_REPLIES", d.saga_replies, name)?,
            saga_events: v.parse("CHANNEL_SAGA_EVENTS", d.saga_events, name)?,
        })
    }
}

impl Default for Channels {
    fn default() -> Self {
        Self {
            partner_events: "partner-events".into(),
            alliance_commands: "alliance-commands".into(),
            integration_commands: "integration-commands".into(),
            saga_replies: "saga-replies".into(),
            saga_events: "saga-events".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::parse_pairs;

    fn parse(pairs: &[(&str, &str)]) -> Result<BrokerSettings, ConfigError> {
        parse_pairs(pairs, BrokerSettings::parse)
    }

    #[test]
    fn defaults_match_the_contract() {
        let d = BrokerSettings::default();
        assert_eq!(d.url.redacted(), "pulsar://localhost:6650");
        assert!(matches!(d.url, BrokerUrl::Pulsar(_)));
        assert_eq!(d.subscription, "saga-orchestrator");
        assert_eq!(d.channels.partner_events, "partner-events");
        assert_eq!(d.channels.saga_replies, "saga-replies");
        assert_eq!(d.claim_idle, Duration::from_secs(30));
        assert_eq!(d.trim_interval, Some(Duration::from_secs(60)));
        assert_eq!(d.trim_min_age, Duration::from_secs(3600));
        assert_eq!(parse(&[]).expect("defaults parse"), d);
    }

    #[test]
    fn broker_urls_are_shown_without_passwords() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            BrokerUrl::Redis(url("redis://:s3cret@cache:6379/0")).redacted(),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            BrokerUrl::Pulsar(url("pulsar://localhost:6650")).redacted(),
            "pulsar://localhost:6650"
        );
    }

    #[test]
    fn a_zero_trim_interval_turns_redis_upkeep_off() {
        let s = parse(&[("REDIS_TRIM_INTERVAL_MS", "0")]).unwrap();
        assert_eq!(s.trim_interval, None);
        let s = parse(&[("REDIS_TRIM_INTERVAL_MS", "250")]).unwrap();
        assert_eq!(s.trim_interval, Some(Duration::from_millis(250)));
    }
}
