//! What every listener shares: the accept loop with its connection cap, the shutdown
//! lifecycle, and serving one connection as HTTP.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::Limits;
use crate::http::{HttpContext, HttpVersion, forward};
use crate::io::Activity;

/// How the sidecar stops: first `draining` (stop accepting, let HTTP connections finish
/// their requests), then, after the grace period, `force_close` for whatever is left.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lifecycle {
    pub(crate) draining: CancellationToken,
    pub(crate) force_close: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Lifecycle {
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

/// Accepts connections on `listener` until draining starts, holding at most
/// `limits.max_connections` open; each is handed to `handle`, and its slot is freed when that
/// finishes.
pub(crate) async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: &Limits,
    lifecycle: Lifecycle,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = lifecycle.draining.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = lifecycle.draining.cancelled() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let connection = handle(tcp, peer);
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

/// Serves HTTP on `io` until the peer closes, the connection idles out, or draining finishes
/// its in-flight requests.
pub(crate) async fn serve_http<I>(
    io: I,
    ctx: Arc<HttpContext>,
    limits: &Limits,
    activity: Arc<Activity>,
    draining: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let ctx = ctx.clone();
        service_fn(move |request| forward(ctx.clone(), request))
    };
    let idle = limits.idle_timeout;
    let idle = async move { activity.idle_for(idle).await };
    match ctx.version {
        HttpVersion::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .max_buf_size(limits.max_header_bytes)
                // hyper's header timeout also runs while a keep-alive connection waits for
                // its next request, which would close connections a peer's pool still holds;
                // silent connections are bounded by the idle timeout instead.
                .header_read_timeout(None);
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            drive(connection, |c| c.graceful_shutdown(), draining, idle).await;
        }
        HttpVersion::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            let streams = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                // A peer sidecar multiplexes all its callers' requests onto one connection; a
                // low stream limit would queue requests behind long polls.
                .max_concurrent_streams(streams);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            drive(connection, |c| c.graceful_shutdown(), draining, idle).await;
        }
    }
}

async fn drive<C, E>(
    connection: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    draining: CancellationToken,
    idle: impl Future<Output = ()>,
) where
    C: Future<Output = Result<(), E>>,
    E: Display,
{
    tokio::pin!(connection);
    tokio::pin!(idle);
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
            () = &mut idle => {
                debug!("closing an idle HTTP connection");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{Notify, mpsc};

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let lifecycle = Lifecycle::default();
        let (handled, mut handled_rx) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let accept = tokio::spawn({
            let (lifecycle, release) = (lifecycle.clone(), release.clone());
            async move {
                accept_loop("test", listener, &limits, lifecycle, move |tcp, _| {
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
        let _second = TcpStream::connect(addr).await.unwrap();
        handled_rx.recv().await.expect("the first is served");
        // The second waits in the backlog while the only slot is taken.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), handled_rx.recv())
                .await
                .is_err()
        );
        release.notify_one();
        handled_rx
            .recv()
            .await
            .expect("the second is served once a slot frees");

        // Draining ends the accept loop.
        lifecycle.draining.cancel();
        accept.await.unwrap();
        release.notify_one();
    }
}
