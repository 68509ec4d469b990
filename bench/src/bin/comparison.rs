//! The load comparison, all configurations in one run on loopback, against the same fast
//! upstream (`bench-upstream`):
//! - 1 direct to the upstream (the physical limit);
//! - 1b bare Pingora: one `ProxyHttp` whose `upstream_peer` returns one keep-alive peer
//!   (`bench/bare-pingora`, the same pingora features as the gateway), the floor of any
//!   Pingora-based proxy;
//! - 2 the gateway with every stage off (pass-through);
//! - 3 nginx `proxy_pass` with upstream keep-alive;
//! - 4 the gateway with the full pipeline (ES256 JWTs via JWKS, 100,000 tenants, Cedar with
//!   the example policies, residency routing, local rate limits high enough not to refuse,
//!   metering to the outbox, audit log);
//! - 5 as 4 with the Redis-backed rate limit.
//!
//! For each: requests/s at saturation (wrk, closed loop), CPU µs and context switches per
//! request of the proxy during those runs; syscalls per request (`strace -c -f` over a fixed
//! number of requests); latency p50/p99/p99.9 at 10 % and 50 % of the full pipeline's peak (an
//! open-loop generator that measures from each request's scheduled send time, so coordinated
//! omission cannot hide the tail); peak RSS; and instructions per request under
//! `valgrind --tool=callgrind` over a fixed number of sequential requests after a warm-up —
//! the one figure that does not move with the load of a shared machine. Then 1b–4 once more
//! with two worker threads (nginx: two workers) on the same proxy core, and resident memory
//! with 10, 10,000 and 100,000 tenants.
//!
//! The proxy under test runs on core `--proxy-core`, the load generator and the upstream on
//! `--load-core` (run this binary itself under `taskset -c <load-core>`; `bench/run` does).
//!
//! Usage: comparison --gateway BIN --upstream-bin BIN --bare-pingora BIN --out DIR [--reps N]
//!        [--seconds S] [--tenants N] [--redis URL] [--criterion DIR] [--proxy-core C]
//!        [--load-core C] [--callgrind-requests N] [--strace-requests N] [--no-callgrind]
//!        [--only KEY,KEY...] [--instructions-only] [--latency] [--threads N]
//!        [--build-profile NAME]
//!
//! `--only passthrough,full` (keys as in the JSON report) measures only the named
//! configurations, saturation and syscalls only, and writes no report (e.g. to profile one of
//! them with `perf record -p`); with `--instructions-only` only their instructions per request:
//! the quick, repeatable check of one change; with `--latency` (and `full` among them) the
//! open-loop latency runs too, printed, not reported; `--threads N` runs them with N worker
//! threads (nginx: worker processes), still on the one proxy core. With `BENCH_KEEP_CALLGRIND=1` the callgrind dumps and the
//! scratch directory are kept for `callgrind_annotate`;
//! `BENCH_CALLGRIND_ARGS` adds valgrind options (`--cache-sim=yes`: simulated cache misses).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gateway_bench::harness::{
    cpu_idle, free_port, gateway_config, hostname, loadavg, median, online_cores, open_loop,
    saturate, signed_tokens, spread, wait_listening, write_tenants, CpuTicks, Fixture, Launch,
    Load, Proc, Target,
};
use gateway_bench::measure::{fixed_requests, strace_counts, Callgrind};
use gateway_bench::{arg, percentile};
use serde_json::{json, Value};

struct Opts {
    gateway: PathBuf,
    upstream_bin: PathBuf,
    bare_bin: PathBuf,
    out: PathBuf,
    reps: usize,
    seconds: u64,
    redis: String,
    criterion: Option<PathBuf>,
    proxy_core: String,
    load_core: String,
    tenants: usize,
    callgrind_requests: u64,
    strace_requests: u64,
    callgrind: bool,
    /// The cargo profile the binaries were built with (for the report).
    build_profile: String,
    /// Only these configurations, saturation and syscalls, no report.
    only: Option<Vec<String>>,
    /// With `only`: only instructions per request.
    instructions_only: bool,
    /// With `only`: the open-loop latency runs too (the rates are shares of `full`'s peak).
    latency: bool,
    /// Worker threads of the proxies measured (`--threads`, with `only`; the report measures
    /// 1, then 2 for its own table).
    threads: usize,
}

