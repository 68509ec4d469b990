//! Usage metering for billing: one event per request, never lost, never counted twice.
//!
//! - A request about to be forwarded gets a *begin* record in the outbox first; the request
//!   waits for the (batched) write, so even a SIGKILL cannot lose a request the upstream may
//!   have seen. The *end* record (status, bytes, latency) follows off the request path.
//!   Refused requests get one *complete* record.
//! - Exporters read the outbox, assemble events and acknowledge per batch with a checkpoint;
//!   after a restart they resume from it. Begins whose process died before the end are exported
//!   as `interrupted` (revealed by the next process's boot record, so the same way every time).
//! - Every event has a unique id, the idempotency key all exporters send, so a redelivery after
//!   a crash is harmless (ledger unique constraint, `identifier`, CloudEvents `id`).

pub mod budgets;
pub mod exporters;
pub mod forecast;
pub mod outbox;
pub mod pricing;
pub mod report;

use crate::diagnostics::{SourceIssue, SourceText};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use outbox::{FsyncPolicy, OutboxRecord, RecordBody};

/// How a metered request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Forwarded and answered (any status).
    Completed,
    /// Refused by the gateway before forwarding.
    Rejected,
    /// Forwarded, but the gateway stopped before the response (status unknown).
    Interrupted,
}

