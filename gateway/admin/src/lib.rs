//! The admin API, on its own listener (`[admin]`; absent: no admin listener at all).
//!
//! Open: `GET /healthz` (the process serves), `GET /readyz` (policies, registry and maps are
//! loaded and the gateway is not shutting down), `GET /openapi.json`. Everything else needs
//! `Authorization: Bearer <token>` with the token of `token_file`: Prometheus `/metrics`,
//! `/admin/status`, `/admin/reload`, `/admin/explain`, `/admin/usage`, `/admin/residency`, and
//! tenant provisioning under `/admin/tenants/{id}` (create/update/suspend, effective on the
//! next request; with a PostgreSQL registry also written there, so every replica follows).

pub mod console;
mod console_sessions;
mod preconditions;
mod scim;
mod stream;
mod tenants;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use gateway_engine::admission::Services;
use gateway_engine::identity::sessions::operator::OperatorLogin;
use gateway_engine::identity::sessions::{BrowserResponse, SessionContext};
use gateway_engine::reload::Reloader;
use gateway_engine::side_listener::{CappedListener, DoorLimits};
use gateway_engine::snapshot::SnapshotStore;
use gateway_engine::status::UpstreamStatus;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest request body the admin API reads.
const MAX_BODY: usize = 1 << 20;

/// What the admin API reads and acts on.
pub struct Admin {
    pub store: Arc<SnapshotStore>,
    pub services: Arc<Services>,
    pub upstreams: Arc<dyn UpstreamStatus>,
    pub reloader: Option<Reloader>,
    pub tenants: tenants::TenantWriter,
    pub metrics: Option<PrometheusHandle>,
    pub outbox_dir: Option<PathBuf>,
    pub audit_dir: Option<PathBuf>,
    pub config_path: PathBuf,
    token_sha256: [u8; 32],
    started: Instant,
    shutting_down: AtomicBool,
    /// The usage outbox and audit log: not ready while they cannot write.
    recording: Arc<gateway_engine::lifecycle::Recording>,
    /// `[admin.sso]`: operators sign in to the console with the platform's identity provider.
    operator_login: Option<OperatorLogin>,
    /// Connection limit and read timeouts (`[admin] max_connections`, `[server]`'s timeouts).
    limits: DoorLimits,
    /// The console's sign-ins with the admin token.
    console_sessions: console_sessions::ConsoleSessions,
}

type AdminResponse = Response<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>;

/// `GET /admin/usage?format=`.
#[derive(Debug, Clone, Copy)]
enum UsageExport {
    Json,
    Csv,
    Xlsx,
    Pdf,
}