impl Opts {
    fn load(&self) -> Load<'_> {
        Load {
            core: &self.load_core,
            reps: self.reps,
            seconds: self.seconds,
        }
    }
}

fn opts() -> Opts {
    Opts {
        gateway: arg("--gateway")
            .unwrap_or_else(|| "target/release/gateway".into())
            .into(),
        upstream_bin: arg("--upstream-bin")
            .unwrap_or_else(|| "target/release/bench-upstream".into())
            .into(),
        bare_bin: arg("--bare-pingora")
            .unwrap_or_else(|| "target/release/bare-pingora".into())
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
        callgrind_requests: arg("--callgrind-requests")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
        strace_requests: arg("--strace-requests")
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000),
        callgrind: !std::env::args().any(|a| a == "--no-callgrind"),
        build_profile: arg("--build-profile").unwrap_or_else(|| "release".into()),
        only: arg("--only").map(|keys| keys.split(',').map(|k| k.trim().to_string()).collect()),
        instructions_only: std::env::args().any(|a| a == "--instructions-only"),
        latency: std::env::args().any(|a| a == "--latency"),
        threads: arg("--threads").and_then(|v| v.parse().ok()).unwrap_or(1),
    }
}

/// Syscalls per request: `strace -c -f` attached to the proxy over a fixed number of requests
/// on 64 connections.
fn syscalls(
    o: &Opts,
    runtime: &tokio::runtime::Runtime,
    t: &Target,
    proc: &Proc,
    scratch: &Path,
) -> Value {
    let n = o.strace_requests;
    let requests = t.requests();
    let counted = strace_counts(&proc.pids(), scratch, || {
        runtime.block_on(fixed_requests(t.addr, &requests, 64, n))
    });
    match counted {
        Ok((calls, Ok(run))) => {
            let total: u64 = calls.values().sum();
            let per: BTreeMap<&String, f64> = calls
                .iter()
                .map(|(name, c)| (name, *c as f64 / n as f64))
                .filter(|(_, v)| *v >= 0.01)
                .collect();
            eprintln!(
                "{}: {:.2} syscalls/request over {n} requests ({} not 2xx): {per:?}",
                t.label,
                total as f64 / n as f64,
                run.not_ok
            );
            json!({"requests": n, "not_2xx": run.not_ok, "per_request": total as f64 / n as f64, "by_call": per})
        }
        Ok((_, Err(e))) | Err(e) => {
            eprintln!("{}: syscall count failed: {e}", t.label);
            json!({"error": e.to_string()})
        }
    }
}

/// The SHA-256 block function. Valgrind does not run the SHA extensions, and hides them from
/// CPUID, so under callgrind sha2 takes its portable path, ~3,400 instructions per 64-byte
/// block; natively (SHA-NI, present on this VM's CPU) a block is a few hundred cycles. The
/// audit chain and the token cache key hash ~1.3 KB per request: counted apart, so the
/// instruction figures can be read as the native code runs.
const SHA256_COMPRESS: &str = "sha2::sha256::compress256";

