//! Rate limits, quotas and tier features (stage 6).
//!
//! Limits are GCRA cells keyed by tenant, tenant+principal, and by configured rules (per action,
//! per tenant / principal / API key / route). Quotas count requests per UTC day and month.
//! Anonymous callers (no credential while `[identity]` authenticates) have budgets of their own,
//! per tenant and per client address, and never take from the tenant's or its quotas.
//!
//! A request is admitted by every limit and quota it falls under, or takes from none of them:
//! a refused request consumes nothing, so one caller over its own limit cannot drain a budget
//! it shares with others. Where decisions are made:
//! - `backend = "local"`: in process ([`local`]), per replica;
//! - `backend = "redis"`: cluster-wide ([`cluster`]), one Lua script call per request that checks
//!   and updates every limit and quota of the request atomically. When Redis cannot answer, the
//!   configured [`Fallback`] decides until Redis answers again.
//!
//! Rates, bursts and quotas are bounded ([`check_rate`], [`check_burst`], [`check_quota`]) where
//! they enter (configuration, tenant registry, admin API), and the arithmetic on them is
//! checked besides, so no value can make a decision panic or admit without limit.
//!
//! The outcome carries the IETF `RateLimit-Policy` / `RateLimit` header values
//! (draft-ietf-httpapi-ratelimit-headers) for the response.

// Budget arithmetic is integer nanoseconds; floats only where a configured rate is converted,
// each site allowed with its reason.
#![deny(clippy::float_arithmetic)]

pub mod cluster;
pub mod local;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::identity::{AuthMethod, Principal};
use crate::tenancy::TenantSpec;

/// `[limits]`: where limits are decided and what applies besides the tier defaults.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `local` (per replica, in process) or `redis` (shared by every replica).
    #[serde(default)]
    pub backend: Backend,
    /// Redis server of the `redis` backend (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Instead of `redis_url`: seed nodes of a Redis Cluster (`redis://host:port` each; the
    /// others are discovered). A decision's keys share the tenant's hash slot, so its script
    /// runs on the one master owning it; redirections and failovers are followed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis_cluster_nodes: Vec<String>,
    /// How long a decision may wait for Redis before the fallback decides.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub redis_timeout: Duration,
    /// After Redis failed, how long the fallback decides before Redis is tried again.
    #[serde(default = "default_retry_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub redis_retry_interval: Duration,
    /// Prefix of every Redis key the gateway writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// What decides while Redis is unavailable.
    #[serde(default)]
    pub fallback: Fallback,
    /// Number of gateway replicas sharing the limits; `local-share` gives each replica this
    /// share of every limit and of the quota left.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Most limiter cells kept in memory (least recently used ones are dropped); at most
    /// 100,000,000.
    #[serde(default = "default_capacity")]
    pub local_capacity: usize,
    /// Tenant-wide limit (requests per second) of tenants whose tier names none and is not
    /// `unlimited`: a tier without a limit is never unlimited by omission.
    #[serde(default = "default_tenant_rate")]
    pub default_requests_per_second: f64,
    /// Burst of that default limit.
    #[serde(default = "default_tenant_burst")]
    pub default_burst: u32,
    /// Action (Cedar action id, e.g. `documents:export`) → the feature a tenant's tier (or the
    /// tenant itself) must have; others get 403.
    #[serde(default)]
    pub gates: BTreeMap<String, String>,
    /// Further limits for some actions or for everything.
    #[serde(default)]
    pub rule: Vec<LimitRule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Local,
    Redis,
}

/// What decides while Redis cannot be reached (documented in the README).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Admit everything (availability over enforcement).
    FailOpen,
    /// Refuse everything with 503 (enforcement over availability).
    FailClosed,
    /// Decide locally with `1 / replicas` of every limit and of the quota left.
    #[default]
    LocalShare,
}

impl Fallback {
    pub fn label(self) -> &'static str {
        match self {
            Fallback::FailOpen => "fail-open",
            Fallback::FailClosed => "fail-closed",
            Fallback::LocalShare => "local-share",
        }
    }
}

/// One configured limit besides the tier's.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// Name in `RateLimit-Policy` and in metrics.
    pub name: String,
    /// Cedar action ids it applies to; empty: every request.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Whose budget: `tenant`, `principal` (within its tenant), `api-key` (only API-key
    /// callers), or `route` (one budget for everybody).
    #[serde(default)]
    pub per: LimitScope,
    /// Refill rate, from 0.001 to 1,000,000 per second.
    pub requests_per_second: f64,
    /// Requests at once, from 1 to 1,000,000.
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LimitScope {
    #[default]
    Tenant,
    Principal,
    ApiKey,
    Route,
}

/// `[tiers.<name>]`: what a pricing tier includes. Tenants override limits in the registry.
///
/// Rates are requests per second from 0.001 to 1,000,000; bursts from 1 to 1,000,000; quotas
/// from 1 to 10^12. A tier that sets no `requests_per_second` gets `[limits]
/// default_requests_per_second` unless it says `unlimited = true`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Features of the tier (policies see them with the tenant's own in `tenant.features`).
    #[serde(default)]
    pub features: Vec<String>,
    /// The tenant's whole budget (its authenticated callers together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Burst of the tenant's budget (default: one second of `requests_per_second`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// No tenant-wide rate limit for tenants of this tier (unless a tenant sets its own):
    /// the explicit opt-out of `[limits] default_requests_per_second`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlimited: bool,
    /// Each principal's budget within its tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_burst: Option<u32>,
    /// Budget of all anonymous callers of one tenant together (requests without a credential
    /// while `[identity]` authenticates); apart from the tenant's, which anonymous requests
    /// never use. Default 1 per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_requests_per_second: Option<f64>,
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_burst: Option<u32>,
    /// Budget of one client address (an IPv6 /64) among a tenant's anonymous callers.
    /// Default 0.5 per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_client_requests_per_second: Option<f64>,
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_client_burst: Option<u32>,
    /// Requests per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_requests: Option<u64>,
    /// Requests per UTC calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_requests: Option<u64>,
}

