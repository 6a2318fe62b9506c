//! `make faults` and `make soak`: the fault scenarios of tests/it/faults/ at
//! the sizes issue 11 names, on the release build, once per broker, and a
//! table of their figures at the end. Each scenario starts its own durable
//! PostgreSQL and broker (through `cargo xtask postgres|redis|pulsar`), so
//! nothing here needs the test services.
//!
//! `make faults` — `cargo xtask faults [--broker redis|pulsar] [FILTER]`:
//! FAULTS_SEED fixes the kills' random moments; `--table` prints the last
//! run's table again. `make soak DURATION=…` —
//! `cargo xtask soak [--duration 10m] [--broker …]`: a steady load with
//! random kills and restarts for that long (tests/it/faults/soak.rs).

use crate::args::Args;
use crate::install::{self, Dep};
use crate::{paths, signals};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// Which brokers a run covers: `--broker`, or both.
fn brokers(args: &mut Args) -> Result<Vec<String>> {
    match args.value("--broker", None)? {
        None => Ok(vec!["redis".into(), "pulsar".into()]),
        Some(b) if b == "redis" || b == "pulsar" => Ok(vec![b]),
        Some(other) => bail!("--broker {other}: expected redis or pulsar"),
    }
}

/// Runs the scenarios (those matching `FILTER`, a test-name substring) at
/// full size on each broker; the exit code.
pub fn faults(args: &mut Args) -> Result<u8> {
    let report = paths::dev().join("faults").join("report.jsonl");
    if args.flag("--table") {
        args.done()?;
        print_table(&report)?;
        return Ok(0);
    }
    let brokers = brokers(args)?;
    let filter = args.word();
    args.done()?;
    let expr = match filter {
        Some(name) => format!("test(/^faults::scenarios::/) & test({name})"),
        None => "test(/^faults::scenarios::/)".to_string(),
    };
    let ok = run_each(&brokers, &expr, &[("FAULTS_SCALE", "full")], &[], &report)?;
    print_table(&report)?;
    Ok(u8::from(!ok))
}

/// The soak run: `--duration` (`90s`, `10m`, `2h`; DURATION; default 10m).
pub fn soak(args: &mut Args) -> Result<u8> {
    let brokers = brokers(args)?;
    let duration = args
        .value("--duration", Some("DURATION"))?
        .unwrap_or_else(|| "10m".into());
    args.done()?;
    let secs = parse_duration(&duration)?.to_string();
    let report = paths::dev().join("faults").join("soak.jsonl");
    let env = [("FAULTS_SOAK_SECS", secs.as_str())];
    let ok = run_each(
        &brokers,
        "test(/^faults::soak::/)",
        &env,
        &["--run-ignored", "ignored-only"],
        &report,
    )?;
    Ok(u8::from(!ok))
}

/// `90s`, `10m`, `2h` or plain seconds, in seconds.
fn parse_duration(text: &str) -> Result<u64> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .with_context(|| format!("DURATION={text}: expected e.g. 90s, 10m or 2h"))?;
    match unit {
        "s" => Ok(n),
        "m" => Ok(n * 60),
        "h" => Ok(n * 3600),
        _ => bail!("DURATION={text}: expected e.g. 90s, 10m or 2h"),
    }
}

/// Stops the servers of fault scenarios whose test process is gone (killed
/// before its cleanup ran) and deletes their directories: each scenario
/// keeps its state in `$TMPDIR/saga-faults-*`, its owner in `owner.pid`.
pub fn sweep_dead_scenarios() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let named = entry
            .file_name()
            .to_string_lossy()
            .starts_with("saga-faults-");
        let owner = crate::process::read_pid(&dir.join("owner.pid"));
        if !named || !owner.is_some_and(crate::process::gone) {
            continue;
        }
        eprintln!(
            "faults: stopping what the dead run {} left in {}",
            owner.unwrap_or(0),
            dir.display()
        );
        let postgres = crate::postgres::Postgres::new(&dir.join("postgres"));
        let _ = postgres.stop();
        postgres.remove_outside_data();
        let _ = crate::redis::Redis::new(&dir.join("redis")).stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// nextest on the release build with `expr`, once per broker, the figures
