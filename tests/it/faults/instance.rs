//! One `saga-orchestrator serve` as a process of its own (the test build's
//! binary: release under `make faults`), its output in a log file, so that
//! a kill is a real SIGKILL of a separate process.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::binary;

pub const ADMIN_TOKEN: &str = "fault-suite-token";

/// A running (or stopped) instance.
pub struct Instance {
    pub id: String,
    pub api: String,
    child: tokio::process::Child,
    pub log: PathBuf,
}

/// A free loopback port, for an API address known before start.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Instance {
    /// Starts `serve` as `id` with `env` and waits until `/ready` says 200.
    pub async fn start(dir: &Path, id: &str, env: &[(String, String)]) -> Self {
        let port = free_port();
        let log = dir.join(format!("{id}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let api_addr = format!("127.0.0.1:{port}");
        let bare = [
            ("LOG_FORMAT", "pretty"),
            ("API_ADDR", api_addr.as_str()),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
            ("INSTANCE_ID", id),
        ];
        let mut command = tokio::process::Command::from(binary(dir, &["serve"], &bare));
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .kill_on_drop(true);
        let child = command.spawn().expect("serve starts");
        let instance = Self {
            id: id.to_string(),
            api: format!("http://{api_addr}"),
            child,
            log,
        };
        instance.wait_ready(Duration::from_secs(90)).await;
        instance
    }

    /// `/ready`'s status now, or `None` when nothing answers.
    pub async fn ready_status(&self) -> Option<u16> {
        let client = reqwest::Client::new();
        let answer = client
            .get(format!("{}/ready", self.api))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        answer.ok().map(|r| r.status().as_u16())
    }

    async fn wait_ready(&self, within: Duration) {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.ready_status().await == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} not ready in {within:?}: {}", self.id, self.tail());
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id().expect("still running") as libc::pid_t
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to it.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: a plain signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// SIGKILL: no shutdown of any kind.
    pub async fn kill(&mut self) {
        // SAFETY: a plain signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGKILL) }, 0);
        let _ = self.child.wait().await;
    }

    /// SIGTERM; how it exited and how long that took (at most `within`).
    pub async fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        // SAFETY: a plain signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0);
        let asked = Instant::now();
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} still running {within:?} after SIGTERM", self.id))
            .expect("waited");
        (status, asked.elapsed())
    }

    /// The end of its log, for a failure's message.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}
