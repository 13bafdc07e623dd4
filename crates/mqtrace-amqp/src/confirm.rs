//! The second half of a publish: the broker's confirm. [`PendingConfirm`] is a publish the
//! broker has but has not confirmed yet (what [`TracedPublisher::begin_publish`] returns,
//! like lapin's `PublisherConfirm`); awaiting it ends the send span.
//!
//! [`TracedPublisher::begin_publish`]: crate::TracedPublisher::begin_publish

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use mqtrace_core::MessagingSpan;
use mqtrace_core::span::SpanExtras;

use crate::error::{Error, Result, error_type};
use crate::publisher::{Published, Unconfirmed};

/// What hands a message back when the broker does not confirm it.
pub(crate) struct Kept<'a> {
    pub(crate) exchange: Cow<'a, str>,
    pub(crate) routing_key: Cow<'a, str>,
    pub(crate) options: BasicPublishOptions,
    pub(crate) payload: Cow<'a, [u8]>,
    pub(crate) properties: BasicProperties,
    pub(crate) extras: SpanExtras,
    pub(crate) resend_count: u32,
}

impl Kept<'_> {
    /// Ends `span` as failed and gives the message back, for the caller to republish.
    pub(crate) fn unconfirmed(
        &self,
        span: MessagingSpan,
        error_type: String,
        description: String,
    ) -> Box<Unconfirmed> {
        let attempt = span.context().clone();
        span.end_with_error(error_type, description);
        Box::new(Unconfirmed {
            exchange: self.exchange.clone().into_owned(),
            routing_key: self.routing_key.clone().into_owned(),
            options: self.options,
            payload: self.payload.to_vec(),
            properties: self.properties.clone(),
            extras: self.extras.clone(),
            attempt,
            resend_count: self.resend_count,
        })
    }

    fn into_owned(self) -> Kept<'static> {
        Kept {
            exchange: Cow::Owned(self.exchange.into_owned()),
            routing_key: Cow::Owned(self.routing_key.into_owned()),
            options: self.options,
            payload: Cow::Owned(self.payload.into_owned()),
            properties: self.properties,
            extras: self.extras,
            resend_count: self.resend_count,
        }
    }
}

/// A published message waiting for its confirm, with what hands it back when none comes.
pub(crate) struct Sent<'a> {
    pub(crate) span: MessagingSpan,
    pub(crate) confirm: PublisherConfirm,
    pub(crate) destination: String,
    pub(crate) kept: Kept<'a>,
}

impl Sent<'_> {
    /// The same, owning the message (copied), to outlive the caller's borrows.
    pub(crate) fn into_owned(self) -> Sent<'static> {
        Sent {
            span: self.span,
            confirm: self.confirm,
            destination: self.destination,
            kept: self.kept.into_owned(),
        }
    }

    /// Waits for the broker's confirm and ends the send span with its outcome.
    pub(crate) async fn confirmed(self) -> Result<Published> {
        let Sent {
            span,
            confirm,
            destination,
            kept,
        } = self;
        match confirm.await {
            Err(source) => Err(Error::Publish {
                destination: destination.clone(),
                message: kept.unconfirmed(span, error_type(&source), source.to_string()),
                source,
            }),
            Ok(Confirmation::NotRequested) => {
                span.end();
                Ok(Published::Sent)
            }
            Ok(Confirmation::Ack(None)) => {
                span.end();
                Ok(Published::Confirmed)
            }
            Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
                let reply_text = returned.reply_text.as_str().to_owned();
                span.end_with_error(
                    "returned",
                    format!("message returned: {} {reply_text}", returned.reply_code),
                );
                Err(Error::Returned {
                    destination,
                    reply_code: returned.reply_code,
                    reply_text,
                })
            }
            Ok(Confirmation::Nack(None)) => Err(Error::Nacked {
                message: kept.unconfirmed(
                    span,
                    "nack".to_owned(),
                    "the broker nacked the message".to_owned(),
                ),
                destination,
            }),
        }
    }
}

/// A publish the broker has but has not confirmed yet; await it for the outcome (what
/// [`TracedPublisher::publish`](crate::TracedPublisher::publish) returns). Its send span ends
/// when it resolves, or as `cancelled` when it is dropped first (the message stays
/// published).
#[must_use = "the publish's outcome (a nack, a return) is known only by awaiting it"]
pub struct PendingConfirm {
    confirmed: Pin<Box<dyn Future<Output = Result<Published>> + Send>>,
}

impl PendingConfirm {
    pub(crate) fn new(sent: Sent<'static>) -> Self {
        Self {
            confirmed: Box::pin(sent.confirmed()),
        }
    }
}

impl fmt::Debug for PendingConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingConfirm").finish_non_exhaustive()
    }
}

impl Future for PendingConfirm {
    type Output = Result<Published>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.confirmed.as_mut().poll(cx)
    }
}
