//! Every way the gateway refuses or fails a request, mapped once to an HTTP status and an
//! RFC 9457 problem document. The public text never carries internal detail (peer addresses,
//! policy ids, other tenants): the full reason goes to logs and the audit record instead.

use serde::Serialize;

use super::authorize::DecisionRecord;
use super::sanitize::{FramingError, HeadTooLarge, HeaderError, MethodOverrideError, PathError};
use super::tenant::TenantError;
use crate::identity::AuthError;

/// Prefix of the problem `type` URIs. Tag URIs (RFC 4151) name problem types without implying
/// a dereferenceable document.
pub const PROBLEM_TYPE_PREFIX: &str = "tag:policy-gateway,2026:problem/";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("request path rejected: {0}")]
    BadPath(#[from] PathError),
    #[error("ambiguous request framing: {0}")]
    AmbiguousFraming(#[from] FramingError),
    #[error("method override rejected: {0}")]
    MethodOverride(#[from] MethodOverrideError),
    #[error("no healthy upstream peer in {scope}")]
    NoHealthyUpstream { scope: String },
    #[error("residency: {reason}")]
    ResidencyViolation { reason: String },
    #[error("upstream unreachable: {reason}")]
    UpstreamUnreachable { reason: String },
    #[error("upstream timed out: {reason}")]
    UpstreamTimeout { reason: String },
    #[error("upstream failed: {reason}")]
    UpstreamFailed { reason: String },
    /// A browser without a (still valid) session: sent to the login page, which brings it back.
    #[error("login required")]
    LoginRequired {
        /// `/.gateway/login?rd=…`.
        location: String,
        /// Clear the session cookie that no longer identifies anyone.
        clear_session: bool,
    },
    #[error("authentication failed: {0}")]
    Unauthenticated(AuthError),
    #[error("tenant refused: {0}")]
    Tenant(#[from] TenantError),
    #[error("denied by policy: {} on {} ({:?})", .0.action, .0.resource, .0.evaluation.policies)]
    Forbidden(Box<DecisionRecord>),
    #[error("no route matches the request")]
    UnknownRoute,
    #[error("malformed request")]
    MalformedRequest,
    #[error("internal error: {reason}")]
    Internal { reason: String },
    #[error("rate limit `{limit}` exceeded")]
    RateLimited {
        limit: String,
        headers: Vec<(&'static str, String)>,
    },
    #[error("{quota} quota exhausted")]
    QuotaExhausted {
        quota: &'static str,
        headers: Vec<(&'static str, String)>,
    },
    /// An enforced spending budget of the tenant (or of the caller's cost centre) is spent.
    #[error("budget `{budget}` is spent until {resets_at}")]
    BudgetExhausted {
        budget: String,
        /// RFC 3339: the start of the next month (UTC).
        resets_at: String,
        retry_after_secs: u64,
    },
    #[error("rate limits cannot be decided (Redis unavailable, fallback fail-closed)")]
    LimiterUnavailable {
        headers: Vec<(&'static str, String)>,
    },
    #[error("`{}` needs the `{}` feature, not in the `{}` tier", .0.action, .0.feature, .0.tier)]
    FeatureNotInTier(crate::limits::FeatureMissing),
    /// The usage outbox or the audit log cannot record the request (e.g. a full disk): it is
    /// refused rather than forwarded unrecorded.
    #[error("the request cannot be recorded: {reason}")]
    MeteringUnavailable { reason: String },
    /// The entity store cannot say what the resource is (provider down, timed out, or its
    /// record does not fit the schema) and the provider is configured to fail closed.
    #[error("the entity store cannot answer: {reason}")]
    EntityStoreUnavailable { reason: String },
    /// The request head is larger than `[server] max_header_bytes` or has more fields than
    /// `max_header_count`.
    #[error("{0}")]
    HeadTooLarge(#[from] HeadTooLarge),
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    /// The body is (or announces itself) larger than the route's limit.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The client did not send the request head, or the next bytes of its body, in time.
    #[error("{0}")]
    RequestTimeout(TimeoutPhase),
    #[error("bad header: {0}")]
    BadHeader(#[from] HeaderError),
    /// A header or query parameter a policy reads is given twice, with different values.
    #[error("{0}")]
    AmbiguousFact(#[from] crate::authz::facts::AmbiguousFact),
    /// A connection over `[server] max_connections` (or `max_connections_per_client`).
    #[error("connection limit reached ({0})")]
    TooManyConnections(ConnectionLimit),
}

/// Which part of a request the client was too slow to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutPhase {
    #[error("the request head was not received within {}", humantime::format_duration(*.0))]
    Head(std::time::Duration),
    #[error("the request body stalled for {}", humantime::format_duration(*.0))]
    Body(std::time::Duration),
}

/// Which connection limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionLimit {
    #[error("{0} connections in total")]
    Total(usize),
    #[error("{0} connections from one client address")]
    PerClient(usize),
}

/// `Retry-After` of `503 too-many-connections`: connections come and go quickly.
const CONNECTIONS_RETRY_AFTER_SECS: u32 = 1;

/// `Retry-After` of `503 metering-unavailable`: long enough for an operator's alert, short
/// enough that clients come back soon after space returns.
const METERING_RETRY_AFTER_SECS: u32 = 5;

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::BadPath(_)
            | Rejection::AmbiguousFraming(_)
            | Rejection::MethodOverride(_)
            | Rejection::BadHeader(_)
            | Rejection::AmbiguousFact(_)
            | Rejection::MalformedRequest => 400,
            Rejection::RequestTimeout(_) => 408,
            Rejection::BodyTooLarge { .. } => 413,
            Rejection::UriTooLong { .. } => 414,
            Rejection::HeadTooLarge(_) => 431,
            Rejection::TooManyConnections(_) => 503,
            Rejection::Internal { .. } => 500,
            Rejection::Unauthenticated(_) => 401,
            Rejection::LoginRequired { .. } => 302,
            Rejection::Forbidden(_) | Rejection::FeatureNotInTier(_) => 403,
            Rejection::RateLimited { .. } | Rejection::QuotaExhausted { .. } => 429,
            Rejection::BudgetExhausted { .. } => 402,
            Rejection::LimiterUnavailable { .. }
            | Rejection::MeteringUnavailable { .. }
            | Rejection::EntityStoreUnavailable { .. } => 503,
            Rejection::UnknownRoute => 404,
            Rejection::Tenant(TenantError::Required) => 400,
            Rejection::Tenant(
                TenantError::Mismatch | TenantError::Suspended | TenantError::UnboundCredential,
            ) => 403,
            Rejection::Tenant(TenantError::Unknown) => 404,
            Rejection::UpstreamUnreachable { .. } | Rejection::UpstreamFailed { .. } => 502,
            Rejection::NoHealthyUpstream { .. } => 503,
            Rejection::ResidencyViolation { .. } => 451,
            Rejection::UpstreamTimeout { .. } => 504,
        }
    }

    /// Stable short name: the last part of the problem type, and the `reason` metric label.
    pub fn slug(&self) -> &'static str {
        match self {
            Rejection::BadPath(_) => "bad-path",
            Rejection::AmbiguousFraming(_) => "ambiguous-framing",
            Rejection::MethodOverride(_) => "bad-method-override",
            Rejection::NoHealthyUpstream { .. } => "no-healthy-upstream",
            Rejection::ResidencyViolation { .. } => "residency-violation",
            Rejection::UpstreamUnreachable { .. } => "upstream-unreachable",
            Rejection::UpstreamTimeout { .. } => "upstream-timeout",
            Rejection::UpstreamFailed { .. } => "upstream-failed",
            Rejection::MalformedRequest => "malformed-request",
            // The caller knows who they are: telling them the account is off is no leak.
            Rejection::Unauthenticated(AuthError::PrincipalDeactivated) => "principal-deactivated",
            Rejection::Unauthenticated(_) => "unauthenticated",
            Rejection::LoginRequired { .. } => "login-required",
            Rejection::Forbidden(_) => "forbidden",
            Rejection::UnknownRoute => "unknown-route",
            Rejection::Tenant(TenantError::Required) => "tenant-required",
            Rejection::Tenant(TenantError::Mismatch) => "tenant-mismatch",
            Rejection::Tenant(TenantError::Unknown) => "unknown-tenant",
            Rejection::Tenant(TenantError::Suspended) => "tenant-suspended",
            Rejection::Tenant(TenantError::UnboundCredential) => "credential-without-tenant",
            Rejection::Internal { .. } => "internal",
            Rejection::RateLimited { .. } => "rate-limited",
            Rejection::QuotaExhausted { .. } => "quota-exhausted",
            Rejection::BudgetExhausted { .. } => "budget-exhausted",
            Rejection::LimiterUnavailable { .. } => "rate-limit-unavailable",
            Rejection::FeatureNotInTier(_) => "feature-not-in-tier",
            Rejection::MeteringUnavailable { .. } => "metering-unavailable",
            Rejection::EntityStoreUnavailable { .. } => "entity-store-unavailable",
            Rejection::HeadTooLarge(_) => "headers-too-large",
            Rejection::UriTooLong { .. } => "uri-too-long",
            Rejection::BodyTooLarge { .. } => "body-too-large",
            Rejection::RequestTimeout(_) => "request-timeout",
            Rejection::BadHeader(_) => "bad-header",
            Rejection::AmbiguousFact(_) => "ambiguous-fact",
            Rejection::TooManyConnections(_) => "too-many-connections",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Rejection::BadPath(_) => "Request path rejected",
            Rejection::AmbiguousFraming(_) => "Ambiguous request framing",
            Rejection::MethodOverride(_) => "Method override rejected",
            Rejection::NoHealthyUpstream { .. } => "Service unavailable",
            Rejection::ResidencyViolation { .. } => "Unavailable for legal reasons",
            Rejection::UpstreamUnreachable { .. } => "Upstream unreachable",
            Rejection::UpstreamTimeout { .. } => "Upstream timed out",
            Rejection::UpstreamFailed { .. } => "Upstream failed",
            Rejection::MalformedRequest => "Malformed request",
            Rejection::Unauthenticated(_) => "Unauthenticated",
            Rejection::LoginRequired { .. } => "Login required",
            Rejection::Forbidden(_) => "Forbidden",
            Rejection::UnknownRoute => "Not found",
            Rejection::Tenant(TenantError::Required) => "Tenant required",
            Rejection::Tenant(TenantError::Mismatch) => "Tenant mismatch",
            Rejection::Tenant(TenantError::Unknown) => "Unknown tenant",
            Rejection::Tenant(TenantError::Suspended) => "Tenant suspended",
            Rejection::Tenant(TenantError::UnboundCredential) => "Credential names no tenant",
            Rejection::Internal { .. } => "Internal error",
            Rejection::RateLimited { .. } => "Too many requests",
            Rejection::QuotaExhausted { .. } => "Quota exhausted",
            Rejection::BudgetExhausted { .. } => "Budget exhausted",
            Rejection::LimiterUnavailable { .. } => "Service unavailable",
            Rejection::FeatureNotInTier(_) => "Feature not in plan",
            Rejection::MeteringUnavailable { .. } | Rejection::EntityStoreUnavailable { .. } => {
                "Service unavailable"
            }
            Rejection::HeadTooLarge(_) => "Request header fields too large",
            Rejection::UriTooLong { .. } => "URI too long",
            Rejection::BodyTooLarge { .. } => "Content too large",
            Rejection::RequestTimeout(_) => "Request timeout",
            Rejection::BadHeader(_) => "Bad header",
            Rejection::AmbiguousFact(_) => "Ambiguous request",
            Rejection::TooManyConnections(_) => "Too many connections",
        }
    }

    /// What the client may learn. Client-caused problems explain themselves; upstream problems
    /// say only what class of failure happened.
    fn public_detail(&self) -> String {
        match self {
            Rejection::BadPath(e) => e.to_string(),
            Rejection::AmbiguousFraming(e) => e.to_string(),
            Rejection::MethodOverride(e) => e.to_string(),
            Rejection::NoHealthyUpstream { .. } => {
                "no healthy upstream is available for this request; retry later".to_string()
            }
            // The tenant's own regime and regions: the caller may know why.
            Rejection::ResidencyViolation { reason } => reason.clone(),
            Rejection::UpstreamUnreachable { .. } => {
                "the upstream service could not be reached".to_string()
            }
            Rejection::UpstreamTimeout { .. } => {
                "the upstream service did not answer in time".to_string()
            }
            Rejection::UpstreamFailed { .. } => {
                "the upstream service failed while answering".to_string()
            }
            Rejection::MalformedRequest => "the request could not be parsed".to_string(),
            // The precise reason (expired, bad signature, alg none ...) goes to the audit record
            // only: telling an attacker which check failed helps them.
            Rejection::Unauthenticated(AuthError::PrincipalDeactivated) => {
                "this account is deactivated".to_string()
            }
            Rejection::Unauthenticated(_) => "missing or invalid credentials".to_string(),
            Rejection::LoginRequired { location, .. } => format!("sign in at {location}"),
            Rejection::Tenant(e) => e.to_string(),
            // Which policy denied is for the audit record, not for the caller.
            // Which policy denied is for the audit record; what a policy's `@reason`
            // annotation says was written for the caller.
            Rejection::Forbidden(record) => match &record.evaluation.reason {
                Some(reason) => format!("the request is not allowed by policy: {reason}"),
                None => "the request is not allowed by policy".to_string(),
            },
            Rejection::UnknownRoute => "no such route".to_string(),
            Rejection::Internal { .. } => "the gateway failed to handle the request".to_string(),
            Rejection::RateLimited { limit, .. } => {
                format!("the `{limit}` rate limit is exceeded; retry after the Retry-After delay")
            }
            Rejection::QuotaExhausted { quota, .. } => {
                format!("the tenant's {quota} request quota is used up; it renews after the Retry-After delay")
            }
            Rejection::LimiterUnavailable { .. } => {
                "rate limits cannot be checked right now; retry later".to_string()
            }
            Rejection::BudgetExhausted {
                budget, resets_at, ..
            } => format!("the `{budget}` spending budget is spent; it resets at {resets_at}"),
            // The caller's own tenant and plan: telling them what to upgrade is the point.
            Rejection::FeatureNotInTier(m) => format!(
                "`{}` needs the `{}` feature, which the `{}` plan does not include",
                m.action, m.feature, m.tier
            ),
            Rejection::MeteringUnavailable { .. } => {
                "the gateway cannot record requests right now; retry after the Retry-After delay"
                    .to_string()
            }
            Rejection::EntityStoreUnavailable { .. } => {
                "the data this decision needs cannot be read right now; retry later".to_string()
            }
            // The client's own request and the limits it broke: saying which helps it comply.
            Rejection::HeadTooLarge(e) => e.to_string(),
            Rejection::UriTooLong { .. }
            | Rejection::BodyTooLarge { .. }
            | Rejection::RequestTimeout(_) => self.to_string(),
            Rejection::BadHeader(e) => e.to_string(),
            Rejection::AmbiguousFact(e) => format!("{e}: send it once"),
            Rejection::TooManyConnections(ConnectionLimit::Total(_)) => {
                "the gateway has too many open connections; retry later".to_string()
            }
            Rejection::TooManyConnections(ConnectionLimit::PerClient(_)) => {
                "too many open connections from this client address; close some or retry later"
                    .to_string()
            }
        }
    }

    /// The precise internal reason, for logs and audit records (never sent to the client).
    pub fn reason_code(&self) -> &'static str {
        match self {
            Rejection::Unauthenticated(e) => e.slug(),
            other => other.slug(),
        }
    }

    /// Extra response headers this rejection calls for.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Rejection::Unauthenticated(e) if e.token_presented() => vec![(
                "www-authenticate",
                "Bearer realm=\"gateway\", error=\"invalid_token\"".to_string(),
            )],
            Rejection::Unauthenticated(_) => {
                vec![("www-authenticate", "Bearer realm=\"gateway\"".to_string())]
            }
            Rejection::LoginRequired {
                location,
                clear_session,
            } => {
                let mut headers = vec![("location", location.clone())];
                if *clear_session {
                    headers.push((
                        "set-cookie",
                        crate::identity::sessions::Sessions::clear_cookie(
                            crate::identity::sessions::SESSION_COOKIE,
                        ),
                    ));
                }
                headers
            }
            Rejection::RateLimited { headers, .. }
            | Rejection::QuotaExhausted { headers, .. }
            | Rejection::LimiterUnavailable { headers } => headers.clone(),
            Rejection::MeteringUnavailable { .. } => {
                vec![("retry-after", METERING_RETRY_AFTER_SECS.to_string())]
            }
            Rejection::TooManyConnections(_) => {
                vec![("retry-after", CONNECTIONS_RETRY_AFTER_SECS.to_string())]
            }
            Rejection::BudgetExhausted {
                retry_after_secs, ..
            } => vec![("retry-after", retry_after_secs.to_string())],
            _ => Vec::new(),
        }
    }

    /// After this answer the connection is closed: the request's framing cannot be trusted,
    /// or the rest of it (a body, a head) was not read.
    pub fn closes_connection(&self) -> bool {
        matches!(self.status(), 400 | 408 | 413 | 414 | 431)
            || matches!(self, Rejection::TooManyConnections(_))
    }

    /// The RFC 9457 problem document for this rejection.
    pub fn problem(&self, request_id: &str) -> Problem {
        Problem {
            problem_type: format!("{PROBLEM_TYPE_PREFIX}{}", self.slug()),
            title: self.title(),
            status: self.status(),
            detail: self.public_detail(),
            request_id: request_id.to_string(),
            resets_at: match self {
                Rejection::BudgetExhausted { resets_at, .. } => Some(resets_at.clone()),
                _ => None,
            },
        }
    }
}

