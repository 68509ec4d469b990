//! Client connections: how many may be open, how long a client may take to send a request head
//! or leave its connection idle, and how large a head may be — enforced before Pingora parses
//! anything.
//!
//! [`ConnectionGate`] is the listening service's application: it wraps Pingora's `HttpProxy`
//! and serves HTTP/1.x connections itself, request by request. For each request it reads the
//! head (request line and header fields) under a deadline, checking the limits of stage 1
//! ([`HeadScan`]) as the bytes arrive, and hands the complete head to Pingora as already-read
//! bytes, so Pingora never waits on a client for a head. HTTP/2 (TLS with ALPN `h2`, or the h2c
//! preface) goes to Pingora's own HTTP/2 server, whose idle timeout and header list size are
//! set from the same settings.
//!
//! Memory per connection: an idle connection holds no read buffer. The first read of every
//! request goes into a per-thread scratch buffer and only the bytes received are copied into
//! the request's own buffer; the listeners' L4 read buffer (Pingora's default: 64 KiB
//! allocated for every connection at accept) is off for plain-text listeners, whose requests
//! are read straight into the head and body buffers, and small for TLS ones.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use parking_lot::Mutex;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use gateway_engine::pipeline::rejection::{ConnectionLimit, TimeoutPhase};
use gateway_engine::pipeline::sanitize::{HeadLimits, HeadScan};
use gateway_engine::pipeline::{Problem, Rejection};
use gateway_engine::request_metrics::RequestMetrics;

/// Connection limits and timeouts, from `[server]`.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_read_timeout: Duration,
    pub send_timeout: Duration,
    pub head: HeadLimits,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Addresses exempt from the per-client limit (trusted proxies: many clients share them).
    pub exempt: Vec<ipnet::IpNet>,
    pub keepalive_request_limit: Option<u32>,
    /// Detect the HTTP/2 preface on plain-text connections.
    pub h2c: bool,
}

impl ConnectionSettings {
    pub fn of(config: &gateway_engine::config::GatewayConfig) -> Self {
        let server = &config.server;
        ConnectionSettings {
            header_read_timeout: server.header_read_timeout,
            keepalive_timeout: server.keepalive_timeout,
            body_read_timeout: server.body_read_timeout,
            send_timeout: server.send_timeout,
            head: server.head_limits(),
            max_connections: server.max_connections,
            max_connections_per_client: server.max_connections_per_client,
            exempt: config
                .geoip
                .as_ref()
                .map(|g| g.trusted_proxies.clone())
                .unwrap_or_default(),
            keepalive_request_limit: server.keepalive_request_limit,
            h2c: server.h2c,
        }
    }
}

/// The L4 read buffer of TLS listeners: rustls reads records in small pieces, so some
/// buffering saves syscalls; Pingora's default (64 KiB per connection) is most of what an idle
/// connection costs.
pub const TLS_READ_BUFFER: usize = 16 * 1024;

/// The first read of a request goes into a per-thread buffer of this size, so that a
/// connection waiting for its next request holds none.
const FIRST_READ: usize = 8 * 1024;
/// The smallest buffer of a head, and the least room a read into it is given: a head that
/// arrives in pieces grows its buffer by doubling from here, not by a fixed large chunk.
const MIN_HEAD_BUFFER: usize = 1024;
/// After a refusal, how long (and how many bytes) the rest of what the client sends is read
/// and dropped, so that closing does not reset the connection before it read the answer.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; FIRST_READ].into_boxed_slice());
}

/// Counts open connections, in total and per client address.
pub struct ConnectionCounts {
    total: AtomicUsize,
    per_client: Vec<Mutex<HashMap<IpAddr, usize>>>,
    open: metrics::Gauge,
    /// Most connections open since memory was last given back (see [`ConnectionGuard`]).
    peak: AtomicUsize,
}

/// Shards of the per-client map: connections open and close on every worker thread.
const CLIENT_SHARDS: usize = 16;
/// Memory is given back to the OS once this many connections more than are open now were
/// open at once since the last time, and at least half of them are gone.
const RELEASE_AFTER_CLOSED: usize = 512;

