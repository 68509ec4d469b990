//! Signing keys of token issuers, fetched from their JWKS (directly or through OIDC discovery),
//! cached, refreshed when a token names an unknown `kid` (rate-limited, so a flood of made-up
//! kids cannot hammer the issuer) and when the cached set grows old. Rotation needs no restart.
//!
//! What an issuer's outage does: a fetch that fails, times out or brings no usable signing key
//! keeps the keys fetched before, so tokens signed with them keep working; tokens naming a key
//! the gateway does not hold are refused. No request waits for keys longer than the fetch
//! timeout (discovery and JWKS together), whether it fetches itself or waits for another
//! request's fetch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AuthError;
use crate::tenancy::model::IssuerConfig;

/// Timing of key fetches.
#[derive(Debug, Clone, Copy)]
pub struct JwksSettings {
    /// An unknown `kid` triggers a refetch at most this often per issuer.
    pub min_refresh_interval: Duration,
    /// Keys older than this are refetched in the background.
    pub max_age: Duration,
    /// The longest a request waits for an issuer's keys (discovery and JWKS together).
    pub fetch_timeout: Duration,
}

/// Default of `identity.jwks_fetch_timeout`.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Discovery documents and key sets larger than this are refused (a key set is a few KiB).
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            min_refresh_interval: Duration::from_secs(30),
            max_age: Duration::from_secs(600),
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

/// One usable verification key.
#[derive(Clone)]
pub struct VerificationKey {
    pub key: Arc<DecodingKey>,
    /// The algorithm the JWK is restricted to, if it names one.
    pub alg: Option<Algorithm>,
    /// SHA-256 of the JWK as published: the same key across refreshes, a different one if
    /// anything about it changed.
    fingerprint: [u8; 32],
}

#[derive(Default)]
struct KeySet {
    /// Usually one key per kid; a kid shared by keys of different types keeps them all.
    by_kid: HashMap<String, Vec<VerificationKey>>,
    without_kid: Vec<VerificationKey>,
    /// Fingerprints of every key in the set.
    published: HashSet<[u8; 32]>,
    fetched_at: Option<Instant>,
}

impl KeySet {
    fn len(&self) -> usize {
        self.published.len()
    }
}

