//! TLS failures in words: what is wrong and what to do, for a client about the server it
//! dialled (`spot emulate`, `spot tail`, the MQTT and webhook outlets) and for the server
//! about a client (`spot serve`'s handshake log). rustls' own texts (`invalid peer
//! certificate: Other(OtherError(CaUsedAsEndEntity))`) name the check that failed, not
//! the certificate to make.

use std::error::Error;
use std::io;

use rustls::{AlertDescription, CertificateError};

/// Whose view a TLS failure is told from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side<'a> {
    /// A client, about the server it dialled.
    Client {
        /// Where its user names a CA file (`--ca-cert`, `mqtt-ca-cert`, …).
        ca_option: &'a str,
        /// Whether a CA file was given (else only the public web PKI roots are trusted).
        ca_given: bool,
    },
    /// The server, about a client.
    Server,
}

/// The rustls error in `error` or its sources (also one carried inside an [`io::Error`]).
pub fn rustls_error<'e>(error: &'e (dyn Error + 'static)) -> Option<&'e rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// What the TLS failure in `error` (or its sources) means and what to do; `None` when it
/// holds no rustls error (and, for the server, is no connection closed mid-handshake).
pub fn explain(error: &(dyn Error + 'static), side: Side<'_>) -> Option<String> {
    if let Some(tls) = rustls_error(error) {
        return Some(describe(tls, side));
    }
    let closed = std::iter::successors(Some(error), |e| (*e).source())
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            )
        });
    (closed && side == Side::Server).then(|| {
        "the client closed the connection during the TLS handshake (a client that does not \
         trust the server's certificate may leave without saying why: check that it trusts \
         the certificate's CA)"
            .to_string()
    })
}

/// `error` in words, from `side`'s view.
pub fn describe(error: &rustls::Error, side: Side<'_>) -> String {
    let peer = match side {
        Side::Client { .. } => "the server",
        Side::Server => "the client",
    };
    match error {
        rustls::Error::InvalidCertificate(cert) => certificate(cert, side),
        rustls::Error::AlertReceived(alert) => alert_received(*alert, side),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => match side
        {
            Side::Client { .. } => "the server did not answer in TLS: it may be a plain \
                     (not TLS) server or another service on that port; use http:// (mqtt://) \
                     for a plain server, or the port of its TLS listener"
                .into(),
            Side::Server => "the client did not speak TLS (plain HTTP to the HTTPS port?): \
                     it must use https://"
                .into(),
        },
        rustls::Error::PeerIncompatible(why) => format!(
            "{peer} has no TLS version or algorithm in common with this side, which speaks TLS \
             1.2 and 1.3 ({why:?}): upgrade or reconfigure {peer}'s TLS"
        ),
        rustls::Error::NoCertificatesPresented => {
            format!("{peer} sent no certificate: configure one on {peer}")
        }
        other => format!("TLS failed: {other}"),
    }
}

