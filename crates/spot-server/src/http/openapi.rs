//! The OpenAPI document of `GET /api/openapi.json`: the operations of every route, from the
//! `#[utoipa::path]` annotations of the handlers the router serves ([`super::router::routes`]:
//! one list for both), the security schemes (the API key in `X-Api-Key`, `?key=` or
//! `Authorization: Bearer`), and each operation's required role from [`auth::need`] (the
//! table the check in front of the router uses), so neither can drift from the code.
//! Built once per process.

use std::sync::LazyLock;

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{
    Content, OpenApi as Document, PathItem, Ref, RefOr, ResponseBuilder, SecurityRequirement,
};
use utoipa::{OpenApi, ToSchema};

use super::auth::{self, Need};

/// The JSON error body every refusal and failure is answered with
/// ([`crate::response::error`]): `error` says what went wrong and what to do; some carry
/// more fields (`field`, `role`, `needs`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, and what to do.
    pub error: String,
}

/// The security schemes: one API key, in any of three places.
const SCHEMES: [&str; 3] = ["api_key", "key_query", "bearer"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "spot",
        description = "The spot server's HTTP API: spot ingest, the live state's collections, \
            access control, and derived events pushed over WebSocket, Server-Sent Events and \
            webhooks. Each operation's `x-spot-role` is the API key role it needs (`read` < \
            `write` < `admin`); `public` needs none, `spot` is spot admission (the server's \
            --spot-admission). `/metrics` is public with --metrics-public."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "index", description = "Where to go from here"),
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "ingest", description = "Spots' event streams"),
        (name = "resources", description = "The live state"),
        (name = "sets", description = "Item lists and spot lists that applications keep"),
        (name = "access", description = "API keys and spot enrolment"),
        (name = "push", description = "Derived events to applications (docs/push.md)"),
    )
)]
struct Base;

/// The document the routes' operations are added to: info, tags, schemas, the security
/// schemes.
pub fn base() -> Document {
    let mut doc = Base::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        SCHEMES[0],
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-Api-Key",
            "An API key (`spot keys create`; the first admin key is in <data dir>/admin.key)",
        ))),
    );
    components.add_security_scheme(
        SCHEMES[1],
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "key",
            "The API key as a query parameter (for clients that cannot set headers, e.g. \
             a browser's EventSource); removed before the route sees the query",
        ))),
    );
    components.add_security_scheme(
        SCHEMES[2],
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    doc
}

/// The whole document: the routes' operations with their security.
pub fn document() -> Document {
    let mut doc = super::router::routes().into_openapi();
    for (path, item) in doc.paths.paths.iter_mut() {
        secure(path, item);
    }
    doc
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        serde_json::to_string(&document()).expect("the OpenAPI document serializes")
    });
    &JSON
}

/// Sets each operation of `item` at `path`: its security, `x-spot-role` and, when it needs
/// a key, the `401`/`403` answers.
fn secure(path: &str, item: &mut PathItem) {
    let ops = [
        (hyper::Method::GET, &mut item.get),
        (hyper::Method::POST, &mut item.post),
        (hyper::Method::PUT, &mut item.put),
        (hyper::Method::DELETE, &mut item.delete),
    ];
    for (method, op) in ops {
        let Some(op) = op else { continue };
        let need = auth::need(&method, path, false);
        let role = match need {
            Need::Public => "public",
            Need::Spot => "spot",
            Need::Key(role) => role.as_str(),
        };
        op.extensions
            .get_or_insert_with(Default::default)
            .insert("x-spot-role".into(), role.into());
        let Need::Key(role) = need else {
            op.security = Some(Vec::new());
            continue;
        };
        op.security = Some(
            SCHEMES
                .iter()
                .map(|scheme| SecurityRequirement::new(*scheme, [role.as_str()]))
                .collect(),
        );
        let refusal = |description: String| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                    )
                    .build(),
            )
        };
        let responses = &mut op.responses.responses;
        responses.insert(
            "401".into(),
            refusal("No valid API key (WWW-Authenticate: Bearer)".into()),
        );
        responses.insert(
            "403".into(),
            refusal(format!("The key's role is below {}", role.as_str())),
        );
        responses.insert(
            "429".into(),
            refusal("Too many failed key attempts from this address (Retry-After)".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_says_its_role_and_key_routes_their_security() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes["api_key"]["name"], "X-Api-Key");
        assert_eq!(schemes["key_query"]["in"], "query");
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        let role = |path: &str, method: &str| doc["paths"][path][method]["x-spot-role"].clone();
        assert_eq!(role("/", "get"), "public");
        assert_eq!(role("/healthz", "get"), "public");
        assert_eq!(role("/readyz", "get"), "public");
        assert_eq!(role("/api/openapi.json", "get"), "public");
        assert_eq!(role("/api", "get"), "read");
        assert_eq!(role("/api/spots/{serial}/events", "post"), "spot");
        assert_eq!(role("/api/{collection}/{id}", "put"), "write");
        assert_eq!(role("/api/keys/{id}", "delete"), "admin");
        assert_eq!(role("/api/subscriptions", "get"), "admin");
        assert_eq!(role("/api/stream", "get"), "read");
        assert_eq!(role("/api/{collection}", "post"), "write");
        assert_eq!(role("/api/{collection}/{id}", "delete"), "write");
        assert_eq!(role("/api/subscriptions/{id}/events", "get"), "admin");
        let put = &doc["paths"]["/api/{collection}/{id}"]["put"];
        assert_eq!(put["security"][0]["api_key"][0], "write");
        assert_eq!(
            put["responses"]["403"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert_eq!(
            doc["paths"]["/healthz"]["get"]["security"],
            serde_json::json!([])
        );
        // The subscriptions' schemas are spot-push's own types.
        let schemas = &doc["components"]["schemas"];
        let shown = &schemas["WebhookSubscription"]["properties"];
        for field in [
            "state",
            "not_queued_count",
            "queued_count",
            "delivered_count",
            "has_secret",
        ] {
            assert!(shown.get(field).is_some(), "{field}: {shown}");
        }
        assert_eq!(
            schemas["SubscriptionState"]["enum"],
            serde_json::json!(["active", "overflowed"])
        );
        assert!(schemas["SubscriptionInput"]["properties"]
            .get("secret")
            .is_some());
    }
}
