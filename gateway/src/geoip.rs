//! Client geography: the client's address (trusting `X-Forwarded-For` only from configured proxy
//! hops) and its country from a MaxMind-format database, reloaded when the file is replaced.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::HeaderMap;
use ipnet::IpNet;
use maxminddb::PathElement;

/// The client's address: the connection's peer, or, when the peer is a trusted proxy, the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy. Untrusted peers'
/// `X-Forwarded-For` is ignored (anyone can write one).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return peer;
        };
        for part in value.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // A malformed hop breaks the chain: trust nothing beyond the peer.
                Err(_) => return peer,
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
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
                metrics::counter!("gateway_geoip_reloads_total", "outcome" => "ok").increment(1);
                self.db.store(Some(Arc::new(db)));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "GeoIP database replacement unreadable; keeping the previous one");
                metrics::counter!("gateway_geoip_reloads_total", "outcome" => "error").increment(1);
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
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
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
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/geoip/dbip-country.mmdb");
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

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_hops() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "5.6.7.8, 203.0.113.9, 10.1.2.3".parse().unwrap(),
        );
        // From a trusted proxy: the right-most untrusted hop.
        assert_eq!(
            client_ip("10.9.9.9".parse().unwrap(), &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // From anyone else: the header is ignored.
        assert_eq!(
            client_ip("198.51.100.7".parse().unwrap(), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A malformed chain is not trusted at all.
        h.insert("x-forwarded-for", "5.6.7.8, garbage".parse().unwrap());
        assert_eq!(
            client_ip("10.9.9.9".parse().unwrap(), &h, &trusted),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
        // Only trusted hops: the peer.
        h.insert("x-forwarded-for", "10.0.0.5".parse().unwrap());
        assert_eq!(
            client_ip("10.9.9.9".parse().unwrap(), &h, &trusted),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
    }
}
