//! A saga's page: its facts and its timeline — every transition as a row
//! and as a bar on a time axis (how long the saga stayed in the state it
//! entered), the participant call each one records and its outcome, the
//! error, and the instance that made it.

use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::page;
use crate::saga::{HistoryEntry, Saga, SagaState};

const WIDTH: f64 = 640.0;
const ROW: usize = 22;
const LABEL: usize = 150;

/// The saga's fields.
pub fn facts(saga: &Saga) -> Markup {
    html! {
        dl.facts #saga-facts {
            dt { "partner" } dd { (saga.partner_id) }
            dt { "correlation id" } dd { code { (saga.correlation_id) } }
            dt { "started by" } dd { "PartnerCreated " code { (saga.event_id) } }
            dt { "step" } dd { (saga.step.as_str()) ", attempt " (saga.attempts) }
            dt { "alliance" } dd { (saga.alliance_id.as_deref().unwrap_or("—")) }
            dt { "last error" } dd.error-text #last-error { (saga.last_error.as_deref().unwrap_or("—")) }
            dt { "created" } dd { (page::time(saga.created_at)) }
            dt { "last change" } dd { (page::time(saga.updated_at)) }
            dt { "deadline" } dd { (page::time(saga.deadline_at)) }
        }
    }
}

/// What a transition says of a participant call: the step and its
/// outcome (`ok`, `refused`, `failed`, or `sent` for a call under way).
fn call_of(entry: &HistoryEntry) -> Option<(&'static str, &'static str, &'static str)> {
    let step = match entry.from_state.unwrap_or(entry.to_state) {
        SagaState::Compensating => "delete_partner",
        _ => "create_alliance",
    };
    Some(match entry.reason.as_str() {
        "alliance_requested" => ("create_alliance", "sent", "called"),
        "command_sent" => (step, "sent", "command sent"),
        "participant_started" | "participant_progress" => (step, "sent", "in progress"),
        "alliance_created" => ("create_alliance", "ok", "created"),
        "alliance_created_late" => ("create_alliance", "ok", "created, late"),
        "alliance_rejected" => ("create_alliance", "refused", "refused"),
        "attempt_failed" => (step, "failed", "failed, will retry"),
        "retries_exhausted" => ("create_alliance", "failed", "failed, attempts used up"),
        "deadline_passed" => ("create_alliance", "failed", "failed, deadline passed"),
        "partner_deleted" => ("delete_partner", "ok", "deleted"),
        "compensation_exhausted" => ("delete_partner", "failed", "failed, attempts used up"),
        "compensation_deadline_passed" => ("delete_partner", "failed", "failed, deadline passed"),
        "broker_unreachable" => (step, "failed", "not sent: broker unreachable"),
        _ => return None,
    })
}

/// Time since `start`, as shown.
fn offset(start: DateTime<Utc>, at: DateTime<Utc>) -> String {
    elapsed((at - start).num_milliseconds() as f64)
}

/// `ms` in the largest unit that keeps a few significant digits.
fn elapsed(ms: f64) -> String {
    let sign = if ms < 0.0 { "−" } else { "+" };
    let ms = ms.abs();
    match ms {
        ms if ms < 10_000.0 => format!("{sign}{ms:.0} ms"),
        ms if ms < 600_000.0 => format!("{sign}{:.1} s", ms / 1_000.0),
        ms if ms < 7_200_000.0 => format!("{sign}{:.1} min", ms / 60_000.0),
        ms => format!("{sign}{:.1} h", ms / 3_600_000.0),
    }
}

/// Five ticks across `total_ms`: where each goes (0 to 1), its label, and
/// its anchor, so the first and last stay inside the picture.
fn axis_ticks(total_ms: f64) -> Vec<(f64, String, &'static str)> {
    (0..=4)
        .map(|tick| {
            let at = f64::from(tick) / 4.0;
            let anchor = match tick {
                0 => "start",
                4 => "end",
                _ => "middle",
            };
            (at, elapsed(total_ms * at), anchor)
        })
        .collect()
}

/// The axis: from the first transition to the last (or to `now` while
/// the saga is live), never shorter than a millisecond.
fn span(history: &[HistoryEntry], saga: &Saga, now: DateTime<Utc>) -> (DateTime<Utc>, f64) {
    let start = history.first().map(|h| h.at).unwrap_or(saga.created_at);
    let end = if saga.state.is_terminal() {
        history.last().map(|h| h.at).unwrap_or(saga.updated_at)
    } else {
        now
    };
    let ms = (end - start).num_milliseconds().max(1) as f64;
    (start, ms)
}

