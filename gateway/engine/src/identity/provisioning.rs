//! Just-in-time principal provisioning: the first request of a user from a trusted issuer makes
//! them a known principal of their tenant, recorded durably (a JSON-lines file or a PostgreSQL
//! table) with when, from which issuer and on which request. No restart, no admin step.
//!
//! The request path only checks an in-memory set and hands new principals to a background
//! writer through a bounded channel; a full channel leaves the principal unmarked so a later
//! request records it.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{AuthMethod, Principal};
use crate::db;
use crate::db::PostgresConfig;

/// One provisioned principal, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionedPrincipal {
    pub tenant: String,
    pub principal: String,
    pub issuer: String,
    pub roles: Vec<String>,
    /// RFC 3339.
    pub first_seen: String,
    pub request_id: String,
}

/// The request-path half: remembers who is known and queues newcomers.
pub struct Provisioner {
    /// `tenant \0 principal` of everyone already recorded.
    known: quick_cache::sync::Cache<String, ()>,
    queue: mpsc::Sender<ProvisionedPrincipal>,
}

impl Provisioner {
    pub fn new(known_capacity: u64) -> (Self, mpsc::Receiver<ProvisionedPrincipal>) {
        let (queue, rx) = mpsc::channel(10_000);
        (
            Provisioner {
                known: quick_cache::sync::Cache::new(known_capacity as usize),
                queue,
            },
            rx,
        )
    }

    /// Marks principals already recorded (loaded at start).
    pub fn preload(&self, tenant: &str, principal: &str) {
        self.known.insert(known_key(tenant, principal), ());
    }

    /// Called for every identified request of a provisioning issuer.
    pub fn observe(&self, principal: &Principal, tenant: &str, request_id: &str) {
        let AuthMethod::Jwt { issuer } = &principal.auth else {
            return;
        };
        let key = known_key(tenant, &principal.id);
        if self.known.get(&key).is_some() {
            return;
        }
        let record = ProvisionedPrincipal {
            tenant: tenant.to_string(),
            principal: principal.id.clone(),
            issuer: issuer.clone(),
            roles: principal.roles.clone(),
            first_seen: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            request_id: request_id.to_string(),
        };
        match self.queue.try_send(record) {
            Ok(()) => self.known.insert(key, ()),
            Err(_) => {
                metrics::counter!(crate::telemetry::PROVISIONING_DEFERRED_TOTAL).increment(1);
            }
        }
    }
}

fn known_key(tenant: &str, principal: &str) -> String {
    format!("{tenant}\u{0}{principal}")
}

/// Where provisioned principals are recorded.
#[derive(Debug, Clone)]
pub enum PrincipalStore {
    File(PathBuf),
    Postgres(PostgresConfig),
}

const PRINCIPALS_TABLE: &str = "gateway_principals";

/// The most newcomers listed in the directory in one write.
const LISTING_BATCH: usize = 512;

