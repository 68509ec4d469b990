//! Bearer JWTs: header and claims decoding, issuer selection, verification and claim mapping
//! (`identity::Authenticator::authenticate`) against the fixture's two HMAC issuers.
//!
//! Input: NUL-separated parts.
//! - `header-json NUL claims-json`: the token is built from them and signed with the issuers'
//!   secret (HS384/HS512 when the header names them, else HS256);
//! - `header-json NUL claims-json NUL signature-bytes`: the same with a forged signature;
//! - one part: the token as it is.
//!
//! Properties:
//! - a token whose signature the gateway did not make is never accepted;
//! - an accepted token has a JSON header with an `alg` its issuer allows and no `crit`, a
//!   trusted `iss`, the audience, an `exp` not past; its principal is exactly what the claims
//!   say: the `sub` (string or number) as id, within bounds and not reserved, the tenant claim
//!   (a platform issuer's token that names none is a platform principal), valid roles taken
//!   from the roles claim, sorted and without duplicates;
//! - `alg: none` is refused as such (unless a header member name repeats: RFC 7515 §4 lets
//!   the parser reject such a header outright, and the gateway does);
//! - asking twice gives the same answer (the cache of verified tokens changes nothing).
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gateway::identity::{AuthError, AuthMethod};
use gateway_fuzz::{deployment, issuer_secret, parts};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// Whether `json` is an object whose member names are all different (serde_json's `Map`
/// keeps the last of repeated names without saying so).
fn members_unique(json: &[u8]) -> bool {
    struct Unique;
    impl<'de> serde::Deserialize<'de> for Unique {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Members;
            impl<'de> serde::de::Visitor<'de> for Members {
                type Value = Unique;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Unique, A::Error> {
                    let mut seen = std::collections::HashSet::new();
                    while let Some((name, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        if !seen.insert(name) {
                            return Err(serde::de::Error::custom("a member name repeats"));
                        }
                    }
                    Ok(Unique)
                }
            }
            d.deserialize_map(Members)
        }
    }
    serde_json::from_slice::<Unique>(json).is_ok()
}

fn sign(alg: &str, input: &[u8]) -> Vec<u8> {
    fn bad_key<T>(e: hmac::digest::InvalidLength) -> T {
        panic!("{e}")
    }
    let key = issuer_secret();
    match alg {
        "HS384" => {
            let mut m = Hmac::<sha2::Sha384>::new_from_slice(key).unwrap_or_else(bad_key);
            m.update(input);
            m.finalize().into_bytes().to_vec()
        }
        "HS512" => {
            let mut m = Hmac::<sha2::Sha512>::new_from_slice(key).unwrap_or_else(bad_key);
            m.update(input);
            m.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap_or_else(bad_key);
            m.update(input);
            m.finalize().into_bytes().to_vec()
        }
    }
}

