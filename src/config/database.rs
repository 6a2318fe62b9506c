//! The database section: which saga store, and how it is opened.

use secrecy::SecretString;
use url::Url;

use super::values::{not_a_url, parse_bool, whole, Values};
use super::ConfigError;

/// The saga store (PostgreSQL, or one SQLite file).
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// Holds a password: never logged (`DATABASE_URL`).
    pub url: SecretString,
    /// Pool size; concurrent transitions beyond this queue for a
    /// connection (`DATABASE_MAX_CONNECTIONS`).
    pub max_connections: u32,
    /// Apply migrations when `serve` starts (`MIGRATE_ON_START`).
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgresql://postgres:postgres@localhost:5432/saga_db".into(),
            max_connections: 20,
            migrate_on_start: true,
        }
    }
}

impl DatabaseSettings {
    /// `DATABASE_URL` without its password (userinfo or query), for logs
    /// and output, as [`BrokerUrl::redacted`](super::BrokerUrl::redacted)
    /// is for the broker.
    pub fn redacted_url(&self) -> String {
        use secrecy::ExposeSecret;
        let url = self.url.expose_secret();
        Url::parse(url)
            .map(|u| crate::redact::url(&u))
            .unwrap_or_else(|_| crate::redact::url_text(url))
    }

    /// The names this section reads.
    pub(super) const NAMES: &'static [&'static str] = &[
        "DATABASE_URL",
        "DATABASE_MAX_CONNECTIONS",
        "MIGRATE_ON_START",
    ];

    pub(super) fn parse(v: &Values) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            url: v.parse("DATABASE_URL", d.url, |s| {
                parse_database_url(s).map(|()| s.into())
            })?,
            max_connections: v.parse("DATABASE_MAX_CONNECTIONS", d.max_connections, whole(1000))?,
            migrate_on_start: v.parse("MIGRATE_ON_START", d.migrate_on_start, parse_bool)?,
        })
    }
}

/// Checks a database URL names a store we can open: PostgreSQL, or a
/// SQLite file (`sqlite://path`, `sqlite:path`, `sqlite::memory:`).
pub fn parse_database_url(s: &str) -> Result<(), String> {
    if let Some(path) = s.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        return if path.is_empty() {
            Err("sqlite URL without a path".into())
        } else {
            Ok(())
        };
    }
    let url = Url::parse(s).map_err(|e| not_a_url(&e, s))?;
    match url.scheme() {
        "postgres" | "postgresql" => Ok(()),
        other => Err(format!(
            "unsupported scheme {other:?}: expected postgres://, postgresql:// or sqlite://"
        )),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::config::values::parse_pairs;

    #[test]
    fn defaults_match_the_contract() {
        let d = DatabaseSettings::default();
        assert_eq!(
            d.url.expose_secret(),
            "postgresql://postgres:postgres@localhost:5432/saga_db"
        );
        assert_eq!(d.max_connections, 20);
        assert!(d.migrate_on_start);
        let parsed = parse_pairs(&[], DatabaseSettings::parse).expect("defaults parse");
        assert_eq!(parsed.url.expose_secret(), d.url.expose_secret());
        assert_eq!(
            (parsed.max_connections, parsed.migrate_on_start),
            (d.max_connections, d.migrate_on_start)
        );
    }

    #[test]
    fn database_urls_name_postgres_or_sqlite() {
        for ok in [
            "postgres://u@h/db",
            "postgresql://h/db",
            "sqlite://.dev/demo/sagas.db",
            "sqlite::memory:",
        ] {
            assert!(parse_database_url(ok).is_ok(), "{ok}");
        }
        for bad in ["mysql://h/db", "sqlite://", "nonsense"] {
            assert!(parse_database_url(bad).is_err(), "{bad}");
        }
    }
}
