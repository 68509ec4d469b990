//! Audit search and export: the records of the hash-chained log that match a filter, streamed
//! as JSON lines with the chain material an auditor needs to check the excerpt on their own,
//! or as CSV for reading.
//!
//! A JSON-lines excerpt is:
//! 1. a header `{"type":"audit-excerpt", "filter":…, "first_seq", "last_seq", "before",
//!    "after", "head":{"seq","hash"}, "matched"}` — `before` is the hash the first record of the
//!    span chains to, `after` the hash of its last, `head` the newest record of the log when
//!    exported (anchor it elsewhere to pin the excerpt to the log);
//! 2. one line per record of the span from the first match to the last, in order: matches as
//!    `{"type":"record","line":"<the record exactly as logged>"}`, the records between them that
//!    did not match as `{"type":"link","seq","prev","hash"}` — their hashes only, none of their
//!    content (another tenant's data never leaves in an excerpt).
//!
//! [`verify_excerpt`] (`gateway audit verify-excerpt FILE`) recomputes every record's hash from
//! its bytes and checks that records and links chain from `before` to `after` without a gap.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::SystemTime;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Which records an export keeps.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    pub principal: Option<String>,
    /// Cedar action (`projects:delete`).
    pub action: Option<String>,
    /// `Some(true)`: allowed decisions only; `Some(false)`: refusals (by policy or otherwise).
    pub allowed: Option<bool>,
    /// A determining policy's id.
    pub policy: Option<String>,
    pub from: Option<SystemTime>,
    pub to: Option<SystemTime>,
    /// Only cross-organization records: a principal of one organization acting in another
    /// (a platform operator, a credential of another tenant), and the refusals of such
    /// attempts (a credential of tenant A sent to tenant B).
    pub cross_org: bool,
    /// The export goes to a tenant's own administrators (`/tenants/{id}/audit`): it says
    /// nothing of the rest of the log — not how many records it holds (other tenants'
    /// traffic) nor, when the chain does not verify, the server's file paths.
    pub tenant_view: bool,
}

/// Refusals that are a cross-tenant attempt.
const CROSS_TENANT_REFUSALS: [&str; 2] = ["tenant-mismatch", "unbound-credential"];

impl AuditFilter {
    /// Whether a parsed record matches.
    pub fn matches(&self, record: &Value) -> bool {
        let text = |field: &str| record.get(field).and_then(Value::as_str);
        let decision = record.get("decision");
        let eq = |wanted: &Option<String>, actual: Option<&str>| {
            wanted.as_deref().is_none_or(|w| actual == Some(w))
        };
        if !eq(&self.tenant, text("tenant")) || !eq(&self.principal, text("principal")) {
            return false;
        }
        if self.cross_org {
            let crossing = text("principal_tenant").is_some()
                || record.get("platform").and_then(Value::as_bool) == Some(true)
                || text("rejection").is_some_and(|r| CROSS_TENANT_REFUSALS.contains(&r));
            if !crossing {
                return false;
            }
        }
        if !eq(
            &self.action,
            decision
                .and_then(|d| d.get("action"))
                .and_then(Value::as_str),
        ) {
            return false;
        }
        if let Some(allowed) = self.allowed {
            let was_allowed = decision
                .and_then(|d| d.get("allowed"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
                && record.get("rejection").is_none_or(Value::is_null);
            if was_allowed != allowed {
                return false;
            }
        }
        if let Some(policy) = &self.policy {
            let determined = decision
                .and_then(|d| d.get("policies"))
                .and_then(Value::as_array)
                .is_some_and(|p| p.iter().any(|id| id.as_str() == Some(policy)));
            if !determined {
                return false;
            }
        }
        if self.from.is_some() || self.to.is_some() {
            let Some(time) = text("time").and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            else {
                return false;
            };
            if self.from.is_some_and(|f| time < f) || self.to.is_some_and(|t| time >= t) {
                return false;
            }
        }
        true
    }

    fn describe(&self) -> Value {
        let time =
            |t: &Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
        json!({
            "tenant": self.tenant, "principal": self.principal, "action": self.action,
            "allowed": self.allowed, "policy": self.policy, "cross_org": self.cross_org,
            "from": time(&self.from), "to": time(&self.to),
        })
    }
}

/// Why an export or a verification failed.
#[derive(Debug, thiserror::Error)]
pub enum ExcerptError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {problem}")]
    Invalid { line: usize, problem: String },
}

/// One record of the log as exported.
struct Logged {
    seq: u64,
    prev: String,
    hash: String,
    line: String,
    value: Value,
}

/// A logged line with the chain fields, or `None` for a line that is not a record.
fn parse_logged(line: String) -> Option<Logged> {
    let value = serde_json::from_str::<Value>(&line).ok()?;
    let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_string);
    Some(Logged {
        seq: value.get("seq").and_then(Value::as_u64)?,
        prev: field("prev")?,
        hash: field("hash")?,
        line,
        value,
    })
}

