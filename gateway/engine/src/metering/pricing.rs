//! Prices: `[metering.pricing]` turns usage into cost, with decimal arithmetic (never floats).
//!
//! A price list is a set of *items*. Each item selects the requests it charges for (all of
//! them, those of a custom meter, an action or a route), a unit (per request, or per gigabyte
//! of request or response body) and a unit price, optionally a different one per tier. A
//! request is charged once by every item that selects it; requests the gateway refused cost
//! nothing, requests forwarded but interrupted by a crash cost as forwarded (the upstream may
//! have done the work). Cost is computed where usage is reported, from the tier and the
//! chargeback attributes each usage event carries, so a tier change mid-month prices each
//! request at the tier it was served under.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostics::{SourceIssue, SourceText};

/// `[metering.pricing]` in `gateway.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    /// ISO 4217 code of every price (e.g. `EUR`).
    pub currency: String,
    /// Principal attributes (claims mapped by `claims.attributes`) recorded on each usage event
    /// so cost can be charged back to them, e.g. `["cost_center", "department"]`.
    #[serde(default)]
    pub chargeback: Vec<String>,
    #[serde(default)]
    pub item: Vec<PriceItemConfig>,
}

/// One line of the price list.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceItemConfig {
    /// Names the item in reports (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Only requests counted by this custom meter (`[[metering.meter]]`).
    #[serde(default)]
    pub meter: Option<String>,
    /// Only requests of this Cedar action.
    #[serde(default)]
    pub action: Option<String>,
    /// Only requests of this route template.
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub unit: PriceUnit,
    /// Price of one unit, a decimal number written as a string (`"0.0004"`).
    pub unit_price: String,
    /// Unit prices of particular tiers, e.g. `{ enterprise = "0.0002" }`.
    #[serde(default)]
    pub tiers: BTreeMap<String, String>,
}

/// What an item's unit price is per.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PriceUnit {
    /// One forwarded request.
    #[default]
    Request,
    /// 10^9 bytes of request body sent upstream.
    RequestGb,
    /// 10^9 bytes of response body sent to the client.
    ResponseGb,
}

/// Bytes in the gigabyte prices are quoted per.
const GIGABYTE: u64 = 1_000_000_000;

