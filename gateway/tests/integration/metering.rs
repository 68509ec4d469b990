//! Metering and audit through the real gateway: exporters against real HTTP receivers (that
//! fail on demand) and the real PostgreSQL ledger; restarts mid-export; a SIGKILL under load
//! with 0 lost and 0 duplicated events; the audit chain and the reports.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::common;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    client, eventually, gateway_bin, pg_url, sigkill_under_load, unique_table, upstream, Receiver,
    TestGateway,
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

# One request, then refused (429): the refusals are recorded, never billed.
[[tenant]]
id = "frozen"
billing = { stripe_customer = "cus_frozen", chargebee_subscription = "sub_frozen" }
limits = { requests_per_second = 0.001, burst = 1 }
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

# No limit but the one tenant override (frozen's).
[limits]
backend = "local"
[[limits.rule]]
name = "per-tenant"
per = "tenant"
requests_per_second = 100000
burst = 100000

[metering]
dir = "outbox"
fsync = "batch"

# Requests cost 0.0004 EUR each (0.0001 on pro), response bytes 0.09 EUR per GB.
[metering.pricing]
currency = "EUR"
[[metering.pricing.item]]
name = "requests"
unit_price = "0.0004"
tiers = {{ pro = "0.0001" }}
[[metering.pricing.item]]
name = "egress"
unit = "response-gb"
unit_price = "0.09"

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
    for (i, status) in [200, 429, 429].into_iter().enumerate() {
        assert_eq!(
            request(&gw, "frozen", &format!("/items/{i}")).await,
            status,
            "frozen"
        );
        expected += 1;
    }

    // The ledger: every event once, refused requests flagged.
    eventually(Duration::from_secs(20), || async {
        ledger_count(&db, &ledger, "").await == expected
    })
    .await
    .unwrap_or_else(|| panic!("ledger incomplete:\n{}", gw.log()));
    assert_eq!(
        ledger_count(&db, &ledger, "WHERE outcome = 'rejected'").await,
        4
    );
    assert_eq!(
        ledger_count(&db, &ledger, "WHERE tenant = 'acme' AND status = 200").await,
        10
    );
    assert_eq!(
        ledger_count(
            &db,
            &ledger,
            "WHERE tenant = 'frozen' AND outcome = 'rejected'"
        )
        .await,
        2
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

    // Stripe: only tenants with a Stripe customer, identifier = event id; refused requests
    // (frozen's two 429s) are not billed.
    eventually(Duration::from_secs(20), || async {
        stripe.received().len() >= 11
    })
    .await
    .expect("stripe delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stripe_events = stripe.received();
    assert_eq!(stripe_events.len(), 11);
    let mut customers = BTreeMap::<String, usize>::new();
    for r in &stripe_events {
        assert_eq!(r.path, "/v1/billing/meter_events");
        assert_eq!(r.headers["authorization"], "Bearer sk_test_123");
        let form: BTreeMap<String, String> = url_form(&r.body);
        *customers
            .entry(form["payload[stripe_customer_id]"].clone())
            .or_default() += 1;
        assert_eq!(form["event_name"], "api_requests");
        assert_eq!(
            r.headers["idempotency-key"].to_str().unwrap(),
            form["identifier"]
        );
    }
    assert_eq!(
        customers,
        BTreeMap::from([("cus_acme".to_string(), 10), ("cus_frozen".to_string(), 1)])
    );

    // Chargebee: acme and frozen's one forwarded request delivered, the poison tenant's events
    // dead-lettered without blocking.
    eventually(Duration::from_secs(20), || async {
        chargebee
            .received()
            .iter()
            .filter(|r| r.status == 200)
            .count()
            >= 11
    })
    .await
    .expect("chargebee delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let billed = |subscription: &str| {
        chargebee
            .received()
            .iter()
            .filter(|r| r.status == 200 && r.path.contains(subscription))
            .count()
    };
    assert_eq!((billed("sub_acme"), billed("sub_frozen")), (10, 1));
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
    let mut reports = Vec::new();
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
            "period,tenant,action,requests,rejected,interrupted,request_bytes,response_bytes,cost,currency"
        );
        assert!(
            lines[1].starts_with(&format!("{today}T00:00:00Z,acme,-,10,0,0,")),
            "{source:?}: {csv}"
        );
        // 10 requests at the free tier's 0.0004 EUR, plus each response byte at 0.09 EUR/GB.
        let fields: Vec<&str> = lines[1].split(',').collect();
        let response_bytes: u64 = fields[7].parse().unwrap();
        assert!(response_bytes > 0, "{csv}");
        // Exactly, in units of 10^-11 EUR: 0.004 EUR = 4 * 10^8, a byte 9.
        let units = 400_000_000 + response_bytes * 9;
        let expected_cost = format!("{}.{:011}", units / 10u64.pow(11), units % 10u64.pow(11));
        let expected_cost = expected_cost.trim_end_matches('0').trim_end_matches('.');
        assert_eq!(
            (fields[8], fields[9]),
            (expected_cost, "EUR"),
            "{source:?}: {csv}"
        );
        reports.push(csv.to_string());
    }
    // The outbox (this replica) and the ledger (every replica) agree to the last digit, also
    // grouped by tier.
    assert_eq!(reports[0], reports[1]);
    let by_tier = |source: Option<&str>| {
        let mut cmd = std::process::Command::new(gateway_bin());
        cmd.args(["usage", "report", "--config"])
            .arg(&gw.config_path)
            .args([
                "--from", &today, "--to", &tomorrow, "--bucket", "day", "--by", "tier", "--format",
                "json",
            ]);
        if let Some(l) = source {
            cmd.args(["--ledger", l]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let outbox_by_tier = by_tier(None);
    assert_eq!(outbox_by_tier, by_tier(Some("ledger")));
    // Refused requests (no tier known, nothing billed) and acme's and globex's on `free`.
    assert_eq!(
        (&outbox_by_tier[0]["tier"], &outbox_by_tier[0]["cost"]),
        (&serde_json::json!("-"), &serde_json::json!("0")),
        "{outbox_by_tier}"
    );
    assert_eq!(outbox_by_tier[1]["tier"], "free", "{outbox_by_tier}");
    assert_eq!(outbox_by_tier[1]["currency"], "EUR");
    // The same report as a workbook, written to a file: the totals match the CSV's.
    let xlsx = gw.dir.path().join("usage.xlsx");
    let out = std::process::Command::new(gateway_bin())
        .args(["usage", "report", "--config"])
        .arg(&gw.config_path)
        .args([
            "--tenant", "acme", "--from", &today, "--to", &tomorrow, "--bucket", "day", "--format",
            "xlsx", "--output",
        ])
        .arg(&xlsx)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&xlsx).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut totals = String::new();
    std::io::Read::read_to_string(
        &mut zip.by_name("xl/worksheets/sheet2.xml").unwrap(),
        &mut totals,
    )
    .unwrap();
    assert!(totals.contains("<v>10</v>"), "{totals}");
    assert!(zip.by_name("xl/chartsheets/sheet1.xml").is_ok());
    // And as a PDF: poppler reads the same totals and cost as the CSV's.
    let pdf = gw.dir.path().join("usage.pdf");
    let out = std::process::Command::new(gateway_bin())
        .args(["usage", "report", "--config"])
        .arg(&gw.config_path)
        .args([
            "--tenant", "acme", "--from", &today, "--to", &tomorrow, "--bucket", "day", "--format",
            "pdf", "--output",
        ])
        .arg(&pdf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::process::Command::new("pdftotext")
        .args(["-layout"])
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils; scripts/ensure-deps installs it)");
    let text = String::from_utf8_lossy(&text.stdout);
    let csv_fields: Vec<&str> = reports[0].lines().nth(1).unwrap().split(',').collect();
    for expected in [
        "Usage report".to_string(),
        "Tenant: acme".to_string(),
        format!(
            "Requests 10 Rejected 0 Interrupted 0 Response bytes {}",
            csv_fields[7]
        ),
        format!("Cost {} EUR", csv_fields[8]),
        "Requests and rejections per tenant".to_string(),
        "Cost per tenant (EUR)".to_string(),
    ] {
        let squeezed = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(squeezed.contains(&expected), "{expected:?} in {text}");
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
    // Killed at a moment when every client's request is inside the upstream.
    let completed = sigkill_under_load(
        &mut gw,
        &up,
        "/_upstream/slow?ms=200",
        &["globex"],
        CLIENTS,
        Duration::from_millis(1200),
    )
    .await;
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

/// The last segment (by name) of `dir` whose name starts with `prefix` and ends in `.jsonl`.
fn last_segment(dir: &std::path::Path, prefix: &str) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".jsonl")
        })
        .collect();
    segments.sort();
    segments.pop().unwrap()
}

