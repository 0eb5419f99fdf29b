//! The one router of everything under the listener: the index (`/`, `/api`), health
//! (`/healthz`, `/readyz`), the OpenAPI document (`/api/openapi.json`, [`openapi`]), spot
//! ingest, the REST API, `/metrics`, access control (`/api/keys`, spot enrolment) and the
//! outlets' routes (`/api/ws`, `/api/stream`, `/api/subscriptions[/{id}]`, handed to the
//! outlets' own router), in one axum [`Router`], behind the layer that checks who may call
//! what ([`auth`]) and, when configured, CORS.
//!
//! Every route is a handler with its `#[utoipa::path]` operation, registered through one
//! [`OpenApiRouter`] ([`routes`]): what the router serves and what the OpenAPI document
//! lists are the same list. Unknown paths answer `404`, a known path with another method
//! `405` with `Allow` (the methods of its operations), both with the JSON error body. A
//! trailing `/` is ignored (`/api/spots/` lists spots; spots POST to
//! `/api/spots/{serial}/events/`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::MethodRouter;
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, StatusCode, Uri};
use serde_json::Value;
use spot_push::webhook::{SubscriptionInput, WebhookSubscription};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use super::{auth, openapi};
use crate::api::index::{self, ApiIndex, Health, Index, Status};
use crate::context::Context;
use crate::domain::Write;
use crate::response::{error, json_response};
use crate::{api, dashboard, ingest};

type Ctx = State<Arc<Context>>;

/// The router over `ctx`.
pub fn router(ctx: Arc<Context>) -> Router {
    let (router, _) = routes().split_for_parts();
    // The last layer is the outermost: who may call comes before what the server says of
    // its own failure.
    let router = router
        .fallback(not_found)
        .with_state(ctx.clone())
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            failure_gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            auth::check,
        ));
    match auth::cors(&ctx.access.config().cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Every route with its operations: what [`router`] serves and [`openapi::document`]
/// lists.
pub fn routes() -> OpenApiRouter<Arc<Context>> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(allow(routes!(root)))
        .routes(allow(routes!(healthz)))
        .routes(allow(routes!(readyz)))
        .routes(allow(routes!(metrics)))
        .routes(allow(routes!(api_index)))
        .routes(allow(routes!(openapi_json)))
        .routes(allow(routes!(ingest)))
        .routes(allow(routes!(list_keys, create_key)))
        .routes(allow(routes!(get_key, revoke_key)))
        .routes(allow(routes!(list_enrolments)))
        .routes(allow(routes!(list_spots, enrol)))
        .routes(allow(routes!(list, create)))
        .routes(allow(routes!(get_one, put, delete)))
        .routes(allow(routes!(list_sets, create_set)))
        .routes(allow(routes!(get_set, put_set, delete_set)))
        .routes(allow(routes!(set_members, add_set_members)))
        .routes(allow(routes!(remove_set_member)))
        .routes(allow(routes!(ws)))
        .routes(allow(routes!(stream)))
        .routes(allow(routes!(list_subscriptions, create_subscription)))
        .routes(allow(routes!(
            get_subscription,
            update_subscription,
            delete_subscription
        )))
        .routes(allow(routes!(subscription_events)))
        .routes(allow(routes!(dashboard::ui_file)))
        .routes(allow(routes!(dashboard::whoami)))
        .routes(allow(routes!(dashboard::overview)))
        .routes(allow(routes!(dashboard::search_items)))
}

/// The paths still served once the pipeline has failed (everything else answers `503`):
/// what operators look at to see why.
pub fn served_after_pipeline_failure(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "/metrics" | "/healthz" | "/readyz"
    )
}

/// Once the pipeline has failed (a panic in a state owner: the live state may be
/// half-applied, nothing commits), answers `503` saying why, except on the paths of
/// [`served_after_pipeline_failure`]. Behind the key check: an unauthenticated caller learns
/// nothing of the failure. On a cluster node, a REST read or change first waits for the
/// node's replica to hold everything acknowledged before it ([`Context::read_barrier`]).
async fn failure_gate(State(ctx): Ctx, req: Request, next: axum::middleware::Next) -> Response {
    if let Some(failure) = ctx.pipeline.failure() {
        if !served_after_pipeline_failure(req.uri().path()) {
            let why = crate::context::StateUnavailable(failure.to_string());
            return full(crate::response::unavailable_state(&why));
        }
    }
    if let Some(barrier) = &ctx.read_barrier {
        let path = req.uri().path();
        let streaming = matches!(path, "/api/stream" | "/api/ws");
        let ingest = req.method() == Method::POST
            && path.starts_with("/api/spots/")
            && (path.ends_with("/events") || path.ends_with("/events/"));
        // Changes too: a PUT compares what it was sent with what the replica holds (a
        // GET-modify-PUT through two nodes found this node's replica behind the other's).
        if path.starts_with("/api/") && !streaming && !ingest {
            barrier.catch_up().await;
            // The derived events come from `SPOT_OUT`, not from the replica's rows.
            let events = path.starts_with("/api/events")
                || (path.starts_with("/api/subscriptions/") && path.contains("/events"));
            if events && req.method() == Method::GET {
                barrier.catch_up_events().await;
            }
        }
    }
    next.run(req).await
}

