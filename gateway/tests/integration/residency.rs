//! Data residency through the real gateway: several real upstreams on loopback labelled by
//! region; home-region routing, failover inside the regime, 503 instead of a leak, pinned routes
//! (451), client geography from GeoIP behind trusted proxies, and GeoIP hot reload.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::common;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::common::{client, eventually, upstream, TestGateway};
use gateway::example_upstream::ExampleUpstream;

const TENANTS: &str = r#"
[[tenant]]
id = "eurocorp"
regime = "gdpr"
home_region = "eu-central"

[[tenant]]
id = "usco"
regime = "ccpa"
home_region = "us-east"

[[tenant]]
id = "indus"
regime = "dpdp"
home_region = "in-west"

[[tenant]]
id = "wanderer"
regime = "none"
"#;

struct Regions {
    eu_central: Vec<ExampleUpstream>,
    eu_west: ExampleUpstream,
    us_east: Vec<ExampleUpstream>,
    in_west: ExampleUpstream,
}

async fn regions() -> Regions {
    Regions {
        eu_central: vec![upstream("eu-central").await, upstream("eu-central").await],
        eu_west: upstream("eu-west").await,
        us_east: vec![upstream("us-east").await, upstream("us-east").await],
        in_west: upstream("in-west").await,
    }
}

fn pool(name: &str, peers: &[SocketAddr]) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[[upstream.pool]]\nname = \"{name}\"\nregion = \"{name}\"\npeers = [{}]\n",
        peers.join(", ")
    )
}

fn start(r: &Regions, geoip_file: &str) -> TestGateway {
    let maps = Path::new(env!("CARGO_MANIFEST_DIR")).join("../residency-maps");
    let config = format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
grace_period = "1s"
shutdown_timeout = "1s"

[tenancy]
sources = ["header"]
registry = {{ file = "tenants.toml" }}

[residency]
maps = "{maps}"
[[residency.pin]]
path = "/analytics/{{*rest}}"
region = "us-east"

[audit]
dir = "audit"

[geoip]
database = "geo.mmdb"
trusted_proxies = ["127.0.0.1/32"]
reload_interval = "200ms"

[upstream]
connect_timeout = "300ms"
connect_retries = 3
[upstream.health_check]
interval = "200ms"

{}{}{}{}"#,
        pool(
            "eu-central",
            &r.eu_central.iter().map(|u| u.addr).collect::<Vec<_>>()
        ),
        pool("eu-west", &[r.eu_west.addr]),
        pool(
            "us-east",
            &r.us_east.iter().map(|u| u.addr).collect::<Vec<_>>()
        ),
        pool("in-west", &[r.in_west.addr]),
        maps = maps.display(),
    );
    let geo = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(geoip_file),
    )
    .unwrap();
    TestGateway::start(
        &config,
        &[("tenants.toml", TENANTS.as_bytes()), ("geo.mmdb", &geo)],
    )
}

