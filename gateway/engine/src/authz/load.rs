//! Reading a policy package from disk: `schema.cedarschema`, `roles.json`, `*.cedar`,
//! `routes.toml`, `shadow/*.cedar` and `tenants/<id>/*.cedar`. Every problem names the file,
//! line and column; nothing half-loaded is ever used.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Entities, EntityUid, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::diagnostics::{Location, SourceIssue, SourceIssues, SourceText};

/// Where a policy came from, for explain output and test coverage reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOrigin {
    pub file: PathBuf,
    pub line: Option<usize>,
}

/// A parsed set of policies and where each came from.
#[derive(Debug, Clone, Default)]
pub struct ParsedPolicies {
    pub policies: Vec<Policy>,
    pub origins: BTreeMap<String, PolicyOrigin>,
    /// The texts the policies were parsed from, to locate validation errors.
    pub sources: BTreeMap<PathBuf, SourceText>,
}

impl ParsedPolicies {
    pub fn to_set(&self) -> Result<PolicySet, String> {
        PolicySet::from_policies(self.policies.iter().cloned()).map_err(|e| e.to_string())
    }
}

/// An issue at the first label of a Cedar diagnostic.
pub fn cedar_issue(
    source: &SourceText,
    field: &str,
    error: &(dyn Diagnostic + Send + Sync),
) -> SourceIssue {
    let offset = error
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    let mut message = error.to_string();
    if let Some(help) = error.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    SourceIssue {
        location: match offset {
            Some(o) => source.location_of(o),
            None => Location {
                file: source.path.clone(),
                line: None,
                column: None,
            },
        },
        field: field.to_string(),
        message,
    }
}

pub fn load_schema(dir: &Path) -> Result<Schema, SourceIssues> {
    let source = SourceText::read(&dir.join("schema.cedarschema"))?;
    match Schema::from_cedarschema_str(&source.text) {
        Ok((schema, warnings)) => {
            for w in warnings {
                tracing::warn!(file = %source.path.display(), warning = %w, "schema warning");
            }
            Ok(schema)
        }
        Err(e) => Err(SourceIssues(vec![cedar_issue(&source, "schema", &e)])),
    }
}

/// Role → the role itself plus every ancestor (so a user's parents are transitively closed).
pub fn load_roles(
    dir: &Path,
    schema: &Schema,
) -> Result<HashMap<String, Vec<EntityUid>>, SourceIssues> {
    let path = dir.join("roles.json");
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let source = SourceText::read(&path)?;
    let entities = Entities::from_json_str(&source.text, Some(schema))
        .map_err(|e| SourceIssues(vec![cedar_issue(&source, "roles", &e)]))?;
    let mut roles = HashMap::new();
    for entity in entities.iter() {
        let uid = entity.uid();
        if uid.type_name().basename() != "Role" {
            continue;
        }
        let mut closure: Vec<EntityUid> = vec![uid.clone()];
        if let Some(ancestors) = entities.ancestors(&uid) {
            closure.extend(ancestors.cloned());
        }
        roles.insert(uid.id().unescaped().to_string(), closure);
    }
    Ok(roles)
}

/// Every `*.cedar` file directly in `dir`, sorted, parsed, with policy ids `prefix` + `@id`
/// (or `prefix` + `file#n` for policies without an `@id`).
pub fn load_policy_dir(dir: &Path, prefix: &str) -> Result<ParsedPolicies, SourceIssues> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ParsedPolicies::default()),
        Err(e) => {
            return Err(SourceIssues(vec![SourceIssue {
                location: Location {
                    file: dir.to_path_buf(),
                    line: None,
                    column: None,
                },
                field: String::new(),
                message: format!("cannot read directory: {e}"),
            }]))
        }
    };
    files.sort();
    let mut parsed = ParsedPolicies::default();
    let mut issues = Vec::new();
    for file in files {
        let source = SourceText::read(&file)?;
        match parse_policies(&source, prefix) {
            Ok(p) => merge(&mut parsed, p, &mut issues),
            Err(mut e) => issues.append(&mut e.0),
        }
    }
    if issues.is_empty() {
        Ok(parsed)
    } else {
        Err(SourceIssues(issues))
    }
}

/// Adds `more` to `into`, reporting duplicate ids.
pub fn merge(into: &mut ParsedPolicies, more: ParsedPolicies, issues: &mut Vec<SourceIssue>) {
    into.sources.extend(more.sources);
    for policy in more.policies {
        let id = policy.id().to_string();
        if let (Some(previous), Some(origin)) = (into.origins.get(&id), more.origins.get(&id)) {
            issues.push(SourceIssue {
                location: Location {
                    file: origin.file.clone(),
                    line: origin.line,
                    column: None,
                },
                field: format!("@id(\"{id}\")"),
                message: format!(
                    "duplicate policy id, also in {}{}",
                    previous.file.display(),
                    previous.line.map(|l| format!(":{l}")).unwrap_or_default()
                ),
            });
            continue;
        }
        if let Some(origin) = more.origins.get(&id) {
            into.origins.insert(id, origin.clone());
        }
        into.policies.push(policy);
    }
}

/// Parses one file or text of policies.
pub fn parse_policies(source: &SourceText, prefix: &str) -> Result<ParsedPolicies, SourceIssues> {
    let set = PolicySet::from_str(&source.text).map_err(|errors| {
        SourceIssues(
            errors
                .iter()
                .map(|e| cedar_issue(source, "policy", e))
                .collect(),
        )
    })?;
    let stem = source
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = ParsedPolicies::default();
    out.sources.insert(source.path.clone(), source.clone());
    let mut policies: Vec<&Policy> = set.policies().collect();
    // `from_str` numbers policies in file order: keep that order.
    policies.sort_by_key(|p| {
        p.id()
            .to_string()
            .trim_start_matches("policy")
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    for (n, policy) in policies.into_iter().enumerate() {
        let (id, line) = match policy.annotation("id") {
            Some(id) => (
                format!("{prefix}{id}"),
                line_of_annotation(&source.text, id),
            ),
            None => (format!("{prefix}{stem}#{n}"), None),
        };
        out.origins.insert(
            id.clone(),
            PolicyOrigin {
                file: source.path.clone(),
                line,
            },
        );
        out.policies.push(policy.clone().new_id(PolicyId::new(id)));
    }
    Ok(out)
}

fn line_of_annotation(text: &str, id: &str) -> Option<usize> {
    let needle = format!("@id(\"{id}\")");
    text.lines()
        .position(|l| l.contains(&needle))
        .map(|i| i + 1)
}

/// Validates `set` against `schema` (strict mode), locating each error in its policy's file.
pub fn validate(
    schema: &Schema,
    set: &PolicySet,
    parsed: &ParsedPolicies,
) -> Result<(), SourceIssues> {
    let result = Validator::new(schema.clone()).validate(set, ValidationMode::Strict);
    if result.validation_passed() {
        for w in result.validation_warnings() {
            tracing::warn!(warning = %w, "policy validation warning");
        }
        return Ok(());
    }
    let mut issues = Vec::new();
    for error in result.validation_errors() {
        let id = error.policy_id().to_string();
        let source = parsed
            .origins
            .get(&id)
            .and_then(|o| parsed.sources.get(&o.file));
        let issue = match source {
            Some(source) => cedar_issue(source, &format!("policy `{id}`"), error),
            None => SourceIssue {
                location: Location {
                    file: PathBuf::from(format!("<policy {id}>")),
                    line: None,
                    column: None,
                },
                field: format!("policy `{id}`"),
                message: error.to_string(),
            },
        };
        issues.push(issue);
    }
    Err(SourceIssues(issues))
}
