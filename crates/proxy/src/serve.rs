//! What every listener shares: the accept loop with its connection cap, the shutdown
//! lifecycle, and serving one connection as HTTP (HTTP/1 connections parked between exchanges,
//! holding nothing of hyper's while they wait).

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

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::capacity::DEFAULT_MAX_CONNECTIONS;
use crate::config::Limits;
use crate::headers::BodyEnd;
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

/// Whether a `Connection` header of `headers` lists `token`: any comma-separated value of any
/// of them, in any case (as hyper reads them, and also where a value is not UTF-8).
fn has_connection_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Serves HTTP on `io` until the peer closes, the connection idles out, a request head takes
/// too long, or draining finishes its in-flight requests.
///
/// HTTP/1 connections are parked between requests: hyper's connection, with its read and
/// write buffers (about 23 KiB of a connection's 32, kept for its whole life otherwise), is
/// ended once the connection has been quiet for [`PARK_AFTER`] after an exchange, and the
/// socket waits alone; a new one starts when the next request's first byte arrives. nginx
/// releases a keep-alive connection's buffers the same way, at once.
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
    let http1 = ctx.version == HttpVersion::Http1;
    let service = {
        let ctx = ctx.clone();
        tracked(exchanges.clone(), http1, move |request| {
            forward(ctx.clone(), request)
        })
    };
    let idle = limits.idle_timeout;
    let bytes_idle = async move { activity.idle_for(idle).await };
    tokio::pin!(bytes_idle);
    let io = Clocked::new(io, exchanges.clone());
    match ctx.version {
        HttpVersion::Http1 => {
            serve_http1(
                io,
                service,
                &exchanges,
                limits,
                &draining,
                bytes_idle.as_mut(),
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
            let mut connection = Box::pin(builder.serve_connection(TokioIo::new(io), service));
            // HTTP/2 heads are bounded by the h2 crate (header list size, CONTINUATION
            // limits); what is bounded here is a connection kept open by PINGs alone.
            let watchdog = exchanges.watch(None, limits.header_timeout, idle);
            tokio::pin!(watchdog);
            drive(
                connection.as_mut(),
                |c| c.graceful_shutdown(),
                &draining,
                bytes_idle.as_mut(),
                watchdog.as_mut(),
                None,
            )
            .await;
        }
    }
    // An upgraded tunnel is still this connection: it holds the connection's slot until it
    // ends (its own idle time and the shutdown's force-close bound it).
    ctx.tunnels.close();
    ctx.tunnels.wait().await;
}

