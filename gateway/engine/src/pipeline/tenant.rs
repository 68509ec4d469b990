//! Stage 3: which tenant the request is for.
//!
//! The tenant may be named by the host (`{tenant}.api.example.com` or a custom domain), a header,
//! a path prefix (`/t/{tenant}`) and the credential. Every source that is present must agree: a
//! token of tenant A sent to the host of tenant B is the classic cross-tenant attack. Unknown and
//! suspended tenants are refused here, before anything reaches the upstream.
//!
//! How credentials bind to tenants: a credential that names a tenant (a token's tenant claim, a
//! tenant issuer's token, an API key) is bound to it, whether or not `credential` is among the
//! configured sources. A token that names no tenant binds to none and is refused
//! ([`TenantError::UnboundCredential`]), unless its issuer is declared platform-wide: then it
//! acts in the tenant the request names, and policies see `principal.platform`. Anonymous
//! callers act in the tenant the request names, as Cedar's `Anonymous` entity.

use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Rejection;
use crate::db::PostgresConfig;
use crate::identity::Principal;
use crate::tenancy::model::TenantStatus;
use crate::tenancy::registry::{Tenant, TenantRegistry};

/// `[tenancy]` compiled for the request path.
#[derive(Debug, Clone)]
pub struct TenancyPolicy {
    sources: Vec<TenantSourceKind>,
    /// `.api.example.com` for the pattern `{tenant}.api.example.com`.
    host_suffix: Option<String>,
    header: http::HeaderName,
    /// `/t/` for the pattern `/t/{tenant}`.
    path_literal: Option<String>,
    strip_path_prefix: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("the request does not name a tenant")]
    Required,
    #[error("the request names more than one tenant")]
    Mismatch,
    #[error("unknown tenant")]
    Unknown,
    #[error("the tenant is suspended")]
    Suspended,
    #[error("the credential names no tenant, and its issuer is not platform-wide")]
    UnboundCredential,
}

/// Where a tenant id was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSource {
    Host,
    Header,
    Path,
    Credential,
}

/// Output of stage 3.
#[derive(Debug, Clone)]
pub struct ResolvedTenant {
    pub tenant: Tenant,
    pub sources: Vec<TenantSource>,
    /// The path with the tenant prefix removed, when it was stripped.
    pub stripped_path: Option<String>,
}

/// The parts of the request stage 3 reads.
pub struct TenantRequest<'a> {
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The normalised path (stage 1).
    pub path: &'a str,
}

impl TenancyPolicy {
    /// Compiles a validated `[tenancy]` section.
    pub fn new(config: &TenancyConfig) -> Self {
        TenancyPolicy {
            sources: config.sources.clone(),
            host_suffix: config.host_pattern.as_deref().and_then(host_suffix),
            header: http::HeaderName::from_bytes(config.header.to_ascii_lowercase().as_bytes())
                .unwrap_or_else(|_| http::HeaderName::from_static("x-tenant")),
            path_literal: config.path_prefix.as_deref().and_then(path_literal),
            strip_path_prefix: config.strip_path_prefix,
        }
    }
}

/// `.api.example.com` from `{tenant}.api.example.com`.
pub fn host_suffix(pattern: &str) -> Option<String> {
    let suffix = pattern.strip_prefix("{tenant}")?;
    (suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains(['{', '}', '/', ':']))
        .then(|| suffix.to_ascii_lowercase())
}

/// `/t/` from `/t/{tenant}`.
pub fn path_literal(pattern: &str) -> Option<String> {
    let literal = pattern.strip_suffix("{tenant}")?;
    (literal.starts_with('/') && literal.ends_with('/') && !literal.contains(['{', '}']))
        .then(|| literal.to_string())
}

impl TenancyPolicy {
    /// The path routes see: without the tenant path prefix when the policy strips it.
    pub fn routed_path<'p>(&self, path: &'p str) -> &'p str {
        if !self.strip_path_prefix {
            return path;
        }
        self.path_literal
            .as_deref()
            .and_then(|literal| tenant_from_path(path, literal))
            .map_or(path, |(_, rest)| rest)
    }
}

