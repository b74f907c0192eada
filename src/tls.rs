//! TLS on the Kafka listener (Kafka's security protocol SSL): the server certificate,
//! its reload when the files change on disk, optional client certificates, and the
//! principal a client certificate names. The same files secure the metadata Raft port
//! with `raft_tls` (`metadata::raft::network`), which also uses `client_config`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use crate::reload::Reloading;

/// Whether clients must present a certificate, like Kafka's `ssl.client.auth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuth {
    #[default]
    None,
    Requested,
    Required,
}

impl FromStr for ClientAuth {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim() {
            "none" => Ok(Self::None),
            "requested" => Ok(Self::Requested),
            "required" => Ok(Self::Required),
            _ => Err(()),
        }
    }
}

/// The TLS settings of the Kafka listener, already checked for consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    /// CAs that client certificates must chain to; set whenever `client_auth` is not `None`.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {setting} {path}: {source} (check the path and that the broker may read it)"
    )]
    Read {
        setting: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{setting} {path} is not valid: {reason}")]
    Invalid {
        setting: &'static str,
        path: String,
        reason: String,
    },
    #[error("tls_cert_file and tls_key_file cannot be used together: {0} (check that the key belongs to the certificate)")]
    Mismatch(rustls::Error),
}

/// Hands out the current `ServerConfig`, reloading it when its files change. A file
/// that fails to load keeps the previous certificate in use (and logs why).
pub struct TlsAcceptor {
    settings: TlsSettings,
    config: Reloading<ServerConfig>,
}

impl TlsAcceptor {
    /// Loads the files; any error stops start-up.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let paths = [
            Some(settings.cert_file.clone()),
            Some(settings.key_file.clone()),
            settings.ca_file.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let config = Reloading::load(paths, || server_config(&settings))?;
        Ok(Self { settings, config })
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The config for a new connection, after looking for changed files.
    pub fn current(&self) -> Arc<ServerConfig> {
        let reloaded = self
            .config
            .reload_if_changed(Instant::now(), || server_config(&self.settings));
        match reloaded {
            Some(Ok(())) => {
                info!(cert = %self.settings.cert_file.display(), "TLS certificate reloaded")
            }
            Some(Err(e)) => {
                warn!(error = %e, "TLS files changed but cannot be loaded; still serving the previous certificate")
            }
            None => {}
        }
        self.config.get()
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.display().to_string(),
        source,
    })
}

fn invalid(setting: &'static str, path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Invalid {
        setting,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(setting, path, format!("{e} (use a PEM file)")))?;
    if certs.is_empty() {
        return Err(invalid(
            setting,
            path,
            "no CERTIFICATE block found (use a PEM file)",
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key_pem = read("tls_key_file", path)?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            "tls_key_file",
            path,
            format!("{e} (use an unencrypted PEM private key: PKCS#8, RSA or EC)"),
        )
    })
}

fn root_store(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates("tls_ca_file", ca_file)? {
        roots
            .add(ca)
            .map_err(|e| invalid("tls_ca_file", ca_file, e))?;
    }
    Ok(roots)
}

