//! The route table: which Cedar action and resource an HTTP request is. Matching uses `matchit`
//! (a radix tree), so the cost does not grow with the number of routes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::diagnostics::{SourceIssue, SourceText};

/// The largest body limit that can be configured (1 TiB): large enough for any upload a
/// gateway should stream, small enough that byte counts never overflow.
pub const MAX_BODY_BYTES: u64 = 1 << 40;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// What happens to requests no route matches.
    #[serde(default)]
    pub default: UnmatchedRoute,
    #[serde(default)]
    pub route: Vec<RouteSpec>,
    /// Request facts policies read as context attributes (see [`super::facts`]).
    #[serde(default)]
    pub context: BTreeMap<String, super::facts::FactSource>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnmatchedRoute {
    /// 403: only mapped routes are reachable.
    #[default]
    Deny,
    /// Forwarded without a policy decision (for migrations; logged as unmatched).
    Allow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Methods {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub method: Methods,
    pub path: String,
    pub action: String,
    pub resource: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Largest request body on this route (bytes), instead of `[server] max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// The decision reads `[context]` facts from the JSON body (see `authz::facts`).
    #[serde(default)]
    pub read_body: bool,
}

/// A matched route with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    pub route: &'a Route,
    /// The parameters as they appear in the normalised path (reserved characters still
    /// percent-encoded): filling the template with them gives the path back.
    pub params: Vec<(String, String)>,
}

impl RouteMatch<'_> {
    /// A parameter's value as the upstream reads it: decoded once. Stage 1 leaves reserved and
    /// non-ASCII characters percent-encoded, and nothing it leaves encoded decodes to `/`, `%`,
    /// a control character or a dot segment, so `q3%3Aplan` is the id `q3:plan` — the record
    /// the upstream serves, not an id no record has (which the store answers "missing", and
    /// which then escaped the record's owner, tenant and classification).
    pub fn param(&self, name: &str) -> Option<Cow<'_, str>> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
    }

    /// The resource id (decoded as [`RouteMatch::param`]): the `id` parameter, or `*` for
    /// collections.
    pub fn resource_id(&self) -> Cow<'_, str> {
        self.route
            .id_param
            .as_deref()
            .and_then(|p| self.param(p))
            .unwrap_or(Cow::Borrowed("*"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub template: String,
    pub action: String,
    pub resource_type: String,
    pub id_param: Option<String>,
    /// Resource attribute → path parameter.
    pub attributes: Vec<(String, String)>,
    /// The route's own body limit (`max_body_bytes`), if it has one.
    pub max_body_bytes: Option<u64>,
    /// Body facts are read for this route (`read_body = true`).
    pub read_body: bool,
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    by_method: HashMap<http::Method, matchit::Router<usize>>,
    routes: Vec<Route>,
    pub unmatched: UnmatchedRoute,
    /// The largest `max_body_bytes` of any route.
    largest_body_limit: Option<u64>,
    /// Some route has `read_body = true`.
    any_reads_body: bool,
}

impl RouteTable {
    /// Builds the table, reporting every bad route with its location in `source`. `check` is
    /// asked whether an action/resource pair exists (the schema's view).
    pub fn build(
        file: RoutesFile,
        source: &SourceText,
        check: impl Fn(&str, &str) -> Result<(), String>,
    ) -> Result<RouteTable, Vec<SourceIssue>> {
        let mut issues = Vec::new();
        let mut by_method: HashMap<http::Method, matchit::Router<usize>> = HashMap::new();
        let mut routes = Vec::with_capacity(file.route.len());
        for (i, spec) in file.route.iter().enumerate() {
            let params = template_params(&spec.path);
            if let Err(e) = check(&spec.action, &spec.resource) {
                issues.push(source.issue(format!("route[{i}].action"), e));
            }
            if let Some(id) = &spec.id {
                if !params.contains(id) {
                    issues.push(source.issue(
                        format!("route[{i}].id"),
                        format!("`{id}` is not a parameter of `{}`", spec.path),
                    ));
                }
            }
            for (attr, param) in &spec.attributes {
                if !params.contains(param) {
                    issues.push(source.issue(
                        format!("route[{i}].attributes.{attr}"),
                        format!("`{param}` is not a parameter of `{}`", spec.path),
                    ));
                }
                if attr == "tenant" {
                    issues.push(source.issue(
                        format!("route[{i}].attributes.{attr}"),
                        "`tenant` is always the resolved tenant",
                    ));
                }
            }
            let methods = match &spec.method {
                Methods::One(m) => vec![m.clone()],
                Methods::Many(ms) => ms.clone(),
            };
            if let Some(limit) = spec.max_body_bytes {
                if limit > MAX_BODY_BYTES {
                    issues.push(source.issue(
                        format!("route[{i}].max_body_bytes"),
                        format!("{limit} is out of bounds (0 to 1099511627776, 1 TiB)"),
                    ));
                }
            }
            let index = routes.len();
            routes.push(Route {
                template: spec.path.clone(),
                action: spec.action.clone(),
                resource_type: spec.resource.clone(),
                id_param: spec.id.clone(),
                attributes: spec
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                max_body_bytes: spec.max_body_bytes,
                read_body: spec.read_body,
            });
            if let Err(e) = check_template(&spec.path) {
                issues.push(source.issue(format!("route[{i}].path"), e));
                continue;
            }
            for m in methods {
                let method = match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => method,
                    Err(_) => {
                        issues.push(source.issue(
                            format!("route[{i}].method"),
                            format!("`{m}` is not an HTTP method"),
                        ));
                        continue;
                    }
                };
                if let Err(e) = by_method
                    .entry(method.clone())
                    .or_default()
                    .insert(&spec.path, index)
                {
                    issues.push(source.issue(
                        format!("route[{i}].path"),
                        format!("{method} {}: {e}", spec.path),
                    ));
                }
            }
        }
        if issues.is_empty() {
            Ok(RouteTable {
                largest_body_limit: routes.iter().filter_map(|r| r.max_body_bytes).max(),
                any_reads_body: routes.iter().any(|r| r.read_body),
                by_method,
                routes,
                unmatched: file.default,
            })
        } else {
            Err(issues)
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether any route reads its body (body facts).
    pub fn any_reads_body(&self) -> bool {
        self.any_reads_body
    }

    /// Whether `method path` is routed to a route that reads its body (body facts).
    pub fn reads_body(&self, method: &http::Method, path: &str) -> bool {
        self.any_reads_body && self.find(method, path).is_some_and(|m| m.route.read_body)
    }

    /// The largest body limit any route sets (`None`: no route sets one).
    pub fn largest_body_limit(&self) -> Option<u64> {
        self.largest_body_limit
    }

    /// The route of `method path` (HEAD falls back to GET).
    pub fn find(&self, method: &http::Method, path: &str) -> Option<RouteMatch<'_>> {
        let lookup = |m: &http::Method| {
            let matched = self.by_method.get(m)?.at(path).ok()?;
            Some(RouteMatch {
                route: self.routes.get(*matched.value)?,
                params: matched
                    .params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
        };
        lookup(method).or_else(|| {
            (method == http::Method::HEAD)
                .then(|| lookup(&http::Method::GET))
                .flatten()
        })
    }
}

fn template_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|s| s.trim_start_matches('*').to_string())
        .collect()
}

/// Most parameters a path template may have. The router panics beyond 26; no real route
/// comes near 16.
pub const MAX_TEMPLATE_PARAMS: usize = 16;

/// Refuses a path template the router cannot hold (found by the `route_table` fuzz target:
/// a template with 27 parameters took the gateway down at load). Counts every parameter the
/// router sees, also those inside a segment (`/{a}.{b}`), unlike [`template_params`].
pub fn check_template(template: &str) -> Result<(), String> {
    let bytes = template.as_bytes();
    let mut params = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'{' {
            if bytes.get(i + 1) == Some(&b'{') {
                // `{{` is a literal brace.
                i += 2;
                continue;
            }
            params += 1;
        }
        i += 1;
    }
    if params > MAX_TEMPLATE_PARAMS {
        return Err(format!(
            "`{template}` has {params} parameters; at most {MAX_TEMPLATE_PARAMS}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<RouteTable, Vec<SourceIssue>> {
        let source = SourceText::new("routes.toml", text);
        let file: RoutesFile = source.deserialize().map_err(|e| vec![e])?;
        RouteTable::build(file, &source, |action, _| {
            if action.contains(':') {
                Ok(())
            } else {
                Err(format!("unknown action `{action}`"))
            }
        })
    }

    #[test]
    fn matches_methods_params_and_head() {
        let t = table(
            r#"
[[route]]
method = ["GET", "PUT"]
path = "/users/{owner}/documents/{id}"
action = "documents:read"
resource = "Document"
id = "id"
attributes = { owner = "owner" }

[[route]]
method = "GET"
path = "/files/{*rest}"
action = "files:read"
resource = "File"
id = "rest"
"#,
        )
        .unwrap();
        let m = t
            .find(&http::Method::GET, "/users/bob/documents/7")
            .unwrap();
        assert_eq!(m.route.action, "documents:read");
        assert_eq!(m.resource_id(), "7");
        assert_eq!(m.param("owner").as_deref(), Some("bob"));
        // Ids are the upstream's: decoded once from the normalised path (stage 1 keeps
        // reserved and non-ASCII characters encoded; `%3A` is `:`, `%C3%A9` is `é`).
        let encoded = t
            .find(&http::Method::GET, "/users/b%C3%A9a/documents/q3%3Aplan")
            .unwrap();
        assert_eq!(encoded.resource_id(), "q3:plan");
        assert_eq!(encoded.param("owner").as_deref(), Some("béa"));
        assert_eq!(
            encoded.params[1].1, "q3%3Aplan",
            "the path's own form is kept"
        );
        assert!(t
            .find(&http::Method::HEAD, "/users/bob/documents/7")
            .is_some());
        assert!(t
            .find(&http::Method::DELETE, "/users/bob/documents/7")
            .is_none());
        assert!(t.find(&http::Method::GET, "/users/bob/documents").is_none());
        assert_eq!(
            t.find(&http::Method::GET, "/files/a/b/c")
                .unwrap()
                .resource_id(),
            "a/b/c"
        );
        assert_eq!(t.unmatched, UnmatchedRoute::Deny);
    }

    #[test]
    fn bad_routes_are_located() {
        let err = table(
            "[[route]]\nmethod = \"GET\"\npath = \"/a/{id}\"\naction = \"nope\"\nresource = \"X\"\nid = \"key\"\n\n[[route]]\nmethod = \"GET\"\npath = \"/a/{id}\"\naction = \"a:b\"\nresource = \"X\"\n",
        )
        .unwrap_err();
        let fields: Vec<_> = err
            .iter()
            .map(|i| (i.field.as_str(), i.location.line))
            .collect();
        assert!(fields.contains(&("route[0].action", Some(4))), "{err:?}");
        assert!(fields.contains(&("route[0].id", Some(6))), "{err:?}");
        assert!(fields.contains(&("route[1].path", Some(10))), "{err:?}");
    }

    #[test]
    fn templates_with_too_many_parameters_are_refused_not_a_panic() {
        let many: String = (0..27).map(|i| format!("/{{p{i}}}")).collect();
        let text = format!(
            "[[route]]\nmethod = \"GET\"\npath = \"{many}\"\naction = \"documents:read\"\nresource = \"Document\"\n"
        );
        let issues = table(&text).err().unwrap();
        assert!(issues[0].message.contains("27 parameters"), "{issues:?}");
        assert_eq!(issues[0].field, "route[0].path");
        assert!(check_template("/a/{{literal}}/{id}").is_ok());
    }
}
