//! `hush ca …`: create, run, feed and rotate the certificate authority.

mod authorities;
mod revocations;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use hush_ca::{
    Attestor, AuditLog, AuthoritySet, CaDir, CaKeyAlgorithm, CaService, InitOptions,
    IssuancePolicy, JoinTokenStore, Pkcs11Uri, ReloadError, ServeError, ServeOptions, StoreError,
    TokenReviewClient, TokenReviewConfig,
};
use hush_identity::{SpiffeId, TrustDomain};
use tokio::net::TcpListener;

use crate::parse_duration;
use crate::shutdown;
use crate::times::utc_second;

#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Create a CA: a root (10 years) and an intermediate (1 year), keys written with mode 0600.
    Init(InitArgs),
    /// List every root and intermediate with its state, validity, time left and what to do.
    Authorities(authorities::ListArgs),
    /// Stage a new intermediate, or a new root with its intermediate.
    #[command(subcommand)]
    Rotate(authorities::RotateCommand),
    /// Make the prepared intermediate (and its new root) the one that signs.
    Activate(authorities::ActivateArgs),
    /// Make sidecars renew away from an old authority now rather than at half-life.
    Taint(authorities::TaintArgs),
    /// Drop an old authority from the trust bundle and delete its key.
    Revoke(authorities::RevokeArgs),
    /// Print the Kubernetes Secret a CA serves from (every file it reads, never a root key),
    /// for `kubectl apply -f -`.
    Secret(authorities::SecretArgs),
    /// Revoke a workload identity, one certificate and its renewals, or a join token: the CA
    /// refuses to issue and renew, and sidecars refuse the certificates (--lift undoes it).
    RevokeIdentity(revocations::RevokeIdentityArgs),
    /// List what `hush ca revoke-identity` revoked, and until when sidecars are told of it.
    Revocations(revocations::ListArgs),
    /// Print the trust bundle (PEM) on stdout.
    Bundle(DirArg),
    /// Manage join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Serve hush.ca.v1 and the Istio-compatible CA service over gRPC with TLS.
    Serve(Box<ServeArgs>),
}

#[derive(Debug, Args)]
pub(crate) struct DirArg {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The CA directory (created with mode 0700).
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// The trust domain, e.g. `cluster.local`.
    #[arg(long)]
    trust_domain: String,
    /// Key algorithm of the root and the intermediate.
    #[arg(long, value_enum, default_value_t = KeyAlgorithm::EcdsaP256)]
    key_algorithm: KeyAlgorithm,
    /// Replace a CA of the old layout in DIR (workloads will stop trusting certificates of the
    /// old one). A CA with authorities is never replaced: `hush ca rotate root` instead.
    #[arg(long)]
    force: bool,
    /// How long a change to DIR may take to reach every CA replica and every sidecar: a new
    /// root is published this long before it signs (at least two sidecar bundle refreshes).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    publish_wait: Duration,
    /// The longest workload certificate lifetime this CA may ever grant (`hush ca serve
    /// --max-ttl` is refused above it); bounds how long a retired authority stays needed.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    max_ttl: Duration,
    /// Make the intermediate's key in a PKCS#11 token (an HSM; SoftHSM2 is the one tested)
    /// instead of a key file: `pkcs11:token=LABEL;object=NEW-KEY-LABEL?pin-source=file:/PIN`,
    /// plus `&module-path=/MODULE.so` for a module other than SoftHSM2's. The URI is stored in
    /// authorities.json as given, so the PIN must be in a file, never in the URI (pin-value).
    /// `hush ca serve` opens the key there; an older hush cannot serve such a directory.
    #[arg(long, value_name = "URI")]
    key_uri: Option<String>,
    /// Make the root's key in a PKCS#11 token instead of a key file (the form of --key-uri,
    /// with a label of its own); only `hush ca rotate intermediate` signs with it.
    #[arg(long, value_name = "URI")]
    root_key_uri: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
}

