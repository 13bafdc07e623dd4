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

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use futures::future::join_all;
use mqtrace_core::batch::{
    BatchSpanBuilder, InboundMessage, LinkAttributes, MessageSink, MessageSource, Outgoing,
};
use mqtrace_core::{Instrumentation, MessagingSpanBuilder, OperationType, semconv};
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{Link, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::collector::{BatchCollector, BatchConfig, Shutdown};
use crate::features::{FeatureStore, PROFILE_FEATURES, UserProfile};
use crate::metrics::{DEAD_LETTER_REASON, ML_DECISION, WorkerMetrics};
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
    /// How often a failed reply is retried before the worker gives up.
    pub send_retries: u32,
}

impl WorkerConfig {
    /// Replies to `reply_destination`, dead letters to `dead_letter_destination`; default
    /// batches, the link limit from the environment, no per-message spans, 5 retries.
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

    /// Sets how often a failed reply is retried.
    pub fn with_send_retries(mut self, retries: u32) -> Self {
        self.send_retries = retries;
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
    /// Requests sent to the dead-letter destination.
    pub dead_lettered: u64,
    /// Seconds spent in model execution.
    pub model_seconds: f64,
    /// Seconds spent processing batches (from batch start to settle).
    pub busy_seconds: f64,
    /// Batches whose replies were all sent but whose commit or ack failed; they will be
    /// delivered again (to this worker or the one that owns them now).
    pub settle_failures: u64,
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
    /// A reply or dead letter could not be sent after retries.
    #[error("sending to '{destination}' failed after {attempts} attempts: {source}")]
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
    /// not stop the worker.
    pub async fn run(&mut self, shutdown: &Shutdown) -> Result<WorkerStats, WorkerError> {
        loop {
            let batch = self
                .collector
                .next_batch(shutdown)
                .await
                .map_err(|e| WorkerError::Receive(boxed(e)))?;
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
            .start_with_context(tracer, parent);
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
        let parsed: Vec<Result<Request, Malformed>> =
            batch.iter().map(|m| Request::parse(m.payload())).collect();
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

        // Dead letters: parent the batch, link the original.
        self.send_dead_letters(batch, batch_cx, &dead_letters)
            .await?;
        // Replies: each in its request's own trace, linked to the batch.
        self.send_replies(batch, &scored, batch_link).await?;
        Ok(())
    }

    async fn send_dead_letters(
        &mut self,
        batch: &[S::Message],
        batch_cx: &Context,
        dead_letters: &[DeadLetter<'_>],
    ) -> Result<(), WorkerError> {
        for letter in dead_letters {
            let message = &batch[letter.index];
            let reason = letter.malformed.reason();
            let error = letter.malformed.to_string();
            let headers = [
                (DLQ_REASON_HEADER, reason.as_bytes()),
                (DLQ_ERROR_HEADER, error.as_bytes()),
                (DLQ_SOURCE_HEADER, message.destination().as_bytes()),
            ];
            let outgoing = Outgoing::new(&self.config.dead_letter_destination, message.payload())
                .with_key(message.key())
                .with_headers(&headers)
                .with_message_id(message.message_id());
            let links: Vec<Link> = message.link().into_iter().collect();
            self.send_with_retries(outgoing, batch_cx, &links).await?;
            self.metrics.record_dead_lettered(reason);
            self.stats.dead_lettered += 1;
            batch_cx.span().add_event(
                "request.dead_lettered",
                vec![
                    KeyValue::new(DEAD_LETTER_REASON, reason),
                    KeyValue::new("mqtrace.batch.index", letter.index as i64),
                ],
            );
        }
        Ok(())
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
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends, retrying with exponential backoff (100 ms doubling, at most 5 s).
    async fn send_with_retries(
        &self,
        outgoing: Outgoing<'_>,
        parent: &Context,
        links: &[Link],
    ) -> Result<(), WorkerError> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.sink.send(outgoing, parent, links.to_vec()).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt > self.config.send_retries => {
                    return Err(WorkerError::Send {
                        destination: outgoing.destination.to_owned(),
                        attempts: attempt,
                        source: boxed(error),
                    });
                }
                Err(error) => {
                    {
                        let _guard = parent.clone().attach();
                        tracing::warn!(%error, attempt, destination = outgoing.destination, "send failed; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
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
