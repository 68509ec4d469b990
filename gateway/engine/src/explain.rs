//! `gateway explain` (and the admin API's explain endpoint): runs a request through `admit`
//! without forwarding it and shows every step: principal, tenant, route, decision, the
//! determining policies with their files, and the entities Cedar saw.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;

use crate::admission::trace::StageNote;
use crate::admission::{admit_explained, Explaining, Services, StageOutcome, Trace};
use crate::authz::{Evaluation, RequestFacts};
use crate::identity::Principal;
use crate::pipeline::RequestHead;
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
    /// Use this client country instead of a GeoIP lookup.
    pub country: Option<String>,
    /// The address the request comes from (the connecting peer). Its `X-Forwarded-For` is
    /// walked from there through the trusted proxies, as the proxy does.
    pub peer: Option<std::net::IpAddr>,
    /// The request body (for routes whose decision reads body facts).
    pub body: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    /// `allow`, `deny` (stage 4 refused it), or `refused` (another stage did).
    pub outcome: String,
    /// The HTTP status the gateway answers such a request with before forwarding (200 when it
    /// would forward it; the upstream's own answer is not part of an explanation).
    pub status: u16,
    /// The problem type's short name of a refusal (e.g. `feature-not-in-tier`).
    pub problem: Option<&'static str>,
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
    /// Every stage's result, in order.
    pub stages: Vec<StageNote>,
}

/// Explains `request` by running it through [`crate::admission::admit_explained`]: the same
/// stages and decisions as a live request, nothing forwarded and no budget spent.
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
        client_ip: request
            .peer
            .and_then(|peer| crate::geoip::client_ip(peer, &headers, &services.trusted_proxies)),
        body: request.body.as_deref().map(str::as_bytes),
    };
    let mut explaining = Explaining {
        principal: request.principal.clone().map(Arc::new),
        country: request.country.clone(),
        trace: Default::default(),
    };
    let result = admit_explained(&head, snapshot, services, &mut explaining).await;
    let Trace {
        stages,
        authorization,
    } = explaining.trace;
    let mut out = Explanation {
        outcome: "allow".to_string(),
        status: 200,
        problem: None,
        refused_by: None,
        reason: None,
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
        policy_version: snapshot.authz.as_ref().map(|e| e.version.clone()),
        stages,
    };
    match result {
        Ok(admitted) => {
            out.path = Some(admitted.path().to_string());
            out.tenant = admitted.tenant.as_ref().map(|t| t.tenant.id.to_string());
            out.principal = Some((*admitted.principal).clone());
        }
        Err(refused) => {
            let stage = out
                .stages
                .iter()
                .rev()
                .find(|s| s.outcome == StageOutcome::Refused)
                .map(|s| s.stage.to_string());
            out.outcome = if stage.as_deref() == Some("authorize") {
                "deny"
            } else {
                "refused"
            }
            .to_string();
            out.status = refused.rejection.status();
            out.problem = Some(refused.rejection.slug());
            out.reason = Some(refused.rejection.to_string());
            out.refused_by = stage;
            out.tenant = refused.tenant;
            out.principal = explaining
                .principal
                .as_deref()
                .filter(|_| refused.principal.is_some())
                .cloned();
        }
    }
    if let Some(a) = authorization {
        if let Some(engine) = &snapshot.authz {
            let origins = engine.policy_origins();
            out.policy_origins = a
                .evaluation
                .policies
                .iter()
                .chain(a.evaluation.shadow.iter().flat_map(|s| s.policies.iter()))
                .filter_map(|id| {
                    let o = origins.get(id)?;
                    let line = o.line.map(|l| format!(":{l}")).unwrap_or_default();
                    Some((id.clone(), format!("{}{line}", o.file.display())))
                })
                .collect();
        }
        out.route = Some(a.route);
        out.action = Some(a.action);
        out.resource = Some(a.resource);
        out.entities = a.entities;
        out.context = Some(a.context);
        out.evaluation = Some(a.evaluation);
    }
    out
}
