//! Credentials kept out of everything logged, stored, published or shown.
//!
//! A URL setting may carry `user:password@` (a broker, the database, a
//! participant behind basic auth); errors and logs quote URLs. Everything
//! that shows one goes through here first.

use url::Url;

/// What replaces a secret.
const MASK: &str = "***";

/// `url` as text with its password masked; with a user name and no
/// password, the user name is masked instead (it is then often a token).
/// Every query value is masked too, its key kept: drivers take passwords
/// and tokens as query parameters (`?password=…`).
pub fn url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Only fails on URLs that cannot have credentials, which have none.
        let _ = shown.set_password(Some(MASK));
    } else if !shown.username().is_empty() {
        let _ = shown.set_username(MASK);
    }
    if let Some(query) = url.query() {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={MASK}"),
                None => pair.to_string(),
            })
            .collect();
        shown.set_query(Some(&masked.join("&")));
    }
    shown.to_string()
}

/// A setting's value that should be a URL but may not parse as one: all
/// between `://` (or the start) and the last `@` masked. Cruder than
/// [`url`] on purpose: a malformed value's parts cannot be trusted, and
/// hiding a little too much of an error line costs nothing.
pub fn url_text(value: &str) -> String {
    let (scheme, rest) = match value.find("://") {
        Some(i) => value.split_at(i + 3),
        None => ("", value),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}{MASK}{}", &rest[at..]),
        None => value.to_string(),
    }
}

/// Free text (an error message) with the user information of every URL in
/// it (`scheme://user:pass@host`) masked.
pub fn in_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the path, query or fragment (or where the
        // text does); `(`, `)`, `'` and the like may be part of a password,
        // which the url crate leaves unencoded in user information.
        let end = tail
            .find(|c: char| c.is_whitespace() || "/?#\\\"<>`".contains(c))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(MASK);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_with_brackets_and_quotes_are_masked_in_text() {
        for secret in ["pa)ss", "p(a's", "x)y(z"] {
            let text = format!("error sending request for url (http://u:{secret}@h:1/alliances)");
            let shown = in_text(&text);
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("@h:1/alliances"), "{shown}");
        }
    }

    #[test]
    fn parsed_urls_lose_their_password_or_token() {
        let u = |s: &str| url(&Url::parse(s).unwrap());
        assert_eq!(
            u("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(u("http://user:pw@h:1/api"), "http://user:***@h:1/api");
        assert_eq!(u("https://tok3n@h/"), "https://***@h/");
        assert_eq!(u("http://h:1/x"), "http://h:1/x");
    }

    #[test]
    fn query_values_are_masked_keys_kept() {
        // sqlx and others take a password as a query parameter too.
        let u = |s: &str| url(&Url::parse(s).unwrap());
        assert_eq!(
            u("postgres://app@db/saga?password=hunter2&sslmode=require"),
            "postgres://***@db/saga?password=***&sslmode=***"
        );
        assert_eq!(u("http://h/x?token=t0k#frag"), "http://h/x?token=***#frag");
        assert_eq!(u("http://h/x?flag"), "http://h/x?flag");
    }

    #[test]
    fn malformed_values_lose_everything_before_the_host() {
        assert_eq!(
            url_text("postgres://u:hunter2@h:notaport/db"),
            "postgres://***@h:notaport/db"
        );
        assert_eq!(url_text("redis://:s3cret@host:xx"), "redis://***@host:xx");
        assert_eq!(url_text("http://u:p@ss/w@rd@h:x"), "http://***@h:x");
        assert_eq!(url_text("u:pw@host:5432/db"), "***@host:5432/db");
        assert_eq!(url_text("not a url"), "not a url");
    }

    #[test]
    fn urls_inside_messages_lose_their_credentials() {
        assert_eq!(
            in_text(
                "error sending request for url (http://%FF:s3cret@127.0.0.1:9/alliances): refused"
            ),
            "error sending request for url (http://***@127.0.0.1:9/alliances): refused"
        );
        assert_eq!(
            in_text("a redis://:pw@h:1 and http://h/x?u=a@b and pulsar://u:p@[::1]:6650"),
            "a redis://***@h:1 and http://h/x?u=a@b and pulsar://***@[::1]:6650"
        );
        assert_eq!(in_text("no urls here: a@b"), "no urls here: a@b");
    }
}
