//! The hot-reloadable state every request reads: built completely off the request path, then
//! swapped in atomically (`arc-swap`), so a request sees either the old or the new state whole.
//! Parts are shared between snapshots, so changing the tenant registry does not rebuild policies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::authz::AuthzEngine;
use crate::config::LoadedConfig;
use crate::diagnostics::{SourceIssue, SourceIssues};
use crate::identity::IdentityPolicy;
use crate::pipeline::forward::ContextSigner;
use crate::pipeline::identify;
use crate::pipeline::sanitize::SanitizePolicy;
use crate::pipeline::tenant::TenancyPolicy;
use crate::residency::ResidencyPolicy;
use crate::tenancy::registry::RegistryError;
use crate::tenancy::{TenantRegistry, TenantSpec};

/// Everything the pipeline stages read per request.
#[derive(Clone)]
pub struct Snapshot {
    pub sanitize: Arc<SanitizePolicy>,
    pub identity: Option<Arc<IdentityPolicy>>,
    pub tenancy: Option<Arc<TenancyPolicy>>,
    pub registry: Arc<TenantRegistry>,
    pub authz: Option<Arc<AuthzEngine>>,
    pub residency: Option<Arc<ResidencyPolicy>>,
    /// Number of upstream pools (stage 5 plans over their indexes).
    pub pool_count: usize,
    pub context_signer: Option<Arc<ContextSigner>>,
    /// Changes whenever something a verified token depends on changes (issuers, API keys), so
    /// cached verifications from before are not trusted.
    pub identity_generation: u64,
    /// `[metering.pricing]`: what usage costs (reports, budgets).
    pub prices: Option<Arc<crate::metering::pricing::PriceList>>,
}

impl Snapshot {
    /// The largest body any route accepts, `server_max` (`[server] max_body_bytes`) at least: a
    /// `Content-Length` above it is refused before admission, so it spends no budget.
    pub fn largest_body_limit(&self, server_max: u64) -> u64 {
        self.authz
            .as_ref()
            .and_then(|a| a.routes.largest_body_limit())
            .map_or(server_max, |l| l.max(server_max))
    }

