//! Stage 4: is this principal allowed to do this to this resource? The route table turns the
//! request into a Cedar action and resource; the engine decides (see [`crate::authz`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde::Serialize;

use super::Rejection;
use crate::authz::routes::UnmatchedRoute;
use crate::authz::store::{EntityStore, Lookup, StoredEntity};
use crate::authz::{AuthzEngine, DecisionInput, Evaluation, RequestFacts, ResourceRecord};
use crate::identity::Principal;
use crate::request_metrics::StaticCounters;
use crate::tenancy::TenantSpec;

/// What Cedar saw and decided for the request.
#[derive(Debug, Clone, Serialize)]
pub struct AuthorizationTrace {
    pub route: String,
    pub action: String,
    /// `Type::"id"`.
    pub resource: String,
    pub evaluation: Evaluation,
    /// The entities Cedar evaluated, in Cedar's JSON form.
    pub entities: Option<serde_json::Value>,
    pub context: RequestFacts,
}

/// Output of stage 4 for a request that was allowed.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// `None` for an unmatched route let through by `default = "allow"`.
    pub decision: Option<DecisionRecord>,
}

/// One authorization decision, for the decision log and the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    pub principal: String,
    pub tenant: String,
    pub route: String,
    pub action: String,
    /// `Type::"id"`.
    pub resource: String,
    pub evaluation: Arc<Evaluation>,
    pub elapsed: Duration,
}

static DECISIONS: StaticCounters<1> =
    StaticCounters::new(crate::telemetry::AUTHZ_DECISIONS_TOTAL, ["decision"]);
static POLICY_ERRORS: StaticCounters<0> =
    StaticCounters::new(crate::telemetry::AUTHZ_POLICY_ERRORS_TOTAL, []);
static SHADOW_DIFFS: StaticCounters<1> =
    StaticCounters::new(crate::telemetry::AUTHZ_SHADOW_DIFFS_TOTAL, ["enforced"]);
static DURATION: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();

impl DecisionRecord {
    /// The decision log line (target `decision`) and metrics.
    pub fn log(&self) {
        let e = &self.evaluation;
        let decision = if e.allowed { "allow" } else { "deny" };
        DECISIONS.increment([decision], 1);
        DURATION
            .get_or_init(|| metrics::histogram!(crate::telemetry::AUTHZ_DURATION_SECONDS))
            .record(self.elapsed.as_secs_f64());
        if !e.errors.is_empty() {
            POLICY_ERRORS.increment([], e.errors.len() as u64);
        }
        let shadow = e
            .shadow
            .as_ref()
            .map(|s| if s.allowed { "allow" } else { "deny" })
            .unwrap_or("");
        if e.shadow_differs() {
            SHADOW_DIFFS.increment([decision], 1);
        }
        tracing::info!(
            target: "decision",
            decision,
            principal = %self.principal,
            tenant = %self.tenant,
            action = %self.action,
            resource = %self.resource,
            route = %self.route,
            policies = ?e.policies,
            errors = ?e.errors,
            shadow,
            shadow_differs = e.shadow_differs(),
            shadow_policies = ?e.shadow.as_ref().map(|s| &s.policies),
            latency_us = self.elapsed.as_micros() as u64,
        );
    }
}

/// What stage 4 reads.
pub struct AuthorizeRequest<'a> {
    pub method: &'a Method,
    /// The routed path (normalised, tenant prefix removed).
    pub path: &'a str,
    pub principal: &'a Principal,
    pub tenant: &'a TenantSpec,
    pub tier_features: &'a [String],
    /// Actions only some tiers include (checked before policies, for a clear 403).
    pub feature_gates: Option<&'a crate::limits::LimitTable>,
    pub facts: &'a RequestFacts,
    /// For the facts routes.toml `[context]` declares.
    pub headers: &'a http::HeaderMap,
    pub query: Option<&'a str>,
    /// The request body, when the proxy read it for body facts.
    pub body: Option<&'a [u8]>,
}

/// A record as looked up: from the package's `entities.json`, or fetched from a provider.
enum Looked<'e> {
    File(ResourceRecord<'e>),
    Fetched(Arc<StoredEntity>),
    Missing,
}

impl Looked<'_> {
    fn record(&self) -> ResourceRecord<'_> {
        match self {
            Looked::File(record) => *record,
            Looked::Fetched(record) => ResourceRecord::Found(record),
            Looked::Missing => ResourceRecord::Missing,
        }
    }
}

