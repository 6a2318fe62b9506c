//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the
//! handlers' `#[utoipa::path]` annotations and the types they return.
//!
//! Routes are registered through `utoipa_axum` (see [`super::routes`]), so
//! a route cannot be served without being documented, nor documented
//! without being served.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, Ref, RefOr, Required};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::saga::{HistoryEntry, SagaState, Step};

/// Name of the admin bearer-token security scheme.
pub const ADMIN_SCHEME: &str = "admin_token";

/// The document's fixed parts; paths and schemas are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "saga-orchestrator",
        description = "Runs one saga per `PartnerCreated` event: create the partner's alliance, or compensate by deleting the partner. Errors are JSON `{\"error\", \"detail\"}`; any route answers 405 to a method it does not support, and unknown paths 404.",
    ),
    modifiers(&Security),
    tags(
        (name = "sagas", description = "Start, list and inspect sagas."),
        (name = "admin", description = "Operator actions; need `Authorization: Bearer $ADMIN_TOKEN` (refused with 403 when no token is configured)."),
        (name = "operations", description = "Health, readiness, metrics and this documentation."),
    )
)]
pub struct ApiDoc;

/// Declares the admin bearer scheme that the admin routes refer to.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The value of `ADMIN_TOKEN`. A missing or wrong token is 401; with no token configured admin routes answer 403.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The whole document, built once: it depends only on the code.
pub fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, mut doc) = super::routes().split_for_parts();
        // Stated here rather than left to utoipa's default, so the document
        // always names the build that serves it.
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        optional_bodies(&mut doc);
        doc
    })
}

/// utoipa renders an `Option<T>` request body as "`null` or T"; what the
/// admin routes accept is "no body, or T" (a literal `null` is refused).
fn optional_bodies(doc: &mut Document) {
    let operations = doc.paths.paths.values_mut().flat_map(|item| {
        [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.patch.as_mut(),
            item.delete.as_mut(),
        ]
        .into_iter()
        .flatten()
    });
    for op in operations {
        let Some(body) = op.request_body.as_mut() else {
            continue;
        };
        let mut optional = false;
        for content in body.content.values_mut() {
            if let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema {
                let mut items = one_of.items.iter().filter(|item| !is_null(item));
                if let (Some(only), None) = (items.next(), items.next()) {
                    content.schema = Some(only.clone());
                    optional = true;
                }
            }
        }
        if optional {
            body.required = Some(Required::False);
        }
    }
}

fn is_null(schema: &RefOr<Schema>) -> bool {
    matches!(schema, RefOr::T(Schema::Object(o)) if o.schema_type == Type::Null.into())
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "OpenAPI document",
    description = "This document (OpenAPI 3.1).",
    responses((status = 200, description = "The document.", content_type = "application/json"))
)]
pub async fn openapi_json() -> impl IntoResponse {
    static JSON: OnceLock<serde_json::Value> = OnceLock::new();
    let mut doc = JSON
        .get_or_init(|| serde_json::to_value(document()).unwrap_or_default())
        .clone();
    with_fresh_example_partner(&mut doc);
    // `no-store`: each reader gets an example partner of their own.
    ([(header::CACHE_CONTROL, "no-store")], Json(doc))
}

/// Gives `POST /sagas`'s example payload a partner id of its own, so that
/// "Try it out" starts a new saga for each person who tries it: with one
/// fixed id, everyone after the first would be answered with the first
/// person's saga (one saga per partner).
fn with_fresh_example_partner(doc: &mut serde_json::Value) {
    let example =
        doc.pointer_mut("/components/schemas/StartBody/properties/payload/examples/0/partner_id");
    if let Some(partner_id) = example {
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        *partner_id = serde_json::Value::String(format!("p-try-{}", &fresh[..12]));
    }
}

// The saga domain types live in `crate::saga`, which knows nothing of HTTP;
// their schemas are written here instead of derived there. Unit tests
// below compare each with what serde actually writes, so they cannot drift.

impl PartialSchema for SagaState {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(SagaState::ALL.iter().map(|s| s.as_str())))
            .description(Some(
                "`started` → `creating_alliance` (`awaiting_alliance` in broker mode) → `completed`; or → `compensating` → `compensated`, or `failed` when compensation gives up. `completed`, `compensated` and `failed` are terminal (a `failed` saga can be retried).",
            ))
            .into()
    }
}

impl ToSchema for SagaState {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SagaState")
    }
}

impl PartialSchema for Step {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(
                [Step::CreateAlliance, Step::DeletePartner].map(|s| s.as_str()),
            ))
            .description(Some(
                "The participant call a saga is on (or last made): `create_alliance` (alliances) or `delete_partner` (integrations, compensation).",
            ))
            .into()
    }
}

impl ToSchema for Step {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Step")
    }
}

