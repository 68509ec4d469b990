//! Entity records from an HTTP endpoint of the upstream: the record of `Type::"id"` is
//! `GET {base}/{Type}/{id}` (each segment percent-encoded, so an id with `/`, `?`, `#`, spaces or
//! any Unicode stays one segment), answered `200` with Cedar entity JSON (`uid` may be left out;
//! when given it must be the entity asked for) or `404`/`410` for "no such entity". Anything
//! else — another status, a body over [`MAX_BODY`], a timeout, a refused connection — is a
//! provider error.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::StatusCode;
use serde_json::Value;

use super::{describe, EntityProvider, ProviderError};
use crate::http_body::BodyError;

/// The largest record body read.
pub const MAX_BODY: usize = 64 * 1024;

/// What stays unencoded in a path segment: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Entity records served over HTTP (see the module documentation).
#[derive(Debug, Clone)]
pub struct HttpEntities {
    http: reqwest::Client,
    /// The base URL without a trailing `/`.
    base: String,
    timeout: Duration,
    /// `http entity store <base>`, credentials left out.
    provider: String,
}

impl HttpEntities {
    /// Builds the provider for `base` (an `http://` or `https://` URL without query or
    /// fragment); one fetch, connecting and reading the body included, may take `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Result<HttpEntities, String> {
        let url = reqwest::Url::parse(base).map_err(|e| format!("`{base}`: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{base}`: must be an http:// or https:// URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "`{base}`: the base URL cannot have a query or a fragment"
            ));
        }
        if timeout.is_zero() {
            return Err("the timeout must be more than zero".to_string());
        }
        let mut shown = url.clone();
        // Credentials in the URL are sent (basic auth), never shown.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            // A redirect is an answer the endpoint was not configured to give.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("policy-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(HttpEntities {
            http,
            base: url.as_str().trim_end_matches('/').to_string(),
            timeout,
            provider: format!("http entity store {}", shown.as_str().trim_end_matches('/')),
        })
    }

    /// The URL of `type_name::"id"`.
    fn url(&self, type_name: &str, id: &str) -> Result<reqwest::Url, String> {
        for segment in [type_name, id] {
            // URL parsing resolves `.` and `..` (encoded or not): they cannot name a record.
            if matches!(segment, "" | "." | "..") {
                return Err(format!("{segment:?} cannot be a URL path segment"));
            }
        }
        let url = format!(
            "{}/{}/{}",
            self.base,
            utf8_percent_encode(type_name, SEGMENT),
            utf8_percent_encode(id, SEGMENT)
        );
        reqwest::Url::parse(&url).map_err(|e| e.to_string())
    }

    async fn get(&self, type_name: &str, id: &str) -> Result<Option<Value>, String> {
        let url = self.url(type_name, id)?;
        let response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| describe(&e.without_url()))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::GONE => return Ok(None),
            status => return Err(format!("answered {status}")),
        }
        let body = crate::http_body::read_capped(response, MAX_BODY)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge { .. } => format!("the record is {e}"),
                BodyError::Read(e) => format!("reading the record: {}", describe(&e.without_url())),
            })?;
        let mut record: Value =
            serde_json::from_slice(&body).map_err(|e| format!("the record is not JSON: {e}"))?;
        let Some(fields) = record.as_object_mut() else {
            return Err("the record is not a JSON object".to_string());
        };
        match fields.get("uid") {
            None => {
                fields.insert(
                    "uid".to_string(),
                    serde_json::json!({"type": type_name, "id": id}),
                );
            }
            Some(uid) => check_uid(uid, type_name, id)?,
        }
        Ok(Some(record))
    }
}

/// A record's `uid` (`{"type", "id"}` or `{"__entity": {"type", "id"}}`) must be the entity
/// asked for; a namespaced type (`App::Doc`) names the basename asked for.
fn check_uid(uid: &Value, type_name: &str, id: &str) -> Result<(), String> {
    let inner = uid.get("__entity").unwrap_or(uid);
    let (Some(t), Some(i)) = (
        inner.get("type").and_then(Value::as_str),
        inner.get("id").and_then(Value::as_str),
    ) else {
        return Err(format!(
            "the record's uid is not {{\"type\": …, \"id\": …}}: {uid}"
        ));
    };
    let same_type = t == type_name
        || t.strip_suffix(type_name)
            .is_some_and(|namespace| namespace.ends_with("::"));
    if same_type && i == id {
        Ok(())
    } else {
        Err(format!(
            "asked for {type_name}::{id:?}, the record is of {t}::{i:?}"
        ))
    }
}

