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
        "hpa.yaml",
        "pdb.yaml",
        "_helpers.tpl",
    ] {
        assert!(deploy(&format!("helm/policy-gateway/templates/{template}")).exists());
    }
    helm_chart_scales_and_shares_limits(&values[0]);
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
    // The image ships the build profile the benchmarks measure, and it exists.
    let manifest = std::fs::read_to_string(deploy("../Cargo.toml")).unwrap();
    assert!(manifest.contains("[profile.release-lto]"));
    assert!(
        dockerfile.contains("cargo build --profile release-lto")
            && dockerfile.contains("COPY --from=build /src/target/release-lto/gateway"),
        "Dockerfile builds and copies the release-lto binary"
    );
    let unit = std::fs::read_to_string(deploy("systemd/policy-gateway.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/gateway run",
        "ExecReload=/bin/kill -HUP",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(line), "{line}");
    }
}

/// A template of the Helm chart, as text (templates are not YAML until rendered).
fn helm_template(name: &str) -> String {
    std::fs::read_to_string(deploy(&format!("helm/policy-gateway/templates/{name}"))).unwrap()
}

/// The chart's autoscaler, disruption budget, Redis (Cluster) limits and NATS export: their
/// values exist, the templates produce the right kinds, the Deployment leaves `replicas` to the
/// autoscaler, and every gateway.toml key the chart writes is one the gateway knows.
fn helm_chart_scales_and_shares_limits(values: &Yaml) {
    let autoscaling = &values["autoscaling"];
    assert_eq!(
        autoscaling["enabled"].as_bool(),
        Some(false),
        "autoscaling.enabled"
    );
    for key in [
        "minReplicas",
        "maxReplicas",
        "targetCPUUtilizationPercentage",
    ] {
        assert!(autoscaling[key].as_i64().is_some(), "autoscaling.{key}");
    }
    assert!(
        autoscaling["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
            .as_i64()
            .is_some(),
        "autoscaling.behavior.scaleDown.stabilizationWindowSeconds"
    );
    let pdb = &values["podDisruptionBudget"];
    assert_eq!(
        pdb["enabled"].as_bool(),
        Some(true),
        "podDisruptionBudget.enabled"
    );
    for key in ["minAvailable", "maxUnavailable"] {
        assert!(!pdb[key].is_badvalue(), "podDisruptionBudget.{key}");
    }
    let limits = &values["limits"];
    assert!(limits["backend"].as_str().is_some(), "limits.backend");
    assert_eq!(limits["redis"]["mode"].as_str(), Some("standalone"));
    assert!(
        limits["redis"]["url"].as_str().is_some(),
        "limits.redis.url"
    );
    assert!(
        limits["redis"]["clusterNodes"].as_vec().is_some(),
        "limits.redis.clusterNodes"
    );
    assert_eq!(limits["fallback"].as_str(), Some("local-share"));
    assert!(!limits["replicas"].is_badvalue(), "limits.replicas");
    let nats = &values["usageExport"]["nats"];
    assert_eq!(
        nats["enabled"].as_bool(),
        Some(false),
        "usageExport.nats.enabled"
    );
    for key in ["url", "stream", "subjectPrefix", "duplicateWindow"] {
        assert!(nats[key].as_str().is_some(), "usageExport.nats.{key}");
    }
    assert!(nats["tokenSecret"]["name"].as_str().is_some());

    let hpa = helm_template("hpa.yaml");
    assert!(hpa.starts_with("{{- if .Values.autoscaling.enabled }}"));
    assert!(hpa.contains("\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\n"));
    assert!(hpa.contains("behavior:"));
    let pdb = helm_template("pdb.yaml");
    assert!(pdb.starts_with("{{- if .Values.podDisruptionBudget.enabled }}"));
    assert!(pdb.contains("\napiVersion: policy/v1\nkind: PodDisruptionBudget\n"));
    assert!(
        pdb.contains("{{- fail "),
        "minAvailable and maxUnavailable together fail the render"
    );
    // `replicas` only without the autoscaler, or every upgrade would reset its choice.
    let deployment = helm_template("deployment.yaml");
    let lines: Vec<&str> = deployment.lines().map(str::trim).collect();
    let replicas: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("replicas:"))
        .collect();
    assert_eq!(replicas.len(), 1, "one `replicas:` in deployment.yaml");
    let at = replicas[0];
    assert_eq!(lines[at], "replicas: {{ .Values.replicaCount }}");
    assert!(at > 0 && lines[at - 1] == "{{- if not .Values.autoscaling.enabled }}");
    assert_eq!(lines.get(at + 1).copied(), Some("{{- end }}"));

    // The tables the chart writes into gateway.toml: appended by the ConfigMap, with
    // `[limits] replicas` following replicaCount or the autoscaler's minimum.
    let configmap = helm_template("configmap.yaml");
    for helper in [
        "policy-gateway.limitsToml",
        "policy-gateway.usageExportToml",
    ] {
        assert!(
            configmap.contains(&format!("include \"{helper}\"")),
            "{helper}"
        );
    }
    let helpers = helm_template("_helpers.tpl");
    assert!(helpers.contains("{{- $n := .Values.replicaCount -}}"));
    assert!(helpers.contains("{{- $n = .Values.autoscaling.minReplicas -}}"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("gateway.schema.json")).unwrap())
            .unwrap();
    let defs = &schema["$defs"];
    let nats_exporter = defs["ExporterConfig"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["properties"]["kind"]["const"] == "nats")
        .expect("a NATS exporter in the schema");
    let written = chart_toml_keys(&helpers);
    for (table, key) in &written {
        let properties = match table.as_str() {
            "limits" => &defs["LimitsConfig"]["properties"],
            "metering" => &defs["MeteringConfig"]["properties"],
            "metering.exporter" => &nats_exporter["properties"],
            other => panic!("the chart writes [{other}], which this test does not know"),
        };
        assert!(
            properties.get(key.as_str()).is_some(),
            "the chart writes `{key}` in [{table}], which the gateway does not know"
        );
    }
    for (table, key) in [
        ("limits", "backend"),
        ("limits", "redis_url"),
        ("limits", "redis_cluster_nodes"),
        ("limits", "fallback"),
        ("limits", "replicas"),
        ("metering", "dir"),
        ("metering.exporter", "kind"),
        ("metering.exporter", "url"),
        ("metering.exporter", "stream"),
        ("metering.exporter", "subject_prefix"),
        ("metering.exporter", "token_env"),
    ] {
        assert!(
            written.contains(&(table.to_string(), key.to_string())),
            "the chart does not write `{key}` in [{table}]"
        );
    }
}

