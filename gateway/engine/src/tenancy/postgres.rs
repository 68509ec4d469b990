//! Tenants in PostgreSQL: one row per tenant (`id text primary key, doc jsonb`), where `doc` has
//! the same shape as a `[[tenant]]` entry of `tenants.toml`. A trigger sends the id of every
//! changed row on a NOTIFY channel; each gateway replica reads the table at start and then
//! applies the changes it is notified of, without a restart. After a lost connection it reads
//! the whole table again, so a change made while it was away is never missed.
//!
//! Each row is validated on its own against the configuration's tenant rules: a row that is not
//! a valid tenant (unparseable, an unknown tier, limits or host names out of bounds, a quota
//! without Redis) is refused with a log line naming the tenant and the field and counted in
//! `gateway_registry_refused_tenants_total`; every other tenant is served.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::model::{validate_tenant, TenantRules, TenantSpec};
use super::registry::{RegistryError, TenantRegistry};
use super::LiveRegistry;
use crate::db::PostgresConfig;
use crate::db::{self, DbError};

pub fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.len() <= 48
}

/// The NOTIFY channel of a tenants table.
pub fn channel(table: &str) -> String {
    format!("{table}_changed")
}

#[derive(Debug, thiserror::Error)]
pub enum PgRegistryError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("PostgreSQL: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Config(String),
    #[error("tenant row `{id}`: {message}")]
    Row { id: String, message: String },
    #[error(transparent)]
    Invalid(RegistryError),
    #[error("{} invalid tenant(s): {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Registry(Vec<RegistryError>),
}

/// Creates the tenants table and its NOTIFY trigger if missing. Safe to run from many replicas
/// at once (serialised by an advisory lock).
pub async fn migrate(client: &Client, table: &str) -> Result<(), PgRegistryError> {
    if !is_identifier(table) {
        return Err(PgRegistryError::Config(format!(
            "`{table}` is not a valid table name"
        )));
    }
    let sql = db::locked_migration(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (
    id text PRIMARY KEY,
    doc jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (doc->>'id' = id)
);
{}",
        db::row_notify_trigger(table, &channel(table), "COALESCE(NEW.id, OLD.id)")
    ));
    client.batch_execute(&sql).await?;
    Ok(())
}

fn parse_row(
    id: &str,
    doc: serde_json::Value,
    rules: &TenantRules,
) -> Result<TenantSpec, PgRegistryError> {
    let spec: TenantSpec =
        serde_path_to_error::deserialize(doc).map_err(|e| PgRegistryError::Row {
            id: id.to_string(),
            message: format!("{}: {}", e.path(), e.inner()),
        })?;
    if spec.id != id {
        return Err(PgRegistryError::Row {
            id: id.to_string(),
            message: format!("doc.id is `{}`", spec.id),
        });
    }
    if let Some((field, message)) = validate_tenant(&spec, rules).into_iter().next() {
        return Err(PgRegistryError::Invalid(RegistryError::Invalid {
            tenant: spec.id,
            field,
            message,
        }));
    }
    Ok(spec)
}

/// Counts a refused row (its log line says which and why).
fn count_refused() {
    metrics::counter!(crate::telemetry::REGISTRY_REFUSED_TENANTS_TOTAL).increment(1);
}

/// Reads every tenant of the table into a registry of tenants that keep `rules`.
pub async fn load_all(
    client: &Client,
    table: &str,
    rules: &TenantRules,
) -> Result<TenantRegistry, PgRegistryError> {
    // In id order, so every replica keeps the same one of two rows that conflict.
    let rows = client
        .query(&format!("SELECT id, doc FROM {table} ORDER BY id"), &[])
        .await?;
    let mut specs = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get(0);
        match parse_row(&id, row.get(1), rules) {
            Ok(spec) => specs.push(spec),
            // A bad row is reported and skipped; it must not keep every other tenant out.
            Err(e) => {
                count_refused();
                tracing::error!(error = %e, "invalid tenant row skipped; the other tenants are served");
            }
        }
    }
    // A row that conflicts with another (a host, API key or e-mail domain taken) is refused
    // alone: it must not keep every other tenant out, nor a replica from starting.
    let (registry, conflicts) = TenantRegistry::build_skipping(rules.clone(), specs);
    for e in conflicts {
        count_refused();
        tracing::error!(error = %e, "conflicting tenant row skipped; the other tenants are served");
    }
    Ok(registry)
}