/// `route` answering its other methods `405` with `Allow`: the methods of its operations.
fn allow(route: UtoipaMethodRouter<Arc<Context>>) -> UtoipaMethodRouter<Arc<Context>> {
    let (schemas, paths, method_router) = route;
    let mut methods: Vec<&str> = Vec::new();
    for item in paths.paths.values() {
        let ops = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
        ];
        methods.extend(ops.iter().filter(|(_, op)| op.is_some()).map(|(m, _)| *m));
    }
    let allowed = HeaderValue::from_str(&methods.join(", ")).expect("method names are ASCII");
    let method_router: MethodRouter<Arc<Context>> = method_router.fallback(move || {
        let allowed = allowed.clone();
        async move {
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "method not allowed; allowed: {}",
                    allowed.to_str().unwrap_or_default()
                ),
                Value::Null,
            );
            resp.headers_mut().insert(ALLOW, allowed);
            full(resp)
        }
    });
    (schemas, paths, method_router)
}

/// The serial of a spot's event stream that [`super::dispatch`] hands to ingest directly,
/// without this router: `POST /api/spots/{serial}/events[/]` while the pipeline has not
/// failed. The router's layers have nothing to do for such a stream (ingest does spot
/// admission itself, [`auth::need`] lets it through), but every chunk of its body would be
/// polled through them: for 1,000 spots at 50 events/s that was 5 % of the server's CPU.
/// What they do differ for goes through the router still: a browser's request (`Origin`:
/// the CORS layer answers it), a percent-encoded serial (decoded by the `Path` extractor),
/// and a failed pipeline (the failure gate answers).
pub fn direct_ingest_serial<B>(req: &hyper::Request<B>) -> Option<String> {
    if req.headers().contains_key(hyper::header::ORIGIN) {
        return None;
    }
    let serial = crate::accept::spot_stream_serial(req.method().as_str(), req.uri().path())?;
    (!serial.contains('%')).then(|| serial.to_string())
}

/// `req` with one trailing `/` of its path removed (the root excepted).
pub fn without_trailing_slash<B>(mut req: hyper::Request<B>) -> hyper::Request<B> {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = match req.uri().query() {
            Some(query) => format!("{}?{query}", &path[..path.len() - 1]),
            None => path[..path.len() - 1].to_string(),
        };
        if let Ok(uri) = trimmed.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    req
}

fn full(resp: hyper::Response<Full<Bytes>>) -> Response {
    resp.map(Body::new)
}

async fn not_found(req: Request) -> Response {
    full(error(
        StatusCode::NOT_FOUND,
        format!(
            "no such path: {} (the routes: GET /api/openapi.json)",
            req.uri().path()
        ),
        Value::Null,
    ))
}

/// The `200` or `503` of a health check.
fn health(health: &Health) -> Response {
    let status = if health.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    full(json_response(
        status,
        &serde_json::to_value(health).unwrap_or(Value::Null),
    ))
}

/// What the health checks look at, now.
fn status<'a>(ctx: &'a Context, commit_failing: &'a Option<String>) -> Status<'a> {
    Status {
        failed: ctx.pipeline.failure(),
        commit_failing: commit_failing.as_deref(),
        phase: *ctx.phase.borrow(),
    }
}

/// What this server is, and where to go from here; a browser (`Accept` preferring
/// `text/html`) gets the dashboard's page instead ([`dashboard`]).
#[utoipa::path(get, path = "/", tag = "index",
    responses((status = 200, description = "Name, version, links; the dashboard's page (text/html) \
        when Accept prefers text/html", body = Index)))]
async fn root(headers: hyper::HeaderMap) -> Response {
    if dashboard::prefers_html(&headers) {
        return full(dashboard::index_page());
    }
    full(json_response(
        StatusCode::OK,
        &serde_json::to_value(index::index()).unwrap_or(Value::Null),
    ))
}

