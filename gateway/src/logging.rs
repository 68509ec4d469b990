//! Log output on stderr. Lines at INFO and below (the access and decision lines: one or two per
//! request at the default level) are collected in memory and written in batches — when 64 KiB
//! have gathered or every 100 ms — so a request costs no `write(2)` for its log lines. WARN and
//! ERROR lines are written at once, after whatever is buffered, so the order of lines is kept.
//! The buffer is flushed at exit and by the panic hook; a SIGKILL loses at most the last 100 ms
//! of INFO lines (usage and audit records do not go through logs).

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Buffered lines are written when this much has gathered.
const FLUSH_BYTES: usize = 64 * 1024;
/// ... or at the latest after this long.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The process's log sink (the subscriber is process-wide, so is its sink).
static SINK: OnceLock<Arc<Sink>> = OnceLock::new();

/// Where log lines go: a buffer in front of stderr.
pub struct Sink {
    pending: Mutex<Vec<u8>>,
}

impl Sink {
    fn new() -> Self {
        Sink {
            pending: Mutex::new(Vec::with_capacity(FLUSH_BYTES)),
        }
    }

    fn append(&self, line: &[u8]) {
        let mut pending = self.pending.lock();
        pending.extend_from_slice(line);
        if pending.len() >= FLUSH_BYTES {
            write_out(&mut pending);
        }
    }

    fn write_through(&self, line: &[u8]) {
        let mut pending = self.pending.lock();
        write_out(&mut pending);
        // Nothing sensible to do when stderr itself fails.
        let _ = std::io::stderr().lock().write_all(line);
    }

    fn flush(&self) {
        write_out(&mut self.pending.lock());
    }
}

fn write_out(pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        let _ = std::io::stderr().lock().write_all(pending);
        pending.clear();
    }
}

/// The `MakeWriter` of the subscriber: buffered below WARN, direct at WARN and above.
#[derive(Clone)]
pub struct SinkWriter {
    sink: Arc<Sink>,
}

/// One event's writer.
pub struct EventWriter<'a> {
    sink: &'a Sink,
    direct: bool,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.direct {
            self.sink.write_through(buf);
        } else {
            self.sink.append(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            sink: &self.sink,
            direct: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        EventWriter {
            sink: &self.sink,
            // ERROR < WARN < INFO in tracing's order (most severe first).
            direct: *meta.level() <= Level::WARN,
        }
    }
}

/// The writer for the process's subscriber; starts the flusher thread the first time and makes
/// the panic hook flush before it reports.
pub fn writer() -> SinkWriter {
    let sink = SINK
        .get_or_init(|| {
            let sink = Arc::new(Sink::new());
            let flushed = sink.clone();
            // A plain thread: it must also flush while the async runtimes are busy or gone.
            let _ = std::thread::Builder::new()
                .name("log-flush".into())
                .spawn(move || loop {
                    std::thread::sleep(FLUSH_INTERVAL);
                    flushed.flush();
                });
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                flush();
                previous(info);
            }));
            sink
        })
        .clone();
    SinkWriter { sink }
}

/// Writes every buffered line now (before exiting).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_lines_wait_for_the_batch_and_go_out_before_a_direct_line() {
        let sink = Sink::new();
        let mut buffered = EventWriter {
            sink: &sink,
            direct: false,
        };
        buffered.write_all(b"one\n").unwrap();
        assert_eq!(&*sink.pending.lock(), b"one\n");
        let mut direct = EventWriter {
            sink: &sink,
            direct: true,
        };
        direct.write_all(b"two\n").unwrap();
        assert!(
            sink.pending.lock().is_empty(),
            "written out before the direct line"
        );
        buffered.write_all(&vec![b'x'; FLUSH_BYTES]).unwrap();
        assert!(
            sink.pending.lock().is_empty(),
            "a full batch is written at once"
        );
    }
}
