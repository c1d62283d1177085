//! SASL/OAUTHBEARER: the bearer token comes from a file that another process keeps fresh.
//!
//! librdkafka asks the client's context for a token when it first connects and again at 80%
//! of the token's lifetime ([`ClientContext::generate_oauth_token`]); every context of Sluice
//! answers with [`token_for`], which reads `kafka.security.sasl.oauthbearer.tokenFile` again
//! each time. The file's path and the principal travel to the callback inside librdkafka's own
//! `sasl.oauthbearer.config` property (set by `base_client_config`), so a context needs no
//! state of its own and every client of a configuration reads the same file.
//!
//! librdkafka delivers the refresh request through a client's main queue, which only the
//! polled clients (the consumers and producers of the pipeline) serve; [`prime`] hands a
//! freshly created client its first token directly, so that a client that is never polled
//! (the admin client that creates topics, a probe that only fetches metadata) can
//! authenticate too, and no client waits for its first poll to connect.
//!
//! The OIDC client-credentials fetch that librdkafka can do itself needs libcurl, which this
//! build leaves out; a token file covers the same deployments (an identity provider's sidecar,
//! a Kubernetes projected service-account token) without it.

use std::error::Error;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rdkafka::client::{Client, OAuthToken};
use rdkafka::{ClientConfig, ClientContext};

use crate::config::{KafkaOAuthBearer, SaslMechanism, SecurityProtocol};

/// The librdkafka property that carries the token source to the callback.
pub const CONFIG_KEY: &str = "sasl.oauthbearer.config";

/// How long an opaque token (one that is not a JWT with an `exp` claim) is taken to be valid
/// from the moment it is read: librdkafka reads the file again at 80% of this.
pub const OPAQUE_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The largest token file read (a JWT is a few kilobytes).
const MAX_TOKEN_BYTES: u64 = 1024 * 1024;

/// What a token callback needs, as carried in `sasl.oauthbearer.config`: one `key=value` per
/// line (a path may hold spaces, not newlines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    /// The file holding the token.
    pub file: PathBuf,
    /// The principal; `None`: the JWT's `sub` claim.
    pub principal: Option<String>,
}

impl TokenSource {
    /// The source `kafka.security.sasl.oauthbearer` describes, when the mechanism is
    /// OAUTHBEARER.
    pub fn of(
        protocol: SecurityProtocol,
        mechanism: SaslMechanism,
        o: &KafkaOAuthBearer,
    ) -> Option<Self> {
        if !protocol.uses_sasl() || mechanism != SaslMechanism::OAuthBearer {
            return None;
        }
        Some(TokenSource { file: o.token_file.clone()?, principal: o.principal.clone() })
    }

    /// The `sasl.oauthbearer.config` value carrying this source.
    pub fn encode(&self) -> Result<String, String> {
        let file = self.file.to_string_lossy();
        let bad = |what: &str| {
            format!("kafka.security.sasl.oauthbearer.{what} must not hold a line break")
        };
        if file.contains(['\n', '\r']) {
            return Err(bad("tokenFile"));
        }
        let mut s = format!("file={file}");
        if let Some(p) = &self.principal {
            if p.contains(['\n', '\r']) {
                return Err(bad("principal"));
            }
            s.push_str("\nprincipal=");
            s.push_str(p);
        }
        Ok(s)
    }

    /// The source encoded by [`encode`](Self::encode).
    pub fn decode(s: &str) -> Option<Self> {
        let mut file = None;
        let mut principal = None;
        for line in s.lines() {
            match line.split_once('=') {
                Some(("file", v)) => file = Some(PathBuf::from(v)),
                Some(("principal", v)) => principal = Some(v.to_owned()),
                _ => return None,
            }
        }
        Some(TokenSource { file: file?, principal })
    }

