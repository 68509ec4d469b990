//! The admin API through the real gateway: open health endpoints, everything else behind the
//! bearer token, Prometheus metrics, tenant provisioning in PostgreSQL effective within a second,
//! reload and explain, and `/readyz` turning 503 on graceful shutdown.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::common;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{client, config_for, free_addr, pg_url, unique_table, upstream, TestGateway};
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-for-the-tests-0123456789abcdef";

async fn admin(
    method: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client().request(method.parse().unwrap(), format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let Ok(res) = req.send().await else {
        return (0, Default::default(), String::new());
    };
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap_or_default())
}

async fn proxied_status(gw: &TestGateway, tenant: &str) -> u16 {
    client()
        .get(gw.url("/things"))
        .header("x-tenant", tenant)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn protected_admin_api_provisions_tenants_effective_within_a_second() {
    let up = upstream("app").await;
    let db = gateway::db::connect(&pg_url(), None)
        .await
        .expect("PostgreSQL must be running (scripts/ensure-deps test starts it)");
    let table = unique_table("admin_tenants");
    gateway::tenancy::postgres::migrate(&db, &table)
        .await
        .unwrap();
    let admin_addr = free_addr();
    let config = config_for(
        &[up.addr],
        &format!(
            r#"
[tenancy]
sources = ["header"]
[tenancy.registry.postgres]
url = "{}"
table = "{table}"

[admin]
listen = "{admin_addr}"
token_file = "admin.token"
"#,
            pg_url()
        ),
    );
    let mut gw = TestGateway::start(&config, &[("admin.token", format!("{TOKEN}\n").as_bytes())]);
    gw.wait_accepting(admin_addr);

    // Open: health and the API description.
    let (status, _, body) = admin("GET", admin_addr, "/healthz", None, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = admin("GET", admin_addr, "/readyz", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["ready"], true);
    let (_, _, openapi) = admin("GET", admin_addr, "/openapi.json", None, None).await;
    let openapi: Value = serde_json::from_str(&openapi).unwrap();
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/status",
        "/admin/reload",
        "/admin/explain",
        "/admin/usage",
        "/admin/residency",
        "/admin/audit",
        "/admin/tenants/{id}",
        "/admin/tenants/{id}/suspend",
        "/admin/tenants/{id}/activate",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} not documented");
    }

    // Everything else needs the token.
    for token in [None, Some("wrong-token")] {
        let (status, headers, body) = admin("GET", admin_addr, "/admin/status", token, None).await;
        assert_eq!(status, 401, "{body}");
        assert!(headers.contains_key("www-authenticate"));
        let (status, _, _) = admin("GET", admin_addr, "/metrics", token, None).await;
        assert_eq!(status, 401);
    }
    let (status, _, body) = admin("GET", admin_addr, "/admin/status", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    let status_doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status_doc["tenants"], 0);
    assert_eq!(status_doc["upstream_pools"][0]["peers"][0]["healthy"], true);

    // Provisioning: signup → first request.
    assert_eq!(proxied_status(&gw, "newco").await, 404);
    let started = Instant::now();
    let (status, _, body) = admin(
        "PUT",
        admin_addr,
        "/admin/tenants/newco",
        Some(TOKEN),
        Some(json!({"id": "newco", "tier": "pro"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(proxied_status(&gw, "newco").await, 200);
    let signup_to_first_request = started.elapsed();
    eprintln!("signup → first request served: {signup_to_first_request:?}");
    assert!(signup_to_first_request < Duration::from_secs(1));
    let stored: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE id = 'newco'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "written to the shared registry");

    let (status, _, _) = admin(
        "POST",
        admin_addr,
        "/admin/tenants/newco/suspend",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(proxied_status(&gw, "newco").await, 403);
    let (status, _, _) = admin(
        "POST",
        admin_addr,
        "/admin/tenants/newco/activate",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(proxied_status(&gw, "newco").await, 200);
    let (status, _, body) =
        admin("GET", admin_addr, "/admin/tenants/newco", Some(TOKEN), None).await;
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["status"].clone()
        ),
        (200, json!("active"))
    );

    // A suspension while another writer (another replica's PUT) changes the document: the
    // suspension waits for the row and keeps that change. Written back whole from this
    // replica's snapshot, the new host was lost.
    let other_writer = gateway::db::connect(&pg_url(), None).await.unwrap();
    other_writer
        .batch_execute(&format!(
            "BEGIN; UPDATE {table} SET doc = jsonb_set(doc, '{{hosts}}', '[\"newco.example\"]') WHERE id = 'newco'"
        ))
        .await
        .unwrap();
    let suspend = tokio::spawn(admin(
        "POST",
        admin_addr,
        "/admin/tenants/newco/suspend",
        Some(TOKEN),
        None,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    other_writer.batch_execute("COMMIT").await.unwrap();
    let (status, _, body) = suspend.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let stored: Value = db
        .query_one(&format!("SELECT doc FROM {table} WHERE id = 'newco'"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored["status"], "suspended", "{stored}");
    assert_eq!(stored["hosts"], json!(["newco.example"]), "{stored}");
    let (status, _, _) = admin(
        "POST",
        admin_addr,
        "/admin/tenants/newco/activate",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // Bad documents are refused naming the field; nothing is written.
    let (status, _, body) = admin(
        "PUT",
        admin_addr,
        "/admin/tenants/other",
        Some(TOKEN),
        Some(json!({"id": "newco"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = admin(
        "PUT",
        admin_addr,
        "/admin/tenants/badco",
        Some(TOKEN),
        Some(json!({"id": "badco", "status": "sleeping"})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("status"), "{body}");
    let (status, _, body) = admin(
        "PUT",
        admin_addr,
        "/admin/tenants/Bad_Id",
        Some(TOKEN),
        Some(json!({"id": "Bad_Id"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["invalid-params"][0]["name"],
        "id"
    );

    // Metrics: request counts per route and status, upstream health, registry state.
    let (status, _, metrics) = admin("GET", admin_addr, "/metrics", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    for needle in [
        "gateway_requests_total{route=\"unmatched\",status=\"200\"}",
        "gateway_rejections_total{reason=\"tenant-suspended\"}",
        "gateway_request_duration_seconds_bucket",
        "gateway_upstream_healthy_peers{pool=\"app\"} 1",
        "gateway_admin_tenant_writes_total",
        // HELP texts from the one declaration of each metric (telemetry.rs).
        "# HELP gateway_requests_total Requests answered, by route template and status.",
        "# HELP gateway_request_duration_seconds Time from the request head",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
}

const ACME_AUDIT_TOKEN: &str = "acme-audit-token-0123456789";
const GLOBEX_AUDIT_TOKEN: &str = "globex-audit-token-0123456789";

/// acme (its plan includes `audit-export`) and globex (it does not), each with an audit token.
fn tenants_with_audit_access() -> String {
    use sha2::Digest as _;
    let hash = |token: &str| hex::encode(sha2::Sha256::digest(token.as_bytes()));
    format!(
        "[[tenant]]\nid = \"acme\"\nfeatures = [\"audit-export\"]\naudit = {{ token_sha256 = \"{}\" }}\n\n\
         [[tenant]]\nid = \"globex\"\naudit = {{ token_sha256 = \"{}\" }}\n",
        hash(ACME_AUDIT_TOKEN),
        hash(GLOBEX_AUDIT_TOKEN)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_explain_and_readyz_during_graceful_shutdown() {
    let up = upstream("app").await;
    let admin_addr = free_addr();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let config = config_for(
        &[up.addr],
        &format!(
            r#"
[identity]
allow_anonymous = true

[tenancy]
sources = ["header"]
registry = {{ file = "tenants.toml" }}

[authorization]
policies = "{}"

[metering]
dir = "outbox"

[audit]
dir = "audit"

[admin]
listen = "{admin_addr}"
token_file = "admin.token"
"#,
            policies.display()
        ),
    )
    .replace("grace_period = \"1s\"", "grace_period = \"3s\"");
    let mut gw = TestGateway::start(
        &config,
        &[
            ("admin.token", TOKEN.as_bytes()),
            ("tenants.toml", tenants_with_audit_access().as_bytes()),
        ],
    );
    gw.wait_accepting(admin_addr);

    let (status, _, body) = admin("POST", admin_addr, "/admin/reload", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["tenants"], 2);

    let (status, _, body) = admin(
        "POST",
        admin_addr,
        "/admin/explain",
        Some(TOKEN),
        Some(json!({"method": "DELETE", "path": "/projects/42", "headers": {"x-tenant": "acme"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let explanation: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(explanation["outcome"], "deny", "{explanation}");
    assert_eq!(explanation["action"], "projects:delete");

    // Usage and residency reports over what was just served.
    assert_eq!(
        proxied_status(&gw, "acme").await,
        404,
        "no route: denied by default"
    );
    let period = "from=2026-01-01&to=2100-01-01&tenant=acme";
    let reported = common::eventually(Duration::from_secs(5), || async {
        let (status, _, body) = admin(
            "GET",
            admin_addr,
            &format!("/admin/usage?{period}&bucket=day"),
            Some(TOKEN),
            None,
        )
        .await;
        status == 200 && body.contains("\"tenant\":\"acme\"")
    })
    .await;
    assert!(reported.is_some(), "usage report never showed the request");
    // The same report exported as CSV, XLSX and PDF files.
    for (format, content_type, starts) in [
        (
            "csv",
            "text/csv; charset=utf-8",
            "period,tenant,action,requests",
        ),
        (
            "xlsx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "PK",
        ),
        ("pdf", "application/pdf", "%PDF-"),
    ] {
        let (status, headers, body) = admin(
            "GET",
            admin_addr,
            &format!("/admin/usage?{period}&bucket=day&format={format}"),
            Some(TOKEN),
            None,
        )
        .await;
        assert_eq!(status, 200, "{format}: {body}");
        assert_eq!(headers["content-type"], content_type);
        assert_eq!(
            headers["content-disposition"],
            format!("attachment; filename=\"usage.{format}\"").as_str()
        );
        assert!(body.starts_with(starts), "{format}: {body:.80}");
        // Streamed as it is written, not built whole first.
        assert_eq!(headers["transfer-encoding"], "chunked", "{format}");
    }
    let (status, _, body) = admin(
        "GET",
        admin_addr,
        &format!("/admin/usage?{period}&format=docx"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("format"), "{body}");
    let (status, _, body) = admin(
        "GET",
        admin_addr,
        &format!("/admin/residency?{period}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // acme's audit trail as a verifiable excerpt: the CLI checks it on its own.
    let (status, headers, excerpt) = admin(
        "GET",
        admin_addr,
        "/admin/audit?tenant=acme&from=2026-01-01",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{excerpt}");
    assert_eq!(headers["content-type"], "application/jsonl");
    let header: Value = serde_json::from_str(excerpt.lines().next().unwrap()).unwrap();
    assert_eq!(header["type"], "audit-excerpt", "{excerpt}");
    assert!(header["matched"].as_u64().unwrap() >= 1, "{excerpt}");
    let file = gw.dir.path().join("acme-excerpt.jsonl");
    std::fs::write(&file, &excerpt).unwrap();
    let out = std::process::Command::new(common::gateway_bin())
        .args(["audit", "verify-excerpt"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // An edited excerpt does not verify.
    std::fs::write(&file, excerpt.replacen("acme", "acmf", 2)).unwrap();
    let out = std::process::Command::new(common::gateway_bin())
        .args(["audit", "verify-excerpt"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "an edited excerpt verified");
    // The summary as a PDF, read back with poppler.
    let pdf = client()
        .get(format!(
            "http://{admin_addr}/admin/audit?tenant=acme&format=pdf"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    let file = gw.dir.path().join("audit-summary.pdf");
    std::fs::write(&file, pdf.bytes().await.unwrap()).unwrap();
    let text = std::process::Command::new("pdftotext")
        .arg(&file)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils)");
    let text = String::from_utf8_lossy(&text.stdout);
    for needle in ["Audit trail summary", "Decisions per tenant", "acme", "yes"] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let (status, _, body) = admin(
        "GET",
        admin_addr,
        "/admin/audit?decision=maybe",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // acme's own administrators read acme's trail with acme's audit token, and only it.
    let (status, _, own) = admin(
        "GET",
        admin_addr,
        "/tenants/acme/audit",
        Some(ACME_AUDIT_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{own}");
    let header: Value = serde_json::from_str(own.lines().next().unwrap()).unwrap();
    assert_eq!(header["filter"]["tenant"], "acme", "{own}");
    assert!(header["matched"].as_u64().unwrap() >= 1, "{own}");
    // Nothing of the rest of the log: not its size (other tenants' traffic), which the
    // platform's export gives.
    assert_eq!(header["chain"]["verified"], true, "{own}");
    assert!(header["chain"].get("records").is_none(), "{own}");
    assert!(header["head"].get("seq").is_none(), "{own}");
    let (_, _, platform) = admin("GET", admin_addr, "/admin/audit", Some(TOKEN), None).await;
    let platform: Value = serde_json::from_str(platform.lines().next().unwrap()).unwrap();
    assert!(
        platform["chain"]["records"].as_u64().unwrap() >= 1,
        "{platform}"
    );
    for (path, token, expected) in [
        (
            "/tenants/acme/audit?tenant=globex",
            Some(ACME_AUDIT_TOKEN),
            403,
        ),
        ("/tenants/acme/audit", None, 401),
        ("/tenants/acme/audit", Some(TOKEN), 401),
        ("/tenants/globex/audit", Some(ACME_AUDIT_TOKEN), 401),
        // globex has a token but not the feature in its plan.
        ("/tenants/globex/audit", Some(GLOBEX_AUDIT_TOKEN), 403),
    ] {
        let (status, _, body) = admin("GET", admin_addr, path, token, None).await;
        assert_eq!(status, expected, "{path} with {token:?}: {body}");
    }
    // An unknown tenant gets the answer a known one gets for a wrong token (the answer must
    // not tell which tenants exist).
    let known = admin("GET", admin_addr, "/tenants/acme/audit", Some("nope"), None).await;
    let unknown = admin(
        "GET",
        admin_addr,
        "/tenants/nobody/audit",
        Some("nope"),
        None,
    )
    .await;
    assert_eq!(
        (known.0, known.1.get("www-authenticate")),
        (unknown.0, unknown.1.get("www-authenticate"))
    );
    let (status, _, body) = admin(
        "GET",
        admin_addr,
        "/admin/usage?from=yesterday&to=2100-01-01",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("from"), "{body}");

    let (status, _, _) = admin("GET", admin_addr, "/admin/nothing", Some(TOKEN), None).await;
    assert_eq!(status, 404);

    gw.signal(nix::sys::signal::Signal::SIGTERM);
    let not_ready = common::eventually(Duration::from_secs(3), || async {
        admin("GET", admin_addr, "/readyz", None, None).await.0 == 503
    })
    .await;
    assert!(
        not_ready.is_some(),
        "readyz never turned 503:\n{}",
        gw.log()
    );
    assert!(
        gw.wait_exit(Duration::from_secs(15)).is_some(),
        "gateway did not stop"
    );
}

/// Tenant documents that would crash or bypass the request path are refused with a 400 problem
/// naming the field, nothing is written, and the gateway keeps serving (issue 14.3).
#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_tenant_documents_are_refused_naming_the_field() {
    let up = upstream("app").await;
    let db = gateway::db::connect(&pg_url(), None)
        .await
        .expect("PostgreSQL must be running (scripts/ensure-deps test starts it)");
    let table = unique_table("admin_bounds");
    gateway::tenancy::postgres::migrate(&db, &table)
        .await
        .unwrap();
    let admin_addr = free_addr();
    let config = config_for(
        &[up.addr],
        &format!(
            r#"
[tenancy]
sources = ["header"]
[tenancy.registry.postgres]
url = "{}"
table = "{table}"

[tiers.free]
requests_per_second = 50
burst = 100
[tiers.pro]
requests_per_second = 500
burst = 1000

[admin]
listen = "{admin_addr}"
token_file = "admin.token"
"#,
            pg_url()
        ),
    );
    let mut gw = TestGateway::start(&config, &[("admin.token", TOKEN.as_bytes())]);
    gw.wait_accepting(admin_addr);

    let long_host = format!("{}.example", "a".repeat(100_000));
    let cases = [
        (
            json!({"limits": {"requests_per_second": 1e-30}}),
            "limits.requests_per_second",
        ),
        (
            json!({"limits": {"requests_per_second": 5e-324}}),
            "limits.requests_per_second",
        ),
        (
            json!({"limits": {"requests_per_second": 2e6}}),
            "limits.requests_per_second",
        ),
        (json!({"limits": {"burst": 0}}), "limits.burst"),
        (
            json!({"limits": {"daily_requests": 0}}),
            "limits.daily_requests",
        ),
        // A quota of its own, without Redis to count it in (this gateway has no `[limits]`).
        (
            json!({"limits": {"monthly_requests": 1000}}),
            "limits.monthly_requests",
        ),
        (json!({"tier": "platinum"}), "tier"),
        (json!({"hosts": [long_host]}), "hosts[0]"),
        (json!({"hosts": ["bad_host.example"]}), "hosts[0]"),
        (json!({"name": "n".repeat(10_000)}), "name"),
    ];
    for (i, (fields, field)) in cases.into_iter().enumerate() {
        let mut doc = json!({"id": "slowco", "tier": "free"});
        for (k, v) in fields.as_object().unwrap() {
            doc[k] = v.clone();
        }
        let (status, headers, body) = admin(
            "PUT",
            admin_addr,
            "/admin/tenants/slowco",
            Some(TOKEN),
            Some(doc),
        )
        .await;
        assert_eq!(status, 400, "case {i} ({field}): {body}\n{}", gw.log());
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "case {i}"
        );
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["status"], 400);
        assert_eq!(
            problem["invalid-params"][0]["name"], field,
            "case {i}: {problem}"
        );
        assert!(problem["invalid-params"][0]["reason"].is_string());
        // The gateway still serves, and refused nothing it had.
        assert_eq!(proxied_status(&gw, "slowco").await, 404, "case {i}");
    }
    let stored: i64 = db
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "nothing written");
    assert!(
        gw.settled_log().contains("tenant document refused"),
        "{}",
        gw.log()
    );

    // The bounds themselves are accepted.
    let (status, _, body) = admin(
        "PUT",
        admin_addr,
        "/admin/tenants/slowco",
        Some(TOKEN),
        Some(json!({"id": "slowco", "tier": "pro",
                    "limits": {"requests_per_second": 0.001, "burst": 1}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(proxied_status(&gw, "slowco").await, 200);
    // Its one cell is used: the next is refused with a problem, not a closed connection.
    assert_eq!(proxied_status(&gw, "slowco").await, 429);
    db.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}
