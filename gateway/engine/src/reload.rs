//! Hot reload: the policy package (and a file-based tenant registry) are rebuilt off the request
//! path and swapped in atomically when their files change, on SIGHUP, or through the admin API.
//! A package that fails to parse or validate is refused with file and line, and the old one keeps
//! serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::authz::AuthzEngine;
use crate::config::LoadedConfig;
use crate::snapshot::SnapshotStore;
use crate::tenancy::registry;

/// What can be reloaded, and from where.
#[derive(Clone)]
pub struct Reloader {
    store: Arc<SnapshotStore>,
    policies: Option<PathBuf>,
    decision_cache_capacity: u64,
    tenants_file: Option<PathBuf>,
    watch: bool,
}

/// The outcome of one reload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub ok: bool,
    pub policy_version: Option<String>,
    pub tenants: usize,
    pub errors: Vec<String>,
    pub duration_ms: u64,
}

impl Reloader {
    pub fn new(store: Arc<SnapshotStore>, loaded: &LoadedConfig) -> Self {
        let authz = loaded.config.authorization.as_ref();
        Reloader {
            store,
            policies: authz.map(|a| loaded.resolve(&a.policies)),
            decision_cache_capacity: authz.map(|a| a.decision_cache_capacity).unwrap_or(0),
            tenants_file: loaded
                .config
                .tenancy
                .as_ref()
                .and_then(|t| t.registry.file.as_ref())
                .map(|f| loaded.resolve(f)),
            watch: authz.is_some_and(|a| a.watch),
        }
    }

    /// Rebuilds everything file-based; swaps in only what loaded completely.
    pub fn reload(&self) -> ReloadReport {
        let started = Instant::now();
        let mut errors = Vec::new();
        if let Some(file) = &self.tenants_file {
            match registry::load_file(file, self.store.load().registry.tenant_rules()) {
                Ok(reg) => {
                    if let Err(e) = self.store.replace_registry(reg, None) {
                        errors.push(e.to_string());
                    }
                }
                Err(issues) => errors.extend(issues.0.iter().map(|i| i.to_string())),
            }
        }
        if let Some(dir) = &self.policies {
            let registry = self.store.load().registry.clone();
            match AuthzEngine::load(dir, &registry, self.decision_cache_capacity) {
                Ok(engine) => self.store.replace_authz(engine),
                Err(issues) => errors.extend(issues.0.iter().map(|i| i.to_string())),
            }
        }
        crate::memory::release_freed_memory();
        let snapshot = self.store.load();
        let report = ReloadReport {
            ok: errors.is_empty(),
            policy_version: snapshot.authz.as_ref().map(|a| a.version.clone()),
            tenants: snapshot.registry.len(),
            errors,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        let outcome = if report.ok { "ok" } else { "error" };
        metrics::counter!(crate::telemetry::RELOADS_TOTAL, "outcome" => outcome).increment(1);
        if report.ok {
            tracing::info!(version = ?report.policy_version, tenants = report.tenants, ms = report.duration_ms, "reloaded");
        } else {
            for e in &report.errors {
                tracing::error!(error = %e, "reload refused; the previous version keeps serving");
            }
            if let Some(webhooks) = self.store.webhooks() {
                webhooks.emit(
                    None,
                    crate::webhooks::WebhookEvent::new(
                        "policy.reload_failed",
                        serde_json::json!({"errors": report.errors, "serving": report.policy_version}),
                    ),
                );
            }
        }
        report
    }

    /// Reloads on file changes (debounced) and on SIGHUP until shutdown.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut _watcher = None;
        if self.watch {
            let sender = tx.clone();
            match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = sender.send(());
                }
            }) {
                Ok(mut watcher) => {
                    let paths = self.policies.iter().chain(self.tenants_file.iter());
                    for path in paths {
                        if let Err(e) = watcher.watch(path, RecursiveMode::Recursive) {
                            tracing::warn!(path = %path.display(), error = %e, "cannot watch for changes");
                        }
                    }
                    _watcher = Some(watcher);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "file watching unavailable; reload with SIGHUP")
                }
            }
        }
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    // Editors write in several steps: wait for the burst to end.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    while rx.try_recv().is_ok() {}
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading");
                }
                _ = shutdown.changed() => return,
            }
            let reloader = self.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
        }
    }
}
