//! `cargo xtask`: the repository's tooling in Rust, one implementation of
//! every service starter shared by the tests, the dev stack and bench. What
//! each `make` target runs; see xtask/README.md for the design.

mod args;
mod bench;
mod faults;
mod install;
mod lint;
mod paths;
mod ports;
mod postgres;
mod process;
mod pulsar;
mod redis;
mod release;
mod servers;
mod services;
mod signals;
mod stack;
mod test;

use anyhow::{bail, Result};
use args::Args;
use std::process::ExitCode;

const USAGE: &str = "\
cargo xtask COMMAND   (saga-orchestrator's development tasks; `make help` lists the make targets)

  install [protoc|postgres|redis|pulsar-lite]...   install what is missing (default: all), idempotently
  test [RUNNER ARGS]...        every test, both brokers, against private servers
  test-services up|down|status [--dir DIR]         long-lived test servers (default .dev/test-services)
  postgres --dir DIR ACTION    a server of a test's own to break: start | stop [--mode fast|immediate]
                               [--purge] | pause | resume   (xtask/src/servers.rs)
  redis --dir DIR ACTION       start (append-only, synced on every write) | kill | stop [--purge]
  pulsar [--dir DIR] ACTION    pulsar-lite + proxy: start [--proxy-port P …] | stop [--purge] | status
                               | env | restart-broker [--kill] | stop-broker [--kill] | start-broker
                               | install [--check]   (xtask/src/pulsar/cli.rs lists the settings)
  up [dev|simple|full|shared]  start a stack (Docker Compose, or local processes without Docker)
  down [STACK] [--purge]       stop it (locally all of it; --purge also deletes .dev/dev-stack)
  status                       each service: running or not, PID, address
  logs [--no-follow] [SERVICE]...                  the stack's logs
  clean                        stacks and test services down, cargo clean, .dev removed
  ensure-env                   create .env from .env.example if missing
  run [ARGS]...                the orchestrator (release build), output also in .dev/dev-stack/orchestrator.log
  demo|monitor [ARGS]...       saga-orchestrator demo / monitor (release build)
  migrate | build              apply the migrations / build the release binaries
  faults [--broker B] [FILTER] the fault scenarios at full size on the release build, a table of figures
                               (--table: the last run's table again)
  soak [--duration 10m] [--broker B]               steady load, random kills: sagas, RSS, connections
  bench                        the standard load test on the dev stack (BENCH_* settings)
  lint                         cargo fmt --check and clippy -D warnings
  lint-deploy [FILE]...        compose files, Dockerfile, dashboards (no Docker engine needed)
";

/// Runs the command named by the first word; the exit code.
fn dispatch(mut args: Args) -> Result<u8> {
    let Some(command) = args.word() else {
        if args.flag("--help") || args.flag("-h") {
            print!("{USAGE}");
            return Ok(0);
        }
        bail!("no command given\n\n{USAGE}");
    };
    match command.as_str() {
        "help" => print!("{USAGE}"),
        "install" => {
            let deps = args
                .rest()
                .iter()
                .map(|d| install::Dep::from_name(d))
                .collect::<Result<Vec<_>>>()?;
            install::ensure(&deps)?;
        }
        "test" => return test::run(&args.rest()),
        "test-services" => test::services(&mut args)?,
        "faults" => return faults::faults(&mut args),
        "soak" => return faults::soak(&mut args),
        "pulsar" => pulsar::cli(&mut args)?,
        "postgres" => servers::postgres(&mut args)?,
        "redis" => servers::redis(&mut args)?,
        "up" | "down" => {
            let purge = command == "down" && args.flag("--purge");
            let stack = stack::Stack::from_name(&args.word().unwrap_or_else(|| "dev".into()))?;
            args.done()?;
            match command.as_str() {
                "up" => stack::up(stack)?,
                _ => stack::down(stack, purge)?,
            }
        }
        "logs" => {
            let follow = !args.flag("--no-follow");
            stack::logs(follow, &args.rest())?;
        }
        "run" => return release::run(&args.rest()),
        "migrate" => {
            args.done()?;
            return release::exec("migrate", &[]);
        }
        "demo" | "monitor" => return release::exec(&command, &args.rest()),
        "lint-deploy" => {
            let files: Vec<_> = args.rest().into_iter().map(Into::into).collect();
            return lint::deploy(&files);
        }
        _ => {
            args.done()?;
            simple(&command)?;
        }
    }
    Ok(0)
}

/// The commands that take no arguments.
fn simple(command: &str) -> Result<()> {
    match command {
        "status" => stack::status(),
        "clean" => stack::clean(),
        "ensure-env" => stack::ensure_env(),
        "build" => release::build("as make build asks", false).map(|_| ()),
        "bench" => bench::run(),
        "lint" => lint::lint(),
        other => bail!("unknown command '{other}'\n\n{USAGE}"),
    }
}

fn main() -> ExitCode {
    signals::install();
    match dispatch(Args::new(std::env::args().skip(1))) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::from(signals::exit_code().unwrap_or(1))
        }
    }
}
