//! A durable append-only log of JSON lines in segment files, appended to by the threads that
//! serve requests: there is no writer thread to hand records to, so no thread is woken per
//! record (the usage outbox and the audit log are both journals).
//!
//! - Every record gets a gap-free sequence number under one short lock and is framed (the
//!   [`Framing`] adds the sequence number, and the audit log its hash chain) into an in-memory
//!   batch, in sequence order.
//! - [`Journal::append_now`] writes the batch — the record and everything queued before it —
//!   with one `write(2)` before it returns: the record is then in the OS page cache and survives
//!   a killed process. [`Journal::append`] only queues; the batch goes out with the next
//!   `append_now`, when it passes `flush_bytes`, or at the flusher's next tick (at most
//!   `flush_interval` later). The flusher parks while the journal is idle and is woken only by
//!   the first record after it parked.
//! - A failed write (disk full) leaves the file as it was (a partial write is cut off) and the
//!   records in the batch; they are written when space returns. While writes fail the journal
//!   reports itself unhealthy; once the batch passes `max_buffered_bytes` it accepts only
//!   [`Keep::Always`] records (those of requests already forwarded), so memory stays bounded by
//!   the limit plus what in-flight requests add, and the gateway refuses new work upstream of it.
//! - `fsync` is never called by a request thread except through [`Journal::sync_through`]
//!   (group commit: concurrent callers share one `fdatasync` run on the blocking pool).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// How records become lines: sequence number, chain fields, newline.
pub trait Framing: Send + 'static {
    /// Appends the record numbered `seq` to `out` as one complete line (newline included).
    /// `body` is the record's JSON object (`{...}`).
    fn frame(&mut self, seq: u64, body: &[u8], out: &mut Vec<u8>);
    /// The file name of a segment whose first record is `first_seq` (names sort by it).
    fn segment_name(first_seq: u64) -> String;
}

/// Whether a record may be dropped when the journal is over its memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The record of a request the upstream may have seen: never dropped.
    Always,
    /// The record of a refused request: dropped (and counted) while the journal cannot write
    /// and its batch is over the limit.
    IfRoom,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct JournalSettings {
    pub dir: PathBuf,
    /// Metric label and log name (`outbox`, `audit`).
    pub name: &'static str,
    /// Start a new segment once the current one is this large.
    pub segment_bytes: u64,
    /// ... or this old (and not empty).
    pub segment_max_age: Option<Duration>,
    /// Queued records are written at most this long after they were appended.
    pub flush_interval: Duration,
    /// A batch this large is written by the thread that appends to it (at most half of
    /// `max_buffered_bytes`: see [`Journal::open`]).
    pub flush_bytes: usize,
    /// While writes fail, queue at most this much before refusing [`Keep::IfRoom`] records.
    pub max_buffered_bytes: usize,
    /// The flusher fsyncs written data at most this often (`None`: after every flush).
    pub fsync_interval: Option<Duration>,
    /// Whether the flusher fsyncs at all (the OS writes the page cache back on its own).
    pub fsync: bool,
}

struct State<F> {
    framing: F,
    /// The sequence number the next record gets.
    next_seq: u64,
    /// Framed records not yet in the file, in sequence order.
    batch: Vec<u8>,
    /// Records in `batch`.
    batch_records: u64,
    file: Arc<File>,
    path: PathBuf,
    /// Bytes of whole records in the current segment.
    size: u64,
    opened: Instant,
    /// Segments closed and not yet synced: kept until a sync of them succeeds.
    unsynced: Vec<Arc<File>>,
    /// Segment files this journal created (their names are durable once the directory is
    /// synced), and how many of them the last directory sync covered.
    segments_created: u64,
    directory_synced: u64,
    /// Written since the last fsync.
    dirty: bool,
    /// The error of the last write, while writes fail.
    failure: Option<String>,
    /// The flusher sleeps until notified.
    flusher_parked: bool,
}

