//! Tenants: their definitions, the registry the request path reads, and where it comes from
//! (a file in the repository, or a PostgreSQL table followed through LISTEN/NOTIFY).

pub mod bounds;
pub mod budgets;
pub mod model;
pub mod postgres;
pub mod registry;

pub use model::{
    OidcClientAuth, OidcLoginSettings, ScimSettings, SsoSettings, TenantSpec, TenantStatus,
    WebhookSubscription,
};
pub use registry::{Tenant, TenantRegistry};

use std::sync::Arc;

/// A refused registry change, for the log (the previous registry stays).
pub type ChangeRefused = Box<dyn std::error::Error + Send + Sync>;

/// The live tenant registry as the parts that read or follow it see it. The gateway's snapshot
/// store implements it; the PostgreSQL follower, webhooks and billing exporters need nothing
/// else of the snapshot, and stay testable without one.
pub trait LiveRegistry: Send + Sync {
    /// The registry requests are served with now.
    fn current(&self) -> Arc<TenantRegistry>;
    /// A mark to take before re-reading the whole registry from its source.
    fn write_mark(&self) -> u64;
    /// Swaps in a whole new registry, unless it cannot serve (then the previous one stays).
    /// Tenants changed through [`apply`](Self::apply) (here or by the admin API) after `since`
    /// keep their current state: the re-read may predate them.
    fn replace(&self, registry: TenantRegistry, since: u64) -> Result<(), ChangeRefused>;
    /// Applies upserts (`Some`) and removals (`None`) in one swap; returns how many changed.
    fn apply(&self, changes: Vec<(String, Option<TenantSpec>)>) -> Result<usize, ChangeRefused>;
}
