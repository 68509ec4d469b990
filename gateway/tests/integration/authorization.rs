//! Cedar authorization through the real gateway: allowed requests reach the upstream, denied
//! ones get 403 and never do; policies reload under load without a failed or mis-authorized
//! request; a bad policy is refused and the old set keeps serving; the CLI tools.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{client, config_for, eventually, gateway_bin, upstream, TestGateway};
use gateway::example_upstream::Echo;
use serde_json::json;

const SECRET: &str = "test-secret-for-the-authorization-tests-0123456789";
const ISSUER: &str = "https://issuer.authz.test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The repository's policy package, as files to place under `policies/`.
fn policy_files() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
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
    let base = repo().join("policies");
    walk(&base, &base, &mut out);
    out
}

fn config(up: std::net::SocketAddr, watch: bool) -> String {
    config_with(up, watch, "")
}

/// The test configuration with `extra` issuers after the tenant one.
fn config_with(up: std::net::SocketAddr, watch: bool, extra: &str) -> String {
    config_for(
        &[up],
        &format!(
            r#"
[identity]
allow_anonymous = true

[[identity.issuer]]
issuer = "{ISSUER}"
audiences = ["gateway"]
algorithms = ["HS256"]
secret_file = "issuer.secret"
claims = {{ tenant = "org", attributes = {{ mfa = "mfa" }} }}
{extra}

[tenancy]
sources = ["header", "credential"]

[tenancy.registry]
file = "tenants.toml"

[authorization]
policies = "policies"
watch = {watch}
"#
        ),
    )
}

const TENANTS: &str = r#"
[[tenant]]
id = "acme"
tier = "pro"
features = ["sso"]

[[tenant]]
id = "globex"
tier = "pro"
policies = """
@id("globex-read-only-fridays")
forbid (principal, action in Action::"write", resource) when { context.weekday == 99 };
"""
"#;

fn token(sub: &str, org: &str, roles: &[&str], mfa: bool) -> String {
    signed(
        ISSUER,
        SECRET,
        json!({
            "sub": sub, "org": org, "roles": roles, "mfa": mfa,
        }),
    )
}

