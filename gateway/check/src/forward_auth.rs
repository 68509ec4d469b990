//! The forward-auth front door: a proxy in front of the app asks, for each request, with a
//! subrequest carrying the original request's headers and
//!
//! - nginx `auth_request`: `X-Original-Method`, `X-Original-URI`, `X-Forwarded-Host` and
//!   `X-Original-Content-Length` (set in deploy/nginx/gateway-auth.conf);
//! - Traefik `forwardAuth`, Caddy `forward_auth`: `X-Forwarded-Method`, `X-Forwarded-Uri`,
//!   `X-Forwarded-Host`, `X-Forwarded-Proto`.
//!
//! `<path>` answers 200 with the context headers for the upstream (`x-tenant-id`,
//! `x-principal-*`, the signed context token, `x-request-id`, `x-gateway-target`, ...), the
//! `RateLimit` headers and `x-gateway-remove` (client headers the upstream must not see); or
//! the refusal with the inline proxy's status, headers and RFC 9457 body (Traefik and Caddy
//! pass it to the client as it is).
//!
//! nginx accepts only 2xx, 401 and 403 from an auth subrequest (anything else becomes 500), so
//! `<path>/nginx` answers every refusal as 401 or 403 with `x-gateway-refusal: <id>` and keeps
//! the real answer for a minute at `<path>/refusals/<id>`; the nginx snippet's `error_page`
//! fetches it from there, so the client gets the same status and body as from the inline proxy.
//!
//! Only the proxy in front may reach this listener: it trusts the `X-Original-*` and
//! `X-Forwarded-*` headers, and takes the right-most `X-Forwarded-For` hop as the client. Each
//! proxy sets one family and passes the client's own headers of the other along, so where both
//! families name the method or target they must agree: otherwise the request is refused (400
//! `malformed-request`), never decided on what the client wrote.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_engine::check::{CheckRequest, Denied, Verdict};
use gateway_engine::pipeline::sanitize::HeaderError;
use gateway_engine::pipeline::{Rejection, RequestHead};
use gateway_engine::records::FrontDoor;
use gateway_engine::side_listener::{CappedListener, DoorLimits};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::Decider;

/// Client headers the upstream must not see (comma-separated), for proxies that can remove
/// headers by name.
pub const REMOVE_HEADER: HeaderName = HeaderName::from_static("x-gateway-remove");
/// The id under which `<path>/refusals/` keeps a refusal answered to nginx as 401/403.
pub const REFUSAL_HEADER: HeaderName = HeaderName::from_static("x-gateway-refusal");
/// The refusal's real status, next to the 401/403 nginx is given.
pub const STATUS_HEADER: HeaderName = HeaderName::from_static("x-gateway-status");

/// How long a refusal answered to nginx can be fetched (nginx asks within milliseconds).
const REFUSAL_KEPT: Duration = Duration::from_secs(60);
/// Refusals kept at most (a burst of refusals evicts the oldest).
const REFUSALS_KEPT_MAX: usize = 10_000;

/// The headers with which proxies describe the original request: read, then not passed to the
/// stages as if the client had sent them.
const DESCRIPTION_HEADERS: &[&str] = &[
    "x-original-content-length",
    "x-original-method",
    "x-original-uri",
    "x-forwarded-method",
    "x-forwarded-uri",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
];

/// The headers the documented nginx, Traefik and Caddy set-ups replace or blank on the way to
/// the app: every header the gateway sets, and the overrides. Only these can be taken from a
/// client's request at this door (nginx and Traefik remove no header by prefix, nor by a list
/// the answer names).
const REPLACED_BY_THE_PROXY: &[&str] = &[
    "x-tenant-id",
    "x-principal-id",
    "x-principal-auth",
    "x-principal-roles",
    "x-principal-scopes",
    "x-principal-platform",
    "x-gateway-context",
    "x-request-id",
    "traceparent",
    "x-gateway-usage-id",
    "x-gateway-region",
    "x-gateway-regions",
    "x-gateway-target",
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
    "x-original-url",
    "x-rewrite-url",
    "forwarded",
];

