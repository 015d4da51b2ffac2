//! Byte plumbing shared by every listener: counting, idle detection, and the opaque relay.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use std::net::SocketAddr;

use bytes::{Buf, BufMut, BytesMut};
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

/// What an idle direction reads into before it has a buffer: polling a quiet side (every wake of
/// the task polls both directions) then costs no allocation and no share of the budget.
const FIRST_READ: usize = 2 * 1024;

/// One direction of a relay: what was read from one side and not yet written to the other.
#[derive(Debug)]
struct OneWay {
    /// Empty, without an allocation, whenever nothing is in flight.
    held: BytesMut,
    /// What `held` was allocated with (0: no allocation); it never grows past that.
    size: usize,
    /// Held with `held`'s allocation when that is a [`GULP`].
    permit: Option<Permit>,
    budget: &'static Budget,
    read_done: bool,
    /// A read failed after bytes were read: they are written out first, then this is returned.
    failed: Option<io::Error>,
    /// Bytes were written since the writer was last flushed.
    unflushed: bool,
    done: bool,
    moved: u64,
}

impl OneWay {
    fn new(budget: &'static Budget) -> Self {
        Self {
            held: BytesMut::new(),
            size: 0,
            permit: None,
            budget,
            read_done: false,
            failed: None,
            unflushed: false,
            done: false,
            moved: 0,
        }
    }

    /// Gives the buffer and its share of the budget back.
    fn release(&mut self) {
        self.held = BytesMut::new();
        self.size = 0;
        self.permit = None;
    }

    /// A buffer for `first`, the bytes of a read made while there was none: a [`GULP`] while the
    /// budget lasts, else [`RELAY_STEP`].
    fn allocate(&mut self, first: &[u8]) {
        self.permit = self.budget.take();
        self.size = if self.permit.is_some() {
            GULP
        } else {
            RELAY_STEP
        };
        self.held = BytesMut::with_capacity(self.size);
        self.held.extend_from_slice(first);
    }

    /// How much the next read may bring: what is left of the allocation (all of it once
    /// everything was written), or [`FIRST_READ`] without one. The buffer never grows.
    fn room(&mut self) -> usize {
        if self.size == 0 {
            return FIRST_READ;
        }
        if self.held.is_empty() {
            // Everything was written: take the whole allocation back (nothing to copy).
            self.held.reserve(self.size);
        }
        (self.size - self.held.len()).min(self.held.capacity() - self.held.len())
    }

