//! One `saga-orchestrator serve` as a process of its own (the test build's
//! binary: release under `make faults`), its output in a log file, so that
//! a kill is a real SIGKILL of a separate process.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use crate::helpers::binary;

pub const ADMIN_TOKEN: &str = "fault-suite-token";

/// A running (or stopped) instance.
pub struct Instance {
    pub id: String,
    pub api: String,
    child: tokio::process::Child,
    pub log: PathBuf,
}

impl Instance {
    /// Starts `serve` as `id` with `env` and waits until `/ready` says 200.
    pub async fn start(dir: &Path, id: &str, env: &[(String, String)]) -> Self {
        let log = dir.join(format!("{id}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let bare = [
            ("LOG_FORMAT", "pretty"),
            // A port of its own choosing, read back from its ready line: a
            // port picked here could be taken by another test meanwhile.
            ("API_ADDR", "127.0.0.1:0"),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
            ("INSTANCE_ID", id),
        ];
        let mut command = binary(dir, &["serve"], &bare);
        // SAFETY: prctl is async-signal-safe; it only marks this child to be
        // killed when the test process dies, even by SIGKILL, so no
        // instance outlives a run that was cut short.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut command = tokio::process::Command::from(command);
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .kill_on_drop(true);
        let child = command.spawn().expect("serve starts");
        let mut instance = Self {
            id: id.to_string(),
            api: String::new(),
            child,
            log,
        };
        instance.api = instance.api_address(Duration::from_secs(90)).await;
        instance.wait_ready(Duration::from_secs(60)).await;
        instance
    }

    /// The API's address, from the log's "API listening … addr=" line.
    async fn api_address(&mut self, within: Duration) -> String {
        let addr = self
            .await_log(within, "start", |line| {
                line.contains("API listening")
                    .then(|| {
                        line.split_whitespace()
                            .find_map(|word| word.strip_prefix("addr="))
                    })
                    .flatten()
                    .map(str::to_string)
            })
            .await;
        format!("http://{addr}")
    }

    /// Waits until it says it consumes `channel`: from then on the broker
    /// hands it a share of what is published there.
    pub async fn wait_consuming(&mut self, channel: &str, within: Duration) {
        let field = format!("channel={channel}");
        self.await_log(within, "consume", |line| {
            (line.contains(" consuming ") && line.split_whitespace().any(|w| w == field))
                .then_some(())
        })
        .await;
    }

    /// The first of its log lines `find` picks something from, polled for
    /// `within`; a panic naming `what` it did not do when the time runs out
    /// or it exits first.
    async fn await_log<T>(
        &mut self,
        within: Duration,
        what: &str,
        find: impl Fn(&str) -> Option<T>,
    ) -> T {
        let until = Instant::now() + within;
        while Instant::now() < until {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(found) = text.lines().find_map(&find) {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited before it did {what} ({status}): {}",
                    self.id,
                    self.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} did not {what} in {within:?}: {}", self.id, self.tail());
    }

    /// `/ready`'s status now, or `None` when nothing answers.
    pub async fn ready_status(&self) -> Option<u16> {
        let client = reqwest::Client::new();
        let answer = client
            .get(format!("{}/ready", self.api))
            .timeout(Duration::from_secs(5))
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
