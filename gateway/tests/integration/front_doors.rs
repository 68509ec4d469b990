//! One decision, three front doors. Every case of `policy-tests/`, every request line of the
//! demo and a set of attacks goes through each door of one running gateway (the example
//! deployment): the inline proxy; Envoy's ext_authz (a tonic client sending `CheckRequest`s as
//! Envoy builds them, alternating the `headers` form with HTTP/1.1 and the `header_map` form of
//! `encode_raw_headers` with HTTP/2 pseudo-headers); the forward-auth endpoint asked the way
//! Traefik asks; and a real nginx running deploy/nginx/nginx.conf with `auth_request`. Each door
//! must give the same answer: refused with the same status and problem type, or forwarded with
//! the same method, target and verified context.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, HeaderMap as EnvoyHeaderMap, HeaderValue as EnvoyHeaderValue,
    SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use serde_json::Value;
use tonic::transport::Channel;

use crate::common::example::{
    demo_cases, example_config_with_doors, example_file, policy_test_cases, token, Case, Routes,
};
use crate::common::nginx::Nginx;
use crate::common::{free_addr, raw_exchange, upstream, TestGateway};

/// What a door did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Sent (or to be sent) upstream like this.
    Forwarded(Forwarded),
    /// Refused with this status and problem type.
    Refused(u16, String),
}

/// The request the upstream receives, as far as the decision shapes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Forwarded {
    method: String,
    /// `path?query`.
    target: String,
    tenant: Option<String>,
    principal: Option<String>,
    roles: Option<String>,
}

struct Doors {
    gw: TestGateway,
    ext_authz: AuthorizationClient<Channel>,
    forward_auth: SocketAddr,
    nginx: Nginx,
    _upstreams: Vec<gateway::example_upstream::ExampleUpstream>,
}

async fn start() -> Doors {
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let (ext_authz, forward_auth) = (free_addr(), free_addr());
    // Every request goes through four doors, anonymous ones included: their budgets are
    // raised like the tenants' (a 429 would be a difference of state, not of decision).
    let config = example_config_with_doors(free_addr(), eu.addr, us.addr, ext_authz, forward_auth)
        .replace(
            "features = [",
            "anonymous_requests_per_second = 100000\nanonymous_burst = 100000\n\
             anonymous_client_requests_per_second = 100000\nanonymous_client_burst = 100000\n\
             features = [",
        );
    let gw = TestGateway::start(
        &config,
        &[
            ("demo-issuer.secret", &example_file("demo-issuer.secret")),
            ("demo-admin.token", &example_file("demo-admin.token")),
            ("tenants.toml", &example_file("tenants.toml")),
        ],
    );
    let nginx = Nginx::start(eu.addr, forward_auth);
    let client = AuthorizationClient::connect(format!("http://{ext_authz}"))
        .await
        .unwrap_or_else(|e| panic!("ext_authz on {ext_authz}: {e}\n{}", gw.log()));
    Doors {
        gw,
        ext_authz: client,
        forward_auth,
        nginx,
        _upstreams: vec![eu, us],
    }
}

