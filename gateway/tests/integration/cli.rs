//! The command line: `check` validates, malformed configs exit 2 with file/line/field.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::Command;

use crate::common::gateway_bin;

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn check_accepts_the_example_config() {
    let out = Command::new(gateway_bin())
        .args(["check", "--config"])
        .arg(repo_file("deploy/examples/gateway.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn malformed_configs_exit_2_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        // (config text, expected "file:line" suffix, expected field/message fragment)
        ("[server]\nlisten = [\"127.0.0.1:1\"\n", ":2:", ""),
        (
            "[server]\nlisten = [\"127.0.0.1:1\"]\nthreads = \"many\"\n[[upstream.pool]]\nname = \"a\"\npeers = [\"127.0.0.1:2\"]\n",
            ":3:",
            "server.threads",
        ),
        (
            "[server]\nlisten = [\"localhost\"]\n[[upstream.pool]]\nname = \"a\"\npeers = [\"127.0.0.1:2\"]\n",
            ":2:",
            "server.listen[0]",
        ),
        (
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[upstream.pool]]\nname = \"a\"\npeers = [\"127.0.0.1:2\"]\nbogus = 1\n",
            ":6:",
            "bogus",
        ),
    ];
    for (i, (text, line, field)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        for command in ["check", "run"] {
            let out = Command::new(gateway_bin())
                .args([command, "--config"])
                .arg(&path)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command} case {i}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            let expected = format!("bad{i}.toml{line}");
            assert!(
                stderr.contains(&expected),
                "case {i}: expected {expected} in: {stderr}"
            );
            assert!(
                stderr.contains(field),
                "case {i}: expected {field} in: {stderr}"
            );
        }
    }
}

/// A tenant's own quota with the in-process limiter (each replica would count it apart and a
/// restart reset it) is refused, as a tier's is, naming the tenant and the field.
#[test]
fn a_tenant_quota_without_redis_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tenants.toml"),
        "[[tenant]]\nid = \"acme\"\nlimits = { daily_requests = 1000 }\n",
    )
    .unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:1\"]\n\
         [tenancy]\nsources = [\"header\"]\nregistry = { file = \"tenants.toml\" }\n\
         [limits]\nbackend = \"local\"\n\
         [[upstream.pool]]\nname = \"a\"\npeers = [\"127.0.0.1:2\"]\n",
    )
    .unwrap();
    let out = Command::new(gateway_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tenants.toml:3")
            && stderr.contains("limits.daily_requests")
            && stderr.contains("backend = \"redis\""),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_exits_2() {
    let out = Command::new(gateway_bin())
        .args(["check", "--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gateway.toml"));
}

#[test]
fn port_in_use_is_a_clear_start_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = [\"{addr}\"]\n[[upstream.pool]]\nname = \"a\"\npeers = [\"127.0.0.1:2\"]\n"),
    )
    .unwrap();
    let out = Command::new(gateway_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&addr.to_string()) && stderr.contains("server.listen"),
        "{stderr}"
    );
}
