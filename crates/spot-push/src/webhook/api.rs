//! REST handlers of the `subscriptions` resource.
//!
//! `GET /api/subscriptions[?after_id=&limit=]` → `{"results":[..],"limit":n,"is_limited":b,
//! "url_next":..}`; `POST /api/subscriptions` → 201 + resource; `GET|PUT|DELETE
//! /api/subscriptions/{id}` → resource | resource | 204. Errors: `{"error":"..."}` with 400
//! (bad input, naming the field), 404, 409 (limit reached), 413 (body too large), 500.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::store::{StoreError, SubscriptionInput, WriteError};
use super::Webhooks;

/// Largest page.
const MAX_LIMIT: usize = 10_000;

/// An error of the subscriptions API.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 404.
    #[error("no subscription {0}")]
    NotFound(i64),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 500.
    #[error(transparent)]
    Store(#[from] StoreError),
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
            ApiError::Store(e) => {
                tracing::error!(error = %e, "subscriptions API");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

pub(crate) fn router(webhooks: Arc<Webhooks>) -> Router {
    let limit = webhooks.config.max_api_body_bytes;
    Router::new()
        .route("/api/subscriptions", get(list).post(create))
        .route(
            "/api/subscriptions/{id}",
            get(read).put(update).delete(remove),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(webhooks)
}

fn parse_input(body: &[u8]) -> Result<SubscriptionInput, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
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
    State(w): State<Arc<Webhooks>>,
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
    let mut results = w.store.list(after_id, limit + 1)?;
    let is_limited = results.len() > limit;
    results.truncate(limit);
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

async fn create(State(w): State<Arc<Webhooks>>, body: Bytes) -> Result<Response, ApiError> {
    let input = parse_input(&body)?;
    let created = w.create(input)?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn read(
    State(w): State<Arc<Webhooks>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match w.store.get(id)? {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(ApiError::NotFound(id)),
    }
}

async fn update(
    State(w): State<Arc<Webhooks>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let input = parse_input(&body)?;
    match w.update(id, input)? {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(ApiError::NotFound(id)),
    }
}

async fn remove(
    State(w): State<Arc<Webhooks>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if w.delete(id)? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(id))
    }
}
