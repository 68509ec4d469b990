//! What a tenant is, as written in `tenants.toml` or stored in PostgreSQL (one JSON document per
//! tenant with the same shape).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One tenant, as configured.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Stable identifier: lower-case letters, digits and `-`, 1–63 characters (a DNS label, so it
    /// can appear in a host name).
    pub id: String,
    /// Display name, at most 256 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pricing tier (e.g. `free`, `pro`, `enterprise`): defaults for limits and features. Must
    /// be one of the `[tiers]` of `gateway.toml` when any are configured.
    #[serde(default = "default_tier")]
    pub tier: String,
    /// Region where the tenant's data lives (see `residency-maps/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_region: Option<String>,
    /// Data-residency regime (e.g. `gdpr`, `dpdp`, `pipl`, `ccpa`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regime: Option<String>,
    #[serde(default)]
    pub status: TenantStatus,
    /// Overrides of the tier's limits.
    #[serde(default, skip_serializing_if = "TenantLimits::is_empty")]
    pub limits: TenantLimits,
    /// Feature flags on top of the tier's (1-64 letters, digits, `-`, `_`, `.` or `:` each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Host names that belong to this tenant besides the host pattern (custom domains):
    /// lower-case DNS names (IDNs in their `xn--` form), at most 253 characters, labels of 1-63
    /// letters, digits and `-`; no port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The tenant's own OIDC issuers ("organization-level OIDC"): trusted for this tenant only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerConfig>,
    /// API keys for machine clients, stored as SHA-256 hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKeySpec>,
    /// Tenant-specific Cedar policies (text), evaluated with the global set for this tenant only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<String>,
    /// Ids in billing systems: `stripe_customer`, `chargebee_subscription`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub billing: BTreeMap<String, String>,
    /// The tenant's webhook subscribers (quota thresholds, suspension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookSubscription>,
    /// SCIM 2.0 provisioning of the tenant's users by its identity provider, at
    /// `/scim/v2/<tenant>/` on the admin listener.
    /// Boxed, as `sso` and `audit` are: most tenants have none, and an inline `Option` costs
    /// its full size in every tenant held in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scim: Option<Box<ScimSettings>>,
    /// Browser login (single sign-on) through the tenant's identity provider: the gateway's
    /// `/.gateway/login` sends the tenant's people there (needs `[sessions]` in gateway.toml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso: Option<Box<SsoSettings>>,
    /// Monthly spending budgets (in currency or requests), for the tenant or one of its cost
    /// centres: thresholds announced by webhook, optionally enforced (402).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<super::budgets::BudgetSpec>,
    /// The tenant's own administrators read its audit trail (its records only) at
    /// `/tenants/<id>/audit` on the admin listener with this token, when its plan has the
    /// `audit-export` feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Box<TenantAuditAccess>>,
}

/// A tenant's access to its own audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantAuditAccess {
    /// Hex SHA-256 of the bearer token its administrators send (the token is never stored).
    pub token_sha256: String,
}

/// The feature a tenant's plan needs for its administrators to export its audit trail.
pub const AUDIT_EXPORT_FEATURE: &str = "audit-export";

/// A tenant's single sign-on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoSettings {
    /// OpenID Connect: authorization code flow with PKCE, `state` and `nonce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcLoginSettings>,
    /// SAML 2.0 (the gateway as service provider; HTTP-Redirect to the IdP, HTTP-POST back).
    /// Exactly one of `oidc` and `saml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saml: Option<SamlLoginSettings>,
    /// E-mail domains of the tenant's people (lower-case DNS names): the login page sends
    /// `someone@<domain>` to this tenant's identity provider. Each domain belongs to one tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email_domains: Vec<String>,
}

/// The gateway as an OpenID Connect client (relying party) of one of the tenant's issuers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcLoginSettings {
    /// One of the tenant's `issuers[].issuer`: its ID tokens become the session's principal
    /// exactly as its bearer tokens do (same claim mapping, same policies). Its endpoints come
    /// from OIDC discovery.
    pub issuer: String,
    /// The client registered at the identity provider; must be one of the issuer's `audiences`
    /// (the ID token's `aud`). Register the redirect URI `https://<host>/.gateway/callback`,
    /// the post-logout URI `https://<host>/.gateway/logged-out` and, for back-channel logout,
    /// `https://<host>/.gateway/backchannel-logout`.
    pub client_id: String,
    pub client_secret: String,
    /// How the client authenticates at the token endpoint (`client_secret_basic` or
    /// `client_secret_post`; default basic).
    #[serde(default, skip_serializing_if = "is_default_client_auth")]
    pub client_auth: OidcClientAuth,
    /// Scopes asked for (default `openid email profile offline_access`; must contain `openid`;
    /// `offline_access` gets the refresh token that keeps sessions alive past the ID token).
    #[serde(default = "default_login_scopes")]
    pub scopes: Vec<String>,
}

