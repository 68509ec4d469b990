//! In-process limits: one `governor` GCRA cell per limit key, kept in a bounded cache.
//!
//! Limits of one request are checked in order; when a later one refuses, the cells the earlier
//! ones gave are not returned (governor cannot refund). That errs on the strict side: no limit
//! ever admits more than its budget.
//!
//! Quotas kept here are counted in memory: the `local` backend counts only tenant overrides
//! (configuration validation sends tier quotas to Redis), and the `local-share` fallback counts
//! what this replica admitted since Redis last told the count.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota as GovernorQuota, RateLimiter};
use quick_cache::sync::Cache;

use super::{limit_state, quota_state, DecidedBy, Exceeded, LimitPlan, PolicyState, Verdict};

type Cell = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Quota use as this replica knows it.
#[derive(Default)]
struct QuotaCount {
    /// The shared count Redis last reported.
    shared: AtomicU64,
    /// Admitted here since then.
    local: AtomicU64,
}

/// A cell with the parameters it was made for.
struct Budget {
    rate: f64,
    burst: u32,
    cell: Cell,
}

pub struct LocalLimiter {
    cells: Cache<String, Arc<Budget>>,
    quotas: Cache<String, Arc<QuotaCount>>,
    /// Each limit is divided by this (the replica count under `local-share`, else 1).
    share: u32,
    clock: DefaultClock,
}

impl LocalLimiter {
    pub fn new(capacity: usize, share: u32) -> Self {
        LocalLimiter {
            cells: Cache::new(capacity.max(16)),
            quotas: Cache::new((capacity / 4).max(16)),
            share: share.max(1),
            clock: DefaultClock::default(),
        }
    }

    /// The budget of `key`; looked up without allocating, replaced when an override changed
    /// its rate or burst (a changed limit starts a new budget).
    fn cell(&self, key: &str, rate: f64, burst: u32) -> Arc<Budget> {
        let rate = rate / f64::from(self.share);
        let burst = (burst / self.share).max(1);
        if let Some(budget) = self.cells.get(key) {
            if budget.rate == rate && budget.burst == burst {
                return budget;
            }
        }
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = GovernorQuota::with_period(period)
            .unwrap_or_else(|| GovernorQuota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let budget = Arc::new(Budget {
            rate,
            burst,
            cell: RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
        });
        self.cells.insert(key.to_string(), budget.clone());
        budget
    }

    fn quota(&self, key: &str) -> Arc<QuotaCount> {
        self.quotas
            .get_or_insert_with(key, || -> Result<_, std::convert::Infallible> {
                Ok(Arc::new(QuotaCount::default()))
            })
            .unwrap_or_else(|never| match never {})
    }

    /// Decides a plan in process.
    pub fn decide(&self, plan: &LimitPlan, decided_by: DecidedBy) -> Verdict {
        let mut states = Vec::with_capacity(plan.limits.len() + plan.quotas.len());
        // Quotas first: a request refused by its quota uses no rate budget.
        let mut counts = Vec::with_capacity(plan.quotas.len());
        for quota in &plan.quotas {
            let count = self.quota(&quota.key);
            let shared = count.shared.load(Ordering::Relaxed);
            let local = count.local.load(Ordering::Relaxed);
            let allowance = quota.limit.saturating_sub(shared) / u64::from(self.share);
            if local >= allowance {
                let mut state = quota_state(quota, quota.limit);
                state.remaining = 0;
                states.push(state);
                return Verdict {
                    exceeded: Some(Exceeded::Quota { name: quota.name }),
                    retry_after: quota.resets_in,
                    states,
                    decided_by,
                };
            }
            counts.push((count, local, allowance));
        }
        for limit in &plan.limits {
            let budget = self.cell(&limit.key, limit.rate, limit.burst);
            match budget.cell.check() {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    let used = budget.burst.saturating_sub(remaining);
                    let backlog_us = (f64::from(used) / budget.rate * 1e6) as i64;
                    let mut state = limit_state(limit, backlog_us);
                    state.remaining = u64::from(remaining);
                    states.push(state);
                }
                Err(not_until) => {
                    let retry_after = not_until.wait_time_from(self.clock.now());
                    let mut state = limit_state(limit, 0);
                    state.remaining = 0;
                    state.reset_secs = retry_after.as_secs().max(1);
                    states.push(state);
                    return Verdict {
                        exceeded: Some(Exceeded::Limit {
                            name: limit.name.clone(),
                        }),
                        retry_after,
                        states,
                        decided_by,
                    };
                }
            }
        }
        for ((count, local, allowance), quota) in counts.into_iter().zip(&plan.quotas) {
            count.local.fetch_add(1, Ordering::Relaxed);
            let mut state: PolicyState = quota_state(quota, 0);
            // What this replica may still admit (all of it unless the quota is shared).
            state.remaining = allowance.saturating_sub(local + 1);
            states.push(state);
        }
        Verdict {
            exceeded: None,
            retry_after: Duration::ZERO,
            states,
            decided_by,
        }
    }

