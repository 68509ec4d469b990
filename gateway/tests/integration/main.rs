//! The integration tests, one binary: each module starts the real `gateway` binary on loopback
//! ports in front of a real upstream (a small hyper server), with real Redis and PostgreSQL
//! where a feature needs them. One binary links once instead of once per file.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

mod admin;
mod architecture;
mod authorization;
mod budgets;
mod cli;
mod connections;
mod console;
mod deploy;
mod entity_store;
mod explain;
mod front_doors;
mod identity;
mod jwt_matrix;
mod metering;
mod nats;
mod object_isolation;
mod proxy;
mod ratelimit;
mod ratelimit_cluster;
mod replicas;
mod request_shape;
mod residency;
mod rls;
mod scim;
mod sessions;
mod tenancy_postgres;
mod webhooks;
