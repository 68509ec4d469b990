//! Monthly spending budgets per tenant, or per value of a chargeback attribute (a cost centre),
//! in currency (priced with `[metering.pricing]`) or in requests.
//!
//! - Spend is counted in Redis, where quotas are (one counter per budget and UTC month, shared
//!   by every replica, kept across restarts). The request path only adds to a local tally; a
//!   background task adds the tallies to Redis every `flush_interval` and on shutdown, so no
//!   request waits for Redis and no thread is woken per request.
//! - Thresholds (50/80/100 % by default) are announced once each, cluster-wide, as
//!   `budget.threshold` webhooks: Redis's atomic add gives every flush a distinct range of
//!   totals, and only the flush whose range contains a threshold announces it. An addition
//!   whose answer is lost (a timeout after Redis applied it) is sent again as the same attempt,
//!   which Redis answers with the total it made instead of adding twice.
//! - A budget with `enforce = true` refuses the tenant's (or cost centre's) requests once it is
//!   spent: `402 budget-exhausted` with the time it resets (the next month). A replica learns of
//!   it from its own flush, so a budget may be overspent by up to one flush interval of traffic
//!   per replica.
//! - Forecasts: each budget's spend is also counted per hour (kept six weeks); every
//!   `budget_forecast_interval` a replica forecasts the rest of the month of the budgets it
//!   served ([`super::forecast`]) and, when the projection reaches the amount before the month
//!   ends, announces it once cluster-wide as a `budget.forecast_exceeds` webhook with the hour
//!   it expects the budget to run out.
//! - Amounts are counted in nano-units (10^-9 of the currency), each request's cost rounded to
//!   the nearest; reports price the events exactly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::pricing::{PriceList, Tally};
use super::UtcMonth as Month;
use crate::limits::cluster::AddOnce;
use crate::pipeline::Rejection;
pub use crate::tenancy::budgets::BudgetSpec;
use crate::tenancy::{Tenant, TenantSpec};

/// Nano-units per currency unit.
const NANO: i64 = 1_000_000_000;
/// Counters outlive their month by this much (late flushes, reports of last month).
const COUNTER_TTL: Duration = Duration::from_secs(40 * 86_400);
/// Hourly counters (the forecasts' history) are kept this long.
const HOURLY_TTL: Duration = Duration::from_secs(43 * 86_400);
/// The "hour" of spend whose hourly counter is already counted (a retried month total).
const MONTH_ONLY: i64 = -1;
/// Hours of history a forecast reads.
const FORECAST_HISTORY_HOURS: i64 = 6 * 168;

/// What a tenant's budgets need from `gateway.toml`: `[metering]` to count requests, Redis for
/// the counters, a price list for amounts, and attributes the usage events record. Empty when
/// they have it.
pub fn check_against_config(
    tenant: &TenantSpec,
    metered: bool,
    prices: Option<&PriceList>,
    shared: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    if tenant.budgets.is_empty() {
        return problems;
    }
    if !metered {
        problems.push(format!(
            "tenant `{}`: budgets count metered requests: configure `[metering]`",
            tenant.id
        ));
    }
    if !shared {
        problems.push(format!(
            "tenant `{}`: budgets are counted in Redis: set `[limits] backend = \"redis\"`",
            tenant.id
        ));
    }
    for budget in &tenant.budgets {
        if budget.amount.is_some() && prices.is_none() {
            problems.push(format!(
                "tenant `{}`, budget `{}`: an amount needs `[metering.pricing]`",
                tenant.id, budget.name
            ));
        }
        if let Some(attribute) = &budget.attribute {
            if prices.is_none_or(|p| !p.chargeback.contains(attribute)) {
                problems.push(format!(
                    "tenant `{}`, budget `{}`: `{attribute}` is not in `[metering.pricing] chargeback`",
                    tenant.id, budget.name
                ));
            }
        }
    }
    problems
}

/// One budget's counter in one month.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CounterKey {
    tenant: String,
    budget: String,
    month: u32,
}

impl CounterKey {
    fn redis_key(&self) -> String {
        format!("budget:{}:{}:{}", self.tenant, self.budget, self.month)
    }

    /// The counter of one hour (hours since the epoch).
    fn hourly_key(&self, hour: i64) -> String {
        format!("budget:{}:{}:h:{hour}", self.tenant, self.budget)
    }

    /// Set once the month's forecast overrun is announced.
    fn forecast_announced_key(&self) -> String {
        format!(
            "budget:{}:{}:{}:forecast",
            self.tenant, self.budget, self.month
        )
    }
}

