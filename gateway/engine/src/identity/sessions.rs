//! Browser sessions: people log in through their tenant's identity provider (OpenID Connect
//! authorization code flow with PKCE, `state` and `nonce`) and then carry an encrypted, signed
//! session cookie instead of a bearer token.
//!
//! The session keeps the identity provider's ID token, and every request verifies it exactly as
//! it would verify that token sent as a bearer (the tenant's issuer: keys, algorithms,
//! audiences, claim mapping), so a browser user is the same principal, with the same roles and
//! attributes, as the same user calling the API, and the same Cedar policies apply. Before the
//! ID token expires the gateway redeems the session's refresh token for a new one and sends the
//! renewed cookie with the response; a session never outlives `[sessions] lifetime`.
//!
//! Everything the browser talks to lives under [`PREFIX`] (`/.gateway/`), so the gateway's
//! paths and cookies (`__Host-gw-session`, `__Host-gw-login`) never collide with the app's or
//! the identity provider's on the same host:
//!
//! | path | what |
//! |---|---|
//! | `GET /.gateway/login?rd=/path` | to the identity provider of the tenant the host names; otherwise a form asking for an e-mail address |
//! | `POST /.gateway/login` | `email=…`: the tenant whose `sso.email_domains` has its domain |
//! | `GET /.gateway/callback` | the redirect URI: checks `state`, redeems the code with the PKCE verifier, checks the ID token and its `nonce`, sets the session |
//! | `GET /.gateway/logout` | a page with a "Sign out" button (a GET changes nothing) |
//! | `POST /.gateway/logout` | ends the session on every replica, then RP-initiated logout at the identity provider (refused when another site sent it) |
//! | `GET /.gateway/logged-out` | the page the identity provider sends people back to |
//! | `POST /.gateway/backchannel-logout` | OpenID Connect Back-Channel Logout: ends the user's sessions on every replica |
//! | `GET /.gateway/session` | who the session is (JSON), for the app's front end |
//!
//! Cookies: `__Host-` prefix (Secure, Path=/, no Domain), HttpOnly, SameSite=Lax, sealed with
//! AES-256-GCM by the `cookie` crate's private jar under the first of `[sessions] key_files`;
//! every listed key opens them, so keys rotate by putting a new one first.

pub mod operator;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cookie::{Cookie, CookieJar, Key, SameSite};
use http::{HeaderMap, Method};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::directory::Directory;
use super::principal::Principal;
use super::{AuthError, Authenticator, IdentityPolicy};
use crate::tenancy::model::SamlLoginSettings;
use crate::tenancy::registry::TenantRegistry;
use crate::tenancy::{OidcClientAuth, OidcLoginSettings};

/// Where the gateway's own browser endpoints live.
pub const PREFIX: &str = "/.gateway/";
/// The session: tenant, the ID token, the refresh token, when it began and ends.
pub const SESSION_COOKIE: &str = "__Host-gw-session";
/// One login under way: `state`, `nonce`, the PKCE verifier, where to return.
pub const LOGIN_COOKIE: &str = "__Host-gw-login";
/// Browsers keep cookies up to 4096 bytes (name, value and attributes).
const MAX_COOKIE_BYTES: usize = 4000;
/// The largest form body the login and back-channel endpoints read.
pub const MAX_FORM_BYTES: usize = 64 * 1024;
/// The largest OpenID provider configuration document, or token endpoint answer, read (real
/// ones are a few KiB).
const MAX_PROVIDER_DOCUMENT_BYTES: usize = 1024 * 1024;

/// `[sessions]`: browser login and its cookies.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Files of at least 32 random bytes each (relative to the config file). The first seals
    /// new cookies; every one opens them. Rotate by putting a new key first and removing the
    /// old one after `lifetime`.
    pub key_files: Vec<String>,
    /// Longest life of a session, refreshes included (default 12 h; 1 min to 30 days).
    #[serde(default = "default_lifetime", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lifetime: Duration,
    /// The ID token is renewed with the refresh token this long before it expires (default 60 s).
    #[serde(default = "default_refresh_before", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub refresh_before: Duration,
    /// How long a login may take at the identity provider (default 10 min).
    #[serde(default = "default_login_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub login_timeout: Duration,
    /// Timeout of each call to an identity provider (discovery, token endpoint; default 5 s).
    #[serde(default = "default_provider_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub provider_timeout: Duration,
    /// The program that verifies SAML signatures (Debian package `xmlsec1`).
    #[serde(default = "default_xmlsec1")]
    pub xmlsec1: String,
}

fn default_xmlsec1() -> String {
    "xmlsec1".to_string()
}

impl SessionsConfig {
    /// Settings out of range: (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let minute = Duration::from_secs(60);
        let bounds = [
            (
                "lifetime",
                self.lifetime,
                minute,
                Duration::from_secs(30 * 86400),
            ),
            (
                "refresh_before",
                self.refresh_before,
                Duration::ZERO,
                Duration::from_secs(3600),
            ),
            (
                "login_timeout",
                self.login_timeout,
                minute,
                Duration::from_secs(3600),
            ),
            (
                "provider_timeout",
                self.provider_timeout,
                Duration::from_millis(100),
                minute,
            ),
        ];
        let mut problems: Vec<(&'static str, String)> = bounds
            .into_iter()
            .filter(|(_, value, min, max)| value < min || value > max)
            .map(|(field, value, min, max)| {
                (
                    field,
                    format!(
                        "{} is outside {}..{}",
                        humantime::format_duration(value),
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                )
            })
            .collect();
        if self.key_files.is_empty() {
            problems.push(("key_files", "at least one key file is needed".to_string()));
        }
        problems
    }

    /// Checks the section where the configuration is loaded: sessions verify ID tokens as
    /// bearer tokens (`[identity]`) of a tenant's issuer (`[tenancy]`).
    pub fn validate(
        &self,
        source: &crate::diagnostics::SourceText,
        has_identity: bool,
        has_tenancy: bool,
        issues: &mut Vec<crate::diagnostics::SourceIssue>,
    ) {
        for (field, message) in self.problems() {
            issues.push(source.issue(format!("sessions.{field}"), message));
        }
        if !has_identity || !has_tenancy {
            issues.push(source.issue(
                "sessions",
                "needs [identity] and [tenancy]: a session is a login at a tenant's identity provider",
            ));
        }
    }
}

fn default_lifetime() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_refresh_before() -> Duration {
    Duration::from_secs(60)
}
fn default_login_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_provider_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, thiserror::Error)]
pub enum SessionsConfigError {
    #[error("[sessions] key_files: at least one key file is needed")]
    NoKeys,
    #[error("[sessions] key_files[{index}] `{path}`: {source}")]
    Read {
        index: usize,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "[sessions] key_files[{index}] `{path}`: {len} bytes; a session key needs at least 32 \
         random bytes (e.g. `head -c 64 /dev/urandom > {path}`)"
    )]
    TooShort {
        index: usize,
        path: String,
        len: usize,
    },
    #[error("[sessions] {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("[sessions] the HTTP client for identity providers: {0}")]
    Client(String),
}

/// Why a login step failed (shown to the person, logged with the tenant).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the identity provider's discovery document could not be read: {0}")]
    Discovery(String),
    #[error("the identity provider refused the request: {0}")]
    Provider(String),
    #[error("the identity provider's answer has no ID token")]
    NoIdToken,
    #[error("the ID token is not valid: {0}")]
    IdToken(AuthError),
    #[error("the ID token's nonce does not match this login")]
    Nonce,
    #[error("the ID token belongs to another tenant")]
    Tenant,
    #[error("the ID token names another user than the session")]
    Subject,
    #[error("the session does not fit in a cookie ({0} bytes)")]
    TooLarge(usize),
    #[error("an endpoint URL is not valid: {0}")]
    Url(String),
}

