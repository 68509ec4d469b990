//! Object-level authorization from data (issue 16): the example deployment's entities.json says
//! whose each document is and to which tenant it belongs. The demo's requests decide by that
//! record, and no way of writing the request — owner in the URL, encodings, dot segments,
//! duplicate slashes, tenant prefixes or headers, method overrides — reaches globex's document
//! 100 from acme.

use serde_json::json;

use crate::common::example::{example_config, example_file, token, token_with};
use crate::common::{client, free_addr, upstream, TestGateway};

struct Outcome {
    status: u16,
    body: String,
}

async fn send(
    http: &reqwest::Client,
    gw: &TestGateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Outcome {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http.request(method, gw.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Outcome { status, body }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_tenancy_and_clearance_come_from_the_store_and_no_request_shape_escapes_it() {
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let gw = TestGateway::start(
        &example_config(free_addr(), eu.addr, us.addr),
        &[
            ("demo-issuer.secret", &example_file("demo-issuer.secret")),
            ("demo-admin.token", &example_file("demo-admin.token")),
            ("tenants.toml", &example_file("tenants.toml")),
        ],
    );
    let http = client();
    let role = |r: &str| vec![r.to_string()];
    let alice = bearer(&token("alice", Some("acme"), &role("viewer"), false));
    let dave = bearer(&token_with(
        "dave",
        Some("acme"),
        &role("viewer"),
        false,
        json!({"clearance": 3}),
    ));
    let olga = bearer(&token("olga", Some("acme"), &role("tenant-owner"), true));

    // The demo paragraph.
    let as_alice = [("authorization", alice.as_str())];
    let o = send(&http, &gw, "PUT", "/documents/1", &as_alice).await;
    assert_eq!(
        o.status, 200,
        "alice updates her own document 1: {}",
        o.body
    );
    for path in ["/documents/4", "/users/alice/documents/4"] {
        let o = send(&http, &gw, "PUT", path, &as_alice).await;
        assert_eq!(o.status, 403, "PUT {path} by alice: {}", o.body);
        assert!(o.body.contains("problem/forbidden"), "{}", o.body);
    }
    let o = send(&http, &gw, "GET", "/documents/100", &as_alice).await;
    assert_eq!(o.status, 403, "{}", o.body);
    assert!(
        o.body.contains("the resource belongs to another tenant"),
        "the refusal names the tenant mismatch: {}",
        o.body
    );
    let as_dave = [("authorization", dave.as_str())];
    let o = send(&http, &gw, "GET", "/documents/5", &as_dave).await;
    assert_eq!(
        o.status, 200,
        "clearance 3 reads classification 2: {}",
        o.body
    );
    let o = send(&http, &gw, "GET", "/documents/6", &as_dave).await;
    assert_eq!(o.status, 403, "{}", o.body);
    assert!(
        o.body.contains("above the caller's clearance"),
        "{}",
        o.body
    );

    // Globex's document 100 from acme's tenant owner (MFA, every acme permission): every shape
    // of the request is refused before the upstream, never forwarded.
    let as_olga = ("authorization", olga.as_str());
    // (method, target, extra headers)
    type Trick<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let tricks: Vec<Trick> = vec![
        ("GET", "/documents/100", vec![]),
        ("DELETE", "/documents/100", vec![]),
        ("PUT", "/users/olga/documents/100", vec![]),
        ("PUT", "/users/carol/documents/100", vec![]),
        ("DELETE", "/users/carol/documents/100", vec![]),
        ("POST", "/users/olga/documents/100/share", vec![]),
        ("GET", "/documents/100/download", vec![]),
        ("POST", "/documents/100/export", vec![]),
        ("GET", "//documents//100", vec![]),
        ("GET", "/documents/./100", vec![]),
        ("GET", "/documents/x/../100", vec![]),
        ("GET", "/documents/%31%30%30", vec![]),
        ("GET", "/documents/100?tenant=acme", vec![]),
        ("GET", "/t/acme/documents/100", vec![]),
        ("GET", "/documents/100", vec![("x-tenant", "acme")]),
        ("GET", "/documents/100", vec![("x-tenant-id", "globex")]),
        ("HEAD", "/documents/100", vec![]),
        (
            "POST",
            "/documents/100/comments",
            vec![("x-http-method-override", "DELETE")],
        ),
    ];
    let mut escaped = Vec::new();
    for (method, path, extra) in &tricks {
        let mut headers = vec![as_olga];
        headers.extend(extra.iter().copied());
        let o = send(&http, &gw, method, path, &headers).await;
        let refused_by_store =
            o.status == 403 && (*method == "HEAD" || o.body.contains("belongs to another tenant"));
        let refused_as_malformed = matches!(o.status, 400 | 404);
        if !(refused_by_store || refused_as_malformed) {
            escaped.push(format!(
                "{method} {path} {extra:?}: {} {}",
                o.status, o.body
            ));
        }
    }
    assert!(
        escaped.is_empty(),
        "reached globex's document: {escaped:#?}"
    );
}
