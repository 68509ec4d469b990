//! `gateway.toml`: serde types, loading, and semantic validation with file/line/field errors.
//!
//! Every path in the file is relative to the file itself, so a config directory can be moved
//! or mounted anywhere (a ConfigMap, a git checkout) without edits.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::db::PostgresConfig;
pub use crate::diagnostics::{Location, SourceIssue, SourceIssues, SourceText};
pub use crate::pipeline::forward::ContextTokenConfig;
pub use crate::pipeline::sanitize::{MethodOverride, SanitizeConfig};
pub use crate::pipeline::tenant::{RegistryConfig, TenancyConfig, TenantSourceKind};

use crate::tenancy::model::{validate_issuer, IssuerConfig};

/// The whole gateway configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listeners, worker threads and shutdown behaviour.
    pub server: ServerConfig,
    /// Where admitted requests are forwarded.
    pub upstream: UpstreamConfig,
    /// Stage 1: path normalisation and inbound header stripping.
    #[serde(default)]
    pub sanitize: SanitizeConfig,
    /// Stage 2: who is calling. Absent: no identification (every caller is anonymous).
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
    /// Stage 3: for which tenant. Absent: no tenancy.
    #[serde(default)]
    pub tenancy: Option<TenancyConfig>,
    /// Stage 4: Cedar policies. Absent: no authorization (every identified request passes).
    #[serde(default)]
    pub authorization: Option<AuthorizationConfig>,
    /// Stage 5: data residency. Absent: every pool may serve every request.
    #[serde(default)]
    pub residency: Option<ResidencyConfig>,
    /// Client geography (country for policies and routing preference).
    #[serde(default)]
    pub geoip: Option<GeoIpConfig>,
    /// Stage 7: usage events for billing (durable outbox, exporters).
    #[serde(default)]
    pub metering: Option<crate::metering::MeteringConfig>,
    /// The tamper-evident audit log of decisions and routing.
    #[serde(default)]
    pub audit: Option<crate::audit::AuditConfig>,
    /// Pricing tiers: features, rate limits and quotas by tier name (`[tiers.free]` ...).
    #[serde(default)]
    pub tiers: std::collections::BTreeMap<String, crate::limits::TierConfig>,
    /// Stage 6: where rate limits are decided (local or Redis), fallback, feature gates, rules.
    #[serde(default)]
    pub limits: Option<crate::limits::LimitsConfig>,
    /// The admin API and Prometheus metrics, on their own listener. Absent: none.
    #[serde(default)]
    pub admin: Option<crate::admin::AdminConfig>,
    /// Signed webhooks (quota thresholds, suspensions, failed reloads) with a durable queue.
    #[serde(default)]
    pub webhooks: Option<crate::webhooks::WebhooksConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResidencyConfig {
    /// Directory with `regions.toml` and `regimes.toml`. Relative to this file.
    pub maps: PathBuf,
    /// Regime of tenants without one (and of requests without a tenant).
    #[serde(default = "default_regime")]
    pub default_regime: String,
    /// Routes served only in one region.
    #[serde(default)]
    pub pin: Vec<PinConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PinConfig {
    /// Path template (`{name}` one segment, `{*name}` the rest).
    pub path: String,
    pub region: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// A MaxMind-format country database (GeoIP2/GeoLite2 or DB-IP). Relative to this file.
    pub database: PathBuf,
    /// Dotted path of the ISO country code in a record (default: `country.iso_code` for
    /// GeoIP2/GeoLite2 databases, `country_code` otherwise).
    #[serde(default)]
    pub field: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs). Others' is ignored. Behind them,
    /// the hops of all `X-Forwarded-For` lines are walked from the right and the first hop that
    /// is not a trusted proxy is the client; what is left of it is ignored. A hop that is not an
    /// address (`unknown`, garbage) makes the client unknown (no address, no country), never the
    /// proxy. `Forwarded` (RFC 7239) is not read.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How often to check the file for a replacement.
    #[serde(default = "default_geoip_reload", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reload_interval: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConfig {
    /// The policy package: `schema.cedarschema`, `*.cedar`, `roles.json`, `routes.toml`,
    /// `shadow/*.cedar`, `tenants/<id>/*.cedar`. Relative to this file.
    pub policies: PathBuf,
    /// Decisions remembered (keyed on everything a decision depends on; emptied by reloads).
    #[serde(default = "default_decision_cache")]
    pub decision_cache_capacity: u64,
    /// Reload when a file of the package changes (SIGHUP and the admin API always reload).
    #[serde(default = "default_true")]
    pub watch: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Issuers trusted for every tenant (tenants may add their own in the registry).
    #[serde(default)]
    pub issuer: Vec<IssuerConfig>,
    /// Header carrying API keys.
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    /// Let requests without credentials through as the anonymous caller; otherwise they get
    /// 401. Policies then decide: Cedar sees the caller as `Anonymous::"anonymous"` (an entity
    /// type of its own, never a `User`, so no path or attribute can make it an owner), with the
    /// request's tenant as its `tenant`; it has no roles.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// An unknown `kid` refetches the issuer's keys at most this often.
    #[serde(default = "default_jwks_min_refresh", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_min_refresh_interval: Duration,
    /// Keys older than this are refetched in the background.
    #[serde(default = "default_jwks_max_age", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_max_age: Duration,
    /// The longest a request waits for an issuer's keys (OIDC discovery and JWKS together,
    /// including waiting for another request's fetch), 100ms to 60s. When it passes, the
    /// request is refused with 401 and keys fetched before keep verifying tokens.
    #[serde(default = "default_jwks_fetch_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_fetch_timeout: Duration,
    /// Verified tokens remembered (until their expiry) to skip signature checks.
    #[serde(default = "default_token_cache")]
    pub token_cache_capacity: u64,
    /// Send the upstream a short-lived JWT signed by the gateway with the verified context.
    #[serde(default)]
    pub context_token: Option<ContextTokenConfig>,
    /// Record first-seen principals (just-in-time provisioning). Relative to this file.
    #[serde(default)]
    pub provisioning: Option<ProvisioningConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// Where first-seen principals are recorded: `file` (JSON lines in the state directory) or
    /// `postgres` (table `gateway_principals`, needs `tenancy.registry.postgres`).
    #[serde(default = "default_provisioning_store")]
    pub store: String,
}

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

