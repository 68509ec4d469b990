//! Spending budgets as a tenant's registry document states them (`[[tenant.budgets]]`); the
//! counting, thresholds and enforcement are metering's (`crate::metering::budgets`).

use std::collections::HashSet;

use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One budget in a tenant's registry document (`[[tenant.budgets]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Names the budget in webhooks and refusals (1-64 letters, digits, `-`, `_`).
    pub name: String,
    /// Monthly amount in the currency of `[metering.pricing]`, a decimal string (`"250.00"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// Or: forwarded requests per month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Only the requests of principals whose chargeback attribute `attribute` is `value`
    /// (e.g. `cost_center` = `cc-17`); the whole tenant when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Percentages announced with a `budget.threshold` webhook (1-1000).
    #[serde(default = "default_thresholds")]
    pub thresholds: Vec<u16>,
    /// Refuse requests (402 `budget-exhausted`) once the budget is spent.
    #[serde(default)]
    pub enforce: bool,
}

fn default_thresholds() -> Vec<u16> {
    vec![50, 80, 100]
}

/// Problems with a tenant's budgets, each with its field (e.g. `budgets[0].amount`).
pub fn validate(budgets: &[BudgetSpec]) -> Vec<(String, String)> {
    let mut issues = Vec::new();
    let mut names = HashSet::new();
    for (i, budget) in budgets.iter().enumerate() {
        let at = |field: &str| format!("budgets[{i}].{field}");
        let valid_name = (1..=64).contains(&budget.name.len())
            && budget
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            issues.push((at("name"), "1-64 letters, digits, `-` or `_`".into()));
        } else if !names.insert(budget.name.as_str()) {
            issues.push((at("name"), format!("duplicate budget `{}`", budget.name)));
        }
        match (&budget.amount, budget.requests) {
            (Some(amount), None) => match Decimal::from_str_exact(amount) {
                Ok(a) if a > Decimal::ZERO && a < Decimal::from(i64::MAX / 1_000_000_000) => {}
                _ => issues.push((
                    at("amount"),
                    format!("`{amount}`: a positive decimal number, written as a string"),
                )),
            },
            (None, Some(requests)) if requests > 0 => {}
            (None, Some(_)) => issues.push((at("requests"), "at least 1".into())),
            _ => issues.push((
                format!("budgets[{i}]"),
                "set exactly one of `amount` (currency) and `requests`".into(),
            )),
        }
        if budget.attribute.is_some() != budget.value.is_some() {
            issues.push((
                format!("budgets[{i}]"),
                "`attribute` and `value` go together".into(),
            ));
        }
        if budget.thresholds.is_empty() || budget.thresholds.iter().any(|t| !(1..=1000).contains(t))
        {
            issues.push((at("thresholds"), "percentages from 1 to 1000".into()));
        }
    }
    issues
}
