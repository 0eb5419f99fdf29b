//! TLS client settings of the outlets that dial out: the MQTT outlet (`mqtts://`) and
//! webhooks (`https://` targets). rustls with the ring provider, trusting the public web PKI
//! roots (compiled in, `webpki-roots`; no platform store is read) plus, optionally, the
//! certificates of one PEM file: a private CA, or a self-signed server certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Why a TLS client configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsConfigError {
    /// The CA file could not be read, has no certificate, or one is unusable.
    #[error("CA certificates {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Every certificate of a PEM file; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let err = |reason: String| TlsConfigError::CaFile {
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

/// A client configuration trusting the public roots and the certificates of `extra_ca`
/// (read now: a bad file is an error at start, naming it), offering `alpn` protocols.
pub fn client_config(
    extra_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        for (i, cert) in read_certificates(path)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| TlsConfigError::CaFile {
                path: path.to_path_buf(),
                reason: format!("certificate {}: {e}", i + 1),
            })?;
        }
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_roots_alone_and_a_bad_ca_file_named() {
        let config = client_config(None, &[b"http/1.1"]).expect("public roots");
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        for path in [missing, empty] {
            let err = client_config(Some(&path), &[]).expect_err("refused");
            assert!(
                matches!(&err, TlsConfigError::CaFile { path: p, .. } if *p == path),
                "{err}"
            );
            assert!(err.to_string().contains(&path.display().to_string()));
        }
    }
}