/// Runs stage 3.
pub fn resolve_tenant(
    request: &TenantRequest<'_>,
    principal: &Principal,
    policy: &TenancyPolicy,
    registry: &TenantRegistry,
) -> Result<ResolvedTenant, Rejection> {
    if principal.is_unbound() {
        return Err(TenantError::UnboundCredential.into());
    }
    let mut named: Option<Arc<str>> = None;
    let mut sources = Vec::with_capacity(2);
    let mut stripped_path = None;
    let mut note = |source: TenantSource, id: Arc<str>| -> Result<(), TenantError> {
        match &named {
            Some(existing) if *existing != id => Err(TenantError::Mismatch),
            Some(_) => {
                sources.push(source);
                Ok(())
            }
            None => {
                named = Some(id);
                sources.push(source);
                Ok(())
            }
        }
    };
    let mut credential_read = false;
    for kind in &policy.sources {
        match kind {
            TenantSourceKind::Host => {
                if let Some(id) = request
                    .host
                    .and_then(|h| tenant_from_host(h, policy, registry))
                {
                    note(TenantSource::Host, id)?;
                }
            }
            TenantSourceKind::Header => {
                let mut values = request.headers.get_all(&policy.header).iter();
                if let Some(value) = values.next() {
                    if values.next().is_some() {
                        return Err(TenantError::Mismatch.into());
                    }
                    let id = value.to_str().map_err(|_| TenantError::Unknown)?.trim();
                    note(TenantSource::Header, Arc::from(id))?;
                }
            }
            TenantSourceKind::Path => {
                if let Some((id, rest)) = policy
                    .path_literal
                    .as_deref()
                    .and_then(|literal| tenant_from_path(request.path, literal))
                {
                    note(TenantSource::Path, Arc::from(id))?;
                    if policy.strip_path_prefix {
                        stripped_path = Some(rest.to_string());
                    }
                }
            }
            TenantSourceKind::Credential => {
                credential_read = true;
                if let Some(id) = &principal.tenant {
                    note(TenantSource::Credential, id.clone())?;
                }
            }
        }
    }
    // A credential that names a tenant is bound to it: it counts even when `credential` is not
    // a configured source.
    if !credential_read {
        if let Some(id) = &principal.tenant {
            note(TenantSource::Credential, id.clone())?;
        }
    }
    let id = named.ok_or(TenantError::Required)?;
    let tenant = registry.get(&id).ok_or(TenantError::Unknown)?;
    if tenant.status == TenantStatus::Suspended {
        return Err(TenantError::Suspended.into());
    }
    Ok(ResolvedTenant {
        tenant: tenant.clone(),
        sources,
        stripped_path,
    })
}

