//! Kubernetes service-account attestation through the TokenReview API.
//!
//! On Kubernetes a sidecar proves who it is by handing the CA its pod's projected
//! service-account token, a JWT issued for the audience `hush-ca`. The CA does not verify that
//! JWT itself; it asks the API server that issued it, with a `TokenReview`:
//!
//! 1. The CA re-reads its *own* service-account token from disk on every review, because the
//!    kubelet rotates that file.
//! 2. Over TLS 1.3, trusting only the configured CA bundle, it sends
//!    `POST /apis/authentication.k8s.io/v1/tokenreviews` with `Authorization: Bearer <own token>`
//!    and a body carrying the caller's token in `spec.token` and `[audience]` in
//!    `spec.audiences`.
//! 3. The API server checks the signature, expiry and audiences, and that the pod and service
//!    account the token is bound to still exist, and fills in `status`.
//! 4. The CA accepts only `status.authenticated: true`, a `status.audiences` list that contains
//!    its own audience, and the user `system:serviceaccount:<namespace>:<name>` whose namespace
//!    and name fit in a SPIFFE path segment. The result is a [`ServiceAccountIdentity`], which the
//!    CA turns into `spiffe://<trust domain>/ns/<namespace>/sa/<name>`.
//!
//! A missing or empty `status.audiences` is refused: the API reference says it means the token
//! is valid for the API server's own audience, which is exactly the token a workload must not be
//! able to replay to the CA (and what an authenticator that ignores `spec.audiences` answers).
//!
//! # Two different "no"s
//!
//! The API server can refuse two different tokens. `status.authenticated: false` (or a wrong
//! audience, or a user that is not a service account) is a verdict on the *caller's* token: the
//! caller is refused, which the gRPC layer reports as `UNAUTHENTICATED`. An HTTP 401 or 403 is a
//! verdict on the *CA's own* request: its token is stale, or its service account lacks the RBAC
//! permission `create` on `tokenreviews` in `authentication.k8s.io`. The caller's token was never
//! judged, so calling it unauthenticated would send operators chasing the wrong workload; the
//! error names the CA's problem and the missing permission instead, and is reported like an
//! outage. [`TokenReviewError::is_rejection`] draws that line.
//!
//! # Secrets
//!
//! Neither the caller's token nor the CA's own token is logged, printed by `Debug`, or put in an
//! error. The API server echoes `spec.token` back, so text taken from its answers is scrubbed of
//! both tokens and truncated before it reaches an error message.
//!
//! # Connections
//!
//! Each review opens its own connection. Attestation happens when a workload starts and when it
//! renews its certificate (hours apart), so a pool would save little and would add stale-connection
//! failures; one connection per review also keeps the whole exchange, TLS handshake included,
//! under one timeout.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    pin::pin,
    sync::Arc,
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The TokenReview collection, appended to any path prefix of the API server address.
const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// Where the kubelet mounts a pod's service-account credentials.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The username prefix Kubernetes gives every service account.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Responses larger than this are refused: a TokenReview answer is a few kilobytes.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Tokens larger than this are refused without asking the API server; real ones are ~1 KiB.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// How much of a text from the API server (error, body, username) goes into an error message.
const MAX_DETAIL_CHARS: usize = 256;

/// Tokens shorter than this are not scrubbed from messages: they are no real credential, and
/// replacing every occurrence of a two-letter string would garble the text.
const MIN_SCRUBBED_TOKEN_LEN: usize = 8;

const USER_AGENT: &str = concat!("hush-ca/", env!("CARGO_PKG_VERSION"));

/// Where and how to reach the Kubernetes API server for TokenReviews.
///
/// Build one with [`TokenReviewConfig::in_cluster`] inside a pod, or fill in the fields to reach
/// a cluster from outside. [`TokenReviewClient::new`] validates it.
#[derive(Clone)]
pub struct TokenReviewConfig {
    /// The API server's base URL, `https://host[:port][/path prefix]`, for example
    /// `https://10.96.0.1:443`. The host may be a DNS name or an IP address; the server's
    /// certificate must name it.
    pub api_server: String,
    /// PEM certificates of the roots that sign the API server's certificate.
    pub ca_bundle_pem: Vec<u8>,
    /// The file holding the CA's own service-account token. It is read again for every review,
    /// because the kubelet rotates it.
    pub bearer_token_file: PathBuf,
    /// The audience callers' tokens must be issued for, normally
    /// [`TokenReviewConfig::DEFAULT_AUDIENCE`].
    pub audience: String,
    /// The limit for a whole review: connecting, the TLS handshake, the request and the answer.
    pub timeout: Duration,
}

/// Calls the Kubernetes TokenReview API to find out which service account a token belongs to.
///
/// Cheap to clone; clones share one TLS configuration.
#[derive(Clone)]
pub struct TokenReviewClient {
    inner: Arc<Inner>,
}

/// A Kubernetes service account that a token was found to belong to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccountIdentity {
    /// The service account's namespace; only `[a-zA-Z0-9._-]`, never empty, `.` or `..`.
    pub namespace: String,
    /// The service account's name; only `[a-zA-Z0-9._-]`, never empty, `.` or `..`.
    pub name: String,
    /// The service account object's UID, when the API server reports one.
    pub uid: Option<String>,
}

