//! Settings of the MQTT outlet: [`MqttConfig`] from a broker URL
//! (`mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][/prefix]`), the QoS, and why a setting is refused.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;

use crate::filter::{validate_topic_name, TopicError, TopicFilter};

/// MQTT quality of service of the published events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// 0: fire and forget.
    AtMostOnce,
    /// 1: acknowledged, possibly duplicated (the default).
    AtLeastOnce,
    /// 2: exactly once (two round trips per event).
    ExactlyOnce,
}

impl std::str::FromStr for Qos {
    type Err = MqttConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "0" => Ok(Self::AtMostOnce),
            "1" => Ok(Self::AtLeastOnce),
            "2" => Ok(Self::ExactlyOnce),
            _ => Err(MqttConfigError::Qos(s.to_owned())),
        }
    }
}

impl From<Qos> for QoS {
    fn from(q: Qos) -> Self {
        match q {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
            Qos::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

/// A refused MQTT setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttConfigError {
    /// The URL is not `mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][/prefix]`.
    #[error(
        "MQTT URL {url:?}: {reason} (expected mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][/prefix])"
    )]
    Url {
        /// The URL given, its password replaced by `***`.
        url: String,
        /// What is wrong.
        reason: UrlProblem,
    },
    /// QoS other than 0, 1, 2.
    #[error("MQTT QoS {0:?}: expected 0, 1 or 2")]
    Qos(String),
    /// A CA file for a broker that is not `mqtts://`.
    #[error("MQTT CA certificate {0}: the broker URL is not mqtts://")]
    CaWithoutTls(String),
    /// The TLS settings are unusable (e.g. the CA file).
    #[error("MQTT TLS: {0}")]
    Tls(#[from] crate::tls::TlsConfigError),
}

/// What is wrong with an MQTT URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// Neither `mqtt://` nor `mqtts://`.
    #[error("the scheme must be mqtt:// or mqtts://")]
    Scheme,
    /// A `%` in the user info not followed by two hex digits.
    #[error("bad %-escape at byte {0} of the user info")]
    PercentEscape(usize),
    /// The user info decodes to bytes that are not UTF-8.
    #[error("the user info is not UTF-8 once decoded")]
    NotUtf8,
    /// `@` with an empty user name.
    #[error("a user name is needed before '@'")]
    NoUser,
    /// An IPv6 host `[…` without its `]`.
    #[error("unclosed [")]
    UnclosedBracket,
    /// The host is empty.
    #[error("no host")]
    NoHost,
    /// The port is not a number from 0 to 65535.
    #[error("bad port")]
    Port,
    /// The topic prefix (the URL's path) is not a valid topic name.
    #[error("prefix: {0}")]
    Prefix(TopicError),
}

/// A password: shown as `***` by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// `%XX`-decodes a URL's user name or password.
fn percent_decode(text: &str) -> Result<String, UrlProblem> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(UrlProblem::PercentEscape(i))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlProblem::NotUtf8)
}

/// `url` with the password of its user info replaced by `***` (for messages).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, _)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{}", &rest[userinfo.len() + 1..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Settings of the MQTT outlet.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (1883 by default, 8883 with `mqtts://`).
    pub port: u16,
    /// User name (from the URL's user info); none by default.
    pub username: Option<String>,
    /// Password (from the URL's user info; needs a user name); none by default.
    pub password: Option<Secret>,
    /// TLS client settings (`mqtts://`: public roots, see [`MqttConfig::trust_ca_file`]);
    /// `None`: plain TCP. The host is the name checked against the certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether [`MqttConfig::trust_ca_file`] added a CA file (for the words of a TLS failure).
    pub ca_given: bool,
    /// Prepended to every topic as `prefix/topic` (none by default).
    pub prefix: Option<String>,
    /// QoS of the publishes (1 by default).
    pub qos: Qos,
    /// MQTT client id.
    pub client_id: String,
    /// Which events to publish: those matching any of these filters (`#` by default; none:
    /// nothing is published). The broker costs CPU per message (see the module docs):
    /// restrict this to what applications subscribe to.
    pub filters: Vec<TopicFilter>,
    /// Hub queue of the outlet: events waiting while the broker is slow or away.
    pub queue_capacity: usize,
    /// Publishes written but not yet acknowledged (QoS 1 and 2): the in-flight window.
    pub max_inflight: u16,
    /// Largest payload published; larger events are counted in `too_large_total` and skipped
    /// (most brokers refuse big packets and would drop the connection).
    pub max_payload_bytes: usize,
    /// Wait between two connection attempts.
    pub reconnect_delay: Duration,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// How often a durable outlet ([`super::MqttOutlet::spawn_durable`]) saves its position
    /// when it moved: after a crash, at most about this much is published again.
    pub position_interval: Duration,
}

