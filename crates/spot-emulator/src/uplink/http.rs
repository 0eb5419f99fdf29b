//! The HTTP transport (spec §4.1; plain TCP or TLS): POST after POST on one keep-alive
//! connection. It only moves bytes — the request head and chunk framing out, the response in
//! through [`ResponseParser`], a firmware image down — and hands every decision (what is
//! unsent, what the response means, which commands follow, which faults fire) to the session.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::{sleep_until, Instant};

use super::driver::{ConnectionEnd, Driver};
use super::error::UplinkError;
use super::session::{Body, FirmwareDownload};
use crate::wire::{self, Response, ResponseParser};

/// Most bytes of a response head, and of one read.
const READ_BUF: usize = 16 * 1024;

/// Buffers reused from write to write, POST to POST and connection to connection, so a
/// tick's write allocates nothing. After a backlog they may have grown large; a POST that
/// used little of them gives the room back.
#[derive(Default)]
pub struct Scratch {
    out: Vec<u8>,
    body: Body,
    /// The request head and the firmware version it names.
    head: (String, Vec<u8>),
    /// The most bytes `out` and `body` held since the last [`Scratch::trim`].
    high_water: usize,
}

impl Scratch {
    const KEEP: usize = 64 << 10;

    /// Called once per POST: shrinks buffers far larger than recent use.
    fn trim(&mut self) {
        for buf in [&mut self.out, &mut self.body.bytes] {
            if buf.capacity() > Self::KEEP && self.high_water < buf.capacity() / 4 {
                buf.clear();
                buf.shrink_to(Self::KEEP);
            }
        }
        self.high_water = 0;
    }

    fn note_use(&mut self) {
        self.high_water = self
            .high_water
            .max(self.out.len())
            .max(self.body.bytes.len());
    }
}

/// Serves one connection: POST after POST until the run ends or something fails. A `2xx`
/// resets the reconnect backoff (`on_success`).
pub async fn serve<R, W>(
    driver: &mut Driver,
    mut rd: R,
    mut wr: W,
    scratch: &mut Scratch,
    on_success: &mut (dyn FnMut() + Send),
) -> Result<ConnectionEnd, UplinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut first_post = true;
    driver.session.begin_connection();
    let mut read_buf = vec![0u8; READ_BUF];
    loop {
        scratch.trim();
        let version = &driver.session.spot().counters().firmware_version;
        if scratch.head.1.is_empty() || scratch.head.0 != *version {
            let server = &driver.cfg.server;
            let serial = driver.session.spot().serial();
            scratch.head = (
                version.clone(),
                wire::request_head(
                    &server.path_prefix,
                    serial,
                    &server.host,
                    version,
                    driver.cfg.encoding,
                    driver.cfg.secrets.get(&serial).map(String::as_str),
                ),
            );
        }
        scratch.out.clear();
        scratch.out.extend_from_slice(&scratch.head.1);
        scratch.body.clear();
        driver.session.begin_post();
        let post_start = driver.now();
        if first_post {
            driver.session.hello(post_start, &mut scratch.body);
            first_post = false;
        }
        let post_ms = driver.cfg.post_ms;
        let mut post_end = post_start + Duration::from_millis(post_ms);
        let plan = driver.session.plan_post(post_start);
        let mut stall = plan.stall;
        driver.session.generate(post_start);
        let body_start = scratch.body.bytes.len();
        let max_post_bytes = driver.cfg.max_post_bytes;
        driver
            .session
            .take_unsent(&mut scratch.body, max_post_bytes);
        // Event bytes this POST may still carry (`max_post_bytes`).
        let mut post_left = max_post_bytes.saturating_sub(scratch.body.bytes.len() - body_start);
        driver.session.push_chunks(&mut scratch.out, &scratch.body);
        scratch.note_use();
        driver.write(&mut wr, &scratch.out).await?;
        let mut parser = ResponseParser::new(READ_BUF, driver.cfg.max_response_body, true);
        // The body: events as they happen, until post_ms has passed or the body is full.
        loop {
            let now = Instant::now();
            if now >= post_end || post_left == 0 {
                break;
            }
            if driver.session.is_fast() {
                driver.tick_fast();
                tokio::task::yield_now().await;
            } else {
                tokio::select! {
                    _ = sleep_until(driver.next_tick(post_end)) => {}
                    r = rd.read(&mut read_buf) => match r {
                        Ok(0) => {
                            // A refusal answered early (401, 403, 503 …) says why.
                            if let Ok(Some(early)) = parser.poll() {
                                return Err(UplinkError::Status(early.status));
                            }
                            return Err(UplinkError::Closed("the connection during a POST"));
                        }
                        Ok(n) => parser.feed(&read_buf[..n]),
                        Err(source) => return Err(UplinkError::Read { what: "read during a POST", source }),
                    },
                }
                driver.tick();
            }
            if let Some((at, ms)) = stall {
                if Instant::now() >= at {
                    stall = None;
                    driver.session.stats().fault_stalls.fetch_add(1, Relaxed);
                    driver
                        .idle_until(Instant::now() + Duration::from_millis(ms))
                        .await;
                    post_end += Duration::from_millis(ms);
                }
            }
            scratch.body.clear();
            driver.session.take_unsent(&mut scratch.body, post_left);
            let body = &scratch.body.bytes;
            post_left = post_left.saturating_sub(body.len());
            if plan.cut_at.is_some_and(|at| Instant::now() >= at) && body.len() >= 2 {
                scratch.out.clear();
                wire::push_chunk_size(&mut scratch.out, body.len());
                scratch.out.extend_from_slice(&body[..body.len() / 2]);
                driver.write(&mut wr, &scratch.out).await?;
                let stats = driver.session.stats();
                stats.fault_cuts_mid_chunk.fetch_add(1, Relaxed);
                return Err(UplinkError::CutMidChunk);
            }
            if !body.is_empty() {
                scratch.out.clear();
                driver.session.push_chunks(&mut scratch.out, &scratch.body);
                scratch.note_use();
                if let Err(e) = driver.write(&mut wr, &scratch.out).await {
                    return Err(early_answer(e, &mut rd, &mut parser, &mut read_buf).await);
                }
            }
        }
        if let Err(e) = driver.write(&mut wr, wire::LAST_CHUNK).await {
            return Err(early_answer(e, &mut rd, &mut parser, &mut read_buf).await);
        }
        let body_end = driver.now();
        driver.session.body_ended(body_end);
        driver.session.stats().posts.fetch_add(1, Relaxed);
        let response = read_response(driver, &mut rd, &mut parser, &mut read_buf).await?;
        let now = driver.now();
        let commands = driver.session.on_response(&response, now)?;
        on_success();
        let mut end = None;
        for command in commands {
            let now = driver.now();
            if let Some(firmware) = driver.session.apply_command(&command, now, true) {
                fetch_firmware(driver, &firmware, &mut rd, &mut wr, &mut read_buf).await?;
                let now = driver.now();
                driver.session.install_firmware(firmware.version, now);
                end = Some(ConnectionEnd::Reboot);
            }
        }
        if let Some(end) = end {
            return Ok(end);
        }
        if response.close {
            return Ok(ConnectionEnd::Closed);
        }
        if driver.finished() {
            return Ok(ConnectionEnd::Finished);
        }
    }
}

