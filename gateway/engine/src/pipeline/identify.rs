//! Stage 2: who is calling (see [`crate::identity`] for how credentials are verified).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::forward::ContextTokenConfig;
use super::{Rejection, RequestHead};
use crate::diagnostics::{SourceIssue, SourceText};
use crate::identity::{Authenticator, GlobalIssuer, IdentityPolicy, Principal};
use crate::tenancy::model::{validate_issuer, IssuerConfig};
use crate::tenancy::TenantRegistry;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Issuers trusted for every tenant (tenants may add their own in the registry).
    #[serde(default)]
    pub issuer: Vec<IssuerConfig>,
    /// Header carrying API keys.
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    /// Let requests without credentials through as the anonymous caller; otherwise they get
    /// 401. Policies then decide: Cedar sees the caller as `Anonymous::"anonymous"` (an entity
    /// type of its own, never a `User`, so no path or attribute can make it an owner), with the
    /// request's tenant as its `tenant`; it has no roles.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// An unknown `kid` refetches the issuer's keys at most this often.
    #[serde(default = "default_jwks_min_refresh", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_min_refresh_interval: Duration,
    /// Keys older than this are refetched in the background.
    #[serde(default = "default_jwks_max_age", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_max_age: Duration,
    /// The longest a request waits for an issuer's keys (OIDC discovery and JWKS together,
    /// including waiting for another request's fetch), 100ms to 60s. When it passes, the
    /// request is refused with 401 and keys fetched before keep verifying tokens.
    #[serde(default = "default_jwks_fetch_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_fetch_timeout: Duration,
    /// Verified tokens remembered (until their expiry) to skip signature checks.
    #[serde(default = "default_token_cache")]
    pub token_cache_capacity: u64,
    /// Send the upstream a short-lived JWT signed by the gateway with the verified context.
    #[serde(default)]
    pub context_token: Option<ContextTokenConfig>,
    /// Record first-seen principals (just-in-time provisioning). Relative to this file.
    #[serde(default)]
    pub provisioning: Option<ProvisioningConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// Where first-seen principals are recorded: `file` (JSON lines in the state directory) or
    /// `postgres` (table `gateway_principals`, needs `tenancy.registry.postgres`).
    #[serde(default = "default_provisioning_store")]
    pub store: String,
}

fn default_api_key_header() -> String {
    "x-api-key".to_string()
}
fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_max_age() -> Duration {
    Duration::from_secs(600)
}
fn default_jwks_fetch_timeout() -> Duration {
    crate::identity::jwks::DEFAULT_FETCH_TIMEOUT
}
fn default_token_cache() -> u64 {
    100_000
}
fn default_provisioning_store() -> String {
    "file".to_string()
}

