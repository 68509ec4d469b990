//! The request path as a pipeline of stages (see DESIGN.md). Each stage is a function from a
//! typed input (plus the current [`Snapshot`]) to a typed output or a [`Rejection`]; none of
//! them knows about Pingora, so each is testable on its own.
//!
//! Stages: 1 sanitize, 2 identify, 3 tenant, 4 authorize (with tier feature gates),
//! 5 residency route, 6 rate limit and quota. [`forward`] builds what the upstream receives.

pub mod authorize;
pub mod correlation;
pub mod forward;
pub mod identify;
pub mod limit;
pub mod rejection;
pub mod route;
pub mod sanitize;
pub mod tenant;

use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::authz::RequestFacts;
use crate::identity::{Authenticator, Principal};
use crate::snapshot::Snapshot;
use crate::tenancy::TenantSpec;

pub use correlation::{correlate, Correlation, TraceContext};
pub use rejection::{Problem, Rejection};
pub use sanitize::Sanitized;
pub use tenant::ResolvedTenant;

/// The parts of an inbound request the stages read.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The raw request target exactly as received (path and query).
    pub target: &'a [u8],
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The client's address (after trusted proxy hops).
    pub client_ip: Option<std::net::IpAddr>,
}

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
    pub route: route::RoutePlan,
    /// `RateLimit-Policy` / `RateLimit` for the response (stage 6).
    pub limit_headers: Vec<(&'static str, String)>,
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
    let refused = |rejection: Rejection| Refused {
        rejection,
        principal: None,
        tenant: None,
        decision: None,
    };
    let sanitized = sanitize::sanitize(head, &snapshot.sanitize).map_err(refused)?;
    let principal = identify::identify(
        head,
        snapshot.identity.as_deref(),
        &snapshot.registry,
        snapshot.identity_generation,
        &services.authenticator,
    )
    .await
    .map_err(refused)?;
    let tenant = match &snapshot.tenancy {
        Some(policy) => Some(
            tenant::resolve_tenant(
                &tenant::TenantRequest {
                    host: head.host,
                    headers: head.headers,
                    path: &sanitized.path,
                },
                &principal,
                policy,
                &snapshot.registry,
            )
            .map_err(|rejection| Refused {
                rejection,
                principal: Some(principal.id.clone()),
                tenant: None,
                decision: None,
            })?,
        ),
        None => None,
    };
    let country = match (&services.geoip, head.client_ip) {
        (Some(geo), Some(ip)) => geo.country(ip),
        _ => None,
    };
    let mut admitted = Admitted {
        sanitized,
        principal,
        tenant,
        authorized: None,
        country,
        route: route::unrestricted(snapshot.pool_count),
        limit_headers: Vec::new(),
    };
    // From here on, refusals know who and which tenant.
    let refused = |rejection: Rejection, admitted: &Admitted| Refused {
        rejection,
        principal: Some(admitted.principal.id.clone()),
        tenant: admitted.tenant.as_ref().map(|t| t.tenant.id.clone()),
        decision: admitted
            .authorized
            .as_ref()
            .and_then(|a| a.decision.clone()),
    };
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
            },
            engine,
        );
        admitted.authorized = Some(decision.map_err(|r| refused(r, &admitted))?);
    }
    if let Some(residency) = &snapshot.residency {
        let plan = route::plan_route(
            &route::RouteRequest {
                path: admitted.path(),
                tenant: admitted.tenant.as_ref().map(|t| &*t.tenant),
                client_country: admitted.country.as_deref(),
            },
            residency,
        );
        admitted.route = plan.map_err(|r| refused(r, &admitted))?;
    }
    if services.limiter.decides_anything() {
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
        let within = limit::limit(
            &limit::LimitRequest {
                tenant,
                principal: &admitted.principal,
                caller: crate::limits::Caller::of(
                    &admitted.principal,
                    snapshot.identity.is_some(),
                    head.client_ip,
                ),
                action,
                now_secs,
            },
            &services.limiter,
        )
        .await;
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
    }
    Ok(admitted)
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

/// The tenant of deployments without `[tenancy]`.
fn default_tenant() -> &'static TenantSpec {
    static DEFAULT: std::sync::OnceLock<TenantSpec> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| TenantSpec::new("default"))
}

#[cfg(test)]
mod differential {
    //! Property: for arbitrary byte paths, a request the pipeline admits was matched by the route
    //! table on exactly the path the upstream receives once the proxy has applied the outcome
    //! (`proxy::apply_admitted`), and that path is a fixed point of the normaliser. Extends the
    //! sanitizer's own differential (`sanitize.rs`, whose paths it reuses) through tenant prefix
    //! stripping, the route table, residency pins and the proxy's rewrite of the request.
    //!
    //! The deployment is the fuzz targets' fixture (`gateway/fuzz/fixture`): the repository's
    //! policies and residency maps, tenants on the path (`/t/{tenant}`, stripped) and host.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};

    use pingora::http::RequestHeader;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::sanitize::tests::differential::byte_path;
    use super::*;

