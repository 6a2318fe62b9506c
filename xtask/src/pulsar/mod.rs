//! The one Pulsar starter: pulsar-lite (a Pulsar-protocol broker from PyPI;
//! there is no Docker here) with tools/pulsar-lite-proxy in front, both on
//! 127.0.0.1. The proxy is what lets the `pulsar` crate consume from
//! pulsar-lite (docs/troubleshooting.md says why).
//!
//! State files in the state directory: `broker.{pid,port,log}`,
//! `proxy.{pid,port,log}`, `metrics.port`, `pulsar-lite.toml`, `data/`,
//! `env` (the `TEST_PULSAR_*` lines) and `.lock`, which serialises commands
//! on one directory (two tests restarting the same broker).

use crate::paths;
use crate::ports::free_ports;
use crate::process::{self, read_pid, read_port, write_line, Lock};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// The pulsar-lite release the tests are known to work with.
pub const VERSION: &str = "0.2.0";
const BROKER: &str = "pulsar-lite";
/// /proc/PID/comm keeps 15 characters of "pulsar-lite-proxy".
const PROXY: &str = "pulsar-lite-pro";

/// How to start one.
pub struct Settings {
    /// Fixed ports (say the proxy on 6650); free ones where `None`.
    pub broker_port: Option<u16>,
    pub proxy_port: Option<u16>,
    pub metrics_port: Option<u16>,
    pub proxy_bin: PathBuf,
    pub timeout: u64,
    pub log_level: String,
    /// The broker's `max_message_size_bytes` (tests of a refusing broker).
    pub max_message_size: Option<u64>,
}

/// A pulsar-lite and its proxy whose state lives in one directory.
pub struct Pulsar {
    dir: PathBuf,
}

impl Pulsar {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: paths::absolute(dir),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn broker_pid(&self) -> Option<i32> {
        read_pid(&self.file("broker.pid"))
    }

    pub fn proxy_pid(&self) -> Option<i32> {
        read_pid(&self.file("proxy.pid"))
    }

    /// A recorded port: `broker`, `proxy` or `metrics`.
    pub fn port(&self, which: &str) -> Option<u16> {
        read_port(&self.file(&format!("{which}.port")))
    }

    pub fn broker_running(&self) -> bool {
        self.broker_pid().is_some_and(|p| process::alive(p, BROKER))
    }

    pub fn proxy_running(&self) -> bool {
        self.proxy_pid().is_some_and(|p| process::alive(p, PROXY))
    }

    /// Both running.
    pub fn running(&self) -> bool {
        self.dir.is_dir() && self.broker_running() && self.proxy_running()
    }

    fn lock(&self, timeout: u64) -> Result<Lock> {
        Lock::take(&self.file(".lock"), timeout)
    }

    /// Log files: broker's and proxy's.
    pub fn logs(&self) -> (PathBuf, PathBuf) {
        (self.file("broker.log"), self.file("proxy.log"))
    }

    /// The env lines clients need (`TEST_PULSAR_URL` is the proxy's).
    pub fn env(&self) -> Result<Vec<(String, String)>> {
        let (proxy, broker) = (self.port("proxy"), self.port("broker"));
        let (Some(proxy), Some(broker)) = (proxy, broker) else {
            bail!("not started ({} has no ports)", self.dir.display());
        };
        let ctl = paths::root().join("scripts/pulsar-lite.sh");
        Ok(vec![
            (
                "TEST_PULSAR_URL".into(),
                format!("pulsar://127.0.0.1:{proxy}"),
            ),
            (
                "TEST_PULSAR_DIRECT_URL".into(),
                format!("pulsar://127.0.0.1:{broker}"),
            ),
            ("TEST_PULSAR_DIR".into(), self.dir.display().to_string()),
            ("TEST_PULSAR_CTL".into(), ctl.display().to_string()),
        ])
    }

    fn same_ports(&self, s: &Settings) -> bool {
        let same = |want: Option<u16>, which| want.is_none() || want == self.port(which);
        same(s.broker_port, "broker")
            && same(s.proxy_port, "proxy")
            && same(s.metrics_port, "metrics")
    }

    /// Starts both (again, if half of it runs; the data stays) and returns
    /// the env; reuses a running pair on the wanted ports.
    pub fn start(&self, s: &Settings) -> Result<Vec<(String, String)>> {
        let _lock = self.lock(s.timeout)?;
        if self.running() && self.file("env").is_file() && self.same_ports(s) {
            eprintln!(
                "pulsar-lite: already running, reusing {}",
                self.dir.display()
            );
            return self.env();
        }
        let broker_bin = install_broker()?;
        self.stop_proxy()?;
        self.stop_broker(libc::SIGTERM)?;
        let _ = fs::remove_file(self.file("env"));
        let free = free_ports(3)?;
        let broker = s.broker_port.unwrap_or(free[0]);
        let proxy = s.proxy_port.unwrap_or(free[1]);
        let metrics = s.metrics_port.unwrap_or(free[2]);
        write_line(&self.file("broker.port"), broker)?;
        write_line(&self.file("proxy.port"), proxy)?;
        write_line(&self.file("metrics.port"), metrics)?;
        self.write_config(s)?;
        let started = self
            .start_broker(&broker_bin, s.timeout)
            .and_then(|()| self.start_proxy(&s.proxy_bin, s.timeout));
        if let Err(e) = started {
            // Don't leave half of it running.
            let _ = self.stop_proxy();
            let _ = self.stop_broker(libc::SIGKILL);
            return Err(e);
        }
        let env = self.env()?;
        write_env_file(&self.file("env"), &env)?;
        eprintln!(
            "pulsar-lite: broker (pid {}) on 127.0.0.1:{broker} (metrics :{metrics}), proxy (pid {}) on 127.0.0.1:{proxy}; data in {}",
            self.broker_pid().unwrap_or(0),
            self.proxy_pid().unwrap_or(0),
            self.file("data").display()
        );
        Ok(env)
    }

    /// pulsar-lite silently falls back to its defaults (metrics on
    /// 0.0.0.0:8080) when the config is missing or not valid TOML, so
    /// values are checked here and the listeners after the start.
    fn write_config(&self, s: &Settings) -> Result<()> {
        if !["error", "warn", "info", "debug", "trace"].contains(&s.log_level.as_str()) {
            bail!(
                "PULSAR_LITE_LOG_LEVEL must be error, warn, info, debug or trace, not '{}'",
                s.log_level
            );
        }
        let port = |w| self.port(w).unwrap_or(0);
        let mut toml = format!(
            "# Written by xtask (pulsar.rs) on every start.\naddr = \"127.0.0.1:{}\"\n\
             db_path = \"{}\"\nlog_level = \"{}\"\n",
            port("broker"),
            self.file("data/pulsar-lite").display(),
            s.log_level
        );
        if let Some(max) = s.max_message_size {
            toml += &format!("max_message_size_bytes = {max}\n");
        }
        toml += &format!(
            "\n[metrics]\nenabled = true\naddr = \"127.0.0.1:{}\"\n",
            port("metrics")
        );
        fs::write(self.file("pulsar-lite.toml"), toml).context("writing pulsar-lite.toml")
    }
}

/// Writes `export K=V` lines, atomically (a reader never sees half a file).
pub fn write_env_file(path: &Path, env: &[(String, String)]) -> Result<()> {
    let text: String = env
        .iter()
        .map(|(k, v)| format!("export {k}={v}\n"))
        .collect();
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

mod cli;
mod install;
mod procs;

pub use cli::{debug_proxy, run as cli};
pub use install::{find_broker_bin, install_broker};
