//! `/ui`: the operator console, served by the service itself.
//!
//! Pages are rendered on the server (maud) and work as plain HTML forms
//! and links; htmx, vendored in `assets/ui/` (see its `VENDORED.md`),
//! only refreshes the live parts (the overview, a running job) in place.
//! Every asset is in the binary and the pages carry a strict
//! `Content-Security-Policy`: nothing loads from anywhere else, no inline
//! script or style runs. Reads that the API leaves open (sagas, counts)
//! are open here too; dead letters, jobs and every action need a sign-in
//! with an admin token ([`session`]), whose name is recorded as who acted.

mod chart;
mod jobs;
mod letters;
mod overview;
mod page;
mod sagas;
mod session;
mod sign_in;
mod timeline;

pub use overview::ConsoleCache;

use axum::routing::{get, post};
use axum::Router;

use super::docs::{static_routes, Asset};
use super::AppState;

/// The console's files, embedded.
const ASSETS: [Asset; 3] = [
    Asset {
        path: "/ui/assets/htmx.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../assets/ui/htmx.min.js"),
    },
    Asset {
        path: "/ui/assets/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../assets/ui/console.css"),
    },
    Asset {
        path: "/ui/assets/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../../assets/ui/favicon.svg"),
    },
];

/// Every console route. Undocumented in the OpenAPI document on purpose:
/// they answer HTML for people, and the JSON routes do the same work.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(overview::page))
        .route("/ui/overview/live", get(overview::live))
        .route("/ui/sign-in", get(sign_in::form).post(sign_in::sign_in))
        .route("/ui/sign-out", post(sign_in::sign_out))
        .route("/ui/sagas", get(sagas::list))
        .route("/ui/sagas/retry", post(sagas::bulk_retry))
        .route("/ui/sagas/{saga_id}", get(sagas::detail))
        .route("/ui/sagas/{saga_id}/retry", post(sagas::retry))
        .route("/ui/sagas/{saga_id}/compensate", post(sagas::compensate))
        .route("/ui/dead-letters", get(letters::list))
        .route("/ui/dead-letters/redrive", post(letters::bulk_redrive))
        .route("/ui/dead-letters/{id}", get(letters::detail))
        .route("/ui/dead-letters/{id}/redrive", post(letters::redrive))
        .route("/ui/dead-letters/{id}/discard", post(letters::discard))
        .route("/ui/jobs/{job_id}", get(jobs::page))
        .route("/ui/jobs/{job_id}/live", get(jobs::live))
        .route("/ui/jobs/{job_id}/abort", post(jobs::abort))
        .merge(static_routes(&ASSETS))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout references exactly the assets served, by absolute path
    /// on this host.
    #[test]
    fn the_layout_loads_only_served_assets() {
        let html = page::layout("t", None, maud::html! {}).into_string();
        for asset in &ASSETS {
            assert!(html.contains(asset.path), "{} is unused", asset.path);
        }
        assert!(!html.contains("//"), "no absolute URLs: {html}");
    }
}