/// Status and serving region of one request.
async fn call(
    gw: &TestGateway,
    tenant: &str,
    path: &str,
    forwarded_for: Option<&str>,
) -> (u16, String, String) {
    let mut req = client().get(gw.url(path)).header("x-tenant", tenant);
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let region = res
        .headers()
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, region, res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_are_served_in_their_home_region() {
    let r = regions().await;
    let gw = start(&r, "geoip2-layout.mmdb");
    for (tenant, region) in [
        ("eurocorp", "eu-central"),
        ("usco", "us-east"),
        ("indus", "in-west"),
    ] {
        for _ in 0..4 {
            let (status, served, body) = call(&gw, tenant, "/data", None).await;
            assert_eq!((status, served.as_str()), (200, region), "{tenant}: {body}");
        }
    }
    // Round robin inside the home region.
    assert!(r.eu_central.iter().all(|u| u.served() >= 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_stays_inside_the_regime_and_never_leaks() {
    let r = regions().await;
    let gw = start(&r, "geoip2-layout.mmdb");
    assert_eq!(call(&gw, "eurocorp", "/data", None).await.1, "eu-central");
    let us_before: u64 = r.us_east.iter().map(|u| u.served()).sum();

    // The home region goes down: requests move to eu-west, without a single failure.
    for u in &r.eu_central {
        u.stop();
    }
    for _ in 0..20 {
        let (status, served, body) = call(&gw, "eurocorp", "/data", None).await;
        assert_eq!((status, served.as_str()), (200, "eu-west"), "{body}");
    }
    // Every EU peer is down: 503, and nothing went to us-east although it is healthy.
    r.eu_west.stop();
    for _ in 0..10 {
        let (status, _, body) = call(&gw, "eurocorp", "/data", None).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("no-healthy-upstream"), "{body}");
    }
    let us_after: u64 = r.us_east.iter().map(|u| u.served()).sum();
    assert_eq!(us_before, us_after, "a GDPR request leaked to us-east");
    // Other tenants are unaffected.
    assert_eq!(call(&gw, "usco", "/data", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_routes_outside_the_regime_are_451_with_a_reason() {
    let r = regions().await;
    let gw = start(&r, "geoip2-layout.mmdb");
    let (status, _, body) = call(&gw, "eurocorp", "/analytics/daily", None).await;
    assert_eq!(status, 451, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        problem["type"],
        "tag:policy-gateway,2026:problem/residency-violation"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("us-east") && detail.contains("gdpr"),
        "{detail}"
    );
    // A tenant whose regime allows us-east is served there.
    let (status, served, _) = call(&gw, "usco", "/analytics/daily", None).await;
    assert_eq!((status, served.as_str()), (200, "us-east"));
    // DPDP allows only in-west: pinned elsewhere is refused too.
    assert_eq!(call(&gw, "indus", "/analytics/daily", None).await.0, 451);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_geography_prefers_the_nearest_allowed_region_only() {
    let r = regions().await;
    let gw = start(&r, "geoip2-layout.mmdb");
    // A tenant without home or restriction is served nearest its client (through a trusted
    // proxy hop: the gateway reads X-Forwarded-For from 127.0.0.1).
    for (client, region) in [
        ("49.1.2.3", "in-west"),
        ("5.6.7.8", "eu-central"),
        ("8.8.8.8", "us-east"),
    ] {
        let (status, served, _) = call(&gw, "wanderer", "/data", Some(client)).await;
        assert_eq!((status, served.as_str()), (200, region), "client {client}");
    }
    // Client geography never overrides residency: an Indian client of a GDPR tenant stays in the EU.
    let (status, served, _) = call(&gw, "eurocorp", "/data", Some("49.1.2.3")).await;
    assert_eq!((status, served.as_str()), (200, "eu-central"));
    // A Japanese client: no jp-east pool, so the regime's order applies.
    let (status, served, _) = call(&gw, "wanderer", "/data", Some("126.0.0.1")).await;
    assert_eq!((status, served.as_str()), (200, "eu-central"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_geoip_database_reloads_when_replaced() {
    let r = regions().await;
    let gw = start(&r, "flat-layout.mmdb");
    assert_eq!(
        call(&gw, "wanderer", "/data", Some("49.1.2.3")).await.1,
        "in-west"
    );
    let target = gw.dir.path().join("geo.mmdb");
    // A broken replacement is refused; the previous database keeps answering.
    std::fs::write(&target, b"not a database").unwrap();
    eventually(Duration::from_secs(5), || async {
        gw.settled_log().contains("unreadable")
    })
    .await
    .expect("broken database refused");
    assert_eq!(
        call(&gw, "wanderer", "/data", Some("49.1.2.3")).await.1,
        "in-west"
    );
    // A good replacement (the other record layout) is picked up.
    let replacement = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/geoip2-layout.mmdb");
    let staged = gw.dir.path().join("geo.mmdb.new");
    std::fs::copy(replacement, &staged).unwrap();
    std::fs::rename(&staged, &target).unwrap();
    eventually(Duration::from_secs(5), || async {
        gw.settled_log().contains("GeoIP database reloaded")
    })
    .await
    .expect("database reloaded");
    assert_eq!(
        call(&gw, "wanderer", "/data", Some("5.6.7.8")).await.1,
        "eu-central"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn residency_report_shows_where_each_tenants_traffic_was_served() {
    let r = regions().await;
    let gw = start(&r, "geoip2-layout.mmdb");
    for _ in 0..3 {
        assert_eq!(call(&gw, "eurocorp", "/data", None).await.0, 200);
        assert_eq!(call(&gw, "usco", "/data", None).await.0, 200);
    }
    assert_eq!(call(&gw, "eurocorp", "/analytics/x", None).await.0, 451);
    r.eu_central[0].stop();
    r.eu_central[1].stop();
    assert_eq!(call(&gw, "eurocorp", "/data", None).await.1, "eu-west");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = std::process::Command::new(common::gateway_bin())
        .args(["residency-report", "--config"])
        .arg(&gw.config_path)
        .args(["--from", "2020-01-01", "--to", "2100-01-01"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let find = |tenant: &str, region: &str| {
        rows.iter()
            .find(|row| row["tenant"] == tenant && row["region"] == region)
            .cloned()
            .unwrap_or_else(|| panic!("no row {tenant}/{region} in {rows:?}"))
    };
    assert_eq!(find("eurocorp", "eu-central")["requests"], 3);
    assert_eq!(find("eurocorp", "eu-west")["requests"], 1);
    assert_eq!(find("eurocorp", "-")["refused_for_residency"], 1);
    assert_eq!(find("usco", "us-east")["requests"], 3);
    // A GDPR tenant's traffic was never served outside the EU.
    assert!(rows
        .iter()
        .filter(|row| row["tenant"] == "eurocorp")
        .all(|row| ["eu-central", "eu-west", "-"].contains(&row["region"].as_str().unwrap())));
}
