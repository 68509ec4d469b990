//! Rate limits, quotas and tier features (stage 6).
//!
//! Limits are GCRA cells keyed by tenant, tenant+principal, and by configured rules (per action,
//! per tenant / principal / API key / route). Quotas count requests per UTC day and month.
//! Where decisions are made:
//! - `backend = "local"`: in process ([`local`], the `governor` crate), per replica;
//! - `backend = "redis"`: cluster-wide ([`cluster`]), one Lua script call per request that checks
//!   and updates every limit and quota of the request atomically. When Redis cannot answer, the
//!   configured [`Fallback`] decides until Redis answers again.
//!
//! The outcome carries the IETF `RateLimit-Policy` / `RateLimit` header values
//! (draft-ietf-httpapi-ratelimit-headers) for the response.

pub mod cluster;
pub mod local;

use std::collections::BTreeMap;
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
    /// Most limiter cells kept in memory (least recently used ones are dropped).
    #[serde(default = "default_capacity")]
    pub local_capacity: usize,
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
    pub requests_per_second: f64,
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
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Features of the tier (policies see them with the tenant's own in `tenant.features`).
    #[serde(default)]
    pub features: Vec<String>,
    /// The tenant's whole budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Each principal's budget within its tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_burst: Option<u32>,
    /// Requests per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_requests: Option<u64>,
    /// Requests per UTC calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_requests: Option<u64>,
}

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