/// The session, as sealed in [`SESSION_COOKIE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SessionState {
    /// Tenant.
    t: String,
    /// The principal id (the ID token's subject, mapped).
    sub: String,
    /// The ID token.
    id: String,
    /// When the ID token expires (ms since the epoch).
    id_exp: u64,
    /// The refresh token, when the identity provider issued one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rt: Option<String>,
    /// When the person logged in (ms): back-channel logouts end sessions that began earlier.
    login: u64,
    /// When the session ends whatever the refreshes (ms).
    end: u64,
    /// A SAML login's claims (the NameID and attributes of the verified assertion): the
    /// session's principal is mapped from them on each request; `id` is empty then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claims: Option<Map<String, Value>>,
}

/// A login under way, as sealed in [`LOGIN_COOKIE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LoginFlow {
    t: String,
    state: String,
    nonce: String,
    pkce: String,
    /// Where to go after the login (a path on this host).
    rd: String,
    /// When the login expires (ms).
    end: u64,
}

/// The identity provider's endpoints (OpenID Connect Discovery).
#[derive(Debug, Clone, Deserialize)]
struct ProviderEndpoints {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    end_session_endpoint: Option<String>,
}

/// The token endpoint's answer: OAuth 2.0's, plus the ID token.
#[derive(Debug, Clone, Deserialize, Serialize)]
struct IdTokenField {
    #[serde(default)]
    id_token: Option<String>,
}
impl oauth2::ExtraTokenFields for IdTokenField {}
type IdTokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;

type OidcClient = oauth2::Client<
    BasicErrorResponse,
    IdTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// What the request path and the browser endpoints need from the rest of the gateway.
pub struct SessionContext<'a> {
    pub identity: &'a IdentityPolicy,
    pub registry: &'a TenantRegistry,
    pub generation: u64,
    pub authenticator: &'a Authenticator,
    pub directory: &'a Directory,
}

/// A session cookie's verdict on the request path.
pub enum SessionAuth {
    /// No session cookie.
    Absent,
    /// The session's principal, and a renewed cookie (`Set-Cookie` value) when it was refreshed.
    Valid {
        principal: Arc<Principal>,
        renewed: Option<String>,
    },
    /// A session cookie that no longer (or never) identifies anyone.
    Invalid(AuthError),
}

/// A request to one of the browser endpoints.
pub struct BrowserRequest<'a> {
    pub method: &'a Method,
    /// The path, starting with [`PREFIX`].
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The form body of a POST (at most [`MAX_FORM_BYTES`]).
    pub body: &'a [u8],
    /// `https://host[:port]` as the browser addressed the gateway.
    pub origin: &'a str,
    /// The tenant the host names (its custom domain or the host pattern), if any.
    pub host_tenant: Option<Arc<str>>,
}

/// The answer of a browser endpoint.
#[derive(Debug)]
pub struct BrowserResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub content_type: &'static str,
    pub body: String,
}

impl BrowserResponse {
    fn redirect(status: u16, location: String) -> Self {
        BrowserResponse {
            status,
            headers: vec![("location", location)],
            content_type: "text/plain; charset=utf-8",
            body: String::new(),
        }
    }

    fn page(status: u16, title: &str, body_html: String) -> Self {
        BrowserResponse {
            status,
            headers: Vec::new(),
            content_type: "text/html; charset=utf-8",
            body: format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
                 <meta name=\"viewport\" content=\"width=device-width\"></head>\n\
                 <body style=\"font-family:sans-serif;max-width:32rem;margin:4rem auto\">\n\
                 <h1>{}</h1>\n{body_html}\n</body></html>\n",
                html_escape::encode_text(title),
                html_escape::encode_text(title)
            ),
        }
    }

    fn message(status: u16, title: &str, message: &str) -> Self {
        Self::page(
            status,
            title,
            format!("<p>{}</p>", html_escape::encode_text(message)),
        )
    }

    fn json(status: u16, value: Value) -> Self {
        BrowserResponse {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            body: value.to_string(),
        }
    }

    fn with_cookie(mut self, set_cookie: String) -> Self {
        self.headers.push(("set-cookie", set_cookie));
        self
    }
}

/// Browser login and sessions (one per gateway; [`Sessions::load`]).
pub struct Sessions {
    /// The first seals, all open.
    keys: Vec<Key>,
    lifetime: Duration,
    refresh_before: Duration,
    login_timeout: Duration,
    http: reqwest::Client,
    endpoints: moka::future::Cache<String, Arc<ProviderEndpoints>>,
    /// Refreshes in flight or just done, by sealed cookie: concurrent requests carrying the
    /// same expiring cookie redeem its refresh token once (providers rotate refresh tokens).
    renewals: moka::future::Cache<[u8; 32], Arc<SessionState>>,
    /// `jti`s of back-channel logout tokens already seen (replay).
    logout_tokens: moka::sync::Cache<String, ()>,
    /// SAML assertion ids already used, until they expire (replay).
    saml_assertions: moka::sync::Cache<String, ()>,
    xmlsec1: String,
}

impl Sessions {
    /// Reads the keys of `config` (paths relative to `base_dir`) and checks the durations.
    pub fn load(config: &SessionsConfig, base_dir: &Path) -> Result<Sessions, SessionsConfigError> {
        if config.key_files.is_empty() {
            return Err(SessionsConfigError::NoKeys);
        }
        let mut keys = Vec::new();
        for (index, file) in config.key_files.iter().enumerate() {
            let path = base_dir.join(file);
            let bytes = std::fs::read(&path).map_err(|source| SessionsConfigError::Read {
                index,
                path: path.display().to_string(),
                source,
            })?;
            if bytes.len() < 32 {
                return Err(SessionsConfigError::TooShort {
                    index,
                    path: path.display().to_string(),
                    len: bytes.len(),
                });
            }
            // HKDF from the file's bytes to the 64 bytes the private jar uses.
            keys.push(Key::derive_from(&bytes));
        }
        if let Some((field, message)) = config.problems().into_iter().next() {
            return Err(SessionsConfigError::Invalid { field, message });
        }
        let http = reqwest::Client::builder()
            .timeout(config.provider_timeout)
            // OAuth 2.0 security BCP: never follow redirects from the token endpoint.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SessionsConfigError::Client(e.to_string()))?;
        Ok(Sessions {
            keys,
            lifetime: config.lifetime,
            refresh_before: config.refresh_before,
            login_timeout: config.login_timeout,
            http,
            endpoints: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            renewals: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            logout_tokens: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            // Assertions live minutes; an hour covers any NotOnOrAfter an IdP sets in practice
            // (longer ones are refused as a session's claims would outlive it anyway).
            saml_assertions: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            xmlsec1: config.xmlsec1.clone(),
        })
    }

    // ---- cookies

    fn seal<T: Serialize>(&self, name: &'static str, value: &T) -> Option<String> {
        let key = self.keys.first()?;
        let plain = serde_json::to_string(value).ok()?;
        let mut jar = CookieJar::new();
        jar.private_mut(key).add(Cookie::new(name, plain));
        jar.get(name).map(|c| c.value().to_string())
    }

    fn open<T: DeserializeOwned>(&self, name: &'static str, sealed: &str) -> Option<T> {
        let jar = CookieJar::new();
        self.keys.iter().find_map(|key| {
            let plain = jar
                .private(key)
                .decrypt(Cookie::new(name, sealed.to_string()))?;
            serde_json::from_str(plain.value()).ok()
        })
    }

    fn set_cookie(name: &'static str, value: String, max_age: Duration) -> String {
        Self::set_cookie_with(name, value, max_age, SameSite::Lax)
    }

