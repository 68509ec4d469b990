//! Metering and audit through the real gateway: exporters against real HTTP receivers (that
//! fail on demand) and the real PostgreSQL ledger; restarts mid-export; a SIGKILL under load
//! with 0 lost and 0 duplicated events; the audit chain and the reports.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    client, eventually, gateway_bin, pg_url, unique_table, upstream, Receiver, TestGateway,
};

const TENANTS: &str = r#"
[[tenant]]
id = "acme"
billing = { stripe_customer = "cus_acme", chargebee_subscription = "sub_acme" }

[[tenant]]
id = "globex"

[[tenant]]
id = "poison"
billing = { chargebee_subscription = "sub_poison" }
"#;

fn config(up: std::net::SocketAddr, ledger: &str, exporters: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
grace_period = "1s"
shutdown_timeout = "1s"

[tenancy]
sources = ["header"]
registry = {{ file = "tenants.toml" }}

[metering]
dir = "outbox"
fsync = "batch"

[[metering.exporter]]
kind = "postgres"
name = "ledger"
url = "{pg}"
ledger_table = "{ledger}"
batch_size = 50
{exporters}

[audit]
dir = "audit"

[upstream]
read_timeout = "5s"
[upstream.health_check]
interval = "500ms"

[[upstream.pool]]
name = "app"
peers = ["{up}"]
"#,
        pg = pg_url()
    )
}

async fn pg() -> tokio_postgres::Client {
    gateway::db::connect(&pg_url(), None)
        .await
        .expect("PostgreSQL")
}

async fn ledger_count(db: &tokio_postgres::Client, table: &str, filter: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table} {filter}"), &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(-1)
}

