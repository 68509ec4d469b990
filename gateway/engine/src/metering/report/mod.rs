//! Usage reports: requests, rejections, bytes and cost per period, grouped by the dimensions a
//! reader asks for (tenant, action, route, region, tier, principal, or a chargeback attribute
//! such as `cost_center`). Computed from the outbox (always on the replica, read as a stream,
//! never held in memory) or from the PostgreSQL ledger (every replica's events), priced with
//! `[metering.pricing]` when it is configured.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rust_decimal::Decimal;
use serde_json::Value;

mod pdf;
mod rows;
mod xlsx;

pub use pdf::{digest_pdf, pdf_digest, sections_pdf, to_pdf, PdfSection, ReportHeading};
pub use rows::{
    write_csv, write_json, write_json_document, write_report, ReportDigest, ReportError,
    ReportFormat, ReportRows,
};
pub use xlsx::{to_xlsx, xlsx_workbook};

use super::outbox::OutboxCursor;
use super::pricing::{PriceList, Tally};
use super::{Assembled, Assembler, Outcome, UsageEvent};

/// The period usage is summed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    fn seconds(self) -> u64 {
        match self {
            Bucket::Hour => 3600,
            Bucket::Day => 86_400,
        }
    }
}

/// What a report's rows are grouped by, besides the period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimension {
    Tenant,
    Action,
    Route,
    Region,
    Tier,
    Principal,
    /// A chargeback attribute recorded on each event (`attribute:cost_center`).
    Attribute(String),
}

impl Dimension {
    /// `tenant`, `action`, `route`, `region`, `tier`, `principal` or `attribute:<name>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text.trim() {
            "tenant" => Dimension::Tenant,
            "action" => Dimension::Action,
            "route" => Dimension::Route,
            "region" => Dimension::Region,
            "tier" => Dimension::Tier,
            "principal" => Dimension::Principal,
            other => match other.strip_prefix("attribute:") {
                Some(name) if !name.is_empty() => Dimension::Attribute(name.to_string()),
                _ => {
                    return Err(format!(
                        "`{other}`: group by tenant, action, route, region, tier, principal \
                         or attribute:<name>"
                    ))
                }
            },
        })
    }

    /// A comma-separated list of dimensions (`tenant,attribute:cost_center`).
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        let dimensions = text
            .split(',')
            .map(Dimension::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if dimensions.is_empty() {
            return Err("group by at least one dimension".into());
        }
        Ok(dimensions)
    }

    /// Its column name in a report.
    pub fn column(&self) -> &str {
        match self {
            Dimension::Tenant => "tenant",
            Dimension::Action => "action",
            Dimension::Route => "route",
            Dimension::Region => "region",
            Dimension::Tier => "tier",
            Dimension::Principal => "principal",
            Dimension::Attribute(name) => name,
        }
    }

    fn value_of<'a>(&self, facts: &Facts<'a>) -> Option<&'a str> {
        match self {
            Dimension::Tenant => facts.tenant,
            Dimension::Action => facts.action,
            Dimension::Route => facts.route,
            Dimension::Region => facts.region,
            Dimension::Tier => facts.tier,
            Dimension::Principal => facts.principal,
            Dimension::Attribute(name) => facts.attributes.get(name).map(String::as_str),
        }
    }
}

/// The default grouping: per tenant and action.
pub fn default_dimensions() -> Vec<Dimension> {
    vec![Dimension::Tenant, Dimension::Action]
}

#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub tenant: Option<String>,
    pub from: SystemTime,
    pub to: SystemTime,
    pub bucket: Bucket,
    /// Rows per period and per value of these (e.g. tenant and action).
    pub by: Vec<Dimension>,
    /// Only events whose chargeback attribute has this value (a cost centre's report).
    pub attribute: Option<(String, String)>,
}

/// `NAME=VALUE`: the chargeback attribute a report is limited to.
pub fn parse_attribute_filter(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!(
            "`{text}`: limit to one attribute value as NAME=VALUE (e.g. cost_center=cc-17)"
        )),
    }
}

