//! Private, throw-away PostgreSQL, Redis and Pulsar for the test suite, on
//! free loopback ports, so tests never touch a developer's real servers.
//! `make test` gives each run its own state directory; `make
//! test-services-up` keeps one in .dev/test-services for a developer's own
//! `cargo nextest run` (`source .dev/test-services/env` first).

use crate::postgres::{self, Postgres};
use crate::pulsar::{self, write_env_file, Pulsar};
use crate::redis::{Persistence, Redis};
use crate::{paths, ports};
use anyhow::Result;
use std::fs;
use std::path::{Path, PathBuf};

/// The servers of one state directory.
pub struct Services {
    dir: PathBuf,
    pub timeout: u64,
}

impl Services {
    pub fn new(dir: &Path, timeout: u64) -> Self {
        Self {
            dir: paths::absolute(dir),
            timeout,
        }
    }

    fn postgres(&self) -> Postgres {
        Postgres::new(&self.dir)
    }

    fn redis(&self) -> Redis {
        Redis::new(&self.dir)
    }

    fn pulsar(&self) -> Pulsar {
        Pulsar::new(&self.dir.join("pulsar"))
    }

    fn running(&self, with_pulsar: bool) -> bool {
        self.postgres().running()
            && self.redis().running()
            && (!with_pulsar || self.pulsar().running())
    }

    /// Starts all three (Pulsar unless `proxy_bin` is `None`) and returns
    /// the env the tests read; reuses servers that already run. Whatever
    /// fails half-way, nothing is left running.
    pub fn start(&self, proxy_bin: Option<PathBuf>) -> Result<Vec<(String, String)>> {
        let env_file = self.dir.join("env");
        if env_file.is_file() && self.running(proxy_bin.is_some()) {
            eprintln!(
                "test-services: already running, reusing {}",
                self.dir.display()
            );
            return read_env_file(&env_file);
        }
        if self.dir.exists() {
            eprintln!(
                "test-services: cleaning up stale state in {}",
                self.dir.display()
            );
            self.stop()?;
        }
        fs::create_dir_all(&self.dir)?;
        let started = self.start_all(proxy_bin);
        if started.is_err() {
            let _ = self.stop();
        }
        let env = started?;
        write_env_file(&env_file, &env)?;
        eprintln!("test-services: env file {}", env_file.display());
        Ok(env)
    }

    fn start_all(&self, proxy_bin: Option<PathBuf>) -> Result<Vec<(String, String)>> {
        let free = ports::free_ports(2)?;
        let (pg_port, redis_port) = (free[0], free[1]);
        self.postgres().start(&postgres::Spec {
            port: pg_port,
            user: "postgres",
            password: None,
            max_connections: 300,
            shared_buffers: Some("128MB"),
            durable: false,
            stat_statements: false,
            tmp_prefix: "saga-test-pg",
            timeout: self.timeout,
        })?;
        self.redis()
            .start(redis_port, Persistence::None, self.timeout)?;
        eprintln!(
            "test-services: PostgreSQL (pid {}) on 127.0.0.1:{pg_port}, Redis (pid {}) on 127.0.0.1:{redis_port}",
            self.postgres().pid().unwrap_or(0),
            self.redis().pid().unwrap_or(0)
        );
        let mut env = vec![
            (
                "TEST_DATABASE_URL".into(),
                format!("postgres://postgres@127.0.0.1:{pg_port}/postgres"),
            ),
            (
                "TEST_REDIS_URL".into(),
                format!("redis://127.0.0.1:{redis_port}"),
            ),
        ];
        if let Some(proxy_bin) = proxy_bin {
            // Always free ports: fixed ones meant for a developer's own
            // broker (PULSAR_PROXY_PORT=6650, say) must not leak in here.
            let settings = pulsar::Settings {
                broker_port: None,
                proxy_port: None,
                metrics_port: None,
                proxy_bin: proxy_bin.clone(),
                timeout: self.timeout,
                log_level: "info".into(),
                max_message_size: None,
            };
            env.extend(self.pulsar().start(&settings)?);
            env.push(("PULSAR_PROXY_BIN".into(), proxy_bin.display().to_string()));
        }
        // The tests' way back to us (scripts/pulsar-lite.sh and the fault
        // suite run it).
        if let Some(me) = crate::paths::xtask_bin() {
            env.push(("XTASK_BIN".into(), me.display().to_string()));
        }
        Ok(env)
    }

    /// Stops everything and deletes the state directory.
    pub fn stop(&self) -> Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        self.pulsar().stop(false, self.timeout)?;
        self.redis().stop()?;
        self.postgres().stop()?;
        self.postgres().remove_outside_data();
        fs::remove_dir_all(&self.dir)?;
        eprintln!("test-services: removed {}", self.dir.display());
        Ok(())
    }

    /// A line per server; true when all run.
    pub fn status(&self) -> (String, bool) {
        let (pg, redis) = (self.postgres(), self.redis());
        let mut text = match pg.pid().filter(|_| pg.running()) {
            Some(pid) => format!(
                "postgres: running (pid {pid}, 127.0.0.1:{})\n",
                pg.port().unwrap_or(0)
            ),
            None => "postgres: not running\n".to_string(),
        };
        text += &match redis.pid().filter(|_| redis.running()) {
            Some(pid) => format!(
                "redis:    running (pid {pid}, 127.0.0.1:{})\n",
                redis.port().unwrap_or(0)
            ),
            None => "redis:    not running\n".to_string(),
        };
        let (pulsar_text, pulsar_ok) = self.pulsar().status();
        text += &pulsar_text;
        let ok = pg.running() && redis.running() && pulsar_ok;
        if ok {
            text += &format!("env:      {}\n", self.dir.join("env").display());
        }
        (text, ok)
    }
}

/// The `export K=V` lines of an env file.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}