/// The API's collections and streams, with their paths.
#[utoipa::path(get, path = "/api", tag = "index",
    responses((status = 200, description = "The collections", body = ApiIndex)))]
async fn api_index() -> Response {
    full(json_response(
        StatusCode::OK,
        &serde_json::to_value(index::api_index()).unwrap_or(Value::Null),
    ))
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "index",
    responses((status = 200, description = "The OpenAPI document of every route",
        content_type = "application/json")))]
async fn openapi_json() -> Response {
    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(openapi::json().as_bytes())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    full(resp)
}

/// Liveness: `200` while the server serves; `503` only once its pipeline has failed (only
/// a restart helps; it recovers from its journal). Failing commits (a full disk) do not
/// fail it.
#[utoipa::path(get, path = "/healthz", tag = "health", responses(
    (status = 200, description = "Alive", body = Health),
    (status = 503, description = "The pipeline failed: restart the server", body = Health)))]
async fn healthz(State(ctx): Ctx) -> Response {
    health(&index::alive(status(&ctx, &None)))
}

/// Readiness: `200` when the store takes commits and the listeners are up; `503` with the
/// reasons otherwise (the pipeline failed, commits are failing, the server is stopping).
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready", body = Health),
    (status = 503, description = "Not ready; `reasons` says why", body = Health)))]
async fn readyz(State(ctx): Ctx) -> Response {
    let commit_failing = ctx.pipeline.commit_failing();
    health(&index::ready(status(&ctx, &commit_failing)))
}

/// A spot's event stream (spec §4.1): a chunked POST of events (JSON or protobuf by
/// `Content-Type`); the answer, after the events are committed, carries the spot's pending
/// commands and `X-Spot-Ack`.
#[utoipa::path(post, path = "/api/spots/{serial}/events", tag = "ingest",
    params(("serial" = String, Path, description = "The spot's serial number")),
    request_body(content_type = "application/json", description = "The spot's events"),
    responses(
        (status = 200, description = "Committed; the body holds pending commands"),
        (status = 503, description = "Commits are failing or the server is stopping (Retry-After)")))]
async fn ingest(State(ctx): Ctx, Path(serial): Path<String>, req: Request) -> Response {
    full(ingest::http::ingest(req, serial, &ctx).await)
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "The metrics", content_type = "text/plain")))]
async fn metrics(State(ctx): Ctx) -> Response {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(api::metrics_text(&ctx))));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    full(resp)
}

/// A collection: filters by field (`?field=value`), `sort`, `limit`, `after_id`,
/// `populate`; the page links the next one (`url_next`).
#[utoipa::path(get, path = "/api/{collection}", tag = "resources",
    params(("collection" = String, Path,
        description = "locations, items, presences or events (spots: GET /api/spots); \
            `.json` or `.csv` after it for the format"),
        ListParams),
    responses(
        (status = 200, description = "A page of documents: results, limit, is_limited, count, \
            count_current, url, next_url, url_next (any other parameter is a field filter of \
            the collection, `*` a wildcard; an unknown one is a 400 naming it; \
            docs/api-compatibility.md)"),
        (status = 400, description = "A bad parameter", body = openapi::ErrorBody),
        (status = 404, description = "No such collection", body = openapi::ErrorBody)))]
async fn list(State(ctx): Ctx, Path(collection): Path<String>, req: Request) -> Response {
    // Only the head is kept across the wait of a long poll (a body is not `Sync`).
    let head = hyper::Request::from_parts(req.into_parts().0, ());
    full(api::list(&head, &collection, &ctx).await)
}

/// One document (`?populate=` as on the collection).
#[utoipa::path(get, path = "/api/{collection}/{id}", tag = "resources",
    params(
        ("collection" = String, Path, description = "spots, locations, items, presences or events"),
        ("id" = String, Path, description = "The document's id")),
    responses(
        (status = 200, description = "The document"),
        (status = 404, description = "No such document", body = openapi::ErrorBody)))]
async fn get_one(
    State(ctx): Ctx,
    Path((collection, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    full(api::get_one(&req, &collection, &id, &ctx))
}

/// Changes a document's writable fields (answered after commit).
#[utoipa::path(put, path = "/api/{collection}/{id}", tag = "resources",
    params(
        ("collection" = String, Path, description = "spots, locations, items or presences"),
        ("id" = String, Path, description = "The document's id")),
    request_body(content = Object, description = "The fields to change"),
    responses(
        (status = 200, description = "The changed document"),
        (status = 400, description = "A field that cannot be set", body = openapi::ErrorBody),
        (status = 404, description = "No such document", body = openapi::ErrorBody)))]
