//! REST handlers of the `subscriptions` resource.
//!
//! `GET /api/subscriptions[?after_id=&limit=]` → `{"results":[..],"limit":n,"is_limited":b,
//! "url_next":..}`; `POST /api/subscriptions` → 201 + resource; `GET|PUT|DELETE
//! /api/subscriptions/{id}` → resource | resource | 204. Errors: `{"error":"..."}` with 400
//! (bad input, naming the field), 404, 409 (limit reached), 413 (body too large), 500. With
//! an [`ApiBase`] in the request's extensions, each subscription shows its `url` and
//! `events_url`.
//! A `PUT` takes a document as `GET` answered it: read-only fields unchanged (or the
//! server's own: counters, state) are ignored, a changed one is a `400` naming it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::store::{InputError, StoreError, SubscriptionInput, WebhookSubscription, WriteError};
use super::SubscriptionBook;

/// Largest page.
const MAX_LIMIT: usize = 10_000;

/// Where the client reached the server (`scheme://host`, as the server that mounts this
/// router saw it, a proxy's `X-Forwarded-*` included): subscriptions show their `url` and
/// `events_url` under it.
#[derive(Debug, Clone)]
pub struct ApiBase(pub String);

/// The base of the request, if the server gave one.
type Base = Option<Extension<ApiBase>>;

/// `s` as shown: with `url` and `events_url` when the base is known.
fn shown(mut s: WebhookSubscription, base: &Base) -> WebhookSubscription {
    if let Some(Extension(ApiBase(base))) = base {
        let url = format!("{base}/api/subscriptions/{}", s.id);
        s.events_url = Some(format!("{url}/events"));
        s.url = Some(url);
    }
    s
}

/// An error of the subscriptions API (what a [`SubscriptionBook`] answers).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 404.
    #[error("no subscription {0}")]
    NotFound(i64),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 500: the embedded store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 500: another store failed (what was being done, and why).
    #[error("{0}")]
    Failed(String),
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Input(e) => ApiError::BadRequest(e.to_string()),
            WriteError::Store(e) => ApiError::Store(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Store(_) | ApiError::Failed(_) => {
                tracing::error!(error = %self, "subscriptions API");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// The subscriptions API over `book`, taking bodies of up to `max_body_bytes`.
pub fn router(book: Arc<dyn SubscriptionBook>, max_body_bytes: usize) -> Router {
    let limit = max_body_bytes;
    Router::new()
        .route("/api/subscriptions", get(list).post(create))
        .route(
            "/api/subscriptions/{id}",
            get(read).put(update).delete(remove),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(book)
}

fn parse_input(body: &[u8]) -> Result<SubscriptionInput, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

/// The fields of a subscription a `PUT` sets.
const SETTABLE: [&str; 9] = [
    "topic_filter",
    "description",
    "target_url",
    "target_retry",
    "database_hold_time_h",
    "secret",
    "verify_target_certificate",
    "populate_events",
    "custom",
];

/// The read-only fields the server changes on its own: a `PUT` ignores them (a
/// GET-modify-PUT must not race the deliveries).
const LIVE: [&str; 8] = [
    "time_updated",
    "delivered_count",
    "failed_count",
    "last_error",
    "queued_count",
    "queued_bytes",
    "state",
    "not_queued_count",
];

/// The input of a `PUT` body that may be a whole document as `GET` answered it: its
/// settable fields; read-only ones are dropped when unchanged (or the server's to change),
/// any other is a `400` naming it.
fn put_input(body: &[u8], current: &WebhookSubscription) -> Result<SubscriptionInput, ApiError> {
    let body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
    let current = serde_json::to_value(current).unwrap_or_default();
    let mut input = serde_json::Map::new();
    for (k, v) in body {
        if SETTABLE.contains(&k.as_str()) {
            input.insert(k, v);
        } else if LIVE.contains(&k.as_str()) || current.get(&k) == Some(&v) {
            // Read-only and unchanged: a round trip.
        } else if current.get(&k).is_some() {
            return Err(ApiError::BadRequest(format!(
                "{k}: read-only: send it unchanged or leave it out (settable: {})",
                SETTABLE.join(", ")
            )));
        } else {
            return Err(ApiError::BadRequest(format!(
                "{k}: not a field of subscriptions (settable: {})",
                SETTABLE.join(", ")
            )));
        }
    }
    serde_json::from_value(serde_json::Value::Object(input))
        .map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::BadRequest(format!("id {id:?} is not a number")))
}

/// The parameters of the list (any other is a `400` naming it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after_id: Option<i64>,
    limit: Option<usize>,
}

async fn list(
    State(w): State<Arc<dyn SubscriptionBook>>,
    base: Base,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "limit: must be 1..={MAX_LIMIT}"
        )));
    }
    let after_id = query.after_id.unwrap_or(0);
    let mut results = w.list(after_id, limit + 1).await?;
    let is_limited = results.len() > limit;
    results.truncate(limit);
    let results: Vec<WebhookSubscription> = results.into_iter().map(|s| shown(s, &base)).collect();
    let url_next = match (is_limited, results.last()) {
        (true, Some(last)) => Some(format!(
            "/api/subscriptions?after_id={}&limit={limit}",
            last.id
        )),
        _ => None,
    };
    Ok(Json(json!({
        "results": results,
        "limit": limit,
        "is_limited": is_limited,
        "url_next": url_next,
    }))
    .into_response())
}

async fn create(
    State(w): State<Arc<dyn SubscriptionBook>>,
    base: Base,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input = parse_input(&body)?;
    let created = shown(w.create(input).await?, &base);
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn read(
    State(w): State<Arc<dyn SubscriptionBook>>,
    base: Base,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match w.get(id).await? {
        Some(s) => Ok(Json(shown(s, &base)).into_response()),
        None => Err(ApiError::NotFound(id)),
    }
}

async fn update(
    State(w): State<Arc<dyn SubscriptionBook>>,
    base: Base,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let current = w.get(id).await?.ok_or(ApiError::NotFound(id))?;
    let input = put_input(&body, &shown(current, &base))?;
    match w.update(id, input).await? {
        Some(s) => Ok(Json(shown(s, &base)).into_response()),
        None => Err(ApiError::NotFound(id)),
    }
}

async fn remove(
    State(w): State<Arc<dyn SubscriptionBook>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if w.delete(id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(id))
    }
}
