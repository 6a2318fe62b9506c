//! Command-line arguments, read by hand: the commands take a few words and
//! flags each, and without clap `cargo xtask` compiles in seconds on a
//! fresh machine (clap's derive alone would take most of a minute on CI's
//! two cores).

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::path::PathBuf;

/// What is left of the command line.
pub struct Args(VecDeque<String>);

impl Args {
    pub fn new(args: impl IntoIterator<Item = String>) -> Self {
        Self(args.into_iter().collect())
    }

    /// The next word, if it is not a flag.
    pub fn word(&mut self) -> Option<String> {
        let is_word = self.0.front().is_some_and(|a| !a.starts_with('-'));
        is_word.then(|| self.0.pop_front()).flatten()
    }

    /// Takes `--name` wherever it stands; true if it was there.
    pub fn flag(&mut self, name: &str) -> bool {
        let found = self.0.iter().position(|a| a == name);
        found.map(|i| self.0.remove(i)).is_some()
    }

    /// Takes `--name VALUE` or `--name=VALUE`, else `$env` when given and set.
    pub fn value(&mut self, name: &str, env: Option<&str>) -> Result<Option<String>> {
        let prefix = format!("{name}=");
        if let Some(i) = self
            .0
            .iter()
            .position(|a| a == name || a.starts_with(&prefix))
        {
            let arg = self.0.remove(i).unwrap_or_default();
            if let Some(value) = arg.strip_prefix(&prefix) {
                return Ok(Some(value.to_string()));
            }
            return self
                .0
                .remove(i)
                .map(Some)
                .with_context(|| format!("{name} needs a value"));
        }
        Ok(env
            .and_then(|e| std::env::var(e).ok())
            .filter(|v| !v.is_empty()))
    }

    /// As [`Args::value`], parsed.
    pub fn parsed<T: std::str::FromStr>(
        &mut self,
        name: &str,
        env: Option<&str>,
    ) -> Result<Option<T>> {
        match self.value(name, env)? {
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| anyhow::anyhow!("{name}: '{v}' is not valid here")),
            None => Ok(None),
        }
    }

    /// As [`Args::value`], a path.
    pub fn path(&mut self, name: &str, env: Option<&str>) -> Result<Option<PathBuf>> {
        Ok(self.value(name, env)?.map(PathBuf::from))
    }

    /// Everything left, as it was given (for commands that pass it on).
    pub fn rest(&mut self) -> Vec<String> {
        self.0.drain(..).collect()
    }

    /// Fails on anything left over: a misspelt flag must not pass silently.
    pub fn done(&self) -> Result<()> {
        match self.0.front() {
            Some(extra) => {
                bail!("unexpected argument '{extra}' (cargo xtask help lists the commands)")
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::new(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_and_values_are_taken_wherever_they_stand() {
        let mut a = args(&["start", "--proxy-port", "6650", "--kill", "--dir=/tmp/x"]);
        assert!(a.flag("--kill"));
        assert_eq!(
            a.value("--dir", None).expect("ok").as_deref(),
            Some("/tmp/x")
        );
        assert_eq!(
            a.parsed::<u16>("--proxy-port", None).expect("ok"),
            Some(6650)
        );
        assert_eq!(a.word().as_deref(), Some("start"));
        assert!(a.done().is_ok());
    }

    #[test]
    fn leftovers_and_missing_values_are_errors() {
        assert!(args(&["--dir"]).value("--dir", None).is_err());
        assert!(args(&["--purgee"]).done().is_err());
        assert!(args(&["--port", "x"])
            .parsed::<u16>("--port", None)
            .is_err());
    }
}
