//! The Pingora glue: a thin `ProxyHttp` implementation that feeds each request through the
//! pipeline, applies the outcome to the upstream request, and maps failures to problem JSON.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use tracing::Instrument;

use crate::heads;
use crate::upstream::{SelectedPeer, Upstreams};
use gateway_engine::admission::{self, Admitted, Services};
use gateway_engine::check::USAGE_ID_HEADER;
use gateway_engine::geoip::X_FORWARDED_FOR;
use gateway_engine::identity::provisioning::Provisioner;
use gateway_engine::identity::sessions;
use gateway_engine::lifecycle::{InFlight, InFlightGuard, Recording};
use gateway_engine::metering::Metering;
use gateway_engine::pipeline::correlation::{
    REQUEST_ID, REQUEST_ID_HEADER, TRACEPARENT, TRACESTATE,
};
use gateway_engine::pipeline::rejection::TimeoutPhase;
use gateway_engine::pipeline::sanitize::{self, HeadLimits};
use gateway_engine::pipeline::{self, forward, Correlation, Problem, Rejection, RequestHead};
use gateway_engine::records::{Established, Exchange, FrontDoor, Recorder};
use gateway_engine::request_metrics::RequestMetrics;
use gateway_engine::snapshot::{Snapshot, SnapshotStore};

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// What a proxy in front says of the original request, which the gateway does not maintain:
/// passed on only from a trusted proxy (`[geoip] trusted_proxies`), removed otherwise.
const FORWARDED_BY_PROXIES: [HeaderName; 4] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-real-ip"),
];

pub struct GatewayProxy {
    store: Arc<SnapshotStore>,
    services: Arc<Services>,
    upstreams: Arc<Upstreams>,
    hooks: Hooks,
    metrics: Arc<RequestMetrics>,
    limits: RequestLimits,
}

/// The limits of `[server]` the proxy checks on a parsed request (the connection gate checks
/// HTTP/1.x heads before they are parsed, see [`crate::connections`]).
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub head: HeadLimits,
    /// Unless the route sets its own.
    pub max_body_bytes: u64,
    pub body_read_timeout: Duration,
    /// Longest silence from the client on an upgraded (WebSocket) connection.
    pub keepalive_timeout: Duration,
}

impl RequestLimits {
    pub fn of(server: &gateway_engine::config::ServerConfig) -> Self {
        RequestLimits {
            head: server.head_limits(),
            max_body_bytes: server.max_body_bytes,
            body_read_timeout: server.body_read_timeout,
            keepalive_timeout: server.keepalive_timeout,
        }
    }
}

/// What the proxy records besides forwarding: provisioning, usage, audit; and the requests in
/// flight, which a graceful shutdown waits for.
#[derive(Default)]
pub struct Hooks {
    pub provisioner: Option<Arc<Provisioner>>,
    pub metering: Option<Arc<Metering>>,
    pub recording: Arc<Recording>,
    pub in_flight: Arc<InFlight>,
}

impl GatewayProxy {
    pub fn new(
        store: Arc<SnapshotStore>,
        services: Arc<Services>,
        upstreams: Arc<Upstreams>,
        hooks: Hooks,
        limits: RequestLimits,
    ) -> Self {
        GatewayProxy {
            store,
            services,
            upstreams,
            hooks,
            metrics: Arc::default(),
            limits,
        }
    }

    /// The request metrics, shared with the connection gate (its refusals count as requests).
    pub fn request_metrics(&self) -> Arc<RequestMetrics> {
        self.metrics.clone()
    }

    /// Stage 1's checks of the head as it arrived, before the pipeline reads it: sizes and
    /// control characters of HTTP/2 heads (HTTP/1.x heads were checked as they were read),
    /// `Host` on HTTP/1.1, and a `Content-Length` no route could accept.
    fn check_head(&self, session: &Session, snapshot: &Snapshot) -> Result<(), Rejection> {
        let req = session.req_header();
        if session.is_http2() {
            sanitize::check_parsed_head(req.raw_path(), &req.headers, &self.limits.head)?;
        }
        sanitize::check_host(req.version, &req.headers)?;
        let largest = snapshot.largest_body_limit(self.limits.max_body_bytes);
        sanitize::check_announced_body(&req.headers, largest)
    }

    /// The body limit of an admitted request: its route's, or `[server] max_body_bytes`.
    fn body_limit(&self, admitted: &Admitted, snapshot: &Snapshot) -> u64 {
        snapshot
            .authz
            .as_ref()
            .filter(|a| a.routes.largest_body_limit().is_some())
            .and_then(|a| {
                a.routes
                    .find(&admitted.sanitized.method, admitted.path())
                    .and_then(|m| m.route.max_body_bytes)
            })
            .unwrap_or(self.limits.max_body_bytes)
    }

