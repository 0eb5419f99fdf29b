//! Streaming spot ingest over HTTP (`POST /api/spots/{serial}/events[/]`, spec §4.1 and the
//! delivery contract): each body chunk is fed to a [`Decoder`] and the decoded events go to
//! the pipeline at once (so they are visible before the body ends); at the end of the body
//! the handler asks the pipeline to sync and answers `200` only after the commit, with
//! `X-Spot-Ack`, the `Date` hyper adds, and the spot's pending commands encoded per `Accept`.
//! While commits to the store fail (a full disk), a POST is answered `503` with `Retry-After`
//! at once, also one already under way or waiting on the commit that fails: nothing is
//! acknowledged that is not stored (what it sent may still commit later; its sequence keys
//! keep the resend from being stored twice).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_TYPE, USER_AGENT,
    WWW_AUTHENTICATE,
};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use spot_protocol::{Decoder, Encoder, Encoding, Limits};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::access::AdmissionRefusal;
use crate::context::Context;
use crate::ingest::{admit, decoded_events, valid_serial};
use crate::pipeline::{EndReply, PipelineMsg};
use crate::response::{error, unavailable, unavailable_state, Body};

/// The header carrying the highest sequence durably stored for the spot.
pub const ACK_HEADER: &str = "x-spot-ack";

/// `Retry-After` (seconds) of the `503` answered while commits fail
/// ([`crate::pipeline::PipelineSender::commit_failing`]): a spot keeps its events and tries
/// again later instead of reconnecting at once.
pub const COMMIT_FAILING_RETRY_AFTER: &str = "5";
/// The header counting the messages of this POST that were skipped as malformed.
pub const REJECTED_HEADER: &str = "x-spot-rejected";
/// The response encoding named by `Accept`; the request's when absent or a wildcard.
/// An `Accept` header that names neither encoding (nor a wildcard): its text.
#[derive(Debug, PartialEq, Eq)]
struct NotAcceptable(String);

fn response_encoding(headers: &HeaderMap, request: Encoding) -> Result<Encoding, NotAcceptable> {
    let Some(value) = headers.get(ACCEPT) else {
        return Ok(request);
    };
    let text = value
        .to_str()
        .map_err(|_| NotAcceptable("<not text>".into()))?;
    let mut wildcard = false;
    for part in text.split(',') {
        if let Some(e) = Encoding::from_media_type(part) {
            return Ok(e);
        }
        let essence = part.split(';').next().unwrap_or("").trim();
        if matches!(essence, "*/*" | "text/*" | "application/*" | "") {
            wildcard = true;
        }
    }
    if wildcard {
        Ok(request)
    } else {
        Err(NotAcceptable(text.to_string()))
    }
}
/// The secret of HTTP Basic `serial:secret`, if the spot sent one. Credentials of another
/// serial are refused as a wrong secret: a secret binds to its serial.
fn basic_secret(headers: &HeaderMap, serial: &str) -> Result<Option<String>, AdmissionRefusal> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let encoded = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Basic "))
        .ok_or(AdmissionRefusal::SecretWrong)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or(AdmissionRefusal::SecretWrong)?;
    match decoded.split_once(':') {
        Some((user, secret)) if user == serial => Ok(Some(secret.to_string())),
        _ => Err(AdmissionRefusal::SecretWrong),
    }
}

/// The answer to a spot that admission refuses: `401` asking for Basic credentials when
/// it sent none to a server that needs its secret, `403` otherwise. Nothing is stored.
fn refused(refusal: AdmissionRefusal, serial: &str) -> Response<Body> {
    tracing::debug!(spot = %serial, "spot refused: {refusal}");
    let status = match refusal {
        AdmissionRefusal::SecretMissing => StatusCode::UNAUTHORIZED,
        _ => StatusCode::FORBIDDEN,
    };
    let mut resp = error(
        status,
        format!("spot {serial}: {refusal}"),
        serde_json::json!({ "reason": refusal.as_str() }),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"spot\""),
        );
    }
    resp
}

/// Ends the stream with the pipeline if the handler is dropped mid-body (client went away).
struct StreamGuard {
    pipeline: crate::pipeline::PipelineSender,
    serial: String,
    armed: bool,
}
impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let pipeline = self.pipeline.clone();
        let serial = std::mem::take(&mut self.serial);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let (reply, _rx) = oneshot::channel();
                let _ = pipeline
                    .send(PipelineMsg::Sync {
                        serial,
                        end_stream: true,
                        take_commands: false,
                        reply,
                    })
                    .await;
            });
        }
    }
}

