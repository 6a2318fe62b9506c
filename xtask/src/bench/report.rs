//! Bench's JSON file ({"meta": run and machine, "report": load-test's
//! JSON, "costs": what the run cost}) and its printed summary.

use super::Settings;
use crate::{paths, process};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the run was: written beside the load test's own report.
pub struct Meta<'a> {
    pub settings: &'a Settings,
    pub broker_url: &'a str,
    pub prefix: &'a str,
    pub stack_was_up: bool,
    pub run_dir: &'a Path,
}

fn first_line_of(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A line of /proc/cpuinfo or /proc/meminfo starting with `key`, after the colon.
fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn machine(loadavg: &str) -> Value {
    let mem_mb = proc_field("/proc/meminfo", "MemTotal:")
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb / 1024);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": proc_field("/proc/cpuinfo", "model name"),
        "mem_total_mb": mem_mb,
        "kernel": first_line_of(Command::new("uname").arg("-srm")),
        "loadavg_at_start": loadavg,
    })
}

fn build_info(bin: &Path) -> Value {
    let root = paths::root();
    let dirty = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    json!({
        "git_rev": first_line_of(Command::new("git").arg("-C").arg(&root).args(["rev-parse", "HEAD"])),
        "git_dirty": dirty,
        "version": first_line_of(Command::new(bin).arg("--version")),
        "rustc": first_line_of(Command::new("rustc").arg("--version")),
    })
}

/// The load test's report: pretty-printed, from the last line that is exactly "{".
fn parse_report(raw: &str) -> Result<Value> {
    let lines: Vec<&str> = raw.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| *l == "{")
        .context("no JSON report in the load test's output")?;
    serde_json::from_str(&lines[start..].join("\n"))
        .context("the load test's JSON report does not parse")
}

/// Writes .dev/bench/<name>.json, prints the summary; the file's path.
pub fn write(
    meta: &Meta,
    started_at: &str,
    loadavg: &str,
    exit_code: i32,
    bin: &Path,
    costs: &Value,
) -> Result<PathBuf> {
    let out = meta.run_dir.join("load-test.out");
    let raw = std::fs::read_to_string(&out).unwrap_or_default();
    let report = match parse_report(&raw) {
        Ok(report) => report,
        Err(e) => {
            let logs = ["load-test.err", "load-test.out", "orchestrator.log"]
                .map(|f| meta.run_dir.join(f));
            let tails = process::log_tails(&logs.iter().map(PathBuf::as_path).collect::<Vec<_>>());
            bail!("the load test produced no report (exit {exit_code}): {e:#}{tails}");
        }
    };
    let s = meta.settings;
    let logs = meta
        .run_dir
        .strip_prefix(paths::root())
        .unwrap_or(meta.run_dir);
    let meta_json = json!({
        "started_at": started_at,
        "broker": s.broker,
        "broker_url": meta.broker_url,
        "events": s.events,
        "mode": s.mode,
        "mode_text": s.mode_text(),
        "in_flight": (s.mode == "closed").then_some(s.in_flight),
        "rate": (s.mode == "burst").then(|| s.rate.parse::<f64>().unwrap_or(0.0)),
        "concurrency": (s.mode == "burst").then_some(s.concurrency),
        "max_in_flight": s.max_in_flight,
        "participants": s.participants,
        "simulator_args": s.sim_args,
        "database": "saga_bench",
        "channel_prefix": meta.prefix,
        "stack": if crate::stack::docker()? { "docker" } else { "local" },
        "stack_was_running": meta.stack_was_up,
        "load_test_exit_status": exit_code,
        "logs": logs.display().to_string(),
        "machine": machine(loadavg),
        "build": build_info(bin),
    });
    let path = meta.run_dir.with_extension("json");
    let text = serde_json::to_string_pretty(
        &json!({"meta": meta_json, "report": report, "costs": costs}),
    )? + "\n";
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    print_summary(&meta_json, &report);
    print_costs(costs);
    let shown = path.strip_prefix(paths::root()).unwrap_or(&path);
    println!(
        "  saved        {}  (logs in {}/)",
        shown.display(),
        logs.display()
    );
    Ok(path)
}

fn ms(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} s", x / 1000.0)
    } else {
        format!("{x:.0} ms")
    }
}

fn latencies(lat: &Value) -> String {
    let f = |k: &str| ms(lat[k].as_f64().unwrap_or(0.0));
    format!("p50 {} · p90 {} · p99 {}", f("p50"), f("p90"), f("p99"))
}

