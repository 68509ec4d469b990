//! The caller, as the rest of the pipeline sees it, and how token claims become one.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use super::AuthError;
use crate::tenancy::model::{is_valid_role, ClaimMapping};

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum AuthMethod {
    Jwt { issuer: String },
    ApiKey { key_id: String },
    Anonymous,
}

impl AuthMethod {
    pub fn label(&self) -> &'static str {
        match self {
            AuthMethod::Jwt { .. } => "jwt",
            AuthMethod::ApiKey { .. } => "api-key",
            AuthMethod::Anonymous => "anonymous",
        }
    }
}

/// The principal id of every caller without credentials. No token can claim it (see
/// [`is_reserved_id`]), and Cedar sees such a caller as an `Anonymous` entity, never a `User`.
pub const ANONYMOUS_ID: &str = "anonymous";

/// Prefix of API key principal ids (`apikey:<key id>`), reserved for API keys.
pub const API_KEY_ID_PREFIX: &str = "apikey:";

/// Ids a token subject can never take: they would make the token's holder the anonymous caller
/// or an API key in the upstream's `x-principal-id`, rate limits, usage records and policies.
/// Compared without regard to ASCII case, since upstreams may compare ids that way.
pub fn is_reserved_id(id: &str) -> bool {
    id.eq_ignore_ascii_case(ANONYMOUS_ID)
        || id
            .get(..API_KEY_ID_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(API_KEY_ID_PREFIX))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Principal {
    /// Unique within its tenant (JWT `sub`, `apikey:<id>`, or [`ANONYMOUS_ID`]).
    pub id: String,
    /// The tenant the credential names, if any. A credential that names a tenant is bound to
    /// it: requests for any other tenant are refused (stage 3).
    pub tenant: Option<Arc<str>>,
    /// The tenant is implied by the credential itself (a tenant's own issuer or an API key)
    /// rather than read from a claim. Either way a credential with a tenant acts for no other.
    pub tenant_bound: bool,
    /// A token of a platform-wide issuer that names no tenant: it may act in the tenant a
    /// request names, and policies see `principal.platform`. Never set for a token that names
    /// a tenant, an API key or an anonymous caller.
    pub platform: bool,
    pub roles: Vec<String>,
    /// Further claims mapped by the issuer's `claims.attributes`.
    pub attributes: Map<String, Value>,
    /// API key scopes (actions it may be used for); empty when unrestricted.
    pub scopes: Vec<String>,
    pub auth: AuthMethod,
    /// Token expiry (seconds since the epoch), for JWTs.
    pub expires_at: Option<u64>,
    /// Its issuer asks for just-in-time provisioning.
    #[serde(skip)]
    pub provision: bool,
}

impl Principal {
    /// Adds roles granted outside the credential (the groups the directory lists the principal
    /// in). Names that cannot be roles are dropped, as for claims.
    pub fn grant_roles(&mut self, roles: impl IntoIterator<Item = String>) {
        self.roles
            .extend(roles.into_iter().filter(|r| is_valid_role(r)));
        self.roles.sort();
        self.roles.dedup();
    }

    pub fn anonymous() -> Self {
        Principal {
            id: ANONYMOUS_ID.to_string(),
            tenant: None,
            tenant_bound: false,
            platform: false,
            roles: Vec::new(),
            attributes: Map::new(),
            scopes: Vec::new(),
            auth: AuthMethod::Anonymous,
            expires_at: None,
            provision: false,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self.auth, AuthMethod::Anonymous)
    }

    /// A credential was presented, yet it names no tenant and is not platform-wide: it binds
    /// to no tenant, so it may act in none (stage 3 refuses it when tenants are configured).
    pub fn is_unbound(&self) -> bool {
        !self.is_anonymous() && self.tenant.is_none() && !self.platform
    }
}

/// Looks a claim up by name, first as a whole key (URL-namespaced claims contain dots), then as
/// a dotted path into nested objects.
pub fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// Builds the principal of a verified token. `platform_issuer`: the issuer is declared
/// platform-wide, so its tokens that name no tenant are platform principals.
pub fn map_claims(
    claims: &Map<String, Value>,
    mapping: &ClaimMapping,
    issuer: &str,
    implied_tenant: Option<Arc<str>>,
    platform_issuer: bool,
) -> Result<Principal, AuthError> {
    let id = match claim(claims, &mapping.subject) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(AuthError::MissingClaim(mapping.subject.clone())),
    };
    // The id travels in headers, logs and audit records: no control characters, and no
    // white space at its ends, which header parsers strip (" admin" would reach the upstream
    // as `admin`, and " anonymous" pass the reserved-id check below as itself).
    if id.chars().any(char::is_control) || id.trim() != id || id.len() > 256 {
        return Err(AuthError::InvalidClaim(mapping.subject.clone()));
    }
    if is_reserved_id(&id) {
        return Err(AuthError::ReservedSubject(id));
    }
    let claimed_tenant = match &mapping.tenant {
        Some(path) => match claim(claims, path) {
            Some(Value::String(s)) if !s.is_empty() => Some(Arc::<str>::from(s.as_str())),
            Some(_) => return Err(AuthError::InvalidClaim(path.clone())),
            None => None,
        },
        None => None,
    };
    let tenant_bound = implied_tenant.is_some();
    let tenant = match (implied_tenant, claimed_tenant) {
        // A tenant's own issuer vouches only for that tenant.
        (Some(implied), Some(claimed)) if implied != claimed => {
            return Err(AuthError::TenantClaimMismatch)
        }
        (Some(implied), _) => Some(implied),
        (None, claimed) => claimed,
    };
    let raw_roles: Vec<String> = match claim(claims, &mapping.roles) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let mut roles: Vec<String> = if mapping.role_map.is_empty() {
        raw_roles
    } else {
        raw_roles
            .iter()
            .filter_map(|r| mapping.role_map.get(r).cloned())
            .collect()
    };
    // Roles travel comma-separated in a header; anything else is dropped (never widening access).
    roles.retain(|r| is_valid_role(r));
    roles.sort();
    roles.dedup();
    let mut attributes = Map::new();
    for (name, path) in &mapping.attributes {
        if let Some(v) = claim(claims, path) {
            attributes.insert(name.clone(), v.clone());
        }
    }
    // Only a token that names no tenant speaks for the platform; a tenant's own issuer never
    // does (validation refuses `platform` there, and its tokens always have a tenant anyway).
    let platform = platform_issuer && tenant.is_none();
    Ok(Principal {
        id,
        tenant,
        tenant_bound,
        platform,
        roles,
        attributes,
        scopes: Vec::new(),
        auth: AuthMethod::Jwt {
            issuer: issuer.to_string(),
        },
        expires_at: claims.get("exp").and_then(Value::as_u64),
        provision: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn maps_subject_tenant_roles_and_attributes() {
        let mut mapping = ClaimMapping {
            tenant: Some("org_id".into()),
            roles: "realm_access.roles".into(),
            ..Default::default()
        };
        mapping
            .attributes
            .insert("mfa".into(), "https://example.com/mfa".into());
        mapping
            .attributes
            .insert("dept".into(), "profile.department".into());
        let c = claims(json!({
            "sub": "u1", "org_id": "acme", "exp": 123,
            "realm_access": {"roles": ["editor", "viewer", "editor"]},
            "https://example.com/mfa": true,
            "profile": {"department": "sales"}
        }));
        let p = map_claims(&c, &mapping, "https://idp", None, false).unwrap();
        assert_eq!(p.id, "u1");
        assert_eq!(p.tenant.as_deref(), Some("acme"));
        assert!(!p.tenant_bound);
        assert_eq!(p.roles, vec!["editor", "viewer"]);
        assert_eq!(p.attributes["mfa"], json!(true));
        assert_eq!(p.attributes["dept"], json!("sales"));
        assert_eq!(p.expires_at, Some(123));
    }

    #[test]
    fn role_map_renames_and_filters_groups() {
        let mut mapping = ClaimMapping {
            roles: "groups".into(),
            ..Default::default()
        };
        mapping
            .role_map
            .insert("okta-admins".into(), "admin".into());
        let c = claims(json!({"sub": "u", "groups": "okta-admins everyone"}));
        let p = map_claims(&c, &mapping, "i", None, false).unwrap();
        assert_eq!(p.roles, vec!["admin"]);
    }

    #[test]
    fn tenant_issuers_bind_the_tenant() {
        let mapping = ClaimMapping {
            tenant: Some("org".into()),
            ..Default::default()
        };
        let c = claims(json!({"sub": "u", "org": "globex"}));
        assert_eq!(
            map_claims(&c, &mapping, "i", Some("acme".into()), false).unwrap_err(),
            AuthError::TenantClaimMismatch
        );
        let c = claims(json!({"sub": "u"}));
        let p = map_claims(&c, &mapping, "i", Some("acme".into()), false).unwrap();
        assert_eq!(p.tenant.as_deref(), Some("acme"));
        assert!(p.tenant_bound);
    }

    #[test]
    fn missing_subject_is_an_error() {
        let c = claims(json!({"email": "x"}));
        assert_eq!(
            map_claims(&c, &ClaimMapping::default(), "i", None, false).unwrap_err(),
            AuthError::MissingClaim("sub".into())
        );
    }

    #[test]
    fn subjects_with_white_space_at_their_ends_are_refused() {
        for sub in [
            " anonymous",
            "apikey:ci ",
            " admin",
            "alice\u{a0}",
            "\u{3000}bob",
        ] {
            let c = claims(json!({ "sub": sub }));
            assert_eq!(
                map_claims(&c, &ClaimMapping::default(), "i", None, false).unwrap_err(),
                AuthError::InvalidClaim("sub".into()),
                "{sub:?}"
            );
        }
        let c = claims(json!({ "sub": "Alice Smith" }));
        assert_eq!(
            map_claims(&c, &ClaimMapping::default(), "i", None, false)
                .unwrap()
                .id,
            "Alice Smith"
        );
    }

    #[test]
    fn reserved_subjects_are_refused() {
        for sub in [
            "anonymous",
            "Anonymous",
            "ANONYMOUS",
            "apikey:ci",
            "APIKEY:ci",
            "apikey:",
        ] {
            let c = claims(json!({"sub": sub}));
            assert_eq!(
                map_claims(&c, &ClaimMapping::default(), "i", None, false).unwrap_err(),
                AuthError::ReservedSubject(sub.to_string()),
                "{sub}"
            );
        }
        for sub in [
            "anonymous-coward",
            "apikey",
            "my-apikey:x",
            "User::\"alice\"",
            "a\"b",
        ] {
            let c = claims(json!({"sub": sub}));
            let p = map_claims(&c, &ClaimMapping::default(), "i", None, false).unwrap();
            assert_eq!(p.id, sub);
        }
    }

    #[test]
    fn only_tenantless_tokens_of_platform_issuers_are_platform_principals() {
        let mapping = ClaimMapping {
            tenant: Some("org".into()),
            ..Default::default()
        };
        let staff = claims(json!({"sub": "sam"}));
        let p = map_claims(&staff, &mapping, "i", None, true).unwrap();
        assert!(p.platform && p.tenant.is_none() && !p.is_unbound());
        let p = map_claims(&staff, &mapping, "i", None, false).unwrap();
        assert!(!p.platform && p.is_unbound());
        let member = claims(json!({"sub": "sam", "org": "acme"}));
        let p = map_claims(&member, &mapping, "i", None, true).unwrap();
        assert!(!p.platform && !p.is_unbound());
        assert_eq!(p.tenant.as_deref(), Some("acme"));
        assert!(!Principal::anonymous().is_unbound());
    }
}
