//! Stage 5: which upstream pools may serve this request, in which order.
//!
//! Only regions the tenant's regime allows for processing are ever in the plan; the home region
//! comes first, then the region nearest the client (a preference, never an override), then the
//! regime's other regions in order. Peer selection and failover (in the proxy) walk this plan and
//! nothing else, so no retry can leave the allowed regions.

use serde::Serialize;

use super::Rejection;
use crate::residency::ResidencyPolicy;
use crate::tenancy::TenantSpec;

/// Why the first region of a plan was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementReason {
    /// The tenant's home region.
    Home,
    /// The region nearest the client.
    ClientProximity,
    /// The regime's preferred region.
    RegimePreference,
    /// The route is served only in one region.
    Pinned,
    /// No residency configured: every pool, in config order.
    Unrestricted,
}

/// Output of stage 5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Pool indexes in the order they may be tried.
    pub pools: Vec<usize>,
    /// The regions of those pools, in order (deduplicated).
    pub regions: Vec<String>,
    pub regime: Option<String>,
    pub reason: PlacementReason,
}

/// What stage 5 reads.
pub struct PlacementRequest<'a> {
    pub path: &'a str,
    pub tenant: Option<&'a TenantSpec>,
    pub client_country: Option<&'a str>,
}

/// A plan over every pool, for deployments without `[residency]`.
pub fn unrestricted(pool_count: usize) -> Placement {
    Placement {
        pools: (0..pool_count).collect(),
        regions: Vec::new(),
        regime: None,
        reason: PlacementReason::Unrestricted,
    }
}