/// Checks what serde cannot: positive rates, sane bursts, a Redis URL for the Redis backend.
pub fn validate(
    limits: Option<&LimitsConfig>,
    tiers: &BTreeMap<String, TierConfig>,
) -> Vec<(String, String)> {
    let mut issues = Vec::new();
    let rate_ok = |r: f64| r.is_finite() && r > 0.0;
    for (name, tier) in tiers {
        for (field, rate) in [
            ("requests_per_second", tier.requests_per_second),
            (
                "principal_requests_per_second",
                tier.principal_requests_per_second,
            ),
        ] {
            if rate.is_some_and(|r| !rate_ok(r)) {
                issues.push((
                    format!("tiers.{name}.{field}"),
                    "must be a positive number".to_string(),
                ));
            }
        }
        for (field, burst) in [
            ("burst", tier.burst),
            ("principal_burst", tier.principal_burst),
        ] {
            if burst == Some(0) {
                issues.push((format!("tiers.{name}.{field}"), "at least 1".to_string()));
            }
        }
        let has_quota = tier.daily_requests.is_some() || tier.monthly_requests.is_some();
        if has_quota && limits.is_none_or(|l| l.backend != Backend::Redis) {
            issues.push((
                format!("tiers.{name}"),
                "quotas (`daily_requests`, `monthly_requests`) are kept in Redis so restarts do \
                 not reset them: set `[limits] backend = \"redis\"`"
                    .to_string(),
            ));
        }
    }
    let Some(limits) = limits else {
        return issues;
    };
    if limits.backend == Backend::Redis {
        match &limits.redis_url {
            None => issues.push((
                "limits.redis_url".to_string(),
                "required with `backend = \"redis\"`".to_string(),
            )),
            Some(url) => {
                if let Err(e) = redis::Client::open(url.as_str()) {
                    issues.push(("limits.redis_url".to_string(), e.to_string()));
                }
            }
        }
    }
    if limits.replicas == 0 {
        issues.push(("limits.replicas".to_string(), "at least 1".to_string()));
    }
    for (i, rule) in limits.rule.iter().enumerate() {
        if !rate_ok(rule.requests_per_second) {
            issues.push((
                format!("limits.rule[{i}].requests_per_second"),
                "must be a positive number".to_string(),
            ));
        }
        if rule.burst == 0 {
            issues.push((format!("limits.rule[{i}].burst"), "at least 1".to_string()));
        }
        if rule.name.is_empty() || !rule.name.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
            issues.push((
                format!("limits.rule[{i}].name"),
                "must be non-empty printable ASCII without quotes".to_string(),
            ));
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
}

impl Limit {
    /// Time between two cells.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }

    /// Seconds an empty budget needs to fill (`w` of `RateLimit-Policy`).
    fn window_secs(&self) -> u64 {
        (f64::from(self.burst) / self.rate).ceil().max(1.0) as u64
    }
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
    tenant_name: Arc<str>,
    principal_name: Arc<str>,
    rule_names: Vec<Arc<str>>,
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
            tenant_name: Arc::from("tenant"),
            principal_name: Arc::from("principal"),
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
    pub fn plan(
        &self,
        tenant: &TenantSpec,
        principal: &Principal,
        action: Option<&str>,
        now_secs: i64,
    ) -> LimitPlan {
        let tier = self.tiers.get(&tenant.tier);
        let own = &tenant.limits;
        let mut plan = LimitPlan::default();
        let tenant_rate = own
            .requests_per_second
            .or(tier.and_then(|t| t.requests_per_second));
        if let Some(rate) = tenant_rate {
            let burst = own
                .burst
                .or(tier.and_then(|t| t.burst))
                .unwrap_or_else(|| rate.ceil().max(1.0) as u32);
            plan.limits.push(Limit {
                name: self.tenant_name.clone(),
                key: format!("t:{}", tenant.id),
                rate,
                burst,
            });
        }
        if let Some(rate) = tier.and_then(|t| t.principal_requests_per_second) {
            let burst = tier
                .and_then(|t| t.principal_burst)
                .unwrap_or_else(|| rate.ceil().max(1.0) as u32);
            plan.limits.push(Limit {
                name: self.principal_name.clone(),
                key: format!("p:{}:{}", tenant.id, principal.id),
                rate,
                burst,
            });
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
            plan.limits.push(Limit {
                name: name.clone(),
                key,
                rate: rule.requests_per_second,
                burst: rule.burst,
            });
        }
        let windows = QuotaWindows::at(now_secs);
        if let Some(limit) = own.daily_requests.or(tier.and_then(|t| t.daily_requests)) {
            plan.quotas.push(Quota {
                name: "daily",
                key: format!("q:d:{}:{}", tenant.id, windows.day_id),
                limit,
                window: Duration::from_secs(86_400),
                resets_in: windows.day_resets_in,
            });
        }
        if let Some(limit) = own
            .monthly_requests
            .or(tier.and_then(|t| t.monthly_requests))
        {
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
        let mut out = Vec::new();
        if !self.states.is_empty() {
            let policy = self
                .states
                .iter()
                .map(|s| format!("\"{}\";q={};w={}", s.name, s.quota, s.window_secs))
                .collect::<Vec<_>>()
                .join(", ");
            let state = self
                .states
                .iter()
                .map(|s| format!("\"{}\";r={};t={}", s.name, s.remaining, s.reset_secs))
                .collect::<Vec<_>>()
                .join(", ");
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

/// State of a limit computed from a GCRA theoretical arrival time (`tat_after` µs after now).
fn limit_state(limit: &Limit, tat_after_us: i64) -> PolicyState {
    let emission_us = limit.emission_interval().as_micros().max(1) as i64;
    let tolerance_us = emission_us * i64::from(limit.burst);
    let backlog = tat_after_us.max(0);
    let remaining = ((tolerance_us - backlog) / emission_us).clamp(0, i64::from(limit.burst));
    PolicyState {
        name: limit.name.clone(),
        quota: u64::from(limit.burst),
        window_secs: limit.window_secs(),
        remaining: remaining as u64,
        reset_secs: ceil_secs(Duration::from_micros(backlog as u64)),
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
            "backend": if self.cluster.is_some() { "redis" } else { "local" },
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
                metrics::counter!("gateway_ratelimit_fallback_decisions_total", "mode" => self.fallback.label())
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
        let plan = table.plan(&tenant, &principal, Some("documents:export"), now);
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
        let plan = table.plan(&tenant, &principal, Some("documents:read"), now);
        assert_eq!(plan.limits.len(), 2);
        let mut key = Principal::anonymous();
        key.auth = AuthMethod::ApiKey {
            key_id: "ci".into(),
        };
        let plan = table.plan(&tenant, &key, None, now);
        assert_eq!(plan.limits[2].key, "r:keys:acme:ci");
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
        let limit = Limit {
            name: Arc::from("tenant"),
            key: "t:a".into(),
            rate: 10.0,
            burst: 20,
        };
        let verdict = Verdict {
            exceeded: Some(Exceeded::Limit {
                name: limit.name.clone(),
            }),
            retry_after: Duration::from_millis(1500),
            states: vec![limit_state(&limit, 2_000_000)],
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
        assert_eq!(limit_state(&limit, 1_000_000).remaining, 10);
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
}
