//! A report's rows as a stream. The aggregator keeps at most a set number of rows in memory;
//! beyond that it writes them, sorted, to a run file in a temporary directory and starts
//! again. The rows then come out of a merge of the runs (rows of the same period and group in
//! several runs are summed), in the order of the finished report, one at a time, so a report
//! of millions of rows is written with memory for the bound, not for the rows.

use std::collections::{btree_map, BTreeMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::{format_cost, period_start, Bucket, Counts, Report, ReportRow, Total};

/// A row's place in the report: period start (epoch seconds), then one value per dimension.
/// The values are shared (see [`Interner`]): a tenant's name is held once, not once per row.
pub(super) type RowKey = (u64, Box<[Arc<str>]>);
/// What is summed for a row (the cost is zero when the report is not priced).
pub(super) type RowSums = (Counts, Decimal);

/// Why a report could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Outbox(#[from] super::super::outbox::OutboxError),
    #[error("report rows spilled to {path}: {source}")]
    Spill {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("report rows spilled to {path}, line {line}: {detail}")]
    SpillFormat {
        path: PathBuf,
        line: u64,
        detail: String,
    },
    #[error("{0}")]
    Ledger(String),
}

fn spill_error(path: &Path) -> impl FnOnce(csv::Error) -> ReportError + '_ {
    move |e| ReportError::Spill {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    }
}

/// The distinct dimension values of the rows in memory, each held once and shared by its rows
/// (a row's key is then a slice of pointers, not a string per value: a held row costs about
/// 172 bytes instead of 206). Cleared when the rows are spilled, so it holds no more values
/// than the rows use.
#[derive(Default)]
pub(super) struct Interner {
    values: std::collections::HashSet<Arc<str>>,
}

impl Interner {
    pub(super) fn get(&mut self, value: &str) -> Arc<str> {
        match self.values.get(value) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<str> = Arc::from(value);
                self.values.insert(Arc::clone(&shared));
                shared
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.values.clear();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.values.len()
    }
}

/// Runs written so far by an aggregator that holds at most `max_rows` rows in memory.
pub(super) struct Spill {
    pub(super) max_rows: usize,
    dir: Option<tempfile::TempDir>,
    runs: Vec<PathBuf>,
}

impl Spill {
    pub(super) fn new(max_rows: usize) -> Self {
        Spill {
            max_rows: max_rows.max(1),
            dir: None,
            runs: Vec::new(),
        }
    }

    /// Where the runs are, once one is written.
    #[cfg(test)]
    pub(super) fn dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().to_path_buf())
    }

    /// Writes `rows` (in key order) as the next run file.
    pub(super) fn write_run(&mut self, rows: BTreeMap<RowKey, RowSums>) -> Result<(), ReportError> {
        let dir = match &self.dir {
            Some(dir) => dir.path().to_path_buf(),
            None => {
                let temp = std::env::temp_dir();
                let dir = tempfile::Builder::new()
                    .prefix("gateway-report-")
                    .tempdir()
                    .map_err(|source| ReportError::Spill { path: temp, source })?;
                let path = dir.path().to_path_buf();
                self.dir = Some(dir);
                path
            }
        };
        let path = dir.join(format!("run-{}.csv", self.runs.len()));
        let file = File::create(&path).map_err(|source| ReportError::Spill {
            path: path.clone(),
            source,
        })?;
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_writer(BufWriter::with_capacity(1 << 16, file));
        for ((period, keys), (counts, cost)) in rows {
            let mut record: Vec<String> = Vec::with_capacity(7 + keys.len());
            record.push(period.to_string());
            record.push(cost.to_string());
            record.extend(counts.values().iter().map(u64::to_string));
            record.extend(keys.iter().map(|value| value.to_string()));
            writer.write_record(&record).map_err(spill_error(&path))?;
        }
        writer.flush().map_err(|source| ReportError::Spill {
            path: path.clone(),
            source,
        })?;
        self.runs.push(path);
        Ok(())
    }

    /// Opens every run for the merge; the directory goes with the rows and is removed when
    /// they are dropped.
    fn open(self) -> Result<(Vec<Run>, Option<tempfile::TempDir>), ReportError> {
        let runs = self
            .runs
            .into_iter()
            .map(|path| {
                let file = File::open(&path).map_err(|source| ReportError::Spill {
                    path: path.clone(),
                    source,
                })?;
                let reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .from_reader(BufReader::with_capacity(1 << 16, file));
                Ok(Run::File {
                    path,
                    reader,
                    record: csv::StringRecord::new(),
                    line: 0,
                })
            })
            .collect::<Result<Vec<_>, ReportError>>()?;
        Ok((runs, self.dir))
    }
}

