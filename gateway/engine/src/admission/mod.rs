//! Admission: runs the pipeline's stages in order against the current [`Snapshot`] — the one
//! entry point every front door calls (the inline proxy, explain) — and returns what they
//! decided: an [`Admitted`] request with the headers to add, or a [`Refused`] one with its
//! [`Rejection`]. [`Recorder`](crate::records::Recorder) turns either into usage and audit
//! records.

pub mod trace;

use std::sync::Arc;

use crate::authz::RequestFacts;
use crate::identity::{AuthError, Authenticator, Principal};
use crate::pipeline::{
    authorize, identify, limit, placement, sanitize, tenant, Rejection, RequestHead,
    ResolvedTenant, Sanitized,
};
use crate::snapshot::Snapshot;
use crate::tenancy::TenantSpec;

pub use trace::{Explaining, StageOutcome, Trace};

/// Long-lived services the stages use besides the snapshot (caches, key stores).
pub struct Services {
    pub authenticator: Authenticator,
    /// Client country lookups, when `[geoip]` is configured.
    pub geoip: Option<std::sync::Arc<crate::geoip::GeoIp>>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Tiers, rate limits and quotas (state outlives policy reloads).
    pub limiter: Arc<crate::limits::Limiter>,
    /// Signed webhooks, when `[webhooks]` is configured.
    pub webhooks: Option<crate::webhooks::Webhooks>,
    /// Entity records from providers outside the policy package (PostgreSQL, HTTP), cached.
    pub entity_store: Arc<crate::authz::store::EntityStore>,
    /// Users as identity providers provision them (SCIM): deactivated ones are refused.
    pub directory: Arc<crate::identity::directory::Directory>,
    /// Browser login and session cookies, when `[sessions]` is configured.
    pub sessions: Option<Arc<crate::identity::sessions::Sessions>>,
    /// Spending budgets (enforced ones refuse requests), when `[metering]` is configured.
    pub budgets: Option<Arc<crate::metering::budgets::Budgets>>,
}

/// A request every stage let through, with what the stages established about it.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub sanitized: Sanitized,
    pub principal: Arc<Principal>,
    pub tenant: Option<ResolvedTenant>,
    /// `None` without `[authorization]`.
    pub authorized: Option<authorize::Authorized>,
    /// The client's country (GeoIP), when known.
    pub country: Option<String>,
    /// Where the request may be sent, in order.
    pub placement: placement::Placement,
    /// `RateLimit-Policy` / `RateLimit` for the response (stage 6).
    pub limit_headers: Vec<(&'static str, String)>,
    /// A renewed session cookie (`Set-Cookie` value) for the response.
    pub set_cookie: Option<String>,
    /// The price list the request's spending budgets are charged at: set only when its
    /// tenant has budgets (the snapshot's, as the request was admitted).
    pub budget_prices: Option<Arc<crate::metering::pricing::PriceList>>,
}

impl Admitted {
    /// The path later stages route on and the upstream receives (tenant prefix stripped).
    pub fn path(&self) -> &str {
        self.tenant
            .as_ref()
            .and_then(|t| t.stripped_path.as_deref())
            .unwrap_or(&self.sanitized.path)
    }

    /// `path?query` for the upstream.
    pub fn upstream_target(&self) -> String {
        match &self.sanitized.query {
            Some(q) => format!("{}?{q}", self.path()),
            None => self.path().to_string(),
        }
    }

    /// The tenant's definition (the built-in default tenant without `[tenancy]`).
    pub fn tenant_spec(&self) -> &TenantSpec {
        self.tenant
            .as_ref()
            .map(|t| &*t.tenant)
            .unwrap_or_else(|| default_tenant())
    }

    /// The upstream target differs from what the client sent.
    pub fn rewrites_target(&self) -> bool {
        self.sanitized.rewrite_target
            || self
                .tenant
                .as_ref()
                .is_some_and(|t| t.stripped_path.is_some())
    }
}

/// Runs the stages in order; the first rejection ends the request.
pub async fn admit(
    head: &RequestHead<'_>,
    snapshot: &Snapshot,
    services: &Services,
) -> Result<Admitted, Refused> {
    run_stages(head, snapshot, services, None).await
}

