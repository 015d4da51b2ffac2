//! SPIFFE IDs and trust domains, validated by the rules of the SPIFFE-ID standard.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The only scheme a SPIFFE ID may have. Compared byte for byte: `SPIFFE://` is an error.
const SCHEME: &str = "spiffe://";

/// The SPIFFE-ID standard caps a whole ID at 2048 bytes, so that it fits in a URI SAN every
/// X.509 library accepts.
const MAX_ID_LEN: usize = 2048;

/// The trust domain is a DNS-like name: 255 bytes at most.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// The name of a SPIFFE trust domain, such as `cluster.local`.
///
/// A `TrustDomain` can only be built from a valid name, so holding one is proof that it
/// follows the SPIFFE-ID rules: not empty, at most 255 bytes, only `a-z`, `0-9`, `.`, `-`
/// and `_`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain {
    name: String,
}

/// A SPIFFE ID such as `spiffe://cluster.local/ns/shop/sa/frontend`.
///
/// A `SpiffeId` can only be built from a string that passes every rule of the SPIFFE-ID
/// standard, and its [`Display`](fmt::Display) form is exactly the string it was parsed from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    // The whole ID comes first so that the derived ordering sorts by the ID's text.
    id: String,
    trust_domain: TrustDomain,
}

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The input was the empty string.
    #[error(
        "SPIFFE ID is empty; expected something like \"spiffe://cluster.local/ns/shop/sa/frontend\""
    )]
    Empty,

    /// The input does not start with the lowercase `spiffe://` scheme.
    #[error(
        "{id:?} does not start with \"spiffe://\" (lowercase); \
         a SPIFFE ID looks like \"spiffe://cluster.local/ns/shop/sa/frontend\""
    )]
    WrongScheme {
        /// The input as given.
        id: String,
    },

    /// The whole ID is longer than 2048 bytes.
    #[error("SPIFFE ID is {len} bytes long; at most 2048 bytes are allowed")]
    TooLong {
        /// The length of the input in bytes.
        len: usize,
    },

    /// The ID has a query part (`?`).
    #[error("{id:?} has a query ('?'); a SPIFFE ID must not have one")]
    Query {
        /// The input as given.
        id: String,
    },

    /// The ID has a fragment (`#`).
    #[error("{id:?} has a fragment ('#'); a SPIFFE ID must not have one")]
    Fragment {
        /// The input as given.
        id: String,
    },

    /// There is nothing between `spiffe://` and the path.
    #[error(
        "trust domain is empty; put a name after \"spiffe://\", as in \"spiffe://cluster.local\""
    )]
    EmptyTrustDomain,

    /// The trust domain carries user info (`user@`).
    #[error("trust domain {trust_domain:?} has user info ('@'); a SPIFFE ID must not have one")]
    UserInfo {
        /// The trust domain part of the input.
        trust_domain: String,
    },

    /// The trust domain carries a port (`:8080`).
    #[error("trust domain {trust_domain:?} has a port (':'); a SPIFFE ID must not have one")]
    Port {
        /// The trust domain part of the input.
        trust_domain: String,
    },

    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is {len} bytes long; at most 255 bytes are allowed")]
    TrustDomainTooLong {
        /// The length of the trust domain in bytes.
        len: usize,
    },

    /// The trust domain has a character other than `a-z`, `0-9`, `.`, `-` and `_`.
    #[error(
        "trust domain {trust_domain:?} has an invalid character {ch:?}: \
         only lowercase a-z, 0-9, '.', '-' and '_' are allowed"
    )]
    TrustDomainChar {
        /// The trust domain part of the input.
        trust_domain: String,
        /// The first character that is not allowed.
        ch: char,
    },

    /// A trust domain was expected, but the input also has a path.
    #[error(
        "{id:?} has a path; a trust domain is only a name, \
         like \"cluster.local\" or \"spiffe://cluster.local\""
    )]
    TrustDomainHasPath {
        /// The input as given.
        id: String,
    },

    /// The path has an empty segment, as in `/ns//sa`.
    #[error("path {path:?} has an empty segment; remove the doubled '/'")]
    EmptySegment {
        /// The path part of the ID.
        path: String,
    },

    /// The path has a `.` or `..` segment.
    #[error("path {path:?} has a {segment:?} segment; '.' and '..' segments are not allowed")]
    DotSegment {
        /// The path part of the ID.
        path: String,
        /// The offending segment, `.` or `..`.
        segment: String,
    },

    /// The path ends with `/`.
    #[error("path {path:?} ends with '/'; remove the trailing slash")]
    TrailingSlash {
        /// The path part of the ID.
        path: String,
    },

    /// A path segment has a character other than `a-z`, `A-Z`, `0-9`, `.`, `-` and `_`.
    #[error(
        "path segment {segment:?} has an invalid character {ch:?}: \
         only a-z, A-Z, 0-9, '.', '-' and '_' are allowed"
    )]
    SegmentChar {
        /// The offending segment.
        segment: String,
        /// The first character that is not allowed.
        ch: char,
    },
}

