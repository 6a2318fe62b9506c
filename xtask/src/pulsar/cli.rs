//! `cargo xtask pulsar …`: what `make pulsar-up/down` run, and what the
//! tests run (through scripts/pulsar-lite.sh) to restart a broker of theirs.
//!
//! Every setting is a flag or, as the old script took them, a variable:
//! `--dir` / PULSAR_LITE_DIR (state; default .dev/pulsar-lite), `--timeout`
//! / PULSAR_LITE_TIMEOUT (60 s), and for `start` `--broker-port` /
//! PULSAR_LITE_PORT, `--proxy-port` / PULSAR_PROXY_PORT (e.g. 6650),
//! `--metrics-port` / PULSAR_LITE_METRICS_PORT (free ports otherwise),
//! `--proxy-bin` / PULSAR_PROXY_BIN (otherwise the debug proxy is built),
//! `--log-level` / PULSAR_LITE_LOG_LEVEL (info), `--max-message-size-bytes`
//! / PULSAR_LITE_MAX_MESSAGE_SIZE_BYTES. PULSAR_LITE_BIN names a prebuilt
//! broker.

use super::{install_broker, Pulsar, Settings};
use crate::args::Args;
use crate::paths;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// The debug proxy, built first: it shares target/debug with the tests.
pub fn debug_proxy() -> Result<PathBuf> {
    eprintln!("pulsar-lite: building pulsar-lite-proxy (debug, as the tests' build)");
    let mut cargo = paths::cargo();
    cargo.args(["build", "--quiet", "-p", "pulsar-lite-proxy"]);
    crate::signals::run(&mut cargo, "building pulsar-lite-proxy")?;
    Ok(paths::binary("debug", "pulsar-lite-proxy"))
}

fn start_settings(args: &mut Args, timeout: u64) -> Result<Settings> {
    let proxy_bin = args.path("--proxy-bin", Some("PULSAR_PROXY_BIN"))?;
    let settings = Settings {
        broker_port: args.parsed("--broker-port", Some("PULSAR_LITE_PORT"))?,
        proxy_port: args.parsed("--proxy-port", Some("PULSAR_PROXY_PORT"))?,
        metrics_port: args.parsed("--metrics-port", Some("PULSAR_LITE_METRICS_PORT"))?,
        proxy_bin: PathBuf::new(),
        timeout,
        log_level: args
            .value("--log-level", Some("PULSAR_LITE_LOG_LEVEL"))?
            .unwrap_or_else(|| "info".into()),
        max_message_size: args.parsed(
            "--max-message-size-bytes",
            Some("PULSAR_LITE_MAX_MESSAGE_SIZE_BYTES"),
        )?,
    };
    args.done()?;
    let proxy_bin = match proxy_bin {
        Some(bin) => bin,
        None => debug_proxy()?,
    };
    Ok(Settings {
        proxy_bin,
        ..settings
    })
}

/// SIGKILL with --kill (a crash, no clean shutdown), else SIGTERM.
fn signal(args: &mut Args) -> Result<i32> {
    let kill = args.flag("--kill");
    args.done()?;
    Ok(if kill { libc::SIGKILL } else { libc::SIGTERM })
}

/// Runs one `pulsar` command.
pub fn run(args: &mut Args) -> Result<()> {
    let dir = args
        .path("--dir", Some("PULSAR_LITE_DIR"))?
        .unwrap_or_else(|| paths::dev().join("pulsar-lite"));
    let timeout = args
        .parsed("--timeout", Some("PULSAR_LITE_TIMEOUT"))?
        .unwrap_or(60);
    let pulsar = Pulsar::new(&dir);
    let action = args.word().unwrap_or_default();
    if ["restart-broker", "stop-broker", "start-broker"].contains(&action.as_str())
        && pulsar.port("broker").is_none()
    {
        let hint = "from a test: PULSAR_LITE_DIR=$TEST_PULSAR_DIR $TEST_PULSAR_CTL …";
        bail!("no pulsar-lite was started in {} ({hint})", dir.display());
    }
    match action.as_str() {
        "start" => print_env(&pulsar.start(&start_settings(args, timeout)?)?),
        "stop" => {
            let purge = args.flag("--purge");
            args.done()?;
            pulsar.stop(purge, timeout)?;
        }
        "status" => {
            args.done()?;
            let (text, ok) = pulsar.status();
            print!("{text}");
            if !ok {
                bail!("not running");
            }
        }
        "env" => print_env(&pulsar.env()?),
        "stop-broker" => {
            let signal = signal(args)?;
            let _lock = pulsar.lock(timeout)?;
            pulsar.stop_broker(signal)?;
        }
        "start-broker" | "restart-broker" => {
            let signal = signal(args)?;
            let _lock = pulsar.lock(timeout)?;
            if action == "restart-broker" {
                pulsar.stop_broker(signal)?;
            } else if pulsar.broker_running() {
                bail!("pulsar-lite is already running (pid {})", pulsar.broker_pid().unwrap_or(0));
            }
            pulsar.start_broker(&install_broker()?, timeout)?;
            eprintln!("pulsar-lite: broker (pid {}) back on 127.0.0.1:{}", pulsar.broker_pid().unwrap_or(0), pulsar.port("broker").unwrap_or(0));
        }
        "install" => {
            let check = args.flag("--check");
            args.done()?;
            let bin = if check { super::find_broker_bin() } else { Some(install_broker()?) };
            match bin {
                Some(bin) => println!("{}", bin.display()),
                None => bail!("pulsar-lite {} is not installed", super::VERSION),
            }
        }
        other => bail!("unknown pulsar action '{other}' (start, stop [--purge], status, env, restart-broker [--kill], stop-broker [--kill], start-broker, install [--check])"),
    }
    Ok(())
}

fn print_env(env: &[(String, String)]) {
    for (k, v) in env {
        println!("export {k}={v}");
    }
}