/// [`admit`] for `explain`: the same stages and decisions, with their reasons recorded in
/// `explaining.trace` (see [`trace`] for what explaining does not do).
pub async fn admit_explained(
    head: &RequestHead<'_>,
    snapshot: &Snapshot,
    services: &Services,
    explaining: &mut Explaining,
) -> Result<Admitted, Refused> {
    run_stages(head, snapshot, services, Some(explaining)).await
}

/// The most body bytes the proxy should read before admitting this request, when its route
/// decides on body facts (`read_body = true`); `None` for every other request (nothing is read
/// early). Cheap: the request is routed only while some route reads its body.
pub fn body_wanted(head: &RequestHead<'_>, snapshot: &Snapshot) -> Option<usize> {
    let engine = snapshot.authz.as_ref()?;
    if !engine.routes.any_reads_body() {
        return None;
    }
    let sanitized = sanitize::sanitize(head, &snapshot.sanitize).ok()?;
    let path = match &snapshot.tenancy {
        Some(policy) => policy.routed_path(&sanitized.path),
        None => &sanitized.path,
    };
    engine
        .routes
        .reads_body(&sanitized.method, path)
        .then_some(crate::authz::facts::BODY_FACTS_MAX_BYTES)
}

/// Whether the directory refuses `principal` in `tenant`: deactivated or deleted, or an API key
/// whose owner is.
fn lifecycle_refuses(
    directory: &crate::identity::directory::Directory,
    tenant: &crate::tenancy::TenantSpec,
    principal: &Principal,
) -> bool {
    if !directory.refuses_anyone() {
        return false;
    }
    if directory.is_refused(&tenant.id, &principal.id) {
        return true;
    }
    match &principal.auth {
        crate::identity::AuthMethod::ApiKey { key_id } => tenant
            .api_keys
            .iter()
            .find(|k| &k.id == key_id)
            .and_then(|k| k.owner.as_deref())
            .is_some_and(|owner| directory.is_refused(&tenant.id, owner)),
        _ => false,
    }
}

/// Adds to `principal`'s roles those its directory groups give (SCIM `/Groups`), so the
/// decision (and its cache key) sees them. Nothing to look up while no tenant has groups.
fn grant_group_roles(
    directory: &crate::identity::directory::Directory,
    tenant: &crate::tenancy::TenantSpec,
    principal: &mut Arc<Principal>,
) {
    let groups = directory.groups_of(&tenant.id, &principal.id);
    if groups.is_empty() {
        return;
    }
    let roles = match &tenant.scim {
        Some(scim) => scim.roles_of_groups(groups),
        None => groups,
    };
    Arc::make_mut(principal).grant_roles(roles);
}

/// Stage 2, with browser sessions: a request that carries neither a bearer token nor an API
/// key but a session cookie is its session's principal (the session's ID token verified as a
/// bearer token would be). A browser navigating without a valid session is sent to the login
/// page instead of getting a 401. Also returns a renewed session cookie for the response.
async fn identify_caller(
    head: &RequestHead<'_>,
    snapshot: &Snapshot,
    services: &Services,
) -> Result<(Arc<Principal>, Option<String>), Rejection> {
    use crate::identity::sessions::{SessionAuth, SessionContext, Sessions};
    let (Some(sessions), Some(identity)) = (&services.sessions, snapshot.identity.as_deref())
    else {
        return identify::identify(
            head,
            snapshot.identity.as_deref(),
            &snapshot.registry,
            snapshot.identity_generation,
            &services.authenticator,
        )
        .await
        .map(|p| (p, None));
    };
    let login_or = |error: AuthError, clear_session: bool| {
        if Sessions::wants_login(head.method, head.headers, &error) {
            Rejection::LoginRequired {
                location: Sessions::login_location(&String::from_utf8_lossy(head.target)),
                clear_session,
            }
        } else {
            Rejection::Unauthenticated(error)
        }
    };
    let other_credentials = head.headers.contains_key(http::header::AUTHORIZATION)
        || head.headers.contains_key(&identity.api_key_header);
    if !other_credentials && Sessions::has_session(head.headers) {
        let cx = SessionContext {
            identity,
            registry: &snapshot.registry,
            generation: snapshot.identity_generation,
            authenticator: &services.authenticator,
            directory: &services.directory,
        };
        // Boxed: the session's refresh (an HTTP exchange) is a large future that requests
        // without a session cookie should not carry.
        match Box::pin(sessions.authenticate(head.headers, &cx)).await {
            SessionAuth::Valid { principal, renewed } => return Ok((principal, renewed)),
            SessionAuth::Invalid(error) => return Err(login_or(error, true)),
            SessionAuth::Absent => {}
        }
    }
    identify::identify(
        head,
        Some(identity),
        &snapshot.registry,
        snapshot.identity_generation,
        &services.authenticator,
    )
    .await
    .map(|p| (p, None))
    .map_err(|rejection| match rejection {
        Rejection::Unauthenticated(error) => login_or(error, false),
        other => other,
    })
}

