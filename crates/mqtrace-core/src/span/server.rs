//! `server.address`/`server.port` from a broker list: [`parse_server`].

/// The first `host:port` of a comma-separated broker list, as `server.address`/`server.port`.
///
/// # Example
///
/// ```
/// use mqtrace_core::span::parse_server;
///
/// assert_eq!(parse_server("kafka-1:9092,kafka-2:9092"), Some(("kafka-1".into(), 9092)));
/// assert_eq!(parse_server("[::1]:9092"), Some(("::1".into(), 9092)));
/// assert_eq!(parse_server(""), None);
/// ```
pub fn parse_server(brokers: &str) -> Option<(String, i64)> {
    let first = brokers.split(',').next()?.trim();
    let first = first.rsplit_once("://").map_or(first, |(_, rest)| rest);
    let (host, port) = first.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: i64 = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}
