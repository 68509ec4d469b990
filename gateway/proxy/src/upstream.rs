//! Upstream pools: peers, health checks and selection (pingora-load-balancing), and the
//! per-peer connection options (timeouts, TLS, protocol) every proxied request uses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::protocols::ALPN;
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;

use gateway_engine::config::{LoadedConfig, PoolConfig, UpstreamConfig, UpstreamProtocol};

/// One pool of equivalent peers.
pub struct UpstreamPool {
    pub name: String,
    pub region: Option<String>,
    balancer: Arc<LoadBalancer<RoundRobin>>,
    tls: bool,
    sni: Option<String>,
    /// The host names of peers configured by name (`app-eu.internal:443`): without `sni`, a
    /// TLS peer's certificate is checked against its own name (not the address it resolved to).
    peer_names: HashMap<SocketAddr, String>,
    protocol: UpstreamProtocol,
}

/// A peer chosen for one request attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedPeer {
    pub pool: usize,
    pub addr: SocketAddr,
}

/// All pools plus the connection options shared by their peers.
pub struct Upstreams {
    pools: Vec<UpstreamPool>,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    pub connect_retries: usize,
}

impl Upstreams {
    /// Builds the pools and the background services that health-check them. The services
    /// must be added to the server; until the first check runs every peer counts as healthy.
    pub fn build(
        loaded: &LoadedConfig,
    ) -> std::io::Result<(Self, Vec<GenBackgroundService<LoadBalancer<RoundRobin>>>)> {
        let cfg = &loaded.config.upstream;
        let mut pools = Vec::with_capacity(cfg.pool.len());
        let mut services = Vec::with_capacity(cfg.pool.len());
        for (pool_cfg, peers) in cfg.pool.iter().zip(&loaded.pool_peers) {
            let mut balancer = LoadBalancer::<RoundRobin>::try_from_iter(peers.iter().copied())?;
            let peer_names = peer_names(pool_cfg, peers);
            balancer.set_health_check(health_check(
                cfg,
                pool_cfg,
                pool_cfg
                    .sni
                    .clone()
                    .or_else(|| peer_names.values().next().cloned()),
            ));
            balancer.health_check_frequency = Some(cfg.health_check.interval);
            balancer.parallel_health_check = true;
            let service = background_service(&format!("health {}", pool_cfg.name), balancer);
            pools.push(UpstreamPool {
                name: pool_cfg.name.clone(),
                region: pool_cfg.region.clone(),
                balancer: service.task(),
                tls: pool_cfg.tls,
                sni: pool_cfg.sni.clone(),
                peer_names,
                protocol: pool_cfg.protocol,
            });
            services.push(service);
        }
        Ok((
            Upstreams {
                pools,
                connect_timeout: cfg.connect_timeout,
                read_timeout: cfg.read_timeout,
                write_timeout: cfg.write_timeout,
                idle_timeout: cfg.idle_timeout,
                connect_retries: cfg.connect_retries,
            },
            services,
        ))
    }

    pub fn pools(&self) -> &[UpstreamPool] {
        &self.pools
    }

    /// The first healthy peer not in `exclude`, walking `pools` in order (a route plan).
    pub fn select_from(&self, pools: &[usize], exclude: &[SocketAddr]) -> Option<SelectedPeer> {
        pools.iter().find_map(|&pool| self.select(pool, exclude))
    }

    /// A healthy peer of pool `pool` that is not in `exclude` (peers that already failed this
    /// request). Round robin among the rest.
    pub fn select(&self, pool: usize, exclude: &[SocketAddr]) -> Option<SelectedPeer> {
        let p = self.pools.get(pool)?;
        let candidates = p.balancer.backends().get_backend().len();
        let accept = |b: &Backend, healthy: bool| {
            healthy && backend_addr(b).is_some_and(|a| !exclude.contains(&a))
        };
        // The round robin's position is shared by every thread, and its walk is bounded in
        // steps, not peers: another thread moving it mid-walk can make this one see a peer twice
        // and miss the healthy one. Then every peer is looked at in order.
        let backends = p.balancer.backends();
        let chosen = p
            .balancer
            .select_with(b"", candidates.max(1), accept)
            .or_else(|| {
                backends
                    .get_backend()
                    .iter()
                    .find(|b| accept(b, backends.ready(b)))
                    .cloned()
            })?;
        Some(SelectedPeer {
            pool,
            addr: backend_addr(&chosen)?,
        })
    }