pub async fn ingest<B>(req: Request<B>, serial: String, shared: &Context) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let limits = &shared.limits;
    if !valid_serial(&serial) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("bad spot serial {serial:?}: 1 to 64 letters, digits, '-' or '_'"),
            Value::Null,
        );
    }
    let secret = match basic_secret(req.headers(), &serial) {
        Ok(secret) => secret,
        Err(refusal) => return refused(refusal, &serial),
    };
    if let Err(refusal) = admit(shared, &serial, secret.as_deref()).await {
        return refused(refusal, &serial);
    }
    let encoding = match req.headers().get(CONTENT_TYPE) {
        None => Encoding::Json,
        Some(v) => match v.to_str().ok().and_then(Encoding::from_media_type) {
            Some(e) => e,
            None => {
                let resp = error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "unsupported Content-Type {:?}; use {} or {}",
                        String::from_utf8_lossy(v.as_bytes()),
                        Encoding::Json.media_type(),
                        Encoding::Protobuf.media_type()
                    ),
                    Value::Null,
                );
                return with_ack(resp, &serial, shared, false).await;
            }
        },
    };
    let response_encoding = match response_encoding(req.headers(), encoding) {
        Ok(e) => e,
        Err(NotAcceptable(accept)) => {
            let resp = error(
                StatusCode::NOT_ACCEPTABLE,
                format!(
                    "cannot answer in {accept:?}; accept {} or {}",
                    Encoding::Json.media_type(),
                    Encoding::Protobuf.media_type()
                ),
                Value::Null,
            );
            return with_ack(resp, &serial, shared, false).await;
        }
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        shared
            .metrics
            .requests_refused
            .fetch_add(1, Ordering::Relaxed);
        let resp = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body exceeds {} bytes", limits.max_body_bytes),
            Value::Null,
        );
        return close(with_ack(resp, &serial, shared, false).await);
    }
    if let Some(failing) = shared.pipeline.commit_failing() {
        // At once: nothing of this POST could be acknowledged until commits succeed.
        return store_failing(shared, &failing);
    }
    let version = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.strip_prefix("spot/"))
        .map(|v| v.trim().to_string());
    let begin = PipelineMsg::Begin {
        serial: serial.clone(),
        version,
    };
    if shared.pipeline.send(begin).await.is_err() {
        return unavailable();
    }
    let mut guard = StreamGuard {
        pipeline: shared.pipeline.clone(),
        serial: serial.clone(),
        armed: true,
    };
    let mut decoder = Decoder::new(
        encoding,
        Limits {
            max_message_bytes: limits.max_message_bytes,
            max_depth: limits.max_depth,
        },
    );
    let mut body = req.into_body();
    // One allocation for the serial of every message of this stream.
    let stream_serial: Arc<str> = Arc::from(serial.as_str());
    let deadline = Instant::now() + limits.max_post_duration;
    // One timer for the whole body, due every quarter of the idle timeout: the body is idle
    // once 4 ticks in a row saw no frame (silence of 1 to 1.25 idle timeouts). A timer per
    // frame cost a timer-wheel insert and removal and a clock read per chunk.
    let quarter = (limits.body_idle_timeout / 4).max(Duration::from_millis(1));
    let tick = tokio::time::sleep_until((Instant::now() + quarter).min(deadline));
    let mut tick = std::pin::pin!(tick);
    let mut silent_ticks = 0;
    let mut frames_since_tick = false;
    let mut received: u64 = 0;
    let mut malformed: u64 = 0;
    let failure = loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = tick.as_mut() => {
                if tick.deadline() >= deadline {
                    break Some((
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "body not finished within {}s",
                            limits.max_post_duration.as_secs()
                        ),
                    ));
                }
                silent_ticks = if frames_since_tick { 0 } else { silent_ticks + 1 };
                frames_since_tick = false;
                if silent_ticks >= 4 {
                    break Some((
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "no body data for {}s",
                            limits.body_idle_timeout.as_secs_f64()
                        ),
                    ));
                }
                let next = (tick.deadline() + quarter).min(deadline);
                tick.as_mut().reset(next);
                continue;
            }
        };
        frames_since_tick = true;
        let frame = match frame {
            None => break None,
            Some(Err(e)) => {
                break Some((StatusCode::BAD_REQUEST, format!("body framing: {e}")));
            }
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        received += data.len() as u64;
        if received > limits.max_body_bytes {
            break Some((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body exceeds {} bytes", limits.max_body_bytes),
            ));
        }
        decoder.feed(&data);
        let events = decoded_events(&mut decoder, &serial, shared, &mut malformed);
        if !events.is_empty() {
            let msg = PipelineMsg::Events {
                serial: stream_serial.clone(),
                events,
                ack: None,
            };
            match unless_store_fails(shared, shared.pipeline.send(msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return unavailable(),
                Err(failing) => return store_failing(shared, &failing),
            }
        }
    };
    if let Some((status, message)) = failure {
        tracing::warn!(spot = %serial, %status, "POST refused: {message}");
        shared
            .metrics
            .requests_refused
            .fetch_add(1, Ordering::Relaxed);
        guard.armed = false;
        let resp = error(status, message, Value::Null);
        return close(with_ack(resp, &serial, shared, true).await);
    }
    let body_ended = std::time::Instant::now();
    decoder.finish();
    let events = decoded_events(&mut decoder, &serial, shared, &mut malformed);
    if !events.is_empty() {
        let msg = PipelineMsg::Events {
            serial: stream_serial,
            events,
            ack: None,
        };
        match unless_store_fails(shared, shared.pipeline.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return unavailable(),
            Err(failing) => return store_failing(shared, &failing),
        }
    }
    guard.armed = false;
    let reply = match unless_store_fails(shared, sync(shared, &serial, true, true)).await {
        Ok(Some(reply)) => reply,
        Ok(None) => return unavailable(),
        Err(failing) => return store_failing(shared, &failing),
    };
    let mut out = Vec::new();
    let mut encoder = Encoder::new(response_encoding);
    for command in &reply.commands {
        encoder.encode(command, &mut out);
    }
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(response_encoding.media_type()),
    );
    headers.insert(ACK_HEADER, HeaderValue::from(reply.acked_seq));
    if malformed > 0 {
        headers.insert(REJECTED_HEADER, HeaderValue::from(malformed));
    }
    shared.metrics.posts_ok.fetch_add(1, Ordering::Relaxed);
    shared.metrics.observe_ack(body_ended.elapsed());
    resp
}