impl Default for ConnectionCounts {
    fn default() -> Self {
        ConnectionCounts {
            total: AtomicUsize::new(0),
            per_client: (0..CLIENT_SHARDS).map(|_| Mutex::default()).collect(),
            open: metrics::gauge!(gateway_engine::telemetry::CONNECTIONS_OPEN),
            peak: AtomicUsize::new(0),
        }
    }
}

impl ConnectionCounts {
    /// Counts a new connection, or says which limit it would break.
    fn admit(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        settings: &ConnectionSettings,
    ) -> Result<ConnectionGuard, ConnectionLimit> {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        let mut guard = ConnectionGuard {
            counts: self.clone(),
            client: None,
        };
        if total > settings.max_connections {
            return Err(ConnectionLimit::Total(settings.max_connections));
        }
        self.peak.fetch_max(total, Ordering::Relaxed);
        let key = client
            .filter(|ip| !settings.exempt.iter().any(|net| net.contains(ip)))
            .map(client_key);
        if let Some(key) = key {
            let mut shard = self.shard(&key).lock();
            let count = shard.entry(key).or_insert(0);
            if *count >= settings.max_connections_per_client {
                return Err(ConnectionLimit::PerClient(
                    settings.max_connections_per_client,
                ));
            }
            *count += 1;
            guard.client = Some(key);
        }
        self.open.set(total as f64);
        Ok(guard)
    }

    // The index is taken modulo the shard count the vector was built with.
    #[allow(clippy::indexing_slicing)]
    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.per_client[(hash as usize) % CLIENT_SHARDS]
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// The address a per-client limit counts: IPv4 as is (also when mapped into IPv6), IPv6 by
/// its /64 (one subscriber usually holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// One counted connection; uncounted when dropped.
struct ConnectionGuard {
    counts: Arc<ConnectionCounts>,
    client: Option<IpAddr>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(key) = self.client {
            let mut shard = self.counts.shard(&key).lock();
            if let Some(count) = shard.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    shard.remove(&key);
                }
            }
        }
        let open = self.counts.total.fetch_sub(1, Ordering::AcqRel) - 1;
        self.counts.open.set(open as f64);
        // Many connections just went away (a burst of idle or slow clients): their buffers
        // are free, but the allocator keeps freed pages until it is told to give them back.
        // Asked again at every halving while they keep closing; each worker thread takes
        // part when it next closes a connection.
        let peak = self.counts.peak.load(Ordering::Relaxed);
        if peak >= open + RELEASE_AFTER_CLOSED
            && open <= peak / 2
            && self
                .counts
                .peak
                .compare_exchange(peak, open, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            gateway_engine::memory::request_release();
        } else {
            gateway_engine::memory::release_if_requested();
        }
    }
}

/// Why a connection was closed without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// The client closed it (or it failed) between requests.
    ByClient,
    /// No request began within the idle (or, on a new connection, header read) timeout.
    Idle,
    /// A graceful shutdown began while the connection waited for a request.
    Shutdown,
}

/// What reading a request head gave.
enum Head {
    /// A complete HTTP/1.x head, possibly followed by body bytes.
    Http1(BytesMut),
    /// The HTTP/2 preface (h2c with prior knowledge); the bytes read so far.
    H2c(BytesMut),
    Closed(Closed),
    /// Refused with a problem document.
    Refused(Rejection),
}

/// The listening service's application: counts connections and serves HTTP/1.x requests with
/// bounded heads (see the module documentation); everything else goes to `app`.
pub struct ConnectionGate<A> {
    app: Arc<A>,
    settings: ConnectionSettings,
    counts: Arc<ConnectionCounts>,
    metrics: Arc<RequestMetrics>,
}

impl<A> ConnectionGate<A> {
    pub fn new(app: Arc<A>, settings: ConnectionSettings, metrics: Arc<RequestMetrics>) -> Self {
        ConnectionGate {
            app,
            settings,
            counts: Arc::new(ConnectionCounts::default()),
            metrics,
        }
    }
}

#[async_trait]
impl<A> ServerApp for ConnectionGate<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Pingora calls this inside the task it spawned for the connection, whose size is set
        // by the largest thing it may do, a TLS handshake: about 9 KiB, for every connection,
        // for as long as it is open. In a task of its own the connection costs what serving
        // it needs, and Pingora's task ends now.
        let gate = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { gate.serve(stream, &shutdown).await });
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

