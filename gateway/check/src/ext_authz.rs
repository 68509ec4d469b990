//! Envoy's external authorization filter as a front door: `envoy.service.auth.v3.Authorization`
//! over gRPC, next to `grpc.health.v1.Health` (Kubernetes gRPC probes) and server reflection
//! (`grpcurl`, Postman) on one listener.
//!
//! Envoy describes the request in `attributes.request.http`: the method, `path` (the request
//! target with its query, undecoded), `host` (`:authority`), and the headers — lower-case,
//! repeated fields joined with commas, HTTP/2 pseudo-headers (`:method`, `:path`, ...) among
//! them for every protocol, or, with `encode_raw_headers`, as `header_map` with raw values.
//! `attributes.source.address` is the downstream address Envoy settled on.
//!
//! The answer: `OK` with the headers to set on the upstream request (overwriting what the
//! client sent), the headers to remove, `:path` when the decided target differs from the
//! request's, and the `RateLimit` headers for the client; or a denial with the inline proxy's
//! status, headers and RFC 9457 body. `x-gateway-region` names the region residency chose, for
//! the Envoy route to pick the region's cluster (see deploy/envoy/).

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue as EnvoyHeaderValue, HeaderValueOption, HttpStatus,
    OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::google::rpc;
use gateway_engine::check::{self, Verdict};
use gateway_engine::pipeline::sanitize::{HeadTooLarge, HeaderError};
use gateway_engine::pipeline::{Rejection, RequestHead};
use gateway_engine::records::FrontDoor;
use gateway_engine::side_listener::{CappedListener, ConnectionSlot, DoorLimits};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tonic::{Request, Response, Status};

use crate::Decider;

/// The encoded descriptors of `envoy/service/auth/v3/external_auth.proto` and its imports, for
/// server reflection (envoy-types ships code, not descriptors; see `examples/`).
pub const DESCRIPTORS: &[u8] = include_bytes!("ext_authz_descriptors.bin");

/// google.rpc codes (google/rpc/code.proto) of the answers.
const RPC_OK: i32 = 0;
const RPC_INVALID_ARGUMENT: i32 = 3;
const RPC_PERMISSION_DENIED: i32 = 7;
const RPC_RESOURCE_EXHAUSTED: i32 = 8;
const RPC_UNAVAILABLE: i32 = 14;
const RPC_UNAUTHENTICATED: i32 = 16;

/// The `Authorization` service.
pub struct ExtAuthz {
    decider: Decider,
}

impl ExtAuthz {
    pub fn new(decider: Decider) -> Self {
        ExtAuthz { decider }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Decided on a task of its own: Envoy's timeout (tonic honours `grpc-timeout`) or a
        // reset stream drops this future, and a decision dropped half-way could have written
        // its usage record and not its audit record.
        let decider = self.decider.clone();
        let request = request.into_inner();
        tokio::spawn(async move { decide(&decider, &request).await })
            .await
            .map_err(|e| Status::internal(format!("the decision failed: {e}")))?
            .map(Response::new)
    }
}

async fn decide(decider: &Decider, request: &CheckRequest) -> Result<CheckResponse, Status> {
    let described = Described::of(request).map_err(Status::invalid_argument)?;
    let client_ip = described.source.map(|peer| {
        gateway_engine::geoip::client_ip(
            peer,
            &described.headers,
            &decider.services.trusted_proxies,
        )
    });
    let check_request = check::CheckRequest {
        head: RequestHead {
            method: &described.method,
            target: described.target.as_bytes(),
            host: described.host.as_deref(),
            headers: &described.headers,
            client_ip: client_ip.flatten(),
            body: None,
        },
        door: FrontDoor::ExtAuthz,
        head_limits: decider.head_limits,
        max_body_bytes: decider.max_body_bytes,
        malformed: described.malformed,
    };
    let verdict = decider.decide(&check_request).await;
    Ok(answer(verdict, &described.target))
}

/// The request as Envoy described it.
struct Described {
    method: Method,
    target: String,
    host: Option<String>,
    headers: HeaderMap,
    source: Option<IpAddr>,
    malformed: Option<Rejection>,
}

