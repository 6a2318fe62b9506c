//! The binary's command line as a newcomer meets it: run for real, as a
//! separate process.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    run_with(args, &[])
}

/// Runs the binary with only `env` (and `PATH`) for an environment, its
/// output captured through pipes.
fn run_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_saga-orchestrator"))
        .args(args)
        // Nothing from the developer's own .env or environment.
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_bare_binary_shows_its_usage_instead_of_starting_a_server() {
    let out = run(&[]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(shown.contains("Usage: saga-orchestrator"), "{shown}");
    for subcommand in [
        "serve",
        "migrate",
        "simulate",
        "demo",
        "load-test",
        "monitor",
    ] {
        assert!(
            shown.contains(subcommand),
            "{subcommand} missing from: {shown}"
        );
    }
}

#[test]
fn help_says_where_settings_come_from() {
    for args in [&["--help"][..], &["serve", "--help"]] {
        let out = run(args);
        let shown = text(&out);
        assert!(out.status.success(), "{args:?}: {shown}");
        for hint in ["environment", ".env", ".env.example", "docs/contract.md"] {
            assert!(
                shown.contains(hint),
                "{args:?} does not mention {hint}: {shown}"
            );
        }
    }
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    // Nothing listens on port 1: migrate logs its failure and exits.
    let out = run_with(
        &["migrate"],
        &[
            ("LOG_FORMAT", "pretty"),
            ("RUST_LOG", "info"),
            ("TERM", "xterm-256color"),
            ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
        ],
    );
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("ERROR"), "a log line was written: {shown}");
    assert!(
        !shown.contains('\u{1b}'),
        "colour codes in a pipe: {shown:?}"
    );
}
