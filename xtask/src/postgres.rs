//! The one PostgreSQL starter: a private server on 127.0.0.1, for the tests
//! (throw-away, trust auth) and for the dev stack (kept, password auth).
//!
//! initdb and postgres refuse to run as root. As root the server runs as the
//! `postgres` system user that Debian's postgresql package creates (the
//! user its own clusters run as), or, for a data directory made earlier,
//! as whoever owns it; `PG_RUN_USER` picks another. No user is created.
//!
//! State files in the state directory: `pg-home` (where the data and the
//! socket live: `<state>/pg`, or a /tmp directory when the server's user
//! cannot reach the state directory or its path is too long for a Unix
//! socket), `postgres.pid`, `postgres.port`, `initdb.log`, `pg_ctl.log`.

use crate::paths::wait_for;
use crate::process::{self, is_root, log_tails, read_first_line, read_pid, read_port, write_line};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How to set a server up.
pub struct Spec<'a> {
    pub port: u16,
    /// The superuser initdb creates.
    pub user: &'a str,
    /// `None`: trust authentication (the tests' throw-away servers).
    pub password: Option<&'a str>,
    pub max_connections: u32,
    pub shared_buffers: Option<&'a str>,
    /// False skips initdb's fsync: safe for data that is thrown away.
    pub durable: bool,
    /// Preload `pg_stat_statements` when installed, so `make bench` can
    /// count statements per saga (a small cost on every statement).
    pub stat_statements: bool,
    /// Name prefix of the /tmp data directory, when one is needed.
    pub tmp_prefix: &'a str,
    pub timeout: u64,
}

/// How `pg_ctl stop` ends the server's sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Sessions rolled back and closed, a checkpoint written.
    Fast,
    /// Every process quits at once, no checkpoint: a crash for the data.
    Immediate,
}

impl ShutdownMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "fast" => Ok(Self::Fast),
            "immediate" => Ok(Self::Immediate),
            other => bail!("unknown shutdown mode '{other}' (fast or immediate)"),
        }
    }
}

/// A user from /etc/passwd.
#[derive(Clone, Debug)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

fn find_user(matches: impl Fn(&str, u32) -> bool) -> Option<User> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        matches(f[0], uid).then(|| User {
            name: f[0].to_string(),
            uid,
            gid,
        })
    })
}

/// The user a new server runs as: nobody (we are not root), $PG_RUN_USER,
/// Debian's `postgres`, or `nobody` as a last resort.
fn default_user() -> Result<Option<User>> {
    if !is_root() {
        return Ok(None);
    }
    if let Ok(name) = std::env::var("PG_RUN_USER") {
        return find_user(|n, _| n == name)
            .map(Some)
            .with_context(|| format!("PG_RUN_USER={name}: no such user"));
    }
    Ok(find_user(|n, _| n == "postgres").or_else(|| find_user(|n, _| n == "nobody")))
}

/// The owner of an existing data directory, unless that is root.
fn owner_of(dir: &Path) -> Option<User> {
    let uid = fs::metadata(dir).ok()?.uid();
    (is_root() && uid != 0)
        .then(|| find_user(|_, u| u == uid))
        .flatten()
}

