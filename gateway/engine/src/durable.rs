//! Small durable-file operations shared by the writers that must not lose data (exporter
//! checkpoints and dead letters, the webhook queue).

use std::io::Write;
use std::path::Path;

/// Appends `line` and a newline, then fsyncs; creates the file (and its directory) if missing.
/// A partial last line (an append cut short by a crash) is ended first, so `line` stays a line
/// of its own (the partial one is skipped as unreadable) instead of being joined to it.
pub fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    let mut last = [b'\n'];
    if len > 0 {
        file.read_exact_at(&mut last, len - 1)?;
    }
    let mut bytes = Vec::with_capacity(line.len() + 2);
    if last != [b'\n'] {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    file.write_all(&bytes)?;
    file.sync_data()
}

/// Replaces `path` with `bytes` atomically: a temporary file next to it, fsync, rename, and an
/// fsync of the directory (without it the rename itself may not survive a power loss).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically_with(path, |out| out.write_all(bytes))
}

/// [`write_atomically`] with the content written by `fill`, streamed (never held whole).
pub fn write_atomically_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        fill(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_lines_and_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sub/log.jsonl");
        append_line(&log, "one").unwrap();
        append_line(&log, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\n");
        // A crash cut the next append short: the one after it is still a line of its own.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"{\"thr")
            .unwrap();
        append_line(&log, "four").unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "one\ntwo\n{\"thr\nfour\n"
        );
        let file = dir.path().join("offset");
        write_atomically(&file, b"1").unwrap();
        write_atomically(&file, b"22").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "22");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "sub/ and offset, no temporary left"
        );
    }
}
