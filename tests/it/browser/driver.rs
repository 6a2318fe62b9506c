//! chromedriver and the Chromium it starts, as processes. Each run gets a
//! directory of its own (profile, temporary files, the driver's log) and
//! its own driver on a free loopback port, in a process group of its own
//! that the Chromium processes share. The driver dies with the test
//! process; the browsers cannot be told to, so the next run sweeps what a
//! dead run left: each directory names the test process that owns it, and
//! its browsers are the processes whose command line names its profile.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::PATIENCE;

/// chromedriver, its browsers, and their directory; all end with it.
pub struct Driver {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// `CHROMIUM` or `CHROMEDRIVER` if set, else Debian's path; it must exist.
pub fn binary(var: &str, default: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_string());
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: `make test` (or `cargo xtask install chromium`) installs it, \
         or set {var}"
    );
    path
}

/// Where this user's runs' directories are, private to the user. Short,
/// like each run's own name: Chromium puts a Unix socket in its temporary
/// directory, and a socket's path may not be longer than 107 bytes.
fn runs() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("sagas-chromium-{uid}"));
    std::fs::create_dir_all(&dir).expect("the browsers' directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .expect("the browsers' directory made private");
    dir
}

impl Driver {
    /// A driver ready for a session, after sweeping what dead runs left.
    pub async fn start() -> Self {
        sweep_dead_runs();
        let dir = runs().join(&uuid::Uuid::new_v4().simple().to_string()[..12]);
        std::fs::create_dir_all(dir.join("profile")).expect("a browser directory");
        let owner = std::process::id().to_string();
        std::fs::write(dir.join("owner"), owner).expect("owner recorded");
        let port = free_port();
        let log = std::fs::File::create(dir.join("driver.log")).expect("driver log");
        let mut command = Command::new(binary("CHROMEDRIVER", "/usr/bin/chromedriver"));
        command
            .arg(format!("--port={port}"))
            // Chromium's own temporary files go where the run's do.
            .env("TMPDIR", &dir)
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only marks this child to
        // be killed when the test process dies.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("chromedriver starts");
        let mut driver = Self { child, port, dir };
        driver.wait_until_ready().await;
        driver
    }

    /// The WebDriver endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The browser's profile directory.
    pub fn profile(&self) -> PathBuf {
        self.dir.join("profile")
    }

    async fn wait_until_ready(&mut self) {
        let started = Instant::now();
        let status = format!("{}/status", self.url());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client");
        loop {
            // Ours must still be running: the port could be another's.
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("chromedriver ended ({exit}): {}", self.log());
            }
            if let Ok(r) = http.get(&status).send().await {
                if r.json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true)
                {
                    return;
                }
            }
            assert!(
                started.elapsed() < PATIENCE,
                "chromedriver never answered on {}: {}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The driver's log so far, for a failure's message.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("driver.log")).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group, even if the driver itself is gone: the browsers
        // it started outlive it.
        kill_group(self.child.id() as i32);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kill_group(group: i32) {
    // SAFETY: a plain kill(2) of the process group this run started.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    let answered = unsafe { libc::kill(pid, 0) };
    answered == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Stops the browsers of runs whose test process is gone, and removes
/// their directories. A browser is known by its profile in the command
/// line, never by a recorded group number, which another process may
/// hold by now.
fn sweep_dead_runs() {
    let Ok(entries) = std::fs::read_dir(runs()) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        let owner = std::fs::read_to_string(dir.join("owner")).unwrap_or_default();
        let test = owner.split_whitespace().next().and_then(|p| p.parse().ok());
        if test.is_some_and(|pid| !alive(pid)) {
            for pid in processes_using(&dir.join("profile")) {
                // SAFETY: a plain kill(2) of a browser a dead run left.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// The processes whose command line names `profile`.
fn processes_using(profile: &Path) -> Vec<i32> {
    let needle = profile.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