async fn run_stages(
    head: &RequestHead<'_>,
    snapshot: &Snapshot,
    services: &Services,
    explaining: Option<&mut Explaining>,
) -> Result<Admitted, Refused> {
    let outcome = run_stages_in_order(head, snapshot, services, explaining).await;
    match outcome {
        Err(refused) if services.sessions.is_some() && anonymous_refusal(&refused) => {
            Err(to_login(head, refused))
        }
        other => other,
    }
}

/// A refusal an anonymous caller got for lack of who it is: without a tenant, or denied by
/// policy (where anonymous callers are allowed at all).
fn anonymous_refusal(refused: &Refused) -> bool {
    let anonymous = refused
        .principal
        .as_deref()
        .is_none_or(|p| p == crate::identity::principal::ANONYMOUS_ID);
    anonymous
        && matches!(
            refused.rejection,
            Rejection::Forbidden(_)
                | Rejection::Tenant(crate::pipeline::tenant::TenantError::Required)
        )
}

/// A browser navigating anonymously is sent to the login page rather than refused.
fn to_login(head: &RequestHead<'_>, refused: Refused) -> Refused {
    use crate::identity::sessions::Sessions;
    if !Sessions::wants_login(head.method, head.headers, &AuthError::MissingCredentials) {
        return refused;
    }
    Refused {
        rejection: Rejection::LoginRequired {
            location: Sessions::login_location(&String::from_utf8_lossy(head.target)),
            clear_session: false,
        },
        ..refused
    }
}

