//! In-process limits: one GCRA cell per limit key and one count per quota key, kept in bounded
//! caches.
//!
//! A request is decided over all of its limits and quotas at once: every cell it falls under is
//! locked (in one global order, so concurrent requests sharing cells cannot deadlock), all are
//! checked, and only when every one admits is every one taken from. A refused request takes
//! nothing, exactly as the Redis script of [`super::cluster`] does, so both backends decide the
//! same.
//!
//! Why not the `governor` crate (used here before): its cells only offer "check and take"
//! (`check`, `check_n`), with no way to look at a cell without taking from it and no way to
//! give a cell back, so a request under several limits could only take from the first ones
//! before a later one refused, and each refused request drained the shared budgets before it
//! (issue 13.3). No maintained crate offers an all-or-nothing decision over several GCRA
//! cells; the algorithm itself is a few lines (one theoretical arrival time per cell), written
//! here with checked arithmetic.
//!
//! Quotas kept here are counted in memory: only the `local-share` fallback counts them, what
//! this replica admitted since Redis last told the count (validation sends every quota, a
//! tier's or a tenant's own, to Redis).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use super::{
    limit_state, quota_state, DecidedBy, Exceeded, Limit, LimitPlan, PolicyState, Verdict,
};

/// One GCRA budget: its parameters and its theoretical arrival time (TAT, nanoseconds since the
/// limiter's epoch; the budget is booked up to there).
struct Gcra {
    emission_ns: u64,
    tolerance_ns: u64,
    tat: Mutex<u64>,
}

/// Quota use as this replica knows it.
#[derive(Default)]
struct QuotaCount {
    /// The shared count Redis last reported.
    shared: u64,
    /// Admitted here since then.
    local: u64,
}

pub struct LocalLimiter {
    cells: Cache<String, Arc<Gcra>>,
    quotas: Cache<String, Arc<Mutex<QuotaCount>>>,
    /// Each limit is divided by this (the replica count under `local-share`, else 1).
    share: u32,
    epoch: Instant,
}

