//! Signing keys of token issuers, fetched from their JWKS (directly or through OIDC discovery),
//! cached, refreshed when a token names an unknown `kid` (rate-limited, so a flood of made-up
//! kids cannot hammer the issuer) and when the cached set grows old. Rotation needs no restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::AuthError;
use crate::tenancy::model::IssuerConfig;

/// Timing of key fetches.
#[derive(Debug, Clone, Copy)]
pub struct JwksSettings {
    /// An unknown `kid` triggers a refetch at most this often per issuer.
    pub min_refresh_interval: Duration,
    /// Keys older than this are refetched in the background.
    pub max_age: Duration,
    pub fetch_timeout: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            min_refresh_interval: Duration::from_secs(30),
            max_age: Duration::from_secs(600),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// One usable verification key.
#[derive(Clone)]
pub struct VerificationKey {
    pub key: Arc<DecodingKey>,
    /// The algorithm the JWK is restricted to, if it names one.
    pub alg: Option<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, VerificationKey>,
    without_kid: Vec<VerificationKey>,
    fetched_at: Option<Instant>,
}

struct IssuerKeys {
    issuer: String,
    jwks_uri: Option<String>,
    keys: ArcSwap<KeySet>,
    /// Serialises fetches; holds the time of the last attempt.
    refresh: tokio::sync::Mutex<Option<Instant>>,
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

impl JwksStore {
    pub fn new(settings: JwksSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
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

    /// The key that should verify a token of `issuer` with header `kid`/`alg`.
    pub async fn key(
        &self,
        issuer: &IssuerConfig,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<VerificationKey, AuthError> {
        let entry = self.issuer_entry(issuer);
        if let Some(k) = find(&entry.keys.load(), kid, alg) {
            self.refresh_in_background_if_old(&entry);
            return Ok(k);
        }
        // Unknown kid (or nothing fetched yet): refetch once, rate-limited.
        let seen_before = entry.keys.load().fetched_at;
        self.fetcher.refresh(&entry, seen_before, true).await;
        let keys = entry.keys.load();
        match find(&keys, kid, alg) {
            Some(k) => Ok(k),
            None if keys.fetched_at.is_none() => Err(AuthError::KeysUnavailable),
            None => Err(AuthError::UnknownKey),
        }
    }

    /// Fetches the keys of `issuer` now (used at start so the first request does not wait).
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
    /// the last attempt was too recent. A failed fetch keeps the previous keys.
    async fn refresh(&self, entry: &IssuerKeys, seen_before: Option<Instant>, rate_limited: bool) {
        let mut last_attempt = entry.refresh.lock().await;
        if entry.keys.load().fetched_at != seen_before {
            return;
        }
        if rate_limited
            && last_attempt.is_some_and(|t| t.elapsed() < self.settings.min_refresh_interval)
        {
            metrics::counter!("gateway_jwks_refreshes_total", "outcome" => "rate_limited")
                .increment(1);
            return;
        }
        *last_attempt = Some(Instant::now());
        match self.fetch(entry).await {
            Ok(keys) => {
                tracing::info!(issuer = %entry.issuer, keys = keys.by_kid.len() + keys.without_kid.len(), "fetched issuer keys");
                metrics::counter!("gateway_jwks_refreshes_total", "outcome" => "ok").increment(1);
                entry.keys.store(Arc::new(keys));
            }
            Err(e) => {
                tracing::warn!(issuer = %entry.issuer, error = %e, "fetching issuer keys failed; keeping the previous keys");
                metrics::counter!("gateway_jwks_refreshes_total", "outcome" => "error")
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
        let set: JwkSet = self.get_json(&jwks_uri).await?;
        let mut keys = KeySet {
            fetched_at: Some(Instant::now()),
            ..KeySet::default()
        };
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                Some(a) => match Algorithm::try_from(a) {
                    Ok(alg) => Some(alg),
                    // An encryption algorithm: not a signing key.
                    Err(_) => continue,
                },
                None => None,
            };
            let key = match DecodingKey::from_jwk(jwk) {
                Ok(k) => VerificationKey {
                    key: Arc::new(k),
                    alg,
                },
                Err(e) => {
                    tracing::debug!(issuer = %entry.issuer, error = %e, "skipping unusable JWK");
                    continue;
                }
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), key);
                }
                None => keys.without_kid.push(key),
            }
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
        response
            .json::<T>()
            .await
            .map_err(|e| format!("GET {url}: invalid JSON: {e}"))
    }
}

/// The key for `kid`, or when the token names none, the only key that fits `alg`.
fn find(keys: &KeySet, kid: Option<&str>, alg: Algorithm) -> Option<VerificationKey> {
    let fits =
        |k: &&VerificationKey| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg);
    match kid {
        Some(kid) => keys.by_kid.get(kid).cloned(),
        None => {
            let mut candidates = keys.by_kid.values().chain(&keys.without_kid).filter(fits);
            let first = candidates.next()?;
            candidates.next().is_none().then(|| first.clone())
        }
    }
}
