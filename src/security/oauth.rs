//! OAUTHBEARER's token check: a compact JWS (JWT) verified against the keys of a JWKS
//! document (RFC 7517/7518/7519). Pure: the caller reads the JWKS and passes the time.
//!
//! Signatures RS256, RS384, RS512 and ES256 (P-256, the fixed `r||s` form JWS uses);
//! `none` and everything else are refused. Claims: `exp` is required and in the
//! future, `nbf` and `iat` not in the future (each with `clock_skew_s`), `iss` and
//! `aud` match when expected, and the subject claim names the principal. Error texts
//! go to clients, so they name the reason and never key material.

use aws_lc_rs::signature::{
    RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384, RSA_PKCS1_2048_8192_SHA512,
};
use serde_json::{Map, Value};

/// The longest token accepted.
pub const MAX_JWT_BYTES: usize = 64 * 1024;
/// The largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// The most keys a JWKS may hold.
pub const MAX_JWKS_KEYS: usize = 100;
/// The longest principal name a token may carry.
pub const MAX_PRINCIPAL_BYTES: usize = 1024;

/// How tokens are checked beyond their signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// `iss` must equal this when set.
    pub expected_issuer: Option<String>,
    /// `aud` (a string or an array of them) must contain this when set.
    pub expected_audience: Option<String>,
    /// The claim that names the principal.
    pub sub_claim_name: String,
    /// Leeway for `exp`, `nbf` and `iat`, in seconds.
    pub clock_skew_s: i64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            expected_issuer: None,
            expected_audience: None,
            sub_claim_name: "sub".to_owned(),
            clock_skew_s: 30,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OauthError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported token algorithm (RS256, RS384, RS512 and ES256 are accepted)")]
    Algorithm,
    #[error("no key matches the token's kid")]
    UnknownKid,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer does not match the expected issuer")]
    WrongIssuer,
    #[error("token audience does not include the expected audience")]
    WrongAudience,
    #[error("token has no usable principal claim")]
    NoPrincipal,
}

/// Why a JWKS document cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JwksError(pub String);

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub principal_name: String,
    /// `exp`, in seconds since the epoch.
    pub expires_at_s: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Es256,
}

impl Alg {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Alg::Rs256),
            "RS384" => Some(Alg::Rs384),
            "RS512" => Some(Alg::Rs512),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point `04 || x || y`.
    P256(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    material: KeyMaterial,
}

/// Checks tokens against one JWKS document's keys.
#[derive(Debug, Clone)]
pub struct JwtValidator {
    keys: Vec<Jwk>,
    settings: JwtSettings,
}

/// base64url without padding (RFC 7515 §2); `None` on any other character or length.
pub fn base64url_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

fn jwks_error(message: impl Into<String>) -> JwksError {
    JwksError(message.into())
}

fn b64_member(key: &Map<String, Value>, name: &str, index: usize) -> Result<Vec<u8>, JwksError> {
    key.get(name)
        .and_then(Value::as_str)
        .and_then(|s| base64url_decode(s.as_bytes()))
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            jwks_error(format!(
                "key {index}: \"{name}\" is missing or not base64url"
            ))
        })
}

