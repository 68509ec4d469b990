//! Rate-limit stage cost on this machine: local (in-process GCRA) decisions per second and ns per
//! check, and the latency the Redis-backed limiter adds (one Lua script round trip), sequential
//! and with concurrent requests sharing the multiplexed connection.
//!
//! Usage: ratelimit-bench [--decisions N] [--redis URL] [--json FILE]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use gateway::identity::Principal;
use gateway::limits::{Limiter, LimitsConfig, TierConfig};
use gateway::pipeline::limit::{limit, LimitRequest};
use gateway::tenancy::TenantSpec;
use gateway_bench::{arg, percentile};
use serde_json::json;

const TENANTS: usize = 10_000;

fn tiers() -> BTreeMap<String, TierConfig> {
    // High enough never to refuse: the bench measures the decision, not refusals.
    let tier = TierConfig {
        requests_per_second: Some(1e7),
        burst: Some(1_000_000),
        principal_requests_per_second: Some(1e7),
        principal_burst: Some(1_000_000),
        ..TierConfig::default()
    };
    BTreeMap::from([("pro".to_string(), tier)])
}

struct Fixture {
    tenants: Vec<TenantSpec>,
    principals: Vec<Principal>,
}

fn fixture() -> Fixture {
    let tenants = gateway_bench::tenants(TENANTS)
        .into_iter()
        .map(|mut t| {
            t.tier = "pro".into();
            t
        })
        .collect();
    let principals = (0..100)
        .map(|i| {
            let mut p = Principal::anonymous();
            p.id = format!("user-{i}");
            p
        })
        .collect();
    Fixture {
        tenants,
        principals,
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Sequential decisions: per-check latency distribution and decisions/s on one core.
async fn sequential(limiter: &Limiter, f: &Fixture, n: usize) -> (Vec<u64>, f64) {
    let now = now_secs();
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let request = LimitRequest {
            tenant: &f.tenants[(i * 7919) % f.tenants.len()],
            principal: &f.principals[i % f.principals.len()],
            caller: gateway::limits::Caller::Known,
            action: Some("projects:read"),
            now_secs: now,
        };
        let t = Instant::now();
        let outcome = limit(&request, limiter).await;
        latencies.push(t.elapsed().as_nanos() as u64);
        assert!(outcome.is_ok(), "the bench limits must not refuse");
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    (latencies, rate)
}

/// `tasks` concurrent request loops: decisions/s and per-check latency.
async fn concurrent(
    limiter: Arc<Limiter>,
    f: Arc<Fixture>,
    n: usize,
    tasks: usize,
) -> (Vec<u64>, f64) {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (limiter, f) = (limiter.clone(), f.clone());
        handles.push(tokio::spawn(async move {
            let now = now_secs();
            let mut latencies = Vec::with_capacity(n / tasks);
            for i in 0..n / tasks {
                let k = t * n + i;
                let request = LimitRequest {
                    tenant: &f.tenants[(k * 7919) % f.tenants.len()],
                    principal: &f.principals[k % f.principals.len()],
                    caller: gateway::limits::Caller::Known,
                    action: Some("projects:read"),
                    now_secs: now,
                };
                let s = Instant::now();
                let outcome = limit(&request, &limiter).await;
                latencies.push(s.elapsed().as_nanos() as u64);
                assert!(outcome.is_ok(), "the bench limits must not refuse");
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await.expect("task"));
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    (latencies, rate)
}

fn summary(name: &str, latencies: &[u64], rate: f64) -> serde_json::Value {
    let (p50, p99, p999) = (
        percentile(latencies, 50.0),
        percentile(latencies, 99.0),
        percentile(latencies, 99.9),
    );
    eprintln!("{name}: {rate:.0} decisions/s; p50 {p50} ns, p99 {p99} ns, p99.9 {p999} ns");
    json!({"decisions_per_second": rate, "p50_ns": p50, "p99_ns": p99, "p999_ns": p999, "decisions": latencies.len()})
}

fn main() {
    let n: usize = arg("--decisions")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let redis_url = arg("--redis").unwrap_or_else(|| "redis://127.0.0.1:6379".to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(async {
        let f = Arc::new(fixture());
        let local = Arc::new(Limiter::new(None, &tiers()));
        // Warm-up: create every tenant's cells.
        sequential(&local, &f, TENANTS * 2).await;
        let (lat, rate) = sequential(&local, &f, n).await;
        let local_seq = summary("local, 1 task", &lat, rate);
        let (lat, rate) = concurrent(local.clone(), f.clone(), n, 2).await;
        let local_conc = summary("local, 2 tasks", &lat, rate);

        let config: LimitsConfig = toml::from_str(&format!(
            "backend = \"redis\"\nredis_url = \"{redis_url}\"\nkey_prefix = \"gateway-bench:{}\"\nfallback = \"fail-closed\"\nredis_timeout = \"1s\"",
            std::process::id()
        ))
        .expect("limits config");
        let redis = Arc::new(Limiter::new(Some(&config), &tiers()));
        let m = (n / 10).max(1000);
        sequential(&redis, &f, 2000).await;
        let (lat, rate) = sequential(&redis, &f, m).await;
        let redis_seq = summary("redis, 1 request at a time", &lat, rate);
        let (lat, rate) = concurrent(redis.clone(), f.clone(), m, 64).await;
        let redis_conc = summary("redis, 64 concurrent requests", &lat, rate);
        let added_p99_us = (redis_seq["p99_ns"].as_u64().unwrap_or(0) as f64
            - local_seq["p99_ns"].as_u64().unwrap_or(0) as f64)
            / 1000.0;
        eprintln!("redis-backed limiter adds {added_p99_us:.1} µs at p99 (sequential) over the local one");
        json!({
            "tenants": TENANTS,
            "limits_per_request": 2,
            "local_sequential": local_seq,
            "local_two_tasks": local_conc,
            "redis_sequential": redis_seq,
            "redis_64_concurrent": redis_conc,
            "redis_added_p99_us": added_p99_us,
        })
    });
    gateway_bench::emit_report(&report);
}
