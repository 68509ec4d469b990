//! The JWT attack matrix against asymmetric issuers (RS256, ES256, EdDSA with their JWKS on
//! loopback), through the real gateway: HMAC signed with a public key, algorithm switching
//! within the pinned set, a `kid` of another issuer's key, embedded `jwk`/`jku`/`x5u`/`x5c`
//! headers, keys rotated mid-traffic, and a JWKS that is down, slow or returns garbage.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::common;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::idp::{ec_key, ed_key, forge, rsa_key, Outage, TestIdp};
use crate::common::{client, config_for, upstream, TestGateway};
use base64::Engine;
use gateway::example_upstream::{Echo, ExampleUpstream};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

struct Matrix {
    /// Publishes `rs-1` (RS256), `es-1` (ES256) and `ed-1` (EdDSA); found by OIDC discovery;
    /// pinned to RS256, PS256, ES256 and EdDSA.
    mixed: TestIdp,
    /// Publishes `other-1` and a key of its own also named `rs-1`; RS256 only; `jwks_uri` given.
    other: TestIdp,
    up: ExampleUpstream,
    gw: TestGateway,
}

async fn start(extra_identity: &str) -> Matrix {
    let mixed = TestIdp::start().await;
    mixed.add_key("rs-1", rsa_key("rs-1"));
    mixed.add_key("es-1", ec_key("es-1"));
    mixed.add_key("ed-1", ed_key("ed-1"));
    let other = TestIdp::start().await;
    other.add_key("other-1", rsa_key("other-1"));
    other.add_key("rs-1", rsa_key("rs-1"));
    let up = upstream("app").await;
    let identity = format!(
        r#"
[identity]
jwks_min_refresh_interval = "1s"
{extra_identity}

[[identity.issuer]]
issuer = "{mixed}"
audiences = ["gateway"]
algorithms = ["RS256", "PS256", "ES256", "EdDSA"]

[[identity.issuer]]
issuer = "{other}"
jwks_uri = "{other}/jwks"
audiences = ["gateway"]
algorithms = ["RS256"]
"#,
        mixed = mixed.issuer,
        other = other.issuer,
    );
    let gw = TestGateway::start(&config_for(&[up.addr], &identity), &[]);
    Matrix {
        mixed,
        other,
        up,
        gw,
    }
}

