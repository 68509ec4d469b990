//! Policy-as-code gateway sidecar: a Pingora reverse proxy that runs every request through
//! a pipeline of stages (sanitize, identify, tenant, authorize, residency, rate limit) before
//! forwarding it, and meters and audits what it did.

pub mod admin;
pub mod admission;
pub mod audit;
pub mod authz;
pub mod background;
pub mod cli;
pub mod config;
pub mod connections;
pub mod db;
pub mod diagnostics;
pub mod durable;
pub mod example_upstream;
pub mod explain;
pub mod geoip;
pub mod identity;
pub mod journal;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod memory;
pub mod metering;
pub mod pipeline;
pub mod proxy;
pub mod records;
pub mod reload;
pub mod request_metrics;
pub mod residency;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod tenancy;
pub mod upstream;
pub mod webhooks;
