//! The usage and audit records of one request, built from what the engine decided and how the
//! exchange ended. A front door (the inline proxy, Envoy ext_authz, forward-auth) describes the request as an
//! [`Exchange`] and calls [`Recorder::begin`] before forwarding it and [`Recorder::finish`] once
//! it is over: which records exist, what they say and which of them may never be dropped is
//! decided here, the same for every door.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::admission::Admitted;
use crate::journal::Keep;
use crate::lifecycle::Recording;
use crate::metering::outbox::RecordBody;
use crate::metering::{EventEnd, EventFields, EventStart, Metering, Outcome, UsageEvent};
use crate::pipeline::authorize::DecisionRecord;
use crate::pipeline::placement::PlacementReason;
use crate::pipeline::Rejection;

/// Where a request's records go.
#[derive(Clone, Copy)]
pub struct Recorder<'a> {
    /// Usage metering, when `[metering]` is configured.
    pub metering: Option<&'a Metering>,
    pub recording: &'a Recording,
    /// Just-in-time provisioning: the first request of a principal of a provisioning issuer
    /// records it (`[provisioning]`).
    pub provisioner: Option<&'a crate::identity::provisioning::Provisioner>,
}

/// Who and what the stages established before one of them refused the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Established<'a> {
    pub principal: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub decision: Option<&'a DecisionRecord>,
}

/// Which front door took the request (named in its audit record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrontDoor {
    /// The inline proxy, which forwards the request itself.
    Proxy,
    /// Envoy's external authorization filter (gRPC `Check`).
    ExtAuthz,
    /// A proxy's forward-auth subrequest (nginx `auth_request`, Traefik, Caddy).
    ForwardAuth,
}

/// A request whose records could not be made durable before it would go upstream: it is
/// refused with `rejection`. `written`: its begin record is in the outbox all the same
/// (written, the fsync failed) — it must then be ended, with the same id, so the pair makes
/// one refused event rather than an interrupted one and a second record of the id.
#[derive(Debug)]
pub struct NotRecorded {
    pub rejection: Rejection,
    pub written: bool,
}

impl NotRecorded {
    fn of(error: crate::metering::outbox::OutboxError) -> NotRecorded {
        NotRecorded {
            written: matches!(error, crate::metering::outbox::OutboxError::NotSynced(_)),
            rejection: Rejection::MeteringUnavailable {
                reason: error.to_string(),
            },
        }
    }
}

/// One request as the records describe it.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub door: FrontDoor,
    pub request_id: &'a str,
    /// W3C trace id (hex).
    pub trace_id: Option<&'a str>,
    /// The usage event's idempotency key.
    pub usage_id: &'a str,
    pub method: &'a str,
    pub started: Instant,
    /// What every stage let through, when they all did.
    pub admitted: Option<&'a Admitted>,
    /// What the stages established, when one refused.
    pub established: Established<'a>,
    /// Why the request ended early, when it did.
    pub rejection: Option<&'a Rejection>,
    /// Its begin record was written ([`Recorder::begin`]).
    pub begun: bool,
    /// It went (or was going) upstream.
    pub forwarded: bool,
    /// The status answered (0 when nothing was).
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upstream_latency: Option<Duration>,
    /// The region of the peer that served (or was to serve) it.
    pub region: Option<&'a str>,
    pub peer: Option<SocketAddr>,
    pub failed_peers: &'a [SocketAddr],
}

impl Exchange<'_> {
    /// The authorization decision, allowed or not.
    fn decision(&self) -> Option<&DecisionRecord> {
        self.admitted
            .and_then(|a| a.authorized.as_ref())
            .and_then(|a| a.decision.as_ref())
            .or(match self.rejection {
                Some(Rejection::Forbidden(d)) => Some(&**d),
                _ => self.established.decision,
            })
    }

    /// Why it was refused, if it never reached the upstream.
    fn refusal(&self) -> Option<&'static str> {
        self.rejection
            .filter(|_| !self.forwarded)
            .map(Rejection::reason_code)
    }
}