    struct Fixture {
        snapshot: Snapshot,
        services: Services,
        runtime: tokio::runtime::Runtime,
        token: String,
    }

    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fixture");
            let loaded = crate::config::load(&dir.join("gateway.toml")).unwrap();
            let registry = crate::tenancy::registry::load_file_of(&loaded).unwrap();
            let snapshot = Snapshot::build(&loaded, registry).unwrap();
            let config = &loaded.config;
            let services = Services {
                authenticator: Authenticator::new(Default::default(), 16),
                geoip: None,
                trusted_proxies: Vec::new(),
                limiter: Arc::new(crate::limits::Limiter::new(None, &config.tiers)),
                webhooks: None,
            };
            let secret = std::fs::read(dir.join("issuer.secret")).unwrap();
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &serde_json::json!({
                    "iss": "https://issuer.fuzz.test", "aud": "gateway-fuzz", "sub": "ada",
                    "org": "acme", "roles": ["admin"], "mfa": true, "exp": 4102444800u64,
                }),
                &jsonwebtoken::EncodingKey::from_secret(secret.trim_ascii_end()),
            )
            .unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            Fixture {
                snapshot,
                services,
                runtime,
                token,
            }
        })
    }

    /// `template` (matchit syntax) with its parameters filled in.
    fn fill(template: &str, params: &[(String, String)]) -> String {
        let mut out = template.to_string();
        for (name, value) in params {
            out = out
                .replace(&format!("{{*{name}}}"), value)
                .replace(&format!("{{{name}}}"), value);
        }
        out
    }

    #[test]
    fn the_route_table_matches_the_path_the_upstream_receives() {
        let f = fixture();
        let engine = f.snapshot.authz.as_ref().unwrap();
        let admitted_count = AtomicUsize::new(0);
        let strategy = (
            prop::sample::select(vec!["GET", "HEAD", "PUT", "DELETE", "POST"]),
            prop::sample::select(vec!["/t/acme", ""]),
            prop::sample::select(vec![
                "/projects",
                "/documents",
                "/users/ada/documents",
                "/billing",
                "/reports",
                "",
            ]),
            // Arbitrary paths, and shorter ones that reach the routes more often.
            prop_oneof![
                1 => byte_path(),
                3 => "(/([a-zA-Z0-9._~;-]|%[2-7][0-9a-fA-F]|\\.\\.){1,4}){1,2}/?"
                    .prop_map(String::into_bytes),
            ],
            prop::option::of("[a-z0-9=&%;_]{0,12}"),
        );
        let mut runner = TestRunner::new(Config {
            cases: 2048,
            failure_persistence: None,
            ..Config::default()
        });
        let outcome = runner.run(&strategy, |(method, prefix, route, tail, query)| {
            let mut target = format!("{prefix}{route}").into_bytes();
            target.extend_from_slice(&tail);
            if let Some(q) = query {
                target.push(b'?');
                target.extend_from_slice(q.as_bytes());
            }
            // What Pingora accepts as a request head is what reaches the pipeline.
            let Ok(mut req) = RequestHeader::build(method, &target, None) else {
                return Ok(());
            };
            req.insert_header("authorization", format!("Bearer {}", f.token))
                .unwrap();
            if prefix.is_empty() {
                req.insert_header("host", "acme.api.fuzz.test").unwrap();
            }
            let head = RequestHead {
                method: &req.method,
                target: req.raw_path(),
                host: req.headers.get("host").and_then(|h| h.to_str().ok()),
                headers: &req.headers,
                client_ip: None,
            };
            let Ok(admitted) = f.runtime.block_on(admit(&head, &f.snapshot, &f.services)) else {
                return Ok(());
            };
            admitted_count.fetch_add(1, Ordering::Relaxed);
            let mut upstream = req.clone();
            crate::proxy::apply_admitted(&mut upstream, &admitted).unwrap();
            let sent = upstream.raw_path();
            let sent_path = sent.split(|&b| b == b'?').next().unwrap_or_default();
            let matched = admitted.path();
            prop_assert_eq!(
                String::from_utf8_lossy(sent_path),
                matched,
                "{:?}",
                String::from_utf8_lossy(&target)
            );
            // The route the decision was made on matched the whole of that path.
            let decision = admitted
                .authorized
                .as_ref()
                .and_then(|a| a.decision.as_ref());
            let m = engine.routes.find(&admitted.sanitized.method, matched);
            prop_assert_eq!(
                m.as_ref().map(|m| &m.route.template),
                decision.map(|d| &d.route)
            );
            if let Some(m) = m {
                prop_assert_eq!(fill(&m.route.template, &m.params), matched);
            }
            // A fixed point of the normaliser, and of stage 1 as a whole.
            let normalised = sanitize::normalize_path(matched.as_bytes(), true);
            prop_assert_eq!(normalised.as_deref(), Ok(matched));
            let again = sanitize::sanitize(
                &RequestHead {
                    target: sent,
                    ..head
                },
                &f.snapshot.sanitize,
            );
            prop_assert_eq!(again.map(|s| s.target().into_bytes()), Ok(sent.to_vec()));
            Ok(())
        });
        if let Err(e) = outcome {
            panic!("{e}");
        }
        // The property was exercised, not only refusals.
        let admitted = admitted_count.into_inner();
        assert!(admitted > 100, "only {admitted} of 2048 requests admitted");
    }
}