/// A certificate the client refused.
fn certificate(error: &CertificateError, side: Side<'_>) -> String {
    let (ca_option, ca_given) = match side {
        Side::Client {
            ca_option,
            ca_given,
        } => (ca_option, ca_given),
        Side::Server => ("the CA option", false),
    };
    let whose = match side {
        Side::Client { .. } => "the server's certificate",
        Side::Server => "the client's certificate",
    };
    match error {
        CertificateError::UnknownIssuer if ca_given => format!(
            "{whose} is not signed by a CA of {ca_option} (nor is it one of its certificates): \
             give {ca_option} the CA that signed it, or the server's own self-signed \
             certificate"
        ),
        CertificateError::UnknownIssuer => format!(
            "{whose} is not signed by a CA this client trusts (only the public web PKI roots \
             are trusted): give its CA, or the self-signed certificate itself, with \
             {ca_option} PEM"
        ),
        CertificateError::NotValidForName => format!(
            "{whose} is not valid for the host name dialled: dial a name it holds, or make \
             a certificate whose subjectAltName has that name"
        ),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let expected = expected.to_str();
            let holds = if presented.is_empty() {
                "no name in subjectAltName (the Common Name is not used)".to_string()
            } else {
                presented
                    .iter()
                    .map(|name| plain_name(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "{whose} is not valid for {expected:?}: it holds {holds}; dial a name it holds, \
                 or make a certificate with subjectAltName DNS:{expected} (or IP:{expected} \
                 for an address)"
            )
        }
        CertificateError::Expired => {
            format!("{whose} has expired: renew it (or correct this machine's clock)")
        }
        CertificateError::ExpiredContext { time, not_after } => format!(
            "{whose} expired {} ago: renew it (or correct this machine's clock)",
            span(time.as_secs().saturating_sub(not_after.as_secs()))
        ),
        CertificateError::NotValidYet => {
            format!("{whose} is not valid yet: check the clocks of both machines")
        }
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "{whose} is valid only from {} from now: check the clocks of both machines",
            span(not_before.as_secs().saturating_sub(time.as_secs()))
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!(
                "{whose} is not for TLS servers (its extendedKeyUsage lacks serverAuth): make \
                 one with extendedKeyUsage=serverAuth, or without extendedKeyUsage"
            )
        }
        CertificateError::BadSignature => format!(
            "{whose} is not signed by the key of the trusted CA of its issuer's name (a CA \
             made again with the same name, or a chain served out of order): trust the CA \
             that signed it, and serve the chain as issued, leaf first"
        ),
        CertificateError::BadEncoding => {
            format!("{whose} is not a valid DER certificate: serve the file as issued")
        }
        CertificateError::Revoked => format!("{whose} has been revoked: get a new one"),
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => format!(
            "{whose} is signed with an algorithm this client does not accept: use RSA (2048 \
             bits or more) with SHA-256 or better, ECDSA P-256/P-384, or Ed25519"
        ),
        CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity) => format!(
                "{whose} is a CA certificate (basicConstraints CA:TRUE) used as a server \
                     certificate, as `openssl req -x509` makes by default: make a leaf \
                     certificate signed by that CA and serve it (the CA then goes to \
                     {ca_option}), or make the self-signed one with \
                     `-addext basicConstraints=critical,CA:FALSE -addext \
                     subjectAltName=DNS:<host>`"
            ),
            Some(webpki::Error::EndEntityUsedAsCa) => format!(
                "{whose} chain has a certificate that signs another but is no CA \
                     (basicConstraints CA:FALSE or missing): sign the server's certificate with \
                     a CA certificate"
            ),
            _ => format!("{whose} was refused: {other}"),
        },
        other => format!("{whose} was refused: {other}"),
    }
}

/// A fatal alert from the peer.
fn alert_received(alert: AlertDescription, side: Side<'_>) -> String {
    use AlertDescription as A;
    match (side, alert) {
        (
            Side::Server,
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired,
        ) => format!(
            "the client refused this server's certificate (alert {alert:?}): the client must \
             trust its CA (e.g. `spot emulate --ca-cert`, `spot tail --ca-cert`), and the \
             certificate must hold the host name the client dials"
        ),
        (Side::Client { .. }, A::CertificateRequired) => "the server asks for a client \
             certificate, which this client does not send"
            .into(),
        (_, A::HandshakeFailure | A::ProtocolVersion | A::InsufficientSecurity) => format!(
            "the {} ended the handshake (alert {alert:?}): no TLS version or algorithm in common \
             (this side speaks TLS 1.2 and 1.3)",
            peer_name(side)
        ),
        _ => format!(
            "the {} ended the handshake with the alert {alert:?}",
            peer_name(side)
        ),
    }
}

fn peer_name(side: Side<'_>) -> &'static str {
    match side {
        Side::Client { .. } => "server",
        Side::Server => "client",
    }
}

/// A name as webpki presents it (`DnsName("a.example")`, `IpAddress(…)`), without the
/// wrapping.
fn plain_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map_or(presented, |inner| inner.trim_matches('"'))
}

