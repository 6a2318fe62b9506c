//! The stacks as Docker Compose projects, where a Docker engine answers.
//! (None does on the development and CI machines: this path is kept as the
//! scripts had it, and is not exercised there.)

use super::Stack;
use crate::{paths, process, signals};
use anyhow::{bail, Result};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// True if `docker info` answers within 5 s.
pub fn engine_answers() -> bool {
    if process::which("docker").is_none() {
        return false;
    }
    let Ok(mut child) = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

fn file(stack: Stack) -> &'static str {
    match stack {
        Stack::Dev => "docker-compose.dev.yml",
        Stack::Simple => "docker-compose.simple.yml",
        Stack::Full => "docker-compose.yml",
        Stack::Shared => "docker-compose.shared-pulsar.yml",
    }
}

/// `docker compose -f <stack's file> ARGS` from the repository root.
pub fn compose(stack: Stack, args: &[&str]) -> Result<Command> {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut cmd = if plugin {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else if process::which("docker-compose").is_some() {
        Command::new("docker-compose")
    } else {
        bail!("a Docker engine answers but Docker Compose is missing: install the compose plugin, or run DEV_STACK_ENGINE=local");
    };
    cmd.current_dir(paths::root())
        .args(["-f", file(stack)])
        .args(args);
    Ok(cmd)
}

fn remembered() -> Vec<Stack> {
    let text = std::fs::read_to_string(super::dir().join("docker-stacks")).unwrap_or_default();
    text.lines().filter_map(Stack::parse).collect()
}

fn remember(stacks: &[Stack]) -> Result<()> {
    std::fs::create_dir_all(super::dir())?;
    let text: String = stacks.iter().map(|s| format!("{}\n", s.name())).collect();
    Ok(std::fs::write(super::dir().join("docker-stacks"), text)?)
}

pub fn up(stack: Stack) -> Result<()> {
    let mut args = vec![];
    if stack == Stack::Shared {
        let net = std::env::var("PULSAR_NETWORK").unwrap_or_else(|_| "pulsar-shared".into());
        let exists = Command::new("docker")
            .args(["network", "inspect", &net])
            .output();
        if !exists.is_ok_and(|o| o.status.success()) {
            bail!("the shared Docker network '{net}' does not exist: start the stack that owns the shared Pulsar first, or name its network with PULSAR_NETWORK=…");
        }
        if std::env::var("SHARED_SIMULATORS").as_deref() == Ok("1") {
            args.extend(["--profile", "simulators"]);
        }
    }
    args.extend(["up", "-d", "--wait"]);
    if stack != Stack::Dev {
        args.push("--build");
    }
    eprintln!(
        "stack: docker compose -f {} {}",
        file(stack),
        args.join(" ")
    );
    signals::run(&mut compose(stack, &args)?, "docker compose up")?;
    let mut stacks: Vec<Stack> = remembered().into_iter().filter(|s| *s != stack).collect();
    stacks.push(stack);
    remember(&stacks)
}

pub fn down(stack: Stack) -> Result<()> {
    eprintln!(
        "stack: docker compose -f {} down (volumes kept)",
        file(stack)
    );
    let args: &[&str] = if stack == Stack::Shared {
        &["--profile", "simulators", "down"]
    } else {
        &["down"]
    };
    signals::run(&mut compose(stack, args)?, "docker compose down")?;
    remember(
        &remembered()
            .into_iter()
            .filter(|s| *s != stack)
            .collect::<Vec<_>>(),
    )
}

/// Stops every stack started through us (for `clean`).
pub fn down_all() {
    for stack in remembered() {
        let _ = down(stack);
    }
}

/// `compose ps` of every stack with containers.
pub fn status() -> Result<()> {
    let mut shown = false;
    for stack in [Stack::Dev, Stack::Simple, Stack::Full, Stack::Shared] {
        let ids = compose(stack, &["ps", "--all", "-q"])?.output()?;
        if !String::from_utf8_lossy(&ids.stdout).trim().is_empty() {
            println!("docker compose -f {}:", file(stack));
            signals::status(&mut compose(stack, &["ps", "--all"])?)?;
            shown = true;
        }
    }
    if !shown {
        println!("no compose stack has containers (make dev-up, simple-up, full-up or shared-up)");
    }
    Ok(())
}

/// `compose logs` of the last stack started (or $STACK).
pub fn logs(follow: bool, services: &[String]) -> Result<()> {
    let stack = std::env::var("STACK")
        .ok()
        .and_then(|s| Stack::parse(&s))
        .or_else(|| remembered().pop())
        .unwrap_or(Stack::Dev);
    let mut args = vec!["logs", "--tail", "100"];
    if follow {
        args.push("-f");
    }
    args.extend(services.iter().map(String::as_str));
    signals::status(&mut compose(stack, &args)?)?;
    Ok(())
}

/// The dev stack's services all run.
pub fn dev_is_up() -> bool {
    let Ok(mut cmd) = compose(Stack::Dev, &["ps", "--status", "running", "--services"]) else {
        return false;
    };
    let out = cmd
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    ["postgres", "redis", "pulsar"]
        .iter()
        .all(|s| out.lines().any(|l| l == *s))
}
