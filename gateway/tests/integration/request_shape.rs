//! Request-shape attacks through the real gateway (issue 13, items 4–6), with the repository's
//! Cedar policies in front of the example upstream: normalisation that manufactured double
//! encoding, malformed `X-Forwarded-For` hops that switched GeoIP off, and method/URL override
//! headers that let a read through which the upstream then served as a write.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::common;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{client, config_for, raw_request, upstream, TestGateway};
use gateway::example_upstream::Echo;
use serde_json::json;

const SECRET: &str = "test-secret-for-the-request-shape-tests-0123456789";
const ISSUER: &str = "https://issuer.shape.test";

/// `acme` is an ordinary tenant; `strict` forbids downloads whenever the client's address is
/// unknown (a policy that needs to know who is asking).
const TENANTS: &str = r#"
[[tenant]]
id = "acme"
tier = "pro"

[[tenant]]
id = "strict"
tier = "pro"
policies = """
@id("downloads-need-a-known-client")
forbid (principal, action == Action::"documents:download", resource) unless { context has ip };
"""
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The repository's policy package, as files to place under `policies/`.
fn policy_files() -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.push((format!("policies/{rel}"), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    let base = repo().join("policies");
    walk(&base, &base, &mut out);
    out
}

/// The gateway with identity, tenancy, the repository's policies, GeoIP (the invented test
/// database: 175.45.0.0/16 is KP, 5.6.0.0/16 is DE) trusting 127.0.0.1 as a proxy, an audit
/// log, and `sanitize` as the `[sanitize]` section.
fn start(up: SocketAddr, sanitize: &str) -> TestGateway {
    let geo = repo().join("gateway/tests/data/geoip2-layout.mmdb");
    let config = config_for(
        &[up],
        &format!(
            r#"
[sanitize]
{sanitize}

[identity]
allow_anonymous = true

[[identity.issuer]]
issuer = "{ISSUER}"
audiences = ["gateway"]
algorithms = ["HS256"]
secret_file = "issuer.secret"
claims = {{ tenant = "org", attributes = {{ mfa = "mfa" }} }}

[tenancy]
sources = ["header", "credential"]

[tenancy.registry]
file = "tenants.toml"

[authorization]
policies = "policies"

[geoip]
database = "{geo}"
trusted_proxies = ["127.0.0.1/32"]

[audit]
dir = "audit"
"#,
            geo = geo.display()
        ),
    );
    let files = policy_files();
    let mut all: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    all.push(("issuer.secret", SECRET.as_bytes()));
    all.push(("tenants.toml", TENANTS.as_bytes()));
    TestGateway::start(&config, &all)
}

fn token(sub: &str, org: &str, roles: &[&str]) -> String {
    let claims = json!({
        "iss": ISSUER, "aud": "gateway", "sub": sub, "org": org, "roles": roles, "mfa": true,
        "exp": crate::common::idp::now() + 600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn assert_problem(status: u16, body: &str, expected_status: u16, slug: &str) {
    assert_eq!(status, expected_status, "{body}");
    let problem: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(problem["status"], expected_status, "{problem}");
    assert_eq!(
        problem["type"],
        format!("tag:policy-gateway,2026:problem/{slug}"),
        "{problem}"
    );
    assert!(problem["request_id"].is_string(), "{problem}");
}

/// The audit record of the request `request_id` (the log is written in the background).
async fn audit_record(gw: &TestGateway, request_id: &str) -> serde_json::Value {
    let dir = gw.dir.path().join("audit");
    let mut found = None;
    common::eventually(Duration::from_secs(5), || {
        let records: Vec<serde_json::Value> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .flat_map(|text| {
                        text.lines()
                            .filter_map(|l| serde_json::from_str(l).ok())
                            .collect::<Vec<serde_json::Value>>()
                    })
                    .collect()
            })
            .unwrap_or_default();
        found = records
            .into_iter()
            .find(|r| r["request_id"] == request_id && r["kind"] == "request");
        let done = found.is_some();
        async move { done }
    })
    .await
    .unwrap_or_else(|| panic!("no audit record for {request_id}:\n{}", gw.log()));
    found.unwrap()
}

fn header_line(name: &str, value: &str) -> String {
    format!("{name}: {value}\r\n")
}

// ---------------------------------------------------------------------------------------------
// Item 4: the normalised path is a fixed point and is what both the route table and the
// upstream see.

#[tokio::test(flavor = "multi_thread")]
async fn normalisation_never_manufactures_double_encoding() {
    let up = upstream("app").await;
    let gw = start(up.addr, "");
    let viewer = token("vera", "acme", &["viewer"]);
    let auth = format!(
        "{}{}",
        header_line("authorization", &format!("Bearer {viewer}")),
        header_line("x-tenant", "acme")
    );

    // Paths the gateway accepts: the route table matched exactly the path the upstream got.
    let accepted: &[(&[u8], &str)] = &[
        (b"/projects/42", "/projects/42"),
        (b"/projects/%34%32", "/projects/42"),
        (b"/projects/a%20b", "/projects/a%20b"),
        (b"/projects/caf%c3%a9", "/projects/caf%C3%A9"),
        (b"/projects/x/../y", "/projects/y"),
        (b"/projects/a%3bb", "/projects/a%3Bb"),
    ];
    for (i, (target, expected)) in accepted.iter().enumerate() {
        let request_id = format!("shape-accepted-{i}");
        let (status, body) = raw_request(
            gw.addr,
            "GET",
            target,
            &format!("{auth}{}", header_line("x-request-id", &request_id)),
        );
        let shown = String::from_utf8_lossy(target);
        assert_eq!(status, 200, "{shown}: {body}");
        let echo: Echo = serde_json::from_str(&body).unwrap();
        assert_eq!(echo.path, *expected, "{shown}");
        let record = audit_record(&gw, &request_id).await;
        assert_eq!(
            record["path"], echo.path,
            "{shown}: the route table matched another path than the upstream received"
        );
        assert_eq!(record["decision"]["action"], "projects:read", "{record}");
    }

    // Encodings of `%` (the issue's attack first): an upstream that decodes once more would
    // read `/projects/x/../../billing` = `/billing`. Refused before the route table.
    let served_before = up.served();
    let refused: &[&[u8]] = &[
        b"/projects/x%25%32%66..%25%32%66..%25%32%66billing",
        b"/projects/x%25%32f..%25%32f..%25%32fbilling",
        b"/projects/x%252f..%252f..%252fbilling",
        b"/projects/x%25%35%63..",
        b"/projects/%25%32%65%25%32%65",
        b"/projects/100%25",
        // Overlong UTF-8 of `/` (read as `/` by lenient decoders).
        b"/projects/x%c0%af..%c0%af..%c0%afbilling",
    ];
    for target in refused {
        let (status, body) = raw_request(gw.addr, "GET", target, &auth);
        assert_problem(status, &body, 400, "bad-path");
    }
    assert_eq!(
        up.served(),
        served_before,
        "a refused path reached the upstream"
    );
    assert!(
        gw.settled_log().contains("request rejected"),
        "refusals are logged:\n{}",
        gw.log()
    );
}

// ---------------------------------------------------------------------------------------------
// Item 5: X-Forwarded-For is walked from the right; a malformed hop never makes the gateway
// fall back to the proxy's own address.

#[tokio::test(flavor = "multi_thread")]
async fn malformed_forwarded_for_hops_do_not_switch_geoip_off() {
    let up = upstream("app").await;
    let gw = start(up.addr, "");
    let viewer = token("vera", "acme", &["viewer"]);
    let auth = format!(
        "{}{}",
        header_line("authorization", &format!("Bearer {viewer}")),
        header_line("x-tenant", "acme")
    );
    let download = |xff_lines: &[&[u8]]| {
        let mut extra = auth.clone().into_bytes();
        for line in xff_lines {
            extra.extend_from_slice(b"X-Forwarded-For: ");
            extra.extend_from_slice(line);
            extra.extend_from_slice(b"\r\n");
        }
        let mut req =
            b"GET /documents/7/download HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n"
                .to_vec();
        req.extend_from_slice(&extra);
        req.extend_from_slice(b"\r\n");
        common::parse_status_and_body(&common::raw_exchange(gw.addr, &req))
    };

    // Baselines: a German client may download, a North Korean one may not (export embargo).
    assert_eq!(download(&[b"5.6.7.8"]).0, 200);
    let (status, body) = download(&[b"175.45.1.1"]);
    assert_problem(status, &body, 403, "forbidden");

    // The embargoed client behind the trusted proxy (the proxy appended its address on the
    // right) prepends a hop the gateway cannot parse: the right-most untrusted hop still names
    // the client.
    let embargoed: &[&[&[u8]]] = &[
        &[b"garbage, 175.45.1.1"],
        &[b"unknown, 175.45.1.1"],
        &[b"6.6.6.6:4711, 175.45.1.1"],
        &[b"[2001:db8::1]:443, 175.45.1.1"],
        &[b"\xc3\xbcnicode, 175.45.1.1"],
        &[b"5.6.7.8, , 175.45.1.1"],
        // The client's own header line, then the proxy's.
        &[b"garbage", b"175.45.1.1"],
        &[b"5.6.7.8", b"175.45.1.1"],
        &[b"\xff\xfe", b"175.45.1.1"],
        // Spoofed hops left of the client are ignored, however many.
        &[b"5.6.7.8, 5.6.7.9, 175.45.1.1"],
    ];
    let served_before = up.served();
    for lines in embargoed {
        let (status, body) = download(lines);
        let shown: Vec<_> = lines.iter().map(|l| String::from_utf8_lossy(l)).collect();
        assert_eq!(status, 403, "X-Forwarded-For {shown:?}: {body}");
        assert_problem(status, &body, 403, "forbidden");
    }
    assert_eq!(
        up.served(),
        served_before,
        "an embargoed download was served"
    );

    // Left of the client, a spoofed embargoed address changes nothing.
    assert_eq!(download(&[b"175.45.1.1, 5.6.7.8"]).0, 200);

    // The right-most untrusted hop is unparsable: the client is unknown (never the proxy's
    // own address), so a policy that needs to know the client denies.
    let strict = token("sam", "strict", &["viewer"]);
    let strict_download = |xff: &str| {
        raw_request(
            gw.addr,
            "GET",
            b"/documents/7/download",
            &format!(
                "{}{}{}",
                header_line("authorization", &format!("Bearer {strict}")),
                header_line("x-tenant", "strict"),
                header_line("x-forwarded-for", xff)
            ),
        )
    };
    assert_eq!(strict_download("5.6.7.8").0, 200);
    for xff in ["5.6.7.8, garbage", "unknown", "5.6.7.8, _hidden"] {
        let (status, body) = strict_download(xff);
        assert_eq!(status, 403, "X-Forwarded-For {xff}: {body}");
    }
}

// ---------------------------------------------------------------------------------------------
// Item 6: method and URL override headers.

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_gets_every_forwarded_for_line_and_no_client_forwarded_header() {
    let up = upstream("app").await;
    let gw = start(up.addr, "");
    let viewer = token("vera", "acme", &["viewer"]);
    let (status, body) = raw_request(
        gw.addr,
        "GET",
        b"/projects/42",
        &format!(
            "{}{}{}{}{}{}{}{}{}{}",
            header_line("authorization", &format!("Bearer {viewer}")),
            header_line("x-tenant", "acme"),
            header_line("x-forwarded-for", "203.0.113.7"),
            header_line("x-forwarded-for", "198.51.100.9"),
            header_line("forwarded", "for=192.0.2.1;proto=https"),
            header_line("x-forwarded-host", "evil.example"),
            header_line("x-forwarded-port", "8443"),
            header_line("x-forwarded-prefix", "/admin"),
            header_line("x-real-ip", "192.0.2.66"),
            header_line("x-forwarded-proto", "https"),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echo.headers.get("x-forwarded-for").map(Vec::as_slice),
        Some(&["203.0.113.7, 198.51.100.9, 127.0.0.1".to_string()][..]),
        "{:?}",
        echo.headers
    );
    assert!(
        !echo.headers.contains_key("forwarded"),
        "a client's Forwarded header reached the upstream: {:?}",
        echo.headers
    );
    // The peer is a trusted proxy here: what it says of the request is passed on (without
    // one, `proxy::forwards_method_path_query_and_headers` sees it removed).
    for (name, value) in [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/admin"),
        ("x-real-ip", "192.0.2.66"),
        ("x-forwarded-proto", "https"),
    ] {
        assert_eq!(
            echo.headers.get(name),
            Some(&vec![value.to_string()]),
            "{name}"
        );
    }
}

const OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
    "x_http_method_override",
];

#[tokio::test(flavor = "multi_thread")]
async fn override_headers_are_stripped_by_default() {
    let up = upstream("app").await;
    let gw = start(up.addr, "");
    let viewer = token("vera", "acme", &["viewer"]);
    for name in OVERRIDES {
        let (status, body) = raw_request(
            gw.addr,
            "GET",
            b"/projects/42?_method=DELETE&x=1",
            &format!(
                "{}{}{}{}{}",
                header_line("authorization", &format!("Bearer {viewer}")),
                header_line("x-tenant", "acme"),
                header_line(name, "DELETE"),
                header_line("X-Original-URL", "/billing"),
                header_line("X-Rewrite-URL", "/billing")
            ),
        );
        assert_eq!(status, 200, "{name}: {body}");
        let echo: Echo = serde_json::from_str(&body).unwrap();
        assert_eq!(echo.method, "GET");
        assert_eq!(echo.path, "/projects/42");
        assert_eq!(
            echo.query.as_deref(),
            Some("x=1"),
            "`_method` reached the upstream"
        );
        for header in echo.headers.keys() {
            let canonical = header.replace('_', "-");
            assert!(
                ![
                    "x-http-method-override",
                    "x-method-override",
                    "x-http-method",
                    "x-original-url",
                    "x-rewrite-url"
                ]
                .contains(&canonical.as_str()),
                "{header} reached the upstream: {:?}",
                echo.headers
            );
        }
    }
    // A POST stays a POST (and is authorised as one): a viewer may not create projects.
    let res = client()
        .post(gw.url("/projects"))
        .bearer_auth(&viewer)
        .header("x-tenant", "acme")
        .header("x-http-method-override", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn honoured_method_overrides_are_what_is_authorised_and_forwarded() {
    let up = upstream("app").await;
    let gw = start(up.addr, "method_override = \"honor\"");
    let viewer = token("vera", "acme", &["viewer"]);
    let editor = token("ed", "acme", &["editor"]);
    let admin = token("adam", "acme", &["admin"]);
    let send = |token: &str, method: &str, target: &[u8], extra: &str| {
        raw_request(
            gw.addr,
            method,
            target,
            &format!(
                "{}{}{extra}",
                header_line("authorization", &format!("Bearer {token}")),
                header_line("x-tenant", "acme"),
            ),
        )
    };

    // The override of a POST is the method: route, Cedar action and upstream all see it.
    for name in OVERRIDES {
        let (status, body) = send(
            &viewer,
            "POST",
            b"/projects/42",
            &header_line(name, "DELETE"),
        );
        assert_problem(status, &body, 403, "forbidden");
    }
    let served_before = up.served();
    let (status, body) = send(
        &editor,
        "POST",
        b"/projects/42",
        &header_line("x-http-method-override", "delete"),
    );
    assert_problem(status, &body, 403, "forbidden");
    assert_eq!(up.served(), served_before);

    let (status, body) = send(
        &editor,
        "POST",
        b"/projects/42",
        &header_line("x-http-method-override", "PUT"),
    );
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.method, "PUT");
    assert!(!echo.headers.contains_key("x-http-method-override"));

    let (status, body) = send(&admin, "POST", b"/projects/42?_method=DELETE&y=2", "");
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.method, "DELETE");
    assert_eq!(echo.query.as_deref(), Some("y=2"));

    // Only a POST is overridden (as frameworks do): a GET stays a read, the header is gone.
    let (status, body) = send(
        &viewer,
        "GET",
        b"/projects/42",
        &header_line("x-http-method-override", "DELETE"),
    );
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.method, "GET");
    assert!(!echo.headers.contains_key("x-http-method-override"));

    // Conflicting or unusable overrides are refused.
    let refused: &[(&[u8], String)] = &[
        (
            b"/projects/42?_method=PUT",
            header_line("x-http-method-override", "DELETE"),
        ),
        (
            b"/projects/42",
            format!(
                "{}{}",
                header_line("x-http-method-override", "PUT"),
                header_line("x-method-override", "DELETE")
            ),
        ),
        (b"/projects/42?_method=PUT&_method=DELETE", String::new()),
        (
            b"/projects/42",
            header_line("x-http-method-override", "CONNECT"),
        ),
        (b"/projects/42?_method=TRACE", String::new()),
        (b"/projects/42?_method=GET;x=1", String::new()),
    ];
    let served_before = up.served();
    for (target, extra) in refused {
        let (status, body) = send(&admin, "POST", target, extra);
        assert_problem(status, &body, 400, "bad-method-override");
    }
    // A form body may carry `_method`, which the gateway does not read before deciding: a POST
    // with a form body must name a method other than POST outside the body.
    for content_type in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let body = "_method=DELETE";
        let request = format!(
            "POST /projects HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n{}{}{}{}\r\n{body}",
            header_line("authorization", &format!("Bearer {admin}")),
            header_line("x-tenant", "acme"),
            header_line("content-type", content_type),
            header_line("content-length", &body.len().to_string()),
        );
        let (status, body) =
            common::parse_status_and_body(&common::raw_exchange(gw.addr, request.as_bytes()));
        assert_problem(status, &body, 400, "bad-method-override");
    }
    assert_eq!(
        up.served(),
        served_before,
        "a refused override was forwarded"
    );
    // ... and with an override outside the body, the upstream sees that method (and no longer
    // applies an override of its own: frameworks override only POSTs).
    let res = client()
        .post(gw.url("/projects/42?_method=PUT"))
        .bearer_auth(&editor)
        .header("x-tenant", "acme")
        .form(&[("name", "x"), ("_method", "DELETE")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo: Echo = res.json().await.unwrap();
    assert_eq!(echo.method, "PUT");
    // A JSON POST is not a form: it is authorised and forwarded as the POST it is.
    let res = client()
        .post(gw.url("/projects"))
        .bearer_auth(&editor)
        .header("x-tenant", "acme")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(gw.settled_log().contains("request rejected"));
}