impl PricingConfig {
    /// Checks `[metering.pricing]`: currency, names, decimal prices, meters and tiers that exist.
    pub fn validate(
        &self,
        source: &SourceText,
        meters: &BTreeSet<&str>,
        tiers: &BTreeSet<&str>,
        issues: &mut Vec<SourceIssue>,
    ) {
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            issues.push(source.issue(
                "metering.pricing.currency",
                format!(
                    "`{}` is not an ISO 4217 code (three capital letters, e.g. `EUR`)",
                    self.currency
                ),
            ));
        }
        for (i, attribute) in self.chargeback.iter().enumerate() {
            if !is_name(attribute) {
                issues.push(source.issue(
                    format!("metering.pricing.chargeback[{i}]"),
                    "an attribute name: letters, digits, `-`, `_` and `.` (1-64)",
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, item) in self.item.iter().enumerate() {
            let at = format!("metering.pricing.item[{i}]");
            if !is_name(&item.name) {
                issues.push(source.issue(
                    format!("{at}.name"),
                    "letters, digits, `-`, `_` and `.` (1-64)",
                ));
            } else if !names.insert(item.name.as_str()) {
                issues.push(source.issue(
                    format!("{at}.name"),
                    format!("duplicate item `{}`", item.name),
                ));
            }
            if let Some(meter) = &item.meter {
                if !meters.contains(meter.as_str()) {
                    issues.push(source.issue(
                        format!("{at}.meter"),
                        format!("no `[[metering.meter]]` named `{meter}`"),
                    ));
                }
            }
            if let Err(message) = parse_price(&item.unit_price) {
                issues.push(source.issue(format!("{at}.unit_price"), message));
            }
            for (tier, price) in &item.tiers {
                if !tiers.is_empty() && !tiers.contains(tier.as_str()) {
                    issues.push(source.issue(
                        format!("{at}.tiers.{tier}"),
                        format!(
                            "unknown tier `{tier}` (configured: {})",
                            tiers.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                if let Err(message) = parse_price(price) {
                    issues.push(source.issue(format!("{at}.tiers.{tier}"), message));
                }
            }
        }
    }
}

fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A unit price: a non-negative decimal written as a string.
fn parse_price(text: &str) -> Result<Decimal, String> {
    // Exact: a price with more digits than a decimal holds is refused, not rounded.
    let price = Decimal::from_str_exact(text.trim()).map_err(|_| {
        format!("`{text}` is not a decimal number (write it as a string: \"0.0004\")")
    })?;
    if price.is_sign_negative() {
        return Err(format!("`{text}`: a price cannot be negative"));
    }
    Ok(price)
}

/// Usage facts of one event, or of many events that share everything pricing reads: what a
/// price list charges for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally<'a> {
    pub tier: Option<&'a str>,
    pub action: Option<&'a str>,
    pub route: Option<&'a str>,
    pub meters: &'a [String],
    /// Requests forwarded upstream (completed or interrupted): the billable ones.
    pub forwarded: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// A validated price list.
#[derive(Debug, Clone)]
pub struct PriceList {
    pub currency: String,
    pub chargeback: Vec<String>,
    items: Vec<PriceItem>,
}

#[derive(Debug, Clone)]
struct PriceItem {
    name: String,
    meter: Option<String>,
    action: Option<String>,
    route: Option<String>,
    unit: PriceUnit,
    unit_price: Decimal,
    tiers: BTreeMap<String, Decimal>,
}

impl PriceList {
    /// The list of a configuration that passed [`PricingConfig::validate`]; a price that does
    /// not parse is reported as an error all the same.
    pub fn new(config: &PricingConfig) -> Result<Self, String> {
        let items = config
            .item
            .iter()
            .map(|item| {
                let unit_price =
                    parse_price(&item.unit_price).map_err(|e| format!("{}: {e}", item.name))?;
                let tiers = item
                    .tiers
                    .iter()
                    .map(|(tier, price)| {
                        parse_price(price)
                            .map(|p| (tier.clone(), p))
                            .map_err(|e| format!("{}.tiers.{tier}: {e}", item.name))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(PriceItem {
                    name: item.name.clone(),
                    meter: item.meter.clone(),
                    action: item.action.clone(),
                    route: item.route.clone(),
                    unit: item.unit,
                    unit_price,
                    tiers,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(PriceList {
            currency: config.currency.clone(),
            chargeback: config.chargeback.clone(),
            items,
        })
    }

    /// What `tally` costs in total.
    pub fn cost(&self, tally: &Tally<'_>) -> Decimal {
        self.charges(tally).map(|(_, cost)| cost).sum()
    }

    /// What `tally` costs, per item that charges for it.
    pub fn charges<'s>(
        &'s self,
        tally: &'s Tally<'_>,
    ) -> impl Iterator<Item = (&'s str, Decimal)> + 's {
        self.items
            .iter()
            .filter(|item| item.selects(tally))
            .map(|item| {
                let price = match tally.tier.and_then(|tier| item.tiers.get(tier)) {
                    Some(price) => *price,
                    None => item.unit_price,
                };
                let quantity = match item.unit {
                    PriceUnit::Request => Decimal::from(tally.forwarded),
                    PriceUnit::RequestGb => gigabytes(tally.request_bytes),
                    PriceUnit::ResponseGb => gigabytes(tally.response_bytes),
                };
                (item.name.as_str(), price * quantity)
            })
    }
}

impl PriceItem {
    fn selects(&self, tally: &Tally<'_>) -> bool {
        tally.forwarded > 0
            && self
                .meter
                .as_ref()
                .is_none_or(|m| tally.meters.iter().any(|t| t == m))
            && self
                .action
                .as_deref()
                .is_none_or(|a| tally.action == Some(a))
            && self.route.as_deref().is_none_or(|r| tally.route == Some(r))
    }
}

/// `bytes` in gigabytes, exactly.
fn gigabytes(bytes: u64) -> Decimal {
    Decimal::from(bytes) / Decimal::from(GIGABYTE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> PricingConfig {
        toml::from_str(text).unwrap()
    }

    fn issues_of(text: &str) -> Vec<String> {
        let source = SourceText::new("gateway.toml", format!("[metering.pricing]\n{text}"));
        let pricing = config(text);
        let mut issues = Vec::new();
        pricing.validate(
            &source,
            &["documents-export"].into(),
            &["free", "pro"].into(),
            &mut issues,
        );
        issues.into_iter().map(|i| i.field).collect()
    }

    const LIST: &str = r#"
        currency = "EUR"
        chargeback = ["cost_center"]
        [[item]]
        name = "requests"
        unit_price = "0.0004"
        tiers = { pro = "0.0002" }
        [[item]]
        name = "exports"
        meter = "documents-export"
        unit_price = "0.05"
        [[item]]
        name = "egress"
        unit = "response-gb"
        unit_price = "0.09"
    "#;

    #[test]
    fn every_selecting_item_charges_at_the_tier_price() {
        let list = PriceList::new(&config(LIST)).unwrap();
        let meters = vec!["documents-export".to_string()];
        let tally = Tally {
            tier: Some("pro"),
            meters: &meters,
            forwarded: 3,
            response_bytes: 500_000_000,
            ..Tally::default()
        };
        let charges: Vec<(String, String)> = list
            .charges(&tally)
            .map(|(n, c)| (n.to_string(), c.normalize().to_string()))
            .collect();
        assert_eq!(
            charges,
            [
                ("requests".into(), "0.0006".into()),
                ("exports".into(), "0.15".into()),
                ("egress".into(), "0.045".into()),
            ]
        );
        assert_eq!(list.cost(&tally).normalize().to_string(), "0.1956");
        // Another tier pays the item's own price; refused requests cost nothing.
        let free = Tally {
            tier: Some("free"),
            forwarded: 10_000,
            ..Tally::default()
        };
        assert_eq!(list.cost(&free).normalize().to_string(), "4");
        let refused = Tally {
            tier: Some("free"),
            forwarded: 0,
            ..Tally::default()
        };
        assert_eq!(list.cost(&refused), Decimal::ZERO);
    }

    #[test]
    fn a_million_tiny_prices_add_up_exactly() {
        let list = PriceList::new(&config(
            "currency = \"USD\"\n[[item]]\nname = \"r\"\nunit_price = \"0.0000001\"",
        ))
        .unwrap();
        let one = Tally {
            forwarded: 1,
            ..Tally::default()
        };
        let sum: Decimal = (0..1_000_000).map(|_| list.cost(&one)).sum();
        assert_eq!(sum.normalize().to_string(), "0.1");
    }

    #[test]
    fn bad_lists_name_the_field() {
        assert!(issues_of(LIST).is_empty());
        assert_eq!(
            issues_of("currency = \"euro\""),
            ["metering.pricing.currency"]
        );
        assert_eq!(
            issues_of(
                "currency = \"EUR\"\n[[item]]\nname = \"a\"\nunit_price = \"1,5\"\n\
                 [[item]]\nname = \"a\"\nmeter = \"nope\"\nunit_price = \"-1\"\n\
                 tiers = { gold = \"1\" }"
            ),
            [
                "metering.pricing.item[0].unit_price",
                "metering.pricing.item[1].name",
                "metering.pricing.item[1].meter",
                "metering.pricing.item[1].unit_price",
                "metering.pricing.item[1].tiers.gold",
            ]
        );
        // Floats are refused by the type: prices are strings.
        assert!(toml::from_str::<PricingConfig>(
            "currency = \"EUR\"\n[[item]]\nname = \"a\"\nunit_price = 0.1"
        )
        .is_err());
    }
}
