//! The error type of `mqtrace-amqp`.

/// Errors from traced AMQP clients. The span of the failed operation carries the same
/// information (`error.type` and an error status).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A channel could not be opened or configured (e.g. publisher confirms).
    #[error("cannot open an AMQP channel: {0} (is the connection still open?)")]
    Channel(#[source] lapin::Error),
    /// The publish could not be handed to the broker, or the channel closed before the broker
    /// confirmed it (e.g. the exchange does not exist). The next publish reopens the channel.
    #[error("publishing to '{destination}' failed: {source}")]
    Publish {
        /// The destination (`exchange:routing key`).
        destination: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker negatively acknowledged the message: it was not stored.
    #[error(
        "the broker refused (nacked) the message to '{destination}'; it was not stored, publish it again"
    )]
    Nacked {
        /// The destination (`exchange:routing key`).
        destination: String,
    },
    /// A mandatory message could not be routed to any queue and was returned.
    #[error(
        "the message to '{destination}' was returned unroutable ({reply_code} {reply_text}): bind a queue to the exchange with this routing key"
    )]
    Returned {
        /// The destination (`exchange:routing key`).
        destination: String,
        /// The AMQP reply code (e.g. 312 NO_ROUTE).
        reply_code: u16,
        /// The broker's text.
        reply_text: String,
    },
    /// Receiving a delivery failed.
    #[error("receiving from queue '{queue}' failed: {source}")]
    Consume {
        /// The queue.
        queue: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// Acknowledging, rejecting or nacking a delivery failed.
    #[error("{operation} of delivery {delivery_tag} failed: {source}")]
    Settle {
        /// `ack`, `nack` or `reject`.
        operation: &'static str,
        /// The delivery tag.
        delivery_tag: u64,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A low-cardinality `error.type` for a lapin error: the AMQP error name for broker errors
/// (e.g. `NOT_FOUND`), or the kind of client error (e.g. `InvalidChannelState`).
pub fn error_type(error: &lapin::Error) -> String {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => format!("{:?}", amqp.kind())
            .rsplit('(')
            .next()
            .unwrap_or("ProtocolError")
            .trim_end_matches(')')
            .to_owned(),
        other => format!("{other:?}")
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("AmqpError")
            .to_owned(),
    }
}
