//! Both participants, simulated: alliances (create the alliance) and
//! integrations (delete the partner). Used by the embedded demo, the
//! compose stack and load tests, over HTTP ([`http`]) or the broker
//! ([`broker`]).
//!
//! They behave as the real services are expected to: an `Idempotency-Key`
//! seen before gets the same answer and is counted once; a business
//! rejection is decided once per saga; a transient failure (503, or no
//! reply over the broker) is rolled per attempt, so retries can succeed;
//! a partner picked to fail deletion always fails, so compensation
//! exhausts and the saga ends `failed`.

pub mod broker;
pub mod http;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use uuid::Uuid;

use crate::saga::Step;

/// How the simulated participants behave.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorConfig {
    /// Added to every answer.
    pub latency: Duration,
    /// Share of sagas whose alliance is refused (422 / `failed` reply).
    pub reject_ratio: f64,
    /// Share of attempts answered 503 (over the broker: not answered).
    pub transient_ratio: f64,
    /// Share of partners whose deletion always fails.
    pub delete_fail_ratio: f64,
    /// Seed for the rolls, so a run can be repeated.
    pub seed: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            reject_ratio: 0.0,
            transient_ratio: 0.0,
            delete_fail_ratio: 0.0,
            seed: 42,
        }
    }
}

/// Counts per participant, as `GET /stats` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub alliances: AllianceStats,
    pub integrations: IntegrationStats,
}

/// Alliances' counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AllianceStats {
    /// Every request, replays and failures included.
    pub requests: u64,
    /// Alliances created: once per saga at most.
    pub created: u64,
    /// Requests answered from an earlier outcome (same idempotency key).
    pub replayed: u64,
    /// Sagas refused.
    pub rejected: u64,
    /// Attempts answered 503 / left unanswered.
    pub transient_failures: u64,
}

/// Integrations' counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IntegrationStats {
    pub requests: u64,
    /// Partners deleted: once per saga at most.
    pub deleted: u64,
    pub replayed: u64,
    /// Deletions refused because the partner was picked to fail.
    pub failed: u64,
    pub transient_failures: u64,
}

/// What a participant answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Done; `replay` when an earlier request with the same key did it.
    Done {
        alliance_id: Option<String>,
        replay: bool,
    },
    /// A business refusal (or, for deletions, a lasting failure).
    Refused { error: String },
    /// Try again later.
    Unavailable,
}

/// The simulated participants' shared state; cheap to clone.
#[derive(Clone)]
pub struct Simulator {
    config: SimulatorConfig,
    state: Arc<Mutex<State>>,
}

struct State {
    rng: StdRng,
    /// Outcome per idempotency key: `Ok(alliance_id)` or `Err(refusal)`.
    alliances: HashMap<String, Result<String, String>>,
    /// Partner deleted per idempotency key.
    deletions: HashMap<String, String>,
    /// Partners picked (once) to fail deletion.
    doomed: HashMap<String, bool>,
    stats: Stats,
}

/// Partners whose email is at this domain never get an alliance.
pub const REFUSED_DOMAIN: &str = "@reject.test";

