//! Client geography: the client's address (trusting `X-Forwarded-For` only from configured proxy
//! hops) and its country from a MaxMind-format database, reloaded when the file is replaced.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use maxminddb::PathElement;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostics::{SourceIssue, SourceText};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// A MaxMind-format country database (GeoIP2/GeoLite2 or DB-IP). Relative to this file.
    pub database: PathBuf,
    /// Dotted path of the ISO country code in a record (default: `country.iso_code` for
    /// GeoIP2/GeoLite2 databases, `country_code` otherwise).
    #[serde(default)]
    pub field: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs). Others' is ignored. Behind them,
    /// the hops of all `X-Forwarded-For` lines are walked from the right and the first hop that
    /// is not a trusted proxy is the client; what is left of it is ignored. A hop that is not an
    /// address (`unknown`, garbage) makes the client unknown (no address, no country), never the
    /// proxy. `Forwarded` (RFC 7239) is not read.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How often to check the file for a replacement.
    #[serde(default = "default_geoip_reload", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reload_interval: Duration,
}

impl GeoIpConfig {
    /// The database must open: a gateway that cannot locate clients would apply country
    /// policies to nobody.
    pub fn validate(&self, source: &SourceText, issues: &mut Vec<SourceIssue>) {
        let path = source.resolve(&self.database);
        if let Err(e) = maxminddb::Reader::open_readfile(&path) {
            issues.push(source.issue("geoip.database", format!("{}: {e}", path.display())));
        }
    }
}

fn default_geoip_reload() -> Duration {
    Duration::from_secs(30)
}

/// The client's address, or `None` when it cannot be known.
///
/// A peer that is not a trusted proxy is the client, and its `X-Forwarded-For` is ignored
/// (anyone can write one). Behind trusted proxies, the hops of all `X-Forwarded-For` lines (in
/// order, one list, as RFC 9110 §5.3 combines field lines) are walked from the right: trusted
/// proxies are passed, and the first other hop is the client. Everything left of it was written
/// by the client itself (or by proxies nobody vouches for) and is ignored, however malformed.
///
/// A hop that is not an address (`unknown`, an obfuscated identifier, garbage, non-ASCII bytes)
/// ends the chain of trust where it stands: the client is unknown (`None`), never the proxy
/// that forwarded the request. Hops may carry a port (`198.51.100.7:4711`,
/// `[2001:db8::1]:443`) or IPv6 brackets; IPv4-mapped IPv6 addresses count as IPv4. Empty
/// list elements are skipped (RFC 9110 §5.6.1). When every hop is a trusted proxy, the
/// left-most one is the client. The RFC 7239 `Forwarded` header is not read.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let client = peer.to_canonical();
    if !trusted.iter().any(|net| net.contains(&client)) {
        return Some(client);
    }
    walk_forwarded_for(client, headers, trusted)
}

/// The client of a request described by the proxy in front, which is trusted by definition
/// (the caller of the forward-auth endpoint): the right-most `X-Forwarded-For` hop (the
/// address that proxy saw), then leftwards only while hops are trusted proxies; the proxy
/// itself when it sent no `X-Forwarded-For`.
pub fn forwarded_client_ip(
    proxy: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    walk_forwarded_for(proxy.to_canonical(), headers, trusted)
}

