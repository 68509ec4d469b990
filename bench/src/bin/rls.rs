//! What PostgreSQL Row-Level Security costs an app (deploy/examples/rls): the same query mix on
//! the same data, once as an app writes it by hand (`WHERE tenant_id = $1`, no policies) and
//! once as gateway/examples/rls_upstream.rs runs it (no tenant in the SQL, each statement in a
//! transaction that starts with `set_config('app.tenant_id', $1, true)`, policies forced).
//!
//! Two schemas hold identical copies of the example's tables (deploy/examples/rls/schema.sql),
//! one with the policies removed. Configurations run interleaved, in rounds, with the same
//! operation sequence; the report is Markdown (stdout, and `--out FILE`).
//!
//! Usage: rls [--url URL] [--tenants 100] [--rows 1000] [--ops 20000] [--rounds 5]
//!            [--concurrency 4] [--statements 1] [--out FILE] [--callgrind DIR]
//! The URL defaults to `GATEWAY_TEST_PG_URL`, then the test database on 127.0.0.1.
//!
//! `--callgrind DIR` counts PostgreSQL instructions per operation instead of timing: the server
//! runs under `valgrind --tool=callgrind --callgrind-out-file=DIR/callgrind.out.%p` (the script
//! bench/rls-callgrind sets it up), each backend writes its count to that file when it exits,
//! and a configuration's cost is the difference between backends that ran the warm-up and the
//! measured operations and backends that ran the warm-up alone (see [`count_instructions`]).

use std::time::{Duration, Instant};

use futures_util::future::try_join4;
use gateway_bench::{arg, percentile};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

const SCHEMA_SQL: &str = include_str!("../../../deploy/examples/rls/schema.sql");
const PLAIN_SCHEMA: &str = "rls_bench_plain";
const RLS_SCHEMA: &str = "rls_bench_rls";
const SET_TENANT: &str = "SELECT set_config('app.tenant_id', $1, true)";
const UPDATED_AT: &str =
    r#"to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#;
const LIST_LIMIT: usize = 50;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The hand-written baseline: explicit tenant predicate, one autocommit statement.
    Plain,
    /// The baseline inside a pipelined BEGIN … COMMIT (what a transaction alone costs).
    PlainTx,
    /// The example app: policies, BEGIN; set_config; statement; COMMIT pipelined.
    Rls,
    /// The baseline in BEGIN; set_config; statement; COMMIT, without policies (what naming the
    /// tenant costs before any policy reads it).
    PlainTxSet,
    /// Policies with each of the four awaited in turn (the straightforward client code).
    RlsAwaited,
    /// Policies with a session-level setting and no transaction (set_config(…, false) and the
    /// statement pipelined): a connection keeps the last tenant, the pattern to avoid.
    RlsSession,
}

/// What the example's pattern (`Mode::Rls`) is compared with in both reports, in words.
const COMPARED_WITH: [(Mode, &str); 3] = [
    (Mode::Plain, "the hand-written baseline (autocommit)"),
    (
        Mode::PlainTx,
        "the baseline in BEGIN … COMMIT (an app that already runs each request in a transaction)",
    ),
    (
        Mode::PlainTxSet,
        "the same transaction and set_config without policies (what the policies themselves cost)",
    ),
];

const MODES: [Mode; 6] = [
    Mode::Plain,
    Mode::PlainTx,
    Mode::PlainTxSet,
    Mode::Rls,
    Mode::RlsAwaited,
    Mode::RlsSession,
];

impl Mode {
    /// Its position in [`MODES`] (results are kept in that order).
    fn index(self) -> usize {
        MODES.iter().position(|m| *m == self).unwrap_or(0)
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Plain => "baseline: `WHERE tenant_id = $1`, no policies, autocommit",
            Mode::PlainTx => "baseline in BEGIN … COMMIT, pipelined",
            Mode::PlainTxSet => "baseline in BEGIN; set_config; … COMMIT, pipelined, no policies",
            Mode::Rls => "**RLS: BEGIN; set_config; statement; COMMIT, pipelined (the app)**",
            Mode::RlsAwaited => "RLS, the four statements awaited one by one",
            Mode::RlsSession => "RLS, session-level set_config, no transaction (unsafe with pools)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::PlainTx => "plain-tx",
            Mode::Rls => "rls",
            Mode::PlainTxSet => "plain-tx-set",
            Mode::RlsAwaited => "rls-awaited",
            Mode::RlsSession => "rls-session",
        }
    }

    /// Round trips of a request of `statements` statements, each awaited before the next.
    fn round_trips(self, statements: usize) -> usize {
        match self {
            Mode::RlsAwaited => statements + 3,
            _ => statements,
        }
    }

    fn policies(self) -> bool {
        !matches!(self, Mode::Plain | Mode::PlainTx | Mode::PlainTxSet)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Read,
    List,
    Update,
}