/// A damaged outbox and audit log (a disk error or an edit left a line of bytes that are not
/// UTF-8 after the last records) neither keep the gateway from starting nor cost a record: the
/// outbox line is moved aside, every event is exported once, and the audit chain goes on from
/// its last readable record, `verify` naming the damaged line.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_outbox_and_audit_log_neither_stop_the_gateway_nor_lose_records() {
    let db = pg().await;
    let ledger = unique_table("usage_ledger");
    let up = upstream("app").await;
    let mut gw = TestGateway::start(
        &config(up.addr, &ledger, ""),
        &[("tenants.toml", TENANTS.as_bytes())],
    );
    for i in 0..10 {
        assert_eq!(request(&gw, "acme", &format!("/r/{i}")).await, 200);
    }
    eventually(Duration::from_secs(10), || async {
        ledger_count(&db, &ledger, "").await == 10
    })
    .await
    .expect("ledger");
    gw.kill();
    let damage = b"\xff\xfe{\"seq\":7}\n";
    let outbox = gw.dir.path().join("outbox");
    let audit = gw.dir.path().join("audit");
    for segment in [
        last_segment(&outbox, "segment-"),
        last_segment(&audit, "audit-"),
    ] {
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes.extend_from_slice(damage);
        std::fs::write(&segment, bytes).unwrap();
    }
    let audited_before = gateway::audit::read_all(&audit).unwrap().len();

    gw.restart();
    for i in 10..20 {
        assert_eq!(request(&gw, "acme", &format!("/r/{i}")).await, 200);
    }
    eventually(Duration::from_secs(10), || async {
        ledger_count(&db, &ledger, "").await == 20
    })
    .await
    .unwrap_or_else(|| panic!("ledger after the restart\n{}", gw.log()));
    let aside: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".jsonl.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), damage);
    assert!(gw.log().contains("were moved aside"), "{}", gw.log());

    gw.kill();
    let seqs: Vec<u64> = gateway::audit::read_all(&audit)
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.len() > audited_before, "records after the restart");
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    let failure = gateway::audit::verify(&audit).unwrap().failure.unwrap();
    assert_eq!(failure.problem, "damaged: not UTF-8 text");
    assert_eq!(failure.seq, None);
    db.batch_execute(&format!("DROP TABLE {ledger}"))
        .await
        .unwrap();
}

