//! The REST API: `GET /api/{collection}` (filters, sort, paging, long poll: [`query`]),
//! `GET /api/{collection}/{id}`, `PUT /api/{collection}/{id}`, `POST /api/{collection}` and
//! `DELETE /api/{collection}/{id}` (locations, items; answered after commit), each
//! document shaped as the vendor's API has it ([`view`]), as JSON or (`.csv`) CSV, and
//! `GET /metrics`; [`access`]: `/api/keys` and spot enrolment (`POST /api/spots`);
//! [`index`]: what `/`, `/api`, `/healthz` and `/readyz` answer. docs/api-compatibility.md
//! says where this API differs from the vendor's.

pub mod access;
pub mod index;
pub mod query;
pub mod view;

use http_body_util::{BodyExt, Limited};
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

type Object = Map<String, Value>;
use tokio::sync::oneshot;

use crate::api::query::Query;
use crate::api::view::{Schema, Shape};
use crate::context::Context;
use crate::domain::{PutError, Write};
use crate::metrics::{render_process, Gauges};
use crate::pipeline::PipelineMsg;
use crate::response::{error, json_response, unavailable, unavailable_state, Body};

/// How a document or a list is written: `.json` (the default) or `.csv` after the
/// collection or the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// CSV: a header of the fields, a line per document (nested values as JSON).
    Csv,
}

/// `name` without its `.json` or `.csv` suffix, and the format it asks for.
pub fn format_of(name: &str) -> (&str, Format) {
    if let Some(stem) = name.strip_suffix(".json") {
        (stem, Format::Json)
    } else if let Some(stem) = name.strip_suffix(".csv") {
        (stem, Format::Csv)
    } else {
        (name, Format::Json)
    }
}

/// `scheme://host` as the client reached the server: `X-Forwarded-Proto` and
/// `X-Forwarded-Host` of a proxy (their first values), else the listener's scheme and
/// `Host`.
pub fn base_url<B>(req: &Request<B>) -> String {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let listener = req
        .extensions()
        .get::<crate::http::Scheme>()
        .map_or("http", |s| s.0);
    let scheme = header("x-forwarded-proto").unwrap_or(listener);
    let host = header("x-forwarded-host")
        .or_else(|| header("host"))
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

/// The query's parameters (`key` excepted: the key check took it).
fn query_params<B>(req: &Request<B>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .filter(|(k, _)| k != "key")
        .collect()
}

fn no_collection(collection: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        format!("no collection {collection:?}"),
        Value::Null,
    )
}

/// `GET /api/{collection}` (`collection` is the path under `/api/`, [`view::path_of`]): a
/// page of documents. With `timeout_s`, an empty page waits (awaiting the derived events of
/// each commit, holding no thread) until a document matches or the time is up.
pub async fn list<B>(req: &Request<B>, collection: &str, shared: &Context) -> Response<Body> {
    let (collection, format) = format_of(collection);
    let Some(schema) = view::schema_at(collection) else {
        return no_collection(collection);
    };
    run_list(req, schema.name, format, None, shared).await
}

/// `GET /api/subscriptions/{id}/events`: the events log's events that the subscription's
/// topic filter matches, as `GET /api/events` pages them (every parameter of it works).
pub async fn subscription_events<B>(
    req: &Request<B>,
    id: &str,
    shared: &Context,
) -> Response<Body> {
    let (id, format) = format_of(id);
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            format!("subscription {id:?} not found"),
            Value::Null,
        )
    };
    let Ok(number) = id.parse::<i64>() else {
        return not_found();
    };
    let filter = match shared.outlets.subscription_filter(number).await {
        Ok(Some(filter)) => filter,
        Ok(None) => return not_found(),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading subscription {id}: {e}"),
                Value::Null,
            )
        }
    };
    match spot_push::TopicFilter::new(&filter) {
        Ok(filter) => run_list(req, "events", format, Some(filter), shared).await,
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("subscription {id}: its topic filter {filter:?} is not one: {e}"),
            Value::Null,
        ),
    }
}

