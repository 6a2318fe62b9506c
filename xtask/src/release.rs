//! The release binary: built once, the same way for every target that runs
//! it (`make run`, `demo`, `monitor`, `migrate`, `build`, the stacks, bench).
//!
//! The build always takes the service and the pulsar-lite proxy together:
//! with both in one build cargo resolves the same features as for the
//! service alone, so the dev stack's proxy costs nothing once the service
//! is built, and `make run` after `make dev-up` rebuilds nothing.

use crate::install::{self, Dep};
use crate::{paths, signals, stack};
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// Builds the release binaries (protoc first); `why` says what for, so
/// a first build of several minutes is never silent. Cargo's own output
/// is kept (`quiet` leaves only errors: demo's output stays short).
pub fn build(why: &str, quiet: bool) -> Result<PathBuf> {
    install::ensure(&[Dep::Protoc])?;
    eprintln!(
        "xtask: building the release binaries, {why}: cargo build --release -p saga-orchestrator \
         -p pulsar-lite-proxy (the service and the dev stack's Pulsar proxy, in one build that \
         every release target shares; the first one takes several minutes)"
    );
    let mut cargo = paths::cargo();
    cargo.args([
        "build",
        "--release",
        "-p",
        "saga-orchestrator",
        "-p",
        "pulsar-lite-proxy",
    ]);
    if quiet {
        cargo.arg("--quiet");
    }
    signals::run(&mut cargo, "cargo build --release")?;
    Ok(paths::binary("release", "saga-orchestrator"))
}

/// The release proxy, from that same build.
pub fn proxy() -> PathBuf {
    paths::binary("release", "pulsar-lite-proxy")
}

/// Runs `saga-orchestrator SUB ARGS` from the repository root (it reads
/// ./.env there); its exit code.
pub fn exec(sub: &str, args: &[String]) -> Result<u8> {
    let bin = build(&format!("for saga-orchestrator {sub}"), true)?;
    let status = signals::status(
        Command::new(bin)
            .current_dir(paths::root())
            .arg(sub)
            .args(args),
    )?;
    Ok(exit_code(status))
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => 128u8.saturating_add(s as u8),
        _ => 1,
    }
}

/// `make run`: `serve` with ./.env, its output on the terminal and in the
/// dev stack's orchestrator.log, where `make logs` looks; its PID in
/// run.pid, so `make status` can say how it was started.
pub fn run(args: &[String]) -> Result<u8> {
    stack::ensure_env()?;
    let bin = build("for make run", false)?;
    let dir = stack::dir();
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join("orchestrator.log");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    writeln!(log, "--- make run, {} ---", paths::utc_iso())?;
    let mut child = Command::new(bin)
        .current_dir(paths::root())
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting saga-orchestrator serve")?;
    let pid_file = dir.join("run.pid");
    crate::process::write_line(&pid_file, child.id())?;
    eprintln!(
        "xtask: saga-orchestrator serve (pid {}), output also in {}",
        child.id(),
        log_path.display()
    );
    let log = Arc::new(Mutex::new(log));
    let copiers = [
        child
            .stdout
            .take()
            .map(|out| tee(out, Box::new(std::io::stdout()), log.clone())),
        child
            .stderr
            .take()
            .map(|err| tee(err, Box::new(std::io::stderr()), log.clone())),
    ];
    let status = signals::wait(&mut child)?;
    for copier in copiers.into_iter().flatten() {
        let _ = copier.join();
    }
    let _ = std::fs::remove_file(pid_file);
    Ok(exit_code(status))
}

/// Copies `from` to `to` as it comes, and to `log` without colour codes.
fn tee(
    mut from: impl Read + Send + 'static,
    mut to: Box<dyn Write + Send>,
    log: Arc<Mutex<File>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = to.write_all(&buf[..n]);
            let _ = to.flush();
            if let Ok(mut file) = log.lock() {
                let _ = file.write_all(&strip_ansi(&buf[..n]));
            }
        }
    })
}

/// `bytes` without ANSI CSI sequences (ESC [ … final byte).
fn strip_ansi(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0x1b && bytes.get(i + 1) == Some(&b'[') {
            i += 2;
            while i < bytes.len() && !(0x40..=0x7e).contains(&bytes[i]) {
                i += 1;
            }
            i += 1;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_codes_do_not_reach_the_log() {
        let coloured = b"\x1b[2m2024\x1b[0m \x1b[32m INFO\x1b[0m ready";
        assert_eq!(super::strip_ansi(coloured), b"2024  INFO ready");
    }
}