/// What is known when a request is forwarded. The request path borrows its strings from the
/// request's state (a begin record is built, written and dropped at once); records read back
/// from the outbox own theirs (`EventStart<'static>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventStart<'a> {
    /// The idempotency key.
    pub id: Cow<'a, str>,
    /// RFC 3339.
    pub time: Cow<'a, str>,
    pub request_id: Cow<'a, str>,
    pub tenant: Option<Cow<'a, str>>,
    pub principal: Option<Cow<'a, str>>,
    pub action: Option<Cow<'a, str>>,
    pub route: Option<Cow<'a, str>>,
    pub method: Cow<'a, str>,
    pub region: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meters: Vec<String>,
    /// The tenant's tier when the request was served (what it is priced at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Cow<'a, str>>,
    /// The principal's chargeback attributes (`[metering.pricing] chargeback`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// What is known when it completes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnd {
    pub id: String,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upstream_latency_us: Option<u64>,
    pub region: Option<String>,
    /// Why the gateway refused the request after its begin record was written (e.g. no
    /// healthy upstream), before anything was sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One usage event, as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub id: String,
    pub time: String,
    pub request_id: String,
    pub tenant: Option<String>,
    pub principal: Option<String>,
    pub action: Option<String>,
    pub route: Option<String>,
    pub method: String,
    /// 0 when unknown (interrupted).
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upstream_latency_us: Option<u64>,
    pub region: Option<String>,
    pub outcome: Outcome,
    /// Why the gateway refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Custom meters the request counts towards (e.g. `documents-export`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meters: Vec<String>,
    /// The tenant's tier when the request was served (what it is priced at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The principal's chargeback attributes (`[metering.pricing] chargeback`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl UsageEvent {
    /// The event of a begin and its end (`None`: interrupted).
    pub fn from_parts(start: EventStart<'_>, end: Option<EventEnd>) -> Self {
        let start_region = start.region.map(Cow::into_owned);
        let (status, request_bytes, response_bytes, latency, region, outcome, reason) = match end {
            Some(e) => (
                e.status,
                e.request_bytes,
                e.response_bytes,
                e.upstream_latency_us,
                e.region.or(start_region),
                if e.reason.is_some() {
                    Outcome::Rejected
                } else {
                    Outcome::Completed
                },
                e.reason,
            ),
            None => (0, 0, 0, None, start_region, Outcome::Interrupted, None),
        };
        UsageEvent {
            id: start.id.into_owned(),
            time: start.time.into_owned(),
            request_id: start.request_id.into_owned(),
            tenant: start.tenant.map(Cow::into_owned),
            principal: start.principal.map(Cow::into_owned),
            action: start.action.map(Cow::into_owned),
            route: start.route.map(Cow::into_owned),
            method: start.method.into_owned(),
            status,
            request_bytes,
            response_bytes,
            upstream_latency_us: latency,
            region,
            outcome,
            reason,
            meters: start.meters,
            tier: start.tier.map(Cow::into_owned),
            attributes: start.attributes,
        }
    }

    /// Seconds since the epoch of `time`.
    pub fn epoch_secs(&self) -> u64 {
        humantime::parse_rfc3339_weak(&self.time)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// Turns outbox records into events. Feed records in offset order; events come out in the
/// order of the record that completed them, tagged with that record's offset.
#[derive(Debug, Default)]
pub struct Assembler {
    /// Begin offset → (boot, start).
    pending: BTreeMap<u64, (String, EventStart<'static>)>,
    by_id: HashMap<String, u64>,
}

/// An event as the outbox's records make it up.
#[derive(Debug, Clone, PartialEq)]
pub struct Assembled {
    /// The offset of the record that completed it (an end, a complete record, or the boot
    /// record that found it interrupted): what delivery is counted by.
    pub offset: u64,
    /// The offset of its first record (its begin): reading must resume there, or before, for
    /// the event to be assembled again.
    pub first: u64,
    pub event: UsageEvent,
}

impl Assembler {
    pub fn push(&mut self, record: OutboxRecord) -> Vec<Assembled> {
        let offset = record.offset;
        match record.body {
            RecordBody::Boot => {
                // Every begin of an earlier process without its end was interrupted.
                let stale: Vec<u64> = self
                    .pending
                    .iter()
                    .filter(|(_, (boot, _))| *boot != record.boot)
                    .map(|(o, _)| *o)
                    .collect();
                stale
                    .into_iter()
                    .filter_map(|o| Some((o, self.pending.remove(&o)?)))
                    .map(|(first, (_, start))| {
                        self.by_id.remove(&*start.id);
                        Assembled {
                            offset,
                            first,
                            event: UsageEvent::from_parts(start, None),
                        }
                    })
                    .collect()
            }
            RecordBody::Begin(start) => {
                self.by_id.insert(start.id.to_string(), offset);
                self.pending.insert(offset, (record.boot, *start));
                Vec::new()
            }
            RecordBody::End(end) => match self.by_id.remove(&end.id) {
                Some(begin) => match self.pending.remove(&begin) {
                    Some((_, start)) => vec![Assembled {
                        offset,
                        first: begin,
                        event: UsageEvent::from_parts(start, Some(end)),
                    }],
                    None => Vec::new(),
                },
                // Its begin was before the resume point and already delivered? No: begins are
                // kept until their end. An end without a begin is a duplicate: ignore it.
                None => Vec::new(),
            },
            RecordBody::Complete(event) => vec![Assembled {
                offset,
                first: offset,
                event: *event,
            }],
        }
    }

    /// Where reading must resume so no pending begin is lost: the oldest pending begin, else
    /// `next`.
    pub fn resume_from(&self, next: u64) -> u64 {
        self.pending
            .keys()
            .next()
            .copied()
            .unwrap_or(next)
            .min(next)
    }
}

/// `[metering]` in `gateway.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeteringConfig {
    /// Outbox directory. Relative to the config file.
    pub dir: PathBuf,
    #[serde(default = "default_fsync")]
    pub fsync: FsyncPolicy,
    #[serde(default = "default_fsync_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub fsync_interval: Duration,
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Records of finished (and refused) requests are written at most this long after the
    /// response, in batches; a begin record is always written before its request is forwarded.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub flush_interval: Duration,
    /// While the disk refuses writes, records are kept in memory up to this many bytes (and
    /// retried); beyond it, and whenever a begin record cannot be written, requests are
    /// refused with `503 metering-unavailable` rather than forwarded unmetered.
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: usize,
    /// Write a request's begin record before forwarding it (no event can be lost to a crash).
    /// Off: one record after the response, off the request path (a crash loses in-flight ones).
    #[serde(default = "default_true")]
    pub record_before_forward: bool,
    /// Label usage metrics with the tenant id (mind the cardinality).
    #[serde(default)]
    pub tenant_metrics: bool,
    /// Custom meters: requests of a route or action also count towards a named meter.
    #[serde(default)]
    pub meter: Vec<MeterRule>,
    #[serde(default)]
    pub exporter: Vec<exporters::ExporterConfig>,
    /// Prices that turn usage into cost in reports, and the attributes cost is charged back to.
    #[serde(default)]
    pub pricing: Option<pricing::PricingConfig>,
    /// How often spending-budget tallies are added to the shared counters in Redis (an
    /// enforced budget may be overspent by this much traffic per replica).
    #[serde(default = "default_budget_flush_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub budget_flush_interval: Duration,
    /// How often the budgets a replica serves are forecast to the end of their month (a
    /// projected overrun is announced once as `budget.forecast_exceeds`).
    #[serde(default = "default_budget_forecast_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub budget_forecast_interval: Duration,
    /// On a graceful shutdown (SIGTERM), once the last request is done and its records are
    /// written: how long to wait for the exporters to deliver everything in the outbox before
    /// the process exits (within what is left of `server.grace_period`). What is not delivered
    /// by then stays in the outbox for the next start — lost only when the outbox goes with the
    /// process (a pod's `emptyDir`). `0s`: exit at once.
    #[serde(default = "default_export_drain_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub export_drain_timeout: Duration,
}

impl MeteringConfig {
    /// The database and table of the PostgreSQL ledger exporter `name`, or why there is none.
    pub fn ledger(&self, name: &str) -> Result<(&crate::db::PostgresConfig, &str), String> {
        self.exporter
            .iter()
            .find_map(|e| match e {
                exporters::ExporterConfig::Postgres {
                    name: n,
                    database,
                    ledger_table,
                    ..
                } if n == name => Some((database, ledger_table.as_str())),
                _ => None,
            })
            .ok_or_else(|| format!("no postgres exporter named `{name}` in [metering]"))
    }

    /// Checks `[metering]`, all problems at once. `tiers`: the configured tier names.
    pub fn validate(
        &self,
        source: &SourceText,
        tiers: &std::collections::BTreeSet<&str>,
        issues: &mut Vec<SourceIssue>,
    ) {
        let mut names = std::collections::HashSet::new();
        for (i, exporter) in self.exporter.iter().enumerate() {
            let name = exporter.name();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                issues.push(source.issue(
                    format!("metering.exporter[{i}].name"),
                    "letters, digits, `-` and `_` only (it names the checkpoint file)",
                ));
            }
            if !names.insert(name.to_string()) {
                issues.push(source.issue(
                    format!("metering.exporter[{i}].name"),
                    format!("duplicate exporter `{name}`"),
                ));
            }
            exporter.validate(&format!("metering.exporter[{i}]"), source, issues);
        }
        for (i, meter) in self.meter.iter().enumerate() {
            if meter.action.is_none() && meter.route.is_none() {
                issues.push(source.issue(
                    format!("metering.meter[{i}]"),
                    "needs `action` and/or `route`",
                ));
            }
        }
        if let Some(pricing) = &self.pricing {
            let meters = self.meter.iter().map(|m| m.name.as_str()).collect();
            pricing.validate(source, &meters, tiers, issues);
        }
        if self.segment_bytes < 4096 {
            issues.push(source.issue("metering.segment_bytes", "at least 4096"));
        }
        crate::journal::check_bounds(
            source,
            "metering",
            "flush_interval",
            self.flush_interval,
            self.buffer_bytes,
            issues,
        );
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeterRule {
    pub name: String,
    /// Cedar action (e.g. `documents:export`).
    #[serde(default)]
    pub action: Option<String>,
    /// Route template (e.g. `/documents/{id}/export`).
    #[serde(default)]
    pub route: Option<String>,
}

/// Interval by default: a begin record then costs one buffered write (~tens of µs) and survives
/// a killed process; `batch` also survives an OS crash but the request waits for fsync
/// (~200 µs on the benchmark machine, see bench/results).
fn default_fsync() -> FsyncPolicy {
    FsyncPolicy::Interval
}
fn default_fsync_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_budget_forecast_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_budget_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_export_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_flush_interval() -> Duration {
    Duration::from_millis(10)
}
fn default_buffer_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_true() -> bool {
    true
}

/// What the proxy needs to meter requests.
pub struct Metering {
    pub outbox: std::sync::Arc<outbox::Outbox>,
    pub fields: EventFields,
    /// Spending budgets, charged as requests finish.
    pub budgets: Option<std::sync::Arc<budgets::Budgets>>,
    pub record_before_forward: bool,
    pub tenant_metrics: bool,
}

/// A UTC calendar month: what monthly budgets and quotas count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UtcMonth {
    /// `YYYYMM`.
    pub key: u32,
    /// Its first second (since the epoch).
    pub start: i64,
    /// The first second of the next month: when what counts in it resets.
    pub resets_at: i64,
}

impl UtcMonth {
    /// The month holding `secs` (seconds since the epoch).
    pub fn at(secs: i64) -> Option<UtcMonth> {
        let utc = jiff::tz::TimeZone::UTC;
        let date = jiff::Timestamp::from_second(secs)
            .ok()?
            .to_zoned(utc.clone())
            .date();
        let first = date.first_of_month();
        let next = first.checked_add(jiff::Span::new().months(1)).ok()?;
        let second =
            |d: jiff::civil::Date| Some(d.to_zoned(utc.clone()).ok()?.timestamp().as_second());
        Some(UtcMonth {
            key: u32::try_from(date.year()).ok()? * 100 + u32::try_from(date.month()).ok()?,
            start: second(first)?,
            resets_at: second(next)?,
        })
    }

    /// `2026-12`.
    pub fn label(&self) -> String {
        format!("{}-{:02}", self.key / 100, self.key % 100)
    }

    pub fn resets_at_rfc3339(&self) -> String {
        jiff::Timestamp::from_second(self.resets_at)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }
}

/// What each usage event records beyond the request itself.
#[derive(Debug, Clone, Default)]
pub struct EventFields {
    /// The custom meters requests count towards.
    pub meters: Vec<MeterRule>,
    /// Principal attributes recorded for chargeback.
    pub chargeback: Vec<String>,
}

/// The meters a request counts towards.
pub fn meters_for(rules: &[MeterRule], action: Option<&str>, route: Option<&str>) -> Vec<String> {
    rules
        .iter()
        .filter(|r| {
            (r.action.is_some() || r.route.is_some())
                && r.action.as_deref().is_none_or(|a| Some(a) == action)
                && r.route.as_deref().is_none_or(|t| Some(t) == route)
        })
        .map(|r| r.name.clone())
        .collect()
}

/// The chargeback attributes of a principal: each of `names` its attributes hold as a string,
/// number or boolean (other values say nothing a bill could be charged to).
pub fn chargeback_attributes(
    names: &[String],
    attributes: &serde_json::Map<String, serde_json::Value>,
) -> BTreeMap<String, String> {
    names
        .iter()
        .filter_map(|name| Some((name.clone(), attribute_text(attributes.get(name)?)?)))
        .collect()
}

/// An attribute as chargeback records it: a string, number or boolean as text.
pub fn attribute_text(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) => Some(s.clone()),
        v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn start(id: &str) -> EventStart<'static> {
        EventStart {
            id: id.to_string().into(),
            time: "2026-11-23T10:00:00Z".into(),
            request_id: "r".into(),
            tenant: Some("acme".into()),
            principal: None,
            action: None,
            route: None,
            method: "GET".into(),
            region: Some("eu-central".into()),
            meters: vec![],
            tier: Some("pro".into()),
            attributes: BTreeMap::new(),
        }
    }

    fn rec(offset: u64, boot: &str, body: RecordBody) -> OutboxRecord {
        OutboxRecord {
            offset,
            boot: boot.into(),
            body,
        }
    }

    pub(super) fn end(id: &str) -> EventEnd {
        EventEnd {
            id: id.into(),
            status: 200,
            request_bytes: 1,
            response_bytes: 2,
            upstream_latency_us: Some(5),
            region: Some("eu-west".into()),
            reason: None,
        }
    }

    #[test]
    fn assembles_begin_end_and_reveals_interrupted_ones_at_the_next_boot() {
        let mut a = Assembler::default();
        assert!(a.push(rec(0, "b1", RecordBody::Boot)).is_empty());
        assert!(a
            .push(rec(1, "b1", RecordBody::Begin(Box::new(start("e1")))))
            .is_empty());
        assert!(a
            .push(rec(2, "b1", RecordBody::Begin(Box::new(start("e2")))))
            .is_empty());
        assert_eq!(a.resume_from(3), 1);
        let done = a.push(rec(3, "b1", RecordBody::End(end("e1"))));
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].offset, done[0].first), (3, 1));
        assert_eq!(done[0].event.outcome, Outcome::Completed);
        assert_eq!(done[0].event.region.as_deref(), Some("eu-west"));
        assert_eq!(a.resume_from(4), 2);
        // The process died; the next one boots.
        let interrupted = a.push(rec(4, "b2", RecordBody::Boot));
        assert_eq!(interrupted.len(), 1);
        assert_eq!(
            (
                interrupted[0].offset,
                interrupted[0].first,
                interrupted[0].event.outcome
            ),
            (4, 2, Outcome::Interrupted)
        );
        assert_eq!(interrupted[0].event.id, "e2");
        assert_eq!(a.resume_from(5), 5);
        // A duplicate end is ignored.
        assert!(a.push(rec(5, "b2", RecordBody::End(end("e1")))).is_empty());
    }

    /// An exporter's resume point with undelivered events in its backlog: a restart reading
    /// from it assembles each of them again. Before, it resumed at the first backlog event's
    /// end record, whose begin was behind it: the end was taken for a duplicate and the event
    /// (here e1, begun first and ended last) was never delivered — lost to billing.
    #[test]
    fn an_exporter_resumes_where_its_undelivered_events_begin() {
        let records = || {
            vec![
                rec(0, "b1", RecordBody::Boot),
                rec(1, "b1", RecordBody::Begin(Box::new(start("e1")))),
                rec(2, "b1", RecordBody::Begin(Box::new(start("e2")))),
                rec(3, "b1", RecordBody::End(end("e2"))),
                rec(4, "b1", RecordBody::End(end("e1"))),
            ]
        };
        let mut assembler = Assembler::default();
        let mut backlog: Vec<Assembled> = records()
            .into_iter()
            .flat_map(|r| assembler.push(r))
            .collect();
        assert_eq!(backlog.len(), 2);
        // e2 delivered (a batch of one), e1 not yet; then the process stops.
        let delivered = backlog.remove(0);
        assert_eq!(delivered.event.id, "e2");
        let resume = super::exporters::resume_point(&assembler, &backlog, 5);
        let mut restarted = Assembler::default();
        let again: Vec<String> = records()
            .into_iter()
            .filter(|r| r.offset >= resume)
            .flat_map(|r| restarted.push(r))
            .filter(|a| a.offset > delivered.offset)
            .map(|a| a.event.id.to_string())
            .collect();
        assert_eq!(again, vec!["e1".to_string()], "resumed at {resume}");
    }

    #[test]
    fn custom_meters_match_action_or_route() {
        let rules = vec![
            MeterRule {
                name: "exports".into(),
                action: Some("documents:export".into()),
                route: None,
            },
            MeterRule {
                name: "uploads".into(),
                action: None,
                route: Some("/documents".into()),
            },
        ];
        assert_eq!(
            meters_for(
                &rules,
                Some("documents:export"),
                Some("/documents/{id}/export")
            ),
            vec!["exports"]
        );
        assert_eq!(
            meters_for(&rules, Some("documents:create"), Some("/documents")),
            vec!["uploads"]
        );
        assert!(meters_for(&rules, None, None).is_empty());
    }
}
