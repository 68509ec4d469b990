//! A headless-Chromium login driver: Debian's `chromium` (`/usr/bin/chromium`, or
//! `GATEWAY_TESTKIT_CHROMIUM`) driven by `playwright-core` from `node/browser.mjs` (the node
//! modules are installed as [`crate::oidc`] describes; Playwright downloads no browser of its own).
//! `scripts/ensure-deps test` installs `chromium` and `nodejs npm`.
//!
//! Each call runs one fresh browser (a new profile, no cookies) and blocks until it is done (60 s
//! at most). Requests to anything but loopback are aborted, so nothing waits on the closed network.
//! From a `#[tokio::test]` whose runtime also serves the pages (a gateway started in-process),
//! call the `*_async` versions (they run the browser on the blocking pool), or the blocking call
//! would stall the server it waits for.
//!
//! Chromium treats `http://127.0.0.1` and `http://localhost` as secure contexts, so it keeps
//! `Secure` cookies, `__Host-` ones included, from those origins (the test
//! `host_prefixed_secure_cookie_is_kept_on_http_loopback` checks it for this Chromium).

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// A cookie the browser holds at the end (any origin).
#[derive(Debug, Clone, Deserialize)]
pub struct BrowserCookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    pub path: String,
    #[serde(rename = "httpOnly")]
    pub http_only: bool,
    pub secure: bool,
    /// `Strict`, `Lax` or `None`.
    #[serde(rename = "sameSite")]
    pub same_site: String,
}

/// Where the browser ended.
#[derive(Debug, Clone, Deserialize)]
pub struct BrowserOutcome {
    pub final_url: String,
    /// The status of the last main-frame navigation response (0 when none was seen).
    #[serde(default, deserialize_with = "status_or_zero")]
    pub status: u16,
    /// The page's visible text (`body.innerText`).
    pub body_text: String,
    pub html: String,
    pub cookies: Vec<BrowserCookie>,
    /// What the driver did, for failure messages.
    pub steps: Vec<String>,
}

impl BrowserOutcome {
    pub fn cookie(&self, name: &str) -> Option<&BrowserCookie> {
        self.cookies.iter().find(|c| c.name == name)
    }
}

fn status_or_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    Ok(Option::<u16>::deserialize(d)?.unwrap_or(0))
}

#[derive(Deserialize)]
struct Report {
    login: Option<BrowserOutcome>,
    logout: Option<BrowserOutcome>,
    error: Option<String>,
    partial: Option<BrowserOutcome>,
}

/// The Chromium binary, or a panic saying how to get it.
pub fn chromium_bin() -> PathBuf {
    let path = std::env::var_os("GATEWAY_TESTKIT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: run `scripts/ensure-deps test` (Debian package `chromium`)",
        path.display()
    );
    path
}

/// Opens `url` and returns where the browser ended (following redirects and self-submitting
/// pages; no login).
pub fn chromium_visit(url: &str, screenshot_dir: Option<&Path>) -> BrowserOutcome {
    run(url, None, None, screenshot_dir).0
}

/// Opens `start_url` (e.g. the gateway's login URL, which redirects to the provider), fills the
/// provider's login form as `login` (password `x`), continues through the consent page if one
/// shows, and returns the page the flow ends on (back at the start origin when all went well).
/// Screenshots of each step go to `screenshot_dir` when given.
pub fn chromium_login(
    start_url: &str,
    login: &str,
    screenshot_dir: Option<&Path>,
) -> BrowserOutcome {
    run(start_url, Some(login), None, screenshot_dir).0
}

/// [`chromium_login`], then, in the same browser, opens `logout_url` (the gateway's logout route or
/// the provider's end-session URL) and confirms the provider's "Yes, sign me out". Returns both
/// outcomes.
pub fn chromium_login_then_logout(
    start_url: &str,
    login: &str,
    logout_url: &str,
    screenshot_dir: Option<&Path>,
) -> (BrowserOutcome, BrowserOutcome) {
    let (login, logout) = run(start_url, Some(login), Some(logout_url), screenshot_dir);
    (
        login,
        logout.expect("the driver returned no logout outcome"),
    )
}

