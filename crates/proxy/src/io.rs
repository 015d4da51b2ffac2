//! Byte plumbing shared by every listener: counting, idle detection, and the opaque relay.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use crate::bulk::{Budget, GULP, Permit};
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

/// What a relay holds per direction without a share of the [`Budget`]: one TLS record's worth
/// of plaintext. With a share it holds up to a [`GULP`], so that a bulk transfer crosses each
/// socket in 64 KiB steps (one 16 KiB step per record costs about twice the CPU per byte: on
/// loopback the cost of `send` and `recv` is mostly per call, not per byte).
const RELAY_STEP: usize = 16 * 1024;

/// Copies bytes both ways until both sides have closed; returns (client → server, server →
/// client) byte counts.
///
/// Unlike `tokio::io::copy_bidirectional`, which keeps a fixed buffer per direction for the
/// connection's whole life, each direction holds a buffer only while it has bytes in flight:
/// an idle relayed connection costs no buffer at all, and a busy one reads up to a [`GULP`]
/// (while the process's [`Budget`] lasts, else [`RELAY_STEP`]) before it writes.
pub(crate) async fn relay<A, B>(client: &mut A, server: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Relay::new(client, server, Budget::process()).await
}

/// The future behind [`relay`].
struct Relay<'a, A: ?Sized, B: ?Sized> {
    client: &'a mut A,
    server: &'a mut B,
    upstream: OneWay,
    downstream: OneWay,
}

impl<'a, A: ?Sized, B: ?Sized> Relay<'a, A, B> {
    fn new(client: &'a mut A, server: &'a mut B, budget: &'static Budget) -> Self {
        Self {
            client,
            server,
            upstream: OneWay::new(budget),
            downstream: OneWay::new(budget),
        }
    }

    /// Bytes of buffer the relay holds now, both directions together.
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        self.upstream.held.capacity() + self.downstream.held.capacity()
    }
}

impl<A, B> std::future::Future for Relay<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(Err(error)) =
            this.upstream
                .poll_move(cx, Pin::new(&mut *this.client), Pin::new(&mut *this.server))
        {
            return Poll::Ready(Err(error));
        }
        if let Poll::Ready(Err(error)) =
            this.downstream
                .poll_move(cx, Pin::new(&mut *this.server), Pin::new(&mut *this.client))
        {
            return Poll::Ready(Err(error));
        }
        if this.upstream.done && this.downstream.done {
            Poll::Ready(Ok((this.upstream.moved, this.downstream.moved)))
        } else {
            Poll::Pending
        }
    }
}

/// One direction of a relay: what was read from one side and not yet written to the other.
#[derive(Debug)]
struct OneWay {
    /// Empty, without an allocation, whenever nothing is in flight.
    held: BytesMut,
    /// Held with `held`'s allocation when it may grow to a [`GULP`].
    permit: Option<Permit>,
    budget: &'static Budget,
    read_done: bool,
    /// Bytes were written since the writer was last flushed.
    unflushed: bool,
    done: bool,
    moved: u64,
}

impl OneWay {
    fn new(budget: &'static Budget) -> Self {
        Self {
            held: BytesMut::new(),
            permit: None,
            budget,
            read_done: false,
            unflushed: false,
            done: false,
            moved: 0,
        }
    }

