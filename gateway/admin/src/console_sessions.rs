//! The console's sign-in with the admin token: a cookie that opens the console for 12 hours at
//! most, on every replica with the same admin token, and no longer once its holder signs out
//! on this replica (or the admin token changes).
//!
//! The cookie is `<issued>.<nonce>.<mac>`: when it was issued (Unix seconds), a random nonce,
//! and an HMAC-SHA256 of both keyed with the admin token's hash — the server keeps nothing per
//! sign-in but the nonces signed out of, each until its cookie's end.

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How long a console sign-in lasts (the cookie's `Max-Age`, enforced here too).
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Most signed-out nonces remembered; beyond, the ones whose cookies end first are forgotten
/// early (only holders of the admin token can sign in and out).
const SIGNED_OUT_REMEMBERED: usize = 10_000;

pub struct ConsoleSessions {
    token_sha256: [u8; 32],
    /// Nonce → the Unix second its cookie ends.
    signed_out: Mutex<HashMap<String, u64>>,
}

impl ConsoleSessions {
    pub fn new(token_sha256: [u8; 32]) -> Self {
        ConsoleSessions {
            token_sha256,
            signed_out: Mutex::new(HashMap::new()),
        }
    }

    /// A new sign-in's cookie value, issued at `now` (Unix seconds).
    pub fn begin(&self, now: u64) -> String {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let mac = self.mac(now, &nonce);
        format!("{now}.{nonce}.{mac}")
    }

    /// Whether `value` is a cookie this admin token issued, not older than [`LIFETIME`] at
    /// `now` and not signed out of.
    pub fn is_valid(&self, value: &str, now: u64) -> bool {
        let Some((issued, nonce)) = self.verified(value) else {
            return false;
        };
        let fresh = issued <= now && now - issued < LIFETIME.as_secs();
        fresh && !self.signed_out.lock().contains_key(nonce)
    }

    /// Signs `value` out (its holder's logout): refused from now on, on this replica.
    pub fn end(&self, value: &str, now: u64) {
        let Some((issued, nonce)) = self.verified(value) else {
            return;
        };
        let end = issued.saturating_add(LIFETIME.as_secs());
        if end <= now {
            return;
        }
        let mut signed_out = self.signed_out.lock();
        signed_out.retain(|_, ends| *ends > now);
        if signed_out.len() >= SIGNED_OUT_REMEMBERED {
            if let Some(first) = signed_out
                .iter()
                .min_by_key(|(_, ends)| **ends)
                .map(|(n, _)| n.clone())
            {
                signed_out.remove(&first);
            }
        }
        signed_out.insert(nonce.to_string(), end);
    }

    /// The issue time and nonce of a value whose MAC is right.
    fn verified<'v>(&self, value: &'v str) -> Option<(u64, &'v str)> {
        let mut parts = value.splitn(3, '.');
        let (issued, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let issued_at: u64 = issued.parse().ok()?;
        let expected = self.mac(issued_at, nonce);
        // `issued` must be exactly what was signed (no leading zeros, no sign).
        let exact = issued_at.to_string() == issued;
        (exact && bool::from(expected.as_bytes().ct_eq(mac.as_bytes())))
            .then_some((issued_at, nonce))
    }

    fn mac(&self, issued: u64, nonce: &str) -> String {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.token_sha256)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(b"gateway-console-session:");
        mac.update(issued.to_string().as_bytes());
        mac.update(b".");
        mac.update(nonce.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_in_lasts_its_lifetime_and_ends_at_sign_out() {
        let sessions = ConsoleSessions::new([7u8; 32]);
        let now = 1_800_000_000;
        let value = sessions.begin(now);
        assert!(
            !value.contains(&hex::encode([7u8; 32])),
            "the token's hash is not in it"
        );
        assert!(sessions.is_valid(&value, now));
        assert!(sessions.is_valid(&value, now + LIFETIME.as_secs() - 1));
        assert!(
            !sessions.is_valid(&value, now + LIFETIME.as_secs()),
            "expired"
        );
        assert!(!sessions.is_valid(&value, now - 1), "issued in the future");

        // Another admin token (rotated) opens nothing.
        assert!(!ConsoleSessions::new([8u8; 32]).is_valid(&value, now));
        // Edited: the time moved, or the MAC.
        let (issued, rest) = value.split_once('.').unwrap();
        let later = format!("{}.{rest}", issued.parse::<u64>().unwrap() + 3600);
        assert!(!sessions.is_valid(&later, now + 3600));
        assert!(!sessions.is_valid(&format!("0{value}"), now));
        assert!(!sessions.is_valid(&value.replace('.', ""), now));

        let other = sessions.begin(now);
        sessions.end(&value, now + 10);
        assert!(!sessions.is_valid(&value, now + 20), "signed out");
        assert!(sessions.is_valid(&other, now + 20), "another sign-in stays");
    }
}
