//! A real OpenID Provider for the tests: panva's `oidc-provider` (npm, pinned in
//! `gateway/testkit/node/package.json` + `package-lock.json`), run by Node.js on a free loopback
//! port, with issuer exactly `http://127.0.0.1:<port>`; and [`http_login`] / [`http_logout`], which
//! walk the authorization-code login and the RP-initiated logout with a cookie-keeping HTTP client.
//!
//! # What it needs
//!
//! `node` (20 or newer: playwright-core needs it) and `npm` on the PATH (`scripts/ensure-deps
//! test` installs Debian's `nodejs npm` when they are missing), and the npm registry reachable the
//! first time: the node modules are installed once with `npm ci --no-audit --no-fund
//! --ignore-scripts` into `<target dir>/testkit-node/<hash of package.json + lock>/` (outside the
//! source tree; `GATEWAY_TESTKIT_NODE_DIR` names another place). A file lock
//! (`std::fs::File::lock`) keeps parallel test processes from installing twice; the scripts
//! (`provider.mjs`, `browser.mjs`) are compiled into this crate and written beside the modules.
//!
//! # The provider
//!
//! [`OidcProvider::start`] is synchronous: it spawns `node provider.mjs <config.json>` and waits
//! (at most 30 s) for its `READY <issuer>` line; call it from a `#[tokio::test]` as is. The
//! process is killed when the value is dropped; its stderr goes to a temporary file
//! ([`OidcProvider::log`]), whose tail is printed when the start fails. The configuration (JSON;
//! the comments say what is optional):
//!
//! ```text
//! {
//!   "port": 0,                      // optional; 0 or absent: a free port the OS picks
//!   "clients": [{
//!     "client_id": "gateway", "client_secret": "secret",
//!     "redirect_uris": ["http://127.0.0.1:8080/auth/callback"],
//!     "post_logout_redirect_uris": ["http://127.0.0.1:8080/"],
//!     "backchannel_logout_uri": "http://127.0.0.1:8080/auth/backchannel",   // optional
//!     "backchannel_logout_session_required": true,                          // optional
//!     "token_endpoint_auth_method": "client_secret_post"  // optional; client_secret_basic
//!   }],                             // other oidc-provider client metadata passes through
//!   "accounts": {
//!     "alice": { "email": "alice@example.com", "roles": ["admin"], "tenant": "acme" }
//!   },
//!   "ttl": { "AccessToken": 60, "IdToken": 60, "RefreshToken": 3600, "Session": 3600 },
//!                                   // optional, seconds, each on its own
//!   "consent": "auto",              // optional; "prompt" shows the consent page
//!   "claims": { "openid": ["sub", "roles"] }  // optional; oidc-provider's scope -> claims
//! }
//! ```
//!
//! Set up as follows (see `node/provider.mjs`):
//! - Login: oidc-provider's development interactions. Any `login` is accepted and becomes the
//!   `sub`; the password is ignored. A login named in `accounts` gets that account's claims.
//! - Claims: `email`/`email_verified` ride on the `email` scope, the OIDC profile claims on
//!   `profile`, and every other claim an account has (`roles`, `tenant`, …) on `openid`, so it is
//!   always there. `conformIdTokenClaims` is off, so the claims of the granted scopes are in the ID
//!   token itself (not only at the userinfo endpoint).
//! - Consent: granted automatically for whatever the authorization request asks (a
//!   `loadExistingGrant` that creates the grant), so no consent page shows. With
//!   `"consent": "prompt"` the built-in page shows; it is a form with the hidden input
//!   `prompt=consent` POSTed to `/interaction/<uid>` (the "Continue" button), which [`http_login`]
//!   and the browser driver submit too.
//! - PKCE is required for every client, `S256` only. Clients authenticate at the token endpoint
//!   with `client_secret_basic` (default) or `client_secret_post` (set the client's
//!   `token_endpoint_auth_method`; oidc-provider holds a client to the one method registered).
//! - Refresh tokens: issued to every client allowed the `refresh_token` grant (the default here),
//!   with or without `offline_access`. oidc-provider drops `offline_access` from a request that
//!   carries a `prompt` parameter without `consent`. Without `offline_access` the refresh token
//!   ends with the provider session.
//! - Signing keys: an RSA (RS256, the default for ID tokens) and a P-256 (ES256) key generated at
//!   each start, published at `<issuer>/jwks`. A client may ask for ES256 ID tokens with
//!   `"id_token_signed_response_alg": "ES256"`.
//! - Logout: `end_session_endpoint` is `<issuer>/session/end`. With a provider session it renders
//!   a confirmation page: `<form id="op.logoutForm" method="post"
//!   action="<issuer>/session/end/confirm">` with a hidden `xsrf`; the "Yes, sign me out" button
//!   submits it with `logout=yes`. So the HTTP way is `POST /session/end/confirm` with
//!   `xsrf=<the hidden value>&logout=yes` (what [`http_logout`] does), answered by a 303 to the
//!   `post_logout_redirect_uri` (with `state`) or to `/session/end/success`. Without a session
//!   the page submits itself (`logout=yes`).
//! - Back-channel logout: when a session ends at the confirm step, oidc-provider POSTs a
//!   `logout_token` to each client of that session that registered a `backchannel_logout_uri` (with
//!   `sid` when `backchannel_logout_session_required`), and expects 200 or 204. Tests can also send
//!   one on demand: [`OidcProvider::backchannel_logout`] (the test-only route
//!   `POST /test/backchannel?sub=<sub>&sid=<sid>[&client_id=<id>]`).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};

