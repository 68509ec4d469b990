//! Repeatable per-request counts of a proxy process, for deciding changes on a noisy, shared
//! machine where throughput moves by tens of percent between runs: a raw HTTP/1.1 client that
//! sends a fixed number of keep-alive requests, instructions per request under
//! `valgrind --tool=callgrind`, syscalls per request under `strace -c -f`, and context switches
//! per request from `/proc/<pid>/task/*/status`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET {path}` with `Host: bench.local` and `headers`, as bytes on the wire (HTTP/1.1,
/// keep-alive).
pub fn request_bytes(path: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: bench.local\r\n");
    for (name, value) in headers {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// What a fixed-count run saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedRun {
    pub ok: u64,
    pub not_ok: u64,
    pub elapsed: Duration,
}

/// Sends `total` requests over `connections` keep-alive connections (each connection sends its
/// next request when the previous response is complete), cycling through `requests`. Fails on
/// a connection or protocol error (a benchmark whose requests fail measures nothing).
pub async fn fixed_requests(
    addr: SocketAddr,
    requests: &[Vec<u8>],
    connections: usize,
    total: u64,
) -> std::io::Result<FixedRun> {
    let start = Instant::now();
    let connections = connections.max(1) as u64;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let share = total / connections + u64::from(c < total % connections);
        let requests = requests.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut buf = Vec::with_capacity(4096);
            let mut run = FixedRun::default();
            for i in 0..share {
                let req = &requests[((i * connections + c) as usize) % requests.len()];
                stream.write_all(req).await?;
                let status = read_response(&mut stream, &mut buf).await?;
                if (200..300).contains(&status) {
                    run.ok += 1;
                } else {
                    run.not_ok += 1;
                }
            }
            Ok::<_, std::io::Error>(run)
        }));
    }
    let mut run = FixedRun::default();
    for t in tasks {
        let r = t.await.map_err(std::io::Error::other)??;
        run.ok += r.ok;
        run.not_ok += r.not_ok;
    }
    run.elapsed = start.elapsed();
    Ok(run)
}

/// Reads one response (Content-Length or chunked body) and returns its status; `buf` keeps
/// bytes read past it (none without pipelining).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    buf.drain(..head_end);
    if let Some(n) = length {
        while buf.len() < n {
            fill(stream, buf).await?;
        }
        buf.drain(..n);
    } else if chunked {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                fill(stream, buf).await?;
            };
            let size_text = std::str::from_utf8(&buf[..line_end]).map_err(|_| bad("chunk"))?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            // Chunk data and its CRLF; the last chunk is followed by (no trailers) one CRLF.
            let need = line_end + 2 + size + 2;
            while buf.len() < need {
                fill(stream, buf).await?;
            }
            buf.drain(..need);
            if size == 0 {
                break;
            }
        }
    } else if status >= 200 && status != 204 && status != 304 {
        return Err(bad("response without length (connection-delimited body)"));
    }
    Ok(status)
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The process `root` and its children (nginx's workers).
pub fn process_tree(root: u32) -> Vec<u32> {
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

/// Voluntary + involuntary context switches of every thread of `pids` so far
/// (`/proc/<pid>/task/*/status`; threads that exited in between are not counted).
pub fn context_switches(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
                continue;
            };
            total += status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:")
                        || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total
}

/// Runs `work` while `strace -c -f` is attached to every thread of `pids`; returns the calls
/// per syscall name made in that window.
pub fn strace_counts<T>(
    pids: &[u32],
    scratch: &Path,
    work: impl FnOnce() -> T,
) -> std::io::Result<(BTreeMap<String, u64>, T)> {
    let out = scratch.join(format!("strace-{}.txt", pids[0]));
    let mut cmd = Command::new("strace");
    cmd.args(["-c", "-f", "-o"]).arg(&out);
    for pid in pids {
        cmd.arg("-p").arg(pid.to_string());
    }
    let mut strace = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    // strace reports each attached thread on stderr; wait until it has attached to all of them.
    let threads: usize = pids
        .iter()
        .map(|p| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .map(|d| d.count())
                .unwrap_or(1)
        })
        .sum();
    let stderr = strace.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut attached = 0;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            // "Process N attached" or "Process N attached with K threads".
            if let Some((_, rest)) = line.split_once("attached") {
                attached += rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<usize>().ok())
                    .unwrap_or(1);
                if attached >= threads {
                    let _ = tx.send(());
                }
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = strace.kill();
        return Err(std::io::Error::other("strace did not attach"));
    }
    let result = work();
    interrupt(&strace);
    let _ = strace.wait();
    let text = std::fs::read_to_string(&out)?;
    Ok((parse_strace_summary(&text), result))
}

