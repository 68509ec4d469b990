//! The admin API's tenant documents: `PUT /admin/tenants/{id}` (`admin::TenantWriter::put`) on
//! the fixture's snapshot, with a writer that refuses to write (no PostgreSQL here: a valid
//! document is answered `409`, after everything the API checks).
//!
//! Input: NUL-separated parts: the `{id}` of the path, then the JSON body.
//!
//! Properties:
//! - the answer is `400` (with an RFC 9457 problem) or, for a valid document, `409`; never a
//!   panic or a `500`;
//! - a document refused as invalid names every bad field in `invalid-params`, each a field of
//!   the document (or its id or tier);
//! - a valid document is what every replica will read: its JSON form (as stored in PostgreSQL)
//!   reads back equal and valid; the registry change checks (conflicts, residency, tenant
//!   policies) decide it without panicking, and when they accept it the registry takes it;
//!   its limits plan and decide on the request path.
#![no_main]

use gateway::admin::{Precondition, TenantWriter};
use gateway::identity::Principal;
use gateway::limits::Caller;
use gateway::tenancy::model::validate_tenant;
use gateway::tenancy::TenantSpec;
use gateway_fuzz::{deployment, parts};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let parts = parts(data);
    let [id, body] = parts.as_slice() else {
        return;
    };
    let Ok(id) = std::str::from_utf8(id) else {
        return;
    };
    let d = deployment();
    let response = d.block_on(TenantWriter::None.put(
        &d.store,
        id,
        body,
        &Precondition::Unconditional,
    ));
    let status = response.status().as_u16();
    let bytes = d
        .block_on(response.into_body().collect())
        .unwrap_or_else(|e| panic!("{status}: the body failed to stream ({e})"))
        .to_bytes();
    let problem: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status}: the body is not JSON ({e})"));
    assert_eq!(problem["status"], status, "{problem}");
    assert!(
        problem["type"].is_string() && problem["detail"].is_string(),
        "{problem}"
    );
    let spec: Option<TenantSpec> = serde_json::from_slice(body).ok();
    match status {
        400 => {
            if spec.is_none_or(|s| s.id != id) {
                return;
            }
            let document: Value = serde_json::from_slice(body).unwrap_or_default();
            let params = problem["invalid-params"].as_array().unwrap_or_else(|| {
                panic!("a valid tenant document refused without invalid-params: {problem}")
            });
            assert!(!params.is_empty(), "{problem}");
            for param in params {
                let name = param["name"].as_str().unwrap_or_default();
                let top = name.split(['.', '[']).next().unwrap_or_default();
                assert!(
                    top == "id" || top == "tier" || document.get(top).is_some(),
                    "invalid-params names {name:?}, not in the document: {problem}"
                );
                assert!(
                    param["reason"].as_str().is_some_and(|r| !r.is_empty()),
                    "{problem}"
                );
            }
        }
        409 => {
            let spec = spec.unwrap_or_else(|| panic!("409 for a body that is no tenant"));
            assert_eq!(spec.id, id);
            let snapshot = d.snapshot();
            let tiers = snapshot.registry.tenant_rules().clone();
            assert!(validate_tenant(&spec, &tiers).is_empty(), "{spec:?}");
            let json = serde_json::to_value(&spec).unwrap_or_else(|e| panic!("{e}"));
            let back: TenantSpec = serde_json::from_value(json.clone())
                .unwrap_or_else(|e| panic!("stored as {json}, does not read back: {e}"));
            assert_eq!(back, spec, "{json}");
            assert!(validate_tenant(&back, &tiers).is_empty());
            if d.store
                .check_tenant_changes(vec![(id.to_string(), Some(spec.clone()))])
                .is_ok()
            {
                snapshot
                    .registry
                    .with_upsert(spec.clone())
                    .unwrap_or_else(|e| panic!("checked, then refused by the registry: {e}"));
            }
            let limiter = &d.services.limiter;
            for caller in [Caller::Known, Caller::Anonymous { client: None }] {
                let plan = limiter.table.plan(
                    &spec,
                    &Principal::anonymous(),
                    caller,
                    Some("projects:read"),
                    1_800_000_000,
                );
                let verdict = d.block_on(limiter.decide(&plan));
                let _ = verdict.headers();
            }
        }
        other => panic!("PUT /admin/tenants/{id:?} answered {other}: {problem}"),
    }
});