pub use crate::tenancy::bounds::{
    check_burst, check_quota, check_rate, is_valid_tier_name, MAX_BURST, MAX_QUOTA, MAX_RATE,
    MIN_RATE,
};

/// Anonymous budget of a tenant when its tier sets none.
const DEFAULT_ANONYMOUS_RATE: f64 = 1.0;
const DEFAULT_ANONYMOUS_BURST: u32 = 10;
/// Anonymous budget of one client address when the tier sets none.
const DEFAULT_ANONYMOUS_CLIENT_RATE: f64 = 0.5;
const DEFAULT_ANONYMOUS_CLIENT_BURST: u32 = 5;

/// Names of the built-in limits and quotas (rules may not take them).
const RESERVED_NAMES: [&str; 6] = [
    "tenant",
    "principal",
    "anonymous",
    "anonymous-client",
    "daily",
    "monthly",
];

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_retry_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_key_prefix() -> String {
    "gateway".to_string()
}
fn default_replicas() -> u32 {
    1
}
fn default_capacity() -> usize {
    1_000_000
}
fn default_tenant_rate() -> f64 {
    100.0
}
fn default_tenant_burst() -> u32 {
    200
}
/// Most cells `local_capacity` may ask for.
const MAX_CAPACITY: usize = 100_000_000;
/// Most replicas `local-share` divides by.
const MAX_REPLICAS: u32 = 10_000;

/// Checks what serde cannot: rates, bursts and quotas within their bounds, tier and rule
/// names, a Redis URL for the Redis backend. Each issue names its field.
pub fn validate(
    limits: Option<&LimitsConfig>,
    tiers: &BTreeMap<String, TierConfig>,
) -> Vec<(String, String)> {
    let mut issues = Vec::new();
    let mut check = |field: String, result: Result<(), String>| {
        if let Err(message) = result {
            issues.push((field, message));
        }
    };
    for (name, tier) in tiers {
        if !is_valid_tier_name(name) {
            check(
                format!("tiers.{name}"),
                Err("a tier name is 1-64 ASCII letters, digits, `-` or `_`".to_string()),
            );
        }
        for (field, rate) in [
            ("requests_per_second", tier.requests_per_second),
            (
                "principal_requests_per_second",
                tier.principal_requests_per_second,
            ),
            (
                "anonymous_requests_per_second",
                tier.anonymous_requests_per_second,
            ),
            (
                "anonymous_client_requests_per_second",
                tier.anonymous_client_requests_per_second,
            ),
        ] {
            if let Some(rate) = rate {
                check(format!("tiers.{name}.{field}"), check_rate(rate));
            }
        }
        for (field, burst) in [
            ("burst", tier.burst),
            ("principal_burst", tier.principal_burst),
            ("anonymous_burst", tier.anonymous_burst),
            ("anonymous_client_burst", tier.anonymous_client_burst),
        ] {
            if let Some(burst) = burst {
                check(format!("tiers.{name}.{field}"), check_burst(burst));
            }
        }
        for (field, quota) in [
            ("daily_requests", tier.daily_requests),
            ("monthly_requests", tier.monthly_requests),
        ] {
            if let Some(quota) = quota {
                check(format!("tiers.{name}.{field}"), check_quota(quota));
            }
        }
        if tier.unlimited && tier.requests_per_second.is_some() {
            check(
                format!("tiers.{name}.unlimited"),
                Err("contradicts `requests_per_second`: set one of them".to_string()),
            );
        }
        let has_quota = tier.daily_requests.is_some() || tier.monthly_requests.is_some();
        if has_quota && limits.is_none_or(|l| l.backend != Backend::Redis) {
            check(
                format!("tiers.{name}"),
                Err(
                    "quotas (`daily_requests`, `monthly_requests`) are kept in Redis so restarts \
                     do not reset them: set `[limits] backend = \"redis\"`"
                        .to_string(),
                ),
            );
        }
    }
    let Some(limits) = limits else {
        return issues;
    };
    if limits.backend == Backend::Redis {
        match (&limits.redis_url, limits.redis_cluster_nodes.as_slice()) {
            (None, []) => check(
                "limits.redis_url".to_string(),
                Err("required with `backend = \"redis\"` (or `redis_cluster_nodes`)".to_string()),
            ),
            (Some(_), [_, ..]) => check(
                "limits.redis_cluster_nodes".to_string(),
                Err("either `redis_url` (one server) or `redis_cluster_nodes` (a cluster), not both".to_string()),
            ),
            (Some(url), []) => check(
                "limits.redis_url".to_string(),
                redis::Client::open(url.as_str())
                    .map(drop)
                    .map_err(|e| e.to_string()),
            ),
            (None, nodes) => {
                for (i, node) in nodes.iter().enumerate() {
                    check(
                        format!("limits.redis_cluster_nodes[{i}]"),
                        redis::Client::open(node.as_str())
                            .map(drop)
                            .map_err(|e| e.to_string()),
                    );
                }
            }
        }
    }
    if !(1..=MAX_REPLICAS).contains(&limits.replicas) {
        check(
            "limits.replicas".to_string(),
            Err(format!("from 1 to {MAX_REPLICAS}")),
        );
    }
    if !(1..=MAX_CAPACITY).contains(&limits.local_capacity) {
        check(
            "limits.local_capacity".to_string(),
            Err(format!("from 1 to {MAX_CAPACITY}")),
        );
    }
    check(
        "limits.default_requests_per_second".to_string(),
        check_rate(limits.default_requests_per_second),
    );
    check(
        "limits.default_burst".to_string(),
        check_burst(limits.default_burst),
    );
    let mut names = BTreeSet::new();
    for (i, rule) in limits.rule.iter().enumerate() {
        check(
            format!("limits.rule[{i}].requests_per_second"),
            check_rate(rule.requests_per_second),
        );
        check(format!("limits.rule[{i}].burst"), check_burst(rule.burst));
        let field = format!("limits.rule[{i}].name");
        if rule.name.is_empty()
            || rule.name.len() > 64
            || !rule.name.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
        {
            check(
                field,
                Err("must be 1-64 printable ASCII characters without quotes".to_string()),
            );
        } else if RESERVED_NAMES.contains(&rule.name.as_str()) {
            check(
                field,
                Err(format!("`{}` names a built-in limit", rule.name)),
            );
        } else if !names.insert(rule.name.as_str()) {
            check(
                field,
                Err(format!("`{}` names another rule already", rule.name)),
            );
        }
    }
    issues
}

