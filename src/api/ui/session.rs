//! Signing in to the console: the admin token is entered once, on the
//! sign-in page, and never travels again. What the browser keeps instead
//! is a session cookie scripts cannot read (`HttpOnly`), sent to `/ui`
//! only and never from another site (`SameSite=Strict`), that ends with
//! the browser session and after [`LIFETIME`] at the latest.
//!
//! The cookie is signed, not stored: `<name>.<expires>.<nonce>.<mac>`,
//! the MAC an HMAC-SHA-256 keyed by that admin's token. Any instance with
//! the same `ADMIN_TOKENS` accepts it (no shared session table), and
//! removing a token from the settings ends its sessions. Forms that change
//! state also carry a per-session CSRF token derived the same way.

use axum::http::{header, HeaderMap, HeaderValue};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::api::auth::constant_time_eq;
use crate::config::NamedToken;

/// The cookie's name.
pub const COOKIE: &str = "saga_console";

/// The longest a sign-in lasts, however long the browser stays open.
pub const LIFETIME: chrono::Duration = chrono::Duration::hours(12);

/// A signed-in admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The admin token's name: who acts.
    pub admin: String,
    csrf: String,
}

impl Session {
    /// The value forms must send back as `csrf`.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a form's `csrf` field is this session's.
    pub fn accepts_csrf(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.csrf.as_bytes())
    }
}

/// A MAC over `parts` keyed by `admin`'s token, in hex.
fn mac(admin: &NamedToken, parts: &[&str]) -> String {
    // HMAC takes a key of any length; this cannot fail.
    let mut m = Hmac::<Sha256>::new_from_slice(admin.token.expose_secret().as_bytes())
        .expect("HMAC accepts any key length");
    for part in parts {
        m.update(part.as_bytes());
        // A separator no part contains, so ("ab", "c") ≠ ("a", "bc").
        m.update(b"\n");
    }
    hex(&m.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn session_of(admin: &NamedToken, nonce: &str) -> Session {
    Session {
        admin: admin.name.clone(),
        csrf: mac(admin, &["saga-console csrf v1", nonce]),
    }
}

/// A new session for `admin`: the cookie's value and the session.
pub fn open(admin: &NamedToken, now: DateTime<Utc>) -> (String, Session) {
    let mut nonce = [0u8; 16];
    rand::rng().fill_bytes(&mut nonce);
    let nonce = hex(&nonce);
    let expires = (now + LIFETIME).timestamp().to_string();
    let signature = mac(
        admin,
        &["saga-console session v1", &admin.name, &expires, &nonce],
    );
    let value = format!("{}.{expires}.{nonce}.{signature}", admin.name);
    (value, session_of(admin, &nonce))
}

/// The session `value` proves, if it is one of ours, unexpired, and signed
/// with a token still configured.
pub fn verify(admins: &[NamedToken], value: &str, now: DateTime<Utc>) -> Option<Session> {
    // Names never contain the fields after them, which have no '.'.
    let mut fields = value.rsplitn(4, '.');
    let (signature, nonce, expires, name) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if expires.parse::<i64>().ok()? <= now.timestamp() {
        return None;
    }
    // Every admin of that name is tried, as in the API's check.
    let mut found = None;
    for admin in admins.iter().filter(|a| a.name == name) {
        let expected = mac(admin, &["saga-console session v1", name, expires, nonce]);
        if constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
            found = Some(session_of(admin, nonce));
        }
    }
    found
}

/// The session of the request's cookie, if it has a valid one.
pub fn from_request(
    admins: &[NamedToken],
    headers: &HeaderMap,
    now: DateTime<Utc>,
) -> Option<Session> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .find_map(|(_, value)| verify(admins, value, now))
}

/// Whether the request reached us over TLS (through a proxy that says so),
/// so that the cookie can be marked `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn cookie(value: &str, extra: &str, request: &HeaderMap) -> HeaderValue {
    let secure = if over_tls(request) { "; Secure" } else { "" };
    let text = format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict{secure}{extra}");
    // Names, digits, hex and '.' only: always a valid header value.
    HeaderValue::from_str(&text).expect("a session cookie is plain ASCII")
}

/// `Set-Cookie` for a new session; no `Max-Age`, so it ends with the
/// browser session (the signature bounds it too).
pub fn set_cookie(value: &str, request: &HeaderMap) -> HeaderValue {
    cookie(value, "", request)
}

/// `Set-Cookie` that ends the session in this browser.
pub fn clear_cookie(request: &HeaderMap) -> HeaderValue {
    cookie("", "; Max-Age=0", request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admins() -> Vec<NamedToken> {
        vec![
            NamedToken {
                name: "alice".into(),
                token: "token-of-alice".into(),
            },
            NamedToken {
                name: "bob.ops".into(),
                token: "token-of-bob".into(),
            },
        ]
    }

    #[test]
    fn a_session_opens_for_its_admin_and_carries_no_token() {
        let admins = admins();
        let now = Utc::now();
        let (value, session) = open(&admins[1], now);
        assert!(!value.contains("token-of-bob"), "{value}");
        assert_eq!(verify(&admins, &value, now), Some(session.clone()));
        assert_eq!(session.admin, "bob.ops");
        assert!(session.accepts_csrf(session.csrf()));
        assert!(!session.accepts_csrf("nope"));
    }

    #[test]
    fn a_forged_expired_or_revoked_session_is_refused() {
        let admins = admins();
        let now = Utc::now();
        let (value, _) = open(&admins[0], now);
        // Another name with alice's signature.
        let forged = value.replacen("alice", "bob.ops", 1);
        assert_eq!(verify(&admins, &forged, now), None);
        // A later expiry than the one signed.
        let mut parts: Vec<&str> = value.split('.').collect();
        let later = (now + LIFETIME * 2).timestamp().to_string();
        parts[1] = &later;
        assert_eq!(verify(&admins, &parts.join("."), now), None);
        // Past its lifetime.
        assert_eq!(verify(&admins, &value, now + LIFETIME), None);
        // Alice's token rotated away.
        let rotated = vec![NamedToken {
            name: "alice".into(),
            token: "a-new-token".into(),
        }];
        assert_eq!(verify(&rotated, &value, now), None);
        for junk in ["", "...", "alice", "alice.1.2", "a.b.c.d.e"] {
            assert_eq!(verify(&admins, junk, now), None, "{junk}");
        }
    }

    #[test]
    fn sessions_differ_and_so_do_their_csrf_tokens() {
        let admins = admins();
        let now = Utc::now();
        let (a, first) = open(&admins[0], now);
        let (b, second) = open(&admins[0], now);
        assert_ne!(a, b);
        assert_ne!(first.csrf(), second.csrf());
    }

    #[test]
    fn the_cookie_is_read_among_others_and_marked_for_scripts_not_to_see() {
        let admins = admins();
        let now = Utc::now();
        let (value, session) = open(&admins[0], now);
        let mut headers = HeaderMap::new();
        let cookies = format!("theme=dark; {COOKIE}={value}; other=1");
        headers.insert(header::COOKIE, cookies.parse().expect("header"));
        assert_eq!(from_request(&admins, &headers, now), Some(session));
        let set = set_cookie(&value, &HeaderMap::new());
        let set = set.to_str().expect("ascii");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(set.contains("Path=/ui") && !set.contains("Max-Age"));
        let mut proxied = HeaderMap::new();
        proxied.insert("x-forwarded-proto", "https".parse().expect("header"));
        assert!(set_cookie(&value, &proxied)
            .to_str()
            .expect("ascii")
            .ends_with("; Secure"));
    }
}