impl JwtValidator {
    /// Reads a JWKS document (`{"keys": [...]}`). Keys of other types or curves, and
    /// keys whose `use` is not `sig`, are skipped; a document with no usable key, or
    /// with a usable key type that lacks its members, is refused.
    pub fn from_jwks(json: &[u8], settings: JwtSettings) -> Result<Self, JwksError> {
        if json.len() > MAX_JWKS_BYTES {
            return Err(jwks_error("the JWKS is larger than 1 MiB"));
        }
        let doc: Value = serde_json::from_slice(json)
            .map_err(|e| jwks_error(format!("the JWKS is not JSON: {e}")))?;
        let listed = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| jwks_error("the JWKS has no \"keys\" array"))?;
        if listed.len() > MAX_JWKS_KEYS {
            return Err(jwks_error("the JWKS holds more than 100 keys"));
        }
        let mut keys = Vec::new();
        for (index, key) in listed.iter().enumerate() {
            let key = key
                .as_object()
                .ok_or_else(|| jwks_error(format!("key {index} is not an object")))?;
            let text = |name: &str| key.get(name).and_then(Value::as_str).map(str::to_owned);
            if text("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let material = match text("kty").as_deref() {
                Some("RSA") => KeyMaterial::Rsa {
                    n: b64_member(key, "n", index)?,
                    e: b64_member(key, "e", index)?,
                },
                Some("EC") if text("crv").as_deref() == Some("P-256") => {
                    let x = b64_member(key, "x", index)?;
                    let y = b64_member(key, "y", index)?;
                    if x.len() != 32 || y.len() != 32 {
                        return Err(jwks_error(format!(
                            "key {index}: P-256 \"x\" and \"y\" must be 32 bytes each"
                        )));
                    }
                    let mut point = Vec::with_capacity(65);
                    point.push(4);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    KeyMaterial::P256(point)
                }
                _ => continue,
            };
            keys.push(Jwk {
                kid: text("kid"),
                alg: text("alg"),
                material,
            });
        }
        if keys.is_empty() {
            return Err(jwks_error(
                "the JWKS has no usable signing key (RSA, or EC on P-256)",
            ));
        }
        Ok(Self { keys, settings })
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Checks `token` at `now_s` (seconds since the epoch).
    pub fn validate(&self, token: &str, now_s: i64) -> Result<Validated, OauthError> {
        if token.len() > MAX_JWT_BYTES {
            return Err(OauthError::Malformed("token too large"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OauthError::Malformed("not a compact JWS of three parts"));
        };
        let header = json_object(header_b64, "header")?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(OauthError::Malformed("header has no alg"))?;
        let alg = Alg::parse(alg).ok_or(OauthError::Algorithm)?;
        if header.contains_key("crit") {
            return Err(OauthError::Malformed(
                "critical header parameters are not supported",
            ));
        }
        let key = self.key_for(header.get("kid"), alg)?;
        let signature = base64url_decode(signature_b64.as_bytes())
            .ok_or(OauthError::Malformed("signature is not base64url"))?;
        let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        verify(alg, &key.material, signed, &signature)?;
        let claims = json_object(payload_b64, "payload")?;
        self.check_claims(&claims, now_s)
    }

    fn key_for(&self, kid: Option<&Value>, alg: Alg) -> Result<&Jwk, OauthError> {
        let key = match kid {
            Some(kid) => {
                let kid = kid
                    .as_str()
                    .ok_or(OauthError::Malformed("kid is not a string"))?;
                self.keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or(OauthError::UnknownKid)?
            }
            None => match &self.keys[..] {
                [only] => only,
                _ => return Err(OauthError::UnknownKid),
            },
        };
        let fits = matches!(
            (&key.material, alg),
            (
                KeyMaterial::Rsa { .. },
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512
            ) | (KeyMaterial::P256(_), Alg::Es256)
        );
        let alg_pinned = key
            .alg
            .as_deref()
            .is_none_or(|a| Alg::parse(a) == Some(alg));
        if fits && alg_pinned {
            Ok(key)
        } else {
            Err(OauthError::BadSignature)
        }
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now_s: i64,
    ) -> Result<Validated, OauthError> {
        let skew = self.settings.clock_skew_s;
        let exp = time_claim(claims, "exp")?.ok_or(OauthError::Malformed("no exp claim"))?;
        if now_s >= exp.saturating_add(skew) {
            return Err(OauthError::Expired);
        }
        for name in ["nbf", "iat"] {
            if time_claim(claims, name)?.is_some_and(|t| t > now_s.saturating_add(skew)) {
                return Err(OauthError::NotYetValid);
            }
        }
        if let Some(issuer) = &self.settings.expected_issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(OauthError::WrongIssuer);
            }
        }
        if let Some(audience) = &self.settings.expected_audience {
            let found = match claims.get("aud") {
                Some(Value::String(a)) => a == audience,
                Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !found {
                return Err(OauthError::WrongAudience);
            }
        }
        let principal = claims
            .get(&self.settings.sub_claim_name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= MAX_PRINCIPAL_BYTES)
            .ok_or(OauthError::NoPrincipal)?;
        Ok(Validated {
            principal_name: principal.to_owned(),
            expires_at_s: exp,
        })
    }
}

