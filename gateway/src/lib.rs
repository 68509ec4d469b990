//! Policy-as-code gateway sidecar: a Pingora reverse proxy that runs every request through
//! a pipeline of stages (sanitize, identify, tenant, authorize, residency, rate limit) before
//! forwarding it, and meters and audits what it did.
//!
//! This crate is the top of the stack: the `gateway` command ([`cli`]) and the composition
//! root that starts a configured gateway ([`server`]). The work is done by the crates below
//! it, re-exported here under their old paths so tools and tests name one crate:
//! `gateway-engine` (the pipeline and records, no proxy), `gateway-proxy` (the Pingora front
//! door), `gateway-check` (the Envoy ext_authz and forward-auth front doors) and
//! `gateway-admin` (the admin API).

pub use gateway_admin as admin;
pub use gateway_check::{ext_authz, forward_auth};
pub use gateway_engine::{
    admission, audit, audit_export, authz, check, config, db, diagnostics, durable, explain, geoip,
    identity, journal, lifecycle, limits, memory, metering, pipeline, records, reload,
    request_metrics, residency, side_listener, snapshot, status, telemetry, tenancy, webhooks,
};
pub use gateway_proxy::{background, connections, proxy, upstream};

pub mod cli;
pub mod example_upstream;
pub mod logging;
pub mod server;
pub mod usage_forecast;
