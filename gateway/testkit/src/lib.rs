//! Real services started on free loopback ports by the integration tests and the benchmarks
//! (one copy for both): a Redis Cluster of six `redis-server` processes, a NATS server with
//! JetStream, a certified OpenID Provider (npm `oidc-provider`) with a cookie-keeping HTTP login
//! driver, a headless Chromium that logs in through it, and a SAML identity provider whose
//! responses (and the known attacks built from them) the `xmlsec1` program signs. Each is
//! stopped when dropped. They need what `scripts/ensure-deps test` installs (redis-server,
//! redis-tools, nats-server, Node.js 20+ with npm, chromium, xmlsec1); the npm packages are
//! installed on first use into the target directory (`oidc::node_dir`).
// Test support: failing loudly, with the reason, is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod browser;
pub mod nats;
pub mod oidc;
pub mod redis_cluster;
pub mod saml;

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}