impl<A> ConnectionGate<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Counts the connection and serves it: HTTP/2 by Pingora, HTTP/1.x request by request.
    async fn serve(self: Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let accepted = Instant::now();
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let _guard = match self.counts.admit(client, &self.settings) {
            Ok(guard) => guard,
            Err(limit) => {
                let rejection = Rejection::TooManyConnections(limit);
                if h2 {
                    // An HTTP/1.1 answer would be garbage on an HTTP/2 connection.
                    self.log_refusal(&rejection, client, accepted, "-");
                } else {
                    self.refuse(stream, rejection, client, accepted).await;
                }
                return;
            }
        };
        if h2 {
            // HTTP/2 negotiated by TLS: Pingora's HTTP/2 server, with its idle timeout.
            self.app.process_new(stream, shutdown).await;
            return;
        }
        self.serve_http1(stream, client, accepted, shutdown).await;
    }

    /// Serves the requests of one HTTP/1.x connection in turn (as Pingora's own loop does),
    /// reading each head here first.
    async fn serve_http1(
        self: &Arc<Self>,
        mut stream: Stream,
        client: Option<IpAddr>,
        accepted: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let settings = &self.settings;
        let h2c = settings.h2c && stream.get_ssl_digest().is_none();
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let began = if first { accepted } else { Instant::now() };
            let head = read_head(&mut stream, settings, first, h2c && first, shutdown).await;
            let prefix = match head {
                Head::Http1(prefix) => prefix,
                Head::H2c(read) => {
                    if let Some(stream) = unread(stream, &read) {
                        self.app.process_new(stream, shutdown).await;
                    }
                    return;
                }
                Head::Closed(why) => {
                    if why == Closed::Idle {
                        IDLE_CLOSES.increment([if first { "new" } else { "keepalive" }], 1);
                    }
                    return;
                }
                Head::Refused(rejection) => {
                    self.refuse(stream, rejection, client, began).await;
                    return;
                }
            };
            let mut session = ServerSession::new_http1(stream);
            match persistent.take() {
                Some(previous) => previous.apply_to_session(&mut session),
                None => {
                    let keepalive = if *shutdown.borrow() {
                        None
                    } else {
                        Some(settings.keepalive_timeout.as_secs().max(1))
                    };
                    session.set_keepalive(keepalive);
                    session.set_keepalive_reuses_remaining(settings.keepalive_request_limit);
                }
            }
            session.set_read_timeout(Some(settings.body_read_timeout));
            session.set_write_timeout(Some(settings.send_timeout));
            // The unread rest of a body (after a refusal that keeps the connection) is
            // drained before the next request; a client trickling it loses the connection.
            session.set_total_drain_timeout(Some(settings.body_read_timeout));
            // The gateway never enables pipelining, so the previous session handed no
            // pipelined bytes on: this prefix is the only one.
            session.set_pipelined_prefix(prefix);
            let Some(reused) = self.app.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, settings) = reused.consume();
            stream = next;
            persistent = settings;
            first = false;
        }
    }

    /// Answers a refusal without a parsed request (a raw HTTP/1.1 problem response with
    /// `Connection: close`), logs and counts it like every other refusal, and closes.
    async fn refuse(
        &self,
        mut stream: Stream,
        rejection: Rejection,
        client: Option<IpAddr>,
        began: Instant,
    ) {
        let request_id = gateway_engine::pipeline::correlation::new_uuid_v7().to_string();
        self.log_refusal(&rejection, client, began, &request_id);
        let response = problem_response(&rejection, &request_id);
        let written = pingora::time::timeout(LINGER, async {
            stream.write_all(&response).await?;
            stream.flush().await?;
            AsyncWriteExt::shutdown(&mut stream).await
        })
        .await;
        if matches!(written, Ok(Ok(()))) {
            // Read what the client still sends until it closes, briefly: closing a socket
            // with unread data resets it, and the client may lose the answer.
            let _ = pingora::time::timeout(LINGER, async {
                let mut discarded = 0;
                while discarded < LINGER_BYTES {
                    match poll_fn(|cx| poll_scratch_read(&mut stream, cx, <[u8]>::len)).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => discarded += n,
                    }
                }
            })
            .await;
        }
    }

    fn log_refusal(&self, rejection: &Rejection, client: Option<IpAddr>, began: Instant, id: &str) {
        tracing::info!(
            request_id = id,
            reason = rejection.reason_code(),
            detail = %rejection,
            client = %client.map(|c| c.to_string()).unwrap_or_default(),
            "request rejected"
        );
        self.metrics.request(
            None,
            rejection.status(),
            began.elapsed(),
            None,
            Some(rejection.reason_code()),
        );
    }
}

