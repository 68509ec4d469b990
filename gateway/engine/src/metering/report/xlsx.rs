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
/// The rows are read one at a time into constant-memory worksheets (rust_xlsxwriter keeps
/// them in temporary files until the workbook is saved). A report longer than a worksheet's
/// 1,048,575 rows continues on `Usage 2`, `Usage 3` …, each with the header.
pub fn xlsx_workbook(rows: ReportRows) -> Result<Workbook, String> {
    workbook_with_sheet_rows(rows, SHEET_ROWS)
}

/// A `Usage` sheet (`Usage 2` … after the first) with the header in bold.
fn usage_sheet<'w>(
    workbook: &'w mut Workbook,
    number: usize,
    head: &[&str],
    bold: &Format,
) -> Result<&'w mut rust_xlsxwriter::Worksheet, XlsxError> {
    let sheet = workbook
        .add_worksheet_with_constant_memory()
        .set_name(usage_sheet_name(number))?;
    for (col, name) in (0u16..).zip(head) {
        sheet.write_string_with_format(0, col, *name, bold)?;
    }
    Ok(sheet)
}

fn usage_sheet_name(number: usize) -> String {
    match number {
        1 => "Usage".to_string(),
        n => format!("Usage {n}"),
    }
}

fn workbook_with_sheet_rows(rows: ReportRows, sheet_rows: usize) -> Result<Workbook, String> {
    let error = |e: XlsxError| e.to_string();
    let bold = Format::new().set_bold();
    let dims = u16::try_from(rows.columns.len()).unwrap_or(u16::MAX);
    let columns = rows.columns.clone();
    let currency = rows.currency.clone();
    let head = header(&columns, currency.is_some());
    // Widths by hand: autofit sees only the rows still in memory of a constant-memory sheet.
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    let sheet_rows = sheet_rows.clamp(1, SHEET_ROWS);
    let mut workbook = Workbook::new();
    let mut sheets = 1;
    let mut usage = usage_sheet(&mut workbook, sheets, &head, &bold).map_err(error)?;
    let mut digest = ReportDigest::new(columns.clone(), currency.clone());
    let mut row = 0u32;
    for r in rows {
        let r = r.map_err(|e| e.to_string())?;
        if row as usize == sheet_rows {
            sheets += 1;
            usage = usage_sheet(&mut workbook, sheets, &head, &bold).map_err(error)?;
            row = 0;
        }
        row += 1;
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
    for number in 1..=sheets {
        let sheet = workbook
            .worksheet_from_name(&usage_sheet_name(number))
            .map_err(error)?;
        for (col, width) in (0u16..).zip(&widths) {
            // Characters to Excel's width units, with room for the bold header and capped.
            let width = (*width as f64 + 2.0).min(60.0);
            sheet.set_column_width(col, width).map_err(error)?;
        }
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

#[cfg(test)]
mod tests {
    use super::super::ReportRow;
    use super::*;

    /// Reads the text of an XLSX file's parts by name.
    fn xlsx_parts(bytes: Vec<u8>) -> impl FnMut(&str) -> String {
        use std::io::Read as _;
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        move |name| {
            let mut text = String::new();
            zip.by_name(name)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .read_to_string(&mut text)
                .unwrap();
            text
        }
    }

    #[test]
    fn reports_longer_than_a_worksheet_continue_on_further_sheets() {
        let rows: Vec<ReportRow> = (0..5u64)
            .map(|i| ReportRow {
                period: format!("2026-12-0{}T00:00:00Z", i + 1),
                keys: vec!["acme".into()],
                counts: Counts {
                    requests: 100 + i,
                    ..Counts::default()
                },
                cost: None,
            })
            .collect();
        let report = Report {
            columns: vec!["tenant".into()],
            currency: None,
            rows,
        };
        // Two rows a sheet: 2 + 2 + 1.
        let bytes = workbook_with_sheet_rows(ReportRows::of(report), 2)
            .unwrap()
            .save_to_buffer()
            .unwrap();
        let mut part = xlsx_parts(bytes);
        let workbook = part("xl/workbook.xml");
        for sheet in ["Usage", "Usage 2", "Usage 3", "Totals", "Chart"] {
            assert!(
                workbook.contains(&format!("name=\"{sheet}\"")),
                "{workbook}"
            );
        }
        for (sheet, requests) in [(1, [100, 101].as_slice()), (2, &[102, 103]), (3, &[104])] {
            let xml = part(&format!("xl/worksheets/sheet{sheet}.xml"));
            assert!(
                xml.contains("<t>period</t>"),
                "header on sheet {sheet}: {xml}"
            );
            assert!(xml.contains("<cols>"), "widths on sheet {sheet}");
            for n in requests {
                assert!(
                    xml.contains(&format!("<v>{n}</v>")),
                    "{n} on sheet {sheet}: {xml}"
                );
            }
        }
        // Totals count every sheet's rows.
        assert!(part("xl/worksheets/sheet4.xml").contains("<v>510</v>"));
    }

    #[test]
    fn xlsx_holds_the_rows_totals_and_charts() {
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
        let mut part = xlsx_parts(bytes);
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