/// A GCRA limit of one request: `burst` at once, refilled at `rate` per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// Policy name in the headers (`tenant`, `principal`, or the rule's name).
    pub name: Arc<str>,
    /// The budget's key (without the Redis prefix).
    pub key: String,
    pub rate: f64,
    pub burst: u32,
    /// One budget for every tenant (a rule `per = "route"`); all others are one tenant's.
    pub all_tenants: bool,
}

impl Limit {
    /// A limit with its rate and burst held within the bounds every configuration path
    /// enforces ([`check_rate`], [`check_burst`]). Values only code can produce (a rate below
    /// [`MIN_RATE`], NaN, a burst of 0) get the strictest bound rather than a panic or no limit;
    /// rates above [`MAX_RATE`] are kept (benchmarks use them; they cannot overflow).
    pub fn new(name: Arc<str>, key: String, rate: f64, burst: u32) -> Self {
        Limit {
            name,
            key,
            rate: if rate >= MIN_RATE { rate } else { MIN_RATE },
            burst: burst.clamp(1, MAX_BURST),
            all_tenants: false,
        }
    }

    /// The same limit as one budget of all tenants together.
    pub fn for_all_tenants(self) -> Self {
        Limit {
            all_tenants: true,
            ..self
        }
    }

    /// Time between two cells, in nanoseconds (at least 1, at most 10^12 for [`MIN_RATE`]).
    pub fn emission_ns(&self) -> u64 {
        emission_ns(self.rate)
    }

    /// How far ahead of now the budget may be booked: `burst` cells (at most 10^18 ns).
    pub fn tolerance_ns(&self) -> u64 {
        self.emission_ns().saturating_mul(u64::from(self.burst))
    }

    /// Seconds an empty budget needs to fill (`w` of `RateLimit-Policy`).
    #[allow(clippy::float_arithmetic)] // rate >= MIN_RATE (see `new`): finite, saturating cast
    fn window_secs(&self) -> u64 {
        // `as` saturates; the rate is at least `MIN_RATE`, so this is finite.
        (f64::from(self.burst) / self.rate).ceil().max(1.0) as u64
    }
}

/// Nanoseconds between two cells at `rate` per second, saturating (a rate below [`MIN_RATE`] or
/// NaN counts as [`MIN_RATE`]).
#[allow(clippy::float_arithmetic)] // rate >= MIN_RATE: finite, saturating cast
fn emission_ns(rate: f64) -> u64 {
    let rate = if rate >= MIN_RATE { rate } else { MIN_RATE };
    // At most 10^12 here; `as` saturates and never panics.
    ((1e9 / rate).round() as u64).max(1)
}

/// A count per UTC day or month.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    pub name: &'static str,
    pub key: String,
    pub limit: u64,
    /// Length of the window (for `RateLimit-Policy`).
    pub window: Duration,
    /// Until the window ends.
    pub resets_in: Duration,
}

/// Every limit and quota one request must fit in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitPlan {
    /// The tenant whose budgets these are (its id is the Redis Cluster hash tag of its keys).
    pub tenant: String,
    pub limits: Vec<Limit>,
    pub quotas: Vec<Quota>,
}

impl LimitPlan {
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.quotas.is_empty()
    }
}

/// The tier table and rules, compiled for the request path.
pub struct LimitTable {
    tiers: BTreeMap<String, TierConfig>,
    rules: Vec<LimitRule>,
    gates: BTreeMap<String, String>,
    /// Tenant-wide limit of tiers that set none (and of a tier the table does not know).
    default_rate: f64,
    default_burst: u32,
    tenant_name: Arc<str>,
    principal_name: Arc<str>,
    anonymous_name: Arc<str>,
    anonymous_client_name: Arc<str>,
    rule_names: Vec<Arc<str>>,
}

/// Whose budgets a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// An authenticated principal, or any caller when the gateway does not authenticate
    /// (no `[identity]`): the tenant's budget, the principal's, the quotas.
    Known,
    /// No credential while the gateway authenticates: the tenant's anonymous budget and the
    /// client address's, never the tenant's own budget or quotas.
    Anonymous {
        /// The client's address (after trusted proxy hops), when known.
        client: Option<IpAddr>,
    },
}

impl Caller {
    /// The caller of a request of `principal`; `authenticates`: `[identity]` is configured.
    pub fn of(principal: &Principal, authenticates: bool, client: Option<IpAddr>) -> Self {
        if authenticates && principal.auth == AuthMethod::Anonymous {
            Caller::Anonymous { client }
        } else {
            Caller::Known
        }
    }
}

/// The budget key of a client address: the address, or its /64 for IPv6 (one subscriber
/// usually holds a whole /64, so single addresses would be free to rotate).
fn client_key(client: Option<IpAddr>) -> String {
    match client.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let prefix = u128::from(v6) & !(u128::from(u64::MAX));
            format!("{}/64", std::net::Ipv6Addr::from(prefix))
        }
        None => "unknown".to_string(),
    }
}