/// One sorted source of rows for the merge.
enum Run {
    Memory(btree_map::IntoIter<RowKey, RowSums>),
    File {
        path: PathBuf,
        reader: csv::Reader<BufReader<File>>,
        record: csv::StringRecord,
        line: u64,
    },
}

impl Run {
    fn next_row(&mut self) -> Result<Option<(RowKey, RowSums)>, ReportError> {
        match self {
            Run::Memory(rows) => Ok(rows.next()),
            Run::File {
                path,
                reader,
                record,
                line,
            } => {
                if !reader.read_record(record).map_err(spill_error(path))? {
                    return Ok(None);
                }
                *line += 1;
                parse_run_record(record)
                    .map(Some)
                    .map_err(|detail| ReportError::SpillFormat {
                        path: path.clone(),
                        line: *line,
                        detail,
                    })
            }
        }
    }
}

fn parse_run_record(record: &csv::StringRecord) -> Result<(RowKey, RowSums), String> {
    let field = |i: usize| {
        record
            .get(i)
            .ok_or_else(|| format!("field {} missing", i + 1))
    };
    let number = |i: usize| {
        field(i)?
            .parse::<u64>()
            .map_err(|e| format!("field {}: {e}", i + 1))
    };
    let period = number(0)?;
    let cost: Decimal = field(1)?
        .parse()
        .map_err(|e| format!("field 2 (cost): {e}"))?;
    let counts = Counts {
        requests: number(2)?,
        rejected: number(3)?,
        interrupted: number(4)?,
        request_bytes: number(5)?,
        response_bytes: number(6)?,
    };
    let keys = record.iter().skip(7).map(Arc::from).collect();
    Ok(((period, keys), (counts, cost)))
}

/// The rows of a report in order, each once: `Iterator<Item = Result<ReportRow, _>>`.
pub struct ReportRows {
    /// The dimensions' column names.
    pub columns: Vec<String>,
    /// Of `cost`, when priced.
    pub currency: Option<String>,
    source: Source,
}

enum Source {
    Finished(std::vec::IntoIter<ReportRow>),
    Merge {
        runs: Vec<Run>,
        /// The next row of each run (`None` once it is exhausted).
        heads: Vec<Option<(RowKey, RowSums)>>,
        bucket: Bucket,
        /// Holds the run files until the rows are read.
        _spill: Option<tempfile::TempDir>,
    },
}

impl ReportRows {
    /// The rows of a finished report.
    pub fn of(report: Report) -> Self {
        ReportRows {
            columns: report.columns,
            currency: report.currency,
            source: Source::Finished(report.rows.into_iter()),
        }
    }

    /// Merges the rows still in memory with the runs spilled before them.
    pub(super) fn merge(
        columns: Vec<String>,
        currency: Option<String>,
        bucket: Bucket,
        in_memory: BTreeMap<RowKey, RowSums>,
        spill: Option<Spill>,
    ) -> Result<Self, ReportError> {
        let (mut runs, dir) = match spill {
            Some(spill) => spill.open()?,
            None => (Vec::new(), None),
        };
        runs.push(Run::Memory(in_memory.into_iter()));
        let heads = runs
            .iter_mut()
            .map(Run::next_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReportRows {
            columns,
            currency,
            source: Source::Merge {
                runs,
                heads,
                bucket,
                _spill: dir,
            },
        })
    }

    /// Reads every row into a [`Report`] (for reports known to be small).
    pub fn collect_report(self) -> Result<Report, ReportError> {
        let columns = self.columns.clone();
        let currency = self.currency.clone();
        let rows = self.collect::<Result<Vec<_>, _>>()?;
        Ok(Report {
            columns,
            currency,
            rows,
        })
    }

