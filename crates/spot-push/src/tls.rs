//! TLS client settings of what dials out from this crate: the MQTT outlet (`mqtts://`),
//! webhooks (`https://` targets) and `spot tail` (`https://` servers). rustls with the ring
//! provider, trusting the public web PKI roots (compiled in, `webpki-roots`; no platform
//! store is read) plus, optionally, the certificates of one PEM file: a private CA, or a
//! self-signed server certificate (read by the shared `spot-tls` crate).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;

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

impl From<spot_tls::CaFileError> for TlsConfigError {
    fn from(e: spot_tls::CaFileError) -> Self {
        TlsConfigError::CaFile {
            path: e.path,
            reason: e.reason,
        }
    }
}

/// A client configuration trusting the public roots and the certificates of `extra_ca`
/// (read now: a bad file is an error at start, naming it), offering `alpn` protocols.
pub fn client_config(
    extra_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let roots = spot_tls::root_store(true, extra_ca)?;
    let mut config =
        spot_tls::verifying(roots).map_err(|e| TlsConfigError::Config(e.to_string()))?;
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
