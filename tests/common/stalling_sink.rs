//! A reply sink that stops answering after a number of sends, as a batch worker does when its
//! process dies in the middle of a batch: the next send never completes, so the batch is never
//! settled.

use std::sync::atomic::{AtomicUsize, Ordering};

use mqtrace::core::batch::{MessageSink, Outgoing, SendFailure};
use opentelemetry::Context;
use opentelemetry::trace::Link;

/// Passes the first `allowed` sends to `inner`, then hangs every later one forever.
pub struct StallingSink<S> {
    inner: S,
    allowed: AtomicUsize,
}

impl<S> StallingSink<S> {
    /// Answers `sends` sends through `inner`, then stalls.
    pub fn after(sends: usize, inner: S) -> Self {
        Self {
            inner,
            allowed: AtomicUsize::new(sends),
        }
    }
}

impl<S: MessageSink> MessageSink for StallingSink<S> {
    type Error = S::Error;

    fn classify(&self, error: &Self::Error) -> SendFailure {
        self.inner.classify(error)
    }

    async fn send(
        &self,
        message: Outgoing<'_>,
        parent: &Context,
        links: Vec<Link>,
    ) -> Result<(), Self::Error> {
        let left = self
            .allowed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if left.is_err() {
            std::future::pending::<()>().await;
        }
        self.inner.send(message, parent, links).await
    }
}
