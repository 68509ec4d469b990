//! `explain` reports what the gateway does: every case of `policy-tests/` and every request line
//! of the demo is sent once to `POST /admin/explain` and once to the gateway itself (the example
//! deployment, in front of example upstreams), and the two answers must agree — forwarded or
//! refused, with the same status and problem type.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::common;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::common::{
    client, free_addr, parse_status_and_body, raw_exchange, upstream, TestGateway,
};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example deployment with its own ports, state in the test directory, and tier limits
/// raised far enough that ~200 requests in a row are never rate limited (explain spends no
/// budget, so a 429 would be a difference of state, not of decision).
fn example_config(admin: SocketAddr, eu: SocketAddr, us: SocketAddr) -> String {
    let root = repo().canonicalize().expect("repository root");
    let text = std::fs::read_to_string(root.join("deploy/examples/gateway.toml"))
        .expect("deploy/examples/gateway.toml");
    let replaced = text
        .replace("listen = [\"127.0.0.1:8080\"]", "listen = [\"{listen}\"]")
        .replace("127.0.0.1:9901", &admin.to_string())
        .replace("127.0.0.1:18080", &eu.to_string())
        .replace("127.0.0.1:18081", &us.to_string())
        .replace("\"../../target/demo-state", "\"state")
        .replace("\"../../", &format!("\"{}/", root.display()))
        .replace(
            "requests_per_second = 5\n",
            "requests_per_second = 100000\n",
        )
        .replace(
            "requests_per_second = 0.2\n",
            "requests_per_second = 100000\n",
        )
        .replace("principal_requests_per_second = 2\n", "")
        .replace("principal_burst = 10\n", "");
    assert!(
        !replaced.contains("127.0.0.1:8080") && replaced.contains("{listen}"),
        "the example config changed shape; update this test"
    );
    replaced
}

fn example_file(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("deploy/examples").join(name)).expect(name)
}

/// A token of the demo issuer, as `gateway demo` mints them.
fn token(sub: &str, tenant: Option<&str>, roles: &[String], mfa: bool) -> String {
    let secret = String::from_utf8(example_file("demo-issuer.secret")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({
        "iss": "https://demo-issuer.policy-gateway.local", "aud": "gateway-demo", "sub": sub,
        "roles": roles, "mfa": mfa, "iat": now, "exp": now + 3600,
    });
    if let Some(t) = tenant {
        claims["org"] = json!(t);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.trim_end().as_bytes()),
    )
    .unwrap()
}

/// One HTTP request, sent both ways.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

/// The route table of the example policies, to turn `action` + `resource` cases into requests.
struct Routes(Vec<toml::Value>);

impl Routes {
    fn load() -> Routes {
        let text = std::fs::read_to_string(repo().join("policies/routes.toml")).unwrap();
        let table: toml::Table = text.parse().unwrap();
        Routes(table["route"].as_array().unwrap().clone())
    }

    /// `METHOD /path` of a route for `action` on `resource`, its parameters filled from the
    /// resource (`id`, attributes such as `owner`).
    fn request_for(&self, action: &str, resource: &toml::Table) -> Option<(String, String)> {
        let ty = resource.get("type")?.as_str()?;
        let route = self.0.iter().find(|r| {
            r.get("action").and_then(|a| a.as_str()) == Some(action)
                && r.get("resource").and_then(|t| t.as_str()) == Some(ty)
        })?;
        let method = match &route["method"] {
            toml::Value::String(m) => m.clone(),
            toml::Value::Array(ms) => ms.first()?.as_str()?.to_string(),
            _ => return None,
        };
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        if let Some(id_param) = route.get("id").and_then(|i| i.as_str()) {
            values.insert(
                id_param.to_string(),
                resource.get("id")?.as_str()?.to_string(),
            );
        }
        if let Some(attrs) = route.get("attributes").and_then(|a| a.as_table()) {
            for (attr, param) in attrs {
                if let (Some(param), Some(v)) =
                    (param.as_str(), resource.get(attr).and_then(|v| v.as_str()))
                {
                    values.insert(param.to_string(), v.to_string());
                }
            }
        }
        let template = route["path"].as_str()?;
        let path: Vec<String> = template
            .split('/')
            .map(
                |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(param) => values
                        .get(param.trim_start_matches('*'))
                        .cloned()
                        .unwrap_or_else(|| "x".to_string()),
                    None => segment.to_string(),
                },
            )
            .collect();
        Some((method, path.join("/")))
    }
}