impl PrincipalStore {
    /// Principals recorded so far, for [`Provisioner::preload`].
    pub async fn load(&self) -> Result<Vec<(String, String)>, String> {
        match self {
            PrincipalStore::File(path) => {
                let file = match std::fs::File::open(path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                };
                let mut out = Vec::new();
                for line in std::io::BufReader::new(file).split(b'\n') {
                    let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
                    // A torn last line after a crash, or a damaged one, is skipped, not fatal.
                    if let Ok(r) = serde_json::from_slice::<ProvisionedPrincipal>(&line) {
                        out.push((r.tenant, r.principal));
                    }
                }
                Ok(out)
            }
            PrincipalStore::Postgres(config) => {
                let client = connect_and_migrate(config).await?;
                let rows = client
                    .query(
                        &format!("SELECT tenant_id, principal_id FROM {PRINCIPALS_TABLE}"),
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
        }
    }

    /// Drains the queue into the store until the queue closes or shutdown.
    /// Each principal recorded is also listed in `directory` (when it has no user of that name
    /// yet), so the tenant's identity provider finds it over SCIM and can deprovision it.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<ProvisionedPrincipal>,
        audit: Option<crate::audit::AuditHandle>,
        directory: Option<std::sync::Arc<super::directory::Directory>>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut recorded: HashSet<(String, String)> = HashSet::new();
        let mut pg: Option<tokio_postgres::Client> = None;
        loop {
            let first = tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                _ = shutdown.changed() => return,
            };
            // Newcomers that arrived together are listed in the directory in one write (one
            // write per principal costs a copy of the directory each).
            let mut batch = vec![first];
            while batch.len() < LISTING_BATCH {
                match rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
            let mut to_list = Vec::new();
            for record in batch {
                let key = (record.tenant.clone(), record.principal.clone());
                if recorded.contains(&key) {
                    continue;
                }
                self.record(&record, &mut pg, audit.as_ref()).await;
                recorded.insert(key.clone());
                to_list.push(key);
            }
            if let Some(directory) = directory.as_ref().filter(|_| !to_list.is_empty()) {
                if let Err(e) = directory.ensure_listed_all(&to_list).await {
                    tracing::warn!(error = %e, principals = to_list.len(), "listing provisioned principals in the directory failed");
                }
            }
        }
    }

    /// Records one principal, retrying until the store takes it, and audits a newcomer.
    async fn record(
        &self,
        record: &ProvisionedPrincipal,
        pg: &mut Option<tokio_postgres::Client>,
        audit: Option<&crate::audit::AuditHandle>,
    ) {
        let mut attempt = 0u32;
        loop {
            match self.write(record, pg).await {
                Ok(new) => {
                    if new {
                        tracing::info!(
                            target: "audit",
                            event = "principal.provisioned",
                            tenant = %record.tenant,
                            principal = %record.principal,
                            issuer = %record.issuer,
                            request_id = %record.request_id,
                            "first-seen principal provisioned"
                        );
                        metrics::counter!(crate::telemetry::PRINCIPALS_PROVISIONED_TOTAL)
                            .increment(1);
                        if let Some(audit) = audit {
                            audit
                                .record(crate::audit::AuditEntry::new(
                                    "principal.provisioned",
                                    serde_json::to_value(record).unwrap_or_default(),
                                ))
                                .await;
                        }
                    }
                    return;
                }
                Err(e) => {
                    *pg = None;
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "recording a provisioned principal failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(25))))
                        .await;
                }
            }
        }
    }

    /// Records one principal; `Ok(true)` when it was not recorded before.
    async fn write(
        &self,
        record: &ProvisionedPrincipal,
        pg: &mut Option<tokio_postgres::Client>,
    ) -> Result<bool, String> {
        match self {
            PrincipalStore::File(path) => {
                let line = serde_json::to_string(record).map_err(|e| e.to_string())?;
                crate::durable::append_line(path, &line)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(true)
            }
            PrincipalStore::Postgres(config) => {
                if pg.is_none() {
                    *pg = Some(connect_and_migrate(config).await?);
                }
                let client = pg.as_ref().ok_or("no connection")?;
                let roles = serde_json::to_value(&record.roles).map_err(|e| e.to_string())?;
                let inserted = client
                    .execute(
                        &format!(
                            "INSERT INTO {PRINCIPALS_TABLE} (tenant_id, principal_id, issuer, roles, first_request_id) \
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, principal_id) DO NOTHING"
                        ),
                        &[&record.tenant, &record.principal, &record.issuer, &roles, &record.request_id],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(inserted == 1)
            }
        }
    }
}

async fn connect_and_migrate(config: &PostgresConfig) -> Result<tokio_postgres::Client, String> {
    let client = db::connect_config(config, None)
        .await
        .map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {PRINCIPALS_TABLE} (
                tenant_id text NOT NULL,
                principal_id text NOT NULL,
                issuer text NOT NULL,
                roles jsonb NOT NULL DEFAULT '[]',
                first_seen timestamptz NOT NULL DEFAULT now(),
                first_request_id text,
                PRIMARY KEY (tenant_id, principal_id)
            )"
        ))
        .await
        .map_err(|e| e.to_string())?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file store reads back what it wrote around a line cut short by a crash and a
    /// damaged one (not UTF-8): both are skipped, neither stops the load nor swallows the
    /// record written after it.
    #[tokio::test]
    async fn the_file_store_loads_around_torn_and_damaged_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("principals.jsonl");
        let store = PrincipalStore::File(path.clone());
        let record = |principal: &str| ProvisionedPrincipal {
            tenant: "acme".into(),
            principal: principal.into(),
            issuer: "https://issuer.example".into(),
            roles: vec!["viewer".into()],
            first_seen: "2026-12-07T10:00:00Z".into(),
            request_id: "r1".into(),
        };
        let mut pg = None;
        store.write(&record("alice"), &mut pg).await.unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"\xff\xfe{}\n{\"tenant\":\"ac");
        std::fs::write(&path, bytes).unwrap();
        store.write(&record("bob"), &mut pg).await.unwrap();
        assert_eq!(
            store.load().await.unwrap(),
            [
                ("acme".into(), "alice".into()),
                ("acme".into(), "bob".into())
            ]
        );
    }
}
