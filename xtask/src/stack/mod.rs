//! The development stacks (`make dev-up`, `simple-up`, `full-up`,
//! `shared-up`, their `-down`s, `status`, `logs`, `clean`).
//!
//! Where a Docker engine answers (`docker info` within 5 s) the stacks are
//! the compose files; where none does, the same services run as local
//! processes on the same loopback ports, state under
//! ${DEV_STACK_DIR:-.dev/dev-stack}. There is one local stack: any `down`
//! stops all of it; the data stays until `clean`.

mod apps;
mod docker;
mod local;
mod status;

pub use apps::App;
pub use local::Local;

use crate::paths;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// Which stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// PostgreSQL, Redis, Pulsar for `make run`.
    Dev,
    /// PostgreSQL, Redis, the simulators and the orchestrator on Redis Streams.
    Simple,
    /// The dev services, the simulators and the orchestrator on Pulsar.
    Full,
    /// The orchestrator joining a shared Pulsar's Docker network.
    Shared,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::Dev => "dev",
            Stack::Simple => "simple",
            Stack::Full => "full",
            Stack::Shared => "shared",
        }
    }

    /// The stack called `name`, if one is.
    pub fn parse(name: &str) -> Option<Self> {
        [Stack::Dev, Stack::Simple, Stack::Full, Stack::Shared]
            .into_iter()
            .find(|s| s.name() == name.trim())
    }

    /// As [`Stack::parse`], an error naming the choices otherwise.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::parse(name).ok_or_else(|| {
            anyhow::anyhow!("unknown stack '{name}' (expected dev, simple, full or shared)")
        })
    }
}

/// The local stack's state directory.
pub fn dir() -> PathBuf {
    match std::env::var_os("DEV_STACK_DIR") {
        Some(d) => paths::absolute(d.as_ref()),
        None => paths::dev().join("dev-stack"),
    }
}

/// True when the stacks are Docker Compose projects (DEV_STACK_ENGINE=auto|docker|local).
pub fn docker() -> Result<bool> {
    match std::env::var("DEV_STACK_ENGINE").as_deref() {
        Ok("docker") => Ok(true),
        Ok("local") => Ok(false),
        Ok("auto") | Ok("") | Err(_) => Ok(docker::engine_answers()),
        Ok(other) => bail!("DEV_STACK_ENGINE must be auto, docker or local, not '{other}'"),
    }
}

pub fn up(stack: Stack) -> Result<()> {
    if docker()? {
        return docker::up(stack);
    }
    let local = Local::from_env()?;
    local.up(stack)?;
    status::print(&local)
}

/// Stops `stack`; `purge` also deletes the local stack's state and data.
pub fn down(stack: Stack, purge: bool) -> Result<()> {
    let docker = docker()?;
    if docker {
        docker::down(stack)?;
    }
    // Local processes are stopped whatever the engine: they may predate it.
    if dir().is_dir() || !docker {
        Local::from_env()?.down(purge)?;
    }
    if purge && dir().is_dir() {
        local::purge()?;
    }
    Ok(())
}

pub fn status() -> Result<()> {
    let local = Local::from_env()?;
    if docker()? {
        docker::status()?;
        if local.any_running() {
            status::print(&local)?;
        }
        return Ok(());
    }
    println!("engine: local processes (no Docker engine answers)");
    status::print(&local)
}

pub fn logs(follow: bool, services: &[String]) -> Result<()> {
    let local = Local::from_env()?;
    if docker()? && !local.any_running() {
        return docker::logs(follow, services);
    }
    status::logs(&local, follow, services)
}

/// True when the dev stack's PostgreSQL, Redis and Pulsar all run.
pub fn dev_is_up() -> Result<bool> {
    let local = Local::from_env()?;
    if docker()? && !dir().is_dir() {
        return Ok(docker::dev_is_up());
    }
    Ok(local.dev_running())
}

/// `make clean`: every stack down, local data deleted, test services
/// stopped, `cargo clean`, `.dev` removed.
pub fn clean() -> Result<()> {
    if docker()? {
        docker::down_all();
    }
    if dir().is_dir() {
        Local::from_env()?.down(true)?;
        local::purge()?;
    }
    crate::test::services_down(&paths::dev().join("test-services"))?;
    crate::signals::run(paths::cargo().arg("clean"), "cargo clean")?;
    if paths::dev().exists() {
        std::fs::remove_dir_all(paths::dev())?;
    }
    Ok(())
}

/// Creates ./.env from .env.example when missing.
pub fn ensure_env() -> Result<()> {
    let env = paths::root().join(".env");
    if !env.exists() {
        std::fs::copy(paths::root().join(".env.example"), &env)?;
        eprintln!(
            "stack: created .env from .env.example (edit it for your setup; it is gitignored)"
        );
    }
    Ok(())
}

/// redis-cli on the dev stack's Redis, whichever engine runs it.
pub fn redis_cli(args: &[&str]) -> Result<std::process::Command> {
    let local = Local::from_env()?;
    if docker()? && !local.redis().running() {
        let mut all = vec!["exec", "-T", "redis", "redis-cli"];
        all.extend(args);
        return docker::compose(Stack::Dev, &all);
    }
    let port = local.redis().port().unwrap_or(local.ports.redis);
    let mut cmd = std::process::Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    Ok(cmd)
}

/// psql on the dev stack's PostgreSQL, whichever engine runs it.
pub fn psql() -> Result<std::process::Command> {
    let local = Local::from_env()?;
    if local.postgres().running() {
        return local.postgres().psql(local::PG_USER, local::PG_PASSWORD);
    }
    docker::compose(
        Stack::Dev,
        &[
            "exec",
            "-T",
            "postgres",
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ],
    )
}
