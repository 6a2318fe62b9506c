//! What a participant's HTTP answer means (docs/contract.md §4), read from at most
//! a bounded prefix of its body.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::envelope::MAX_ID_CHARS;
use crate::participants::{text, CallOutcome};

/// The most of a body ever read: enough for any error or id, and a
/// participant streaming without end cannot hold a call or memory.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest part of a participant's own words kept in an error.
pub const MAX_ERROR_CHARS: usize = 300;

/// An answer's outcome, and whether the answer says the call never reached
/// the participant's business logic (a wrong URL, an ingress, credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub outcome: CallOutcome,
    /// The status of an answer that looks like a misconfiguration.
    pub misconfigured: Option<StatusCode>,
}

impl From<CallOutcome> for Classified {
    fn from(outcome: CallOutcome) -> Self {
        Self {
            outcome,
            misconfigured: None,
        }
    }
}

/// 200/201 with an `alliance_id` → success; 409 → success ("already
/// done"), with or without one; 400/422 → business rejection; 408/429/5xx
/// → transient; any other 4xx did not reach the business logic: retried
/// and flagged. Anything else (an unexpected 2xx or 3xx) is not an answer
/// we understand: retried.
pub async fn classify_create(response: Response) -> Classified {
    let status = response.status();
    let retry_after = retry_after(response.headers(), Utc::now());
    let body = read_body(response).await;
    match (&body.error, status.as_u16()) {
        (Some(e), 200 | 201 | 409) => failed(
            format!("{status}, but reading the body failed: {e}"),
            retry_after,
        )
        .into(),
        _ => create_outcome(status, retry_after, &body.text),
    }
}

fn create_outcome(status: StatusCode, retry_after: Option<Duration>, body: &str) -> Classified {
    let outcome = match status.as_u16() {
        200 | 201 => match alliance_id(body) {
            AllianceId::Given(id) => CallOutcome::Succeeded {
                alliance_id: Some(id),
                detail: None,
            },
            AllianceId::Missing => failed(
                format!("{status} without an alliance_id: {}", words(body)),
                retry_after,
            ),
            // The participant created it: a failure would end, once the
            // same answer had been replayed under the same key until the
            // attempts ran out, in deleting a partner whose alliance exists.
            AllianceId::TooLong(chars) => CallOutcome::Succeeded {
                alliance_id: None,
                detail: Some(format!(
                    "alliance created ({status}); its alliance_id is longer than {MAX_ID_CHARS} characters ({chars}) and was not recorded"
                )),
            },
        },
        409 => already_exists(body),
        400 | 422 => CallOutcome::Rejected {
            error: describe(status, body),
        },
        408 | 429 | 500..=599 => failed(describe(status, body), retry_after),
        _ if likely_misconfiguration(status) => {
            return Classified {
                outcome: failed(misconfiguration(status, body), retry_after),
                misconfigured: Some(status),
            }
        }
        _ => failed(
            format!("unexpected answer {}", describe(status, body)),
            retry_after,
        ),
    };
    outcome.into()
}

/// A 409: the alliance exists. Its id is recorded when given and usable;
/// either way the history says what the answer was.
fn already_exists(body: &str) -> CallOutcome {
    let (alliance_id, detail) = match alliance_id(body) {
        AllianceId::Given(id) => {
            let detail = format!("alliance exists (409): alliance_id={id}");
            (Some(id), detail)
        }
        AllianceId::Missing => (None, "alliance exists (409) without an alliance_id".into()),
        AllianceId::TooLong(chars) => (
            None,
            format!("alliance exists (409); its alliance_id is longer than {MAX_ID_CHARS} characters ({chars}) and was not recorded"),
        ),
    };
    CallOutcome::Succeeded {
        alliance_id,
        detail: Some(detail),
    }
}

/// 200/202/204/404 → the partner is gone (the body is not even read);
/// anything else is retried, and 4xx that did not reach the business
/// logic are flagged.
pub async fn classify_delete(response: Response) -> Classified {
    let status = response.status();
    if matches!(status.as_u16(), 200 | 202 | 204 | 404) {
        return CallOutcome::Succeeded {
            alliance_id: None,
            detail: None,
        }
        .into();
    }
    let retry_after = retry_after(response.headers(), Utc::now());
    let body = read_body(response).await;
    if likely_misconfiguration(status) {
        return Classified {
            outcome: failed(misconfiguration(status, &body.text), retry_after),
            misconfigured: Some(status),
        };
    }
    failed(describe(status, &body.text), retry_after).into()
}

