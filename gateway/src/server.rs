//! Assembles the Pingora server from a validated configuration and runs it until SIGTERM
//! (graceful: in-flight requests finish within `server.grace_period`) or SIGINT (fast).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::admission::Services;
use crate::background::task_service;
use crate::config::{LoadedConfig, SourceIssues};
use crate::connections::{ConnectionGate, ConnectionSettings, TLS_READ_BUFFER};
use crate::identity::provisioning::{PrincipalStore, Provisioner};
use crate::identity::{Authenticator, JwksSettings};
use crate::lifecycle::{InFlight, Recording};
use crate::metering::outbox::{Outbox, OutboxSettings};
use crate::metering::Metering;
use crate::proxy::{GatewayProxy, Hooks, RequestLimits};
use crate::side_listener::DoorLimits;
use crate::snapshot::{self, Snapshot, SnapshotStore};
use crate::upstream::Upstreams;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({field}): {source}")]
    Listen {
        addr: SocketAddr,
        field: &'static str,
        source: std::io::Error,
    },
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("upstream pools: {0}")]
    Upstreams(std::io::Error),
    #[error("TLS listener: {0}")]
    Tls(String),
    #[error("{0}")]
    Load(SourceIssues),
    #[error("{0}")]
    Runtime(String),
}

/// Builds and runs the gateway; returns after a graceful or fast shutdown.
///
/// SIGTERM: listeners close, idle keep-alive connections are dropped, requests in flight run
/// to their end (at most `server.grace_period`), then their records are flushed and the
/// process exits — as soon as the last one is done. SIGINT: stop now (records of requests cut
/// off are `interrupted`, as after a crash).
pub fn run(loaded: LoadedConfig) -> Result<(), StartError> {
    // Before anything large is allocated: memory given back must stay given back.
    crate::memory::disable_transparent_huge_pages();
    let (server, recording) = build(&loaded)?;
    // Loading (above all a large tenant registry) left its parse trees free: give them back.
    crate::memory::release_freed_memory();
    tracing::info!(
        listen = ?loaded.listen,
        tls_listen = ?loaded.tls_listen,
        "gateway started"
    );
    server.run(RunArgs::default());
    // The grace period ran out (or a fast shutdown): whatever was recorded is written now.
    recording.flush();
    tracing::info!("gateway stopped");
    Ok(())
}

