//! Tenants: their definitions, the registry the request path reads, and where it comes from
//! (a file in the repository, or a PostgreSQL table followed through LISTEN/NOTIFY).

pub mod model;
pub mod postgres;
pub mod registry;

pub use model::{TenantSpec, TenantStatus, WebhookSubscription};
pub use registry::{Tenant, TenantRegistry};
