//! The error type of `mqtrace-amqp`.

use crate::publisher::Unconfirmed;

/// Errors from traced AMQP clients. The span of the failed operation carries the same
/// information (`error.type` and an error status).
///
/// A publish that may not have been stored ([`Error::Publish`], [`Error::Nacked`]) hands its
/// message back: [`Error::into_unconfirmed`] gives it, to publish again with
/// [`TracedPublisher::republish`](crate::TracedPublisher::republish).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A channel could not be opened or configured (e.g. publisher confirms).
    #[error("cannot open an AMQP channel: {0} (is the connection still open?)")]
    Channel(#[source] lapin::Error),
    /// The broker did not confirm the publish: it could not be handed to the broker, or the
    /// channel or connection closed before the confirm came (the broker closes the channel
    /// when the exchange does not exist; a broker restart or `rabbitmqctl close_connection`
    /// closes the connection). The broker may or may not have stored the message; it comes
    /// back in `message`. The next publish reopens a closed channel; a closed connection
    /// needs [`TracedPublisher::reconnect`](crate::TracedPublisher::reconnect).
    #[error(
        "publishing to '{destination}' was not confirmed: {source} (the message is in this error: Error::into_unconfirmed, then TracedPublisher::republish; reconnect first if the connection closed)"
    )]
    Publish {
        /// The destination (`exchange:routing key`).
        destination: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
        /// The message, to publish again.
        message: Box<Unconfirmed>,
    },
    /// The broker negatively acknowledged the message: it was not stored.
    #[error(
        "the broker refused (nacked) the message to '{destination}'; it was not stored: republish it (Error::into_unconfirmed, then TracedPublisher::republish)"
    )]
    Nacked {
        /// The destination (`exchange:routing key`).
        destination: String,
        /// The message, to publish again.
        message: Box<Unconfirmed>,
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

impl Error {
    /// The message of a publish the broker did not confirm ([`Error::Publish`],
    /// [`Error::Nacked`]); `None` for other errors, after which publishing again would not
    /// help (an unroutable message comes back as [`Error::Returned`]).
    pub fn unconfirmed(&self) -> Option<&Unconfirmed> {
        match self {
            Error::Publish { message, .. } | Error::Nacked { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Whether the broker refused this message for good: it came back unroutable
    /// ([`Error::Returned`]: no queue is bound for it), or the broker closed the channel
    /// with `PRECONDITION_FAILED` over it (a message larger than `max_message_size`, for
    /// one). Publishing the same message again would fail the same way.
    pub fn is_rejected(&self) -> bool {
        match self {
            Error::Returned { .. } => true,
            Error::Publish { source, .. } => matches!(
                source.kind(),
                lapin::ErrorKind::ProtocolError(amqp)
                    if *amqp.kind()
                        == lapin::protocol::AMQPErrorKind::Soft(
                            lapin::protocol::AMQPSoftError::PRECONDITIONFAILED
                        )
            ),
            _ => false,
        }
    }

    /// Takes the message of a publish the broker did not confirm, to give to
    /// [`TracedPublisher::republish`](crate::TracedPublisher::republish); any other error is
    /// given back unchanged.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(publisher: mqtrace_amqp::TracedPublisher) -> Result<(), mqtrace_amqp::Error> {
    /// use lapin::BasicProperties;
    /// use lapin::options::BasicPublishOptions;
    ///
    /// let sent = publisher
    ///     .publish("", "requests", BasicPublishOptions::default(), b"{}", BasicProperties::default())
    ///     .await;
    /// if let Err(error) = sent {
    ///     // A nacked or unconfirmed message is published again; any other error is returned.
    ///     publisher.republish(error.into_unconfirmed()?).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn into_unconfirmed(self) -> std::result::Result<Unconfirmed, Self> {
        match self {
            Error::Publish { message, .. } | Error::Nacked { message, .. } => Ok(*message),
            other => Err(other),
        }
    }
}

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