struct Op {
    kind: Kind,
    tenant: String,
    id: i64,
    title: String,
}

/// A deterministic generator (SplitMix64), so every configuration gets the same operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn operations(seed: u64, count: usize, tenants: u64, rows: u64) -> Vec<Op> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|i| {
            let kind = match rng.below(100) {
                0..70 => Kind::Read,
                70..90 => Kind::List,
                _ => Kind::Update,
            };
            Op {
                kind,
                tenant: format!("tenant-{}", 1 + rng.below(tenants)),
                id: 1 + rng.below(rows) as i64,
                title: format!("Title {seed}-{i}"),
            }
        })
        .collect()
}

/// One connection with the configuration's statements prepared.
struct Conn {
    client: Client,
    /// The server process serving this connection (its CPU time is read from /proc).
    backend: i32,
    set_tenant: Statement,
    set_session_tenant: Statement,
    read: Statement,
    list: Statement,
    update: Statement,
}

async fn connect(url: &str, schema: &str) -> Client {
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}options=-c%20search_path%3D{schema}");
    gateway::db::connect(&url, None)
        .await
        .expect("PostgreSQL must be running (scripts/ensure-deps test starts it)")
}

impl Conn {
    async fn open(url: &str, mode: Mode) -> Conn {
        let cols = format!("id, project_id, owner, title, body, {UPDATED_AT}");
        let list_cols = format!("id, project_id, owner, title, NULL::text, {UPDATED_AT}");
        let order = "ORDER BY updated_at DESC, id DESC LIMIT 50";
        // The app's SQL names no tenant: the policies add the condition.
        let (schema, read, list, update) = if mode.policies() {
            (
                RLS_SCHEMA,
                format!("SELECT {cols} FROM documents WHERE id = $1"),
                format!("SELECT {list_cols} FROM documents {order}"),
                format!(
                    "UPDATE documents SET title = $2, body = $3, updated_at = now() \
                     WHERE id = $1 RETURNING {cols}"
                ),
            )
        } else {
            (
                PLAIN_SCHEMA,
                format!("SELECT {cols} FROM documents WHERE tenant_id = $1 AND id = $2"),
                format!("SELECT {list_cols} FROM documents WHERE tenant_id = $1 {order}"),
                format!(
                    "UPDATE documents SET title = $3, body = $4, updated_at = now() \
                     WHERE tenant_id = $1 AND id = $2 RETURNING {cols}"
                ),
            )
        };
        let client = connect(url, schema).await;
        let (set_tenant, read, list, update) = try_join4(
            client.prepare(SET_TENANT),
            client.prepare(&read),
            client.prepare(&list),
            client.prepare(&update),
        )
        .await
        .expect("prepare");
        let set_session_tenant = client
            .prepare("SELECT set_config('app.tenant_id', $1, false)")
            .await
            .expect("prepare");
        let backend: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("backend pid")
            .get(0);
        Conn {
            client,
            backend,
            set_tenant,
            set_session_tenant,
            read,
            list,
            update,
        }
    }

