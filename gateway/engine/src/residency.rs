//! Data residency: regions, regimes and the region order a tenant's requests may use.
//!
//! [`ResidencyMaps`] is the vocabulary (`residency-maps/`); [`ResidencyPolicy`] adds this
//! deployment's upstream pools per region and route pins, and is what stage 5 reads.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostics::{SourceIssue, SourceIssues, SourceText};
use crate::tenancy::TenantSpec;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResidencyConfig {
    /// Directory with `regions.toml` and `regimes.toml`. Relative to this file.
    pub maps: PathBuf,
    /// Regime of tenants without one (and of requests without a tenant).
    #[serde(default = "default_regime")]
    pub default_regime: String,
    /// Routes served only in one region.
    #[serde(default)]
    pub pin: Vec<PinConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PinConfig {
    /// Path template (`{name}` one segment, `{*name}` the rest).
    pub path: String,
    pub region: String,
}

fn default_regime() -> String {
    "none".to_string()
}

/// Where an upstream pool runs, as stage 5 needs it (`upstream.pool[i]`).
#[derive(Debug, Clone, Copy)]
pub struct PoolRegion<'a> {
    pub name: &'a str,
    pub region: Option<&'a str>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub countries: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegimeSpec {
    pub id: String,
    pub name: String,
    pub storage: Vec<String>,
    pub processing: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionsFile {
    region: Vec<RegionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegimesFile {
    regime: Vec<RegimeSpec>,
}

/// The regions and regimes of `residency-maps/`, validated.
#[derive(Debug, Clone)]
pub struct ResidencyMaps {
    /// In file order (the order `*` expands to).
    regions: Vec<RegionSpec>,
    regimes: BTreeMap<String, RegimeSpec>,
    country_region: HashMap<String, String>,
}

impl ResidencyMaps {
    pub fn load(dir: &Path) -> Result<Self, SourceIssues> {
        let regions_src = SourceText::read(&dir.join("regions.toml"))?;
        let regimes_src = SourceText::read(&dir.join("regimes.toml"))?;
        Self::from_sources(&regions_src, &regimes_src)
    }

    /// As [`load`](Self::load), for the text of `regions.toml` and `regimes.toml` already in
    /// memory (their paths are used in messages).
    pub fn from_sources(
        regions_src: &SourceText,
        regimes_src: &SourceText,
    ) -> Result<Self, SourceIssues> {
        let regions: RegionsFile = regions_src.deserialize()?;
        let regimes: RegimesFile = regimes_src.deserialize()?;
        let mut issues = Vec::new();
        let mut country_region: HashMap<String, String> = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for (i, r) in regions.region.iter().enumerate() {
            if !ids.insert(r.id.as_str()) {
                issues.push(regions_src.issue(
                    format!("region[{i}].id"),
                    format!("duplicate region `{}`", r.id),
                ));
            }
            for (j, c) in r.countries.iter().enumerate() {
                if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                    issues.push(regions_src.issue(
                        format!("region[{i}].countries[{j}]"),
                        format!("`{c}` is not an ISO 3166-1 alpha-2 code (two capital letters)"),
                    ));
                } else if let Some(other) = country_region.insert(c.clone(), r.id.clone()) {
                    issues.push(regions_src.issue(
                        format!("region[{i}].countries[{j}]"),
                        format!("`{c}` is already hinted to region `{other}`"),
                    ));
                }
            }
        }
        let mut regime_map = BTreeMap::new();
        for (i, g) in regimes.regime.iter().enumerate() {
            for (field, list) in [("storage", &g.storage), ("processing", &g.processing)] {
                if list.is_empty() {
                    issues.push(regimes_src.issue(
                        format!("regime[{i}].{field}"),
                        "must allow at least one region",
                    ));
                }
                for (j, region) in list.iter().enumerate() {
                    if region != "*" && !ids.contains(region.as_str()) {
                        issues.push(regimes_src.issue(
                            format!("regime[{i}].{field}[{j}]"),
                            format!("unknown region `{region}` (not in regions.toml)"),
                        ));
                    }
                }
            }
            if regime_map.insert(g.id.clone(), g.clone()).is_some() {
                issues.push(regimes_src.issue(
                    format!("regime[{i}].id"),
                    format!("duplicate regime `{}`", g.id),
                ));
            }
        }
        if !issues.is_empty() {
            return Err(SourceIssues(issues));
        }
        Ok(ResidencyMaps {
            regions: regions.region,
            regimes: regime_map,
            country_region,
        })
    }

    pub fn has_region(&self, id: &str) -> bool {
        self.regions.iter().any(|r| r.id == id)
    }

    pub fn regime(&self, id: &str) -> Option<&RegimeSpec> {
        self.regimes.get(id)
    }

    pub fn regions(&self) -> &[RegionSpec] {
        &self.regions
    }

    /// The region a client country is closest to.
    pub fn region_for_country(&self, country: &str) -> Option<&str> {
        self.country_region.get(country).map(String::as_str)
    }

    fn expand<'a>(&'a self, list: &'a [String]) -> Vec<&'a str> {
        if list.iter().any(|r| r == "*") {
            self.regions.iter().map(|r| r.id.as_str()).collect()
        } else {
            list.iter().map(String::as_str).collect()
        }
    }

    /// Regions a regime lets requests be served from, in preference order.
    pub fn processing_regions<'a>(&'a self, regime: &'a RegimeSpec) -> Vec<&'a str> {
        self.expand(&regime.processing)
    }

    /// A tenant's regime exists and its home region is one of the regime's storage regions.
    pub fn check_tenant(&self, tenant: &TenantSpec, default_regime: &str) -> Result<(), String> {
        let regime_id = tenant.regime.as_deref().unwrap_or(default_regime);
        let regime = self
            .regime(regime_id)
            .ok_or_else(|| format!("tenant `{}`: unknown regime `{regime_id}`", tenant.id))?;
        if let Some(home) = &tenant.home_region {
            if !self.has_region(home) {
                return Err(format!(
                    "tenant `{}`: unknown home region `{home}`",
                    tenant.id
                ));
            }
            if !self.expand(&regime.storage).contains(&home.as_str()) {
                return Err(format!(
                    "tenant `{}`: home region `{home}` is not a storage region of regime `{regime_id}`",
                    tenant.id
                ));
            }
        }
        Ok(())
    }
}

/// A route served only in one region.
#[derive(Debug, Clone)]
pub struct Pin {
    pub template: String,
    pub region: String,
}

/// What stage 5 reads: the maps plus this deployment's pools and pins.
#[derive(Debug, Clone)]
pub struct ResidencyPolicy {
    pub maps: ResidencyMaps,
    /// Upstream pool indexes per region, in config order.
    pools_by_region: HashMap<String, Vec<usize>>,
    pins: matchit::Router<usize>,
    pin_list: Vec<Pin>,
    pub default_regime: String,
}

impl ResidencyPolicy {
    /// Builds the policy from `[residency]` and the upstream pools, with located errors.
    /// `pools` are the upstream pools in configuration order; `source` is the file
    /// `[residency]` was read from (for relative paths and located errors).
    pub fn build(
        cfg: &ResidencyConfig,
        pools: &[PoolRegion<'_>],
        source: &SourceText,
    ) -> Result<Self, SourceIssues> {
        let maps = ResidencyMaps::load(&source.resolve(&cfg.maps))
            .map_err(|e| e.or_on_field(source, "residency.maps"))?;
        let mut issues: Vec<SourceIssue> = Vec::new();
        let mut pools_by_region: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, pool) in pools.iter().enumerate() {
            match pool.region {
                Some(r) if maps.has_region(r) => {
                    pools_by_region.entry(r.to_string()).or_default().push(i)
                }
                Some(r) => issues.push(source.issue(
                    format!("upstream.pool[{i}].region"),
                    format!(
                        "unknown region `{r}` of pool `{}` (not in the residency maps)",
                        pool.name
                    ),
                )),
                None => issues.push(source.issue(
                    format!("upstream.pool[{i}]"),
                    "with [residency], every pool needs a `region`",
                )),
            }
        }
        if maps.regime(&cfg.default_regime).is_none() {
            issues.push(source.issue(
                "residency.default_regime",
                format!("unknown regime `{}`", cfg.default_regime),
            ));
        }
        let mut pins = matchit::Router::new();
        let mut pin_list = Vec::new();
        for (i, pin) in cfg.pin.iter().enumerate() {
            if !maps.has_region(&pin.region) {
                issues.push(source.issue(
                    format!("residency.pin[{i}].region"),
                    format!("unknown region `{}`", pin.region),
                ));
            }
            if let Err(e) = crate::authz::routes::check_template(&pin.path) {
                issues.push(source.issue(format!("residency.pin[{i}].path"), e));
            } else if let Err(e) = pins.insert(&pin.path, i) {
                issues.push(source.issue(format!("residency.pin[{i}].path"), e.to_string()));
            }
            pin_list.push(Pin {
                template: pin.path.clone(),
                region: pin.region.clone(),
            });
        }
        if !issues.is_empty() {
            return Err(SourceIssues(issues));
        }
        Ok(ResidencyPolicy {
            maps,
            pools_by_region,
            pins,
            pin_list,
            default_regime: cfg.default_regime.clone(),
        })
    }

    pub fn pools_in(&self, region: &str) -> &[usize] {
        self.pools_by_region
            .get(region)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn pin_for(&self, path: &str) -> Option<&Pin> {
        self.pins
            .at(path)
            .ok()
            .and_then(|m| self.pin_list.get(*m.value))
    }

    /// Checks every tenant of a registry against the maps.
    pub fn check_registry<'a>(&self, tenants: impl Iterator<Item = &'a TenantSpec>) -> Vec<String> {
        tenants
            .filter_map(|t| self.maps.check_tenant(t, &self.default_regime).err())
            .collect()
    }
}

/// One line of a residency report: where a tenant's traffic was served in a period.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResidencyRow {
    pub tenant: String,
    /// The serving region (`-` for requests never forwarded).
    pub region: String,
    pub requests: u64,
    /// Requests refused for residency (451).
    pub refused_for_residency: u64,
    pub first_seen: String,
    pub last_seen: String,
}