impl From<KeyAlgorithm> for CaKeyAlgorithm {
    fn from(algorithm: KeyAlgorithm) -> Self {
        match algorithm {
            KeyAlgorithm::EcdsaP256 => Self::EcdsaP256,
            KeyAlgorithm::EcdsaP384 => Self::EcdsaP384,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint a join token for a SPIFFE ID. The token is the last line on stdout; only its hash is
    /// stored.
    Create(TokenCreateArgs),
    /// List join tokens (ids, identities, expiry, state; never secrets).
    List(DirArg),
    /// Withdraw a join token by id; it stops working at once, even on a running CA.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TokenRevokeArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// The token's id (the 16 hex digits after `hushjt.`).
    id: String,
}

#[derive(Debug, Args)]
pub(crate) struct TokenCreateArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// The identity the token stands for, e.g. `spiffe://cluster.local/ns/shop/sa/frontend`.
    #[arg(long)]
    spiffe_id: String,
    /// How long the token can be used.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// Allow the token to be used more than once (until it expires).
    #[arg(long)]
    reusable: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Extra DNS name or IP address for the CA's server certificate (repeatable); `localhost`
    /// and 127.0.0.1 are always included.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// The longest certificate lifetime granted; longer requests are shortened.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    max_ttl: Duration,
    /// Lifetime granted when a request does not ask for one (at most --max-ttl).
    #[arg(long, value_parser = parse_duration)]
    default_ttl: Option<Duration>,
    /// How far NotBefore is back-dated, for clock skew.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    backdate: Duration,
    /// Audit log file (one JSON line per issuance or refusal). Default: DIR/audit.log. In a
    /// container, `/dev/stdout` puts it in the container's log (hush's own log is on stderr).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Refuse to start unless the CA in DIR is for this trust domain (catches a Secret from
    /// another cluster, or a chart value that does not match it).
    #[arg(long)]
    trust_domain: Option<String>,
    /// Check Kubernetes service-account tokens with TokenReview, using the in-cluster API server
    /// and this pod's service account.
    #[arg(long)]
    k8s: bool,
    /// API server URL for TokenReview (instead of the in-cluster one).
    #[arg(long, requires_all = ["k8s_ca_file", "k8s_token_file"])]
    k8s_api_server: Option<String>,
    /// CA bundle that verifies the API server (with --k8s-api-server).
    #[arg(long)]
    k8s_ca_file: Option<PathBuf>,
    /// Token the CA presents to the API server (with --k8s-api-server); re-read on each call.
    #[arg(long)]
    k8s_token_file: Option<PathBuf>,
    /// Audience the service-account tokens must be meant for.
    #[arg(long, default_value = "hush-ca")]
    k8s_audience: String,
    /// Limit for one TokenReview (connect, TLS, request and answer); the caller gets UNAVAILABLE.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    k8s_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take before connections are closed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// A client that has not finished its TLS handshake by then is dropped.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// After the TLS handshake, a client must send its first request (HTTP/2 preface and
    /// headers) within this, or the connection is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed (PINGs do not count).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Connections from one IP address beyond this (TLS handshakes included) are reset at once.
    /// Sidecars behind one node address share it, so keep it generous.
    #[arg(long, default_value_t = 256)]
    max_connections_per_ip: usize,
    /// Sidecars renewing away from a tainted authority wait a random time up to this first, so
    /// that they do not all call the CA (and, on Kubernetes, TokenReview) at once.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    taint_spread: Duration,
    /// A renewal with the current certificate is refused, and the token asked for again, once
    /// the identity was last attested longer ago than this (0s: every renewal needs the
    /// token). On Kubernetes sidecars send their token with every renewal anyway.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    reattest_after: Duration,
    /// How often the CA reads DIR again, to put staged, activated, tainted or revoked
    /// authorities, and revocations, in force without a restart (0s: never).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    reload_interval: Duration,
    /// Requests from clients without a client certificate (anything but a renewal) beyond this
    /// many in flight are answered UNAVAILABLE, to be retried; each may start a TokenReview.
    #[arg(long, default_value_t = 64)]
    max_unauthenticated_requests: usize,
    /// The longest JWT-SVID lifetime granted (MintJwtSvid); longer requests are shortened, and
    /// a request for none gets 5 minutes. Default 1h, or the CA's max_ttl_seconds
    /// (authorities.json) when that is shorter; given, it may not exceed it.
    #[arg(long, value_parser = parse_duration)]
    jwt_max_ttl: Option<Duration>,
    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics: the authorities'
    /// expiry, reloads, issuances and refusals (port 0 picks a free port; the address is
    /// printed on stdout). Off unless given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

pub(crate) async fn run(command: CaCommand) -> Result<()> {
    match command {
        CaCommand::Init(args) => init(args),
        CaCommand::Authorities(args) => authorities::list(args),
        CaCommand::Rotate(command) => authorities::rotate(command).await,
        CaCommand::Activate(args) => authorities::activate(args).await,
        CaCommand::Taint(args) => authorities::taint(args).await,
        CaCommand::Revoke(args) => authorities::revoke(args).await,
        CaCommand::Secret(args) => authorities::secret(args),
        CaCommand::RevokeIdentity(args) => revocations::revoke_identity(args).await,
        CaCommand::Revocations(args) => revocations::list(args),
        CaCommand::Bundle(args) => {
            let bundle = CaDir::new(args.dir).load_bundle()?;
            print!("{}", bundle.to_pem());
            Ok(())
        }
        CaCommand::Token(TokenCommand::Create(args)) => create_token(args),
        CaCommand::Token(TokenCommand::List(args)) => list_tokens(args),
        CaCommand::Token(TokenCommand::Revoke(args)) => {
            JoinTokenStore::new(CaDir::new(&args.dir).tokens_dir()).revoke(&args.id)?;
            eprintln!("join token {} revoked", args.id);
            Ok(())
        }
        CaCommand::Serve(args) => serve(*args).await,
    }
}

fn init(args: InitArgs) -> Result<()> {
    let trust_domain = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("invalid --trust-domain {:?}", args.trust_domain))?;
    let mut options = InitOptions::new(trust_domain);
    options.force = args.force;
    options.key_algorithm = args.key_algorithm.into();
    options.publish_wait = args.publish_wait;
    options.max_ttl = args.max_ttl;
    options.key_uri = args.key_uri.clone();
    options.root_key_uri = args.root_key_uri.clone();
    let report = CaDir::new(&args.dir).init(&options)?;
    eprintln!(
        "created a CA for trust domain {} in {}:",
        report.trust_domain,
        args.dir.display()
    );
    for file in &report.files {
        eprintln!("  {}", file.display());
    }
    match args.root_key_uri.as_deref() {
        Some(uri) => eprintln!(
            "the root's key is {}: it is not needed to serve, only to rotate the intermediate",
            in_token(uri)
        ),
        None => {
            let root_key = report
                .files
                .iter()
                .filter_map(|f| f.file_name()?.to_str())
                .find(|name| name.starts_with("root-") && name.ends_with(".key"))
                .unwrap_or("the root key");
            eprintln!(
                "{root_key} is not needed to serve, only to rotate the intermediate: keep it \
                 offline."
            );
        }
    }
    if let Some(uri) = args.key_uri.as_deref() {
        eprintln!(
            "the intermediate's key is {}: `hush ca serve` opens it there with the PIN from \
             its pin-source file, and needs the token's module (and for SoftHSM2 its \
             SOFTHSM2_CONF); a hush older than this one cannot serve this directory",
            in_token(uri)
        );
    }
    eprintln!(
        "JWT authority {} signs JWT-SVIDs (its key is a file, whatever --key-uri says).",
        report.jwt
    );
    eprintln!("Next: hush ca serve --dir {}", args.dir.display());
    Ok(())
}

/// A key in a token, in words, from its URI: the labels only, never the PIN.
pub(crate) fn in_token(uri: &str) -> String {
    match uri.parse::<Pkcs11Uri>() {
        Ok(uri) => format!(
            "in PKCS#11 token {:?}, labelled {:?}",
            uri.token(),
            uri.object()
        ),
        Err(_) => "in a PKCS#11 token".into(),
    }
}

fn create_token(args: TokenCreateArgs) -> Result<()> {
    let dir = CaDir::new(&args.dir);
    let spiffe_id: SpiffeId = args
        .spiffe_id
        .parse()
        .with_context(|| format!("invalid --spiffe-id {:?}", args.spiffe_id))?;
    let bundle = dir.load_bundle()?;
    if !spiffe_id.is_member_of(bundle.trust_domain()) {
        bail!(
            "{spiffe_id} is not in this CA's trust domain {}",
            bundle.trust_domain()
        );
    }
    // A revoked identity's token is refused at use; better to say so now.
    if let Some(revoked) = dir
        .revocations()
        .ok()
        .and_then(|r| r.revoked_id(&spiffe_id).cloned())
    {
        eprintln!(
            "warning: {spiffe_id} is revoked (since {}): the CA refuses this token until \
             `hush ca revoke-identity --spiffe-id {spiffe_id} --lift`",
            utc_second(
                time::OffsetDateTime::from_unix_timestamp(revoked.revoked_at)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            )
        );
    }
    let minted = JoinTokenStore::new(dir.tokens_dir()).mint(&spiffe_id, args.ttl, args.reusable)?;
    eprintln!(
        "join token {} for {} ({}, expires {})",
        minted.id,
        minted.spiffe_id,
        if minted.reusable {
            "reusable"
        } else {
            "single use"
        },
        utc_second(minted.expires_at),
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", minted.token)?;
    Ok(())
}

fn list_tokens(args: DirArg) -> Result<()> {
    let tokens = JoinTokenStore::new(CaDir::new(&args.dir).tokens_dir()).list()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<16}  {:<10}  {:<20}  SPIFFE ID",
        "ID", "STATE", "EXPIRES"
    )?;
    for t in tokens {
        let state = match (t.used, t.expires_at <= now, t.reusable) {
            (true, _, _) => "used",
            (false, true, _) => "expired",
            (false, false, true) => "reusable",
            (false, false, false) => "unused",
        };
        let expires = time::OffsetDateTime::from_unix_timestamp(t.expires_at)
            .map(utc_second)
            .unwrap_or_else(|_| t.expires_at.to_string());
        writeln!(
            out,
            "{:<16}  {state:<10}  {expires:<20}  {}",
            t.id, t.spiffe_id
        )?;
    }
    Ok(())
}

