//! Stage 1: make the request unambiguous before anything looks at it.
//!
//! The path is normalised to exactly what the upstream will receive, so the route that later
//! stages authorise is the route that is served: unreserved characters are percent-decoded,
//! `.`/`..` segments resolved, `//` merged. Encodings that different servers read differently
//! (`%2f` inside a segment, `%00`, double encoding, backslashes, `..;`) are rejected instead.
//! Inbound headers that the gateway owns are stripped, so a client can never spoof them.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName};

use crate::config::SanitizeConfig;

use super::RequestHead;

/// Headers the gateway sets for the upstream; never accepted from a client.
pub const OWNED_EXACT: &[&str] = &["x-tenant-id"];
pub const OWNED_PREFIXES: &[&str] = &["x-principal-", "x-gateway-"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target must be an absolute path")]
    NotOriginForm,
    #[error("invalid percent-encoding")]
    InvalidPercentEncoding,
    #[error("an encoded slash (%2F) inside a path segment is ambiguous")]
    EncodedSlash,
    #[error("backslashes (raw or %5C) are not allowed in paths")]
    Backslash,
    #[error("control characters (including %00) are not allowed in paths")]
    ControlCharacter,
    #[error("double percent-encoding (%25 followed by hex digits) is ambiguous")]
    DoubleEncoding,
    #[error("raw non-ASCII bytes must be percent-encoded")]
    NonAscii,
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
    #[error("a dot segment with parameters (e.g. `..;`) is ambiguous")]
    DotSegmentWithParameters,
    #[error("empty path segments (`//`) are not allowed")]
    EmptySegment,
    #[error("invalid characters in the query string")]
    InvalidQuery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("both Content-Length and Transfer-Encoding are present")]
    LengthAndChunked,
    #[error("conflicting Content-Length values")]
    ConflictingLength,
    #[error("more than one Host header")]
    DuplicateHost,
}

/// Stage 1 settings, compiled from `[sanitize]`.
#[derive(Debug, Clone)]
pub struct SanitizePolicy {
    strip_exact: Vec<String>,
    strip_prefixes: Vec<String>,
    merge_slashes: bool,
}

impl SanitizePolicy {
    pub fn new(config: &SanitizeConfig) -> Self {
        let mut strip_exact: Vec<String> = OWNED_EXACT.iter().map(|s| s.to_string()).collect();
        let mut strip_prefixes: Vec<String> =
            OWNED_PREFIXES.iter().map(|s| s.to_string()).collect();
        for name in &config.strip_headers {
            let name = canonical_header_name(name);
            match name.strip_suffix('*') {
                Some(prefix) => strip_prefixes.push(prefix.to_string()),
                None => strip_exact.push(name),
            }
        }
        SanitizePolicy {
            strip_exact,
            strip_prefixes,
            merge_slashes: config.merge_slashes,
        }
    }

    /// The gateway owns (and strips) a header of this lower-case name.
    pub fn is_owned(&self, name: &str) -> bool {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => self.strips(&n),
            Err(_) => false,
        }
    }

    fn strips(&self, name: &HeaderName) -> bool {
        // `x_tenant_id` reaches some frameworks (CGI, WSGI, Rails) as `x-tenant-id`: strip both.
        // Header names are already lower-case; compare without allocating per request.
        let name = name.as_str().as_bytes();
        self.strip_exact
            .iter()
            .any(|n| n.len() == name.len() && canonical_starts_with(name, n))
            || self
                .strip_prefixes
                .iter()
                .any(|p| canonical_starts_with(name, p))
    }
}

/// `name`, with `_` read as `-`, starts with `prefix` (already canonical).
fn canonical_starts_with(name: &[u8], prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name
            .iter()
            .zip(prefix.as_bytes())
            .all(|(&a, &b)| (if a == b'_' { b'-' } else { a }) == b)
}

impl Default for SanitizePolicy {
    fn default() -> Self {
        SanitizePolicy::new(&SanitizeConfig::default())
    }
}

