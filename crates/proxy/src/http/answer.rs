//! The sidecar's own answers (a short text for HTTP, a trailers-only status for gRPC), and why
//! forwarding failed, in words.

use std::error::Error as StdError;
use std::io;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use super::ProxyBody;
use crate::errors::error_chain;
use crate::tls::DialError;

/// The sidecar's own answer: a short text for HTTP, a trailers-only status for gRPC (whose
/// clients read `grpc-status`, not the HTTP status).
pub(super) fn error_response(status: StatusCode, grpc: bool, reason: &str) -> Response<ProxyBody> {
    let text = format!("hush: {reason}");
    let mut response = if grpc {
        let code = match status {
            // INVALID_ARGUMENT: the request itself cannot be taken as sent.
            StatusCode::BAD_REQUEST => "3",
            StatusCode::FORBIDDEN => "7",
            // UNIMPLEMENTED: no route serves the method's path.
            StatusCode::NOT_FOUND => "12",
            _ => "14",
        };
        let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static(code));
        if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(&text)) {
            headers.insert("grpc-message", message);
        }
        response
    } else {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(text + "\n"))));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    response
        .headers_mut()
        .insert("x-hush-error", HeaderValue::from_static("1"));
    response
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%` stays as it is.
fn grpc_percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Why forwarding failed, in words, and its `error.type`: the dial error when there is one
/// (`connect`: connection refused; `handshake`: handshake refused, wrong identity), else the
/// TLS error underneath, else the whole chain of causes (`forward`).
pub(super) fn describe_forward_error(
    error: &hyper_util::client::legacy::Error,
    destination: &str,
) -> (String, &'static str) {
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(cause) = source {
        if let Some(dial) = cause.downcast_ref::<DialError>() {
            let kind = match dial {
                DialError::Connect { .. } => "connect",
                DialError::Handshake { .. } => "handshake",
            };
            return (dial.to_string(), kind);
        }
        if let Some(io) = cause.downcast_ref::<io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<hush_tls::rustls::Error>())
        {
            let failure = hush_tls::explain_io_error(io);
            return (
                format!("the connection to {destination} failed: {failure}"),
                "forward",
            );
        }
        source = cause.source();
    }
    (
        format!(
            "the connection to {destination} failed: {}",
            error_chain(error)
        ),
        "forward",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_trailers_only_statuses() {
        let response = error_response(
            StatusCode::BAD_GATEWAY,
            true,
            "refused 127.0.0.1:1: 100% wrong",
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(
            response.headers()["grpc-message"],
            "hush: refused 127.0.0.1:1: 100%25 wrong"
        );
        let plain = error_response(StatusCode::BAD_GATEWAY, false, "no app");
        assert_eq!(plain.status(), StatusCode::BAD_GATEWAY);
    }
}
