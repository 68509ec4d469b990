//! Usage reports as XLSX workbooks (rust_xlsxwriter).

use rust_decimal::Decimal;
use rust_xlsxwriter::{Chart, ChartType, Format, Workbook, XlsxError};

use super::rows::{header, ReportDigest};
use super::{Counts, Report, ReportRows};

/// The report as the bytes of an XLSX workbook (see [`xlsx_workbook`]).
pub fn to_xlsx(report: &Report) -> Result<Vec<u8>, String> {
    xlsx_workbook(ReportRows::of(report.clone()))?
        .save_to_buffer()
        .map_err(|e| e.to_string())
}

/// The report as an XLSX workbook: a `Usage` sheet (one row per period and group, counts and
/// cost as numbers), a `Totals` sheet per value of the first dimension (with a cost chart when
/// priced), and a `Chart` sheet of requests and rejections. Counts above 2^53 lose precision
/// as spreadsheet numbers do; costs are written as numbers too (exact strings are in CSV/JSON).
///
/// The rows are read one at a time into a constant-memory worksheet (rust_xlsxwriter keeps
/// them in a temporary file until the workbook is saved); a report longer than a worksheet
/// fails before anything is saved.
pub fn xlsx_workbook(rows: ReportRows) -> Result<Workbook, String> {
    let error = |e: XlsxError| e.to_string();
    let bold = Format::new().set_bold();
    let dims = u16::try_from(rows.columns.len()).unwrap_or(u16::MAX);
    let columns = rows.columns.clone();
    let currency = rows.currency.clone();
    let head = header(&columns, currency.is_some());
    // Widths by hand: autofit sees only the rows still in memory of a constant-memory sheet.
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    let mut workbook = Workbook::new();
    let usage = workbook
        .add_worksheet_with_constant_memory()
        .set_name("Usage")
        .map_err(error)?;
    for (col, name) in (0u16..).zip(&head) {
        usage
            .write_string_with_format(0, col, *name, &bold)
            .map_err(error)?;
    }
    let mut digest = ReportDigest::new(columns.clone(), currency.clone());
    let mut number = 0usize;
    for r in rows {
        let r = r.map_err(|e| e.to_string())?;
        number += 1;
        let row = sheet_row(number)?;
        let first_count = 1 + dims;
        let mut cells: Vec<(u16, usize)> = vec![(0, r.period.len())];
        usage.write_string(row, 0, &r.period).map_err(error)?;
        for (col, key) in (1u16..).zip(&r.keys) {
            usage.write_string(row, col, key).map_err(error)?;
            cells.push((col, key.chars().count()));
        }
        for (col, value) in (first_count..).zip(r.counts.values()) {
            usage.write_number(row, col, value as f64).map_err(error)?;
            cells.push((col, digits(value)));
        }
        if let (Some(cost), Some(currency)) = (r.cost, &currency) {
            usage
                .write_number(row, first_count + 5, as_number(cost))
                .map_err(error)?;
            usage
                .write_string(row, first_count + 6, currency)
                .map_err(error)?;
            cells.push((first_count + 5, super::format_cost(cost).len()));
        }
        for (col, width) in cells {
            if let Some(w) = widths.get_mut(usize::from(col)) {
                *w = (*w).max(width);
            }
        }
        digest.add(&r, 0);
    }
    for (col, width) in (0u16..).zip(&widths) {
        // Characters to Excel's width units, with room for the bold header and capped.
        let width = (*width as f64 + 2.0).min(60.0);
        usage.set_column_width(col, width).map_err(error)?;
    }
    totals_sheets(&mut workbook, &digest, &bold).map_err(error)?;
    Ok(workbook)
}

fn as_number(d: Decimal) -> f64 {
    d.to_string().parse::<f64>().unwrap_or(0.0)
}

