//! Signed webhooks through the real gateway: quota thresholds (80 %, 100 %), tenant suspension
//! and failed reloads reach their subscribers with valid Standard Webhooks signatures, failed
//! attempts are retried with the same `webhook-id`, and a delivery pending when the gateway is
//! killed is made after the restart.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{client, config_for, eventually, upstream, Received, Receiver, TestGateway};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;

const TENANT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OPERATOR_SECRET: &str = "whsec_b3BlcmF0b3Itc2VjcmV0LWZvci10ZXN0cy0wMTIz";

/// Checks a delivery's signature the way a receiver following the specification would.
fn verify(secret: &str, received: &Received) -> bool {
    let header = |n: &str| {
        received
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(&received.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

fn event_type(r: &Received) -> String {
    serde_json::from_slice::<Value>(&r.body).unwrap()["type"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn tenants(receiver: &Receiver, status: &str) -> String {
    format!(
        r#"
[[tenant]]
id = "acme"
tier = "free"
status = "{status}"
[[tenant.webhooks]]
url = "{}"
secret = "{TENANT_SECRET}"
"#,
        receiver.url("/acme-hooks")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_signed_retried_and_survive_a_restart() {
    let up = upstream("app").await;
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    // The first attempt of every event fails; later ones succeed unless `failing` is set.
    // (Events are told apart by their body: subscribers' lanes deliver concurrently.)
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    let receiver = Receiver::start(move |_, body, _| {
        let first = seen.lock().unwrap().insert(body.to_vec());
        if flag.load(Ordering::SeqCst) || first {
            503
        } else {
            200
        }
    })
    .await;
    let config = quota_config(
        up.addr,
        &format!(
            "retry_delay = \"50ms\"\n[[webhooks.subscriber]]\nurl = \"{}\"\nsecret = \"{OPERATOR_SECRET}\"\nevents = [\"policy.reload_failed\"]\n",
            receiver.url("/operator-hooks")
        ),
    );
    let mut gw = TestGateway::start(
        &config,
        &[("tenants.toml", tenants(&receiver, "active").as_bytes())],
    );
    for _ in 0..5 {
        let status = client()
            .get(gw.url("/x"))
            .header("x-tenant", "acme")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    // Suspension through a registry reload, then a refused reload.
    std::fs::write(
        gw.dir.path().join("tenants.toml"),
        tenants(&receiver, "suspended"),
    )
    .unwrap();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    let suspended = eventually(Duration::from_secs(5), || async {
        client()
            .get(gw.url("/x"))
            .header("x-tenant", "acme")
            .send()
            .await
            .unwrap()
            .status()
            == 403
    })
    .await;
    assert!(suspended.is_some());
    std::fs::write(
        gw.dir.path().join("tenants.toml"),
        "[[tenant]]\nid = \"Not Valid\"\n",
    )
    .unwrap();
    gw.signal(nix::sys::signal::Signal::SIGHUP);

    let delivered = |r: &Received| r.status == 200;
    let all = eventually(Duration::from_secs(10), || async {
        receiver.received().iter().filter(|r| delivered(r)).count() >= 4
    })
    .await;
    let received = receiver.received();
    assert!(
        all.is_some(),
        "deliveries: {:?}",
        received
            .iter()
            .map(|r| (r.path.clone(), r.status, event_type(r)))
            .collect::<Vec<_>>()
    );

    // Everything delivered: the queue file is emptied.
    let queue = gw.dir.path().join("webhooks/queue.jsonl");
    let emptied = eventually(Duration::from_secs(5), || async {
        std::fs::metadata(&queue).map(|m| m.len()).ok() == Some(0)
    })
    .await;
    assert!(emptied.is_some(), "{:?}", std::fs::read_to_string(&queue));

    let ok: Vec<&Received> = received.iter().filter(|r| delivered(r)).collect();
    let tenant_events: Vec<Value> = ok
        .iter()
        .filter(|r| r.path == "/acme-hooks")
        .map(|r| {
            assert!(verify(TENANT_SECRET, r), "bad tenant signature");
            serde_json::from_slice(&r.body).unwrap()
        })
        .collect();
    let summary: Vec<(String, Value)> = tenant_events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["data"]["percent"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("quota.threshold".to_string(), Value::from(80)),
            ("quota.threshold".to_string(), Value::from(100)),
            ("tenant.suspended".to_string(), Value::Null),
        ]
    );
    assert_eq!(tenant_events[0]["data"]["used"], 4);
    let operator: Vec<&&Received> = ok.iter().filter(|r| r.path == "/operator-hooks").collect();
    assert_eq!(operator.len(), 1);
    assert!(verify(OPERATOR_SECRET, operator[0]));
    assert_eq!(event_type(operator[0]), "policy.reload_failed");
    // Every delivery was first refused, then retried with the same id.
    for r in &ok {
        let id = r.headers.get("webhook-id").unwrap();
        let attempts = received
            .iter()
            .filter(|x| x.headers.get("webhook-id") == Some(id))
            .count();
        assert_eq!(attempts, 2, "{id:?}");
    }

    // A delivery pending when the gateway is killed is made after the restart.
    failing.store(true, Ordering::SeqCst);
    std::fs::write(gw.dir.path().join("tenants.toml"), "not toml at all").unwrap();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    let before = receiver.received().len();
    let attempted = eventually(Duration::from_secs(5), || async {
        receiver.received().len() > before
    })
    .await;
    assert!(
        attempted.is_some(),
        "the reload failure was never attempted"
    );
    let pending_id = receiver.received()[before]
        .headers
        .get("webhook-id")
        .cloned()
        .unwrap();
    gw.kill();
    failing.store(false, Ordering::SeqCst);
    std::fs::write(
        gw.dir.path().join("tenants.toml"),
        tenants(&receiver, "active"),
    )
    .unwrap();
    gw.restart();
    let redelivered = eventually(Duration::from_secs(10), || async {
        receiver
            .received()
            .iter()
            .any(|r| r.status == 200 && r.headers.get("webhook-id") == Some(&pending_id))
    })
    .await;
    assert!(
        redelivered.is_some(),
        "pending delivery lost across the restart:\n{}",
        gw.log()
    );
}

/// A subscriber that is down delays only its own events: another tenant's event queued after
/// it is delivered at once, while the broken one is still being retried (with the defaults'
/// backoff, minutes before it is dead-lettered).
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_subscriber_does_not_hold_back_another_tenants_events() {
    let up = upstream("app").await;
    let receiver =
        Receiver::start(|path, _, _| if path == "/acme-hooks" { 503 } else { 200 }).await;
    let (config, tenants) = quota_webhooks_config(up.addr, &receiver, &["acme", "globex"]);
    let gw = TestGateway::start(&config, &[("tenants.toml", tenants.as_bytes())]);
    // acme reaches 80 % of its quota first: its event is queued first, and refused.
    four_requests(&gw, "acme").await;
    let refused = eventually(Duration::from_secs(5), || async {
        receiver.received().iter().any(|r| r.path == "/acme-hooks")
    })
    .await;
    assert!(refused.is_some(), "acme's event was never attempted");
    four_requests(&gw, "globex").await;
    let delivered = eventually(Duration::from_secs(5), || async {
        receiver
            .received()
            .iter()
            .any(|r| r.path == "/globex-hooks" && r.status == 200)
    })
    .await;
    let received = receiver.received();
    let paths: Vec<(&str, u16)> = received
        .iter()
        .map(|r| (r.path.as_str(), r.status))
        .collect();
    assert!(
        delivered.is_some(),
        "globex's event waited behind acme's: {paths:?}"
    );
    // acme's lane goes on retrying its one event (nothing given up or skipped).
    let retried = eventually(Duration::from_secs(5), || async {
        receiver
            .received()
            .iter()
            .filter(|r| r.path == "/acme-hooks")
            .count()
            >= 2
    })
    .await;
    assert!(retried.is_some(), "{paths:?}");
    let received = receiver.received();
    let acme: Vec<&Received> = received
        .iter()
        .filter(|r| r.path == "/acme-hooks")
        .collect();
    assert!(acme
        .iter()
        .all(|r| r.headers.get("webhook-id") == acme[0].headers.get("webhook-id")));
    let globex = received.iter().find(|r| r.path == "/globex-hooks").unwrap();
    assert!(verify(TENANT_SECRET, globex));
    assert_eq!(event_type(globex), "quota.threshold");
}

/// A gateway whose free tier has 5 requests a month (counted in Redis, so the 4th sends
/// `quota.threshold`), with `webhooks` (settings and subscribers) in its `[webhooks]` section.
fn quota_config(up: std::net::SocketAddr, webhooks: &str) -> String {
    let redis = std::env::var("GATEWAY_TEST_REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
    config_for(
        &[up],
        &format!(
            r#"
[tenancy]
sources = ["header"]
registry = {{ file = "tenants.toml" }}

[tiers.free]
monthly_requests = 5

[limits]
backend = "redis"
redis_url = "{redis}"
key_prefix = "gwtest:webhooks:{}:{}"
redis_timeout = "2s"

[webhooks]
dir = "webhooks"
{webhooks}"#,
            std::process::id(),
            rand::random::<u32>(),
        ),
    )
}

/// A gateway whose free tier has 5 requests a month (so the 4th sends `quota.threshold`), its
/// webhooks retried from 1 s on, and the given tenants each subscribed at `/<id>-hooks`.
fn quota_webhooks_config(
    up: std::net::SocketAddr,
    receiver: &Receiver,
    ids: &[&str],
) -> (String, String) {
    let config = quota_config(up, "retry_delay = \"1s\"\n");
    let tenants = ids
        .iter()
        .map(|id| {
            format!(
                "[[tenant]]\nid = \"{id}\"\ntier = \"free\"\n[[tenant.webhooks]]\nurl = \"{}\"\nsecret = \"{TENANT_SECRET}\"\n",
                receiver.url(&format!("/{id}-hooks"))
            )
        })
        .collect();
    (config, tenants)
}

/// Four requests of `tenant` to `gw`, all answered 200.
async fn four_requests(gw: &TestGateway, tenant: &str) {
    for _ in 0..4 {
        let status = client()
            .get(gw.url("/x"))
            .header("x-tenant", tenant)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
}

/// A queue an earlier process delivered in full (its checkpoint at the end of the file) is not
/// emptied over the next event written to it; a queue file removed by hand, its checkpoint left
/// behind, does not make the next events wait until the file grows past that checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_after_a_delivered_or_removed_queue_is_delivered() {
    let up = upstream("app").await;
    let receiver = Receiver::start(|_, _, _| 200).await;
    let delivered = format!(
        "{}\n",
        serde_json::json!({
            "id": "msg_delivered_before",
            "tenant": null,
            "url": receiver.url("/old-hooks"),
            "event": {"type": "policy.reload_failed", "timestamp": "2026-12-01T00:00:00Z", "data": {}}
        })
    );
    let offset = delivered.len().to_string();
    let setups: [&[(&str, &[u8])]; 2] = [
        &[
            ("webhooks/queue.jsonl", delivered.as_bytes()),
            ("webhooks/delivered.offset", offset.as_bytes()),
        ],
        &[("webhooks/delivered.offset", b"1000000")],
    ];
    for (i, files) in setups.into_iter().enumerate() {
        let tenant = ["globex", "initech"][i];
        let (config, tenants) = quota_webhooks_config(up.addr, &receiver, &[tenant]);
        let mut all = vec![("tenants.toml", tenants.as_bytes())];
        all.extend_from_slice(files);
        let gw = TestGateway::start(&config, &all);
        four_requests(&gw, tenant).await;
        let path = format!("/{tenant}-hooks");
        let arrived = eventually(Duration::from_secs(5), || async {
            receiver.received().iter().any(|r| r.path == path)
        })
        .await;
        assert!(
            arrived.is_some(),
            "{tenant}'s event was lost:\n{}",
            gw.log()
        );
    }
    assert!(receiver.received().iter().all(|r| r.path != "/old-hooks"));
}
