//! Cluster-wide limits on a real Redis Cluster (three masters, three replicas, started by the
//! test): three gateways share one tenant's limit — at most 2 % over the GCRA bound, at most
//! 2 % under what a perfect limiter admits of the arrivals the client managed — while the
//! master holding the tenant's slot is killed and its replica promoted, the local-share
//! fallback deciding in the gap; and a route-wide rule (its own slot) shared by two tenants
//! next to their own limits, every decision made by Redis.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::redis_cluster::RedisCluster;
use crate::common::{client, config_for, free_addr, upstream, TestGateway};

const TENANTS: &str = r#"
[[tenant]]
id = "acme"
tier = "free"

[[tenant]]
id = "bigco"
tier = "free"
"#;

fn cluster_limits(cluster: &RedisCluster, extra: &str) -> String {
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "\n[tenancy]\nsources = [\"header\"]\nregistry = {{ file = \"tenants.toml\" }}\n\
         [limits]\nbackend = \"redis\"\nredis_cluster_nodes = [{}]\nkey_prefix = \"gwtest\"\n{extra}\n",
        nodes.join(", ")
    )
}

async fn get(addr: SocketAddr, tenant: &str) -> u16 {
    match client()
        .get(format!("http://{addr}/things"))
        .header("x-tenant", tenant)
        .send()
        .await
    {
        Ok(res) => res.status().as_u16(),
        Err(_) => 0,
    }
}

/// Requests answered by a paced run: each one's status and when it was sent (seconds after the
/// run started), and the time from the first request to the last.
struct Paced {
    statuses: Vec<u16>,
    sent: Vec<f64>,
    elapsed: f64,
}

/// How many of requests sent at `sent` (seconds, any order) a perfect GCRA limiter of `rate`
/// per second and `burst` admits (the gateway's rule: a request is admitted when the backlog
/// it leaves is at most `burst` emission intervals). On a loaded machine the client sends in
/// clumps after stalls, and a limiter with a burst of 5 cannot admit what arrives in a clump:
/// this is what was possible for the arrivals the run managed, where `burst + rate × elapsed`
/// assumes perfectly even ones.
fn gcra_admits(sent: &[f64], rate: f64, burst: f64) -> f64 {
    let mut sent = sent.to_vec();
    sent.sort_by(f64::total_cmp);
    let interval = 1.0 / rate;
    let mut tat = f64::MIN;
    let mut admitted = 0.0;
    for now in sent {
        let next = tat.max(now) + interval;
        // A nanosecond of slack: the gateway counts in whole nanoseconds.
        if next - now <= burst * interval + 1e-9 {
            tat = next;
            admitted += 1.0;
        }
    }
    admitted
}

#[test]
fn a_perfect_limiter_admits_the_bound_of_even_arrivals_and_the_burst_of_clumps() {
    // 300 a second for 10 s against 100 a second with a burst of 5: the bound.
    let even: Vec<f64> = (0..3000).map(|i| f64::from(i) / 300.0).collect();
    let bound = 5.0 + 100.0 * (2999.0 / 300.0);
    assert!((gcra_admits(&even, 100.0, 5.0) - bound).abs() <= 1.0);
    // The same 3,000 requests in ten clumps a second apart: each clump gets the burst.
    let clumps: Vec<f64> = (0..3000).map(|i| f64::from(i / 300)).collect();
    assert_eq!(gcra_admits(&clumps, 100.0, 5.0), 50.0);
}

