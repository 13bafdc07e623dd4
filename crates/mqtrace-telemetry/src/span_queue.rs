//! The span processor behind [`super::init`]: a bounded queue and one export thread, like
//! the SDK's batch processor, plus what that one cannot tell you — how many spans were lost,
//! and why ([`super::export_queue`]).
//!
//! Ending a span never waits: the span is offered to the queue and, when the queue is full
//! (the collector is slow or gone and the exporter cannot keep up), dropped and counted in
//! `mqtrace.telemetry.spans.dropped{reason="queue_full"}`. Spans in a batch the exporter
//! fails to deliver (collector down, refusing, timing out) are counted with
//! `reason="export_failed"`, and spans still waiting when shutdown stops waiting for a hung
//! collector with `reason="shutdown"`. The first two series are created at zero when the
//! pipeline starts, so a dashboard shows a flat line rather than no data while all is well.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::metrics::Meter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

use super::export_queue::{
    BatchExport, ExportQueue, LossWarnings, QueueNames, QueueSettings, SignalCounters,
};
use mqtrace_core::semconv;

/// Queue and batch sizes and the export time limit, read from the standard `OTEL_BSP_*`
/// variables.
///
/// mqtrace's defaults differ from the OpenTelemetry specification's in two places, both so
/// that nothing is lost at the load a batch worker makes and shutdown stays short:
/// the queue holds 65,536 spans (spec: 2,048; the main job ends up to 120,000 spans a second,
/// a batch of 256 requests about 1,000 at once, so this is half a second of slack for an
/// exporter waiting on its collector; the queue takes memory only as it fills, about 1 KB a
/// span, so ~70 MB at worst), and flush and shutdown wait at most 5 s for the exporter (spec:
/// 30 s; Docker stops a container 10 s after SIGTERM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpanBatchSettings {
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (default 65,536): spans waiting for export; beyond it new
    /// spans are dropped and counted.
    pub max_queue_size: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (default 512): spans per export request.
    pub max_export_batch_size: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY` (default 5000 ms): longest a span waits for a batch to fill.
    pub scheduled_delay: Duration,
    /// `OTEL_BSP_EXPORT_TIMEOUT` (default 5000 ms): the longest a flush or the shutdown waits
    /// for the exporter (and, unless `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise, the
    /// longest one OTLP request may take). What is still unexported then is counted as lost.
    pub export_timeout: Duration,
    /// `OTEL_BSP_MAX_CONCURRENT_EXPORTS` (default 4): export requests in flight at once, for
    /// exporters that allow it — mqtrace's OTLP/HTTP exporter does; the file exporter and
    /// `opentelemetry-otlp`'s exporters are always called one batch at a time.
    pub max_concurrent_exports: usize,
}

/// The default span queue size (see [`SpanBatchSettings`]).
pub(crate) const DEFAULT_SPAN_QUEUE_SIZE: usize = 65_536;

impl Default for SpanBatchSettings {
    fn default() -> Self {
        Self {
            max_queue_size: DEFAULT_SPAN_QUEUE_SIZE,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_millis(5000),
            export_timeout: Duration::from_millis(5000),
            max_concurrent_exports: 4,
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

    /// Sets the longest a flush or the shutdown waits for the exporter.
    pub fn with_export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = timeout;
        self
    }

    /// Sets how many export requests may be in flight at once (at least 1), for exporters
    /// that allow it.
    pub fn with_max_concurrent_exports(mut self, exports: usize) -> Self {
        self.max_concurrent_exports = exports.max(1);
        self
    }

    /// The queue's settings, with `concurrent` saying whether the exporter may be called from
    /// several threads at once.
    pub(crate) fn queue_settings(&self, concurrent: bool) -> QueueSettings {
        QueueSettings {
            max_queue_size: self.max_queue_size,
            max_export_batch_size: self.max_export_batch_size,
            scheduled_delay: self.scheduled_delay,
            export_timeout: self.export_timeout,
            max_concurrent_exports: if concurrent {
                self.max_concurrent_exports
            } else {
                1
            },
        }
    }
}

/// A span exporter driven from the export thread; `concurrent` when it may be called from
/// several threads at once (mqtrace's own OTLP/HTTP exporter), which the SDK's contract does
/// not allow for exporters in general.
struct SpanExport<E> {
    exporter: E,
    concurrent: bool,
}

impl<E: SpanExporter + 'static> BatchExport for SpanExport<E> {
    type Item = SpanData;

    fn export(&mut self, batch: Vec<SpanData>) -> OTelSdkResult {
        futures_executor::block_on(self.exporter.export(batch))
    }

