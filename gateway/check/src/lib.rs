//! The decision-only front doors. The inline proxy (gateway-proxy) forwards requests itself;
//! these answer another proxy that asks whether to forward one:
//!
//! - [`ext_authz`]: Envoy's external authorization filter (gRPC
//!   `envoy.service.auth.v3.Authorization/Check`), with `grpc.health.v1.Health` and server
//!   reflection, for meshes whose data plane is Envoy (Istio, Consul, Gloo);
//! - [`forward_auth`]: the HTTP forward-auth subrequest of nginx `auth_request`, Traefik
//!   `forwardAuth` and Caddy `forward_auth`.
//!
//! Each is a thin adapter: it turns its request description into a
//! [`RequestHead`](gateway_engine::pipeline::RequestHead), calls
//! [`gateway_engine::check::check`] (the same stages, decision, usage and audit records as the
//! inline proxy) and turns the [`Verdict`](gateway_engine::check::Verdict) into its protocol's
//! answer.

pub mod ext_authz;
pub mod forward_auth;

use std::sync::Arc;

use gateway_engine::admission::Services;
use gateway_engine::check::{CheckRequest, Verdict};
use gateway_engine::lifecycle::{InFlight, Recording};
use gateway_engine::metering::Metering;
use gateway_engine::pipeline::sanitize::HeadLimits;
use gateway_engine::records::Recorder;
use gateway_engine::snapshot::SnapshotStore;

/// What a door needs from the running gateway: the current snapshot, the stages' services and
/// where records go. Shared by both doors (and cheap to clone).
#[derive(Clone)]
pub struct Decider {
    pub store: Arc<SnapshotStore>,
    pub services: Arc<Services>,
    pub metering: Option<Arc<Metering>>,
    pub recording: Arc<Recording>,
    /// A graceful shutdown waits for checks in flight, so their records are written.
    pub in_flight: Arc<InFlight>,
    /// `[server]`'s head limits.
    pub head_limits: HeadLimits,
    /// `[server] max_body_bytes`.
    pub max_body_bytes: u64,
    /// Just-in-time provisioning, as the inline proxy does it.
    pub provisioner: Option<Arc<gateway_engine::identity::provisioning::Provisioner>>,
}

impl Decider {
    /// Decides one request against the current snapshot and records it.
    pub async fn decide(&self, request: &CheckRequest<'_>) -> Verdict {
        let _in_flight = self.in_flight.enter();
        let snapshot = self.store.load();
        let recorder = Recorder {
            metering: self.metering.as_deref(),
            recording: &self.recording,
            provisioner: self.provisioner.as_deref(),
        };
        gateway_engine::check::check(request, &snapshot, &self.services, recorder).await
    }
}

/// Binds a door's listener now (a clear start-up error, no race with another process).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
