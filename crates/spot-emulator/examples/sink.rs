//! A load sink for measuring the emulator: accepts event POSTs on `ADDR` (default
//! 127.0.0.1:8099), reads each chunked body to its end without decoding it, and answers
//! `200` with no `X-Spot-Ack` (so a `2xx` acknowledges the whole POST, spec §6). Prints the
//! bytes and requests received every 5 seconds.
//!
//! `cargo run --release -p spot-emulator --example sink -- 127.0.0.1:8099`

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let bytes = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    {
        let (bytes, requests) = (bytes.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                eprintln!(
                    "sink: {} requests, {} body bytes",
                    requests.load(Relaxed),
                    bytes.load(Relaxed)
                );
            }
        });
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let (bytes, requests) = (bytes.clone(), requests.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (bytes, requests) = (bytes.clone(), requests.clone());
                async move {
                    let mut body = req.into_body();
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Some(data) = frame.data_ref() {
                            bytes.fetch_add(data.len() as u64, Relaxed);
                        }
                    }
                    requests.fetch_add(1, Relaxed);
                    Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
