//! The API section: where the HTTP API listens and who may use its admin
//! routes.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::values::{invalid, positive_millis, whole, Values, HOUR_MS};
use super::ConfigError;

/// The HTTP API (docs/contract.md §5).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Where it listens (`API_ADDR`).
    pub addr: SocketAddr,
    /// Bearer token for admin routes; `None` refuses them all, never opens
    /// them (`ADMIN_TOKEN`, empty counts as unset).
    pub admin_token: Option<SecretString>,
    /// How long a client may take to send a request's headers
    /// (`API_HEADER_TIMEOUT_MS`).
    pub header_timeout: Duration,
    /// More admin tokens, each with a name that the audit record and saga
    /// histories show as who acted (`ADMIN_TOKENS=name:token,…`).
    pub admin_tokens: Vec<NamedToken>,
    /// Items per second a bulk job works through (`JOB_RATE_PER_SEC`), so
    /// a bulk retry cannot swamp the participants.
    pub job_rate_per_sec: u32,
    /// The most items one bulk job may take on (`JOB_MAX_ITEMS`).
    pub job_max_items: u32,
}

/// An admin token and the name its holder acts under.
#[derive(Debug, Clone)]
pub struct NamedToken {
    /// Shown in the audit record: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    pub token: SecretString,
}

/// The name `ADMIN_TOKEN`'s holder acts under.
pub const ADMIN_TOKEN_NAME: &str = "admin";

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 8000)),
            admin_token: None,
            header_timeout: Duration::from_secs(10),
            admin_tokens: Vec::new(),
            job_rate_per_sec: 10,
            job_max_items: 10_000,
        }
    }
}

/// The development token `.env.example` ships: public, so never accepted
/// on an address other machines can reach.
pub const DEVELOPMENT_TOKEN: &str = "dev-admin-token";

impl ApiSettings {
    /// The names this section reads.
    pub(super) const NAMES: &'static [&'static str] = &[
        "API_ADDR",
        "ADMIN_TOKEN",
        "ADMIN_TOKENS",
        "API_HEADER_TIMEOUT_MS",
        "JOB_RATE_PER_SEC",
        "JOB_MAX_ITEMS",
    ];

    /// Every admin token with its name: `ADMIN_TOKEN` as
    /// [`ADMIN_TOKEN_NAME`], then `ADMIN_TOKENS`.
    pub fn admins(&self) -> Vec<NamedToken> {
        let single = self.admin_token.iter().map(|token| NamedToken {
            name: ADMIN_TOKEN_NAME.to_string(),
            token: token.clone(),
        });
        single.chain(self.admin_tokens.iter().cloned()).collect()
    }

    pub(super) fn parse(v: &Values) -> Result<Self, ConfigError> {
        let d = Self::default();
        let api = Self {
            addr: v.parse("API_ADDR", d.addr, |s| {
                s.parse()
                    .map_err(|_| format!("expected host:port, got {s:?}"))
            })?,
            admin_token: v
                .get("ADMIN_TOKEN")
                .filter(|t| !t.is_empty())
                .map(SecretString::from),
            header_timeout: v.parse(
                "API_HEADER_TIMEOUT_MS",
                d.header_timeout,
                positive_millis(HOUR_MS),
            )?,
            admin_tokens: v.parse("ADMIN_TOKENS", d.admin_tokens, named_tokens)?,
            job_rate_per_sec: v.parse("JOB_RATE_PER_SEC", d.job_rate_per_sec, whole(10_000))?,
            job_max_items: v.parse("JOB_MAX_ITEMS", d.job_max_items, whole(1_000_000))?,
        };
        let admins = api.admins();
        for admin in &admins {
            check_admin_token(Some(admin.token.expose_secret()), &api.addr)?;
        }
        check_distinct(&admins)?;
        Ok(api)
    }
}

/// `name:token,name:token,…`; errors name the entry, never its token.
fn named_tokens(s: &str) -> Result<Vec<NamedToken>, String> {
    let mut tokens = Vec::new();
    for (n, entry) in s.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let Some((name, token)) = entry.split_once(':') else {
            return Err(format!(
                "entry {} is not name:token (the token is not shown)",
                n + 1
            ));
        };
        let name = name.trim();
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(format!(
                "entry {}: a name is 1 to 64 of A-Z a-z 0-9 . _ -",
                n + 1
            ));
        }
        if token.trim().is_empty() {
            return Err(format!("entry {} ({name}) has an empty token", n + 1));
        }
        tokens.push(NamedToken {
            name: name.to_string(),
            token: SecretString::from(token.trim().to_string()),
        });
    }
    Ok(tokens)
}

