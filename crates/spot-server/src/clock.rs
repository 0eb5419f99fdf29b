//! The server's one wall-clock read. Everything below the async layers (the domain, the
//! protocol) takes `now` as a parameter; the layers that drive them read it here.

use std::time::SystemTime;

use spot_protocol::Timestamp;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    Timestamp::from_system_time(SystemTime::now()).as_millis()
}
