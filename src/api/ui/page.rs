//! What every console page shares: the layout, the response headers, the
//! error page, and the small pieces forms and tables are made of.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{html, Markup, DOCTYPE};

use super::session::{self, Session};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::saga::SagaState;

/// Only what this service serves, no inline script or style (htmx's own
/// indicator styles are turned off in the page's `htmx-config`), forms
/// posting only here, and no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// htmx without `eval` (the CSP forbids it anyway), without inline styles
/// and without keeping pages, which hold partner data, in local storage.
const HTMX_CONFIG: &str = r#"{"allowEval":false,"allowScriptTags":false,"includeIndicatorStyles":false,"historyCacheSize":0}"#;

/// A whole page: navigation, who is signed in, and `body`.
pub fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=(HTMX_CONFIG);
                title { (title) " · saga-orchestrator" }
                link rel="stylesheet" href="/ui/assets/console.css";
                // Declared, so browsers do not ask for a `/favicon.ico`
                // that is not there.
                link rel="icon" type="image/svg+xml" href="/ui/assets/favicon.svg";
                script src="/ui/assets/htmx.min.js" defer {}
            }
            body {
                header {
                    nav {
                        a.brand href="/ui" { "saga-orchestrator" }
                        a href="/ui" { "Overview" }
                        a href="/ui/sagas" { "Sagas" }
                        a href="/ui/dead-letters" { "Dead letters" }
                        span.who {
                            @if let Some(s) = session {
                                "Signed in as " strong #signed-in { (s.admin) }
                                form.inline method="post" action="/ui/sign-out" {
                                    (csrf_field(s))
                                    button type="submit" { "Sign out" }
                                }
                            } @else {
                                a #sign-in href="/ui/sign-in" { "Sign in" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden field every state-changing form carries.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf()); }
}

/// A console answer: the page with headers that keep it private to this
/// browser and this origin.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // Pages hold partner data: not kept by the browser or a proxy.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A page answered 200.
pub fn ok(title: &str, session: Option<&Session>, body: Markup) -> Response {
    respond(StatusCode::OK, layout(title, session, body))
}

/// After a form: on to `to` (303, so a reload does not post again).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// The signed-in admin of this request, if any.
pub fn session_of(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    session::from_request(&state.admins, headers, Utc::now())
}

/// What a console route can fail with: shown as a page with its status.
#[derive(Debug)]
pub enum UiError {
    /// The API's errors, with the same statuses and texts.
    Api(ApiError),
    /// Not signed in where it is needed.
    SignInNeeded,
    /// A form whose CSRF token is not this session's (another site's
    /// form, or a session that ended).
    StaleForm,
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<crate::store::StoreError> for UiError {
    /// As the API answers: the store refusing a request's own data is the
    /// caller's to fix (422), anything else an outage (503).
    fn from(e: crate::store::StoreError) -> Self {
        Self::Api(crate::api::error::store_error(e))
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Self::Api(ApiError::Store(e)) => {
                // The cause goes to the log, not to the page.
                tracing::error!(error = %e, "store error while serving the console");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The saga store is unavailable; try again.".to_string(),
                )
            }
            Self::Api(e) => (e.status_and_code().0, e.to_string()),
            Self::SignInNeeded => (
                StatusCode::UNAUTHORIZED,
                "Sign in with an admin token to see this.".to_string(),
            ),
            Self::StaleForm => (
                StatusCode::FORBIDDEN,
                "This form is from another session; reload the page and try again.".to_string(),
            ),
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let body = html! {
            h1 { (title) }
            p.error #error { (text) }
            @if status == StatusCode::UNAUTHORIZED {
                p { a #sign-in-instead href="/ui/sign-in" { "Sign in" } }
            } @else {
                p { a href="/ui" { "Back to the overview" } }
            }
        };
        respond(status, layout(title, None, body))
    }
}

/// The session, or the sign-in-needed page.
pub fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<Session, UiError> {
    session_of(state, headers).ok_or(UiError::SignInNeeded)
}

/// The session, if the form came from one of its own pages.
pub fn form_session(state: &AppState, headers: &HeaderMap, csrf: &str) -> Result<Session, UiError> {
    let session = signed_in(state, headers)?;
    if session.accepts_csrf(csrf) {
        Ok(session)
    } else {
        Err(UiError::StaleForm)
    }
}

/// A form's hidden fields, one per `(name, value)`: how a bulk form
/// carries its filter on to the preview and the start.
pub fn hidden_inputs(fields: &[(&str, &str)]) -> Markup {
    html! {
        @for (name, value) in fields {
            input type="hidden" name=(name) value=(value);
        }
    }
}

/// The dead-letter page of one channel.
pub fn channel_href(channel: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("channel", channel)
        .finish();
    format!("/ui/dead-letters?{query}")
}

/// A time as shown: UTC to the millisecond.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A saga state as a coloured label.
pub fn state_badge(state: SagaState) -> Markup {
    html! { span class={ "state state-" (state.as_str()) } { (state.as_str()) } }
}

/// A form that says why (a saga action, a dead letter's, an abort).
#[derive(Debug, serde::Deserialize)]
pub struct ReasonForm {
    /// The session's CSRF token, from the page the form was on.
    #[serde(default)]
    pub csrf: String,
    /// Why, as the operator typed it.
    #[serde(default)]
    pub reason: String,
}

/// `?notice=`, the code of a note to show once.
#[derive(Debug, serde::Deserialize)]
pub struct NoticeQuery {
    /// See [`notice`].
    #[serde(default)]
    pub notice: String,
}

/// A note shown once after an action, chosen by code so a URL can never
/// put words on the page.
pub fn notice(code: Option<&str>) -> Markup {
    let text = match code {
        Some("retried") => "Retried: compensation runs again.",
        Some("compensating") => "Compensation forced.",
        Some("redriven") => "Redriven: the message is back on its source channel.",
        Some("discarded") => "Discarded.",
        Some("aborted") => "The job was aborted.",
        Some("duplicate") => "The same job was started before; this is that job.",
        Some("signed-in") => "Signed in.",
        _ => return html! {},
    };
    html! { p.notice #notice { (text) } }
}