/// Opens `url`, fills the page's own form once (`fields`: CSS selector → value), clicks
/// `submit`, and returns the page it ends on (e.g. the gateway's console behind its sign-in
/// form). Screenshots of each step go to `screenshot_dir` when given.
pub fn chromium_fill_form(
    url: &str,
    fields: &[(&str, &str)],
    submit: &str,
    screenshot_dir: Option<&Path>,
) -> BrowserOutcome {
    let form = serde_json::json!({
        "fields": fields.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "submit": submit,
    });
    run_job(url, None, None, Some(form), screenshot_dir).0
}

/// [`chromium_fill_form`] on tokio's blocking pool.
pub async fn chromium_fill_form_async(
    url: String,
    fields: Vec<(String, String)>,
    submit: String,
    screenshot_dir: Option<PathBuf>,
) -> BrowserOutcome {
    tokio::task::spawn_blocking(move || {
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        chromium_fill_form(&url, &fields, &submit, screenshot_dir.as_deref())
    })
    .await
    .unwrap()
}

/// [`chromium_visit`] on tokio's blocking pool.
pub async fn chromium_visit_async(url: String, screenshot_dir: Option<PathBuf>) -> BrowserOutcome {
    tokio::task::spawn_blocking(move || chromium_visit(&url, screenshot_dir.as_deref()))
        .await
        .unwrap()
}

/// [`chromium_login`] on tokio's blocking pool.
pub async fn chromium_login_async(
    start_url: String,
    login: String,
    screenshot_dir: Option<PathBuf>,
) -> BrowserOutcome {
    tokio::task::spawn_blocking(move || {
        chromium_login(&start_url, &login, screenshot_dir.as_deref())
    })
    .await
    .unwrap()
}

/// [`chromium_login_then_logout`] on tokio's blocking pool.
pub async fn chromium_login_then_logout_async(
    start_url: String,
    login: String,
    logout_url: String,
    screenshot_dir: Option<PathBuf>,
) -> (BrowserOutcome, BrowserOutcome) {
    tokio::task::spawn_blocking(move || {
        chromium_login_then_logout(&start_url, &login, &logout_url, screenshot_dir.as_deref())
    })
    .await
    .unwrap()
}

const DEADLINE: Duration = Duration::from_secs(60);

fn run(
    start_url: &str,
    login: Option<&str>,
    logout_url: Option<&str>,
    screenshot_dir: Option<&Path>,
) -> (BrowserOutcome, Option<BrowserOutcome>) {
    run_job(start_url, login, logout_url, None, screenshot_dir)
}

