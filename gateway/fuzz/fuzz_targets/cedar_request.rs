//! The Cedar request builder (`authz::AuthzEngine::evaluate`/`decide`): principal, tenant and
//! resource entities and the context, from arbitrary principals (any id, roles, attributes,
//! credential kind), tenants, actions, resources and request facts, against the repository's
//! policy package.
//!
//! Input: structured (`arbitrary`): up to a few decisions, taken in order from empty caches.
//!
//! Properties:
//! - building and evaluating never panics; an unknown action is a denial with an error, never
//!   an allow;
//! - the decision cache is sound: every cached decision equals a fresh evaluation of the same
//!   input, whatever was decided before it (its key holds everything a decision reads);
//! - the principal is one entity whose id is exactly the principal's id (`"`, `::`, anything),
//!   and the resource one whose id is exactly the resource id;
//! - the package's guards hold whatever else the input says: a principal of another tenant is
//!   denied (tenant isolation), an API key is denied actions outside its scopes, embargoed
//!   countries are denied exports and downloads, free tenants are denied sharing.
#![no_main]

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use arbitrary::Arbitrary;
use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use gateway::authz::{DecisionInput, RequestFacts};
use gateway::identity::{AuthMethod, Principal};
use gateway::tenancy::TenantSpec;
use gateway_fuzz::deployment;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Pick {
    /// One the schema knows (index modulo their number).
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Credential {
    Jwt,
    ApiKey(Vec<String>),
    Anonymous,
}

#[derive(Debug, Arbitrary)]
enum Mfa {
    Absent,
    Bool(bool),
    Text(String),
    Amr(Vec<String>),
}

#[derive(Debug, Arbitrary)]
struct Decision {
    principal_id: String,
    principal_tenant: Option<Pick>,
    platform: bool,
    credential: Credential,
    roles: Vec<Pick>,
    mfa: Mfa,
    email: Option<String>,
    department: Option<String>,
    tenant: Pick,
    tier: Pick,
    features: Vec<String>,
    tier_features: Vec<String>,
    home_region: Option<String>,
    regime: Option<String>,
    action: Pick,
    resource_type: Pick,
    resource_id: String,
    owner: Option<String>,
    attributes: Vec<(String, String)>,
    hour: u8,
    weekday: u8,
    method: String,
    country: Option<Pick>,
    ip: Option<IpAddr>,
}

const TENANTS: &[&str] = &["acme", "globex", "initech"];
const TIERS: &[&str] = &["free", "pro", "enterprise"];
const ROLES: &[&str] = &[
    "viewer",
    "editor",
    "admin",
    "tenant-owner",
    "platform-operator",
    "billing-manager",
];
const COUNTRIES: &[&str] = &["DE", "US", "CU", "IR", "KP", "SY", "JP"];
const EMBARGOED: &[&str] = &[
    "documents:export",
    "documents:download",
    "reports:export",
    "audit:export",
];

fn pick<'a>(p: &'a Pick, known: &[&'a str]) -> &'a str {
    match p {
        Pick::Known(i) => known[usize::from(*i) % known.len()],
        Pick::Other(s) => s,
    }
}

fuzz_target!(|decisions: Vec<Decision>| {
    let d = deployment();
    let snapshot = d.snapshot();
    let Some(engine) = snapshot.authz.as_ref() else {
        panic!("the fixture has [authorization]");
    };
    // Sorted: the schema lists them in hash order, which differs between processes, so an
    // input would name another action in another run (a finding that "only reproduced after
    // other inputs" was this).
    let mut actions: Vec<String> = engine
        .schema()
        .actions()
        .map(|a| a.id().unescaped().to_string())
        .collect();
    actions.sort();
    let actions: Vec<&str> = actions.iter().map(String::as_str).collect();
    let mut types: Vec<String> = engine
        .schema()
        .entity_types()
        .map(|t| t.basename().to_string())
        .collect();
    types.sort();
    let types: Vec<&str> = types.iter().map(String::as_str).collect();
    engine.clear_caches();
    for decision in decisions.iter().take(4) {
        let mut principal = Principal::anonymous();
        principal.id = decision.principal_id.clone();
        principal.tenant = decision
            .principal_tenant
            .as_ref()
            .map(|t| Arc::from(pick(t, TENANTS)));
        principal.auth = match &decision.credential {
            Credential::Jwt => AuthMethod::Jwt {
                issuer: "https://issuer.fuzz.test".into(),
            },
            Credential::ApiKey(scopes) => {
                principal.scopes = scopes.clone();
                AuthMethod::ApiKey { key_id: "k".into() }
            }
            Credential::Anonymous => AuthMethod::Anonymous,
        };
        if principal.is_anonymous() {
            principal.id = gateway::identity::principal::ANONYMOUS_ID.to_string();
        }
        // As identity builds principals: only a verified token that names no tenant speaks for
        // the platform (an API key or a tenant's token never does).
        principal.platform = decision.platform
            && principal.tenant.is_none()
            && matches!(principal.auth, AuthMethod::Jwt { .. });
        principal.roles = decision
            .roles
            .iter()
            .map(|r| pick(r, ROLES).to_string())
            .collect();
        let mfa = match &decision.mfa {
            Mfa::Absent => None,
            Mfa::Bool(b) => Some(serde_json::Value::Bool(*b)),
            Mfa::Text(s) => Some(serde_json::Value::String(s.clone())),
            Mfa::Amr(items) => Some(serde_json::json!(items)),
        };
        for (name, value) in [
            ("mfa", mfa),
            (
                "email",
                decision.email.clone().map(serde_json::Value::String),
            ),
            (
                "department",
                decision.department.clone().map(serde_json::Value::String),
            ),
        ] {
            if let Some(v) = value {
                principal.attributes.insert(name.to_string(), v);
            }
        }
        let mut tenant = TenantSpec::new(pick(&decision.tenant, TENANTS));
        tenant.tier = pick(&decision.tier, TIERS).to_string();
        tenant.features = decision.features.clone();
        tenant.home_region = decision.home_region.clone();
        tenant.regime = decision.regime.clone();
        let action = pick(&decision.action, &actions);
        let resource_type = pick(&decision.resource_type, &types);
        let mut resource_attributes = decision.attributes.clone();
        if let Some(owner) = &decision.owner {
            resource_attributes.push(("owner".to_string(), owner.clone()));
        }
        let facts = RequestFacts {
            hour: i64::from(decision.hour % 24),
            weekday: i64::from(decision.weekday % 7 + 1),
            method: decision.method.clone(),
            country: decision
                .country
                .as_ref()
                .map(|c| pick(c, COUNTRIES).to_string()),
            ip: decision.ip,
        };
        let input = DecisionInput {
            principal: &principal,
            tenant: &tenant,
            tier_features: &decision.tier_features,
            action,
            resource_type,
            resource_id: &decision.resource_id,
            resource_attributes: &resource_attributes,
            resource_record: Default::default(),
            principal_record: Default::default(),
            declared_facts: &[],
            facts: &facts,
        };
        let cached = engine.decide(&input);
        let (fresh, entities) = engine.evaluate(&input);
        assert_eq!(
            *cached, fresh,
            "the decision cache answered for another input: {decision:?}"
        );
        let allowed = fresh.allowed;

        // A resource type the schema does not know is not refused here: the route table,
        // checked against the schema at load, is the only source of resource types.
        if !actions.contains(&action) {
            assert!(!allowed, "allowed an unknown action: {decision:?}");
        }
        if let Some(entities) = &entities {
            let uid = |type_name: &str, id: &str| {
                let t = EntityTypeName::from_str(type_name).unwrap_or_else(|e| panic!("{e}"));
                EntityUid::from_type_name_and_id(t, EntityId::new(id))
            };
            let principal_type = if principal.is_anonymous() {
                "Anonymous"
            } else {
                "User"
            };
            assert!(
                entities.get(&uid(principal_type, &principal.id)).is_some(),
                "no entity for principal {:?}",
                principal.id
            );
            if let Ok(t) = EntityTypeName::from_str(resource_type) {
                let resource =
                    EntityUid::from_type_name_and_id(t, EntityId::new(&decision.resource_id));
                assert!(
                    entities.get(&resource).is_some(),
                    "no entity for resource {:?}",
                    decision.resource_id
                );
            }
        }

        // The resource's tenant is the request's, unless the resource is the principal itself
        // (`User::"<own id>"`) or the principal's own tenant entity: those belong to the
        // principal's tenant, so acting on them is not acting across tenants.
        let resource_is_principals_own = (resource_type == "User"
            && decision.resource_id == principal.id)
            || (resource_type == "Tenant"
                && principal.tenant.as_deref() == Some(decision.resource_id.as_str()));
        let other_tenant = !principal.is_anonymous()
            && !resource_is_principals_own
            && principal.tenant.as_deref().is_some_and(|t| t != tenant.id);
        assert!(
            !(other_tenant && allowed),
            "cross-tenant allow: {decision:?}"
        );
        let out_of_scope = matches!(principal.auth, AuthMethod::ApiKey { .. })
            && !principal.scopes.is_empty()
            && !principal.scopes.iter().any(|s| s == action);
        assert!(
            !(out_of_scope && allowed),
            "API key outside its scopes: {decision:?}"
        );
        let embargoed = facts
            .country
            .as_deref()
            .is_some_and(|c| ["CU", "IR", "KP", "SY"].contains(&c))
            && EMBARGOED.contains(&action);
        assert!(!(embargoed && allowed), "embargo lifted: {decision:?}");
        let sharing = action == "projects:share" || action == "documents:share";
        assert!(
            !(sharing && tenant.tier == "free" && allowed),
            "free tier shared: {decision:?}"
        );
    }
});
