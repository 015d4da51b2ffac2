//! What every listener shares: the accept loop with its connection cap, the shutdown
//! lifecycle, and serving one connection as HTTP.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::capacity::DEFAULT_MAX_CONNECTIONS;
use crate::config::Limits;
use crate::http::{HttpContext, HttpVersion, forward};
use crate::io::Activity;

/// How the sidecar stops: first `draining` (stop accepting, let HTTP connections finish
/// their requests), then, after the grace period, `force_close` for whatever is left.
#[derive(Clone, Debug)]
pub(crate) struct Lifecycle {
    pub(crate) draining: CancellationToken,
    pub(crate) force_close: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// Connections each listener serves at once ([`crate::capacity::ConnectionCap`]).
    pub(crate) max_connections: usize,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONNECTIONS)
    }
}

impl Lifecycle {
    pub(crate) fn new(max_connections: usize) -> Self {
        Self {
            draining: CancellationToken::new(),
            force_close: CancellationToken::new(),
            tracker: TaskTracker::new(),
            max_connections,
        }
    }

    /// Runs `connection` as a tracked task that ends early on force-close.
    pub(crate) fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        let force_close = self.force_close.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = connection => {}
                () = force_close.cancelled() => {}
            }
        });
    }
}

/// Accepts connections on `listener` until draining starts; each is handed to `handle` with
/// one of the listener's `lifecycle.max_connections` slots, freed when that finishes. A
/// connection that finds every slot taken is closed at once (`refused` counts it, a warning
/// says why) rather than left waiting, unanswered, in the kernel's backlog.
pub(crate) async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    lifecycle: Lifecycle,
    refused: impl Fn(),
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cap = lifecycle.max_connections;
    let slots = Arc::new(Semaphore::new(cap));
    let log = Throttle::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = lifecycle.draining.cancelled() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    refused();
                    if log.allows() {
                        warn!(
                            listener = name,
                            %peer,
                            limit = cap,
                            "refusing connections: this listener serves {cap} at once and all \
                             are open (limits.max_connections, or its share of what fits in \
                             the container's memory limit; logged once every 10 s)"
                        );
                    }
                    // Dropped unanswered: the client sees its connection closed at once.
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                // IPv4 clients of a dual-stack listener arrive as mapped IPv6 addresses.
                let peer = canonical(peer);
                // Boxed: a future that awaits another holds it, and each async wrapper
                // around it (this one, the task's) would hold a copy of what it captured:
                // a connection's task would be several times the size of its state, for as
                // long as the connection is open.
                let connection = Box::pin(handle(tcp, peer));
                lifecycle.spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Running out of file descriptors is temporary; back off instead of spinning.
                warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// What each client address has open on one listener, up to a cap: so that one address
/// (a scanner, a client that connects and never finishes its handshake) cannot take every
/// slot the listener has.
#[derive(Debug)]
pub(crate) struct PerAddress {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    /// A flood of refusals logs once in a while rather than once per connection.
    pub(crate) log: Throttle,
}

/// Lets a log line through at most once every ten seconds: for refusals a flood of
/// connections could otherwise turn into a flood of lines.
#[derive(Debug)]
pub(crate) struct Throttle {
    epoch: Instant,
    /// When a line was last let through, in seconds since `epoch`, plus ten.
    last: AtomicU64,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Throttle {
    /// Whether to log now.
    pub(crate) fn allows(&self) -> bool {
        let now = self.epoch.elapsed().as_secs() + 10;
        let last = self.last.load(Ordering::Relaxed);
        now >= last + 10
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// One of an address's slots, given back when dropped.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            open: Mutex::new(HashMap::new()),
            log: Throttle::default(),
        })
    }

    /// A slot for `ip`, or `None` when it holds `cap` already.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// `addr`, with an IPv4 address mapped into IPv6 (as a dual-stack listener reports IPv4
