//! TLS client trust, shared by everything in the workspace that dials a TLS server: the
//! emulator (`spot emulate --ca-cert`), the push outlets (`mqtts://` brokers, `https://`
//! webhook targets) and `spot tail --ca-cert`; the server (`spot serve --tls-cert`) reads
//! its certificate chain with [`read_certificates`] too.
//!
//! rustls with the ring provider ([`provider`]), the public web PKI roots compiled in
//! (`webpki-roots`; no platform store is read) and the certificates of a PEM file
//! ([`read_certificates`]: a private CA, or a self-signed server certificate), put together
//! by [`root_store`]. Each user builds its `ClientConfig` from [`builder`]. [`explain`] says
//! what a failed handshake means and what to do, in words.

mod explain;

pub use explain::{describe, explain, rustls_error, Side};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WantsClientCert;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore, WantsVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// A CA file that cannot be used: unreadable, without a certificate, or with a bad one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct CaFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// The crypto provider of every TLS connection of the workspace: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration builder with [`provider`] and its safe protocol versions; the
/// caller chooses how servers are verified.
pub fn builder() -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, rustls::Error> {
    ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()
}

/// A client configuration verifying servers against `roots`, without client certificate.
pub fn verifying(roots: RootCertStore) -> Result<ClientConfig, rustls::Error> {
    let builder: ConfigBuilder<ClientConfig, WantsClientCert> =
        builder()?.with_root_certificates(roots);
    Ok(builder.with_no_client_auth())
}

/// Every certificate of the PEM file `path`; at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let err = |reason: String| CaFileError {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE in the file".into()));
    }
    Ok(certs)
}

/// The trusted roots: the public web PKI roots if `public_roots`, plus every certificate of
/// `ca_file` (read now, so a bad file is an error at start, naming it).
pub fn root_store(
    public_roots: bool,
    ca_file: Option<&Path>,
) -> Result<RootCertStore, CaFileError> {
    let mut roots = if public_roots {
        RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }
    } else {
        RootCertStore::empty()
    };
    if let Some(path) = ca_file {
        for (i, cert) in read_certificates(path)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| CaFileError {
                path: path.to_path_buf(),
                reason: format!("certificate {}: {e}", i + 1),
            })?;
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> String {
        rcgen::generate_simple_self_signed(vec![name.to_owned()])
            .expect("certificate")
            .cert
            .pem()
    }

    #[test]
    fn every_certificate_of_a_file_is_trusted_with_or_without_the_public_roots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = dir.path().join("two.pem");
        std::fs::write(&pem, self_signed("a.test") + &self_signed("b.test")).expect("write");
        assert_eq!(read_certificates(&pem).expect("read").len(), 2);
        assert_eq!(root_store(false, Some(&pem)).expect("roots").len(), 2);
        let public = root_store(true, None).expect("public roots").len();
        assert!(public > 100, "{public} public roots");
        assert_eq!(
            root_store(true, Some(&pem)).expect("roots").len(),
            public + 2
        );
        verifying(root_store(false, Some(&pem)).expect("roots")).expect("config");
    }

    #[test]
    fn a_missing_file_or_one_without_certificates_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let no_cert = dir.path().join("key.pem");
        let key = rcgen::KeyPair::generate().expect("key");
        std::fs::write(&no_cert, key.serialize_pem()).expect("write");
        for path in [&missing, &no_cert] {
            let err = root_store(true, Some(path)).expect_err("refused");
            assert_eq!(&err.path, path);
            assert!(
                err.to_string().starts_with(&path.display().to_string()),
                "{err}"
            );
        }
        let err = read_certificates(&no_cert).expect_err("a key is not a certificate");
        assert_eq!(err.reason, "no CERTIFICATE in the file");
    }
}