#[async_trait::async_trait]
impl EntityProvider for HttpEntities {
    async fn fetch(&self, type_name: &str, id: &str) -> Result<Option<Value>, ProviderError> {
        let answer = tokio::time::timeout(self.timeout, self.get(type_name, id))
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.timeout)));
        answer.map_err(|reason| ProviderError {
            provider: self.provider.clone(),
            reason: format!("{type_name}::{id:?}: {reason}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use hyper::body::Incoming;
    use hyper::{Request, Response};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the test server answers: status, body, delay.
    type Answer = (u16, String, Duration);

    /// The paths a test server was asked for (as sent, still encoded), and how many
    /// connections it accepted.
    #[derive(Clone, Default)]
    struct Seen {
        paths: Arc<Mutex<Vec<String>>>,
        connections: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Seen {
        fn paths(&self) -> Vec<String> {
            self.paths.lock().unwrap().clone()
        }

        fn connections(&self) -> usize {
            self.connections.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// A hyper server on 127.0.0.1 answering every request with `answer(path)`.
    async fn server(answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let answer = Arc::new(answer);
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                log.connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = answer.clone();
                let log = log.paths.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let path = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default();
                    let accept = req.headers().get("accept").cloned();
                    log.lock()
                        .unwrap()
                        .push(if accept.is_some_and(|a| a == "application/json") {
                            path.clone()
                        } else {
                            format!("{path} without accept: application/json")
                        });
                    let (status, body, delay) = answer(&path);
                    async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn doc(id: &str) -> Value {
        json!({"uid": {"type": "Doc", "id": id},
               "attrs": {"owner": {"__entity": {"type": "User", "id": "alice"}}},
               "parents": []})
    }

    fn ok(body: Value) -> Answer {
        (200, body.to_string(), Duration::ZERO)
    }

    const TIMEOUT: Duration = Duration::from_millis(250);

    #[tokio::test]
    async fn a_found_record_is_the_body_and_a_missing_uid_is_filled_in() {
        let (base, seen) = server(|path| match path {
            "/entities/Doc/1" => ok(doc("1")),
            "/entities/Doc/2" => ok(json!({"attrs": {}, "parents": []})),
            "/entities/Doc/3" => ok(json!({"uid": {"__entity": {"type": "App::Doc", "id": "3"}},
                                           "attrs": {}, "parents": []})),
            _ => (500, String::new(), Duration::ZERO),
        })
        .await;
        // A trailing slash on the base is not doubled.
        let entities = HttpEntities::new(&format!("{base}/entities/"), TIMEOUT).unwrap();
        let record = entities.fetch("Doc", "1").await.unwrap();
        assert_eq!(record, Some(doc("1")));
        let schema = cedar_policy::Schema::from_cedarschema_str(
            "entity User; entity Doc = { owner: User };",
        )
        .unwrap()
        .0;
        super::super::StoredEntity::from_json(record.unwrap(), &schema).unwrap();
        assert_eq!(
            entities.fetch("Doc", "2").await.unwrap(),
            Some(json!({"uid": {"type": "Doc", "id": "2"}, "attrs": {}, "parents": []}))
        );
        assert!(entities.fetch("Doc", "3").await.unwrap().is_some());
        assert_eq!(
            seen.paths(),
            ["/entities/Doc/1", "/entities/Doc/2", "/entities/Doc/3"]
        );
    }

    #[tokio::test]
    async fn not_found_and_gone_are_none_other_statuses_are_errors() {
        let (base, seen) = server(|path| match path {
            "/Doc/gone" => (410, String::new(), Duration::ZERO),
            "/Doc/broken" => (500, "oops".to_string(), Duration::ZERO),
            "/Doc/moved" => (302, String::new(), Duration::ZERO),
            "/Doc/empty" => (204, String::new(), Duration::ZERO),
            _ => (404, "{}".to_string(), Duration::ZERO),
        })
        .await;
        let entities = HttpEntities::new(&base, TIMEOUT).unwrap();
        for _ in 0..3 {
            assert_eq!(entities.fetch("Doc", "nope").await.unwrap(), None);
            assert_eq!(entities.fetch("Doc", "gone").await.unwrap(), None);
        }
        assert_eq!(seen.connections(), 1, "one connection serves every miss");
        let err = entities.fetch("Doc", "broken").await.unwrap_err();
        assert_eq!(err.provider, format!("http entity store {base}"));
        assert!(err.reason.contains("500 Internal Server Error"), "{err}");
        assert!(err.reason.contains("Doc::\"broken\""), "{err}");
        let err = entities.fetch("Doc", "moved").await.unwrap_err();
        assert!(err.reason.contains("302"), "{err}");
        let err = entities.fetch("Doc", "empty").await.unwrap_err();
        assert!(err.reason.contains("204"), "{err}");
    }

    #[tokio::test]
    async fn a_slow_answer_times_out_within_the_bound() {
        let (base, _) = server(|_| (200, doc("1").to_string(), Duration::from_secs(5))).await;
        let entities = HttpEntities::new(&base, TIMEOUT).unwrap();
        let started = Instant::now();
        let err = entities.fetch("Doc", "1").await.unwrap_err();
        let took = started.elapsed();
        assert!(err.reason.contains("timed out after 250ms"), "{err}");
        assert!(
            took >= TIMEOUT && took < TIMEOUT + Duration::from_millis(200),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error() {
        // A port that was free a moment ago.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let entities =
            HttpEntities::new(&format!("http://user:secret@127.0.0.1:{port}"), TIMEOUT).unwrap();
        let err = entities.fetch("Doc", "1").await.unwrap_err();
        assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[tokio::test]
    async fn ids_are_sent_percent_encoded_as_one_segment() {
        let (base, seen) = server(|path| {
            let id = path.rsplit('/').next().unwrap();
            let id = percent_encoding::percent_decode_str(id)
                .decode_utf8()
                .unwrap()
                .to_string();
            ok(json!({"uid": {"type": "Doc", "id": id}, "attrs": {}, "parents": []}))
        })
        .await;
        let entities = HttpEntities::new(&base, TIMEOUT).unwrap();
        for id in ["a/b c", "q?x=1#frag", "ü €", "%2F", "..x", "~a-b_c.d"] {
            let record = entities.fetch("Doc", id).await.unwrap().unwrap();
            assert_eq!(record["uid"]["id"], id);
        }
        assert_eq!(
            seen.paths(),
            [
                "/Doc/a%2Fb%20c",
                "/Doc/q%3Fx%3D1%23frag",
                "/Doc/%C3%BC%20%E2%82%AC",
                "/Doc/%252F",
                "/Doc/..x",
                "/Doc/~a-b_c.d"
            ]
        );
        // Dot segments would be resolved away: refused, never sent.
        for id in ["..", ".", ""] {
            let err = entities.fetch("Doc", id).await.unwrap_err();
            assert!(err.reason.contains("path segment"), "{err}");
        }
        assert_eq!(seen.paths().len(), 6);
    }

    #[tokio::test]
    async fn an_oversize_body_is_refused() {
        let big = json!({"attrs": {"blob": "x".repeat(MAX_BODY)}, "parents": []});
        let (base, _) = server(move |_| ok(big.clone())).await;
        let entities = HttpEntities::new(&base, TIMEOUT).unwrap();
        let err = entities.fetch("Doc", "1").await.unwrap_err();
        assert!(err.reason.contains("larger than 65536 bytes"), "{err}");
    }

    #[tokio::test]
    async fn an_oversize_body_without_a_length_is_refused_while_reading() {
        // A chunked answer that never says how long it is.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("1000\r\n{}\r\n", "x".repeat(0x1000));
            for _ in 0..64 {
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let entities =
            HttpEntities::new(&format!("http://{addr}"), Duration::from_secs(5)).unwrap();
        let err = entities.fetch("Doc", "1").await.unwrap_err();
        assert!(err.reason.contains("larger than 65536 bytes"), "{err}");
    }

    #[tokio::test]
    async fn a_record_of_another_entity_is_refused() {
        let (base, _) = server(|path| match path {
            "/Doc/1" => ok(doc("2")),
            "/Doc/2" => ok(json!({"uid": {"type": "User", "id": "2"}, "attrs": {}, "parents": []})),
            "/Doc/3" => ok(json!({"uid": {"type": "XDoc", "id": "3"}, "attrs": {}, "parents": []})),
            "/Doc/4" => ok(json!({"uid": "Doc::\"4\"", "attrs": {}, "parents": []})),
            "/Doc/5" => ok(json!([doc("5")])),
            _ => (200, "not json".to_string(), Duration::ZERO),
        })
        .await;
        let entities = HttpEntities::new(&base, TIMEOUT).unwrap();
        let err = entities.fetch("Doc", "1").await.unwrap_err();
        assert!(err.reason.contains("the record is of Doc::\"2\""), "{err}");
        for id in ["2", "3", "4", "5", "6"] {
            assert!(entities.fetch("Doc", id).await.is_err(), "{id}");
        }
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(HttpEntities::new("ftp://x/", TIMEOUT).is_err());
        assert!(HttpEntities::new("not a url", TIMEOUT).is_err());
        assert!(HttpEntities::new("http://x/e?a=1", TIMEOUT).is_err());
        assert!(HttpEntities::new("http://x/e", Duration::ZERO).is_err());
        let shown = HttpEntities::new("https://u:p@x.example/e/", TIMEOUT).unwrap();
        assert_eq!(shown.provider, "http entity store https://x.example/e");
    }
}