/// `X-Forwarded-For`, parsed once (a `&str` name is parsed again on every lookup).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Walks `X-Forwarded-For` from the right, starting behind `client` (a trusted hop): the first
/// hop that is not a trusted proxy is the client; an unparsable hop makes it unknown.
fn walk_forwarded_for(
    mut client: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for hop in line.as_bytes().rsplit(|&b| b == b',') {
            let hop = hop.trim_ascii();
            if hop.is_empty() {
                continue;
            }
            let Some(ip) = parse_hop(hop) else {
                tracing::debug!(
                    hop = %String::from_utf8_lossy(hop),
                    "X-Forwarded-For hop is not an address: the client is unknown"
                );
                return None;
            };
            if !is_trusted(&ip) {
                return Some(ip);
            }
            client = ip;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` hop: an IP address, optionally bracketed (IPv6) or with a port.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?;
    let ip = match text.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match text.parse::<SocketAddr>() {
            Ok(addr) => addr.ip(),
            Err(_) => IpAddr::V6(
                text.strip_prefix('[')?
                    .strip_suffix(']')?
                    .parse::<Ipv6Addr>()
                    .ok()?,
            ),
        },
    };
    Some(ip.to_canonical())
}

struct Database {
    reader: maxminddb::Reader<Vec<u8>>,
    field: Vec<String>,
    modified: Option<SystemTime>,
}

/// A country database that follows file replacements.
pub struct GeoIp {
    path: PathBuf,
    /// Dotted field path of the ISO country code; `None`: chosen by the database type.
    field: Option<String>,
    db: ArcSwapOption<Database>,
}

impl GeoIp {
    pub fn open(path: &Path, field: Option<String>) -> Result<Arc<GeoIp>, String> {
        let geo = GeoIp {
            path: path.to_path_buf(),
            field,
            db: ArcSwapOption::empty(),
        };
        geo.db.store(Some(Arc::new(geo.read()?)));
        Ok(Arc::new(geo))
    }

    fn read(&self) -> Result<Database, String> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let reader = maxminddb::Reader::open_readfile(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let field = match &self.field {
            Some(f) => f.split('.').map(str::to_string).collect(),
            None => default_field(&reader.metadata().database_type),
        };
        Ok(Database {
            reader,
            field,
            modified,
        })
    }

    /// The database's type and build date (for status pages).
    pub fn describe(&self) -> Option<String> {
        let db = self.db.load_full()?;
        let m = db.reader.metadata();
        Some(format!("{} (built {})", m.database_type, m.build_epoch))
    }

    /// ISO 3166-1 alpha-2 country of `ip`, when the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        let db = self.db.load();
        let db = db.as_ref()?;
        let path: Vec<PathElement<'_>> = db.field.iter().map(|k| PathElement::Key(k)).collect();
        let found = db.reader.lookup(ip).ok()?;
        let code: String = found.decode_path(&path).ok()??;
        (code.len() == 2).then(|| code.to_ascii_uppercase())
    }

    /// Reopens the file if it changed; a broken replacement keeps the old database.
    pub fn reload_if_changed(&self) -> bool {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let current = self.db.load().as_ref().and_then(|d| d.modified);
        if modified.is_none() || modified == current {
            return false;
        }
        match self.read() {
            Ok(db) => {
                tracing::info!(path = %self.path.display(), "GeoIP database reloaded");
                metrics::counter!(crate::telemetry::GEOIP_RELOADS_TOTAL, "outcome" => "ok")
                    .increment(1);
                self.db.store(Some(Arc::new(db)));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "GeoIP database replacement unreadable; keeping the previous one");
                metrics::counter!(crate::telemetry::GEOIP_RELOADS_TOTAL, "outcome" => "error")
                    .increment(1);
                false
            }
        }
    }

    /// Checks the file for replacement every `interval` until shutdown.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            let geo = self.clone();
            let _ = tokio::task::spawn_blocking(move || geo.reload_if_changed()).await;
        }
    }
}

/// GeoIP2/GeoLite2 databases nest the code (`country.iso_code`); DB-IP and other "lite"
/// layouts keep it flat (`country_code`).
fn default_field(database_type: &str) -> Vec<String> {
    let t = database_type.to_ascii_lowercase();
    if t.contains("geoip") || t.contains("geolite") {
        vec!["country".into(), "iso_code".into()]
    } else {
        vec!["country_code".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
    }

    #[test]
    fn reads_both_record_layouts() {
        for file in ["geoip2-layout.mmdb", "flat-layout.mmdb"] {
            let geo = GeoIp::open(&fixtures().join(file), None).unwrap();
            assert_eq!(
                geo.country("5.6.7.8".parse().unwrap()).as_deref(),
                Some("DE"),
                "{file}"
            );
            assert_eq!(
                geo.country("175.45.1.1".parse().unwrap()).as_deref(),
                Some("KP"),
                "{file}"
            );
            assert_eq!(
                geo.country("2001:db8::1".parse().unwrap()).as_deref(),
                Some("FR"),
                "{file}"
            );
            assert_eq!(geo.country("192.0.2.1".parse().unwrap()), None, "{file}");
        }
        let explicit = GeoIp::open(
            &fixtures().join("flat-layout.mmdb"),
            Some("country_code".into()),
        )
        .unwrap();
        assert_eq!(
            explicit.country("8.8.8.8".parse().unwrap()).as_deref(),
            Some("US")
        );
    }

    #[test]
    fn shared_dbip_database_when_present() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/geoip/dbip-country.mmdb");
        if !path.exists() {
            eprintln!(
                "skipping: {} is absent (it lives beside the repository)",
                path.display()
            );
            return;
        }
        let geo = GeoIp::open(&path, None).unwrap();
        // Well-known anycast/operator addresses with stable registrations.
        assert_eq!(
            geo.country("8.8.8.8".parse().unwrap()).as_deref(),
            Some("US")
        );
        assert!(geo.country("2a00:1450:4001::1".parse().unwrap()).is_some());
        assert!(geo.describe().unwrap().contains("country"));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> Vec<IpNet> {
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ]
    }

    /// `client_ip` behind the trusted proxy 10.9.9.9, with one header line per element.
    fn behind_proxy(lines: &[&[u8]]) -> Option<IpAddr> {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(
                "x-forwarded-for",
                http::HeaderValue::from_bytes(line).unwrap(),
            );
        }
        client_ip(ip("10.9.9.9"), &h, &trusted())
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_hops() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "5.6.7.8, 203.0.113.9, 10.1.2.3".parse().unwrap(),
        );
        // From a trusted proxy: the right-most untrusted hop.
        assert_eq!(
            client_ip(ip("10.9.9.9"), &h, &trusted()),
            Some(ip("203.0.113.9"))
        );
        // From anyone else: the header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.7"), &h, &trusted()),
            Some(ip("198.51.100.7"))
        );
        // No header: the peer.
        assert_eq!(
            client_ip(ip("10.9.9.9"), &HeaderMap::new(), &trusted()),
            Some(ip("10.9.9.9"))
        );
        // Only trusted hops: the left-most of them.
        assert_eq!(behind_proxy(&[b"10.0.0.5, 10.0.0.6"]), Some(ip("10.0.0.5")));
    }

    #[test]
    fn the_proxy_asking_for_a_forward_auth_decision_names_the_client_in_one_hop() {
        let mut h = HeaderMap::new();
        // A client's own claim, then what the proxy (not among trusted_proxies) appended.
        h.insert(
            "x-forwarded-for",
            "175.45.1.1, 198.51.100.7".parse().unwrap(),
        );
        assert_eq!(
            forwarded_client_ip(ip("127.0.0.1"), &h, &trusted()),
            Some(ip("198.51.100.7"))
        );
        // The proxy's own hop is a trusted proxy: on to the next.
        h.insert("x-forwarded-for", "175.45.1.1, 10.0.0.5".parse().unwrap());
        assert_eq!(
            forwarded_client_ip(ip("127.0.0.1"), &h, &trusted()),
            Some(ip("175.45.1.1"))
        );
        // No header: the proxy itself.
        assert_eq!(
            forwarded_client_ip(ip("127.0.0.1"), &HeaderMap::new(), &trusted()),
            Some(ip("127.0.0.1"))
        );
    }

    #[test]
    fn malformed_hops_left_of_the_client_are_ignored() {
        for lines in [
            &[&b"garbage, 175.45.1.1"[..]][..],
            &[b"unknown, 175.45.1.1"],
            &[b"6.6.6.6:4711, 175.45.1.1"],
            &[b"\xc3\xbcnicode, 175.45.1.1"],
            &[b"\xff, 175.45.1.1, 10.0.0.7"],
            &[b"_hidden,175.45.1.1"],
            &[b"garbage", b"175.45.1.1"],
            &[b"5.6.7.8", b"175.45.1.1"],
            &[b"5.6.7.8", b"175.45.1.1, 10.0.0.7", b"10.0.0.8"],
            &[b"5.6.7.8,, 175.45.1.1 ,"],
        ] {
            assert_eq!(behind_proxy(lines), Some(ip("175.45.1.1")), "{lines:?}");
        }
    }

    #[test]
    fn an_unparsable_client_hop_makes_the_client_unknown_not_the_proxy() {
        for lines in [
            &[&b"5.6.7.8, garbage"[..]][..],
            &[b"unknown"],
            &[b"5.6.7.8, _hidden, 10.0.0.7"],
            &[b"5.6.7.8, \xc3\xbc"],
            &[b"5.6.7.8", b"unknown"],
            &[b"fe80::1%eth0"],
            &[b"1.2.3"],
            &[b"1.2.3.4 5.6.7.8"],
        ] {
            assert_eq!(behind_proxy(lines), None, "{lines:?}");
        }
    }

    #[test]
    fn hops_with_ports_brackets_and_mapped_addresses() {
        assert_eq!(behind_proxy(&[b"175.45.1.1:4711"]), Some(ip("175.45.1.1")));
        assert_eq!(
            behind_proxy(&[b"[2001:db8::1]:443"]),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(behind_proxy(&[b"[2001:db8::1]"]), Some(ip("2001:db8::1")));
        assert_eq!(behind_proxy(&[b"2001:db8::1"]), Some(ip("2001:db8::1")));
        // IPv4-mapped: the IPv4 address, for trust and for the country.
        assert_eq!(
            behind_proxy(&[b"175.45.1.1, ::ffff:10.0.0.7"]),
            Some(ip("175.45.1.1"))
        );
        assert_eq!(
            behind_proxy(&[b"::ffff:175.45.1.1"]),
            Some(ip("175.45.1.1"))
        );
        // A mapped peer address is trusted like its IPv4 form.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "175.45.1.1".parse().unwrap());
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &trusted()),
            Some(ip("175.45.1.1"))
        );
    }
}
