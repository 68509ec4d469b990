//! The load harness shared by `comparison` and `ext-authz`: processes pinned to a core (CPU,
//! context switches and memory read from `/proc`), the full-pipeline gateway configuration,
//! generated tenants and tokens, `wrk` at saturation and the open-loop latency generator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::measure::{context_switches, process_tree, request_bytes};
use crate::tenants;

/// Where and how long the load generator runs at saturation.
pub struct Load<'a> {
    /// The core `wrk` is pinned to.
    pub core: &'a str,
    /// Measured runs (median and spread).
    pub reps: usize,
    /// Seconds per run.
    pub seconds: u64,
}

/// `count` ES256 tokens of the bench issuer, signed with `key` (kid `kid`): `sub` `user-i`,
/// tenant claim `org` spread over `tenant-1` … `tenant-<tenants>`, role `viewer`, valid for an
/// hour.
pub fn signed_tokens(
    key: &jsonwebtoken::EncodingKey,
    kid: &str,
    count: usize,
    tenants: usize,
) -> Vec<String> {
    (1..=count)
        .map(|i| {
            let org = format!("tenant-{}", (i * 97) % tenants.max(1) + 1);
            signed_token(key, kid, &format!("user-{i}"), &org)
        })
        .collect()
}

/// One ES256 token of the bench issuer for `sub` of tenant `org`, role `viewer`, valid for an
/// hour.
pub fn signed_token(key: &jsonwebtoken::EncodingKey, kid: &str, sub: &str, org: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    let claims = json!({
        "iss": "https://bench-issuer.local", "aud": "bench", "sub": sub, "org": org,
        "roles": ["viewer"], "exp": now + 3600, "iat": now,
    });
    jsonwebtoken::encode(&header, &claims, key).expect("token")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_listening(addr: SocketAddr, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU seconds used so far (user + system, every thread) by the processes `pids`, from
/// `/proc/<pid>/stat` (this process: `std::process::id()`).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
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

/// How a configuration's process is started (again under callgrind at the end).
#[derive(Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// A process pinned to a core, killed when dropped.
pub struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    pub fn spawn(core: &str, launch: &Launch, log: &Path, name: &str) -> Proc {
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new("taskset")
            .arg("-c")
            .arg(core)
            .arg(&launch.program)
            .args(&launch.args)
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
    pub fn pids(&self) -> Vec<u32> {
        process_tree(self.child.id())
    }

    /// CPU seconds used so far (user + system) by the process and its children.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.pids())
    }

    pub fn context_switches(&self) -> u64 {
        context_switches(&self.pids())
    }

    pub fn status_kb(&self, field: &str) -> u64 {
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
        if let Some(grace) = std::env::var("BENCH_STOP_GRACE_SECONDS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            // A process that exits normally runs its exit handlers: an instrumented build
            // (bench/pgo) writes its profile there.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(grace);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped {}", self.name);
    }
}

/// One configuration under test.
pub struct Target {
    pub key: &'static str,
    pub label: &'static str,
    pub addr: SocketAddr,
    /// Whose CPU and memory count.
    pub proc_index: usize,
    pub headers: Vec<Vec<(String, String)>>,
    pub launch: Launch,
}

impl Target {
    /// The requests of the fixed-count runs, on the wire.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.headers
            .iter()
            .map(|h| request_bytes("/projects/42", h))
            .collect()
    }
}

/// `wrk` at saturation: requests/s and non-2xx count.
pub fn wrk(core: &str, target: &Target, seconds: u64) -> (f64, u64, u64) {
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
pub async fn open_loop(
    target: &Target,
    rate: f64,
    seconds: u64,
    connections: usize,
) -> OpenLoopRun {
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
            let mut answered = Vec::new();
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
                            answered.push((due, due.elapsed().as_micros() as u64));
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
            (answered, errors)
        }));
    }
    // The schedule runs on its own thread, which sleeps until the next due time (timer slack
    // 1 µs) and then hands out every request that is due. It does not spin: a spinning
    // scheduler takes the load core from the client and the upstream that share it, and that
    // showed up as milliseconds of tail in every configuration, direct included.
    let start = Instant::now() + Duration::from_millis(20);
    let scheduler = std::thread::spawn(move || {
        // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64, 0u64, 0u64, 0u64);
        }
        let mut i = 0;
        while i < total {
            let now = Instant::now();
            let due = start + interval.mul_f64(i as f64);
            if due > now {
                std::thread::sleep(due - now);
                continue;
            }
            while i < total && start + interval.mul_f64(i as f64) <= now {
                let _ = queues[i % connections].send((start + interval.mul_f64(i as f64), i));
                i += 1;
            }
        }
    });
    let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
    let mut timeline = Vec::with_capacity(total);
    let mut errors = 0;
    for w in workers {
        if let Ok((answered, e)) = w.await {
            timeline.extend(
                answered
                    .into_iter()
                    .map(|(due, us)| (due.saturating_duration_since(start).as_micros() as u64, us)),
            );
            errors += e;
        }
    }
    timeline.sort_unstable();
    let mut latencies: Vec<u64> = timeline.iter().map(|(_, us)| *us).collect();
    latencies.sort_unstable();
    OpenLoopRun {
        latencies,
        errors,
        timeline,
    }
}

