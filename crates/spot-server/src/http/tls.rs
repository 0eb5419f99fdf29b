//! The HTTPS acceptor of the listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate or key file the listener cannot use.
#[derive(Debug, thiserror::Error)]
#[error("TLS {}: {reason}", path.display())]
pub struct TlsError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The HTTPS acceptor for a PEM certificate chain and private key (PKCS#8, PKCS#1 or
/// SEC1); ALPN `http/1.1`.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let tls_err = |path: &Path, reason: String| TlsError {
        path: path.to_path_buf(),
        reason,
    };
    let chain = spot_tls::read_certificates(cert).map_err(|e| tls_err(cert, e.reason))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(spot_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| tls_err(key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
