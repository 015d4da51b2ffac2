//! The small matchers rules are compiled into: string patterns, SPIFFE ID patterns, method
//! sets, header names and request paths.
//!
//! Each is validated when the policy is read, so a pattern that could never match (a lower-case
//! method, a path with a query string, a principal without `spiffe://`) is an error with a
//! location instead of a rule that silently does nothing.

use std::borrow::Cow;
use std::fmt;

use hush_identity::{SpiffeId, TrustDomain};

/// One string pattern: `*` (anything), `prefix*`, `*suffix` or an exact value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StrMatch {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
}

impl StrMatch {
    /// Parses the four forms; a `*` anywhere else is refused (it would be taken literally by
    /// Istio and surprise its reader).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing; remove it or write `*`".to_string());
        }
        if text == "*" {
            return Ok(Self::Any);
        }
        let stars = text.matches('*').count();
        if stars == 0 {
            return Ok(Self::Exact(text.into()));
        }
        if stars == 1 {
            if let Some(suffix) = text.strip_prefix('*') {
                return Ok(Self::Suffix(suffix.into()));
            }
            if let Some(prefix) = text.strip_suffix('*') {
                return Ok(Self::Prefix(prefix.into()));
            }
        }
        Err(format!(
            "{text:?}: a `*` may only stand alone, at the start (suffix match) or at the end \
             (prefix match)"
        ))
    }

    #[inline]
    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => value == &**exact,
            Self::Prefix(prefix) => value.starts_with(&**prefix),
            Self::Suffix(suffix) => value.ends_with(&**suffix),
        }
    }
}

impl fmt::Display for StrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(exact) => f.write_str(exact),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// A pattern for the caller's SPIFFE ID, with the trust domain it is limited to (when it is).
#[derive(Clone, Debug)]
pub(crate) struct PrincipalPattern {
    pub(crate) matcher: StrMatch,
    pub(crate) trust_domain: Option<TrustDomain>,
    /// Line and column in the policy file, for errors found later.
    pub(crate) at: (u64, u64),
}

impl PrincipalPattern {
    /// `spiffe://td/path` exactly, `spiffe://td/*` (the whole trust domain),
    /// `spiffe://td/ns/ops/*` (a path prefix), `*/sa/frontend` (a suffix in any trust domain) or
    /// `*` (any authenticated identity).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let matcher = StrMatch::parse(text)?;
        let trust_domain = match &matcher {
            StrMatch::Any => None,
            StrMatch::Suffix(suffix) => {
                if !suffix.starts_with('/') {
                    return Err(format!(
                        "{text:?}: a suffix pattern must start with `*/`, e.g. `*/sa/frontend`"
                    ));
                }
                None
            }
            StrMatch::Exact(id) => Some(
                SpiffeId::new(id)
                    .map_err(|e| not_spiffe(text, &e.to_string()))?
                    .trust_domain()
                    .clone(),
            ),
            StrMatch::Prefix(prefix) => {
                let Some(rest) = prefix.strip_prefix("spiffe://") else {
                    return Err(not_spiffe(text, "it does not start with spiffe://"));
                };
                let Some((domain, _)) = rest.split_once('/') else {
                    return Err(format!(
                        "{text:?}: write the whole trust domain before the wildcard, e.g. \
                         `spiffe://cluster.local/*`"
                    ));
                };
                // A prefix ending in `/` must be followed by at least one more character to
                // name an ID; one that does not is a complete ID already.
                let example = if prefix.ends_with('/') {
                    Cow::Owned(format!("{prefix}x"))
                } else {
                    Cow::Borrowed(&**prefix)
                };
                SpiffeId::new(&example).map_err(|e| not_spiffe(text, &e.to_string()))?;
                Some(TrustDomain::new(domain).map_err(|e| not_spiffe(text, &e.to_string()))?)
            }
        };
        Ok(Self {
            matcher,
            trust_domain,
            at: (0, 0),
        })
    }
}

fn not_spiffe(text: &str, why: &str) -> String {
    format!("{text:?} is not a SPIFFE ID pattern: {why}")
}

/// The HTTP methods a policy may name.
pub(crate) const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A set of methods as bits of [`METHODS`]; a request with another method has a bit no set
/// contains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MethodSet(u16);