fn print_summary(meta: &Value, r: &Value) {
    let (m, b) = (&meta["machine"], &meta["build"]);
    let str_of = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    println!(
        "bench {}: {} events, {}, participants over {} ({})",
        str_of(&meta["broker"]),
        r["events"],
        str_of(&meta["mode_text"]),
        str_of(&meta["participants"]),
        str_of(&meta["simulator_args"])
    );
    let rev: String = str_of(&b["git_rev"]).chars().take(10).collect();
    let dirty = if b["git_dirty"] == true {
        " (dirty)"
    } else {
        ""
    };
    println!(
        "  machine      {} CPUs ({}), {} MB, load {}; build {rev}{dirty}",
        m["nproc"],
        str_of(&m["cpu"]),
        m["mem_total_mb"],
        str_of(&m["loadavg_at_start"])
    );
    let num = |k: &str| r[k].as_f64().unwrap_or(0.0);
    match r["publish_secs"].as_f64() {
        Some(secs) => println!("  events       {} published in {secs:.2} s", r["published"]),
        None => println!(
            "  in flight    at most {} (counted by the load test)",
            r["max_in_flight"]
        ),
    }
    println!(
        "  settled      {} of {} in {:.2} s  →  {:.0} sagas/s",
        r["settled"],
        r["events"],
        num("elapsed_secs"),
        num("sagas_per_sec")
    );
    let max = ms(r["latency_ms"]["max"].as_f64().unwrap_or(0.0));
    println!(
        "  latency      {} · max {max}  (event → terminal event)",
        latencies(&r["latency_ms"])
    );
    print_outcomes(r);
}

/// A line per terminal state, then what went wrong, if anything.
fn print_outcomes(r: &Value) {
    if let Some(outcomes) = r["outcomes"].as_object() {
        for (state, stats) in outcomes {
            let count = stats["count"].as_u64().unwrap_or(0);
            // No sagas, no latencies: zeros would read as measured.
            let times = match count {
                0 => String::new(),
                _ => format!("   {}", latencies(&stats["latency_ms"])),
            };
            println!("  {state:<12} {count:>6}{times}");
        }
    }
    if r["unsettled"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  ✗ {} events have no terminal saga ({} published with none within the timeout)",
            r["unsettled"], r["unfinished"]
        );
    }
    if r["duplicates"].as_u64().unwrap_or(0) > 0 {
        println!("  ✗ {} duplicate sagas", r["duplicates"]);
    }
}

/// The costs' lines: service, PostgreSQL, Redis, each when it was counted.
fn print_costs(c: &Value) {
    let num = |v: &Value| v.as_f64();
    let service = &c["service"];
    if let Some(cpu) = num(&service["cpu_secs"]) {
        let rss = num(&service["peak_rss_mib"]).map_or("?".into(), |m| format!("{m} MiB"));
        let cpu_of = |v: &Value| num(v).map_or("?".into(), |s| format!("{s:.2}"));
        println!(
            "  service      {cpu:.2} CPU-s ({} ms a saga), peak RSS {rss}; simulator {} CPU-s, load test {} CPU-s",
            num(&service["cpu_ms_per_saga"]).unwrap_or(0.0),
            cpu_of(&c["simulator"]["cpu_secs"]),
            cpu_of(&c["load_test"]["cpu_secs"]),
        );
    }
    let machine = &c["machine"];
    if let (Some(ms), Some(share)) = (
        num(&machine["busy_cpu_ms_per_saga"]),
        num(&machine["busy_share"]),
    ) {
        let steal = num(&machine["steal_share"]).unwrap_or(0.0);
        println!(
            "  machine      {ms} CPU-ms a saga, every process's; cores {:.0}% busy, {:.0}% stolen by the host",
            share * 100.0,
            steal * 100.0
        );
    }
    let pg = &c["postgres"];
    let mut parts = Vec::new();
    if let Some(wal) = num(&pg["wal_bytes_per_saga"]) {
        parts.push(format!("{wal:.0} B WAL"));
    }
    if let Some(commits) = num(&pg["per_saga"]["commits"]) {
        parts.push(format!("{commits} commits"));
    }
    if let Some(statements) = num(&pg["statements_per_saga"]) {
        parts.push(format!("{statements} statements"));
    }
    if !parts.is_empty() {
        println!("  postgres     a saga: {}", parts.join(", "));
    }
    if let Some(note) = pg["statements_note"].as_str() {
        println!("               ({note})");
    }
    if let Some(total) = num(&c["redis"]["commands_per_saga"]) {
        let by = c["redis"]["by_command_per_saga"]
            .as_array()
            .map(|by| {
                by.iter()
                    .take(5)
                    .map(|c| format!("{} {}", c["command"].as_str().unwrap_or("?"), c["per_saga"]))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        println!("  redis        a saga: {total} commands, every client's ({by})");
    }
    print_stages(&c["stages"]);
}

/// The service's stages, means from its own metrics, each when it ran.
fn print_stages(stages: &Value) {
    let ms = |key: &str| stages[key].as_f64();
    let mut parts = Vec::new();
    if let (Some(write), Some(batch)) = (ms("record_write_ms"), ms("record_batch")) {
        parts.push(format!("record {write} ms a write of {batch} sagas"));
    }
    if let Some(call) = ms("participant_call_ms") {
        parts.push(format!("participant call {call} ms"));
    }
    if let (Some(commit), Some(write), Some(batch)) = (
        ms("transition_commit_ms"),
        ms("transition_write_ms"),
        ms("transition_batch"),
    ) {
        parts.push(format!(
            "transition {commit} ms asked to durable (its write {write} ms, {batch} a write)"
        ));
    }
    if !parts.is_empty() {
        println!("  stages       means: {}", parts.join(" · "));
    }
}
