//! Timestamps as the original writes them: float unix seconds (Python `time.time()`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch as `f64`, microsecond precision like CPython's `time.time()`.
pub fn now() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_micros() as f64) / 1_000_000.0
}