/// An HS256 token of `issuer` with `claims` plus audience and expiry.
fn signed(issuer: &str, secret: &str, mut claims: serde_json::Value) -> String {
    claims["iss"] = json!(issuer);
    claims["aud"] = json!("gateway");
    claims["exp"] = json!(crate::common::idp::now() + 600);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn start(up: std::net::SocketAddr, watch: bool) -> TestGateway {
    start_with(up, watch, "", &[])
}

/// Starts the gateway with `extra` issuers and `files` besides the policies, secret and tenants.
fn start_with(
    up: std::net::SocketAddr,
    watch: bool,
    extra: &str,
    files: &[(&str, &[u8])],
) -> TestGateway {
    let policies = policy_files();
    let mut all: Vec<(&str, &[u8])> = policies
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    all.push(("issuer.secret", SECRET.as_bytes()));
    all.push(("tenants.toml", TENANTS.as_bytes()));
    all.extend_from_slice(files);
    TestGateway::start(&config_with(up, watch, extra), &all)
}

async fn send(gw: &TestGateway, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    send_to(gw, "acme", method, path, token).await
}

async fn send_to(
    gw: &TestGateway,
    tenant: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut req = client()
        .request(method.parse().unwrap(), gw.url(path))
        .header("x-tenant", tenant);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            (status, res.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_requests_reach_the_upstream_and_denied_ones_never_do() {
    let up = upstream("app").await;
    let gw = start(up.addr, false);
    let viewer = token("vera", "acme", &["viewer"], false);
    let admin = token("adam", "acme", &["admin"], true);

    let (status, body) = send(&gw, "GET", "/projects/42", Some(&viewer)).await;
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.path, "/projects/42");
    assert_eq!(up.served(), 1);

    for (method, path) in [
        ("DELETE", "/projects/42"),
        ("PUT", "/billing/plan"),
        ("GET", "/platform/tenants"),
    ] {
        let (status, body) = send(&gw, method, path, Some(&viewer)).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["type"], "tag:policy-gateway,2026:problem/forbidden");
        assert!(
            !body.contains("viewer-reads") && !body.contains("tenant-isolation"),
            "{body}"
        );
    }
    assert_eq!(up.served(), 1, "a denied request reached the upstream");

    // Unmapped routes are refused by default.
    assert_eq!(send(&gw, "GET", "/not/a/route", Some(&admin)).await.0, 404);
    // The admin (with MFA) may delete; anonymous callers see only the status page.
    assert_eq!(
        send(&gw, "DELETE", "/projects/42", Some(&admin)).await.0,
        200
    );
    assert_eq!(send(&gw, "GET", "/status", None).await.0, 200);
    assert_eq!(send(&gw, "GET", "/projects", None).await.0, 403);
    assert_eq!(up.served(), 3);

    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = gw.settled_log();
    assert!(
        log.contains("decision=\"deny\"") && log.contains("action=projects:delete"),
        "{log}"
    );
    assert!(
        log.contains("request_id="),
        "decisions carry the request id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_policies_from_the_registry_apply_to_their_tenant_only() {
    let up = upstream("app").await;
    let gw = start(up.addr, false);
    let editor = token("eve", "globex", &["editor"], false);
    let res = client()
        .post(gw.url("/projects"))
        .header("x-tenant", "globex")
        .bearer_auth(&editor)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Reloads policies while a bounded loop of requests runs: reads stay allowed, other tenants
/// stay denied, no request fails, and the flipped decision switches exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn policies_reload_under_load_without_failed_or_misauthorized_requests() {
    let up = upstream("app").await;
    let gw = Arc::new(start(up.addr, true));
    let viewer = token("vera", "acme", &["viewer"], false);
    assert_eq!(
        send(&gw, "DELETE", "/documents/1", Some(&viewer)).await.0,
        403
    );

    let errors = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(4);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (gw, viewer, errors, total) =
            (gw.clone(), viewer.clone(), errors.clone(), total.clone());
        workers.push(tokio::spawn(async move {
            let mut deletes_allowed_seen = false;
            while Instant::now() < stop_at {
                let (read, _) = send(&gw, "GET", "/projects/1", Some(&viewer)).await;
                let (delete, _) = send(&gw, "DELETE", "/documents/1", Some(&viewer)).await;
                let cross = client()
                    .get(gw.url("/projects/1"))
                    .header("x-tenant", "globex")
                    .bearer_auth(&viewer)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                total.fetch_add(3, Ordering::Relaxed);
                let ok = read == 200
                    && cross == 403
                    && (delete == 403 && !deletes_allowed_seen || delete == 200);
                deletes_allowed_seen |= delete == 200;
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("bad outcome: read {read}, delete {delete}, cross-tenant {cross}");
                }
            }
            deletes_allowed_seen
        }));
    }
    // Change the policies mid-load: viewers may now delete documents.
    tokio::time::sleep(Duration::from_millis(800)).await;
    std::fs::write(
        gw.dir.path().join("policies/viewer-delete.cedar"),
        "@id(\"viewers-delete-documents\")\npermit (principal in Role::\"viewer\", action == Action::\"documents:delete\", resource);\n",
    )
    .unwrap();
    let mut switched = 0;
    for w in workers {
        switched += w.await.unwrap() as usize;
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "of {} requests",
        total.load(Ordering::Relaxed)
    );
    assert_eq!(switched, 4, "every worker saw the new policy");
    assert!(total.load(Ordering::Relaxed) > 100);
    assert!(gw.settled_log().contains("reloaded"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_policy_is_refused_with_file_and_line_and_the_old_set_keeps_serving() {
    let up = upstream("app").await;
    let gw = start(up.addr, true);
    let viewer = token("vera", "acme", &["viewer"], false);
    assert_eq!(send(&gw, "GET", "/projects/1", Some(&viewer)).await.0, 200);
    // A syntax error, and a policy the schema rejects.
    std::fs::write(
        gw.dir.path().join("policies/broken.cedar"),
        "permit (principal, action, resource\n",
    )
    .unwrap();
    eventually(Duration::from_secs(5), || async {
        gw.settled_log().contains("reload refused")
    })
    .await
    .expect("reload refused");
    assert!(gw.settled_log().contains("broken.cedar:"), "{}", gw.log());
    assert_eq!(send(&gw, "GET", "/projects/1", Some(&viewer)).await.0, 200);
    assert_eq!(
        send(&gw, "DELETE", "/projects/1", Some(&viewer)).await.0,
        403
    );

    std::fs::write(
        gw.dir.path().join("policies/broken.cedar"),
        "permit (principal, action, resource) when { resource.nonexistent == 1 };\n",
    )
    .unwrap();
    eventually(Duration::from_secs(5), || async {
        gw.settled_log().matches("reload refused").count() >= 2
    })
    .await
    .expect("second reload refused");
    assert_eq!(
        send(&gw, "DELETE", "/projects/1", Some(&viewer)).await.0,
        403
    );

    // Fixed: the next reload goes through.
    std::fs::remove_file(gw.dir.path().join("policies/broken.cedar")).unwrap();
    eventually(Duration::from_secs(5), || async {
        gw.settled_log().contains("reloaded")
    })
    .await
    .expect("reload after fix");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_when_watching_is_off() {
    let up = upstream("app").await;
    let gw = start(up.addr, false);
    let viewer = token("vera", "acme", &["viewer"], false);
    assert_eq!(
        send(&gw, "DELETE", "/documents/1", Some(&viewer)).await.0,
        403
    );
    std::fs::write(
        gw.dir.path().join("policies/viewer-delete.cedar"),
        "@id(\"viewers-delete-documents\")\npermit (principal in Role::\"viewer\", action == Action::\"documents:delete\", resource);\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        send(&gw, "DELETE", "/documents/1", Some(&viewer)).await.0,
        403,
        "no watch: unchanged"
    );
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(5), || async {
        send(&gw, "DELETE", "/documents/1", Some(&viewer)).await.0 == 200
    })
    .await
    .expect("SIGHUP reload");
}

/// The problem type of a refusal body.
fn problem_type(body: &str) -> String {
    let problem: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    problem["type"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_callers_are_never_owners() {
    let up = upstream("app").await;
    let gw = start(up.addr, false);
    // The owner comes from the path: `anonymous` must not name the caller without credentials.
    for (tenant, method, path) in [
        ("acme", "DELETE", "/users/anonymous/documents/1"),
        ("acme", "PUT", "/users/anonymous/documents/1"),
        ("acme", "PATCH", "/users/anonymous/documents/1"),
        ("acme", "POST", "/users/anonymous/documents/1/share"),
        ("acme", "DELETE", "/users/anonymous/reports/1"),
        ("globex", "DELETE", "/users/anonymous/documents/1"),
        ("globex", "PUT", "/users/anonymous/documents/1"),
        ("globex", "DELETE", "/users/anonymous/reports/1"),
    ] {
        let (status, body) = send_to(&gw, tenant, method, path, None).await;
        assert_eq!(status, 403, "{tenant} {method} {path}: {body}");
        assert_eq!(
            problem_type(&body),
            "tag:policy-gateway,2026:problem/forbidden",
            "{body}"
        );
    }
    assert_eq!(
        up.served(),
        0,
        "an anonymous owner request reached the upstream"
    );
    // What anonymous callers may do is unchanged.
    assert_eq!(send_to(&gw, "globex", "GET", "/status", None).await.0, 200);
    // A real user still owns their documents (document 1 is alice's in policies/entities.json).
    let alice = token("alice", "acme", &[], false);
    assert_eq!(
        send(&gw, "DELETE", "/users/alice/documents/1", Some(&alice))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = gw.settled_log();
    assert!(
        log.contains("decision=\"deny\"")
            && log.contains("principal=anonymous")
            && log.contains("reason=\"forbidden\""),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_subjects_cannot_take_reserved_ids_or_pass_for_other_entities() {
    let up = upstream("app").await;
    // Document 7 belongs to the user `a`, document 8 to the user whose id is `a::b`.
    let mut entities: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(repo().join("policies/entities.json")).unwrap())
            .unwrap();
    for (id, owner) in [("7", "a"), ("8", "a::b")] {
        entities.push(serde_json::json!({
            "uid": {"type": "Document", "id": id},
            "attrs": {"tenant": {"__entity": {"type": "Tenant", "id": "acme"}},
                      "owner": {"__entity": {"type": "User", "id": owner}}},
            "parents": [],
        }));
    }
    let entities = serde_json::to_vec(&entities).unwrap();
    let gw = start_with(up.addr, false, "", &[("policies/entities.json", &entities)]);
    // A subject that is the anonymous caller's id or an API key's is refused outright: it would
    // be that principal in policies, upstream headers, rate limits and usage records.
    for sub in ["anonymous", "Anonymous", "apikey:ci", "APIKEY:deploy"] {
        let t = token(sub, "acme", &["viewer"], false);
        let (status, body) = send(&gw, "GET", "/projects/1", Some(&t)).await;
        assert_eq!(status, 401, "{sub}: {body}");
        let owner_path = format!("/users/{}/documents/1", sub.to_ascii_lowercase());
        assert_eq!(send(&gw, "DELETE", &owner_path, Some(&t)).await.0, 401);
    }
    // Ids are compared exactly as Cedar entity ids, whatever they hold.
    for (sub, path) in [
        ("vera\"", "/users/vera/documents/7"),
        ("User::\"vera\"", "/users/vera/documents/7"),
        ("vera\" || true || \"", "/users/vera/documents/7"),
        ("a::b", "/users/a/documents/7"),
        ("a::b", "/users/a::b/documents/7"),
        ("a", "/users/a::b/documents/8"),
    ] {
        let t = token(sub, "acme", &[], false);
        let (status, body) = send(&gw, "DELETE", path, Some(&t)).await;
        assert_eq!(status, 403, "{sub} on {path}: {body}");
    }
    assert_eq!(up.served(), 0);
    let t = token("a::b", "acme", &[], false);
    assert_eq!(
        send(&gw, "DELETE", "/users/a::b/documents/8", Some(&t))
            .await
            .0,
        200,
        "an id with `::` owns exactly its own documents"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        gw.settled_log().contains("reason=\"reserved-subject\""),
        "{}",
        gw.log()
    );
}

const PLATFORM_ISSUER: &str = "https://staff.authz.test";
const PLATFORM_SECRET: &str = "platform-secret-for-the-authorization-tests-987654";

#[tokio::test(flavor = "multi_thread")]
async fn platform_staff_act_across_tenants_only_where_policies_allow() {
    let up = upstream("app").await;
    let extra = format!(
        r#"
[[identity.issuer]]
issuer = "{PLATFORM_ISSUER}"
audiences = ["gateway"]
algorithms = ["HS256"]
secret_file = "platform.secret"
platform = true
claims = {{ tenant = "org", attributes = {{ mfa = "mfa" }} }}
"#
    );
    let gw = start_with(
        up.addr,
        false,
        &extra,
        &[("platform.secret", PLATFORM_SECRET.as_bytes())],
    );
    let staff = |roles: &[&str], mfa: bool| {
        signed(
            PLATFORM_ISSUER,
            PLATFORM_SECRET,
            json!({"sub": "sam", "roles": roles, "mfa": mfa}),
        )
    };
    let operator = staff(&["platform-operator"], true);
    // An operator with MFA reads any tenant's data and runs platform operations...
    for tenant in ["acme", "globex"] {
        let (status, body) = send_to(&gw, tenant, "GET", "/projects/1", Some(&operator)).await;
        assert_eq!(status, 200, "{tenant}: {body}");
        let echo: Echo = serde_json::from_str(&body).unwrap();
        assert_eq!(echo.headers["x-tenant-id"], vec![tenant]);
        assert_eq!(echo.headers["x-principal-id"], vec!["sam"]);
        assert_eq!(
            send_to(&gw, tenant, "GET", "/platform/tenants", Some(&operator))
                .await
                .0,
            200
        );
    }
    let served = up.served();
    // ... but changes nothing in them; and other staff roles open no tenant at all.
    for (who, token, method, path) in [
        ("operator", &operator, "DELETE", "/projects/1"),
        ("operator", &operator, "GET", "/billing"),
        (
            "operator without MFA",
            &staff(&["platform-operator"], false),
            "GET",
            "/projects/1",
        ),
        ("admin", &staff(&["admin"], true), "DELETE", "/projects/1"),
        ("viewer", &staff(&["viewer"], true), "GET", "/projects/1"),
    ] {
        let (status, body) = send_to(&gw, "globex", method, path, Some(token)).await;
        assert_eq!(status, 403, "{who} {method} {path}: {body}");
        assert_eq!(
            problem_type(&body),
            "tag:policy-gateway,2026:problem/forbidden"
        );
    }
    // A platform token that names a tenant is bound to it like any other.
    let member = signed(
        PLATFORM_ISSUER,
        PLATFORM_SECRET,
        json!({"sub": "sam", "org": "acme", "roles": ["admin"], "mfa": true}),
    );
    assert_eq!(
        send_to(&gw, "acme", "DELETE", "/projects/1", Some(&member))
            .await
            .0,
        200
    );
    let (status, body) = send_to(&gw, "globex", "GET", "/projects/1", Some(&member)).await;
    assert_eq!(status, 403);
    assert_eq!(
        problem_type(&body),
        "tag:policy-gateway,2026:problem/tenant-mismatch"
    );
    // The tenant issuer's token without a tenant claim is refused before any policy.
    let (status, body) = send_to(
        &gw,
        "globex",
        "GET",
        "/projects/1",
        Some(&signed(
            ISSUER,
            SECRET,
            json!({"sub": "nina", "roles": ["admin"]}),
        )),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        problem_type(&body),
        "tag:policy-gateway,2026:problem/credential-without-tenant"
    );
    assert_eq!(up.served(), served + 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = gw.settled_log();
    assert!(
        log.contains("platform-staff-read-and-operate-only"),
        "the deciding guard is logged: {log}"
    );
    assert!(
        log.contains("reason=\"credential-without-tenant\""),
        "{log}"
    );
}

#[test]
fn policy_test_command_passes_on_the_repository_and_reports_failures() {
    let out = std::process::Command::new(gateway_bin())
        .args(["policy", "test"])
        .arg(repo().join("policy-tests"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: usize = stdout
        .lines()
        .find(|l| l.contains("case(s):"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(passed >= 100, "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    assert!(stdout.contains("coverage:"), "{stdout}");

    // A wrong expectation fails with a diff and a non-zero exit.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wrong.toml"),
        "[defaults]\ntenant = \"acme\"\n\n[[case]]\nname = \"viewers delete projects (wrong)\"\nprincipal = { id = \"v\", roles = [\"viewer\"] }\naction = \"projects:delete\"\nresource = { type = \"Project\", id = \"p\" }\nexpect = \"allow\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(gateway_bin())
        .args(["policy", "test"])
        .arg(dir.path())
        .arg("--policies")
        .arg(repo().join("policies"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL")
            && stdout.contains("expected: allow")
            && stdout.contains("actual:   deny"),
        "{stdout}"
    );
    assert!(stdout.contains("never exercised: viewer-reads"), "{stdout}");
}

#[test]
fn explain_shows_decision_policies_and_entities() {
    let dir = tempfile::tempdir().unwrap();
    for (path, bytes) in policy_files() {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    std::fs::write(dir.path().join("issuer.secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("tenants.toml"), TENANTS).unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        config("127.0.0.1:9".parse().unwrap(), false).replace("{listen}", "127.0.0.1:1"),
    )
    .unwrap();
    let out = std::process::Command::new(gateway_bin())
        .args(["explain", "--config"])
        .arg(&cfg)
        .args([
            "--method",
            "DELETE",
            "--path",
            "/projects/42",
            "-H",
            "x-tenant: acme",
            "--token",
        ])
        .arg(token("vera", "acme", &["viewer"], false))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let explanation: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(explanation["outcome"], "deny");
    assert_eq!(explanation["action"], "projects:delete");
    assert_eq!(explanation["tenant"], "acme");
    assert_eq!(explanation["principal"]["id"], "vera");
    assert!(explanation["entities"].as_array().unwrap().len() >= 3);

    let out = std::process::Command::new(gateway_bin())
        .args(["explain", "--config"])
        .arg(&cfg)
        .args([
            "--path",
            "/projects/42",
            "-H",
            "x-tenant: globex",
            "--principal",
        ])
        .arg(r#"{"id": "op", "tenant": "acme", "roles": ["platform-operator"], "mfa": true}"#)
        .output()
        .unwrap();
    let explanation: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The tenant stage refuses the cross-tenant request before Cedar is asked.
    assert_eq!(explanation["refused_by"], "tenant", "{explanation}");

    let out = std::process::Command::new(gateway_bin())
        .args(["explain", "--config"])
        .arg(&cfg)
        .args([
            "--method",
            "DELETE",
            "--path",
            "/projects/42",
            "-H",
            "x-tenant: acme",
            "--principal",
        ])
        .arg(r#"{"id": "adam", "tenant": "acme", "roles": ["admin"], "mfa": true}"#)
        .output()
        .unwrap();
    let explanation: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(explanation["outcome"], "allow", "{explanation}");
    let origins = explanation["policy_origins"].to_string();
    assert!(
        origins.contains("admin-manages") && origins.contains("roles.cedar:"),
        "{origins}"
    );
}

#[test]
fn check_refuses_invalid_tenant_policies_in_the_registry_file() {
    let dir = tempfile::tempdir().unwrap();
    for (path, bytes) in policy_files() {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    std::fs::write(dir.path().join("issuer.secret"), SECRET).unwrap();
    std::fs::write(
        dir.path().join("tenants.toml"),
        "[[tenant]]\nid = \"bad\"\npolicies = \"permit (principal, action, resource) when { resource.nope };\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        config("127.0.0.1:9".parse().unwrap(), false).replace("{listen}", "127.0.0.1:1"),
    )
    .unwrap();
    let out = std::process::Command::new(gateway_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tenant bad"), "{stderr}");
}

/// Body facts: `POST /projects` reads `budget` from its JSON body (`read_body = true`); a
/// policy caps it for non-admins and refuses when the fact is absent. The body still reaches
/// the upstream whole; bodies the gateway does not read (larger than the limit, chunked, not
/// JSON) leave the fact absent and are refused by that policy, never waved through.
#[tokio::test(flavor = "multi_thread")]
async fn json_body_fields_are_facts_on_routes_that_read_them() {
    let up = upstream("app").await;
    let routes = String::from_utf8(std::fs::read(repo().join("policies/routes.toml")).unwrap())
        .unwrap()
        .replacen(
            "method = \"POST\"\npath = \"/projects\"\n",
            "method = \"POST\"\npath = \"/projects\"\nread_body = true\n",
            1,
        )
        + "\n[context]\nbudget = { body = \"/project/budget\" }\n";
    assert!(
        routes.contains("read_body = true"),
        "routes.toml changed shape"
    );
    let schema =
        String::from_utf8(std::fs::read(repo().join("policies/schema.cedarschema")).unwrap())
            .unwrap()
            .replacen(
                "type RequestContext = {\n",
                "type RequestContext = {\n  budget?: Long,\n",
                1,
            );
    let policy = r#"
@id("project-budget-cap")
@reason("a project budget above 10000 needs an admin, and creating one needs its budget")
forbid (principal, action == Action::"projects:create", resource)
unless { context has budget && (context.budget <= 10000 || principal in Role::"admin") };
"#;
    let gw = start_with(
        up.addr,
        false,
        "",
        &[
            ("policies/routes.toml", routes.as_bytes()),
            ("policies/schema.cedarschema", schema.as_bytes()),
            ("policies/budget.cedar", policy.as_bytes()),
        ],
    );
    let editor = token("erin", "acme", &["editor"], false);
    let admin = token("olga", "acme", &["admin"], true);
    let post = |body: Vec<u8>, token: &str, chunked: bool| {
        let mut request = client()
            .post(gw.url("/projects"))
            .header("x-tenant", "acme")
            .header("content-type", "application/json")
            .bearer_auth(token);
        request = if chunked {
            let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(body)]);
            request.body(reqwest::Body::wrap_stream(stream))
        } else {
            request.body(body)
        };
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    };
    let sha256 = |bytes: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    };

    // Within the cap: allowed, and the upstream receives the body byte for byte.
    let small = br#"{"project": {"name": "apollo", "budget": 500}}"#.to_vec();
    let (status, body) = post(small.clone(), &editor, false).await;
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.body_bytes, small.len() as u64);
    assert_eq!(echo.body_sha256, sha256(&small));
    // Above the cap: refused for an editor, with the policy's reason; allowed for an admin.
    let big = br#"{"project": {"name": "apollo", "budget": 50000}}"#.to_vec();
    let (status, body) = post(big.clone(), &editor, false).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs an admin"), "{body}");
    assert_eq!(post(big, &admin, false).await.0, 200);
    // The fact absent: no field, not JSON, chunked, or past the body-facts limit — refused by
    // the policy (and the padded body is not forwarded).
    let padded = format!(
        r#"{{"project": {{"budget": 500}}, "padding": "{}"}}"#,
        "x".repeat(40 * 1024)
    )
    .into_bytes();
    for (what, body, chunked) in [
        (
            "no field",
            br#"{"project": {"name": "apollo"}}"#.to_vec(),
            false,
        ),
        ("not JSON", b"budget=500".to_vec(), false),
        ("chunked", small.clone(), true),
        ("past the limit", padded, false),
    ] {
        let (status, answer) = post(body, &editor, chunked).await;
        assert_eq!(status, 403, "{what}: {answer}");
    }
    // An admin's large, padded body is still forwarded whole (the part read early and the rest).
    let padded_admin = format!(
        r#"{{"project": {{"budget": 1}}, "padding": "{}"}}"#,
        "y".repeat(20 * 1024)
    )
    .into_bytes();
    let (status, body) = post(padded_admin.clone(), &admin, false).await;
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.body_sha256, sha256(&padded_admin));
    // Routes that do not read their body are not affected by a body field.
    let (status, body) = send(&gw, "GET", "/projects", Some(&editor)).await;
    assert_eq!(status, 200, "{body}");
}
