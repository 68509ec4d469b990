//! Row-Level Security hand-off (deploy/examples/rls): an unchanged app whose queries name no
//! tenant (gateway/examples/rls_upstream.rs) behind the real gateway with the example
//! deployment's configuration, on the real PostgreSQL with the example's schema and policies.
//! Each test works in a schema of its own, dropped at the end.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;

use crate::common::example::{example_config, example_file, repo, token};
use crate::common::{client, free_addr, pg_url, unique_table, TestGateway};

// The example app, compiled into the tests (its `main` is unused here).
#[allow(dead_code)]
#[path = "../../examples/rls_upstream.rs"]
mod rls_upstream;

use rls_upstream::{App, ContextVerifier, Document};

const ACME_DOCS: [i64; 3] = [1, 2, 3];
const GLOBEX_DOCS: [i64; 2] = [101, 102];

/// A schema of this test's own holding the example's tables, policies and rows of two tenants.
struct Schema {
    name: String,
    /// Connection URL whose sessions use the schema.
    url: String,
}

impl Schema {
    async fn create() -> Schema {
        let name = unique_table("rls");
        let admin = connect(&pg_url()).await;
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        let separator = if pg_url().contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}options=-c%20search_path%3D{name}", pg_url());
        let mut owner = connect(&url).await;
        owner.batch_execute(&schema_sql()).await.unwrap();
        // Rows are written as the app would: each tenant's in a transaction naming it, the
        // tenant column filled from the setting (its default).
        for (tenant, docs) in [("acme", &ACME_DOCS[..]), ("globex", &GLOBEX_DOCS[..])] {
            let mut inserts =
                String::from("INSERT INTO projects (id, name) VALUES (7, 'Roadmap');");
            for id in docs {
                inserts.push_str(&format!(
                    "INSERT INTO documents (id, project_id, owner, title, body) \
                     VALUES ({id}, 7, 'user-{id}', 'Document {id}', 'Body of {id}');"
                ));
            }
            let tx = as_tenant(&mut owner, tenant).await;
            tx.batch_execute(&inserts).await.unwrap();
            tx.commit().await.unwrap();
        }
        Schema { name, url }
    }

    async fn drop(self) {
        let admin = connect(&pg_url()).await;
        admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .unwrap();
    }
}

fn schema_sql() -> String {
    std::fs::read_to_string(repo().join("deploy/examples/rls/schema.sql")).unwrap()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    gateway::db::connect(url, None)
        .await
        .expect("PostgreSQL must be running (scripts/ensure-deps test starts it)")
}

/// The example app on a loopback port, serving until the test ends.
async fn start_app(schema: &Schema, verifier: Option<ContextVerifier>) -> SocketAddr {
    let app = Arc::new(App::connect(&schema.url, 4, verifier).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(rls_upstream::serve(listener, app));
    addr
}

/// The example deployment (deploy/examples/gateway.toml) with both regional pools (acme is
/// served from eu-central, globex from us-east) on the app, and `extra` appended.
fn start_gateway(app: SocketAddr, extra: &str, files: &[(&str, &[u8])]) -> TestGateway {
    let config = example_config(free_addr(), app, app);
    let mut all: Vec<(&str, Vec<u8>)> = vec![
        ("demo-issuer.secret", example_file("demo-issuer.secret")),
        ("demo-admin.token", example_file("demo-admin.token")),
        ("tenants.toml", example_file("tenants.toml")),
    ];
    all.extend(files.iter().map(|(n, c)| (*n, c.to_vec())));
    let all: Vec<(&str, &[u8])> = all.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    TestGateway::start(&format!("{config}\n{extra}"), &all)
}

fn bearer(user: &str, tenant: &str) -> String {
    format!(
        "Bearer {}",
        token(user, Some(tenant), &["editor".to_string()], false)
    )
}

async fn send(
    method: reqwest::Method,
    url: String,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let mut req = client().request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn list_ids(url: String, headers: &[(&str, &str)]) -> BTreeSet<i64> {
    let (status, body) = send(reqwest::Method::GET, url, headers, None).await;
    assert_eq!(status, 200, "{body}");
    let docs: Vec<Document> = serde_json::from_str(&body).unwrap();
    docs.iter().map(|d| d.id).collect()
}

fn assert_refused_by_policy(err: &tokio_postgres::Error) {
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(
        message.contains("violates row-level security policy"),
        "{err:?}"
    );
}

fn ids(list: &[i64]) -> BTreeSet<i64> {
    list.iter().copied().collect()
}

/// A transaction that names `tenant`, as the app opens one per request.
async fn as_tenant<'a>(
    db: &'a mut tokio_postgres::Client,
    tenant: &str,
) -> tokio_postgres::Transaction<'a> {
    let tx = db.transaction().await.unwrap();
    tx.execute("SELECT set_config('app.tenant_id', $1, true)", &[&tenant])
        .await
        .unwrap();
    tx
}

