//! The tenant registry: every tenant plus the indexes the request path needs (host → tenant,
//! API key hash → key, issuer → tenants that trust it). Lookups are hash-map lookups, so the
//! cost does not depend on how many tenants there are. A registry is immutable; changes build
//! a new one (sharing the unchanged tenants) that is swapped into the snapshot.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::model::{validate_tenant, ApiKeySpec, IssuerConfig, TenantRules, TenantSpec};
use crate::diagnostics::{SourceIssue, SourceIssues, SourceText};

pub type Tenant = Arc<TenantSpec>;

/// An API key found by its hash.
#[derive(Debug, Clone)]
pub struct ApiKeyEntry {
    pub tenant: Arc<str>,
    pub key: Arc<ApiKeySpec>,
    /// Parsed `expires`.
    pub expires: Option<SystemTime>,
}

/// A tenant's own issuer.
#[derive(Debug, Clone)]
pub struct TenantIssuer {
    pub tenant: Arc<str>,
    pub config: Arc<IssuerConfig>,
}

#[derive(Debug, Default, Clone)]
pub struct TenantRegistry {
    /// What its tenants may say (tiers, quotas); registries derived from this one keep it.
    rules: TenantRules,
    tenants: HashMap<Arc<str>, Tenant>,
    hosts: HashMap<Box<str>, Arc<str>>,
    api_keys: HashMap<[u8; 32], ApiKeyEntry>,
    issuers: HashMap<Box<str>, Vec<TenantIssuer>>,
    /// E-mail domain → the tenant whose login page it leads to (`sso.email_domains`).
    login_domains: HashMap<Box<str>, Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("tenant `{tenant}`: {field}: {message}")]
    Invalid {
        tenant: String,
        field: String,
        message: String,
    },
    #[error("tenant `{tenant}`: host `{host}` already belongs to tenant `{owner}`")]
    HostTaken {
        tenant: String,
        host: String,
        owner: String,
    },
    #[error("tenant `{tenant}`: e-mail domain `{domain}` already logs in to tenant `{owner}`")]
    LoginDomainTaken {
        tenant: String,
        domain: String,
        owner: String,
    },
    #[error("tenant `{tenant}`: API key `{key}` has the same hash as a key of tenant `{owner}`")]
    ApiKeyTaken {
        tenant: String,
        key: String,
        owner: String,
    },
}

impl TenantRegistry {
    /// Builds a registry of tenants on any tier, refusing invalid tenants and conflicts
    /// (shared hosts or keys).
    pub fn build(specs: impl IntoIterator<Item = TenantSpec>) -> Result<Self, Vec<RegistryError>> {
        Self::build_with(TenantRules::any(), specs)
    }

    /// As [`build`](Self::build), refusing tenants that break `rules`; the registry
    /// (and every one derived from it) keeps refusing them.
    pub fn build_with(
        rules: TenantRules,
        specs: impl IntoIterator<Item = TenantSpec>,
    ) -> Result<Self, Vec<RegistryError>> {
        let (registry, errors) = Self::build_skipping(rules, specs);
        if errors.is_empty() {
            Ok(registry)
        } else {
            Err(errors)
        }
    }