/// What is counted for a group of events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub rejected: u64,
    pub interrupted: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl Counts {
    pub(crate) const COLUMNS: [&'static str; 5] = [
        "requests",
        "rejected",
        "interrupted",
        "request_bytes",
        "response_bytes",
    ];

    pub(crate) fn values(&self) -> [u64; 5] {
        [
            self.requests,
            self.rejected,
            self.interrupted,
            self.request_bytes,
            self.response_bytes,
        ]
    }

    fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.rejected = self.rejected.saturating_add(other.rejected);
        self.interrupted = self.interrupted.saturating_add(other.interrupted);
        self.request_bytes = self.request_bytes.saturating_add(other.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(other.response_bytes);
    }

    /// Requests that went upstream (completed or interrupted): the billable ones.
    pub fn forwarded(&self) -> u64 {
        self.requests.saturating_sub(self.rejected)
    }
}

/// One row: a period and one value per dimension of the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    /// Start of the hour or day (RFC 3339, UTC).
    pub period: String,
    /// One per dimension, `-` where an event had none.
    pub keys: Vec<String>,
    pub counts: Counts,
    /// With a price list.
    pub cost: Option<Decimal>,
}

/// Totals of one value of a report's first dimension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Total {
    pub counts: Counts,
    pub cost: Option<Decimal>,
}

impl Total {
    fn add(&mut self, row: &ReportRow) {
        self.counts.add(&row.counts);
        if let Some(cost) = row.cost {
            *self.cost.get_or_insert(Decimal::ZERO) += cost;
        }
    }
}

/// A finished report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The dimensions' column names.
    pub columns: Vec<String>,
    /// Of `cost`, when priced.
    pub currency: Option<String>,
    pub rows: Vec<ReportRow>,
}

/// Usage facts of one event or of a group of events that share every field a report reads.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub epoch_secs: u64,
    pub tenant: Option<&'a str>,
    pub action: Option<&'a str>,
    pub route: Option<&'a str>,
    pub region: Option<&'a str>,
    pub tier: Option<&'a str>,
    pub principal: Option<&'a str>,
    pub attributes: &'a BTreeMap<String, String>,
    pub meters: &'a [String],
    pub counts: Counts,
}

impl<'a> Facts<'a> {
    /// What a price list charges for these facts.
    pub fn tally(&self) -> Tally<'a> {
        Tally {
            tier: self.tier,
            action: self.action,
            route: self.route,
            meters: self.meters,
            forwarded: self.counts.forwarded(),
            request_bytes: self.counts.request_bytes,
            response_bytes: self.counts.response_bytes,
        }
    }

    pub fn of(event: &'a UsageEvent) -> Self {
        Facts {
            epoch_secs: event.epoch_secs(),
            tenant: event.tenant.as_deref(),
            action: event.action.as_deref(),
            route: event.route.as_deref(),
            region: event.region.as_deref(),
            tier: event.tier.as_deref(),
            principal: event.principal.as_deref(),
            attributes: &event.attributes,
            meters: &event.meters,
            counts: Counts {
                requests: 1,
                rejected: u64::from(event.outcome == Outcome::Rejected),
                interrupted: u64::from(event.outcome == Outcome::Interrupted),
                request_bytes: event.request_bytes,
                response_bytes: event.response_bytes,
            },
        }
    }
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn period_start(secs: u64, bucket: Bucket) -> String {
    let start = secs - secs % bucket.seconds();
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(start))
        .to_string()
}

/// Rows a command-line report holds in memory before it spills them to a temporary file
/// (about 170 bytes each with two dimensions, so some 45 MiB: `report-bench`'s reports of
/// 1 M events peak 43 MiB above a report of 730 rows).
pub const ROWS_IN_MEMORY: usize = 262_144;

