//! Participants over HTTP (CONTRACT §4), with reqwest.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use tracing::Instrument;
use url::Url;

use super::{CallOutcome, Participants};
use crate::saga::{Saga, Step};
use crate::telemetry;

/// The longest error body kept in a saga's `last_error`.
const MAX_ERROR_CHARS: usize = 300;

/// Alliances and integrations reached over HTTP.
#[derive(Debug, Clone)]
pub struct HttpParticipants {
    client: Client,
    alianzas: Url,
    integraciones: Url,
}

impl HttpParticipants {
    /// A client whose every call is bounded by `step_timeout`.
    pub fn new(
        alianzas: Url,
        integraciones: Url,
        step_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .timeout(step_timeout)
            .connect_timeout(step_timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("saga-orchestrator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            alianzas,
            integraciones,
        })
    }

    async fn create_alliance(&self, saga: &Saga, traceparent: Option<&str>) -> CallOutcome {
        let url = join(&self.alianzas, &["alliances"]);
        let body = json!({
            "partner_id": saga.partner_id,
            "name": saga.payload.get("name"),
            "email": saga.payload.get("email"),
            "saga_id": saga.saga_id,
            "correlation_id": saga.correlation_id,
        });
        let request = self
            .client
            .post(url)
            .headers(headers(saga, Step::CreateAlliance, traceparent))
            .json(&body);
        match request.send().await {
            Err(e) => transport_failure(e),
            Ok(response) => classify_create(response).await,
        }
    }

    async fn delete_partner(&self, saga: &Saga, traceparent: Option<&str>) -> CallOutcome {
        let url = join(&self.integraciones, &["partners", &saga.partner_id]);
        let request =
            self.client
                .delete(url)
                .headers(headers(saga, Step::DeletePartner, traceparent));
        match request.send().await {
            Err(e) => transport_failure(e),
            Ok(response) => classify_delete(response).await,
        }
    }
}

#[async_trait]
impl Participants for HttpParticipants {
    async fn call(&self, saga: &Saga, step: Step) -> CallOutcome {
        // A child of the saga's span: with OpenTelemetry on, the participant
        // gets this span's traceparent, so its work joins the same trace.
        let span = tracing::info_span!("participant_call", step = step.as_str());
        let traceparent = telemetry::traceparent_of(&span).or_else(|| saga.traceparent.clone());
        let call = async {
            match step {
                Step::CreateAlliance => self.create_alliance(saga, traceparent.as_deref()).await,
                Step::DeletePartner => self.delete_partner(saga, traceparent.as_deref()).await,
            }
        };
        call.instrument(span).await
    }
}

/// 200/201 (or 409: already done) with an `alliance_id` → success;
/// 400/422 → business rejection; 408/429/5xx → transient; any other 4xx is a
/// refusal no retry will change, so it compensates too. Anything else
/// (an unexpected 2xx or 3xx) is not an answer we understand: retried.
async fn classify_create(response: Response) -> CallOutcome {
    let status = response.status();
    let retry_after = retry_after(response.headers(), Utc::now());
    let body = match response.text().await {
        Ok(body) => body,
        Err(e) => {
            return CallOutcome::Failed {
                error: format!("{status}, but reading the body failed: {e}"),
                retry_after,
            }
        }
    };
    match status.as_u16() {
        200 | 201 | 409 => match alliance_id(&body) {
            Some(alliance_id) => CallOutcome::Succeeded {
                alliance_id: Some(alliance_id),
                detail: None,
            },
            None => CallOutcome::Failed {
                error: format!("{status} without an alliance_id: {}", snippet(&body)),
                retry_after,
            },
        },
        408 | 429 | 500..=599 => CallOutcome::Failed {
            error: describe(status, &body),
            retry_after,
        },
        400..=499 => CallOutcome::Rejected {
            error: describe(status, &body),
        },
        _ => CallOutcome::Failed {
            error: format!("unexpected answer {}", describe(status, &body)),
            retry_after,
        },
    }
}

/// 200/202/204/404 → the partner is gone; anything else is retried.
async fn classify_delete(response: Response) -> CallOutcome {
    let status = response.status();
    match status.as_u16() {
        200 | 202 | 204 | 404 => CallOutcome::Succeeded {
            alliance_id: None,
            detail: None,
        },
        _ => {
            let retry_after = retry_after(response.headers(), Utc::now());
            let body = response.text().await.unwrap_or_default();
            CallOutcome::Failed {
                error: describe(status, &body),
                retry_after,
            }
        }
    }
}

fn transport_failure(e: reqwest::Error) -> CallOutcome {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The source chain says why (refused, reset, DNS…); the top level rarely does.
    let mut error = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        error.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    CallOutcome::Failed {
        error,
        retry_after: None,
    }
}

fn headers(saga: &Saga, step: Step, traceparent: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        // Values from input that are not valid header text are left out
        // rather than failing the call.
        if let Ok(v) = value.parse() {
            headers.insert(name, v);
        }
    };
    put("idempotency-key", &step.idempotency_key(saga.saga_id));
    put("x-correlation-id", &saga.correlation_id);
    if let Some(tp) = traceparent {
        put("traceparent", tp);
    }
    headers
}

/// `base` with path segments appended, each percent-encoded.
fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

fn alliance_id(body: &str) -> Option<String> {
    match serde_json::from_str::<Value>(body)
        .ok()?
        .get("alliance_id")?
    {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Status plus the participant's own words (`error`/`detail` of a JSON body, or the text).
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
    let said = snippet(&said);
    if said.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {said}")
    }
}

