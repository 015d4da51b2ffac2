//! Large buffers for bulk transfers: a process-wide budget for them, and the socket under a TLS
//! session read ahead of what the session asks for, so that a bulk transfer costs one `recv`
//! per 64 KiB instead of one per TLS record.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A large buffer: four TLS records' worth.
pub(crate) const GULP: usize = 64 * 1024;

/// What the process's large buffers may hold at once: 128 of them. Connections moving bulk data
/// share it; a connection that finds it spent moves its bytes a TLS record at a time instead,
/// so that many connections pushing data at once (or a caller pushing into an app that does not
/// read) cost what they cost before large buffers existed, and the sidecar stays inside the
/// memory its connection cap was derived from (this is part of the reserve, see `capacity`).
pub(crate) const PROCESS_BUDGET: usize = 8 * 1024 * 1024;

/// Memory for large buffers, counted in [`GULP`]s.
#[derive(Debug)]
pub(crate) struct Budget {
    in_use: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub(crate) const fn new(limit: usize) -> Self {
        Self {
            in_use: AtomicUsize::new(0),
            limit,
        }
    }

    /// The process's budget, [`PROCESS_BUDGET`].
    pub(crate) fn process() -> &'static Self {
        static PROCESS: Budget = Budget::new(PROCESS_BUDGET);
        &PROCESS
    }

    /// One [`GULP`] of the budget, given back when the permit is dropped; `None` when it is
    /// spent.
    pub(crate) fn take(&'static self) -> Option<Permit> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + GULP <= self.limit).then_some(used + GULP)
            })
            .ok()
            .map(|_| Permit { budget: self })
    }

    /// Bytes of the budget in use.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }
}

/// The right to hold one [`GULP`].
#[derive(Debug)]
pub(crate) struct Permit {
    budget: &'static Budget,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(GULP, Ordering::AcqRel);
    }
}