/// Why a TokenReview did not produce a [`ServiceAccountIdentity`].
///
/// [`TokenReviewError::is_rejection`] tells a refused caller from a CA that could not get an
/// answer.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TokenReviewError {
    // Rejections: the caller's token was judged and refused.
    /// The caller presented an empty token.
    #[error("no service-account token was presented")]
    EmptyToken,

    /// The caller's token is too large to be a service-account token.
    #[error("the service-account token is {len} bytes long, over the {max}-byte limit")]
    TokenTooLong {
        /// The token's length in bytes.
        len: usize,
        /// The largest token forwarded to the API server.
        max: usize,
    },

    /// The API server judged the token invalid: expired, forged, bound to a deleted pod, or
    /// issued for another audience.
    #[error(
        "the Kubernetes API server did not accept the service-account token{}",
        colon_detail(.reason)
    )]
    NotAuthenticated {
        /// The API server's `status.error`, scrubbed and truncated, if it gave one.
        reason: Option<String>,
    },

    /// The token is valid but was issued for other audiences.
    #[error(
        "token is not meant for audience {expected} (it is meant for {})",
        .token_audiences.join(", ")
    )]
    WrongAudience {
        /// The audience this CA requires.
        expected: String,
        /// The audiences the API server says the token was issued for.
        token_audiences: Vec<String>,
    },

    /// The API server authenticated the token without confirming the CA's audience: by the
    /// Kubernetes API, no audiences means the token is valid for the API server itself.
    #[error(
        "the Kubernetes API server authenticated the token but did not confirm audience \
         {expected}: status.audiences came back {reported}, which means the token is valid only \
         for the API server's own audience; give the workload a projected service-account token \
         with audience {expected}"
    )]
    AudienceNotConfirmed {
        /// The audience this CA asked for in `spec.audiences`.
        expected: String,
        /// What came back instead: `missing` or `empty`.
        reported: &'static str,
    },

    /// The token belongs to a user, node or other identity that is not a service account.
    #[error(
        "token belongs to {username:?}, which is not a Kubernetes service account \
         (system:serviceaccount:<namespace>:<name>)"
    )]
    NotServiceAccount {
        /// The username the API server reported, truncated.
        username: String,
    },

    /// The service account's namespace or name cannot be written in a SPIFFE ID.
    #[error(
        "service account {username:?} cannot be named in a SPIFFE ID: its namespace and name \
         must be non-empty, not '.' or '..', and use only a-z, A-Z, 0-9, '.', '_' and '-'"
    )]
    InvalidServiceAccountName {
        /// The username the API server reported, truncated.
        username: String,
    },

    // The CA's own configuration and credentials.
    /// [`TokenReviewConfig::in_cluster`] was called outside a Kubernetes pod.
    #[error(
        "not running in a Kubernetes pod: environment variable {variable} is not set; \
         configure the API server address explicitly"
    )]
    NotInCluster {
        /// The missing environment variable.
        variable: &'static str,
    },

    /// A [`TokenReviewConfig`] field holds a value that cannot work.
    #[error("invalid TokenReview setting {field} = {value:?}: {reason}")]
    InvalidConfig {
        /// The field's name.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The API server's CA bundle could not be read.
    #[error("could not read the Kubernetes API server's CA bundle {}: {source}", .path.display())]
    ReadCaBundle {
        /// The file that was read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The API server's CA bundle holds no usable certificate.
    #[error(
        "the Kubernetes API server's CA bundle is unusable: {reason}; give the PEM roots that sign its certificate"
    )]
    InvalidCaBundle {
        /// What is wrong with it.
        reason: String,
    },

    /// The CA's own service-account token file could not be read.
    #[error(
        "could not read the CA's own service-account token {}: {source}; \
         check that the service-account token is mounted",
        .path.display()
    )]
    ReadOwnToken {
        /// The token file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The CA's own service-account token file holds something that cannot be sent.
    #[error("the CA's own service-account token {} {reason}", .path.display())]
    InvalidOwnToken {
        /// The token file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: &'static str,
    },

    /// HTTP 401: the API server did not accept the CA's own token. The caller was not judged.
    #[error(
        "the Kubernetes API server refused the CA's own credentials (HTTP 401: {detail}), so \
         the caller's token was not judged; check that {} holds the CA's current \
         service-account token and that this service account may `create` `tokenreviews` in \
         API group `authentication.k8s.io` (e.g. bind it to the ClusterRole \
         `system:auth-delegator`)",
        .token_file.display()
    )]
    OwnCredentialsRefused {
        /// The CA's token file.
        token_file: PathBuf,
        /// The API server's message, truncated.
        detail: String,
    },

    /// HTTP 403: the CA's service account lacks RBAC permission. The caller was not judged.
    #[error(
        "the CA's service account may not create TokenReviews (HTTP 403: {detail}), so the \
         caller's token was not judged; grant it `create` on `tokenreviews` in API group \
         `authentication.k8s.io`, e.g. with a ClusterRoleBinding to the ClusterRole \
         `system:auth-delegator`"
    )]
    Forbidden {
        /// The API server's message, truncated.
        detail: String,
    },

    // The API server could not be asked, or answered nonsense.
    /// No TCP connection to the API server could be made.
    #[error("could not connect to the Kubernetes API server {api_server}: {source}")]
    Connect {
        /// The configured API server URL.
        api_server: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The TLS handshake with the API server failed, for example because its certificate is
    /// not signed by the configured CA bundle or does not name the host.
    #[error(
        "TLS handshake with the Kubernetes API server {api_server} failed: {source}; check that \
         the CA bundle signs its certificate and that the certificate names the host"
    )]
    Tls {
        /// The configured API server URL.
        api_server: String,
        /// The handshake error (a rustls error inside an I/O error).
        #[source]
        source: io::Error,
    },

    /// The HTTP exchange with the API server broke off.
    #[error("HTTP exchange with the Kubernetes API server {api_server} failed: {source}")]
    Http {
        /// The configured API server URL.
        api_server: String,
        /// The hyper error.
        #[source]
        source: hyper::Error,
    },

    /// The review did not finish within [`TokenReviewConfig::timeout`].
    #[error(
        "the Kubernetes API server {api_server} did not complete the TokenReview within {timeout:?}"
    )]
    Timeout {
        /// The configured API server URL.
        api_server: String,
        /// The configured limit.
        timeout: Duration,
    },

    /// The API server answered with an HTTP status other than success, 401 or 403.
    #[error("the Kubernetes API server answered the TokenReview with HTTP {status}: {detail}")]
    UnexpectedStatus {
        /// The HTTP status.
        status: StatusCode,
        /// The API server's message or the start of the body, truncated.
        detail: String,
    },

    /// The API server's answer was larger than any TokenReview; it was not read.
    #[error("the Kubernetes API server's answer is larger than {limit} bytes; refusing to read it")]
    ResponseTooLarge {
        /// The size limit in bytes.
        limit: usize,
    },

    /// The API server answered with success but not with a usable TokenReview.
    #[error("the Kubernetes API server's answer is not a usable TokenReview: {reason}")]
    InvalidResponse {
        /// What is wrong with it, scrubbed of tokens.
        reason: String,
    },
}

// === impl TokenReviewConfig ===

impl TokenReviewConfig {
    /// The audience hush's sidecars request their projected tokens for.
    pub const DEFAULT_AUDIENCE: &'static str = "hush-ca";

    /// The default limit for a whole review.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// The configuration for a CA running in a pod: the API server at
    /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, trusted through
    /// `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`, called with the pod's token
    /// `/var/run/secrets/kubernetes.io/serviceaccount/token`, audience
    /// [`DEFAULT_AUDIENCE`](Self::DEFAULT_AUDIENCE) and timeout
    /// [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT).
    ///
    /// Reads the CA bundle now; the token is read at each review.
    pub fn in_cluster() -> Result<Self, TokenReviewError> {
        Self::in_cluster_from(
            std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            std::env::var("KUBERNETES_SERVICE_PORT").ok(),
            Path::new(SERVICE_ACCOUNT_DIR),
        )
    }

    fn in_cluster_from(
        host: Option<String>,
        port: Option<String>,
        dir: &Path,
    ) -> Result<Self, TokenReviewError> {
        let host = host
            .filter(|h| !h.is_empty())
            .ok_or(TokenReviewError::NotInCluster {
                variable: "KUBERNETES_SERVICE_HOST",
            })?;
        let port = port
            .filter(|p| !p.is_empty())
            .ok_or(TokenReviewError::NotInCluster {
                variable: "KUBERNETES_SERVICE_PORT",
            })?;
        // An IPv6 service address must be bracketed in a URL.
        let api_server = if host.contains(':') {
            format!("https://[{host}]:{port}")
        } else {
            format!("https://{host}:{port}")
        };
        let ca_path = dir.join("ca.crt");
        let ca_bundle_pem =
            std::fs::read(&ca_path).map_err(|source| TokenReviewError::ReadCaBundle {
                path: ca_path,
                source,
            })?;
        Ok(Self {
            api_server,
            ca_bundle_pem,
            bearer_token_file: dir.join("token"),
            audience: Self::DEFAULT_AUDIENCE.to_owned(),
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }
}

impl fmt::Debug for TokenReviewConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewConfig")
            .field("api_server", &self.api_server)
            .field(
                "ca_bundle_pem",
                &format_args!("<{} bytes>", self.ca_bundle_pem.len()),
            )
            .field("bearer_token_file", &self.bearer_token_file)
            .field("audience", &self.audience)
            .field("timeout", &self.timeout)
            .finish()
    }
}

