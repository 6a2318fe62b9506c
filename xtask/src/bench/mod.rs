//! `make bench`: a standard load test against the dev stack.
//!
//! Brings the dev stack up unless it runs (and takes it down again after),
//! builds the release binary, starts `simulate` and `serve` on a fresh
//! database (saga_bench) and channels of their own (bench-<time>-…), in a
//! clean environment (docs/contract.md §6 defaults, nothing from ./.env), runs
//! `load-test --json` — by default the closed loop, 64 sagas in flight, as
//! issue 12's peers were measured — and samples what the run cost
//! ([`costs`]), writes .dev/bench/<time>-<broker>.json ({"meta", "report",
//! "costs"}) with the processes' logs beside it, prints the summary, and
//! stops what it started, by PID. Fails if any event has no terminal saga,
//! or two. Settings: BENCH_BROKER (pulsar|redis), BENCH_EVENTS (10000),
//! BENCH_MODE (closed|burst), BENCH_IN_FLIGHT (64, closed loop),
//! BENCH_RATE (0 = unlimited) and BENCH_CONCURRENCY (4), burst only,
//! BENCH_PARTICIPANTS (http|broker), BENCH_SIM_ARGS, BENCH_MAX_IN_FLIGHT
//! (64, the service's), BENCH_TIMEOUT_SECS (300).

mod costs;
mod report;
mod stages;

use crate::stack::{self, App, Local, Stack};
use crate::{paths, ports, process, release, signals};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::Command;

/// The run's settings, from BENCH_*.
pub struct Settings {
    pub broker: String,
    pub events: u64,
    /// `closed` (a new event as each saga ends) or `burst`.
    pub mode: String,
    /// The closed loop's sagas in flight.
    pub in_flight: u64,
    pub rate: String,
    pub concurrency: u64,
    pub participants: String,
    pub sim_args: String,
    pub max_in_flight: u64,
    pub timeout: u64,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

impl Settings {
    fn from_env() -> Result<Self> {
        let s = Settings {
            broker: env_or("BENCH_BROKER", "pulsar"),
            events: paths::env_number("BENCH_EVENTS", 10_000)?,
            mode: env_or("BENCH_MODE", "closed"),
            in_flight: paths::env_number("BENCH_IN_FLIGHT", 64)?,
            rate: env_or("BENCH_RATE", "0"),
            concurrency: paths::env_number("BENCH_CONCURRENCY", 4)?,
            participants: env_or("BENCH_PARTICIPANTS", "http"),
            sim_args: env_or(
                "BENCH_SIM_ARGS",
                "--latency-ms 0 --reject-ratio 0.1 --transient-ratio 0 --delete-fail-ratio 0",
            ),
            max_in_flight: paths::env_number("BENCH_MAX_IN_FLIGHT", 64)?,
            timeout: paths::env_number("BENCH_TIMEOUT_SECS", 300)?,
        };
        if !["pulsar", "redis"].contains(&s.broker.as_str()) {
            bail!("BENCH_BROKER must be pulsar or redis, not '{}'", s.broker);
        }
        if !["http", "broker"].contains(&s.participants.as_str()) {
            bail!(
                "BENCH_PARTICIPANTS must be http or broker, not '{}'",
                s.participants
            );
        }
        if s.rate.parse::<f64>().map_or(true, |r| r < 0.0) {
            bail!(
                "BENCH_RATE must be a number of events per second (0: unlimited), not '{}'",
                s.rate
            );
        }
        if s.events == 0 || s.concurrency == 0 || s.timeout == 0 || s.in_flight == 0 {
            bail!("BENCH_EVENTS, BENCH_IN_FLIGHT, BENCH_CONCURRENCY and BENCH_TIMEOUT_SECS must be above 0");
        }
        s.check_mode()?;
        Ok(s)
    }

    /// The closed loop paces itself: a rate or publishers for it are a
    /// mistake to say, not to ignore.
    fn check_mode(&self) -> Result<()> {
        match self.mode.as_str() {
            "burst" => Ok(()),
            "closed" => {
                let paced = self.rate.parse::<f64>().is_ok_and(|r| r > 0.0)
                    || std::env::var("BENCH_CONCURRENCY").is_ok_and(|v| !v.is_empty());
                if paced {
                    bail!("BENCH_RATE and BENCH_CONCURRENCY pace the burst mode: set BENCH_MODE=burst too (the closed loop keeps BENCH_IN_FLIGHT sagas in flight)");
                }
                Ok(())
            }
            other => bail!("BENCH_MODE must be closed or burst, not '{other}'"),
        }
    }