/// A request for an action its tenant's tier does not include.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureMissing {
    pub action: String,
    pub feature: String,
    pub tier: String,
}

impl LimitTable {
    pub fn new(limits: Option<&LimitsConfig>, tiers: &BTreeMap<String, TierConfig>) -> Self {
        let rules = limits.map(|l| l.rule.clone()).unwrap_or_default();
        LimitTable {
            tiers: tiers.clone(),
            rule_names: rules.iter().map(|r| Arc::from(r.name.as_str())).collect(),
            rules,
            gates: limits.map(|l| l.gates.clone()).unwrap_or_default(),
            default_rate: limits
                .map(|l| l.default_requests_per_second)
                .unwrap_or_else(default_tenant_rate),
            default_burst: limits
                .map(|l| l.default_burst)
                .unwrap_or_else(default_tenant_burst),
            tenant_name: Arc::from("tenant"),
            principal_name: Arc::from("principal"),
            anonymous_name: Arc::from("anonymous"),
            anonymous_client_name: Arc::from("anonymous-client"),
        }
    }

    /// The tier's features (the tenant's own come on top).
    pub fn tier_features(&self, tier: &str) -> &[String] {
        self.tiers
            .get(tier)
            .map(|t| t.features.as_slice())
            .unwrap_or(&[])
    }

    /// Refuses an action gated on a feature neither the tenant's tier nor the tenant has.
    pub fn check_gate(&self, tenant: &TenantSpec, action: &str) -> Result<(), FeatureMissing> {
        let Some(feature) = self.gates.get(action) else {
            return Ok(());
        };
        if self.tier_features(&tenant.tier).contains(feature) || tenant.features.contains(feature) {
            return Ok(());
        }
        Err(FeatureMissing {
            action: action.to_string(),
            feature: feature.clone(),
            tier: tenant.tier.clone(),
        })
    }

    /// The limits and quotas of one request. `now_secs` is the Unix time (quota windows).
    ///
    /// Without `[tiers]` only the rules apply. With tiers, every tenant has a tenant-wide limit:
    /// its own override, else its tier's, else the `[limits]` default unless the tier is
    /// `unlimited` (a tier the table does not know, which registry validation refuses, gets the
    /// default too: never no limit).
    pub fn plan(
        &self,
        tenant: &TenantSpec,
        principal: &Principal,
        caller: Caller,
        action: Option<&str>,
        now_secs: i64,
    ) -> LimitPlan {
        let tiered = !self.tiers.is_empty();
        let tier = self.tiers.get(&tenant.tier);
        let own = &tenant.limits;
        let mut plan = LimitPlan {
            tenant: tenant.id.clone(),
            ..LimitPlan::default()
        };
        match caller {
            Caller::Anonymous { client } if tiered => {
                let rate = tier
                    .and_then(|t| t.anonymous_requests_per_second)
                    .unwrap_or(DEFAULT_ANONYMOUS_RATE);
                let burst = tier
                    .and_then(|t| t.anonymous_burst)
                    .unwrap_or(DEFAULT_ANONYMOUS_BURST);
                plan.limits.push(Limit::new(
                    self.anonymous_name.clone(),
                    format!("a:{}", tenant.id),
                    rate,
                    burst,
                ));
                let rate = tier
                    .and_then(|t| t.anonymous_client_requests_per_second)
                    .unwrap_or(DEFAULT_ANONYMOUS_CLIENT_RATE);
                let burst = tier
                    .and_then(|t| t.anonymous_client_burst)
                    .unwrap_or(DEFAULT_ANONYMOUS_CLIENT_BURST);
                plan.limits.push(Limit::new(
                    self.anonymous_client_name.clone(),
                    format!("c:{}:{}", tenant.id, client_key(client)),
                    rate,
                    burst,
                ));
            }
            Caller::Anonymous { .. } => {}
            Caller::Known => {
                let tenant_rate = own
                    .requests_per_second
                    .or(tier.and_then(|t| t.requests_per_second));
                let tenant_limit = match tenant_rate {
                    Some(rate) => Some((
                        rate,
                        own.burst
                            .or(tier.and_then(|t| t.burst))
                            .unwrap_or_else(|| one_second(rate)),
                    )),
                    None if tiered && !tier.is_some_and(|t| t.unlimited) => Some((
                        self.default_rate,
                        own.burst
                            .or(tier.and_then(|t| t.burst))
                            .unwrap_or(self.default_burst),
                    )),
                    None => None,
                };
                if let Some((rate, burst)) = tenant_limit {
                    plan.limits.push(Limit::new(
                        self.tenant_name.clone(),
                        format!("t:{}", tenant.id),
                        rate,
                        burst,
                    ));
                }
                if let Some(rate) = tier.and_then(|t| t.principal_requests_per_second) {
                    let burst = tier
                        .and_then(|t| t.principal_burst)
                        .unwrap_or_else(|| one_second(rate));
                    plan.limits.push(Limit::new(
                        self.principal_name.clone(),
                        format!("p:{}:{}", tenant.id, principal.id),
                        rate,
                        burst,
                    ));
                }
            }
        }
        for (rule, name) in self.rules.iter().zip(&self.rule_names) {
            let applies = rule.actions.is_empty()
                || action.is_some_and(|a| rule.actions.iter().any(|r| r == a));
            if !applies {
                continue;
            }
            let key = match rule.per {
                LimitScope::Tenant => format!("r:{name}:{}", tenant.id),
                LimitScope::Principal => format!("r:{name}:{}:{}", tenant.id, principal.id),
                LimitScope::ApiKey => match &principal.auth {
                    AuthMethod::ApiKey { key_id } => format!("r:{name}:{}:{key_id}", tenant.id),
                    _ => continue,
                },
                LimitScope::Route => format!("r:{name}"),
            };
            let limit = Limit::new(name.clone(), key, rule.requests_per_second, rule.burst);
            plan.limits.push(if rule.per == LimitScope::Route {
                limit.for_all_tenants()
            } else {
                limit
            });
        }
        // Quotas are the tenant's: anonymous requests do not use them up.
        if caller != Caller::Known {
            return plan;
        }
        let daily = own.daily_requests.or(tier.and_then(|t| t.daily_requests));
        let monthly = own
            .monthly_requests
            .or(tier.and_then(|t| t.monthly_requests));
        if daily.is_none() && monthly.is_none() {
            // Calendar arithmetic only for tenants with a quota (most requests have none).
            return plan;
        }
        let windows = QuotaWindows::at(now_secs);
        if let Some(limit) = daily {
            plan.quotas.push(Quota {
                name: "daily",
                key: format!("q:d:{}:{}", tenant.id, windows.day_id),
                limit,
                window: Duration::from_secs(86_400),
                resets_in: windows.day_resets_in,
            });
        }
        if let Some(limit) = monthly {
            plan.quotas.push(Quota {
                name: "monthly",
                key: format!("q:m:{}:{}", tenant.id, windows.month_id),
                limit,
                window: windows.month_len,
                resets_in: windows.month_resets_in,
            });
        }
        plan
    }
}