impl MqttConfig {
    /// Settings from `mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][/prefix]` (user and password
    /// `%`-encoded where needed), other fields at their defaults.
    pub fn from_url(url: &str) -> Result<Self, MqttConfigError> {
        let bad = |reason: UrlProblem| MqttConfigError::Url {
            url: redact(url),
            reason,
        };
        let (rest, tls) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (rest, true)
        } else {
            return Err(bad(UrlProblem::Scheme));
        };
        let (authority, prefix) = match rest.split_once('/') {
            Some((a, p)) => (a, p.trim_end_matches('/')),
            None => (rest, ""),
        };
        let (userinfo, authority) = match authority.rsplit_once('@') {
            Some((u, a)) => (Some(u), a),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let user = percent_decode(user).map_err(bad)?;
                if user.is_empty() {
                    return Err(bad(UrlProblem::NoUser));
                }
                let password = match password {
                    Some(p) => Some(Secret(percent_decode(p).map_err(bad)?)),
                    None => None,
                };
                (Some(user), password)
            }
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad(UrlProblem::UnclosedBracket))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad(UrlProblem::NoHost));
        }
        let port = match port {
            None if tls => 8883,
            None => 1883,
            Some(p) => p.parse::<u16>().map_err(|_| bad(UrlProblem::Port))?,
        };
        let tls = if tls {
            Some(crate::tls::client_config(None, &[])?)
        } else {
            None
        };
        let prefix = if prefix.is_empty() {
            None
        } else {
            validate_topic_name(prefix).map_err(|e| bad(UrlProblem::Prefix(e)))?;
            Some(prefix.to_owned())
        };
        Ok(Self {
            ca_given: false,
            host: host.to_owned(),
            port,
            username,
            password,
            tls,
            prefix,
            qos: Qos::AtLeastOnce,
            client_id: format!("spot-server-{}", std::process::id()),
            filters: vec![TopicFilter::new("#").expect("`#` is a valid filter")],
            queue_capacity: 65_536,
            max_inflight: 1000,
            max_payload_bytes: 256 * 1024,
            reconnect_delay: Duration::from_secs(1),
            keep_alive: Duration::from_secs(30),
            position_interval: Duration::from_secs(1),
        })
    }

    /// Also trusts the certificates of the PEM file `path` (a private CA or a self-signed
    /// broker certificate), besides the public roots. Only for `mqtts://`.
    pub fn trust_ca_file(&mut self, path: &Path) -> Result<(), MqttConfigError> {
        if self.tls.is_none() {
            return Err(MqttConfigError::CaWithoutTls(path.display().to_string()));
        }
        self.tls = Some(crate::tls::client_config(Some(path), &[])?);
        self.ca_given = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_port_and_prefix() {
        let c = MqttConfig::from_url("mqtt://broker.local:1884/site/a/").expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_deref()),
            ("broker.local", 1884, Some("site/a"))
        );
        assert_eq!(c.qos, Qos::AtLeastOnce);
    }

    #[test]
    fn url_defaults_and_ipv6() {
        let c = MqttConfig::from_url("mqtt://10.0.0.1").expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_deref()),
            ("10.0.0.1", 1883, None)
        );
        let c = MqttConfig::from_url("mqtt://[::1]:2000/p").expect("valid");
        assert_eq!((c.host.as_str(), c.port), ("::1", 2000));
    }

    #[test]
    fn user_password_and_tls_from_the_url() {
        let c = MqttConfig::from_url("mqtts://spot:p%40ss%3Aword@broker.local/site").expect("ok");
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_deref()),
            ("broker.local", 8883, Some("site"))
        );
        assert_eq!(c.username.as_deref(), Some("spot"));
        assert_eq!(c.password, Some(Secret("p@ss:word".into())));
        assert!(c.tls.is_some());
        assert!(
            !format!("{c:?}").contains("p@ss"),
            "Debug does not show the password"
        );
        let c = MqttConfig::from_url("mqtt://only-user@h:1884").expect("ok");
        assert_eq!(
            (c.username.as_deref(), c.password.is_none(), c.port),
            (Some("only-user"), true, 1884)
        );
        assert!(c.tls.is_none());
    }

    #[test]
    fn a_ca_file_needs_mqtts_and_a_bad_one_is_named() {
        let mut plain = MqttConfig::from_url("mqtt://h").expect("ok");
        assert_eq!(
            plain.trust_ca_file(Path::new("/ca.pem")),
            Err(MqttConfigError::CaWithoutTls("/ca.pem".into()))
        );
        let mut tls = MqttConfig::from_url("mqtts://h").expect("ok");
        let err = tls
            .trust_ca_file(Path::new("/nonexistent/ca.pem"))
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn errors_do_not_show_the_password() {
        let err = MqttConfig::from_url("mqtt://u:secret@h:port").expect_err("bad port");
        let text = err.to_string();
        assert!(text.contains("mqtt://u:***@h:port"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        for url in ["mqtt://:pw@h", "mqtt://u:%zz@h"] {
            assert!(
                matches!(MqttConfig::from_url(url), Err(MqttConfigError::Url { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn bad_urls_and_qos_are_refused() {
        for url in [
            "http://h:1",
            "mqtt://",
            "mqtt://h:port",
            "mqtt://h:99999",
            "mqtt://h/a/+",
            "mqtt://[::1",
        ] {
            assert!(
                matches!(MqttConfig::from_url(url), Err(MqttConfigError::Url { .. })),
                "{url}"
            );
        }
        assert_eq!("2".parse::<Qos>(), Ok(Qos::ExactlyOnce));
        assert_eq!("3".parse::<Qos>(), Err(MqttConfigError::Qos("3".into())));
    }
}
