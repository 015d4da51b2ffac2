//! A fake Kubernetes API server that answers TokenReviews over HTTPS.
//!
//! It serves `POST /apis/authentication.k8s.io/v1/tokenreviews` on 127.0.0.1 (port 0) with a
//! certificate from its own [`TestCa`], records every request, and answers with whatever the
//! test's responder returns. The helpers build answers shaped like the real API server's: the
//! TokenReview echoed back (spec included, as the real one does) with a `status` filled in, or a
//! `Status` object for an HTTP error.
//!
//! The server runs on its own thread and runtime, so it works from synchronous and
//! asynchronous tests alike, and stops when dropped. [`FakeApiServer::start_held`] makes a slow
//! API server: every review is recorded as it arrives and answered only once the test releases
//! them.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::ca::TestCa;

/// The path the TokenReview API lives at.
const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// One request the fake API server received.
#[derive(Debug, Clone)]
pub struct ReviewRequest {
    /// The HTTP method.
    pub method: String,
    /// The request path.
    pub path: String,
    /// The `Authorization` header (the CA's own credentials).
    pub authorization: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body as JSON (`Null` if it was not JSON).
    pub body: Value,
}

impl ReviewRequest {
    /// The token under review (`spec.token`).
    pub fn token(&self) -> Option<&str> {
        self.body["spec"]["token"].as_str()
    }
}

/// Decides the answer to a TokenReview request: an HTTP status and a JSON body.
pub type ReviewResponder = dyn Fn(&ReviewRequest) -> (u16, Value) + Send + Sync;

/// A running fake API server.
pub struct FakeApiServer {
    url: String,
    ca_pem: String,
    requests: Arc<Mutex<Vec<ReviewRequest>>>,
    /// `false` while answers are held back (see [`FakeApiServer::start_held`]).
    released: watch::Sender<bool>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

// === impl FakeApiServer ===

impl FakeApiServer {
    /// Starts serving on 127.0.0.1 with a fresh port; `respond` answers each TokenReview.
    pub fn start(respond: impl Fn(&ReviewRequest) -> (u16, Value) + Send + Sync + 'static) -> Self {
        Self::start_gated(respond, true)
    }

    /// Like [`Self::start`], but every answer waits until [`Self::release`]: an API server too
    /// slow to answer, with each request already visible in [`Self::requests`].
    pub fn start_held(
        respond: impl Fn(&ReviewRequest) -> (u16, Value) + Send + Sync + 'static,
    ) -> Self {
        Self::start_gated(respond, false)
    }

    /// Answers every held request, and every later one at once.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    fn start_gated(
        respond: impl Fn(&ReviewRequest) -> (u16, Value) + Send + Sync + 'static,
        released: bool,
    ) -> Self {
        let pki = TestCa::new("kubernetes.test");
        let tls = pki.rustls_server_config(&["127.0.0.1", "localhost"], &[b"http/1.1"]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("cannot bind the fake API server to 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("cannot make the listener non-blocking");
        let url = format!(
            "https://{}",
            listener
                .local_addr()
                .expect("a bound listener has an address")
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (released, gate) = watch::channel(released);
        let (shutdown, stop) = oneshot::channel();
        let respond: Arc<ReviewResponder> = Arc::new(respond);
        let recorded = requests.clone();
        let thread = std::thread::Builder::new()
            .name("fake-kube-apiserver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cannot build the fake API server's runtime");
                runtime.block_on(serve(
                    listener,
                    TlsAcceptor::from(tls),
                    Handler {
                        respond,
                        recorded,
                        gate,
                    },
                    stop,
                ));
            })
            .expect("cannot start the fake API server's thread");
        Self {
            url,
            ca_pem: pki.root_pem(),
            requests,
            released,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The base URL, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PEM root that verifies the server's certificate (for `--k8s-ca-file`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ReviewRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What answers each request: the test's responder, the record, and the gate held answers wait
/// behind.
#[derive(Clone)]
struct Handler {
    respond: Arc<ReviewResponder>,
    recorded: Arc<Mutex<Vec<ReviewRequest>>>,
    gate: watch::Receiver<bool>,
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    handler: Handler,
    mut stop: oneshot::Receiver<()>,
) {
    let listener =
        tokio::net::TcpListener::from_std(listener).expect("cannot hand the listener to tokio");
    loop {
        let tcp = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service =
                hyper::service::service_fn(move |request| handle(request, handler.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    handler: Handler,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Handler {
        respond,
        recorded,
        mut gate,
    } = handler;
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header_text = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let review = ReviewRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        authorization: header_text(header::AUTHORIZATION),
        content_type: header_text(header::CONTENT_TYPE),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    recorded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(review.clone());
    // Held answers wait here; the server stopping drops the sender, which ends the wait too.
    let _ = gate.wait_for(|released| *released).await;
    let (status, answer) = if review.method != "POST" || review.path != TOKEN_REVIEW_PATH {
        (
            404,
            status_object(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        )
    } else {
        respond(&review)
    };
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The API server's answer when it authenticates the token: the request echoed back with
/// `status.authenticated: true`, the user `username` (such as
/// `system:serviceaccount:shop:frontend`) and the audiences the token was checked against.
pub fn token_review_authenticated(
    request: &ReviewRequest,
    username: &str,
    uid: &str,
    audiences: &[&str],
) -> Value {
    let service_account = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    let mut extra = json!({});
    if let Some((namespace, _)) = service_account {
        extra = json!({
            "authentication.kubernetes.io/pod-name": [format!("{namespace}-pod-7d9f8")],
            "authentication.kubernetes.io/pod-uid": ["0b9f7e2c-1d3a-4c5b-8e6f-7a8b9c0d1e2f"],
        });
    }
    echo(
        request,
        json!({
            "authenticated": true,
            "user": {
                "username": username,
                "uid": uid,
                "groups": [
                    "system:serviceaccounts",
                    "system:authenticated",
                ],
                "extra": extra,
            },
            "audiences": audiences,
        }),
    )
}

/// The API server's answer when it does not authenticate the token: `status.authenticated:
/// false` with `error`.
pub fn token_review_rejected(request: &ReviewRequest, error: &str) -> Value {
    echo(
        request,
        json!({
            "authenticated": false,
            "user": {},
            "error": error,
        }),
    )
}

/// The API server's `Status` body for HTTP 403 when the CA's service account may not create
/// TokenReviews.
pub fn forbidden(service_account: &str) -> Value {
    status_object(
        403,
        "Forbidden",
        &format!(
            "tokenreviews.authentication.k8s.io is forbidden: User \"{service_account}\" cannot \
             create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the \
             cluster scope"
        ),
    )
}

fn echo(request: &ReviewRequest, status: Value) -> Value {
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": request.body.get("spec").cloned().unwrap_or(json!({})),
        "status": status,
    })
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": { "group": "authentication.k8s.io", "kind": "tokenreviews" },
        "code": code,
    })
}
