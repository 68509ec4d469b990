//! The NATS JetStream usage exporter against a real nats-server: after a SIGKILL under load,
//! and again after the exporter is made to send everything a second time, the stream holds
//! every usage event exactly once (the broker drops redeliveries by `Nats-Msg-Id`).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::common::nats::NatsServer;
use crate::common::{config_for, eventually, sigkill_under_load, upstream, TestGateway};

const STREAM: &str = "USAGE_TEST";
const TENANTS: &str = "[[tenant]]\nid = \"acme\"\n\n[[tenant]]\nid = \"globex\"\n";

fn config(up: std::net::SocketAddr, nats: &str) -> String {
    config_for(
        &[up],
        &format!(
            r#"
[tenancy]
sources = ["header"]
registry = {{ file = "tenants.toml" }}

[metering]
dir = "outbox"
fsync = "batch"

[[metering.exporter]]
kind = "nats"
name = "jetstream"
url = "{nats}"
stream = "{STREAM}"
subject_prefix = "usage"
batch_size = 7
"#
        ),
    )
}

fn checkpoint(gw: &TestGateway) -> Option<serde_json::Value> {
    let path = gw.dir.path().join("outbox/exporters/jetstream.json");
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_holds_every_event_once_after_sigkill_and_full_redelivery() {
    const CLIENTS: u64 = 8;
    let nats = NatsServer::start();
    let up = upstream("app").await;
    let mut gw = TestGateway::start(
        &config(up.addr, &nats.url()),
        &[("tenants.toml", TENANTS.as_bytes())],
    );
    // Killed while every client's request is inside the upstream (and export is under way).
    let completed = sigkill_under_load(
        &mut gw,
        &up,
        "/_upstream/slow?ms=40",
        &["acme", "globex"],
        CLIENTS,
        Duration::from_millis(1500),
    )
    .await;
    let received = up.received();
    assert!(completed >= CLIENTS * 5, "the load ran ({completed})");

    gw.restart();
    let exported = eventually(Duration::from_secs(30), || async {
        nats.count(STREAM).await == received
    })
    .await;
    let held = nats.count(STREAM).await;
    assert!(
        exported.is_some(),
        "stream holds {held} events, the upstream received {received}\n{}",
        gw.log()
    );
    let settled = eventually(Duration::from_secs(10), || async {
        checkpoint(&gw).is_some_and(|c| c["resume_from"].as_u64().is_some())
    })
    .await;
    assert!(settled.is_some(), "no checkpoint");
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let messages = nats.messages(STREAM).await;
    assert_eq!(messages.len() as u64, received);
    check_messages(&messages, CLIENTS);

    // The checkpoint is lost (as when a crash falls between a batch's acknowledgement and its
    // checkpoint): the restarted exporter sends every event again; the broker keeps one of each.
    let before = checkpoint(&gw).expect("checkpoint");
    gw.kill();
    std::fs::remove_file(gw.dir.path().join("outbox/exporters/jetstream.json")).unwrap();
    gw.restart();
    eventually(Duration::from_secs(30), || async {
        checkpoint(&gw).is_some_and(|c| c["delivered_through"] == before["delivered_through"])
    })
    .await
    .unwrap_or_else(|| panic!("the exporter did not send everything again\n{}", gw.log()));
    let again = nats.messages(STREAM).await;
    assert_eq!(
        again.len() as u64,
        received,
        "a redelivered event was stored twice"
    );
    assert_eq!(again, messages);
}

/// Sorted ids, one per message; each message a CloudEvent whose id is its `Nats-Msg-Id`, on
/// its tenant's subject; the requests the kill cut off are there once, as `interrupted`.
fn check_messages(messages: &[(String, String, serde_json::Value)], cut_off: u64) {
    let ids: HashSet<&str> = messages.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), messages.len(), "duplicate Nats-Msg-Id");
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for (subject, id, event) in messages {
        assert_eq!(event["specversion"], "1.0", "{event}");
        assert_eq!(event["id"].as_str(), Some(id.as_str()), "{event}");
        let tenant = event["subject"].as_str().unwrap_or_default();
        assert!(tenant == "acme" || tenant == "globex", "{event}");
        assert_eq!(subject, &format!("usage.{tenant}"));
        assert_eq!(event["data"]["id"].as_str(), Some(id.as_str()), "{event}");
        *outcomes
            .entry(event["data"]["outcome"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        outcomes.get("interrupted").copied(),
        Some(cut_off),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.values().sum::<u64>(),
        messages.len() as u64,
        "{outcomes:?}"
    );
}
