//! `hush up`: hush on this machine in one command.
//!
//! Today it starts a CA on loopback and has two example workloads (`frontend` and `backend`)
//! prove who they are with join tokens and receive their certificates over gRPC and TLS, exactly
//! as sidecars will. One renews with the certificate it holds; then a replayed token shows what a
//! refusal looks like, and the CA keeps serving.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hush_ca::{CaClient, CaDir, InitOptions, IssuancePolicy, JoinTokenStore, pem_certificate};
use hush_identity::{SpiffeId, TrustDomain};
use hush_tls::CredentialStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use crate::ca::{build_ca, shutdown_signal};
use crate::cert::{inspect_chain, render};

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Where to keep the CA and the workloads' certificates (default: a new temporary directory,
    /// removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Trust domain of the mesh.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Address for the CA (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Exit after the demonstration instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
}

const WORKLOADS: [&str; 2] = ["frontend", "backend"];

pub(crate) async fn run(args: UpArgs) -> Result<()> {
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
    let trust_domain = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("invalid --trust-domain {:?}", args.trust_domain))?;
    let ca_dir = CaDir::new(root.join("ca"));
    if ca_dir.bundle_path().exists() {
        say(&format!("using the CA in {}", ca_dir.path().display()));
    } else {
        ca_dir.init(&InitOptions::new(trust_domain.clone()))?;
        say(&format!(
            "created a CA for trust domain {trust_domain} in {}",
            ca_dir.path().display()
        ));
    }

    let setup = build_ca(&ca_dir, IssuancePolicy::default(), None, None, &[])?;
    let bundle = setup.service.authority().bundle().clone();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = format!("https://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(hush_ca::serve(
        setup.service,
        listener,
        setup.options,
        async move {
            let _ = stop_rx.await;
        },
    ));
    say(&format!(
        "CA serving hush.ca.v1 and istio.v1.auth on {address}"
    ));

    let client = CaClient::new(&address, bundle.roots())?;
    let tokens = JoinTokenStore::new(ca_dir.tokens_dir());
    let mut last_token = None;
    let mut first_identity = None;
    for name in WORKLOADS {
        let id = SpiffeId::from_segments(bundle.trust_domain(), &["ns", "demo", "sa", name])?;
        let token = tokens.mint(&id, Duration::from_secs(600), false)?;
        // The key is made here, in memory; only the CSR travels.
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
        let response = client
            .certify(&token.token, csr.der().to_vec(), None)
            .await
            .with_context(|| format!("the CA refused {name}"))?;
        let chain: Vec<CertificateDer<'static>> = response
            .cert_chain
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect();
        let out = root.join(name);
        std::fs::create_dir_all(&out)?;
        let pem: String = chain.iter().map(|c| pem_certificate(c)).collect();
        std::fs::write(out.join("svid.pem"), pem)?;
        say(&format!(
            "\n{name}: proved {id} with join token {} and received its certificate:",
            token.id
        ));
        print_block(&render(&inspect_chain(&chain)?));
        last_token = Some(token);
        if first_identity.is_none() {
            let current = CredentialStore::new();
            current.install(
                chain,
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
            first_identity = Some((name, current));
        }
    }

    if let Some((name, current)) = first_identity {
        // Renewal needs no token: the workload proves who it is with the certificate it holds.
        let renewing = CaClient::with_identity(&address, bundle.roots(), current)?;
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
        let renewed = renewing
            .renew(csr.der().to_vec(), None)
            .await
            .with_context(|| format!("the CA refused to renew {name}"))?;
        say(&format!(
            "\n{name}: renewed with its current certificate over mTLS, no token needed: \
             new serial {}, same identity {}",
            renewed.serial, renewed.spiffe_id
        ));
    }

    if let Some(token) = last_token {
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
        if let Err(status) = client.certify(&token.token, csr.der().to_vec(), None).await {
            say(&format!(
                "\nreplaying backend's single-use token is refused, as it should be:\n  {:?}: {}",
                status.code(),
                status.message()
            ));
        }
    }

    let kept = if args.dir.is_some() {
        ""
    } else {
        " (a temporary directory, removed on exit: pass --dir to keep it)"
    };
    say(&format!(
        "\ncertificates are in {}{kept}; every issuance and refusal is in {}",
        root.display(),
        ca_dir.audit_log().display()
    ));
    if args.once {
        let _ = stop_tx.send(());
    } else {
        say(&format!(
            "the CA keeps serving on {address} (trust bundle: {}); press Ctrl-C to stop",
            ca_dir.bundle_path().display()
        ));
        shutdown_signal().await;
        let _ = stop_tx.send(());
    }
    server.await.context("the CA task failed")??;
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn print_block(text: &str) {
    for line in text.lines() {
        say(&format!("  {line}"));
    }
}
