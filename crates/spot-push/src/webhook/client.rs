//! The webhook HTTP client: hyper's pooled HTTP/1.1 client over TCP, or TLS (rustls, the
//! [`crate::tls`] settings) for `https://` targets ([`crate::connector::Connector`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::connector::{with_causes, Connector};

/// Bytes of a target's response body read (so the connection can be reused); the rest is
/// not read and the connection is dropped.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Why a POST got no response status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    /// The target URL does not parse as a URI.
    #[error("bad URL: {0}")]
    Url(#[from] http::uri::InvalidUri),
    /// The request could not be built (a header name or value that is not valid HTTP).
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    /// Connecting, TLS or the exchange failed; the text carries the whole chain of causes
    /// (a TLS failure in words; the flag says whether `webhook-ca-cert` was given).
    #[error("{}", with_causes(.0, spot_tls::Side::Client { ca_option: "webhook-ca-cert", ca_given: *.1 }))]
    Exchange(hyper_util::client::legacy::Error, bool),
    /// No response within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// POSTs webhook deliveries.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    timeout: Duration,
    /// Whether `webhook-ca-cert` was given (for the words of a TLS failure).
    ca_given: bool,
}

impl HttpClient {
    /// A client verifying `https://` targets with `tls` (`ca_given`: with the certificates
    /// of `webhook-ca-cert`); each request (connection, TLS, request, response) is bounded
    /// by `timeout`.
    pub(crate) fn new(tls: Arc<rustls::ClientConfig>, timeout: Duration, ca_given: bool) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(Connector::new(tls));
        Self {
            client,
            timeout,
            ca_given,
        }
    }

    /// POSTs `body` with `headers` to `url`; the response status, or why there is none.
    pub(crate) async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: String,
    ) -> Result<StatusCode, PostError> {
        let uri: Uri = url.parse()?;
        let mut request = Request::post(uri);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| PostError::Exchange(e, self.ca_given))?;
            let status = response.status();
            // Read a short body to completion so the connection is reused; ignore it.
            let _ = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await;
            Ok(status)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PostError::Timeout(self.timeout))?
    }
}
