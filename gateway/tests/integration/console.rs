//! The console in a real browser: headless Chromium signs in with the admin token and the
//! page's figures are checked against the usage report of the same outbox; screenshots are
//! kept (`<target>/test-artifacts/console/`).
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::{client, config_for, free_addr, gateway_bin, upstream, TestGateway};

const TOKEN: &str = "console-token-for-the-tests-0123456789abcdef";

fn artefacts() -> std::path::PathBuf {
    // Next to the gateway binary's profile directory: target/test-artifacts/console.
    Path::new(gateway_bin())
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .join("test-artifacts")
        .join("console")
}

/// `(requests, rejected, cost)` per tenant, from `GET /admin/usage` over the same period.
async fn report(admin: std::net::SocketAddr) -> BTreeMap<String, (u64, u64, String)> {
    let body: Value = client()
        .get(format!(
            "http://{admin}/admin/usage?from=2026-01-01&to=2100-01-01&bucket=day&by=tenant"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut totals: BTreeMap<String, (u64, u64, f64)> = BTreeMap::new();
    for row in body["rows"].as_array().unwrap() {
        let t = totals
            .entry(row["tenant"].as_str().unwrap().to_string())
            .or_default();
        t.0 += row["requests"].as_u64().unwrap();
        t.1 += row["rejected"].as_u64().unwrap();
        t.2 += row["cost"].as_str().unwrap().parse::<f64>().unwrap();
    }
    totals
        .into_iter()
        .map(|(k, (r, j, c))| (k, (r, j, format!("{c}"))))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_what_the_usage_report_says() {
    let up = upstream("app").await;
    let admin = free_addr();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let redis = std::env::var("GATEWAY_TEST_REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
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
policies = "{policies}"

[limits]
backend = "redis"
redis_url = "{redis}"
key_prefix = "gwtest:console:{pid}:{rand}"

[metering]
dir = "outbox"
[metering.pricing]
currency = "EUR"
[[metering.pricing.item]]
name = "requests"
unit_price = "0.001"

[audit]
dir = "audit"

[admin]
listen = "{admin}"
token_file = "admin.token"
"#,
            policies = policies.display(),
            pid = std::process::id(),
            rand = rand::random::<u32>(),
        ),
    );
    let gw = TestGateway::start(
        &config,
        &[
            ("admin.token", TOKEN.as_bytes()),
            (
                "tenants.toml",
                b"[[tenant]]\nid = \"acme\"\n\n[[tenant]]\nid = \"globex\"\n[[tenant.budgets]]\nname = \"monthly\"\namount = \"1.00\"\n",
            ),
        ],
    );
    let mut gw = gw;
    gw.wait_accepting(admin);
    // acme: four public requests served, two deletes refused by policy; globex: three served.
    let send = |method: &'static str, path: &'static str, tenant: &'static str| {
        let url = gw.url(path);
        async move {
            client()
                .request(method.parse().unwrap(), url)
                .header("x-tenant", tenant)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for _ in 0..4 {
        assert_eq!(send("GET", "/status", "acme").await, 200);
    }
    for _ in 0..2 {
        assert_eq!(send("DELETE", "/projects/42", "acme").await, 403);
    }
    for _ in 0..3 {
        assert_eq!(send("GET", "/status", "globex").await, 200);
    }
    let mut expected = BTreeMap::new();
    for _ in 0..50 {
        expected = report(admin).await;
        if expected.get("acme").map(|t| t.0) == Some(6)
            && expected.get("globex").map(|t| t.0) == Some(3)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(expected["acme"].0, 6, "{expected:?}");

    // Without a session the console asks for the token; a wrong one is refused.
    let page = client()
        .get(format!("http://{admin}/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Admin token"));
    let wrong = client()
        .post(format!("http://{admin}/console/login"))
        .form(&[("token", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // A person signs in with Chromium.
    let shots = artefacts();
    let _ = std::fs::remove_dir_all(&shots);
    let outcome = gateway_testkit::browser::chromium_fill_form_async(
        format!("http://{admin}/console"),
        vec![("input[name=\"token\"]".into(), TOKEN.into())],
        "button[type=\"submit\"]".into(),
        Some(shots.clone()),
    )
    .await;
    assert_eq!(outcome.status, 200, "{:?}", outcome.steps);
    assert_eq!(outcome.final_url, format!("http://{admin}/console"));
    let cookie = outcome.cookie("gw-console").expect("session cookie");
    assert!(cookie.http_only, "{cookie:?}");
    assert_eq!(cookie.same_site, "Strict");
    assert_ne!(cookie.value, TOKEN);
    // The cookie opens the console until its holder signs out; a copy of it then opens
    // nothing (before, it was one fixed value per admin token, valid for ever).
    let with_cookie = |request: reqwest::RequestBuilder| {
        request.header("cookie", format!("gw-console={}", cookie.value))
    };
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let copy = with_cookie(client().get(format!("http://{admin}/console")))
        .send()
        .await
        .unwrap();
    assert!(!copy.text().await.unwrap().contains("Admin token"));
    let other_sign_in = no_redirects
        .post(format!("http://{admin}/console/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    let other_cookie = other_sign_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string();
    assert_ne!(other_cookie, format!("gw-console={}", cookie.value));
    let signed_out = with_cookie(no_redirects.post(format!("http://{admin}/console/logout")))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status(), 303);
    let copy = with_cookie(client().get(format!("http://{admin}/console")))
        .send()
        .await
        .unwrap();
    assert!(
        copy.text().await.unwrap().contains("Admin token"),
        "signed out"
    );
    let other = client()
        .get(format!("http://{admin}/console"))
        .header("cookie", &other_cookie)
        .send()
        .await
        .unwrap();
    assert!(
        !other.text().await.unwrap().contains("Admin token"),
        "another sign-in stays"
    );
    let html = &outcome.html;
    // Each tenant's requests, rejections and cost as the usage report has them.
    for (tenant, (requests, rejected, cost)) in &expected {
        let row_start = html
            .find(&format!("<tr data-tenant=\"{tenant}\"><td>{tenant}</td>"))
            .unwrap_or_else(|| panic!("no row for {tenant} in {html}"));
        let row = &html[row_start..html[row_start..].find("</tr>").unwrap() + row_start];
        assert!(
            row.contains(&format!("<td class=\"requests\">{requests}</td>")),
            "{tenant}: {row}"
        );
        assert!(
            row.contains(&format!("<td class=\"rejected\">{rejected}</td>")),
            "{tenant}: {row}"
        );
        assert!(
            row.contains(&format!("<td class=\"cost\">{cost}</td>")),
            "{tenant} costs {cost}: {row}"
        );
    }
    // Rejections by reason, the budget, residency, and the latest decisions with policies.
    assert!(
        html.contains("data-tenant=\"acme\" data-reason=\"forbidden\""),
        "{html}"
    );
    assert!(html.contains("data-budget=\"globex/monthly\""), "{html}");
    assert!(
        outcome.body_text.contains("projects:delete"),
        "{}",
        outcome.body_text
    );
    assert!(outcome.body_text.contains("deny"));
    assert!(html.contains("<svg"), "charts");
    let screenshots: Vec<_> = std::fs::read_dir(&shots).unwrap().collect();
    assert!(
        !screenshots.is_empty(),
        "screenshots in {}",
        shots.display()
    );
    eprintln!("console screenshots in {}", shots.display());
}