impl PartialSchema for HistoryEntry {
    fn schema() -> RefOr<Schema> {
        let text = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        let text_or_null = |description: &str| {
            ObjectBuilder::new()
                .schema_type(
                    [Type::String, Type::Null]
                        .into_iter()
                        .collect::<utoipa::openapi::schema::SchemaType>(),
                )
                .description(Some(description))
        };
        let state = || RefOr::Ref(Ref::from_schema_name(SagaState::name()));
        ObjectBuilder::new()
            .description(Some("One stored transition of a saga."))
            .property(
                "seq",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                    .minimum(Some(1))
                    .description(Some("1-based position in the saga's history.")),
            )
            .required("seq")
            .property(
                "from_state",
                OneOfBuilder::new()
                    .item(ObjectBuilder::new().schema_type(Type::Null))
                    .item(state())
                    .description(Some("`null` for the transition that created the saga.")),
            )
            .required("from_state")
            .property("to_state", state())
            .required("to_state")
            .property(
                "reason",
                text("Why, as a code: `partner_created`, `alliance_created`, `alliance_rejected`, `attempt_failed`, `forced_by_operator`…"),
            )
            .required("reason")
            .property(
                "detail",
                text_or_null("What happened, for a person (an error message, an event id)."),
            )
            .required("detail")
            .property(
                "at",
                text("When it was stored (RFC 3339, UTC).")
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
            )
            .required("at")
            .property(
                "instance_id",
                text_or_null("The instance (`INSTANCE_ID`) that made the transition; `null` for rows stored before instances were recorded."),
            )
            .required("instance_id")
            .property(
                "events",
                utoipa::openapi::schema::ArrayBuilder::new()
                    .items(text("An `event_type` from §2's `saga-events` row."))
                    .description(Some("The saga events this transition emitted for `saga-events`, in order (written to the outbox with it, and published from there); empty when it emitted none, and on rows stored before they were recorded.")),
            )
            .required("events")
            .into()
    }
}

impl ToSchema for HistoryEntry {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((SagaState::name().into(), SagaState::schema()));
    }
}

