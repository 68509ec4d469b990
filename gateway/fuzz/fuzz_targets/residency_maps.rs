//! `residency-maps/` from arbitrary text (`residency::ResidencyMaps::from_sources`, what
//! `ResidencyMaps::load` runs on the two files).
//!
//! Input: NUL-separated parts: the text of `regions.toml`, then of `regimes.toml`.
//!
//! Properties:
//! - every refusal names, for each problem, its file and a field or a line inside it;
//! - in accepted maps every regime allows at least one known region for storage and for
//!   processing (`*` expands to every region, in file order), every hinted country leads back
//!   to its region, and a tenant homed in a region is accepted exactly when the region is one
//!   of its regime's storage regions.
#![no_main]

use gateway::config::SourceText;
use gateway::residency::ResidencyMaps;
use gateway::tenancy::TenantSpec;
use gateway_fuzz::{assert_located, fixture_dir, parts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = parts(data);
    let [regions, regimes] = parts.as_slice() else {
        return;
    };
    let (Ok(regions), Ok(regimes)) = (std::str::from_utf8(regions), std::str::from_utf8(regimes))
    else {
        return;
    };
    let regions_src = SourceText::new(fixture_dir().join("maps/regions.toml"), regions);
    let regimes_src = SourceText::new(fixture_dir().join("maps/regimes.toml"), regimes);
    let maps = match ResidencyMaps::from_sources(&regions_src, &regimes_src) {
        Ok(m) => m,
        Err(issues) => return assert_located(&issues, &[&regions_src, &regimes_src]),
    };
    let ids: Vec<&str> = maps.regions().iter().map(|r| r.id.as_str()).collect();
    for region in maps.regions() {
        for country in &region.countries {
            assert_eq!(maps.region_for_country(country), Some(region.id.as_str()));
        }
    }
    let regimes: toml::Table = regimes.parse().unwrap_or_else(|e| panic!("accepted: {e}"));
    let listed = regimes
        .get("regime")
        .and_then(|r| r.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for entry in listed {
        let Some(id) = entry.get("id").and_then(|v| v.as_str()) else {
            panic!("accepted a regime without id: {entry}");
        };
        let regime = maps
            .regime(id)
            .unwrap_or_else(|| panic!("regime {id} accepted but unknown"));
        let processing = maps.processing_regions(regime);
        assert!(!processing.is_empty(), "{id}: no processing region");
        for r in &processing {
            assert!(ids.contains(r), "{id}: processing in unknown {r}");
        }
        if regime.processing.iter().any(|r| r == "*") {
            assert_eq!(processing, ids);
        }
        let storage: Vec<&str> = if regime.storage.iter().any(|r| r == "*") {
            ids.clone()
        } else {
            regime.storage.iter().map(String::as_str).collect()
        };
        assert!(!storage.is_empty(), "{id}: no storage region");
        for home in &ids {
            let mut tenant = TenantSpec::new("t");
            tenant.regime = Some(id.to_string());
            tenant.home_region = Some(home.to_string());
            assert_eq!(
                maps.check_tenant(&tenant, "none").is_ok(),
                storage.contains(home),
                "{id} homed in {home}"
            );
        }
    }
});