/// clients) written as the IPv4 address it is.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Serves HTTP on `io` until the peer closes, the connection idles out, a request head takes
/// too long, or draining finishes its in-flight requests.
pub(crate) async fn serve_http<I>(
    io: I,
    ctx: Arc<HttpContext>,
    limits: &Limits,
    activity: Arc<Activity>,
    draining: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchanges = Exchanges::new();
    let service = {
        let ctx = ctx.clone();
        let exchanges = exchanges.clone();
        service_fn(move |request| {
            let in_flight = exchanges.request_started();
            let answer = forward(ctx.clone(), request);
            async move {
                let response = answer.await?;
                Ok::<_, Infallible>(response.map(|body| InFlight {
                    body,
                    _request: in_flight,
                }))
            }
        })
    };
    let idle = limits.idle_timeout;
    let bytes_idle = async move { activity.idle_for(idle).await };
    let io = Clocked {
        inner: io,
        exchanges: exchanges.clone(),
    };
    match ctx.version {
        HttpVersion::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .max_buf_size(limits.max_header_bytes)
                // hyper's header timeout also runs while a keep-alive connection waits for
                // its next request, which would close connections a client's pool still holds;
                // `Exchanges` times the head from its first byte instead.
                .header_read_timeout(None);
            // Boxed: hyper's connection (with the TLS stream inside) is the bulk of a
            // connection's state, and a future holding it inline would be as large in every
            // state of every future that awaits this one.
            let connection = Box::pin(
                builder
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades(),
            );
            let watchdog =
                exchanges.watch(Some(limits.header_timeout), limits.header_timeout, idle);
            drive(
                connection,
                |c| c.graceful_shutdown(),
                draining,
                bytes_idle,
                watchdog,
            )
            .await;
        }
        HttpVersion::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            let streams = u32::try_from(limits.max_concurrent_streams).unwrap_or(u32::MAX);
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                // Each open stream may hold a request head of up to `max_header_bytes`; this
                // bounds what one connection can make the sidecar hold.
                .max_concurrent_streams(streams);
            let connection = Box::pin(builder.serve_connection(TokioIo::new(io), service));
            // HTTP/2 heads are bounded by the h2 crate (header list size, CONTINUATION
            // limits); what is bounded here is a connection kept open by PINGs alone.
            let watchdog = exchanges.watch(None, limits.header_timeout, idle);
            drive(
                connection,
                |c| c.graceful_shutdown(),
                draining,
                bytes_idle,
                watchdog,
            )
            .await;
        }
    }
    // An upgraded tunnel is still this connection: it holds the connection's slot until it
    // ends (its own idle time and the shutdown's force-close bound it).
    ctx.tunnels.close();
    ctx.tunnels.wait().await;
}

async fn drive<C, E>(
    mut connection: Pin<Box<C>>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    draining: CancellationToken,
    bytes_idle: impl Future<Output = ()>,
    watchdog: impl Future<Output = Expired>,
) where
    C: Future<Output = Result<(), E>>,
    E: Display,
{
    tokio::pin!(bytes_idle);
    tokio::pin!(watchdog);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = draining.cancelled(), if !shutting_down => {
                shutting_down = true;
                graceful_shutdown(connection.as_mut());
            }
            () = &mut bytes_idle => {
                debug!("closing an idle HTTP connection");
                return;
            }
            expired = &mut watchdog => {
                match expired {
                    Expired::Head => debug!("closing an HTTP connection: its request head took longer than limits.header_timeout"),
                    Expired::NoRequest => debug!("closing an HTTP connection with no request for limits.idle_timeout"),
                    Expired::NoFirstRequest => debug!("closing an HTTP connection that sent no request within limits.header_timeout"),
                }
                return;
            }
        }
    }
}

/// Which request timeout closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// A request head began and was not complete within `limits.header_timeout`.
    Head,
    /// No request was open for `limits.idle_timeout` (bytes may have moved: PINGs).
    NoRequest,
    /// The connection sent no request within `limits.header_timeout` of opening: a client
    /// that connects and waits holds a slot no longer than one that trickles a head.
    NoFirstRequest,
}