/// Everything `hush ca serve` and `hush up` need to start a CA.
pub(crate) struct CaSetup {
    pub(crate) service: CaService,
    pub(crate) options: ServeOptions,
}

pub(crate) fn build_ca(
    dir: &CaDir,
    policy: IssuancePolicy,
    audit_log: Option<PathBuf>,
    kubernetes: Option<TokenReviewClient>,
    sans: &[String],
) -> Result<CaSetup> {
    let authorities =
        AuthoritySet::load(dir, policy).context("cannot load the CA's authorities")?;
    let audit_path = audit_log.unwrap_or_else(|| dir.audit_log());
    let audit = AuditLog::open(&audit_path)
        .with_context(|| format!("cannot open the audit log {}", audit_path.display()))?;
    let attestor = Attestor::new(
        authorities.authority().trust_domain().clone(),
        JoinTokenStore::new(dir.tokens_dir()),
        kubernetes,
    );
    let mut options = ServeOptions::default();
    for san in sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => options.ips.push(ip),
            Err(_) => options.dns_names.push(san.clone()),
        }
    }
    Ok(CaSetup {
        service: CaService::new(authorities, attestor, audit)?,
        options,
    })
}

async fn serve(args: ServeArgs) -> Result<()> {
    let kubernetes = if let Some(api_server) = args.k8s_api_server {
        let (Some(ca_file), Some(token_file)) = (args.k8s_ca_file, args.k8s_token_file) else {
            bail!("--k8s-api-server needs --k8s-ca-file and --k8s-token-file");
        };
        let ca_bundle_pem = std::fs::read(&ca_file)
            .with_context(|| format!("cannot read --k8s-ca-file {}", ca_file.display()))?;
        Some(TokenReviewClient::new(TokenReviewConfig {
            api_server,
            ca_bundle_pem,
            bearer_token_file: token_file,
            audience: args.k8s_audience.clone(),
            timeout: args.k8s_timeout,
        })?)
    } else if args.k8s {
        let mut config = TokenReviewConfig::in_cluster()?;
        config.audience = args.k8s_audience.clone();
        config.timeout = args.k8s_timeout;
        Some(TokenReviewClient::new(config)?)
    } else {
        None
    };
    if let Some(default_ttl) = args.default_ttl
        && default_ttl > args.max_ttl
    {
        bail!(
            "--default-ttl {} is longer than --max-ttl {}",
            humantime::format_duration(default_ttl),
            humantime::format_duration(args.max_ttl)
        );
    }
    let policy = IssuancePolicy {
        default_ttl: args.default_ttl.unwrap_or(args.max_ttl),
        max_ttl: args.max_ttl,
        backdate: args.backdate,
        ..IssuancePolicy::default()
    };
    if policy.max_ttl < policy.min_ttl {
        bail!(
            "--max-ttl {} is shorter than the minimum lifetime of {}",
            humantime::format_duration(policy.max_ttl),
            humantime::format_duration(policy.min_ttl)
        );
    }
    let expected_domain = args
        .trust_domain
        .as_deref()
        .map(|td| TrustDomain::new(td).with_context(|| format!("invalid --trust-domain {td:?}")))
        .transpose()?;
    let dir = CaDir::new(&args.dir);
    let mut setup = build_ca(&dir, policy, args.audit_log, kubernetes.clone(), &args.sans)
        .map_err(|e| {
            let missing = e.chain().any(|cause| {
                matches!(cause.downcast_ref(), Some(StoreError::Missing { .. }))
                    || matches!(
                        cause.downcast_ref(),
                        Some(ReloadError::Store(StoreError::Missing { .. }))
                    )
            });
            if kubernetes.is_some() && missing {
                e.context(format!(
                    "the CA cannot start without its keys: on Kubernetes, create the Secret \
                     mounted at {} from `hush ca init` output (see charts/hush/README.md); hush \
                     never makes a new root by itself",
                    args.dir.display()
                ))
            } else {
                e.context("the CA cannot start")
            }
        })?;
    if let Some(expected) = expected_domain
        && setup.service.trust_domain() != expected
    {
        bail!(
            "the CA in {} is for trust domain {}, but --trust-domain says {expected}",
            args.dir.display(),
            setup.service.trust_domain()
        );
    }
    setup.service.set_taint_spread(args.taint_spread);
    setup.service.set_reattest_after(args.reattest_after);
    let jwt_max_ttl = {
        let current = setup.service.current();
        let manifest = current.manifest();
        // A retired JWT authority may be revoked once max_ttl_seconds have passed: no token it
        // signed may outlive that.
        let ceiling = if manifest.generation > 0 {
            Duration::from_secs(manifest.max_ttl_seconds)
        } else {
            hush_ca::DEFAULT_JWT_MAX_TTL
        };
        match args.jwt_max_ttl {
            Some(limit) if limit.is_zero() => bail!("--jwt-max-ttl must be longer than 0s"),
            Some(limit) if limit > ceiling && manifest.generation > 0 => bail!(
                "--jwt-max-ttl {} is longer than this CA's max_ttl_seconds ({} s in {}), which \
                 bounds when a retired JWT authority may be revoked",
                humantime::format_duration(limit),
                manifest.max_ttl_seconds,
                dir.path().join("authorities.json").display()
            ),
            Some(limit) => limit,
            None => hush_ca::DEFAULT_JWT_MAX_TTL.min(ceiling),
        }
    };
    setup.service.set_jwt_max_ttl(jwt_max_ttl);
    setup.options.shutdown_grace = args.shutdown_grace;
    setup.options.handshake_timeout = args.handshake_timeout;
    setup.options.first_request_timeout = args.first_request_timeout;
    setup.options.idle_timeout = args.idle_timeout;
    setup.options.max_connections_per_ip = args.max_connections_per_ip;
    setup.options.max_unauthenticated_requests = args.max_unauthenticated_requests;
    // Checked before the readiness line, so a bad limit never looks like a running CA.
    match setup.options.validate() {
        Ok(()) => {}
        // Named as the flag the operator typed, not the field behind it.
        Err(ServeError::InvalidOption {
            option,
            value,
            reason,
        }) => bail!("invalid --{} {value}: {reason}", option.replace('_', "-")),
        Err(e) => return Err(e.into()),
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let metrics_listener = match args.metrics_listen {
        Some(metrics_addr) => Some(
            TcpListener::bind(metrics_addr)
                .await
                .with_context(|| format!("cannot listen on {metrics_addr} (--metrics-listen)"))?,
        ),
        None => None,
    };
    let current = setup.service.current();
    let shutdown = shutdown::signal();
    for key in dir.root_keys() {
        tracing::warn!(
            key = %key.display(),
            "a root key lies in the directory the CA serves from; the CA never reads it, and it \
             is needed only by `hush ca rotate intermediate`: keep it offline"
        );
    }
    let intermediate_key = current
        .manifest()
        .get(current.intermediate_id())
        .and_then(|a| a.key_uri.as_deref())
        .map_or_else(|| "a key file".to_owned(), in_token);
    tracing::info!(
        trust_domain = %current.authority().trust_domain(),
        generation = current.generation(),
        intermediate = %current.intermediate_id(),
        intermediate_key = %intermediate_key,
        intermediate_expires = %utc_second(current.authority().intermediate_not_after()),
        roots = current.authority().bundle().roots().len(),
        revocations = current.revocations().generation,
        reattest_after = %humantime::format_duration(args.reattest_after),
        jwt = %current
            .jwt()
            .signer
            .as_ref()
            .map_or_else(|| "none (hush ca rotate jwt)".to_owned(), |s| s.id.to_string()),
        jwt_max_ttl = %humantime::format_duration(jwt_max_ttl),
        kubernetes = kubernetes.is_some(),
        "CA ready"
    );
    // Before the readiness line, so that whoever waits for it sees the warning too.
    hush_ca::warn_of_rotations_due(
        current.manifest(),
        time::OffsetDateTime::now_utc().unix_timestamp(),
    );
    {
        let mut out = std::io::stdout().lock();
        if let Some(metrics) = &metrics_listener {
            // Printed before the readiness line, so a test that waited for that line knows
            // the port 0 stood for.
            writeln!(
                out,
                "hush ca: metrics on http://{}/metrics",
                metrics.local_addr()?
            )?;
        }
        writeln!(
            out,
            "hush ca: serving hush.ca.v1 and istio.v1.auth on https://{addr} (trust domain {})",
            current.authority().trust_domain()
        )?;
        out.flush()?;
    }
    // Polled rather than watched: see hush_ca::follow_directory.
    let follower = (!args.reload_interval.is_zero()).then(|| {
        tokio::spawn(hush_ca::follow_directory(
            setup.service.clone(),
            dir.clone(),
            args.reload_interval,
        ))
    });
    let reminder = tokio::spawn(hush_ca::keep_warning_of_rotations_due(
        setup.service.clone(),
        hush_ca::ROTATION_REMINDER_INTERVAL,
    ));
    let metrics_server = metrics_listener.map(|listener| {
        tokio::spawn(hush_ca::serve_metrics(
            listener,
            setup.service.metrics().clone(),
        ))
    });
    let served = hush_ca::serve(setup.service, listener, setup.options, shutdown).await;
    for task in [follower, Some(reminder), metrics_server]
        .into_iter()
        .flatten()
    {
        task.abort();
    }
    served?;
    tracing::info!("CA stopped");
    Ok(())
}
