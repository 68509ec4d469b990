//! Spending budgets through real gateways sharing one Redis: spend counted once across
//! replicas, each threshold announced once cluster-wide, an enforced budget refused with 402
//! on every replica, and the spend of a replica that shuts down kept.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use serde_json::Value;

use crate::common::{
    assert_problem, client, config_for, eventually, upstream, Receiver, TestGateway,
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn tenants(receiver: &Receiver) -> String {
    format!(
        r#"
# 0.0004 EUR a request: acme's budget is spent by its 10th request.
[[tenant]]
id = "acme"
[[tenant.webhooks]]
url = "{hooks}"
secret = "{SECRET}"
[[tenant.budgets]]
name = "monthly"
amount = "0.0040"
thresholds = [50, 100]
enforce = true

[[tenant]]
id = "globex"
[[tenant.webhooks]]
url = "{hooks}"
secret = "{SECRET}"
[[tenant.budgets]]
name = "calls"
requests = 4
thresholds = [100]
enforce = true
"#,
        hooks = receiver.url("/hooks")
    )
}

fn config(up: std::net::SocketAddr, prefix: &str, flush: &str) -> String {
    let redis = std::env::var("GATEWAY_TEST_REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
    config_for(
        &[up],
        &format!(
            r#"
[tenancy]
sources = ["header"]
registry = {{ file = "tenants.toml" }}

[limits]
backend = "redis"
redis_url = "{redis}"
key_prefix = "{prefix}"
redis_timeout = "2s"

[metering]
dir = "outbox"
budget_flush_interval = "{flush}"
[metering.pricing]
currency = "EUR"
[[metering.pricing.item]]
name = "requests"
unit_price = "0.0004"

[webhooks]
dir = "webhooks"
retry_delay = "50ms"
"#
        ),
    )
}

async fn get(gw: &TestGateway, tenant: &str) -> (u16, Option<String>, String) {
    let response = client()
        .get(gw.url("/x"))
        .header("x-tenant", tenant)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, response.text().await.unwrap())
}

/// `(tenant, budget, percent)` of every `budget.threshold` delivered.
/// The thresholds announced: one per event, however often it was delivered — delivery is at
/// least once (a delivery in flight when a replica stops is sent again at its next start, with
/// the same `webhook-id`, on which receivers deduplicate); an event emitted twice has two ids.
fn thresholds(receiver: &Receiver) -> Vec<(String, String, u64)> {
    let mut ids = std::collections::HashSet::new();
    let mut seen: Vec<(String, String, u64)> = receiver
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .filter(|r| ids.insert(r.headers.get("webhook-id").cloned()))
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .filter(|e| e["type"] == "budget.threshold")
        .map(|e| {
            (
                e["data"]["tenant"].as_str().unwrap().to_string(),
                e["data"]["budget"].as_str().unwrap().to_string(),
                e["data"]["percent"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_are_shared_announced_once_enforced_everywhere_and_kept_at_shutdown() {
    let up = upstream("app").await;
    let receiver = Receiver::start(|_, _, _| 200).await;
    let prefix = format!(
        "gwtest:budgets:{}:{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let registry = tenants(&receiver);
    let files = [("tenants.toml", registry.as_bytes())];
    let a = TestGateway::start(&config(up.addr, &prefix, "100ms"), &files);
    let b = TestGateway::start(&config(up.addr, &prefix, "100ms"), &files);

    // Nine requests, spread over both replicas: 0.0036 of 0.0040 spent, all served.
    for i in 0..9 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, _, body) = get(gw, "acme").await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    eventually(Duration::from_secs(5), || async {
        thresholds(&receiver).len() == 1
    })
    .await
    .expect("the 50 % threshold announced");
    // The tenth spends the budget; once the replicas' tallies reach Redis both refuse.
    assert_eq!(get(&b, "acme").await.0, 200);
    for gw in [&a, &b] {
        let refused = eventually(Duration::from_secs(5), || async {
            get(gw, "acme").await.0 == 402
        })
        .await;
        assert!(refused.is_some(), "a spent, enforced budget is refused");
    }
    let (status, retry_after, body) = get(&a, "acme").await;
    assert_problem(status, &body, 402, "budget-exhausted");
    let problem: Value = serde_json::from_str(&body).unwrap();
    let resets_at = problem["resets_at"].as_str().unwrap();
    assert!(
        resets_at.ends_with("-01T00:00:00Z"),
        "resets at the next month: {problem}"
    );
    let retry_after: u64 = retry_after.unwrap().parse().unwrap();
    assert!((1..=31 * 86_400).contains(&retry_after), "{retry_after}");
    assert!(
        problem["detail"].as_str().unwrap().contains("`monthly`"),
        "{problem}"
    );

    // Every threshold once, cluster-wide, whichever replica's flush crossed it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        thresholds(&receiver),
        [
            ("acme".to_string(), "monthly".to_string(), 50),
            ("acme".to_string(), "monthly".to_string(), 100),
        ]
    );

    // The budget raised (A's registry file rewritten and reloaded): A serves acme again at
    // once — not only once the month is over — while B, whose file still says 0.0040, refuses.
    std::fs::write(
        a.dir.path().join("tenants.toml"),
        registry.replace("amount = \"0.0040\"", "amount = \"0.0080\""),
    )
    .unwrap();
    a.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(10), || async {
        get(&a, "acme").await.0 == 200
    })
    .await
    .unwrap_or_else(|| panic!("a raised budget is still refused:\n{}", a.log()));
    assert_eq!(get(&b, "acme").await.0, 402);

    // A replica that flushes only when it stops: globex's four requests there are counted at
    // its graceful shutdown, so replica A (which never served globex) refuses globex next.
    let mut c = TestGateway::start(&config(up.addr, &prefix, "1h"), &files);
    for _ in 0..4 {
        assert_eq!(get(&c, "globex").await.0, 200);
    }
    assert!(!thresholds(&receiver).iter().any(|t| t.0 == "globex"));
    c.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(c.wait_exit(Duration::from_secs(10)).is_some(), "C stopped");
    // A's first globex request is served (A had no reason to refuse it) and counted; its next
    // flush returns the cluster-wide total, 5 of 4 only if C's four were kept.
    assert_eq!(get(&a, "globex").await.0, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _, body) = get(&a, "globex").await;
    assert_problem(status, &body, 402, "budget-exhausted");
    // C's last flush crossed globex's 100 %: announced by C, whose shutdown wrote the event to
    // its webhook queue (delivered then, or at its next start), once.
    c.restart();
    eventually(Duration::from_secs(10), || async {
        thresholds(&receiver).iter().any(|t| t.0 == "globex")
    })
    .await
    .unwrap_or_else(|| panic!("globex's threshold lost at C's shutdown:\n{}", c.log()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        thresholds(&receiver)
            .into_iter()
            .filter(|t| t.0 == "globex")
            .collect::<Vec<_>>(),
        [("globex".to_string(), "calls".to_string(), 100)]
    );
    // No threshold of acme's was announced twice meanwhile.
    let acme: Vec<_> = thresholds(&receiver)
        .into_iter()
        .filter(|t| t.0 == "acme")
        .collect();
    assert_eq!(acme.len(), 2, "{acme:?}");
}

/// Sets Redis keys with `redis-cli` (the tests' Redis, as the gateway sees it).
fn redis_set(pairs: &[(String, i64)]) {
    use std::io::Write as _;
    let url = std::env::var("GATEWAY_TEST_REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
    let mut child = std::process::Command::new("redis-cli")
        .args(["-u", &url, "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli (scripts/ensure-deps installs redis-tools)");
    let mut input = String::new();
    for (key, value) in pairs {
        input.push_str(&format!("SET {key} {value} EX 3600\r\n"));
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_forecast_to_run_out_is_announced_once_days_ahead() {
    let up = upstream("app").await;
    let receiver = Receiver::start(|_, _, _| 200).await;
    let prefix = format!(
        "gwtest:budget-forecast:{}:{}",
        std::process::id(),
        rand::random::<u32>()
    );
    // Three weeks of history at 10 EUR an hour, and 999 of the month's 1,000 EUR spent: the
    // forecast sees the budget run out within the next hours.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let this_hour = now / 3600;
    let month = {
        let date = jiff::Timestamp::from_second(now)
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        format!("{}{:02}", date.year(), date.month())
    };
    let mut seed: Vec<(String, i64)> = (this_hour - 504..this_hour)
        .map(|h| {
            (
                format!("{prefix}:budget:initech:monthly:h:{h}"),
                10_000_000_000,
            )
        })
        .collect();
    seed.push((
        format!("{prefix}:budget:initech:monthly:{month}"),
        999_000_000_000,
    ));
    redis_set(&seed);
    let tenants = format!(
        r#"
[[tenant]]
id = "initech"
[[tenant.webhooks]]
url = "{}"
secret = "{SECRET}"
[[tenant.budgets]]
name = "monthly"
amount = "1000.00"
thresholds = [100]
"#,
        receiver.url("/hooks")
    );
    let config = config(up.addr, &prefix, "100ms").replace(
        "budget_flush_interval = \"100ms\"",
        "budget_flush_interval = \"100ms\"\nbudget_forecast_interval = \"300ms\"",
    );
    let gw = TestGateway::start(&config, &[("tenants.toml", tenants.as_bytes())]);
    // One request makes the budget one this replica serves (and forecasts).
    assert_eq!(get(&gw, "initech").await.0, 200);
    let forecasts = || {
        receiver
            .received()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
            .filter(|e| e["type"] == "budget.forecast_exceeds")
            .collect::<Vec<_>>()
    };
    eventually(Duration::from_secs(10), || async {
        !forecasts().is_empty()
    })
    .await
    .expect("the overrun is announced");
    // Forecasts run every 300 ms: still one announcement a second later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let announced = forecasts();
    assert_eq!(announced.len(), 1, "{announced:?}");
    let data = &announced[0]["data"];
    assert_eq!(data["tenant"], "initech");
    assert_eq!(data["budget"], "monthly");
    assert_eq!(data["amount"], "1000.00");
    assert_eq!(data["unit"], "EUR");
    assert_eq!(data["history_hours"], 504);
    let spent: f64 = data["spent"].as_str().unwrap().parse().unwrap();
    assert!((999.0..1000.0).contains(&spent), "{data}");
    let projected: f64 = data["projected"].as_str().unwrap().parse().unwrap();
    assert!(projected > 1000.0, "{data}");
    let expected = data["expected_exhaustion"].as_str().unwrap();
    let expected = <jiff::Timestamp as std::str::FromStr>::from_str(expected)
        .unwrap()
        .as_second();
    let resets =
        <jiff::Timestamp as std::str::FromStr>::from_str(data["resets_at"].as_str().unwrap())
            .unwrap()
            .as_second();
    assert!(expected > now - 3600 && expected <= resets, "{data}");
}