struct SyncState {
    /// Every record below this sequence number is on disk.
    synced_seq: u64,
    leader: bool,
}

/// The journal; share it behind an `Arc`.
pub struct Journal<F> {
    settings: JournalSettings,
    state: Mutex<State<F>>,
    /// Wakes a parked flusher.
    flusher: Notify,
    sync: Mutex<SyncState>,
    synced: Notify,
    /// Records below this sequence number are in the file (for readers' progress).
    written_seq: AtomicU64,
    /// Mirrors `failure.is_some()` for lock-free health checks.
    failing: AtomicBool,
    /// Mirrors `batch.len() > max_buffered_bytes`.
    over_limit: AtomicBool,
    metrics: JournalMetrics,
}

/// `gateway_journal_*{journal}`, resolved when the journal opens (records are counted on the
/// request path).
struct JournalMetrics {
    records: metrics::Counter,
    dropped: metrics::Counter,
    write_errors: metrics::Counter,
    healthy: metrics::Gauge,
    queued_bytes: metrics::Gauge,
}

impl JournalMetrics {
    fn new(journal: &'static str) -> Self {
        JournalMetrics {
            records: metrics::counter!(crate::telemetry::JOURNAL_RECORDS_TOTAL, "journal" => journal),
            dropped: metrics::counter!(crate::telemetry::JOURNAL_DROPPED_TOTAL, "journal" => journal),
            write_errors: metrics::counter!(crate::telemetry::JOURNAL_WRITE_ERRORS_TOTAL, "journal" => journal),
            healthy: metrics::gauge!(crate::telemetry::JOURNAL_HEALTHY, "journal" => journal),
            queued_bytes: metrics::gauge!(crate::telemetry::JOURNAL_QUEUED_BYTES, "journal" => journal),
        }
    }
}

impl<F: Framing> Journal<F> {
    /// Opens the journal on `dir`, continuing the segment `last` (if any; its torn tail must
    /// have been cut by the caller) whose records end before `next_seq`.
    pub fn open(
        mut settings: JournalSettings,
        framing: F,
        last_segment: Option<PathBuf>,
        next_seq: u64,
    ) -> Result<Self, JournalError> {
        // A batch is written well before it reaches the limit: the limit is for when writes
        // fail, and a healthy journal with a small buffer must not refuse records.
        settings.flush_bytes = settings
            .flush_bytes
            .min(settings.max_buffered_bytes / 2)
            .max(1);
        std::fs::create_dir_all(&settings.dir).map_err(io(&settings.dir))?;
        let metrics = JournalMetrics::new(settings.name);
        metrics.healthy.set(1.0);
        let created = u64::from(last_segment.is_none());
        let path = last_segment.unwrap_or_else(|| settings.dir.join(F::segment_name(next_seq)));
        let file = open_append(&path)?;
        let size = file.metadata().map_err(io(&path))?.len();
        Ok(Journal {
            state: Mutex::new(State {
                framing,
                next_seq,
                batch: Vec::with_capacity(settings.flush_bytes.min(1 << 20)),
                batch_records: 0,
                file: Arc::new(file),
                path,
                size,
                opened: Instant::now(),
                unsynced: Vec::new(),
                segments_created: created,
                directory_synced: 0,
                dirty: false,
                failure: None,
                flusher_parked: true,
            }),
            settings,
            flusher: Notify::new(),
            sync: Mutex::new(SyncState {
                synced_seq: next_seq,
                leader: false,
            }),
            synced: Notify::new(),
            written_seq: AtomicU64::new(next_seq),
            failing: AtomicBool::new(false),
            over_limit: AtomicBool::new(false),
            metrics,
        })
    }

    pub fn settings(&self) -> &JournalSettings {
        &self.settings
    }

