//! Tenant provisioning through the admin API: create, update, suspend, activate.
//!
//! A change is checked exactly as a registry change would be (ids, hosts, keys, residency,
//! tenant policies), then: with a PostgreSQL registry it is written to the table first (every
//! replica follows through NOTIFY) and applied here at once — writes of every replica one at a
//! time, each checked also against the tenants of the table that claim the same hosts, sign-in
//! domains or API keys, which this replica may not have heard of yet; with a file registry the file is
//! the source of truth in git, so the API refuses to write (edit the file; it hot-reloads).
//!
//! A document that is not a valid tenant by itself (an unknown tier, limits or host names out of
//! bounds ...) is refused with `400` and an RFC 9457 problem whose `invalid-params` name each
//! field; one that conflicts with the registry (a host or key of another tenant, residency,
//! tenant policies) with `422`. Nothing is written in either case.

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use super::preconditions::Precondition;
use super::{body_response, problem, respond, AdminResponse};
use gateway_engine::db::PostgresConfig;
use gateway_engine::snapshot::SnapshotStore;
use gateway_engine::tenancy::{TenantSpec, TenantStatus};

/// Where provisioned tenants are written.
pub enum TenantWriter {
    /// Tenants come from a file in git: read-only here.
    File,
    Postgres(PostgresConfig),
    /// No `[tenancy]`.
    None,
}

/// A tenant document's entity tag: a hash of the document as the API returns it.
pub fn etag(spec: &TenantSpec) -> String {
    use sha2::Digest as _;
    let json = serde_json::to_vec(spec).unwrap_or_default();
    let digest = sha2::Sha256::digest(&json);
    format!("\"{}\"", hex::encode(digest.get(..16).unwrap_or_default()))
}

/// The tenant document with its `ETag`.
fn tenant_response(status: StatusCode, spec: &TenantSpec) -> AdminResponse {
    let mut response = respond(status, json!(spec));
    if let Ok(tag) = http::HeaderValue::from_str(&etag(spec)) {
        response.headers_mut().insert(http::header::ETAG, tag);
    }
    response
}

impl TenantWriter {
    pub fn get(&self, store: &SnapshotStore, id: &str) -> AdminResponse {
        match store.load().registry.get(id) {
            Some(spec) => tenant_response(StatusCode::OK, spec),
            None => problem(StatusCode::NOT_FOUND, format!("no tenant `{id}`")),
        }
    }