/// Claims for a subject of its own, so each token is verified afresh (not from the cache of
/// verified tokens).
fn fresh_claims(idp: &TestIdp) -> Map<String, Value> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    idp.claims(&format!("user-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

async fn status_of(gw: &TestGateway, token: &str) -> (u16, String) {
    let res = client()
        .get(gw.url("/projects/1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

fn hmac_token(alg: Algorithm, kid: &str, secret: &[u8], claims: &Map<String, Value>) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// Sends each attack and checks the refusal: 401, a problem document that names no reason,
/// `WWW-Authenticate`, and the precise reason in the gateway's log.
async fn assert_refused(m: &Matrix, attacks: &[(&str, &str, String)]) {
    let served = m.up.served();
    for (name, reason, token) in attacks {
        let res = client()
            .get(m.gw.url("/projects/1"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let www = res
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let content_type = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let body = res.text().await.unwrap();
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(
            content_type.as_deref(),
            Some("application/problem+json"),
            "{name}"
        );
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            problem["detail"], "missing or invalid credentials",
            "{name}"
        );
        assert!(!body.contains(reason), "{name}: the reason leaked: {body}");
        assert!(
            www.is_some_and(|w| w.contains("invalid_token")),
            "{name}: WWW-Authenticate"
        );
    }
    assert_eq!(
        m.up.served(),
        served,
        "a refused token reached the upstream"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = m.gw.settled_log();
    for (name, reason, _) in attacks {
        assert!(
            log.contains(&format!("reason=\"{reason}\"")),
            "{name}: no `{reason}` in the log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn asymmetric_issuers_accept_their_own_tokens_and_refuse_every_attack() {
    let m = start("").await;
    let (mixed, other) = (&m.mixed, &m.other);
    // Each issuer's own keys verify its tokens: RS256, ES256, EdDSA, and PS256 with an RSA key
    // whose JWK does not restrict its algorithm.
    for kid in ["rs-1", "es-1", "ed-1"] {
        let (status, body) = status_of(&m.gw, &mixed.token(kid, &fresh_claims(mixed))).await;
        assert_eq!(status, 200, "{kid}: {body}");
        let echo: Echo = serde_json::from_str(&body).unwrap();
        assert_eq!(echo.headers["x-principal-auth"], vec!["jwt"]);
    }
    let (status, body) = status_of(&m.gw, &other.token("other-1", &fresh_claims(other))).await;
    assert_eq!(status, 200, "{body}");

    let mut attacks: Vec<(&str, &str, String)> = Vec::new();
    // HMAC keyed with what an attacker can read of each public key: its PEM, its JWK, its raw
    // key material.
    for kid in ["rs-1", "es-1", "ed-1"] {
        let key = mixed.key(kid);
        let claims = fresh_claims(mixed);
        let raw = match key.alg {
            Algorithm::RS256 => b64_decode(key.jwk["n"].as_str().unwrap()),
            _ => b64_decode(key.jwk["x"].as_str().unwrap()),
        };
        for (alg, secret) in [
            (Algorithm::HS256, key.public_pem.as_bytes().to_vec()),
            (Algorithm::HS384, key.jwk.to_string().into_bytes()),
            (Algorithm::HS512, raw),
        ] {
            attacks.push((
                "hmac with a public key",
                "alg-not-allowed",
                hmac_token(alg, kid, &secret, &claims),
            ));
        }
    }
    // Algorithm switching within the pinned set: a key used with an algorithm of another type,
    // and an RSA key whose JWK says RS256 used with PS256 (a valid signature of the key holder,
    // yet not the algorithm the issuer bound the key to).
    let claims = fresh_claims(mixed);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rs-1".into());
    attacks.push((
        "ES256 under an RSA kid",
        "alg-not-allowed",
        mixed.token_with_header(&header, "es-1", &claims),
    ));
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("es-1".into());
    attacks.push((
        "EdDSA under an EC kid",
        "alg-not-allowed",
        mixed.token_with_header(&header, "ed-1", &claims),
    ));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("ed-1".into());
    attacks.push((
        "RS256 under an Ed25519 kid",
        "alg-not-allowed",
        mixed.token_with_header(&header, "rs-1", &claims),
    ));
    let mut header = Header::new(Algorithm::PS256);
    header.kid = Some("rs-1".into());
    attacks.push((
        "PS256 with a key bound to RS256",
        "alg-not-allowed",
        mixed.token_with_header(&header, "rs-1", &claims),
    ));
    attacks.push((
        "ES384 is not pinned",
        "alg-not-allowed",
        forge(&json!({"alg": "ES384", "kid": "es-1"}), &claims, &[7u8; 96]),
    ));
    // A kid of another issuer's key: unknown to this issuer, or (same kid name) not its key.
    let claims = fresh_claims(mixed);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("other-1".into());
    attacks.push((
        "kid of another issuer",
        "unknown-key",
        other.token_with_header(&header, "other-1", &claims),
    ));
    header.kid = Some("rs-1".into());
    attacks.push((
        "same kid name, another issuer's key",
        "bad-signature",
        other.token_with_header(&header, "rs-1", &claims),
    ));
    let claims = fresh_claims(other);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rs-1".into());
    attacks.push((
        "the other issuer's iss with the mixed issuer's key",
        "bad-signature",
        mixed.token_with_header(&header, "rs-1", &claims),
    ));
    // Keys embedded in or pointed at by the header are never used (nor fetched).
    let attacker = TestIdp::start().await;
    let rogue = attacker.add_key("rogue", rsa_key("rogue"));
    let claims = fresh_claims(mixed);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rs-1".into());
    header.jwk = Some(serde_json::from_value(rogue.jwk.clone()).unwrap());
    attacks.push((
        "embedded jwk with a published kid",
        "bad-signature",
        attacker.token_with_header(&header, "rogue", &claims),
    ));
    header.kid = None;
    attacks.push((
        "embedded jwk without kid",
        "bad-signature",
        attacker.token_with_header(&header, "rogue", &claims),
    ));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rogue".into());
    header.jku = Some(format!("{}/jwks", attacker.issuer));
    attacks.push((
        "jku pointing at the attacker",
        "unknown-key",
        attacker.token_with_header(&header, "rogue", &claims),
    ));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rs-1".into());
    header.x5u = Some(format!("{}/cert.pem", attacker.issuer));
    header.x5c = Some(vec![b64(b"not a certificate")]);
    attacks.push((
        "x5u and x5c",
        "bad-signature",
        attacker.token_with_header(&header, "rogue", &claims),
    ));
    assert_refused(&m, &attacks).await;
    assert!(
        attacker.requests().is_empty(),
        "the gateway fetched from a URL in a token: {:?}",
        attacker.requests()
    );
}

/// Tokens signed with fresh claims by whichever key is current, from several clients at once,
/// while the issuer rotates; then the withdrawn key stops verifying, cached tokens included.
#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_mid_traffic_and_a_withdrawn_key_stops_verifying_cached_tokens_too() {
    let m = Arc::new(start("").await);
    let idp = m.mixed.clone();
    // Verified once now, so it sits in the cache of verified tokens.
    let cached_old = idp.token("rs-1", &fresh_claims(&idp));
    assert_eq!(status_of(&m.gw, &cached_old).await.0, 200);
    assert_eq!(idp.jwks_fetches(), 1);

    let current = Arc::new(std::sync::Mutex::new("rs-1".to_string()));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Instant::now() + Duration::from_millis(3500);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (m, idp, current, failures) =
            (m.clone(), idp.clone(), current.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            let mut sent = 0;
            while Instant::now() < stop {
                let kid = current.lock().unwrap().clone();
                let token = idp.token(&kid, &fresh_claims(&idp));
                let (status, body) = status_of(&m.gw, &token).await;
                if status != 200 {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{kid}: {status} {body}"));
                }
                sent += 1;
            }
            sent
        }));
    }
    // The issuer publishes its next key ahead of use (past the refetch rate limit of 1 s), signs
    // with it, then withdraws the old one.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    idp.add_key("rs-2", rsa_key("rs-2"));
    *current.lock().unwrap() = "rs-2".to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    idp.unpublish("rs-1");
    let mut sent = 0;
    for w in workers {
        sent += w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {sent} refused: {failures:?}",
        failures.len()
    );
    assert!(sent > 20, "only {sent} requests");

    // The next refetch no longer finds `rs-1`: a token verified with it before is refused now,
    // exactly like one never seen.
    // (An unknown kid triggers the refetch once the 1 s refetch limit has passed; on a busy
    // machine that may take a few tries.)
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rs-3".into());
    let unknown = idp.token_with_header(&header, "rs-2", &fresh_claims(&idp));
    let deadline = Instant::now() + Duration::from_secs(10);
    while idp.jwks_fetches() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(status_of(&m.gw, &unknown).await.0, 401);
    }
    let fetches = idp.jwks_fetches();
    assert!(fetches >= 3, "{fetches} fetches");
    let (status, body) = status_of(&m.gw, &cached_old).await;
    assert_eq!(
        status, 401,
        "a token of the withdrawn key is still accepted: {body}"
    );
    let fresh_old = idp.token("rs-1", &fresh_claims(&idp));
    assert_eq!(status_of(&m.gw, &fresh_old).await.0, 401);
    assert_eq!(
        status_of(&m.gw, &idp.token("rs-2", &fresh_claims(&idp)))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_that_is_down_or_returns_garbage_keeps_the_keys_held() {
    let m = start("").await;
    let idp = &m.mixed;
    assert_eq!(
        status_of(&m.gw, &idp.token("rs-1", &fresh_claims(idp)))
            .await
            .0,
        200
    );
    let huge = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20));
    let outages = [
        ("503", Outage::Status(503)),
        ("404", Outage::Status(404)),
        ("html", Outage::Body("<html>maintenance</html>".into())),
        ("not a key set", Outage::Body("{\"keys\": \"none\"}".into())),
        ("an empty key set", Outage::Body("{\"keys\": []}".into())),
        (
            "only a symmetric key",
            Outage::Body(
                json!({"keys": [{"kty": "oct", "kid": "rs-1", "k": b64(b"attacker-chosen-secret")}]})
                    .to_string(),
            ),
        ),
        (
            "only unusable keys",
            Outage::Body("{\"keys\": [{\"kid\": 5}, {\"kty\": \"RSA\", \"kid\": \"x\"}]}".into()),
        ),
        ("a 2 MiB document", Outage::Body(huge)),
    ];
    for (name, outage) in outages {
        idp.jwks_outage(Some(outage));
        // Past the refetch rate limit, a token with an unknown kid makes the gateway refetch.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = idp.jwks_fetches() + idp.requests().len() as u64;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("not-published".into());
        let unknown = idp.token_with_header(&header, "rs-1", &fresh_claims(idp));
        let (status, body) = status_of(&m.gw, &unknown).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert!(
            idp.jwks_fetches() + idp.requests().len() as u64 > before,
            "{name}: no refetch was tried"
        );
        // The keys held before keep verifying (fresh tokens, not cached ones), for every key.
        for kid in ["rs-1", "es-1", "ed-1"] {
            let started = Instant::now();
            let (status, body) = status_of(&m.gw, &idp.token(kid, &fresh_claims(idp))).await;
            assert_eq!(status, 200, "{name}, {kid}: {body}");
            assert!(
                started.elapsed() < Duration::from_millis(900),
                "{name}: a known key waited {:?}",
                started.elapsed()
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        m.gw.settled_log().contains("keeping the previous keys"),
        "{}",
        m.gw.log()
    );
    // Back to normal: a key published meanwhile is found.
    idp.jwks_outage(None);
    idp.add_key("es-2", ec_key("es-2"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        status_of(&m.gw, &idp.token("es-2", &fresh_claims(idp)))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_request_waits_for_keys_longer_than_the_fetch_timeout() {
    let m = start("jwks_fetch_timeout = \"1s\"").await;
    let timeout = Duration::from_secs(1);
    // Generous for a loaded test machine, yet below what two sequential fetches would take.
    let slack = Duration::from_millis(700);
    let idp = &m.mixed;

    // A cold issuer whose discovery and JWKS each answer after 700 ms: together they exceed
    // the timeout, so the request is refused once the timeout passes, not after both.
    idp.discovery_outage(Some(Outage::Delay(Duration::from_millis(700))));
    idp.jwks_outage(Some(Outage::Delay(Duration::from_millis(700))));
    let started = Instant::now();
    let (status, body) = status_of(&m.gw, &idp.token("rs-1", &fresh_claims(idp))).await;
    let waited = started.elapsed();
    assert_eq!(status, 401, "{body}");
    assert!(waited < timeout + slack, "waited {waited:?}");

    // Discovery that never answers: the same bound.
    idp.discovery_outage(Some(Outage::Hang));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    assert_eq!(
        status_of(&m.gw, &idp.token("es-1", &fresh_claims(idp)))
            .await
            .0,
        401
    );
    assert!(
        started.elapsed() < timeout + slack,
        "{:?}",
        started.elapsed()
    );

    // Healthy again: keys arrive and are cached.
    idp.discovery_outage(None);
    idp.jwks_outage(None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        status_of(&m.gw, &idp.token("rs-1", &fresh_claims(idp)))
            .await
            .0,
        200
    );

    // The JWKS hangs: requests with an unknown kid, at once, each wait at most the timeout
    // (also those waiting for another request's fetch); known keys do not wait at all.
    idp.jwks_outage(Some(Outage::Hang));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut waiting = Vec::new();
    for _ in 0..6 {
        let gw_url = m.gw.url("/projects/1");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("es-rotated".into());
        let token = idp.token_with_header(&header, "es-1", &fresh_claims(idp));
        waiting.push(tokio::spawn(async move {
            let started = Instant::now();
            let status = client()
                .get(gw_url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            (status, started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for kid in ["rs-1", "es-1", "ed-1"] {
        let started = Instant::now();
        assert_eq!(
            status_of(&m.gw, &idp.token(kid, &fresh_claims(idp)))
                .await
                .0,
            200
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{kid} waited {:?}",
            started.elapsed()
        );
    }
    for w in waiting {
        let (status, waited) = w.await.unwrap();
        assert_eq!(status, 401);
        assert!(waited < timeout + slack, "waited {waited:?}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = m.gw.settled_log();
    assert!(log.contains("reason=\"keys-unavailable\""), "{log}");
    assert!(log.contains("reason=\"unknown-key\""), "{log}");
}

#[test]
fn check_names_an_invalid_fetch_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    for (value, ok) in [("\"0s\"", false), ("\"5m\"", false), ("\"2s\"", true)] {
        std::fs::write(
            &config,
            config_for(
                &["127.0.0.1:9".parse().unwrap()],
                &format!(
                    "[identity]\njwks_fetch_timeout = {value}\n\n[[identity.issuer]]\nissuer = \"https://idp.example\"\naudiences = [\"gateway\"]\nalgorithms = [\"ES256\"]\n"
                ),
            )
            .replace("{listen}", "127.0.0.1:1"),
        )
        .unwrap();
        let out = std::process::Command::new(common::gateway_bin())
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if ok {
            assert!(out.status.success(), "{value}: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
            assert!(
                stderr.contains("identity.jwks_fetch_timeout"),
                "{value}: {stderr}"
            );
        }
    }
}