/// `handle` as hyper's service, each exchange told to `exchanges`: for the request timeouts,
/// and on HTTP/1 for parking.
fn tracked<F, Fut, B>(
    exchanges: Arc<Exchanges>,
    http1: bool,
    handle: F,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<InFlight<B>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<InFlight<B>>, Infallible>> + Send,
> + Send
+ 'static
where
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Unpin,
{
    service_fn(move |mut request| {
        let in_flight = exchanges.request_started();
        if http1 {
            exchanges.note_request(&mut request);
        }
        let answer = handle(request);
        async move {
            let response = answer.await?;
            if http1 {
                in_flight.note_response(&response);
            }
            Ok(response.map(|body| InFlight {
                body,
                _request: in_flight,
            }))
        }
    })
}

/// Serves HTTP/1 on `io`, parking it between exchanges (see [`serve_http`]).
async fn serve_http1<I, S, B>(
    mut io: Clocked<I>,
    mut service: S,
    exchanges: &Arc<Exchanges>,
    limits: &Limits,
    draining: &CancellationToken,
    mut bytes_idle: Pin<&mut impl Future<Output = ()>>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(limits.max_header_bytes)
        // hyper's header timeout also runs while a keep-alive connection waits for its next
        // request, which would close connections a client's pool still holds; `Exchanges`
        // times the head from its first byte instead.
        .header_read_timeout(None);
    let watchdog = exchanges.watch(
        Some(limits.header_timeout),
        limits.header_timeout,
        limits.idle_timeout,
    );
    tokio::pin!(watchdog);
    loop {
        if io.unread.is_empty() {
            // Parked (or new): nothing of hyper's is held until a byte arrives.
            let woken = tokio::select! {
                read = io.read_some() => read,
                () = draining.cancelled() => Ok(false),
                () = &mut bytes_idle => {
                    debug!("closing an idle HTTP connection");
                    return;
                }
                expired = &mut watchdog => {
                    expired.log();
                    return;
                }
            };
            match woken {
                Ok(true) => {}
                Ok(false) => {
                    // The client closed, or the sidecar is draining: close as hyper would
                    // (TLS: close_notify, then the write side).
                    let _ = io.shutdown().await;
                    return;
                }
                Err(e) => {
                    debug!(error = %e, "HTTP connection ended with an error");
                    return;
                }
            }
        }
        // Boxed: hyper's connection (with the TLS stream inside) is the bulk of a
        // connection's state, and a future holding it inline would be as large in every state
        // of every future that awaits this one.
        let mut connection = Box::pin(
            builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        let ended = drive(
            connection.as_mut(),
            |c| c.graceful_shutdown(),
            draining,
            bytes_idle.as_mut(),
            watchdog.as_mut(),
            Some(exchanges),
        )
        .await;
        if ended != Ended::Parked {
            return;
        }
        // An upgraded connection is never parked; `None` would be one.
        let Some(parts) = Pin::into_inner(connection).into_parts() else {
            return;
        };
        exchanges.parked.fetch_add(1, Ordering::Relaxed);
        io = parts.io.into_inner();
        if !parts.read_buf.is_empty() {
            // The start of a head read behind the last request: timed from now.
            exchanges.bytes_arrived();
        }
        io.give_back(parts.read_buf);
        service = parts.service;
    }
}

/// How [`drive`] left a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// Closed, upgraded, timed out or failed.
    Closed,
    /// HTTP/1: hyper ended after an exchange without closing the socket, to give it back.
    Parked,
}

/// Runs `connection` until it ends or a timeout closes it; draining shuts it down gracefully.
/// With `parking` (HTTP/1), it is ended without closing the socket once it has been quiet for
/// [`PARK_AFTER`] after an exchange it may be parked behind ([`Exchanges::settled`]) and hyper
/// is done writing.
async fn drive<C, E>(
    mut connection: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    draining: &CancellationToken,
    mut bytes_idle: Pin<&mut impl Future<Output = ()>>,
    mut watchdog: Pin<&mut impl Future<Output = Expired>>,
    parking: Option<&Exchanges>,
) -> Ended
where
    C: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut shutting_down = false;
    // Armed while the connection may come to be parked. It fires at most once per
    // `PARK_AFTER` and looks at when the last exchange ended: requests cost it no timer work.
    let park_timer = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(park_timer);
    let mut armed = false;
    // Only behind an exchange of this hyper connection: a new one is not idle (hyper starts
    // it busy) until its first exchange is over, and told to shut down while it reads that
    // first head, it would answer with a close.
    let requests_before = parking.map(|e| e.requests.load(Ordering::Acquire));
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                return match result {
                    Ok(()) => Ended::Closed,
                    Err(e) => {
                        debug!(error = %e, "HTTP connection ended with an error");
                        Ended::Closed
                    }
                };
            }
            // Disarmed, the connection waits for an exchange (or a request body) to end.
            Some(exchanges) = quiet(parking), if !armed && !shutting_down => {
                if exchanges.settled() {
                    park_timer.as_mut().reset(exchanges.quiet_until());
                    armed = true;
                }
            }
            () = &mut park_timer, if armed && !shutting_down => {
                let exchanges = parking.expect("armed only when parking");
                let now = Instant::now();
                if exchanges.in_flight.load(Ordering::Acquire) > 0
                    || exchanges.unflushed.load(Ordering::Acquire)
                {
                    // A request in progress, or a response still going to a client slow to
                    // read: look again later.
                    park_timer.as_mut().reset(now + PARK_AFTER);
                } else if !exchanges.settled()
                    || Some(exchanges.requests.load(Ordering::Acquire)) == requests_before
                {
                    // The last exchange is not one to park behind (yet: its request body may
                    // still end), or not this connection's; the next end re-arms.
                    armed = false;
                } else if exchanges.quiet_until() > now {
                    park_timer.as_mut().reset(exchanges.quiet_until());
                } else {
                    // Quiet long enough, and hyper done writing: it is idle, and closes at
                    // once without writing more; `parking` keeps the socket open.
                    exchanges.parking.store(true, Ordering::Release);
                    graceful_shutdown(connection.as_mut());
                    // An idle hyper connection ends in the poll after; one that does not was
                    // not idle, and its ending is left to hyper, socket shutdown included.
                    let ended = connection.as_mut().now_or_never();
                    exchanges.parking.store(false, Ordering::Release);
                    match ended {
                        Some(Ok(())) => return Ended::Parked,
                        Some(Err(e)) => {
                            debug!(error = %e, "HTTP connection ended with an error");
                            return Ended::Closed;
                        }
                        None => armed = false,
                    }
                }
            }
            () = draining.cancelled(), if !shutting_down => {
                shutting_down = true;
                graceful_shutdown(connection.as_mut());
            }
            () = &mut bytes_idle => {
                debug!("closing an idle HTTP connection");
                return Ended::Closed;
            }
            expired = &mut watchdog => {
                expired.log();
                return Ended::Closed;
            }
        }
    }
}