/// Sums facts into rows; memory grows with the number of rows, not of events, and with
/// [`Aggregator::spill_beyond`] stays bounded however many rows there are.
pub struct Aggregator<'q> {
    query: &'q ReportQuery,
    prices: Option<&'q PriceList>,
    from: u64,
    to: u64,
    rows: BTreeMap<rows::RowKey, rows::RowSums>,
    values: rows::Interner,
    /// The key of the fact being added, reused so that a fact of an existing row allocates
    /// nothing.
    scratch: rows::RowKey,
    spill: Option<rows::Spill>,
    /// A spill that failed: the report fails with it, and nothing more is summed.
    failed: Option<ReportError>,
}

impl<'q> Aggregator<'q> {
    pub fn new(query: &'q ReportQuery, prices: Option<&'q PriceList>) -> Self {
        Aggregator {
            query,
            prices,
            from: epoch(query.from),
            to: epoch(query.to),
            rows: BTreeMap::new(),
            values: rows::Interner::default(),
            scratch: (0, query.by.iter().map(|_| Arc::from("-")).collect()),
            spill: None,
            failed: None,
        }
    }

    /// Holds at most `max_rows` rows in memory: beyond that they are written, sorted, to a
    /// run file in the temporary directory (`TMPDIR`), merged when the rows are read.
    pub fn spill_beyond(mut self, max_rows: usize) -> Self {
        self.spill = Some(rows::Spill::new(max_rows));
        self
    }

    pub fn add(&mut self, facts: &Facts<'_>) {
        let t = facts.epoch_secs;
        if t < self.from || t >= self.to || self.failed.is_some() {
            return;
        }
        if let Some(wanted) = &self.query.tenant {
            if facts.tenant.unwrap_or("-") != wanted {
                return;
            }
        }
        if let Some((name, value)) = &self.query.attribute {
            if facts.attributes.get(name) != Some(value) {
                return;
            }
        }
        self.scratch.0 = t - t % self.query.bucket.seconds();
        for (slot, dimension) in self.scratch.1.iter_mut().zip(&self.query.by) {
            *slot = self.values.get(dimension.value_of(facts).unwrap_or("-"));
        }
        let cost = self.prices.map(|p| p.cost(&facts.tally()));
        let add = |row: &mut rows::RowSums| {
            row.0.add(&facts.counts);
            if let Some(cost) = cost {
                row.1 += cost;
            }
        };
        match self.rows.get_mut(&self.scratch) {
            Some(row) => add(row),
            None => {
                let mut row = rows::RowSums::default();
                add(&mut row);
                self.rows.insert(self.scratch.clone(), row);
            }
        }
        if let Some(spill) = &mut self.spill {
            if self.rows.len() >= spill.max_rows {
                if let Err(e) = spill.write_run(std::mem::take(&mut self.rows)) {
                    self.failed = Some(e);
                }
                self.values.clear();
            }
        }
    }

    pub fn add_event(&mut self, event: &UsageEvent) {
        self.add(&Facts::of(event));
    }

    /// The rows, in order of period and then the dimensions' values.
    pub fn into_rows(self) -> Result<ReportRows, ReportError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        ReportRows::merge(
            self.query
                .by
                .iter()
                .map(|d| d.column().to_string())
                .collect(),
            self.prices.map(|p| p.currency.clone()),
            self.query.bucket,
            self.rows,
            self.spill,
        )
    }

    /// Every row in a [`Report`].
    pub fn finish(self) -> Result<Report, ReportError> {
        self.into_rows()?.collect_report()
    }
}

/// Aggregates events into a report.
pub fn aggregate<'a>(
    events: impl IntoIterator<Item = &'a UsageEvent>,
    query: &ReportQuery,
    prices: Option<&PriceList>,
) -> Result<Report, ReportError> {
    let mut aggregator = Aggregator::new(query, prices);
    for event in events {
        aggregator.add_event(event);
    }
    aggregator.finish()
}

/// How far a long report has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Usage events read so far.
    pub events: u64,
}

/// A report over the outbox in `dir`, read as a stream; `progress` hears every few thousand
/// events.
pub fn outbox_report(
    dir: &Path,
    query: &ReportQuery,
    prices: Option<&PriceList>,
    progress: impl FnMut(Progress),
) -> Result<Report, ReportError> {
    outbox_rows(Aggregator::new(query, prices), dir, progress)?.collect_report()
}