const PACKAGE_JSON: &str = include_str!("../node/package.json");
const PACKAGE_LOCK: &str = include_str!("../node/package-lock.json");
const SCRIPTS: [(&str, &str); 2] = [
    ("provider.mjs", include_str!("../node/provider.mjs")),
    ("browser.mjs", include_str!("../node/browser.mjs")),
];

const ENSURE_DEPS: &str = "run `scripts/ensure-deps test`";

// ---------------------------------------------------------------------------------------------
// Node.js and the node modules
// ---------------------------------------------------------------------------------------------

/// The directory holding the installed node modules and the scripts (`provider.mjs`,
/// `browser.mjs`), installing them on first use (see the module docs).
pub fn node_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(install_node_modules)
}

/// `node` (20 or newer), or a panic saying how to get it.
pub(crate) fn node_bin() -> &'static str {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let out = Command::new("node")
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("`node` not found ({e}): {ENSURE_DEPS}"));
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let major: u32 = version
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert!(
            out.status.success() && major >= 20,
            "`node --version` said {version:?}; Node.js 20 or newer is needed (playwright-core): {ENSURE_DEPS}"
        );
    });
    "node"
}

/// Where the node modules go: `<target dir>/testkit-node`, found from the running executable
/// (cargo puts it under `<target>/<profile>/deps/` and marks `<target>` with `CACHEDIR.TAG`).
fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("GATEWAY_TESTKIT_NODE_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe
            .ancestors()
            .skip(1)
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        {
            return target.join("testkit-node");
        }
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        if target.is_absolute() {
            return target.join("testkit-node");
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/testkit-node")
}

fn install_node_modules() -> PathBuf {
    node_bin();
    let root = cache_root();
    let mut hasher = DefaultHasher::new();
    (PACKAGE_JSON, PACKAGE_LOCK).hash(&mut hasher);
    let key = format!("{:016x}", hasher.finish());
    let dir = root.join(&key);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));

    // One installer at a time across processes; the lock goes when the file is closed.
    let lock_path = root.join(format!("{key}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));

    let stamp = dir.join(".installed");
    if !stamp.is_file() {
        std::fs::write(dir.join("package.json"), PACKAGE_JSON).unwrap();
        std::fs::write(dir.join("package-lock.json"), PACKAGE_LOCK).unwrap();
        eprintln!("gateway-testkit: npm ci in {}", dir.display());
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(&dir)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("`npm` not found ({e}): {ENSURE_DEPS}"));
        assert!(
            out.status.success(),
            "`npm ci` in {} failed ({}):\n{}\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp, "").unwrap();
    }
    for (name, text) in SCRIPTS {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            // Replace atomically: another process may be starting node on the old copy.
            let tmp = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
    }
    drop(lock);
    dir
}

/// The last `lines` lines of a log file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------------------------

/// A running `oidc-provider` (see the module docs). Killed when dropped.
pub struct OidcProvider {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub issuer: String,
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts the provider with `config` (see the module docs) and waits until it listens.
    /// Blocking; panics (with the provider's log) when it does not come up within 30 s.
    pub fn start(config: &serde_json::Value) -> OidcProvider {
        let node_dir = node_dir();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let log_path = dir.path().join("provider.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(node_bin())
            .arg(node_dir.join("provider.mjs"))
            .arg(&config_path)
            .current_dir(node_dir)
            .env("NODE_ENV", "test")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node ({e}): {ENSURE_DEPS}"));

        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(issuer) = line.strip_prefix("READY ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(issuer.trim().to_string());
                    }
                }
            }
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(issuer) => issuer,
            Err(_) => {
                let _ = child.kill();
                let status = child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                panic!(
                    "oidc-provider did not start ({status}); its log:\n{}",
                    tail(&log_path, 40)
                );
            }
        };
        let port = Url::parse(&issuer)
            .ok()
            .and_then(|u| u.port())
            .unwrap_or_else(|| panic!("oidc-provider printed a strange issuer {issuer:?}"));
        OidcProvider {
            issuer,
            port,
            child,
            dir,
        }
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub fn end_session_endpoint(&self) -> String {
        format!("{}/session/end", self.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// The provider's log so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// Has the provider send a back-channel logout token for `sub` (with `sid`, for clients that
    /// require it) to `client_id`, or to every client with a `backchannel_logout_uri`. Returns the
    /// provider's answer: 200 when every client answered 200/204, else 502, with
    /// `{"results": [{"client_id", "ok", "error"?}]}`.
    pub async fn backchannel_logout(
        &self,
        sub: &str,
        sid: Option<&str>,
        client_id: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut url = Url::parse(&format!("{}/test/backchannel", self.issuer)).unwrap();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("sub", sub);
            if let Some(sid) = sid {
                query.append_pair("sid", sid);
            }
            if let Some(client_id) = client_id {
                query.append_pair("client_id", client_id);
            }
        }
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(url)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP login driver
// ---------------------------------------------------------------------------------------------

/// A cookie-keeping HTTP client that follows redirects itself (across origins), so a login can
/// start at any URL, e.g. the gateway's login route that redirects to the provider.
pub struct HttpFlow {
    /// Follows no redirects; shares [`HttpFlow::jar`].
    pub client: reqwest::Client,
    pub jar: Arc<Jar>,
}

/// The page a walk ended on.
#[derive(Debug)]
pub struct HttpPage {
    pub status: u16,
    pub url: String,
    pub headers: HeaderMap,
    pub body: String,
    /// Every request made, in order, as `"<METHOD> <url> -> <status>"`.
    pub hops: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Follow,
    Login,
    Logout,
}

const MAX_HOPS: usize = 30;

impl Default for HttpFlow {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpFlow {
    pub fn new() -> HttpFlow {
        let jar = Arc::new(Jar::default());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(jar.clone())
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        HttpFlow { client, jar }
    }

    /// The `Cookie` header the jar would send to `url`.
    pub fn cookies(&self, url: &str) -> Option<String> {
        self.jar
            .cookies(&Url::parse(url).unwrap())
            .map(|v| v.to_str().unwrap_or_default().to_string())
    }

    /// GETs `url`, following redirects; submits no form (except an auto-submitting
    /// `form_post` page, which a browser would submit by itself).
    pub async fn follow(&self, url: &str) -> HttpPage {
        self.walk(url, "", Mode::Follow).await
    }

    /// GETs `start_url` and follows it through the provider's login (as `login`, password `x`)
    /// and consent forms and every redirect, to the first page that is none of those.
    pub async fn login(&self, start_url: &str, login: &str) -> HttpPage {
        self.walk(start_url, login, Mode::Login).await
    }

    /// GETs `logout_url` (e.g. the gateway's logout route, or the provider's
    /// `end_session_endpoint` with `id_token_hint`/`client_id`, `post_logout_redirect_uri`,
    /// `state`) and confirms the provider's "sign out?" page (`logout=yes`), following every
    /// redirect.
    pub async fn logout(&self, logout_url: &str) -> HttpPage {
        self.walk(logout_url, "", Mode::Logout).await
    }

    async fn walk(&self, start: &str, login: &str, mode: Mode) -> HttpPage {
        let mut url = Url::parse(start).unwrap_or_else(|e| panic!("bad URL {start:?}: {e}"));
        let mut method = Method::GET;
        let mut form: Option<Vec<(String, String)>> = None;
        let mut hops = Vec::new();
        for _ in 0..MAX_HOPS {
            let mut request = self.client.request(method.clone(), url.clone());
            if let Some(fields) = &form {
                request = request.form(fields);
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url} failed: {e}\nhops: {hops:#?}"));
            let status = response.status();
            hops.push(format!("{method} {url} -> {}", status.as_u16()));
            let headers = response.headers().clone();
            if status.is_redirection() {
                if let Some(location) = headers
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                {
                    url = url
                        .join(location)
                        .unwrap_or_else(|e| panic!("bad Location {location:?} from {url}: {e}"));
                    if !matches!(status.as_u16(), 307 | 308) {
                        method = Method::GET;
                        form = None;
                    }
                    continue;
                }
            }
            let body = response.text().await.unwrap_or_default();
            let next = Form::all(&body).into_iter().find_map(|f| {
                let action = url.join(&f.action).ok()?;
                let mut fields = f.fields.clone();
                let prompt = f.field("prompt");
                if mode == Mode::Login && prompt == Some("login") {
                    fields.retain(|(name, _)| name != "login" && name != "password");
                    fields.push(("login".into(), login.into()));
                    fields.push(("password".into(), "x".into()));
                } else if prompt == Some("consent") {
                    // the "Continue" button: nothing to add
                } else if mode == Mode::Logout && f.id.as_deref() == Some("op.logoutForm") {
                    fields.push(("logout".into(), "yes".into()));
                } else if mode == Mode::Logout && f.id.as_deref() == Some("gateway.logoutForm") {
                    // the gateway's "Sign out" button: nothing to add
                } else if !body.contains("document.forms[0].submit()") {
                    return None;
                }
                Some((f.method, action, fields))
            });
            match next {
                Some((next_method, action, fields)) => {
                    method = next_method;
                    url = action;
                    form = Some(fields);
                }
                None => {
                    return HttpPage {
                        status: status.as_u16(),
                        url: url.to_string(),
                        headers,
                        body,
                        hops,
                    };
                }
            }
        }
        panic!("more than {MAX_HOPS} requests; hops: {hops:#?}");
    }
}

/// Starts a fresh [`HttpFlow`] at `start_url` and logs in as `login` (see [`HttpFlow::login`]).
/// Returns the flow (its cookies, for what comes next) and the page the login ended on.
pub async fn http_login(start_url: &str, login: &str) -> (HttpFlow, HttpPage) {
    let flow = HttpFlow::new();
    let page = flow.login(start_url, login).await;
    (flow, page)
}

/// Logs out with the flow's cookies (see [`HttpFlow::logout`]).
pub async fn http_logout(flow: &HttpFlow, logout_url: &str) -> HttpPage {
    flow.logout(logout_url).await
}

// ---------------------------------------------------------------------------------------------
// Minimal HTML form parsing (enough for oidc-provider's pages)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Form {
    id: Option<String>,
    action: String,
    method: Method,
    /// The inputs that carry a value (hidden, text, password), in order.
    fields: Vec<(String, String)>,
}

impl Form {
    fn all(html: &str) -> Vec<Form> {
        let lower = html.to_ascii_lowercase();
        let mut forms = Vec::new();
        let mut at = 0;
        while let Some(start) = lower[at..].find("<form").map(|i| i + at) {
            let Some((attrs, after)) = tag_at(html, start) else {
                break;
            };
            let end = lower[after..]
                .find("</form")
                .map_or(html.len(), |i| i + after);
            let method = match attr(&attrs, "method") {
                Some(m) if m.eq_ignore_ascii_case("post") => Method::POST,
                _ => Method::GET,
            };
            let mut fields = Vec::new();
            let mut inner = after;
            while let Some(input) = lower[inner..end].find("<input").map(|i| i + inner) {
                let Some((input_attrs, next)) = tag_at(html, input) else {
                    break;
                };
                let kind = attr(&input_attrs, "type").unwrap_or_else(|| "text".into());
                if let Some(name) = attr(&input_attrs, "name") {
                    let skip = ["submit", "button", "image", "reset", "checkbox", "radio"];
                    if !skip.iter().any(|s| kind.eq_ignore_ascii_case(s)) {
                        fields.push((name, attr(&input_attrs, "value").unwrap_or_default()));
                    }
                }
                inner = next;
            }
            forms.push(Form {
                id: attr(&attrs, "id"),
                action: attr(&attrs, "action").unwrap_or_default(),
                method,
                fields,
            });
            at = end.max(after);
        }
        forms
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The attributes of the tag starting at `start` (`<name ...>`) and the index after its `>`.
fn tag_at(html: &str, start: usize) -> Option<(Vec<(String, String)>, usize)> {
    let bytes = html.as_bytes();
    let mut i = start + 1;
    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
        i += 1;
    }
    let mut attrs = Vec::new();
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == b'>' {
            return Some((attrs, i + 1));
        }
        let name_start = i;
        while i < bytes.len()
            && !bytes[i].is_ascii_whitespace()
            && !matches!(bytes[i], b'=' | b'>' | b'/')
        {
            i += 1;
        }
        let name = html[name_start..i].to_ascii_lowercase();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                let quote = bytes[i];
                let value_start = i + 1;
                let value_end = html[value_start..]
                    .bytes()
                    .position(|b| b == quote)
                    .map(|p| p + value_start)?;
                value = decode_entities(&html[value_start..value_end]);
                i = value_end + 1;
            } else {
                let value_start = i;
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                    i += 1;
                }
                value = decode_entities(&html[value_start..i]);
            }
        }
        if !name.is_empty() {
            attrs.push((name, value));
        }
    }
}

fn attr(attrs: &[(String, String)], name: &str) -> Option<String> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let number = entity.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)
                }
            }?;
            Some((c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A tiny relying party for the tests: a std TCP server that answers every request with 200 and
/// a fixed body, and records each request's target (`/cb?code=…&state=…`).
#[cfg(test)]
pub(crate) mod test_rp {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::sync::{Arc, Mutex};

    pub struct TinyRp {
        pub addr: SocketAddr,
        pub requests: Arc<Mutex<Vec<String>>>,
    }

    impl TinyRp {
        pub fn start() -> TinyRp {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = requests.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let seen = seen.clone();
                    std::thread::spawn(move || {
                        let mut reader = BufReader::new(stream.try_clone().unwrap());
                        let mut line = String::new();
                        if reader.read_line(&mut line).is_err() {
                            return;
                        }
                        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                                break;
                            }
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':') {
                                if name.eq_ignore_ascii_case("content-length") {
                                    length = value.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0; length];
                        let _ = reader.read_exact(&mut body);
                        seen.lock().unwrap().push(target.clone());
                        let page = format!(
                            "<html><body><h1>tiny rp</h1><p>{}</p></body></html>",
                            target.replace('&', "&amp;").replace('<', "&lt;")
                        );
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                            page.len()
                        );
                    });
                }
            });
            TinyRp { addr, requests }
        }

        pub fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        /// The query of the first request to `path`, as pairs.
        pub fn query_of(&self, path: &str) -> Option<Vec<(String, String)>> {
            let requests = self.requests.lock().unwrap();
            let target = requests
                .iter()
                .find(|t| t.split('?').next() == Some(path))?;
            let url = reqwest::Url::parse(&format!("http://x{target}")).ok()?;
            Some(url.query_pairs().into_owned().collect())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::test_rp::TinyRp;
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use sha2::Digest as _;

    pub(crate) const VERIFIER: &str = "a-pkce-code-verifier-that-is-long-enough-0123456789";

    pub(crate) fn provider_for(rp: &TinyRp) -> OidcProvider {
        OidcProvider::start(&serde_json::json!({
            "clients": [{
                "client_id": "gateway",
                "client_secret": "gateway-secret",
                "redirect_uris": [rp.url("/cb")],
                "post_logout_redirect_uris": [rp.url("/bye")],
                "backchannel_logout_uri": rp.url("/backchannel"),
                "backchannel_logout_session_required": true
            }],
            "accounts": {
                "alice": {
                    "email": "alice@example.com",
                    "email_verified": true,
                    "roles": ["admin", "billing"],
                    "tenant": "acme",
                    "department": "research"
                }
            },
            "ttl": { "AccessToken": 300, "IdToken": 300, "RefreshToken": 3600 }
        }))
    }

    pub(crate) fn authorize_url(provider: &OidcProvider, rp: &TinyRp, state: &str) -> String {
        let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(VERIFIER.as_bytes()));
        let mut url = Url::parse(&provider.authorization_endpoint()).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", "gateway")
            .append_pair("response_type", "code")
            .append_pair("scope", "openid email offline_access")
            .append_pair("redirect_uri", &rp.url("/cb"))
            .append_pair("state", state)
            .append_pair("nonce", "n-0S6_WzA2Mj")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        url.to_string()
    }

    fn jwt_claims(jwt: &str) -> serde_json::Value {
        let payload = jwt.split('.').nth(1).expect("a JWT");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn discovery_document_advertises_pkce_logout_and_backchannel() {
        let rp = TinyRp::start();
        let provider = provider_for(&rp);
        assert!(provider.issuer.starts_with("http://127.0.0.1:"));
        assert!(!provider.issuer.ends_with('/'));
        let doc: serde_json::Value = reqwest::get(provider.discovery_url())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["issuer"], provider.issuer.as_str());
        let methods = doc["code_challenge_methods_supported"].as_array().unwrap();
        assert!(methods.iter().any(|m| m == "S256"), "{doc:#}");
        assert_eq!(
            doc["end_session_endpoint"],
            provider.end_session_endpoint().as_str()
        );
        assert_eq!(doc["backchannel_logout_supported"], true, "{doc:#}");
        assert_eq!(doc["backchannel_logout_session_supported"], true, "{doc:#}");
        assert_eq!(doc["jwks_uri"], provider.jwks_uri().as_str());
        assert_eq!(doc["token_endpoint"], provider.token_endpoint().as_str());
        let auth = doc["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap();
        assert!(auth.iter().any(|m| m == "client_secret_basic"));
        assert!(auth.iter().any(|m| m == "client_secret_post"));
        let jwks: serde_json::Value = reqwest::get(provider.jwks_uri())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let algs: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k["alg"].as_str())
            .collect();
        assert_eq!(algs, ["RS256", "ES256"], "{jwks:#}");
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k.get("d").is_none()),
            "private key material in the JWKS"
        );
    }

    #[tokio::test]
    async fn http_login_code_exchange_refresh_and_logout() {
        let rp = TinyRp::start();
        let provider = provider_for(&rp);

        let (flow, page) = http_login(&authorize_url(&provider, &rp, "st-123"), "alice").await;
        assert_eq!(page.status, 200, "{page:#?}\n{}", provider.log());
        assert!(page.url.starts_with(&rp.url("/cb?")), "{page:#?}");
        assert!(page.body.contains("tiny rp"));
        let query = rp.query_of("/cb").expect("the RP saw no callback");
        let get = |name: &str| {
            query
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("state").as_deref(), Some("st-123"));
        assert_eq!(get("iss").as_deref(), Some(provider.issuer.as_str()));
        let code = get("code").expect("no code");

        // PKCE: a wrong verifier is refused.
        let refused = reqwest::Client::new()
            .post(provider.token_endpoint())
            .basic_auth("gateway", Some("gateway-secret"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", rp.url("/cb").as_str()),
                (
                    "code_verifier",
                    "not-the-verifier-not-the-verifier-not-the-verifier",
                ),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400);

        // Log in again for a fresh code: the provider session is reused, so no form shows.
        let again = flow
            .login(&authorize_url(&provider, &rp, "st-456"), "alice")
            .await;
        assert_eq!(again.status, 200, "{again:#?}");
        assert!(
            again.hops.iter().all(|h| !h.contains("/interaction/")),
            "the provider session should skip the login form: {again:#?}"
        );
        let code = reqwest::Url::parse(&again.url)
            .unwrap()
            .query_pairs()
            .find(|(n, _)| n == "code")
            .map(|(_, v)| v.into_owned())
            .expect("no code");

        let tokens: serde_json::Value = reqwest::Client::new()
            .post(provider.token_endpoint())
            .basic_auth("gateway", Some("gateway-secret"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", rp.url("/cb").as_str()),
                ("code_verifier", VERIFIER),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id_token = tokens["id_token"].as_str().expect("id_token");
        let refresh_token = tokens["refresh_token"].as_str().expect("refresh_token");
        assert!(tokens["access_token"].is_string(), "{tokens:#}");
        let claims = jwt_claims(id_token);
        assert_eq!(claims["iss"], provider.issuer.as_str());
        assert_eq!(claims["aud"], "gateway");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["roles"], serde_json::json!(["admin", "billing"]));
        assert_eq!(claims["tenant"], "acme");
        assert_eq!(claims["department"], "research");
        let sid = claims["sid"]
            .as_str()
            .expect("sid in the ID token")
            .to_string();

        let refreshed: serde_json::Value = reqwest::Client::new()
            .post(provider.token_endpoint())
            .basic_auth("gateway", Some("gateway-secret"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(refreshed["id_token"].is_string(), "{refreshed:#}");
        assert_eq!(
            jwt_claims(refreshed["id_token"].as_str().unwrap())["tenant"],
            "acme"
        );

        // A back-channel logout on demand reaches the RP.
        let (status, body) = provider
            .backchannel_logout("alice", Some(&sid), Some("gateway"))
            .await;
        assert_eq!(status, 200, "{body:#}");
        assert!(rp
            .requests
            .lock()
            .unwrap()
            .iter()
            .any(|t| t == "/backchannel"));

        // RP-initiated logout: confirm, land on the post-logout URI, and the session is gone.
        let backchannels = || {
            rp.requests
                .lock()
                .unwrap()
                .iter()
                .filter(|t| *t == "/backchannel")
                .count()
        };
        let before = backchannels();
        let mut logout = Url::parse(&provider.end_session_endpoint()).unwrap();
        logout
            .query_pairs_mut()
            .append_pair("id_token_hint", id_token)
            .append_pair("post_logout_redirect_uri", &rp.url("/bye"))
            .append_pair("state", "bye-1");
        let page = http_logout(&flow, logout.as_str()).await;
        assert_eq!(page.status, 200, "{page:#?}\n{}", provider.log());
        assert_eq!(page.url, rp.url("/bye?state=bye-1"), "{page:#?}");
        assert!(
            page.hops
                .iter()
                .any(|h| h.starts_with("POST ") && h.contains("/session/end/confirm")),
            "{page:#?}"
        );
        assert_eq!(
            backchannels(),
            before + 1,
            "no back-channel logout on logout"
        );

        // Logged out: the next login shows the login form again.
        let third = flow
            .login(&authorize_url(&provider, &rp, "st-789"), "alice")
            .await;
        assert!(
            third.hops.iter().any(|h| h.contains("/interaction/")),
            "{third:#?}"
        );
    }

    #[tokio::test]
    async fn consent_prompt_and_client_secret_post() {
        let rp = TinyRp::start();
        let provider = OidcProvider::start(&serde_json::json!({
            "consent": "prompt",
            "clients": [{
                "client_id": "post-client",
                "client_secret": "post-secret",
                "redirect_uris": [rp.url("/cb")],
                "token_endpoint_auth_method": "client_secret_post"
            }],
            "accounts": { "bob": { "tenant": "globex" } }
        }));
        let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(VERIFIER.as_bytes()));
        let mut url = Url::parse(&provider.authorization_endpoint()).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", "post-client")
            .append_pair("response_type", "code")
            .append_pair("scope", "openid")
            .append_pair("redirect_uri", &rp.url("/cb"))
            .append_pair("state", "s")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let (_flow, page) = http_login(url.as_str(), "bob").await;
        assert!(page.url.starts_with(&rp.url("/cb?code=")), "{page:#?}");
        let consent_posts = page
            .hops
            .iter()
            .filter(|h| h.starts_with("POST ") && h.contains("/interaction/"))
            .count();
        assert_eq!(consent_posts, 2, "login and consent forms: {page:#?}");
        let code = Url::parse(&page.url)
            .unwrap()
            .query_pairs()
            .find(|(n, _)| n == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let tokens: serde_json::Value = reqwest::Client::new()
            .post(provider.token_endpoint())
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", rp.url("/cb").as_str()),
                ("code_verifier", VERIFIER),
                ("client_id", "post-client"),
                ("client_secret", "post-secret"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let claims = jwt_claims(tokens["id_token"].as_str().expect("id_token"));
        assert_eq!(claims["tenant"], "globex");
        assert!(tokens["refresh_token"].is_string(), "{tokens:#}");
    }

    #[test]
    fn a_bad_configuration_fails_at_once_with_the_providers_log() {
        let started = std::time::Instant::now();
        let failure = std::panic::catch_unwind(|| {
            OidcProvider::start(&serde_json::json!({
                "clients": [{ "client_id": "no-redirect-uris", "client_secret": "s" }]
            }))
        })
        .err()
        .expect("a client without redirect_uris was accepted");
        let message = failure
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("did not start"), "{message}");
        assert!(message.contains("redirect_uris"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn forms_are_parsed_with_entities_and_attribute_styles() {
        let html = r#"<html><form autocomplete="off" action="http://127.0.0.1:1/interaction/a&amp;b" method="post">
            <input type="hidden" name="prompt" value="login"/>
            <input required type=text name=login placeholder='x' autofocus="on">
            <input type="password" name="password">
            <button type="submit">Sign-in</button></form>
            <form id="op.logoutForm" method="POST" action="/session/end/confirm"><input type="hidden" name="xsrf" value="a&#39;b&quot;&#x3c;"/></form>"#;
        let forms = Form::all(html);
        assert_eq!(forms.len(), 2);
        assert_eq!(forms[0].action, "http://127.0.0.1:1/interaction/a&b");
        assert_eq!(forms[0].method, Method::POST);
        assert_eq!(forms[0].field("prompt"), Some("login"));
        assert_eq!(forms[0].field("login"), Some(""));
        assert_eq!(forms[0].fields.len(), 3);
        assert_eq!(forms[1].id.as_deref(), Some("op.logoutForm"));
        assert_eq!(forms[1].field("xsrf"), Some("a'b\"<"));
        assert_eq!(decode_entities("&amp;&bogus; & x"), "&&bogus; & x");
    }
}
