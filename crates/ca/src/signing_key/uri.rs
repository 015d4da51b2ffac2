//! `pkcs11:` URIs (RFC 7512), the subset that names one private key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use zeroize::Zeroizing;

use super::Pkcs11Error;

/// Where SoftHSM2's module is when the URI does not say: Debian's package puts it in both
/// places (one a link), other distributions in one or the other.
pub(super) fn default_module_paths() -> Vec<PathBuf> {
    vec![
        PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        PathBuf::from(format!(
            "/usr/lib/{}-linux-gnu/softhsm/libsofthsm2.so",
            std::env::consts::ARCH
        )),
    ]
}

/// A private key in a PKCS#11 token, named by an RFC 7512 URI:
///
/// ```text
/// pkcs11:token=<token label>;object=<key label>?module-path=<module .so>&pin-source=file:<path>
/// ```
///
/// * `token` and `object` are required: hush finds keys by label only.
/// * `type=private` may be given; no other type names a signing key.
/// * `module-path` defaults to SoftHSM2's module where Debian installs it
///   (`/usr/lib/softhsm/libsofthsm2.so`, then `/usr/lib/<arch>-linux-gnu/softhsm/libsofthsm2.so`).
/// * `pin-source=file:<path>` (or a bare absolute path) names a file holding the user PIN; one
///   trailing newline is ignored. This is the way to give a PIN: the file can be a mounted
///   secret, and the PIN stays out of command lines and process listings.
/// * `pin-value=<pin>` gives the PIN in the URI itself, for tests and development only.
///
/// Values are percent-decoded. Every other attribute is refused, known or not. RFC 7512 says an
/// unrecognised path attribute should match no object; refusing says why up front instead of
/// "key not found", and ignoring it instead could pick a key the operator excluded (say with
/// `serial=` or `id=`). Unknown query attributes are refused too, so that a typo such as
/// `pin-sorce=` is an error rather than a token opened without its PIN.
///
/// The PIN never appears in `Debug` or `Display` output nor in an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    token: String,
    object: String,
    module_path: Option<PathBuf>,
    pin: Option<PinSource>,
}

#[derive(Clone, PartialEq, Eq)]
enum PinSource {
    File(PathBuf),
    Value(Zeroizing<String>),
}

/// Path attributes of RFC 7512 that hush does not honour: named in the error, so the operator
/// learns the attribute is known but unused rather than misspelt.
const UNSUPPORTED_PATH_ATTRIBUTES: &[&str] = &[
    "id",
    "library-description",
    "library-manufacturer",
    "library-version",
    "manufacturer",
    "model",
    "serial",
    "slot-description",
    "slot-id",
    "slot-manufacturer",
];

// === impl Pkcs11Uri ===

impl Pkcs11Uri {
    /// The label of the token (`CKA_LABEL` of the token, `token=`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The label of the key (`CKA_LABEL` of the objects, `object=`).
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The module the URI names, if it names one (see [`Pkcs11Uri::resolve_module`]).
    pub fn module_path(&self) -> Option<&Path> {
        self.module_path.as_deref()
    }

    /// The PIN file the URI names, if it gives the PIN that way.
    pub fn pin_file(&self) -> Option<&Path> {
        match &self.pin {
            Some(PinSource::File(path)) => Some(path),
            _ => None,
        }
    }

    /// Whether the URI carries the PIN itself (`pin-value=`). Such a URI must never be stored:
    /// whoever reads where it is kept reads the PIN.
    pub fn has_pin_value(&self) -> bool {
        matches!(self.pin, Some(PinSource::Value(_)))
    }

    /// The module to load: the URI's `module-path`, or else the first SoftHSM2 module found in
    /// the usual places.
    pub fn resolve_module(&self) -> Result<PathBuf, Pkcs11Error> {
        match &self.module_path {
            Some(path) => Ok(path.clone()),
            None => first_existing(default_module_paths()),
        }
    }

