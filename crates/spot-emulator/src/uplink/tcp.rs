//! The raw TCP transport (spec §4.2): one long stream of events out, acknowledgements
//! (`["ack","update",{"seq":N}]`) and commands in. It only moves bytes — what to write comes
//! from the session, what was read goes to it.

use std::time::Duration;

use spot_protocol::Encoding;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::sleep_until;

use super::driver::{ConnectionEnd, Driver};
use super::error::UplinkError;
use super::session::Body;

/// Most bytes of one read.
const READ_BUF: usize = 16 * 1024;

/// Serves one raw TCP connection until the run ends or something fails. An ack resets the
/// reconnect backoff (`on_success`).
pub async fn serve(
    driver: &mut Driver,
    stream: TcpStream,
    on_success: &mut (dyn FnMut() + Send),
) -> Result<ConnectionEnd, UplinkError> {
    let (mut rd, mut wr) = stream.into_split();
    driver.session.begin_connection();
    let mut body = Body::default();
    if driver.cfg.encoding == Encoding::Protobuf {
        body.bytes.push(0); // the zero-length frame that marks a protobuf stream (contract)
    }
    let now = driver.now();
    driver.session.hello(now, &mut body);
    driver.session.generate(now);
    driver.session.take_unsent(&mut body, usize::MAX);
    driver.write(&mut wr, &body.bytes).await?;
    let mut read_buf = vec![0u8; READ_BUF];
    loop {
        if driver.finished() {
            return Ok(ConnectionEnd::Finished);
        }
        let fast = driver.session.is_fast();
        let next = tokio::time::Instant::now()
            + if fast {
                Duration::ZERO
            } else {
                Duration::from_millis(driver.cfg.tick_ms)
            };
        tokio::select! {
            _ = sleep_until(next) => {}
            r = rd.read(&mut read_buf) => match r {
                Ok(0) => return Err(UplinkError::Closed("the raw TCP connection")),
                Ok(n) => {
                    let now = driver.now();
                    if driver.session.on_stream_bytes(&read_buf[..n], now) {
                        on_success();
                    }
                }
                Err(source) => return Err(UplinkError::Read { what: "read", source }),
            },
        }
        if fast {
            driver.tick_fast();
        } else {
            driver.tick();
        }
        body.clear();
        driver.session.take_unsent(&mut body, usize::MAX);
        if !body.bytes.is_empty() {
            driver.write(&mut wr, &body.bytes).await?;
        }
    }
}
