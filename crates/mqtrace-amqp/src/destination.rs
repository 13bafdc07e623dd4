//! RabbitMQ destination names, as the messaging semantic conventions (v1.44) define them.

/// The destination of a publish: `{exchange}:{routing key}`, whichever parts are present,
/// or `amq.default` for the default exchange with no routing key.
///
/// # Example
///
/// ```
/// use mqtrace_amqp::destination::publish_destination;
///
/// assert_eq!(publish_destination("orders", "eu"), "orders:eu");
/// assert_eq!(publish_destination("", "requests"), "requests");
/// assert_eq!(publish_destination("orders", ""), "orders");
/// assert_eq!(publish_destination("", ""), "amq.default");
/// ```
pub fn publish_destination(exchange: &str, routing_key: &str) -> String {
    match (exchange.is_empty(), routing_key.is_empty()) {
        (false, false) => format!("{exchange}:{routing_key}"),
        (false, true) => exchange.to_owned(),
        (true, false) => routing_key.to_owned(),
        (true, true) => "amq.default".to_owned(),
    }
}

/// The destination of a consumed delivery: `{exchange}:{routing key}:{queue}`, leaving out
/// empty parts and repeating nothing (a message routed by its queue's name through the
/// default exchange is just `{queue}`).
///
/// # Example
///
/// ```
/// use mqtrace_amqp::destination::consume_destination;
///
/// assert_eq!(consume_destination("orders", "eu", "eu-orders"), "orders:eu:eu-orders");
/// assert_eq!(consume_destination("", "requests", "requests"), "requests");
/// assert_eq!(consume_destination("orders", "", "all-orders"), "orders:all-orders");
/// assert_eq!(consume_destination("orders", "q", "q"), "orders:q");
/// ```
pub fn consume_destination(exchange: &str, routing_key: &str, queue: &str) -> String {
    let mut parts: Vec<&str> = Vec::with_capacity(3);
    for part in [exchange, routing_key, queue] {
        if !part.is_empty() && !parts.contains(&part) {
            parts.push(part);
        }
    }
    parts.join(":")
}