/// The tenant a request host names: a custom domain of the registry, or the host pattern's label.
pub fn tenant_from_host(
    host: &str,
    policy: &TenancyPolicy,
    registry: &TenantRegistry,
) -> Option<Arc<str>> {
    // `acme.api.example.com.` (the absolute form of the name) is the same host.
    let host = host_without_port(host);
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if let Some(id) = registry.tenant_for_host(&host) {
        return Some(id.clone());
    }
    let suffix = policy.host_suffix.as_deref()?;
    let label = host.strip_suffix(suffix)?;
    (!label.is_empty() && !label.contains('.')).then(|| Arc::from(label))
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: never a tenant host.
        return host;
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// `("acme", "/projects/1")` from `/t/acme/projects/1` with literal `/t/`.
fn tenant_from_path<'a>(path: &'a str, literal: &str) -> Option<(&'a str, &'a str)> {
    let rest = path.strip_prefix(literal)?;
    let (id, remainder) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!id.is_empty()).then_some((id, remainder))
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenancyConfig {
    /// Where the tenant may be named, in the order they are read. All that are present must
    /// agree. `credential` is the tenant of the token or API key.
    #[serde(default = "default_tenant_sources")]
    pub sources: Vec<TenantSourceKind>,
    /// Host pattern such as `{tenant}.api.example.com`.
    #[serde(default)]
    pub host_pattern: Option<String>,
    /// Header naming the tenant (not `x-tenant-id`: that one the gateway sets for the upstream).
    #[serde(default = "default_tenant_header")]
    pub header: String,
    /// Path prefix such as `/t/{tenant}`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Remove the path prefix before routing and forwarding.
    #[serde(default = "default_true")]
    pub strip_path_prefix: bool,
    pub registry: RegistryConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantSourceKind {
    Host,
    Header,
    Path,
    Credential,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `tenants.toml` with `[[tenant]]` entries. Relative to this file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A PostgreSQL table, read at start and followed through LISTEN/NOTIFY.
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
}

fn default_true() -> bool {
    true
}

fn default_tenant_sources() -> Vec<TenantSourceKind> {
    vec![
        TenantSourceKind::Host,
        TenantSourceKind::Header,
        TenantSourceKind::Path,
        TenantSourceKind::Credential,
    ]
}

fn default_tenant_header() -> String {
    "x-tenant".to_string()
}

/// Checks `[tenancy]` against `[identity]` and the tiers, all problems at once.
pub fn validate(
    source: &crate::diagnostics::SourceText,
    tenancy: &TenancyConfig,
    identity: Option<&super::identify::IdentityConfig>,
    tiers: &crate::tenancy::model::TenantRules,
    issues: &mut Vec<crate::diagnostics::SourceIssue>,
) {
    if let Some(pattern) = &tenancy.host_pattern {
        if host_suffix(pattern).is_none() {
            issues.push(source.issue(
                "tenancy.host_pattern",
                format!("`{pattern}`: expected `{{tenant}}.` followed by a domain, e.g. `{{tenant}}.api.example.com`"),
            ));
        }
    }
    if let Some(prefix) = &tenancy.path_prefix {
        if crate::pipeline::tenant::path_literal(prefix).is_none() {
            issues.push(source.issue(
                "tenancy.path_prefix",
                format!("`{prefix}`: expected a path ending in the segment `{{tenant}}`, e.g. `/t/{{tenant}}`"),
            ));
        }
    }
    let header = tenancy.header.to_ascii_lowercase();
    if http::HeaderName::from_bytes(header.as_bytes()).is_err()
        || crate::pipeline::sanitize::SanitizePolicy::default().is_owned(&header)
    {
        issues.push(source.issue(
            "tenancy.header",
            format!(
                "`{}` cannot name the tenant: it is not a header name, or the gateway owns it",
                tenancy.header
            ),
        ));
    }
    if tenancy.sources.is_empty() {
        issues.push(source.issue("tenancy.sources", "needs at least one source"));
    }
    for (i, kind) in tenancy.sources.iter().enumerate() {
        let configured = match kind {
            TenantSourceKind::Path => tenancy.path_prefix.is_some(),
            // Hosts also match tenants' custom domains, without a pattern.
            TenantSourceKind::Host | TenantSourceKind::Header | TenantSourceKind::Credential => {
                true
            }
        };
        if !configured {
            issues.push(source.issue(
                format!("tenancy.sources[{i}]"),
                "`path` needs `tenancy.path_prefix`",
            ));
        }
    }
    match (&tenancy.registry.file, &tenancy.registry.postgres) {
        (Some(file), None) => {
            let path = source.resolve(file);
            if let Err(e) = crate::tenancy::registry::load_file(&path, tiers) {
                issues.extend(e.or_on_field(source, "tenancy.registry.file").0);
            }
        }
        (None, Some(pg)) => {
            if let Some(ca) = &pg.ca_file {
                let path = source.resolve(ca);
                if let Err(e) = std::fs::read(&path) {
                    issues.push(source.issue(
                        "tenancy.registry.postgres.ca_file",
                        format!("{}: {e}", path.display()),
                    ));
                }
            }
            if let Err(e) = pg.connection_url() {
                issues.push(source.issue("tenancy.registry.postgres", e));
            }
            if !crate::tenancy::postgres::is_identifier(&pg.table) {
                issues.push(source.issue(
                    "tenancy.registry.postgres.table",
                    "lower-case letters, digits and `_`, starting with a letter",
                ));
            }
        }
        _ => issues.push(source.issue(
            "tenancy.registry",
            "set exactly one of `file` and `postgres`",
        )),
    }
    if let Some(p) = identity.and_then(|i| i.provisioning.as_ref()) {
        if p.store == "postgres" && tenancy.registry.postgres.is_none() {
            issues.push(source.issue(
                "identity.provisioning.store",
                "`postgres` needs `tenancy.registry.postgres`",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::model::TenantSpec;
    use http::HeaderValue;

    fn spec(id: &str) -> TenantSpec {
        toml::from_str(&format!("id = \"{id}\"")).unwrap()
    }

    fn registry() -> TenantRegistry {
        let mut custom = spec("acme");
        custom.hosts = vec!["api.acme.test".into()];
        let mut suspended = spec("frozen");
        suspended.status = TenantStatus::Suspended;
        TenantRegistry::build([custom, spec("globex"), suspended]).unwrap()
    }

    fn policy() -> TenancyPolicy {
        TenancyPolicy::new(&TenancyConfig {
            sources: vec![
                TenantSourceKind::Host,
                TenantSourceKind::Header,
                TenantSourceKind::Path,
                TenantSourceKind::Credential,
            ],
            host_pattern: Some("{tenant}.api.example.com".into()),
            header: "x-tenant".into(),
            path_prefix: Some("/t/{tenant}".into()),
            strip_path_prefix: true,
            registry: RegistryConfig {
                file: None,
                postgres: None,
            },
        })
    }

    fn principal(tenant: Option<&str>, bound: bool) -> Principal {
        let mut p = Principal::anonymous();
        p.tenant = tenant.map(Arc::from);
        p.tenant_bound = bound;
        p
    }

    /// A global issuer's token (`platform`: its issuer is platform-wide).
    fn jwt(tenant: Option<&str>, platform: bool) -> Principal {
        let mut p = principal(tenant, false);
        p.auth = crate::identity::AuthMethod::Jwt {
            issuer: "https://idp".into(),
        };
        p.id = "sam".into();
        p.platform = platform && tenant.is_none();
        p
    }

    fn resolve(
        host: Option<&str>,
        header: Option<&str>,
        path: &str,
        p: &Principal,
    ) -> Result<ResolvedTenant, Rejection> {
        let mut headers = HeaderMap::new();
        if let Some(h) = header {
            headers.insert("x-tenant", HeaderValue::from_str(h).unwrap());
        }
        resolve_tenant(
            &TenantRequest {
                host,
                headers: &headers,
                path,
            },
            p,
            &policy(),
            &registry(),
        )
    }

    #[test]
    fn resolves_from_each_source() {
        let anon = principal(None, false);
        let r = resolve(Some("globex.api.example.com:8443"), None, "/x", &anon).unwrap();
        assert_eq!(r.tenant.id, "globex");
        assert_eq!(r.sources, vec![TenantSource::Host]);
        assert_eq!(
            resolve(Some("api.acme.test"), None, "/x", &anon)
                .unwrap()
                .tenant
                .id,
            "acme"
        );
        assert_eq!(
            resolve(None, Some("acme"), "/x", &anon).unwrap().tenant.id,
            "acme"
        );
        let r = resolve(None, None, "/t/globex/projects/1", &anon).unwrap();
        assert_eq!(r.tenant.id, "globex");
        assert_eq!(r.stripped_path.as_deref(), Some("/projects/1"));
        assert_eq!(
            resolve(None, None, "/t/globex", &anon)
                .unwrap()
                .stripped_path
                .as_deref(),
            Some("/")
        );
        let r = resolve(None, None, "/x", &principal(Some("acme"), false)).unwrap();
        assert_eq!(r.sources, vec![TenantSource::Credential]);
        // A custom domain in its absolute form (trailing dot) too.
        let r = resolve(Some("api.acme.test."), None, "/x", &anon).unwrap();
        assert_eq!(r.tenant.id, "acme");
    }

    #[test]
    fn all_present_sources_must_agree() {
        let token_of_acme = principal(Some("acme"), false);
        let r = resolve(
            Some("acme.api.example.com"),
            Some("acme"),
            "/t/acme/x",
            &token_of_acme,
        )
        .unwrap();
        assert_eq!(r.sources.len(), 4);
        for (host, header, path) in [
            (Some("globex.api.example.com"), None, "/x"),
            // The absolute form of the name (a trailing dot) is the same host.
            (Some("globex.api.example.com."), None, "/x"),
            (Some("GLOBEX.api.example.com.:443"), None, "/x"),
            (None, Some("globex"), "/x"),
            (None, None, "/t/globex/x"),
        ] {
            assert_eq!(
                resolve(host, header, path, &token_of_acme).unwrap_err(),
                Rejection::Tenant(TenantError::Mismatch),
                "{host:?} {header:?} {path}"
            );
        }
    }

    #[test]
    fn credentials_naming_a_tenant_count_even_when_not_a_source() {
        let mut p = policy();
        p.sources = vec![TenantSourceKind::Header];
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("globex"));
        let request = TenantRequest {
            host: None,
            headers: &headers,
            path: "/",
        };
        let err =
            resolve_tenant(&request, &principal(Some("acme"), true), &p, &registry()).unwrap_err();
        assert_eq!(err, Rejection::Tenant(TenantError::Mismatch));
        // So does the tenant claim of a global issuer's token.
        let err = resolve_tenant(&request, &jwt(Some("acme"), false), &p, &registry()).unwrap_err();
        assert_eq!(err, Rejection::Tenant(TenantError::Mismatch));
        assert!(resolve_tenant(&request, &jwt(Some("globex"), false), &p, &registry()).is_ok());
    }

    #[test]
    fn tokens_naming_no_tenant_act_only_as_platform_principals() {
        let unbound = jwt(None, false);
        for (host, header, path) in [
            (None, Some("acme"), "/x"),
            (Some("acme.api.example.com"), None, "/x"),
            (None, None, "/t/acme/x"),
            (None, None, "/x"),
        ] {
            assert_eq!(
                resolve(host, header, path, &unbound).unwrap_err(),
                Rejection::Tenant(TenantError::UnboundCredential),
                "{host:?} {header:?} {path}"
            );
        }
        let staff = jwt(None, true);
        assert_eq!(
            resolve(None, Some("globex"), "/x", &staff)
                .unwrap()
                .tenant
                .id,
            "globex"
        );
        assert_eq!(
            resolve(None, None, "/x", &staff).unwrap_err(),
            Rejection::Tenant(TenantError::Required)
        );
        // Anonymous callers name no tenant either; they act in the one the request names.
        let anon = principal(None, false);
        assert_eq!(
            resolve(None, Some("acme"), "/x", &anon).unwrap().tenant.id,
            "acme"
        );
    }

    #[test]
    fn unknown_suspended_and_missing_tenants_are_refused() {
        let anon = principal(None, false);
        assert_eq!(
            resolve(None, Some("nobody"), "/", &anon).unwrap_err(),
            Rejection::Tenant(TenantError::Unknown)
        );
        assert_eq!(
            resolve(None, Some("frozen"), "/", &anon).unwrap_err(),
            Rejection::Tenant(TenantError::Suspended)
        );
        assert_eq!(
            resolve(Some("localhost"), None, "/", &anon).unwrap_err(),
            Rejection::Tenant(TenantError::Required)
        );
        // Only one label may precede the pattern's domain.
        assert_eq!(
            resolve(Some("a.b.api.example.com"), None, "/", &anon).unwrap_err(),
            Rejection::Tenant(TenantError::Required)
        );
    }

    #[test]
    fn patterns_parse() {
        assert_eq!(
            host_suffix("{tenant}.api.example.com").as_deref(),
            Some(".api.example.com")
        );
        assert_eq!(host_suffix("api.{tenant}.com"), None);
        assert_eq!(host_suffix("{tenant}"), None);
        assert_eq!(path_literal("/t/{tenant}").as_deref(), Some("/t/"));
        assert_eq!(path_literal("/t/{tenant}/x"), None);
        assert_eq!(path_literal("t{tenant}"), None);
    }
}
