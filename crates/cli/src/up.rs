//! `hush up`: a whole mesh on loopback in one command.
//!
//! It reads a mesh description (by default `examples/quickstart/mesh.yaml`, built into the
//! binary), creates a CA, and starts every service as a demo app behind its own sidecar, each
//! sidecar proving its identity with a single-use join token. Then it makes one call through
//! the mesh, shows the identities involved, shows what the mesh refuses, and keeps everything
//! running until Ctrl-C.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hush_ca::{CaDir, InitOptions, IssuancePolicy, JoinTokenStore};
use hush_identity::{SpiffeId, TrustBundle, TrustDomain};
use hush_proxy::{
    AccessLog, AdminConfig, CaConfig, DefaultPolicy, Identities, InboundConfig, Limits,
    OutboundConfig, PolicyConfig, Protocol, Proxy, ProxyConfig,
};
use hush_tls::{HandshakeFailure, SpiffeServerVerifier};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::ca::build_ca;
use crate::shutdown;

/// The mesh `hush up` starts when no file is given.
const DEFAULT_MESH: &str = include_str!("../../../examples/quickstart/mesh.yaml");
const DEFAULT_MESH_NAME: &str = "the built-in examples/quickstart/mesh.yaml";
/// The policy the built-in mesh names.
const DEFAULT_POLICY: &str = include_str!("../../../examples/quickstart/policy.yaml");

/// How long the whole mesh may take to get its certificates.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// The mesh to start (YAML: trust domain, services, who calls whom). Default: the built-in
    /// examples/quickstart/mesh.yaml.
    file: Option<PathBuf>,
    /// Where to keep the CA and the join tokens (default: a new temporary directory, removed
    /// on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Exit after the demonstration instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
}

