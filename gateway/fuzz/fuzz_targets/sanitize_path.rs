//! Stage 1 on arbitrary request targets and headers.
//!
//! Input: NUL-separated parts: the request target, then header lines `name: value`. The first
//! byte of the target part chooses the settings (bit 0: merge `//`, bit 1: honour method
//! overrides, bits 2-3: the method) and is not part of the target.
//!
//! Properties of every accepted request:
//! - the path is absolute, has no empty, `.` or `..` segment, no `?`, `#` or raw byte outside
//!   visible ASCII, and is a fixed point of the normaliser (with and without merging);
//! - no encoded `%` (`%25`), and decoding it once yields no `/`, `\`, `%`, control character or
//!   dot segment, in well-formed UTF-8: an upstream that decodes again sees the same path;
//! - to an upstream that decodes once, the path means what the raw path meant (RFC 3986 dot
//!   segments resolved on decoded segments, `//` merged);
//! - sanitising the output again gives the same target, and needs no rewrite;
//! - when the proxy can represent the raw target (`http::Uri`), it can represent the output;
//! - `rewrite_target` says exactly whether the output differs from the raw target;
//! - exactly the headers the gateway owns are stripped; without `honor` the method is kept.
#![no_main]

use gateway::config::{MethodOverride, SanitizeConfig};
use gateway::pipeline::sanitize::{normalize_path, sanitize, SanitizePolicy};
use gateway::pipeline::RequestHead;
use gateway_engine::test_support::{decoded_segments, reference_segments};
use gateway_fuzz::parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;

fn policy(merge: bool, honor: bool, parameters: bool) -> SanitizePolicy {
    SanitizePolicy::new(&SanitizeConfig {
        strip_headers: vec!["x-internal-*".into(), "x-debug".into()],
        merge_slashes: merge,
        method_override: if honor {
            MethodOverride::Honor
        } else {
            MethodOverride::Strip
        },
        allow_path_parameters: parameters,
    })
}

fuzz_target!(|data: &[u8]| {
    let parts = parts(data);
    let Some((&flags, target)) = parts[0].split_first() else {
        return;
    };
    let merge = flags & 1 != 0;
    let honor = flags & 2 != 0;
    let method =
        [Method::GET, Method::POST, Method::PUT, Method::HEAD][usize::from(flags >> 2 & 3)].clone();
    let parameters = flags & 16 != 0;
    let mut headers = HeaderMap::new();
    for line in &parts[1..] {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let policy = policy(merge, honor, parameters);
    let head = RequestHead {
        method: &method,
        target,
        host: None,
        headers: &headers,
        client_ip: None,
        body: None,
    };
    let Ok(s) = sanitize(&head, &policy) else {
        return;
    };
    let path = s.path.as_str();
    let out = s.target();
    assert!(parameters || !path.contains(';'), "`;` kept in {path:?}");

    // Shape.
    assert!(path.starts_with('/'), "{path:?}");
    assert!(
        path.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#'),
        "{path:?}"
    );
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        assert!(
            !segment.is_empty() || i == segments.len() - 1,
            "empty segment in {path:?}"
        );
        assert!(
            *segment != "." && *segment != "..",
            "dot segment in {path:?}"
        );
    }
    // A fixed point of the normaliser.
    assert_eq!(normalize_path(path.as_bytes(), true).as_deref(), Ok(path));
    assert_eq!(normalize_path(path.as_bytes(), false).as_deref(), Ok(path));
    // Nothing left encoded that an upstream could read as structure.
    assert!(!path.contains("%25"), "encoded % in {path:?}");
    for segment in decoded_segments(path) {
        assert!(
            !segment
                .iter()
                .any(|&b| matches!(b, b'/' | b'\\' | b'%') || b < 0x20 || b == 0x7f),
            "{path:?} decodes to {segment:?}"
        );
        assert!(segment != b"." && segment != b"..", "{path:?}");
        assert!(std::str::from_utf8(&segment).is_ok(), "{path:?}");
    }
    // The same meaning as the raw path.
    if target.starts_with(b"/") {
        let raw_path = target.split(|&b| b == b'?').next().unwrap_or_default();
        assert_eq!(
            Some(decoded_segments(path)),
            reference_segments(raw_path),
            "{path:?}"
        );
    }
    // Sanitising the output (with the method it settled on) changes nothing.
    let again_head = RequestHead {
        method: &s.method,
        target: out.as_bytes(),
        ..head
    };
    let again = sanitize(&again_head, &policy).unwrap_or_else(|e| panic!("{out:?} refused: {e}"));
    assert_eq!(again.target(), out);
    assert!(!again.rewrite_target, "{out:?}");
    // The proxy can send what it matched.
    if http::Uri::try_from(target).is_ok() && target.starts_with(b"/") {
        let uri = http::Uri::try_from(out.as_str())
            .unwrap_or_else(|e| panic!("{out:?} is no URI ({e}) though {target:?} was"));
        assert_eq!(uri.path(), path);
        assert_eq!(uri.query(), s.query.as_deref());
    }
    assert_eq!(s.rewrite_target, out.as_bytes() != target);
    // Owned headers, and only they, are stripped.
    for name in headers.keys() {
        assert_eq!(
            s.strip.contains(name),
            policy.is_owned(name.as_str()),
            "{name}"
        );
    }
    if !honor || method != Method::POST {
        assert_eq!(s.method, method);
    }
});