/// An HTTP/1.1 exchange on a fresh connection: status, headers (lower-case names), body.
fn exchange(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, String)],
) -> (u16, HashMap<String, String>, String) {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let raw = raw_exchange(addr, request.as_bytes());
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let response_headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if response_headers
        .get("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, response_headers, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn problem_slug(body: &str) -> String {
    let problem: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    problem["type"]
        .as_str()
        .and_then(|t| t.rsplit('/').next())
        .unwrap_or("")
        .to_string()
}

/// The outcome of a proxy that forwarded to the echo upstream (the inline proxy, nginx).
fn proxied_outcome(status: u16, headers: &HashMap<String, String>, body: &str) -> Outcome {
    if headers
        .get("content-type")
        .is_some_and(|t| t.starts_with("application/problem+json"))
    {
        return Outcome::Refused(status, problem_slug(body));
    }
    let echo: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let header = |name: &str| {
        echo["headers"][name]
            .as_array()
            .and_then(|values| values.first())
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let target = match echo["query"].as_str() {
        Some(q) => format!("{}?{q}", echo["path"].as_str().unwrap_or("")),
        None => echo["path"].as_str().unwrap_or("").to_string(),
    };
    Outcome::Forwarded(Forwarded {
        method: echo["method"]
            .as_str()
            .unwrap_or("(not an echo)")
            .to_string(),
        target,
        tenant: header("x-tenant-id"),
        principal: header("x-principal-id"),
        roles: header("x-principal-roles"),
    })
}

/// A CheckRequest as Envoy builds one for `case`, in one of its two header forms.
fn envoy_check_request(case: &Case, raw_headers: bool, source_port: u32) -> CheckRequest {
    let mut headers: Vec<(String, String)> = vec![
        (":authority".into(), "gateway.test".into()),
        (":path".into(), case.target.clone()),
        (":method".into(), case.method.clone()),
        (":scheme".into(), "http".into()),
        ("x-forwarded-proto".into(), "http".into()),
    ];
    for (name, value) in &case.headers {
        headers.push((name.to_ascii_lowercase(), value.clone()));
    }
    let mut http = HttpRequest {
        id: "1".into(),
        method: case.method.clone(),
        path: case.target.clone(),
        host: "gateway.test".into(),
        scheme: "http".into(),
        protocol: if raw_headers { "HTTP/2" } else { "HTTP/1.1" }.into(),
        ..Default::default()
    };
    if raw_headers {
        // `encode_raw_headers: true`: each field apart, raw bytes, `headers` left empty.
        http.header_map = Some(EnvoyHeaderMap {
            headers: headers
                .into_iter()
                .map(|(key, value)| EnvoyHeaderValue {
                    key,
                    raw_value: value.into_bytes(),
                    ..Default::default()
                })
                .collect(),
        });
    } else {
        // Repeated fields joined with commas, as Envoy does.
        for (key, value) in headers {
            http.headers
                .entry(key)
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(&value);
                })
                .or_insert(value);
        }
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(source_port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                time: None,
                http: Some(http),
            }),
            ..Default::default()
        }),
    }
}

fn ext_authz_outcome(case: &Case, response: &CheckResponse) -> Outcome {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(
                response.status.as_ref().map(|s| s.code),
                Some(0),
                "{}: an OkResponse with a status that is not OK",
                case.name
            );
            let set: HashMap<&str, &str> = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.as_str(), h.value.as_str()))
                .collect();
            for option in &ok.headers {
                assert_eq!(
                    option.append_action,
                    HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                    "{}: a header Envoy would append instead of overwrite: {option:?}",
                    case.name
                );
            }
            Outcome::Forwarded(Forwarded {
                method: case.method.clone(),
                target: set
                    .get(":path")
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| case.target.clone()),
                tenant: set.get("x-tenant-id").map(|v| v.to_string()),
                principal: set.get("x-principal-id").map(|v| v.to_string()),
                roles: set.get("x-principal-roles").map(|v| v.to_string()),
            })
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            assert_ne!(response.status.as_ref().map(|s| s.code), Some(0));
            let content_type = denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "content-type")
                .map(|h| h.value.clone());
            assert_eq!(
                content_type.as_deref(),
                Some("application/problem+json"),
                "{}",
                case.name
            );
            let status = denied.status.as_ref().map_or(403, |s| s.code as u16);
            Outcome::Refused(status, problem_slug(&denied.body))
        }
        other => panic!(
            "{}: CheckResponse without an http_response: {other:?}",
            case.name
        ),
    }
}

/// Asks the forward-auth endpoint the way Traefik does (`X-Forwarded-*`).
fn forward_auth_outcome(addr: SocketAddr, case: &Case) -> Outcome {
    let mut headers = case.headers.clone();
    headers.push(("X-Forwarded-Method".into(), case.method.clone()));
    headers.push(("X-Forwarded-Uri".into(), case.target.clone()));
    headers.push(("X-Forwarded-Host".into(), "gateway.test".into()));
    headers.push(("X-Forwarded-Proto".into(), "http".into()));
    let (status, response, body) = exchange(addr, "GET", "/auth", &headers);
    if status == 200 {
        let get = |name: &str| response.get(name).cloned();
        Outcome::Forwarded(Forwarded {
            method: case.method.clone(),
            target: get("x-gateway-target").unwrap_or_default(),
            tenant: get("x-tenant-id"),
            principal: get("x-principal-id"),
            roles: get("x-principal-roles"),
        })
    } else {
        Outcome::Refused(status, problem_slug(&body))
    }
}

