//! The answer of a front door that decides but does not forward: Envoy's external
//! authorization filter (gRPC `Check`) and a proxy's forward-auth subrequest (nginx
//! `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`). The proxy in front of the app
//! forwards an allowed request itself, with the headers this says to set and remove.
//!
//! A check runs exactly what the inline proxy runs for a request — [`admission::admit`], then
//! the records of [`Recorder`] — so the three doors decide, meter and audit identically. What
//! differs is only what is handed back: the inline proxy applies an [`Admitted`] to the request
//! it forwards; a check describes the same changes as a [`Verdict`] the other proxy applies.

use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue};

use crate::admission::{self, Admitted, Refused, Services};
use crate::pipeline::correlation::{new_uuid_v7, REQUEST_ID_HEADER, TRACEPARENT_HEADER};
use crate::pipeline::sanitize::{self, HeadLimits};
use crate::pipeline::{forward, Correlation, Problem, Rejection, RequestHead};
use crate::records::{Established, Exchange, FrontDoor, Recorder};
use crate::snapshot::Snapshot;

/// The region residency chose first for the request (the Envoy route or nginx map picks the
/// region's cluster from it).
pub const REGION_HEADER: HeaderName = HeaderName::from_static("x-gateway-region");
/// Every region the request may be served in, in order of preference (for failover routes).
pub const REGIONS_HEADER: HeaderName = HeaderName::from_static("x-gateway-regions");
/// The normalised `path?query` that was authorised (tenant prefix stripped): what the upstream
/// should receive, so that the path served is the path decided.
pub const TARGET_HEADER: HeaderName = HeaderName::from_static("x-gateway-target");
/// The usage event's idempotency key, as the inline proxy sends it upstream.
pub const USAGE_ID_HEADER: HeaderName = HeaderName::from_static("x-gateway-usage-id");

/// One request to decide, as the door received its description.
pub struct CheckRequest<'a> {
    pub head: RequestHead<'a>,
    pub door: FrontDoor,
    /// `[server]`'s head limits, checked as the inline proxy checks an HTTP/2 head.
    pub head_limits: HeadLimits,
    /// `[server] max_body_bytes`: the limit of an announced body unless its route sets one.
    pub max_body_bytes: u64,
    /// What the door found wrong while reading the description (a header field no HTTP parser
    /// would accept): refused and recorded without running the stages.
    pub malformed: Option<Rejection>,
}

/// What the door answers.
#[derive(Debug)]
pub struct Verdict {
    pub request_id: String,
    /// The usage event's idempotency key.
    pub usage_id: String,
    pub outcome: Result<Allowed, Denied>,
}

/// Allowed: how the proxy in front must change the request it forwards.
#[derive(Debug, Default)]
pub struct Allowed {
    /// Headers to set on the upstream request, replacing any the client sent: the verified
    /// context (`x-tenant-id`, `x-principal-*`, the signed context token), `x-request-id`,
    /// `traceparent`, `x-gateway-usage-id`, and residency's region choice.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Headers the client sent that the upstream must not see (spoofed context headers,
    /// method and URL overrides).
    pub remove: Vec<HeaderName>,
    /// Headers for the client's response: `RateLimit-Policy` and `RateLimit`.
    pub response: Vec<(HeaderName, HeaderValue)>,
    /// The normalised target the decision was taken on, when the proxy must send it instead
    /// of the one it received (a dot segment resolved, a tenant prefix stripped).
    pub rewritten_target: Option<String>,
    /// The regions residency allows, in order of preference (empty: unrestricted).
    pub regions: Vec<String>,
}

/// Denied: the answer for the client, as the inline proxy would give it.
#[derive(Debug)]
pub struct Denied {
    pub status: u16,
    /// Why, for logs (`Rejection::reason_code`; never sent to the client).
    pub reason: &'static str,
    /// `content-type`, `cache-control`, `x-request-id`, and what the refusal calls for
    /// (`www-authenticate`, `retry-after`, `ratelimit`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The RFC 9457 problem document.
    pub body: Vec<u8>,
}