    fn release(&mut self) {
        self.held = BytesMut::new();
        self.permit = None;
    }

    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Read while there is room, so that several small reads leave as one write.
            if self.held.capacity() == 0 {
                self.permit = self.budget.take();
            }
            let room = if self.permit.is_some() {
                GULP
            } else {
                RELAY_STEP
            };
            if !self.read_done && self.held.len() < room {
                self.held.reserve(room - self.held.len());
                match tokio_util::io::poll_read_buf(reader.as_mut(), cx, &mut self.held) {
                    Poll::Ready(Ok(0)) => self.read_done = true,
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending if self.held.is_empty() => {
                        // Nothing in flight: give the buffer back while this side idles, and
                        // push out whatever the writer still holds.
                        self.release();
                        if self.unflushed {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                    // Write what was read; the reader will wake this task when it has more.
                    Poll::Pending => {}
                }
            }
            while !self.held.is_empty() {
                let written = ready!(writer.as_mut().poll_write(cx, &self.held))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.held.advance(written);
                self.moved += written as u64;
                self.unflushed = true;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.release();
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
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

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A whole exchange through the relay: a large upload, the client's close passed on, a
    /// large answer after it, and the server's close passed back; through pipes small enough
    /// that every write is partial.
    #[tokio::test]
    async fn relay_carries_both_ways_and_passes_each_close_on() {
        let (mut client_app, mut client_side) = tokio::io::duplex(3000);
        let (mut server_side, mut server_app) = tokio::io::duplex(5000);
        let relay = tokio::spawn(async move { relay(&mut client_side, &mut server_side).await });
        let upload = pattern(1_000_003);
        let answer: Vec<u8> = pattern(300_007).into_iter().rev().collect();
        let client = {
            let (upload, answer) = (upload.clone(), answer.clone());
            tokio::spawn(async move {
                client_app.write_all(&upload).await.unwrap();
                client_app.shutdown().await.unwrap();
                let mut got = Vec::new();
                client_app.read_to_end(&mut got).await.unwrap();
                assert!(got == answer, "the answer arrives whole");
            })
        };
        let mut got = Vec::new();
        server_app.read_to_end(&mut got).await.unwrap();
        assert!(
            got == upload,
            "the upload arrives whole, then the client's close"
        );
        server_app.write_all(&answer).await.unwrap();
        server_app.shutdown().await.unwrap();
        client.await.unwrap();
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(moved, (upload.len() as u64, answer.len() as u64));
    }

    #[tokio::test]
    async fn an_idle_relay_holds_no_buffer() {
        let (mut client_app, mut client_side) = tokio::io::duplex(1 << 20);
        let (mut server_side, mut server_app) = tokio::io::duplex(1 << 20);
        let mut relay = Box::pin(Relay::new(
            &mut client_side,
            &mut server_side,
            Budget::process(),
        ));
        client_app.write_all(&pattern(100_000)).await.unwrap();
        server_app.write_all(b"hello").await.unwrap();
        let polled = std::future::poll_fn(|cx| Poll::Ready(relay.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "both sides are still open");
        assert_eq!(
            relay.buffered_capacity(),
            0,
            "everything moved: no buffer kept"
        );
        drop(relay);
        let mut moved = vec![0; 100_000];
        server_app.read_exact(&mut moved).await.unwrap();
        assert_eq!(moved, pattern(100_000));
        let mut hello = [0; 5];
        client_app.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
    }

    /// A relay whose writer is blocked holds a [`GULP`] while the budget lasts, a record's
    /// worth once it is spent, and gives its share back when it ends.
    #[tokio::test]
    async fn a_blocked_relay_holds_a_gulp_only_while_the_budget_lasts() {
        static ONE: Budget = Budget::new(GULP);
        let mut ends = Vec::new();
        for _ in 0..2 {
            let (mut client_app, client_side) = tokio::io::duplex(1 << 20);
            // The server's app reads nothing: the relay's writes block after 1 KiB.
            let (server_side, server_app) = tokio::io::duplex(1024);
            client_app.write_all(&pattern(200_000)).await.unwrap();
            ends.push((client_app, client_side, server_side, server_app));
        }
        let mut relays: Vec<_> = ends
            .iter_mut()
            .map(|(_, client_side, server_side, _)| {
                Box::pin(Relay::new(client_side, server_side, &ONE))
            })
            .collect();
        for relay in &mut relays {
            let polled = std::future::poll_fn(|cx| Poll::Ready(relay.as_mut().poll(cx))).await;
            assert!(polled.is_pending());
        }
        let (first, second) = (relays[0].upstream.held.len(), relays[1].upstream.held.len());
        assert!(
            first > RELAY_STEP,
            "the first has the budget: {first} bytes held"
        );
        assert!(
            (1..=RELAY_STEP).contains(&second),
            "the second, a record's worth: {second} bytes held"
        );
        assert_eq!(ONE.in_use(), GULP);
        drop(relays);
        assert_eq!(ONE.in_use(), 0, "given back when the relays end");
    }
}