async fn request(gw: &TestGateway, tenant: &str, path: &str) -> u16 {
    client()
        .get(gw.url(path))
        .header("x-tenant", tenant)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn cloudevent_ids(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| serde_json::from_slice::<Vec<serde_json::Value>>(&r.body).unwrap_or_default())
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_reaches_every_exporter_exactly_once() {
    let db = pg().await;
    let ledger = unique_table("usage_ledger");
    let up = upstream("app").await;
    // OpenMeter-style CloudEvents receiver: the first two deliveries fail with 503.
    let openmeter = Receiver::start(|_, _, attempt| if attempt < 2 { 503 } else { 200 }).await;
    let stripe = Receiver::start(|_, _, _| 200).await;
    // Chargebee refuses the poison tenant's subscription (a poison event, not an outage).
    let chargebee = Receiver::start(|path, _, _| {
        if path.contains("sub_poison") {
            400
        } else {
            200
        }
    })
    .await;
    let exporters = format!(
        r#"
[[metering.exporter]]
kind = "cloudevents"
name = "openmeter"
endpoint = "{}"
batch_size = 7

[[metering.exporter]]
kind = "stripe"
name = "stripe"
endpoint = "{}"
api_key_env = "TEST_STRIPE_KEY"
event_name = "api_requests"

[[metering.exporter]]
kind = "chargebee"
name = "chargebee"
endpoint = "{}"
api_key_env = "TEST_CHARGEBEE_KEY"
item_price_id = "api-calls-EUR"
"#,
        openmeter.url("/api/v1/events"),
        stripe.url(""),
        chargebee.url(""),
    );
    let gw = TestGateway::start_env(
        &config(up.addr, &ledger, &exporters),
        &[("tenants.toml", TENANTS.as_bytes())],
        &[
            ("TEST_STRIPE_KEY", "sk_test_123"),
            ("TEST_CHARGEBEE_KEY", "cb_test_456"),
        ],
    );
    let mut expected = 0;
    for (tenant, n, status) in [
        ("acme", 10, 200),
        ("globex", 5, 200),
        ("poison", 3, 200),
        ("nobody", 2, 404),
    ] {
        for i in 0..n {
            assert_eq!(
                request(&gw, tenant, &format!("/items/{i}")).await,
                status,
                "{tenant}"
            );
            expected += 1;
        }
    }

    // The ledger: every event once, refused requests flagged.
    eventually(Duration::from_secs(20), || async {
        ledger_count(&db, &ledger, "").await == expected
    })
    .await
    .unwrap_or_else(|| panic!("ledger incomplete:\n{}", gw.log()));
    assert_eq!(
        ledger_count(&db, &ledger, "WHERE outcome = 'rejected'").await,
        2
    );
    assert_eq!(
        ledger_count(&db, &ledger, "WHERE tenant = 'acme' AND status = 200").await,
        10
    );

    // CloudEvents: retried after the failures, every id exactly once among the successes.
    eventually(Duration::from_secs(20), || async {
        cloudevent_ids(&openmeter).len() as i64 >= expected
    })
    .await
    .expect("cloudevents delivered");
    let ids = cloudevent_ids(&openmeter);
    assert_eq!(
        ids.len() as i64,
        expected,
        "duplicates among successful deliveries"
    );
    assert_eq!(ids.iter().collect::<HashSet<_>>().len() as i64, expected);
    let first = &openmeter.received()[0];
    assert_eq!(
        first.headers["content-type"],
        "application/cloudevents-batch+json"
    );
    let sample: Vec<serde_json::Value> =
        serde_json::from_slice(&openmeter.received().last().unwrap().body).unwrap();
    assert_eq!(sample[0]["specversion"], "1.0");
    assert_eq!(sample[0]["source"], "policy-gateway");
    assert!(
        openmeter
            .received()
            .iter()
            .filter(|r| r.status == 503)
            .count()
            == 2
    );

    // Stripe: only tenants with a Stripe customer, identifier = event id.
    eventually(Duration::from_secs(20), || async {
        stripe.received().len() >= 10
    })
    .await
    .expect("stripe delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stripe_events = stripe.received();
    assert_eq!(stripe_events.len(), 10);
    for r in &stripe_events {
        assert_eq!(r.path, "/v1/billing/meter_events");
        assert_eq!(r.headers["authorization"], "Bearer sk_test_123");
        let form: BTreeMap<String, String> = url_form(&r.body);
        assert_eq!(form["payload[stripe_customer_id]"], "cus_acme");
        assert_eq!(form["event_name"], "api_requests");
        assert_eq!(
            r.headers["idempotency-key"].to_str().unwrap(),
            form["identifier"]
        );
    }

    // Chargebee: acme delivered, the poison tenant's events dead-lettered without blocking.
    eventually(Duration::from_secs(20), || async {
        chargebee
            .received()
            .iter()
            .filter(|r| r.status == 200)
            .count()
            == 10
    })
    .await
    .expect("chargebee delivered");
    let dead = gw.dir.path().join("outbox/dead-letter/chargebee.jsonl");
    eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&dead)
            .map(|t| t.lines().count() == 3)
            .unwrap_or(false)
    })
    .await
    .expect("poison events dead-lettered");

    // The audit chain verifies, and the usage report sees the same events.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = std::process::Command::new(gateway_bin())
        .args(["audit", "verify"])
        .arg(gw.dir.path().join("audit"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("{expected} records")), "{stdout}");
    let today =
        humantime::format_rfc3339(std::time::SystemTime::now()).to_string()[..10].to_string();
    let tomorrow =
        humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(86_400))
            .to_string()[..10]
            .to_string();
    for source in [None, Some("ledger")] {
        let mut cmd = std::process::Command::new(gateway_bin());
        cmd.args(["usage", "report", "--config"])
            .arg(&gw.config_path)
            .args([
                "--tenant", "acme", "--from", &today, "--to", &tomorrow, "--bucket", "day",
                "--format", "csv",
            ]);
        if let Some(l) = source {
            cmd.args(["--ledger", l]);
        }
        let out = cmd.output().unwrap();
        let csv = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{csv}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "period,tenant,action,requests,rejected,interrupted,request_bytes,response_bytes"
        );
        assert!(
            lines[1].starts_with(&format!("{today}T00:00:00Z,acme,-,10,0,0,")),
            "{source:?}: {csv}"
        );
    }
    db.batch_execute(&format!("DROP TABLE {ledger}"))
        .await
        .unwrap();
}

