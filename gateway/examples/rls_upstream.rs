//! An unchanged upstream whose tenant isolation PostgreSQL enforces with Row-Level Security,
//! keyed on the tenant the gateway verified (deploy/examples/rls/README.md).
//!
//! - `GET /documents` — the tenant's 50 most recently updated documents (without bodies)
//! - `GET /documents/{id}` — one document; 404 when the tenant has none with that id
//! - `PUT /documents/{id}` — `{"title": …, "body": …}` replaces both; 404 as above
//! - `GET /healthz` — `ok`, for the gateway's health probe (no tenant, no database); also at
//!   `/_upstream/health`, the probe of the example deployment (deploy/examples/gateway.toml)
//!
//! The tenant comes from `x-tenant-id`, which the gateway sets (and strips from what clients
//! send); a request without it is refused with 400. No query names a tenant: each runs in a
//! transaction that starts with `SELECT set_config('app.tenant_id', $1, true)`, and the policies
//! of deploy/examples/rls/schema.sql keep every other tenant's rows out of it.
//!
//! With `RLS_CONTEXT_PUBLIC_KEY` (and `RLS_CONTEXT_AUDIENCE`) the app also verifies the gateway's
//! signed context token (`x-gateway-context`, ES256) and refuses (401) a request whose token is
//! missing, invalid, expired or names another tenant: then only the gateway can name a tenant,
//! whatever else reaches the app's port.
//!
//! ```text
//! DATABASE_URL=postgres://rls_app:secret@127.0.0.1/app LISTEN=127.0.0.1:18080 \
//!     cargo run -p gateway --example rls_upstream
//! ```
//!
//! `POOL_SIZE` (default 16) bounds the database connections; `RLS_CONTEXT_ISSUER` defaults to
//! `policy-gateway`, the gateway's default issuer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::try_join4;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

/// The verified tenant, as the gateway forwards it.
pub const TENANT_HEADER: &str = "x-tenant-id";
/// The gateway's signed context token (`[identity.context_token]`, default header).
pub const CONTEXT_HEADER: &str = "x-gateway-context";

const MAX_TENANT_LEN: usize = 256;
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Names the transaction's tenant for the policies: `SET LOCAL app.tenant_id`, with the value
/// as a parameter (never formatted into SQL).
const SET_TENANT: &str = "SELECT set_config('app.tenant_id', $1, true)";
const UPDATED_AT: &str =
    r#"to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#;

/// The app's statements: no tenant predicate anywhere, the policies add it.
fn statements() -> [String; 3] {
    [
        format!(
            "SELECT id, project_id, owner, title, NULL::text, {UPDATED_AT} FROM documents \
             ORDER BY updated_at DESC, id DESC LIMIT 50"
        ),
        format!(
            "SELECT id, project_id, owner, title, body, {UPDATED_AT} FROM documents WHERE id = $1"
        ),
        format!(
            "UPDATE documents SET title = $2, body = $3, updated_at = now() WHERE id = $1 \
             RETURNING id, project_id, owner, title, body, {UPDATED_AT}"
        ),
    ]
}

/// A document as the API shows it (lists leave the body out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: i64,
    pub project_id: Option<i64>,
    pub owner: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub updated_at: String,
}

impl Document {
    fn from_row(row: &Row) -> Result<Document, tokio_postgres::Error> {
        Ok(Document {
            id: row.try_get(0)?,
            project_id: row.try_get(1)?,
            owner: row.try_get(2)?,
            title: row.try_get(3)?,
            body: row.try_get(4)?,
            updated_at: row.try_get(5)?,
        })
    }
}

/// What `PUT /documents/{id}` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentUpdate {
    pub title: String,
    pub body: String,
}