// === impl TokenReviewClient ===

/// Everything a review needs, checked once by [`TokenReviewClient::new`].
struct Inner {
    /// The URL as configured, for messages.
    api_server: String,
    /// The host to connect to, without IPv6 brackets.
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    host_header: HeaderValue,
    path: Uri,
    tls: TlsConnector,
    token_file: PathBuf,
    audience: String,
    timeout: Duration,
}

impl TokenReviewClient {
    /// Checks `config` and prepares the TLS client. Does no I/O: the token file is read at each
    /// review.
    pub fn new(config: TokenReviewConfig) -> Result<Self, TokenReviewError> {
        let TokenReviewConfig {
            api_server,
            ca_bundle_pem,
            bearer_token_file,
            audience,
            timeout,
        } = config;
        if audience.is_empty() {
            return Err(invalid_config("audience", &audience, "must not be empty"));
        }
        if timeout.is_zero() {
            return Err(invalid_config(
                "timeout",
                &format!("{timeout:?}"),
                "must be more than zero",
            ));
        }
        let endpoint = Endpoint::parse(&api_server)?;
        let tls = tls_connector(&ca_bundle_pem)?;
        Ok(Self {
            inner: Arc::new(Inner {
                api_server,
                host: endpoint.host,
                port: endpoint.port,
                server_name: endpoint.server_name,
                host_header: endpoint.host_header,
                path: endpoint.path,
                tls,
                token_file: bearer_token_file,
                audience,
                timeout,
            }),
        })
    }

    /// Asks the API server whose service-account token `token` is.
    ///
    /// Sends `POST /apis/authentication.k8s.io/v1/tokenreviews` with `spec.token = token` and
    /// `spec.audiences = [audience]`, authenticated with the CA's own token, and accepts only an
    /// authenticated service account whose token `status.audiences` confirms was meant for the
    /// audience. An empty token is
    /// refused without asking.
    pub async fn review(&self, token: &str) -> Result<ServiceAccountIdentity, TokenReviewError> {
        if token.is_empty() {
            return Err(TokenReviewError::EmptyToken);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenReviewError::TokenTooLong {
                len: token.len(),
                max: MAX_TOKEN_BYTES,
            });
        }
        let inner = &*self.inner;
        let result = match tokio::time::timeout(inner.timeout, self.review_untimed(token)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(TokenReviewError::Timeout {
                api_server: inner.api_server.clone(),
                timeout: inner.timeout,
            }),
        };
        match &result {
            Ok(id) => tracing::debug!(
                namespace = %id.namespace,
                name = %id.name,
                "TokenReview authenticated a service account"
            ),
            Err(error) => tracing::debug!(
                %error,
                rejection = error.is_rejection(),
                "TokenReview did not authenticate a service account"
            ),
        }
        result
    }

    async fn review_untimed(
        &self,
        token: &str,
    ) -> Result<ServiceAccountIdentity, TokenReviewError> {
        let inner = &*self.inner;
        let own_token = read_own_token(&inner.token_file).await?;
        let secrets = Secrets {
            caller: token,
            own: &own_token,
        };
        let request = self.request(token, &own_token)?;
        let (status, body) = self.send(request).await?;

        if status == StatusCode::UNAUTHORIZED {
            return Err(TokenReviewError::OwnCredentialsRefused {
                token_file: inner.token_file.clone(),
                detail: body_detail(body.ok().as_deref(), &secrets),
            });
        }
        if status == StatusCode::FORBIDDEN {
            return Err(TokenReviewError::Forbidden {
                detail: body_detail(body.ok().as_deref(), &secrets),
            });
        }
        if !status.is_success() {
            return Err(TokenReviewError::UnexpectedStatus {
                status,
                detail: body_detail(body.ok().as_deref(), &secrets),
            });
        }

        let review: TokenReview =
            serde_json::from_slice(&body?).map_err(|e| TokenReviewError::InvalidResponse {
                reason: secrets.scrub(&e.to_string()),
            })?;
        let status = review
            .status
            .ok_or_else(|| TokenReviewError::InvalidResponse {
                reason: "it has no status".to_owned(),
            })?;
        judge(status, &inner.audience, &secrets)
    }

    fn request(
        &self,
        token: &str,
        own_token: &str,
    ) -> Result<Request<Full<Bytes>>, TokenReviewError> {
        let inner = &*self.inner;
        let mut authorization =
            HeaderValue::try_from(format!("Bearer {own_token}")).map_err(|_| {
                TokenReviewError::InvalidOwnToken {
                    path: inner.token_file.clone(),
                    reason: "holds characters that cannot be sent in an HTTP header",
                }
            })?;
        authorization.set_sensitive(true);

        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![inner.audience.clone()]),
            },
            ..TokenReview::default()
        };
        // A TokenReview holds only strings and string lists, which always encode.
        let body = serde_json::to_vec(&review).unwrap_or_default();

        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = inner.path.clone();
        let headers = request.headers_mut();
        headers.insert(header::HOST, inner.host_header.clone());
        headers.insert(header::AUTHORIZATION, authorization);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        Ok(request)
    }

    /// Connects, sends `request` and reads the answer. The body is returned separately so that
    /// an oversized error answer still reports its status.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Result<Bytes, TokenReviewError>), TokenReviewError> {
        let inner = &*self.inner;
        let http_error = |source| TokenReviewError::Http {
            api_server: inner.api_server.clone(),
            source,
        };

        let tcp = TcpStream::connect((inner.host.as_str(), inner.port))
            .await
            .map_err(|source| TokenReviewError::Connect {
                api_server: inner.api_server.clone(),
                source,
            })?;
        // Best effort: the request is one small write.
        let _ = tcp.set_nodelay(true);
        let tls = inner
            .tls
            .connect(inner.server_name.clone(), tcp)
            .await
            .map_err(|source| TokenReviewError::Tls {
                api_server: inner.api_server.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(http_error)?;

        let exchange = async {
            let response = sender.send_request(request).await.map_err(http_error)?;
            let (parts, body) = response.into_parts();
            let body = read_body(&parts.headers, body, http_error).await;
            Ok((parts.status, body))
        };

        // The connection is driven here rather than spawned, so that the review's timeout (or
        // the caller giving up) drops it too instead of leaving it to hang on a silent server.
        let mut connection = pin!(connection);
        let mut exchange = pin!(exchange);
        tokio::select! {
            result = &mut exchange => result,
            ended = &mut connection => {
                ended.map_err(http_error)?;
                exchange.await
            }
        }
    }
}

impl fmt::Debug for TokenReviewClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("TokenReviewClient")
            .field("api_server", &inner.api_server)
            .field("audience", &inner.audience)
            .field("bearer_token_file", &inner.token_file)
            .field("timeout", &inner.timeout)
            .finish_non_exhaustive()
    }
}

// === impl TokenReviewError ===

impl TokenReviewError {
    /// Whether the caller's token was judged and refused (report `UNAUTHENTICATED`).
    ///
    /// `false` means the API server could not be asked, refused the CA's own credentials, or
    /// answered something unusable: the caller is not at fault (report `UNAVAILABLE`, or
    /// `INTERNAL` for a broken configuration).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Self::EmptyToken
                | Self::TokenTooLong { .. }
                | Self::NotAuthenticated { .. }
                | Self::WrongAudience { .. }
                | Self::AudienceNotConfirmed { .. }
                | Self::NotServiceAccount { .. }
                | Self::InvalidServiceAccountName { .. }
        )
    }
}

