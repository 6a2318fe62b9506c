//! One participant's endpoint, and what its answers say of its
//! configuration: an outage of answers that never reached the business
//! logic (a wrong URL, an ingress, credentials) is counted on every answer
//! but logged once, when it begins, and once more when it ends.

use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::StatusCode;
use url::Url;

use super::classify::Classified;
use super::path::UnsafePath;
use crate::participants::CallOutcome;
use crate::{redact, telemetry};

/// One participant: where it is, and whether it currently answers as if
/// misconfigured (so that an outage is logged once, not once per call).
pub(super) struct Endpoint {
    /// `alliances` or `integrations`, for logs and metrics.
    name: &'static str,
    /// The setting that names its URL, for the operator to check.
    setting: &'static str,
    pub(super) base: Url,
    misconfigured: AtomicBool,
}

/// How an answer changed what we believe of a participant's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The first answer of an outage that did not reach the business logic.
    Began(StatusCode),
    /// The first answer from the business logic after such an outage.
    Ended,
}

impl Endpoint {
    pub(super) fn new(name: &'static str, setting: &'static str, base: Url) -> Self {
        Self {
            name,
            setting,
            base,
            misconfigured: AtomicBool::new(false),
        }
    }

    /// Counts and logs what `classified` says of the configuration, then
    /// hands its outcome on.
    pub(super) fn answered(&self, url: &Url, classified: Classified) -> CallOutcome {
        if let Some(status) = classified.misconfigured {
            let labels = [
                ("participant", self.name.to_string()),
                ("status", status.as_str().to_string()),
            ];
            metrics::counter!(telemetry::PARTICIPANT_MISCONFIGURED, &labels).increment(1);
        }
        match self.observe(&classified) {
            Some(Change::Began(status)) => tracing::warn!(
                participant = self.name,
                status = status.as_u16(),
                url = %redact::url(url),
                setting = self.setting,
                "the participant answers {status}: the call did not reach its business logic, \
                 likely a misconfiguration (URL, ingress, credentials); retrying with backoff"
            ),
            Some(Change::Ended) => tracing::info!(
                participant = self.name,
                url = %redact::url(url),
                "the participant's business logic answers again"
            ),
            None => {}
        }
        classified.outcome
    }

    fn observe(&self, classified: &Classified) -> Option<Change> {
        if let Some(status) = classified.misconfigured {
            let was = self.misconfigured.swap(true, Ordering::Relaxed);
            return (!was).then_some(Change::Began(status));
        }
        // A business refusal came from the business logic too.
        let reached = matches!(
            classified.outcome,
            CallOutcome::Succeeded { .. } | CallOutcome::Rejected { .. }
        );
        let was = reached && self.misconfigured.swap(false, Ordering::Relaxed);
        was.then_some(Change::Ended)
    }

    /// No call at all: a URL that is not what it must be is never sent. A
    /// `Failed`, never a success: a DELETE that was not made must not
    /// count as done; retried, it parks the saga for a person.
    pub(super) fn refused(&self, why: &UnsafePath) -> CallOutcome {
        tracing::warn!(participant = self.name, problem = %why, "refusing to call the participant");
        CallOutcome::Failed {
            error: format!("not calling {}: {why}", self.name),
            retry_after: None,
        }
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("base", &redact::url(&self.base))
            .field("misconfigured", &self.misconfigured)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classified(outcome: CallOutcome, misconfigured: Option<u16>) -> Classified {
        Classified {
            outcome,
            misconfigured: misconfigured.map(|s| StatusCode::from_u16(s).unwrap()),
        }
    }

    #[test]
    fn a_misconfiguration_is_reported_once_per_outage() {
        let endpoint = Endpoint::new("alliances", "ALIANZAS_API_URL", "http://h".parse().unwrap());
        let failed = || CallOutcome::Failed {
            error: "x".into(),
            retry_after: None,
        };
        let ok = CallOutcome::Succeeded {
            alliance_id: None,
            detail: None,
        };
        let steps = [
            (classified(ok.clone(), None), None),
            (
                classified(failed(), Some(404)),
                Some(Change::Began(StatusCode::NOT_FOUND)),
            ),
            (classified(failed(), Some(404)), None),
            (classified(failed(), Some(403)), None),
            (classified(failed(), None), None),
            (classified(ok.clone(), None), Some(Change::Ended)),
            (classified(ok, None), None),
            (
                classified(failed(), Some(401)),
                Some(Change::Began(StatusCode::UNAUTHORIZED)),
            ),
            (
                classified(CallOutcome::Rejected { error: "no".into() }, None),
                Some(Change::Ended),
            ),
        ];
        for (i, (answer, expected)) in steps.into_iter().enumerate() {
            assert_eq!(
                endpoint.observe(&answer),
                expected,
                "answer {i}: {answer:?}"
            );
        }
    }
}
