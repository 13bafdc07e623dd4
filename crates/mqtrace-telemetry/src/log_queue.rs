//! The log record processor behind [`super::init`]: the same bounded, never-blocking queue as
//! spans ([`super::export_queue`]), so a log record lost on the way is counted in
//! `mqtrace.telemetry.logs.dropped{reason}` and told, like a span — the SDK's batch log
//! processor drops silently.
//!
//! Sizes follow the standard `OTEL_BLRP_*` variables' defaults: a queue of 2,048 records,
//! batches of 512, a scheduled delay of 1 s.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry::metrics::Meter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};

use super::export_queue::{
    BatchExport, ExportQueue, LossWarnings, QueueNames, QueueSettings, SignalCounters,
};
use mqtrace_core::semconv;

/// `OTEL_BLRP_MAX_QUEUE_SIZE`'s default.
pub(crate) const DEFAULT_LOG_QUEUE_SIZE: usize = 2048;

/// A log exporter driven from the export thread.
struct LogExport<E>(E);

impl<E: LogExporter + 'static> BatchExport for LogExport<E> {
    type Item = (SdkLogRecord, InstrumentationScope);

    fn export(&mut self, batch: Vec<Self::Item>) -> OTelSdkResult {
        let borrowed: Vec<(&SdkLogRecord, &InstrumentationScope)> = batch
            .iter()
            .map(|(record, scope)| (record, scope))
            .collect();
        futures_executor::block_on(self.0.export(LogBatch::new(&borrowed)))
    }

    fn shutdown(&mut self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// A batch log processor that never blocks the caller and counts what it drops.
pub(crate) struct CountingBatchLogProcessor {
    queue: ExportQueue<(SdkLogRecord, InstrumentationScope)>,
    counters: Arc<SignalCounters>,
}

impl fmt::Debug for CountingBatchLogProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingBatchLogProcessor")
            .field("queue", &self.queue)
            .finish()
    }
}

impl CountingBatchLogProcessor {
    /// Starts the export thread; `export_timeout` bounds flush and shutdown.
    pub(crate) fn new<E: LogExporter + 'static>(
        exporter: E,
        max_queue_size: usize,
        export_timeout: Duration,
        meter: &Meter,
        warnings: LossWarnings,
    ) -> Self {
        let counters = Arc::new(SignalCounters::default());
        let queue = ExportQueue::start(
            LogExport(exporter),
            QueueSettings {
                max_queue_size,
                max_export_batch_size: 512,
                scheduled_delay: Duration::from_secs(1),
                export_timeout,
                max_concurrent_exports: 1,
            },
            QueueNames {
                items: "log records",
                queue_size_variable: "OTEL_BLRP_MAX_QUEUE_SIZE",
                thread: "mqtrace-log-export",
            },
            warnings,
            meter,
            semconv::MQTRACE_TELEMETRY_LOGS_DROPPED,
            "{log_record}",
            Arc::clone(&counters),
        );
        Self { queue, counters }
    }

    /// The processor's account of every record it was given.
    pub(crate) fn counters(&self) -> Arc<SignalCounters> {
        Arc::clone(&self.counters)
    }
}

impl LogProcessor for CountingBatchLogProcessor {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.queue.offer((record.clone(), scope.clone()));
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
    use opentelemetry::logs::{LogRecord as _, Logger, LoggerProvider as _};
    use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLoggerProvider};
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    #[test]
    fn records_are_exported_and_counted() {
        let exporter = InMemoryLogExporter::default();
        let meters = SdkMeterProvider::builder().build();
        let meter = opentelemetry::metrics::MeterProvider::meter(&meters, "test");
        let processor = CountingBatchLogProcessor::new(
            exporter.clone(),
            4,
            Duration::from_secs(5),
            &meter,
            LossWarnings(None),
        );
        let counters = processor.counters();
        let provider = SdkLoggerProvider::builder()
            .with_log_processor(processor)
            .build();
        let logger = provider.logger("t");
        for i in 0..3 {
            let mut record = logger.create_log_record();
            record.set_body(format!("record {i}").into());
            logger.emit(record);
        }
        provider.force_flush().expect("flush");
        assert_eq!(exporter.get_emitted_logs().expect("logs").len(), 3);
        let stats = counters.snapshot();
        assert_eq!((stats.exported, stats.dropped()), (3, 0));
    }
}
