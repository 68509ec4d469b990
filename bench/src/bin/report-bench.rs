//! A year-long usage report over millions of events (issue 19, item 6): generates N usage
//! events over 2025 into a fresh outbox with the outbox's own writer, then times the real
//! `gateway usage report` on it — wall time, CPU, peak RSS of the child (wait4), output size,
//! rows — and writes `bench/results/<date>-usage-report-<N>.md` and `.json`.
//!
//! Whether memory stays bounded: the day/CSV case and a control case with a fixed number of
//! rows (per day and tier) are also run over N/10 events. The child's RSS and bytes read are
//! sampled while it runs, so the scan of the outbox and what follows it (the report's rows,
//! rendering, writing) can be told apart.
//!
//! Usage: report-bench [--events N] [--small-events N] [--dir DIR] [--gateway PATH]
//!                     [--out DIR] [--keep] [--no-small] [--quiet-wait SECONDS]
//!
//! `--dir`: where the outbox directories are made (default /tmp or /work, whichever has room;
//! 10 M events take about 6 GB). `--keep`: leave them (and the gateway.toml) there.
//! `--quiet-wait`: before each report, wait up to this long (default 600 s) for the machine to
//! be idle; what other processes used during each report is recorded either way.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use gateway::metering::outbox::{
    FsyncPolicy, Keep, Outbox, OutboxRecord, OutboxSettings, RecordBody,
};
use gateway::metering::{EventEnd, EventStart, Outcome, UsageEvent};
use gateway_bench::arg;
use gateway_bench::harness::CpuTicks;
use serde_json::{json, Value};

/// 2025-01-01T00:00:00Z.
const YEAR_START: u64 = 1_735_689_600;
const DAYS: u64 = 365;
const HOURS: u64 = DAYS * 24;
const TENANTS: u64 = 1_000;
const PRINCIPALS_PER_TENANT: u64 = 25;
const DEPARTMENTS: [&str; 6] = [
    "engineering",
    "sales",
    "support",
    "finance",
    "marketing",
    "research",
];
const REGIONS: [&str; 3] = ["eu-central", "us-east", "in-west"];
/// Action, route, method, relative weight.
const ACTIONS: [(&str, &str, &str, u64); 5] = [
    ("projects:read", "/projects/{id}", "GET", 50),
    ("projects:list", "/projects", "GET", 25),
    ("projects:update", "/projects/{id}", "PUT", 10),
    ("documents:create", "/documents", "POST", 10),
    ("documents:export", "/documents/{id}/export", "POST", 5),
];
/// Begins left without an end before the one restart in the middle of the year (interrupted
/// requests as a crash leaves them).
const DANGLING: u64 = 50;

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A set of small integers.
struct Bits(Vec<u64>);

impl Bits {
    fn new(size: u64) -> Self {
        Bits(vec![0; size.div_ceil(64) as usize])
    }

    fn set(&mut self, i: u64) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }

    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// What the generator wrote, to check the reports against.
struct Expected {
    events: u64,
    rejected: u64,
    interrupted: u64,
    /// Distinct (day, tenant, action), (hour, tenant, department), (day, tenant), (day, tier):
    /// the rows each report must have.
    day_tenant_action: Bits,
    hour_tenant_department: Bits,
    day_tenant: Bits,
    day_tier: Bits,
}

struct Generated {
    events: u64,
    records: u64,
    bytes: u64,
    segments: usize,
    seconds: f64,
    expected: Expected,
}

/// CPU time of this thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Decoding outbox lines side by side, in this process: serde's derive for `OutboxRecord`
/// (its flattened, internally tagged body) against `OutboxRecord::from_line`, which the
/// reports and exporters use, over the same lines held in memory; rounds alternate and the
/// least CPU of each is kept.
fn decode_side_by_side(outbox: &Path, max_lines: usize) -> Value {
    let segments = gateway::metering::outbox::segments(outbox).expect("outbox segments");
    let mut lines = Vec::new();
    'read: for (_, path) in segments {
        for line in BufReader::new(File::open(&path).expect("segment")).lines() {
            lines.push(line.expect("line"));
            if lines.len() >= max_lines {
                break 'read;
            }
        }
    }
    let mut derive = Duration::MAX;
    let mut in_order = Duration::MAX;
    for _ in 0..3 {
        let started = thread_cpu();
        for line in &lines {
            let record: OutboxRecord = serde_json::from_str(line).expect("derive");
            std::hint::black_box(record);
        }
        derive = derive.min(thread_cpu() - started);
        let started = thread_cpu();
        for line in &lines {
            let record = OutboxRecord::from_line(line).expect("from_line");
            std::hint::black_box(record);
        }
        in_order = in_order.min(thread_cpu() - started);
    }
    let per_line = |d: Duration| d.as_secs_f64() * 1e9 / lines.len().max(1) as f64;
    json!({
        "lines": lines.len(),
        "derive_ns_per_line": per_line(derive),
        "from_line_ns_per_line": per_line(in_order),
    })
}

fn open_outbox(dir: &Path) -> Arc<Outbox> {
    let (outbox, _progress) = Outbox::open(OutboxSettings {
        dir: dir.to_path_buf(),
        fsync: FsyncPolicy::Interval,
        fsync_interval: Duration::from_millis(100),
        segment_bytes: 64 * 1024 * 1024,
        flush_interval: Duration::from_millis(10),
        buffer_bytes: 16 * 1024 * 1024,
    })
    .expect("outbox");
    outbox
}