/// Spend not yet added to Redis, with what a flush needs to announce thresholds.
struct Pending {
    units: i64,
    tenant: Tenant,
    budget: BudgetSpec,
    month: Month,
}

/// The spending budgets of every tenant: tallies, counters and refusals.
pub struct Budgets {
    limiter: Arc<crate::limits::Limiter>,
    webhooks: Option<crate::webhooks::Webhooks>,
    currency: parking_lot::RwLock<Option<String>>,
    /// Per budget, month and hour (since the epoch).
    pending: parking_lot::Mutex<HashMap<(CounterKey, i64), Pending>>,
    /// Month counter additions Redis did not confirm, with their attempt: retried unchanged
    /// before anything else is added to that counter.
    retries: parking_lot::Mutex<HashMap<CounterKey, (Pending, String)>>,
    /// This process, as the adder Redis remembers each counter's last attempt of, and the
    /// number of its next attempt.
    adder: String,
    attempts: AtomicU64,
    /// Enforced budgets found spent in their month (when they reset, and the total then).
    exhausted: parking_lot::RwLock<HashMap<CounterKey, Exhausted>>,
    /// Budgets this replica charged, with their month: the ones it forecasts.
    served: parking_lot::Mutex<HashMap<CounterKey, (Tenant, BudgetSpec, Month)>>,
}