    fn set_cookie_with(
        name: &'static str,
        value: String,
        max_age: Duration,
        same_site: SameSite,
    ) -> String {
        Cookie::build((name, value))
            .path("/")
            .secure(true)
            .http_only(true)
            .same_site(same_site)
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
            ))
            .build()
            .to_string()
    }

    /// `Set-Cookie` that deletes `name`.
    pub fn clear_cookie(name: &'static str) -> String {
        Self::set_cookie(name, String::new(), Duration::ZERO)
    }

    fn session_cookie(&self, state: &SessionState) -> Result<String, LoginError> {
        let sealed = self
            .seal(SESSION_COOKIE, state)
            .ok_or(LoginError::TooLarge(0))?;
        let remaining = Duration::from_millis(state.end.saturating_sub(now_ms()));
        let header = Self::set_cookie(SESSION_COOKIE, sealed, remaining);
        if header.len() > MAX_COOKIE_BYTES {
            return Err(LoginError::TooLarge(header.len()));
        }
        Ok(header)
    }

    // ---- the request path

    /// Whether the request carries a session cookie at all.
    pub fn has_session(headers: &HeaderMap) -> bool {
        cookie_value(headers, SESSION_COOKIE).is_some()
    }

    /// The principal of the request's session cookie: the session's ID token verified as a
    /// bearer token of the tenant's issuer, renewed with the refresh token when it is about to
    /// expire; refused once the session ends, the identity provider logged the user out, or
    /// the cookie does not open.
    pub async fn authenticate(&self, headers: &HeaderMap, cx: &SessionContext<'_>) -> SessionAuth {
        let Some(sealed) = cookie_value(headers, SESSION_COOKIE) else {
            return SessionAuth::Absent;
        };
        let Some(mut state) = self.open::<SessionState>(SESSION_COOKIE, &sealed) else {
            return SessionAuth::Invalid(AuthError::BadSessionCookie);
        };
        let now = now_ms();
        if now >= state.end {
            return SessionAuth::Invalid(AuthError::SessionExpired);
        }
        if let Some(claims) = &state.claims {
            return saml_principal(&state, claims, cx);
        }
        let mut renewed = None;
        if now.saturating_add(millis(self.refresh_before)) >= state.id_exp && state.rt.is_some() {
            let digest: [u8; 32] = Sha256::digest(sealed.as_bytes()).into();
            let refreshed = self
                .renewals
                .try_get_with(digest, async {
                    self.refresh(&state, cx).await.map(Arc::new)
                })
                .await;
            match refreshed {
                Ok(next) => {
                    state = (*next).clone();
                    match self.session_cookie(&state) {
                        Ok(cookie) => renewed = Some(cookie),
                        Err(e) => {
                            tracing::warn!(tenant = %state.t, error = %e, "session: the renewed session could not be sealed")
                        }
                    }
                }
                // Still usable until the ID token expires; the next request tries again.
                Err(e) => {
                    tracing::warn!(tenant = %state.t, error = %e, "session: the ID token could not be refreshed");
                    if now >= state.id_exp {
                        return SessionAuth::Invalid(AuthError::SessionExpired);
                    }
                }
            }
        }
        let principal = match cx
            .authenticator
            .verify_token(&state.id, cx.identity, cx.registry, cx.generation)
            .await
        {
            Ok(principal) => principal,
            Err(AuthError::Expired) => return SessionAuth::Invalid(AuthError::SessionExpired),
            Err(e) => return SessionAuth::Invalid(e),
        };
        if principal.tenant.as_deref() != Some(state.t.as_str()) {
            return SessionAuth::Invalid(AuthError::TenantClaimMismatch);
        }
        if cx
            .directory
            .session_ended(&state.t, &principal.id, state.login)
        {
            return SessionAuth::Invalid(AuthError::SessionEnded);
        }
        SessionAuth::Valid { principal, renewed }
    }

    /// Redeems the session's refresh token for a new ID token (same user, same tenant).
    async fn refresh(
        &self,
        state: &SessionState,
        cx: &SessionContext<'_>,
    ) -> Result<SessionState, LoginError> {
        let login = sso_of(cx.registry, &state.t).ok_or(LoginError::Tenant)?;
        let endpoints = self.discover(&login.issuer).await?;
        let client = oidc_client(login, &endpoints)?;
        let refresh_token = RefreshToken::new(state.rt.clone().unwrap_or_default());
        let response = client
            .exchange_refresh_token(&refresh_token)
            .request_async(&|request| send_capped(self.http.clone(), request))
            .await
            .map_err(|e| LoginError::Provider(describe_token_error(&e)))?;
        let id_token = response
            .extra_fields()
            .id_token
            .clone()
            .ok_or(LoginError::NoIdToken)?;
        let principal = cx
            .authenticator
            .verify_token(&id_token, cx.identity, cx.registry, cx.generation)
            .await
            .map_err(LoginError::IdToken)?;
        if principal.id != state.sub {
            return Err(LoginError::Subject);
        }
        if principal.tenant.as_deref() != Some(state.t.as_str()) {
            return Err(LoginError::Tenant);
        }
        tracing::debug!(tenant = %state.t, principal = %state.sub, "session: ID token refreshed");
        Ok(SessionState {
            id: id_token,
            id_exp: principal.expires_at.unwrap_or(0).saturating_mul(1000),
            rt: response
                .refresh_token()
                .map(|t| t.secret().clone())
                .or_else(|| state.rt.clone()),
            ..state.clone()
        })
    }

    /// Whether a refused request should rather be sent to the login page: a browser navigating
    /// (GET/HEAD asking for HTML) without credentials or with a session that ended.
    pub fn wants_login(method: &Method, headers: &HeaderMap, error: &AuthError) -> bool {
        let navigating = matches!(*method, Method::GET | Method::HEAD)
            && headers
                .get_all(http::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("text/html"));
        navigating
            && matches!(
                error,
                AuthError::MissingCredentials
                    | AuthError::SessionExpired
                    | AuthError::SessionEnded
                    | AuthError::BadSessionCookie
                    | AuthError::Expired
            )
            && !headers.contains_key(http::header::AUTHORIZATION)
    }

    /// The login URL that brings the person back to `target` (path and query) afterwards.
    pub fn login_location(target: &str) -> String {
        let rd: String = form_urlencoded::byte_serialize(target.as_bytes()).collect();
        format!("{PREFIX}login?rd={rd}")
    }

    // ---- the browser endpoints

    /// Answers a request under [`PREFIX`].
    pub async fn handle(
        &self,
        req: &BrowserRequest<'_>,
        cx: &SessionContext<'_>,
    ) -> BrowserResponse {
        let endpoint = req.path.strip_prefix(PREFIX).unwrap_or("");
        let mut response = match (req.method, endpoint) {
            (&Method::GET, "login") => self.login_page(req, cx).await,
            (&Method::POST, "login") => self.login_by_email(req, cx).await,
            (&Method::GET, "callback") => self.callback(req, cx).await,
            (&Method::GET, "logout") => self.logout_page(req),
            (&Method::POST, "logout") => self.logout(req, cx).await,
            (&Method::GET, "logged-out") => BrowserResponse::page(
                200,
                "Signed out",
                format!(
                    "<p>You are signed out.</p><p><a href=\"{PREFIX}login\">Sign in again</a></p>"
                ),
            ),
            (&Method::POST, "backchannel-logout") => self.backchannel_logout(req, cx).await,
            (&Method::GET, "session") => self.whoami(req, cx).await,
            (method, path) if path.starts_with("saml/") => {
                let target = path.trim_start_matches("saml/").split_once('/');
                let found = target.and_then(|(tenant, page)| {
                    saml_of(cx.registry, tenant).map(|saml| (tenant, page, saml))
                });
                match found {
                    Some((tenant, "metadata", saml)) if method == Method::GET => {
                        self.saml_metadata(req, tenant, saml)
                    }
                    Some((tenant, "acs", saml)) if method == Method::POST => {
                        self.saml_acs(req, cx, tenant, saml).await
                    }
                    Some(_) => BrowserResponse::message(404, "Not found", "No such page."),
                    None => BrowserResponse::message(
                        404,
                        "Not found",
                        "No SAML sign-in for this organisation.",
                    ),
                }
            }
            _ => BrowserResponse::message(404, "Not found", "No such page."),
        };
        response
            .headers
            .push(("cache-control", "no-store".to_string()));
        response
    }

    async fn login_page(
        &self,
        req: &BrowserRequest<'_>,
        cx: &SessionContext<'_>,
    ) -> BrowserResponse {
        let rd = return_path(query_param(req.query, "rd").as_deref());
        let hint = query_param(req.query, "login_hint");
        if let Some(tenant) = req.host_tenant.clone().filter(|t| has_sso(cx.registry, t)) {
            return self.start(req, cx, &tenant, rd, hint.as_deref(), 302).await;
        }
        if let Some(tenant) = hint
            .as_deref()
            .and_then(|email| tenant_for_email(cx.registry, email))
        {
            return self.start(req, cx, &tenant, rd, hint.as_deref(), 302).await;
        }
        login_form(200, &rd, None)
    }

    async fn login_by_email(
        &self,
        req: &BrowserRequest<'_>,
        cx: &SessionContext<'_>,
    ) -> BrowserResponse {
        let form: Vec<(String, String)> = form_urlencoded::parse(req.body).into_owned().collect();
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let rd = return_path(field("rd").as_deref());
        let email = field("email").unwrap_or_default();
        match tenant_for_email(cx.registry, email.trim()) {
            Some(tenant) => {
                self.start(req, cx, &tenant, rd, Some(email.trim()), 303)
                    .await
            }
            None => login_form(
                400,
                &rd,
                Some("No organisation signs in with that e-mail domain here."),
            ),
        }
    }

    /// Sends the browser to `tenant`'s identity provider with a new `state`, `nonce` and PKCE
    /// challenge, remembered in the login cookie.
    async fn start(
        &self,
        req: &BrowserRequest<'_>,
        cx: &SessionContext<'_>,
        tenant: &str,
        rd: String,
        login_hint: Option<&str>,
        status: u16,
    ) -> BrowserResponse {
        if let Some(saml) = saml_of(cx.registry, tenant) {
            return self.saml_start(req, tenant, saml, rd, status);
        }
        let Some(login) = sso_of(cx.registry, tenant) else {
            return BrowserResponse::message(
                404,
                "Sign-in unavailable",
                "This organisation has no single sign-on.",
            );
        };
        let endpoints = match self.discover(&login.issuer).await {
            Ok(e) => e,
            Err(e) => return provider_trouble(tenant, &e),
        };
        let client = match oidc_client(login, &endpoints) {
            Ok(c) => c,
            Err(e) => return provider_trouble(tenant, &e),
        };
        let redirect = match RedirectUrl::new(format!("{}{PREFIX}callback", req.origin)) {
            Ok(r) => r,
            Err(e) => return provider_trouble(tenant, &LoginError::Url(e.to_string())),
        };
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = CsrfToken::new_random();
        let mut request = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(login.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(redirect))
            .add_extra_param("nonce", nonce.secret().clone());
        if let Some(hint) = login_hint.filter(|h| !h.is_empty()) {
            request = request.add_extra_param("login_hint", hint.to_string());
        }
        let (url, state) = request.url();
        let flow = LoginFlow {
            t: tenant.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce: verifier.secret().clone(),
            rd,
            end: now_ms().saturating_add(millis(self.login_timeout)),
        };
        let Some(sealed) = self.seal(LOGIN_COOKIE, &flow) else {
            return provider_trouble(tenant, &LoginError::TooLarge(0));
        };
        tracing::info!(tenant, "session: login started");
        BrowserResponse::redirect(status, url.to_string()).with_cookie(Self::set_cookie(
            LOGIN_COOKIE,
            sealed,
            self.login_timeout,
        ))
    }

    async fn callback(&self, req: &BrowserRequest<'_>, cx: &SessionContext<'_>) -> BrowserResponse {
        let flow = cookie_value(req.headers, LOGIN_COOKIE)
            .and_then(|sealed| self.open::<LoginFlow>(LOGIN_COOKIE, &sealed));
        let Some(flow) = flow.filter(|f| now_ms() < f.end) else {
            return login_form(
                400,
                "/",
                Some(
                    "This sign-in expired or was started in another browser. Please sign in again.",
                ),
            );
        };
        let state = query_param(req.query, "state").unwrap_or_default();
        if !bool::from(state.as_bytes().ct_eq(flow.state.as_bytes())) {
            tracing::warn!(tenant = %flow.t, "session: callback with a state that is not this browser's login (CSRF?)");
            return BrowserResponse::message(
                400,
                "Sign-in failed",
                "The answer does not belong to this sign-in. Please sign in again.",
            );
        }
        let clear_flow = Self::clear_cookie(LOGIN_COOKIE);
        if let Some(error) = query_param(req.query, "error") {
            let description = query_param(req.query, "error_description").unwrap_or_default();
            tracing::info!(tenant = %flow.t, error, description, "session: the identity provider refused the login");
            return BrowserResponse::message(
                401,
                "Sign-in refused",
                &format!("Your identity provider answered: {error} {description}"),
            )
            .with_cookie(clear_flow);
        }
        let Some(code) = query_param(req.query, "code") else {
            return BrowserResponse::message(400, "Sign-in failed", "The answer has no code.")
                .with_cookie(clear_flow);
        };
        match self.finish(req, cx, &flow, code).await {
            Ok(session_cookie) => BrowserResponse::redirect(303, flow.rd.clone())
                .with_cookie(clear_flow)
                .with_cookie(session_cookie),
            Err(Finish::Refused(error)) => {
                tracing::info!(target: "audit", event = "session.refused", tenant = %flow.t, reason = error.slug(), "session: login refused");
                BrowserResponse::message(
                    401,
                    "Sign-in refused",
                    if matches!(error, AuthError::PrincipalDeactivated) {
                        "This account is deactivated."
                    } else {
                        "Your identity could not be verified."
                    },
                )
                .with_cookie(clear_flow)
            }
            Err(Finish::Failed(error)) => provider_trouble(&flow.t, &error).with_cookie(clear_flow),
        }
    }

    /// Redeems the code, checks the ID token, and seals the session.
    async fn finish(
        &self,
        req: &BrowserRequest<'_>,
        cx: &SessionContext<'_>,
        flow: &LoginFlow,
        code: String,
    ) -> Result<String, Finish> {
        let login = sso_of(cx.registry, &flow.t).ok_or(Finish::Failed(LoginError::Tenant))?;
        let redirect = RedirectUrl::new(format!("{}{PREFIX}callback", req.origin))
            .map_err(|e| Finish::Failed(LoginError::Url(e.to_string())))?;
        let Redeemed {
            principal,
            id_token,
            refresh_token,
            ..
        } = self
            .redeem(login, redirect, code, &flow.pkce, &flow.nonce, cx)
            .await?;
        if principal.tenant.as_deref() != Some(flow.t.as_str()) {
            return Err(Finish::Failed(LoginError::Tenant));
        }
        if cx.directory.is_refused(&flow.t, &principal.id) {
            return Err(Finish::Refused(AuthError::PrincipalDeactivated));
        }
        let now = now_ms();
        let state = SessionState {
            t: flow.t.clone(),
            sub: principal.id.clone(),
            id: id_token,
            id_exp: principal.expires_at.unwrap_or(0).saturating_mul(1000),
            rt: refresh_token,
            login: now,
            end: now.saturating_add(millis(self.lifetime)),
            claims: None,
        };
        let cookie = self.session_cookie(&state).map_err(Finish::Failed)?;
        tracing::info!(target: "audit", event = "session.login", tenant = %flow.t, principal = %principal.id, "session: logged in");
        Ok(cookie)
    }

    /// `GET /.gateway/logout`: a page whose button signs out (a POST). A GET changes nothing, so
    /// another site cannot sign a person out by sending their browser here.
    fn logout_page(&self, req: &BrowserRequest<'_>) -> BrowserResponse {
        let session = cookie_value(req.headers, SESSION_COOKIE)
            .and_then(|sealed| self.open::<SessionState>(SESSION_COOKIE, &sealed));
        if session.is_none() {
            return BrowserResponse::redirect(303, format!("{}{PREFIX}logged-out", req.origin))
                .with_cookie(Self::clear_cookie(SESSION_COOKIE));
        }
        BrowserResponse::page(
            200,
            "Sign out",
            format!(
                "<form id=\"gateway.logoutForm\" method=\"post\" action=\"{PREFIX}logout\">\
                 <p>Sign out of this site and your organisation's sign-in?</p>\
                 <button type=\"submit\" autofocus>Sign out</button></form>"
            ),
        )
    }

    /// `POST /.gateway/logout`: ends the session on every replica (a copy of its cookie is
    /// refused from now on), clears the cookie, then RP-initiated logout at the identity
    /// provider. Refused when another site sent it.
    async fn logout(&self, req: &BrowserRequest<'_>, cx: &SessionContext<'_>) -> BrowserResponse {
        if let Some(site) = cross_origin(req) {
            tracing::warn!(site, "session: logout refused: sent by another site");
            return BrowserResponse::message(
                403,
                "Not signed out",
                "The sign-out did not come from this site.",
            );
        }
        let logged_out = format!("{}{PREFIX}logged-out", req.origin);
        let session = cookie_value(req.headers, SESSION_COOKIE)
            .and_then(|sealed| self.open::<SessionState>(SESSION_COOKIE, &sealed));
        let clear = Self::clear_cookie(SESSION_COOKIE);
        let Some(session) = session else {
            return BrowserResponse::redirect(303, logged_out).with_cookie(clear);
        };
        let ended = cx
            .directory
            .end_session(&session.t, &session.sub, session.login, session.end)
            .await;
        if let Err(e) = &ended {
            // The browser's cookie goes all the same; a copy of it lives until its end.
            tracing::error!(tenant = %session.t, principal = %session.sub, error = %e, "session: the logout could not be recorded in the directory");
        }
        tracing::info!(target: "audit", event = "session.logout", tenant = %session.t, principal = %session.sub, recorded = ended.is_ok(), "session: logged out");
        let Some(login) = sso_of(cx.registry, &session.t) else {
            return BrowserResponse::redirect(303, logged_out).with_cookie(clear);
        };
        // RP-initiated logout: the identity provider ends its own session too.
        let end_session = match self.discover(&login.issuer).await {
            Ok(endpoints) => endpoints.end_session_endpoint.clone(),
            Err(e) => {
                tracing::warn!(tenant = %session.t, error = %e, "session: logout without the identity provider");
                None
            }
        };
        let Some(end_session) = end_session.and_then(|u| reqwest::Url::parse(&u).ok()) else {
            return BrowserResponse::redirect(303, logged_out).with_cookie(clear);
        };
        let mut url = end_session;
        url.query_pairs_mut()
            .append_pair("client_id", &login.client_id)
            .append_pair("id_token_hint", &session.id)
            .append_pair("post_logout_redirect_uri", &logged_out);
        BrowserResponse::redirect(303, url.to_string()).with_cookie(clear)
    }

    /// OpenID Connect Back-Channel Logout 1.0: the identity provider POSTs a signed logout
    /// token; every session of its subject that began before now ends on every replica (the
    /// directory carries it).
    async fn backchannel_logout(
        &self,
        req: &BrowserRequest<'_>,
        cx: &SessionContext<'_>,
    ) -> BrowserResponse {
        let refuse = |description: &str| {
            tracing::warn!(description, "session: back-channel logout refused");
            BrowserResponse::json(
                400,
                json!({"error": "invalid_request", "error_description": description}),
            )
        };
        let Some(token) = form_urlencoded::parse(req.body)
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned())
        else {
            return refuse("no logout_token");
        };
        let principal = match cx
            .authenticator
            .verify_logout_token(&token, cx.identity, cx.registry, cx.generation)
            .await
        {
            Ok(p) => p,
            Err(e) => return refuse(&format!("the logout token is not valid: {e}")),
        };
        let Ok(claims) =
            jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(&token)
        else {
            return refuse("the logout token is malformed");
        };
        if !claims
            .get("events")
            .and_then(Value::as_object)
            .is_some_and(|e| e.contains_key(super::BACKCHANNEL_LOGOUT_EVENT))
        {
            return refuse("the logout token has no back-channel logout event");
        }
        if claims.contains_key("nonce") {
            return refuse("a logout token must not carry a nonce");
        }
        if !claims.get("sub").is_some_and(Value::is_string) {
            return refuse("the logout token names no subject (sid-only logout is not supported)");
        }
        let Some(tenant) = principal.tenant.clone() else {
            return refuse("the logout token's issuer belongs to no tenant");
        };
        if sso_of(cx.registry, &tenant).is_none_or(|login| {
            claims.get("iss").and_then(Value::as_str) != Some(login.issuer.as_str())
        }) {
            return refuse("the logout token's issuer is not the tenant's login issuer");
        }
        if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
            let seen = format!("{tenant}\u{0}{jti}");
            if self.logout_tokens.contains_key(&seen) {
                return refuse("the logout token was used already");
            }
            self.logout_tokens.insert(seen, ());
        }
        match cx
            .directory
            .end_sessions(&tenant, &principal.id, now_ms())
            .await
        {
            Ok(_) => {
                tracing::info!(target: "audit", event = "session.backchannel_logout", tenant = %tenant, principal = %principal.id, "session: the identity provider ended the user's sessions");
                BrowserResponse::json(200, json!({}))
            }
            Err(e) => {
                tracing::error!(tenant = %tenant, error = %e, "session: back-channel logout could not be recorded");
                BrowserResponse::json(
                    503,
                    json!({"error": "temporarily_unavailable", "error_description": "the logout could not be recorded; retry"}),
                )
            }
        }
    }

    async fn whoami(&self, req: &BrowserRequest<'_>, cx: &SessionContext<'_>) -> BrowserResponse {
        match self.authenticate(req.headers, cx).await {
            SessionAuth::Valid { principal, renewed } => {
                let response = BrowserResponse::json(
                    200,
                    json!({
                        "principal": principal.id,
                        "tenant": principal.tenant.as_deref(),
                        "roles": principal.roles,
                        "expires_at": principal.expires_at,
                    }),
                );
                match renewed {
                    Some(cookie) => response.with_cookie(cookie),
                    None => response,
                }
            }
            SessionAuth::Absent => BrowserResponse::json(401, json!({"error": "no session"})),
            SessionAuth::Invalid(e) => BrowserResponse::json(401, json!({"error": e.slug()}))
                .with_cookie(Self::clear_cookie(SESSION_COOKIE)),
        }
    }

    /// The service provider's entity id and ACS URL for `tenant` on this origin.
    fn saml_urls(
        req: &BrowserRequest<'_>,
        tenant: &str,
        saml: &SamlLoginSettings,
    ) -> (String, String) {
        let base = format!("{}{PREFIX}saml/{tenant}", req.origin);
        let entity_id = saml
            .sp_entity_id
            .clone()
            .unwrap_or_else(|| format!("{base}/metadata"));
        (entity_id, format!("{base}/acs"))
    }

    fn saml_metadata(
        &self,
        req: &BrowserRequest<'_>,
        tenant: &str,
        saml: &SamlLoginSettings,
    ) -> BrowserResponse {
        let (entity_id, acs) = Self::saml_urls(req, tenant, saml);
        BrowserResponse {
            status: 200,
            headers: Vec::new(),
            content_type: "application/samlmetadata+xml",
            body: super::saml::metadata(&entity_id, &acs),
        }
    }

    /// Sends the browser to the identity provider with an AuthnRequest (HTTP-Redirect); its
    /// id is remembered in the login cookie, which must come back on the identity provider's
    /// cross-site POST, hence `SameSite=None`.
    fn saml_start(
        &self,
        req: &BrowserRequest<'_>,
        tenant: &str,
        saml: &SamlLoginSettings,
        rd: String,
        status: u16,
    ) -> BrowserResponse {
        let (entity_id, acs) = Self::saml_urls(req, tenant, saml);
        let id = super::saml::new_request_id();
        let request = super::saml::authn_request(
            &id,
            &entity_id,
            &acs,
            &saml.idp_sso_url,
            jiff::Timestamp::now(),
        );
        let url = match super::saml::redirect_url(&saml.idp_sso_url, &request) {
            Ok(url) => url,
            Err(e) => return provider_trouble(tenant, &LoginError::Url(e)),
        };
        let flow = LoginFlow {
            t: tenant.to_string(),
            state: id,
            nonce: String::new(),
            pkce: String::new(),
            rd,
            end: now_ms().saturating_add(millis(self.login_timeout)),
        };
        let Some(sealed) = self.seal(LOGIN_COOKIE, &flow) else {
            return provider_trouble(tenant, &LoginError::TooLarge(0));
        };
        tracing::info!(tenant, "session: SAML login started");
        BrowserResponse::redirect(status, url).with_cookie(Self::set_cookie_with(
            LOGIN_COOKIE,
            sealed,
            self.login_timeout,
            SameSite::None,
        ))
    }

    /// The assertion consumer service: the identity provider's HTTP-POST of a Response.
    async fn saml_acs(
        &self,
        req: &BrowserRequest<'_>,
        cx: &SessionContext<'_>,
        tenant: &str,
        saml: &SamlLoginSettings,
    ) -> BrowserResponse {
        let flow = cookie_value(req.headers, LOGIN_COOKIE)
            .and_then(|sealed| self.open::<LoginFlow>(LOGIN_COOKIE, &sealed))
            .filter(|f| now_ms() < f.end && f.t == tenant && f.pkce.is_empty());
        let Some(flow) = flow else {
            return login_form(
                400,
                "/",
                Some(
                    "This sign-in expired or was started in another browser. Please sign in again.",
                ),
            );
        };
        let clear_flow = Self::clear_cookie(LOGIN_COOKIE);
        let refused = |error: &super::saml::SamlError| {
            tracing::warn!(target: "audit", event = "session.refused", tenant, reason = error.slug(), error = %error, "session: SAML response refused");
            BrowserResponse::message(
                401,
                "Sign-in refused",
                "The answer of your identity provider could not be accepted.",
            )
            .with_cookie(Self::clear_cookie(LOGIN_COOKIE))
        };
        let field = form_urlencoded::parse(req.body)
            .find(|(k, _)| k == "SAMLResponse")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let xml = match super::saml::decode_post(&field) {
            Ok(xml) => xml,
            Err(e) => return refused(&e),
        };
        let (entity_id, acs) = Self::saml_urls(req, tenant, saml);
        let expected = super::saml::Expected {
            idp: saml,
            sp_entity_id: &entity_id,
            acs_url: &acs,
            request_id: &flow.state,
            now: jiff::Timestamp::now(),
            skew: Duration::from_secs(60),
            xmlsec1: &self.xmlsec1,
        };
        let verified = match super::saml::verify(&xml, &expected).await {
            Ok(v) => v,
            Err(e) => return refused(&e),
        };
        let replay_key = format!("{tenant}\u{0}{}", verified.assertion_id);
        if self.saml_assertions.contains_key(&replay_key) {
            return refused(&super::saml::SamlError::Replay);
        }
        self.saml_assertions.insert(replay_key, ());
        let principal = match saml_claims_principal(&verified.claims, saml, tenant) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(target: "audit", event = "session.refused", tenant, reason = e.slug(), "session: the SAML assertion does not make a principal");
                return BrowserResponse::message(
                    401,
                    "Sign-in refused",
                    "Your identity could not be verified.",
                )
                .with_cookie(clear_flow);
            }
        };
        if cx.directory.is_refused(tenant, &principal.id) {
            tracing::info!(target: "audit", event = "session.refused", tenant, principal = %principal.id, reason = "principal-deactivated", "session: login refused");
            return BrowserResponse::message(
                401,
                "Sign-in refused",
                "This account is deactivated.",
            )
            .with_cookie(clear_flow);
        }
        let now = now_ms();
        let mut end = now.saturating_add(millis(self.lifetime));
        if let Some(until) = verified.session_until {
            end = end.min(u64::try_from(until.as_millisecond()).unwrap_or(0));
        }
        let state = SessionState {
            t: tenant.to_string(),
            sub: principal.id.clone(),
            id: String::new(),
            id_exp: end,
            rt: None,
            login: now,
            end,
            claims: Some(verified.claims),
        };
        match self.session_cookie(&state) {
            Ok(cookie) => {
                tracing::info!(target: "audit", event = "session.login", tenant, principal = %principal.id, method = "saml", "session: logged in");
                BrowserResponse::redirect(303, flow.rd.clone())
                    .with_cookie(clear_flow)
                    .with_cookie(cookie)
            }
            Err(e) => provider_trouble(tenant, &e).with_cookie(clear_flow),
        }
    }

    /// The identity provider's endpoints, from its discovery document (cached 10 minutes).
    async fn discover(&self, issuer: &str) -> Result<Arc<ProviderEndpoints>, LoginError> {
        self.endpoints
            .try_get_with(issuer.to_string(), async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let response = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| LoginError::Discovery(format!("{url}: {e}")))?;
                let document = crate::http_body::read_capped(response, MAX_PROVIDER_DOCUMENT_BYTES)
                    .await
                    .map_err(|e| LoginError::Discovery(format!("{url}: {e}")))?;
                let endpoints: ProviderEndpoints = serde_json::from_slice(&document)
                    .map_err(|e| LoginError::Discovery(format!("{url}: {e}")))?;
                // OpenID Connect Discovery §4.3: the document must name the issuer asked for.
                if endpoints.issuer != issuer {
                    return Err(LoginError::Discovery(format!(
                        "{url} names issuer `{}`",
                        endpoints.issuer
                    )));
                }
                Ok(Arc::new(endpoints))
            })
            .await
            .map_err(|e: Arc<LoginError>| LoginError::Discovery(e.to_string()))
    }
}

