//! The identity manager against a fake CA ([`super::fake`]), in paused tokio time: the first
//! certificate with the token, renewal at half-life with the current certificate, the fallback to
//! the token, backoff while the CA is away, what is refused, the trust bundle, and shutdown.
//!
//! Tokio's clock is paused and moves only when every task waits, straight to the next timer, so
//! an hour of certificate life passes in milliseconds and every wait is measured exactly. The
//! manager reads a wall clock that follows tokio's from a fixed time ([`TestClock`]), so nothing
//! depends on the machine's clock or speed.

use hush_identity::{DenyList, TrustDomain};
use hush_tls::FailureReason;
use tokio::task::JoinHandle;

use super::fake::{
    ADDRESS, Answer, Call, CallKind, FakeCa, TRUST_DOMAIN, TestClock, WORKLOAD, foreign_root,
};
use super::*;

const TOKEN: &str = "hushjt.test.token";
/// How long the fake CA's certificates live, unless a test says otherwise.
const LIFETIME: Duration = Duration::from_secs(3600);
const IMPOSTOR: &str = "spiffe://test.example/ns/shop/sa/impostor";

/// A sidecar's identity manager, its fake CA, and what the rest of the sidecar would see.
struct Sidecar {
    ca: FakeCa,
    clock: TestClock,
    config: CaConfig,
    trust: TrustStore,
    credentials: CredentialStore,
    metrics: Metrics,
    status: watch::Receiver<IdentityStatus>,
    /// Taken by [`Self::start`].
    status_tx: Option<watch::Sender<IdentityStatus>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

// === impl Sidecar ===

impl Sidecar {
    /// A sidecar with a token in its token file, trusting the fake CA's root, whose bundle
    /// refresh comes once a day. Not started.
    fn new() -> Self {
        Self::with_bundle_refresh(Duration::from_secs(24 * 3600))
    }

    fn with_bundle_refresh(bundle_refresh: Duration) -> Self {
        let clock = TestClock::new();
        let credentials = CredentialStore::new();
        let ca = FakeCa::new(clock, credentials.clone());
        let trust_domain: TrustDomain = TRUST_DOMAIN.parse().unwrap();
        let trust = TrustStore::new(TrustBundle::new(trust_domain, ca.bundle()).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let config = CaConfig {
            address: ADDRESS.to_string(),
            trust_bundle: dir.path().join("bundle.pem"),
            token_file,
            certificate_ttl: None,
            bundle_refresh,
            bundle_cache: None,
            reattest: None,
        };
        let (status_tx, status) = watch::channel(IdentityStatus::default());
        Self {
            ca,
            clock,
            config,
            trust,
            credentials,
            metrics: Metrics::new(),
            status,
            status_tx: Some(status_tx),
            stop: CancellationToken::new(),
            task: None,
            _dir: dir,
        }
    }

    fn token_file(&self) -> &Path {
        &self.config.token_file
    }

    /// A manager over this sidecar's CA, stores and metrics, publishing to `status`.
    fn manager(&self, status: watch::Sender<IdentityStatus>) -> IdentityManager<FakeCa, TestClock> {
        IdentityManager::with_certifier(
            self.ca.clone(),
            self.clock,
            self.config.clone(),
            self.trust.clone(),
            self.credentials.clone(),
            status,
            self.metrics.clone(),
        )
    }

    /// A manager to call [`IdentityManager::attempt`] on directly; its status goes nowhere.
    fn lone_manager(&self) -> IdentityManager<FakeCa, TestClock> {
        self.manager(watch::channel(IdentityStatus::default()).0)
    }

    /// Runs the manager, as the sidecar does.
    fn start(&mut self) {
        let status = self.status_tx.take().expect("started once");
        let manager = self.manager(status);
        self.task = Some(tokio::spawn(manager.run(self.stop.clone())));
    }

    /// Waits for the first certificate.
    async fn certificate(&mut self) -> Arc<Svid> {
        self.wait_for_status("a certificate", |s| s.svid.is_some())
            .await
            .svid
            .unwrap()
    }

    /// Waits for a certificate other than `current`.
    async fn next_certificate(&mut self, current: &Svid) -> Arc<Svid> {
        self.wait_for_status("another certificate", |s| {
            s.svid
                .as_ref()
                .is_some_and(|svid| svid.serial != current.serial)
        })
        .await
        .svid
        .unwrap()
    }

    /// Waits for a failed attempt, and returns what the sidecar says of it.
    async fn error(&mut self) -> String {
        self.wait_for_status("a failed attempt", |s| s.last_error.is_some())
            .await
            .last_error
            .unwrap()
    }

    async fn wait_for_status(
        &mut self,
        what: &str,
        done: impl FnMut(&IdentityStatus) -> bool,
    ) -> IdentityStatus {
        within(what, self.status.wait_for(done))
            .await
            .expect("the manager runs")
            .clone()
    }

    /// The status as published now.
    fn status(&self) -> IdentityStatus {
        self.status.borrow().clone()
    }

    /// The leaf the sidecar presents now, to peers and to the CA.
    fn presented(&self) -> CertificateDer<'static> {
        self.credentials.current().expect("a certificate").cert[0].clone()
    }

    /// The value of the metric (a line `name value`) in the exposition.
    fn metric(&self, name: &str) -> f64 {
        let text = self.metrics.encode();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    }