/// The gateway as a SAML 2.0 service provider of the tenant's identity provider.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamlLoginSettings {
    /// The identity provider's entity id: the `Issuer` of its responses and assertions.
    pub idp_entity_id: String,
    /// Its single sign-on service (HTTP-Redirect binding), where AuthnRequests go.
    pub idp_sso_url: String,
    /// Its signing certificate (PEM). Only this key verifies responses: certificates inside
    /// a response's `KeyInfo` are never trusted.
    pub idp_certificate: String,
    /// The service provider's entity id (the `Audience` assertions must name). Default:
    /// `<origin>/.gateway/saml/<tenant>/metadata`, the metadata URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sp_entity_id: Option<String>,
    /// How the assertion becomes the principal, as for tokens: the `NameID` is the claim
    /// `sub` (and `NameID`), each attribute a claim named by its `Name` (a list when it has
    /// several values), e.g. `roles = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"`.
    #[serde(default)]
    pub claims: ClaimMapping,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OidcClientAuth {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

fn is_default_client_auth(auth: &OidcClientAuth) -> bool {
    *auth == OidcClientAuth::default()
}

fn default_login_scopes() -> Vec<String> {
    ["openid", "email", "profile", "offline_access"]
        .map(String::from)
        .to_vec()
}

/// A tenant's SCIM endpoint settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScimSettings {
    /// Hex SHA-256 of the bearer token the identity provider's SCIM client sends (the token
    /// itself is never stored).
    pub token_sha256: String,
    /// SCIM group `displayName` → the role its members get (compared case-insensitively).
    /// Empty: a group's displayName is the role itself (when it is a valid role name); not
    /// empty: groups not listed give no role.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_roles: BTreeMap<String, String>,
}

impl ScimSettings {
    /// The roles the groups named `groups` give their members.
    pub fn roles_of_groups(&self, groups: Vec<String>) -> Vec<String> {
        if self.group_roles.is_empty() {
            return groups;
        }
        groups
            .iter()
            .filter_map(|g| {
                self.group_roles
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(g))
                    .map(|(_, role)| role.clone())
            })
            .collect()
    }
}

/// A webhook subscriber (Standard Webhooks signing).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSubscription {
    pub url: String,
    /// `whsec_` + base64 of at least 24 random bytes (the HMAC-SHA256 key).
    pub secret: String,
    /// Event types to send (`quota.threshold`, `tenant.suspended`, `policy.reload_failed`);
    /// empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

impl TenantSpec {
    /// A tenant with defaults for everything but its id.
    pub fn new(id: impl Into<String>) -> Self {
        TenantSpec {
            id: id.into(),
            name: None,
            tier: default_tier(),
            home_region: None,
            regime: None,
            status: TenantStatus::Active,
            limits: TenantLimits::default(),
            features: Vec::new(),
            hosts: Vec::new(),
            issuers: Vec::new(),
            api_keys: Vec::new(),
            policies: None,
            billing: BTreeMap::new(),
            webhooks: Vec::new(),
            scim: None,
            sso: None,
            budgets: Vec::new(),
            audit: None,
        }
    }
}

fn default_tier() -> String {
    "free".to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    #[default]
    Active,
    /// Every request is refused with 403 before it reaches the upstream.
    Suspended,
}

/// A tenant's own limits, overriding its tier's (bounds as for tiers).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Tenant-wide rate, from 0.001 to 1,000,000 requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Requests at once, from 1 to 1,000,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Requests per UTC day, from 1 to 10^12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_requests: Option<u64>,
    /// Requests per UTC calendar month, from 1 to 10^12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_requests: Option<u64>,
}

impl TenantLimits {
    pub fn is_empty(&self) -> bool {
        self == &TenantLimits::default()
    }
}

