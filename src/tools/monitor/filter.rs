//! Which messages to show, and what the grouped view groups by.

use std::str::FromStr;

use super::view::Observed;

/// Which messages to show. Every filter given must match; within one
/// filter any of its values may. A message lacking the field a filter
/// looks at does not match it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exact `correlation_id`s.
    pub correlation_ids: Vec<String>,
    /// Saga ids, case-insensitive; the start or the end of one is enough,
    /// so the short id the text view shows (`…3f2a9c1d`) can be pasted back.
    pub saga_ids: Vec<String>,
    /// `event_type`s, case-insensitive.
    pub event_types: Vec<String>,
}

impl Filter {
    /// Whether `o` passes every filter.
    pub fn matches(&self, o: &Observed) -> bool {
        let any = |wanted: &[String], have: Option<&str>, hit: fn(&str, &str) -> bool| {
            wanted.is_empty() || have.is_some_and(|h| wanted.iter().any(|w| hit(h, w)))
        };
        any(
            &self.correlation_ids,
            o.correlation_id.as_deref(),
            |h, w| h == w,
        ) && any(&self.saga_ids, o.saga_id.as_deref(), saga_id_matches)
            && any(&self.event_types, o.event_type.as_deref(), |h, w| {
                h.eq_ignore_ascii_case(w.trim())
            })
    }
}

/// `have` starts or ends with `wanted` (any case, a leading `…` ignored).
fn saga_id_matches(have: &str, wanted: &str) -> bool {
    let wanted = wanted.trim().trim_start_matches('…').to_ascii_lowercase();
    let have = have.to_ascii_lowercase();
    !wanted.is_empty() && (have.starts_with(&wanted) || have.ends_with(&wanted))
}

/// What the grouped view groups by (see [`super::group`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupBy {
    /// One group per saga, the `PartnerCreated` that started it included
    /// (joined by its `partner_id`). The default: a saga is the unit the
    /// orchestrator runs and it has a known end, so its block can be
    /// printed as soon as it finishes, even when a whole load test shares
    /// one `correlation_id`.
    #[default]
    Saga,
    /// One group per `correlation_id`: an event and everything it caused,
    /// however many sagas that is.
    Correlation,
    /// No grouping: one flat stream, each message printed as read.
    None,
}

/// The key of messages that lack the field grouped by.
pub const NO_KEY: &str = "(none)";

impl GroupBy {
    /// The word used in group headers.
    pub fn label(self) -> &'static str {
        match self {
            Self::Correlation => "correlation",
            Self::Saga => "saga",
            Self::None => "none",
        }
    }
}

impl FromStr for GroupBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "correlation" | "correlation_id" | "correlation-id" => Ok(Self::Correlation),
            "saga" | "saga_id" | "saga-id" => Ok(Self::Saga),
            "none" => Ok(Self::None),
            _ => Err(format!("expected correlation, saga or none, got {s:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::monitor::view::ChannelKind;
    use chrono::Utc;

    fn observed(corr: Option<&str>, saga: Option<&str>, event_type: Option<&str>) -> Observed {
        Observed {
            time: Utc::now(),
            channel: "saga-events".into(),
            kind: ChannelKind::SagaEvents,
            id: "1-0".into(),
            event_id: None,
            correlation_id: corr.map(str::to_string),
            saga_id: saga.map(str::to_string),
            event_type: event_type.map(str::to_string),
            status: None,
            payload: None,
            dlq_reason: None,
            source_channel: None,
            malformed: None,
            raw: None,
        }
    }

    const SAGA: &str = "0194F0A2-1111-7000-8000-000000000001";

    #[test]
    fn an_empty_filter_lets_everything_through() {
        assert!(Filter::default().matches(&observed(None, None, None)));
    }

    #[test]
    fn filters_combine_with_and_values_with_or() {
        let o = observed(Some("order-42"), Some(SAGA), Some("SagaCompleted"));
        let f = |c: &[&str], s: &[&str], e: &[&str]| Filter {
            correlation_ids: c.iter().map(|x| x.to_string()).collect(),
            saga_ids: s.iter().map(|x| x.to_string()).collect(),
            event_types: e.iter().map(|x| x.to_string()).collect(),
        };
        assert!(f(&["order-42"], &[], &[]).matches(&o));
        assert!(!f(&["order-4"], &[], &[]).matches(&o), "exact correlation");
        assert!(f(&["x", "order-42"], &[], &[]).matches(&o));
        assert!(f(&[], &["0194f0a2"], &[]).matches(&o), "a prefix, any case");
        assert!(
            f(&[], &["…00000001"], &[]).matches(&o),
            "the short id shown"
        );
        assert!(f(&[], &["00000001"], &[]).matches(&o));
        assert!(!f(&[], &["1111"], &[]).matches(&o), "not any substring");
        assert!(!f(&[], &[""], &[]).matches(&o));
        assert!(f(&[], &[SAGA], &[]).matches(&o));
        assert!(!f(&[], &["1194f0a2"], &[]).matches(&o));
        assert!(f(&[], &[], &["sagacompleted"]).matches(&o));
        assert!(f(&["order-42"], &["0194"], &["SagaCompleted"]).matches(&o));
        assert!(!f(&["order-42"], &["0194"], &["SagaFailed"]).matches(&o));
        // Lacking the field means not matching it.
        let bare = observed(None, None, None);
        assert!(!f(&["order-42"], &[], &[]).matches(&bare));
        assert!(!f(&[], &["0194"], &[]).matches(&bare));
    }

    #[test]
    fn group_by_parses_and_defaults_to_saga() {
        assert_eq!(GroupBy::default(), GroupBy::Saga);
        assert_eq!("saga".parse(), Ok(GroupBy::Saga));
        assert_eq!("Correlation".parse(), Ok(GroupBy::Correlation));
        assert_eq!("none".parse(), Ok(GroupBy::None));
        assert!("partner".parse::<GroupBy>().is_err());
    }
}