/// The schema of a `PartnerCreated` payload (docs/contract.md §3), for `POST /sagas`.
pub fn partner_payload_schema() -> impl Into<RefOr<Schema>> {
    let text = |description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .description(Some(description))
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "A `PartnerCreated` payload. Fields beyond these are kept and passed on to alliances.",
        ))
        .property(
            "partner_id",
            text("The partner's id: at most 256 characters, no NUL, not `.` or `..`. A partner has one saga until that saga is compensated: starting it again answers with that saga, so use a new id to try another."),
        )
        .required("partner_id")
        .property("name", text("The partner's name."))
        .required("name")
        .property(
            "email",
            ObjectBuilder::new()
                .schema_type(
                    [Type::String, Type::Null]
                        .into_iter()
                        .collect::<utoipa::openapi::schema::SchemaType>(),
                )
                .description(Some("Optional contact address.")),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .examples([serde_json::json!({
            "partner_id": "p-1",
            "name": "Acme",
            "email": "ops@acme.test",
            "tier": "gold"
        })])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::Utc;
    use serde_json::{json, Value};

    use super::*;

    fn doc_json() -> Value {
        serde_json::to_value(document()).expect("the document serializes")
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn documents_every_route_of_the_contract() {
        let doc = doc_json();
        assert!(doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3."));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let expected = [
            ("/health", "get"),
            ("/ready", "get"),
            ("/metrics", "get"),
            ("/metrics/summary", "get"),
            ("/sagas", "post"),
            ("/sagas", "get"),
            ("/sagas/{saga_id}", "get"),
            ("/sagas/{saga_id}/retry", "post"),
            ("/sagas/{saga_id}/compensate", "post"),
            ("/openapi.json", "get"),
            ("/docs", "get"),
            ("/sagas/retry", "post"),
            ("/dead-letters", "get"),
            ("/dead-letters/{id}", "get"),
            ("/dead-letters/{id}/redrive", "post"),
            ("/dead-letters/{id}/discard", "post"),
            ("/dead-letters/redrive", "post"),
            ("/jobs/{job_id}", "get"),
            ("/jobs/{job_id}/abort", "post"),
            ("/audit", "get"),
        ];
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in keys(item) {
                documented.insert((path.clone(), method));
            }
        }
        let expected: BTreeSet<_> = expected
            .iter()
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        assert_eq!(documented, expected);
    }

    #[test]
    fn admin_routes_need_the_bearer_scheme_and_others_do_not() {
        let doc = doc_json();
        let scheme = &doc["components"]["securitySchemes"][ADMIN_SCHEME];
        assert_eq!(scheme["type"], "http");
        assert_eq!(scheme["scheme"], "bearer");
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("operations") {
                // Every route that changes state, and the operator reads
                // (dead letters, jobs, the audit record), and only those.
                let operator_read = ["/dead-letters", "/jobs", "/audit"]
                    .iter()
                    .any(|p| path.starts_with(p));
                let admin = method == "post" || operator_read;
                let secured = op["security"] == json!([{ ADMIN_SCHEME: [] }]);
                assert_eq!(secured, admin, "{method} {path}");
                let responses = keys(&op["responses"]);
                if admin {
                    for status in ["401", "403"] {
                        assert!(responses.contains(status), "{path}: {status}");
                    }
                    assert!(responses.iter().any(|s| s.starts_with('2')), "{path}");
                }
                if path.ends_with("}/retry") || path.ends_with("/compensate") {
                    for status in ["404", "409"] {
                        assert!(responses.contains(status), "{path}: {status}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_referenced_schema_is_defined() {
        let doc = doc_json();
        let text = doc.to_string();
        let defined = keys(&doc["components"]["schemas"]);
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(defined.contains(name), "{name} is referenced, not defined");
        }
        for name in [
            "Saga",
            "SagaDetail",
            "SagaState",
            "Step",
            "HistoryEntry",
            "Summary",
            "ErrorBody",
        ] {
            assert!(defined.contains(name), "{name} missing: {defined:?}");
        }
    }

    #[test]
    fn admin_bodies_are_optional_objects() {
        let doc = doc_json();
        for path in ["/sagas/{saga_id}/retry", "/sagas/{saga_id}/compensate"] {
            let body = &doc["paths"][path]["post"]["requestBody"];
            assert_eq!(body["required"], false, "{path}");
            assert_eq!(
                body["content"]["application/json"]["schema"],
                json!({"$ref": "#/components/schemas/ReasonBody"}),
                "{path}"
            );
        }
        let start = &doc["paths"]["/sagas"]["post"]["requestBody"];
        assert_eq!(start["required"], true);
    }

    /// Examples written by hand have exactly the documented fields, and
    /// fields always written (nullable or not) are marked required.
    #[test]
    fn examples_and_required_fields_match_the_schemas() {
        let doc = doc_json();
        let schemas = &doc["components"]["schemas"];
        for (name, schema) in schemas.as_object().expect("schemas") {
            let Some(example) = schema.get("example").filter(|e| e.is_object()) else {
                continue;
            };
            assert_eq!(keys(example), keys(&schema["properties"]), "{name}");
        }
        let required = |name: &str| -> BTreeSet<String> {
            serde_json::from_value(schemas[name]["required"].clone()).expect("required")
        };
        assert!(required("Saga").contains("alliance_id"));
        assert!(required("Saga").contains("last_error"));
        assert!(required("SagaPage").contains("next_cursor"));
        assert_eq!(
            keys(&schemas["Summary"]["example"]["sagas"]),
            keys(&schemas["SagaCounts"]["properties"])
        );
    }

    #[test]
    fn list_query_parameters_are_documented() {
        let doc = doc_json();
        let params = doc["paths"]["/sagas"]["get"]["parameters"]
            .as_array()
            .expect("parameters");
        let names: BTreeSet<_> = params
            .iter()
            .map(|p| {
                assert_eq!(p["in"], "query");
                p["name"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        let expected: BTreeSet<_> = [
            "state",
            "partner_id",
            "correlation_id",
            "since",
            "until",
            "limit",
            "cursor",
        ]
        .map(String::from)
        .into();
        assert_eq!(names, expected);
    }

    /// The hand-written schemas match what serde writes.
    #[test]
    fn domain_schemas_match_their_serialization() {
        let state = serde_json::to_value(SagaState::schema()).expect("schema");
        let documented: Vec<_> = state["enum"].as_array().expect("enum").clone();
        let actual: Vec<_> = SagaState::ALL
            .iter()
            .map(|s| serde_json::to_value(s).expect("state"))
            .collect();
        assert_eq!(documented, actual);

        let step = serde_json::to_value(Step::schema()).expect("schema");
        for s in [Step::CreateAlliance, Step::DeletePartner] {
            let v = serde_json::to_value(s).expect("step");
            assert!(step["enum"].as_array().expect("enum").contains(&v), "{v}");
        }

        let entry = HistoryEntry {
            seq: 1,
            from_state: None,
            to_state: SagaState::Started,
            reason: "partner_created".into(),
            detail: None,
            at: Utc::now(),
            instance_id: Some("host-1-ab12".into()),
            events: Vec::new(),
        };
        let written = serde_json::to_value(&entry).expect("entry");
        let schema = serde_json::to_value(HistoryEntry::schema()).expect("schema");
        assert_eq!(keys(&written), keys(&schema["properties"]));
        let required: BTreeSet<String> =
            serde_json::from_value(schema["required"].clone()).expect("required");
        assert_eq!(required, keys(&written), "every field is always written");
    }
}
