//! Usage reports as PDF (printpdf, the standard fonts only): a heading, the totals, a table
//! and bar charts per value of the first dimension, then the rows.
//!
//! The standard fonts encode text as Windows-1252: a character outside it (a tenant's
//! attribute value in another script) prints as `?`; the CSV, JSON and XLSX keep it.
//! Numbers are set in Courier so columns right-align exactly without font metrics.

use printpdf::{
    BuiltinFont, Color, DateTime, Line, LinePoint, Mm, Op, PaintMode, PdfDocument, PdfFontHandle,
    PdfPage, PdfSaveOptions, PdfWarnMsg, Point, Pt, Rect, Rgb, TextItem, WindingOrder,
};
use rust_decimal::Decimal;

use super::{format_cost, Report, ReportDigest, ReportRows, Total};

/// What the report is about, printed above it.
#[derive(Debug, Clone)]
pub struct ReportHeading {
    pub title: String,
    /// e.g. `Period: 2026-12-01 to 2027-01-01 (UTC), per day`.
    pub lines: Vec<String>,
    /// When it was made (seconds since the epoch): printed and kept as the PDF's date.
    pub generated: i64,
}

impl ReportHeading {
    /// The heading of a usage report over `query`, read from `source` (e.g. "this replica's
    /// outbox"), made now.
    pub fn usage(query: &super::ReportQuery, source: &str) -> Self {
        let time = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        let now = std::time::SystemTime::now();
        ReportHeading {
            title: "Usage report".into(),
            lines: vec![
                format!(
                    "Period: {} to {} (end exclusive), per {}",
                    time(query.from),
                    time(query.to),
                    match query.bucket {
                        super::Bucket::Hour => "hour",
                        super::Bucket::Day => "day",
                    }
                ),
                format!(
                    "Tenant: {}{}",
                    query.tenant.as_deref().unwrap_or("all tenants"),
                    query
                        .attribute
                        .as_ref()
                        .map(|(n, v)| format!("; only {n} = {v}"))
                        .unwrap_or_default()
                ),
                format!(
                    "Grouped by: {}",
                    query
                        .by
                        .iter()
                        .map(super::Dimension::column)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!("Source: {source}"),
            ],
            generated: now
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
                .unwrap_or(0),
        }
    }
}

/// Detail rows beyond this are left to the tabular formats (the PDF says so).
const MAX_DETAIL_ROWS: usize = 5_000;
/// Bars per chart: the largest values of the first dimension.
const MAX_BARS: usize = 12;

const PAGE_WIDTH: f32 = 210.0;
const PAGE_HEIGHT: f32 = 297.0;
const LEFT: f32 = 20.0;
const RIGHT: f32 = 190.0;
const TOP: f32 = 277.0;
const BOTTOM: f32 = 20.0;
/// Courier's advance is 600/1000 em: a character's width in mm at `size` points.
fn courier_mm(size: f32, chars: usize) -> f32 {
    chars as f32 * size * 0.6 * 25.4 / 72.0
}

/// The report as a PDF document.
pub fn to_pdf(report: &Report, heading: &ReportHeading) -> Result<Vec<u8>, String> {
    digest_pdf(&report.digest(MAX_DETAIL_ROWS), heading)
}

/// What a PDF is made from: the rows' digest, keeping no more rows than the PDF lists.
pub fn pdf_digest(rows: ReportRows) -> Result<ReportDigest, super::ReportError> {
    rows.digest(MAX_DETAIL_ROWS)
}

/// The PDF of a report's digest: totals, charts and the first rows.
pub fn digest_pdf(report: &ReportDigest, heading: &ReportHeading) -> Result<Vec<u8>, String> {
    let mut canvas = Canvas::new();
    canvas.heading(heading);
    let grand = &report.grand;
    let currency = report.currency.as_deref();
    let mut summary = format!(
        "Requests {}   Rejected {}   Interrupted {}   Response bytes {}",
        grand.counts.requests,
        grand.counts.rejected,
        grand.counts.interrupted,
        grand.counts.response_bytes
    );
    if let (Some(cost), Some(currency)) = (grand.cost, currency) {
        summary.push_str(&format!("   Cost {} {currency}", format_cost(cost)));
    }
    canvas.text(Font::Bold, 11.0, LEFT, canvas.y, "Total");
    canvas.y -= 6.0;
    canvas.text(Font::Regular, 10.0, LEFT, canvas.y, &summary);
    canvas.y -= 12.0;

    let first = report.columns.first().map(String::as_str).unwrap_or("-");
    let totals = &report.totals;
    totals_table(&mut canvas, first, totals, currency);

    let mut by_requests: Vec<(&str, &Total)> =
        totals.iter().map(|(k, t)| (k.as_str(), t)).collect();
    by_requests.sort_by_key(|(_, t)| std::cmp::Reverse(t.counts.requests));
    by_requests.truncate(MAX_BARS);
    let bars: Vec<(&str, [f64; 2])> = by_requests
        .iter()
        .map(|(k, t)| (*k, [t.counts.requests as f64, t.counts.rejected as f64]))
        .collect();
    bar_chart(
        &mut canvas,
        &format!("Requests and rejections per {first}"),
        &bars,
        ["requests", "rejected"],
    );
    if let Some(currency) = currency {
        let mut by_cost: Vec<(&str, Decimal)> = totals
            .iter()
            .map(|(k, t)| (k.as_str(), t.cost.unwrap_or_default()))
            .collect();
        by_cost.sort_by_key(|(_, c)| std::cmp::Reverse(*c));
        by_cost.truncate(MAX_BARS);
        let bars: Vec<(&str, [f64; 2])> = by_cost
            .iter()
            .map(|(k, c)| (*k, [decimal_f64(*c), 0.0]))
            .collect();
        bar_chart(
            &mut canvas,
            &format!("Cost per {first} ({currency})"),
            &bars,
            ["cost", ""],
        );
    }
    detail_table(&mut canvas, report);
    save(heading, canvas)
}

/// The document of `canvas`'s pages, dated and titled by `heading`, as bytes.
fn save(heading: &ReportHeading, canvas: Canvas) -> Result<Vec<u8>, String> {
    let mut doc = PdfDocument::new(&heading.title);
    let date = DateTime::from_unix_timestamp(heading.generated).map_err(str::to_string)?;
    doc.metadata.info.creation_date = date;
    doc.metadata.info.modification_date = date;
    doc.metadata.info.creator = "policy gateway".into();
    doc.metadata.info.producer = "policy gateway (printpdf)".into();
    let mut warnings: Vec<PdfWarnMsg> = Vec::new();
    let mut document = doc
        .with_pages(canvas.finish())
        .to_lopdf_document(&PdfSaveOptions::default(), &mut warnings);
    // The trailer ID printpdf writes comes from a process-wide counter: without it the same
    // report is the same bytes (it is optional in an unencrypted PDF).
    document.trailer.remove(b"ID");
    document.compress();
    let mut bytes = Vec::new();
    document
        .save_to(&mut bytes)
        .map_err(|e| format!("PDF: {e}"))?;
    Ok(bytes)
}

/// A titled table, with an optional bar chart, for [`sections_pdf`].
#[derive(Debug, Clone, Default)]
pub struct PdfSection {
    pub title: String,
    /// The first column is text (left-aligned); the others right-aligned.
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// A chart title and its bars.
    pub chart: Option<(String, Vec<(String, f64)>)>,
}

/// A document of summary lines and sections (tables, bar charts) under `heading`: for
/// summaries other than usage reports (the audit trail's).
pub fn sections_pdf(
    heading: &ReportHeading,
    summary: &[String],
    sections: &[PdfSection],
) -> Result<Vec<u8>, String> {
    let mut canvas = Canvas::new();
    canvas.heading(heading);
    for line in summary {
        canvas.need(6.0);
        canvas.text(Font::Regular, 10.0, LEFT, canvas.y, line);
        canvas.y -= 5.0;
    }
    canvas.y -= 6.0;
    for section in sections {
        canvas.need(20.0);
        canvas.text(Font::Bold, 11.0, LEFT, canvas.y, &section.title);
        canvas.y -= 6.0;
        let others = section.columns.len().saturating_sub(1).max(1) as f32;
        let first_width = if section.columns.len() > 1 {
            70.0
        } else {
            RIGHT - LEFT
        };
        let edge = |i: usize| LEFT + first_width + (RIGHT - LEFT - first_width) * i as f32 / others;
        let header = |canvas: &mut Canvas| {
            for (i, column) in section.columns.iter().enumerate() {
                match i {
                    0 => canvas.text(Font::Bold, 9.0, LEFT, canvas.y, column),
                    _ => canvas.text_right(Font::Bold, 9.0, edge(i), canvas.y, column),
                }
            }
            canvas.y -= 1.5;
            canvas.rule(canvas.y);
            canvas.y -= 4.5;
        };
        header(&mut canvas);
        let chars = ((first_width - 2.0) / 1.8) as usize;
        for row in section.rows.iter().take(MAX_DETAIL_ROWS) {
            if canvas.need(5.0) {
                header(&mut canvas);
            }
            for (i, cell) in row.iter().enumerate() {
                match i {
                    0 => canvas.text(Font::Regular, 9.0, LEFT, canvas.y, &clip(cell, chars)),
                    _ => canvas.number(9.0, edge(i), canvas.y, cell),
                }
            }
            canvas.y -= 4.5;
        }
        canvas.y -= 8.0;
        if let Some((title, bars)) = &section.chart {
            let mut bars: Vec<(&str, [f64; 2])> = bars
                .iter()
                .map(|(label, value)| (label.as_str(), [*value, 0.0]))
                .collect();
            bars.sort_by(|a, b| b.1[0].total_cmp(&a.1[0]));
            bars.truncate(MAX_BARS);
            bar_chart(
                &mut canvas,
                title,
                &bars,
                [
                    section
                        .columns
                        .get(1)
                        .map(String::as_str)
                        .unwrap_or("value"),
                    "",
                ],
            );
        }
    }
    save(heading, canvas)
}

fn decimal_f64(d: Decimal) -> f64 {
    d.to_string().parse().unwrap_or(0.0)
}

/// Totals per value of the first dimension.
fn totals_table(
    canvas: &mut Canvas,
    first: &str,
    totals: &std::collections::BTreeMap<String, Total>,
    currency: Option<&str>,
) {
    // Right edges of the number columns.
    const EDGES: [f32; 5] = [95.0, 115.0, 140.0, 165.0, RIGHT];
    canvas.need(14.0);
    canvas.text(Font::Bold, 11.0, LEFT, canvas.y, &format!("Per {first}"));
    canvas.y -= 6.0;
    let cost_header = currency.map(|c| format!("cost {c}"));
    let header = [
        "requests",
        "rejected",
        "interrupted",
        "resp. bytes",
        cost_header.as_deref().unwrap_or(""),
    ];
    let header_row = |canvas: &mut Canvas| {
        canvas.text(Font::Bold, 9.0, LEFT, canvas.y, first);
        for (edge, name) in EDGES.iter().zip(header) {
            canvas.text_right(Font::Bold, 9.0, *edge, canvas.y, name);
        }
        canvas.y -= 1.5;
        canvas.rule(canvas.y);
        canvas.y -= 4.5;
    };
    header_row(canvas);
    for (key, total) in totals {
        if canvas.need(5.0) {
            header_row(canvas);
        }
        canvas.text(Font::Regular, 9.0, LEFT, canvas.y, &clip(key, 30));
        let counts = total.counts;
        let cells = [
            counts.requests.to_string(),
            counts.rejected.to_string(),
            counts.interrupted.to_string(),
            counts.response_bytes.to_string(),
            total.cost.map(format_cost).unwrap_or_default(),
        ];
        for (edge, cell) in EDGES.iter().zip(&cells) {
            canvas.number(9.0, *edge, canvas.y, cell);
        }
        canvas.y -= 4.5;
    }
    canvas.y -= 8.0;
}

/// One row per period and group.
fn detail_table(canvas: &mut Canvas, report: &ReportDigest) {
    const EDGES: [f32; 3] = [145.0, 163.0, RIGHT];
    canvas.need(20.0);
    canvas.text(Font::Bold, 11.0, LEFT, canvas.y, "Rows");
    canvas.y -= 6.0;
    let keys = report.columns.join(" / ");
    let cost = report.currency.as_deref().map(|c| format!("cost {c}"));
    let header_row = |canvas: &mut Canvas| {
        canvas.text(Font::Bold, 8.0, LEFT, canvas.y, "period");
        canvas.text(Font::Bold, 8.0, 58.0, canvas.y, &keys);
        let names = ["requests", "rejected", cost.as_deref().unwrap_or("")];
        for (edge, name) in EDGES.iter().zip(names) {
            canvas.text_right(Font::Bold, 8.0, *edge, canvas.y, name);
        }
        canvas.y -= 1.5;
        canvas.rule(canvas.y);
        canvas.y -= 4.0;
    };
    header_row(canvas);
    for row in report.first_rows.iter().take(MAX_DETAIL_ROWS) {
        if canvas.need(4.0) {
            header_row(canvas);
        }
        canvas.number_left(8.0, LEFT, canvas.y, &row.period);
        canvas.text(
            Font::Regular,
            8.0,
            58.0,
            canvas.y,
            &clip(&row.keys.join(" / "), 48),
        );
        let cells = [
            row.counts.requests.to_string(),
            row.counts.rejected.to_string(),
            row.cost.map(format_cost).unwrap_or_default(),
        ];
        for (edge, cell) in EDGES.iter().zip(&cells) {
            canvas.number(8.0, *edge, canvas.y, cell);
        }
        canvas.y -= 4.0;
    }
    let listed = report.first_rows.len().min(MAX_DETAIL_ROWS) as u64;
    if report.row_count > listed {
        canvas.need(6.0);
        canvas.text(
            Font::Regular,
            9.0,
            LEFT,
            canvas.y,
            &format!(
                "{} more rows: see the CSV, JSON or XLSX report.",
                report.row_count - listed
            ),
        );
        canvas.y -= 6.0;
    }
}

/// A bar chart of up to two series per category.
fn bar_chart(canvas: &mut Canvas, title: &str, bars: &[(&str, [f64; 2])], series: [&str; 2]) {
    const HEIGHT: f32 = 55.0;
    const AXIS_X: f32 = LEFT + 18.0;
    const WIDTH: f32 = 135.0;
    if bars.is_empty() {
        return;
    }
    canvas.need(HEIGHT + 25.0);
    canvas.text(Font::Bold, 11.0, LEFT, canvas.y, title);
    canvas.y -= 8.0;
    let base = canvas.y - HEIGHT;
    let top = nice_ceiling(bars.iter().map(|(_, v)| v[0].max(v[1])).fold(0.0, f64::max));
    let colours = [rgb(0.20, 0.40, 0.80), rgb(0.93, 0.55, 0.12)];
    let two = !series[1].is_empty();
    let group = WIDTH / bars.len() as f32;
    let bar = (group * 0.8) / if two { 2.0 } else { 1.0 };
    for (i, (label, values)) in bars.iter().enumerate() {
        let x = AXIS_X + i as f32 * group + group * 0.1;
        for (s, value) in values.iter().enumerate().take(if two { 2 } else { 1 }) {
            let height = (*value / top) as f32 * HEIGHT;
            if let Some(colour) = colours.get(s) {
                canvas.rect(x + s as f32 * bar, base, bar, height, colour.clone());
            }
        }
        let chars = ((group / courier_mm(6.0, 1)) as usize).max(1);
        canvas.number_left(6.0, x, base - 4.0, &clip(label, chars));
    }
    canvas.ops.push(Op::SetOutlineThickness { pt: Pt(0.6) });
    canvas.line(AXIS_X, base, AXIS_X + WIDTH, base);
    canvas.line(AXIS_X, base, AXIS_X, base + HEIGHT + 2.0);
    for step in 0..=4 {
        let value = top * f64::from(step) / 4.0;
        let y = base + HEIGHT * step as f32 / 4.0;
        canvas.line(AXIS_X - 1.5, y, AXIS_X, y);
        canvas.number(7.0, AXIS_X - 2.5, y - 1.0, &axis_label(value));
    }
    // Legend.
    let legend_x = AXIS_X + WIDTH + 4.0;
    for (s, name) in series.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
        let y = base + HEIGHT - 4.0 - s as f32 * 6.0;
        if let Some(colour) = colours.get(s) {
            canvas.rect(legend_x, y, 3.5, 3.5, colour.clone());
        }
        canvas.text(Font::Regular, 8.0, legend_x + 5.0, y + 0.5, name);
    }
    canvas.y = base - 14.0;
}

