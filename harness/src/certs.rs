//! A throw-away test PKI made with rcgen.
//!
//! [`TestPki::generate`] makes a CA and a server certificate valid for
//! `localhost`, `pdp.test` and `127.0.0.1`, writes them as PEM files into a
//! fresh temporary directory (removed again on drop), and hands out rustls
//! configurations:
//!
//! - [`TestPki::server_config`]: a TLS server presenting the server certificate;
//! - [`TestPki::server_config_mtls`]: the same, asking clients for a certificate;
//! - [`TestPki::client_config`]: a client trusting the CA;
//! - [`TestPki::client_config_with_cert`]: the same, presenting a client certificate;
//! - [`insecure_client_config`]: a client that verifies nothing (for
//!   `verify_service_certificate = false` tests).
//!
//! Client certificates for the mTLS payload (`client_certificate` JWK) come
//! from [`TestPki::client_cert`]: EC P-256 or Ed25519 leaves signed by the CA.
//! RSA keys cannot be generated with ring; RSA fixtures live in
//! `tests/fixtures/certs/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The names the server certificate is valid for.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "pdp.test", "127.0.0.1"];

/// The key algorithm of a generated client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 (JWK `kty: "EC"`, `crv: "P-256"`).
    EcP256,
    /// Ed25519 (JWK `kty: "OKP"`, `crv: "Ed25519"`).
    Ed25519,
}

impl KeyKind {
    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyKind::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            KeyKind::EcP256 => "client-ec-p256",
            KeyKind::Ed25519 => "client-ed25519",
        }
    }
}

/// A client (leaf) certificate signed by the test CA.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub kind: KeyKind,
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The leaf followed by the CA certificate, PEM (what a TLS client presents).
    pub chain_pem: String,
    /// The leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// The leaf's public key as DER SubjectPublicKeyInfo (input of the JWK `kid`).
    pub spki_der: Vec<u8>,
    /// Where `cert_pem` and `key_pem` were written.
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A CA plus a server certificate, written as PEM files.
pub struct TestPki {
    /// The directory holding the PEM files.
    pub dir: PathBuf,
    pub ca_cert_pem: String,
    pub ca_cert_path: PathBuf,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub server_cert_path: PathBuf,
    pub server_key_path: PathBuf,
    ca_cert: Certificate,
    ca_key: KeyPair,
    server_cert_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
    remove_dir_on_drop: bool,
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let count = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!(
        "ping-auth-pki-{}-{count}-{nanos}",
        std::process::id()
    ))
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "ping-auth test PKI");
    dn
}

impl TestPki {
    /// Generates a new PKI in a fresh temporary directory, removed on drop.
    pub fn generate() -> Result<TestPki> {
        let mut pki = TestPki::generate_in(&unique_temp_dir())?;
        pki.remove_dir_on_drop = true;
        Ok(pki)
    }

    /// Generates a new PKI and writes it into `dir` (created if needed, kept on drop).
    /// Files: `ca.pem`, `server.pem`, `server.key`.
    pub fn generate_in(dir: &Path) -> Result<TestPki> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

        let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = name("ping-auth test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("cannot sign the CA certificate")?;

        let server_key = KeyPair::generate().context("cannot generate the server key")?;
        let names: Vec<String> = SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        let mut server_params = CertificateParams::new(names)?;
        server_params.distinguished_name = name("localhost");
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.use_authority_key_identifier_extension = true;
        let server_cert = server_params
            .signed_by(&server_key, &ca_cert, &ca_key)
            .context("cannot sign the server certificate")?;

        let pki = TestPki {
            dir: dir.to_path_buf(),
            ca_cert_pem: ca_cert.pem(),
            ca_cert_path: dir.join("ca.pem"),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            server_cert_path: dir.join("server.pem"),
            server_key_path: dir.join("server.key"),
            server_cert_der: server_cert.der().clone(),
            server_key_der: server_key.serialize_der(),
            ca_cert,
            ca_key,
            remove_dir_on_drop: false,
        };
        write_file(&pki.ca_cert_path, &pki.ca_cert_pem)?;
        write_file(&pki.server_cert_path, &pki.server_cert_pem)?;
        write_file(&pki.server_key_path, &pki.server_key_pem)?;
        Ok(pki)
    }