fn json_object(part: &str, what: &'static str) -> Result<Map<String, Value>, OauthError> {
    let bad = || {
        OauthError::Malformed(match what {
            "header" => "header is not a base64url JSON object",
            _ => "payload is not a base64url JSON object",
        })
    };
    let bytes = base64url_decode(part.as_bytes()).ok_or_else(bad)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad()),
    }
}

/// A NumericDate claim (seconds, possibly fractional) as whole seconds.
fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, OauthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match (v.as_i64(), v.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.is_finite() => Ok(Some(f.floor() as i64)),
            _ => Err(OauthError::Malformed(match name {
                "exp" => "exp is not a number",
                "nbf" => "nbf is not a number",
                _ => "iat is not a number",
            })),
        },
    }
}

fn verify(alg: Alg, key: &KeyMaterial, signed: &[u8], signature: &[u8]) -> Result<(), OauthError> {
    let params: &RsaParameters = match alg {
        Alg::Rs256 => &RSA_PKCS1_2048_8192_SHA256,
        Alg::Rs384 => &RSA_PKCS1_2048_8192_SHA384,
        Alg::Rs512 => &RSA_PKCS1_2048_8192_SHA512,
        Alg::Es256 => {
            let KeyMaterial::P256(point) = key else {
                return Err(OauthError::BadSignature);
            };
            return UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(signed, signature)
                .map_err(|_| OauthError::BadSignature);
        }
    };
    let KeyMaterial::Rsa { n, e } = key else {
        return Err(OauthError::BadSignature);
    };
    RsaPublicKeyComponents {
        n: n.as_slice(),
        e: e.as_slice(),
    }
    .verify(params, signed, signature)
    .map_err(|_| OauthError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
    };
    use serde_json::json;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const NOW: i64 = 1_800_000_000;

    pub(crate) fn b64url(data: &[u8]) -> String {
        const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let mut acc = 0u32;
            for (i, b) in chunk.iter().enumerate() {
                acc |= u32::from(*b) << (16 - 8 * i);
            }
            for i in 0..=chunk.len() {
                out.push(ABC[((acc >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    struct EcKey {
        pair: EcdsaKeyPair,
        kid: String,
    }

    impl EcKey {
        fn new(kid: &str) -> Result<Self, Box<dyn std::error::Error>> {
            Ok(Self {
                pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?,
                kid: kid.to_owned(),
            })
        }

        fn jwk(&self) -> Value {
            let point = self.pair.public_key().as_ref();
            json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                   "x": b64url(&point[1..33]), "y": b64url(&point[33..65])})
        }

        fn sign(
            &self,
            header: &Value,
            claims: &Value,
        ) -> Result<String, Box<dyn std::error::Error>> {
            let input = format!(
                "{}.{}",
                b64url(header.to_string().as_bytes()),
                b64url(claims.to_string().as_bytes())
            );
            let sig = self.pair.sign(&SystemRandom::new(), input.as_bytes())?;
            Ok(format!("{input}.{}", b64url(sig.as_ref())))
        }

        fn token(&self, claims: &Value) -> Result<String, Box<dyn std::error::Error>> {
            self.sign(
                &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
                claims,
            )
        }
    }

    /// `SEQUENCE { INTEGER n, INTEGER e }` (PKCS#1 RSAPublicKey) as (n, e).
    fn rsa_components(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        fn tlv(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
            let tag = *d.first()?;
            let first = *d.get(1)? as usize;
            let (len, start) = if first < 0x80 {
                (first, 2)
            } else {
                let n = first & 0x7f;
                let len = d
                    .get(2..2 + n)?
                    .iter()
                    .fold(0usize, |a, b| a << 8 | *b as usize);
                (len, 2 + n)
            };
            Some((tag, d.get(start..start + len)?, d.get(start + len..)?))
        }
        let (_, seq, _) = tlv(der)?;
        let (_, n, rest) = tlv(seq)?;
        let (_, e, _) = tlv(rest)?;
        let strip = |b: &[u8]| b.iter().skip_while(|x| **x == 0).copied().collect();
        Some((strip(n), strip(e)))
    }

    fn claims(exp: i64) -> Value {
        json!({"sub": "alice", "iss": "https://idp", "aud": ["kafka", "other"],
               "iat": NOW - 10, "exp": exp})
    }

    fn validator(keys: Vec<Value>, settings: JwtSettings) -> Result<JwtValidator, JwksError> {
        JwtValidator::from_jwks(json!({ "keys": keys }).to_string().as_bytes(), settings)
    }

    #[test]
    fn es256_token_is_accepted_and_checked() -> TestResult {
        let key = EcKey::new("k1")?;
        let other = EcKey::new("k2")?;
        let settings = JwtSettings {
            expected_issuer: Some("https://idp".into()),
            expected_audience: Some("kafka".into()),
            ..JwtSettings::default()
        };
        let v = validator(vec![key.jwk(), other.jwk()], settings.clone())?;
        assert_eq!(v.key_count(), 2);
        let good = key.token(&claims(NOW + 300))?;
        assert_eq!(
            v.validate(&good, NOW)?,
            Validated {
                principal_name: "alice".into(),
                expires_at_s: NOW + 300
            }
        );
        // Expired, beyond and within the skew.
        let old = key.token(&claims(NOW - 31))?;
        assert_eq!(v.validate(&old, NOW), Err(OauthError::Expired));
        let recent = key.token(&claims(NOW - 29))?;
        assert!(v.validate(&recent, NOW).is_ok());
        // Not yet valid.
        let mut future = claims(NOW + 3000);
        future["nbf"] = json!(NOW + 100);
        assert_eq!(
            v.validate(&key.token(&future)?, NOW),
            Err(OauthError::NotYetValid)
        );
        let mut future = claims(NOW + 3000);
        future["iat"] = json!(NOW + 100);
        assert_eq!(
            v.validate(&key.token(&future)?, NOW),
            Err(OauthError::NotYetValid)
        );
        // Issuer and audience.
        let mut c = claims(NOW + 300);
        c["iss"] = json!("https://evil");
        assert_eq!(
            v.validate(&key.token(&c)?, NOW),
            Err(OauthError::WrongIssuer)
        );
        let mut c = claims(NOW + 300);
        c["aud"] = json!("other");
        assert_eq!(
            v.validate(&key.token(&c)?, NOW),
            Err(OauthError::WrongAudience)
        );
        c["aud"] = json!("kafka");
        assert!(v.validate(&key.token(&c)?, NOW).is_ok());
        // No or empty subject; another claim name.
        let mut c = claims(NOW + 300);
        c["sub"] = json!("");
        assert_eq!(
            v.validate(&key.token(&c)?, NOW),
            Err(OauthError::NoPrincipal)
        );
        c["client_id"] = json!("svc");
        let by_client = validator(
            vec![key.jwk()],
            JwtSettings {
                sub_claim_name: "client_id".into(),
                ..JwtSettings::default()
            },
        )?;
        assert_eq!(
            by_client.validate(&key.token(&c)?, NOW)?.principal_name,
            "svc"
        );
        // No exp.
        let no_exp = json!({"sub": "alice"});
        assert_eq!(
            by_client.validate(&key.token(&no_exp)?, NOW),
            Err(OauthError::Malformed("no exp claim"))
        );
        // Without a kid, the only key is used; with two keys, it is ambiguous.
        let bare = key.sign(&json!({"alg": "ES256"}), &claims(NOW + 300))?;
        assert!(by_client
            .validate(&bare, NOW)
            .is_err_and(|e| e == OauthError::NoPrincipal));
        assert_eq!(v.validate(&bare, NOW), Err(OauthError::UnknownKid));
        Ok(())
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() -> TestResult {
        let key = EcKey::new("k1")?;
        let stranger = EcKey::new("k1")?;
        let v = validator(vec![key.jwk()], JwtSettings::default())?;
        // Signed by another key with the same kid.
        let forged = stranger.token(&claims(NOW + 300))?;
        assert_eq!(v.validate(&forged, NOW), Err(OauthError::BadSignature));
        // Payload swapped after signing.
        let good = key.token(&claims(NOW + 300))?;
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = claims(NOW + 300);
        c["sub"] = json!("admin");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64url(c.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(v.validate(&tampered, NOW), Err(OauthError::BadSignature));
        // Unknown kid.
        let other = EcKey::new("k9")?;
        assert_eq!(
            v.validate(&other.token(&claims(NOW + 300))?, NOW),
            Err(OauthError::UnknownKid)
        );
        // alg none, with or without a signature, and an HMAC alg.
        let none_header = b64url(br#"{"alg":"none","kid":"k1"}"#);
        let body = b64url(claims(NOW + 300).to_string().as_bytes());
        assert_eq!(
            v.validate(&format!("{none_header}.{body}."), NOW),
            Err(OauthError::Algorithm)
        );
        let hs = key.sign(&json!({"alg": "HS256", "kid": "k1"}), &claims(NOW + 300))?;
        assert_eq!(v.validate(&hs, NOW), Err(OauthError::Algorithm));
        // An RSA alg against an EC key.
        let rs = key.sign(&json!({"alg": "RS256", "kid": "k1"}), &claims(NOW + 300))?;
        assert_eq!(v.validate(&rs, NOW), Err(OauthError::BadSignature));
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!.e30.",
            &format!("{}.{body}.%%", b64url(br#"{"alg":"ES256"}"#)),
            &format!("{}.{body}.", b64url(b"[1]")),
        ] {
            assert!(
                matches!(v.validate(bad, NOW), Err(OauthError::Malformed(_))),
                "{bad}"
            );
        }
        let huge = "a".repeat(MAX_JWT_BYTES + 1);
        assert!(matches!(
            v.validate(&huge, NOW),
            Err(OauthError::Malformed(_))
        ));
        // No key material in any message.
        let jwk = key.jwk();
        let x = jwk["x"].as_str().unwrap_or("x");
        assert!(!OauthError::BadSignature.to_string().contains(x));
        Ok(())
    }

    #[test]
    fn rs256_token_is_accepted() -> TestResult {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048)?;
        let (n, e) = rsa_components(pair.public_key().as_ref()).ok_or("RSA public key DER")?;
        let jwk =
            json!({"kty": "RSA", "kid": "r1", "alg": "RS256", "n": b64url(&n), "e": b64url(&e)});
        let v = validator(vec![jwk, EcKey::new("e1")?.jwk()], JwtSettings::default())?;
        let input = format!(
            "{}.{}",
            b64url(br#"{"alg":"RS256","kid":"r1"}"#),
            b64url(claims(NOW + 60).to_string().as_bytes())
        );
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )?;
        let token = format!("{input}.{}", b64url(&sig));
        assert_eq!(v.validate(&token, NOW)?.principal_name, "alice");
        assert_eq!(v.validate(&token, NOW + 91), Err(OauthError::Expired));
        // The key is pinned to RS256: an RS512 header fails even before verifying.
        let rs512 = format!(
            "{}.{}.{}",
            b64url(br#"{"alg":"RS512","kid":"r1"}"#),
            input.split('.').nth(1).unwrap_or(""),
            b64url(&sig)
        );
        assert_eq!(v.validate(&rs512, NOW), Err(OauthError::BadSignature));
        Ok(())
    }

    #[test]
    fn jwks_documents_are_checked() {
        let settings = JwtSettings::default;
        for bad in [
            &b"not json"[..],
            br#"{"nokeys": []}"#,
            br#"{"keys": []}"#,
            br#"{"keys": [{"kty": "oct", "k": "AAAA"}]}"#,
            br#"{"keys": [{"kty": "RSA", "n": "AQAB"}]}"#,
            br#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AQAB", "y": "AQAB"}]}"#,
            br#"{"keys": [1]}"#,
        ] {
            assert!(
                JwtValidator::from_jwks(bad, settings()).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many = json!({"keys": vec![json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}); 101]});
        assert!(JwtValidator::from_jwks(many.to_string().as_bytes(), settings()).is_err());
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(JwtValidator::from_jwks(&big, settings()).is_err());
        // Keys for encryption are skipped.
        let enc = br#"{"keys": [{"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}]}"#;
        assert!(JwtValidator::from_jwks(enc, settings()).is_err());
    }

    #[test]
    fn base64url_round_trips() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64url_decode(b64url(&data).as_bytes()), Some(data));
        }
        assert_eq!(base64url_decode(b"A"), None);
        assert_eq!(base64url_decode(b"AA=="), None);
        assert_eq!(base64url_decode(b"A+/A"), None);
    }
}