/// Instructions per request: the configuration started again under callgrind; after a warm-up
/// of `2 × N` sequential requests (every token verified, every cache filled), two windows of
/// `N` sequential requests on one keep-alive connection are counted (every thread of the
/// process, background work included).
fn instructions(
    o: &Opts,
    runtime: &tokio::runtime::Runtime,
    t: &Target,
    addr: SocketAddr,
    launch: &Launch,
    scratch: &Path,
) -> Value {
    let n = o.callgrind_requests;
    let log = scratch.join(format!("callgrind-{}.log", t.key));
    let measured = (|| -> std::io::Result<([u64; 2], [u64; 2], f64)> {
        let mut cg = Callgrind::spawn(&o.proxy_core, &launch.program, &launch.args, scratch, &log)?;
        let started = Instant::now();
        wait_listening(addr, t.label, Duration::from_secs(900));
        let startup = started.elapsed().as_secs_f64();
        let requests = t.requests();
        let run = |count| runtime.block_on(fixed_requests(addr, &requests, 1, count));
        let warm = run(2 * n)?;
        if warm.not_ok > 0 {
            return Err(std::io::Error::other(format!(
                "{} warm-up responses not 2xx",
                warm.not_ok
            )));
        }
        cg.start()?;
        let mut windows = [0u64; 2];
        let mut sha256 = [0u64; 2];
        for (w, sha) in windows.iter_mut().zip(&mut sha256) {
            let r = run(n)?;
            (*w, *sha) = cg.window_split(&[SHA256_COMPRESS])?;
            if r.not_ok > 0 {
                return Err(std::io::Error::other(format!(
                    "{} responses not 2xx",
                    r.not_ok
                )));
            }
        }
        Ok((windows, sha256, startup))
    })();
    match measured {
        Ok(([a, b], sha256, startup)) => {
            let (a, b) = (a as f64 / n as f64, b as f64 / n as f64);
            let sha256 = sha256.iter().sum::<u64>() as f64 / (2 * n) as f64;
            eprintln!(
                "{}: {:.0} instructions/request (windows {a:.0}, {b:.0}; of which SHA-256 in software {sha256:.0}; started in {startup:.0} s under callgrind)",
                t.label,
                (a + b) / 2.0
            );
            json!({
                "requests_per_window": n,
                "per_request": (a + b) / 2.0,
                "windows": [a, b],
                "sha256_software_per_request": sha256,
                "per_request_without_sha256": (a + b) / 2.0 - sha256,
            })
        }
        Err(e) => {
            eprintln!("{}: callgrind failed: {e} (log {})", t.label, log.display());
            json!({"error": e.to_string()})
        }
    }
}

/// Instructions per request of one configuration, started again under callgrind (the native
/// process must be gone: it holds the port).
fn instructions_of(
    o: &Opts,
    runtime: &tokio::runtime::Runtime,
    t: &Target,
    scratch: &Path,
) -> Value {
    let (addr, launch) = if t.key == "direct" {
        // A second upstream: the first keeps serving the proxies.
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        (
            addr,
            Launch {
                program: o.upstream_bin.clone(),
                args: vec![addr.to_string()],
            },
        )
    } else if t.key == "nginx" {
        // One process: callgrind follows no children.
        let mut launch = t.launch.clone();
        if let Some(g) = launch.args.last_mut() {
            *g = "daemon off; master_process off;".into();
        }
        (t.addr, launch)
    } else {
        (t.addr, t.launch.clone())
    };
    instructions(o, runtime, t, addr, &launch, scratch)
}

