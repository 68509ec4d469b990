//! A real nginx (the Debian package; `scripts/ensure-deps test` installs it) running
//! deploy/nginx/nginx.conf — the example the README gives — with its addresses replaced: in
//! front of an app, every request decided by the gateway's forward-auth endpoint.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

fn nginx_bin() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("nginx")
}

impl Nginx {
    /// Starts nginx on a free port in front of `app`, asking the gateway at `forward_auth`.
    pub fn start(app: SocketAddr, forward_auth: SocketAddr) -> Nginx {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .canonicalize()
            .unwrap();
        let example = repo.join("deploy/nginx");
        let template = std::fs::read_to_string(example.join("nginx.conf")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for attempt in 1.. {
            let addr = super::free_addr();
            let config = template
                .replace("127.0.0.1:9192", &forward_auth.to_string())
                .replace("127.0.0.1:18080", &app.to_string())
                .replace("127.0.0.1:8088", &addr.to_string())
                .replace(
                    "include gateway-",
                    &format!("include {}/gateway-", example.display()),
                )
                .replace(
                    "error_log stderr warn;",
                    &format!("error_log {}/error.log info;", dir.path().display()),
                );
            assert!(
                config.contains(&addr.to_string()) && config.contains(&forward_auth.to_string()),
                "deploy/nginx/nginx.conf changed shape; update this harness"
            );
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, config).unwrap();
            let mut child = Command::new(nginx_bin())
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "nginx could not start ({e}): install it with `scripts/ensure-deps test`"
                    )
                });
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(addr).is_ok() {
                    return Nginx { addr, child, dir };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                    if attempt < 3 && log.contains("Address already in use") {
                        break;
                    }
                    panic!("nginx exited ({status}):\n{log}");
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("nginx did not listen on {addr} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unreachable!()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (SIGKILL would orphan them).
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}
