//! The caller, as the rest of the pipeline sees it, and how token claims become one.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use super::AuthError;
use crate::tenancy::model::ClaimMapping;

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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Principal {
    /// Unique within its tenant (JWT `sub` or `apikey:<id>`).
    pub id: String,
    /// The tenant the credential names, if any.
    pub tenant: Option<Arc<str>>,
    /// The credential can only ever act for `tenant` (a tenant's own issuer or API key).
    pub tenant_bound: bool,
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
    pub fn anonymous() -> Self {
        Principal {
            id: "anonymous".to_string(),
            tenant: None,
            tenant_bound: false,
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

/// Builds the principal of a verified token.
pub fn map_claims(
    claims: &Map<String, Value>,
    mapping: &ClaimMapping,
    issuer: &str,
    implied_tenant: Option<Arc<str>>,
) -> Result<Principal, AuthError> {
    let id = match claim(claims, &mapping.subject) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(AuthError::MissingClaim(mapping.subject.clone())),
    };
    // The id travels in headers, logs and audit records: no control characters.
    if id.chars().any(char::is_control) || id.len() > 256 {
        return Err(AuthError::InvalidClaim(mapping.subject.clone()));
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
    Ok(Principal {
        id,
        tenant,
        tenant_bound,
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

fn is_valid_role(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 128
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
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
        let p = map_claims(&c, &mapping, "https://idp", None).unwrap();
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
        let p = map_claims(&c, &mapping, "i", None).unwrap();
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
            map_claims(&c, &mapping, "i", Some("acme".into())).unwrap_err(),
            AuthError::TenantClaimMismatch
        );
        let c = claims(json!({"sub": "u"}));
        let p = map_claims(&c, &mapping, "i", Some("acme".into())).unwrap();
        assert_eq!(p.tenant.as_deref(), Some("acme"));
        assert!(p.tenant_bound);
    }

    #[test]
    fn missing_subject_is_an_error() {
        let c = claims(json!({"email": "x"}));
        assert_eq!(
            map_claims(&c, &ClaimMapping::default(), "i", None).unwrap_err(),
            AuthError::MissingClaim("sub".into())
        );
    }
}
