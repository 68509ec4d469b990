//! Authorization stage latency: p50/p99/p99.9 per decision for (a) the example policies and
//! (b) the example policies plus N tenants × 10 tenant policies each (default N = 100,000:
//! 1,000,000 policies), with the decision cache on (realistic mix) and off (every decision
//! evaluated by Cedar). Also load time and resident memory of the policies.
//!
//! Usage: authz-bench [--tenants N] [--decisions M] [--json FILE]

use std::sync::Arc;
use std::time::Instant;

use gateway::authz::{AuthzEngine, DecisionInput, RequestFacts};
use gateway::identity::{AuthMethod, Principal};
use gateway::tenancy::{TenantRegistry, TenantSpec};
use gateway_bench::{arg, percentile, rss_bytes, tenants};
use serde_json::json;

const ACTIONS: &[(&str, &str)] = &[
    ("projects:read", "Project"),
    ("projects:update", "Project"),
    ("projects:delete", "Project"),
    ("documents:read", "Document"),
    ("documents:update", "Document"),
    ("documents:download", "Document"),
    ("reports:read", "Report"),
    ("members:list", "Member"),
    ("billing:read", "BillingAccount"),
    ("settings:read", "Settings"),
];
const ROLES: &[&str] = &["viewer", "editor", "admin", "tenant-owner"];

fn tenant_policies(i: usize) -> String {
    (0..10)
        .map(|j| {
            let (action, _) = ACTIONS[(i + j) % ACTIONS.len()];
            if j % 2 == 0 {
                format!(
                    "@id(\"t{i}-{j}\")\nforbid (principal, action == Action::\"{action}\", resource) when {{ principal has department && principal.department == \"dept-{j}\" }};\n"
                )
            } else {
                format!(
                    "@id(\"t{i}-{j}\")\npermit (principal in Role::\"{}\", action == Action::\"{action}\", resource) when {{ context.hour >= {} }};\n",
                    ROLES[j % ROLES.len()],
                    j % 6
                )
            }
        })
        .collect()
}

struct Run {
    name: String,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    mean_ns: u64,
}

fn measure(
    name: &str,
    engine: &AuthzEngine,
    registry: &TenantRegistry,
    tenant_count: usize,
    decisions: usize,
) -> Run {
    // A realistic mix: 2,000 users spread over the tenants, 10 actions, resources by id.
    let principals: Vec<Principal> = (0..2000)
        .map(|u| {
            let mut p = Principal::anonymous();
            p.id = format!("user-{u}");
            p.roles = vec![ROLES[u % ROLES.len()].to_string()];
            p.auth = AuthMethod::Jwt {
                issuer: "bench".into(),
            };
            p.attributes.insert("mfa".into(), json!(u % 3 == 0));
            p.attributes
                .insert("department".into(), json!(format!("dept-{}", u % 12)));
            p
        })
        .collect();
    let tenant_specs: Vec<Arc<TenantSpec>> = (0..2000)
        .map(|u| {
            registry
                .get(&format!("tenant-{}", (u * 7919) % tenant_count + 1))
                .expect("tenant")
                .clone()
        })
        .collect();
    let facts = RequestFacts::now("GET", Some("DE".into()), None);
    let mut samples = Vec::with_capacity(decisions);
    let mut rng = 0x2545F4914F6CDD1Du64;
    for _ in 0..decisions {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let u = (rng % 2000) as usize;
        let (action, resource) = ACTIONS[(rng >> 20) as usize % ACTIONS.len()];
        let id = format!("{}", (rng >> 32) % 10_000);
        let mut principal = principals[u].clone();
        principal.tenant = Some(Arc::from(tenant_specs[u].id.as_str()));
        let input = DecisionInput {
            principal: &principal,
            tenant: &tenant_specs[u],
            tier_features: &[],
            action,
            resource_type: resource,
            resource_id: &id,
            resource_attributes: &[],
            resource_record: Default::default(),
            principal_record: Default::default(),
            declared_facts: &[],
            facts: &facts,
        };
        let started = Instant::now();
        let decision = engine.decide(&input);
        samples.push(started.elapsed().as_nanos() as u64);
        std::hint::black_box(decision);
    }
    samples.sort_unstable();
    Run {
        name: name.to_string(),
        p50_ns: percentile(&samples, 50.0),
        p99_ns: percentile(&samples, 99.0),
        p999_ns: percentile(&samples, 99.9),
        mean_ns: samples.iter().sum::<u64>() / samples.len() as u64,
    }
}

