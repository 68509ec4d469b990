//! Fixtures shared by the benchmarks: generated tenants, signing keys and a JWKS server on
//! loopback (so identity benchmarks use the real key store, warmed up as in production).

use std::convert::Infallible;
use std::net::SocketAddr;

use base64::Engine;
use bytes::Bytes;
use gateway::tenancy::TenantSpec;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::EncodingKey;
use serde_json::{json, Value};

pub mod harness;
pub mod measure;

/// `n` tenants `tenant-1` … `tenant-n` with realistic fields.
pub fn tenants(n: usize) -> Vec<TenantSpec> {
    (1..=n)
        .map(|i| {
            let tier = ["free", "pro", "enterprise"][i % 3];
            let region = ["eu-central", "us-east", "in-west", "jp-east", "cn-north"][i % 5];
            let regime = ["gdpr", "ccpa", "dpdp", "appi", "pipl"][i % 5];
            serde_json::from_value(json!({
                "id": format!("tenant-{i}"),
                "name": format!("Tenant number {i}"),
                "tier": tier,
                "home_region": region,
                "regime": regime,
                "features": ["sso"],
            }))
            .expect("valid tenant")
        })
        .collect()
}

/// An ES256 key pair: the signing key and its public JWK.
pub fn ec_key(kid: &str) -> (EncodingKey, Value) {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("pem");
    let point = secret.public_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({
        "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": kid,
        "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y")),
    });
    (EncodingKey::from_ec_pem(pem.as_bytes()).expect("key"), jwk)
}

/// Serves `{"keys": [...]}` at `/jwks` on loopback, on the current runtime.
pub async fn jwks_server(keys: Vec<Value>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body = Bytes::from(json!({ "keys": keys }).to_string());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The `p`-th percentile of sorted samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Resident memory of this process (Linux), in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The value after `name` (e.g. `--json`) on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Writes the report to the `--json` file, or prints it.
pub fn emit_report(report: &Value) {
    let text = serde_json::to_string_pretty(report).unwrap_or_default();
    match arg("--json") {
        Some(path) => std::fs::write(&path, text).unwrap_or_else(|e| panic!("{path}: {e}")),
        None => println!("{text}"),
    }
}
