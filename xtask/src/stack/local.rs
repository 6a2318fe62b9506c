//! The local stack: PostgreSQL (password auth, kept), Redis (append-only
//! file), pulsar-lite with its proxy on Pulsar's standard port, and for
//! simple/full the simulators and the orchestrator, all on 127.0.0.1.

use super::{dir, App, Stack};
use crate::install::{self, Dep};
use crate::postgres::{self, Postgres};
use crate::pulsar::{self, write_env_file, Pulsar};
use crate::redis::{Persistence, Redis};
use crate::{paths, ports, process, release};
use anyhow::{bail, Result};

/// The credentials of .env.example's DATABASE_URL and the compose files.
pub const PG_USER: &str = "postgres";
pub const PG_PASSWORD: &str = "postgres";
pub const PG_DB: &str = "saga_db";

/// The standard ports, movable with the compose files' variables.
pub struct Ports {
    pub postgres: u16,
    pub redis: u16,
    pub pulsar: u16,
    pub api: u16,
    pub alianzas: u16,
    pub integraciones: u16,
}

/// The local stack of [`dir`].
pub struct Local {
    pub ports: Ports,
    pub timeout: u64,
}

impl Local {
    pub fn from_env() -> Result<Self> {
        let ports = Ports {
            postgres: paths::env_port("POSTGRES_HOST_PORT", 5432)?,
            redis: paths::env_port("REDIS_HOST_PORT", 6379)?,
            pulsar: paths::env_port("PULSAR_HOST_PORT", 6650)?,
            api: paths::env_port("ORCHESTRATOR_HOST_PORT", 8000)?,
            alianzas: paths::env_port("ALIANZAS_HOST_PORT", 8002)?,
            integraciones: paths::env_port("INTEGRACIONES_HOST_PORT", 8001)?,
        };
        Ok(Self {
            ports,
            timeout: paths::env_number("DEV_STACK_TIMEOUT", 60)?,
        })
    }

    pub fn postgres(&self) -> Postgres {
        Postgres::new(&dir())
    }

    pub fn redis(&self) -> Redis {
        Redis::new(&dir())
    }

    pub fn pulsar(&self) -> Pulsar {
        Pulsar::new(&dir().join("pulsar"))
    }

    pub fn simulator(&self) -> App {
        App::new(&dir(), "simulator", "simulate")
    }

    pub fn orchestrator(&self) -> App {
        App::new(&dir(), "orchestrator", "serve")
    }

    pub fn any_running(&self) -> bool {
        dir().is_dir()
            && (self.postgres().running() || self.redis().running() || self.pulsar().running())
    }

    pub fn dev_running(&self) -> bool {
        self.postgres().running() && self.redis().running() && self.pulsar().running()
    }

    /// `postgresql://postgres:postgres@127.0.0.1:<port>/<db>`.
    pub fn database_url(&self, db: &str) -> String {
        let port = self.postgres().port().unwrap_or(self.ports.postgres);
        format!("postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{db}")
    }

    /// Every standard port first, so a conflict stops us before anything starts.
    fn check_ports(&self, want_pulsar: bool) -> Result<()> {
        let p = &self.ports;
        if !self.postgres().running() {
            let hint =
                "move ours with POSTGRES_HOST_PORT=5433 and point DATABASE_URL in .env at it";
            ports::require_free(p.postgres, "PostgreSQL", hint)?;
        }
        if !self.redis().running() {
            let hint = "move ours with REDIS_HOST_PORT=6380 and point BROKER_URL in .env at it";
            ports::require_free(p.redis, "Redis", hint)?;
        }
        if want_pulsar && !self.pulsar().running() {
            let hint = "move ours with PULSAR_HOST_PORT=6651 and point BROKER_URL in .env at it";
            ports::require_free(p.pulsar, "Pulsar", hint)?;
        }
        Ok(())
    }

    /// Starts `stack`; whatever fails half-way, what this call started is
    /// stopped again.
    pub fn up(&self, stack: Stack) -> Result<()> {
        if stack == Stack::Shared {
            bail!("shared-up joins a Pulsar on a shared Docker network and needs a Docker engine (none answers here). Without Docker: make dev-up, then BROKER_URL=pulsar://<shared host>:6650 make run");
        }
        let want_pulsar = stack != Stack::Simple;
        std::fs::create_dir_all(dir())?;
        let _lock = process::Lock::take(&dir().join(".lock"), self.timeout)?;
        self.check_ports(want_pulsar)?;
        let mut deps = vec![Dep::Postgres, Dep::Redis];
        if want_pulsar {
            deps.push(Dep::PulsarLite);
        }
        install::ensure(&deps)?;
        // The proxy comes from the service's release build (see release.rs).
        let why = match stack {
            Stack::Dev => "for the dev stack's Pulsar (pulsar-lite needs pulsar-lite-proxy in front, see docs/troubleshooting.md)",
            _ => "for the stack's orchestrator and simulators",
        };
        release::build(why, false)?;
        let mut started = Vec::new();
        let result = self.start_services(stack, want_pulsar, &mut started);
        if let Err(e) = result {
            if !started.is_empty() {
                eprintln!(
                    "stack: start failed; stopping what it started: {}",
                    started.join(", ")
                );
                self.stop_named(&started);
            }
            return Err(e);
        }
        Ok(())
    }

