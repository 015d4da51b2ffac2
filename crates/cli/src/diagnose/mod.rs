//! `hush diagnose`: connect to a TLS port the way a sidecar would and tell the handshake as a
//! story, step by step, with the real values; when it fails, name the step and the reason in
//! one line, and say what to do.
//!
//! The steps: 1 the TCP connection; 2 the hellos (what this side offered, what the server
//! chose; read from the bytes on the wire, see [`hush_tls::hello`]); 3 the server's certificate
//! chain and its verification (chain, validity, SPIFFE ID); 4 whether the server asked for this
//! side's certificate, and whether it accepted it. Verification uses the same verifier as the
//! sidecar, wrapped to keep what it saw, and failures are worded by the same
//! [`hush_tls::HandshakeFailure`].
//!
//! * [`handshake`] connects and records what happened, judging nothing;
//! * [`story`] tells the recording as steps, with [`chain`] to explain a refused chain from the
//!   chain itself (an incomplete chain is not "another CA");
//! * [`hints`] holds the reasons a step can fail with, each with what to do, checked by the
//!   compiler;
//! * [`report`] prints the steps for people, or as JSON for scripts.

mod chain;
mod handshake;
mod hints;
pub(crate) mod public;
mod recorder;
mod report;
mod setup;
mod story;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use self::setup::{Setup, host_of};
use crate::parse_duration;

#[derive(Debug, Args)]
pub(crate) struct DiagnoseArgs {
    /// The address to check, HOST:PORT (usually a sidecar's inbound port; with --public, any
    /// HTTPS server's).
    target: String,
    /// Diagnose a public TLS server (a hush gateway, or any HTTPS server) as a browser would:
    /// versions, chain to Mozilla's roots (or --ca-file), name, expiry, OCSP stapling.
    #[arg(long, conflicts_with_all = ["bundle", "cert", "token_file", "expect_id"])]
    public: bool,
    /// With --public: the roots (PEM) to trust instead of Mozilla's, for a private CA.
    #[arg(long, requires = "public")]
    ca_file: Option<PathBuf>,
    /// The trust bundle (PEM) to verify the server with; without it the chain is shown but not
    /// verified.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// A certificate chain (PEM) to present, as a sidecar presents its own.
    #[arg(long, requires = "key", conflicts_with = "token_file")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// A join token or service-account token: first get a certificate from --ca with it.
    #[arg(long, requires = "ca")]
    token_file: Option<PathBuf>,
    /// The CA to get a certificate from (with --token-file), `https://host:port`.
    #[arg(long, requires = "token_file")]
    ca: Option<String>,
    /// The SPIFFE ID the server must prove (default: any of the bundle's trust domain).
    #[arg(long)]
    expect_id: Option<String>,
    /// The TLS server name to send (default: the target's host).
    #[arg(long)]
    server_name: Option<String>,
    /// How long connecting, and then the handshake, may each take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the report as JSON, for scripts.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: DiagnoseArgs) -> Result<bool> {
    if args.public {
        return run_public(&args).await;
    }
    let setup = Setup::from_args(&args).await?;
    let connection = handshake::observe(&args.target, &setup, args.timeout).await;
    let mut report = story::tell(&args.target, &setup, args.timeout, connection);
    report.ok = report.failure.is_none();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(
            report::render(&report, &setup.expectation(), "mutual TLS works").as_bytes(),
        )?;
    }
    out.flush()?;
    Ok(report.ok)
}

/// `hush diagnose --public`.
async fn run_public(args: &DiagnoseArgs) -> Result<bool> {
    let trust = match &args.ca_file {
        Some(path) => public::PublicTrust::from_file(path)?,
        None => public::PublicTrust::mozilla(),
    };
    let server_name = public::server_name_for(&args.target, args.server_name.as_deref())?;
    let diagnosis = public::diagnose(&args.target, server_name, &trust, args.timeout).await;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &diagnosis.report)?;
        writeln!(out)?;
    } else {
        out.write_all(diagnosis.render().as_bytes())?;
    }
    out.flush()?;
    Ok(diagnosis.report.ok)
}