    /// Builds a snapshot from a validated configuration and a loaded registry.
    pub fn build(
        loaded: &LoadedConfig,
        registry: TenantRegistry,
    ) -> Result<Snapshot, SourceIssues> {
        let config = &loaded.config;
        let issue =
            |field: &str, message: String| SourceIssues(vec![loaded.source.issue(field, message)]);
        let identity = match &config.identity {
            Some(identity) => Some(Arc::new(
                identify::compile(identity, &loaded.source).map_err(|e| issue("identity", e))?,
            )),
            None => None,
        };
        let context_signer = match config
            .identity
            .as_ref()
            .and_then(|i| i.context_token.as_ref())
        {
            Some(ctx) => Some(Arc::new(
                ContextSigner::new(ctx, &loaded.resolve(&ctx.key))
                    .map_err(|e| issue("identity.context_token", e))?,
            )),
            None => None,
        };
        let authz = match &config.authorization {
            Some(a) => Some(Arc::new(
                AuthzEngine::load(
                    &loaded.resolve(&a.policies),
                    &registry,
                    a.decision_cache_capacity,
                )
                .map_err(|e| e.or_on_field(&loaded.source, "authorization.policies"))?,
            )),
            None => None,
        };
        // Claims mapped to user attributes must fit the schema (declared, optional, a type a
        // claim can have), so that a typo fails the load rather than every decision.
        if let (Some(engine), Some(identity)) = (&authz, &config.identity) {
            let issues: Vec<_> = identity
                .issuer
                .iter()
                .enumerate()
                .flat_map(|(i, issuer)| {
                    issuer.claims.attributes.keys().filter_map(move |name| {
                        crate::authz::check_claim_attribute(engine.shapes(), name)
                            .err()
                            .map(|e| {
                                loaded.source.issue(
                                    format!("identity.issuer[{i}].claims.attributes.{name}"),
                                    e,
                                )
                            })
                    })
                })
                .collect();
            if !issues.is_empty() {
                return Err(SourceIssues(issues));
            }
        }
        // A file registry is small and part of the deployment: check its tenants' policies now
        // (a PostgreSQL registry's are checked as they are written, and on first use).
        if let (Some(engine), Some(_)) = (
            &authz,
            config
                .tenancy
                .as_ref()
                .and_then(|t| t.registry.file.as_ref()),
        ) {
            let mut issues = Vec::new();
            for tenant in registry.tenants().filter(|t| t.policies.is_some()) {
                if let Err(mut e) =
                    engine.check_tenant_policies(&tenant.id, tenant.policies.as_deref())
                {
                    issues.append(&mut e.0);
                }
            }
            if !issues.is_empty() {
                return Err(SourceIssues(issues));
            }
        }
        let residency = loaded.residency_policy()?.map(Arc::new);
        if let (Some(policy), Some(_)) = (
            &residency,
            config
                .tenancy
                .as_ref()
                .and_then(|t| t.registry.file.as_ref()),
        ) {
            let errors = policy.check_registry(registry.tenants().map(|t| &**t));
            if !errors.is_empty() {
                return Err(SourceIssues(
                    errors
                        .into_iter()
                        .map(|e| loaded.source.issue("tenancy.registry.file", e))
                        .collect(),
                ));
            }
        }
        let prices = match config.metering.as_ref().and_then(|m| m.pricing.as_ref()) {
            Some(pricing) => Some(Arc::new(
                crate::metering::pricing::PriceList::new(pricing)
                    .map_err(|e| issue("metering.pricing", e))?,
            )),
            None => None,
        };
        let shared_counters = config
            .limits
            .as_ref()
            .is_some_and(|l| l.backend == crate::limits::Backend::Redis);
        let budget_problems: Vec<String> = registry
            .tenants()
            .flat_map(|t| {
                crate::metering::budgets::check_against_config(
                    t,
                    config.metering.is_some(),
                    prices.as_deref(),
                    shared_counters,
                )
            })
            .collect();
        if !budget_problems.is_empty() {
            let field = if config
                .tenancy
                .as_ref()
                .is_some_and(|t| t.registry.file.is_some())
            {
                "tenancy.registry.file"
            } else {
                "tenancy.registry"
            };
            return Err(SourceIssues(
                budget_problems
                    .into_iter()
                    .map(|e| loaded.source.issue(field, e))
                    .collect(),
            ));
        }
        Ok(Snapshot {
            residency,
            prices,
            pool_count: config.upstream.pool.len(),
            authz,
            sanitize: Arc::new(SanitizePolicy::new(&config.sanitize)),
            identity,
            tenancy: config
                .tenancy
                .as_ref()
                .map(|t| Arc::new(TenancyPolicy::new(t))),
            registry: Arc::new(registry),
            context_signer,
            identity_generation: 1,
        })
    }
}

/// Loads the registry a configuration points at (file or PostgreSQL).
/// The file registry a configuration points at (empty without `[tenancy]`).
pub fn load_file_registry(loaded: &LoadedConfig) -> Result<TenantRegistry, SourceIssues> {
    match loaded
        .config
        .tenancy
        .as_ref()
        .and_then(|t| t.registry.file.as_ref())
    {
        Some(file) => crate::tenancy::registry::load_file(
            &loaded.resolve(file),
            &loaded.config.tenant_rules(),
        )
        .map_err(|e| e.or_on_field(&loaded.source, "tenancy.registry.file")),
        None => Ok(TenantRegistry::default()),
    }
}

