//! The tamper-evident audit log: JSON lines where each record carries the SHA-256 of the one
//! before it, in segment files rotated by size or age with the chain continuing across them.
//!
//! A record line is `{...,"prev":"<hex>"` followed by `,"hash":"<hex>"}`, where the hash is
//! SHA-256 over the record's bytes up to and including `"prev":"<hex>"` closed by `}`. Any changed
//! byte, removed or reordered line breaks the chain; `gateway audit verify` finds the first such
//! record.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

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
    /// Group commit: after the first record of a batch, wait this long for more before writing
    /// and fsyncing them together (bounds fsyncs per second under load; adds at most this much
    /// delay before a record is on disk, never to a request).
    #[serde(default = "default_commit_delay", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub commit_delay: Duration,
}

fn default_commit_delay() -> Duration {
    Duration::from_millis(2)
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

#[derive(Serialize)]
struct Chained<'a> {
    seq: u64,
    time: String,
    #[serde(flatten)]
    entry: &'a AuditEntry,
    prev: &'a str,
}

/// The request path's handle.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<AuditEntry>,
}

impl AuditHandle {
    /// Queues a record; waits when the writer is behind (audit records are never dropped).
    pub async fn record(&self, entry: AuditEntry) {
        if let Err(mpsc::error::TrySendError::Full(entry)) = self.tx.try_send(entry) {
            metrics::counter!("gateway_audit_backpressure_total").increment(1);
            let _ = self.tx.send(entry).await;
        }
    }
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

pub struct AuditWriter {
    config: AuditConfig,
    rx: mpsc::Receiver<AuditEntry>,
    file: File,
    path: PathBuf,
    size: u64,
    opened: Instant,
    next_seq: u64,
    prev: String,
}

/// Opens the log: finds where the chain stands (cutting a torn last line) and returns the
/// handle and the writer task.
pub fn open(config: AuditConfig, capacity: usize) -> std::io::Result<(AuditHandle, AuditWriter)> {
    std::fs::create_dir_all(&config.dir)?;
    let mut next_seq = 0;
    let mut prev = GENESIS.to_string();
    let path = match segments(&config.dir)?.last() {
        Some(last) => {
            let (seq, hash) = recover_tail(last)?;
            if let Some((s, h)) = seq.zip(hash) {
                next_seq = s + 1;
                prev = h;
            } else {
                // An empty last segment: the chain continues from the one before.
                let all = segments(&config.dir)?;
                if all.len() >= 2 {
                    if let (Some(s), Some(h)) = recover_tail(&all[all.len() - 2])? {
                        next_seq = s + 1;
                        prev = h;
                    }
                }
            }
            last.clone()
        }
        None => config.dir.join(segment_name(0)),
    };
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    let size = file.metadata()?.len();
    let (tx, rx) = mpsc::channel(capacity.max(1));
    Ok((
        AuditHandle { tx },
        AuditWriter {
            config,
            rx,
            file,
            path,
            size,
            opened: Instant::now(),
            next_seq,
            prev,
        },
    ))
}

/// The last record's (seq, hash) of a segment; a torn (newline-less) last line is cut off.
fn recover_tail(path: &Path) -> std::io::Result<(Option<u64>, Option<String>)> {
    let bytes = std::fs::read(path)?;
    let complete = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    if complete < bytes.len() {
        tracing::warn!(path = %path.display(), "audit: cutting a torn last line");
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(complete as u64)?;
        f.sync_all()?;
    }
    let text = String::from_utf8_lossy(&bytes[..complete]);
    let Some(last) = text.lines().last() else {
        return Ok((None, None));
    };
    let value: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
    Ok((
        value.get("seq").and_then(|s| s.as_u64()),
        value
            .get("hash")
            .and_then(|h| h.as_str())
            .map(str::to_string),
    ))
}

impl AuditWriter {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let first = tokio::select! {
                e = self.rx.recv() => e,
                _ = shutdown.changed() => {
                    let mut rest = Vec::new();
                    while let Ok(e) = self.rx.try_recv() {
                        rest.push(e);
                    }
                    self.write(rest);
                    return;
                }
            };
            let Some(first) = first else { return };
            if !self.config.commit_delay.is_zero() {
                tokio::time::sleep(self.config.commit_delay).await;
            }
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match self.rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            self.write(batch);
        }
    }

    fn write(&mut self, batch: Vec<AuditEntry>) {
        if batch.is_empty() {
            return;
        }
        if self.size >= self.config.segment_bytes
            || (self.size > 0 && self.opened.elapsed() >= self.config.segment_max_age)
        {
            if let Err(e) = self.rotate() {
                tracing::error!(error = %e, "audit segment rotation failed; continuing in the current one");
            }
        }
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let (mut seq, mut prev) = (self.next_seq, self.prev.clone());
        for entry in &batch {
            let line = chain_line(seq, &entry_time(), entry, &prev);
            prev = line_hash(&line).unwrap_or_default();
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            seq += 1;
        }
        let result = self.file.write_all(&buf).and_then(|()| {
            if self.config.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.size += buf.len() as u64;
                self.next_seq = seq;
                self.prev = prev;
                metrics::counter!("gateway_audit_records_total").increment(batch.len() as u64);
            }
            Err(e) => {
                let _ = self.file.set_len(self.size);
                metrics::counter!("gateway_audit_write_errors_total").increment(1);
                tracing::error!(error = %e, records = batch.len(), "audit write failed");
            }
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let path = self.config.dir.join(segment_name(self.next_seq));
        self.file = OpenOptions::new().create(true).append(true).open(&path)?;
        self.path = path;
        self.size = 0;
        self.opened = Instant::now();
        Ok(())
    }
}

