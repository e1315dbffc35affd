//! The certificate credential of a confidential client: a JWT client assertion (RFC 7523
//! section 2.2, RFC 7521 section 4.2) signed with the private key of the certificate uploaded
//! to the app registration, as Microsoft's identity platform takes it instead of a client
//! secret ("certificate credentials": header `x5t#S256`, PS256).
//!
//! Pure apart from `Signer::load`, which reads the two PEM files: the JWT is built from the
//! inputs and `now`, so the tests need no clock and no network.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::RsaKeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::base64::encode_url;
use crate::tls::{load_certs, load_key, TlsError};

/// `client_assertion_type` of a JWT assertion (RFC 7523 section 2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long an assertion is valid: Microsoft's examples use 10 minutes; it is used at once.
const LIFETIME: u64 = 600;

/// Why no assertion could be made; each names the `[oauth]` key whose file must be fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionError {
    /// A PEM file cannot be read, or holds no certificate or key (tls.rs's loaders).
    File(TlsError),
    /// The first certificate is not DER we can find the public key in.
    BadCertificate { path: PathBuf },
    /// A key that is not RSA (EC, Ed25519): the certificate credential is signed with RSA.
    NotRsa { path: PathBuf },
    /// An RSA key ring refuses (too short, malformed).
    BadKey { path: PathBuf, reason: String },
    /// The key is not the one of the certificate.
    Mismatch { key: PathBuf, cert: PathBuf },
    /// No random numbers for the PSS salt or `jti`.
    Random,
}

impl fmt::Display for AssertionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssertionError::File(e) => write!(f, "[oauth] {e}"),
            AssertionError::BadCertificate { path } => write!(
                f,
                "[oauth] client_certificate: {}: the first certificate is not a valid X.509 certificate",
                path.display()
            ),
            AssertionError::NotRsa { path } => write!(
                f,
                "[oauth] client_key: {}: not an RSA key: the certificate credential is signed with RSA (openssl req -x509 -newkey rsa:2048 ...)",
                path.display()
            ),
            AssertionError::BadKey { path, reason } => {
                write!(f, "[oauth] client_key: {}: {reason}", path.display())
            }
            AssertionError::Mismatch { key, cert } => write!(
                f,
                "[oauth] client_key: {}: not the private key of client_certificate {}",
                key.display(),
                cert.display()
            ),
            AssertionError::Random => f.write_str("no random numbers from the system"),
        }
    }
}

impl std::error::Error for AssertionError {}

/// Signer holds a checked certificate/key pair and makes client assertions with it.
pub struct Signer {
    key: RsaKeyPair,
    /// BASE64URL(SHA-256(certificate DER)): the `x5t#S256` header that tells the identity
    /// provider which uploaded certificate verifies the signature.
    thumbprint: String,
    rng: SystemRandom,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("x5t#S256", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Signer::load reads the first certificate of `cert` and the RSA private key (PKCS#8 or
    /// PKCS#1) of `key`, and refuses a key that is not the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<Signer, AssertionError> {
        let cert_der = first_certificate(cert)?;
        let pair = rsa_key(key)?;
        let spki_key = subject_public_key(cert_der.as_ref()).ok_or_else(|| {
            AssertionError::BadCertificate {
                path: cert.to_path_buf(),
            }
        })?;
        if spki_key != pair.public().as_ref() {
            return Err(AssertionError::Mismatch {
                key: key.to_path_buf(),
                cert: cert.to_path_buf(),
            });
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, cert_der.as_ref());
        Ok(Signer {
            key: pair,
            thumbprint: encode_url(digest.as_ref()),
            rng: SystemRandom::new(),
        })
    }

    /// assertion is a fresh client assertion for `client_id` at the token endpoint
    /// `token_url`, issued at `now` (Unix seconds) and valid for 10 minutes: RFC 7523 3
    /// requires iss, sub, aud and exp; Microsoft also wants jti and nbf.
    pub fn assertion(
        &self,
        client_id: &str,
        token_url: &str,
        now: u64,
    ) -> Result<String, AssertionError> {
        let header = format!(
            r#"{{"alg":"PS256","typ":"JWT","x5t#S256":{}}}"#,
            json_string(&self.thumbprint)
        );
        let id = json_string(client_id);
        let claims = format!(
            r#"{{"aud":{},"iss":{id},"sub":{id},"jti":{},"nbf":{now},"iat":{now},"exp":{}}}"#,
            json_string(token_url),
            json_string(&self.jti()?),
            now.saturating_add(LIFETIME)
        );
        let signing_input = format!(
            "{}.{}",
            encode_url(header.as_bytes()),
            encode_url(claims.as_bytes())
        );
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        // RFC 7518 3.5: PS256 is RSASSA-PSS with SHA-256, MGF1 with SHA-256, a 32-byte salt.
        self.key
            .sign(
                &ring::signature::RSA_PSS_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| AssertionError::Random)?;
        Ok(format!("{signing_input}.{}", encode_url(&signature)))
    }

    /// jti is a random version 4 UUID (RFC 9562 5.4): Microsoft documents the claim as a GUID,
    /// and it makes every assertion unique so none can be replayed.
    fn jti(&self) -> Result<String, AssertionError> {
        let mut b = [0u8; 16];
        self.rng.fill(&mut b).map_err(|_| AssertionError::Random)?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        Ok(format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        ))
    }
}