/// A 4xx that is neither a business answer (400, 409, 422) nor a "later"
/// (408, 429): 401, 403, 404, 405… come from whatever stands before the
/// participant's logic, so they are never read as a refusal.
fn likely_misconfiguration(status: StatusCode) -> bool {
    status.is_client_error() && !matches!(status.as_u16(), 400 | 408 | 409 | 422 | 429)
}

fn misconfiguration(status: StatusCode, body: &str) -> String {
    format!(
        "{} (the call did not reach the participant's business logic: likely a misconfiguration)",
        describe(status, body)
    )
}

fn failed(error: String, retry_after: Option<Duration>) -> CallOutcome {
    CallOutcome::Failed { error, retry_after }
}

/// The first [`MAX_BODY_BYTES`] of a body, as text (invalid UTF-8
/// replaced); the rest is never read. A read that fails keeps what came
/// before it and says why.
pub struct Body {
    pub text: String,
    pub error: Option<String>,
}

pub async fn read_body(mut response: Response) -> Body {
    let mut bytes = Vec::new();
    let mut error = None;
    while bytes.len() < MAX_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_BODY_BYTES - bytes.len();
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(e) => {
                error = Some(error_chain(e));
                break;
            }
        }
    }
    Body {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        error,
    }
}

/// A reqwest error and its causes on one line, without its URL (which may
/// carry credentials): callers that want the URL add it redacted.
pub fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    // The source chain says why (refused, reset, DNS…); the top level rarely does.
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An `alliance_id` as a 2xx body gives it.
#[derive(Debug, PartialEq, Eq)]
enum AllianceId {
    /// Usable: control characters escaped, within the id rule.
    Given(String),
    /// Absent, null, empty or of another type.
    Missing,
    /// Longer than the id rule allows (the count, after escaping).
    TooLong(usize),
}

fn alliance_id(body: &str) -> AllianceId {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return AllianceId::Missing;
    };
    let id = match value.get("alliance_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => text::escape_controls(s),
        Some(Value::Number(n)) => n.to_string(),
        _ => return AllianceId::Missing,
    };
    match id.chars().count() {
        chars if chars > MAX_ID_CHARS => AllianceId::TooLong(chars),
        _ => AllianceId::Given(id),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Status plus the participant's own words (`error`/`detail`/`message` of
/// a JSON body, or the text), escaped and bounded.
fn describe(status: StatusCode, body: &str) -> String {
    let said = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            ["error", "detail", "message"].iter().find_map(|k| {
                v.get(*k)
                    .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
            })
        })
        .unwrap_or_else(|| body.to_string());
    let said = words(&said);
    if said.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {said}")
    }
}