    /// Appends a record and writes it (with every record queued before it) to the file before
    /// returning its sequence number. On failure the record is not in the journal at all.
    pub fn append_now(&self, body: &[u8]) -> Result<u64, JournalError> {
        let mut state = self.state.lock();
        let rollback = (state.batch.len(), state.batch_records);
        let seq = state.push(body);
        match self.write_batch(&mut state) {
            Ok(()) => {
                // The flusher publishes progress and fsyncs per the policy.
                if state.flusher_parked {
                    state.flusher_parked = false;
                    drop(state);
                    self.flusher.notify_one();
                }
                Ok(seq)
            }
            Err(e) => {
                // Earlier records stay queued; this one never was.
                state.batch.truncate(rollback.0);
                state.batch_records = rollback.1;
                state.next_seq = seq;
                self.note_batch_size(&state);
                Err(e)
            }
        }
    }

    /// Queues a record; it is written within `flush_interval`. Returns false if it was dropped
    /// ([`Keep::IfRoom`] while the journal is over its limit).
    pub fn append(&self, body: &[u8], keep: Keep) -> bool {
        let mut state = self.state.lock();
        if keep == Keep::IfRoom && state.batch.len() >= self.settings.max_buffered_bytes {
            drop(state);
            self.metrics.dropped.increment(1);
            return false;
        }
        state.push(body);
        if state.batch.len() >= self.settings.flush_bytes && state.failure.is_none() {
            // Failures are counted and logged inside; the records stay queued.
            let _ = self.write_batch(&mut state);
        } else {
            self.note_batch_size(&state);
        }
        if state.flusher_parked && !state.batch.is_empty() {
            state.flusher_parked = false;
            drop(state);
            self.flusher.notify_one();
        }
        true
    }

    /// Writes whatever is queued (and fsyncs when `fsync`); used by the flusher and at exit.
    pub fn flush(&self, fsync: bool) -> Result<(), JournalError> {
        let mut state = self.state.lock();
        if !state.batch.is_empty() {
            self.write_batch(&mut state)?;
        }
        if fsync && state.dirty {
            let plan = state.sync_plan();
            let through = state.next_seq;
            state.dirty = false;
            drop(state);
            let result = plan.run(&self.settings.dir);
            self.synced(plan, result, through)?;
        }
        Ok(())
    }

    /// Waits until every record below `seq + 1` is on disk, sharing one fsync with concurrent
    /// callers (group commit).
    pub async fn sync_through(&self, seq: u64) -> Result<(), JournalError> {
        loop {
            let notified = self.synced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let lead = {
                let mut sync = self.sync.lock();
                if sync.synced_seq > seq {
                    return Ok(());
                }
                !std::mem::replace(&mut sync.leader, true)
            };
            if !lead {
                // Another caller's fsync is running; it may cover this record.
                notified.await;
                continue;
            }
            let (plan, through) = {
                let mut state = self.state.lock();
                state.dirty = false;
                (state.sync_plan(), self.written_seq.load(Ordering::Acquire))
            };
            let dir = self.settings.dir.clone();
            let (plan, result) = tokio::task::spawn_blocking(move || {
                let result = plan.run(&dir);
                (plan, result)
            })
            .await
            .unwrap_or_else(|e| (SyncPlan::default(), Err(std::io::Error::other(e))));
            let outcome = self.synced(plan, result, through);
            self.sync.lock().leader = false;
            self.synced.notify_waiters();
            outcome?;
        }
    }

    /// The sequence number below which every record is in the file.
    pub fn written_seq(&self) -> u64 {
        self.written_seq.load(Ordering::Acquire)
    }

    /// Writes succeed (or nothing has failed since the last success).
    pub fn healthy(&self) -> bool {
        !self.failing.load(Ordering::Acquire)
    }

    /// New work may be taken on: writes succeed, or the queue still has room.
    pub fn accepting(&self) -> bool {
        !self.over_limit.load(Ordering::Acquire)
    }

    /// The last write error, while writes fail.
    pub fn failure(&self) -> Option<String> {
        self.state.lock().failure.clone()
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().batch.len()
    }

