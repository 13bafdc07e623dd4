//! [`BatchCollector`]: forms batches from a [`MessageSource`]: up to `max_batch` messages,
//! or whatever arrived within `max_wait` of the batch's first message, whichever comes first.
//! On shutdown the open batch is handed out (drained), never dropped.

use std::fmt;
use std::time::Duration;

use mqtrace_core::batch::MessageSource;
use tokio::sync::watch;
use tokio::time::Instant;

/// Batch size and wait limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchConfig {
    /// Most messages in one batch (at least 1).
    pub max_batch: usize,
    /// Longest a batch stays open after its first message arrived.
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    /// 256 messages or 20 ms.
    fn default() -> Self {
        Self {
            max_batch: 256,
            max_wait: Duration::from_millis(20),
        }
    }
}

impl BatchConfig {
    /// A batch of at most `max_batch` messages (at least 1), open at most `max_wait`.
    pub fn new(max_batch: usize, max_wait: Duration) -> Self {
        Self {
            max_batch: max_batch.max(1),
            max_wait,
        }
    }
}

/// Asks a worker (and its collector) to stop; cloneable, and cheap to check.
///
/// # Example
///
/// ```
/// use mqtrace_inference::Shutdown;
///
/// let shutdown = Shutdown::new();
/// let for_worker = shutdown.clone();
/// assert!(!for_worker.is_triggered());
/// shutdown.trigger();
/// assert!(for_worker.is_triggered());
/// ```
#[derive(Clone)]
pub struct Shutdown {
    sender: std::sync::Arc<watch::Sender<bool>>,
    receiver: watch::Receiver<bool>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        let (sender, receiver) = watch::channel(false);
        Self {
            sender: std::sync::Arc::new(sender),
            receiver,
        }
    }

    /// Triggers the signal for every clone.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Whether the signal was triggered.
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once the signal is triggered. Cancel-safe.
    pub async fn triggered(&self) {
        let mut receiver = self.receiver.clone();
        // An error means every sender is gone, which cannot happen while `self` holds one.
        let _ = receiver.wait_for(|triggered| *triggered).await;
    }
}

/// Collects messages from a source into batches.
///
/// [`BatchCollector::next_batch`] is cancel-safe: the messages of a batch being formed stay
/// in the collector when its future is dropped, and come out with the next batch.
///
/// # Example
///
/// ```no_run
/// # async fn run<S: mqtrace_core::batch::MessageSource>(source: S) -> Result<(), S::Error> {
/// use std::time::Duration;
/// use mqtrace_inference::{BatchCollector, BatchConfig, Shutdown};
///
/// let shutdown = Shutdown::new();
/// let mut collector = BatchCollector::new(source, BatchConfig::new(256, Duration::from_millis(20)));
/// while let Some(batch) = collector.next_batch(&shutdown).await? {
///     // process, reply, then settle:
///     collector.source_mut().settle(&batch, &opentelemetry::Context::new()).await?;
/// }
/// # Ok(()) }
/// ```
pub struct BatchCollector<S: MessageSource> {
    source: S,
    config: BatchConfig,
    pending: Vec<S::Message>,
    opened_at: Option<Instant>,
    last_formation: Option<Duration>,
    deferred_error: Option<S::Error>,
    ended: bool,
}

