//! Usage aggregates for reporting: per tenant and action, counts and bytes per hour or day.
//! Computed from the outbox (always available on the replica) or from the PostgreSQL ledger
//! (every replica's events).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::outbox::OutboxCursor;
use super::{Assembler, Outcome, UsageEvent};

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

#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub tenant: Option<String>,
    pub from: SystemTime,
    pub to: SystemTime,
    pub bucket: Bucket,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// Start of the hour or day (RFC 3339, UTC).
    pub period: String,
    pub tenant: String,
    pub action: String,
    pub requests: u64,
    pub rejected: u64,
    pub interrupted: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
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

/// Aggregates events into report rows.
pub fn aggregate<'a>(
    events: impl IntoIterator<Item = &'a UsageEvent>,
    query: &ReportQuery,
) -> Vec<ReportRow> {
    let (from, to) = (epoch(query.from), epoch(query.to));
    let mut rows: BTreeMap<(String, String, String), ReportRow> = BTreeMap::new();
    for e in events {
        let t = e.epoch_secs();
        if t < from || t >= to {
            continue;
        }
        let tenant = e.tenant.clone().unwrap_or_else(|| "-".into());
        if query.tenant.as_ref().is_some_and(|q| *q != tenant) {
            continue;
        }
        let action = e.action.clone().unwrap_or_else(|| "-".into());
        let period = period_start(t, query.bucket);
        let row = rows
            .entry((period.clone(), tenant.clone(), action.clone()))
            .or_insert_with(|| ReportRow {
                period,
                tenant,
                action,
                requests: 0,
                rejected: 0,
                interrupted: 0,
                request_bytes: 0,
                response_bytes: 0,
            });
        row.requests += 1;
        row.rejected += u64::from(e.outcome == Outcome::Rejected);
        row.interrupted += u64::from(e.outcome == Outcome::Interrupted);
        row.request_bytes += e.request_bytes;
        row.response_bytes += e.response_bytes;
    }
    rows.into_values().collect()
}

/// Every event of the outbox in `dir` (a full scan).
pub fn outbox_events(dir: &Path) -> Result<Vec<UsageEvent>, super::outbox::OutboxError> {
    let mut cursor = OutboxCursor::new(dir, 0);
    let mut assembler = Assembler::default();
    let mut events = Vec::new();
    loop {
        let records = cursor.read(4096)?;
        if records.is_empty() {
            break;
        }
        for r in records {
            events.extend(assembler.push(r).into_iter().map(|(_, e)| e));
        }
    }
    Ok(events)
}

/// Rows from a PostgreSQL ledger table.
pub async fn ledger_rows(
    config: &crate::db::PostgresConfig,
    table: &str,
    query: &ReportQuery,
) -> Result<Vec<ReportRow>, String> {
    if !crate::tenancy::postgres::is_identifier(table) {
        return Err(format!("`{table}` is not a valid table name"));
    }
    let client = crate::db::connect_config(config, None)
        .await
        .map_err(|e| e.to_string())?;
    let unit = match query.bucket {
        Bucket::Hour => "hour",
        Bucket::Day => "day",
    };
    let sql = format!(
        "SELECT to_char(date_trunc('{unit}', occurred_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
         coalesce(tenant, '-'), coalesce(action, '-'), count(*), \
         count(*) FILTER (WHERE outcome = 'rejected'), count(*) FILTER (WHERE outcome = 'interrupted'), \
         coalesce(sum(request_bytes), 0)::bigint, coalesce(sum(response_bytes), 0)::bigint \
         FROM {table} WHERE occurred_at >= to_timestamp($1) AND occurred_at < to_timestamp($2) \
         AND ($3::text IS NULL OR tenant = $3) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
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
    Ok(rows
        .iter()
        .map(|r| ReportRow {
            period: r.get(0),
            tenant: r.get(1),
            action: r.get(2),
            requests: r.get::<_, i64>(3) as u64,
            rejected: r.get::<_, i64>(4) as u64,
            interrupted: r.get::<_, i64>(5) as u64,
            request_bytes: r.get::<_, i64>(6) as u64,
            response_bytes: r.get::<_, i64>(7) as u64,
        })
        .collect())
}

pub fn to_csv(rows: &[ReportRow]) -> Result<String, String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.serialize(row).map_err(|e| e.to_string())?;
    }
    let bytes = writer.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// The rows as an XLSX workbook: a `Usage` sheet (one row per period, tenant and action, counts