struct IssuerKeys {
    issuer: String,
    jwks_uri: Option<String>,
    keys: ArcSwap<KeySet>,
    /// Serialises fetches; holds the time of the last attempt.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

/// Which published key verified a token, so a cached verification can be dropped once the
/// issuer withdraws the key (rotation after a compromise must not leave cached tokens valid).
#[derive(Clone)]
pub struct KeyOrigin {
    issuer: Arc<IssuerKeys>,
    fingerprint: [u8; 32],
}

impl KeyOrigin {
    /// The issuer's current key set still holds the key.
    pub fn still_published(&self) -> bool {
        self.issuer
            .keys
            .load()
            .published
            .contains(&self.fingerprint)
    }
}

/// Keys of every issuer seen so far, shared by all requests and kept across reloads.
pub struct JwksStore {
    fetcher: Fetcher,
    issuers: moka::sync::Cache<(String, Option<String>), Arc<IssuerKeys>>,
}

/// Fetches key sets; cheap to clone into background refreshes.
#[derive(Clone)]
struct Fetcher {
    http: reqwest::Client,
    settings: JwksSettings,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// A key set read leniently: one key the gateway cannot use does not spoil the others.
#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<Value>,
}

/// What the cached keys say about a token's `kid` and `alg`.
enum Lookup {
    Found(VerificationKey),
    /// The kid is known, but its key is of another type or restricted to another algorithm.
    WrongAlgorithm,
    Missing,
}

impl JwksStore {
    pub fn new(settings: JwksSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .connect_timeout(settings.fetch_timeout)
            .user_agent(concat!("policy-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        JwksStore {
            fetcher: Fetcher { http, settings },
            // Bounded: tenants bring their own issuers, and removed ones should age out.
            issuers: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
        }
    }

    /// The key that should verify a token of `issuer` with header `kid`/`alg`, and where it
    /// came from.
    pub async fn key(
        &self,
        issuer: &IssuerConfig,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(VerificationKey, KeyOrigin), AuthError> {
        let entry = self.issuer_entry(issuer);
        let found = |key: VerificationKey| {
            let origin = KeyOrigin {
                issuer: entry.clone(),
                fingerprint: key.fingerprint,
            };
            (key, origin)
        };
        match find(&entry.keys.load(), kid, alg) {
            Lookup::Found(k) => {
                self.refresh_in_background_if_old(&entry);
                return Ok(found(k));
            }
            Lookup::WrongAlgorithm => {
                return Err(AuthError::AlgNotAllowed(format!(
                    "{alg:?} with a key of another type"
                )))
            }
            Lookup::Missing => {}
        }
        // Unknown kid (or nothing fetched yet): refetch once, rate-limited, waiting no longer
        // than the fetch timeout (also when another request's fetch is under way).
        let seen_before = entry.keys.load().fetched_at;
        let wait = self.fetcher.settings.fetch_timeout;
        if tokio::time::timeout(wait, self.fetcher.refresh(&entry, seen_before, true))
            .await
            .is_err()
        {
            tracing::warn!(issuer = %entry.issuer, timeout = ?wait, "issuer keys did not arrive within the fetch timeout");
        }
        let keys = entry.keys.load();
        match find(&keys, kid, alg) {
            Lookup::Found(k) => Ok(found(k)),
            Lookup::WrongAlgorithm => Err(AuthError::AlgNotAllowed(format!(
                "{alg:?} with a key of another type"
            ))),
            Lookup::Missing if keys.fetched_at.is_none() => Err(AuthError::KeysUnavailable),
            Lookup::Missing => Err(AuthError::UnknownKey),
        }
    }

    /// Fetches the keys of `issuer` now (so the first request does not wait).
    pub async fn prefetch(&self, issuer: &IssuerConfig) {
        let entry = self.issuer_entry(issuer);
        self.fetcher.refresh(&entry, None, false).await;
    }

    fn issuer_entry(&self, issuer: &IssuerConfig) -> Arc<IssuerKeys> {
        let cache_key = (issuer.issuer.clone(), issuer.jwks_uri.clone());
        self.issuers.get_with(cache_key, || {
            Arc::new(IssuerKeys {
                issuer: issuer.issuer.clone(),
                jwks_uri: issuer.jwks_uri.clone(),
                keys: ArcSwap::from_pointee(KeySet::default()),
                refresh: tokio::sync::Mutex::new(None),
            })
        })
    }

    fn refresh_in_background_if_old(&self, entry: &Arc<IssuerKeys>) {
        let old = entry
            .keys
            .load()
            .fetched_at
            .is_some_and(|t| t.elapsed() > self.fetcher.settings.max_age);
        if !old {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let entry = entry.clone();
        let fetcher = self.fetcher.clone();
        runtime.spawn(async move {
            let seen = entry.keys.load().fetched_at;
            fetcher.refresh(&entry, seen, true).await;
        });
    }
}

impl Fetcher {
    /// Refetches unless another task already did since `seen_before`, or (when `rate_limited`)
    /// the last attempt was too recent. A failed fetch keeps the previous keys. The fetch itself
    /// (discovery and key set together) is bounded by the fetch timeout.
    async fn refresh(&self, entry: &IssuerKeys, seen_before: Option<Instant>, rate_limited: bool) {
        let mut last_attempt = entry.refresh.lock().await;
        if entry.keys.load().fetched_at != seen_before {
            return;
        }
        if rate_limited
            && last_attempt.is_some_and(|t| t.elapsed() < self.settings.min_refresh_interval)
        {
            metrics::counter!(crate::telemetry::JWKS_REFRESHES_TOTAL, "outcome" => "rate_limited")
                .increment(1);
            return;
        }
        *last_attempt = Some(Instant::now());
        let fetched = tokio::time::timeout(self.settings.fetch_timeout, self.fetch(entry))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {}",
                    humantime::format_duration(self.settings.fetch_timeout)
                ))
            });
        match fetched {
            Ok(keys) => {
                tracing::info!(issuer = %entry.issuer, keys = keys.len(), "fetched issuer keys");
                metrics::counter!(crate::telemetry::JWKS_REFRESHES_TOTAL, "outcome" => "ok")
                    .increment(1);
                entry.keys.store(Arc::new(keys));
            }
            Err(e) => {
                tracing::warn!(issuer = %entry.issuer, error = %e, "fetching issuer keys failed; keeping the previous keys");
                metrics::counter!(crate::telemetry::JWKS_REFRESHES_TOTAL, "outcome" => "error")
                    .increment(1);
            }
        }
    }

    async fn fetch(&self, entry: &IssuerKeys) -> Result<KeySet, String> {
        let jwks_uri = match &entry.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    entry.issuer.trim_end_matches('/')
                );
                let discovery: Discovery = self.get_json(&url).await?;
                // OpenID Connect Discovery §4.3: the document must name the issuer we asked.
                if discovery.issuer != entry.issuer {
                    return Err(format!(
                        "discovery document at {url} names issuer `{}`",
                        discovery.issuer
                    ));
                }
                discovery.jwks_uri
            }
        };
        let set: RawKeySet = self.get_json(&jwks_uri).await?;
        let mut keys = KeySet {
            fetched_at: Some(Instant::now()),
            ..KeySet::default()
        };
        let mut skipped = 0usize;
        for raw in &set.keys {
            match signing_key(raw) {
                Ok((kid, key)) => {
                    keys.published.insert(key.fingerprint);
                    match kid {
                        Some(kid) => keys.by_kid.entry(kid).or_default().push(key),
                        None => keys.without_kid.push(key),
                    }
                }
                Err(reason) => {
                    skipped += 1;
                    tracing::debug!(issuer = %entry.issuer, reason, "skipping a JWK");
                }
            }
        }
        // A set without one usable signing key is an outage (or garbage), not a rotation:
        // keep the keys held so far.
        if keys.published.is_empty() {
            return Err(format!(
                "{jwks_uri}: no usable signing key ({skipped} skipped)"
            ));
        }
        Ok(keys)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: status {}", response.status()));
        }
        let body = crate::http_body::read_capped(response, MAX_DOCUMENT_BYTES)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: invalid JSON: {e}"))
    }
}

