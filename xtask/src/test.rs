//! `make test`: the whole suite against private PostgreSQL, Redis and
//! Pulsar, the integration suite twice (Redis pass, then Pulsar pass).

use crate::install;
use crate::services::Services;
use crate::{paths, process, signals};
use anyhow::{bail, Result};
use std::path::Path;
use std::time::Instant;

/// Tests that need no broker (store, demo, the binary's command line),
/// always use their own broker (broker_restart, broker_refusal) or always
/// the suite's Redis (redis_streams) or Pulsar (pulsar_batching): they run
/// in the Redis pass only. So
/// do the browser tests: the pages are the same over either broker, and
/// `console::` drives the same routes over both.
const BROKER_FREE: &str = "test(/^store::/) | test(/^store_statistics::/) | test(/^demo::/) \
     | test(/^cli::/) | test(/^broker_restart::/) | test(/^broker_refusal::/) \
     | test(/^redis_streams::/) | test(/^pulsar_batching::/) | test(/^browser::/) \
     | test(/^console_browser::/)";

/// Runs it all; `args` go to the test runner (say a name filter). Returns
/// the exit code.
pub fn run(args: &[String]) -> Result<u8> {
    let started = Instant::now();
    let result = run_inner(args);
    let code = match &result {
        Ok(code) => *code,
        Err(_) => signals::exit_code().unwrap_or(1),
    };
    let secs = started.elapsed().as_secs();
    eprintln!(
        "test: finished in {}m{:02}s (exit {code})",
        secs / 60,
        secs % 60
    );
    result.map(|_| code)
}

fn run_inner(args: &[String]) -> Result<u8> {
    // The tests need every dependency there is.
    install::ensure(&install::ALL)?;
    // Everything once, up front: the proxy the services need comes from the
    // same build as the tests, so nothing is compiled twice.
    let mut build = paths::cargo();
    build.args(["build", "--workspace", "--all-targets"]);
    signals::run(&mut build, "cargo build --workspace --all-targets")?;
    let proxy = paths::binary("debug", "pulsar-lite-proxy");
    clean_dead_runs();
    crate::faults::sweep_dead_scenarios();
    // A state directory per run, named after us: concurrent runs (and
    // `make test-services-up`) never share or stop each other's servers,
    // and a later run cleans up after one that was SIGKILLed.
    let dir = paths::dev().join(format!("test-services-{}", std::process::id()));
    let services = Services::new(&dir, paths::env_number("TEST_SERVICES_TIMEOUT", 60)?);
    let _stop = StopOnDrop(&services);
    let mut env = services.start(Some(proxy))?;
    env.push(("TEST_SERVICES_DIR".into(), dir.display().to_string()));
    for (k, v) in &env {
        if k.starts_with("TEST_") && k.ends_with("_URL") && !k.contains("DIRECT") {
            eprintln!("test: {k}={v}");
        }
    }
    let backtrace = std::env::var("RUST_BACKTRACE").unwrap_or_else(|_| "1".into());
    env.push(("RUST_BACKTRACE".into(), backtrace));
    run_suites(args, &env)
}

struct StopOnDrop<'a>(&'a Services);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.stop() {
            eprintln!("test: stopping the test services failed: {e:#}");
        }
    }
}

/// `.dev/test-services-<pid>` of runs whose owner is gone (SIGKILLed:
/// their cleanup never ran).
fn clean_dead_runs() {
    let Ok(entries) = std::fs::read_dir(paths::dev()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix("test-services-")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if process::gone(owner) {
            eprintln!("test: cleaning up the services of dead run {owner}");
            let _ = Services::new(&entry.path(), 60).stop();
        }
    }
}

/// Runs `cargo ARGS` with the services' env on `broker`; false if it failed.
fn step(
    what: &str,
    cargo_args: &[&str],
    args: &[String],
    env: &[(String, String)],
    broker: &str,
) -> Result<bool> {
    let mut cmd = paths::cargo();
    cmd.args(cargo_args)
        .args(args)
        .envs(env.iter().cloned())
        .env("TEST_BROKER", broker);
    let status = signals::status(&mut cmd)?;
    signals::check()?;
    if !status.success() {
        eprintln!("test: {what} failed ({status})");
    }
    Ok(status.success())
}

