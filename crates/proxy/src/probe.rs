//! Kubelet probes of the app under strict mutual TLS.
//!
//! The kubelet probes from the node, in plaintext; in a pod whose inbound traffic is captured,
//! such a probe would reach the sidecar's mutual-TLS port and be refused. The injector
//! therefore rewrites the app's HTTP and TCP probes to the sidecar's admin port
//! (`/app-health/<container>/<kind>`, never captured), and the sidecar performs the original
//! check against the app on `127.0.0.1`. Only the probes listed in the configuration are
//! answered, so the admin port does not become a way into the app.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::AppProbe;

/// Longer than any kubelet probe timeout worth having; the kubelet gives up first.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks the app as `probe` says and answers as the original probe would have been judged:
/// 200 when it passes, 503 with the reason when not.
pub(crate) async fn check(probe: &AppProbe) -> Response<Full<Bytes>> {
    let app = SocketAddr::from(([127, 0, 0, 1], probe.port));
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, run(probe, app)).await;
    let (status, text) = match outcome {
        Ok(Ok(None)) => (StatusCode::OK, format!("ok: {app} accepts connections")),
        Ok(Ok(Some(code))) if code.is_success() || code.is_redirection() => {
            (StatusCode::OK, format!("ok: the app answered {code}"))
        }
        Ok(Ok(Some(code))) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the app answered {code}"),
        ),
        Ok(Err(reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot probe the app at {app}: {reason}"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the app at {app} did not answer within {PROBE_TIMEOUT:?}"),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(text + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn run(probe: &AppProbe, app: SocketAddr) -> Result<Option<StatusCode>, String> {
    let tcp = TcpStream::connect(app).await.map_err(|e| e.to_string())?;
    let Some(path) = &probe.http_path else {
        return Ok(None);
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get(path.as_str())
        .header(header::HOST, app.to_string())
        .header(header::USER_AGENT, "kube-probe (via hush)")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(response.status()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An app answering every request with `status`.
    async fn app(status: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut head = [0u8; 1024];
                let _ = tcp.read(&mut head).await;
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                let _ = tcp.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    async fn probe(port: u16, http_path: Option<&str>) -> (StatusCode, String) {
        let response = check(&AppProbe {
            path: "/app-health/app/readiness".into(),
            port,
            http_path: http_path.map(Into::into),
        })
        .await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn probes_answer_as_the_kubelet_would_judge() {
        let healthy = app("200 OK").await;
        let moved = app("302 Found").await;
        let sick = app("500 Internal Server Error").await;
        assert_eq!(probe(healthy, Some("/healthz")).await.0, StatusCode::OK);
        assert_eq!(probe(moved, Some("/healthz")).await.0, StatusCode::OK);
        let (status, text) = probe(sick, Some("/healthz")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("answered 500"), "{text}");
        assert_eq!(probe(healthy, None).await.0, StatusCode::OK);
        // Nothing listening.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let (status, text) = probe(port, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("cannot probe the app"), "{text}");
    }
}