/// An API key: the gateway stores only the SHA-256 of the key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Identifier of the key (becomes the principal id `apikey:<id>`): 1-64 letters, digits,
    /// `-`, `_` or `.`.
    pub id: String,
    /// Hex SHA-256 of the key as the client sends it.
    pub sha256: String,
    /// Actions the key may be used for (empty: no restriction beyond policies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Roles of the key's principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// RFC 3339 expiry; expired keys are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The principal (user name) the key belongs to: deactivating or deleting that user in the
    /// directory (SCIM) refuses the key too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A trusted token issuer (global in `gateway.toml`, or a tenant's own).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value of its tokens.
    pub issuer: String,
    /// Where its signing keys are. Absent: OIDC discovery at
    /// `<issuer>/.well-known/openid-configuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values; a token must carry at least one.
    pub audiences: Vec<String>,
    /// Algorithms accepted from this issuer (pinned). `none` never is; HMAC algorithms only with
    /// `secret_file` and never together with asymmetric ones.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Shared secret for HS256/384/512 issuers (a file holding the raw secret). Global issuers
    /// only; relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`/`iat` (at most 5 minutes).
    #[serde(
        default = "default_leeway",
        with = "humantime_serde",
        skip_serializing_if = "is_default_leeway"
    )]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// How claims become the principal.
    #[serde(default, skip_serializing_if = "ClaimMapping::is_default")]
    pub claims: ClaimMapping,
    /// Record first-seen principals of this issuer (just-in-time provisioning).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub provision: bool,
    /// Declares the issuer platform-wide (global issuers only; default `false`). A token that
    /// names no tenant (no `claims.tenant` claim) binds to no tenant and is refused with 403 on
    /// tenant routes, unless its issuer is platform-wide: then it acts in the tenant the request
    /// names and policies see `principal.platform == true` (so a policy can allow platform staff
    /// across tenants deliberately). A token that names a tenant is bound to it either way.
    #[serde(default, skip_serializing_if = "is_false")]
    pub platform: bool,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn is_default_leeway(d: &Duration) -> bool {
    *d == default_leeway()
}
fn default_true() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// Maximum clock skew an issuer may be configured with.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl JwtAlgorithm {
    pub fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            JwtAlgorithm::RS256 => A::RS256,
            JwtAlgorithm::RS384 => A::RS384,
            JwtAlgorithm::RS512 => A::RS512,
            JwtAlgorithm::PS256 => A::PS256,
            JwtAlgorithm::PS384 => A::PS384,
            JwtAlgorithm::PS512 => A::PS512,
            JwtAlgorithm::ES256 => A::ES256,
            JwtAlgorithm::ES384 => A::ES384,
            JwtAlgorithm::EdDSA => A::EdDSA,
            JwtAlgorithm::HS256 => A::HS256,
            JwtAlgorithm::HS384 => A::HS384,
            JwtAlgorithm::HS512 => A::HS512,
        }
    }

    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

/// Which claims become the principal's id, tenant, roles and attributes. Claim names may be
/// dotted paths into nested objects (`realm_access.roles`); a claim name containing dots (such
/// as a URL namespaced claim) is looked up whole first.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimMapping {
    #[serde(default = "default_subject_claim")]
    pub subject: String,
    /// Claim holding the tenant id. Tenant-scoped issuers imply their tenant without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Claim holding roles or groups: an array of strings or a space-separated string.
    #[serde(default = "default_roles_claim")]
    pub roles: String,
    /// Optional renaming of IdP groups to gateway roles; groups not listed are dropped when the
    /// map is non-empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub role_map: BTreeMap<String, String>,
    /// Principal attribute name → claim path (e.g. `mfa = "amr"`, `department = "dept"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

fn default_subject_claim() -> String {
    "sub".to_string()
}
fn default_roles_claim() -> String {
    "roles".to_string()
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            subject: default_subject_claim(),
            tenant: None,
            roles: default_roles_claim(),
            role_map: BTreeMap::new(),
            attributes: BTreeMap::new(),
        }
    }
}

impl ClaimMapping {
    fn is_default(&self) -> bool {
        self == &ClaimMapping::default()
    }
}

/// What the configuration lets a tenant definition say: the tier names of `[tiers]` (with no
/// tiers configured a tier is a label only, nothing depends on it, so any valid name is
/// accepted), and whether it may set quotas of its own (they are counted in Redis, as a tier's:
/// in-process, each replica would count apart and a restart reset them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRules {
    tiers: Option<Arc<BTreeSet<String>>>,
    quotas: bool,
    /// `.api.example.com` of `[tenancy] host_pattern = "{tenant}.api.example.com"`: the hosts
    /// under it belong to the tenants they name.
    host_suffix: Option<Arc<str>>,
}