/// The timeline: bars, then the table.
pub fn render(saga: &Saga, history: &[HistoryEntry], now: DateTime<Utc>) -> Markup {
    let (start, total_ms) = span(history, saga, now);
    let x = |at: DateTime<Utc>| {
        LABEL as f64 + ((at - start).num_milliseconds().max(0) as f64 / total_ms * WIDTH)
    };
    let height = history.len() * ROW + ROW;
    html! {
        section.panel #timeline {
            h2 { "Timeline" }
            svg.timeline viewBox={ "0 0 " (LABEL as f64 + WIDTH + 10.0) " " (height) }
                role="img" aria-label="The saga's transitions on a time axis" {
                @for (i, h) in history.iter().enumerate() {
                    @let end = history.get(i + 1).map(|n| n.at).unwrap_or(if saga.state.is_terminal() { h.at } else { now });
                    @let (x0, x1) = (x(h.at), x(end));
                    g.step {
                        title { (h.to_state.as_str()) " " (offset(start, h.at)) ": " (h.reason) }
                        text x="0" y=(i * ROW + 15) { (h.to_state.as_str()) }
                        rect class={ "bar state-" (h.to_state.as_str()) } x=(format!("{x0:.1}"))
                            y=(i * ROW + 4) width=(format!("{:.1}", (x1 - x0).max(2.0))) height=(ROW - 8) {}
                    }
                }
                @for (at, label, anchor) in axis_ticks(total_ms) {
                    @let tx = LABEL as f64 + WIDTH * at;
                    text.tick x=(format!("{tx:.1}")) y=(height - 4) text-anchor=(anchor) { (label) }
                }
            }
            table #history {
                thead { tr { th { "#" } th { "when" } th { "transition" } th { "reason" }
                    th { "participant call" } th { "detail" } th { "saga events" } th { "instance" } } }
                tbody {
                    @for h in history {
                        @let call = call_of(h);
                        tr data-reason=(h.reason) data-outcome=(call.map(|c| c.1).unwrap_or("")) {
                            td.num { (h.seq) }
                            td title=(page::time(h.at)) { (offset(start, h.at)) }
                            td { (h.from_state.map(|s| s.as_str()).unwrap_or("—")) " → " (page::state_badge(h.to_state)) }
                            td { (h.reason) }
                            td {
                                @if let Some((step, outcome, text)) = call {
                                    span class={ "call call-" (outcome) } { (step) ": " (text) }
                                }
                            }
                            td class=[matches!(call.map(|c| c.1), Some("failed" | "refused")).then_some("error-text")] {
                                (h.detail.as_deref().unwrap_or(""))
                            }
                            td.events {
                                @for event in &h.events {
                                    code.event { (event) } " "
                                }
                            }
                            td { (h.instance_id.as_deref().unwrap_or("—")) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i32, from: Option<SagaState>, to: SagaState, reason: &str) -> HistoryEntry {
        HistoryEntry {
            seq,
            from_state: from,
            to_state: to,
            reason: reason.into(),
            detail: None,
            at: Utc::now(),
            instance_id: Some("i1".into()),
            events: Vec::new(),
        }
    }

    #[test]
    fn compensation_attempts_read_as_failed_deletions() {
        use SagaState::*;
        let failed = entry(5, Some(Compensating), Compensating, "attempt_failed");
        assert_eq!(
            call_of(&failed),
            Some(("delete_partner", "failed", "failed, will retry"))
        );
        let forward = entry(
            2,
            Some(CreatingAlliance),
            CreatingAlliance,
            "attempt_failed",
        );
        assert_eq!(call_of(&forward).map(|c| c.0), Some("create_alliance"));
        let parked = entry(9, Some(Compensating), Failed, "compensation_exhausted");
        assert_eq!(call_of(&parked).map(|c| c.1), Some("failed"));
        assert_eq!(call_of(&entry(1, None, Started, "partner_created")), None);
    }

    #[test]
    fn offsets_read_in_ms_then_seconds_minutes_and_hours() {
        let t = Utc::now();
        let at = |ms| offset(t, t + chrono::Duration::milliseconds(ms));
        assert_eq!(at(42), "+42 ms");
        assert_eq!(at(12_340), "+12.3 s");
        assert_eq!(at(754_000), "+12.6 min");
        assert_eq!(at(43_200_000), "+12.0 h");
        // Another instance's clock may be a little behind.
        assert_eq!(at(-3), "−3 ms");
    }

    #[test]
    fn the_axis_ticks_use_the_same_units_and_stay_inside() {
        let ticks = axis_ticks(43_200_000.0);
        let labels: Vec<&str> = ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["+0 ms", "+3.0 h", "+6.0 h", "+9.0 h", "+12.0 h"]);
        let anchors: Vec<&str> = ticks.iter().map(|t| t.2).collect();
        assert_eq!(anchors, ["start", "middle", "middle", "middle", "end"]);
    }
}