/// Reads the tenants named in `ids`: `Some` for present rows, `None` for deleted ones.
async fn load_some(
    client: &Client,
    table: &str,
    ids: &[String],
    rules: &TenantRules,
) -> Result<Vec<(String, Option<TenantSpec>)>, PgRegistryError> {
    let rows = client
        .query(
            &format!("SELECT id, doc FROM {table} WHERE id = ANY($1)"),
            &[&ids],
        )
        .await?;
    let mut found = std::collections::HashMap::new();
    let mut invalid = HashSet::new();
    for row in rows {
        let id: String = row.get(0);
        match parse_row(&id, row.get(1), rules) {
            Ok(spec) => {
                found.insert(id, spec);
            }
            Err(e) => {
                count_refused();
                tracing::error!(error = %e, "ignoring invalid tenant row; the previous version stays");
                invalid.insert(id);
            }
        }
    }
    Ok(ids
        .iter()
        .filter(|id| !invalid.contains(*id))
        .map(|id| (id.clone(), found.remove(id)))
        .collect())
}

/// Connects, migrates if configured, and reads the whole table of tenants that keep `rules` (used at
/// start).
pub async fn initial_load(
    config: &PostgresConfig,
    rules: &TenantRules,
) -> Result<TenantRegistry, PgRegistryError> {
    let client = db::connect_config(config, None).await?;
    if config.migrate {
        migrate(&client, &config.table).await?;
    }
    load_all(&client, &config.table, rules).await
}

/// Follows the table: applies every notified change to the snapshot until shutdown, reconnecting
/// (and re-reading everything) after failures.
pub async fn follow(
    config: PostgresConfig,
    store: Arc<dyn LiveRegistry>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let result = tokio::select! {
            r = follow_once(&config, &*store) => r,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) => {
                metrics::counter!(crate::telemetry::REGISTRY_SYNC_ERRORS_TOTAL).increment(1);
                tracing::warn!(error = %e, retry_in = ?backoff, "tenant registry sync interrupted");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn follow_once(
    config: &PostgresConfig,
    store: &dyn LiveRegistry,
) -> Result<(), PgRegistryError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = db::connect_config(config, Some(tx)).await?;
    client
        .batch_execute(&format!("LISTEN {}", channel(&config.table)))
        .await?;
    // The rules the registry loaded at start was checked against.
    let rules = store.current().tenant_rules().clone();
    // Changes made while we were not listening: read everything once LISTEN is active. Changes
    // applied meanwhile (the admin API applies its writes at once) are newer than this read.
    let mark = store.write_mark();
    let registry = load_all(&client, &config.table, &rules).await?;
    let count = registry.len();
    match store.replace(registry, mark) {
        Ok(()) => tracing::info!(
            tenants = count,
            "tenant registry synchronised from PostgreSQL"
        ),
        Err(e) => tracing::error!(error = %e, "tenant registry refused; the previous one stays"),
    }
    while let Some(first) = rx.recv().await {
        // Apply bursts of changes in one swap.
        let mut ids: HashSet<String> = HashSet::from([first.payload().to_string()]);
        while let Ok(more) = rx.try_recv() {
            ids.insert(more.payload().to_string());
        }
        let ids: Vec<String> = ids.into_iter().collect();
        let changes = load_some(&client, &config.table, &ids, &rules).await?;
        // A burst is applied in one swap; if one change of it is refused, each is applied on
        // its own, so only that one is (a suspension notified with it still applies).
        let single = changes.len() <= 1;
        let batches = match store.apply(changes.clone()) {
            Ok(applied) => Ok(applied),
            Err(e) if single => Err(e),
            Err(_) => Ok(changes
                .into_iter()
                .map(|change| {
                    let id = change.0.clone();
                    store.apply(vec![change]).unwrap_or_else(|e| {
                        metrics::counter!(crate::telemetry::REGISTRY_SYNC_ERRORS_TOTAL)
                            .increment(1);
                        tracing::error!(tenant = %id, error = %e, "tenant change refused; the previous version stays");
                        0
                    })
                })
                .sum()),
        };
        match batches {
            Ok(applied) => {
                metrics::counter!(crate::telemetry::REGISTRY_CHANGES_TOTAL)
                    .increment(applied as u64);
                tracing::info!(tenants = ?ids, "tenant registry updated");
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::REGISTRY_SYNC_ERRORS_TOTAL).increment(1);
                tracing::error!(error = %e, "tenant change refused; the previous version stays");
            }
        }
    }
    Err(PgRegistryError::Config(
        "notification stream ended".to_string(),
    ))
}
