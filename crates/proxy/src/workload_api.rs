//! The SPIFFE Workload API, served to the app on a Unix socket (`workload_api.socket`).
//!
//! One pod, one identity: the sidecar hands its app the X.509-SVID the identity manager keeps
//! for it (the sidecar's SPIFFE ID with a key of its own, never the sidecar's key), the trust
//! bundles, and JWT-SVIDs. The five RPCs of `SpiffeWorkloadAPI` are served wire-exact, so any
//! SPIFFE client library works unchanged:
//!
//! * `FetchX509SVID` — a stream: the SVID, its key and the bundle at once (after the first SVID
//!   is issued), then again on every rotation and every change of the bundles.
//! * `FetchX509Bundles` — a stream of the X.509 roots of the trust domain (and of federated
//!   ones), at once and on every change.
//! * `FetchJWTBundles` — a stream of the JWT keys (JWK Sets) by trust domain, once the CA sent
//!   any.
//! * `FetchJWTSVID`, `ValidateJWTSVID` — a JWT-SVID for the audiences asked, minted by the CA;
//!   validation of one, locally, against the JWT keys.
//!
//! Every request must carry the `workload.spiffe.io: true` metadata (what the SPIFFE spec asks
//! of clients, so that a browser or a confused proxy cannot call the API); one without it gets
//! `InvalidArgument`. What an app can hold is bounded: connections and streams are capped, and
//! requests are small.

pub(crate) mod authority;

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use hush_proto::spiffe::workload as pb;
use hush_proto::spiffe::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, UdsConnectInfo};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use self::authority::AuthorityRewriter;
use crate::identity::{AppSvid, CaCertifier, CaError, MintedJwt, WorkloadBundles, WorkloadFeed};
use hush_identity::{JwtKeys, TrustDomain, validate_jwt_svid};
use std::collections::HashMap;
use std::future::Future;

/// The metadata every Workload API request must carry, with the value `true`.
pub(crate) const SECURITY_HEADER: &str = "workload.spiffe.io";
/// Connections to the socket open at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Streams open at once, over every connection: each holds a little memory until it is
/// closed, and an app needs a few.
pub(crate) const MAX_STREAMS: usize = 128;
/// Requests open at once on one connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// The largest request: every request message is a few audiences or one token.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The mode the socket is made: anyone who can reach it may connect; who can reach it is up
/// to the directory it is in (an emptyDir shared only with the pod's containers).
const SOCKET_MODE: u32 = 0o666;

/// The Workload API could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkloadApiError {
    /// The path holds something that is not a socket: it is not the sidecar's to remove.
    #[error("workload_api.socket {0} exists and is not a socket; remove it or choose another path")]
    NotASocket(PathBuf),
    /// The socket could not be made.
    #[error("cannot serve the Workload API on {path} ({step}): {source}")]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// The bound socket. Removed when dropped, if it is still the one bound here.
#[derive(Debug)]
pub(crate) struct WorkloadSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file bound, so that only that one is removed.
    identity: (u64, u64),
}

// === impl WorkloadSocket ===

