//! SPIFFE federation, the CA's side (decision 39): the CA publishes its trust domain's SPIFFE
//! bundle at a bundle endpoint, and fetches the bundles of the trust domains it federates with
//! from theirs, to hand them to sidecars with its own (`GetTrustBundle.federated`).
//!
//! * [`BundleEndpoint`] — `hush ca serve --bundle-endpoint-listen`: the `https_spiffe` profile
//!   (the server presents `spiffe://<trust domain>/hush/bundle-endpoint`, an X.509-SVID the CA
//!   issues to itself) or `https_web` (a Web PKI certificate from files).
//! * [`FederationSpec`], [`Federation`], [`follow_federation`] — `--federate-with`: one
//!   federated trust domain, its endpoint and how to authenticate it, and the loop that fetches
//!   its bundle at the refresh hint, keeping the last good one when a fetch fails.

mod endpoint;
mod fetch;

use std::path::PathBuf;
use std::str::FromStr;

use hush_identity::{SpiffeBundle, SpiffeId, TrustBundle, TrustDomain};
use rustls_pki_types::CertificateDer;

pub use self::endpoint::{
    BundleEndpoint, BundleEndpointOptions, DEFAULT_BUNDLE_REFRESH_HINT, EndpointProfile,
};
pub use self::fetch::{
    FETCH_TIMEOUT, FetchError, MAX_REFRESH_INTERVAL, MIN_REFRESH_INTERVAL, follow_federation,
    refresh_interval,
};

/// A federated trust domain's bundle as this CA last fetched it.
#[derive(Clone, Debug)]
pub struct FetchedBundle {
    /// The bundle.
    pub bundle: SpiffeBundle,
    /// When it was fetched (Unix seconds).
    pub fetched_at_unix: i64,
}

/// One `--federate-with` as given: a trust domain, its bundle endpoint's URL and how to
/// authenticate the endpoint. Files are named, not read yet ([`Federation::load`] reads them).
///
/// The text is `TD=URL` for the `https_web` profile (the endpoint's certificate verified with
/// Mozilla's roots), `TD=URL,ca-file=FILE` for `https_web` with a private Web CA, and
/// `TD=URL,endpoint-id=SPIFFE-ID,bundle=FILE` for `https_spiffe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederationSpec {
    /// The federated trust domain.
    pub trust_domain: TrustDomain,
    /// The bundle endpoint (`https://host[:port]/path`).
    pub url: http::Uri,
    /// How the endpoint is authenticated.
    pub profile: ProfileSpec,
}

/// How a bundle endpoint is authenticated, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProfileSpec {
    /// `https_web`: a Web PKI certificate for the URL's host, verified with Mozilla's roots or
    /// the roots in `ca_file`.
    Web {
        /// PEM roots of a private Web CA instead of Mozilla's.
        ca_file: Option<PathBuf>,
    },
    /// `https_spiffe`: an X.509-SVID naming `endpoint_id`, verified with the federated domain's
    /// roots: those of `bundle_file` until the first fetch, then the last fetched.
    Spiffe {
        /// The endpoint's SPIFFE ID, in the federated trust domain (a self-serving endpoint).
        endpoint_id: SpiffeId,
        /// The federated domain's bundle obtained out of band: PEM roots or SPIFFE bundle JSON.
        bundle_file: PathBuf,
    },
}

/// A `--federate-with` that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    /// The text does not follow `TD=URL[,key=value...]`.
    #[error("invalid --federate-with {spec:?}: {reason}")]
    Spec {
        /// What was given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A file it names cannot be read or used.
    #[error("--federate-with {trust_domain}: cannot use {what} {path}: {reason}")]
    File {
        /// The federated trust domain.
        trust_domain: TrustDomain,
        /// Which file (`bundle`, `ca-file`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The CA would federate with its own trust domain.
    #[error(
        "--federate-with {0}: that is this CA's own trust domain; federation is with other \
         trust domains"
    )]
    OwnTrustDomain(TrustDomain),
    /// Two `--federate-with` name the same trust domain.
    #[error("--federate-with {0} is given twice; one endpoint per trust domain")]
    Duplicate(TrustDomain),
}

// === impl FederationSpec ===