    /// Reads the file and builds the token librdkafka hands to the broker: the principal from
    /// the configuration or the JWT's `sub`, the expiry from the JWT's `exp` (an opaque token:
    /// [`OPAQUE_TOKEN_LIFETIME`] from now). A token that has already expired is refused, so
    /// that librdkafka retries (every 10 s) until the file is renewed. Errors name the file,
    /// never the token.
    pub fn read(&self, now: SystemTime) -> Result<OAuthToken, String> {
        let path = self.file.display();
        let text = read_bounded(&self.file).map_err(|e| format!("token file {path}: {e}"))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("token file {path} is empty"));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("token file {path} holds more than one token (whitespace inside)"));
        }
        let claims = jwt_claims(token);
        let principal = match (&self.principal, claims.as_ref().and_then(|c| c.sub.clone())) {
            (Some(p), _) => p.clone(),
            (None, Some(sub)) => sub,
            (None, None) => {
                return Err(format!(
                    "token file {path}: the token is not a JWT with a sub claim, so \
                     kafka.security.sasl.oauthbearer.principal must name the principal"
                ))
            }
        };
        let now_ms = now.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0) as i64;
        let lifetime_ms = match claims.and_then(|c| c.exp) {
            Some(exp_s) => {
                let exp_ms = exp_s.saturating_mul(1000);
                if exp_ms <= now_ms {
                    return Err(format!(
                        "token file {path}: the token expired {} s ago; waiting for it to be renewed",
                        (now_ms - exp_ms) / 1000
                    ));
                }
                exp_ms
            }
            None => now_ms + OPAQUE_TOKEN_LIFETIME.as_millis() as i64,
        };
        Ok(OAuthToken { token: token.to_owned(), principal_name: principal, lifetime_ms })
    }
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_TOKEN_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_TOKEN_BYTES {
        return Err(std::io::Error::other(format!("larger than {MAX_TOKEN_BYTES} bytes")));
    }
    Ok(text)
}

/// The claims of a JWT that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
struct Claims {
    sub: Option<String>,
    exp: Option<i64>,
}

/// `sub` and `exp` of a JWT (`header.payload.signature`, base64url); `None` when the token is
/// not one. The signature is the broker's business, not checked here.
fn jwt_claims(token: &str) -> Option<Claims> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let obj = v.as_object()?;
    Some(Claims {
        sub: obj.get("sub").and_then(|s| s.as_str()).map(str::to_owned),
        exp: obj.get("exp").and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f as i64))),
    })
}

/// The answer of every Sluice client context to librdkafka's token refresh request:
/// `config` is the client's `sasl.oauthbearer.config`.
pub fn token_for(config: Option<&str>) -> Result<OAuthToken, Box<dyn Error>> {
    let source = config.and_then(TokenSource::decode).ok_or(
        "OAUTHBEARER token requested, but kafka.security.sasl.oauthbearer.tokenFile is not set",
    )?;
    match source.read(SystemTime::now()) {
        Ok(t) => Ok(t),
        Err(e) => {
            tracing::warn!(error = %e, "kafka: no OAUTHBEARER token");
            Err(e.into())
        }
    }
}

/// The `ClientContext` items every Sluice context has: refresh OAUTHBEARER tokens with
/// [`token_for`] (librdkafka only asks when the mechanism is OAUTHBEARER).
macro_rules! refresh_oauth_token {
    () => {
        const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

        fn generate_oauth_token(
            &self,
            config: Option<&str>,
        ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
            $crate::kafka::oauth::token_for(config)
        }
    };
}
pub(crate) use refresh_oauth_token;

/// A context for clients that need nothing but the token refresh (probes, admin clients,
/// consumers that only read).
#[derive(Debug, Default, Clone, Copy)]
pub struct Plain;

impl ClientContext for Plain {
    refresh_oauth_token!();
}

impl rdkafka::consumer::ConsumerContext for Plain {}