/// `waiting`'s output, or the store's error if a commit fails first (or is failing now):
/// a POST waiting on a commit is answered at once instead of for as long as the disk is
/// full. What it queued commits later or never; it is not acknowledged either way.
async fn unless_store_fails<T>(
    shared: &Context,
    waiting: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::select! {
        biased;
        // Polled first: when it is ready at once, the watch is never looked at.
        done = waiting => Ok(done),
        failing = shared.pipeline.commit_fails() => Err(failing),
    }
}

/// `503` with `Retry-After` while commits fail: nothing of this POST is acknowledged; the
/// connection is closed (the spot keeps its events and comes back later).
fn store_failing(shared: &Context, failing: &str) -> Response<Body> {
    shared
        .metrics
        .requests_refused
        .fetch_add(1, Ordering::Relaxed);
    let mut resp = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the server cannot store events now ({failing}); nothing was acknowledged, send again later"),
        Value::Null,
    );
    resp.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        HeaderValue::from_static(COMMIT_FAILING_RETRY_AFTER),
    );
    close(resp)
}

async fn sync(
    shared: &Context,
    serial: &str,
    end_stream: bool,
    take_commands: bool,
) -> Option<EndReply> {
    let (reply, rx) = oneshot::channel();
    let msg = PipelineMsg::Sync {
        serial: serial.to_string(),
        end_stream,
        take_commands,
        reply,
    };
    shared.pipeline.send(msg).await.ok()?;
    rx.await.ok()
}
/// Adds `X-Spot-Ack` (after a sync, so it is durable) to a response to a spot.
async fn with_ack(
    mut resp: Response<Body>,
    serial: &str,
    shared: &Context,
    end_stream: bool,
) -> Response<Body> {
    let known = match shared.live_state() {
        Ok(domain) => domain.spot_by_serial(serial).is_some(),
        Err(why) => return unavailable_state(&why),
    };
    let acked = if known || end_stream {
        sync(shared, serial, end_stream, false)
            .await
            .map_or(0, |r| r.acked_seq)
    } else {
        0
    };
    resp.headers_mut()
        .insert(ACK_HEADER, HeaderValue::from(acked));
    resp
}
fn close(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_chooses_the_response_encoding() {
        let mut h = HeaderMap::new();
        assert_eq!(
            response_encoding(&h, Encoding::Protobuf),
            Ok(Encoding::Protobuf)
        );
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/x-intellifi-events-pb"),
        );
        assert_eq!(
            response_encoding(&h, Encoding::Json),
            Ok(Encoding::Protobuf)
        );
        h.insert(ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(response_encoding(&h, Encoding::Json), Ok(Encoding::Json));
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(response_encoding(&h, Encoding::Json).is_err());
    }
}
