//! Per-request cost of one proxy command in front of `bench-upstream`, in the figures that are
//! repeatable on a shared machine: instructions per request under callgrind (two windows of N
//! sequential requests after a warm-up), and natively syscalls per request (`strace -c -f`) and
//! context switches per request over a fixed number of requests. Used to decide build and
//! server settings (bench/README.md, "Pingora findings") one change at a time.
//!
//! Usage: proxy-cost --upstream-bin BIN [--label TEXT] [--proxy-core C] [--requests N]
//!        [--connections C] [--native-connections C] [--json FILE] -- PROGRAM ARGS...
//!
//! Callgrind windows use `--connections` (default 1: sequential); the native counts
//! (`10 × N` requests for context switches and CPU, `N` under strace) use
//! `--native-connections` (default 64, as wrk in the comparison).
//!
//! `{LISTEN}` and `{UPSTREAM}` in ARGS are replaced by the proxy's listen address and the
//! upstream's address; with `--config-template FILE`, `{CONFIG}` is replaced by a copy of FILE
//! in a scratch directory with `{LISTEN}`, `{PORT}`, `{UPSTREAM}` and `{DIR}` (the scratch
//! directory) filled in (gateway.toml or nginx.conf). Requests are `GET /projects/42` with `Host: bench.local`. The JSON
//! report is appended to FILE as one line (or printed). Run it pinned to the other core
//! (`taskset -c 1 proxy-cost --proxy-core 0 ...`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_bench::arg;
use gateway_bench::measure::{
    context_switches, fixed_requests, process_tree, request_bytes, strace_counts, Callgrind,
};
use serde_json::json;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn wait_listening(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        for pid in process_tree(self.0.id()).iter().skip(1) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(split) = args.iter().position(|a| a == "--") else {
        panic!("usage: proxy-cost --upstream-bin BIN [options] -- PROGRAM ARGS...");
    };
    let command = &args[split + 1..];
    assert!(!command.is_empty(), "no proxy command after --");
    let upstream_bin = PathBuf::from(
        arg("--upstream-bin").unwrap_or_else(|| "target/release/bench-upstream".into()),
    );
    let label = arg("--label").unwrap_or_else(|| command.join(" "));
    let core = arg("--proxy-core").unwrap_or_else(|| "0".into());
    let n: u64 = arg("--requests")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let connections: usize = arg("--connections")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let native_connections: usize = arg("--native-connections")
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut scratch = tempfile::tempdir().expect("scratch dir");
    if std::env::var_os("BENCH_KEEP_CALLGRIND").is_some() {
        scratch.disable_cleanup(true);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let upstream = free_addr();
    let _upstream = Killed(
        Command::new(&upstream_bin)
            .arg(upstream.to_string())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the upstream"),
    );
    wait_listening(upstream, Duration::from_secs(30));
    let listen = free_addr();
    let config = scratch.path().join("proxy.conf");
    let fill = |a: &str| {
        a.replace("{LISTEN}", &listen.to_string())
            .replace("{PORT}", &listen.port().to_string())
            .replace("{UPSTREAM}", &upstream.to_string())
            .replace("{DIR}", &scratch.path().display().to_string())
            .replace("{CONFIG}", &config.display().to_string())
    };
    if let Some(template) = arg("--config-template") {
        let text = std::fs::read_to_string(&template).unwrap_or_else(|e| panic!("{template}: {e}"));
        std::fs::write(&config, fill(&text)).expect("config copy");
    }
    let program = PathBuf::from(&command[0]);
    let program_args: Vec<String> = command[1..].iter().map(|a| fill(a)).collect();
    let requests = vec![request_bytes("/projects/42", &[])];
    let run = |count: u64, conns: usize| {
        let r = runtime
            .block_on(fixed_requests(listen, &requests, conns, count))
            .expect("requests");
        assert_eq!(r.not_ok, 0, "responses that are not 2xx");
        r
    };

    // Natively: context switches and syscalls per request.
    let (ctx_per_request, syscalls_per_request, by_call, cpu_us) = {
        let proxy = Killed(
            Command::new("taskset")
                .args(["-c", &core])
                .arg(&program)
                .args(&program_args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the proxy"),
        );
        wait_listening(listen, Duration::from_secs(120));
        let pids = process_tree(proxy.0.id());
        run(2 * n, native_connections);
        let before = context_switches(&pids);
        let cpu_before = cpu_ticks(&pids);
        let native_n = 10 * n;
        run(native_n, native_connections);
        let ctx = context_switches(&pids).saturating_sub(before) as f64 / native_n as f64;
        let cpu = (cpu_ticks(&pids) - cpu_before) as f64 * 1e4 / native_n as f64;
        let (calls, _) =
            strace_counts(&pids, scratch.path(), || run(n, native_connections)).expect("strace");
        let total: u64 = calls.values().sum();
        let by_call: serde_json::Map<String, serde_json::Value> = calls
            .iter()
            .filter(|(_, c)| **c as f64 / n as f64 >= 0.01)
            .map(|(k, c)| (k.clone(), json!(*c as f64 / n as f64)))
            .collect();
        (ctx, total as f64 / n as f64, by_call, cpu)
    };

    // Under callgrind: instructions per request.
    let log = scratch.path().join("callgrind.log");
    let mut cg = Callgrind::spawn(&core, &program, &program_args, scratch.path(), &log)
        .expect("valgrind (bench/run installs it)");
    wait_listening(listen, Duration::from_secs(900));
    run(2 * n, connections);
    cg.start().expect("callgrind_control");
    let mut windows = Vec::new();
    for _ in 0..2 {
        run(n, connections);
        windows.push(cg.window().expect("callgrind dump") as f64 / n as f64);
    }
    drop(cg);
    let instructions = (windows[0] + windows[1]) / 2.0;
    eprintln!(
        "{label}: {instructions:.0} instructions/request (windows {:.0}, {:.0}), {syscalls_per_request:.2} syscalls/request, {ctx_per_request:.3} context switches/request, {cpu_us:.1} CPU µs/request (noisy)",
        windows[0], windows[1]
    );
    let report = json!({
        "label": label, "command": command, "requests_per_window": n, "connections": connections, "native_connections": native_connections,
        "instructions_per_request": instructions, "instruction_windows": windows,
        "syscalls_per_request": syscalls_per_request, "syscalls_by_call": by_call,
        "context_switches_per_request": ctx_per_request, "cpu_us_per_request": cpu_us,
    });
    match arg("--json") {
        Some(path) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            writeln!(f, "{report}").expect("write report");
        }
        None => println!("{report}"),
    }
}

/// User + system ticks (1/100 s) of `pids`.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            let f: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum()
}
