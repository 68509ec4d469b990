//! The tenant registry in the real PostgreSQL: read at start, followed through LISTEN/NOTIFY by a
//! running gateway (no restart), resynchronised after a lost connection, 100,000 tenants.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::common;
use std::time::Duration;

use crate::common::{client, config_for, eventually, pg_url, unique_table, upstream, TestGateway};
use gateway::example_upstream::Echo;

async fn pg() -> tokio_postgres::Client {
    gateway::db::connect(&pg_url(), None)
        .await
        .expect("PostgreSQL must be running (scripts/ensure-deps test starts it)")
}

fn tenancy_config(table: &str, extra: &str) -> String {
    format!(
        r#"
[tenancy]
sources = ["header", "credential"]

[tenancy.registry.postgres]
url = "{url}"
table = "{table}"
{extra}
"#,
        url = pg_url()
    )
}

async fn status_for(gw: &TestGateway, tenant: &str) -> u16 {
    client()
        .get(gw.url("/"))
        .header("x-tenant", tenant)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn upsert(db: &tokio_postgres::Client, table: &str, doc: serde_json::Value) {
    let id = doc["id"].as_str().unwrap().to_string();
    db.execute(
        &format!("INSERT INTO {table} (id, doc) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now()"),
        &[&id, &doc],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_in_postgres_reach_a_running_gateway_without_restart() {
    let db = pg().await;
    let table = unique_table("gw_tenants");
    gateway::tenancy::postgres::migrate(&db, &table)
        .await
        .unwrap();
    upsert(
        &db,
        &table,
        serde_json::json!({"id": "acme", "tier": "pro"}),
    )
    .await;
    let up = upstream("app").await;
    let gw = TestGateway::start(&config_for(&[up.addr], &tenancy_config(&table, "")), &[]);

    assert_eq!(status_for(&gw, "acme").await, 200);
    assert_eq!(status_for(&gw, "neo").await, 404);

    // Signup: a new tenant row is served within a second.
    upsert(
        &db,
        &table,
        serde_json::json!({"id": "neo", "tier": "free"}),
    )
    .await;
    let took = eventually(Duration::from_secs(5), || async {
        status_for(&gw, "neo").await == 200
    })
    .await
    .expect("new tenant not served");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let res = client()
        .get(gw.url("/"))
        .header("x-tenant", "neo")
        .send()
        .await
        .unwrap();
    let echo: Echo = res.json().await.unwrap();
    assert_eq!(echo.headers["x-tenant-id"], vec!["neo"]);

    // Suspension takes effect without restart.
    upsert(
        &db,
        &table,
        serde_json::json!({"id": "neo", "status": "suspended"}),
    )
    .await;
    eventually(Duration::from_secs(5), || async {
        status_for(&gw, "neo").await == 403
    })
    .await
    .expect("suspension not applied");

    // An invalid document is refused by the gateway; the previous version keeps serving.
    db.execute(
        &format!("UPDATE {table} SET doc = '{{\"id\": \"acme\", \"tier\": 5}}' WHERE id = 'acme'"),
        &[],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_for(&gw, "acme").await, 200);
    assert!(
        gw.settled_log().contains("invalid tenant row"),
        "{}",
        gw.log()
    );

    // Deletion.
    db.execute(&format!("DELETE FROM {table} WHERE id = 'neo'"), &[])
        .await
        .unwrap();
    eventually(Duration::from_secs(5), || async {
        status_for(&gw, "neo").await == 404
    })
    .await
    .expect("deletion not applied");

    // The gateway's connection is killed; a change made while it reconnects is not lost.
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'policy-gateway' AND query LIKE '%' || $1 || '%'",
        &[&table],
    )
    .await
    .unwrap();
    upsert(&db, &table, serde_json::json!({"id": "after-outage"})).await;
    eventually(Duration::from_secs(10), || async {
        status_for(&gw, "after-outage").await == 200
    })
    .await
    .expect("change during reconnect lost");

    assert_eq!(up.served() as usize, up.served() as usize);
    db.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_serves_100k_tenants_from_postgres() {
    let db = pg().await;
    let table = unique_table("gw_tenants");
    gateway::tenancy::postgres::migrate(&db, &table)
        .await
        .unwrap();
    db.execute(
        &format!(
            "INSERT INTO {table} (id, doc) SELECT 'tenant-' || g, jsonb_build_object('id', 'tenant-' || g, 'tier', \
             CASE WHEN g % 10 = 0 THEN 'pro' ELSE 'free' END, 'home_region', 'eu-central') FROM generate_series(1, 100000) g"
        ),
        &[],
    )
    .await
    .unwrap();
    let up = upstream("app").await;
    let gw = TestGateway::start(&config_for(&[up.addr], &tenancy_config(&table, "")), &[]);
    for id in ["tenant-1", "tenant-50000", "tenant-100000"] {
        assert_eq!(status_for(&gw, id).await, 200, "{id}");
    }
    assert_eq!(status_for(&gw, "tenant-100001").await, 404);
    assert!(gw.settled_log().contains("tenants=100000"), "{}", gw.log());
    db.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn principals_are_provisioned_into_postgres() {
    let db = pg().await;
    let table = unique_table("gw_tenants");
    gateway::tenancy::postgres::migrate(&db, &table)
        .await
        .unwrap();
    upsert(&db, &table, serde_json::json!({"id": "acme"})).await;
    let secret = "an-hmac-secret-of-at-least-32-bytes!!";
    let issuer = format!("https://idp.{table}.test");
    let identity = format!(
        r#"
[identity]
provisioning = {{ store = "postgres" }}

[[identity.issuer]]
issuer = "{issuer}"
audiences = ["gateway"]
algorithms = ["HS256"]
secret_file = "hs.secret"
claims = {{ tenant = "org" }}
"#
    );
    let up = upstream("app").await;
    let gw = TestGateway::start(
        &config_for(
            &[up.addr],
            &format!("{identity}{}", tenancy_config(&table, "")),
        ),
        &[("hs.secret", secret.as_bytes())],
    );
    let user = format!("user-{table}");
    let claims = serde_json::json!({
        "iss": issuer, "aud": "gateway", "sub": user, "org": "acme",
        "exp": crate::common::idp::now() + 300,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    for _ in 0..3 {
        let res = client()
            .get(gw.url("/"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let found = eventually(Duration::from_secs(5), || async {
        db.query_one(
            "SELECT count(*) FROM gateway_principals WHERE tenant_id = 'acme' AND principal_id = $1",
            &[&user],
        )
        .await
        .map(|r| r.get::<_, i64>(0) == 1)
        .unwrap_or(false)
    })
    .await;
    assert!(found.is_some(), "principal not provisioned:\n{}", gw.log());
    db.execute(
        "DELETE FROM gateway_principals WHERE principal_id = $1",
        &[&user],
    )
    .await
    .unwrap();
    db.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}

/// Rows that are not valid tenants (an unknown tier, limits out of range, an overlong host)
/// are refused one by one, with a log line naming tenant and field and a metric; every other
/// tenant is served, at start and as rows change (issue 14.3).
#[tokio::test(flavor = "multi_thread")]
async fn invalid_rows_are_refused_alone_and_the_rest_served() {
    const TOKEN: &str = "admin-token-for-the-tests-0123456789abcdef";
    let db = pg().await;
    let table = unique_table("gw_tenants");
    gateway::tenancy::postgres::migrate(&db, &table)
        .await
        .unwrap();
    for doc in [
        serde_json::json!({"id": "acme", "tier": "pro"}),
        serde_json::json!({"id": "plat", "tier": "platinum"}),
        serde_json::json!({"id": "slow", "limits": {"requests_per_second": 1e-30}}),
        serde_json::json!({"id": "longhost", "hosts": ["h".repeat(100_000)]}),
        // Two rows claiming one host: the first in id order keeps it, the other is refused
        // alone (it stopped every replica from starting).
        serde_json::json!({"id": "alpha", "hosts": ["shared.example"]}),
        serde_json::json!({"id": "beta", "hosts": ["shared.example"]}),
    ] {
        upsert(&db, &table, doc).await;
    }
    let up = upstream("app").await;
    let admin_addr = common::free_addr();
    let extra = format!(
        "[tiers.free]\nrequests_per_second = 50\nburst = 100\n\
         [tiers.pro]\nrequests_per_second = 500\nburst = 1000\n\
         [admin]\nlisten = \"{admin_addr}\"\ntoken_file = \"admin.token\"\n"
    );
    let mut gw = TestGateway::start(
        &config_for(&[up.addr], &tenancy_config(&table, &extra)),
        &[("admin.token", TOKEN.as_bytes())],
    );
    gw.wait_accepting(admin_addr);
    assert_eq!(status_for(&gw, "acme").await, 200, "{}", gw.log());
    assert_eq!(status_for(&gw, "alpha").await, 200, "{}", gw.log());
    for id in ["plat", "slow", "longhost", "beta"] {
        assert_eq!(status_for(&gw, id).await, 404, "{id}: {}", gw.log());
    }
    let log = gw.settled_log();
    for needle in [
        "tenant `plat`: tier: unknown tier `platinum`",
        "tenant `slow`: limits.requests_per_second",
        "tenant `longhost`: hosts[0]",
    ] {
        assert!(log.contains(needle), "`{needle}` missing from:\n{log}");
    }

    // Followed changes: a new row with an unknown tier is refused, a valid one served.
    upsert(
        &db,
        &table,
        serde_json::json!({"id": "late", "tier": "platinum"}),
    )
    .await;
    upsert(
        &db,
        &table,
        serde_json::json!({"id": "neo", "tier": "free"}),
    )
    .await;
    eventually(Duration::from_secs(5), || async {
        status_for(&gw, "neo").await == 200
    })
    .await
    .expect("valid tenant not served");
    assert_eq!(status_for(&gw, "late").await, 404);
    // One commit, two changes notified together: the conflicting one is refused alone.
    let (gamma, delta) = (
        serde_json::json!({"id": "gamma", "hosts": ["shared.example"]}),
        serde_json::json!({"id": "delta", "tier": "free"}),
    );
    db.batch_execute(&format!(
        "BEGIN; INSERT INTO {table} (id, doc) VALUES ('gamma', '{gamma}'), ('delta', '{delta}'); COMMIT"
    ))
    .await
    .unwrap();
    eventually(Duration::from_secs(5), || async {
        status_for(&gw, "delta").await == 200
    })
    .await
    .expect("the valid change of a burst with a conflicting one was not applied");
    assert_eq!(status_for(&gw, "gamma").await, 404);
    assert_eq!(status_for(&gw, "alpha").await, 200);
    assert!(
        gw.log()
            .contains("tenant `late`: tier: unknown tier `platinum`"),
        "{}",
        gw.log()
    );
    let metrics = client()
        .get(format!("http://{admin_addr}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused: f64 = metrics
        .lines()
        .find(|l| l.starts_with("gateway_registry_refused_tenants_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(refused >= 4.0, "{metrics}");
    db.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}