pub async fn load_registry(loaded: &LoadedConfig) -> Result<TenantRegistry, SourceIssues> {
    let Some(tenancy) = &loaded.config.tenancy else {
        return Ok(TenantRegistry::default());
    };
    let rules = loaded.config.tenant_rules();
    if let Some(file) = &tenancy.registry.file {
        return crate::tenancy::registry::load_file(&loaded.resolve(file), &rules);
    }
    if let Some(pg) = &tenancy.registry.postgres {
        return crate::tenancy::postgres::initial_load(pg, &rules)
            .await
            .map_err(|e| {
                SourceIssues(vec![SourceIssue {
                    field: "tenancy.registry.postgres".to_string(),
                    ..loaded
                        .source
                        .issue("tenancy.registry.postgres", e.to_string())
                }])
            });
    }
    Ok(TenantRegistry::default())
}

/// Why a tenant change was refused (the previous version stays).
#[derive(Debug, thiserror::Error)]
pub enum TenantChangeError {
    #[error(transparent)]
    Registry(RegistryError),
    #[error("tenant policies: {0}")]
    Policies(SourceIssues),
    #[error("residency: {0}")]
    Residency(String),
}

/// The current snapshot, plus serialised writers so concurrent updates (PostgreSQL
/// notifications, admin API, file reloads) never lose each other's changes.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    /// Serialises writers; holds the tenant changes applied so far (see [`TenantWrites`]).
    writer: Mutex<TenantWrites>,
    /// Where tenant suspensions and failed reloads are announced, when configured.
    webhooks: std::sync::OnceLock<crate::webhooks::Webhooks>,
}

