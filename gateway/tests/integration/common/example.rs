//! The example deployment (deploy/examples, policies/, policy-tests/) as tests use it: its
//! configuration on free ports, demo tokens, and its policy-test cases and demo request lines as
//! HTTP requests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example deployment with its own ports, state in the test directory, and tier limits
/// raised far enough that ~200 requests in a row are never rate limited (explain spends no
/// budget, so a 429 would be a difference of state, not of decision).
pub fn example_config(admin: SocketAddr, eu: SocketAddr, us: SocketAddr) -> String {
    // No test of this config talks to its front doors: their ports are picked afresh at each
    // start attempt (a port free when picked may be taken before the gateway binds it).
    example_config_text(admin, eu, us, super::FREE_ADDR, super::FREE_ADDR)
}

/// [`example_config`] with the ext_authz and forward-auth front doors on the given addresses.
pub fn example_config_with_doors(
    admin: SocketAddr,
    eu: SocketAddr,
    us: SocketAddr,
    ext_authz: SocketAddr,
    forward_auth: SocketAddr,
) -> String {
    example_config_text(
        admin,
        eu,
        us,
        &ext_authz.to_string(),
        &forward_auth.to_string(),
    )
}

fn example_config_text(
    admin: SocketAddr,
    eu: SocketAddr,
    us: SocketAddr,
    ext_authz: &str,
    forward_auth: &str,
) -> String {
    let root = repo().canonicalize().expect("repository root");
    let text = std::fs::read_to_string(root.join("deploy/examples/gateway.toml"))
        .expect("deploy/examples/gateway.toml");
    let replaced = text
        .replace("listen = [\"127.0.0.1:8080\"]", "listen = [\"{listen}\"]")
        .replace("127.0.0.1:9901", &admin.to_string())
        .replace("127.0.0.1:9191", ext_authz)
        .replace("127.0.0.1:9192", forward_auth)
        .replace("127.0.0.1:18080", &eu.to_string())
        .replace("127.0.0.1:18081", &us.to_string())
        .replace("\"../../target/demo-state", "\"state")
        .replace(
            "\"demo-session.key\"",
            &format!("\"{}/deploy/examples/demo-session.key\"", root.display()),
        )
        .replace("\"../../", &format!("\"{}/", root.display()))
        // Every tier's budget raised: the tests send hundreds of requests per tenant within a
        // second or two, and whether a 429 came would depend on how fast the machine is.
        .replace(
            "requests_per_second = 5\n",
            "requests_per_second = 100000\n",
        )
        .replace(
            "requests_per_second = 100\nburst = 200\n",
            "requests_per_second = 100000\nburst = 100000\n",
        )
        .replace(
            "requests_per_second = 1000\nburst = 2000\n",
            "requests_per_second = 100000\nburst = 100000\n",
        )
        .replace(
            "requests_per_second = 0.2\n",
            "requests_per_second = 100000\n",
        )
        .replace("principal_requests_per_second = 2\n", "")
        .replace("principal_burst = 10\n", "");
    assert!(
        !replaced.contains("127.0.0.1:8080")
            && replaced.contains("{listen}")
            && !replaced.contains("burst = 200\n")
            && !replaced.contains("burst = 2000\n"),
        "the example config changed shape; update this test"
    );
    replaced
}

pub fn example_file(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("deploy/examples").join(name)).expect(name)
}

/// A token of the demo issuer, as `gateway demo` mints them.
pub fn token(sub: &str, tenant: Option<&str>, roles: &[String], mfa: bool) -> String {
    token_with(sub, tenant, roles, mfa, json!({}))
}

/// As [`token`], with further claims (e.g. `{"clearance": 3}`).
pub fn token_with(
    sub: &str,
    tenant: Option<&str>,
    roles: &[String],
    mfa: bool,
    extra: serde_json::Value,
) -> String {
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
    if let (Some(map), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        map.extend(extra.clone());
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
pub struct Case {
    pub name: String,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

/// The route table of the example policies, to turn `action` + `resource` cases into requests.
pub struct Routes(Vec<toml::Value>);

impl Routes {
    pub fn load() -> Routes {
        let text = std::fs::read_to_string(repo().join("policies/routes.toml")).unwrap();
        let table: toml::Table = text.parse().unwrap();
        Routes(table["route"].as_array().unwrap().clone())
    }

    /// `METHOD /path` of a route for `action` on `resource`, its parameters filled from the
    /// resource (`id`, attributes such as `owner`).
    pub fn request_for(&self, action: &str, resource: &toml::Table) -> Option<(String, String)> {
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
pub fn policy_test_cases(routes: &Routes) -> (Vec<Case>, Vec<String>) {
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
pub fn demo_cases() -> Vec<Case> {
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
    let dave = (
        "authorization".to_string(),
        format!(
            "Bearer {}",
            token_with(
                "dave",
                Some("acme"),
                &["viewer".to_string()],
                false,
                json!({"clearance": 3})
            )
        ),
    );
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
        case("owner updates", "PUT", "/documents/1", vec![alice.clone()]),
        case("not the owner", "PUT", "/documents/4", vec![alice.clone()]),
        case(
            "owner named in the URL",
            "PUT",
            "/users/alice/documents/4",
            vec![alice.clone()],
        ),
        case(
            "another tenant's document",
            "GET",
            "/documents/100",
            vec![alice.clone()],
        ),
        case(
            "clearance suffices",
            "GET",
            "/documents/5",
            vec![dave.clone()],
        ),
        case("clearance too low", "GET", "/documents/6", vec![dave]),
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
pub fn live_outcome(status: u16, content_type: &str, body: &str) -> Option<(u16, String)> {
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