/// The smallest 1, 2 or 5 × 10^n at or above `max` (1 for an empty chart).
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * magnitude)
}

fn axis_label(value: f64) -> String {
    if value >= 1.0 && value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// At most `chars` characters, `…` marking a cut.
fn clip(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_string();
    }
    let mut clipped: String = text.chars().take(chars.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

fn rgb(r: f32, g: f32, b: f32) -> Color {
    Color::Rgb(Rgb::new(r, g, b, None))
}

#[derive(Clone, Copy)]
enum Font {
    Regular,
    Bold,
}

/// Pages being drawn, top to bottom; `y` is the next baseline in mm from the page's bottom.
struct Canvas {
    pages: Vec<PdfPage>,
    ops: Vec<Op>,
    y: f32,
}

impl Canvas {
    fn new() -> Self {
        let mut canvas = Canvas {
            pages: Vec::new(),
            ops: Vec::new(),
            y: TOP,
        };
        canvas.start_page();
        canvas
    }

    fn start_page(&mut self) {
        self.ops.push(Op::SetOutlineColor {
            col: rgb(0.0, 0.0, 0.0),
        });
        self.ops.push(Op::SetOutlineThickness { pt: Pt(0.4) });
        self.y = TOP;
    }

    /// The title, the heading's lines and when it was made.
    fn heading(&mut self, heading: &ReportHeading) {
        self.text(Font::Bold, 18.0, LEFT, self.y, &heading.title);
        self.y -= 9.0;
        for line in &heading.lines {
            self.text(Font::Regular, 10.0, LEFT, self.y, line);
            self.y -= 5.0;
        }
        let generated = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(heading.generated).unwrap_or(0)),
        );
        self.text(
            Font::Regular,
            10.0,
            LEFT,
            self.y,
            &format!("Generated: {generated}"),
        );
        self.y -= 10.0;
    }

    /// Starts a new page unless `height` mm fit above the bottom margin; says whether it did.
    fn need(&mut self, height: f32) -> bool {
        if self.y - height >= BOTTOM {
            return false;
        }
        self.end_page();
        self.start_page();
        true
    }

    fn end_page(&mut self) {
        let number = self.pages.len() + 1;
        self.number(8.0, RIGHT, BOTTOM - 8.0, &format!("page {number}"));
        let ops = std::mem::take(&mut self.ops);
        self.pages
            .push(PdfPage::new(Mm(PAGE_WIDTH), Mm(PAGE_HEIGHT), ops));
    }

    fn finish(mut self) -> Vec<PdfPage> {
        self.end_page();
        self.pages
    }

    fn write(&mut self, font: BuiltinFont, size: f32, x: f32, y: f32, text: &str) {
        // Text takes the fill colour; each string in its own text object (a cursor move
        // inside one object would be relative to the previous line).
        self.ops.extend([
            Op::SetFillColor {
                col: rgb(0.0, 0.0, 0.0),
            },
            Op::StartTextSection,
            Op::SetFont {
                font: PdfFontHandle::Builtin(font),
                size: Pt(size),
            },
            Op::SetTextCursor {
                pos: Point::new(Mm(x), Mm(y)),
            },
            Op::ShowText {
                items: vec![TextItem::Text(text.to_string())],
            },
            Op::EndTextSection,
        ]);
    }

    fn text(&mut self, font: Font, size: f32, x: f32, y: f32, text: &str) {
        let font = match font {
            Font::Regular => BuiltinFont::Helvetica,
            Font::Bold => BuiltinFont::HelveticaBold,
        };
        self.write(font, size, x, y, text);
    }

    /// Right-aligned at `right`: set in Courier (Bold for headings), whose width is exact.
    fn text_right(&mut self, font: Font, size: f32, right: f32, y: f32, text: &str) {
        let x = right - courier_mm(size, text.chars().count());
        let font = match font {
            Font::Regular => BuiltinFont::Courier,
            Font::Bold => BuiltinFont::CourierBold,
        };
        self.write(font, size, x, y, text);
    }

    fn number(&mut self, size: f32, right: f32, y: f32, text: &str) {
        self.text_right(Font::Regular, size, right, y, text);
    }

    fn number_left(&mut self, size: f32, x: f32, y: f32, text: &str) {
        self.write(BuiltinFont::Courier, size, x, y, text);
    }

    fn line(&mut self, x1: f32, y1: f32, x2: f32, y2: f32) {
        let point = |x: f32, y: f32| LinePoint {
            p: Point::new(Mm(x), Mm(y)),
            bezier: false,
        };
        self.ops.push(Op::DrawLine {
            line: Line {
                points: vec![point(x1, y1), point(x2, y2)],
                is_closed: false,
            },
        });
    }

    /// A thin rule across the text width.
    fn rule(&mut self, y: f32) {
        self.line(LEFT, y, RIGHT, y);
    }

    fn rect(&mut self, x: f32, y: f32, width: f32, height: f32, colour: Color) {
        if height <= 0.0 {
            return;
        }
        self.ops.push(Op::SetFillColor { col: colour });
        self.ops.push(Op::DrawRectangle {
            rectangle: Rect {
                x: Mm(x).into(),
                y: Mm(y).into(),
                width: Mm(width).into(),
                height: Mm(height).into(),
                mode: Some(PaintMode::Fill),
                winding_order: Some(WindingOrder::NonZero),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Counts, ReportRow};
    use super::*;

    fn sample(rows: usize) -> Report {
        Report {
            columns: vec!["tenant".into(), "action".into()],
            currency: Some("EUR".into()),
            rows: (0..rows)
                .map(|i| ReportRow {
                    period: format!("2026-12-{:02}T00:00:00Z", 1 + i % 28),
                    keys: vec![format!("tenant-{}", i % 3), "projects:read".into()],
                    counts: Counts {
                        requests: 10 + i as u64,
                        rejected: (i % 2) as u64,
                        interrupted: 0,
                        request_bytes: 0,
                        response_bytes: 1000,
                    },
                    cost: Some(Decimal::new(4, 3) * Decimal::from(10 + i as u64)),
                })
                .collect(),
        }
    }

    fn heading() -> ReportHeading {
        ReportHeading {
            title: "Usage report".into(),
            lines: vec!["Period: 2026-12-01 to 2027-01-01 (UTC), per day".into()],
            generated: 1_796_000_000,
        }
    }

    #[test]
    fn a_report_is_a_pdf_and_the_same_bytes_each_time() {
        // What it shows is checked with poppler's pdftotext by the CLI's integration test.
        let report = sample(400);
        let bytes = to_pdf(&report, &heading()).unwrap();
        if let Ok(path) = std::env::var("GATEWAY_TEST_PDF_OUT") {
            std::fs::write(path, &bytes).unwrap();
        }
        assert!(bytes.starts_with(b"%PDF-"), "not a PDF");
        assert!(bytes.len() > 10_000, "400 rows on several pages");
        assert_eq!(bytes, to_pdf(&report, &heading()).unwrap());
    }

    #[test]
    fn chart_scales_are_round_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(18.0), 20.0);
        assert_eq!(nice_ceiling(0.0072), 0.01);
        assert_eq!(nice_ceiling(4_100.0), 5_000.0);
        assert_eq!(axis_label(0.0025), "0.0025");
        assert_eq!(axis_label(5000.0), "5000");
        assert_eq!(clip("acme-corporation", 6), "acme-…");
    }
}
