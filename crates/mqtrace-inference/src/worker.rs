//! [`Worker`]: takes requests off a [`MessageSource`] in batches, scores them, replies to each
//! in its own trace, and settles the batch only once every reply is confirmed.
//!
//! ```text
//! process {destination} (CONSUMER, batch)   links -> every request's send span
//! ├── features.fetch        decode requests, one store round trip (db.system.name)
//! ├── features.preprocess   validation, data-quality counts, the feature matrix
//! ├── model.execute         ml.model.*, device; phase children (cpu.compute | gpu.h2d/compute/d2h)
//! ├── postprocess           decisions; event rule_triggered per fired rule
//! ├── send {dead letters}   parent: the batch, link -> the original request
//! └── commit/ack            settle spans, after every reply was confirmed
//! send {replies} (PRODUCER) parent: the request's own context, link -> the batch span
//! ```
//!
//! # Requests the worker cannot score
//!
//! A request that is not JSON, misses a required field, fails validation or is larger than
//! [`WorkerConfig::max_request_bytes`] is never a poison pill. It goes to the dead-letter
//! destination with its payload unchanged and the `mqtrace.dlq.*` headers (reason, error,
//! source topic, partition and offset). When that letter cannot be sent — the destination
//! rejects it for good ([`SendFailure::Rejected`]: too large, invalid, not authorized) or
//! it still fails after [`WorkerConfig::send_retries`] retries — a truncated letter goes
//! instead: the same headers plus [`DLQ_TRUNCATED_HEADER`] and [`DLQ_PAYLOAD_SIZE_HEADER`],
//! no payload. When even that cannot be sent, the request is skipped: an error log says
//! where it is (topic, partition, offset) and `mqtrace.worker.dead_letter.skipped` counts it.
//!
//! # When a batch is settled
//!
//! Replies are sent first; a reply that cannot be sent after its retries fails the batch,
//! which stays unsettled (delivered again) and stops the worker with [`WorkerError::Send`]:
//! at-least-once for every good request. Dead letters come after the replies, so a broker
//! that is down fails the batch on its replies before any dead letter is given up. Each
//! request that could not be scored is then sent whole, sent truncated, or skipped (counted,
//! logged), and never holds its batch back: the batch is settled once every reply is
//! confirmed.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use futures::future::join_all;
use mqtrace_core::batch::{
    BatchSpanBuilder, InboundMessage, LinkAttributes, MessageSink, MessageSource, Outgoing,
    ReceiveFailure, SendFailure,
};
use mqtrace_core::{Instrumentation, MessagingSpanBuilder, OperationType, semconv};
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{Link, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::collector::{BatchCollector, BatchConfig, Shutdown};
use crate::features::{FeatureStore, PROFILE_FEATURES, UserProfile};
use crate::metrics::{
    DEAD_LETTER_REASON, DEAD_LETTER_REJECTED, DEAD_LETTER_RETRIES_EXHAUSTED, ML_DECISION,
    WorkerMetrics,
};
use crate::model::{InstrumentedModel, Model, ModelError};
use crate::postprocess::{ML_OUTPUT_SCORE_BUCKET, decide, score_bucket};
use crate::request::{Finding, Malformed, REQUEST_FEATURES, Request, feature};

/// Features per model input row: request features, then the user's profile.
pub const INPUT_WIDTH: usize = REQUEST_FEATURES + PROFILE_FEATURES;

/// Batch span attribute: how long the batch took to form (first message received → batch
/// handed to the worker), in milliseconds. `mqtrace journeys` splits queue wait from batch
/// wait with it.
pub const MQTRACE_BATCH_FORMATION_MS: &str = "mqtrace.batch.formation_ms";

/// Dead-letter header: why the request could not be scored (`not_json`, `missing_field`...).
pub const DLQ_REASON_HEADER: &str = "mqtrace.dlq.reason";
/// Dead-letter header: the validation error in words.
pub const DLQ_ERROR_HEADER: &str = "mqtrace.dlq.error";
/// Dead-letter header: where the request was consumed from.
pub const DLQ_SOURCE_HEADER: &str = "mqtrace.dlq.source";
/// Dead-letter header: the partition the request was consumed from (Kafka).
pub const DLQ_SOURCE_PARTITION_HEADER: &str = "mqtrace.dlq.source.partition";
/// Dead-letter header: the request's offset in that partition (Kafka).
pub const DLQ_SOURCE_OFFSET_HEADER: &str = "mqtrace.dlq.source.offset";
/// Dead-letter header: the request's message id, when it had one (AMQP `message_id`).
pub const DLQ_SOURCE_MESSAGE_ID_HEADER: &str = "mqtrace.dlq.source.message_id";
/// Dead-letter header, on a letter sent without the request's payload: why the whole letter
/// could not be sent (the send error in words).
pub const DLQ_TRUNCATED_HEADER: &str = "mqtrace.dlq.truncated";
/// Dead-letter header, on a truncated letter: the size of the request's payload in bytes.
pub const DLQ_PAYLOAD_SIZE_HEADER: &str = "mqtrace.dlq.payload_size";

/// Largest request body the worker parses by default (1 MiB); larger ones are dead-lettered
/// as `too_large` unread.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// A truncated dead letter keeps the request's key only up to this size.
const TRUNCATED_KEY_LIMIT: usize = 1024;

/// How long a worker pauses after a transient receive error before receiving again (the
/// client reconnects meanwhile; librdkafka reports a broker outage about once a second).
pub const RECEIVE_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How the worker batches, replies and dead-letters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Batch limits.
    pub batch: BatchConfig,
    /// Where replies go (topic, or queue).
    pub reply_destination: String,
    /// Where malformed requests go.
    pub dead_letter_destination: String,
    /// Links per span (match the tracer provider's limit).
    pub link_limit: usize,
    /// What each link of a batch span carries (default: the message's identity).
    pub link_attributes: LinkAttributes,
    /// Also start a CONSUMER `process` span per message in its request's trace.
    pub per_message_spans: bool,
    /// How often a failed reply or dead letter is retried before the worker gives up on it
    /// (a failure the sink classifies as [`SendFailure::Rejected`] is not retried).
    pub send_retries: u32,
    /// Largest request body the worker parses; a larger one is dead-lettered as `too_large`.
    pub max_request_bytes: usize,
}

