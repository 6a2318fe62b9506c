//! Finding or installing pulsar-lite's binary (the PyPI wheel ships it).

use super::VERSION;
use crate::paths;
use crate::process::{is_executable, run_quiet};
use anyhow::{bail, Result};
use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// Where `install_broker` puts the wheel: outside any state directory, so
/// purging one never means downloading it again.
fn tools_dir() -> PathBuf {
    std::env::var_os("PULSAR_LITE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::dev().join("tools"))
}

fn ours() -> PathBuf {
    tools_dir().join(format!("pulsar-lite-{VERSION}"))
}

/// The binary: $PULSAR_LITE_BIN, the pinned version if python3 imports it,
/// or the one we installed before.
pub fn find_broker_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("PULSAR_LITE_BIN") {
        return Some(PathBuf::from(bin));
    }
    let script = "import os, sys, pulsar_lite\n\
                  if pulsar_lite.__version__ == sys.argv[1]: print(os.path.dirname(pulsar_lite.__file__))";
    let imported = Command::new("python3")
        .args(["-c", script, VERSION])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|dir| !dir.is_empty())
        .map(|dir| PathBuf::from(dir).join("bin/pulsar-lite"));
    let installed = ours().join("pulsar_lite/bin/pulsar-lite");
    imported
        .into_iter()
        .chain([installed])
        .find(|p| is_executable(p))
}

/// The binary, installed first if missing: `pip install --no-deps --target`
/// into a directory of ours (only the binary is used, not the Python
/// client), which works without root, outside a virtualenv and on
/// "externally managed" system Pythons alike.
pub fn install_broker() -> Result<PathBuf> {
    if let Some(bin) = find_broker_bin() {
        if !is_executable(&bin) {
            bail!("PULSAR_LITE_BIN={} is not executable", bin.display());
        }
        return Ok(bin);
    }
    let target = ours();
    let tmp = target.with_extension("tmp");
    eprintln!(
        "pulsar-lite: installing pulsar-lite {VERSION} into {}",
        target.display()
    );
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(tools_dir())?;
    let spec = format!("pulsar-lite=={VERSION}");
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet", "--no-input"])
        .args(["--disable-pip-version-check", "--no-deps", "--target"])
        .arg(&tmp)
        .arg(&spec)
        .env("PIP_ROOT_USER_ACTION", "ignore");
    run_quiet(
        &mut pip,
        &format!("pip install {spec} failed (is pip installed? cargo xtask install pulsar-lite)"),
    )?;
    let _ = fs::remove_dir_all(&target);
    fs::rename(&tmp, &target)?;
    let bin = target.join("pulsar_lite/bin/pulsar-lite");
    if !is_executable(&bin) {
        bail!("the pulsar-lite wheel has no binary at {}", bin.display());
    }
    run_quiet(
        Command::new(&bin).arg("--help"),
        &format!("{} does not run on this machine", bin.display()),
    )?;
    Ok(bin)
}