    /// Writes queued records every `flush_interval` while there are any, fsyncs per the
    /// settings, retries after failures, and parks while the journal is idle. Runs until the
    /// task is dropped: it does not stop at shutdown, because requests still in flight keep
    /// appending (the last records are flushed by [`Journal::flush`] at exit).
    pub async fn run_flusher(self: Arc<Self>, on_written: impl Fn(u64) + Send + 'static) {
        let mut last_fsync = Instant::now();
        let mut last_published = self.written_seq();
        loop {
            tokio::time::sleep(self.settings.flush_interval).await;
            let fsync_due = self.settings.fsync
                && self
                    .settings
                    .fsync_interval
                    .is_none_or(|every| last_fsync.elapsed() >= every);
            if fsync_due {
                last_fsync = Instant::now();
            }
            // Errors are counted, logged and reflected in health inside.
            let _ = self.flush(fsync_due);
            self.metrics.queued_bytes.set(self.queued_bytes() as f64);
            let written = self.written_seq();
            if written != last_published {
                last_published = written;
                on_written(written);
            }
            let park = {
                let mut state = self.state.lock();
                let idle = state.batch.is_empty() && state.failure.is_none();
                let fsync_pending = self.settings.fsync && state.dirty;
                if idle && !fsync_pending {
                    state.flusher_parked = true;
                }
                state.flusher_parked
            };
            if park {
                self.flusher.notified().await;
            }
        }
    }

    fn write_batch(&self, state: &mut State<F>) -> Result<(), JournalError> {
        if state.batch.is_empty() {
            return Ok(());
        }
        let result = state.file.as_ref().write_all(&state.batch);
        if let Err(source) = result {
            // Cut a partial write so the file stays a sequence of whole records.
            if let Err(e) = state.file.set_len(state.size) {
                tracing::error!(journal = self.settings.name, error = %e, "could not cut a partial write");
            }
            let message = source.to_string();
            if state.failure.as_deref() != Some(message.as_str()) {
                tracing::error!(
                    journal = self.settings.name,
                    path = %state.path.display(),
                    error = %source,
                    queued_records = state.batch_records,
                    "write failed; records stay queued and are retried"
                );
            }
            self.metrics.write_errors.increment(1);
            state.failure = Some(message);
            if !self.failing.swap(true, Ordering::AcqRel) {
                self.metrics.healthy.set(0.0);
            }
            self.note_batch_size(state);
            return Err(JournalError::Io {
                path: state.path.clone(),
                source,
            });
        }
        if state.failure.take().is_some() {
            tracing::info!(
                journal = self.settings.name,
                "writes succeed again; queued records written"
            );
            self.failing.store(false, Ordering::Release);
            self.metrics.healthy.set(1.0);
        }
        self.metrics.records.increment(state.batch_records);
        state.size += state.batch.len() as u64;
        state.batch.clear();
        state.batch_records = 0;
        state.dirty = true;
        self.written_seq.store(state.next_seq, Ordering::Release);
        self.note_batch_size(state);
        let aged = self
            .settings
            .segment_max_age
            .is_some_and(|age| state.opened.elapsed() >= age);
        if state.size >= self.settings.segment_bytes || (aged && state.size > 0) {
            self.rotate(state);
        }
        Ok(())
    }

    /// Starts the next segment; the closed one is fsynced by the next sync.
    fn rotate(&self, state: &mut State<F>) {
        let path = self.settings.dir.join(F::segment_name(state.next_seq));
        match open_append(&path) {
            Ok(file) => {
                let old = std::mem::replace(&mut state.file, Arc::new(file));
                state.unsynced.push(old);
                state.segments_created += 1;
                state.path = path;
                state.size = 0;
                state.opened = Instant::now();
            }
            Err(e) => {
                tracing::error!(journal = self.settings.name, error = %e, "segment rotation failed; continuing in the current one");
            }
        }
    }