impl WorkerConfig {
    /// Replies to `reply_destination`, dead letters to `dead_letter_destination`; default
    /// batches, the link limit from the environment, no per-message spans, 5 retries,
    /// requests up to [`DEFAULT_MAX_REQUEST_BYTES`].
    pub fn new(
        reply_destination: impl Into<String>,
        dead_letter_destination: impl Into<String>,
    ) -> Self {
        Self {
            batch: BatchConfig::default(),
            reply_destination: reply_destination.into(),
            dead_letter_destination: dead_letter_destination.into(),
            link_limit: mqtrace_core::batch::link_limit_from_env(),
            link_attributes: LinkAttributes::default(),
            per_message_spans: false,
            send_retries: 5,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }

    /// Sets the batch limits.
    pub fn with_batch(mut self, batch: BatchConfig) -> Self {
        self.batch = batch;
        self
    }

    /// Sets the link limit.
    pub fn with_link_limit(mut self, link_limit: usize) -> Self {
        self.link_limit = link_limit.max(1);
        self
    }

    /// What each link of a batch span carries: [`LinkAttributes::None`] links only span
    /// contexts, the cheapest for very large batches.
    pub fn with_link_attributes(mut self, link_attributes: LinkAttributes) -> Self {
        self.link_attributes = link_attributes;
        self
    }

    /// Turns per-message process spans on or off.
    pub fn with_per_message_spans(mut self, on: bool) -> Self {
        self.per_message_spans = on;
        self
    }

    /// Sets how often a failed reply or dead letter is retried.
    pub fn with_send_retries(mut self, retries: u32) -> Self {
        self.send_retries = retries;
        self
    }

    /// Sets the largest request body the worker parses (at least 1 byte); larger requests
    /// are dead-lettered as `too_large` without being read.
    pub fn with_max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes.max(1);
        self
    }
}

/// What a worker has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Batches processed and settled.
    pub batches: u64,
    /// Messages in those batches.
    pub messages: u64,
    /// Replies confirmed by the broker.
    pub replies: u64,
    /// Requests sent to the dead-letter destination, whole or truncated.
    pub dead_lettered: u64,
    /// Of those, the ones sent without their payload (the whole letter could not be sent).
    pub dead_letters_truncated: u64,
    /// Requests that could not be scored nor dead-lettered, not even truncated: skipped,
    /// with an error log saying where they are.
    pub dead_letters_skipped: u64,
    /// Seconds spent in model execution.
    pub model_seconds: f64,
    /// Seconds spent processing batches (from batch start to settle).
    pub busy_seconds: f64,
    /// Batches whose replies were all sent but whose commit or ack failed; they will be
    /// delivered again (to this worker or the one that owns them now).
    pub settle_failures: u64,
    /// Transient receive errors the worker rode out (a broker restarting, a connection
    /// dropped: [`ReceiveFailure::Transient`]); a fatal one stops it.
    pub receive_errors: u64,
}

/// Why a worker stopped. Its current batch was not settled, so it will be delivered again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Receiving from the source failed.
    #[error("receiving requests failed: {0}")]
    Receive(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The feature store failed.
    #[error(transparent)]
    Features(#[from] crate::features::FeatureStoreError),
    /// The model failed.
    #[error("model execution failed: {0}")]
    Model(#[from] ModelError),
    /// A reply could not be sent after retries (dead letters never stop the worker: they
    /// fall back to a truncated letter, then to a counted skip).
    #[error(
        "sending to '{destination}' failed after {attempts} attempts: {source} (the batch was not settled and will be delivered again)"
    )]
    Send {
        /// Destination.
        destination: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Settling (commit, ack) failed.
    #[error("settling the batch failed (it will be delivered again): {0}")]
    Settle(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A batch-inference worker over any source and sink.
///
/// # Example
///
/// ```no_run
/// # async fn run<S: mqtrace_core::batch::MessageSource, K: mqtrace_core::batch::MessageSink>(source: S, sink: K) -> Result<(), Box<dyn std::error::Error>> {
/// use mqtrace_inference::{Shutdown, Worker, WorkerConfig, INPUT_WIDTH};
/// use mqtrace_inference::cpu::CpuModel;
/// use mqtrace_inference::features::InMemoryFeatureStore;
/// use mqtrace_inference::mlp::Mlp;
///
/// let model = CpuModel::new("fraud-mlp", "1", Mlp::seeded(INPUT_WIDTH, &[256, 256], 7));
/// let mut worker = Worker::new(
///     source,
///     sink,
///     InMemoryFeatureStore::generated(10_000, 7),
///     model,
///     WorkerConfig::new("inference-replies", "inference-requests.dlq"),
/// );
/// let stats = worker.run(&Shutdown::new()).await?;
/// println!("{} batches", stats.batches);
/// # Ok(()) }
/// ```
pub struct Worker<S: MessageSource, K, F, M> {
    collector: BatchCollector<S>,
    sink: K,
    store: F,
    model: InstrumentedModel<M>,
    instrumentation: Instrumentation,
    metrics: WorkerMetrics,
    config: WorkerConfig,
    stats: WorkerStats,
}

impl<S: MessageSource, K, F, M> fmt::Debug for Worker<S, K, F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A scored request, ready to be answered.
struct Scored {
    index: usize,
    payload: String,
    attributes: [KeyValue; 2],
}

/// A request that goes to the dead-letter destination.
struct DeadLetter<'b> {
    index: usize,
    malformed: &'b Malformed,
}

/// A send that failed for good, or after every retry.
struct SendFailed {
    error: Box<dyn std::error::Error + Send + Sync>,
    failure: SendFailure,
    attempts: u32,
}

impl SendFailed {
    /// `error.type` on the dead-letter fallback counters.
    fn error_type(&self) -> &'static str {
        match self.failure {
            SendFailure::Rejected => DEAD_LETTER_REJECTED,
            _ => DEAD_LETTER_RETRIES_EXHAUSTED,
        }
    }
}

/// What became of a request that could not be scored.
enum DeadLetterOutcome {
    /// Dead-lettered with its payload.
    Whole,
    /// Dead-lettered without its payload: the whole letter failed.
    Truncated { whole: SendFailed },
    /// Not dead-lettered at all: the truncated letter failed too.
    Skipped {
        whole: SendFailed,
        truncated: SendFailed,
    },
}

/// What to do after attempt number `attempt` (1-based) of a send failed with `failure`:
/// wait and retry, or give up (`None`). A rejected message is not sent again; anything else
/// is retried `retries` times with exponential backoff.
fn retry_after(failure: SendFailure, attempt: u32, retries: u32) -> Option<Duration> {
    match failure {
        SendFailure::Rejected => None,
        _ if attempt > retries => None,
        _ => Some(backoff(attempt)),
    }
}

/// 100 ms before the first retry, doubling, at most 5 s.
fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(6);
    (Duration::from_millis(100) * 2_u32.pow(doublings)).min(Duration::from_secs(5))
}