/// Runs stage 5.
pub fn place(
    request: &PlacementRequest<'_>,
    policy: &ResidencyPolicy,
) -> Result<Placement, Rejection> {
    let maps = &policy.maps;
    let regime_id = request
        .tenant
        .and_then(|t| t.regime.as_deref())
        .unwrap_or(&policy.default_regime);
    let regime = maps
        .regime(regime_id)
        .ok_or_else(|| Rejection::ResidencyViolation {
            reason: format!("the tenant's data-residency regime `{regime_id}` is not defined"),
        })?;
    let allowed = maps.processing_regions(regime);
    let mut order: Vec<&str> = Vec::with_capacity(allowed.len());
    let reason;
    if let Some(pin) = policy.pin_for(request.path) {
        if !allowed.contains(&pin.region.as_str()) {
            return Err(Rejection::ResidencyViolation {
                reason: format!(
                    "this route is served only in region `{}`, which regime `{regime_id}` does not allow for this tenant's data",
                    pin.region
                ),
            });
        }
        order.push(&pin.region);
        reason = PlacementReason::Pinned;
    } else {
        let home = request
            .tenant
            .and_then(|t| t.home_region.as_deref())
            .filter(|h| allowed.contains(h));
        let near = request
            .client_country
            .and_then(|c| maps.region_for_country(c))
            .filter(|r| allowed.contains(r));
        reason = match (home, near) {
            (Some(_), _) => PlacementReason::Home,
            (None, Some(_)) => PlacementReason::ClientProximity,
            (None, None) => PlacementReason::RegimePreference,
        };
        for region in home.into_iter().chain(near).chain(allowed.iter().copied()) {
            if !order.contains(&region) {
                order.push(region);
            }
        }
    }
    let mut pools = Vec::new();
    let mut regions = Vec::new();
    for region in order {
        let in_region = policy.pools_in(region);
        if !in_region.is_empty() {
            pools.extend_from_slice(in_region);
            regions.push(region.to_string());
        }
    }
    if pools.is_empty() {
        return Err(Rejection::ResidencyViolation {
            reason: format!("no upstream runs in a region that regime `{regime_id}` allows for this tenant's data"),
        });
    }
    Ok(Placement {
        pools,
        regions,
        regime: Some(regime_id.to_string()),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_source;
    use crate::diagnostics::SourceText;

    fn config(regions: &[&str], per_region: usize, extra: &str) -> crate::config::LoadedConfig {
        crate::test_support::regional_config(regions, per_region, extra)
    }

    fn policy(loaded: &crate::config::LoadedConfig) -> ResidencyPolicy {
        loaded.residency_policy().unwrap().unwrap()
    }

    fn tenant(regime: &str, home: Option<&str>) -> TenantSpec {
        crate::test_support::tenant_in(regime, home)
    }

    const ALL: &[&str] = &[
        "eu-central",
        "eu-west",
        "us-east",
        "in-west",
        "cn-north",
        "jp-east",
    ];

    #[test]
    fn home_first_then_client_then_regime_order() {
        let loaded = config(ALL, 1, "");
        let p = policy(&loaded);
        let t = tenant("gdpr", Some("eu-west"));
        let plan = place(
            &PlacementRequest {
                path: "/x",
                tenant: Some(&t),
                client_country: Some("DE"),
            },
            &p,
        )
        .unwrap();
        assert_eq!(plan.regions, vec!["eu-west", "eu-central"]);
        assert_eq!(plan.reason, PlacementReason::Home);
        // No home: the client's nearest allowed region first.
        let t = tenant("ccpa", None);
        let plan = place(
            &PlacementRequest {
                path: "/x",
                tenant: Some(&t),
                client_country: Some("IE"),
            },
            &p,
        )
        .unwrap();
        assert_eq!(plan.regions, vec!["eu-west", "us-east", "eu-central"]);
        assert_eq!(plan.reason, PlacementReason::ClientProximity);
        // A client in a region the regime forbids changes nothing.
        let t = tenant("pipl", Some("cn-north"));
        let plan = place(
            &PlacementRequest {
                path: "/x",
                tenant: Some(&t),
                client_country: Some("US"),
            },
            &p,
        )
        .unwrap();
        assert_eq!(plan.regions, vec!["cn-north"]);
    }

    #[test]
    fn pinned_routes_outside_the_regime_are_451() {
        let loaded = config(
            ALL,
            1,
            "[[residency.pin]]\npath = \"/analytics/{*rest}\"\nregion = \"us-east\"\n",
        );
        let p = policy(&loaded);
        let gdpr = tenant("gdpr", Some("eu-central"));
        let err = place(
            &PlacementRequest {
                path: "/analytics/q",
                tenant: Some(&gdpr),
                client_country: None,
            },
            &p,
        )
        .unwrap_err();
        assert_eq!(err.status(), 451);
        assert!(
            err.to_string().contains("us-east") && err.to_string().contains("gdpr"),
            "{err}"
        );
        let ccpa = tenant("ccpa", Some("us-east"));
        let plan = place(
            &PlacementRequest {
                path: "/analytics/q",
                tenant: Some(&ccpa),
                client_country: None,
            },
            &p,
        )
        .unwrap();
        assert_eq!(
            (plan.regions, plan.reason),
            (vec!["us-east".to_string()], PlacementReason::Pinned)
        );
    }

    #[test]
    fn no_pool_in_any_allowed_region_is_451() {
        let loaded = config(&["us-east"], 2, "");
        let p = policy(&loaded);
        let err = place(
            &PlacementRequest {
                path: "/",
                tenant: Some(&tenant("dpdp", Some("in-west"))),
                client_country: None,
            },
            &p,
        )
        .unwrap_err();
        assert_eq!(err.status(), 451);
    }

    #[test]
    fn maps_validation_names_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("regions.toml"),
            "[[region]]\nid = \"a\"\nname = \"A\"\ncountries = [\"de\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("regimes.toml"),
            "[[regime]]\nid = \"x\"\nname = \"X\"\nstorage = [\"a\"]\nprocessing = [\"b\"]\n\n[[regime]]\nid = \"y\"\nname = \"Y\"\nstorage = []\nprocessing = [\"a\"]\n",
        )
        .unwrap();
        let err = crate::residency::ResidencyMaps::load(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("regions.toml:4") && text.contains("region[0].countries[0]"),
            "{text}"
        );
        assert!(
            text.contains("regimes.toml:5") && text.contains("unknown region `b`"),
            "{text}"
        );
        assert!(
            text.contains("regime[1].storage") && text.contains("at least one"),
            "{text}"
        );
    }

    #[test]
    fn maps_that_cannot_be_read_are_reported_on_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[residency]\nmaps = \"{}\"\n\
             [[upstream.pool]]\nname = \"a\"\nregion = \"a\"\npeers = [\"127.0.0.1:2\"]\n",
            dir.path().display()
        );
        let loaded = load_source(SourceText::new("/tmp/gw/gateway.toml", text)).unwrap();
        let issues = loaded.residency_policy().unwrap_err();
        let issue = &issues.0[0];
        assert_eq!(
            (issue.field.as_str(), issue.location.line),
            ("residency.maps", Some(4)),
            "{issues}"
        );
        assert!(issue.message.contains("regions.toml"), "{issue}");
    }

    #[test]
    fn tenant_homes_must_be_storage_regions_of_their_regime() {
        let loaded = config(ALL, 1, "");
        let p = policy(&loaded);
        assert!(p
            .maps
            .check_tenant(&tenant("gdpr", Some("eu-central")), "none")
            .is_ok());
        assert!(p
            .maps
            .check_tenant(&tenant("gdpr", Some("us-east")), "none")
            .unwrap_err()
            .contains("storage"));
        assert!(p
            .maps
            .check_tenant(&tenant("nope", None), "none")
            .unwrap_err()
            .contains("unknown regime"));
        assert!(p
            .maps
            .check_tenant(&tenant("gdpr", Some("mars")), "none")
            .unwrap_err()
            .contains("unknown home"));
    }
}
