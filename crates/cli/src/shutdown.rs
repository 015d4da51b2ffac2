//! When a long-running command (`hush ca serve`, `hush proxy`, `hush up`, the injector)
//! should stop.

/// Completes on SIGTERM or Ctrl-C.
pub(crate) async fn signal() {
    use tokio::signal::unix::{SignalKind, signal as unix_signal};
    let terminate = async {
        match unix_signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
}
