//! [`ConnIo`]: what hyper reads and writes for one HTTP connection: the bytes read ahead
//! to identify the connection (its first request head) handed back first, and writes that
//! make no progress for the write timeout failed, so a client that stops reading (an SSE
//! stream whose socket stays full: hyper then waits for the socket and no longer polls the
//! body) loses its connection and its slot instead of holding them. It holds the
//! connection's slot ([`Admitted`]) as long as the socket lives, a WebSocket's too (hyper
//! hands the IO on at the upgrade).
//!
//! Hand-written: the read-ahead and the write deadline are one small wrapper; the crates
//! that offer either (`tokio-io-timeout`, hyper-util's private `Rewind`) offer only one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::accept::Admitted;

/// A connection's IO: `read_ahead` first, then `io`; a write pending for `write_timeout`
/// fails with [`io::ErrorKind::TimedOut`].
#[derive(Debug)]
pub struct ConnIo<I> {
    io: I,
    read_ahead: Bytes,
    write_timeout: Duration,
    /// Since when writes have been pending (armed at the first `Pending`, cleared by
    /// progress).
    stalled: Option<Pin<Box<Sleep>>>,
    /// The connection's slot, given back when the socket is dropped.
    _slot: Option<Admitted>,
}

impl<I> ConnIo<I> {
    /// `io`, with `read_ahead` (already read from it) to be read first.
    pub fn new(io: I, read_ahead: Bytes, write_timeout: Duration) -> ConnIo<I> {
        ConnIo {
            io,
            read_ahead,
            write_timeout,
            stalled: None,
            _slot: None,
        }
    }

    /// Holds `slot` until the connection is dropped.
    pub fn holding(self, slot: Admitted) -> ConnIo<I> {
        ConnIo {
            _slot: Some(slot),
            ..self
        }
    }

    /// After a write attempt: progress disarms the deadline; `Pending` arms it, and once
    /// it has passed, fails.
    fn deadline<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took nothing for {}s (not reading); connection closed",
                    timeout.as_secs_f64()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ConnIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read_ahead.has_remaining() {
            let n = this.read_ahead.len().min(buf.remaining());
            buf.put_slice(&this.read_ahead[..n]);
            this.read_ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ConnIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.deadline(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.deadline(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.deadline(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.deadline(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn the_read_ahead_comes_first_then_the_connection() {
        let (near, mut far) = tokio::io::duplex(64);
        far.write_all(b" world").await.unwrap();
        drop(far);
        let mut io = ConnIo::new(near, Bytes::from_static(b"hello"), Duration::from_secs(1));
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    #[tokio::test]
    async fn a_write_the_peer_does_not_take_fails_after_the_write_timeout() {
        let (near, mut far) = tokio::io::duplex(8);
        let mut io = ConnIo::new(near, Bytes::new(), Duration::from_millis(50));
        // The peer reads a little, then stops: progress disarms the deadline.
        io.write_all(b"12345678").await.unwrap();
        let mut got = [0u8; 8];
        far.read_exact(&mut got).await.unwrap();
        let err = io.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("0.05s"), "{err}");
    }
}
