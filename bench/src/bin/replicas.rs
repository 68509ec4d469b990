//! Replicas: N gateway processes (N = 1, 2, 3 by default) with the full pipeline, sharing
//! their rate limits on a Redis Cluster (three masters with a replica each) and exporting usage
//! to NATS JetStream, all started here on loopback. For each N, one run:
//! - throughput: `wrk` at saturation on every replica at once (one tenant per replica, limits
//!   far above the load, so every request still makes its one script call on Redis): aggregate
//!   requests/s, and CPU µs per request of the gateways, of the Redis nodes and of NATS;
//! - exporter lag: from the end of that load until JetStream holds an event for every request;
//! - limit accuracy: `wrk` on every replica at once with one tenant whose limit is far below
//!   the load; admitted requests against the GCRA bound (burst + rate × time) of that limit;
//! - memory: resident set of each replica after the runs.
//!
//! The result goes to `<out>/<date>-<host>-replicas.{json,md}`; bench/README.md ("Replicas and
//! the cost model") explains how the figures extrapolate.
//!
//! Usage: replicas --gateway BIN --upstream-bin BIN --out DIR [--replicas 1,2,3] [--seconds S]
//!        [--tenants N] [--limit-rate R] [--limit-burst B] [--threads T]
//!        [--limits cluster|redis|local] [--export nats|none]
//!
//! `--limits` and `--export` take parts away to see what each costs (`redis`: the machine's
//! Redis at 127.0.0.1:6379, one server; `local`: in-process limits, each replica its own);
//! runs other than the default write `…-replicas-<limits>-<export>.{json,md}`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gateway_bench::arg;
use gateway_bench::harness::{
    cpu_seconds, free_port, gateway_config, hostname, loadavg, online_cores, signed_token,
    wait_listening, wrk, Fixture, Launch, Proc, Target,
};
use gateway_testkit::nats::NatsServer;
use gateway_testkit::redis_cluster::RedisCluster;
use serde_json::{json, Value};

struct Opts {
    gateway: PathBuf,
    upstream_bin: PathBuf,
    out: PathBuf,
    replicas: Vec<usize>,
    seconds: u64,
    tenants: usize,
    limit_rate: f64,
    limit_burst: u32,
    threads: usize,
    limits: String,
    export: String,
}

fn opts() -> Opts {
    let parse = |name: &str, default: &str| arg(name).unwrap_or_else(|| default.to_string());
    Opts {
        gateway: parse("--gateway", "target/release/gateway").into(),
        upstream_bin: parse("--upstream-bin", "target/release/bench-upstream").into(),
        out: parse("--out", "bench/results").into(),
        replicas: parse("--replicas", "1,2,3")
            .split(',')
            .map(|n| n.trim().parse().expect("--replicas: numbers"))
            .collect(),
        seconds: parse("--seconds", "6").parse().expect("--seconds"),
        tenants: parse("--tenants", "10000").parse().expect("--tenants"),
        limit_rate: parse("--limit-rate", "2000").parse().expect("--limit-rate"),
        limit_burst: parse("--limit-burst", "200")
            .parse()
            .expect("--limit-burst"),
        threads: parse("--threads", "1").parse().expect("--threads"),
        limits: parse("--limits", "cluster"),
        export: parse("--export", "nats"),
    }
}

/// The tenant whose limit the accuracy run measures.
const LIMITED: &str = "limited-1";

