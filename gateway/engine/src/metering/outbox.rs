//! The durable local outbox: append-only JSON-lines segment files with one global, gap-free
//! record offset, written by the threads that serve the requests (a [`Journal`]). A torn last
//! line (power loss mid-write) is cut off when the outbox opens.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use crate::journal::Keep;
use crate::journal::{Framing, Journal, JournalError, JournalSettings};

use super::{EventEnd, EventStart, UsageEvent};

/// One line of the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub offset: u64,
    /// The writing process (a new id at every start).
    pub boot: String,
    #[serde(flatten)]
    pub body: RecordBody,
}

impl OutboxRecord {
    /// One line of the outbox. The writer puts `offset`, `boot` and `kind` first and the
    /// body's fields after them; read in that order, the body is deserialized straight from
    /// the rest of the line. (serde's derive for a flattened, internally tagged body first
    /// buffers every field into an intermediate tree: a quarter of a usage report's CPU.)
    /// A line in another order still parses, through the derive.
    pub fn from_line(line: &str) -> serde_json::Result<Self> {
        match in_order(line) {
            Some(record) => Ok(record),
            None => serde_json::from_str(line),
        }
    }
}

/// The record of a line whose fields come in the writer's order, `None` otherwise.
fn in_order(line: &str) -> Option<OutboxRecord> {
    let mut de = serde_json::Deserializer::from_str(line);
    let record = InOrder::deserialize(&mut de).ok()?.0?;
    de.end().ok()?;
    Some(record)
}

/// [`OutboxRecord`] read in the writer's field order (`None` for any other order).
struct InOrder(Option<OutboxRecord>);

impl<'de> Deserialize<'de> for InOrder {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(InOrderVisitor)
    }
}

struct InOrderVisitor;

