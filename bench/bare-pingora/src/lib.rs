//! A bare Pingora reverse proxy: one `ProxyHttp` whose `upstream_peer` returns one plain-HTTP
//! keep-alive peer, nothing else (no filters, no logging, no timeouts) — the floor any
//! Pingora-based proxy starts from, measured beside the gateway by `comparison`.
//!
//! Command line: `LISTEN UPSTREAM [--threads N] [--no-work-stealing] [--pool N]
//! [--keepalive-requests N]`. `--pool` is the upstream keep-alive pool size (Pingora's
//! `upstream_keepalive_pool_size`); the other server settings stay at Pingora's defaults.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::prelude::*;
use pingora::proxy::ProxyServiceBuilder;
use pingora::server::configuration::ServerConf;

/// Forwards every request to one upstream.
pub struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub threads: usize,
    pub work_stealing: bool,
    pub pool: usize,
    pub keepalive_requests: Option<u32>,
}

impl Settings {
    /// Parses `args` (without the program name); panics with the usage on bad input.
    pub fn parse(args: &[String]) -> Settings {
        const USAGE: &str = "usage: bare-pingora LISTEN UPSTREAM [--threads N] [--no-work-stealing] [--pool N] [--keepalive-requests N]";
        let addr = |i: usize| -> SocketAddr {
            args.get(i)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("{USAGE}"))
        };
        let value = |name: &str| -> Option<usize> {
            args.iter().position(|a| a == name).map(|i| {
                args.get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name}: a number; {USAGE}"))
            })
        };
        let defaults = ServerConf::default();
        Settings {
            listen: addr(0),
            upstream: addr(1),
            threads: value("--threads").unwrap_or(1),
            work_stealing: !args.iter().any(|a| a == "--no-work-stealing"),
            pool: value("--pool").unwrap_or(defaults.upstream_keepalive_pool_size),
            keepalive_requests: value("--keepalive-requests").map(|n| n as u32),
        }
    }
}

/// Runs the proxy until the process is stopped (SIGINT: at once; SIGTERM: Pingora's graceful
/// shutdown).
pub fn run(settings: Settings) {
    let conf = ServerConf {
        threads: settings.threads,
        work_stealing: settings.work_stealing,
        upstream_keepalive_pool_size: settings.pool,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: std::env::temp_dir()
            .join(format!("bare-pingora-{}.pid", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut options = HttpServerOptions::default();
    options.keepalive_request_limit = settings.keepalive_requests;
    let bare = Bare {
        upstream: settings.upstream,
    };
    let mut service = ProxyServiceBuilder::new(&server.configuration, bare)
        .name("bare pingora")
        .server_options(options)
        .build();
    service.add_tcp(&settings.listen.to_string());
    server.add_service(service);
    server.run_forever();
}
