//! `[authorization]`: where the policy package is and how decisions are cached.

use std::path::PathBuf;

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
    }
}
