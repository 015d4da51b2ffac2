//! What a message loses or gains at the hop: hop-by-hop headers stop here, only WebSocket
//! upgrades pass, an inbound request names one host, and hyper's client gets the absolute
//! target it needs.

use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};

pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether the request asks to switch to WebSocket, the one upgrade hush passes on. Any
/// other offer is dropped with the other hop-by-hop headers and the request goes on as a plain
/// one: after an `h2c` upgrade, say, the caller would speak HTTP/2 to the app through a byte
/// tunnel, with headers no sidecar ever read.
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    let mut offers = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|offer| !offer.is_empty())
        .peekable();
    offers.peek().is_some()
        && offers.all(|offer| offer.eq_ignore_ascii_case(b"websocket"))
        && connection_tokens(headers).iter().any(|t| t == "upgrade")
}

/// An inbound request names the host it is for once: a policy judging one host while the app
/// serves another would be a way around it. More than one Host header (RFC 9112 says to
/// refuse those), or a Host header that disagrees with the target's authority (HTTP/1's
/// absolute form, HTTP/2's `:authority`), is refused. A request a peer sidecar carried over
/// HTTP/2 for an HTTP/1.1 caller (`marked`) has the hop's address as its authority and the
/// caller's host in Host, which is what the app then sees alone.
pub(super) fn one_host<B>(request: &Request<B>, marked: bool) -> Result<(), String> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("the request has more than one Host header".to_owned());
    }
    match (host, request.uri().authority()) {
        (Some(host), Some(authority))
            if !marked
                && !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
        {
            Err(format!(
                "the request names two hosts: {authority} in its target and {} in its Host header",
                String::from_utf8_lossy(host.as_bytes())
            ))
        }
        _ => Ok(()),
    }
}

/// Removes the headers that describe one hop (RFC 9110, section 7.6.1), including those the
/// Connection header names. An upgrade keeps `Connection: upgrade` and `Upgrade`.
pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    for token in connection_tokens(headers) {
        if upgrading && token == "upgrade" {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            headers.remove(name);
        }
    }
    for name in ["keep-alive", "proxy-connection", "http2-settings"] {
        headers.remove(name);
    }
    // A message with a Transfer-Encoding is framed by it, never by its Content-Length (RFC
    // 9112, section 6.3); passing both on would let the next parser pick the other one.
    if headers.remove(header::TRANSFER_ENCODING).is_some() {
        headers.remove(header::CONTENT_LENGTH);
    }
    // `te: trailers` is how gRPC says it understands trailers; any other TE is per hop.
    if headers
        .get(header::TE)
        .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// hyper's client needs `http://authority/path`; an HTTP/1 request usually carries only the
/// path, with the authority in its Host header.
pub(super) fn make_absolute<B>(
    request: &mut Request<B>,
    fallback: &Authority,
) -> Result<(), String> {
    if request.uri().authority().is_some() && request.uri().scheme().is_some() {
        return Ok(());
    }
    let authority = match request.headers().get(header::HOST) {
        Some(host) => host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<Authority>().ok())
            .ok_or_else(|| "the Host header is not a valid host[:port]".to_string())?,
        None => request
            .uri()
            .authority()
            .cloned()
            .unwrap_or_else(|| fallback.clone()),
    };
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() =
        Uri::from_parts(parts).map_err(|e| format!("the request target is not valid: {e}"))?;
    Ok(())
}

/// A request a peer sidecar carried with its host in the Host header (marked `HTTP/2`): the
/// host becomes the target's authority again, the one place HTTP/2 names it, and the header
/// goes. Without a valid Host there is no host to give the app: refused.
pub(super) fn authority_from_host<B>(request: &mut Request<B>) -> Result<(), String> {
    let host = request
        .headers_mut()
        .remove(header::HOST)
        .ok_or_else(|| "the request was carried without its host".to_string())?;
    let authority = host
        .to_str()
        .ok()
        .and_then(|h| h.parse::<Authority>().ok())
        .ok_or_else(|| "the Host header is not a valid host[:port]".to_string())?;
    set_authority(request, &authority);
    Ok(())
}

pub(super) fn set_authority<B>(request: &mut Request<B>, authority: &Authority) {
    let mut parts = request.uri().clone().into_parts();
    parts.authority = Some(authority.clone());
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn a_host_carried_in_the_host_header_becomes_the_authority_alone() {
        let mut request = Request::get("http://127.0.0.1:15006/echo?x=1")
            .header(header::HOST, "shop.test")
            .body(())
            .unwrap();
        authority_from_host(&mut request).unwrap();
        assert_eq!(request.uri().to_string(), "http://shop.test/echo?x=1");
        assert!(request.headers().get(header::HOST).is_none());

        let mut no_host = Request::get("http://127.0.0.1:15006/").body(()).unwrap();
        assert_eq!(
            authority_from_host(&mut no_host).unwrap_err(),
            "the request was carried without its host"
        );
        let mut bad_host = Request::get("http://127.0.0.1:15006/")
            .header(header::HOST, "a b")
            .body(())
            .unwrap();
        assert!(authority_from_host(&mut bad_host).is_err());
    }

    #[test]
    fn hop_by_hop_headers_stop_here() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);

        let mut grpc = headers(&[("te", "trailers"), ("content-type", "application/grpc")]);
        remove_hop_by_hop(&mut grpc, false);
        assert_eq!(grpc.get("te").unwrap(), "trailers");
    }

    #[test]
    fn an_upgrade_keeps_its_headers() {
        let mut map = headers(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade(&map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map.get("connection").unwrap(), "upgrade");
        assert_eq!(map.get("upgrade").unwrap(), "websocket");
        assert!(map.get("x-hop").is_none());
        assert!(map.get("sec-websocket-key").is_some());
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn requests_become_absolute() {
        let fallback: Authority = "127.0.0.1:8080".parse().unwrap();
        let mut with_host = Request::builder()
            .uri("/api?x=1")
            .header("host", "shop.local")
            .body(())
            .unwrap();
        make_absolute(&mut with_host, &fallback).unwrap();
        assert_eq!(with_host.uri(), "http://shop.local/api?x=1");

        let mut without_host = Request::builder().uri("/").body(()).unwrap();
        make_absolute(&mut without_host, &fallback).unwrap();
        assert_eq!(without_host.uri(), "http://127.0.0.1:8080/");

        let mut h2 = Request::builder()
            .uri("http://backend:80/rpc")
            .body(())
            .unwrap();
        make_absolute(&mut h2, &fallback).unwrap();
        assert_eq!(h2.uri(), "http://backend:80/rpc");

        let mut bad = Request::builder()
            .uri("/")
            .header("host", "a b")
            .body(())
            .unwrap();
        assert!(
            make_absolute(&mut bad, &fallback)
                .unwrap_err()
                .contains("Host")
        );
    }
}
