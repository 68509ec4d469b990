//! Metering and audit cost on this machine: sustained events/s into the outbox (fsync per batch
//! and per interval), the request-path latency of a begin record (the request thread writes it,
//! and with `fsync = "batch"` waits for a group fsync), and audit records/s.
//!
//! Usage: outbox-bench [--events N] [--producers P] [--json FILE]

use std::time::{Duration, Instant};

use gateway::audit::{AuditConfig, AuditEntry};
use gateway::metering::outbox::{FsyncPolicy, Outbox, OutboxSettings};
use gateway::metering::EventStart;
use gateway_bench::{arg, percentile};
use serde_json::json;

fn start(i: u64) -> EventStart<'static> {
    EventStart {
        id: format!("01a2-{i:016}").into(),
        time: "2026-11-23T10:00:00.000000Z".into(),
        request_id: format!("req-{i}").into(),
        tenant: Some(format!("tenant-{}", i % 1000).into()),
        principal: Some(format!("user-{}", i % 5000).into()),
        action: Some("projects:read".into()),
        route: Some("/projects/{id}".into()),
        method: "GET".into(),
        region: Some("eu-central".into()),
        meters: vec![],
        tier: Some("pro".into()),
        attributes: Default::default(),
    }
}

async fn outbox_run(fsync: FsyncPolicy, events: u64, producers: u64) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, _progress) = Outbox::open(OutboxSettings {
        dir: dir.path().to_path_buf(),
        fsync,
        fsync_interval: Duration::from_millis(100),
        segment_bytes: 64 * 1024 * 1024,
        flush_interval: Duration::from_millis(10),
        buffer_bytes: 16 * 1024 * 1024,
    })
    .expect("outbox");
    let task = tokio::spawn(handle.clone().run_flusher());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity((events / producers) as usize);
            for i in 0..events / producers {
                let t = Instant::now();
                handle.begin(&start(p * events + i)).await.expect("append");
                latencies.push(t.elapsed().as_nanos() as u64);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("producer"));
    }
    let elapsed = started.elapsed();
    task.abort();
    handle.flush().expect("flush");
    latencies.sort_unstable();
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    eprintln!(
        "outbox, fsync {fsync:?}: {rate:.0} begin records/s with {producers} concurrent requests; write wait p50 {:.1} µs, p99 {:.1} µs",
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0
    );
    json!({"fsync": format!("{fsync:?}"), "records_per_second": rate, "producers": producers, "wait_p50_ns": p50, "wait_p99_ns": p99})
}

async fn audit_run(records: u64) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = gateway::audit::open(AuditConfig {
        dir: dir.path().to_path_buf(),
        segment_bytes: 64 * 1024 * 1024,
        segment_max_age: Duration::from_secs(3600),
        fsync: true,
        commit_delay: Duration::from_millis(10),
        buffer_bytes: 16 * 1024 * 1024,
    })
    .expect("audit");
    let task = tokio::spawn(handle.clone().run_flusher());
    let started = Instant::now();
    let mut enqueue = Vec::with_capacity(records as usize);
    for i in 0..records {
        let entry = AuditEntry::new(
            "request",
            json!({"request_id": format!("req-{i}"), "tenant": "acme", "status": 200,
                   "decision": {"action": "projects:read", "allowed": true, "policies": ["viewer-reads"]},
                   "routing": {"region": "eu-central", "peer": "10.0.0.1:8080"}}),
        );
        let t = Instant::now();
        handle.record(entry).await;
        enqueue.push(t.elapsed().as_nanos() as u64);
    }
    task.abort();
    handle.flush().expect("flush");
    let elapsed = started.elapsed();
    let report = gateway::audit::verify(dir.path()).expect("verify");
    assert_eq!(report.records, records, "{report:?}");
    enqueue.sort_unstable();
    let rate = records as f64 / elapsed.as_secs_f64();
    eprintln!(
        "audit (hash chain, group commit every 10 ms): {rate:.0} records/s; enqueue p50 {} ns, p99 {} ns",
        percentile(&enqueue, 50.0),
        percentile(&enqueue, 99.0)
    );
    json!({"records_per_second": rate, "enqueue_p50_ns": percentile(&enqueue, 50.0), "enqueue_p99_ns": percentile(&enqueue, 99.0)})
}

fn main() {
    let events: u64 = arg("--events")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let producers: u64 = arg("--producers")
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(async {
        let batch = outbox_run(FsyncPolicy::Batch, events, producers).await;
        let interval = outbox_run(FsyncPolicy::Interval, events, producers).await;
        let single = outbox_run(FsyncPolicy::Batch, events / 20, 1).await;
        let single_interval = outbox_run(FsyncPolicy::Interval, events / 20, 1).await;
        let audit = audit_run(events).await;
        json!({"outbox_fsync_batch": batch, "outbox_fsync_interval": interval, "outbox_single_request_fsync_batch": single, "outbox_single_request_fsync_interval": single_interval, "audit": audit})
    });
    gateway_bench::emit_report(&report);
}
