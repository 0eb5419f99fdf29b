//! The JSON error and response bodies every route answers with.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

/// Response body type.
pub type Body = Full<Bytes>;
/// A JSON error `{"error": message, ...extra}`.
pub fn error(status: StatusCode, message: impl Into<String>, extra: Value) -> Response<Body> {
    let mut body = json!({ "error": message.into() });
    if let (Some(obj), Value::Object(more)) = (body.as_object_mut(), extra) {
        obj.extend(more);
    }
    json_response(status, &body)
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; allowed: {allow}"),
        Value::Null,
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// `503` when the way to the state's owner is closed or gave no answer: the server is
/// stopping, or (a cluster node) it has no edge role, or no stage answered in time.
pub fn unavailable() -> Response<Body> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server cannot take this now: it is stopping, or, on a cluster node, it has no \
         edge role (spot streams) or no partition owner answered in time (REST changes: the \
         change may still be applied); nothing of a spot stream was acknowledged, send it again",
        Value::Null,
    )
}

/// `503` for a live state that is not served ([`crate::context::Context::live_state`]).
pub fn unavailable_state(why: &crate::context::StateUnavailable) -> Response<Body> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        why.to_string(),
        Value::Null,
    )
}
