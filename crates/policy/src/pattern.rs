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

    /// As [`Self::matches`], ignoring ASCII case: how an app that routes case-insensitively
    /// (Express, ASP.NET, IIS) compares.
    #[inline]
    pub(crate) fn matches_ignoring_case(&self, value: &str) -> bool {
        let value = value.as_bytes();
        match self {
            Self::Any => true,
            Self::Exact(exact) => value.eq_ignore_ascii_case(exact.as_bytes()),
            Self::Prefix(prefix) => value
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes())),
            Self::Suffix(suffix) => value
                .len()
                .checked_sub(suffix.len())
                .is_some_and(|at| value[at..].eq_ignore_ascii_case(suffix.as_bytes())),
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
    /// The bit of every method that is not one of [`METHODS`].
    pub(crate) const OTHER: u16 = 1 << 15;

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

    /// The bit of `method` upper-cased: how an app that upper-cases methods (Werkzeug, for
    /// one) reads `delete`.
    #[inline]
    pub(crate) fn bit_ignoring_case(method: &str) -> u16 {
        match METHODS.iter().position(|m| m.eq_ignore_ascii_case(method)) {
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

/// A path pattern: exact, `prefix*`, `*suffix` or `*`, matched against the readings of the
/// request's path (no query string; see [`crate::path`]). The pattern must be written the way
/// readings are: a pattern no reading is spelt like could never match.
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
    // A `;` in a pattern is a character: the reading without path parameters is the request's
    // business, not the pattern's.
    let probe = literal.replace(';', "%3B");
    let readings = crate::path::read_path(&probe)
        .map_err(|why| format!("{text:?} can never match: such a request is refused ({why})"))?;
    let normal = readings.iter().last().unwrap_or(literal);
    if !readings.is_single() || readings.as_sent() != literal {
        return Err(format!(
            "{text:?} can never match as written: paths are compared in normal form (`.` and \
             `..` resolved, no `//`, `%2F` written `/`, escapes decoded where they mean the \
             same, the others upper-case); write {:?}",
            text.replace(literal, normal)
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
        // Ignoring case: only ASCII letters fold, and a value shorter than the pattern (or
        // cut inside a character) does not match.
        let cases = [
            ("/admin", "/ADMIN", true, false),
            ("/api/*", "/API/v1", true, false),
            ("*.css", "/A/B.CSS", true, false),
            ("/café", "/CAFÉ", false, false),
            ("/café", "/CAFé", true, false),
            ("*é", "é", true, true),
            ("*xé", "é", false, false),
            ("/adminé*", "/admin", false, false),
        ];
        for (pattern, value, ignoring_case, exactly) in cases {
            let matcher = StrMatch::parse(pattern).unwrap();
            assert_eq!(
                matcher.matches_ignoring_case(value),
                ignoring_case,
                "{pattern} vs {value}"
            );
            assert_eq!(matcher.matches(value), exactly, "{pattern} vs {value}");
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
        assert!(!set.contains_bit(MethodSet::bit("get")));
        assert!(set.contains_bit(MethodSet::bit_ignoring_case("get")));
        assert!(!set.contains_bit(MethodSet::bit_ignoring_case("propfind")));
        assert_eq!(set.names(), ["GET", "POST"]);
        let error = set.parse_into("get").unwrap_err();
        assert!(error.contains("write \"GET\""), "{error}");
        let error = set.parse_into("GTE").unwrap_err();
        assert!(error.contains("expected one of GET"), "{error}");
    }

    #[test]
    fn path_patterns_that_could_never_match_are_refused() {
        for good in [
            "/api/*",
            "*.css",
            "/healthz",
            "*",
            "/",
            "/café",
            "/a%20b",
            "/a;b",
            "/.well-known/*",
            "/100%25",
        ] {
            parse_path(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("/search?q=1", "query string"),
            ("api/*", "starts with `/`"),
            ("/a/../b", "write \"/b\""),
            ("//admin*", "write \"/admin*\""),
            ("/%61dmin", "write \"/admin\""),
            ("/admin%2Fusers", "write \"/admin/users\""),
            ("/caf%C3%A9", "write \"/café\""),
            ("/a%3cb", "write \"/a%3Cb\""),
            (
                "/a\\b",
                "such a request is refused (the path holds a backslash",
            ),
            ("*%252e", "refused (the path holds a percent-encoded `%`"),
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