async fn run_stages_in_order(
    head: &RequestHead<'_>,
    snapshot: &Snapshot,
    services: &Services,
    mut explaining: Option<&mut Explaining>,
) -> Result<Admitted, Refused> {
    let refused = |rejection: Rejection| Refused {
        rejection,
        principal: None,
        tenant: None,
        decision: None,
    };
    let sanitized = sanitize::sanitize(head, &snapshot.sanitize);
    trace::note(&mut explaining, "sanitize", &sanitized, |s| {
        format!("{} {}", s.method, s.path)
    });
    let sanitized = sanitized.map_err(refused)?;
    let substitute = explaining.as_ref().and_then(|x| x.principal.clone());
    let mut renewed_session = None;
    let mut principal = match substitute {
        Some(principal) => {
            trace::note::<_, Rejection>(&mut explaining, "identify", &Ok(()), |_| {
                format!("principal given: {}", principal.id)
            });
            principal
        }
        None => {
            let identified = identify_caller(head, snapshot, services).await;
            trace::note(&mut explaining, "identify", &identified, |(p, _)| {
                format!("{} ({:?})", p.id, p.auth)
            });
            let (principal, renewed) = identified.map_err(refused)?;
            renewed_session = renewed;
            principal
        }
    };
    if let Some(x) = explaining.as_mut() {
        x.principal = Some(principal.clone());
    }
    let tenant = match &snapshot.tenancy {
        Some(policy) => {
            let resolved = tenant::resolve_tenant(
                &tenant::TenantRequest {
                    host: head.host,
                    headers: head.headers,
                    path: &sanitized.path,
                },
                &principal,
                policy,
                &snapshot.registry,
            );
            trace::note(&mut explaining, "tenant", &resolved, |t| {
                t.tenant.id.to_string()
            });
            Some(resolved.map_err(|rejection| Refused {
                rejection,
                principal: Some(principal.id.clone()),
                tenant: None,
                decision: None,
            })?)
        }
        None => {
            skipped(&mut explaining, "tenant", "no [tenancy] configured");
            None
        }
    };
    if let Some(resolved) = &tenant {
        let deprovisioned = lifecycle_refuses(&services.directory, &resolved.tenant, &principal);
        let outcome = if deprovisioned {
            Err(Rejection::Unauthenticated(AuthError::PrincipalDeactivated))
        } else {
            Ok(())
        };
        trace::note(&mut explaining, "directory", &outcome, |_| {
            "the principal is not deactivated".to_string()
        });
        outcome.map_err(|rejection| Refused {
            rejection,
            principal: Some(principal.id.clone()),
            tenant: Some(resolved.tenant.id.clone()),
            decision: None,
        })?;
        grant_group_roles(&services.directory, &resolved.tenant, &mut principal);
    }
    let given_country = explaining.as_ref().and_then(|x| x.country.clone());
    let country = match (given_country, &services.geoip, head.client_ip) {
        (Some(country), _, _) => Some(country),
        (None, Some(geo), Some(ip)) => geo.country(ip),
        _ => None,
    };
    let mut admitted = Admitted {
        sanitized,
        principal,
        tenant,
        authorized: None,
        country,
        placement: placement::unrestricted(snapshot.pool_count),
        limit_headers: Vec::new(),
        set_cookie: renewed_session,
        budget_prices: None,
    };
    // From here on, refusals know who and which tenant.
    let refused = Refused::after;
    if let Some(engine) = &snapshot.authz {
        let tenant = admitted.tenant_spec();
        let limits = &services.limiter.table;
        // The method stage 1 settled on (an honoured override), as the upstream will see it.
        let method = &admitted.sanitized.method;
        let facts = RequestFacts::now(method.as_str(), admitted.country.clone(), head.client_ip);
        let decision = authorize::authorize(
            &authorize::AuthorizeRequest {
                method,
                path: admitted.path(),
                principal: &admitted.principal,
                tenant,
                tier_features: limits.tier_features(&tenant.tier),
                feature_gates: Some(limits),
                facts: &facts,
                headers: head.headers,
                query: admitted.sanitized.query.as_deref(),
                body: head.body,
            },
            engine,
            &services.entity_store,
            explaining.as_mut().map(|x| &mut x.trace.authorization),
        )
        .await;
        trace::note(&mut explaining, "authorize", &decision, |a| {
            match &a.decision {
                Some(d) => format!(
                    "{} on {}: allowed by {:?}",
                    d.action, d.resource, d.evaluation.policies
                ),
                None => "no route matches; unmatched routes are allowed".to_string(),
            }
        });
        admitted.authorized = Some(decision.map_err(|r| refused(r, &admitted))?);
    } else {
        skipped(
            &mut explaining,
            "authorize",
            "no [authorization] configured",
        );
    }
    if let Some(residency) = &snapshot.residency {
        let plan = placement::place(
            &placement::PlacementRequest {
                path: admitted.path(),
                tenant: admitted.tenant.as_ref().map(|t| &*t.tenant),
                client_country: admitted.country.as_deref(),
            },
            residency,
        );
        trace::note(&mut explaining, "residency", &plan, |p| {
            format!(
                "regions {:?} ({:?}) of regime {}",
                p.regions,
                p.reason,
                p.regime.as_deref().unwrap_or("-")
            )
        });
        admitted.placement = plan.map_err(|r| refused(r, &admitted))?;
    } else {
        skipped(&mut explaining, "residency", "no [residency] configured");
    }
    if let (Some(budgets), Some(tenant)) = (&services.budgets, &admitted.tenant) {
        if !tenant.tenant.budgets.is_empty() {
            let now_secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default();
            if explaining.is_none() {
                budgets
                    .admit(&tenant.tenant, &admitted.principal.attributes, now_secs)
                    .map_err(|r| refused(r, &admitted))?;
            }
            admitted.budget_prices = snapshot.prices.clone();
        }
    }
    // A tenant's own limits apply without any tier or rule configured.
    if services.limiter.decides_anything() || !admitted.tenant_spec().limits.is_empty() {
        let tenant = admitted.tenant_spec();
        let action = admitted
            .authorized
            .as_ref()
            .and_then(|a| a.decision.as_ref())
            .map(|d| d.action.as_str());
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let request = limit::LimitRequest {
            tenant,
            principal: &admitted.principal,
            caller: crate::limits::Caller::of(
                &admitted.principal,
                snapshot.identity.is_some(),
                head.client_ip,
            ),
            action,
            now_secs,
        };
        if let Some(x) = explaining.as_mut() {
            // Explaining must not spend the budget it describes.
            let plan = services.limiter.table.plan(
                request.tenant,
                request.principal,
                request.caller,
                request.action,
                request.now_secs,
            );
            x.trace
                .note("limit", StageOutcome::NotEvaluated, limit::describe(&plan));
            return Ok(admitted);
        }
        let within = limit::limit(&request, &services.limiter).await;
        let within = within.map_err(|r| refused(r, &admitted))?;
        if let Some(webhooks) = &services.webhooks {
            for c in &within.crossed {
                webhooks.emit(
                    Some(tenant),
                    crate::webhooks::WebhookEvent::new(
                        "quota.threshold",
                        serde_json::json!({
                            "tenant": tenant.id, "quota": c.quota, "percent": c.percent,
                            "used": c.used, "limit": c.limit,
                        }),
                    ),
                );
            }
        }
        admitted.limit_headers = within.headers;
    } else {
        skipped(&mut explaining, "limit", "no rate limits or quotas apply");
    }
    Ok(admitted)
}

