//! The sections of the front doors: `[server]` (listeners, connection and request-head limits),
//! `[upstream]` (pools the proxy forwards to) and `[admin]` (the admin listener). The engine
//! never reads them; they are validated here with the rest of the file so that `gateway check`
//! reports every problem at once, and the proxy and admin crates take them as plain data.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::diagnostics::{SourceIssue, SourceText};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Plain-text listeners (`ip:port`), serving HTTP/1.1 and, when `h2c` is on, HTTP/2 cleartext.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Accept HTTP/2 with prior knowledge on the plain-text listeners.
    #[serde(default = "default_true")]
    pub h2c: bool,
    /// TLS listeners (rustls).
    #[serde(default)]
    pub tls: Option<TlsListenerConfig>,
    /// Worker threads of the proxy service (default: one per CPU).
    #[serde(default)]
    pub threads: Option<usize>,
    /// After SIGTERM: how long in-flight requests may take to finish before the runtime stops.
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub grace_period: Duration,
    /// After the grace period: the hard limit for background tasks to stop.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_timeout: Duration,
    /// Directory for runtime files (pid file, upgrade socket). Relative to this file.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Close a client connection after this many requests (like nginx `keepalive_requests`).
    #[serde(default)]
    pub keepalive_request_limit: Option<u32>,
    /// Longest time a client may take to send a request head (request line and headers): from
    /// the connection's start for its first request, from the first byte for later ones.
    /// Exceeded with part of a head received → `408`; with nothing received → closed silently.
    /// 100ms to 5m.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request before it is closed
    /// (also the longest silence from the client on an upgraded connection and, for HTTP/2,
    /// on the whole connection). 1s to 1h.
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keepalive_timeout: Duration,
    /// Longest wait for the next bytes of a request body; exceeded → `408`. Keep it below
    /// `upstream.read_timeout`, or a stalled body is reported as the upstream's `504`.
    /// 100ms to 1h.
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub body_read_timeout: Duration,
    /// Longest wait for a write to the client to make progress (a client that stops reading
    /// its response is disconnected). 100ms to 1h.
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub send_timeout: Duration,
    /// Largest request head (request line and header fields, in bytes); larger → `431`.
    /// 1 KiB to 1 MiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in a request; more → `431`. 1 to 256.
    #[serde(default = "default_max_header_count")]
    pub max_header_count: usize,
    /// Longest request target (path and query, in bytes); longer → `414`. 256 bytes up to
    /// `max_header_bytes`.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Largest request body (bytes), unless the route sets its own `max_body_bytes` in
    /// `routes.toml`; larger → `413` (announced by `Content-Length`: before anything is
    /// forwarded; streamed: when the limit is passed). 0 to 1 TiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Most client connections open at once; further ones are answered `503
    /// too-many-connections` and closed. 1 to 1,000,000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections open at once from one client address (an IPv6 /64 counts as one);
    /// `[geoip] trusted_proxies` are exempt (they count only toward `max_connections`).
    /// 1 to `max_connections`.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
}