/// A mesh description.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mesh {
    #[serde(default = "default_trust_domain")]
    trust_domain: String,
    services: Vec<Service>,
    /// Identity policy for every sidecar: a file or directory, relative to the mesh file.
    #[serde(default)]
    policy: Option<PathBuf>,
    /// The call `hush up` makes to show the mesh at work.
    #[serde(default)]
    demo: Option<DemoCall>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    /// Services this one calls; each gets an outbound listener on its sidecar.
    #[serde(default)]
    calls: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoCall {
    from: String,
    to: String,
    #[serde(default = "default_path")]
    path: String,
    /// A second call, which the policy should deny.
    #[serde(default)]
    denied_path: Option<String>,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_namespace() -> String {
    "default".into()
}
fn default_path() -> String {
    "/hello".into()
}

/// One service as it runs.
struct Running {
    name: String,
    id: SpiffeId,
    app: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    /// (callee, outbound listener)
    calls: Vec<(String, SocketAddr)>,
}

pub(crate) async fn run(args: UpArgs) -> Result<()> {
    let (text, origin) = match &args.file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the mesh file {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (DEFAULT_MESH.to_string(), DEFAULT_MESH_NAME.to_string()),
    };
    let mesh: Mesh = serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let trust_domain = TrustDomain::new(&mesh.trust_domain)
        .with_context(|| format!("{origin}: trust_domain {:?}", mesh.trust_domain))?;
    let ids = check_mesh(&mesh, &trust_domain).with_context(|| origin.clone())?;

    let (_temp, root) = match &args.dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("hush-up-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            let path = temp.path().to_path_buf();
            (Some(temp), path)
        }
    };
    let ca_dir = CaDir::new(root.join("ca"));
    let created = if ca_dir.bundle_path().exists() {
        let bundle = ca_dir.load_bundle()?;
        if bundle.trust_domain() != &trust_domain {
            bail!(
                "the CA in {} is for trust domain {}, but the mesh is {trust_domain}",
                ca_dir.path().display(),
                bundle.trust_domain()
            );
        }
        false
    } else {
        ca_dir.init(&InitOptions::new(trust_domain.clone()))?;
        true
    };

    // The CA, in this process.
    let setup = build_ca(&ca_dir, IssuancePolicy::default(), None, None, &[])?;
    let bundle = setup.service.current().authority().bundle().clone();
    let ca_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the CA")?;
    let ca_url = format!("https://{}", ca_listener.local_addr()?);
    let stop = CancellationToken::new();
    let ca_task = tokio::spawn(hush_ca::serve(setup.service, ca_listener, setup.options, {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));

    // Every sidecar's inbound port is bound first, so that sidecars can be told where the
    // services they call listen before any of them runs.
    let mut inbound_listeners = HashMap::new();
    for service in &mesh.services {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("cannot bind a sidecar's inbound port")?;
        inbound_listeners.insert(service.name.clone(), listener);
    }
    let inbound_addrs: HashMap<String, SocketAddr> = inbound_listeners
        .iter()
        .map(|(name, l)| Ok((name.clone(), l.local_addr()?)))
        .collect::<std::io::Result<_>>()?;

    // The policy is copied next to the CA, where the sidecars watch it: editing the copy
    // while the mesh runs shows a live reload.
    let policy_path = match &mesh.policy {
        Some(relative) => {
            let copy = root.join("policy.yaml");
            let text = match &args.file {
                Some(file) => {
                    let source = file.parent().unwrap_or(Path::new(".")).join(relative);
                    std::fs::read_to_string(&source).with_context(|| {
                        format!("{origin}: policy: cannot read {}", source.display())
                    })?
                }
                None => DEFAULT_POLICY.to_string(),
            };
            std::fs::write(&copy, text)
                .with_context(|| format!("cannot write {}", copy.display()))?;
            Some(copy)
        }
        None => None,
    };

    let tokens = JoinTokenStore::new(ca_dir.tokens_dir());
    let mut running = Vec::new();
    let mut sidecars = Vec::new();
    for service in &mesh.services {
        let id = ids[&service.name].clone();
        let workdir = root.join(&service.name);
        std::fs::create_dir_all(&workdir)?;
        let token = tokens.mint(&id, Duration::from_secs(600), false)?;
        write_private(&workdir.join("token"), &token.token)?;
        let app = crate::echo::start(service.name.clone(), stop.clone()).await?;
        let config = ProxyConfig {
            ca: CaConfig {
                address: ca_url.clone(),
                trust_bundle: ca_dir.bundle_path(),
                token_file: workdir.join("token"),
                certificate_ttl: None,
                bundle_refresh: Duration::from_secs(300),
                bundle_cache: None,
                reattest: None,
            },
            inbound: Some(InboundConfig {
                listen: inbound_addrs[&service.name],
                app,
                protocol: Protocol::Detect,
                captured: false,
                protected_headers: Vec::new(),
            }),
            outbound: service
                .calls
                .iter()
                .map(|callee| OutboundConfig {
                    listen: ([127, 0, 0, 1], 0).into(),
                    upstream: inbound_addrs[callee].to_string(),
                    identity: Identities(vec![ids[callee].clone()]),
                    protocol: Protocol::Detect,
                })
                .collect(),
            transparent: None,
            policy: policy_path.as_ref().map(|path| PolicyConfig {
                path: path.clone(),
                default: DefaultPolicy::Allow,
                optional: false,
            }),
            admin: AdminConfig {
                listen: ([127, 0, 0, 1], 0).into(),
                ..AdminConfig::default()
            },
            limits: Limits::default(),
            access_log: AccessLog::Denied,
            tracing: Default::default(),
            workload_api: None,
            shutdown_grace: Duration::from_secs(2),
        };
        let inbound = inbound_listeners.remove(&service.name);
        let proxy = Proxy::bind_with(config, inbound)
            .await
            .with_context(|| format!("cannot start {}'s sidecar", service.name))?;
        let addresses = proxy.addresses();
        running.push(Running {
            name: service.name.clone(),
            id,
            app,
            inbound: inbound_addrs[&service.name],
            admin: addresses.admin,
            calls: service
                .calls
                .iter()
                .cloned()
                .zip(addresses.outbound.iter().copied())
                .collect(),
        });
        let mut status = proxy.status();
        let name = service.name.clone();
        let stopped = stop.clone();
        sidecars.push((
            name,
            tokio::spawn(async move { proxy.run(async move { stopped.cancelled().await }).await }),
            async move { status.wait_for(|s| s.svid.is_some()).await.is_ok() },
        ));
    }
    let mut tasks = Vec::new();
    for (name, task, ready) in sidecars {
        match tokio::time::timeout(READY_TIMEOUT, ready).await {
            Ok(true) => {}
            _ => bail!("{name}'s sidecar did not get its certificate from the CA in time"),
        }
        tasks.push(task);
    }

    print_mesh(&origin, &trust_domain, &ca_url, &ca_dir, created, &running);
    let demo = pick_demo(&mesh, &running);
    if let Some((from, to, listener, path)) = demo {
        demonstrate(from, to, listener, &path, &running, &bundle, &ids).await;
        if let (Some(policy), Some(denied)) = (
            &policy_path,
            mesh.demo.as_ref().and_then(|d| d.denied_path.as_deref()),
        ) {
            demonstrate_policy(from, to, listener, denied, policy).await;
        }
        if !args.once {
            say(&format!(
                "\nTry it yourself:\n  curl http://{listener}{path}\n  curl http://{}/certs\n  curl http://{}/metrics",
                from.admin, to.admin
            ));
            if let Some(policy) = &policy_path {
                say(&format!(
                    "  curl http://{}/policy\n  edit {} (the sidecars reload it within a second)",
                    to.admin,
                    policy.display()
                ));
            }
        }
    }

    if !args.once {
        // Installed before the line that asks for it (see `shutdown::signal`); until then,
        // while the mesh starts and demonstrates itself, Ctrl-C keeps its default action.
        let shutdown = shutdown::signal();
        say("\nPress Ctrl-C to stop.");
        tokio::select! {
            () = shutdown => {}
            () = stop.cancelled() => {}
        }
    }
    stop.cancel();
    for task in tasks {
        task.await.context("a sidecar task failed")??;
    }
    ca_task.await.context("the CA task failed")??;
    Ok(())
}

/// Checks names and calls; returns each service's SPIFFE ID.
fn check_mesh(mesh: &Mesh, trust_domain: &TrustDomain) -> Result<HashMap<String, SpiffeId>> {
    if mesh.services.is_empty() {
        bail!("services: the mesh has no services");
    }
    let mut ids = HashMap::new();
    for (i, service) in mesh.services.iter().enumerate() {
        let id = SpiffeId::from_segments(
            trust_domain,
            &["ns", &service.namespace, "sa", &service.name],
        )
        .with_context(|| format!("services[{i}]: {:?} cannot name a workload", service.name))?;
        if ids.insert(service.name.clone(), id).is_some() {
            bail!("services[{i}].name: {:?} appears twice", service.name);
        }
    }
    for (i, service) in mesh.services.iter().enumerate() {
        for callee in &service.calls {
            if !ids.contains_key(callee) {
                bail!("services[{i}].calls: {callee:?} is not a service of this mesh");
            }
        }
    }
    if let Some(demo) = &mesh.demo {
        let calls = mesh
            .services
            .iter()
            .find(|s| s.name == demo.from)
            .is_some_and(|s| s.calls.contains(&demo.to));
        if !calls {
            bail!(
                "demo: {:?} does not call {:?} (add it to {0:?}'s calls)",
                demo.from,
                demo.to
            );
        }
        if !demo.path.starts_with('/') {
            bail!("demo.path: {:?} must start with /", demo.path);
        }
        if let Some(denied) = &demo.denied_path
            && !denied.starts_with('/')
        {
            bail!("demo.denied_path: {denied:?} must start with /");
        }
    }
    Ok(ids)
}

fn pick_demo<'a>(
    mesh: &Mesh,
    running: &'a [Running],
) -> Option<(&'a Running, &'a Running, SocketAddr, String)> {
    let (from, to, path) = match &mesh.demo {
        Some(demo) => (demo.from.clone(), demo.to.clone(), demo.path.clone()),
        None => {
            let caller = mesh.services.iter().find(|s| !s.calls.is_empty())?;
            (caller.name.clone(), caller.calls[0].clone(), default_path())
        }
    };
    let from = running.iter().find(|r| r.name == from)?;
    let to = running.iter().find(|r| r.name == to)?;
    let listener = from
        .calls
        .iter()
        .find(|(callee, _)| *callee == to.name)
        .map(|(_, addr)| *addr)?;
    Some((from, to, listener, path))
}

