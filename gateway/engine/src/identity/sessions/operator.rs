//! Platform operators' sign-in to the admin console (`[admin.sso]`).
//!
//! The same authorization code flow as a tenant's browser login (PKCE, `state`, `nonce`, the
//! provider's endpoints by discovery), against one of the gateway's own `[[identity.issuer]]`s
//! declared `platform = true`. The ID token is verified exactly as that issuer's bearer tokens
//! are (keys, algorithms, audiences, claim mapping), and lets in only a platform principal —
//! a token that names no tenant — holding one of `roles`: a tenant's user, whatever their
//! roles, never opens the console.
//!
//! The console session is a cookie sealed with the `[sessions]` keys (AES-256-GCM, as the
//! browser sessions), scoped to `/console` on the admin listener, that names the operator and
//! ends `lifetime` after the login. It holds no token and is not refreshed: an operator whose
//! account is removed at the provider keeps the console until the session ends (at most
//! `lifetime`; rotating the `[sessions]` keys ends every session at once).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderMap;
use oauth2::{CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::{
    cookie_value, millis, now_ms, oidc_client, query_param, BrowserResponse, Finish, LoginError,
    Redeemed, SessionContext, Sessions,
};
use crate::diagnostics::{SourceIssue, SourceText};
use crate::identity::principal::AuthMethod;
use crate::identity::AuthError;
use crate::tenancy::{OidcClientAuth, OidcLoginSettings};

/// The console session (path `/console` of the admin listener).
pub const CONSOLE_SESSION_COOKIE: &str = "gw-console-sso";
/// One console sign-in under way.
pub const CONSOLE_LOGIN_COOKIE: &str = "gw-console-login";
/// Where the console's sign-in pages live on the admin listener.
pub const CONSOLE_PATH: &str = "/console";

/// `[admin.sso]`: platform operators sign in to the console with the platform's identity
/// provider instead of the admin token. Needs `[sessions]` (its keys seal the cookies).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorSsoConfig {
    /// One of `[[identity.issuer]]`, declared `platform = true`. Its endpoints come from OIDC
    /// discovery.
    pub issuer: String,
    /// The client registered at the provider; must be one of the issuer's `audiences`.
    /// Register the redirect URI `http://<admin listen>/console/callback` (or the address
    /// operators reach the admin listener at, see `origin`).
    pub client_id: String,
    /// File holding the client secret (relative to the config file).
    pub client_secret_file: PathBuf,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub client_auth: OidcClientAuth,
    /// Scopes asked for (default `openid email profile`; must contain `openid`).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The roles (any of them, as mapped by the issuer's `claims.roles`) that make a platform
    /// principal a console operator.
    pub roles: Vec<String>,
    /// Longest console session (default 8 h; 1 min to 7 days).
    #[serde(default = "default_lifetime", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lifetime: Duration,
    /// How the browser addresses the admin listener, e.g. `https://console.example.com`
    /// behind a TLS-terminating proxy (default `http://<admin listen>`): the redirect URI is
    /// `<origin>/console/callback`, and an `https` origin makes the cookies `Secure`.
    #[serde(default)]
    pub origin: Option<String>,
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}
fn default_lifetime() -> Duration {
    Duration::from_secs(8 * 3600)
}

impl OperatorSsoConfig {
    /// Checks `[admin.sso]` against the rest of the configuration, all problems at once.
    pub fn validate(
        &self,
        source: &SourceText,
        platform_issuers: &[(&str, &[String])],
        has_sessions: bool,
        issues: &mut Vec<SourceIssue>,
    ) {
        if !has_sessions {
            issues.push(source.issue(
                "admin.sso",
                "needs a `[sessions]` section: its key_files seal the console's cookies",
            ));
        }
        match platform_issuers.iter().find(|(i, _)| *i == self.issuer) {
            None => issues.push(source.issue(
                "admin.sso.issuer",
                format!(
                    "`{}` is not an `[[identity.issuer]]` declared `platform = true`",
                    self.issuer
                ),
            )),
            Some((_, audiences)) if !audiences.contains(&self.client_id) => {
                issues.push(source.issue(
                    "admin.sso.client_id",
                    format!(
                    "`{}` is not one of the issuer's audiences (its ID tokens would be refused)",
                    self.client_id
                ),
                ))
            }
            Some(_) => {}
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            issues.push(source.issue("admin.sso.scopes", "must contain `openid`"));
        }
        if self.roles.is_empty() || self.roles.iter().any(|r| r.trim().is_empty()) {
            issues.push(source.issue(
                "admin.sso.roles",
                "name at least one role, none empty: nobody could open the console otherwise",
            ));
        }
        if self.lifetime < Duration::from_secs(60)
            || self.lifetime > Duration::from_secs(7 * 86_400)
        {
            issues.push(source.issue("admin.sso.lifetime", "between 1 min and 7 days"));
        }
        if let Some(origin) = &self.origin {
            if let Err(message) = check_origin(origin) {
                issues.push(source.issue("admin.sso.origin", message));
            }
        }
        let secret = source.resolve(&self.client_secret_file);
        match std::fs::read_to_string(&secret) {
            Ok(s) if s.trim().is_empty() => issues.push(source.issue(
                "admin.sso.client_secret_file",
                format!("`{}` is empty", secret.display()),
            )),
            Ok(_) => {}
            Err(e) => issues.push(source.issue(
                "admin.sso.client_secret_file",
                format!("`{}`: {e}", secret.display()),
            )),
        }
    }
}

