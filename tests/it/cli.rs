//! The binary's command line as a newcomer meets it: run for real, as a
//! separate process.

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};

use crate::helpers::binary;
use std::time::Duration;

fn run(args: &[&str]) -> Output {
    run_with(args, &[])
}

/// Runs the binary with only `env` for an environment, its output
/// captured through pipes.
fn run_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    binary(&std::env::temp_dir(), args, env)
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
fn the_monitor_groups_by_saga_unless_told_and_checks_its_idle_time() {
    let out = run(&["monitor", "--help"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("[default: saga]"), "{shown}");
    assert!(shown.contains("--idle <SECS>"), "{shown}");
    // Refused before any broker is asked.
    for bad in ["0", "soon", "3601"] {
        let out = run(&["monitor", "--idle", bad]);
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(2), "--idle {bad}: {shown}");
        assert!(shown.contains("--idle <SECS>"), "--idle {bad}: {shown}");
    }
}

/// Runs `serve` on SQLite and the in-memory broker, its output piped, and
/// returns its log lines up to the ready line; then kills it.
fn serve_until_ready() -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("saga-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("sqlite:{}", dir.join("store.db").display());
    let env = [
        ("LOG_FORMAT", "pretty"),
        ("RUST_LOG", "info"),
        ("TERM", "xterm-256color"),
        ("BROKER_URL", "memory://"),
        ("API_ADDR", "127.0.0.1:0"),
        ("ALIANZAS_API_URL", "http://svc:s3cret-pw@127.0.0.1:9/"),
        ("DATABASE_URL", database.as_str()),
    ];
    let mut serve = binary(&dir, &["serve"], &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stdout = serve.stdout.take().expect("piped");
    let (lines, seen) = std::sync::mpsc::channel();
    // Read on a thread, so that a serve that never gets ready times out.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut shown = Vec::new();
    while let Ok(line) = seen.recv_timeout(Duration::from_secs(30)) {
        let ready = line.contains("API listening");
        shown.push(line);
        if ready {
            break;
        }
    }
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = std::fs::remove_dir_all(&dir);
    shown
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let shown = serve_until_ready();
    assert!(
        shown.iter().any(|l| l.contains("INFO")),
        "log lines were written: {shown:?}"
    );
    assert!(
        !shown.concat().contains('\u{1b}'),
        "colour codes in a pipe: {shown:?}"
    );
}

#[test]
fn once_ready_serve_says_what_it_connected_to_and_where_to_go() {
    let shown = serve_until_ready();
    let ready = shown.last().expect("a ready line");
    for part in [
        "docs=http://127.0.0.1:",
        "store=sqlite:",
        "broker=memory://",
        "alliances=http http://svc:***@127.0.0.1:9/",
        "integrations=http http://",
    ] {
        assert!(ready.contains(part), "{part} missing from {ready}");
    }
    assert!(
        !shown.concat().contains("s3cret-pw"),
        "a secret was logged: {shown:?}"
    );
}

#[test]
fn a_failure_to_start_is_said_once() {
    for format in ["pretty", "json"] {
        let out = run_with(
            &["migrate"],
            &[
                ("LOG_FORMAT", format),
                ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
                ("STARTUP_TIMEOUT_SECS", "0"),
            ],
        );
        let shown = text(&out);
        assert!(!out.status.success(), "{shown}");
        assert_eq!(
            shown.matches("Connection refused").count(),
            1,
            "{format}: said once: {shown}"
        );
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

/// What `serve` prints when `setting` names an address where nothing
/// listens: one line at once naming the setting, the address and how long
/// it will be tried, then the failure, once; nothing from the libraries.
fn serve_cannot_reach(setting: &str, address: &str, env: &[(&str, &str)]) {
    let mut env = env.to_vec();
    env.extend([
        ("LOG_FORMAT", "pretty"),
        ("API_ADDR", "127.0.0.1:0"),
        ("STARTUP_TIMEOUT_SECS", "1"),
    ]);
    let out = run_with(&["serve"], &env);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    let lines: Vec<&str> = shown.lines().collect();
    let named = format!("{setting}={address}");
    assert_eq!(lines.len(), 2, "two lines and no more: {shown}");
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains(&named)
            && lines[0].contains("for up to 1 s (STARTUP_TIMEOUT_SECS)"),
        "said at once, with how long it will try: {shown}"
    );
    assert!(
        lines[1].starts_with("error: cannot reach the ") && lines[1].contains(&named),
        "{shown}"
    );
    assert!(
        lines[1].ends_with("(tried for 1 s; STARTUP_TIMEOUT_SECS sets how long)"),
        "{shown}"
    );
}

#[test]
fn a_broker_that_is_not_there_is_named_at_once_with_how_long_it_is_tried() {
    for scheme in ["pulsar", "redis"] {
        let address = format!("{scheme}://127.0.0.1:{}", closed_port());
        serve_cannot_reach(
            "BROKER_URL",
            &address,
            &[
                ("BROKER_URL", &address),
                ("DATABASE_URL", "sqlite::memory:"),
            ],
        );
    }
}

/// A loopback port that accepts connections and then, if `close`, drops
/// each at once (a proxy whose broker is still starting), or else holds it
/// without a word (a wrong service, a silent balancer).
fn port_that_accepts(close: bool) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("bound").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            if !close {
                held.push(stream);
            }
        }
    });
    port
}

