//! Stage 6: does the request fit in its tenant's rate limits and quotas? The limits come from
//! the tenant's tier, its own overrides and the configured rules (see [`crate::limits`]).
//! A request fits in all of them or takes from none; anonymous callers are charged to budgets
//! of their own (per tenant and per client address), never to the tenant's.

use super::Rejection;
use crate::identity::Principal;
use crate::limits::{Caller, DecidedBy, Exceeded, Limiter};
use crate::request_metrics::StaticCounters;
use crate::tenancy::TenantSpec;

/// `gateway_ratelimit_decisions_total{outcome,decided_by}`.
static DECISIONS: StaticCounters<2> = StaticCounters::new(
    crate::telemetry::RATELIMIT_DECISIONS_TOTAL,
    ["outcome", "decided_by"],
);

/// What stage 6 reads.
pub struct LimitRequest<'a> {
    pub tenant: &'a TenantSpec,
    pub principal: &'a Principal,
    /// Whose budgets: see [`Caller::of`].
    pub caller: Caller,
    /// The Cedar action of the request, when the route table named one.
    pub action: Option<&'a str>,
    /// Unix time in seconds (quota windows).
    pub now_secs: i64,
}

/// Output of stage 6 for an admitted request: the headers the response carries, and the quota
/// thresholds this very request crossed (for webhooks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WithinLimits {
    pub headers: Vec<(&'static str, String)>,
    pub crossed: Vec<QuotaCrossing>,
}

/// A quota reaching 80 % or 100 % of its limit with this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCrossing {
    pub quota: &'static str,
    /// 80 or 100.
    pub percent: u8,
    pub used: u64,
    pub limit: u64,
}

/// Thresholds `used` lands on exactly. Counts from Redis (and the local backend) are exact
/// per request, so each threshold is crossed by exactly one request cluster-wide.
fn crossings(quota: &'static str, used: u64, limit: u64) -> Vec<QuotaCrossing> {
    [80u8, 100]
        .into_iter()
        .filter(|p| used == limit.saturating_mul(u64::from(*p)).div_ceil(100))
        .map(|percent| QuotaCrossing {
            quota,
            percent,
            used,
            limit,
        })
        .collect()
}

/// Runs stage 6.
pub async fn limit(
    request: &LimitRequest<'_>,
    limiter: &Limiter,
) -> Result<WithinLimits, Rejection> {
    let plan = limiter.table.plan(
        request.tenant,
        request.principal,
        request.caller,
        request.action,
        request.now_secs,
    );
    if plan.is_empty() {
        return Ok(WithinLimits::default());
    }
    let verdict = limiter.decide(&plan).await;
    let by = match verdict.decided_by {
        DecidedBy::Local => "local",
        DecidedBy::Redis => "redis",
        DecidedBy::Fallback(mode) => mode.label(),
    };
    let outcome = match &verdict.exceeded {
        None => "admitted",
        Some(Exceeded::Limit { .. }) => "limited",
        Some(Exceeded::Quota { .. }) => "quota-exhausted",
        Some(Exceeded::Unavailable) => "unavailable",
    };
    DECISIONS.increment([outcome, by], 1);
    let headers = verdict.headers();
    // Fallback counts are one replica's share: thresholds are only reported from exact counts.
    let exact = !matches!(verdict.decided_by, DecidedBy::Fallback(_));
    let crossed = if verdict.exceeded.is_none() && exact {
        plan.quotas
            .iter()
            .filter_map(|q| {
                let state = verdict.states.iter().find(|s| &*s.name == q.name)?;
                Some(crossings(
                    q.name,
                    q.limit.saturating_sub(state.remaining),
                    q.limit,
                ))
            })
            .flatten()
            .collect()
    } else {
        Vec::new()
    };
    match verdict.exceeded {
        None => Ok(WithinLimits { headers, crossed }),
        Some(Exceeded::Limit { name }) => Err(Rejection::RateLimited {
            limit: name.to_string(),
            headers,
        }),
        Some(Exceeded::Quota { name }) => Err(Rejection::QuotaExhausted {
            quota: name,
            headers,
        }),
        Some(Exceeded::Unavailable) => Err(Rejection::LimiterUnavailable { headers }),
    }
}

/// The limits and quotas a request would be checked against, in words (for `explain`, which
/// spends no budget).
pub fn describe(plan: &crate::limits::LimitPlan) -> String {
    if plan.is_empty() {
        return "no rate limit or quota applies".to_string();
    }
    let limits = plan
        .limits
        .iter()
        .map(|l| format!("{} {}/s burst {}", l.name, l.rate, l.burst));
    let quotas = plan
        .quotas
        .iter()
        .map(|q| format!("{} quota {}", q.name, q.limit));
    let all: Vec<String> = limits.chain(quotas).collect();
    format!(
        "not spent by explain; the request is checked against: {}",
        all.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::limits::TierConfig;

    #[test]
    fn thresholds_are_crossed_once_each() {
        let hits: Vec<(u64, u8)> = (1..=12)
            .flat_map(|used| crossings("monthly", used, 10))
            .map(|c| (c.used, c.percent))
            .collect();
        assert_eq!(hits, [(8, 80), (10, 100)]);
        assert_eq!(
            crossings("daily", 1, 1).len(),
            2,
            "a quota of one crosses both at once"
        );
    }

    #[tokio::test]
    async fn refuses_with_429_and_draft_headers_once_the_burst_is_used() {
        let mut tiers = BTreeMap::new();
        tiers.insert(
            "free".to_string(),
            TierConfig {
                requests_per_second: Some(1.0),
                burst: Some(3),
                ..TierConfig::default()
            },
        );
        let limiter = Limiter::new(None, &tiers);
        let tenant = TenantSpec::new("acme");
        let principal = Principal::anonymous();
        let request = LimitRequest {
            tenant: &tenant,
            principal: &principal,
            caller: Caller::Known,
            action: None,
            now_secs: 0,
        };
        for remaining in [2, 1, 0] {
            let ok = limit(&request, &limiter).await.unwrap();
            assert_eq!(
                ok.headers[0],
                ("ratelimit-policy", "\"tenant\";q=3;w=3".into())
            );
            assert!(
                ok.headers[1]
                    .1
                    .starts_with(&format!("\"tenant\";r={remaining};")),
                "{:?}",
                ok.headers
            );
        }
        let refused = limit(&request, &limiter).await.unwrap_err();
        assert_eq!(refused.status(), 429);
        let headers = refused.response_headers();
        assert!(
            headers.iter().any(|(n, v)| *n == "retry-after" && v == "1"),
            "{headers:?}"
        );
        // Another tenant has its own budget.
        let other = TenantSpec::new("globex");
        let request = LimitRequest {
            tenant: &other,
            ..request
        };
        assert!(limit(&request, &limiter).await.is_ok());
    }
}