    /// The PIN, read from its file now (so that a rotated PIN file is read again on the next
    /// open); `None` when the URI gives none.
    #[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
    pub(crate) fn read_pin(&self) -> Result<Option<Zeroizing<String>>, Pkcs11Error> {
        match &self.pin {
            None => Ok(None),
            Some(PinSource::Value(pin)) => Ok(Some(pin.clone())),
            Some(PinSource::File(path)) => {
                let fail = |reason: String| Pkcs11Error::PinFile {
                    path: path.clone(),
                    reason,
                };
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| fail(e.to_string()))?);
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| fail("the PIN is not UTF-8 text".into()))?;
                let pin = text
                    .strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(text);
                if pin.is_empty() {
                    return Err(fail("the file is empty".into()));
                }
                Ok(Some(Zeroizing::new(pin.to_owned())))
            }
        }
    }
}

fn first_existing(candidates: Vec<PathBuf>) -> Result<PathBuf, Pkcs11Error> {
    match candidates.iter().find(|p| p.exists()) {
        Some(found) => Ok(found.clone()),
        None => Err(Pkcs11Error::NoModule { tried: candidates }),
    }
}

impl FromStr for Pkcs11Uri {
    type Err = Pkcs11Error;

    fn from_str(uri: &str) -> Result<Self, Pkcs11Error> {
        let invalid = |reason: String| Pkcs11Error::InvalidUri(reason);
        let rest = uri
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("pkcs11:"))
            .map(|_| &uri[7..])
            .ok_or_else(|| invalid("it does not start with `pkcs11:`".into()))?;
        if rest.contains('#') {
            return Err(invalid("a PKCS#11 URI has no `#` fragment".into()));
        }
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));

        let (mut token, mut object) = (None, None);
        for (name, value) in attributes(path, ';')? {
            match name {
                "token" => set_once(&mut token, name, decode_text(name, value)?)?,
                "object" => set_once(&mut object, name, decode_text(name, value)?)?,
                // The type narrows the match; a private key is the only thing hush signs with.
                "type" => {
                    let kind = decode_text(name, value)?;
                    if kind != "private" {
                        return Err(invalid(format!(
                            "type={kind} does not name a private key; use type=private or leave it out"
                        )));
                    }
                }
                _ if UNSUPPORTED_PATH_ATTRIBUTES.contains(&name) => {
                    return Err(invalid(format!(
                        "the `{name}` attribute is not supported; name the key by token= and object= only"
                    )));
                }
                _ => return Err(invalid(format!("unknown attribute `{name}` in the path"))),
            }
        }

        let (mut module_path, mut pin) = (None, None);
        for (name, value) in attributes(query, '&')? {
            match name {
                "module-path" => set_once(
                    &mut module_path,
                    name,
                    PathBuf::from(decode_text(name, value)?),
                )?,
                "pin-source" => {
                    let source = pin_source_path(&decode_text(name, value)?)?;
                    set_pin(&mut pin, PinSource::File(source))?
                }
                "pin-value" => {
                    let value = Zeroizing::new(decode_text(name, value)?);
                    set_pin(&mut pin, PinSource::Value(value))?
                }
                "module-name" => {
                    return Err(invalid(
                        "module-name is not supported; give the module's file with module-path="
                            .into(),
                    ));
                }
                _ => return Err(invalid(format!("unknown attribute `{name}` in the query"))),
            }
        }

        Ok(Self {
            token: token.ok_or(Pkcs11Error::MissingAttribute("token"))?,
            object: object.ok_or(Pkcs11Error::MissingAttribute("object"))?,
            module_path,
            pin,
        })
    }
}

/// The attribute names hush reads: showing one of them in an error reveals nothing.
const KNOWN_ATTRIBUTES: &[&str] = &[
    "token",
    "object",
    "type",
    "module-path",
    "pin-source",
    "pin-value",
];

/// `name=value` pairs separated by `separator`; empty parts (a trailing `;`) are skipped.
fn attributes(part: &str, separator: char) -> Result<Vec<(&str, &str)>, Pkcs11Error> {
    part.split(separator)
        .filter(|attr| !attr.is_empty())
        .map(|attr| {
            attr.split_once('=').ok_or_else(|| {
                // A part without `=` may be the tail of a PIN that held a separator
                // (`pin-value=12&34` splits into `pin-value=12` and `34`): it is never shown,
                // except a known attribute's name, which cannot be secret.
                let shown = if KNOWN_ATTRIBUTES.contains(&attr) {
                    format!("`{attr}`")
                } else {
                    "a part".to_string()
                };
                Pkcs11Error::InvalidUri(format!(
                    "{shown} is not of the form name=value (percent-encode `;`, `&` and `%` in values)"
                ))
            })
        })
        .collect()
}

fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), Pkcs11Error> {
    if slot.replace(value).is_some() {
        return Err(Pkcs11Error::InvalidUri(format!(
            "the `{name}` attribute is given twice"
        )));
    }
    Ok(())
}

fn set_pin(slot: &mut Option<PinSource>, pin: PinSource) -> Result<(), Pkcs11Error> {
    if slot.replace(pin).is_some() {
        return Err(Pkcs11Error::InvalidUri(
            "the PIN is given twice (pin-source and pin-value are exclusive)".into(),
        ));
    }
    Ok(())
}

/// `file:<path>`, `file://<path>` with an empty host, or a bare absolute path. Commands
/// (`|/bin/…`, which some tools accept) are refused: the CA does not run programs named in its
/// configuration.
fn pin_source_path(source: &str) -> Result<PathBuf, Pkcs11Error> {
    let path = match source.strip_prefix("file:") {
        Some(rest) => match rest.strip_prefix("//") {
            Some(after_host) if after_host.starts_with('/') => after_host,
            Some(_) => {
                return Err(Pkcs11Error::InvalidUri(
                    "pin-source names a file on another host; use file:/path".into(),
                ));
            }
            None => rest,
        },
        None if source.starts_with('/') => source,
        None => {
            return Err(Pkcs11Error::InvalidUri(
                "pin-source must be file:<path> or an absolute path".into(),
            ));
        }
    };
    if path.is_empty() {
        return Err(Pkcs11Error::InvalidUri("pin-source names no file".into()));
    }
    Ok(PathBuf::from(path))
}

/// Percent-decodes `value` as UTF-8 text. Errors name the attribute, never the value.
fn decode_text(name: &str, value: &str) -> Result<String, Pkcs11Error> {
    let invalid = |what: &str| Pkcs11Error::InvalidUri(format!("the value of `{name}` {what}"));
    if value.is_empty() {
        return Err(invalid("is empty"));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(value.len()));
    let mut rest = value.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail
                .get(..2)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid("has a `%` not followed by two hex digits"))?;
            bytes.push(hex);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
        // Wipe the bytes the error hands back: they may be the PIN.
        let _ = Zeroizing::new(e.into_bytes());
        invalid("is not UTF-8 once percent-decoded")
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters, plus `/` where it keeps a
/// path readable.
fn encode(out: &mut fmt::Formatter<'_>, value: &str, keep_slash: bool) -> fmt::Result {
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            write!(out, "{}", char::from(b))?;
        } else {
            write!(out, "%{b:02X}")?;
        }
    }
    Ok(())
}