    /// The pingora peer (address, TLS, protocol, timeouts) for a selected peer, with its pool
    /// (`None` only for a peer some other `Upstreams` selected).
    pub fn http_peer(&self, selected: &SelectedPeer) -> Option<(Box<HttpPeer>, &UpstreamPool)> {
        let pool = self.pools.get(selected.pool)?;
        // A cleartext peer has no name to check (and no hash lookup per request for one).
        let sni = match (&pool.sni, pool.tls) {
            (Some(sni), _) => sni.clone(),
            (None, true) => pool
                .peer_names
                .get(&selected.addr)
                .cloned()
                .unwrap_or_else(|| selected.addr.ip().to_string()),
            (None, false) => String::new(),
        };
        let mut peer = HttpPeer::new(selected.addr, pool.tls, sni);
        let options = &mut peer.options;
        options.connection_timeout = Some(self.connect_timeout);
        options.total_connection_timeout = Some(self.connect_timeout * 2);
        options.read_timeout = Some(self.read_timeout);
        options.write_timeout = Some(self.write_timeout);
        options.idle_timeout = Some(self.idle_timeout);
        options.alpn = match (pool.protocol, pool.tls) {
            (UpstreamProtocol::Http1, _) => ALPN::H1,
            (UpstreamProtocol::Http2, true) => ALPN::H2H1,
            // Cleartext HTTP/2 with prior knowledge.
            (UpstreamProtocol::Http2, false) => ALPN::H2,
        };
        Some((Box::new(peer), pool))
    }

    /// Takes a peer out of (or back into) rotation, e.g. to drain it. Returns whether the peer
    /// exists.
    pub fn set_enabled(&self, pool: usize, addr: SocketAddr, enabled: bool) -> bool {
        let Some(p) = self.pools.get(pool) else {
            return false;
        };
        let backends = p.balancer.backends();
        match backends
            .get_backend()
            .iter()
            .find(|b| backend_addr(b) == Some(addr))
        {
            Some(b) => {
                backends.set_enable(b, enabled);
                true
            }
            None => false,
        }
    }

    /// Peers of a pool with their current health, for status pages and metrics.
    pub fn peer_health(&self, pool: usize) -> Vec<(SocketAddr, bool)> {
        let Some(p) = self.pools.get(pool) else {
            return Vec::new();
        };
        let backends = p.balancer.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|b| backend_addr(b).map(|a| (a, backends.ready(b))))
            .collect()
    }
}

fn backend_addr(b: &Backend) -> Option<SocketAddr> {
    b.addr.as_inet().copied()
}

fn health_check(
    cfg: &UpstreamConfig,
    pool: &PoolConfig,
    server_name: Option<String>,
) -> Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync> {
    let hc = &cfg.health_check;
    if hc.probe == "tcp" {
        let mut check = if pool.tls {
            TcpHealthCheck::new_tls(server_name.as_deref().unwrap_or_default())
        } else {
            TcpHealthCheck::new()
        };
        check.consecutive_failure = hc.unhealthy_threshold;
        check.consecutive_success = hc.healthy_threshold;
        check.peer_template.options.connection_timeout = Some(cfg.connect_timeout);
        check
    } else {
        let host = server_name.unwrap_or_else(|| "localhost".to_string());
        let mut check = HttpHealthCheck::new(&host, pool.tls);
        check
            .req
            .set_uri(http::Uri::try_from(hc.probe.as_str()).unwrap_or_default());
        check.consecutive_failure = hc.unhealthy_threshold;
        check.consecutive_success = hc.healthy_threshold;
        check.peer_template.options.connection_timeout = Some(cfg.connect_timeout);
        check.peer_template.options.read_timeout = Some(cfg.connect_timeout);
        Box::new(check)
    }
}

/// The host name each peer of `pool` was configured by (`peers` are their addresses, in the
/// same order); IP literals name none.
fn peer_names(pool: &PoolConfig, peers: &[SocketAddr]) -> HashMap<SocketAddr, String> {
    pool.peers
        .iter()
        .zip(peers)
        .filter_map(|(configured, addr)| {
            let host = configured
                .rsplit_once(':')
                .map_or(configured.as_str(), |(h, _)| h);
            let literal = host.starts_with('[') || host.parse::<IpAddr>().is_ok();
            (!literal && !host.is_empty()).then(|| (*addr, host.to_ascii_lowercase()))
        })
        .collect()
}