/// The `alg` a header names, if it is JSON with one.
fn header_alg(header: &[u8]) -> String {
    serde_json::from_slice::<Value>(header)
        .ok()
        .and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let parts = parts(data);
    let token = match parts.as_slice() {
        [raw] => match std::str::from_utf8(raw) {
            Ok(t) => t.to_string(),
            Err(_) => return,
        },
        [header, claims, rest @ ..] => {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let signature = match rest.first() {
                Some(forged) => forged.to_vec(),
                None => sign(&header_alg(header), input.as_bytes()),
            };
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
        }
        [] => return,
    };
    // Signed with the issuers' secret, whichever way the token was made.
    let genuine = token
        .trim()
        .rsplit_once('.')
        .is_some_and(|(input, signature)| {
            let header = input.split('.').next().unwrap_or_default();
            let header = URL_SAFE_NO_PAD
                .decode(header.trim_end_matches('='))
                .unwrap_or_default();
            URL_SAFE_NO_PAD
                .decode(signature.trim_end_matches('='))
                .is_ok_and(|s| s == sign(&header_alg(&header), input.as_bytes()))
        });
    let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);

    let d = deployment();
    let snapshot = d.snapshot();
    let Some(policy) = snapshot.identity.as_deref() else {
        panic!("the fixture has [identity]");
    };
    let authenticate = || {
        d.block_on(d.services.authenticator.authenticate(
            &headers,
            policy,
            &snapshot.registry,
            snapshot.identity_generation,
        ))
    };
    let first = authenticate();
    let second = authenticate();
    assert_eq!(
        first, second,
        "a second look at the same token decided otherwise"
    );

    let segments: Vec<&str> = token.trim().split('.').collect();
    let decode = |i: usize| -> Option<Map<String, Value>> {
        let bytes = URL_SAFE_NO_PAD
            .decode(segments.get(i)?.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let principal = match first {
        Ok(p) => p,
        Err(AuthError::AlgNone) => {
            let header = decode(0).unwrap_or_else(|| panic!("alg none without a header"));
            let alg = header
                .get("alg")
                .and_then(Value::as_str)
                .unwrap_or_default();
            assert!(alg.eq_ignore_ascii_case("none"), "AlgNone for {alg:?}");
            return;
        }
        Err(_) => {
            // A header that reads (member names unique, alg a string, kid a string if any)
            // and says `none` is refused as such, whatever else is wrong with the token.
            let header = decode(0).filter(|_| {
                segments
                    .first()
                    .and_then(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
                    .is_some_and(|bytes| members_unique(&bytes))
            });
            let says_none = header.as_ref().is_some_and(|h| {
                h.get("alg")
                    .and_then(Value::as_str)
                    .is_some_and(|a| a.eq_ignore_ascii_case("none"))
                    && h.get("kid").is_none_or(|k| k.is_string() || k.is_null())
            });
            assert!(
                !(says_none && segments.len() == 3),
                "alg none refused for another reason: {header:?}"
            );
            return;
        }
    };
    assert!(
        genuine,
        "accepted a token the issuer did not sign: {token:?}"
    );
    let header = decode(0).unwrap_or_else(|| panic!("accepted without a JSON header"));
    let claims = decode(1).unwrap_or_else(|| panic!("accepted without JSON claims"));
    assert!(
        !header.contains_key("crit"),
        "accepted with crit: {header:?}"
    );
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let issuer = policy
        .issuers
        .get(iss)
        .unwrap_or_else(|| panic!("accepted from issuer {iss:?}"));
    let config = &issuer.config;
    assert!(
        config.algorithms.iter().any(|a| format!("{a:?}") == alg),
        "accepted {alg} for {iss}: {:?}",
        config.algorithms
    );
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        other => panic!("accepted with aud {other:?}"),
    };
    assert!(
        audiences
            .iter()
            .any(|a| config.audiences.iter().any(|c| c == a)),
        "accepted for {audiences:?}"
    );
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("accepted without a numeric exp: {claims:?}"));
    assert!(
        exp + config.leeway.as_secs_f64() >= now() as f64,
        "accepted, expired at {exp}"
    );

    let expected_id = match claims.get(&config.claims.subject) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        other => panic!("accepted with subject {other:?}"),
    };
    assert_eq!(principal.id, expected_id);
    assert!(!principal.id.is_empty() && principal.id.len() <= 256);
    assert!(
        !principal.id.chars().any(char::is_control),
        "{:?}",
        principal.id
    );
    assert!(!gateway::identity::principal::is_reserved_id(&principal.id));
    let expected_tenant = config
        .claims
        .tenant
        .as_ref()
        .and_then(|path| gateway::identity::principal::claim(&claims, path))
        .and_then(Value::as_str);
    assert_eq!(principal.tenant.as_deref(), expected_tenant);
    assert_eq!(
        principal.platform,
        config.platform && expected_tenant.is_none()
    );
    assert_eq!(
        principal.auth,
        AuthMethod::Jwt {
            issuer: iss.to_string()
        }
    );
    let claimed_roles: Vec<String> =
        match gateway::identity::principal::claim(&claims, &config.claims.roles) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
    for role in &principal.roles {
        assert!(claimed_roles.contains(role), "role {role:?} not claimed");
        assert!(
            !role.is_empty()
                && role.len() <= 128
                && role
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b)),
            "role {role:?} cannot travel in a header"
        );
    }
    assert!(
        principal.roles.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        principal.roles
    );
});