impl WorkloadSocket {
    /// Binds the socket at `path`: its directory is made when missing, a socket left there by
    /// an earlier run is replaced (anything else is refused), and the socket is made mode 0666.
    pub(crate) fn bind(path: &Path) -> Result<Self, WorkloadApiError> {
        let io = |step: &'static str| {
            move |source| WorkloadApiError::Io {
                path: path.to_path_buf(),
                step,
                source,
            }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.exists()
        {
            // A directory the sidecar makes is its user's alone: the socket's mode lets anyone
            // connect, so what guards it is the directory (on Kubernetes, an emptyDir shared
            // with the pod's containers only, made by the kubelet).
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io("creating its directory"))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(io("removing a stale socket"))?;
            }
            Ok(_) => return Err(WorkloadApiError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("reading what is at the path")(e)),
        }
        let listener = UnixListener::bind(path).map_err(io("binding"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io("setting its mode"))?;
        let meta = std::fs::symlink_metadata(path).map_err(io("reading the socket"))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkloadSocket {
    fn drop(&mut self) {
        // Another sidecar may have replaced it since (a restart sharing the directory): only
        // the file bound here is removed.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The Workload API service: what the identity manager publishes, handed out.
#[derive(Clone)]
pub(crate) struct WorkloadApi {
    svid: watch::Receiver<Option<Arc<AppSvid>>>,
    bundles: watch::Receiver<Arc<WorkloadBundles>>,
    /// One permit per open stream.
    streams: Arc<Semaphore>,
    /// Cancelled at shutdown: streams end, so that connections can close.
    stop: CancellationToken,
    /// Who mints JWT-SVIDs; without one, `FetchJWTSVID` is `Unimplemented`.
    minter: Option<Arc<dyn JwtMinter>>,
    /// JWT-SVIDs minted, reused until half their life.
    jwts: Arc<JwtCache>,
    /// One permit per call to the CA for a JWT-SVID in progress.
    mints: Arc<Semaphore>,
}

// === impl WorkloadApi ===

impl WorkloadApi {
    /// The API handing out what `feed` carries, until `stop`.
    pub(crate) fn new(feed: &WorkloadFeed, stop: CancellationToken) -> Self {
        Self {
            svid: feed.svid.subscribe(),
            bundles: feed.bundles.subscribe(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            stop,
            minter: None,
            jwts: Arc::default(),
            mints: Arc::new(Semaphore::new(MAX_MINTS)),
        }
    }

    /// JWT-SVIDs are minted by `minter`.
    pub(crate) fn with_jwt_minter(mut self, minter: Arc<dyn JwtMinter>) -> Self {
        self.minter = Some(minter);
        self
    }

    /// Serves on `socket` until `stop` is cancelled, then removes the socket.
    pub(crate) async fn serve(self, socket: WorkloadSocket) {
        let stop = self.stop.clone();
        let path = socket.path().to_path_buf();
        info!(socket = %path.display(), "serving the SPIFFE Workload API");
        let server = SpiffeWorkloadApiServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(4 * 1024 * 1024);
        let service = tonic::service::interceptor::InterceptedService::new(server, check_header);
        let incoming = incoming(socket, stop.clone());
        let served = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            warn!(socket = %path.display(), error = %e, "the Workload API server stopped");
        }
    }

    /// A permit for one more stream, or `ResourceExhausted` when the app holds too many.
    fn stream_permit(&self, rpc: &str) -> Result<OwnedSemaphorePermit, Status> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            debug!(rpc, "refused a Workload API stream: too many open");
            Status::resource_exhausted(format!(
                "too many Workload API streams open at once (the most is {MAX_STREAMS}); close \
                 some"
            ))
        })
    }

    /// A stream of what `make` makes of the SVID and bundles: at once when it makes something,
    /// then again after every change; it ends at shutdown.
    fn watch_stream<T, F>(&self, permit: OwnedSemaphorePermit, make: F) -> ResponseStream<T>
    where
        T: Send + 'static,
        F: Fn(Option<&AppSvid>, &WorkloadBundles) -> Option<T> + Send + 'static,
    {
        let state = WatchState {
            svid: self.svid.clone(),
            bundles: self.bundles.clone(),
            stop: self.stop.clone(),
            first: true,
            _permit: permit,
        };
        Box::pin(futures_util::stream::unfold(
            (state, make),
            |(mut state, make)| async move {
                loop {
                    if !std::mem::take(&mut state.first) {
                        tokio::select! {
                            changed = state.svid.changed() => changed.ok()?,
                            changed = state.bundles.changed() => changed.ok()?,
                            () = state.stop.cancelled() => return None,
                        }
                    }
                    let svid = state.svid.borrow_and_update().clone();
                    let bundles = state.bundles.borrow_and_update().clone();
                    if let Some(message) = make(svid.as_deref(), &bundles) {
                        return Some((Ok(message), (state, make)));
                    }
                }
            },
        ))
    }
}

/// What a watching stream holds between messages.
struct WatchState {
    svid: watch::Receiver<Option<Arc<AppSvid>>>,
    bundles: watch::Receiver<Arc<WorkloadBundles>>,
    stop: CancellationToken,
    /// Whether nothing was sent yet: the current state goes out without waiting for a change.
    first: bool,
    /// Held while the stream is open.
    _permit: OwnedSemaphorePermit,
}