/// The rows of `aggregator` over the outbox in `dir`, read as a stream; `progress` hears
/// every few thousand events.
pub fn outbox_rows(
    mut aggregator: Aggregator<'_>,
    dir: &Path,
    mut progress: impl FnMut(Progress),
) -> Result<ReportRows, ReportError> {
    let mut events = 0u64;
    for_each_outbox_event(dir, |event| {
        aggregator.add_event(&event);
        events += 1;
        if events.is_multiple_of(65_536) {
            progress(Progress { events });
        }
    })?;
    progress(Progress { events });
    aggregator.into_rows()
}

/// Calls `each` with every event of the outbox in `dir`, in order, holding none of them. A
/// damaged line is logged and passed over, as the exporters do (the cursor has moved past
/// it); any other error ends the scan.
pub fn for_each_outbox_event(
    dir: &Path,
    mut each: impl FnMut(UsageEvent),
) -> Result<(), super::outbox::OutboxError> {
    let mut cursor = OutboxCursor::new(dir, 0);
    let mut assembler = Assembler::default();
    loop {
        let records = match cursor.read(4096) {
            Ok(records) => records,
            Err(damaged @ super::outbox::OutboxError::Damaged { .. }) => {
                tracing::warn!(error = %damaged, "usage report: a damaged outbox line is left out");
                continue;
            }
            Err(error) => return Err(error),
        };
        if records.is_empty() {
            return Ok(());
        }
        for r in records {
            for Assembled { event, .. } in assembler.push(r) {
                each(event);
            }
        }
    }
}

/// Every event of the outbox in `dir` (a full scan, held in memory: for tests and small tools).
pub fn outbox_events(dir: &Path) -> Result<Vec<UsageEvent>, super::outbox::OutboxError> {
    let mut events = Vec::new();
    for_each_outbox_event(dir, |e| events.push(e))?;
    Ok(events)
}

/// A report from a PostgreSQL ledger table: the database sums events that share every field
/// the report reads; the price list prices those groups.
pub async fn ledger_report(
    config: &crate::db::PostgresConfig,
    table: &str,
    query: &ReportQuery,
    prices: Option<&PriceList>,
) -> Result<Report, ReportError> {
    ledger_rows(Aggregator::new(query, prices), config, table)
        .await?
        .collect_report()
}

/// The rows of `aggregator` over a PostgreSQL ledger table.
pub async fn ledger_rows(
    mut aggregator: Aggregator<'_>,
    config: &crate::db::PostgresConfig,
    table: &str,
) -> Result<ReportRows, ReportError> {
    let query = aggregator.query;
    ledger_facts(config, table, query, |facts| aggregator.add(facts))
        .await
        .map_err(ReportError::Ledger)?;
    aggregator.into_rows()
}