impl rdkafka::producer::ProducerContext for Plain {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Gives a client newly created from `config` its first token when the configuration names a
/// token source (`sasl.oauthbearer.config`); does nothing otherwise.
pub fn prime<C: ClientContext>(client: &Client<C>, config: &ClientConfig) -> Result<(), String> {
    let Some(source) = config.get(CONFIG_KEY).and_then(TokenSource::decode) else { return Ok(()) };
    let t = source.read(SystemTime::now())?;
    let token =
        CString::new(t.token).map_err(|_| "the OAUTHBEARER token holds a NUL byte".to_owned())?;
    let principal = CString::new(t.principal_name)
        .map_err(|_| "the OAUTHBEARER principal holds a NUL byte".to_owned())?;
    let mut err = [0 as std::ffi::c_char; 512];
    // SAFETY: the client pointer is live for the borrow of `client`; the token and principal
    // are NUL-terminated strings that outlive the call (librdkafka copies them); no extensions
    // (null pointer, size 0); `err` is writable for its length, and librdkafka NUL-terminates
    // what it writes there.
    let rc = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client.native_ptr(),
            token.as_ptr(),
            t.lifetime_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        let bytes: Vec<u8> = err.iter().map(|&c| c as u8).collect();
        let msg = std::ffi::CStr::from_bytes_until_nul(&bytes)
            .map(|m| m.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(format!("OAUTHBEARER token refused by librdkafka: {msg}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", e(r#"{"alg":"RS256","typ":"JWT"}"#), e(claims), e("sig"))
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn source_round_trips_through_the_config_string() {
        for s in [
            TokenSource { file: "/run/secrets/a token".into(), principal: None },
            TokenSource { file: "t".into(), principal: Some("User:svc=1".into()) },
        ] {
            assert_eq!(TokenSource::decode(&s.encode().unwrap()), Some(s));
        }
        assert_eq!(TokenSource::decode("principal=x"), None, "no file");
        assert_eq!(TokenSource::decode("file=x\nother=y"), None, "not ours");
        let bad = TokenSource { file: "a\nb".into(), principal: None };
        assert!(bad.encode().err().unwrap().to_string().contains("tokenFile"));
    }

    #[test]
    fn a_jwt_gives_principal_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        let tok = jwt(r#"{"sub":"svc-sluice","exp":2000000000,"iat":1}"#);
        std::fs::write(&f, format!("{tok}\n")).unwrap();
        let src = TokenSource { file: f.clone(), principal: None };
        let t = src.read(at(1_900_000_000)).unwrap();
        assert_eq!(t.token, tok, "trailing newline dropped");
        assert_eq!(t.principal_name, "svc-sluice");
        assert_eq!(t.lifetime_ms, 2_000_000_000_000);

        // The configured principal wins over sub.
        let named = TokenSource { file: f.clone(), principal: Some("User:other".into()) };
        assert_eq!(named.read(at(1_900_000_000)).unwrap().principal_name, "User:other");

        // Expired: refused, with how long ago, without the token.
        let e = src.read(at(2_000_000_030)).err().unwrap();
        assert!(e.contains("expired 30 s ago") && !e.contains(&tok), "{e}");

        // The file is read again each time: a renewed token is picked up.
        let renewed = jwt(r#"{"sub":"svc-sluice","exp":2100000000}"#);
        std::fs::write(&f, &renewed).unwrap();
        let t = src.read(at(2_000_000_030)).unwrap();
        assert_eq!((t.token, t.lifetime_ms), (renewed, 2_100_000_000_000));
    }

    #[test]
    fn an_opaque_token_needs_a_principal_and_lives_fifteen_minutes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "opaque-token-value").unwrap();
        let e = TokenSource { file: f.clone(), principal: None }.read(at(1000)).err().unwrap();
        assert!(e.contains("principal") && !e.contains("opaque-token-value"), "{e}");
        let t = TokenSource { file: f, principal: Some("svc".into()) }.read(at(1000)).unwrap();
        assert_eq!(t.lifetime_ms, 1_000_000 + 15 * 60 * 1000);
    }

    #[test]
    fn unusable_files_are_named_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TokenSource { file: dir.path().join("nope"), principal: Some("p".into()) };
        assert!(missing.read(at(1)).err().unwrap().contains("nope"));
        let f = dir.path().join("two");
        std::fs::write(&f, "secret-one secret-two").unwrap();
        let e =
            TokenSource { file: f.clone(), principal: Some("p".into()) }.read(at(1)).err().unwrap();
        assert!(e.contains("more than one token") && !e.contains("secret-one"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        assert!(TokenSource { file: f, principal: None }
            .read(at(1))
            .err()
            .unwrap()
            .contains("empty"));
    }

    #[test]
    fn malformed_jwts_are_opaque() {
        assert_eq!(jwt_claims("a.b"), None);
        assert_eq!(jwt_claims("a.!!!.c"), None);
        assert_eq!(jwt_claims(&jwt("[1,2]")), None);
        assert_eq!(
            jwt_claims(&jwt(r#"{"exp":1.7e9}"#)),
            Some(Claims { sub: None, exp: Some(1_700_000_000) })
        );
    }

    #[test]
    fn token_for_without_a_source_is_an_error() {
        assert!(token_for(None).is_err());
        assert!(token_for(Some("garbage")).is_err());
    }
}
