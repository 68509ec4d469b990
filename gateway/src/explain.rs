//! `gateway explain` (and the admin API's explain endpoint): runs a request through the stages
//! without forwarding it and shows every step: principal, tenant, route, decision, the
//! determining policies with their files, and the entities Cedar saw.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;

use crate::authz::{DecisionInput, Evaluation, RequestFacts};
use crate::identity::Principal;
use crate::pipeline::{identify, sanitize, tenant, RequestHead, Services};
use crate::snapshot::Snapshot;

/// A request to explain.
#[derive(Debug, Clone, Default)]
pub struct ExplainRequest {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Use this principal instead of identifying the request's credentials.
    pub principal: Option<Principal>,
    pub country: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    /// `allow`, `deny`, or the stage that refused the request.
    pub outcome: String,
    pub refused_by: Option<String>,
    pub reason: Option<String>,
    pub path: Option<String>,
    pub principal: Option<Principal>,
    pub tenant: Option<String>,
    pub route: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub evaluation: Option<Evaluation>,
    /// Determining policies with `file:line`.
    pub policy_origins: Vec<(String, String)>,
    pub entities: Option<serde_json::Value>,
    pub context: Option<RequestFacts>,
    pub policy_version: Option<String>,
}

impl Explanation {
    fn refused(stage: &str, reason: String) -> Self {
        Explanation {
            outcome: "refused".to_string(),
            refused_by: Some(stage.to_string()),
            reason: Some(reason),
            path: None,
            principal: None,
            tenant: None,
            route: None,
            action: None,
            resource: None,
            evaluation: None,
            policy_origins: Vec::new(),
            entities: None,
            context: None,
            policy_version: None,
        }
    }
}

pub async fn explain(
    snapshot: &Snapshot,
    services: &Services,
    request: &ExplainRequest,
) -> Explanation {
    let mut headers = HeaderMap::new();
    for (k, v) in &request.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    let method = Method::from_bytes(request.method.as_bytes()).unwrap_or(Method::GET);
    let head = RequestHead {
        method: &method,
        target: request.path.as_bytes(),
        host: request.host.as_deref(),
        headers: &headers,
        client_ip: None,
    };
    let sanitized = match sanitize::sanitize(&head, &snapshot.sanitize) {
        Ok(s) => s,
        Err(e) => return Explanation::refused("sanitize", e.to_string()),
    };
    let method = sanitized.method.clone();
    let principal = match &request.principal {
        Some(p) => Arc::new(p.clone()),
        None => match identify::identify(
            &head,
            snapshot.identity.as_deref(),
            &snapshot.registry,
            snapshot.identity_generation,
            &services.authenticator,
        )
        .await
        {
            Ok(p) => p,
            Err(e) => return Explanation::refused("identify", e.to_string()),
        },
    };
    let resolved = match &snapshot.tenancy {
        Some(policy) => match tenant::resolve_tenant(
            &tenant::TenantRequest {
                host: head.host,
                headers: &headers,
                path: &sanitized.path,
            },
            &principal,
            policy,
            &snapshot.registry,
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut x = Explanation::refused("tenant", e.to_string());
                x.principal = Some((*principal).clone());
                return x;
            }
        },
        None => None,
    };
    let path = resolved
        .as_ref()
        .and_then(|t| t.stripped_path.clone())
        .unwrap_or(sanitized.path.clone());
    let mut out = Explanation::refused("", String::new());
    out.refused_by = None;
    out.reason = None;
    out.path = Some(path.clone());
    out.principal = Some((*principal).clone());
    out.tenant = resolved.as_ref().map(|t| t.tenant.id.clone());
    let Some(engine) = &snapshot.authz else {
        out.outcome = "allow".to_string();
        out.reason = Some("no [authorization] configured".to_string());
        return out;
    };
    out.policy_version = Some(engine.version.clone());
    let Some(matched) = engine.routes.find(&method, &path) else {
        out.outcome = format!("{:?}", engine.routes.unmatched).to_lowercase();
        out.reason = Some("no route matches".to_string());
        return out;
    };
    let default_tenant = crate::tenancy::TenantSpec::new("default");
    let tenant_spec = resolved
        .as_ref()
        .map(|t| &*t.tenant)
        .unwrap_or(&default_tenant);
    let facts = RequestFacts::now(method.as_str(), request.country.clone(), None);
    let attributes: Vec<(String, String)> = matched
        .route
        .attributes
        .iter()
        .filter_map(|(a, p)| matched.param(p).map(|v| (a.clone(), v.to_string())))
        .collect();
    let (evaluation, entities) = engine.evaluate(&DecisionInput {
        principal: &principal,
        tenant: tenant_spec,
        tier_features: services.limiter.table.tier_features(&tenant_spec.tier),
        action: &matched.route.action,
        resource_type: &matched.route.resource_type,
        resource_id: matched.resource_id(),
        resource_attributes: &attributes,
        facts: &facts,
    });
    out.outcome = if evaluation.allowed { "allow" } else { "deny" }.to_string();
    out.route = Some(matched.route.template.clone());
    out.action = Some(matched.route.action.clone());
    out.resource = Some(format!(
        "{}::{:?}",
        matched.route.resource_type,
        matched.resource_id()
    ));
    let origins = engine.policy_origins();
    out.policy_origins = evaluation
        .policies
        .iter()
        .chain(evaluation.shadow.iter().flat_map(|s| s.policies.iter()))
        .filter_map(|id| {
            origins.get(id).map(|o| {
                (
                    id.clone(),
                    format!(
                        "{}{}",
                        o.file.display(),
                        o.line.map(|l| format!(":{l}")).unwrap_or_default()
                    ),
                )
            })
        })
        .collect();
    out.entities = entities.and_then(|e| e.to_json_value().ok());
    out.context = Some(facts);
    out.evaluation = Some(evaluation);
    out
}
