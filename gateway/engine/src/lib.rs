//! The gateway's engine: everything that decides what happens to a request and records it,
//! with no proxy and no HTTP server in it. A front door (the Pingora proxy in `gateway-proxy`,
//! or any other) describes a request as a [`pipeline::RequestHead`], calls
//! [`admission::admit`] with the current [`snapshot::Snapshot`], applies the outcome, and
//! hands what happened to [`records::Recorder`] for usage and audit records.
//!
//! Modules point one way (see ARCHITECTURE.md): diagnostics and the stores at the bottom,
//! then identity, tenancy, authz, limits, residency, metering and audit, then the pipeline
//! stages, the compiled snapshot, admission and records, and `config` aggregating the sections
//! each of them owns.

pub mod admission;
pub mod audit;
pub mod audit_export;
pub mod authz;
pub mod check;
pub mod config;
pub mod db;
pub mod diagnostics;
pub mod durable;
pub mod explain;
pub mod geoip;
pub mod http_body;
pub mod identity;
pub mod journal;
pub mod lifecycle;
pub mod limits;
pub mod memory;
pub mod metering;
pub mod pipeline;
pub mod records;
pub mod reload;
pub mod request_metrics;
pub mod residency;
pub mod side_listener;
pub mod snapshot;
pub mod status;
pub mod telemetry;
pub mod tenancy;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod webhooks;