async fn put(
    State(ctx): Ctx,
    Path((collection, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    full(api::write(req, Write::Put, collection, id, &ctx).await)
}

/// Creates a location (`label`, `custom`) or an item (`code_hex`, `technology` or
/// `code_type`, `label`, `custom`); answered after commit.
#[utoipa::path(post, path = "/api/{collection}", tag = "resources",
    params(("collection" = String, Path, description = "locations or items")),
    request_body(content = Object, description = "The new resource's fields"),
    responses(
        (status = 201, description = "The new document (with `resource`: its id and url)"),
        (status = 400, description = "A field that cannot be set", body = openapi::ErrorBody),
        (status = 405, description = "Not a collection that takes POST", body = openapi::ErrorBody),
        (status = 409, description = "An item of that code exists", body = openapi::ErrorBody)))]
async fn create(State(ctx): Ctx, Path(collection): Path<String>, req: Request) -> Response {
    full(api::write(req, Write::Post, collection, String::new(), &ctx).await)
}

/// Deletes a location no spot reports to and no presence is at, or an item that is not
/// present; answered after commit with the document as it was.
#[utoipa::path(delete, path = "/api/{collection}/{id}", tag = "resources",
    params(
        ("collection" = String, Path, description = "locations or items"),
        ("id" = String, Path, description = "The document's id")),
    responses(
        (status = 200, description = "The deleted document"),
        (status = 404, description = "No such document", body = openapi::ErrorBody),
        (status = 405, description = "Not a collection that takes DELETE", body = openapi::ErrorBody),
        (status = 409, description = "Still in use (spots report to it, a presence is there, the item is present)", body = openapi::ErrorBody)))]
async fn delete(
    State(ctx): Ctx,
    Path((collection, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    full(api::write(req, Write::Delete, collection, id, &ctx).await)
}

/// The item lists or the spot lists (the vendor's `sets`), as `GET /api/{collection}`:
/// `label`, `custom`, `metadata`, `total` (members), `sha1` (of the members), `list` (where
/// the members are).
#[utoipa::path(get, path = "/api/sets/{lists}", tag = "sets",
    params(("lists" = String, Path,
        description = "itemlists or spotlists; `.json` or `.csv` after it for the format"),
        ListParams),
    responses(
        (status = 200, description = "A page of lists, as GET /api/{collection} answers"),
        (status = 400, description = "A bad parameter", body = openapi::ErrorBody),
        (status = 404, description = "Neither itemlists nor spotlists", body = openapi::ErrorBody)))]
async fn list_sets(State(ctx): Ctx, Path(lists): Path<String>, req: Request) -> Response {
    let head = hyper::Request::from_parts(req.into_parts().0, ());
    full(api::list(&head, &format!("sets/{lists}"), &ctx).await)
}

/// Creates an item list or a spot list (`label`, `custom`, `metadata`); answered after
/// commit. Its members are added at `…/{id}/ids`.
#[utoipa::path(post, path = "/api/sets/{lists}", tag = "sets",
    params(("lists" = String, Path, description = "itemlists or spotlists")),
    request_body(content = Object, description = "label, custom, metadata"),
    responses(
        (status = 201, description = "The new list (with `resource`: its id and url)"),
        (status = 400, description = "A field that cannot be set", body = openapi::ErrorBody)))]
async fn create_set(State(ctx): Ctx, Path(lists): Path<String>, req: Request) -> Response {
    full(
        api::write(
            req,
            Write::Post,
            format!("sets/{lists}"),
            String::new(),
            &ctx,
        )
        .await,
    )
}

/// One item list or spot list (`?select=`, `id_only` as on the collection).
#[utoipa::path(get, path = "/api/sets/{lists}/{id}", tag = "sets",
    params(
        ("lists" = String, Path, description = "itemlists or spotlists"),
        ("id" = String, Path, description = "The list's id")),
    responses(
        (status = 200, description = "The list"),
        (status = 404, description = "No such list", body = openapi::ErrorBody)))]