/// How long an HTTP/1 connection stays quiet after an exchange before it is parked: long
/// enough that back-to-back requests keep their hyper connection (parking and starting again
/// costs a few µs), short beside the time a client's pool keeps a connection idle.
const PARK_AFTER: Duration = Duration::from_millis(100);

/// Completes with `parking` when an exchange of its connection ends; never without one.
async fn quiet(parking: Option<&Exchanges>) -> Option<&Exchanges> {
    match parking {
        Some(exchanges) => {
            exchanges.quiet.notified().await;
            Some(exchanges)
        }
        None => std::future::pending().await,
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

impl Expired {
    fn log(self) {
        match self {
            Expired::Head => debug!(
                "closing an HTTP connection: its request head took longer than limits.header_timeout"
            ),
            Expired::NoRequest => {
                debug!("closing an HTTP connection with no request for limits.idle_timeout")
            }
            Expired::NoFirstRequest => debug!(
                "closing an HTTP connection that sent no request within limits.header_timeout"
            ),
        }
    }
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
    /// HTTP/1: requests handed over so far, numbering them.
    requests: AtomicU64,
    /// HTTP/1: the number of the last request whose body was read to its end (or had none).
    body_read: AtomicU64,
    /// HTTP/1: whether the last exchange leaves the connection open for another (see
    /// [`Exchanges::note_request`]).
    kept_alive: AtomicBool,
    /// HTTP/1: set while hyper's connection ends only to give the socket back (parking): the
    /// socket's shutdown is skipped.
    parking: AtomicBool,
    /// HTTP/1: a response or a request body ended; the connection may be quiet enough to park.
    quiet: Notify,
    /// HTTP/1: how many times the connection was parked.
    parked: AtomicU64,
    /// HTTP/1: hyper has written bytes it has not flushed yet: it is still sending a message.
    unflushed: AtomicBool,
    /// HTTP/1: hyper began closing the socket itself; the connection is never parked after.
    closing: AtomicBool,
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
            requests: AtomicU64::new(0),
            body_read: AtomicU64::new(0),
            kept_alive: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            quiet: Notify::new(),
            parked: AtomicU64::new(0),
            unflushed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
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

    /// HTTP/1: what parking needs to know of a request hyper handed over. The exchange leaves
    /// the connection open only as hyper would: HTTP/1.1 without `Connection: close`, and no
    /// upgrade or CONNECT (after which the socket no longer speaks HTTP). A request body is
    /// followed to its end through a [`BodyEnd`] in the request's extensions, signalled by
    /// whatever reads the body: parked before that, hyper would have left the rest of the
    /// body unread, and the next connection would read it as a request head.
    fn note_request(self: &Arc<Self>, request: &mut Request<Incoming>) {
        let number = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        let headers = request.headers();
        let keeps_alive = request.version() == Version::HTTP_11
            && request.method() != Method::CONNECT
            && !headers.contains_key(header::UPGRADE)
            && !has_connection_token(headers, "close")
            && !has_connection_token(headers, "upgrade");
        self.kept_alive.store(keeps_alive, Ordering::Release);
        if request.body().is_end_stream() {
            self.body_read.store(number, Ordering::Release);
        } else {
            let exchanges = self.clone();
            request.extensions_mut().insert(BodyEnd::new(move || {
                // A late signal of an earlier request never stands for a later one's.
                exchanges.body_read.fetch_max(number, Ordering::AcqRel);
                exchanges.quiet.notify_one();
            }));
        }
    }

    /// When the connection will have been quiet for [`PARK_AFTER`], counted from the end of
    /// its last exchange.
    fn quiet_until(&self) -> Instant {
        self.at(self.idle_since.load(Ordering::Relaxed)) + PARK_AFTER
    }

    /// HTTP/1: whether the connection is one to park once hyper is done writing: no request
    /// open, the last one's body read to its end, its exchange one that keeps the connection
    /// open, and hyper not closing. (hyper may have reasons of its own to close, such as a
    /// request with both a length and chunked framing: it closes once its response is
    /// flushed, which `unflushed` and `closing` see.)
    fn settled(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.kept_alive.load(Ordering::Acquire)
            && self.body_read.load(Ordering::Acquire) == self.requests.load(Ordering::Acquire)
            && !self.closing.load(Ordering::Acquire)
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

impl OpenRequest {
    /// HTTP/1: the app's response is on its way back; one that closes the connection or
    /// switches protocols ends it for hyper to close or hand over, not for parking.
    fn note_response<B>(&self, response: &Response<B>) {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            || has_connection_token(response.headers(), "close")
        {
            self.0.kept_alive.store(false, Ordering::Release);
        }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let exchanges = &self.0;
        if exchanges.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            exchanges.head_since.store(0, Ordering::Relaxed);
            exchanges
                .idle_since
                .store(exchanges.now(), Ordering::Relaxed);
            exchanges.changed.notify_one();
            exchanges.quiet.notify_one();
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
/// HTTP/1: it also holds what a parked connection read and did not use, for the next, and
/// skips its shutdown while hyper ends only to park it.
struct Clocked<I> {
    inner: I,
    exchanges: Arc<Exchanges>,
    /// Bytes read from `inner` and not yet handed to hyper, read before anything else.
    unread: Bytes,
    /// An error `inner` gave in a read that returned `unread` bytes, for the next read.
    error: Option<io::Error>,
}

impl<I> Clocked<I> {
    fn new(inner: I, exchanges: Arc<Exchanges>) -> Self {
        Self {
            inner,
            exchanges,
            unread: Bytes::new(),
            error: None,
        }
    }
}

impl<I: AsyncRead + Unpin> Clocked<I> {
    /// Waits for the client's next byte and keeps it in `unread`; `false` at the end of the
    /// stream. A one-byte read: the connection holds no buffer while it waits (TLS keeps
    /// the rest of its record for hyper's read).
    async fn read_some(&mut self) -> io::Result<bool> {
        let mut byte = [0u8; 1];
        let read = self.read(&mut byte).await?;
        if read == 0 {
            return Ok(false);
        }
        self.unread = Bytes::copy_from_slice(&byte);
        Ok(true)
    }

    /// Takes back what hyper had read and not used: a pipelined request, or the start of one.
    /// Copied: `read` shares hyper's whole read buffer, which an empty or short slice of it
    /// would otherwise keep allocated for as long as the connection is parked.
    fn give_back(&mut self, read: Bytes) {
        if read.is_empty() {
            return;
        }
        let mut both = BytesMut::with_capacity(read.len() + self.unread.len());
        both.extend_from_slice(&read);
        both.extend_from_slice(&self.unread);
        self.unread = both.freeze();
    }

    /// Hands `buf` what it can of `unread`, letting go of the allocation once all is read.
    fn take_unread(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread.split_to(n));
        if self.unread.is_empty() {
            self.unread = Bytes::new();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Clocked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            // Counted when they arrived.
            this.take_unread(buf);
            if !this.unread.is_empty() || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // And what else has come: hyper then has the whole head in its first read, and
            // does not grow its buffer for a second. An error waits for the next read.
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    this.exchanges.bytes_arrived();
                }
                Poll::Ready(Err(e)) => this.error = Some(e),
                _ => {}
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
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
        let this = self.get_mut();
        this.exchanges.unflushed.store(true, Ordering::Release);
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.exchanges.unflushed.store(true, Ordering::Release);
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// hyper flushes once it has written all it holds: done writing, until its next write.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.exchanges.unflushed.store(false, Ordering::Release);
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.exchanges.parking.load(Ordering::Acquire) {
            // hyper ended to give the socket back, not to close it.
            return Poll::Ready(Ok(()));
        }
        this.exchanges.closing.store(true, Ordering::Release);
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::RequestBody;
    use http_body_util::{BodyExt, Full};
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

    /// Serves HTTP/1 with `handle` on one end of an in-memory pipe holding up to `capacity`
    /// bytes each way, as a sidecar serves a connection; the other end is the client's.
    fn serve_pipe<F, Fut, B>(
        capacity: usize,
        handle: F,
    ) -> (
        tokio::io::DuplexStream,
        Arc<Exchanges>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    )
    where
        F: Fn(Request<Incoming>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: Body<Data = Bytes, Error = Infallible> + Unpin + Send + 'static,
    {
        let (client, server) = tokio::io::duplex(capacity);
        let exchanges = Exchanges::new();
        let draining = CancellationToken::new();
        let task = tokio::spawn({
            let (exchanges, draining) = (exchanges.clone(), draining.clone());
            async move {
                let service = tracked(exchanges.clone(), true, handle);
                let bytes_idle = std::future::pending::<()>();
                tokio::pin!(bytes_idle);
                let io = Clocked::new(server, exchanges.clone());
                let limits = Limits::default();
                serve_http1(io, service, &exchanges, &limits, &draining, bytes_idle).await;
            }
        });
        (client, exchanges, draining, task)
    }

    type Answer = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

    /// Answers `<path> <body length>`, reading the body as the sidecar does (through
    /// `RequestBody`), except on `/unread`, answered 403 without reading it, and on `/held`,
    /// answered after its first bytes. Every path handled is recorded.
    fn app(seen: Arc<Mutex<Vec<String>>>) -> impl Fn(Request<Incoming>) -> Answer + Send + 'static {
        move |mut request: Request<Incoming>| {
            let seen = seen.clone();
            Box::pin(async move {
                let path = request.uri().path().to_owned();
                seen.lock().unwrap().push(path.clone());
                if path == "/unread" {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"no")));
                    *response.status_mut() = StatusCode::FORBIDDEN;
                    return Ok(response);
                }
                let end = request.extensions_mut().remove::<BodyEnd>();
                let mut body = RequestBody::new(request.into_body(), None).ending(end);
                if path == "/held" {
                    // Answered after the body's first bytes; the rest is read no further, and
                    // the body let go of a second later.
                    let _ = body.frame().await;
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        drop(body);
                    });
                    return Ok(Response::new(Full::new(Bytes::from_static(b"held"))));
                }
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes().len())
                    .unwrap_or(usize::MAX);
                Ok(Response::new(Full::new(Bytes::from(format!(
                    "{path} {body}"
                )))))
            })
        }
    }

    /// Reads one response with a Content-Length body: its head and its body.
    async fn response(client: &mut tokio::io::DuplexStream) -> (String, String) {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(client.read(&mut byte).await.unwrap(), 1, "{got:?}");
            got.push(byte[0]);
        }
        let head = String::from_utf8(got).unwrap().to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("a length")
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        client.read_exact(&mut body).await.unwrap();
        (head, String::from_utf8(body).unwrap())
    }

    /// Waits until the connection was parked `times` times.
    async fn parked(exchanges: &Exchanges, times: u64) {
        for _ in 0..10_000 {
            if exchanges.parked.load(Ordering::Relaxed) >= times {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("parked {:?} times, not {times}", exchanges.parked);
    }

    /// What a parked connection keeps of what hyper read is a copy: never a slice that would
    /// hold hyper's whole read buffer while the connection waits.
    #[test]
    fn a_parked_connection_holds_nothing_of_hypers_buffer() {
        let (_client, server) = tokio::io::duplex(64);
        let mut io = Clocked::new(server, Exchanges::new());
        let hypers = Bytes::from(vec![b'x'; 8192]);
        io.give_back(hypers.slice(8192..));
        io.give_back(hypers.slice(8000..));
        assert_eq!(io.unread.len(), 192);
        assert!(hypers.is_unique(), "a slice of hyper's buffer is kept");
        // Read to its end, the copy is let go of too.
        let mut space = [0u8; 256];
        let mut buf = ReadBuf::new(&mut space);
        io.take_unread(&mut buf);
        assert_eq!(buf.filled().len(), 192);
        assert_eq!(io.unread, Bytes::new());
    }

    /// Kept-alive HTTP/1.1 exchanges end hyper's connection once quiet and start a new one for
    /// the next request; bodies, pipelined requests and a head begun before parking carry
    /// over whole and in order, and pipelined requests are served without parking between.
    #[tokio::test]
    async fn keep_alive_connections_are_parked_between_exchanges() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut client, exchanges, _draining, task) = serve_pipe(64 * 1024, app(seen.clone()));

        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = response(&mut client).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        assert_eq!(body, "/a 0");
        parked(&exchanges, 1).await;

        // A body, sent in two parts.
        client
            .write_all(b"POST /b HTTP/1.1\r\nHost: app\r\nContent-Length: 11\r\n\r\nhello")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        client.write_all(b" world").await.unwrap();
        assert_eq!(response(&mut client).await.1, "/b 11");
        parked(&exchanges, 2).await;

        // Three pipelined requests, one chunked, in one write and split mid-head.
        client
            .write_all(
                b"GET /c HTTP/1.1\r\nHost: app\r\n\r\n\
                  POST /d HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3\r\nabc\r\n0\r\n\r\nGET /e HT",
            )
            .await
            .unwrap();
        assert_eq!(response(&mut client).await.1, "/c 0");
        assert_eq!(response(&mut client).await.1, "/d 3");
        // Parked with part of /e's head read: it is handed to the next hyper connection.
        parked(&exchanges, 3).await;
        assert_eq!(
            exchanges.parked.load(Ordering::Relaxed),
            3,
            "parked between /c and /d"
        );
        client
            .write_all(b"TP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response(&mut client).await.1, "/e 0");
        parked(&exchanges, 4).await;
        assert_eq!(*seen.lock().unwrap(), ["/a", "/b", "/c", "/d", "/e"]);

        // The client closes: so does the connection.
        client.shutdown().await.unwrap();
        task.await.unwrap();
    }

    /// A head trickled in after a park, slower than the time to park, is served on a
    /// connection kept open: the new hyper connection is not told to shut down before its
    /// first exchange is over.
    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_after_a_park_keeps_the_connection() {
        let (mut client, exchanges, _draining, task) =
            serve_pipe(64 * 1024, app(Arc::new(Mutex::new(Vec::new()))));
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response(&mut client).await.1, "/a 0");
        parked(&exchanges, 1).await;
        client.write_all(b"GET /b HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        client.write_all(b"Host: app\r\n\r\n").await.unwrap();
        let (head, body) = response(&mut client).await;
        assert_eq!(body, "/b 0");
        assert!(!head.contains("connection: close"), "{head}");
        parked(&exchanges, 2).await;
        client
            .write_all(b"GET /c HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response(&mut client).await.1, "/c 0");
        drop(client);
        task.await.unwrap();
    }

    /// A request that asks to close (or an HTTP/1.0 one) is answered and closed, not
    /// parked: a client reading to the end of the stream is not left waiting. The pipe holds
    /// a few bytes, so that the response is still being written when the timer to park fires.
    #[tokio::test(start_paused = true)]
    async fn a_connection_asked_to_close_is_closed_not_parked() {
        for request in [
            &b"GET /a HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, Close\r\n\r\n"[..],
            b"GET /a HTTP/1.0\r\n\r\n",
        ] {
            let (mut client, exchanges, _draining, task) =
                serve_pipe(8, app(Arc::new(Mutex::new(Vec::new()))));
            client.write_all(request).await.unwrap();
            // A client slow to read: the response is still being written long after the
            // exchange ended (the clock is paused and runs ahead when everything waits).
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut all = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut all));
            assert!(closed.await.is_ok(), "the connection is closed");
            let all = String::from_utf8(all).unwrap();
            assert!(all.ends_with("/a 0"), "{all}");
            task.await.unwrap();
            assert_eq!(exchanges.parked.load(Ordering::Relaxed), 0);
        }
    }

    /// A body the app did not read to its end is never parked behind: its bytes are not read
    /// as the next request's head, whatever they look like. (The clock is paused and runs
    /// ahead when everything waits.)
    #[tokio::test(start_paused = true)]
    async fn an_unread_body_is_never_read_as_a_request() {
        let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
        let head = format!(
            "POST /unread HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        );
        let next = b"GET /next HTTP/1.1\r\nHost: app\r\n\r\n";

        // The body comes after the app's answer: hyper gives up reading it and closes.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut client, exchanges, _draining, task) = serve_pipe(64 * 1024, app(seen.clone()));
        client.write_all(head.as_bytes()).await.unwrap();
        let (answer, _) = response(&mut client).await;
        assert!(answer.starts_with("http/1.1 403"), "{answer}");
        let _ = client.write_all(&[&smuggled[..], next].concat()).await;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest));
        let closed = closed.await.is_ok();
        assert_eq!(*seen.lock().unwrap(), ["/unread"]);
        assert!(closed, "the connection is closed");
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        assert_eq!(exchanges.parked.load(Ordering::Relaxed), 0);
        task.await.unwrap();

        // The app answers after the body's first bytes and lets go of the rest long after
        // (past the time to park); the rest comes later still.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut client, exchanges, _draining, task) = serve_pipe(64 * 1024, app(seen.clone()));
        let held = format!(
            "POST /held HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\nhello",
            smuggled.len() + 5
        );
        client.write_all(held.as_bytes()).await.unwrap();
        assert_eq!(response(&mut client).await.1, "held");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = client.write_all(&[&smuggled[..], next].concat()).await;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest));
        let closed = closed.await.is_ok();
        assert_eq!(*seen.lock().unwrap(), ["/held"]);
        assert!(closed, "the connection is closed");
        assert_eq!(exchanges.parked.load(Ordering::Relaxed), 0);
        task.await.unwrap();

        // The body came with the head: hyper reads it past and answers the next request.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut client, exchanges, _draining, task) = serve_pipe(64 * 1024, app(seen.clone()));
        client
            .write_all(&[head.as_bytes(), smuggled, next].concat())
            .await
            .unwrap();
        assert!(response(&mut client).await.0.starts_with("http/1.1 403"));
        assert_eq!(response(&mut client).await.1, "/next 0");
        parked(&exchanges, 1).await;
        assert_eq!(*seen.lock().unwrap(), ["/unread", "/next"]);
        drop(client);
        task.await.unwrap();
    }

    /// A request hyper answers with a close of its own (here: framed both by length and as
    /// chunked, which RFC 9112 says to close after) is closed, never parked, even for a
    /// client too slow to read before the timer to park fires: what follows its body is
    /// never served.
    #[tokio::test(start_paused = true)]
    async fn a_request_hyper_closes_after_is_never_parked() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (client, exchanges, _draining, task) = serve_pipe(16, app(seen.clone()));
        let (mut reader, mut writer) = tokio::io::split(client);
        let writing = tokio::spawn(async move {
            let _ = writer
                .write_all(
                    b"POST /t HTTP/1.1\r\nHost: app\r\nContent-Length: 42\r\n\
                      Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
                      GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n",
                )
                .await;
            writer
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut all = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut all));
        let closed = closed.await.is_ok();
        let all = String::from_utf8_lossy(&all).to_ascii_lowercase();
        assert_eq!(*seen.lock().unwrap(), ["/t"], "{all}");
        assert!(closed, "the connection is closed: {all}");
        assert!(all.contains("connection: close"), "{all}");
        assert_eq!(exchanges.parked.load(Ordering::Relaxed), 0);
        drop(writing.await.unwrap());
        task.await.unwrap();
    }

    /// A response whose end is the connection's close (HTTP/1.0, no length) is closed, not
    /// parked, however slowly the client reads it.
    #[tokio::test(start_paused = true)]
    async fn a_response_ended_by_the_close_is_closed() {
        /// A body of unknown length.
        struct Unsized(Full<Bytes>);
        impl Body for Unsized {
            type Data = Bytes;
            type Error = Infallible;
            fn poll_frame(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
                Pin::new(&mut self.get_mut().0).poll_frame(cx)
            }
        }
        let (mut client, exchanges, _draining, task) =
            serve_pipe(16, |_: Request<Incoming>| async {
                let mut response = Response::new(Unsized(Full::new(Bytes::from(vec![b'x'; 200]))));
                *response.version_mut() = Version::HTTP_10;
                Ok(response)
            });
        client
            .write_all(b"GET /download HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut all = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut all));
        assert!(closed.await.is_ok(), "the client sees the response end");
        assert!(all.ends_with(&[b'x'; 200]));
        assert_eq!(exchanges.parked.load(Ordering::Relaxed), 0);
        task.await.unwrap();
    }

    /// A head begun behind a request is timed once that request is over: a client that sends
    /// half of its next request and stops is closed after `limits.header_timeout`, not
    /// `limits.idle_timeout`.
    #[tokio::test(start_paused = true)]
    async fn a_head_begun_behind_a_request_is_timed() {
        let (mut client, _exchanges, _draining, task) =
            serve_pipe(64 * 1024, app(Arc::new(Mutex::new(Vec::new()))));
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: app\r\n\r\nGET /b HT")
            .await
            .unwrap();
        assert_eq!(response(&mut client).await.1, "/a 0");
        let answered = Instant::now();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let limits = Limits::default();
        assert!(limits.header_timeout < limits.idle_timeout);
        assert!(
            answered.elapsed() <= PARK_AFTER + limits.header_timeout,
            "closed after {:?}",
            answered.elapsed()
        );
        task.await.unwrap();
    }

    /// Draining closes a parked connection at once.
    #[tokio::test]
    async fn draining_closes_a_parked_connection() {
        let (mut client, exchanges, draining, task) =
            serve_pipe(64 * 1024, app(Arc::new(Mutex::new(Vec::new()))));
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        response(&mut client).await;
        parked(&exchanges, 1).await;
        draining.cancel();
        task.await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    /// An upgrade is handed over as before, never parked.
    #[tokio::test]
    async fn an_upgrade_is_handed_over_not_parked() {
        let (mut client, exchanges, _draining, task) =
            serve_pipe(64 * 1024, |mut request: Request<Incoming>| async move {
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    let mut tunnel = TokioIo::new(upgrade.await.unwrap());
                    let mut word = [0u8; 4];
                    tunnel.read_exact(&mut word).await.unwrap();
                    tunnel.write_all(&word).await.unwrap();
                });
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                response.headers_mut().insert(
                    header::CONNECTION,
                    http::HeaderValue::from_static("upgrade"),
                );
                response
                    .headers_mut()
                    .insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
                Ok(response)
            });
        client
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            client.read_exact(&mut byte).await.unwrap();
            got.push(byte[0]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        client.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        client.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        task.await.unwrap();
        assert_eq!(exchanges.parked.load(Ordering::Relaxed), 0);
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
