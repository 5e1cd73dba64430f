//! Access tokens: HS256-signed JWTs that carry the client and its granted
//! scopes and expire. The OAuth service signs them; the tool and memory
//! services verify them with the same key.
//!
//! Written here on `hmac` + `sha2` rather than with `jsonwebtoken`, whose
//! current releases make every user pick a crypto backend that brings RSA and
//! elliptic-curve crates we would never call: we need one algorithm, and
//! refusing every other `alg` (notably `none`) is the whole of the policy.
//!
//! Beside the signature, a token must look like one this service issued:
//! not issued more than [`CLOCK_LEEWAY_SECONDS`] in the future, and not
//! living longer than the configured lifetime plus that leeway. Only a
//! leaked key could sign any other, and then these bound what it buys.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The issuer written into and demanded of every token.
pub const ISSUER: &str = "heistd-oauth";
/// Shorter keys are refused: HS256 wants at least its hash size.
pub const MIN_KEY_BYTES: usize = 32;
/// Clocks may disagree by this much: an `iat` this far ahead, or a
/// lifetime this much over the configured one, is still accepted.
pub const CLOCK_LEEWAY_SECONDS: i64 = 60;
/// The longest lifetime a key accepts unless told the configured one
/// ([`SigningKey::with_max_lifetime`]): the largest `oauth.token_ttl_seconds`
/// the config accepts.
pub const LONGEST_TOKEN_TTL_SECONDS: i64 = 86_400;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm is not HS256")]
    WrongAlgorithm,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is issued in the future")]
    IssuedInTheFuture,
    #[error("token lives longer than this service issues tokens for")]
    LifetimeTooLong,
    #[error("token was not issued by {ISSUER}")]
    WrongIssuer,
    #[error("signing key must be at least {MIN_KEY_BYTES} bytes")]
    KeyTooShort,
    #[error("token claims cannot be encoded: {0}")]
    Unencodable(String),
    #[error("signing key is not usable for HMAC-SHA256")]
    KeyUnusable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The client id the token was issued to.
    pub sub: String,
    /// Space-separated granted scopes, as in OAuth.
    pub scope: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Clone)]
pub struct SigningKey {
    bytes: Arc<Vec<u8>>,
    /// The longest `exp - iat` a token may carry (plus the leeway): the
    /// configured token lifetime, so a token minted with a leaked key for
    /// a year is refused.
    max_lifetime_seconds: i64,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SigningKey(<redacted>)")
    }
}

impl Claims {
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope.split_whitespace().any(|scope| scope == wanted)
    }
}

impl SigningKey {
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, TokenError> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(TokenError::KeyTooShort);
        }
        Ok(Self {
            bytes: Arc::new(bytes),
            max_lifetime_seconds: LONGEST_TOKEN_TTL_SECONDS,
        })
    }

    /// The same key, accepting tokens that live at most `seconds` (plus
    /// the leeway): the configured `oauth.token_ttl_seconds`.
    pub fn with_max_lifetime(mut self, seconds: u64) -> Self {
        self.max_lifetime_seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
        self
    }

    /// A fresh random key, for companions that all live in one process.
    pub fn random() -> Self {
        let mut bytes = vec![0u8; MIN_KEY_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self {
            bytes: Arc::new(bytes),
            max_lifetime_seconds: LONGEST_TOKEN_TTL_SECONDS,
        }
    }

    /// A signed token carrying `claims`. Fails rather than sign anything
    /// but the claims themselves.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims_json = serde_json::to_vec(claims)
            .map_err(|error| TokenError::Unencodable(error.to_string()))?;
        let payload = URL_SAFE_NO_PAD.encode(claims_json);
        let signing_input = format!("{header}.{payload}");
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&signing_input)?.finalize().into_bytes());
        Ok(format!("{signing_input}.{signature}"))
    }

    /// Checks signature, algorithm, issuer, expiry, issue time and lifetime
    /// against `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: serde_json::Value = decode_json(header)?;
        if header.get("alg").and_then(|alg| alg.as_str()) != Some("HS256") {
            return Err(TokenError::WrongAlgorithm);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let signing_input_length = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
        self.mac(&token[..signing_input_length])?
            .verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = decode_json(payload)?;
        if claims.iss != ISSUER {
            return Err(TokenError::WrongIssuer);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.iat > now.saturating_add(CLOCK_LEEWAY_SECONDS) {
            return Err(TokenError::IssuedInTheFuture);
        }
        let longest = self
            .max_lifetime_seconds
            .saturating_add(CLOCK_LEEWAY_SECONDS);
        if claims
            .exp
            .checked_sub(claims.iat)
            .is_none_or(|lifetime| lifetime > longest)
        {
            return Err(TokenError::LifetimeTooLong);
        }
        Ok(claims)
    }

    fn mac(&self, input: &str) -> Result<Hmac<Sha256>, TokenError> {
        // HMAC takes keys of any length today; should that ever change, the
        // key is refused rather than the process stopped.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes)
            .map_err(|_| TokenError::KeyUnusable)?;
        mac.update(input.as_bytes());
        Ok(mac)
    }
}