/// A page of `collection` (events only those `topics` matches, when given).
async fn run_list<B>(
    req: &Request<B>,
    collection: &str,
    format: Format,
    topics: Option<spot_push::TopicFilter>,
    shared: &Context,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let params = query_params(req);
    let mut query = match Query::parse(collection, &params) {
        Ok(query) => query,
        Err(e) => return bad_parameter(&e),
    };
    if let Some(topics) = topics {
        query.only_topics(topics);
    }
    query.shape.base = base_url(req);
    let path = req.uri().path().to_string();
    // Subscribed before the first look: nothing committed in between is missed.
    let mut changes = match query.timeout {
        Some(_) => {
            let all = spot_push::TopicFilter::new("#").expect("# is a topic filter");
            match shared
                .outlets
                .hub()
                .subscribe_with_capacity("long-poll", vec![all], 1)
            {
                Ok(subscription) => Some(subscription),
                Err(e) => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("timeout_s: cannot wait for changes now ({e})"),
                        Value::Null,
                    )
                }
            }
        }
        None => None,
    };
    let deadline = query.timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        // Under the read lock only the rows the page needs, shared (no JSON): ingest
        // waits for no list.
        let (rows, total) = match shared.live_state() {
            Ok(domain) => {
                query.shape.retention_ms = domain.events_retention_ms();
                (query.rows(&domain), query.count(&domain))
            }
            Err(why) => return unavailable_state(&why),
        };
        let Some(rows) = rows else {
            return no_collection(collection);
        };
        // A reference the state can no longer resolve stays an id.
        let lookup = |collection: &str, id: &str| shared.live_state().ok()?.get(collection, id);
        let mut page = query.page(rows, &path, total, &lookup);
        let empty = page
            .get("results")
            .unwrap_or(&page)
            .as_array()
            .is_some_and(Vec::is_empty);
        if let (true, Some(changes), Some(deadline)) = (empty, changes.as_mut(), deadline) {
            // Something committed: look again (drained: one look per wake-up). The time
            // up (or the hub gone): the empty page.
            if let Ok(Some(_)) = tokio::time::timeout_at(deadline, changes.recv()).await {
                while changes.try_recv().is_some() {}
                // A cluster node hears of a change before its replica holds it.
                if let Some(barrier) = &shared.read_barrier {
                    barrier.catch_up().await;
                }
                continue;
            }
        }
        if let Some(envelope) = page.as_object_mut() {
            let ms = started.elapsed().as_millis() as u64;
            envelope.insert("query_duration_ms".into(), ms.into());
        }
        return match format {
            Format::Json => json_response(StatusCode::OK, &page),
            Format::Csv => csv_response(page.get("results").unwrap_or(&page)),
        };
    }
}

/// The parameters a single document's `GET` takes.
const ONE_PARAMETERS: [&str; 4] = ["populate", "select", "id_only", "topic_format"];

/// `GET /api/{collection}/{id}`: one document; `populate`, `select`, `id_only` and
/// `topic_format` work as on the collection, any other parameter is a `400`.
pub fn get_one<B>(
    req: &Request<B>,
    collection: &str,
    id: &str,
    shared: &Context,
) -> Response<Body> {
    let (id, format) = format_of(id);
    let Some(schema) = view::schema_at(collection) else {
        return no_collection(collection);
    };
    let collection = schema.name;
    let params = query_params(req);
    if let Some((name, _)) = params
        .iter()
        .find(|(k, _)| !ONE_PARAMETERS.contains(&k.as_str()))
    {
        return bad_parameter(&query::QueryError {
            param: name.clone(),
            reason: format!("a single document takes only {}", ONE_PARAMETERS.join(", ")),
        });
    }
    let mut query = match Query::parse(collection, &params) {
        Ok(query) => query,
        Err(e) => return bad_parameter(&e),
    };
    query.shape.base = base_url(req);
    let domain = match shared.live_state() {
        Ok(domain) => domain,
        Err(why) => return unavailable_state(&why),
    };
    query.shape.retention_ms = domain.events_retention_ms();
    match domain.get(collection, id) {
        Some(v) => {
            let page = query.page(vec![v], "", None, &|c, id| domain.get(c, id));
            let v = page["results"][0].clone();
            match format {
                Format::Json => json_response(StatusCode::OK, &v),
                Format::Csv => csv_response(&Value::Array(vec![v])),
            }
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("{collection} {id:?} not found"),
            Value::Null,
        ),
    }
}