    /// Runs one request: its operations (all of the first one's tenant) one after the other,
    /// each awaited, as a handler whose statements depend on one another. What a mode adds
    /// (BEGIN, set_config, COMMIT) is pipelined with the first and the last statement. Returns
    /// the rows each statement answered, decoded as the app decodes them.
    async fn run(
        &mut self,
        mode: Mode,
        request: &[Op],
        body: &str,
    ) -> Result<Vec<usize>, tokio_postgres::Error> {
        let Some(tenant) = request.first().map(|op| op.tenant.as_str()) else {
            return Ok(Vec::new());
        };
        let client = &self.client;
        let skip = || async { Ok::<_, tokio_postgres::Error>(()) };
        let awaited = mode == Mode::RlsAwaited;
        if awaited {
            client.batch_execute("BEGIN").await?;
            client.execute(&self.set_tenant, &[&tenant]).await?;
        }
        let mut counts = Vec::with_capacity(request.len());
        for (i, op) in request.iter().enumerate() {
            let (first, last) = (i == 0, i + 1 == request.len());
            let (statement, params): (&Statement, Vec<&(dyn ToSql + Sync)>) =
                match (op.kind, mode.policies()) {
                    (Kind::Read, false) => (&self.read, vec![&tenant, &op.id]),
                    (Kind::List, false) => (&self.list, vec![&tenant]),
                    (Kind::Update, false) => {
                        (&self.update, vec![&tenant, &op.id, &op.title, &body])
                    }
                    (Kind::Read, true) => (&self.read, vec![&op.id]),
                    (Kind::List, true) => (&self.list, vec![]),
                    (Kind::Update, true) => (&self.update, vec![&op.id, &op.title, &body]),
                };
            let begin = async {
                match mode {
                    Mode::PlainTx | Mode::PlainTxSet | Mode::Rls if first => {
                        client.batch_execute("BEGIN").await
                    }
                    _ => skip().await,
                }
            };
            let set = async {
                match mode {
                    Mode::PlainTxSet | Mode::Rls if first => {
                        client.execute(&self.set_tenant, &[&tenant]).await.map(drop)
                    }
                    Mode::RlsSession if first => client
                        .execute(&self.set_session_tenant, &[&tenant])
                        .await
                        .map(drop),
                    _ => skip().await,
                }
            };
            let query = client.query(statement, &params);
            let commit = async {
                match mode {
                    Mode::PlainTx | Mode::PlainTxSet | Mode::Rls if last => {
                        client.batch_execute("COMMIT").await
                    }
                    _ => skip().await,
                }
            };
            let rows = try_join4(begin, set, query, commit).await?.2;
            for row in &rows {
                decode(row)?;
            }
            counts.push(rows.len());
        }
        if awaited {
            client.batch_execute("COMMIT").await?;
        }
        Ok(counts)
    }
}

type Decoded = (i64, Option<i64>, String, String, Option<String>, String);

fn decode(row: &Row) -> Result<Decoded, tokio_postgres::Error> {
    Ok((
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
    ))
}

/// Both copies of the data: the example schema, filled, one with its policies removed.
async fn prepare_data(url: &str, tenants: u64, rows: u64) {
    let admin = connect(url, "public").await;
    for (schema, policies) in [(PLAIN_SCHEMA, false), (RLS_SCHEMA, true)] {
        admin
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .expect("create schema");
        let db = connect(url, schema).await;
        db.batch_execute(SCHEMA_SQL).await.expect("schema.sql");
        // The owner loads the data with the policies lifted (FORCE off), as a migration would.
        db.batch_execute(&format!(
            "ALTER TABLE projects NO FORCE ROW LEVEL SECURITY;
             ALTER TABLE documents NO FORCE ROW LEVEL SECURITY;
             INSERT INTO projects (tenant_id, id, name)
               SELECT 'tenant-' || t, p, 'Project ' || p
               FROM generate_series(1, {tenants}) t, generate_series(1, 10) p;
             -- Tenants' rows interleaved, as they are written over time.
             INSERT INTO documents (tenant_id, id, project_id, owner, title, body, updated_at)
               SELECT 'tenant-' || t, d, 1 + d % 10, 'user-' || (d % 25), 'Document ' || d,
                      repeat(md5(t || '/' || d), 8),
                      timestamptz '2026-01-01' + make_interval(secs => d * 60 + t)
               FROM generate_series(1, {rows}) d, generate_series(1, {tenants}) t;"
        ))
        .await
        .expect("load data");
        let after = if policies {
            "ALTER TABLE projects FORCE ROW LEVEL SECURITY;
             ALTER TABLE documents FORCE ROW LEVEL SECURITY;"
        } else {
            "DROP POLICY tenant_isolation ON projects;
             DROP POLICY tenant_isolation ON documents;
             ALTER TABLE projects DISABLE ROW LEVEL SECURITY;
             ALTER TABLE documents DISABLE ROW LEVEL SECURITY;"
        };
        db.batch_execute(after).await.expect("policies");
        db.batch_execute("VACUUM (ANALYZE) projects")
            .await
            .expect("vacuum");
        db.batch_execute("VACUUM (ANALYZE) documents")
            .await
            .expect("vacuum");
    }
}

