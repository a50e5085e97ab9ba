//! The tracing target of the broker's status lines: the lowest module, so that every other
//! module can log to it without importing the one that happens to log most (`listener`).

/// The tracing target of the broker's few status lines (listening, stopping, reloads, TLS
/// chains). The CLI shows this target at `info` even when everything else is at `warn`.
pub const STATUS_TARGET: &str = "makelaar::status";