impl ServerConfig {
    /// The request-head limits of stage 1's scanner.
    pub fn head_limits(&self) -> crate::pipeline::sanitize::HeadLimits {
        crate::pipeline::sanitize::HeadLimits {
            max_header_bytes: self.max_header_bytes,
            max_header_count: self.max_header_count,
            max_uri_bytes: self.max_uri_bytes,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// TLS listeners (`ip:port`).
    pub listen: Vec<String>,
    /// PEM certificate chain, leaf first. Relative to this file.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Relative to this file.
    pub key: PathBuf,
    /// Offer HTTP/2 through ALPN.
    #[serde(default = "default_true")]
    pub h2: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// TCP (and TLS) connect timeout.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Longest wait for the next read from the upstream (headers or body); exceeded → 504.
    #[serde(default = "default_io_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub read_timeout: Duration,
    /// Longest wait for a write to the upstream to make progress.
    #[serde(default = "default_io_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub write_timeout: Duration,
    /// How long an idle keep-alive connection stays in the pool.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Connections kept alive per process across all peers.
    #[serde(default = "default_keepalive_pool_size")]
    pub keepalive_pool_size: usize,
    /// Further peers tried after a connect failure (never after the request was sent).
    #[serde(default = "default_connect_retries")]
    pub connect_retries: usize,
    /// Active health checks of every peer.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// Pools of equivalent peers.
    pub pool: Vec<PoolConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Interval between checks of each peer.
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// `tcp` (connect succeeds) or an HTTP path such as `/healthz` (expects a 2xx).
    #[serde(default = "default_health_kind")]
    pub probe: String,
    /// Consecutive failures before a peer is taken out.
    #[serde(default = "default_health_threshold")]
    pub unhealthy_threshold: usize,
    /// Consecutive successes before a peer is taken back.
    #[serde(default = "default_health_threshold")]
    pub healthy_threshold: usize,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            interval: default_health_interval(),
            probe: default_health_kind(),
            unhealthy_threshold: default_health_threshold(),
            healthy_threshold: default_health_threshold(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique name, used in logs, metrics and audit records.
    pub name: String,
    /// Region these peers run in (see `residency-maps/`).
    #[serde(default)]
    pub region: Option<String>,
    /// `host:port` of every peer.
    pub peers: Vec<String>,
    /// Connect to the peers with TLS.
    #[serde(default)]
    pub tls: bool,
    /// SNI and certificate name for TLS peers (default: the host part of the peer).
    #[serde(default)]
    pub sni: Option<String>,
    /// Protocol spoken to the peers.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (keep-alive).
    #[default]
    Http1,
    /// HTTP/2: negotiated through ALPN on TLS peers, prior knowledge (h2c) otherwise.
    Http2,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port`; keep it on loopback or a private interface.
    pub listen: String,
    /// File holding the bearer token (at least 32 characters). Relative to the config file.
    pub token_file: PathBuf,
    /// Platform operators sign in to the console with the platform's identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso: Option<crate::identity::sessions::operator::OperatorSsoConfig>,
    /// Most connections open at once; further ones wait until one closes. 1 to 100000.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
}

/// `[ext_authz]`: Envoy's external authorization service (gRPC
/// `envoy.service.auth.v3.Authorization/Check`, plus `grpc.health.v1.Health` and server
/// reflection) on its own listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConfig {
    /// `ip:port` (OPA's Envoy plugin uses 9191). Envoy is its only client: keep it on loopback
    /// or the pod network.
    pub listen: String,
    /// Most connections open at once (Envoy keeps a few HTTP/2 connections per worker);
    /// further ones wait until one closes. 1 to 100000.
    #[serde(default = "default_door_max_connections")]
    pub max_connections: usize,
}

/// `[forward_auth]`: the forward-auth endpoint of nginx `auth_request`, Traefik `forwardAuth`
/// and Caddy `forward_auth` on its own listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// `ip:port`. The proxy in front is its only client (it sets the `X-Original-*` /
    /// `X-Forwarded-*` headers the decision trusts): keep it on loopback or a private network.
    pub listen: String,
    /// The path the proxy asks (default `/auth`); refusals kept for nginx are served under
    /// `<path>/refusals/`.
    #[serde(default = "default_forward_auth_path")]
    pub path: String,
    /// Most connections open at once (the proxy's keep-alive pool and its subrequests in
    /// flight); further ones wait until one closes. 1 to 100000.
    #[serde(default = "default_door_max_connections")]
    pub max_connections: usize,
}

fn default_forward_auth_path() -> String {
    "/auth".to_string()
}
fn default_door_max_connections() -> usize {
    1024
}
pub(crate) fn default_admin_max_connections() -> usize {
    256
}

/// The listeners beside the proxy share its file descriptors: `max_connections` keeps each to
/// its share (the proxy's own is `server.max_connections`).
fn check_max_connections(
    value: usize,
    field: &str,
    source: &SourceText,
    issues: &mut Vec<SourceIssue>,
) {
    if !(1..=100_000).contains(&value) {
        issues.push(source.issue(field, format!("{value} is out of bounds (1 to 100000)")));
    }
}

impl ExtAuthzConfig {
    pub(super) fn validate(&self, source: &SourceText, issues: &mut Vec<SourceIssue>) {
        check_listen(&self.listen, "ext_authz.listen", source, issues);
        check_max_connections(
            self.max_connections,
            "ext_authz.max_connections",
            source,
            issues,
        );
    }
}

impl ForwardAuthConfig {
    pub(super) fn validate(&self, source: &SourceText, issues: &mut Vec<SourceIssue>) {
        check_listen(&self.listen, "forward_auth.listen", source, issues);
        check_max_connections(
            self.max_connections,
            "forward_auth.max_connections",
            source,
            issues,
        );
        let valid = self.path.starts_with('/')
            && self.path.len() > 1
            && !self.path.ends_with('/')
            && self
                .path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
        if !valid {
            issues.push(source.issue(
                "forward_auth.path",
                format!(
                    "`{}` is not a plain absolute path like `/auth` (letters, digits, `/-_.~`, no trailing `/`)",
                    self.path
                ),
            ));
        }
    }
}

fn check_listen(listen: &str, field: &str, source: &SourceText, issues: &mut Vec<SourceIssue>) {
    if listen.parse::<SocketAddr>().is_err() {
        issues.push(source.issue(field, format!("`{listen}` is not an `ip:port` address")));
    }
}

/// Why the admin token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("admin.token_file {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("admin.token_file {0}: the token must be at least 32 characters")]
    WeakToken(String),
}

/// Reads the admin token file: one line, surrounding whitespace ignored. Only its SHA-256 is
/// kept, for constant-time comparison.
pub fn read_admin_token(path: &Path) -> Result<[u8; 32], AdminTokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| AdminTokenError::TokenFile {
        path: path.display().to_string(),
        source,
    })?;
    let token = text.trim();
    if token.len() < 32 {
        return Err(AdminTokenError::WeakToken(path.display().to_string()));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

impl AdminConfig {
    pub(super) fn validate(&self, source: &SourceText, issues: &mut Vec<SourceIssue>) {
        check_listen(&self.listen, "admin.listen", source, issues);
        check_max_connections(
            self.max_connections,
            "admin.max_connections",
            source,
            issues,
        );
        if let Err(e) = read_admin_token(&source.resolve(&self.token_file)) {
            issues.push(source.issue("admin.token_file", e.to_string()));
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_grace_period() -> Duration {
    Duration::from_secs(5)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(crate) fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(75)
}
pub(crate) fn default_body_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_send_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_header_count() -> usize {
    100
}
fn default_max_uri_bytes() -> usize {
    8 * 1024
}
fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_client() -> usize {
    1_000
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_io_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_keepalive_pool_size() -> usize {
    256
}
fn default_connect_retries() -> usize {
    2
}
fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_health_kind() -> String {
    "tcp".to_string()
}
fn default_health_threshold() -> usize {
    1
}

/// Bounds of the client-facing limits and timeouts: none may switch a protection off, and
/// none may be so tight that ordinary requests fail.
pub(super) fn validate_server_limits(
    source: &SourceText,
    server: &ServerConfig,
    issues: &mut Vec<SourceIssue>,
) {
    const MS: Duration = Duration::from_millis(100);
    const MINUTES_5: Duration = Duration::from_secs(300);
    const HOUR: Duration = Duration::from_secs(3600);
    for (field, value, min, max, range) in [
        (
            "server.header_read_timeout",
            server.header_read_timeout,
            MS,
            MINUTES_5,
            "100ms to 5m",
        ),
        (
            "server.keepalive_timeout",
            server.keepalive_timeout,
            Duration::from_secs(1),
            HOUR,
            "1s to 1h",
        ),
        (
            "server.body_read_timeout",
            server.body_read_timeout,
            MS,
            HOUR,
            "100ms to 1h",
        ),
        (
            "server.send_timeout",
            server.send_timeout,
            MS,
            HOUR,
            "100ms to 1h",
        ),
    ] {
        if !(min..=max).contains(&value) {
            issues.push(source.issue(
                field,
                format!(
                    "{} is out of bounds ({range})",
                    humantime::format_duration(value)
                ),
            ));
        }
    }
    let mut bounded = |field: &str, value: u64, min: u64, max: u64, range: &str| {
        if !(min..=max).contains(&value) {
            issues.push(source.issue(field, format!("{value} is out of bounds ({range})")));
        }
    };
    bounded(
        "server.max_header_bytes",
        server.max_header_bytes as u64,
        1024,
        MAX_HEAD_BYTES as u64,
        "1024 to 1048576",
    );
    bounded(
        "server.max_header_count",
        server.max_header_count as u64,
        1,
        MAX_HEAD_FIELDS as u64,
        "1 to 256",
    );
    bounded(
        "server.max_uri_bytes",
        server.max_uri_bytes as u64,
        256,
        server.max_header_bytes as u64,
        "256 to `max_header_bytes`",
    );
    bounded(
        "server.max_body_bytes",
        server.max_body_bytes,
        0,
        MAX_BODY_BYTES,
        "0 to 1099511627776 (1 TiB)",
    );
    bounded(
        "server.max_connections",
        server.max_connections as u64,
        1,
        1_000_000,
        "1 to 1000000",
    );
    bounded(
        "server.max_connections_per_client",
        server.max_connections_per_client as u64,
        1,
        server.max_connections as u64,
        "1 to `max_connections`",
    );
}

/// The largest request head Pingora parses (its `MAX_HEADER_SIZE`, 1 MiB).
pub const MAX_HEAD_BYTES: usize = 1024 * 1024;
/// The most header fields Pingora parses (its `MAX_HEADERS`); more is a parse error.
pub const MAX_HEAD_FIELDS: usize = 256;
pub use crate::authz::routes::MAX_BODY_BYTES;

pub(super) fn parse_listen_addrs(
    source: &SourceText,
    field: &str,
    addrs: &[String],
    issues: &mut Vec<SourceIssue>,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        match addr.parse::<SocketAddr>() {
            Ok(a) => out.push(a),
            Err(_) => issues.push(source.issue(
                format!("{field}[{i}]"),
                format!("`{addr}` is not an `ip:port` address"),
            )),
        }
    }
    out
}

pub(super) fn validate_tls_files(
    source: &SourceText,
    tls: &TlsListenerConfig,
    issues: &mut Vec<SourceIssue>,
) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let cert_path = source.resolve(&tls.cert);
    match CertificateDer::pem_file_iter(&cert_path) {
        Ok(iter) => match iter.collect::<Result<Vec<_>, _>>() {
            Ok(certs) if certs.is_empty() => issues.push(source.issue(
                "server.tls.cert",
                format!("{}: no PEM certificate in file", cert_path.display()),
            )),
            Ok(_) => {}
            Err(e) => issues
                .push(source.issue("server.tls.cert", format!("{}: {e}", cert_path.display()))),
        },
        Err(e) => {
            issues.push(source.issue("server.tls.cert", format!("{}: {e}", cert_path.display())))
        }
    }
    let key_path = source.resolve(&tls.key);
    if let Err(e) = PrivateKeyDer::from_pem_file(&key_path) {
        issues.push(source.issue("server.tls.key", format!("{}: {e}", key_path.display())));
    }
}

pub(super) fn validate_upstream(
    source: &SourceText,
    upstream: &UpstreamConfig,
    issues: &mut Vec<SourceIssue>,
) -> Vec<Vec<SocketAddr>> {
    for (field, value) in [
        ("upstream.connect_timeout", upstream.connect_timeout),
        ("upstream.read_timeout", upstream.read_timeout),
        ("upstream.write_timeout", upstream.write_timeout),
        (
            "upstream.health_check.interval",
            upstream.health_check.interval,
        ),
    ] {
        if value.is_zero() {
            issues.push(source.issue(field, "must be greater than zero"));
        }
    }
    let probe = &upstream.health_check.probe;
    if probe != "tcp" && !probe.starts_with('/') {
        issues.push(source.issue(
            "upstream.health_check.probe",
            format!("`{probe}`: expected `tcp` or an HTTP path starting with `/`"),
        ));
    }
    if upstream.pool.is_empty() {
        issues.push(source.issue("upstream", "needs at least one `[[upstream.pool]]`"));
    }
    let mut seen_names = std::collections::HashSet::new();
    let mut all = Vec::with_capacity(upstream.pool.len());
    for (i, pool) in upstream.pool.iter().enumerate() {
        if pool.name.trim().is_empty() {
            issues.push(source.issue(format!("upstream.pool[{i}].name"), "must not be empty"));
        } else if !seen_names.insert(pool.name.as_str()) {
            issues.push(source.issue(
                format!("upstream.pool[{i}].name"),
                format!("duplicate pool name `{}`", pool.name),
            ));
        }
        if pool.peers.is_empty() {
            issues.push(source.issue(
                format!("upstream.pool[{i}].peers"),
                "needs at least one peer",
            ));
        }
        let mut peers = Vec::with_capacity(pool.peers.len());
        for (j, peer) in pool.peers.iter().enumerate() {
            match peer.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(addr)) => peers.push(addr),
                Ok(None) => issues.push(source.issue(
                    format!("upstream.pool[{i}].peers[{j}]"),
                    format!("`{peer}` resolves to no address"),
                )),
                Err(e) => issues.push(source.issue(
                    format!("upstream.pool[{i}].peers[{j}]"),
                    format!("`{peer}` is not a usable `host:port`: {e}"),
                )),
            }
        }
        all.push(peers);
    }
    all
}