#[test]
fn a_port_that_accepts_but_is_no_broker_is_tried_like_one_not_listening() {
    let address = format!("pulsar://127.0.0.1:{}", port_that_accepts(true));
    serve_cannot_reach(
        "BROKER_URL",
        &address,
        &[
            ("BROKER_URL", &address),
            ("DATABASE_URL", "sqlite::memory:"),
        ],
    );
}

#[test]
fn a_silent_broker_is_given_up_on_in_time_without_the_library_retrying() {
    let address = format!("pulsar://127.0.0.1:{}", port_that_accepts(false));
    let out = run_with(
        &["serve"],
        &[
            ("LOG_FORMAT", "pretty"),
            ("API_ADDR", "127.0.0.1:0"),
            ("STARTUP_TIMEOUT_SECS", "1"),
            ("BROKER_URL", &address),
            ("DATABASE_URL", "sqlite::memory:"),
        ],
    );
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    let last = shown.lines().last().unwrap_or_default();
    assert!(
        // One try (the handshake's 3 s) may outlast a 1 s bound.
        last.starts_with(&format!(
            "error: cannot reach the broker at BROKER_URL={address}: "
        )) && last.contains("(tried for ")
            && last.ends_with(" s; STARTUP_TIMEOUT_SECS sets how long)"),
        "{shown}"
    );
    assert!(
        !shown.contains("pulsar::"),
        "the library's own lines: {shown}"
    );
}

#[test]
fn a_database_that_is_not_there_is_named_at_once_without_its_password() {
    let port = closed_port();
    let url = format!("postgres://saga:pg-s3cret@127.0.0.1:{port}/saga");
    serve_cannot_reach(
        "DATABASE_URL",
        &format!("postgres://saga:***@127.0.0.1:{port}/saga"),
        &[("DATABASE_URL", &url), ("BROKER_URL", "memory://")],
    );
}

#[test]
fn a_mistyped_key_in_the_config_file_stops_start_up_naming_it() {
    let file =
        std::env::temp_dir().join(format!("saga-cli-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &file,
        "RETRY_MAX_ATTEMPTS = 3\nBROKR_URL = \"redis://cache:6379\"\n",
    )
    .expect("write the config file");
    let path = file.display().to_string();
    // `migrate` reads the settings first: it fails before connecting anywhere.
    let out = run(&["--config", &path, "migrate"]);
    let _ = std::fs::remove_file(&file);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert_eq!(
        shown.trim_end(),
        format!("error: unknown setting BROKR_URL in {path} (did you mean BROKER_URL?)")
    );
}