/// A participant's text as it may go into an error.
fn words(text: &str) -> String {
    text::storable(text.trim(), MAX_ERROR_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        let http = axum::http::Response::builder()
            .status(status)
            .body(body.to_string())
            .expect("valid response");
        Response::from(http)
    }

    #[tokio::test]
    async fn create_answers_are_classified_as_the_contract_says() {
        let ok = r#"{"alliance_id":"a-1"}"#;
        let long = format!(r#"{{"alliance_id":"{}"}}"#, "x".repeat(257));
        let cases: [(u16, &str, &str, bool); 23] = [
            (200, ok, "succeeded", false),
            (201, ok, "succeeded", false),
            (409, ok, "succeeded", false),
            (409, "", "succeeded", false),
            (409, "{}", "succeeded", false),
            (409, &long, "succeeded", false),
            (201, "{}", "failed", false),
            (201, &long, "succeeded", false),
            (200, "<html>", "failed", false),
            (400, "", "rejected", false),
            (422, r#"{"error":"bad email"}"#, "rejected", false),
            (401, "", "failed", true),
            (403, "", "failed", true),
            (404, "", "failed", true),
            (405, "", "failed", true),
            (410, "", "failed", true),
            (451, "", "failed", true),
            (408, "", "failed", false),
            (429, "", "failed", false),
            (500, "", "failed", false),
            (503, "", "failed", false),
            (202, "", "failed", false),
            (302, "", "failed", false),
        ];
        for (status, body, expected, misconfigured) in cases {
            let c = classify_create(response(status, body)).await;
            assert_eq!(c.outcome.label(), expected, "{status} {body}: {c:?}");
            assert_eq!(c.misconfigured.is_some(), misconfigured, "{status}: {c:?}");
        }
        let c = classify_create(response(422, r#"{"error":"bad email"}"#)).await;
        let CallOutcome::Rejected { error } = c.outcome else {
            panic!("{c:?}")
        };
        assert!(error.contains("bad email"));
    }

    #[tokio::test]
    async fn a_409_says_what_it_knew_of_the_alliance() {
        let outcome = |body: &str| {
            let body = body.to_string();
            async move { classify_create(response(409, &body)).await.outcome }
        };
        assert_eq!(
            outcome("").await,
            CallOutcome::Succeeded {
                alliance_id: None,
                detail: Some("alliance exists (409) without an alliance_id".into()),
            }
        );
        assert_eq!(
            outcome(r#"{"alliance_id":"a-9"}"#).await,
            CallOutcome::Succeeded {
                alliance_id: Some("a-9".into()),
                detail: Some("alliance exists (409): alliance_id=a-9".into()),
            }
        );
        let long = format!(r#"{{"alliance_id":"{}"}}"#, "x".repeat(300));
        let CallOutcome::Succeeded {
            alliance_id: None,
            detail: Some(detail),
        } = outcome(&long).await
        else {
            panic!("a 409 with an unusable id still says the alliance exists")
        };
        assert!(detail.contains("not recorded"), "{detail}");
    }

    #[tokio::test]
    async fn delete_answers_are_classified_as_the_contract_says() {
        for (status, expected, misconfigured) in [
            (200, "succeeded", false),
            (202, "succeeded", false),
            (204, "succeeded", false),
            (404, "succeeded", false),
            (400, "failed", false),
            (401, "failed", true),
            (403, "failed", true),
            (405, "failed", true),
            (409, "failed", false),
            (500, "failed", false),
            (503, "failed", false),
        ] {
            let c = classify_delete(response(status, "")).await;
            assert_eq!(c.outcome.label(), expected, "{status}");
            assert_eq!(c.misconfigured.is_some(), misconfigured, "{status}");
        }
    }

    #[tokio::test]
    async fn nul_and_invalid_utf8_in_a_body_become_storable_text() {
        let http = axum::http::Response::builder()
            .status(500)
            .body(b"bad \0 \xff\xfe end".to_vec())
            .unwrap();
        let c = classify_delete(Response::from(http)).await;
        let CallOutcome::Failed { error, .. } = c.outcome else {
            panic!("{c:?}")
        };
        assert_eq!(
            error,
            "500 Internal Server Error: bad \\u0000 \u{fffd}\u{fffd} end"
        );
    }

    #[tokio::test]
    async fn only_a_bounded_prefix_of_a_body_is_read() {
        let huge = "x".repeat(3 * MAX_BODY_BYTES);
        let body = read_body(response(500, &huge)).await;
        assert_eq!(body.text.len(), MAX_BODY_BYTES);
        assert!(body.error.is_none());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now: DateTime<Utc> = "2026-11-22T14:00:00Z".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Sun, 22 Nov 2026 14:00:10 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn alliance_ids_obey_the_id_rule() {
        use AllianceId::*;
        assert_eq!(alliance_id(r#"{"alliance_id":"a-1"}"#), Given("a-1".into()));
        assert_eq!(alliance_id(r#"{"alliance_id":42}"#), Given("42".into()));
        assert_eq!(
            alliance_id(r#"{"alliance_id":"a\u0000b\nc"}"#),
            Given("a\\u0000b\\nc".into())
        );
        assert_eq!(alliance_id(r#"{"alliance_id":""}"#), Missing);
        assert_eq!(alliance_id(r#"{"alliance_id":"  "}"#), Missing);
        assert_eq!(alliance_id(r#"{"alliance_id":null}"#), Missing);
        assert_eq!(alliance_id(r#"["alliance_id"]"#), Missing);
        assert_eq!(alliance_id("<html>"), Missing);
        let at_limit = format!(r#"{{"alliance_id":"{}"}}"#, "x".repeat(256));
        assert!(matches!(alliance_id(&at_limit), Given(_)));
        let over = format!(r#"{{"alliance_id":"{}"}}"#, "x".repeat(257));
        assert_eq!(alliance_id(&over), TooLong(257));
        // Escaping counts: 200 NULs are 1200 characters once storable.
        let nuls = format!(r#"{{"alliance_id":"{}"}}"#, "\\u0000".repeat(200));
        assert_eq!(alliance_id(&nuls), TooLong(1200));
    }

    #[test]
    fn describe_prefers_the_participants_message_and_truncates() {
        let s = StatusCode::UNPROCESSABLE_ENTITY;
        assert_eq!(
            describe(s, r#"{"error":"invalid email"}"#),
            "422 Unprocessable Entity: invalid email"
        );
        assert_eq!(describe(s, ""), "422 Unprocessable Entity");
        let long = "x".repeat(1000);
        assert!(describe(s, &long).chars().count() < 340);
        assert_eq!(
            describe(s, "line 1\nline 2\u{0}"),
            "422 Unprocessable Entity: line 1\\nline 2\\u0000"
        );
    }
}