    /// `PUT /admin/tenants/{id}`: the whole tenant document, written if `precondition` holds.
    pub async fn put(
        &self,
        store: &SnapshotStore,
        id: &str,
        body: &[u8],
        precondition: &Precondition,
    ) -> AdminResponse {
        let spec = match parse_document(body) {
            Ok(spec) => spec,
            Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
        };
        if spec.id != id {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("body: id is `{}`, the path names `{id}`", spec.id),
            );
        }
        let issues = store.load().registry.validate(&spec);
        if !issues.is_empty() {
            let tenant = if gateway_engine::tenancy::model::is_valid_tenant_id(id) {
                id
            } else {
                "(invalid id)"
            };
            let fields: Vec<&str> = issues.iter().map(|(f, _)| f.as_str()).collect();
            tracing::warn!(
                tenant,
                ?fields,
                "tenant document refused through the admin API"
            );
            return invalid_document(&issues);
        }
        match self.write(store, spec, precondition).await {
            Ok((spec, created)) => {
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                tenant_response(status, &spec)
            }
            Err(response) => response,
        }
    }

    /// `POST /admin/tenants/{id}/suspend|activate`.
    pub async fn set_status(
        &self,
        store: &SnapshotStore,
        id: &str,
        status: TenantStatus,
    ) -> AdminResponse {
        if let TenantWriter::Postgres(pg) = self {
            return match set_status_in_table(store, pg, id, status).await {
                Ok(spec) => tenant_response(StatusCode::OK, &spec),
                Err(response) => response,
            };
        }
        let Some(current) = store.load().registry.get(id).cloned() else {
            return problem(StatusCode::NOT_FOUND, format!("no tenant `{id}`"));
        };
        let mut spec = (*current).clone();
        spec.status = status;
        match self.write(store, spec, &Precondition::Unconditional).await {
            Ok((spec, _)) => tenant_response(StatusCode::OK, &spec),
            Err(response) => response,
        }
    }

    /// Writes `spec` if `precondition` holds for the stored document; the written document and
    /// whether it is new.
    async fn write(
        &self,
        store: &SnapshotStore,
        spec: TenantSpec,
        precondition: &Precondition,
    ) -> Result<(TenantSpec, bool), AdminResponse> {
        let pg =
            match self {
                TenantWriter::Postgres(pg) => pg,
                TenantWriter::File => return Err(problem(
                    StatusCode::CONFLICT,
                    "the tenant registry is a file kept in git: change it there (it is reloaded \
                     on change); use a PostgreSQL registry to provision through this API",
                )),
                TenantWriter::None => {
                    return Err(problem(StatusCode::CONFLICT, "no [tenancy] configured"))
                }
            };
        let id = spec.id.clone();
        let doc = serde_json::to_value(&spec)
            .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let mut client = connect(pg).await?;
        let transaction = client.transaction().await.map_err(database_trouble)?;
        // One tenant write at a time across replicas (until this transaction ends), and the
        // check made against the table as it is now: this replica's registry may not have
        // heard yet of another replica's write that claims the same host, sign-in domain or
        // API key, and both would be written.
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                &[&format!("gateway tenant writes {}", pg.table)],
            )
            .await
            .map_err(database_trouble)?;
        let stored = transaction
            .query_opt(
                &format!("SELECT doc FROM {} WHERE id = $1", pg.table),
                &[&id],
            )
            .await
            .map_err(database_trouble)?
            .map(|row| serde_json::from_value::<TenantSpec>(row.get(0)))
            .transpose()
            .map_err(|e| {
                problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the stored document of tenant `{id}`: {e}"),
                )
            })?;
        if !precondition.holds(stored.as_ref().map(etag).as_deref()) {
            let now = stored.as_ref().map_or("none".to_string(), etag);
            return Err(problem(
                StatusCode::PRECONDITION_FAILED,
                format!(
                    "tenant `{id}` is not as the request requires ({}; its ETag now: {now}): read it again",
                    precondition.describe()
                ),
            ));
        }
        let created = stored.is_none();
        let mut changes = claiming_the_same(&transaction, &pg.table, &spec).await?;
        changes.push((id.clone(), Some(spec.clone())));
        if let Err(e) = store.check_tenant_changes(changes) {
            return Err(problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
        let sql = format!(
            "INSERT INTO {} (id, doc) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now()",
            pg.table
        );
        transaction
            .execute(&sql, &[&id, &doc])
            .await
            .map_err(database_trouble)?;
        transaction.commit().await.map_err(database_trouble)?;
        applied_here(store, spec)
            .map(|spec| (spec, created))
            .map_err(|e| problem(StatusCode::UNPROCESSABLE_ENTITY, e))
    }
}