// === impl TrustDomain ===

impl TrustDomain {
    /// Parses a trust domain name.
    ///
    /// Accepts a bare name (`cluster.local`) or the trust domain's own SPIFFE ID
    /// (`spiffe://cluster.local`, with no path).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if name.starts_with(SCHEME) {
            let id = SpiffeId::new(name)?;
            if !id.path().is_empty() {
                return Err(SpiffeIdError::TrustDomainHasPath {
                    id: name.to_owned(),
                });
            }
            return Ok(id.trust_domain);
        }
        // Catch `SPIFFE://x` and `https://x` here: otherwise they would be reported as an
        // invalid ':' in a bare name, which hides the real mistake.
        if name.contains("://") {
            return Err(SpiffeIdError::WrongScheme {
                id: name.to_owned(),
            });
        }
        validate_trust_domain(name)?;
        Ok(Self {
            name: name.to_owned(),
        })
    }

    /// The trust domain's name, such as `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The SPIFFE ID of the trust domain itself: `spiffe://<name>`, with an empty path.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            id: format!("{SCHEME}{}", self.name),
            trust_domain: self.clone(),
        }
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::new(&s).map_err(de::Error::custom)
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Parses a SPIFFE ID, enforcing every rule of the SPIFFE-ID standard.
    pub fn new(id: &str) -> Result<Self, SpiffeIdError> {
        if id.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: id.len() });
        }
        let Some(rest) = id.strip_prefix(SCHEME) else {
            return Err(SpiffeIdError::WrongScheme { id: id.to_owned() });
        };
        // Checked on the whole ID so that `spiffe://td?x` is called a query rather than a bad
        // character in the trust domain.
        if rest.contains('?') {
            return Err(SpiffeIdError::Query { id: id.to_owned() });
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment { id: id.to_owned() });
        }

        let (trust_domain, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        validate_trust_domain(trust_domain)?;
        validate_path(path)?;

        Ok(Self {
            id: id.to_owned(),
            trust_domain: TrustDomain {
                name: trust_domain.to_owned(),
            },
        })
    }

    /// Builds `spiffe://<trust_domain>/<segment>/<segment>...`, validating every segment.
    ///
    /// Each segment must be a single, non-empty path segment: a segment holding `/` is an
    /// error, not two segments. No segments gives the trust domain's own ID.
    pub fn from_segments(
        trust_domain: &TrustDomain,
        segments: &[&str],
    ) -> Result<Self, SpiffeIdError> {
        let path: String = segments.iter().flat_map(|s| ["/", s]).collect();
        for segment in segments {
            validate_segment(segment, &path)?;
        }
        let id = format!("{SCHEME}{}{path}", trust_domain.name);
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: id.len() });
        }
        Ok(Self {
            id,
            trust_domain: trust_domain.clone(),
        })
    }

    /// The whole ID, such as `spiffe://cluster.local/ns/shop/sa/frontend`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain the ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, such as `/ns/shop/sa/frontend`, or `""` for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[SCHEME.len() + self.trust_domain.name.len()..]
    }

    /// Whether the ID belongs to `trust_domain`.
    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain == *trust_domain
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::new(&s).map_err(de::Error::custom)
    }
}

// === validation ===

