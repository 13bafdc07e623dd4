//! The error type of `mqtrace-kafka`.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;

/// Errors from traced Kafka clients. The span of the failed operation carries the same
/// information (`error.type` and an error status).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client could not be created from its configuration.
    #[error(
        "cannot create the Kafka {client}: {source} (check bootstrap.servers and the other client properties)"
    )]
    Create {
        /// `producer` or `consumer`.
        client: &'static str,
        /// rdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The message was not delivered; it is handed back so it can be retried.
    #[error("message to topic '{topic}' was not delivered: {source}")]
    Delivery {
        /// The destination topic.
        topic: String,
        /// rdkafka's error.
        #[source]
        source: KafkaError,
        /// The message, as it was to be sent (headers included).
        message: Box<OwnedMessage>,
    },
    /// Receiving from the broker failed.
    #[error("receiving from Kafka failed: {0}")]
    Receive(#[source] KafkaError),
    /// Committing an offset failed.
    #[error("committing offset {offset} of {topic}[{partition}] failed: {source}")]
    Commit {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset of the message being committed.
        offset: i64,
        /// rdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// Committing a processed batch's offsets failed; the batch will be redelivered.
    #[error("committing the offsets of a processed batch ({offsets}) failed: {source}")]
    CommitBatch {
        /// `topic[partition]@offset` for each partition of the batch.
        offsets: String,
        /// rdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A client call passed through to rdkafka failed (`flush`, `assign`, `seek`, `pause`,
    /// `commit`...; see the wrappers' methods of those names).
    #[error("Kafka {operation} failed: {source}")]
    Client {
        /// The call, as rdkafka names it.
        operation: &'static str,
        /// rdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// Subscribing to topics failed.
    #[error("subscribing to {topics:?} failed: {source}")]
    Subscribe {
        /// The topics.
        topics: Vec<String>,
        /// rdkafka's error.
        #[source]
        source: KafkaError,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether a [`Error::Delivery`] failed because this message is refused for good (too
    /// large for `message.max.bytes` on the client or the broker, invalid, not authorized,
    /// an unknown topic): sending it again would fail the same way. Timeouts, full queues and
    /// brokers that are down are not rejections: a later attempt may succeed.
    pub fn is_rejected(&self) -> bool {
        match self {
            Error::Delivery { source, .. } => source.rdkafka_error_code().is_some_and(rejects),
            _ => false,
        }
    }
}

/// Error codes after which the same message cannot be delivered by trying again.
fn rejects(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BadMessage
            | C::InvalidArgument
            | C::KeySerialization
            | C::ValueSerialization
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::InvalidMessage
            | C::InvalidMessageSize
            | C::MessageSizeTooLarge
            | C::InvalidTopic
            | C::MessageBatchTooLarge
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::UnsupportedForMessageFormat
            | C::PolicyViolation
            | C::InvalidRecord
    )
}

/// A low-cardinality `error.type` for a Kafka error: the librdkafka error code's name
/// (e.g. `MessageTimedOut`), or the error's kind when it has no code.
pub fn error_type(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => {
            let debug = format!("{error:?}");
            debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("KafkaError")
                .to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(error: KafkaError) -> Error {
        Error::Delivery {
            topic: "t".to_owned(),
            source: error,
            message: Box::new(OwnedMessage::new(
                None,
                None,
                "t".to_owned(),
                rdkafka::Timestamp::NotAvailable,
                0,
                0,
                None,
            )),
        }
    }

    #[test]
    fn too_large_and_unknown_topics_are_rejections_timeouts_are_not() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidMessageSize,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopic,
        ] {
            assert!(
                delivery(KafkaError::MessageProduction(code)).is_rejected(),
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert!(
                !delivery(KafkaError::MessageProduction(code)).is_rejected(),
                "{code:?}"
            );
        }
        assert!(
            !Error::Receive(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
            ))
            .is_rejected(),
            "only deliveries are classified"
        );
    }
}