/// Checks `[identity]`, all problems at once. `tenancy`: tenants are configured, so every
/// token must name its tenant or come from a platform-wide issuer.
pub fn validate(
    source: &SourceText,
    identity: &IdentityConfig,
    tenancy: bool,
    issues: &mut Vec<SourceIssue>,
) {
    let mut seen = std::collections::HashSet::new();
    for (i, issuer) in identity.issuer.iter().enumerate() {
        for (field, message) in validate_issuer(issuer, true) {
            issues.push(source.issue(format!("identity.issuer[{i}].{field}"), message));
        }
        if tenancy && issuer.claims.tenant.is_none() && !issuer.platform {
            issues.push(source.issue(
                format!("identity.issuer[{i}].claims.tenant"),
                "with [tenancy], a token that names no tenant is refused: name the claim holding the tenant, or declare the issuer platform-wide (`platform = true`)",
            ));
        }
        if !seen.insert(issuer.issuer.as_str()) {
            issues.push(source.issue(
                format!("identity.issuer[{i}].issuer"),
                format!("issuer `{}` is configured twice", issuer.issuer),
            ));
        }
        if let Some(secret) = &issuer.secret_file {
            let path = source.resolve(Path::new(secret));
            match std::fs::read(&path) {
                Ok(bytes) if bytes.len() < 32 => issues.push(source.issue(
                    format!("identity.issuer[{i}].secret_file"),
                    format!("{}: an HMAC secret needs at least 32 bytes", path.display()),
                )),
                Ok(_) => {}
                Err(e) => issues.push(source.issue(
                    format!("identity.issuer[{i}].secret_file"),
                    format!("{}: {e}", path.display()),
                )),
            }
        }
    }
    if http::HeaderName::from_bytes(identity.api_key_header.as_bytes()).is_err() {
        issues.push(source.issue("identity.api_key_header", "not a header name"));
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(60))
        .contains(&identity.jwks_fetch_timeout)
    {
        issues.push(source.issue(
            "identity.jwks_fetch_timeout",
            format!(
                "`{}`: between 100ms and 60s",
                humantime::format_duration(identity.jwks_fetch_timeout)
            ),
        ));
    }
    if let Some(ctx) = &identity.context_token {
        if !ctx.header.to_ascii_lowercase().starts_with("x-gateway-") {
            issues.push(source.issue(
                "identity.context_token.header",
                "must start with `x-gateway-` (a header clients can never set)",
            ));
        }
        if ctx.algorithm.is_hmac() {
            issues.push(source.issue(
                "identity.context_token.algorithm",
                "use an asymmetric algorithm so upstreams verify without holding a signing secret",
            ));
        }
        let path = source.resolve(&ctx.key);
        if let Err(e) = crate::pipeline::forward::ContextSigner::load_key(&path, ctx.algorithm) {
            issues.push(source.issue("identity.context_token.key", e));
        }
    }
    if let Some(p) = &identity.provisioning {
        if p.store != "file" && p.store != "postgres" {
            issues.push(source.issue(
                "identity.provisioning.store",
                format!("`{}`: expected `file` or `postgres`", p.store),
            ));
        }
    }
}

/// Compiles `[identity]` (reading HMAC secrets of global issuers).
pub fn compile(identity: &IdentityConfig, source: &SourceText) -> Result<IdentityPolicy, String> {
    let mut issuers = HashMap::with_capacity(identity.issuer.len());
    for issuer in &identity.issuer {
        let hmac_key = match &issuer.secret_file {
            Some(path) => {
                let path = source.resolve(Path::new(path));
                let secret =
                    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                Some(Arc::new(DecodingKey::from_secret(trim_newline(&secret))))
            }
            None => None,
        };
        issuers.insert(
            issuer.issuer.clone(),
            Arc::new(GlobalIssuer {
                config: issuer.clone(),
                hmac_key,
            }),
        );
    }
    Ok(IdentityPolicy {
        issuers,
        api_key_header: http::HeaderName::from_bytes(
            identity.api_key_header.to_ascii_lowercase().as_bytes(),
        )
        .map_err(|e| format!("identity.api_key_header: {e}"))?,
        allow_anonymous: identity.allow_anonymous,
    })
}

/// Secret files often end with a newline an editor added; it is not part of the secret.
fn trim_newline(mut bytes: &[u8]) -> &[u8] {
    while let Some(rest) = bytes
        .strip_suffix(b"\n")
        .or_else(|| bytes.strip_suffix(b"\r"))
    {
        bytes = rest;
    }
    bytes
}

/// Runs stage 2. Without `[identity]` every caller is anonymous.
pub async fn identify(
    head: &RequestHead<'_>,
    policy: Option<&IdentityPolicy>,
    registry: &TenantRegistry,
    generation: u64,
    authenticator: &Authenticator,
) -> Result<Arc<Principal>, Rejection> {
    match policy {
        Some(policy) => authenticator
            .authenticate(head.headers, policy, registry, generation)
            .await
            .map_err(Rejection::Unauthenticated),
        None => Ok(Arc::new(Principal::anonymous())),
    }
}
