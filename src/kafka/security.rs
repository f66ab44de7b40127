//! Transport security of the collector's Kafka connections, configured with the usual Kafka client
//! properties: `security.protocol` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), `ssl.ca.location`,
//! `ssl.certificate.location`, `ssl.key.location`, `ssl.endpoint.identification.algorithm` (https, none),
//! `sasl.mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), `sasl.username`, `sasl.password`.
//!
//! TLS is rustls (ring provider); SASL is the Kafka SaslHandshake v1 + SaslAuthenticate exchange, with
//! SCRAM per RFC 5802 / 7677 (the server's signature is verified, so a man in the middle that does not know
//! the password is detected).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256, Sha512};

/// Properties this module reads; everything else under `kafka` is rejected by validation.
pub const SECURITY_PROPERTIES: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
];

/// SCRAM iteration counts accepted from a server: Kafka's minimum, and a ceiling that keeps a hostile
/// server from making the client spin.
const SCRAM_MIN_ITERATIONS: u32 = 4096;
const SCRAM_MAX_ITERATIONS: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

#[derive(Clone)]
pub struct Sasl {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How to secure connections to one cluster.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub tls: Option<Arc<ClientConfig>>,
    pub sasl: Option<Sasl>,
}

impl Security {
    /// Builds the settings from Kafka client properties; every problem is returned as `(property, reason)`.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<Security, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let get = |k: &str| props.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
        let protocol = get("security.protocol").unwrap_or("PLAINTEXT").to_ascii_uppercase();
        let (tls, sasl) = match protocol.as_str() {
            "PLAINTEXT" => (false, false),
            "SSL" => (true, false),
            "SASL_PLAINTEXT" => (false, true),
            "SASL_SSL" => (true, true),
            other => {
                problems.push((
                    "security.protocol".into(),
                    format!("{other:?} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
                ));
                (false, false)
            }
        };
        let sasl_keys = ["sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password"];
        let ssl_keys = [
            "ssl.ca.location",
            "ssl.certificate.location",
            "ssl.key.location",
            "ssl.endpoint.identification.algorithm",
        ];
        if !sasl {
            for k in sasl_keys.iter().filter(|k| props.contains_key(**k)) {
                problems.push((k.to_string(), format!("has no effect with security.protocol {protocol}")));
            }
        }
        if !tls {
            for k in ssl_keys.iter().filter(|k| props.contains_key(**k)) {
                problems.push((k.to_string(), format!("has no effect with security.protocol {protocol}")));
            }
        }
        let sasl = if sasl {
            let mechanism = match get("sasl.mechanism")
                .or(get("sasl.mechanisms"))
                .unwrap_or("GSSAPI")
                .to_ascii_uppercase()
                .as_str()
            {
                "PLAIN" => Some(Mechanism::Plain),
                "SCRAM-SHA-256" => Some(Mechanism::ScramSha256),
                "SCRAM-SHA-512" => Some(Mechanism::ScramSha512),
                other => {
                    problems.push((
                        "sasl.mechanism".into(),
                        format!("{other:?}: supported are PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
                    ));
                    None
                }
            };
            let username = get("sasl.username").map(String::from);
            let password = props.get("sasl.password").cloned().filter(|p| !p.is_empty());
            if username.is_none() {
                problems.push(("sasl.username".into(), "required with SASL".into()));
            }
            if password.is_none() {
                problems.push(("sasl.password".into(), "required with SASL".into()));
            }
            match (mechanism, username, password) {
                (Some(mechanism), Some(username), Some(password)) => Some(Sasl {
                    mechanism,
                    username,
                    password,
                }),
                _ => None,
            }
        } else {
            None
        };
        let tls = if tls { tls_config(props, &mut problems) } else { None };
        if problems.is_empty() {
            Ok(Security { tls, sasl })
        } else {
            Err(problems)
        }
    }
}

fn tls_config(props: &BTreeMap<String, String>, problems: &mut Vec<(String, String)>) -> Option<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match props.get("ssl.ca.location") {
        Some(path) => match CertificateDer::pem_file_iter(path).and_then(|it| it.collect::<Result<Vec<_>, _>>()) {
            Ok(certs) if !certs.is_empty() => {
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    problems.push(("ssl.ca.location".into(), format!("{path}: no usable CA certificate")));
                }
            }
            Ok(_) => problems.push(("ssl.ca.location".into(), format!("{path}: no PEM certificate in the file"))),
            Err(e) => problems.push(("ssl.ca.location".into(), format!("{path}: {e}"))),
        },
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let verify_name = match props.get("ssl.endpoint.identification.algorithm").map(|s| s.to_ascii_lowercase()) {
        None => true,
        Some(s) if s == "https" => true,
        Some(s) if s == "none" || s.is_empty() => false,
        Some(other) => {
            problems.push((
                "ssl.endpoint.identification.algorithm".into(),
                format!("{other:?} is not https or none"),
            ));
            true
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions() {
        Ok(b) => b,
        Err(e) => {
            problems.push(("security.protocol".into(), format!("TLS: {e}")));
            return None;
        }
    };
    let builder = if verify_name {
        builder.with_root_certificates(roots)
    } else {
        match rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build() {
            Ok(inner) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier(inner))),
            Err(e) => {
                problems.push(("ssl.ca.location".into(), format!("TLS: {e}")));
                return None;
            }
        }
    };
    let config = match (props.get("ssl.certificate.location"), props.get("ssl.key.location")) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert).and_then(|it| it.collect::<Result<Vec<_>, _>>());
            let key_der = PrivateKeyDer::from_pem_file(key);
            match (certs, key_der) {
                (Ok(certs), Ok(key_der)) if !certs.is_empty() => match builder.with_client_auth_cert(certs, key_der) {
                    Ok(c) => c,
                    Err(e) => {
                        problems.push(("ssl.key.location".into(), format!("{key}: does not match the certificate: {e}")));
                        return None;
                    }
                },
                (certs, key_der) => {
                    if !matches!(&certs, Ok(c) if !c.is_empty()) {
                        problems.push(("ssl.certificate.location".into(), format!("{cert}: no PEM certificate readable")));
                    }
                    if let Err(e) = key_der {
                        problems.push(("ssl.key.location".into(), format!("{key}: {e} (an unencrypted PEM key is needed)")));
                    }
                    return None;
                }
            }
        }
        (Some(_), None) => {
            problems.push(("ssl.key.location".into(), "required with ssl.certificate.location".into()));
            return None;
        }
        (None, Some(_)) => {
            problems.push(("ssl.certificate.location".into(), "required with ssl.key.location".into()));
            return None;
        }
    };
    Some(Arc::new(config))
}

