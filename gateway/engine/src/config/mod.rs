//! `gateway.toml`: serde types, loading, and semantic validation with file/line/field errors.
//!
//! Every path in the file is relative to the file itself, so a config directory can be moved
//! or mounted anywhere (a ConfigMap, a git checkout) without edits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub(crate) mod listeners;

use listeners::{
    parse_listen_addrs, validate_server_limits, validate_tls_files, validate_upstream,
};
pub use listeners::{
    read_admin_token, AdminConfig, AdminTokenError, ExtAuthzConfig, ForwardAuthConfig,
    HealthCheckConfig, PoolConfig, ServerConfig, TlsListenerConfig, UpstreamConfig,
    UpstreamProtocol, MAX_BODY_BYTES, MAX_HEAD_BYTES, MAX_HEAD_FIELDS,
};

pub use crate::authz::AuthorizationConfig;
pub use crate::db::PostgresConfig;
pub use crate::diagnostics::{Location, SourceIssue, SourceIssues, SourceText};
pub use crate::geoip::GeoIpConfig;
pub use crate::pipeline::forward::ContextTokenConfig;
pub use crate::pipeline::identify::{IdentityConfig, ProvisioningConfig};
pub use crate::pipeline::sanitize::{MethodOverride, SanitizeConfig};
pub use crate::pipeline::tenant::{RegistryConfig, TenancyConfig, TenantSourceKind};
pub use crate::residency::{PinConfig, ResidencyConfig};
use crate::residency::{PoolRegion, ResidencyPolicy};

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
    pub admin: Option<AdminConfig>,
    /// Signed webhooks (quota thresholds, suspensions, failed reloads) with a durable queue.
    #[serde(default)]
    pub webhooks: Option<crate::webhooks::WebhooksConfig>,
    /// Envoy's external authorization (gRPC) front door. Absent: none.
    #[serde(default)]
    pub ext_authz: Option<ExtAuthzConfig>,
    /// The forward-auth (nginx `auth_request`, Traefik, Caddy) front door. Absent: none.
    #[serde(default)]
    pub forward_auth: Option<ForwardAuthConfig>,
    /// Browser login through each tenant's identity provider (`sso` in its registry
    /// document) and the session cookies it sets. Absent: bearer tokens and API keys only.
    #[serde(default)]
    pub sessions: Option<crate::identity::sessions::SessionsConfig>,
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

impl GatewayConfig {
    /// What tenant definitions may say under this configuration (tiers, quotas).
    pub fn tenant_rules(&self) -> crate::tenancy::model::TenantRules {
        crate::tenancy::model::TenantRules::of(self.tiers.keys())
            .with_quotas(
                self.limits
                    .as_ref()
                    .is_some_and(|l| l.backend == crate::limits::Backend::Redis),
            )
            .with_host_suffix(
                self.tenancy
                    .as_ref()
                    .and_then(|t| t.host_pattern.as_deref())
                    .and_then(crate::pipeline::tenant::host_suffix),
            )
    }
}