static IDLE_CLOSES: gateway_engine::request_metrics::StaticCounters<1> =
    gateway_engine::request_metrics::StaticCounters::new(
        gateway_engine::telemetry::CONNECTIONS_IDLE_CLOSED_TOTAL,
        ["state"],
    );

/// Reads one request head. A new connection has `header_read_timeout` from its start for the
/// whole head (nothing received by then: closed silently); a kept-alive one waits
/// `keepalive_timeout` for the head's first byte, then has `header_read_timeout` for the rest.
/// Part of a head but not all of it in time: `408`. A graceful shutdown closes a connection
/// that is waiting for a request.
async fn read_head(
    stream: &mut Stream,
    settings: &ConnectionSettings,
    new_connection: bool,
    detect_h2c: bool,
    shutdown: &ShutdownWatch,
) -> Head {
    let first_wait = if new_connection {
        settings.header_read_timeout
    } else {
        settings.keepalive_timeout
    };
    let started = tokio::time::Instant::now();
    let first = tokio::select! {
        biased;
        read = pingora::time::timeout(first_wait, poll_fn(|cx| poll_first_bytes(stream, cx))) => read,
        () = shutting_down(shutdown) => return Head::Closed(Closed::Shutdown),
    };
    let mut buf = match first {
        Err(_elapsed) => return Head::Closed(Closed::Idle),
        Ok(Err(_)) => return Head::Closed(Closed::ByClient),
        Ok(Ok(buf)) if buf.is_empty() => return Head::Closed(Closed::ByClient),
        Ok(Ok(buf)) => buf,
    };
    let deadline = if new_connection {
        started + settings.header_read_timeout
    } else {
        tokio::time::Instant::now() + settings.header_read_timeout
    };
    let mut scan = HeadScan::default();
    let limits = &settings.head;
    loop {
        if detect_h2c && buf.len() <= H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
            if buf.len() == H2_PREFACE.len() {
                return Head::H2c(buf);
            }
        } else if detect_h2c && buf.starts_with(H2_PREFACE) {
            return Head::H2c(buf);
        } else {
            match scan.scan(&buf, limits) {
                Ok(Some(_)) => return Head::Http1(buf),
                Ok(None) => {}
                Err(rejection) => return Head::Refused(rejection),
            }
        }
        if buf.capacity() - buf.len() < MIN_HEAD_BUFFER / 2 {
            // Doubling, never more than one byte past the largest acceptable head.
            let room = (limits.max_header_bytes + 1)
                .saturating_sub(buf.len())
                .max(1);
            buf.reserve(room.min(buf.len().max(MIN_HEAD_BUFFER)));
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let read = tokio::select! {
            biased;
            read = pingora::time::timeout(remaining, stream.read_buf(&mut buf)) => read,
            () = shutting_down(shutdown) => return Head::Closed(Closed::Shutdown),
        };
        match read {
            Err(_elapsed) => {
                return Head::Refused(Rejection::RequestTimeout(TimeoutPhase::Head(
                    settings.header_read_timeout,
                )))
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed(Closed::ByClient),
            Ok(Ok(_)) => {}
        }
    }
}

/// Resolves once a graceful shutdown has begun (never, if the signal is gone).
async fn shutting_down(shutdown: &ShutdownWatch) {
    let mut shutdown = shutdown.clone();
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits for the first bytes of a request without holding a buffer of its own while it
/// waits: they are read into the thread's scratch buffer and copied into a new buffer sized
/// for a head. An empty buffer: the client closed the connection.
fn poll_first_bytes(stream: &mut Stream, cx: &mut Context<'_>) -> Poll<std::io::Result<BytesMut>> {
    poll_scratch_read(stream, cx, |read| {
        let mut buf = BytesMut::with_capacity(read.len().max(MIN_HEAD_BUFFER));
        buf.extend_from_slice(read);
        buf
    })
}

/// One read into the thread's scratch buffer; `take` gets the bytes read.
fn poll_scratch_read<T>(
    stream: &mut Stream,
    cx: &mut Context<'_>,
    take: impl FnOnce(&[u8]) -> T,
) -> Poll<std::io::Result<T>> {
    let polled = SCRATCH.try_with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch[..]);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(take(buf.filled()))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    });
    match polled {
        Ok(poll) => poll,
        Err(_destroyed) => Poll::Ready(Err(std::io::Error::other(
            "the thread's read buffer is gone (thread exiting)",
        ))),
    }
}