    /// The CA certificate, DER.
    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        self.ca_cert.der().clone()
    }

    /// A TLS server config presenting the server certificate (no client auth).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let config = ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.server_chain(), self.server_key())?;
        Ok(Arc::new(config))
    }

    /// A TLS server config that asks for a client certificate signed by the CA.
    /// With `optional`, clients without a certificate are accepted too.
    pub fn server_config_mtls(&self, optional: bool) -> Result<Arc<ServerConfig>> {
        let roots = Arc::new(self.root_store()?);
        let builder =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, ring_provider());
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        let verifier = builder.build()?;
        let config = ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain(), self.server_key())?;
        Ok(Arc::new(config))
    }

    /// A TLS client config trusting only the test CA.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let config = ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.root_store()?)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A TLS client config trusting the test CA and presenting `cert`.
    pub fn client_config_with_cert(&self, cert: &ClientCert) -> Result<Arc<ClientConfig>> {
        let chain = vec![
            CertificateDer::from(cert.cert_der.clone()),
            self.ca_cert_der(),
        ];
        let key = private_key_from_pem(&cert.key_pem)?;
        let config = ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.root_store()?)
            .with_client_auth_cert(chain, key)?;
        Ok(Arc::new(config))
    }

    /// Generates a client certificate (CN `common_name`) of the given key kind,
    /// signed by the CA, and writes `<kind>.pem` / `<kind>.key` into the PKI directory.
    pub fn client_cert(&self, kind: KeyKind, common_name: &str) -> Result<ClientCert> {
        let key = KeyPair::generate_for(kind.algorithm())
            .with_context(|| format!("cannot generate a {kind:?} key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .with_context(|| format!("cannot sign the {kind:?} client certificate"))?;
        let cert_path = self.dir.join(format!("{}.pem", kind.file_stem()));
        let key_path = self.dir.join(format!("{}.key", kind.file_stem()));
        let client = ClientCert {
            kind,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain_pem: format!("{}{}", cert.pem(), self.ca_cert_pem),
            cert_der: cert.der().to_vec(),
            spki_der: key.public_key_der(),
            cert_path,
            key_path,
        };
        write_file(&client.cert_path, &client.cert_pem)?;
        write_file(&client.key_path, &client.key_pem)?;
        Ok(client)
    }

    fn server_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.server_cert_der.clone(), self.ca_cert_der()]
    }

    fn server_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()))
    }

    fn root_store(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert_der())?;
        Ok(roots)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        if self.remove_dir_on_drop {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Parses every certificate in a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("cannot parse the PEM certificates")?;
    if certs.is_empty() {
        return Err(anyhow!("no CERTIFICATE block found in the PEM text"));
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM text.
pub fn private_key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .context("cannot parse the PEM private key")?
        .ok_or_else(|| anyhow!("no PRIVATE KEY block found in the PEM text"))
}

/// A TLS server config from a certificate chain file and a key file (PEM).
pub fn server_config_from_pem_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let cert_pem = fs::read_to_string(cert)
        .with_context(|| format!("cannot read the certificate file {}", cert.display()))?;
    let key_pem = fs::read_to_string(key)
        .with_context(|| format!("cannot read the key file {}", key.display()))?;
    let chain = certs_from_pem(&cert_pem).with_context(|| cert.display().to_string())?;
    let key_der = private_key_from_pem(&key_pem).with_context(|| key.display().to_string())?;
    let config = ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .context("the certificate and key do not form a usable TLS identity")?;
    Ok(Arc::new(config))
}

/// A TLS client config trusting the CA certificates in a PEM text.
pub fn client_config_trusting(ca_pem: &str) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    let config = ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS client config that accepts any server certificate (tests of
/// `verify_service_certificate = false` only).
pub fn insecure_client_config() -> Result<Arc<ClientConfig>> {
    let provider = ring_provider();
    let verifier = Arc::new(AcceptAnyServerCert {
        provider: Arc::clone(&provider),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A server-certificate verifier that accepts every certificate but still
/// checks the handshake signatures.
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_files_and_configs() {
        let pki = TestPki::generate().unwrap();
        assert!(pki.ca_cert_path.exists());
        assert!(pki.server_key_path.exists());
        pki.server_config().unwrap();
        pki.server_config_mtls(true).unwrap();
        pki.client_config().unwrap();
        for kind in [KeyKind::EcP256, KeyKind::Ed25519] {
            let cert = pki.client_cert(kind, "alice").unwrap();
            assert!(cert.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(cert.key_path.exists());
            pki.client_config_with_cert(&cert).unwrap();
        }
        server_config_from_pem_files(&pki.server_cert_path, &pki.server_key_path).unwrap();
        client_config_trusting(&pki.ca_cert_pem).unwrap();
        insecure_client_config().unwrap();
        let dir = pki.dir.clone();
        drop(pki);
        assert!(!dir.exists());
    }
}
