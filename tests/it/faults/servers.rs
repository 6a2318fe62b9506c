//! The store and the broker of one scenario, its own, started through
//! `cargo xtask postgres|redis|pulsar` so the scenario can stop, crash,
//! pause and restart them (the suite's shared servers must stay up).

use std::path::{Path, PathBuf};

use crate::broker::{BrokerKind, PrivatePulsar};

/// `cargo xtask` as `make test` and `make faults` name it (XTASK_BIN), or
/// through cargo for a developer's own run.
fn xtask() -> std::process::Command {
    // A binary that was relinked since it was named is gone: cargo then.
    let named = std::env::var_os("XTASK_BIN").filter(|b| Path::new(b).is_file());
    match named {
        Some(bin) => std::process::Command::new(bin),
        None => {
            let mut cargo = std::process::Command::new("cargo");
            cargo
                .args(["run", "--quiet", "--manifest-path"])
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
                .args(["-p", "xtask", "--"]);
            cargo
        }
    }
}

/// Stops and deletes a server when its owner is dropped, even by a panic.
fn purge(server: &str, dir: &Path) {
    let _ = xtask()
        .arg(server)
        .arg("--dir")
        .arg(dir)
        .args(["stop", "--purge"])
        .output();
}

/// Runs `xtask <server> --dir <dir> <args…>`; its standard output.
async fn ctl(server: &str, dir: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::from(xtask())
        .arg(server)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .await
        .expect("run cargo xtask");
    assert!(
        out.status.success(),
        "xtask {server} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `export NAME=…` in a starter's output.
fn exported(stdout: &str, name: &str) -> String {
    let prefix = format!("export {name}=");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} in {stdout:?}"))
        .to_string()
}

/// A durable PostgreSQL (fsync and synchronous commit on) of the scenario.
pub struct Store {
    dir: PathBuf,
    pub url: String,
}

impl Store {
    pub async fn start(dir: &Path) -> Self {
        let dir = dir.join("postgres");
        let url = exported(&ctl("postgres", &dir, &["start"]).await, "DATABASE_URL");
        Self { dir, url }
    }

    /// `pg_ctl stop -m fast|immediate`: immediate is a crash for the data.
    pub async fn stop(&self, mode: &str) {
        ctl("postgres", &self.dir, &["stop", "--mode", mode]).await;
    }

    /// Starts it again on the same data and port.
    pub async fn start_again(&self) {
        ctl("postgres", &self.dir, &["start"]).await;
    }

    /// SIGSTOP to every PostgreSQL process: connections stay open and
    /// nothing answers.
    pub async fn pause(&self) {
        ctl("postgres", &self.dir, &["pause"]).await;
    }

    pub async fn resume(&self) {
        ctl("postgres", &self.dir, &["resume"]).await;
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        purge("postgres", &self.dir);
    }
}

/// The scenario's broker: a Redis with its append-only file synced on every
/// write (a SIGKILL loses nothing it acknowledged), or a pulsar-lite.
pub enum Broker {
    Redis { dir: PathBuf, url: String },
    Pulsar(PrivatePulsar),
}

impl Broker {
    pub async fn start(kind: BrokerKind, dir: &Path) -> Self {
        match kind {
            BrokerKind::Redis => {
                let dir = dir.join("redis");
                let url = exported(&ctl("redis", &dir, &["start"]).await, "REDIS_URL");
                Self::Redis { dir, url }
            }
            BrokerKind::Pulsar => Self::Pulsar(PrivatePulsar::start().await),
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Self::Redis { url, .. } => url,
            Self::Pulsar(pulsar) => &pulsar.url,
        }
    }

    /// SIGKILL, then a start on the same data and port, after `down`.
    pub async fn crash_and_restart(&self, down: std::time::Duration) {
        match self {
            Self::Redis { dir, .. } => {
                ctl("redis", dir, &["kill"]).await;
                tokio::time::sleep(down).await;
                ctl("redis", dir, &["start"]).await;
            }
            Self::Pulsar(pulsar) => {
                pulsar.kill_broker().await;
                tokio::time::sleep(down).await;
                pulsar.start_broker().await;
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Self::Redis { dir, .. } = self {
            purge("redis", dir);
        }
    }
}
