//! Responses written as they are produced: a usage report or an audit export of millions of
//! rows goes out in 64 KiB chunks from a blocking task instead of being built in memory first.
//!
//! The status is decided by the first chunk: a producer that fails before it has written
//! 64 KiB (a missing directory, a broken chain at the start) still gets a `500` problem. A
//! failure after that can no longer change the status; the body then ends without its final
//! chunk, so the client sees a truncated transfer, never a complete-looking file.

use std::io::Write;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::{problem, AdminResponse};

/// Bytes gathered before a chunk is sent.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight between the producer and the connection (a slow client slows the
/// producer instead of growing a buffer).
const CHUNKS_IN_FLIGHT: usize = 4;

enum Chunk {
    Data(Bytes),
    Failed(String),
}

/// A `Write` that hands what is written to the response in chunks.
struct ChannelWriter {
    tx: mpsc::Sender<Chunk>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.tx.blocking_send(Chunk::Data(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A `200` response of `content_type` whose body `produce` writes on a blocking thread.
pub(crate) async fn streamed(
    content_type: &'static str,
    disposition: Option<&'static str>,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), String> + Send + 'static,
) -> AdminResponse {
    let (tx, mut rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let failed = tx.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx,
            buffer: Vec::with_capacity(CHUNK_BYTES),
        };
        let result = produce(&mut writer).and_then(|()| writer.flush().map_err(|e| e.to_string()));
        if let Err(e) = result {
            tracing::warn!(error = %e, "admin: export failed");
            let _ = failed.blocking_send(Chunk::Failed(e));
        }
    });
    let first = match rx.recv().await {
        Some(Chunk::Failed(e)) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e),
        Some(Chunk::Data(bytes)) => Some(bytes),
        None => None,
    };
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await? {
            Chunk::Data(bytes) => Some((Ok(Frame::data(bytes)), rx)),
            Chunk::Failed(e) => Some((Err(std::io::Error::other(e)), rx)),
        }
    });
    let head = futures_util::stream::iter(first.map(|bytes| Ok(Frame::data(bytes))));
    let body = StreamBody::new(futures_util::StreamExt::chain(head, rest)).boxed();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if let Some(disposition) = disposition {
        headers.insert(
            http::header::CONTENT_DISPOSITION,
            http::HeaderValue::from_static(disposition),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: AdminResponse) -> Result<Vec<u8>, std::io::Error> {
        response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_body_goes_out_in_chunks_and_whole() {
        let rows = 50_000;
        let response = streamed("text/csv", Some("attachment"), move |out| {
            for i in 0..rows {
                writeln!(out, "{i},row").map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-disposition"], "attachment");
        let body = String::from_utf8(body_of(response).await.unwrap()).unwrap();
        assert_eq!(body.lines().count(), rows);
        assert!(
            body.len() > 4 * CHUNK_BYTES,
            "several chunks: {}",
            body.len()
        );
        assert!(body.ends_with("49999,row\n"));
    }

    #[tokio::test]
    async fn an_early_failure_is_a_problem_and_a_late_one_truncates_the_body() {
        let early = streamed("text/csv", None, |out| {
            out.write_all(b"period,tenant\n")
                .map_err(|e| e.to_string())?;
            Err("outbox /var/lib/gateway/usage: permission denied".into())
        })
        .await;
        assert_eq!(early.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let problem = String::from_utf8(body_of(early).await.unwrap()).unwrap();
        assert!(problem.contains("permission denied"), "{problem}");

        let late = streamed("text/csv", None, |out| {
            out.write_all(&vec![b'x'; 3 * CHUNK_BYTES])
                .map_err(|e| e.to_string())?;
            Err("segment 7: broken chain".into())
        })
        .await;
        assert_eq!(late.status(), StatusCode::OK);
        let error = body_of(late).await.unwrap_err();
        assert!(error.to_string().contains("broken chain"), "{error}");
    }
}
