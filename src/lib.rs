//! mqtrace
