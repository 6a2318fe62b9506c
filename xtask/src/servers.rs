//! `cargo xtask postgres …` and `cargo xtask redis …`: one server of a
//! test's own, in a state directory of its own, that the test can break and
//! mend — what the fault scenarios (tests/it/faults/) run to stop, crash,
//! pause and restart the store and the broker under a running service. The
//! suite's shared servers (`test-services`) must never be broken that way.
//!
//! ```text
//! postgres --dir D start [--timeout S]     durable (fsync on), a free port;
//!                                          again: the same data and port
//! postgres --dir D stop [--mode fast|immediate] [--purge]
//! postgres --dir D pause | resume          SIGSTOP / SIGCONT to every process
//! redis --dir D start [--timeout S]        append-only file synced on every
//!                                          write; again: the same data and port
//! redis --dir D kill                       SIGKILL
//! redis --dir D stop [--purge]
//! ```
//!
//! `start` prints `export DATABASE_URL=…` or `export REDIS_URL=…`.

use crate::args::Args;
use crate::postgres::{self, Postgres, ShutdownMode};
use crate::redis::{Persistence, Redis};
use crate::{paths, ports};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::PathBuf;

/// The state directory and start-up timeout every action takes.
fn dir_and_timeout(args: &mut Args) -> Result<(PathBuf, u64)> {
    let dir = args
        .path("--dir", None)?
        .context("--dir DIR is required: the server's own state directory")?;
    let timeout = args.parsed("--timeout", None)?.unwrap_or(60);
    Ok((paths::absolute(&dir), timeout))
}

/// A port recorded by an earlier start, or a free one.
fn port_for(recorded: Option<u16>) -> Result<u16> {
    match recorded {
        Some(port) => Ok(port),
        None => Ok(ports::free_ports(1)?[0]),
    }
}

/// Runs one `postgres` action.
pub fn postgres(args: &mut Args) -> Result<()> {
    let (dir, timeout) = dir_and_timeout(args)?;
    let server = Postgres::new(&dir);
    let action = args.word().unwrap_or_default();
    match action.as_str() {
        "start" => {
            args.done()?;
            if server.running() {
                bail!("PostgreSQL already runs in {}", dir.display());
            }
            let port = port_for(server.port())?;
            server.start(&postgres::Spec {
                port,
                user: "postgres",
                password: None,
                max_connections: 200,
                shared_buffers: Some("128MB"),
                durable: true,
                stat_statements: false,
                tmp_prefix: "saga-fault-pg",
                timeout,
            })?;
            println!("export DATABASE_URL=postgres://postgres@127.0.0.1:{port}/postgres");
        }
        "stop" => {
            let mode = args.value("--mode", None)?.unwrap_or_else(|| "fast".into());
            let purge = args.flag("--purge");
            args.done()?;
            server.stop_with(ShutdownMode::from_name(&mode)?)?;
            if purge {
                server.remove_outside_data();
                let _ = fs::remove_dir_all(&dir);
            }
        }
        "pause" | "resume" => {
            args.done()?;
            if !server.running() {
                bail!("no PostgreSQL runs in {}", dir.display());
            }
            let signal = if action == "pause" { libc::SIGSTOP } else { libc::SIGCONT };
            server.signal_all(signal);
        }
        other => bail!("unknown postgres action '{other}' (start, stop [--mode fast|immediate] [--purge], pause, resume)"),
    }
    Ok(())
}

/// Runs one `redis` action.
pub fn redis(args: &mut Args) -> Result<()> {
    let (dir, timeout) = dir_and_timeout(args)?;
    let server = Redis::new(&dir);
    let action = args.word().unwrap_or_default();
    match action.as_str() {
        "start" => {
            args.done()?;
            if server.running() {
                bail!("Redis already runs in {}", dir.display());
            }
            fs::create_dir_all(&dir)?;
            let port = port_for(server.port())?;
            server.start(port, Persistence::AppendOnlyAlways, timeout)?;
            println!("export REDIS_URL=redis://127.0.0.1:{port}");
        }
        "kill" => {
            args.done()?;
            server.kill()?;
        }
        "stop" => {
            let purge = args.flag("--purge");
            args.done()?;
            server.stop()?;
            if purge {
                let _ = fs::remove_dir_all(&dir);
            }
        }
        other => bail!("unknown redis action '{other}' (start, kill, stop [--purge])"),
    }
    Ok(())
}
