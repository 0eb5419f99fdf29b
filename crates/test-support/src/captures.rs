//! The vendor captures: real spot output, byte for byte (the team's `shared/captures/`,
//! kept in the repository as golden fixtures of spot-protocol, so a clean clone has them).

use crate::http::dechunk;

/// One complete HTTP/1.1 POST from spot 203 (firmware `35-42-g0388fd9-dirty`): headers with
/// CRLF, a chunked body of `spot create`, `config create` split over three chunks (one
/// boundary inside the key `"bt_near"`) and `presence create`.
pub const HTTP_SPOT203: &[u8] =
    include_bytes!("../../spot-protocol/tests/fixtures/vendor-http-spot203.http");

/// A raw telnet stream from spot 201 (firmware `beta13`): 12 events, string-typed
/// `spot_id` and inputs, messages separated by lines holding a single space.
pub const TELNET_SPOT201: &[u8] =
    include_bytes!("../../spot-protocol/tests/fixtures/vendor-telnet-spot201.txt");

/// The de-chunked body of [`HTTP_SPOT203`]: the three events as the spot wrote them.
pub fn http_spot203_body() -> Vec<u8> {
    dechunk(HTTP_SPOT203).body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_capture_holds_three_events_in_five_chunks() {
        let body = http_spot203_body();
        let text = std::str::from_utf8(&body).expect("UTF-8");
        assert!(text.starts_with("[\"spot\",\"create\""), "{text}");
        assert_eq!(text.matches("\"create\"").count(), 3, "{text}");
        assert_eq!(dechunk(HTTP_SPOT203).boundaries.len(), 5);
    }
}