fn canonical_header_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Output of stage 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sanitized {
    /// The normalised path: what later stages match on and what the upstream receives.
    pub path: String,
    /// The query string as received (validated, not rewritten).
    pub query: Option<String>,
    /// The upstream request target must be rewritten (the raw target differed).
    pub rewrite_target: bool,
    /// Inbound headers to remove before anything else reads them.
    pub strip: Vec<HeaderName>,
}

impl Sanitized {
    /// `path?query`, the request target for the upstream.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Runs stage 1 on a request head.
pub fn sanitize(
    head: &RequestHead<'_>,
    policy: &SanitizePolicy,
) -> Result<Sanitized, super::Rejection> {
    check_framing(head.headers)?;
    let (raw_path, raw_query) = split_target(head.target)?;
    let path = normalize_path(raw_path, policy.merge_slashes)?;
    let query = match raw_query {
        Some(q) => Some(validate_query(q)?),
        None => None,
    };
    let strip = head
        .headers
        .keys()
        .filter(|name| policy.strips(name))
        .cloned()
        .collect();
    let mut sanitized = Sanitized {
        path,
        query,
        rewrite_target: false,
        strip,
    };
    sanitized.rewrite_target = sanitized.target().as_bytes() != head.target;
    Ok(sanitized)
}

fn check_framing(headers: &HeaderMap) -> Result<(), FramingError> {
    if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
        return Err(FramingError::LengthAndChunked);
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if lengths.any(|other| other != first) {
            return Err(FramingError::ConflictingLength);
        }
    }
    if headers.get_all(HOST).iter().count() > 1 {
        return Err(FramingError::DuplicateHost);
    }
    Ok(())
}

/// Splits the raw request target into path and query. Absolute-form targets
/// (`http://host/path`) are accepted as RFC 9112 §3.2.2 requires, keeping only the path.
fn split_target(target: &[u8]) -> Result<(&[u8], Option<&[u8]>), PathError> {
    let target = strip_absolute_form(target);
    if target.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    if target.contains(&b'#') {
        return Err(PathError::InvalidQuery);
    }
    Ok(match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    })
}

fn strip_absolute_form(target: &[u8]) -> &[u8] {
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            return match rest.iter().position(|&b| b == b'/' || b == b'?') {
                Some(i) if rest[i] == b'/' => &rest[i..],
                // `http://host?q` or `http://host`: the path is `/`.
                _ => b"/",
            };
        }
    }
    target
}

/// Normalises a raw path (RFC 3986 §6.2.2 plus the gateway's ambiguity rules).
pub fn normalize_path(raw: &[u8], merge_slashes: bool) -> Result<String, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let raw_segments: Vec<&[u8]> = raw[1..].split(|&b| b == b'/').collect();
    let last_index = raw_segments.len() - 1;
    let mut out: Vec<String> = Vec::with_capacity(raw_segments.len());
    let mut trailing_slash = false;
    for (i, raw_segment) in raw_segments.iter().enumerate() {
        let is_last = i == last_index;
        let segment = decode_segment(raw_segment)?;
        trailing_slash = false;
        match segment.as_str() {
            "" if is_last => trailing_slash = !out.is_empty(),
            "" => {
                if !merge_slashes {
                    return Err(PathError::EmptySegment);
                }
            }
            "." => trailing_slash = is_last,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = is_last;
            }
            s => {
                let before_params = s.split(';').next().unwrap_or(s);
                if s.contains(';') && (before_params == "." || before_params == "..") {
                    return Err(PathError::DotSegmentWithParameters);
                }
                out.push(segment);
            }
        }
    }
    let mut path = String::with_capacity(raw.len());
    for segment in &out {
        path.push('/');
        path.push_str(segment);
    }
    if trailing_slash || path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// Decodes percent-encoded unreserved characters, upper-cases the hex of the rest, and rejects