impl Default for TenantRules {
    fn default() -> Self {
        TenantRules::any()
    }
}

impl TenantRules {
    /// Any tier, quotas too (no `[tiers]` configured; registries built in code).
    pub fn any() -> Self {
        TenantRules {
            tiers: None,
            quotas: true,
            host_suffix: None,
        }
    }

    /// Exactly `names`, or any tier when there are none.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a String>) -> Self {
        let names: BTreeSet<String> = names.into_iter().cloned().collect();
        TenantRules {
            tiers: (!names.is_empty()).then(|| Arc::new(names)),
            quotas: true,
            host_suffix: None,
        }
    }

    /// The same, knowing the host pattern's suffix (`.api.example.com`): a tenant's own host
    /// under it must be the one its id names, or it would take another tenant's traffic
    /// (custom hosts are looked up before the pattern).
    pub fn with_host_suffix(self, suffix: Option<String>) -> Self {
        TenantRules {
            host_suffix: suffix.map(Arc::from),
            ..self
        }
    }

    /// The same, with quotas allowed only if `counted` (`[limits] backend = "redis"`).
    pub fn with_quotas(self, counted: bool) -> Self {
        TenantRules {
            quotas: counted,
            ..self
        }
    }

    fn check(&self, tier: &str) -> Result<(), String> {
        if !crate::tenancy::bounds::is_valid_tier_name(tier) {
            return Err(format!(
                "`{}`: a tier name is 1-64 ASCII letters, digits, `-` or `_`",
                truncated(tier)
            ));
        }
        match &self.tiers {
            Some(names) if !names.contains(tier) => Err(format!(
                "unknown tier `{tier}` (configured: {})",
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Ok(()),
        }
    }
}

/// At most 64 characters of an invalid value, for error messages.
fn truncated(value: &str) -> String {
    if value.chars().nth(64).is_some() {
        format!("{}…", value.chars().take(64).collect::<String>())
    } else {
        value.to_string()
    }
}

/// Longest display name, billing id and region or regime name.
const MAX_TEXT: usize = 256;
/// Most hosts, features, API keys, issuers and webhooks of one tenant.
const MAX_ITEMS: usize = 1000;
/// Largest tenant policy text.
const MAX_POLICY_BYTES: usize = 1 << 20;

/// A host name a tenant may claim: lower-case DNS name without port (IDNs as `xn--`).
pub fn is_valid_host_name(host: &str) -> bool {
    (1..=253).contains(&host.len())
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn is_token(value: &str, extra: &[u8]) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// Problems with one tenant or issuer definition, each with the field it concerns (relative to
/// the definition, e.g. `issuers[0].algorithms`). `rules`: what the configuration lets it say.
pub fn validate_tenant(spec: &TenantSpec, rules: &TenantRules) -> Vec<(String, String)> {
    let mut issues = Vec::new();
    if !is_valid_tenant_id(&spec.id) {
        issues.push((
            "id".to_string(),
            format!(
                "`{}`: use 1-63 lower-case letters, digits or `-`, starting with a letter or digit",
                truncated(&spec.id)
            ),
        ));
    }
    if let Err(message) = rules.check(&spec.tier) {
        issues.push(("tier".to_string(), message));
    }
    issues.extend(super::budgets::validate(&spec.budgets));
    let too_long = |value: &str| value.chars().count() > MAX_TEXT;
    if spec.name.as_deref().is_some_and(too_long) {
        issues.push(("name".to_string(), format!("at most {MAX_TEXT} characters")));
    }
    for (field, value) in [("home_region", &spec.home_region), ("regime", &spec.regime)] {
        if value.as_deref().is_some_and(|v| !is_token(v, b"-_")) {
            issues.push((
                field.to_string(),
                "1-64 ASCII letters, digits, `-` or `_`".to_string(),
            ));
        }
    }
    for (key, value) in &spec.billing {
        if !is_token(key, b"-_") || too_long(value) {
            issues.push((
                format!("billing.{}", truncated(key)),
                format!("a key of 1-64 letters, digits, `-` or `_`; a value of at most {MAX_TEXT} characters"),
            ));
        }
    }
    for (field, count) in [
        ("hosts", spec.hosts.len()),
        ("features", spec.features.len()),
        ("api_keys", spec.api_keys.len()),
        ("issuers", spec.issuers.len()),
        ("webhooks", spec.webhooks.len()),
    ] {
        if count > MAX_ITEMS {
            issues.push((field.to_string(), format!("at most {MAX_ITEMS} entries")));
        }
    }
    if spec
        .policies
        .as_ref()
        .is_some_and(|p| p.len() > MAX_POLICY_BYTES)
    {
        issues.push((
            "policies".to_string(),
            format!("at most {MAX_POLICY_BYTES} bytes"),
        ));
    }
    for (i, feature) in spec.features.iter().enumerate() {
        if !is_token(feature, b"-_.:") {
            issues.push((
                format!("features[{i}]"),
                format!(
                    "`{}`: 1-64 ASCII letters, digits, `-`, `_`, `.` or `:`",
                    truncated(feature)
                ),
            ));
        }
    }
    for (i, issuer) in spec.issuers.iter().enumerate() {
        for (field, message) in validate_issuer(issuer, false) {
            issues.push((format!("issuers[{i}].{field}"), message));
        }
    }
    let mut key_ids = std::collections::HashSet::new();
    for (i, key) in spec.api_keys.iter().enumerate() {
        if !is_token(&key.id, b"-_.") {
            issues.push((
                format!("api_keys[{i}].id"),
                format!(
                    "`{}`: 1-64 ASCII letters, digits, `-`, `_` or `.`",
                    truncated(&key.id)
                ),
            ));
        } else if !key_ids.insert(key.id.as_str()) {
            issues.push((
                format!("api_keys[{i}].id"),
                format!("duplicate key id `{}`", key.id),
            ));
        }
        // Both travel comma-separated in headers to the upstream (`x-principal-roles`,
        // `x-principal-scopes`): a role `viewer,admin` would read as two there.
        for (field, values) in [("roles", &key.roles), ("scopes", &key.scopes)] {
            for (j, value) in values.iter().enumerate() {
                if !is_valid_role(value) {
                    issues.push((
                        format!("api_keys[{i}].{field}[{j}]"),
                        format!(
                            "`{}`: 1-128 ASCII letters, digits, `-`, `_`, `.`, `:` or `/`",
                            truncated(value)
                        ),
                    ));
                }
            }
        }
        if key.sha256.len() != 64 || hex::decode(&key.sha256).is_err() {
            issues.push((
                format!("api_keys[{i}].sha256"),
                "expected 64 hex digits (the SHA-256 of the key)".to_string(),
            ));
        }
        if let Some(expires) = &key.expires {
            if humantime::parse_rfc3339_weak(expires).is_err() {
                issues.push((
                    format!("api_keys[{i}].expires"),
                    format!("`{}` is not an RFC 3339 timestamp", truncated(expires)),
                ));
            }
        }
    }
    if let Some(audit) = &spec.audit {
        if audit.token_sha256.len() != 64 || hex::decode(&audit.token_sha256).is_err() {
            issues.push((
                "audit.token_sha256".to_string(),
                "expected 64 hex digits (the SHA-256 of the administrators' bearer token)"
                    .to_string(),
            ));
        }
    }
    if let Some(scim) = &spec.scim {
        if scim.token_sha256.len() != 64 || hex::decode(&scim.token_sha256).is_err() {
            issues.push((
                "scim.token_sha256".to_string(),
                "expected 64 hex digits (the SHA-256 of the SCIM bearer token)".to_string(),
            ));
        }
        for (group, role) in &scim.group_roles {
            if !is_valid_role(role) {
                issues.push((
                    format!("scim.group_roles.{}", truncated(group)),
                    format!(
                        "`{}` is not a role name: 1-128 letters, digits, `-`, `_`, `.`, `:` or `/`",
                        truncated(role)
                    ),
                ));
            }
        }
    }
    if let Some(saml) = spec.sso.as_ref().and_then(|s| s.saml.as_ref()) {
        if !(saml.idp_sso_url.starts_with("https://") || saml.idp_sso_url.starts_with("http://")) {
            issues.push((
                "sso.saml.idp_sso_url".to_string(),
                format!("`{}` is not an http(s) URL", truncated(&saml.idp_sso_url)),
            ));
        }
        if saml.idp_entity_id.is_empty() {
            issues.push((
                "sso.saml.idp_entity_id".to_string(),
                "must not be empty".to_string(),
            ));
        }
        if let Err(e) = parse_pem_certificate(&saml.idp_certificate) {
            issues.push(("sso.saml.idp_certificate".to_string(), e));
        }
    }
    if let Some(sso) = &spec.sso {
        if sso.oidc.is_some() == sso.saml.is_some() {
            issues.push((
                "sso".to_string(),
                "set exactly one of `oidc` and `saml`".to_string(),
            ));
        }
    }
    if let Some(login) = spec.sso.as_ref().and_then(|s| s.oidc.as_ref()) {
        match spec.issuers.iter().find(|i| i.issuer == login.issuer) {
            None => issues.push((
                "sso.oidc.issuer".to_string(),
                format!(
                    "`{}` is not one of this tenant's `issuers[].issuer`: the ID tokens of a login \
                     are verified as that issuer's tokens",
                    truncated(&login.issuer)
                ),
            )),
            Some(issuer) if !issuer.audiences.contains(&login.client_id) => issues.push((
                "sso.oidc.client_id".to_string(),
                format!(
                    "`{}` is not among the issuer's `audiences` (the ID token's `aud` is the client id)",
                    truncated(&login.client_id)
                ),
            )),
            Some(_) => {}
        }
        if login.client_id.is_empty() || login.client_secret.is_empty() {
            issues.push((
                "sso.oidc".to_string(),
                "client_id and client_secret must not be empty".to_string(),
            ));
        }
        if !login.scopes.iter().any(|s| s == "openid") {
            issues.push((
                "sso.oidc.scopes".to_string(),
                "must contain `openid`".to_string(),
            ));
        }
        if let Some(bad) = login.scopes.iter().find(|s| {
            s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        }) {
            issues.push((
                "sso.oidc.scopes".to_string(),
                format!("`{}` is not a scope token", truncated(bad)),
            ));
        }
    }
    if let Some(sso) = &spec.sso {
        for (i, domain) in sso.email_domains.iter().enumerate() {
            if !is_valid_host_name(domain) {
                issues.push((
                    format!("sso.email_domains[{i}]"),
                    format!("`{}`: expected a lower-case DNS name", truncated(domain)),
                ));
            }
        }
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let label = rules
            .host_suffix
            .as_deref()
            .and_then(|suffix| host.strip_suffix(suffix));
        if let Some(label) = label.filter(|l| !l.contains('.') && *l != spec.id) {
            issues.push((
                format!("hosts[{i}]"),
                format!(
                    "`{}` is under the host pattern, where it is tenant `{}`'s host",
                    truncated(host),
                    truncated(label)
                ),
            ));
        } else if !is_valid_host_name(host) {
            issues.push((
                format!("hosts[{i}]"),
                format!(
                    "`{}` ({} characters): expected a lower-case DNS name without port, at most \
                     253 characters, labels of 1-63 letters, digits and `-`",
                    truncated(host),
                    host.chars().count()
                ),
            ));
        }
    }
    for (i, hook) in spec.webhooks.iter().enumerate() {
        if let Err(e) = validate_subscription(hook) {
            issues.push((format!("webhooks[{i}]"), e));
        }
    }
    let limits = &spec.limits;
    if let Some(rate) = limits.requests_per_second {
        if let Err(message) = crate::tenancy::bounds::check_rate(rate) {
            issues.push(("limits.requests_per_second".to_string(), message));
        }
    }
    if let Some(burst) = limits.burst {
        if let Err(message) = crate::tenancy::bounds::check_burst(burst) {
            issues.push(("limits.burst".to_string(), message));
        }
    }
    for (field, quota) in [
        ("daily_requests", limits.daily_requests),
        ("monthly_requests", limits.monthly_requests),
    ] {
        if let Some(Err(message)) = quota.map(crate::tenancy::bounds::check_quota) {
            issues.push((format!("limits.{field}"), message));
        } else if quota.is_some() && !rules.quotas {
            issues.push((
                format!("limits.{field}"),
                "a quota is counted in Redis, so that replicas share it and restarts do not \
                 reset it: set `[limits] backend = \"redis\"` in the gateway's configuration"
                    .to_string(),
            ));
        }
    }
    issues
}

/// Problems with an issuer definition. `global` issuers may use HMAC secrets.
pub fn validate_issuer(issuer: &IssuerConfig, global: bool) -> Vec<(String, String)> {
    let mut issues = Vec::new();
    if issuer.issuer.trim().is_empty() {
        issues.push(("issuer".to_string(), "must not be empty".to_string()));
    }
    if issuer.audiences.is_empty() {
        issues.push((
            "audiences".to_string(),
            "needs at least one accepted audience".to_string(),
        ));
    }
    if issuer.algorithms.is_empty() {
        issues.push((
            "algorithms".to_string(),
            "needs at least one algorithm".to_string(),
        ));
    }
    let hmac = issuer.algorithms.iter().filter(|a| a.is_hmac()).count();
    if hmac > 0 && hmac < issuer.algorithms.len() {
        issues.push((
            "algorithms".to_string(),
            "HMAC (HS*) and asymmetric algorithms cannot be mixed in one issuer: that invites key confusion"
                .to_string(),
        ));
    }
    if hmac > 0 {
        if !global {
            issues.push((
                "algorithms".to_string(),
                "tenant issuers must use asymmetric algorithms (their keys come from a JWKS)"
                    .to_string(),
            ));
        } else if issuer.secret_file.is_none() {
            issues.push((
                "secret_file".to_string(),
                "HMAC algorithms need `secret_file`".to_string(),
            ));
        }
    } else if issuer.secret_file.is_some() {
        issues.push((
            "secret_file".to_string(),
            "only used with HS256/HS384/HS512".to_string(),
        ));
    }
    if issuer.leeway > MAX_LEEWAY {
        issues.push((
            "leeway".to_string(),
            format!("at most {}", humantime::format_duration(MAX_LEEWAY)),
        ));
    }
    if issuer.platform && !global {
        issues.push((
            "platform".to_string(),
            "only a global issuer (`[[identity.issuer]]`) can be platform-wide: a tenant's own issuer vouches for that tenant only"
                .to_string(),
        ));
    }
    if let Some(uri) = &issuer.jwks_uri {
        if !(uri.starts_with("https://") || uri.starts_with("http://")) {
            issues.push((
                "jwks_uri".to_string(),
                format!("`{uri}` is not an http(s) URL"),
            ));
        }
    }
    issues
}

pub fn is_valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

/// Checks subscriber URLs and secrets.
pub fn validate_subscription(s: &WebhookSubscription) -> Result<(), String> {
    let url = reqwest::Url::parse(&s.url).map_err(|e| format!("url `{}`: {e}", s.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url `{}`: must be http or https", s.url));
    }
    webhook_secret_key(&s.secret).map(drop)
}

/// The HMAC key of a `whsec_<base64>` secret.
pub fn webhook_secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or("secret must start with `whsec_` (Standard Webhooks)")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("secret is not base64 after `whsec_`: {e}"))?;
    if key.len() < 24 {
        return Err("secret must hold at least 24 bytes".to_string());
    }
    Ok(key)
}

/// The DER of one PEM certificate, or what is wrong with it.
pub fn parse_pem_certificate(pem: &str) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| format!("expected one PEM certificate (-----BEGIN CERTIFICATE-----): {e:?}"))
}