/// Current Unix time in seconds, for token issue and expiry.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "hacker".into(),
            scope: "calculator:use database_query:use".into(),
            iat: 0,
            exp,
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let key = SigningKey::random();
        let token = key.sign(&claims(100)).expect("signed");
        let verified = key.verify(&token, 50).expect("valid");
        assert!(verified.has_scope("calculator:use") && !verified.has_scope("file_reader:use"));
        assert_eq!(key.verify(&token, 100), Err(TokenError::Expired));
        assert_eq!(
            SigningKey::random().verify(&token, 50),
            Err(TokenError::BadSignature)
        );
        assert_eq!(key.verify("a.b", 50), Err(TokenError::Malformed));
        assert_eq!(
            key.verify("not a token at all", 50),
            Err(TokenError::Malformed)
        );
        let mut tampered: Vec<&str> = token.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                scope: "memory:admin".into(),
                ..claims(100)
            })
            .expect("json"),
        );
        tampered[1] = &forged_payload;
        assert_eq!(
            key.verify(&tampered.join("."), 50),
            Err(TokenError::BadSignature)
        );
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let unsigned = format!("{none_header}.{forged_payload}.");
        assert_eq!(key.verify(&unsigned, 50), Err(TokenError::WrongAlgorithm));
        assert_eq!(
            SigningKey::from_bytes(vec![1; 8]).map(|_| ()),
            Err(TokenError::KeyTooShort)
        );
    }

    fn issued(iat: i64, exp: i64) -> Claims {
        Claims {
            iat,
            exp,
            ..claims(exp)
        }
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused_beyond_the_leeway() {
        let key = SigningKey::random().with_max_lifetime(3_600);
        let now = 1_000_000;
        let verify =
            |iat: i64| key.verify(&key.sign(&issued(iat, iat + 600)).expect("signed"), now);
        assert!(verify(now).is_ok());
        assert!(
            verify(now + CLOCK_LEEWAY_SECONDS).is_ok(),
            "within the leeway"
        );
        assert_eq!(
            verify(now + CLOCK_LEEWAY_SECONDS + 1),
            Err(TokenError::IssuedInTheFuture)
        );
        assert_eq!(verify(now + 86_400), Err(TokenError::IssuedInTheFuture));
    }

    #[test]
    fn a_token_living_longer_than_the_configured_ttl_is_refused_beyond_the_leeway() {
        let key = SigningKey::random().with_max_lifetime(3_600);
        let now = 1_000_000;
        let verify = |lifetime: i64| {
            key.verify(
                &key.sign(&issued(now - 10, now - 10 + lifetime))
                    .expect("signed"),
                now,
            )
        };
        assert!(verify(3_600).is_ok());
        assert!(
            verify(3_600 + CLOCK_LEEWAY_SECONDS).is_ok(),
            "within the leeway"
        );
        assert_eq!(
            verify(3_600 + CLOCK_LEEWAY_SECONDS + 1),
            Err(TokenError::LifetimeTooLong)
        );
        assert_eq!(verify(365 * 86_400), Err(TokenError::LifetimeTooLong));
        // No overflow to slip through: an `iat` far in the past.
        let ancient = key.sign(&issued(i64::MIN, now + 10)).expect("signed");
        assert_eq!(key.verify(&ancient, now), Err(TokenError::LifetimeTooLong));
        // A key not told the configured lifetime takes the longest the
        // config allows, no more.
        let unconfigured = SigningKey::random();
        let day = unconfigured
            .sign(&issued(now, now + 86_400))
            .expect("signed");
        assert!(unconfigured.verify(&day, now).is_ok());
        let year = unconfigured
            .sign(&issued(now, now + 365 * 86_400))
            .expect("signed");
        assert_eq!(
            unconfigured.verify(&year, now),
            Err(TokenError::LifetimeTooLong)
        );
    }
}