    fn export_all(
        &mut self,
        batches: Vec<Vec<SpanData>>,
        done: &(dyn Fn(usize, &OTelSdkResult) + Sync),
    ) {
        if !self.concurrent || batches.len() < 2 {
            for batch in batches {
                let size = batch.len();
                let result = self.export(batch);
                done(size, &result);
            }
            return;
        }
        // One request per batch in flight at once; the threads live for one round (a few
        // per thousand spans).
        let exporter = &self.exporter;
        std::thread::scope(|scope| {
            for batch in batches {
                let size = batch.len();
                let spawned = std::thread::Builder::new()
                    .name("mqtrace-span-send".into())
                    .spawn_scoped(scope, move || {
                        let _suppressed =
                            opentelemetry::Context::enter_telemetry_suppressed_scope();
                        let result = futures_executor::block_on(exporter.export(batch));
                        done(size, &result);
                    });
                if let Err(error) = spawned {
                    done(
                        size,
                        &Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                            format!("no thread to export on: {error}"),
                        )),
                    );
                }
            }
        });
    }

    fn shutdown(&mut self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}

/// A batch span processor that never blocks the caller and counts what it drops (see the
/// [module docs](self)).
pub(crate) struct CountingBatchSpanProcessor {
    queue: ExportQueue<SpanData>,
    counters: Arc<SignalCounters>,
}

impl fmt::Debug for CountingBatchSpanProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingBatchSpanProcessor")
            .field("queue", &self.queue)
            .finish()
    }
}

impl CountingBatchSpanProcessor {
    /// Starts the export thread. Drops are counted on `meter` (and warned about on stderr).
    #[cfg(test)]
    pub(crate) fn new<E>(exporter: E, settings: SpanBatchSettings, meter: &Meter) -> Self
    where
        E: SpanExporter + 'static,
    {
        Self::with_warnings(
            exporter,
            false,
            settings,
            meter,
            LossWarnings(Some(Duration::from_secs(10))),
        )
    }

    /// Starts the export thread, warning on stderr about drops as `warnings` says;
    /// `concurrent` when `exporter` may be called from several threads at once.
    pub(crate) fn with_warnings<E>(
        exporter: E,
        concurrent: bool,
        settings: SpanBatchSettings,
        meter: &Meter,
        warnings: LossWarnings,
    ) -> Self
    where
        E: SpanExporter + 'static,
    {
        let counters = Arc::new(SignalCounters::default());
        let queue = ExportQueue::start(
            SpanExport {
                exporter,
                concurrent,
            },
            settings.queue_settings(concurrent),
            QueueNames {
                items: "spans",
                queue_size_variable: "OTEL_BSP_MAX_QUEUE_SIZE",
                thread: "mqtrace-span-export",
            },
            warnings,
            meter,
            semconv::MQTRACE_TELEMETRY_SPANS_DROPPED,
            "{span}",
            Arc::clone(&counters),
        );
        Self { queue, counters }
    }

    /// The processor's account of every span it was given.
    pub(crate) fn counters(&self) -> Arc<SignalCounters> {
        Arc::clone(&self.counters)
    }
}