fn entry_time() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// The full line of a record.
fn chain_line(seq: u64, time: &str, entry: &AuditEntry, prev: &str) -> String {
    let body = serde_json::to_string(&Chained {
        seq,
        time: time.to_string(),
        entry,
        prev,
    })
    .unwrap_or_default();
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1])
}

/// The hash a line claims, if it is well-formed.
fn line_hash(line: &str) -> Option<String> {
    let suffix = line.get(line.len().checked_sub(HASH_SUFFIX_LEN)?..)?;
    let hash = suffix.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    Some(hash.to_string())
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
    for path in &segs {
        let reader = BufReader::new(File::open(path)?);
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
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
            let Some(claimed) = line_hash(&line) else {
                return Ok(fail(None, "malformed record (no hash)".into()));
            };
            let body = format!("{}}}", &line[..line.len() - HASH_SUFFIX_LEN]);
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

/// Every record of the log, parsed (for reports).
pub fn read_all(dir: &Path) -> std::io::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for path in segments(dir)? {
        for line in BufReader::new(File::open(&path)?).lines() {
            if let Ok(v) = serde_json::from_str(&line?) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn write_records(dir: &Path, n: usize, segment_bytes: u64) {
        let (handle, writer) = open(
            AuditConfig {
                dir: dir.to_path_buf(),
                segment_bytes,
                segment_max_age: Duration::from_secs(3600),
                fsync: false,
                commit_delay: Duration::ZERO,
            },
            16,
        )
        .unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(writer.run(stopped));
        for i in 0..n {
            handle
                .record(AuditEntry::new(
                    "request",
                    serde_json::json!({"n": i, "tenant": "acme"}),
                ))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = stop.send(true);
        task.await.unwrap();
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

    #[tokio::test]
    async fn a_torn_last_line_is_cut_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), 5, 1_000_000).await;
        let path = segments(dir.path()).unwrap().remove(0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":5,\"time\":\"x\",\"kind\":\"req")
            .unwrap();
        drop(f);
        write_records(dir.path(), 3, 1_000_000).await;
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.failure, None);
        assert_eq!(report.records, 8);
    }
}