    /// The registry of every tenant of `specs` that keeps `rules` and does not conflict with
    /// one before it (a host, key or e-mail domain taken), and why each other one was left out.
    pub fn build_skipping(
        rules: TenantRules,
        specs: impl IntoIterator<Item = TenantSpec>,
    ) -> (Self, Vec<RegistryError>) {
        let mut registry = TenantRegistry {
            rules,
            ..TenantRegistry::default()
        };
        let mut errors = Vec::new();
        for spec in specs {
            if let Err(e) = registry.insert(spec) {
                errors.push(e);
            }
        }
        (registry, errors)
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// What tenants of this registry may say (tiers, quotas).
    pub fn tenant_rules(&self) -> &TenantRules {
        &self.rules
    }

    /// Problems of `spec` as a tenant of this registry (by itself, without conflicts).
    pub fn validate(&self, spec: &TenantSpec) -> Vec<(String, String)> {
        validate_tenant(spec, &self.rules)
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Tenant> {
        self.tenants.get(id)
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.values()
    }

    /// The tenant owning a custom host name (lower-case, without port).
    pub fn tenant_for_host(&self, host: &str) -> Option<&Arc<str>> {
        self.hosts.get(host)
    }

    /// The tenant whose people log in with e-mail addresses of `domain` (lower-case).
    pub fn tenant_for_login_domain(&self, domain: &str) -> Option<&Arc<str>> {
        self.login_domains.get(domain)
    }

    /// The API key whose SHA-256 is `hash`.
    pub fn api_key(&self, hash: &[u8; 32]) -> Option<&ApiKeyEntry> {
        self.api_keys.get(hash)
    }

    /// Tenants whose own issuer has this `iss`.
    pub fn tenant_issuers(&self, iss: &str) -> &[TenantIssuer] {
        self.issuers.get(iss).map(Vec::as_slice).unwrap_or(&[])
    }

    /// A new registry with `spec` added or replaced; `self` is unchanged.
    pub fn with_upsert(&self, spec: TenantSpec) -> Result<Self, RegistryError> {
        let mut next = self.clone();
        next.remove_indexes(&spec.id);
        next.tenants.remove(spec.id.as_str());
        next.insert(spec)?;
        Ok(next)
    }

    /// A new registry without tenant `id`; `self` is unchanged.
    pub fn without(&self, id: &str) -> Self {
        let mut next = self.clone();
        next.remove_indexes(id);
        next.tenants.remove(id);
        next
    }

    fn insert(&mut self, spec: TenantSpec) -> Result<(), RegistryError> {
        if let Some((field, message)) = validate_tenant(&spec, &self.rules).into_iter().next() {
            return Err(RegistryError::Invalid {
                tenant: spec.id.clone(),
                field,
                message,
            });
        }
        if self.tenants.contains_key(spec.id.as_str()) {
            return Err(RegistryError::Invalid {
                tenant: spec.id.clone(),
                field: "id".to_string(),
                message: "duplicate tenant id".to_string(),
            });
        }
        for host in &spec.hosts {
            if let Some(owner) = self.hosts.get(host.as_str()) {
                return Err(RegistryError::HostTaken {
                    tenant: spec.id.clone(),
                    host: host.clone(),
                    owner: owner.to_string(),
                });
            }
        }
        let login_domains = spec.sso.iter().flat_map(|s| &s.email_domains);
        for domain in login_domains.clone() {
            if let Some(owner) = self.login_domains.get(domain.as_str()) {
                return Err(RegistryError::LoginDomainTaken {
                    tenant: spec.id.clone(),
                    domain: domain.clone(),
                    owner: owner.to_string(),
                });
            }
        }
        let mut key_entries = Vec::with_capacity(spec.api_keys.len());
        for key in &spec.api_keys {
            let hash = parse_key_hash(&key.sha256);
            if let Some(existing) = self.api_keys.get(&hash) {
                return Err(RegistryError::ApiKeyTaken {
                    tenant: spec.id.clone(),
                    key: key.id.clone(),
                    owner: existing.tenant.to_string(),
                });
            }
            let expires = key
                .expires
                .as_deref()
                .and_then(|e| humantime::parse_rfc3339_weak(e).ok());
            key_entries.push((hash, key.clone(), expires));
        }
        let id: Arc<str> = Arc::from(spec.id.as_str());
        for host in &spec.hosts {
            self.hosts.insert(host.as_str().into(), id.clone());
        }
        for domain in login_domains {
            self.login_domains
                .insert(domain.as_str().into(), id.clone());
        }
        for (hash, key, expires) in key_entries {
            self.api_keys.insert(
                hash,
                ApiKeyEntry {
                    tenant: id.clone(),
                    key: Arc::new(key),
                    expires,
                },
            );
        }
        for issuer in &spec.issuers {
            self.issuers
                .entry(issuer.issuer.as_str().into())
                .or_default()
                .push(TenantIssuer {
                    tenant: id.clone(),
                    config: Arc::new(issuer.clone()),
                });
        }
        self.tenants.insert(id, Arc::new(spec));
        Ok(())
    }

    fn remove_indexes(&mut self, id: &str) {
        let Some(old) = self.tenants.get(id).cloned() else {
            return;
        };
        for host in &old.hosts {
            self.hosts.remove(host.as_str());
        }
        for domain in old.sso.iter().flat_map(|s| &s.email_domains) {
            self.login_domains.remove(domain.as_str());
        }
        for key in &old.api_keys {
            self.api_keys.remove(&parse_key_hash(&key.sha256));
        }
        for issuer in &old.issuers {
            if let Some(list) = self.issuers.get_mut(issuer.issuer.as_str()) {
                list.retain(|t| &*t.tenant != id);
                if list.is_empty() {
                    self.issuers.remove(issuer.issuer.as_str());
                }
            }
        }
    }
}

/// SHA-256 of an API key as presented by a client.
pub fn api_key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_key_hash(hex_digest: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    // Validated by `validate_tenant` before any key reaches here.
    let _ = hex::decode_to_slice(hex_digest, &mut out);
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenant: Vec<TenantSpec>,
}

/// Loads `tenants.toml` (`[[tenant]]` entries) of tenants that keep `rules`; every problem names
/// file, line and field.
pub fn load_file(path: &Path, rules: &TenantRules) -> Result<TenantRegistry, SourceIssues> {
    let source = SourceText::read(path)?;
    load_source(&source, rules)
}

pub fn load_source(
    source: &SourceText,
    rules: &TenantRules,
) -> Result<TenantRegistry, SourceIssues> {
    let file: TenantsFile = source.deserialize()?;
    let mut issues: Vec<SourceIssue> = Vec::new();
    for (i, spec) in file.tenant.iter().enumerate() {
        for (field, message) in validate_tenant(spec, rules) {
            issues.push(source.issue(format!("tenant[{i}].{field}"), message));
        }
    }
    if !issues.is_empty() {
        return Err(SourceIssues(issues));
    }
    let ids: Vec<String> = file.tenant.iter().map(|t| t.id.clone()).collect();
    TenantRegistry::build_with(rules.clone(), file.tenant).map_err(|errors| {
        SourceIssues(
            errors
                .into_iter()
                .map(|e| {
                    let (tenant, field) = match &e {
                        RegistryError::Invalid { tenant, field, .. } => {
                            (tenant.clone(), field.clone())
                        }
                        RegistryError::HostTaken { tenant, .. } => {
                            (tenant.clone(), "hosts".to_string())
                        }
                        RegistryError::ApiKeyTaken { tenant, .. } => {
                            (tenant.clone(), "api_keys".to_string())
                        }
                        RegistryError::LoginDomainTaken { tenant, .. } => {
                            (tenant.clone(), "sso.email_domains".to_string())
                        }
                    };
                    // Duplicates point at the later definition.
                    let index = ids.iter().rposition(|id| *id == tenant).unwrap_or(0);
                    source.issue(format!("tenant[{index}].{field}"), e.to_string())
                })
                .collect(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantSpec {
        TenantSpec::new(id)
    }

    #[test]
    fn an_unreadable_registry_file_is_reported_on_the_setting_that_names_it() {
        // Found by the gateway_config fuzz target: the problem named neither field nor line.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        let text = "[server]\nlisten = [\"127.0.0.1:1\"]\n[[upstream.pool]]\nname = \"a\"\n\
                    peers = [\"127.0.0.1:2\"]\n[tenancy]\nsources = [\"header\"]\n\
                    [tenancy.registry]\nfile = \"tenants.toml\"\n";
        let located = |issues: SourceIssues| {
            let [issue] = issues.0.as_slice() else {
                panic!("{issues}");
            };
            assert_eq!(issue.field, "tenancy.registry.file", "{issue}");
            assert_eq!(
                (&issue.location.file, issue.location.line),
                (&config, Some(9)),
                "{issue}"
            );
            assert!(
                issue.message.contains("tenants.toml") && issue.message.contains("cannot read"),
                "{issue}"
            );
        };
        // `gateway check` (the configuration's validation reads the file) ...
        located(crate::config::load_source(SourceText::new(&config, text)).unwrap_err());
        // ... and a registry (re)load after the file went away.
        std::fs::write(dir.path().join("tenants.toml"), "[[tenant]]\nid = \"a\"\n").unwrap();
        let loaded = crate::config::load_source(SourceText::new(&config, text)).unwrap();
        std::fs::remove_file(dir.path().join("tenants.toml")).unwrap();
        located(crate::snapshot::load_file_registry(&loaded).unwrap_err());
    }

    #[test]
    fn indexes_hosts_keys_and_issuers_and_updates_them() {
        let mut a = tenant("acme");
        a.hosts = vec!["api.acme.test".into()];
        a.api_keys = vec![ApiKeySpec {
            id: "ci".into(),
            sha256: hex::encode(api_key_hash("secret-key")),
            scopes: vec![],
            roles: vec!["viewer".into()],
            expires: None,
            owner: None,
        }];
        let reg = TenantRegistry::build([a.clone(), tenant("globex")]).unwrap();
        assert_eq!(reg.len(), 2);
        assert_eq!(
            reg.tenant_for_host("api.acme.test").map(|t| &**t),
            Some("acme")
        );
        assert_eq!(
            &*reg.api_key(&api_key_hash("secret-key")).unwrap().tenant,
            "acme"
        );
        assert!(reg.api_key(&api_key_hash("other")).is_none());

        a.hosts = vec!["acme.example".into()];
        let next = reg.with_upsert(a).unwrap();
        assert!(next.tenant_for_host("api.acme.test").is_none());
        assert!(next.tenant_for_host("acme.example").is_some());
        // The old registry is untouched.
        assert!(reg.tenant_for_host("api.acme.test").is_some());
        let without = next.without("acme");
        assert!(without.get("acme").is_none());
        assert!(without.api_key(&api_key_hash("secret-key")).is_none());
        assert_eq!(without.len(), 1);
    }

    #[test]
    fn conflicts_are_refused() {
        let mut a = tenant("a");
        a.hosts = vec!["shared.test".into()];
        let mut b = tenant("b");
        b.hosts = vec!["shared.test".into()];
        let errors = TenantRegistry::build([a, b]).unwrap_err();
        assert!(matches!(errors[0], RegistryError::HostTaken { .. }));
        let errors = TenantRegistry::build([tenant("a"), tenant("a")]).unwrap_err();
        assert!(matches!(&errors[0], RegistryError::Invalid { field, .. } if field == "id"));
    }

    #[test]
    fn file_errors_name_line_and_field() {
        let text =
            "[[tenant]]\nid = \"ok\"\n\n[[tenant]]\nid = \"Bad Id\"\n\n[[tenant]]\nid = \"ok\"\n";
        let err =
            load_source(&SourceText::new("tenants.toml", text), &TenantRules::any()).unwrap_err();
        assert_eq!(err.0[0].field, "tenant[1].id");
        assert_eq!(err.0[0].location.line, Some(5));
        let text = "[[tenant]]\nid = \"ok\"\n\n[[tenant]]\nid = \"ok\"\n";
        let err =
            load_source(&SourceText::new("tenants.toml", text), &TenantRules::any()).unwrap_err();
        assert_eq!(err.0[0].field, "tenant[1].id");
        assert_eq!(err.0[0].location.line, Some(5));
        let text = "[[tenant]]\nid = \"ok\"\n\n[[tenant]]\nid = \"gold\"\ntier = \"gold\"\n";
        let tiers = TenantRules::of(&["free".to_string()]);
        let err = load_source(&SourceText::new("tenants.toml", text), &tiers).unwrap_err();
        assert_eq!(err.0[0].field, "tenant[1].tier");
        assert_eq!(err.0[0].location.line, Some(6));
        // Registries derived from a checked one keep checking.
        let registry = load_source(
            &SourceText::new("tenants.toml", "[[tenant]]\nid = \"ok\"\n"),
            &tiers,
        )
        .unwrap();
        let mut gold = TenantSpec::new("gold");
        gold.tier = "gold".into();
        assert!(registry.with_upsert(gold).is_err());
        let text = "[[tenant]]\nid = \"ok\"\ntier = 3\n";
        let err =
            load_source(&SourceText::new("tenants.toml", text), &TenantRules::any()).unwrap_err();
        assert_eq!(err.0[0].field, "tenant[0].tier");
    }
}