/// The URI without its PIN: `pin-source` (a path, not a secret) is kept, `pin-value` left out.
/// It parses back to the same key.
impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pkcs11:token=")?;
        encode(f, &self.token, false)?;
        f.write_str(";object=")?;
        encode(f, &self.object, false)?;
        let mut separator = '?';
        if let Some(module) = &self.module_path {
            write!(f, "{separator}module-path=")?;
            encode(f, &module.to_string_lossy(), true)?;
            separator = '&';
        }
        if let Some(PinSource::File(path)) = &self.pin {
            write!(f, "{separator}pin-source=file:")?;
            encode(f, &path.to_string_lossy(), true)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pin: &dyn fmt::Debug = match &self.pin {
            None => &"none",
            Some(PinSource::File(path)) => path,
            Some(PinSource::Value(_)) => &"<pin-value, redacted>",
        };
        f.debug_struct("Pkcs11Uri")
            .field("token", &self.token)
            .field("object", &self.object)
            .field("module_path", &self.module_path)
            .field("pin", pin)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Result<Pkcs11Uri, Pkcs11Error> {
        uri.parse()
    }

    #[test]
    fn a_full_uri_names_token_object_module_and_pin_file() {
        let uri = parse(
            "pkcs11:token=hush;object=intermediate;type=private\
             ?module-path=/opt/hsm/lib%20hsm.so&pin-source=file:/run/secrets/pin",
        )
        .unwrap();
        assert_eq!(uri.token(), "hush");
        assert_eq!(uri.object(), "intermediate");
        assert_eq!(uri.module_path(), Some(Path::new("/opt/hsm/lib hsm.so")));
        assert_eq!(uri.pin_file(), Some(Path::new("/run/secrets/pin")));
        assert_eq!(
            uri.resolve_module().unwrap(),
            Path::new("/opt/hsm/lib hsm.so")
        );
    }

    /// One row per rule: the URI, and the values it gives (token, object, pin file).
    #[test]
    fn accepted_forms() {
        let rows: &[(&str, &str, &str, Option<&str>)] = &[
            ("pkcs11:token=t;object=o", "t", "o", None),
            ("PKCS11:token=t;object=o", "t", "o", None),
            ("pkcs11:object=o;token=t;", "t", "o", None),
            (
                "pkcs11:token=my%20token;object=ca%3Bkey%2fv1",
                "my token",
                "ca;key/v1",
                None,
            ),
            ("pkcs11:token=%C3%A9t%C3%A9;object=o", "été", "o", None),
            (
                "pkcs11:token=t;object=o?pin-source=file:pin.txt",
                "t",
                "o",
                Some("pin.txt"),
            ),
            (
                "pkcs11:token=t;object=o?pin-source=file:///etc/pin",
                "t",
                "o",
                Some("/etc/pin"),
            ),
            (
                "pkcs11:token=t;object=o?pin-source=/etc/pin",
                "t",
                "o",
                Some("/etc/pin"),
            ),
            ("pkcs11:token=t;object=o?pin-value=1234", "t", "o", None),
        ];
        for (text, token, object, pin_file) in rows {
            let uri = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(uri.has_pin_value(), text.contains("pin-value="), "{text}");
            assert_eq!(uri.token(), *token, "{text}");
            assert_eq!(uri.object(), *object, "{text}");
            assert_eq!(uri.pin_file(), pin_file.map(Path::new), "{text}");
            assert_eq!(uri.module_path(), None, "{text}");
        }
    }

    /// One row per refusal: the URI and a piece of the message that says what is wrong.
    #[test]
    fn refused_forms_say_what_is_wrong() {
        let rows = [
            ("token=t;object=o", "does not start with `pkcs11:`"),
            ("pkcs11:", "no `token=`"),
            ("pkcs11:object=o", "no `token=`"),
            ("pkcs11:token=t", "no `object=`"),
            (
                "pkcs11:token=t;token=u;object=o",
                "`token` attribute is given twice",
            ),
            ("pkcs11:token=;object=o", "value of `token` is empty"),
            (
                "pkcs11:token=t;object",
                "`object` is not of the form name=value",
            ),
            (
                "pkcs11:token=t%2;object=o",
                "`%` not followed by two hex digits",
            ),
            (
                "pkcs11:token=t%zz;object=o",
                "`%` not followed by two hex digits",
            ),
            ("pkcs11:token=%ff;object=o", "not UTF-8"),
            (
                "pkcs11:token=t;object=o;type=cert",
                "type=cert does not name a private key",
            ),
            (
                "pkcs11:token=t;object=o;id=%01",
                "`id` attribute is not supported",
            ),
            (
                "pkcs11:token=t;object=o;serial=42",
                "`serial` attribute is not supported",
            ),
            (
                "pkcs11:token=t;object=o;x-vendor=1",
                "unknown attribute `x-vendor` in the path",
            ),
            (
                "pkcs11:token=t;object=o?pin-sorce=file:/p",
                "unknown attribute `pin-sorce`",
            ),
            (
                "pkcs11:token=t;object=o?module-name=softhsm2",
                "module-name is not supported",
            ),
            (
                "pkcs11:token=t;object=o?module-path=/a&module-path=/b",
                "given twice",
            ),
            (
                "pkcs11:token=t;object=o?pin-source=/p&pin-value=1",
                "PIN is given twice",
            ),
            (
                "pkcs11:token=t;object=o?pin-source=|/bin/cat",
                "must be file:<path>",
            ),
            (
                "pkcs11:token=t;object=o?pin-source=https://x/p",
                "must be file:<path>",
            ),
            (
                "pkcs11:token=t;object=o?pin-source=file://host/p",
                "another host",
            ),
            ("pkcs11:token=t;object=o?pin-source=file:", "names no file"),
            ("pkcs11:token=t;object=o#frag", "no `#` fragment"),
        ];
        for (text, expected) in rows {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn the_pin_never_shows() {
        let uri = parse("pkcs11:token=t;object=o?pin-value=s3cr3t-p1n").unwrap();
        assert_eq!(uri.read_pin().unwrap().unwrap().as_str(), "s3cr3t-p1n");
        assert!(!format!("{uri:?}").contains("s3cr3t"), "{uri:?}");
        assert!(!uri.to_string().contains("s3cr3t"), "{uri}");
        for bad in [
            "pkcs11:token=t;object=o?pin-value=s3cr3t%zz",
            "pkcs11:token=t;object=o?pin-value=s3cr3t%ff",
            "pkcs11:token=t;object=o?pin-value=s3cr3t&pin-source=/p",
            "pkcs11:token=t;object=o?pin-value=s3cr3t&pin-value=s3cr3t",
            "pkcs11:token=t?pin-value=s3cr3t",
            "pkcs11:token=t;object=o?pin-value=s3cr3t&x=s3cr3t",
            // An unencoded `&` in the PIN splits it; the tail is not a name=value pair.
            "pkcs11:token=t;object=o?pin-value=12&s3cr3t",
            "pkcs11:token=t;object=s3cr3t;o?pin-value=1",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(!err.to_string().contains("s3cr3t"), "{err}");
            assert!(!format!("{err:?}").contains("s3cr3t"), "{err:?}");
        }
    }

    #[test]
    fn display_round_trips_without_the_pin_value() {
        for text in [
            "pkcs11:token=my%20token;object=ca%3Bkey?module-path=/opt/a%26b.so&pin-source=file:/p%3Fq",
            "pkcs11:token=t;object=o?pin-source=file:/run/pin",
            "pkcs11:token=t;object=o",
        ] {
            let uri = parse(text).unwrap();
            assert_eq!(uri.to_string(), text);
            assert_eq!(parse(&uri.to_string()).unwrap(), uri);
        }
        let with_value = parse("pkcs11:token=t;object=o?pin-value=1234").unwrap();
        assert_eq!(with_value.to_string(), "pkcs11:token=t;object=o");
    }

    #[test]
    fn pin_files_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        for (contents, pin) in [("1234\n", "1234"), ("1234\r\n", "1234"), ("12 34", "12 34")] {
            let path = dir.path().join("pin");
            std::fs::write(&path, contents).unwrap();
            let uri = parse(&format!(
                "pkcs11:token=t;object=o?pin-source=file:{}",
                path.display()
            ))
            .unwrap();
            assert_eq!(uri.read_pin().unwrap().unwrap().as_str(), pin);
        }
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let uri = parse(&format!(
            "pkcs11:token=t;object=o?pin-source={}/empty",
            dir.path().display()
        ))
        .unwrap();
        let err = uri.read_pin().unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let missing = parse("pkcs11:token=t;object=o?pin-source=/nonexistent/pin").unwrap();
        let err = missing.read_pin().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/pin"), "{err}");
    }

    #[test]
    fn without_module_path_the_first_softhsm_module_found_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.so"), dir.path().join("b.so"));
        let err = first_existing(vec![a.clone(), b.clone()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.so") && err.contains("b.so"), "{err}");
        assert!(err.contains("module-path="), "{err}");
        std::fs::write(&b, "").unwrap();
        assert_eq!(first_existing(vec![a.clone(), b.clone()]).unwrap(), b);
        std::fs::write(&a, "").unwrap();
        assert_eq!(first_existing(vec![a.clone(), b]).unwrap(), a);
        assert_eq!(
            default_module_paths()[0],
            Path::new("/usr/lib/softhsm/libsofthsm2.so")
        );
    }
}
