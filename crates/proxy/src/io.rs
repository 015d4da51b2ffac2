//! Byte plumbing shared by every listener: counting, idle detection, and the opaque relay.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use crate::metrics::ByteCounters;

/// When a connection last moved a byte, in either direction.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch`.
    last: AtomicU64,
}

// === impl Activity ===

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Completes once no byte has moved for `idle` (never, if that lies beyond the clock).
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let Some(deadline) = self.last().checked_add(idle) else {
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that counts the bytes it moves and records when it last moved any.
#[derive(Debug)]
pub(crate) struct Metered<S> {
    inner: S,
    counters: ByteCounters,
    activity: Arc<Activity>,
}

// === impl Metered ===

impl<S> Metered<S> {
    pub(crate) fn new(inner: S, counters: ByteCounters, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            counters,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.counters.received.inc_by(read as u64);
            this.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            this.counters.sent.inc_by(n as u64);
            this.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            this.counters.sent.inc_by(n as u64);
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Buffer per direction of an opaque relay: one TLS record's worth of plaintext.
const RELAY_BUFFER: usize = 16 * 1024;

/// Copies bytes both ways until both sides have closed; returns (client → server, server →
/// client) byte counts.
pub(crate) async fn relay<A, B>(client: &mut A, server: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(client, server, RELAY_BUFFER, RELAY_BUFFER).await
}

/// [`relay`], ended early once no byte has moved for `idle` (as `activity` measures it).
/// Returns the bytes moved (client → server, server → client), counted as they pass, so a
/// connection that ends with an error or idles out still reports what it carried.
pub(crate) async fn relay_until_idle<A, B>(
    client: &mut A,
    server: &mut B,
    activity: &Activity,
    idle: Duration,
    peer: SocketAddr,
) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut client = Counted::new(client);
    tokio::select! {
        result = relay(&mut client, server) => {
            if let Err(error) = result {
                debug!(%peer, %error, "TCP connection ended with an error");
            }
        }
        () = activity.idle_for(idle) => debug!(%peer, "closing an idle TCP connection"),
    }
    (client.read, client.written)
}

/// Counts what is read from and written to one stream, for that connection's access line
/// ([`Metered`] adds into the process-wide counters, which cannot tell connections apart).
struct Counted<'a, S: ?Sized> {
    inner: &'a mut S,
    read: u64,
    written: u64,
}

impl<'a, S: ?Sized> Counted<'a, S> {
    fn new(inner: &'a mut S) -> Self {
        Self {
            inner,
            read: 0,
            written: 0,
        }
    }
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut *this.inner).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        result
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.written += n as u64;
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, Metrics};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_bytes_both_ways() {
        let metrics = Metrics::new();
        let (near, mut far) = tokio::io::duplex(1024);
        let activity = Activity::new();
        let mut metered = Metered::new(near, metrics.bytes(Direction::Inbound), activity);
        metered.write_all(b"hello").await.unwrap();
        far.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        metered.read_exact(&mut buf).await.unwrap();
        let counters = metrics.bytes(Direction::Inbound);
        assert_eq!(counters.sent.get(), 5);
        assert_eq!(counters.received.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_is_measured_from_the_last_byte() {
        let activity = Activity::new();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(30)).await;
        activity.touch();
        activity.idle_for(Duration::from_secs(60)).await;
        assert!(start.elapsed() >= Duration::from_secs(90));
    }
}