    fn renewals(&self, result: &str) -> f64 {
        self.metric(&format!(
            "hush_certificate_renewals_total{{result=\"{result}\"}}"
        ))
    }

    /// The wall-clock time of `call`, as the manager's clock read it.
    fn wall_time(&self, call: &Call) -> SystemTime {
        self.clock.now() - (tokio::time::Instant::now() - call.at)
    }
}

/// The kinds of `calls`, in order.
fn kinds(calls: &[Call]) -> Vec<CallKind> {
    calls.iter().map(|c| c.kind).collect()
}

/// Waits for `future` for at most a day of (paused) tokio time: a test that waits for what never
/// happens fails instead of renewing forever.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(24 * 3600), future)
        .await
        .unwrap_or_else(|_| panic!("no {what} within a day"))
}

/// Lets every task that can run, run. Paused time moves only once all of them wait, so this
/// returns after the manager has finished what the last call set off.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn between(value: Duration, low: Duration, high: Duration) -> bool {
    low <= value && value <= high
}

#[tokio::test(start_paused = true)]
async fn the_first_certificate_comes_with_the_token() {
    let mut sidecar = Sidecar::new();
    sidecar.start();
    let svid = sidecar.certificate().await;

    let calls = sidecar.ca.calls();
    assert_eq!(kinds(&calls), [CallKind::Certify]);
    assert_eq!(calls[0].token.as_deref(), Some(TOKEN));
    assert_eq!(svid.spiffe_id.as_str(), WORKLOAD);
    assert_eq!(sidecar.presented(), svid.chain[0], "installed");
    let now = sidecar.clock.now();
    let status = sidecar.status();
    assert!(status.is_valid_at(now));
    assert_eq!(status.last_error, None);
    assert_eq!(status.not_ready_reason(now), None);
    // To be renewed at about half of the hour it was given.
    let life = svid.not_after.duration_since(now).unwrap();
    let renew_in = svid.renew_at.duration_since(now).unwrap();
    assert!(
        between(renew_in, life.mul_f64(0.4), life.mul_f64(0.6)),
        "{renew_in:?} of {life:?}"
    );
    assert_eq!(sidecar.renewals("ok"), 1.0);
    assert_eq!(
        sidecar.metric("hush_certificate_expiry_timestamp_seconds"),
        unix_seconds(svid.not_after) as f64
    );
}