impl FromStr for FederationSpec {
    type Err = FederationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| FederationError::Spec {
            spec: text.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = text.split(',');
        let head = parts.next().unwrap_or_default();
        let (td, url) = head.split_once('=').ok_or_else(|| {
            bad("expected TD=URL, e.g. partner.example=https://bundle.partner.example/")
        })?;
        let trust_domain = TrustDomain::new(td)
            .map_err(|e| bad(&format!("{td:?} is not a trust domain name: {e}")))?;
        let url: http::Uri = url
            .parse()
            .map_err(|_| bad(&format!("{url:?} is not a URL")))?;
        if url.scheme_str() != Some("https") {
            return Err(bad("a bundle endpoint URL must be https://"));
        }
        let Some(authority) = url.authority() else {
            return Err(bad("the URL has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(bad(
                "a bundle endpoint URL must not hold a user name or password",
            ));
        }
        let (mut ca_file, mut endpoint_id, mut bundle_file) = (None, None, None);
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(&format!("{part:?} is not key=value")))?;
            let slot = match key {
                "ca-file" => &mut ca_file,
                "bundle" => &mut bundle_file,
                "endpoint-id" => &mut endpoint_id,
                _ => {
                    return Err(bad(&format!(
                        "unknown key {key:?}; the keys are endpoint-id, bundle (https_spiffe) \
                         and ca-file (https_web)"
                    )));
                }
            };
            if slot.replace(value.to_string()).is_some() {
                return Err(bad(&format!("{key} is given twice")));
            }
        }
        let profile = match (endpoint_id, bundle_file, ca_file) {
            (None, None, ca_file) => ProfileSpec::Web {
                ca_file: ca_file.map(PathBuf::from),
            },
            (Some(id), Some(bundle), None) => {
                let endpoint_id: SpiffeId = id
                    .parse()
                    .map_err(|e| bad(&format!("endpoint-id {id:?}: {e}")))?;
                if !endpoint_id.is_member_of(&trust_domain) || endpoint_id.path().is_empty() {
                    return Err(bad(&format!(
                        "endpoint-id {endpoint_id} must be a workload of {trust_domain} (hush \
                         fetches from self-serving endpoints only), e.g. \
                         spiffe://{trust_domain}/hush/bundle-endpoint"
                    )));
                }
                ProfileSpec::Spiffe {
                    endpoint_id,
                    bundle_file: PathBuf::from(bundle),
                }
            }
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(bad(
                    "https_spiffe needs both endpoint-id=SPIFFE-ID and bundle=FILE (the \
                     partner's bundle, to trust the endpoint until the first fetch)",
                ));
            }
            (Some(_), Some(_), Some(_)) => {
                return Err(bad(
                    "ca-file is for https_web; https_spiffe trusts the partner's bundle",
                ));
            }
        };
        Ok(Self {
            trust_domain,
            url,
            profile,
        })
    }
}

/// A federated trust domain ready to be fetched: its spec with the files it names read.
#[derive(Clone, Debug)]
pub struct Federation {
    spec: FederationSpec,
    auth: Auth,
}

#[derive(Clone, Debug)]
enum Auth {
    /// `https_web` with Mozilla's roots (`None`) or a private Web CA's.
    Web(Option<Vec<CertificateDer<'static>>>),
    /// `https_spiffe`: the endpoint's ID, and the bundle that verifies it before a fetch.
    Spiffe {
        endpoint_id: SpiffeId,
        bootstrap: TrustBundle,
    },
}

// === impl Federation ===

impl Federation {
    /// Reads the files `spec` names: the private Web CA's roots, or the bootstrap bundle (PEM
    /// roots, or SPIFFE bundle JSON) of the federated domain.
    pub fn load(spec: FederationSpec) -> Result<Self, FederationError> {
        let file_error = |what, path: &PathBuf, reason: String| FederationError::File {
            trust_domain: spec.trust_domain.clone(),
            what,
            path: path.clone(),
            reason,
        };
        let auth = match &spec.profile {
            ProfileSpec::Web { ca_file: None } => Auth::Web(None),
            ProfileSpec::Web {
                ca_file: Some(path),
            } => {
                let pem =
                    std::fs::read(path).map_err(|e| file_error("ca-file", path, e.to_string()))?;
                let roots = hush_identity::parse_pem_certificates(&pem)
                    .map_err(|e| file_error("ca-file", path, e.to_string()))?;
                Auth::Web(Some(roots))
            }
            ProfileSpec::Spiffe {
                endpoint_id,
                bundle_file,
            } => {
                let bytes = std::fs::read(bundle_file)
                    .map_err(|e| file_error("bundle", bundle_file, e.to_string()))?;
                let bootstrap = read_bootstrap(&spec.trust_domain, &bytes)
                    .map_err(|reason| file_error("bundle", bundle_file, reason))?;
                Auth::Spiffe {
                    endpoint_id: endpoint_id.clone(),
                    bootstrap,
                }
            }
        };
        Ok(Self { spec, auth })
    }