    /// load-test's arguments for the mode.
    fn mode_args(&self) -> Vec<String> {
        match self.mode.as_str() {
            "burst" => vec![
                "--burst".into(),
                "--rate".into(),
                self.rate.clone(),
                "--concurrency".into(),
                self.concurrency.to_string(),
            ],
            _ => vec!["--in-flight".into(), self.in_flight.to_string()],
        }
    }

    /// The mode in words, for the lines printed.
    pub fn mode_text(&self) -> String {
        match self.mode.as_str() {
            "burst" => {
                let rate = match self.rate.parse::<f64>() {
                    Ok(r) if r > 0.0 => format!("{}/s", self.rate),
                    _ => "unlimited rate".to_string(),
                };
                format!("burst, {rate}, {} publishers", self.concurrency)
            }
            _ => format!("closed loop, {} in flight", self.in_flight),
        }
    }
}

/// What was started, stopped again on the way out whatever happens.
struct Cleanup {
    run_dir: PathBuf,
    scratch: PathBuf,
    prefix: String,
    streams: bool,
    stack_started: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = App::new(&self.run_dir, "orchestrator", "serve").stop(40);
        let _ = App::new(&self.run_dir, "simulator", "simulate").stop(10);
        if self.streams {
            delete_streams(&self.prefix);
        }
        if self.stack_started {
            let _ = stack::down(Stack::Dev, false);
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// This run's Redis streams, so Redis does not grow with every bench.
fn delete_streams(prefix: &str) {
    let pattern = format!("{prefix}*");
    let Ok(mut scan) = stack::redis_cli(&["--scan", "--pattern", &pattern]) else {
        return;
    };
    let keys = scan
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    if keys.is_empty() {
        return;
    }
    let mut del = vec!["DEL"];
    del.extend(keys);
    if let Ok(mut cmd) = stack::redis_cli(&del) {
        let _ = cmd.output();
    }
}

/// One bench run: its settings, where it keeps things, what it runs.
struct Run {
    s: Settings,
    local: Local,
    bin: PathBuf,
    run_dir: PathBuf,
    scratch: PathBuf,
    broker_url: String,
    prefix: String,
    env: Vec<(String, String)>,
}

pub fn run() -> Result<()> {
    let s = Settings::from_env()?;
    let local = Local::from_env()?;
    let p = &local.ports;
    let hint = "move the bench's own orchestrator with ORCHESTRATOR_HOST_PORT=8010 (a make run? make simple-down / full-down?)";
    local.require_app_ports(hint)?;
    let (y, mo, d, h, mi, sec) = paths::utc_now();
    let stamp = format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{sec:02}Z");
    let run_dir = paths::dev()
        .join("bench")
        .join(format!("{stamp}-{}", s.broker));
    let prefix = format!("bench-{stamp}-");
    let stack_was_up = stack::dev_is_up()?;
    let mut cleanup = Cleanup {
        run_dir: run_dir.clone(),
        scratch: std::env::temp_dir().join(format!("saga-bench-{}", std::process::id())),
        prefix: prefix.clone(),
        streams: s.broker == "redis" || s.participants == "broker",
        stack_started: false,
    };
    if stack_was_up {
        eprintln!("bench: dev stack already running: it stays up afterwards");
    } else {
        eprintln!("bench: starting the dev stack (stopped again at the end)");
        cleanup.stack_started = true;
        stack::up(Stack::Dev)?;
    }
    let bin = release::build(
        "for the bench's orchestrator, simulators and load test",
        false,
    )?;
    fresh_database()?;
    std::fs::create_dir_all(&run_dir)?;
    std::fs::create_dir_all(&cleanup.scratch)?;
    let broker_url = match s.broker.as_str() {
        "redis" => format!("redis://127.0.0.1:{}", p.redis),
        _ => format!("pulsar://127.0.0.1:{}", p.pulsar),
    };
    let env = run_env(&s, &local, &broker_url, &prefix);
    let scratch = cleanup.scratch.clone();
    let run = Run {
        s,
        local,
        bin,
        run_dir,
        scratch,
        broker_url,
        prefix,
        env,
    };
    let outcome = run.start_apps().and_then(|()| run.load_test(stack_was_up));
    drop(cleanup);
    outcome
}

fn fresh_database() -> Result<()> {
    let drop_db = "DROP DATABASE IF EXISTS saga_bench WITH (FORCE)";
    process::run_quiet(
        stack::psql()?.args(["-c", "SET client_min_messages = warning", "-c", drop_db]),
        "dropping saga_bench",
    )?;
    process::run_quiet(
        stack::psql()?.args(["-c", "CREATE DATABASE saga_bench"]),
        "creating saga_bench",
    )?;
    Ok(())
}

/// A clean environment: PATH, HOME, TZ and the bench's own settings.
fn run_env(s: &Settings, local: &Local, broker_url: &str, prefix: &str) -> Vec<(String, String)> {
    let p = &local.ports;
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        (
            "HOME".into(),
            std::env::var("HOME").unwrap_or_else(|_| "/".into()),
        ),
        ("TZ".into(), "UTC".into()),
        ("BROKER_URL".into(), broker_url.into()),
        ("DATABASE_URL".into(), local.database_url("saga_bench")),
        (
            "ALIANZAS_API_URL".into(),
            format!("http://127.0.0.1:{}", p.alianzas),
        ),
        (
            "INTEGRACIONES_API_URL".into(),
            format!("http://127.0.0.1:{}", p.integraciones),
        ),
        ("ALIANZAS_MODE".into(), s.participants.clone()),
        ("INTEGRACIONES_MODE".into(), s.participants.clone()),
        ("API_ADDR".into(), format!("127.0.0.1:{}", p.api)),
        ("LOG_FORMAT".into(), "json".into()),
        ("SUBSCRIPTION_NAME".into(), "saga-bench".into()),
        ("MAX_IN_FLIGHT".into(), s.max_in_flight.to_string()),
    ];
    for channel in [
        "partner-events",
        "saga-events",
        "alliance-commands",
        "integration-commands",
        "saga-replies",
    ] {
        let var = format!("CHANNEL_{}", channel.to_uppercase().replace('-', "_"));
        env.push((var, format!("{prefix}{channel}")));
    }
    env
}

impl Run {
    /// `bin` with only the run's environment (and `rust_log`), from the
    /// scratch directory: the binary reads .env from its directory and above.
    fn command(&self, rust_log: &str) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(&self.scratch)
            .env_clear()
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", rust_log);
        cmd
    }

