//! The one router of everything under the listener: spot ingest, the REST API, `/metrics`,
//! access control (`/api/keys`, spot enrolment) and the outlets' routes (`/api/ws`,
//! `/api/stream`, `/api/subscriptions[/{id}]`), in one axum [`Router`], behind the layer
//! that checks who may call what ([`auth`]) and, when configured, CORS. Unknown paths answer `404`, a known path with another method `405` with
//! `Allow`, both with the JSON error body. A trailing `/` is ignored (`/api/spots/` lists
//! spots; spots POST to `/api/spots/{serial}/events/`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{StatusCode, Uri};
use serde_json::Value;

use super::auth;
use crate::context::Context;
use crate::response::{error, method_not_allowed};
use crate::{api, ingest};

type Ctx = State<Arc<Context>>;

/// The router over `ctx`, the outlets' routes merged in.
pub fn router(ctx: Arc<Context>) -> Router {
    let outlets = ctx.outlets.router().clone();
    let router = Router::new()
        .route(
            "/api/{collection}/{id}/events",
            post(ingest).fallback(allow("POST")),
        )
        .route("/metrics", get(metrics).fallback(allow("GET")))
        .route(
            "/api/keys",
            get(list_keys).post(create_key).fallback(allow("GET, POST")),
        )
        .route(
            "/api/keys/{id}",
            get(get_key)
                .delete(revoke_key)
                .fallback(allow("GET, DELETE")),
        )
        .route(
            "/api/enrolments",
            get(list_enrolments).fallback(allow("GET")),
        )
        .route(
            "/api/spots",
            get(list_spots).post(enrol).fallback(allow("GET, POST")),
        )
        .route("/api/{collection}", get(list).fallback(allow("GET")))
        .route(
            "/api/{collection}/{id}",
            get(get_one).put(put).fallback(allow("GET, PUT")),
        )
        .fallback(not_found)
        .with_state(ctx.clone())
        .merge(outlets)
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            auth::check,
        ));
    match auth::cors(&ctx.access.config().cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    }
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

fn allow(methods: &'static str) -> MethodRouter<Arc<Context>> {
    MethodRouter::new().fallback(move || async move { method_not_allowed(methods).map(Body::new) })
}

fn full(resp: hyper::Response<Full<Bytes>>) -> Response {
    resp.map(Body::new)
}

async fn not_found(req: Request) -> Response {
    full(error(
        StatusCode::NOT_FOUND,
        format!("no such path: {}", req.uri().path()),
        Value::Null,
    ))
}

async fn ingest(
    State(ctx): Ctx,
    Path((collection, serial)): Path<(String, String)>,
    req: Request,
) -> Response {
    if collection != "spots" {
        return not_found(req).await;
    }
    full(ingest::http::ingest(req, serial, &ctx).await)
}

async fn metrics(State(ctx): Ctx) -> Response {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(api::metrics_text(&ctx))));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    full(resp)
}

async fn list(State(ctx): Ctx, Path(collection): Path<String>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    full(api::list(&req, &collection, &path, &ctx))
}

async fn get_one(
    State(ctx): Ctx,
    Path((collection, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    full(api::get_one(&req, &collection, &id, &ctx))
}

async fn put(
    State(ctx): Ctx,
    Path((collection, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    full(api::put(req, collection, id, &ctx).await)
}

async fn list_spots(State(ctx): Ctx, req: Request) -> Response {
    let path = req.uri().path().to_string();
    full(api::list(&req, "spots", &path, &ctx))
}

async fn enrol(State(ctx): Ctx, req: Request) -> Response {
    full(api::access::enrol(req, &ctx).await)
}

async fn list_enrolments(State(ctx): Ctx) -> Response {
    full(api::access::list_enrolments(&ctx).await)
}

async fn list_keys(State(ctx): Ctx) -> Response {
    full(api::access::list_keys(&ctx).await)
}

async fn create_key(State(ctx): Ctx, req: Request) -> Response {
    full(api::access::create_key(req, &ctx).await)
}

async fn get_key(State(ctx): Ctx, Path(id): Path<String>) -> Response {
    full(api::access::get_key(&ctx, id).await)
}

async fn revoke_key(State(ctx): Ctx, Path(id): Path<String>, req: Request) -> Response {
    full(api::access::revoke_key(req, &ctx, id).await)
}