/// Every record of `dir` in order, read as they are consumed.
fn records(dir: &Path) -> Result<impl Iterator<Item = Result<Logged, ExcerptError>>, ExcerptError> {
    let segments = super::audit::segments(dir)?;
    Ok(segments
        .into_iter()
        .flat_map(
            |path| -> Box<dyn Iterator<Item = std::io::Result<Vec<u8>>>> {
                match File::open(&path) {
                    // Bytes: a damaged line (not UTF-8) is not a record, like any unreadable one.
                    Ok(file) => Box::new(BufReader::new(file).split(b'\n')),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            },
        )
        .filter_map(|line| match line {
            Ok(line) => String::from_utf8(line).ok().and_then(parse_logged).map(Ok),
            Err(e) => Some(Err(ExcerptError::Io(e))),
        }))
}

/// Calls `each` with every record of `dir`, in order.
fn for_each_record(
    dir: &Path,
    mut each: impl FnMut(Logged) -> Result<(), ExcerptError>,
) -> Result<(), ExcerptError> {
    for record in records(dir)? {
        each(record?)?;
    }
    Ok(())
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    pub matched: u64,
    pub links: u64,
}

/// Writes the JSON-lines excerpt of the records of `dir` that match `filter` to `out`. Two
/// passes over the log: the first finds the span and the head, the second streams it.
pub fn export_jsonl(
    dir: &Path,
    filter: &AuditFilter,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExcerptError> {
    export_section(dir, None, filter, out)
}

/// The excerpts of several replicas' logs (each keeps its own chain), one section each: every
/// chain is verified whole first and its header says so.
pub fn export_jsonl_replicas(
    replicas: &[(String, &Path)],
    filter: &AuditFilter,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExcerptError> {
    let mut total = ExportSummary {
        matched: 0,
        links: 0,
    };
    for (name, dir) in replicas {
        let summary = export_section(dir, Some(name), filter, out)?;
        total.matched += summary.matched;
        total.links += summary.links;
    }
    Ok(total)
}

fn export_section(
    dir: &Path,
    replica: Option<&str>,
    filter: &AuditFilter,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExcerptError> {
    let chain = super::audit::verify(dir)?;
    let mut span: Option<(u64, u64, String, String)> = None;
    let mut head: Option<(u64, String)> = None;
    let mut matched = 0u64;
    for_each_record(dir, |r| {
        head = Some((r.seq, r.hash.clone()));
        if filter.matches(&r.value) {
            matched += 1;
            span = Some(match span.take() {
                None => (r.seq, r.seq, r.prev, r.hash),
                Some((first, _, before, _)) => (first, r.seq, before, r.hash),
            });
        }
        Ok(())
    })?;
    let (first, last, before, after) = match span {
        Some(span) => (Some(span.0), Some(span.1), Some(span.2), Some(span.3)),
        None => (None, None, None, None),
    };
    let header = json!({
        "type": "audit-excerpt",
        "filter": filter.describe(),
        "first_seq": first, "last_seq": last,
        "before": before, "after": after,
        "head": head.map(|(seq, hash)| if filter.tenant_view {
            json!({"hash": hash})
        } else {
            json!({"seq": seq, "hash": hash})
        }),
        "matched": matched,
        "replica": replica,
        "chain": if filter.tenant_view {
            json!({
                "verified": chain.failure.is_none(),
                "problem": chain.failure.map(|_| "the log does not verify on the server: \
                    its operators have the details"),
            })
        } else {
            json!({
                "records": chain.records,
                "verified": chain.failure.is_none(),
                "problem": chain.failure.map(|f| format!(
                    "{}:{}: {}", f.file.display(), f.line, f.problem
                )),
            })
        },
    });
    writeln!(out, "{header}")?;
    let mut links = 0u64;
    if let (Some(first), Some(last)) = (first, last) {
        for_each_record(dir, |r| {
            if r.seq < first || r.seq > last {
                return Ok(());
            }
            let line = if filter.matches(&r.value) {
                json!({"type": "record", "line": r.line})
            } else {
                links += 1;
                json!({"type": "link", "seq": r.seq, "prev": r.prev, "hash": r.hash})
            };
            writeln!(out, "{line}")?;
            Ok(())
        })?;
    }
    out.flush()?;
    Ok(ExportSummary { matched, links })
}

/// The CSV columns of an export (a reading copy: the JSON-lines excerpt carries the proof).
const CSV_COLUMNS: [&str; 15] = [
    "seq",
    "time",
    "tenant",
    "principal",
    "principal_tenant",
    "method",
    "path",
    "status",
    "action",
    "resource",
    "allowed",
    "policies",
    "rejection",
    "region",
    "hash",
];

/// Writes the matching records as CSV.
pub fn export_csv(
    dir: &Path,
    filter: &AuditFilter,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExcerptError> {
    export_csv_replicas(&[(String::new(), dir)], filter, out)
}

/// The matching records of several replicas' logs as one CSV, merged by time (each log is in
/// time order: a streaming merge), with a `replica` column when there are several.
pub fn export_csv_replicas(
    replicas: &[(String, &Path)],
    filter: &AuditFilter,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExcerptError> {
    let mut writer = csv::Writer::from_writer(out);
    let csv_error = |e: csv::Error| ExcerptError::Io(std::io::Error::other(e));
    let several = replicas.len() > 1;
    let mut header: Vec<&str> = CSV_COLUMNS.to_vec();
    if several {
        header.insert(0, "replica");
    }
    writer.write_record(&header).map_err(csv_error)?;
    let mut streams = Vec::new();
    for (name, dir) in replicas {
        let matching =
            records(dir)?.filter(|r| r.as_ref().map_or(true, |r| filter.matches(&r.value)));
        streams.push((name.as_str(), matching.peekable()));
    }
    let time_of = |r: &Result<Logged, ExcerptError>| -> String {
        r.as_ref()
            .ok()
            .and_then(|r| {
                r.value
                    .get("time")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    let mut matched = 0u64;
    loop {
        // The stream whose next record is the oldest (errors first).
        let next = streams
            .iter_mut()
            .enumerate()
            .filter_map(|(i, (_, s))| s.peek().map(|r| (i, r.is_err(), time_of(r))))
            .min_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)))
            .map(|(i, _, _)| i);
        let Some(index) = next else {
            break;
        };
        let Some((name, stream)) = streams.get_mut(index) else {
            break;
        };
        let Some(r) = stream.next() else {
            continue;
        };
        let r = r?;
        matched += 1;
        let v = &r.value;
        let text = |value: Option<&Value>| match value {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => crate::metering::report::inert_cell(s.clone()),
            Some(other) => other.to_string(),
        };
        let decision = v.get("decision");
        let policies = decision
            .and_then(|d| d.get("policies"))
            .and_then(Value::as_array)
            .map(|p| {
                p.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let mut record = vec![
            r.seq.to_string(),
            text(v.get("time")),
            text(v.get("tenant")),
            text(v.get("principal")),
            text(v.get("principal_tenant")),
            text(v.get("method")),
            text(v.get("path")),
            text(v.get("status")),
            text(decision.and_then(|d| d.get("action"))),
            text(decision.and_then(|d| d.get("resource"))),
            text(decision.and_then(|d| d.get("allowed"))),
            crate::metering::report::inert_cell(policies),
            text(v.get("rejection")),
            text(v.get("routing").and_then(|r| r.get("region"))),
            r.hash.clone(),
        ];
        if several {
            record.insert(0, name.to_string());
        }
        writer.write_record(&record).map_err(csv_error)?;
    }
    writer.flush()?;
    Ok(ExportSummary { matched, links: 0 })
}

/// A PDF summary of the records matching `filter` in each replica's log: whether each chain
/// verifies, the span's `before`/`after` hashes, decisions per tenant, determining policies,
/// and cross-organization records (the JSON-lines excerpt is the proof; this is for reading).
pub fn summary_pdf(
    replicas: &[(String, &Path)],
    filter: &AuditFilter,
    generated: i64,
) -> Result<Vec<u8>, ExcerptError> {
    use crate::metering::report::{sections_pdf, PdfSection, ReportHeading};
    use std::collections::BTreeMap;
    let mut chains = Vec::new();
    let mut per_tenant: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut policies: BTreeMap<String, u64> = BTreeMap::new();
    let (mut matched, mut cross_org) = (0u64, 0u64);
    let crossing = AuditFilter {
        cross_org: true,
        ..AuditFilter::default()
    };
    for (name, dir) in replicas {
        let chain = super::audit::verify(dir)?;
        let mut span: Option<(String, String)> = None;
        let mut in_replica = 0u64;
        for_each_record(dir, |r| {
            if !filter.matches(&r.value) {
                return Ok(());
            }
            in_replica += 1;
            span = Some(match span.take() {
                None => (r.prev.clone(), r.hash.clone()),
                Some((before, _)) => (before, r.hash.clone()),
            });
            let tenant = r
                .value
                .get("tenant")
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_string();
            let decision = r.value.get("decision");
            let allowed = decision
                .and_then(|d| d.get("allowed"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
                && r.value.get("rejection").is_none_or(Value::is_null);
            let counts = per_tenant.entry(tenant).or_default();
            if allowed {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
            for id in decision
                .and_then(|d| d.get("policies"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                *policies.entry(id.to_string()).or_default() += 1;
            }
            cross_org += u64::from(crossing.matches(&r.value));
            Ok(())
        })?;
        matched += in_replica;
        let short = |hash: &str| hash.get(..16).unwrap_or(hash).to_string();
        chains.push(vec![
            name.clone(),
            if filter.tenant_view {
                "-".into()
            } else {
                chain.records.to_string()
            },
            if chain.failure.is_none() {
                "yes".into()
            } else {
                "NO".into()
            },
            in_replica.to_string(),
            span.as_ref().map(|s| short(&s.0)).unwrap_or_default(),
            span.as_ref().map(|s| short(&s.1)).unwrap_or_default(),
        ]);
    }
    let heading = ReportHeading {
        title: "Audit trail summary".into(),
        lines: vec![
            format!("Filter: {}", filter.describe()),
            format!(
                "Logs: {}",
                replicas
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ],
        generated,
    };
    let summary = vec![
        format!("Matching records: {matched}; cross-organization among them: {cross_org}"),
        "The JSON-lines export (gateway audit export) carries the chain material; \
         gateway audit verify-excerpt checks it without the logs."
            .to_string(),
    ];
    let sections = vec![
        PdfSection {
            title: "Chains".into(),
            columns: ["log", "records", "verified", "matching", "before", "after"]
                .map(String::from)
                .to_vec(),
            rows: chains,
            chart: None,
        },
        PdfSection {
            title: "Decisions per tenant".into(),
            columns: ["tenant", "allowed", "refused"].map(String::from).to_vec(),
            rows: per_tenant
                .iter()
                .map(|(t, (a, d))| vec![t.clone(), a.to_string(), d.to_string()])
                .collect(),
            chart: Some((
                "Refused per tenant".into(),
                per_tenant
                    .iter()
                    .map(|(t, (_, d))| (t.clone(), *d as f64))
                    .collect(),
            )),
        },
        PdfSection {
            title: "Determining policies".into(),
            columns: ["policy", "decisions"].map(String::from).to_vec(),
            rows: policies
                .iter()
                .map(|(p, n)| vec![p.clone(), n.to_string()])
                .collect(),
            chart: Some((
                "Decisions per determining policy".into(),
                policies
                    .iter()
                    .map(|(p, n)| (p.clone(), *n as f64))
                    .collect(),
            )),
        },
    ];
    sections_pdf(&heading, &summary, &sections)
        .map_err(|e| ExcerptError::Io(std::io::Error::other(e)))
}

/// What a verified excerpt holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcerptReport {
    pub records: u64,
    pub links: u64,
    /// Of the first section.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// One per replica's log.
    pub sections: usize,
}

/// One section being checked: where its chain must go.
struct Section {
    header_line: usize,
    prev: Option<String>,
    next_seq: Option<u64>,
    after: Option<String>,
    entries: u64,
}

impl Section {
    fn close(&self) -> Result<(), ExcerptError> {
        if self.entries > 0 && self.prev != self.after {
            return Err(ExcerptError::Invalid {
                line: self.header_line,
                problem: "the section does not end at its header's `after` hash (records cut off)"
                    .into(),
            });
        }
        Ok(())
    }
}

/// Checks a JSON-lines excerpt (one section per replica): every record matches its hash, and
/// records and links chain from each header's `before` to its `after` with consecutive
/// sequence numbers.
pub fn verify_excerpt(reader: impl BufRead) -> Result<ExcerptReport, ExcerptError> {
    let invalid = |line: usize, problem: String| ExcerptError::Invalid { line, problem };
    let text = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).map(str::to_string);
    let mut report = ExcerptReport {
        records: 0,
        links: 0,
        first_seq: None,
        last_seq: None,
        sections: 0,
    };
    let mut section: Option<Section> = None;
    for (i, line) in reader.split(b'\n').enumerate() {
        let number = i + 1;
        // Bytes, not `lines()`: a line that is not UTF-8 is named by its number like any other.
        let entry: Value =
            serde_json::from_slice(&line?).map_err(|e| invalid(number, e.to_string()))?;
        let kind = entry.get("type").and_then(Value::as_str);
        if kind == Some("audit-excerpt") {
            if let Some(done) = section.take() {
                done.close()?;
            }
            if report.sections == 0 {
                report.first_seq = entry.get("first_seq").and_then(Value::as_u64);
                report.last_seq = entry.get("last_seq").and_then(Value::as_u64);
            }
            report.sections += 1;
            section = Some(Section {
                header_line: number,
                prev: text(&entry, "before"),
                next_seq: entry.get("first_seq").and_then(Value::as_u64),
                after: text(&entry, "after"),
                entries: 0,
            });
            continue;
        }
        let Some(current) = section.as_mut() else {
            return Err(invalid(
                number,
                "not an audit excerpt: no header first".into(),
            ));
        };
        let (seq, claimed_prev, hash) = match kind {
            Some("record") => {
                let logged = text(&entry, "line")
                    .ok_or_else(|| invalid(number, "a record without its line".into()))?;
                // Fields are read from the hashed text only: anything after the hash is an
                // edit (a repeated `tenant` or `decision` there would win in a JSON parser).
                let (body, hash) = crate::audit::hashed_parts(&logged).ok_or_else(|| {
                    invalid(
                        number,
                        "edited: the record does not end with its hash".into(),
                    )
                })?;
                let value: Value = serde_json::from_str(&body)
                    .map_err(|e| invalid(number, format!("the record is not JSON: {e}")))?;
                if hex::encode(Sha256::digest(body.as_bytes())) != hash {
                    return Err(invalid(
                        number,
                        "edited: the record does not match its hash".into(),
                    ));
                }
                report.records += 1;
                (
                    value.get("seq").and_then(Value::as_u64),
                    text(&value, "prev"),
                    hash,
                )
            }
            Some("link") => {
                report.links += 1;
                (
                    entry.get("seq").and_then(Value::as_u64),
                    text(&entry, "prev"),
                    text(&entry, "hash").unwrap_or_default(),
                )
            }
            _ => return Err(invalid(number, "neither a record nor a link".into())),
        };
        if seq != current.next_seq {
            return Err(invalid(
                number,
                format!(
                    "missing or reordered: expected record {:?}, found {seq:?}",
                    current.next_seq
                ),
            ));
        }
        if claimed_prev != current.prev {
            return Err(invalid(
                number,
                "chain broken: `prev` is not the hash of the record before".into(),
            ));
        }
        current.prev = Some(hash);
        current.next_seq = seq.map(|s| s + 1);
        current.entries += 1;
    }
    match section {
        Some(last) => last.close()?,
        None => return Err(invalid(1, "empty: no excerpt header".into())),
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditConfig, AuditEntry};

    async fn log_with(records: &[(&str, &str, bool)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let log = crate::audit::open(AuditConfig {
            dir: dir.path().to_path_buf(),
            segment_bytes: 1 << 20,
            segment_max_age: std::time::Duration::from_secs(3600),
            fsync: false,
            commit_delay: std::time::Duration::ZERO,
            buffer_bytes: 1 << 20,
        })
        .unwrap();
        for (tenant, action, allowed) in records {
            let data = json!({
                "tenant": tenant, "principal": "alice", "status": if *allowed { 200 } else { 403 },
                "principal_tenant": if *tenant == "globex" { Some("acme") } else { None },
                "decision": {"action": action, "resource": "Project::\"1\"", "allowed": allowed,
                             "policies": [if *allowed { "viewer-read" } else { "default-deny" }]},
                "rejection": if *allowed { Value::Null } else { json!("forbidden") },
            });
            log.record(AuditEntry::new("request", data)).await;
        }
        log.flush().unwrap();
        dir
    }

    #[tokio::test]
    async fn an_excerpt_holds_only_the_matches_and_verifies_on_its_own() {
        let dir = log_with(&[
            ("acme", "projects:read", true),
            ("globex", "projects:read", true),
            ("acme", "projects:delete", false),
            ("globex", "projects:delete", false),
            ("acme", "projects:read", true),
            ("globex", "projects:read", true),
        ])
        .await;
        let filter = AuditFilter {
            tenant: Some("acme".into()),
            ..Default::default()
        };
        let mut out = Vec::new();
        let summary = export_jsonl(dir.path(), &filter, &mut out).unwrap();
        assert_eq!(
            summary,
            ExportSummary {
                matched: 3,
                links: 2
            }
        );
        let text = String::from_utf8(out.clone()).unwrap();
        // globex's records are in it by hash only.
        assert!(!text.contains("globex"), "{text}");
        let report = verify_excerpt(std::io::Cursor::new(&out)).unwrap();
        assert_eq!((report.records, report.links), (3, 2));
        assert_eq!((report.first_seq, report.last_seq), (Some(0), Some(4)));

        // Any edit of a record is found ...
        let edited = text.replacen("projects:delete", "projects:read", 1);
        let error = verify_excerpt(std::io::Cursor::new(edited)).unwrap_err();
        assert!(error.to_string().contains("edited"), "{error}");
        // ... fields added after a record's hash too (they would win over the hashed ones
        // in a JSON parser: before, this verified and read as globex's allowed request) ...
        let lines: Vec<&str> = text.lines().collect();
        let mut entry: Value = serde_json::from_str(lines[1]).unwrap();
        let logged = entry["line"].as_str().unwrap().to_string();
        let appended = format!(
            "{},\"tenant\":\"globex\"}}",
            logged.strip_suffix('}').unwrap()
        );
        entry["line"] = Value::String(appended);
        let mut forged = lines.clone();
        let forged_line = entry.to_string();
        forged[1] = &forged_line;
        let error = verify_excerpt(std::io::Cursor::new(forged.join("\n"))).unwrap_err();
        assert!(error.to_string().contains("edited"), "{error}");
        // ... as is a record left out.
        let shortened = [lines[0], lines[1], lines[3], lines[4], lines[5]].join("\n");
        let error = verify_excerpt(std::io::Cursor::new(shortened)).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
        let truncated = lines[..4].join("\n");
        assert!(verify_excerpt(std::io::Cursor::new(truncated)).is_err());
        // A line that is not UTF-8 is named by its number, as any other damage is.
        let mut damaged = [lines[0], lines[1]].join("\n").into_bytes();
        damaged.extend_from_slice(b"\n\xff\xfe\n");
        damaged.extend_from_slice(lines[3].as_bytes());
        match verify_excerpt(std::io::Cursor::new(damaged)).unwrap_err() {
            ExcerptError::Invalid { line, .. } => assert_eq!(line, 3),
            other => panic!("{other}"),
        }

        // Filters: refusals by the default-deny policy, and CSV.
        let refusals = AuditFilter {
            allowed: Some(false),
            policy: Some("default-deny".into()),
            ..Default::default()
        };
        let mut csv = Vec::new();
        assert_eq!(
            export_csv(dir.path(), &refusals, &mut csv).unwrap().matched,
            2
        );
        let csv = String::from_utf8(csv).unwrap();
        assert!(csv.starts_with("seq,time,tenant,principal,"), "{csv}");
        assert!(csv.contains(",projects:delete,"), "{csv}");
        // alice is acme's: what she did at globex, allowed or not, is cross-organization.
        let cross = AuditFilter {
            cross_org: true,
            ..Default::default()
        };
        let mut out = Vec::new();
        assert_eq!(
            export_jsonl(dir.path(), &cross, &mut out).unwrap().matched,
            3
        );
        // Two replicas' logs: one section each, both verified; CSV merged by time.
        let other = log_with(&[("acme", "projects:read", true)]).await;
        let replicas = [
            ("a".to_string(), dir.path()),
            ("b".to_string(), other.path()),
        ];
        let acme = AuditFilter {
            tenant: Some("acme".into()),
            ..Default::default()
        };
        let mut out = Vec::new();
        assert_eq!(
            export_jsonl_replicas(&replicas, &acme, &mut out)
                .unwrap()
                .matched,
            4
        );
        let report = verify_excerpt(std::io::Cursor::new(&out)).unwrap();
        assert_eq!((report.sections, report.records), (2, 4));
        assert!(String::from_utf8_lossy(&out).contains("\"verified\":true"));
        let mut csv = Vec::new();
        export_csv_replicas(&replicas, &acme, &mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        let replica_column: Vec<&str> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap())
            .collect();
        // b's record was logged after all of a's.
        assert_eq!(replica_column, ["a", "a", "a", "b"], "{csv}");
        let pdf = summary_pdf(&replicas, &acme, 1_796_000_000).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        assert_eq!(pdf, summary_pdf(&replicas, &acme, 1_796_000_000).unwrap());
        let none = AuditFilter {
            tenant: Some("initech".into()),
            ..Default::default()
        };
        let mut out = Vec::new();
        assert_eq!(
            export_jsonl(dir.path(), &none, &mut out).unwrap().matched,
            0
        );
        assert_eq!(
            verify_excerpt(std::io::Cursor::new(out)).unwrap().records,
            0
        );
    }
}
