//! TLS for `https://` servers: which certificates the emulator trusts ([`Trust`]) and the
//! client configuration built from that ([`TlsClient`]), with rustls and the ring provider
//! (CA files and root stores: the shared `spot-tls` crate).
//!
//! Trust is explicit because the emulator usually runs offline against a test server:
//! - [`Trust::PublicRoots`] (the default): the Mozilla roots compiled in (`webpki-roots`),
//!   for servers with a publicly issued certificate;
//! - [`Trust::CaFile`] (`--ca-cert PEM`): exactly the certificates of that file (a private CA,
//!   or a self-signed server certificate);
//! - [`Trust::Insecure`] (`--insecure`): any certificate, unverified (handshake signatures are
//!   still checked, so the connection works; who is at the other end is not known).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Which server certificates are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The public web PKI roots (compiled in; no platform store is consulted).
    PublicRoots,
    /// Only the certificates in this PEM file (CA or self-signed server certificates).
    CaFile(PathBuf),
    /// No verification of the server's certificate at all.
    Insecure,
}

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or parsed.
    #[error("{}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A ready TLS client: connects TCP streams as TLS to one server name.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    trust: Trust,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl From<spot_tls::CaFileError> for TlsError {
    fn from(e: spot_tls::CaFileError) -> Self {
        TlsError::CaFile {
            path: e.path,
            reason: e.reason,
        }
    }
}

impl TlsClient {
    /// Builds the client for `trust` (reads the CA file now, so a bad file stops the start).
    pub fn new(trust: Trust) -> Result<Self, TlsError> {
        let config = match &trust {
            Trust::PublicRoots => spot_tls::verifying(spot_tls::root_store(true, None)?)?,
            Trust::CaFile(path) => spot_tls::verifying(spot_tls::root_store(false, Some(path))?)?,
            Trust::Insecure => spot_tls::builder()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(spot_tls::provider())))
                .with_no_client_auth(),
        };
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            trust,
        })
    }

    /// What this client trusts.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The TLS handshake over `tcp`, for server name `name` (sent as SNI unless an IP address,
    /// and checked against the certificate).
    pub async fn connect(
        &self,
        name: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|e| HandshakeError::ServerName {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        self.connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| HandshakeError::Failed {
                name: name.to_string(),
                reason: spot_tls::explain(
                    &e,
                    spot_tls::Side::Client {
                        ca_option: "--ca-cert",
                        ca_given: matches!(self.trust, Trust::CaFile(_)),
                    },
                )
                .unwrap_or_else(|| e.to_string()),
            })
    }
}

/// Why a TLS handshake failed (the connection is dropped and redialled later).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The host is not a valid TLS server name.
    #[error("TLS: {name:?} is not a valid server name: {reason}")]
    ServerName {
        /// The host.
        name: String,
        /// Why rustls refused it.
        reason: String,
    },
    /// The handshake itself failed (certificate, protocol, or the connection).
    #[error("TLS handshake with {name}: {reason}")]
    Failed {
        /// The server name.
        name: String,
        /// What failed and what to do, in words ([`spot_tls::explain`]).
        reason: String,
    },
}

/// `--insecure`: accepts any certificate, but checks the handshake signatures with the
/// provider's algorithms (so the key exchange is sound, only the identity is unchecked).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = TlsClient::new(Trust::CaFile(empty.clone())).unwrap_err();
        assert!(
            matches!(&e, TlsError::CaFile { path, .. } if *path == empty),
            "{e}"
        );
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = TlsClient::new(Trust::CaFile(missing.clone())).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }

    #[test]
    fn every_trust_builds_a_client() {
        for trust in [Trust::PublicRoots, Trust::Insecure] {
            assert_eq!(TlsClient::new(trust.clone()).unwrap().trust(), &trust);
        }
    }
}
