//! The one Redis starter: `redis-server` on 127.0.0.1, daemonised, for the
//! tests (no persistence), the dev stack (append-only file, as in the
//! compose files, so streams and consumer groups survive a restart) and the
//! fault scenarios (the file synced before every acknowledgement: a
//! process kill loses nothing either way, as Redis writes the file before
//! it answers, but this also holds if the machine itself goes down).
//!
//! State files: `redis.pid`, `redis.port`, `redis.log`, `redis-start.log`,
//! and the data under `redis/` when persistent.

use crate::paths::wait_for;
use crate::ports::redis_ping;
use crate::process::{self, log_tails, read_pid, read_port, which, write_line};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// What a redis-server keeps across a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing: the tests' throw-away servers.
    None,
    /// An append-only file synced every second (Redis's default).
    AppendOnly,
    /// An append-only file synced before each write is acknowledged.
    AppendOnlyAlways,
}

/// A redis-server whose state lives in one directory.
pub struct Redis {
    state: PathBuf,
}

impl Redis {
    pub fn new(state: &Path) -> Self {
        Self {
            state: state.to_path_buf(),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        read_pid(&self.state.join("redis.pid"))
    }

    pub fn port(&self) -> Option<u16> {
        read_port(&self.state.join("redis.port"))
    }

    pub fn running(&self) -> bool {
        self.pid()
            .is_some_and(|pid| process::alive(pid, "redis-server"))
    }

    /// The server's log file.
    pub fn log(&self) -> PathBuf {
        self.state.join("redis.log")
    }

    /// Starts it on `port` and waits until it answers PING.
    pub fn start(&self, port: u16, persistence: Persistence, timeout: u64) -> Result<()> {
        if which("redis-server").is_none() {
            bail!("redis-server not found; run cargo xtask install redis");
        }
        let persistent = persistence != Persistence::None;
        let data = if persistent {
            self.state.join("redis")
        } else {
            self.state.clone()
        };
        fs::create_dir_all(&data)?;
        let pidfile = self.state.join("redis.pid");
        let _ = fs::remove_file(&pidfile);
        let start_log = self.state.join("redis-start.log");
        let out = fs::File::create(&start_log)?;
        let aof = if persistent { "yes" } else { "no" };
        let fsync = match persistence {
            Persistence::AppendOnlyAlways => "always",
            _ => "everysec",
        };
        let status = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--protected-mode", "yes", "--save", "", "--appendonly", aof])
            .args(["--appendfsync", fsync])
            .args(["--daemonize", "yes", "--pidfile"])
            .arg(&pidfile)
            .arg("--logfile")
            .arg(self.log())
            .arg("--dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .context("running redis-server")?;
        if !status.success() {
            bail!(
                "redis-server failed to start on 127.0.0.1:{port}{}",
                log_tails(&[&start_log, &self.log()])
            );
        }
        write_line(&self.state.join("redis.port"), port)?;
        let what = format!("Redis not ready on 127.0.0.1:{port}");
        wait_for(timeout, Duration::from_millis(200), &what, || {
            Ok((self.pid().is_some() && redis_ping(port)).then_some(()))
        })
        .map_err(|e| anyhow::anyhow!("{e}{}", log_tails(&[&self.log()])))
    }

    /// Kills it with SIGKILL, as a crash: no last write of its files.
    pub fn kill(&self) -> Result<()> {
        if let Some(pid) = self.pid() {
            process::stop(pid, "redis-server", libc::SIGKILL, 5)?;
        }
        let _ = fs::remove_file(self.state.join("redis.pid"));
        Ok(())
    }

    /// Stops it: SIGTERM, SIGKILL after 20 s.
    pub fn stop(&self) -> Result<()> {
        if let Some(pid) = self.pid() {
            if process::stop(pid, "redis-server", libc::SIGTERM, 20)? {
                eprintln!("redis: stopped (pid {pid})");
            }
        }
        let _ = fs::remove_file(self.state.join("redis.pid"));
        Ok(())
    }
}
