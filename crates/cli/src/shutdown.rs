//! When a long-running command (`hush ca serve`, `hush proxy`, `hush inject serve`, `hush up`,
//! `hush demo-app`) should stop.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// Completes on SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// command calls it before it says it is ready, so a SIGTERM sent as soon as the readiness line
/// appears starts a graceful stop instead of killing the process with the signal's default
/// action.
pub(crate) fn signal() -> impl Future<Output = ()> + Send + 'static {
    let terminate = unix_signal(SignalKind::terminate());
    let interrupt = unix_signal(SignalKind::interrupt());
    async move {
        let received = |stream: std::io::Result<tokio::signal::unix::Signal>| async move {
            match stream {
                Ok(mut stream) => {
                    stream.recv().await;
                }
                // Without a handler the signal's default action stops the process anyway.
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = received(terminate) => {}
            () = received(interrupt) => {}
        }
    }
}
