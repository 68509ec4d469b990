//! What a cold decision costs, split: the gateway building the Cedar request and entities
//! (principal, tenant, resource from the entity store, context) against cedar-policy's own
//! `is_authorized` on the same request and entities — on the action's slice of the policies, as
//! the gateway evaluates, and on the whole set, as Cedar's published medians measure. Then what
//! one entity-store miss costs per provider: entities.json (in memory), PostgreSQL on loopback
//! and an HTTP endpoint on loopback, each including validation against the schema.
//!
//! Usage: decision-split [--decisions N] [--misses M] [--json FILE] [--markdown FILE]
//! (PostgreSQL: `GATEWAY_TEST_PG_URL`, default the test database of scripts/test.)

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::authz::store::{http::HttpEntities, postgres, EntityProvider, StoredEntity};
use gateway::authz::{AuthzEngine, DecisionInput, RequestFacts, ResourceRecord};
use gateway::identity::{AuthMethod, Principal};
use gateway::tenancy::{TenantRegistry, TenantSpec};
use gateway_bench::{arg, percentile};
use serde_json::{json, Value};

const ACTIONS: &[(&str, &str)] = &[
    ("documents:read", "Document"),
    ("documents:update", "Document"),
    ("documents:delete", "Document"),
    ("projects:read", "Project"),
    ("projects:delete", "Project"),
    ("reports:read", "Report"),
];
const ROLES: &[&str] = &["viewer", "editor", "admin", "tenant-owner"];

#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_nanos() as u64);
    }
    fn summary(mut self) -> (u64, u64, u64) {
        self.0.sort_unstable();
        let mean = self.0.iter().sum::<u64>() / self.0.len().max(1) as u64;
        (percentile(&self.0, 50.0), percentile(&self.0, 99.0), mean)
    }
}

fn principal(u: usize) -> Principal {
    let mut p = Principal::anonymous();
    p.id = format!("user-{u}");
    p.tenant = Some(Arc::from("acme"));
    p.roles = vec![ROLES[u % ROLES.len()].to_string()];
    p.auth = AuthMethod::Jwt {
        issuer: "bench".into(),
    };
    p.attributes
        .insert("mfa".into(), json!(u.is_multiple_of(3)));
    p.attributes
        .insert("department".into(), json!(format!("dept-{}", u % 12)));
    p.attributes.insert("clearance".into(), json!(u % 5));
    p
}

/// One row of the split: (label, prepare, gateway is_authorized on slices, Cedar on the whole
/// set, prepare + evaluate).
type Split = (String, [(u64, u64, u64); 4]);

fn split(engine: &AuthzEngine, decisions: usize, entity_cache_cold: bool) -> Split {
    let tenant: TenantSpec = toml::from_str("id = \"acme\"\ntier = \"pro\"").expect("tenant");
    let facts = RequestFacts::now("GET", Some("DE".into()), Some("10.1.2.3".parse().unwrap()));
    let principals: Vec<Principal> = (0..2000).map(principal).collect();
    let whole = cedar_policy::Authorizer::new();
    let (mut prepare, mut slices, mut cedar_whole, mut total) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let mut rng = 0x2545F4914F6CDD1Du64;
    for _ in 0..decisions {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let p = &principals[(rng % 2000) as usize];
        let (action, resource_type) = ACTIONS[(rng >> 20) as usize % ACTIONS.len()];
        // Documents 1-6 and 100 are in entities.json; the rest are missing from it.
        let id = [1, 2, 3, 4, 5, 6, 100, 7, 8, 42][(rng >> 32) as usize % 10].to_string();
        let record = engine.file_record(resource_type, &id);
        let input = DecisionInput {
            principal: p,
            tenant: &tenant,
            tier_features: &[],
            action,
            resource_type,
            resource_id: &id,
            resource_attributes: &[],
            resource_record: record,
            principal_record: engine.file_record(engine.user_type(), &p.id),
            declared_facts: &[],
            facts: &facts,
        };
        if entity_cache_cold {
            engine.clear_caches();
        }
        let t0 = Instant::now();
        let prepared = engine.prepare(&input).expect("request");
        let t1 = Instant::now();
        let evaluation = engine.evaluate_prepared(&input, &prepared);
        let t2 = Instant::now();
        let response = whole.is_authorized(
            &prepared.request,
            engine.global_policies(),
            &prepared.entities,
        );
        let t3 = Instant::now();
        prepare.push(t1 - t0);
        slices.push(t2 - t1);
        cedar_whole.push(t3 - t2);
        total.push(t2 - t0);
        std::hint::black_box((evaluation, response));
    }
    let label = if entity_cache_cold {
        "entity cache cold (every principal and tenant entity built)"
    } else {
        "entity cache warm (2,000 principals, one tenant)"
    };
    (
        label.to_string(),
        [
            prepare.summary(),
            slices.summary(),
            cedar_whole.summary(),
            total.summary(),
        ],
    )
}

fn record(id: usize) -> Value {
    json!({
        "uid": {"type": "Document", "id": id.to_string()},
        "attrs": {
            "tenant": {"__entity": {"type": "Tenant", "id": if id.is_multiple_of(7) { "globex" } else { "acme" }}},
            "owner": {"__entity": {"type": "User", "id": format!("user-{}", id % 2000)}},
            "classification": (id % 5) as i64,
        },
        "parents": [],
    })
}

