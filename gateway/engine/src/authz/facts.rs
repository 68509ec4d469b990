//! Request facts a deployment declares for its policies: `[context]` in routes.toml names a
//! context attribute and where its value comes from — a header, a query parameter or a route
//! parameter — and the schema's context record types it:
//!
//! ```toml
//! [context]
//! plan = { header = "x-plan" }       # context.plan, typed by `plan?: String`
//! page = { query = "page" }          # context.page, `page?: Long`
//! project = { param = "project" }    # the route parameter `{project}`, where a route has one
//! amount = { body = "/order/amount" } # a field of the JSON body (JSON pointer), `amount?: Long`
//! ```
//!
//! A fact the request does not carry, or whose text is not of the declared type, is absent
//! (`context has page` is false): never a string where a policy compares a number.
//!
//! Body facts are read only on routes that say `read_body = true`, and only from a JSON body
//! that announces its `Content-Length` of at most [`BODY_FACTS_MAX_BYTES`]: the proxy reads
//! such a body before the decision and still forwards it whole. A larger, chunked or non-JSON
//! body streams to the upstream untouched and its facts are absent — so a policy that relies
//! on a body fact must refuse when it is absent (`unless { context has amount && … }`), or a
//! client pads its body past the limit to hide the field.

use std::collections::BTreeMap;

use http::HeaderMap;
use serde::Deserialize;

use super::shapes::{AttrType, SchemaShapes};
use crate::diagnostics::{SourceIssues, SourceText};

/// Where a declared fact's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum FactSource {
    /// The first value of this request header.
    Header(String),
    /// The first value of this query parameter (percent-decoded).
    Query(String),
    /// The matched route's parameter of this name.
    Param(String),
    /// The field at this JSON pointer (RFC 6901, e.g. `/order/amount`) of a JSON body, on
    /// routes with `read_body = true`.
    Body(String),
}

/// The largest body the proxy reads for body facts (below Pingora's 64 KiB retry buffer,
/// which carries the read part to the upstream).
pub const BODY_FACTS_MAX_BYTES: usize = 32 * 1024;

/// One declared fact, typed.
#[derive(Debug, Clone)]
pub struct ContextFact {
    pub name: String,
    source: Source,
    pub ty: AttrType,
}

#[derive(Debug, Clone)]
enum Source {
    Header(http::HeaderName),
    Query(String),
    Param(String),
    Body(String),
}

/// The context attributes the gateway fills itself: a declaration cannot take their names.
const BUILT_IN: [&str; 9] = [
    "hour",
    "weekday",
    "mfa",
    "auth",
    "scope_ok",
    "method",
    "country",
    "ip",
    "resource_found",
];

/// Every declared fact, in declaration (name) order.
#[derive(Debug, Clone, Default)]
pub struct ContextFacts(Vec<ContextFact>);