impl<S: MessageSource> fmt::Debug for BatchCollector<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchCollector")
            .field("config", &self.config)
            .field("pending", &self.pending.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<S: MessageSource> BatchCollector<S> {
    /// Collects from `source` with `config`'s limits.
    pub fn new(source: S, config: BatchConfig) -> Self {
        Self {
            source,
            config: BatchConfig::new(config.max_batch, config.max_wait),
            pending: Vec::new(),
            opened_at: None,
            last_formation: None,
            deferred_error: None,
            ended: false,
        }
    }

    /// The limits in use.
    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// The source, e.g. to settle a processed batch.
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Gives back the source; messages of an unfinished batch are returned with it.
    pub fn into_parts(self) -> (S, Vec<S::Message>) {
        (self.source, self.pending)
    }

    /// Hands out the open batch; `next_batch` never lets it grow past `max_batch`.
    fn take_batch(&mut self) -> Vec<S::Message> {
        self.last_formation = self.opened_at.take().map(|opened| opened.elapsed());
        std::mem::take(&mut self.pending)
    }

    /// How long the batch last returned by [`BatchCollector::next_batch`] took to form: from
    /// its first message's arrival to its hand-out.
    pub fn last_formation(&self) -> Option<Duration> {
        self.last_formation
    }

    /// The next batch: `Ok(None)` once the source has ended or `shutdown` was triggered and
    /// nothing is left. A receive error is returned after the messages collected before it.
    pub async fn next_batch(
        &mut self,
        shutdown: &Shutdown,
    ) -> Result<Option<Vec<S::Message>>, S::Error> {
        loop {
            if self.pending.len() >= self.config.max_batch {
                return Ok(Some(self.take_batch()));
            }
            if self.pending.is_empty() {
                if let Some(error) = self.deferred_error.take() {
                    return Err(error);
                }
                if self.ended || shutdown.is_triggered() {
                    return Ok(None);
                }
            } else if self.ended || shutdown.is_triggered() || self.deferred_error.is_some() {
                return Ok(Some(self.take_batch()));
            }

            let deadline = self.opened_at.map(|opened| opened + self.config.max_wait);
            tokio::select! {
                biased;
                () = shutdown.triggered() => continue,
                () = sleep_until(deadline) => return Ok(Some(self.take_batch())),
                next = self.source.next_message() => match next {
                    Some(Ok(message)) => {
                        if self.pending.is_empty() {
                            self.opened_at = Some(Instant::now());
                        }
                        self.pending.push(message);
                    }
                    Some(Err(error)) => self.deferred_error = Some(error),
                    None => self.ended = true,
                },
            }
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtrace_core::batch::InboundMessage;
    use mqtrace_core::propagation::{ExtractOutcome, Extracted};
    use opentelemetry::{Context, KeyValue};
    use std::time::SystemTime;
    use tokio::sync::mpsc;

    #[derive(Debug)]
    struct Message(u64, Extracted);

    impl InboundMessage for Message {
        fn extracted(&self) -> &Extracted {
            &self.1
        }
        fn payload(&self) -> &[u8] {
            b""
        }
        fn key(&self) -> Option<&[u8]> {
            None
        }
        fn destination(&self) -> &str {
            "q"
        }
        fn enqueued_at(&self) -> Option<SystemTime> {
            None
        }
        fn message_id(&self) -> Option<&str> {
            None
        }
        fn identity(&self) -> Vec<KeyValue> {
            Vec::new()
        }
    }

    /// A channel as a source: closing the sender ends it.
    struct Channel(mpsc::UnboundedReceiver<Result<u64, std::io::Error>>);

    impl MessageSource for Channel {
        type Message = Message;
        type Error = std::io::Error;
        fn system(&self) -> &'static str {
            "test"
        }
        async fn next_message(&mut self) -> Option<Result<Message, std::io::Error>> {
            let next = self.0.recv().await?;
            Some(next.map(|n| {
                Message(
                    n,
                    Extracted {
                        context: Context::new(),
                        outcome: ExtractOutcome::Missing,
                    },
                )
            }))
        }
        async fn settle(&mut self, _: &[Message], _: &Context) -> Result<(), std::io::Error> {
            Ok(())
        }
    }

    fn numbers(batch: &[Message]) -> Vec<u64> {
        batch.iter().map(|m| m.0).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn full_batches_come_out_without_waiting() {
        let (tx, rx) = mpsc::unbounded_channel();
        for n in 0..10 {
            tx.send(Ok(n)).expect("send");
        }
        let mut collector =
            BatchCollector::new(Channel(rx), BatchConfig::new(4, Duration::from_secs(3600)));
        let shutdown = Shutdown::new();
        let first = collector
            .next_batch(&shutdown)
            .await
            .expect("ok")
            .expect("batch");
        assert_eq!(numbers(&first), [0, 1, 2, 3]);
        let second = collector
            .next_batch(&shutdown)
            .await
            .expect("ok")
            .expect("batch");
        assert_eq!(numbers(&second), [4, 5, 6, 7]);
        drop(tx);
        let last = collector
            .next_batch(&shutdown)
            .await
            .expect("ok")
            .expect("batch");
        assert_eq!(
            numbers(&last),
            [8, 9],
            "the source ended: the open batch drains"
        );
        assert!(collector.next_batch(&shutdown).await.expect("ok").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_closes_after_max_wait() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Ok(1)).expect("send");
        tx.send(Ok(2)).expect("send");
        let mut collector = BatchCollector::new(
            Channel(rx),
            BatchConfig::new(100, Duration::from_millis(50)),
        );
        let started = Instant::now();
        let batch = collector
            .next_batch(&Shutdown::new())
            .await
            .expect("ok")
            .expect("batch");
        assert_eq!(numbers(&batch), [1, 2]);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drains_the_open_batch() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Ok(7)).expect("send");
        let mut collector = BatchCollector::new(
            Channel(rx),
            BatchConfig::new(100, Duration::from_secs(3600)),
        );
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            trigger.trigger();
        });
        let batch = collector
            .next_batch(&shutdown)
            .await
            .expect("ok")
            .expect("batch");
        assert_eq!(numbers(&batch), [7]);
        assert!(collector.next_batch(&shutdown).await.expect("ok").is_none());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_next_batch_keeps_the_collected_messages() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Ok(1)).expect("send");
        let mut collector =
            BatchCollector::new(Channel(rx), BatchConfig::new(3, Duration::from_secs(3600)));
        let shutdown = Shutdown::new();
        // Time out while the batch is open (1 of 3 messages).
        let timed_out =
            tokio::time::timeout(Duration::from_millis(10), collector.next_batch(&shutdown)).await;
        assert!(timed_out.is_err());
        tx.send(Ok(2)).expect("send");
        tx.send(Ok(3)).expect("send");
        let batch = collector
            .next_batch(&shutdown)
            .await
            .expect("ok")
            .expect("batch");
        assert_eq!(numbers(&batch), [1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_come_after_the_messages_before_them() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Ok(1)).expect("send");
        tx.send(Err(std::io::Error::other("broker gone")))
            .expect("send");
        let mut collector =
            BatchCollector::new(Channel(rx), BatchConfig::new(10, Duration::from_secs(3600)));
        let shutdown = Shutdown::new();
        let batch = collector
            .next_batch(&shutdown)
            .await
            .expect("ok")
            .expect("batch");
        assert_eq!(numbers(&batch), [1]);
        let error = collector.next_batch(&shutdown).await.expect_err("error");
        assert_eq!(error.to_string(), "broker gone");
        drop(tx);
    }
}