/// first_certificate is the first CERTIFICATE block of `path` (a chain may follow it: the
/// app registration holds the leaf).
fn first_certificate(path: &Path) -> Result<CertificateDer<'static>, AssertionError> {
    let mut certs = load_certs("client_certificate", path).map_err(AssertionError::File)?;
    Ok(certs.swap_remove(0))
}

/// rsa_key reads the first private key of `path`: PKCS#8 or PKCS#1 RSA; anything else
/// (SEC1 EC, a PKCS#8 EC or Ed25519 key) is refused by name.
fn rsa_key(path: &Path) -> Result<RsaKeyPair, AssertionError> {
    let der = load_key("client_key", path).map_err(AssertionError::File)?;
    let parsed = match &der {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => {
            return Err(AssertionError::NotRsa {
                path: path.to_path_buf(),
            })
        }
    };
    parsed.map_err(|e| {
        let reason = match e.to_string().as_str() {
            "WrongAlgorithm" => {
                return AssertionError::NotRsa {
                    path: path.to_path_buf(),
                }
            }
            "TooSmall" => "the RSA key is shorter than 2048 bits".to_string(),
            "TooLarge" => "the RSA key is longer than 8192 bits".to_string(),
            other => format!("not a usable RSA private key ({other})"),
        };
        AssertionError::BadKey {
            path: path.to_path_buf(),
            reason,
        }
    })
}

/// subject_public_key is the content of the subjectPublicKey BIT STRING of an X.509
/// certificate (RFC 5280 4.1), without its unused-bits octet: for an RSA key the PKCS#1
/// RSAPublicKey DER, the same bytes ring's `public()` gives for the key pair. A minimal DER
/// walk, not a validation: the identity provider validates the certificate it holds.
fn subject_public_key(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const EXPLICIT_0: u8 = 0xa0;
    const INTEGER: u8 = 0x02;
    const BIT_STRING: u8 = 0x03;
    let (certificate, _) = tlv(cert, SEQUENCE)?;
    let (mut tbs, _) = tlv(certificate, SEQUENCE)?;
    if tbs.first() == Some(&EXPLICIT_0) {
        tbs = tlv(tbs, EXPLICIT_0)?.1;
    }
    let rest = tlv(tbs, INTEGER)?.1; // serialNumber
    let rest = tlv(rest, SEQUENCE)?.1; // signature
    let rest = tlv(rest, SEQUENCE)?.1; // issuer
    let rest = tlv(rest, SEQUENCE)?.1; // validity
    let rest = tlv(rest, SEQUENCE)?.1; // subject
    let (spki, _) = tlv(rest, SEQUENCE)?;
    let rest = tlv(spki, SEQUENCE)?.1; // algorithm
    let (bits, _) = tlv(rest, BIT_STRING)?;
    match bits.split_first() {
        Some((0, key)) => Some(key),
        _ => None,
    }
}

/// tlv splits one DER element with the single-octet tag `tag` off `input`: (its content, the
/// rest). Definite lengths only (X.690 10.1), up to four length octets.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (octets, after) = rest.split_at(n);
        rest = after;
        octets
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// json_string is `s` as a JSON string: the client id and token URL come from the config.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::oauth::json::write_string(s, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::json::{self, Value};
    use std::process::Command;
    use std::sync::OnceLock;

    /// Beside tls::tests' certificates (ca.pem/ca.key is a self-signed RSA pair, rsa.pem a
    /// leaf with rsa.key and rsa-pkcs1.key, ec.* EC P-256), what only these tests need, made
    /// by openssl so nothing here checks itself: the RSAPublicKey DER of rsa.key, SHA-256 of
    /// rsa.pem's DER, a 1024-bit RSA key and an Ed25519 key.
    const EXTRA_SH: &str = r#"set -e
