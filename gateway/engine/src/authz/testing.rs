//! `gateway policy test`: runs policy test cases against a policy package and reports failures
//! with a diff, plus which policies no case exercised.
//!
//! A case file (`policy-tests/*.toml`):
//!
//! ```toml
//! [defaults]
//! tenant = "acme"                       # the tenant of the request (and of the resource)
//! context = { hour = 10, weekday = 2 }  # merged into every case's context
//!
//! [tenants.acme]
//! tier = "pro"
//! features = ["sso"]
//!
//! [[case]]
//! name = "viewers read projects"
//! principal = { id = "alice", roles = ["viewer"] }   # tenant defaults to the request's
//! # auth = "jwt" (default), "api-key" or "anonymous"; platform = true for a platform-wide
//! # issuer's token that names no tenant (then `tenant` must not be set)
//! action = "projects:read"                         # or: request = "GET /projects/p1"
//! resource = { type = "Project", id = "p1" }
//! expect = "allow"
//! policies = ["viewer-reads"]                      # optional: the determining policies
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{AuthzEngine, DecisionInput, Evaluation, RequestFacts, ResourceRecord};
use crate::diagnostics::{SourceIssue, SourceIssues, SourceText};
use crate::identity::{AuthMethod, Principal};
use crate::tenancy::TenantSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    tenants: BTreeMap<String, TenantFields>,
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    tenant: Option<String>,
    #[serde(default)]
    context: ContextSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFields {
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    home_region: Option<String>,
    #[serde(default)]
    regime: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextSpec {
    hour: Option<i64>,
    weekday: Option<i64>,
    method: Option<String>,
    country: Option<String>,
    ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    principal: PrincipalSpec,
    /// The request's tenant (defaults to `defaults.tenant`).
    tenant: Option<String>,
    action: Option<String>,
    resource: Option<ResourceSpec>,
    /// `"METHOD /path"`, routed through `routes.toml` instead of `action`/`resource`.
    request: Option<String>,
    #[serde(default)]
    context: ContextSpec,
    expect: Expected,
    policies: Option<Vec<String>>,
    /// What the shadow policies should decide, when checked.
    shadow: Option<Expected>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expected {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalSpec {
    id: String,
    tenant: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    mfa: bool,
    /// `jwt` (default), `api-key` or `anonymous`.
    auth: Option<String>,
    /// A token of a platform-wide issuer that names no tenant (`jwt` only, without `tenant`).
    #[serde(default)]
    platform: bool,
    #[serde(default)]
    scopes: Vec<String>,
    email: Option<String>,
    department: Option<String>,
    /// Further claims, as a token's claim mapping would give them (e.g. `clearance = 3`).
    #[serde(default)]
    claims: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceSpec {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default = "collection_id")]
    id: String,
    owner: Option<String>,
}

fn collection_id() -> String {
    "*".to_string()
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub passed: bool,
    /// Expected vs actual, when it failed.
    pub diff: Vec<String>,
}

/// The result of a whole run.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    pub results: Vec<CaseResult>,
    /// Policies that determined at least one decision (enforced or shadow).
    pub exercised: BTreeSet<String>,
    /// Policies of the package that no case exercised, with their origin.
    pub unexercised: Vec<(String, String)>,
}

impl TestReport {
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.passed).count()
    }

    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut current: Option<&Path> = None;
        for r in &self.results {
            if current != Some(r.file.as_path()) {
                out.push_str(&format!("{}\n", r.file.display()));
                current = Some(r.file.as_path());
            }
            out.push_str(&format!(
                "  {}  {}\n",
                if r.passed { "ok  " } else { "FAIL" },
                r.name
            ));
            for line in &r.diff {
                out.push_str(&format!("        {line}\n"));
            }
        }
        let total = self.results.len();
        out.push_str(&format!(
            "\n{total} case(s): {} passed, {} failed\n",
            total - self.failed(),
            self.failed()
        ));
        let all = self.exercised.len() + self.unexercised.len();
        out.push_str(&format!(
            "coverage: {}/{all} policies determined at least one decision\n",
            self.exercised.len()
        ));
        for (id, origin) in &self.unexercised {
            out.push_str(&format!("  never exercised: {id} ({origin})\n"));
        }
        out
    }
}

