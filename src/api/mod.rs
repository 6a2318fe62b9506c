//! The orchestrator's HTTP API (docs/contract.md §5), with axum; documented by the
//! OpenAPI document at `/openapi.json` and the page at `/docs`.

mod auth;
mod counts;
mod docs;
mod error;
mod health;
mod openapi;
mod operator;
mod paging;
mod sagas;
mod server;
mod summary;
mod ui;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use docs::SWAGGER_UI_VERSION;
pub use error::ApiError;
pub use openapi::document as openapi_document;
pub use server::serve;

use crate::orchestrator::Orchestrator;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub orchestrator: Orchestrator,
    pub metrics: PrometheusHandle,
    /// Every admin token with its holder's name; none: admin routes refused.
    pub admins: std::sync::Arc<Vec<crate::config::NamedToken>>,
    /// Dead letters, bulk jobs and the audit record.
    pub operator: crate::operator::Operator,
    /// Store-wide counts, shared by the metrics routes.
    pub counts: std::sync::Arc<counts::CountsCache>,
    /// The console's heavier reads, shared by every browser watching it.
    pub console: std::sync::Arc<ui::ConsoleCache>,
}

/// Every documented route. Each handler's `#[utoipa::path]` gives both its
/// axum route and its OpenAPI entry, so the two cannot disagree.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .routes(routes!(summary::summary))
        .routes(routes!(sagas::start, sagas::list))
        .routes(routes!(sagas::get))
        .routes(routes!(sagas::retry))
        .routes(routes!(sagas::compensate))
        .routes(routes!(operator::jobs::retry_sagas))
        .routes(routes!(operator::dead_letters::list))
        .routes(routes!(operator::dead_letters::get))
        .routes(routes!(operator::dead_letters::redrive))
        .routes(routes!(operator::dead_letters::discard))
        .routes(routes!(operator::jobs::redrive_letters))
        .routes(routes!(operator::jobs::get))
        .routes(routes!(operator::jobs::abort))
        .routes(routes!(operator::audit::list))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(docs::page))
}

/// All routes; request bodies are capped at `max_body_bytes`.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let (documented, _) = routes().split_for_parts();
    documented
        .merge(docs::asset_routes())
        .merge(ui::routes())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