struct Run {
    elapsed: Duration,
    /// (kind, latency ns) of every operation.
    latencies: Vec<(Kind, u64)>,
    /// CPU time of the PostgreSQL processes serving the connections, ns (None when /proc does
    /// not show them).
    server_cpu: Option<u64>,
    /// CPU time of this process (the client), ns.
    client_cpu: u64,
}

/// CPU time a process has run, ns (`/proc/PID/schedstat`).
fn process_cpu(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn servers_cpu(conns: &[Conn]) -> Option<u64> {
    conns.iter().map(|c| process_cpu(c.backend)).sum()
}

/// CPU time of this process, all threads, ns.
fn own_cpu() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// `ops` requests of `statements` operations each over the connections (one task each, closed
/// loop).
async fn run(
    conns: Vec<Conn>,
    mode: Mode,
    seed: u64,
    ops: usize,
    statements: usize,
    tenants: u64,
    rows: u64,
) -> (Vec<Conn>, Run) {
    let per_conn = ops / conns.len();
    let server_before = servers_cpu(&conns);
    let client_before = own_cpu();
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let mut ops = operations(seed * 1000 + i as u64, per_conn * statements, tenants, rows);
            // A request acts for one tenant: its first operation's.
            for request in ops.chunks_mut(statements) {
                let tenant = request[0].tenant.clone();
                for op in request.iter_mut().skip(1) {
                    op.tenant.clone_from(&tenant);
                }
            }
            tokio::spawn(async move {
                let body = "x".repeat(256);
                let mut latencies = Vec::with_capacity(per_conn);
                let expected_list = (rows as usize).min(LIST_LIMIT);
                for request in ops.chunks(statements) {
                    let t = Instant::now();
                    let counts = conn.run(mode, request, &body).await.expect("request");
                    latencies.push((request[0].kind, t.elapsed().as_nanos() as u64));
                    for (op, n) in request.iter().zip(counts) {
                        let expected = if op.kind == Kind::List {
                            expected_list
                        } else {
                            1
                        };
                        // Under the policies, a lost tenant setting would answer nothing (and
                        // fast).
                        assert_eq!(n, expected, "{} rows for {:?}", n, mode.label());
                    }
                }
                (conn, latencies)
            })
        })
        .collect();
    let mut conns = Vec::new();
    let mut latencies = Vec::new();
    for task in tasks {
        let (conn, l) = task.await.expect("worker");
        conns.push(conn);
        latencies.extend(l);
    }
    let elapsed = started.elapsed();
    let server_cpu = servers_cpu(&conns)
        .zip(server_before)
        .map(|(after, before)| after.saturating_sub(before));
    let client_cpu = own_cpu().saturating_sub(client_before);
    (
        conns,
        Run {
            elapsed,
            latencies,
            server_cpu,
            client_cpu,
        },
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Median over the rounds of (other ÷ base − 1), in %: each pair is one round's figure of the
/// base configuration and of the other; a round missing either is left out.
fn median_cost(rounds: impl Iterator<Item = (Option<f64>, Option<f64>)>) -> f64 {
    let mut costs: Vec<f64> = rounds
        .filter_map(|(base, other)| Some((other? / base? - 1.0) * 100.0))
        .collect();
    median(&mut costs)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[tokio::main]
async fn main() {
    let url = arg("--url")
        .or_else(|| std::env::var("GATEWAY_TEST_PG_URL").ok())
        .unwrap_or_else(|| {
            "postgres://gateway_test:gateway_test@127.0.0.1:5432/gateway_test".into()
        });
    let num = |name: &str, default: u64| -> u64 {
        arg(name)
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number")))
            .unwrap_or(default)
    };
    let tenants = num("--tenants", 100);
    let rows = num("--rows", 1000);
    let ops = num("--ops", 20_000) as usize;
    let rounds = num("--rounds", 5);
    let concurrency = num("--concurrency", 4) as usize;
    // Statements per request (one transaction where the mode has one).
    let statements = num("--statements", 1).max(1) as usize;
    let load_before = load_average();
    let started = Instant::now();

    eprintln!("rls: loading {tenants} tenants × {rows} documents, twice");
    prepare_data(&url, tenants, rows).await;
    let info = connect(&url, "public").await;
    let version: String = info
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .expect("version")
        .get(0);
    let tls: bool = info
        .query_one(
            "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    let tls = if tls {
        "connections TLS-encrypted (libpq's default `sslmode=prefer`; the server has TLS on)"
    } else {
        "connections not encrypted"
    };
    let shared_buffers: String = info
        .query_one("SELECT current_setting('shared_buffers')", &[])
        .await
        .expect("shared_buffers")
        .get(0);

    if let Some(dir) = arg("--callgrind") {
        let workload = Workload {
            url: url.clone(),
            tenants,
            rows,
            ops,
            concurrency,
            statements,
        };
        let report =
            match callgrind_report(&workload, &dir, rounds, &version, tls, &shared_buffers).await {
                Ok(report) => report,
                Err(e) => {
                    eprintln!("rls --callgrind: {e}");
                    std::process::exit(1);
                }
            };
        finish(&url, &report).await;
        return;
    }

    let mut pools = Vec::new();
    for mode in MODES {
        let mut conns = Vec::new();
        for _ in 0..concurrency {
            conns.push(Conn::open(&url, mode).await);
        }
        pools.push(conns);
    }

    // Warm-up (caches, generic plans), then rounds with the order rotated each round.
    let mut results: Vec<Vec<Run>> = MODES.iter().map(|_| Vec::new()).collect();
    for round in 0..=rounds {
        for k in 0..MODES.len() {
            let m = (k + round as usize) % MODES.len();
            let mode = MODES[m];
            let conns = std::mem::take(&mut pools[m]);
            let count = if round == 0 { ops / 4 } else { ops };
            let (conns, result) = run(conns, mode, round, count, statements, tenants, rows).await;
            pools[m] = conns;
            if round > 0 {
                eprintln!(
                    "rls: round {round} {:<10} {:>8.0} ops/s",
                    mode.short(),
                    result.latencies.len() as f64 / result.elapsed.as_secs_f64()
                );
                results[m].push(result);
            }
        }
    }
    let load_after = load_average();
    let took = started.elapsed();

    let ops_per_s = |r: &Run| r.latencies.len() as f64 / r.elapsed.as_secs_f64();
    let mut table = String::from(
        "| configuration | round trips/op | ops/s median (min–max) | throughput cost | PostgreSQL CPU µs/op (cost) | client CPU µs/op | p50 µs | p99 µs | p50 µs read / list / update |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let per_op = |r: &Run, ns: u64| ns as f64 / r.latencies.len() as f64 / 1000.0;
    let server_us = |r: &Run| r.server_cpu.map(|ns| per_op(r, ns));
    let time_per_op = |r: &Run| Some(1.0 / ops_per_s(r));
    // Median over the rounds of (metric of `b` ÷ metric of `a` − 1), in %, runs of a round paired.
    let paired = |a: usize, b: usize, metric: &dyn Fn(&Run) -> Option<f64>| {
        median_cost(
            results[a]
                .iter()
                .zip(&results[b])
                .map(|(ra, rb)| (metric(ra), metric(rb))),
        )
    };
    for (m, mode) in MODES.iter().enumerate() {
        let runs = &results[m];
        let mut rates: Vec<f64> = runs.iter().map(ops_per_s).collect();
        let (min, max) = rates
            .iter()
            .fold((f64::MAX, 0.0_f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        let rate = median(&mut rates);
        // Per round against the baseline run of the same round, then the median.
        let cost = paired(0, m, &time_per_op);
        let server: Option<Vec<f64>> = runs.iter().map(server_us).collect();
        let server = server.map(|mut v| median(&mut v));
        let server_cost = paired(0, m, &server_us);
        let mut client: Vec<f64> = runs.iter().map(|r| per_op(r, r.client_cpu)).collect();
        let client = median(&mut client);
        let mut all: Vec<u64> = runs
            .iter()
            .flat_map(|r| r.latencies.iter().map(|l| l.1))
            .collect();
        all.sort_unstable();
        let kind_p50 = |kind: Kind| {
            let mut l: Vec<u64> = runs
                .iter()
                .flat_map(|r| r.latencies.iter().filter(|l| l.0 == kind).map(|l| l.1))
                .collect();
            l.sort_unstable();
            percentile(&l, 50.0) / 1000
        };
        // A request of several statements has no one kind.
        let by_kind = |kind: Kind| {
            if statements == 1 {
                kind_p50(kind).to_string()
            } else {
                "—".to_string()
            }
        };
        let versus = |c: f64| {
            if m == 0 {
                "—".to_string()
            } else {
                format!("{c:+.1} %")
            }
        };
        table.push_str(&format!(
            "| {} | {} | {:.0} ({:.0}–{:.0}) | {} | {} | {:.1} | {} | {} | {} / {} / {} |\n",
            mode.label(),
            mode.round_trips(statements),
            rate,
            min,
            max,
            versus(cost),
            server
                .map(|us| format!("{us:.1} ({})", versus(server_cost)))
                .unwrap_or_else(|| "n/a".into()),
            client,
            percentile(&all, 50.0) / 1000,
            percentile(&all, 99.0) / 1000,
            by_kind(Kind::Read),
            by_kind(Kind::List),
            by_kind(Kind::Update),
        ));
    }

    let rls = Mode::Rls.index();
    let summary: String = COMPARED_WITH
        .iter()
        .map(|(from, what)| {
            format!(
                "- {what}: **{:+.1} % throughput, {:+.1} % PostgreSQL CPU per operation**\n",
                paired(from.index(), rls, &time_per_op),
                paired(from.index(), rls, &server_us),
            )
        })
        .collect();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let report = format!(
        "# Row-Level Security overhead {date} on `{host}`\n\n\
         {cpus} cores ({model}); PostgreSQL {version} on the same machine over TCP on 127.0.0.1, \
         {tls} (shared_buffers {shared_buffers}), sharing the cores with this benchmark's client. \
         Load average {load_before} before, {load_after} after. `cargo run --release -p \
         gateway-bench --bin rls`, {secs:.0} s in all.\n\n\
         - Data: {tenants} tenants × {rows} documents ({total} rows, 256-byte bodies, rows of \
         all tenants interleaved) in two schemas with the same tables and indexes \
         (deploy/examples/rls/schema.sql): one with the policies removed, one with them enabled \
         and forced. Prepared statements; the table owner connects (FORCE makes the policies \
         bind it, as they bind the app's role).\n\
         - Query mix: 70 % read of one document by id, 20 % list of the tenant's 50 most \
         recently updated (no bodies), 10 % update of title and body; tenant and id uniformly \
         random, the same sequence for every configuration. Every answer is checked (1 row, \
         50 rows, 1 row): a lost tenant setting cannot pass for speed.\n\
         {requests}\
         - {concurrency} connections, closed loop, {ops} operations per run; {rounds} rounds \
         after one warm-up run of each configuration, configurations interleaved with the \
         order rotated each round. Cost = baseline ops/s ÷ ops/s − 1 (throughput) and CPU \
         µs/op ÷ baseline CPU µs/op − 1 (PostgreSQL: the server processes of the \
         connections, from /proc/PID/schedstat), each per round against the baseline run of \
         the same round, median over the rounds. CPU µs/op and ops/s: medians over the rounds; \
         latencies over all rounds.\n\n\
         {table}\n\
         The example app's way (BEGIN and set_config pipelined with a request's first statement, COMMIT with its last; goal < 10 %) against\n\n\
         {summary}",
        cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        model = cpu_model(),
        secs = took.as_secs_f64(),
        total = tenants * rows,
        requests = if statements == 1 {
            String::new()
        } else {
            format!(
                "- **Requests of {statements} statements** (`--statements {statements}`): an \
                 \"operation\" below is one request — {statements} operations of the mix for one \
                 tenant, each awaited before the next (a handler whose statements depend on one \
                 another), in one transaction where the configuration has one (BEGIN and \
                 set_config pipelined with the first statement, COMMIT with the last); the \
                 baseline runs each statement in autocommit.\n"
            )
        },
    );
    finish(&url, &report).await;
}

/// Prints the report, writes it to `--out`, drops both schemas.
async fn finish(url: &str, report: &str) {
    println!("{report}");
    if let Some(path) = arg("--out") {
        std::fs::write(&path, report).unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    let admin = connect(url, "public").await;
    admin
        .batch_execute(&format!(
            "DROP SCHEMA {PLAIN_SCHEMA} CASCADE; DROP SCHEMA {RLS_SCHEMA} CASCADE"
        ))
        .await
        .expect("drop schemas");
}

/// What every run of a configuration does.
struct Workload {
    url: String,
    tenants: u64,
    rows: u64,
    ops: usize,
    concurrency: usize,
    statements: usize,
}

/// The instructions a backend ran in all, from the file callgrind writes when it exits
/// (`DIR/callgrind.out.PID`): its `totals:` line, the file's last, so a file without one is not
/// complete yet.
async fn backend_instructions(dir: &str, pid: i32) -> Result<u64, String> {
    let path = std::path::Path::new(dir).join(format!("callgrind.out.{pid}"));
    let wait = Duration::from_secs(600);
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some(totals) = text.lines().rev().find_map(|l| l.strip_prefix("totals:")) {
                let first = totals.split_whitespace().next().unwrap_or_default();
                return first
                    .parse()
                    .map_err(|e| format!("{}: `totals:{totals}`: {e}", path.display()));
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{}: no `totals:` line {} s after the connection closed; is PostgreSQL running \
                 under `valgrind --tool=callgrind --callgrind-out-file={dir}/callgrind.out.%p` \
                 (bench/rls-callgrind), and may this user read the file?",
                path.display(),
                wait.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn backends_instructions(dir: &str, pids: &[i32]) -> Result<u64, String> {
    let mut total = 0;
    for pid in pids {
        total += backend_instructions(dir, *pid).await?;
    }
    Ok(total)
}

/// PostgreSQL instructions per operation of one configuration, by difference: two sets of
/// `concurrency` connections, their backends forked in turn (each pair from the same postmaster
/// state: a backend's count starts from the postmaster's at the fork), both run the same warm-up,
/// one then runs the measured operations; all are closed, each backend writes its count as it
/// exits, and the measured set's total less the other's is what the measured operations cost.
/// (callgrind_control's zero and dump would need vgdb, whose ptrace invocation hung the backends
/// on the machine this was written on.)
async fn count_instructions(
    w: &Workload,
    dir: &str,
    mode: Mode,
    round: u64,
) -> Result<(f64, u64, u64, usize), String> {
    let mut measured = Vec::new();
    let mut control = Vec::new();
    for _ in 0..w.concurrency {
        measured.push(Conn::open(&w.url, mode).await);
        control.push(Conn::open(&w.url, mode).await);
    }
    let (tenants, rows, statements) = (w.tenants, w.rows, w.statements);
    let warm = w.ops / 4;
    let (measured, _) = run(measured, mode, 0, warm, statements, tenants, rows).await;
    let (control, _) = run(control, mode, 0, warm, statements, tenants, rows).await;
    let (measured, result) = run(measured, mode, round, w.ops, statements, tenants, rows).await;
    let ops = result.latencies.len();
    let pids = |conns: &[Conn]| conns.iter().map(|c| c.backend).collect::<Vec<_>>();
    let (measured_pids, control_pids) = (pids(&measured), pids(&control));
    // Closing the clients ends the backends, and callgrind writes their counts.
    drop(measured);
    drop(control);
    let with = backends_instructions(dir, &measured_pids).await?;
    let without = backends_instructions(dir, &control_pids).await?;
    if ops == 0 {
        return Err("no operations measured (--ops below --concurrency?)".into());
    }
    let per_op = (with as f64 - without as f64) / ops as f64;
    Ok((per_op, with, without, ops))
}

/// The `--callgrind` report: PostgreSQL instructions per operation of each configuration.
async fn callgrind_report(
    w: &Workload,
    dir: &str,
    rounds: u64,
    version: &str,
    tls: &str,
    shared_buffers: &str,
) -> Result<String, String> {
    std::fs::read_dir(dir).map_err(|e| format!("{dir}: {e}"))?;
    let started = Instant::now();
    let rounds = rounds.max(1);
    // Instructions per operation, per configuration, per round.
    let mut counts: Vec<Vec<f64>> = MODES.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for k in 0..MODES.len() {
            let m = (k + round as usize) % MODES.len();
            let mode = MODES[m];
            let (per_op, with, without, ops) = count_instructions(w, dir, mode, round).await?;
            eprintln!(
                "rls: round {round} {:<12} backends {with} − {without} instructions over {ops} \
                 operations: {per_op:.0} per operation",
                mode.short()
            );
            counts[m].push(per_op);
        }
    }
    let paired = |a: usize, b: usize| {
        median_cost(
            counts[a]
                .iter()
                .zip(&counts[b])
                .map(|(ca, cb)| (Some(*ca), Some(*cb))),
        )
    };
    let mut table = String::from(
        "| configuration | round trips/op | PostgreSQL instructions/op | against `plain` | \
         against `plain-tx` | against `plain-tx-set` |\n|---|---|---|---|---|---|\n",
    );
    for (m, mode) in MODES.iter().enumerate() {
        let mut values = counts[m].clone();
        let (min, max) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let mid = median(&mut values);
        let count = if values.len() > 1 {
            format!("{mid:.0} ({min:.0}–{max:.0})")
        } else {
            format!("{mid:.0}")
        };
        let against: Vec<String> = COMPARED_WITH
            .iter()
            .map(|(base, _)| {
                if base.index() == m {
                    "—".to_string()
                } else {
                    format!("{:+.1} %", paired(base.index(), m))
                }
            })
            .collect();
        table.push_str(&format!(
            "| {} (`{}`) | {} | {count} | {} |\n",
            mode.label(),
            mode.short(),
            mode.round_trips(w.statements),
            against.join(" | "),
        ));
    }
    let rls = Mode::Rls.index();
    let summary: String = COMPARED_WITH
        .iter()
        .map(|(from, what)| {
            format!(
                "- {what}: **{:+.1} % PostgreSQL instructions per operation**\n",
                paired(from.index(), rls)
            )
        })
        .collect();
    let valgrind = std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "valgrind".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let statements = w.statements;
    let requests = if statements == 1 {
        String::new()
    } else {
        format!(
            "- **Requests of {statements} statements** (`--statements {statements}`): an \
             \"operation\" is one request, {statements} operations of the mix for one tenant, each \
             awaited before the next, in one transaction where the configuration has one.\n"
        )
    };
    Ok(format!(
        "# Row-Level Security overhead in PostgreSQL instructions, {date} on `{host}`\n\n\
         PostgreSQL {version} under {valgrind} callgrind (bench/rls-callgrind), over TCP on \
         127.0.0.1, {tls} (shared_buffers {shared_buffers}). `rls --callgrind`, {secs:.0} s in all.\n\n\
         - Data and query mix as in the timed bench: {tenants} tenants × {rows} documents in two \
         schemas (policies removed / enabled and forced); 70 % reads by id, 20 % lists of 50, \
         10 % updates, every answer checked.\n\
         {requests}\
         - Count: the instructions of the PostgreSQL backends serving the connections (callgrind's \
         `totals:`, written by each backend as it exits), not of the postmaster or the background \
         processes. Per configuration and round, {concurrency} connections run a warm-up of \
         {warm} operations and then {ops} measured operations, {concurrency} other connections \
         (forked alternately with them) the same warm-up alone; instructions/op = (first \
         backends' total − second backends' total) ÷ operations. {rounds} round(s), \
         configurations in an order rotated each round; cost = instructions/op ÷ those of the \
         other configuration − 1, per round, median over the rounds.\n\n\
         {table}\n\
         The example app's way (BEGIN and set_config pipelined with a request's first statement, \
         COMMIT with its last; goal < 10 %) against\n\n\
         {summary}",
        secs = started.elapsed().as_secs_f64(),
        tenants = w.tenants,
        rows = w.rows,
        concurrency = w.concurrency,
        warm = w.ops / 4 / w.concurrency.max(1) * w.concurrency.max(1),
        ops = w.ops / w.concurrency.max(1) * w.concurrency.max(1),
    ))
}