    /// Takes note of a sync's `result`: on success what `plan` covered is on disk, every record
    /// below `through` with it; on failure it is synced again next time.
    fn synced(
        &self,
        plan: SyncPlan,
        result: std::io::Result<()>,
        through: u64,
    ) -> Result<(), JournalError> {
        if let Err(source) = result {
            self.metrics.write_errors.increment(1);
            tracing::error!(journal = self.settings.name, error = %source, "fsync failed");
            self.state.lock().dirty = true;
            return Err(JournalError::Io {
                path: self.settings.dir.clone(),
                source,
            });
        }
        {
            let mut state = self.state.lock();
            state
                .unsynced
                .retain(|file| !plan.files.iter().any(|synced| Arc::ptr_eq(file, synced)));
            if let Some(created) = plan.directory {
                state.directory_synced = state.directory_synced.max(created);
            }
        }
        let mut sync = self.sync.lock();
        sync.synced_seq = sync.synced_seq.max(through);
        Ok(())
    }

    fn note_batch_size(&self, state: &State<F>) {
        self.over_limit.store(
            state.batch.len() > self.settings.max_buffered_bytes,
            Ordering::Release,
        );
    }
}

impl<F: Framing> State<F> {
    fn push(&mut self, body: &[u8]) -> u64 {
        let seq = self.next_seq;
        self.framing.frame(seq, body, &mut self.batch);
        self.next_seq += 1;
        self.batch_records += 1;
        seq
    }

    /// What a sync now covers. The closed segments stay listed until a sync of them
    /// succeeds: a failed one, or one running concurrently (the flusher's and a group commit's),
    /// must not leave them out of the next.
    fn sync_plan(&self) -> SyncPlan {
        let mut files = self.unsynced.clone();
        files.push(self.file.clone());
        SyncPlan {
            files,
            directory: (self.segments_created > self.directory_synced)
                .then_some(self.segments_created),
        }
    }
}

/// One sync: the files' data, then the directory when segments were created since it was last
/// synced (a new segment's name is not durable until then: after a power loss its records
/// would be gone with it, though their fsync returned).
#[derive(Default)]
struct SyncPlan {
    files: Vec<Arc<File>>,
    /// `segments_created` when the plan was made, if the directory is to be synced.
    directory: Option<u64>,
}

impl SyncPlan {
    fn run(&self, dir: &Path) -> std::io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
        }
        if self.directory.is_some() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Cuts a segment back to its first `good_bytes` (a torn or garbled tail) and fsyncs it.
pub fn cut_tail(path: &Path, good_bytes: u64) -> Result<(), JournalError> {
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if len != good_bytes {
        tracing::warn!(path = %path.display(), cut_bytes = len.saturating_sub(good_bytes), "cutting a torn tail");
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(good_bytes).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
    }
    Ok(())
}