/// The other tenants of the table that claim a host, sign-in e-mail domain or API key of
/// `spec`, as changes to check `spec` together with (the table is the registry's truth).
async fn claiming_the_same(
    transaction: &gateway_engine::db::Transaction<'_>,
    table: &str,
    spec: &TenantSpec,
) -> Result<Vec<(String, Option<TenantSpec>)>, AdminResponse> {
    fn lowercased<'a>(values: impl Iterator<Item = &'a String>) -> Vec<String> {
        values.map(|v| v.to_ascii_lowercase()).collect()
    }
    let hosts = lowercased(spec.hosts.iter());
    let domains = lowercased(spec.sso.iter().flat_map(|s| &s.email_domains));
    let keys = lowercased(spec.api_keys.iter().map(|k| &k.sha256));
    if hosts.is_empty() && domains.is_empty() && keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT id, doc FROM {table} WHERE id <> $1 AND ( \
           EXISTS (SELECT 1 FROM jsonb_array_elements_text(COALESCE(doc->'hosts', '[]')) h \
                   WHERE lower(h) = ANY($2)) \
        OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(COALESCE(doc->'sso'->'email_domains', '[]')) d \
                   WHERE lower(d) = ANY($3)) \
        OR EXISTS (SELECT 1 FROM jsonb_array_elements(COALESCE(doc->'api_keys', '[]')) k \
                   WHERE lower(k->>'sha256') = ANY($4)))"
    );
    let rows = transaction
        .query(&sql, &[&spec.id, &hosts, &domains, &keys])
        .await
        .map_err(database_trouble)?;
    let mut claiming = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get(0);
        match serde_json::from_value::<TenantSpec>(row.get(1)) {
            Ok(other) => claiming.push((id, Some(other))),
            Err(e) => {
                return Err(problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the stored document of tenant `{id}`: {e}"),
                ))
            }
        }
    }
    Ok(claiming)
}

/// Suspends or activates `id` in the table itself: the document there is changed in place, not
/// written back whole from this replica's snapshot, which may be behind a `PUT` just made here
/// or on another replica (a new API key, say) that the whole document would undo.
async fn set_status_in_table(
    store: &SnapshotStore,
    pg: &PostgresConfig,
    id: &str,
    status: TenantStatus,
) -> Result<TenantSpec, AdminResponse> {
    let status_text = match status {
        TenantStatus::Active => "active",
        TenantStatus::Suspended => "suspended",
    };
    let client = connect(pg).await?;
    let sql = format!(
        "UPDATE {} SET doc = jsonb_set(doc, '{{status}}', to_jsonb($2::text)), updated_at = now() \
         WHERE id = $1 RETURNING doc",
        pg.table
    );
    let row = client
        .query_opt(&sql, &[&id, &status_text])
        .await
        .map_err(database_trouble)?
        .ok_or_else(|| problem(StatusCode::NOT_FOUND, format!("no tenant `{id}`")))?;
    let spec: TenantSpec = serde_json::from_value(row.get(0)).map_err(|e| {
        problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the stored tenant document: {e}"),
        )
    })?;
    applied_here(store, spec).map_err(|e| problem(StatusCode::UNPROCESSABLE_ENTITY, e))
}

async fn connect(pg: &PostgresConfig) -> Result<gateway_engine::db::Client, AdminResponse> {
    gateway_engine::db::connect_config(pg, None)
        .await
        .map_err(|e| {
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("registry database: {e}"),
            )
        })
}

fn database_trouble(e: gateway_engine::db::PgError) -> AdminResponse {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("registry database: {e}"),
    )
}

/// Makes a tenant written to the table effective on this replica's next request, before the
/// NOTIFY round trip.
/// (`Err`: why this replica refused it, for a `422`.)
fn applied_here(store: &SnapshotStore, spec: TenantSpec) -> Result<TenantSpec, String> {
    let id = spec.id.clone();
    store
        .apply_tenant_changes(vec![(id.clone(), Some(spec.clone()))])
        .map_err(|e| e.to_string())?;
    metrics::counter!(gateway_engine::telemetry::ADMIN_TENANT_WRITES_TOTAL).increment(1);
    tracing::info!(tenant = %id, status = ?spec.status, "tenant provisioned through the admin API");
    Ok(spec)
}

/// The tenant document of a request body: one JSON object and nothing after it (a second
/// document or trailing bytes would otherwise be ignored silently). The error names the field.
fn parse_document(body: &[u8]) -> Result<TenantSpec, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let spec: TenantSpec = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| format!("body: {}: {}", e.path(), e.inner()))?;
    deserializer
        .end()
        .map_err(|e| format!("body: after the tenant document: {e}"))?;
    Ok(spec)
}