/// `wrk` on every target at once; (requests/s, requests, non-2xx) of each.
fn wrk_all(cores: &str, targets: &[Target], seconds: u64) -> Vec<(f64, u64, u64)> {
    std::thread::scope(|scope| {
        let runs: Vec<_> = targets
            .iter()
            .map(|t| scope.spawn(move || wrk(cores, t, seconds)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("wrk thread"))
            .collect()
    })
}

fn target(addr: SocketAddr, token: &str) -> Target {
    Target {
        key: "replica",
        label: "replica",
        addr,
        proc_index: 0,
        headers: vec![vec![(
            "authorization".to_string(),
            format!("Bearer {token}"),
        )]],
        launch: Launch {
            program: PathBuf::new(),
            args: Vec::new(),
        },
    }
}

/// JetStream's message count of `stream` once it reaches `expected` (or stops growing for
/// 10 s), and how long that took.
fn wait_exported(
    runtime: &tokio::runtime::Runtime,
    nats: &NatsServer,
    stream: &str,
    expected: u64,
) -> (u64, Duration) {
    let started = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        let count = runtime.block_on(nats.count(stream));
        if count >= expected {
            return (count, started.elapsed());
        }
        if count != last.0 {
            last = (count, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            return (count, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let o = opts();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let work = tempfile::tempdir().expect("work dir");
    let dir = work.path();
    let repo =
        std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).expect("repo");
    let cores = format!("0-{}", online_cores().max(1) - 1);
    let load_before = loadavg();

    let fixture = Fixture::start(&cores, &o.upstream_bin, dir, &runtime, o.tenants);
    let (upstream_addr, key, jwks) = (fixture.upstream_addr, &fixture.key, &fixture.jwks);
    let mut tenants = std::fs::read_to_string(dir.join("tenants.toml")).unwrap();
    tenants.push_str(&format!(
        "[[tenant]]\nid = \"{LIMITED}\"\ntier = \"free\"\nhome_region = \"eu-central\"\n\
         regime = \"gdpr\"\nlimits = {{ requests_per_second = {}, burst = {} }}\n",
        o.limit_rate, o.limit_burst
    ));
    std::fs::write(dir.join("tenants.toml"), tenants).unwrap();
    let limited_token = signed_token(key, "bench-key", "user-limited", LIMITED);

    let cluster = RedisCluster::start();
    let nats = NatsServer::start();
    let seeds: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();

    let mut rows = Vec::new();
    for &n in &o.replicas {
        let stream = format!("USAGE_R{n}");
        let server = match o.limits.as_str() {
            "cluster" => format!("redis_cluster_nodes = [{}]", seeds.join(", ")),
            "redis" => "redis_url = \"redis://127.0.0.1:6379\"".to_string(),
            _ => String::new(),
        };
        let limits = if server.is_empty() {
            String::new()
        } else {
            format!(
                "[limits]\nbackend = \"redis\"\n{server}\nkey_prefix = \"bench-r{n}-{}\"\n\
                 replicas = {n}\nredis_timeout = \"500ms\"\n",
                std::process::id()
            )
        };
        let exporter = if o.export == "nats" {
            format!(
                "\n[[metering.exporter]]\nkind = \"nats\"\nname = \"jetstream\"\nurl = \"{}\"\n\
                 stream = \"{stream}\"\nsubject_prefix = \"usage.r{n}\"\n",
                nats.url()
            )
        } else {
            String::new()
        };
        let mut gateways = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let port = free_port();
            let file = dir.join(format!("replica-{n}-{i}.toml"));
            let config =
                gateway_config(port, o.threads, upstream_addr, Some((jwks, &repo, &limits)))
                    + &exporter;
            std::fs::write(&file, config).unwrap();
            gateways.push(Proc::spawn(
                &cores,
                &Launch {
                    program: o.gateway.clone(),
                    args: vec!["run".into(), "--config".into(), file.display().to_string()],
                },
                &dir.join(format!("replica-{n}-{i}.log")),
                &format!("replica {i} of {n}"),
            ));
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            wait_listening(addr, "gateway", Duration::from_secs(60));
            addrs.push(addr);
        }
        // One tenant per replica (tenant-1, tenant-2, …): limits far above the load.
        let busy: Vec<Target> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let org = format!("tenant-{}", i + 1);
                target(
                    *a,
                    &signed_token(key, "bench-key", &format!("user-{i}"), &org),
                )
            })
            .collect();
        // Warm-up (token and decision caches, connections to every master), then wait until
        // the exporter has caught up with it.
        let warm: u64 = wrk_all(&cores, &busy, 2).iter().map(|r| r.1).sum();
        let exporting = o.export == "nats";
        if exporting {
            wait_exported(&runtime, &nats, &stream, warm);
        }
        let exported_before = runtime.block_on(nats.count(&stream));

        let gateway_pids: Vec<u32> = gateways.iter().flat_map(Proc::pids).collect();
        let cpu_before = (
            cpu_seconds(&gateway_pids),
            cpu_seconds(&cluster.pids()),
            cpu_seconds(&[nats.pid()]),
        );
        let runs = wrk_all(&cores, &busy, o.seconds);
        let load_ended = Instant::now();
        let cpu = (
            cpu_seconds(&gateway_pids) - cpu_before.0,
            cpu_seconds(&cluster.pids()) - cpu_before.1,
            cpu_seconds(&[nats.pid()]) - cpu_before.2,
        );
        let rps: f64 = runs.iter().map(|r| r.0).sum();
        let total: u64 = runs.iter().map(|r| r.1).sum();
        let non2xx: u64 = runs.iter().map(|r| r.2).sum();
        let exported = if exporting {
            wait_exported(&runtime, &nats, &stream, exported_before + total).0
        } else {
            exported_before
        };
        let lag = load_ended.elapsed();
        let per_request = |seconds: f64| seconds * 1e6 / total.max(1) as f64;

        // Limit accuracy: every replica on the one limited tenant at once.
        let limited: Vec<Target> = addrs.iter().map(|a| target(*a, &limited_token)).collect();
        let started = Instant::now();
        let limit_runs = wrk_all(&cores, &limited, o.seconds);
        let limit_elapsed = started.elapsed().as_secs_f64().min(o.seconds as f64 + 0.5);
        let offered: u64 = limit_runs.iter().map(|r| r.1).sum();
        let admitted: u64 = limit_runs.iter().map(|r| r.1 - r.2).sum();
        let bound = f64::from(o.limit_burst) + o.limit_rate * o.seconds as f64;
        let rss_kb: Vec<u64> = gateways.iter().map(|g| g.status_kb("VmRSS:")).collect();
        let row = json!({
            "replicas": n,
            "rps": rps,
            "rps_per_replica": rps / n as f64,
            "requests": total,
            "non_2xx": non2xx,
            "gateway_cpu_us_per_request": per_request(cpu.0),
            "redis_cpu_us_per_request": per_request(cpu.1),
            "nats_cpu_us_per_request": per_request(cpu.2),
            "exported_events": exported - exported_before,
            "exporter_lag_s": lag.as_secs_f64(),
            "limit": {
                "rate": o.limit_rate, "burst": o.limit_burst,
                "offered": offered, "admitted": admitted, "bound": bound,
                "error_pct": 100.0 * (admitted as f64 - bound) / bound,
                "elapsed_s": limit_elapsed,
            },
            "rss_mb_per_replica": rss_kb.iter().map(|k| *k as f64 / 1024.0).collect::<Vec<_>>(),
        });
        eprintln!("{row}");
        rows.push(row);
        drop(gateways);
    }

    let date = jiff::Zoned::now().strftime("%Y-%m-%d").to_string();
    let host = hostname();
    let report = json!({
        "bench": "replicas",
        "date": date,
        "host": host,
        "cores": online_cores(),
        "load_average_before": load_before,
        "load_average_after": loadavg(),
        "seconds": o.seconds,
        "tenants": o.tenants,
        "threads_per_replica": o.threads,
        "limits": o.limits,
        "export": o.export,
        "redis": "Redis Cluster, 3 masters + 3 replicas, loopback",
        "nats": "nats-server with JetStream, file storage, loopback",
        "rows": rows,
    });
    std::fs::create_dir_all(&o.out).unwrap();
    let variant = match (o.limits.as_str(), o.export.as_str()) {
        ("cluster", "nats") => String::new(),
        (limits, export) => format!("-{limits}-{export}"),
    };
    let base = o.out.join(format!("{date}-{host}-replicas{variant}"));
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    std::fs::write(base.with_extension("md"), markdown(&report)).unwrap();
    eprintln!("wrote {}.{{json,md}}", base.display());
}

