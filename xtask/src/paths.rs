//! Where things are: the repository, cargo's target directory, `.dev`.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The repository root (xtask/ is one level below it).
pub fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `path` made absolute against the current directory: state paths end up
/// in server configs and env files.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// `.dev` under the repository: every local state directory lives there.
pub fn dev() -> PathBuf {
    root().join(".dev")
}

/// Cargo's target directory (CARGO_TARGET_DIR, relative to the root, or target/).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// A binary of the workspace in `profile` (debug or release).
pub fn binary(profile: &str, name: &str) -> PathBuf {
    target_dir().join(profile).join(name)
}

/// `cargo` (or $CARGO), run from the repository root, without the
/// variables `cargo run` set for xtask itself: build scripts that track
/// them (ring's tracks CARGO_MANIFEST_DIR) would otherwise see a change and
/// rebuild everything above them, once through xtask and again by hand.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let ours = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&key.as_ref());
        if ours {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// Polls `ready` every `every` until it gives `Some`, for up to `secs`;
/// `ready` may fail to stop early (the server died). A signal stops it too.
pub fn wait_for<T>(
    secs: u64,
    every: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        crate::signals::check()?;
        if let Some(value) = ready()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("{what} after {secs}s");
        }
        std::thread::sleep(every);
    }
}

/// A whole number from the environment, or `default`; a bad value is an error.
pub fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} must be a whole number, not '{v}'")),
        _ => Ok(default),
    }
}

/// A port from the environment, or `default`.
pub fn env_port(name: &str, default: u16) -> Result<u16> {
    let port = env_number(name, u64::from(default))?;
    u16::try_from(port).map_err(|_| anyhow::anyhow!("{name}={port} is not a port"))
}

/// Now in UTC as (year, month, day, hour, minute, second).
pub fn utc_now() -> (i64, u32, u32, u32, u32, u32) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    let (y, m, d) = civil_from_days(days);
    (y, m, d, rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Howard Hinnant's days-to-civil: the proleptic Gregorian date of a day
/// count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// "2024-05-01T12:00:00Z".
pub fn utc_iso() -> String {
    let (y, mo, d, h, mi, s) = utc_now();
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// This tool's binary for the tests to run: target/debug/xtask as the
/// workspace build links it. Not our own path: that build links it anew
/// (the workspace's dependency features are unified), which deletes the
/// file we were started from.
pub fn xtask_bin() -> Option<PathBuf> {
    let built = binary("debug", "xtask");
    if built.is_file() {
        return Some(built);
    }
    std::env::current_exe().ok().filter(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_become_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(19_783), (2024, 3, 1));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
