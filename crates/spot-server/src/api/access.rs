//! The access-control routes: `/api/keys` (admin: list, create, show, revoke) and spot
//! enrolment, `POST /api/spots` (write) and `GET /api/enrolments` (read). Each change is
//! written to `access.db` with the acting key's id and is in effect when answered; its
//! audit entry reaches the events log through the server's access watcher.

use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::access::{db, AccessError, Caller, Role};
use crate::clock::now_ms;
use crate::context::Context;
use crate::ingest::valid_serial;
use crate::response::{error, json_response, Body};

/// Runs a blocking `access.db` call off the async workers.
async fn blocking<R: Send + 'static>(
    ctx: &Context,
    f: impl FnOnce(&crate::access::Access) -> Result<R, AccessError> + Send + 'static,
) -> Result<R, Response<Body>> {
    let access = ctx.access.clone();
    match tokio::task::spawn_blocking(move || f(&access)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e @ (AccessError::NoSuchKey(_) | AccessError::NotEnrolled(_)))) => {
            Err(error(StatusCode::NOT_FOUND, e.to_string(), Value::Null))
        }
        Ok(Err(e)) => {
            tracing::error!("access.db: {e}");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("access control store: {e}"),
                Value::Null,
            ))
        }
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("access control store: {e}"),
            Value::Null,
        )),
    }
}

fn actor<B>(req: &Request<B>) -> String {
    req.extensions()
        .get::<Caller>()
        .map_or_else(|| "unknown".to_string(), |c| c.key_id.clone())
}

/// `GET /api/keys`: every key, revoked ones included, without secrets.
pub async fn list_keys(ctx: &Context) -> Response<Body> {
    match blocking(ctx, |a| a.read(|db| db.keys())).await {
        Ok(keys) => {
            let data: Vec<Value> = keys.iter().map(|k| k.to_json()).collect();
            json_response(StatusCode::OK, &json!({ "data": data }))
        }
        Err(resp) => resp,
    }
}

/// `GET /api/keys/{id}`.
pub async fn get_key(ctx: &Context, id: String) -> Response<Body> {
    match blocking(ctx, move |a| a.read(|db| db.key(&id))).await {
        Ok(key) => json_response(StatusCode::OK, &key.to_json()),
        Err(resp) => resp,
    }
}

/// `POST /api/keys` with `{"role": "read|write|admin", "label": "…"}`: `201` with the key
/// record and, this once, the key itself in `key`.
pub async fn create_key<B>(req: Request<B>, ctx: &Context) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let actor = actor(&req);
    let body = match super::json_body(req, ctx.limits.max_api_body_bytes).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let bad = |field: &str, reason: String| {
        error(
            StatusCode::BAD_REQUEST,
            format!("field {field}: {reason}"),
            json!({ "field": field }),
        )
    };
    let role: Role = match body.get("role").and_then(Value::as_str) {
        Some(text) => match text.parse() {
            Ok(role) => role,
            Err(e) => return bad("role", format!("{e}")),
        },
        None => return bad("role", "required: read, write or admin".into()),
    };
    let label = match body.get("label") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= 200 => s.clone(),
        Some(_) => return bad("label", "a text of at most 200 bytes".into()),
    };
    if let Some(field) = body
        .keys()
        .find(|k| !matches!(k.as_str(), "role" | "label"))
    {
        return bad(field, "cannot be set (only role and label)".into());
    }
    let now = now_ms();
    let created = blocking(ctx, move |a| {
        a.change(|db| db.create_key(role, &label, &actor, now))
    })
    .await;
    match created {
        Ok((record, token)) => {
            tracing::info!(key = %record.id, role = %record.role, "API key created");
            let mut view = record.to_json();
            view["key"] = token.into();
            json_response(StatusCode::CREATED, &view)
        }
        Err(resp) => resp,
    }
}

/// `DELETE /api/keys/{id}`: revokes the key (in effect when answered, open streams of it
/// are closed); answers the record.
pub async fn revoke_key<B>(req: Request<B>, ctx: &Context, id: String) -> Response<Body> {
    let actor = actor(&req);
    let now = now_ms();
    match blocking(ctx, move |a| a.change(|db| db.revoke_key(&id, &actor, now))).await {
        Ok(record) => {
            tracing::info!(key = %record.id, "API key revoked");
            json_response(StatusCode::OK, &record.to_json())
        }
        Err(resp) => resp,
    }
}

/// `POST /api/spots` with `{"serial_number": "203"}` (and `"secret": true` for a spot
/// secret, shown once in the answer): enrols the spot. `201` when new, `200` when it was
/// enrolled already (its secret replaced when a new one was asked for).
pub async fn enrol<B>(req: Request<B>, ctx: &Context) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let actor = actor(&req);
    let body = match super::json_body(req, ctx.limits.max_api_body_bytes).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let serial = match body.get("serial_number") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    if !valid_serial(&serial) {
        return error(
            StatusCode::BAD_REQUEST,
            "field serial_number: required, 1 to 64 letters, digits, '-' or '_'",
            json!({ "field": "serial_number" }),
        );
    }
    let with_secret = match body.get("secret") {
        None | Some(Value::Bool(false)) | Some(Value::Null) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "field secret: true to make the spot a secret, or false",
                json!({ "field": "secret" }),
            )
        }
    };
    if let Some(field) = body
        .keys()
        .find(|k| !matches!(k.as_str(), "serial_number" | "secret"))
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("field {field}: cannot be set (only serial_number and secret)"),
            json!({ "field": field }),
        );
    }
    let now = now_ms();
    let enrolled = blocking(ctx, move |a| {
        let secret = with_secret.then(db::new_spot_secret).transpose()?;
        let hash = secret.as_ref().map(|(_, hash)| *hash);
        let new = a.change(|db| db.enrol(&serial, hash, &actor, now))?;
        let record = a
            .read(|db| db.enrolment_list())?
            .into_iter()
            .find(|r| r.serial == serial);
        Ok((new, record, secret.map(|(text, _)| text)))
    })
    .await;
    match enrolled {
        Ok((new, Some(record), secret)) => {
            let mut view = record.to_json();
            if let Some(secret) = secret {
                view["secret"] = secret.into();
            }
            let status = if new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(status, &view)
        }
        Ok((_, None, _)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the enrolment was stored but cannot be read back",
            Value::Null,
        ),
        Err(resp) => resp,
    }
}

/// `GET /api/enrolments`: the enrolled spots, without secrets.
pub async fn list_enrolments(ctx: &Context) -> Response<Body> {
    match blocking(ctx, |a| a.read(|db| db.enrolment_list())).await {
        Ok(list) => {
            let data: Vec<Value> = list.iter().map(|e| e.to_json()).collect();
            json_response(StatusCode::OK, &json!({ "data": data }))
        }
        Err(resp) => resp,
    }
}