/// How long after a graceful shutdown begins requests whose head was already read may still
/// start (Pingora stops reading new ones at once).
const SHUTDOWN_SETTLE: Duration = Duration::from_millis(100);
/// How long a graceful shutdown waits for the last webhook events to reach the queue file
/// (written at once unless the disk is full).
const WEBHOOKS_PERSIST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a graceful shutdown lets webhook deliveries in flight finish (a subscriber that is
/// down is retried at the next start instead).
const WEBHOOKS_SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds the Pingora server with every service added, ready to run, and the writers whose
/// queued records must be flushed when it stops.
pub fn build(loaded: &LoadedConfig) -> Result<(Server, Arc<Recording>), StartError> {
    let cfg = &loaded.config;
    // Binding first gives a clear error naming the field instead of a failure deep in Pingora.
    for addr in &loaded.listen {
        ensure_bindable(*addr, "server.listen")?;
    }
    for addr in &loaded.tls_listen {
        ensure_bindable(*addr, "server.tls.listen")?;
    }
    // The admin listener is bound now and handed to its task: a clear error, and no race.
    let admin_listener = match &cfg.admin {
        Some(admin) => {
            let addr: SocketAddr = admin
                .listen
                .parse()
                .map_err(|e| StartError::Runtime(format!("admin.listen: {e}")))?;
            Some(
                TcpListener::bind(addr).map_err(|source| StartError::Listen {
                    addr,
                    field: "admin.listen",
                    source,
                })?,
            )
        }
        None => None,
    };
    let ext_authz_listener = match &cfg.ext_authz {
        Some(door) => Some(bind_door(&door.listen, "ext_authz.listen")?),
        None => None,
    };
    let forward_auth_listener = match &cfg.forward_auth {
        Some(door) => Some(bind_door(&door.listen, "forward_auth.listen")?),
        None => None,
    };
    let metrics = match &cfg.admin {
        Some(_) => Some(install_metrics_recorder()?),
        None => None,
    };
    let state_dir = loaded.resolve(&cfg.server.state_dir);
    std::fs::create_dir_all(&state_dir).map_err(|source| StartError::StateDir {
        path: state_dir.display().to_string(),
        source,
    })?;

    let conf = ServerConf {
        threads: cfg.server.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        grace_period_seconds: Some(ceil_secs(cfg.server.grace_period)),
        graceful_shutdown_timeout_seconds: Some(ceil_secs(cfg.server.shutdown_timeout)),
        upstream_keepalive_pool_size: cfg.upstream.keepalive_pool_size,
        pid_file: state_dir.join("gateway.pid").display().to_string(),
        upgrade_sock: state_dir.join("upgrade.sock").display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // Start-up work that talks to the network (PostgreSQL, issuers) runs on a short-lived
    // runtime before Pingora builds its own.
    let startup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    let registry = startup
        .block_on(snapshot::load_registry(loaded))
        .map_err(StartError::Load)?;
    tracing::info!(tenants = registry.len(), "tenant registry loaded");
    let snapshot = Snapshot::build(loaded, registry).map_err(StartError::Load)?;
    let store = SnapshotStore::new(snapshot);

    let mut background = Vec::new();
    let identity = cfg.identity.as_ref();
    let jwks_settings = JwksSettings {
        min_refresh_interval: identity
            .map(|i| i.jwks_min_refresh_interval)
            .unwrap_or_default(),
        max_age: identity
            .map(|i| i.jwks_max_age)
            .unwrap_or(Duration::from_secs(600)),
        fetch_timeout: identity
            .map(|i| i.jwks_fetch_timeout)
            .unwrap_or(crate::identity::jwks::DEFAULT_FETCH_TIMEOUT),
    };
    let authenticator = Authenticator::new(
        jwks_settings,
        identity.map(|i| i.token_cache_capacity).unwrap_or(0),
    );
    let geoip = match &cfg.geoip {
        Some(g) => {
            let geo = crate::geoip::GeoIp::open(&loaded.resolve(&g.database), g.field.clone())
                .map_err(StartError::Runtime)?;
            let watcher = geo.clone();
            let interval = g.reload_interval;
            background.push(task_service("geoip reload", move |shutdown| {
                watcher.watch(interval, shutdown)
            }));
            Some(geo)
        }
        None => None,
    };
    let webhooks = match &cfg.webhooks {
        Some(w) => {
            let (handle, worker) =
                crate::webhooks::open(w.clone(), store.clone()).map_err(|e| {
                    StartError::Runtime(format!("webhooks.dir {}: {e}", w.dir.display()))
                })?;
            // Not stopped by the shutdown signal: the last requests' events still reach its
            // queue (see `drain and exit`); the process's exit ends it.
            background.push(task_service("webhook delivery", move |_shutdown| {
                worker.run()
            }));
            store.set_webhooks(handle.clone());
            Some(handle)
        }
        None => None,
    };
    let entity_store = match cfg.authorization.as_ref() {
        Some(a) if !a.entity_store.is_empty() => {
            // The providers' connections and change feeds run on a runtime of their own that
            // lives until shutdown (the startup runtime stops polling once start-up is done).
            let io = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("entity-store")
                .enable_all()
                .build()
                .map_err(|e| StartError::Runtime(format!("entity store runtime: {e}")))?;
            let (entity_store, feeds) = io
                .block_on(crate::authz::store::EntityStore::open(
                    &a.entity_store,
                    |p| loaded.resolve(p),
                ))
                .map_err(StartError::Runtime)?;
            let entity_store = Arc::new(entity_store);
            let following = entity_store.clone();
            background.push(task_service(
                "entity store changes",
                move |shutdown| async move {
                    let _ = io.spawn(following.follow(feeds, shutdown)).await;
                    io.shutdown_background();
                },
            ));
            entity_store
        }
        _ => Default::default(),
    };
    // Users provisioned by identity providers over SCIM (the admin listener's /scim/v2/): in
    // the tenant registry's PostgreSQL when there is one (every replica follows it), else in
    // the state directory.
    let registry_pg = cfg
        .tenancy
        .as_ref()
        .and_then(|t| t.registry.postgres.clone());
    let shared_directory = registry_pg.is_some();
    let directory = match registry_pg {
        Some(pg) => {
            let table = format!("{}_users", pg.table);
            startup.block_on(crate::identity::directory::Directory::open_postgres(
                pg, table,
            ))
        }
        None => crate::identity::directory::Directory::open(
            crate::identity::directory::DirectoryStore::File(state_dir.join("directory.json")),
        ),
    }
    .map_err(|e| StartError::Runtime(format!("principal directory: {e}")))?;
    let directory = Arc::new(directory);
    if shared_directory {
        let directory = directory.clone();
        background.push(task_service("principal directory sync", move |shutdown| {
            directory.follow(shutdown)
        }));
    }
    let sessions = match &cfg.sessions {
        Some(config) => Some(Arc::new(
            crate::identity::sessions::Sessions::load(config, &loaded.base_dir)
                .map_err(|e| StartError::Runtime(e.to_string()))?,
        )),
        None => None,
    };
    let limiter = Arc::new(crate::limits::Limiter::new(cfg.limits.as_ref(), &cfg.tiers));
    // Spending budgets count what metering records; their counters are flushed to Redis.
    let budgets = cfg.metering.as_ref().map(|metering| {
        let budgets = Arc::new(crate::metering::budgets::Budgets::new(
            limiter.clone(),
            webhooks.clone(),
        ));
        let task = budgets.clone();
        let intervals = (
            metering.budget_flush_interval,
            metering.budget_forecast_interval,
        );
        background.push(task_service("budgets", move |shutdown| {
            task.run(intervals.0, intervals.1, shutdown)
        }));
        budgets
    });
    let services = Arc::new(Services {
        authenticator,
        geoip,
        trusted_proxies: cfg
            .geoip
            .as_ref()
            .map(|g| g.trusted_proxies.clone())
            .unwrap_or_default(),
        limiter,
        webhooks: webhooks.clone(),
        entity_store,
        directory,
        sessions,
        budgets: budgets.clone(),
    });

    // The writers are not stopped by the shutdown signal: requests in flight keep recording
    // until the last one is done (see `drain and exit` below).
    let mut audit = None;
    if let Some(a) = &cfg.audit {
        let log = crate::audit::open(a.clone())
            .map_err(|e| StartError::Runtime(format!("audit log {}: {e}", a.dir.display())))?;
        let flusher = log.clone();
        background.push(task_service("audit log", move |_shutdown| {
            flusher.run_flusher()
        }));
        audit = Some(log);
    }
    let mut provisioner = None;
    if let Some(provisioning) = identity.and_then(|i| i.provisioning.as_ref()) {
        let principal_store = match (
            provisioning.store.as_str(),
            cfg.tenancy
                .as_ref()
                .and_then(|t| t.registry.postgres.clone()),
        ) {
            ("postgres", Some(pg)) => PrincipalStore::Postgres(pg),
            _ => PrincipalStore::File(state_dir.join("principals.jsonl")),
        };
        let (p, queue) = Provisioner::new(1_000_000);
        let known = startup
            .block_on(principal_store.load())
            .map_err(|e| StartError::Runtime(format!("loading provisioned principals: {e}")))?;
        for (tenant, principal) in &known {
            p.preload(tenant, principal);
        }
        provisioner = Some(Arc::new(p));
        let provisioning_audit = audit.clone();
        let listed_in = Some(services.directory.clone());
        background.push(task_service("principal provisioning", move |shutdown| {
            principal_store.run(queue, provisioning_audit, listed_in, shutdown)
        }));
    }
    if let Some(pg) = cfg
        .tenancy
        .as_ref()
        .and_then(|t| t.registry.postgres.clone())
    {
        let store = store.clone();
        background.push(task_service("tenant registry sync", move |shutdown| {
            crate::tenancy::postgres::follow(pg, store, shutdown)
        }));
    }
    let mut admin_reloader = None;
    if cfg.authorization.is_some()
        || cfg
            .tenancy
            .as_ref()
            .is_some_and(|t| t.registry.file.is_some())
    {
        let reloader = crate::reload::Reloader::new(store.clone(), loaded);
        admin_reloader = Some(reloader.clone());
        background.push(task_service("reload", move |shutdown| {
            reloader.run(shutdown)
        }));
    }
    drop(startup);

    let (upstreams, health_checks) = Upstreams::build(loaded).map_err(StartError::Upstreams)?;
    let mut outbox = None;
    let mut metering = None;
    let mut export_drain = crate::metering::exporters::ExportDrain::default();
    if let Some(m) = &cfg.metering {
        let settings = OutboxSettings {
            dir: m.dir.clone(),
            fsync: m.fsync,
            fsync_interval: m.fsync_interval,
            segment_bytes: m.segment_bytes,
            flush_interval: m.flush_interval,
            buffer_bytes: m.buffer_bytes,
        };
        let (handle, progress) =
            Outbox::open(settings).map_err(|e| StartError::Runtime(e.to_string()))?;
        let flusher = handle.clone();
        background.push(task_service("usage outbox", move |_shutdown| {
            flusher.run_flusher()
        }));
        for exporter in &m.exporter {
            let sink = crate::metering::exporters::sink(exporter, store.clone())
                .map_err(|e| StartError::Runtime(format!("exporter `{}`: {e}", exporter.name())))?;
            let (name, batch, dir, progress) = (
                exporter.name().to_string(),
                exporter.batch_size(),
                m.dir.clone(),
                progress.clone(),
            );
            let (exported, exported_rx) = tokio::sync::watch::channel(0);
            export_drain.exported.push(exported_rx);
            // Not stopped by the shutdown signal: they deliver what the last requests recorded
            // (see `drain and exit`); the process's exit ends them.
            let stop = export_drain.stop.subscribe();
            background.push(task_service(
                &format!("exporter {name}"),
                move |_shutdown| {
                    crate::metering::exporters::run(
                        name, batch, sink, dir, progress, exported, stop,
                    )
                },
            ));
        }
        export_drain.written = Some(progress);
        export_drain.timeout = m.export_drain_timeout;
        outbox = Some(handle.clone());
        metering = Some(Arc::new(Metering {
            outbox: handle,
            fields: crate::metering::EventFields {
                meters: m.meter.clone(),
                chargeback: m
                    .pricing
                    .as_ref()
                    .map(|p| p.chargeback.clone())
                    .unwrap_or_default(),
            },
            budgets: budgets.clone(),
            record_before_forward: m.record_before_forward,
            tenant_metrics: m.tenant_metrics,
        }));
    }
    let recording = Arc::new(Recording { outbox, audit });
    let in_flight = Arc::new(InFlight::default());
    {
        let (recording, in_flight, webhooks) =
            (recording.clone(), in_flight.clone(), webhooks.clone());
        background.push(task_service("drain and exit", move |shutdown| async move {
            crate::lifecycle::drained(shutdown, &in_flight, SHUTDOWN_SETTLE).await;
            recording.flush();
            // The last requests' spend reaches the shared counters before the process goes.
            if let Some(budgets) = &budgets {
                budgets.flush().await;
            }
            // Their webhook events (quota and budget thresholds) reach the queue file; the next
            // start delivers what this process does not.
            if let Some(webhooks) = &webhooks {
                if tokio::time::timeout(WEBHOOKS_PERSIST_TIMEOUT, webhooks.persisted())
                    .await
                    .is_err()
                {
                    tracing::error!("webhook events of the last requests not written: the queue file could not be written for {WEBHOOKS_PERSIST_TIMEOUT:?}");
                }
                // A delivery answered while the process stops would be sent again at the next
                // start (at least once; receivers deduplicate): a moment for it to be recorded.
                if tokio::time::timeout(WEBHOOKS_SETTLE_TIMEOUT, webhooks.settled())
                    .await
                    .is_err()
                {
                    tracing::info!("webhook deliveries still in flight at shutdown are sent again at the next start");
                }
            }
            export_drain.run().await;
            tracing::info!("gateway stopped: no request in flight, records written");
            crate::logging::flush();
            // Pingora would sit out the rest of the grace period; nothing is left to wait for.
            std::process::exit(0);
        }));
    }
    // The decision-only front doors: the same stages and records as the proxy's.
    let decider = gateway_check::Decider {
        store: store.clone(),
        services: services.clone(),
        metering: metering.clone(),
        recording: recording.clone(),
        in_flight: in_flight.clone(),
        head_limits: cfg.server.head_limits(),
        max_body_bytes: cfg.server.max_body_bytes,
        provisioner: provisioner.clone(),
    };
    // A door decides as much as the proxy does: as many threads (a background service's
    // runtime has one by default).
    if let (Some(listener), Some(door)) = (ext_authz_listener, &cfg.ext_authz) {
        let decider = decider.clone();
        let limits = DoorLimits::of(&cfg.server, door.max_connections);
        let mut service = task_service("ext_authz", move |shutdown| {
            gateway_check::ext_authz::serve(decider, listener, limits, shutdown)
        });
        service.threads = Some(server.configuration.threads);
        server.add_service(service);
    }
    if let (Some(listener), Some(door)) = (forward_auth_listener, &cfg.forward_auth) {
        let limits = DoorLimits::of(&cfg.server, door.max_connections);
        let door = Arc::new(gateway_check::forward_auth::ForwardAuth::new(
            decider.clone(),
            &door.path,
        ));
        let mut service = task_service("forward-auth", move |_shutdown| {
            gateway_check::forward_auth::serve(door, listener, limits)
        });
        service.threads = Some(server.configuration.threads);
        server.add_service(service);
    }
    let hooks = Hooks {
        provisioner,
        metering,
        recording: recording.clone(),
        in_flight,
    };

    let upstreams = Arc::new(upstreams);
    if let Some(listener) = admin_listener {
        let token = cfg
            .admin
            .as_ref()
            .map(|a| crate::config::read_admin_token(&a.token_file))
            .transpose()
            .map_err(|e| StartError::Runtime(e.to_string()))?
            .unwrap_or_default();
        let writer = match cfg.tenancy.as_ref().map(|t| &t.registry.postgres) {
            Some(Some(pg)) => crate::admin::TenantWriter::Postgres(pg.clone()),
            Some(None) => crate::admin::TenantWriter::File,
            None => crate::admin::TenantWriter::None,
        };
        let admin = crate::admin::Admin::new(
            store.clone(),
            services.clone(),
            upstreams.clone(),
            admin_reloader,
            writer,
            metrics,
            token,
            crate::admin::AdminPaths {
                outbox_dir: cfg.metering.as_ref().map(|m| m.dir.clone()),
                audit_dir: cfg.audit.as_ref().map(|a| a.dir.clone()),
                config_path: loaded.source.path.clone(),
            },
            recording.clone(),
        );
        let admin = match cfg.admin.as_ref().and_then(|a| Some((a, a.sso.as_ref()?))) {
            Some((admin_config, sso)) => {
                let login = crate::identity::sessions::operator::OperatorLogin::load(
                    sso,
                    &loaded.base_dir,
                    &admin_config.listen,
                )
                .map_err(|e| StartError::Runtime(format!("admin.sso.client_secret_file: {e}")))?;
                admin.with_operator_login(login)
            }
            None => admin,
        };
        let admin = match &cfg.admin {
            Some(admin_config) => {
                admin.with_limits(DoorLimits::of(&cfg.server, admin_config.max_connections))
            }
            None => admin,
        };
        let admin = Arc::new(admin);
        server.add_service(task_service("admin api", move |shutdown| {
            admin.serve(listener, shutdown)
        }));
    }
    let proxy = GatewayProxy::new(
        store,
        services,
        upstreams,
        hooks,
        RequestLimits::of(&cfg.server),
    );
    let request_metrics = proxy.request_metrics();

    // Pingora's HTTP proxy behind the connection gate, which counts connections and reads
    // every HTTP/1.x request head itself (see `connections`).
    let mut options = HttpServerOptions::default();
    options.h2c = cfg.server.h2c;
    options.keepalive_request_limit = cfg.server.keepalive_request_limit;
    options.h2_idle_timeout = Some(cfg.server.keepalive_timeout);
    let mut http = pingora::proxy::http_proxy(&server.configuration, proxy);
    http.server_options = Some(options);
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    // HTTP/2 header lists (RFC 9113 §6.5.2 size) over the head limit are refused by the h2
    // layer with 431.
    h2.max_header_list_size(u32::try_from(cfg.server.max_header_bytes).unwrap_or(u32::MAX));
    http.h2_options = Some(h2);
    let gate = ConnectionGate::new(Arc::new(http), ConnectionSettings::of(cfg), request_metrics);
    let mut service = Service::new("gateway proxy".to_string(), gate);
    for addr in &loaded.listen {
        // No L4 read buffer: heads and bodies are read straight into their own buffers, and
        // an idle connection holds none (Pingora's default is 64 KiB per connection).
        service.add_listener(
            ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::default().read(0)),
        );
    }
    if let Some(tls) = &cfg.server.tls {
        let cert = loaded.resolve(&tls.cert).display().to_string();
        let key = loaded.resolve(&tls.key).display().to_string();
        for addr in &loaded.tls_listen {
            let mut settings = TlsSettings::intermediate(&cert, &key)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            if tls.h2 {
                settings.enable_h2();
            }
            service.add_listener(
                ListenerConfig::tcp(addr.to_string())
                    .tls(settings)
                    .l4_buffer(L4BufferSettings::default().read(TLS_READ_BUFFER)),
            );
        }
    }
    server.add_service(service);
    for check in health_checks {
        server.add_service(check);
    }
    for task in background {
        server.add_service(task);
    }
    Ok((server, recording))
}

/// The Prometheus recorder behind `/metrics`: latency histograms get buckets from 50 µs to 10 s.
fn install_metrics_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, StartError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    const BUCKETS: &[f64] = &[
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| StartError::Runtime(format!("metrics recorder: {e}")))?;
    crate::telemetry::describe();
    Ok(handle)
}

/// Binds a front door's listener now: a clear error naming the field, and no race.
fn bind_door(listen: &str, field: &'static str) -> Result<TcpListener, StartError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| StartError::Runtime(format!("{field}: {e}")))?;
    gateway_check::bind(addr).map_err(|source| StartError::Listen {
        addr,
        field,
        source,
    })
}

fn ensure_bindable(addr: SocketAddr, field: &'static str) -> Result<(), StartError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| StartError::Listen {
            addr,
            field,
            source,
        })
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
