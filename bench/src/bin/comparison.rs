//! The load comparison, all configurations in one run on loopback, against the same fast
//! upstream (`bench-upstream`):
//!   1. direct to the upstream (the physical limit),
//!   2. the gateway with every stage off (pass-through),
//!   3. nginx `proxy_pass` with upstream keep-alive,
//!   4. the gateway with the full pipeline (ES256 JWTs via JWKS, 100,000 tenants, Cedar with the
//!      example policies, residency routing, local rate limits high enough not to refuse,
//!      metering to the outbox, audit log),
//!   5. as 4 with the Redis-backed rate limit.
//!
//! For each: requests/s at saturation (wrk, closed loop), latency p50/p99/p99.9 at one fixed
//! offered rate (an open-loop generator that measures from each request's scheduled send time,
//! so coordinated omission cannot hide the tail), CPU per request and peak RSS of the proxy.
//! Every measurement is repeated (`--reps`, default 3); the median is reported with the spread.
//! Then resident memory with 10, 10,000 and 100,000 tenants loaded.
//!
//! The proxy under test runs on core `--proxy-core`, the load generator and the upstream on
//! `--load-core` (run this binary itself under `taskset -c <load-core>`; `bench/run` does).
//!
//! Usage: comparison --gateway BIN --upstream-bin BIN --out DIR [--reps N] [--seconds S]
//!        [--redis URL] [--criterion DIR] [--proxy-core C] [--load-core C]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_bench::{arg, ec_key, jwks_server, percentile, tenants};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

struct Opts {
    gateway: PathBuf,
    upstream_bin: PathBuf,
    out: PathBuf,
    reps: usize,
    seconds: u64,
    redis: String,
    criterion: Option<PathBuf>,
    proxy_core: String,
    load_core: String,
    tenants: usize,
}