/// Whether `role` can be a role: it travels comma-separated in a header.
pub fn is_valid_role(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 128
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tenant_without_sso_scim_or_audit_access_does_not_pay_for_them() {
        // 100,000 tenants are held in memory; an inline `Option` of a large section costs its
        // full size in each (SSO alone was 344 bytes: 792 per tenant, now 400).
        assert!(std::mem::size_of::<TenantSpec>() <= 400);
        assert_eq!(std::mem::size_of::<Option<Box<SsoSettings>>>(), 8);
    }

    use super::*;

    fn issuer(algorithms: Vec<JwtAlgorithm>) -> IssuerConfig {
        IssuerConfig {
            issuer: "https://idp".into(),
            jwks_uri: None,
            audiences: vec!["api".into()],
            algorithms,
            secret_file: None,
            leeway: default_leeway(),
            claims: ClaimMapping::default(),
            provision: true,
            platform: false,
        }
    }

    #[test]
    fn tenants_are_bounded_and_on_tenant_rules() {
        let tiers = TenantRules::of(&["free".to_string(), "pro".to_string()]);
        let fields = |spec: &TenantSpec, tiers: &TenantRules| -> Vec<String> {
            validate_tenant(spec, tiers)
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        let mut spec = TenantSpec::new("acme");
        assert!(fields(&spec, &tiers).is_empty());
        spec.tier = "platinum".into();
        assert_eq!(fields(&spec, &tiers), ["tier"]);
        assert!(fields(&spec, &TenantRules::any()).is_empty());
        spec.tier = "pro".into();
        for rate in [1e-30, 5e-324, 0.0, -1.0, f64::NAN, f64::INFINITY, 1e7] {
            spec.limits.requests_per_second = Some(rate);
            assert_eq!(
                fields(&spec, &tiers),
                ["limits.requests_per_second"],
                "{rate}"
            );
        }
        spec.limits.requests_per_second = Some(0.001);
        spec.limits.burst = Some(0);
        spec.limits.daily_requests = Some(0);
        assert_eq!(
            fields(&spec, &tiers),
            ["limits.burst", "limits.daily_requests"]
        );
        spec.limits = TenantLimits::default();
        spec.hosts = vec![
            "api.acme.example".into(),
            "a".repeat(100_000),
            "bad_host.example".into(),
            "Upper.example".into(),
            "-dash.example".into(),
            "host:8080".into(),
            "a..b".into(),
        ];
        assert_eq!(
            fields(&spec, &tiers),
            ["hosts[1]", "hosts[2]", "hosts[3]", "hosts[4]", "hosts[5]", "hosts[6]"]
        );
        // Under the host pattern, a host is the tenant's its label names: taking another's
        // would route that tenant's traffic here (custom hosts are looked up first).
        let patterned = tiers
            .clone()
            .with_host_suffix(Some(".api.example.com".into()));
        spec.hosts = vec![
            "acme.api.example.com".into(),
            "globex.api.example.com".into(),
            "a.b.api.example.com".into(),
            "api.example.com".into(),
        ];
        assert_eq!(fields(&spec, &patterned), ["hosts[1]"]);
        assert!(fields(&spec, &tiers).is_empty());
        assert!(is_valid_host_name(&format!("{}.example", "a".repeat(63))));
        assert!(!is_valid_host_name(&format!("{}.example", "a".repeat(64))));
    }

    #[test]
    fn api_key_roles_and_scopes_cannot_smuggle_a_comma() {
        let mut spec = TenantSpec::new("acme");
        spec.api_keys.push(ApiKeySpec {
            id: "ci".into(),
            sha256: "a".repeat(64),
            scopes: vec!["projects:read".into(), "projects:read,billing:read".into()],
            roles: vec!["viewer,admin".into(), "editor".into(), String::new()],
            expires: None,
            owner: None,
        });
        let fields: Vec<String> = validate_tenant(&spec, &TenantRules::any())
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            [
                "api_keys[0].roles[0]",
                "api_keys[0].roles[2]",
                "api_keys[0].scopes[1]"
            ]
        );
    }

    #[test]
    fn tenant_ids_are_dns_labels() {
        assert!(is_valid_tenant_id("acme-1"));
        assert!(!is_valid_tenant_id("Acme"));
        assert!(!is_valid_tenant_id("-acme"));
        assert!(!is_valid_tenant_id("a.b"));
        assert!(!is_valid_tenant_id(""));
        assert!(!is_valid_tenant_id(&"a".repeat(64)));
    }

    #[test]
    fn issuers_cannot_mix_hmac_and_asymmetric() {
        let issues = validate_issuer(
            &issuer(vec![JwtAlgorithm::RS256, JwtAlgorithm::HS256]),
            true,
        );
        assert!(issues
            .iter()
            .any(|(f, m)| f == "algorithms" && m.contains("confusion")));
        let issues = validate_issuer(&issuer(vec![JwtAlgorithm::HS256]), false);
        assert!(issues.iter().any(|(f, _)| f == "algorithms"));
        let issues = validate_issuer(&issuer(vec![JwtAlgorithm::HS256]), true);
        assert!(issues.iter().any(|(f, _)| f == "secret_file"));
        assert!(validate_issuer(&issuer(vec![JwtAlgorithm::ES256]), false).is_empty());
    }

    #[test]
    fn only_global_issuers_can_be_platform_wide() {
        let mut i = issuer(vec![JwtAlgorithm::ES256]);
        i.platform = true;
        assert!(validate_issuer(&i, true).is_empty());
        assert!(validate_issuer(&i, false)
            .iter()
            .any(|(f, _)| f == "platform"));
    }

    #[test]
    fn leeway_is_bounded() {
        let mut i = issuer(vec![JwtAlgorithm::ES256]);
        i.leeway = Duration::from_secs(3600);
        assert!(validate_issuer(&i, true).iter().any(|(f, _)| f == "leeway"));
    }
}
