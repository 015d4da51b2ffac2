//! Serving one accepted TLS connection: HTTP/2 through hyper, gRPC through tonic's routes, and
//! the clock that closes a connection which holds its slot without using it.
//!
//! A connection must start its first request within `first_request_timeout` of the handshake
//! (the HTTP/2 preface, SETTINGS and a request's headers), and is closed once it has had no
//! request in flight for `idle_timeout`. Idle means no request, not no bytes: HTTP/2 PINGs,
//! SETTINGS and WINDOW_UPDATEs keep nothing alive. Closing is hyper's graceful shutdown (GOAWAY,
//! so a client never loses a request it sent), and a connection still there [`CLOSE_GRACE`]
//! after both the GOAWAY and the end of its last request is dropped: graceful shutdown waits for
//! a PING acknowledgement that a silent client never sends.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tonic::service::Routes;
use tower::ServiceExt;
use tracing::debug;

use super::PeerInfo;
use super::limits::Refusals;

/// How long a connection asked to close may take to go once nothing is in flight: enough for
/// the GOAWAY / PING exchange with a live client and for the last response to be written.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The time limits of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From the end of the TLS handshake to the first request's headers.
    pub(crate) first_request: Duration,
    /// With no request in flight.
    pub(crate) idle: Duration,
    /// For one request, from its headers to its answer.
    pub(crate) request: Duration,
}

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) routes: Routes,
    pub(crate) http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    pub(crate) timeouts: Timeouts,
    pub(crate) max_request_bytes: usize,
    /// Requests from connections without a verified client certificate, in flight.
    pub(crate) unauthenticated: Arc<Semaphore>,
    pub(crate) max_unauthenticated: usize,
    /// Requests refused because `unauthenticated` was exhausted.
    pub(crate) busy: Refusals,
    /// Cancelled when the CA shuts down: connections close gracefully.
    pub(crate) graceful: CancellationToken,
}

impl Shared {
    /// hyper's HTTP/2 server as the CA uses it. The abuse bounds are stated here even where they
    /// are hyper's or h2's defaults, because the CA's port is open to anyone.
    pub(crate) fn http2() -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // A peer that stops answering PINGs during a long request is dead; the idle clock
            // covers connections without requests.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_concurrent_streams(1024)
            // Rapid reset (CVE-2023-44487): streams reset before they were served count, and
            // past 20 the connection gets GOAWAY ENHANCE_YOUR_CALM.
            .max_pending_accept_reset_streams(20)
            // Streams the server itself had to reset for the peer's errors, per connection.
            .max_local_error_reset_streams(1024)
            // Also bounds CONTINUATION floods: h2 refuses more frames than this list needs.
            .max_header_list_size(16 * 1024);
        http2
    }
}

/// Serves `tls` until the client leaves, a time limit closes it, or the CA shuts down.
pub(crate) async fn serve(tls: TlsStream<TcpStream>, peer: PeerInfo, shared: Arc<Shared>) {
    let opened = Instant::now();
    let activity = Arc::new(Activity::new(opened));
    let address = peer.address();
    let service = RequestService {
        shared: shared.clone(),
        peer,
        activity: activity.clone(),
    };
    let mut connection = pin!(shared.http2.serve_connection(TokioIo::new(tls), service));
    let mut closing: Option<Instant> = None;
    let mut wake = opened + shared.timeouts.first_request;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    debug!(peer = ?address, %error, "CA connection ended with an error");
                }
                return;
            }
            () = shared.graceful.cancelled(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                let now = Instant::now();
                closing = Some(now);
                wake = now + CLOSE_GRACE;
            }
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                match next_step(activity.snapshot(), opened, closing, now, &shared.timeouts) {
                    Step::WaitUntil(at) => wake = at,
                    Step::Close(reason) => {
                        debug!(peer = ?address, reason = reason.as_str(), "closing a CA connection");
                        connection.as_mut().graceful_shutdown();
                        closing = Some(now);
                        wake = now + CLOSE_GRACE;
                    }
                    Step::Drop => {
                        debug!(peer = ?address, "dropping a CA connection that did not close when asked");
                        return;
                    }
                }
            }
        }
    }
}

// === The connection's clock ===

