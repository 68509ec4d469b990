//! The tamper-evident audit log: JSON lines where each record carries the SHA-256 of the one
//! before it, in segment files rotated by size or age with the chain continuing across them.
//!
//! A record line is `{...,"prev":"<hex>"` followed by `,"hash":"<hex>"}`, where the hash is
//! SHA-256 over the record's bytes up to and including `"prev":"<hex>"` closed by `}`. Any changed
//! byte, removed or reordered line breaks the chain; `gateway audit verify` finds the first such
//! record.

use crate::diagnostics::{SourceIssue, SourceText};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::journal::Keep;
use crate::journal::{Framing, Journal, JournalError, JournalSettings};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_SUFFIX_LEN: usize = ",\"hash\":\"".len() + 64 + "\"}".len();

/// `[audit]` in `gateway.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the audit segments. Relative to the config file.
    pub dir: PathBuf,
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Start a new segment at least this often.
    #[serde(default = "default_segment_age", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub segment_max_age: Duration,
    /// fsync after every batch of records (otherwise the OS decides; a SIGKILL loses nothing
    /// already written either way).
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// Group commit: records are written (and fsynced) together at most this long after they
    /// were made (bounds writes and fsyncs per second under load; never delays a request).
    #[serde(default = "default_commit_delay", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub commit_delay: Duration,
    /// While the disk refuses writes, records are kept in memory up to this many bytes; beyond
    /// it the gateway refuses new requests (`503 metering-unavailable`) rather than forward a
    /// request it cannot audit.
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: usize,
}

impl AuditConfig {
    /// Checks `[audit]`, all problems at once.
    pub fn validate(&self, source: &SourceText, issues: &mut Vec<SourceIssue>) {
        if self.segment_bytes < 4096 {
            issues.push(source.issue("audit.segment_bytes", "at least 4096"));
        }
        crate::journal::check_bounds(
            source,
            "audit",
            "commit_delay",
            self.commit_delay,
            self.buffer_bytes,
            issues,
        );
    }
}

fn default_commit_delay() -> Duration {
    Duration::from_millis(10)
}

fn default_buffer_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_segment_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_segment_age() -> Duration {
    Duration::from_secs(3600)
}
fn default_true() -> bool {
    true
}

/// One audit record as written (before the chain fields are added).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// `request`, `principal.provisioned`, `reload`, ...
    pub kind: String,
    #[serde(flatten)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl AuditEntry {
    pub fn new(kind: &str, data: serde_json::Value) -> Self {
        AuditEntry {
            kind: kind.to_string(),
            data: match data {
                serde_json::Value::Object(m) => m,
                other => {
                    let mut m = serde_json::Map::new();
                    m.insert("data".into(), other);
                    m
                }
            },
        }
    }
}

/// Audit lines: `{"seq":N,"time":"..",` the entry's fields, `"prev":"<hash>"` and the line's
/// own `"hash"`.
struct AuditFraming {
    prev: String,
}

impl Framing for AuditFraming {
    fn frame(&mut self, seq: u64, body: &[u8], out: &mut Vec<u8>) {
        self.prev = chain_line_into(seq, &entry_time(), body, &self.prev, out);
    }

    fn segment_name(first_seq: u64) -> String {
        segment_name(first_seq)
    }
}

/// The audit log; appended to by the threads serving requests (see [`crate::journal`]).
pub struct AuditLog {
    journal: Arc<Journal<AuditFraming>>,
}

/// The handle the request path and background tasks record through.
pub type AuditHandle = Arc<AuditLog>;

impl AuditLog {
    /// Records an entry (written within `commit_delay`). False if it was dropped: only
    /// [`Keep::IfRoom`] entries, while the disk refuses writes and the queue is full.
    pub fn append<T: Serialize>(&self, kind: &str, data: &T, keep: Keep) -> bool {
        let body = encode_entry(kind, data);
        self.journal.append(&body, keep)
    }

    /// Records an entry that must not be dropped.
    pub async fn record(&self, entry: AuditEntry) {
        self.append(&entry.kind, &entry.data, Keep::Always);
    }

    /// Writes what is queued and fsyncs (at exit).
    pub fn flush(&self) -> Result<(), JournalError> {
        self.journal.flush(true)
    }

    pub fn healthy(&self) -> bool {
        self.journal.healthy()
    }

    pub fn accepting(&self) -> bool {
        self.journal.accepting()
    }

    pub fn failure(&self) -> Option<String> {
        self.journal.failure()
    }

    /// The background flusher (runs until dropped: see [`crate::journal`]).
    pub async fn run_flusher(self: Arc<Self>) {
        self.journal.clone().run_flusher(|_| {}).await
    }
}