/// What an open-loop run measured.
pub struct OpenLoopRun {
    /// Latency of every answered request in µs, sorted.
    pub latencies: Vec<u64>,
    /// Requests not answered with a 2xx.
    pub errors: u64,
    /// Each answered request's due time (µs after the run's start) and latency (µs), in due
    /// order: whether slow requests bunch in time (a pause of the machine) or spread out.
    pub timeline: Vec<(u64, u64)>,
}

impl OpenLoopRun {
    /// In how many `window_us`-long stretches of the run the requests at or above `latency_us`
    /// were due, and how many stretches the run had: a few means the slow requests came
    /// together (one pause delays every request due during it), many that they were spread.
    pub fn windows_with_latency_at_least(&self, latency_us: u64, window_us: u64) -> (usize, usize) {
        let window_us = window_us.max(1);
        let mut slow: Vec<u64> = self
            .timeline
            .iter()
            .filter(|(_, us)| *us >= latency_us)
            .map(|(due, _)| due / window_us)
            .collect();
        slow.dedup();
        let windows = self
            .timeline
            .last()
            .map_or(0, |(due, _)| (due / window_us + 1) as usize);
        (slow.len(), windows)
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Spread of repeated runs: (max - min) / median, in percent.
pub fn spread(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    let m = median(&mut v);
    let (min, max) = (v[0], v[v.len() - 1]);
    if m == 0.0 {
        0.0
    } else {
        (max - min) / m * 100.0
    }
}

pub fn write_tenants(path: &Path, n: usize) {
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

pub fn gateway_config(
    listen: u16,
    threads: usize,
    upstream: SocketAddr,
    full: Option<(&str, &Path, &str)>,
) -> String {
    let base = format!(
        "[server]\nlisten = [\"127.0.0.1:{listen}\"]\nthreads = {threads}\nstate_dir = \"state-{listen}\"\n\n"
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

/// Saturation with wrk: `load.reps` runs after a warm-up; req/s, CPU µs and context switches per
/// request of the proxy process(es).
pub fn saturate(load: &Load, runtime: &tokio::runtime::Runtime, t: &Target, proc: &Proc) -> Value {
    // Warm-up (also fills the verified-token and decision caches).
    runtime.block_on(open_loop(t, 2000.0, 1, 64));
    wrk(load.core, t, 2);
    let mut rps = Vec::new();
    let mut cpu_per_req = Vec::new();
    let mut ctx_per_req = Vec::new();
    let mut steal = Vec::new();
    let mut errors = 0;
    for _ in 0..load.reps {
        let cpu_before = proc.cpu_seconds();
        let ctx_before = proc.context_switches();
        let ticks = CpuTicks::now();
        let (r, total, non2xx) = wrk(load.core, t, load.seconds);
        steal.push(ticks.steal_pct_since());
        let cpu = proc.cpu_seconds() - cpu_before;
        let ctx = proc.context_switches().saturating_sub(ctx_before);
        rps.push(r);
        let per = |x: f64| if total > 0 { x / total as f64 } else { 0.0 };
        cpu_per_req.push(per(cpu * 1e6));
        ctx_per_req.push(per(ctx as f64));
        errors += non2xx;
    }
    let peak = median(&mut rps.clone());
    eprintln!(
        "{}: {peak:.0} req/s (runs {rps:?}), {:.1} µs CPU/request, {:.3} context switches/request, non-2xx {errors}, steal {steal:.1?} %",
        t.label,
        median(&mut cpu_per_req.clone()),
        median(&mut ctx_per_req.clone()),
    );
    json!({
        "label": t.label,
        "rps_median": peak, "rps_runs": rps, "rps_spread_pct": spread(&rps),
        "cpu_us_per_request_median": median(&mut cpu_per_req.clone()),
        "cpu_us_per_request_runs": cpu_per_req,
        "context_switches_per_request_median": median(&mut ctx_per_req.clone()),
        "context_switches_per_request_runs": ctx_per_req,
        "steal_pct_runs": steal,
        "non_2xx": errors,
    })
}

/// The machine's CPU time so far from `/proc/stat` (all cores, in clock ticks): in all, busy,
/// and stolen — time a virtual CPU was ready but the hypervisor ran something else. On a shared
/// VM steal is what moves a run's req/s and tail latency the most, so each run reports its share.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    total: u64,
    busy: u64,
    steal: u64,
}

impl CpuTicks {
    pub fn now() -> CpuTicks {
        CpuTicks::parse(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
    }

    /// From the text of `/proc/stat`: its first line sums every core.
    fn parse(stat: &str) -> CpuTicks {
        // "cpu  user nice system idle iowait irq softirq steal guest guest_nice"
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        CpuTicks {
            // guest time is already counted in user time.
            total: fields.iter().take(8).sum(),
            // All but idle and iowait.
            busy: [0, 1, 2, 5, 6, 7].into_iter().map(field).sum(),
            steal: field(7),
        }
    }

    /// Busy CPU seconds of the whole machine since boot.
    pub fn busy_seconds(&self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        self.busy as f64 / ticks as f64
    }

    /// Percent of the machine's CPU time since `self` that was stolen.
    pub fn steal_pct_since(&self) -> f64 {
        let now = CpuTicks::now();
        let total = now.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * now.steal.saturating_sub(self.steal) as f64 / total as f64
    }
}

/// How an idle core waits (`cpuidle` driver, and on KVM guests with `haltpoll` how long it
/// polls before halting): a halted virtual CPU is woken by the hypervisor, which on a busy host
/// adds hundreds of microseconds to a request that arrives while the proxy's core is idle.
pub fn cpu_idle() -> String {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string());
    let driver =
        read("/sys/devices/system/cpu/cpuidle/current_driver").unwrap_or_else(|_| "none".into());
    match read("/sys/module/haltpoll/parameters/guest_halt_poll_ns") {
        Ok(ns) => format!("{driver}, guest_halt_poll_ns {ns}"),
        Err(_) => driver,
    }
}

/// The 1-, 5- and 15-minute load averages (other work on the machine shows here).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Cores of the machine (this process is pinned to one, so not `available_parallelism`).
pub fn online_cores() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1)
        .max(1)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// The load's fixed parts, started in `dir`: the example upstream (`bench-upstream`) on core
/// `core` and listening, the bench issuer's JWKS on `runtime`, and `tenants` generated tenants
/// in `dir/tenants.toml`.
pub struct Fixture {
    pub upstream: Proc,
    pub upstream_addr: SocketAddr,
    /// How the upstream was started (a target of its own in the comparison).
    pub upstream_launch: Launch,
    /// Signs the bench issuer's tokens (kid `bench-key`).
    pub key: jsonwebtoken::EncodingKey,
    /// The issuer's JWKS URL.
    pub jwks: String,
}

impl Fixture {
    pub fn start(
        core: &str,
        upstream_bin: &Path,
        dir: &Path,
        runtime: &tokio::runtime::Runtime,
        tenants: usize,
    ) -> Fixture {
        let upstream_addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("loopback address");
        let upstream_launch = Launch {
            program: upstream_bin.to_path_buf(),
            args: vec![upstream_addr.to_string()],
        };
        let upstream = Proc::spawn(
            core,
            &upstream_launch,
            &dir.join("upstream.log"),
            "upstream",
        );
        wait_listening(upstream_addr, "upstream", Duration::from_secs(60));
        let (key, jwk) = crate::ec_key("bench-key");
        let jwks_addr = runtime.block_on(crate::jwks_server(vec![jwk]));
        write_tenants(&dir.join("tenants.toml"), tenants);
        Fixture {
            upstream,
            upstream_addr,
            upstream_launch,
            key,
            jwks: format!("http://{jwks_addr}/jwks"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CpuTicks, OpenLoopRun};

    #[test]
    fn slow_requests_are_counted_by_the_windows_they_were_due_in() {
        // Ten windows of 100 ms; the slow requests (≥ 50 ms) bunch in windows 3 and 7.
        let timeline: Vec<(u64, u64)> = (0..1000u64)
            .map(|i| {
                let due = i * 1000;
                let slow = (300_000..320_000).contains(&due) || (700_000..701_000).contains(&due);
                (due, if slow { 60_000 } else { 400 })
            })
            .collect();
        let run = OpenLoopRun {
            latencies: Vec::new(),
            errors: 0,
            timeline,
        };
        assert_eq!(run.windows_with_latency_at_least(50_000, 100_000), (2, 10));
        assert_eq!(run.windows_with_latency_at_least(400, 100_000), (10, 10));
        assert_eq!(run.windows_with_latency_at_least(100_000, 100_000), (0, 10));
    }

    #[test]
    fn steal_is_read_from_the_first_line_of_proc_stat_and_guest_time_is_not_counted_twice() {
        let before =
            CpuTicks::parse("cpu  100 0 50 800 10 0 5 35 20 0\ncpu0 50 0 25 400 5 0 2 18 10 0\n");
        assert_eq!(before.total, 1000);
        assert_eq!(before.steal, 35);
        assert_eq!(before.busy, 100 + 50 + 5 + 35);
        let after = CpuTicks::parse("cpu  200 0 100 1500 10 0 5 185 40 0\n");
        assert_eq!(after.total - before.total, 1000);
        assert_eq!(after.steal - before.steal, 150);
        let empty = CpuTicks::parse("");
        assert_eq!((empty.total, empty.steal), (0, 0));
    }
}