// === The API server's address ===

/// The parts of [`TokenReviewConfig::api_server`] a review needs.
struct Endpoint {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    host_header: HeaderValue,
    path: Uri,
}

impl Endpoint {
    fn parse(api_server: &str) -> Result<Self, TokenReviewError> {
        let bad = |reason| invalid_config("api_server", api_server, reason);
        let uri: Uri = api_server
            .parse()
            .map_err(|_| bad("not a URL such as https://10.96.0.1:443"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("must start with https://"));
        }
        let authority = uri.authority().ok_or_else(|| bad("names no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not carry user information"));
        }
        if uri.query().is_some() {
            return Err(bad("must not carry a query"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| bad("host is neither a DNS name nor an IP address"))?;
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| bad("host cannot be sent in an HTTP header"))?;
        let prefix = uri.path().trim_end_matches('/');
        let path = format!("{prefix}{TOKEN_REVIEW_PATH}")
            .parse()
            .map_err(|_| bad("path prefix is not a valid URL path"))?;
        Ok(Self {
            host,
            port: authority.port_u16().unwrap_or(443),
            server_name,
            host_header,
            path,
        })
    }
}

// === Helpers ===

fn invalid_config(field: &'static str, value: &str, reason: &'static str) -> TokenReviewError {
    TokenReviewError::InvalidConfig {
        field,
        value: value.to_owned(),
        reason,
    }
}

fn tls_connector(ca_bundle_pem: &[u8]) -> Result<TlsConnector, TokenReviewError> {
    let certs = CertificateDer::pem_slice_iter(ca_bundle_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TokenReviewError::InvalidCaBundle {
            reason: format!("it is not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TokenReviewError::InvalidCaBundle {
            reason: "it holds no PEM CERTIFICATE block".to_owned(),
        });
    }
    // hush's TLS policy everywhere: aws-lc-rs, TLS 1.3 only. Kubernetes API servers (Go) speak
    // TLS 1.3 with X25519.
    let config = hush_tls::client_config_with_roots(&certs, None, &[b"http/1.1"]).map_err(|e| {
        TokenReviewError::InvalidCaBundle {
            reason: e.to_string(),
        }
    })?;
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn read_own_token(path: &Path) -> Result<String, TokenReviewError> {
    let text =
        tokio::fs::read_to_string(path)
            .await
            .map_err(|source| TokenReviewError::ReadOwnToken {
                path: path.to_owned(),
                source,
            })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenReviewError::InvalidOwnToken {
            path: path.to_owned(),
            reason: "is empty",
        });
    }
    Ok(token.to_owned())
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of `body`, refusing larger ones before reading them
/// when the length is announced.
async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    http_error: impl FnOnce(hyper::Error) -> TokenReviewError,
) -> Result<Bytes, TokenReviewError> {
    let too_large = TokenReviewError::ResponseTooLarge {
        limit: MAX_RESPONSE_BYTES,
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > MAX_RESPONSE_BYTES as u64) {
        return Err(too_large);
    }
    match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large),
        Err(error) => match error.downcast::<hyper::Error>() {
            Ok(error) => Err(http_error(*error)),
            Err(other) => Err(TokenReviewError::InvalidResponse {
                reason: format!("its body could not be read: {other}"),
            }),
        },
    }
}

/// Applies the CA's rules to the API server's verdict.
fn judge(
    status: TokenReviewStatus,
    audience: &str,
    secrets: &Secrets<'_>,
) -> Result<ServiceAccountIdentity, TokenReviewError> {
    if status.authenticated != Some(true) {
        return Err(TokenReviewError::NotAuthenticated {
            reason: status
                .error
                .filter(|e| !e.trim().is_empty())
                .map(|e| secrets.scrub(&e)),
        });
    }
    // A client that sets spec.audiences must see a compatible audience come back: none at all
    // means the token is valid for the API server's own audience (or the authenticator ignored
    // the request's audiences), never for the CA.
    let audiences = match status.audiences {
        None => return Err(audience_not_confirmed(audience, "missing")),
        Some(audiences) if audiences.is_empty() => {
            return Err(audience_not_confirmed(audience, "empty"));
        }
        Some(audiences) => audiences,
    };
    if !audiences.iter().any(|a| a == audience) {
        return Err(TokenReviewError::WrongAudience {
            expected: audience.to_owned(),
            token_audiences: audiences.iter().map(|a| secrets.scrub(a)).collect(),
        });
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.filter(|u| !u.is_empty()).ok_or_else(|| {
        TokenReviewError::InvalidResponse {
            reason: "it authenticates the token but names no user".to_owned(),
        }
    })?;
    let (namespace, name) = parse_service_account(&username)?;
    Ok(ServiceAccountIdentity {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: user.uid.filter(|uid| !uid.is_empty()),
    })
}

fn audience_not_confirmed(expected: &str, reported: &'static str) -> TokenReviewError {
    TokenReviewError::AudienceNotConfirmed {
        expected: expected.to_owned(),
        reported,
    }
}

/// Splits `system:serviceaccount:<namespace>:<name>`, refusing anything else.
fn parse_service_account(username: &str) -> Result<(&str, &str), TokenReviewError> {
    let Some(rest) = username.strip_prefix(SERVICE_ACCOUNT_PREFIX) else {
        return Err(TokenReviewError::NotServiceAccount {
            username: shorten(username),
        });
    };
    match rest.split_once(':') {
        Some((namespace, name)) if is_spiffe_segment(namespace) && is_spiffe_segment(name) => {
            Ok((namespace, name))
        }
        _ => Err(TokenReviewError::InvalidServiceAccountName {
            username: shorten(username),
        }),
    }
}

/// A SPIFFE ID path segment: non-empty, not `.` or `..`, only `[a-zA-Z0-9._-]`.
fn is_spiffe_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The API server's message from a non-success answer: a Kubernetes `Status` object's
/// `message`, or else the start of the body.
fn body_detail(body: Option<&[u8]>, secrets: &Secrets<'_>) -> String {
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return "no details".to_owned();
    };
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned));
    match message {
        Some(message) => secrets.scrub(&message),
        None => secrets.scrub(&String::from_utf8_lossy(body)),
    }
}

fn colon_detail(detail: &Option<String>) -> String {
    detail
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// The two tokens a review handles, to keep them out of messages built from the API server's
/// answers.
struct Secrets<'a> {
    caller: &'a str,
    own: &'a str,
}

impl Secrets<'_> {
    /// Makes text from the API server fit for an error message: both tokens replaced, then
    /// [`shorten`]ed. Replacing first means no cut-off prefix of a token can survive.
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in [self.caller, self.own] {
            if secret.len() >= MIN_SCRUBBED_TOKEN_LEN {
                text = text.replace(secret, "<redacted>");
            }
        }
        shorten(&text)
    }
}

