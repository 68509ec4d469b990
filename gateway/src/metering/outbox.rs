//! The durable local outbox: append-only JSON-lines segment files with one global, gap-free
//! record offset. One writer task owns the files; the request path hands it records through a
//! bounded channel. A torn last line (power loss mid-write) is cut off when the outbox opens.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordBody {
    /// The first record of every process: begins of earlier processes without an end were
    /// interrupted.
    Boot,
    /// A request about to be forwarded.
    Begin(Box<EventStart>),
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
    /// After every batch the writer appends.
    Batch,
    /// At most every `fsync_interval`.
    Interval,
}

/// What the request path does when the writer's channel is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room (backpressure on the request).
    Block,
    /// Queue in memory beyond the channel (no waiting; memory grows until the writer catches up).
    Spill,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox writer stopped")]
    Stopped,
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
    pub channel_capacity: usize,
    pub when_full: WhenFull,
}

struct Pending {
    body: RecordBody,
    written: Option<oneshot::Sender<()>>,
}

/// The request path's handle on the outbox.
#[derive(Clone)]
pub struct OutboxHandle {
    tx: mpsc::Sender<Pending>,
    overflow: Arc<Mutex<VecDeque<Pending>>>,
    when_full: WhenFull,
    wake: Arc<tokio::sync::Notify>,
}

impl OutboxHandle {
    /// Appends a record and waits until it is written (not necessarily fsynced).
    pub async fn append_written(&self, body: RecordBody) -> Result<(), OutboxError> {
        let (tx, rx) = oneshot::channel();
        self.push(Pending {
            body,
            written: Some(tx),
        })
        .await?;
        rx.await.map_err(|_| OutboxError::Stopped)
    }

    /// Appends a record without waiting for the write.
    pub async fn append(&self, body: RecordBody) -> Result<(), OutboxError> {
        self.push(Pending {
            body,
            written: None,
        })
        .await
    }

    async fn push(&self, pending: Pending) -> Result<(), OutboxError> {
        match self.tx.try_send(pending) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(OutboxError::Stopped),
            Err(mpsc::error::TrySendError::Full(pending)) => {
                metrics::counter!("gateway_outbox_full_total", "policy" => match self.when_full {
                    WhenFull::Block => "block",
                    WhenFull::Spill => "spill",
                })
                .increment(1);
                match self.when_full {
                    WhenFull::Block => self
                        .tx
                        .send(pending)
                        .await
                        .map_err(|_| OutboxError::Stopped),
                    WhenFull::Spill => {
                        self.overflow
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push_back(pending);
                        self.wake.notify_one();
                        Ok(())
                    }
                }
            }
        }
    }
}

/// Progress of the writer, for exporters and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Offset the next record will get.
    pub next_offset: u64,
}

/// The writer task and what it needs.
pub struct OutboxWriter {
    settings: OutboxSettings,
    rx: mpsc::Receiver<Pending>,
    overflow: Arc<Mutex<VecDeque<Pending>>>,
    wake: Arc<tokio::sync::Notify>,
    boot: String,
    file: File,
    segment_path: PathBuf,
    segment_size: u64,
    next_offset: u64,
    progress: watch::Sender<Written>,
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

/// Opens the outbox (recovering a torn tail), writes this process's boot record, and returns
/// the handle for the request path, the writer task and its progress.
pub fn open(
    settings: OutboxSettings,
) -> Result<(OutboxHandle, OutboxWriter, watch::Receiver<Written>), OutboxError> {
    std::fs::create_dir_all(&settings.dir).map_err(io(&settings.dir))?;
    let existing = segments(&settings.dir)?;
    let (segment_path, next_offset) = match existing.last() {
        Some((first, path)) => (path.clone(), recover_segment(path, *first)?),
        None => (settings.dir.join(segment_name(0)), 0),
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&segment_path)
        .map_err(io(&segment_path))?;
    let segment_size = file.metadata().map_err(io(&segment_path))?.len();
    let (tx, rx) = mpsc::channel(settings.channel_capacity.max(1));
    let (progress, progress_rx) = watch::channel(Written { next_offset });
    let overflow = Arc::new(Mutex::new(VecDeque::new()));
    let wake = Arc::new(tokio::sync::Notify::new());
    let handle = OutboxHandle {
        tx,
        overflow: overflow.clone(),
        when_full: settings.when_full,
        wake: wake.clone(),
    };
    let mut writer = OutboxWriter {
        settings,
        rx,
        overflow,
        wake,
        boot: uuid::Uuid::now_v7().to_string(),
        file,
        segment_path,
        segment_size,
        next_offset,
        progress,
    };
    writer.write_batch(vec![Pending {
        body: RecordBody::Boot,
        written: None,
    }])?;
    Ok((handle, writer, progress_rx))
}

/// Reads a segment, cuts off a torn or garbled tail, and returns the next offset.
fn recover_segment(path: &Path, first: u64) -> Result<u64, OutboxError> {
    let file = File::open(path).map_err(io(path))?;
    let mut reader = BufReader::new(file);
    let mut good_bytes = 0u64;
    let mut next = first;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io(path))?;
        if n == 0 {
            break;
        }
        if !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<OutboxRecord>(&line) {
            Ok(r) if r.offset == next => {
                next += 1;
                good_bytes += n as u64;
            }
            _ => break,
        }
    }
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if len != good_bytes {
        tracing::warn!(path = %path.display(), cut_bytes = len - good_bytes, "outbox: cutting a torn tail");
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(good_bytes).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
    }
    Ok(next)
}

