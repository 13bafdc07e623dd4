//! # mqtrace-cli
//!
//! The library behind the `mqtrace` command: [`journeys`] rebuilds request journeys from
//! exported traces. The binary adds `mqtrace mock-kafka` (an embedded Kafka for local use).

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod journeys;
