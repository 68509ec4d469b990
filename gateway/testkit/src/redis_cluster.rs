//! A real Redis Cluster of the test's own: three masters with one replica each, six
//! `redis-server --cluster-enabled yes` processes on free loopback ports, joined by
//! `redis-cli --cluster create`; stopped when dropped. The test kills a master with
//! [`RedisCluster::kill_master_of`] and waits for its replica's promotion.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may be unreachable before the cluster fails it over (ms): short, so a
/// test sees the promotion within a few seconds.
const NODE_TIMEOUT_MS: u64 = 1000;

pub fn redis_server_bin() -> PathBuf {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli (scripts/ensure-deps installs redis-tools)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts one cluster node on fresh loopback ports and waits for its PONG. A port that was
/// free when chosen can be taken before redis-server binds it (another test's outgoing
/// connection gets ephemeral ports from the same range): a node that exits is started
/// again on other ports instead of failing the test 20 s later.
fn start_node(dir: &std::path::Path) -> Node {
    let mut failures = Vec::new();
    for _attempt in 0..5 {
        let port = crate::free_port();
        // The bus port is given explicitly: port + 10000 may be above 65535 or taken.
        let bus_port = crate::free_port();
        let log_path = dir.join(format!("redis-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(redis_server_bin())
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &bus_port.to_string()])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/ensure-deps installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if redis_cli(port, &["ping"]).trim() == "PONG" {
                return Node {
                    port,
                    child: Some(child),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                failures.push(format!("port {port}/{bus_port}: {status}: {tail:?}"));
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                failures.push(format!("port {port}/{bus_port}: no PONG within 20 s"));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("redis cluster node did not start: {failures:#?}");
}

struct Node {
    port: u16,
    child: Option<Child>,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Six nodes (three masters, three replicas), every slot covered, `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (0..6).map(|_| start_node(dir.path())).collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Process ids of the live nodes (a benchmark reads their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// Seed URLs of every node, for `redis_cluster_nodes`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .map(|n| n.port)
            .expect("a live node")
    }

    /// Waits until every live node reports `cluster_state:ok` and all of them agree on the
    /// masters (a node that has not heard of a promotion yet still says ok).
    pub fn wait_ok(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let live: Vec<u16> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| n.port)
                .collect();
            let ok = live
                .iter()
                .all(|p| redis_cli(*p, &["cluster", "info"]).contains("cluster_state:ok"));
            let views: Vec<Vec<(u16, String)>> =
                live.iter().map(|p| self.masters_seen(*p)).collect();
            if ok && views.windows(2).all(|w| w[0] == w[1]) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "redis cluster not ok after {limit:?}: {}",
                redis_cli(self.live_port(), &["cluster", "nodes"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the master on `dead_port` is replaced: every live node sees three masters
    /// serving slots, none of them `dead_port`, and says `cluster_state:ok`. Returns how long
    /// that took.
    pub fn wait_failover(&self, dead_port: u16, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let replaced = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let masters = self.masters_seen(n.port);
                masters.len() == 3 && masters.iter().all(|(port, _)| *port != dead_port)
            });
            if replaced {
                self.wait_ok(limit.saturating_sub(started.elapsed()));
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "no failover of {dead_port} after {limit:?}: {}",
                redis_cli(self.live_port(), &["cluster", "nodes"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// (port, slot ranges) of the masters serving slots, as node `port` sees them.
    fn masters_seen(&self, port: u16) -> Vec<(u16, String)> {
        let mut masters: Vec<(u16, String)> = redis_cli(port, &["cluster", "nodes"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") || fields.len() < 9 {
                    return None;
                }
                let address = fields[1].split('@').next()?;
                let node_port = address.rsplit(':').next()?.parse().ok()?;
                Some((node_port, fields[8..].join(" ")))
            })
            .collect();
        masters.sort();
        masters
    }

    /// Port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self.live_port();
        let slot: u16 = redis_cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("cluster keyslot");
        self.masters_seen(port)
            .into_iter()
            .find(|(_, ranges)| {
                ranges.split_whitespace().any(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    matches!((from.parse::<u16>(), to.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
                })
            })
            .map(|(port, _)| port)
            .expect("a master serving the slot")
    }

    /// SIGKILLs the master serving `key`; returns its port.
    pub fn kill_master_of(&mut self, key: &str) -> u16 {
        let port = self.master_of(key);
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        let mut child = node.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        port
    }

    /// The log of every node (for a failing assertion).
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log =
                    std::fs::read_to_string(self.dir.path().join(format!("redis-{}.log", n.port)))
                        .unwrap_or_default();
                format!("--- redis {} ---\n{log}", n.port)
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