impl OutboxWriter {
    pub fn boot_id(&self) -> &str {
        &self.boot
    }

    /// Writes records until every handle is dropped or shutdown; flushes before returning.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut fsync_tick = tokio::time::interval(self.settings.fsync_interval);
        let mut dirty = false;
        loop {
            enum Step {
                Got(Pending),
                Closed,
                Wake,
            }
            let step = tokio::select! {
                biased;
                p = self.rx.recv() => match p {
                    Some(p) => Step::Got(p),
                    None => Step::Closed,
                },
                _ = self.wake.notified() => Step::Wake,
                _ = fsync_tick.tick(), if self.settings.fsync == FsyncPolicy::Interval && dirty => {
                    if let Err(e) = self.file.sync_data() {
                        tracing::error!(error = %e, "outbox fsync failed");
                    }
                    dirty = false;
                    continue;
                }
                _ = shutdown.changed() => {
                    self.drain_and_stop();
                    return;
                }
            };
            let mut batch: Vec<Pending> = self
                .overflow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
                .collect();
            match step {
                Step::Got(p) => batch.push(p),
                Step::Closed => {
                    self.drain_and_stop();
                    return;
                }
                Step::Wake => {}
            }
            while batch.len() < 4096 {
                match self.rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = self.write_batch(batch) {
                // Records of this batch were acknowledged to nobody; their requests see the error.
                metrics::counter!("gateway_outbox_write_errors_total").increment(1);
                tracing::error!(error = %e, "outbox write failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            dirty = true;
        }
    }

    fn drain_and_stop(&mut self) {
        let mut batch: Vec<Pending> = self
            .overflow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        while let Ok(p) = self.rx.try_recv() {
            batch.push(p);
        }
        if !batch.is_empty() {
            if let Err(e) = self.write_batch(batch) {
                tracing::error!(error = %e, "outbox write at shutdown failed");
            }
        }
        let _ = self.file.sync_data();
    }

    fn write_batch(&mut self, batch: Vec<Pending>) -> Result<(), OutboxError> {
        let mut buf = Vec::with_capacity(batch.len() * 384);
        let mut acks = Vec::with_capacity(batch.len());
        let first_offset = self.next_offset;
        for pending in batch {
            let record = OutboxRecord {
                offset: self.next_offset,
                boot: self.boot.clone(),
                body: pending.body,
            };
            // Records are plain data: serializing cannot fail.
            if let Ok(line) = serde_json::to_vec(&record) {
                buf.extend_from_slice(&line);
                buf.push(b'\n');
                self.next_offset += 1;
            }
            if let Some(ack) = pending.written {
                acks.push(ack);
            }
        }
        if let Err(e) = self.file.write_all(&buf) {
            // Undo a partial write so the file stays a sequence of whole records.
            let _ = self.file.set_len(self.segment_size);
            self.next_offset = first_offset;
            return Err(io(&self.segment_path)(e));
        }
        if self.settings.fsync == FsyncPolicy::Batch {
            self.file.sync_data().map_err(io(&self.segment_path))?;
        }
        self.segment_size += buf.len() as u64;
        metrics::counter!("gateway_outbox_records_total")
            .increment(self.next_offset - first_offset);
        let _ = self.progress.send(Written {
            next_offset: self.next_offset,
        });
        for ack in acks {
            let _ = ack.send(());
        }
        if self.segment_size >= self.settings.segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), OutboxError> {
        self.file.sync_data().map_err(io(&self.segment_path))?;
        let path = self.settings.dir.join(segment_name(self.next_offset));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        self.segment_path = path;
        self.segment_size = 0;
        Ok(())
    }
}

/// Reads records in offset order, following the writer across segments.
pub struct OutboxCursor {
    dir: PathBuf,
    next_offset: u64,
    current: Option<(BufReader<File>, u64)>,
}

impl OutboxCursor {
    pub fn new(dir: &Path, from_offset: u64) -> Self {
        OutboxCursor {
            dir: dir.to_path_buf(),
            next_offset: from_offset,
            current: None,
        }
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Up to `max` records from the cursor on; fewer (maybe none) at the end of what is written.
    pub fn read(&mut self, max: usize) -> Result<Vec<OutboxRecord>, OutboxError> {
        let mut out = Vec::new();
        while out.len() < max {
            if self.current.is_none() && !self.open_segment()? {
                break;
            }
            let Some((reader, _)) = self.current.as_mut() else {
                break;
            };
            let mut line = String::new();
            let position = reader.stream_position().map_err(io(&self.dir))?;
            let n = reader.read_line(&mut line).map_err(io(&self.dir))?;
            if n == 0 || !line.ends_with('\n') {
                // End of this segment for now: either the writer moved on, or is mid-write.
                reader
                    .seek(SeekFrom::Start(position))
                    .map_err(io(&self.dir))?;
                let later = segments(&self.dir)?.into_iter().any(|(first, _)| {
                    first > self.current.as_ref().map_or(0, |c| c.1) && first <= self.next_offset
                });
                if later {
                    self.current = None;
                    continue;
                }
                break;
            }
            let record: OutboxRecord =
                serde_json::from_str(&line).map_err(|e| OutboxError::Io {
                    path: self.dir.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })?;
            if record.offset < self.next_offset {
                continue;
            }
            self.next_offset = record.offset + 1;
            out.push(record);
        }
        Ok(out)
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
        self.current = Some((BufReader::new(file), first));
        Ok(true)
    }
}
