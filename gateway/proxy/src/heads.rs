//! The request head the upstream receives and the response head the client receives, each
//! rebuilt once with room for the headers the gateway adds.
//!
//! Pingora hands `upstream_request_filter` a clone of the client's request, and
//! `response_filter` the upstream's parsed response, each with a header map that is exactly full
//! and a second map holding every name in the case it arrived in. Each `insert_header` parses
//! its name again, inserts into both maps and grows and rehashes both when they are full (about
//! 14,000 instructions of a pass-through request's upstream request alone, bench/README.md
//! "Where the native time goes"), and Pingora offers no way to reserve room. A rebuilt head has
//! one map, sized once; the gateway's headers go in as parsed [`HeaderName`]s and the headers
//! that arrived are shared, not copied.
//!
//! Without the case map Pingora writes the standard header names in their usual title case
//! (`Host`, `Content-Type`) and every other name in lower case, as Envoy forwards every name:
//! HTTP field names are case-insensitive (RFC 9110 §5.1).
//!
//! [`HeaderName`]: http::HeaderName

use http::{request, response, HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType};

/// Room for the gateway's own request headers: request id, `traceparent`, `tracestate`, up to
/// seven verified-context headers, `X-Forwarded-For`, `X-Forwarded-Proto`, the usage id, and
/// `Host` should Pingora add it.
pub const REQUEST_ROOM: usize = 16;
/// Room for the gateway's own response headers: request id, `RateLimit-Policy`, `RateLimit`,
/// `Retry-After`, a renewed session cookie.
pub const RESPONSE_ROOM: usize = 6;

/// `request`'s method, target, version and extensions, and its headers in one map with room
/// for `room` more. The extensions are moved out of `request`, which is to be replaced by
/// [`request_rebuilt`].
pub fn request_with_room(request: &mut RequestHeader, room: usize) -> request::Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = request.method.clone();
    parts.uri = request.uri.clone();
    parts.version = request.version;
    parts.headers = with_room(&request.headers, room);
    parts.extensions = std::mem::take(request.extensions_mut());
    parts
}

/// The request to send: `parts` as a Pingora request, with `original`'s request-target as it
/// will appear on the wire (an absolute-form or non-UTF-8 target does not round-trip through
/// the URI) and its HTTP/2 end-of-stream choice.
pub fn request_rebuilt(
    parts: request::Parts,
    original: &RequestHeader,
) -> pingora::Result<RequestHeader> {
    let mut request = RequestHeader::from(parts);
    if request.raw_path() != original.raw_path() {
        request.set_raw_path(original.raw_path())?;
    }
    if let Some(end_stream) = original.send_end_stream() {
        request.set_send_end_stream(end_stream);
    }
    Ok(request)
}

/// `response`'s status, version and extensions, and its headers in one map with room for
/// `room` more. The extensions are moved out of `response`, which is to be replaced by
/// [`response_rebuilt`].
pub fn response_with_room(response: &mut ResponseHeader, room: usize) -> response::Parts {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = response.status;
    parts.version = response.version;
    parts.headers = with_room(&response.headers, room);
    parts.extensions = std::mem::take(response.extensions_mut());
    parts
}

/// The response to send: `parts` as a Pingora response with `original`'s reason phrase.
pub fn response_rebuilt(
    parts: response::Parts,
    original: &ResponseHeader,
) -> pingora::Result<ResponseHeader> {
    let mut response = ResponseHeader::from(parts);
    response.set_reason_phrase(original.get_reason_phrase())?;
    Ok(response)
}

/// A header value the gateway computed, refused as Pingora's `insert_header` would refuse it.
pub fn value(text: impl TryInto<HeaderValue>) -> pingora::Result<HeaderValue> {
    text.try_into()
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid header value"))
}

/// One of the engine's header names (`RateLimit`, `Retry-After`, …), which it names as static
/// lower-case strings: shared as they are, where parsing allocated a copy of every name that is
/// not a standard one on every request. Anything else is refused as [`value`] refuses values.
pub fn static_name(name: &'static str) -> pingora::Result<HeaderName> {
    let token = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        });
    if token {
        // Cannot panic: `name` is a non-empty lower-case token, which is what it requires.
        Ok(HeaderName::from_static(name))
    } else {
        Err(Error::explain(
            ErrorType::InvalidHTTPHeader,
            "invalid header name",
        ))
    }
}