/// `{"kind":"<kind>", <fields of data>}`; `data` must serialize as a JSON object (an entry that
/// does not is kept under `data`).
fn encode_entry<T: Serialize>(kind: &str, data: &T) -> Vec<u8> {
    // The entry's fields are serialized in place after `kind` (one buffer, no second copy):
    // an object's `{` becomes the separating comma; anything else goes under `data`.
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"{\"kind\":");
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, kind);
    let start = out.len();
    if serde_json::to_writer(&mut out, data).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
    let fields = out.len() - start;
    match out.get_mut(start) {
        Some(open @ b'{') if fields > 2 => *open = b',',
        Some(b'{') => {
            out.truncate(start);
            out.push(b'}');
        }
        _ => {
            out.splice(start..start, b",\"data\":".iter().copied());
            out.push(b'}');
        }
    }
    out
}

/// Segment file name for a first sequence number.
fn segment_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.jsonl")
}

/// Audit segments of `dir`, in order.
pub fn segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    out.sort();
    Ok(out)
}

/// Opens the log: finds where the chain stands (cutting a torn last line).
pub fn open(config: AuditConfig) -> std::io::Result<AuditHandle> {
    std::fs::create_dir_all(&config.dir)?;
    let mut next_seq = 0;
    let mut prev = GENESIS.to_string();
    let mut last_segment = None;
    let all = segments(&config.dir)?;
    // The chain continues from the last record; empty segments at the end are skipped.
    for path in all.iter().rev() {
        if last_segment.is_none() {
            last_segment = Some(path.clone());
        }
        if let Some((s, h)) = recover_tail(path)? {
            next_seq = s + 1;
            prev = h;
            break;
        }
    }
    let journal = Journal::open(
        JournalSettings {
            dir: config.dir.clone(),
            name: "audit",
            segment_bytes: config.segment_bytes,
            segment_max_age: Some(config.segment_max_age),
            flush_interval: config.commit_delay.max(Duration::from_millis(1)),
            flush_bytes: 256 * 1024,
            max_buffered_bytes: config.buffer_bytes,
            fsync_interval: None,
            fsync: config.fsync,
        },
        AuditFraming { prev },
        last_segment,
        next_seq,
    )
    .map_err(|JournalError::Io { source, .. }| source)?;
    Ok(Arc::new(AuditLog {
        journal: Arc::new(journal),
    }))
}

/// The last record's (seq, hash) of a segment; a torn (newline-less) last line is cut off.
/// The segment is streamed, never held whole.
fn recover_tail(path: &Path) -> std::io::Result<Option<(u64, String)>> {
    /// The chain fields of a record (the rest is checked as JSON and skipped).
    #[derive(serde::Deserialize)]
    struct ChainFields {
        seq: u64,
        hash: String,
    }
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut line = Vec::new();
    let mut complete = 0u64;
    let mut last = None;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") {
            break;
        }
        complete += n as u64;
        // The last record that can be read: a damaged line after it (not a crash's doing;
        // `verify` reports it where it is) must not send the chain back to an earlier segment,
        // which would number the next records again from there.
        if let Ok(fields) = serde_json::from_slice::<ChainFields>(&line) {
            last = Some((fields.seq, fields.hash));
        }
    }
    crate::journal::cut_tail(path, complete).map_err(|JournalError::Io { source, .. }| source)?;
    Ok(last)
}

fn entry_time() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Appends the full line of a record (newline included) and returns its hash: `body` is the
/// entry's JSON object.
fn chain_line_into(seq: u64, time: &str, body: &[u8], prev: &str, out: &mut Vec<u8>) -> String {
    use std::io::Write as _;
    let start = out.len();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{{\"seq\":{seq},\"time\":\"{time}\",");
    let fields = body
        .strip_prefix(b"{")
        .and_then(|b| b.strip_suffix(b"}"))
        .unwrap_or_default();
    out.extend_from_slice(fields);
    let _ = write!(out, ",\"prev\":\"{prev}\"}}");
    let digest = Sha256::digest(out.get(start..).unwrap_or_default());
    // Hex in place: hex::encode builds its String a char at a time, on every record.
    let mut hex = [0u8; 64];
    let _ = hex::encode_to_slice(digest, &mut hex);
    let hash = std::str::from_utf8(&hex).unwrap_or_default();
    out.pop();
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\"}\n");
    hash.to_string()
}

/// The hash a line claims, if it is well-formed.
fn line_hash(line: &str) -> Option<String> {
    let suffix = line.get(line.len().checked_sub(HASH_SUFFIX_LEN)?..)?;
    let hash = suffix.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    Some(hash.to_string())
}

/// A logged line split as it was hashed: the record without its hash (the text the hash is of,
/// and the only text to read the record's fields from) and the hash it claims. `None` unless
/// the line ends exactly in `,"hash":"<64 characters>"}`: anything after the hash would be
/// read by a JSON parser (a repeated key takes the last value) without being hashed.
pub fn hashed_parts(line: &str) -> Option<(String, String)> {
    let claimed = line_hash(line)?;
    let body = format!("{}}}", line.get(..line.len() - HASH_SUFFIX_LEN)?);
    Some((body, claimed))
}