impl ContextFacts {
    /// Checks the declarations of `[context]` against the schema's context record: each must
    /// be declared there, optional (a request may lack it) and of a type text can have.
    pub fn build(
        declared: &BTreeMap<String, FactSource>,
        source: &SourceText,
        shapes: &SchemaShapes,
    ) -> Result<ContextFacts, SourceIssues> {
        let mut facts = Vec::new();
        let mut issues = Vec::new();
        for (name, from) in declared {
            let mut issue = |message: String| {
                issues.push(source.issue(format!("context.{name}"), message));
            };
            if BUILT_IN.contains(&name.as_str()) {
                issue(format!("`context.{name}` is set by the gateway"));
                continue;
            }
            let Some(shape) = shapes.context.get(name) else {
                issue(format!(
                    "the schema's context has no attribute `{name}` (declare `{name}?: String` \
                     or the type it has in the context record)"
                ));
                continue;
            };
            let fillable = matches!(
                shape.ty,
                AttrType::String
                    | AttrType::Long
                    | AttrType::Bool
                    | AttrType::Decimal
                    | AttrType::IpAddr
                    | AttrType::Entity(_)
            );
            if !fillable {
                issue(format!(
                    "`context.{name}` is a {}, which a request's text cannot fill",
                    shape.ty.describe()
                ));
                continue;
            }
            if shape.required {
                issue(format!(
                    "`context.{name}` is required in the schema, but a request may lack it: \
                     declare it optional (`{name}?: {}`)",
                    shape.ty.describe()
                ));
                continue;
            }
            let from = match from {
                FactSource::Header(header) => {
                    match http::HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes()) {
                        Ok(h) => Source::Header(h),
                        Err(_) => {
                            issue(format!("`{header}` is not a header name"));
                            continue;
                        }
                    }
                }
                FactSource::Query(q) => Source::Query(q.clone()),
                FactSource::Param(p) => Source::Param(p.clone()),
                FactSource::Body(pointer) => {
                    if !pointer.starts_with('/') {
                        issue(format!(
                            "`{pointer}` is not a JSON pointer: it starts with `/` (`/order/amount`)"
                        ));
                        continue;
                    }
                    Source::Body(pointer.clone())
                }
            };
            facts.push(ContextFact {
                name: name.clone(),
                source: from,
                ty: shape.ty.clone(),
            });
        }
        if issues.is_empty() {
            Ok(ContextFacts(facts))
        } else {
            Err(SourceIssues(issues))
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &ContextFact> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Position of the fact named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|f| f.name == name)
    }

    /// Whether any fact comes from the request body.
    pub fn reads_body(&self) -> bool {
        self.0.iter().any(|f| matches!(f.source, Source::Body(_)))
    }

    /// The facts' raw values in this request, in declaration order. `body`: the parsed JSON
    /// body, on a route that reads it. A header or query parameter given more than once with
    /// different values is [`AmbiguousFact`]: applications disagree on which one counts (PHP,
    /// Rails and Django take the last, Express an array, ASP.NET and Spring join them), so
    /// the policy must not decide on one while the upstream acts on another.
    pub fn gather<'p>(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        param: impl Fn(&str) -> Option<std::borrow::Cow<'p, str>>,
        body: Option<&serde_json::Value>,
    ) -> Result<Vec<Option<String>>, AmbiguousFact> {
        self.0
            .iter()
            .map(|fact| match &fact.source {
                Source::Header(h) => only_value(
                    headers.get_all(h).iter().filter_map(|v| v.to_str().ok()),
                    || AmbiguousFact(format!("header `{h}`")),
                )
                .map(|v| v.map(str::to_string)),
                Source::Query(q) => match query {
                    Some(query) => only_value(
                        form_urlencoded::parse(query.as_bytes())
                            .filter(|(k, _)| k == q)
                            .map(|(_, v)| v),
                        || AmbiguousFact(format!("query parameter `{q}`")),
                    )
                    .map(|v| v.map(std::borrow::Cow::into_owned)),
                    None => Ok(None),
                },
                Source::Param(p) => Ok(param(p).map(std::borrow::Cow::into_owned)),
                // Scalars only, as their text (the fact's type converts it like a header's).
                Source::Body(pointer) => Ok(match body.and_then(|b| b.pointer(pointer)) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        Some(v.to_string())
                    }
                    _ => None,
                }),
            })
            .collect()
    }
}

/// A fact the request gives more than once, with different values (named for the refusal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is given more than once, with different values")]
pub struct AmbiguousFact(pub String);

