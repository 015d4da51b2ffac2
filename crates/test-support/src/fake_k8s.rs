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
//!
//! [`FakeApiServer::builder`] serves the tests of a TokenReview client itself:
//!
//! * a [`TokenReviewContract`] checks every request as the real API server would (the CA's own
//!   token re-read from its file when the request arrives, the audience, the headers) and answers
//!   one that breaks it with HTTP 400, so the client under test fails loudly;
//!   [`FakeApiServer::assert_requests_were_valid`] then names what was wrong;
//! * [`FakeApiServerBuilder::start_http`] answers with whole `http::Response`s, for bodies no
//!   API server sends: garbage, oversized, or never-ending ones;
//! * [`FakeApiServerBuilder::server_names`] chooses the names in the server's certificate, to
//!   test a certificate issued for another host.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::ca::TestCa;

/// The path the TokenReview API lives at.
const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// The names the server's certificate carries unless the test chooses others: the names a
/// client dials it by.
const DEFAULT_SERVER_NAMES: &[&str] = &["127.0.0.1", "localhost"];

/// One request the fake API server received.
#[non_exhaustive]
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
    /// The `Host` header.
    pub host: Option<String>,
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

/// The body of an answer from [`FakeApiServerBuilder::start_http`]'s responder: any
/// `http_body::Body`, boxed (`Full::new(bytes).boxed()`, or a body of the test's own).
pub type ApiBody = BoxBody<Bytes, Infallible>;

/// Decides the whole HTTP answer to a request, whatever its body.
type HttpResponder = dyn Fn(&ReviewRequest) -> Response<ApiBody> + Send + Sync;

/// What the real API server demands of a TokenReview request.
///
/// Given to [`FakeApiServerBuilder::contract`], it is checked as each request arrives. The CA's
/// own token is read from the token file at that moment, not when the contract is made: the
/// kubelet rotates that file, and a client that cached an old token must fail.
#[derive(Debug, Clone)]
pub struct TokenReviewContract {
    audience: String,
    token_file: PathBuf,
}

/// A running fake API server.
pub struct FakeApiServer {
    url: String,
    ca_pem: String,
    requests: Arc<Mutex<Vec<ReviewRequest>>>,
    /// What broke the contract, one line per problem; `None` when there is no contract.
    problems: Option<Arc<Mutex<Vec<String>>>>,
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

/// Chooses what a [`FakeApiServer`] checks, what its certificate names and whether it holds
/// its answers; made by [`FakeApiServer::builder`].
#[derive(Debug)]
pub struct FakeApiServerBuilder {
    server_names: Vec<String>,
    contract: Option<TokenReviewContract>,
    held: bool,
}

// === impl FakeApiServer ===

impl FakeApiServer {
    /// Starts serving on 127.0.0.1 with a fresh port; `respond` answers each TokenReview.
    pub fn start(respond: impl Fn(&ReviewRequest) -> (u16, Value) + Send + Sync + 'static) -> Self {
        Self::builder().start(respond)
    }

    /// Like [`Self::start`], but every answer waits until [`Self::release`]: an API server too
    /// slow to answer, with each request already visible in [`Self::requests`].
    pub fn start_held(
        respond: impl Fn(&ReviewRequest) -> (u16, Value) + Send + Sync + 'static,
    ) -> Self {
        Self::builder().held().start(respond)
    }

    /// A server to configure before it starts.
    pub fn builder() -> FakeApiServerBuilder {
        FakeApiServerBuilder {
            server_names: DEFAULT_SERVER_NAMES.iter().map(|n| n.to_string()).collect(),
            contract: None,
            held: false,
        }
    }

