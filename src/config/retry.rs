//! The retry section: how a failed step is tried again, and how long
//! compensation may take. The policy's type is the saga's own
//! ([`RetryPolicy`]); its defaults and parsing are settings, so they live
//! here.

use std::time::Duration;

use super::values::{invalid, keyword, millis, positive_secs, whole, Values, MONTH_SECS};
use super::ConfigError;
use crate::saga::{RetryKind, RetryPolicy};

/// The names this section reads.
pub(super) const NAMES: &[&str] = &[
    "RETRY_POLICY",
    "RETRY_MAX_ATTEMPTS",
    "RETRY_BASE_DELAY_MS",
    "RETRY_MAX_DELAY_MS",
    "COMPENSATION_DEADLINE_SECS",
];

/// The contract's defaults (docs/contract.md §6).
pub(super) fn default_policy() -> RetryPolicy {
    RetryPolicy {
        kind: RetryKind::Exponential,
        max_attempts: 5,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_millis(5000),
        compensation_deadline: Duration::from_secs(300),
    }
}

pub(super) fn parse(v: &Values) -> Result<RetryPolicy, ConfigError> {
    let d = default_policy();
    let retry = RetryPolicy {
        kind: v.parse("RETRY_POLICY", d.kind, parse_retry_kind)?,
        max_attempts: v.parse("RETRY_MAX_ATTEMPTS", d.max_attempts, whole(100))?,
        base_delay: v.parse("RETRY_BASE_DELAY_MS", d.base_delay, millis)?,
        max_delay: v.parse("RETRY_MAX_DELAY_MS", d.max_delay, millis)?,
        compensation_deadline: v.parse(
            "COMPENSATION_DEADLINE_SECS",
            d.compensation_deadline,
            positive_secs(MONTH_SECS),
        )?,
    };
    if retry.base_delay > retry.max_delay {
        return Err(invalid(
            "RETRY_BASE_DELAY_MS",
            format!(
                "must not exceed RETRY_MAX_DELAY_MS ({} > {})",
                retry.base_delay.as_millis(),
                retry.max_delay.as_millis()
            ),
        ));
    }
    Ok(retry)
}

fn parse_retry_kind(s: &str) -> Result<RetryKind, String> {
    let kinds = [
        ("exponential", RetryKind::Exponential),
        ("linear", RetryKind::Linear),
        ("none", RetryKind::None),
    ];
    keyword(s, &kinds, "exponential, linear or none")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::parse_pairs;

    #[test]
    fn defaults_match_the_contract() {
        let d = default_policy();
        assert_eq!(d.kind, RetryKind::Exponential);
        assert_eq!(d.max_attempts, 5);
        assert_eq!(d.base_delay, Duration::from_millis(200));
        assert_eq!(d.max_delay, Duration::from_millis(5000));
        assert_eq!(d.compensation_deadline, Duration::from_secs(300));
        assert_eq!(parse_pairs(&[], parse).expect("defaults parse"), d);
    }

    #[test]
    fn base_delay_above_max_delay_is_refused() {
        let err = parse_pairs(&[("RETRY_BASE_DELAY_MS", "6000")], parse).unwrap_err();
        assert!(err.to_string().contains("RETRY_BASE_DELAY_MS"));
    }
}
