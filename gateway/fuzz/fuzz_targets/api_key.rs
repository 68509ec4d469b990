//! Credentials in request headers: the `Authorization` header and API keys
//! (`identity::Authenticator::authenticate`) against the fixture's registry, whose tenant
//! `acme` has the key `fuzz-acme-reporting-key` and `globex` the expired key
//! `fuzz-globex-expired-key`.
//!
//! Input: NUL-separated header lines `name: value` (any headers; the seeds use
//! `authorization` and `x-api-key`).
//!
//! Properties, against a reference reading of the headers:
//! - two `Authorization` headers, two API keys, or one of each: `multiple-credentials`;
//! - an `Authorization` that is not `Bearer <token>` (scheme in any case, one space, a
//!   non-empty token) is `malformed-authorization`, and one that is never is;
//! - an API key is accepted exactly when it is, byte for byte, a key of the registry that has
//!   not expired; its principal is `apikey:<id>` of the key's tenant with the key's roles and
//!   scopes, bound to that tenant; an expired key is `expired-api-key`, any other
//!   `unknown-api-key`;
//! - no credential at all is the anonymous caller (the fixture allows them).
#![no_main]

use gateway::identity::{AuthError, AuthMethod, Principal};
use gateway::tenancy::registry::api_key_hash;
use gateway_fuzz::{deployment, parts};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

enum Expected {
    Error(AuthError),
    /// A bearer token: verified as a JWT (the `jwt` target's business).
    Token,
    Key(String),
    Anonymous,
}

fn expected(headers: &HeaderMap, key_header: &HeaderName) -> Expected {
    let auth: Vec<&HeaderValue> = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .collect();
    let bearer = match auth.as_slice() {
        [] => false,
        [value] => {
            let Ok(text) = value.to_str() else {
                return Expected::Error(AuthError::MalformedAuthorization);
            };
            let Some(space) = text.find(' ') else {
                return Expected::Error(AuthError::MalformedAuthorization);
            };
            let (scheme, token) = (&text[..space], &text[space + 1..]);
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Expected::Error(AuthError::MalformedAuthorization);
            }
            true
        }
        _ => return Expected::Error(AuthError::MultipleCredentials),
    };
    let keys: Vec<&HeaderValue> = headers.get_all(key_header).iter().collect();
    let key = match keys.as_slice() {
        [] => None,
        [value] => match value.to_str() {
            Ok(k) => Some(k.to_string()),
            Err(_) => return Expected::Error(AuthError::UnknownApiKey),
        },
        _ => return Expected::Error(AuthError::MultipleCredentials),
    };
    match (bearer, key) {
        (true, Some(_)) => Expected::Error(AuthError::MultipleCredentials),
        (true, None) => Expected::Token,
        (false, Some(k)) => Expected::Key(k),
        (false, None) => Expected::Anonymous,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in parts(data) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let d = deployment();
    let snapshot = d.snapshot();
    let Some(policy) = snapshot.identity.as_deref() else {
        panic!("the fixture has [identity]");
    };
    let got = d.block_on(d.services.authenticator.authenticate(
        &headers,
        policy,
        &snapshot.registry,
        snapshot.identity_generation,
    ));
    match expected(&headers, &policy.api_key_header) {
        Expected::Error(e) => assert_eq!(got.map(|_| ()), Err(e)),
        Expected::Token => assert!(
            !matches!(
                got,
                Err(AuthError::MalformedAuthorization | AuthError::MultipleCredentials)
            ),
            "{got:?}"
        ),
        Expected::Anonymous => assert_eq!(got, Ok(std::sync::Arc::new(Principal::anonymous()))),
        Expected::Key(key) => {
            let entry = snapshot.registry.api_key(&api_key_hash(&key));
            // The fixture's keys, spelled out (the registry lookup above is by hash).
            match key.as_str() {
                "fuzz-acme-reporting-key" => assert!(entry.is_some()),
                "fuzz-globex-expired-key" => {
                    return assert_eq!(got.map(|_| ()), Err(AuthError::ExpiredApiKey))
                }
                _ => assert!(entry.is_none(), "{key:?} found"),
            }
            let Some(entry) = entry else {
                return assert_eq!(got.map(|_| ()), Err(AuthError::UnknownApiKey));
            };
            let principal = got.unwrap_or_else(|e| panic!("{key:?} refused: {e}"));
            assert_eq!(principal.id, format!("apikey:{}", entry.key.id));
            assert_eq!(principal.tenant.as_deref(), Some(&*entry.tenant));
            assert!(principal.tenant_bound && !principal.platform);
            assert_eq!(principal.roles, entry.key.roles);
            assert_eq!(principal.scopes, entry.key.scopes);
            assert_eq!(
                principal.auth,
                AuthMethod::ApiKey {
                    key_id: entry.key.id.clone()
                }
            );
        }
    }
});