/// A client config that trusts the CAs of `ca_file` and, given a certificate and its
/// key, presents them (mTLS): how a broker reaches its peers' TLS Raft ports.
pub fn client_config(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = root_store(ca_file)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Mismatch)?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert_file, key_file)) => builder
            .with_client_auth_cert(
                certificates("tls_cert_file", cert_file)?,
                private_key(key_file)?,
            )
            .map_err(TlsError::Mismatch)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Builds the rustls config from the files as they are now.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = certificates("tls_cert_file", &settings.cert_file)?;
    let key = private_key(&settings.key_file)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Mismatch)?;
    let builder = match (settings.client_auth, &settings.ca_file) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca_file)) => {
            let roots = root_store(ca_file)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| invalid("tls_ca_file", ca_file, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(TlsError::Mismatch)?;
    Ok(Arc::new(config))
}

/// Who is on the other end of a connection, as Kafka's default principal builder
/// names it: `User:<subject DN>` from a client certificate, else `User:ANONYMOUS`.
/// Kept on the connection for ACLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(String);

impl Principal {
    pub fn anonymous() -> Self {
        Self("User:ANONYMOUS".into())
    }

    /// From the client's certificate chain (leaf first), if it sent one.
    pub fn from_peer(certs: Option<&[CertificateDer<'_>]>) -> Self {
        certs
            .and_then(|c| c.first())
            .and_then(|leaf| subject_dn(leaf))
            .map(|dn| Self(format!("User:{dn}")))
            .unwrap_or_else(Self::anonymous)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The certificate's subject as RFC 2253 text, the form Java's `X500Principal.getName()`
/// and so Kafka use: the last RDN first (`CN=alice,OU=x,O=y`), unknown attribute types
/// as a dotted OID with the value's DER in hex.
pub fn subject_dn(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, certificate, _) = der(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    if rest.first() == Some(&0xa0) {
        rest = der(rest)?.2;
    }
    for _ in 0..4 {
        rest = der(rest)?.2;
    }
    let (SEQUENCE, mut name, _) = der(rest)? else {
        return None;
    };
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (0x31, mut set, next) = der(name)? else {
            return None;
        };
        name = next;
        let mut parts = Vec::new();
        while !set.is_empty() {
            let (SEQUENCE, attribute, next) = der(set)? else {
                return None;
            };
            set = next;
            let (0x06, oid, value) = der(attribute)? else {
                return None;
            };
            let (tag, content, _) = der(value)?;
            let oid = oid_text(oid)?;
            let text = match (attribute_name(&oid), string_value(tag, content)) {
                (Some(name), Some(text)) => format!("{name}={}", escape(&text)),
                _ => format!("{oid}=#{}", hex(value)),
            };
            parts.push(text);
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn oid_text(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    let text: Vec<String> = arcs.iter().map(u64::to_string).collect();
    (!text.is_empty()).then(|| text.join("."))
}

/// The keywords RFC 2253 (and so Java) prints by name.
fn attribute_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn string_value(tag: u8, content: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, T61String, IA5String
        0x0c | 0x13 | 0x14 | 0x16 => String::from_utf8(content.to_vec()).ok(),
        // BMPString: UTF-16BE
        0x1e => {
            let units: Vec<u16> = content
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(content);
        out
    }

    fn attr(oid: &[u8], tag: u8, value: &str) -> Vec<u8> {
        let seq = [tlv(0x06, oid), tlv(tag, value.as_bytes())].concat();
        tlv(0x31, &tlv(0x30, &seq))
    }

    /// A certificate skeleton: only the fields the subject parser walks over.
    fn cert_with_subject(rdns: &[Vec<u8>]) -> Vec<u8> {
        let tbs = [
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[0x01, 0x23]),
            tlv(0x30, &tlv(0x06, &[0x2a, 0x86, 0x48])),
            tlv(0x30, &[]),
            tlv(0x30, &[]),
            tlv(0x30, &rdns.concat()),
        ]
        .concat();
        tlv(0x30, &[tlv(0x30, &tbs), tlv(0x30, &[])].concat())
    }

    #[test]
    fn subject_is_rfc2253_last_rdn_first() -> TestResult {
        let cert = cert_with_subject(&[
            attr(&[0x55, 0x04, 0x06], 0x13, "US"),
            attr(&[0x55, 0x04, 0x0a], 0x0c, "Acme, Inc"),
            attr(&[0x55, 0x04, 0x0b], 0x0c, "x"),
            attr(&[0x55, 0x04, 0x03], 0x0c, "alice"),
        ]);
        assert_eq!(
            subject_dn(&cert).as_deref(),
            Some("CN=alice,OU=x,O=Acme\\, Inc,C=US")
        );
        let principal = Principal::from_peer(Some(&[CertificateDer::from(cert)]));
        assert_eq!(
            principal.to_string(),
            "User:CN=alice,OU=x,O=Acme\\, Inc,C=US"
        );
        Ok(())
    }

    #[test]
    fn unknown_attributes_are_an_oid_and_hex_as_java_prints_them() -> TestResult {
        // emailAddress 1.2.840.113549.1.9.1
        let email = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];
        let cert = cert_with_subject(&[
            attr(&[0x55, 0x04, 0x03], 0x0c, "bob"),
            attr(&email, 0x16, "a@b"),
        ]);
        assert_eq!(
            subject_dn(&cert).as_deref(),
            Some("1.2.840.113549.1.9.1=#1603614062,CN=bob")
        );
        Ok(())
    }

    #[test]
    fn no_or_garbled_certificate_is_anonymous() -> TestResult {
        assert_eq!(Principal::from_peer(None), Principal::anonymous());
        let garbled = CertificateDer::from(vec![0x30, 0x05, 0x01]);
        assert_eq!(
            Principal::from_peer(Some(&[garbled])).to_string(),
            "User:ANONYMOUS"
        );
        Ok(())
    }

    #[test]
    fn client_auth_values() -> TestResult {
        assert_eq!("none".parse(), Ok(ClientAuth::None));
        assert_eq!("requested".parse(), Ok(ClientAuth::Requested));
        assert_eq!("required".parse(), Ok(ClientAuth::Required));
        assert_eq!("yes".parse::<ClientAuth>(), Err(()));
        Ok(())
    }

    fn settings(dir: &Path) -> TlsSettings {
        TlsSettings {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            client_auth: ClientAuth::None,
            ca_file: None,
        }
    }

    #[test]
    fn unreadable_and_invalid_files_name_the_setting() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = settings(dir.path());
        let e = server_config(&s).unwrap_err().to_string();
        assert!(e.starts_with("cannot read tls_cert_file "), "{e}");

        std::fs::write(&s.cert_file, "not a certificate")?;
        let e = server_config(&s).unwrap_err().to_string();
        assert!(
            e.contains("tls_cert_file") && e.contains("no CERTIFICATE block"),
            "{e}"
        );

        // A syntactically fine PEM block; the key is checked next.
        std::fs::write(
            &s.cert_file,
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        )?;
        let e = server_config(&s).unwrap_err().to_string();
        assert!(e.starts_with("cannot read tls_key_file "), "{e}");
        std::fs::write(&s.key_file, "garbage")?;
        let e = server_config(&s).unwrap_err().to_string();
        assert!(
            e.contains("tls_key_file") && e.contains("PEM private key"),
            "{e}"
        );

        let ca = TlsSettings {
            client_auth: ClientAuth::Required,
            ca_file: Some(dir.path().join("missing-ca.pem")),
            ..s
        };
        std::fs::write(
            &ca.key_file,
            "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
        )?;
        let e = server_config(&ca).unwrap_err().to_string();
        assert!(e.starts_with("cannot read tls_ca_file "), "{e}");
        Ok(())
    }
}
