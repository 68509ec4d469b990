//! The built-in example upstream: a small hyper app used by `gateway demo`, the integration
//! tests and the benchmarks. It answers every request with a JSON echo of what it received
//! (so you can see exactly which headers the gateway forwarded) and has a few special routes:
//!
//! - `/_upstream/health` — `ok`
//! - `/_upstream/stream?bytes=N` — N bytes, streamed in 64 KiB chunks without a length
//! - `/_upstream/slow?ms=N` — answers after N milliseconds
//! - `/_upstream/ws` — WebSocket echo
//! - `/_upstream/static` — a fixed small body (benchmarks)

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, std::io::Error>;

const STREAM_CHUNK: usize = 64 * 1024;

/// What the echo route answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    pub upstream: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_bytes: u64,
    pub body_sha256: String,
}

/// A running example upstream; stops when dropped.
pub struct ExampleUpstream {
    pub addr: SocketAddr,
    served: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl ExampleUpstream {
    /// Binds `addr` (port 0 for an ephemeral port) and serves HTTP/1.1 and h2c on the current
    /// tokio runtime. `label` is reported in every echo and in the `x-upstream` header.
    pub async fn start(addr: SocketAddr, label: &str) -> std::io::Result<ExampleUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let counters = Counters::default();
        let (stop, stopped) = watch::channel(false);
        let label: Arc<str> = Arc::from(label);
        tokio::spawn(accept_loop(listener, label, counters.clone(), stopped));
        Ok(ExampleUpstream {
            addr,
            served: counters.served,
            received: counters.received,
            in_flight: counters.in_flight,
            stop,
        })
    }

    /// Requests answered so far (every route).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// Requests that reached a handler so far (answered or not).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes open connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for ExampleUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone, Default)]
struct Counters {
    served: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
}

async fn accept_loop(
    listener: TcpListener,
    label: Arc<str>,
    counters: Counters,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "example upstream accept failed");
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let label = label.clone();
        let counters = counters.clone();
        let mut conn_stopped = stopped.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let label = label.clone();
                let counters = counters.clone();
                async move {
                    counters.received.fetch_add(1, Ordering::SeqCst);
                    counters.in_flight.fetch_add(1, Ordering::SeqCst);
                    let response = handle(req, &label).await;
                    counters.in_flight.fetch_sub(1, Ordering::SeqCst);
                    counters.served.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(response)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = conn_stopped.changed() => {}
            }
        });
    }
}

async fn handle(req: Request<Incoming>, label: &str) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut response = match path.as_str() {
        "/_upstream/health" => text(StatusCode::OK, "ok"),
        "/_upstream/static" => text(StatusCode::OK, "hello from the example upstream\n"),
        "/_upstream/stream" => stream_bytes(query_number(&req, "bytes").unwrap_or(1024 * 1024)),
        "/_upstream/slow" => {
            let ms = query_number(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, "slow response\n")
        }
        "/_upstream/ws" => websocket_echo(req),
        _ => echo(req, label).await,
    };
    if let Ok(v) = http::HeaderValue::from_str(label) {
        response.headers_mut().insert("x-upstream", v);
    }
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn query_number(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

/// The byte at position `i` of a streamed body: a pattern a client can verify.
pub fn stream_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn stream_bytes(total: u64) -> Response<Body> {
    let chunks = futures_util::stream::unfold(0u64, move |offset| async move {
        if offset >= total {
            return None;
        }
        let len = (total - offset).min(STREAM_CHUNK as u64);
        let chunk: Vec<u8> = (offset..offset + len).map(stream_byte).collect();
        Some((
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))),
            offset + len,
        ))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    r
}

async fn echo(req: Request<Incoming>, label: &str) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    body_bytes += data.len() as u64;
                }
            }
            Err(e) => return text_owned(StatusCode::BAD_REQUEST, format!("body read failed: {e}")),
        }
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let echo = Echo {
        upstream: label.to_string(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        version: format!("{:?}", parts.version),
        headers,
        body_bytes,
        body_sha256: hex::encode(hasher.finalize()),
    };
    let body = serde_json::to_vec_pretty(&echo).unwrap_or_default();
    let mut r = Response::new(full(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn text_owned(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<Body> {
    let is_upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "expected a websocket upgrade\n");
    };
    if !is_upgrade {
        return text(StatusCode::BAD_REQUEST, "expected a websocket upgrade\n");
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = http::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", accept);
    }
    r
}