impl Recorder<'_> {
    /// A principal of a provisioning issuer becomes known on its first admitted request.
    pub fn provision(&self, admitted: &Admitted, request_id: &str) {
        if let (Some(provisioner), Some(tenant)) = (self.provisioner, &admitted.tenant) {
            if admitted.principal.provision {
                provisioner.observe(&admitted.principal, &tenant.tenant.id, request_id);
            }
        }
    }

    /// Writes the begin record of a request about to be forwarded: in the outbox file (or, with
    /// `fsync = "batch"`, on disk) before anything is sent upstream, so no crash can lose a
    /// request the upstream may have seen. Returns whether a begin record was written (`false`
    /// when metering is off or configured not to record before forwarding).
    pub async fn begin(&self, exchange: &Exchange<'_>) -> Result<bool, NotRecorded> {
        let (Some(metering), Some(admitted)) = (self.metering, exchange.admitted) else {
            return Ok(false);
        };
        if exchange.begun || !metering.record_before_forward {
            return Ok(exchange.begun);
        }
        let planned_region = admitted.placement.regions.first().map(String::as_str);
        let start = usage_start(admitted, exchange, planned_region, &metering.fields);
        metering
            .outbox
            .begin(&start)
            .await
            .map_err(NotRecorded::of)?;
        Ok(true)
    }

    /// Records usage and audit once the request is over. Records of requests the upstream may
    /// have seen are always kept; those of refused requests may be dropped (and counted) while
    /// the disk refuses writes and the writers' queues are full.
    pub fn finish(&self, exchange: &Exchange<'_>) {
        let keep = if exchange.begun || exchange.forwarded {
            Keep::Always
        } else {
            Keep::IfRoom
        };
        if let Some(metering) = self.metering {
            count_usage(metering, exchange);
            charge_budgets(metering, exchange);
            let body = usage_record(exchange, &metering.fields);
            if !metering.outbox.record(&body, keep) {
                tracing::warn!(
                    request_id = exchange.request_id,
                    "usage record of a refused request dropped: the outbox cannot write"
                );
            }
        }
        self.audit(exchange, keep);
    }

    /// Records a request that a decision-only front door (Envoy ext_authz, forward-auth)
    /// answered. The proxy in front forwards an allowed request (`exchange.forwarded`) as soon
    /// as this returns, so its complete usage event is written now, as a begin record would
    /// be (an error refuses the request with 503 `metering-unavailable` instead), and its audit
    /// record is always kept; a refused request is recorded like any refusal.
    pub async fn decided(&self, exchange: &Exchange<'_>) -> Result<(), NotRecorded> {
        if !exchange.forwarded {
            self.finish(exchange);
            return Ok(());
        }
        if let Some(metering) = self.metering {
            let body = usage_record(exchange, &metering.fields);
            match metering.outbox.complete_now(&body).await {
                Ok(()) => {}
                // The record of the allowed request is in the file and cannot be taken back:
                // refusing now would leave a refused request recorded as forwarded (billed),
                // and a refusal's record of the same id would count it twice. It goes ahead as
                // recorded; the journal reports the failed sync (and refuses new requests
                // while it cannot write).
                Err(error @ crate::metering::outbox::OutboxError::NotSynced(_)) => {
                    tracing::error!(request_id = exchange.request_id, %error, "usage record written but not synced; the request goes ahead as recorded");
                }
                Err(error) => return Err(NotRecorded::of(error)),
            }
            count_usage(metering, exchange);
            charge_budgets(metering, exchange);
        }
        self.audit(exchange, Keep::Always);
        Ok(())
    }

    fn audit(&self, exchange: &Exchange<'_>, keep: Keep) {
        if let Some(audit) = &self.recording.audit {
            if !audit.append("request", &audit_record(exchange), keep) {
                tracing::warn!(
                    request_id = exchange.request_id,
                    "audit record of a refused request dropped: the audit log cannot write"
                );
            }
        }
    }
}

/// `gateway_usage_requests_total{tenant}`, when per-tenant metrics are on.
fn count_usage(metering: &Metering, exchange: &Exchange<'_>) {
    if metering.tenant_metrics {
        let tenant = exchange
            .admitted
            .and_then(|a| a.tenant.as_ref())
            .map(|t| t.tenant.id.clone())
            .unwrap_or_default();
        metrics::counter!(crate::telemetry::USAGE_REQUESTS_TOTAL, "tenant" => tenant).increment(1);
    }
}

