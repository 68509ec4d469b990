//! Test support: start the real `gateway` binary on loopback ports in front of real upstreams.
#![allow(dead_code)]
// Test support: failing loudly is the point (see gateway/clippy.toml for test functions).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gateway::example_upstream::ExampleUpstream;

pub mod example;
pub mod idp;
pub mod nginx;

pub use gateway_testkit::{free_addr, free_port, nats, redis_cluster};

/// In a config template, an address no test connects to: [`TestGateway::start`] puts a free
/// one in its place at each start attempt, so a port taken meanwhile costs a retry, not the
/// test.
pub const FREE_ADDR: &str = "{free_addr}";

pub async fn upstream(label: &str) -> ExampleUpstream {
    ExampleUpstream::start("127.0.0.1:0".parse().unwrap(), label)
        .await
        .expect("start example upstream")
}

pub fn gateway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gateway")
}

/// A running gateway process with its own config directory; killed when dropped.
pub struct TestGateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    env: Vec<(String, String)>,
    /// Processes started so far on this directory (each logs "gateway started" once).
    starts: usize,
}

impl TestGateway {
    /// Writes `gateway.toml` (with `{listen}` and each [`FREE_ADDR`] replaced by a free port)
    /// into a fresh directory, plus any `files`, starts the gateway and waits until its first
    /// listener accepts.
    pub fn start(config_template: &str, files: &[(&str, &[u8])]) -> TestGateway {
        Self::start_env(config_template, files, &[])
    }

    /// As [`start`], with extra environment variables for the gateway process.
    pub fn start_env(
        config_template: &str,
        files: &[(&str, &[u8])],
        env: &[(&str, &str)],
    ) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, contents) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(path, contents).unwrap();
        }
        let config_path = dir.path().join("gateway.toml");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut gw = TestGateway {
            child: None,
            addr: free_addr(),
            dir,
            config_path,
            env,
            starts: 1,
        };
        // The free port was only free a moment ago: another test may take it before the
        // gateway binds. Then the gateway exits naming the address; try another port.
        for attempt in 1.. {
            let mut config = config_template.replace("{listen}", &gw.addr.to_string());
            while config.contains(FREE_ADDR) {
                config = config.replacen(FREE_ADDR, &free_addr().to_string(), 1);
            }
            std::fs::write(&gw.config_path, config).unwrap();
            gw.child = Some(spawn_gateway(&gw.config_path, gw.dir.path(), &gw.env));
            match gw.await_start(gw.addr) {
                Ok(()) => break,
                Err(e) if attempt < 3 && gw.log().contains("Address already in use") => {
                    eprintln!("{e}; trying another port");
                    gw.kill();
                    gw.addr = free_addr();
                }
                Err(e) => panic!("{e}"),
            }
        }
        gw
    }

    /// Kills the process with SIGKILL (no chance to flush anything) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the gateway again on the same directory, config and port.
    pub fn restart(&mut self) {
        self.kill();
        let child = spawn_gateway(&self.config_path, self.dir.path(), &self.env);
        self.child = Some(child);
        self.starts += 1;
        let addr = self.addr;
        self.wait_accepting(addr);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Waits until this gateway process has started and `addr` accepts TCP connections,
    /// failing with the gateway's log otherwise. Checking the log too means a port that another
    /// process took in the meantime (the free port was only free a moment ago) is not mistaken
    /// for this gateway: this one then fails to bind and exits.
    pub fn wait_accepting(&mut self, addr: SocketAddr) {
        if let Err(e) = self.await_start(addr) {
            panic!("{e}");
        }
    }

    /// As [`wait_accepting`], the failure (with the gateway's log) as an error.
    fn await_start(&mut self, addr: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let started = self.log().matches("gateway started").count() >= self.starts;
            if started && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "gateway exited early with {status}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!(
            "gateway did not accept on {addr} within 20 s:\n{}",
            self.log()
        ))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// The log once the gateway has written what it buffers (INFO lines go out in batches at
    /// most 100 ms apart): for asserting on lines of requests just made.
    pub fn settled_log(&self) -> String {
        std::thread::sleep(Duration::from_millis(250));
        self.log()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal gateway");
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log());
        }
    }
}

fn spawn_gateway(config: &Path, dir: &Path, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .unwrap();
    Command::new(gateway_bin())
        .args(["run", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("GATEWAY_LOG", "info,pingora_core=warn,pingora_proxy=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn gateway")
}

/// A minimal config: one plain listener in front of `peers`, short grace period, with `extra`
/// appended (further sections or pool keys).
pub fn config_for(peers: &[SocketAddr], extra: &str) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
grace_period = "1s"
shutdown_timeout = "1s"

[upstream]
connect_timeout = "500ms"
read_timeout = "5s"

[upstream.health_check]
interval = "200ms"

[[upstream.pool]]
name = "app"
peers = [{}]
{extra}
"#,
        peers.join(", ")
    )
}