fn digits(value: u64) -> usize {
    value.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The `Totals` sheet (with a cost chart when priced) and the `Chart` sheet.
fn totals_sheets(
    workbook: &mut Workbook,
    digest: &ReportDigest,
    bold: &Format,
) -> Result<(), XlsxError> {
    let first = digest.columns.first().map(String::as_str).unwrap_or("-");
    let sheet = workbook.add_worksheet().set_name("Totals")?;
    sheet.write_string_with_format(0, 0, first, bold)?;
    for (col, name) in (1u16..).zip(Counts::COLUMNS) {
        sheet.write_string_with_format(0, col, name, bold)?;
    }
    if let Some(currency) = &digest.currency {
        sheet.write_string_with_format(0, 6, format!("cost ({currency})"), bold)?;
    }
    for (row, (key, total)) in (1u32..).zip(&digest.totals) {
        sheet.write_string(row, 0, key)?;
        for (col, value) in (1u16..).zip(total.counts.values()) {
            sheet.write_number(row, col, value as f64)?;
        }
        if let Some(cost) = total.cost {
            sheet.write_number(row, 6, as_number(cost))?;
        }
    }
    sheet.autofit();
    let last = u32::try_from(digest.totals.len())
        .unwrap_or(u32::MAX)
        .max(1);
    if let Some(currency) = &digest.currency {
        let mut cost = Chart::new(ChartType::Column);
        cost.title()
            .set_name(&format!("Cost per {first} ({currency})"));
        cost.add_series()
            .set_name("cost")
            .set_categories(("Totals", 1, 0, last, 0))
            .set_values(("Totals", 1, 6, last, 6));
        sheet.insert_chart(last + 2, 0, &cost)?;
    }
    let mut chart = Chart::new(ChartType::Column);
    chart.title().set_name(&format!("Requests per {first}"));
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
    let chartsheet = workbook.add_chartsheet().set_name("Chart")?;
    chartsheet.insert_chart(0, 0, &chart)?;
    Ok(())
}

/// Rows a worksheet holds below its header (Excel's limit is 1,048,576 rows in all).
const SHEET_ROWS: usize = 1_048_575;

/// The worksheet row of the report's `number`th row (the header is row 0), or, for a report
/// longer than a worksheet, what to do instead.
fn sheet_row(number: usize) -> Result<u32, String> {
    match u32::try_from(number) {
        Ok(row) if number <= SHEET_ROWS => Ok(row),
        _ => Err(format!(
            "the report has more than {SHEET_ROWS} rows, more than an XLSX worksheet holds: group \
         by fewer dimensions (--by), sum per day (--bucket day), shorten the period, or use \
         --format csv"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::ReportRow;
    use super::*;

    #[test]
    fn reports_longer_than_a_worksheet_are_refused_with_what_to_do() {
        assert_eq!(sheet_row(SHEET_ROWS), Ok(1_048_575));
        let error = sheet_row(SHEET_ROWS + 1).unwrap_err();
        assert!(error.contains("--format csv"), "{error}");
    }

    #[test]
    fn xlsx_holds_the_rows_totals_and_charts() {
        use std::io::Read as _;
        let row = |tenant: &str, action: &str, requests: u64, rejected: u64| ReportRow {
            period: "2026-12-05T00:00:00Z".into(),
            keys: vec![tenant.into(), action.into()],
            counts: Counts {
                requests,
                rejected,
                interrupted: 0,
                request_bytes: 100,
                response_bytes: 2000,
            },
            cost: Some(Decimal::new(25, 2)),
        };
        let report = Report {
            columns: vec!["tenant".into(), "action".into()],
            currency: Some("EUR".into()),
            rows: vec![
                row("acme", "projects:read", 7, 1),
                row("acme", "projects:update", 3, 2),
                row("globex", "projects:read", 5, 0),
            ],
        };
        let bytes = to_xlsx(&report).unwrap();
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
        // Totals per tenant: acme 10 requests / 3 rejected / 0.5 EUR, globex 5 / 0 / 0.25.
        let totals = part("xl/worksheets/sheet2.xml");
        for value in [
            "<v>10</v>",
            "<v>3</v>",
            "<v>5</v>",
            "<v>4000</v>",
            "<v>0.5</v>",
        ] {
            assert!(totals.contains(value), "{value} in {totals}");
        }
        let usage = part("xl/worksheets/sheet1.xml");
        assert!(
            usage.contains("<v>7</v>") && usage.contains("<v>2000</v>"),
            "{usage}"
        );
        // Written from a constant-memory sheet: strings inline, widths set by hand.
        assert!(usage.contains("<t>projects:update</t>"), "{usage}");
        assert!(usage.contains("<cols>"), "{usage}");
        let requests = part("xl/charts/chart2.xml");
        assert!(requests.contains("Totals!$B$2:$B$3"), "{requests}");
        let cost = part("xl/charts/chart1.xml");
        assert!(cost.contains("Totals!$G$2:$G$3"), "{cost}");
        part("xl/chartsheets/sheet1.xml");
    }
}
