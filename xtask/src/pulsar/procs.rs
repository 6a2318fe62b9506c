//! Starting and stopping the broker and the proxy, each checked to listen
//! where it should, and only on loopback.

use super::{Pulsar, BROKER, PROXY};
use crate::paths::wait_for;
use crate::ports::{accepts, listeners_of};
use crate::process::{self, log_tails, spawn_detached, write_line};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

impl Pulsar {
    /// Starts pulsar-lite on the recorded port, data and config, and waits
    /// until it listens on its port and its metrics port, only on loopback.
    pub fn start_broker(&self, bin: &Path, timeout: u64) -> Result<()> {
        let (Some(port), Some(metrics)) = (self.port("broker"), self.port("metrics")) else {
            bail!(
                "no broker configuration in {}; start it first",
                self.dir.display()
            );
        };
        if accepts(port) {
            bail!("127.0.0.1:{port} is already in use by another process");
        }
        fs::create_dir_all(self.file("data"))?;
        let log = self.file("broker.log");
        let mut cmd = Command::new(bin);
        cmd.current_dir(&self.dir)
            .arg("--config")
            .arg(self.file("pulsar-lite.toml"))
            .args(["--addr", &format!("127.0.0.1:{port}"), "--db-path"])
            .arg(self.file("data/pulsar-lite"));
        let pid = spawn_detached(&mut cmd, &log)?;
        write_line(&self.file("broker.pid"), pid)?;
        let what = format!("pulsar-lite not listening on 127.0.0.1:{port} and :{metrics}");
        wait_for(timeout, Duration::from_millis(100), &what, || {
            if process::gone(pid) {
                bail!("pulsar-lite exited during startup");
            }
            let found = listeners_of(pid);
            if let Some(other) = found.iter().find(|l| !l.loopback) {
                bail!(
                    "pulsar-lite listened on a non-loopback address (port {}): was {} ignored?",
                    other.port,
                    self.file("pulsar-lite.toml").display()
                );
            }
            let on = |p| found.iter().any(|l| l.port == p);
            Ok((on(port) && on(metrics) && accepts(port)).then_some(()))
        })
        .map_err(|e| {
            let _ = self.stop_broker(libc::SIGKILL);
            anyhow::anyhow!("{e}{}", log_tails(&[&log]))
        })
    }

    /// Stops pulsar-lite with `signal` (SIGTERM, or SIGKILL for a crash);
    /// its data survives either.
    pub fn stop_broker(&self, signal: i32) -> Result<()> {
        let pid = self.broker_pid();
        let _ = fs::remove_file(self.file("broker.pid"));
        if let Some(pid) = pid {
            if process::stop(pid, BROKER, signal, 20)? {
                let name = if signal == libc::SIGKILL {
                    "SIGKILL"
                } else {
                    "SIGTERM"
                };
                eprintln!("pulsar-lite: stopped broker (pid {pid}, {name})");
            }
        }
        Ok(())
    }

    /// Starts the proxy in front of the recorded broker port.
    pub fn start_proxy(&self, bin: &Path, timeout: u64) -> Result<()> {
        let (Some(port), Some(broker)) = (self.port("proxy"), self.port("broker")) else {
            bail!("no proxy configuration in {}", self.dir.display());
        };
        if accepts(port) {
            bail!("127.0.0.1:{port} is already in use by another process");
        }
        if !process::is_executable(bin) {
            bail!("no pulsar-lite-proxy binary at {}", bin.display());
        }
        let log = self.file("proxy.log");
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", &format!("127.0.0.1:{broker}")]);
        let pid = spawn_detached(&mut cmd, &log).context("starting pulsar-lite-proxy")?;
        write_line(&self.file("proxy.pid"), pid)?;
        let what = format!("pulsar-lite-proxy not listening on 127.0.0.1:{port}");
        wait_for(timeout, Duration::from_millis(100), &what, || {
            if process::gone(pid) {
                bail!("pulsar-lite-proxy exited during startup");
            }
            let listening = listeners_of(pid)
                .iter()
                .any(|l| l.port == port && l.loopback);
            Ok((listening && accepts(port)).then_some(()))
        })
        .map_err(|e| anyhow::anyhow!("{e}{}", log_tails(&[&log])))
    }

    pub fn stop_proxy(&self) -> Result<()> {
        let pid = self.proxy_pid();
        let _ = fs::remove_file(self.file("proxy.pid"));
        if let Some(pid) = pid {
            if process::stop(pid, PROXY, libc::SIGTERM, 10)? {
                eprintln!("pulsar-lite: stopped proxy (pid {pid})");
            }
        }
        Ok(())
    }

    /// Stops both; `purge` also deletes the state directory, data included.
    pub fn stop(&self, purge: bool, timeout: u64) -> Result<()> {
        if !self.dir.is_dir() {
            return Ok(());
        }
        {
            let _lock = self.lock(timeout)?;
            self.stop_proxy()?;
            self.stop_broker(libc::SIGTERM)?;
            let _ = fs::remove_file(self.file("env"));
        }
        if purge {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        Ok(())
    }

    /// One line each for the broker and the proxy; true when both run.
    pub fn status(&self) -> (String, bool) {
        let mut text = String::new();
        let port = |w| self.port(w).unwrap_or(0);
        if self.broker_running() {
            text += &format!(
                "pulsar-lite: running (pid {}, 127.0.0.1:{}, data {})\n",
                self.broker_pid().unwrap_or(0),
                port("broker"),
                self.file("data").display()
            );
        } else {
            text += "pulsar-lite: not running\n";
        }
        if self.proxy_running() {
            let pid = self.proxy_pid().unwrap_or(0);
            text += &format!(
                "proxy:       running (pid {pid}, 127.0.0.1:{})\n",
                port("proxy")
            );
        } else {
            text += "proxy:       not running\n";
        }
        (text, self.broker_running() && self.proxy_running())
    }
}