/// The first problem found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    pub file: PathBuf,
    pub line: usize,
    pub seq: Option<u64>,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub segments: usize,
    pub failure: Option<VerifyFailure>,
}

/// Verifies the whole chain of `dir`.
pub fn verify(dir: &Path) -> std::io::Result<VerifyReport> {
    let segs = segments(dir)?;
    let mut expected_seq = 0u64;
    let mut prev = GENESIS.to_string();
    let mut records = 0;
    for (index, path) in segs.iter().enumerate() {
        let mut reader = BufReader::new(File::open(path)?);
        let mut bytes = Vec::new();
        for i in 0.. {
            bytes.clear();
            if reader.read_until(b'\n', &mut bytes)? == 0 {
                break;
            }
            if bytes.pop_if(|b| *b == b'\n').is_none() && index + 1 == segs.len() {
                // The last segment's unfinished last line: a write in progress (a reader can
                // see part of one), or torn by a crash and cut off at the next start. Not a
                // record yet; in a closed segment it is damage, reported below.
                break;
            }
            let line = std::mem::take(&mut bytes);
            let fail = |seq: Option<u64>, problem: String| VerifyReport {
                records,
                segments: segs.len(),
                failure: Some(VerifyFailure {
                    file: path.clone(),
                    line: i + 1,
                    seq,
                    problem,
                }),
            };
            let Ok(line) = String::from_utf8(line) else {
                return Ok(fail(None, "damaged: not UTF-8 text".into()));
            };
            let Some((body, claimed)) = hashed_parts(&line) else {
                return Ok(fail(None, "malformed record (no hash)".into()));
            };
            let value: serde_json::Value = match serde_json::from_str(&body) {
                Ok(v) => v,
                Err(e) => return Ok(fail(None, format!("malformed record: {e}"))),
            };
            let seq = value.get("seq").and_then(|s| s.as_u64());
            if hex::encode(Sha256::digest(body.as_bytes())) != claimed {
                return Ok(fail(
                    seq,
                    "edited: the record does not match its hash".into(),
                ));
            }
            if seq != Some(expected_seq) {
                return Ok(fail(
                    seq,
                    format!(
                        "missing or reordered: expected record {expected_seq}, found {}",
                        seq.map(|s| s.to_string()).unwrap_or_else(|| "none".into())
                    ),
                ));
            }
            if value.get("prev").and_then(|p| p.as_str()) != Some(prev.as_str()) {
                return Ok(fail(
                    seq,
                    "chain broken: `prev` is not the hash of the record before".into(),
                ));
            }
            prev = claimed;
            expected_seq += 1;
            records += 1;
        }
    }
    Ok(VerifyReport {
        records,
        segments: segs.len(),
        failure: None,
    })
}

/// Every readable record of the log, parsed (for reports; `verify` says what is damaged).
pub fn read_all(dir: &Path) -> std::io::Result<Vec<serde_json::Value>> {
    records(dir)?.collect()
}

