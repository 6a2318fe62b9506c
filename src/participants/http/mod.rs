//! Participants over HTTP (docs/contract.md §4), with reqwest.
//!
//! What comes back from a participant is classified in [`classify`]; the
//! URLs sent to are built in [`path`], where a partner id is always exactly
//! one path segment.

mod classify;
mod endpoint;
mod path;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::Client;
use serde_json::json;
use tracing::Instrument;
use url::Url;

use super::{CallOutcome, Participants};
use crate::redact;
use crate::saga::{Saga, Step};
use crate::telemetry;
use classify::{classify_create, classify_delete, error_chain};
use endpoint::Endpoint;
use path::join;

/// Alliances and integrations reached over HTTP.
#[derive(Debug, Clone)]
pub struct HttpParticipants {
    client: Client,
    alliances: Arc<Endpoint>,
    integrations: Arc<Endpoint>,
}

impl HttpParticipants {
    /// A client whose every call is bounded by `step_timeout`.
    pub fn new(
        alliances: Url,
        integrations: Url,
        step_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .timeout(step_timeout)
            .connect_timeout(step_timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(64)
            // A redirect is not an answer: followed, a DELETE could land on
            // another host or path, and a POST turns into a GET. 3xx are
            // classified (retried) like any answer we do not understand.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("saga-orchestrator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            alliances: Arc::new(Endpoint::new("alliances", "ALIANZAS_API_URL", alliances)),
            integrations: Arc::new(Endpoint::new(
                "integrations",
                "INTEGRACIONES_API_URL",
                integrations,
            )),
        })
    }

    async fn create_alliance(&self, saga: &Saga, traceparent: Option<&str>) -> CallOutcome {
        let endpoint = &self.alliances;
        let url = match join(&endpoint.base, &["alliances"]) {
            Ok(url) => url,
            Err(e) => return endpoint.refused(&e),
        };
        let body = json!({
            "partner_id": saga.partner_id,
            "name": saga.payload.get("name"),
            "email": saga.payload.get("email"),
            "saga_id": saga.saga_id,
            "correlation_id": saga.correlation_id,
        });
        let request = self
            .client
            .post(url.clone())
            .headers(headers(saga, Step::CreateAlliance, traceparent))
            .json(&body);
        match request.send().await {
            Err(e) => transport_failure(e, &url),
            Ok(response) => endpoint.answered(&url, classify_create(response).await),
        }
    }

    async fn delete_partner(&self, saga: &Saga, traceparent: Option<&str>) -> CallOutcome {
        let endpoint = &self.integrations;
        let url = match join(&endpoint.base, &["partners", &saga.partner_id]) {
            Ok(url) => url,
            Err(e) => return endpoint.refused(&e),
        };
        let request = self.client.delete(url.clone()).headers(headers(
            saga,
            Step::DeletePartner,
            traceparent,
        ));
        match request.send().await {
            Err(e) => transport_failure(e, &url),
            Ok(response) => endpoint.answered(&url, classify_delete(response).await),
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
        // Whatever the participant said goes into the saga: one last pass
        // so nothing unstorable or secret can, whichever path made it.
        call.instrument(span).await.storable()
    }
}

/// reqwest's own text names the URL with any credentials in it: it is left
/// out and the URL added back redacted.
fn transport_failure(e: reqwest::Error, url: &Url) -> CallOutcome {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    CallOutcome::Failed {
        error: format!("{kind} ({}): {}", redact::url(url), error_chain(e)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

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

    fn saga_of(partner_id: &str, step: Step) -> Saga {
        Saga {
            partner_id: partner_id.into(),
            step,
            ..traced_saga()
        }
    }

    #[tokio::test]
    async fn dot_ids_are_never_sent_and_never_succeed() {
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::any())
            .respond_with(wiremock::ResponseTemplate::new(204))
            .mount(&server)
            .await;
        let url: Url = server.uri().parse().unwrap();
        let client = HttpParticipants::new(url.clone(), url, Duration::from_secs(5)).unwrap();
        for id in [".", "..", ""] {
            let outcome = client
                .call(&saga_of(id, Step::DeletePartner), Step::DeletePartner)
                .await;
            let CallOutcome::Failed { error, .. } = &outcome else {
                panic!("{id:?}: {outcome:?}")
            };
            assert!(error.contains("exactly one path segment"), "{error}");
        }
        assert_eq!(server.received_requests().await.unwrap().len(), 0);
    }

    /// A participant that answers 500 and then streams its body forever.
    async fn endless_body() -> Url {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            let chunk = format!("4000\r\n{}\r\n", "y".repeat(0x4000));
            // Until the client hangs up.
            while socket.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        format!("http://{addr}").parse().unwrap()
    }

    #[tokio::test]
    async fn an_endless_body_is_read_only_in_part() {
        let url = endless_body().await;
        let client = HttpParticipants::new(url.clone(), url, Duration::from_secs(30)).unwrap();
        let started = std::time::Instant::now();
        let outcome = client
            .call(&saga_of("p-1", Step::DeletePartner), Step::DeletePartner)
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stopped reading"
        );
        let CallOutcome::Failed { error, .. } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            error.starts_with("500 Internal Server Error: yyy"),
            "{error}"
        );
        assert!(error.chars().count() < 340, "{error}");
    }

    #[tokio::test]
    async fn transport_errors_never_carry_credentials() {
        let closed = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        for base in [
            format!("http://user:s3cret@127.0.0.1:{closed}"),
            format!("http://%FF:s3cret@127.0.0.1:{closed}"),
        ] {
            let url: Url = base.parse().unwrap();
            let client = HttpParticipants::new(url.clone(), url, Duration::from_secs(5)).unwrap();
            let outcome = client
                .call(&saga_of("p-1", Step::CreateAlliance), Step::CreateAlliance)
                .await;
            let CallOutcome::Failed { error, .. } = &outcome else {
                panic!("{outcome:?}")
            };
            assert!(error.starts_with("connection failed (http://"), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
            assert!(!format!("{client:?}").contains("s3cret"));
        }
    }
}