/// Asserts an RFC 9457 problem document of `expected_status` and type `slug`.
pub fn assert_problem(status: u16, body: &str, expected_status: u16, slug: &str) {
    assert_eq!(status, expected_status, "{body}");
    let problem: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(problem["status"], expected_status, "{problem}");
    assert_eq!(
        problem["type"],
        format!("tag:policy-gateway,2026:problem/{slug}"),
        "{problem}"
    );
    assert!(problem["title"].is_string(), "{problem}");
    assert!(problem["request_id"].is_string(), "{problem}");
}

/// Sends one raw HTTP/1.1 request (the target is written byte for byte, unlike any client
/// library) and returns the status code and body.
pub fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &[u8],
    extra_headers: &str,
) -> (u16, String) {
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n");
    req.extend_from_slice(extra_headers.as_bytes());
    req.extend_from_slice(b"\r\n");
    parse_status_and_body(&raw_exchange(addr, &req))
}

/// Writes `bytes` on a fresh connection and reads until the server closes it (or 10 s pass).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

pub fn parse_status_and_body(text: &str) -> (u16, String) {
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// PostgreSQL of the test machine (started by `scripts/ensure-deps`).
pub fn pg_url() -> String {
    std::env::var("GATEWAY_TEST_PG_URL").unwrap_or_else(|_| {
        "postgres://gateway_test:gateway_test@127.0.0.1:5432/gateway_test".to_string()
    })
}

/// A table name no other test uses.
pub fn unique_table(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), rand::random::<u32>())
}

/// Polls `check` every 20 ms until it returns true or `limit` passes; returns the time it took.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// An HTTP receiver that records every request and answers with what `respond` decides.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl Receiver {
    /// `respond(path, body, attempt)` → status; `attempt` counts requests so far (0-based).
    pub async fn start<F>(respond: F) -> Receiver
    where
        F: Fn(&str, &[u8], usize) -> u16 + Send + Sync + 'static,
    {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver {
            addr,
            requests: Default::default(),
        };
        let respond = std::sync::Arc::new(respond);
        let requests = receiver.requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (respond, requests) = (respond.clone(), requests.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (respond, requests) = (respond.clone(), requests.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let attempt = requests.lock().unwrap().len();
                                let status = respond(parts.uri.path(), &body, attempt);
                                requests.lock().unwrap().push(Received {
                                    path: parts.uri.path().to_string(),
                                    headers: parts.headers,
                                    body,
                                    status,
                                });
                                let mut res = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from_static(b"{}"),
                                ));
                                *res.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(res)
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        receiver
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn received(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }
}

/// A response read off a [`RawConnection`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 connection kept alive across requests (to see whether the server keeps it).
pub struct RawConnection {
    reader: std::io::BufReader<TcpStream>,
}

impl RawConnection {
    pub fn open(addr: SocketAddr) -> RawConnection {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawConnection::from_stream(stream)
    }

    /// Over a connection opened otherwise (e.g. from a chosen source address).
    pub fn from_stream(stream: TcpStream) -> RawConnection {
        RawConnection {
            reader: std::io::BufReader::new(stream),
        }
    }

    /// The connection itself (nothing is left buffered between responses).
    pub fn into_stream(self) -> TcpStream {
        self.reader.into_inner()
    }

    /// Sends `GET target` and reads the response (bodies with `Content-Length` only); `None`
    /// when the server closed the connection instead of answering.
    pub fn get(&mut self, target: &str, extra_headers: &str) -> Option<RawResponse> {
        use std::io::BufRead;
        let request = format!("GET {target} HTTP/1.1\r\nHost: gateway.test\r\n{extra_headers}\r\n");
        self.reader.get_mut().write_all(request.as_bytes()).ok()?;
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let status = line.split(' ').nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).ok()?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':')?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).ok()?;
        Some(RawResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Keeps `clients` clients requesting `path` (client `c` as tenant `tenants[c % len]`, by the
/// `x-tenant` header) for `load_for`, then SIGKILLs the gateway at a moment when every
/// client's request is inside the upstream, and stops the clients. Returns how many requests
/// completed; the upstream counts what it received.
pub async fn sigkill_under_load(
    gw: &mut TestGateway,
    up: &ExampleUpstream,
    path: &str,
    tenants: &[&'static str],
    clients: u64,
    load_for: Duration,
) -> u64 {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let url = gw.url(path);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, stop) = (url.clone(), stop.clone());
        let tenant = tenants[c as usize % tenants.len()];
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut ok = 0u64;
            while !stop.load(Ordering::SeqCst) {
                match http.get(&url).header("x-tenant", tenant).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            ok
        }));
    }
    tokio::time::sleep(load_for).await;
    eventually(Duration::from_secs(5), || async {
        up.in_flight() == clients
    })
    .await
    .expect("all clients in flight");
    gw.kill();
    stop.store(true, Ordering::SeqCst);
    let mut completed = 0;
    for task in tasks {
        completed += task.await.unwrap();
    }
    completed
}
