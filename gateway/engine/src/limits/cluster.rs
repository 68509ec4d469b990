//! Cluster-wide limits in Redis: one Lua script call per request checks every limit and quota
//! of the request and, only when all of them admit, takes from all of them — atomically, in one
//! round trip, with Redis's clock (replicas' clocks do not matter).
//!
//! The connection is one multiplexed connection (concurrent requests pipeline on it). When
//! Redis fails or is slower than `redis_timeout`, it is marked down: the fallback decides
//! without waiting for Redis until `redis_retry_interval` has passed, then the next request
//! tries Redis again. State changes are logged and exported as
//! `gateway_ratelimit_redis_up`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use tokio::sync::Mutex;

use super::{
    limit_state, quota_state, DecidedBy, Exceeded, Limit, LimitPlan, LimiterError, LimitsConfig,
    Verdict,
};

/// KEYS: limit keys, then quota keys. ARGV: number of limits; per limit its emission interval
/// and tolerance (µs); per quota its limit and time to live (seconds; relative, so the clocks of
/// Redis and the replicas need not agree).
/// Returns: admitted (1/0), retry after (µs), index of the exhausted quota (0 = none), then per
/// limit its theoretical arrival time minus now (µs), then per quota its count.
const GCRA_SCRIPT: &str = r#"
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local retry = 0
local tats = {}
for i = 1, n do
  local emission = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + emission
  local wait = new_tat - tolerance - now
  if wait > 0 then
    if wait > retry then retry = wait end
    tats[i] = tat
  else
    tats[i] = new_tat
  end
end
local base = 2 * n + 2
local nq = #KEYS - n
local counts = {}
local exhausted = 0
for j = 1, nq do
  local limit = tonumber(ARGV[base + 2 * (j - 1)])
  counts[j] = tonumber(redis.call('GET', KEYS[n + j]) or '0')
  if counts[j] >= limit and exhausted == 0 then exhausted = j end
end
local admitted = 0
if retry == 0 and exhausted == 0 then
  admitted = 1
  for i = 1, n do
    redis.call('SET', KEYS[i], tats[i], 'PX', math.floor((tats[i] - now) / 1000) + 1)
  end
  for j = 1, nq do
    counts[j] = redis.call('INCR', KEYS[n + j])
    if counts[j] == 1 then
      redis.call('EXPIRE', KEYS[n + j], ARGV[base + 2 * (j - 1) + 1])
    end
  end
