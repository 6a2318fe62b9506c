//! Processes by PID: PID files, liveness checked against the process name,
//! detached starts, stopping with SIGTERM then SIGKILL, and locks.
//!
//! Every server is found again through its PID file, never by name alone,
//! and a PID is only signalled after `/proc/PID/comm` shows the expected
//! name: a PID file left by a SIGKILLed run may name a recycled PID.

use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The first line of `path`, trimmed; `None` when missing or empty.
pub fn read_first_line(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim().to_string();
    (!line.is_empty()).then_some(line)
}

/// The PID recorded in `path`, if it holds one.
pub fn read_pid(path: &Path) -> Option<i32> {
    read_first_line(path)?.parse().ok().filter(|pid| *pid > 0)
}

/// The port recorded in `path`, if it holds one.
pub fn read_port(path: &Path) -> Option<u16> {
    read_first_line(path)?.parse().ok()
}

/// Writes `value` and a newline to `path`.
pub fn write_line(path: &Path, value: impl std::fmt::Display) -> Result<()> {
    fs::write(path, format!("{value}\n")).with_context(|| format!("writing {}", path.display()))
}

/// True once `pid` has exited. A zombie counts: its parent (PID 1 in a
/// container, or a long-lived xtask) may reap it late.
pub fn gone(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the PID exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return true;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "PID (comm) STATE …": the comm may hold spaces and parentheses.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'))
}

/// The process's name as the kernel keeps it (at most 15 characters).
pub fn comm(pid: i32) -> Option<String> {
    let name = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim_end().to_string())
}

/// The process's command line, one argument a string.
pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// True if `pid` runs (not a zombie) under the name `name`.
pub fn alive(pid: i32, name: &str) -> bool {
    !gone(pid) && comm(pid).as_deref() == Some(name)
}

/// The PIDs whose parent is `pid`, from /proc.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // "PID (comm) STATE PPID …": the comm may hold spaces.
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(pid)
        })
        .collect()
}

/// Sends `signal` to `pid`; a PID already gone is no error.
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: a plain kill(2); the callers checked the PID's name first.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits up to `secs` for `pid` to exit.
pub fn wait_gone(pid: i32, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        sleep(Duration::from_millis(50));
    }
    gone(pid)
}

/// Stops `pid` (checked to be named `name`) with `first` (SIGTERM, or
/// SIGKILL to simulate a crash), then SIGKILL after `grace` seconds.
/// Returns whether it was running.
pub fn stop(pid: i32, name: &str, first: i32, grace: u64) -> Result<bool> {
    if !alive(pid, name) {
        return Ok(false);
    }
    signal(pid, first);
    if !wait_gone(pid, grace) {
        eprintln!("xtask: {name} (pid {pid}) still running after {grace}s, killing");
        signal(pid, libc::SIGKILL);
        if !wait_gone(pid, 5) {
            bail!("{name} (pid {pid}) does not die even with SIGKILL");
        }
    }
    Ok(true)
}

/// Starts `cmd` detached from us: its own session (a Ctrl-C in our
/// terminal does not reach it), stdin from /dev/null, stdout and stderr
/// appended to `log`. Returns its PID; it is not waited for.
pub fn spawn_detached(cmd: &mut Command, log: &Path) -> Result<i32> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    // SAFETY: setsid is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    i32::try_from(child.id()).context("PID out of range")
}

/// Runs `cmd` to completion, failing with `what` and its output if it fails.
pub fn run_quiet(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{what} ({})\n{}", out.status, text.trim_end());
    }
    Ok(text)
}

/// The last lines of each non-empty file, to follow an error message.
pub fn log_tails(files: &[&Path]) -> String {
    let mut text = String::new();
    for file in files {
        let Ok(content) = fs::read_to_string(file) else {
            continue;
        };
        if content.trim().is_empty() {
            continue;
        }
        let lines: Vec<&str> = content.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        text += &format!("\n--- last lines of {} ---\n", file.display());
        text += &tail.join("\n");
        text += "\n---";
    }
    text
}

/// An exclusive lock on a file, held until dropped: serialises commands on
/// one state directory (two tests restarting the same broker, say).
pub struct Lock(#[allow(dead_code)] File);

impl Lock {
    /// Takes the lock on `path`, waiting up to `secs`.
    pub fn take(path: &Path, secs: u64) -> Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self(file)),
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    sleep(Duration::from_millis(100));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    bail!("another command holds {} (waited {secs}s)", path.display())
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
        }
    }
}

/// True when we run as root (initdb refuses to).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The first `name` found on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// True for a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_under_its_name() {
        let pid = std::process::id() as i32;
        let name = comm(pid).expect("our comm");
        assert!(alive(pid, &name));
        assert!(!alive(pid, "surely-not-this"));
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id() as i32;
        child.wait().expect("wait");
        assert!(gone(pid));
    }
}