/// `strace -c` table → calls per syscall.
pub fn parse_strace_summary(text: &str) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors,] syscall
        if f.len() < 5 || f[0].parse::<f64>().is_err() || f.last() == Some(&"total") {
            continue;
        }
        if let (Ok(n), Some(name)) = (f[3].parse::<u64>(), f.last()) {
            calls.insert(name.to_string(), n);
        }
    }
    calls
}

fn interrupt(child: &Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
}

/// A proxy started under `valgrind --tool=callgrind` with instrumentation off (start-up, e.g.
/// loading 100,000 tenants, runs at valgrind's base speed), whose instruction count is read
/// for windows of requests through `callgrind_control`.
pub struct Callgrind {
    child: Child,
    out: PathBuf,
    dumps: usize,
}

impl Callgrind {
    /// Starts `program args` under callgrind on core `core`; its output goes to `log`.
    pub fn spawn(
        core: &str,
        program: &Path,
        args: &[String],
        scratch: &Path,
        log: &Path,
    ) -> std::io::Result<Callgrind> {
        // Named after the log, so several configurations in one scratch directory keep
        // their own dumps.
        let out = scratch.join(format!(
            "{}.out",
            log.file_stem().unwrap_or_default().to_string_lossy()
        ));
        let child = Command::new("taskset")
            .args([
                "-c",
                core,
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
            ])
            .arg(format!("--callgrind-out-file={}", out.display()))
            // e.g. `--cache-sim=yes`: simulated cache misses per function beside the
            // instructions (the first event, which the windows count, stays `Ir`).
            .args(
                std::env::var("BENCH_CALLGRIND_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .arg(program)
            .args(args)
            .env("GATEWAY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log)?))
            .spawn()?;
        Ok(Callgrind {
            child,
            out,
            dumps: 0,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts counting from zero.
    pub fn start(&mut self) -> std::io::Result<()> {
        self.control(&["--instr=on"])?;
        self.control(&["-z"])
    }

    /// Instructions executed (all threads) since `start` or the previous `window`.
    pub fn window(&mut self) -> std::io::Result<u64> {
        Ok(self.window_split(&[])?.0)
    }

    /// [`Self::window`], and of those the instructions executed in functions whose name
    /// contains one of `functions` (their own instructions, callees not included), as
    /// `callgrind_annotate` lists them.
    pub fn window_split(&mut self, functions: &[&str]) -> std::io::Result<(u64, u64)> {
        self.control(&["-d"])?;
        self.dumps += 1;
        let path = PathBuf::from(format!("{}.{}", self.out.display(), self.dumps));
        let text = std::fs::read_to_string(&path)?;
        let split = if functions.is_empty() {
            0
        } else {
            annotated_self_cost(&path, functions)?
        };
        let total = Self::totals(&path, &text)?;
        if std::env::var_os("BENCH_KEEP_CALLGRIND").is_none() {
            let _ = std::fs::remove_file(&path);
        }
        Ok((total, split))
    }

    fn totals(path: &Path, text: &str) -> std::io::Result<u64> {
        if std::env::var_os("BENCH_KEEP_CALLGRIND").is_some() {
            eprintln!(
                "kept {}: {:?}",
                path.display(),
                text.lines()
                    .filter(|l| l.starts_with("summary")
                        || l.starts_with("totals")
                        || l.starts_with("cmd"))
                    .collect::<Vec<_>>()
            );
        }
        text.lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("{}: no totals", path.display())))
    }

    fn control(&self, args: &[&str]) -> std::io::Result<()> {
        // callgrind_control talks to the valgrind process (pid of `valgrind`, the child of
        // taskset, which execs it: same pid).
        let out = Command::new("callgrind_control")
            .args(args)
            .arg(self.child.id().to_string())
            .output()?;
        if std::env::var_os("BENCH_KEEP_CALLGRIND").is_some() {
            eprintln!(
                "callgrind_control {args:?}: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "callgrind_control {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }
}

/// The instructions `callgrind_annotate` lists for functions whose name contains one of
/// `functions` in the dump at `path` (self cost: one line per function and source file, the
/// lines of code inlined into it from other files included).
fn annotated_self_cost(path: &Path, functions: &[&str]) -> std::io::Result<u64> {
    let out = Command::new("callgrind_annotate")
        .args(["--threshold=100", "--inclusive=no", "--auto=no"])
        .arg(path)
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "callgrind_annotate {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(parse_annotated_self_cost(
        &String::from_utf8_lossy(&out.stdout),
        functions,
    ))
}

/// Sums the cost column of `callgrind_annotate`'s function lines
/// (`  93,981,000 (12.49%)  file.rs:crate::function [object]`) that name one of `functions`.
fn parse_annotated_self_cost(listing: &str, functions: &[&str]) -> u64 {
    listing
        .lines()
        .filter_map(|line| {
            let (cost, rest) = line.trim_start().split_once(' ')?;
            let cost: u64 = cost.replace(',', "").parse().ok()?;
            // `file:function [object]`: the function follows the file's last colon.
            let name = rest.split_once(")  ")?.1;
            // Source annotation's call lines (`=> file:function (3,000x)`) hold callees'
            // inclusive costs: not a function's own.
            if name.starts_with("=>") {
                return None;
            }
            let function = name.rsplit_once(" [").map_or(name, |(f, _)| f);
            let function = function.split_once(':').map_or(function, |(_, f)| f);
            functions
                .iter()
                .any(|wanted| function.contains(wanted))
                .then_some(cost)
        })
        .sum()
}

impl Drop for Callgrind {
    fn drop(&mut self) {
        interrupt(&self.child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("BENCH_KEEP_CALLGRIND").is_some() {
            // Kept for `callgrind_annotate` (the scratch directory must be kept too).
            return;
        }
        for i in 0..=self.dumps + 1 {
            let _ = std::fs::remove_file(format!("{}.{i}", self.out.display()));
        }
        let _ = std::fs::remove_file(&self.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_self_costs_of_named_functions_are_summed() {
        let listing = "\
--------------------------------------------------------------------------------
752,240,125 (100.0%)  PROGRAM TOTALS
--------------------------------------------------------------------------------
Ir                   file:function
--------------------------------------------------------------------------------
93,981,000 (12.49%)  /root/.cargo/registry/src/sha2-0.10.9/src/sha256/soft.rs:sha2::sha256::compress256 [/work/bin/gateway]
82,189,525 (10.93%)  ./string/../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S:__memcpy_avx_unaligned_erms [/usr/lib/x86_64-linux-gnu/libc.so.6]
55,689,000 ( 7.40%)  /rustc/5980/library/core/src/intrinsics/mod.rs:sha2::sha256::compress256
     3,000 ( 0.00%)  => /root/.cargo/registry/src/sha2-0.10.9/src/sha256.rs:sha2::sha256::compress256 (3,000x)
 9,762,000 ( 1.30%)  /root/.cargo/registry/src/http-1.5.0/src/header/map.rs:http::header::map::HeaderMap<T>::try_insert2 [/work/bin/gateway]
";
        assert_eq!(
            parse_annotated_self_cost(listing, &["sha2::sha256::compress256"]),
            93_981_000 + 55_689_000
        );
        assert_eq!(
            parse_annotated_self_cost(listing, &["compress256", "HeaderMap"]),
            93_981_000 + 55_689_000 + 9_762_000
        );
        // A file name alone does not match: only the function part is compared.
        assert_eq!(parse_annotated_self_cost(listing, &["soft.rs"]), 0);
    }
}