fn skipped(explaining: &mut Option<&mut Explaining>, stage: &'static str, why: &str) {
    if let Some(x) = explaining {
        x.trace.note(stage, StageOutcome::Skipped, why.to_string());
    }
}

/// A refused request, with what the stages before the refusal established.
#[derive(Debug)]
pub struct Refused {
    pub rejection: Rejection,
    pub principal: Option<String>,
    pub tenant: Option<String>,
    /// The authorization decision, when the refusal came after it (e.g. residency).
    pub decision: Option<authorize::DecisionRecord>,
}

impl Refused {
    /// A refusal of a request the stages had established this much about.
    pub fn after(rejection: Rejection, admitted: &Admitted) -> Self {
        Refused {
            rejection,
            principal: Some(admitted.principal.id.clone()),
            tenant: admitted.tenant.as_ref().map(|t| t.tenant.id.clone()),
            decision: admitted
                .authorized
                .as_ref()
                .and_then(|a| a.decision.clone()),
        }
    }
}

/// The tenant of deployments without `[tenancy]`.
fn default_tenant() -> &'static TenantSpec {
    static DEFAULT: std::sync::OnceLock<TenantSpec> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| TenantSpec::new("default"))
}

#[cfg(test)]
mod tests {
    //! `admit` in process, no sockets: the fuzz fixture's deployment (repository policies and
    //! maps, three tenants, an HMAC issuer), one request head per case.

    use std::sync::OnceLock;

    use http::{HeaderMap, HeaderValue, Method};

    use super::*;
    use crate::test_support::Deployment;