/// Requests on one connection: how many are in flight, whether there ever was one, and since
/// when none is in flight.
#[derive(Debug)]
struct Activity {
    state: Mutex<ActivityState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ActivityState {
    in_flight: usize,
    seen_any: bool,
    idle_since: Instant,
}

/// One request in flight; ending it (dropping this) may start the idle clock.
struct InFlight(Arc<Activity>);

impl Activity {
    fn new(opened: Instant) -> Self {
        Self {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                seen_any: false,
                idle_since: opened,
            }),
        }
    }

    fn start(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.seen_any = true;
        InFlight(self.clone())
    }

    fn snapshot(&self) -> ActivityState {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        // The state is a few integers updated in one statement each: a panic elsewhere cannot
        // leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
        }
    }
}

/// What the connection's clock says to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing yet; look again then.
    WaitUntil(Instant),
    /// Ask the client to go (GOAWAY).
    Close(CloseReason),
    /// Asked before, and still here with nothing in flight: drop the connection.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    NoFirstRequest,
    Idle,
}

impl CloseReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::NoFirstRequest => "no request within the first-request timeout",
            Self::Idle => "no request in flight for the idle timeout",
        }
    }
}

/// The connection's clock, without the clock: a pure function of what happened and when.
fn next_step(
    activity: ActivityState,
    opened: Instant,
    closing: Option<Instant>,
    now: Instant,
    timeouts: &Timeouts,
) -> Step {
    if let Some(asked) = closing {
        if activity.in_flight > 0 {
            // Requests in flight are bounded by the request timeout; look again after it.
            return Step::WaitUntil(now + CLOSE_GRACE);
        }
        // The last response needs its grace too, not only the GOAWAY.
        let quiet_since = asked.max(activity.idle_since);
        let deadline = quiet_since + CLOSE_GRACE;
        return if now >= deadline {
            Step::Drop
        } else {
            Step::WaitUntil(deadline)
        };
    }
    if activity.in_flight > 0 {
        // It cannot become idle for longer than the limit before the limit has passed again.
        return Step::WaitUntil(now + timeouts.idle);
    }
    let (deadline, reason) = if activity.seen_any {
        (activity.idle_since + timeouts.idle, CloseReason::Idle)
    } else {
        (opened + timeouts.first_request, CloseReason::NoFirstRequest)
    };
    if now >= deadline {
        Step::Close(reason)
    } else {
        Step::WaitUntil(deadline)
    }
}

// === Requests ===

/// Each request of one connection: counted for the idle clock, limited when the client has no
/// verified certificate, bounded by the request timeout, and handed to tonic with the
/// connection's [`PeerInfo`].
#[derive(Clone)]
struct RequestService {
    shared: Arc<Shared>,
    peer: PeerInfo,
    activity: Arc<Activity>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for RequestService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.start();
        // A verified client certificate is a member of the mesh renewing what it holds; anyone
        // else may be about to start a TokenReview, so their number in flight is capped.
        let permit = if self.peer.spiffe_id.is_some() {
            None
        } else {
            match unauthenticated_permit(&self.shared, self.peer.address()) {
                Ok(permit) => Some(permit),
                Err(busy) => return Box::pin(std::future::ready(Ok(busy))),
            }
        };
        request.extensions_mut().insert(self.peer.clone());
        let routes = self.shared.routes.clone();
        let timeout = self.shared.timeouts.request;
        let limit = self.shared.max_request_bytes;
        Box::pin(async move {
            let response = match tokio::time::timeout(timeout, routes.oneshot(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_elapsed) => Status::cancelled(format!(
                    "the CA did not answer within {}",
                    humantime::format_duration(timeout)
                ))
                .into_http(),
            };
            drop((in_flight, permit));
            Ok(oversize_is_resource_exhausted(response, limit))
        })
    }
}

/// A place among the unauthenticated requests in flight, or the answer that there is none.
#[allow(clippy::result_large_err)] // the refusal is the response itself, built once
fn unauthenticated_permit(
    shared: &Shared,
    address: Option<IpAddr>,
) -> Result<OwnedSemaphorePermit, Response<Body>> {
    shared
        .unauthenticated
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            if let Some(address) = address {
                shared.busy.refuse(address);
            }
            Status::unavailable(format!(
                "the CA is busy: {} requests from callers without a client certificate are \
                 already in flight; retry in a few seconds (renewal with a current certificate \
                 is not limited)",
                shared.max_unauthenticated
            ))
            .into_http()
        })
}

