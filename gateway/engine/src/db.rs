//! PostgreSQL connections (tokio-postgres), TLS through rustls.
//!
//! TLS follows libpq: `sslmode=disable` never encrypts; `prefer` (the default) and `require`
//! encrypt without checking the server certificate, exactly as libpq does for those modes. To
//! authenticate the server, give a CA file (`PGSSLROOTCERT` style): the certificate and host name
//! are then verified (libpq's `verify-full`).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_postgres::Config;
/// The connection and error types of the PostgreSQL client the gateway's stores use.
pub use tokio_postgres::{Client, Error as PgError, Transaction};

/// Where a PostgreSQL-backed feature connects (the `postgres` table of the tenant registry,
/// principal store and usage exporter sections).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL (`postgres://user:pass@host/db?sslmode=require`).
    #[serde(default)]
    pub url: Option<String>,
    /// Name of an environment variable holding the URL (keeps passwords out of the file).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Table of tenants: `id text primary key, doc jsonb` (created when `migrate` is on).
    #[serde(default = "default_tenant_table")]
    pub table: String,
    /// Create the tables and the NOTIFY trigger if missing.
    #[serde(default = "default_true")]
    pub migrate: bool,
    /// PEM CA bundle: verify the server certificate and host name (libpq `verify-full`).
    /// Without it, TLS follows libpq's `sslmode` (encrypted, not authenticated). Relative to
    /// this file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl PostgresConfig {
    /// The connection URL, from `url` or the environment variable `url_env`.
    pub fn connection_url(&self) -> Result<String, String> {
        match (&self.url, &self.url_env) {
            (Some(url), None) => Ok(url.clone()),
            (None, Some(var)) => {
                std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))
            }
            _ => Err("set exactly one of `url` and `url_env`".to_string()),
        }
    }
}

fn default_tenant_table() -> String {
    "gateway_tenants".to_string()
}

fn default_true() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid PostgreSQL URL: {0}")]
    Url(tokio_postgres::Error),
    #[error("{0}")]
    Config(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// Connects and drives the connection on the current runtime. Notifications (LISTEN) are
/// forwarded to `notifications` when given; the connection task ends when the client is
/// dropped or the server goes away.
pub async fn connect(
    url: &str,
    notifications: Option<tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>>,
) -> Result<Client, DbError> {
    connect_with_ca(url, None, notifications).await
}

/// Connects as configured by a `[... .postgres]` section (URL or its environment variable, CA).
pub async fn connect_config(
    config: &crate::db::PostgresConfig,
    notifications: Option<tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>>,
) -> Result<Client, DbError> {
    let url = config.connection_url().map_err(DbError::Config)?;
    let ca = match &config.ca_file {
        Some(path) => Some(
            std::fs::read(path).map_err(|e| DbError::Config(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    connect_with_ca(&url, ca.as_deref(), notifications).await
}

/// As [`connect`], verifying the server against `ca_pem` when given.
pub async fn connect_with_ca(
    url: &str,
    ca_pem: Option<&[u8]>,
    notifications: Option<tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>>,
) -> Result<Client, DbError> {
    let mut config: Config = url.parse().map_err(DbError::Url)?;
    if config.get_application_name().is_none() {
        // Lets operators (and tests) find the gateway's sessions in pg_stat_activity.
        config.application_name("policy-gateway");
    }
    let tls = tls_connector(ca_pem)?;
    let (client, mut connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if let Some(tx) = &notifications {
                        let _ = tx.send(n);
                    }
                }
                Ok(tokio_postgres::AsyncMessage::Notice(notice)) => {
                    tracing::debug!(%notice, "PostgreSQL notice");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL connection closed");
                    break;
                }
            }
        }
    });
    Ok(client)
}

fn tls_connector(
    ca_pem: Option<&[u8]>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DbError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Tls(e.to_string()))?;
    let config = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| DbError::Tls(format!("CA file: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| DbError::Tls(format!("CA file: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// libpq's `sslmode=prefer/require`: the handshake must be valid (signatures checked), the
/// certificate chain is not.
#[derive(Debug)]
struct EncryptOnly(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `statements` as one transaction under the advisory lock every migration of the gateway
/// takes, so replicas starting together create tables and triggers one at a time.
pub fn locked_migration(statements: &str) -> String {
    format!(
        "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('policy-gateway-migrate'));\n{statements}\nCOMMIT;\n"
    )
}

/// A trigger that NOTIFYs `channel` with `payload` (an SQL expression over `NEW`/`OLD`) for
/// every row inserted, updated or deleted in `table`.
pub fn row_notify_trigger(table: &str, channel: &str, payload: &str) -> String {
    format!(
        r#"CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('{channel}', {payload});
    RETURN NULL;
END
$fn$;
CREATE OR REPLACE TRIGGER {table}_notify
    AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {table}_notify();"#
    )
}
