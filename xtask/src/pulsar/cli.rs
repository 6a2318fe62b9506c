//! `cargo xtask pulsar …`: what `make pulsar-up/down` run, and what the
//! tests run (through scripts/pulsar-lite.sh) to restart a broker of theirs.

use super::{install_broker, Pulsar, Settings};
use crate::paths;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Where and how: the settings the old script took from the environment.
#[derive(Args, Debug)]
pub struct Cmd {
    /// State directory (data, config, logs, PIDs, env file) [default: .dev/pulsar-lite].
    #[arg(long, env = "PULSAR_LITE_DIR", global = true)]
    dir: Option<PathBuf>,
    /// Seconds to wait for a start.
    #[arg(long, env = "PULSAR_LITE_TIMEOUT", default_value_t = 60, global = true)]
    timeout: u64,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Install if needed, start both, print the env lines.
    Start(StartArgs),
    /// Stop both (--purge also deletes the data).
    Stop {
        #[arg(long)]
        purge: bool,
    },
    /// Exit 0 only when both run.
    Status,
    /// Print the env file.
    Env,
    /// Stop the broker and start it again (same port and data); the proxy stays.
    RestartBroker(SignalArg),
    /// Stop the broker alone.
    StopBroker(SignalArg),
    /// Start the broker alone again, on the same port and data.
    StartBroker,
    /// Install pulsar-lite (--check: only look) and print the binary's path.
    Install {
        #[arg(long)]
        check: bool,
    },
}

#[derive(Args, Debug)]
struct StartArgs {
    /// Fixed ports instead of free ones (e.g. the proxy on 6650).
    #[arg(long, env = "PULSAR_LITE_PORT")]
    broker_port: Option<u16>,
    #[arg(long, env = "PULSAR_PROXY_PORT")]
    proxy_port: Option<u16>,
    #[arg(long, env = "PULSAR_LITE_METRICS_PORT")]
    metrics_port: Option<u16>,
    /// A prebuilt proxy; otherwise it is built (debug, the tests' profile).
    #[arg(long, env = "PULSAR_PROXY_BIN")]
    proxy_bin: Option<PathBuf>,
    #[arg(long, env = "PULSAR_LITE_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// The broker refuses messages over this size.
    #[arg(long, env = "PULSAR_LITE_MAX_MESSAGE_SIZE_BYTES")]
    max_message_size_bytes: Option<u64>,
}

#[derive(Args, Debug)]
struct SignalArg {
    /// SIGKILL instead of SIGTERM: a crash, no clean shutdown.
    #[arg(long)]
    kill: bool,
}

impl SignalArg {
    fn signal(&self) -> i32 {
        if self.kill {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        }
    }
}

/// The debug proxy, built first: it shares target/debug with the tests.
pub fn debug_proxy() -> Result<PathBuf> {
    eprintln!("pulsar-lite: building pulsar-lite-proxy (debug, as the tests' build)");
    let mut cargo = paths::cargo();
    cargo.args(["build", "--quiet", "-p", "pulsar-lite-proxy"]);
    crate::signals::run(&mut cargo, "building pulsar-lite-proxy")?;
    Ok(paths::binary("debug", "pulsar-lite-proxy"))
}

/// Runs one `pulsar` command.
pub fn run(cmd: Cmd) -> Result<()> {
    let dir = cmd.dir.unwrap_or_else(|| paths::dev().join("pulsar-lite"));
    let pulsar = Pulsar::new(&dir);
    let started = || -> Result<()> {
        if pulsar.port("broker").is_none() {
            let hint = "from a test: PULSAR_LITE_DIR=$TEST_PULSAR_DIR $TEST_PULSAR_CTL …";
            bail!("no pulsar-lite was started in {} ({hint})", dir.display());
        }
        Ok(())
    };
    match cmd.action {
        Action::Start(a) => {
            let proxy_bin = match a.proxy_bin {
                Some(bin) => bin,
                None => debug_proxy()?,
            };
            let settings = Settings {
                broker_port: a.broker_port,
                proxy_port: a.proxy_port,
                metrics_port: a.metrics_port,
                proxy_bin,
                timeout: cmd.timeout,
                log_level: a.log_level,
                max_message_size: a.max_message_size_bytes,
            };
            print_env(&pulsar.start(&settings)?);
        }
        Action::Stop { purge } => pulsar.stop(purge, cmd.timeout)?,
        Action::Status => {
            let (text, ok) = pulsar.status();
            print!("{text}");
            if !ok {
                bail!("not running");
            }
        }
        Action::Env => print_env(&pulsar.env()?),
        Action::StopBroker(s) => {
            started()?;
            let _lock = pulsar.lock(cmd.timeout)?;
            pulsar.stop_broker(s.signal())?;
        }
        Action::StartBroker => {
            started()?;
            let _lock = pulsar.lock(cmd.timeout)?;
            if pulsar.broker_running() {
                bail!(
                    "pulsar-lite is already running (pid {})",
                    pulsar.broker_pid().unwrap_or(0)
                );
            }
            pulsar.start_broker(&install_broker()?, cmd.timeout)?;
        }
        Action::RestartBroker(s) => {
            started()?;
            let _lock = pulsar.lock(cmd.timeout)?;
            pulsar.stop_broker(s.signal())?;
            pulsar.start_broker(&install_broker()?, cmd.timeout)?;
        }
        Action::Install { check } => {
            let bin = if check {
                super::find_broker_bin()
            } else {
                Some(install_broker()?)
            };
            match bin {
                Some(bin) => println!("{}", bin.display()),
                None => bail!("pulsar-lite {} is not installed", super::VERSION),
            }
        }
    }
    Ok(())
}

fn print_env(env: &[(String, String)]) {
    for (k, v) in env {
        println!("export {k}={v}");
    }
}
