//! The inline front door: a Pingora reverse proxy. Each request is admitted by the engine
//! ([`gateway_engine::admission::admit`]); this crate applies the outcome to the request
//! (rewritten path, verified context headers), picks a peer from the pools residency allows,
//! forwards, and hands the exchange to the engine's recorder. Also the connection gate (caps
//! and head limits before a request is parsed) and the upstream pools with health checks.

pub mod background;
pub mod connections;
pub mod heads;
pub mod proxy;
pub mod upstream;