/// appended to `report` (emptied first); false if any run failed.
fn run_each(
    brokers: &[String],
    expr: &str,
    env: &[(&str, &str)],
    extra: &[&str],
    report: &Path,
) -> Result<bool> {
    install::ensure(&[Dep::Protoc, Dep::Postgres, Dep::Redis, Dep::PulsarLite])?;
    sweep_dead_scenarios();
    let proxy = crate::pulsar::debug_proxy()?;
    if let Some(dir) = report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(report);
    let me = paths::xtask_bin().context("cannot find the xtask binary for the scenarios")?;
    let mut ok = true;
    for broker in brokers {
        eprintln!("faults: the release build's scenarios on {broker} ({expr})");
        let mut cmd = paths::cargo();
        cmd.args([
            "nextest",
            "run",
            "--release",
            "--test",
            "it",
            "--no-fail-fast",
        ])
        .args(["--no-capture", "-E", expr])
        .args(extra)
        .env("TEST_BROKER", broker)
        .env("XTASK_BIN", &me)
        .env("PULSAR_PROXY_BIN", &proxy)
        .env("FAULTS_REPORT", report)
        .envs(env.iter().copied());
        let status = signals::status(&mut cmd)?;
        signals::check()?;
        ok &= status.success();
    }
    Ok(ok)
}

/// `[["i1", 812], ["i2", 790]]` as "i1 812, i2 790".
fn split(pairs: &Value) -> String {
    let pairs = pairs.as_array().map(Vec::as_slice).unwrap_or_default();
    let shown: Vec<String> = pairs
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p[0].as_str().unwrap_or("?"),
                p[1].as_i64().unwrap_or(0)
            )
        })
        .collect();
    shown.join(", ")
}

/// The table's counted columns: heading and report key.
const COUNTS: [(&str, &str); 14] = [
    ("events", "events"),
    ("faults", "faults"),
    ("terminal", "terminal"),
    ("lost", "lost"),
    ("unfinished", "unfinished"),
    ("duplicates", "duplicates"),
    ("failed", "failed"),
    ("keys off", "keys_off"),
    ("interleaved", "interleaved"),
    ("overlapping", "overlapping"),
    ("called after the end", "stale_calls"),
    ("disagreeing", "disagreeing"),
    ("calls", "calls"),
    ("resent", "resent"),
];

/// The scenarios × brokers table of the figures in `report`.
fn print_table(report: &Path) -> Result<()> {
    let text = std::fs::read_to_string(report).unwrap_or_default();
    let rows: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if rows.is_empty() {
        eprintln!("faults: no figures were reported");
        return Ok(());
    }
    let mut heading = vec!["scenario", "broker"];
    heading.extend(COUNTS.iter().map(|(h, _)| *h));
    heading.extend(["slowest after the last fault", "transitions by instance"]);
    println!("\n| {} |", heading.join(" | "));
    println!("|{}", " --- |".repeat(heading.len()));
    for r in &rows {
        let mut cells = vec![
            r["scenario"].as_str().unwrap_or("?").to_string(),
            r["broker"].as_str().unwrap_or("?").to_string(),
        ];
        cells.extend(COUNTS.iter().map(|(_, key)| match r[key].as_u64() {
            Some(n) => n.to_string(),
            None => "?".to_string(),
        }));
        let secs = r["slowest_after_fault_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
        cells.push(format!("{secs:.1} s"));
        cells.push(split(&r["split"]));
        println!("| {} |", cells.join(" | "));
    }
    println!("\nfaults: figures in {}", report.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("10m").unwrap(), 600);
        assert_eq!(parse_duration("2h").unwrap(), 7200);
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }
}