/// Adds a request that went upstream to its tenant's spending budgets.
fn charge_budgets(metering: &Metering, exchange: &Exchange<'_>) {
    let (Some(budgets), Some(admitted)) = (&metering.budgets, exchange.admitted) else {
        return;
    };
    let Some(tenant) = admitted.tenant.as_ref().map(|t| &t.tenant) else {
        return;
    };
    if tenant.budgets.is_empty() || !exchange.forwarded || exchange.refusal().is_some() {
        return;
    }
    let decision = admitted
        .authorized
        .as_ref()
        .and_then(|a| a.decision.as_ref());
    let action = decision.map(|d| d.action.as_str());
    let route = decision.map(|d| d.route.as_str());
    let meters = crate::metering::meters_for(&metering.fields.meters, action, route);
    let tally = crate::metering::pricing::Tally {
        tier: Some(&tenant.tier),
        action,
        route,
        meters: &meters,
        forwarded: 1,
        request_bytes: exchange.request_bytes,
        response_bytes: exchange.response_bytes,
    };
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    budgets.charge(
        tenant,
        &admitted.principal.attributes,
        admitted.budget_prices.as_deref(),
        &tally,
        now_secs,
    );
}

/// The usage record of a finished request: the end of its begin record, or a complete event.
fn usage_record(exchange: &Exchange<'_>, fields: &EventFields) -> RecordBody {
    if exchange.begun {
        return RecordBody::End(EventEnd {
            id: exchange.usage_id.to_string(),
            status: exchange.status,
            request_bytes: exchange.request_bytes,
            response_bytes: exchange.response_bytes,
            upstream_latency_us: exchange.upstream_latency.map(micros),
            region: exchange.region.map(str::to_string),
            // Refused after the begin record, before anything went upstream.
            reason: exchange.refusal().map(str::to_string),
        });
    }
    let mut event = match exchange.admitted {
        Some(admitted) => {
            let start = usage_start(admitted, exchange, exchange.region, fields);
            // Completed as a begin and its end would be; the id and region are the start's.
            UsageEvent::from_parts(
                start,
                Some(EventEnd {
                    id: String::new(),
                    status: exchange.status,
                    request_bytes: exchange.request_bytes,
                    response_bytes: exchange.response_bytes,
                    upstream_latency_us: exchange.upstream_latency.map(micros),
                    region: None,
                    reason: None,
                }),
            )
        }
        None => refused_event(exchange),
    };
    if let Some(reason) = exchange.refusal() {
        event.outcome = Outcome::Rejected;
        event.reason = Some(reason.to_string());
    }
    RecordBody::Complete(Box::new(event))
}

/// The begin-time part of a usage event, borrowed from the request's state.
fn usage_start<'a>(
    admitted: &'a Admitted,
    exchange: &Exchange<'a>,
    region: Option<&'a str>,
    fields: &EventFields,
) -> EventStart<'a> {
    let decision = admitted
        .authorized
        .as_ref()
        .and_then(|a| a.decision.as_ref());
    let action = decision.map(|d| d.action.as_str());
    let route = decision.map(|d| d.route.as_str());
    let tenant = admitted.tenant.as_ref().map(|t| &t.tenant);
    EventStart {
        id: exchange.usage_id.into(),
        time: now_rfc3339().into(),
        request_id: exchange.request_id.into(),
        tenant: tenant.map(|t| t.id.as_str().into()),
        tier: tenant.map(|t| t.tier.as_str().into()),
        attributes: crate::metering::chargeback_attributes(
            &fields.chargeback,
            &admitted.principal.attributes,
        ),
        principal: Some(admitted.principal.id.as_str().into()),
        meters: crate::metering::meters_for(&fields.meters, action, route),
        action: action.map(Cow::from),
        route: route.map(Cow::from),
        method: exchange.method.into(),
        region: region.map(Cow::from),
    }
}