/// `(table, key)` of every `key = ...` line the chart's helpers write into gateway.toml, the
/// table being the last `[table]` or `[[table]]` header above it.
fn chart_toml_keys(helpers: &str) -> BTreeSet<(String, String)> {
    let mut table = String::new();
    let mut out = BTreeSet::new();
    for line in helpers.lines() {
        if let Some(header) = line
            .strip_prefix("[[")
            .and_then(|l| l.strip_suffix("]]"))
            .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))
        {
            table = header.to_string();
        } else if let Some((key, _)) = line.split_once(" = ") {
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                assert!(
                    !table.is_empty(),
                    "`{key}` before any table in _helpers.tpl"
                );
                out.insert((table.clone(), key.to_string()));
            }
        }
    }
    out
}

/// Every YAML document of a `deploy/` directory, by file name.
fn yaml_dir(dir: &str) -> Vec<(String, Vec<Yaml>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(deploy(dir)).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            let docs = yaml(&format!("{dir}/{name}"));
            assert!(!docs.is_empty(), "{dir}/{name}: no YAML document");
            for doc in &docs {
                assert!(
                    doc.as_hash().is_some(),
                    "{dir}/{name}: a document is not a mapping"
                );
            }
            out.push((name, docs));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The port of an `ip:port` listen address.
fn port_of(listen: &str) -> i64 {
    listen.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// `address:port` of every endpoint of an Envoy cluster.
fn cluster_endpoints(cluster: &Yaml) -> Vec<String> {
    let mut out = Vec::new();
    for group in cluster["load_assignment"]["endpoints"].as_vec().unwrap() {
        for lb in group["lb_endpoints"].as_vec().unwrap() {
            let socket = &lb["endpoint"]["address"]["socket_address"];
            out.push(format!(
                "{}:{}",
                socket["address"].as_str().unwrap(),
                socket["port_value"].as_i64().unwrap()
            ));
        }
    }
    out
}

/// deploy/envoy/envoy.yaml: the ext_authz filter asks the gateway's [ext_authz] listener of the
/// example deployment, fails closed and re-chooses the route after the check; its region routes
/// name regions of residency-maps/ and send each to the example pool of that region; a region
/// without a cluster is refused rather than served elsewhere. Validated by Envoy itself when
/// `envoy` is installed.
#[test]
fn envoy_bootstrap_asks_the_gateway_and_routes_by_region() {
    let files = yaml_dir("envoy");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["envoy.yaml"]);
    let bootstrap = &files[0].1[0];
    let example: gateway::config::GatewayConfig =
        toml::from_str(&std::fs::read_to_string(deploy("examples/gateway.toml")).unwrap()).unwrap();
    let maps = gateway::residency::ResidencyMaps::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../residency-maps"),
    )
    .unwrap();

    let admin = &bootstrap["admin"]["address"]["socket_address"];
    assert_eq!(admin["address"].as_str(), Some("127.0.0.1"));
    assert_eq!(admin["port_value"].as_i64(), Some(9902));

    let resources = &bootstrap["static_resources"];
    let listeners = resources["listeners"].as_vec().unwrap();
    assert_eq!(listeners.len(), 1);
    let listener = &listeners[0];
    assert_eq!(
        listener["address"]["socket_address"]["port_value"].as_i64(),
        Some(10000)
    );
    let filters = listener["filter_chains"][0]["filters"].as_vec().unwrap();
    let hcm = &filters[0]["typed_config"];
    assert_eq!(
        hcm["@type"].as_str(),
        Some("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
    );
    let http_filters = hcm["http_filters"].as_vec().unwrap();
    let filter_names: Vec<&str> = http_filters
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        filter_names,
        ["envoy.filters.http.ext_authz", "envoy.filters.http.router"],
        "the check runs before the router"
    );
    let ext_authz = &http_filters[0]["typed_config"];
    assert_eq!(
        ext_authz["@type"].as_str(),
        Some("type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
    );
    assert_eq!(ext_authz["transport_api_version"].as_str(), Some("V3"));
    assert_eq!(ext_authz["failure_mode_allow"].as_bool(), Some(false));
    assert_eq!(ext_authz["clear_route_cache"].as_bool(), Some(true));
    assert_eq!(ext_authz["include_peer_certificate"].as_bool(), Some(false));
    assert!(
        ext_authz["with_request_body"].is_badvalue(),
        "the gateway decides on the head; bodies are not buffered"
    );
    let authz_cluster_name = ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"]
        .as_str()
        .unwrap();
    assert_eq!(authz_cluster_name, "gateway_ext_authz");

    let clusters = resources["clusters"].as_vec().unwrap();
    let cluster = |name: &str| {
        clusters
            .iter()
            .find(|c| c["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no cluster `{name}`"))
    };
    let authz_cluster = cluster(authz_cluster_name);
    let door = example
        .ext_authz
        .as_ref()
        .expect("[ext_authz] in the example");
    assert_eq!(cluster_endpoints(authz_cluster), vec![door.listen.as_str()]);
    assert_eq!(port_of(&door.listen), 9191);
    let protocol = &authz_cluster["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert_eq!(
        protocol["@type"].as_str(),
        Some("type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    );
    assert!(
        protocol["explicit_http_config"]["http2_protocol_options"]
            .as_hash()
            .is_some(),
        "gRPC needs HTTP/2 to the gateway"
    );

    // Routes: one per region, then a refusal for any other region, then the default.
    let region_header = gateway::check::REGION_HEADER;
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        .as_vec()
        .unwrap();
    let mut regions = Vec::new();
    let mut refused_other_region = false;
    for (i, route) in routes.iter().enumerate() {
        let headers = route["match"]["headers"].as_vec();
        let Some(headers) = headers else {
            assert_eq!(i, routes.len() - 1, "the route without headers comes last");
            assert!(route["route"]["cluster"].as_str().is_some());
            continue;
        };
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0]["name"].as_str(), Some(region_header.as_str()));
        if let Some(region) = headers[0]["string_match"]["exact"].as_str() {
            assert!(
                !refused_other_region,
                "route for {region} after the catch-all"
            );
            assert!(
                maps.has_region(region),
                "{region} is not a region of residency-maps/regions.toml"
            );
            let pool = example
                .upstream
                .pool
                .iter()
                .find(|p| p.region.as_deref() == Some(region))
                .unwrap_or_else(|| panic!("no example pool in {region}"));
            let target = route["route"]["cluster"].as_str().unwrap();
            assert_eq!(
                cluster_endpoints(cluster(target)),
                pool.peers,
                "the cluster of {region} is the example pool `{}`",
                pool.name
            );
            regions.push(region);
        } else {
            assert_eq!(headers[0]["present_match"].as_bool(), Some(true));
            assert_eq!(route["direct_response"]["status"].as_i64(), Some(503));
            refused_other_region = true;
        }
    }
    assert_eq!(regions, ["eu-central", "us-east"]);
    assert!(
        refused_other_region,
        "a region without a cluster must not fall through to the default route"
    );

    let path = deploy("envoy/envoy.yaml");
    match std::process::Command::new("envoy")
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "envoy --mode validate: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("note: envoy is not installed; deploy/envoy/envoy.yaml was checked by structure only, not by `envoy --mode validate`");
        }
        Err(e) => panic!("envoy: {e}"),
    }
}