async fn get_set(
    State(ctx): Ctx,
    Path((lists, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    full(api::get_one(&req, &format!("sets/{lists}"), &id, &ctx))
}

/// Changes a list's `label`, `custom` and `metadata` (a document as GET answered it is
/// taken); answered after commit.
#[utoipa::path(put, path = "/api/sets/{lists}/{id}", tag = "sets",
    params(
        ("lists" = String, Path, description = "itemlists or spotlists"),
        ("id" = String, Path, description = "The list's id")),
    request_body(content = Object, description = "The fields to change"),
    responses(
        (status = 200, description = "The changed list"),
        (status = 400, description = "A field that cannot be set", body = openapi::ErrorBody),
        (status = 404, description = "No such list", body = openapi::ErrorBody)))]
async fn put_set(
    State(ctx): Ctx,
    Path((lists, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    full(api::write(req, Write::Put, format!("sets/{lists}"), id, &ctx).await)
}

/// Deletes a list (its items and spots stay); answered after commit with the list as it was.
#[utoipa::path(delete, path = "/api/sets/{lists}/{id}", tag = "sets",
    params(
        ("lists" = String, Path, description = "itemlists or spotlists"),
        ("id" = String, Path, description = "The list's id")),
    responses(
        (status = 200, description = "The deleted list"),
        (status = 404, description = "No such list", body = openapi::ErrorBody)))]
async fn delete_set(
    State(ctx): Ctx,
    Path((lists, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    full(api::write(req, Write::Delete, format!("sets/{lists}"), id, &ctx).await)
}

/// The ids of a list's items (or spots), in id order: a JSON array.
#[utoipa::path(get, path = "/api/sets/{lists}/{id}/ids", tag = "sets",
    params(
        ("lists" = String, Path, description = "itemlists or spotlists"),
        ("id" = String, Path, description = "The list's id")),
    responses(
        (status = 200, description = "The member ids"),
        (status = 404, description = "No such list", body = openapi::ErrorBody)))]
async fn set_members(State(ctx): Ctx, Path((lists, id)): Path<(String, String)>) -> Response {
    full(api::list_members(&format!("sets/{lists}"), &id, &ctx))
}

/// Adds items (or spots: by id or serial number) to a list: the body is a JSON array of
/// their ids; those in it already stay once. Answered after commit with `status` and
/// `total` (the members now).
#[utoipa::path(post, path = "/api/sets/{lists}/{id}/ids", tag = "sets",
    params(
        ("lists" = String, Path, description = "itemlists or spotlists"),
        ("id" = String, Path, description = "The list's id")),
    request_body(content = Vec<String>, description = "Ids of items (item lists) or spots"),
    responses(
        (status = 200, description = "status and total"),
        (status = 400, description = "Not an array, or an id of no item (spot)", body = openapi::ErrorBody),
        (status = 404, description = "No such list", body = openapi::ErrorBody),
        (status = 409, description = "The list would hold more than 100,000 members", body = openapi::ErrorBody)))]
async fn add_set_members(
    State(ctx): Ctx,
    Path((lists, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    full(api::write_members(req, &format!("sets/{lists}"), id, None, &ctx).await)
}

/// Removes one item (or spot) from a list; answered after commit with `status` and `total`.
#[utoipa::path(delete, path = "/api/sets/{lists}/{id}/ids/{member}", tag = "sets",
    params(
        ("lists" = String, Path, description = "itemlists or spotlists"),
        ("id" = String, Path, description = "The list's id"),
        ("member" = String, Path, description = "The item's (spot's) id")),
    responses(
        (status = 200, description = "status and total"),
        (status = 404, description = "No such list, or not in it", body = openapi::ErrorBody)))]
async fn remove_set_member(
    State(ctx): Ctx,
    Path((lists, id, member)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    full(api::write_members(req, &format!("sets/{lists}"), id, Some(member), &ctx).await)
}

/// The list parameters of every collection (`GET /api/{collection}`, `GET /api/spots`), for
/// the OpenAPI document only: [`api::list`] reads them from the query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    /// Page size, 1 to 10,000 (default 100)
    limit: Option<usize>,
    /// Documents to skip (paging under any sort)
    skip: Option<usize>,
    /// Fields, `-` for descending; default `-id`
    sort: Option<String>,
    /// Only the array of documents
    results_only: Option<bool>,
    /// No `url` fields; `<ref>_id` beside references
    id_only: Option<bool>,
    /// The fields to answer (`id`, `url` always)
    select: Option<String>,
    /// References to replace by their documents
    populate: Option<String>,
    /// Count every match (`count`), even when that takes a pass over all
    count: Option<bool>,
    /// Long poll: wait up to this long (at most 300 s) for a first match
    timeout_s: Option<f64>,
    /// Events: `object` for the vendor's topic object
    topic_format: Option<String>,
    /// Words to search the text fields for (`-word` excludes)
    text: Option<String>,
    /// Ids after this one (also before_id, from_id, until_id)
    after_id: Option<String>,
    /// time_created after this (also before, from, until)
    after: Option<String>,
    /// Items: code_hex after this (also before_code, from_code, until_code)
    after_code: Option<String>,
}

