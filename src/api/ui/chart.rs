//! The overview's chart: one stacked bar a minute for the last hour,
//! sagas completed, compensated and failed, drawn as SVG on the server
//! (attributes only, so the strict CSP needs no inline style).

use chrono::{DateTime, DurationRound, Utc};
use maud::{html, Markup};

use crate::saga::SagaState;
use crate::store::operator::EndedInMinute;

/// Minutes shown.
pub const MINUTES: usize = 60;

const BAR_WIDTH: usize = 10;
const HEIGHT: i64 = 120;

/// One minute's endings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minute {
    /// The minute's first instant.
    pub start: DateTime<Utc>,
    /// Sagas that ended `completed` in it.
    pub completed: i64,
    /// Sagas that ended `compensated` in it.
    pub compensated: i64,
    /// Sagas parked `failed` in it.
    pub failed: i64,
}

impl Minute {
    fn total(&self) -> i64 {
        self.completed + self.compensated + self.failed
    }

    /// The last [`MINUTES`] minutes up to `now`'s, oldest first, every one
    /// present (a minute with nothing ended is a zero bar).
    pub fn series(rows: &[EndedInMinute], now: DateTime<Utc>) -> Vec<Minute> {
        let this_minute = now
            .duration_trunc(chrono::Duration::minutes(1))
            .unwrap_or(now);
        let mut minutes: Vec<Minute> = (0..MINUTES)
            .rev()
            .map(|ago| Minute {
                start: this_minute - chrono::Duration::minutes(ago as i64),
                completed: 0,
                compensated: 0,
                failed: 0,
            })
            .collect();
        for row in rows {
            let Some(m) = minutes.iter_mut().find(|m| m.start == row.minute) else {
                continue;
            };
            match row.state {
                SagaState::Completed => m.completed += row.count,
                SagaState::Compensated => m.compensated += row.count,
                SagaState::Failed => m.failed += row.count,
                _ => {}
            }
        }
        minutes
    }
}

/// Bar heights scaled to the busiest minute.
fn scaled(n: i64, max: i64) -> i64 {
    if max == 0 {
        0
    } else {
        (n * HEIGHT + max - 1) / max
    }
}

/// The chart, with a legend and each minute's numbers as its tooltip.
pub fn render(minutes: &[Minute]) -> Markup {
    let max = minutes.iter().map(Minute::total).max().unwrap_or(0);
    let width = minutes.len() * BAR_WIDTH;
    let totals: [i64; 3] = minutes.iter().fold([0; 3], |t, m| {
        [t[0] + m.completed, t[1] + m.compensated, t[2] + m.failed]
    });
    html! {
        figure.chart #ended-chart data-completed=(totals[0]) data-compensated=(totals[1]) data-failed=(totals[2]) {
            svg viewBox={ "0 0 " (width) " " (HEIGHT) } width=(width) height=(HEIGHT)
                role="img" aria-label="Sagas ended per minute over the last hour" {
                @for (i, m) in minutes.iter().enumerate() {
                    g {
                        title {
                            (m.start.format("%H:%M")) " UTC: " (m.completed) " completed, "
                            (m.compensated) " compensated, " (m.failed) " failed"
                        }
                        (bars(i * BAR_WIDTH, m, max))
                    }
                }
            }
            figcaption {
                span.key.key-completed { "completed " (totals[0]) }
                span.key.key-compensated { "compensated " (totals[1]) }
                span.key.key-failed { "failed " (totals[2]) }
                span.hint { " · busiest minute: " (max) }
            }
        }
    }
}

/// One minute's stack, completed at the bottom. Each part's edges are
/// the scaled running totals, so the stack never outgrows the chart.
fn bars(x: usize, m: &Minute, max: i64) -> Markup {
    let mut below = 0;
    let mut parts = Vec::new();
    for (class, n) in [
        ("completed", m.completed),
        ("compensated", m.compensated),
        ("failed", m.failed),
    ] {
        let (bottom, top) = (scaled(below, max), scaled(below + n, max));
        below += n;
        if top > bottom {
            parts.push((class, HEIGHT - top, top - bottom));
        }
    }
    html! {
        @for (class, y, h) in parts {
            rect class={ "bar bar-" (class) } x=(x + 1) y=(y) width=(BAR_WIDTH - 2) height=(h) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_series_has_every_minute_of_the_hour_and_only_those() {
        let now = at("2026-12-02T10:30:42Z");
        let rows = [
            EndedInMinute {
                minute: at("2026-12-02T10:30:00Z"),
                state: SagaState::Completed,
                count: 4,
            },
            EndedInMinute {
                minute: at("2026-12-02T10:30:00Z"),
                state: SagaState::Failed,
                count: 1,
            },
            EndedInMinute {
                minute: at("2026-12-02T09:31:00Z"),
                state: SagaState::Compensated,
                count: 2,
            },
            // Older than the hour shown: left out.
            EndedInMinute {
                minute: at("2026-12-02T09:30:00Z"),
                state: SagaState::Completed,
                count: 9,
            },
        ];
        let series = Minute::series(&rows, now);
        assert_eq!(series.len(), MINUTES);
        assert_eq!(series[0].start, at("2026-12-02T09:31:00Z"));
        assert_eq!(series[0].compensated, 2);
        let last = series[MINUTES - 1];
        assert_eq!((last.completed, last.failed), (4, 1));
        assert_eq!(series.iter().map(Minute::total).sum::<i64>(), 7);
    }

    #[test]
    fn bars_scale_to_the_busiest_minute_and_stack_without_overlap() {
        assert_eq!(scaled(0, 0), 0);
        assert_eq!(scaled(10, 10), HEIGHT);
        assert_eq!(scaled(1, 1000), 1, "a single ending is still visible");
        let m = Minute {
            start: Utc::now(),
            completed: 5,
            compensated: 3,
            failed: 2,
        };
        let svg = bars(0, &m, 10).into_string();
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains(r#"y="60" width="8" height="60""#), "{svg}");
        // Parts that each round up still fit: 1 + 1 + 1 of 3.
        let small = Minute {
            start: Utc::now(),
            completed: 1,
            compensated: 1,
            failed: 1,
        };
        let svg = bars(0, &small, 1000).into_string();
        assert!(!svg.contains(r#"y="-"#), "{svg}");
        let html = render(&[m]).into_string();
        assert!(html.contains(r#"data-completed="5""#) && html.contains(r#"data-failed="2""#));
        assert!(!html.contains("style="), "the CSP allows no inline style");
    }
}
