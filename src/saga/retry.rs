//! How long to wait before the next attempt at a step.

use std::time::Duration;

use uuid::Uuid;

/// The longest `Retry-After` honoured: a participant asking for more is
/// retried after this, so one bad header cannot park a saga for years.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Shape of the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// base · 2^(n-1), capped.
    Exponential,
    /// base · n, capped.
    Linear,
    /// One attempt, no retries.
    None,
}

/// Retry settings for one step (`RETRY_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub kind: RetryKind,
    /// Attempts per step, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// How long compensation may take once begun; past it the saga is
    /// parked as `failed` rather than kept alive (`COMPENSATION_DEADLINE_SECS`).
    pub compensation_deadline: Duration,
}

impl RetryPolicy {
    /// Whether another attempt may follow attempt number `attempts`.
    pub fn allows_another(&self, attempts: u32) -> bool {
        self.kind != RetryKind::None && attempts < self.max_attempts
    }

    /// The wait after failed attempt number `attempt` (1-based), with up to
    /// 20% jitter derived from the saga id: deterministic for one saga (so
    /// the machine stays pure and testable) yet spread across sagas, so a
    /// participant outage does not end in a synchronized retry storm.
    /// A participant's `Retry-After` is honoured as a lower bound, up to
    /// [`MAX_RETRY_AFTER`].
    pub fn delay(&self, attempt: u32, saga_id: Uuid, retry_after: Option<Duration>) -> Duration {
        let n = attempt.max(1);
        let raw = match self.kind {
            RetryKind::Exponential => self
                .base_delay
                .saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(31))),
            RetryKind::Linear => self.base_delay.saturating_mul(n),
            RetryKind::None => Duration::ZERO,
        };
        let capped = raw.min(self.max_delay);
        let jitter_permille = (saga_id.as_u128().wrapping_add(u128::from(n)) % 200) as u32;
        let jittered = capped.saturating_sub(capped * jitter_permille / 1000);
        match retry_after {
            Some(after) => jittered.max(after.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(kind: RetryKind) -> RetryPolicy {
        RetryPolicy {
            kind,
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_millis(5000),
            compensation_deadline: Duration::from_secs(300),
        }
    }

    fn within_jitter(actual: Duration, nominal_ms: u64) -> bool {
        let ms = actual.as_millis() as u64;
        ms <= nominal_ms && ms * 10 >= nominal_ms * 8
    }

    #[test]
    fn exponential_doubles_and_caps() {
        let p = policy(RetryKind::Exponential);
        let id = Uuid::new_v4();
        for (attempt, nominal) in [
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1600),
            (5, 3200),
            (6, 5000),
            (40, 5000),
        ] {
            let d = p.delay(attempt, id, None);
            assert!(within_jitter(d, nominal), "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn linear_grows_by_base() {
        let p = policy(RetryKind::Linear);
        let id = Uuid::new_v4();
        for (attempt, nominal) in [(1, 200), (2, 400), (3, 600), (30, 5000)] {
            assert!(within_jitter(p.delay(attempt, id, None), nominal));
        }
    }

    #[test]
    fn jitter_is_deterministic_per_saga() {
        let p = policy(RetryKind::Exponential);
        let id = Uuid::new_v4();
        assert_eq!(p.delay(3, id, None), p.delay(3, id, None));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = policy(RetryKind::Exponential);
        let id = Uuid::new_v4();
        assert_eq!(
            p.delay(1, id, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert!(p.delay(5, id, Some(Duration::from_millis(1))) > Duration::from_millis(1));
    }

    #[test]
    fn absurd_retry_after_is_capped() {
        let p = policy(RetryKind::Exponential);
        let years = Duration::from_secs(10_000_000_000_000);
        assert_eq!(p.delay(1, Uuid::new_v4(), Some(years)), MAX_RETRY_AFTER);
    }

    #[test]
    fn attempts_are_bounded_and_none_never_retries() {
        let p = policy(RetryKind::Exponential);
        assert!(p.allows_another(1));
        assert!(p.allows_another(4));
        assert!(!p.allows_another(5));
        assert!(!policy(RetryKind::None).allows_another(1));
    }
}