/// Documents as CSV: a header line of every top-level field (in the order first met),
/// then a line per document; nested values are their JSON text.
fn csv_response(docs: &Value) -> Response<Body> {
    let docs = docs.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut columns: Vec<&str> = Vec::new();
    for doc in docs {
        for key in doc.as_object().into_iter().flat_map(|o| o.keys()) {
            if !columns.contains(&key.as_str()) {
                columns.push(key);
            }
        }
    }
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut write = || -> Result<Vec<u8>, csv::Error> {
        out.write_record(&columns)?;
        for doc in docs {
            out.write_record(columns.iter().map(|c| match doc.get(*c) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            }))?;
        }
        out.flush()?;
        Ok(out.get_ref().clone())
    };
    match write() {
        Ok(bytes) => {
            let mut resp = Response::new(http_body_util::Full::new(bytes::Bytes::from(bytes)));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            resp
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("writing CSV: {e}"),
            Value::Null,
        ),
    }
}

/// `PUT`, `POST` or `DELETE` of a resource, answered after commit with the resource in the
/// shape of a `GET` (for a `DELETE`: as it was), with the vendor's `resource` (`id`, `url`)
/// besides. A `PUT` takes a document as a `GET` answered it: its read-only fields are
/// accepted when unchanged (those the server changes on its own ignored), and a changed one
/// is a `400` naming it.
pub async fn write<B>(
    req: Request<B>,
    method: Write,
    collection: String,
    id: String,
    shared: &Context,
) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (collection, _) = format_of(&collection);
    let Some(schema) = view::schema_at(collection) else {
        return no_collection(collection);
    };
    let collection = schema.name;
    let shape = Shape {
        base: base_url(&req),
        ..Shape::default()
    };
    let body = match method {
        Write::Delete => Object::new(),
        _ => match json_body(req, shared.limits.max_api_body_bytes).await {
            Ok(body) => body,
            Err(resp) => return resp,
        },
    };
    let body = match method {
        Write::Put => {
            let current = match shared.live_state() {
                Ok(domain) => domain.get(collection, &id),
                Err(why) => return unavailable_state(&why),
            };
            match current {
                // A collection that takes no PUT: the pipeline answers the 405.
                Some(_) if schema.writable.is_empty() => body,
                Some(mut current) => {
                    shape.derive(collection, &mut current);
                    shape.derive_ids(collection, &mut current);
                    match settable(schema, &current, body) {
                        Ok(body) => body,
                        Err(refused) => return bad_field(&refused.field, &refused.message),
                    }
                }
                // The pipeline answers the 404 (or 405).
                None => body,
            }
        }
        _ => body,
    };
    let mut v = match commit_write(method, collection, id, body, shared).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    if let Ok(domain) = shared.live_state() {
        let shape = Shape {
            retention_ms: domain.events_retention_ms(),
            ..shape
        };
        shape.apply(collection, &mut v);
    }
    if let Some(o) = v.as_object_mut() {
        let resource = json!({"id": o.get("id"), "url": o.get("url")});
        o.insert("resource".into(), resource);
    }
    let status = match method {
        Write::Post => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    json_response(status, &v)
}

/// Hands a change to the pipeline; its answer after the commit, or the error response
/// saying why it was not made.
async fn commit_write(
    method: Write,
    collection: &str,
    id: String,
    body: Object,
    shared: &Context,
) -> Result<Value, Response<Body>> {
    let (reply, rx) = oneshot::channel();
    let msg = PipelineMsg::Put {
        method,
        collection: collection.to_string(),
        id,
        body,
        reply,
    };
    if shared.pipeline.send(msg).await.is_err() {
        return Err(unavailable());
    }
    Err(match rx.await {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e @ PutError::NotFound { .. })) => {
            error(StatusCode::NOT_FOUND, e.to_string(), Value::Null)
        }
        Ok(Err(e @ PutError::Conflict(_))) => {
            error(StatusCode::CONFLICT, e.to_string(), Value::Null)
        }
        Ok(Err(e @ PutError::MethodNotAllowed(_))) => {
            let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, e.to_string(), Value::Null);
            let allowed = match (collection, method) {
                ("spots", _) => "GET, PUT",
                ("locations" | "items", Write::Post) => "GET, POST",
                ("locations" | "items", _) => "GET, PUT, DELETE",
                _ => "GET",
            };
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            resp
        }
        Ok(Err(PutError::BadField { field, reason })) => {
            bad_field(&field, &format!("field {field:?}: {reason}"))
        }
        Err(_) => unavailable(),
    })
}