/// `application/problem+json` body (RFC 9457).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Extension member: correlates the response with logs, audit and usage records.
    pub request_id: String,
    /// Extension member of `budget-exhausted`: when the budget is whole again (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

impl Problem {
    pub const CONTENT_TYPE: &'static str = "application/problem+json";

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_mapped_once() {
        assert_eq!(Rejection::BadPath(PathError::EncodedSlash).status(), 400);
        assert_eq!(
            Rejection::NoHealthyUpstream { scope: "p".into() }.status(),
            503
        );
        assert_eq!(
            Rejection::UpstreamTimeout { reason: "x".into() }.status(),
            504
        );
        assert_eq!(
            Rejection::UpstreamUnreachable { reason: "x".into() }.status(),
            502
        );
    }

    #[test]
    fn problem_json_has_rfc9457_members_and_hides_internals() {
        let r = Rejection::UpstreamUnreachable {
            reason: "connect refused 10.0.0.7:8080".into(),
        };
        let body: serde_json::Value =
            serde_json::from_slice(&r.problem("req-1").to_json()).unwrap();
        assert_eq!(body["status"], 502);
        assert_eq!(
            body["type"],
            format!("{PROBLEM_TYPE_PREFIX}upstream-unreachable")
        );
        assert_eq!(body["request_id"], "req-1");
        assert!(body["title"].is_string());
        assert!(!body.to_string().contains("10.0.0.7"), "{body}");
    }
}