    /// Reads every row, keeping the totals and the first `keep` rows.
    pub fn digest(self, keep: usize) -> Result<ReportDigest, ReportError> {
        let mut digest = ReportDigest::new(self.columns.clone(), self.currency.clone());
        for row in self {
            digest.add(&row?, keep);
        }
        Ok(digest)
    }

    fn next_merged(
        runs: &mut [Run],
        heads: &mut [Option<(RowKey, RowSums)>],
        bucket: Bucket,
        priced: bool,
    ) -> Result<Option<ReportRow>, ReportError> {
        let Some(key) = heads.iter().flatten().map(|(key, _)| key).min().cloned() else {
            return Ok(None);
        };
        let (mut counts, mut cost) = (Counts::default(), Decimal::ZERO);
        // Each run holds a key once; several runs may hold it.
        for (run, head) in runs.iter_mut().zip(heads.iter_mut()) {
            if matches!(head, Some((k, _)) if *k == key) {
                if let Some((_, (more, more_cost))) = head.take() {
                    counts.add(&more);
                    cost += more_cost;
                }
                *head = run.next_row()?;
            }
        }
        let (period, keys) = key;
        Ok(Some(ReportRow {
            period: period_start(period, bucket),
            keys: keys.iter().map(|value| value.to_string()).collect(),
            counts,
            cost: priced.then_some(cost),
        }))
    }
}

impl Iterator for ReportRows {
    type Item = Result<ReportRow, ReportError>;

    fn next(&mut self) -> Option<Self::Item> {
        let priced = self.currency.is_some();
        match &mut self.source {
            Source::Finished(rows) => rows.next().map(Ok),
            Source::Merge {
                runs,
                heads,
                bucket,
                ..
            } => Self::next_merged(runs, heads, *bucket, priced).transpose(),
        }
    }
}

/// What a summary of a report needs without holding its rows: totals per value of the first
/// dimension, the grand total, the first rows, and how many there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportDigest {
    pub columns: Vec<String>,
    pub currency: Option<String>,
    pub totals: BTreeMap<String, Total>,
    pub grand: Total,
    pub first_rows: Vec<ReportRow>,
    pub row_count: u64,
}

impl ReportDigest {
    pub(super) fn new(columns: Vec<String>, currency: Option<String>) -> Self {
        ReportDigest {
            columns,
            currency,
            totals: BTreeMap::new(),
            grand: Total::default(),
            first_rows: Vec::new(),
            row_count: 0,
        }
    }

    /// Counts `row` in; keeps it when fewer than `keep` are kept.
    pub(super) fn add(&mut self, row: &ReportRow, keep: usize) {
        let key = row.keys.first().map(String::as_str).unwrap_or("-");
        match self.totals.get_mut(key) {
            Some(total) => total.add(row),
            None => {
                let mut total = Total::default();
                total.add(row);
                self.totals.insert(key.to_string(), total);
            }
        }
        self.grand.add(row);
        self.row_count += 1;
        if self.first_rows.len() < keep {
            self.first_rows.push(row.clone());
        }
    }
}

/// The header of the tabular formats.
pub(super) fn header(columns: &[String], priced: bool) -> Vec<&str> {
    let mut header = vec!["period"];
    header.extend(columns.iter().map(String::as_str));
    header.extend(Counts::COLUMNS);
    if priced {
        header.extend(["cost", "currency"]);
    }
    header
}

/// Writes the rows as CSV, one at a time.
pub fn write_csv(rows: ReportRows, out: impl Write) -> Result<(), String> {
    let mut writer = csv::Writer::from_writer(out);
    writer
        .write_record(header(&rows.columns, rows.currency.is_some()))
        .map_err(|e| e.to_string())?;
    let currency = rows.currency.clone();
    let mut record: Vec<String> = Vec::new();
    for row in rows {
        let row = row.map_err(|e| e.to_string())?;
        record.clear();
        record.push(row.period);
        record.extend(row.keys.into_iter().map(super::inert_cell));
        record.extend(row.counts.values().iter().map(u64::to_string));
        if let (Some(cost), Some(currency)) = (row.cost, &currency) {
            record.push(format_cost(cost));
            record.push(currency.clone());
        }
        writer.write_record(&record).map_err(|e| e.to_string())?;
    }
    writer.flush().map_err(|e| e.to_string())
}