/// Cuts `text` to [`MAX_DETAIL_CHARS`] and flattens control characters, so that one message
/// stays one log line.
fn shorten(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_DETAIL_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_DETAIL_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        pin::Pin,
        sync::Mutex,
        task::{Context, Poll},
    };

    use http::Response;
    use hush_test_support::{
        ApiBody, FakeApiServer, FakeApiServerBuilder, ReviewRequest, TestCa, TokenReviewContract,
        api_response, forbidden, json_response, status_failure, token_review,
    };
    use hyper::body::{Body, Frame, SizeHint};
    use serde_json::{Value, json};
    use tempfile::TempDir;
    use tokio::net::TcpListener;

    use super::*;

    const AUDIENCE: &str = "hush-ca";
    const CALLER_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImNhbGxlciJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDpmcm9udGVuZCJ9.Y2FsbGVyLXNpZ25hdHVyZQ";
    const OWN_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6Im93biJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6aHVzaDpodXNoLWNhIn0.b3duLXNpZ25hdHVyZQ";
    const SA_UID: &str = "5b1a7c8e-3f0d-4f5e-9a51-2c3b4d5e6f70";

    // === Answers from the fake API server ===

    /// The TokenReview echoed back with `status` filled in, as the API server answers a review
    /// it could judge.
    fn review_reply(request: &ReviewRequest, status: Value) -> Response<ApiBody> {
        json_response(201, &token_review(request, status))
    }

    fn service_account_status(namespace: &str, name: &str) -> Value {
        json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{namespace}:{name}"),
                "uid": SA_UID,
                "groups": [
                    "system:serviceaccounts",
                    format!("system:serviceaccounts:{namespace}"),
                    "system:authenticated",
                ],
                "extra": {
                    "authentication.kubernetes.io/credential-id": ["JTI=0d8c2a4e-58b1-4d0b-9d7e-3d1c2b3a4f5e"],
                    "authentication.kubernetes.io/node-name": ["worker-1"],
                    "authentication.kubernetes.io/pod-name": [format!("{name}-6d9f7c9b8-x2x4q")],
                    "authentication.kubernetes.io/pod-uid": ["0f6a1b2c-3d4e-5f60-7182-93a4b5c6d7e8"],
                },
            },
            "audiences": [AUDIENCE],
        })
    }

    // === Set-up ===

    struct Setup {
        server: FakeApiServer,
        client: TokenReviewClient,
        token_file: PathBuf,
        _dir: TempDir,
    }

    fn config(api_server: String, ca_pem: &str, token_file: PathBuf) -> TokenReviewConfig {
        TokenReviewConfig {
            api_server,
            ca_bundle_pem: ca_pem.as_bytes().to_vec(),
            bearer_token_file: token_file,
            audience: AUDIENCE.to_owned(),
            timeout: Duration::from_secs(10),
        }
    }

    fn own_token_file(dir: &TempDir) -> PathBuf {
        let path = dir.path().join("token");
        // The kubelet writes the token without a newline; tolerate one anyway.
        std::fs::write(&path, format!("{OWN_TOKEN}\n")).unwrap();
        path
    }

    /// A fake API server that checks every request as the real one would, with the CA's own
    /// token in `token_file`, and answers one that breaks the contract with HTTP 400.
    fn api_server(token_file: &Path) -> FakeApiServerBuilder {
        FakeApiServer::builder().contract(TokenReviewContract::new(AUDIENCE, token_file))
    }

    /// A client of a fake API server that answers each review with `respond`.
    fn setup(
        respond: impl Fn(&ReviewRequest) -> Response<ApiBody> + Send + Sync + 'static,
    ) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let token_file = own_token_file(&dir);
        let server = api_server(&token_file).start_http(respond);
        let client = TokenReviewClient::new(config(
            server.url().to_owned(),
            server.ca_pem(),
            token_file.clone(),
        ))
        .unwrap();
        Setup {
            server,
            client,
            token_file,
            _dir: dir,
        }
    }

    /// The root of a CA that has nothing to do with any API server: for clients that never reach
    /// one.
    fn unrelated_ca_pem() -> String {
        TestCa::new("cluster.local").root_pem()
    }

    fn assert_unavailable(error: &TokenReviewError) {
        assert!(!error.is_rejection(), "must not blame the caller: {error}");
        assert_no_secrets(error);
    }

    fn assert_no_secrets(error: &TokenReviewError) {
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(
                !shown.contains(CALLER_TOKEN),
                "caller token leaked: {shown}"
            );
            assert!(!shown.contains(OWN_TOKEN), "own token leaked: {shown}");
        }
    }

    // === Tests against the fake API server ===

    #[tokio::test]
    async fn authenticated_service_account_is_identified() {
        let s = setup(|request| {
            assert_eq!(request.token(), Some(CALLER_TOKEN));
            review_reply(request, service_account_status("shop", "frontend"))
        });

        let id = s.client.review(CALLER_TOKEN).await.unwrap();

        assert_eq!(
            id,
            ServiceAccountIdentity {
                namespace: "shop".to_owned(),
                name: "frontend".to_owned(),
                uid: Some(SA_UID.to_owned()),
            }
        );
        assert_eq!(s.server.requests().len(), 1);
        s.server.assert_requests_were_valid();
    }

    /// One row per rule the CA applies to `status`; the fake server answers each row's token
    /// with that row's status.
    #[tokio::test]
    async fn verdicts_follow_the_rules_for_status() {
        struct Row {
            name: &'static str,
            status: Value,
            want: Result<(&'static str, &'static str, Option<&'static str>), &'static str>,
            rejection: bool,
        }
        let with = |mut status: Value, key: &str, value: Value| {
            match value {
                Value::Null => status.as_object_mut().unwrap().remove(key),
                value => status
                    .as_object_mut()
                    .unwrap()
                    .insert(key.to_owned(), value),
            };
            status
        };
        let sa = || service_account_status("shop", "frontend");
        let user = |username: &str| {
            json!({
                "authenticated": true,
                "user": { "username": username, "groups": ["system:authenticated"] },
                "audiences": [AUDIENCE],
            })
        };
        let rows = vec![
            Row {
                name: "service account",
                status: sa(),
                want: Ok(("shop", "frontend", Some(SA_UID))),
                rejection: false,
            },
            Row {
                // An authenticator that ignores spec.audiences answers like this.
                name: "no audiences reported",
                status: with(sa(), "audiences", Value::Null),
                want: Err(
                    "did not confirm audience hush-ca: status.audiences came back missing, \
                     which means the token is valid only for the API server's own audience",
                ),
                rejection: true,
            },
            Row {
                name: "empty audiences",
                status: with(sa(), "audiences", json!([])),
                want: Err("did not confirm audience hush-ca: status.audiences came back empty"),
                rejection: true,
            },
            Row {
                name: "audience among several",
                status: with(sa(), "audiences", json!(["vault", AUDIENCE])),
                want: Ok(("shop", "frontend", Some(SA_UID))),
                rejection: false,
            },
            Row {
                name: "no uid",
                status: json!({
                    "authenticated": true,
                    "user": { "username": "system:serviceaccount:a.b_c-1:x" },
                    "audiences": [AUDIENCE],
                }),
                want: Ok(("a.b_c-1", "x", None)),
                rejection: false,
            },
            Row {
                // The API server omits `authenticated: false` (Go's omitempty).
                name: "unauthenticated with error",
                status: json!({
                    "user": {},
                    "error": "[invalid bearer token, service account token has expired]",
                }),
                want: Err(
                    "the Kubernetes API server did not accept the service-account token: \
                     [invalid bearer token, service account token has expired]",
                ),
                rejection: true,
            },
            Row {
                name: "unauthenticated without error",
                status: json!({ "authenticated": false, "user": {} }),
                want: Err("the Kubernetes API server did not accept the service-account token"),
                rejection: true,
            },
            Row {
                name: "wrong audience",
                status: with(sa(), "audiences", json!(["https://kubernetes.default.svc"])),
                want: Err("token is not meant for audience hush-ca \
                     (it is meant for https://kubernetes.default.svc)"),
                rejection: true,
            },
            Row {
                name: "a person",
                status: user("alice"),
                want: Err("token belongs to \"alice\", which is not a Kubernetes service account"),
                rejection: true,
            },
            Row {
                name: "a node",
                status: user("system:node:worker-1"),
                want: Err("token belongs to \"system:node:worker-1\""),
                rejection: true,
            },
            Row {
                name: "service account name unfit for SPIFFE",
                status: user("system:serviceaccount:shop:front%2Fend"),
                want: Err(
                    "service account \"system:serviceaccount:shop:front%2Fend\" cannot be named in a SPIFFE ID",
                ),
                rejection: true,
            },
            Row {
                name: "authenticated but no user",
                status: json!({ "authenticated": true, "audiences": [AUDIENCE] }),
                want: Err("not a usable TokenReview: it authenticates the token but names no user"),
                rejection: false,
            },
        ];
        let statuses: Vec<(String, Value)> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| (format!("{CALLER_TOKEN}-{i}"), row.status.clone()))
            .collect();
        let s = setup(move |request| {
            let token = request.token().unwrap_or_default();
            let (_, status) = statuses.iter().find(|(t, _)| t == token).unwrap();
            review_reply(request, status.clone())
        });

        for (i, row) in rows.iter().enumerate() {
            let result = s.client.review(&format!("{CALLER_TOKEN}-{i}")).await;
            match (&row.want, result) {
                (Ok((namespace, name, uid)), Ok(id)) => {
                    assert_eq!(
                        (id.namespace.as_str(), id.name.as_str(), id.uid.as_deref()),
                        (*namespace, *name, *uid),
                        "{}",
                        row.name
                    );
                }
                (Err(message), Err(error)) => {
                    assert!(error.to_string().contains(message), "{}: {error}", row.name);
                    assert_eq!(error.is_rejection(), row.rejection, "{}: {error}", row.name);
                    assert_no_secrets(&error);
                }
                (want, got) => panic!("{}: want {want:?}, got {got:?}", row.name),
            }
        }
        assert_eq!(s.server.requests().len(), rows.len());
        s.server.assert_requests_were_valid();
    }

    #[tokio::test]
    async fn forbidden_blames_the_cas_rbac_not_the_caller() {
        let s =
            setup(|_| json_response(403, &forbidden("system:serviceaccount:hush-system:hush-ca")));

        let error = s.client.review(CALLER_TOKEN).await.unwrap_err();

        assert!(
            matches!(error, TokenReviewError::Forbidden { .. }),
            "{error:?}"
        );
        assert_unavailable(&error);
        let message = error.to_string();
        for needed in [
            "HTTP 403: tokenreviews.authentication.k8s.io is forbidden",
            "caller's token was not judged",
            "grant it `create` on `tokenreviews` in API group `authentication.k8s.io`",
            "system:auth-delegator",
        ] {
            assert!(message.contains(needed), "{needed}: {message}");
        }
        s.server.assert_requests_were_valid();
    }

    #[tokio::test]
    async fn unauthorized_blames_the_cas_own_token_not_the_caller() {
        let s = setup(|_| json_response(401, &status_failure(401, "Unauthorized")));

        let error = s.client.review(CALLER_TOKEN).await.unwrap_err();

        assert!(
            matches!(error, TokenReviewError::OwnCredentialsRefused { .. }),
            "{error:?}"
        );
        assert_unavailable(&error);
        let message = error.to_string();
        assert!(message.contains("HTTP 401: Unauthorized"), "{message}");
        assert!(
            message.contains(&s.token_file.display().to_string()),
            "{message}"
        );
        assert!(message.contains("tokenreviews"), "{message}");
    }

    #[tokio::test]
    async fn other_error_status_reports_a_truncated_body() {
        let s = setup(|_| {
            api_response(
                502,
                "text/html",
                format!("<html>{}</html>", "x".repeat(10_000)),
            )
        });

        let error = s.client.review(CALLER_TOKEN).await.unwrap_err();

        assert!(
            matches!(
                error,
                TokenReviewError::UnexpectedStatus {
                    status: StatusCode::BAD_GATEWAY,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_unavailable(&error);
        let message = error.to_string();
        assert!(
            message.contains("HTTP 502 Bad Gateway: <html>xxx"),
            "{message}"
        );
        assert!(message.ends_with('…'), "{message}");
        assert!(message.chars().count() < 400, "{message}");
    }

    #[tokio::test]
    async fn garbage_answers_are_not_rejections() {
        let answers = [
            (StatusCode::OK, "<html>hello</html>"),
            (StatusCode::OK, "{\"kind\": \"TokenReview\", \"status\": {"),
            (
                StatusCode::OK,
                "{\"kind\": \"Status\", \"apiVersion\": \"v1\"}",
            ),
            (
                StatusCode::CREATED,
                "{\"kind\": \"TokenReview\", \"spec\": {}}",
            ),
            (
                StatusCode::CREATED,
                "{\"status\": {\"authenticated\": \"yes\"}}",
            ),
            (StatusCode::CREATED, ""),
        ];
        // Each review's token ends in the index of the answer it gets.
        let s = setup(move |request| {
            let token = request.token().unwrap_or_default();
            let i: usize = token.rsplit('-').next().unwrap().parse().unwrap();
            api_response(answers[i].0.as_u16(), "application/json", answers[i].1)
        });

        for i in 0..answers.len() {
            let error = s
                .client
                .review(&format!("{CALLER_TOKEN}-{i}"))
                .await
                .unwrap_err();
            assert!(
                matches!(error, TokenReviewError::InvalidResponse { .. }),
                "answer {i}: {error:?}"
            );
            assert_unavailable(&error);
        }
        s.server.assert_requests_were_valid();
    }

    /// A response body that never ends and announces no length (sent chunked).
    struct Endless;

    impl Body for Endless {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; 64 * 1024])))))
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::default()
        }
    }

    #[tokio::test]
    async fn oversized_answers_are_refused() {
        let calls = Mutex::new(0);
        let s = setup(move |_| {
            let mut calls = calls.lock().unwrap();
            *calls += 1;
            if *calls == 1 {
                // Announced by Content-Length.
                api_response(201, "application/json", vec![b' '; MAX_RESPONSE_BYTES + 1])
            } else {
                Response::new(Endless.boxed())
            }
        });

        for _ in 0..2 {
            let error = s.client.review(CALLER_TOKEN).await.unwrap_err();
            assert!(
                matches!(
                    error,
                    TokenReviewError::ResponseTooLarge {
                        limit: MAX_RESPONSE_BYTES
                    }
                ),
                "{error:?}"
            );
            assert_unavailable(&error);
        }
    }

    #[tokio::test]
    async fn own_token_is_read_again_for_each_review() {
        let s = setup(|request| review_reply(request, service_account_status("shop", "frontend")));
        s.client.review(CALLER_TOKEN).await.unwrap();

        // The kubelet rotates the projected token by replacing the file.
        let rotated = OWN_TOKEN.replace("b3duLXNpZ25hdHVyZQ", "cm90YXRlZA");
        std::fs::write(&s.token_file, &rotated).unwrap();
        s.client.review(CALLER_TOKEN).await.unwrap();

        let authorizations: Vec<_> = s
            .server
            .requests()
            .into_iter()
            .map(|request| request.authorization)
            .collect();
        assert_eq!(
            authorizations,
            [
                Some(format!("Bearer {OWN_TOKEN}")),
                Some(format!("Bearer {rotated}"))
            ]
        );
        s.server.assert_requests_were_valid();
    }

    #[tokio::test]
    async fn empty_or_huge_token_is_rejected_without_asking() {
        let s = setup(|request| review_reply(request, service_account_status("shop", "frontend")));

        let error = s.client.review("").await.unwrap_err();
        assert!(matches!(error, TokenReviewError::EmptyToken), "{error:?}");
        assert!(error.is_rejection());

        let error = s
            .client
            .review(&"x".repeat(MAX_TOKEN_BYTES + 1))
            .await
            .unwrap_err();
        assert!(
            matches!(error, TokenReviewError::TokenTooLong { .. }),
            "{error:?}"
        );
        assert!(error.is_rejection());

        assert_eq!(s.server.requests().len(), 0);
    }

    #[tokio::test]
    async fn tokens_never_appear_in_errors_or_debug() {
        let s = setup(|request| {
            // A misbehaving server (or proxy) that echoes both tokens into its messages.
            let token = request.token().unwrap_or_default();
            let both = format!("token {token} rejected; sent by Bearer {OWN_TOKEN}");
            if token.ends_with("-status") {
                json_response(500, &status_failure(500, &both))
            } else {
                review_reply(request, json!({ "authenticated": false, "error": both }))
            }
        });

        let caller = CALLER_TOKEN.to_owned();
        let error = s.client.review(&caller).await.unwrap_err();
        assert!(error.is_rejection());
        assert!(
            error
                .to_string()
                .contains("token <redacted> rejected; sent by Bearer <redacted>"),
            "{error}"
        );
        assert_no_secrets(&error);

        let error = s
            .client
            .review(&format!("{caller}-status"))
            .await
            .unwrap_err();
        assert!(!error.is_rejection());
        assert!(error.to_string().contains("<redacted>"), "{error}");
        let shown = format!("{error} {error:?}");
        assert!(
            !shown.contains(CALLER_TOKEN) && !shown.contains(OWN_TOKEN),
            "{shown}"
        );

        let debug = format!("{:?}", s.client);
        assert!(!debug.contains(OWN_TOKEN), "{debug}");
        assert!(debug.contains("bearer_token_file"), "{debug}");
    }

    #[tokio::test]
    async fn missing_or_empty_own_token_is_the_cas_problem() {
        let s = setup(|request| review_reply(request, service_account_status("shop", "frontend")));

        std::fs::write(&s.token_file, "\n").unwrap();
        let error = s.client.review(CALLER_TOKEN).await.unwrap_err();
        assert!(
            matches!(error, TokenReviewError::InvalidOwnToken { .. }),
            "{error:?}"
        );
        assert_unavailable(&error);

        std::fs::remove_file(&s.token_file).unwrap();
        let error = s.client.review(CALLER_TOKEN).await.unwrap_err();
        assert!(
            matches!(error, TokenReviewError::ReadOwnToken { .. }),
            "{error:?}"
        );
        assert_unavailable(&error);

        assert_eq!(s.server.requests().len(), 0);
    }

    // === Tests without a working API server ===

    #[tokio::test]
    async fn unreachable_api_server_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let client = TokenReviewClient::new(config(
            format!("https://{closed}"),
            &unrelated_ca_pem(),
            own_token_file(&dir),
        ))
        .unwrap();

        let error = client.review(CALLER_TOKEN).await.unwrap_err();

        assert!(
            matches!(error, TokenReviewError::Connect { .. }),
            "{error:?}"
        );
        assert_unavailable(&error);
        assert!(error.to_string().contains(&closed.to_string()), "{error}");
    }

    #[tokio::test]
    async fn certificate_from_another_ca_fails_the_handshake() {
        // The server's certificate comes from its own CA; the client trusts another one.
        let dir = tempfile::tempdir().unwrap();
        let token_file = own_token_file(&dir);
        let server = api_server(&token_file).start_http(|request| {
            review_reply(request, service_account_status("shop", "frontend"))
        });
        let client = TokenReviewClient::new(config(
            server.url().to_owned(),
            &unrelated_ca_pem(),
            token_file,
        ))
        .unwrap();

        let error = client.review(CALLER_TOKEN).await.unwrap_err();

        assert!(matches!(error, TokenReviewError::Tls { .. }), "{error:?}");
        assert_unavailable(&error);
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
        assert_eq!(server.requests().len(), 0);
    }

    #[tokio::test]
    async fn certificate_for_another_host_fails_the_handshake() {
        // Signed by the trusted CA, but naming only the in-cluster DNS name, not 127.0.0.1.
        let dir = tempfile::tempdir().unwrap();
        let token_file = own_token_file(&dir);
        let server = api_server(&token_file)
            .server_names(&["kubernetes.default.svc"])
            .start_http(|request| {
                review_reply(request, service_account_status("shop", "frontend"))
            });
        let client =
            TokenReviewClient::new(config(server.url().to_owned(), server.ca_pem(), token_file))
                .unwrap();

        let error = client.review(CALLER_TOKEN).await.unwrap_err();

        assert!(matches!(error, TokenReviewError::Tls { .. }), "{error:?}");
        assert_unavailable(&error);
        assert!(
            error
                .to_string()
                .contains("not valid for name \"127.0.0.1\""),
            "{error}"
        );
        assert_eq!(server.requests().len(), 0);
    }

    #[tokio::test]
    async fn silent_api_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accept connections and never answer.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let mut config = config(
            format!("https://{addr}"),
            &unrelated_ca_pem(),
            own_token_file(&dir),
        );
        config.timeout = Duration::from_millis(200);
        let client = TokenReviewClient::new(config).unwrap();

        let error = client.review(CALLER_TOKEN).await.unwrap_err();

        assert!(
            matches!(error, TokenReviewError::Timeout { .. }),
            "{error:?}"
        );
        assert_unavailable(&error);
        assert!(error.to_string().contains("within 200ms"), "{error}");
        silent.abort();
    }

    #[test]
    fn client_and_errors_work_across_tasks() {
        fn send_sync<T: Send + Sync + 'static>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<TokenReviewClient>();
        send_sync::<TokenReviewError>();
        let client = TokenReviewClient::new(config(
            "https://10.96.0.1".to_owned(),
            &unrelated_ca_pem(),
            "/t".into(),
        ))
        .unwrap();
        send(&client.review("token"));
    }

    // === Configuration ===

    #[test]
    fn configuration_errors_name_the_field() {
        let ca_pem = unrelated_ca_pem();
        let good = || config("https://10.96.0.1:443".to_owned(), &ca_pem, "/t".into());
        let cases: Vec<(&str, TokenReviewConfig, &str)> = vec![
            (
                "http",
                TokenReviewConfig {
                    api_server: "http://10.96.0.1".into(),
                    ..good()
                },
                "api_server",
            ),
            (
                "no scheme",
                TokenReviewConfig {
                    api_server: "10.96.0.1:443".into(),
                    ..good()
                },
                "api_server",
            ),
            (
                "not a URL",
                TokenReviewConfig {
                    api_server: "https://exa mple".into(),
                    ..good()
                },
                "api_server",
            ),
            (
                "user info",
                TokenReviewConfig {
                    api_server: "https://u:p@10.96.0.1".into(),
                    ..good()
                },
                "api_server",
            ),
            (
                "query",
                TokenReviewConfig {
                    api_server: "https://10.96.0.1/?a=b".into(),
                    ..good()
                },
                "api_server",
            ),
            (
                "empty audience",
                TokenReviewConfig {
                    audience: String::new(),
                    ..good()
                },
                "audience",
            ),
            (
                "zero timeout",
                TokenReviewConfig {
                    timeout: Duration::ZERO,
                    ..good()
                },
                "timeout",
            ),
        ];
        for (name, config, field) in cases {
            let error = TokenReviewClient::new(config).unwrap_err();
            assert!(
                matches!(&error, TokenReviewError::InvalidConfig { field: f, .. } if *f == field),
                "{name}: {error:?}"
            );
            assert!(error.to_string().contains(field), "{name}: {error}");
        }

        for (name, pem) in [
            ("empty", String::new()),
            ("not PEM", "hello".to_owned()),
            (
                "a key, not a certificate",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_owned(),
            ),
            (
                "broken certificate",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
            ),
        ] {
            let error = TokenReviewClient::new(TokenReviewConfig {
                ca_bundle_pem: pem.into_bytes(),
                ..good()
            })
            .unwrap_err();
            assert!(
                matches!(error, TokenReviewError::InvalidCaBundle { .. }),
                "{name}: {error:?}"
            );
        }
    }

    #[test]
    fn api_server_addresses_are_understood() {
        let cases = [
            (
                "https://10.96.0.1:443",
                "10.96.0.1",
                443,
                "10.96.0.1:443",
                TOKEN_REVIEW_PATH.to_owned(),
            ),
            (
                "https://kubernetes.default.svc",
                "kubernetes.default.svc",
                443,
                "kubernetes.default.svc",
                TOKEN_REVIEW_PATH.to_owned(),
            ),
            (
                "https://[fd00::1]:6443/",
                "fd00::1",
                6443,
                "[fd00::1]:6443",
                TOKEN_REVIEW_PATH.to_owned(),
            ),
            (
                "https://rancher.example/k8s/clusters/c-1/",
                "rancher.example",
                443,
                "rancher.example",
                format!("/k8s/clusters/c-1{TOKEN_REVIEW_PATH}"),
            ),
        ];
        for (url, host, port, host_header, path) in cases {
            let endpoint = Endpoint::parse(url).unwrap();
            assert_eq!(endpoint.host, host, "{url}");
            assert_eq!(endpoint.port, port, "{url}");
            assert_eq!(endpoint.host_header, host_header, "{url}");
            assert_eq!(endpoint.path, path.as_str(), "{url}");
        }
        assert!(matches!(
            Endpoint::parse("https://[fd00::1]:6443")
                .unwrap()
                .server_name,
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            Endpoint::parse("https://kubernetes.default.svc")
                .unwrap()
                .server_name,
            ServerName::DnsName(_)
        ));
    }

    #[test]
    fn in_cluster_uses_the_service_environment_and_mounted_files() {
        let ca_pem = unrelated_ca_pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca_pem).unwrap();
        let env = |v: &str| Some(v.to_owned());

        let config =
            TokenReviewConfig::in_cluster_from(env("10.96.0.1"), env("443"), dir.path()).unwrap();
        assert_eq!(config.api_server, "https://10.96.0.1:443");
        assert_eq!(config.ca_bundle_pem, ca_pem.as_bytes());
        assert_eq!(config.bearer_token_file, dir.path().join("token"));
        assert_eq!(config.audience, "hush-ca");
        assert_eq!(config.timeout, Duration::from_secs(5));
        TokenReviewClient::new(config).unwrap();

        let config =
            TokenReviewConfig::in_cluster_from(env("fd00::1"), env("443"), dir.path()).unwrap();
        assert_eq!(config.api_server, "https://[fd00::1]:443");
        assert!(!format!("{config:?}").contains("BEGIN CERTIFICATE"));

        let error = TokenReviewConfig::in_cluster_from(None, env("443"), dir.path()).unwrap_err();
        assert!(
            matches!(
                error,
                TokenReviewError::NotInCluster {
                    variable: "KUBERNETES_SERVICE_HOST"
                }
            ),
            "{error:?}"
        );
        let error =
            TokenReviewConfig::in_cluster_from(env("10.96.0.1"), env(""), dir.path()).unwrap_err();
        assert!(
            matches!(
                error,
                TokenReviewError::NotInCluster {
                    variable: "KUBERNETES_SERVICE_PORT"
                }
            ),
            "{error:?}"
        );
        let error = TokenReviewConfig::in_cluster_from(
            env("10.96.0.1"),
            env("443"),
            &dir.path().join("missing"),
        )
        .unwrap_err();
        assert!(
            matches!(error, TokenReviewError::ReadCaBundle { .. }),
            "{error:?}"
        );
    }

    // === Pure rules ===

    #[test]
    fn usernames_map_to_service_accounts() {
        let accepted = [
            ("system:serviceaccount:shop:frontend", "shop", "frontend"),
            (
                "system:serviceaccount:kube-system:coredns",
                "kube-system",
                "coredns",
            ),
            ("system:serviceaccount:a.b:c_d-e.1", "a.b", "c_d-e.1"),
        ];
        for (username, namespace, name) in accepted {
            assert_eq!(
                parse_service_account(username).ok(),
                Some((namespace, name)),
                "{username}"
            );
        }

        let not_service_accounts = [
            "alice",
            "system:node:worker-1",
            "system:anonymous",
            "system:serviceaccounts:shop",
            "System:ServiceAccount:shop:frontend",
            "",
        ];
        for username in not_service_accounts {
            let error = parse_service_account(username).unwrap_err();
            assert!(
                matches!(error, TokenReviewError::NotServiceAccount { .. }),
                "{username}: {error:?}"
            );
        }

        let unfit_names = [
            "system:serviceaccount:shop",
            "system:serviceaccount::frontend",
            "system:serviceaccount:shop:",
            "system:serviceaccount:shop:front:end",
            "system:serviceaccount:shop:front/end",
            "system:serviceaccount:shop:front end",
            "system:serviceaccount:shop:..",
            "system:serviceaccount:.:frontend",
            "system:serviceaccount:shöp:frontend",
        ];
        for username in unfit_names {
            let error = parse_service_account(username).unwrap_err();
            assert!(
                matches!(error, TokenReviewError::InvalidServiceAccountName { .. }),
                "{username}: {error:?}"
            );
            assert!(error.is_rejection());
        }
    }

    #[test]
    fn scrubbing_hides_tokens_and_bounds_length() {
        let secrets = Secrets {
            caller: CALLER_TOKEN,
            own: OWN_TOKEN,
        };
        assert_eq!(
            secrets.scrub(&format!("a {CALLER_TOKEN} b\n{OWN_TOKEN}")),
            "a <redacted> b <redacted>"
        );
        // The token is removed before cutting, so no prefix of it survives at the edge.
        let long = format!("{}{CALLER_TOKEN}", "x".repeat(MAX_DETAIL_CHARS - 5));
        assert!(!secrets.scrub(&long).contains(&CALLER_TOKEN[..5]));
        assert_eq!(
            secrets.scrub(&"é".repeat(1000)).chars().count(),
            MAX_DETAIL_CHARS + 1
        );
        // Too short to be a credential: left alone rather than garbling the text.
        let short = Secrets {
            caller: "a",
            own: OWN_TOKEN,
        };
        assert_eq!(short.scrub("a cat"), "a cat");
    }
}