impl<'de> serde::de::Visitor<'de> for InOrderVisitor {
    type Value = InOrder;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an outbox record")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<InOrder, A::Error> {
        use serde::de::value::MapAccessDeserializer;
        // Keys and the kind are borrowed from the line: one with escapes fails here, and the
        // caller falls back to the derive.
        if map.next_key::<&'de str>()? != Some("offset") {
            return Ok(InOrder(None));
        }
        let offset: u64 = map.next_value()?;
        if map.next_key::<&'de str>()? != Some("boot") {
            return Ok(InOrder(None));
        }
        let boot: String = map.next_value()?;
        if map.next_key::<&'de str>()? != Some("kind") {
            return Ok(InOrder(None));
        }
        let body = match map.next_value::<&'de str>()? {
            "boot" => {
                while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                RecordBody::Boot
            }
            "begin" => RecordBody::Begin(Box::new(EventStart::deserialize(
                MapAccessDeserializer::new(map),
            )?)),
            "end" => RecordBody::End(EventEnd::deserialize(MapAccessDeserializer::new(map))?),
            "complete" => RecordBody::Complete(Box::new(UsageEvent::deserialize(
                MapAccessDeserializer::new(map),
            )?)),
            _ => return Ok(InOrder(None)),
        };
        Ok(InOrder(Some(OutboxRecord { offset, boot, body })))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordBody {
    /// The first record of every process: begins of earlier processes without an end were
    /// interrupted.
    Boot,
    /// A request about to be forwarded.
    Begin(Box<EventStart<'static>>),
    /// Its completion.
    End(EventEnd),
    /// A request recorded in one go (refused before forwarding, or recording after the
    /// response is configured).
    Complete(Box<UsageEvent>),
}

/// When written data is forced to disk (a SIGKILL never loses written records; fsync protects
/// against a machine or OS crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Before a request is forwarded, its begin record is fsynced (concurrent requests share
    /// one fsync).
    Batch,
    /// At most every `fsync_interval`, off the request path.
    Interval,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox {0}")]
    Journal(#[from] JournalError),
    /// The record is in the file, but the fsync `fsync = "batch"` asks for before forwarding
    /// failed: a crash may lose it. It cannot be taken back; what follows must not record the
    /// request a second time under the same id.
    #[error("outbox: written, not synced: {0}")]
    NotSynced(JournalError),
    /// A line that is not a record (a disk error, an edit): reported once, then read past.
    #[error("outbox {segment} at byte {position}: a damaged line, skipped: {problem}")]
    Damaged {
        segment: PathBuf,
        position: u64,
        problem: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub segment_bytes: u64,
    /// Records of finished requests are written at most this long after they were made.
    pub flush_interval: Duration,
    /// While the disk refuses writes, at most this much is queued in memory before new
    /// requests are refused.
    pub buffer_bytes: usize,
}

/// Progress of the writer, for exporters and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Offset the next record will get.
    pub next_offset: u64,
}

/// Outbox lines: `{"offset":N,"boot":"<id>",` then the record body's fields.
struct OutboxFraming {
    boot: String,
}

impl Framing for OutboxFraming {
    fn frame(&mut self, seq: u64, body: &[u8], out: &mut Vec<u8>) {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{{\"offset\":{seq},\"boot\":\"{}\",", self.boot);
        out.extend_from_slice(body.get(1..).unwrap_or_default());
        out.push(b'\n');
    }

    fn segment_name(first_seq: u64) -> String {
        segment_name(first_seq)
    }
}

/// The usage outbox: appended to by the threads serving requests (see [`crate::journal`]).
pub struct Outbox {
    journal: Arc<Journal<OutboxFraming>>,
    boot: String,
    fsync: FsyncPolicy,
    progress: watch::Sender<Written>,
}

impl Outbox {
    /// Opens the outbox (recovering a torn tail) and writes this process's boot record.
    pub fn open(
        settings: OutboxSettings,
    ) -> Result<(Arc<Outbox>, watch::Receiver<Written>), OutboxError> {
        std::fs::create_dir_all(&settings.dir).map_err(io(&settings.dir))?;
        let existing = segments(&settings.dir)?;
        let (last, next_offset) = match existing.last() {
            Some((first, path)) => (Some(path.clone()), recover_segment(path, *first)?),
            None => (None, 0),
        };
        let boot = new_boot_id();
        let journal = Journal::open(
            JournalSettings {
                dir: settings.dir.clone(),
                name: "outbox",
                segment_bytes: settings.segment_bytes,
                segment_max_age: None,
                flush_interval: settings.flush_interval,
                flush_bytes: 256 * 1024,
                max_buffered_bytes: settings.buffer_bytes,
                fsync_interval: Some(settings.fsync_interval),
                fsync: true,
            },
            OutboxFraming { boot: boot.clone() },
            last,
            next_offset,
        )?;
        let (progress, progress_rx) = watch::channel(Written { next_offset });
        let outbox = Outbox {
            journal: Arc::new(journal),
            boot,
            fsync: settings.fsync,
            progress,
        };
        outbox.journal.append_now(&encode(&RecordBody::Boot))?;
        outbox.journal.flush(true)?;
        outbox.publish();
        Ok((Arc::new(outbox), progress_rx))
    }

    pub fn boot_id(&self) -> &str {
        &self.boot
    }

    /// Writes the begin record of a request about to be forwarded: it is in the file (and,
    /// with `fsync = "batch"`, on disk) when this returns. On error nothing was recorded,
    /// except with [`OutboxError::NotSynced`] (in the file, not on disk).
    pub async fn begin(&self, start: &EventStart<'_>) -> Result<(), OutboxError> {
        let seq = self
            .journal
            .append_now(&encode(&BorrowedBody::Begin(start)))?;
        if self.fsync == FsyncPolicy::Batch {
            self.journal
                .sync_through(seq)
                .await
                .map_err(OutboxError::NotSynced)?;
        }
        Ok(())
    }

    /// Writes a complete usage event now, as [`Outbox::begin`] writes a begin record: the
    /// decision-only front doors (ext_authz, forward-auth) answer "allowed" only once the
    /// request's usage is in the file, so a crash cannot lose a request the upstream may serve.
    pub async fn complete_now(&self, body: &RecordBody) -> Result<(), OutboxError> {
        let seq = self.journal.append_now(&encode(body))?;
        if self.fsync == FsyncPolicy::Batch {
            self.journal
                .sync_through(seq)
                .await
                .map_err(OutboxError::NotSynced)?;
        }
        Ok(())
    }

    /// Queues a record (written within the flush interval). False if it was dropped: only
    /// [`Keep::IfRoom`] records, while the disk refuses writes and the queue is full.
    pub fn record(&self, body: &RecordBody, keep: Keep) -> bool {
        self.journal.append(&encode(body), keep)
    }

    /// Writes what is queued and fsyncs (at exit).
    pub fn flush(&self) -> Result<(), OutboxError> {
        self.journal.flush(true)?;
        self.publish();
        Ok(())
    }

    /// Writes succeed.
    pub fn healthy(&self) -> bool {
        self.journal.healthy()
    }

    /// New requests may be taken on.
    pub fn accepting(&self) -> bool {
        self.journal.accepting()
    }

    /// The last write error, while writes fail.
    pub fn failure(&self) -> Option<String> {
        self.journal.failure()
    }

    /// The background flusher: writes queued records, fsyncs per the policy, tells exporters
    /// what is new. Runs until dropped (not stopped by shutdown: see [`crate::journal`]).
    pub async fn run_flusher(self: Arc<Self>) {
        let outbox = self.clone();
        self.journal
            .clone()
            .run_flusher(move |_| outbox.publish())
            .await
    }

    fn publish(&self) {
        let next_offset = self.journal.written_seq();
        self.progress.send_if_modified(|w| {
            let changed = w.next_offset != next_offset;
            w.next_offset = next_offset;
            changed
        });
    }
}

/// A [`RecordBody`] that borrows its event: written as the same JSON, without copying the
/// event's strings on every request (a begin record is built, written and dropped at once).
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum BorrowedBody<'a> {
    Begin(&'a EventStart<'a>),
}

/// A record body as JSON; records are plain data, so this cannot fail in practice (an empty
/// object is written if it ever did, and the exporters skip it).
fn encode(body: &impl Serialize) -> Vec<u8> {
    // Sized for a usage record at once (serde_json's default starts at 128 bytes and regrows).
    let mut out = Vec::with_capacity(512);
    if serde_json::to_writer(&mut out, body).is_err() {
        out.clear();
        out.extend_from_slice(b"{}");
    }
    out
}

/// A process id for the boot record: UUIDv7, unique per start.
fn new_boot_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Segment file name for a first offset (sortable).
pub fn segment_name(first_offset: u64) -> String {
    format!("segment-{first_offset:020}.jsonl")
}

/// Segments of `dir`, sorted by first offset.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, OutboxError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(first) = name
            .strip_prefix("segment-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads the last segment back after a stop or a crash and returns the next offset.
///
/// A torn last line (no newline: a write cut short by the crash, of a record no request was
/// forwarded on) is cut off. Complete lines that are not records in offset order are damage, not
/// a crash: they are moved to `<segment>.damaged-<byte position>` beside the segment (kept, never
/// deleted; the name does not match a segment's, so no reader takes it for one), the records
/// after them stay where they are, and numbering continues after the highest offset kept, so no
/// offset is used twice. The segment is streamed, never held whole.
fn recover_segment(path: &Path, first: u64) -> Result<u64, OutboxError> {
    let scan = scan_segment(path, first, |_, _| Ok(())).map_err(io(path))?;
    let Some(at) = scan.first_damage else {
        crate::journal::cut_tail(path, scan.complete_bytes)?;
        return Ok(scan.next_offset);
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = path.with_file_name(format!("{name}.damaged-{at}"));
    // The damaged lines first, then the segment without them: a crash in between leaves the
    // segment as it was, and the next start moves the same lines to the same file again.
    let copy = |to: &Path, records: bool| {
        crate::durable::write_atomically_with(to, |out| {
            scan_segment(path, first, |line, record| {
                if record == records {
                    out.write_all(line)?;
                }
                Ok(())
            })
            .map(drop)
        })
    };
    copy(&aside, false).map_err(io(&aside))?;
    copy(path, true).map_err(io(path))?;
    tracing::error!(
        segment = %path.display(),
        damaged_lines = scan.damaged_lines,
        kept_in = %aside.display(),
        next_offset = scan.next_offset,
        "usage outbox: lines that are not records in order were moved aside; the records around them are kept"
    );
    Ok(scan.next_offset)
}

/// What [`scan_segment`] found.
struct SegmentScan {
    next_offset: u64,
    /// Bytes up to the end of the last complete line.
    complete_bytes: u64,
    first_damage: Option<u64>,
    damaged_lines: u64,
}

/// Calls `each` with every complete line of a segment and whether it is a record in offset
/// order (one that parses, with an offset past every record before it).
fn scan_segment(
    path: &Path,
    first: u64,
    mut each: impl FnMut(&[u8], bool) -> std::io::Result<()>,
) -> std::io::Result<SegmentScan> {
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut scan = SegmentScan {
        next_offset: first,
        complete_bytes: 0,
        first_damage: None,
        damaged_lines: 0,
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") {
            return Ok(scan);
        }
        let record = std::str::from_utf8(&line)
            .ok()
            .and_then(|text| OutboxRecord::from_line(text).ok())
            .filter(|record| record.offset >= scan.next_offset);
        match &record {
            Some(record) => scan.next_offset = record.offset + 1,
            None => {
                scan.first_damage.get_or_insert(scan.complete_bytes);
                scan.damaged_lines += 1;
            }
        }
        each(&line, record.is_some())?;
        scan.complete_bytes += n as u64;
    }
}

/// Reads records in offset order, following the writer across segments.
pub struct OutboxCursor {
    dir: PathBuf,
    next_offset: u64,
    /// The open segment: its reader, first offset, and the byte position of its next line.
    current: Option<(BufReader<File>, u64, u64)>,
    /// The line being read (its buffer is kept between lines).
    line: Vec<u8>,
}

impl OutboxCursor {
    pub fn new(dir: &Path, from_offset: u64) -> Self {
        OutboxCursor {
            dir: dir.to_path_buf(),
            next_offset: from_offset,
            current: None,
            line: Vec::new(),
        }
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Up to `max` records from the cursor on; fewer (maybe none) at the end of what is written.
    /// The records read before an error are returned first (the cursor has moved past them:
    /// an error would drop them); the next call meets the error again.
    pub fn read(&mut self, max: usize) -> Result<Vec<OutboxRecord>, OutboxError> {
        let mut out = Vec::new();
        match self.read_into(&mut out, max) {
            Ok(()) => Ok(out),
            Err(damaged @ OutboxError::Damaged { .. }) => Err(damaged),
            Err(error) => {
                // Where the failed read left the segment's reader is not known: the next call
                // opens the segment again (records before the cursor are passed over).
                self.current = None;
                if out.is_empty() {
                    Err(error)
                } else {
                    Ok(out)
                }
            }
        }
    }

    fn read_into(&mut self, out: &mut Vec<OutboxRecord>, max: usize) -> Result<(), OutboxError> {
        while out.len() < max {
            if self.current.is_none() && !self.open_segment()? {
                break;
            }
            let Some((reader, first, position)) = self.current.as_mut() else {
                break;
            };
            let line = &mut self.line;
            line.clear();
            let n = reader.read_until(b'\n', line).map_err(io(&self.dir))?;
            if n == 0 || !line.ends_with(b"\n") {
                // End of this segment for now: either the writer moved on, or is mid-write.
                // (The position is counted, not asked for: `stream_position` is an lseek.)
                reader
                    .seek(SeekFrom::Start(*position))
                    .map_err(io(&self.dir))?;
                let (segment_first, at) = (*first, *position);
                let next_segment = segments(&self.dir)?
                    .into_iter()
                    .map(|(first, _)| first)
                    .filter(|first| *first > segment_first)
                    .min();
                let Some(next_first) = next_segment else {
                    break;
                };
                // The writer has moved on, so this segment is complete as it is. A torn last
                // line, or records missing before the next segment's first, were lost at a
                // crash (a power loss can keep a new segment and lose an older one's unsynced
                // tail): read on from the next segment rather than wait for them for ever.
                if n > 0 {
                    tracing::warn!(segment = %segment_name(segment_first), position = at, "outbox: a closed segment ends in a torn line (lost at a crash); it is skipped");
                }
                if next_first > self.next_offset {
                    tracing::warn!(from = self.next_offset, to = next_first, "outbox: records missing before the next segment (lost at a crash); reading on");
                    self.next_offset = next_first;
                }
                self.current = None;
                continue;
            }
            let parsed = std::str::from_utf8(line)
                .map_err(|e| e.to_string())
                .and_then(|text| OutboxRecord::from_line(text).map_err(|e| e.to_string()));
            let record = match parsed {
                Ok(record) => record,
                // The records read before it are returned first (an error would drop them,
                // and the cursor has moved past them); the next call reports the line.
                Err(_) if !out.is_empty() => {
                    reader
                        .seek(SeekFrom::Start(*position))
                        .map_err(io(&self.dir))?;
                    break;
                }
                Err(problem) => {
                    let damaged = OutboxError::Damaged {
                        segment: self.dir.join(segment_name(*first)),
                        position: *position,
                        problem,
                    };
                    *position += n as u64;
                    return Err(damaged);
                }
            };
            *position += n as u64;
            if record.offset < self.next_offset {
                continue;
            }
            self.next_offset = record.offset + 1;
            out.push(record);
        }
        Ok(())
    }

    /// Opens the segment holding `next_offset`; false if none exists yet.
    fn open_segment(&mut self) -> Result<bool, OutboxError> {
        let segs = segments(&self.dir)?;
        let Some((first, path)) = segs
            .into_iter()
            .rev()
            .find(|(first, _)| *first <= self.next_offset)
        else {
            return Ok(false);
        };
        let file = File::open(&path).map_err(io(&path))?;
        self.current = Some((BufReader::with_capacity(1 << 16, file), first, 0));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    //! The outbox in process, no sockets: what request threads append is read back in order
    //! across segment rotations and restarts, and a restart reveals a begin without an end.

    use super::*;
    use crate::metering::tests::{end, start};
    use crate::metering::{Assembled, Assembler, Outcome};

    #[test]
    fn a_borrowed_begin_is_written_as_the_owned_record_is() {
        let mut started = start("e1");
        started.principal = Some("alice".into());
        started.meters = vec!["api-calls".into()];
        started
            .attributes
            .insert("cost_center".into(), "cc \"7\"".into());
        let borrowed = encode(&BorrowedBody::Begin(&started));
        assert_eq!(
            borrowed,
            encode(&RecordBody::Begin(Box::new(started.clone())))
        );
        let read: RecordBody = serde_json::from_slice(&borrowed).unwrap();
        assert_eq!(read, RecordBody::Begin(Box::new(started)));
    }

    #[test]
    fn lines_in_the_writers_order_are_read_without_the_derive_and_others_with_it() {
        let mut started = start("e1");
        started.tier = Some("pro".into());
        started
            .attributes
            .insert("cost_center".into(), "cc \"7\"".into());
        let mut complete = UsageEvent::from_parts(start("e3"), Some(end("e3")));
        complete.outcome = Outcome::Rejected;
        complete.reason = Some("rate-limited".into());
        let records = [
            OutboxRecord {
                offset: 0,
                boot: "b1".into(),
                body: RecordBody::Boot,
            },
            OutboxRecord {
                offset: 1,
                boot: "b1".into(),
                body: RecordBody::Begin(Box::new(started)),
            },
            OutboxRecord {
                offset: 2,
                boot: "b1".into(),
                body: RecordBody::End(end("e1")),
            },
            OutboxRecord {
                offset: 3,
                boot: "b1".into(),
                body: RecordBody::Complete(Box::new(complete)),
            },
        ];
        for record in &records {
            let line = serde_json::to_string(record).unwrap();
            assert_eq!(in_order(&line).as_ref(), Some(record), "{line}");
            assert_eq!(&OutboxRecord::from_line(&line).unwrap(), record);
            // The same fields in another order: the derive reads them.
            let mut value: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&line).unwrap();
            let kind = value.remove("kind").unwrap();
            value.insert("kind".into(), kind);
            let moved = serde_json::to_string(&value).unwrap();
            assert!(in_order(&moved).is_none() || moved == line, "{moved}");
            assert_eq!(&OutboxRecord::from_line(&moved).unwrap(), record);
        }
        // What neither reads is an error, not a record.
        for bad in [
            r#"{"offset":1,"boot":"b1","kind":"begin"}"#,
            r#"{"offset":1,"boot":"b1","kind":"sideways"}"#,
            r#"{"offset":1,"boot":"b1","kind":"boot"} trailing"#,
            "",
        ] {
            assert!(OutboxRecord::from_line(bad).is_err(), "{bad}");
        }
    }

    fn settings(dir: &Path) -> OutboxSettings {
        OutboxSettings {
            dir: dir.to_path_buf(),
            fsync: FsyncPolicy::Batch,
            fsync_interval: Duration::from_millis(50),
            // Small segments: a few dozen records rotate several times.
            segment_bytes: 4096,
            flush_interval: Duration::from_millis(5),
            buffer_bytes: 1 << 20,
        }
    }

    fn read_all(dir: &Path) -> Vec<OutboxRecord> {
        let mut cursor = OutboxCursor::new(dir, 0);
        let mut out = Vec::new();
        loop {
            let batch = cursor.read(64).unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }

    #[tokio::test]
    async fn records_are_read_back_in_order_across_rotations_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _progress) = Outbox::open(settings(dir.path())).unwrap();
        let first_boot = outbox.boot_id().to_string();
        for i in 0..40 {
            let id = format!("e{i}");
            outbox.begin(&start(&id)).await.unwrap();
            if i != 39 {
                assert!(outbox.record(&RecordBody::End(end(&id)), Keep::Always));
            }
        }
        outbox.flush().unwrap();
        drop(outbox);
        assert!(segments(dir.path()).unwrap().len() > 2, "no rotation");

        // The next process: its boot record follows, and e39 (begun, never ended) is
        // interrupted once the assembler sees that boot.
        let (outbox, _progress) = Outbox::open(settings(dir.path())).unwrap();
        assert_ne!(outbox.boot_id(), first_boot);
        drop(outbox);
        let records = read_all(dir.path());
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
        assert_eq!(records.len(), 1 + 40 + 39 + 1);
        let mut assembler = Assembler::default();
        let mut completed = 0;
        let mut interrupted = Vec::new();
        for record in records {
            for Assembled { event, .. } in assembler.push(record) {
                match event.outcome {
                    Outcome::Completed => completed += 1,
                    Outcome::Interrupted => interrupted.push(event.id),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!((completed, interrupted), (39, vec!["e39".to_string()]));
    }

    /// Damage is not a crash: lines in the middle of the last segment that are not records in
    /// order (bytes that are not UTF-8, a copy of an earlier record) are moved aside, the
    /// records after them stay and are read, and no offset is used twice; a torn last line is
    /// only cut off, and a later restart finds nothing more to move.
    #[tokio::test]
    async fn damaged_lines_are_moved_aside_and_the_records_after_them_kept() {
        let dir = tempfile::tempdir().unwrap();
        let settings = OutboxSettings {
            segment_bytes: 1 << 20,
            ..settings(dir.path())
        };
        let (outbox, _progress) = Outbox::open(settings.clone()).unwrap();
        for i in 0..6 {
            outbox.begin(&start(&format!("e{i}"))).await.unwrap();
        }
        outbox.flush().unwrap();
        drop(outbox);
        let (_, segment) = segments(dir.path()).unwrap().pop().unwrap();
        let text = std::fs::read_to_string(&segment).unwrap();
        let lines: Vec<String> = text.lines().map(|l| format!("{l}\n")).collect();
        assert_eq!(lines.len(), 7, "a boot record and six begins");
        let garbled = b"\xff\xfe{\"offset\":2}\n".to_vec();
        let mut damaged = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            match i {
                2 => damaged.extend_from_slice(&garbled),
                4 => damaged.extend_from_slice(lines[1].as_bytes()),
                _ => damaged.extend_from_slice(line.as_bytes()),
            }
        }
        damaged.extend_from_slice(b"{\"offset\":7,\"bo");
        std::fs::write(&segment, &damaged).unwrap();

        let (outbox, _progress) = Outbox::open(settings.clone()).unwrap();
        drop(outbox);
        let offsets: Vec<u64> = read_all(dir.path()).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, 1, 3, 5, 6, 7], "7 is the new boot record");
        let at = lines[0].len() + lines[1].len();
        let aside = segment.with_file_name(format!(
            "{}.damaged-{at}",
            segment.file_name().unwrap().to_string_lossy()
        ));
        let mut moved = garbled.clone();
        moved.extend_from_slice(lines[1].as_bytes());
        assert_eq!(std::fs::read(&aside).unwrap(), moved);

        let mut torn = std::fs::read(&segment).unwrap();
        torn.extend_from_slice(b"{\"offset\":8,");
        std::fs::write(&segment, &torn).unwrap();
        let (outbox, _progress) = Outbox::open(settings).unwrap();
        drop(outbox);
        let offsets: Vec<u64> = read_all(dir.path()).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, 1, 3, 5, 6, 7, 8]);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2, "the segment and the one file of damaged lines");
    }

    /// A damaged line met while reading (a disk error after the records were written): the
    /// records before it are returned, the line is reported once by segment and byte position,
    /// and the records after it are read on; none is lost or read twice.
    #[tokio::test]
    async fn a_damaged_line_is_reported_once_and_no_record_around_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let all = forty_begins_in_segments(dir.path()).await;
        let (first, segment) = all[1].clone();
        let text = std::fs::read_to_string(&segment).unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let at: usize = lines[..2].iter().map(|l| l.len()).sum();
        let mut damaged = text.clone().into_bytes();
        damaged.splice(at..at + 1, [0xff]);
        std::fs::write(&segment, &damaged).unwrap();

        let mut cursor = OutboxCursor::new(dir.path(), 0);
        let mut offsets = Vec::new();
        let mut errors = Vec::new();
        for _ in 0..20 {
            match cursor.read(1024) {
                Ok(batch) => offsets.extend(batch.iter().map(|r| r.offset)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let lost = first + 2;
        let expected: Vec<u64> = (0..41).filter(|&o| o != lost).collect();
        assert_eq!(offsets, expected);
        // Reports read past it as the exporters do (before, every report stopped with the
        // error, on every run): the next boot finds the 39 begins left, interrupted.
        let (outbox, _progress) = Outbox::open(settings(dir.path())).unwrap();
        drop(outbox);
        let events = crate::metering::report::outbox_events(dir.path()).unwrap();
        assert_eq!(events.len(), 39);
        assert_eq!(
            errors,
            [format!(
                "outbox {} at byte {at}: a damaged line, skipped: invalid utf-8 sequence of 1 bytes from index 0",
                segment.display()
            )]
        );
    }

    /// An outbox in `dir` holding a boot record and 40 begin records over more than two
    /// segments (the segments, first offsets ascending).
    async fn forty_begins_in_segments(dir: &Path) -> Vec<(u64, PathBuf)> {
        let (outbox, _progress) = Outbox::open(settings(dir)).unwrap();
        for i in 0..40 {
            outbox.begin(&start(&format!("e{i}"))).await.unwrap();
        }
        outbox.flush().unwrap();
        drop(outbox);
        let all = segments(dir).unwrap();
        assert!(all.len() > 2, "rotated");
        all
    }

    /// A power loss can keep a new segment and lose the unsynced tail of the one before it:
    /// that one then ends early, in a torn line, and the next starts after a gap. Reading goes
    /// on into the next segment (the lost records are gone either way). Before, every reader
    /// waited at the gap for ever: exporters stopped and reports ended there.
    #[tokio::test]
    async fn a_closed_segment_that_lost_its_tail_is_read_past() {
        let dir = tempfile::tempdir().unwrap();
        let all = forty_begins_in_segments(dir.path()).await;
        // The second segment keeps its first two records and half of its third.
        let (first, segment) = all[1].clone();
        let (next_first, _) = all[2];
        let text = std::fs::read_to_string(&segment).unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert!(lines.len() > 3, "{} lines", lines.len());
        let torn = format!(
            "{}{}{}",
            lines[0],
            lines[1],
            &lines[2][..lines[2].len() / 2]
        );
        std::fs::write(&segment, torn).unwrap();

        let mut cursor = OutboxCursor::new(dir.path(), 0);
        let mut offsets = Vec::new();
        for _ in 0..10 {
            offsets.extend(cursor.read(1024).unwrap().iter().map(|r| r.offset));
        }
        let expected: Vec<u64> = (0..41)
            .filter(|&o| o < first + 2 || o >= next_first)
            .collect();
        assert_eq!(offsets, expected);
        // A cursor resuming inside the lost range goes on at the next segment too.
        let mut resumed = OutboxCursor::new(dir.path(), first + 3);
        assert_eq!(resumed.read(1).unwrap()[0].offset, next_first);
    }

    /// An I/O error met after some records were read (here the directory listing at the end
    /// of a segment: a file in the directory's place) returns those records: the cursor is
    /// past them.
    #[tokio::test]
    async fn records_read_before_an_io_error_are_returned() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("outbox");
        let (outbox, _progress) = Outbox::open(settings(&dir)).unwrap();
        for i in 0..5 {
            outbox.begin(&start(&format!("e{i}"))).await.unwrap();
        }
        outbox.flush().unwrap();
        drop(outbox);

        let mut cursor = OutboxCursor::new(&dir, 0);
        let mut offsets: Vec<u64> = cursor.read(1).unwrap().iter().map(|r| r.offset).collect();
        let moved = root.path().join("moved");
        std::fs::rename(&dir, &moved).unwrap();
        std::fs::write(&dir, b"not a directory").unwrap();
        let batch = cursor
            .read(1024)
            .expect("the records read before the error");
        offsets.extend(batch.iter().map(|r| r.offset));
        assert!(cursor.read(1024).is_err(), "the directory is still gone");
        std::fs::remove_file(&dir).unwrap();
        std::fs::rename(&moved, &dir).unwrap();
        assert!(cursor.read(1024).unwrap().is_empty());
        assert_eq!(offsets, [0, 1, 2, 3, 4, 5]);
    }

    mod recovery {
        use super::*;
        use proptest::prelude::*;

        fn record_line(offset: u64) -> Vec<u8> {
            format!("{{\"offset\":{offset},\"boot\":\"b\",\"kind\":\"boot\"}}\n").into_bytes()
        }

        proptest! {
            /// Whatever damage replaces some of a segment's lines, and whatever torn write ends
            /// it, recovery keeps every intact record in place, moves exactly the damaged lines
            /// aside, numbers on after the last record kept, and a second recovery changes
            /// nothing.
            #[test]
            fn recovery_keeps_every_intact_record_and_moves_exactly_the_damage_aside(
                damage in proptest::collection::btree_map(
                    0u64..12,
                    proptest::collection::vec(any::<u8>(), 0..40),
                    0..5,
                ),
                torn in proptest::collection::vec(any::<u8>(), 0..30),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let first = 100;
                let path = dir.path().join(segment_name(first));
                let (mut written, mut intact, mut damaged) = (Vec::new(), Vec::new(), Vec::new());
                let mut last_intact = None;
                for offset in first..first + 12 {
                    match damage.get(&(offset - first)) {
                        Some(garbage) => {
                            // Not UTF-8, so never a record by chance.
                            let mut line = vec![0xff];
                            line.extend(garbage.iter().filter(|&&b| b != b'\n'));
                            line.push(b'\n');
                            written.extend_from_slice(&line);
                            damaged.extend_from_slice(&line);
                        }
                        None => {
                            written.extend(record_line(offset));
                            intact.extend(record_line(offset));
                            last_intact = Some(offset);
                        }
                    }
                }
                written.extend(torn.iter().filter(|&&b| b != b'\n'));
                std::fs::write(&path, &written).unwrap();

                let next = recover_segment(&path, first).unwrap();
                prop_assert_eq!(next, last_intact.map_or(first, |o| o + 1));
                prop_assert_eq!(std::fs::read(&path).unwrap(), intact.clone());
                let aside: Vec<_> = std::fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p != &path)
                    .collect();
                if damaged.is_empty() {
                    prop_assert!(aside.is_empty());
                } else {
                    prop_assert_eq!(aside.len(), 1);
                    prop_assert_eq!(std::fs::read(&aside[0]).unwrap(), damaged);
                }

                prop_assert_eq!(recover_segment(&path, first).unwrap(), next);
                prop_assert_eq!(std::fs::read(&path).unwrap(), intact);
                prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1 + aside.len());
            }
        }
    }
}