/// Locks a cell; a poisoned lock still holds a consistent number (nothing panics while holding
/// one), so its value is used.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LocalLimiter {
    pub fn new(capacity: usize, share: u32) -> Self {
        LocalLimiter {
            cells: Cache::new(capacity.max(16)),
            quotas: Cache::new((capacity / 4).max(16)),
            share: share.max(1),
            epoch: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        // u64 nanoseconds last 584 years; saturate rather than wrap.
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// This replica's share of `limit` (all of it unless `local-share` divides it).
    #[allow(clippy::float_arithmetic)] // divides a validated rate by a positive count
    fn shared_limit(&self, limit: &Limit) -> Limit {
        Limit::new(
            limit.name.clone(),
            String::new(),
            limit.rate / f64::from(self.share),
            // Rounded up: a share's burst of 1 loses rate to every request arriving a little
            // late (GCRA without tolerance), so shares rounded down fell short of the limit.
            limit.burst.div_ceil(self.share),
        )
    }

    /// The budget of `limit`; replaced when an override changed its rate or burst (a changed
    /// limit starts a new budget).
    fn cell(&self, limit: &Limit) -> Arc<Gcra> {
        let share = self.shared_limit(limit);
        let (emission_ns, tolerance_ns) = (share.emission_ns(), share.tolerance_ns());
        let fresh = || Gcra {
            emission_ns,
            tolerance_ns,
            tat: Mutex::new(0),
        };
        // One cell per key even when the first requests of a key arrive together.
        let cell = self
            .cells
            .get_or_insert_with(limit.key.as_str(), || {
                Ok::<_, std::convert::Infallible>(Arc::new(fresh()))
            })
            .unwrap_or_else(|never| match never {});
        if cell.emission_ns == emission_ns && cell.tolerance_ns == tolerance_ns {
            return cell;
        }
        let cell = Arc::new(fresh());
        self.cells.insert(limit.key.clone(), cell.clone());
        cell
    }

    fn quota(&self, key: &str) -> Arc<Mutex<QuotaCount>> {
        self.quotas
            .get_or_insert_with(key, || -> Result<_, std::convert::Infallible> {
                Ok(Arc::new(Mutex::new(QuotaCount::default())))
            })
            .unwrap_or_else(|never| match never {})
    }

    /// Decides a plan in process: admitted by every limit and quota, or taking from none.
    pub fn decide(&self, plan: &LimitPlan, decided_by: DecidedBy) -> Verdict {
        let cells: Vec<Arc<Gcra>> = plan.limits.iter().map(|l| self.cell(l)).collect();
        let counts: Vec<Arc<Mutex<QuotaCount>>> =
            plan.quotas.iter().map(|q| self.quota(&q.key)).collect();
        // Lock limits before quotas, each group in address order: one global order.
        let mut tats = LockedSet::lock(&cells, |c| &c.tat);
        let mut quota_counts = LockedSet::lock(&counts, |c| c);
        let now = self.now_ns();

        // Check all.
        let mut booked = Vec::with_capacity(cells.len());
        let mut retry_ns = 0u64;
        let mut refusing = None;
        for (i, cell) in cells.iter().enumerate() {
            let tat = (*tats.get(i)).max(now);
            let new_tat = tat.saturating_add(cell.emission_ns);
            // `new_tat >= now`: the backlog after admitting this request.
            let backlog = new_tat - now;
            let wait = backlog.saturating_sub(cell.tolerance_ns);
            if wait > 0 {
                retry_ns = retry_ns.max(wait);
                refusing.get_or_insert(i);
            }
            booked.push((tat - now, new_tat, wait));
        }
        let mut exhausted = None;
        let mut allowances = Vec::with_capacity(counts.len());
        for (j, quota) in plan.quotas.iter().enumerate() {
            let count = quota_counts.get(j);
            let allowance = quota.limit.saturating_sub(count.shared) / u64::from(self.share);
            if count.local >= allowance {
                exhausted.get_or_insert(j);
            }
            allowances.push(allowance);
        }

        let mut states = Vec::with_capacity(plan.limits.len() + plan.quotas.len());
        let admitted = refusing.is_none() && exhausted.is_none();
        // Then take from all, or from none.
        let decided = plan.limits.iter().zip(&cells).zip(&booked).enumerate();
        for (i, ((limit, share), (backlog, new_tat, wait))) in decided {
            let backlog = if admitted {
                *tats.get(i) = *new_tat;
                *new_tat - now
            } else {
                *backlog
            };
            let mut state = limit_state(limit, backlog);
            // What this replica may still admit (all of it unless the limit is shared).
            state.remaining =
                (share.tolerance_ns.saturating_sub(backlog) / share.emission_ns).min(state.quota);
            if !admitted && *wait > 0 {
                state.remaining = 0;
                state.reset_secs = Duration::from_nanos(*wait).as_secs().max(1);
            }
            states.push(state);
        }
        for (j, (quota, allowance)) in plan.quotas.iter().zip(&allowances).enumerate() {
            let count = quota_counts.get(j);
            if admitted {
                count.local = count.local.saturating_add(1);
            }
            let mut state: PolicyState = quota_state(quota, 0);
            // What this replica may still admit (all of it unless the quota is shared).
            state.remaining = allowance.saturating_sub(count.local);
            states.push(state);
        }
        drop(quota_counts);
        drop(tats);

        // A quota names the refusal before a limit, as in the Redis script.
        let (exceeded, retry_after) = match (exhausted.and_then(|j| plan.quotas.get(j)), refusing) {
            (Some(quota), _) => (Some(Exceeded::Quota { name: quota.name }), quota.resets_in),
            (None, Some(i)) => (
                plan.limits.get(i).map(|limit| Exceeded::Limit {
                    name: limit.name.clone(),
                }),
                Duration::from_nanos(retry_ns),
            ),
            (None, None) => (None, Duration::ZERO),
        };
        Verdict {
            exceeded,
            retry_after,
            states,
            decided_by,
        }
    }

    /// Keeps the shared quota counts Redis reported, so a fallback starts from them.
    pub fn remember_quotas(&self, plan: &LimitPlan, verdict: &Verdict) {
        for quota in &plan.quotas {
            if let Some(state) = verdict.states.iter().find(|s| &*s.name == quota.name) {
                let count = self.quota(&quota.key);
                let mut count = lock(&count);
                count.shared = quota.limit.saturating_sub(state.remaining);
                count.local = 0;
            }
        }
    }
}

/// The locks of a request's cells, held together: taken in address order (a cell that appears
/// twice is locked once), looked up by the cell's position in the request.
struct LockedSet<'a, T> {
    guards: Vec<MutexGuard<'a, T>>,
    /// Position in the request → index into `guards`.
    slot: Vec<usize>,
}