/// A gateway with an outbox and an audit log under `data_dir` (relative to the config) and an
/// admin listener, in front of `up`.
fn recording_config(
    up: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    data_dir: &str,
) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
grace_period = "20s"
shutdown_timeout = "1s"

[tenancy]
sources = ["header"]
registry = {{ file = "tenants.toml" }}

[metering]
dir = "{data_dir}/outbox"
flush_interval = "10ms"
buffer_bytes = 65536

[audit]
dir = "{data_dir}/audit"
buffer_bytes = 65536

[admin]
listen = "{admin}"
token_file = "admin.token"

[upstream]
read_timeout = "5s"
[upstream.health_check]
interval = "500ms"

[[upstream.pool]]
name = "app"
peers = ["{up}"]
"#
    )
}

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";

/// Request ids of `request` audit records, with their status.
fn audited(dir: &std::path::Path) -> BTreeMap<String, u64> {
    gateway::audit::read_all(dir)
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == "request")
        .map(|r| {
            (
                r["request_id"].as_str().unwrap_or_default().to_string(),
                r["status"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Usage events by request id.
fn metered(dir: &std::path::Path) -> BTreeMap<String, gateway::metering::UsageEvent> {
    gateway::metering::report::outbox_events(dir)
        .unwrap()
        .into_iter()
        .map(|e| (e.request_id.clone(), e))
        .collect()
}

/// SIGTERM under load: requests in flight finish and are answered; every answered request has
/// its completed usage event and its audit record; nothing after the signal gets a 500; the
/// process exits as soon as the last request is done, not at the end of the grace period.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_records_every_answered_request_and_exits_when_done() {
    const CLIENTS: usize = 16;
    let up = upstream("app").await;
    let admin = common::free_addr();
    let mut gw = TestGateway::start(
        &recording_config(up.addr, admin, "data"),
        &[
            ("tenants.toml", TENANTS.as_bytes()),
            ("admin.token", ADMIN_TOKEN.as_bytes()),
        ],
    );
    let url = gw.url("/_upstream/slow?ms=400");
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    // Answers before the signal: the load runs until there are enough, however slow the machine.
    let before_signal = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..CLIENTS {
        let (url, stop, counted) = (url.clone(), stop.clone(), before_signal.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut answered = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match http.get(&url).header("x-tenant", "globex").send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let id = r
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let closes = r
                            .headers()
                            .get("connection")
                            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                        let body_complete = r.bytes().await.is_ok();
                        answered.push((status, id, closes, body_complete));
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    // Listeners closed: the request never arrived.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            answered
        }));
    }
    eventually(Duration::from_secs(30), || async {
        before_signal.load(Ordering::SeqCst) >= CLIENTS * 3
    })
    .await
    .expect("the load runs");
    eventually(Duration::from_secs(5), || async {
        up.in_flight() as usize == CLIENTS
    })
    .await
    .expect("all clients in flight");
    let signalled = std::time::Instant::now();
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    let exit = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(10)));
    let took = signalled.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut answered = Vec::new();
    for c in clients {
        answered.extend(c.await.unwrap());
    }
    let log = gw.settled_log();
    let exit = exit.unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM\n{log}"));
    assert!(exit.success(), "{exit:?}\n{log}");
    // The requests in flight took 400 ms; the grace period is 20 s.
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM\n{log}"
    );
    for (status, id, closes, complete) in &answered {
        assert!(
            *status == 200 || (*status == 503 && *closes),
            "after SIGTERM only complete answers or 503 + Connection: close: {status} {id}\n{log}"
        );
        assert!(complete, "{id}: body cut off");
    }
    let ok: Vec<&String> = answered
        .iter()
        .filter(|(s, ..)| *s == 200)
        .map(|(_, id, ..)| id)
        .collect();
    assert!(
        ok.len() >= CLIENTS * 3,
        "the load ran: {} answered",
        ok.len()
    );
    assert_eq!(
        answered.len(),
        ok.len(),
        "the requests in flight at the signal were all served"
    );

    let data = gw.dir.path().join("data");
    let events = metered(&data.join("outbox"));
    let audit = audited(&data.join("audit"));
    for id in &ok {
        let event = events
            .get(*id)
            .unwrap_or_else(|| panic!("{id}: answered 200 but no usage event\n{log}"));
        assert_eq!(
            (event.outcome, event.status),
            (gateway::metering::Outcome::Completed, 200),
            "{id}: {event:?}"
        );
        assert!(event.response_bytes > 0, "{event:?}");
        assert_eq!(audit.get(*id), Some(&200), "{id}: no audit record\n{log}");
    }
    let report = gateway::audit::verify(&data.join("audit")).unwrap();
    assert_eq!(report.failure, None);
    assert!(
        !events
            .values()
            .any(|e| e.outcome == gateway::metering::Outcome::Interrupted),
        "nothing interrupted by a graceful shutdown"
    );
}