/// The spots, as `GET /api/{collection}`.
#[utoipa::path(get, path = "/api/spots", tag = "resources",
    params(
        ListParams),
    responses(
        (status = 200, description = "A page of spots"),
        (status = 400, description = "A bad parameter", body = openapi::ErrorBody)))]
async fn list_spots(State(ctx): Ctx, req: Request) -> Response {
    let head = hyper::Request::from_parts(req.into_parts().0, ());
    full(api::list(&head, "spots", &ctx).await)
}

/// Enrols a spot (`{"serial_number": "203"}`, `"secret": true` for a spot secret shown
/// once): `201` when new, `200` when it was enrolled already.
#[utoipa::path(post, path = "/api/spots", tag = "access",
    request_body(content = Object, description = "serial_number, secret"),
    responses(
        (status = 201, description = "Enrolled"),
        (status = 200, description = "Enrolled already"),
        (status = 400, description = "A bad field", body = openapi::ErrorBody)))]
async fn enrol(State(ctx): Ctx, req: Request) -> Response {
    full(api::access::enrol(req, &ctx).await)
}

/// The enrolled spots, without secrets.
#[utoipa::path(get, path = "/api/enrolments", tag = "access",
    responses((status = 200, description = "The enrolments")))]
async fn list_enrolments(State(ctx): Ctx) -> Response {
    full(api::access::list_enrolments(&ctx).await)
}

/// Every API key, revoked ones included, without secrets.
#[utoipa::path(get, path = "/api/keys", tag = "access",
    responses((status = 200, description = "The keys")))]
async fn list_keys(State(ctx): Ctx) -> Response {
    full(api::access::list_keys(&ctx).await)
}

/// Creates an API key (`{"role": "read|write|admin", "label": "…"}`); the answer holds the
/// key itself, this once.
#[utoipa::path(post, path = "/api/keys", tag = "access",
    request_body(content = Object, description = "role, label"),
    responses(
        (status = 201, description = "The key record and the key"),
        (status = 400, description = "A bad field", body = openapi::ErrorBody)))]
async fn create_key(State(ctx): Ctx, req: Request) -> Response {
    full(api::access::create_key(req, &ctx).await)
}

/// One API key's record.
#[utoipa::path(get, path = "/api/keys/{id}", tag = "access",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key record"),
        (status = 404, description = "No such key", body = openapi::ErrorBody)))]
async fn get_key(State(ctx): Ctx, Path(id): Path<String>) -> Response {
    full(api::access::get_key(&ctx, id).await)
}

/// Revokes an API key (in effect when answered; its open streams are closed).
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "access",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The revoked key's record"),
        (status = 404, description = "No such key", body = openapi::ErrorBody)))]
async fn revoke_key(State(ctx): Ctx, Path(id): Path<String>, req: Request) -> Response {
    full(api::access::revoke_key(req, &ctx, id).await)
}

/// Hands `req` to the outlets' router (spot-push serves these routes) with the extensions
/// it reads: the connection's upgrade (WebSocket), the [`spot_push::StreamEnd`] the check
/// added and where the client reached the server ([`spot_push::webhook::ApiBase`]: the
/// subscriptions' `url` and `events_url`). Not the others: this router's path parameters
/// would be added to the outlets' router's own (`/api/subscriptions/{id}` would see two ids).
async fn outlet(ctx: &Context, req: Request) -> Response {
    let base = spot_push::webhook::ApiBase(api::base_url(&req));
    let (mut parts, body) = req.into_parts();
    let mut extensions = axum::http::Extensions::new();
    extensions.insert(base);
    if let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
        extensions.insert(upgrade);
    }
    if let Some(end) = parts.extensions.remove::<spot_push::StreamEnd>() {
        extensions.insert(end);
    }
    parts.extensions = extensions;
    spot_push::call_router(ctx.outlets.router(), Request::from_parts(parts, body)).await
}

/// WebSocket stream of derived events: send `{"subscribe": "<topic filter>"}` (with
/// `"after_id"` to resume), `{"unsubscribe": "<topic filter>"}`. docs/push.md.
#[utoipa::path(get, path = "/api/ws", tag = "push", responses(
    (status = 101, description = "Switching to the WebSocket protocol"),
    (status = 503, description = "The server is stopping", body = openapi::ErrorBody)))]