fn validate_trust_domain(trust_domain: &str) -> Result<(), SpiffeIdError> {
    if trust_domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    // '@' and ':' get their own errors because they mean the input is a URL with user info or
    // a port, which is a different mistake from a typo in the name.
    if trust_domain.contains('@') {
        return Err(SpiffeIdError::UserInfo {
            trust_domain: trust_domain.to_owned(),
        });
    }
    if trust_domain.contains(':') {
        return Err(SpiffeIdError::Port {
            trust_domain: trust_domain.to_owned(),
        });
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong {
            len: trust_domain.len(),
        });
    }
    if let Some(ch) = trust_domain.chars().find(|&c| !is_trust_domain_char(c)) {
        return Err(SpiffeIdError::TrustDomainChar {
            trust_domain: trust_domain.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Validates a path that is either empty or starts with `/`.
fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    let Some(segments) = path.strip_prefix('/') else {
        // Only the empty path gets here: the caller splits at the first '/'.
        return Ok(());
    };
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash {
            path: path.to_owned(),
        });
    }
    segments
        .split('/')
        .try_for_each(|segment| validate_segment(segment, path))
}

/// Validates one segment; `path` is the whole path, shown in errors for context.
fn validate_segment(segment: &str, path: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => Err(SpiffeIdError::EmptySegment {
            path: path.to_owned(),
        }),
        "." | ".." => Err(SpiffeIdError::DotSegment {
            path: path.to_owned(),
            segment: segment.to_owned(),
        }),
        _ => match segment.chars().find(|&c| !is_segment_char(c)) {
            Some(ch) => Err(SpiffeIdError::SegmentChar {
                segment: segment.to_owned(),
                ch,
            }),
            None => Ok(()),
        },
    }
}

fn is_trust_domain_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
}