/// Two holders with one name, or one token under two names, would make
/// the audit record lie about who acted.
fn check_distinct(admins: &[NamedToken]) -> Result<(), ConfigError> {
    for (i, a) in admins.iter().enumerate() {
        for b in &admins[..i] {
            if a.name == b.name {
                return Err(invalid(
                    "ADMIN_TOKENS",
                    format!(
                        "the name {} is given twice (\"admin\" is ADMIN_TOKEN's)",
                        a.name
                    ),
                ));
            }
            if a.token.expose_secret() == b.token.expose_secret() {
                return Err(invalid(
                    "ADMIN_TOKENS",
                    format!("{} and {} have the same token", b.name, a.name),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses the public development token unless only this machine can use it.
fn check_admin_token(token: Option<&str>, api_addr: &SocketAddr) -> Result<(), ConfigError> {
    if token == Some(DEVELOPMENT_TOKEN) && !api_addr.ip().is_loopback() {
        return Err(invalid(
            "ADMIN_TOKEN",
            format!(
                "the development token of .env.example is public; set a secret of your own to serve on {api_addr}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::parse_pairs;

    fn parse(pairs: &[(&str, &str)]) -> Result<ApiSettings, ConfigError> {
        parse_pairs(pairs, ApiSettings::parse)
    }

    #[test]
    fn defaults_match_the_contract() {
        let d = ApiSettings::default();
        assert_eq!(d.addr.to_string(), "0.0.0.0:8000");
        assert!(d.admin_token.is_none());
        assert_eq!(d.header_timeout, Duration::from_secs(10));
        let parsed = parse(&[]).expect("defaults parse");
        assert_eq!(
            (
                parsed.addr,
                parsed.admin_token.is_none(),
                parsed.header_timeout
            ),
            (d.addr, true, d.header_timeout)
        );
    }

    #[test]
    fn empty_admin_token_means_admin_routes_refused() {
        assert!(parse(&[("ADMIN_TOKEN", "")]).unwrap().admin_token.is_none());
        assert!(parse(&[("ADMIN_TOKEN", "s3cret")])
            .unwrap()
            .admin_token
            .is_some());
    }

    #[test]
    fn named_tokens_parse_and_never_show_their_secret() {
        let api = parse(&[
            ("ADMIN_TOKEN", "t0"),
            ("ADMIN_TOKENS", "alice:t-a, bob:t:b ,"),
        ])
        .unwrap();
        let names: Vec<_> = api.admins().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["admin", "alice", "bob"]);
        assert_eq!(api.admin_tokens[1].token.expose_secret(), "t:b");
        for (bad, secret) in [
            ("alice", "alice"),
            ("alice:", "alice:"),
            ("bad name:s3cret-x", "s3cret-x"),
            ("a:s3cret-y,b:s3cret-y", "s3cret-y"),
            ("admin:s3cret-z", "s3cret-z"),
        ] {
            let err = parse(&[("ADMIN_TOKEN", "t0"), ("ADMIN_TOKENS", bad)])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("ADMIN_TOKENS"), "{err}");
            if secret.contains("s3cret") {
                assert!(!err.contains(secret), "{err}");
            }
        }
        let dev = format!("ops:{DEVELOPMENT_TOKEN}");
        assert!(parse(&[("ADMIN_TOKENS", &dev), ("API_ADDR", "0.0.0.0:1")]).is_err());
    }

    #[test]
    fn job_bounds_have_defaults_and_limits() {
        let d = parse(&[]).unwrap();
        assert_eq!((d.job_rate_per_sec, d.job_max_items), (10, 10_000));
        assert!(parse(&[("JOB_RATE_PER_SEC", "0")]).is_err());
        assert_eq!(parse(&[("JOB_MAX_ITEMS", "5")]).unwrap().job_max_items, 5);
    }

    #[test]
    fn the_public_development_token_serves_loopback_only() {
        let dev = ("ADMIN_TOKEN", DEVELOPMENT_TOKEN);
        assert!(parse(&[dev, ("API_ADDR", "127.0.0.1:8000")]).is_ok());
        assert!(parse(&[dev, ("API_ADDR", "[::1]:8000")]).is_ok());
        for open in ["0.0.0.0:8000", "192.0.2.7:8000"] {
            let line = parse(&[dev, ("API_ADDR", open)]).unwrap_err().to_string();
            assert!(line.contains("ADMIN_TOKEN"), "{line}");
            assert!(!line.contains(DEVELOPMENT_TOKEN), "{line}");
        }
        assert!(parse(&[
            ("ADMIN_TOKEN", "a-real-secret"),
            ("API_ADDR", "0.0.0.0:8000")
        ])
        .is_ok());
    }
}