impl SpanProcessor for CountingBatchSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.queue.offer(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.queue.flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.queue.shutdown(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.queue.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkError;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

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

    /// A provider exporting to `exporter` through the processor, and the processor's account.
    fn counted(
        exporter: GatedExporter,
        settings: SpanBatchSettings,
    ) -> (SdkTracerProvider, Arc<SignalCounters>, SdkMeterProvider) {
        let meters = SdkMeterProvider::builder().build();
        let meter = opentelemetry::metrics::MeterProvider::meter(&meters, "test");
        let processor = CountingBatchSpanProcessor::new(exporter, settings, &meter);
        let counters = processor.counters();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        (provider, counters, meters)
    }

    #[test]
    fn every_span_is_accounted_for_exactly_once() {
        let exporter = GatedExporter::default();
        exporter.blocked.store(true, Ordering::SeqCst);
        let (provider, counters, _meters) = counted(
            exporter.clone(),
            SpanBatchSettings::default()
                .with_max_queue_size(16)
                .with_max_export_batch_size(4),
        );
        let tracer = provider.tracer("t");
        for _ in 0..50 {
            tracer.start("s").end();
        }
        exporter.blocked.store(false, Ordering::SeqCst);
        provider.force_flush().expect("flush");
        exporter.failing.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            tracer.start("s").end();
        }
        assert!(provider.force_flush().is_err());
        let stats = counters.snapshot();
        assert!(stats.dropped_queue_full > 0, "{stats:?}");
        assert_eq!(stats.dropped_export_failed, 3, "{stats:?}");
        assert_eq!(
            stats.exported,
            exporter.exported.load(Ordering::SeqCst) as u64
        );
        assert_eq!(stats.exported + stats.dropped(), 53, "{stats:?}");
    }

    #[test]
    fn shutdown_gives_up_on_a_hung_exporter_and_counts_what_it_leaves() {
        let exporter = GatedExporter::default();
        exporter.blocked.store(true, Ordering::SeqCst);
        let (provider, counters, _meters) = counted(
            exporter.clone(),
            SpanBatchSettings::default()
                .with_max_queue_size(100)
                .with_max_export_batch_size(4),
        );
        let tracer = provider.tracer("t");
        for _ in 0..10 {
            tracer.start("s").end();
        }
        // The exporter never returns while blocked: shutdown must come back on its own.
        let result = provider.shutdown_with_timeout(Duration::from_millis(200));
        assert!(result.is_err(), "a hung exporter is reported");
        let stats = counters.snapshot();
        assert_eq!(stats.dropped_at_shutdown, 10, "{stats:?}");
        // The exporter finishing later counts nothing twice.
        exporter.blocked.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while exporter.exported.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let later = counters.snapshot();
        assert_eq!(later.exported + later.dropped(), 10, "{later:?}");
    }

    /// An exporter that records how many of its calls overlap. Its first call holds the
    /// export thread until the test opens the gate, so the test can queue many batches
    /// while the thread is busy; every later call waits (up to 10 s) until a second call is
    /// in flight, so overlap is seen whenever concurrent batches are exported together.
    #[derive(Debug, Clone, Default)]
    struct OverlapExporter {
        state: Arc<(std::sync::Mutex<Calls>, std::sync::Condvar)>,
        exported: Arc<AtomicUsize>,
    }

    /// The export calls an [`OverlapExporter`] saw.
    #[derive(Debug, Default)]
    struct Calls {
        made: usize,
        in_flight: usize,
        most_in_flight: usize,
        gate_open: bool,
    }

    impl OverlapExporter {
        const PATIENCE: Duration = Duration::from_secs(10);

        fn wait_for_first_call(&self) {
            let (lock, changed) = &*self.state;
            let state = lock.lock().expect("lock");
            let (state, _) = changed
                .wait_timeout_while(state, Self::PATIENCE, |c| c.made == 0)
                .expect("wait");
            assert!(
                state.made > 0,
                "the export thread never called the exporter"
            );
        }

        fn open_gate(&self) {
            let (lock, changed) = &*self.state;
            lock.lock().expect("lock").gate_open = true;
            changed.notify_all();
        }
    }

    impl SpanExporter for OverlapExporter {
        async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
            let (lock, changed) = &*self.state;
            let mut state = lock.lock().expect("lock");
            state.made += 1;
            let first = state.made == 1;
            changed.notify_all();
            if first {
                let (_state, _) = changed
                    .wait_timeout_while(state, Self::PATIENCE, |c| !c.gate_open)
                    .expect("wait");
            } else {
                state.in_flight += 1;
                state.most_in_flight = state.most_in_flight.max(state.in_flight);
                changed.notify_all();
                let (mut state, _) = changed
                    .wait_timeout_while(state, Self::PATIENCE, |c| c.most_in_flight < 2)
                    .expect("wait");
                state.in_flight -= 1;
            }
            self.exported.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn an_exporter_that_allows_it_gets_several_batches_at_once() {
        let exporter = OverlapExporter::default();
        let meters = SdkMeterProvider::builder().build();
        let meter = opentelemetry::metrics::MeterProvider::meter(&meters, "test");
        let settings = SpanBatchSettings::default()
            .with_max_export_batch_size(4)
            .with_max_concurrent_exports(3);
        let processor = CountingBatchSpanProcessor::with_warnings(
            exporter.clone(),
            true,
            settings,
            &meter,
            LossWarnings(None),
        );
        let counters = processor.counters();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("t");
        // One full batch, which the export thread takes and is held on...
        for _ in 0..4 {
            tracer.start("s").end();
        }
        exporter.wait_for_first_call();
        // ...while ten more batches queue up behind it: the next rounds have three each.
        for _ in 0..40 {
            tracer.start("s").end();
        }
        exporter.open_gate();
        provider.force_flush().expect("flush");
        let overlap = exporter.state.0.lock().expect("lock").most_in_flight;
        assert!(
            overlap >= 2,
            "queued batches were exported one at a time ({overlap})"
        );
        assert!(overlap <= 3, "more in flight than allowed ({overlap})");
        assert_eq!(counters.snapshot().exported, 44);
        assert_eq!(exporter.exported.load(Ordering::SeqCst), 44);
    }
}
