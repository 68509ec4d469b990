//! Client connections and request heads are bounded, through the real binary on loopback:
//! header read and keep-alive timeouts (408 or a silent close), head size, field count and
//! target length (431, 414), control characters and a missing Host (400), body size globally
//! and per route (413, announced or streamed), a stalled body (408, not the upstream's 504),
//! connection caps in total and per client (503), and thousands of idle and slow clients that
//! neither slow normal requests nor cost much memory, which is returned once they are gone.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::common;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::{
    assert_problem, client, config_for, parse_status_and_body, raw_exchange, upstream,
    RawConnection, TestGateway,
};

/// `config_for` with `server` lines added to `[server]`.
fn config_with_server(peers: &[SocketAddr], server: &str, extra: &str) -> String {
    config_for(peers, extra).replace(
        "shutdown_timeout = \"1s\"\n",
        &format!("shutdown_timeout = \"1s\"\n{server}\n"),
    )
}

/// A connection from `source` (every 127.0.0.0/8 address is this machine, so tests can be
/// several clients).
async fn connect_async(addr: SocketAddr, source: Ipv4Addr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// As [`connect_async`], blocking, with a read timeout.
fn connect_from(addr: SocketAddr, source: Ipv4Addr) -> TcpStream {
    let stream = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(connect_async(addr, source))
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection (or the read timeout passes).
fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_get_431_and_long_targets_414_without_reaching_the_upstream() {
    let up = upstream("app").await;
    let gw = TestGateway::start(
        &config_with_server(
            &[up.addr],
            "max_header_bytes = 8192\nmax_header_count = 20\nmax_uri_bytes = 1024",
            "",
        ),
        &[],
    );
    // A 100 KB header block: refused once 8 KiB have arrived (it used to be forwarded).
    let big = format!("x-big: {}\r\n", "a".repeat(100_000));
    let (status, body) = common::raw_request(gw.addr, "GET", b"/big", &big);
    assert_problem(status, &body, 431, "headers-too-large");
    assert!(body.contains("8192"), "{body}");
    // One field more than allowed.
    let many: String = (0..20).map(|i| format!("x-f{i}: v\r\n")).collect();
    let (status, body) = common::raw_request(gw.addr, "GET", b"/many", &many);
    assert_problem(status, &body, 431, "headers-too-large");
    // Exactly at the limits is fine (Host and Connection are two of the 20 fields).
    let fine: String = (0..18).map(|i| format!("x-f{i}: v\r\n")).collect();
    let target = format!("/{}", "a".repeat(1023));
    let (status, body) = common::raw_request(gw.addr, "GET", target.as_bytes(), &fine);
    assert_eq!(status, 200, "{body}");
    // A target one byte too long: 414.
    let target = format!("/{}", "a".repeat(1024));
    let (status, body) = common::raw_request(gw.addr, "GET", target.as_bytes(), "");
    assert_problem(status, &body, 414, "uri-too-long");
    let response = raw_exchange(
        gw.addr,
        format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(5000)).as_bytes(),
    );
    assert_eq!(header(&response, "connection"), Some("close"), "{response}");
    assert_eq!(
        up.served(),
        1,
        "only the request within the limits was forwarded"
    );
    let log = gw.settled_log();
    for reason in ["reason=\"headers-too-large\"", "reason=\"uri-too-long\""] {
        assert!(
            log.lines()
                .any(|l| l.contains("request rejected") && l.contains(reason)),
            "no log line for {reason}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_heads_get_the_same_limits() {
    let up = upstream("app").await;
    let gw = TestGateway::start(
        &config_with_server(
            &[up.addr],
            "max_header_bytes = 8192\nmax_header_count = 20\nmax_uri_bytes = 1024\n\
             max_body_bytes = 1000",
            "",
        ),
        &[],
    );
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let send = |req: reqwest::RequestBuilder| async move {
        let res = req.send().await.unwrap();
        assert_eq!(res.version(), reqwest::Version::HTTP_2);
        let status = res.status().as_u16();
        (status, res.text().await.unwrap())
    };
    assert_eq!(send(h2.get(gw.url("/fine"))).await.0, 200);
    let mut many = h2.get(gw.url("/many"));
    for i in 0..21 {
        many = many.header(format!("x-f{i}"), "v");
    }
    let (status, body) = send(many).await;
    assert_problem(status, &body, 431, "headers-too-large");
    let (status, body) = send(h2.get(gw.url(&format!("/{}", "a".repeat(1100))))).await;
    assert_problem(status, &body, 414, "uri-too-long");
    // A header list over the limit: refused by the HTTP/2 layer (RFC 9113 §6.5.2) with 431.
    let (status, _) = send(h2.get(gw.url("/big")).header("x-big", "a".repeat(9000))).await;
    assert_eq!(status, 431);
    let (status, body) = send(h2.post(gw.url("/upload")).body(vec![b'a'; 1001])).await;
    assert_problem(status, &body, 413, "body-too-large");
    assert_eq!(up.served(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_host_and_control_characters_get_400_problems() {
    let up = upstream("app").await;
    let gw = TestGateway::start(&config_for(&[up.addr], ""), &[]);
    // HTTP/1.1 without Host (RFC 9112 §3.2); HTTP/1.0 may omit it.
    let response = raw_exchange(
        gw.addr,
        b"GET /no-host HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let (status, body) = parse_status_and_body(&response);
    assert_problem(status, &body, 400, "bad-header");
    assert!(body.contains("Host"), "{body}");
    let response = raw_exchange(gw.addr, b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(parse_status_and_body(&response).0, 200, "{response}");
    // Control characters in a field value, DEL included, and obsolete line folding.
    for field in [
        &b"X-Note: a\x01b"[..],
        b"X-Note: a\x7fb",
        b"X-Note: a\x1b[31mred",
        b"X-Note: a\rb",
    ] {
        let mut request = b"GET /ctl HTTP/1.1\r\nHost: gateway.test\r\n".to_vec();
        request.extend_from_slice(field);
        request.extend_from_slice(b"\r\n\r\n");
        let response = raw_exchange(gw.addr, &request);
        let (status, body) = parse_status_and_body(&response);
        assert_problem(status, &body, 400, "bad-header");
        assert!(body.contains("x-note"), "{field:?}: {body}");
    }
    let response = raw_exchange(
        gw.addr,
        b"GET /fold HTTP/1.1\r\nHost: gateway.test\r\nX-A: a\r\n b\r\n\r\n",
    );
    let (status, body) = parse_status_and_body(&response);
    assert_problem(status, &body, 400, "bad-header");
    assert_eq!(up.served(), 1, "only the HTTP/1.0 request was forwarded");
    let log = gw.settled_log();
    assert!(
        log.lines()
            .filter(|l| l.contains("request rejected") && l.contains("reason=\"bad-header\""))
            .count()
            >= 6,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_get_413_announced_or_streamed() {
    let up = upstream("app").await;
    let gw = TestGateway::start(
        &config_with_server(&[up.addr], "max_body_bytes = 1000", ""),
        &[],
    );
    // Announced: refused before anything is forwarded.
    let res = client()
        .post(gw.url("/upload"))
        .body(vec![b'a'; 1001])
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_eq!(res.headers()["connection"], "close");
    assert_problem(status, &res.text().await.unwrap(), 413, "body-too-large");
    assert_eq!(up.served(), 0);
    let res = client()
        .post(gw.url("/upload"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Streamed without a length: refused when the limit is passed.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'b'; 512]))),
    );
    let res = client()
        .post(gw.url("/stream"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    match res {
        Ok(res) => {
            let status = res.status().as_u16();
            assert_problem(status, &res.text().await.unwrap(), 413, "body-too-large");
        }
        // The gateway may close before the client finished sending; the log tells.
        Err(e) => eprintln!("streamed upload cut off: {e}"),
    }
    let log = gw.settled_log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("request rejected") && l.contains("reason=\"body-too-large\""))
            .count(),
        2,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_sets_its_own_body_limit() {
    let up = upstream("app").await;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for entry in walk(&base) {
        let rel = entry
            .strip_prefix(&base)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut contents = std::fs::read(&entry).unwrap();
        if rel == "routes.toml" {
            let text = String::from_utf8(contents).unwrap().replace(
                "path = \"/status\"\naction = \"public:status\"\n",
                "path = \"/status\"\naction = \"public:status\"\nmax_body_bytes = 1000\n",
            );
            assert!(text.contains("max_body_bytes = 1000"));
            contents = text.into_bytes();
        }
        files.push((format!("policies/{rel}"), contents));
    }
    files.push((
        "tenants.toml".into(),
        b"[[tenant]]\nid = \"acme\"\n".to_vec(),
    ));
    let file_refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let config = config_with_server(
        &[up.addr],
        "max_body_bytes = 64",
        r#"
[identity]
allow_anonymous = true

[tenancy]
sources = ["header"]

[tenancy.registry]
file = "tenants.toml"

[authorization]
policies = "policies"
"#,
    );
    let gw = TestGateway::start(&config, &file_refs);
    let status_with = |body: Vec<u8>| {
        let url = gw.url("/status");
        async move {
            let res = client()
                .get(url)
                .header("x-tenant", "acme")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.text().await.unwrap())
        }
    };
    // The route allows more than the global 64 bytes, up to its own 1000.
    assert_eq!(status_with(vec![b'a'; 500]).await.0, 200);
    let (status, body) = status_with(vec![b'a'; 1001]).await;
    assert_problem(status, &body, 413, "body-too-large");
    assert!(body.contains("1000"), "{body}");
    assert_eq!(up.served(), 1);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_gets_408_not_the_upstreams_504() {
    let up = upstream("app").await;
    let gw = TestGateway::start(
        &config_with_server(&[up.addr], "body_read_timeout = \"1s\"", ""),
        &[],
    );
    // With an `Upgrade` that is not a WebSocket too: only a WebSocket may stay quiet for the
    // keep-alive timeout (75 s here), and Pingora forwards no other upgrade.
    for upgrade in ["", "Connection: upgrade\r\nUpgrade: x\r\n"] {
        let mut stream = connect_from(gw.addr, Ipv4Addr::LOCALHOST);
        stream
            .write_all(
                format!(
                    "POST /upload HTTP/1.1\r\nHost: gateway.test\r\n{upgrade}Content-Length: 100\r\n\r\n0123456789"
                )
                .as_bytes(),
            )
            .unwrap();
        let started = Instant::now();
        let response = read_all(&mut stream);
        let (status, body) = parse_status_and_body(&response);
        assert_problem(status, &body, 408, "request-timeout");
        assert!(body.contains("body"), "{body}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
            "{upgrade:?}: {waited:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_silent_and_idle_connections_are_closed_in_time() {
    let up = upstream("app").await;
    let gw = TestGateway::start(
        &config_with_server(
            &[up.addr],
            "header_read_timeout = \"1s\"\nkeepalive_timeout = \"2s\"",
            "",
        ),
        &[],
    );
    // Part of a head, then a byte now and then (slowloris): 408 after the header timeout,
    // counted from the connection's start, however often bytes arrive.
    let mut slow = connect_from(gw.addr, Ipv4Addr::LOCALHOST);
    let started = Instant::now();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: gateway.test\r\nX-Slow: ")
        .unwrap();
    let trickle = {
        let mut writer = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(200));
                if writer.write_all(b"a").is_err() {
                    break;
                }
            }
        })
    };
    let response = read_all(&mut slow);
    let waited = started.elapsed();
    let (status, body) = parse_status_and_body(&response);
    assert_problem(status, &body, 408, "request-timeout");
    assert_eq!(header(&response, "connection"), Some("close"), "{response}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
    trickle.join().unwrap();

    // Nothing at all: closed silently after the header timeout.
    let mut silent = connect_from(gw.addr, Ipv4Addr::LOCALHOST);
    let started = Instant::now();
    let response = read_all(&mut silent);
    let waited = started.elapsed();
    assert_eq!(response, "", "a silent connection gets no answer");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );

    // Idle after a request: kept for the keep-alive timeout, then closed.
    let mut conn = RawConnection::open(gw.addr);
    assert_eq!(conn.get("/one", "").map(|r| r.status), Some(200));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        conn.get("/two", "").map(|r| r.status),
        Some(200),
        "closed before the keep-alive timeout"
    );
    let idle_since = Instant::now();
    let mut stream = conn.into_stream();
    let mut byte = [0u8; 1];
    let read = stream.read(&mut byte);
    let waited = idle_since.elapsed();
    assert!(matches!(read, Ok(0)), "{read:?}");
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_millis(3500),
        "{waited:?}"
    );
    assert_eq!(up.served(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_caps_get_503_and_are_closed() {
    let up = upstream("app").await;
    let gw = TestGateway::start(
        &config_with_server(
            &[up.addr],
            "max_connections = 5\nmax_connections_per_client = 3",
            "",
        ),
        &[],
    );
    let one = Ipv4Addr::new(127, 0, 0, 1);
    let two = Ipv4Addr::new(127, 0, 0, 2);
    // Three connections of one client, each serving a request and kept open.
    let mut held: Vec<RawConnection> = (0..3)
        .map(|_| {
            let mut c = RawConnection::from_stream(connect_from(gw.addr, one));
            assert_eq!(c.get("/held", "").map(|r| r.status), Some(200));
            c
        })
        .collect();
    // Its fourth: 503 with Retry-After, closed.
    let mut fourth = connect_from(gw.addr, one);
    fourth
        .write_all(b"GET /fourth HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        .unwrap();
    let response = read_all(&mut fourth);
    let (status, body) = parse_status_and_body(&response);
    assert_problem(status, &body, 503, "too-many-connections");
    assert_eq!(header(&response, "retry-after"), Some("1"), "{response}");
    assert_eq!(header(&response, "connection"), Some("close"), "{response}");
    // Another client still gets in, until the total is reached.
    for _ in 0..2 {
        let mut c = RawConnection::from_stream(connect_from(gw.addr, two));
        assert_eq!(c.get("/other", "").map(|r| r.status), Some(200));
        held.push(c);
    }
    let mut over = connect_from(gw.addr, Ipv4Addr::new(127, 0, 0, 3));
    over.write_all(b"GET /over HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        .unwrap();
    let response = read_all(&mut over);
    let (status, body) = parse_status_and_body(&response);
    assert_problem(status, &body, 503, "too-many-connections");
    // Closing one makes room again.
    held.pop();
    std::thread::sleep(Duration::from_millis(200));
    let mut again = RawConnection::from_stream(connect_from(gw.addr, Ipv4Addr::new(127, 0, 0, 3)));
    assert_eq!(again.get("/again", "").map(|r| r.status), Some(200));
    let log = gw.settled_log();
    assert_eq!(
        log.lines()
            .filter(
                |l| l.contains("request rejected") && l.contains("reason=\"too-many-connections\"")
            )
            .count(),
        2,
        "{log}"
    );
}

/// Resident memory of a process (from `/proc`), in bytes.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// Raises this process's open-file limit (inherited by the gateway it starts) to what `needed`
/// connections take, as far as the hard limit allows; returns the limit now in force.
fn raise_fd_limit(needed: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let wanted = needed.min(hard);
    if soft < wanted {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).unwrap();
    }
    getrlimit(Resource::RLIMIT_NOFILE).unwrap().0
}

/// Reads one response with a `Content-Length` body: its status and the whole response (for
/// assertion messages: a refusal's problem document says which limit refused).
async fn read_response(stream: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response ended");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = header(&text, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return (status, text.into_owned());
            }
        }
    }
}

/// `n` normal requests, half on a kept-alive connection and half on fresh ones: p50 and p99.
async fn latencies(gw: &TestGateway, http: &reqwest::Client, n: usize) -> (Duration, Duration) {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let res = if i % 2 == 0 {
            http.get(gw.url("/normal")).send().await.unwrap()
        } else {
            client().get(gw.url("/fresh")).send().await.unwrap()
        };
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    (took[n / 2], took[n * 99 / 100])
}

/// Issue 14: 5,000 idle keep-alive connections and 1,000 slowloris connections at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_idle_and_slow_clients_cost_little_and_do_not_slow_others() {
    use tokio::io::AsyncWriteExt;
    const IDLE: usize = 5_000;
    const SLOW: usize = 1_000;
    // Each connection is a descriptor here and one in the gateway (plus its upstream side).
    let limit = raise_fd_limit(2 * (IDLE + SLOW) as u64 + 1_000);
    assert!(
        limit >= (IDLE + SLOW) as u64 + 500,
        "RLIMIT_NOFILE is {limit}: this test needs {} descriptors",
        IDLE + SLOW + 500
    );
    let up = upstream("app").await;
    // Defaults, except timeouts long enough that nobody is closed while this test measures.
    let gw = TestGateway::start(
        &config_with_server(
            &[up.addr],
            "header_read_timeout = \"60s\"\nkeepalive_timeout = \"120s\"",
            "",
        ),
        &[],
    );
    let pid = gw.pid();
    let http = client();
    // Latency of normal requests alone, to compare with: the same mix as under load.
    let (quiet_p50, quiet_p99) = latencies(&gw, &http, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_bytes(pid);

    // 5,000 clients (eight addresses, each under the per-client default of 1,000) that made a
    // request and keep their connection open, idle.
    let addr = gw.addr;
    let source = |i: usize| Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8);
    let opening = Instant::now();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = Vec::new();
    for i in 0..IDLE {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let mut stream = connect_async(addr, source(i)).await;
            stream
                .write_all(b"GET /idle HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
                .await
                .unwrap();
            let (status, response) = read_response(&mut stream).await;
            assert_eq!(status, 200, "{response}");
            stream
        }));
    }
    let mut idle = Vec::with_capacity(IDLE);
    for t in tasks {
        idle.push(t.await.unwrap());
    }
    // 1,000 clients that send part of a head, then a byte now and then.
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let mut stream = connect_async(addr, source(i + 3)).await;
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: gateway.test\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    let opened_in = opening.elapsed();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let trickle = tokio::spawn(async move {
        loop {
            for s in slow.iter_mut() {
                s.write_all(b"a").await.unwrap();
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop_rx.changed() => return slow,
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = rss_bytes(pid);

    // Normal requests meanwhile.
    let (p50, p99) = latencies(&gw, &http, 400).await;
    // Every idle connection is still usable, and no slow one was answered.
    for stream in idle.iter_mut().take(50) {
        stream
            .write_all(b"GET /again HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
            .await
            .unwrap();
        let (status, response) = read_response(stream).await;
        assert_eq!(status, 200, "{response}");
    }
    let _ = stop_tx.send(true);
    let slow = trickle.await.unwrap();
    let grown = loaded.saturating_sub(baseline);

    drop(idle);
    drop(slow);
    // Memory comes back once they are gone: what stays (allocator caches, the upstream
    // keep-alive pool) does not grow with the number of connections there were.
    let allowed = (grown / 4).max(16 * 1024 * 1024);
    let closed = Instant::now();
    let mut after = rss_bytes(pid);
    while closed.elapsed() < Duration::from_secs(10) && after > baseline + allowed {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = rss_bytes(pid);
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{IDLE} idle + {SLOW} slow connections opened in {opened_in:?}; RSS baseline {:.1} MiB, \
         with them {:.1} MiB (+{:.1} MiB, {:.1} KiB per connection), after closing {:.1} MiB \
         ({:?} later); normal requests p50 {p50:?} p99 {p99:?} (alone: p50 {quiet_p50:?} \
         p99 {quiet_p99:?})",
        mib(baseline),
        mib(loaded),
        mib(grown),
        grown as f64 / 1024.0 / (IDLE + SLOW) as f64,
        mib(after),
        closed.elapsed(),
    );
    // Under 100 ms; on a machine so busy that requests alone take longer than half of that,
    // no worse than twice what they take alone.
    let bound = Duration::from_millis(100).max(quiet_p99 * 2);
    assert!(p99 < bound, "p99 {p99:?}, alone {quiet_p99:?}");
    assert!(
        grown < 100 * 1024 * 1024,
        "RSS grew by {:.1} MiB",
        mib(grown)
    );
    assert!(
        after <= baseline + allowed,
        "RSS after closing {:.1} MiB, baseline {:.1} MiB, grown {:.1} MiB",
        mib(after),
        mib(baseline),
        mib(grown)
    );
    // The gateway still serves.
    assert_eq!(
        client()
            .get(gw.url("/after"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// The listeners beside the proxy (admin API, forward-auth, ext_authz) share the process's file
/// descriptors: each holds at most its own `max_connections` (further clients wait in the
/// backlog), closes a connection that sends no complete head within `server.header_read_timeout`,
/// and the admin API answers a stalled body `408`. Before, any number of silent connections
/// stayed open for ever on each of them.
#[tokio::test(flavor = "multi_thread")]
async fn the_doors_beside_the_proxy_cap_connections_and_close_silent_ones() {
    use crate::common::example::{example_config_with_doors, example_file};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

    const HEAD_TIMEOUT: Duration = Duration::from_millis(600);
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let (admin, ext_authz, forward_auth) = (
        common::free_addr(),
        common::free_addr(),
        common::free_addr(),
    );
    let config = example_config_with_doors(admin, eu.addr, us.addr, ext_authz, forward_auth)
        .replacen(
            "[server]\n",
            "[server]\nheader_read_timeout = \"600ms\"\nbody_read_timeout = \"600ms\"\n",
            1,
        )
        .replacen("[admin]\n", "[admin]\nmax_connections = 3\n", 1)
        .replacen("[ext_authz]\n", "[ext_authz]\nmax_connections = 3\n", 1)
        .replacen(
            "[forward_auth]\n",
            "[forward_auth]\nmax_connections = 3\n",
            1,
        );
    let mut gw = TestGateway::start(
        &config,
        &[
            ("demo-issuer.secret", &example_file("demo-issuer.secret")),
            ("demo-admin.token", &example_file("demo-admin.token")),
            ("tenants.toml", &example_file("tenants.toml")),
        ],
    );
    for door in [admin, ext_authz, forward_auth] {
        gw.wait_accepting(door);
    }
    // Let the probes' connections end before the limits are counted.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Three connections that start a head and never finish it hold each HTTP/1 door's slots.
    let http_doors = [
        (
            admin,
            "GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        ),
        (
            forward_auth,
            "GET /auth HTTP/1.1\r\nHost: door\r\nConnection: close\r\nX-Forwarded-Method: GET\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: acme.api.example.com\r\n\
             X-Forwarded-Uri: /projects/42\r\n\r\n",
        ),
    ];
    for (door, request) in http_doors {
        tokio::task::block_in_place(|| {
            let held_since = Instant::now();
            let mut slow: Vec<TcpStream> = (0..3)
                .map(|_| {
                    let mut c = TcpStream::connect(door).unwrap();
                    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: adm").unwrap();
                    c
                })
                .collect();
            let mut fourth = TcpStream::connect(door).unwrap();
            fourth.write_all(request.as_bytes()).unwrap();
            fourth
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut first = [0u8; 1];
            let early = fourth.read(&mut first);
            assert!(
                early.is_err(),
                "{door}: a fourth connection was served over the limit of 3 ({early:?})"
            );
            // The slow heads time out, their slots go to the waiting connection.
            fourth
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let response = read_all(&mut fourth);
            let waited = held_since.elapsed();
            assert!(response.starts_with("HTTP/1.1 "), "{door}: {response:?}");
            assert!(
                waited >= HEAD_TIMEOUT - Duration::from_millis(100)
                    && waited < Duration::from_secs(4),
                "{door}: served after {waited:?}"
            );
            for c in &mut slow {
                c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let started = Instant::now();
                let _ = read_all(c);
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "{door}: a connection with an unfinished head stayed open"
                );
            }
        });
    }

    // ext_authz: three connections that never send the HTTP/2 preface.
    let held_since = Instant::now();
    let silent: Vec<tokio::net::TcpStream> =
        futures_util::future::join_all((0..3).map(|_| tokio::net::TcpStream::connect(ext_authz)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    // (tonic's connect returns before the server answers: the first Check waits.)
    let mut client = AuthorizationClient::connect(format!("http://{ext_authz}"))
        .await
        .unwrap();
    let check = || envoy_types::pb::envoy::service::auth::v3::CheckRequest::default();
    let early = tokio::time::timeout(Duration::from_millis(300), client.check(check())).await;
    assert!(
        early.is_err(),
        "ext_authz answered on a fourth connection over the limit of 3"
    );
    let answered = tokio::time::timeout(Duration::from_secs(5), client.check(check()))
        .await
        .expect("ext_authz: the silent connections kept their slots");
    // The gateway's own answer to an empty request, not a transport error.
    assert!(
        matches!(&answered, Err(status) if status.code() == tonic::Code::InvalidArgument
            && status.message().contains("attributes.request.http")),
        "ext_authz did not answer once admitted: {answered:?}"
    );
    assert!(held_since.elapsed() >= HEAD_TIMEOUT - Duration::from_millis(100));
    for mut c in silent {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            use tokio::io::AsyncReadExt;
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "ext_authz kept a silent connection open");
    }

    // The admin API: a body that stalls gets 408, not a task and a connection for ever.
    let token = String::from_utf8(example_file("demo-admin.token")).unwrap();
    tokio::task::block_in_place(|| {
        let mut c = TcpStream::connect(admin).unwrap();
        c.write_all(
            format!(
                "PUT /admin/tenants/stalled HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"tier\":",
                token.trim()
            )
            .as_bytes(),
        )
        .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let response = read_all(&mut c);
        let (status, _) = parse_status_and_body(&response);
        assert_eq!(status, 408, "{response}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    });
}
