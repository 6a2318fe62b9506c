//! The lease rule leans on clocks: each instance stamps leases and due
//! times with its own clock, and reads another's stamps with it. That is
//! safe while the instances' clocks agree to well within [`LEASE_GRACE`]
//! (the slack every lease carries past its step's timeout): each is
//! compared with the database's clock, the one clock they all share, at
//! start-up (a skew past [`MAX_CLOCK_SKEW`] refuses to start) and then
//! every minute by the sweeper (logged and exported as a gauge).
//!
//! [`LEASE_GRACE`]: super::LEASE_GRACE

use chrono::{DateTime, Utc};

use crate::store::{SagaStore, StoreError};

/// The largest skew from the database's clock an instance may have: two
/// instances then differ by at most twice this, under the 5 s lease grace.
pub const MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(2);

/// This machine's clock minus the database's, taken around a query so that
/// the round trip does not count as skew: the best of three samples, since
/// a slow first answer (a new connection) widens the error to half its time.
pub async fn skew(store: &dyn SagaStore) -> Result<chrono::Duration, StoreError> {
    let mut best: Option<(chrono::Duration, chrono::Duration)> = None;
    for _ in 0..3 {
        let before = Utc::now();
        let database = store.clock().await?;
        let after = Utc::now();
        let round_trip = after - before;
        if best.is_none_or(|(rtt, _)| round_trip < rtt) {
            best = Some((round_trip, skew_of(before, database, after)));
        }
    }
    Ok(best.map(|(_, skew)| skew).unwrap_or_default())
}

/// The skew given the local times around the database's answer.
pub fn skew_of(
    before: DateTime<Utc>,
    database: DateTime<Utc>,
    after: DateTime<Utc>,
) -> chrono::Duration {
    let midpoint = before + (after - before) / 2;
    midpoint - database
}

/// Whether `skew` keeps leases safe.
pub fn acceptable(skew: chrono::Duration) -> bool {
    skew.abs().to_std().is_ok_and(|s| s <= MAX_CLOCK_SKEW)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap_or_default()
    }

    #[test]
    fn the_round_trip_is_not_skew() {
        // Asked at 0, answered at 1000 with the database at 500: in step.
        assert_eq!(skew_of(at(0), at(500), at(1000)), chrono::Duration::zero());
        assert_eq!(
            skew_of(at(0), at(-2500), at(1000)),
            chrono::Duration::milliseconds(3000)
        );
        assert_eq!(
            skew_of(at(0), at(3500), at(1000)),
            chrono::Duration::milliseconds(-3000)
        );
    }

    #[test]
    fn skews_past_the_bound_are_refused_either_way() {
        assert!(acceptable(chrono::Duration::milliseconds(1999)));
        assert!(acceptable(chrono::Duration::milliseconds(-2000)));
        assert!(!acceptable(chrono::Duration::milliseconds(2001)));
        assert!(!acceptable(chrono::Duration::milliseconds(-2001)));
    }
}