/// What the entity file, else the store's providers, know of `type_name::"id"`. A provider
/// that cannot answer refuses the request (`503 entity-store-unavailable`) unless configured
/// to treat that as absence.
async fn record_of<'e>(
    engine: &'e AuthzEngine,
    store: &EntityStore,
    type_name: &str,
    id: &str,
) -> Result<Looked<'e>, Rejection> {
    match engine.file_record(type_name, id) {
        found @ ResourceRecord::Found(_) => Ok(Looked::File(found)),
        from_file if !store.covers(type_name) => Ok(Looked::File(from_file)),
        // Boxed: a provider's fetch is a large future, which every request's would carry.
        from_file => {
            match Box::pin(store.lookup(type_name, id, engine.schema(), &engine.version)).await {
                Ok(Lookup::Found(record)) => Ok(Looked::Fetched(record)),
                Ok(Lookup::Missing) => Ok(Looked::Missing),
                Ok(Lookup::NotCovered) => Ok(Looked::File(from_file)),
                Err(e) => {
                    tracing::warn!(error = %e, entity_type = %type_name, "entity store unavailable: request refused");
                    Err(Rejection::EntityStoreUnavailable {
                        reason: e.to_string(),
                    })
                }
            }
        }
    }
}

/// Runs stage 4. The resource's record comes from the package's `entities.json`, else from the
/// configured entity store providers (awaited only for the types they serve).
///
/// With `trace` (explain), the evaluation is recorded there with the entities Cedar saw, and
/// neither logged nor counted: an explanation is not a decision.
pub async fn authorize(
    request: &AuthorizeRequest<'_>,
    engine: &AuthzEngine,
    store: &EntityStore,
    trace: Option<&mut Option<AuthorizationTrace>>,
) -> Result<Authorized, Rejection> {
    let started = Instant::now();
    let trace_is_some = trace.is_some();
    let Some(matched) = engine.routes.find(request.method, request.path) else {
        return match engine.routes.unmatched {
            UnmatchedRoute::Deny => Err(Rejection::UnknownRoute),
            UnmatchedRoute::Allow => Ok(Authorized { decision: None }),
        };
    };
    let route = matched.route;
    if let Some(gates) = request.feature_gates {
        gates
            .check_gate(request.tenant, &route.action)
            .map_err(Rejection::FeatureNotInTier)?;
    }
    let resource_attributes: Vec<(String, String)> = route
        .attributes
        .iter()
        .filter_map(|(attr, param)| matched.param(param).map(|v| (attr.clone(), v.into_owned())))
        .collect();
    let resource_id = matched.resource_id();
    // A collection route (no id) names no object: nothing to look up.
    let resource = match route.id_param {
        Some(_) => record_of(engine, store, &route.resource_type, &resource_id).await?,
        None => Looked::File(ResourceRecord::NotCovered),
    };
    // The principal's own record, where the package or a provider keeps users.
    let principal = if request.principal.is_anonymous() {
        Looked::File(ResourceRecord::NotCovered)
    } else {
        record_of(engine, store, engine.user_type(), &request.principal.id).await?
    };
    let declared_facts = if engine.context_facts().is_empty() {
        Vec::new()
    } else {
        // Body facts only where the route asks for them, and only from a JSON body.
        let body = match request.body {
            Some(bytes) if route.read_body => {
                serde_json::from_slice::<serde_json::Value>(bytes).ok()
            }
            _ => None,
        };
        engine.context_facts().gather(
            request.headers,
            request.query,
            |name| matched.param(name),
            body.as_ref(),
        )?
    };
    let input = DecisionInput {
        principal: request.principal,
        tenant: request.tenant,
        tier_features: request.tier_features,
        action: &route.action,
        resource_type: &route.resource_type,
        resource_id: &resource_id,
        resource_attributes: &resource_attributes,
        resource_record: resource.record(),
        principal_record: principal.record(),
        declared_facts: &declared_facts,
        facts: request.facts,
    };
    let resource = format!("{}::{:?}", route.resource_type, resource_id);
    let evaluation = match trace {
        Some(slot) => {
            // Uncached, to show the entities; the decision cache never changes an outcome.
            let (evaluation, entities) = engine.evaluate(&input);
            let trace = slot.insert(AuthorizationTrace {
                route: route.template.clone(),
                action: route.action.clone(),
                resource: resource.clone(),
                evaluation,
                entities: entities.and_then(|e| e.to_json_value().ok()),
                context: request.facts.clone(),
            });
            Arc::new(trace.evaluation.clone())
        }
        None => engine.decide(&input),
    };
    let explaining = trace_is_some;
    let record = DecisionRecord {
        principal: request.principal.id.clone(),
        tenant: request.tenant.id.clone(),
        route: route.template.clone(),
        action: route.action.clone(),
        resource,
        evaluation,
        elapsed: started.elapsed(),
    };
    if !explaining {
        record.log();
    }
    if record.evaluation.allowed {
        Ok(Authorized {
            decision: Some(record),
        })
    } else {
        Err(Rejection::Forbidden(Box::new(record)))
    }
}