/// A response with a body of `content_type`, never cached.
fn body_response(status: StatusCode, body: Bytes, content_type: &'static str) -> AdminResponse {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

fn respond(status: StatusCode, body: serde_json::Value) -> AdminResponse {
    body_response(status, Bytes::from(body.to_string()), "application/json")
}

/// The values of the console's sign-in cookie in a request.
fn console_cookies(req: &Request<Incoming>) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == console::COOKIE)
        .map(|(_, value)| value)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn problem(status: StatusCode, detail: impl Into<String>) -> AdminResponse {
    let body = json!({
        "type": format!("{}admin-{}", gateway_engine::pipeline::rejection::PROBLEM_TYPE_PREFIX, status.as_u16()),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    body_response(
        status,
        Bytes::from(body.to_string()),
        "application/problem+json",
    )
}

/// An answer of the engine's browser endpoints (the console's sign-in) as an admin response.
fn browser_response(answer: BrowserResponse) -> AdminResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = body_response(status, Bytes::from(answer.body), answer.content_type);
    for (name, value) in answer.headers {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// `GET /admin/usage` and `/admin/residency` query parameters.
#[derive(Debug, Deserialize)]
struct PeriodQuery {
    tenant: Option<String>,
    from: String,
    to: String,
    #[serde(default)]
    bucket: Option<String>,
    /// Usage reports: what rows are grouped by (`tenant,action` by default).
    #[serde(default)]
    by: Option<String>,
    /// Usage reports: `json` (default), `csv`, `xlsx` or `pdf`.
    #[serde(default)]
    format: Option<String>,
    /// Usage reports: one chargeback attribute value only, `NAME=VALUE`.
    #[serde(default)]
    attribute: Option<String>,
}

/// The files the admin API reads: usage reports from the outbox, audit queries from the log,
/// reloads from the configuration.
#[derive(Debug, Clone, Default)]
pub struct AdminPaths {
    pub outbox_dir: Option<std::path::PathBuf>,
    pub audit_dir: Option<std::path::PathBuf>,
    pub config_path: std::path::PathBuf,
}

/// `POST /admin/explain` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainBody {
    method: String,
    path: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    country: Option<String>,
    /// The connecting peer's address (`X-Forwarded-For` is walked from it).
    #[serde(default)]
    peer: Option<std::net::IpAddr>,
    /// The request body, for routes whose decision reads body facts.
    #[serde(default)]
    body: Option<String>,
}

impl Admin {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<SnapshotStore>,
        services: Arc<Services>,
        upstreams: Arc<dyn UpstreamStatus>,
        reloader: Option<Reloader>,
        tenants: tenants::TenantWriter,
        metrics: Option<PrometheusHandle>,
        token_sha256: [u8; 32],
        paths: AdminPaths,
        recording: Arc<gateway_engine::lifecycle::Recording>,
    ) -> Self {
        Admin {
            store,
            services,
            upstreams,
            reloader,
            tenants,
            metrics,
            outbox_dir: paths.outbox_dir,
            audit_dir: paths.audit_dir,
            config_path: paths.config_path,
            token_sha256,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            recording,
            operator_login: None,
            limits: DoorLimits::default(),
            console_sessions: console_sessions::ConsoleSessions::new(token_sha256),
        }
    }

    /// Serves with `limits` rather than the defaults of `[admin]` and `[server]`.
    pub fn with_limits(mut self, limits: DoorLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Lets operators sign in to the console with `[admin.sso]` (needs `[sessions]`, whose keys
    /// seal the console's cookies: `services.sessions`).
    pub fn with_operator_login(mut self, login: OperatorLogin) -> Self {
        self.operator_login = Some(login);
        self
    }

    /// The console's own sign-in, when `[admin.sso]` and `[sessions]` are both configured.
    fn operator_sso(
        &self,
    ) -> Option<(
        &OperatorLogin,
        &gateway_engine::identity::sessions::Sessions,
    )> {
        Some((
            self.operator_login.as_ref()?,
            self.services.sessions.as_deref()?,
        ))
    }

    /// Who may see the console: the admin token (bearer or its session cookie), or a signed-in
    /// operator (their e-mail address or id).
    fn console_viewer(&self, req: &Request<Incoming>) -> Option<String> {
        if self.authorized(req) || self.console_session(req) {
            return Some("the admin token".to_string());
        }
        let (_, sessions) = self.operator_sso()?;
        sessions
            .operator_session(req.headers())
            .map(|o| o.email.unwrap_or(o.sub))
    }

    /// Serves until shutdown; `/readyz` turns 503 as soon as shutdown begins, so load
    /// balancers stop sending while in-flight requests finish.
    pub async fn serve(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let listener = match CappedListener::new(listener, self.limits.max_connections, "admin") {
            Ok(l) => l,
            Err(error) => {
                tracing::error!(%error, "admin listener");
                return;
            }
        };
        let mut watching = true;
        loop {
            tokio::select! {
                (stream, peer, slot) = listener.accept() => {
                    let admin = self.clone();
                    let header_read_timeout = self.limits.header_read_timeout;
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let admin = admin.clone();
                            async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
                        });
                        // HTTP/1.1 only (browsers and scrapers on plain HTTP): hyper's head
                        // timeout then runs from the connection's start, so a client that
                        // sends nothing, or half a head, or idles between requests that long,
                        // is disconnected (the timer makes hyper enforce it).
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(header_read_timeout)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        drop(slot);
                    });
                }
                changed = shutdown.changed(), if watching => {
                    // Keep answering (readyz: 503) through the grace period; the server ends
                    // this task when it stops.
                    watching = changed.is_ok();
                    if *shutdown.borrow() {
                        self.shutting_down.store(true, Ordering::Release);
                        tracing::info!("admin: shutting down, /readyz answers 503");
                    }
                }
            }
        }
    }

    /// A request body of at most `max` bytes, each part arriving within
    /// `server.body_read_timeout` of the last (a stalled upload would hold its connection and
    /// task for ever): `413` when larger, `408` when stalled, `400` when the read fails.
    async fn read_body(&self, body: Incoming, max: usize) -> Result<Bytes, AdminResponse> {
        let mut body = Limited::new(body, max);
        let mut bytes = bytes::BytesMut::new();
        loop {
            let frame = tokio::time::timeout(self.limits.body_read_timeout, body.frame()).await;
            match frame {
                Err(_) => {
                    return Err(problem(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body stalled",
                    ))
                }
                Ok(None) => return Ok(bytes.freeze()),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
                Ok(Some(Err(error))) if error.is::<http_body_util::LengthLimitError>() => {
                    return Err(problem(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the request body is larger than {max} bytes"),
                    ))
                }
                Ok(Some(Err(error))) => {
                    return Err(problem(
                        StatusCode::BAD_REQUEST,
                        format!("the request body could not be read: {error}"),
                    ))
                }
            }
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        digest.ct_eq(&self.token_sha256).into()
    }

    /// A console session cookie that matches the current admin token.
    fn console_session(&self, req: &Request<Incoming>) -> bool {
        let now = unix_now();
        console_cookies(req).any(|value| self.console_sessions.is_valid(value, now))
    }

    /// `/console`: the page (admin bearer or session cookie; a sign-in form otherwise),
    /// `POST /console/login` (the admin token in a form sets the session cookie) and
    /// `POST /console/logout`.
    async fn console(
        &self,
        req: Request<Incoming>,
        method: &Method,
        rest: &[&str],
        peer: SocketAddr,
    ) -> AdminResponse {
        let html = |status: StatusCode, page: String| {
            body_response(status, Bytes::from(page), "text/html; charset=utf-8")
        };
        let redirect = |cookie: String| {
            let mut response = html(StatusCode::SEE_OTHER, String::new());
            if let Ok(value) = http::HeaderValue::from_str(&cookie) {
                response
                    .headers_mut()
                    .insert(http::header::SET_COOKIE, value);
            }
            response.headers_mut().insert(
                http::header::LOCATION,
                http::HeaderValue::from_static("/console"),
            );
            response
        };
        match (method, rest) {
            (&Method::POST, ["login"]) => {
                let body = match self.read_body(req.into_body(), 4096).await {
                    Ok(body) => body,
                    Err(refused) => return refused,
                };
                let token = form_urlencoded::parse(&body)
                    .find(|(name, _)| name == "token")
                    .map(|(_, value)| value.into_owned())
                    .unwrap_or_default();
                let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
                if !bool::from(digest.ct_eq(&self.token_sha256)) {
                    tracing::warn!(%peer, "console sign-in with a wrong token");
                    return html(
                        StatusCode::UNAUTHORIZED,
                        console::login_page(
                            Some("That is not the admin token."),
                            self.operator_sso().is_some(),
                        ),
                    );
                }
                redirect(format!(
                    "{}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
                    console::COOKIE,
                    self.console_sessions.begin(unix_now()),
                    console_sessions::LIFETIME.as_secs()
                ))
            }
            (&Method::POST, ["logout"]) => {
                // A copy of the cookie must not outlive the sign-out.
                for value in console_cookies(&req) {
                    self.console_sessions.end(value, unix_now());
                }
                let mut response = redirect(format!(
                    "{}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
                    console::COOKIE
                ));
                if let Some((login, _)) = self.operator_sso() {
                    if let Ok(value) = http::HeaderValue::from_str(&login.clear_session()) {
                        response
                            .headers_mut()
                            .append(http::header::SET_COOKIE, value);
                    }
                }
                response
            }
            (&Method::GET, ["sso"]) => match self.operator_sso() {
                Some((login, sessions)) => browser_response(sessions.operator_login(login).await),
                None => problem(StatusCode::NOT_FOUND, "no single sign-on for the console"),
            },
            (&Method::GET, ["callback"]) => {
                let snapshot = self.store.load();
                let (Some((login, sessions)), Some(identity)) =
                    (self.operator_sso(), snapshot.identity.as_deref())
                else {
                    return problem(StatusCode::NOT_FOUND, "no single sign-on for the console");
                };
                let cx = SessionContext {
                    identity,
                    registry: &snapshot.registry,
                    generation: snapshot.identity_generation,
                    authenticator: &self.services.authenticator,
                    directory: &self.services.directory,
                };
                let answer = sessions
                    .operator_callback(login, req.uri().query(), req.headers(), &cx)
                    .await;
                if answer.status == 403 || answer.status == 401 {
                    tracing::warn!(%peer, status = answer.status, "console sign-in refused");
                }
                browser_response(answer)
            }
            (&Method::GET, []) => {
                let Some(viewer) = self.console_viewer(&req) else {
                    return html(
                        StatusCode::OK,
                        console::login_page(None, self.operator_sso().is_some()),
                    );
                };
                let query = req.uri().query().unwrap_or("").to_string();
                let period: BTreeMap<String, String> =
                    serde_urlencoded::from_str(&query).unwrap_or_default();
                let time = |name: &str| {
                    period
                        .get(name)
                        .map(|v| gateway_engine::metering::report::parse_time(v))
                        .transpose()
                };
                let (from, to) = match (time("from"), time("to")) {
                    (Ok(f), Ok(t)) => (f, t),
                    (Err(e), _) | (_, Err(e)) => return problem(StatusCode::BAD_REQUEST, e),
                };
                let snapshot = self.store.load();
                let (outbox, audit) = (self.outbox_dir.clone(), self.audit_dir.clone());
                let page = tokio::task::spawn_blocking(move || {
                    console::render(
                        &snapshot,
                        outbox.as_deref(),
                        audit.as_deref(),
                        from,
                        to,
                        &viewer,
                    )
                })
                .await;
                match page {
                    Ok(Ok(page)) => html(StatusCode::OK, page),
                    Ok(Err(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, e),
                    Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            _ => problem(StatusCode::NOT_FOUND, "no such console page"),
        }
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> AdminResponse {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => return respond(StatusCode::OK, json!({"status": "ok"})),
            (&Method::GET, ["readyz"]) => return self.readyz(),
            (&Method::GET, ["openapi.json"]) => {
                return body_response(
                    StatusCode::OK,
                    Bytes::from_static(OPENAPI.as_bytes()),
                    "application/json",
                )
            }
            _ => {}
        }
        // The console: the admin token as bearer, or the session its login form sets.
        if let ["console", rest @ ..] = segments.as_slice() {
            return self.console(req, &method, rest, peer).await;
        }
        // A tenant's administrators: its own audit trail, with the tenant's audit token.
        if let (&Method::GET, ["tenants", tenant, "audit"]) = (&method, segments.as_slice()) {
            let authorization = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let query = req.uri().query().unwrap_or("").to_string();
            let response = self
                .tenant_audit(tenant, authorization.as_deref(), &query)
                .await;
            tracing::info!(target: "admin", %peer, tenant, status = response.status().as_u16(), "tenant audit export");
            return response;
        }
        // SCIM: the tenant's identity provider, with the tenant's own token.
        if let ["scim", "v2", tenant, rest @ ..] = segments.as_slice() {
            let authorization = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if !scim::authorized(&self.store, tenant, authorization) {
                tracing::warn!(%peer, %method, path, "SCIM request without the tenant's token");
                let mut r = problem(
                    StatusCode::UNAUTHORIZED,
                    "the tenant's SCIM bearer token is required",
                );
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"gateway-scim\""),
                );
                return r;
            }
            let query = req.uri().query().unwrap_or("").to_string();
            let precondition = Precondition::of(req.headers());
            let body = match self.read_body(req.into_body(), MAX_BODY).await {
                Ok(body) => body,
                Err(refused) => return refused,
            };
            let response = scim::handle(
                &self.services.directory,
                tenant,
                &method,
                rest,
                &query,
                &body,
                &precondition,
            )
            .await;
            tracing::info!(target: "admin", %peer, %method, path, status = response.status().as_u16(), "SCIM request");
            return response;
        }
        if !self.authorized(&req) {
            tracing::warn!(%peer, %method, path, "admin request without a valid token");
            let mut r = problem(
                StatusCode::UNAUTHORIZED,
                "a valid admin bearer token is required",
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"gateway-admin\""),
            );
            return r;
        }
        let query = req.uri().query().unwrap_or("").to_string();
        let precondition = Precondition::of(req.headers());
        let body = match self.read_body(req.into_body(), MAX_BODY).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        let response = match (&method, segments.as_slice()) {
            (&Method::GET, ["metrics"]) => match &self.metrics {
                Some(handle) => {
                    self.record_upstream_health();
                    body_response(
                        StatusCode::OK,
                        Bytes::from(handle.render()),
                        "text/plain; version=0.0.4",
                    )
                }
                None => problem(StatusCode::NOT_FOUND, "metrics are not enabled"),
            },
            (&Method::GET, ["admin", "status"]) => self.status(),
            (&Method::POST, ["admin", "reload"]) => self.reload().await,
            (&Method::POST, ["admin", "explain"]) => self.explain(&body).await,
            (&Method::GET, ["admin", "usage"]) => self.usage(&query).await,
            (&Method::GET, ["admin", "residency"]) => self.residency(&query).await,
            (&Method::GET, ["admin", "audit"]) => self.audit(&query).await,
            (&Method::GET, ["admin", "tenants", id]) => self.tenants.get(&self.store, id),
            (&Method::PUT, ["admin", "tenants", id]) => {
                self.tenants
                    .put(&self.store, id, &body, &precondition)
                    .await
            }
            (&Method::POST, ["admin", "tenants", id, "suspend"]) => {
                self.tenants
                    .set_status(
                        &self.store,
                        id,
                        gateway_engine::tenancy::TenantStatus::Suspended,
                    )
                    .await
            }
            (&Method::POST, ["admin", "tenants", id, "activate"]) => {
                self.tenants
                    .set_status(
                        &self.store,
                        id,
                        gateway_engine::tenancy::TenantStatus::Active,
                    )
                    .await
            }
            (
                &Method::POST,
                ["admin", "tenants", id, "principals", principal, switch @ ("deactivate" | "activate")],
            ) => {
                // Principal ids are as tokens carry them (`a@b.example`, …): percent-decoded.
                match percent_encoding::percent_decode_str(principal).decode_utf8() {
                    Ok(principal) => {
                        self.set_principal_active(id, &principal, *switch == "activate")
                            .await
                    }
                    Err(_) => problem(StatusCode::BAD_REQUEST, "the principal id is not UTF-8"),
                }
            }
            _ => problem(
                StatusCode::NOT_FOUND,
                format!("no admin route {method} {path}"),
            ),
        };
        tracing::info!(target: "admin", %peer, %method, path, status = response.status().as_u16(), "admin request");
        response
    }

    /// Deactivates or activates a principal of a tenant in the directory (as SCIM does):
    /// refused with 401 `principal-deactivated` from its next request on, on every replica.
    async fn set_principal_active(
        &self,
        tenant: &str,
        principal: &str,
        active: bool,
    ) -> AdminResponse {
        if self.store.load().registry.get(tenant).is_none() {
            return problem(StatusCode::NOT_FOUND, format!("no tenant `{tenant}`"));
        }
        match self
            .services
            .directory
            .set_active(tenant, principal, active)
            .await
        {
            Ok(user) => {
                let event = if active {
                    "principal.activated"
                } else {
                    "principal.deactivated"
                };
                tracing::info!(target: "audit", event, tenant, principal, "admin API: principal {}", if active { "activated" } else { "deactivated" });
                respond(
                    StatusCode::OK,
                    json!({"tenant": tenant, "principal": user.user_name, "active": user.active, "directory_id": user.id}),
                )
            }
            Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    /// Peer health as gauges, read when scraped.
    fn record_upstream_health(&self) {
        for pool in self.upstreams.pools() {
            let healthy = pool.peers.iter().filter(|(_, h)| *h).count();
            metrics::gauge!(gateway_engine::telemetry::UPSTREAM_HEALTHY_PEERS, "pool" => pool.name.clone())
                .set(healthy as f64);
            metrics::gauge!(gateway_engine::telemetry::UPSTREAM_PEERS, "pool" => pool.name)
                .set(pool.peers.len() as f64);
        }
    }

    fn readyz(&self) -> AdminResponse {
        let snapshot = self.store.load();
        let shutting_down = self.shutting_down.load(Ordering::Acquire);
        // A replica that cannot record usage or audit refuses requests (503): take it out of
        // the load balancer's rotation until it can again.
        let recording_unavailable = self.recording.unavailable();
        let ready = !shutting_down && recording_unavailable.is_none();
        let body = json!({
            "ready": ready,
            "shutting_down": shutting_down,
            "recording_unavailable": recording_unavailable,
            "policies": snapshot.authz.as_ref().map(|a| a.version.clone()),
            "tenants": snapshot.registry.len(),
            "residency_maps": snapshot.residency.is_some(),
        });
        let status = if !ready {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        respond(status, body)
    }

    fn status(&self) -> AdminResponse {
        let snapshot = self.store.load();
        let pools: Vec<serde_json::Value> = self
            .upstreams
            .pools()
            .into_iter()
            .map(|pool| {
                let peers: Vec<serde_json::Value> = pool
                    .peers
                    .into_iter()
                    .map(|(addr, healthy)| json!({"addr": addr.to_string(), "healthy": healthy}))
                    .collect();
                json!({"name": pool.name, "region": pool.region, "peers": peers})
            })
            .collect();
        respond(
            StatusCode::OK,
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "config": self.config_path.display().to_string(),
                "uptime_seconds": self.started.elapsed().as_secs(),
                "policies": snapshot.authz.as_ref().map(|a| json!({
                    "version": a.version,
                })),
                "tenants": snapshot.registry.len(),
                "identity_generation": snapshot.identity_generation,
                "residency": snapshot.residency.as_ref().map(|r| json!({
                    "regions": r.maps.regions().iter().map(|g| g.id.clone()).collect::<Vec<_>>(),
                    "default_regime": r.default_regime,
                })),
                "rate_limits": self.services.limiter.status(),
                "upstream_pools": pools,
            }),
        )
    }

    async fn reload(&self) -> AdminResponse {
        let Some(reloader) = self.reloader.clone() else {
            return problem(
                StatusCode::CONFLICT,
                "nothing is reloadable: no [authorization] and no file registry",
            );
        };
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(report) => {
                let status = if report.ok {
                    StatusCode::OK
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                respond(status, serde_json::to_value(&report).unwrap_or_default())
            }
            Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    async fn explain(&self, body: &[u8]) -> AdminResponse {
        let body: ExplainBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("body: {e}")),
        };
        let request = gateway_engine::explain::ExplainRequest {
            method: body.method,
            path: body.path,
            host: body.host,
            headers: body.headers.into_iter().collect(),
            principal: None,
            country: body.country,
            peer: body.peer,
            body: body.body,
        };
        let snapshot = self.store.load();
        let explanation =
            gateway_engine::explain::explain(&snapshot, &self.services, &request).await;
        respond(
            StatusCode::OK,
            serde_json::to_value(&explanation).unwrap_or_default(),
        )
    }

    /// Parses `tenant`, `from`, `to` (and `bucket`); the error is the problem detail (400).
    fn period(query: &str) -> Result<(PeriodQuery, SystemTime, SystemTime), String> {
        let q: PeriodQuery =
            serde_urlencoded::from_str(query).map_err(|e| format!("query: {e}"))?;
        let from = gateway_engine::metering::report::parse_time(&q.from)
            .map_err(|e| format!("from: {e}"))?;
        let to =
            gateway_engine::metering::report::parse_time(&q.to).map_err(|e| format!("to: {e}"))?;
        Ok((q, from, to))
    }

    async fn usage(&self, query: &str) -> AdminResponse {
        use gateway_engine::metering::report::{self, Bucket, ReportQuery};
        let (q, from, to) = match Self::period(query) {
            Ok(p) => p,
            Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
        };
        let bucket = match q.bucket.as_deref() {
            None | Some("hour") => Bucket::Hour,
            Some("day") => Bucket::Day,
            Some(other) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("bucket: `{other}` is not `hour` or `day`"),
                )
            }
        };
        let Some(dir) = self.outbox_dir.clone() else {
            return problem(StatusCode::CONFLICT, "no [metering] outbox configured");
        };
        let by = match q.by.as_deref().map(report::Dimension::parse_list) {
            None => report::default_dimensions(),
            Some(Ok(by)) => by,
            Some(Err(e)) => return problem(StatusCode::BAD_REQUEST, format!("by: {e}")),
        };
        let attribute = match q.attribute.as_deref().map(report::parse_attribute_filter) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => return problem(StatusCode::BAD_REQUEST, format!("attribute: {e}")),
        };
        let query = ReportQuery {
            tenant: q.tenant,
            from,
            to,
            bucket,
            by,
            attribute,
        };
        let format = match q.format.as_deref() {
            None | Some("json") => UsageExport::Json,
            Some("csv") => UsageExport::Csv,
            Some("xlsx") => UsageExport::Xlsx,
            Some("pdf") => UsageExport::Pdf,
            Some(other) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("format: `{other}` is not json, csv, xlsx or pdf"),
                )
            }
        };
        let prices = self.store.load().prices.clone();
        // The scan first (its failure is a 500); then the rows go out as they are written.
        let scanned = tokio::task::spawn_blocking(move || {
            let aggregator = report::Aggregator::new(&query, prices.as_deref())
                .spill_beyond(report::ROWS_IN_MEMORY);
            let rows = report::outbox_rows(aggregator, &dir, |_| {});
            (rows, query)
        })
        .await;
        let (rows, query) = match scanned {
            Ok((Ok(rows), query)) => (rows, query),
            Ok((Err(e), _)) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let (content_type, disposition) = match format {
            UsageExport::Json => ("application/json", None),
            UsageExport::Csv => (
                "text/csv; charset=utf-8",
                Some("attachment; filename=\"usage.csv\""),
            ),
            UsageExport::Xlsx => (
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                Some("attachment; filename=\"usage.xlsx\""),
            ),
            UsageExport::Pdf => (
                "application/pdf",
                Some("attachment; filename=\"usage.pdf\""),
            ),
        };
        let heading = report::ReportHeading::usage(&query, "this replica's outbox");
        let format = match format {
            UsageExport::Json => report::ReportFormat::JsonDocument,
            UsageExport::Csv => report::ReportFormat::Csv,
            UsageExport::Xlsx => report::ReportFormat::Xlsx,
            UsageExport::Pdf => report::ReportFormat::Pdf,
        };
        stream::streamed(content_type, disposition, move |out| {
            report::write_report(rows, format, &heading, out)
        })
        .await
    }

    /// `GET /tenants/<id>/audit`: a tenant's own administrators read its trail (its records
    /// only) with the tenant's audit token, when its plan has the `audit-export` feature.
    async fn tenant_audit(
        &self,
        tenant: &str,
        authorization: Option<&str>,
        query: &str,
    ) -> AdminResponse {
        let snapshot = self.store.load();
        let spec = snapshot.registry.get(tenant);
        let expected = spec
            .and_then(|spec| spec.audit.as_ref())
            .and_then(|a| hex::decode(&a.token_sha256).ok());
        let presented = authorization.and_then(|v| v.strip_prefix("Bearer "));
        let valid = match (expected, presented) {
            (Some(expected), Some(token)) => {
                let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
                bool::from(digest.as_slice().ct_eq(expected.as_slice()))
            }
            _ => false,
        };
        // An unknown tenant is answered as a wrong token is: the answer must not tell which
        // tenants exist.
        let (true, Some(spec)) = (valid, spec) else {
            let mut r = problem(
                StatusCode::UNAUTHORIZED,
                "the tenant's audit token is required",
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"gateway-tenant-audit\""),
            );
            return r;
        };
        let feature = gateway_engine::tenancy::model::AUDIT_EXPORT_FEATURE;
        let in_plan = spec.features.iter().any(|f| f == feature)
            || self
                .services
                .limiter
                .table
                .tier_features(&spec.tier)
                .iter()
                .any(|f| f == feature);
        if !in_plan {
            return problem(
                StatusCode::FORBIDDEN,
                format!("the `{feature}` feature is not in the tenant's plan"),
            );
        }
        self.audit_export(query, Some(tenant)).await
    }

    /// `GET /admin/audit`: the audit records matching `tenant`, `principal`, `action`,
    /// `decision` (`allow`/`deny`), `policy`, `from`, `to`, as a verifiable JSON-lines excerpt
    /// (`format=jsonl`, the default) or CSV.
    async fn audit(&self, query: &str) -> AdminResponse {
        self.audit_export(query, None).await
    }

    /// An audit export; `only_tenant` restricts it to that tenant's records whatever the
    /// query says.
    async fn audit_export(&self, query: &str, only_tenant: Option<&str>) -> AdminResponse {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AuditQuery {
            tenant: Option<String>,
            principal: Option<String>,
            action: Option<String>,
            decision: Option<String>,
            policy: Option<String>,
            from: Option<String>,
            to: Option<String>,
            format: Option<String>,
            #[serde(default)]
            cross_org: bool,
        }
        let q: AuditQuery = match serde_urlencoded::from_str(query) {
            Ok(q) => q,
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("query: {e}")),
        };
        let time = |name: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(gateway_engine::metering::report::parse_time)
                .transpose()
                .map_err(|e| format!("{name}: {e}"))
        };
        let (from, to) = match (time("from", &q.from), time("to", &q.to)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return problem(StatusCode::BAD_REQUEST, e),
        };
        let allowed = match q.decision.as_deref() {
            None => None,
            Some("allow") => Some(true),
            Some("deny") => Some(false),
            Some(other) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("decision: `{other}` is not `allow` or `deny`"),
                )
            }
        };
        let format = match q.format.as_deref() {
            None | Some("jsonl") => "jsonl",
            Some("csv") => "csv",
            Some("pdf") => "pdf",
            Some(other) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("format: `{other}` is not jsonl, csv or pdf"),
                )
            }
        };
        let Some(dir) = self.audit_dir.clone() else {
            return problem(StatusCode::CONFLICT, "no [audit] log configured");
        };
        if only_tenant.is_some() && q.tenant.as_deref().is_some_and(|t| Some(t) != only_tenant) {
            return problem(StatusCode::FORBIDDEN, "a tenant reads its own trail only");
        }
        let filter = gateway_engine::audit_export::AuditFilter {
            tenant: only_tenant.map(str::to_string).or(q.tenant),
            principal: q.principal,
            action: q.action,
            allowed,
            policy: q.policy,
            from,
            to,
            cross_org: q.cross_org,
            tenant_view: only_tenant.is_some(),
        };
        let content_type = match format {
            "csv" => "text/csv; charset=utf-8",
            "pdf" => "application/pdf",
            _ => "application/jsonl",
        };
        stream::streamed(content_type, None, move |out| {
            use gateway_engine::audit_export::{export_csv, export_jsonl, summary_pdf};
            match format {
                "csv" => export_csv(&dir, &filter, out).map(drop),
                "pdf" => {
                    let generated = SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
                        .unwrap_or(0);
                    summary_pdf(
                        &[("this replica".to_string(), dir.as_path())],
                        &filter,
                        generated,
                    )
                    .and_then(|bytes| out.write_all(&bytes).map_err(Into::into))
                }
                _ => export_jsonl(&dir, &filter, out).map(drop),
            }
            .map_err(|e| e.to_string())
        })
        .await
    }

    async fn residency(&self, query: &str) -> AdminResponse {
        let (q, from, to) = match Self::period(query) {
            Ok(p) => p,
            Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
        };
        let Some(dir) = self.audit_dir.clone() else {
            return problem(StatusCode::CONFLICT, "no [audit] log configured");
        };
        let rows = tokio::task::spawn_blocking(move || {
            gateway_engine::audit::records(&dir).and_then(|records| {
                gateway_engine::residency::report(records, q.tenant.as_deref(), from, to)
            })
        })
        .await;
        match rows {
            Ok(Ok(rows)) => respond(StatusCode::OK, json!({ "rows": rows })),
            Ok(Err(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

pub use preconditions::Precondition;
pub use tenants::TenantWriter;