fn print_mesh(
    origin: &str,
    trust_domain: &TrustDomain,
    ca_url: &str,
    ca_dir: &CaDir,
    created: bool,
    running: &[Running],
) {
    say(&format!(
        "hush up: a mesh of {} services on loopback, trust domain {trust_domain}, from {origin}\n",
        running.len()
    ));
    let origin = if created { "new" } else { "reused" };
    say(&format!(
        "  {:<12}{ca_url}  ({origin}; files in {})",
        "CA",
        ca_dir.path().display()
    ));
    for service in running {
        say(&format!("  {:<12}{}", service.name, service.id));
        say(&format!(
            "  {:<12}app {}   sidecar: inbound {} (mutual TLS), admin http://{}",
            "", service.app, service.inbound, service.admin
        ));
        for (callee, listener) in &service.calls {
            say(&format!(
                "  {:<12}calls {callee} at http://{listener} (plaintext to its own sidecar)",
                ""
            ));
        }
    }
}

async fn demonstrate(
    from: &Running,
    to: &Running,
    listener: SocketAddr,
    path: &str,
    running: &[Running],
    bundle: &TrustBundle,
    ids: &HashMap<String, SpiffeId>,
) {
    say(&format!(
        "\nOne call through the mesh: {from} → {to}\n  \
         {from}'s app  --plaintext-->  {from}'s sidecar  ==mutual TLS 1.3==>  {to}'s sidecar  \
         --plaintext-->  {to}'s app\n  GET http://{listener}{path}",
        from = from.name,
        to = to.name
    ));
    match http_get(listener, path).await {
        Ok((status, body)) => {
            say(&format!("  {status}, and {}'s app answered:", to.name));
            for line in body.lines() {
                say(&format!("    | {line}"));
            }
            say(&format!(
                "  {}'s sidecar verified {}'s certificate (chain, validity, SPIFFE ID) and told its app \
                 who called; {}'s sidecar checked that {} answered.",
                to.name, from.name, from.name, to.id
            ));
        }
        Err(e) => say(&format!("  the call failed: {e:#}")),
    }

    say(&format!(
        "\nWhat the mesh refuses, at {}'s sidecar ({}):",
        to.name, to.inbound
    ));
    match plaintext_probe(to.inbound).await {
        Ok(answer) => say(&format!("  plaintext HTTP:            {answer}")),
        Err(e) => say(&format!("  plaintext HTTP:            {e:#}")),
    }
    match without_certificate(to.inbound, bundle, to.id.clone()).await {
        Ok(story) => say(&format!("  a caller with no certificate:\n    {story}")),
        Err(e) => say(&format!("  a caller with no certificate: {e}")),
    }
    let impostor = running
        .iter()
        .find(|r| r.name != to.name)
        .map(|r| ids[&r.name].clone());
    if let Some(expected) = impostor {
        match expect_identity(to.inbound, bundle, expected.clone()).await {
            Ok(()) => say("  a caller expecting another identity: unexpectedly accepted"),
            Err(reason) => say(&format!(
                "  a caller that expects {expected} there:\n    refused: {reason}"
            )),
        }
    }
}

