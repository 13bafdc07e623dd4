//! The span processor behind [`super::init`]: a bounded queue and one export thread, like
//! the SDK's batch processor, plus what that one cannot tell you — how many spans were lost.
//!
//! Ending a span never waits: the span is offered to the queue and, when the queue is full
//! (the collector is slow or gone and the exporter cannot keep up), dropped and counted in
//! `mqtrace.telemetry.spans.dropped{reason="queue_full"}`. Spans in a batch the exporter
//! fails to deliver (collector down, refusing, timing out) are counted with
//! `reason="export_failed"`. Both series are created at zero when the pipeline starts, so a
//! dashboard shows a flat line rather than no data while all is well.

use std::fmt;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Meter};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

use crate::semconv;

/// Queue and batch sizes, read from the standard `OTEL_BSP_*` variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpanBatchSettings {
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048): spans waiting for export; beyond it new
    /// spans are dropped and counted.
    pub max_queue_size: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (default 512): spans per export request.
    pub max_export_batch_size: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY` (default 5000 ms): longest a span waits for a batch to fill.
    pub scheduled_delay: Duration,
}

impl Default for SpanBatchSettings {
    fn default() -> Self {
        Self {
            max_queue_size: 2048,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_millis(5000),
        }
    }
}

impl SpanBatchSettings {
    /// Sets the queue size (at least 1).
    pub fn with_max_queue_size(mut self, size: usize) -> Self {
        self.max_queue_size = size.max(1);
        self
    }

    /// Sets the export batch size (at least 1).
    pub fn with_max_export_batch_size(mut self, size: usize) -> Self {
        self.max_export_batch_size = size.max(1);
        self
    }

    /// Sets the longest a span waits for its batch to fill.
    pub fn with_scheduled_delay(mut self, delay: Duration) -> Self {
        self.scheduled_delay = delay;
        self
    }
}

/// Why spans were lost, the `reason` attribute of the dropped-spans counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    QueueFull,
    ExportFailed,
}

/// The `mqtrace.telemetry.spans.dropped` counter with its two attribute sets prepared.
#[derive(Clone)]
struct DroppedSpans {
    counter: Counter<u64>,
    queue_full: [KeyValue; 1],
    export_failed: [KeyValue; 1],
}

impl DroppedSpans {
    fn new(meter: &Meter) -> Self {
        let counter = meter
            .u64_counter(semconv::MQTRACE_TELEMETRY_SPANS_DROPPED)
            .with_unit("{span}")
            .with_description(
                "Spans that were never delivered to the collector: the export queue was full, or the export failed.",
            )
            .build();
        let this = Self {
            counter,
            queue_full: [KeyValue::new("reason", "queue_full")],
            export_failed: [KeyValue::new("reason", "export_failed")],
        };
        this.add(DropReason::QueueFull, 0);
        this.add(DropReason::ExportFailed, 0);
        this
    }

    fn add(&self, reason: DropReason, count: u64) {
        let attributes = match reason {
            DropReason::QueueFull => &self.queue_full,
            DropReason::ExportFailed => &self.export_failed,
        };
        self.counter.add(count, attributes);
    }
}

// Spans travel unboxed, as in the SDK's processor: the queue's slots are preallocated by the
// channel, so queueing a span allocates nothing; boxing would cost one allocation per span.
#[allow(clippy::large_enum_variant)]
enum Message {
    Span(SpanData),
    Flush(SyncSender<OTelSdkResult>),
    Shutdown(SyncSender<OTelSdkResult>),
}

/// A batch span processor that never blocks the caller and counts what it drops (see the
/// [module docs](self)).
pub(crate) struct CountingBatchSpanProcessor {
    queue: SyncSender<Message>,
    dropped: DroppedSpans,
    worker: Mutex<Option<JoinHandle<()>>>,
    resource: Mutex<Option<SyncSender<Resource>>>,
}

impl fmt::Debug for CountingBatchSpanProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingBatchSpanProcessor")
            .finish_non_exhaustive()
    }
}

impl CountingBatchSpanProcessor {
    /// Starts the export thread. Drops are counted on `meter`.
    pub(crate) fn new<E>(exporter: E, settings: SpanBatchSettings, meter: &Meter) -> Self
    where
        E: SpanExporter + 'static,
    {
        let (queue, messages) = sync_channel(settings.max_queue_size);
        let (resource_tx, resource_rx) = sync_channel(1);
        let dropped = DroppedSpans::new(meter);
        let worker = ExportWorker {
            exporter,
            settings,
            dropped: dropped.clone(),
            batch: Vec::with_capacity(settings.max_export_batch_size),
            resource: resource_rx,
        };
        let handle = std::thread::Builder::new()
            .name("mqtrace-span-export".into())
            .spawn(move || worker.run(messages))
            .ok();
        Self {
            queue,
            dropped,
            worker: Mutex::new(handle),
            resource: Mutex::new(Some(resource_tx)),
        }
    }

    /// Sends a control message and waits for its answer.
    fn control(
        &self,
        make: impl FnOnce(SyncSender<OTelSdkResult>) -> Message,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (reply, answer) = sync_channel(1);
        // A blocking send: flush and shutdown are allowed to wait for room in the queue,
        // spans are not.
        self.queue
            .send(make(reply))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answer
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))?
    }
}

impl SpanProcessor for CountingBatchSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.queue.try_send(Message::Span(span)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.add(DropReason::QueueFull, 1),
            // After shutdown: the provider is gone, nothing to count against.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.control(Message::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.control(Message::Shutdown, timeout);
        if result.is_ok()
            && let Some(handle) = self
                .worker
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()
        {
            let _ = handle.join();
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        let sender = self
            .resource
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(sender) = sender {
            let _ = sender.try_send(resource.clone());
        }
    }
}

/// The export thread's state.
struct ExportWorker<E> {
    exporter: E,
    settings: SpanBatchSettings,
    dropped: DroppedSpans,
    batch: Vec<SpanData>,
    resource: Receiver<Resource>,
}

impl<E: SpanExporter> ExportWorker<E> {
    fn run(mut self, messages: Receiver<Message>) {
        let mut deadline = Instant::now() + self.settings.scheduled_delay;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match messages.recv_timeout(wait) {
                Ok(Message::Span(span)) => {
                    self.batch.push(span);
                    if self.batch.len() >= self.settings.max_export_batch_size {
                        let _ = self.export();
                        deadline = Instant::now() + self.settings.scheduled_delay;
                    }
                }
                Ok(Message::Flush(reply)) => {
                    let result = self.drain(&messages);
                    let _ = reply.send(result);
                    deadline = Instant::now() + self.settings.scheduled_delay;
                }
                Ok(Message::Shutdown(reply)) => {
                    let mut result = self.drain(&messages);
                    let shutdown = self.exporter.shutdown();
                    if result.is_ok() {
                        result = shutdown;
                    }
                    let _ = reply.send(result);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.export();
                    deadline = Instant::now() + self.settings.scheduled_delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.export();
                    let _ = self.exporter.shutdown();
                    return;
                }
            }
        }
    }

    /// Exports everything queued now (a flush); control messages found on the way are
    /// answered after it.
    fn drain(&mut self, messages: &Receiver<Message>) -> OTelSdkResult {
        let mut later = Vec::new();
        let mut result = Ok(());
        while let Ok(message) = messages.try_recv() {
            match message {
                Message::Span(span) => {
                    self.batch.push(span);
                    if self.batch.len() >= self.settings.max_export_batch_size {
                        result = result.and(self.export());
                    }
                }
                control => later.push(control),
            }
        }
        result = result.and(self.export());
        for message in later {
            if let Message::Flush(reply) | Message::Shutdown(reply) = message {
                // A second flush (or a shutdown racing a flush) is satisfied by this one;
                // the shutdown itself happens when the provider drops the channel.
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(err) => Err(OTelSdkError::InternalFailure(err.to_string())),
                };
                let _ = reply.send(answer);
            }
        }
        result
    }

    fn export(&mut self) -> OTelSdkResult {
        if let Ok(resource) = self.resource.try_recv() {
            self.exporter.set_resource(&resource);
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let spans = std::mem::replace(
            &mut self.batch,
            Vec::with_capacity(self.settings.max_export_batch_size),
        );
        let count = spans.len() as u64;
        let result = futures_executor::block_on(self.exporter.export(spans));
        if result.is_err() {
            self.dropped.add(DropReason::ExportFailed, count);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer, TracerProvider as _};
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// An exporter that blocks while `blocked` is set, then fails or succeeds.
    #[derive(Debug, Clone, Default)]
    struct GatedExporter {
        blocked: Arc<AtomicBool>,
        failing: Arc<AtomicBool>,
        exported: Arc<AtomicUsize>,
    }

    impl SpanExporter for GatedExporter {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            while self.blocked.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(OTelSdkError::InternalFailure("collector down".into()));
            }
            self.exported.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    fn dropped(metrics: &InMemoryMetricExporter, reason: &str) -> u64 {
        let mut total = 0;
        for rm in metrics.get_finished_metrics().unwrap_or_default() {
            for sm in rm.scope_metrics() {
                for m in sm.metrics() {
                    if m.name() != semconv::MQTRACE_TELEMETRY_SPANS_DROPPED {
                        continue;
                    }
                    if let AggregatedMetrics::U64(MetricData::Sum(sum)) = m.data() {
                        for p in sum.data_points() {
                            if p.attributes().any(|kv| kv.value.as_str() == reason) {
                                total = total.max(p.value());
                            }
                        }
                    }
                }
            }
        }
        total
    }

    fn setup(
        exporter: GatedExporter,
        settings: SpanBatchSettings,
    ) -> (SdkTracerProvider, SdkMeterProvider, InMemoryMetricExporter) {
        let metrics = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let meter = opentelemetry::metrics::MeterProvider::meter(&meter_provider, "test");
        let processor = CountingBatchSpanProcessor::new(exporter, settings, &meter);
        let tracer_provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        (tracer_provider, meter_provider, metrics)
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let exporter = GatedExporter::default();
        exporter.blocked.store(true, Ordering::SeqCst);
        let settings = SpanBatchSettings::default()
            .with_max_queue_size(8)
            .with_max_export_batch_size(4);
        let (provider, meters, metrics) = setup(exporter.clone(), settings);
        let tracer = provider.tracer("t");
        // The exporter is stuck: ending 100 spans must still return at once.
        for _ in 0..100 {
            tracer.start("s").end();
        }
        exporter.blocked.store(false, Ordering::SeqCst);
        provider.force_flush().expect("flush");
        meters.force_flush().expect("metrics flush");
        let lost = dropped(&metrics, "queue_full");
        let delivered = exporter.exported.load(Ordering::SeqCst) as u64;
        assert!(lost > 0, "nothing dropped with a queue of 8");
        assert_eq!(lost + delivered, 100, "every span delivered or counted");
        assert_eq!(dropped(&metrics, "export_failed"), 0);
    }

    #[test]
    fn failed_exports_are_counted_and_the_series_start_at_zero() {
        let exporter = GatedExporter::default();
        let (provider, meters, metrics) = setup(exporter.clone(), SpanBatchSettings::default());
        meters.force_flush().expect("metrics flush");
        let names: Vec<_> = metrics
            .get_finished_metrics()
            .unwrap_or_default()
            .iter()
            .flat_map(|rm| {
                rm.scope_metrics()
                    .flat_map(|sm| sm.metrics().map(|m| m.name().to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n == semconv::MQTRACE_TELEMETRY_SPANS_DROPPED),
            "{names:?}"
        );

        exporter.failing.store(true, Ordering::SeqCst);
        let tracer = provider.tracer("t");
        for _ in 0..10 {
            tracer.start("s").end();
        }
        assert!(
            provider.force_flush().is_err(),
            "the failed export is reported to flush"
        );
        meters.force_flush().expect("metrics flush");
        assert_eq!(dropped(&metrics, "export_failed"), 10);

        exporter.failing.store(false, Ordering::SeqCst);
        tracer.start("after").end();
        provider.force_flush().expect("flush");
        assert_eq!(exporter.exported.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn batches_are_sent_when_full_and_when_the_delay_passes() {
        let exporter = InMemorySpanExporter::default();
        let metrics = InMemoryMetricExporter::default();
        let meters = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics).build())
            .build();
        let meter = opentelemetry::metrics::MeterProvider::meter(&meters, "test");
        let settings = SpanBatchSettings::default()
            .with_max_export_batch_size(2)
            .with_scheduled_delay(Duration::from_millis(20));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(CountingBatchSpanProcessor::new(
                exporter.clone(),
                settings,
                &meter,
            ))
            .build();
        let tracer = provider.tracer("t");
        tracer.start("one").end();
        // No flush: the scheduled delay alone must export it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while exporter.get_finished_spans().unwrap_or_default().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the scheduled export never happened"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        provider.shutdown().expect("shutdown");
        assert!(
            provider.force_flush().is_err(),
            "flush after shutdown is an error, not a hang"
        );
    }
}