enum Finish {
    /// The person is not let in (their token or account).
    Refused(AuthError),
    /// The login could not be completed (provider or configuration).
    Failed(LoginError),
}

/// A login's code, redeemed: the ID token verified, its `nonce` the login's.
struct Redeemed {
    principal: Arc<Principal>,
    id_token: String,
    /// The ID token's claims (its signature verified with the principal).
    claims: Map<String, Value>,
    refresh_token: Option<String>,
}

impl Sessions {
    /// Redeems an authorization `code` at `login`'s provider with the PKCE verifier, verifies
    /// the ID token exactly as the issuer's bearer tokens and checks its `nonce`.
    async fn redeem(
        &self,
        login: &OidcLoginSettings,
        redirect: RedirectUrl,
        code: String,
        pkce_verifier: &str,
        nonce: &str,
        cx: &SessionContext<'_>,
    ) -> Result<Redeemed, Finish> {
        let endpoints = self.discover(&login.issuer).await.map_err(Finish::Failed)?;
        let client = oidc_client(login, &endpoints).map_err(Finish::Failed)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .set_redirect_uri(Cow::Owned(redirect))
            .request_async(&|request| send_capped(self.http.clone(), request))
            .await
            .map_err(|e| Finish::Failed(LoginError::Provider(describe_token_error(&e))))?;
        let id_token = response
            .extra_fields()
            .id_token
            .clone()
            .ok_or(Finish::Failed(LoginError::NoIdToken))?;
        let principal = cx
            .authenticator
            .verify_token(&id_token, cx.identity, cx.registry, cx.generation)
            .await
            .map_err(Finish::Refused)?;
        // The signature was verified just now: the claims can be read as they are.
        let claims: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(&id_token)
            .map_err(|_| Finish::Refused(AuthError::MalformedToken))?;
        let token_nonce = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
        if !bool::from(token_nonce.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err(Finish::Failed(LoginError::Nonce));
        }
        Ok(Redeemed {
            principal,
            id_token,
            claims,
            refresh_token: response.refresh_token().map(|t| t.secret().clone()),
        })
    }
}