/// The events of a PostgreSQL ledger table in the query's period, summed by the database per
/// `query.bucket` and every field reports and prices read, one [`Facts`] per group.
pub async fn ledger_facts(
    config: &crate::db::PostgresConfig,
    table: &str,
    query: &ReportQuery,
    mut each: impl FnMut(&Facts<'_>),
) -> Result<(), String> {
    if !crate::tenancy::postgres::is_identifier(table) {
        return Err(format!("`{table}` is not a valid table name"));
    }
    let client = crate::db::connect_config(config, None)
        .await
        .map_err(|e| e.to_string())?;
    // Older ledgers lack the pricing columns: add them (as the exporter does) before reading.
    client
        .batch_execute(&super::exporters::ledger_ddl(table))
        .await
        .map_err(|e| e.to_string())?;
    let unit = match query.bucket {
        Bucket::Hour => "hour",
        Bucket::Day => "day",
    };
    let principal = if query.by.contains(&Dimension::Principal) {
        "principal"
    } else {
        "NULL::text"
    };
    let sql = format!(
        "SELECT extract(epoch FROM date_trunc('{unit}', occurred_at AT TIME ZONE 'UTC'))::bigint, \
         tenant, action, route, region, tier, {principal}, attributes::text, meters::text, count(*), \
         count(*) FILTER (WHERE outcome = 'rejected'), count(*) FILTER (WHERE outcome = 'interrupted'), \
         coalesce(sum(request_bytes), 0)::bigint, coalesce(sum(response_bytes), 0)::bigint \
         FROM {table} WHERE occurred_at >= to_timestamp($1) AND occurred_at < to_timestamp($2) \
         AND ($3::text IS NULL OR tenant = $3) GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9"
    );
    let rows = client
        .query(
            &sql,
            &[
                &(epoch(query.from) as f64),
                &(epoch(query.to) as f64),
                &query.tenant,
            ],
        )
        .await
        .map_err(|e| e.to_string())?;
    for row in &rows {
        let text = |i: usize| row.get::<_, Option<String>>(i);
        let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        let (tenant, action, route, region, tier, principal) =
            (text(1), text(2), text(3), text(4), text(5), text(6));
        let attributes: BTreeMap<String, String> = text(7)
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let meters: Vec<String> = text(8)
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        each(&Facts {
            epoch_secs: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            tenant: tenant.as_deref(),
            action: action.as_deref(),
            route: route.as_deref(),
            region: region.as_deref(),
            tier: tier.as_deref(),
            principal: principal.as_deref(),
            attributes: &attributes,
            meters: &meters,
            counts: Counts {
                requests: count(9),
                rejected: count(10),
                interrupted: count(11),
                request_bytes: count(12),
                response_bytes: count(13),
            },
        });
    }
    Ok(())
}

/// A cost as reports print it: exact, at most 10 decimal places, no trailing zeros.
pub fn format_cost(cost: Decimal) -> String {
    cost.round_dp(10).normalize().to_string()
}

impl Report {
    /// Totals, the first `keep` rows and the row count.
    pub fn digest(&self, keep: usize) -> ReportDigest {
        let mut digest = ReportDigest::new(self.columns.clone(), self.currency.clone());
        for row in &self.rows {
            digest.add(row, keep);
        }
        digest
    }

    /// The sum of every row.
    pub fn grand_total(&self) -> Total {
        self.digest(0).grand
    }

    /// The rows as JSON objects (one key per column; cost as an exact decimal string).
    pub fn json_rows(&self) -> Vec<Value> {
        self.rows
            .iter()
            .map(|row| rows::json_row(&self.columns, self.currency.as_deref(), row))
            .collect()
    }
}

/// A text cell of a CSV export that a spreadsheet will not run: a value starting with `=`, `+`,
/// `-`, `@`, tab or carriage return (a formula to Excel, LibreOffice and Sheets) gets a leading
/// `'`. Principal ids, attribute values and paths come from tenants' tokens and requests, so
/// a subject `=HYPERLINK(…)` would otherwise run in the operator's spreadsheet.
pub fn inert_cell(value: String) -> String {
    let runs = match value.chars().next() {
        Some('=' | '@' | '\t' | '\r') => true,
        // A sign starts a formula unless the cell is a number, or the sign alone (the
        // reports' "none" is `-`).
        Some('+' | '-') => value.len() > 1 && value.parse::<f64>().is_err(),
        _ => false,
    };
    if runs {
        format!("'{value}")
    } else {
        value
    }
}

/// The report as CSV text.
pub fn to_csv(report: &Report) -> Result<String, String> {
    let mut bytes = Vec::new();
    write_csv(ReportRows::of(report.clone()), &mut bytes)?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// The bound of a report period: an RFC 3339 time, or a date meaning its midnight UTC (the
/// CLI and the admin API read periods the same way).
pub fn parse_time(value: &str) -> Result<std::time::SystemTime, String> {
    let full = if value.len() == 10 {
        format!("{value}T00:00:00Z")
    } else {
        value.to_string()
    };
    humantime::parse_rfc3339_weak(&full)
        .map_err(|e| format!("`{value}`: {e} (expected e.g. 2026-11-23 or 2026-11-23T10:00:00Z)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(tenant: Option<&str>, bucket: Bucket, by: &str) -> ReportQuery {
        ReportQuery {
            tenant: tenant.map(str::to_string),
            from: humantime::parse_rfc3339("2026-11-23T00:00:00Z").unwrap(),
            to: humantime::parse_rfc3339("2026-11-24T00:00:00Z").unwrap(),
            bucket,
            by: Dimension::parse_list(by).unwrap(),
            attribute: None,
        }
    }

    fn event(time: &str, tenant: &str, action: &str, outcome: Outcome) -> UsageEvent {
        UsageEvent {
            id: uuid::Uuid::now_v7().to_string(),
            time: time.into(),
            request_id: "r".into(),
            tenant: Some(tenant.into()),
            principal: None,
            action: Some(action.into()),
            route: None,
            method: "GET".into(),
            status: 200,
            request_bytes: 10,
            response_bytes: 100,
            upstream_latency_us: None,
            region: None,
            outcome,
            reason: None,
            meters: vec![],
            tier: Some("free".into()),
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn csv_cells_that_spreadsheets_would_run_are_made_text() {
        for formula in ["=HYPERLINK(\"x\")", "+A1", "-1+2", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(inert_cell(formula.into()), format!("'{formula}"));
        }
        for text in ["alice", "/projects/42", "", "a=b", "-", "-5", "+1.5"] {
            assert_eq!(inert_cell(text.into()), text);
        }
    }

    #[test]
    fn aggregates_per_period_tenant_and_action() {
        let events = vec![
            event(
                "2026-11-23T10:05:00Z",
                "acme",
                "projects:read",
                Outcome::Completed,
            ),
            event(
                "2026-11-23T10:59:59Z",
                "acme",
                "projects:read",
                Outcome::Rejected,
            ),
            event(
                "2026-11-23T11:00:00Z",
                "acme",
                "projects:read",
                Outcome::Interrupted,
            ),
            event(
                "2026-11-23T10:30:00Z",
                "globex",
                "projects:read",
                Outcome::Completed,
            ),
            event(
                "2026-11-24T10:30:00Z",
                "acme",
                "projects:read",
                Outcome::Completed,
            ),
        ];
        let q = query(Some("acme"), Bucket::Hour, "tenant,action");
        let report = aggregate(&events, &q, None).unwrap();
        let rows = &report.rows;
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].period.as_str(),
                rows[0].counts.requests,
                rows[0].counts.rejected
            ),
            ("2026-11-23T10:00:00Z", 2, 1)
        );
        assert_eq!(
            (
                rows[1].counts.requests,
                rows[1].counts.interrupted,
                rows[1].counts.response_bytes
            ),
            (1, 1, 100)
        );
        let csv = to_csv(&report).unwrap();
        assert!(
            csv.starts_with(
                "period,tenant,action,requests,rejected,interrupted,request_bytes,response_bytes\n"
            ),
            "{csv}"
        );
        let daily = aggregate(&events, &query(None, Bucket::Day, "tenant"), None).unwrap();
        assert_eq!(daily.grand_total().counts.requests, 4);
    }

    #[test]
    fn cost_per_chargeback_attribute_at_each_events_tier() {
        let prices = super::super::pricing::PriceList::new(
            &toml::from_str(
                r#"
                currency = "EUR"
                chargeback = ["cost_center"]
                [[item]]
                name = "requests"
                unit_price = "0.001"
                tiers = { pro = "0.0005" }
                "#,
            )
            .unwrap(),
        )
        .unwrap();
        let mut events = Vec::new();
        for (i, (center, tier, outcome)) in [
            ("cc-1", "free", Outcome::Completed),
            ("cc-1", "pro", Outcome::Completed),
            ("cc-1", "pro", Outcome::Interrupted),
            ("cc-2", "free", Outcome::Completed),
            ("cc-2", "free", Outcome::Rejected),
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = event(
                &format!("2026-11-23T10:0{i}:00Z"),
                "acme",
                "projects:read",
                outcome,
            );
            e.tier = Some(tier.into());
            e.attributes.insert("cost_center".into(), center.into());
            events.push(e);
        }
        events.push(event(
            "2026-11-23T10:09:00Z",
            "acme",
            "projects:read",
            Outcome::Completed,
        ));
        let report = aggregate(
            &events,
            &query(None, Bucket::Day, "attribute:cost_center"),
            Some(&prices),
        )
        .unwrap();
        let costs: Vec<(String, String)> = report
            .rows
            .iter()
            .map(|r| (r.keys[0].clone(), format_cost(r.cost.unwrap())))
            .collect();
        // cc-1: 0.001 + 0.0005 + 0.0005 (interrupted is billed); cc-2: the refusal is free;
        // the event without the attribute is its own group.
        assert_eq!(
            costs,
            [
                ("-".to_string(), "0.001".to_string()),
                ("cc-1".to_string(), "0.002".to_string()),
                ("cc-2".to_string(), "0.001".to_string()),
            ]
        );
        assert_eq!(format_cost(report.grand_total().cost.unwrap()), "0.004");
        let csv = to_csv(&report).unwrap();
        assert!(csv.starts_with("period,cost_center,requests,"), "{csv}");
        assert!(csv.contains(",0.002,EUR\n"), "{csv}");
        let json = report.json_rows();
        assert_eq!(json[1]["cost_center"], "cc-1");
        assert_eq!(json[1]["cost"], "0.002");
        // A cost centre's own report.
        let mut only = query(None, Bucket::Day, "tenant");
        only.attribute = Some(parse_attribute_filter("cost_center=cc-1").unwrap());
        let cc1 = aggregate(&events, &only, Some(&prices)).unwrap();
        assert_eq!(format_cost(cc1.grand_total().cost.unwrap()), "0.002");
        assert!(parse_attribute_filter("cc-1").is_err());
        assert!(Dimension::parse("attribute:").is_err());
        assert!(Dimension::parse("colour").is_err());
    }

    #[test]
    fn rows_share_their_dimension_values_until_spilled() {
        // 60 events: 5 tenants x 3 actions x 4 hours = 60 rows, 8 distinct values.
        let events: Vec<_> = (0..60u32)
            .map(|i| {
                let tenant = ["acme", "globex", "initech", "hooli", "umbrella"][(i % 5) as usize];
                let action = ["read", "update", "delete"][(i % 3) as usize];
                let hour = (i / 15) % 4;
                event(
                    &format!("2026-11-23T{hour:02}:00:00Z"),
                    tenant,
                    action,
                    Outcome::Completed,
                )
            })
            .collect();
        let q = query(None, Bucket::Hour, "tenant,action");
        let mut held = Aggregator::new(&q, None);
        events.iter().for_each(|e| held.add_event(e));
        assert_eq!(held.rows.len(), 60);
        assert_eq!(held.values.len(), 8);
        let acme: Vec<_> = held
            .rows
            .keys()
            .filter(|(_, keys)| &*keys[0] == "acme")
            .map(|(_, keys)| Arc::clone(&keys[0]))
            .collect();
        assert_eq!(acme.len(), 12);
        assert!(acme.iter().all(|value| Arc::ptr_eq(value, &acme[0])));
        // A spill lets go of the values with the rows; those added after it are held anew.
        // After the spill at 57 rows, three events: initech, hooli, umbrella x three actions.
        let mut spilling = Aggregator::new(&q, None).spill_beyond(57);
        events.iter().for_each(|e| spilling.add_event(e));
        assert_eq!(spilling.rows.len(), 3);
        assert_eq!(spilling.values.len(), 6);
        assert_eq!(
            spilling.into_rows().unwrap().collect_report().unwrap(),
            held.finish().unwrap()
        );
    }

    #[test]
    fn rows_spilled_to_disk_come_out_merged_as_if_held_in_memory() {
        let prices = super::super::pricing::PriceList::new(
            &toml::from_str(
                r#"
                currency = "EUR"
                [[item]]
                name = "requests"
                unit_price = "0.0001"
                "#,
            )
            .unwrap(),
        )
        .unwrap();
        // 600 events over 24 hours, 5 tenants and 3 actions, out of time order (as a
        // replica's interrupted begins arrive late): up to 360 distinct rows.
        let mut events = Vec::new();
        for i in 0..600u32 {
            let hour = (i * 7) % 24;
            let tenant = ["acme", "globex", "initech", "hooli", "umbrella"][(i % 5) as usize];
            let action = ["read", "update", "delete"][(i % 3) as usize];
            let outcome = if i % 11 == 0 {
                Outcome::Rejected
            } else {
                Outcome::Completed
            };
            events.push(event(
                &format!("2026-11-23T{hour:02}:{:02}:00Z", i % 60),
                tenant,
                action,
                outcome,
            ));
        }
        let q = query(None, Bucket::Hour, "tenant,action");
        let held = aggregate(&events, &q, Some(&prices)).unwrap();
        for bound in [1, 7, 100, 1000] {
            let mut spilling = Aggregator::new(&q, Some(&prices)).spill_beyond(bound);
            for e in &events {
                spilling.add_event(e);
            }
            let rows = spilling.into_rows().unwrap();
            let spilled = rows.collect_report().unwrap();
            assert_eq!(spilled, held, "bound {bound}");
        }
        // Streamed writers give the same text as the report held whole.
        let mut spilling = Aggregator::new(&q, Some(&prices)).spill_beyond(5);
        events.iter().for_each(|e| spilling.add_event(e));
        let mut csv = Vec::new();
        write_csv(spilling.into_rows().unwrap(), &mut csv).unwrap();
        assert_eq!(String::from_utf8(csv).unwrap(), to_csv(&held).unwrap());
        let mut json = Vec::new();
        write_json(ReportRows::of(held.clone()), &mut json).unwrap();
        let whole = serde_json::to_string_pretty(&held.json_rows()).unwrap() + "\n";
        assert_eq!(String::from_utf8(json).unwrap(), whole);
        let mut empty = Vec::new();
        write_json(
            ReportRows::of(Report {
                rows: vec![],
                ..held.clone()
            }),
            &mut empty,
        )
        .unwrap();
        assert_eq!(empty, b"[]\n");
        // The digest of a stream keeps the first rows and counts the rest.
        let digest = ReportRows::of(held.clone()).digest(10).unwrap();
        assert_eq!(digest.row_count, held.rows.len() as u64);
        assert_eq!(digest.first_rows, held.rows[..10]);
        assert_eq!(digest.grand, held.grand_total());
        assert_eq!(digest, held.digest(10));
    }

    #[test]
    fn spill_files_are_removed_with_the_rows_and_a_damaged_one_is_named() {
        let events: Vec<UsageEvent> = (0..40u32)
            .map(|i| {
                event(
                    &format!("2026-11-23T{:02}:00:00Z", i % 24),
                    &format!("t{i}"),
                    "read",
                    Outcome::Completed,
                )
            })
            .collect();
        let q = query(None, Bucket::Hour, "tenant");
        let mut spilling = Aggregator::new(&q, None).spill_beyond(4);
        events.iter().for_each(|e| spilling.add_event(e));
        let dir = spilling
            .spill
            .as_ref()
            .and_then(|s| s.dir())
            .expect("runs were written");
        assert!(dir.join("run-0.csv").exists());
        std::fs::write(dir.join("run-1.csv"), "3600,0,1,0,0,x,0,t1\n").unwrap();
        let error = spilling
            .into_rows()
            .and_then(|rows| rows.collect_report())
            .unwrap_err()
            .to_string();
        assert!(error.contains("run-1.csv, line 1"), "{error}");
        assert!(error.contains("field 6"), "{error}");
        assert!(!dir.exists(), "the spill directory is removed");
    }
}