/// Doc tests, then nextest's two passes (or cargo test's without it).
fn run_suites(args: &[String], env: &[(String, String)]) -> Result<u8> {
    let mut ok = true;
    // Doc tests first, so the run closes on the main runner's summary.
    // Runner flags (nextest's -E, say) would break cargo test: skipped then.
    let has_lib = paths::root().join("src/lib.rs").is_file();
    if has_lib && !args.iter().any(|a| a.starts_with('-')) {
        ok &= step(
            "doc tests",
            &["test", "--doc", "--no-fail-fast"],
            args,
            env,
            "redis",
        )?;
    } else if has_lib {
        eprintln!("test: runner flags given, skipping doc tests");
    }
    for (what, cargo_args, broker) in passes(args) {
        eprintln!("test: {what}");
        ok &= step(what, &[], &cargo_args, env, broker)?;
    }
    Ok(u8::from(!ok))
}

/// The runs after the doc tests: what each is, its cargo arguments (the
/// user's included), and its broker.
fn passes(args: &[String]) -> Vec<(&'static str, Vec<String>, &'static str)> {
    let with = |base: &[&str], user: &[String]| -> Vec<String> {
        base.iter()
            .map(|a| a.to_string())
            .chain(user.iter().cloned())
            .collect()
    };
    let redis = "the Redis pass (unit tests, and the integration suite on Redis)";
    let pulsar = "the Pulsar pass (the integration suite on Pulsar)";
    if has_nextest() {
        let filter = format!("not ({BROKER_FREE})");
        let everything = [
            "nextest",
            "run",
            "--workspace",
            "--all-targets",
            "--no-fail-fast",
        ];
        let on_pulsar = [
            "nextest",
            "run",
            "--test",
            "it",
            "--no-fail-fast",
            "-E",
            &filter,
        ];
        return vec![
            (redis, with(&everything, args), "redis"),
            (pulsar, with(&on_pulsar, args), "pulsar"),
        ];
    }
    eprintln!("test: cargo-nextest not installed, using cargo test");
    let everything = ["test", "--workspace", "--all-targets", "--no-fail-fast"];
    let on_pulsar = ["test", "--test", "it", "--no-fail-fast"];
    if !args.is_empty() {
        // The user's filter and flags as given; no test groups then.
        return vec![
            (redis, with(&everything, args), "redis"),
            (pulsar, with(&on_pulsar, args), "pulsar"),
        ];
    }
    // No test groups in cargo test: the browser tests run on their own,
    // one at a time, and in neither broker pass.
    let skip = ["--", "--skip", "browser::"].map(String::from);
    let browser = [
        "test",
        "--test",
        "it",
        "--",
        "--test-threads=1",
        "browser::",
    ];
    vec![
        (redis, with(&everything, &skip), "redis"),
        ("the browser tests", with(&browser, &[]), "redis"),
        (pulsar, with(&on_pulsar, &skip), "pulsar"),
    ]
}

fn has_nextest() -> bool {
    paths::cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `cargo xtask test-services up|down|status [--dir DIR]` (default
/// $TEST_SERVICES_DIR, else .dev/test-services).
pub fn services(args: &mut crate::args::Args) -> Result<()> {
    let dir = args.path("--dir", Some("TEST_SERVICES_DIR"))?;
    let dir = dir.unwrap_or_else(|| paths::dev().join("test-services"));
    let action = args.word().unwrap_or_default();
    args.done()?;
    match action.as_str() {
        "up" => services_up(&dir),
        "down" => services_down(&dir),
        "status" => services_status(&dir),
        other => bail!("test-services: expected up, down or status, not '{other}'"),
    }
}

/// `make test-services-up`: the same servers, kept in `dir` until
/// `test-services-down`.
fn services_up(dir: &Path) -> Result<()> {
    // All of them, as for `make test`: protoc too, since the Pulsar proxy
    // below is built from this workspace.
    install::ensure(&install::ALL)?;
    let with_pulsar = std::env::var("TEST_SERVICES_PULSAR").map_or(true, |v| v != "0");
    let proxy = if with_pulsar {
        Some(crate::pulsar::debug_proxy()?)
    } else {
        None
    };
    let services = Services::new(dir, paths::env_number("TEST_SERVICES_TIMEOUT", 60)?);
    for (k, v) in services.start(proxy)? {
        println!("export {k}={v}");
    }
    Ok(())
}

/// `make test-services-down`.
pub fn services_down(dir: &Path) -> Result<()> {
    Services::new(dir, 60).stop()
}

/// `cargo xtask test-services status`: exit 1 unless all run.
fn services_status(dir: &Path) -> Result<()> {
    let (text, ok) = Services::new(dir, 60).status();
    print!("{text}");
    if !ok {
        bail!("not all running");
    }
    Ok(())
}
