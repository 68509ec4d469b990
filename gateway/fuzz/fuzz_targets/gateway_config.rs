//! `gateway.toml` from arbitrary text, through what `gateway check` runs: `config::load_source`,
//! the file registry (`snapshot::load_file_registry`) and `Snapshot::build` (policies,
//! routes, residency maps, keys), with the text placed at `fixture/gateway.toml`.
//!
//! Input: the file's text. So that a run reads nothing but the repository's example files and
//! asks no DNS server, inputs whose file paths leave `fixture/`, `policies/`,
//! `residency-maps/`, `deploy/` or `gateway/tests/data/`, or whose upstream peers are not
//! literal `ip:port` addresses, are skipped (they are not what is being tested).
//!
//! Properties:
//! - every refusal (of any of the files) names for each problem its file and a field or a line
//!   inside that file, with a message;
//! - an accepted configuration serialises back to TOML that is accepted again.
#![no_main]

use std::path::Path;

use gateway::config::{load_source, SourceText};
use gateway::snapshot::Snapshot;
use gateway_fuzz::{assert_located, fixture_dir, normalise, repo_dir};
use libfuzzer_sys::fuzz_target;

/// Keys whose values are paths (relative to the file).
const PATH_KEYS: &[&str] = &[
    "maps",
    "database",
    "policies",
    "key",
    "file",
    "ca_file",
    "state_dir",
    "cert",
    "dir",
    "token_file",
    "secret_file",
];

fn allowed(path: &Path) -> bool {
    let repo = repo_dir();
    let path = normalise(&fixture_dir().join(path));
    [
        fixture_dir(),
        repo.join("policies"),
        repo.join("residency-maps"),
        repo.join("deploy"),
        repo.join("gateway/tests/data"),
    ]
    .iter()
    .any(|dir| path.starts_with(dir))
}

/// The input stays among the example files and off the network.
fn in_bounds(value: &toml::Value, key: &str) -> bool {
    match value {
        toml::Value::String(s) if key == "peers" => s.parse::<std::net::SocketAddr>().is_ok(),
        toml::Value::String(s) if PATH_KEYS.contains(&key) => allowed(Path::new(s)),
        toml::Value::Array(items) => items.iter().all(|v| in_bounds(v, key)),
        toml::Value::Table(t) => t.iter().all(|(k, v)| in_bounds(v, k)),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(table) = text.parse::<toml::Table>() {
        if !table.iter().all(|(k, v)| in_bounds(v, k)) {
            return;
        }
    }
    let path = fixture_dir().join("gateway.toml");
    let source = SourceText::new(&path, text);
    let loaded = match load_source(source.clone()) {
        Ok(l) => l,
        Err(issues) => return assert_located(&issues, &[&source]),
    };
    let pg = loaded
        .config
        .tenancy
        .as_ref()
        .is_some_and(|t| t.registry.postgres.is_some());
    let registry = if pg {
        Default::default()
    } else {
        let tenants = loaded
            .config
            .tenancy
            .as_ref()
            .and_then(|t| t.registry.file.as_ref())
            .and_then(|f| SourceText::read(&loaded.resolve(f)).ok());
        match gateway::snapshot::load_file_registry(&loaded) {
            Ok(r) => r,
            Err(issues) => {
                let mut texts = vec![&source];
                texts.extend(tenants.as_ref());
                return assert_located(&issues, &texts);
            }
        }
    };
    if let Err(issues) = Snapshot::build(&loaded, registry) {
        // Policies, routes and maps are files of their own: lines are checked for this one.
        return assert_located(&issues, &[&source]);
    }
    let again = toml::to_string(&loaded.config)
        .unwrap_or_else(|e| panic!("an accepted configuration does not serialise: {e}"));
    if let Err(issues) = load_source(SourceText::new(&path, again.clone())) {
        panic!("accepted, serialised, refused:\n{issues}\n---\n{again}");
    }
});
