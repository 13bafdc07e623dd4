//! The bounded, never-blocking export queue behind mqtrace's span and log processors, with an
//! account of every item that went in: exported, or dropped and why.
//!
//! Producers (whoever ends a span or emits a log) bump one atomic counter (which bounds the
//! queue) and send into a lock-free channel that takes memory in blocks as it fills (a full
//! queue is not reserved up front); they wake the export thread once per full batch, not once
//! per item. The export thread wakes when a batch is ready, when the
//! scheduled delay passes, or on a flush/shutdown request (a separate, unbounded control
//! channel, so a full queue never delays a flush), and drains in batches.
//!
//! Accounting: every item offered ends up in exactly one of `exported`, `queue_full`,
//! `export_failed` or `shutdown` ([`SignalCounters`]). `shutdown` counts what was still queued
//! or in flight when shutdown gave up waiting (the collector hung): the export thread is then
//! abandoned, and anything it finishes later is not counted twice.
//!
//! While it runs, the export thread warns on stderr when items were dropped, at most once per
//! interval ([`LossWarnings`]), naming the setting to raise or the export error.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};

use super::stats::SignalStats;

/// Where the export thread sends its batches.
pub(crate) trait BatchExport: Send + 'static {
    /// What is queued: a span, a log record.
    type Item: Send + 'static;
    /// Exports one batch (blocking the export thread, never a producer).
    fn export(&mut self, batch: Vec<Self::Item>) -> OTelSdkResult;
    /// Exports several batches, calling `done` with each one's size and result; the default
    /// exports them one after the other. An exporter that may be called concurrently
    /// overrides it to keep several requests in flight (a collector's round trip, not the CPU,
    /// is then what bounds throughput).
    fn export_all(
        &mut self,
        batches: Vec<Vec<Self::Item>>,
        done: &(dyn Fn(usize, &OTelSdkResult) + Sync),
    ) {
        for batch in batches {
            let size = batch.len();
            let result = self.export(batch);
            done(size, &result);
        }
    }
    /// Shuts the exporter down.
    fn shutdown(&mut self, timeout: Duration) -> OTelSdkResult;
    /// The resource of everything exported from now on.
    fn set_resource(&mut self, resource: &Resource);
}

/// Queue and batch sizes and the time limits of one queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueSettings {
    pub(crate) max_queue_size: usize,
    pub(crate) max_export_batch_size: usize,
    pub(crate) scheduled_delay: Duration,
    pub(crate) export_timeout: Duration,
    /// Batches the exporter may have in flight at once (1 unless it supports more).
    pub(crate) max_concurrent_exports: usize,
}

/// What the queue names in its warnings and metric.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueNames {
    /// `spans`, `log records`.
    pub(crate) items: &'static str,
    /// The environment variable that sizes the queue.
    pub(crate) queue_size_variable: &'static str,
    /// The thread's name.
    pub(crate) thread: &'static str,
}

/// How often the export thread may warn about drops on stderr (`None`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LossWarnings(pub(crate) Option<Duration>);

/// Every item offered, by fate. Shared by the queue, its export thread and the
/// [`super::TelemetryGuard`] that reports them.
#[derive(Debug, Default)]
pub(crate) struct SignalCounters {
    exported: AtomicU64,
    queue_full: AtomicU64,
    export_failed: AtomicU64,
    shutdown: AtomicU64,
}

impl SignalCounters {
    pub(crate) fn snapshot(&self) -> SignalStats {
        SignalStats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped_queue_full: self.queue_full.load(Ordering::Relaxed),
            dropped_export_failed: self.export_failed.load(Ordering::Relaxed),
            dropped_at_shutdown: self.shutdown.load(Ordering::Relaxed),
        }
    }
}

/// The dropped-items counter metric with its attribute sets prepared.
#[derive(Clone)]
struct DroppedMetric {
    counter: Counter<u64>,
    queue_full: [KeyValue; 1],
    export_failed: [KeyValue; 1],
    shutdown: [KeyValue; 1],
}