    /// Where this request's records go (see [`gateway_engine::records`]).
    fn recorder(&self) -> Recorder<'_> {
        Recorder {
            metering: self.hooks.metering.as_deref(),
            recording: &self.hooks.recording,
            provisioner: self.hooks.provisioner.as_deref(),
        }
    }

    /// The begin record of a request about to be forwarded (see [`Recorder::begin`]).
    async fn begin_usage(&self, ctx: &mut RequestCtx, method: &str) -> Result<(), Rejection> {
        let begun = self
            .recorder()
            .begin(&ctx.exchange(method, None, 0, None))
            .await;
        match begun {
            Ok(begun) => {
                ctx.begun = begun;
                Ok(())
            }
            // A begin in the file but not on disk is ended like any other (the refusal's end
            // record pairs with it): one refused event, not an interrupted one and a second.
            Err(failed) => {
                ctx.begun = failed.written;
                Err(failed.rejection)
            }
        }
    }

    /// Answers a refusal (the connection stays open unless the request's framing is suspect).
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rejection: Rejection,
        request_id: &str,
    ) -> pingora::Result<bool> {
        tracing::info!(request_id, reason = rejection.reason_code(), detail = %rejection, "request rejected");
        respond_problem(session, &rejection, request_id).await?;
        ctx.rejection = Some(Box::new(rejection));
        Ok(true)
    }

    fn region_of(&self, ctx: &RequestCtx) -> Option<String> {
        ctx.selected
            .as_ref()
            .and_then(|s| self.upstreams.pools().get(s.pool))
            .and_then(|p| p.region.clone())
    }

    /// Records usage and audit once the request is over (see [`Recorder::finish`]).
    fn finish(&self, session: &Session, ctx: &RequestCtx, status: u16) {
        let method = session.req_header().method.as_str();
        let region = self.region_of(ctx);
        let trace_id = ctx.correlation.as_ref().map(|c| c.trace.trace_id_hex());
        let mut exchange = ctx.exchange(method, trace_id.as_deref(), status, region.as_deref());
        exchange.request_bytes = session.body_bytes_read() as u64;
        exchange.response_bytes = session.body_bytes_sent() as u64;
        self.recorder().finish(&exchange);
    }
}

/// Per-request state carried between Pingora's callbacks.
pub struct RequestCtx {
    started: Instant,
    /// The usage event's idempotency key (also sent upstream as `x-gateway-usage-id`).
    usage_id: String,
    /// The begin record is written.
    begun: bool,
    /// The request went (or was going) upstream.
    forwarded: bool,
    /// Counts the request as in flight until the context is dropped.
    _in_flight: InFlightGuard,
    upstream_sent_at: Option<Instant>,
    upstream_latency: Option<std::time::Duration>,
    /// The request's body limit (its route's, or the global one) and the bytes seen so far.
    body_limit: u64,
    body_seen: u64,
    /// Who and which tenant, when a stage refused the request after establishing them.
    known_principal: Option<String>,
    known_tenant: Option<String>,
    known_decision: Option<Box<gateway_engine::pipeline::authorize::DecisionRecord>>,
    snapshot: Option<Arc<Snapshot>>,
    correlation: Option<Correlation>,
    /// Boxed, as the refusal details are: the context is part of the future Pingora moves
    /// (and boxes) for every request, and unboxed these were two thirds of it.
    admitted: Option<Box<Admitted>>,
    /// Why the request ended early, when it did (set before returning an error to Pingora).
    rejection: Option<Box<Rejection>>,
    selected: Option<SelectedPeer>,
    failed_peers: Vec<SocketAddr>,
}

