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
use crate::pipeline::correlation::{new_uuid_v7, REQUEST_ID, TRACEPARENT};
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
    } else if let Err(rejection) = sanitize::check_announced_body(
        head.headers,
        snapshot.largest_body_limit(request.max_body_bytes),
    ) {
        Err(refused(rejection))
    } else if overrides_method(head, snapshot) {
        // The proxy in front cannot change the method (Envoy may not set `:method`, nginx and
        // Traefik forward the request as it came): the upstream would get another method than
        // the one decided on. Refused before admission, so it spends no budget.
        Err(refused(Rejection::MethodOverride(
            sanitize::MethodOverrideError::NotAtThisDoor,
        )))
    } else {
        match admission::admit(head, snapshot, services).await {
            Ok(admitted) => match announced_body_limit(request, snapshot, &admitted) {
                Ok(()) => Ok(admitted),
                Err(rejection) => Err(Refused::after(rejection, &admitted)),
            },
            Err(refused) => Err(refused),
        }
    };
    // The method the upstream gets: the request's own (an override is refused above).
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
                Ok(()) => {
                    recorder.provision(admitted, &correlation.request_id);
                    let mut allowed = allowed(
                        admitted,
                        snapshot,
                        &correlation,
                        &usage_id,
                        recorder.metering.is_some(),
                    );
                    if services.sessions.is_some() {
                        session_cookies(&mut allowed, head.headers, admitted);
                    }
                    Ok(allowed)
                }
                Err(failed) => {
                    // Not recorded, so not forwarded: the refusal itself is recorded if it can be.
                    let rejection = failed.rejection;
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

/// Whether sanitising the request would honour a method override (the override's own errors
/// are left to admission, which refuses them).
fn overrides_method(head: &RequestHead<'_>, snapshot: &Snapshot) -> bool {
    snapshot.sanitize.may_override(head.method)
        && sanitize::sanitize(head, &snapshot.sanitize).is_ok_and(|s| s.method != *head.method)
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
    set(REQUEST_ID, &correlation.request_id);
    set(TRACEPARENT, &correlation.trace.traceparent());
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

/// With browser sessions (`[sessions]`), what the inline proxy does with cookies: the
/// gateway's own (`__Host-gw-…`, the sealed session holds the refresh token) are taken out of
/// the upstream's `Cookie`, and a session the decision renewed goes to the client.
fn session_cookies(out: &mut Allowed, headers: &http::HeaderMap, admitted: &Admitted) {
    match crate::identity::sessions::upstream_cookie(headers) {
        Some(Some(kept)) => {
            if let Ok(v) = HeaderValue::from_bytes(&kept) {
                out.set.push((http::header::COOKIE, v));
            }
        }
        Some(None) => out.remove.push(http::header::COOKIE),
        None => {}
    }
    if let Some(v) = admitted
        .set_cookie
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        out.response.push((http::header::SET_COOKIE, v));
    }
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
        headers.push((REQUEST_ID, id));
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

#[cfg(test)]
mod tests {
    //! `check` in process against the fuzz fixture's deployment (see `test_support`).

    use std::sync::{Arc, OnceLock};

    use http::{HeaderMap, Method};

    use super::*;
    use crate::lifecycle::Recording;
    use crate::test_support::Deployment;

    fn deployment() -> &'static Deployment {
        static DEPLOYMENT: OnceLock<Deployment> = OnceLock::new();
        DEPLOYMENT.get_or_init(Deployment::load)
    }

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 16 * 1024,
        max_header_count: 100,
        max_uri_bytes: 1024,
    };

    fn run(
        method: &str,
        target: &str,
        headers: &[(&str, String)],
        malformed: Option<Rejection>,
    ) -> Verdict {
        let d = deployment();
        run_on(&d.snapshot, &d.services, method, target, headers, malformed)
    }

    fn run_on(
        snapshot: &Snapshot,
        services: &Services,
        method: &str,
        target: &str,
        headers: &[(&str, String)],
        malformed: Option<Rejection>,
    ) -> Verdict {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let request = CheckRequest {
            head: RequestHead {
                method: &method,
                target: target.as_bytes(),
                host: None,
                headers: &map,
                client_ip: None,
                body: None,
            },
            door: FrontDoor::ExtAuthz,
            head_limits: LIMITS,
            max_body_bytes: 1024,
            malformed,
        };
        let recording = Recording::default();
        let recorder = Recorder {
            metering: None,
            recording: &recording,
            provisioner: None,
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(check(&request, snapshot, services, recorder))
    }

    fn bearer(sub: &str, org: &str, roles: &[&str]) -> (&'static str, String) {
        (
            "authorization",
            format!("Bearer {}", deployment().token(sub, org, roles)),
        )
    }

    fn value<'a>(list: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
        list.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn an_allowed_request_says_what_to_set_remove_and_send() {
        let verdict = run(
            "GET",
            "/t/acme/projects/42?x=1",
            &[
                bearer("ada", "acme", &["admin"]),
                ("x-tenant-id", "globex".to_string()),
                ("x-request-id", "req-42".to_string()),
            ],
            None,
        );
        let allowed = verdict.outcome.unwrap();
        assert_eq!(value(&allowed.set, "x-tenant-id"), Some("acme"));
        assert_eq!(value(&allowed.set, "x-principal-id"), Some("ada"));
        assert_eq!(value(&allowed.set, "x-request-id"), Some("req-42"));
        assert_eq!(verdict.request_id, "req-42");
        assert!(value(&allowed.set, "traceparent").is_some());
        assert_eq!(value(&allowed.set, "x-gateway-region"), Some("eu-central"));
        assert_eq!(
            value(&allowed.set, "x-gateway-target"),
            Some("/projects/42?x=1")
        );
        // The tenant prefix is stripped: the proxy must send the decided target.
        assert_eq!(
            allowed.rewritten_target.as_deref(),
            Some("/projects/42?x=1")
        );
        assert!(allowed.remove.iter().any(|n| n == "x-tenant-id"));
        assert!(value(&allowed.response, "ratelimit").is_some());
        // No metering configured: no usage id header.
        assert!(value(&allowed.set, "x-gateway-usage-id").is_none());
    }

    /// With `method_override = "honor"`, a door would authorise the override's method while
    /// the proxy in front sends the upstream the request's own: refused (400) before the
    /// stages. Without an override, and with overrides stripped, nothing changes.
    #[test]
    fn an_honoured_method_override_is_refused_at_a_door() {
        let mut honoring = deployment().snapshot.clone();
        honoring.sanitize = Arc::new(sanitize::SanitizePolicy::new(
            &toml::from_str("method_override = \"honor\"").unwrap(),
        ));
        let viewer = bearer("vic", "acme", &["viewer"]);
        for override_by in [
            (
                "/t/acme/projects/42",
                Some(("x-http-method-override", "GET")),
            ),
            ("/t/acme/projects/42?_method=GET", None),
        ] {
            let (target, header) = override_by;
            let mut headers = vec![viewer.clone()];
            headers.extend(header.map(|(n, v)| (n, v.to_string())));
            let verdict = run_on(
                &honoring,
                &deployment().services,
                "POST",
                target,
                &headers,
                None,
            );
            let denied = verdict.outcome.unwrap_err();
            assert_eq!((denied.status, denied.reason), (400, "bad-method-override"));
            // Stripped (the default), the override is removed and the POST decided as a POST.
            let verdict = run("POST", target, &headers, None);
            assert_ne!(
                verdict.outcome.err().map(|d| d.reason),
                Some("bad-method-override")
            );
        }
        let verdict = run_on(
            &honoring,
            &deployment().services,
            "GET",
            "/t/acme/projects/42",
            &[viewer],
            None,
        );
        assert!(verdict.outcome.is_ok());
    }

    /// With `[sessions]`, a door takes the gateway's own cookies out of the upstream's
    /// `Cookie` as the inline proxy does (the sealed session holds the refresh token).
    #[test]
    fn the_gateways_cookies_do_not_reach_the_upstream_through_a_door() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("session.key"), [7u8; 32]).unwrap();
        let config: crate::identity::sessions::SessionsConfig =
            toml::from_str("key_files = [\"session.key\"]").unwrap();
        let mut with_sessions = crate::test_support::Deployment::load();
        with_sessions.services.sessions = Some(Arc::new(
            crate::identity::sessions::Sessions::load(&config, dir.path()).unwrap(),
        ));
        let d = &with_sessions;
        let admin = bearer("ada", "acme", &["admin"]);
        let cookie = |value: &str| ("cookie", value.to_string());
        let verdict = run_on(
            &d.snapshot,
            &d.services,
            "GET",
            "/t/acme/projects/42",
            &[admin.clone(), cookie("theme=dark; __Host-gw-login=flow")],
            None,
        );
        let allowed = verdict.outcome.unwrap();
        assert_eq!(value(&allowed.set, "cookie"), Some("theme=dark"));
        let verdict = run_on(
            &d.snapshot,
            &d.services,
            "GET",
            "/t/acme/projects/42",
            &[admin.clone(), cookie("__Host-gw-login=flow")],
            None,
        );
        let allowed = verdict.outcome.unwrap();
        assert!(allowed.remove.iter().any(|n| n == "cookie"));
        assert!(value(&allowed.set, "cookie").is_none());
        // Without the gateway's cookies, the app's pass as they are.
        let verdict = run_on(
            &d.snapshot,
            &d.services,
            "GET",
            "/t/acme/projects/42",
            &[admin, cookie("theme=dark")],
            None,
        );
        let allowed = verdict.outcome.unwrap();
        assert!(value(&allowed.set, "cookie").is_none());
        assert!(!allowed.remove.iter().any(|n| n == "cookie"));
    }

    #[test]
    fn a_refusal_is_the_inline_proxys_answer() {
        let verdict = run(
            "DELETE",
            "/t/acme/projects/42",
            &[("authorization", "Bearer not-a-token".to_string())],
            None,
        );
        let denied = verdict.outcome.unwrap_err();
        assert_eq!(denied.status, 401);
        assert_eq!(
            value(&denied.headers, "content-type"),
            Some("application/problem+json")
        );
        assert!(value(&denied.headers, "www-authenticate").is_some());
        let problem: serde_json::Value = serde_json::from_slice(&denied.body).unwrap();
        assert_eq!(problem["status"], 401);
        assert_eq!(problem["request_id"], verdict.request_id.as_str());

        let verdict = run(
            "DELETE",
            "/t/acme/projects/42",
            &[bearer("vic", "acme", &["viewer"])],
            None,
        );
        let denied = verdict.outcome.unwrap_err();
        assert_eq!((denied.status, denied.reason), (403, "forbidden"));
    }

    #[test]
    fn what_the_door_found_malformed_and_oversized_heads_are_refused_before_the_stages() {
        let verdict = run(
            "GET",
            "/t/acme/projects/42",
            &[bearer("ada", "acme", &["admin"])],
            Some(Rejection::BadHeader(sanitize::HeaderError::MalformedField)),
        );
        assert_eq!(verdict.outcome.unwrap_err().status, 400);
        let long = format!("/t/acme/projects/{}", "a".repeat(2000));
        let verdict = run("GET", &long, &[bearer("ada", "acme", &["admin"])], None);
        assert_eq!(verdict.outcome.unwrap_err().status, 414);
    }

    #[test]
    fn an_announced_body_over_the_limit_is_413() {
        let verdict = run(
            "PUT",
            "/t/acme/projects/42",
            &[
                bearer("ada", "acme", &["admin"]),
                ("content-length", "5000".to_string()),
            ],
            None,
        );
        assert_eq!(verdict.outcome.unwrap_err().status, 413);
        // Larger than any route accepts: refused before the stages (no budget spent), so
        // before the credentials are even read.
        let verdict = run(
            "PUT",
            "/t/acme/projects/42",
            &[
                ("authorization", "Bearer not-a-token".to_string()),
                ("content-length", "999999999999".to_string()),
            ],
            None,
        );
        assert_eq!(verdict.outcome.unwrap_err().status, 413);
    }
}
