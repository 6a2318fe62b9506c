//! `cargo xtask`: the repository's tooling in Rust, one implementation of
//! every service starter shared by the tests, the dev stack and bench. What
//! each `make` target runs; see xtask/README.md for the design.

mod bench;
mod install;
mod lint;
mod paths;
mod ports;
mod postgres;
mod process;
mod pulsar;
mod redis;
mod release;
mod services;
mod signals;
mod stack;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "saga-orchestrator's development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the tests need (default: all), idempotently.
    Install {
        #[arg(value_enum)]
        deps: Vec<install::Dep>,
    },
    /// Run every test (both brokers) against private servers; ARGS go to the runner.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Long-lived test servers: up (prints the env), down, status.
    TestServices {
        #[arg(value_parser = ["up", "down", "status"])]
        action: String,
        /// State directory [default: .dev/test-services].
        #[arg(long, env = "TEST_SERVICES_DIR")]
        dir: Option<PathBuf>,
    },
    /// pulsar-lite behind its compatibility proxy (what the tests restart).
    Pulsar(pulsar::Cmd),
    /// Start a stack: dev, simple, full or shared.
    Up {
        #[arg(value_enum, default_value = "dev")]
        stack: stack::Stack,
    },
    /// Stop a stack (locally: all of it; the data stays unless --purge).
    Down {
        #[arg(value_enum, default_value = "dev")]
        stack: stack::Stack,
        /// Also delete the local stack's state, data included (.dev/dev-stack).
        #[arg(long)]
        purge: bool,
    },
    /// Each service of the stack(s): running or not, PID, address.
    Status,
    /// The stack's logs: followed, or (--no-follow) their last lines once.
    Logs {
        #[arg(long)]
        no_follow: bool,
        services: Vec<String>,
    },
    /// Stop stacks and test services, cargo clean, delete .dev.
    Clean,
    /// Create .env from .env.example if it is missing.
    EnsureEnv,
    /// The orchestrator (release build) with .env, its output also in the stack's log.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The embedded demo (release build).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The channels' live view (release build).
    Monitor {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Apply the database migrations (release build).
    Migrate,
    /// Build the release binary (and the proxy, in the same build).
    Build,
    /// The standard load test on the dev stack (BENCH_* settings).
    Bench,
    /// fmt --check and clippy with warnings as errors.
    Lint,
    /// Compose files, Dockerfile and dashboards, without a Docker engine.
    LintDeploy { files: Vec<PathBuf> },
}

fn dispatch(command: Command) -> Result<u8> {
    match command {
        Command::Install { deps } => install::ensure(&deps)?,
        Command::Test { args } => return test::run(&args),
        Command::TestServices { action, dir } => {
            let dir = dir.unwrap_or_else(|| paths::dev().join("test-services"));
            match action.as_str() {
                "up" => test::services_up(&dir)?,
                "down" => test::services_down(&dir)?,
                _ => test::services_status(&dir)?,
            }
        }
        Command::Pulsar(cmd) => pulsar::cli(cmd)?,
        Command::Up { stack } => stack::up(stack)?,
        Command::Down { stack, purge } => stack::down(stack, purge)?,
        Command::Status => stack::status()?,
        Command::Logs {
            no_follow,
            services,
        } => stack::logs(!no_follow, &services)?,
        Command::Clean => stack::clean()?,
        Command::EnsureEnv => stack::ensure_env()?,
        Command::Run { args } => return release::run(&args),
        Command::Demo { args } => return release::exec("demo", &args),
        Command::Monitor { args } => return release::exec("monitor", &args),
        Command::Migrate => return release::exec("migrate", &[]),
        Command::Build => {
            release::build("as make build asks", false)?;
        }
        Command::Bench => bench::run()?,
        Command::Lint => lint::lint()?,
        Command::LintDeploy { files } => return lint::deploy(&files),
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    signals::install();
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::from(signals::exit_code().unwrap_or(1))
        }
    }
}
