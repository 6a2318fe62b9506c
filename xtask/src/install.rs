//! The system tools the build and the tests need, installed idempotently:
//! apt-get runs only when something is missing, and only once for all.

use crate::process::{is_executable, is_root, which};
use crate::{postgres, pulsar, signals};
use anyhow::{bail, Result};
use std::io::IsTerminal;
use std::process::Command;

/// A tool `install` knows how to provide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dep {
    /// protoc: the `pulsar` crate's build script runs it.
    Protoc,
    /// PostgreSQL's server binaries (initdb, pg_ctl, pg_isready, psql).
    Postgres,
    /// redis-server (and redis-cli).
    Redis,
    /// pulsar-lite, from PyPI (pip itself from apt when missing).
    PulsarLite,
    /// Debian's Chromium and its WebDriver, for the console's browser tests.
    Chromium,
}

impl Dep {
    /// As on the command line: protoc, postgres, redis, pulsar-lite, chromium.
    pub fn name(&self) -> &'static str {
        match self {
            Dep::Protoc => "protoc",
            Dep::Postgres => "postgres",
            Dep::Redis => "redis",
            Dep::PulsarLite => "pulsar-lite",
            Dep::Chromium => "chromium",
        }
    }

    /// The dependency called `name`.
    pub fn from_name(name: &str) -> Result<Self> {
        ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown dependency '{name}' (protoc, postgres, redis, pulsar-lite, chromium)"
            )
        })
    }
}

/// Every dependency, what `cargo xtask install` checks with no arguments.
pub const ALL: [Dep; 5] = [
    Dep::Protoc,
    Dep::Postgres,
    Dep::Redis,
    Dep::PulsarLite,
    Dep::Chromium,
];

/// Where the browser tests find Chromium, unless `CHROMIUM` says (Debian's path).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where they find its WebDriver, unless `CHROMEDRIVER` says.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Each browser binary: the variable that names it, else its default.
const CHROMIUM_BINARIES: [(&str, &str); 2] =
    [("CHROMIUM", CHROMIUM), ("CHROMEDRIVER", CHROMEDRIVER)];

fn have_chromium() -> bool {
    // The tests honour both variables, so explicit ones count as present
    // (and wrong ones are refused before anything is installed).
    CHROMIUM_BINARIES.iter().all(|(var, default)| {
        std::env::var_os(var).map_or_else(
            || is_executable(default.as_ref()),
            |p| is_executable(p.as_ref()),
        )
    })
}

/// `CHROMIUM` and `CHROMEDRIVER`, when set, name programs: installing
/// Debian's would not mend a wrong one.
fn chromium_overrides_exist() -> Result<()> {
    for (var, _) in CHROMIUM_BINARIES {
        if let Some(path) = std::env::var_os(var) {
            if !is_executable(path.as_ref()) {
                bail!("{var}={} is not an executable file", path.to_string_lossy());
            }
        }
    }
    Ok(())
}

fn have_protoc() -> bool {
    // prost-build honours $PROTOC, so an explicit one counts as present.
    std::env::var_os("PROTOC").is_some_and(|p| is_executable(p.as_ref()))
        || which("protoc").is_some()
}

fn have_pip() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A Debian package and how to check that what it provides is there.
type Package = (&'static str, fn() -> bool);

/// The Debian package for a missing `dep`.
fn missing_package(dep: Dep) -> Option<Package> {
    match dep {
        Dep::Protoc => {
            (!have_protoc()).then_some(("protobuf-compiler", have_protoc as fn() -> bool))
        }
        Dep::Postgres => {
            (postgres::bindir().is_err()).then_some(("postgresql", || postgres::bindir().is_ok()))
        }
        Dep::Redis => (which("redis-server").is_none())
            .then_some(("redis-server", || which("redis-server").is_some())),
        Dep::PulsarLite => (pulsar::find_broker_bin().is_none() && !have_pip())
            .then_some(("python3-pip", have_pip)),
        // chromium-driver depends on chromium; fonts so pages render text
        // (screenshots included) without the recommends left out.
        Dep::Chromium => (!have_chromium()).then_some((
            "chromium-driver chromium fonts-dejavu-core",
            have_chromium as fn() -> bool,
        )),
    }
}

/// Makes sure every one of `deps` is installed.
pub fn ensure(deps: &[Dep]) -> Result<()> {
    let deps = if deps.is_empty() { &ALL[..] } else { deps };
    if deps.contains(&Dep::Chromium) {
        chromium_overrides_exist()?;
    }
    let mut packages: Vec<Package> = Vec::new();
    for dep in deps {
        if let Some(p) = missing_package(*dep) {
            if !packages.iter().any(|(name, _)| *name == p.0) {
                packages.push(p);
            }
        }
    }
    let want_pulsar = deps.contains(&Dep::PulsarLite) && pulsar::find_broker_bin().is_none();
    if packages.is_empty() && !want_pulsar {
        let names: Vec<&str> = deps.iter().map(Dep::name).collect();
        eprintln!("install: all present ({})", names.join(", "));
        return Ok(());
    }
    if !packages.is_empty() {
        // An entry may name several packages, space-separated.
        let names: Vec<&str> = packages
            .iter()
            .flat_map(|p| p.0.split_whitespace())
            .collect();
        apt_install(&names)?;
        for (name, present) in &packages {
            if !present() {
                bail!("installed {name}, but what it should provide is still missing");
            }
            eprintln!("install: installed {name}");
        }
    }
    if want_pulsar {
        let bin = pulsar::install_broker()?;
        eprintln!("install: pulsar-lite at {}", bin.display());
    }
    Ok(())
}

/// `apt-get install` of `packages`, as root or through `sudo`: `sudo -n`
/// (no password prompt) without a terminal, as in CI, which has none to
/// type one; a person at a terminal may be asked for theirs.
fn apt_install(packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    if which("apt-get").is_none() {
        bail!("apt-get not found; please install these packages yourself: {list}");
    }
    let apt = |args: &[&str]| {
        let mut cmd = if is_root() {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            if !std::io::stdin().is_terminal() {
                sudo.arg("-n");
            }
            // sudo resets the environment: DEBIAN_FRONTEND goes through env.
            sudo.args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
            sudo
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    if !is_root() && which("sudo").is_none() {
        bail!("not root and sudo not found; please install as root: apt-get install {list}");
    }
    eprintln!("install: apt-get install {list}");
    signals::run(&mut apt(&["update", "-qq"]), "apt-get update")
        .map_err(|e| e.context(format!("install manually: apt-get install {list}")))?;
    // Waits for a concurrent apt/dpkg (unattended-upgrades) instead of failing.
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(["-o", "DPkg::Lock::Timeout=300"]);
    args.extend(packages);
    signals::run(&mut apt(&args), "apt-get install")
        .map_err(|e| e.context(format!("install manually: apt-get install {list}")))
}
