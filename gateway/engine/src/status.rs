//! What a front door reports about its upstreams, for the admin API's `/admin/status` and the
//! peer-health gauges: the admin API reads it without knowing how the proxy balances load.

use std::net::SocketAddr;

/// One upstream pool as its health checks see it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub name: String,
    pub region: Option<String>,
    /// Every peer with whether its health check passes.
    pub peers: Vec<(SocketAddr, bool)>,
}

/// Implemented by whatever forwards requests (the inline proxy's pools).
pub trait UpstreamStatus: Send + Sync {
    /// The pools in configuration order.
    fn pools(&self) -> Vec<PoolStatus>;
}

/// For front doors that forward nowhere themselves (an external proxy asks for decisions).
impl UpstreamStatus for () {
    fn pools(&self) -> Vec<PoolStatus> {
        Vec::new()
    }
}