/// A burst of one second at `rate` (at least 1; `as` saturates).
fn one_second(rate: f64) -> u32 {
    rate.ceil().max(1.0) as u32
}

/// The UTC day and month a quota counts in.
struct QuotaWindows {
    day_id: String,
    day_resets_in: Duration,
    month_id: String,
    month_len: Duration,
    month_resets_in: Duration,
}

impl QuotaWindows {
    fn at(now_secs: i64) -> Self {
        use jiff::{tz::TimeZone, Timestamp, ToSpan};
        let now = Timestamp::from_second(now_secs).unwrap_or(Timestamp::UNIX_EPOCH);
        let zoned = now.to_zoned(TimeZone::UTC);
        let date = zoned.date();
        let secs_until = |end: jiff::civil::Date| {
            let end = end
                .to_zoned(TimeZone::UTC)
                .map(|z| z.timestamp().as_second());
            Duration::from_secs(end.map(|e| (e - now_secs).max(1) as u64).unwrap_or(86_400))
        };
        let tomorrow = date.tomorrow().unwrap_or(date);
        let month_start = date.first_of_month();
        let next_month = month_start.checked_add(1.month()).unwrap_or(tomorrow);
        QuotaWindows {
            day_id: date.strftime("%Y%m%d").to_string(),
            day_resets_in: secs_until(tomorrow),
            month_id: date.strftime("%Y%m").to_string(),
            month_len: Duration::from_secs(u64::from(date.days_in_month() as u8) * 86_400),
            month_resets_in: secs_until(next_month),
        }
    }
}

/// How a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    Local,
    Redis,
    /// Redis could not answer; the fallback decided.
    Fallback(Fallback),
}

/// What one limit or quota looked like after the decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyState {
    pub name: Arc<str>,
    /// Size of the budget (burst, or the quota).
    pub quota: u64,
    /// Seconds the budget spans.
    pub window_secs: u64,
    pub remaining: u64,
    /// Seconds until the budget is whole again (limits) or the window ends (quotas).
    pub reset_secs: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Exceeded {
    Limit {
        name: Arc<str>,
    },
    Quota {
        name: &'static str,
    },
    /// Redis could not decide and the fallback is `fail-closed`.
    Unavailable,
}

/// A decision over a whole [`LimitPlan`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub exceeded: Option<Exceeded>,
    pub retry_after: Duration,
    pub states: Vec<PolicyState>,
    pub decided_by: DecidedBy,
}

impl Verdict {
    /// A verdict that admits without telling anything (fail-open, nothing to check).
    pub fn admit_blind(decided_by: DecidedBy) -> Self {
        Verdict {
            exceeded: None,
            retry_after: Duration::ZERO,
            states: Vec::new(),
            decided_by,
        }
    }

    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), plus
    /// `Retry-After` when refused.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        use std::fmt::Write as _;
        let mut out = Vec::with_capacity(3);
        if !self.states.is_empty() {
            // Written straight into each value (every admitted request carries them).
            let mut policy = String::with_capacity(32 * self.states.len());
            let mut state = String::with_capacity(32 * self.states.len());
            for (i, s) in self.states.iter().enumerate() {
                let separator = if i == 0 { "" } else { ", " };
                // Writing to a String cannot fail.
                let _ = write!(
                    policy,
                    "{separator}\"{}\";q={};w={}",
                    s.name, s.quota, s.window_secs
                );
                let _ = write!(
                    state,
                    "{separator}\"{}\";r={};t={}",
                    s.name, s.remaining, s.reset_secs
                );
            }
            out.push(("ratelimit-policy", policy));
            out.push(("ratelimit", state));
        }
        if self.exceeded.is_some() {
            out.push((
                "retry-after",
                ceil_secs(self.retry_after).max(1).to_string(),
            ));
        }
        out
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// State of a limit whose budget is booked `backlog_ns` ahead of now (its GCRA theoretical
/// arrival time minus now).
fn limit_state(limit: &Limit, backlog_ns: u64) -> PolicyState {
    let remaining = limit.tolerance_ns().saturating_sub(backlog_ns) / limit.emission_ns();
    PolicyState {
        name: limit.name.clone(),
        quota: u64::from(limit.burst),
        window_secs: limit.window_secs(),
        remaining: remaining.min(u64::from(limit.burst)),
        reset_secs: ceil_secs(Duration::from_nanos(backlog_ns)),
    }
}