fn main() {
    let o = opts();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut work = tempfile::tempdir().expect("work dir");
    if std::env::var_os("BENCH_KEEP_CALLGRIND").is_some() {
        work.disable_cleanup(true);
        eprintln!("scratch directory kept: {}", work.path().display());
    }
    let dir = work.path();
    let repo =
        std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).expect("repo");
    let load_before = loadavg();

    // The upstream, the issuer's JWKS, 100,000 tenants and their tokens.
    let fixture = Fixture::start(&o.load_core, &o.upstream_bin, dir, &runtime, o.tenants);
    let (upstream_addr, upstream_launch, key, jwks) = (
        fixture.upstream_addr,
        fixture.upstream_launch,
        fixture.key,
        fixture.jwks,
    );
    let mut procs = vec![fixture.upstream];
    let token_headers: Vec<Vec<(String, String)>> =
        signed_tokens(&key, "bench-key", 1000, o.tenants)
            .into_iter()
            .map(|token| vec![("authorization".to_string(), format!("Bearer {token}"))])
            .collect();
    let plain = vec![vec![("x-bench".to_string(), "1".to_string())]];
    let nginx_available = Command::new("nginx").arg("-v").output().is_ok();

    // The configurations: key, label, launch, port, headers. `threads` = worker threads of
    // the proxy (nginx: worker processes).
    let config_arg = |name: &str| dir.join(name).display().to_string();
    let configurations = |threads: usize,
                          suffix: &str|
     -> Vec<(&'static str, &'static str, Launch, u16, bool)> {
        let mut list = Vec::new();
        let bare_port = free_port();
        list.push((
            "bare_pingora",
            "1b bare Pingora",
            Launch {
                program: o.bare_bin.clone(),
                args: vec![
                    format!("127.0.0.1:{bare_port}"),
                    upstream_addr.to_string(),
                    "--threads".into(),
                    threads.to_string(),
                    "--pool".into(),
                    "256".into(),
                ],
            },
            bare_port,
            false,
        ));
        let pass_port = free_port();
        let file = format!("passthrough{suffix}.toml");
        std::fs::write(
            dir.join(&file),
            gateway_config(pass_port, threads, upstream_addr, None),
        )
        .unwrap();
        list.push((
            "passthrough",
            "2 gateway, every stage off",
            Launch {
                program: o.gateway.clone(),
                args: vec!["run".into(), "--config".into(), config_arg(&file)],
            },
            pass_port,
            false,
        ));
        if nginx_available {
            let nginx_port = free_port();
            let file = format!("nginx{suffix}.conf");
            let conf = std::fs::read_to_string(repo.join("bench/nginx.conf"))
                .expect("bench/nginx.conf")
                .replace(
                    "worker_processes 1;",
                    &format!("worker_processes {threads};"),
                )
                .replace("{LISTEN}", &nginx_port.to_string())
                .replace("{UPSTREAM}", &upstream_addr.to_string())
                .replace("{DIR}", &dir.display().to_string())
                .replace("nginx.pid", &format!("nginx{suffix}.pid"));
            std::fs::write(dir.join(&file), conf).unwrap();
            list.push((
                "nginx",
                "3 nginx proxy_pass, keep-alive",
                Launch {
                    program: "nginx".into(),
                    args: vec![
                        "-c".into(),
                        config_arg(&file),
                        "-g".into(),
                        "daemon off;".into(),
                    ],
                },
                nginx_port,
                false,
            ));
        }
        let mut full = vec![(
            "full",
            "4 gateway, full pipeline",
            "[limits]\nbackend = \"local\"".to_string(),
        )];
        if threads == 1 {
            full.push((
                "full_redis",
                "5 full pipeline, Redis rate limit",
                format!(
                    "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"bench:{}\"\nfallback = \"fail-closed\"\nredis_timeout = \"1s\"",
                    o.redis,
                    std::process::id()
                ),
            ));
        }
        for (key, label, limits) in full {
            let port = free_port();
            let file = format!("{key}{suffix}.toml");
            std::fs::write(
                dir.join(&file),
                gateway_config(port, threads, upstream_addr, Some((&jwks, &repo, &limits))),
            )
            .unwrap();
            list.push((
                key,
                label,
                Launch {
                    program: o.gateway.clone(),
                    args: vec!["run".into(), "--config".into(), config_arg(&file)],
                },
                port,
                true,
            ));
        }
        list
    };

    let mut targets = vec![Target {
        key: "direct",
        label: "1 direct to upstream",
        addr: upstream_addr,
        proc_index: 0,
        headers: plain.clone(),
        launch: upstream_launch.clone(),
    }];
    // The report's main table is measured with one worker thread; `--threads` only applies to
    // an `--only` run.
    let threads = if o.only.is_some() { o.threads } else { 1 };
    for (key, label, launch, port, tokens) in configurations(threads, "") {
        let selected = o
            .only
            .as_ref()
            .is_none_or(|only| only.iter().any(|k| k == key));
        if !selected {
            continue;
        }
        // With `--instructions-only` nothing runs natively: each is started under callgrind,
        // one at a time, below.
        let proc_index = if o.instructions_only {
            0
        } else {
            procs.push(Proc::spawn(
                &o.proxy_core,
                &launch,
                &dir.join(format!("{key}.log")),
                label,
            ));
            procs.len() - 1
        };
        targets.push(Target {
            key,
            label,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            proc_index,
            headers: if tokens {
                token_headers.clone()
            } else {
                plain.clone()
            },
            launch,
        });
    }
    if let Some(only) = &o.only {
        targets.retain(|t| only.iter().any(|k| k == t.key));
    }
    if o.instructions_only {
        for t in &targets {
            instructions_of(&o, &runtime, t, dir);
        }
        return;
    }
    for t in &targets {
        wait_listening(t.addr, t.label, Duration::from_secs(120));
    }

    // Saturation.
    let mut results: BTreeMap<&str, Value> = BTreeMap::new();
    let mut peaks: BTreeMap<&str, f64> = BTreeMap::new();
    for t in &targets {
        let r = saturate(&o.load(), &runtime, t, &procs[t.proc_index]);
        peaks.insert(t.key, r["rps_median"].as_f64().unwrap_or(0.0));
        results.insert(t.key, r);
    }

    // Syscalls per request.
    for t in &targets {
        let s = syscalls(&o, &runtime, t, &procs[t.proc_index], dir);
        results.get_mut(t.key).expect("entry")["syscalls"] = s;
    }

    if o.only.is_some() && !o.latency {
        return;
    }

    // Latency at fixed offered rates: 10 % and 50 % of the full pipeline's peak.
    let full_peak = peaks.get("full").copied().unwrap_or(1000.0);
    let rates = [("p10", 0.1), ("p50", 0.5)];
    for t in &targets {
        for (name, share) in rates {
            let rate = (full_peak * share).max(100.0);
            let mut p50 = Vec::new();
            let mut p99 = Vec::new();
            let mut p999 = Vec::new();
            let mut ctx = Vec::new();
            let mut steal = Vec::new();
            let mut p99_windows = Vec::new();
            let mut errors = 0;
            for _ in 0..o.reps {
                let proc = &procs[t.proc_index];
                let before = proc.context_switches();
                let ticks = CpuTicks::now();
                let run = runtime.block_on(open_loop(t, rate, o.seconds, 64));
                steal.push(ticks.steal_pct_since());
                let lat = &run.latencies;
                // Where the slowest 1 % were due: in a few 100-ms windows (a pause) or spread.
                let (slow_windows, windows) =
                    run.windows_with_latency_at_least(percentile(lat, 99.0), 100_000);
                p99_windows
                    .push(json!({"windows_with_slowest_1pct": slow_windows, "windows": windows}));
                let switched = proc.context_switches().saturating_sub(before);
                ctx.push(switched as f64 / lat.len().max(1) as f64);
                p50.push(percentile(lat, 50.0) as f64);
                p99.push(percentile(lat, 99.0) as f64);
                p999.push(percentile(lat, 99.9) as f64);
                errors += run.errors;
            }
            let entry = json!({
                "offered_rate": rate,
                "p50_us": median(&mut p50.clone()),
                "p99_us": median(&mut p99.clone()),
                "p999_us": median(&mut p999.clone()),
                "p99_us_runs": p99, "p99_spread_pct": spread(&p99),
                "context_switches_per_request_median": median(&mut ctx.clone()),
                "steal_pct_runs": steal,
                "slowest_1pct_windows_runs": p99_windows,
                "errors": errors,
            });
            eprintln!(
                "{} at {rate:.0} req/s: p50 {} µs, p99 {} µs, p99.9 {} µs, {:.3} context switches/request, steal {steal:.1?} %, slowest 1 % due in {} of the 100-ms windows",
                t.label, entry["p50_us"], entry["p99_us"], entry["p999_us"],
                median(&mut ctx.clone()),
                slowest_windows(&entry["slowest_1pct_windows_runs"]),
            );
            results.get_mut(t.key).expect("entry")[format!("latency_{name}")] = entry;
        }
        results.get_mut(t.key).expect("entry")["peak_rss_kib"] =
            json!(procs[t.proc_index].status_kb("VmHWM:"));
    }
    if o.only.is_some() {
        return;
    }
    // Keep the upstream; the proxies go.
    procs.truncate(1);

    // Two worker threads (nginx: two worker processes) on the same proxy core.
    let mut two_threads: BTreeMap<&str, Value> = BTreeMap::new();
    for (key, label, launch, port, tokens) in configurations(2, "-2") {
        let proc = Proc::spawn(
            &o.proxy_core,
            &launch,
            &dir.join(format!("{key}-2.log")),
            label,
        );
        let t = Target {
            key,
            label,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            proc_index: 0,
            headers: if tokens {
                token_headers.clone()
            } else {
                plain.clone()
            },
            launch,
        };
        wait_listening(t.addr, label, Duration::from_secs(120));
        eprint!("threads = 2: ");
        two_threads.insert(key, saturate(&o.load(), &runtime, &t, &proc));
    }

    // Instructions per request under callgrind, one configuration at a time.
    if o.callgrind {
        for t in &targets {
            let i = instructions_of(&o, &runtime, t, dir);
            results.get_mut(t.key).expect("entry")["instructions"] = i;
        }
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
                1,
                upstream_addr,
                Some((&jwks, &repo, "[limits]\nbackend = \"local\"")),
            ),
        )
        .unwrap();
        let p = Proc::spawn(
            &o.proxy_core,
            &Launch {
                program: o.gateway.clone(),
                args: vec![
                    "run".into(),
                    "--config".into(),
                    sub.join("gateway.toml").display().to_string(),
                ],
            },
            &sub.join("gateway.log"),
            "memory probe",
        );
        wait_listening(
            format!("127.0.0.1:{port}").parse().unwrap(),
            "memory probe",
            Duration::from_secs(120),
        );
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

    let get = |k: &str, path: &[&str]| {
        let mut v = results.get(k).cloned().unwrap_or(Value::Null);
        for p in path {
            v = v[*p].clone();
        }
        v.as_f64().unwrap_or(f64::NAN)
    };
    let ratios = json!({
        "full_vs_passthrough_rps": get("full", &["rps_median"]) / get("passthrough", &["rps_median"]),
        "full_vs_nginx_rps": get("full", &["rps_median"]) / get("nginx", &["rps_median"]),
        "passthrough_vs_direct_rps": get("passthrough", &["rps_median"]) / get("direct", &["rps_median"]),
        "bare_pingora_vs_nginx_rps": get("bare_pingora", &["rps_median"]) / get("nginx", &["rps_median"]),
        "passthrough_vs_bare_cpu": get("passthrough", &["cpu_us_per_request_median"]) / get("bare_pingora", &["cpu_us_per_request_median"]),
        "passthrough_vs_bare_instructions": get("passthrough", &["instructions", "per_request"]) / get("bare_pingora", &["instructions", "per_request"]),
        "full_vs_passthrough_instructions": get("full", &["instructions", "per_request"]) / get("passthrough", &["instructions", "per_request"]),
        "full_vs_passthrough_instructions_without_sha256": get("full", &["instructions", "per_request_without_sha256"]) / get("passthrough", &["instructions", "per_request_without_sha256"]),
        "bare_vs_nginx_instructions": get("bare_pingora", &["instructions", "per_request"]) / get("nginx", &["instructions", "per_request"]),
        "full_context_switches_per_request": get("full", &["context_switches_per_request_median"]),
        "full_added_p99_us_vs_direct_at_50pct": get("full", &["latency_p50", "p99_us"]) - get("direct", &["latency_p50", "p99_us"]),
        "full_added_p99_us_vs_direct_at_10pct": get("full", &["latency_p10", "p99_us"]) - get("direct", &["latency_p10", "p99_us"]),
        "full_redis_added_p99_us_vs_full_at_50pct": get("full_redis", &["latency_p50", "p99_us"]) - get("full", &["latency_p50", "p99_us"]),
    });
    let host = hostname();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let report = json!({
        "date": date, "host": host, "cores": online_cores(),
        "proxy_core": o.proxy_core, "load_core": o.load_core, "reps": o.reps, "seconds_per_run": o.seconds,
        "build_profile": o.build_profile,
        "tenants": o.tenants, "strace_requests": o.strace_requests, "callgrind_requests": o.callgrind_requests,
        "loadavg_before": load_before, "loadavg_after": loadavg(), "cpu_idle": cpu_idle(),
        "configurations": results, "threads_2": two_threads, "ratios": ratios,
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

const KEYS: [&str; 6] = [
    "direct",
    "bare_pingora",
    "passthrough",
    "nginx",
    "full",
    "full_redis",
];

/// One figure per run, `2.1 / 0.4 / 7.9`.
fn per_run(runs: &Value, show: impl Fn(&Value) -> String) -> String {
    let runs: Vec<String> = runs
        .as_array()
        .map(|a| a.iter().map(show).collect())
        .unwrap_or_default();
    runs.join(" / ")
}

/// Per run, in how many 100-ms windows the slowest 1 % of requests were due: `3 of 80 / 41 of 80`.
fn slowest_windows(runs: &Value) -> String {
    per_run(runs, |r| {
        format!("{} of {}", r["windows_with_slowest_1pct"], r["windows"])
    })
}

/// A run's steal shares, `2.1 / 0.4 / 7.9`.
fn steal_runs(runs: &Value) -> String {
    per_run(runs, |v| format!("{:.1}", f(v)))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn markdown(r: &Value) -> String {
    let c = &r["configurations"];
    let mut md = format!(
        "# Load comparison {} on `{}`\n\n{} cores; proxy pinned to core {}, load generator and upstream to core {}. \
Build profile `{}`. Idle cores: {}. Load average {} before, {} after: other work on the machine \
moves req/s, CPU µs and latencies between runs; instructions, syscalls and context switches per request are the figures to decide with. \
Each throughput and latency figure is the median of {} runs of {} s; spread = (max − min) / median.\n\n\
- Saturation: wrk, 1 thread, 64 connections, closed loop; CPU µs and context switches (voluntary + involuntary, summed over `/proc/PID/task/*/status`) of the proxy per request during those runs.\n\
- Steal: the share of the machine's CPU time (`/proc/stat`, both cores) the hypervisor gave to other guests during each run: on a shared VM it moves req/s and tail latency more than anything measured here.\n\
- Syscalls: `strace -c -f` attached to the proxy over {} requests on 64 keep-alive connections.\n\
- Instructions: the proxy restarted under `valgrind --tool=callgrind`; after a warm-up of 2 × N sequential requests, two windows of N = {} sequential requests on one keep-alive connection, every thread of the process counted (`callgrind_control -z` / `-d`). Valgrind does not run the SHA extensions, so SHA-256 (the audit chain, the token cache key) runs sha2's portable code under it, ~3,400 instructions per 64-byte block, where natively (SHA-NI) a block costs a few hundred cycles: that share is shown apart (`callgrind_annotate`, self cost of `sha2::sha256::compress256`).\n\
- Latency: open loop (each request due at a fixed time, latency counted from that time) at 10 % and 50 % of the full pipeline's peak, 64 connections.\n\
- Full pipeline: ES256 JWT (1,000 distinct tokens, verified-token cache), {} tenants, Cedar with the example policies, residency over 5 regional pools, rate limits, usage outbox (fsync interval), audit log.\n\n",
        r["date"].as_str().unwrap_or(""),
        r["host"].as_str().unwrap_or(""),
        r["cores"],
        r["proxy_core"].as_str().unwrap_or(""),
        r["load_core"].as_str().unwrap_or(""),
        r["build_profile"].as_str().unwrap_or("release"),
        r["cpu_idle"].as_str().unwrap_or("unknown"),
        r["loadavg_before"].as_str().unwrap_or(""),
        r["loadavg_after"].as_str().unwrap_or(""),
        r["reps"],
        r["seconds_per_run"],
        r["strace_requests"],
        r["callgrind_requests"],
        r["tenants"],
    );
    md.push_str("| configuration | req/s (spread) | CPU µs/req | context switches/req | syscalls/req | instructions/req | of which SHA-256 in software | peak RSS MiB | steal % |\n|---|---|---|---|---|---|---|---|---|\n");
    for key in KEYS {
        let x = &c[key];
        if x.is_null() {
            continue;
        }
        md.push_str(&format!(
            "| {} | {:.0} ({:.1}%) | {:.1} | {:.3} | {:.2} | {:.0} | {:.0} | {:.1} | {} |\n",
            x["label"].as_str().unwrap_or(key),
            f(&x["rps_median"]),
            f(&x["rps_spread_pct"]),
            f(&x["cpu_us_per_request_median"]),
            f(&x["context_switches_per_request_median"]),
            f(&x["syscalls"]["per_request"]),
            f(&x["instructions"]["per_request"]),
            f(&x["instructions"]["sha256_software_per_request"]),
            f(&x["peak_rss_kib"]) / 1024.0,
            steal_runs(&x["steal_pct_runs"]),
        ));
    }
    md.push_str(&format!(
        "\nOpen-loop latency in µs, at {:.0} req/s (10 %) and {:.0} req/s (50 %):\n\n\
| configuration | p50 10 % | p99 10 % | p50 50 % | p99 50 % (spread) | p99.9 50 % | context switches/req 50 % | steal % of the machine's CPU, 50 % runs | 100-ms windows holding the slowest 1 %, 50 % runs |\n|---|---|---|---|---|---|---|---|---|\n",
        f(&c["full"]["latency_p10"]["offered_rate"]),
        f(&c["full"]["latency_p50"]["offered_rate"]),
    ));
    for key in KEYS {
        let x = &c[key];
        if x.is_null() {
            continue;
        }
        let (lo, hi) = (&x["latency_p10"], &x["latency_p50"]);
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} ({:.0}%) | {:.0} | {:.3} | {} | {} |\n",
            x["label"].as_str().unwrap_or(key),
            f(&lo["p50_us"]),
            f(&lo["p99_us"]),
            f(&hi["p50_us"]),
            f(&hi["p99_us"]),
            f(&hi["p99_spread_pct"]),
            f(&hi["p999_us"]),
            f(&hi["context_switches_per_request_median"]),
            steal_runs(&hi["steal_pct_runs"]),
            slowest_windows(&hi["slowest_1pct_windows_runs"]),
        ));
    }
    md.push_str("\nSyscalls per request by call (≥ 0.01 per request):\n\n| configuration | calls |\n|---|---|\n");
    for key in KEYS {
        let x = &c[key];
        if x.is_null() {
            continue;
        }
        let mut calls: Vec<(String, f64)> = x["syscalls"]["by_call"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), f(v))).collect())
            .unwrap_or_default();
        calls.sort_by(|a, b| b.1.total_cmp(&a.1));
        let text: Vec<String> = calls.iter().map(|(k, v)| format!("{v:.2} {k}")).collect();
        md.push_str(&format!(
            "| {} | {} |\n",
            x["label"].as_str().unwrap_or(key),
            text.join(", ")
        ));
    }
    md.push_str("\nTwo worker threads (nginx: two worker processes), still on the one proxy core:\n\n| configuration | req/s (spread) | CPU µs/req | context switches/req | req/s vs 1 thread |\n|---|---|---|---|---|\n");
    for key in KEYS {
        let x = &r["threads_2"][key];
        if x.is_null() {
            continue;
        }
        md.push_str(&format!(
            "| {} | {:.0} ({:.1}%) | {:.1} | {:.3} | {:.2} |\n",
            x["label"].as_str().unwrap_or(key),
            f(&x["rps_median"]),
            f(&x["rps_spread_pct"]),
            f(&x["cpu_us_per_request_median"]),
            f(&x["context_switches_per_request_median"]),
            f(&x["rps_median"]) / f(&c[key]["rps_median"]),
        ));
    }
    let x = &r["ratios"];
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let full_pass = f(&x["full_vs_passthrough_rps"]);
    let pass_bare_cpu = f(&x["passthrough_vs_bare_cpu"]);
    let pass_bare_instr = f(&x["passthrough_vs_bare_instructions"]);
    let full_ctx = f(&x["full_context_switches_per_request"]);
    let added_p99 = f(&x["full_added_p99_us_vs_direct_at_50pct"]);
    let full_nginx = f(&x["full_vs_nginx_rps"]);
    md.push_str(&format!(
        "\n| target | measured | goal | |\n|---|---|---|---|\n\
| full / pass-through throughput | {full_pass:.2} | ≥ 0.85 | {} |\n\
| pass-through / bare Pingora CPU per request | {pass_bare_cpu:.2} | ≤ 1.15 | {} |\n\
| pass-through / bare Pingora instructions per request | {pass_bare_instr:.2} | (≤ 1.15) | {} |\n\
| full pipeline context switches per request (saturation) | {full_ctx:.3} | ≤ 0.1 | {} |\n\
| full pipeline added p99 over direct at 50 % load | {added_p99:.0} µs | ≤ 1,000 µs | {} |\n\
| full / nginx throughput (standing goal) | {full_nginx:.2} | ≥ 1.0 | {} |\n\
| bare Pingora / nginx throughput | {:.2} | — | |\n\
| bare Pingora / nginx instructions per request | {:.2} | — | |\n\
| full / pass-through instructions per request | {:.2} | — | |\n\
| the same without SHA-256 (software under valgrind; SHA extensions natively) | {:.2} | — | |\n\
| full pipeline added p99 over direct at 10 % load | {:.0} µs | — | |\n\
| added p99 at 50 %, 5 vs 4 (Redis limit) | {:.0} µs | — | |\n",
        met(full_pass >= 0.85),
        met(pass_bare_cpu <= 1.15),
        met(pass_bare_instr <= 1.15),
        met(full_ctx <= 0.1),
        met(added_p99 <= 1000.0),
        met(full_nginx >= 1.0),
        f(&x["bare_pingora_vs_nginx_rps"]),
        f(&x["bare_vs_nginx_instructions"]),
        f(&x["full_vs_passthrough_instructions"]),
        f(&x["full_vs_passthrough_instructions_without_sha256"]),
        f(&x["full_added_p99_us_vs_direct_at_10pct"]),
        f(&x["full_redis_added_p99_us_vs_full_at_50pct"]),
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