    /// Answers every held request, and every later one at once.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// The base URL, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `127.0.0.1:PORT` a client that dials [`Self::url`] sends in `Host`.
    pub fn host(&self) -> &str {
        self.url.trim_start_matches("https://")
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

    /// Fails the test if any request so far broke the server's [`TokenReviewContract`], naming
    /// every problem.
    ///
    /// # Panics
    ///
    /// Also when the server has no contract: nothing was checked, and a check that cannot fail
    /// must not pass.
    #[track_caller]
    pub fn assert_requests_were_valid(&self) {
        let Some(problems) = &self.problems else {
            panic!(
                "assert_requests_were_valid needs a server started with \
                 FakeApiServer::builder().contract(..)"
            );
        };
        let problems = problems.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            problems.is_empty(),
            "requests broke the TokenReview contract: {problems:#?}"
        );
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

// === impl FakeApiServerBuilder ===

impl FakeApiServerBuilder {
    /// Checks every request against `contract` as it arrives, and answers one that breaks it with
    /// HTTP 400 (a `Status` naming the problems) instead of asking the responder.
    pub fn contract(mut self, contract: TokenReviewContract) -> Self {
        self.contract = Some(contract);
        self
    }

    /// The DNS names or IP addresses in the server's certificate, instead of `127.0.0.1` and
    /// `localhost`.
    pub fn server_names(mut self, names: &[&str]) -> Self {
        self.server_names = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// Holds every answer until [`FakeApiServer::release`].
    pub fn held(mut self) -> Self {
        self.held = true;
        self
    }

    /// Starts the server; `respond` answers each TokenReview with a status and a JSON body.
    pub fn start(
        self,
        respond: impl Fn(&ReviewRequest) -> (u16, Value) + Send + Sync + 'static,
    ) -> FakeApiServer {
        self.start_http(move |request| {
            let (status, body) = respond(request);
            api_response(status, "application/json", body.to_string())
        })
    }

    /// Starts the server; `respond` answers each TokenReview with a whole HTTP response, whose
    /// status, headers and body (see [`ApiBody`]) are the test's.
    pub fn start_http(
        self,
        respond: impl Fn(&ReviewRequest) -> Response<ApiBody> + Send + Sync + 'static,
    ) -> FakeApiServer {
        let pki = TestCa::new("kubernetes.test");
        let names: Vec<&str> = self.server_names.iter().map(String::as_str).collect();
        let tls = pki.rustls_server_config(&names, &[b"http/1.1"]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("cannot bind the fake API server to 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("cannot make the listener non-blocking");
        let host = listener
            .local_addr()
            .expect("a bound listener has an address")
            .to_string();
        let url = format!("https://{host}");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let problems: Option<Arc<Mutex<Vec<String>>>> =
            self.contract.as_ref().map(|_| Arc::default());
        let (released, gate) = watch::channel(!self.held);
        let (shutdown, stop) = oneshot::channel();
        let handler = Handler {
            respond: Arc::new(respond),
            check: self
                .contract
                .zip(problems.clone())
                .map(|(contract, problems)| {
                    Arc::new(Check {
                        contract,
                        host,
                        problems,
                    })
                }),
            recorded: requests.clone(),
            gate,
        };
        let thread = std::thread::Builder::new()
            .name("fake-kube-apiserver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cannot build the fake API server's runtime");
                runtime.block_on(serve(listener, TlsAcceptor::from(tls), handler, stop));
            })
            .expect("cannot start the fake API server's thread");
        FakeApiServer {
            url,
            ca_pem: pki.root_pem(),
            requests,
            problems,
            released,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }
}

// === impl TokenReviewContract ===

impl TokenReviewContract {
    /// Requests must ask about `audience` alone and authenticate with the token in `token_file`
    /// (trimmed: the file may end in a newline).
    pub fn new(audience: &str, token_file: impl Into<PathBuf>) -> Self {
        Self {
            audience: audience.to_string(),
            token_file: token_file.into(),
        }
    }

    /// What `request` does wrong, one line per problem (none for a good request). `host` is what
    /// `Host` must say ([`FakeApiServer::host`]); the token file is read now.
    pub fn problems(&self, request: &ReviewRequest, host: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if request.method != "POST" {
            problems.push(format!("method is {}, want POST", request.method));
        }
        if request.path != TOKEN_REVIEW_PATH {
            problems.push(format!(
                "path is {}, want {TOKEN_REVIEW_PATH}",
                request.path
            ));
        }
        match std::fs::read_to_string(&self.token_file) {
            Ok(own_token) => {
                let want = format!("Bearer {}", own_token.trim());
                if request.authorization.as_deref() != Some(want.as_str()) {
                    problems.push(format!(
                        "Authorization is {:?}, want the content of {}",
                        request.authorization,
                        self.token_file.display()
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "cannot read {} to check Authorization: {e}",
                self.token_file.display()
            )),
        }
        if request.content_type.as_deref() != Some("application/json") {
            problems.push(format!(
                "Content-Type is {:?}, want application/json",
                request.content_type
            ));
        }
        if request.host.as_deref() != Some(host) {
            problems.push(format!("Host is {:?}, want {host:?}", request.host));
        }
        let body = &request.body;
        if body["apiVersion"] != "authentication.k8s.io/v1" || body["kind"] != "TokenReview" {
            problems.push(format!("body is not a TokenReview: {body}"));
        }
        if body["spec"]["audiences"] != json!([self.audience]) {
            problems.push(format!(
                "spec.audiences is {}, want [{:?}]",
                body["spec"]["audiences"], self.audience
            ));
        }
        if request.token().is_none_or(str::is_empty) {
            problems.push("spec.token is missing".to_string());
        }
        problems
    }
}

/// A contract in force: what to check, the `Host` to expect, and where problems are written.
struct Check {
    contract: TokenReviewContract,
    host: String,
    problems: Arc<Mutex<Vec<String>>>,
}

/// What answers each request: the test's responder, the contract, the record, and the gate
/// held answers wait behind.
#[derive(Clone)]
struct Handler {
    respond: Arc<HttpResponder>,
    check: Option<Arc<Check>>,
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
) -> Result<Response<ApiBody>, Infallible> {
    let Handler {
        respond,
        check,
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
        host: header_text(header::HOST),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    // Checked on arrival, before any wait: the token file is to be compared with what it held
    // when the client sent the request.
    let problems = match &check {
        Some(check) => {
            let problems = check.contract.problems(&review, &check.host);
            check
                .problems
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(problems.iter().cloned());
            problems
        }
        None => Vec::new(),
    };
    recorded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(review.clone());
    // Held answers wait here; the server stopping drops the sender, which ends the wait too.
    let _ = gate.wait_for(|released| *released).await;
    let response = if !problems.is_empty() {
        json_response(400, &status_failure(400, &problems.join("; ")))
    } else if review.method != "POST" || review.path != TOKEN_REVIEW_PATH {
        json_response(
            404,
            &status_object(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        )
    } else {
        respond(&review)
    };
    Ok(response)
}

/// An HTTP answer with `status`, `Content-Type: content_type` and `body`, for
/// [`FakeApiServerBuilder::start_http`]'s responders.
///
/// A status that is not a valid HTTP status code becomes 200.
pub fn api_response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<ApiBody> {
    let content_type = header::HeaderValue::from_str(content_type)
        .unwrap_or_else(|e| panic!("{content_type:?} cannot be a Content-Type: {e}"));
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

/// An HTTP answer with `status` and a JSON `body`, as the API server sends them.
pub fn json_response(status: u16, body: &Value) -> Response<ApiBody> {
    api_response(status, "application/json", body.to_string())
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
    token_review(
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
    token_review(
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

/// The API server's answer to `request` with the `status` the test wrote: the TokenReview echoed
/// back, spec included.
pub fn token_review(request: &ReviewRequest, status: Value) -> Value {
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": request.body.get("spec").cloned().unwrap_or(json!({})),
        "status": status,
    })
}

/// The API server's `Status` body for an HTTP error `code` saying `message` (HTTP 401
/// `Unauthorized`, say, when the CA's own token is stale).
pub fn status_failure(code: u16, message: &str) -> Value {
    let reason = StatusCode::from_u16(code)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or_default()
        .replace(' ', "");
    status_object(code, &reason, message)
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
