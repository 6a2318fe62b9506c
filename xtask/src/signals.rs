//! SIGINT and SIGTERM, noted rather than obeyed at once, so that whoever
//! started servers stops them before exiting.
//!
//! A Ctrl-C reaches every process of the terminal's foreground group, our
//! children (cargo, nextest, the orchestrator of `make run`) included: we
//! let them finish, then clean up. A SIGTERM is for us alone, so the child
//! we wait for gets it passed on.

use anyhow::{bail, Context, Result};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    CAUGHT.store(signal, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM only set a flag (see [`caught`]).
pub fn install() {
    let handler = note as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// The signal received, if any.
pub fn caught() -> Option<i32> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Fails if a signal came: the caller's cleanup (a guard's drop) runs next.
pub fn check() -> Result<()> {
    match caught() {
        Some(s) => bail!("interrupted (signal {s})"),
        None => Ok(()),
    }
}

/// The exit code a signal-ended run should give (130 for SIGINT, 143 for SIGTERM).
pub fn exit_code() -> Option<u8> {
    caught().map(|s| 128u8.saturating_add(s as u8))
}

/// Waits for `child`, passing a SIGTERM we get on to it.
pub fn wait(child: &mut Child) -> Result<ExitStatus> {
    let mut passed_on = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if caught() == Some(libc::SIGTERM) && !passed_on {
            crate::process::signal(child.id() as i32, libc::SIGTERM);
            passed_on = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` with our stdio; its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    wait(&mut child)
}

/// Runs `cmd` with our stdio; fails naming `what` unless it succeeds.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = status(cmd)?;
    check()?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
