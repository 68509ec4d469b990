//! The request path as a pipeline of stages (see ARCHITECTURE.md). Each stage is a function from a
//! typed input (plus the current [`Snapshot`]) to a typed output or a [`Rejection`]; none of
//! them knows about Pingora, so each is testable on its own.
//!
//! Stages: 1 sanitize, 2 identify, 3 tenant, 4 authorize (with tier feature gates),
//! 5 residency placement (which pools may serve it), 6 rate limit and quota. [`forward`] builds what the upstream receives.
//! The admission module runs them in order against the current snapshot.

pub mod authorize;
pub mod correlation;
pub mod forward;
pub mod identify;
pub mod limit;
pub mod placement;
pub mod rejection;
pub mod sanitize;
pub mod tenant;

use http::{HeaderMap, Method};

pub use correlation::{correlate, Correlation, TraceContext};
pub use rejection::{Problem, Rejection};
pub use sanitize::Sanitized;
pub use tenant::ResolvedTenant;

/// The parts of an inbound request the stages read.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The raw request target exactly as received (path and query).
    pub target: &'a [u8],
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The client's address (after trusted proxy hops).
    pub client_ip: Option<std::net::IpAddr>,
    /// The request body, when the proxy read it before the decision: only for a route whose
    /// policies read body facts, and a body within [`crate::authz::facts::BODY_FACTS_MAX_BYTES`]
    /// (see `admission::body_wanted`).
    pub body: Option<&'a [u8]>,
}