/// The documents a transaction naming `tenant` sees.
async fn documents_seen_by(db: &mut tokio_postgres::Client, tenant: &str) -> i64 {
    let tx = as_tenant(db, tenant).await;
    let n = tx
        .query_one("SELECT count(*) FROM documents", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tenant_sees_only_its_rows_through_the_gateway() {
    let schema = Schema::create().await;
    let app = start_app(&schema, None).await;
    let gw = start_gateway(app, "", &[]);
    let acme = bearer("erin", "acme");
    let globex = bearer("carol", "globex");
    let auth = |b: &str| ("authorization", b.to_string());
    let (acme_h, globex_h) = (auth(&acme), auth(&globex));
    let acme_h = [(acme_h.0, acme_h.1.as_str())];
    let globex_h = [(globex_h.0, globex_h.1.as_str())];

    assert_eq!(
        list_ids(gw.url("/documents"), &acme_h).await,
        ids(&ACME_DOCS)
    );
    assert_eq!(
        list_ids(gw.url("/documents"), &globex_h).await,
        ids(&GLOBEX_DOCS)
    );

    // One of acme's own documents; globex's document by its id is not there for acme.
    let (status, body) = send(reqwest::Method::GET, gw.url("/documents/2"), &acme_h, None).await;
    assert_eq!(status, 200, "{body}");
    let doc: Document = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (doc.id, doc.title.as_str(), doc.body.as_deref()),
        (2, "Document 2", Some("Body of 2"))
    );
    let (status, body) = send(
        reqwest::Method::GET,
        gw.url("/documents/101"),
        &acme_h,
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!({"error": "no such document"}),
        "the app's answer, not the gateway's"
    );

    // Writes: acme updates its own document, and cannot touch globex's.
    let update = json!({"title": "Renamed", "body": "New body"});
    let (status, body) = send(
        reqwest::Method::PUT,
        gw.url("/documents/1"),
        &acme_h,
        Some(update.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let doc: Document = serde_json::from_str(&body).unwrap();
    assert_eq!((doc.id, doc.title.as_str()), (1, "Renamed"));
    let (status, body) = send(
        reqwest::Method::PUT,
        gw.url("/documents/101"),
        &acme_h,
        Some(update),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = send(
        reqwest::Method::GET,
        gw.url("/documents/101"),
        &globex_h,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let doc: Document = serde_json::from_str(&body).unwrap();
    assert_eq!(doc.title, "Document 101", "globex's document unchanged");

    // A client naming another tenant in the gateway's header: stripped, the verified tenant
    // is forwarded instead.
    let spoofing = [acme_h[0], ("x-tenant-id", "globex")];
    assert_eq!(
        list_ids(gw.url("/documents"), &spoofing).await,
        ids(&ACME_DOCS)
    );
    let (status, body) = send(
        reqwest::Method::GET,
        gw.url("/documents/101"),
        &spoofing,
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");

    // The app itself refuses a request that names no tenant.
    let (status, body) = send(
        reqwest::Method::GET,
        format!("http://{app}/documents"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");

    drop(gw);
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_that_names_no_tenant_sees_no_rows() {
    let schema = Schema::create().await;
    let mut db = connect(&schema.url).await;

    // The policies bind this role although it owns the tables (FORCE), and it has no way
    // around them.
    let row = db
        .query_one(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, bool>(1)),
        (false, false)
    );
    for table in ["documents", "projects"] {
        let row = db
            .query_one(
                "SELECT relrowsecurity, relforcerowsecurity FROM pg_class \
                 WHERE oid = to_regclass($1)",
                &[&table],
            )
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, bool>(0), row.get::<_, bool>(1)),
            (true, true),
            "{table}"
        );
    }

    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    // Never set in this session: NULL.
    assert_eq!(count("SELECT count(*) FROM documents").await, 0);
    assert_eq!(count("SELECT count(*) FROM projects").await, 0);

    assert_eq!(
        documents_seen_by(&mut db, "acme").await,
        ACME_DOCS.len() as i64
    );

    // After a transaction that named a tenant, the session's setting is '' (not NULL): a pooled
    // connection's next transaction that forgets to name one still sees nothing.
    let setting: Option<String> = db
        .query_one("SELECT current_setting('app.tenant_id', true)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting.as_deref(), Some(""));
    let tx = db.transaction().await.unwrap();
    let n: i64 = tx
        .query_one("SELECT count(*) FROM documents", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // …and cannot write either.
    let err = tx
        .execute(
            "INSERT INTO documents (tenant_id, id, owner, title) VALUES ('acme', 9, 'x', 'x')",
            &[],
        )
        .await
        .unwrap_err();
    assert_refused_by_policy(&err);
    tx.rollback().await.unwrap();

    // Naming one tenant and writing another's row is refused.
    let tx = as_tenant(&mut db, "acme").await;
    let err = tx
        .execute(
            "INSERT INTO documents (tenant_id, id, owner, title) VALUES ('globex', 9, 'x', 'x')",
            &[],
        )
        .await
        .unwrap_err();
    assert_refused_by_policy(&err);
    tx.rollback().await.unwrap();

    // The schema file can be run again.
    db.batch_execute(&schema_sql()).await.unwrap();
    assert_eq!(
        documents_seen_by(&mut db, "globex").await,
        GLOBEX_DOCS.len() as i64
    );

    drop(db);
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_verifying_the_context_token_serves_only_the_gateway() {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let private_pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let public_pem = secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();

    let schema = Schema::create().await;
    let verifier =
        ContextVerifier::es256(public_pem.as_bytes(), "policy-gateway", "documents-app").unwrap();
    let app = start_app(&schema, Some(verifier)).await;
    let gw = start_gateway(
        app,
        "[identity.context_token]\nkey = \"context.pem\"\nalgorithm = \"ES256\"\n\
         audience = \"documents-app\"\nttl = \"60s\"\n",
        &[("context.pem", private_pem.as_bytes())],
    );
    let acme = bearer("erin", "acme");
    assert_eq!(
        list_ids(gw.url("/documents"), &[("authorization", &acme)]).await,
        ids(&ACME_DOCS)
    );

    // Straight to the app's port, bypassing the gateway: a tenant header alone is refused, and
    // so is a token of the right key that names another tenant.
    let direct = format!("http://{app}/documents");
    let (status, body) = send(
        reqwest::Method::GET,
        direct.clone(),
        &[("x-tenant-id", "globex")],
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed_for = |tenant: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &json!({"iss": "policy-gateway", "aud": "documents-app", "sub": "erin",
                    "iat": now, "exp": now + 60, "tenant": tenant, "roles": [], "auth": "jwt"}),
            &jsonwebtoken::EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let acme_token = signed_for("acme");
    let (status, body) = send(
        reqwest::Method::GET,
        direct.clone(),
        &[
            ("x-tenant-id", "globex"),
            ("x-gateway-context", &acme_token),
        ],
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // The same token with its own tenant is what the gateway sends: accepted.
    assert_eq!(
        list_ids(
            direct,
            &[("x-tenant-id", "acme"), ("x-gateway-context", &acme_token)]
        )
        .await,
        ids(&ACME_DOCS)
    );

    drop(gw);
    schema.drop().await;
}