/// `GET /api/sets/{lists}/{id}/ids`: the ids of a list's items (or spots), in id order.
pub fn list_members(collection: &str, id: &str, shared: &Context) -> Response<Body> {
    let Some(schema) = view::schema_at(collection) else {
        return no_collection(collection);
    };
    let members = match shared.live_state() {
        Ok(domain) => domain.list_members(schema.name, id),
        Err(why) => return unavailable_state(&why),
    };
    match members {
        Some(ids) => json_response(StatusCode::OK, &Value::from(ids)),
        None => error(
            StatusCode::NOT_FOUND,
            format!("{} {id:?} not found", schema.name),
            Value::Null,
        ),
    }
}

/// `POST /api/sets/{lists}/{id}/ids` (a JSON array of item or spot ids: adds those not in
/// the list yet) or `DELETE /api/sets/{lists}/{id}/ids/{member}` (removes one), answered
/// after commit with the vendor's `{"status": 200, "total": <members>}`.
pub async fn write_members<B>(
    req: Request<B>,
    collection: &str,
    id: String,
    member: Option<String>,
    shared: &Context,
) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Some(schema) = view::schema_at(collection) else {
        return no_collection(collection);
    };
    let mut body = Object::new();
    let method = match member {
        Some(member) => {
            body.insert("id".into(), member.into());
            Write::RemoveMember
        }
        None => match json_value(req, shared.limits.max_api_body_bytes).await {
            Ok(ids @ Value::Array(_)) => {
                body.insert("ids".into(), ids);
                Write::AddMembers
            }
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be a JSON array of ids",
                    Value::Null,
                )
            }
            Err(resp) => return resp,
        },
    };
    match commit_write(method, schema.name, id, body, shared).await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(resp) => resp,
    }
}

/// A field of a `PUT` body that cannot be taken.
#[derive(Debug)]
struct Refused {
    /// The field.
    field: String,
    /// Why, in a sentence.
    message: String,
}

/// The fields of a `PUT` body the domain is to set: the writable ones; a read-only field
/// is dropped when the server changes it on its own or when it is unchanged, else it is
/// refused.
fn settable(schema: &Schema, current: &Value, body: Object) -> Result<Object, Refused> {
    let mut out = Object::new();
    let aliased: Vec<String> = body
        .keys()
        .filter_map(|k| k.strip_suffix("_id"))
        .filter(|base| schema.writable.contains(base) && !body.contains_key(*base))
        .map(|base| format!("{base}_id"))
        .collect();
    for (k, v) in body {
        if aliased.contains(&k) {
            // The vendor's `<ref>_id` (as `id_only` shows it) sets the reference.
            out.insert(k.trim_end_matches("_id").to_string(), v);
        } else if schema.writable.contains(&k.as_str()) {
            out.insert(k, v);
        } else if schema.live.contains(&k.as_str()) || current.get(&k) == Some(&v) {
            // Read-only, and unchanged (or the server's to change): a round trip.
        } else if current.get(&k).is_some() {
            let message = format!(
                "field {k:?} is read-only: send it unchanged or leave it out (settable: {})",
                schema.writable.join(", ")
            );
            return Err(Refused { field: k, message });
        } else {
            let message = format!(
                "field {k:?} is not a field of {} (settable: {})",
                schema.name,
                schema.writable.join(", ")
            );
            return Err(Refused { field: k, message });
        }
    }
    Ok(out)
}

/// `400` naming the body field that is wrong.
fn bad_field(field: &str, message: &str) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, message, json!({ "field": field }))
}

/// The JSON object of a request body of at most `limit` bytes; otherwise the answer
/// (`413`, `400`) saying what is wrong.
pub async fn json_body<B>(req: Request<B>, limit: u64) -> Result<Object, Response<Body>>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match json_value(req, limit).await? {
        Value::Object(o) => Ok(o),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "body must be a JSON object",
            Value::Null,
        )),
    }
}

/// The JSON value of a request body of at most `limit` bytes; otherwise the answer
/// (`413`, `400`) saying what is wrong.
async fn json_value<B>(req: Request<B>, limit: u64) -> Result<Value, Response<Body>>
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
        Ok(v) => Ok(v),
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
