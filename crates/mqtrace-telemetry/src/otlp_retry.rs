//! The retry rule both of mqtrace's OTLP exporters follow: a failure the OTLP specification
//! calls retryable is tried again after an exponential backoff (100 ms, doubling, or what
//! the collector asked for), at most three times and never past the request's deadline; any
//! other failure ends the export at once.

use std::time::{Duration, Instant};

/// How many times a batch is retried after a retryable failure (time permitting).
const MAX_RETRIES: u32 = 3;
/// The first backoff; it doubles per retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What one attempt came to.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Delivered.
    Delivered,
    /// Worth another try (after `after` when the collector said so).
    Retryable {
        error: String,
        after: Option<Duration>,
    },
    /// Not worth another try.
    Failed(String),
}

/// Runs `attempt` until it delivers, fails for good, or the retries or `timeout` run out;
/// the error is the last attempt's.
pub(crate) fn with_retries(
    timeout: Duration,
    mut attempt: impl FnMut(Duration) -> Attempt,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut retries = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (error, after) = match attempt(left) {
            Attempt::Delivered => return Ok(()),
            Attempt::Failed(error) => return Err(error),
            Attempt::Retryable { error, after } => (error, after),
        };
        let wait = after.unwrap_or(backoff);
        if retries >= MAX_RETRIES || Instant::now() + wait >= deadline {
            return Err(error);
        }
        std::thread::sleep(wait);
        retries += 1;
        backoff *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_failures_are_retried_three_times_at_most() {
        let mut calls = 0;
        let result = with_retries(Duration::from_secs(10), |_| {
            calls += 1;
            Attempt::Retryable {
                error: format!("attempt {calls}"),
                after: Some(Duration::from_millis(1)),
            }
        });
        assert_eq!(calls, 4);
        assert_eq!(result, Err("attempt 4".to_owned()));
    }

    #[test]
    fn a_fatal_failure_or_a_delivery_ends_at_once() {
        let mut calls = 0;
        let result = with_retries(Duration::from_secs(10), |_| {
            calls += 1;
            Attempt::Failed("no".into())
        });
        assert_eq!((calls, result), (1, Err("no".to_owned())));
        assert_eq!(
            with_retries(Duration::from_secs(10), |_| Attempt::Delivered),
            Ok(())
        );
    }

    #[test]
    fn no_retry_waits_past_the_deadline() {
        let mut calls = 0;
        let result = with_retries(Duration::from_millis(50), |_| {
            calls += 1;
            Attempt::Retryable {
                error: "busy".into(),
                after: Some(Duration::from_secs(60)),
            }
        });
        assert_eq!((calls, result), (1, Err("busy".to_owned())));
    }
}