/// The usage event of a request refused before every stage let it through.
fn refused_event(exchange: &Exchange<'_>) -> UsageEvent {
    let decision = exchange.decision();
    let known = exchange.established;
    UsageEvent {
        id: exchange.usage_id.to_string(),
        time: now_rfc3339(),
        request_id: exchange.request_id.to_string(),
        tenant: known
            .tenant
            .map(str::to_string)
            .or(decision.map(|d| d.tenant.clone())),
        principal: known
            .principal
            .map(str::to_string)
            .or(decision.map(|d| d.principal.clone())),
        action: decision
            .map(|d| d.action.clone())
            .or_else(|| match exchange.rejection {
                // Refused by its tier before Cedar decided: the route's action is known.
                Some(Rejection::FeatureNotInTier(missing)) => Some(missing.action.clone()),
                _ => None,
            }),
        route: decision.map(|d| d.route.clone()),
        method: exchange.method.to_string(),
        status: exchange.status,
        request_bytes: 0,
        response_bytes: 0,
        upstream_latency_us: None,
        region: None,
        outcome: Outcome::Rejected,
        reason: exchange.rejection.map(|r| r.reason_code().to_string()),
        meters: Vec::new(),
        tier: None,
        attributes: Default::default(),
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The audit record of one request: who, which tenant, what was decided and why, where it was
/// routed and why, how it ended. Borrowed from the request's state (no JSON tree is built).
#[derive(serde::Serialize)]
pub struct RequestAudit<'a> {
    door: FrontDoor,
    request_id: &'a str,
    trace_id: Option<&'a str>,
    usage_id: &'a str,
    method: &'a str,
    path: Option<&'a str>,
    status: u16,
    tenant: Option<&'a str>,
    principal: Option<&'a str>,
    /// The tenant the credential belongs to, when it is not the request's (a partner
    /// issuer's user, a JIT-provisioned one): cross-organization reports select on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    principal_tenant: Option<&'a str>,
    /// A platform operator's credential acting in a tenant.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    platform: bool,
    auth: Option<&'a str>,
    rejection: Option<&'static str>,
    decision: Option<DecisionAudit<'a>>,
    routing: Option<RoutingAudit<'a>>,
    country: Option<&'a str>,
    latency_us: u64,
}

#[derive(serde::Serialize)]
struct DecisionAudit<'a> {
    action: &'a str,
    resource: &'a str,
    allowed: bool,
    policies: &'a [String],
    errors: &'a [String],
    shadow: Option<&'a crate::authz::ShadowOutcome>,
}

#[derive(serde::Serialize)]
struct RoutingAudit<'a> {
    region: Option<&'a str>,
    planned_regions: &'a [String],
    regime: Option<&'a str>,
    reason: PlacementReason,
    peer: Option<SocketAddr>,
    failed_peers: &'a [SocketAddr],
}

