//! The orchestrator and the simulators as background processes: the local
//! simple/full stacks and bench start them the same way.

use crate::paths::wait_for;
use crate::ports::http_ok;
use crate::process::{self, log_tails, read_pid, spawn_detached, write_line};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// /proc/PID/comm keeps 15 characters of "saga-orchestrator".
pub const APP_COMM: &str = "saga-orchestrat";

/// One saga-orchestrator subcommand running in the background, with
/// `<dir>/<name>.pid` and `<dir>/<name>.log`.
pub struct App {
    dir: PathBuf,
    name: &'static str,
    sub: &'static str,
}

impl App {
    pub fn new(dir: &Path, name: &'static str, sub: &'static str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name,
            sub,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        read_pid(&self.dir.join(format!("{}.pid", self.name)))
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// True if the recorded PID is saga-orchestrator running our
    /// subcommand (its command line says so: a recycled PID does not).
    pub fn running(&self) -> bool {
        self.pid().is_some_and(|pid| {
            process::alive(pid, APP_COMM) && process::cmdline(pid).iter().any(|a| a == self.sub)
        })
    }

    /// Starts `cmd` (the binary and its arguments, environment set).
    pub fn start(&self, cmd: &mut Command) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let pid = spawn_detached(cmd, &self.log())?;
        write_line(&self.dir.join(format!("{}.pid", self.name)), pid)
    }

    /// Waits until GET `path` on `port` answers 2xx, while it still runs.
    pub fn wait_http(&self, port: u16, path: &str, timeout: u64) -> Result<()> {
        let pid = self.pid().unwrap_or(0);
        let what = format!("{} not ready at http://127.0.0.1:{port}{path}", self.name);
        wait_for(timeout, Duration::from_millis(200), &what, || {
            if process::gone(pid) {
                bail!("{} (pid {pid}) exited during startup", self.name);
            }
            Ok(http_ok(port, path).then_some(()))
        })
        .map_err(|e| anyhow::anyhow!("{e}{}", log_tails(&[&self.log()])))
    }

    /// SIGTERM, then SIGKILL after `grace` seconds.
    pub fn stop(&self, grace: u64) -> Result<()> {
        if let Some(pid) = self.pid().filter(|_| self.running()) {
            process::stop(pid, APP_COMM, libc::SIGTERM, grace)?;
            eprintln!("stack: stopped {} (pid {pid})", self.name);
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{}.pid", self.name)));
        Ok(())
    }
}

use super::{Local, Stack};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

impl Local {
    /// The API and simulator ports must be free; `api_hint` says how to
    /// move the API (bench and the stacks give different advice).
    pub fn require_app_ports(&self, api_hint: &str) -> Result<()> {
        let p = &self.ports;
        let (sim_a, sim_i) = (
            "move ours with ALIANZAS_HOST_PORT=8012",
            "move ours with INTEGRACIONES_HOST_PORT=8011",
        );
        crate::ports::require_free(p.api, "the orchestrator's API", api_hint)?;
        crate::ports::require_free(p.alianzas, "simulated alliances", sim_a)?;
        crate::ports::require_free(p.integraciones, "simulated integrations", sim_i)
    }

    /// `simulate --broker`, set up like its compose service (loopback).
    fn simulator_command(&self, bin: &Path, broker: &str) -> Command {
        let p = &self.ports;
        let mut sim = Command::new(bin);
        sim.current_dir(crate::paths::root())
            .envs([
                ("BROKER_URL", broker),
                ("LOG_FORMAT", "json"),
                ("RUST_LOG", "info"),
            ])
            .args(["simulate", "--broker"])
            .args(["--alianzas-addr", &format!("127.0.0.1:{}", p.alianzas)])
            .args([
                "--integraciones-addr",
                &format!("127.0.0.1:{}", p.integraciones),
            ])
            .args(["--latency-ms", &env_or("SIM_LATENCY_MS", "2")])
            .args(["--reject-ratio", &env_or("SIM_REJECT_RATIO", "0.1")])
            .args(["--transient-ratio", &env_or("SIM_TRANSIENT_RATIO", "0.05")])
            .args([
                "--delete-fail-ratio",
                &env_or("SIM_DELETE_FAIL_RATIO", "0.2"),
            ])
            .args(["--seed", &env_or("SIM_SEED", "42")]);
        sim
    }

    /// `serve`, set up like its compose service (loopback).
    fn orchestrator_command(&self, bin: &Path, broker: &str) -> Command {
        let p = &self.ports;
        let mut serve = Command::new(bin);
        serve
            .current_dir(crate::paths::root())
            .env("BROKER_URL", broker)
            .env("DATABASE_URL", self.database_url(super::local::PG_DB))
            .env(
                "ALIANZAS_API_URL",
                format!("http://127.0.0.1:{}", p.alianzas),
            )
            .env(
                "INTEGRACIONES_API_URL",
                format!("http://127.0.0.1:{}", p.integraciones),
            )
            .env(
                "ALIANZAS_MODE",
                env_or("ORCHESTRATOR_ALIANZAS_MODE", "http"),
            )
            .env(
                "INTEGRACIONES_MODE",
                env_or("ORCHESTRATOR_INTEGRACIONES_MODE", "http"),
            )
            .env("API_ADDR", format!("127.0.0.1:{}", p.api))
            .env("ADMIN_TOKEN", env_or("ORCHESTRATOR_ADMIN_TOKEN", ""))
            .envs([("LOG_FORMAT", "json"), ("RUST_LOG", "info,sqlx=warn")])
            .arg("serve");
        serve
    }

    /// The simulators and the orchestrator of the local simple/full stacks.
    pub fn start_apps(&self, stack: Stack) -> Result<()> {
        let p = &self.ports;
        let broker = match stack {
            Stack::Simple => format!("redis://127.0.0.1:{}", p.redis),
            _ => format!("pulsar://127.0.0.1:{}", p.pulsar),
        };
        let stack_file = super::dir().join("apps.stack");
        let same = process::read_first_line(&stack_file).as_deref() == Some(stack.name());
        if same && self.simulator().running() && self.orchestrator().running() {
            eprintln!(
                "stack: orchestrator and simulators of '{}' already running",
                stack.name()
            );
            return Ok(());
        }
        self.stop_apps()?;
        self.require_app_ports("move ours with ORCHESTRATOR_HOST_PORT=8010")?;
        let bin = crate::paths::binary("release", "saga-orchestrator");
        let (sim, orchestrator) = (self.simulator(), self.orchestrator());
        sim.start(&mut self.simulator_command(&bin, &broker))?;
        sim.wait_http(p.alianzas, "/stats", self.timeout)?;
        sim.wait_http(p.integraciones, "/stats", self.timeout)?;
        orchestrator.start(&mut self.orchestrator_command(&bin, &broker))?;
        orchestrator.wait_http(p.api, "/ready", self.timeout)?;
        write_line(&stack_file, stack.name())?;
        eprintln!(
            "stack: simulator (pid {}) on 127.0.0.1:{}/{}, orchestrator (pid {}) on http://127.0.0.1:{} ({broker})",
            sim.pid().unwrap_or(0),
            p.alianzas,
            p.integraciones,
            orchestrator.pid().unwrap_or(0),
            p.api
        );
        Ok(())
    }

    pub fn stop_apps(&self) -> Result<()> {
        self.orchestrator().stop(40)?;
        self.simulator().stop(10)?;
        let _ = std::fs::remove_file(super::dir().join("apps.stack"));
        Ok(())
    }
}
