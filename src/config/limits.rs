//! The limits section: how much this instance takes on at once, and how
//! long a saga may live.

use std::time::Duration;

use super::values::{positive_secs, whole, Values, MONTH_SECS};
use super::ConfigError;

/// Bounds on load and on a saga's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsSettings {
    /// Sagas driven at once by this instance; beyond it, load queues in
    /// the broker (`MAX_IN_FLIGHT`).
    pub max_in_flight: usize,
    /// The largest message accepted, from the broker or the API
    /// (`MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// After this, a saga still moving forward is compensated
    /// (`SAGA_DEADLINE_SECS`).
    pub saga_deadline: Duration,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            max_message_bytes: 1_048_576,
            saga_deadline: Duration::from_secs(300),
        }
    }
}

impl LimitsSettings {
    /// The names this section reads.
    pub(super) const NAMES: &'static [&'static str] =
        &["MAX_IN_FLIGHT", "MAX_MESSAGE_BYTES", "SAGA_DEADLINE_SECS"];

    pub(super) fn parse(v: &Values) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            max_in_flight: v.parse("MAX_IN_FLIGHT", d.max_in_flight, whole(100_000))?,
            max_message_bytes: v.parse(
                "MAX_MESSAGE_BYTES",
                d.max_message_bytes,
                whole(64 * 1_048_576),
            )?,
            saga_deadline: v.parse(
                "SAGA_DEADLINE_SECS",
                d.saga_deadline,
                positive_secs(MONTH_SECS),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::parse_pairs;

    #[test]
    fn defaults_match_the_contract() {
        let d = LimitsSettings::default();
        assert_eq!(d.max_in_flight, 256);
        assert_eq!(d.max_message_bytes, 1_048_576);
        assert_eq!(d.saga_deadline, Duration::from_secs(300));
        assert_eq!(
            parse_pairs(&[], LimitsSettings::parse).expect("defaults parse"),
            d
        );
    }
}