/// Cumulative weights, normalised to end at 1.
fn cdf(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut sum = 0.0;
    let mut out: Vec<f64> = weights
        .into_iter()
        .map(|w| {
            sum += w;
            sum
        })
        .collect();
    for c in &mut out {
        *c /= sum;
    }
    out
}

/// The index `u` (in [0, 1)) falls in.
fn pick(cdf: &[f64], u: f64) -> usize {
    cdf.partition_point(|c| *c <= u).min(cdf.len() - 1)
}

/// A UUIDv7-shaped id: the time in milliseconds, then the counter (unique) and noise.
fn uuid7(ms: u64, counter: u64, noise: u64) -> String {
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        ms >> 16,
        ms & 0xffff,
        noise & 0xfff,
        0x8000 | ((noise >> 12) & 0x3fff),
        counter & 0xffff_ffff_ffff
    )
}

fn rfc3339(micros: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(micros)).to_string()
}

/// Writes `n` usage events over 2025 into a new outbox in `dir`.
fn generate(dir: &Path, n: u64, seed: u64) -> Generated {
    let started = Instant::now();
    let mut rng = Rng(seed);
    // Weekdays, quieter weekends (2025-01-01 was a Wednesday), 50 % growth over the year.
    let day_weights: Vec<f64> = (0..DAYS)
        .map(|d| {
            let weekend = (d + 2) % 7 >= 5;
            (if weekend { 0.45 } else { 1.0 }) * (1.0 + 0.5 * d as f64 / DAYS as f64)
        })
        .collect();
    let day_total: f64 = day_weights.iter().sum();
    // A business day around 13:00 UTC over a floor of night traffic.
    let hour_cdf = cdf((0..24).map(|h: i32| 0.25 + (-f64::from((h - 13) * (h - 13)) / 32.0).exp()));
    // Tenants by size: a long tail.
    let tenant_cdf = cdf((0..TENANTS).map(|i| 1.0 / ((i + 1) as f64).powf(0.9)));
    let action_cdf = cdf(ACTIONS.iter().map(|a| a.3 as f64));

    let mut expected = Expected {
        events: 0,
        rejected: 0,
        interrupted: 0,
        day_tenant_action: Bits::new(DAYS * TENANTS * ACTIONS.len() as u64),
        hour_tenant_department: Bits::new(HOURS * TENANTS * DEPARTMENTS.len() as u64),
        day_tenant: Bits::new(DAYS * TENANTS),
        day_tier: Bits::new(DAYS * 2),
    };
    let mut outbox = open_outbox(dir);
    let mut records = 1u64; // the boot record
    let mut in_flight: VecDeque<EventEnd> = VecDeque::new();
    let reboot_at = if n > 2 * DANGLING { n / 2 } else { u64::MAX };
    let mut produced = 0u64;
    let mut cumulative = 0.0;
    let write = |outbox: &Outbox, body: &RecordBody, records: &mut u64| {
        assert!(outbox.record(body, Keep::Always), "record dropped");
        *records += 1;
    };
    for (day, weight) in (0..DAYS).zip(&day_weights) {
        cumulative += weight;
        let target = if day + 1 == DAYS {
            n
        } else {
            ((n as f64) * cumulative / day_total).round() as u64
        };
        let today = target.saturating_sub(produced);
        for j in 0..today {
            // Stratified over the day, so times increase.
            let u = (j as f64 + rng.unit()) / today as f64;
            let hour = pick(&hour_cdf, u);
            let below = if hour == 0 { 0.0 } else { hour_cdf[hour - 1] };
            let within = ((u - below) / (hour_cdf[hour] - below)).clamp(0.0, 0.999_999);
            let second_of_day = (hour as f64 + within) * 3600.0;
            let micros = (YEAR_START + day * 86_400) * 1_000_000 + (second_of_day * 1e6) as u64;
            let hour_of_year = day * 24 + hour as u64;

            let tenant = pick(&tenant_cdf, rng.unit()) as u64;
            let k = rng.below(PRINCIPALS_PER_TENANT);
            let departments = 1 + tenant % DEPARTMENTS.len() as u64;
            let department = ((tenant + k % departments) % DEPARTMENTS.len() as u64) as usize;
            let action = pick(&action_cdf, rng.unit());
            let (action_name, route, method, _) = ACTIONS[action];
            // Every fifth tenant is on pro; every seventh upgrades on 1 July.
            let pro = tenant.is_multiple_of(5) || (tenant.is_multiple_of(7) && day >= 181);
            let tier = if pro { "pro" } else { "free" };
            let id = uuid7(micros / 1000, produced, rng.next());
            let start = EventStart {
                id: id.clone().into(),
                time: rfc3339(micros).into(),
                request_id: format!("{:016x}{:08x}", rng.next(), produced & 0xffff_ffff).into(),
                tenant: Some(format!("tenant-{:04}", tenant + 1).into()),
                principal: Some(format!("user-{}-{k}", tenant + 1).into()),
                action: Some(action_name.into()),
                route: Some(route.into()),
                method: method.into(),
                region: Some(REGIONS[(tenant % 3) as usize].into()),
                meters: if action_name == "documents:export" {
                    vec!["document-exports".into()]
                } else {
                    vec![]
                },
                tier: Some(tier.into()),
                attributes: [(
                    "department".to_string(),
                    DEPARTMENTS[department].to_string(),
                )]
                .into_iter()
                .collect(),
            };
            let request_bytes = if method == "GET" {
                0
            } else {
                200 + rng.below(20_000)
            };
            let response_bytes = 200 + rng.below(60_000);
            let latency = Some(500 + rng.below(80_000));

            let dangling = produced >= reboot_at && produced < reboot_at + DANGLING;
            let roll = rng.below(10_000);
            let outcome = if dangling {
                write(
                    &outbox,
                    &RecordBody::Begin(Box::new(start.clone())),
                    &mut records,
                );
                Outcome::Interrupted
            } else if roll < 320 {
                // Refused (3 %) or interrupted (0.2 %), recorded in one go.
                let rejected = roll < 300;
                let (status, reason) = match (rejected, roll % 3) {
                    (true, 0) => (429, Some("rate-limited".to_string())),
                    (true, _) => (403, Some("forbidden".to_string())),
                    (false, _) => (0, None),
                };
                let outcome = if rejected {
                    Outcome::Rejected
                } else {
                    Outcome::Interrupted
                };
                let mut event = UsageEvent::from_parts(start.clone(), None);
                event.status = status;
                event.request_bytes = if rejected { 0 } else { request_bytes };
                event.outcome = outcome;
                event.reason = reason;
                write(
                    &outbox,
                    &RecordBody::Complete(Box::new(event)),
                    &mut records,
                );
                outcome
            } else {
                let status = match roll % 50 {
                    0 => 500,
                    1..=3 => 404,
                    _ => 200,
                };
                let end = EventEnd {
                    id: start.id.to_string(),
                    status,
                    request_bytes,
                    response_bytes,
                    upstream_latency_us: latency,
                    region: start.region.as_deref().map(str::to_string),
                    reason: None,
                };
                if roll < 7_000 {
                    // Begin before forwarding, end after the response, a few requests later.
                    write(&outbox, &RecordBody::Begin(Box::new(start)), &mut records);
                    in_flight.push_back(end);
                    let depth = 1 + rng.below(24) as usize;
                    while in_flight.len() > depth {
                        let end = in_flight.pop_front().expect("in flight");
                        write(&outbox, &RecordBody::End(end), &mut records);
                    }
                } else {
                    // Recorded in one go after the response (record_before_forward = false,
                    // or a decision-only front door).
                    let event = UsageEvent::from_parts(start, Some(end));
                    write(
                        &outbox,
                        &RecordBody::Complete(Box::new(event)),
                        &mut records,
                    );
                }
                Outcome::Completed
            };
            expected.events += 1;
            expected.rejected += u64::from(outcome == Outcome::Rejected);
            expected.interrupted += u64::from(outcome == Outcome::Interrupted);
            let actions = ACTIONS.len() as u64;
            expected
                .day_tenant_action
                .set((day * TENANTS + tenant) * actions + action as u64);
            expected.hour_tenant_department.set(
                (hour_of_year * TENANTS + tenant) * DEPARTMENTS.len() as u64 + department as u64,
            );
            expected.day_tenant.set(day * TENANTS + tenant);
            expected.day_tier.set(day * 2 + u64::from(pro));

            produced += 1;
            if produced == reboot_at + DANGLING {
                // The process stops with DANGLING requests in flight; the next one boots.
                while let Some(end) = in_flight.pop_front() {
                    write(&outbox, &RecordBody::End(end), &mut records);
                }
                outbox.flush().expect("flush");
                drop(outbox);
                outbox = open_outbox(dir);
                records += 1;
            }
            if produced.is_multiple_of(1 << 20) {
                // What the interval policy does in the gateway: write and fsync now and then.
                outbox.flush().expect("flush");
                eprint!(
                    "\r  {produced} / {n} events written ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    while let Some(end) = in_flight.pop_front() {
        write(&outbox, &RecordBody::End(end), &mut records);
    }
    outbox.flush().expect("flush");
    drop(outbox);
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("\r  {produced} events written in {seconds:.1} s              ");
    let (bytes, segments) = dir_size(dir);
    Generated {
        events: produced,
        records,
        bytes,
        segments,
        seconds,
        expected,
    }
}

/// Bytes and segment files in the outbox directory.
fn dir_size(dir: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut segments = 0;
    for entry in std::fs::read_dir(dir).expect("outbox dir").flatten() {
        if let Ok(meta) = entry.metadata() {
            bytes += meta.len();
            segments += usize::from(entry.file_name().to_string_lossy().starts_with("segment-"));
        }
    }
    (bytes, segments)
}

fn write_config(dir: &Path, outbox: &Path) -> PathBuf {
    let path = dir.join("gateway.toml");
    let text = format!(
        r#"# report-bench: a year of usage in the outbox, priced.
[server]
listen = ["127.0.0.1:18080"]

[[upstream.pool]]
name = "app"
peers = ["127.0.0.1:9"]

[metering]
dir = "{outbox}"

[[metering.meter]]
name = "document-exports"
action = "documents:export"

[metering.pricing]
currency = "EUR"
chargeback = ["department"]

[[metering.pricing.item]]
name = "requests"
unit_price = "0.0004"
tiers = {{ pro = "0.0002" }}

[[metering.pricing.item]]
name = "document-exports"
meter = "document-exports"
unit_price = "0.05"

[[metering.pricing.item]]
name = "egress"
unit = "response-gb"
unit_price = "0.09"
"#,
        outbox = outbox.display()
    );
    std::fs::write(&path, text).expect("gateway.toml");
    path
}

/// One report run.
#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    bucket: &'static str,
    by: &'static str,
    format: &'static str,
}

const CASES: [Case; 6] = [
    Case {
        name: "day-csv-tenant-action",
        bucket: "day",
        by: "tenant,action",
        format: "csv",
    },
    // More rows than one worksheet holds (1,048,575): continued on `Usage 2`.
    Case {
        name: "day-xlsx-tenant-action",
        bucket: "day",
        by: "tenant,action",
        format: "xlsx",
    },
    Case {
        name: "hour-csv-tenant-department",
        bucket: "hour",
        by: "tenant,attribute:department",
        format: "csv",
    },
    Case {
        name: "day-xlsx-tenant",
        bucket: "day",
        by: "tenant",
        format: "xlsx",
    },
    Case {
        name: "day-pdf-tenant",
        bucket: "day",
        by: "tenant",
        format: "pdf",
    },
    Case {
        name: "day-csv-tier",
        bucket: "day",
        by: "tier",
        format: "csv",
    },
];

/// The rows a case must have, from what was generated.
fn expected_rows(case: &Case, expected: &Expected) -> u64 {
    match (case.bucket, case.by) {
        ("day", "tenant,action") => expected.day_tenant_action.count(),
        ("hour", "tenant,attribute:department") => expected.hour_tenant_department.count(),
        ("day", "tenant") => expected.day_tenant.count(),
        ("day", "tier") => expected.day_tier.count(),
        _ => 0,
    }
}

struct Sample {
    seconds: f64,
    rss_kib: u64,
    /// Bytes read by read(2) (`rchar`), from the page cache or not.
    read_bytes: u64,
    /// Bytes the child made the kernel fetch from the disk (`read_bytes`).
    disk_bytes: u64,
}

/// Waits, up to `max`, until the machine is quiet (under 15 % of a core busy over 2 s): the
/// machine may be shared (another build). Returns how long it waited.
fn wait_quiet(max: Duration) -> f64 {
    let started = Instant::now();
    let mut said = false;
    loop {
        let before = CpuTicks::now().busy_seconds();
        std::thread::sleep(Duration::from_secs(2));
        let busy = (CpuTicks::now().busy_seconds() - before) / 2.0;
        if busy < 0.15 || started.elapsed() >= max {
            if said {
                eprintln!(
                    "    waited {:.0} s ({:.2} cores busy now)",
                    started.elapsed().as_secs_f64(),
                    busy
                );
            }
            return started.elapsed().as_secs_f64();
        }
        if !said {
            eprintln!("    waiting for a quiet machine ({busy:.2} cores busy)");
            said = true;
        }
    }
}

fn proc_field(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok().and_then(|text| {
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    })
}

/// Runs one report with the real binary; measures it with wait4 and /proc sampling.
fn run_case(
    gateway: &Path,
    config: &Path,
    case: &Case,
    work: &Path,
    generated: &Generated,
    label: &str,
    quiet_wait: Duration,
) -> Value {
    let output = work.join(format!("{}-{label}.{}", case.name, case.format));
    let stderr_path = work.join(format!("{}-{label}.stderr", case.name));
    let args = [
        "usage",
        "report",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--from",
        "2025-01-01",
        "--to",
        "2026-01-01",
        "--bucket",
        case.bucket,
        "--by",
        case.by,
        "--format",
        case.format,
        "--output",
        output.to_str().expect("utf-8 path"),
    ];
    eprintln!("  {label}: {} ({} events)", case.name, generated.events);
    let quiet_waited = wait_quiet(quiet_wait);
    let busy_before = CpuTicks::now().busy_seconds();
    let started = Instant::now();
    let child = Command::new(gateway)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("gateway");
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let status = format!("/proc/{pid}/status");
            let io = format!("/proc/{pid}/io");
            while !done.load(Ordering::Acquire) {
                if let (Some(rss_kib), Some(read_bytes), Some(disk_bytes)) = (
                    proc_field(&status, "VmRSS:"),
                    proc_field(&io, "rchar:"),
                    proc_field(&io, "read_bytes:"),
                ) {
                    samples.push(Sample {
                        seconds: started.elapsed().as_secs_f64(),
                        rss_kib,
                        read_bytes,
                        disk_bytes,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        })
    };
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    let machine_busy = CpuTicks::now().busy_seconds() - busy_before;
    done.store(true, Ordering::Release);
    let samples = sampler.join().expect("sampler");
    drop(child);
    assert_eq!(waited, pid as libc::pid_t, "wait4");
    let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        exited_ok,
        "{} failed (status {status}): {stderr}",
        case.name
    );
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let user = seconds(usage.ru_utime);
    let sys = seconds(usage.ru_stime);
    let peak_mib = usage.ru_maxrss as f64 / 1024.0;
    let output_bytes = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    // CPU the rest of the machine used meanwhile (another build on a shared machine).
    let others_cpu = (machine_busy - user - sys).max(0.0);
    let disk_read = samples.iter().map(|s| s.disk_bytes).max().unwrap_or(0);

    // The scan is over once the child has read the whole outbox.
    let scan_end = samples
        .iter()
        .find(|s| s.read_bytes >= generated.bytes)
        .or(samples.last());
    let scan_seconds = scan_end.map(|s| s.seconds);
    let rss_at_scan_end_mib = scan_end.map(|s| s.rss_kib as f64 / 1024.0);
    // RSS at a quarter, half and three quarters of the scan.
    let during_scan: Vec<Value> = [0.25, 0.5, 0.75]
        .iter()
        .filter_map(|f| {
            let wanted = (generated.bytes as f64 * f) as u64;
            samples
                .iter()
                .find(|s| s.read_bytes >= wanted)
                .map(|s| json!({"fraction_read": f, "seconds": s.seconds, "rss_mib": s.rss_kib as f64 / 1024.0}))
        })
        .collect();

    let model_rows = expected_rows(case, &generated.expected);
    let mut check = json!(null);
    let rows = if case.format == "csv" {
        let (rows, sums) = csv_rows(&output);
        let ok = rows == model_rows
            && sums
                == [
                    generated.expected.events,
                    generated.expected.rejected,
                    generated.expected.interrupted,
                ];
        check = json!({
            "rows_expected": model_rows,
            "requests_rejected_interrupted": sums,
            "expected": [generated.expected.events, generated.expected.rejected, generated.expected.interrupted],
            "ok": ok,
        });
        assert!(ok, "{}: {check}", case.name);
        rows
    } else {
        model_rows
    };
    if !stderr.trim().is_empty() {
        eprintln!("    stderr: {}", stderr.trim());
    }
    eprintln!(
        "    {wall:.1} s wall, {:.1} s CPU, peak RSS {peak_mib:.0} MiB, {rows} rows, {:.1} MiB out; \
         others used {others_cpu:.1} s CPU meanwhile",
        user + sys,
        output_bytes as f64 / 1048576.0
    );
    let _ = std::fs::remove_file(&stderr_path);
    let _ = std::fs::remove_file(&output);
    json!({
        "case": case.name,
        "events": generated.events,
        "bucket": case.bucket,
        "by": case.by,
        "format": case.format,
        "wall_seconds": wall,
        "user_seconds": user,
        "sys_seconds": sys,
        "peak_rss_mib": peak_mib,
        "output_bytes": output_bytes,
        "rows": rows,
        "rows_from": if case.format == "csv" { "counted in the output (and equal to the generator's)" } else { "the generator's distinct keys (as counted in the CSV cases)" },
        "events_per_second": generated.events as f64 / wall,
        "others_cpu_seconds": others_cpu,
        "waited_for_quiet_seconds": quiet_waited,
        "disk_read_bytes": disk_read,
        "scan_seconds": scan_seconds,
        "rss_at_scan_end_mib": rss_at_scan_end_mib,
        "rss_during_scan": during_scan,
        "check": check,
        "command": format!("{} {}", gateway.display(), args.join(" ")),
    })
}

/// Data rows of a CSV report and the sums of its requests, rejected and interrupted columns.
fn csv_rows(path: &Path) -> (u64, [u64; 3]) {
    let mut lines = BufReader::new(File::open(path).expect("report")).lines();
    let header = lines.next().expect("header").expect("header");
    let columns: Vec<&str> = header.split(',').collect();
    let at = |name: &str| columns.iter().position(|c| *c == name).expect(name);
    let wanted = [at("requests"), at("rejected"), at("interrupted")];
    let mut rows = 0;
    let mut sums = [0u64; 3];
    for line in lines {
        let line = line.expect("line");
        // Keys here have no commas or quotes.
        let cells: Vec<&str> = line.split(',').collect();
        for (sum, i) in sums.iter_mut().zip(wanted) {
            *sum += cells[i].parse::<u64>().expect("count");
        }
        rows += 1;
    }
    (rows, sums)
}

/// Shows a report's progress the way an operator sees it: under a pseudo-terminal (`script`).
fn progress_on_terminal(gateway: &Path, config: &Path, work: &Path) -> Value {
    let output = work.join("progress.csv");
    let command = format!(
        "{} usage report --config {} --from 2025-01-01 --to 2026-01-01 --bucket day --by tier --output {}",
        gateway.display(),
        config.display(),
        output.display()
    );
    let result = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output();
    let _ = std::fs::remove_file(&output);
    match result {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let updates: Vec<&str> = text
                .split(['\r', '\n'])
                .map(str::trim)
                .filter(|l| l.contains("usage events read"))
                .collect();
            json!({"updates": updates.len(), "first": updates.first(), "last": updates.last()})
        }
        Ok(out) => json!({"error": format!("script exited with {}", out.status)}),
        Err(e) => json!({"error": format!("script: {e}")}),
    }
}

fn free_bytes(path: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs is plain data, filled by the call for a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return 0;
    }
    stat.f_bavail as u64 * stat.f_frsize as u64
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let memory = proc_field("/proc/meminfo", "MemTotal:").unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
        "memory_gib": memory as f64 / 1024.0 / 1024.0,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn git(workspace: &Path, args: &[&str]) -> String {
    Command::new("git")
        .arg("-C")
        .arg(workspace)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `10m`, `1m`, `250k`.
fn count_label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}m", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    if let Some(path) = arg("--render") {
        // Renders the .md again from a results .json.
        let path = PathBuf::from(path);
        let text = std::fs::read_to_string(&path).expect("results json");
        let report: Value = serde_json::from_str(&text).expect("results json");
        let md_path = path.with_extension("md");
        std::fs::write(&md_path, render_markdown(&report)).expect("md");
        eprintln!("wrote {}", md_path.display());
        return;
    }
    if let Some(outbox) = arg("--decode") {
        println!("{}", decode_side_by_side(Path::new(&outbox), 300_000));
        return;
    }
    let events: u64 = arg("--events")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let small_events: u64 = arg("--small-events")
        .and_then(|v| v.parse().ok())
        .unwrap_or(events / 10);
    let with_small = !std::env::args().any(|a| a == "--no-small") && small_events > 0;
    let keep = std::env::args().any(|a| a == "--keep");
    let quiet_wait = Duration::from_secs(
        arg("--quiet-wait")
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    );
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    // Default: the `gateway` built next to this binary, else target/release/gateway.
    let gateway = arg("--gateway").map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("gateway")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| workspace.join("target/release/gateway"))
    });
    let gateway = std::fs::canonicalize(&gateway)
        .unwrap_or_else(|e| panic!("{}: {e} (build it, or pass --gateway)", gateway.display()));
    let out_dir = arg("--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("bench/results"));
    // What is measured: the tree now, and when the binary was built.
    let commit = git(&workspace, &["rev-parse", "--short", "HEAD"]);
    let commit_time: i64 = git(&workspace, &["log", "-1", "--format=%ct"])
        .parse()
        .unwrap_or(0);
    let dirty = !git(
        &workspace,
        &["status", "--porcelain", "--untracked-files=no"],
    )
    .is_empty();
    let built = std::fs::metadata(&gateway)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if (built as i64) < commit_time {
        eprintln!(
            "warning: {} is older than HEAD ({commit}): rebuild it",
            gateway.display()
        );
    }

    // About 520 bytes of outbox per event; both outboxes never exist at once.
    let needed = events * 600 + (1 << 30);
    let candidates: Vec<PathBuf> = match arg("--dir") {
        Some(d) => vec![PathBuf::from(d)],
        None => vec![std::env::temp_dir(), PathBuf::from("/work")],
    };
    let parent = candidates
        .iter()
        .find(|d| free_bytes(d) >= needed)
        .unwrap_or_else(|| {
            panic!(
                "no room for ~{} GB of outbox in {candidates:?} (pass --dir)",
                needed >> 30
            )
        })
        .clone();
    let work = tempfile::Builder::new()
        .prefix("report-bench-")
        .tempdir_in(&parent)
        .expect("work dir");
    eprintln!(
        "report-bench: {} events into {} ({} GB free), gateway {}",
        thousands(events),
        work.path().display(),
        free_bytes(&parent) >> 30,
        gateway.display()
    );

    let mut runs = Vec::new();
    let mut outboxes = Vec::new();
    let mut progress = json!(null);
    let mut decode = json!(null);
    let sizes: Vec<(u64, &str, Vec<Case>)> = {
        let mut sizes = vec![(events, "full", CASES.to_vec())];
        if with_small {
            sizes.push((small_events, "small", vec![CASES[0], CASES[5]]));
        }
        sizes
    };
    for (n, label, cases) in sizes {
        let outbox = work.path().join(format!("outbox-{label}"));
        eprintln!("generating {} events ({label})", thousands(n));
        let generated = generate(&outbox, n, 0x5eed_0000 + n);
        eprintln!(
            "  {} records, {:.2} GB in {} segments, {:.0} events/s written",
            thousands(generated.records),
            generated.bytes as f64 / 1e9,
            generated.segments,
            generated.events as f64 / generated.seconds
        );
        let config = write_config(work.path(), &outbox);
        for case in &cases {
            // On a shared machine another process may start mid-run: a run during which the
            // rest of the machine used over 10 % of its wall time in CPU is repeated (at most
            // three runs; the least disturbed one is kept).
            let mut best: Option<Value> = None;
            for attempt in 1..=3 {
                let mut run = run_case(
                    &gateway,
                    &config,
                    case,
                    work.path(),
                    &generated,
                    label,
                    quiet_wait,
                );
                run["attempt"] = json!(attempt);
                let others = |r: &Value| r["others_cpu_seconds"].as_f64().unwrap_or(0.0);
                let quiet = others(&run) <= 0.1 * run["wall_seconds"].as_f64().unwrap_or(0.0);
                if best.as_ref().is_none_or(|b| others(&run) < others(b)) {
                    best = Some(run);
                }
                if quiet {
                    break;
                }
                if attempt < 3 {
                    eprintln!("    disturbed by other processes: again");
                }
            }
            runs.extend(best);
        }
        if label == "small" || !with_small {
            progress = progress_on_terminal(&gateway, &config, work.path());
        }
        // In a process of its own: the lines it holds would stay in this one's memory, and a
        // later child's peak RSS from `wait4` counts what it inherited before `exec`.
        if label == "full" {
            let out = Command::new(std::env::current_exe().expect("this binary"))
                .arg("--decode")
                .arg(&outbox)
                .output()
                .expect("report-bench --decode");
            decode = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!("--decode: {e}: {}", String::from_utf8_lossy(&out.stderr))
            });
            eprintln!("  decode: {decode}");
        }
        outboxes.push(json!({
            "label": label,
            "events": generated.events,
            "records": generated.records,
            "bytes": generated.bytes,
            "segments": generated.segments,
            "generation_seconds": generated.seconds,
            "generation_events_per_second": generated.events as f64 / generated.seconds,
            "rejected": generated.expected.rejected,
            "interrupted": generated.expected.interrupted,
        }));
        if !keep {
            std::fs::remove_dir_all(&outbox).expect("remove outbox");
        }
    }
    if keep {
        eprintln!("kept {}", work.keep().display());
    }

    let date = jiff::Zoned::now().date().to_string();
    let stem = format!("{date}-usage-report-{}", count_label(events));
    let report = json!({
        "date": date,
        "events": events,
        "small_events": if with_small { small_events } else { 0 },
        "commit": commit,
        "uncommitted_changes": dirty,
        "gateway_built": humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(built)).to_string(),
        "gateway_older_than_commit": (built as i64) < commit_time,
        "machine": machine(),
        "gateway": gateway.display().to_string(),
        "outbox_parent": parent.display().to_string(),
        "outboxes": outboxes,
        "runs": runs,
        "progress_on_terminal": progress,
        "decode": decode,
    });
    let markdown = render_markdown(&report);
    std::fs::create_dir_all(&out_dir).expect("results dir");
    let json_path = out_dir.join(format!("{stem}.json"));
    let md_path = out_dir.join(format!("{stem}.md"));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report).expect("json") + "\n",
    )
    .expect("json");
    File::create(&md_path)
        .and_then(|mut f| f.write_all(markdown.as_bytes()))
        .expect("md");
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
}