impl MethodSet {
    const OTHER: u16 = 1 << 15;

    pub(crate) fn parse_into(&mut self, text: &str) -> Result<(), String> {
        match METHODS.iter().position(|m| *m == text) {
            Some(i) => {
                self.0 |= 1 << i;
                Ok(())
            }
            None if METHODS.iter().any(|m| m.eq_ignore_ascii_case(text)) => Err(format!(
                "unknown method {text:?}: HTTP methods are case-sensitive; write {:?}",
                text.to_ascii_uppercase()
            )),
            None => Err(format!(
                "unknown method {text:?}; expected one of {}",
                METHODS.join(", ")
            )),
        }
    }

    #[inline]
    pub(crate) fn bit(method: &str) -> u16 {
        match METHODS.iter().position(|m| *m == method) {
            Some(i) => 1 << i,
            None => Self::OTHER,
        }
    }

    #[inline]
    pub(crate) fn contains_bit(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    pub(crate) fn names(self) -> Vec<&'static str> {
        METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| *m)
            .collect()
    }
}

/// A path pattern: exact, `prefix*`, `*suffix` or `*`, matched against the normalized path
/// (no query string).
pub(crate) fn parse_path(text: &str) -> Result<StrMatch, String> {
    let matcher = StrMatch::parse(text)?;
    if text.contains(['?', '#']) {
        return Err(format!(
            "{text:?}: paths are matched without the query string or fragment; remove what \
             follows `?` or `#`"
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{text:?}: a path cannot contain spaces or control characters"
        ));
    }
    if let StrMatch::Exact(path) | StrMatch::Prefix(path) = &matcher
        && !path.starts_with('/')
    {
        return Err(format!(
            "{text:?}: a path starts with `/` (or `*` for a suffix match)"
        ));
    }
    let literal = text.trim_matches('*');
    if normalize_path(literal) != literal && !literal.is_empty() {
        return Err(format!(
            "{text:?} can never match: requests are matched on their normalized path (no `.` \
             or `..` segments, no `//`, no percent-encoded letters or digits); write {:?}",
            normalize_path(literal)
        ));
    }
    Ok(matcher)
}

/// A header a `when` condition reads, from its key `request.headers[NAME]`; the name is
/// lower-cased (header names are case-insensitive).
pub(crate) fn parse_header_key(key: &str) -> Result<Box<str>, String> {
    let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|rest| rest.strip_suffix(']'))
    else {
        return Err(format!(
            "unknown condition key {key:?}; hush supports `request.headers[NAME]`"
        ));
    };
    let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token) {
        return Err(format!("{key:?}: {name:?} is not a header name"));
    }
    let name = name.to_ascii_lowercase();
    // These describe one hop and are removed before a request is judged.
    if [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
    ]
    .contains(&name.as_str())
    {
        return Err(format!(
            "{key:?} can never match: {name} is a hop-by-hop header, removed before policy \
             is evaluated"
        ));
    }
    Ok(name.into_boxed_str())
}

/// The path a request is judged on: percent-encoded unreserved characters and slashes
/// decoded, repeated slashes merged and `.`/`..` segments resolved (RFC 3986, 6.2.2 and
/// 5.2.4), so `/a/../admin`, `//admin`, `/%61dmin` and `/x%2F..%2Fadmin` are all judged as
/// `/admin`. The request itself is forwarded as it
/// came; judging the normalized form refuses what the app could read as a denied path.
///
/// Most paths are already normal and are returned without copying.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let needs_work =
        path.contains('%') || path.contains("//") || path.contains("/.") || path.starts_with('.');
    if !needs_work {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    let absolute = decoded.starts_with('/');
    let ends_with_slash = decoded.ends_with('/')
        || decoded.ends_with("/.")
        || decoded.ends_with("/..")
        || decoded == "."
        || decoded == "..";
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    if absolute || decoded.is_empty() {
        out.push('/');
    }
    out.push_str(&segments.join("/"));
    if ends_with_slash && !segments.is_empty() {
        out.push('/');
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let byte = hi << 4 | lo;
            // Unreserved characters mean the same encoded or not. An encoded `/` does not,
            // but apps often decode it into a separator, so it is judged as one: a DENY of
            // `/admin/*` must catch `/admin%2Fusers`.
            if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
                out.push(char::from(byte));
                i += 3;
                continue;
            }
        }
        // Copy one whole character (the path may hold any UTF-8).
        let len = utf8_len(bytes[i]);
        out.push_str(&path[i..(i + len).min(path.len())]);
        i += len;
    }
    Cow::Owned(out)
}