impl Budgets {
    pub fn new(
        limiter: Arc<crate::limits::Limiter>,
        webhooks: Option<crate::webhooks::Webhooks>,
    ) -> Self {
        Budgets {
            limiter,
            webhooks,
            currency: parking_lot::RwLock::new(None),
            pending: parking_lot::Mutex::new(HashMap::new()),
            retries: parking_lot::Mutex::new(HashMap::new()),
            adder: uuid::Uuid::new_v4().simple().to_string(),
            attempts: AtomicU64::new(0),
            exhausted: parking_lot::RwLock::new(HashMap::new()),
            served: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Refuses a request of a spent, enforced budget (stage 6, before rate limits).
    pub fn admit(
        &self,
        tenant: &TenantSpec,
        attributes: &Map<String, Value>,
        now_secs: i64,
    ) -> Result<(), Rejection> {
        if !tenant.budgets.iter().any(|b| b.enforce) {
            return Ok(());
        }
        let Some(month) = Month::at(now_secs) else {
            return Ok(());
        };
        let exhausted = self.exhausted.read();
        if exhausted.is_empty() {
            return Ok(());
        }
        for budget in tenant
            .budgets
            .iter()
            .filter(|b| b.enforce && in_scope(b, attributes))
        {
            let key = CounterKey {
                tenant: tenant.id.clone(),
                budget: budget.name.clone(),
                month: month.key,
            };
            // Against the budget's amount now: one raised since is no longer spent.
            let spent = exhausted.get(&key).is_some_and(|exhausted| {
                limit_units(budget).is_some_and(|limit| exhausted.total >= limit)
            });
            if spent {
                return Err(Rejection::BudgetExhausted {
                    budget: budget.name.clone(),
                    resets_at: month.resets_at_rfc3339(),
                    retry_after_secs: u64::try_from(month.resets_at - now_secs).unwrap_or(1),
                });
            }
        }
        Ok(())
    }

    /// Adds a finished request to the budgets it counts towards (nothing waits for Redis).
    pub fn charge(
        &self,
        tenant: &Tenant,
        attributes: &Map<String, Value>,
        prices: Option<&PriceList>,
        tally: &Tally<'_>,
        now_secs: i64,
    ) {
        if tenant.budgets.is_empty() || tally.forwarded == 0 {
            return;
        }
        let Some(month) = Month::at(now_secs) else {
            return;
        };
        if let Some(prices) = prices {
            let mut currency = self.currency.write();
            if currency.as_deref() != Some(prices.currency.as_str()) {
                *currency = Some(prices.currency.clone());
            }
        }
        let cost = prices.map(|p| p.cost(tally));
        let mut pending = self.pending.lock();
        for budget in tenant.budgets.iter().filter(|b| in_scope(b, attributes)) {
            let units = match (&budget.amount, cost) {
                (Some(_), Some(cost)) => nano_units(cost),
                (Some(_), None) => continue,
                (None, _) => i64::try_from(tally.forwarded).unwrap_or(i64::MAX),
            };
            if units == 0 {
                continue;
            }
            let key = CounterKey {
                tenant: tenant.id.clone(),
                budget: budget.name.clone(),
                month: month.key,
            };
            pending
                .entry((key, now_secs.div_euclid(3600)))
                .or_insert_with(|| Pending {
                    units: 0,
                    tenant: tenant.clone(),
                    budget: budget.clone(),
                    month,
                })
                .units += units;
        }
    }

    /// Adds the tallies to Redis, announces thresholds and marks spent budgets. What Redis
    /// does not take stays for the next flush.
    pub async fn flush(&self) {
        let batch: Vec<((CounterKey, i64), Pending)> = self.pending.lock().drain().collect();
        // The month's counter once per budget (thresholds are judged on its total) ...
        let mut months: HashMap<CounterKey, Pending> = HashMap::new();
        for ((key, hour), spend) in batch {
            // ... and each hour's, the forecasts' history (best effort: a lost hour only
            // makes a forecast a little low).
            if hour != MONTH_ONLY {
                let hourly = self
                    .limiter
                    .add_to_counter(
                        &key.tenant,
                        &key.hourly_key(hour),
                        spend.units,
                        HOURLY_TTL,
                        None,
                    )
                    .await;
                if let Err(error) = hourly {
                    tracing::debug!(%error, tenant = key.tenant, "hourly budget counter not updated");
                }
            }
            match months.get_mut(&key) {
                Some(month) => month.units += spend.units,
                None => {
                    months.insert(key, spend);
                }
            }
        }
        // Each month counter: first the attempt that failed last time, as it was (Redis may
        // have applied it and only its answer was lost: it must not add twice); new spend only
        // once that went through, else it waits for the next flush.
        let mut retries = std::mem::take(&mut *self.retries.lock());
        let keys: Vec<CounterKey> = retries.keys().chain(months.keys()).cloned().collect();
        for key in keys {
            if let Some((spend, attempt)) = retries.remove(&key) {
                if !self.add_to_month(&key, spend, attempt).await {
                    if let Some(newer) = months.remove(&key) {
                        self.keep_for_next_flush(key, newer);
                    }
                    continue;
                }
            }
            if let Some(spend) = months.remove(&key) {
                let attempt = self.attempts.fetch_add(1, Ordering::Relaxed).to_string();
                self.add_to_month(&key, spend, attempt).await;
            }
        }
        // Budgets of months gone by are no longer refused nor forecast.
        let now = now_secs();
        self.exhausted
            .write()
            .retain(|_, exhausted| exhausted.month.resets_at > now);
        self.served
            .lock()
            .retain(|_, (_, _, month)| month.resets_at > now);
    }

    /// Adds `spend` to its month's counter once (`attempt` names the addition), then judges
    /// thresholds and exhaustion on the total; on failure keeps it to retry as it is. True
    /// when Redis took it.
    async fn add_to_month(&self, key: &CounterKey, spend: Pending, attempt: String) -> bool {
        let once = AddOnce {
            adder: &self.adder,
            attempt: &attempt,
        };
        let result = self
            .limiter
            .add_to_counter(
                &key.tenant,
                &key.redis_key(),
                spend.units,
                COUNTER_TTL,
                Some(once),
            )
            .await;
        match result {
            Ok(total) => {
                self.account(key, &spend, total);
                self.served.lock().insert(
                    key.clone(),
                    (spend.tenant.clone(), spend.budget.clone(), spend.month),
                );
                true
            }
            Err(error) => {
                tracing::warn!(%error, tenant = key.tenant, budget = key.budget, "budget spend not counted yet; retried at the next flush");
                self.retries.lock().insert(key.clone(), (spend, attempt));
                false
            }
        }
    }

    /// Keeps spend for the month's counter only (its hours are counted) for the next flush.
    fn keep_for_next_flush(&self, key: CounterKey, spend: Pending) {
        let mut pending = self.pending.lock();
        match pending.get_mut(&(key.clone(), MONTH_ONLY)) {
            Some(newer) => newer.units += spend.units,
            None => {
                pending.insert((key, MONTH_ONLY), spend);
            }
        }
    }

    /// Forecasts the rest of the month of every budget this replica served and announces,
    /// once cluster-wide, those projected to run out before the month ends.
    pub async fn forecast(&self) {
        let now = now_secs();
        let served: Vec<(CounterKey, (Tenant, BudgetSpec, Month))> = self
            .served
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, (tenant, budget, month)) in served {
            if let Err(error) = self.forecast_one(&key, &tenant, &budget, month, now).await {
                tracing::debug!(%error, tenant = key.tenant, budget = key.budget, "no budget forecast");
            }
        }
    }

    async fn forecast_one(
        &self,
        key: &CounterKey,
        tenant: &Tenant,
        budget: &BudgetSpec,
        month: Month,
        now: i64,
    ) -> Result<(), String> {
        let limit = limit_units(budget).ok_or("no amount")?;
        let this_hour = now.div_euclid(3600);
        let hours: Vec<i64> = (this_hour - FORECAST_HISTORY_HOURS..this_hour).collect();
        let mut keys: Vec<String> = hours.iter().map(|h| key.hourly_key(*h)).collect();
        keys.push(key.redis_key());
        let values = self
            .limiter
            .read_counters(&key.tenant, &keys)
            .await
            .map_err(|e| e.to_string())?;
        let spent = values.last().copied().flatten().unwrap_or(0);
        if spent >= limit {
            return Ok(());
        }
        let series: Vec<f64> = values
            .iter()
            .take(hours.len())
            .map(|v| v.unwrap_or(0) as f64)
            .collect();
        let left = usize::try_from(month.resets_at.div_euclid(3600) - this_hour).unwrap_or(0);
        // The forecast starts at the first hour with spend (hours before it are not "no use").
        let history_hours = super::forecast::since_first_use(&series).len();
        // Fitting takes tens of milliseconds: not on a thread that serves anything else.
        let forecast =
            tokio::task::spawn_blocking(move || super::forecast::forecast(&series, left, 0.9))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        let projection = super::forecast::project(spent as f64, &forecast, Some(limit as f64));
        let Some(in_hours) = projection.limit_reached_in_hours else {
            return Ok(());
        };
        let claimed = self
            .limiter
            .claim_once(&key.tenant, &key.forecast_announced_key(), COUNTER_TTL)
            .await
            .map_err(|e| e.to_string())?;
        if !claimed {
            return Ok(());
        }
        metrics::counter!(crate::telemetry::BUDGET_FORECASTS_EXCEEDING_TOTAL).increment(1);
        let Some(webhooks) = &self.webhooks else {
            return Ok(());
        };
        let expected =
            jiff::Timestamp::from_second((this_hour + i64::try_from(in_hours).unwrap_or(0)) * 3600)
                .map(|t| t.to_string())
                .unwrap_or_default();
        let (spent, projected, amount, unit) = match &budget.amount {
            Some(amount) => (
                Decimal::new(spent, 9).normalize().to_string(),
                Decimal::new(projection.total.round() as i64, 9)
                    .round_dp(6)
                    .normalize()
                    .to_string(),
                amount.clone(),
                self.currency.read().clone().unwrap_or_default(),
            ),
            None => (
                spent.to_string(),
                format!("{:.0}", projection.total),
                limit.to_string(),
                "requests".to_string(),
            ),
        };
        webhooks.emit(
            Some(tenant),
            crate::webhooks::WebhookEvent::new(
                "budget.forecast_exceeds",
                serde_json::json!({
                    "tenant": key.tenant,
                    "budget": key.budget,
                    "attribute": budget.attribute,
                    "value": budget.value,
                    "spent": spent,
                    "projected": projected,
                    "amount": amount,
                    "unit": unit,
                    "expected_exhaustion": expected,
                    "month": month.label(),
                    "resets_at": month.resets_at_rfc3339(),
                    "history_hours": history_hours,
                }),
            ),
        );
        Ok(())
    }

    /// After a flush: thresholds the new total passed, and whether the budget is spent.
    fn account(&self, key: &CounterKey, spend: &Pending, total: i64) {
        let Some(limit) = limit_units(&spend.budget) else {
            return;
        };
        let before = total - spend.units;
        let currency = self.currency.read().clone();
        for percent in &spend.budget.thresholds {
            let threshold = i128::from(limit) * i128::from(*percent);
            let crossed =
                i128::from(before) * 100 < threshold && threshold <= i128::from(total) * 100;
            if !crossed {
                continue;
            }
            metrics::counter!(crate::telemetry::BUDGET_THRESHOLDS_TOTAL).increment(1);
            if let Some(webhooks) = &self.webhooks {
                let (spent, amount, unit) = match &spend.budget.amount {
                    Some(amount) => (
                        Decimal::new(total, 9).normalize().to_string(),
                        amount.clone(),
                        currency.clone().unwrap_or_default(),
                    ),
                    None => (total.to_string(), limit.to_string(), "requests".to_string()),
                };
                webhooks.emit(
                    Some(&spend.tenant),
                    crate::webhooks::WebhookEvent::new(
                        "budget.threshold",
                        serde_json::json!({
                            "tenant": key.tenant,
                            "budget": key.budget,
                            "attribute": spend.budget.attribute,
                            "value": spend.budget.value,
                            "percent": percent,
                            "spent": spent,
                            "amount": amount,
                            "unit": unit,
                            "month": spend.month.label(),
                            "resets_at": spend.month.resets_at_rfc3339(),
                        }),
                    ),
                );
            }
        }
        if spend.budget.enforce && total >= limit {
            self.exhausted.write().insert(
                key.clone(),
                Exhausted {
                    month: spend.month,
                    total,
                },
            );
        }
    }

    /// Flushes every `flush_interval` and forecasts every `forecast_interval` until
    /// `shutdown`, then flushes once more.
    pub async fn run(
        self: Arc<Self>,
        flush_interval: Duration,
        forecast_interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut flush = tokio::time::interval(flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut forecast = tokio::time::interval(forecast_interval);
        forecast.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first forecast once something was served, not at start.
        forecast.reset();
        loop {
            tokio::select! {
                _ = flush.tick() => self.flush().await,
                _ = forecast.tick() => self.forecast().await,
                _ = shutdown.changed() => break,
            }
        }
        self.flush().await;
    }
}

/// Whether a principal with `attributes` spends from `budget`.
fn in_scope(budget: &BudgetSpec, attributes: &Map<String, Value>) -> bool {
    match (&budget.attribute, &budget.value) {
        (Some(attribute), Some(value)) => attributes
            .get(attribute)
            .and_then(super::attribute_text)
            .is_some_and(|text| text == *value),
        _ => true,
    }
}

/// A budget's size in the units it is counted in (nano-units of currency, or requests).
/// An enforced budget found spent by a flush.
struct Exhausted {
    month: Month,
    /// The month's total then (units of [`limit_units`]): the budget refuses requests while
    /// its amount is at most this, so raising it lets them through again at once.
    total: i64,
}

fn limit_units(budget: &BudgetSpec) -> Option<i64> {
    match (&budget.amount, budget.requests) {
        (Some(amount), _) => Decimal::from_str_exact(amount).ok().map(nano_units),
        (None, Some(requests)) => Some(i64::try_from(requests).unwrap_or(i64::MAX)),
        (None, None) => None,
    }
}

/// `cost` in nano-units, rounded to the nearest.
fn nano_units(cost: Decimal) -> i64 {
    (cost * Decimal::from(NANO))
        .round()
        .to_i64()
        .unwrap_or(i64::MAX)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(text: &str) -> BudgetSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn budgets_are_validated_field_by_field() {
        let fields = |budgets: Vec<BudgetSpec>| -> Vec<String> {
            crate::tenancy::budgets::validate(&budgets)
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert!(fields(vec![budget("name = \"m\"\namount = \"250.00\"")]).is_empty());
        assert_eq!(
            fields(vec![
                budget("name = \"m\"\namount = \"-1\""),
                budget("name = \"m\"\nrequests = 10\namount = \"1\""),
                budget("name = \"x y\"\nrequests = 0\nattribute = \"cost_center\""),
                budget("name = \"t\"\nrequests = 5\nthresholds = [0]"),
            ]),
            [
                "budgets[0].amount",
                "budgets[1].name",
                "budgets[1]",
                "budgets[2].name",
                "budgets[2].requests",
                "budgets[2]",
                "budgets[3].thresholds",
            ]
        );
    }

    #[test]
    fn months_reset_at_the_next_first_of_the_month_utc() {
        // 2026-12-05T21:00:00Z
        let month = Month::at(1_796_504_400).unwrap();
        assert_eq!(month.key, 202612);
        assert_eq!(month.resets_at_rfc3339(), "2027-01-01T00:00:00Z");
        assert_eq!(month.label(), "2026-12");
    }

    #[test]
    fn scope_and_units() {
        let mut attributes = Map::new();
        attributes.insert("cost_center".into(), Value::String("cc-1".into()));
        attributes.insert("floor".into(), serde_json::json!(3));
        let scoped =
            budget("name = \"b\"\nrequests = 1\nattribute = \"cost_center\"\nvalue = \"cc-1\"");
        assert!(in_scope(&scoped, &attributes));
        let other =
            budget("name = \"b\"\nrequests = 1\nattribute = \"cost_center\"\nvalue = \"cc-2\"");
        assert!(!in_scope(&other, &attributes));
        let number = budget("name = \"b\"\nrequests = 1\nattribute = \"floor\"\nvalue = \"3\"");
        assert!(in_scope(&number, &attributes));
        assert!(in_scope(&budget("name = \"b\"\nrequests = 1"), &Map::new()));
        assert_eq!(nano_units(Decimal::new(4, 4)), 400_000);
        assert_eq!(nano_units(Decimal::new(13491, 13)), 1);
    }
}