/// `scheme://host[:port]`, nothing after it.
fn check_origin(origin: &str) -> Result<(), String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("must start with `http://` or `https://`")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err("only `scheme://host[:port]`, no path".into());
    }
    Ok(())
}

/// `[admin.sso]`, loaded: the client secret read, the origin settled.
#[derive(Debug, Clone)]
pub struct OperatorLogin {
    login: OidcLoginSettings,
    roles: Vec<String>,
    lifetime: Duration,
    origin: String,
}

impl OperatorLogin {
    /// Reads the client secret (relative to `base_dir`); `admin_listen` is the default origin.
    pub fn load(
        config: &OperatorSsoConfig,
        base_dir: &Path,
        admin_listen: &str,
    ) -> Result<Self, std::io::Error> {
        let secret = std::fs::read_to_string(base_dir.join(&config.client_secret_file))?;
        Ok(OperatorLogin {
            login: OidcLoginSettings {
                issuer: config.issuer.clone(),
                client_id: config.client_id.clone(),
                client_secret: secret.trim().to_string(),
                client_auth: config.client_auth,
                scopes: config.scopes.clone(),
            },
            roles: config.roles.clone(),
            lifetime: config.lifetime,
            origin: config
                .origin
                .clone()
                .unwrap_or_else(|| format!("http://{admin_listen}")),
        })
    }

    fn redirect_uri(&self) -> Result<RedirectUrl, LoginError> {
        RedirectUrl::new(format!("{}{CONSOLE_PATH}/callback", self.origin))
            .map_err(|e| LoginError::Url(e.to_string()))
    }

    /// `Set-Cookie` for the console's cookies: `HttpOnly`, `/console` only, `Secure` when the
    /// console is served over https.
    fn cookie(&self, name: &'static str, value: String, max_age: Duration) -> String {
        cookie::Cookie::build((name, value))
            .path(CONSOLE_PATH)
            .secure(self.origin.starts_with("https://"))
            .http_only(true)
            // Lax: the provider's redirect back to the callback is a cross-site navigation
            // that must carry the login cookie.
            .same_site(cookie::SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
            ))
            .build()
            .to_string()
    }

    /// `Set-Cookie` that ends the console session.
    pub fn clear_session(&self) -> String {
        self.cookie(CONSOLE_SESSION_COOKIE, String::new(), Duration::ZERO)
    }
}

/// A signed-in operator, as sealed in [`CONSOLE_SESSION_COOKIE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operator {
    /// The principal id (the ID token's subject, mapped).
    pub sub: String,
    /// The `email` claim, when the issuer maps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The roles that let the operator in.
    pub roles: Vec<String>,
    /// When the session ends (ms since the epoch).
    pub end: u64,
}

/// A console sign-in under way, as sealed in [`CONSOLE_LOGIN_COOKIE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OperatorFlow {
    state: String,
    nonce: String,
    pkce: String,
    end: u64,
}

impl Sessions {
    /// `GET /console/sso`: to the platform's identity provider.
    pub async fn operator_login(&self, login: &OperatorLogin) -> BrowserResponse {
        let client = match self
            .discover(&login.login.issuer)
            .await
            .and_then(|endpoints| oidc_client(&login.login, &endpoints))
        {
            Ok(c) => c,
            Err(e) => return operator_trouble(&e),
        };
        let redirect = match login.redirect_uri() {
            Ok(r) => r,
            Err(e) => return operator_trouble(&e),
        };
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = CsrfToken::new_random();
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(login.login.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(redirect))
            .add_extra_param("nonce", nonce.secret().clone())
            .url();
        let flow = OperatorFlow {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce: verifier.secret().clone(),
            end: now_ms().saturating_add(millis(self.login_timeout)),
        };
        let Some(sealed) = self.seal(CONSOLE_LOGIN_COOKIE, &flow) else {
            return operator_trouble(&LoginError::TooLarge(0));
        };
        BrowserResponse::redirect(303, url.to_string()).with_cookie(login.cookie(
            CONSOLE_LOGIN_COOKIE,
            sealed,
            self.login_timeout,
        ))
    }