impl RequestCtx {
    /// This request as its records describe it.
    fn exchange<'a>(
        &'a self,
        method: &'a str,
        trace_id: Option<&'a str>,
        status: u16,
        region: Option<&'a str>,
    ) -> Exchange<'a> {
        Exchange {
            door: FrontDoor::Proxy,
            request_id: self.request_id(),
            trace_id,
            usage_id: &self.usage_id,
            method,
            started: self.started,
            admitted: self.admitted.as_deref(),
            established: Established {
                principal: self.known_principal.as_deref(),
                tenant: self.known_tenant.as_deref(),
                decision: self.known_decision.as_deref(),
            },
            rejection: self.rejection.as_deref(),
            begun: self.begun,
            forwarded: self.forwarded,
            status,
            request_bytes: 0,
            response_bytes: 0,
            upstream_latency: self.upstream_latency,
            region,
            peer: self.selected.as_ref().map(|s| s.addr),
            failed_peers: &self.failed_peers,
        }
    }

    fn request_id(&self) -> &str {
        self.correlation
            .as_ref()
            .map(|c| c.request_id.as_str())
            .unwrap_or("-")
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    /// No downstream modules. Pingora's default adds its response-compression module switched
    /// off, which still built a context (two allocations) and ran four filters per request;
    /// the gateway forwards the upstream's encoding as it is and never compresses itself.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            usage_id: gateway_engine::pipeline::correlation::new_uuid_v7().to_string(),
            begun: false,
            forwarded: false,
            _in_flight: self.hooks.in_flight.enter(),
            upstream_sent_at: None,
            upstream_latency: None,
            body_limit: u64::MAX,
            body_seen: 0,
            known_principal: None,
            known_tenant: None,
            known_decision: None,
            snapshot: None,
            correlation: None,
            admitted: None,
            rejection: None,
            selected: None,
            failed_peers: Vec::new(),
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let snapshot = self.store.load();
        let req = session.req_header();
        let correlation = pipeline::correlate(&req.headers);
        if !self.hooks.recording.accepting() {
            // The writers are over their memory limit after failed writes: refuse before doing
            // any work rather than forward a request that cannot be recorded.
            let reason = self
                .hooks
                .recording
                .unavailable()
                .unwrap_or_else(|| "record queue full".to_string());
            let request_id = correlation.request_id.clone();
            ctx.correlation = Some(correlation);
            ctx.snapshot = Some(snapshot);
            return self
                .refuse(
                    session,
                    ctx,
                    Rejection::MeteringUnavailable { reason },
                    &request_id,
                )
                .await;
        }
        if let Err(rejection) = self.check_head(session, &snapshot) {
            let request_id = correlation.request_id.clone();
            ctx.correlation = Some(correlation);
            ctx.snapshot = Some(snapshot);
            return self.refuse(session, ctx, rejection, &request_id).await;
        }
        if let Some(sessions) = &self.services.sessions {
            if session
                .req_header()
                .raw_path()
                .starts_with(sessions::PREFIX.as_bytes())
            {
                ctx.correlation = Some(correlation);
                // Boxed, as every rare path here: its future would otherwise enlarge the
                // request filter's, which is moved into a box on every request.
                let answered =
                    Box::pin(self.serve_browser_endpoint(session, sessions, &snapshot)).await;
                ctx.snapshot = Some(snapshot);
                answered?;
                return Ok(true);
            }
        }
        let body = match Self::body_facts_length(session, &snapshot) {
            Some(length) => Some(Box::pin(Self::read_body(session, length)).await?),
            None => None,
        };
        let req = session.req_header();
        let host = req
            .headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        let head = RequestHead {
            method: &req.method,
            target: req.raw_path(),
            host,
            headers: &req.headers,
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .and_then(|a| {
                    gateway_engine::geoip::client_ip(
                        a.ip(),
                        &req.headers,
                        &self.services.trusted_proxies,
                    )
                }),
            body: body.as_deref(),
        };
        // Every log line of the stages (decisions included) carries the request id.
        let span = tracing::info_span!("request", request_id = %correlation.request_id);
        let outcome = admission::admit(&head, &snapshot, &self.services)
            .instrument(span)
            .await;
        let request_id = correlation.request_id.clone();
        ctx.correlation = Some(correlation);
        match outcome {
            Ok(admitted) => {
                ctx.body_limit = self.body_limit(&admitted, &snapshot);
                ctx.snapshot = Some(snapshot);
                if let Err(rejection) =
                    sanitize::check_announced_body(&session.req_header().headers, ctx.body_limit)
                {
                    ctx.admitted = Some(Box::new(admitted));
                    return self.refuse(session, ctx, rejection, &request_id).await;
                }
                // A WebSocket may stay quiet for longer than a body may stall. Only a WebSocket:
                // any other `Upgrade` is not forwarded, and must not stretch a body's timeout.
                let websocket = session.is_upgrade_req()
                    && session
                        .req_header()
                        .headers
                        .get(http::header::UPGRADE)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
                if websocket {
                    session.set_read_timeout(Some(self.limits.keepalive_timeout));
                }
                apply_admitted(session.req_header_mut(), &admitted)?;
                if self.services.sessions.is_some() {
                    strip_gateway_cookies(session.req_header_mut())?;
                }
                self.recorder().provision(&admitted, &request_id);
                ctx.admitted = Some(Box::new(admitted));
                let method = session.req_header().method.to_string();
                if let Err(rejection) = self.begin_usage(ctx, &method).await {
                    return self.refuse(session, ctx, rejection, &request_id).await;
                }
                Ok(false)
            }
            Err(admission::Refused {
                rejection,
                principal,
                tenant,
                decision,
            }) => {
                ctx.snapshot = Some(snapshot);
                ctx.known_principal = principal;
                ctx.known_tenant = tenant;
                ctx.known_decision = decision.map(Box::new);
                self.refuse(session, ctx, rejection, &request_id).await
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(chunk) = body else {
            return Ok(());
        };
        ctx.body_seen = ctx.body_seen.saturating_add(chunk.len() as u64);
        // An upgraded connection's bytes are a stream (WebSocket frames), not a body.
        if ctx.body_seen > ctx.body_limit && !session.was_upgraded() {
            let rejection = Rejection::BodyTooLarge {
                limit: ctx.body_limit,
            };
            let status = rejection.status();
            ctx.rejection = Some(Box::new(rejection));
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "the request body passed its limit",
            ));
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let Some(plan) = ctx.admitted.as_ref().map(|a| &a.placement) else {
            return Err(Error::explain(ErrorType::InternalError, "no route plan"));
        };
        match self.upstreams.select_from(&plan.pools, &ctx.failed_peers) {
            Some(selected) => {
                let Some((peer, pool)) = self.upstreams.http_peer(&selected) else {
                    return Err(Error::explain(ErrorType::InternalError, "unknown pool"));
                };
                let region = pool.region.as_deref().unwrap_or("");
                let failover = !ctx.failed_peers.is_empty()
                    || Some(region) != plan.regions.first().map(String::as_str);
                self.metrics.routed(
                    region,
                    if failover {
                        "failover"
                    } else {
                        placement_reason(plan.reason)
                    },
                );
                tracing::debug!(
                    target: "residency",
                    request_id = ctx.request_id(),
                    region,
                    pool = %pool.name,
                    peer = %selected.addr,
                    regime = plan.regime.as_deref().unwrap_or(""),
                    reason = ?plan.reason,
                    failover,
                    "routed"
                );
                ctx.selected = Some(selected);
                Ok(peer)
            }
            None => {
                let scope = if plan.regions.is_empty() {
                    "any pool".to_string()
                } else {
                    format!("the allowed regions {:?}", plan.regions)
                };
                let rejection = Rejection::NoHealthyUpstream { scope };
                let status = rejection.status();
                ctx.rejection = Some(Box::new(rejection));
                Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "no healthy upstream peer in the route plan",
                ))
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let mut parts = heads::request_with_room(upstream_request, heads::REQUEST_ROOM);
        let headers = &mut parts.headers;
        if let Some(c) = &ctx.correlation {
            headers.insert(REQUEST_ID, heads::value(c.request_id.as_str())?);
            headers.insert(TRACEPARENT, heads::value(c.trace.traceparent())?);
            match &c.trace.tracestate {
                Some(state) => {
                    headers.insert(TRACESTATE, heads::value(state.as_str())?);
                }
                None => {
                    headers.remove(TRACESTATE);
                }
            }
        }
        if let (Some(admitted), Some(snapshot)) = (&ctx.admitted, &ctx.snapshot) {
            let tenant = admitted.tenant.as_ref().map(|t| &t.tenant);
            for (name, value) in forward::context_headers(
                &admitted.principal,
                tenant,
                snapshot.context_signer.as_deref(),
            ) {
                headers.insert(name, value);
            }
        }
        // The upstream sees the whole hop list, every header line of it (RFC 9110 §5.3), plus
        // the peer; `Forwarded` (RFC 7239) is not maintained by the gateway, so a client's own
        // would reach the upstream unverified: it is removed.
        headers.remove(http::header::FORWARDED);
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
            let mut hops = String::with_capacity(64);
            for line in headers.get_all(&X_FORWARDED_FOR) {
                hops.push_str(&String::from_utf8_lossy(line.as_bytes()));
                hops.push_str(", ");
            }
            // Writing to a String cannot fail.
            let _ = write!(hops, "{}", client.ip());
            headers.insert(X_FORWARDED_FOR, heads::value(hops)?);
        }
        if self.hooks.metering.is_some() {
            headers.insert(USAGE_ID_HEADER, heads::value(ctx.usage_id.as_str())?);
        }
        // A client's own would reach an upstream that trusts the gateway as its proxy (for
        // redirects, reset links, host-based routing) unverified.
        // (Looked for by length first among the few headers a request has: four removals of
        // absent names cost a pass-through request 1 % more instructions.)
        let forwarded_by_a_proxy = |name: &HeaderName| {
            matches!(name.as_str().len(), 9 | 16 | 18) && FORWARDED_BY_PROXIES.contains(name)
        };
        if headers.keys().any(forwarded_by_a_proxy) && !self.peer_is_trusted_proxy(session) {
            for name in &FORWARDED_BY_PROXIES {
                headers.remove(name);
            }
        }
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(self.scheme_of(session)),
        );
        *upstream_request = heads::request_rebuilt(parts, upstream_request)?;
        ctx.forwarded = true;
        ctx.upstream_sent_at = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(sent) = ctx.upstream_sent_at {
            ctx.upstream_latency.get_or_insert(sent.elapsed());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let mut parts = heads::response_with_room(upstream_response, heads::RESPONSE_ROOM);
        let headers = &mut parts.headers;
        headers.insert(REQUEST_ID, heads::value(ctx.request_id())?);
        if let Some(admitted) = &ctx.admitted {
            for (name, value) in &admitted.limit_headers {
                headers.insert(heads::static_name(name)?, heads::value(value.as_str())?);
            }
            if let Some(cookie) = &admitted.set_cookie {
                headers.append(http::header::SET_COOKIE, heads::value(cookie.as_str())?);
            }
        }
        *upstream_response = heads::response_rebuilt(parts, upstream_response)?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent yet, so another peer may take the request.
        if let Some(selected) = ctx.selected.take() {
            ctx.failed_peers.push(selected.addr);
        }
        if ctx.failed_peers.len() <= self.upstreams.connect_retries {
            e.set_retry(true);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let rejection = ctx
            .rejection
            .take()
            .map(|r| *r)
            .or_else(|| classify_failure(e, &self.limits));
        let Some(rejection) = rejection else {
            // The client went away; there is nobody to answer.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let status = rejection.status();
        if status < 500 {
            // The client's doing (a body over its limit, a stalled body): a refusal like those
            // of the request filter.
            tracing::info!(request_id = ctx.request_id(), reason = rejection.reason_code(), detail = %rejection, "request rejected");
        } else {
            tracing::warn!(request_id = ctx.request_id(), error = %e, reason = %rejection, "request failed");
        }
        if session.response_written().is_none() {
            if let Err(write_error) = respond_problem(session, &rejection, ctx.request_id()).await {
                tracing::debug!(%write_error, "could not write the error response");
            }
        }
        ctx.rejection = Some(Box::new(rejection));
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        self.finish(session, ctx, status);
        record_request_metrics(&self.metrics, ctx, status);
        tracing::info!(
            target: "access",
            request_id = ctx.request_id(),
            method = %session.req_header().method,
            path = ctx.admitted.as_ref().map(|a| a.path()).unwrap_or("-"),
            tenant = ctx.admitted.as_ref().and_then(|a| a.tenant.as_ref()).map(|t| t.tenant.id.as_str()).unwrap_or(""),
            principal = ctx.admitted.as_ref().map(|a| a.principal.id.as_str()).unwrap_or(""),
            status,
            peer = ctx.selected.as_ref().map(|s| s.addr.to_string()).unwrap_or_default(),
            rejection = ctx.rejection.as_deref().map(Rejection::reason_code).unwrap_or(""),
            latency_us = ctx.started.elapsed().as_micros() as u64,
        );
    }
}

/// The request's metrics (see [`RequestMetrics`]).
/// Applies what the stages settled to the request the upstream receives: headers the gateway
/// owns (and overrides) removed, the method, and the normalised target (tenant prefix
/// stripped) whenever it differs from what the client sent. The path the route table matched
/// is exactly the path this sends.
pub fn apply_admitted(req: &mut RequestHeader, admitted: &Admitted) -> pingora::Result<()> {
    for name in &admitted.sanitized.strip {
        req.remove_header(name);
    }
    req.set_method(admitted.sanitized.method.clone());
    if admitted.rewrites_target() {
        let uri = http::Uri::try_from(admitted.upstream_target())
            .map_err(|e| Error::because(ErrorType::InternalError, "normalised target", e))?;
        req.set_uri(uri);
    }
    Ok(())
}

/// Removes the gateway's own cookies (the session, a login under way) from what the upstream
/// receives.
fn strip_gateway_cookies(req: &mut RequestHeader) -> pingora::Result<()> {
    if let Some(kept) = sessions::upstream_cookie(&req.headers) {
        req.remove_header(&http::header::COOKIE);
        if let Some(kept) = kept {
            req.insert_header(http::header::COOKIE, kept)?;
        }
    }
    Ok(())
}

fn record_request_metrics(metrics: &RequestMetrics, ctx: &RequestCtx, status: u16) {
    let route = ctx
        .admitted
        .as_ref()
        .and_then(|a| a.authorized.as_ref())
        .and_then(|a| a.decision.as_ref())
        .or(ctx.known_decision.as_deref())
        .map(|d| d.route.as_str());
    metrics.request(
        route,
        status,
        ctx.started.elapsed(),
        ctx.upstream_latency,
        ctx.rejection.as_deref().map(Rejection::reason_code),
    );
}

fn placement_reason(reason: gateway_engine::pipeline::placement::PlacementReason) -> &'static str {
    use gateway_engine::pipeline::placement::PlacementReason;
    match reason {
        PlacementReason::Home => "home",
        PlacementReason::ClientProximity => "client-proximity",
        PlacementReason::RegimePreference => "regime-preference",
        PlacementReason::Pinned => "pinned",
        PlacementReason::Unrestricted => "unrestricted",
    }
}