/// Every case of `policy-tests/*.toml` as an HTTP request with a credential for its principal:
/// a demo-issuer token with the principal's id, tenant, roles and MFA; API-key principals use
/// the demo API key; anonymous ones send no credential.
fn policy_test_cases(routes: &Routes) -> (Vec<Case>, Vec<String>) {
    let mut cases = Vec::new();
    let mut unroutable = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("policy-tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for file in files {
        let table: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
        let default_tenant = table
            .get("defaults")
            .and_then(|d| d.get("tenant"))
            .and_then(|t| t.as_str())
            .map(str::to_string);
        let Some(list) = table.get("case").and_then(|c| c.as_array()) else {
            continue;
        };
        for case in list {
            let name = format!(
                "{}: {}",
                file.file_name().unwrap().to_string_lossy(),
                case["name"].as_str().unwrap()
            );
            let tenant = case
                .get("tenant")
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .or(default_tenant.clone());
            let request = match case.get("request").and_then(|r| r.as_str()) {
                Some(line) => line
                    .split_once(' ')
                    .map(|(m, p)| (m.to_string(), p.to_string())),
                None => case
                    .get("action")
                    .and_then(|a| a.as_str())
                    .zip(case.get("resource").and_then(|r| r.as_table()))
                    .and_then(|(action, resource)| routes.request_for(action, resource)),
            };
            let Some((method, target)) = request else {
                unroutable.push(name);
                continue;
            };
            let mut headers = Vec::new();
            if let Some(t) = &tenant {
                headers.push(("x-tenant".to_string(), t.clone()));
            }
            let principal = case.get("principal").and_then(|p| p.as_table());
            let auth = principal
                .and_then(|p| p.get("auth"))
                .and_then(|a| a.as_str())
                .unwrap_or("jwt");
            match (auth, principal) {
                ("anonymous", _) | (_, None) => {}
                ("api-key", _) => headers.push((
                    "x-api-key".to_string(),
                    "demo-acme-reporting-key".to_string(),
                )),
                (_, Some(p)) => {
                    let roles: Vec<String> = p
                        .get("roles")
                        .and_then(|r| r.as_array())
                        .map(|r| {
                            r.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    let principal_tenant = p
                        .get("tenant")
                        .and_then(|t| t.as_str())
                        .map(str::to_string)
                        .or(tenant.clone());
                    let jwt = token(
                        p["id"].as_str().unwrap(),
                        principal_tenant.as_deref(),
                        &roles,
                        p.get("mfa").and_then(|m| m.as_bool()).unwrap_or(false),
                    );
                    headers.push(("authorization".to_string(), format!("Bearer {jwt}")));
                }
            }
            cases.push(Case {
                name,
                method,
                target,
                headers,
            });
        }
    }
    (cases, unroutable)
}

/// The request lines `gateway demo` prints (the rate-limit loop is the same request as
/// `CAROL GET /projects/42`; the streamed body is asked for 10 bytes).
fn demo_cases() -> Vec<Case> {
    let person = |sub: &str, tenant: &str, role: &str, mfa: bool| {
        (
            "authorization".to_string(),
            format!(
                "Bearer {}",
                token(sub, Some(tenant), &[role.to_string()], mfa)
            ),
        )
    };
    let alice = person("alice", "acme", "viewer", false);
    let bob = person("bob", "acme", "admin", true);
    let olga = person("olga", "acme", "tenant-owner", true);
    let carol = person("carol", "globex", "editor", false);
    let h = |k: &str, v: &str| (k.to_string(), v.to_string());
    let case = |name: &str, method: &str, target: &str, headers: Vec<(String, String)>| Case {
        name: format!("demo: {name}"),
        method: method.to_string(),
        target: target.to_string(),
        headers,
    };
    vec![
        case("viewer reads", "GET", "/projects/42", vec![alice.clone()]),
        case(
            "viewer deletes",
            "DELETE",
            "/projects/42",
            vec![alice.clone()],
        ),
        case("admin deletes", "DELETE", "/projects/42", vec![bob]),
        case(
            "acme token at globex",
            "GET",
            "/projects/42",
            vec![alice.clone(), h("x-tenant", "globex")],
        ),
        case(
            "API key",
            "GET",
            "/reports",
            vec![h("x-api-key", "demo-acme-reporting-key")],
        ),
        case(
            "anonymous status",
            "GET",
            "/status",
            vec![h("x-tenant", "acme")],
        ),
        case("globex reads", "GET", "/projects/42", vec![carol.clone()]),
        case("billing pinned", "GET", "/billing", vec![olga]),
        case(
            "export not in tier",
            "POST",
            "/documents/7/export",
            vec![carol],
        ),
        case(
            "embargoed download",
            "GET",
            "/documents/7/download",
            vec![alice.clone(), h("x-forwarded-for", "175.45.1.1")],
        ),
        case(
            "encoded traversal",
            "GET",
            "/projects/42%2f..%2fadmin",
            vec![],
        ),
        case(
            "upstream stream",
            "GET",
            "/_upstream/stream?bytes=10",
            vec![h("x-tenant", "acme")],
        ),
    ]
}

/// What the gateway did with a live request: forwarded (`None`) or refused with a status and
/// problem type.
fn live_outcome(status: u16, content_type: &str, body: &str) -> Option<(u16, String)> {
    if !content_type.starts_with("application/problem+json") {
        return None;
    }
    let problem: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let slug = problem["type"]
        .as_str()
        .and_then(|t| t.rsplit('/').next())
        .unwrap_or("")
        .to_string();
    Some((status, slug))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_live_gateway_on_every_policy_test_and_demo_request() {
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let admin = free_addr();
    let gw = TestGateway::start(
        &example_config(admin, eu.addr, us.addr),
        &[
            ("demo-issuer.secret", &example_file("demo-issuer.secret")),
            ("demo-admin.token", &example_file("demo-admin.token")),
            ("tenants.toml", &example_file("tenants.toml")),
        ],
    );
    let admin_token = String::from_utf8(example_file("demo-admin.token")).unwrap();
    let http = client();
    let routes = Routes::load();
    let (mut cases, unroutable) = policy_test_cases(&routes);
    let from_policy_tests = cases.len();
    assert!(
        from_policy_tests >= 120,
        "only {from_policy_tests} policy-test cases became requests; unroutable: {unroutable:?}"
    );
    cases.extend(demo_cases());

    let mut disagreements = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for case in &cases {
        let explained: Value = http
            .post(format!("http://{admin}/admin/explain"))
            .bearer_auth(admin_token.trim_end())
            .json(&json!({
                "method": case.method,
                "path": case.target,
                "headers": case.headers.iter().cloned().collect::<BTreeMap<_, _>>(),
                "peer": "127.0.0.1",
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let explained_outcome = match explained["status"].as_u64() {
            Some(200) => None,
            Some(status) => Some((
                status as u16,
                explained["problem"].as_str().unwrap_or("").to_string(),
            )),
            None => panic!("{}: explain answered {explained}", case.name),
        };
        let mut request = format!(
            "{} {} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n",
            case.method, case.target
        );
        for (k, v) in &case.headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        let raw = raw_exchange(gw.addr, request.as_bytes());
        let (status, body) = parse_status_and_body(&raw);
        let content_type = raw
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default();
        let live = live_outcome(status, &content_type, &body);
        *kinds
            .entry(match &live {
                None => "forwarded".to_string(),
                Some((s, p)) => format!("{s} {p}"),
            })
            .or_default() += 1;
        if live != explained_outcome {
            disagreements.push(format!(
                "{}: {} {}\n  live: {live:?}\n  explain: {explained_outcome:?} ({})",
                case.name, case.method, case.target, explained["reason"]
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} requests: explain and the gateway disagree\n{}\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n"),
        gw.log()
    );
    // The comparison covers allowed, denied and refused-by-other-stage requests alike.
    assert!(
        kinds.get("forwarded").copied().unwrap_or(0) >= 20,
        "{kinds:?}"
    );
    assert!(
        kinds.get("403 forbidden").copied().unwrap_or(0) >= 20,
        "{kinds:?}"
    );
    for kind in [
        "403 feature-not-in-tier",
        "451 residency-violation",
        "400 bad-path",
    ] {
        assert!(kinds.contains_key(kind), "no `{kind}` among {kinds:?}");
    }

    // The CLI runs the same path: the example, a free-tier export.
    let carol = token("carol", Some("globex"), &["editor".to_string()], false);
    let out = std::process::Command::new(common::gateway_bin())
        .args(["explain", "--config"])
        .arg(&gw.config_path)
        .args([
            "--method",
            "POST",
            "--path",
            "/documents/7/export",
            "--token",
        ])
        .arg(&carol)
        .output()
        .unwrap();
    let explanation: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    assert_eq!(explanation["outcome"], "deny", "{explanation}");
    assert_eq!(explanation["status"], 403, "{explanation}");
    assert_eq!(
        explanation["problem"], "feature-not-in-tier",
        "{explanation}"
    );
    eprintln!(
        "{} requests ({from_policy_tests} from policy-tests, {} not routable: {unroutable:?}): {kinds:?}",
        cases.len(),
        unroutable.len()
    );
}