fn hex(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_patterns_have_four_forms() {
        let cases = [
            ("*", "anything", true),
            ("/api/*", "/api/v1", true),
            ("/api/*", "/apix", false),
            ("*.css", "/a/b.css", true),
            ("*.css", "/a/b.js", false),
            ("/healthz", "/healthz", true),
            ("/healthz", "/healthz/", false),
        ];
        for (pattern, value, expected) in cases {
            let matcher = StrMatch::parse(pattern).unwrap();
            assert_eq!(matcher.matches(value), expected, "{pattern} vs {value}");
            assert_eq!(matcher.to_string(), pattern);
        }
        for bad in ["", "/a*b", "**", "*a*"] {
            assert!(StrMatch::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn principal_patterns_are_spiffe_ids_or_wildcards() {
        for good in [
            "*",
            "spiffe://cluster.local/ns/shop/sa/frontend",
            "spiffe://cluster.local/*",
            "spiffe://cluster.local/ns/ops/*",
            "spiffe://cluster.local/ns/shop/sa/front*",
            "*/sa/frontend",
        ] {
            PrincipalPattern::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("cluster.local/ns/shop/sa/frontend", "not a SPIFFE ID"),
            ("spiffe://Cluster.local/x", "not a SPIFFE ID"),
            ("spiffe://cluster*", "whole trust domain"),
            ("spiffe://*/ns/shop", "may only stand"),
            ("*sa/frontend", "start with `*/`"),
            ("spiffe://cluster.local/ns//*", "not a SPIFFE ID"),
        ] {
            let error = PrincipalPattern::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        let domain = PrincipalPattern::parse("spiffe://cluster.local/ns/ops/*").unwrap();
        assert_eq!(domain.trust_domain.unwrap().as_str(), "cluster.local");
    }

    #[test]
    fn methods_are_known_and_upper_case() {
        let mut set = MethodSet::default();
        set.parse_into("GET").unwrap();
        set.parse_into("POST").unwrap();
        assert!(set.contains_bit(MethodSet::bit("GET")));
        assert!(!set.contains_bit(MethodSet::bit("PUT")));
        assert!(!set.contains_bit(MethodSet::bit("PROPFIND")));
        assert_eq!(set.names(), ["GET", "POST"]);
        let error = set.parse_into("get").unwrap_err();
        assert!(error.contains("write \"GET\""), "{error}");
        let error = set.parse_into("GTE").unwrap_err();
        assert!(error.contains("expected one of GET"), "{error}");
    }

    #[test]
    fn paths_normalize_before_matching() {
        let cases = [
            ("/api/v1", "/api/v1"),
            ("/a/../admin", "/admin"),
            ("//admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/a%2Fb", "/a/b"),
            ("/x%2F..%2Fadmin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/é/./x", "/é/x"),
            ("/%", "/%"),
            ("/%4", "/%4"),
        ];
        for (path, normal) in cases {
            assert_eq!(normalize_path(path), normal, "{path}");
        }
        assert!(matches!(normalize_path("/api/v1/items"), Cow::Borrowed(_)));
    }

    #[test]
    fn path_patterns_that_could_never_match_are_refused() {
        for good in ["/api/*", "*.css", "/healthz", "*", "/"] {
            parse_path(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("/search?q=1", "query string"),
            ("api/*", "starts with `/`"),
            ("/a/../b", "can never match"),
            ("//admin*", "can never match"),
            ("/a b", "spaces"),
        ] {
            let error = parse_path(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn header_keys_name_request_headers() {
        assert_eq!(
            &*parse_header_key("request.headers[X-Env]").unwrap(),
            "x-env"
        );
        for (bad, why) in [
            ("source.ip", "unknown condition key"),
            ("request.headers[]", "not a header name"),
            ("request.headers[a b]", "not a header name"),
            ("request.headers[Connection]", "hop-by-hop"),
        ] {
            let error = parse_header_key(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