impl gateway_engine::status::UpstreamStatus for Upstreams {
    fn pools(&self) -> Vec<gateway_engine::status::PoolStatus> {
        self.pools
            .iter()
            .enumerate()
            .map(|(i, pool)| gateway_engine::status::PoolStatus {
                name: pool.name.clone(),
                region: pool.region.clone(),
                peers: self.peer_health(i),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! Residency's promise holds through peer selection: the pools stage 5 plans are the only
    //! ones a peer is taken from, whatever the health of the peers.

    use proptest::prelude::*;

    use super::*;
    use gateway_engine::pipeline::placement::{place, PlacementRequest};
    use gateway_engine::residency::ResidencyPolicy;
    use gateway_engine::test_support::{regional_config, tenant_in};

    /// 5 regions × 10 peers, built once for all property cases.
    fn fixture() -> &'static (LoadedConfig, ResidencyPolicy, Upstreams) {
        static FIXTURE: std::sync::OnceLock<(LoadedConfig, ResidencyPolicy, Upstreams)> =
            std::sync::OnceLock::new();
        FIXTURE.get_or_init(|| {
            let loaded = regional_config(
                &["eu-central", "us-east", "in-west", "cn-north", "jp-east"],
                10,
                "",
            );
            let p = loaded.residency_policy().unwrap().unwrap();
            let (upstreams, _checks) = Upstreams::build(&loaded).unwrap();
            (loaded, p, upstreams)
        })
    }

    /// Threads select from one pool at once (as Pingora's workers do): with one of two peers
    /// down, every selection finds the healthy one. The shared round robin moving mid-walk
    /// made a bounded walk see the down peer twice and find none (a false 503, or a failover
    /// to the next region).
    #[test]
    fn concurrent_selections_always_find_the_healthy_peer() {
        let loaded = regional_config(&["eu-central"], 2, "");
        let (upstreams, _checks) = Upstreams::build(&loaded).unwrap();
        let peers = loaded.pool_peers[0].clone();
        upstreams.set_enabled(0, peers[0], false);
        let missed: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..20_000)
                            .filter(|_| upstreams.select(0, &[]).map(|s| s.addr) != Some(peers[1]))
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(missed, 0, "selections that missed the healthy peer");
    }

    /// A TLS peer configured by name is checked against that name (its certificate rarely
    /// carries the address the name resolved to); an IP peer against its address; `sni` wins.
    #[test]
    fn tls_peers_are_checked_against_the_name_they_were_configured_by() {
        let text = "[server]\nlisten = [\"127.0.0.1:1\"]\n\
            [[upstream.pool]]\nname = \"named\"\ntls = true\npeers = [\"localhost:8443\", \"127.0.0.1:8444\"]\n\
            [[upstream.pool]]\nname = \"pinned\"\ntls = true\nsni = \"app.internal\"\npeers = [\"localhost:8445\"]\n";
        let loaded = gateway_engine::config::load_source(
            gateway_engine::diagnostics::SourceText::new("/tmp/gw/gateway.toml", text),
        )
        .unwrap();
        let (upstreams, _checks) = Upstreams::build(&loaded).unwrap();
        let sni = |pool: usize, addr: SocketAddr| {
            let (peer, _) = upstreams.http_peer(&SelectedPeer { pool, addr }).unwrap();
            peer.sni.clone()
        };
        let named = &loaded.pool_peers[0];
        assert_eq!(sni(0, named[0]), "localhost");
        assert_eq!(sni(0, named[1]), "127.0.0.1");
        assert_eq!(sni(1, loaded.pool_peers[1][0]), "app.internal");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Whatever the tenant, regime, client, peer health and failed peers: a selected peer is
        /// always in a region the tenant's regime allows for processing.
        #[test]
        fn no_request_is_ever_sent_outside_the_allowed_regions(
            regime_index in 0usize..6,
            home_pick in 0usize..4,
            country in prop::sample::select(vec!["DE", "US", "IN", "CN", "JP", "IE", "BR", "ZZ"]),
            enabled in prop::collection::vec(any::<bool>(), 5 * 10),
            failed in prop::collection::vec(any::<bool>(), 5 * 10),
        ) {
            let regions = ["eu-central", "us-east", "in-west", "cn-north", "jp-east"];
            let (loaded, p, upstreams) = fixture();
            let regime_id = ["gdpr", "ccpa", "dpdp", "pipl", "appi", "none"][regime_index];
            let regime = p.maps.regime(regime_id).unwrap();
            let storage: Vec<String> = if regime.storage.iter().any(|r| r == "*") { regions.iter().map(|r| r.to_string()).collect() } else { regime.storage.clone() };
            let home = (home_pick < storage.len()).then(|| storage[home_pick].as_str());
            let t = tenant_in(regime_id, home);
            let allowed: Vec<&str> = p.maps.processing_regions(regime);
            let mut all_peers = Vec::new();
            for (pool, peers) in loaded.pool_peers.iter().enumerate() {
                for addr in peers {
                    all_peers.push((pool, *addr));
                }
            }
            let mut excluded = Vec::new();
            for (i, (pool, addr)) in all_peers.iter().enumerate() {
                upstreams.set_enabled(*pool, *addr, enabled[i]);
                if failed[i] {
                    excluded.push(*addr);
                }
            }
            match place(&PlacementRequest { path: "/p", tenant: Some(&t), client_country: Some(country) }, p) {
                Ok(plan) => {
                    for r in &plan.regions {
                        prop_assert!(allowed.contains(&r.as_str()), "plan region {} outside {:?}", r, allowed);
                    }
                    if let Some(selected) = upstreams.select_from(&plan.pools, &excluded) {
                        let region = upstreams.pools()[selected.pool].region.clone().unwrap();
                        prop_assert!(allowed.contains(&region.as_str()), "peer in {} outside {:?}", region, allowed);
                        prop_assert!(!excluded.contains(&selected.addr));
                    } else {
                        // Nothing selectable: every peer of every allowed region is out.
                        for (i, (pool, addr)) in all_peers.iter().enumerate() {
                            let region = upstreams.pools()[*pool].region.clone().unwrap();
                            if allowed.contains(&region.as_str()) {
                                prop_assert!(!enabled[i] || excluded.contains(addr));
                            }
                        }
                    }
                }
                Err(e) => prop_assert_eq!(e.status(), 451),
            }
        }
    }
}