/// The audit record of `exchange`.
pub fn audit_record<'a>(exchange: &'a Exchange<'a>) -> RequestAudit<'a> {
    let admitted = exchange.admitted;
    let known = exchange.established;
    RequestAudit {
        door: exchange.door,
        request_id: exchange.request_id,
        trace_id: exchange.trace_id,
        usage_id: exchange.usage_id,
        method: exchange.method,
        path: admitted.map(|a| a.path()),
        status: exchange.status,
        tenant: admitted
            .and_then(|a| a.tenant.as_ref())
            .map(|t| t.tenant.id.as_str())
            .or(known.tenant),
        principal: admitted
            .map(|a| a.principal.id.as_str())
            .or(known.principal),
        principal_tenant: admitted.and_then(|a| {
            let own = a.principal.tenant.as_deref()?;
            let served = a.tenant.as_ref().map(|t| t.tenant.id.as_str());
            (served != Some(own)).then_some(own)
        }),
        platform: admitted.is_some_and(|a| a.principal.platform),
        auth: admitted.map(|a| a.principal.auth.label()),
        rejection: exchange.rejection.map(Rejection::reason_code),
        decision: exchange.decision().map(|d| DecisionAudit {
            action: &d.action,
            resource: &d.resource,
            allowed: d.evaluation.allowed,
            policies: &d.evaluation.policies,
            errors: &d.evaluation.errors,
            shadow: d.evaluation.shadow.as_ref(),
        }),
        routing: admitted.map(|a| &a.placement).map(|r| RoutingAudit {
            region: exchange.region,
            planned_regions: &r.regions,
            regime: r.regime.as_deref(),
            reason: r.reason,
            peer: exchange.peer,
            failed_peers: exchange.failed_peers,
        }),
        country: admitted.and_then(|a| a.country.as_deref()),
        latency_us: micros(exchange.started.elapsed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A begin record in the file but not on disk is `written` (the proxy then ends it with
    /// the refusal: one refused event); one that failed to be written is not.
    #[test]
    fn a_begin_written_but_not_synced_is_written() {
        use crate::journal::JournalError;
        use crate::metering::outbox::OutboxError;
        let failure = || JournalError::Io {
            path: "outbox".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        let not_synced = NotRecorded::of(OutboxError::NotSynced(failure()));
        assert!(not_synced.written);
        assert_eq!(not_synced.rejection.status(), 503);
        assert!(!NotRecorded::of(OutboxError::Journal(failure())).written);
    }

    fn refused(rejection: &Rejection) -> Exchange<'_> {
        Exchange {
            door: FrontDoor::Proxy,
            request_id: "req-1",
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            usage_id: "use-1",
            method: "DELETE",
            started: Instant::now(),
            admitted: None,
            established: Established {
                principal: Some("alice"),
                tenant: Some("acme"),
                decision: None,
            },
            rejection: Some(rejection),
            begun: false,
            forwarded: false,
            status: rejection.status(),
            request_bytes: 0,
            response_bytes: 0,
            upstream_latency: None,
            region: None,
            peer: None,
            failed_peers: &[],
        }
    }

    #[test]
    fn a_refusal_is_a_complete_rejected_event_naming_who_the_stages_established() {
        let rejection = Rejection::UnknownRoute;
        let RecordBody::Complete(event) =
            usage_record(&refused(&rejection), &EventFields::default())
        else {
            panic!("a request without a begin record gets a complete event");
        };
        assert_eq!(event.outcome, Outcome::Rejected);
        assert_eq!(event.reason.as_deref(), Some("unknown-route"));
        assert_eq!(event.status, 404);
        assert_eq!(event.principal.as_deref(), Some("alice"));
        assert_eq!(event.tenant.as_deref(), Some("acme"));
        assert_eq!(
            (event.id.as_str(), event.method.as_str()),
            ("use-1", "DELETE")
        );
    }

    /// A tier refusal comes before any Cedar decision, yet the report counts it under the
    /// action it refused (the demo's `documents:export` counted under "-" before).
    #[test]
    fn a_tier_refusal_is_counted_under_the_action_it_refused() {
        let rejection = Rejection::FeatureNotInTier(crate::limits::FeatureMissing {
            action: "documents:export".into(),
            feature: "exports".into(),
            tier: "free".into(),
        });
        let RecordBody::Complete(event) =
            usage_record(&refused(&rejection), &EventFields::default())
        else {
            panic!("a request without a begin record gets a complete event");
        };
        assert_eq!(event.action.as_deref(), Some("documents:export"));
        assert_eq!(event.reason.as_deref(), Some("feature-not-in-tier"));
        assert_eq!(event.status, 403);
    }

    #[test]
    fn a_begun_request_ends_its_begin_record_and_says_why_it_never_went_upstream() {
        let rejection = Rejection::NoHealthyUpstream {
            scope: "eu-central".into(),
        };
        let mut exchange = refused(&rejection);
        exchange.begun = true;
        let RecordBody::End(end) = usage_record(&exchange, &EventFields::default()) else {
            panic!("a begun request gets an end record");
        };
        assert_eq!(end.id, "use-1");
        assert_eq!(end.reason.as_deref(), Some("no-healthy-upstream"));
        // Once forwarded, the outcome is the upstream's: no refusal reason.
        exchange.forwarded = true;
        let RecordBody::End(end) = usage_record(&exchange, &EventFields::default()) else {
            panic!("a begun request gets an end record");
        };
        assert_eq!(end.reason, None);
    }

    #[test]
    fn the_audit_record_carries_ids_refusal_and_established_identity() {
        let rejection = Rejection::UnknownRoute;
        let exchange = refused(&rejection);
        let json = serde_json::to_value(audit_record(&exchange)).unwrap();
        assert_eq!(json["request_id"], "req-1");
        assert_eq!(json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(json["usage_id"], "use-1");
        assert_eq!(json["rejection"], "unknown-route");
        assert_eq!(json["principal"], "alice");
        assert_eq!(json["tenant"], "acme");
        assert_eq!(json["status"], 404);
        assert!(json["routing"].is_null() && json["decision"].is_null());
    }
}