/// as numbers), a `Totals` sheet per tenant, and a `Chart` sheet of requests and rejections per
/// tenant. Counts above 2^53 lose precision as spreadsheet numbers do.
pub fn to_xlsx(rows: &[ReportRow]) -> Result<Vec<u8>, String> {
    use rust_xlsxwriter::{Chart, ChartType, Format, Workbook};
    const COLUMNS: [&str; 8] = [
        "period",
        "tenant",
        "action",
        "requests",
        "rejected",
        "interrupted",
        "request_bytes",
        "response_bytes",
    ];
    let error = |e: rust_xlsxwriter::XlsxError| e.to_string();
    let bold = Format::new().set_bold();
    let mut workbook = Workbook::new();
    let usage = workbook.add_worksheet().set_name("Usage").map_err(error)?;
    for (col, name) in (0u16..).zip(COLUMNS) {
        usage
            .write_string_with_format(0, col, name, &bold)
            .map_err(error)?;
    }
    let mut totals: std::collections::BTreeMap<&str, [u64; 5]> = Default::default();
    for (row, r) in (1u32..).zip(rows) {
        usage.write_string(row, 0, &r.period).map_err(error)?;
        usage.write_string(row, 1, &r.tenant).map_err(error)?;
        usage.write_string(row, 2, &r.action).map_err(error)?;
        let counts = [
            r.requests,
            r.rejected,
            r.interrupted,
            r.request_bytes,
            r.response_bytes,
        ];
        for (col, value) in (3u16..).zip(counts) {
            usage.write_number(row, col, value as f64).map_err(error)?;
        }
        let sum = totals.entry(r.tenant.as_str()).or_default();
        for (total, value) in sum.iter_mut().zip(counts) {
            *total = total.saturating_add(value);
        }
    }
    usage.autofit();
    let sheet = workbook.add_worksheet().set_name("Totals").map_err(error)?;
    sheet
        .write_string_with_format(0, 0, "tenant", &bold)
        .map_err(error)?;
    for (col, name) in (1u16..).zip(COLUMNS.iter().skip(3)) {
        sheet
            .write_string_with_format(0, col, *name, &bold)
            .map_err(error)?;
    }
    for (row, (tenant, sums)) in (1u32..).zip(&totals) {
        sheet.write_string(row, 0, *tenant).map_err(error)?;
        for (col, value) in (1u16..).zip(sums) {
            sheet.write_number(row, col, *value as f64).map_err(error)?;
        }
    }
    sheet.autofit();
    let last = u32::try_from(totals.len()).unwrap_or(u32::MAX).max(1);
    let mut chart = Chart::new(ChartType::Column);
    chart.title().set_name("Requests per tenant");
    chart
        .add_series()
        .set_name("requests")
        .set_categories(("Totals", 1, 0, last, 0))
        .set_values(("Totals", 1, 1, last, 1));
    chart
        .add_series()
        .set_name("rejected")
        .set_categories(("Totals", 1, 0, last, 0))
        .set_values(("Totals", 1, 2, last, 2));
    let chartsheet = workbook.add_chartsheet().set_name("Chart").map_err(error)?;
    chartsheet.insert_chart(0, 0, &chart).map_err(error)?;
    workbook.save_to_buffer().map_err(error)
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

    #[test]
    fn xlsx_holds_the_rows_totals_and_a_chart_sheet() {
        use std::io::Read as _;
        let row = |tenant: &str, action: &str, requests: u64, rejected: u64| ReportRow {
            period: "2026-12-05T00:00:00Z".into(),
            tenant: tenant.into(),
            action: action.into(),
            requests,
            rejected,
            interrupted: 0,
            request_bytes: 100,
            response_bytes: 2000,
        };
        let rows = vec![
            row("acme", "projects:read", 7, 1),
            row("acme", "projects:update", 3, 2),
            row("globex", "projects:read", 5, 0),
        ];
        let bytes = to_xlsx(&rows).unwrap();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut part = |name: &str| {
            let mut text = String::new();
            zip.by_name(name)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .read_to_string(&mut text)
                .unwrap();
            text
        };
        let workbook = part("xl/workbook.xml");
        for sheet in ["Usage", "Totals", "Chart"] {
            assert!(
                workbook.contains(&format!("name=\"{sheet}\"")),
                "{workbook}"
            );
        }
        // Totals per tenant: acme 10 requests / 3 rejected, globex 5 / 0.
        let totals = part("xl/worksheets/sheet2.xml");
        for value in ["<v>10</v>", "<v>3</v>", "<v>5</v>", "<v>4000</v>"] {
            assert!(totals.contains(value), "{value} in {totals}");
        }
        let usage = part("xl/worksheets/sheet1.xml");
        assert!(
            usage.contains("<v>7</v>") && usage.contains("<v>2000</v>"),
            "{usage}"
        );
        let chart = part("xl/charts/chart1.xml");
        assert!(chart.contains("Totals!$B$2:$B$3"), "{chart}");
        part("xl/chartsheets/sheet1.xml");
    }

    use super::*;

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
        let q = ReportQuery {
            tenant: Some("acme".into()),
            from: humantime::parse_rfc3339("2026-11-23T00:00:00Z").unwrap(),
            to: humantime::parse_rfc3339("2026-11-24T00:00:00Z").unwrap(),
            bucket: Bucket::Hour,
        };
        let rows = aggregate(&events, &q);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].period.as_str(), rows[0].requests, rows[0].rejected),
            ("2026-11-23T10:00:00Z", 2, 1)
        );
        assert_eq!(
            (
                rows[1].requests,
                rows[1].interrupted,
                rows[1].response_bytes
            ),
            (1, 1, 100)
        );
        let csv = to_csv(&rows).unwrap();
        assert!(
            csv.starts_with(
                "period,tenant,action,requests,rejected,interrupted,request_bytes,response_bytes\n"
            ),
            "{csv}"
        );
        let daily = aggregate(
            &events,
            &ReportQuery {
                bucket: Bucket::Day,
                tenant: None,
                ..q
            },
        );
        assert_eq!(daily.iter().map(|r| r.requests).sum::<u64>(), 4);
    }
}