impl SnapshotStore {
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        Arc::new(SnapshotStore {
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(TenantWrites::default()),
            webhooks: std::sync::OnceLock::new(),
        })
    }

    pub fn set_webhooks(&self, webhooks: crate::webhooks::Webhooks) {
        let _ = self.webhooks.set(webhooks);
    }

    pub fn webhooks(&self) -> Option<&crate::webhooks::Webhooks> {
        self.webhooks.get()
    }

    /// Announces tenants that were active in `before` and are suspended now.
    fn announce_suspensions<'a>(&self, before: &Snapshot, ids: impl Iterator<Item = &'a str>) {
        let Some(webhooks) = self.webhooks.get() else {
            return;
        };
        let after = self.load();
        for id in ids {
            let was_active = before
                .registry
                .get(id)
                .is_some_and(|t| t.status == crate::tenancy::TenantStatus::Active);
            if let Some(now) = after.registry.get(id) {
                if was_active && now.status == crate::tenancy::TenantStatus::Suspended {
                    webhooks.emit(
                        Some(now),
                        crate::webhooks::WebhookEvent::new(
                            "tenant.suspended",
                            serde_json::json!({"tenant": id}),
                        ),
                    );
                }
            }
        }
    }

    /// The snapshot for one request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot with `f(current)`, or keeps it when `f` fails.
    pub fn update<E>(&self, f: impl FnOnce(&Snapshot) -> Result<Snapshot, E>) -> Result<(), E> {
        self.update_with_writes(|current, _| f(current))
    }

    fn update_with_writes<E>(
        &self,
        f: impl FnOnce(&Snapshot, &mut TenantWrites) -> Result<Snapshot, E>,
    ) -> Result<(), E> {
        let mut writes = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.current.load_full();
        let next = f(&current, &mut writes)?;
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// A mark to take before a full re-read of the registry's source: tenants changed through
    /// [`apply_tenant_changes`](Self::apply_tenant_changes) after it keep their state when the
    /// re-read is swapped in, since it may predate them.
    pub fn tenant_write_mark(&self) -> u64 {
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .seq
    }

    /// Swaps in a whole new registry (e.g. after a full re-read). Tenant policies are
    /// recompiled; if one is invalid the registry is refused and the previous one stays.
    /// `since`: the [`tenant_write_mark`](Self::tenant_write_mark) taken before the re-read
    /// began (`None`: the new registry is the whole truth, as after a file reload).
    pub fn replace_registry(
        &self,
        registry: TenantRegistry,
        since: Option<u64>,
    ) -> Result<(), TenantChangeError> {
        let before = self.load();
        self.replace_registry_quietly(registry, since)?;
        let after = self.load();
        self.announce_suspensions(&before, after.registry.tenants().map(|t| t.id.as_str()));
        Ok(())
    }

    fn replace_registry_quietly(
        &self,
        registry: TenantRegistry,
        since: Option<u64>,
    ) -> Result<(), TenantChangeError> {
        self.update_with_writes(|current, writes| {
            let mut registry = registry;
            // Changes applied here after the re-read began win over what it read: their own
            // notifications may still be on the way.
            let newer: Vec<(String, Option<TenantSpec>)> = since
                .map(|since| writes.since(since))
                .unwrap_or_default()
                .into_iter()
                .map(|id| {
                    let spec = current.registry.get(&id).map(|t| TenantSpec::clone(t));
                    (id, spec)
                })
                .collect();
            for (id, spec) in newer {
                registry = match spec {
                    Some(spec) => registry
                        .with_upsert(spec)
                        .map_err(TenantChangeError::Registry)?,
                    None => registry.without(&id),
                };
            }
            if let Some(policy) = &current.residency {
                // Tenants that break the residency rules are left out (their requests get 404)
                // rather than refusing every other tenant.
                let bad: Vec<String> = registry
                    .tenants()
                    .filter_map(|t| {
                        policy
                            .maps
                            .check_tenant(t, &policy.default_regime)
                            .err()
                            .map(|e| (t.id.clone(), e))
                    })
                    .map(|(id, e)| {
                        tracing::error!(error = %e, "tenant left out of the registry");
                        id
                    })
                    .collect();
                for id in bad {
                    registry = registry.without(&id);
                }
            }
            let mut next = current.clone();
            if let Some(authz) = &current.authz {
                // Only policy texts that changed need checking (a full re-read of 100,000
                // tenants must not recompile them all).
                for tenant in registry.tenants() {
                    let before = current
                        .registry
                        .get(&tenant.id)
                        .and_then(|t| t.policies.as_deref());
                    if tenant.policies.is_some() && tenant.policies.as_deref() != before {
                        authz
                            .check_tenant_policies(&tenant.id, tenant.policies.as_deref())
                            .map_err(TenantChangeError::Policies)?;
                    }
                }
            }
            next.registry = Arc::new(registry);
            next.identity_generation += 1;
            Ok(next)
        })
    }

    /// Swaps in a newly loaded policy package.
    pub fn replace_authz(&self, engine: AuthzEngine) {
        let _ = self.update::<std::convert::Infallible>(|current| {
            let mut next = current.clone();
            next.authz = Some(Arc::new(engine));
            Ok(next)
        });
    }

    /// Applies tenant upserts (`Some`) and removals (`None`) in one swap. Returns how many
    /// tenants changed.
    pub fn apply_tenant_changes(
        &self,
        changes: Vec<(String, Option<TenantSpec>)>,
    ) -> Result<usize, TenantChangeError> {
        let count = changes.len();
        let before = self.load();
        let ids: Vec<String> = changes.iter().map(|(id, _)| id.clone()).collect();
        self.update_with_writes(|current, writes| {
            let next = with_tenant_changes(current, changes)?;
            writes.record(&ids);
            Ok(next)
        })?;
        self.announce_suspensions(&before, ids.iter().map(String::as_str));
        Ok(count)
    }

    /// Checks tenant changes as [`apply_tenant_changes`](Self::apply_tenant_changes) would,
    /// without applying them (to validate before writing them elsewhere).
    pub fn check_tenant_changes(
        &self,
        changes: Vec<(String, Option<TenantSpec>)>,
    ) -> Result<(), TenantChangeError> {
        with_tenant_changes(&self.load(), changes).map(drop)
    }
}

/// Which tenants were changed one by one, and when (a sequence number per change), so a full
/// re-read that started earlier does not undo them.
#[derive(Debug, Default)]
struct TenantWrites {
    seq: u64,
    last: HashMap<String, u64>,
}