fn snippet(text: &str) -> String {
    let trimmed = text.trim();
    match trimmed.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_string(),
    }
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
        let cases: [(u16, &str, &str); 14] = [
            (200, ok, "succeeded"),
            (201, ok, "succeeded"),
            (409, ok, "succeeded"),
            (201, "{}", "failed"),
            (409, "", "failed"),
            (400, "", "rejected"),
            (422, r#"{"error":"bad email"}"#, "rejected"),
            (404, "", "rejected"),
            (408, "", "failed"),
            (429, "", "failed"),
            (500, "", "failed"),
            (503, "", "failed"),
            (202, "", "failed"),
            (302, "", "failed"),
        ];
        for (status, body, expected) in cases {
            let outcome = classify_create(response(status, body)).await;
            assert_eq!(outcome.label(), expected, "{status} {body}: {outcome:?}");
        }
        let CallOutcome::Rejected { error } =
            classify_create(response(422, r#"{"error":"bad email"}"#)).await
        else {
            panic!()
        };
        assert!(error.contains("bad email"));
    }

    #[tokio::test]
    async fn delete_answers_are_classified_as_the_contract_says() {
        for (status, expected) in [
            (200, "succeeded"),
            (202, "succeeded"),
            (204, "succeeded"),
            (404, "succeeded"),
            (400, "failed"),
            (409, "failed"),
            (500, "failed"),
            (503, "failed"),
        ] {
            assert_eq!(
                classify_delete(response(status, "")).await.label(),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn join_appends_encoded_segments_to_any_base() {
        let base = Url::parse("http://h:8001").unwrap();
        assert_eq!(
            join(&base, &["partners", "p 1/x"]).as_str(),
            "http://h:8001/partners/p%201%2Fx"
        );
        let prefixed = Url::parse("http://h/api/").unwrap();
        assert_eq!(
            join(&prefixed, &["alliances"]).as_str(),
            "http://h/api/alliances"
        );
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
    fn alliance_id_accepts_strings_and_numbers() {
        assert_eq!(
            alliance_id(r#"{"alliance_id":"a-1"}"#).as_deref(),
            Some("a-1")
        );
        assert_eq!(alliance_id(r#"{"alliance_id":42}"#).as_deref(), Some("42"));
        assert_eq!(alliance_id(r#"{"alliance_id":""}"#), None);
        assert_eq!(alliance_id("<html>"), None);
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
    }

    const EVENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const EVENT_SPAN: &str = "00f067aa0ba902b7";

    fn traced_saga() -> Saga {
        let now = Utc::now();
        Saga {
            saga_id: uuid::Uuid::now_v7(),
            event_id: "e-1".into(),
            correlation_id: "c-1".into(),
            partner_id: "p-1".into(),
            state: crate::saga::SagaState::CreatingAlliance,
            step: Step::CreateAlliance,
            attempts: 1,
            alliance_id: None,
            last_error: None,
            payload: serde_json::Map::new(),
            created_at: now,
            updated_at: now,
            deadline_at: now,
            next_attempt_at: None,
            traceparent: Some(format!("00-{EVENT_TRACE}-{EVENT_SPAN}-01")),
            awaiting_reply: false,
            version: 2,
        }
    }

    /// Alliances on a local mock; returns it and the client aimed at it.
    async fn alliances() -> (wiremock::MockServer, HttpParticipants) {
        use wiremock::matchers::method;
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(method("POST"))
            .respond_with(
                wiremock::ResponseTemplate::new(201).set_body_json(json!({"alliance_id": "a-t"})),
            )
            .mount(&server)
            .await;
        let url: Url = server.uri().parse().expect("mock URL");
        let client =
            HttpParticipants::new(url.clone(), url, Duration::from_secs(5)).expect("client");
        (server, client)
    }

    async fn sent_traceparent(server: &wiremock::MockServer) -> String {
        let requests = server.received_requests().await.unwrap_or_default();
        let header = requests[0]
            .headers
            .get("traceparent")
            .expect("traceparent sent");
        header.to_str().expect("text").to_string()
    }

    #[tokio::test]
    async fn without_opentelemetry_the_events_traceparent_is_passed_on() {
        let (server, client) = alliances().await;
        let saga = traced_saga();
        client.call(&saga, Step::CreateAlliance).await;
        assert_eq!(Some(sent_traceparent(&server).await), saga.traceparent);
    }

    #[tokio::test]
    async fn with_opentelemetry_the_call_is_a_span_in_the_events_trace() {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use tracing_subscriber::layer::SubscriberExt;

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        // This test's thread only: the runtime is single-threaded.
        let _default = tracing::subscriber::set_default(subscriber);

        let (server, client) = alliances().await;
        let saga = traced_saga();
        let span = tracing::info_span!("saga");
        telemetry::continue_trace(&span, saga.traceparent.as_deref());
        let outcome = client
            .call(&saga, Step::CreateAlliance)
            .instrument(span.clone())
            .await;
        drop(span);
        assert_eq!(outcome.label(), "succeeded");

        let sent = sent_traceparent(&server).await;
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts.len(), 4, "{sent}");
        assert_eq!(
            parts[1], EVENT_TRACE,
            "the participant joins the event's trace"
        );
        assert_ne!(parts[2], EVENT_SPAN, "as a new span, not the event's");

        let _ = provider.force_flush();
        let spans = exporter.get_finished_spans().expect("spans");
        let named = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
        };
        let (saga_span, call) = (named("saga"), named("participant_call"));
        assert_eq!(call.span_context.span_id().to_string(), parts[2]);
        assert_eq!(call.parent_span_id, saga_span.span_context.span_id());
        assert_eq!(saga_span.parent_span_id.to_string(), EVENT_SPAN);
        for s in [saga_span, call] {
            assert_eq!(s.span_context.trace_id().to_string(), EVENT_TRACE);
        }
    }
}