fn quota_state(quota: &Quota, used: u64) -> PolicyState {
    PolicyState {
        name: Arc::from(quota.name),
        quota: quota.limit,
        window_secs: quota.window.as_secs(),
        remaining: quota.limit.saturating_sub(used),
        reset_secs: ceil_secs(quota.resets_in),
    }
}

/// Failures that make the fallback decide.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is marked down until the next retry")]
    Down,
    #[error("unexpected reply from the limit script: {0}")]
    Reply(String),
}

/// Decides limits and quotas: locally, or through Redis with a fallback.
pub struct Limiter {
    pub table: LimitTable,
    local: local::LocalLimiter,
    cluster: Option<cluster::ClusterLimiter>,
    fallback: Fallback,
}

impl Limiter {
    pub fn new(limits: Option<&LimitsConfig>, tiers: &BTreeMap<String, TierConfig>) -> Self {
        let capacity = limits
            .map(|l| l.local_capacity)
            .unwrap_or(default_capacity());
        let cluster = limits
            .filter(|l| l.backend == Backend::Redis)
            .and_then(cluster::ClusterLimiter::new);
        let share = match limits {
            Some(l) if l.backend == Backend::Redis && l.fallback == Fallback::LocalShare => {
                l.replicas.max(1)
            }
            _ => 1,
        };
        Limiter {
            table: LimitTable::new(limits, tiers),
            local: local::LocalLimiter::new(capacity, share),
            cluster,
            fallback: limits.map(|l| l.fallback).unwrap_or_default(),
        }
    }