/// A call the policy denies, and where the policy lives.
async fn demonstrate_policy(
    from: &Running,
    to: &Running,
    listener: SocketAddr,
    path: &str,
    policy: &Path,
) {
    say(&format!(
        "\nIdentity policy ({}), enforced by {}'s sidecar:\n  GET http://{listener}{path}",
        policy.display(),
        to.name
    ));
    match http_get(listener, path).await {
        Ok((status, body)) => say(&format!("  {status}: {}", body.trim())),
        Err(e) => say(&format!("  the call failed: {e:#}")),
    }
    say(&format!(
        "  {}'s sidecar logged the decision with {}'s identity; `hush policy explain` shows why.",
        to.name, from.name
    ));
}

/// A plain HTTP/1.1 GET; returns the status line and the body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(String, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .context("no answer within 10 s")??;
    let status = format!("{:?} {}", response.version(), response.status());
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends a plaintext request to a sidecar's mTLS port; returns the answer's first body line.
async fn plaintext_probe(addr: SocketAddr) -> Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .context("no answer")??;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(format!("{status}: {body}"))
}

/// Dials `addr` with mutual TLS expecting `expected`; the error says why it was refused.
async fn expect_identity(
    addr: SocketAddr,
    bundle: &TrustBundle,
    expected: SpiffeId,
) -> Result<(), String> {
    let verifier = SpiffeServerVerifier::new(bundle, vec![expected]).map_err(|e| e.to_string())?;
    let config = hush_tls::client_config(verifier, None, &[]).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(HandshakeFailure::from_io(&e).to_string()),
    }
}

/// Dials `addr` without a client certificate, expecting `expected`: the handshake completes on
/// the client's side (TLS 1.3 sends the client's certificate last), so the negotiated
/// parameters can be shown before the server's refusal arrives.
async fn without_certificate(
    addr: SocketAddr,
    bundle: &TrustBundle,
    expected: SpiffeId,
) -> Result<String> {
    let verifier = SpiffeServerVerifier::new(bundle, vec![expected.clone()])?;
    let config = hush_tls::client_config(verifier, None, &[b"http/1.1"])?;
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(tls) => tls,
        Err(e) => return Ok(format!("refused: {}", HandshakeFailure::from_io(&e))),
    };
    let (_, session) = tls.get_ref();
    let version = session
        .protocol_version()
        .map_or_else(|| "?".to_string(), |v| format!("{v:?}").replace('_', "."));
    let suite = session
        .negotiated_cipher_suite()
        .map_or_else(|| "?".to_string(), |s| format!("{:?}", s.suite()));
    let group = session
        .negotiated_key_exchange_group()
        .map_or_else(|| "?".to_string(), |g| format!("{:?}", g.name()));
    let mut story = format!(
        "hello: {version}, key exchange {group}, cipher {suite}; the server proved {expected}"
    );
    let _ = tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut byte)).await {
        Ok(Err(e)) => story.push_str(&format!(
            ";\n    then it refused this caller: {}",
            HandshakeFailure::from_io(&e)
        )),
        Ok(Ok(_)) => story.push_str("; then it answered (it should not have)"),
        Err(_) => story.push_str("; then nothing"),
    }
    Ok(story)
}

/// Join tokens are secrets: written for the owner only.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