fn run_job(
    start_url: &str,
    login: Option<&str>,
    logout_url: Option<&str>,
    form: Option<serde_json::Value>,
    screenshot_dir: Option<&Path>,
) -> (BrowserOutcome, Option<BrowserOutcome>) {
    let chromium = chromium_bin();
    let node_dir = crate::oidc::node_dir();
    let dir = tempfile::tempdir().unwrap();
    let job_path = dir.path().join("job.json");
    let job = serde_json::json!({
        "chromium": chromium,
        "start_url": start_url,
        "login": login,
        "logout_url": logout_url,
        "form": form,
        "screenshot_dir": screenshot_dir,
        "timeout_ms": 20_000,
    });
    std::fs::write(&job_path, serde_json::to_vec(&job).unwrap()).unwrap();
    let log_path = dir.path().join("browser.log");
    let mut child = Command::new(crate::oidc::node_bin())
        .arg(node_dir.join("browser.mjs"))
        .arg(&job_path)
        .current_dir(node_dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        // Its own process group, so a timeout takes Chromium down with it.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node ({e}): run `scripts/ensure-deps test`"));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the browser driver took over {DEADLINE:?} on {start_url}; its log:\n{}",
                crate::oidc::tail(&log_path, 60)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    let report: Option<Report> = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|json| serde_json::from_str(json).ok());
    let log = || crate::oidc::tail(&log_path, 60);
    match report {
        Some(Report {
            login: Some(login),
            logout,
            error: None,
            ..
        }) if status.success() => (login, logout),
        Some(Report {
            error, partial, ..
        }) => panic!(
            "the browser driver failed on {start_url} ({status}): {}\nwhere it was: {partial:#?}\nits log:\n{}",
            error.unwrap_or_default(),
            log()
        ),
        None => panic!(
            "the browser driver gave no result on {start_url} ({status}); stdout: {out}\nits log:\n{}",
            log()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::test_rp::TinyRp;
    use crate::oidc::tests::{authorize_url, provider_for};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A server that sets `__Host-x=1; Path=/; Secure; HttpOnly; SameSite=Lax` on `/` and
    /// redirects to `/echo`, which shows the `Cookie` header it received.
    fn cookie_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut request_line = String::new();
                    let _ = reader.read_line(&mut request_line);
                    let mut cookie = String::from("(none)");
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            break;
                        }
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("cookie") {
                                cookie = value.trim().to_string();
                            }
                        }
                    }
                    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
                    let response = if target == "/" {
                        "HTTP/1.1 302 Found\r\nLocation: /echo\r\n\
                         Set-Cookie: __Host-x=1; Path=/; Secure; HttpOnly; SameSite=Lax\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string()
                    } else {
                        let body = format!("<html><body>cookie: {cookie}</body></html>");
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let _ = stream.write_all(response.as_bytes());
                });
            }
        });
        format!("http://127.0.0.1:{}/", addr.port())
    }

    #[test]
    fn host_prefixed_secure_cookie_is_kept_on_http_loopback() {
        let url = cookie_server();
        let outcome = chromium_visit(&url, None);
        let cookie = outcome
            .cookie("__Host-x")
            .unwrap_or_else(|| panic!("Chromium dropped the __Host- cookie: {outcome:#?}"));
        assert_eq!(cookie.value, "1");
        assert!(cookie.secure && cookie.http_only, "{cookie:?}");
        assert_eq!(cookie.same_site, "Lax");
        assert_eq!(cookie.path, "/");
        assert_eq!(outcome.status, 200);
        assert!(
            outcome.body_text.contains("cookie: __Host-x=1"),
            "Chromium did not send it back over http: {outcome:#?}"
        );
    }

    /// The same with reqwest's cookie jar (what [`crate::oidc::HttpFlow`] uses).
    #[tokio::test]
    async fn host_prefixed_secure_cookie_in_the_http_flow() {
        let url = cookie_server();
        let flow = crate::oidc::HttpFlow::new();
        let page = flow.follow(&url).await;
        assert_eq!(page.status, 200, "{page:#?}");
        assert!(
            page.body.contains("cookie: __Host-x=1"),
            "reqwest's jar did not send the Secure cookie back over http://127.0.0.1: {page:#?}"
        );
    }

    #[tokio::test]
    async fn chromium_logs_in_and_out_through_the_provider() {
        let rp = TinyRp::start();
        let provider = provider_for(&rp);
        let shots = tempfile::tempdir().unwrap();
        let start = authorize_url(&provider, &rp, "browser-state");
        let logout = format!(
            "{}?client_id=gateway&post_logout_redirect_uri={}&state=bye",
            provider.end_session_endpoint(),
            rp.url("/bye")
        );
        let (login, logout) = chromium_login_then_logout_async(
            start,
            "alice".into(),
            logout,
            Some(shots.path().to_path_buf()),
        )
        .await;
        assert!(
            login.final_url.starts_with(&rp.url("/cb?code=")),
            "{login:#?}\n{}",
            provider.log()
        );
        assert_eq!(login.status, 200);
        assert!(login.body_text.contains("tiny rp"), "{login:#?}");
        assert!(login.steps.iter().any(|s| s.starts_with("login form")));
        let query = rp.query_of("/cb").expect("the RP saw no callback");
        assert!(
            query.contains(&("state".into(), "browser-state".into())),
            "{query:?}"
        );
        // The provider's session cookie, HttpOnly, on the provider's host.
        let session = login
            .cookie("_session")
            .unwrap_or_else(|| panic!("no provider session cookie: {:#?}", login.cookies));
        assert!(session.http_only);
        assert_eq!(session.domain, "127.0.0.1");

        assert_eq!(logout.final_url, rp.url("/bye?state=bye"), "{logout:#?}");
        assert!(
            logout
                .steps
                .iter()
                .any(|s| s.starts_with("logout confirmation")),
            "{logout:#?}"
        );
        assert!(logout.cookie("_session").is_none(), "{logout:#?}");
        assert!(
            rp.requests
                .lock()
                .unwrap()
                .iter()
                .any(|t| t == "/backchannel"),
            "no back-channel logout: {}",
            provider.log()
        );
        assert!(
            std::fs::read_dir(shots.path()).unwrap().count() >= 3,
            "screenshots missing"
        );
    }
}
