//! `explain` reports what the gateway does: every case of `policy-tests/` and every request line
//! of the demo is sent once to `POST /admin/explain` and once to the gateway itself (the example
//! deployment, in front of example upstreams), and the two answers must agree — forwarded or
//! refused, with the same status and problem type.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::common;
use std::collections::BTreeMap;

use crate::common::example::{
    demo_cases, example_config, example_file, live_outcome, policy_test_cases, token, Routes,
};
use crate::common::{
    client, free_addr, parse_status_and_body, raw_exchange, upstream, TestGateway,
};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_live_gateway_on_every_policy_test_and_demo_request() {
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let admin = free_addr();
    let gw = TestGateway::start(
        &example_config(admin, eu.addr, us.addr),
        &[
            ("demo-issuer.secret", &example_file("demo-issuer.secret")),
            ("demo-admin.token", &example_file("demo-admin.token")),
            ("tenants.toml", &example_file("tenants.toml")),
        ],
    );
    let admin_token = String::from_utf8(example_file("demo-admin.token")).unwrap();
    let http = client();
    let routes = Routes::load();
    let (mut cases, unroutable) = policy_test_cases(&routes);
    let from_policy_tests = cases.len();
    assert!(
        from_policy_tests >= 120,
        "only {from_policy_tests} policy-test cases became requests; unroutable: {unroutable:?}"
    );
    cases.extend(demo_cases());

    let mut disagreements = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for case in &cases {
        let explained: Value = http
            .post(format!("http://{admin}/admin/explain"))
            .bearer_auth(admin_token.trim_end())
            .json(&json!({
                "method": case.method,
                "path": case.target,
                "headers": case.headers.iter().cloned().collect::<BTreeMap<_, _>>(),
                "peer": "127.0.0.1",
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let explained_outcome = match explained["status"].as_u64() {
            Some(200) => None,
            Some(status) => Some((
                status as u16,
                explained["problem"].as_str().unwrap_or("").to_string(),
            )),
            None => panic!("{}: explain answered {explained}", case.name),
        };
        let mut request = format!(
            "{} {} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n",
            case.method, case.target
        );
        for (k, v) in &case.headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        let raw = raw_exchange(gw.addr, request.as_bytes());
        let (status, body) = parse_status_and_body(&raw);
        let content_type = raw
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default();
        let live = live_outcome(status, &content_type, &body);
        *kinds
            .entry(match &live {
                None => "forwarded".to_string(),
                Some((s, p)) => format!("{s} {p}"),
            })
            .or_default() += 1;
        if live != explained_outcome {
            disagreements.push(format!(
                "{}: {} {}\n  live: {live:?}\n  explain: {explained_outcome:?} ({})",
                case.name, case.method, case.target, explained["reason"]
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} requests: explain and the gateway disagree\n{}\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n"),
        gw.log()
    );
    // The comparison covers allowed, denied and refused-by-other-stage requests alike.
    assert!(
        kinds.get("forwarded").copied().unwrap_or(0) >= 20,
        "{kinds:?}"
    );
    assert!(
        kinds.get("403 forbidden").copied().unwrap_or(0) >= 20,
        "{kinds:?}"
    );
    for kind in [
        "403 feature-not-in-tier",
        "451 residency-violation",
        "400 bad-path",
    ] {
        assert!(kinds.contains_key(kind), "no `{kind}` among {kinds:?}");
    }

    // The CLI runs the same path: the example, a free-tier export.
    let carol = token("carol", Some("globex"), &["editor".to_string()], false);
    let out = std::process::Command::new(common::gateway_bin())
        .args(["explain", "--config"])
        .arg(&gw.config_path)
        .args([
            "--method",
            "POST",
            "--path",
            "/documents/7/export",
            "--token",
        ])
        .arg(&carol)
        .output()
        .unwrap();
    let explanation: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    assert_eq!(explanation["outcome"], "deny", "{explanation}");
    assert_eq!(explanation["status"], 403, "{explanation}");
    assert_eq!(
        explanation["problem"], "feature-not-in-tier",
        "{explanation}"
    );
    eprintln!(
        "{} requests ({from_policy_tests} from policy-tests, {} not routable: {unroutable:?}): {kinds:?}",
        cases.len(),
        unroutable.len()
    );
}