impl DroppedMetric {
    /// `name` with the `queue_full` and `export_failed` series created at zero, so a
    /// dashboard shows a flat line rather than no data while all is well.
    fn new(meter: &Meter, name: &'static str, unit: &'static str, items: &'static str) -> Self {
        let counter = meter
            .u64_counter(name)
            .with_unit(unit)
            .with_description(format!(
                "Telemetry {items} that never reached the collector: the export queue was full, the export failed, or shutdown gave up waiting."
            ))
            .build();
        let this = Self {
            counter,
            queue_full: [KeyValue::new("reason", "queue_full")],
            export_failed: [KeyValue::new("reason", "export_failed")],
            shutdown: [KeyValue::new("reason", "shutdown")],
        };
        this.counter.add(0, &this.queue_full);
        this.counter.add(0, &this.export_failed);
        this
    }
}

/// State shared between the producers' side and the export thread.
struct Shared {
    counters: Arc<SignalCounters>,
    metric: DroppedMetric,
    /// Items in the channel, not yet taken by the export thread.
    pending: AtomicUsize,
    /// Items taken by the export thread and not yet accounted for.
    in_flight: AtomicUsize,
    /// Shutdown gave up on the export thread: it must stop and count nothing more.
    abandoned: AtomicBool,
    /// The last export error, for warnings.
    last_error: Mutex<Option<String>>,
}

impl Shared {
    /// Accounts for a batch of `size` the export thread took, unless shutdown already counted
    /// it as lost (what shutdown took from `in_flight` is not counted again).
    fn settle(&self, size: usize, result: &OTelSdkResult) {
        let previous = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(size))
            })
            .unwrap_or(0);
        let count = previous.min(size) as u64;
        if count == 0 {
            return;
        }
        match result {
            Ok(()) => {
                self.counters.exported.fetch_add(count, Ordering::Relaxed);
            }
            Err(error) => {
                self.counters
                    .export_failed
                    .fetch_add(count, Ordering::Relaxed);
                self.metric.counter.add(count, &self.metric.export_failed);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(error.to_string());
                }
            }
        }
    }

    /// Shutdown gave up waiting: everything queued or in flight is lost, counted once.
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        let lost = (self.pending.swap(0, Ordering::AcqRel)
            + self.in_flight.swap(0, Ordering::AcqRel)) as u64;
        if lost > 0 {
            self.counters.shutdown.fetch_add(lost, Ordering::Relaxed);
            self.metric.counter.add(lost, &self.metric.shutdown);
        }
    }
}

enum Control {
    /// A full batch is waiting.
    BatchReady,
    Flush(SyncSender<OTelSdkResult>),
    Shutdown(SyncSender<OTelSdkResult>),
    Resource(Resource),
}