    /// `GET /console/callback`: checks `state`, redeems the code, verifies the ID token and
    /// its `nonce`, lets in a platform principal with an operator role, and seals the session.
    pub async fn operator_callback(
        &self,
        login: &OperatorLogin,
        query: Option<&str>,
        headers: &HeaderMap,
        cx: &SessionContext<'_>,
    ) -> BrowserResponse {
        let clear_flow = login.cookie(CONSOLE_LOGIN_COOKIE, String::new(), Duration::ZERO);
        let flow = cookie_value(headers, CONSOLE_LOGIN_COOKIE)
            .and_then(|sealed| self.open::<OperatorFlow>(CONSOLE_LOGIN_COOKIE, &sealed));
        let Some(flow) = flow.filter(|f| now_ms() < f.end) else {
            return BrowserResponse::message(
                400,
                "Sign-in expired",
                "This sign-in expired or was started in another browser. Please sign in again.",
            )
            .with_cookie(clear_flow);
        };
        let state = query_param(query, "state").unwrap_or_default();
        if !bool::from(state.as_bytes().ct_eq(flow.state.as_bytes())) {
            tracing::warn!(
                "console: sign-in callback with a state that is not this browser's (CSRF?)"
            );
            return BrowserResponse::message(
                400,
                "Sign-in failed",
                "The answer does not belong to this sign-in. Please sign in again.",
            );
        }
        if let Some(error) = query_param(query, "error") {
            let description = query_param(query, "error_description").unwrap_or_default();
            tracing::info!(
                error,
                description,
                "console: the identity provider refused the sign-in"
            );
            return BrowserResponse::message(
                401,
                "Sign-in refused",
                &format!("The identity provider answered: {error} {description}"),
            )
            .with_cookie(clear_flow);
        }
        let Some(code) = query_param(query, "code") else {
            return BrowserResponse::message(400, "Sign-in failed", "The answer has no code.")
                .with_cookie(clear_flow);
        };
        match self.operator_finish(login, cx, &flow, code).await {
            Ok(operator) => {
                let Some(sealed) = self.seal(CONSOLE_SESSION_COOKIE, &operator) else {
                    return operator_trouble(&LoginError::TooLarge(0)).with_cookie(clear_flow);
                };
                tracing::info!(target: "audit", event = "console.login", principal = %operator.sub, roles = ?operator.roles, "console: operator signed in");
                BrowserResponse::redirect(303, CONSOLE_PATH.to_string())
                    .with_cookie(clear_flow)
                    .with_cookie(login.cookie(CONSOLE_SESSION_COOKIE, sealed, login.lifetime))
            }
            Err(OperatorRefusal::NotOperator(who)) => {
                tracing::warn!(target: "audit", event = "console.refused", principal = %who, "console: signed in, but not an operator");
                BrowserResponse::message(
                    403,
                    "Not a console operator",
                    "Your account is verified, but it is not a platform operator's: ask for one of the operator roles.",
                )
                .with_cookie(clear_flow)
            }
            Err(OperatorRefusal::Token(error)) => {
                tracing::warn!(target: "audit", event = "console.refused", reason = error.slug(), "console: ID token refused");
                BrowserResponse::message(
                    401,
                    "Sign-in refused",
                    "Your identity could not be verified.",
                )
                .with_cookie(clear_flow)
            }
            Err(OperatorRefusal::Failed(error)) => operator_trouble(&error).with_cookie(clear_flow),
        }
    }

    async fn operator_finish(
        &self,
        login: &OperatorLogin,
        cx: &SessionContext<'_>,
        flow: &OperatorFlow,
        code: String,
    ) -> Result<Operator, OperatorRefusal> {
        let redirect = login.redirect_uri().map_err(OperatorRefusal::Failed)?;
        let Redeemed {
            principal, claims, ..
        } = self
            .redeem(&login.login, redirect, code, &flow.pkce, &flow.nonce, cx)
            .await
            .map_err(|e| match e {
                Finish::Refused(error) => OperatorRefusal::Token(error),
                Finish::Failed(error) => OperatorRefusal::Failed(error),
            })?;
        // Verified by its own issuer's keys, yet possibly another trusted issuer (a tenant's):
        // only the configured platform issuer's tenant-less principals are operators.
        let from_issuer =
            matches!(&principal.auth, AuthMethod::Jwt { issuer } if *issuer == login.login.issuer);
        let roles: Vec<String> = principal
            .roles
            .iter()
            .filter(|r| login.roles.contains(r))
            .cloned()
            .collect();
        if !from_issuer || !principal.platform || roles.is_empty() {
            return Err(OperatorRefusal::NotOperator(principal.id.clone()));
        }
        Ok(Operator {
            sub: principal.id.clone(),
            email: claims
                .get("email")
                .and_then(Value::as_str)
                .map(String::from),
            roles,
            end: now_ms().saturating_add(millis(login.lifetime)),
        })
    }

