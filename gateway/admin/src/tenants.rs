//! Tenant provisioning through the admin API: create, update, suspend, activate.
//!
//! A change is checked exactly as a registry change would be (ids, hosts, keys, residency,
//! tenant policies), then: with a PostgreSQL registry it is written to the table first (every
//! replica follows through NOTIFY) and applied here at once; with a file registry the file is
//! the source of truth in git, so the API refuses to write (edit the file; it hot-reloads).
//!
//! A document that is not a valid tenant by itself (an unknown tier, limits or host names out of
//! bounds ...) is refused with `400` and an RFC 9457 problem whose `invalid-params` name each
//! field; one that conflicts with the registry (a host or key of another tenant, residency,
//! tenant policies) with `422`. Nothing is written in either case.

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

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

impl TenantWriter {
    pub fn get(&self, store: &SnapshotStore, id: &str) -> AdminResponse {
        match store.load().registry.get(id) {
            Some(spec) => respond(StatusCode::OK, json!(**spec)),
            None => problem(StatusCode::NOT_FOUND, format!("no tenant `{id}`")),
        }
    }

    /// `PUT /admin/tenants/{id}`: the whole tenant document.
    pub async fn put(&self, store: &SnapshotStore, id: &str, body: &[u8]) -> AdminResponse {
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
        let created = store.load().registry.get(id).is_none();
        match self.write(store, spec).await {
            Ok(spec) => {
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                respond(status, json!(spec))
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
                Ok(spec) => respond(StatusCode::OK, json!(spec)),
                Err(response) => response,
            };
        }
        let Some(current) = store.load().registry.get(id).cloned() else {
            return problem(StatusCode::NOT_FOUND, format!("no tenant `{id}`"));
        };
        let mut spec = (*current).clone();
        spec.status = status;
        match self.write(store, spec).await {
            Ok(spec) => respond(StatusCode::OK, json!(spec)),
            Err(response) => response,
        }
    }

    async fn write(
        &self,
        store: &SnapshotStore,
        spec: TenantSpec,
    ) -> Result<TenantSpec, AdminResponse> {
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
        let change = vec![(id.clone(), Some(spec.clone()))];
        if let Err(e) = store.check_tenant_changes(change.clone()) {
            return Err(problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
        let doc = serde_json::to_value(&spec)
            .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let client = connect(pg).await?;
        let sql = format!(
            "INSERT INTO {} (id, doc) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now()",
            pg.table
        );
        client
            .execute(&sql, &[&id, &doc])
            .await
            .map_err(database_trouble)?;
        applied_here(store, spec).map_err(|e| problem(StatusCode::UNPROCESSABLE_ENTITY, e))
    }
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
