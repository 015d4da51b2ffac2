//! What the app is told about its caller, and what no caller may tell it.
//!
//! The inbound side hands each request to the app with the caller's verified SPIFFE ID in
//! `x-hush-peer-identity` and Envoy's `x-forwarded-client-cert`. Whatever the caller wrote in
//! those headers (or in headers the configuration protects: `inbound.protected_headers`) is a
//! claim, not a proof, so it never reaches the app, in any spelling an app server might read
//! as the same header: any letter case, and any punctuation for `-` (CGI, WSGI and PHP turn
//! `-`, `_` and `.` alike into `_`), in the head and in trailers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The header carrying the caller's verified SPIFFE ID to the app.
pub const PEER_IDENTITY_HEADER: &str = "x-hush-peer-identity";
/// Envoy's header describing the caller's client certificate (`By=…;Hash=…;URI=…`).
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";

/// The identity headers an inbound connection adds to each request, made once per connection.
#[derive(Clone, Debug)]
pub(crate) struct IdentityHeaders {
    pub(crate) peer: HeaderValue,
    pub(crate) xfcc: HeaderValue,
}

impl IdentityHeaders {
    /// `peer_id` is the caller's verified SPIFFE ID, `own_id` this sidecar's, `peer_leaf` the
    /// caller's certificate (DER), whose SHA-256 goes into the XFCC `Hash` field.
    pub(crate) fn new(peer_id: &str, own_id: &str, peer_leaf: &[u8]) -> Option<Self> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, peer_leaf);
        let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Some(Self {
            peer: HeaderValue::from_str(peer_id).ok()?,
            xfcc: HeaderValue::from_str(&format!("By={own_id};Hash={hash};URI={peer_id}")).ok()?,
        })
    }

    /// Puts the sidecar's own values in place of whatever the caller sent.
    pub(crate) fn insert(&self, headers: &mut HeaderMap) {
        headers.insert(PEER_IDENTITY_HEADER, self.peer.clone());
        headers.insert(XFCC_HEADER, self.xfcc.clone());
    }
}

/// Headers only the sidecar may set: the identity headers and those the configuration names.
#[derive(Clone, Debug)]
pub(crate) struct ProtectedHeaders {
    /// Lower case, as `http` stores names: removed directly.
    names: Vec<HeaderName>,
}

impl ProtectedHeaders {
    /// The identity headers and `extra` (names checked by the configuration).
    pub(crate) fn new(extra: &[String]) -> Self {
        let mut names = vec![
            HeaderName::from_static(PEER_IDENTITY_HEADER),
            HeaderName::from_static(XFCC_HEADER),
        ];
        for name in extra {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
        Self { names }
    }

    /// Removes every protected header from `headers`, in every spelling.
    pub(crate) fn strip(&self, headers: &mut HeaderMap) {
        for name in &self.names {
            headers.remove(name);
        }
        // Other spellings need a name with punctuation other than `-`; most requests have none,
        // and then nothing is allocated.
        let respelt = |name: &HeaderName| {
            name.as_str()
                .bytes()
                .any(|b| !b.is_ascii_alphanumeric() && b != b'-')
                && self
                    .names
                    .iter()
                    .any(|protected| same_header(protected, name))
        };
        if headers.keys().any(respelt) {
            let doomed: Vec<HeaderName> = headers.keys().filter(|n| respelt(n)).cloned().collect();
            for name in doomed {
                headers.remove(name);
            }
        }
    }
}

/// Whether an app server could read `name` as `protected` (already lower case, as `http`
/// keeps names): the same letters and digits, any punctuation in place of `-`.
fn same_header(protected: &HeaderName, name: &HeaderName) -> bool {
    let (a, b) = (protected.as_str().as_bytes(), name.as_str().as_bytes());
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| a == b || (!a.is_ascii_alphanumeric() && !b.is_ascii_alphanumeric()))
}

/// A request body on its way to the app, with protected headers removed from its trailers (an
/// app server may merge trailers into the headers it shows the app).
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Incoming,
    protected: Option<std::sync::Arc<ProtectedHeaders>>,
}

impl RequestBody {
    /// `protected` is `None` on the outbound side, where the caller is the local app.
    pub(crate) fn new(
        inner: Incoming,
        protected: Option<std::sync::Arc<ProtectedHeaders>>,
    ) -> Self {
        Self { inner, protected }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match (polled, &this.protected) {
            (Poll::Ready(Some(Ok(frame))), Some(protected)) if frame.is_trailers() => {
                let mut trailers = frame.into_trailers().unwrap_or_default();
                protected.strip(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            (polled, _) => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_is_envoys_format() {
        let headers = IdentityHeaders::new(
            "spiffe://cluster.local/ns/shop/sa/frontend",
            "spiffe://cluster.local/ns/shop/sa/backend",
            b"abc",
        )
        .unwrap();
        assert_eq!(headers.peer, "spiffe://cluster.local/ns/shop/sa/frontend");
        // SHA-256("abc") is the FIPS 180-2 test vector.
        assert_eq!(
            headers.xfcc,
            "By=spiffe://cluster.local/ns/shop/sa/backend;\
             Hash=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad;\
             URI=spiffe://cluster.local/ns/shop/sa/frontend"
        );
    }

    /// Every spelling an app server could read as a protected header goes; look-alikes that
    /// differ in a letter stay.
    #[test]
    fn protected_headers_go_in_every_spelling() {
        let protected = ProtectedHeaders::new(&["X-User".to_string()]);
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-hush-peer-identity", "a"),
            ("X-Hush-Peer-Identity", "b"),
            ("x_hush_peer_identity", "c"),
            ("x.hush.peer.identity", "d"),
            ("x-hush_peer~identity", "e"),
            ("X-FORWARDED-CLIENT-CERT", "f"),
            ("x_forwarded_client_cert", "g"),
            ("x-user", "h"),
            ("x_user", "i"),
            ("x-hush-peer-identityy", "kept"),
            ("x-hush-peer-identit", "kept"),
            ("xhush-peer-identity", "kept"),
            ("x-users", "kept"),
            ("x-custom_header", "kept"),
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        protected.strip(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "x-custom_header",
                "x-hush-peer-identit",
                "x-hush-peer-identityy",
                "x-users",
                "xhush-peer-identity",
            ]
        );
        assert!(headers.values().all(|v| v == "kept"));
    }
}