    fn start_services(
        &self,
        stack: Stack,
        want_pulsar: bool,
        started: &mut Vec<&'static str>,
    ) -> Result<()> {
        if self.postgres().running() {
            eprintln!(
                "stack: PostgreSQL already running (pid {})",
                self.postgres().pid().unwrap_or(0)
            );
        } else {
            self.postgres().start(&self.pg_spec())?;
            started.push("postgres");
            self.ensure_db(PG_DB)?;
        }
        if self.redis().running() {
            eprintln!(
                "stack: Redis already running (pid {})",
                self.redis().pid().unwrap_or(0)
            );
        } else {
            self.redis()
                .start(self.ports.redis, Persistence::AppendOnly, self.timeout)?;
            started.push("redis");
        }
        if want_pulsar && !self.pulsar().running() {
            self.pulsar().start(&self.pulsar_settings())?;
            started.push("pulsar");
        }
        self.write_env_file()?;
        if matches!(stack, Stack::Simple | Stack::Full) {
            started.push("apps");
            self.start_apps(stack)?;
            if stack == Stack::Full {
                eprintln!("stack: Prometheus and Grafana need Docker and are not started; metrics: http://127.0.0.1:{}/metrics", self.ports.api);
            }
        }
        Ok(())
    }

    fn pg_spec(&self) -> postgres::Spec<'static> {
        postgres::Spec {
            port: self.ports.postgres,
            user: PG_USER,
            password: Some(PG_PASSWORD),
            max_connections: 200,
            shared_buffers: None,
            durable: true,
            stat_statements: true,
            tmp_prefix: "saga-dev-pg",
            timeout: self.timeout,
        }
    }

    /// The proxy on Pulsar's standard port; the broker and its metrics on free ones.
    fn pulsar_settings(&self) -> pulsar::Settings {
        pulsar::Settings {
            broker_port: None,
            proxy_port: Some(self.ports.pulsar),
            metrics_port: None,
            proxy_bin: release::proxy(),
            timeout: self.timeout,
            log_level: "info".into(),
            max_message_size: None,
        }
    }

    /// Creates database `db` unless it exists.
    pub fn ensure_db(&self, db: &str) -> Result<()> {
        let query = format!("SELECT 1 FROM pg_database WHERE datname = '{db}'");
        let mut psql = self.postgres().psql(PG_USER, PG_PASSWORD)?;
        let found = process::run_quiet(psql.args(["-tAc", &query]), "psql")?;
        if found.trim().is_empty() {
            let mut psql = self.postgres().psql(PG_USER, PG_PASSWORD)?;
            process::run_quiet(
                psql.args(["-c", &format!("CREATE DATABASE \"{db}\"")]),
                "CREATE DATABASE",
            )?;
            eprintln!("stack: created database {db}");
        }
        Ok(())
    }

    fn write_env_file(&self) -> Result<()> {
        let mut env = vec![
            ("DEV_DATABASE_URL".to_string(), self.database_url(PG_DB)),
            (
                "DEV_REDIS_URL".to_string(),
                format!("redis://127.0.0.1:{}", self.ports.redis),
            ),
        ];
        if self.pulsar().running() {
            env.push((
                "DEV_PULSAR_URL".to_string(),
                format!("pulsar://127.0.0.1:{}", self.ports.pulsar),
            ));
        }
        write_env_file(&dir().join("env"), &env)
    }

    fn stop_named(&self, names: &[&str]) {
        for name in names.iter().rev() {
            let _ = match *name {
                "apps" => self.stop_apps(),
                "pulsar" => self.pulsar().stop(false, self.timeout),
                "redis" => self.redis().stop(),
                _ => self.postgres().stop(),
            };
        }
    }

    /// Stops all of it, each process by its PID after checking its name.
    pub fn down(&self, purging: bool) -> Result<()> {
        if !dir().is_dir() {
            eprintln!(
                "stack: no local stack to stop ({} does not exist)",
                dir().display()
            );
            return Ok(());
        }
        let _lock = process::Lock::take(&dir().join(".lock"), self.timeout)?;
        self.stop_named(&["postgres", "redis", "pulsar", "apps"]);
        let _ = std::fs::remove_file(dir().join("env"));
        if !purging {
            eprintln!(
                "stack: local stack stopped; data kept in {} (make clean deletes it)",
                dir().display()
            );
        }
        Ok(())
    }
}

/// Deletes the local stack's state, data included (also a /tmp data dir).
pub fn purge() -> Result<()> {
    Postgres::new(&dir()).remove_outside_data();
    std::fs::remove_dir_all(dir())?;
    eprintln!("stack: removed {}", dir().display());
    Ok(())
}