/// After a failed write of a POST body: the status of a response the server sent before it
/// closed the connection (a refusal answered after the head: 401, 403, 413, 503 …), which
/// says why better than the write error; else `error`.
async fn early_answer<R: AsyncRead + Unpin>(
    error: UplinkError,
    rd: &mut R,
    parser: &mut ResponseParser,
    read_buf: &mut [u8],
) -> UplinkError {
    let read = tokio::time::timeout(Duration::from_millis(200), rd.read(read_buf)).await;
    if let Ok(Ok(n)) = read {
        parser.feed(&read_buf[..n]);
    }
    match parser.poll() {
        Ok(Some(early)) => UplinkError::Status(early.status),
        _ => error,
    }
}

/// Reads a response, generating events meanwhile.
async fn read_response<R: AsyncRead + Unpin>(
    driver: &mut Driver,
    rd: &mut R,
    parser: &mut ResponseParser,
    read_buf: &mut [u8],
) -> Result<Response, UplinkError> {
    let deadline = Instant::now() + Duration::from_millis(driver.cfg.response_timeout_ms);
    loop {
        if let Some(r) = parser.poll()? {
            return Ok(r);
        }
        if Instant::now() >= deadline {
            return Err(UplinkError::NoResponse);
        }
        tokio::select! {
            _ = sleep_until(driver.next_tick(deadline)) => driver.tick(),
            r = rd.read(read_buf) => match r {
                Ok(0) => {
                    return parser
                        .eof()
                        .ok_or(UplinkError::Closed("the connection before responding"));
                }
                Ok(n) => parser.feed(&read_buf[..n]),
                Err(source) => return Err(UplinkError::Read { what: "read response", source }),
            },
        }
    }
}

/// Downloads a firmware image over the same connection (and drops it: only its size counts).
async fn fetch_firmware<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    driver: &mut Driver,
    firmware: &FirmwareDownload,
    rd: &mut R,
    wr: &mut W,
    read_buf: &mut [u8],
) -> Result<(), UplinkError> {
    let server = &driver.cfg.server;
    let url = &firmware.url;
    let request = wire::firmware_request(
        &server.path_prefix,
        url,
        &server.host,
        &driver.session.spot().counters().firmware_version,
    );
    driver.write(wr, &request).await?;
    let limit = driver.cfg.max_firmware_bytes;
    let mut parser = ResponseParser::new(READ_BUF, limit, false);
    let response = read_response(driver, rd, &mut parser, read_buf).await?;
    if !(200..300).contains(&response.status) {
        return Err(UplinkError::FirmwareStatus {
            url: url.clone(),
            status: response.status,
        });
    }
    if response.body_len > limit {
        return Err(UplinkError::FirmwareTooLarge {
            url: url.clone(),
            bytes: response.body_len,
            limit,
        });
    }
    Ok(())
}