impl LoadedConfig {
    /// A path from the config file, made absolute against the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.source.resolve(path)
    }

    /// Stage 5's policy from `[residency]` and the upstream pools; `None` without `[residency]`.
    pub fn residency_policy(&self) -> Result<Option<ResidencyPolicy>, SourceIssues> {
        let Some(section) = &self.config.residency else {
            return Ok(None);
        };
        let pools: Vec<PoolRegion<'_>> = self
            .config
            .upstream
            .pool
            .iter()
            .map(|pool| PoolRegion {
                name: &pool.name,
                region: pool.region.as_deref(),
            })
            .collect();
        ResidencyPolicy::build(section, &pools, &self.source).map(Some)
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
    let base_dir = source.base_dir();
    let mut issues = Vec::new();
    let listen = parse_listen_addrs(&source, "server.listen", &config.server.listen, &mut issues);
    let tls_listen = match &config.server.tls {
        Some(tls) => {
            let addrs = parse_listen_addrs(&source, "server.tls.listen", &tls.listen, &mut issues);
            if tls.listen.is_empty() {
                issues.push(source.issue("server.tls.listen", "needs at least one address"));
            }
            validate_tls_files(&source, tls, &mut issues);
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
    config.sanitize.validate(&source, &mut issues);
    if let Some(identity) = &config.identity {
        crate::pipeline::identify::validate(
            &source,
            identity,
            config.tenancy.is_some(),
            &mut issues,
        );
    }
    if let Some(authz) = &config.authorization {
        authz.validate(&source, &mut issues);
    }
    if let Some(metering) = &config.metering {
        let tiers = config.tiers.keys().map(String::as_str).collect();
        metering.validate(&source, &tiers, &mut issues);
    }
    if let Some(audit) = &config.audit {
        audit.validate(&source, &mut issues);
    }
    if let Some(geoip) = &config.geoip {
        geoip.validate(&source, &mut issues);
    }
    if let Some(webhooks) = &config.webhooks {
        for (i, s) in webhooks.subscriber.iter().enumerate() {
            if let Err(e) = crate::webhooks::validate_subscription(s) {
                issues.push(source.issue(format!("webhooks.subscriber[{i}]"), e));
            }
        }
    }
    if let Some(admin) = &config.admin {
        admin.validate(&source, &mut issues);
        if let Some(sso) = &admin.sso {
            let platform_issuers: Vec<(&str, &[String])> = config
                .identity
                .iter()
                .flat_map(|i| &i.issuer)
                .filter(|i| i.platform)
                .map(|i| (i.issuer.as_str(), i.audiences.as_slice()))
                .collect();
            sso.validate(
                &source,
                &platform_issuers,
                config.sessions.is_some(),
                &mut issues,
            );
        }
    }
    if let Some(door) = &config.ext_authz {
        door.validate(&source, &mut issues);
    }
    if let Some(door) = &config.forward_auth {
        door.validate(&source, &mut issues);
    }
    if let Some(sessions) = &config.sessions {
        sessions.validate(
            &source,
            config.identity.is_some(),
            config.tenancy.is_some(),
            &mut issues,
        );
    }
    for (field, message) in crate::limits::validate(config.limits.as_ref(), &config.tiers) {
        issues.push(source.issue(field, message));
    }
    if let Some(tenancy) = &config.tenancy {
        crate::pipeline::tenant::validate(
            &source,
            tenancy,
            config.identity.as_ref(),
            &config.tenant_rules(),
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
        pg.ca_file = pg.ca_file.as_ref().map(|p| source.resolve(p));
    }
    if let Some(m) = config.metering.as_mut() {
        m.dir = source.resolve(&m.dir);
    }
    if let Some(a) = config.audit.as_mut() {
        a.dir = source.resolve(&a.dir);
    }
    if let Some(w) = config.webhooks.as_mut() {
        w.dir = source.resolve(&w.dir);
    }
    if let Some(a) = config.admin.as_mut() {
        a.token_file = source.resolve(&a.token_file);
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

/// JSON Schema of `gateway.toml`, as committed in `deploy/gateway.schema.json`.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(GatewayConfig);
    serde_json::to_value(schema).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    fn the_decision_doors_have_their_own_connection_limits() {
        let doors = "\n[ext_authz]\nlisten = \"127.0.0.1:9191\"\n\
                     [forward_auth]\nlisten = \"127.0.0.1:9192\"\n";
        let config = load_text(&format!("{MINIMAL}{doors}")).unwrap().config;
        assert_eq!(config.ext_authz.map(|d| d.max_connections), Some(1024));
        assert_eq!(config.forward_auth.map(|d| d.max_connections), Some(1024));
        let text = format!(
            "{MINIMAL}{}",
            doors
                .replace("9191\"\n", "9191\"\nmax_connections = 0\n")
                .replace("9192\"\n", "9192\"\nmax_connections = 100001\n")
        );
        let err = load_text(&text).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["ext_authz.max_connections", "forward_auth.max_connections"],
            "{err}"
        );
        assert!(err.0[1].message.contains("1 to 100000"), "{err}");
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
        let committed = include_str!("../../../../deploy/gateway.schema.json");
        let committed: serde_json::Value = serde_json::from_str(committed).unwrap();
        assert!(
            committed == json_schema(),
            "deploy/gateway.schema.json is stale: run `cargo run -p gateway -- schema > deploy/gateway.schema.json`"
        );
    }
}