    fn start_apps(&self) -> Result<()> {
        let (p, timeout) = (&self.local.ports, self.local.timeout);
        let sim = App::new(&self.run_dir, "simulator", "simulate");
        let mut cmd = self.command("info");
        cmd.arg("simulate");
        if self.s.participants == "broker" {
            cmd.arg("--broker");
        }
        cmd.args(["--alianzas-addr", &format!("127.0.0.1:{}", p.alianzas)])
            .args([
                "--integraciones-addr",
                &format!("127.0.0.1:{}", p.integraciones),
            ])
            .args(self.s.sim_args.split_whitespace());
        sim.start(&mut cmd)?;
        sim.wait_http(p.alianzas, "/stats", timeout)?;
        sim.wait_http(p.integraciones, "/stats", timeout)?;
        let orchestrator = App::new(&self.run_dir, "orchestrator", "serve");
        orchestrator.start(self.command("info,sqlx=warn").arg("serve"))?;
        orchestrator.wait_http(p.api, "/ready", timeout)?;
        eprintln!(
            "bench: orchestrator (pid {}) and simulators (pid {}) ready on {}",
            orchestrator.pid().unwrap_or(0),
            sim.pid().unwrap_or(0),
            self.broker_url
        );
        Ok(())
    }

    /// Runs the load test, samples what it cost, and writes the JSON;
    /// fails if the test did.
    fn load_test(&self, stack_was_up: bool) -> Result<()> {
        let s = &self.s;
        eprintln!(
            "bench: load test: {} events, {}, {}, participants over {} ({})",
            s.events,
            s.mode_text(),
            s.broker,
            s.participants,
            s.sim_args
        );
        let started_at = paths::utc_iso();
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let loadavg = loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let before = self.sample();
        // Logs go to stdout with the JSON: keep them to errors.
        let mut cmd = self.command("error");
        cmd.args(["load-test", "--events", &s.events.to_string()])
            .args(s.mode_args())
            .args(["--timeout-secs", &s.timeout.to_string(), "--json"])
            .stdout(std::fs::File::create(self.run_dir.join("load-test.out"))?)
            .stderr(std::fs::File::create(self.run_dir.join("load-test.err"))?);
        // The load generator's own CPU: the only child reaped in between.
        let reaped_before = costs::children_cpu_secs();
        let status = signals::status(&mut cmd)?;
        let load_test_cpu = costs::children_cpu_secs()
            .zip(reaped_before)
            .map(|(after, before)| ((after - before) * 1000.0).round() / 1000.0);
        signals::check()?;
        let code = status.code().unwrap_or(1);
        let mut costs = self.costs(&before);
        costs["load_test"] = serde_json::json!({ "cpu_secs": load_test_cpu });
        let meta = report::Meta {
            settings: s,
            broker_url: &self.broker_url,
            prefix: &self.prefix,
            stack_was_up,
            run_dir: &self.run_dir,
        };
        report::write(&meta, &started_at, &loadavg, code, &self.bin, &costs)?;
        if code != 0 {
            bail!(
                "the load test failed (exit {code}): see {}",
                self.run_dir.display()
            );
        }
        Ok(())
    }

