//! Who is calling: bearer JWTs verified against the issuer's keys, or API keys looked up by hash.
//!
//! Every refusal carries a precise [`AuthError`] for logs and the audit record; the client only
//! ever learns "missing or invalid credentials".

pub mod directory;
pub mod jwks;
pub mod principal;
pub mod provisioning;
pub mod saml;
pub mod sessions;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::tenancy::model::IssuerConfig;
use crate::tenancy::registry::{api_key_hash, TenantRegistry};
pub use jwks::{JwksSettings, JwksStore, KeyOrigin};
pub use principal::{AuthMethod, Principal};

/// Why a credential was refused. The slug goes to logs, metrics and the audit record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    MissingCredentials,
    #[error("malformed Authorization header")]
    MalformedAuthorization,
    #[error("more than one credential presented")]
    MultipleCredentials,
    #[error("malformed token")]
    MalformedToken,
    #[error("token uses alg `none`")]
    AlgNone,
    #[error("token algorithm `{0}` is not allowed for its issuer")]
    AlgNotAllowed(String),
    #[error("token has a critical header extension the gateway does not understand")]
    UnsupportedCriticalHeader,
    #[error("token has no issuer")]
    MissingIssuer,
    #[error("token issuer `{0}` is not trusted")]
    UnknownIssuer(String),
    #[error("token signing key is unknown to its issuer")]
    UnknownKey,
    #[error("issuer keys could not be fetched")]
    KeysUnavailable,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{0}` has an invalid value")]
    InvalidClaim(String),
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token issuer does not match")]
    WrongIssuer,
    #[error("a tenant issuer's token names another tenant")]
    TenantClaimMismatch,
    #[error("token subject `{0}` is reserved (anonymous callers and API keys)")]
    ReservedSubject(String),
    #[error("unknown API key")]
    UnknownApiKey,
    #[error("API key expired")]
    ExpiredApiKey,
    #[error(
        "the principal (or the owner of its API key) is deactivated or deleted in the directory"
    )]
    PrincipalDeactivated,
    /// A browser session past its lifetime, or whose ID token expired and could not be
    /// refreshed.
    #[error("the login session has expired")]
    SessionExpired,
    /// The identity provider ended the session (back-channel logout) after it began.
    #[error("the login session was ended (logout, here or at the identity provider)")]
    SessionEnded,
    /// A session cookie no key of `[sessions]` opens (tampered, or sealed with a retired key).
    #[error("the session cookie is not valid")]
    BadSessionCookie,
}

impl AuthError {
    pub fn slug(&self) -> &'static str {
        match self {
            AuthError::MissingCredentials => "missing-credentials",
            AuthError::MalformedAuthorization => "malformed-authorization",
            AuthError::MultipleCredentials => "multiple-credentials",
            AuthError::MalformedToken => "malformed-token",
            AuthError::AlgNone => "alg-none",
            AuthError::AlgNotAllowed(_) => "alg-not-allowed",
            AuthError::UnsupportedCriticalHeader => "unsupported-crit",
            AuthError::MissingIssuer => "missing-issuer",
            AuthError::UnknownIssuer(_) => "unknown-issuer",
            AuthError::UnknownKey => "unknown-key",
            AuthError::KeysUnavailable => "keys-unavailable",
            AuthError::BadSignature => "bad-signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not-yet-valid",
            AuthError::IssuedInFuture => "issued-in-future",
            AuthError::MissingClaim(_) => "missing-claim",
            AuthError::InvalidClaim(_) => "invalid-claim",
            AuthError::WrongAudience => "wrong-audience",
            AuthError::WrongIssuer => "wrong-issuer",
            AuthError::TenantClaimMismatch => "tenant-claim-mismatch",
            AuthError::ReservedSubject(_) => "reserved-subject",
            AuthError::UnknownApiKey => "unknown-api-key",
            AuthError::ExpiredApiKey => "expired-api-key",
            AuthError::PrincipalDeactivated => "principal-deactivated",
            AuthError::SessionExpired => "session-expired",
            AuthError::SessionEnded => "session-ended",
            AuthError::BadSessionCookie => "bad-session-cookie",
        }
    }

    /// A token was presented (so `WWW-Authenticate` says `error="invalid_token"`).
    pub fn token_presented(&self) -> bool {
        !matches!(self, AuthError::MissingCredentials)
    }
}

/// A global issuer with its HMAC key, when it uses one.
pub struct GlobalIssuer {
    pub config: IssuerConfig,
    pub hmac_key: Option<Arc<DecodingKey>>,
}

/// `[identity]` compiled for the request path.
pub struct IdentityPolicy {
    pub issuers: HashMap<String, Arc<GlobalIssuer>>,
    pub api_key_header: HeaderName,
    pub allow_anonymous: bool,
}

/// Verifies credentials; lives for the whole process (keys and verified tokens are cached).
pub struct Authenticator {
    jwks: JwksStore,
    /// Verified tokens (expiry is checked on every hit). quick_cache, not moka, on the request
    /// path: see the decision cache in `authz`.
    verified: quick_cache::sync::Cache<[u8; 32], CachedPrincipal>,
}

#[derive(Clone)]
struct CachedPrincipal {
    principal: Arc<Principal>,
    /// Identity generation of the snapshot it was verified under: issuers or keys may have
    /// changed since.
    generation: u64,
    /// The JWKS key that verified it (`None` for an HMAC issuer, whose secret is part of the
    /// generation): once the issuer stops publishing that key, the token is verified afresh
    /// (and refused), exactly as if it had never been cached.
    key: Option<KeyOrigin>,
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
}

impl Authenticator {
    pub fn new(settings: JwksSettings, token_cache_capacity: u64) -> Self {
        Authenticator {
            jwks: JwksStore::new(settings),
            verified: quick_cache::sync::Cache::new(token_cache_capacity.max(1) as usize),
        }
    }

    pub fn jwks(&self) -> &JwksStore {
        &self.jwks
    }

    /// Identifies the caller of a request.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        policy: &IdentityPolicy,
        registry: &TenantRegistry,
        generation: u64,
    ) -> Result<Arc<Principal>, AuthError> {
        let mut authorization = headers.get_all(AUTHORIZATION).iter();
        let bearer = match (authorization.next(), authorization.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => return Err(AuthError::MultipleCredentials),
            (Some(value), None) => {
                let value = value
                    .to_str()
                    .map_err(|_| AuthError::MalformedAuthorization)?;
                let (scheme, token) = value
                    .split_once(' ')
                    .ok_or(AuthError::MalformedAuthorization)?;
                if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                    return Err(AuthError::MalformedAuthorization);
                }
                Some(token.trim())
            }
        };
        let mut api_keys = headers.get_all(&policy.api_key_header).iter();
        let api_key = match (api_keys.next(), api_keys.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => return Err(AuthError::MultipleCredentials),
            (Some(v), None) => Some(v.to_str().map_err(|_| AuthError::UnknownApiKey)?),
        };
        match (bearer, api_key) {
            (Some(_), Some(_)) => Err(AuthError::MultipleCredentials),
            (Some(token), None) => self.verify_token(token, policy, registry, generation).await,
            (None, Some(key)) => api_key_principal(key, registry).map(Arc::new),
            (None, None) if policy.allow_anonymous => Ok(Arc::new(Principal::anonymous())),
            (None, None) => Err(AuthError::MissingCredentials),
        }
    }

    /// Verifies `token` as a bearer token would be (the issuer's keys, algorithms, audiences,
    /// claim mapping): browser sessions hold their ID token and become the same principal.
    pub async fn verify_token(
        &self,
        token: &str,
        policy: &IdentityPolicy,
        registry: &TenantRegistry,
        generation: u64,
    ) -> Result<Arc<Principal>, AuthError> {
        self.verify_jwt(token, policy, registry, generation, TokenUse::Credential)
            .await
    }

    /// Verifies an OpenID Connect back-channel logout token (the issuer's keys, algorithms
    /// and audiences, as for its other tokens): its subject's principal. Only a token with the
    /// logout event passes, and it is never cached as a credential.
    pub async fn verify_logout_token(
        &self,
        token: &str,
        policy: &IdentityPolicy,
        registry: &TenantRegistry,
        generation: u64,
    ) -> Result<Arc<Principal>, AuthError> {
        self.verify_jwt(token, policy, registry, generation, TokenUse::Logout)
            .await
    }

    async fn verify_jwt(
        &self,
        token: &str,
        policy: &IdentityPolicy,
        registry: &TenantRegistry,
        generation: u64,
        token_use: TokenUse,
    ) -> Result<Arc<Principal>, AuthError> {
        let cache_key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = match token_use {
            TokenUse::Credential => self.verified.get(&cache_key),
            TokenUse::Logout => None,
        };
        if let Some(hit) = cached {
            if hit.generation == generation
                && hit.principal.expires_at.is_some_and(|exp| exp > now_secs())
                && hit.key.as_ref().is_none_or(KeyOrigin::still_published)
            {
                return Ok(hit.principal);
            }
        }
        let header = raw_header(token)?;
        let alg_name = header.alg.ok_or(AuthError::MalformedToken)?;
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(AuthError::AlgNone);
        }
        if header.crit.is_some() {
            return Err(AuthError::UnsupportedCriticalHeader);
        }
        let alg: Algorithm = alg_name
            .parse()
            .map_err(|_| AuthError::AlgNotAllowed(alg_name.clone()))?;
        let unverified: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| AuthError::MalformedToken)?;
        // A logout token is signed by the same keys for the same audience as ID tokens: it must
        // never pass for a credential (OIDC Back-Channel Logout §2.4), nor anything else for it.
        let is_logout_token = unverified
            .get("events")
            .and_then(Value::as_object)
            .is_some_and(|events| events.contains_key(BACKCHANNEL_LOGOUT_EVENT));
        if is_logout_token != (token_use == TokenUse::Logout) {
            return Err(AuthError::InvalidClaim("events".into()));
        }
        let iss = match unverified.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(AuthError::InvalidClaim("iss".into())),
            None => return Err(AuthError::MissingIssuer),
        };
        let SelectedIssuer {
            config: issuer,
            hmac_key,
            implied_tenant,
        } = select_issuer(iss, &unverified, policy, registry)?;
        if !issuer.algorithms.iter().any(|a| a.to_jsonwebtoken() == alg) {
            return Err(AuthError::AlgNotAllowed(alg_name));
        }
        // Only the issuer's own keys verify its tokens: `jwk`, `jku`, `x5u` and `x5c` headers
        // are never read, and a `kid` is looked up among this issuer's keys only.
        let (key, origin) = match hmac_key {
            Some(k) => (k, None),
            None => {
                let (vk, origin) = self.jwks.key(&issuer, header.kid.as_deref(), alg).await?;
                if vk.alg.is_some_and(|a| a != alg) {
                    return Err(AuthError::AlgNotAllowed(alg_name));
                }
                (vk.key, Some(origin))
            }
        };
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[issuer.issuer.as_str()]);
        validation.set_audience(&issuer.audiences);
        validation.leeway = issuer.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&REQUIRED_CLAIMS);
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
                match e.kind() {
                    // jsonwebtoken looks for its required claims in hash-set order, so a token
                    // missing several would be logged and audited with a different one each time.
                    // A claim it cannot read (an `exp` beyond u64, an `aud` array holding a
                    // number) counts as missing too, so the first unreadable one is named.
                    ErrorKind::MissingRequiredClaim(_) => REQUIRED_CLAIMS
                        .iter()
                        .find(|c| !readable_claim(c, unverified.get(**c)))
                        .map(|c| AuthError::MissingClaim(c.to_string()))
                        .unwrap_or_else(|| map_jwt_error(e)),
                    _ => map_jwt_error(e),
                }
            })?;
        if let Some(iat) = data.claims.get("iat").and_then(Value::as_u64) {
            if iat > now_secs() + issuer.leeway.as_secs() {
                return Err(AuthError::IssuedInFuture);
            }
        }
        let mut principal = principal::map_claims(
            &data.claims,
            &issuer.claims,
            &issuer.issuer,
            implied_tenant,
            issuer.platform,
        )?;
        principal.provision = issuer.provision;
        let principal = Arc::new(principal);
        if token_use == TokenUse::Logout {
            return Ok(principal);
        }
        self.verified.insert(
            cache_key,
            CachedPrincipal {
                principal: principal.clone(),
                generation,
                key: origin,
            },
        );
        Ok(principal)
    }
}

/// What a token is verified for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenUse {
    /// A bearer token, or a session's ID token.
    Credential,
    /// A back-channel logout token.
    Logout,
}

/// The event claim of an OpenID Connect back-channel logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The issuer a token claims, among the global ones and the tenants' own. A tenant issuer shared
/// by several tenants must let the token name its tenant through the tenant claim.
fn select_issuer(
    iss: &str,
    unverified: &Map<String, Value>,
    policy: &IdentityPolicy,
    registry: &TenantRegistry,
) -> Result<SelectedIssuer, AuthError> {
    if let Some(global) = policy.issuers.get(iss) {
        return Ok(SelectedIssuer {
            config: global.config.clone(),
            hmac_key: global.hmac_key.clone(),
            implied_tenant: None,
        });
    }
    let candidates = registry.tenant_issuers(iss);
    let chosen = match candidates {
        [] => return Err(AuthError::UnknownIssuer(iss.to_string())),
        [only] => only,
        many => many
            .iter()
            .find(|c| {
                c.config.claims.tenant.as_deref().is_some_and(|path| {
                    principal::claim(unverified, path).and_then(Value::as_str) == Some(&*c.tenant)
                })
            })
            .ok_or_else(|| AuthError::UnknownIssuer(iss.to_string()))?,
    };
    Ok(SelectedIssuer {
        config: (*chosen.config).clone(),
        hmac_key: None,
        implied_tenant: Some(chosen.tenant.clone()),
    })
}

/// The issuer a token will be verified against.
struct SelectedIssuer {
    config: IssuerConfig,
    hmac_key: Option<Arc<DecodingKey>>,
    /// Set for a tenant's own issuer: the only tenant its tokens can act for.
    implied_tenant: Option<Arc<str>>,
}

fn raw_header(token: &str) -> Result<RawHeader, AuthError> {
    let segment = token.split('.').next().ok_or(AuthError::MalformedToken)?;
    if token.split('.').count() != 3 {
        return Err(AuthError::MalformedToken);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .map_err(|_| AuthError::MalformedToken)?;
    // UTF-8 first (RFC 7515 §4): serde skips a member it does not read without checking its
    // text, so a header with invalid UTF-8 in such a member would otherwise be read.
    let text = std::str::from_utf8(&bytes).map_err(|_| AuthError::MalformedToken)?;
    serde_json::from_str(text).map_err(|_| AuthError::MalformedToken)
}

/// Claims every token must carry, in the order a missing one is reported.
const REQUIRED_CLAIMS: [&str; 3] = ["exp", "iss", "aud"];

/// Whether jsonwebtoken reads `value` as the required claim `name`: a time as a whole number
/// of seconds, `iss` as a string, `aud` as a string or an array of strings.
fn readable_claim(name: &str, value: Option<&Value>) -> bool {
    match (name, value) {
        (_, None | Some(Value::Null)) => false,
        ("exp" | "nbf" | "iat", Some(v)) => v.as_u64().is_some(),
        ("aud", Some(v)) => {
            v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        }
        (_, Some(v)) => v.is_string(),
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => AuthError::InvalidClaim(c.clone()),
        ErrorKind::InvalidAlgorithm => AuthError::AlgNotAllowed("key/algorithm mismatch".into()),
        _ => AuthError::MalformedToken,
    }
}

fn api_key_principal(key: &str, registry: &TenantRegistry) -> Result<Principal, AuthError> {
    let entry = registry
        .api_key(&api_key_hash(key))
        .ok_or(AuthError::UnknownApiKey)?;
    if entry.expires.is_some_and(|e| e <= SystemTime::now()) {
        return Err(AuthError::ExpiredApiKey);
    }
    Ok(Principal {
        id: format!("{}{}", principal::API_KEY_ID_PREFIX, entry.key.id),
        tenant: Some(entry.tenant.clone()),
        tenant_bound: true,
        platform: false,
        roles: entry.key.roles.clone(),
        attributes: Map::new(),
        scopes: entry.key.scopes.clone(),
        auth: AuthMethod::ApiKey {
            key_id: entry.key.id.clone(),
        },
        expires_at: None,
        provision: false,
    })
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::model::JwtAlgorithm;

    const SECRET: &[u8] = b"identity-unit-test-secret-0123456789abcdef";

    fn policy() -> IdentityPolicy {
        let config: IssuerConfig = toml::from_str(
            "issuer = \"https://issuer.test\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\n",
        )
        .unwrap();
        assert_eq!(config.algorithms, vec![JwtAlgorithm::HS256]);
        let mut issuers = HashMap::new();
        issuers.insert(
            config.issuer.clone(),
            Arc::new(GlobalIssuer {
                config,
                hmac_key: Some(Arc::new(DecodingKey::from_secret(SECRET))),
            }),
        );
        IdentityPolicy {
            issuers,
            api_key_header: HeaderName::from_static("x-api-key"),
            allow_anonymous: false,
        }
    }

    #[tokio::test]
    async fn logout_tokens_are_no_credentials_and_credentials_no_logout_tokens() {
        let now = now_secs();
        let sign = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({
                "iss": "https://issuer.test", "aud": "api", "sub": "alice",
                "iat": now, "exp": now + 120,
            });
            if let (Some(map), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
                map.extend(extra.clone());
            }
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SECRET),
            )
            .unwrap()
        };
        let logout = sign(serde_json::json!({
            "jti": "j1", "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        }));
        let credential = sign(serde_json::json!({}));
        let auth = Authenticator::new(Default::default(), 16);
        let (policy, registry) = (policy(), TenantRegistry::default());
        // Verified as a logout token first (it is not cached), then refused as a credential.
        let subject = auth
            .verify_logout_token(&logout, &policy, &registry, 1)
            .await
            .unwrap();
        assert_eq!(subject.id, "alice");
        assert_eq!(
            auth.verify_token(&logout, &policy, &registry, 1)
                .await
                .err(),
            Some(AuthError::InvalidClaim("events".into()))
        );
        // A credential, cached as such, is no logout token.
        auth.verify_token(&credential, &policy, &registry, 1)
            .await
            .unwrap();
        assert_eq!(
            auth.verify_logout_token(&credential, &policy, &registry, 1)
                .await
                .err(),
            Some(AuthError::InvalidClaim("events".into()))
        );
    }

    #[test]
    fn a_token_missing_several_claims_is_always_refused_for_the_same_one() {
        // Found by the jwt fuzz target: without `aud` and `exp`, the reason alternated.
        let claims = serde_json::json!({"iss": "https://issuer.test", "sub": "a"});
        assert_always_refused(&claims, AuthError::MissingClaim("exp".into()));
    }

    /// Signs `claims` (HS256) and checks that 32 fresh authenticators (jsonwebtoken's hash
    /// sets seeded anew each time) all refuse the token for `expected`.
    fn assert_always_refused(claims: &serde_json::Value, expected: AuthError) {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        let (policy, registry) = (policy(), TenantRegistry::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for _ in 0..32 {
            let authenticator = Authenticator::new(JwksSettings::default(), 16);
            let refused = runtime
                .block_on(authenticator.authenticate(&headers, &policy, &registry, 1))
                .unwrap_err();
            assert_eq!(refused, expected);
        }
    }

    #[test]
    fn unreadable_required_claims_are_reported_in_order_too() {
        // Found by the jwt fuzz target: an `exp` beyond u64 and an `aud` array holding a
        // number are both present and both unreadable to jsonwebtoken, which named one or the
        // other in hash-set order.
        let claims = serde_json::json!({"iss": "https://issuer.test", "sub": "a",
            "aud": ["view", 5], "exp": 4.1e51});
        assert_always_refused(&claims, AuthError::MissingClaim("exp".into()));
        assert!(readable_claim("aud", Some(&serde_json::json!(["a", "b"]))));
        assert!(!readable_claim("aud", Some(&serde_json::json!(["a", 5]))));
        assert!(readable_claim(
            "exp",
            Some(&serde_json::json!(4102444800u64))
        ));
        assert!(!readable_claim("exp", Some(&serde_json::json!(-1))));
        assert!(!readable_claim("iss", None));
    }

    /// Verifies `claims` signed with `alg` and `key` through the test policy.
    fn verify(
        alg: Algorithm,
        key: &[u8],
        claims: serde_json::Value,
    ) -> Result<Arc<Principal>, AuthError> {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap();
        verify_token(&token)
    }

    fn verify_token(token: &str) -> Result<Arc<Principal>, AuthError> {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let authenticator = Authenticator::new(JwksSettings::default(), 16);
        runtime.block_on(authenticator.authenticate(
            &headers,
            &policy(),
            &TenantRegistry::default(),
            1,
        ))
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut claims = serde_json::json!({
            "iss": "https://issuer.test", "aud": "api", "sub": "ada", "exp": now_secs() + 600,
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    }

    #[test]
    fn a_valid_token_yields_its_subject() {
        let principal = verify(Algorithm::HS256, SECRET, claims(serde_json::json!({}))).unwrap();
        assert_eq!(principal.id, "ada");
        assert_eq!(principal.roles, Vec::<String>::new());
    }

    #[test]
    fn tokens_are_refused_for_what_is_wrong_with_them() {
        let past = now_secs() - 3600;
        for (case, result) in [
            (
                "expired",
                verify(
                    Algorithm::HS256,
                    SECRET,
                    claims(serde_json::json!({"exp": past})),
                ),
            ),
            (
                "other audience",
                verify(
                    Algorithm::HS256,
                    SECRET,
                    claims(serde_json::json!({"aud": "other"})),
                ),
            ),
            (
                "other secret",
                verify(
                    Algorithm::HS256,
                    b"another-secret-0123456789abcdef-xyz",
                    claims(serde_json::json!({})),
                ),
            ),
            (
                "algorithm not pinned for the issuer",
                verify(Algorithm::HS384, SECRET, claims(serde_json::json!({}))),
            ),
            (
                "untrusted issuer",
                verify(
                    Algorithm::HS256,
                    SECRET,
                    claims(serde_json::json!({"iss": "https://evil.test"})),
                ),
            ),
        ] {
            let expected = match case {
                "expired" => AuthError::Expired,
                "other audience" => AuthError::WrongAudience,
                "other secret" => AuthError::BadSignature,
                "algorithm not pinned for the issuer" => AuthError::AlgNotAllowed("HS384".into()),
                _ => AuthError::UnknownIssuer("https://evil.test".into()),
            };
            assert_eq!(result.unwrap_err(), expected, "{case}");
        }
    }

    #[test]
    fn alg_none_is_refused_before_anything_else() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(claims(serde_json::json!({})).to_string());
        let refused = verify_token(&format!("{header}.{body}.")).unwrap_err();
        assert_eq!(refused, AuthError::AlgNone);
    }

    /// Found by fuzzing: a header with invalid UTF-8 in a member the gateway does not read was
    /// read all the same (and its `alg` acted on). It is not JSON text: malformed.
    #[test]
    fn a_header_that_is_not_utf8_is_malformed() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = b64.encode(claims(serde_json::json!({})).to_string());
        for header in [
            &b"{\"x\":\"HS\xff\xff\",\"alg\":\"none\"}"[..],
            b"{\"x\":\"\xc3\",\"alg\":\"HS256\"}",
        ] {
            let refused = verify_token(&format!("{}.{body}.c2ln", b64.encode(header))).unwrap_err();
            assert_eq!(refused, AuthError::MalformedToken, "{header:?}");
        }
    }
}