/// The one value of `values`: none, or the same each time; else `ambiguous()`.
fn only_value<T: PartialEq>(
    mut values: impl Iterator<Item = T>,
    ambiguous: impl FnOnce() -> AmbiguousFact,
) -> Result<Option<T>, AmbiguousFact> {
    let Some(first) = values.next() else {
        return Ok(None);
    };
    for other in values {
        if other != first {
            return Err(ambiguous());
        }
    }
    Ok(Some(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
        type Ctx = { hour: Long, plan?: String, page?: Long, must: String, tags?: Set<String> };
        entity U;
        action "a" appliesTo { principal: U, resource: U, context: Ctx };
    "#;

    fn build(text: &str) -> Result<ContextFacts, SourceIssues> {
        #[derive(Deserialize)]
        struct File {
            context: BTreeMap<String, FactSource>,
        }
        let source = SourceText::new("routes.toml", text);
        let file: File = source.deserialize().map_err(|e| SourceIssues(vec![e]))?;
        let shapes = SchemaShapes::from_cedarschema(SCHEMA).expect("schema");
        ContextFacts::build(&file.context, &source, &shapes)
    }

    #[test]
    fn declarations_are_checked_against_the_schema_with_their_line() {
        let err = build(
            "[context]\nhour = { header = \"x-hour\" }\nnope = { query = \"n\" }\nmust = { header = \"x-must\" }\ntags = { query = \"t\" }\n",
        )
        .unwrap_err();
        let lines: Vec<_> = err
            .0
            .iter()
            .map(|i| (i.field.as_str(), i.location.line))
            .collect();
        assert_eq!(
            lines,
            vec![
                ("context.hour", Some(2)),
                ("context.must", Some(4)),
                ("context.nope", Some(3)),
                ("context.tags", Some(5)),
            ],
            "{err}"
        );
    }

    #[test]
    fn gathers_json_body_fields_by_pointer() {
        let facts =
            build("[context]\nplan = { body = \"/order/plan\" }\npage = { body = \"/page\" }\n")
                .expect("facts");
        assert!(facts.reads_body());
        let body = serde_json::json!({"order": {"plan": "gold"}, "page": 7});
        let values = facts
            .gather(&HeaderMap::new(), None, |_| None, Some(&body))
            .unwrap();
        assert_eq!(
            values,
            vec![Some("7".to_string()), Some("gold".to_string())]
        );
        // Objects, arrays and null are no scalar: absent. No body: absent.
        let body = serde_json::json!({"order": {"plan": ["gold"]}, "page": null});
        assert_eq!(
            facts
                .gather(&HeaderMap::new(), None, |_| None, Some(&body))
                .unwrap(),
            vec![None, None]
        );
        assert_eq!(
            facts
                .gather(&HeaderMap::new(), None, |_| None, None)
                .unwrap(),
            vec![None, None]
        );
        let err = build("[context]\nplan = { body = \"order.plan\" }\n").unwrap_err();
        assert!(err.to_string().contains("JSON pointer"), "{err}");
    }

    #[test]
    fn gathers_headers_query_and_params() {
        let facts =
            build("[context]\nplan = { header = \"X-Plan\" }\npage = { query = \"page\" }\n")
                .expect("facts");
        let mut headers = HeaderMap::new();
        headers.insert("x-plan", "gold".parse().expect("value"));
        let values = facts
            .gather(&headers, Some("a=1&page=3&page=3"), |_| None, None)
            .unwrap();
        // Declaration order is by name: page, plan. The same value twice is that value.
        assert_eq!(
            values,
            vec![Some("3".to_string()), Some("gold".to_string())]
        );
        let values = facts
            .gather(&HeaderMap::new(), Some("pag%65=%32"), |_| None, None)
            .unwrap();
        assert_eq!(values, vec![Some("2".to_string()), None]);
        // Two different values: applications disagree on which counts, so neither is used.
        assert_eq!(
            facts.gather(&headers, Some("page=3&page=4"), |_| None, None),
            Err(AmbiguousFact("query parameter `page`".into()))
        );
        headers.append("x-plan", "free".parse().expect("value"));
        assert_eq!(
            facts.gather(&headers, Some("page=3"), |_| None, None),
            Err(AmbiguousFact("header `x-plan`".into()))
        );
    }
}