/// Requests an attacker sends: spoofed context and overrides (forwarded without them), an
/// anonymous owner, forged and tenant-less tokens, double encoding, a dot segment.
fn attack_cases() -> Vec<Case> {
    let alice = (
        "authorization".to_string(),
        format!(
            "Bearer {}",
            token("alice", Some("acme"), &["viewer".into()], false)
        ),
    );
    let h = |k: &str, v: &str| (k.to_string(), v.to_string());
    let case = |name: &str, method: &str, target: &str, headers: Vec<(String, String)>| Case {
        name: format!("attack: {name}"),
        method: method.into(),
        target: target.into(),
        headers,
    };
    let none_alg = {
        let b64 = |v: &Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(&serde_json::json!({
                "iss": "https://demo-issuer.policy-gateway.local", "aud": "gateway-demo",
                "sub": "mallory", "org": "acme", "roles": ["tenant-owner"],
                "exp": 4_000_000_000u64
            }))
        )
    };
    vec![
        case(
            "spoofed tenant and roles",
            "GET",
            "/projects/42",
            vec![
                alice.clone(),
                h("x-tenant-id", "globex"),
                h("x-principal-roles", "admin"),
            ],
        ),
        case(
            "spoofed roles do not authorise",
            "DELETE",
            "/projects/42",
            vec![alice.clone(), h("x-principal-roles", "admin")],
        ),
        case(
            "method override header",
            "GET",
            "/projects/42",
            vec![alice.clone(), h("x-http-method-override", "DELETE")],
        ),
        case(
            "URL override header",
            "GET",
            "/projects/42",
            vec![alice.clone(), h("x-original-url", "/billing")],
        ),
        case(
            "anonymous owner",
            "DELETE",
            "/users/anonymous/documents/1",
            vec![h("x-tenant", "acme")],
        ),
        case(
            "alg none",
            "GET",
            "/projects/42",
            vec![h("authorization", &format!("Bearer {none_alg}"))],
        ),
        case(
            "tenant-less token",
            "GET",
            "/projects/42",
            vec![
                (
                    "authorization".into(),
                    format!("Bearer {}", token("nobody", None, &["admin".into()], true)),
                ),
                h("x-tenant", "acme"),
            ],
        ),
        case(
            "double encoding",
            "GET",
            "/projects/x%25%32%66..%25%32%66..%25%32%66billing",
            vec![alice.clone()],
        ),
        case(
            "dot segment resolved before deciding",
            "GET",
            "/projects/41/../42",
            vec![alice.clone()],
        ),
        case(
            "unknown tenant",
            "GET",
            "/status",
            vec![h("x-tenant", "umbrella")],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_decision_three_front_doors() {
    let mut doors = start().await;
    let (mut cases, unroutable) = policy_test_cases(&Routes::load());
    assert!(cases.len() >= 120, "unroutable: {unroutable:?}");
    cases.extend(demo_cases());
    cases.extend(attack_cases());

    let mut disagreements = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        let (status, headers, body) =
            exchange(doors.gw.addr, &case.method, &case.target, &case.headers);
        let inline = proxied_outcome(status, &headers, &body);

        let check = envoy_check_request(case, i % 2 == 1, 40_000 + i as u32);
        let response = doors
            .ext_authz
            .check(check)
            .await
            .unwrap_or_else(|e| panic!("{}: Check failed: {e}\n{}", case.name, doors.gw.log()))
            .into_inner();
        let ext_authz = ext_authz_outcome(case, &response);

        let forward_auth = forward_auth_outcome(doors.forward_auth, case);

        let (status, headers, body) =
            exchange(doors.nginx.addr, &case.method, &case.target, &case.headers);
        let nginx = proxied_outcome(status, &headers, &body);

        *kinds
            .entry(match &inline {
                Outcome::Forwarded(_) => "forwarded".to_string(),
                Outcome::Refused(s, p) => format!("{s} {p}"),
            })
            .or_default() += 1;
        // The demo's streamed body and HEAD answers are not echoes: only forwarded-or-not is
        // compared.
        let comparable = |o: Outcome| match o {
            Outcome::Forwarded(_)
                if case.target.starts_with("/_upstream/") || case.method == "HEAD" =>
            {
                Outcome::Forwarded(Forwarded {
                    method: case.method.clone(),
                    target: case.target.clone(),
                    tenant: None,
                    principal: None,
                    roles: None,
                })
            }
            other => other,
        };
        let (inline, ext_authz, forward_auth, nginx) = (
            comparable(inline),
            comparable(ext_authz),
            comparable(forward_auth),
            comparable(nginx),
        );
        if ext_authz != inline || forward_auth != inline || nginx != inline {
            disagreements.push(format!(
                "{}: {} {}\n  inline:       {inline:?}\n  ext_authz:    {ext_authz:?}\n  forward-auth: {forward_auth:?}\n  nginx:        {nginx:?}",
                case.name, case.method, case.target
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} requests: the front doors disagree\n{}\n--- gateway log\n{}\n--- nginx log\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n"),
        doors.gw.log(),
        doors.nginx.log()
    );
    assert!(
        kinds.get("forwarded").copied().unwrap_or(0) >= 20,
        "{kinds:?}"
    );
    for kind in [
        "403 forbidden",
        "401 unauthenticated",
        "403 feature-not-in-tier",
        "451 residency-violation",
        "400 bad-path",
        "404 unknown-tenant",
    ] {
        assert!(kinds.contains_key(kind), "no `{kind}` among {kinds:?}");
    }
    eprintln!("{} requests through four doors: {kinds:?}", cases.len());
}

/// The demo's three checks through ext_authz: ALICE may read (OK, `x-tenant-id: acme` to set),
/// may not delete (403 with the problem body), and a spoofed `x-tenant-id` is among the headers
/// to remove. Every check is audited and metered like a proxied request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_answers_the_demo_checks_and_records_them() {
    let mut doors = start().await;
    let alice = (
        "authorization".to_string(),
        format!(
            "Bearer {}",
            token("alice", Some("acme"), &["viewer".into()], false)
        ),
    );
    let case = |method: &str, headers: Vec<(String, String)>| Case {
        name: format!("ALICE {method}"),
        method: method.into(),
        target: "/projects/42".into(),
        headers,
    };
    let read = doors
        .ext_authz
        .check(envoy_check_request(
            &case(
                "GET",
                vec![alice.clone(), ("x-tenant-id".into(), "globex".into())],
            ),
            false,
            5555,
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(HttpResponse::OkResponse(ok)) = &read.http_response else {
        panic!("GET /projects/42 not allowed: {read:?}");
    };
    let set: HashMap<&str, &str> = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(set.get("x-tenant-id"), Some(&"acme"), "{ok:?}");
    assert_eq!(set.get("x-principal-id"), Some(&"alice"), "{ok:?}");
    assert_eq!(set.get("x-gateway-region"), Some(&"eu-central"), "{ok:?}");
    // Envoy applies `headers` (overwriting the client's spoofed value) and then removes
    // `headers_to_remove`: a name in both would lose the verified value too.
    assert!(
        !ok.headers_to_remove.iter().any(|h| ok
            .headers
            .iter()
            .any(|s| s.header.as_ref().is_some_and(|s| &s.key == h))),
        "a header both set and removed: Envoy would drop the verified value: {ok:?}"
    );
    let limit_headers: Vec<&str> = ok
        .response_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| h.key.as_str())
        .collect();
    assert!(limit_headers.contains(&"ratelimit"), "{limit_headers:?}");
    let request_id = set["x-request-id"].to_string();

    let delete = doors
        .ext_authz
        .check(envoy_check_request(
            &case("DELETE", vec![alice.clone()]),
            true,
            5556,
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(HttpResponse::DeniedResponse(denied)) = &delete.http_response else {
        panic!("DELETE /projects/42 not denied: {delete:?}");
    };
    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(403));
    assert_eq!(delete.status.as_ref().map(|s| s.code), Some(7));
    let problem: Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(problem["status"], 403);
    assert!(
        problem["type"].as_str().unwrap().ends_with("/forbidden"),
        "{problem}"
    );

    // Audited as what it was, by which door.
    let audit_dir = doors.gw.dir.path().join("state/audit");
    let mut found = None;
    crate::common::eventually(Duration::from_secs(5), || {
        found = std::fs::read_dir(&audit_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .collect::<Vec<_>>()
            })
            .find(|r| r["request_id"] == request_id.as_str());
        let done = found.is_some();
        async move { done }
    })
    .await
    .unwrap_or_else(|| panic!("no audit record of {request_id} in {}", audit_dir.display()));
    let record = found.unwrap();
    assert_eq!(record["door"], "ext-authz", "{record}");
    assert_eq!(record["tenant"], "acme", "{record}");
    assert_eq!(record["status"], 200, "{record}");

    // Kubernetes gRPC probes and grpcurl.
    let channel = Channel::from_shared(doors.ext_authz_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "health of `{service}`"
        );
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let mut answers = reflection
        .server_reflection_info(tokio_stream_once(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
}

impl Doors {
    fn ext_authz_url(&self) -> String {
        let config = std::fs::read_to_string(&self.gw.config_path).unwrap();
        let table: toml::Table = config.parse().unwrap();
        format!("http://{}", table["ext_authz"]["listen"].as_str().unwrap())
    }
}

/// A request stream of one message.
fn tokio_stream_once<T: Send + 'static>(item: T) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::iter([item])
}