type Answer = hyper::Response<Full<Bytes>>;

/// The forward-auth service.
pub struct ForwardAuth {
    decider: Decider,
    /// `[forward_auth] path`.
    path: String,
    nginx_path: String,
    refusals_prefix: String,
    refusals: quick_cache::sync::Cache<String, Arc<(Instant, Denied)>>,
}

/// How refusals are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// With their own status (Traefik, Caddy).
    AsIs,
    /// As 401 or 403, the real answer kept for the `error_page` to fetch.
    Nginx,
}

impl ForwardAuth {
    pub fn new(decider: Decider, path: &str) -> Self {
        ForwardAuth {
            decider,
            path: path.to_string(),
            nginx_path: format!("{path}/nginx"),
            refusals_prefix: format!("{path}/refusals/"),
            refusals: quick_cache::sync::Cache::new(REFUSALS_KEPT_MAX),
        }
    }

    /// Answers one request of the proxy in front.
    pub async fn handle(&self, request: hyper::Request<Incoming>, peer: SocketAddr) -> Answer {
        let path = request.uri().path();
        if path == self.path {
            self.authorize(request.headers(), peer, Mode::AsIs).await
        } else if path == self.nginx_path {
            self.authorize(request.headers(), peer, Mode::Nginx).await
        } else if let Some(id) = path.strip_prefix(&self.refusals_prefix) {
            self.kept_refusal(id)
        } else {
            plain(StatusCode::NOT_FOUND, "not a forward-auth path")
        }
    }