/// Why a request was refused; each maps to one status, and no answer carries database detail.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the request names no tenant (`x-tenant-id`): requests must come through the gateway")]
    NoTenant,
    #[error("the gateway context token is missing or not valid: {0}")]
    Context(String),
    #[error("no such document")]
    NotFound,
    #[error("no such route")]
    NoRoute,
    #[error("method not allowed")]
    Method,
    #[error("invalid request body: {0}")]
    Body(String),
    #[error("database connection: {0}")]
    Connect(#[from] gateway::db::DbError),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::NoTenant | RequestError::Body(_) => StatusCode::BAD_REQUEST,
            RequestError::Context(_) => StatusCode::UNAUTHORIZED,
            RequestError::NotFound | RequestError::NoRoute => StatusCode::NOT_FOUND,
            RequestError::Method => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::Connect(_) => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn public_message(&self) -> String {
        match self {
            RequestError::Connect(_) => "database unavailable".to_string(),
            RequestError::Db(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}

/// Why the app did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("context token key: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// The tenant a request acts for: one `x-tenant-id` value, visible ASCII, bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(String);

impl Tenant {
    pub fn from_headers(headers: &HeaderMap) -> Result<Tenant, RequestError> {
        let mut values = headers.get_all(TENANT_HEADER).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(RequestError::NoTenant);
        };
        match value.to_str() {
            Ok(id) if !id.is_empty() && id.len() <= MAX_TENANT_LEN => Ok(Tenant(id.to_string())),
            _ => Err(RequestError::NoTenant),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Verifies the gateway's context token: signature (ES256), issuer, audience, expiry, and that
/// it names the same tenant as `x-tenant-id`.
pub struct ContextVerifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct ContextClaims {
    tenant: Option<String>,
}

impl ContextVerifier {
    pub fn es256(public_key_pem: &[u8], issuer: &str, audience: &str) -> Result<Self, StartError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        Ok(ContextVerifier {
            key: DecodingKey::from_ec_pem(public_key_pem)?,
            validation,
        })
    }

    pub fn verify(&self, headers: &HeaderMap, tenant: &Tenant) -> Result<(), RequestError> {
        let token = headers
            .get(CONTEXT_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RequestError::Context("missing".to_string()))?;
        let data = jsonwebtoken::decode::<ContextClaims>(token, &self.key, &self.validation)
            .map_err(|e| RequestError::Context(e.to_string()))?;
        if data.claims.tenant.as_deref() != Some(tenant.as_str()) {
            return Err(RequestError::Context("it names another tenant".to_string()));
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Query {
    List,
    Get,
    Update,
}

/// One database connection with the app's statements prepared on it.
struct Conn {
    client: Client,
    set_tenant: Statement,
    queries: [Statement; 3],
}

impl Conn {
    async fn open(url: &str) -> Result<Conn, RequestError> {
        let client = gateway::db::connect(url, None).await?;
        let [list, get, update] = statements();
        let (set_tenant, list, get, update) = try_join4(
            client.prepare(SET_TENANT),
            client.prepare(&list),
            client.prepare(&get),
            client.prepare(&update),
        )
        .await?;
        Ok(Conn {
            client,
            set_tenant,
            queries: [list, get, update],
        })
    }

    /// Runs `query` as `tenant` in one round trip: BEGIN, the set_config, the query and COMMIT
    /// are pipelined. tokio-postgres sends a request when its future is first polled and
    /// `try_join4` polls in argument order, so the server gets them in this order. When BEGIN
    /// or the set_config fails, the query runs under no tenant and sees no rows; when the query
    /// fails, the transaction is aborted and COMMIT rolls it back.
    async fn as_tenant(
        &self,
        tenant: &Tenant,
        query: Query,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let [list, get, update] = &self.queries;
        let statement = match query {
            Query::List => list,
            Query::Get => get,
            Query::Update => update,
        };
        let (_, _, rows, _) = try_join4(
            self.client.batch_execute("BEGIN"),
            self.client.execute(&self.set_tenant, &[&tenant.as_str()]),
            self.client.query(statement, params),
            self.client.batch_execute("COMMIT"),
        )
        .await?;
        Ok(rows)
    }
}

/// The app: a bounded pool of connections (opened on demand, each used by one request at a
/// time: a transaction needs the connection to itself) and the optional context verifier.
pub struct App {
    url: String,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
    verifier: Option<ContextVerifier>,
}

impl App {
    /// Connects once (so a wrong URL or a missing table fails here, not on the first request).
    pub async fn connect(
        url: &str,
        pool_size: usize,
        verifier: Option<ContextVerifier>,
    ) -> Result<App, RequestError> {
        let first = Conn::open(url).await?;
        Ok(App {
            url: url.to_string(),
            idle: Mutex::new(vec![first]),
            permits: Semaphore::new(pool_size.max(1)),
            verifier,
        })
    }

    async fn run(
        &self,
        tenant: &Tenant,
        query: Query,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, RequestError> {
        // The semaphore is never closed, so acquiring only waits for a free connection.
        let _permit = self.permits.acquire().await;
        let idle = self.lock_idle().pop().filter(|c| !c.client.is_closed());
        let conn = match idle {
            Some(conn) => conn,
            None => Conn::open(&self.url).await?,
        };
        let rows = conn.as_tenant(tenant, query, params).await;
        // A cancelled request drops its connection here instead (closed, never reused).
        if !conn.client.is_closed() {
            self.lock_idle().push(conn);
        }
        Ok(rows?)
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match self.route(req).await {
            Ok(response) => response,
            Err(e) => {
                if e.status().is_server_error() {
                    eprintln!("rls_upstream: {e}");
                }
                json(
                    e.status(),
                    &serde_json::json!({ "error": e.public_message() }),
                )
            }
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, RequestError> {
        if matches!(req.uri().path(), "/healthz" | "/_upstream/health") {
            return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
        }
        let tenant = Tenant::from_headers(req.headers())?;
        if let Some(verifier) = &self.verifier {
            verifier.verify(req.headers(), &tenant)?;
        }
        let method = req.method().clone();
        let rest = req
            .uri()
            .path()
            .strip_prefix("/documents")
            .ok_or(RequestError::NoRoute)?
            .to_string();
        match (rest.as_str(), method) {
            ("" | "/", Method::GET) => {
                let rows = self.run(&tenant, Query::List, &[]).await?;
                let docs = rows
                    .iter()
                    .map(Document::from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(json(StatusCode::OK, &docs))
            }
            ("" | "/", _) => Err(RequestError::Method),
            (rest, method) => {
                let id: i64 = rest
                    .strip_prefix('/')
                    .and_then(|id| id.parse().ok())
                    .ok_or(RequestError::NotFound)?;
                let rows = match method {
                    Method::GET => self.run(&tenant, Query::Get, &[&id]).await?,
                    Method::PUT => {
                        let update = read_json::<DocumentUpdate>(req.into_body()).await?;
                        let params: [&(dyn ToSql + Sync); 3] = [&id, &update.title, &update.body];
                        self.run(&tenant, Query::Update, &params).await?
                    }
                    _ => return Err(RequestError::Method),
                };
                let doc = rows.first().ok_or(RequestError::NotFound)?;
                Ok(json(StatusCode::OK, &Document::from_row(doc)?))
            }
        }
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<T, RequestError> {
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| RequestError::Body(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| RequestError::Body(e.to_string()))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves HTTP/1.1 on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait, then accept again.
                eprintln!("rls_upstream: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("rls_upstream: connection: {e}");
            }
        });
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn start() -> Result<(), StartError> {
    let url = env("DATABASE_URL").ok_or_else(|| {
        StartError::Config("set DATABASE_URL (postgres://rls_app:…@host/db)".into())
    })?;
    let listen: SocketAddr = env("LISTEN")
        .unwrap_or_else(|| "127.0.0.1:18080".to_string())
        .parse()
        .map_err(|e| StartError::Config(format!("LISTEN: {e}")))?;
    let pool_size: usize = env("POOL_SIZE")
        .unwrap_or_else(|| "16".to_string())
        .parse()
        .map_err(|e| StartError::Config(format!("POOL_SIZE: {e}")))?;
    let verifier = match env("RLS_CONTEXT_PUBLIC_KEY") {
        None => None,
        Some(path) => {
            let pem = std::fs::read(&path)
                .map_err(|e| StartError::Config(format!("RLS_CONTEXT_PUBLIC_KEY {path}: {e}")))?;
            let audience = env("RLS_CONTEXT_AUDIENCE").ok_or_else(|| {
                StartError::Config("RLS_CONTEXT_PUBLIC_KEY needs RLS_CONTEXT_AUDIENCE".into())
            })?;
            let issuer = env("RLS_CONTEXT_ISSUER").unwrap_or_else(|| "policy-gateway".into());
            Some(ContextVerifier::es256(&pem, &issuer, &audience)?)
        }
    };
    let app = Arc::new(App::connect(&url, pool_size, verifier).await?);
    let listener = TcpListener::bind(listen).await?;
    eprintln!("rls_upstream: listening on {listen}");
    serve(listener, app).await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match start().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rls_upstream: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
