//! A stream that keeps a copy of the first bytes each way, so that the hellos of a handshake
//! can be read back after it (see [`hush_tls::hello`]).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Recording stops after this much in each direction: the hellos are in the first kilobytes.
const RECORD_LIMIT: usize = 64 * 1024;

/// A stream that keeps a copy of the first bytes written to and read from it.
pub(crate) struct Recorder<S> {
    inner: S,
    tape: Tape,
}

/// The recorded bytes, shared with whoever reads them after the handshake.
#[derive(Clone, Default)]
pub(crate) struct Tape {
    sent: Arc<Mutex<Vec<u8>>>,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Tape {
    pub(crate) fn sent(&self) -> Vec<u8> {
        lock(&self.sent).clone()
    }

    pub(crate) fn received(&self) -> Vec<u8> {
        lock(&self.received).clone()
    }
}

fn lock(bytes: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    bytes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn keep(tape: &Mutex<Vec<u8>>, bytes: &[u8]) {
    let mut tape = lock(tape);
    let room = RECORD_LIMIT.saturating_sub(tape.len());
    tape.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

impl<S> Recorder<S> {
    pub(crate) fn new(inner: S) -> (Self, Tape) {
        let tape = Tape::default();
        (
            Self {
                inner,
                tape: tape.clone(),
            },
            tape,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            keep(&self.tape.received, &buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            keep(&self.tape.sent, &buf[..written]);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
