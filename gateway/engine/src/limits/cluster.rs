//! Cluster-wide limits in Redis: one Lua script call per request checks every limit and quota
//! of the request and, only when all of them admit, takes from all of them — atomically, in one
//! round trip, with Redis's clock (replicas' clocks do not matter).
//!
//! Redis is one server (`redis_url`) or a Redis Cluster (`redis_cluster_nodes`). In a cluster
//! every key of a tenant carries the tenant's id as its hash tag (`gateway:{acme}:t:acme`), so
//! one decision's keys share a slot and its script runs on the master owning it; the client
//! follows MOVED/ASK redirections and failovers. Route-wide rules (`per = "route"`, one budget
//! of all tenants) live in a slot of their own (`gateway:{*}:r:name`): with one of them, a
//! decision is two script calls, the route-wide budget first — a request it admits that the
//! tenant's own budgets then refuse has used one route-wide cell (it errs towards refusing).
//!
//! The connection is one multiplexed connection (concurrent requests pipeline on it; in a
//! cluster, one per master). When Redis fails or is slower than `redis_timeout`, it is marked
//! down: the fallback decides without waiting for Redis until `redis_retry_interval` has passed,
//! then the next request tries Redis again. State changes are logged and exported as
//! `gateway_ratelimit_redis_up`. In a cluster this state is the whole cluster's: while one
//! master fails over, every tenant is decided by the fallback until the next try succeeds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
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
/// The least time a connection to Redis may take to be made (see `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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

/// Adds ARGV[1] to KEYS[1], (re)sets its time to live to ARGV[2] seconds, returns the sum.
const COUNTER_SCRIPT: &str = r#"
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return value
"#;

/// As COUNTER_SCRIPT, once per attempt: KEYS[2] remembers the last attempt of this adder
/// (ARGV[3]) and the sum it made; the same attempt again (its answer was lost) returns that sum
/// without adding. ARGV[4]: the marker's time to live.
const COUNTER_ONCE_SCRIPT: &str = r#"
local last = redis.call('GET', KEYS[2])
if last then
  local space = string.find(last, ' ', 1, true)
  if space and string.sub(last, 1, space - 1) == ARGV[3] then
    return tonumber(string.sub(last, space + 1))
  end
end
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3] .. ' ' .. value, 'EX', ARGV[4])
return value
"#;

/// What makes an addition to a counter happen once (see `add_to_counter`). An adder has one
/// attempt per counter outstanding at a time: it retries a failed one, unchanged, before it
/// adds anything else to that counter.
#[derive(Debug, Clone, Copy)]
pub struct AddOnce<'a> {
    /// Who adds (one process's budgets): its last attempt is remembered per counter.
    pub adder: &'a str,
    /// This attempt (no space in it).
    pub attempt: &'a str,
}

/// The Redis a limiter talks to.
enum Server {
    One(Box<Client>),
    Cluster(Box<ClusterClient>),
}

