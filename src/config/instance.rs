//! The instance section: this process among the others sharing the store
//! and the broker.

use std::time::Duration;

use super::values::{positive_millis, secs_up_to, Values, HOUR_MS};
use super::ConfigError;

/// This process: its name, its recovery sweep, its shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSettings {
    /// Names this process as lease owner and consumer; unique per process
    /// by default (`INSTANCE_ID`).
    pub id: String,
    /// How often the recovery sweeper looks for due or orphaned sagas
    /// (`SWEEP_INTERVAL_MS`).
    pub sweep_interval: Duration,
    /// How long shutdown waits for in-flight sagas before leaving them to
    /// recovery (`SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
    /// How long start-up keeps trying to reach the store and the broker;
    /// 0 tries once (`STARTUP_TIMEOUT_SECS`).
    pub startup_timeout: Duration,
}

impl Default for InstanceSettings {
    fn default() -> Self {
        Self {
            id: Self::unique_id(),
            sweep_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(30),
        }
    }
}

impl InstanceSettings {
    /// The names this section reads.
    pub(super) const NAMES: &'static [&'static str] = &[
        "INSTANCE_ID",
        "SWEEP_INTERVAL_MS",
        "SHUTDOWN_GRACE_SECS",
        "STARTUP_TIMEOUT_SECS",
    ];

    pub(super) fn parse(v: &Values) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            id: v
                .get("INSTANCE_ID")
                .filter(|s| !s.is_empty())
                .unwrap_or(d.id),
            sweep_interval: v.parse(
                "SWEEP_INTERVAL_MS",
                d.sweep_interval,
                positive_millis(HOUR_MS),
            )?,
            shutdown_grace: v.parse("SHUTDOWN_GRACE_SECS", d.shutdown_grace, secs_up_to(3600))?,
            startup_timeout: v.parse(
                "STARTUP_TIMEOUT_SECS",
                d.startup_timeout,
                secs_up_to(3600),
            )?,
        })
    }

    /// A name no other process has: host, process id and a random suffix.
    pub fn unique_id() -> String {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        format!("{host}-{}-{suffix}", std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::parse_pairs;

    #[test]
    fn defaults_match_the_contract() {
        let d = InstanceSettings::default();
        assert_eq!(d.sweep_interval, Duration::from_secs(1));
        assert_eq!(d.shutdown_grace, Duration::from_secs(30));
        assert_eq!(d.startup_timeout, Duration::from_secs(30));
        let parsed = parse_pairs(&[], InstanceSettings::parse).expect("defaults parse");
        assert_eq!(
            (
                parsed.sweep_interval,
                parsed.shutdown_grace,
                parsed.startup_timeout
            ),
            (d.sweep_interval, d.shutdown_grace, d.startup_timeout)
        );
        assert_ne!(parsed.id, d.id, "each process its own name");
    }
}
