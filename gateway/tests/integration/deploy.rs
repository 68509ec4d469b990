//! The deployment files in `deploy/` stay usable: YAML parses, the embedded gateway.toml is a
//! valid configuration, and every metric the dashboard and the alert rules query is one the
//! gateway exports.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn yaml(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(deploy(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every metric the gateway declares (`gateway_engine::telemetry`).
fn exported_metrics() -> BTreeSet<String> {
    gateway::telemetry::ALL
        .iter()
        .map(|m| m.name.to_string())
        .collect()
}

/// The Rust sources of every crate of the gateway: the engine, the front doors and the CLI.
fn gateway_sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    for dir in ["src", "engine/src", "proxy/src", "admin/src"] {
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut out);
    }
    out
}

/// Metric names are declared once, in `telemetry.rs`: no recording call names one itself, and
/// every declared metric is recorded somewhere.
#[test]
fn metrics_are_declared_once_and_all_recorded() {
    let sources = gateway_sources();
    for (path, text) in &sources {
        if path.ends_with("telemetry.rs") {
            continue;
        }
        for part in text
            .split("!(")
            .skip(1)
            .chain(text.split("StaticCounters::new(").skip(1))
        {
            let part = part.trim_start();
            assert!(
                !part.starts_with("\"gateway_"),
                "{}: a metric named by a string literal; declare it in telemetry.rs",
                path.display()
            );
        }
    }
    // Every declared constant is used by some recording code.
    let telemetry = sources
        .iter()
        .find(|(p, _)| p.ends_with("telemetry.rs"))
        .map(|(_, t)| t.clone())
        .unwrap();
    for line in telemetry.lines() {
        let Some(rest) = line.strip_prefix("pub const ") else {
            continue;
        };
        let Some((constant, _)) = rest.split_once(':') else {
            continue;
        };
        if constant == "ALL" {
            continue;
        }
        let used = sources.iter().any(|(p, t)| {
            !p.ends_with("telemetry.rs") && t.contains(&format!("telemetry::{constant}"))
        });
        assert!(used, "telemetry::{constant} is declared but never recorded");
    }
}

/// Metric names a PromQL expression uses (histogram series suffixes removed).
fn queried_metrics(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(start) = expr[i..].find("gateway_").map(|p| p + i) {
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(base.to_string());
        i = end;
    }
    out
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported = exported_metrics();
    assert!(exported.contains("gateway_requests_total"), "{exported:?}");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/gateway-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(queried_metrics(target["expr"].as_str().unwrap()));
        }
    }
    let alerts = yaml("prometheus/alerts.yaml");
    let mut alert_count = 0;
    for group in alerts[0]["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            assert!(
                rule["alert"].as_str().is_some()
                    && rule["annotations"]["summary"].as_str().is_some()
            );
            queried.extend(queried_metrics(rule["expr"].as_str().unwrap()));
            alert_count += 1;
        }
    }
    assert!(alert_count >= 8);
    assert!(queried.len() >= 20);
    let unknown: Vec<&String> = queried.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(
        unknown.is_empty(),
        "queried but never exported: {unknown:?}"
    );
}

#[test]
fn sidecar_manifest_is_complete_and_its_config_is_valid() {
    let docs = yaml("k8s/sidecar.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ConfigMap", "Deployment", "Service"]);
    let toml_text = docs[0]["data"]["gateway.toml"].as_str().unwrap();
    let config: gateway::config::GatewayConfig =
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("sidecar gateway.toml: {e}"));
    let admin = config.admin.expect("admin listener for the probes");
    let pod = &docs[1]["spec"]["template"]["spec"];
    let containers = pod["containers"].as_vec().unwrap();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app", "gateway", "git-sync"]);
    let gateway = &containers[1];
    assert_eq!(
        gateway["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert!(admin.listen.ends_with(":9901"));
    let admin_port = gateway["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("admin"))
        .and_then(|p| p["containerPort"].as_i64());
    assert_eq!(admin_port, Some(9901));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
}

#[test]
fn helm_chart_container_and_systemd_files_are_sound() {
    let chart = yaml("helm/policy-gateway/Chart.yaml");
    assert_eq!(chart[0]["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart[0]["name"].as_str(), Some("policy-gateway"));
    let values = yaml("helm/policy-gateway/values.yaml");
    let config_text = values[0]["config"].as_str().unwrap();
    // The chart adds [server], [admin] and the upstream pool around the user's part.
    let whole = format!(
        "[server]\nlisten = [\"0.0.0.0:8080\"]\n[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_file = \"t\"\n[upstream]\n[[upstream.pool]]\nname = \"app\"\npeers = [\"a:80\"]\n{config_text}"
    );
    toml::from_str::<gateway::config::GatewayConfig>(&whole)
        .unwrap_or_else(|e| panic!("helm values config: {e}"));
    for template in [
        "configmap.yaml",
        "deployment.yaml",
        "secret.yaml",
        "_helpers.tpl",
    ] {
        assert!(deploy(&format!("helm/policy-gateway/templates/{template}")).exists());
    }
    if let Ok(out) = std::process::Command::new("helm")
        .arg("lint")
        .arg(deploy("helm/policy-gateway"))
        .output()
    {
        assert!(
            out.status.success(),
            "helm lint: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    assert_eq!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM")),
        2,
        "multi-stage"
    );
    assert!(dockerfile.contains("USER 10001"), "runs as non-root");
    let unit = std::fs::read_to_string(deploy("systemd/policy-gateway.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/gateway run",
        "ExecReload=/bin/kill -HUP",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(line), "{line}");
    }
}