fn is_segment_char(c: char) -> bool {
    matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a row expects: the ID is valid, or parsing fails with this error.
    type Expected = Result<(), SpiffeIdError>;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn long_segment(len: usize) -> String {
        "a".repeat(len)
    }

    /// One row per rule of the SPIFFE-ID standard, valid and invalid.
    fn spiffe_id_rows() -> Vec<(String, Expected)> {
        use SpiffeIdError::*;
        let s = |v: &str| v.to_owned();
        // 9 bytes of scheme + 2 of "td" + "/" = 12; fill the rest with one long segment.
        let max_id = format!("spiffe://td/{}", long_segment(MAX_ID_LEN - 12));
        let over_max_id = format!("spiffe://td/{}", long_segment(MAX_ID_LEN - 11));
        let max_td = long_segment(MAX_TRUST_DOMAIN_LEN);
        let over_max_td = long_segment(MAX_TRUST_DOMAIN_LEN + 1);
        vec![
            // Valid IDs.
            (s("spiffe://cluster.local"), Ok(())),
            (s("spiffe://cluster.local/ns/shop/sa/frontend"), Ok(())),
            (s("spiffe://a-b_c.0-9/Seg.Ment-_09"), Ok(())),
            (s("spiffe://td/..a/a../.a./..."), Ok(())),
            (max_id, Ok(())),
            (format!("spiffe://{max_td}/x"), Ok(())),
            // Empty input.
            (s(""), Err(Empty)),
            // Scheme must be exactly `spiffe://`.
            (
                s("SPIFFE://td/x"),
                Err(WrongScheme {
                    id: s("SPIFFE://td/x"),
                }),
            ),
            (
                s("https://td/x"),
                Err(WrongScheme {
                    id: s("https://td/x"),
                }),
            ),
            (
                s("spiffe:/td/x"),
                Err(WrongScheme {
                    id: s("spiffe:/td/x"),
                }),
            ),
            (
                s("cluster.local/x"),
                Err(WrongScheme {
                    id: s("cluster.local/x"),
                }),
            ),
            // Whole ID at most 2048 bytes.
            (
                over_max_id,
                Err(TooLong {
                    len: MAX_ID_LEN + 1,
                }),
            ),
            // Trust domain non-empty.
            (s("spiffe://"), Err(EmptyTrustDomain)),
            (s("spiffe:///ns/x"), Err(EmptyTrustDomain)),
            // Trust domain at most 255 bytes.
            (
                format!("spiffe://{over_max_td}"),
                Err(TrustDomainTooLong { len: 256 }),
            ),
            // Trust domain: lowercase only, no folding.
            (
                s("spiffe://Cluster.local/x"),
                Err(TrustDomainChar {
                    trust_domain: s("Cluster.local"),
                    ch: 'C',
                }),
            ),
            // Trust domain: no other characters (here percent-encoding).
            (
                s("spiffe://clu%73ter/x"),
                Err(TrustDomainChar {
                    trust_domain: s("clu%73ter"),
                    ch: '%',
                }),
            ),
            // No port.
            (
                s("spiffe://td:8080/x"),
                Err(Port {
                    trust_domain: s("td:8080"),
                }),
            ),
            // No user info.
            (
                s("spiffe://user@td/x"),
                Err(UserInfo {
                    trust_domain: s("user@td"),
                }),
            ),
            // No query.
            (
                s("spiffe://td/x?a=b"),
                Err(Query {
                    id: s("spiffe://td/x?a=b"),
                }),
            ),
            // No fragment.
            (
                s("spiffe://td/x#frag"),
                Err(Fragment {
                    id: s("spiffe://td/x#frag"),
                }),
            ),
            // No empty segment.
            (
                s("spiffe://td/a//b"),
                Err(EmptySegment { path: s("/a//b") }),
            ),
            // No `.` segment.
            (
                s("spiffe://td/a/./b"),
                Err(DotSegment {
                    path: s("/a/./b"),
                    segment: s("."),
                }),
            ),
            // No `..` segment.
            (
                s("spiffe://td/a/../b"),
                Err(DotSegment {
                    path: s("/a/../b"),
                    segment: s(".."),
                }),
            ),
            // No trailing slash, including a path that is only `/`.
            (s("spiffe://td/a/"), Err(TrailingSlash { path: s("/a/") })),
            (s("spiffe://td/"), Err(TrailingSlash { path: s("/") })),
            // Path segments only [a-zA-Z0-9._-].
            (
                s("spiffe://td/a b"),
                Err(SegmentChar {
                    segment: s("a b"),
                    ch: ' ',
                }),
            ),
            (
                s("spiffe://td/caf\u{e9}"),
                Err(SegmentChar {
                    segment: s("caf\u{e9}"),
                    ch: '\u{e9}',
                }),
            ),
            (
                s("spiffe://td/a%2Fb"),
                Err(SegmentChar {
                    segment: s("a%2Fb"),
                    ch: '%',
                }),
            ),
        ]
    }

    #[test]
    fn spiffe_id_rules() {
        for (input, expected) in spiffe_id_rows() {
            let got = SpiffeId::new(&input).map(|_| ());
            assert_eq!(got, expected, "input {input:?}");
        }
    }

    /// One row per rule for the bare-name and `spiffe://name` forms of a trust domain.
    #[test]
    fn trust_domain_rules() {
        use SpiffeIdError::*;
        let s = |v: &str| v.to_owned();
        let rows: [(&str, Result<&str, SpiffeIdError>); 11] = [
            ("cluster.local", Ok("cluster.local")),
            ("a-b_c.0-9", Ok("a-b_c.0-9")),
            ("spiffe://cluster.local", Ok("cluster.local")),
            ("", Err(EmptyTrustDomain)),
            ("spiffe://", Err(EmptyTrustDomain)),
            (
                "Cluster.local",
                Err(TrustDomainChar {
                    trust_domain: s("Cluster.local"),
                    ch: 'C',
                }),
            ),
            (
                "cluster.local:443",
                Err(Port {
                    trust_domain: s("cluster.local:443"),
                }),
            ),
            (
                "me@cluster.local",
                Err(UserInfo {
                    trust_domain: s("me@cluster.local"),
                }),
            ),
            (
                "spiffe://td/x",
                Err(TrustDomainHasPath {
                    id: s("spiffe://td/x"),
                }),
            ),
            (
                "SPIFFE://td",
                Err(WrongScheme {
                    id: s("SPIFFE://td"),
                }),
            ),
            (
                "td/x",
                Err(TrustDomainChar {
                    trust_domain: s("td/x"),
                    ch: '/',
                }),
            ),
        ];
        for (input, expected) in rows {
            let got = TrustDomain::new(input);
            assert_eq!(
                got.as_ref().map(TrustDomain::as_str),
                expected.as_ref().map(|s| *s),
                "input {input:?}"
            );
        }
        let too_long = long_segment(MAX_TRUST_DOMAIN_LEN + 1);
        assert_eq!(
            TrustDomain::new(&too_long),
            Err(TrustDomainTooLong { len: 256 })
        );
    }

    #[test]
    fn error_messages_show_the_offending_part() {
        let err = SpiffeId::new("spiffe://Cluster.local/x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "trust domain \"Cluster.local\" has an invalid character 'C': only lowercase a-z, \
             0-9, '.', '-' and '_' are allowed"
        );
        let err = SpiffeId::new("spiffe://td/a/../b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "path \"/a/../b\" has a \"..\" segment; '.' and '..' segments are not allowed"
        );
    }

    #[test]
    fn parts_of_an_id() {
        let id = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/frontend").unwrap();
        assert_eq!(id.trust_domain(), &td("cluster.local"));
        assert_eq!(id.path(), "/ns/shop/sa/frontend");
        assert!(id.is_member_of(&td("cluster.local")));
        assert!(!id.is_member_of(&td("cluster.other")));

        let root = SpiffeId::new("spiffe://cluster.local").unwrap();
        assert_eq!(root.path(), "");
        assert_eq!(root, td("cluster.local").id());
    }

    #[test]
    fn round_trips_through_display() {
        for (input, expected) in spiffe_id_rows() {
            if expected.is_ok() {
                let id: SpiffeId = input.parse().unwrap();
                assert_eq!(id.to_string(), input);
                assert_eq!(id.as_str(), input);
                assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
            }
        }
        let td: TrustDomain = "cluster.local".parse().unwrap();
        assert_eq!(td.to_string(), "cluster.local");
        assert_eq!(td.id().to_string(), "spiffe://cluster.local");
    }

    #[test]
    fn from_segments() {
        let td = td("cluster.local");
        let id = SpiffeId::from_segments(&td, &["ns", "shop", "sa", "frontend"]).unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/frontend");
        assert_eq!(id, SpiffeId::new(id.as_str()).unwrap());
        assert_eq!(SpiffeId::from_segments(&td, &[]).unwrap(), td.id());

        use SpiffeIdError::*;
        let s = |v: &str| v.to_owned();
        let rows: [(&[&str], SpiffeIdError); 4] = [
            (&["ns", ""], EmptySegment { path: s("/ns/") }),
            (
                &["ns", ".."],
                DotSegment {
                    path: s("/ns/.."),
                    segment: s(".."),
                },
            ),
            // A slash inside a segment would silently add a segment: it is an error instead.
            (
                &["ns/shop"],
                SegmentChar {
                    segment: s("ns/shop"),
                    ch: '/',
                },
            ),
            (
                &["a?b"],
                SegmentChar {
                    segment: s("a?b"),
                    ch: '?',
                },
            ),
        ];
        for (segments, expected) in rows {
            assert_eq!(
                SpiffeId::from_segments(&td, segments),
                Err(expected),
                "segments {segments:?}"
            );
        }
        let long = long_segment(MAX_ID_LEN);
        assert!(matches!(
            SpiffeId::from_segments(&td, &[&long]),
            Err(TooLong { .. })
        ));
    }

    #[test]
    fn serde_as_a_string() {
        let id = SpiffeId::new("spiffe://cluster.local/ns/shop").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://cluster.local/ns/shop\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);

        let td = td("cluster.local");
        let json = serde_json::to_string(&td).unwrap();
        assert_eq!(json, "\"cluster.local\"");
        assert_eq!(serde_json::from_str::<TrustDomain>(&json).unwrap(), td);
        assert_eq!(
            serde_json::from_str::<TrustDomain>("\"spiffe://cluster.local\"").unwrap(),
            td
        );
    }

    #[test]
    fn deserialize_validates() {
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://td/a//b\"").unwrap_err();
        assert!(err.to_string().contains("empty segment"), "{err}");
        let err = serde_json::from_str::<TrustDomain>("\"Cluster.local\"").unwrap_err();
        assert!(err.to_string().contains("invalid character 'C'"), "{err}");
        assert!(serde_json::from_str::<SpiffeId>("42").is_err());
    }

    #[test]
    fn ordering_and_hashing_follow_the_text() {
        use std::collections::BTreeSet;
        let ids: BTreeSet<SpiffeId> = [
            "spiffe://b/x",
            "spiffe://a/y",
            "spiffe://a/x",
            "spiffe://a/x",
        ]
        .into_iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let sorted: Vec<&str> = ids.iter().map(SpiffeId::as_str).collect();
        assert_eq!(sorted, ["spiffe://a/x", "spiffe://a/y", "spiffe://b/x"]);
    }
}
