//! `GET /docs`: Swagger UI on `/openapi.json`, served from inside the
//! binary so the page works with no network access (no CDN). The vendored
//! files and their licence live in `assets/docs/` (see its `VENDORED.md`).

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The vendored `swagger-ui-dist` release (see `assets/docs/VENDORED.md`);
/// a test checks the bundle says the same.
pub const SWAGGER_UI_VERSION: &str = "5.35.0";

const INDEX_HTML: &str = include_str!("../../assets/docs/index.html");
const INIT_JS: &str = include_str!("../../assets/docs/init.js");
const BUNDLE_JS: &[u8] = include_bytes!("../../assets/docs/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../../assets/docs/swagger-ui.css");
const FAVICON: &[u8] = include_bytes!("../../assets/docs/favicon-32x32.png");

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// The page may load only what this service serves: a stray CDN link (or a
/// Swagger UI default that phones home) fails loudly in the browser
/// instead of working only while online. Swagger UI sets inline styles and
/// uses `data:` images in its CSS, hence those two allowances.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A file served from inside the binary (under `/docs/` or `/ui/assets/`).
pub struct Asset {
    /// Its URL path.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Everything the page loads; the page's own HTML references exactly these.
pub const ASSETS: [Asset; 4] = [
    Asset {
        path: "/docs/swagger-ui-bundle.js",
        content_type: JAVASCRIPT,
        body: BUNDLE_JS,
    },
    Asset {
        path: "/docs/swagger-ui.css",
        content_type: "text/css; charset=utf-8",
        body: CSS,
    },
    Asset {
        path: "/docs/init.js",
        content_type: JAVASCRIPT,
        body: INIT_JS.as_bytes(),
    },
    Asset {
        path: "/docs/favicon-32x32.png",
        content_type: "image/png",
        body: FAVICON,
    },
];

/// `GET /docs`: the interactive API page.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "operations",
    summary = "Interactive API page",
    description = "Swagger UI on `/openapi.json`. Every asset is served by this service (no network access needed).",
    responses((status = 200, description = "The page.", body = String, content_type = "text/html"))
)]
pub async fn page(headers: HeaderMap) -> Response {
    static ETAG: OnceLock<HeaderValue> = OnceLock::new();
    let etag = ETAG.get_or_init(|| etag_of(INDEX_HTML.as_bytes()));
    let mut response = serve(
        INDEX_HTML.as_bytes(),
        "text/html; charset=utf-8",
        etag,
        &headers,
    );
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    response
}

/// The page's assets, at the paths in [`ASSETS`]. Undocumented in the
/// OpenAPI document on purpose: they are the page's implementation.
pub fn asset_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    static_routes(&ASSETS)
}

/// A route for each of `assets`, answered with [`serve`] (the console's
/// assets are served the same way).
pub(super) fn static_routes<S: Clone + Send + Sync + 'static>(
    assets: &'static [Asset],
) -> Router<S> {
    assets.iter().fold(Router::new(), |router, asset| {
        // Hashed once here, not per request (the bundle is 1.7 MB).
        let etag = etag_of(asset.body);
        let (body, content_type) = (asset.body, asset.content_type);
        router.route(
            asset.path,
            get(
                move |headers: HeaderMap| async move { serve(body, content_type, &etag, &headers) },
            ),
        )
    })
}

/// Answers with `body`, or 304 when the client already has it.
///
/// `no-cache` (revalidate every time) with a content-hash ETag rather than
/// a long max-age: the URLs carry no version, so this is what keeps a
/// browser from running an old bundle after an upgrade, while a
/// revalidation costs a 304 and no body.
fn serve(
    body: &'static [u8],
    content_type: &'static str,
    etag: &HeaderValue,
    request: &HeaderMap,
) -> Response {
    let cached = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/").as_bytes() == etag.as_bytes()
        });
    let common = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if cached {
        (StatusCode::NOT_MODIFIED, common).into_response()
    } else {
        (
            common,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response()
    }
}

/// A strong ETag from the content (FNV-1a and length): it changes exactly
/// when the served bytes do, with no version to keep in step by hand.
fn etag_of(body: &[u8]) -> HeaderValue {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // Hex digits, a dash and quotes only: always a valid header value.
    HeaderValue::from_str(&format!("\"{hash:016x}-{}\"", body.len()))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every local URL the page references is one we serve, and it
    /// references nothing else (no CDN).
    #[test]
    fn the_page_references_only_served_assets() {
        let mut refs = Vec::new();
        for attr in ["src=\"", "href=\""] {
            for part in INDEX_HTML.split(attr).skip(1) {
                refs.push(part.split('"').next().unwrap_or_default().to_string());
            }
        }
        assert!(refs.len() >= 4, "{refs:?}");
        for r in &refs {
            assert!(
                ASSETS.iter().any(|a| a.path == r),
                "{r} is referenced but not served"
            );
        }
        for a in &ASSETS {
            assert!(refs.iter().any(|r| r == a.path), "{} is unused", a.path);
        }
        assert!(!INDEX_HTML.contains("//"), "no absolute URLs in the page");
        assert!(INIT_JS.contains("\"/openapi.json\""));
        assert!(INIT_JS.contains("validatorUrl: null"));
    }

    #[test]
    fn the_vendored_bundle_is_the_documented_version() {
        let needle = format!("PACKAGE_VERSION:\"{SWAGGER_UI_VERSION}\"");
        let bundle = String::from_utf8_lossy(BUNDLE_JS);
        assert!(
            bundle.contains(&needle),
            "bundle is not {SWAGGER_UI_VERSION}"
        );
    }

    #[test]
    fn etags_are_per_content_and_answer_304() {
        let tag = etag_of(CSS);
        assert_eq!(tag, etag_of(CSS));
        assert_ne!(tag, etag_of(BUNDLE_JS));
        let mut headers = HeaderMap::new();
        let fresh = serve(CSS, "text/css", &tag, &headers);
        assert_eq!(fresh.status(), StatusCode::OK);
        assert_eq!(fresh.headers()[header::CACHE_CONTROL], "no-cache");
        headers.insert(header::IF_NONE_MATCH, tag.clone());
        let not_modified = serve(CSS, "text/css", &tag, &headers);
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(not_modified.headers()[header::ETAG], tag);
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"other\", W/\"x\""),
        );
        let other = serve(CSS, "text/css", &tag, &headers);
        assert_eq!(other.status(), StatusCode::OK);
    }
}