fn oidc_client(
    login: &OidcLoginSettings,
    endpoints: &ProviderEndpoints,
) -> Result<OidcClient, LoginError> {
    let auth_url = AuthUrl::new(endpoints.authorization_endpoint.clone())
        .map_err(|e| LoginError::Url(format!("authorization_endpoint: {e}")))?;
    let token_url = TokenUrl::new(endpoints.token_endpoint.clone())
        .map_err(|e| LoginError::Url(format!("token_endpoint: {e}")))?;
    Ok(oauth2::Client::new(ClientId::new(login.client_id.clone()))
        .set_client_secret(ClientSecret::new(login.client_secret.clone()))
        .set_auth_type(match login.client_auth {
            OidcClientAuth::ClientSecretBasic => AuthType::BasicAuth,
            OidcClientAuth::ClientSecretPost => AuthType::RequestBody,
        })
        .set_auth_uri(auth_url)
        .set_token_uri(token_url))
}

/// Why a request to the token endpoint got no answer the gateway would read.
#[derive(Debug, thiserror::Error)]
enum TokenHttpError {
    #[error("{0}")]
    Send(#[from] reqwest::Error),
    #[error("{0}")]
    Body(#[from] crate::http_body::BodyError),
    #[error("{0}")]
    Answer(#[from] http::Error),
}

/// oauth2's token requests, sent with the gateway's client and answered with at most
/// [`MAX_PROVIDER_DOCUMENT_BYTES`] (oauth2's own reqwest glue would buffer any size).
async fn send_capped(
    http: reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, TokenHttpError> {
    let response = http.execute(reqwest::Request::try_from(request)?).await?;
    let mut answer = http::Response::builder()
        .status(response.status())
        .version(response.version());
    if let Some(headers) = answer.headers_mut() {
        headers.extend(response.headers().clone());
    }
    let body = crate::http_body::read_capped(response, MAX_PROVIDER_DOCUMENT_BYTES).await?;
    Ok(answer.body(body)?)
}

fn describe_token_error<E: std::error::Error + 'static>(
    error: &oauth2::RequestTokenError<E, BasicErrorResponse>,
) -> String {
    match error {
        oauth2::RequestTokenError::ServerResponse(response) => response.to_string(),
        other => crate::diagnostics::describe(other),
    }
}

fn provider_trouble(tenant: &str, error: &LoginError) -> BrowserResponse {
    tracing::warn!(tenant, error = %error, "session: login failed");
    BrowserResponse::message(
        502,
        "Sign-in unavailable",
        "Your organisation's identity provider could not complete the sign-in. Please try again later.",
    )
}

fn login_form(status: u16, rd: &str, problem: Option<&str>) -> BrowserResponse {
    let problem = problem
        .map(|p| format!("<p role=\"alert\">{}</p>", html_escape::encode_text(p)))
        .unwrap_or_default();
    BrowserResponse::page(
        status,
        "Sign in",
        format!(
            "{problem}<form method=\"post\" action=\"{PREFIX}login\">\
             <label>Work e-mail <input type=\"email\" name=\"email\" autocomplete=\"username\" required autofocus></label>\
             <input type=\"hidden\" name=\"rd\" value=\"{}\">\
             <button type=\"submit\">Continue</button></form>",
            html_escape::encode_double_quoted_attribute(rd)
        ),
    )
}

/// Who sent a state-changing request from another site, when a browser says so: its `Origin`
/// is not the gateway's, or (without `Origin`) `Sec-Fetch-Site` is not `same-origin` or `none`
/// (typed or bookmarked). A request with neither header is no browser's cross-site request.
fn cross_origin<'r>(req: &'r BrowserRequest<'_>) -> Option<&'r str> {
    let header = |name: &str| req.headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    if let Some(origin) = header("origin") {
        return (origin != req.origin).then_some(origin);
    }
    header("sec-fetch-site").filter(|site| !matches!(*site, "same-origin" | "none"))
}

fn has_sso(registry: &TenantRegistry, tenant: &str) -> bool {
    registry.get(tenant).is_some_and(|t| t.sso.is_some())
}

/// The tenant's SAML login settings, when it signs in with SAML.
fn saml_of<'r>(registry: &'r TenantRegistry, tenant: &str) -> Option<&'r SamlLoginSettings> {
    registry.get(tenant)?.sso.as_ref()?.saml.as_ref()
}

/// The principal of a SAML session: its claims mapped as the tenant's SAML settings say
/// (today's settings: a changed mapping applies to sessions already open).
fn saml_principal(
    state: &SessionState,
    claims: &Map<String, Value>,
    cx: &SessionContext<'_>,
) -> SessionAuth {
    let Some(saml) = saml_of(cx.registry, &state.t) else {
        return SessionAuth::Invalid(AuthError::SessionExpired);
    };
    let principal = match saml_claims_principal(claims, saml, &state.t) {
        Ok(p) => p,
        Err(e) => return SessionAuth::Invalid(e),
    };
    if cx
        .directory
        .session_ended(&state.t, &principal.id, state.login)
    {
        return SessionAuth::Invalid(AuthError::SessionEnded);
    }
    SessionAuth::Valid {
        principal: Arc::new(principal),
        renewed: None,
    }
}

fn saml_claims_principal(
    claims: &Map<String, Value>,
    saml: &SamlLoginSettings,
    tenant: &str,
) -> Result<Principal, AuthError> {
    let mut principal = super::principal::map_claims(
        claims,
        &saml.claims,
        &saml.idp_entity_id,
        Some(Arc::from(tenant)),
        false,
    )?;
    principal.tenant_bound = true;
    // Listed in the directory like any principal first seen with a valid credential.
    principal.provision = true;
    Ok(principal)
}

/// The tenant's OIDC login settings, when it has single sign-on.
fn sso_of<'r>(registry: &'r TenantRegistry, tenant: &str) -> Option<&'r OidcLoginSettings> {
    registry.get(tenant)?.sso.as_ref()?.oidc.as_ref()
}