    /// Backend, fallback and Redis state, for the admin status.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": match &self.cluster {
                None => "local",
                Some(c) if c.is_cluster() => "redis-cluster",
                Some(_) => "redis",
            },
            "fallback": self.fallback.label(),
            "redis_up": self.cluster.as_ref().map(|c| c.is_up()),
            "tiers": self.table.tiers.keys().collect::<Vec<_>>(),
            "rules": self.table.rule_names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        })
    }

    /// Whether any request can be limited at all (nothing to do otherwise).
    pub fn decides_anything(&self) -> bool {
        !self.table.tiers.is_empty() || !self.table.rules.is_empty()
    }

    /// Adds `delta` to a counter of `tenant` kept in Redis (spending budgets) and returns the
    /// new total of every replica; an error when there is no Redis or it does not answer.
    pub async fn add_to_counter(
        &self,
        tenant: &str,
        key: &str,
        delta: i64,
        ttl: std::time::Duration,
        once: Option<cluster::AddOnce<'_>>,
    ) -> Result<i64, LimiterError> {
        match &self.cluster {
            Some(cluster) => cluster.add_to_counter(tenant, key, delta, ttl, once).await,
            None => Err(LimiterError::Down),
        }
    }

    /// Counters of `tenant` kept in Redis, in one read (see [`Limiter::add_to_counter`]).
    pub async fn read_counters(
        &self,
        tenant: &str,
        keys: &[String],
    ) -> Result<Vec<Option<i64>>, LimiterError> {
        match &self.cluster {
            Some(cluster) => cluster.read_counters(tenant, keys).await,
            None => Err(LimiterError::Down),
        }
    }

    /// Claims `key` of `tenant` once cluster-wide for `ttl`: `true` for the claimant.
    pub async fn claim_once(
        &self,
        tenant: &str,
        key: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, LimiterError> {
        match &self.cluster {
            Some(cluster) => cluster.claim_once(tenant, key, ttl).await,
            None => Err(LimiterError::Down),
        }
    }

    /// Whether limits (and budgets) are kept in Redis.
    pub fn is_shared(&self) -> bool {
        self.cluster.is_some()
    }

    /// Decides one request's plan.
    pub async fn decide(&self, plan: &LimitPlan) -> Verdict {
        if plan.is_empty() {
            return Verdict::admit_blind(DecidedBy::Local);
        }
        let Some(cluster) = &self.cluster else {
            return self.local.decide(plan, DecidedBy::Local);
        };
        match cluster.decide(plan).await {
            Ok(verdict) => {
                self.local.remember_quotas(plan, &verdict);
                verdict
            }
            Err(error) => {
                metrics::counter!(crate::telemetry::RATELIMIT_FALLBACK_DECISIONS_TOTAL, "mode" => self.fallback.label())
                    .increment(1);
                tracing::debug!(%error, mode = self.fallback.label(), "rate limit decided by the fallback");
                match self.fallback {
                    Fallback::FailOpen => Verdict::admit_blind(DecidedBy::Fallback(self.fallback)),
                    Fallback::FailClosed => Verdict {
                        exceeded: Some(Exceeded::Unavailable),
                        retry_after: cluster.retry_interval(),
                        states: Vec::new(),
                        decided_by: DecidedBy::Fallback(self.fallback),
                    },
                    Fallback::LocalShare => self
                        .local
                        .decide(plan, DecidedBy::Fallback(Fallback::LocalShare)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> BTreeMap<String, TierConfig> {
        let mut tiers = BTreeMap::new();
        tiers.insert(
            "free".to_string(),
            TierConfig {
                features: vec!["basic".into()],
                requests_per_second: Some(10.0),
                burst: Some(20),
                principal_requests_per_second: Some(2.0),
                principal_burst: None,
                daily_requests: Some(1000),
                monthly_requests: Some(10_000),
                ..TierConfig::default()
            },
        );
        tiers
    }

    fn limits() -> LimitsConfig {
        toml::from_str(
            r#"
            backend = "redis"
            redis_url = "redis://127.0.0.1:6379"
            [gates]
            "documents:export" = "exports"
            [[rule]]
            name = "exports"
            actions = ["documents:export"]
            requests_per_second = 0.5
            burst = 3
            [[rule]]
            name = "keys"
            per = "api-key"
            requests_per_second = 100
            burst = 100
            "#,
        )
        .unwrap()
    }

    #[test]
    fn plans_tier_defaults_overrides_rules_and_quota_windows() {
        let table = LimitTable::new(Some(&limits()), &tiers());
        let mut tenant = TenantSpec::new("acme");
        tenant.limits.requests_per_second = Some(50.0);
        let principal = Principal::anonymous();
        // 2026-11-23T10:00:00Z
        let now = 1_795_428_000;
        let plan = table.plan(
            &tenant,
            &principal,
            Caller::Known,
            Some("documents:export"),
            now,
        );
        let names: Vec<&str> = plan.limits.iter().map(|l| &*l.name).collect();
        assert_eq!(names, ["tenant", "principal", "exports"]);
        assert_eq!(plan.limits[0].rate, 50.0, "tenant override wins");
        assert_eq!(plan.limits[0].burst, 20, "tier burst kept");
        assert_eq!(plan.limits[1].burst, 2, "burst defaults to one second");
        assert_eq!(plan.quotas[0].key, "q:d:acme:20261123");
        assert_eq!(plan.quotas[0].resets_in, Duration::from_secs(14 * 3600));
        assert_eq!(plan.quotas[1].key, "q:m:acme:202611");
        assert_eq!(plan.quotas[1].window, Duration::from_secs(30 * 86_400));
        // API-key rules only for API-key callers; action rules only for their actions.
        let plan = table.plan(
            &tenant,
            &principal,
            Caller::Known,
            Some("documents:read"),
            now,
        );
        assert_eq!(plan.limits.len(), 2);
        let mut key = Principal::anonymous();
        key.auth = AuthMethod::ApiKey {
            key_id: "ci".into(),
        };
        let plan = table.plan(&tenant, &key, Caller::Known, None, now);
        assert_eq!(plan.limits[2].key, "r:keys:acme:ci");
    }

    #[test]
    fn anonymous_callers_have_budgets_of_their_own() {
        let table = LimitTable::new(Some(&limits()), &tiers());
        let tenant = TenantSpec::new("acme");
        let anonymous = Principal::anonymous();
        let from = |ip: &str| Caller::Anonymous {
            client: Some(ip.parse().unwrap()),
        };
        let plan = table.plan(&tenant, &anonymous, from("203.0.113.7"), None, 0);
        let limits: Vec<(&str, &str, f64, u32)> = plan
            .limits
            .iter()
            .map(|l| (&*l.name, l.key.as_str(), l.rate, l.burst))
            .collect();
        assert_eq!(
            limits,
            [
                ("anonymous", "a:acme", 1.0, 10),
                ("anonymous-client", "c:acme:203.0.113.7", 0.5, 5),
            ]
        );
        assert!(plan.quotas.is_empty(), "the tenant's quotas are not theirs");
        // One IPv6 /64 is one client; IPv4-mapped addresses are IPv4.
        let a = table.plan(&tenant, &anonymous, from("2001:db8:1:2::1"), None, 0);
        let b = table.plan(&tenant, &anonymous, from("2001:db8:1:2:ffff::9"), None, 0);
        assert_eq!(a.limits[1].key, "c:acme:2001:db8:1:2::/64");
        assert_eq!(a.limits[1].key, b.limits[1].key);
        let mapped = table.plan(&tenant, &anonymous, from("::ffff:203.0.113.7"), None, 0);
        assert_eq!(mapped.limits[1].key, "c:acme:203.0.113.7");
        // Without `[identity]` nobody is anonymous.
        assert_eq!(
            Caller::of(&anonymous, false, None),
            Caller::Known,
            "without authentication every caller is the tenant's"
        );
    }

    #[test]
    fn no_tier_leaves_a_tenant_unlimited_by_omission() {
        let mut tiers = tiers();
        tiers.insert(
            "features-only".into(),
            TierConfig {
                features: vec!["exports".into()],
                ..TierConfig::default()
            },
        );
        tiers.insert(
            "unlimited".into(),
            TierConfig {
                unlimited: true,
                ..TierConfig::default()
            },
        );
        let table = LimitTable::new(None, &tiers);
        let principal = Principal::anonymous();
        let tenant_limit = |tier: &str| {
            let mut tenant = TenantSpec::new("t");
            tenant.tier = tier.into();
            table
                .plan(&tenant, &principal, Caller::Known, None, 0)
                .limits
                .into_iter()
                .find(|l| &*l.name == "tenant")
                .map(|l| (l.rate, l.burst))
        };
        assert_eq!(tenant_limit("features-only"), Some((100.0, 200)));
        assert_eq!(tenant_limit("no-such-tier"), Some((100.0, 200)));
        assert_eq!(tenant_limit("unlimited"), None);
        // Without tiers a tier is a label: only rules limit.
        let untiered = LimitTable::new(None, &BTreeMap::new());
        let plan = untiered.plan(&TenantSpec::new("t"), &principal, Caller::Known, None, 0);
        assert!(plan.is_empty());
    }

    #[test]
    fn extreme_values_never_panic_or_unlimit() {
        for rate in [1e-30, 5e-324, 0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
            let limit = Limit::new(Arc::from("x"), "k".into(), rate, 0);
            assert_eq!(limit.rate, MIN_RATE, "{rate}");
            assert_eq!(limit.burst, 1);
            assert_eq!(limit.emission_ns(), 1_000_000_000_000);
            let state = limit_state(&limit, u64::MAX);
            assert_eq!(state.remaining, 0);
        }
        let fast = Limit::new(Arc::from("x"), "k".into(), f64::INFINITY, u32::MAX);
        assert_eq!(fast.emission_ns(), 1);
        assert_eq!(fast.burst, MAX_BURST);
        assert_eq!(fast.window_secs(), 1);
    }

    #[test]
    fn gates_need_the_feature_in_the_tier_or_the_tenant() {
        let table = LimitTable::new(Some(&limits()), &tiers());
        let mut tenant = TenantSpec::new("acme");
        let missing = table.check_gate(&tenant, "documents:export").unwrap_err();
        assert_eq!(missing.feature, "exports");
        assert_eq!(missing.tier, "free");
        assert!(table.check_gate(&tenant, "documents:read").is_ok());
        tenant.features.push("exports".into());
        assert!(table.check_gate(&tenant, "documents:export").is_ok());
    }

    #[test]
    fn headers_follow_the_ietf_draft() {
        let limit = Limit::new(Arc::from("tenant"), "t:a".into(), 10.0, 20);
        let verdict = Verdict {
            exceeded: Some(Exceeded::Limit {
                name: limit.name.clone(),
            }),
            retry_after: Duration::from_millis(1500),
            states: vec![limit_state(&limit, 2_000_000_000)],
            decided_by: DecidedBy::Local,
        };
        let headers = verdict.headers();
        assert_eq!(
            headers[0],
            ("ratelimit-policy", "\"tenant\";q=20;w=2".into())
        );
        assert_eq!(headers[1], ("ratelimit", "\"tenant\";r=0;t=2".into()));
        assert_eq!(headers[2], ("retry-after", "2".into()));
        // Half used: 10 left, whole again in one second.
        assert_eq!(limit_state(&limit, 1_000_000_000).remaining, 10);
    }

    #[test]
    fn validation_names_fields() {
        let mut bad = tiers();
        bad.get_mut("free").unwrap().requests_per_second = Some(0.0);
        let issues = validate(None, &bad);
        let fields: Vec<&str> = issues.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["tiers.free.requests_per_second", "tiers.free"]);
        let mut l = limits();
        l.redis_url = None;
        l.rule[0].burst = 0;
        let issues = validate(Some(&l), &tiers());
        let fields: Vec<&str> = issues.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["limits.redis_url", "limits.rule[0].burst"]);
    }

    #[test]
    fn a_redis_cluster_is_seed_nodes_instead_of_one_url() {
        let mut l = limits();
        l.redis_cluster_nodes = vec!["redis://127.0.0.1:7000".into()];
        let issues = validate(Some(&l), &tiers());
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].0, "limits.redis_cluster_nodes");
        assert!(issues[0].1.contains("not both"), "{}", issues[0].1);
        l.redis_url = None;
        assert!(validate(Some(&l), &tiers()).is_empty());
        // TLS (rustls) for one server and for cluster nodes alike.
        l.redis_cluster_nodes
            .push("rediss://redis.example:6380".into());
        assert!(validate(Some(&l), &tiers()).is_empty());
        l.redis_cluster_nodes.push("http://not-redis".into());
        let issues = validate(Some(&l), &tiers());
        let fields: Vec<&str> = issues.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["limits.redis_cluster_nodes[2]"]);
    }

    #[test]
    fn route_wide_rules_are_marked_as_every_tenants_budget() {
        let mut l = limits();
        l.rule.push(
            toml::from_str(
                "name = \"everyone\"\nper = \"route\"\nrequests_per_second = 1\nburst = 1",
            )
            .unwrap(),
        );
        let table = LimitTable::new(Some(&l), &tiers());
        let tenant = TenantSpec::new("acme");
        let plan = table.plan(&tenant, &Principal::anonymous(), Caller::Known, None, 0);
        assert_eq!(plan.tenant, "acme");
        let shared: Vec<(&str, bool)> = plan
            .limits
            .iter()
            .map(|l| (&*l.name, l.all_tenants))
            .collect();
        assert!(shared.contains(&("everyone", true)), "{shared:?}");
        assert!(shared.contains(&("tenant", false)), "{shared:?}");
    }

    #[test]
    fn validation_bounds_every_rate_burst_and_quota() {
        let mut bad = tiers();
        let free = bad.get_mut("free").unwrap();
        free.requests_per_second = Some(1e-30);
        free.principal_requests_per_second = Some(5e-324);
        free.anonymous_requests_per_second = Some(f64::NAN);
        free.anonymous_client_requests_per_second = Some(2e6);
        free.burst = Some(0);
        free.anonymous_burst = Some(2_000_000);
        free.daily_requests = Some(0);
        bad.insert(
            "bad name".into(),
            TierConfig {
                unlimited: true,
                requests_per_second: Some(1.0),
                ..TierConfig::default()
            },
        );
        let mut l = limits();
        l.rule[0].requests_per_second = 1e-30;
        l.rule[1].name = "tenant".into();
        l.rule.push(l.rule[0].clone());
        l.rule[2].requests_per_second = 1.0;
        l.default_burst = 0;
        l.local_capacity = usize::MAX;
        let issues = validate(Some(&l), &bad);
        let fields: Vec<&str> = issues.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "tiers.bad name",
                "tiers.bad name.unlimited",
                "tiers.free.requests_per_second",
                "tiers.free.principal_requests_per_second",
                "tiers.free.anonymous_requests_per_second",
                "tiers.free.anonymous_client_requests_per_second",
                "tiers.free.burst",
                "tiers.free.anonymous_burst",
                "tiers.free.daily_requests",
                "limits.local_capacity",
                "limits.default_burst",
                "limits.rule[0].requests_per_second",
                "limits.rule[1].name",
                "limits.rule[2].name",
            ]
        );
        assert!(issues[2].1.contains("1e-30"), "{}", issues[2].1);
        // The bounds themselves pass.
        assert!(check_rate(MIN_RATE).is_ok() && check_rate(MAX_RATE).is_ok());
        assert!(check_burst(1).is_ok() && check_burst(MAX_BURST).is_ok());
        assert!(check_quota(1).is_ok() && check_quota(MAX_QUOTA).is_ok());
    }
}