/// Fetch + validation of `misses` distinct records.
async fn misses_of(
    provider: &dyn EntityProvider,
    engine: &AuthzEngine,
    misses: usize,
) -> (u64, u64, u64) {
    let mut samples = Samples::default();
    for id in 0..misses {
        let started = Instant::now();
        let fetched = provider
            .fetch("Document", &id.to_string())
            .await
            .expect("fetch")
            .expect("record");
        let stored = StoredEntity::from_json(fetched, engine.schema()).expect("valid");
        samples.push(started.elapsed());
        std::hint::black_box(stored);
    }
    samples.summary()
}

async fn serve_records() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    let id: usize = req
                        .uri()
                        .path()
                        .rsplit('/')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let body = serde_json::to_vec(&record(id)).unwrap_or_default();
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            .expect("response"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/entities")
}

fn main() {
    let decisions: usize = arg("--decisions")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let misses: usize = arg("--misses")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let engine =
        AuthzEngine::load(&policies, &TenantRegistry::default(), 0).expect("policy package");

    let splits = [
        split(&engine, decisions, false),
        split(&engine, decisions, true),
    ];

    // Entity-store misses per provider.
    let mut file = Samples::default();
    for i in 0..misses {
        let id = ["1", "4", "100", "999"][i % 4];
        let started = Instant::now();
        let found = engine.file_record("Document", id);
        file.push(started.elapsed());
        std::hint::black_box(matches!(found, ResourceRecord::Found(_)));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (pg, http) = runtime.block_on(async {
        let url = std::env::var("GATEWAY_TEST_PG_URL").unwrap_or_else(|_| {
            "postgres://gateway_test:gateway_test@127.0.0.1:5432/gateway_test".to_string()
        });
        let table = format!("bench_entities_{}", std::process::id());
        let config: gateway::db::PostgresConfig = toml::from_str(&format!(
            "url = \"{url}\"\ntable = \"{table}\"\nmigrate = true"
        ))
        .expect("config");
        let (provider, _changes) = postgres::connect(&config).await.expect("PostgreSQL");
        let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL");
        tokio::spawn(connection);
        for id in 0..misses {
            let r = record(id);
            db.execute(
                &format!("INSERT INTO {table} (entity_type, entity_id, attrs) VALUES ('Document', $1, $2)"),
                &[&id.to_string(), &r["attrs"]],
            )
            .await
            .expect("insert");
        }
        let pg = misses_of(&provider, &engine, misses).await;
        drop(provider);
        let _ = db
            .batch_execute(&format!(
                "DROP TABLE {table} CASCADE; DROP FUNCTION IF EXISTS {table}_entity_notify() CASCADE; DROP FUNCTION IF EXISTS {table}_entity_trunc() CASCADE;"
            ))
            .await;
        let base = serve_records().await;
        let provider = HttpEntities::new(&base, Duration::from_secs(2)).expect("http provider");
        let http = misses_of(&provider, &engine, misses).await;
        (pg, http)
    });
    let file = file.summary();

    let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
    let mut md = String::new();
    md.push_str(&format!(
        "# Decision split and entity-store misses ({})\n\n`bench/src/bin/decision-split.rs`, example policy package (entities.json), decision cache off, {decisions} decisions per row, one thread. Times in µs.\n\n",
        jiff::Zoned::now().date()
    ));
    md.push_str("| entity cache | build request + entities p50 / p99 | gateway `is_authorized` (action slices) p50 / p99 | Cedar `is_authorized`, whole set, same request p50 / p99 | cold decision (build + evaluate) p50 / p99 | build ÷ evaluate (p50) |\n|---|---|---|---|---|---|\n");
    let mut json_rows = Vec::new();
    for (label, [prepare, slices, whole, total]) in &splits {
        md.push_str(&format!(
            "| {label} | {} / {} | {} / {} | {} / {} | {} / {} | {:.2} |\n",
            us(prepare.0),
            us(prepare.1),
            us(slices.0),
            us(slices.1),
            us(whole.0),
            us(whole.1),
            us(total.0),
            us(total.1),
            prepare.0 as f64 / slices.0.max(1) as f64
        ));
        json_rows.push(json!({
            "label": label,
            "prepare_ns": {"p50": prepare.0, "p99": prepare.1, "mean": prepare.2},
            "evaluate_slices_ns": {"p50": slices.0, "p99": slices.1, "mean": slices.2},
            "cedar_whole_set_ns": {"p50": whole.0, "p99": whole.1, "mean": whole.2},
            "cold_decision_ns": {"p50": total.0, "p99": total.1, "mean": total.2},
        }));
    }
    md.push_str(&format!(
        "\n## One entity-store miss, per provider ({misses} distinct ids, sequential, validation included)\n\n| provider | p50 µs | p99 µs | mean µs |\n|---|---|---|---|\n| entities.json (in memory) | {} | {} | {} |\n| PostgreSQL, loopback | {} | {} | {} |\n| HTTP, loopback (hyper server in the bench) | {} | {} | {} |\n",
        us(file.0), us(file.1), us(file.2), us(pg.0), us(pg.1), us(pg.2), us(http.0), us(http.1), us(http.2)
    ));
    md.push_str("\nA miss is paid once per entity per TTL (30 s by default) and replica; hits are served from the store's cache.\n");
    let report = json!({
        "split": json_rows,
        "misses_ns": {
            "file": {"p50": file.0, "p99": file.1, "mean": file.2},
            "postgres": {"p50": pg.0, "p99": pg.1, "mean": pg.2},
            "http": {"p50": http.0, "p99": http.1, "mean": http.2},
        },
    });
    if let Some(path) = arg("--markdown") {
        std::fs::write(&path, &md).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    print!("{md}");
    gateway_bench::emit_report(&report);
}
