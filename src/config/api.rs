//! The API section: where the HTTP API listens and who may use its admin
//! routes.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::values::{invalid, positive_millis, Values, HOUR_MS};
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
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 8000)),
            admin_token: None,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// The development token `.env.example` ships: public, so never accepted
/// on an address other machines can reach.
pub const DEVELOPMENT_TOKEN: &str = "dev-admin-token";

impl ApiSettings {
    /// The names this section reads.
    pub(super) const NAMES: &'static [&'static str] =
        &["API_ADDR", "ADMIN_TOKEN", "API_HEADER_TIMEOUT_MS"];

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
        };
        let token = api.admin_token.as_ref().map(|t| t.expose_secret());
        check_admin_token(token, &api.addr)?;
        Ok(api)
    }
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