impl Described {
    fn of(request: &CheckRequest) -> Result<Self, String> {
        let attributes = request.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .ok_or("a CheckRequest without attributes.request.http")?;
        let mut malformed = None;
        let mut pseudo = PseudoHeaders::default();
        let mut headers = HeaderMap::new();
        let mut add = |name: &str, value: &[u8]| {
            if let Some(rest) = name.strip_prefix(':') {
                pseudo.note(rest, value);
                return;
            }
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                (Ok(n), Ok(v)) => {
                    // `append` panics past the map's capacity (24,576 names): a head of that
                    // many fields is far over any limit.
                    if headers.try_append(n, v).is_err() {
                        malformed.get_or_insert(Rejection::HeadTooLarge(HeadTooLarge::Fields {
                            limit: headers.len(),
                        }));
                    }
                }
                (Err(_), _) => {
                    malformed.get_or_insert(Rejection::BadHeader(HeaderError::MalformedField));
                }
                (Ok(_), Err(_)) => {
                    malformed.get_or_insert(Rejection::BadHeader(HeaderError::ControlCharacter(
                        name.to_string(),
                    )));
                }
            }
        };
        // With `encode_raw_headers`, Envoy leaves `headers` empty and sends raw values.
        match http.header_map.as_ref().filter(|m| !m.headers.is_empty()) {
            Some(map) => {
                for h in &map.headers {
                    let value = if h.raw_value.is_empty() {
                        h.value.as_bytes()
                    } else {
                        &h.raw_value
                    };
                    add(&h.key, value);
                }
            }
            None => {
                for (name, value) in &http.headers {
                    add(name, value.as_bytes());
                }
            }
        }
        let method_text = non_empty(&http.method).or(pseudo.method.as_deref());
        let method = method_text
            .ok_or("no method (attributes.request.http.method or :method)")
            .and_then(|m| {
                Method::from_bytes(m.as_bytes()).map_err(|_| "the method is not an HTTP token")
            })?;
        let target = non_empty(&http.path)
            .or(pseudo.path.as_deref())
            .ok_or("no request target (attributes.request.http.path or :path)")?
            .to_string();
        let host = non_empty(&http.host)
            .map(str::to_string)
            .or(pseudo.authority);
        Ok(Described {
            method,
            target,
            host,
            headers,
            source: attributes
                .and_then(|a| a.source.as_ref())
                .and_then(|peer| peer.address.as_ref())
                .and_then(socket_ip),
            malformed,
        })
    }
}

/// `:method`, `:path` and `:authority`, as Envoy lists them among the headers.
#[derive(Default)]
struct PseudoHeaders {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
}

impl PseudoHeaders {
    fn note(&mut self, name: &str, value: &[u8]) {
        let slot = match name {
            "method" => &mut self.method,
            "path" => &mut self.path,
            "authority" => &mut self.authority,
            _ => return,
        };
        *slot = std::str::from_utf8(value).ok().map(str::to_string);
    }
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn socket_ip(address: &envoy_types::pb::envoy::config::core::v3::Address) -> Option<IpAddr> {
    match address.address.as_ref()? {
        Address::SocketAddress(socket) => socket.address.parse().ok(),
        _ => None,
    }
}

/// The `CheckResponse` for a verdict on a request whose target was `target`.
fn answer(verdict: Verdict, target: &str) -> CheckResponse {
    match verdict.outcome {
        Ok(allowed) => {
            let mut headers: Vec<HeaderValueOption> = allowed
                .set
                .iter()
                .map(|(name, value)| overwrite(name.as_str(), value.as_bytes()))
                .collect();
            // Envoy applies a `:path` mutation; the route was chosen already, which is right:
            // the decided path differs only by normalisation or a stripped tenant prefix.
            if let Some(decided) = &allowed.rewritten_target {
                if decided != target {
                    headers.push(overwrite(":path", decided.as_bytes()));
                }
            }
            CheckResponse {
                status: Some(rpc::Status {
                    code: RPC_OK,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers,
                    // Envoy removes after it sets: a name the answer sets (the client sent
                    // its own, so it is also on the strip list) must not be removed, or the
                    // verified value goes with the client's.
                    headers_to_remove: allowed
                        .remove
                        .iter()
                        .filter(|name| !allowed.set.iter().any(|(set, _)| set == *name))
                        .map(|name| name.as_str().to_string())
                        .collect(),
                    response_headers_to_add: allowed
                        .response
                        .iter()
                        .map(|(name, value)| overwrite(name.as_str(), value.as_bytes()))
                        .collect(),
                    ..Default::default()
                })),
                ..Default::default()
            }
        }
        Err(denied) => CheckResponse {
            status: Some(rpc::Status {
                code: rpc_code(denied.status),
                message: denied.reason.to_string(),
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                // Envoy takes the number as it is (451 included, which its enum lacks).
                status: Some(HttpStatus {
                    code: i32::from(denied.status),
                }),
                headers: denied
                    .headers
                    .iter()
                    .map(|(name, value)| overwrite(name.as_str(), value.as_bytes()))
                    .collect(),
                body: String::from_utf8_lossy(&denied.body).into_owned(),
            })),
            ..Default::default()
        },
    }
}

