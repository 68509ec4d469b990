//! A real OIDC issuer on loopback for tests: discovery document, JWKS with RSA, EC and Ed25519
//! keys generated in the test, key rotation, outages (error statuses, garbage, slow or hanging
//! answers), a count of key fetches and a record of every request it received.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub struct SigningKey {
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// PEM of the public key (for key-confusion attacks).
    pub public_pem: String,
}

/// How an endpoint of the issuer misbehaves.
#[derive(Debug, Clone)]
pub enum Outage {
    /// Answers with this status and an empty body.
    Status(u16),
    /// Answers 200 with this body (`application/json`).
    Body(String),
    /// Answers normally, after this delay.
    Delay(Duration),
    /// Never answers (the connection stays open).
    Hang,
}

#[derive(Clone)]
pub struct TestIdp {
    pub issuer: String,
    pub addr: SocketAddr,
    keys: Arc<Mutex<BTreeMap<String, Arc<SigningKey>>>>,
    published: Arc<Mutex<Vec<String>>>,
    fetches: Arc<AtomicU64>,
    /// Paths of every request received, in order.
    requests: Arc<Mutex<Vec<String>>>,
    discovery_outage: Arc<Mutex<Option<Outage>>>,
    jwks_outage: Arc<Mutex<Option<Outage>>>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn rsa_key(kid: &str) -> SigningKey {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
    let pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
    let public = private.to_public_key();
    SigningKey {
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        jwk: json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be()),
        }),
        public_pem: public.to_public_key_pem(LineEnding::LF).unwrap(),
    }
}

pub fn ed_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    SigningKey {
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({
            "kty": "OKP", "use": "sig", "alg": "EdDSA", "crv": "Ed25519", "kid": kid,
            "x": b64(pair.public_key_raw()),
        }),
        public_pem: pair.public_key_pem(),
    }
}

pub fn ec_key(kid: &str) -> SigningKey {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
    let point = secret.public_key().to_encoded_point(false);
    SigningKey {
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        jwk: json!({
            "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": kid,
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        }),
        public_pem: secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    }
}

impl TestIdp {
    pub async fn start() -> TestIdp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idp = TestIdp {
            issuer: format!("http://{addr}"),
            addr,
            keys: Arc::default(),
            published: Arc::default(),
            fetches: Arc::default(),
            requests: Arc::default(),
            discovery_outage: Arc::default(),
            jwks_outage: Arc::default(),
        };
        let server = idp.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let idp = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let idp = idp.clone();
                            async move { Ok::<_, Infallible>(idp.serve(req.uri().path()).await) }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        idp
    }

    async fn serve(&self, path: &str) -> hyper::Response<Full<Bytes>> {
        self.requests.lock().unwrap().push(path.to_string());
        let outage = match path {
            "/.well-known/openid-configuration" => self.discovery_outage.lock().unwrap().clone(),
            "/jwks" => self.jwks_outage.lock().unwrap().clone(),
            _ => None,
        };
        match outage {
            None => {}
            Some(Outage::Status(status)) => {
                let mut r = hyper::Response::new(Full::new(Bytes::new()));
                *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                return r;
            }
            Some(Outage::Body(body)) => {
                let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                return r;
            }
            Some(Outage::Delay(delay)) => tokio::time::sleep(delay).await,
            Some(Outage::Hang) => std::future::pending::<()>().await,
        }
        self.respond(path)
    }

    fn respond(&self, path: &str) -> hyper::Response<Full<Bytes>> {
        let body = match path {
            "/.well-known/openid-configuration" => json!({
                "issuer": self.issuer,
                "jwks_uri": format!("{}/jwks", self.issuer),
            }),
            "/jwks" => {
                self.fetches.fetch_add(1, Ordering::SeqCst);
                let keys = self.keys.lock().unwrap();
                let published = self.published.lock().unwrap();
                json!({ "keys": published.iter().filter_map(|kid| keys.get(kid)).map(|k| k.jwk.clone()).collect::<Vec<_>>() })
            }
            _ => {
                let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"not found")));
                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                return r;
            }
        };
        let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    }

    /// Adds a key and publishes it in the JWKS.
    pub fn add_key(&self, kid: &str, key: SigningKey) -> Arc<SigningKey> {
        let key = Arc::new(key);
        self.keys
            .lock()
            .unwrap()
            .insert(kid.to_string(), key.clone());
        self.published.lock().unwrap().push(kid.to_string());
        key
    }

    /// Adds a key without publishing it (signs tokens nobody can verify).
    pub fn add_unpublished_key(&self, kid: &str, key: SigningKey) -> Arc<SigningKey> {
        let key = Arc::new(key);
        self.keys
            .lock()
            .unwrap()
            .insert(kid.to_string(), key.clone());
        key
    }

    /// Stops publishing a key (rotation).
    pub fn unpublish(&self, kid: &str) {
        self.published.lock().unwrap().retain(|k| k != kid);
    }

    pub fn key(&self, kid: &str) -> Arc<SigningKey> {
        self.keys.lock().unwrap()[kid].clone()
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Paths of every request the issuer received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// From now on the JWKS endpoint misbehaves (`None`: serves normally again).
    pub fn jwks_outage(&self, outage: Option<Outage>) {
        *self.jwks_outage.lock().unwrap() = outage;
    }

    /// From now on the discovery document misbehaves (`None`: served normally again).
    pub fn discovery_outage(&self, outage: Option<Outage>) {
        *self.discovery_outage.lock().unwrap() = outage;
    }

    /// Standard claims for `sub`, valid for 5 minutes, audience `gateway`.
    pub fn claims(&self, sub: &str) -> serde_json::Map<String, Value> {
        let now = now();
        json!({
            "iss": self.issuer, "aud": "gateway", "sub": sub,
            "iat": now, "exp": now + 300,
        })
        .as_object()
        .unwrap()
        .clone()
    }

    /// A token signed with key `kid`.
    pub fn token(&self, kid: &str, claims: &serde_json::Map<String, Value>) -> String {
        let key = self.key(kid);
        let mut header = Header::new(key.alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    }

    /// A token with `header` as given (alg, kid, embedded keys ...), signed with key `kid`.
    pub fn token_with_header(
        &self,
        header: &Header,
        kid: &str,
        claims: &serde_json::Map<String, Value>,
    ) -> String {
        jsonwebtoken::encode(header, claims, &self.key(kid).encoding).unwrap()
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with arbitrary header and claims and a given signature (for attacks).
pub fn forge(header: &Value, claims: &serde_json::Map<String, Value>, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(serde_json::to_string(claims).unwrap().as_bytes()),
        b64(signature)
    )
}