/// `secs` as the largest whole unit: `3 days`, `5 hours`, `12 minutes`, `40 seconds`.
fn span(secs: u64) -> String {
    let (n, unit) = match secs {
        s if s >= 86_400 => (s / 86_400, "day"),
        s if s >= 3_600 => (s / 3_600, "hour"),
        s if s >= 60 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::{ClientConnection, RootCertStore, ServerConnection};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    /// A certificate for `names` with its key, changed by `edit` before it is self-signed.
    fn certificate(
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        edit(&mut params);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }

    /// The client's error of a real handshake, in memory, of a client trusting `trusted`
    /// and dialling `localhost` with the server serving `served`.
    fn client_error(
        served: (CertificateDer<'static>, PrivateKeyDer<'static>),
        trusted: &[CertificateDer<'static>],
    ) -> rustls::Error {
        let server = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![served.0], served.1)
            .expect("server config");
        let mut roots = RootCertStore::empty();
        for cert in trusted {
            roots.add(cert.clone()).expect("root");
        }
        let client = crate::verifying(roots).expect("client config");
        let mut client = ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())
            .expect("client");
        let mut server = ServerConnection::new(Arc::new(server)).expect("server");
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).expect("client writes");
            server
                .read_tls(&mut bytes.as_slice())
                .expect("server reads");
            server.process_new_packets().expect("server");
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).expect("server writes");
            client
                .read_tls(&mut bytes.as_slice())
                .expect("client reads");
            if let Err(e) = client.process_new_packets() {
                return e;
            }
        }
        panic!("the handshake succeeded");
    }

    const CLIENT: Side<'static> = Side::Client {
        ca_option: "--ca-cert",
        ca_given: true,
    };

    #[test]
    fn a_ca_certificate_served_as_the_servers_says_to_make_a_leaf() {
        let served = certificate(&["localhost"], |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
        });
        let trusted = served.0.clone();
        let words = describe(&client_error(served, &[trusted]), CLIENT);
        assert!(
            words.contains("is a CA certificate (basicConstraints CA:TRUE)"),
            "{words}"
        );
        assert!(words.contains("make a leaf certificate"), "{words}");
    }

    #[test]
    fn an_untrusted_issuer_names_the_ca_option() {
        let other = certificate(&["localhost"], |p| {
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "another CA")
        })
        .0;
        let error = client_error(certificate(&["localhost"], |_| {}), &[other]);
        let words = describe(&error, CLIENT);
        assert!(words.contains("not signed by a CA of --ca-cert"), "{words}");
        let words = describe(
            &error,
            Side::Client {
                ca_option: "mqtt-ca-cert",
                ca_given: false,
            },
        );
        assert!(
            words.contains("only the public web PKI roots") && words.contains("mqtt-ca-cert"),
            "{words}"
        );
    }

    #[test]
    fn a_certificate_for_another_name_says_which_names_it_holds() {
        let served = certificate(&["spot.example"], |_| {});
        let trusted = served.0.clone();
        let words = describe(&client_error(served, &[trusted]), CLIENT);
        assert!(
            words.contains("not valid for \"localhost\": it holds spot.example"),
            "{words}"
        );
    }

    #[test]
    fn an_expired_certificate_says_how_long_ago() {
        let served = certificate(&["localhost"], |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        let trusted = served.0.clone();
        let words = describe(&client_error(served, &[trusted]), CLIENT);
        assert!(
            words.contains("expired") && words.contains("days ago"),
            "{words}"
        );
    }

    #[test]
    fn the_server_hears_why_a_client_left() {
        let refused = rustls::Error::AlertReceived(AlertDescription::UnknownCA);
        let words = describe(&refused, Side::Server);
        assert!(
            words.contains("the client refused this server's certificate"),
            "{words}"
        );
        let plain = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        let words = explain(&plain, Side::Server).expect("a TLS error");
        assert!(words.contains("did not speak TLS"), "{words}");
        let closed = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(explain(&closed, Side::Server).is_some());
        assert_eq!(explain(&closed, CLIENT), None);
    }
}