/// A header Envoy sets, replacing any value of the same name (the default, append, would let a
/// client's own `x-tenant-id` travel next to the verified one).
fn overwrite(name: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(EnvoyHeaderValue {
            key: name.to_string(),
            value: String::from_utf8_lossy(value).into_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The gRPC status Envoy logs next to the HTTP status it answers.
fn rpc_code(status: u16) -> i32 {
    match status {
        401 => RPC_UNAUTHENTICATED,
        429 => RPC_RESOURCE_EXHAUSTED,
        400 | 408 | 413 | 414 | 431 => RPC_INVALID_ARGUMENT,
        503 => RPC_UNAVAILABLE,
        _ => RPC_PERMISSION_DENIED,
    }
}

/// Serves the `Authorization` service, health and reflection on `listener` until `shutdown`
/// turns true; health answers `NOT_SERVING` from the moment a graceful shutdown begins, while
/// checks keep being answered until the process ends.
pub async fn serve(
    decider: Decider,
    listener: std::net::TcpListener,
    limits: DoorLimits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let listener = match CappedListener::new(listener, limits.max_connections, "ext_authz") {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "ext_authz listener");
            return;
        }
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<AuthorizationServer<ExtAuthz>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha();
    let (reflection, reflection_alpha) = match (reflection, reflection_alpha) {
        (Ok(v1), Ok(v1alpha)) => (v1, v1alpha),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "ext_authz: reflection descriptors");
            return;
        }
    };
    let health_on_shutdown = async move {
        while shutdown.changed().await.is_ok() {
            if *shutdown.borrow() {
                reporter
                    .set_not_serving::<AuthorizationServer<ExtAuthz>>()
                    .await;
                reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                tracing::info!("ext_authz: shutting down, health answers NOT_SERVING");
                break;
            }
        }
        // Keep answering checks until the process ends (Envoy may still ask).
        std::future::pending::<()>().await;
    };
    // Each connection carries its slot under the listener's limit until tonic drops it. One
    // that has not sent the HTTP/2 connection preface within the head timeout is closed before
    // it reaches tonic (whose handshake would wait for ever), so silent or stalled connections
    // cannot keep Envoy out; once connected, pings find dead peers.
    // TCP_NODELAY is set at accept: without it part of each answer waits for the client's
    // delayed ACK, 48 ms per Check instead of 0.2 ms (bench/results/2026-12-03-vm-ext-authz*.md).
    let (started, incoming) = tokio::sync::mpsc::channel::<Slotted>(limits.max_connections);
    tokio::spawn(async move {
        loop {
            let (mut stream, _, slot) = tokio::select! {
                accepted = listener.accept() => accepted,
                () = started.closed() => return,
            };
            let started = started.clone();
            tokio::spawn(async move {
                let mut preface = [0u8; HTTP2_PREFACE.len()];
                let read = tokio::time::timeout(
                    limits.header_read_timeout,
                    stream.read_exact(&mut preface),
                );
                if matches!(read.await, Ok(Ok(_))) && preface == *HTTP2_PREFACE {
                    let connection = Slotted {
                        stream,
                        preface_replayed: 0,
                        _slot: slot,
                    };
                    let _ = started.send(connection).await;
                }
            });
        }
    });
    let incoming = futures_util::stream::unfold(incoming, |mut incoming| async move {
        let connection = incoming.recv().await?;
        Some((Ok::<_, std::io::Error>(connection), incoming))
    });
    let served = tonic::transport::Server::builder()
        // Envoy keeps its connections open; pings find the dead ones.
        .http2_keepalive_interval(Some(HTTP2_PING_INTERVAL))
        .add_service(AuthorizationServer::new(ExtAuthz::new(decider)))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .serve_with_incoming_shutdown(incoming, health_on_shutdown)
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "ext_authz server");
    }
}

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often a connected client is pinged: one that does not answer (within hyper's 20 s) is
/// disconnected, so dead peers do not keep their connection slots.
const HTTP2_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// An accepted connection whose preface was read (and is given to tonic first), with its place
/// under the listener's limit, given back when tonic drops the connection.
struct Slotted {
    stream: tokio::net::TcpStream,
    /// How much of [`HTTP2_PREFACE`] tonic has read.
    preface_replayed: usize,
    _slot: ConnectionSlot,
}

impl tonic::transport::server::Connected for Slotted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let replayed = self.preface_replayed;
        if let Some(rest) = HTTP2_PREFACE
            .get(replayed..)
            .filter(|rest| !rest.is_empty())
        {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            self.preface_replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Slotted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3::HeaderMap as EnvoyHeaderMap;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use gateway_engine::check::{Allowed, Denied};
    use prost::Message;

    use super::*;

    fn request(http: HttpRequest) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    time: None,
                    http: Some(http),
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_descriptors_describe_the_authorization_service() {
        let set = prost_types::FileDescriptorSet::decode(DESCRIPTORS).unwrap();
        let file = set
            .file
            .iter()
            .find(|f| f.name() == "envoy/service/auth/v3/external_auth.proto")
            .unwrap();
        let service = file
            .service
            .iter()
            .find(|s| s.name() == "Authorization")
            .unwrap();
        assert!(service.method.iter().any(|m| m.name() == "Check"));
        // Every import is in the set, so reflection clients can resolve every type.
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        for f in &set.file {
            for dep in &f.dependency {
                assert!(
                    names.contains(&dep.as_str()),
                    "{} imports missing {dep}",
                    f.name()
                );
            }
        }
    }

    #[test]
    fn envoys_fields_or_its_pseudo_headers_describe_the_request() {
        let mut headers = HashMap::new();
        headers.insert(":method".to_string(), "DELETE".to_string());
        headers.insert(":path".to_string(), "/projects/42?force=1".to_string());
        headers.insert(":authority".to_string(), "acme.example".to_string());
        headers.insert("authorization".to_string(), "Bearer t".to_string());
        headers.insert(
            "x-forwarded-for".to_string(),
            "10.0.0.1,10.0.0.2".to_string(),
        );
        let described = Described::of(&request(HttpRequest {
            headers,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(described.method, Method::DELETE);
        assert_eq!(described.target, "/projects/42?force=1");
        assert_eq!(described.host.as_deref(), Some("acme.example"));
        assert!(described.headers.get(":path").is_none());
        assert_eq!(described.headers["authorization"], "Bearer t");
        assert!(described.malformed.is_none());

        // `encode_raw_headers`: fields apart, raw bytes; a control character is refused.
        let described = Described::of(&request(HttpRequest {
            method: "GET".into(),
            path: "/status".into(),
            host: "h".into(),
            header_map: Some(EnvoyHeaderMap {
                headers: vec![
                    EnvoyHeaderValue {
                        key: "x-a".into(),
                        raw_value: b"1".to_vec(),
                        ..Default::default()
                    },
                    EnvoyHeaderValue {
                        key: "x-a".into(),
                        raw_value: b"2".to_vec(),
                        ..Default::default()
                    },
                    EnvoyHeaderValue {
                        key: "x-b".into(),
                        raw_value: b"bad\x01value".to_vec(),
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(described.headers.get_all("x-a").iter().count(), 2);
        assert!(matches!(
            described.malformed,
            Some(Rejection::BadHeader(HeaderError::ControlCharacter(_)))
        ));

        assert!(Described::of(&CheckRequest::default()).is_err());
        assert!(Described::of(&request(HttpRequest {
            method: "GET".into(),
            ..Default::default()
        }))
        .is_err());
    }

    /// More header names than a `HeaderMap` holds made `append` panic (one 4 MB
    /// `CheckRequest`): refused as a head too large now.
    #[test]
    fn a_request_of_more_headers_than_a_map_holds_is_refused_not_a_panic() {
        let headers: Vec<EnvoyHeaderValue> = (0..25_000)
            .map(|i| EnvoyHeaderValue {
                key: format!("x-{i}"),
                raw_value: b"v".to_vec(),
                ..Default::default()
            })
            .collect();
        let described = Described::of(&request(HttpRequest {
            method: "GET".into(),
            path: "/status".into(),
            host: "h".into(),
            header_map: Some(EnvoyHeaderMap { headers }),
            ..Default::default()
        }))
        .unwrap();
        assert!(
            matches!(described.malformed, Some(Rejection::HeadTooLarge(_))),
            "{:?}",
            described.malformed
        );
    }

    #[test]
    fn allowed_overwrites_headers_and_sets_the_decided_path() {
        let verdict = Verdict {
            request_id: "r".into(),
            usage_id: "u".into(),
            outcome: Ok(Allowed {
                set: vec![(
                    HeaderName::from_static("x-tenant-id"),
                    HeaderValue::from_static("acme"),
                )],
                // The client sent its own x-tenant-id: on the strip list and set as well.
                remove: vec![
                    HeaderName::from_static("x-http-method-override"),
                    HeaderName::from_static("x-tenant-id"),
                ],
                response: vec![(
                    HeaderName::from_static("ratelimit"),
                    HeaderValue::from_static("\"tenant\";r=9;t=1"),
                )],
                rewritten_target: Some("/projects/42".into()),
                regions: vec!["eu-central".into()],
            }),
        };
        let response = answer(verdict, "/t/acme/projects/42");
        assert_eq!(response.status.unwrap().code, RPC_OK);
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("not OK");
        };
        let set: Vec<(&str, &str, i32)> = ok
            .headers
            .iter()
            .map(|h| {
                let v = h.header.as_ref().unwrap();
                (v.key.as_str(), v.value.as_str(), h.append_action)
            })
            .collect();
        let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        assert_eq!(
            set,
            [
                ("x-tenant-id", "acme", overwrite),
                (":path", "/projects/42", overwrite)
            ]
        );
        // Envoy removes after it sets: a set name removed would take the verified value too.
        assert_eq!(ok.headers_to_remove, ["x-http-method-override"]);
        assert_eq!(ok.response_headers_to_add.len(), 1);
    }

    #[test]
    fn denied_keeps_the_status_even_where_envoys_enum_has_none() {
        let verdict = Verdict {
            request_id: "r".into(),
            usage_id: "u".into(),
            outcome: Err(Denied {
                status: 451,
                reason: "residency-violation",
                headers: vec![(
                    HeaderName::from_static("content-type"),
                    HeaderValue::from_static("application/problem+json"),
                )],
                body: br#"{"status":451}"#.to_vec(),
            }),
        };
        let response = answer(verdict, "/billing");
        assert_eq!(
            response.status.as_ref().unwrap().code,
            RPC_PERMISSION_DENIED
        );
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("not denied");
        };
        assert_eq!(denied.status.unwrap().code, 451);
        assert_eq!(denied.body, r#"{"status":451}"#);
        assert_eq!(rpc_code(401), RPC_UNAUTHENTICATED);
        assert_eq!(rpc_code(429), RPC_RESOURCE_EXHAUSTED);
        assert_eq!(rpc_code(503), RPC_UNAVAILABLE);
    }
}