/// Puts bytes read from a plain-text connection back in front of its stream.
fn unread(stream: Stream, bytes: &[u8]) -> Option<Stream> {
    match stream
        .into_any()
        .downcast::<pingora::protocols::l4::stream::Stream>()
    {
        Ok(mut l4) => {
            l4.rewind(bytes);
            Some(l4)
        }
        Err(_) => {
            tracing::debug!("h2c preface on a stream that cannot be rewound; closing");
            None
        }
    }
}

/// A complete HTTP/1.1 problem response that closes the connection.
fn problem_response(rejection: &Rejection, request_id: &str) -> Vec<u8> {
    let body = rejection.problem(request_id).to_json();
    let status = rejection.status();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\n{}: {request_id}\r\nconnection: close\r\n",
        Problem::CONTENT_TYPE,
        body.len(),
        gateway_engine::pipeline::correlation::REQUEST_ID_HEADER,
    );
    for (name, value) in rejection.response_headers() {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(&value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    fn settings(total: usize, per_client: usize) -> ConnectionSettings {
        let config = gateway_engine::config::load_source(gateway_engine::config::SourceText::new(
            "/gw/gateway.toml",
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[upstream.pool]]\nname = \"a\"\npeers = [\"127.0.0.1:2\"]\n",
        ))
        .unwrap()
        .config;
        let mut s = ConnectionSettings::of(&config);
        s.max_connections = total;
        s.max_connections_per_client = per_client;
        s.exempt = vec!["10.0.0.0/8".parse().unwrap()];
        s
    }

    #[test]
    fn counts_in_total_and_per_client_and_uncounts_on_drop() {
        let counts = Arc::new(ConnectionCounts::default());
        let s = settings(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = counts.admit(Some(a), &s).unwrap();
        let _a2 = counts.admit(Some(a), &s).unwrap();
        assert_eq!(
            counts.admit(Some(a), &s).err(),
            Some(ConnectionLimit::PerClient(2))
        );
        let _b1 = counts.admit(Some(b), &s).unwrap();
        assert_eq!(
            counts.admit(Some(b), &s).err(),
            Some(ConnectionLimit::Total(3))
        );
        assert_eq!(counts.open(), 3, "refused connections are not counted");
        drop(a1);
        assert_eq!(counts.open(), 2);
        let _a3 = counts.admit(Some(a), &s).unwrap();
        assert_eq!(counts.open(), 3);
    }

    #[test]
    fn trusted_proxies_count_only_toward_the_total() {
        let counts = Arc::new(ConnectionCounts::default());
        let s = settings(4, 1);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let guards: Vec<_> = (0..4)
            .map(|_| counts.admit(Some(proxy), &s).unwrap())
            .collect();
        assert_eq!(
            counts.admit(Some(proxy), &s).err(),
            Some(ConnectionLimit::Total(4))
        );
        drop(guards);
        assert_eq!(counts.open(), 0);
    }

    #[test]
    fn problem_response_is_a_complete_closing_http_message() {
        let r = Rejection::TooManyConnections(ConnectionLimit::PerClient(5));
        let text = String::from_utf8(problem_response(&r, "rid-1")).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains("\r\nretry-after: 1"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 503);
        assert_eq!(problem["request_id"], "rid-1");
    }
}
