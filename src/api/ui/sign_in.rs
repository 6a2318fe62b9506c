//! `/ui/sign-in` and `/ui/sign-out`: the admin token is typed once into a
//! password field and posted; the answer is a session cookie
//! ([`super::session`]). The token is never put in a URL, a page or a log.

use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use maud::html;
use secrecy::SecretString;
use serde::Deserialize;

use super::page::{self, UiError};
use super::session;
use crate::api::auth::holder_of;
use crate::api::AppState;

/// `GET /ui/sign-in`.
pub async fn form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let session = page::session_of(&state, &headers);
    sign_in_page(&state, session.as_ref(), StatusCode::OK, None)
}

fn sign_in_page(
    state: &AppState,
    session: Option<&session::Session>,
    status: StatusCode,
    problem: Option<&str>,
) -> Response {
    let body = html! {
        h1 { "Sign in" }
        @if state.admins.is_empty() {
            p.error #error { "Admin actions are disabled: no ADMIN_TOKEN or ADMIN_TOKENS is configured." }
        } @else {
            @if let Some(s) = session {
                p { "Signed in as " strong { (s.admin) } "." }
            }
            @if let Some(problem) = problem { p.error #error { (problem) } }
            p { "Dead letters, jobs and every action need an admin token. It is sent once, "
                "kept by this browser only as a session that scripts cannot read, and ends when "
                "the browser closes (after 12 hours at the latest)." }
            form method="post" action="/ui/sign-in" {
                label for="token" { "Admin token" }
                input #token type="password" name="token" autocomplete="off" required;
                button #sign-in-submit type="submit" { "Sign in" }
            }
        }
    };
    page::respond(status, page::layout("Sign in", session, body))
}

/// The sign-in form as posted.
#[derive(Deserialize)]
pub struct SignIn {
    token: SecretString,
}

/// `POST /ui/sign-in`: a session for the token's holder.
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    use secrecy::ExposeSecret;
    if state.admins.is_empty() {
        return sign_in_page(&state, None, StatusCode::FORBIDDEN, None);
    }
    let Some(admin) = holder_of(&state.admins, form.token.expose_secret()) else {
        tracing::warn!("console sign-in refused: not an admin token");
        let problem = "That is not one of the configured admin tokens.";
        return sign_in_page(&state, None, StatusCode::UNAUTHORIZED, Some(problem));
    };
    let (value, session) = session::open(admin, Utc::now());
    tracing::info!(admin = %session.admin, "console sign-in");
    let mut response = page::see_other("/ui?notice=signed-in");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::set_cookie(&value, &headers));
    response
}

/// A form that only carries its CSRF token.
#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/sign-out`: forgets the session in this browser.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, UiError> {
    page::form_session(&state, &headers, &form.csrf)?;
    let mut response = page::see_other("/ui").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie(&headers));
    Ok(response)
}