/// everything ambiguous.
fn decode_segment(raw: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let value = hex_pair(raw.get(i + 1..i + 3)).ok_or(PathError::InvalidPercentEncoding)?;
            match value {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::Backslash),
                0x00..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                b'%' if hex_pair(raw.get(i + 3..i + 5)).is_some() => {
                    return Err(PathError::DoubleEncoding)
                }
                v if is_unreserved(v) => out.push(v as char),
                v => {
                    out.push('%');
                    out.push_str(&format!("{v:02X}"));
                }
            }
            i += 3;
            continue;
        }
        match b {
            b'\\' => return Err(PathError::Backslash),
            0x00..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            0x80..=0xff => return Err(PathError::NonAscii),
            b' ' | b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}' => {
                return Err(PathError::InvalidPercentEncoding)
            }
            _ => out.push(b as char),
        }
        i += 1;
    }
    Ok(out)
}

fn hex_pair(pair: Option<&[u8]>) -> Option<u8> {
    let pair = pair?;
    let hi = (pair[0] as char).to_digit(16)?;
    let lo = (pair[1] as char).to_digit(16)?;
    Some((hi * 16 + lo) as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn validate_query(raw: &[u8]) -> Result<String, PathError> {
    if raw
        .iter()
        .any(|&b| b < 0x20 || b == 0x7f || b >= 0x80 || b == b' ')
    {
        return Err(PathError::InvalidQuery);
    }
    // All bytes are ASCII here.
    Ok(String::from_utf8_lossy(raw).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Rejection;
    use http::{HeaderValue, Method};

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p.as_bytes(), true)
    }

    #[test]
    fn normalises_dot_segments_and_slashes() {
        assert_eq!(norm("/a/../b").unwrap(), "/b");
        assert_eq!(norm("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(norm("//x").unwrap(), "/x");
        assert_eq!(norm("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("/a/b/../../").unwrap(), "/");
    }

    #[test]
    fn decodes_unreserved_and_keeps_others_encoded() {
        assert_eq!(norm("/%61%62c").unwrap(), "/abc");
        assert_eq!(norm("/a%2db%7e").unwrap(), "/a-b~");
        assert_eq!(norm("/%2e%2e/x").unwrap_err(), PathError::AboveRoot);
        assert_eq!(norm("/a/%2e%2e/x").unwrap(), "/x");
        assert_eq!(norm("/a/%2E/x").unwrap(), "/a/x");
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
        assert_eq!(norm("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn rejects_ambiguous_encodings() {
        assert_eq!(norm("/a%2fb").unwrap_err(), PathError::EncodedSlash);
        assert_eq!(norm("/a%2Fb").unwrap_err(), PathError::EncodedSlash);
        assert_eq!(norm("/a%00b").unwrap_err(), PathError::ControlCharacter);
        assert_eq!(norm("/a%0ab").unwrap_err(), PathError::ControlCharacter);
        assert_eq!(norm("/a%5cb").unwrap_err(), PathError::Backslash);
        assert_eq!(norm("/a\\b").unwrap_err(), PathError::Backslash);
        assert_eq!(
            norm("/%252e%252e/x").unwrap_err(),
            PathError::DoubleEncoding
        );
        assert_eq!(norm("/%25").unwrap(), "/%25");
        assert_eq!(norm("/a%2").unwrap_err(), PathError::InvalidPercentEncoding);
        assert_eq!(
            norm("/a%zz").unwrap_err(),
            PathError::InvalidPercentEncoding
        );
        assert_eq!(norm("/..").unwrap_err(), PathError::AboveRoot);
        assert_eq!(norm("/../etc/passwd").unwrap_err(), PathError::AboveRoot);
        assert_eq!(
            norm("/a/..;/b").unwrap_err(),
            PathError::DotSegmentWithParameters
        );
        assert_eq!(
            norm("/a/.;x/b").unwrap_err(),
            PathError::DotSegmentWithParameters
        );
        assert_eq!(norm("/a;v=1/b").unwrap(), "/a;v=1/b");
        assert_eq!(
            normalize_path("/caf\u{e9}".as_bytes(), true).unwrap_err(),
            PathError::NonAscii
        );
        assert_eq!(
            normalize_path(b"//x", false).unwrap_err(),
            PathError::EmptySegment
        );
        assert_eq!(norm("x").unwrap_err(), PathError::NotOriginForm);
    }

    fn head<'a>(target: &'a [u8], headers: &'a HeaderMap) -> RequestHead<'a> {
        RequestHead {
            method: &Method::GET,
            target,
            host: None,
            headers,
            client_ip: None,
        }
    }

    #[test]
    fn splits_query_and_flags_rewrites() {
        let h = HeaderMap::new();
        let s = sanitize(&head(b"/a/../b?x=1&y=%2f", &h), &SanitizePolicy::default()).unwrap();
        assert_eq!(s.path, "/b");
        assert_eq!(s.query.as_deref(), Some("x=1&y=%2f"));
        assert!(s.rewrite_target);
        assert_eq!(s.target(), "/b?x=1&y=%2f");
        let s = sanitize(&head(b"/b?x", &h), &SanitizePolicy::default()).unwrap();
        assert!(!s.rewrite_target);
        let s = sanitize(
            &head(b"http://example.com/p/q?z", &h),
            &SanitizePolicy::default(),
        )
        .unwrap();
        assert_eq!(s.target(), "/p/q?z");
        assert!(s.rewrite_target);
        assert!(matches!(
            sanitize(&head(b"*", &h), &SanitizePolicy::default()),
            Err(Rejection::BadPath(PathError::NotOriginForm))
        ));
    }

    #[test]
    fn strips_owned_and_configured_headers() {
        let mut h = HeaderMap::new();
        for name in [
            "x-tenant-id",
            "x_tenant_id",
            "x-principal-id",
            "x-principal-roles",
            "x-gateway-context",
            "x-internal-debug",
            "x-debug",
            "authorization",
            "x-tenant-idx",
        ] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
        }
        let policy = SanitizePolicy::new(&SanitizeConfig {
            strip_headers: vec!["x-internal-*".into(), "X-Debug".into()],
            merge_slashes: true,
        });
        let s = sanitize(&head(b"/", &h), &policy).unwrap();
        let mut stripped: Vec<_> = s.strip.iter().map(|n| n.as_str()).collect();
        stripped.sort();
        assert_eq!(
            stripped,
            vec![
                "x-debug",
                "x-gateway-context",
                "x-internal-debug",
                "x-principal-id",
                "x-principal-roles",
                "x-tenant-id",
                "x_tenant_id"
            ]
        );
    }

    #[test]
    fn rejects_ambiguous_framing() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert_eq!(
            sanitize(&head(b"/", &h), &SanitizePolicy::default()).unwrap_err(),
            Rejection::AmbiguousFraming(FramingError::LengthAndChunked)
        );
        let mut h = HeaderMap::new();
        h.append(CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.append(CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert_eq!(
            sanitize(&head(b"/", &h), &SanitizePolicy::default()).unwrap_err(),
            Rejection::AmbiguousFraming(FramingError::ConflictingLength)
        );
        let mut h = HeaderMap::new();
        h.append(HOST, HeaderValue::from_static("a"));
        h.append(HOST, HeaderValue::from_static("b"));
        assert_eq!(
            sanitize(&head(b"/", &h), &SanitizePolicy::default()).unwrap_err(),
            Rejection::AmbiguousFraming(FramingError::DuplicateHost)
        );
    }

    #[test]
    fn query_with_raw_control_or_space_is_rejected() {
        let h = HeaderMap::new();
        assert!(sanitize(&head(b"/a?x=1 2", &h), &SanitizePolicy::default()).is_err());
        assert!(sanitize(&head(b"/a?x=\x01", &h), &SanitizePolicy::default()).is_err());
    }
}