/// A JWK usable to verify signatures, with its kid; or why it is not.
fn signing_key(raw: &Value) -> Result<(Option<String>, VerificationKey), &'static str> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|_| "not a JWK")?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("not a signature key"),
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_) => {}
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {}
        AlgorithmParameters::OctetKeyPair(_) => return Err("not an Ed25519 key"),
        // A symmetric key in a public document would let anyone sign: never a verification key.
        AlgorithmParameters::OctetKey(_) => return Err("symmetric key"),
        _ => return Err("unsupported key type"),
    }
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(Algorithm::try_from(a).map_err(|_| "not a signature algorithm")?),
        None => None,
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "unusable key material")?;
    if alg.is_some_and(|a| a.family() != key.family()) {
        return Err("algorithm does not fit the key type");
    }
    let fingerprint: [u8; 32] = Sha256::digest(raw.to_string().as_bytes()).into();
    Ok((
        jwk.common.key_id.clone(),
        VerificationKey {
            key: Arc::new(key),
            alg,
            fingerprint,
        },
    ))
}

/// The key for `kid`, or when the token names none, the only key that fits `alg`.
fn find(keys: &KeySet, kid: Option<&str>, alg: Algorithm) -> Lookup {
    let fits =
        |k: &&VerificationKey| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg);
    match kid {
        Some(kid) => match keys.by_kid.get(kid) {
            Some(candidates) => match candidates.iter().find(fits) {
                Some(k) => Lookup::Found(k.clone()),
                None => Lookup::WrongAlgorithm,
            },
            None => Lookup::Missing,
        },
        None => {
            let mut candidates = keys
                .by_kid
                .values()
                .flatten()
                .chain(&keys.without_kid)
                .filter(fits);
            match (candidates.next(), candidates.next()) {
                (Some(only), None) => Lookup::Found(only.clone()),
                _ => Lookup::Missing,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk(kid: &str, alg: Option<&str>) -> Value {
        // A syntactically valid RSA public key (the modulus is never used to verify here).
        let mut v = json!({
            "kty": "RSA", "kid": kid, "e": "AQAB",
            "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"
        });
        if let Some(a) = alg {
            v["alg"] = json!(a);
        }
        v
    }

    #[test]
    fn only_public_signing_keys_are_kept() {
        let ok = signing_key(&rsa_jwk("a", Some("RS256"))).unwrap();
        assert_eq!(ok.0.as_deref(), Some("a"));
        assert_eq!(ok.1.alg, Some(Algorithm::RS256));
        let mut enc = rsa_jwk("b", None);
        enc["use"] = json!("enc");
        assert!(signing_key(&enc).is_err());
        assert!(signing_key(&rsa_jwk("c", Some("RSA-OAEP"))).is_err());
        // An RSA key that claims an EC algorithm.
        assert!(signing_key(&rsa_jwk("d", Some("ES256"))).is_err());
        assert_eq!(
            signing_key(&json!({"kty": "oct", "kid": "e", "k": "c2VjcmV0"})).err(),
            Some("symmetric key")
        );
        assert!(signing_key(&json!({"kty": "OKP", "crv": "X25519", "x": "AAAA"})).is_err());
        assert!(signing_key(&json!({"kid": 7})).is_err());
        assert!(signing_key(&json!("garbage")).is_err());
    }

    #[test]
    fn a_kid_with_a_key_of_another_type_is_not_looked_up_again() {
        let (kid, key) = signing_key(&rsa_jwk("a", None)).unwrap();
        let mut set = KeySet::default();
        set.published.insert(key.fingerprint);
        set.by_kid.insert(kid.unwrap(), vec![key]);
        assert!(matches!(
            find(&set, Some("a"), Algorithm::PS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            find(&set, Some("a"), Algorithm::ES256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            find(&set, Some("b"), Algorithm::RS256),
            Lookup::Missing
        ));
        assert!(matches!(
            find(&set, None, Algorithm::RS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            find(&set, None, Algorithm::EdDSA),
            Lookup::Missing
        ));
    }
}
