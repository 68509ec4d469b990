//! What the fuzz targets share: the deployment of `fixture/` loaded the way `gateway run` loads
//! it, the input format of targets that take several parts, and the checks more than one
//! target asserts (see README.md for the targets and their properties).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use gateway::admission::Services;
use gateway::config::{LoadedConfig, SourceIssues, SourceText};
use gateway::identity::{Authenticator, JwksSettings};
use gateway::limits::Limiter;
use gateway::snapshot::{Snapshot, SnapshotStore};

/// `gateway/fuzz`.
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The repository's root.
pub fn repo_dir() -> PathBuf {
    normalise(&fuzz_dir().join("../.."))
}

/// `gateway/fuzz/fixture`: the deployment the targets run against.
pub fn fixture_dir() -> PathBuf {
    fuzz_dir().join("fixture")
}

/// The HMAC secret of the fixture's issuers (`fixture/issuer.secret`, without its newline).
pub fn issuer_secret() -> &'static [u8] {
    static SECRET: OnceLock<Vec<u8>> = OnceLock::new();
    SECRET.get_or_init(|| {
        let bytes = std::fs::read(fixture_dir().join("issuer.secret"))
            .unwrap_or_else(|e| panic!("fixture/issuer.secret: {e}"));
        bytes.trim_ascii_end().to_vec()
    })
}

/// The fixture deployment: configuration, snapshot and services, as `gateway run` builds them
/// (without listeners, background tasks or recorders).
pub struct Deployment {
    pub loaded: LoadedConfig,
    pub store: Arc<SnapshotStore>,
    pub services: Services,
    runtime: tokio::runtime::Runtime,
}

impl Deployment {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.store.load()
    }

    /// Runs a future of the request path (nothing in the fixture waits on the network).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

/// Loaded once per fuzzing process.
pub fn deployment() -> &'static Deployment {
    static DEPLOYMENT: OnceLock<Deployment> = OnceLock::new();
    DEPLOYMENT.get_or_init(|| {
        let path = fixture_dir().join("gateway.toml");
        let loaded = gateway::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let registry =
            gateway::snapshot::load_file_registry(&loaded).unwrap_or_else(|e| panic!("{e}"));
        let snapshot = Snapshot::build(&loaded, registry).unwrap_or_else(|e| panic!("{e}"));
        let config = &loaded.config;
        let services = Services {
            authenticator: Authenticator::new(JwksSettings::default(), 1024),
            geoip: None,
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap_or_else(|e| panic!("{e}"))],
            limiter: Arc::new(Limiter::new(config.limits.as_ref(), &config.tiers)),
            webhooks: None,
            entity_store: Default::default(),
            directory: Default::default(),
            sessions: None,
            budgets: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        Deployment {
            store: SnapshotStore::new(snapshot),
            loaded,
            services,
            runtime,
        }
    })
}

/// Splits an input of several parts at NUL bytes (seeds stay readable text files).
pub fn parts(data: &[u8]) -> Vec<&[u8]> {
    data.split(|&b| b == 0).collect()
}

/// Every problem a loader reports says where it is: a field path, or a line of its file (a
/// TOML syntax error has no field). `texts` are the files the load read, by path, to check
/// that lines and columns are inside them.
pub fn assert_located(issues: &SourceIssues, texts: &[&SourceText]) {
    assert!(!issues.0.is_empty(), "a refusal without any issue");
    let texts: HashMap<&Path, &str> = texts
        .iter()
        .map(|t| (t.path.as_path(), t.text.as_str()))
        .collect();
    for issue in &issues.0 {
        let shown = issue.to_string();
        assert!(
            !issue.field.is_empty() || issue.location.line.is_some(),
            "an issue that names neither field nor line: {shown:?}"
        );
        assert!(
            !issue.message.trim().is_empty(),
            "an issue without message: {shown:?}"
        );
        assert!(
            shown.starts_with(&issue.location.file.display().to_string()),
            "an issue that does not start with its file: {shown:?}"
        );
        if let (Some(line), Some(column), Some(text)) = (
            issue.location.line,
            issue.location.column,
            texts.get(issue.location.file.as_path()),
        ) {
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(
                line >= 1 && line <= lines.len(),
                "line {line} outside the file ({} lines): {shown:?}",
                lines.len()
            );
            let width = lines[line - 1].chars().count();
            assert!(
                column >= 1 && column <= width + 1,
                "column {column} outside line {line} ({width} characters): {shown:?}"
            );
        }
    }
}

/// `path` with `.` and `..` resolved lexically.
pub fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A route template (`matchit` syntax: `{name}`, `{*name}`, `{{`/`}}` for braces) with its
/// parameters filled in: the path a match of it was made on.
pub fn fill_template(template: &str, params: &[(String, String)]) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix('{') {
            let end = inner.find('}')?;
            let name = inner[..end].trim_start_matches('*');
            let value = params.iter().find(|(k, _)| k == name)?;
            out.push_str(&value.1);
            rest = &inner[end + 1..];
        } else {
            return None;
        }
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            fill_template("/a/{id}/b/{*rest}", &[p("id", "7"), p("rest", "x/y")]).as_deref(),
            Some("/a/7/b/x/y")
        );
        assert_eq!(fill_template("/{{x}}", &[]).as_deref(), Some("/{x}"));
        assert_eq!(fill_template("/{id}", &[]), None);
    }

    #[test]
    fn the_fixture_loads() {
        let d = deployment();
        assert!(d.snapshot().authz.is_some());
        assert_eq!(d.snapshot().registry.len(), 3);
    }
}