/// A stream of Workload API responses.
type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        log_call("FetchX509SVID", &request);
        let permit = self.stream_permit("FetchX509SVID")?;
        Ok(Response::new(self.watch_stream(permit, |svid, bundles| {
            // Nothing until the first SVID: the app waits rather than being told "none".
            svid.map(|svid| x509_svid_response(svid, bundles))
        })))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        log_call("FetchX509Bundles", &request);
        let permit = self.stream_permit("FetchX509Bundles")?;
        Ok(Response::new(self.watch_stream(permit, |_, bundles| {
            Some(x509_bundles_response(bundles))
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        log_call("FetchJWTSVID", &request);
        let request = request.into_inner();
        let audience = audience_set(request.audience)?;
        // Just after start the app's first SVID may be a moment away: wait for it a little,
        // as the streams do, rather than send every client into its retry loop.
        let mut first = self.svid.clone();
        let svid = tokio::time::timeout(FIRST_SVID_WAIT, first.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|svid| svid.clone());
        let Some(svid) = svid else {
            return Err(Status::unavailable(
                "the sidecar has no identity yet; try again shortly",
            ));
        };
        if !request.spiffe_id.is_empty() && request.spiffe_id != svid.spiffe_id.as_str() {
            // The ID asked for is not echoed: it is the caller's, of any length.
            return Err(Status::permission_denied(format!(
                "this workload is {}; it cannot have a JWT-SVID for another SPIFFE ID",
                svid.spiffe_id
            )));
        }
        let Some(minter) = &self.minter else {
            return Err(Status::unimplemented("this sidecar mints no JWT-SVIDs"));
        };
        let answer = |jwt: MintedJwt| {
            Response::new(pb::JwtsvidResponse {
                svids: vec![pb::Jwtsvid {
                    spiffe_id: jwt.spiffe_id,
                    svid: jwt.token,
                    hint: String::new(),
                }],
            })
        };
        if let Some(jwt) = self.jwts.get(&audience, unix_now()) {
            return Ok(answer(jwt));
        }
        let _turn = self
            .mints
            .acquire()
            .await
            .map_err(|_| Status::unavailable("the sidecar is stopping"))?;
        // Another call may have minted it while this one waited.
        if let Some(jwt) = self.jwts.get(&audience, unix_now()) {
            return Ok(answer(jwt));
        }
        let jwt = minter.mint(audience.clone()).await.map_err(|e| {
            warn!(error = %e, "cannot get a JWT-SVID from the CA for the app");
            match e.code() {
                Some(
                    code @ (tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::ResourceExhausted),
                ) => Status::new(code, format!("the CA refused a JWT-SVID: {e}")),
                _ => Status::unavailable(format!("cannot get a JWT-SVID from the CA: {e}")),
            }
        })?;
        if jwt.spiffe_id != svid.spiffe_id.as_str() {
            return Err(Status::internal(
                "the CA minted a JWT-SVID for another SPIFFE ID; refused",
            ));
        }
        self.jwts.put(audience, jwt.clone(), unix_now());
        Ok(answer(jwt))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        log_call("FetchJWTBundles", &request);
        let permit = self.stream_permit("FetchJWTBundles")?;
        Ok(Response::new(self.watch_stream(permit, |_, bundles| {
            jwt_bundles_response(bundles)
        })))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        log_call("ValidateJWTSVID", &request);
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience is required"));
        }
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid is required"));
        }
        let bundles = self.bundles.borrow().clone();
        let keys = jwt_keys_by_trust_domain(&bundles);
        match validate_jwt_svid(
            &request.svid,
            &request.audience,
            |td| keys.get(td),
            unix_now(),
        ) {
            Ok(valid) => Ok(Response::new(pb::ValidateJwtsvidResponse {
                spiffe_id: valid.spiffe_id.to_string(),
                claims: Some(proto_struct(valid.claims)),
            })),
            Err(e) => {
                debug!(reason = %e, "refused a JWT-SVID to validate");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }
}

/// Refuses a request without `workload.spiffe.io: true`, before any handler sees it.
#[allow(clippy::result_large_err)]
fn check_header(request: Request<()>) -> Result<Request<()>, Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(value) if value.as_bytes() == b"true" => Ok(request),
        _ => {
            debug!("refused a Workload API request without the workload.spiffe.io header");
            Err(Status::invalid_argument(
                "security header missing from request: Workload API clients must send the \
                 metadata workload.spiffe.io: true",
            ))
        }
    }
}

/// One debug line per call, with the calling process when the kernel says.
fn log_call<T>(rpc: &'static str, request: &Request<T>) {
    let cred = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred);
    debug!(
        rpc,
        pid = cred.and_then(|c| c.pid()),
        uid = cred.map(|c| c.uid()),
        "Workload API call"
    );
}

/// DER certificates one after the other, as the Workload API carries chains and bundles.
fn concatenated<'a>(certificates: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    certificates.into_iter().flatten().copied().collect()
}

/// How the Workload API names a trust domain in its maps: its SPIFFE ID, as SPIRE does (every
/// client library reads both that and the bare name).
fn bundle_key(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}")
}

