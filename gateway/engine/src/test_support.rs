//! Test fixtures shared with the front doors' tests (feature `test-support`): proptest
//! strategies for request paths, and deployments built in memory.

use proptest::prelude::*;

use crate::config::{load_source, LoadedConfig};
use crate::diagnostics::SourceText;
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