/// `400` with an RFC 9457 problem naming each invalid field in `invalid-params` (the extension
/// member of RFC 9457's own example).
fn invalid_document(issues: &[(String, String)]) -> AdminResponse {
    let status = StatusCode::BAD_REQUEST;
    let detail = issues
        .iter()
        .map(|(field, reason)| format!("{field}: {reason}"))
        .collect::<Vec<_>>()
        .join("; ");
    let body = json!({
        "type": format!("{}admin-{}", gateway_engine::pipeline::rejection::PROBLEM_TYPE_PREFIX, status.as_u16()),
        "title": "Invalid tenant document",
        "status": status.as_u16(),
        "detail": detail,
        "invalid-params": issues
            .iter()
            .map(|(field, reason)| json!({"name": field, "reason": reason}))
            .collect::<Vec<_>>(),
    });
    body_response(
        status,
        Bytes::from(body.to_string()),
        "application/problem+json",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Two replicas' views of one PostgreSQL registry, the second not following the first's
    /// notices (the window between a write on one and its NOTIFY on the other): a host, a
    /// sign-in domain or an API key already claimed in the table is refused to another tenant.
    /// Before, each replica checked against its own view only and both documents were
    /// written, two tenants claiming one host.
    /// A registry table of the test database of its own, and its writer.
    async fn registry_table(prefix: &str) -> (TenantWriter, gateway_engine::db::Client, String) {
        let url = std::env::var("GATEWAY_TEST_PG_URL").unwrap_or_else(|_| {
            "postgres://gateway_test:gateway_test@127.0.0.1:5432/gateway_test".to_string()
        });
        let table = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let pg = PostgresConfig {
            url: Some(url),
            url_env: None,
            table: table.clone(),
            migrate: true,
            ca_file: None,
        };
        let client = gateway_engine::db::connect_config(&pg, None).await.unwrap();
        gateway_engine::tenancy::postgres::migrate(&client, &table)
            .await
            .unwrap();
        (TenantWriter::Postgres(pg), client, table)
    }

    async fn drop_registry_table(client: &gateway_engine::db::Client, table: &str) {
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table} CASCADE; DROP FUNCTION IF EXISTS {table}_notify() CASCADE"
            ))
            .await
            .unwrap();
    }

    /// A replica's view of the registry (the test deployment's tenants), following nothing.
    fn replica() -> std::sync::Arc<SnapshotStore> {
        SnapshotStore::new(gateway_engine::test_support::Deployment::load().snapshot)
    }

    async fn body_text(response: AdminResponse) -> String {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn two_replicas_cannot_give_what_one_tenant_claims_to_another() {
        let (writer, client, table) = registry_table("admin_claims").await;
        let (first, second) = (replica(), replica());
        let unconditional = &Precondition::Unconditional;
        let key = "ab".repeat(32);
        let newco = format!(
            r#"{{"id": "newco", "tier": "pro", "hosts": ["shared.example.test"],
                "api_keys": [{{"id": "ci", "sha256": "{key}"}}]}}"#
        );
        let created = writer
            .put(&first, "newco", newco.as_bytes(), unconditional)
            .await;
        assert_eq!(created.status(), StatusCode::CREATED);

        for (claim, named) in [
            (r#""hosts": ["shared.example.test"]"#, "shared.example.test"),
            (
                &format!(
                    r#""api_keys": [{{"id": "ci", "sha256": "{}"}}]"#,
                    key.to_uppercase()
                ),
                "newco",
            ),
        ] {
            let other = format!(r#"{{"id": "otherco", "tier": "pro", {claim}}}"#);
            let refused = writer
                .put(&second, "otherco", other.as_bytes(), unconditional)
                .await;
            let status = refused.status();
            let body = body_text(refused).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{claim}: {body}");
            assert!(body.contains(named), "{claim}: {body}");
        }
        // Claiming nothing of newco's, the second replica writes as before.
        let other = br#"{"id": "otherco", "tier": "pro", "hosts": ["other.example.test"]}"#;
        assert_eq!(
            writer
                .put(&second, "otherco", other, unconditional)
                .await
                .status(),
            StatusCode::CREATED
        );
        let rows = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap();
        assert_eq!(rows.get::<_, i64>(0), 2);
        drop_registry_table(&client, &table).await;
    }

    /// Read-modify-write with `If-Match`: a write over a document changed since it was read
    /// (here on another replica that has not heard of the change) is refused `412` and
    /// writes nothing; `If-None-Match: *` creates only.
    #[tokio::test]
    async fn a_put_with_if_match_writes_only_over_the_document_read() {
        let (writer, client, table) = registry_table("admin_etags").await;
        let (first, second) = (replica(), replica());
        let tag = |response: &AdminResponse| {
            response
                .headers()
                .get(http::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap()
        };
        let create_only = Precondition::NoneMatch(vec!["*".into()]);
        let doc = |hosts: &str| {
            format!(r#"{{"id": "newco", "tier": "pro", "hosts": [{hosts}]}}"#).into_bytes()
        };
        let created = writer
            .put(&first, "newco", &doc(r#""a.example.test""#), &create_only)
            .await;
        assert_eq!(created.status(), StatusCode::CREATED);
        let read = tag(&created);
        assert_eq!(
            tag(&writer.get(&first, "newco")),
            read,
            "GET gives the PUT's tag"
        );
        let again = writer
            .put(&first, "newco", &doc(r#""a.example.test""#), &create_only)
            .await;
        assert_eq!(again.status(), StatusCode::PRECONDITION_FAILED);

        // Two clients read `read`; the first writes, the second's write (on the other
        // replica) is refused, and the stored document is the first's.
        let first_write = writer
            .put(
                &first,
                "newco",
                &doc(r#""a.example.test", "b.example.test""#),
                &Precondition::Match(vec![read.clone()]),
            )
            .await;
        assert_eq!(first_write.status(), StatusCode::OK);
        let written = tag(&first_write);
        assert_ne!(written, read);
        let stale = writer
            .put(
                &second,
                "newco",
                &doc(r#""a.example.test", "c.example.test""#),
                &Precondition::Match(vec![read.clone()]),
            )
            .await;
        assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
        assert!(body_text(stale).await.contains(written.trim_matches('"')));
        let stored: serde_json::Value = client
            .query_one(&format!("SELECT doc FROM {table} WHERE id = 'newco'"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored["hosts"], json!(["a.example.test", "b.example.test"]));
        // The tag now stored is accepted from any replica; `*` from any client.
        let fresh = writer
            .put(
                &second,
                "newco",
                &doc(r#""a.example.test", "c.example.test""#),
                &Precondition::Match(vec!["\"x\"".into(), written]),
            )
            .await;
        assert_eq!(fresh.status(), StatusCode::OK);
        let any = Precondition::Match(vec!["*".into()]);
        let missing = writer
            .put(&first, "nobody", br#"{"id": "nobody"}"#, &any)
            .await;
        assert_eq!(missing.status(), StatusCode::PRECONDITION_FAILED);
        drop_registry_table(&client, &table).await;
    }

    #[test]
    fn a_document_is_one_json_object_and_nothing_else() {
        let spec = parse_document(br#" {"id": "newco", "tier": "pro"} "#).unwrap();
        assert_eq!((spec.id.as_str(), spec.tier.as_str()), ("newco", "pro"));
        // Found by the admin_tenant fuzz target: trailing bytes, or a second document, were
        // ignored and the first document written.
        for body in [
            &b"{\"id\": \"newco\"}\xff\xff"[..],
            br#"{"id": "newco"}{"id": "newco", "status": "suspended"}"#,
            br#"{"id": "newco"} x"#,
        ] {
            let err = parse_document(body).unwrap_err();
            assert!(err.contains("after the tenant document"), "{err}");
        }
        let err = parse_document(br#"{"id": "newco", "limits": {"burst": "x"}}"#).unwrap_err();
        assert!(err.starts_with("body: limits.burst:"), "{err}");
    }
}