/// Maps a Pingora failure to the rejection the client is told about; `None` when the
/// downstream connection itself failed.
fn classify_failure(e: &Error, limits: &RequestLimits) -> Option<Rejection> {
    let reason = e.to_string();
    match (e.esource(), e.etype()) {
        (_, ErrorType::HTTPStatus(504)) => Some(Rejection::UpstreamTimeout { reason }),
        (
            ErrorSource::Downstream,
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
        ) => None,
        // The client stopped sending its body: it may still read the answer.
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => Some(Rejection::RequestTimeout(
            TimeoutPhase::Body(limits.body_read_timeout),
        )),
        // The client stopped reading: nobody to answer.
        (ErrorSource::Downstream, ErrorType::WriteTimedout) => None,
        (ErrorSource::Downstream, _) => Some(Rejection::MalformedRequest),
        (
            _,
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::ConnectProxyFailure
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
            | ErrorType::BindError
            | ErrorType::SocketError,
        ) => Some(Rejection::UpstreamUnreachable { reason }),
        (_, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => {
            Some(Rejection::UpstreamTimeout { reason })
        }
        (ErrorSource::Upstream, _) => Some(Rejection::UpstreamFailed { reason }),
        _ => Some(Rejection::Internal { reason }),
    }
}

impl GatewayProxy {
    /// Answers a request to the gateway's own browser endpoints (`/.gateway/…`: login,
    /// callback, logout, back-channel logout); nothing reaches the upstream.
    async fn serve_browser_endpoint(
        &self,
        session: &mut Session,
        sessions: &sessions::Sessions,
        snapshot: &Snapshot,
    ) -> pingora::Result<()> {
        let mut body = Vec::new();
        if session.req_header().method == http::Method::POST {
            while let Some(chunk) = session.read_request_body().await? {
                if body.len() + chunk.len() > sessions::MAX_FORM_BYTES {
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(413),
                        "a form body larger than the browser endpoints read",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
        }
        let req = session.req_header();
        let host = req
            .headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        let origin = format!(
            "{}://{}",
            self.scheme_of(session),
            host.unwrap_or("localhost")
        );
        let req = session.req_header();
        let answer = match snapshot.identity.as_deref() {
            Some(identity) => {
                let cx = sessions::SessionContext {
                    identity,
                    registry: &snapshot.registry,
                    generation: snapshot.identity_generation,
                    authenticator: &self.services.authenticator,
                    directory: &self.services.directory,
                };
                let request = sessions::BrowserRequest {
                    method: &req.method,
                    path: req.uri.path(),
                    query: req.uri.query(),
                    headers: &req.headers,
                    body: &body,
                    origin: &origin,
                    host_tenant: host.zip(snapshot.tenancy.as_deref()).and_then(
                        |(host, policy)| {
                            pipeline::tenant::tenant_from_host(host, policy, &snapshot.registry)
                        },
                    ),
                };
                sessions.handle(&request, &cx).await
            }
            None => sessions::BrowserResponse {
                status: 404,
                headers: Vec::new(),
                content_type: "text/plain; charset=utf-8",
                body: "no [identity] configured\n".to_string(),
            },
        };
        let body = Bytes::from(answer.body);
        let mut response = ResponseHeader::build(answer.status, Some(4 + answer.headers.len()))?;
        response.insert_header(CONTENT_TYPE, answer.content_type)?;
        response.insert_header(CONTENT_LENGTH, body.len())?;
        for (name, value) in answer.headers {
            response.append_header(name, value)?;
        }
        session
            .write_response_header(Box::new(response), false)
            .await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }

    /// The length of a body to read before admission: when the request's route decides on
    /// body facts (`read_body = true`) and the body announces a `Content-Length` within
    /// [`gateway_engine::authz::facts::BODY_FACTS_MAX_BYTES`]. Pingora's retry buffer keeps what
    /// is read and sends it to the upstream first, so the body still arrives whole. Any other
    /// body (larger, chunked, none) is not read early: its facts are absent.
    fn body_facts_length(session: &Session, snapshot: &Snapshot) -> Option<usize> {
        let req = session.req_header();
        let head = RequestHead {
            method: &req.method,
            target: req.raw_path(),
            host: None,
            headers: &req.headers,
            client_ip: None,
            body: None,
        };
        let cap = admission::body_wanted(&head, snapshot)?;
        sanitize::announced_length(&req.headers)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=cap).contains(n))
    }

    /// Reads the whole body (`length` bytes, within the body-facts limit) with Pingora's retry
    /// buffering on.
    async fn read_body(session: &mut Session, length: usize) -> pingora::Result<Bytes> {
        session.enable_retry_buffering();
        let mut body = bytes::BytesMut::with_capacity(length);
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// Whether the peer is a trusted proxy (`[geoip] trusted_proxies`).
    fn peer_is_trusted_proxy(&self, session: &Session) -> bool {
        let trusted = &self.services.trusted_proxies;
        !trusted.is_empty()
            && session
                .client_addr()
                .and_then(|a| a.as_inet())
                .is_some_and(|a| trusted.iter().any(|net| net.contains(&a.ip())))
    }

    /// `https` on a TLS listener, or behind a trusted proxy that says so; `http` otherwise.
    fn scheme_of(&self, session: &Session) -> &'static str {
        if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
            return "https";
        }
        // The header is read only for a trusted proxy's request (a lookup per request else).
        let forwarded_https = self.peer_is_trusted_proxy(session)
            && session
                .req_header()
                .headers
                .get(&X_FORWARDED_PROTO)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        if forwarded_https {
            "https"
        } else {
            "http"
        }
    }
}

