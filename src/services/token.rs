//! Access tokens: HS256-signed JWTs that carry the client and its granted
//! scopes and expire. The OAuth service signs them; the tool and memory
//! services verify them with the same key.
//!
//! Written here on `hmac` + `sha2` rather than with `jsonwebtoken`, whose
//! current releases make every user pick a crypto backend that brings RSA and
//! elliptic-curve crates we would never call: we need one algorithm, and
//! refusing every other `alg` (notably `none`) is the whole of the policy.

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
pub struct SigningKey(Arc<Vec<u8>>);

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
        Ok(Self(Arc::new(bytes)))
    }

    /// A fresh random key, for companions that all live in one process.
    pub fn random() -> Self {
        let mut bytes = vec![0u8; MIN_KEY_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(Arc::new(bytes))
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

    /// Checks signature, algorithm, issuer and expiry against `now` (Unix seconds).
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
        Ok(claims)
    }

    fn mac(&self, input: &str) -> Result<Hmac<Sha256>, TokenError> {
        // HMAC takes keys of any length today; should that ever change, the
        // key is refused rather than the process stopped.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).map_err(|_| TokenError::KeyUnusable)?;
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
}