/// A bounded queue with one export thread (see the [module docs](self)).
pub(crate) struct ExportQueue<T> {
    items: Sender<T>,
    /// The most items queued at once.
    capacity: usize,
    control: Sender<Control>,
    shared: Arc<Shared>,
    batch_size: usize,
    export_timeout: Duration,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl<T> fmt::Debug for ExportQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportQueue")
            .field("batch_size", &self.batch_size)
            .field("counters", &self.shared.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> ExportQueue<T> {
    /// Starts the export thread. Drops are counted in `counters` and in the metric
    /// `dropped_metric` (unit `unit`) on `meter`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start<E: BatchExport<Item = T>>(
        exporter: E,
        settings: QueueSettings,
        names: QueueNames,
        warnings: LossWarnings,
        meter: &Meter,
        dropped_metric: &'static str,
        unit: &'static str,
        counters: Arc<SignalCounters>,
    ) -> Self {
        let batch_size = settings.max_export_batch_size.max(1);
        // An unbounded (linked-block) channel bounded by `pending`: memory is taken as the queue
        // fills, not reserved up front for its whole capacity.
        let (items, queued) = channel();
        let (control, requests) = channel();
        let shared = Arc::new(Shared {
            counters,
            metric: DroppedMetric::new(meter, dropped_metric, unit, names.items),
            pending: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
            last_error: Mutex::new(None),
        });
        let worker = ExportWorker {
            exporter,
            settings,
            names,
            batch_size,
            concurrency: settings.max_concurrent_exports.max(1),
            shared: Arc::clone(&shared),
            queued,
            warner: Warner::new(warnings),
        };
        let handle = std::thread::Builder::new()
            .name(names.thread.into())
            .spawn(move || {
                // What the exporter does (HTTP, gRPC, its libraries' own `tracing` events) must
                // not become telemetry itself: a log bridge would feed it back into this queue.
                let _suppressed = opentelemetry::Context::enter_telemetry_suppressed_scope();
                worker.run(requests)
            })
            .ok();
        Self {
            items,
            control,
            shared,
            capacity: settings.max_queue_size.max(1),
            batch_size,
            export_timeout: settings.export_timeout,
            worker: Mutex::new(handle),
        }
    }

    /// Queues `item`, or drops and counts it when the queue is full. Never blocks.
    pub(crate) fn offer(&self, item: T) {
        // Counted before it is sent, so the export thread never takes more than is counted
        // and the count bounds the queue.
        let queued = self.shared.pending.fetch_add(1, Ordering::AcqRel) + 1;
        if queued > self.capacity {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            self.shared
                .counters
                .queue_full
                .fetch_add(1, Ordering::Relaxed);
            self.shared
                .metric
                .counter
                .add(1, &self.shared.metric.queue_full);
            return;
        }
        match self.items.send(item) {
            Ok(()) => {
                if queued == self.batch_size {
                    let _ = self.control.send(Control::BatchReady);
                }
            }
            // After shutdown: the provider is gone, nothing to count against.
            Err(_) => {
                self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Exports everything queued now; waits at most the export timeout.
    pub(crate) fn flush(&self) -> OTelSdkResult {
        let (reply, answer) = sync_channel(1);
        self.control
            .send(Control::Flush(reply))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answer
            .recv_timeout(self.export_timeout)
            .map_err(|_| OTelSdkError::Timeout(self.export_timeout))?
    }

    /// Exports what is queued and shuts the exporter down, waiting at most `timeout`; past
    /// it, what is left is counted as lost at shutdown and the export thread abandoned.
    pub(crate) fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
        let (reply, answer) = sync_channel(1);
        self.control
            .send(Control::Shutdown(reply))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        match answer.recv_timeout(timeout) {
            Ok(result) => {
                if let Some(handle) = self
                    .worker
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .take()
                {
                    let _ = handle.join();
                }
                result
            }
            Err(_) => {
                self.shared.abandon();
                Err(OTelSdkError::Timeout(timeout))
            }
        }
    }

    /// Hands the resource to the exporter (on the export thread).
    pub(crate) fn set_resource(&self, resource: &Resource) {
        let _ = self.control.send(Control::Resource(resource.clone()));
    }
}

/// Rate-limited warnings about drops, from the export thread.
struct Warner {
    interval: Option<Duration>,
    last_at: Instant,
    told: u64,
}

impl Warner {
    fn new(LossWarnings(interval): LossWarnings) -> Self {
        Self {
            interval,
            last_at: Instant::now(),
            told: 0,
        }
    }

    fn maybe_warn(&mut self, shared: &Shared, names: &QueueNames, settings: &QueueSettings) {
        let Some(interval) = self.interval else {
            return;
        };
        let stats = shared.counters.snapshot();
        let dropped = stats.dropped();
        if dropped <= self.told || self.last_at.elapsed() < interval {
            return;
        }
        let since = self.last_at.elapsed();
        let mut reasons = Vec::new();
        if stats.dropped_queue_full > 0 {
            reasons.push(format!(
                "export queue full ({} so far): raise {} (now {})",
                stats.dropped_queue_full, names.queue_size_variable, settings.max_queue_size
            ));
        }
        if stats.dropped_export_failed > 0 {
            let error = shared
                .last_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default();
            reasons.push(format!(
                "export failed ({} so far): {error}",
                stats.dropped_export_failed
            ));
        }
        eprintln!(
            "mqtrace: {} telemetry {} dropped in the last {:.0} s; {}",
            dropped - self.told,
            names.items,
            since.as_secs_f64(),
            reasons.join("; ")
        );
        self.told = dropped;
        self.last_at = Instant::now();
    }
}

/// The export thread's state.
struct ExportWorker<E: BatchExport> {
    exporter: E,
    settings: QueueSettings,
    names: QueueNames,
    batch_size: usize,
    /// Batches exported at a time (`QueueSettings::max_concurrent_exports`).
    concurrency: usize,
    shared: Arc<Shared>,
    queued: Receiver<E::Item>,
    warner: Warner,
}

impl<E: BatchExport> ExportWorker<E> {
    fn run(mut self, requests: Receiver<Control>) {
        let mut deadline = Instant::now() + self.settings.scheduled_delay;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let request = requests.recv_timeout(wait);
            if self.shared.abandoned.load(Ordering::Acquire) {
                return;
            }
            let mut more = false;
            match request {
                Ok(Control::BatchReady) => {
                    more = self.export_available(true).1;
                }
                Ok(Control::Resource(resource)) => self.exporter.set_resource(&resource),
                Ok(Control::Flush(reply)) => {
                    let (result, left) = self.export_available(false);
                    let _ = reply.send(result);
                    more = left;
                    deadline = Instant::now() + self.settings.scheduled_delay;
                }
                Ok(Control::Shutdown(reply)) => {
                    let (mut result, _) = self.export_available(false);
                    let shutdown = self.exporter.shutdown(self.settings.export_timeout);
                    if result.is_ok() {
                        result = shutdown;
                    }
                    let _ = reply.send(result);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    more = self.export_available(false).1;
                    deadline = Instant::now() + self.settings.scheduled_delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.export_available(false);
                    let _ = self.exporter.shutdown(self.settings.export_timeout);
                    return;
                }
            }
            self.warner
                .maybe_warn(&self.shared, &self.names, &self.settings);
            if more {
                // Full batches arrived while exporting (no new signal comes for them): go
                // again at once, after any control request already waiting.
                deadline = Instant::now();
            }
        }
    }

    /// Exports, in batches, what was queued when it was called (so a flush ends under
    /// sustained load): only full batches when `full_only` (a batch-ready signal), everything
    /// otherwise; up to the exporter's concurrency at a time. Returns the first failure, and
    /// whether a full batch is waiting now.
    fn export_available(&mut self, full_only: bool) -> (OTelSdkResult, bool) {
        let first_failure: Mutex<OTelSdkResult> = Mutex::new(Ok(()));
        let mut budget = self.shared.pending.load(Ordering::Acquire);
        let mut drained = false;
        while budget > 0 && !drained {
            if self.shared.abandoned.load(Ordering::Acquire)
                || (full_only && budget < self.batch_size)
            {
                break;
            }
            let mut batches = Vec::new();
            while batches.len() < self.concurrency && budget > 0 {
                if full_only && budget < self.batch_size {
                    break;
                }
                let want = budget.min(self.batch_size);
                let mut batch = Vec::with_capacity(want);
                while batch.len() < want {
                    match self.queued.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let taken = batch.len();
                if taken < want {
                    drained = true;
                }
                if taken == 0 {
                    break;
                }
                budget = budget.saturating_sub(taken);
                let _ =
                    self.shared
                        .pending
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                            Some(p.saturating_sub(taken))
                        });
                self.shared.in_flight.fetch_add(taken, Ordering::AcqRel);
                batches.push(batch);
                if drained {
                    break;
                }
            }
            if batches.is_empty() {
                break;
            }
            let shared = &self.shared;
            let failure = &first_failure;
            self.exporter.export_all(batches, &|size, result| {
                shared.settle(size, result);
                if let (Err(error), Ok(mut first)) = (result, failure.lock())
                    && first.is_ok()
                {
                    *first = Err(OTelSdkError::InternalFailure(error.to_string()));
                }
            });
        }
        let more = self.shared.pending.load(Ordering::Acquire) >= self.batch_size;
        let result = first_failure
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (result, more)
    }
}
