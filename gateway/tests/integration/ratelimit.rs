//! Rate limits and quotas through the real gateway: the local GCRA bound on a burst, three
//! gateways sharing one limit through the machine's Redis, Redis stopped mid-test (a Redis of
//! the test's own on another port) with each fallback and the recovery, quotas surviving a
//! restart, and tier feature gates.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::common;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{client, config_for, free_port, upstream, TestGateway};
use futures_util::stream::{self, StreamExt};
use serde_json::json;

/// The machine's Redis (started by `scripts/ensure-deps`).
fn redis_url() -> String {
    std::env::var("GATEWAY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Keys of one test run, apart from every other run.
fn unique_prefix(name: &str) -> String {
    format!(
        "gwtest:{name}:{}:{}",
        std::process::id(),
        rand::random::<u32>()
    )
}

const TENANTS: &str = r#"
[[tenant]]
id = "acme"
tier = "free"

[[tenant]]
id = "bigco"
tier = "pro"
"#;

/// The tier of `bigco` (every tenant's tier must be configured).
const PRO: &str = "\n[tiers.pro]\nunlimited = true\n";

fn tenancy() -> &'static str {
    "\n[tenancy]\nsources = [\"header\"]\nregistry = { file = \"tenants.toml\" }\n"
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn get(addr: SocketAddr, tenant: &str) -> Reply {
    let res = client()
        .get(format!("http://{addr}/things"))
        .header("x-tenant", tenant)
        .send()
        .await
        .expect("request");
    Reply {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.unwrap_or_default(),
    }
}

/// Sends `count` requests spread over `gateways`, `concurrency` at a time; returns the replies.
async fn burst_replies(
    gateways: &[SocketAddr],
    tenant: &str,
    count: usize,
    concurrency: usize,
) -> Vec<Reply> {
    stream::iter(0..count)
        .map(|i| get(gateways[i % gateways.len()], tenant))
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// As [`burst_replies`], the statuses only.
async fn burst(
    gateways: &[SocketAddr],
    tenant: &str,
    count: usize,
    concurrency: usize,
) -> Vec<u16> {
    burst_replies(gateways, tenant, count, concurrency)
        .await
        .into_iter()
        .map(|r| r.status)
        .collect()
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn local_limiter_admits_within_the_gcra_bound() {
    let up = upstream("app").await;
    let config = config_for(
        &[up.addr],
        &format!(
            "{}\n[tiers.free]\nrequests_per_second = 20\nburst = 50\n{PRO}",
            tenancy()
        ),
    );
    let gw = TestGateway::start(&config, &[("tenants.toml", TENANTS.as_bytes())]);
    let first = get(gw.addr, "acme").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(header(&first, "ratelimit-policy"), "\"tenant\";q=50;w=3");
    assert!(
        header(&first, "ratelimit").starts_with("\"tenant\";r=49;"),
        "{:?}",
        first.headers
    );

    let started = Instant::now();
    let replies = burst_replies(&[gw.addr], "acme", 400, 16).await;
    let elapsed = started.elapsed().as_secs_f64();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count() as f64 + 1.0;
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        admitted as usize - 1 + refused,
        400,
        "only 200 or 429: {statuses:?}"
    );
    // GCRA: at most the burst plus the rate over the elapsed time (one cell of rounding).
    let bound = 50.0 + 20.0 * (elapsed + 0.05) + 1.0;
    eprintln!("local: admitted {admitted} of 400, GCRA bound {bound:.1} over {elapsed:.2}s");
    assert!(
        admitted >= 50.0 && admitted <= bound,
        "admitted {admitted}, bound {bound:.1} over {elapsed:.2}s"
    );
    // Refused requests never reached the upstream.
    assert_eq!(up.served() as f64, admitted);

    // A refusal of the burst (a request sent after it could find a cell that has come back
    // since: one every 50 ms at 20/s).
    let refused = replies
        .iter()
        .find(|r| r.status == 429)
        .expect("the burst exceeds the limit");
    assert!(header(refused, "retry-after").parse::<u64>().unwrap() >= 1);
    assert!(
        header(refused, "ratelimit").contains(";r=0;"),
        "{:?}",
        refused.headers
    );
    let problem: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(problem["status"], 429);
    assert!(problem["type"].as_str().unwrap().ends_with("/rate-limited"));
    // Another tenant's budget is its own (the `pro` tier is `unlimited` here).
    assert_eq!(get(gw.addr, "bigco").await.status, 200);
}

/// Without `[tiers]` and without any `[[limits.rule]]`, a tenant's own limit in the registry
/// still applies (it did only when some rule existed), and a tenant without one has no limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_own_limit_applies_without_tiers_or_rules() {
    let up = upstream("app").await;
    let config = config_for(&[up.addr], tenancy());
    let tenants = r#"
[[tenant]]
id = "acme"
limits = { requests_per_second = 0.001, burst = 3 }

[[tenant]]
id = "bigco"
"#;
    let gw = TestGateway::start(&config, &[("tenants.toml", tenants.as_bytes())]);
    let statuses = burst(&[gw.addr], "acme", 6, 1).await;
    assert_eq!(statuses, vec![200, 200, 200, 429, 429, 429], "{}", gw.log());
    let statuses = burst(&[gw.addr], "bigco", 20, 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

fn redis_limits(url: &str, prefix: &str, extra: &str) -> String {
    format!(
        "\n[limits]\nbackend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn three_gateways_share_one_limit_through_redis() {
    let up = upstream("app").await;
    let prefix = unique_prefix("shared");
    let config = config_for(
        &[up.addr],
        &format!(
            "{}{}\n[tiers.free]\nrequests_per_second = 0.5\nburst = 300\n{PRO}",
            tenancy(),
            // Generous timeout: this test is about sharing, not about slow Redis (CI machines
            // are busy; a decision over the timeout would go to the local-share fallback).
            redis_limits(
                &redis_url(),
                &prefix,
                "replicas = 3\nredis_timeout = \"2s\""
            )
        ),
    );
    let files: &[(&str, &[u8])] = &[("tenants.toml", TENANTS.as_bytes())];
    let gateways = [
        TestGateway::start(&config, files),
        TestGateway::start(&config, files),
        TestGateway::start(&config, files),
    ];
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
    let started = Instant::now();
    let statuses = burst(&addrs, "acme", 1200, 24).await;
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = statuses.iter().filter(|s| **s == 200).count() as f64;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let limit = 300.0 + 0.5 * elapsed;
    eprintln!(
        "three gateways: admitted {admitted} of a shared limit of {limit:.1} in {elapsed:.2}s"
    );
    assert!(
        (admitted - limit).abs() <= 0.02 * limit,
        "admitted {admitted} of a shared limit of {limit:.1} (±2%)"
    );
    assert_eq!(up.served() as f64, admitted);
    for gw in &gateways {
        assert!(
            !gw.settled_log().contains("Redis unavailable"),
            "{}",
            gw.log()
        );
    }
}

/// A Redis server of the test's own, on its own port, that the test stops and starts.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let mut redis = OwnRedis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new(common::redis_cluster::redis_server_bin())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/ensure-deps installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_falls_back_as_configured_then_recovers() {
    let up = upstream("app").await;
    let mut redis = OwnRedis::start();
    let gateway = |fallback: &str| {
        let config = config_for(
            &[up.addr],
            &format!(
                "{}{}\n[tiers.free]\nrequests_per_second = 0.1\nburst = 20\n{PRO}",
                tenancy(),
                redis_limits(
                    &redis.url(),
                    "gw",
                    &format!(
                        "fallback = \"{fallback}\"\nreplicas = 2\nredis_timeout = \"50ms\"\nredis_retry_interval = \"200ms\""
                    )
                )
            ),
        );
        TestGateway::start(&config, &[("tenants.toml", TENANTS.as_bytes())])
    };
    let closed = gateway("fail-closed");
    let shared = gateway("local-share");
    let open = gateway("fail-open");

    // Redis up: one budget of 20 for all three gateways.
    assert_eq!(get(closed.addr, "acme").await.status, 200);
    redis.stop();

    // fail-closed: 503 with a problem body while Redis is away.
    let reply = get(closed.addr, "acme").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.body.contains("rate-limit-unavailable"),
        "{}",
        reply.body
    );
    assert!(header(&reply, "retry-after").parse::<u64>().is_ok());
    // local-share: each of 2 replicas decides with half of the burst (10).
    let statuses = burst(&[shared.addr], "acme", 30, 1).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (10..=11).contains(&admitted),
        "local share admitted {admitted}: {statuses:?}"
    );
    // fail-open: everything passes.
    let statuses = burst(&[open.addr], "acme", 40, 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for gw in [&closed, &shared, &open] {
        assert!(
            gw.settled_log().contains("Redis unavailable"),
            "{}",
            gw.log()
        );
    }

    // Recovery: Redis back (empty), the gateways use it again by themselves.
    redis.restart();
    let recovered = common::eventually(Duration::from_secs(10), || async {
        get(closed.addr, "acme").await.status == 200
    })
    .await;
    assert!(
        recovered.is_some(),
        "fail-closed gateway never recovered:\n{}",
        closed.log()
    );
    assert!(
        closed.settled_log().contains("Redis answers again"),
        "{}",
        closed.log()
    );
    // The others probe Redis on their first request after the retry interval.
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The shared budget is enforced through Redis again: 20 minus the one just admitted.
    let statuses = burst(&[shared.addr, open.addr], "acme", 40, 1).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (19..=20).contains(&admitted),
        "after recovery admitted {admitted}"
    );
}

/// One admitted request of `acme`, leaving `left` of its monthly quota.
async fn admitted_leaving(gw: &TestGateway, left: u64) {
    let reply = get(gw.addr, "acme").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        header(&reply, "ratelimit").contains(&format!("\"monthly\";r={left};")),
        "{:?}\n{}",
        reply.headers,
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_survives_a_restart_and_answers_429_with_retry_after() {
    let up = upstream("app").await;
    let prefix = unique_prefix("quota");
    let config = config_for(
        &[up.addr],
        &format!(
            "{}{}\n[tiers.free]\nmonthly_requests = 5\n{PRO}",
            tenancy(),
            // fail-closed: a Redis outage shows as 503, never as a quota that seems reset.
            redis_limits(
                &redis_url(),
                &prefix,
                "redis_timeout = \"5s\"\nfallback = \"fail-closed\""
            )
        ),
    );
    let mut gw = TestGateway::start(&config, &[("tenants.toml", TENANTS.as_bytes())]);
    for left in [4, 3, 2] {
        admitted_leaving(&gw, left).await;
    }
    gw.restart();
    for left in [1, 0] {
        admitted_leaving(&gw, left).await;
    }
    let refused = get(gw.addr, "acme").await;
    assert_eq!(refused.status, 429, "{}\n{}", refused.body, gw.log());
    assert!(refused.body.contains("quota-exhausted"), "{}", refused.body);
    let retry_after: u64 = header(&refused, "retry-after").parse().unwrap();
    // Until the end of the UTC month: at least a second, at most 31 days.
    assert!((1..=31 * 86_400).contains(&retry_after), "{retry_after}");
    assert!(header(&refused, "ratelimit").contains("\"monthly\";r=0;"));
    assert_eq!(up.served(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_outside_the_tier_are_refused_with_a_clear_403() {
    const SECRET: &str = "test-secret-for-the-tier-gate-tests-0123456789";
    let up = upstream("app").await;
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let config = config_for(
        &[up.addr],
        &format!(
            r#"
[identity]
[[identity.issuer]]
issuer = "https://issuer.tiers.test"
audiences = ["gateway"]
algorithms = ["HS256"]
secret_file = "issuer.secret"
claims = {{ tenant = "org", attributes = {{ mfa = "mfa" }} }}

[tenancy]
sources = ["header", "credential"]
registry = {{ file = "tenants.toml" }}

[authorization]
policies = "{}"

[tiers.free]
features = []
[tiers.pro]
features = ["exports"]

[limits.gates]
"documents:export" = "exports"
"#,
            policies.display()
        ),
    );
    let gw = TestGateway::start(
        &config,
        &[
            ("tenants.toml", TENANTS.as_bytes()),
            ("issuer.secret", SECRET.as_bytes()),
        ],
    );
    let export = |org: &'static str| {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({
                "iss": "https://issuer.tiers.test", "aud": "gateway", "sub": "eve", "org": org,
                "roles": ["editor"], "mfa": true, "exp": crate::common::idp::now() + 600,
            }),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let addr = gw.addr;
        async move {
            let res = client()
                .post(format!("http://{addr}/documents/d1/export"))
                .header("x-tenant", org)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let (status, body) = export("acme").await;
    assert_eq!(status, 403, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("/feature-not-in-tier"));
    assert_eq!(
        problem["detail"],
        "`documents:export` needs the `exports` feature, which the `free` plan does not include"
    );
    let (status, body) = export("bigco").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.served(), 1);
}

const ISSUER_SECRET: &str = "test-secret-for-the-fairness-tests-0123456789";

/// A token of `sub` for tenant `org` from the test issuer of [`identity`].
fn token(sub: &str, org: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({
            "iss": "https://issuer.fair.test", "aud": "gateway", "sub": sub, "org": org,
            "exp": crate::common::idp::now() + 600,
        }),
        &jsonwebtoken::EncodingKey::from_secret(ISSUER_SECRET.as_bytes()),
    )
    .unwrap()
}

/// `[identity]` with the test issuer (and anonymous callers allowed when `anonymous`), tenants
/// from the header or the token, and the loopback trusted as a proxy so that
/// `X-Forwarded-For` names the client address.
fn identity(anonymous: bool) -> String {
    let geoip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/geoip2-layout.mmdb");
    format!(
        r#"
[identity]
allow_anonymous = {anonymous}
[[identity.issuer]]
issuer = "https://issuer.fair.test"
audiences = ["gateway"]
algorithms = ["HS256"]
secret_file = "issuer.secret"
claims = {{ tenant = "org" }}

[tenancy]
sources = ["header", "credential"]
registry = {{ file = "tenants.toml" }}

[geoip]
database = "{}"
trusted_proxies = ["127.0.0.1/32"]
"#,
        geoip.display()
    )
}

/// One request of tenant `tenant`: with a bearer token, or anonymous from `client` (through
/// the trusted loopback proxy).
async fn request(addr: SocketAddr, tenant: &str, bearer: Option<&str>, client_ip: &str) -> Reply {
    let mut req = client()
        .get(format!("http://{addr}/things"))
        .header("x-tenant", tenant)
        .header("x-forwarded-for", client_ip);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("request");
    Reply {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.unwrap_or_default(),
    }
}

/// The limit a 429 names (`rate-limited` problem detail), or the status otherwise.
fn outcome(reply: &Reply) -> String {
    if reply.status != 429 {
        return reply.status.to_string();
    }
    let problem: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
    let detail = problem["detail"].as_str().unwrap_or_default();
    detail.split('`').nth(1).unwrap_or(detail).to_string()
}

/// `[limits]` of each backend, for tests that must behave the same on both.
fn backend_limits(backend: &str, name: &str) -> String {
    match backend {
        "redis" => redis_limits(
            &redis_url(),
            &unique_prefix(name),
            "redis_timeout = \"2s\"\nfallback = \"fail-closed\"",
        ),
        _ => "\n[limits]\nbackend = \"local\"\n".to_string(),
    }
}

/// One principal over its own limit must not use up its tenant's: a request is admitted by
/// every limit it falls under or takes from none (issue 13.3).
async fn refused_requests_take_no_budget(backend: &str) {
    let up = upstream("app").await;
    let config = config_for(
        &[up.addr],
        &format!(
            "{}{}\n[tiers.free]\nrequests_per_second = 0.01\nburst = 12\n\
             principal_requests_per_second = 0.01\nprincipal_burst = 5\n\
             [tiers.pro]\nrequests_per_second = 0.01\nburst = 12\n",
            identity(false),
            backend_limits(backend, "fair")
        ),
    );
    let gw = TestGateway::start(
        &config,
        &[
            ("tenants.toml", TENANTS.as_bytes()),
            ("issuer.secret", ISSUER_SECRET.as_bytes()),
        ],
    );
    // eve: her 5, then 35 refusals of her own limit.
    let eve = token("eve", "acme");
    let mut outcomes = Vec::new();
    for _ in 0..40 {
        outcomes.push(outcome(
            &request(gw.addr, "acme", Some(&eve), "198.51.100.1").await,
        ));
    }
    assert!(outcomes[..5].iter().all(|o| o == "200"), "{outcomes:?}");
    assert!(
        outcomes[5..].iter().all(|o| o == "principal"),
        "{outcomes:?}\n{}",
        gw.log()
    );
    // The tenant's 12 minus eve's 5 are left for everybody else: bob's 5, then 2 of carol's.
    let bob = token("bob", "acme");
    let mut bob_outcomes = Vec::new();
    for _ in 0..5 {
        bob_outcomes.push(outcome(
            &request(gw.addr, "acme", Some(&bob), "198.51.100.2").await,
        ));
    }
    assert_eq!(bob_outcomes, ["200"; 5], "{}", gw.log());
    let carol = token("carol", "acme");
    let mut carol_outcomes = Vec::new();
    for _ in 0..4 {
        carol_outcomes.push(outcome(
            &request(gw.addr, "acme", Some(&carol), "198.51.100.3").await,
        ));
    }
    assert_eq!(carol_outcomes, ["200", "200", "tenant", "tenant"]);
    assert_eq!(up.served(), 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_take_no_budget_local() {
    refused_requests_take_no_budget("local").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_take_no_budget_redis() {
    refused_requests_take_no_budget("redis").await;
}

/// The demo's scenario: anonymous requests of a tenant (the example `free` tier, default
/// anonymous budgets) must not leave its users at 429.
async fn anonymous_flood_leaves_the_tenant_to_its_users(backend: &str) {
    let up = upstream("app").await;
    let config = config_for(
        &[up.addr],
        &format!(
            "{}{}\n[tiers.free]\nrequests_per_second = 5\nburst = 20\n\
             principal_requests_per_second = 2\nprincipal_burst = 10\n\
             [tiers.pro]\nrequests_per_second = 100\nburst = 200\n",
            identity(true),
            backend_limits(backend, "anonymous-flood")
        ),
    );
    let gw = TestGateway::start(
        &config,
        &[
            ("tenants.toml", TENANTS.as_bytes()),
            ("issuer.secret", ISSUER_SECRET.as_bytes()),
        ],
    );
    let replies: Vec<Reply> = stream::iter(0..40)
        .map(|_| request(gw.addr, "acme", None, "203.0.113.9"))
        .buffer_unordered(8)
        .collect()
        .await;
    let anonymous_admitted = replies.iter().filter(|r| r.status == 200).count();
    assert!(
        replies.iter().all(|r| r.status == 200 || r.status == 429),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    // Alice, signed in, gets her whole principal burst.
    let alice = token("alice", "acme");
    let mut alice_outcomes = Vec::new();
    for _ in 0..10 {
        alice_outcomes.push(outcome(
            &request(gw.addr, "acme", Some(&alice), "198.51.100.7").await,
        ));
    }
    assert_eq!(alice_outcomes, ["200"; 10], "{}", gw.log());
    assert!(anonymous_admitted < 40, "anonymous callers are limited");
    let refused = replies.iter().find(|r| r.status == 429).unwrap();
    assert!(
        outcome(refused).starts_with("anonymous"),
        "{}",
        refused.body
    );
    assert!(header(refused, "retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(up.served() as usize, anonymous_admitted + 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_flood_leaves_the_tenant_to_its_users_local() {
    anonymous_flood_leaves_the_tenant_to_its_users("local").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_flood_leaves_the_tenant_to_its_users_redis() {
    anonymous_flood_leaves_the_tenant_to_its_users("redis").await;
}

/// Anonymous callers: a budget per client address and one per tenant (tier settings), apart
/// from the users' budget.
async fn anonymous_budgets_per_client_and_tenant(backend: &str) {
    let up = upstream("app").await;
    let config = config_for(
        &[up.addr],
        &format!(
            "{}{}\n[tiers.free]\nrequests_per_second = 0.01\nburst = 3\n\
             anonymous_requests_per_second = 0.01\nanonymous_burst = 6\n\
             anonymous_client_requests_per_second = 0.01\nanonymous_client_burst = 4\n\
             [tiers.pro]\nrequests_per_second = 0.01\nburst = 3\n",
            identity(true),
            backend_limits(backend, "anonymous-budgets")
        ),
    );
    let gw = TestGateway::start(
        &config,
        &[
            ("tenants.toml", TENANTS.as_bytes()),
            ("issuer.secret", ISSUER_SECRET.as_bytes()),
        ],
    );
    let mut per_client = Vec::new();
    for client_ip in [
        "203.0.113.1",
        "203.0.113.2",
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
    ] {
        let mut outcomes = Vec::new();
        for _ in 0..6 {
            outcomes.push(outcome(&request(gw.addr, "acme", None, client_ip).await));
        }
        per_client.push(outcomes);
    }
    let client_limited = |n: usize| {
        let mut v = vec!["200".to_string(); n];
        v.resize(6, "anonymous-client".to_string());
        v
    };
    // 4 for the first address, then the tenant's anonymous 6 run out.
    assert_eq!(per_client[0], client_limited(4), "{}", gw.log());
    assert_eq!(
        per_client[1],
        [
            "200",
            "200",
            "anonymous",
            "anonymous",
            "anonymous",
            "anonymous"
        ]
    );
    assert!(
        per_client[2].iter().all(|o| o == "anonymous"),
        "{per_client:?}"
    );
    // The tenant's users still have all of theirs, and another tenant's anonymous callers
    // theirs.
    let alice = token("alice", "acme");
    for _ in 0..3 {
        let reply = request(gw.addr, "acme", Some(&alice), "203.0.113.1").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(
        request(gw.addr, "bigco", None, "203.0.113.1").await.status,
        200
    );
    assert_eq!(up.served(), 6 + 3 + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_budgets_per_client_and_tenant_local() {
    anonymous_budgets_per_client_and_tenant("local").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_budgets_per_client_and_tenant_redis() {
    anonymous_budgets_per_client_and_tenant("redis").await;
}

/// `gateway check` refuses limits that would break the request path or leave it unlimited,
/// naming the file, line and field (issue 14.3); `run` refuses the same before serving.
#[test]
fn out_of_range_limits_and_unknown_tiers_are_refused_naming_the_field() {
    let base = |extra: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[upstream.pool]]\nname = \"a\"\npeers = [\"127.0.0.1:2\"]\n\
             [tenancy]\nsources = [\"header\"]\nregistry = {{ file = \"tenants.toml\" }}\n\
             [tiers.free]\nrequests_per_second = 5\nburst = 10\n{extra}"
        )
    };
    let long_host = "a".repeat(100_000);
    let cases: Vec<(String, String, &str)> = vec![
        // (gateway.toml, tenants.toml, expected "file:line: field")
        (
            base("[tiers.pro]\nrequests_per_second = 1e-30\n"),
            String::new(),
            "gateway.toml:13:23: tiers.pro.requests_per_second",
        ),
        (
            base("[tiers.pro]\nrequests_per_second = 5\nanonymous_burst = 0\n"),
            String::new(),
            "tiers.pro.anonymous_burst",
        ),
        (
            base("[[limits.rule]]\nname = \"x\"\nrequests_per_second = 5e-324\nburst = 1\n"),
            String::new(),
            "limits.rule[0].requests_per_second",
        ),
        (
            base("[[limits.rule]]\nname = \"x\"\nrequests_per_second = 2e6\nburst = 1\n"),
            String::new(),
            "limits.rule[0].requests_per_second",
        ),
        (
            base(""),
            "[[tenant]]\nid = \"a\"\n\n[[tenant]]\nid = \"b\"\ntier = \"platinum\"\n".into(),
            "tenants.toml:6:8: tenant[1].tier",
        ),
        (
            base(""),
            "[[tenant]]\nid = \"a\"\nlimits = { requests_per_second = 1e-30 }\n".into(),
            "tenant[0].limits.requests_per_second",
        ),
        (
            base(""),
            "[[tenant]]\nid = \"a\"\nlimits = { burst = 0 }\n".into(),
            "tenant[0].limits.burst",
        ),
        (
            base(""),
            format!("[[tenant]]\nid = \"a\"\nhosts = [\"{long_host}\"]\n"),
            "tenant[0].hosts[0]",
        ),
    ];
    for (i, (config, tenants, expected)) in cases.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gateway.toml"), config).unwrap();
        std::fs::write(dir.path().join("tenants.toml"), tenants).unwrap();
        for command in ["check", "run"] {
            let out = Command::new(common::gateway_bin())
                .args([command, "--config"])
                .arg(dir.path().join("gateway.toml"))
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command} case {i}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(
                stderr.contains(expected),
                "{command} case {i}: expected `{expected}` in: {}",
                &stderr[..stderr.len().min(2000)]
            );
        }
    }
}