impl TenantWrites {
    /// Most tenants remembered; beyond, the oldest marks are forgotten (a re-read running
    /// across that many changes is followed by their notifications anyway).
    const REMEMBERED: usize = 10_000;

    fn record(&mut self, ids: &[String]) {
        self.seq += 1;
        for id in ids {
            self.last.insert(id.clone(), self.seq);
        }
        if self.last.len() > Self::REMEMBERED {
            let cutoff = self.seq.saturating_sub(Self::REMEMBERED as u64 / 2);
            self.last.retain(|_, seq| *seq > cutoff);
        }
    }

    fn since(&self, mark: u64) -> Vec<String> {
        self.last
            .iter()
            .filter(|(_, seq)| **seq > mark)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The snapshot after tenant upserts and removals, or why they are refused.
fn with_tenant_changes(
    current: &Snapshot,
    changes: Vec<(String, Option<TenantSpec>)>,
) -> Result<Snapshot, TenantChangeError> {
    let mut registry = (*current.registry).clone();
    let mut identity_changed = false;
    let mut policies_changed = Vec::new();
    for (id, spec) in changes {
        let before = registry.get(&id).cloned();
        identity_changed |= match (&before, &spec) {
            (Some(old), Some(new)) => old.issuers != new.issuers || old.api_keys != new.api_keys,
            (None, None) => false,
            _ => true,
        };
        let old_policies = before.as_ref().and_then(|t| t.policies.clone());
        let new_policies = spec.as_ref().and_then(|t| t.policies.clone());
        if old_policies != new_policies {
            policies_changed.push(id.clone());
        }
        if let (Some(policy), Some(spec)) = (&current.residency, &spec) {
            policy
                .maps
                .check_tenant(spec, &policy.default_regime)
                .map_err(TenantChangeError::Residency)?;
        }
        registry = match spec {
            Some(spec) => registry
                .with_upsert(spec)
                .map_err(TenantChangeError::Registry)?,
            None => registry.without(&id),
        };
    }
    let mut next = current.clone();
    if let Some(authz) = &current.authz {
        for id in &policies_changed {
            authz
                .check_tenant_policies(id, registry.get(id).and_then(|t| t.policies.as_deref()))
                .map_err(TenantChangeError::Policies)?;
        }
    }
    next.registry = Arc::new(registry);
    if identity_changed {
        next.identity_generation += 1;
    }
    Ok(next)
}

impl crate::tenancy::LiveRegistry for SnapshotStore {
    fn current(&self) -> Arc<TenantRegistry> {
        self.load().registry.clone()
    }

    fn write_mark(&self) -> u64 {
        self.tenant_write_mark()
    }

    fn replace(
        &self,
        registry: TenantRegistry,
        since: u64,
    ) -> Result<(), crate::tenancy::ChangeRefused> {
        Ok(self.replace_registry(registry, Some(since))?)
    }

    fn apply(
        &self,
        changes: Vec<(String, Option<TenantSpec>)>,
    ) -> Result<usize, crate::tenancy::ChangeRefused> {
        Ok(self.apply_tenant_changes(changes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Deployment;

    #[test]
    fn a_full_re_read_does_not_undo_a_newer_local_change() {
        let store = SnapshotStore::new(Deployment::load().snapshot);
        // What a re-read of the source returns when it ran before `newco` was written there.
        let stale = (*store.load().registry).clone();
        let mark = store.tenant_write_mark();
        store
            .apply_tenant_changes(vec![("newco".into(), Some(TenantSpec::new("newco")))])
            .unwrap();
        store.replace_registry(stale.clone(), Some(mark)).unwrap();
        assert!(store.load().registry.get("newco").is_some());
        assert!(store.load().registry.get("acme").is_some());
        // A re-read that began after the change is the truth (the row was deleted since).
        let mark = store.tenant_write_mark();
        store.replace_registry(stale, Some(mark)).unwrap();
        assert!(store.load().registry.get("newco").is_none());
    }
}