/// tonic answers an oversized message with OUT_OF_RANGE; hush promises RESOURCE_EXHAUSTED with
/// a plain message, so the trailers-only error response is rewritten here.
pub(crate) fn oversize_is_resource_exhausted<B>(
    mut response: Response<B>,
    limit: usize,
) -> Response<B> {
    let headers = response.headers_mut();
    let is_oversize = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            // grpc-message is percent-encoded on the wire.
            .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if is_oversize {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        if let Ok(message) = http::HeaderValue::from_str(&format!(
            "request too large: the CA accepts requests of at most {limit} bytes"
        )) {
            headers.insert("grpc-message", message);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        first_request: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        request: Duration::from_secs(30),
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn state(in_flight: usize, seen_any: bool, idle_since: Instant) -> ActivityState {
        ActivityState {
            in_flight,
            seen_any,
            idle_since,
        }
    }

    #[test]
    fn a_connection_without_a_first_request_is_closed_at_the_first_request_timeout() {
        let t0 = Instant::now();
        let silent = state(0, false, t0);
        assert_eq!(
            next_step(silent, t0, None, t0 + secs(3), &TIMEOUTS),
            Step::WaitUntil(t0 + secs(10))
        );
        assert_eq!(
            next_step(silent, t0, None, t0 + secs(10), &TIMEOUTS),
            Step::Close(CloseReason::NoFirstRequest)
        );
    }

    #[test]
    fn a_request_in_flight_is_never_idle() {
        let t0 = Instant::now();
        let busy = state(1, true, t0);
        assert_eq!(
            next_step(busy, t0, None, t0 + secs(600), &TIMEOUTS),
            Step::WaitUntil(t0 + secs(660)),
            "look again one idle period later: it cannot be idle for longer before then"
        );
    }

    #[test]
    fn the_idle_clock_runs_from_the_end_of_the_last_request() {
        let t0 = Instant::now();
        let ended = t0 + secs(5);
        let idle = state(0, true, ended);
        assert_eq!(
            next_step(idle, t0, None, t0 + secs(10), &TIMEOUTS),
            Step::WaitUntil(ended + secs(60)),
            "after a first request, the first-request timeout no longer applies"
        );
        assert_eq!(
            next_step(idle, t0, None, ended + secs(60), &TIMEOUTS),
            Step::Close(CloseReason::Idle)
        );
    }

    #[test]
    fn a_connection_asked_to_close_is_dropped_only_after_its_last_request_and_a_grace() {
        let t0 = Instant::now();
        let asked = t0 + secs(60);
        // Still answering: wait, it is bounded by the request timeout.
        assert_eq!(
            next_step(state(1, true, t0), t0, Some(asked), asked, &TIMEOUTS),
            Step::WaitUntil(asked + CLOSE_GRACE)
        );
        // The answer ended after the GOAWAY: it gets its own grace to be written.
        let answered = asked + secs(3);
        let quiet = state(0, true, answered);
        assert_eq!(
            next_step(quiet, t0, Some(asked), answered, &TIMEOUTS),
            Step::WaitUntil(answered + CLOSE_GRACE)
        );
        assert_eq!(
            next_step(quiet, t0, Some(asked), answered + CLOSE_GRACE, &TIMEOUTS),
            Step::Drop
        );
        // Idle long before: dropped one grace after the GOAWAY.
        let idle = state(0, true, t0);
        assert_eq!(
            next_step(idle, t0, Some(asked), asked + CLOSE_GRACE, &TIMEOUTS),
            Step::Drop
        );
    }

    #[test]
    fn requests_are_counted_until_their_future_ends() {
        let t0 = Instant::now();
        let activity = Arc::new(Activity::new(t0));
        assert!(!activity.snapshot().seen_any);
        let first = activity.start();
        let second = activity.start();
        assert_eq!(activity.snapshot().in_flight, 2);
        drop(first);
        assert_eq!(activity.snapshot().idle_since, t0, "one is still in flight");
        drop(second);
        let after = activity.snapshot();
        assert_eq!(after.in_flight, 0);
        assert!(after.seen_any);
        assert!(after.idle_since >= t0);
    }

    #[test]
    fn only_tonics_oversize_answer_is_rewritten() {
        let oversize = Status::out_of_range(
            "Error, decoded message length too large: found 1048576 bytes, the limit is: 65536 bytes",
        )
        .into_http::<Body>();
        let rewritten = oversize_is_resource_exhausted(oversize, 65536);
        assert_eq!(rewritten.headers()["grpc-status"], "8");
        assert_eq!(
            rewritten.headers()["grpc-message"],
            "request too large: the CA accepts requests of at most 65536 bytes"
        );
        let other = Status::out_of_range("ttl out of range").into_http::<Body>();
        assert_eq!(
            oversize_is_resource_exhausted(other, 65536).headers()["grpc-status"],
            "11"
        );
    }
}
