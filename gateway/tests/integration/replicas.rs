//! Three replicas on the engines a scaled-out deployment runs: limits shared on a real Redis
//! Cluster, usage exported by each replica's own outbox to one NATS JetStream stream. Together
//! they admit one tenant's GCRA bound, and the stream holds one event per answered request —
//! admitted ones as `completed`, refused ones as `rejected` — none twice.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use crate::common::nats::NatsServer;
use crate::common::redis_cluster::RedisCluster;
use crate::common::{client, config_for, eventually, upstream, TestGateway};

const STREAM: &str = "USAGE_REPLICAS";

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_share_limits_on_redis_cluster_and_export_every_event_once() {
    let (rate, burst) = (20.0, 40.0);
    let up = upstream("app").await;
    let cluster = RedisCluster::start();
    let nats = NatsServer::start();
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let config = config_for(
        &[up.addr],
        &format!(
            r#"
[tenancy]
sources = ["header"]
registry = {{ file = "tenants.toml" }}

[tiers.free]
requests_per_second = {rate}
burst = {burst}

[limits]
backend = "redis"
redis_cluster_nodes = [{nodes}]
replicas = 3
redis_timeout = "2s"

[metering]
dir = "outbox"

[[metering.exporter]]
kind = "nats"
name = "jetstream"
url = "{nats}"
stream = "{STREAM}"
subject_prefix = "usage"
batch_size = 50
"#,
            nodes = nodes.join(", "),
            nats = nats.url(),
        ),
    );
    let files: &[(&str, &[u8])] = &[(
        "tenants.toml",
        b"[[tenant]]\nid = \"acme\"\ntier = \"free\"\n",
    )];
    let gateways = [
        TestGateway::start(&config, files),
        TestGateway::start(&config, files),
        TestGateway::start(&config, files),
    ];
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();

    let started = Instant::now();
    let statuses: Vec<u16> = stream::iter(0..600)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            async move {
                client()
                    .get(format!("http://{addr}/things"))
                    .header("x-tenant", "acme")
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(12)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = statuses.iter().filter(|s| **s == 200).count() as u64;
    let refused = statuses.iter().filter(|s| **s == 429).count() as u64;
    assert_eq!(admitted + refused, 600, "{statuses:?}");
    let bound = burst + rate * elapsed;
    assert!(
        (admitted as f64 - bound).abs() <= 0.02 * bound + 1.0,
        "admitted {admitted}, bound {bound:.1} over {elapsed:.2}s"
    );

    let exported = eventually(Duration::from_secs(30), || async {
        nats.count(STREAM).await >= 600
    })
    .await;
    assert!(
        exported.is_some(),
        "stream holds {} of 600 events",
        nats.count(STREAM).await
    );
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let messages = nats.messages(STREAM).await;
    let ids: HashSet<&str> = messages.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), messages.len(), "an event stored twice");
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for (subject, _, event) in &messages {
        assert_eq!(subject, "usage.acme", "{event}");
        *outcomes
            .entry(event["data"]["outcome"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    eprintln!(
        "three replicas: admitted {admitted} of a bound of {bound:.1} in {elapsed:.2}s; stream {outcomes:?}"
    );
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("completed".to_string(), admitted),
            ("rejected".to_string(), refused)
        ])
    );
    assert_eq!(up.served(), admitted);
    for gw in &gateways {
        assert!(
            !gw.settled_log().contains("Redis unavailable"),
            "{}",
            gw.log()
        );
    }
}