/// Every readable record of the log, parsed, one at a time: a report over a log of any size
/// holds one record at once.
pub fn records(
    dir: &Path,
) -> std::io::Result<impl Iterator<Item = std::io::Result<serde_json::Value>>> {
    let lines = segments(dir)?.into_iter().flat_map(|path| {
        let lines: Box<dyn Iterator<Item = std::io::Result<Vec<u8>>>> = match File::open(&path) {
            Ok(file) => Box::new(BufReader::new(file).split(b'\n')),
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        lines
    });
    Ok(lines.filter_map(|line| match line {
        Ok(line) => serde_json::from_slice(&line).ok().map(Ok),
        Err(e) => Some(Err(e)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn write_records(dir: &Path, n: usize, segment_bytes: u64) {
        let log = open(AuditConfig {
            dir: dir.to_path_buf(),
            segment_bytes,
            segment_max_age: Duration::from_secs(3600),
            fsync: false,
            commit_delay: Duration::ZERO,
            buffer_bytes: 1 << 20,
        })
        .unwrap();
        for i in 0..n {
            log.record(AuditEntry::new(
                "request",
                serde_json::json!({"n": i, "tenant": "acme"}),
            ))
            .await;
            // What the flusher does every `commit_delay`: segments rotate between writes.
            log.flush().unwrap();
        }
    }

    fn lines(dir: &Path) -> Vec<(PathBuf, Vec<String>)> {
        segments(dir)
            .unwrap()
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p, text.lines().map(str::to_string).collect())
            })
            .collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        std::fs::write(
            path,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn chain_spans_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), 30, 2_000).await;
        write_records(dir.path(), 10, 2_000).await;
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.failure, None);
        assert_eq!(report.records, 40);
        assert!(report.segments > 2, "{report:?}");
    }

    #[tokio::test]
    async fn detects_a_flipped_byte_a_deleted_line_and_a_swapped_pair() {
        for tamper in ["flip", "delete", "swap"] {
            let dir = tempfile::tempdir().unwrap();
            write_records(dir.path(), 20, 1_000_000).await;
            let (path, mut ls) = lines(dir.path()).remove(0);
            match tamper {
                "flip" => {
                    ls[7] = ls[7].replacen("acme", "acmf", 1);
                }
                "delete" => {
                    ls.remove(7);
                }
                _ => ls.swap(7, 8),
            }
            rewrite(&path, &ls);
            let failure = verify(dir.path())
                .unwrap()
                .failure
                .unwrap_or_else(|| panic!("{tamper} not detected"));
            assert_eq!(failure.line, 8, "{tamper}: {failure:?}");
            match tamper {
                "flip" => assert!(failure.problem.starts_with("edited"), "{failure:?}"),
                _ => assert!(
                    failure.problem.starts_with("missing or reordered"),
                    "{failure:?}"
                ),
            }
        }
    }

    #[test]
    fn entries_are_framed_like_the_serde_form_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut framing = AuditFraming {
            prev: GENESIS.to_string(),
        };
        let mut out = Vec::new();
        #[derive(Serialize)]
        struct Typed<'a> {
            tenant: &'a str,
            status: u16,
        }
        framing.frame(
            0,
            &encode_entry(
                "request",
                &Typed {
                    tenant: "acme",
                    status: 200,
                },
            ),
            &mut out,
        );
        framing.frame(1, &encode_entry("reload", &serde_json::json!({})), &mut out);
        framing.frame(2, &encode_entry("odd", &7), &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with(r#"{"seq":0,"time":""#)
                && first
                    .contains(r#"","kind":"request","tenant":"acme","status":200,"prev":"0000"#),
            "{first}"
        );
        assert!(text.contains(r#""kind":"odd","data":7,"prev""#), "{text}");
        std::fs::write(dir.path().join(segment_name(0)), &out).unwrap();
        let report = verify(dir.path()).unwrap();
        assert_eq!((report.records, report.failure), (3, None));
    }

    /// `gateway audit verify` on a live log: the last segment's unfinished last line is a
    /// write in progress, not damage (before: "malformed record (no hash)", and exports said
    /// the chain did not verify); the same in a closed segment is damage.
    #[tokio::test]
    async fn a_write_in_progress_is_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), 6, 400).await;
        let segs = segments(dir.path()).unwrap();
        assert!(segs.len() > 1, "rotated");
        let last = segs.last().unwrap().clone();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap();
        file.write_all(br#"{"seq":6,"prev":"#).unwrap();
        let report = verify(dir.path()).unwrap();
        assert_eq!((report.records, report.failure), (6, None));
        // In a closed segment the same bytes are a torn record.
        let first = segs[0].clone();
        let mut text = std::fs::read(&first).unwrap();
        text.truncate(text.len() - 5);
        std::fs::write(&first, &text).unwrap();
        let failure = verify(dir.path()).unwrap().failure.expect("damage found");
        assert_eq!(failure.file, first);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), 5, 1_000_000).await;
        let path = segments(dir.path()).unwrap().remove(0);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"seq\":5,\"time\":\"x\",\"kind\":\"req")
            .unwrap();
        drop(f);
        write_records(dir.path(), 3, 1_000_000).await;
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.failure, None);
        assert_eq!(report.records, 8);
    }

    /// A damaged complete line after the last record (not what a crash leaves) is reported by
    /// `verify` where it is, with its file and line, also when it is not UTF-8; the next
    /// process continues numbering after the last readable record of that segment rather than
    /// going back to an earlier segment and numbering records a second time.
    #[tokio::test]
    async fn a_damaged_last_line_is_reported_where_it_is_and_numbering_continues() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), 30, 2_000).await;
        let segs = segments(dir.path()).unwrap();
        assert!(segs.len() > 2, "rotated");
        let last = segs.last().unwrap();
        let readable = lines(dir.path()).last().unwrap().1.len();
        let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
        f.write_all(b"\xff\xfe{\"seq\":30}\n").unwrap();
        drop(f);
        let report = verify(dir.path()).unwrap();
        let failure = report.failure.unwrap();
        assert_eq!(
            (&failure.file, failure.line, report.records),
            (last, readable + 1, 30)
        );
        assert_eq!(failure.problem, "damaged: not UTF-8 text");

        write_records(dir.path(), 2, 2_000).await;
        let seqs: Vec<u64> = read_all(dir.path())
            .unwrap()
            .iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (0..32).collect::<Vec<_>>());
    }
}