    /// The operator of a console session cookie still within its lifetime.
    pub fn operator_session(&self, headers: &HeaderMap) -> Option<Operator> {
        let sealed = cookie_value(headers, CONSOLE_SESSION_COOKIE)?;
        self.open::<Operator>(CONSOLE_SESSION_COOKIE, &sealed)
            .filter(|o| now_ms() < o.end)
    }
}

enum OperatorRefusal {
    /// The ID token was refused.
    Token(AuthError),
    /// A verified principal that is not a platform operator (its id).
    NotOperator(String),
    /// The sign-in could not be completed (provider or configuration).
    Failed(LoginError),
}

fn operator_trouble(error: &LoginError) -> BrowserResponse {
    tracing::warn!(error = %error, "console: sign-in failed");
    BrowserResponse::message(
        502,
        "Sign-in unavailable",
        "The platform's identity provider could not be reached or answered wrongly. Please try again later.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> (OperatorSsoConfig, Vec<SourceIssue>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("console.secret"), "s3cret\n").unwrap();
        let path = dir.path().join("gateway.toml");
        let source = SourceText::new(path.to_str().unwrap(), text);
        #[derive(Deserialize)]
        struct Doc {
            sso: OperatorSsoConfig,
        }
        let doc: Doc = toml::from_str(text).unwrap();
        let audiences = vec!["console".to_string()];
        let mut issues = Vec::new();
        doc.sso.validate(
            &source,
            &[("https://idp.example", audiences.as_slice())],
            true,
            &mut issues,
        );
        (doc.sso, issues, dir)
    }

    #[test]
    fn a_platform_issuer_audience_role_and_secret_are_required() {
        let (_, issues, _dir) = config(
            "[sso]\nissuer = \"https://idp.example\"\nclient_id = \"console\"\n\
             client_secret_file = \"console.secret\"\nroles = [\"platform-admin\"]\n",
        );
        assert!(issues.is_empty(), "{issues:?}");
        let (_, issues, _dir) = config(
            "[sso]\nissuer = \"https://other.example\"\nclient_id = \"portal\"\n\
             client_secret_file = \"missing.secret\"\nroles = []\nscopes = [\"email\"]\n\
             lifetime = \"30s\"\norigin = \"https://c.example/console\"\n",
        );
        let text = issues
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        for field in [
            "admin.sso.issuer",
            "admin.sso.roles",
            "admin.sso.scopes",
            "admin.sso.lifetime",
            "admin.sso.origin",
            "admin.sso.client_secret_file",
        ] {
            assert!(text.contains(field), "{field} missing from:\n{text}");
        }
        // The audience is checked once the issuer is known.
        let (_, issues, _dir) = config(
            "[sso]\nissuer = \"https://idp.example\"\nclient_id = \"portal\"\n\
             client_secret_file = \"console.secret\"\nroles = [\"ops\"]\n",
        );
        assert!(issues
            .iter()
            .any(|i| i.to_string().contains("admin.sso.client_id")));
    }

    #[test]
    fn console_cookies_stay_on_the_console_and_are_secure_over_https() {
        let (sso, _, dir) = config(
            "[sso]\nissuer = \"https://idp.example\"\nclient_id = \"console\"\n\
             client_secret_file = \"console.secret\"\nroles = [\"ops\"]\n",
        );
        let plain = OperatorLogin::load(&sso, dir.path(), "127.0.0.1:9901").unwrap();
        assert_eq!(plain.login.client_secret, "s3cret");
        let cookie = plain.cookie(CONSOLE_SESSION_COOKIE, "v".into(), Duration::from_secs(60));
        assert!(cookie.contains("Path=/console") && cookie.contains("HttpOnly"));
        assert!(cookie.contains("SameSite=Lax") && !cookie.contains("Secure"));
        assert_eq!(
            plain.redirect_uri().unwrap().as_str(),
            "http://127.0.0.1:9901/console/callback"
        );
        let mut tls = sso.clone();
        tls.origin = Some("https://console.example".into());
        let tls = OperatorLogin::load(&tls, dir.path(), "127.0.0.1:9901").unwrap();
        assert!(tls
            .cookie(CONSOLE_SESSION_COOKIE, "v".into(), Duration::from_secs(60))
            .contains("Secure"));
    }
}