    /// Reads once, at most `room` bytes (see [`Self::room`]); `Ok(0)` is the end of input.
    fn poll_read_some<R>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
        room: usize,
    ) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + ?Sized,
    {
        if self.size == 0 {
            let mut first = [0u8; FIRST_READ];
            let mut buf = ReadBuf::new(&mut first[..room]);
            ready!(reader.poll_read(cx, &mut buf))?;
            let read = buf.filled().len();
            if read > 0 {
                self.allocate(buf.filled());
            }
            return Poll::Ready(Ok(read));
        }
        tokio_util::io::poll_read_buf(reader, cx, &mut (&mut self.held).limit(room))
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
            let room = if self.read_done || self.failed.is_some() {
                0
            } else {
                self.room()
            };
            if room > 0 {
                match self.poll_read_some(cx, reader.as_mut(), room) {
                    Poll::Ready(Ok(0)) => self.read_done = true,
                    Poll::Ready(Ok(_)) => continue,
                    // What was read before the error still goes out, as a plain copy would.
                    Poll::Ready(Err(error)) if !self.held.is_empty() => self.failed = Some(error),
                    Poll::Ready(Err(error)) => {
                        self.release();
                        return Poll::Ready(Err(error));
                    }
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
            if let Some(error) = self.failed.take() {
                self.release();
                return Poll::Ready(Err(error));
            }
            if self.read_done {
                // Nothing left to move: no buffer is kept through a slow flush or shutdown.
                self.release();
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
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

    /// Yields `data` in `chunk`-sized reads, then an error, as tokio-rustls does after a peer
    /// closed without `close_notify`: the data first, the error on the next read.
    struct ThenError {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for ThenError {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.pos == this.data.len() {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            let n = buf
                .remaining()
                .min(this.chunk)
                .min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for ThenError {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn bytes_read_before_an_error_are_delivered_before_it() {
        let mut client = ThenError {
            data: pattern(5000),
            pos: 0,
            chunk: 1000,
        };
        let (mut server_side, mut server_app) = tokio::io::duplex(1 << 20);
        let result = relay(&mut client, &mut server_side).await;
        assert!(result.is_err(), "the error is still returned");
        drop(server_side);
        let mut got = Vec::new();
        server_app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, pattern(5000), "after everything read before it");
    }

    /// Through a slow reader's small pipe, with partial writes of every size, a direction's
    /// buffer never grows past what it was given: a GULP with a share, a record without.
    #[tokio::test]
    async fn a_direction_never_holds_more_than_it_was_given() {
        static ONE: Budget = Budget::new(GULP);
        static NONE: Budget = Budget::new(0);
        for (budget, limit) in [(&ONE, GULP), (&NONE, RELAY_STEP)] {
            let (mut client_app, mut client_side) = tokio::io::duplex(4 << 20);
            let (mut server_side, mut server_app) = tokio::io::duplex(777);
            let sent = pattern(3_000_000);
            client_app.write_all(&sent).await.unwrap();
            client_app.shutdown().await.unwrap();
            let mut relay = Box::pin(Relay::new(&mut client_side, &mut server_side, budget));
            let mut got = Vec::new();
            let mut seed = 12345u64;
            let mut largest = 0;
            while got.len() < sent.len() {
                let _ = std::future::poll_fn(|cx| Poll::Ready(relay.as_mut().poll(cx))).await;
                largest = largest.max(relay.upstream.held.capacity());
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let mut buf = vec![0; 1 + (seed >> 33) as usize % 777];
                let n = server_app.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == sent, "every byte, in order");
            assert!(largest <= limit, "held {largest} bytes, given {limit}");
        }
    }

    /// A writer that takes `left` bytes, then blocks; its flush and shutdown never finish.
    struct Stalls {
        left: usize,
    }

    impl AsyncWrite for Stalls {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.left == 0 {
                return Poll::Pending;
            }
            let n = buf.len().min(this.left);
            this.left -= n;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncRead for Stalls {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    /// Relays that emptied exactly one buffer and go on reading keep one share each, never a
    /// second, and a relay without a share never keeps a GULP-sized buffer.
    #[tokio::test]
    async fn a_share_is_held_once_and_never_outlived_by_its_buffer() {
        static ONE: Budget = Budget::new(GULP);
        let mut ends = Vec::new();
        for _ in 0..3 {
            let (mut client_app, client_side) = tokio::io::duplex(1 << 20);
            client_app.write_all(&pattern(GULP + 10_000)).await.unwrap();
            ends.push((client_app, client_side, Stalls { left: GULP }));
        }
        let mut relays: Vec<_> = ends
            .iter_mut()
            .map(|(_, client_side, writer)| Box::pin(Relay::new(client_side, writer, &ONE)))
            .collect();
        for relay in &mut relays {
            let polled = std::future::poll_fn(|cx| Poll::Ready(relay.as_mut().poll(cx))).await;
            assert!(polled.is_pending());
        }
        let with_share = relays
            .iter()
            .filter(|r| r.upstream.permit.is_some())
            .count();
        assert_eq!(with_share, 1);
        assert_eq!(ONE.in_use(), GULP);
        for relay in relays.iter().filter(|r| r.upstream.permit.is_none()) {
            let capacity = relay.upstream.held.capacity();
            assert!(capacity <= RELAY_STEP, "{capacity} bytes without a share");
        }
    }

    /// Input ended and everything was written, but the writer's flush never finishes (a peer
    /// that stopped reading): nothing is in flight, so no buffer and no share are kept.
    #[tokio::test]
    async fn a_direction_waiting_to_flush_keeps_no_buffer() {
        static FOUR: Budget = Budget::new(4 * GULP);
        for size in [10_000, GULP] {
            let (mut client_app, mut client_side) = tokio::io::duplex(1 << 20);
            client_app.write_all(&pattern(size)).await.unwrap();
            client_app.shutdown().await.unwrap();
            let mut writer = Stalls { left: usize::MAX };
            let mut relay = Box::pin(Relay::new(&mut client_side, &mut writer, &FOUR));
            let polled = std::future::poll_fn(|cx| Poll::Ready(relay.as_mut().poll(cx))).await;
            assert!(polled.is_pending());
            assert_eq!(relay.upstream.moved, size as u64);
            assert_eq!(relay.buffered_capacity(), 0);
            assert_eq!(FOUR.in_use(), 0);
        }
    }
}