fn url_form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            Some((decode(k), decode(v)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_in_the_middle_of_export_delivers_exactly_once() {
    let db = pg().await;
    let ledger = unique_table("usage_ledger");
    let up = upstream("app").await;
    // The CloudEvents sink is down until we say so.
    let down = Arc::new(AtomicBool::new(true));
    let flag = down.clone();
    let sink = Receiver::start(move |_, _, _| {
        if flag.load(Ordering::SeqCst) {
            503
        } else {
            200
        }
    })
    .await;
    let exporters = format!(
        "[[metering.exporter]]\nkind = \"cloudevents\"\nname = \"openmeter\"\nendpoint = \"{}\"\nbatch_size = 4\n",
        sink.url("/events")
    );
    let mut gw = TestGateway::start(
        &config(up.addr, &ledger, &exporters),
        &[("tenants.toml", TENANTS.as_bytes())],
    );
    for i in 0..25 {
        assert_eq!(request(&gw, "acme", &format!("/r/{i}")).await, 200);
    }
    eventually(Duration::from_secs(10), || async {
        ledger_count(&db, &ledger, "").await == 25
    })
    .await
    .expect("ledger");
    // Killed while the CloudEvents exporter is stuck retrying, restarted, more traffic.
    gw.kill();
    gw.restart();
    for i in 25..40 {
        assert_eq!(request(&gw, "acme", &format!("/r/{i}")).await, 200);
    }
    down.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(30), || async {
        cloudevent_ids(&sink).iter().collect::<HashSet<_>>().len() == 40
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "cloudevents after restart: {}\n{}",
            cloudevent_ids(&sink).len(),
            gw.log()
        )
    });
    assert_eq!(
        cloudevent_ids(&sink).len(),
        40,
        "an event was delivered twice"
    );
    eventually(Duration::from_secs(10), || async {
        ledger_count(&db, &ledger, "").await == 40
    })
    .await
    .expect("ledger after restart");
    assert_eq!(
        ledger_count(&db, &ledger, "WHERE outcome = 'interrupted'").await,
        0
    );
    db.batch_execute(&format!("DROP TABLE {ledger}"))
        .await
        .unwrap();
}

/// SIGKILL under a bounded load: every request the upstream received is in the ledger exactly
/// once; those cut off by the kill are flagged `interrupted`.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_nothing_and_counts_nothing_twice() {
    const CLIENTS: u64 = 8;
    let db = pg().await;
    let ledger = unique_table("usage_ledger");
    let up = upstream("app").await;
    let mut gw = TestGateway::start(
        &config(up.addr, &ledger, ""),
        &[("tenants.toml", TENANTS.as_bytes())],
    );
    let url = gw.url("/_upstream/slow?ms=200");
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (url, stop) = (url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut ok = 0u64;
            while !stop.load(Ordering::SeqCst) {
                match http.get(&url).header("x-tenant", "globex").send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            ok
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Kill at a moment when every client's request is inside the upstream.
    eventually(Duration::from_secs(5), || async {
        up.in_flight() == CLIENTS
    })
    .await
    .expect("all clients in flight");
    gw.kill();
    stop.store(true, Ordering::SeqCst);
    let mut completed = 0;
    for c in clients {
        completed += c.await.unwrap();
    }
    let received = up.received();
    assert!(
        completed >= CLIENTS * 2,
        "the load ran ({completed} completed)"
    );

    gw.restart();
    let settled = eventually(Duration::from_secs(20), || async {
        ledger_count(&db, &ledger, "").await == received as i64
    })
    .await;
    let in_ledger = ledger_count(&db, &ledger, "").await;
    assert!(
        settled.is_some(),
        "ledger {in_ledger} vs upstream received {received}\n{}",
        gw.log()
    );
    // Nothing more arrives later (no duplicates trickling in).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ledger_count(&db, &ledger, "").await, received as i64);
    assert_eq!(
        ledger_count(&db, &ledger, "WHERE outcome = 'interrupted'").await,
        CLIENTS as i64
    );
    assert_eq!(
        ledger_count(&db, &ledger, "WHERE outcome = 'completed'").await,
        (received - CLIENTS) as i64
    );
    db.batch_execute(&format!("DROP TABLE {ledger}"))
        .await
        .unwrap();
}