end
local out = {admitted, retry, exhausted}
for i = 1, n do out[#out + 1] = tats[i] - now end
for j = 1, nq do out[#out + 1] = counts[j] end
return out
"#;

pub struct ClusterLimiter {
    client: Client,
    prefix: String,
    timeout: Duration,
    retry_interval: Duration,
    script: Script,
    connection: Mutex<Option<MultiplexedConnection>>,
    /// Redis answered last time (or has not been tried yet).
    up: AtomicBool,
    /// While down: when Redis may be tried again (µs since `epoch`).
    retry_at_us: AtomicU64,
    epoch: Instant,
}

impl ClusterLimiter {
    /// `None` when the URL does not parse (validation reports that before).
    pub fn new(config: &LimitsConfig) -> Option<Self> {
        let client = Client::open(config.redis_url.as_deref()?).ok()?;
        metrics::gauge!(crate::telemetry::RATELIMIT_REDIS_UP).set(1.0);
        Some(ClusterLimiter {
            client,
            prefix: config.key_prefix.clone(),
            timeout: config.redis_timeout,
            retry_interval: config.redis_retry_interval,
            script: Script::new(GCRA_SCRIPT),
            connection: Mutex::new(None),
            up: AtomicBool::new(true),
            retry_at_us: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn retry_interval(&self) -> Duration {
        self.retry_interval
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A connection, made on first use on the runtime that serves requests (a connection's
    /// driver task lives on the runtime that made it).
    async fn connection(&self) -> Result<MultiplexedConnection, LimiterError> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(self.timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// One decision through Redis; an error means the fallback must decide.
    pub async fn decide(&self, plan: &LimitPlan) -> Result<Verdict, LimiterError> {
        if !self.up.load(Ordering::Acquire) {
            let retry_at = self.retry_at_us.load(Ordering::Acquire);
            let now = self.now_us();
            // One request per interval probes Redis; the others go to the fallback at once.
            if now < retry_at
                || self
                    .retry_at_us
                    .compare_exchange(
                        retry_at,
                        now + self.retry_interval.as_micros() as u64,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_err()
            {
                return Err(LimiterError::Down);
            }
        }
        let result = tokio::time::timeout(self.timeout, self.call(plan))
            .await
            .unwrap_or(Err(LimiterError::Timeout(self.timeout)));
        match &result {
            Ok(_) => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    metrics::gauge!(crate::telemetry::RATELIMIT_REDIS_UP).set(1.0);
                    tracing::warn!("rate limits: Redis answers again; cluster-wide limits resume");
                }
            }
            Err(error) => {
                self.retry_at_us.store(
                    self.now_us() + self.retry_interval.as_micros() as u64,
                    Ordering::Release,
                );
                if self.up.swap(false, Ordering::AcqRel) {
                    metrics::gauge!(crate::telemetry::RATELIMIT_REDIS_UP).set(0.0);
                    tracing::error!(%error, "rate limits: Redis unavailable; the fallback decides");
                }
                // A broken connection is replaced on the next try.
                if matches!(error, LimiterError::Redis(e) if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
                    || matches!(error, LimiterError::Timeout(_))
                {
                    *self.connection.lock().await = None;
                }
            }
        }
        result
    }

    async fn call(&self, plan: &LimitPlan) -> Result<Verdict, LimiterError> {
        let mut conn = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        for limit in &plan.limits {
            invocation.key(format!("{}:{}", self.prefix, limit.key));
        }
        for quota in &plan.quotas {
            invocation.key(format!("{}:{}", self.prefix, quota.key));
        }
        invocation.arg(plan.limits.len());
        for limit in &plan.limits {
            // Bounded limits: at most 10^9 µs and 10^15 µs, exact in Lua's numbers.
            let emission = emission_us(limit);
            invocation
                .arg(emission)
                .arg(emission.saturating_mul(u64::from(limit.burst)));
        }
        for quota in &plan.quotas {
            // Kept an hour past the window, so a replica with a late clock does not restart a
            // count (the window is part of the key).
            let time_to_live = quota.resets_in + Duration::from_secs(3600);
            invocation.arg(quota.limit).arg(time_to_live.as_secs());
        }
        let reply: Vec<i64> = invocation.invoke_async(&mut conn).await?;
        verdict(plan, &reply)
    }
}

/// Time between two cells in µs, as the script counts (at least 1).
fn emission_us(limit: &Limit) -> u64 {
    (limit.emission_ns() / 1000).max(1)
}

/// The verdict a script reply stands for. The reply is outside data: its shape is checked and
/// nothing is indexed with a number it carries.
fn verdict(plan: &LimitPlan, reply: &[i64]) -> Result<Verdict, LimiterError> {
    let [admitted, retry_us, exhausted, rest @ ..] = reply else {
        return Err(LimiterError::Reply(format!(
            "{} values, expected at least 3",
            reply.len()
        )));
    };
    let (tats, counts) = rest
        .split_at_checked(plan.limits.len())
        .filter(|(_, counts)| counts.len() == plan.quotas.len())
        .ok_or_else(|| {
            LimiterError::Reply(format!(
                "{} values, expected {}",
                reply.len(),
                3 + plan.limits.len() + plan.quotas.len()
            ))
        })?;
    let backlog_ns = |tat_us: i64| u64::try_from(tat_us).unwrap_or(0).saturating_mul(1000);
    let mut states = Vec::with_capacity(plan.limits.len() + plan.quotas.len());
    for (limit, tat) in plan.limits.iter().zip(tats) {
        states.push(limit_state(limit, backlog_ns(*tat)));
    }
    for (quota, count) in plan.quotas.iter().zip(counts) {
        states.push(quota_state(quota, u64::try_from(*count).unwrap_or(0)));
    }
    let (exceeded, retry_after) = if *admitted == 1 {
        (None, Duration::ZERO)
    } else if *exhausted > 0 {
        // 1-based index of the exhausted quota.
        let quota = usize::try_from(*exhausted - 1)
            .ok()
            .and_then(|j| plan.quotas.get(j))
            .ok_or_else(|| {
                LimiterError::Reply(format!(
                    "exhausted quota {exhausted} of {}",
                    plan.quotas.len()
                ))
            })?;
        (Some(Exceeded::Quota { name: quota.name }), quota.resets_in)
    } else {
        // The first limit without room names the refusal (the script found one).
        let refusing = plan
            .limits
            .iter()
            .zip(tats)
            .find(|(limit, tat)| {
                let emission = emission_us(limit);
                let backlog = u64::try_from(**tat).unwrap_or(0).saturating_add(emission);
                backlog > emission.saturating_mul(u64::from(limit.burst))
            })
            .map(|(limit, _)| limit.name.clone())
            .ok_or_else(|| LimiterError::Reply("refused without a limit out of room".into()))?;
        for state in states.iter_mut().filter(|s| s.name == refusing) {
            state.remaining = 0;
        }
        (
            Some(Exceeded::Limit { name: refusing }),
            Duration::from_micros(u64::try_from(*retry_us).unwrap_or(0)),
        )
    };
    Ok(Verdict {
        exceeded,
        retry_after,
        states,
        decided_by: DecidedBy::Redis,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::limits::Quota;

    fn plan() -> LimitPlan {
        LimitPlan {
            limits: vec![Limit::new(Arc::from("tenant"), "t:a".into(), 1.0, 2)],
            quotas: vec![Quota {
                name: "daily",
                key: "q:d:a:1".into(),
                limit: 5,
                window: Duration::from_secs(86_400),
                resets_in: Duration::from_secs(60),
            }],
        }
    }

    #[test]
    fn replies_of_the_wrong_shape_are_errors_not_panics() {
        let plan = plan();
        for reply in [
            &[][..],
            &[1, 0][..],
            &[1, 0, 0][..],
            &[1, 0, 0, 5][..],
            &[0, 0, 9, 0, 5][..],
            &[0, 0, i64::MIN, 0, 5][..],
            &[0, 0, 0, 0, 5][..],
        ] {
            assert!(
                matches!(verdict(&plan, reply), Err(LimiterError::Reply(_))),
                "{reply:?}"
            );
        }
        let ok = verdict(&plan, &[0, 2_000_000, 1, 1_000_000, 5]).unwrap();
        assert_eq!(ok.exceeded, Some(Exceeded::Quota { name: "daily" }));
        let ok = verdict(&plan, &[0, 500_000, 0, 1_500_000, 2]).unwrap();
        assert_eq!(
            ok.exceeded,
            Some(Exceeded::Limit {
                name: Arc::from("tenant")
            })
        );
        assert_eq!(ok.retry_after, Duration::from_millis(500));
        let ok = verdict(&plan, &[1, 0, 0, i64::MAX, i64::MIN]).unwrap();
        assert_eq!(ok.exceeded, None);
    }
}
