//! Who may use the admin routes: `Authorization: Bearer <token>` with one
//! of the configured tokens (`ADMIN_TOKEN`, `ADMIN_TOKENS`), compared in
//! constant time. The answer is the token's name, which the audit record
//! and saga histories keep as who acted; the token itself is never logged
//! or echoed.

use axum::http::HeaderMap;

use super::error::ApiError;
use super::AppState;
use crate::config::NamedToken;
use secrecy::ExposeSecret;

/// The name of the admin whose token `headers` carry. With no token
/// configured, admin routes are refused (403), never open.
pub fn authorize(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    admin_name(&state.admins, headers)
}

fn admin_name(admins: &[NamedToken], headers: &HeaderMap) -> Result<String, ApiError> {
    if admins.is_empty() {
        return Err(ApiError::AdminDisabled);
    }
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    holder_of(admins, given)
        .map(|admin| admin.name.clone())
        .ok_or(ApiError::Unauthorized)
}

/// The configured admin whose token `given` is, if any (the console's
/// sign-in checks a token the same way).
pub fn holder_of<'a>(admins: &'a [NamedToken], given: &str) -> Option<&'a NamedToken> {
    // Every token is compared, whichever matches, so the time taken says
    // nothing about which one (or how much of one) a guess got right.
    let mut found = None;
    for admin in admins {
        if constant_time_eq(given.as_bytes(), admin.token.expose_secret().as_bytes()) {
            found = Some(admin);
        }
    }
    found
}

/// Compares without an early exit, so response time does not reveal how
/// much of a guessed token was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_exact_match() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn each_token_acts_under_its_name() {
        let admins = vec![
            NamedToken {
                name: "alice".into(),
                token: "t-a".into(),
            },
            NamedToken {
                name: "bob".into(),
                token: "t-b".into(),
            },
        ];
        assert_eq!(admin_name(&admins, &bearer("t-b")).unwrap(), "bob");
        assert_eq!(admin_name(&admins, &bearer("t-a")).unwrap(), "alice");
        assert!(matches!(
            admin_name(&admins, &bearer("t-c")),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            admin_name(&admins, &HeaderMap::new()),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            admin_name(&[], &bearer("t-a")),
            Err(ApiError::AdminDisabled)
        ));
    }
}