/// deploy/istio/: the CUSTOM AuthorizationPolicy names the provider mesh-config.yaml
/// registers, which points at the gateway's Service and [ext_authz] port; the deployment runs
/// the sidecar example's image with a gRPC readiness probe, and its gateway.toml passes the real
/// loader except for what only the cluster provides (secret, git checkout, cluster DNS).
#[test]
fn istio_manifests_name_one_provider_and_a_valid_gateway() {
    let files = yaml_dir("istio");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "authorization-policy.yaml",
            "gateway-deployment.yaml",
            "mesh-config.yaml"
        ]
    );
    let docs = |name: &str| &files.iter().find(|(n, _)| n == name).unwrap().1;
    for (name, docs) in &files {
        for doc in docs {
            assert!(
                doc["apiVersion"].as_str().is_some() && doc["kind"].as_str().is_some(),
                "{name}: every document has apiVersion and kind"
            );
        }
    }

    // The provider.
    let mesh = &docs("mesh-config.yaml")[0];
    assert_eq!(mesh["kind"].as_str(), Some("IstioOperator"));
    let providers = mesh["spec"]["meshConfig"]["extensionProviders"]
        .as_vec()
        .unwrap();
    assert_eq!(providers.len(), 1);
    let provider_name = providers[0]["name"].as_str().unwrap();
    let grpc = &providers[0]["envoyExtAuthzGrpc"];
    let service_host = grpc["service"].as_str().unwrap();
    let provider_port = grpc["port"].as_i64().unwrap();
    assert_eq!(provider_port, 9191);
    assert_eq!(grpc["failOpen"].as_bool(), Some(false));
    assert!(grpc["includeRequestBodyInCheck"].is_badvalue());

    // The CUSTOM policy.
    let policies = docs("authorization-policy.yaml");
    assert_eq!(policies.len(), 1);
    let policy = &policies[0];
    assert_eq!(policy["apiVersion"].as_str(), Some("security.istio.io/v1"));
    assert_eq!(policy["kind"].as_str(), Some("AuthorizationPolicy"));
    assert_eq!(policy["spec"]["action"].as_str(), Some("CUSTOM"));
    assert_eq!(
        policy["spec"]["provider"]["name"].as_str(),
        Some(provider_name)
    );
    assert!(!policy["spec"]["rules"].as_vec().unwrap().is_empty());
    let protected_namespace = policy["metadata"]["namespace"].as_str().unwrap();

    // The gateway.
    let deployment_docs = docs("gateway-deployment.yaml");
    let kinds: Vec<&str> = deployment_docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Deployment", "Service", "AuthorizationPolicy"]
    );
    let (config_map, deployment, service, callers) = (
        &deployment_docs[0],
        &deployment_docs[1],
        &deployment_docs[2],
        &deployment_docs[3],
    );
    assert_eq!(
        format!(
            "{}.{}.svc.cluster.local",
            service["metadata"]["name"].as_str().unwrap(),
            service["metadata"]["namespace"].as_str().unwrap()
        ),
        service_host,
        "mesh-config.yaml names the gateway's Service"
    );
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["port"].as_i64(), Some(provider_port));
    assert_eq!(service_port["appProtocol"].as_str(), Some("grpc"));
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&service["spec"]["selector"], pod_labels);
    assert_ne!(
        &policy["spec"]["selector"]["matchLabels"], pod_labels,
        "the gateway must not be asked about its own checks"
    );
    // Only the protected workloads' sidecars may ask.
    assert_eq!(callers["spec"]["action"].as_str(), Some("ALLOW"));
    assert_eq!(&callers["spec"]["selector"]["matchLabels"], pod_labels);
    let rule = callers["spec"]["rules"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|r| r["to"][0]["operation"]["ports"][0].as_str() == Some("9191"))
        .expect("a rule for the ext_authz port");
    let namespaces: Vec<&str> = rule["from"][0]["source"]["namespaces"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(namespaces, [protected_namespace]);

    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let gateway = pod["containers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("gateway"))
        .unwrap();
    let sidecar_image = yaml("k8s/sidecar.yaml")[1]["spec"]["template"]["spec"]["containers"][1]
        ["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(gateway["image"].as_str(), Some(sidecar_image.as_str()));
    assert_eq!(
        gateway["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        gateway["readinessProbe"]["grpc"]["port"].as_i64(),
        Some(provider_port)
    );
    assert_eq!(
        gateway["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let container_port = |name: &str| {
        gateway["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
    };
    assert_eq!(container_port("grpc"), Some(provider_port));
    let config_path = gateway["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .skip_while(|a| *a != "--config")
        .nth(1)
        .unwrap();
    assert_eq!(config_path, "/etc/gateway/gateway.toml");

    // Its gateway.toml: the loader's own parse, then the whole validation.
    let toml_text = config_map["data"]["gateway.toml"].as_str().unwrap();
    let source = gateway::config::SourceText::new(config_path, toml_text);
    let config: gateway::config::GatewayConfig = source
        .deserialize()
        .unwrap_or_else(|e| panic!("istio gateway.toml: {e}"));
    let ext_authz = config.ext_authz.as_ref().expect("[ext_authz]");
    assert_eq!(port_of(&ext_authz.listen), provider_port);
    assert!(config.forward_auth.is_none(), "Envoy is the only client");
    let admin = config.admin.as_ref().expect("[admin] for /healthz");
    assert_eq!(container_port("admin"), Some(port_of(&admin.listen)));
    for listen in &config.server.listen {
        assert!(
            listen.starts_with("127.0.0.1:"),
            "the inline proxy stays on the pod's loopback: {listen}"
        );
    }
    let maps = gateway::residency::ResidencyMaps::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../residency-maps"),
    )
    .unwrap();
    for pool in &config.upstream.pool {
        let region = pool.region.as_deref().expect("pools name their region");
        assert!(maps.has_region(region), "{region}");
    }
    // With a read-only root file system, every path the gateway reads is on a volume and every
    // directory it writes on a writable one.
    let mounts: Vec<(PathBuf, bool)> = gateway["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| {
            (
                PathBuf::from(m["mountPath"].as_str().unwrap()),
                m["readOnly"].as_bool() != Some(true),
            )
        })
        .collect();
    let mounted = |path: &Path, write: bool| {
        mounts
            .iter()
            .any(|(mount, writable)| path.starts_with(mount) && (*writable || !write))
    };
    let mut read = vec![PathBuf::from(config_path), admin.token_file.clone()];
    read.extend(config.authorization.as_ref().map(|a| a.policies.clone()));
    read.extend(config.residency.as_ref().map(|r| r.maps.clone()));
    for path in &read {
        assert!(mounted(path, false), "{} is on no volume", path.display());
    }
    let mut written = vec![config.server.state_dir.clone()];
    written.extend(config.metering.as_ref().map(|m| m.dir.clone()));
    written.extend(config.audit.as_ref().map(|a| a.dir.clone()));
    for path in &written {
        assert!(
            mounted(path, true),
            "{} is on no writable volume",
            path.display()
        );
    }
    // The registry's URL comes from a Secret through the container's environment.
    let url_env = config
        .tenancy
        .as_ref()
        .and_then(|t| t.registry.postgres.as_ref())
        .and_then(|pg| pg.url_env.clone());
    if let Some(var) = &url_env {
        let declared = gateway["env"]
            .as_vec()
            .unwrap()
            .iter()
            .any(|e| e["name"].as_str() == Some(var.as_str()));
        assert!(declared, "the container sets {var}");
    }
    if let Err(issues) = gateway::config::load_source(source) {
        let in_cluster_only = |field: &str| {
            field == "admin.token_file"
                || field == "authorization.policies"
                || (field == "tenancy.registry.postgres" && url_env.is_some())
                || (field.starts_with("upstream.pool[") && field.contains("].peers["))
        };
        for issue in &issues.0 {
            assert!(in_cluster_only(&issue.field), "istio gateway.toml: {issue}");
            println!("istio gateway.toml, left to the cluster: {issue}");
        }
    }
}

/// A `rust-version` ("1.95" or "1.95.0") as (major, minor, patch).
fn rust_version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|p| p.parse::<u64>().unwrap());
    (
        parts.next().unwrap(),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// The workspace's `rust-version` is one that builds it: no locked dependency of this platform
/// asks for a newer rustc (the container image's build would fail on the declared version), and
/// the Dockerfile, the README and `scripts/ensure-deps` name that same version.
#[test]
fn the_declared_rust_version_builds_the_locked_dependencies_and_the_image_uses_it() {
    let manifest: toml::Table = std::fs::read_to_string(deploy("../Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let declared = manifest["workspace"]["package"]["rust-version"]
        .as_str()
        .unwrap()
        .to_string();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .unwrap();
    let host = String::from_utf8(rustc.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .unwrap();
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", &host])
        .current_dir(deploy(".."))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resolved: BTreeSet<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    let too_new: Vec<String> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| resolved.contains(p["id"].as_str().unwrap()))
        .filter_map(|p| {
            let wanted = p["rust_version"].as_str()?;
            (rust_version(wanted) > rust_version(&declared)).then(|| {
                format!(
                    "{} {} needs rustc {wanted}",
                    p["name"].as_str().unwrap(),
                    p["version"].as_str().unwrap()
                )
            })
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "Cargo.toml declares rust-version {declared}, but {too_new:?}"
    );
    assert!(
        resolved.len() > 100,
        "the dependency graph was read: {}",
        resolved.len()
    );

    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("\nFROM rust:{declared}-")),
        "deploy/Dockerfile builds with rust:{declared}"
    );
    let readme = std::fs::read_to_string(deploy("../README.md")).unwrap();
    assert!(readme.contains(&format!("Rust ({declared}+)")), "README");
    let ensure_deps = std::fs::read_to_string(deploy("../scripts/ensure-deps")).unwrap();
    assert!(
        ensure_deps.contains(&format!("version {declared} or newer")),
        "scripts/ensure-deps"
    );
}