    /// The federated trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.spec.trust_domain
    }

    /// The bundle endpoint's URL.
    pub fn url(&self) -> &http::Uri {
        &self.spec.url
    }

    /// The profile's name as the standard spells it, with what authenticates the endpoint.
    pub fn describe(&self) -> String {
        match &self.auth {
            Auth::Web(None) => "https_web, Mozilla's roots".into(),
            Auth::Web(Some(_)) => "https_web, a private Web CA".into(),
            Auth::Spiffe { endpoint_id, .. } => format!("https_spiffe, endpoint {endpoint_id}"),
        }
    }

    /// Refuses federating with `own` trust domain, and a trust domain named twice.
    pub fn check_all(own: &TrustDomain, all: &[Federation]) -> Result<(), FederationError> {
        let mut seen = std::collections::BTreeSet::new();
        for federation in all {
            let td = federation.trust_domain();
            if td == own {
                return Err(FederationError::OwnTrustDomain(td.clone()));
            }
            if !seen.insert(td.clone()) {
                return Err(FederationError::Duplicate(td.clone()));
            }
        }
        Ok(())
    }
}

/// The bootstrap bundle of `bundle=FILE`: SPIFFE bundle JSON (what a partner's endpoint
/// serves) or PEM roots, for `trust_domain` either way.
fn read_bootstrap(trust_domain: &TrustDomain, bytes: &[u8]) -> Result<TrustBundle, String> {
    let json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if json {
        SpiffeBundle::parse(trust_domain, bytes)
            .map(|bundle| bundle.trust_bundle().clone())
            .map_err(|e| e.to_string())
    } else {
        TrustBundle::from_pem(bytes, Some(trust_domain)).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<FederationSpec, String> {
        text.parse::<FederationSpec>().map_err(|e| e.to_string())
    }

    #[test]
    fn reads_both_profiles() {
        let web = spec("partner.example=https://bundle.partner.example/td").unwrap();
        assert_eq!(web.trust_domain.as_str(), "partner.example");
        assert_eq!(web.url.path(), "/td");
        assert_eq!(web.profile, ProfileSpec::Web { ca_file: None });
        let private = spec("partner.example=https://b.example:8443/,ca-file=/ca.pem").unwrap();
        assert_eq!(
            private.profile,
            ProfileSpec::Web {
                ca_file: Some("/ca.pem".into())
            }
        );
        let spiffe = spec(
            "partner.example=https://127.0.0.1:9/,endpoint-id=spiffe://partner.example/hush/bundle-endpoint,bundle=/b.json",
        )
        .unwrap();
        assert!(matches!(spiffe.profile, ProfileSpec::Spiffe { .. }));
    }

    #[test]
    fn refuses_what_cannot_work() {
        for (text, words) in [
            ("partner.example", "expected TD=URL"),
            ("Partner=https://x/", "not a trust domain"),
            ("p.example=http://x/", "must be https"),
            ("p.example=https://user:pw@x/", "user name"),
            ("p.example=https://x/,color=blue", "unknown key"),
            ("p.example=https://x/,ca-file=a,ca-file=b", "given twice"),
            (
                "p.example=https://x/,endpoint-id=spiffe://p.example/e",
                "needs both",
            ),
            (
                "p.example=https://x/,endpoint-id=spiffe://other.example/e,bundle=f",
                "must be a workload of p.example",
            ),
            (
                "p.example=https://x/,endpoint-id=spiffe://p.example,bundle=f",
                "must be a workload",
            ),
            (
                "p.example=https://x/,endpoint-id=spiffe://p.example/e,bundle=f,ca-file=c",
                "ca-file is for https_web",
            ),
        ] {
            let err = spec(text).unwrap_err();
            assert!(err.contains(words), "{text}: {err}");
        }
    }
}