/// Every header line of `headers`, in order, in a map with room for `room` more.
fn with_room(headers: &HeaderMap, room: usize) -> HeaderMap {
    let mut copy = HeaderMap::with_capacity(headers.len() + room);
    for (name, value) in headers {
        copy.append(name.clone(), value.clone());
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(i: usize) -> HeaderName {
        HeaderName::try_from(format!("x-added-{i}")).unwrap()
    }

    #[test]
    fn the_engines_header_names_are_taken_as_they_are_and_anything_else_is_refused() {
        for name in ["ratelimit-policy", "ratelimit", "retry-after", "x-a_b.c~1"] {
            let taken = static_name(name).unwrap();
            assert_eq!(taken, HeaderName::from_bytes(name.as_bytes()).unwrap());
            assert_eq!(taken.as_str(), name);
        }
        for bad in ["", "RateLimit", "rate limit", "x:y", "é"] {
            assert!(static_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_rebuilt_request_keeps_every_header_line_target_and_method_and_adds_without_growing() {
        let mut original = RequestHeader::build("POST", b"/a%20b/c?x=1&y", None).unwrap();
        original.insert_header("Host", "api.example").unwrap();
        original
            .append_header("X-Forwarded-For", "10.0.0.1")
            .unwrap();
        original
            .append_header("X-Forwarded-For", "10.0.0.2")
            .unwrap();
        original.insert_header("X-Custom", "kept").unwrap();
        original.extensions_mut().insert(7u32);

        let mut parts = request_with_room(&mut original, REQUEST_ROOM);
        let capacity = parts.headers.capacity();
        for i in 0..REQUEST_ROOM {
            parts
                .headers
                .insert(added(i), value(i.to_string()).unwrap());
        }
        assert_eq!(parts.headers.capacity(), capacity, "room was reserved once");
        let rebuilt = request_rebuilt(parts, &original).unwrap();

        assert_eq!(rebuilt.method, http::Method::POST);
        assert_eq!(rebuilt.raw_path(), b"/a%20b/c?x=1&y");
        assert_eq!(rebuilt.extensions.get::<u32>(), Some(&7));
        let mut wire = Vec::new();
        rebuilt.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.starts_with("Host: api.example\r\n"), "{wire}");
        assert!(
            wire.contains("x-forwarded-for: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\n"),
            "{wire}"
        );
        assert!(wire.contains("x-custom: kept\r\n"), "{wire}");
        assert!(wire.contains("x-added-15: 15\r\n"), "{wire}");
    }

    #[test]
    fn a_target_the_uri_does_not_reproduce_is_sent_as_received() {
        let mut original = RequestHeader::build("GET", b"http://api.example/p?q=1", None).unwrap();
        let parts = request_with_room(&mut original, 0);
        let rebuilt = request_rebuilt(parts, &original).unwrap();
        assert_eq!(rebuilt.raw_path(), b"http://api.example/p?q=1");
    }

    #[test]
    fn the_rebuilt_response_keeps_status_reason_and_every_header_line() {
        let mut original = ResponseHeader::build(201, None).unwrap();
        original.set_reason_phrase(Some("Made")).unwrap();
        original.append_header("Set-Cookie", "a=1").unwrap();
        original.append_header("Set-Cookie", "b=2").unwrap();
        original.insert_header("Content-Length", "0").unwrap();

        let mut parts = response_with_room(&mut original, RESPONSE_ROOM);
        let capacity = parts.headers.capacity();
        for i in 0..RESPONSE_ROOM {
            parts.headers.insert(added(i), value("1").unwrap());
        }
        assert_eq!(parts.headers.capacity(), capacity, "room was reserved once");
        let rebuilt = response_rebuilt(parts, &original).unwrap();

        assert_eq!(rebuilt.status, 201);
        assert_eq!(rebuilt.get_reason_phrase(), Some("Made"));
        let cookies: Vec<_> = rebuilt.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(rebuilt.headers.len(), 3 + RESPONSE_ROOM);
    }

    #[test]
    fn a_value_no_parser_would_accept_is_refused() {
        assert!(value("line\r\nbreak").is_err());
        assert!(value(String::from("fine")).is_ok());
    }
}
