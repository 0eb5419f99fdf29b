//! The REST API: `GET /api/{collection}` (filters, sort, paging: [`query`]),
//! `GET /api/{collection}/{id}`, `PUT /api/{collection}/{id}` (answered after commit) and
//! `GET /metrics`; [`access`]: `/api/keys` and spot enrolment (`POST /api/spots`);
//! [`index`]: what `/`, `/api`, `/healthz` and `/readyz` answer.

pub mod access;
pub mod index;
pub mod query;

use http_body_util::{BodyExt, Limited};
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

type Object = Map<String, Value>;
use tokio::sync::oneshot;

use crate::api::query::{Query, COLLECTIONS};
use crate::context::Context;
use crate::domain::PutError;
use crate::metrics::{render_process, Gauges};
use crate::pipeline::PipelineMsg;
use crate::response::{error, json_response, unavailable, unavailable_state, Body};

pub fn list<B>(req: &Request<B>, collection: &str, path: &str, shared: &Context) -> Response<Body> {
    let params: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let no_collection = || {
        error(
            StatusCode::NOT_FOUND,
            format!("no collection {collection:?}"),
            Value::Null,
        )
    };
    if !COLLECTIONS.contains(&collection) {
        return no_collection();
    }
    let query = match Query::parse(collection, &params) {
        Ok(query) => query,
        Err(e) => return bad_parameter(&e),
    };
    // Under the read lock only the rows the page needs, shared (no JSON): ingest waits for
    // no list.
    let rows = match shared.live_state() {
        Ok(domain) => query.rows(&domain),
        Err(why) => return unavailable_state(&why),
    };
    let Some(rows) = rows else {
        return no_collection();
    };
    // A reference the state can no longer resolve stays an id.
    let lookup = |collection: &str, id: &str| shared.live_state().ok()?.get(collection, id);
    json_response(StatusCode::OK, &query.page(rows, path, &lookup))
}

/// One document; `populate` works as on the collection.
pub fn get_one<B>(
    req: &Request<B>,
    collection: &str,
    id: &str,
    shared: &Context,
) -> Response<Body> {
    let mut fields = Vec::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        if k == "populate" {
            match crate::api::query::populate_fields(collection, &v) {
                Ok(f) => fields.extend(f),
                Err(e) => return bad_parameter(&e),
            }
        }
    }
    let domain = match shared.live_state() {
        Ok(domain) => domain,
        Err(why) => return unavailable_state(&why),
    };
    if !crate::api::query::COLLECTIONS.contains(&collection) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no collection {collection:?}"),
            Value::Null,
        );
    }
    match domain.get(collection, id) {
        Some(v) => {
            let mut docs = [v];
            crate::api::query::populate(&mut docs, &fields, &|c, id| domain.get(c, id));
            let [v] = docs;
            json_response(StatusCode::OK, &v)
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("{collection} {id:?} not found"),
            Value::Null,
        ),
    }
}

pub async fn put<B>(
    req: Request<B>,
    collection: String,
    id: String,
    shared: &Context,
) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let body = match json_body(req, shared.limits.max_api_body_bytes).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let (reply, rx) = oneshot::channel();
    let msg = PipelineMsg::Put {
        collection,
        id,
        body,
        reply,
    };
    if shared.pipeline.send(msg).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(Ok(v)) => json_response(StatusCode::OK, &v),
        Ok(Err(e @ PutError::NotFound { .. })) => {
            error(StatusCode::NOT_FOUND, e.to_string(), Value::Null)
        }
        Ok(Err(e @ PutError::MethodNotAllowed(_))) => {
            let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, e.to_string(), Value::Null);
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            resp
        }
        Ok(Err(e @ PutError::BadField { .. })) => {
            let field = match &e {
                PutError::BadField { field, .. } => field.clone(),
                _ => String::new(),
            };
            error(
                StatusCode::BAD_REQUEST,
                e.to_string(),
                json!({ "field": field }),
            )
        }
        Err(_) => unavailable(),
    }
}

/// The JSON object of a request body of at most `limit` bytes; otherwise the answer
/// (`413`, `400`) saying what is wrong.
pub async fn json_body<B>(req: Request<B>, limit: u64) -> Result<Object, Response<Body>>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = match Limited::new(req.into_body(), limit as usize)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds {limit} bytes"),
                Value::Null,
            ))
        }
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("request body: {e}"),
                Value::Null,
            ))
        }
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "body must be a JSON object",
            Value::Null,
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("body is not JSON: {e}"),
            Value::Null,
        )),
    }
}

/// The `/metrics` text: the server's counters, the gauges read now, the outlets' metrics,
/// access control's, then the process metrics.
pub fn metrics_text(ctx: &Context) -> String {
    let gauges = Gauges {
        spots_online: ctx.live_state().ok().map(|d| d.spots_online()),
        state_sizes: ctx.live_state().ok().map(|d| d.sizes()),
        connections_http: ctx.http_connections.open(),
        connections_tcp: ctx.tcp_connections.open(),
        pipeline_queued_events: ctx.pipeline.queued_events(),
    };
    let mut out = ctx.metrics.render();
    gauges.render(&mut out);
    out.push_str(&ctx.outlets.render_metrics());
    out.push_str(&ctx.access.render_metrics());
    render_process(&mut out);
    out
}

/// `400` naming the query parameter that is wrong.
fn bad_parameter(e: &query::QueryError) -> Response<Body> {
    error(
        StatusCode::BAD_REQUEST,
        e.to_string(),
        json!({ "parameter": e.param }),
    )
}