    async fn authorize(&self, headers: &HeaderMap, peer: SocketAddr, mode: Mode) -> Answer {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        // nginx describes the request with X-Original-*, Traefik and Caddy with X-Forwarded-*;
        // each passes the client's own headers of the other family along. Where both families
        // are present they must agree, or a client could describe a request of its choosing.
        let (target, method_named, ambiguous) = match (
            described(&text, "x-original-uri", "x-forwarded-uri"),
            described(&text, "x-original-method", "x-forwarded-method"),
        ) {
            (Ok(target), Ok(method)) => (target, method, false),
            (target, method) => (
                target.unwrap_or_else(|(proxy, _)| Some(proxy)),
                method.unwrap_or_else(|(proxy, _)| Some(proxy)),
                true,
            ),
        };
        let Some(target) = target else {
            tracing::warn!(
                %peer,
                "forward-auth request without X-Original-URI (nginx) or X-Forwarded-Uri (Traefik, Caddy): the proxy in front is misconfigured"
            );
            return plain(
                StatusCode::BAD_REQUEST,
                "forward-auth needs X-Original-URI or X-Forwarded-Uri",
            );
        };
        let method = match method_named {
            Some(m) => match Method::from_bytes(m.as_bytes()) {
                Ok(m) => m,
                Err(_) => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        "the original method is not an HTTP token",
                    )
                }
            },
            // The subrequest's own method (GET for Traefik and Caddy) would decide every
            // request as that method.
            None => {
                tracing::warn!(
                    %peer,
                    "forward-auth request without X-Original-Method (nginx) or X-Forwarded-Method (Traefik, Caddy): the proxy in front is misconfigured"
                );
                return plain(
                    StatusCode::BAD_REQUEST,
                    "forward-auth needs X-Original-Method or X-Forwarded-Method",
                );
            }
        };
        let mut malformed = ambiguous.then(|| {
            tracing::info!(
                %peer,
                "forward-auth: X-Original-* and X-Forwarded-* describe different requests (a client's own headers): refused"
            );
            Rejection::MalformedRequest
        });
        let host = text("x-forwarded-host")
            .or_else(|| text(HOST.as_str()))
            .map(str::to_string);
        let mut original = headers.clone();
        // nginx sends no body with the subrequest; the body's announced length comes apart.
        let announced = original.remove("x-original-content-length");
        for name in DESCRIPTION_HEADERS {
            original.remove(*name);
        }
        if let Some(length) = announced.filter(|v| !v.is_empty()) {
            original.insert(CONTENT_LENGTH, length);
        }
        if let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            original.insert(HOST, h);
        }
        // A header the upstream must not see that the proxy in front would pass on (e.g.
        // `X-Principal-Email`, `X_Tenant_Id`, `[sanitize] strip_headers`): refused, since the
        // app would take it for the gateway's.
        if malformed.is_none() {
            let sanitize = &self.decider.store.load().sanitize;
            malformed = original
                .keys()
                .find(|name| {
                    sanitize.strips(name) && !REPLACED_BY_THE_PROXY.contains(&name.as_str())
                })
                .map(|name| Rejection::BadHeader(HeaderError::NotRemovable(name.to_string())));
        }
        let client_ip = gateway_engine::geoip::forwarded_client_ip(
            peer.ip(),
            &original,
            &self.decider.services.trusted_proxies,
        );
        let request = CheckRequest {
            head: RequestHead {
                method: &method,
                target: target.as_bytes(),
                host: host.as_deref(),
                headers: &original,
                client_ip,
                body: None,
            },
            door: FrontDoor::ForwardAuth,
            head_limits: self.decider.head_limits,
            max_body_bytes: self.decider.max_body_bytes,
            malformed,
        };
        let verdict = self.decider.decide(&request).await;
        self.answer(verdict, mode)
    }

    fn answer(&self, verdict: Verdict, mode: Mode) -> Answer {
        match verdict.outcome {
            Ok(allowed) => {
                let mut answer = hyper::Response::new(Full::new(Bytes::new()));
                let headers = answer.headers_mut();
                for (name, value) in allowed.set.iter().chain(&allowed.response) {
                    headers.insert(name.clone(), value.clone());
                }
                if !allowed.remove.is_empty() {
                    let names: Vec<&str> = allowed.remove.iter().map(HeaderName::as_str).collect();
                    if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
                        headers.insert(REMOVE_HEADER, v);
                    }
                }
                answer
            }
            Err(denied) => match mode {
                Mode::AsIs => refusal(&denied),
                Mode::Nginx => {
                    let status = if denied.status == 401 {
                        StatusCode::UNAUTHORIZED
                    } else {
                        StatusCode::FORBIDDEN
                    };
                    let mut answer = hyper::Response::new(Full::new(Bytes::new()));
                    *answer.status_mut() = status;
                    let headers = answer.headers_mut();
                    if let Ok(id) = HeaderValue::from_str(&verdict.usage_id) {
                        headers.insert(REFUSAL_HEADER, id);
                    }
                    headers.insert(STATUS_HEADER, HeaderValue::from(denied.status));
                    self.refusals
                        .insert(verdict.usage_id, Arc::new((Instant::now(), denied)));
                    answer
                }
            },
        }
    }

    /// A refusal kept for nginx, once.
    fn kept_refusal(&self, id: &str) -> Answer {
        match self.refusals.remove(id) {
            Some((_, kept)) if kept.0.elapsed() <= REFUSAL_KEPT => refusal(&kept.1),
            _ => plain(
                StatusCode::NOT_FOUND,
                "no such refusal (refusals are kept for a minute)",
            ),
        }
    }
}

/// What the two header families say about one part of the request: `Err((nginx's, the other))`
/// when both are present and differ.
fn described<'h>(
    text: &impl Fn(&str) -> Option<&'h str>,
    original: &str,
    forwarded: &str,
) -> Result<Option<&'h str>, (&'h str, &'h str)> {
    match (text(original), text(forwarded)) {
        (Some(a), Some(b)) if a != b => Err((a, b)),
        (a, b) => Ok(a.or(b)),
    }
}