/// The `mqtrace.dlq.source.*` headers locating a message in its source, from its identity
/// (partition and offset, message id); what a broker identifies only per connection (an AMQP
/// delivery tag) is left out.
fn reference_headers(identity: &[KeyValue]) -> Vec<(&'static str, String)> {
    identity
        .iter()
        .filter_map(|kv| {
            let header = match kv.key.as_str() {
                semconv::MESSAGING_DESTINATION_PARTITION_ID => DLQ_SOURCE_PARTITION_HEADER,
                semconv::MESSAGING_KAFKA_OFFSET => DLQ_SOURCE_OFFSET_HEADER,
                semconv::MESSAGING_MESSAGE_ID => DLQ_SOURCE_MESSAGE_ID_HEADER,
                _ => return None,
            };
            Some((header, kv.value.as_str().into_owned()))
        })
        .collect()
}

/// `topic[partition]@offset` (or what of it is known), for logs about a skipped message.
fn position(destination: &str, reference: &[(&'static str, String)]) -> String {
    let find = |name: &str| {
        reference
            .iter()
            .find(|(header, _)| *header == name)
            .map(|(_, value)| value.as_str())
    };
    let mut position = destination.to_owned();
    if let Some(partition) = find(DLQ_SOURCE_PARTITION_HEADER) {
        position.push_str(&format!("[{partition}]"));
    }
    if let Some(offset) = find(DLQ_SOURCE_OFFSET_HEADER) {
        position.push_str(&format!("@{offset}"));
    }
    if let Some(id) = find(DLQ_SOURCE_MESSAGE_ID_HEADER) {
        position.push_str(&format!(" message_id={id}"));
    }
    position
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    error: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(error)
}

impl<S, K, F, M> Worker<S, K, F, M>
where
    S: MessageSource,
    K: MessageSink,
    F: FeatureStore,
    M: Model,
{
    /// A worker with the global telemetry providers.
    pub fn new(source: S, sink: K, store: F, model: M, config: WorkerConfig) -> Self {
        Self::with_instrumentation(
            source,
            sink,
            store,
            model,
            config,
            Instrumentation::global(),
        )
    }

    /// A worker recording with `instrumentation`.
    pub fn with_instrumentation(
        source: S,
        sink: K,
        store: F,
        model: M,
        config: WorkerConfig,
        instrumentation: Instrumentation,
    ) -> Self {
        let metrics = WorkerMetrics::new(instrumentation.meter());
        Self {
            collector: BatchCollector::new(source, config.batch),
            sink,
            store,
            model: InstrumentedModel::with_metrics(model, instrumentation.clone(), metrics.clone()),
            metrics,
            instrumentation,
            config,
            stats: WorkerStats::default(),
        }
    }

    /// What the worker has done so far.
    pub fn stats(&self) -> WorkerStats {
        self.stats
    }

    /// The source (to inspect the consumer, for one).
    pub fn source(&self) -> &S {
        self.collector.source()
    }

    /// The model.
    pub fn model(&self) -> &M {
        self.model.inner()
    }

    /// Runs until `shutdown` is triggered (the open batch is still processed) or the source
    /// ends. On error the current batch is left unsettled, so it is delivered again. A batch
    /// that was answered but could not be settled (see [`WorkerStats::settle_failures`]) does
    /// not stop the worker, nor does a transient receive error (the source's
    /// [`MessageSource::receive_failure`]: a broker restarting; see
    /// [`WorkerStats::receive_errors`]): the worker pauses [`RECEIVE_RETRY_PAUSE`] and receives
    /// again.
    pub async fn run(&mut self, shutdown: &Shutdown) -> Result<WorkerStats, WorkerError> {
        loop {
            let batch = match self.collector.next_batch(shutdown).await {
                Ok(batch) => batch,
                // The broker is away (restarting, a connection dropped) and the client
                // reconnects on its own: count it, pause a moment, and receive again.
                Err(error)
                    if self.collector.source().receive_failure(&error)
                        == ReceiveFailure::Transient =>
                {
                    self.stats.receive_errors += 1;
                    if self.stats.receive_errors.is_power_of_two() {
                        tracing::warn!(
                            %error,
                            receive_errors = self.stats.receive_errors,
                            "receiving requests failed; the client reconnects, the worker keeps receiving"
                        );
                    }
                    tokio::select! {
                        () = shutdown.triggered() => {}
                        () = tokio::time::sleep(RECEIVE_RETRY_PAUSE) => {}
                    }
                    continue;
                }
                Err(error) => return Err(WorkerError::Receive(boxed(error))),
            };
            let Some(batch) = batch else {
                return Ok(self.stats);
            };
            let formation = self.collector.last_formation();
            match self.process_formed(batch, formation).await {
                // Every reply was sent; only the commit/ack failed (a rebalance took the
                // partitions, the channel closed). The batch comes back to whoever owns it
                // now, which is at-least-once: keep going.
                Err(WorkerError::Settle(_)) => self.stats.settle_failures += 1,
                other => other?,
            }
        }
    }

    /// Processes, answers and settles one batch.
    pub async fn process_batch(&mut self, batch: Vec<S::Message>) -> Result<(), WorkerError> {
        self.process_formed(batch, None).await
    }

    /// [`Worker::process_batch`] for a batch that took `formation` to collect (recorded on the
    /// batch span as [`MQTRACE_BATCH_FORMATION_MS`]).
    async fn process_formed(
        &mut self,
        batch: Vec<S::Message>,
        formation: Option<Duration>,
    ) -> Result<(), WorkerError> {
        if batch.is_empty() {
            return Ok(());
        }
        let size = batch.len();
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let destination = batch[0].destination().to_owned();
        let destination_kv =
            KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, destination.clone());
        self.metrics.record_batch(&destination_kv, size);
        for message in &batch {
            if let Some(wait) = message
                .enqueued_at()
                .and_then(|at| started_wall.duration_since(at).ok())
            {
                self.metrics
                    .record_queue_wait(&destination_kv, wait.as_secs_f64());
            }
        }
        let source = self.collector.source();
        let batch_span = BatchSpanBuilder::new(source.system(), destination.clone())
            .with_link_limit(self.config.link_limit)
            .with_link_attributes(self.config.link_attributes)
            .with_consumer_group(source.consumer_group())
            .with_client_id(source.client_id())
            .with_attributes(formation.map(|formation| {
                KeyValue::new(MQTRACE_BATCH_FORMATION_MS, formation.as_secs_f64() * 1e3)
            }))
            .start(&self.instrumentation, &batch, &Context::new());
        let batch_cx = batch_span.context().clone();

        let result = self.handle(&batch, &batch_cx, batch_span.link()).await;
        let result = match result {
            Ok(()) => self
                .collector
                .source_mut()
                .settle(&batch, &batch_cx)
                .await
                .map_err(|e| WorkerError::Settle(boxed(e))),
            Err(error) => Err(error),
        };
        self.metrics.record_settled(size);
        match result {
            Ok(()) => {
                {
                    let _guard = batch_cx.clone().attach();
                    tracing::info!(batch_size = size, "batch processed and settled");
                }
                batch_span.end();
                self.stats.batches += 1;
                self.stats.messages += size as u64;
                self.stats.busy_seconds += started.elapsed().as_secs_f64();
                Ok(())
            }
            Err(error) => {
                {
                    let _guard = batch_cx.clone().attach();
                    tracing::error!(%error, batch_size = size, "batch failed; it will be delivered again");
                }
                batch_span.end_with_error(error_type(&error), error.to_string());
                Err(error)
            }
        }
    }

    fn internal_span(
        &self,
        name: &'static str,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Context {
        let tracer = self.instrumentation.tracer();
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start_with_context(&*tracer, parent);
        parent.with_span(span)
    }

    async fn handle(
        &mut self,
        batch: &[S::Message],
        batch_cx: &Context,
        batch_link: Link,
    ) -> Result<(), WorkerError> {
        // features.fetch: decode the requests, look every user up in one round trip.
        let mut fetch_attributes = self.store.span_attributes();
        fetch_attributes.push(KeyValue::new("db.system.name", self.store.system()));
        fetch_attributes.push(KeyValue::new(
            semconv::MESSAGING_BATCH_MESSAGE_COUNT,
            batch.len() as i64,
        ));
        let fetch_cx = self.internal_span("features.fetch", batch_cx, fetch_attributes);
        let max_request_bytes = self.config.max_request_bytes;
        let parsed: Vec<Result<Request, Malformed>> = batch
            .iter()
            .map(|m| Request::parse_at_most(m.payload(), max_request_bytes))
            .collect();
        let user_ids: Vec<&str> = parsed
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|r| r.user_id.as_str()))
            .collect();
        let profiles = match self
            .store
            .fetch(&user_ids)
            .with_context(fetch_cx.clone())
            .await
        {
            Ok(profiles) => profiles,
            Err(error) => {
                end_with_error(&fetch_cx, "feature_store", &error.to_string());
                return Err(error.into());
            }
        };
        fetch_cx.span().end();

        // features.preprocess: data quality and the feature matrix.
        let preprocess_cx = self.internal_span("features.preprocess", batch_cx, Vec::new());
        let mut rows: Vec<f32> = Vec::with_capacity(user_ids.len() * INPUT_WIDTH);
        let mut valid: Vec<(usize, &Request, Option<&UserProfile>)> =
            Vec::with_capacity(user_ids.len());
        let mut dead_letters = Vec::new();
        let mut findings = 0_i64;
        let mut profiles = profiles.iter();
        for (index, request) in parsed.iter().enumerate() {
            match request {
                Err(malformed) => {
                    preprocess_cx.span().add_event(
                        "request.malformed",
                        vec![
                            KeyValue::new(DEAD_LETTER_REASON, malformed.reason()),
                            KeyValue::new("mqtrace.batch.index", index as i64),
                        ],
                    );
                    dead_letters.push(DeadLetter { index, malformed });
                }
                Ok(request) => {
                    let profile = profiles.next().and_then(Option::as_ref);
                    for finding in &request.findings {
                        findings += 1;
                        match finding {
                            Finding::Missing(name) => self.metrics.record_missing(name),
                            Finding::Mismatch(name) => self.metrics.record_mismatch(name),
                        }
                    }
                    let start = rows.len();
                    rows.resize(start + INPUT_WIDTH, 0.0);
                    let row = &mut rows[start..];
                    request.write_features(profile.map(|p| p.home_country.as_str()), row);
                    match profile {
                        Some(profile) => row[REQUEST_FEATURES..].copy_from_slice(&profile.features),
                        None => {
                            findings += 1;
                            self.metrics.record_missing(feature::USER_PROFILE);
                        }
                    }
                    valid.push((index, request, profile));
                }
            }
        }
        let preprocess_span = preprocess_cx.span();
        preprocess_span.set_attribute(KeyValue::new("mqtrace.data_quality.findings", findings));
        preprocess_span.set_attribute(KeyValue::new(
            "mqtrace.batch.malformed",
            dead_letters.len() as i64,
        ));
        preprocess_span.end();

        // model.execute
        let scores = if valid.is_empty() {
            Vec::new()
        } else {
            let model_started = Instant::now();
            let model = &mut self.model;
            let scores = run_blocking(|| model.execute(&rows, valid.len(), batch_cx))?;
            self.stats.model_seconds += model_started.elapsed().as_secs_f64();
            scores
        };

        // postprocess: decisions and rules.
        let post_cx = self.internal_span("postprocess", batch_cx, Vec::new());
        let mut scored = Vec::with_capacity(valid.len());
        for ((index, request, profile), score) in valid.iter().zip(&scores) {
            let (decision, rules) = decide(*score, request, *profile);
            for rule in &rules {
                post_cx.span().add_event(
                    "rule_triggered",
                    vec![
                        KeyValue::new("rule.name", *rule),
                        KeyValue::new("mqtrace.batch.index", *index as i64),
                    ],
                );
            }
            self.metrics.record_decision(decision.as_str());
            let payload = serde_json::json!({
                "request_id": request.request_id,
                "score": score,
                "decision": decision.as_str(),
                "rules": rules,
                "model": self.model.inner().name(),
                "model_version": self.model.inner().version(),
            })
            .to_string();
            scored.push(Scored {
                index: *index,
                payload,
                attributes: [
                    KeyValue::new(ML_DECISION, decision.as_str()),
                    KeyValue::new(ML_OUTPUT_SCORE_BUCKET, score_bucket(*score)),
                ],
            });
        }
        post_cx.span().end();

        // Replies: each in its request's own trace, linked to the batch. First, so that a
        // broker that is down fails the batch before any dead letter is given up.
        self.send_replies(batch, &scored, batch_link).await?;
        // Dead letters: parent the batch, link the original; they never fail the batch.
        self.send_dead_letters(batch, batch_cx, &dead_letters).await;
        Ok(())
    }

    /// Dead-letters each request that could not be scored: whole, else truncated, else
    /// skipped; records which on the batch span, the metrics and the stats.
    async fn send_dead_letters(
        &mut self,
        batch: &[S::Message],
        batch_cx: &Context,
        dead_letters: &[DeadLetter<'_>],
    ) {
        for letter in dead_letters {
            let message = &batch[letter.index];
            let reason = letter.malformed.reason();
            let reference = reference_headers(&message.identity());
            let outcome = self
                .dead_letter(message, letter.malformed, &reference, batch_cx)
                .await;
            let index = KeyValue::new("mqtrace.batch.index", letter.index as i64);
            let _guard = batch_cx.clone().attach();
            match outcome {
                DeadLetterOutcome::Whole => {
                    self.metrics.record_dead_lettered(reason);
                    self.stats.dead_lettered += 1;
                    batch_cx.span().add_event(
                        "request.dead_lettered",
                        vec![KeyValue::new(DEAD_LETTER_REASON, reason), index],
                    );
                }
                DeadLetterOutcome::Truncated { whole } => {
                    tracing::warn!(
                        reason,
                        source = %position(message.destination(), &reference),
                        error = %whole.error,
                        attempts = whole.attempts,
                        destination = %self.config.dead_letter_destination,
                        "the dead letter could not be sent whole; sent it without its payload"
                    );
                    self.metrics.record_dead_lettered(reason);
                    self.metrics
                        .record_dead_letter_truncated(reason, whole.error_type());
                    self.stats.dead_lettered += 1;
                    self.stats.dead_letters_truncated += 1;
                    batch_cx.span().add_event(
                        "request.dead_lettered",
                        vec![
                            KeyValue::new(DEAD_LETTER_REASON, reason),
                            index,
                            KeyValue::new("mqtrace.dead_letter.truncated", true),
                        ],
                    );
                }
                DeadLetterOutcome::Skipped { whole, truncated } => {
                    tracing::error!(
                        reason,
                        source = %position(message.destination(), &reference),
                        error = %truncated.error,
                        whole_letter_error = %whole.error,
                        destination = %self.config.dead_letter_destination,
                        "a request that cannot be scored could not be dead-lettered, not even \
                         without its payload; skipped it (it is still at its source position)"
                    );
                    self.metrics
                        .record_dead_letter_skipped(reason, truncated.error_type());
                    self.stats.dead_letters_skipped += 1;
                    batch_cx.span().add_event(
                        "request.dead_letter_skipped",
                        vec![
                            KeyValue::new(DEAD_LETTER_REASON, reason),
                            index,
                            KeyValue::new(semconv::ERROR_TYPE, truncated.error_type()),
                        ],
                    );
                }
            }
        }
    }

    /// Sends one dead letter whole, or truncated when the whole one cannot be sent.
    async fn dead_letter(
        &self,
        message: &S::Message,
        malformed: &Malformed,
        reference: &[(&'static str, String)],
        batch_cx: &Context,
    ) -> DeadLetterOutcome {
        let error = malformed.to_string();
        let mut headers: Vec<(&str, &[u8])> = vec![
            (DLQ_REASON_HEADER, malformed.reason().as_bytes()),
            (DLQ_ERROR_HEADER, error.as_bytes()),
            (DLQ_SOURCE_HEADER, message.destination().as_bytes()),
        ];
        headers.extend(reference.iter().map(|(k, v)| (*k, v.as_bytes())));
        let links: Vec<Link> = message.link().into_iter().collect();
        let whole = Outgoing::new(&self.config.dead_letter_destination, message.payload())
            .with_key(message.key())
            .with_headers(&headers)
            .with_message_id(message.message_id());
        let whole = match self.send_with_retries(whole, batch_cx, &links).await {
            Ok(()) => return DeadLetterOutcome::Whole,
            Err(failed) => failed,
        };

        let why = whole.error.to_string();
        let size = message.payload().len().to_string();
        headers.push((DLQ_TRUNCATED_HEADER, why.as_bytes()));
        headers.push((DLQ_PAYLOAD_SIZE_HEADER, size.as_bytes()));
        let truncated = Outgoing::new(&self.config.dead_letter_destination, &[])
            .with_key(message.key().filter(|key| key.len() <= TRUNCATED_KEY_LIMIT))
            .with_headers(&headers)
            .with_message_id(message.message_id());
        match self.send_with_retries(truncated, batch_cx, &links).await {
            Ok(()) => DeadLetterOutcome::Truncated { whole },
            Err(truncated) => DeadLetterOutcome::Skipped { whole, truncated },
        }
    }

    async fn send_replies(
        &mut self,
        batch: &[S::Message],
        scored: &[Scored],
        batch_link: Link,
    ) -> Result<(), WorkerError> {
        let system = self.collector.source().system();
        let per_message: Vec<Option<mqtrace_core::MessagingSpan>> = scored
            .iter()
            .map(|s| {
                self.config.per_message_spans.then(|| {
                    let message = &batch[s.index];
                    MessagingSpanBuilder::new(system, OperationType::Process, "process")
                        .with_destination(message.destination().to_owned())
                        .with_attributes(message.identity())
                        .with_attributes(s.attributes.iter().cloned())
                        .with_link(batch_link.clone())
                        .start(&self.instrumentation, &message.extracted().context)
                })
            })
            .collect();
        let sends = scored.iter().zip(&per_message).map(|(s, span)| {
            let message = &batch[s.index];
            let parent = span
                .as_ref()
                .map_or(&message.extracted().context, |span| span.context());
            let outgoing = Outgoing::new(&self.config.reply_destination, s.payload.as_bytes())
                .with_key(message.key())
                .with_message_id(message.message_id())
                .with_span_attributes(&s.attributes);
            self.send_with_retries(outgoing, parent, std::slice::from_ref(&batch_link))
        });
        let results = join_all(sends).await;
        for span in per_message.into_iter().flatten() {
            span.end();
        }
        let mut first_error = None;
        for result in results {
            match result {
                Ok(()) => self.stats.replies += 1,
                Err(failed) => {
                    first_error.get_or_insert(WorkerError::Send {
                        destination: self.config.reply_destination.clone(),
                        attempts: failed.attempts,
                        source: failed.error,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends, retrying a transient failure with exponential backoff (100 ms doubling, at
    /// most 5 s) up to [`WorkerConfig::send_retries`] times; a rejection is not retried.
    async fn send_with_retries(
        &self,
        outgoing: Outgoing<'_>,
        parent: &Context,
        links: &[Link],
    ) -> Result<(), SendFailed> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.sink.send(outgoing, parent, links.to_vec()).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let failure = self.sink.classify(&error);
            let Some(wait) = retry_after(failure, attempt, self.config.send_retries) else {
                return Err(SendFailed {
                    error: boxed(error),
                    failure,
                    attempts: attempt,
                });
            };
            {
                let _guard = parent.clone().attach();
                tracing::warn!(%error, attempt, destination = outgoing.destination, "send failed; retrying");
            }
            tokio::time::sleep(wait).await;
        }
    }
}

fn end_with_error(cx: &Context, error_type: &'static str, description: &str) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type));
    span.set_status(Status::error(description.to_owned()));
    span.end();
}

fn error_type(error: &WorkerError) -> &'static str {
    match error {
        WorkerError::Receive(_) => "receive",
        WorkerError::Features(_) => "feature_store",
        WorkerError::Model(_) => "model",
        WorkerError::Send { .. } => "send",
        WorkerError::Settle(_) => "settle",
    }
}

/// Runs CPU-heavy work without stalling the other tasks of a multi-threaded runtime.
fn run_blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use mqtrace_core::propagation::{ExtractOutcome, Extracted};

    use super::*;
    use crate::cpu::CpuModel;
    use crate::features::InMemoryFeatureStore;
    use crate::mlp::Mlp;

    const REQUESTS: &str = "requests";
    const REPLIES: &str = "replies";
    const DLQ: &str = "requests.dlq";

    struct Message {
        payload: Vec<u8>,
        offset: i64,
        extracted: Extracted,
    }

    impl InboundMessage for Message {
        fn extracted(&self) -> &Extracted {
            &self.extracted
        }
        fn payload(&self) -> &[u8] {
            &self.payload
        }
        fn key(&self) -> Option<&[u8]> {
            Some(b"user-1")
        }
        fn destination(&self) -> &str {
            REQUESTS
        }
        fn enqueued_at(&self) -> Option<SystemTime> {
            None
        }
        fn message_id(&self) -> Option<&str> {
            None
        }
        fn identity(&self) -> Vec<KeyValue> {
            vec![
                KeyValue::new(semconv::MESSAGING_DESTINATION_PARTITION_ID, "0"),
                KeyValue::new(semconv::MESSAGING_KAFKA_OFFSET, self.offset),
            ]
        }
    }

    /// The messages of one batch, then the end; remembers what was settled.
    struct Source {
        messages: VecDeque<Message>,
        settled: Arc<Mutex<Vec<i64>>>,
    }

    impl MessageSource for Source {
        type Message = Message;
        type Error = std::io::Error;
        fn system(&self) -> &'static str {
            "test"
        }
        async fn next_message(&mut self) -> Option<Result<Message, std::io::Error>> {
            self.messages.pop_front().map(Ok)
        }
        async fn settle(&mut self, messages: &[Message], _: &Context) -> std::io::Result<()> {
            if let Ok(mut settled) = self.settled.lock() {
                settled.extend(messages.iter().map(|m| m.offset));
            }
            Ok(())
        }
    }

    /// How the test broker treats a destination.
    #[derive(Clone, Copy)]
    enum Treatment {
        /// Takes payloads up to this many bytes, rejects larger ones.
        Takes(usize),
        /// Rejects everything for good.
        Rejects,
        /// Fails everything, transiently.
        Unavailable,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("refused by the test broker")]
    struct Refused(SendFailure);

    /// One sent (or attempted) message.
    #[derive(Debug, Clone)]
    struct Sent {
        destination: String,
        payload_len: usize,
        headers: Vec<(String, String)>,
        delivered: bool,
    }

    impl Sent {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    struct Sink {
        replies: Treatment,
        dead_letters: Treatment,
        log: Arc<Mutex<Vec<Sent>>>,
    }

    impl MessageSink for Sink {
        type Error = Refused;

        fn classify(&self, error: &Refused) -> SendFailure {
            error.0
        }

        async fn send(
            &self,
            message: Outgoing<'_>,
            _: &Context,
            _: Vec<Link>,
        ) -> Result<(), Refused> {
            let treatment = if message.destination == DLQ {
                self.dead_letters
            } else {
                self.replies
            };
            let result = match treatment {
                Treatment::Takes(limit) if message.payload.len() <= limit => Ok(()),
                Treatment::Takes(_) | Treatment::Rejects => Err(Refused(SendFailure::Rejected)),
                Treatment::Unavailable => Err(Refused(SendFailure::Transient)),
            };
            let sent = Sent {
                destination: message.destination.to_owned(),
                payload_len: message.payload.len(),
                headers: message
                    .headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), String::from_utf8_lossy(v).into_owned()))
                    .collect(),
                delivered: result.is_ok(),
            };
            if let Ok(mut log) = self.log.lock() {
                log.push(sent);
            }
            result
        }
    }

    fn good(i: usize) -> Vec<u8> {
        format!(r#"{{"request_id":"r-{i}","user_id":"user-1","amount":12.5}}"#).into_bytes()
    }

    struct Run {
        result: Result<WorkerStats, WorkerError>,
        settled: Vec<i64>,
        sent: Vec<Sent>,
    }

    fn sent_to<'s>(sent: &'s [Sent], destination: &str) -> Vec<&'s Sent> {
        sent.iter()
            .filter(|s| s.destination == destination)
            .collect()
    }

    /// Runs a worker with the test model and feature store on `source` until it ends.
    async fn run_worker<S: MessageSource<Message = Message>>(
        source: S,
        sink: Sink,
        config: WorkerConfig,
    ) -> Result<WorkerStats, WorkerError> {
        let model = CpuModel::new("m", "1", Mlp::seeded(INPUT_WIDTH, &[8], 7));
        let store = InMemoryFeatureStore::generated(4, 7);
        let mut worker = Worker::new(source, sink, store, model, config);
        worker.run(&Shutdown::new()).await
    }

    /// One batch: `payloads` at offsets 0.., through a worker with `retries` retries.
    async fn run(payloads: Vec<Vec<u8>>, replies: Treatment, dead_letters: Treatment) -> Run {
        let settled = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let count = payloads.len();
        let source = Source {
            messages: payloads
                .into_iter()
                .enumerate()
                .map(|(offset, payload)| Message {
                    payload,
                    offset: offset as i64,
                    extracted: Extracted {
                        context: Context::new(),
                        outcome: ExtractOutcome::Missing,
                    },
                })
                .collect(),
            settled: settled.clone(),
        };
        let sink = Sink {
            replies,
            dead_letters,
            log: log.clone(),
        };
        let config = WorkerConfig::new(REPLIES, DLQ)
            .with_batch(BatchConfig::new(count, Duration::from_secs(1)))
            .with_send_retries(2)
            .with_max_request_bytes(64 * 1024);
        let result = run_worker(source, sink, config).await;
        let settled = settled.lock().map(|s| s.clone()).unwrap_or_default();
        let sent = log.lock().map(|s| s.clone()).unwrap_or_default();
        Run {
            result,
            settled,
            sent,
        }
    }

    /// A scripted source: messages and receive errors in order, then the end. A connection
    /// reset is transient, any other error fatal.
    struct Scripted {
        items: VecDeque<Result<Message, std::io::ErrorKind>>,
        settled: Arc<Mutex<Vec<i64>>>,
    }

    impl MessageSource for Scripted {
        type Message = Message;
        type Error = std::io::Error;
        fn system(&self) -> &'static str {
            "test"
        }
        fn receive_failure(&self, error: &std::io::Error) -> ReceiveFailure {
            if error.kind() == std::io::ErrorKind::ConnectionReset {
                ReceiveFailure::Transient
            } else {
                ReceiveFailure::Fatal
            }
        }
        async fn next_message(&mut self) -> Option<Result<Message, std::io::Error>> {
            self.items
                .pop_front()
                .map(|item| item.map_err(std::io::Error::from))
        }
        async fn settle(&mut self, messages: &[Message], _: &Context) -> std::io::Result<()> {
            if let Ok(mut settled) = self.settled.lock() {
                settled.extend(messages.iter().map(|m| m.offset));
            }
            Ok(())
        }
    }

    async fn run_scripted(
        items: Vec<Result<usize, std::io::ErrorKind>>,
    ) -> (Result<WorkerStats, WorkerError>, Vec<i64>) {
        let settled = Arc::new(Mutex::new(Vec::new()));
        let source = Scripted {
            items: items
                .into_iter()
                .map(|item| {
                    item.map(|offset| Message {
                        payload: good(offset),
                        offset: offset as i64,
                        extracted: Extracted {
                            context: Context::new(),
                            outcome: ExtractOutcome::Missing,
                        },
                    })
                })
                .collect(),
            settled: settled.clone(),
        };
        let sink = Sink {
            replies: Treatment::Takes(usize::MAX),
            dead_letters: Treatment::Takes(usize::MAX),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        let config = WorkerConfig::new(REPLIES, DLQ)
            .with_batch(BatchConfig::new(2, Duration::from_millis(10)));
        let result = run_worker(source, sink, config).await;
        let settled = settled.lock().map(|s| s.clone()).unwrap_or_default();
        (result, settled)
    }

    #[tokio::test]
    async fn transient_receive_errors_are_ridden_out_and_counted() {
        use std::io::ErrorKind::ConnectionReset;
        let (result, settled) = run_scripted(vec![
            Ok(0),
            Err(ConnectionReset),
            Err(ConnectionReset),
            Ok(1),
            Ok(2),
        ])
        .await;
        let stats = result.expect("the worker keeps going");
        assert_eq!(stats.receive_errors, 2);
        assert_eq!(stats.messages, 3);
        assert_eq!(
            settled,
            vec![0, 1, 2],
            "every message processed and settled"
        );
    }

    #[tokio::test]
    async fn a_fatal_receive_error_stops_the_worker_after_the_messages_before_it() {
        let (result, settled) = run_scripted(vec![
            Ok(0),
            Err(std::io::ErrorKind::PermissionDenied),
            Ok(1),
        ])
        .await;
        assert!(matches!(result, Err(WorkerError::Receive(_))), "{result:?}");
        assert_eq!(
            settled,
            vec![0],
            "the message before the error was processed"
        );
    }

    #[test]
    fn rejections_are_not_retried_transient_failures_are_a_bounded_number_of_times() {
        assert_eq!(retry_after(SendFailure::Rejected, 1, 5), None);
        assert_eq!(
            retry_after(SendFailure::Transient, 1, 5),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            retry_after(SendFailure::Transient, 5, 5),
            Some(Duration::from_millis(1600))
        );
        assert_eq!(retry_after(SendFailure::Transient, 6, 5), None);
        assert_eq!(retry_after(SendFailure::Transient, 1, 0), None);
        assert_eq!(backoff(7), Duration::from_secs(5));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn the_reference_names_partition_offset_and_message_id_only() {
        let reference = reference_headers(&[
            KeyValue::new(semconv::MESSAGING_DESTINATION_PARTITION_ID, "3"),
            KeyValue::new(semconv::MESSAGING_KAFKA_OFFSET, 17_i64),
            KeyValue::new("messaging.rabbitmq.message.delivery_tag", 9_i64),
            KeyValue::new(semconv::MESSAGING_MESSAGE_ID, "m-1"),
        ]);
        assert_eq!(
            reference,
            [
                (DLQ_SOURCE_PARTITION_HEADER, "3".to_owned()),
                (DLQ_SOURCE_OFFSET_HEADER, "17".to_owned()),
                (DLQ_SOURCE_MESSAGE_ID_HEADER, "m-1".to_owned()),
            ]
        );
        assert_eq!(
            position("requests", &reference),
            "requests[3]@17 message_id=m-1"
        );
        assert_eq!(position("q", &[]), "q");
    }

    #[tokio::test]
    async fn a_malformed_request_goes_to_the_dead_letters_whole_when_it_fits() {
        let run = run(
            vec![b"{not json".to_vec(), good(1)],
            Treatment::Takes(usize::MAX),
            Treatment::Takes(usize::MAX),
        )
        .await;
        let stats = run.result.expect("worker ran");
        assert_eq!((stats.dead_lettered, stats.dead_letters_truncated), (1, 0));
        assert_eq!(stats.replies, 1);
        let letters = sent_to(&run.sent, DLQ);
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].payload_len, 9, "payload unchanged");
        assert_eq!(letters[0].header(DLQ_REASON_HEADER), Some("not_json"));
        assert_eq!(letters[0].header(DLQ_SOURCE_OFFSET_HEADER), Some("0"));
        assert_eq!(letters[0].header(DLQ_TRUNCATED_HEADER), None);
        assert_eq!(run.settled, [0, 1]);
    }

    #[tokio::test]
    async fn a_dead_letter_rejected_as_too_large_is_sent_truncated_at_once() {
        let oversized = vec![b'x'; 100 * 1024];
        let run = run(
            vec![oversized, good(1)],
            Treatment::Takes(usize::MAX),
            Treatment::Takes(1024),
        )
        .await;
        let stats = run.result.expect("worker ran");
        assert_eq!(
            (
                stats.dead_lettered,
                stats.dead_letters_truncated,
                stats.dead_letters_skipped
            ),
            (1, 1, 0)
        );
        assert_eq!(stats.replies, 1);
        let letters = sent_to(&run.sent, DLQ);
        assert_eq!(
            letters.len(),
            2,
            "one whole attempt (no retry of a rejection), one truncated"
        );
        assert!(!letters[0].delivered);
        let truncated = letters[1];
        assert!(truncated.delivered);
        assert_eq!(truncated.payload_len, 0);
        assert_eq!(truncated.header(DLQ_REASON_HEADER), Some("too_large"));
        assert_eq!(truncated.header(DLQ_SOURCE_HEADER), Some(REQUESTS));
        assert_eq!(truncated.header(DLQ_SOURCE_PARTITION_HEADER), Some("0"));
        assert_eq!(truncated.header(DLQ_SOURCE_OFFSET_HEADER), Some("0"));
        assert_eq!(truncated.header(DLQ_PAYLOAD_SIZE_HEADER), Some("102400"));
        assert!(truncated.header(DLQ_TRUNCATED_HEADER).is_some());
        assert!(
            truncated
                .header(DLQ_ERROR_HEADER)
                .is_some_and(|e| e.contains("102400 bytes"))
        );
        assert_eq!(run.settled, [0, 1], "the batch is settled");
    }

    #[tokio::test]
    async fn a_dead_letter_destination_that_refuses_everything_skips_the_request_and_settles() {
        let run = run(
            vec![b"[]".to_vec(), good(1), good(2)],
            Treatment::Takes(usize::MAX),
            Treatment::Rejects,
        )
        .await;
        let stats = run.result.expect("the worker keeps going");
        assert_eq!(
            (
                stats.dead_lettered,
                stats.dead_letters_truncated,
                stats.dead_letters_skipped
            ),
            (0, 0, 1)
        );
        assert_eq!(stats.replies, 2);
        assert_eq!(
            sent_to(&run.sent, DLQ).len(),
            2,
            "whole once, truncated once: no retries"
        );
        assert_eq!(run.settled, [0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_dead_letter_destination_is_retried_a_bounded_number_of_times() {
        let run = run(
            vec![b"".to_vec(), good(1)],
            Treatment::Takes(usize::MAX),
            Treatment::Unavailable,
        )
        .await;
        let stats = run.result.expect("the worker keeps going");
        assert_eq!(stats.dead_letters_skipped, 1);
        assert_eq!(stats.replies, 1);
        // 1 attempt + 2 retries, for the whole letter and for the truncated one
        let letters = sent_to(&run.sent, DLQ);
        assert_eq!(letters.len(), 6);
        assert_eq!(
            letters.iter().filter(|l| l.payload_len == 0).count(),
            6,
            "the empty payload is its own truncated form"
        );
        assert_eq!(
            letters
                .iter()
                .filter(|l| l.header(DLQ_TRUNCATED_HEADER).is_some())
                .count(),
            3
        );
        assert_eq!(run.settled, [0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn replies_that_cannot_be_sent_fail_the_batch_before_any_dead_letter_is_given_up() {
        let run = run(
            vec![b"{".to_vec(), good(1)],
            Treatment::Unavailable,
            Treatment::Takes(usize::MAX),
        )
        .await;
        let error = run.result.expect_err("the reply could not be sent");
        assert!(
            matches!(error, WorkerError::Send { attempts: 3, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("delivered again"), "{error}");
        assert!(run.settled.is_empty(), "not settled: delivered again");
        assert!(
            sent_to(&run.sent, DLQ).is_empty(),
            "no dead letter was attempted"
        );
    }
}