/// `program` run as `user` (as ourselves when `None`).
fn run_as(user: Option<&User>, program: &Path) -> Command {
    match user {
        Some(u) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", &u.name, "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn give_to(user: Option<&User>, path: &Path) -> Result<()> {
    if let Some(u) = user {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .with_context(|| format!("chown {} to {}", path.display(), u.name))?;
    }
    Ok(())
}

/// The server binaries: $PG_BINDIR, the highest /usr/lib/postgresql/N/bin
/// (Debian keeps them off PATH), or initdb's directory on PATH.
/// Whether the server's `pg_stat_statements` library is installed (it is
/// in Debian's postgresql package, not in every build): preloading a
/// missing library would stop the server from starting.
fn has_stat_statements() -> bool {
    bindir().is_ok_and(|bin| bin.join("../lib/pg_stat_statements.so").is_file())
}

pub fn bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let bin = e.path().join("bin");
            let version = e.file_name().to_str()?.parse().ok()?;
            process::is_executable(&bin.join("initdb")).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    match process::which("initdb").and_then(|p| p.parent().map(Path::to_path_buf)) {
        Some(dir) => Ok(dir),
        None => {
            bail!("PostgreSQL server binaries (initdb) not found; run cargo xtask install postgres")
        }
    }
}

/// A PostgreSQL whose state lives in one directory.
pub struct Postgres {
    state: PathBuf,
}

impl Postgres {
    pub fn new(state: &Path) -> Self {
        Self {
            state: state.to_path_buf(),
        }
    }

    /// Where its data directory and socket live, once started.
    pub fn home(&self) -> Option<PathBuf> {
        read_first_line(&self.state.join("pg-home")).map(PathBuf::from)
    }

    /// Its PID (from postmaster.pid when a start was cut short).
    pub fn pid(&self) -> Option<i32> {
        read_pid(&self.state.join("postgres.pid"))
            .or_else(|| read_pid(&self.home()?.join("data/postmaster.pid")))
    }

    pub fn port(&self) -> Option<u16> {
        read_port(&self.state.join("postgres.port"))
    }

    pub fn running(&self) -> bool {
        self.pid()
            .is_some_and(|pid| process::alive(pid, "postgres"))
    }
}

impl Postgres {
    /// Starts it on `spec.port`, initialising the data first unless an
    /// earlier start left some, and waits until it accepts connections.
    pub fn start(&self, spec: &Spec) -> Result<()> {
        let bin = bindir()?;
        fs::create_dir_all(&self.state)?;
        let existing = self.home().filter(|h| h.join("data/PG_VERSION").is_file());
        let (home, user) = match existing {
            Some(home) => {
                let user = owner_of(&home.join("data"));
                (home, user)
            }
            None => {
                let user = default_user()?;
                let home = self.fresh_home(user.as_ref(), spec.tmp_prefix)?;
                self.initdb(&bin, &home, user.as_ref(), spec)?;
                (home, user)
            }
        };
        self.write_conf(&home, user.as_ref(), spec)?;
        let data = home.join("data");
        let pg_ctl_log = self.state.join("pg_ctl.log");
        let server_log = home.join("postgres.log");
        // pg_ctl detaches the postmaster into its own session, output on its log.
        let out = fs::File::create(&pg_ctl_log)?;
        let status = run_as(user.as_ref(), &bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&server_log)
            .args(["-w", "-t", &spec.timeout.to_string(), "start"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .context("running pg_ctl")?;
        if !status.success() {
            bail!(
                "PostgreSQL did not start on 127.0.0.1:{}{}",
                spec.port,
                log_tails(&[&pg_ctl_log, &server_log])
            );
        }
        if let Some(pid) = read_pid(&data.join("postmaster.pid")) {
            write_line(&self.state.join("postgres.pid"), pid)?;
        }
        write_line(&self.state.join("postgres.port"), spec.port)?;
        self.wait_ready(&bin, spec, &server_log)
    }

    /// `<state>/pg`, or a /tmp directory if the server's user cannot write
    /// there (a repository under /root) or a socket path would be too long
    /// (the limit is ~107 bytes).
    fn fresh_home(&self, user: Option<&User>, tmp_prefix: &str) -> Result<PathBuf> {
        let mut home = self.state.join("pg");
        let _ = fs::remove_dir_all(&home);
        fs::create_dir_all(&home)?;
        give_to(user, &home)?;
        let writable = run_as(user, Path::new("test"))
            .arg("-w")
            .arg(&home)
            .status()
            .is_ok_and(|s| s.success());
        if !writable || home.as_os_str().len() > 80 {
            let _ = fs::remove_dir_all(&home);
            let tmp = std::env::var_os("TMPDIR").unwrap_or_else(|| "/tmp".into());
            let unique = format!("{tmp_prefix}.{}-{}", std::process::id(), nanos());
            home = PathBuf::from(tmp).join(unique);
            fs::create_dir_all(&home)?;
            fs::set_permissions(&home, fs::Permissions::from_mode(0o700))?;
            give_to(user, &home)?;
            eprintln!(
                "postgres: data in {} ({} is unsuitable)",
                home.display(),
                self.state.display()
            );
        }
        write_line(&self.state.join("pg-home"), home.display())?;
        Ok(home)
    }

    fn initdb(&self, bin: &Path, home: &Path, user: Option<&User>, spec: &Spec) -> Result<()> {
        let log = self.state.join("initdb.log");
        let mut cmd = run_as(user, &bin.join("initdb"));
        cmd.arg("-D").arg(home.join("data"));
        cmd.args(["-U", spec.user, "--encoding=UTF8", "--locale=C"]);
        if !spec.durable {
            cmd.arg("--no-sync");
        }
        // The password from a file only the server's user reads, gone after.
        let pwfile = home.join("pwfile");
        match spec.password {
            Some(password) => {
                fs::write(&pwfile, format!("{password}\n"))?;
                fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
                give_to(user, &pwfile)?;
                cmd.arg(format!("--pwfile={}", pwfile.display()));
                cmd.arg("--auth=scram-sha-256");
            }
            None => {
                cmd.arg("--auth=trust");
            }
        }
        let out = fs::File::create(&log)?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status();
        let _ = fs::remove_file(&pwfile);
        if !status.context("running initdb")?.success() {
            bail!("initdb failed{}", log_tails(&[&log]));
        }
        let conf = home.join("data/postgresql.conf");
        let mut text = fs::read_to_string(&conf)?;
        text += "\n# --- xtask: address and port, rewritten on every start ---\n";
        text += "include_if_exists = 'xtask.conf'\n";
        fs::write(&conf, text)?;
        eprintln!("postgres: initialised {}", home.join("data").display());
        Ok(())
    }

    /// The settings that may change between starts: in their own file,
    /// included last (later lines win), so they need no shell quoting.
    fn write_conf(&self, home: &Path, user: Option<&User>, spec: &Spec) -> Result<()> {
        let conf = home.join("data/postgresql.conf");
        let text =
            fs::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
        if !text.contains("include_if_exists = 'xtask.conf'") {
            // A data directory initialised by the old scripts.
            fs::write(&conf, text + "\ninclude_if_exists = 'xtask.conf'\n")?;
        }
        let mut settings = format!(
            "# Written by xtask on every start.\nlisten_addresses = '127.0.0.1'\nport = {}\n\
             unix_socket_directories = '{}'\nmax_connections = {}\n",
            spec.port,
            home.display(),
            spec.max_connections
        );
        if let Some(size) = spec.shared_buffers {
            settings += &format!("shared_buffers = {size}\n");
        }
        if spec.stat_statements && has_stat_statements() {
            settings += "shared_preload_libraries = 'pg_stat_statements'\n";
        }
        let path = home.join("data/xtask.conf");
        fs::write(&path, settings)?;
        give_to(user, &path)
    }

    fn wait_ready(&self, bin: &Path, spec: &Spec, server_log: &Path) -> Result<()> {
        let what = format!("PostgreSQL not ready on 127.0.0.1:{}", spec.port);
        wait_for(spec.timeout, Duration::from_millis(200), &what, || {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &spec.port.to_string()])
                .args(["-U", spec.user, "-d", "postgres"])
                .status()
                .is_ok_and(|s| s.success());
            if !ready && !self.running() {
                bail!("PostgreSQL exited during startup");
            }
            Ok(ready.then_some(()))
        })
        .map_err(|e| anyhow::anyhow!("{e}{}", log_tails(&[server_log])))
    }

    /// Stops it: `pg_ctl stop -m fast` as the data's owner, then signals
    /// (SIGINT = fast shutdown, SIGQUIT = immediate, SIGKILL).
    pub fn stop(&self) -> Result<()> {
        self.stop_with(ShutdownMode::Fast)
    }

    /// Stops it with `pg_ctl stop -m <mode>`: `Immediate` is a crash as far
    /// as the data is concerned (the next start replays the WAL).
    pub fn stop_with(&self, mode: ShutdownMode) -> Result<()> {
        let Some(pid) = self.pid().filter(|pid| process::alive(*pid, "postgres")) else {
            return Ok(());
        };
        // A paused server cannot stop: let it go on first.
        self.signal_all(libc::SIGCONT);
        if let (Some(home), Ok(bin)) = (self.home(), bindir()) {
            let data = home.join("data");
            let _ = run_as(owner_of(&data).as_ref(), &bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["stop", "-m", mode.as_str(), "-w", "-t", "30"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if process::alive(pid, "postgres") {
            process::signal(pid, libc::SIGINT);
            if !process::wait_gone(pid, 30) {
                eprintln!("postgres: pid {pid} did not stop, sending SIGQUIT");
                process::stop(pid, "postgres", libc::SIGQUIT, 10)?;
            }
        }
        let _ = fs::remove_file(self.state.join("postgres.pid"));
        eprintln!("postgres: stopped (pid {pid})");
        Ok(())
    }

    /// Sends `signal` to the postmaster and every process it forked (the
    /// backends, checkpointer, WAL writer…): SIGSTOP to all of them is a
    /// store that stops answering without closing a connection.
    pub fn signal_all(&self, signal: i32) {
        let Some(postmaster) = self.pid().filter(|pid| process::alive(*pid, "postgres")) else {
            return;
        };
        process::signal(postmaster, signal);
        for child in process::children(postmaster) {
            process::signal(child, signal);
        }
    }

    /// Deletes a data directory kept outside the state directory (the
    /// caller deletes the state directory itself).
    pub fn remove_outside_data(&self) {
        if let Some(home) = self.home().filter(|h| !h.starts_with(&self.state)) {
            let _ = fs::remove_dir_all(home);
        }
    }

    /// psql on database `postgres` as `user` over TCP.
    pub fn psql(&self, user: &str, password: &str) -> Result<Command> {
        let port = self
            .port()
            .context("PostgreSQL has no recorded port (not started?)")?;
        let mut cmd = Command::new(bindir()?.join("psql"));
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-U", user, "-d", "postgres"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5");
        Ok(cmd)
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