/// Builds the residency report from audit records (`kind = request`), read one at a time.
pub fn report(
    records: impl IntoIterator<Item = std::io::Result<serde_json::Value>>,
    tenant: Option<&str>,
    from: std::time::SystemTime,
    to: std::time::SystemTime,
) -> std::io::Result<Vec<ResidencyRow>> {
    let mut rows: BTreeMap<(String, String), ResidencyRow> = BTreeMap::new();
    for r in records {
        let r = r?;
        if r.get("kind").and_then(|k| k.as_str()) != Some("request") {
            continue;
        }
        let Some(time) = r.get("time").and_then(|t| t.as_str()) else {
            continue;
        };
        let Ok(at) = humantime::parse_rfc3339_weak(time) else {
            continue;
        };
        if at < from || at >= to {
            continue;
        }
        let Some(t) = r.get("tenant").and_then(|t| t.as_str()) else {
            continue;
        };
        if tenant.is_some_and(|q| q != t) {
            continue;
        }
        let region = r
            .pointer("/routing/region")
            .and_then(|v| v.as_str())
            .unwrap_or("-")
            .to_string();
        let refused = r.get("rejection").and_then(|v| v.as_str()) == Some("residency-violation");
        let row = rows
            .entry((t.to_string(), region.clone()))
            .or_insert_with(|| ResidencyRow {
                tenant: t.to_string(),
                region,
                requests: 0,
                refused_for_residency: 0,
                first_seen: time.to_string(),
                last_seen: time.to_string(),
            });
        row.requests += 1;
        row.refused_for_residency += u64::from(refused);
        if time < row.first_seen.as_str() {
            row.first_seen = time.to_string();
        }
        if time > row.last_seen.as_str() {
            row.last_seen = time.to_string();
        }
    }
    Ok(rows.into_values().collect())
}
