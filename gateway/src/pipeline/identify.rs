//! Stage 2: who is calling (see [`crate::identity`] for how credentials are verified).

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::DecodingKey;

use super::{Rejection, RequestHead};
use crate::config::{IdentityConfig, LoadedConfig};
use crate::identity::{Authenticator, GlobalIssuer, IdentityPolicy, Principal};
use crate::tenancy::TenantRegistry;

/// Compiles `[identity]` (reading HMAC secrets of global issuers).
pub fn compile(identity: &IdentityConfig, loaded: &LoadedConfig) -> Result<IdentityPolicy, String> {
    let mut issuers = HashMap::with_capacity(identity.issuer.len());
    for issuer in &identity.issuer {
        let hmac_key = match &issuer.secret_file {
            Some(path) => {
                let path = loaded.resolve(std::path::Path::new(path));
                let secret =
                    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                Some(Arc::new(DecodingKey::from_secret(trim_newline(&secret))))
            }
            None => None,
        };
        issuers.insert(
            issuer.issuer.clone(),
            Arc::new(GlobalIssuer {
                config: issuer.clone(),
                hmac_key,
            }),
        );
    }
    Ok(IdentityPolicy {
        issuers,
        api_key_header: http::HeaderName::from_bytes(
            identity.api_key_header.to_ascii_lowercase().as_bytes(),
        )
        .map_err(|e| format!("identity.api_key_header: {e}"))?,
        allow_anonymous: identity.allow_anonymous,
    })
}

/// Secret files often end with a newline an editor added; it is not part of the secret.
fn trim_newline(mut bytes: &[u8]) -> &[u8] {
    while let Some(rest) = bytes
        .strip_suffix(b"\n")
        .or_else(|| bytes.strip_suffix(b"\r"))
    {
        bytes = rest;
    }
    bytes
}

/// Runs stage 2. Without `[identity]` every caller is anonymous.
pub async fn identify(
    head: &RequestHead<'_>,
    policy: Option<&IdentityPolicy>,
    registry: &TenantRegistry,
    generation: u64,
    authenticator: &Authenticator,
) -> Result<Arc<Principal>, Rejection> {
    match policy {
        Some(policy) => authenticator
            .authenticate(head.headers, policy, registry, generation)
            .await
            .map_err(Rejection::Unauthenticated),
        None => Ok(Arc::new(Principal::anonymous())),
    }
}
