//! Where a saga's time went inside the service, from its own `/metrics`
//! (read once, just before it stops: the bench's service is fresh, so its
//! histograms hold the run only). Means, per stage: the store's batched
//! writes and how many each carried, a transition's wait from being asked
//! for to its durable answer, and the participants' calls.

use super::costs::round2;
use serde_json::{json, Value};

/// The stages' means from a Prometheus text exposition.
pub fn from_metrics(text: &str) -> Value {
    let written = |write: &str| StoreWrite::of(text, write);
    let (record, transition) = (written("record"), written("transition"));
    json!({
        "record_write_ms": record.mean_ms,
        "record_batch": record.batch,
        "transition_write_ms": transition.mean_ms,
        "transition_batch": transition.batch,
        "transition_commit_ms": mean_ms(text, "saga_transition_commit_seconds", ""),
        "participant_call_ms": mean_ms(text, "saga_participant_call_seconds", ""),
    })
}

/// One kind of batched store write: its mean time and size.
struct StoreWrite {
    mean_ms: Option<f64>,
    batch: Option<f64>,
}

impl StoreWrite {
    fn of(text: &str, write: &str) -> Self {
        let label = format!("write=\"{write}\"");
        let writes = total(text, "saga_store_write_seconds_count", &label);
        let items = total(text, "saga_store_write_items_total", &label);
        Self {
            mean_ms: mean_ms(text, "saga_store_write_seconds", &label),
            batch: (writes > 0.0).then(|| round2(items / writes)),
        }
    }
}

/// A histogram's mean in milliseconds over its series that carry `label`
/// (all of them when it is empty); `None` when nothing was observed.
fn mean_ms(text: &str, histogram: &str, label: &str) -> Option<f64> {
    let count = total(text, &format!("{histogram}_count"), label);
    let sum = total(text, &format!("{histogram}_sum"), label);
    (count > 0.0).then(|| round2(sum * 1000.0 / count))
}

/// The sum of `name`'s series that carry `label` (`key="value"`; all of
/// them when it is empty).
fn total(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            let mut labels = labels.trim_end_matches('}').split(',');
            (metric == name && (label.is_empty() || labels.any(|l| l == label)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# TYPE saga_store_write_seconds histogram
saga_store_write_seconds_bucket{write="record",le="0.005"} 3
saga_store_write_seconds_sum{write="record"} 0.024
saga_store_write_seconds_count{write="record"} 4
saga_store_write_seconds_sum{write="transition"} 0.05
saga_store_write_seconds_count{write="transition"} 10
saga_store_write_items_total{write="record"} 80
saga_store_write_items_total{write="transition"} 75
saga_store_write_items_total{rewrite="record"} 1000
saga_transition_commit_seconds_bucket{le="+Inf"} 75
saga_transition_commit_seconds_sum 0.6
saga_transition_commit_seconds_count 75
saga_participant_call_seconds_sum{step="create_alliance",outcome="succeeded"} 0.03
saga_participant_call_seconds_count{step="create_alliance",outcome="succeeded"} 9
saga_participant_call_seconds_sum{step="delete_partner",outcome="succeeded"} 0.01
saga_participant_call_seconds_count{step="delete_partner",outcome="succeeded"} 1
"#;

    #[test]
    fn the_stages_are_means_over_every_matching_series() {
        let stages = from_metrics(SCRAPE);
        assert_eq!(stages["record_write_ms"], 6.0);
        assert_eq!(stages["record_batch"], 20.0);
        assert_eq!(stages["transition_write_ms"], 5.0);
        assert_eq!(stages["transition_batch"], 7.5);
        assert_eq!(stages["transition_commit_ms"], 8.0);
        // Both steps' calls: 40 ms over 10.
        assert_eq!(stages["participant_call_ms"], 4.0);
    }

    #[test]
    fn a_stage_nothing_went_through_is_null() {
        let stages = from_metrics("# nothing yet\nsaga_in_flight 0\n");
        for stage in [
            "record_write_ms",
            "record_batch",
            "transition_write_ms",
            "transition_batch",
            "transition_commit_ms",
            "participant_call_ms",
        ] {
            assert!(stages[stage].is_null(), "{stage}: {stages}");
        }
    }
}
