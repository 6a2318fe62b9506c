//! The demo's summary, as text a person reads at a glance.

use std::fmt::Write;
use std::time::Duration;

use super::DemoReport;
use crate::saga::{HistoryEntry, Saga};

/// The whole summary.
pub fn render(r: &DemoReport) -> String {
    let mut out = String::new();
    let p = &r.progress;
    let total = p.total.max(1);
    let _ = writeln!(out, "\nOutcome of {} sagas", p.total);
    for (label, n) in [
        ("completed", p.completed),
        ("compensated", p.compensated),
        ("failed", p.failed),
    ] {
        let _ = writeln!(
            out,
            "  {label:<12} {n:>6}  {:<30} {:>5.1}%",
            bar(n, total, 30),
            100.0 * n as f64 / total as f64
        );
    }
    let unfinished = p.total.saturating_sub(p.done());
    if unfinished > 0 {
        let _ = writeln!(
            out,
            "  {:<12} {unfinished:>6}  (not terminal when the demo stopped waiting)",
            "unfinished"
        );
    }
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let _ = writeln!(
        out,
        "\n  throughput   {:.0} sagas/s ({} sagas in {:.2} s, every transition committed to SQLite)",
        p.done() as f64 / secs,
        p.done(),
        secs
    );
    let l = &r.latency;
    let _ = writeln!(
        out,
        "  latency      p50 {} · p95 {} · p99 {} · max {}  (event → terminal state)",
        ms(l.p50),
        ms(l.p95),
        ms(l.p99),
        ms(l.max)
    );
    let (a, i) = (&r.simulator.alliances, &r.simulator.integrations);
    let _ = writeln!(
        out,
        "  alliances    {} requests: {} created, {} refused, {} answered 503, {} replays",
        a.requests, a.created, a.rejected, a.transient_failures, a.replayed
    );
    let _ = writeln!(
        out,
        "  integrations {} requests: {} partners deleted, {} refused, {} answered 503",
        i.requests, i.deleted, i.failed, i.transient_failures
    );
    if r.problems.is_empty() {
        let _ = writeln!(
            out,
            "  check        ✓ the store agrees with the participants: every completed saga has exactly one\n               alliance, every compensated one exactly one deletion, no failed one was deleted"
        );
    } else {
        let _ = writeln!(
            out,
            "  check        ✗ {} disagreements between the store and the participants:",
            r.problems.len()
        );
        for problem in r.problems.iter().take(10) {
            let _ = writeln!(out, "               - {problem}");
        }
    }
    let _ = writeln!(
        out,
        "  dead letters {} dead letter{} waiting: a PartnerCreated without a name, set aside with its reason",
        r.dead_letters,
        if r.dead_letters == 1 { "" } else { "s" }
    );
    for (saga, history) in &r.examples {
        out.push_str(&example(saga, history));
    }
    let _ = writeln!(
        out,
        "\nConsole: {}/ui  (sign in with the admin token `demo` to retry failed sagas and act on the dead letter)",
        r.api
    );
    let _ = writeln!(out, "\nStore: {}", r.database.display());
    out
}

fn example(saga: &Saga, history: &[HistoryEntry]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nA {} saga: {} (partner {}, correlation {})",
        saga.state, saga.saga_id, saga.partner_id, saga.correlation_id
    );
    let start = history.first().map(|h| h.at);
    for h in history {
        let offset = start
            .map(|s| (h.at - s).to_std().unwrap_or_default())
            .unwrap_or_default();
        let from = h
            .from_state
            .map_or_else(|| "·".to_string(), |f| f.to_string());
        let detail = h
            .detail
            .as_deref()
            .map(|d| format!("  {}", shorten(d, 70)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:>8}  {:<17} → {:<17} {}{}",
            ms(offset),
            from,
            h.to_state.to_string(),
            h.reason,
            detail
        );
    }
    out
}

fn bar(n: usize, total: usize, width: usize) -> String {
    let filled = (n * width).div_ceil(total).min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::demo::{Latency, Progress};
    use crate::tools::simulator::Stats;

    fn report(problems: Vec<String>) -> DemoReport {
        DemoReport {
            progress: Progress {
                total: 10,
                completed: 7,
                compensated: 2,
                failed: 1,
            },
            elapsed: Duration::from_millis(500),
            latency: Latency {
                p50: Duration::from_millis(12),
                p95: Duration::from_millis(40),
                p99: Duration::from_secs(2),
                max: Duration::from_secs(3),
            },
            examples: vec![],
            simulator: Stats::default(),
            problems,
            dead_letters: 1,
            api: "http://127.0.0.1:8000".into(),
            database: ".dev/demo/sagas.db".into(),
        }
    }

    #[test]
    fn the_summary_shows_outcomes_throughput_latency_and_the_check() {
        let text = render(&report(vec![]));
        assert!(text.contains("completed         7"), "{text}");
        assert!(text.contains("compensated       2"));
        assert!(text.contains("failed            1"));
        assert!(text.contains("20 sagas/s"), "10 sagas in 0.5 s: {text}");
        assert!(text.contains("p50 12 ms · p95 40 ms · p99 2.00 s · max 3.00 s"));
        assert!(text.contains("✓ the store agrees"));
        assert!(!text.contains("unfinished"));
    }

    #[test]
    fn disagreements_and_unfinished_sagas_are_shown() {
        let mut r = report(vec![
            "partners deleted 3 times for 2 compensated sagas".into()
        ]);
        r.progress.failed = 0;
        let text = render(&r);
        assert!(text.contains("✗ 1 disagreements"));
        assert!(text.contains("partners deleted 3 times"));
        assert!(text.contains("unfinished        1"));
    }

    #[test]
    fn bars_are_proportional() {
        assert_eq!(bar(0, 10, 10), "░".repeat(10));
        assert_eq!(bar(10, 10, 10), "█".repeat(10));
        assert_eq!(bar(5, 10, 10).chars().filter(|c| *c == '█').count(), 5);
    }
}