impl Simulator {
    /// Fresh participants with no history.
    pub fn new(config: SimulatorConfig) -> Self {
        let state = State {
            rng: StdRng::seed_from_u64(config.seed),
            alliances: HashMap::new(),
            deletions: HashMap::new(),
            doomed: HashMap::new(),
            stats: Stats::default(),
        };
        Self {
            config,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The behaviour settings.
    pub fn config(&self) -> &SimulatorConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent; a panic in one
        // cannot leave half an update behind, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Alliances: create `partner_id`'s alliance. `key` is the idempotency
    /// key; without one every request is new.
    /// A partner whose email is at [`REFUSED_DOMAIN`] is always refused, so
    /// load tools can ask for failures (`publish --fail-ratio`).
    pub fn create_alliance(&self, key: Option<&str>, email: Option<&str>) -> Answer {
        let mut st = self.lock();
        st.stats.alliances.requests += 1;
        let key = key.map_or_else(|| Uuid::new_v4().to_string(), str::to_string);
        if let Some(outcome) = st.alliances.get(&key).cloned() {
            st.stats.alliances.replayed += 1;
            return match outcome {
                Ok(id) => Answer::Done {
                    alliance_id: Some(id),
                    replay: true,
                },
                Err(error) => Answer::Refused { error },
            };
        }
        if st.rng.random::<f64>() < self.config.transient_ratio {
            st.stats.alliances.transient_failures += 1;
            return Answer::Unavailable;
        }
        let refused_domain = email.is_some_and(|e| e.ends_with(REFUSED_DOMAIN));
        if refused_domain || st.rng.random::<f64>() < self.config.reject_ratio {
            st.stats.alliances.rejected += 1;
            let error = if refused_domain {
                format!("simulated rejection: email domain {REFUSED_DOMAIN} is refused")
            } else {
                "simulated rejection: partner does not qualify for an alliance".to_string()
            };
            st.alliances.insert(key, Err(error.clone()));
            return Answer::Refused { error };
        }
        st.stats.alliances.created += 1;
        let id = format!("al-{:06}", st.stats.alliances.created);
        st.alliances.insert(key, Ok(id.clone()));
        Answer::Done {
            alliance_id: Some(id),
            replay: false,
        }
    }

    /// Integrations: delete `partner_id`.
    pub fn delete_partner(&self, key: Option<&str>, partner_id: &str) -> Answer {
        let mut st = self.lock();
        st.stats.integrations.requests += 1;
        let key = key.map_or_else(|| Uuid::new_v4().to_string(), str::to_string);
        if st.deletions.contains_key(&key) {
            st.stats.integrations.replayed += 1;
            return Answer::Done {
                alliance_id: None,
                replay: true,
            };
        }
        let doomed = match st.doomed.get(partner_id) {
            Some(doomed) => *doomed,
            None => {
                let doomed = st.rng.random::<f64>() < self.config.delete_fail_ratio;
                st.doomed.insert(partner_id.to_string(), doomed);
                doomed
            }
        };
        if doomed {
            st.stats.integrations.failed += 1;
            return Answer::Refused {
                error: "simulated failure: partner is locked and cannot be deleted".into(),
            };
        }
        if st.rng.random::<f64>() < self.config.transient_ratio {
            st.stats.integrations.transient_failures += 1;
            return Answer::Unavailable;
        }
        st.stats.integrations.deleted += 1;
        st.deletions.insert(key, partner_id.to_string());
        Answer::Done {
            alliance_id: None,
            replay: false,
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// The alliance created for `saga_id`, if any (checks the demo's numbers).
    pub fn alliance_of(&self, saga_id: Uuid) -> Option<String> {
        match self
            .lock()
            .alliances
            .get(&Step::CreateAlliance.idempotency_key(saga_id))
        {
            Some(Ok(id)) => Some(id.clone()),
            _ => None,
        }
    }

    /// Whether `saga_id`'s partner was deleted.
    pub fn deleted_for(&self, saga_id: Uuid) -> bool {
        self.lock()
            .deletions
            .contains_key(&Step::DeletePartner.idempotency_key(saga_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(reject: f64, transient: f64, delete_fail: f64) -> Simulator {
        Simulator::new(SimulatorConfig {
            reject_ratio: reject,
            transient_ratio: transient,
            delete_fail_ratio: delete_fail,
            ..Default::default()
        })
    }

    #[test]
    fn the_same_key_gets_the_same_alliance_counted_once() {
        let s = sim(0.0, 0.0, 0.0);
        let first = s.create_alliance(Some("k1"), None);
        let again = s.create_alliance(Some("k1"), None);
        let Answer::Done {
            alliance_id: a,
            replay: false,
        } = first.clone()
        else {
            panic!("{first:?}")
        };
        let Answer::Done {
            alliance_id: b,
            replay: true,
        } = again.clone()
        else {
            panic!("{again:?}")
        };
        assert_eq!(a, b);
        let stats = s.stats().alliances;
        assert_eq!((stats.requests, stats.created, stats.replayed), (2, 1, 1));
        assert_ne!(
            s.create_alliance(Some("k2"), None),
            first,
            "another key, another alliance"
        );
    }

    #[test]
    fn a_rejection_is_decided_once_per_key() {
        let s = sim(1.0, 0.0, 0.0);
        assert!(matches!(
            s.create_alliance(Some("k"), None),
            Answer::Refused { .. }
        ));
        assert!(matches!(
            s.create_alliance(Some("k"), None),
            Answer::Refused { .. }
        ));
        assert_eq!(s.stats().alliances.rejected, 1);
        assert_eq!(s.stats().alliances.created, 0);
    }

    #[test]
    fn transient_failures_are_rolled_per_attempt() {
        let s = sim(0.0, 1.0, 0.0);
        assert_eq!(s.create_alliance(Some("k"), None), Answer::Unavailable);
        assert_eq!(s.create_alliance(Some("k"), None), Answer::Unavailable);
        assert_eq!(s.stats().alliances.transient_failures, 2);
        let half = sim(0.0, 0.5, 0.0);
        let done = (0..200)
            .filter(|i| {
                matches!(
                    half.create_alliance(Some(&format!("k{i}")), None),
                    Answer::Done { .. }
                )
            })
            .count();
        assert!((60..140).contains(&done), "about half: {done}");
    }

    #[test]
    fn doomed_partners_always_fail_deletion_and_others_delete_once() {
        let s = sim(0.0, 0.0, 1.0);
        for _ in 0..3 {
            assert!(matches!(
                s.delete_partner(Some("k"), "p-1"),
                Answer::Refused { .. }
            ));
        }
        assert_eq!(s.stats().integrations.failed, 3);
        let ok = sim(0.0, 0.0, 0.0);
        assert_eq!(
            ok.delete_partner(Some("k"), "p-2"),
            Answer::Done {
                alliance_id: None,
                replay: false
            }
        );
        assert_eq!(
            ok.delete_partner(Some("k"), "p-2"),
            Answer::Done {
                alliance_id: None,
                replay: true
            }
        );
        assert_eq!(ok.stats().integrations.deleted, 1);
    }

    #[test]
    fn lookups_by_saga_use_the_contracts_idempotency_keys() {
        let s = sim(0.0, 0.0, 0.0);
        let saga = Uuid::new_v4();
        s.create_alliance(Some(&Step::CreateAlliance.idempotency_key(saga)), None);
        s.delete_partner(Some(&Step::DeletePartner.idempotency_key(saga)), "p");
        assert_eq!(s.alliance_of(saga).as_deref(), Some("al-000001"));
        assert!(s.deleted_for(saga));
        assert!(s.alliance_of(Uuid::new_v4()).is_none());
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let run = || {
            let s = sim(0.3, 0.3, 0.0);
            (0..50)
                .map(|i| s.create_alliance(Some(&format!("k{i}")), None))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn partners_at_the_refused_domain_never_get_an_alliance() {
        let s = Simulator::new(SimulatorConfig::default());
        let refused = s.create_alliance(Some("k-r"), Some("p-1@reject.test"));
        assert!(
            matches!(&refused, Answer::Refused { error } if error.contains("@reject.test")),
            "{refused:?}"
        );
        assert!(matches!(
            s.create_alliance(Some("k-ok"), Some("p-2@example.test")),
            Answer::Done { .. }
        ));
        assert_eq!(s.stats().alliances.rejected, 1);
    }
}