/// What the requests of one HTTP connection are doing, for the timeouts that are about
/// requests rather than bytes: how long a request head has been arriving (a client that
/// trickles it holds the connection only that long), and how long no request has been open
/// (HTTP/2 PINGs move bytes, but do not keep a connection open forever).
///
/// The head is timed from the first byte read while no request is open to the moment hyper
/// hands the request over, so a keep-alive connection waiting for its next request is not
/// timed (hyper's own header timeout is, which would close connections a client's pool still
/// holds). Bytes read while a request is open are its body, or a pipelined request behind it,
/// and are not timed.
#[derive(Debug)]
pub(crate) struct Exchanges {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Whether any request was handed over yet.
    seen_any: AtomicBool,
    /// Milliseconds since `epoch` when the last request ended (or the connection opened).
    idle_since: AtomicU64,
    /// Milliseconds since `epoch`, plus one, of the first byte of a head not yet complete; 0
    /// when none is arriving.
    head_since: AtomicU64,
    changed: Notify,
}

impl Exchanges {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            seen_any: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis)
    }

    /// The client sent bytes: with no request open, they begin a head.
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(self.now() + 1, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// hyper handed a request over: its head is complete.
    fn request_started(self: &Arc<Self>) -> OpenRequest {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.seen_any.store(true, Ordering::Release);
        self.head_since.store(0, Ordering::Relaxed);
        OpenRequest(self.clone())
    }

    /// Completes when a timeout expires: `head` (if any) for a head in progress, `first` for a
    /// connection that has not sent its first request yet, `idle` with no request open.
    pub(crate) async fn watch(
        &self,
        head: Option<Duration>,
        first: Duration,
        idle: Duration,
    ) -> Expired {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mut deadline: Option<(Instant, Expired)> = None;
            if self.in_flight.load(Ordering::Acquire) == 0 {
                deadline = if self.seen_any.load(Ordering::Acquire) {
                    self.at(self.idle_since.load(Ordering::Relaxed))
                        .checked_add(idle)
                        .map(|at| (at, Expired::NoRequest))
                } else {
                    self.epoch
                        .checked_add(first.min(idle))
                        .map(|at| (at, Expired::NoFirstRequest))
                };
                let since = self.head_since.load(Ordering::Relaxed);
                if let Some(head) = head
                    && since > 0
                    && let Some(at) = self.at(since - 1).checked_add(head)
                    && deadline.is_none_or(|(other, _)| at < other)
                {
                    deadline = Some((at, Expired::Head));
                }
            }
            match deadline {
                Some((at, expired)) if at <= Instant::now() => return expired,
                Some((at, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// One request between hyper handing it over and the end of its response (or the caller
/// leaving): while any is open, the connection is not idle and no head is being timed.
#[derive(Debug)]
struct OpenRequest(Arc<Exchanges>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let exchanges = &self.0;
        if exchanges.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            exchanges.head_since.store(0, Ordering::Relaxed);
            exchanges
                .idle_since
                .store(exchanges.now(), Ordering::Relaxed);
            exchanges.changed.notify_one();
        }
    }
}

/// A response body that keeps its request open until hyper has sent it all (or dropped it).
#[derive(Debug)]
struct InFlight<B> {
    body: B,
    _request: OpenRequest,
}

impl<B: Body + Unpin> Body for InFlight<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The server side of an HTTP connection, telling [`Exchanges`] when the client sends bytes.
struct Clocked<I> {
    inner: I,
    exchanges: Arc<Exchanges>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Clocked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.exchanges.bytes_arrived();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Clocked<I> {
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
    use tokio::sync::mpsc;

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(3600);

    /// A kept-alive connection waiting for its next request is not timed as a head; a head
    /// whose first byte came is, from that byte.
    #[tokio::test(start_paused = true)]
    async fn a_head_is_timed_from_its_first_byte() {
        let exchanges = Exchanges::new();
        // A kept-alive connection after its first request: waiting is not timed as a head.
        drop(exchanges.request_started());
        let watch = exchanges.watch(Some(HEAD), HEAD, IDLE);
        tokio::pin!(watch);
        assert!(
            tokio::time::timeout(Duration::from_secs(600), &mut watch)
                .await
                .is_err(),
            "nothing expires while the connection waits without a byte"
        );
        let first_byte = Instant::now();
        exchanges.bytes_arrived();
        // More bytes do not move the start.
        tokio::time::sleep(Duration::from_secs(5)).await;
        exchanges.bytes_arrived();
        assert_eq!(watch.await, Expired::Head);
        assert_eq!(first_byte.elapsed(), HEAD);
    }

    /// A request in flight stops the head clock and the idle clock; its end starts the idle
    /// clock again, and bytes alone (HTTP/2 PINGs) do not keep the connection open.
    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_keep_a_connection_open_and_pings_do_not() {
        let exchanges = Exchanges::new();
        exchanges.bytes_arrived();
        let request = exchanges.request_started();
        // Bytes of its body, long after: neither a head nor idle.
        tokio::time::sleep(IDLE * 2).await;
        exchanges.bytes_arrived();
        let watch = exchanges.watch(Some(HEAD), HEAD, IDLE);
        tokio::pin!(watch);
        assert!(
            tokio::time::timeout(IDLE * 2, &mut watch).await.is_err(),
            "an open request is neither idle nor a head"
        );
        let ended = Instant::now();
        drop(request);
        assert_eq!(watch.await, Expired::NoRequest);
        assert_eq!(ended.elapsed(), IDLE);

        // HTTP/2: no head clock; PINGs every minute do not make the connection busy.
        let exchanges = Exchanges::new();
        drop(exchanges.request_started());
        let opened = Instant::now();
        let pings = {
            let exchanges = exchanges.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    exchanges.bytes_arrived();
                }
            }
        };
        tokio::select! {
            expired = exchanges.watch(None, HEAD, IDLE) => assert_eq!(expired, Expired::NoRequest),
            () = pings => unreachable!(),
        }
        assert_eq!(opened.elapsed(), IDLE);
    }

    /// A connection that never sends a request is closed after the first-request time,
    /// PINGs or not.
    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_first_request_is_closed() {
        let exchanges = Exchanges::new();
        let opened = Instant::now();
        tokio::select! {
            expired = exchanges.watch(None, HEAD, IDLE) => assert_eq!(expired, Expired::NoFirstRequest),
            () = async {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    exchanges.bytes_arrived();
                }
            } => unreachable!(),
        }
        assert_eq!(opened.elapsed(), HEAD);
    }

    #[test]
    fn an_address_holds_at_most_its_cap() {
        let limit = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limit.take(a).expect("a first slot");
        let _second = limit
            .take(mapped)
            .expect("the same address, mapped: a second slot");
        assert!(limit.take(a).is_none(), "a third is refused");
        assert!(limit.take(b).is_some(), "another address has its own");
        drop(first);
        assert!(limit.take(a).is_some(), "a slot given back is taken again");
        assert!(limit.log.allows());
        assert!(!limit.log.allows(), "once per ten seconds");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_refused_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lifecycle = Lifecycle::new(1);
        let (handled, mut handled_rx) = mpsc::unbounded_channel();
        let refusals = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let accept = tokio::spawn({
            let (lifecycle, release, refusals) =
                (lifecycle.clone(), release.clone(), refusals.clone());
            async move {
                let refused = move || {
                    refusals.fetch_add(1, Ordering::SeqCst);
                };
                accept_loop("test", listener, lifecycle, refused, move |tcp, _| {
                    let (handled, release) = (handled.clone(), release.clone());
                    async move {
                        let _ = handled.send(tcp.peer_addr().ok());
                        release.notified().await;
                    }
                })
                .await;
            }
        });
        let _first = TcpStream::connect(addr).await.unwrap();
        handled_rx.recv().await.expect("the first is served");
        // The only slot is taken: the second is closed without a byte, not left waiting.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut second, &mut byte),
        )
        .await
        .expect("the refused connection is closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(refusals.load(Ordering::SeqCst), 1);
        assert!(handled_rx.try_recv().is_err(), "the second was not served");
        // A slot given back serves the next one.
        release.notify_one();
        tokio::task::yield_now().await;
        let _third = loop {
            let third = TcpStream::connect(addr).await.unwrap();
            if let Ok(Some(_)) =
                tokio::time::timeout(std::time::Duration::from_millis(200), handled_rx.recv()).await
            {
                break third;
            }
        };

        // Draining ends the accept loop.
        lifecycle.draining.cancel();
        accept.await.unwrap();
        release.notify_one();
    }
}
