//! The verified context the upstream receives: `x-tenant-id`, `x-principal-*` and, optionally, a
//! short-lived JWT signed by the gateway (`x-gateway-context`) so upstreams can verify it instead
//! of trusting the network. Clients can never send these: stage 1 strips them on the way in.

use schemars::JsonSchema;
use serde::Deserialize;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

use crate::identity::{now_secs, Principal};
use crate::tenancy::model::JwtAlgorithm;
use crate::tenancy::registry::Tenant;

pub const TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
pub const PRINCIPAL_ID: HeaderName = HeaderName::from_static("x-principal-id");
pub const PRINCIPAL_ROLES: HeaderName = HeaderName::from_static("x-principal-roles");
pub const PRINCIPAL_AUTH: HeaderName = HeaderName::from_static("x-principal-auth");
pub const PRINCIPAL_SCOPES: HeaderName = HeaderName::from_static("x-principal-scopes");
/// `true` for a platform principal (a platform-wide issuer's token that names no tenant) acting
/// in the request's tenant: the upstream can tell platform staff from the tenant's own users.
pub const PRINCIPAL_PLATFORM: HeaderName = HeaderName::from_static("x-principal-platform");

/// Headers to set on the upstream request. Values that cannot be header values (control
/// characters in a claim) are left out rather than mangled.
pub fn context_headers(
    principal: &Principal,
    tenant: Option<&Tenant>,
    signer: Option<&ContextSigner>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(6);
    let mut push = |name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            out.push((name, v));
        }
    };
    if let Some(t) = tenant {
        push(TENANT_ID, &t.id);
    }
    push(PRINCIPAL_ID, &principal.id);
    push(PRINCIPAL_AUTH, principal.auth.label());
    if !principal.roles.is_empty() {
        push(PRINCIPAL_ROLES, &principal.roles.join(","));
    }
    if !principal.scopes.is_empty() {
        push(PRINCIPAL_SCOPES, &principal.scopes.join(","));
    }
    if principal.platform {
        push(PRINCIPAL_PLATFORM, "true");
    }
    if let Some(signer) = signer {
        if let Some(token) = signer.token(principal, tenant.map(|t| t.id.as_str())) {
            out.push((signer.header.clone(), token));
        }
    }
    out
}

#[derive(Serialize)]
struct ContextClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    roles: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    scopes: &'a [String],
    auth: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    platform: bool,
}

/// Signs context tokens, reusing one per caller for half its lifetime (signing on every request
/// would cost tens of microseconds).
pub struct ContextSigner {
    header: HeaderName,
    key: EncodingKey,
    jwt_header: Header,
    issuer: String,
    audience: String,
    ttl: Duration,
    /// Signed tokens with their signing time, reused for half their lifetime.
    cache: quick_cache::sync::Cache<String, (HeaderValue, u64)>,
}

impl ContextSigner {
    pub fn new(config: &ContextTokenConfig, key_path: &Path) -> Result<Self, String> {
        let key = Self::load_key(key_path, config.algorithm)?;
        let mut jwt_header = Header::new(config.algorithm.to_jsonwebtoken());
        jwt_header.kid = config.key_id.clone();
        let header = HeaderName::from_bytes(config.header.to_ascii_lowercase().as_bytes())
            .map_err(|e| format!("header `{}`: {e}", config.header))?;
        Ok(ContextSigner {
            header,
            key,
            jwt_header,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl: config.ttl,
            cache: quick_cache::sync::Cache::new(100_000),
        })
    }

    /// Reads the PEM signing key for `alg`.
    pub fn load_key(path: &Path, alg: JwtAlgorithm) -> Result<EncodingKey, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = match alg {
            JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => EncodingKey::from_ec_pem(&pem),
            JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            JwtAlgorithm::RS256
            | JwtAlgorithm::RS384
            | JwtAlgorithm::RS512
            | JwtAlgorithm::PS256
            | JwtAlgorithm::PS384
            | JwtAlgorithm::PS512 => EncodingKey::from_rsa_pem(&pem),
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => {
                return Err("context tokens need an asymmetric algorithm".to_string())
            }
        };
        key.map_err(|e| format!("{}: not a {alg:?} private key: {e}", path.display()))
    }

    fn token(&self, principal: &Principal, tenant: Option<&str>) -> Option<HeaderValue> {
        let cache_key = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            tenant.unwrap_or(""),
            principal.id,
            principal.roles.join(","),
            principal.scopes.join(","),
            principal.platform
        );
        let iat = now_secs();
        if let Some((token, signed_at)) = self.cache.get(&cache_key) {
            if iat.saturating_sub(signed_at) < self.ttl.as_secs() / 2 {
                return Some(token);
            }
        }
        let claims = ContextClaims {
            iss: &self.issuer,
            aud: &self.audience,
            sub: &principal.id,
            iat,
            exp: iat + self.ttl.as_secs(),
            tenant,
            roles: &principal.roles,
            scopes: &principal.scopes,
            auth: principal.auth.label(),
            platform: principal.platform,
        };
        match jsonwebtoken::encode(&self.jwt_header, &claims, &self.key) {
            Ok(token) => {
                let value = HeaderValue::from_str(&token).ok()?;
                self.cache.insert(cache_key, (value.clone(), iat));
                Some(value)
            }
            Err(e) => {
                tracing::error!(error = %e, "signing the context token failed");
                None
            }
        }
    }
}

/// Shared handle used by the snapshot.
pub type SharedSigner = Arc<ContextSigner>;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextTokenConfig {
    /// PEM private key (EC P-256 for ES256, Ed25519 for EdDSA, RSA for RS256). Relative to this file.
    pub key: PathBuf,
    pub algorithm: JwtAlgorithm,
    /// `kid` header, so upstreams can pick the key during rotation.
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default = "default_context_issuer")]
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_context_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Must start with `x-gateway-` so clients can never send it themselves.
    #[serde(default = "default_context_header")]
    pub header: String,
}

fn default_context_issuer() -> String {
    "policy-gateway".to_string()
}

fn default_context_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_context_header() -> String {
    "x-gateway-context".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthMethod;

    #[test]
    fn headers_carry_verified_context_and_skip_unrepresentable_values() {
        let mut p = Principal::anonymous();
        p.id = "user-1".into();
        p.roles = vec!["admin".into(), "viewer".into()];
        p.auth = AuthMethod::Jwt { issuer: "i".into() };
        let tenant: Tenant = Arc::new(toml::from_str("id = \"acme\"").unwrap());
        let headers = context_headers(&p, Some(&tenant), None);
        let get = |n: &HeaderName| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get(&TENANT_ID).as_deref(), Some("acme"));
        assert_eq!(get(&PRINCIPAL_ID).as_deref(), Some("user-1"));
        assert_eq!(get(&PRINCIPAL_ROLES).as_deref(), Some("admin,viewer"));
        assert_eq!(get(&PRINCIPAL_AUTH).as_deref(), Some("jwt"));
        assert_eq!(get(&PRINCIPAL_PLATFORM), None, "a tenant's own user");
        p.platform = true;
        let headers = context_headers(&p, Some(&tenant), None);
        assert!(headers
            .iter()
            .any(|(k, v)| k == PRINCIPAL_PLATFORM && v == "true"));
        p.id = "bad\nid".into();
        let headers = context_headers(&p, None, None);
        assert!(headers.iter().all(|(k, _)| k != PRINCIPAL_ID));
    }
}