exec 2>>openssl.log
openssl rsa -in rsa.key -RSAPublicKey_out -outform DER -out rsa.pub.der
openssl x509 -in rsa.pem -outform DER -out rsa.der
openssl dgst -sha256 -binary -out rsa.sha256 rsa.der
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out small.key
openssl genpkey -algorithm ED25519 -out ed.key
"#;

    fn certs() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir = crate::tls::tests::gen_certs("assertion-test");
            let st = Command::new("sh")
                .arg("-c")
                .arg(EXTRA_SH)
                .current_dir(&dir)
                .status()
                .unwrap();
            assert!(st.success(), "openssl failed: see {}", dir.display());
            dir
        })
    }

    fn p(name: &str) -> PathBuf {
        certs().join(name)
    }

    fn b64url_decode(s: &str) -> Vec<u8> {
        let mut std: String = s
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        while std.len() % 4 != 0 {
            std.push('=');
        }
        crate::base64::decode(&std).expect("base64url")
    }

    #[test]
    fn assertion_is_a_ps256_jwt_signed_by_the_certificate_key() {
        let signer = Signer::load(&p("rsa.pem"), &p("rsa.key")).unwrap();
        // A client id with characters JSON must escape still round-trips.
        let id = "11112222-bbbb-\"3333\"\\cccc\u{1}";
        let url = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";
        let jwt = signer.assertion(id, url, 1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "{jwt}");

        let header = json::parse(&b64url_decode(parts[0])).unwrap();
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        assert_eq!(s(&header, "alg").as_deref(), Some("PS256"));
        assert_eq!(s(&header, "typ").as_deref(), Some("JWT"));
        let digest = std::fs::read(p("rsa.sha256")).unwrap();
        assert_eq!(s(&header, "x5t#S256"), Some(encode_url(&digest)));

        let claims = json::parse(&b64url_decode(parts[1])).unwrap();
        for k in ["iss", "sub"] {
            assert_eq!(s(&claims, k).as_deref(), Some(id), "{k}");
        }
        assert_eq!(s(&claims, "aud").as_deref(), Some(url));
        let n = |k: &str| claims.get(k).and_then(Value::as_u64_lenient);
        assert_eq!(n("nbf"), Some(1_700_000_000));
        assert_eq!(n("iat"), Some(1_700_000_000));
        assert_eq!(n("exp"), Some(1_700_000_600));
        let jti = s(&claims, "jti").unwrap();
        assert_eq!((jti.len(), &jti[14..15]), (36, "4"), "{jti}");

        let public = std::fs::read(p("rsa.pub.der")).unwrap();
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PSS_2048_8192_SHA256,
            &public,
        );
        let input = format!("{}.{}", parts[0], parts[1]);
        let sig = b64url_decode(parts[2]);
        assert!(key.verify(input.as_bytes(), &sig).is_ok());
        assert!(key.verify(b"something else", &sig).is_err());

        // Each assertion is new: another jti and another PSS salt.
        let again = signer.assertion(id, url, 1_700_000_000).unwrap();
        let claims2 = json::parse(&b64url_decode(again.split('.').nth(1).unwrap())).unwrap();
        assert_ne!(s(&claims2, "jti").unwrap(), jti);
        assert_ne!(again, jwt);
    }

    #[test]
    fn pkcs8_and_pkcs1_keys_load_and_a_chain_uses_its_first_certificate() {
        let digest = std::fs::read(p("rsa.sha256")).unwrap();
        for (cert, key) in [
            ("rsa.pem", "rsa.key"),
            ("rsa.pem", "rsa-pkcs1.key"),
            ("rsa-chain.pem", "rsa.key"),
        ] {
            let signer = Signer::load(&p(cert), &p(key)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(signer.thumbprint, encode_url(&digest), "{cert} {key}");
        }
        // The self-signed CA pair works too (no chain, no extensions beyond basics).
        Signer::load(&p("ca.pem"), &p("ca.key")).unwrap();
    }

    #[test]
    fn unusable_pairs_are_refused_naming_the_key_to_fix() {
        let dir = certs().display().to_string();
        let cases = [
            (
                "ca.pem",
                "rsa.key",
                format!("[oauth] client_key: {dir}/rsa.key: not the private key of client_certificate {dir}/ca.pem"),
            ),
            (
                "rsa.pem",
                "ec.key",
                format!("[oauth] client_key: {dir}/ec.key: not an RSA key: the certificate credential is signed with RSA (openssl req -x509 -newkey rsa:2048 ...)"),
            ),
            ("ec.pem", "ec-sec1.key", format!("[oauth] client_key: {dir}/ec-sec1.key: not an RSA key")),
            ("rsa.pem", "ed.key", format!("[oauth] client_key: {dir}/ed.key: not an RSA key")),
            (
                "rsa.pem",
                "small.key",
                format!("[oauth] client_key: {dir}/small.key: the RSA key is shorter than 2048 bits"),
            ),
            ("rsa.pem", "rsa.pem", format!("[oauth] client_key: {dir}/rsa.pem: no private key found")),
            ("rsa.key", "rsa.key", format!("[oauth] client_certificate: {dir}/rsa.key: no certificate found")),
            ("none.pem", "rsa.key", format!("[oauth] client_certificate: {dir}/none.pem: cannot read: ")),
            ("rsa.pem", "none.key", format!("[oauth] client_key: {dir}/none.key: cannot read: ")),
        ];
        for (cert, key, want) in cases {
            let got = Signer::load(&p(cert), &p(key)).unwrap_err().to_string();
            assert!(got.starts_with(&want), "{cert} {key}: {got}");
        }
    }

    #[test]
    fn the_public_key_is_found_only_in_well_formed_certificates() {
        let der = std::fs::read(p("rsa.der")).unwrap();
        let public = std::fs::read(p("rsa.pub.der")).unwrap();
        assert_eq!(subject_public_key(&der), Some(public.as_slice()));
        for bad in [
            &der[..der.len() / 2],
            &der[1..],
            &[],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert_eq!(subject_public_key(bad), None);
        }
    }
}
