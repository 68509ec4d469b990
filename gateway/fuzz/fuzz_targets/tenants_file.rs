//! `tenants.toml` from arbitrary text (`tenancy::registry::load_source`, as `gateway check` and
//! `gateway run` load the file registry), on the fixture's tiers (`free`, `pro`).
//!
//! Input: the file's text.
//!
//! Properties:
//! - every refusal names, for each problem, a field (`tenant[i]....`) or a line in the file;
//! - every tenant of an accepted file is in the registry, valid on its own, reachable by its
//!   hosts and API keys, and survives the PostgreSQL registry's JSON form unchanged and valid;
//! - each tenant's limits work on the request path: its plan has a tenant-wide limit (never
//!   unlimited by omission) and the limiter decides it without panicking, with headers.
#![no_main]

use gateway::config::SourceText;
use gateway::identity::Principal;
use gateway::limits::Caller;
use gateway::tenancy::model::{validate_tenant, TenantSpec};
use gateway::tenancy::registry::load_source;
use gateway_fuzz::{assert_located, deployment, fixture_dir};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let d = deployment();
    let tiers = d.loaded.config.tenant_rules();
    let source = SourceText::new(fixture_dir().join("tenants.toml"), text);
    let registry = match load_source(&source, &tiers) {
        Ok(r) => r,
        Err(issues) => return assert_located(&issues, &[&source]),
    };
    let limiter = &d.services.limiter;
    for tenant in registry.tenants() {
        assert!(validate_tenant(tenant, &tiers).is_empty(), "{tenant:?}");
        assert!(registry.get(&tenant.id).is_some());
        for host in &tenant.hosts {
            assert_eq!(
                registry.tenant_for_host(host).map(|t| &**t),
                Some(tenant.id.as_str())
            );
        }
        for key in &tenant.api_keys {
            let mut hash = [0u8; 32];
            for (i, byte) in hash.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&key.sha256[2 * i..2 * i + 2], 16)
                    .unwrap_or_else(|e| panic!("accepted sha256 {:?}: {e}", key.sha256));
            }
            let entry = registry
                .api_key(&hash)
                .unwrap_or_else(|| panic!("key {} of {} not found", key.id, tenant.id));
            assert_eq!(&*entry.tenant, tenant.id.as_str());
        }
        let json = serde_json::to_value(&**tenant).unwrap_or_else(|e| panic!("{e}"));
        let back: TenantSpec = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("the JSON form {json} does not read back: {e}"));
        assert_eq!(&back, &**tenant, "{json}");
        assert!(validate_tenant(&back, &tiers).is_empty());

        let principal = Principal::anonymous();
        for caller in [Caller::Known, Caller::Anonymous { client: None }] {
            let is_known = matches!(caller, Caller::Known);
            let plan = limiter
                .table
                .plan(tenant, &principal, caller, None, 1_800_000_000);
            if is_known {
                let tenant_limit = plan
                    .limits
                    .iter()
                    .find(|l| &*l.name == "tenant")
                    .unwrap_or_else(|| panic!("{} has no tenant-wide limit: {plan:?}", tenant.id));
                assert!(tenant_limit.emission_ns() >= 1);
            }
            let verdict = d.block_on(limiter.decide(&plan));
            let _ = verdict.headers();
        }
    }
});