    /// Keeps the shared quota counts Redis reported, so a fallback starts from them.
    pub fn remember_quotas(&self, plan: &LimitPlan, verdict: &Verdict) {
        for quota in &plan.quotas {
            if let Some(state) = verdict.states.iter().find(|s| &*s.name == quota.name) {
                let count = self.quota(&quota.key);
                count
                    .shared
                    .store(quota.limit - state.remaining, Ordering::Relaxed);
                count.local.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::limits::{Limit, Quota};

    fn plan(rate: f64, burst: u32) -> LimitPlan {
        LimitPlan {
            limits: vec![Limit {
                name: Arc::from("tenant"),
                key: "t:acme".into(),
                rate,
                burst,
            }],
            quotas: Vec::new(),
        }
    }

    #[test]
    fn admits_the_burst_then_the_rate() {
        let limiter = LocalLimiter::new(100, 1);
        let plan = plan(10.0, 20);
        let started = Instant::now();
        let mut admitted = 0u32;
        let mut refusal = None;
        for _ in 0..100 {
            let v = limiter.decide(&plan, DecidedBy::Local);
            match v.exceeded {
                None => admitted += 1,
                Some(_) => refusal = Some(v),
            }
        }
        // GCRA bound: burst + rate × elapsed (the loop takes far less than 100 ms).
        let bound = 20 + (10.0 * started.elapsed().as_secs_f64()).ceil() as u32;
        assert!((20..=bound).contains(&admitted), "{admitted} > {bound}");
        let refusal = refusal.expect("some were refused");
        assert!(refusal.retry_after > Duration::ZERO);
        assert!(refusal.retry_after <= Duration::from_millis(100));
        assert_eq!(refusal.states[0].remaining, 0);
    }

    #[test]
    fn local_share_divides_limits_and_quota_left() {
        let limiter = LocalLimiter::new(100, 4);
        let mut plan = plan(1000.0, 400);
        plan.quotas.push(Quota {
            name: "daily",
            key: "q:d:acme:1".into(),
            limit: 100,
            window: Duration::from_secs(86_400),
            resets_in: Duration::from_secs(600),
        });
        limiter.remember_quotas(
            &plan,
            &Verdict {
                exceeded: None,
                retry_after: Duration::ZERO,
                states: vec![quota_state(&plan.quotas[0], 60)],
                decided_by: DecidedBy::Redis,
            },
        );
        // 40 left in the day, a quarter of it here: 10 (the rate budget, 100 here, allows more).
        let admitted = (0..50)
            .filter(|_| limiter.decide(&plan, DecidedBy::Local).exceeded.is_none())
            .count();
        assert_eq!(admitted, 10);
        let refused = limiter.decide(&plan, DecidedBy::Local);
        assert_eq!(refused.exceeded, Some(Exceeded::Quota { name: "daily" }));
        assert_eq!(refused.retry_after, Duration::from_secs(600));
    }
}