fn main() {
    let tenant_count: usize = arg("--tenants")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let decisions: usize = arg("--decisions")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");

    let mut results = Vec::new();
    let mut report = json!({});
    for (label, with_tenant_policies) in [
        ("a: example policies", false),
        ("b: + tenant policies", true),
    ] {
        let mut specs = tenants(tenant_count);
        if with_tenant_policies {
            for (i, t) in specs.iter_mut().enumerate() {
                t.policies = Some(tenant_policies(i));
            }
        }
        let registry = TenantRegistry::build(specs).expect("registry");
        let rss_before = rss_bytes();
        let started = Instant::now();
        let cached = AuthzEngine::load(&dir, &registry, 100_000).expect("load");
        let load_secs = started.elapsed().as_secs_f64();
        let rss_after = rss_bytes();
        let uncached = AuthzEngine::load(&dir, &registry, 0).expect("load");
        let policies = cached.policy_count()
            + registry.tenants().filter(|t| t.policies.is_some()).count() * 10;
        eprintln!(
            "{label}: {policies} policies ({tenant_count} tenants), loaded in {load_secs:.2} s, +{} MiB resident for the engine",
            rss_after.saturating_sub(rss_before) / (1024 * 1024)
        );
        for (mode, engine) in [
            ("decision cache on", &cached),
            ("decision cache off", &uncached),
        ] {
            // Warm-up: the first decision of each (tenant, action) compiles that tenant's policies
            // (measured separately below); steady state is what requests see.
            let _ = measure("warm-up", engine, &registry, tenant_count, decisions);
            let run = measure(
                &format!("{label}, {mode}"),
                engine,
                &registry,
                tenant_count,
                decisions,
            );
            eprintln!(
                "  {mode}: p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, mean {:.2} µs",
                run.p50_ns as f64 / 1000.0,
                run.p99_ns as f64 / 1000.0,
                run.p999_ns as f64 / 1000.0,
                run.mean_ns as f64 / 1000.0
            );
            results.push(run);
        }
        let rss_end = rss_bytes();
        // First use of a tenant's policies (parse + validate + slice), on tenants not used yet.
        let mut first_use = Vec::new();
        if with_tenant_policies {
            let facts = RequestFacts::now("GET", None, None);
            let mut p = Principal::anonymous();
            p.id = "cold".into();
            p.roles = vec!["editor".into()];
            for i in 0..200 {
                let t = registry
                    .get(&format!("tenant-{}", tenant_count - i))
                    .expect("tenant")
                    .clone();
                let started = Instant::now();
                std::hint::black_box(uncached.decide(&DecisionInput {
                    principal: &p,
                    tenant: &t,
                    tier_features: &[],
                    action: "projects:read",
                    resource_type: "Project",
                    resource_id: "1",
                    resource_attributes: &[],
                    resource_record: Default::default(),
                    principal_record: Default::default(),
                    declared_facts: &[],
                    facts: &facts,
                }));
                first_use.push(started.elapsed().as_nanos() as u64);
            }
            first_use.sort_unstable();
            eprintln!(
                "  first decision of a tenant (compiles its 10 policies): p50 {:.0} µs, p99 {:.0} µs",
                percentile(&first_use, 50.0) as f64 / 1000.0,
                percentile(&first_use, 99.0) as f64 / 1000.0
            );
        }
        report[if with_tenant_policies { "b" } else { "a" }] = json!({
            "policies": policies,
            "tenants": tenant_count,
            "engine_load_seconds": load_secs,
            "engine_memory_bytes_after_load": rss_after.saturating_sub(rss_before),
            "memory_bytes_after_runs": rss_end.saturating_sub(rss_before),
            "tenant_first_use_p50_ns": percentile(&first_use, 50.0),
            "tenant_first_use_p99_ns": percentile(&first_use, 99.0),
        });
    }
    let runs: Vec<_> = results
        .iter()
        .map(|r| json!({"name": r.name, "p50_ns": r.p50_ns, "p99_ns": r.p99_ns, "p999_ns": r.p999_ns, "mean_ns": r.mean_ns}))
        .collect();
    report["runs"] = json!(runs);
    report["tenants"] = json!(tenant_count);
    report["decisions_per_run"] = json!(decisions);
    let p99 = |i: usize| results[i].p99_ns as f64;
    report["ratio_b_over_a_p99_cached"] = json!(p99(2) / p99(0));
    report["ratio_b_over_a_p99_uncached"] = json!(p99(3) / p99(1));
    eprintln!(
        "p99 ratio b/a: {:.2} (cache on), {:.2} (cache off)",
        p99(2) / p99(0),
        p99(3) / p99(1)
    );
    gateway_bench::emit_report(&report);
}