fn x509_svid_response(svid: &AppSvid, bundles: &WorkloadBundles) -> pb::X509svidResponse {
    pb::X509svidResponse {
        svids: vec![pb::X509svid {
            spiffe_id: svid.spiffe_id.to_string(),
            x509_svid: concatenated(svid.chain.iter().map(|c| c.as_ref())),
            x509_svid_key: svid.key.secret_pkcs8_der().to_vec(),
            bundle: concatenated(bundles.roots.iter().map(|c| c.as_ref())),
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: bundles
            .federated
            .iter()
            .filter(|(_, bundle)| !bundle.roots.is_empty())
            .map(|(td, bundle)| {
                (
                    bundle_key(td),
                    concatenated(bundle.roots.iter().map(|c| c.as_ref())),
                )
            })
            .collect(),
    }
}

fn x509_bundles_response(bundles: &WorkloadBundles) -> pb::X509BundlesResponse {
    let own = (
        bundle_key(bundles.trust_domain.as_str()),
        concatenated(bundles.roots.iter().map(|c| c.as_ref())),
    );
    pb::X509BundlesResponse {
        crl: Vec::new(),
        bundles: std::iter::once(own)
            .chain(
                bundles
                    .federated
                    .iter()
                    .filter(|(_, bundle)| !bundle.roots.is_empty())
                    .map(|(td, bundle)| {
                        (
                            bundle_key(td),
                            concatenated(bundle.roots.iter().map(|c| c.as_ref())),
                        )
                    }),
            )
            .collect(),
    }
}

/// The JWT keys by trust domain; nothing while there are none (clients take an empty answer
/// for an error).
fn jwt_bundles_response(bundles: &WorkloadBundles) -> Option<pb::JwtBundlesResponse> {
    let own = bundles
        .jwt_keys
        .as_ref()
        .map(|keys| (bundle_key(bundles.trust_domain.as_str()), keys.to_json()));
    let map: std::collections::HashMap<_, _> =
        own.into_iter()
            .chain(bundles.federated.iter().filter_map(|(td, bundle)| {
                Some((bundle_key(td), bundle.jwt_keys.as_ref()?.to_json()))
            }))
            .collect();
    (!map.is_empty()).then_some(pb::JwtBundlesResponse { bundles: map })
}

/// The most audiences one JWT-SVID may name, as the CA allows.
const MAX_AUDIENCES: usize = 16;
/// The longest audience, in bytes, as the CA allows.
const MAX_AUDIENCE_LEN: usize = 256;
/// How long `FetchJWTSVID` waits for the app's first SVID before answering `Unavailable`.
const FIRST_SVID_WAIT: Duration = Duration::from_secs(10);
/// JWT-SVIDs kept for reuse, one per audience set.
pub(crate) const MAX_CACHED_JWTS: usize = 64;
/// Calls to the CA for JWT-SVIDs at once; more wait their turn.
const MAX_MINTS: usize = 4;

/// Who mints JWT-SVIDs for the app: the CA, over the sidecar's mutual TLS; a fake in tests.
pub(crate) trait JwtMinter: Send + Sync + 'static {
    /// A JWT-SVID of the sidecar's identity for `audience` (checked, sorted, distinct).
    fn mint(
        &self,
        audience: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Result<MintedJwt, CaError>> + Send + '_>>;
}

impl JwtMinter for CaCertifier {
    fn mint(
        &self,
        audience: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Result<MintedJwt, CaError>> + Send + '_>> {
        Box::pin(self.mint_jwt_svid(audience))
    }
}

/// JWT-SVIDs already minted, by audience set, each reused until half its life.
#[derive(Default)]
struct JwtCache {
    entries: std::sync::Mutex<HashMap<Vec<String>, MintedJwt>>,
}

impl JwtCache {
    /// A token for `audience` still in the first half of its life at `now`.
    fn get(&self, audience: &[String], now: i64) -> Option<MintedJwt> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(audience).filter(|jwt| fresh(jwt, now)).cloned()
    }

    /// Keeps `jwt` for `audience`; when full, first drops what is no longer fresh, then the
    /// token that expires first.
    fn put(&self, audience: Vec<String>, jwt: MintedJwt, now: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_CACHED_JWTS && !entries.contains_key(&audience) {
            entries.retain(|_, jwt| fresh(jwt, now));
            if entries.len() >= MAX_CACHED_JWTS {
                let first = entries
                    .iter()
                    .min_by_key(|(_, jwt)| jwt.expires_at)
                    .map(|(key, _)| key.clone());
                if let Some(first) = first {
                    entries.remove(&first);
                }
            }
        }
        entries.insert(audience, jwt);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Whether `jwt` is in the first half of its life at `now`.
fn fresh(jwt: &MintedJwt, now: i64) -> bool {
    let half = jwt.issued_at + (jwt.expires_at - jwt.issued_at) / 2;
    now < half
}

/// The audiences asked for, checked, sorted and without repeats: the cache's key.
fn audience_set(audience: Vec<String>) -> Result<Vec<String>, Status> {
    if audience.is_empty() {
        return Err(Status::invalid_argument(
            "audience is required: name at least one",
        ));
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(Status::invalid_argument(format!(
            "{} audiences asked for; at most {MAX_AUDIENCES}",
            audience.len()
        )));
    }
    for one in &audience {
        if one.is_empty() || one.len() > MAX_AUDIENCE_LEN || one.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "an audience must be 1 to {MAX_AUDIENCE_LEN} bytes without control characters"
            )));
        }
    }
    let mut set = audience;
    set.sort();
    set.dedup();
    Ok(set)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The JWT keys of every trust domain the bundles carry.
fn jwt_keys_by_trust_domain(bundles: &WorkloadBundles) -> HashMap<TrustDomain, JwtKeys> {
    let own = std::iter::once((bundles.trust_domain.clone(), bundles.jwt_keys.as_ref()));
    let federated = bundles.federated.iter().filter_map(|(td, bundle)| {
        Some((td.parse::<TrustDomain>().ok()?, bundle.jwt_keys.as_ref()))
    });
    own.chain(federated)
        .filter_map(|(td, keys)| Some((td, keys?.clone())))
        .collect()
}

/// A JSON value as a protobuf `Value`.
fn proto_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(proto_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(proto_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn proto_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, proto_value(v))).collect(),
    }
}