/// Writes a rejection as an RFC 9457 problem response.
async fn respond_problem(
    session: &mut Session,
    rejection: &Rejection,
    request_id: &str,
) -> pingora::Result<()> {
    let body = Bytes::from(rejection.problem(request_id).to_json());
    let mut response = ResponseHeader::build(rejection.status(), Some(4))?;
    response.insert_header(CONTENT_TYPE, Problem::CONTENT_TYPE)?;
    response.insert_header(CONTENT_LENGTH, body.len())?;
    response.insert_header(CACHE_CONTROL, "no-store")?;
    response.insert_header(REQUEST_ID_HEADER, request_id)?;
    for (name, value) in rejection.response_headers() {
        response.insert_header(name, value)?;
    }
    if rejection.closes_connection() {
        // After a malformed request the connection's framing cannot be trusted; after a
        // refused body or head the rest of it was not read.
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

#[cfg(test)]
mod admitted_paths {
    //! Property: for arbitrary byte paths, a request the pipeline admits was matched by the route
    //! table on exactly the path the upstream receives once the proxy has applied the outcome
    //! ([`apply_admitted`]), and that path is a fixed point of the normaliser. Extends the
    //! sanitizer's own differential (`sanitize.rs`, whose paths it reuses) through tenant prefix
    //! stripping, the route table, residency pins and the proxy's rewrite of the request.
    //!
    //! The deployment is the fuzz targets' fixture (`gateway/fuzz/fixture`): the repository's
    //! policies and residency maps, tenants on the path (`/t/{tenant}`, stripped) and host.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use pingora::http::RequestHeader;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;
    use gateway_engine::admission::admit;
    use gateway_engine::test_support::{byte_path, Deployment};

    struct Fixture {
        deployment: Deployment,
        runtime: tokio::runtime::Runtime,
        token: String,
    }

    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let deployment = Deployment::load();
            let token = deployment.token("ada", "acme", &["admin"]);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            Fixture {
                deployment,
                runtime,
                token,
            }
        })
    }

    /// `template` (matchit syntax) with its parameters filled in.
    fn fill(template: &str, params: &[(String, String)]) -> String {
        let mut out = template.to_string();
        for (name, value) in params {
            out = out
                .replace(&format!("{{*{name}}}"), value)
                .replace(&format!("{{{name}}}"), value);
        }
        out
    }

    #[test]
    fn the_route_table_matches_the_path_the_upstream_receives() {
        let f = fixture();
        let engine = f.deployment.snapshot.authz.as_ref().unwrap();
        let admitted_count = AtomicUsize::new(0);
        let strategy = (
            prop::sample::select(vec!["GET", "HEAD", "PUT", "DELETE", "POST"]),
            prop::sample::select(vec!["/t/acme", ""]),
            prop::sample::select(vec![
                "/projects",
                "/documents",
                "/users/ada/documents",
                "/billing",
                "/reports",
                "",
            ]),
            // Arbitrary paths, and shorter ones that reach the routes more often.
            prop_oneof![
                1 => byte_path(),
                3 => "(/([a-zA-Z0-9._~;-]|%[2-7][0-9a-fA-F]|\\.\\.){1,4}){1,2}/?"
                    .prop_map(String::into_bytes),
            ],
            prop::option::of("[a-z0-9=&%;_]{0,12}"),
        );
        let mut runner = TestRunner::new(Config {
            cases: 2048,
            failure_persistence: None,
            ..Config::default()
        });
        let outcome = runner.run(&strategy, |(method, prefix, route, tail, query)| {
            let mut target = format!("{prefix}{route}").into_bytes();
            target.extend_from_slice(&tail);
            if let Some(q) = query {
                target.push(b'?');
                target.extend_from_slice(q.as_bytes());
            }
            // What Pingora accepts as a request head is what reaches the pipeline.
            let Ok(mut req) = RequestHeader::build(method, &target, None) else {
                return Ok(());
            };
            req.insert_header("authorization", format!("Bearer {}", f.token))
                .unwrap();
            if prefix.is_empty() {
                req.insert_header("host", "acme.api.fuzz.test").unwrap();
            }
            let head = RequestHead {
                method: &req.method,
                target: req.raw_path(),
                host: req.headers.get("host").and_then(|h| h.to_str().ok()),
                headers: &req.headers,
                client_ip: None,
                body: None,
            };
            let Ok(admitted) =
                f.runtime
                    .block_on(admit(&head, &f.deployment.snapshot, &f.deployment.services))
            else {
                return Ok(());
            };
            admitted_count.fetch_add(1, Ordering::Relaxed);
            let mut upstream = req.clone();
            apply_admitted(&mut upstream, &admitted).unwrap();
            let sent = upstream.raw_path();
            let sent_path = sent.split(|&b| b == b'?').next().unwrap_or_default();
            let matched = admitted.path();
            prop_assert_eq!(
                String::from_utf8_lossy(sent_path),
                matched,
                "{:?}",
                String::from_utf8_lossy(&target)
            );
            // The route the decision was made on matched the whole of that path.
            let decision = admitted
                .authorized
                .as_ref()
                .and_then(|a| a.decision.as_ref());
            let m = engine.routes.find(&admitted.sanitized.method, matched);
            prop_assert_eq!(
                m.as_ref().map(|m| &m.route.template),
                decision.map(|d| &d.route)
            );
            if let Some(m) = m {
                prop_assert_eq!(fill(&m.route.template, &m.params), matched);
            }
            // A fixed point of the normaliser, and of stage 1 as a whole.
            let normalised = sanitize::normalize_path(matched.as_bytes(), true);
            prop_assert_eq!(normalised.as_deref(), Ok(matched));
            let again = sanitize::sanitize(
                &RequestHead {
                    target: sent,
                    ..head
                },
                &f.deployment.snapshot.sanitize,
            );
            prop_assert_eq!(again.map(|s| s.target().into_bytes()), Ok(sent.to_vec()));
            Ok(())
        });
        if let Err(e) = outcome {
            panic!("{e}");
        }
        // The property was exercised, not only refusals.
        let admitted = admitted_count.into_inner();
        assert!(admitted > 100, "only {admitted} of 2048 requests admitted");
    }
}
#[cfg(test)]
mod context_size {
    /// The context lives inside the future Pingora builds, moves and boxes for every request:
    /// each byte of it is copied several times per request. Large parts are boxed (see
    /// [`super::RequestCtx`]); this keeps a new field from growing it unnoticed.
    #[test]
    fn the_request_context_stays_small() {
        let size = std::mem::size_of::<super::RequestCtx>();
        assert!(size <= 384, "RequestCtx is {size} bytes");
    }
}