async fn ws(State(ctx): Ctx, req: Request) -> Response {
    outlet(&ctx, req).await
}

/// Server-Sent Events stream of derived events; resumes after `Last-Event-ID`.
/// docs/push.md.
#[utoipa::path(get, path = "/api/stream", tag = "push",
    params(
        ("topic_filter" = Option<String>, Query,
            description = "MQTT-style filter of topics (`+` one level, `#` the rest); default `#`"),
        ("after_id" = Option<u64>, Query, description = "Resume after this event id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream"),
        (status = 400, description = "A bad topic_filter or Last-Event-ID", body = openapi::ErrorBody)))]
async fn stream(State(ctx): Ctx, req: Request) -> Response {
    outlet(&ctx, req).await
}

/// Webhook subscriptions, a page (`after_id`, `limit`). docs/push.md.
#[utoipa::path(get, path = "/api/subscriptions", tag = "push",
    params(
        ("after_id" = Option<i64>, Query, description = "Subscriptions after this id"),
        ("limit" = Option<usize>, Query, description = "Page size, 1 to 10,000 (default 100)")),
    responses((status = 200, description = "results, limit, is_limited, url_next")))]
async fn list_subscriptions(State(ctx): Ctx, req: Request) -> Response {
    outlet(&ctx, req).await
}

/// Creates a webhook subscription (`topic_filter`, `target_url`, …). docs/push.md.
#[utoipa::path(post, path = "/api/subscriptions", tag = "push",
    request_body(content = SubscriptionInput,
        description = "topic_filter required; without target_url (or null) a store-only subscription (docs/push.md)"),
    responses(
        (status = 201, description = "The subscription", body = WebhookSubscription),
        (status = 400, description = "A bad field", body = openapi::ErrorBody),
        (status = 409, description = "The limit of subscriptions is reached", body = openapi::ErrorBody)))]
async fn create_subscription(State(ctx): Ctx, req: Request) -> Response {
    outlet(&ctx, req).await
}

/// One webhook subscription, with its state and counters.
#[utoipa::path(get, path = "/api/subscriptions/{id}", tag = "push",
    params(("id" = i64, Path, description = "The subscription's id")),
    responses(
        (status = 200, description = "The subscription", body = WebhookSubscription),
        (status = 404, description = "No such subscription", body = openapi::ErrorBody)))]
async fn get_subscription(State(ctx): Ctx, req: Request) -> Response {
    outlet(&ctx, req).await
}

/// Changes a webhook subscription's fields (those given; the rest stay).
#[utoipa::path(put, path = "/api/subscriptions/{id}", tag = "push",
    params(("id" = i64, Path, description = "The subscription's id")),
    request_body(content = SubscriptionInput, description = "The fields to change"),
    responses(
        (status = 200, description = "The subscription", body = WebhookSubscription),
        (status = 404, description = "No such subscription", body = openapi::ErrorBody)))]
async fn update_subscription(State(ctx): Ctx, req: Request) -> Response {
    outlet(&ctx, req).await
}

/// Deletes a webhook subscription (its queued deliveries with it).
#[utoipa::path(delete, path = "/api/subscriptions/{id}", tag = "push",
    params(("id" = i64, Path, description = "The subscription's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such subscription", body = openapi::ErrorBody)))]
async fn delete_subscription(State(ctx): Ctx, req: Request) -> Response {
    outlet(&ctx, req).await
}

/// The events of the log that a webhook subscription's topic filter matches, paged and
/// filtered as `GET /api/events` (the vendor's `events_url`; this server keeps one events log
/// for all, so a subscription's events are there with or without its target).
#[utoipa::path(get, path = "/api/subscriptions/{id}/events", tag = "push",
    params(("id" = i64, Path, description = "The subscription's id")),
    responses(
        (status = 200, description = "A page of events, as GET /api/events"),
        (status = 400, description = "A bad parameter", body = openapi::ErrorBody),
        (status = 404, description = "No such subscription", body = openapi::ErrorBody)))]
