//! Participant URLs: the base a setting names, plus path segments that
//! come from input (a partner id) and must stay exactly one segment each.

use url::Url;

/// Why a participant URL was not built. Refusing is the safe answer: a
/// segment that is not exactly one could make `DELETE /partners/{id}` reach
/// `/partners` (the collection) or another partner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafePath {
    /// `.` and `..` are resolved by servers, encoded or not.
    #[error("the id {0:?} is a dot segment: no encoding keeps it exactly one path segment")]
    DotSegment(String),
    /// An empty segment would name the collection itself (`/partners/`).
    #[error("an empty id is not exactly one path segment")]
    Empty,
    /// The base is not a hierarchical URL (`mailto:`-like): it has no path to extend.
    #[error("the participant's URL cannot take a path")]
    CannotBeABase,
    /// The built URL does not end in the segments asked for; a bug caught
    /// here rather than sent.
    #[error("the URL built would not end in exactly one path segment per part")]
    NotOneSegment,
}

/// `base` with `segments` appended, each percent-encoded into exactly one
/// path segment whatever its characters; the base's own path is kept.
pub fn join(base: &Url, segments: &[&str]) -> Result<Url, UnsafePath> {
    if base.cannot_be_a_base() {
        return Err(UnsafePath::CannotBeABase);
    }
    let mut encoded = Vec::with_capacity(segments.len());
    for segment in segments {
        match *segment {
            "" => return Err(UnsafePath::Empty),
            "." | ".." => return Err(UnsafePath::DotSegment(segment.to_string())),
            _ => encoded.push(encode_segment(segment)),
        }
    }
    let prefix = base.path().trim_end_matches('/');
    let base_count = prefix.split('/').count().saturating_sub(1);
    let mut path = prefix.to_string();
    for segment in &encoded {
        path.push('/');
        path.push_str(segment);
    }
    let mut url = base.clone();
    url.set_path(&path);
    // The encoding leaves nothing for `set_path` to reinterpret; checking
    // anyway means no later change to either can send a DELETE elsewhere.
    let built: Vec<&str> = url
        .path_segments()
        .ok_or(UnsafePath::NotOneSegment)?
        .collect();
    let tail = built.get(base_count..).unwrap_or_default();
    if tail.len() != encoded.len() || tail.iter().zip(&encoded).any(|(b, e)| b != e) {
        return Err(UnsafePath::NotOneSegment);
    }
    Ok(url)
}

/// Every byte but RFC 3986's unreserved ones (`A-Z a-z 0-9 - . _ ~`)
/// percent-encoded. Stricter than the URL standard's path set on purpose:
/// `;` (path parameters in servlet containers), `=`, `+`, `&`, `,` and `\`
/// (a separator to some servers) must not mean anything to a server, and
/// `%` is encoded so an id that looks encoded (`%2e%2e`) stays data.
fn encode_segment(segment: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(segment.len() * 3);
    for &byte in segment.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn each_id_is_one_encoded_segment_whatever_its_characters() {
        let b = base("http://h:8001");
        let cases = [
            ("p 1/x", "/partners/p%201%2Fx"),
            ("a/b", "/partners/a%2Fb"),
            ("%2e%2e", "/partners/%252e%252e"),
            ("%2E%2E%2F", "/partners/%252E%252E%252F"),
            (".%2e", "/partners/.%252e"),
            ("..%2f", "/partners/..%252f"),
            ("?x=1", "/partners/%3Fx%3D1"),
            ("#frag", "/partners/%23frag"),
            ("ü/ñ", "/partners/%C3%BC%2F%C3%B1"),
            ("\\", "/partners/%5C"),
            ("..\\..", "/partners/..%5C.."),
            (";x", "/partners/%3Bx"),
            ("a\tb\r\nc", "/partners/a%09b%0D%0Ac"),
            ("...", "/partners/..."),
            ("~a.b_c-d", "/partners/~a.b_c-d"),
        ];
        for (id, expected) in cases {
            let url = join(&b, &["partners", id]).unwrap();
            assert_eq!(url.path(), expected, "{id:?}");
            assert_eq!(url.query(), None, "{id:?}");
            assert_eq!(url.fragment(), None, "{id:?}");
            assert_eq!(url.path_segments().unwrap().count(), 2, "{id:?}");
        }
    }

    #[test]
    fn a_long_id_stays_one_segment() {
        let id = "ü/".repeat(128);
        let url = join(&base("http://h"), &["partners", &id]).unwrap();
        assert_eq!(url.path_segments().unwrap().count(), 2);
        assert_eq!(url.path(), format!("/partners/{}", "%C3%BC%2F".repeat(128)));
    }

    #[test]
    fn dot_and_empty_ids_are_refused() {
        let b = base("http://h:8001");
        for id in [".", ".."] {
            assert_eq!(
                join(&b, &["partners", id]),
                Err(UnsafePath::DotSegment(id.into()))
            );
        }
        assert_eq!(join(&b, &["partners", ""]), Err(UnsafePath::Empty));
        assert_eq!(
            join(&base("mailto:x@y"), &["partners", "p"]),
            Err(UnsafePath::CannotBeABase)
        );
    }

    #[test]
    fn the_base_path_query_and_credentials_are_kept() {
        assert_eq!(
            join(&base("http://h/api/"), &["alliances"])
                .unwrap()
                .as_str(),
            "http://h/api/alliances"
        );
        assert_eq!(
            join(&base("http://h/api"), &["partners", "a/b"])
                .unwrap()
                .as_str(),
            "http://h/api/partners/a%2Fb"
        );
        assert_eq!(
            join(&base("http://u:p@h:1/v1/?k=1"), &["partners", "x"])
                .unwrap()
                .as_str(),
            "http://u:p@h:1/v1/partners/x?k=1"
        );
        assert_eq!(
            join(&base("http://h/a//b"), &["partners", "x"])
                .unwrap()
                .path(),
            "/a//b/partners/x"
        );
    }
}