/// `ssl.endpoint.identification.algorithm = none`: the chain must still lead to a trusted CA, but the
/// certificate need not name the host (as librdkafka does with that setting).
#[derive(Debug)]
struct ChainOnlyVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The SASL PLAIN token: authorization id (empty), user, password.
pub fn plain_token(username: &str, password: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(username.len() + password.len() + 2);
    t.push(0);
    t.extend_from_slice(username.as_bytes());
    t.push(0);
    t.extend_from_slice(password.as_bytes());
    t
}

/// One SCRAM exchange, client side.
pub struct Scram {
    mechanism: Mechanism,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    /// Set once the client-final message is built: the expected server signature.
    server_signature: Option<Vec<u8>>,
}

impl Scram {
    pub fn new(mechanism: Mechanism, username: &str, password: &str, client_nonce: String) -> Scram {
        // RFC 5802: "=" and "," in the user name are escaped.
        let user = username.replace('=', "=3D").replace(',', "=2C");
        let client_first_bare = format!("n={user},r={client_nonce}");
        Scram {
            mechanism,
            password: password.to_string(),
            client_nonce,
            client_first_bare,
            server_signature: None,
        }
    }

    /// A random nonce of printable characters.
    pub fn random_nonce() -> String {
        use rand::Rng;
        let bytes: [u8; 24] = rand::rng().random();
        B64.encode(bytes).replace(['=', ','], "")
    }

    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Reads server-first and returns client-final.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, String> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(B64.decode(v).map_err(|_| "server salt is not base64".to_string())?),
                Some(("i", v)) => iterations = Some(v.parse::<u32>().map_err(|_| "server iteration count is not a number".to_string())?),
                Some(("e", v)) => return Err(format!("server error: {v}")),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err("server-first message lacks r, s or i".into());
        };
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("server nonce does not extend the client nonce".into());
        }
        if !(SCRAM_MIN_ITERATIONS..=SCRAM_MAX_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "iteration count {iterations} outside {SCRAM_MIN_ITERATIONS}..={SCRAM_MAX_ITERATIONS}"
            ));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let (proof, server_signature) = match self.mechanism {
            Mechanism::ScramSha512 => scram_proof_sha512(&self.password, &salt, iterations, &auth_message),
            _ => scram_proof_sha256(&self.password, &salt, iterations, &auth_message),
        };
        self.server_signature = Some(server_signature);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final: the server proves it knows the password too.
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), String> {
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(format!("server error: {e}"));
        }
        let v = server_final.strip_prefix("v=").ok_or("server-final message lacks v")?;
        let got = B64.decode(v).map_err(|_| "server signature is not base64")?;
        match &self.server_signature {
            Some(expected) if *expected == got => Ok(()),
            _ => Err("server signature does not match: the server does not know the password".into()),
        }
    }
}