    /// What the run cost since `before`. The service is stopped here, after
    /// its CPU and memory are read: its connections flush their PostgreSQL
    /// statistics as they close.
    fn costs(&self, before: &Sample) -> serde_json::Value {
        let orchestrator = App::new(&self.run_dir, "orchestrator", "serve");
        let simulator = App::new(&self.run_dir, "simulator", "simulate");
        let cpu = |pid: Option<i32>, before: Option<f64>| {
            let after = pid.and_then(costs::cpu_secs)?;
            Some(((after - before?) * 1000.0).round() / 1000.0)
        };
        let service_cpu = cpu(orchestrator.pid(), before.service_cpu);
        let simulator_cpu = cpu(simulator.pid(), before.simulator_cpu);
        let peak_rss = orchestrator.pid().and_then(costs::peak_rss_kib);
        let machine = costs::machine_ticks();
        let redis = (self.s.broker == "redis")
            .then(costs::redis_commands)
            .flatten();
        let metrics = ports::http_body(self.local.ports.api, "/metrics");
        let _ = orchestrator.stop(40);
        let pg = costs::PgSample::take(false);
        let sagas = self.s.events;
        serde_json::json!({
            "service": {
                "cpu_secs": service_cpu,
                "cpu_ms_per_saga": service_cpu.map(|c| (c * 1e6 / sagas as f64).round() / 1e3),
                "peak_rss_mib": peak_rss.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
            },
            "simulator": { "cpu_secs": simulator_cpu },
            "machine": costs::machine_delta(before.machine, machine, sagas),
            "postgres": costs::pg_delta(&before.pg, &pg, sagas),
            "redis": costs::redis_delta(&before.redis, &redis, sagas),
            "stages": metrics.as_deref().map(stages::from_metrics),
        })
    }
}

/// The counters read before the load test.
struct Sample {
    service_cpu: Option<f64>,
    simulator_cpu: Option<f64>,
    pg: costs::PgSample,
    /// The whole machine's CPU ticks, busy and in all.
    machine: Option<costs::MachineTicks>,
    redis: Option<std::collections::BTreeMap<String, u64>>,
}

impl Run {
    /// The counters now; pg_stat_statements starts over, so that it holds
    /// the run only.
    fn sample(&self) -> Sample {
        let cpu = |name, sub| {
            App::new(&self.run_dir, name, sub)
                .pid()
                .and_then(costs::cpu_secs)
        };
        Sample {
            service_cpu: cpu("orchestrator", "serve"),
            simulator_cpu: cpu("simulator", "simulate"),
            pg: costs::PgSample::take(true),
            machine: costs::machine_ticks(),
            redis: (self.s.broker == "redis")
                .then(costs::redis_commands)
                .flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: &str, rate: &str) -> Settings {
        Settings {
            broker: "redis".into(),
            events: 10,
            mode: mode.into(),
            in_flight: 64,
            rate: rate.into(),
            concurrency: 4,
            participants: "http".into(),
            sim_args: String::new(),
            max_in_flight: 64,
            timeout: 300,
        }
    }

    #[test]
    fn the_closed_loop_is_the_default_and_refuses_a_rate() {
        let closed = settings("closed", "0");
        assert!(closed.check_mode().is_ok());
        assert_eq!(closed.mode_args(), ["--in-flight", "64"]);
        assert_eq!(closed.mode_text(), "closed loop, 64 in flight");
        assert!(settings("closed", "500").check_mode().is_err());
        assert!(settings("open", "0").check_mode().is_err());
        let burst = settings("burst", "500");
        assert_eq!(
            burst.mode_args(),
            ["--burst", "--rate", "500", "--concurrency", "4"]
        );
        assert_eq!(burst.mode_text(), "burst, 500/s, 4 publishers");
    }
}
