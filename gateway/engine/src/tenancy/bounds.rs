//! Bounds of the rates, bursts, quotas and tier names a tier, a rule or a tenant may set. They
//! are checked wherever such values enter (configuration, tenant registry, admin API), so the
//! limiter can rely on them; they live with the tenants because the registry checks them first.

/// Lowest rate any limit may have (requests per second): one request per 1,000 s.
pub const MIN_RATE: f64 = 0.001;
/// Highest rate any limit may have (requests per second).
pub const MAX_RATE: f64 = 1_000_000.0;
/// Largest burst of any limit.
pub const MAX_BURST: u32 = 1_000_000;
/// Largest day or month quota (counts stay exact in Redis's Lua numbers).
pub const MAX_QUOTA: u64 = 1_000_000_000_000;

/// A rate within [`MIN_RATE`, `MAX_RATE`] requests per second.
pub fn check_rate(rate: f64) -> Result<(), String> {
    if (MIN_RATE..=MAX_RATE).contains(&rate) {
        Ok(())
    } else {
        Err(format!(
            "`{rate:?}` is out of range: from {MIN_RATE} to {MAX_RATE:.0} requests per second"
        ))
    }
}

/// A burst within [1, `MAX_BURST`].
pub fn check_burst(burst: u32) -> Result<(), String> {
    if (1..=MAX_BURST).contains(&burst) {
        Ok(())
    } else {
        Err(format!("`{burst}` is out of range: from 1 to {MAX_BURST}"))
    }
}

/// A day or month quota within [1, `MAX_QUOTA`].
pub fn check_quota(quota: u64) -> Result<(), String> {
    if (1..=MAX_QUOTA).contains(&quota) {
        Ok(())
    } else {
        Err(format!("`{quota}` is out of range: from 1 to {MAX_QUOTA}"))
    }
}

/// A tier name: 1-64 ASCII letters, digits, `-` or `_`.
pub fn is_valid_tier_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
