//! `[authorization]`: where the policy package is and how decisions are cached.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostics::{SourceIssue, SourceText};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConfig {
    /// The policy package: `schema.cedarschema`, `*.cedar`, `roles.json`, `routes.toml`,
    /// `shadow/*.cedar`, `tenants/<id>/*.cedar`. Relative to this file.
    pub policies: PathBuf,
    /// Decisions remembered (keyed on everything a decision depends on; emptied by reloads).
    #[serde(default = "default_decision_cache")]
    pub decision_cache_capacity: u64,
    /// Reload when a file of the package changes (SIGHUP and the admin API always reload).
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Entity data from outside the package (`entities.json` in the package needs no section):
    /// which provider serves which entity types.
    #[serde(default)]
    pub entity_store: Vec<EntityStoreConfig>,
}

/// One `[[authorization.entity_store]]`: a provider of resource records (owner, tenant, …)
/// for some entity types, with its cache.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntityStoreConfig {
    /// Entity types (basenames, e.g. `Document`) served by this provider.
    pub types: Vec<String>,
    /// `postgres` or `http`.
    pub kind: EntityProviderKind,
    /// `kind = "postgres"`: where the table is. Set its `table` (e.g. `gateway_entities`):
    /// `entity_type text, entity_id text, attrs jsonb, parents jsonb`, primary key on the
    /// first two; created with a NOTIFY trigger when `migrate` is on. Changes reach every
    /// replica's cache through NOTIFY.
    #[serde(default)]
    pub postgres: Option<crate::db::PostgresConfig>,
    /// `kind = "http"`: base URL; the record of `Type::"id"` is `GET {url}/{Type}/{id}`
    /// (percent-encoded), answered 200 with Cedar entity JSON or 404.
    #[serde(default)]
    pub url: Option<String>,
    /// `kind = "http"`: how long one fetch may take.
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Records kept in memory at most (found and missing together).
    #[serde(default = "default_store_capacity")]
    pub cache_capacity: u64,
    /// How long a found record is used before it is fetched again. (PostgreSQL changes are
    /// also pushed by NOTIFY.)
    #[serde(default = "default_store_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// How long "no such entity" is remembered.
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub negative_ttl: Duration,
    /// When the provider cannot answer: `deny` (503 `entity-store-unavailable`, the default)
    /// or `absent` (decide as if there were no record).
    #[serde(default)]
    pub on_error: super::store::OnError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntityProviderKind {
    Postgres,
    Http,
}

fn default_fetch_timeout() -> Duration {
    Duration::from_millis(250)
}

fn default_store_capacity() -> u64 {
    100_000
}

fn default_store_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_negative_ttl() -> Duration {
    Duration::from_secs(5)
}

fn default_decision_cache() -> u64 {
    100_000
}

fn default_true() -> bool {
    true
}

impl AuthorizationConfig {
    /// The package directory must hold a schema: without one nothing can be validated.
    pub fn validate(&self, source: &SourceText, issues: &mut Vec<SourceIssue>) {
        let dir = source.resolve(&self.policies);
        if !dir.join("schema.cedarschema").is_file() {
            issues.push(source.issue(
                "authorization.policies",
                format!("{}: no schema.cedarschema in this directory", dir.display()),
            ));
        }
        for (i, store) in self.entity_store.iter().enumerate() {
            let field = |name: &str| format!("authorization.entity_store[{i}].{name}");
            if store.types.is_empty() {
                issues.push(source.issue(field("types"), "name at least one entity type"));
            }
            match store.kind {
                EntityProviderKind::Postgres => match &store.postgres {
                    None => issues.push(source.issue(
                        field("kind"),
                        "`kind = \"postgres\"` needs a `postgres` table (url or url_env)",
                    )),
                    Some(pg) => {
                        if let Err(e) = pg.connection_url() {
                            issues.push(source.issue(field("postgres"), e));
                        }
                        // The default table is the tenant registry's.
                        if pg.table == "gateway_tenants" {
                            issues.push(source.issue(
                                field("postgres"),
                                "set `table` (e.g. \"gateway_entities\"): the default names \
                                 the tenant registry's table",
                            ));
                        }
                    }
                },
                EntityProviderKind::Http => match store.url.as_deref().map(reqwest::Url::parse) {
                    None => {
                        issues.push(source.issue(field("kind"), "`kind = \"http\"` needs `url`"))
                    }
                    Some(Err(e)) => issues.push(source.issue(field("url"), e.to_string())),
                    Some(Ok(u)) if !matches!(u.scheme(), "http" | "https") => issues
                        .push(source.issue(field("url"), "must be an http:// or https:// URL")),
                    Some(Ok(_)) => {}
                },
            }
            if store.cache_capacity == 0 {
                issues.push(source.issue(field("cache_capacity"), "must be at least 1"));
            }
        }
    }
}