/// One row as a JSON object (one key per column; cost as an exact decimal string).
pub(super) fn json_row(columns: &[String], currency: Option<&str>, row: &ReportRow) -> Value {
    let mut object = Map::new();
    object.insert("period".into(), Value::from(row.period.as_str()));
    for (column, key) in columns.iter().zip(&row.keys) {
        object.insert(column.clone(), Value::from(key.as_str()));
    }
    for (column, value) in Counts::COLUMNS.iter().zip(row.counts.values()) {
        object.insert((*column).into(), Value::from(value));
    }
    if let (Some(cost), Some(currency)) = (row.cost, currency) {
        object.insert("cost".into(), Value::from(format_cost(cost)));
        object.insert("currency".into(), Value::from(currency));
    }
    Value::Object(object)
}

/// Writes the rows as a pretty-printed JSON array, one at a time: the same text as
/// `serde_json::to_string_pretty` of the whole array, and a final newline.
pub fn write_json(rows: ReportRows, mut out: impl Write) -> Result<(), String> {
    let columns = rows.columns.clone();
    let currency = rows.currency.clone();
    let mut first = true;
    let io = |e: std::io::Error| e.to_string();
    for row in rows {
        let row = row.map_err(|e| e.to_string())?;
        let text = serde_json::to_string_pretty(&json_row(&columns, currency.as_deref(), &row))
            .map_err(|e| e.to_string())?;
        out.write_all(if first { b"[\n  " } else { b",\n  " })
            .map_err(io)?;
        first = false;
        // Strings are escaped in JSON text, so every newline is between tokens.
        out.write_all(text.replace('\n', "\n  ").as_bytes())
            .map_err(io)?;
    }
    out.write_all(if first { b"[]\n" } else { b"\n]\n" })
        .map_err(io)?;
    out.flush().map_err(io)
}

/// Writes `{"currency": …, "rows": [...]}` (compact), one row at a time: the admin API's
/// JSON form of a report.
pub fn write_json_document(rows: ReportRows, mut out: impl Write) -> Result<(), String> {
    let columns = rows.columns.clone();
    let currency = rows.currency.clone();
    let io = |e: std::io::Error| e.to_string();
    let head = serde_json::to_string(&currency).map_err(|e| e.to_string())?;
    write!(out, "{{\"currency\":{head},\"rows\":[").map_err(io)?;
    let mut first = true;
    for row in rows {
        let row = row.map_err(|e| e.to_string())?;
        if !first {
            out.write_all(b",").map_err(io)?;
        }
        first = false;
        serde_json::to_writer(&mut out, &json_row(&columns, currency.as_deref(), &row))
            .map_err(|e| e.to_string())?;
    }
    out.write_all(b"]}").map_err(io)?;
    out.flush().map_err(io)
}

/// What a report is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Csv,
    /// A pretty-printed array of row objects (the CLI's `--format json`).
    JsonArray,
    /// `{"currency": …, "rows": [...]}` (the admin API's JSON).
    JsonDocument,
    Xlsx,
    Pdf,
}

/// Writes the rows in `format`: row by row for CSV and JSON, through a constant-memory
/// worksheet for XLSX, from the totals and first rows for PDF (titled by `heading`).
pub fn write_report(
    rows: ReportRows,
    format: ReportFormat,
    heading: &super::ReportHeading,
    out: &mut dyn Write,
) -> Result<(), String> {
    match format {
        ReportFormat::Csv => write_csv(rows, out),
        ReportFormat::JsonArray => write_json(rows, out),
        ReportFormat::JsonDocument => write_json_document(rows, out),
        ReportFormat::Xlsx => {
            let bytes = super::xlsx_workbook(rows)?
                .save_to_buffer()
                .map_err(|e| format!("XLSX: {e}"))?;
            out.write_all(&bytes).map_err(|e| e.to_string())
        }
        ReportFormat::Pdf => {
            let digest = super::pdf_digest(rows).map_err(|e| e.to_string())?;
            out.write_all(&super::digest_pdf(&digest, heading)?)
                .map_err(|e| e.to_string())
        }
    }
}
