//! Request id and W3C Trace Context (`traceparent`/`tracestate`) for every request.
//!
//! A client's `x-request-id` is kept when it is well-formed (so ids chain across services) and
//! replaced otherwise, so log and audit lines can never be injected through it. The gateway is a
//! hop in the trace: it keeps the caller's trace id and gives the upstream its own span id.

use http::{HeaderMap, HeaderName};
use rand::Rng;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const TRACESTATE_HEADER: &str = "tracestate";
/// The same names parsed, for the maps the gateway writes into.
pub const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
pub const TRACEPARENT: HeaderName = HeaderName::from_static(TRACEPARENT_HEADER);
pub const TRACESTATE: HeaderName = HeaderName::from_static(TRACESTATE_HEADER);

const MAX_REQUEST_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlation {
    pub request_id: String,
    pub trace: TraceContext,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The span id the gateway gives its own hop; sent upstream as the parent id.
    pub span_id: [u8; 8],
    /// The caller's span id, when the caller sent a valid `traceparent`.
    pub caller_span_id: Option<[u8; 8]>,
    pub flags: u8,
    /// Passed through unchanged when the caller's `traceparent` was valid.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// `traceparent` value for the upstream request (version 00).
    pub fn traceparent(&self) -> String {
        // Written in place, without hex's per-char String: this runs for every request.
        let mut line = String::with_capacity(55);
        line.push_str("00-");
        push_hex(&mut line, &self.trace_id);
        line.push('-');
        push_hex(&mut line, &self.span_id);
        line.push('-');
        push_hex(&mut line, &[self.flags]);
        line
    }

    pub fn trace_id_hex(&self) -> String {
        let mut hex = String::with_capacity(32);
        push_hex(&mut hex, &self.trace_id);
        hex
    }
}

/// Appends lower-case hex of `bytes` (at most 16 of them) to `out`.
fn push_hex(out: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; 32];
    if let Some(digits) = buf.get_mut(..bytes.len() * 2) {
        if hex::encode_to_slice(bytes, digits).is_ok() {
            out.push_str(std::str::from_utf8(digits).unwrap_or_default());
        }
    }
}

/// Reads the correlation headers of an inbound request, generating what is absent or invalid.
pub fn correlate(headers: &HeaderMap) -> Correlation {
    let mut rng = rand::rng();
    let request_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_valid_request_id(id))
        .map(str::to_string)
        .unwrap_or_else(|| new_uuid_v7().to_string());

    let parent = headers
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let span_id = nonzero_bytes::<8>(&mut rng);
    let trace = match parent {
        Some(p) => TraceContext {
            trace_id: p.trace_id,
            span_id,
            caller_span_id: Some(p.parent_id),
            flags: p.flags,
            tracestate: headers
                .get(TRACESTATE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        },
        None => TraceContext {
            trace_id: nonzero_bytes::<16>(&mut rng),
            span_id,
            caller_span_id: None,
            // Sampled: the gateway records every request in its audit log anyway.
            flags: 0x01,
            tracestate: None,
        },
    };
    Correlation { request_id, trace }
}

/// A UUIDv7 (time-ordered to the millisecond) whose random part comes from the thread's CSPRNG,
/// seeded from the OS once per thread: no `getrandom(2)` per id, unlike `Uuid::now_v7`.
pub fn new_uuid_v7() -> uuid::Uuid {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let random: [u8; 10] = rand::rng().random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
        })
}

struct ParsedTraceparent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// Parses a `traceparent` per W3C Trace Context level 1 §3.2: version `00` exactly; for higher
/// versions the first four fields are read and the rest ignored; `ff` is invalid.
fn parse_traceparent(value: &str) -> Option<ParsedTraceparent> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && (rest.is_some() || value.len() != 55) {
        return None;
    }
    if trace_id.len() != 32 || parent_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !is_lower_hex(trace_id) || !is_lower_hex(parent_id) || !is_lower_hex(flags) {
        return None;
    }
    let mut t = [0u8; 16];
    let mut p = [0u8; 8];
    let mut f = [0u8; 1];
    hex::decode_to_slice(trace_id, &mut t).ok()?;
    hex::decode_to_slice(parent_id, &mut p).ok()?;
    hex::decode_to_slice(flags, &mut f).ok()?;
    if t == [0; 16] || p == [0; 8] {
        return None;
    }
    Some(ParsedTraceparent {
        trace_id: t,
        parent_id: p,
        flags: f[0],
    })
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn nonzero_bytes<const N: usize>(rng: &mut impl Rng) -> [u8; N] {
    loop {
        let bytes: [u8; N] = rng.random();
        if bytes != [0; N] {
            return bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn generated_ids_are_distinct_uuid_v7_of_now() {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ids: std::collections::HashSet<uuid::Uuid> = (0..1000).map(|_| new_uuid_v7()).collect();
        assert_eq!(ids.len(), 1000);
        for id in ids {
            assert_eq!(id.get_version(), Some(uuid::Version::SortRand));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(ms.abs_diff(now_ms) < 10_000, "{id}");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn keeps_valid_request_id_and_replaces_invalid() {
        let c = correlate(&headers(&[("x-request-id", "abc-123_X.y")]));
        assert_eq!(c.request_id, "abc-123_X.y");
        let c = correlate(&headers(&[("x-request-id", "bad id\"; drop")]));
        assert_ne!(c.request_id, "bad id\"; drop");
        assert_eq!(c.request_id.len(), 36);
        let long = "a".repeat(200);
        assert_ne!(
            correlate(&headers(&[("x-request-id", &long)])).request_id,
            long
        );
    }

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = correlate(&headers(&[
            ("traceparent", tp),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]));
        assert_eq!(c.trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.trace.caller_span_id, Some(hex_8("00f067aa0ba902b7")));
        assert_ne!(c.trace.span_id, hex_8("00f067aa0ba902b7"));
        assert_eq!(c.trace.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        let out = c.trace.traceparent();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_eq!(out.len(), 55);
    }

    #[test]
    fn rejects_malformed_traceparents() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // Future versions: first four fields are read, the rest ignored.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn starts_a_trace_when_none_or_invalid() {
        let c = correlate(&headers(&[("traceparent", "nope"), ("tracestate", "a=b")]));
        assert_eq!(c.trace.caller_span_id, None);
        assert_eq!(c.trace.tracestate, None);
        assert_ne!(c.trace.trace_id, [0; 16]);
        assert!(parse_traceparent(&c.trace.traceparent()).is_some());
    }

    fn hex_8(s: &str) -> [u8; 8] {
        let mut b = [0u8; 8];
        hex::decode_to_slice(s, &mut b).unwrap();
        b
    }
}