/// A connection to it (cheap to clone: requests share it).
#[derive(Clone)]
enum Connection {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Hash tag of the budgets all tenants share (not a tenant id: those are DNS labels).
const ALL_TENANTS_TAG: &str = "*";

pub struct ClusterLimiter {
    server: Server,
    prefix: String,
    timeout: Duration,
    retry_interval: Duration,
    script: Script,
    counter_script: Script,
    counter_once_script: Script,
    connection: Mutex<Option<Connection>>,
    /// Redis answered last time (or has not been tried yet).
    up: AtomicBool,
    /// While down: when Redis may be tried again (µs since `epoch`).
    retry_at_us: AtomicU64,
    epoch: Instant,
}

impl ClusterLimiter {
    /// `None` when no server is configured or a URL does not parse (validation reports that
    /// before).
    pub fn new(config: &LimitsConfig) -> Option<Self> {
        let server = if config.redis_cluster_nodes.is_empty() {
            Server::One(Box::new(Client::open(config.redis_url.as_deref()?).ok()?))
        } else {
            Server::Cluster(Box::new(
                ClusterClientBuilder::new(config.redis_cluster_nodes.iter().map(String::as_str))
                    .connection_timeout(config.redis_timeout.max(CONNECT_TIMEOUT))
                    .response_timeout(config.redis_timeout)
                    // Enough to follow a MOVED or ASK; a failing master is the fallback's
                    // case, not a reason to keep a request waiting.
                    .retries(2)
                    .build()
                    .ok()?,
            ))
        };
        metrics::gauge!(crate::telemetry::RATELIMIT_REDIS_UP).set(1.0);
        Some(ClusterLimiter {
            server,
            prefix: config.key_prefix.clone(),
            timeout: config.redis_timeout,
            retry_interval: config.redis_retry_interval,
            script: Script::new(GCRA_SCRIPT),
            counter_script: Script::new(COUNTER_SCRIPT),
            counter_once_script: Script::new(COUNTER_ONCE_SCRIPT),
            connection: Mutex::new(None),
            up: AtomicBool::new(true),
            retry_at_us: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Whether Redis is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.server, Server::Cluster(_))
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
    async fn connection(&self) -> Result<Connection, LimiterError> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = match &self.server {
            Server::One(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout()))
                    .set_response_timeout(Some(self.timeout));
                Connection::One(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Server::Cluster(client) => Connection::Cluster(client.get_async_connection().await?),
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// How long making a connection may take: TLS, AUTH and a cluster's slot map may need
    /// longer than one command (`redis_timeout`). Only the first request, and then one probe
    /// per retry interval while Redis is down, waits for it.
    fn connect_timeout(&self) -> Duration {
        self.timeout.max(CONNECT_TIMEOUT)
    }

    /// A connection (within [`Self::connect_timeout`]), then `command` on it within
    /// `redis_timeout`. Connecting under the command's deadline would cut off, again and
    /// again, a connection that takes longer to make than a command to answer.
    async fn with_connection<T, F>(
        &self,
        command: impl FnOnce(Connection) -> F,
    ) -> Result<T, LimiterError>
    where
        F: std::future::Future<Output = Result<T, LimiterError>>,
    {
        let connect = self.connect_timeout();
        let conn = tokio::time::timeout(connect, self.connection())
            .await
            .unwrap_or(Err(LimiterError::Timeout(connect)))?;
        tokio::time::timeout(self.timeout, command(conn))
            .await
            .unwrap_or(Err(LimiterError::Timeout(self.timeout)))
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
        let result = self.with_connection(|conn| self.call(conn, plan)).await;
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

    async fn call(&self, mut conn: Connection, plan: &LimitPlan) -> Result<Verdict, LimiterError> {
        let tenants_own = plan.limits.iter().any(|l| !l.all_tenants) || !plan.quotas.is_empty();
        let split = self.is_cluster() && tenants_own && plan.limits.iter().any(|l| l.all_tenants);
        if !split {
            return self.run_script(&mut conn, plan).await;
        }
        // Two slots: the budgets of all tenants first, then the tenant's own.
        let (shared, own): (Vec<Limit>, Vec<Limit>) =
            plan.limits.iter().cloned().partition(|l| l.all_tenants);
        let shared = LimitPlan {
            tenant: plan.tenant.clone(),
            limits: shared,
            quotas: Vec::new(),
        };
        let shared_verdict = self.run_script(&mut conn, &shared).await?;
        if shared_verdict.exceeded.is_some() {
            return Ok(shared_verdict);
        }
        let own = LimitPlan {
            tenant: plan.tenant.clone(),
            limits: own,
            quotas: plan.quotas.clone(),
        };
        let mut verdict = self.run_script(&mut conn, &own).await?;
        verdict.states.extend(shared_verdict.states);
        Ok(verdict)
    }

    /// Adds `delta` to the counter `key` of `tenant` (kept `ttl` after its last change) and
    /// returns its new value: one atomic step, so concurrent replicas each see a distinct
    /// range of values (spending budgets count this way). With `once`, an attempt made again
    /// (its answer was lost: a timeout after Redis applied it) returns the value it made
    /// instead of adding twice.
    pub async fn add_to_counter(
        &self,
        tenant: &str,
        key: &str,
        delta: i64,
        ttl: Duration,
        once: Option<AddOnce<'_>>,
    ) -> Result<i64, LimiterError> {
        let call = |mut conn: Connection| async move {
            let ttl_secs = ttl.as_secs().max(1);
            let mut invocation = match once {
                None => self.counter_script.prepare_invoke(),
                Some(_) => self.counter_once_script.prepare_invoke(),
            };
            invocation
                .key(self.key(tenant, key, false))
                .arg(delta)
                .arg(ttl_secs);
            if let Some(once) = once {
                invocation
                    .key(self.key(tenant, &format!("{key}:last-add:{}", once.adder), false))
                    .arg(once.attempt)
                    .arg(ttl_secs);
            }
            let value: i64 = match &mut conn {
                Connection::One(c) => invocation.invoke_async(c).await?,
                Connection::Cluster(c) => invocation.invoke_async(c).await?,
            };
            Ok(value)
        };
        let result = self.with_connection(call).await;
        if let Err(LimiterError::Redis(e)) = &result {
            if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                *self.connection.lock().await = None;
            }
        }
        result
    }

    /// The values of counters of `tenant` (`None` where a key does not exist), in one MGET
    /// (one slot in a cluster: the keys share the tenant's hash tag).
    pub async fn read_counters(
        &self,
        tenant: &str,
        keys: &[String],
    ) -> Result<Vec<Option<i64>>, LimiterError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let call = |mut conn: Connection| async move {
            let mut command = redis::cmd("MGET");
            for key in keys {
                command.arg(self.key(tenant, key, false));
            }
            let values: Vec<Option<i64>> = match &mut conn {
                Connection::One(c) => command.query_async(c).await?,
                Connection::Cluster(c) => command.query_async(c).await?,
            };
            Ok(values)
        };
        self.with_connection(call).await
    }

    /// Sets `key` of `tenant` if it does not exist (for `ttl`): `true` for the one caller,
    /// cluster-wide, that set it.
    pub async fn claim_once(
        &self,
        tenant: &str,
        key: &str,
        ttl: Duration,
    ) -> Result<bool, LimiterError> {
        let call = |mut conn: Connection| async move {
            let mut command = redis::cmd("SET");
            command
                .arg(self.key(tenant, key, false))
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(ttl.as_secs().max(1));
            let set: Option<String> = match &mut conn {
                Connection::One(c) => command.query_async(c).await?,
                Connection::Cluster(c) => command.query_async(c).await?,
            };
            Ok(set.is_some())
        };
        self.with_connection(call).await
    }

    /// The Redis key of a budget: in a cluster, hash-tagged with its tenant (or with the tag of
    /// the budgets all tenants share).
    fn key(&self, tenant: &str, key: &str, all_tenants: bool) -> String {
        match self.server {
            Server::One(_) => format!("{}:{key}", self.prefix),
            Server::Cluster(_) => {
                let tag = if all_tenants { ALL_TENANTS_TAG } else { tenant };
                format!("{}:{{{tag}}}:{key}", self.prefix)
            }
        }
    }

    /// One script call; every key of `plan` is in one slot when Redis is a cluster.
    async fn run_script(
        &self,
        conn: &mut Connection,
        plan: &LimitPlan,
    ) -> Result<Verdict, LimiterError> {
        let mut invocation = self.script.prepare_invoke();
        for limit in &plan.limits {
            invocation.key(self.key(&plan.tenant, &limit.key, limit.all_tenants));
        }
        for quota in &plan.quotas {
            invocation.key(self.key(&plan.tenant, &quota.key, false));
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
        let reply: Vec<i64> = match conn {
            Connection::One(c) => invocation.invoke_async(c).await?,
            Connection::Cluster(c) => invocation.invoke_async(c).await?,
        };
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
            tenant: "acme".into(),
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
    fn cluster_keys_share_the_tenants_slot_and_route_wide_ones_their_own() {
        let config = |extra: &str| -> LimitsConfig {
            toml::from_str(&format!(
                "backend = \"redis\"\nkey_prefix = \"gw\"\n{extra}"
            ))
            .unwrap()
        };
        let one = ClusterLimiter::new(&config("redis_url = \"redis://127.0.0.1:1\"")).unwrap();
        assert!(!one.is_cluster());
        // One server: the keys of earlier versions (no hash tags; counts survive an upgrade).
        assert_eq!(one.key("acme", "t:acme", false), "gw:t:acme");
        let cluster = ClusterLimiter::new(&config(
            "redis_cluster_nodes = [\"redis://127.0.0.1:1\", \"redis://127.0.0.1:2\"]",
        ))
        .unwrap();
        assert!(cluster.is_cluster());
        assert_eq!(cluster.key("acme", "t:acme", false), "gw:{acme}:t:acme");
        assert_eq!(
            cluster.key("acme", "q:d:acme:20261204", false),
            "gw:{acme}:q:d:acme:20261204"
        );
        assert_eq!(cluster.key("acme", "r:everyone", true), "gw:{*}:r:everyone");
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

    /// A relay to the test Redis that holds each new connection's first reply back for
    /// `greeting` (a far or busy server, TLS and AUTH), then relays at full speed.
    async fn slow_to_greet(greeting: Duration) -> std::net::SocketAddr {
        let redis = std::env::var("GATEWAY_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let target = redis
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    tokio::time::sleep(greeting).await;
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
            }
        });
        addr
    }

    /// An addition sent again because its answer was lost (Redis applied it, the reply came
    /// after the timeout) is counted once; the next attempt, or another adder's, adds.
    #[tokio::test]
    async fn an_addition_sent_again_is_counted_once() {
        let redis = std::env::var("GATEWAY_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let config: LimitsConfig = toml::from_str(&format!(
            "backend = \"redis\"\nredis_url = \"{redis}\"\nredis_timeout = \"2s\"\n\
             key_prefix = \"gwtest:once:{}:{}\"",
            std::process::id(),
            rand::random::<u32>()
        ))
        .unwrap();
        let limiter = ClusterLimiter::new(&config).unwrap();
        let add = |adder: &'static str, attempt: &'static str, delta: i64| {
            let limiter = &limiter;
            async move {
                let once = AddOnce { adder, attempt };
                limiter
                    .add_to_counter(
                        "acme",
                        "budget:m",
                        delta,
                        Duration::from_secs(60),
                        Some(once),
                    )
                    .await
                    .unwrap()
            }
        };
        assert_eq!(add("replica-a", "1", 5).await, 5);
        assert_eq!(add("replica-a", "1", 5).await, 5, "the same attempt again");
        assert_eq!(add("replica-b", "1", 3).await, 8, "another replica's");
        assert_eq!(add("replica-a", "2", 2).await, 10);
        assert_eq!(add("replica-a", "2", 2).await, 10);
        let plain = limiter
            .add_to_counter("acme", "budget:m", 1, Duration::from_secs(60), None)
            .await
            .unwrap();
        assert_eq!(plain, 11);
    }

    /// Making a connection takes longer than `redis_timeout` allows one command: it is made
    /// all the same (under its own deadline), and decisions then go through Redis.
    #[tokio::test]
    async fn a_connection_slower_to_make_than_a_command_is_made() {
        let relay = slow_to_greet(Duration::from_millis(150)).await;
        let config: LimitsConfig = toml::from_str(&format!(
            "backend = \"redis\"\nredis_url = \"redis://{relay}\"\nredis_timeout = \"50ms\"\n\
             key_prefix = \"gwtest:connect:{}:{}\"",
            std::process::id(),
            rand::random::<u32>()
        ))
        .unwrap();
        let limiter = ClusterLimiter::new(&config).unwrap();
        let plan = LimitPlan {
            tenant: "acme".into(),
            limits: vec![Limit::new(Arc::from("tenant"), "t:acme".into(), 100.0, 100)],
            quotas: Vec::new(),
        };
        let verdict = limiter.decide(&plan).await;
        assert!(verdict.is_ok(), "{verdict:?}");
        assert!(limiter.is_up());
        assert!(limiter.decide(&plan).await.is_ok());
    }
}