/// The socket under a TLS session, read in gulps once a transfer is under way.
///
/// A TLS library asks its socket for at most one record (~16 KiB) at a time, so a bulk
/// transfer costs one `recv` per record. Once a read fills all that was asked for (more is
/// likely waiting), this reads up to [`GULP`] at once and serves the session's next reads from
/// memory; once a gulp comes back short, reads go straight to the socket again. Requests and
/// answers smaller than what the session asks for never touch the buffer, and it exists only
/// while it holds bytes (and the [`Budget`] allows it), so an idle connection keeps none.
/// Bytes the session never asks for (a peer's bytes after its `close_notify`) stay held until
/// the stream is dropped; the budget bounds what all such connections hold together.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    held: BytesMut,
    /// Held with `held`'s allocation.
    permit: Option<Permit>,
    gulping: bool,
    budget: &'static Budget,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self::with_budget(inner, Budget::process())
    }

    pub(crate) fn with_budget(inner: S, budget: &'static Budget) -> Self {
        Self {
            inner,
            held: BytesMut::new(),
            permit: None,
            gulping: false,
            budget,
        }
    }

    fn release(&mut self) {
        self.held = BytesMut::new();
        self.permit = None;
    }

    /// Serves `buf` from the bytes held, releasing the buffer once they are all handed out.
    fn serve_held(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.held.len().min(buf.remaining());
        buf.put_slice(&self.held[..n]);
        self.held.advance(n);
        if self.held.is_empty() {
            self.release();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.held.is_empty() {
            this.serve_held(buf);
            return Poll::Ready(Ok(()));
        }
        let wanted = buf.remaining();
        if this.gulping && wanted < GULP && this.permit.is_none() {
            this.permit = this.budget.take();
        }
        if !this.gulping || wanted >= GULP || this.permit.is_none() {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            this.gulping = wanted > 0 && buf.filled().len() - before == wanted;
            return Poll::Ready(Ok(()));
        }
        this.held.reserve(GULP);
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.held) {
            Poll::Ready(Ok(read)) => {
                this.gulping = read == GULP;
                this.serve_held(buf);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => {
                this.release();
                Poll::Ready(Err(error))
            }
            Poll::Pending => {
                this.release();
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A reader that records how much each read asked for, serving `data` at most `chunk`
    /// bytes per read.
    struct Recording {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
        asked: Vec<usize>,
    }

    impl Recording {
        fn new(data: Vec<u8>, chunk: usize) -> Self {
            Self {
                data,
                pos: 0,
                chunk,
                asked: Vec::new(),
            }
        }
    }

    impl AsyncRead for Recording {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.asked.push(buf.remaining());
            let n = buf
                .remaining()
                .min(this.chunk)
                .min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn read_ahead_gulps_once_a_read_fills_what_was_asked() {
        let data = pattern(300_000);
        let mut reader = ReadAhead::new(Recording::new(data.clone(), usize::MAX));
        // As a TLS session reads: 4 KiB, then a record's worth at a time.
        let mut out = vec![0; 4096];
        reader.read_exact(&mut out).await.unwrap();
        let mut record = vec![0; 16 * 1024 + 100];
        while out.len() < data.len() {
            let n = reader.read(&mut record).await.unwrap();
            assert!(n > 0, "ended early");
            out.extend_from_slice(&record[..n]);
        }
        assert_eq!(out, data, "every byte, in order");
        // The first read went to the socket as asked; every later one in 64 KiB gulps.
        let asked = &reader.inner.asked;
        assert_eq!(asked[0], 4096);
        assert!(
            asked[1..].iter().all(|&n| n >= GULP),
            "reads asked of the socket: {asked:?}"
        );
        assert!(asked.len() <= 2 + data.len() / GULP, "{asked:?}");
        assert_eq!(
            reader.held.capacity(),
            0,
            "drained: the buffer is given back"
        );
    }

    #[tokio::test]
    async fn read_ahead_leaves_small_messages_alone() {
        let mut reader = ReadAhead::new(Recording::new(pattern(1000), 100));
        let mut buf = vec![0; 4096];
        for _ in 0..10 {
            assert_eq!(reader.read(&mut buf).await.unwrap(), 100);
            assert_eq!(reader.held.capacity(), 0);
        }
        assert_eq!(reader.read(&mut buf).await.unwrap(), 0, "then the end");
        assert!(reader.inner.asked.iter().all(|&n| n == 4096));
    }

    #[tokio::test]
    async fn read_ahead_gives_its_share_of_the_budget_back() {
        static ONE: Budget = Budget::new(GULP);
        let mut reader = ReadAhead::with_budget(Recording::new(pattern(100_000), usize::MAX), &ONE);
        let mut buf = vec![0; 4096];
        reader.read_exact(&mut buf).await.unwrap();
        reader.read_exact(&mut buf).await.unwrap();
        assert_eq!(ONE.in_use(), GULP, "gulping");
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 100_000 - 8192);
        assert_eq!(ONE.in_use(), 0, "drained");
    }

    /// With the budget spent, reads go to the socket as the session asks, gulps or not.
    #[tokio::test]
    async fn read_ahead_reads_as_asked_once_the_budget_is_spent() {
        static SPENT: Budget = Budget::new(0);
        let data = pattern(100_000);
        let mut reader = ReadAhead::with_budget(Recording::new(data.clone(), usize::MAX), &SPENT);
        let mut out = vec![0; 4096];
        reader.read_exact(&mut out).await.unwrap();
        let mut record = vec![0; 16 * 1024 + 100];
        while out.len() < data.len() {
            let n = reader.read(&mut record).await.unwrap();
            assert!(n > 0, "ended early");
            out.extend_from_slice(&record[..n]);
        }
        assert_eq!(out, data);
        assert!(
            reader.inner.asked.iter().all(|&n| n <= record.len()),
            "{:?}",
            reader.inner.asked
        );
        assert_eq!(reader.held.capacity(), 0);
    }

    #[test]
    fn the_budget_gives_out_what_it_has_and_takes_back_what_is_dropped() {
        static TWO: Budget = Budget::new(2 * GULP);
        let first = TWO.take().expect("one");
        let second = TWO.take().expect("two");
        assert!(TWO.take().is_none(), "spent");
        drop(first);
        let third = TWO.take().expect("given back, taken again");
        drop((second, third));
        assert_eq!(TWO.in_use(), 0);
    }
}