#[tokio::test(start_paused = true)]
async fn renewal_comes_at_about_half_life_with_the_current_certificate() {
    let mut sidecar = Sidecar::new();
    sidecar.start();
    let first = sidecar.certificate().await;
    let second = sidecar.next_certificate(&first).await;
    let third = sidecar.next_certificate(&second).await;

    let calls = sidecar.ca.calls();
    assert_eq!(
        kinds(&calls),
        [CallKind::Certify, CallKind::Renew, CallKind::Renew],
        "renewals prove identity with the certificate, not the token"
    );
    assert_eq!(calls[1].presented.as_ref(), Some(&first.chain[0]));
    assert_eq!(calls[2].presented.as_ref(), Some(&second.chain[0]));
    // The CA's certificates live an hour, less the part of a second its seconds cut off.
    let (low, high) = (
        LIFETIME.mul_f64(0.4) - Duration::from_secs(1),
        LIFETIME.mul_f64(0.6) + Duration::from_millis(1),
    );
    for pair in calls.windows(2) {
        let waited = pair[1].at - pair[0].at;
        assert!(between(waited, low, high), "renewed after {waited:?}");
    }
    assert!(second.not_after > first.not_after && third.not_after > second.not_after);
    assert_eq!(sidecar.presented(), third.chain[0]);
    assert_eq!(sidecar.status().svid.unwrap().serial, third.serial);
    assert_eq!(sidecar.renewals("ok"), 3.0);
    assert_eq!(
        sidecar.metric("hush_certificate_expiry_timestamp_seconds"),
        unix_seconds(third.not_after) as f64
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_renewal_falls_back_to_the_token() {
    let mut sidecar = Sidecar::new();
    sidecar.start();
    let first = sidecar.certificate().await;
    sidecar.ca.answer_renewals(Answer::Refuse(
        tonic::Code::PermissionDenied,
        "the certificate is revoked",
    ));
    let second = sidecar.next_certificate(&first).await;

    let calls = sidecar.ca.calls();
    assert_eq!(
        kinds(&calls),
        [CallKind::Certify, CallKind::Renew, CallKind::Certify]
    );
    assert_eq!(calls[1].presented.as_ref(), Some(&first.chain[0]));
    assert_eq!(calls[2].token.as_deref(), Some(TOKEN));
    assert_eq!(second.spiffe_id, first.spiffe_id);
    assert_eq!(sidecar.presented(), second.chain[0]);
    assert_eq!(sidecar.status().last_error, None);
    assert_eq!(sidecar.renewals("ok"), 2.0);
}

#[tokio::test(start_paused = true)]
async fn when_renewal_and_token_both_fail_both_reasons_are_given() {
    let mut sidecar = Sidecar::new();
    sidecar.start();
    let first = sidecar.certificate().await;
    sidecar.ca.answer_renewals(Answer::Refuse(
        tonic::Code::PermissionDenied,
        "the certificate is revoked",
    ));
    sidecar.ca.answer_tokens(Answer::Refuse(
        tonic::Code::Unauthenticated,
        "the join token was already used",
    ));
    let error = sidecar.error().await;

    assert_eq!(
        error,
        "renewal with the current certificate failed: PermissionDenied: the certificate is \
         revoked; then attestation with the token failed: Unauthenticated: the join token was \
         already used"
    );
    // Still serving with the certificate it has.
    let status = sidecar.status();
    assert_eq!(status.svid.unwrap().serial, first.serial);
    assert_eq!(sidecar.presented(), first.chain[0]);
    assert_eq!(sidecar.renewals("ok"), 1.0);
    assert_eq!(sidecar.renewals("error"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_ca_is_retried_with_doubling_capped_jittered_backoff() {
    let mut sidecar = Sidecar::new();
    sidecar.start();
    let first = sidecar.certificate().await;
    sidecar.ca.answer_renewals(Answer::Unreachable);
    // The renewal at half-life, and nine retries.
    let renewals = within(
        "ten renewals",
        sidecar.ca.wait_for_calls(CallKind::Renew, 10),
    )
    .await;
    settle().await;

    let waits: Vec<Duration> = renewals.windows(2).map(|w| w[1].at - w[0].at).collect();
    let backoff = [1, 2, 4, 8, 16, 30, 30, 30, 30].map(Duration::from_secs);
    for (waited, backoff) in waits.iter().zip(backoff) {
        assert!(
            between(*waited, backoff.mul_f64(0.8), backoff.mul_f64(1.2)),
            "waited {waited:?} for a backoff of {backoff:?}: {waits:?}"
        );
    }
    assert!(
        waits.iter().zip(backoff).any(|(w, b)| *w != b),
        "the waits are jittered: {waits:?}"
    );
    // The token is not tried: it would not get through either.
    assert_eq!(sidecar.ca.calls_of(CallKind::Certify).len(), 1);
    for renewal in &renewals {
        assert_eq!(renewal.presented.as_ref(), Some(&first.chain[0]));
    }
    // Still serving with the first certificate, and saying why not another.
    let status = sidecar.status();
    assert_eq!(status.svid.as_ref().unwrap().serial, first.serial);
    assert_eq!(
        status.last_error.as_deref(),
        Some(
            format!("renewal failed: cannot reach the CA at {ADDRESS}: connection refused")
                .as_str()
        )
    );
    assert_eq!(status.not_ready_reason(sidecar.clock.now()), None);
    assert_eq!(sidecar.renewals("error"), 10.0);

    // The CA is back: the next retry renews, with the certificate.
    sidecar.ca.answer_renewals(Answer::Issue);
    let second = sidecar.next_certificate(&first).await;
    assert_eq!(sidecar.ca.calls_of(CallKind::Certify).len(), 1);
    assert_eq!(sidecar.status().last_error, None);
    assert_eq!(
        sidecar.metric("hush_certificate_expiry_timestamp_seconds"),
        unix_seconds(second.not_after) as f64
    );
    // Away again: the backoff starts over from a second.
    sidecar.ca.answer_renewals(Answer::Unreachable);
    let renewals = within(
        "two more renewals",
        sidecar.ca.wait_for_calls(CallKind::Renew, 13),
    )
    .await;
    let waited = renewals[12].at - renewals[11].at;
    assert!(
        between(
            waited,
            Duration::from_millis(800),
            Duration::from_millis(1200)
        ),
        "the first retry after a success came after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_certificate_is_replaced_with_the_token() {
    let mut sidecar = Sidecar::new();
    sidecar.ca.set_lifetime(Duration::from_secs(120));
    sidecar.start();
    let first = sidecar.certificate().await;
    sidecar.ca.answer_renewals(Answer::Unreachable);
    let second = sidecar.next_certificate(&first).await;

    let calls = sidecar.ca.calls();
    let renewals = sidecar.ca.calls_of(CallKind::Renew);
    assert!(renewals.len() > 3, "{calls:?}");
    for renewal in &renewals {
        assert!(sidecar.wall_time(renewal) < first.not_after, "{calls:?}");
    }
    let tokens = sidecar.ca.calls_of(CallKind::Certify);
    assert_eq!(tokens.len(), 2, "{calls:?}");
    assert!(sidecar.wall_time(&tokens[1]) >= first.not_after);
    assert_eq!(tokens[1].token.as_deref(), Some(TOKEN));
    assert_eq!(sidecar.presented(), second.chain[0]);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_naming_another_workload_is_refused_and_the_certificate_kept() {
    let mut sidecar = Sidecar::new();
    sidecar.start();
    let first = sidecar.certificate().await;
    sidecar.ca.answer_renewals(Answer::OtherIdentity(IMPOSTOR));
    let error = sidecar.error().await;

    assert!(
        error.starts_with("the certificate the CA sent does not check out: ")
            && error.contains(IMPOSTOR)
            && error.contains(WORKLOAD),
        "{error}"
    );
    assert_eq!(sidecar.status().svid.unwrap().serial, first.serial);
    assert_eq!(sidecar.presented(), first.chain[0]);
    // The CA answered; the token would get the same answer.
    assert_eq!(sidecar.ca.calls_of(CallKind::Certify).len(), 1);
    assert_eq!(sidecar.renewals("error"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn an_empty_token_file_is_named_and_the_ca_not_asked() {
    let mut sidecar = Sidecar::new();
    std::fs::write(sidecar.token_file(), " \n").unwrap();
    sidecar.start();
    let error = sidecar.error().await;

    assert_eq!(
        error,
        format!("the token file {} is empty", sidecar.token_file().display())
    );
    assert!(sidecar.ca.calls().is_empty());
    let status = sidecar.status();
    assert!(status.svid.is_none());
    let reason = status.not_ready_reason(sidecar.clock.now()).unwrap();
    assert!(
        reason.starts_with("no workload certificate yet") && reason.contains("is empty"),
        "{reason}"
    );

    // The token is written (a projected token can come late): the next attempt uses it.
    std::fs::write(sidecar.token_file(), TOKEN).unwrap();
    sidecar.certificate().await;
    let calls = sidecar.ca.calls();
    assert_eq!(kinds(&calls), [CallKind::Certify]);
    assert_eq!(calls[0].token.as_deref(), Some(TOKEN));
}

#[tokio::test(start_paused = true)]
async fn each_failure_is_its_own_kind_of_error() {
    let sidecar = Sidecar::new();
    let manager = sidecar.lone_manager();
    let ca = &sidecar.ca;
    let first = manager.attempt(None).await.unwrap();

    ca.answer_renewals(Answer::Unreachable);
    let error = manager.attempt(Some(&first)).await.unwrap_err();
    assert!(
        matches!(
            &error,
            AttemptError::RenewalUnavailable(CaError::Unreachable { code, .. })
                if *code == tonic::Code::Unavailable
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("renewal failed: cannot reach the CA at {ADDRESS}: connection refused")
    );

    ca.answer_renewals(Answer::Refuse(tonic::Code::PermissionDenied, "revoked"));
    ca.answer_tokens(Answer::Unreachable);
    let error = manager.attempt(Some(&first)).await.unwrap_err();
    let AttemptError::RenewalThenToken { renewal, token } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(renewal.code(), Some(tonic::Code::PermissionDenied));
    assert!(
        matches!(**token, AttemptError::Token(CaError::Unreachable { .. })),
        "{token:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "renewal with the current certificate failed: PermissionDenied: revoked; then \
             attestation with the token failed: cannot reach the CA at {ADDRESS}: connection \
             refused"
        )
    );

    std::fs::remove_file(sidecar.token_file()).unwrap();
    let error = manager.attempt(None).await.unwrap_err();
    assert!(
        matches!(error, AttemptError::TokenUnreadable { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with(&format!(
            "cannot read the token file {}: ",
            sidecar.token_file().display()
        )),
        "{error}"
    );
    std::fs::write(sidecar.token_file(), TOKEN).unwrap();

    ca.answer_tokens(Answer::EmptyChain);
    let error = manager.attempt(None).await.unwrap_err();
    assert!(matches!(error, AttemptError::EmptyChain), "{error:?}");
    assert_eq!(error.to_string(), "the CA sent an empty certificate chain");

    ca.answer_tokens(Answer::ForeignChain);
    let error = manager.attempt(None).await.unwrap_err();
    let AttemptError::Rejected { failure, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(failure.reason, FailureReason::UnknownIssuer);
    assert!(
        error
            .to_string()
            .starts_with("the certificate the CA sent does not check out: "),
        "{error}"
    );

    // A first certificate may name any workload of the trust domain; a renewal must name the
    // same one as before.
    ca.answer_tokens(Answer::OtherIdentity(IMPOSTOR));
    assert_eq!(
        manager.attempt(None).await.unwrap().spiffe_id.as_str(),
        IMPOSTOR
    );
    ca.answer_renewals(Answer::OtherIdentity(IMPOSTOR));
    let error = manager.attempt(Some(&first)).await.unwrap_err();
    assert!(
        matches!(&error, AttemptError::WrongIdentity { failure, .. }
            if failure.reason == FailureReason::UnexpectedIdentity),
        "{error:?}"
    );
    ca.answer_tokens(Answer::OtherIdentity(
        "spiffe://other.example/ns/shop/sa/backend",
    ));
    let error = manager.attempt(None).await.unwrap_err();
    assert!(
        matches!(&error, AttemptError::Rejected { failure, .. }
            if failure.reason == FailureReason::ForeignTrustDomain),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_bundle_refresh_applies_a_new_bundle_and_keeps_the_current_one_when_bad() {
    let mut sidecar = Sidecar::with_bundle_refresh(Duration::from_secs(300));
    sidecar.start();
    let first = sidecar.certificate().await;
    let original = sidecar.trust.bundle().roots().to_vec();

    // A bundle of another trust domain is refused: the current one stays.
    sidecar
        .ca
        .hand_out_bundle(vec![foreign_root("other.example")]);
    within("a refresh", sidecar.ca.wait_for_calls(CallKind::Bundle, 1)).await;
    settle().await;
    assert_eq!(sidecar.trust.bundle().roots(), original);
    // So does a CA that cannot be reached.
    sidecar.ca.answer_bundle_requests(Answer::Unreachable);
    within("a refresh", sidecar.ca.wait_for_calls(CallKind::Bundle, 2)).await;
    settle().await;
    assert_eq!(sidecar.trust.bundle().roots(), original);
    assert_eq!(sidecar.metric("hush_trust_bundle_updates_total"), 0.0);

    // A root rotation: the new root is trusted from the next refresh on.
    sidecar.ca.answer_bundle_requests(Answer::Issue);
    sidecar.ca.hand_out_bundle(original.clone());
    let new_root = sidecar.ca.rotate();
    let refreshes = within("a refresh", sidecar.ca.wait_for_calls(CallKind::Bundle, 3)).await;
    settle().await;
    assert_eq!(
        sidecar.trust.bundle().roots(),
        [original[0].clone(), new_root]
    );
    assert_eq!(sidecar.metric("hush_trust_bundle_updates_total"), 1.0);
    // The refreshes came every five minutes, before any renewal.
    for pair in refreshes.windows(2) {
        let waited = pair[1].at - pair[0].at;
        let every = Duration::from_secs(300);
        assert!(
            between(waited, every, every + Duration::from_millis(1)),
            "{waited:?}"
        );
    }
    assert_eq!(sidecar.status().svid.unwrap().serial, first.serial);
}

#[tokio::test(start_paused = true)]
async fn a_new_root_arrives_with_the_certificate_it_signed() {
    let mut sidecar = Sidecar::new();
    sidecar.start();
    let first = sidecar.certificate().await;
    let new_root = sidecar.ca.rotate();
    let second = sidecar.next_certificate(&first).await;

    // The renewed certificate chains only to the new root, which came with it.
    assert!(sidecar.trust.bundle().roots().contains(&new_root));
    assert_eq!(sidecar.presented(), second.chain[0]);
    assert_eq!(sidecar.metric("hush_trust_bundle_updates_total"), 1.0);
    assert_eq!(
        kinds(&sidecar.ca.calls()),
        [CallKind::Certify, CallKind::Renew],
        "no refresh came in between"
    );
}

#[tokio::test(start_paused = true)]
async fn stopping_ends_the_manager_while_the_ca_does_not_answer() {
    let mut sidecar = Sidecar::with_bundle_refresh(Duration::from_secs(1));
    sidecar.ca.answer_tokens(Answer::Hang);
    sidecar.ca.answer_bundle_requests(Answer::Hang);
    sidecar.start();
    within("a refresh", sidecar.ca.wait_for_calls(CallKind::Bundle, 1)).await;
    assert_eq!(sidecar.ca.calls_of(CallKind::Certify).len(), 1);

    sidecar.stop.cancel();
    let task = sidecar.task.take().unwrap();
    // Paused time jumps to this timeout at once if the manager does not end by itself.
    tokio::time::timeout(Duration::from_millis(1), task)
        .await
        .expect("the manager ends when stopped")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn stopping_ends_the_manager_while_it_waits_to_renew() {
    let mut sidecar = Sidecar::new();
    sidecar.start();
    sidecar.certificate().await;
    settle().await;

    sidecar.stop.cancel();
    let task = sidecar.task.take().unwrap();
    tokio::time::timeout(Duration::from_millis(1), task)
        .await
        .expect("the manager ends when stopped")
        .unwrap();
    assert_eq!(kinds(&sidecar.ca.calls()), [CallKind::Certify]);
}

#[tokio::test(start_paused = true)]
async fn a_tainted_intermediate_is_renewed_away_from_within_the_spread() {
    let refresh = Duration::from_secs(60);
    let mut sidecar = Sidecar::with_bundle_refresh(refresh);
    sidecar.start();
    let first = sidecar.certificate().await;
    let obtained_at = tokio::time::Instant::now();
    let tainted = sidecar.ca.signing_intermediate();
    let fresh = sidecar.ca.rotate_intermediate();
    let spread = Duration::from_secs(30);
    sidecar.ca.taint(&tainted, spread);

    let second = sidecar.next_certificate(&first).await;
    let renewed_at = tokio::time::Instant::now();
    // Long before half-life (30 min): within one refresh plus the spread.
    assert!(
        renewed_at - obtained_at <= refresh + spread,
        "renewed {:?} after the first certificate",
        renewed_at - obtained_at
    );
    assert_eq!(
        hush_identity::authority_id(&second.chain[1]).unwrap(),
        fresh,
        "the new certificate is under the new intermediate"
    );
    assert_eq!(
        sidecar.metric("hush_certificate_forced_renewals_total{reason=\"tainted\"}"),
        1.0
    );

    // Later refreshes repeat the taint; the certificate is no longer under it, so nothing more
    // is forced: the next renewal is at half-life again.
    within("refreshes", sidecar.ca.wait_for_calls(CallKind::Bundle, 5)).await;
    settle().await;
    assert_eq!(sidecar.status().svid.unwrap().serial, second.serial);
    assert_eq!(
        sidecar.metric("hush_certificate_forced_renewals_total{reason=\"tainted\"}"),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_lagging_replica_does_not_take_back_a_taint() {
    let refresh = Duration::from_secs(60);
    let mut sidecar = Sidecar::with_bundle_refresh(refresh);
    sidecar.start();
    let first = sidecar.certificate().await;
    // A replica of an older generation says nothing is tainted; the sidecar has seen
    // generation 5 (no taint), then sees 3 with a taint it must ignore as stale.
    sidecar.ca.set_generation(5);
    within("a refresh", sidecar.ca.wait_for_calls(CallKind::Bundle, 1)).await;
    let tainted = sidecar.ca.signing_intermediate();
    sidecar.ca.taint(&tainted, Duration::ZERO);
    sidecar.ca.set_generation(3);
    within("a refresh", sidecar.ca.wait_for_calls(CallKind::Bundle, 2)).await;
    settle().await;
    assert_eq!(
        sidecar.status().svid.unwrap().serial,
        first.serial,
        "an older generation's taint is ignored"
    );
    // The newer generation's taint is applied.
    sidecar.ca.set_generation(6);
    sidecar.ca.rotate_intermediate();
    let second = sidecar.next_certificate(&first).await;
    assert_ne!(second.serial, first.serial);
}

#[tokio::test(start_paused = true)]
async fn a_certificate_the_ca_refuses_at_the_handshake_falls_back_to_the_token() {
    let mut sidecar = Sidecar::new();
    sidecar.start();
    let first = sidecar.certificate().await;
    // The root of the current certificate was revoked with --force: the CA ends the handshake
    // with bad_certificate. That is not "the CA is down": the token still works.
    sidecar.ca.answer_renewals(Answer::RefuseCertificate);
    let second = sidecar.next_certificate(&first).await;
    assert_eq!(
        kinds(&sidecar.ca.calls()),
        [CallKind::Certify, CallKind::Renew, CallKind::Certify]
    );
    assert_eq!(second.spiffe_id.as_str(), WORKLOAD);
}

#[tokio::test(start_paused = true)]
async fn a_certificates_answer_adds_roots_but_never_takes_one_away() {
    let mut sidecar = Sidecar::new();
    sidecar.start();
    let first = sidecar.certificate().await;
    let original = sidecar.ca.bundle();
    let new_root = sidecar.ca.rotate();
    let second = sidecar.next_certificate(&first).await;
    assert!(sidecar.trust.bundle().roots().contains(&new_root));
    // A lagging replica answers the next renewal with the old bundle alone: the new root stays.
    sidecar.ca.hand_out_bundle(original.clone());
    sidecar.next_certificate(&second).await;
    assert!(
        sidecar.trust.bundle().roots().contains(&new_root),
        "a renewal's answer took a root away"
    );
}

/// What a CA past its `--reattest-after` says to a renewal with a certificate.
const ASKS_FOR_THE_TOKEN: &str = "spiffe://test.example/ns/shop/sa/backend was last attested 7 d \
                                  3 h ago, more than this CA's --reattest-after 7d: present the \
                                  token again";
/// A Kubernetes service-account token, as far as the sidecar can tell: not a join token.
const KUBERNETES_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2ln";

/// The kinds of `calls`, bundle refreshes left out.
fn certificate_calls(calls: &[Call]) -> Vec<CallKind> {
    kinds(calls)
        .into_iter()
        .filter(|kind| *kind != CallKind::Bundle)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn reattest_always_sends_the_token_with_every_renewal() {
    let mut sidecar = Sidecar::new();
    sidecar.config.reattest = Some(Reattest::Always);
    sidecar.start();
    let first = sidecar.certificate().await;
    let second = sidecar.next_certificate(&first).await;
    let third = sidecar.next_certificate(&second).await;

    let calls = sidecar.ca.calls();
    assert_eq!(
        kinds(&calls),
        [CallKind::Certify, CallKind::Certify, CallKind::Certify],
        "no renewal with the certificate"
    );
    assert!(calls.iter().all(|c| c.token.as_deref() == Some(TOKEN)));
    // Still at about half-life.
    let waited = calls[1].at - calls[0].at;
    assert!(
        between(
            waited,
            LIFETIME.mul_f64(0.4) - Duration::from_secs(1),
            LIFETIME.mul_f64(0.6)
        ),
        "{waited:?}"
    );
    assert_eq!(sidecar.presented(), third.chain[0]);
}

#[tokio::test(start_paused = true)]
async fn a_kubernetes_token_is_sent_with_every_renewal_unless_told_otherwise() {
    let mut sidecar = Sidecar::new();
    std::fs::write(sidecar.token_file(), KUBERNETES_TOKEN).unwrap();
    sidecar.start();
    let first = sidecar.certificate().await;
    sidecar.next_certificate(&first).await;
    let calls = sidecar.ca.calls();
    assert_eq!(kinds(&calls), [CallKind::Certify, CallKind::Certify]);
    assert_eq!(calls[1].token.as_deref(), Some(KUBERNETES_TOKEN));

    // `when_asked` keeps the certificate for renewals, whatever the token.
    let mut asked = Sidecar::new();
    std::fs::write(asked.token_file(), KUBERNETES_TOKEN).unwrap();
    asked.config.reattest = Some(Reattest::WhenAsked);
    asked.start();
    let first = asked.certificate().await;
    asked.next_certificate(&first).await;
    assert_eq!(
        kinds(&asked.ca.calls()),
        [CallKind::Certify, CallKind::Renew]
    );
}

#[tokio::test(start_paused = true)]
async fn when_asked_the_token_goes_only_when_the_ca_asks_for_it() {
    // A join token: renewals present the certificate until the CA asks for the token.
    let mut sidecar = Sidecar::new();
    sidecar.start();
    let first = sidecar.certificate().await;
    let second = sidecar.next_certificate(&first).await;
    assert_eq!(
        kinds(&sidecar.ca.calls()),
        [CallKind::Certify, CallKind::Renew]
    );

    // The join token was single-use and is gone; the CA's --reattest-after has passed.
    std::fs::write(sidecar.token_file(), "").unwrap();
    sidecar.ca.answer_renewals(Answer::Refuse(
        tonic::Code::Unauthenticated,
        ASKS_FOR_THE_TOKEN,
    ));
    let error = sidecar.error().await;
    assert!(
        error.starts_with("renewal with the current certificate failed: Unauthenticated: ")
            && error.contains("present the token again")
            && error.ends_with(&format!(
                "; then the token file {} is empty",
                sidecar.token_file().display()
            )),
        "{error}"
    );
    // Still serving with the certificate it has.
    assert_eq!(sidecar.status().svid.unwrap().serial, second.serial);

    // A new token: the next retry attests with it.
    std::fs::write(sidecar.token_file(), "hushjt.fresh.token\n").unwrap();
    let third = sidecar.next_certificate(&second).await;
    let calls = sidecar.ca.calls();
    let last = calls.last().unwrap();
    assert_eq!(last.kind, CallKind::Certify);
    assert_eq!(last.token.as_deref(), Some("hushjt.fresh.token"));
    assert_eq!(sidecar.presented(), third.chain[0]);
    assert_eq!(sidecar.status().last_error, None);
}

#[tokio::test(start_paused = true)]
async fn the_deny_list_comes_with_the_bundle_and_a_revoked_certificate_is_renewed_at_once() {
    let refresh = Duration::from_secs(60);
    let mut sidecar = Sidecar::with_bundle_refresh(refresh);
    sidecar.start();
    let first = sidecar.certificate().await;
    let obtained_at = tokio::time::Instant::now();

    // The CA revokes the sidecar's certificate and refuses to renew it; the token still works.
    let mut deny = DenyList::new();
    deny.deny_serial_hex(&first.serial).unwrap();
    sidecar.ca.deny(deny.clone(), 1);
    sidecar.ca.answer_renewals(Answer::Refuse(
        tonic::Code::PermissionDenied,
        "certificate 01 is revoked (hush ca revoke-identity on 2030-03-17T00:00:00Z)",
    ));
    let second = sidecar.next_certificate(&first).await;

    // Within one refresh: the list is in the trust store both verifiers read, and the
    // certificate it names was replaced long before half-life.
    assert!(tokio::time::Instant::now() - obtained_at <= refresh + Duration::from_millis(1));
    assert_eq!(*sidecar.trust.deny_list(), deny);
    assert!(sidecar.trust.deny_list().denies(&first.chain[0]).is_some());
    assert_eq!(sidecar.trust.deny_list().denies(&second.chain[0]), None);
    assert_eq!(
        certificate_calls(&sidecar.ca.calls()),
        [CallKind::Certify, CallKind::Renew, CallKind::Certify]
    );
    assert_eq!(
        sidecar.metric("hush_certificate_forced_renewals_total{reason=\"revoked\"}"),
        1.0
    );

    // A lagging replica's older deny-list is ignored; a newer one is applied, even empty.
    let bundles = sidecar.ca.calls_of(CallKind::Bundle).len();
    sidecar.ca.deny(DenyList::new(), 0);
    within(
        "a refresh",
        sidecar.ca.wait_for_calls(CallKind::Bundle, bundles + 1),
    )
    .await;
    settle().await;
    assert_eq!(*sidecar.trust.deny_list(), deny);
    sidecar.ca.deny(DenyList::new(), 2);
    within(
        "a refresh",
        sidecar.ca.wait_for_calls(CallKind::Bundle, bundles + 2),
    )
    .await;
    settle().await;
    assert!(sidecar.trust.deny_list().is_empty());
    assert_eq!(sidecar.status().svid.unwrap().serial, second.serial);
}

#[tokio::test(start_paused = true)]
async fn federated_trust_domains_follow_the_ca() {
    let mut sidecar = Sidecar::with_bundle_refresh(Duration::from_secs(300));
    sidecar.start();
    sidecar.certificate().await;
    assert!(sidecar.trust.federated_bundles().is_empty());

    let partner = |root| TrustBundle::new("partner.test".parse().unwrap(), vec![root]).unwrap();
    let first = foreign_root("partner.test");
    sidecar.ca.federate(vec![partner(first.clone())]);
    within("a refresh", sidecar.ca.wait_for_calls(CallKind::Bundle, 1)).await;
    settle().await;
    let federated = sidecar.trust.federated_bundles();
    assert_eq!(federated.len(), 1);
    assert_eq!(federated[0].trust_domain().as_str(), "partner.test");
    assert_eq!(federated[0].roots(), std::slice::from_ref(&first));

    // The mesh's own trust domain is never taken as a federated one: the set in force stays.
    sidecar.ca.federate(vec![
        partner(foreign_root("partner.test")),
        TrustBundle::new(
            TRUST_DOMAIN.parse().unwrap(),
            vec![foreign_root(TRUST_DOMAIN)],
        )
        .unwrap(),
    ]);
    within("a refresh", sidecar.ca.wait_for_calls(CallKind::Bundle, 2)).await;
    settle().await;
    assert_eq!(sidecar.trust.federated_bundles()[0].roots(), [first]);

    // The CA stops federating: so does the sidecar.
    sidecar.ca.federate(Vec::new());
    within("a refresh", sidecar.ca.wait_for_calls(CallKind::Bundle, 3)).await;
    settle().await;
    assert!(sidecar.trust.federated_bundles().is_empty());
}

/// The public key (the EC point) of a certificate.
fn public_key_of(certificate: &CertificateDer<'_>) -> Vec<u8> {
    let summary = x509_parser::parse_x509_certificate(certificate).unwrap().1;
    summary.public_key().subject_public_key.data.to_vec()
}

/// The public key of a PKCS#8 P-256 key.
fn public_key_of_key(key: &PrivatePkcs8KeyDer<'_>) -> Vec<u8> {
    let pair = rcgen::KeyPair::try_from(key.secret_pkcs8_der()).unwrap();
    pair.public_key_raw().to_vec()
}

#[tokio::test(start_paused = true)]
async fn the_apps_svid_has_a_key_of_its_own_and_rotates_with_the_sidecars() {
    let mut sidecar = Sidecar::new();
    let feed = WorkloadFeed::new(&sidecar.trust);
    let mut app = feed.svid.subscribe();
    let status = sidecar.status_tx.take().unwrap();
    let manager = sidecar.manager(status).with_workload_feed(feed.clone());
    sidecar.task = Some(tokio::spawn(manager.run(sidecar.stop.clone())));
    let first = sidecar.certificate().await;
    let app_first = within("the app's SVID", app.wait_for(Option::is_some))
        .await
        .unwrap()
        .clone()
        .unwrap();

    // The sidecar's identity, another certificate, another key: a renewal with the sidecar's
    // certificate, right after the sidecar's own.
    assert_eq!(app_first.spiffe_id, first.spiffe_id);
    assert_ne!(app_first.serial, first.serial);
    assert_ne!(app_first.chain[0], first.chain[0]);
    assert_eq!(
        public_key_of(&app_first.chain[0]),
        public_key_of_key(&app_first.key)
    );
    assert_ne!(
        public_key_of(&app_first.chain[0]),
        public_key_of(&sidecar.presented()),
        "the app's key is not the sidecar's"
    );
    let calls: Vec<Call> = sidecar
        .ca
        .calls()
        .into_iter()
        .filter(|c| c.kind != CallKind::Bundle)
        .collect();
    assert_eq!(kinds(&calls), [CallKind::Certify, CallKind::Renew]);
    assert_eq!(calls[1].presented.as_ref(), Some(&first.chain[0]));
    assert_eq!(calls[0].at, calls[1].at);
    // With the Workload API, the bundle (and its JWT keys) is fetched at once too.
    assert_eq!(sidecar.ca.calls_of(CallKind::Bundle).len(), 1);

    // Renewed with the sidecar's, with a fresh key again.
    let second = sidecar.next_certificate(&first).await;
    let app_second = within(
        "the app's next SVID",
        app.wait_for(|s| s.as_ref().is_some_and(|s| s.serial != app_first.serial)),
    )
    .await
    .unwrap()
    .clone()
    .unwrap();
    assert_ne!(app_second.serial, second.serial);
    assert_ne!(
        public_key_of_key(&app_second.key),
        public_key_of_key(&app_first.key)
    );
    assert_ne!(
        public_key_of(&app_second.chain[0]),
        public_key_of(&second.chain[0])
    );
    // The trust bundle was published for the app too.
    assert_eq!(feed.bundles.borrow().roots, sidecar.ca.bundle());
}

#[tokio::test(start_paused = true)]
async fn a_refused_app_svid_is_retried_and_the_app_keeps_what_it_has() {
    let mut sidecar = Sidecar::new();
    let feed = WorkloadFeed::new(&sidecar.trust);
    let mut app = feed.svid.subscribe();
    let status = sidecar.status_tx.take().unwrap();
    let manager = sidecar.manager(status).with_workload_feed(feed.clone());
    // Renewals (the app's SVID) cannot reach the CA: the sidecar has a certificate (with the
    // token), the app nothing yet.
    sidecar.ca.answer_renewals(Answer::Unreachable);
    sidecar.task = Some(tokio::spawn(manager.run(sidecar.stop.clone())));
    let _first = sidecar.certificate().await;
    settle().await;
    assert!(
        app.borrow().is_none(),
        "nothing handed out while none was issued"
    );
    // Then the CA issues again: the app's SVID comes with the next retry, without waiting
    // for the sidecar's own renewal.
    sidecar.ca.answer_renewals(Answer::Issue);
    let svid = within("the app's SVID", app.wait_for(Option::is_some))
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(svid.spiffe_id.as_str(), WORKLOAD);
    let renewals = sidecar.ca.calls_of(CallKind::Renew);
    assert!(renewals.len() >= 2, "retried: {}", renewals.len());
    assert_eq!(
        kinds(&sidecar.ca.calls_of(CallKind::Certify)),
        [CallKind::Certify]
    );
    // Well before the sidecar's own renewal, at about half of the hour.
    let waited = renewals[renewals.len() - 1].at - renewals[0].at;
    assert!(waited < Duration::from_secs(60), "{waited:?}");
}
