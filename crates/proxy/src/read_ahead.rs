//! A socket read ahead of what a TLS session asks for, so that a bulk transfer costs one
//! `recv` per 64 KiB instead of one per TLS record.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a [`ReadAhead`] reads at once: four TLS records.
const READ_AHEAD: usize = 64 * 1024;

/// The socket under a TLS session, read in gulps once a transfer is under way.
///
/// A TLS library asks its socket for at most one record (~16 KiB) at a time, so a bulk
/// transfer costs one `recv` per record. Once a read fills all that was asked for (more is
/// likely waiting), this reads up to [`READ_AHEAD`] at once and serves the session's next reads
/// from memory; once a gulp comes back short, reads go straight to the socket again. Requests
/// and answers smaller than what the session asks for never touch the buffer, and it exists
/// only while it holds bytes, so an idle connection keeps none.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    held: BytesMut,
    gulping: bool,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            held: BytesMut::new(),
            gulping: false,
        }
    }

    /// Serves `buf` from the bytes held, releasing the buffer once they are all handed out.
    fn serve_held(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.held.len().min(buf.remaining());
        buf.put_slice(&self.held[..n]);
        self.held.advance(n);
        if self.held.is_empty() {
            self.held = BytesMut::new();
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
        if !this.gulping || wanted >= READ_AHEAD {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            this.gulping = wanted > 0 && buf.filled().len() - before == wanted;
            return Poll::Ready(Ok(()));
        }
        this.held.reserve(READ_AHEAD);
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.held) {
            Poll::Ready(Ok(read)) => {
                this.gulping = read == READ_AHEAD;
                this.serve_held(buf);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => {
                this.held = BytesMut::new();
                Poll::Ready(Err(error))
            }
            Poll::Pending => {
                this.held = BytesMut::new();
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
        let mut reader = ReadAhead::new(Recording {
            data: data.clone(),
            pos: 0,
            chunk: usize::MAX,
            asked: Vec::new(),
        });
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
            asked[1..].iter().all(|&n| n >= READ_AHEAD),
            "reads asked of the socket: {asked:?}"
        );
        assert!(asked.len() <= 2 + data.len() / READ_AHEAD, "{asked:?}");
        assert_eq!(
            reader.held.capacity(),
            0,
            "drained: the buffer is given back"
        );
    }

    #[tokio::test]
    async fn read_ahead_leaves_small_messages_alone() {
        let mut reader = ReadAhead::new(Recording {
            data: pattern(1000),
            pos: 0,
            chunk: 100,
            asked: Vec::new(),
        });
        let mut buf = vec![0; 4096];
        for _ in 0..10 {
            assert_eq!(reader.read(&mut buf).await.unwrap(), 100);
            assert_eq!(reader.held.capacity(), 0);
        }
        assert_eq!(reader.read(&mut buf).await.unwrap(), 0, "then the end");
        assert!(reader.inner.asked.iter().all(|&n| n == 4096));
    }
}