/// The accepted connections, at most [`MAX_CONNECTIONS`] at once; ends at `stop`.
fn incoming(
    socket: WorkloadSocket,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Connection, std::io::Error>> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    futures_util::stream::unfold((socket, slots, stop), |(socket, slots, stop)| async move {
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.ok()?,
                () = stop.cancelled() => return None,
            };
            let accepted = tokio::select! {
                accepted = socket.listener.accept() => accepted,
                () = stop.cancelled() => return None,
            };
            match accepted {
                Ok((stream, _)) => {
                    let connection = Connection {
                        stream,
                        rewriter: AuthorityRewriter::default(),
                        _slot: slot,
                    };
                    return Some((Ok(connection), (socket, slots, stop)));
                }
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    debug!(error = %e, "cannot accept a Workload API connection");
                    drop(slot);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = stop.cancelled() => return None,
                    }
                }
            }
        }
    })
}

/// A connection to the socket, holding its slot until it closes. What the app sends is read
/// through an [`AuthorityRewriter`], so that clients that send their socket's path as the
/// `:authority` (grpc-core, grpc-java) are served.
struct Connection {
    stream: UnixStream,
    rewriter: AuthorityRewriter,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Connection {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = this.rewriter.output();
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut read = [0u8; 8192];
            let mut read = ReadBuf::new(&mut read);
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The end of the stream (a partial frame left over is h2's to complain about).
                return Poll::Ready(Ok(()));
            }
            this.rewriter.feed(read.filled())?;
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use hush_identity::TrustBundle;
    use hush_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    use hush_tls::TrustStore;
    use hyper_util::rt::TokioIo;
    use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    use tonic::transport::{Channel, Endpoint};

    use super::*;

    const ID: &str = "spiffe://test.example/ns/shop/sa/app";

    /// A Workload API served on a socket in a temporary directory.
    struct Served {
        feed: WorkloadFeed,
        path: PathBuf,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    /// Mints tokens named by a counter, for the app's SPIFFE ID, living `life` from `age` ago.
    struct FakeMinter {
        minted: std::sync::atomic::AtomicUsize,
        age: i64,
        life: i64,
    }

    impl JwtMinter for FakeMinter {
        fn mint(
            &self,
            audience: Vec<String>,
        ) -> Pin<Box<dyn Future<Output = Result<MintedJwt, CaError>> + Send + '_>> {
            let n = self
                .minted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let now = unix_now();
            Box::pin(async move {
                Ok(MintedJwt {
                    token: format!("token-{n}-for-{}", audience.join(",")),
                    spiffe_id: ID.to_string(),
                    issued_at: now - self.age,
                    expires_at: now - self.age + self.life,
                })
            })
        }
    }

    impl FakeMinter {
        fn new(age: i64, life: i64) -> Arc<Self> {
            Arc::new(Self {
                minted: Default::default(),
                age,
                life,
            })
        }

        fn minted(&self) -> usize {
            self.minted.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Served {
        async fn start() -> Self {
            Self::with_minter(FakeMinter::new(0, 300)).await
        }

        async fn with_minter(minter: Arc<FakeMinter>) -> Self {
            let ca = hush_test_support::TestCa::new("test.example");
            let bundle =
                TrustBundle::new("test.example".parse().unwrap(), vec![ca.root()]).unwrap();
            let trust = TrustStore::new(bundle).unwrap();
            let feed = WorkloadFeed::new(&trust);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("run/workload/socket");
            let socket = WorkloadSocket::bind(&path).unwrap();
            let stop = CancellationToken::new();
            let task = tokio::spawn(
                WorkloadApi::new(&feed, stop.clone())
                    .with_jwt_minter(minter)
                    .serve(socket),
            );
            Self {
                feed,
                path,
                stop,
                task,
                _dir: dir,
            }
        }

        /// A client on a connection of its own.
        async fn client(&self) -> SpiffeWorkloadApiClient<Channel> {
            let path = self.path.clone();
            let channel = Endpoint::try_from("http://workload.invalid")
                .unwrap()
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .unwrap();
            SpiffeWorkloadApiClient::new(channel)
        }

        /// Hands the app an SVID whose chain and key are these bytes (nothing here parses them).
        fn issue(&self, chain: &[&[u8]], key: &[u8], serial: &str) {
            self.feed.svid.send_replace(Some(Arc::new(AppSvid {
                spiffe_id: ID.parse().unwrap(),
                serial: serial.to_string(),
                not_after: std::time::SystemTime::now(),
                chain: chain
                    .iter()
                    .map(|c| CertificateDer::from(c.to_vec()))
                    .collect(),
                key: Arc::new(PrivatePkcs8KeyDer::from(key.to_vec())),
            })));
        }

        fn set_roots(&self, roots: &[&[u8]]) {
            self.feed.bundles.send_modify(|bundles| {
                let mut next = WorkloadBundles::clone(bundles);
                next.roots = roots
                    .iter()
                    .map(|r| CertificateDer::from(r.to_vec()))
                    .collect();
                *bundles = Arc::new(next);
            });
        }
    }

    fn with_header<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        request
    }

    fn with_value<T>(message: T, value: &str) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(SECURITY_HEADER, value.parse().unwrap());
        request
    }

    /// A request with the security header set to `value`, or without it for `None`.
    fn with_header_value<T>(message: T, value: Option<&str>) -> Request<T> {
        match value {
            None => Request::new(message),
            Some(v) => with_value(message, v),
        }
    }

    #[tokio::test]
    async fn every_call_without_the_security_header_is_refused() {
        let served = Served::start().await;
        served.issue(&[b"leaf"], b"key", "01");
        let mut client = served.client().await;
        let refused = |result: Result<_, Status>| {
            let status = result.expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains("workload.spiffe.io"),
                "{status:?}"
            );
        };
        for value in [None, Some("false"), Some("TRUE"), Some("true ")] {
            refused(
                client
                    .fetch_x509svid(with_header_value(pb::X509svidRequest {}, value))
                    .await
                    .map(drop),
            );
            refused(
                client
                    .fetch_x509_bundles(with_header_value(pb::X509BundlesRequest {}, value))
                    .await
                    .map(drop),
            );
            refused(
                client
                    .fetch_jwt_bundles(with_header_value(pb::JwtBundlesRequest {}, value))
                    .await
                    .map(drop),
            );
            refused(
                client
                    .fetch_jwtsvid(with_header_value(
                        pb::JwtsvidRequest {
                            audience: vec!["a".into()],
                            spiffe_id: String::new(),
                        },
                        value,
                    ))
                    .await
                    .map(drop),
            );
            refused(
                client
                    .validate_jwtsvid(with_header_value(
                        pb::ValidateJwtsvidRequest {
                            audience: "a".into(),
                            svid: "x.y.z".into(),
                        },
                        value,
                    ))
                    .await
                    .map(drop),
            );
        }
        // With it, the same connection is served.
        let mut svids = client
            .fetch_x509svid(with_header(pb::X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let first = svids.message().await.unwrap().unwrap();
        assert_eq!(first.svids[0].spiffe_id, ID);
    }

    #[tokio::test]
    async fn the_svid_stream_waits_for_the_first_svid_then_follows_every_rotation() {
        let served = Served::start().await;
        let mut client = served.client().await;
        let mut svids = client
            .fetch_x509svid(with_header(pb::X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        // A bundle change while there is no SVID says nothing to the app.
        served.set_roots(&[b"root-1"]);
        served.issue(&[b"leaf-1", b"intermediate"], b"key-1", "01");
        let first = svids.message().await.unwrap().unwrap();
        assert_eq!(first.svids.len(), 1, "the first message carries the SVID");
        let svid = &first.svids[0];
        assert_eq!(svid.spiffe_id, ID);
        assert_eq!(
            svid.x509_svid, b"leaf-1intermediate",
            "leaf first, concatenated"
        );
        assert_eq!(svid.x509_svid_key, b"key-1");
        assert_eq!(svid.bundle, b"root-1");
        assert!(first.federated_bundles.is_empty());

        served.issue(&[b"leaf-2", b"intermediate"], b"key-2", "02");
        let second = svids.message().await.unwrap().unwrap();
        assert_eq!(second.svids[0].x509_svid, b"leaf-2intermediate");
        assert_eq!(second.svids[0].x509_svid_key, b"key-2");

        served.set_roots(&[b"root-1", b"root-2"]);
        let third = svids.message().await.unwrap().unwrap();
        assert_eq!(third.svids[0].bundle, b"root-1root-2");
        assert_eq!(third.svids[0].x509_svid_key, b"key-2");

        // A stream that starts now gets the current state at once.
        let mut late = client
            .fetch_x509svid(with_header(pb::X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(late.message().await.unwrap().unwrap(), third);

        let mut bundles = client
            .fetch_x509_bundles(with_header(pb::X509BundlesRequest {}))
            .await
            .unwrap()
            .into_inner();
        let message = bundles.message().await.unwrap().unwrap();
        assert_eq!(
            message.bundles.into_iter().collect::<Vec<_>>(),
            [(
                "spiffe://test.example".to_string(),
                b"root-1root-2".to_vec()
            )]
        );

        // At shutdown the streams end and the socket goes.
        served.stop.cancel();
        assert_eq!(svids.message().await.ok().flatten(), None);
        served.task.await.unwrap();
        assert!(!served.path.exists(), "the socket is removed");
    }

    #[tokio::test]
    async fn jwt_bundles_wait_for_keys() {
        let served = Served::start().await;
        let mut client = served.client().await;
        let mut bundles = client
            .fetch_jwt_bundles(with_header(pb::JwtBundlesRequest {}))
            .await
            .unwrap()
            .into_inner();
        served.set_roots(&[b"root-1"]);
        served.feed.bundles.send_modify(|bundles| {
            let mut next = WorkloadBundles::clone(bundles);
            next.jwt_keys = Some(JwtKeys::default());
            *bundles = Arc::new(next);
        });
        let message = bundles.message().await.unwrap().unwrap();
        assert_eq!(
            message.bundles.into_iter().collect::<Vec<_>>(),
            [(
                "spiffe://test.example".to_string(),
                br#"{"keys":[]}"#.to_vec()
            )]
        );
    }

    #[tokio::test]
    async fn streams_are_capped_and_a_closed_one_frees_its_place() {
        let served = Served::start().await;
        let mut open = Vec::new();
        // Over several connections: each takes a bounded number of streams of its own.
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(served.client().await);
        }
        for i in 0..MAX_STREAMS {
            let count = clients.len();
            let client = &mut clients[i % count];
            let mut stream = client
                .fetch_x509_bundles(with_header(pb::X509BundlesRequest {}))
                .await
                .unwrap()
                .into_inner();
            stream.message().await.unwrap().unwrap();
            open.push(stream);
        }
        let refused = clients[0]
            .fetch_x509_bundles(with_header(pb::X509BundlesRequest {}))
            .await
            .map(drop)
            .expect_err("one stream too many");
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        drop(open.pop());
        // The server learns of the reset when it next polls; a new stream gets the place.
        let mut again = loop {
            match clients[1]
                .fetch_x509_bundles(with_header(pb::X509BundlesRequest {}))
                .await
            {
                Ok(stream) => break stream.into_inner(),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                    tokio::task::yield_now().await;
                }
            }
        };
        again.message().await.unwrap().unwrap();
    }

    fn jwt_request(audience: &[&str], spiffe_id: &str) -> Request<pb::JwtsvidRequest> {
        with_header(pb::JwtsvidRequest {
            audience: audience.iter().map(|a| a.to_string()).collect(),
            spiffe_id: spiffe_id.to_string(),
        })
    }

    #[tokio::test]
    async fn jwt_svids_are_checked_minted_once_per_audience_set_and_the_cache_is_bounded() {
        let minter = FakeMinter::new(0, 300);
        let served = Served::with_minter(minter.clone()).await;
        let mut client = served.client().await;
        let code = |result: Result<Response<pb::JwtsvidResponse>, Status>| {
            result.map(drop).expect_err("refused").code()
        };
        // No identity yet, for the whole wait: nothing is minted.
        assert_eq!(
            code(client.fetch_jwtsvid(jwt_request(&["a"], "")).await),
            tonic::Code::Unavailable
        );
        served.issue(&[b"leaf"], b"key", "01");
        let long = "x".repeat(MAX_AUDIENCE_LEN + 1);
        let many: Vec<String> = (0..=MAX_AUDIENCES).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        for audience in [&[][..], &[""], &[long.as_str()], &["a\nb"], &many] {
            assert_eq!(
                code(client.fetch_jwtsvid(jwt_request(audience, "")).await),
                tonic::Code::InvalidArgument,
                "{audience:?}"
            );
        }
        assert_eq!(
            code(
                client
                    .fetch_jwtsvid(jwt_request(&["a"], "spiffe://test.example/someone/else"))
                    .await
            ),
            tonic::Code::PermissionDenied
        );
        assert_eq!(minter.minted(), 0, "nothing refused reached the CA");

        let first = client
            .fetch_jwtsvid(jwt_request(&["b", "a"], ID))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.svids[0].spiffe_id, ID);
        assert_eq!(first.svids[0].svid, "token-0-for-a,b");
        // The same set, in another order and repeated: the same token, not a new call.
        let again = client
            .fetch_jwtsvid(jwt_request(&["a", "b", "a"], ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, first);
        assert_eq!(minter.minted(), 1);

        // A flood of audience sets: each is minted, the cache stays bounded.
        for i in 0..(MAX_CACHED_JWTS + 36) {
            let audience = format!("flood-{i}");
            client
                .fetch_jwtsvid(jwt_request(&[&audience], ""))
                .await
                .unwrap();
        }
        assert_eq!(minter.minted(), 1 + MAX_CACHED_JWTS + 36);
        // The WorkloadApi the server holds is a clone sharing the cache.
        served.stop.cancel();
    }

    #[tokio::test]
    async fn a_jwt_past_half_its_life_is_minted_again() {
        // Every token comes back already past half of its 300 s.
        let minter = FakeMinter::new(200, 300);
        let served = Served::with_minter(minter.clone()).await;
        served.issue(&[b"leaf"], b"key", "01");
        let mut client = served.client().await;
        for _ in 0..3 {
            client.fetch_jwtsvid(jwt_request(&["a"], "")).await.unwrap();
        }
        assert_eq!(minter.minted(), 3);
    }

    #[test]
    fn the_cache_drops_stale_tokens_first_and_never_grows_past_its_bound() {
        let cache = JwtCache::default();
        let jwt = |issued_at: i64, expires_at: i64| MintedJwt {
            token: String::new(),
            spiffe_id: ID.into(),
            issued_at,
            expires_at,
        };
        for i in 0..MAX_CACHED_JWTS * 3 {
            cache.put(vec![i.to_string()], jwt(1000, 1000 + i as i64 + 10), 1000);
            assert!(cache.len() <= MAX_CACHED_JWTS);
        }
        // The longest-lived stayed; the first to expire went.
        let last = (MAX_CACHED_JWTS * 3 - 1).to_string();
        assert!(cache.get(&[last], 1001).is_some());
        assert!(cache.get(&["0".to_string()], 1001).is_none());
        // Past half its life a token is not handed out.
        cache.put(vec!["half".into()], jwt(1000, 1100), 1000);
        assert!(cache.get(&["half".to_string()], 1049).is_some());
        assert!(cache.get(&["half".to_string()], 1050).is_none());
    }

    #[tokio::test]
    async fn jwt_svids_are_validated_against_the_trust_domains_keys() {
        let served = Served::start().await;
        let pair = rcgen::KeyPair::generate().unwrap();
        let key = hush_identity::JwtSigningKey::from_pkcs8_der(&pair.serialize_der()).unwrap();
        let keys = JwtKeys::from_public_keys([(key.key_id(), key.public_key_spki_der())]).unwrap();
        served.feed.bundles.send_modify(|bundles| {
            let mut next = WorkloadBundles::clone(bundles);
            next.jwt_keys = Some(keys);
            *bundles = Arc::new(next);
        });
        let now = unix_now();
        let token = hush_identity::sign_jwt_svid(
            &key,
            &"spiffe://test.example/ns/shop/sa/caller".parse().unwrap(),
            &["orders".to_string()],
            now,
            now + 300,
        )
        .unwrap();
        let mut client = served.client().await;
        let valid = client
            .validate_jwtsvid(with_header(pb::ValidateJwtsvidRequest {
                audience: "orders".into(),
                svid: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(valid.spiffe_id, "spiffe://test.example/ns/shop/sa/caller");
        let claims = valid.claims.unwrap().fields;
        assert_eq!(
            claims["sub"].kind,
            Some(prost_types::value::Kind::StringValue(
                "spiffe://test.example/ns/shop/sa/caller".into()
            ))
        );
        for (audience, svid) in [
            ("payments", token.as_str()),
            ("orders", "not.a.token"),
            ("", token.as_str()),
            ("orders", ""),
        ] {
            let refused = client
                .validate_jwtsvid(with_header(pb::ValidateJwtsvidRequest {
                    audience: audience.into(),
                    svid: svid.into(),
                }))
                .await
                .expect_err("refused");
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
            assert!(!refused.message().is_empty());
        }
        // The JWT bundle stream hands out the same keys.
        let mut bundles = client
            .fetch_jwt_bundles(with_header(pb::JwtBundlesRequest {}))
            .await
            .unwrap()
            .into_inner();
        let message = bundles.message().await.unwrap().unwrap();
        let json = &message.bundles["spiffe://test.example"];
        assert_eq!(
            JwtKeys::from_json(json)
                .unwrap()
                .key_ids()
                .collect::<Vec<_>>(),
            [key.key_id()]
        );
    }

    #[tokio::test]
    async fn garbage_on_the_socket_is_dropped_and_the_app_still_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let served = Served::start().await;
        served.issue(&[b"leaf"], b"key", "01");
        for garbage in [
            &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
            &[0u8; 4096][..],
            // A preface, then a frame that announces 16 MiB.
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\x01\x04\x00\x00\x00\x01"[..],
        ] {
            let mut raw = UnixStream::connect(&served.path).await.unwrap();
            let _ = raw.write_all(garbage).await;
            let mut answer = Vec::new();
            // The server ends the connection; whatever it said first is not read here.
            let _ = raw.read_to_end(&mut answer).await;
        }
        let mut client = served.client().await;
        let mut svids = client
            .fetch_x509svid(with_header(pb::X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            svids.message().await.unwrap().unwrap().svids[0].spiffe_id,
            ID
        );
    }

    #[test]
    fn the_socket_replaces_a_stale_socket_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/socket");
        // An earlier run's socket, left behind.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let socket = WorkloadSocket::bind(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, SOCKET_MODE);
        drop(socket);
        assert!(!path.exists(), "removed when dropped");

        // A file that is not a socket is not the sidecar's to remove.
        std::fs::write(&path, "precious").unwrap();
        let error = WorkloadSocket::bind(&path).unwrap_err();
        assert!(error.to_string().contains("is not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        // Nor is a link to one.
        std::fs::remove_file(&path).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        let _other = std::os::unix::net::UnixListener::bind(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(WorkloadSocket::bind(&path).is_err());
        assert!(elsewhere.exists());

        // A socket someone else bound since is left to them.
        std::fs::remove_file(&path).unwrap();
        let socket = WorkloadSocket::bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let _theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(socket);
        assert!(path.exists(), "another process's socket is kept");

        // A directory the sidecar makes for its socket is its user's alone.
        let fresh = dir.path().join("made/here/socket");
        let socket = WorkloadSocket::bind(&fresh).unwrap();
        for made in [dir.path().join("made"), dir.path().join("made/here")] {
            let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", made.display());
        }
        drop(socket);
    }
}
