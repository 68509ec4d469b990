//! The entity store's providers behind the real gateway: a PostgreSQL table whose changes reach
//! the gateway's cache by NOTIFY, a record that does not fit the schema, and an HTTP provider
//! that cannot answer (fail closed with 503 `entity-store-unavailable`, or read as absent).

use std::time::Duration;

use crate::common::example::{example_config, example_file, token};
use crate::common::{
    client, eventually, free_addr, free_port, pg_url, unique_table, upstream, TestGateway,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_records_decide_and_their_changes_apply_within_a_second() {
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let table = unique_table("entities");
    let closed = free_port();
    let config = format!(
        r#"{}
[[authorization.entity_store]]
types = ["Project"]
kind = "postgres"
postgres = {{ url = "{}", table = "{table}" }}
ttl = "10m"

[[authorization.entity_store]]
types = ["Report"]
kind = "http"
url = "http://127.0.0.1:{closed}/entities"
timeout = "200ms"

[[authorization.entity_store]]
types = ["Member"]
kind = "http"
url = "http://127.0.0.1:{closed}/entities"
on_error = "absent"
"#,
        example_config(free_addr(), eu.addr, us.addr),
        pg_url()
    );
    let gw = TestGateway::start(
        &config,
        &[
            ("demo-issuer.secret", &example_file("demo-issuer.secret")),
            ("demo-admin.token", &example_file("demo-admin.token")),
            ("tenants.toml", &example_file("tenants.toml")),
        ],
    );
    let (db, connection) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let alice = format!(
        "Bearer {}",
        token("alice", Some("acme"), &["viewer".to_string()], false)
    );
    let http = client();
    let get = |path: &str| {
        let request = http.get(gw.url(path)).header("authorization", &alice);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    };
    let tenant_of = |tenant: &str| serde_json::json!({"tenant": {"__entity": {"type": "Tenant", "id": tenant}}});
    // The gateway created the table (migrate) at start.
    db.execute(
        &format!(
            "INSERT INTO {table} (entity_type, entity_id, attrs) VALUES ('Project', 'p7', $1)"
        ),
        &[&tenant_of("globex")],
    )
    .await
    .unwrap();

    let (status, body) = get("/projects/p7").await;
    assert_eq!(status, 403, "globex's project from acme: {body}");
    assert!(body.contains("belongs to another tenant"), "{body}");
    // A project the table does not know: decided by role, in the request's tenant.
    assert_eq!(get("/projects/42").await.0, 200);

    // The record moves to acme: NOTIFY empties the cached answer (the TTL is ten minutes).
    db.execute(
        &format!("UPDATE {table} SET attrs = $1 WHERE entity_id = 'p7'"),
        &[&tenant_of("acme")],
    )
    .await
    .unwrap();
    let took = eventually(Duration::from_secs(5), || async {
        get("/projects/p7").await.0 == 200
    })
    .await;
    let took = took.unwrap_or_else(|| panic!("the change did not reach the gateway: {}", gw.log()));
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // A record that does not fit the schema is the store failing, not a decision on half data.
    db.execute(
        &format!("UPDATE {table} SET attrs = '{{\"tenant\": \"acme\"}}' WHERE entity_id = 'p7'"),
        &[],
    )
    .await
    .unwrap();
    let refused = eventually(Duration::from_secs(5), || async {
        let (status, body) = get("/projects/p7").await;
        status == 503 && body.contains("entity-store-unavailable")
    })
    .await;
    assert!(refused.is_some(), "a malformed record must fail closed");

    // An HTTP provider that cannot be reached: 503 by default, absent when configured so.
    let (status, body) = get("/reports/9").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("entity-store-unavailable"), "{body}");
    let (status, body) = get("/members/9").await;
    assert_eq!(
        status, 200,
        "on_error = absent decides without the record: {body}"
    );

    db.execute(&format!("DROP TABLE {table} CASCADE"), &[])
        .await
        .unwrap();
    db.execute(
        &format!("DROP FUNCTION IF EXISTS {table}_entity_notify() CASCADE"),
        &[],
    )
    .await
    .ok();
    db.execute(
        &format!("DROP FUNCTION IF EXISTS {table}_entity_trunc() CASCADE"),
        &[],
    )
    .await
    .ok();
}
