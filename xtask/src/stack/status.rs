//! `make status` and `make logs` for the local stack.

use super::{apps::APP_COMM, dir, Local};
use crate::{paths, ports, process, signals};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn row(name: &str, state: &str, pid: Option<i32>, address: &str) {
    let pid = pid.map(|p| p.to_string()).unwrap_or_default();
    print_row(name, state, &pid, address);
}

fn print_row(name: &str, state: &str, pid: &str, address: &str) {
    println!("  {name:<13} {state:<12} {pid:<10} {address}");
}

/// "not running", and who holds the port instead if someone does.
fn down_row(name: &str, port: u16) {
    let address = match ports::accepts(port) {
        true => format!("port {port} held by {}", ports::describe_holder(port)),
        false => String::new(),
    };
    row(name, "not running", None, &address);
}

fn short(path: &Path) -> String {
    let root = paths::root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The table: one line per service.
pub fn print(local: &Local) -> Result<()> {
    let p = &local.ports;
    println!("local stack (state in {}):", short(&dir()));
    print_row("SERVICE", "STATE", "PID", "ADDRESS");
    let pg = local.postgres();
    match pg.pid().filter(|_| pg.running()) {
        Some(pid) => {
            let data = pg
                .home()
                .map(|h| short(&h.join("data")))
                .unwrap_or_default();
            let port = pg.port().unwrap_or(0);
            row(
                "postgres",
                "running",
                Some(pid),
                &format!("127.0.0.1:{port}  database saga_db, data {data}"),
            );
        }
        None => down_row("postgres", p.postgres),
    }
    let redis = local.redis();
    match redis.pid().filter(|_| redis.running()) {
        Some(pid) => row(
            "redis",
            "running",
            Some(pid),
            &format!("127.0.0.1:{}", redis.port().unwrap_or(0)),
        ),
        None => down_row("redis", p.redis),
    }
    print_pulsar(local);
    let sim = local.simulator();
    match sim.pid().filter(|_| sim.running()) {
        Some(pid) => {
            let address = format!(
                "127.0.0.1:{} (alliances), 127.0.0.1:{} (integrations)",
                p.alianzas, p.integraciones
            );
            row("simulator", "running", Some(pid), &address);
        }
        None => row("simulator", "not running", None, ""),
    }
    print_orchestrator(local);
    if dir().join("env").is_file() {
        println!(
            "env: {} (DEV_DATABASE_URL, DEV_REDIS_URL, DEV_PULSAR_URL)",
            short(&dir().join("env"))
        );
    }
    Ok(())
}

/// The broker and the proxy in front of it.
fn print_pulsar(local: &Local) {
    let pulsar = local.pulsar();
    let port = |w| pulsar.port(w).unwrap_or(0);
    match pulsar.broker_pid().filter(|_| pulsar.broker_running()) {
        Some(pid) => {
            let address = format!(
                "127.0.0.1:{} (metrics :{}), clients use the proxy",
                port("broker"),
                port("metrics")
            );
            row("pulsar-lite", "running", Some(pid), &address);
        }
        None => row("pulsar-lite", "not running", None, ""),
    }
    match pulsar.proxy_pid().filter(|_| pulsar.proxy_running()) {
        Some(pid) => {
            let address = format!("127.0.0.1:{}  (Pulsar for clients)", port("proxy"));
            row("pulsar-proxy", "running", Some(pid), &address);
        }
        None => down_row("pulsar-proxy", local.ports.pulsar),
    }
}

/// Started by the stack, by `make run`, or some other way: a
/// saga-orchestrator holding the API port runs, however it was started.
fn print_orchestrator(local: &Local) {
    let port = local.ports.api;
    let app = local.orchestrator();
    if let Some(pid) = app.pid().filter(|_| app.running()) {
        let stack = process::read_first_line(&dir().join("apps.stack")).unwrap_or_default();
        row(
            "orchestrator",
            "running",
            Some(pid),
            &format!("http://127.0.0.1:{port}  ({stack} stack)"),
        );
        return;
    }
    match ports::holder(port) {
        Some((pid, name)) if name == APP_COMM => {
            let how = if process::read_pid(&dir().join("run.pid")) == Some(pid) {
                format!("make run, log {}", short(&dir().join("orchestrator.log")))
            } else {
                "started outside the stack".to_string()
            };
            row(
                "orchestrator",
                "running",
                Some(pid),
                &format!("http://127.0.0.1:{port}  ({how})"),
            );
        }
        _ => down_row("orchestrator", port),
    }
}

/// The log file of each service named (all by default).
fn log_files(local: &Local, names: &[String]) -> Result<Vec<PathBuf>> {
    let all = [
        "postgres",
        "redis",
        "pulsar-lite",
        "pulsar-proxy",
        "simulator",
        "orchestrator",
    ];
    let names: Vec<&str> = if names.is_empty() {
        all.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    let (broker_log, proxy_log) = local.pulsar().logs();
    let mut files = Vec::new();
    for name in names {
        match name {
            "postgres" => files.extend(local.postgres().home().map(|h| h.join("postgres.log"))),
            "redis" => files.push(local.redis().log()),
            "pulsar-lite" | "pulsar" => files.push(broker_log.clone()),
            "pulsar-proxy" | "proxy" => files.push(proxy_log.clone()),
            "simulator" => files.push(local.simulator().log()),
            "orchestrator" => files.push(local.orchestrator().log()),
            other => bail!("unknown service '{other}' ({})", all.join(", ")),
        }
    }
    Ok(files)
}

/// `tail` of the log files: followed (-F) or their last lines once.
pub fn logs(local: &Local, follow: bool, names: &[String]) -> Result<()> {
    let files: Vec<PathBuf> = log_files(local, names)?
        .into_iter()
        .filter(|f| f.is_file())
        .collect();
    if files.is_empty() {
        bail!(
            "no log files yet under {} (make dev-up starts the stack; make run writes orchestrator.log there)",
            dir().display()
        );
    }
    let mut tail = Command::new("tail");
    tail.args(["-n", "20"]);
    if follow {
        tail.arg("-F");
    }
    signals::status(tail.args(&files))?;
    Ok(())
}