fn render_markdown(report: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let events = u(&report["events"]);
    let small_events = u(&report["small_events"]);
    let with_small = small_events > 0;
    let machine = &report["machine"];
    let mut md = format!(
        "# Usage report over {} events (issue 19, item 6) ({})\n\n",
        thousands(events),
        report["date"].as_str().unwrap_or("")
    );
    md +=
        &format!(
        "`bench/src/bin/report-bench.rs` on {} (commit {}{}{}): {} × {}, {:.0} GiB RAM, Linux {}. \
         The real `gateway usage report` binary ({}, built {}) over an outbox written with the \
         outbox's own writer; wall time, CPU and peak RSS of the child from `wait4`, RSS and \
         bytes read sampled from `/proc` every 50 ms. The outbox had just been written; how \
         much of it each report read from the disk rather than the page cache is in the \
         table.\n\n",
        report["date"].as_str().unwrap_or(""),
        report["commit"].as_str().unwrap_or("?"),
        if report["uncommitted_changes"].as_bool().unwrap_or(false) {
            " + uncommitted changes"
        } else {
            ""
        },
        if report["gateway_older_than_commit"].as_bool().unwrap_or(false) {
            ", binary built before it"
        } else {
            ""
        },
        u(&machine["nproc"]),
        machine["cpu"].as_str().unwrap_or("?"),
        f(&machine["memory_gib"]),
        machine["kernel"].as_str().unwrap_or("?"),
        report["gateway"].as_str().unwrap_or("?"),
        report["gateway_built"].as_str().unwrap_or("?"),
    );
    md += "## The outboxes\n\n| events | records | on disk | segments (64 MiB) | rejected | interrupted | written in | events/s written |\n|---|---|---|---|---|---|---|---|\n";
    for o in report["outboxes"].as_array().into_iter().flatten() {
        md += &format!(
            "| {} | {} | {:.2} GB | {} | {} | {} | {:.1} s | {} |\n",
            thousands(u(&o["events"])),
            thousands(u(&o["records"])),
            f(&o["bytes"]) / 1e9,
            u(&o["segments"]),
            thousands(u(&o["rejected"])),
            thousands(u(&o["interrupted"])),
            f(&o["generation_seconds"]),
            thousands(f(&o["generation_events_per_second"]) as u64),
        );
    }
    md += "\nEvents: 2025-01-01 to 2026-01-01, weekday/weekend and hour-of-day shape, 50 % growth \
           over the year; 1,000 tenants (long tail), free/pro tiers (some upgrade on 1 July), \
           5 actions, a `department` attribute (1–6 per tenant, 25 principals each); 70 % \
           begin + end pairs (a few requests apart), the rest complete records; 3 % refused, \
           0.2 % interrupted, plus 50 begins left without an end by a restart mid-year. \
           Priced with 3 items (requests with a pro price, a custom meter, egress per GB), \
           chargeback `department`.\n\n";
    md += "## The reports (whole year, all tenants)\n\n\
           | events | report | rows | output | wall s | user + sys s | peak RSS MiB | scan s | RSS after scan MiB | events/s | read from disk | others' CPU s |\n\
           |---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in report["runs"].as_array().into_iter().flatten() {
        let size = f(&r["output_bytes"]);
        let output = if size >= 1048576.0 {
            format!("{:.1} MiB", size / 1048576.0)
        } else {
            format!("{:.0} KiB", size / 1024.0)
        };
        md += &format!(
            "| {} | `--bucket {} --by {} --format {}` | {} | {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} | {} | {:.2} GB | {:.1} |\n",
            thousands(u(&r["events"])),
            r["bucket"].as_str().unwrap_or(""),
            r["by"].as_str().unwrap_or(""),
            r["format"].as_str().unwrap_or(""),
            thousands(u(&r["rows"])),
            output,
            f(&r["wall_seconds"]),
            f(&r["user_seconds"]) + f(&r["sys_seconds"]),
            f(&r["peak_rss_mib"]),
            f(&r["scan_seconds"]),
            f(&r["rss_at_scan_end_mib"]),
            thousands(f(&r["events_per_second"]) as u64),
            f(&r["disk_read_bytes"]) / 1e9,
            f(&r["others_cpu_seconds"]),
        );
    }
    md += "\n\"scan\": until the child had read the whole outbox (`rchar` in `/proc/<pid>/io`); \
           what follows is building the rows, rendering and writing the file. \"others' CPU\": \
           what the rest of the machine used meanwhile (from `/proc/stat`; each report waited \
           for an idle machine first, up to `--quiet-wait`, and a run disturbed by more than \
           10 % of its wall time was repeated, up to three runs, the least disturbed kept). Rows of CSV \
           reports are counted in the output, and their requests/rejected/interrupted sums \
           checked against what was generated; XLSX/PDF rows are the generator's distinct keys.\n\n";

    let decode = &report["decode"];
    if decode.is_object() {
        md += &format!(
            "Decoding one outbox line, side by side in a process of the bench's own over the first {} lines \
             (least thread CPU of 3 alternating rounds): serde's derive for `OutboxRecord` \
             (flattened, internally tagged body) {:.0} ns, `OutboxRecord::from_line` (fields in \
             the writer's order read straight into the body, what reports and exporters use) \
             {:.0} ns: {:.2}×.\n\n",
            thousands(u(&decode["lines"])),
            f(&decode["derive_ns_per_line"]),
            f(&decode["from_line_ns_per_line"]),
            f(&decode["from_line_ns_per_line"]) / f(&decode["derive_ns_per_line"]).max(1.0),
        );
    }
    // Bounded memory: the same reports over N and N/10 events.
    let find = |case: &str, n: u64| {
        report["runs"]
            .as_array()
            .and_then(|runs| {
                runs.iter()
                    .find(|r| r["case"] == case && u(&r["events"]) == n)
            })
            .cloned()
    };
    md += "## Does memory stay bounded?\n\n";
    if with_small {
        let pair = |case: &str| (find(case, events), find(case, small_events));
        if let ((Some(big), Some(small)), (Some(tbig), Some(tsmall))) =
            (pair("day-csv-tenant-action"), pair("day-csv-tier"))
        {
            let ratio =
                |a: &Value, b: &Value| f(&a["peak_rss_mib"]) / f(&b["peak_rss_mib"]).max(1.0);
            let control_bounded = ratio(&tbig, &tsmall) < 1.25;
            md += &format!(
                "- Fixed rows (`--by tier`, {} rows): peak RSS {:.0} MiB over {} events, {:.0} MiB over {} \
                 ({:.2}×): {}.\n",
                u(&tbig["rows"]),
                f(&tbig["peak_rss_mib"]),
                thousands(events),
                f(&tsmall["peak_rss_mib"]),
                thousands(small_events),
                ratio(&tbig, &tsmall),
                if control_bounded {
                    "the scan streams, memory does not grow with events"
                } else {
                    "memory GROWS with events even with a fixed number of rows"
                }
            );
            md += &format!(
                "- `--by tenant,action` per day: peak RSS {:.0} MiB over {} events ({} rows), {:.0} MiB \
                 over {} ({} rows), {:.2}× for {:.2}× the rows: {}.\n",
                f(&big["peak_rss_mib"]),
                thousands(events),
                thousands(u(&big["rows"])),
                f(&small["peak_rss_mib"]),
                thousands(small_events),
                thousands(u(&small["rows"])),
                ratio(&big, &small),
                f(&big["rows"]) / f(&small["rows"]).max(1.0),
                if ratio(&big, &small) < 1.25 {
                    "memory stays bounded as the rows grow (rows beyond the in-memory bound are \
                     spilled to sorted runs and merged as they are written)"
                } else {
                    "memory follows the report's rows, not the events"
                },
            );
        }
    } else {
        md += "- Not measured (`--no-small`).\n";
    }
    let progress = &report["progress_on_terminal"];
    md += &format!(
        "- Progress on a terminal (`script`, {} events, `--by tier`): {} updates on stderr, the last `{}`.\n",
        thousands(if with_small { small_events } else { events }),
        u(&progress["updates"]),
        progress["last"].as_str().unwrap_or("-"),
    );
    md += &format!(
        "\nRerun: `cd /work/main && CARGO_TARGET_DIR=/work/target-main cargo build --release -p gateway --bin gateway -p gateway-bench --bin report-bench && /work/target-main/release/report-bench --events {events}` \
         (figures in `{}-usage-report-{}.json`).\n",
        report["date"].as_str().unwrap_or(""),
        count_label(events)
    );
    md
}