    fn deployment() -> &'static Deployment {
        static DEPLOYMENT: OnceLock<Deployment> = OnceLock::new();
        DEPLOYMENT.get_or_init(Deployment::load)
    }

    /// Admits `method target` with `headers` (name, value) on a fresh single-thread runtime.
    #[allow(clippy::result_large_err)] // `admit`'s own result, passed through
    fn run(method: &str, target: &str, headers: &[(&str, String)]) -> Result<Admitted, Refused> {
        let d = deployment();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let head = RequestHead {
            method: &method,
            target: target.as_bytes(),
            host: map.get("host").and_then(|h| h.to_str().ok()),
            headers: &map,
            client_ip: None,
            body: None,
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(admit(&head, &d.snapshot, &d.services))
    }

    fn bearer(sub: &str, org: &str, roles: &[&str]) -> (&'static str, String) {
        (
            "authorization",
            format!("Bearer {}", deployment().token(sub, org, roles)),
        )
    }

    fn refused_with(result: Result<Admitted, Refused>) -> (u16, &'static str) {
        match result {
            Ok(a) => panic!("admitted: {:?}", a.path()),
            Err(r) => (r.rejection.status(), r.rejection.slug()),
        }
    }

    #[test]
    fn an_admin_of_the_tenant_is_admitted_with_everything_the_proxy_needs() {
        let admitted = run(
            "GET",
            "/t/acme/projects/42?x=1",
            &[bearer("ada", "acme", &["admin"])],
        )
        .unwrap();
        assert_eq!(admitted.path(), "/projects/42");
        assert_eq!(admitted.upstream_target(), "/projects/42?x=1");
        assert_eq!(admitted.tenant_spec().id, "acme");
        assert_eq!(admitted.principal.id, "ada");
        let decision = admitted
            .authorized
            .as_ref()
            .and_then(|a| a.decision.as_ref());
        assert_eq!(decision.map(|d| d.route.as_str()), Some("/projects/{id}"));
        // gdpr homed in eu-central: only EU pools, home first.
        assert_eq!(
            admitted.placement.regions.first().map(String::as_str),
            Some("eu-central")
        );
        assert!(admitted
            .limit_headers
            .iter()
            .any(|(n, _)| *n == "ratelimit"));
    }

    #[test]
    fn refusals_name_their_reason() {
        for (case, result, expected) in [
            (
                "anonymous caller deleting a path-named owner's document",
                run("DELETE", "/t/acme/users/anonymous/documents/1", &[]),
                (403, "forbidden"),
            ),
            (
                "token of acme on globex's host",
                run(
                    "GET",
                    "/projects/42",
                    &[
                        ("host", "globex.api.fuzz.test".to_string()),
                        bearer("ada", "acme", &["admin"]),
                    ],
                ),
                (403, "tenant-mismatch"),
            ),
            (
                "suspended tenant",
                run(
                    "GET",
                    "/t/initech/projects/42",
                    &[bearer("ada", "initech", &["admin"])],
                ),
                (403, "tenant-suspended"),
            ),
            (
                "unknown tenant",
                run("GET", "/t/nobody/projects/42", &[]),
                (404, "unknown-tenant"),
            ),
            (
                "encoded slash inside a segment",
                run(
                    "GET",
                    "/t/acme/projects/4%2f2",
                    &[bearer("ada", "acme", &["admin"])],
                ),
                (400, "bad-path"),
            ),
            (
                "forged signature",
                run(
                    "GET",
                    "/t/acme/projects/42",
                    &[(
                        "authorization",
                        format!("Bearer {}x", deployment().token("ada", "acme", &["admin"])),
                    )],
                ),
                (401, "unauthenticated"),
            ),
            (
                "free tier asking for a pro feature",
                run(
                    "POST",
                    "/t/globex/documents/7/export",
                    &[bearer("gus", "globex", &["admin"])],
                ),
                (403, "feature-not-in-tier"),
            ),
        ] {
            assert_eq!(refused_with(result), expected, "{case}");
        }
    }

    #[test]
    fn refusals_carry_who_and_which_tenant_as_far_as_they_were_established() {
        // Refused by Cedar: principal and tenant are known, and so is the decision.
        let refused = run("DELETE", "/t/acme/users/anonymous/documents/1", &[]).unwrap_err();
        assert_eq!(refused.principal.as_deref(), Some("anonymous"));
        assert_eq!(refused.tenant.as_deref(), Some("acme"));
        let Rejection::Forbidden(decision) = &refused.rejection else {
            panic!("{:?}", refused.rejection)
        };
        assert_eq!(
            (decision.action.as_str(), decision.principal.as_str()),
            ("documents:delete", "anonymous")
        );
        // Refused by stage 3: the tenant was never established, so the records name none.
        let refused = run(
            "GET",
            "/t/initech/projects/42",
            &[bearer("ada", "initech", &["admin"])],
        )
        .unwrap_err();
        assert_eq!(refused.principal.as_deref(), Some("ada"));
        assert_eq!(refused.tenant, None);
    }
}