/// ClientProof and ServerSignature of RFC 5802, one function per hash.
macro_rules! scram_proof_fn {
    ($name:ident, $d:ty) => {
        fn $name(password: &str, salt: &[u8], iterations: u32, auth_message: &str) -> (Vec<u8>, Vec<u8>) {
            let hmac = |key: &[u8], data: &[u8]| {
                let mut m = <Hmac<$d> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            };
            let mut salted = vec![0u8; <$d as Digest>::output_size()];
            pbkdf2::pbkdf2::<Hmac<$d>>(password.as_bytes(), salt, iterations, &mut salted).expect("HMAC takes keys of any length");
            let client_key = hmac(&salted, b"Client Key");
            let stored_key = <$d>::digest(&client_key).to_vec();
            let client_signature = hmac(&stored_key, auth_message.as_bytes());
            let proof = client_key.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
            let server_key = hmac(&salted, b"Server Key");
            (proof, hmac(&server_key, auth_message.as_bytes()))
        }
    };
}
scram_proof_fn!(scram_proof_sha256, Sha256);
scram_proof_fn!(scram_proof_sha512, Sha512);

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677, section 3: the SCRAM-SHA-256 example exchange.
    #[test]
    fn rfc7677_vector() {
        let mut s = Scram::new(Mechanism::ScramSha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO".into());
        assert_eq!(s.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            s.client_final(server_first).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert!(s.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").is_ok());
        assert!(s.verify_server_final("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").is_err());
        assert!(s.verify_server_final("e=invalid-proof").is_err());
    }

    #[test]
    fn hostile_server_first_is_refused() {
        let mut s = Scram::new(Mechanism::ScramSha512, "u", "p", "abc".into());
        assert!(s.client_final("r=xyz123,s=AAAA,i=4096").is_err(), "foreign nonce");
        assert!(s.client_final("r=abc,s=AAAA,i=4096").is_err(), "nonce not extended");
        assert!(s.client_final("r=abcd,s=AAAA,i=4000000000").is_err(), "iterations");
        assert!(s.client_final("r=abcd,s=!!!,i=4096").is_err(), "salt");
        assert!(s.client_final("r=abcd,i=4096").is_err(), "missing salt");
    }

    #[test]
    fn properties_are_validated_together() {
        let props = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        assert!(Security::from_properties(&props(&[])).unwrap().tls.is_none());
        let s = Security::from_properties(&props(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]))
        .unwrap();
        assert_eq!(s.sasl.unwrap().mechanism, Mechanism::ScramSha512);
        assert!(Security::from_properties(&props(&[("security.protocol", "SSL")]))
            .unwrap()
            .tls
            .is_some());
        let errs = Security::from_properties(&props(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "GSSAPI"),
            ("ssl.ca.location", "/nonexistent.pem"),
            ("ssl.certificate.location", "/nonexistent.pem"),
        ]))
        .unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "sasl.mechanism",
            "sasl.username",
            "sasl.password",
            "ssl.ca.location",
            "ssl.key.location",
        ] {
            assert!(keys.contains(&k), "{k} in {errs:?}");
        }
        let errs = Security::from_properties(&props(&[("sasl.username", "u")])).unwrap_err();
        assert_eq!(errs[0].0, "sasl.username");
    }
}