/// A small tmpfs mounted on a fresh directory; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with the reason on stderr) where mounting is not permitted (not root).
    fn mount(bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { dir }),
            other => {
                eprintln!("SKIPPED: cannot mount a tmpfs here (needs root): {other:?}");
                None
            }
        }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the filesystem to the last byte; returns the filler to remove later.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..1]).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The disk under the outbox and the audit log fills up: new requests get
/// `503 metering-unavailable` with `Retry-After` on a connection that stays open, `/readyz`
/// fails, the write errors are a metric; no forwarded request loses its records (those in
/// flight are held and written later); when space returns everything recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_waits_for_the_exporters_to_deliver_the_outbox() {
    const REQUESTS: usize = 40;
    let up = upstream("app").await;
    // A slow sink: 150 ms a batch of 5, so 40 events need over a second after the last
    // request (the receiver's thread sleeps; the test has workers to spare).
    let sink = Receiver::start(|_, _, _| {
        std::thread::sleep(Duration::from_millis(150));
        200
    })
    .await;
    let config = format!(
        "{}\n[[metering.exporter]]\nkind = \"cloudevents\"\nname = \"slow\"\nendpoint = \"{}\"\nbatch_size = 5\n",
        recording_config(up.addr, common::free_addr(), "data"),
        sink.url("/events")
    );
    let mut gw = TestGateway::start(
        &config,
        &[
            ("tenants.toml", TENANTS.as_bytes()),
            ("admin.token", ADMIN_TOKEN.as_bytes()),
        ],
    );
    for _ in 0..REQUESTS {
        assert_eq!(request(&gw, "globex", "/things").await, 200);
    }
    let signalled = Instant::now();
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(20));
    let took = signalled.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        gw.log()
    );
    let delivered: BTreeSet<String> = cloudevent_ids(&sink).into_iter().collect();
    eprintln!(
        "SIGTERM with {REQUESTS} events to export: {} delivered before exit, {took:?}",
        delivered.len()
    );
    assert_eq!(delivered.len(), REQUESTS, "{}", gw.log());
    assert!(
        gw.log()
            .contains("usage exporters delivered every recorded event"),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_new_requests_keeps_forwarded_records_and_recovers() {
    let Some(fs) = Tmpfs::mount(2 * 1024 * 1024) else {
        return;
    };
    let up = upstream("app").await;
    let admin = common::free_addr();
    let data = fs.path().display().to_string();
    let gw = TestGateway::start(
        &recording_config(up.addr, admin, &data),
        &[
            ("tenants.toml", TENANTS.as_bytes()),
            ("admin.token", ADMIN_TOKEN.as_bytes()),
        ],
    );
    let http = client();
    let admin_get = |path: &str| {
        let http = http.clone();
        let url = format!("http://{admin}{path}");
        async move {
            let r = http.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    let mut forwarded = Vec::new();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = gw.url(path);
        async move {
            let r = http
                .get(url)
                .header("x-tenant", "acme")
                .send()
                .await
                .unwrap();
            let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
            (r.status().as_u16(), id)
        }
    };
    for _ in 0..10 {
        let (status, id) = get("/_upstream/static").await;
        assert_eq!(status, 200);
        forwarded.push(id);
    }
    assert_eq!(admin_get("/readyz").await.0, 200);

    // A slow request is in flight when the disk fills.
    let slow = tokio::spawn(get("/_upstream/slow?ms=1500"));
    eventually(Duration::from_secs(5), || async { up.in_flight() == 1 })
        .await
        .expect("slow request in flight");
    let filler = fs.fill();

    // The last pages of the segment files may still take a few records; then every request
    // is refused, on the same connection.
    let addr = gw.addr;
    let answers = tokio::task::spawn_blocking(move || {
        let mut conn = common::RawConnection::open(addr);
        let mut answers = Vec::new();
        for _ in 0..200 {
            let answer = conn.get("/_upstream/static", "x-tenant: acme\r\n");
            let refused = answer.as_ref().is_some_and(|a| a.status == 503);
            answers.push(answer);
            if refused
                && answers.len() >= 3
                && answers
                    .iter()
                    .rev()
                    .take(3)
                    .all(|a| a.as_ref().is_some_and(|a| a.status == 503))
            {
                break;
            }
        }
        answers
    })
    .await
    .unwrap();
    let first_refusal = answers
        .iter()
        .position(|a| a.as_ref().is_some_and(|a| a.status == 503))
        .unwrap_or_else(|| panic!("never refused: {answers:?}\n{}", gw.log()));
    for answer in &answers {
        let answer = answer
            .as_ref()
            .unwrap_or_else(|| panic!("connection closed instead of an answer\n{}", gw.log()));
        if answer.status == 200 {
            forwarded.push(
                answer
                    .header("x-request-id")
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    for answer in answers.iter().skip(first_refusal).flatten() {
        assert_eq!(answer.status, 503, "{answer:?}\n{}", gw.log());
        assert!(answer.body.contains("metering-unavailable"), "{answer:?}");
        assert!(answer.header("retry-after").is_some(), "{answer:?}");
        assert_ne!(answer.header("connection"), Some("close"), "{answer:?}");
    }
    let (ready, body) = admin_get("/readyz").await;
    assert_eq!(ready, 503, "{body}");
    assert!(body.contains("No space left on device"), "{body}");
    let (slow_status, slow_id) = slow.await.unwrap();
    assert_eq!(slow_status, 200, "the request in flight is answered");
    forwarded.push(slow_id);
    let (_, metrics) = admin_get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_journal_write_errors_total") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Space returns: recovery needs nothing.
    std::fs::remove_file(filler).unwrap();
    let recovered = eventually(Duration::from_secs(5), || async {
        admin_get("/readyz").await.0 == 200
    })
    .await;
    assert!(recovered.is_some(), "{}", gw.log());
    for _ in 0..5 {
        let (status, id) = get("/_upstream/static").await;
        assert_eq!(status, 200);
        forwarded.push(id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = metered(&fs.path().join("outbox"));
    let audit = audited(&fs.path().join("audit"));
    for id in &forwarded {
        let event = events
            .get(id)
            .unwrap_or_else(|| panic!("{id}: forwarded without a usage event\n{}", gw.log()));
        assert_eq!(
            event.outcome,
            gateway::metering::Outcome::Completed,
            "{event:?}"
        );
        assert_eq!(
            audit.get(id),
            Some(&200),
            "{id}: forwarded without an audit record"
        );
    }
    let report = gateway::audit::verify(&fs.path().join("audit")).unwrap();
    assert_eq!(report.failure, None, "{report:?}");
}

/// Three weeks of hourly usage written to an outbox as the gateway would have, then
/// `gateway usage forecast` as of the end of them: the month-end projection is close to what
/// the same rate would give, and the quota and budget run out on the projected day.
#[tokio::test(flavor = "multi_thread")]
async fn usage_forecast_projects_the_month_and_when_quota_and_budget_run_out() {
    use gateway::metering::outbox::{FsyncPolicy, Outbox, OutboxSettings, RecordBody};
    use gateway::metering::{Outcome, UsageEvent};
    let dir = tempfile::tempdir().unwrap();
    // 10 requests an hour on weekdays, 4 at weekends, from Sunday 2026-11-01.
    let start = 1_793_491_200i64; // 2026-11-01T00:00:00Z
    let rate = |hour: i64| -> u64 {
        // 2026-11-01 is a Sunday: day 0 and every 7th are Sundays, day 6 a Saturday.
        match (hour / 24) % 7 {
            0 | 6 => 4,
            _ => 10,
        }
    };
    let (outbox, _) = Outbox::open(OutboxSettings {
        dir: dir.path().join("outbox"),
        fsync: FsyncPolicy::Interval,
        fsync_interval: Duration::from_millis(100),
        segment_bytes: 64 * 1024 * 1024,
        flush_interval: Duration::from_millis(10),
        buffer_bytes: 16 * 1024 * 1024,
    })
    .unwrap();
    let mut used = 0u64;
    for hour in 0..21 * 24 {
        for i in 0..rate(hour) {
            used += 1;
            let time = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH
                    + Duration::from_secs((start + hour * 3600 + i as i64) as u64),
            )
            .to_string();
            let event = UsageEvent {
                id: format!("e-{hour}-{i}"),
                time,
                request_id: format!("r-{hour}-{i}"),
                tenant: Some("acme".into()),
                principal: Some("alice".into()),
                action: Some("projects:read".into()),
                route: Some("/projects/{id}".into()),
                method: "GET".into(),
                status: 200,
                request_bytes: 0,
                response_bytes: 100,
                upstream_latency_us: Some(100),
                region: None,
                outcome: Outcome::Completed,
                reason: None,
                meters: vec![],
                tier: Some("free".into()),
                attributes: Default::default(),
            };
            outbox
                .complete_now(&RecordBody::Complete(Box::new(event)))
                .await
                .unwrap();
        }
    }
    outbox.flush().unwrap();
    std::fs::write(
        dir.path().join("tenants.toml"),
        "[[tenant]]\nid = \"acme\"\ntier = \"free\"\n[[tenant.budgets]]\nname = \"monthly\"\namount = \"5.00\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        r#"
[server]
listen = ["127.0.0.1:1"]
[[upstream.pool]]
name = "app"
peers = ["127.0.0.1:2"]
[tenancy]
sources = ["header"]
registry = { file = "tenants.toml" }
[tiers.free]
monthly_requests = 5000
[limits]
backend = "redis"
redis_url = "redis://127.0.0.1:6379"
[metering]
dir = "outbox"
[metering.pricing]
currency = "EUR"
[[metering.pricing.item]]
name = "requests"
unit_price = "0.001"
"#,
    )
    .unwrap();
    let out = std::process::Command::new(gateway_bin())
        .args(["usage", "forecast", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .args(["--at", "2026-11-22T00:00:00Z", "--weeks", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = |meter: &str| {
        rows.iter()
            .find(|r| r["meter"] == meter)
            .unwrap_or_else(|| panic!("{meter} in {rows:?}"))
    };
    // What the same rate would add over the last 8 days of November.
    let truth = used + (21 * 24..30 * 24).map(rate).sum::<u64>();
    let requests = row("requests");
    assert_eq!(requests["used"], used as f64, "{requests}");
    assert_eq!(requests["month"], "2026-11");
    assert_eq!(requests["limit_name"], "monthly quota");
    assert_eq!(requests["seasons"], "daily+weekly");
    let projected = requests["projected"].as_f64().unwrap();
    assert!(
        (projected - truth as f64).abs() / truth as f64 <= 0.05,
        "projected {projected} vs {truth}: {requests}"
    );
    // 5,000 requests: reached on the day the rate says (to within a day).
    let mut cumulative = used;
    let mut hour = 21 * 24;
    while cumulative < 5000 {
        cumulative += rate(hour);
        hour += 1;
    }
    let expected = start + hour * 3600;
    let exhausted = requests["exhausted_at"].as_str().unwrap();
    let exhausted = <jiff::Timestamp as std::str::FromStr>::from_str(exhausted)
        .unwrap()
        .as_second();
    assert!(
        (exhausted - expected).abs() <= 86_400,
        "quota runs out at {exhausted}, the rate says {expected}: {requests}"
    );
    // The cost meter against the 5 EUR budget: 0.001 EUR a request, so the same day.
    let cost = row("cost");
    assert_eq!(cost["unit"], "EUR");
    assert_eq!(cost["limit_name"], "budget monthly");
    assert!(
        (cost["used"].as_f64().unwrap() - used as f64 * 0.001).abs() < 1e-6,
        "{cost}"
    );
    assert_eq!(cost["exhausted_at"], requests["exhausted_at"], "{cost}");
    // CSV has the same rows.
    let out = std::process::Command::new(gateway_bin())
        .args(["usage", "forecast", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .args([
            "--at",
            "2026-11-22T00:00:00Z",
            "--weeks",
            "3",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        csv.starts_with("tenant,meter,unit,month,used,projected,"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + rows.len());
}