/// Decides `request` and records it: the usage event and audit record are written before this
/// returns (an allowed request's usage event in the outbox file, see [`Recorder::decided`]).
pub async fn check(
    request: &CheckRequest<'_>,
    snapshot: &Snapshot,
    services: &Services,
    recorder: Recorder<'_>,
) -> Verdict {
    let head = &request.head;
    let correlation = crate::pipeline::correlate(head.headers);
    let usage_id = new_uuid_v7().to_string();
    let started = std::time::Instant::now();
    let refused = |rejection: Rejection| Refused {
        rejection,
        principal: None,
        tenant: None,
        decision: None,
    };
    let outcome = if !recorder.recording.accepting() {
        // The writers are over their memory limit after failed writes: nothing may pass that
        // cannot be recorded.
        let reason = recorder
            .recording
            .unavailable()
            .unwrap_or_else(|| "record queue full".to_string());
        Err(refused(Rejection::MeteringUnavailable { reason }))
    } else if let Some(rejection) = &request.malformed {
        Err(refused(rejection.clone()))
    } else if let Err(rejection) =
        sanitize::check_parsed_head(head.target, head.headers, &request.head_limits)
    {
        Err(refused(rejection))
    } else {
        match admission::admit(head, snapshot, services).await {
            Ok(admitted) => match announced_body_limit(request, snapshot, &admitted) {
                Ok(()) => Ok(admitted),
                Err(rejection) => Err(Refused {
                    rejection,
                    principal: Some(admitted.principal.id.clone()),
                    tenant: admitted.tenant.as_ref().map(|t| t.tenant.id.clone()),
                    decision: admitted
                        .authorized
                        .as_ref()
                        .and_then(|a| a.decision.clone()),
                }),
            },
            Err(refused) => Err(refused),
        }
    };
    let method = head.method.as_str();
    let trace_id = correlation.trace.trace_id_hex();
    let mut exchange = Exchange {
        door: request.door,
        request_id: &correlation.request_id,
        trace_id: Some(&trace_id),
        usage_id: &usage_id,
        method,
        started,
        admitted: None,
        established: Established::default(),
        rejection: None,
        begun: false,
        forwarded: false,
        status: 0,
        request_bytes: 0,
        response_bytes: 0,
        upstream_latency: None,
        region: None,
        peer: None,
        failed_peers: &[],
    };
    let outcome = match &outcome {
        Ok(admitted) => {
            exchange.admitted = Some(admitted);
            exchange.forwarded = true;
            exchange.status = 200;
            exchange.region = admitted.placement.regions.first().map(String::as_str);
            match recorder.decided(&exchange).await {
                Ok(()) => Ok(allowed(
                    admitted,
                    snapshot,
                    &correlation,
                    &usage_id,
                    recorder.metering.is_some(),
                )),
                Err(rejection) => {
                    // Not recorded, so not forwarded: the refusal itself is recorded if it can be.
                    recorder.finish(&Exchange {
                        forwarded: false,
                        status: rejection.status(),
                        rejection: Some(&rejection),
                        ..exchange
                    });
                    Err(denied(&rejection, &correlation.request_id))
                }
            }
        }
        Err(refused) => {
            exchange.established = Established {
                principal: refused.principal.as_deref(),
                tenant: refused.tenant.as_deref(),
                decision: refused.decision.as_ref(),
            };
            exchange.rejection = Some(&refused.rejection);
            exchange.status = refused.rejection.status();
            recorder.finish(&exchange);
            tracing::info!(
                request_id = %correlation.request_id,
                door = ?request.door,
                reason = refused.rejection.reason_code(),
                detail = %refused.rejection,
                "request rejected"
            );
            Err(denied(&refused.rejection, &correlation.request_id))
        }
    };
    Verdict {
        request_id: correlation.request_id.clone(),
        usage_id,
        outcome,
    }
}

/// A body announced larger than the route (or `[server]`) accepts: 413 now rather than after
/// the proxy in front has streamed it.
fn announced_body_limit(
    request: &CheckRequest<'_>,
    snapshot: &Snapshot,
    admitted: &Admitted,
) -> Result<(), Rejection> {
    let limit = snapshot
        .authz
        .as_ref()
        .and_then(|a| a.routes.find(&admitted.sanitized.method, admitted.path()))
        .and_then(|m| m.route.max_body_bytes)
        .unwrap_or(request.max_body_bytes);
    sanitize::check_announced_body(request.head.headers, limit)
}

fn allowed(
    admitted: &Admitted,
    snapshot: &Snapshot,
    correlation: &Correlation,
    usage_id: &str,
    metering: bool,
) -> Allowed {
    let mut out = Allowed {
        remove: admitted.sanitized.strip.clone(),
        regions: admitted.placement.regions.clone(),
        ..Allowed::default()
    };
    let tenant = admitted.tenant.as_ref().map(|t| &t.tenant);
    out.set = forward::context_headers(
        &admitted.principal,
        tenant,
        snapshot.context_signer.as_deref(),
    );
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            out.set.push((name, v));
        }
    };
    set(
        HeaderName::from_static(REQUEST_ID_HEADER),
        &correlation.request_id,
    );
    set(
        HeaderName::from_static(TRACEPARENT_HEADER),
        &correlation.trace.traceparent(),
    );
    if metering {
        set(USAGE_ID_HEADER, usage_id);
    }
    if let Some(first) = admitted.placement.regions.first() {
        set(REGION_HEADER, first);
        set(REGIONS_HEADER, &admitted.placement.regions.join(","));
    }
    let target = admitted.upstream_target();
    set(TARGET_HEADER, &target);
    if admitted.rewrites_target() {
        out.rewritten_target = Some(target);
    }
    out.response = admitted
        .limit_headers
        .iter()
        .filter_map(|(name, value)| header(name, value))
        .collect();
    out
}

/// The inline proxy's answer to `rejection`, as headers and body.
pub fn denied(rejection: &Rejection, request_id: &str) -> Denied {
    let body = rejection.problem(request_id).to_json();
    let mut headers = vec![
        (
            CONTENT_TYPE,
            HeaderValue::from_static(Problem::CONTENT_TYPE),
        ),
        (CONTENT_LENGTH, HeaderValue::from(body.len())),
        (CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.push((HeaderName::from_static(REQUEST_ID_HEADER), id));
    }
    headers.extend(
        rejection
            .response_headers()
            .iter()
            .filter_map(|(name, value)| header(name, value)),
    );
    Denied {
        status: rejection.status(),
        reason: rejection.reason_code(),
        headers,
        body,
    }
}

fn header(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_str(value).ok()?,
    ))
}