/// The inline proxy's answer to a refused request.
fn refusal(denied: &Denied) -> Answer {
    let mut answer = hyper::Response::new(Full::new(Bytes::from(denied.body.clone())));
    *answer.status_mut() =
        StatusCode::from_u16(denied.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = answer.headers_mut();
    for (name, value) in &denied.headers {
        headers.insert(name.clone(), value.clone());
    }
    answer
}

fn plain(status: StatusCode, text: &'static str) -> Answer {
    let mut answer = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

/// Serves forward-auth on `listener` until the process ends (a graceful shutdown lets the
/// proxy in front keep asking while requests drain), holding at most `limits.max_connections`
/// connections.
pub async fn serve(door: Arc<ForwardAuth>, listener: std::net::TcpListener, limits: DoorLimits) {
    let listener = match CappedListener::new(listener, limits.max_connections, "forward-auth") {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "forward-auth listener");
            return;
        }
    };
    loop {
        let (stream, peer, slot) = listener.accept().await;
        let door = door.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let door = door.clone();
                // Answered on a task of its own: the proxy in front closing the connection
                // drops this future, and a decision dropped half-way could have written its
                // usage record and not its audit record.
                let answer = tokio::spawn(async move { door.handle(req, peer).await });
                async move {
                    Ok::<_, Infallible>(answer.await.unwrap_or_else(|_| {
                        plain(StatusCode::INTERNAL_SERVER_ERROR, "the decision failed")
                    }))
                }
            });
            // HTTP/1.1 only (nginx, Traefik and Caddy ask over HTTP/1.1): hyper's head timeout
            // then runs from the connection's start, so a client that sends nothing, or half a
            // head, or idles between requests that long, is disconnected (nginx and Traefik
            // open another). The timer makes hyper enforce it. The door reads no request body.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use gateway_engine::check::Allowed;
    use http_body_util::BodyExt;

    use super::*;

    fn door() -> ForwardAuth {
        // The decider is not used by `answer` and `kept_refusal`.
        ForwardAuth {
            decider: test_decider(),
            path: "/auth".into(),
            nginx_path: "/auth/nginx".into(),
            refusals_prefix: "/auth/refusals/".into(),
            refusals: quick_cache::sync::Cache::new(16),
        }
    }

    fn test_decider() -> Decider {
        let deployment = gateway_engine::test_support::Deployment::load();
        Decider {
            store: gateway_engine::snapshot::SnapshotStore::new(deployment.snapshot),
            services: Arc::new(deployment.services),
            metering: None,
            recording: Arc::default(),
            in_flight: Arc::default(),
            head_limits: gateway_engine::pipeline::sanitize::HeadLimits {
                max_header_bytes: 16 * 1024,
                max_header_count: 100,
                max_uri_bytes: 1024,
            },
            max_body_bytes: 1024,
            provisioner: None,
        }
    }

    fn denied(status: u16) -> Verdict {
        Verdict {
            request_id: "r".into(),
            usage_id: format!("usage-{status}"),
            outcome: Err(gateway_engine::check::denied(
                &gateway_engine::pipeline::Rejection::RateLimited {
                    limit: "tenant".into(),
                    headers: vec![("retry-after", "3".into())],
                },
                "r",
            )),
        }
    }

    async fn body(answer: Answer) -> String {
        let bytes = answer.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn refusals_are_answered_as_they_are_or_kept_once_for_nginx() {
        let door = door();
        let as_is = door.answer(denied(429), Mode::AsIs);
        assert_eq!(as_is.status(), 429);
        assert_eq!(as_is.headers()["retry-after"], "3");
        assert!(body(as_is).await.contains("\"status\":429"));

        let nginx = door.answer(denied(429), Mode::Nginx);
        assert_eq!(nginx.status(), 403);
        assert_eq!(nginx.headers()[&STATUS_HEADER], "429");
        let id = nginx.headers()[&REFUSAL_HEADER]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(id, "usage-429");
        let kept = door.kept_refusal(&id);
        assert_eq!(kept.status(), 429);
        assert_eq!(kept.headers()["retry-after"], "3");
        assert!(body(kept).await.contains("rate-limited"));
        // Once only.
        assert_eq!(door.kept_refusal(&id).status(), 404);
    }

    fn describing(family: &[(&str, &str)], token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in family {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    #[tokio::test]
    async fn a_client_cannot_describe_its_own_request_in_the_other_family() {
        let deployment = gateway_engine::test_support::Deployment::load();
        let viewer = deployment.token("vic", "acme", &["viewer"]);
        let door = door();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let status = |headers: HeaderMap, mode: Mode| {
            let door = &door;
            async move { door.authorize(&headers, peer, mode).await.status() }
        };
        let traefik = [
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-uri", "/t/acme/projects/42"),
        ];
        let nginx = [
            ("x-original-method", "DELETE"),
            ("x-original-uri", "/t/acme/projects/42"),
        ];
        // Each proxy's own description is decided on: a viewer may not delete.
        assert_eq!(status(describing(&traefik, &viewer), Mode::AsIs).await, 403);
        assert_eq!(status(describing(&nginx, &viewer), Mode::Nginx).await, 403);
        // The client's headers of the other family, naming a read: refused, not allowed.
        let spoofed_through_traefik = [
            traefik[0],
            traefik[1],
            ("x-original-method", "GET"),
            ("x-original-uri", "/t/acme/projects/42"),
        ];
        assert_eq!(
            status(describing(&spoofed_through_traefik, &viewer), Mode::AsIs).await,
            400
        );
        let spoofed_through_nginx = [nginx[0], nginx[1], ("x-forwarded-method", "GET")];
        assert_eq!(
            status(describing(&spoofed_through_nginx, &viewer), Mode::Nginx).await,
            403,
            "nginx is told 403; the kept refusal says 400"
        );
        // Both families agreeing (a client repeating the truth) changes nothing.
        let agreeing = [traefik[0], traefik[1], nginx[0], nginx[1]];
        assert_eq!(
            status(describing(&agreeing, &viewer), Mode::AsIs).await,
            403
        );
        let reading = [
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/t/acme/projects/42"),
        ];
        assert_eq!(status(describing(&reading, &viewer), Mode::AsIs).await, 200);
        // No method described: 400, not the subrequest's own GET (a DELETE decided as a read).
        let no_method = [("x-forwarded-uri", "/t/acme/projects/42")];
        assert_eq!(
            status(describing(&no_method, &viewer), Mode::AsIs).await,
            400
        );
    }

    /// nginx and Traefik replace a fixed list of headers on the way to the app: a client's
    /// header the upstream must not see outside that list (a context header the gateway does
    /// not set, an underscore spelling, `[sanitize] strip_headers`) would reach it, so the
    /// request is refused; those on the list are replaced by the proxy and pass.
    #[tokio::test]
    async fn headers_the_proxy_in_front_would_pass_on_are_refused() {
        let deployment = gateway_engine::test_support::Deployment::load();
        let viewer = deployment.token("vic", "acme", &["viewer"]);
        let door = door();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let reading = [
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/t/acme/projects/42"),
        ];
        for (name, expected) in [
            ("x-principal-email", 400),
            ("x_tenant_id", 400),
            ("x-gateway-anything", 400),
            ("x-internal-debug", 400),
            ("x-tenant-id", 200),
            ("x-principal-roles", 200),
            ("x-http-method-override", 200),
            ("x-custom", 200),
        ] {
            let mut headers = describing(&reading, &viewer);
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("spoofed"),
            );
            let answer = door.authorize(&headers, peer, Mode::AsIs).await;
            assert_eq!(answer.status(), expected, "{name}");
        }
    }

    #[tokio::test]
    async fn allowed_carries_the_context_and_what_to_remove() {
        let door = door();
        let verdict = Verdict {
            request_id: "r".into(),
            usage_id: "u".into(),
            outcome: Ok(Allowed {
                set: vec![(
                    HeaderName::from_static("x-tenant-id"),
                    HeaderValue::from_static("acme"),
                )],
                remove: vec![
                    HeaderName::from_static("x-tenant-id"),
                    HeaderName::from_static("x-original-url"),
                ],
                ..Allowed::default()
            }),
        };
        let answer = door.answer(verdict, Mode::Nginx);
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["x-tenant-id"], "acme");
        assert_eq!(
            answer.headers()[&REMOVE_HEADER],
            "x-tenant-id, x-original-url"
        );
    }
}