fn markdown(report: &Value) -> String {
    let mut md = format!(
        "# Replicas: {} on {} ({} cores)\n\n\
         N gateway processes ({} worker thread each), full pipeline, {} tenants, limits on a Redis \
         Cluster (3 masters + 3 replicas), usage exported to NATS JetStream; everything on one \
         machine's loopback, so the N processes, Redis, NATS, the upstream and `wrk` share its \
         cores. Load average before {}, after {}. `{}` s per run.\n\n\
         | replicas | req/s (all) | req/s per replica | gateway CPU µs/req | Redis CPU µs/req | NATS CPU µs/req | exported / requests | exporter lag | limit: admitted / bound | RSS per replica |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        report["date"].as_str().unwrap_or(""),
        report["host"].as_str().unwrap_or(""),
        report["cores"],
        report["threads_per_replica"],
        report["tenants"],
        report["load_average_before"].as_str().unwrap_or(""),
        report["load_average_after"].as_str().unwrap_or(""),
        report["seconds"],
    );
    for row in report["rows"].as_array().into_iter().flatten() {
        let f = |v: &Value| v.as_f64().unwrap_or(0.0);
        let rss: Vec<String> = row["rss_mb_per_replica"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{:.0}", f(v)))
            .collect();
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} / {} | {:.0} ms | {} / {:.0} ({:+.2} %) | {} MB |\n",
            row["replicas"],
            f(&row["rps"]),
            f(&row["rps_per_replica"]),
            f(&row["gateway_cpu_us_per_request"]),
            f(&row["redis_cpu_us_per_request"]),
            f(&row["nats_cpu_us_per_request"]),
            row["exported_events"],
            row["requests"],
            1000.0 * f(&row["exporter_lag_s"]),
            row["limit"]["admitted"],
            f(&row["limit"]["bound"]),
            f(&row["limit"]["error_pct"]),
            rss.join(", "),
        ));
    }
    md.push_str(
        "\nThroughput: `wrk` (1 thread, 64 connections) on every replica at once, one tenant per \
         replica. Exporter lag: from the end of that load until JetStream holds as many events \
         as requests were answered (a request cut off by `wrk`'s stop is exported too, so \
         `exported` may exceed `requests` a little). Limit: one tenant limited to `rate`/s with \
         `burst`, loaded on every replica at once; the bound is burst + rate × run time.\n",
    );
    md
}