fn default_true() -> bool {
    true
}
fn default_regime() -> String {
    "none".to_string()
}
fn default_geoip_reload() -> Duration {
    Duration::from_secs(30)
}
fn default_decision_cache() -> u64 {
    100_000
}
fn default_api_key_header() -> String {
    "x-api-key".to_string()
}
fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_max_age() -> Duration {
    Duration::from_secs(600)
}
fn default_jwks_fetch_timeout() -> Duration {
    crate::identity::jwks::DEFAULT_FETCH_TIMEOUT
}
fn default_token_cache() -> u64 {
    100_000
}
fn default_provisioning_store() -> String {
    "file".to_string()
}
fn default_grace_period() -> Duration {
    Duration::from_secs(5)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(75)
}
fn default_body_read_timeout() -> Duration {
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

/// A configuration that parsed and validated, with the directory its relative paths start from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: GatewayConfig,
    pub source: SourceText,
    pub base_dir: PathBuf,
    /// Listener addresses, validated.
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    /// Peers of each pool (same order as `upstream.pool`), resolved.
    pub pool_peers: Vec<Vec<SocketAddr>>,
}

impl LoadedConfig {
    /// A path from the config file, made absolute against the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        resolve_relative(&self.base_dir, path)
    }
}

fn resolve_relative(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Reads, parses and validates `gateway.toml`. All problems found are returned together.
pub fn load(path: &Path) -> Result<LoadedConfig, SourceIssues> {
    let source = SourceText::read(path)?;
    load_source(source)
}

/// As [`load`], for text already in memory (the path is used for messages and relative paths).
pub fn load_source(source: SourceText) -> Result<LoadedConfig, SourceIssues> {
    let config: GatewayConfig = source.deserialize()?;
    let base_dir = source
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    let mut issues = Vec::new();
    let listen = parse_listen_addrs(&source, "server.listen", &config.server.listen, &mut issues);
    let tls_listen = match &config.server.tls {
        Some(tls) => {
            let addrs = parse_listen_addrs(&source, "server.tls.listen", &tls.listen, &mut issues);
            if tls.listen.is_empty() {
                issues.push(source.issue("server.tls.listen", "needs at least one address"));
            }
            validate_tls_files(&source, &base_dir, tls, &mut issues);
            addrs
        }
        None => Vec::new(),
    };
    if config.server.listen.is_empty() && config.server.tls.is_none() {
        issues.push(source.issue(
            "server",
            "no listener: set `listen` and/or a `[server.tls]` section",
        ));
    }
    if config.server.threads == Some(0) {
        issues.push(source.issue("server.threads", "must be at least 1"));
    }
    validate_server_limits(&source, &config.server, &mut issues);
    let pool_peers = validate_upstream(&source, &config.upstream, &mut issues);
    validate_sanitize(&source, &config.sanitize, &mut issues);
    if let Some(identity) = &config.identity {
        validate_identity(
            &source,
            &base_dir,
            identity,
            config.tenancy.is_some(),
            &mut issues,
        );
    }
    if let Some(authz) = &config.authorization {
        let dir = resolve_relative(&base_dir, &authz.policies);
        if !dir.join("schema.cedarschema").is_file() {
            issues.push(source.issue(
                "authorization.policies",
                format!("{}: no schema.cedarschema in this directory", dir.display()),
            ));
        }
    }
    if let Some(metering) = &config.metering {
        let mut names = std::collections::HashSet::new();
        for (i, exporter) in metering.exporter.iter().enumerate() {
            let name = exporter.name();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                issues.push(source.issue(
                    format!("metering.exporter[{i}].name"),
                    "letters, digits, `-` and `_` only (it names the checkpoint file)",
                ));
            }
            if !names.insert(name.to_string()) {
                issues.push(source.issue(
                    format!("metering.exporter[{i}].name"),
                    format!("duplicate exporter `{name}`"),
                ));
            }
        }
        for (i, meter) in metering.meter.iter().enumerate() {
            if meter.action.is_none() && meter.route.is_none() {
                issues.push(source.issue(
                    format!("metering.meter[{i}]"),
                    "needs `action` and/or `route`",
                ));
            }
        }
        if metering.segment_bytes < 4096 {
            issues.push(source.issue("metering.segment_bytes", "at least 4096"));
        }
        check_journal_bounds(
            &source,
            "metering",
            metering.flush_interval,
            metering.buffer_bytes,
            &mut issues,
        );
    }
    if let Some(audit) = &config.audit {
        if audit.segment_bytes < 4096 {
            issues.push(source.issue("audit.segment_bytes", "at least 4096"));
        }
        check_journal_bounds(
            &source,
            "audit",
            audit.commit_delay,
            audit.buffer_bytes,
            &mut issues,
        );
    }
    if let Some(geoip) = &config.geoip {
        let path = resolve_relative(&base_dir, &geoip.database);
        if let Err(e) = maxminddb::Reader::open_readfile(&path) {
            issues.push(source.issue("geoip.database", format!("{}: {e}", path.display())));
        }
    }
    if let Some(webhooks) = &config.webhooks {
        for (i, s) in webhooks.subscriber.iter().enumerate() {
            if let Err(e) = crate::webhooks::validate_subscription(s) {
                issues.push(source.issue(format!("webhooks.subscriber[{i}]"), e));
            }
        }
    }
    if let Some(admin) = &config.admin {
        if admin.listen.parse::<SocketAddr>().is_err() {
            issues.push(source.issue(
                "admin.listen",
                format!("`{}` is not an `ip:port` address", admin.listen),
            ));
        }
        let token = resolve_relative(&base_dir, &admin.token_file);
        if let Err(e) = crate::admin::read_token(&token) {
            issues.push(source.issue("admin.token_file", e.to_string()));
        }
    }
    for (field, message) in crate::limits::validate(config.limits.as_ref(), &config.tiers) {
        issues.push(source.issue(field, message));
    }
    if let Some(tenancy) = &config.tenancy {
        validate_tenancy(
            &source,
            &base_dir,
            tenancy,
            config.identity.as_ref(),
            &crate::tenancy::model::KnownTiers::of(config.tiers.keys()),
            &mut issues,
        );
    }
    if !issues.is_empty() {
        return Err(SourceIssues(issues));
    }
    let mut config = config;
    // Background tasks use these paths long after loading: make them absolute now.
    if let Some(pg) = config
        .tenancy
        .as_mut()
        .and_then(|t| t.registry.postgres.as_mut())
    {
        pg.ca_file = pg.ca_file.as_ref().map(|p| resolve_relative(&base_dir, p));
    }
    if let Some(m) = config.metering.as_mut() {
        m.dir = resolve_relative(&base_dir, &m.dir);
    }
    if let Some(a) = config.audit.as_mut() {
        a.dir = resolve_relative(&base_dir, &a.dir);
    }
    if let Some(w) = config.webhooks.as_mut() {
        w.dir = resolve_relative(&base_dir, &w.dir);
    }
    if let Some(a) = config.admin.as_mut() {
        a.token_file = resolve_relative(&base_dir, &a.token_file);
    }
    Ok(LoadedConfig {
        config,
        source,
        base_dir,
        listen,
        tls_listen,
        pool_peers,
    })
}