/// Runs every `*.toml` case file in `dir` (recursively) against `engine`.
pub fn run(engine: &AuthzEngine, dir: &Path) -> Result<TestReport, SourceIssues> {
    let mut files = Vec::new();
    collect_case_files(dir, &mut files);
    files.sort();
    if files.is_empty() {
        return Err(SourceIssues(vec![SourceIssue {
            location: crate::diagnostics::Location {
                file: dir.to_path_buf(),
                line: None,
                column: None,
            },
            field: String::new(),
            message: "no *.toml test case files found".to_string(),
        }]));
    }
    let mut report = TestReport::default();
    let mut issues = Vec::new();
    for file in files {
        let source = SourceText::read(&file)?;
        let cases: CaseFile = match source.deserialize() {
            Ok(c) => c,
            Err(e) => {
                issues.push(e);
                continue;
            }
        };
        for (i, case) in cases.case.iter().enumerate() {
            match run_case(engine, &cases, case) {
                Ok((evaluation, diff)) => {
                    report.exercised.extend(evaluation.policies.iter().cloned());
                    if let Some(s) = &evaluation.shadow {
                        report.exercised.extend(s.policies.iter().cloned());
                    }
                    report.results.push(CaseResult {
                        file: file.clone(),
                        name: case.name.clone(),
                        passed: diff.is_empty(),
                        diff,
                    });
                }
                Err(message) => issues.push(source.issue(format!("case[{i}]"), message)),
            }
        }
    }
    if !issues.is_empty() {
        return Err(SourceIssues(issues));
    }
    report.unexercised = engine
        .policy_origins()
        .iter()
        .filter(|(id, _)| !report.exercised.contains(*id))
        .map(|(id, o)| {
            let origin = match o.line {
                Some(l) => format!("{}:{l}", o.file.display()),
                None => o.file.display().to_string(),
            };
            (id.clone(), origin)
        })
        .collect();
    Ok(report)
}

fn collect_case_files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                collect_case_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
}

