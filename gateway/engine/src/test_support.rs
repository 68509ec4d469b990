//! Test fixtures shared with the front doors' tests (feature `test-support`): proptest
//! strategies for request paths, and deployments built in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;

use crate::admission::Services;
use crate::config::{load_source, LoadedConfig};
use crate::diagnostics::SourceText;
use crate::identity::Authenticator;
use crate::snapshot::Snapshot;
use crate::tenancy::TenantSpec;

/// Arbitrary request paths, biased towards ambiguous encodings (the sanitizer's differential,
/// and the proxy's: the path matched is the path forwarded).
pub fn byte_path() -> impl Strategy<Value = Vec<u8>> {
    // Biased towards what makes encodings ambiguous, plus any byte at all.
    let piece = prop_oneof![
        Just(b"/".to_vec()),
        Just(b".".to_vec()),
        Just(b"..".to_vec()),
        Just(b"%".to_vec()),
        Just(b"%25".to_vec()),
        Just(b"%2".to_vec()),
        Just(b"%32".to_vec()),
        Just(b"%35".to_vec()),
        Just(b"%66".to_vec()),
        Just(b"%2e".to_vec()),
        Just(b"%2E".to_vec()),
        Just(b"%2f".to_vec()),
        Just(b"%5c".to_vec()),
        Just(b"%00".to_vec()),
        Just(b"%c0%af".to_vec()),
        Just(b"%c3%a9".to_vec()),
        Just(b";".to_vec()),
        Just(b"f".to_vec()),
        Just(b"c".to_vec()),
        Just(b"a".to_vec()),
        "[0-9a-fA-F]".prop_map(|s| s.into_bytes()),
        any::<u8>().prop_map(|b| vec![b]),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|pieces| {
        let mut path = vec![b'/'];
        path.extend(pieces.concat());
        path
    })
}

/// What a request path means (no query): its percent-decoded segments after RFC 3986 §5.2.4
/// dot-segment removal, `//` merged; `None` when `..` climbs above the root. The reference
/// the sanitizer's differential tests and fuzz target compare with (decoder: the
/// `percent-encoding` crate).
pub fn reference_segments(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for segment in path.get(1..)?.split(|&b| b == b'/') {
        let decoded: Vec<u8> = percent_encoding::percent_decode(segment).collect();
        match decoded.as_slice() {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            _ => out.push(decoded),
        }
    }
    Some(out)
}

/// The percent-decoded non-empty segments of a normalised path (as an upstream decoding it
/// once sees them).
pub fn decoded_segments(path: &str) -> Vec<Vec<u8>> {
    path.get(1..)
        .unwrap_or_default()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).collect())
        .collect()
}

/// A configuration with `per_region` loopback peers in each of `regions` (ports never
/// connected to: planning and selection only) and the repository's residency maps; `extra`
/// is appended to the file's top.
///
/// # Panics
/// When the result does not load: a fixture that cannot be built is a broken test.
#[allow(clippy::panic)]
pub fn regional_config(regions: &[&str], per_region: usize, extra: &str) -> LoadedConfig {
    let maps = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../residency-maps");
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[residency]\nmaps = \"{}\"\n{extra}\n",
        maps.display()
    );
    let mut port = 20000;
    for r in regions {
        let peers: Vec<String> = (0..per_region)
            .map(|_| {
                port += 1;
                format!("\"127.0.0.1:{port}\"")
            })
            .collect();
        text.push_str(&format!(
            "[[upstream.pool]]\nname = \"{r}\"\nregion = \"{r}\"\npeers = [{}]\n",
            peers.join(", ")
        ));
    }
    match load_source(SourceText::new("/tmp/gw/gateway.toml", text)) {
        Ok(loaded) => loaded,
        Err(e) => panic!("regional_config: {e}"),
    }
}

/// A tenant under `regime`, homed in `home`.
pub fn tenant_in(regime: &str, home: Option<&str>) -> TenantSpec {
    let mut t = TenantSpec::new("t");
    t.regime = Some(regime.to_string());
    t.home_region = home.map(str::to_string);
    t
}

/// The deployment the fuzz targets load (`gateway/fuzz/fixture`): the repository's policies
/// and residency maps, tenants `acme` (pro, gdpr), `globex` (free, ccpa) and `initech`
/// (suspended), found by host `{tenant}.api.fuzz.test`, header `x-tenant`, path prefix
/// `/t/{tenant}` (stripped) or the token's `org` claim; an HMAC issuer
/// `https://issuer.fuzz.test` (audience `gateway-fuzz`) and a platform-wide one; anonymous
/// callers allowed; local rate limits.
pub struct Deployment {
    pub dir: PathBuf,
    pub snapshot: Snapshot,
    pub services: Services,
    secret: Vec<u8>,
}

impl Deployment {
    /// # Panics
    /// When the fixture does not load: a broken fixture is a broken test.
    #[allow(clippy::expect_used)]
    pub fn load() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fixture");
        let loaded = crate::config::load(&dir.join("gateway.toml")).expect("fixture config");
        let registry = crate::snapshot::load_file_registry(&loaded).expect("fixture tenants");
        let snapshot = Snapshot::build(&loaded, registry).expect("fixture snapshot");
        let services = Services {
            authenticator: Authenticator::new(Default::default(), 16),
            geoip: None,
            trusted_proxies: Vec::new(),
            limiter: Arc::new(crate::limits::Limiter::new(
                loaded.config.limits.as_ref(),
                &loaded.config.tiers,
            )),
            webhooks: None,
            entity_store: Default::default(),
            directory: Default::default(),
            sessions: None,
            budgets: None,
        };
        let secret = std::fs::read(dir.join("issuer.secret")).expect("fixture secret");
        Deployment {
            dir,
            snapshot,
            services,
            secret: secret.trim_ascii_end().to_vec(),
        }
    }

    /// A token of the tenant issuer for `sub` in tenant `org` with `roles`, valid until 2100.
    ///
    /// # Panics
    /// Never in practice (HMAC signing of a JSON object).
    #[allow(clippy::expect_used)]
    pub fn token(&self, sub: &str, org: &str, roles: &[&str]) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({
                "iss": "https://issuer.fuzz.test", "aud": "gateway-fuzz", "sub": sub,
                "org": org, "roles": roles, "mfa": true, "exp": 4102444800u64,
            }),
            &jsonwebtoken::EncodingKey::from_secret(&self.secret),
        )
        .expect("HS256 signing")
    }
}