async fn subscription_events(State(ctx): Ctx, Path(id): Path<String>, req: Request) -> Response {
    let head = hyper::Request::from_parts(req.into_parts().0, ());
    full(api::subscription_events(&head, &id, &ctx).await)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::direct_ingest_serial;

    /// Spot streams skip the router only where its layers would do nothing for them.
    #[test]
    fn only_plain_spot_streams_are_handed_to_ingest_without_the_router() {
        let req = |method: &str, uri: &str, origin: bool| {
            let mut req = hyper::Request::builder().method(method).uri(uri);
            if origin {
                req = req.header("origin", "http://example.com");
            }
            req.body(()).unwrap()
        };
        for (uri, serial) in [
            ("/api/spots/1337/events/", Some("1337")),
            ("/api/spots/a-b_c/events", Some("a-b_c")),
            ("/api/spots/1337/events/?x=1", Some("1337")),
            ("/api/spots/%31/events/", None),
            ("/api/spots//events/", None),
            ("/api/spots/1/2/events/", None),
            ("/api/spots/1337/eventsx", None),
            ("/api/spots/1337", None),
            ("/api/items/1337/events", None),
        ] {
            let direct = direct_ingest_serial(&req("POST", uri, false));
            assert_eq!(direct.as_deref(), serial, "{uri}");
        }
        assert_eq!(
            direct_ingest_serial(&req("GET", "/api/spots/1/events", false)),
            None
        );
        assert_eq!(
            direct_ingest_serial(&req("POST", "/api/spots/1/events", true)),
            None
        );
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::pipeline::PipelineMsg;
    use crate::{Durability, Server, ServerConfig};

    /// A server on port 0 with a fresh data directory (kept by the caller).
    async fn server() -> (Server, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            sync: Durability::Normal,
            ..ServerConfig::default()
        })
        .await
        .unwrap();
        (server, dir)
    }

    /// After a panic in the pipeline (a restart is needed) both checks fail, saying why,
    /// without a key; the rest of the API stays refused.
    #[tokio::test]
    async fn healthz_and_readyz_fail_saying_why_once_the_pipeline_failed() {
        let (server, _dir) = server().await;
        let addr = server.http_addr();
        let get = |path: &str| {
            let url = format!("http://{addr}{path}");
            async move {
                let resp = reqwest::get(url).await.unwrap();
                let status = resp.status().as_u16();
                let body: serde_json::Value =
                    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
                (status, body)
            }
        };
        for path in ["/healthz", "/readyz"] {
            assert_eq!(get(path).await, (200, serde_json::json!({"ok": true})));
        }
        let pipeline = &server.context().pipeline;
        pipeline.send(PipelineMsg::Panic).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while pipeline.failure().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the pipeline says it failed");
        for path in ["/healthz", "/readyz"] {
            let (status, body) = get(path).await;
            assert_eq!(
                (status, &body["ok"]),
                (503, &false.into()),
                "{path}: {body}"
            );
            let error = body["error"].as_str().unwrap();
            assert!(error.contains("injected by a test"), "{path}: {error}");
            assert!(error.contains("restart the server"), "{path}: {error}");
        }
        assert_eq!(get("/").await.0, 503);
        server.shutdown().await;
    }

    /// Sends `request` on a new connection and reads until the server closes it.
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("answered")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Risk 7 of issue 11: after a panic in the pipeline, the poisoned live state was read
    /// through and served, and ingest went on.
    #[tokio::test]
    async fn a_panic_in_the_pipeline_answers_503_saying_why_instead_of_serving_its_state() {
        let (server, dir) = server().await;
        let addr = server.http_addr();
        let key = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
        let get = format!(
            "GET /api/spots HTTP/1.1\r\nHost: t\r\nX-Api-Key: {}\r\nConnection: close\r\n\r\n",
            key.trim()
        );
        let get = get.as_str();
        assert!(exchange(addr, get).await.starts_with("HTTP/1.1 200"));
        let pipeline = &server.context().pipeline;
        pipeline.send(PipelineMsg::Panic).await.unwrap();
        for _ in 0..100 {
            if pipeline.failure().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let failure = pipeline.failure().expect("the pipeline says it failed");
        assert!(failure.contains("injected by a test"), "{failure}");
        assert!(server.context().domain.is_poisoned());
        for request in [
            get.to_string(),
            "POST /api/spots/9/events HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
             Content-Length: 0\r\n\r\n"
                .to_string(),
        ] {
            let answer = exchange(addr, &request).await;
            assert!(answer.starts_with("HTTP/1.1 503"), "{request}: {answer}");
            assert!(answer.contains("injected by a test"), "{answer}");
        }
        // Without a key: 401, and nothing of the failure.
        let anonymous = "GET /api/spots HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let answer = exchange(addr, anonymous).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(!answer.contains("injected by a test"), "{answer}");
        let metrics = get.replace("/api/spots", "/metrics");
        assert!(exchange(addr, &metrics).await.starts_with("HTTP/1.1 200"));
        server.shutdown().await;
    }
}
