//! `error.type` values for failed operations.
//!
//! The OpenTelemetry semantic conventions ask for a low-cardinality `error.type`: an error
//! code when there is one, else the fully-qualified class name of the error. mqtrace uses the
//! error's full Rust type path by default ([`error_type_name`]: `std::io::error::Error`,
//! `anyhow::Error`, `my_service::ScoringError`), so two different error types never share a
//! value. An error type that knows a better code implements [`ErrorType`] and is run with
//! [`MessagingSpan::run_with_error_type`](crate::MessagingSpan::run_with_error_type).
//!
//! The path is what [`std::any::type_name`] reports, with `core::marker::Send`/`Sync`
//! shortened to `Send`/`Sync` and `{{closure}}` segments dropped. Rust does not promise that text stays the same across compiler
//! versions (a module may move), so dashboards should match on it loosely, or the error type
//! should implement [`ErrorType`] when the value must be stable.

use std::borrow::Cow;

/// An error that supplies its own `error.type` value, e.g. an error code.
///
/// Keep the value low-cardinality: one per kind of failure, never a message, an id or a
/// number that varies per occurrence.
///
/// # Example
///
/// ```
/// use std::borrow::Cow;
/// use mqtrace_core::ErrorType;
///
/// #[derive(Debug)]
/// enum ScoringError {
///     ModelUnavailable,
///     InvalidInput { field: String },
/// }
///
/// impl ErrorType for ScoringError {
///     fn error_type(&self) -> Cow<'static, str> {
///         match self {
///             ScoringError::ModelUnavailable => "model_unavailable".into(),
///             // Not the field name: that would raise the cardinality.
///             ScoringError::InvalidInput { .. } => "invalid_input".into(),
///         }
///     }
/// }
///
/// assert_eq!(ScoringError::ModelUnavailable.error_type(), "model_unavailable");
/// ```
///
/// A handler returning such an error records it on the process span through
/// [`MessagingSpan::run_with_error_type`](crate::MessagingSpan::run_with_error_type), e.g.
/// `consumer.process_span(&message).run_with_error_type(handler).await` with the Kafka or
/// AMQP consumers (whose `process` records the type path instead).
pub trait ErrorType {
    /// The `error.type` to record for this error.
    fn error_type(&self) -> Cow<'static, str>;
}

impl<E: ErrorType + ?Sized> ErrorType for &E {
    fn error_type(&self) -> Cow<'static, str> {
        (**self).error_type()
    }
}

impl<E: ErrorType + ?Sized> ErrorType for Box<E> {
    fn error_type(&self) -> Cow<'static, str> {
        (**self).error_type()
    }
}

/// Dropped from type paths: the module of `Send`/`Sync` in `dyn Error + Send + Sync` ...
const AUTO_TRAITS: &str = "core::marker::";
/// ... and the closure/async-block segments of a type declared inside one.
const CLOSURE: &str = "{{closure}}::";

/// The `error.type` mqtrace records for an error of type `E` that does not implement
/// [`ErrorType`]: its full type path, generic arguments included (`Send`/`Sync` without
/// their module, and no `{{closure}}` segments for a type declared inside a function's async
/// body). Borrowed, without allocating, for the common case of a plain type.
///
/// A boxed `dyn Error` cannot name its concrete type without downcasting to a known list, so
/// it is recorded as the box: return a concrete error type (or implement [`ErrorType`]) where
/// the distinction matters.
///
/// # Example
///
/// ```
/// use mqtrace_core::error_type_name;
///
/// assert_eq!(error_type_name::<std::io::Error>(), "std::io::error::Error");
/// assert_eq!(
///     error_type_name::<Box<dyn std::error::Error + Send + Sync>>(),
///     "alloc::boxed::Box<dyn core::error::Error + Send + Sync>"
/// );
/// ```
pub fn error_type_name<E: ?Sized>() -> Cow<'static, str> {
    let full = std::any::type_name::<E>();
    if full.contains(AUTO_TRAITS) || full.contains(CLOSURE) {
        Cow::Owned(full.replace(AUTO_TRAITS, "").replace(CLOSURE, ""))
    } else {
        Cow::Borrowed(full)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[derive(Debug)]
    struct HandlerError;

    impl ErrorType for HandlerError {
        fn error_type(&self) -> Cow<'static, str> {
            "handler_failed".into()
        }
    }

    #[test]
    fn the_default_is_the_full_type_path() {
        assert_eq!(
            error_type_name::<HandlerError>(),
            "mqtrace_core::error_type::tests::HandlerError"
        );
        assert_eq!(error_type_name::<std::io::Error>(), "std::io::error::Error");
        assert_eq!(
            error_type_name::<std::fmt::Error>(),
            "core::fmt::Error",
            "not the same value as io::Error"
        );
        assert_eq!(
            error_type_name::<Box<dyn std::error::Error>>(),
            "alloc::boxed::Box<dyn core::error::Error>"
        );
        assert_eq!(
            error_type_name::<Box<dyn std::error::Error + Send + Sync>>(),
            "alloc::boxed::Box<dyn core::error::Error + Send + Sync>"
        );
        let in_async_block = async {
            struct Local;
            error_type_name::<Local>()
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert_eq!(
            std::pin::pin!(in_async_block).poll(&mut cx),
            std::task::Poll::Ready(Cow::Borrowed(
                "mqtrace_core::error_type::tests::the_default_is_the_full_type_path::Local"
            ))
        );
        assert_eq!(
            error_type_name::<Vec<u8>>(),
            "alloc::vec::Vec<u8>",
            "generic arguments kept"
        );
    }

    #[test]
    fn an_override_reaches_through_references_and_boxes() {
        assert_eq!(HandlerError.error_type(), "handler_failed");
        assert_eq!(
            <&HandlerError as ErrorType>::error_type(&&HandlerError),
            "handler_failed"
        );
        assert_eq!(Box::new(HandlerError).error_type(), "handler_failed");
    }
}
