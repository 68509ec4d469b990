//! Usage reports as XLSX workbooks (rust_xlsxwriter).

use rust_decimal::Decimal;

use super::{Counts, Report};

/// The report as an XLSX workbook: a `Usage` sheet (one row per period and group, counts and
/// cost as numbers), a `Totals` sheet per value of the first dimension (with a cost chart when
/// priced), and a `Chart` sheet of requests and rejections. Counts above 2^53 lose precision
/// as spreadsheet numbers do; costs are written as numbers too (exact strings are in CSV/JSON).
pub fn to_xlsx(report: &Report) -> Result<Vec<u8>, String> {
    use rust_xlsxwriter::{Chart, ChartType, Format, Workbook};
    fits_a_sheet(report.rows.len())?;
    let error = |e: rust_xlsxwriter::XlsxError| e.to_string();
    let as_number = |d: Decimal| d.to_string().parse::<f64>().unwrap_or(0.0);
    let bold = Format::new().set_bold();
    let dims = u16::try_from(report.columns.len()).unwrap_or(u16::MAX);
    let mut workbook = Workbook::new();
    let usage = workbook.add_worksheet().set_name("Usage").map_err(error)?;
    for (col, name) in (0u16..).zip(report.header()) {
        usage
            .write_string_with_format(0, col, name, &bold)
            .map_err(error)?;
    }
    for (row, r) in (1u32..).zip(&report.rows) {
        usage.write_string(row, 0, &r.period).map_err(error)?;
        for (col, key) in (1u16..).zip(&r.keys) {
            usage.write_string(row, col, key).map_err(error)?;
        }
        let first_count = 1 + dims;
        for (col, value) in (first_count..).zip(r.counts.values()) {
            usage.write_number(row, col, value as f64).map_err(error)?;
        }
        if let (Some(cost), Some(currency)) = (r.cost, &report.currency) {
            usage
                .write_number(row, first_count + 5, as_number(cost))
                .map_err(error)?;
            usage
                .write_string(row, first_count + 6, currency)
                .map_err(error)?;
        }
    }
    usage.autofit();
    let totals = report.totals();
    let first = report.columns.first().map(String::as_str).unwrap_or("-");
    let sheet = workbook.add_worksheet().set_name("Totals").map_err(error)?;
    sheet
        .write_string_with_format(0, 0, first, &bold)
        .map_err(error)?;
    for (col, name) in (1u16..).zip(Counts::COLUMNS) {
        sheet
            .write_string_with_format(0, col, name, &bold)
            .map_err(error)?;
    }
    if let Some(currency) = &report.currency {
        sheet
            .write_string_with_format(0, 6, format!("cost ({currency})"), &bold)
            .map_err(error)?;
    }
    for (row, (key, total)) in (1u32..).zip(&totals) {
        sheet.write_string(row, 0, *key).map_err(error)?;
        for (col, value) in (1u16..).zip(total.counts.values()) {
            sheet.write_number(row, col, value as f64).map_err(error)?;
        }
        if let Some(cost) = total.cost {
            sheet.write_number(row, 6, as_number(cost)).map_err(error)?;
        }
    }
    sheet.autofit();
    let last = u32::try_from(totals.len()).unwrap_or(u32::MAX).max(1);
    if let Some(currency) = &report.currency {
        let mut cost = Chart::new(ChartType::Column);
        cost.title()
            .set_name(&format!("Cost per {first} ({currency})"));
        cost.add_series()
            .set_name("cost")
            .set_categories(("Totals", 1, 0, last, 0))
            .set_values(("Totals", 1, 6, last, 6));
        sheet.insert_chart(last + 2, 0, &cost).map_err(error)?;
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
    let chartsheet = workbook.add_chartsheet().set_name("Chart").map_err(error)?;
    chartsheet.insert_chart(0, 0, &chart).map_err(error)?;
    workbook.save_to_buffer().map_err(error)
}

/// Rows a worksheet holds below its header (Excel's limit is 1,048,576 rows in all).
const SHEET_ROWS: usize = 1_048_575;

/// Refuses, with what to do instead, a report too long for one worksheet (rather than failing
/// half-way through writing it).
fn fits_a_sheet(rows: usize) -> Result<(), String> {
    if rows > SHEET_ROWS {
        return Err(format!(
            "the report has {rows} rows; an XLSX worksheet holds {SHEET_ROWS}: group by fewer \
             dimensions (--by), sum per day (--bucket day), shorten the period, or use --format csv"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ReportRow;
    use super::*;

    #[test]
    fn reports_longer_than_a_worksheet_are_refused_with_what_to_do() {
        assert!(fits_a_sheet(SHEET_ROWS).is_ok());
        let error = fits_a_sheet(SHEET_ROWS + 1).unwrap_err();
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
        let requests = part("xl/charts/chart2.xml");
        assert!(requests.contains("Totals!$B$2:$B$3"), "{requests}");
        let cost = part("xl/charts/chart1.xml");
        assert!(cost.contains("Totals!$G$2:$G$3"), "{cost}");
        part("xl/chartsheets/sheet1.xml");
    }
}