/// Bounds of the client-facing limits and timeouts: none may switch a protection off, and
/// none may be so tight that ordinary requests fail.
fn validate_server_limits(
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

/// Records must reach the disk soon, and a full disk must leave room to queue some.
fn check_journal_bounds(
    source: &SourceText,
    section: &str,
    flush_interval: Duration,
    buffer_bytes: usize,
    issues: &mut Vec<SourceIssue>,
) {
    let field = if section == "audit" {
        "commit_delay"
    } else {
        "flush_interval"
    };
    if flush_interval > Duration::from_secs(10) {
        issues.push(source.issue(
            format!("{section}.{field}"),
            "at most 10s (records wait this long in memory)",
        ));
    }
    if !(4096..=1 << 30).contains(&buffer_bytes) {
        issues.push(source.issue(
            format!("{section}.buffer_bytes"),
            "between 4096 and 1073741824 bytes",
        ));
    }
}

fn parse_listen_addrs(
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

fn validate_tls_files(
    source: &SourceText,
    base_dir: &Path,
    tls: &TlsListenerConfig,
    issues: &mut Vec<SourceIssue>,
) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let cert_path = resolve_relative(base_dir, &tls.cert);
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
    let key_path = resolve_relative(base_dir, &tls.key);
    if let Err(e) = PrivateKeyDer::from_pem_file(&key_path) {
        issues.push(source.issue("server.tls.key", format!("{}: {e}", key_path.display())));
    }
}

fn validate_upstream(
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

fn validate_sanitize(
    source: &SourceText,
    sanitize: &SanitizeConfig,
    issues: &mut Vec<SourceIssue>,
) {
    for (i, name) in sanitize.strip_headers.iter().enumerate() {
        let bare = name.strip_suffix('*').unwrap_or(name);
        if bare.is_empty() || http::HeaderName::from_bytes(bare.as_bytes()).is_err() {
            issues.push(source.issue(
                format!("sanitize.strip_headers[{i}]"),
                format!("`{name}` is not a header name (a trailing `*` matches a prefix)"),
            ));
        }
    }
}

/// `tenancy`: tenants are configured, so every token must name its tenant or come from a
/// platform-wide issuer.
fn validate_identity(
    source: &SourceText,
    base_dir: &Path,
    identity: &IdentityConfig,
    tenancy: bool,
    issues: &mut Vec<SourceIssue>,
) {
    let mut seen = std::collections::HashSet::new();
    for (i, issuer) in identity.issuer.iter().enumerate() {
        for (field, message) in validate_issuer(issuer, true) {
            issues.push(source.issue(format!("identity.issuer[{i}].{field}"), message));
        }
        if tenancy && issuer.claims.tenant.is_none() && !issuer.platform {
            issues.push(source.issue(
                format!("identity.issuer[{i}].claims.tenant"),
                "with [tenancy], a token that names no tenant is refused: name the claim holding the tenant, or declare the issuer platform-wide (`platform = true`)",
            ));
        }
        if !seen.insert(issuer.issuer.as_str()) {
            issues.push(source.issue(
                format!("identity.issuer[{i}].issuer"),
                format!("issuer `{}` is configured twice", issuer.issuer),
            ));
        }
        if let Some(secret) = &issuer.secret_file {
            let path = resolve_relative(base_dir, Path::new(secret));
            match std::fs::read(&path) {
                Ok(bytes) if bytes.len() < 32 => issues.push(source.issue(
                    format!("identity.issuer[{i}].secret_file"),
                    format!("{}: an HMAC secret needs at least 32 bytes", path.display()),
                )),
                Ok(_) => {}
                Err(e) => issues.push(source.issue(
                    format!("identity.issuer[{i}].secret_file"),
                    format!("{}: {e}", path.display()),
                )),
            }
        }
    }
    if http::HeaderName::from_bytes(identity.api_key_header.as_bytes()).is_err() {
        issues.push(source.issue("identity.api_key_header", "not a header name"));
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(60))
        .contains(&identity.jwks_fetch_timeout)
    {
        issues.push(source.issue(
            "identity.jwks_fetch_timeout",
            format!(
                "`{}`: between 100ms and 60s",
                humantime::format_duration(identity.jwks_fetch_timeout)
            ),
        ));
    }
    if let Some(ctx) = &identity.context_token {
        if !ctx.header.to_ascii_lowercase().starts_with("x-gateway-") {
            issues.push(source.issue(
                "identity.context_token.header",
                "must start with `x-gateway-` (a header clients can never set)",
            ));
        }
        if ctx.algorithm.is_hmac() {
            issues.push(source.issue(
                "identity.context_token.algorithm",
                "use an asymmetric algorithm so upstreams verify without holding a signing secret",
            ));
        }
        let path = resolve_relative(base_dir, &ctx.key);
        if let Err(e) = crate::pipeline::forward::ContextSigner::load_key(&path, ctx.algorithm) {
            issues.push(source.issue("identity.context_token.key", e));
        }
    }
    if let Some(p) = &identity.provisioning {
        if p.store != "file" && p.store != "postgres" {
            issues.push(source.issue(
                "identity.provisioning.store",
                format!("`{}`: expected `file` or `postgres`", p.store),
            ));
        }
    }
}

fn validate_tenancy(
    source: &SourceText,
    base_dir: &Path,
    tenancy: &TenancyConfig,
    identity: Option<&IdentityConfig>,
    tiers: &crate::tenancy::model::KnownTiers,
    issues: &mut Vec<SourceIssue>,
) {
    if let Some(pattern) = &tenancy.host_pattern {
        if crate::pipeline::tenant::host_suffix(pattern).is_none() {
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
            let path = resolve_relative(base_dir, file);
            if let Err(e) = crate::tenancy::registry::load_file(&path, tiers) {
                issues.extend(e.or_on_field(source, "tenancy.registry.file").0);
            }
        }
        (None, Some(pg)) => {
            if let Some(ca) = &pg.ca_file {
                let path = resolve_relative(base_dir, ca);
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

/// JSON Schema of `gateway.toml`, as committed in `deploy/gateway.schema.json`.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(GatewayConfig);
    serde_json::to_value(schema).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<LoadedConfig, SourceIssues> {
        load_source(SourceText::new("/etc/gw/gateway.toml", text))
    }

    const MINIMAL: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[[upstream.pool]]
name = "app"
peers = ["127.0.0.1:9000"]
"#;

    #[test]
    fn minimal_config_loads_with_defaults() {
        let loaded = load_text(MINIMAL).unwrap();
        assert_eq!(loaded.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(
            loaded.config.upstream.connect_timeout,
            Duration::from_secs(2)
        );
        assert!(loaded.config.server.h2c);
        assert_eq!(
            loaded.pool_peers[0],
            vec!["127.0.0.1:9000".parse().unwrap()]
        );
        assert_eq!(
            loaded.resolve(Path::new("state")),
            PathBuf::from("/etc/gw/state")
        );
    }

    #[test]
    fn unknown_field_is_named_with_line() {
        let err = load_text(&MINIMAL.replace("name = \"app\"", "name = \"app\"\nweight = 3"))
            .unwrap_err();
        let issue = &err.0[0];
        assert_eq!(issue.location.line, Some(7), "{issue}");
        assert!(issue.message.contains("weight"), "{issue}");
        assert!(issue.field.starts_with("upstream.pool[0]"), "{issue}");
    }

    #[test]
    fn bad_values_are_all_reported_with_field_and_line() {
        let text = r#"
[server]
listen = ["127.0.0.1:8080", "not-an-addr"]
threads = 0

[upstream]
read_timeout = "0s"

[[upstream.pool]]
name = "app"
peers = ["127.0.0.1:9000", "nohost"]

[[upstream.pool]]
name = "app"
peers = []
"#;
        let err = load_text(text).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|i| i.field.as_str()).collect();
        assert!(fields.contains(&"server.listen[1]"), "{err}");
        assert!(fields.contains(&"server.threads"), "{err}");
        assert!(fields.contains(&"upstream.read_timeout"), "{err}");
        assert!(fields.contains(&"upstream.pool[0].peers[1]"), "{err}");
        assert!(fields.contains(&"upstream.pool[1].name"), "{err}");
        assert!(fields.contains(&"upstream.pool[1].peers"), "{err}");
        let listen = err
            .0
            .iter()
            .find(|i| i.field == "server.listen[1]")
            .unwrap();
        assert_eq!(listen.location.line, Some(3));
        assert!(err.to_string().contains("/etc/gw/gateway.toml:3:"), "{err}");
    }

    #[test]
    fn bad_duration_names_field() {
        let err = load_text(&MINIMAL.replace("[server]", "[server]\ngrace_period = \"soon\""))
            .unwrap_err();
        assert_eq!(err.0[0].field, "server.grace_period");
        assert_eq!(err.0[0].location.line, Some(3));
    }

    #[test]
    fn client_limits_have_safe_defaults_and_bounds() {
        let server = load_text(MINIMAL).unwrap().config.server;
        assert_eq!(server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(server.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(server.body_read_timeout, Duration::from_secs(10));
        assert_eq!(server.max_header_bytes, 65536);
        assert_eq!(server.max_header_count, 100);
        assert_eq!(server.max_uri_bytes, 8192);
        assert_eq!(server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(server.max_connections, 10_000);
        assert_eq!(server.max_connections_per_client, 1_000);
        let text = MINIMAL.replace(
            "[server]",
            "[server]\nheader_read_timeout = \"0s\"\nkeepalive_timeout = \"2h\"\n\
             max_header_bytes = 100\nmax_header_count = 1000\nmax_uri_bytes = 2000\n\
             max_body_bytes = 2000000000000\nmax_connections = 0\n\
             max_connections_per_client = 5",
        );
        let err = load_text(&text).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "server.header_read_timeout",
                "server.keepalive_timeout",
                "server.max_header_bytes",
                "server.max_header_count",
                "server.max_uri_bytes",
                "server.max_body_bytes",
                "server.max_connections",
                "server.max_connections_per_client",
            ],
            "{err}"
        );
        assert!(err.0[0].message.contains("100ms to 5m"), "{err}");
        assert_eq!(err.0[2].location.line, Some(5), "{err}");
        assert!(err.0[2].message.contains("1024 to 1048576"), "{err}");
    }

    #[test]
    fn method_override_defaults_to_strip_and_names_a_bad_value() {
        let loaded = load_text(MINIMAL).unwrap();
        assert_eq!(
            loaded.config.sanitize.method_override,
            MethodOverride::Strip
        );
        let honor = format!("{MINIMAL}\n[sanitize]\nmethod_override = \"honor\"\n");
        let loaded = load_text(&honor).unwrap();
        assert_eq!(
            loaded.config.sanitize.method_override,
            MethodOverride::Honor
        );
        let err = load_text(&honor.replace("\"honor\"", "\"always\"")).unwrap_err();
        assert_eq!(err.0[0].field, "sanitize.method_override", "{err}");
        assert_eq!(err.0[0].location.line, Some(10), "{err}");
        assert!(err.0[0].message.contains("`strip` or `honor`"), "{err}");
    }

    #[test]
    fn missing_tls_files_are_reported() {
        let text = format!(
            "{MINIMAL}\n[server.tls]\nlisten = [\"127.0.0.1:8443\"]\ncert = \"nope.pem\"\nkey = \"nope.key\"\n"
        );
        let err = load_text(&text).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, vec!["server.tls.cert", "server.tls.key"], "{err}");
        assert!(err.0[0].message.contains("/etc/gw/nope.pem"), "{err}");
    }

    #[test]
    fn no_listener_is_an_error() {
        let err =
            load_text("[server]\n[[upstream.pool]]\nname = \"a\"\npeers = [\"127.0.0.1:1\"]\n")
                .unwrap_err();
        assert_eq!(err.0[0].field, "server");
    }

    #[test]
    fn missing_required_section_is_reported() {
        let err = load_text("[server]\nlisten = [\"127.0.0.1:1\"]\n").unwrap_err();
        assert!(err.0[0].message.contains("upstream"), "{err}");
    }

    #[test]
    fn committed_json_schema_is_current() {
        let committed = include_str!("../../../deploy/gateway.schema.json");
        let committed: serde_json::Value = serde_json::from_str(committed).unwrap();
        assert!(
            committed == json_schema(),
            "deploy/gateway.schema.json is stale: run `cargo run -p gateway -- schema > deploy/gateway.schema.json`"
        );
    }
}
