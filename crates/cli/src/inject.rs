//! `hush inject`: the sidecar injector (mutating admission webhook).

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use hush_inject::InjectorConfig;

#[derive(Debug, Subcommand)]
pub(crate) enum InjectCommand {
    /// Answer one AdmissionReview (JSON, from a file or stdin) the way the webhook would, and
    /// print the answer: to see what injection does to a pod, or to debug a webhook offline.
    Review(ReviewArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ReviewArgs {
    /// The injector's configuration (YAML: image, ca_address, …).
    #[arg(long, env = "HUSH_INJECT_CONFIG")]
    config: PathBuf,
    /// The AdmissionReview to answer (default: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
}

pub(crate) fn run(command: InjectCommand) -> Result<()> {
    match command {
        InjectCommand::Review(args) => review(&args),
    }
}

fn load_config(path: &PathBuf) -> Result<InjectorConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the injector configuration {}", path.display()))?;
    InjectorConfig::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn review(args: &ReviewArgs) -> Result<()> {
    let config = load_config(&args.config)?;
    let body = match &args.input {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("cannot read the AdmissionReview from stdin")?;
            body
        }
    };
    let answer = hush_inject::review(&body, &config);
    let mut out = std::io::stdout().lock();
    out.write_all(&answer)?;
    out.write_all(b"\n")?;
    Ok(())
}