// Indexes are positions of the request's own cells: `slot` has one entry per cell, each below
// `guards.len()`, by construction in `lock`.
#[allow(clippy::indexing_slicing)]
impl<'a, T> LockedSet<'a, T> {
    fn lock<C>(cells: &'a [Arc<C>], mutex: impl Fn(&'a C) -> &'a Mutex<T>) -> Self {
        let mut order: Vec<usize> = (0..cells.len()).collect();
        order.sort_by_key(|&i| Arc::as_ptr(&cells[i]) as usize);
        let mut guards = Vec::with_capacity(cells.len());
        let mut slot = vec![0; cells.len()];
        let mut last = None;
        for i in order {
            let ptr = Arc::as_ptr(&cells[i]);
            if last != Some(ptr) {
                guards.push(lock(mutex(&*cells[i])));
                last = Some(ptr);
            }
            slot[i] = guards.len() - 1;
        }
        LockedSet { guards, slot }
    }

    /// The locked value of the cell at position `i` of the request.
    fn get(&mut self, i: usize) -> &mut T {
        &mut self.guards[self.slot[i]]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::limits::{quota_state, Limit, Quota};

    fn plan(rate: f64, burst: u32) -> LimitPlan {
        LimitPlan {
            tenant: "acme".into(),
            limits: vec![Limit::new(
                Arc::from("tenant"),
                "t:acme".into(),
                rate,
                burst,
            )],
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
    fn a_refused_request_takes_from_no_limit() {
        let limiter = LocalLimiter::new(100, 1);
        let principal = Limit::new(Arc::from("principal"), "p:acme:eve".into(), 0.001, 2);
        let tenant = Limit::new(Arc::from("tenant"), "t:acme".into(), 0.001, 5);
        let eve = LimitPlan {
            tenant: "acme".into(),
            limits: vec![tenant.clone(), principal],
            quotas: Vec::new(),
        };
        let refusals: Vec<Option<Exceeded>> = (0..10)
            .map(|_| limiter.decide(&eve, DecidedBy::Local).exceeded)
            .collect();
        assert!(refusals[..2].iter().all(Option::is_none));
        let principal_name: Arc<str> = Arc::from("principal");
        assert!(refusals[2..].iter().all(|r| *r
            == Some(Exceeded::Limit {
                name: principal_name.clone()
            })));
        // The tenant's 5 minus eve's 2 are left for bob.
        let bob = LimitPlan {
            tenant: "acme".into(),
            limits: vec![
                tenant,
                Limit::new(Arc::from("principal"), "p:acme:bob".into(), 0.001, 5),
            ],
            quotas: Vec::new(),
        };
        let admitted = (0..5)
            .filter(|_| limiter.decide(&bob, DecidedBy::Local).exceeded.is_none())
            .count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn a_key_twice_in_one_plan_is_locked_once() {
        let limiter = LocalLimiter::new(100, 1);
        let limit = Limit::new(Arc::from("x"), "r:x".into(), 0.001, 3);
        let plan = LimitPlan {
            tenant: "acme".into(),
            limits: vec![limit.clone(), limit],
            quotas: Vec::new(),
        };
        let admitted = (0..5)
            .filter(|_| limiter.decide(&plan, DecidedBy::Local).exceeded.is_none())
            .count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn concurrent_requests_never_exceed_any_limit() {
        let limiter = Arc::new(LocalLimiter::new(1000, 1));
        let tenant = Limit::new(Arc::from("tenant"), "t:acme".into(), 0.001, 100);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let limiter = limiter.clone();
                let tenant = tenant.clone();
                std::thread::spawn(move || {
                    let plan = LimitPlan {
                        tenant: "acme".into(),
                        limits: vec![
                            tenant,
                            Limit::new(Arc::from("principal"), format!("p:{t}"), 0.001, 20),
                        ],
                        quotas: Vec::new(),
                    };
                    (0..200)
                        .filter(|_| limiter.decide(&plan, DecidedBy::Local).exceeded.is_none())
                        .count()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        // 8 principals × 20 = 160 wanted, the tenant allows exactly 100.
        assert_eq!(admitted, 100);
    }

    #[test]
    fn local_share_rounds_bursts_up() {
        let limiter = LocalLimiter::new(100, 3);
        // A burst of 5 over 3 replicas: 2 each (6 in all), not 1 (3 in all, and no tolerance
        // for a request arriving late).
        let admitted = (0..10)
            .filter(|_| {
                limiter
                    .decide(&plan(0.001, 5), DecidedBy::Local)
                    .exceeded
                    .is_none()
            })
            .count();
        assert_eq!(admitted, 2);
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