fn run_case(
    engine: &AuthzEngine,
    file: &CaseFile,
    case: &Case,
) -> Result<(Arc<Evaluation>, Vec<String>), String> {
    let tenant_id = case
        .tenant
        .clone()
        .or_else(|| file.defaults.tenant.clone())
        .ok_or("no tenant: set `tenant` or `defaults.tenant`")?;
    let fields = file.tenants.get(&tenant_id).cloned().unwrap_or_default();
    let mut tenant = TenantSpec::new(tenant_id.clone());
    tenant.tier = fields.tier.unwrap_or_else(|| "free".to_string());
    tenant.home_region = fields.home_region;
    tenant.regime = fields.regime;
    tenant.features = fields.features;

    let p = &case.principal;
    let mut principal = Principal::anonymous();
    principal.id = p.id.clone();
    principal.platform = p.platform;
    principal.tenant = if p.platform {
        if p.tenant.is_some() {
            return Err("principal: a platform principal names no tenant".to_string());
        }
        None
    } else {
        Some(Arc::from(
            p.tenant.clone().unwrap_or_else(|| tenant_id.clone()),
        ))
    };
    principal.roles = p.roles.clone();
    principal.scopes = p.scopes.clone();
    principal.auth = match p.auth.as_deref().unwrap_or("jwt") {
        "jwt" => AuthMethod::Jwt {
            issuer: "policy-test".into(),
        },
        "api-key" => AuthMethod::ApiKey {
            key_id: p.id.clone(),
        },
        "anonymous" => AuthMethod::Anonymous,
        other => {
            return Err(format!(
                "principal.auth `{other}`: expected jwt, api-key or anonymous"
            ))
        }
    };
    if p.platform && !matches!(principal.auth, AuthMethod::Jwt { .. }) {
        return Err("principal: only a token (auth = \"jwt\") can be a platform principal".into());
    }
    principal
        .attributes
        .insert("mfa".into(), serde_json::Value::Bool(p.mfa));
    if let Some(email) = &p.email {
        principal
            .attributes
            .insert("email".into(), email.clone().into());
    }
    if let Some(dept) = &p.department {
        principal
            .attributes
            .insert("department".into(), dept.clone().into());
    }
    for (name, value) in &p.claims {
        principal.attributes.insert(name.clone(), value.clone());
    }
    let d = &file.defaults.context;
    let c = &case.context;
    let facts = RequestFacts {
        hour: c.hour.or(d.hour).unwrap_or(12),
        weekday: c.weekday.or(d.weekday).unwrap_or(3),
        method: c
            .method
            .clone()
            .or(d.method.clone())
            .unwrap_or_else(|| "GET".into()),
        country: c.country.clone().or(d.country.clone()),
        ip: c.ip.or(d.ip),
    };
    let (action, resource_type, resource_id, attributes) =
        match (&case.request, &case.action, &case.resource) {
            (Some(request), None, None) => {
                let (method, path) = request
                    .split_once(' ')
                    .ok_or_else(|| format!("request `{request}`: expected `METHOD /path`"))?;
                let method = http::Method::from_bytes(method.as_bytes())
                    .map_err(|e| format!("request `{request}`: {e}"))?;
                let m = engine
                    .routes
                    .find(&method, path)
                    .ok_or_else(|| format!("request `{request}`: no route matches"))?;
                let attrs: Vec<(String, String)> = m
                    .route
                    .attributes
                    .iter()
                    .filter_map(|(a, param)| m.param(param).map(|v| (a.clone(), v.into_owned())))
                    .collect();
                (
                    m.route.action.clone(),
                    m.route.resource_type.clone(),
                    m.resource_id().to_string(),
                    attrs,
                )
            }
            (None, Some(action), Some(resource)) => {
                let attrs = resource
                    .owner
                    .iter()
                    .map(|o| ("owner".to_string(), o.clone()))
                    .collect();
                (
                    action.clone(),
                    resource.type_name.clone(),
                    resource.id.clone(),
                    attrs,
                )
            }
            _ => return Err("give either `request`, or `action` and `resource`".to_string()),
        };
    // The package's entities.json is the data the case runs against, unless the case states
    // the resource's owner itself.
    let resource_record = match &case.resource {
        Some(ResourceSpec { owner: Some(_), .. }) => ResourceRecord::NotCovered,
        _ => engine.file_record(&resource_type, &resource_id),
    };
    let (evaluation, _) = engine.evaluate(&DecisionInput {
        principal: &principal,
        tenant: &tenant,
        tier_features: &[],
        action: &action,
        resource_type: &resource_type,
        resource_id: &resource_id,
        resource_attributes: &attributes,
        resource_record,
        // As live: the package's record of the user, if it keeps users.
        principal_record: if principal.is_anonymous() {
            ResourceRecord::NotCovered
        } else {
            engine.file_record(engine.user_type(), &principal.id)
        },
        declared_facts: &[],
        facts: &facts,
    });
    let mut diff = Vec::new();
    let actual = if evaluation.allowed {
        Expected::Allow
    } else {
        Expected::Deny
    };
    let expected_policies = case.policies.clone().map(|mut p| {
        p.sort();
        p
    });
    let policies_differ = expected_policies
        .as_ref()
        .is_some_and(|p| *p != evaluation.policies);
    if actual != case.expect || policies_differ {
        let show = |d: Expected, p: Option<&Vec<String>>| {
            format!(
                "{}{}",
                if d == Expected::Allow {
                    "allow"
                } else {
                    "deny"
                },
                p.map(|p| format!(" by {p:?}")).unwrap_or_default()
            )
        };
        diff.push(format!(
            "expected: {}",
            show(case.expect, expected_policies.as_ref())
        ));
        diff.push(format!(
            "actual:   {}",
            show(actual, Some(&evaluation.policies))
        ));
    }
    for e in &evaluation.errors {
        diff.push(format!("policy error: {e}"));
    }
    if let (Some(expected), Some(shadow)) = (case.shadow, &evaluation.shadow) {
        let actual = if shadow.allowed {
            Expected::Allow
        } else {
            Expected::Deny
        };
        if expected != actual {
            diff.push(format!(
                "shadow expected {expected:?}, got {actual:?} by {:?}",
                shadow.policies
            ));
        }
    }
    Ok((Arc::new(evaluation), diff))
}