/// Sends `rate` requests per second in all, round-robin over `gateways`, for `duration`
/// (paced, not as fast as possible: the bound is about time); calls `at` once after `at_time`.
async fn paced(
    gateways: &[SocketAddr],
    tenant: &str,
    rate: u32,
    duration: Duration,
    at_time: Duration,
    at: impl FnOnce() + Send + 'static,
) -> Paced {
    let tenant: Arc<str> = Arc::from(tenant);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let mut at = Some(at);
    let started = Instant::now();
    let mut last = started;
    let mut i = 0usize;
    while started.elapsed() < duration {
        tick.tick().await;
        if started.elapsed() >= at_time {
            if let Some(at) = at.take() {
                // Off the runtime: killing a process and waiting for it blocks.
                tokio::task::spawn_blocking(at);
            }
        }
        let addr = gateways[i % gateways.len()];
        let tenant = tenant.clone();
        last = Instant::now();
        tasks.push(tokio::spawn(async move {
            let sent = started.elapsed().as_secs_f64();
            (get(addr, &tenant).await, sent)
        }));
        i += 1;
    }
    let elapsed = last.duration_since(started).as_secs_f64();
    let (mut statuses, mut sent) = (Vec::new(), Vec::new());
    for task in tasks {
        let (status, at) = task.await.unwrap();
        statuses.push(status);
        sent.push(at);
    }
    Paced {
        statuses,
        sent,
        elapsed,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_gateways_share_a_limit_on_redis_cluster_through_a_failover() {
    let up = upstream("app").await;
    let cluster = Arc::new(std::sync::Mutex::new(RedisCluster::start()));
    let (rate, burst) = (100.0, 5.0);
    let limits = cluster_limits(
        &cluster.lock().unwrap(),
        "replicas = 3\nfallback = \"local-share\"\nredis_timeout = \"500ms\"\nredis_retry_interval = \"200ms\"",
    );
    let config = config_for(
        &[up.addr],
        &format!("{limits}\n[tiers.free]\nrequests_per_second = {rate}\nburst = {burst}\n"),
    );
    let files: &[(&str, &[u8])] = &[("tenants.toml", TENANTS.as_bytes())];
    let gateways = [
        TestGateway::start(&config, files),
        TestGateway::start(&config, files),
        TestGateway::start(&config, files),
    ];
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();

    // The master of acme's slot dies 6 s in; its replica takes over after the node timeout.
    let killed = Arc::new(std::sync::Mutex::new(None));
    let (cluster_for_kill, killed_for_kill) = (cluster.clone(), killed.clone());
    let kill = move || {
        let mut cluster = cluster_for_kill.lock().unwrap();
        let port = cluster.kill_master_of("gwtest:{acme}:t:acme");
        let gap = cluster.wait_failover(port, Duration::from_secs(30));
        *killed_for_kill.lock().unwrap() = Some((port, gap));
    };
    let Paced {
        statuses,
        sent,
        elapsed,
    } = paced(
        &addrs,
        "acme",
        3 * rate as u32,
        // Long enough that the fixed extras of a failover (the replicas' full local buckets
        // at its start, Redis's full bucket after it, writes the dead master had not
        // replicated, replicas returning to Redis one by one) stay well inside 2 % of the
        // bound. They grow with the machine's load: 25 s measured +1.2 to +1.5 % under the
        // whole suite, and once +2.36 % (59 requests over a bound of 2,512).
        Duration::from_secs(40),
        Duration::from_secs(6),
        kill,
    )
    .await;
    let (port, gap) = killed
        .lock()
        .unwrap()
        .expect("the master was killed and replaced during the run");

    let admitted = statuses.iter().filter(|s| **s == 200).count() as f64;
    let bound = burst + rate * elapsed;
    let possible = gcra_admits(&sent, rate, burst);
    eprintln!(
        "redis cluster: master {port} killed, replica serving after {:.2}s; admitted {admitted} \
         of {} requests, GCRA bound {bound:.1} over {elapsed:.2}s ({:+.2}%), a perfect limiter \
         {possible:.0} of these arrivals ({:+.2}%)",
        gap.as_secs_f64(),
        statuses.len(),
        100.0 * (admitted - bound) / bound,
        100.0 * (admitted - possible) / possible
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "only admitted or limited: {:?}",
        statuses
            .iter()
            .filter(|s| **s != 200 && **s != 429)
            .collect::<Vec<_>>()
    );
    // Never more than the limit allows, failover included; never less than a perfect limiter
    // would have admitted of the requests as the client managed to send them.
    assert!(
        admitted <= 1.02 * bound && admitted >= 0.98 * possible,
        "admitted {admitted}, bound {bound:.1} (+2%), possible {possible:.1} (−2%)"
    );
    assert_eq!(up.served() as f64, admitted);
    // Every gateway fell back during the gap and went back to Redis after it.
    for gw in &gateways {
        let log = gw.settled_log();
        assert!(
            log.contains("Redis unavailable; the fallback decides")
                && log.contains("Redis answers again"),
            "{log}\n{}",
            cluster.lock().unwrap().logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_wide_rule_and_tenant_limits_decide_on_redis_cluster() {
    let up = upstream("app").await;
    let cluster = RedisCluster::start();
    // A route-wide budget of 30 that both tenants use up together, next to each tenant's own
    // 20: keys in different slots (`{*}` and each tenant's), so two script calls a request.
    let admin = free_addr();
    let limits = cluster_limits(
        &cluster,
        "redis_timeout = \"2s\"\n\
         [[limits.rule]]\nname = \"everyone\"\nper = \"route\"\nrequests_per_second = 0.001\nburst = 30\n",
    );
    let config = config_for(
        &[up.addr],
        &format!(
            "{limits}\n[tiers.free]\nrequests_per_second = 0.001\nburst = 20\n\
             [admin]\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n"
        ),
    );
    let mut gw = TestGateway::start(
        &config,
        &[
            ("tenants.toml", TENANTS.as_bytes()),
            (
                "admin.token",
                b"cluster-test-admin-token-of-32-characters\n",
            ),
        ],
    );
    gw.wait_accepting(admin);
    let mut acme = Vec::new();
    for _ in 0..25 {
        acme.push(get(gw.addr, "acme").await);
    }
    let mut bigco = Vec::new();
    for _ in 0..25 {
        bigco.push(get(gw.addr, "bigco").await);
    }
    let ok = |v: &[u16]| v.iter().filter(|s| **s == 200).count();
    // acme: its own 20, then refused by its own limit (the route-wide cell of each refusal
    // is spent: 25 of the 30 are gone). bigco: the 5 left of the route-wide budget.
    assert_eq!((ok(&acme), ok(&bigco)), (20, 5), "{acme:?} {bigco:?}");
    let res = client()
        .get(format!("http://{}/things", gw.addr))
        .header("x-tenant", "bigco")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let policy = res
        .headers()
        .get("ratelimit-policy")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(policy.contains("everyone"), "{policy}");
    let status: serde_json::Value = client()
        .get(format!("http://{admin}/admin/status"))
        .bearer_auth("cluster-test-admin-token-of-32-characters")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["rate_limits"]["backend"], "redis-cluster",
        "{status}"
    );
    assert!(
        !gw.settled_log().contains("Redis unavailable"),
        "{}",
        gw.log()
    );
}