fn tenant_for_email(registry: &TenantRegistry, email: &str) -> Option<String> {
    let (_, domain) = email.rsplit_once('@')?;
    registry
        .tenant_for_login_domain(&domain.to_ascii_lowercase())
        .map(|t| t.to_string())
}

/// Where to send the browser after login: a path on this host, never another site (`//evil`,
/// `/\evil` and absolute URLs are open redirects).
fn return_path(rd: Option<&str>) -> String {
    match rd {
        Some(rd)
            if rd.starts_with('/')
                && !rd.starts_with("//")
                && !rd.starts_with("/\\")
                && !rd.bytes().any(|b| b.is_ascii_control())
                && rd.len() <= 2048 =>
        {
            rd.to_string()
        }
        _ => "/".to_string(),
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The `name=value` pairs of the request's `Cookie` headers, as bytes: a cookie that is not
/// UTF-8 (an application may set one) neither hides the gateway's cookies nor keeps them from
/// being removed.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
}

/// The request's `Cookie` header without the gateway's own cookies (`__Host-gw-…`): the
/// upstream never sees the session (it holds the refresh token), nor the login under way.
/// `None` when nothing changes; `Some(None)` when no cookie is left.
pub fn upstream_cookie(headers: &HeaderMap) -> Option<Option<Vec<u8>>> {
    let mut ours = false;
    let mut kept = Vec::new();
    for pair in cookie_pairs(headers) {
        if pair.starts_with(b"__Host-gw-") {
            ours = true;
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    ours.then(|| (!kept.is_empty()).then_some(kept))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    cookie_pairs(headers)
        .filter_map(|pair| Cookie::parse(std::str::from_utf8(pair).ok()?).ok())
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(dir: &Path, keys: &[&str]) -> Sessions {
        let config = SessionsConfig {
            key_files: keys.iter().map(|k| k.to_string()).collect(),
            lifetime: default_lifetime(),
            refresh_before: default_refresh_before(),
            login_timeout: default_login_timeout(),
            provider_timeout: default_provider_timeout(),
            xmlsec1: default_xmlsec1(),
        };
        Sessions::load(&config, dir).unwrap()
    }

    fn state() -> SessionState {
        SessionState {
            t: "acme".into(),
            sub: "alice".into(),
            id: "header.claims.signature".into(),
            // Fixed moments (2096), so two calls compare equal.
            id_exp: 4_000_000_060_000,
            rt: Some("refresh".into()),
            login: 4_000_000_000_000,
            end: 4_000_003_600_000,
            claims: None,
        }
    }

    #[test]
    fn cookies_are_sealed_and_keys_rotate() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.key"), [1u8; 32]).unwrap();
        std::fs::write(dir.path().join("new.key"), [2u8; 48]).unwrap();
        let old = sessions(dir.path(), &["old.key"]);
        let sealed = old.seal(SESSION_COOKIE, &state()).unwrap();
        assert!(!sealed.contains("alice"), "the session is encrypted");
        assert_eq!(
            old.open::<SessionState>(SESSION_COOKIE, &sealed),
            Some(state())
        );
        // Bound to its name: the login cookie's key does not open it.
        assert!(old.open::<SessionState>(LOGIN_COOKIE, &sealed).is_none());
        // Rotation: the new key seals, the old one still opens what it sealed.
        let rotated = sessions(dir.path(), &["new.key", "old.key"]);
        assert_eq!(
            rotated.open::<SessionState>(SESSION_COOKIE, &sealed),
            Some(state())
        );
        let resealed = rotated.seal(SESSION_COOKIE, &state()).unwrap();
        assert!(old
            .open::<SessionState>(SESSION_COOKIE, &resealed)
            .is_none());
        // Once the old key is gone, its cookies no longer open.
        let retired = sessions(dir.path(), &["new.key"]);
        assert!(retired
            .open::<SessionState>(SESSION_COOKIE, &sealed)
            .is_none());
        // Tampering is detected.
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(old
            .open::<SessionState>(SESSION_COOKIE, &tampered)
            .is_none());
    }

    #[test]
    fn session_cookies_are_host_only_secure_http_only_and_lax() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), [7u8; 32]).unwrap();
        let header = sessions(dir.path(), &["k"])
            .session_cookie(&state())
            .unwrap();
        assert!(header.starts_with("__Host-gw-session="), "{header}");
        for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age="] {
            assert!(header.contains(attribute), "{attribute} in {header}");
        }
        assert!(!header.contains("Domain"), "{header}");
        let mut headers = HeaderMap::new();
        let (pair, _) = header.split_once(';').unwrap();
        headers.insert(
            http::header::COOKIE,
            format!("theme=dark; {pair}").parse().unwrap(),
        );
        assert!(Sessions::has_session(&headers));
        assert_eq!(
            cookie_value(&headers, SESSION_COOKIE).as_deref(),
            pair.split_once('=').map(|(_, v)| v)
        );
    }

    #[test]
    fn keys_must_be_long_enough_and_durations_sane() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("short.key"), b"too short").unwrap();
        let config = |files: &[&str], lifetime: Duration| SessionsConfig {
            key_files: files.iter().map(|f| f.to_string()).collect(),
            lifetime,
            refresh_before: default_refresh_before(),
            login_timeout: default_login_timeout(),
            provider_timeout: default_provider_timeout(),
            xmlsec1: default_xmlsec1(),
        };
        let error = Sessions::load(&config(&["short.key"], default_lifetime()), dir.path())
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("short.key") && error.to_string().contains("9 bytes"),
            "{error}"
        );
        let error = Sessions::load(&config(&["missing.key"], default_lifetime()), dir.path())
            .err()
            .unwrap();
        assert!(error.to_string().contains("key_files[0]"), "{error}");
        assert!(matches!(
            Sessions::load(&config(&[], default_lifetime()), dir.path()),
            Err(SessionsConfigError::NoKeys)
        ));
        std::fs::write(dir.path().join("ok.key"), [3u8; 32]).unwrap();
        let error = Sessions::load(&config(&["ok.key"], Duration::from_secs(5)), dir.path())
            .err()
            .unwrap();
        assert!(error.to_string().contains("lifetime"), "{error}");
    }

    #[test]
    fn the_gateways_cookies_never_reach_the_upstream() {
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(http::header::COOKIE, v.parse().unwrap());
            }
            map
        };
        assert_eq!(upstream_cookie(&headers(&["theme=dark; lang=en"])), None);
        assert_eq!(
            upstream_cookie(&headers(&["theme=dark; __Host-gw-session=abc; lang=en"])),
            Some(Some(b"theme=dark; lang=en".to_vec()))
        );
        assert_eq!(
            upstream_cookie(&headers(&["__Host-gw-session=abc", "__Host-gw-login=x"])),
            Some(None)
        );
        // A cookie that is not UTF-8 beside the session: the session is still removed (it
        // reached the upstream before), the other cookie kept as it is.
        let mut mixed = HeaderMap::new();
        mixed.append(
            http::header::COOKIE,
            http::HeaderValue::from_bytes(b"name=caf\xc3\xa9; __Host-gw-session=abc").unwrap(),
        );
        assert_eq!(
            upstream_cookie(&mixed),
            Some(Some(b"name=caf\xc3\xa9".to_vec()))
        );
        // ... and found: the browser is not sent to log in again and again.
        assert_eq!(cookie_value(&mixed, SESSION_COOKIE).as_deref(), Some("abc"));
    }

    #[test]
    fn return_paths_stay_on_this_host() {
        assert_eq!(return_path(Some("/projects/42?x=1")), "/projects/42?x=1");
        for open_redirect in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "evil",
            "/a\r\nSet-Cookie: x=1",
        ] {
            assert_eq!(return_path(Some(open_redirect)), "/", "{open_redirect}");
        }
        assert_eq!(return_path(None), "/");
        assert_eq!(
            Sessions::login_location("/projects/42?x=1&y=2"),
            "/.gateway/login?rd=%2Fprojects%2F42%3Fx%3D1%26y%3D2"
        );
    }

    #[test]
    fn only_browsers_navigating_are_sent_to_the_login_page() {
        let mut html = HeaderMap::new();
        html.insert(
            http::header::ACCEPT,
            "text/html,application/xhtml+xml".parse().unwrap(),
        );
        let api = HeaderMap::new();
        assert!(Sessions::wants_login(
            &Method::GET,
            &html,
            &AuthError::MissingCredentials
        ));
        assert!(Sessions::wants_login(
            &Method::GET,
            &html,
            &AuthError::SessionEnded
        ));
        assert!(!Sessions::wants_login(
            &Method::POST,
            &html,
            &AuthError::MissingCredentials
        ));
        assert!(!Sessions::wants_login(
            &Method::GET,
            &api,
            &AuthError::MissingCredentials
        ));
        assert!(!Sessions::wants_login(
            &Method::GET,
            &html,
            &AuthError::BadSignature
        ));
    }
}