fn opts() -> Opts {
    Opts {
        gateway: arg("--gateway")
            .unwrap_or_else(|| "target/release/gateway".into())
            .into(),
        upstream_bin: arg("--upstream-bin")
            .unwrap_or_else(|| "target/release/bench-upstream".into())
            .into(),
        out: arg("--out")
            .unwrap_or_else(|| "bench/results".into())
            .into(),
        reps: arg("--reps").and_then(|v| v.parse().ok()).unwrap_or(3),
        seconds: arg("--seconds").and_then(|v| v.parse().ok()).unwrap_or(8),
        redis: arg("--redis").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
        criterion: arg("--criterion").map(PathBuf::from),
        proxy_core: arg("--proxy-core").unwrap_or_else(|| "0".into()),
        load_core: arg("--load-core").unwrap_or_else(|| "1".into()),
        tenants: arg("--tenants")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process pinned to a core, killed when dropped.
struct Proc {
    child: Child,
    /// Further pids whose CPU and memory count (nginx workers).
    name: String,
}

impl Proc {
    fn spawn(core: &str, program: &Path, args: &[&str], log: &Path, name: &str) -> Proc {
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new("taskset")
            .arg("-c")
            .arg(core)
            .arg(program)
            .args(args)
            .env("GATEWAY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    /// The process and its children (nginx's workers).
    fn pids(&self) -> Vec<u32> {
        let root = self.child.id();
        let mut pids = vec![root];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                    let fields: Vec<&str> = stat
                        .rsplit(')')
                        .next()
                        .unwrap_or("")
                        .split_whitespace()
                        .collect();
                    if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(root) {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }

    /// CPU seconds used so far (user + system) by the process and its children.
    fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = self
            .pids()
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .map(|stat| {
                let f: Vec<&str> = stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                // After the command: state is field 0; utime 11, stime 12.
                f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                    + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            })
            .sum();
        ticks as f64 / 100.0
    }

    fn status_kb(&self, field: &str) -> u64 {
        self.pids()
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Children first (nginx's workers would outlive a killed master and keep the port).
        let children: Vec<String> = self.pids().iter().skip(1).map(|p| p.to_string()).collect();
        if !children.is_empty() {
            let _ = Command::new("kill").arg("-9").args(&children).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped {}", self.name);
    }
}

/// One configuration under test.
struct Target {
    key: &'static str,
    label: &'static str,
    addr: SocketAddr,
    /// Whose CPU and memory count.
    proc_index: usize,
    headers: Vec<Vec<(String, String)>>,
}

/// The target served by the process started last.
fn latest_target(
    procs: &[Proc],
    key: &'static str,
    label: &'static str,
    port: u16,
    headers: &[Vec<(String, String)>],
) -> Target {
    Target {
        key,
        label,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        proc_index: procs.len() - 1,
        headers: headers.to_vec(),
    }
}

/// `wrk` at saturation: requests/s and non-2xx count.
fn wrk(core: &str, target: &Target, seconds: u64) -> (f64, u64, u64) {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", core, "wrk", "-t1", "-c64", "--latency"])
        .arg(format!("-d{seconds}s"));
    for (name, value) in &target.headers[0] {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    cmd.arg(format!("http://{}/projects/42", target.addr));
    let out = cmd.output().expect("wrk (bench/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let total = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let non2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (rps, total, non2xx)
}

/// Open loop: request `i` is due at `start + i / rate`; latency counts from that moment.
async fn open_loop(
    target: &Target,
    rate: f64,
    seconds: u64,
    connections: usize,
) -> (Vec<u64>, u64) {
    let total = (rate * seconds as f64) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut queues = Vec::new();
    let mut workers = Vec::new();
    for w in 0..connections {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, usize)>();
        queues.push(tx);
        let addr = target.addr;
        let headers = target.headers.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut sender = None;
            while let Some((due, i)) = rx.recv().await {
                if sender.is_none() {
                    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                        errors += 1;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let Ok((s, conn)) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                    else {
                        errors += 1;
                        continue;
                    };
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                let Some(s) = sender.as_mut() else { continue };
                let mut req = hyper::Request::get("/projects/42").header("host", "bench.local");
                for (n, v) in &headers[(i + w) % headers.len()] {
                    req = req.header(n.as_str(), v.as_str());
                }
                let Ok(req) = req.body(Empty::<bytes::Bytes>::new()) else {
                    continue;
                };
                match s.send_request(req).await {
                    Ok(res) => {
                        let ok = res.status().is_success();
                        let _ = res.into_body().collect().await;
                        if ok {
                            latencies.push(due.elapsed().as_micros() as u64);
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        sender = None;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    // The schedule runs on its own thread: an OS sleep to ~100 µs before each due time, then a
    // short spin, so send times are not rounded to the async timer's millisecond.
    let start = Instant::now() + Duration::from_millis(20);
    let scheduler = std::thread::spawn(move || {
        for i in 0..total {
            let due = start + interval * i as u32;
            let now = Instant::now();
            if due > now + Duration::from_micros(200) {
                std::thread::sleep(due - now - Duration::from_micros(100));
            }
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            let _ = queues[i % connections].send((due, i));
        }
    });
    let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for w in workers {
        if let Ok((l, e)) = w.await {
            latencies.extend(l);
            errors += e;
        }
    }
    latencies.sort_unstable();
    (latencies, errors)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Spread of repeated runs: (max - min) / median, in percent.
fn spread(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    let m = median(&mut v);
    let (min, max) = (v[0], v[v.len() - 1]);
    if m == 0.0 {
        0.0
    } else {
        (max - min) / m * 100.0
    }
}

fn write_tenants(path: &Path, n: usize) {
    let mut text = String::with_capacity(n * 120);
    for t in tenants(n) {
        text.push_str(&format!(
            "[[tenant]]\nid = \"{}\"\ntier = \"{}\"\nhome_region = \"{}\"\nregime = \"{}\"\n\n",
            t.id,
            t.tier,
            t.home_region.unwrap_or_default(),
            t.regime.unwrap_or_default()
        ));
    }
    std::fs::write(path, text).expect("tenants file");
}

fn gateway_config(listen: u16, upstream: SocketAddr, full: Option<(&str, &Path, &str)>) -> String {
    let base = format!(
        "[server]\nlisten = [\"127.0.0.1:{listen}\"]\nthreads = 1\nstate_dir = \"state-{listen}\"\n\n"
    );
    let Some((jwks, repo, limits)) = full else {
        return format!(
            "{base}[upstream]\nkeepalive_pool_size = 256\n[[upstream.pool]]\nname = \"app\"\npeers = [\"{upstream}\"]\n"
        );
    };
    let pools: String = ["eu-central", "us-east", "in-west", "jp-east", "cn-north"]
        .iter()
        .map(|r| {
            format!(
                "[[upstream.pool]]\nname = \"{r}\"\nregion = \"{r}\"\npeers = [\"{upstream}\"]\n"
            )
        })
        .collect();
    format!(
        r#"{base}
[identity]
[[identity.issuer]]
issuer = "https://bench-issuer.local"
jwks_uri = "{jwks}"
audiences = ["bench"]
algorithms = ["ES256"]
claims = {{ tenant = "org", roles = "roles" }}

[tenancy]
sources = ["credential"]
registry = {{ file = "tenants.toml" }}

[authorization]
policies = "{repo}/policies"

[residency]
maps = "{repo}/residency-maps"

[tiers.free]
requests_per_second = 1000000
burst = 1000000
[tiers.pro]
requests_per_second = 1000000
burst = 1000000
[tiers.enterprise]
requests_per_second = 1000000
burst = 1000000

{limits}

[metering]
dir = "outbox-{listen}"
fsync = "interval"
{metering_extra}

[audit]
dir = "audit-{listen}"
{audit_extra}

[upstream]
keepalive_pool_size = 256
{pools}"#,
        repo = repo.display(),
        // For exploring what each part costs, e.g. BENCH_METERING='record_before_forward = false'.
        metering_extra = std::env::var("BENCH_METERING").unwrap_or_default(),
        audit_extra = std::env::var("BENCH_AUDIT").unwrap_or_default(),
    )
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

    // The upstream, the issuer's JWKS, 100,000 tenants and their tokens.
    let upstream_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut procs = vec![Proc::spawn(
        &o.load_core,
        &o.upstream_bin,
        &[&upstream_addr.to_string()],
        &dir.join("upstream.log"),
        "upstream",
    )];
    wait_listening(upstream_addr, "upstream");
    let (key, jwk) = ec_key("bench-key");
    let jwks_addr = runtime.block_on(jwks_server(vec![jwk]));
    let jwks = format!("http://{jwks_addr}/jwks");
    write_tenants(&dir.join("tenants.toml"), o.tenants);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("bench-key".into());
    let token_headers: Vec<Vec<(String, String)>> = (1..=1000)
        .map(|i| {
            let claims = json!({
                "iss": "https://bench-issuer.local", "aud": "bench", "sub": format!("user-{i}"),
                "org": format!("tenant-{}", (i * 97) % o.tenants.max(1) + 1), "roles": ["viewer"],
                "exp": now + 3600, "iat": now,
            });
            let token = jsonwebtoken::encode(&header, &claims, &key).expect("token");
            vec![("authorization".to_string(), format!("Bearer {token}"))]
        })
        .collect();
    let plain = vec![vec![("x-bench".to_string(), "1".to_string())]];

    // The proxies.
    let mut targets = vec![Target {
        key: "direct",
        label: "1 direct to upstream",
        addr: upstream_addr,
        proc_index: 0,
        headers: plain.clone(),
    }];
    let pass_port = free_port();
    std::fs::write(
        dir.join("passthrough.toml"),
        gateway_config(pass_port, upstream_addr, None),
    )
    .unwrap();
    let config_arg = |name: &str| dir.join(name).display().to_string();
    procs.push(Proc::spawn(
        &o.proxy_core,
        &o.gateway,
        &["run", "--config", &config_arg("passthrough.toml")],
        &dir.join("passthrough.log"),
        "gateway pass-through",
    ));
    targets.push(latest_target(
        &procs,
        "passthrough",
        "2 gateway, every stage off",
        pass_port,
        &plain,
    ));
    let nginx_port = free_port();
    let nginx_conf = std::fs::read_to_string(repo.join("bench/nginx.conf"))
        .expect("bench/nginx.conf")
        .replace("{LISTEN}", &nginx_port.to_string())
        .replace("{UPSTREAM}", &upstream_addr.to_string())
        .replace("{DIR}", &dir.display().to_string());
    std::fs::write(dir.join("nginx.conf"), nginx_conf).unwrap();
    let nginx_available = Command::new("nginx").arg("-v").output().is_ok();
    if nginx_available {
        procs.push(Proc::spawn(
            &o.proxy_core,
            Path::new("nginx"),
            &["-c", &config_arg("nginx.conf"), "-g", "daemon off;"],
            &dir.join("nginx.log"),
            "nginx",
        ));
        targets.push(latest_target(
            &procs,
            "nginx",
            "3 nginx proxy_pass, keep-alive",
            nginx_port,
            &plain,
        ));
    }
    for (key, label, limits) in [
        ("full", "4 gateway, full pipeline", "[limits]\nbackend = \"local\"".to_string()),
        (
            "full_redis",
            "5 full pipeline, Redis rate limit",
            format!(
                "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"bench:{}\"\nfallback = \"fail-closed\"\nredis_timeout = \"1s\"",
                o.redis,
                std::process::id()
            ),
        ),
    ] {
        let port = free_port();
        let file = format!("{key}.toml");
        std::fs::write(dir.join(&file), gateway_config(port, upstream_addr, Some((&jwks, &repo, &limits)))).unwrap();
        procs.push(Proc::spawn(
            &o.proxy_core,
            &o.gateway,
            &["run", "--config", &config_arg(&file)],
            &dir.join(format!("{key}.log")),
            label,
        ));
        targets.push(latest_target(&procs, key, label, port, &token_headers));
    }
    for t in &targets {
        wait_listening(t.addr, t.label);
    }

    // Saturation, with a warm-up (also fills the verified-token and decision caches).
    let mut results: BTreeMap<&str, Value> = BTreeMap::new();
    let mut peaks: BTreeMap<&str, f64> = BTreeMap::new();
    for t in &targets {
        runtime.block_on(open_loop(t, 2000.0, 1, 64));
        wrk(&o.load_core, t, 2);
        let mut rps = Vec::new();
        let mut cpu_per_req = Vec::new();
        let mut errors = 0;
        for _ in 0..o.reps {
            let cpu_before = procs[t.proc_index].cpu_seconds();
            let (r, total, non2xx) = wrk(&o.load_core, t, o.seconds);
            let cpu = procs[t.proc_index].cpu_seconds() - cpu_before;
            rps.push(r);
            cpu_per_req.push(if total > 0 {
                cpu / total as f64 * 1e6
            } else {
                0.0
            });
            errors += non2xx;
        }
        let peak = median(&mut rps.clone());
        peaks.insert(t.key, peak);
        eprintln!(
            "{}: {peak:.0} req/s (runs {rps:?}), {:.1} µs CPU/request, non-2xx {errors}",
            t.label,
            median(&mut cpu_per_req.clone())
        );
        results.insert(
            t.key,
            json!({
                "label": t.label,
                "rps_median": peak, "rps_runs": rps, "rps_spread_pct": spread(&rps),
                "cpu_us_per_request_median": median(&mut cpu_per_req.clone()),
                "cpu_us_per_request_runs": cpu_per_req,
                "non_2xx": errors,
            }),
        );
    }

    // Latency at one fixed offered rate: half of the full pipeline's peak.
    let rate = (peaks.get("full").copied().unwrap_or(1000.0) * 0.5).max(100.0);
    for t in &targets {
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut p999 = Vec::new();
        let mut errors = 0;
        for _ in 0..o.reps {
            let (lat, e) = runtime.block_on(open_loop(t, rate, o.seconds, 64));
            p50.push(percentile(&lat, 50.0) as f64);
            p99.push(percentile(&lat, 99.0) as f64);
            p999.push(percentile(&lat, 99.9) as f64);
            errors += e;
        }
        let entry = results.get_mut(t.key).expect("entry");
        entry["offered_rate"] = json!(rate);
        entry["p50_us"] = json!(median(&mut p50.clone()));
        entry["p99_us"] = json!(median(&mut p99.clone()));
        entry["p999_us"] = json!(median(&mut p999.clone()));
        entry["p99_us_runs"] = json!(p99);
        entry["p99_spread_pct"] = json!(spread(&p99));
        entry["open_loop_errors"] = json!(errors);
        entry["peak_rss_kib"] = json!(procs[t.proc_index].status_kb("VmHWM:"));
        eprintln!(
            "{} at {rate:.0} req/s: p50 {} µs, p99 {} µs, p99.9 {} µs",
            t.label, entry["p50_us"], entry["p99_us"], entry["p999_us"]
        );
    }
    drop(procs);

    // Memory per tenant: the full configuration, idle, with 10 / 10,000 / 100,000 tenants.
    let mut memory = Vec::new();
    for n in [10usize, 10_000, 100_000] {
        let sub = dir.join(format!("mem-{n}"));
        std::fs::create_dir_all(&sub).unwrap();
        write_tenants(&sub.join("tenants.toml"), n);
        let port = free_port();
        std::fs::write(
            sub.join("gateway.toml"),
            gateway_config(
                port,
                upstream_addr,
                Some((&jwks, &repo, "[limits]\nbackend = \"local\"")),
            ),
        )
        .unwrap();
        let p = Proc::spawn(
            &o.proxy_core,
            &o.gateway,
            &[
                "run",
                "--config",
                &sub.join("gateway.toml").display().to_string(),
            ],
            &sub.join("gateway.log"),
            "memory probe",
        );
        wait_listening(format!("127.0.0.1:{port}").parse().unwrap(), "memory probe");
        std::thread::sleep(Duration::from_secs(1));
        let rss = p.status_kb("VmRSS:");
        eprintln!("{n} tenants: {rss} KiB resident");
        memory.push(json!({"tenants": n, "rss_kib": rss}));
    }
    let rss = |i: usize| memory[i]["rss_kib"].as_f64().unwrap_or(0.0) * 1024.0;
    let bytes_per_tenant = (rss(2) - rss(0)) / (100_000.0 - 10.0);

    // Criterion stage benchmarks from the same command (bench/run runs them first).
    let mut stages = BTreeMap::new();
    if let Some(dir) = &o.criterion {
        collect_criterion(dir, dir, &mut stages);
    }

    let get = |k: &str, f: &str| results.get(k).and_then(|v| v[f].as_f64()).unwrap_or(0.0);
    let ratios = json!({
        "full_vs_passthrough_rps": get("full", "rps_median") / get("passthrough", "rps_median"),
        "full_vs_nginx_rps": if nginx_available { get("full", "rps_median") / get("nginx", "rps_median") } else { f64::NAN },
        "passthrough_vs_direct_rps": get("passthrough", "rps_median") / get("direct", "rps_median"),
        "full_added_p99_us_vs_direct": get("full", "p99_us") - get("direct", "p99_us"),
        "full_redis_added_p99_us_vs_full": get("full_redis", "p99_us") - get("full", "p99_us"),
    });
    let host = hostname();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let report = json!({
        "date": date, "host": host, "cores": online_cores(),
        "proxy_core": o.proxy_core, "load_core": o.load_core, "reps": o.reps, "seconds_per_run": o.seconds,
        "tenants": o.tenants, "configurations": results, "ratios": ratios,
        "memory": {"probes": memory, "bytes_per_idle_tenant": bytes_per_tenant},
        "criterion_ns": stages,
    });
    let day = &date[..10];
    std::fs::create_dir_all(&o.out).unwrap();
    let base = o.out.join(format!("{day}-{host}"));
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    std::fs::write(base.with_extension("md"), markdown(&report)).unwrap();
    eprintln!("wrote {}.json and .md", base.display());
}

/// Cores of the machine (this process is pinned to one, so not `available_parallelism`).
fn online_cores() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1)
        .max(1)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// `target/criterion/<group>/<bench>/new/estimates.json` → median ns.
fn collect_criterion(root: &Path, dir: &Path, out: &mut BTreeMap<String, f64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            if path.ends_with("new") {
                if let Ok(text) = std::fs::read_to_string(path.join("estimates.json")) {
                    if let Ok(v) = serde_json::from_str::<Value>(&text) {
                        let name = path
                            .parent()
                            .and_then(|p| p.strip_prefix(root).ok())
                            .map(|p| p.display().to_string())
                            .unwrap_or_default();
                        if let Some(ns) = v["median"]["point_estimate"].as_f64() {
                            out.insert(name, ns);
                        }
                    }
                }
            } else if !path.ends_with("report") && !path.ends_with("base") {
                collect_criterion(root, &path, out);
            }
        }
    }
}

fn markdown(r: &Value) -> String {
    let mut md = format!(
        "# Load comparison {} on `{}`\n\n{} cores; proxy pinned to core {}, load generator and upstream to core {}. \
Each figure is the median of {} runs of {} s; spread = (max − min) / median.\n\
Saturation: wrk, 1 thread, 64 connections, closed loop. Latency: open loop at {:.0} req/s (half of the full pipeline's peak), \
64 connections, measured from each request's scheduled send time. Full pipeline: ES256 JWT (1,000 distinct tokens, verified-token cache), \
{} tenants, Cedar with the example policies, residency over 5 regional pools, rate limits, usage outbox (fsync interval), audit log.\n\n",
        r["date"].as_str().unwrap_or(""),
        r["host"].as_str().unwrap_or(""),
        r["cores"], r["proxy_core"].as_str().unwrap_or(""), r["load_core"].as_str().unwrap_or(""),
        r["reps"], r["seconds_per_run"],
        r["configurations"]["full"]["offered_rate"].as_f64().unwrap_or(0.0),
        r["tenants"],
    );
    md.push_str("| configuration | req/s (spread) | CPU µs/req | p50 µs | p99 µs (spread) | p99.9 µs | peak RSS MiB |\n|---|---|---|---|---|---|---|\n");
    for key in ["direct", "passthrough", "nginx", "full", "full_redis"] {
        let c = &r["configurations"][key];
        if c.is_null() {
            continue;
        }
        md.push_str(&format!(
            "| {} | {:.0} ({:.1}%) | {:.1} | {:.0} | {:.0} ({:.1}%) | {:.0} | {:.1} |\n",
            c["label"].as_str().unwrap_or(key),
            c["rps_median"].as_f64().unwrap_or(0.0),
            c["rps_spread_pct"].as_f64().unwrap_or(0.0),
            c["cpu_us_per_request_median"].as_f64().unwrap_or(0.0),
            c["p50_us"].as_f64().unwrap_or(0.0),
            c["p99_us"].as_f64().unwrap_or(0.0),
            c["p99_spread_pct"].as_f64().unwrap_or(0.0),
            c["p999_us"].as_f64().unwrap_or(0.0),
            c["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        ));
    }
    let x = &r["ratios"];
    md.push_str(&format!(
        "\n| ratio | measured | goal |\n|---|---|---|\n| 4/2 throughput (full / pass-through) | {:.2} | ≥ 0.85 |\n| 4/3 throughput (full / nginx) | {:.2} | ≥ 1.0 |\n| 2/1 throughput (pass-through / direct) | {:.2} | — |\n| added p99, 4 vs 1 | {:.0} µs | ≤ 250 µs |\n| added p99, 5 vs 4 (Redis limit) | {:.0} µs | — |\n",
        x["full_vs_passthrough_rps"].as_f64().unwrap_or(f64::NAN),
        x["full_vs_nginx_rps"].as_f64().unwrap_or(f64::NAN),
        x["passthrough_vs_direct_rps"].as_f64().unwrap_or(f64::NAN),
        x["full_added_p99_us_vs_direct"].as_f64().unwrap_or(f64::NAN),
        x["full_redis_added_p99_us_vs_full"].as_f64().unwrap_or(f64::NAN),
    ));
    md.push_str(
        "\n## Memory per tenant (full configuration, idle)\n\n| tenants | RSS MiB |\n|---|---|\n",
    );
    for p in r["memory"]["probes"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {:.1} |\n",
            p["tenants"],
            p["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
        ));
    }
    md.push_str(&format!(
        "\nBytes per idle tenant ((RSS 100,000 − RSS 10) / 99,990): {:.0} (goal ≤ 1024).\n",
        r["memory"]["bytes_per_idle_tenant"].as_f64().unwrap_or(0.0)
    ));
    if let Some(stages) = r["criterion_ns"].as_object().filter(|s| !s.is_empty()) {
        md.push_str(
            "\n## Stage micro-benchmarks (criterion, median)\n\n| benchmark | ns |\n|---|---|\n",
        );
        for (name, ns) in stages {
            md.push_str(&format!("| {name} | {:.0} |\n", ns.as_f64().unwrap_or(0.0)));
        }
    }
    md
}
