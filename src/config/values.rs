//! Reading one setting: its text by name, parsed and checked, or the
//! section's typed default when it is not given. The parsers here are the
//! ones several sections share; each says what is wrong with a value, and
//! [`Values::parse`] adds the setting's name.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use url::Url;

use super::ConfigError;
use crate::redact;

/// One hour in milliseconds: the ceiling of timeouts and delays.
pub(super) const HOUR_MS: u64 = 3_600_000;

/// Thirty days in seconds: the ceiling of deadlines and ages.
pub(super) const MONTH_SECS: u64 = 30 * 24 * 3600;

/// Raw values by lower-cased name, and the names asked for (which a unit
/// test holds equal to the sections' lists of names).
pub(super) struct Values<'a> {
    values: &'a HashMap<String, String>,
    read: RefCell<BTreeSet<&'static str>>,
}

impl<'a> Values<'a> {
    pub(super) fn new(values: &'a HashMap<String, String>) -> Self {
        Self {
            values,
            read: RefCell::default(),
        }
    }

    /// The trimmed text of `name`, if given.
    pub(super) fn get(&self, name: &'static str) -> Option<String> {
        self.read.borrow_mut().insert(name);
        self.values
            .get(&name.to_ascii_lowercase())
            .map(|s| s.trim().to_string())
    }

    /// `name` parsed by `parse`, or `default` when not given.
    pub(super) fn parse<T>(
        &self,
        name: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => parse(&raw).map_err(|problem| invalid(name, problem)),
        }
    }

    /// Every name asked for so far, sorted.
    #[cfg(test)]
    pub(super) fn names_read(self) -> Vec<&'static str> {
        self.read.into_inner().into_iter().collect()
    }
}

pub(super) fn invalid(name: &'static str, problem: String) -> ConfigError {
    ConfigError::Invalid { name, problem }
}

/// A whole number from 1 to `max`: the upper bounds keep time arithmetic
/// and allocations sane, and catch a misplaced digit.
pub(super) fn whole<T>(max: T) -> impl Fn(&str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + Default + std::fmt::Display + Copy,
{
    move |s| match s.parse::<T>() {
        Ok(n) if n > T::default() && n <= max => Ok(n),
        _ => Err(format!(
            "expected a whole number from 1 to {max}, got {s:?}"
        )),
    }
}

/// Whole milliseconds from 1 to `max`.
pub(super) fn positive_millis(max: u64) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| whole(max)(s).map(Duration::from_millis)
}

/// Whole seconds from 1 to `max`.
pub(super) fn positive_secs(max: u64) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| whole(max)(s).map(Duration::from_secs)
}

/// Whole milliseconds from 0 to an hour.
pub(super) fn millis(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(n) if n <= HOUR_MS => Ok(Duration::from_millis(n)),
        _ => Err(format!(
            "expected whole milliseconds from 0 to {HOUR_MS}, got {s:?}"
        )),
    }
}

/// Whole seconds from 0 to `max`.
pub(super) fn secs_up_to(max: u64) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| match s.parse::<u64>() {
        Ok(n) if n <= max => Ok(Duration::from_secs(n)),
        _ => Err(format!("expected whole seconds from 0 to {max}, got {s:?}")),
    }
}

/// A channel or subscription name: non-empty, no whitespace or slashes
/// (a slash would change the Pulsar topic's namespace).
pub(super) fn name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '/') {
        Err(format!("expected a name without spaces or '/', got {s:?}"))
    } else {
        Ok(s.to_string())
    }
}

/// The value of the keyword `s` is, in any case, among `choices`;
/// `expected` names them for the error.
pub(super) fn keyword<T: Copy>(
    s: &str,
    choices: &[(&str, T)],
    expected: &str,
) -> Result<T, String> {
    choices
        .iter()
        .find(|(word, _)| word.eq_ignore_ascii_case(s))
        .map(|&(_, value)| value)
        .ok_or_else(|| format!("expected {expected}, got {s:?}"))
}

pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    const WORDS: [(&str, bool); 8] = [
        ("1", true),
        ("true", true),
        ("yes", true),
        ("on", true),
        ("0", false),
        ("false", false),
        ("no", false),
        ("off", false),
    ];
    keyword(s, &WORDS, "true or false")
}

pub(super) fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| not_a_url(&e, s))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("expected an http(s) URL, got scheme {other:?}")),
    }
}

/// The problem with a value that does not parse as a URL, quoting the
/// value without what may be its password: a malformed URL cannot be
/// trusted to parse far enough to find it, so it is masked as text.
pub(super) fn not_a_url(e: &url::ParseError, value: &str) -> String {
    format!("not a URL ({e}): {:?}", redact::url_text(value))
}

/// A built-in default URL.
pub(super) fn fixed_url(s: &str) -> Url {
    Url::parse(s).expect("built-in default URLs are valid")
}

/// `parse` run on `pairs`, given as the environment would give them.
#[cfg(test)]
pub(super) fn parse_pairs<T>(
    pairs: &[(&str, &str)],
    parse: impl FnOnce(&Values) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let values = pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    parse(&Values::new(&values))
}
