//! `gateway.toml`: serde types, loading, and semantic validation with file/line/field errors.
//!
//! Every path in the file is relative to the file itself, so a config directory can be moved
//! or mounted anywhere (a ConfigMap, a git checkout) without edits.

pub mod source;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use source::{Location, SourceIssue, SourceIssues, SourceText};

use crate::tenancy::model::{validate_issuer, IssuerConfig, JwtAlgorithm};

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
pub struct ContextTokenConfig {
    /// PEM private key (EC P-256 for ES256, Ed25519 for EdDSA, RSA for RS256). Relative to this file.
    pub key: PathBuf,
    pub algorithm: JwtAlgorithm,
    /// `kid` header, so upstreams can pick the key during rotation.
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default = "default_context_issuer")]
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_context_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Must start with `x-gateway-` so clients can never send it themselves.
    #[serde(default = "default_context_header")]
    pub header: String,
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

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL (`postgres://user:pass@host/db?sslmode=require`).
    #[serde(default)]
    pub url: Option<String>,
    /// Name of an environment variable holding the URL (keeps passwords out of the file).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Table of tenants: `id text primary key, doc jsonb` (created when `migrate` is on).
    #[serde(default = "default_tenant_table")]
    pub table: String,
    /// Create the tables and the NOTIFY trigger if missing.
    #[serde(default = "default_true")]
    pub migrate: bool,
    /// PEM CA bundle: verify the server certificate and host name (libpq `verify-full`).
    /// Without it, TLS follows libpq's `sslmode` (encrypted, not authenticated). Relative to
    /// this file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl PostgresConfig {
    /// The connection URL, from `url` or the environment variable `url_env`.
    pub fn connection_url(&self) -> Result<String, String> {
        match (&self.url, &self.url_env) {
            (Some(url), None) => Ok(url.clone()),
            (None, Some(var)) => {
                std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))
            }
            _ => Err("set exactly one of `url` and `url_env`".to_string()),
        }
    }
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

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SanitizeConfig {
    /// Extra inbound headers to strip, besides the ones the gateway owns (`x-tenant-id`,
    /// `x-principal-*`, `x-gateway-*`). A trailing `*` matches a prefix.
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// Merge `//` into `/` (otherwise such paths are rejected).
    #[serde(default = "default_true")]
    pub merge_slashes: bool,
    /// Method overrides (the `X-HTTP-Method-Override`, `X-Method-Override` and `X-HTTP-Method`
    /// headers, the `_method` query parameter), which many frameworks honour on a POST.
    /// `strip` (default): removed, so the upstream serves the method the gateway authorised.
    /// `honor`: the override of a POST becomes the request's method: the route, the Cedar
    /// action and the upstream's request line all use it, and the override itself is removed.
    /// Conflicting or unusual overrides get 400; so does a POST with a form body that names no
    /// other method outside the body (the gateway does not read bodies, and the upstream would
    /// honour a `_method` field in them). `X-Original-URL` and `X-Rewrite-URL` are always
    /// stripped.
    #[serde(default)]
    pub method_override: MethodOverride,
}

impl Default for SanitizeConfig {
    fn default() -> Self {
        SanitizeConfig {
            strip_headers: Vec::new(),
            merge_slashes: true,
            method_override: MethodOverride::default(),
        }
    }
}

/// `[sanitize] method_override`: what the gateway does with method overrides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MethodOverride {
    /// Remove them: the upstream sees the request's own method.
    #[default]
    Strip,
    /// A POST's override is the method that is authorised and forwarded.
    Honor,
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
fn default_context_issuer() -> String {
    "policy-gateway".to_string()
}
fn default_context_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_context_header() -> String {
    "x-gateway-context".to_string()
}
fn default_provisioning_store() -> String {
    "file".to_string()
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
fn default_tenant_table() -> String {
    "gateway_tenants".to_string()
}
fn default_grace_period() -> Duration {
    Duration::from_secs(5)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(5)
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
            &crate::tenancy::model::KnownTiers::of_config(&config),
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