/// Checks a journal's settings in its section: records must reach the disk soon, and a full
/// disk must leave room to queue some. `delay_field` names the section's flush delay.
pub fn check_bounds(
    source: &crate::diagnostics::SourceText,
    section: &str,
    delay_field: &str,
    flush_interval: Duration,
    buffer_bytes: usize,
    issues: &mut Vec<crate::diagnostics::SourceIssue>,
) {
    if flush_interval > Duration::from_secs(10) {
        issues.push(source.issue(
            format!("{section}.{delay_field}"),
            "at most 10s (records wait this long in memory)",
        ));
    }
    if !(4096..=1 << 30).contains(&buffer_bytes) {
        issues.push(source.issue(
            format!("{section}.buffer_bytes"),
            "between 4096 and 1073741824 bytes",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"n":seq,...body}` lines, like the outbox's framing.
    struct Numbered;

    impl Framing for Numbered {
        fn frame(&mut self, seq: u64, body: &[u8], out: &mut Vec<u8>) {
            out.extend_from_slice(format!("{{\"n\":{seq},").as_bytes());
            out.extend_from_slice(body.get(1..).unwrap_or_default());
            out.push(b'\n');
        }
        fn segment_name(first_seq: u64) -> String {
            format!("seg-{first_seq:020}.jsonl")
        }
    }

    fn settings(dir: &Path) -> JournalSettings {
        JournalSettings {
            dir: dir.to_path_buf(),
            name: "test",
            segment_bytes: 1 << 20,
            segment_max_age: None,
            flush_interval: Duration::from_millis(5),
            flush_bytes: 1 << 16,
            max_buffered_bytes: 1 << 20,
            fsync_interval: None,
            fsync: true,
        }
    }

    fn lines(dir: &Path) -> Vec<String> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        paths
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn append_now_writes_queued_records_first_in_sequence_order() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(settings(dir.path()), Numbered, None, 7).unwrap();
        assert!(j.append(br#"{"k":"a"}"#, Keep::Always));
        assert!(j.append(br#"{"k":"b"}"#, Keep::IfRoom));
        assert!(lines(dir.path()).is_empty(), "queued, not written");
        assert_eq!(j.append_now(br#"{"k":"c"}"#).unwrap(), 9);
        assert_eq!(
            lines(dir.path()),
            [
                r#"{"n":7,"k":"a"}"#,
                r#"{"n":8,"k":"b"}"#,
                r#"{"n":9,"k":"c"}"#
            ]
        );
        assert_eq!(j.written_seq(), 10);
    }

    #[test]
    fn a_large_batch_is_written_by_the_appending_thread_and_segments_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.flush_bytes = 100;
        s.segment_bytes = 300;
        let j = Journal::open(s, Numbered, None, 0).unwrap();
        for _ in 0..40 {
            j.append(br#"{"pad":"0123456789"}"#, Keep::Always);
        }
        j.flush(false).unwrap();
        let all = lines(dir.path());
        assert_eq!(all.len(), 40);
        for (i, line) in all.iter().enumerate() {
            assert!(line.starts_with(&format!("{{\"n\":{i},")), "{line}");
        }
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(segments > 2, "{segments} segments");
    }

    #[tokio::test]
    async fn the_flusher_writes_queued_records_within_its_interval_and_parks_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(Journal::open(settings(dir.path()), Numbered, None, 0).unwrap());
        let published = Arc::new(AtomicU64::new(0));
        let seen = published.clone();
        let flusher = tokio::spawn(
            j.clone()
                .run_flusher(move |w| seen.store(w, Ordering::SeqCst)),
        );
        j.append(br#"{"k":1}"#, Keep::Always);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(lines(dir.path()).len(), 1);
        assert_eq!(published.load(Ordering::SeqCst), 1);
        assert!(j.state.lock().flusher_parked, "idle: parked");
        // A record after it parked wakes it.
        j.append(br#"{"k":2}"#, Keep::Always);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(lines(dir.path()).len(), 2);
        flusher.abort();
    }

    #[tokio::test]
    async fn concurrent_syncs_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(Journal::open(settings(dir.path()), Numbered, None, 0).unwrap());
        let mut tasks = Vec::new();
        for i in 0..32 {
            let j = j.clone();
            tasks.push(tokio::spawn(async move {
                let seq = j.append_now(format!("{{\"i\":{i}}}").as_bytes()).unwrap();
                j.sync_through(seq).await.unwrap();
                seq
            }));
        }
        for t in tasks {
            let seq = t.await.unwrap();
            assert!(j.sync.lock().synced_seq > seq);
        }
        assert_eq!(lines(dir.path()).len(), 32);
    }

    /// A closed segment stays to be synced until a sync of it succeeds, and a new segment's
    /// directory is synced with it.
    #[test]
    fn closed_segments_and_new_names_are_synced_until_a_sync_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.segment_bytes = 64;
        let j = Journal::open(s, Numbered, None, 0).unwrap();
        assert_eq!(
            j.state.lock().sync_plan().directory,
            Some(1),
            "a new segment"
        );
        for i in 0..10 {
            j.append_now(format!(r#"{{"k":"record-{i}"}}"#).as_bytes())
                .unwrap();
        }
        let plan = j.state.lock().sync_plan();
        let closed = plan.files.len() - 1;
        assert!(closed >= 3, "rotated: {closed}");
        assert_eq!(plan.directory, Some(1 + closed as u64));
        // A failed sync (EIO) leaves everything to the next one.
        assert!(j
            .synced(plan, Err(std::io::Error::other("EIO")), 10)
            .is_err());
        let again = j.state.lock().sync_plan();
        assert_eq!(
            (again.files.len(), again.directory),
            (closed + 1, Some(1 + closed as u64))
        );
        j.flush(true).unwrap();
        let after = j.state.lock().sync_plan();
        assert_eq!((after.files.len(), after.directory), (1, None));
    }

    /// A small buffer limit (the smallest allowed, 4096 bytes) with writes succeeding: no
    /// record is refused — the batch is written before it reaches the limit.
    #[test]
    fn a_small_buffer_refuses_nothing_while_writes_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.max_buffered_bytes = 4096;
        s.flush_interval = Duration::from_secs(10);
        let j = Journal::open(s, Numbered, None, 0).unwrap();
        for i in 0..2_000 {
            assert!(
                j.append(format!(r#"{{"k":"record-{i}"}}"#).as_bytes(), Keep::IfRoom),
                "record {i} refused"
            );
            assert!(j.accepting(), "not accepting at record {i}");
        }
    }

    /// A write that succeeds and a sync that fails (fsync of /dev/null is EINVAL): the
    /// record is in the file but `sync_through` fails — what the outbox reports as
    /// `NotSynced`, so the proxy ends the begin record it cannot take back.
    #[tokio::test]
    async fn a_record_can_be_written_and_its_sync_fail() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(settings(dir.path()), Numbered, None, 0).unwrap();
        j.state.lock().file = Arc::new(OpenOptions::new().append(true).open("/dev/null").unwrap());
        let seq = j.append_now(br#"{"k":"written"}"#).unwrap();
        assert!(j.sync_through(seq).await.is_err(), "the sync failed");
    }

    /// A full filesystem: /dev/full fails every write with ENOSPC.
    #[test]
    fn failed_writes_keep_records_queued_refuse_optional_ones_over_the_limit_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.max_buffered_bytes = 64;
        let j = Journal::open(s, Numbered, None, 0).unwrap();
        let good = std::mem::replace(
            &mut j.state.lock().file,
            Arc::new(OpenOptions::new().append(true).open("/dev/full").unwrap()),
        );
        assert!(j.append(br#"{"k":"kept"}"#, Keep::Always));
        assert!(j.append_now(br#"{"k":"refused"}"#).is_err());
        assert!(!j.healthy());
        assert!(j.failure().is_some());
        // Over the limit: optional records are dropped, required ones still kept.
        while j.accepting() {
            assert!(j.append(br#"{"k":"fill-up-the-queue"}"#, Keep::Always));
        }
        assert!(!j.append(br#"{"k":"dropped"}"#, Keep::IfRoom));
        assert!(j.append(br#"{"k":"in-flight"}"#, Keep::Always));
        // Space returns.
        j.state.lock().file = good;
        j.state.lock().size = 0;
        j.flush(true).unwrap();
        assert!(j.healthy() && j.accepting());
        let all = lines(dir.path());
        assert_eq!(
            all.first().map(String::as_str),
            Some(r#"{"n":0,"k":"kept"}"#)
        );
        assert!(all
            .iter()
            .all(|l| !l.contains("refused") && !l.contains("dropped")));
        assert!(all.last().unwrap().contains("in-flight"));
        for (i, line) in all.iter().enumerate() {
            assert!(
                line.starts_with(&format!("{{\"n\":{i},")),
                "gap-free: {line}"
            );
        }
    }
}
