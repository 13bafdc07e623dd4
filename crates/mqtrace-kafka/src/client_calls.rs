//! The rdkafka client calls the wrappers pass through, so a traced service needs no
//! `inner()` for them and meets one error type, [`Error`], at every call site.
//!
//! They trace nothing (only sends, receives, processing and [`TracedConsumer::commit_message`]
//! are traced) and behave exactly as rdkafka's `Producer`/`Consumer` methods of the same
//! names; a failure is [`Error::Client`], naming the call. Everything else stays reachable
//! through [`TracedProducer::inner`] and [`TracedConsumer::inner`].
//!
//! ```no_run
//! # fn run(consumer: mqtrace_kafka::TracedConsumer, producer: mqtrace_kafka::TracedProducer)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use rdkafka::consumer::CommitMode;
//! use rdkafka::{Offset, TopicPartitionList};
//!
//! let mut partitions = TopicPartitionList::new();
//! partitions.add_partition_offset("requests", 0, Offset::Beginning)?;
//! consumer.assign(&partitions)?;
//! consumer.pause(&partitions)?;
//! consumer.resume(&partitions)?;
//! consumer.seek("requests", 0, Offset::Offset(42), Duration::from_secs(5))?;
//! consumer.commit_consumer_state(CommitMode::Sync)?;
//! producer.flush(Duration::from_secs(10))?;
//! # Ok(()) }
//! ```

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::metadata::Metadata;
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::{TracedConsumer, TracedProducer};

/// `result` with a failure as [`Error::Client`] of `operation`.
fn call<T>(operation: &'static str, result: KafkaResult<T>) -> Result<T> {
    result.map_err(|source| Error::Client { operation, source })
}

impl<C: ClientContext + 'static> TracedProducer<C> {
    /// Waits until every message in flight is delivered (or failed), at most `timeout`
    /// (rdkafka's `Producer::flush`).
    pub fn flush<T: Into<Timeout>>(&self, timeout: T) -> Result<()> {
        call("flush", self.inner().flush(timeout))
    }

    /// Messages and requests not yet delivered (rdkafka's `Producer::in_flight_count`).
    pub fn in_flight_count(&self) -> i32 {
        self.inner().in_flight_count()
    }
}

impl<C: ConsumerContext + 'static> TracedConsumer<C> {
    /// Leaves the current subscription.
    pub fn unsubscribe(&self) {
        self.inner().unsubscribe();
    }

    /// The topics subscribed to.
    pub fn subscription(&self) -> Result<TopicPartitionList> {
        call("subscription", self.inner().subscription())
    }

    /// Reads exactly `assignment`, without a group's rebalancing.
    pub fn assign(&self, assignment: &TopicPartitionList) -> Result<()> {
        call("assign", self.inner().assign(assignment))
    }

    /// Drops the current assignment.
    pub fn unassign(&self) -> Result<()> {
        call("unassign", self.inner().unassign())
    }

    /// The partitions currently assigned.
    pub fn assignment(&self) -> Result<TopicPartitionList> {
        call("assignment", self.inner().assignment())
    }

    /// Moves the read position of an assigned partition to `offset`.
    pub fn seek<T: Into<Timeout>>(
        &self,
        topic: &str,
        partition: i32,
        offset: Offset,
        timeout: T,
    ) -> Result<()> {
        call("seek", self.inner().seek(topic, partition, offset, timeout))
    }

    /// Stops fetching from `partitions` until [`resume`](Self::resume).
    pub fn pause(&self, partitions: &TopicPartitionList) -> Result<()> {
        call("pause", self.inner().pause(partitions))
    }

    /// Fetches from paused `partitions` again.
    pub fn resume(&self, partitions: &TopicPartitionList) -> Result<()> {
        call("resume", self.inner().resume(partitions))
    }

    /// Commits the offsets in `offsets` (each the next offset to read), untraced; for one
    /// message's offset with a settle span, [`commit_message`](Self::commit_message).
    pub fn commit(&self, offsets: &TopicPartitionList, mode: CommitMode) -> Result<()> {
        call("commit", self.inner().commit(offsets, mode))
    }

    /// Commits the offsets stored so far (the consumer's current state), untraced.
    pub fn commit_consumer_state(&self, mode: CommitMode) -> Result<()> {
        call(
            "commit_consumer_state",
            self.inner().commit_consumer_state(mode),
        )
    }

    /// Stores `offset` as the next to commit for the partition (with
    /// `enable.auto.offset.store=false`; the auto-commit or a `commit_consumer_state` commits
    /// it).
    pub fn store_offset(&self, topic: &str, partition: i32, offset: i64) -> Result<()> {
        call(
            "store_offset",
            self.inner().store_offset(topic, partition, offset),
        )
    }

    /// The committed offsets of the assigned partitions, asking the broker (at most
    /// `timeout`).
    pub fn committed<T: Into<Timeout>>(&self, timeout: T) -> Result<TopicPartitionList> {
        call("committed", self.inner().committed(timeout))
    }

    /// The read positions of the assigned partitions.
    pub fn position(&self) -> Result<TopicPartitionList> {
        call("position", self.inner().position())
    }

    /// The low and high watermarks of a partition, asking the broker (at most `timeout`).
    pub fn fetch_watermarks<T: Into<Timeout>>(
        &self,
        topic: &str,
        partition: i32,
        timeout: T,
    ) -> Result<(i64, i64)> {
        call(
            "fetch_watermarks",
            self.inner().fetch_watermarks(topic, partition, timeout),
        )
    }

    /// The cluster's metadata, for one topic or all (at most `timeout`).
    pub fn fetch_metadata<T: Into<Timeout>>(
        &self,
        topic: Option<&str>,
        timeout: T,
    ) -> Result<Metadata> {
        call(
            "fetch_metadata",
            self.inner().fetch_metadata(topic, timeout),
        )
    }
}
