//! Messaging spans: `send` (PRODUCER), `receive` (CLIENT), `process` (CONSUMER) and
//! `settle` (CLIENT), named `{operation} {destination}` and attributed per the OpenTelemetry
//! messaging semantic conventions.
//!
//! A [`MessagingSpan`] records the matching semconv metrics when it ends, so the span and the
//! metrics can never disagree. If it is dropped without being ended (the caller's future was
//! cancelled), it ends with `error.type = cancelled`.

mod builder;
mod key_capture;
mod messaging_span;
mod operation;
mod server;
mod shared_strings;

pub use crate::error_type::error_type_name;
pub use builder::{MessagingSpanBuilder, SpanExtras};
pub use key_capture::KeyCapture;
pub(crate) use messaging_span::keeping_random;
pub use messaging_span::{MessagingSpan, with_span_keeping_random};
pub use operation::{OperationType, ParentMode};
pub use server::parse_server;
#[cfg(feature = "bound-instruments")]
pub(crate) use shared_strings::same_str;
pub(crate) use shared_strings::shared_attributes;
pub use shared_strings::{attribute_string, destination_name, partition_id};

#[cfg(test)]
mod tests {
    use super::shared_strings::interned_span_name;
    use super::*;
    use crate::instrumentation::Instrumentation;
    use opentelemetry::Context;
    use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt};
    use std::borrow::Cow;

    #[test]
    fn span_kinds_follow_semconv() {
        assert_eq!(OperationType::Send.span_kind(), SpanKind::Producer);
        assert_eq!(OperationType::Receive.span_kind(), SpanKind::Client);
        assert_eq!(OperationType::Process.span_kind(), SpanKind::Consumer);
        assert_eq!(OperationType::Settle.span_kind(), SpanKind::Client);
    }

    #[test]
    fn hashed_keys_are_stable() {
        // FNV-1a 64 test vector: "a" -> af63dc4c8601ec8c
        assert_eq!(
            KeyCapture::Hashed.capture(b"a").as_deref(),
            Some("af63dc4c8601ec8c")
        );
        assert_eq!(
            KeyCapture::Raw.capture(&[0xff, 0x01]).as_deref(),
            Some("ff01")
        );
    }

    #[test]
    fn destination_names_are_shared_and_the_cache_stays_bounded() {
        let orders = destination_name("orders");
        for i in 0..100 {
            assert_eq!(
                destination_name(&format!("topic-{i}")).as_str(),
                format!("topic-{i}")
            );
        }
        // Evicted after 100 other names: a new string, equal in value.
        let again = destination_name("orders");
        assert_eq!(again.as_str(), orders.as_str());
        let hit = destination_name("orders");
        assert!(std::ptr::eq(again.as_str(), hit.as_str()));
    }

    mod random_flag {
        use super::*;
        use crate::propagation::Propagation;
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

        const TRACE: u128 = 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c;
        const PARENT: u64 = 0xb7ad_6b71_6920_3331;

        fn instrumentation(sampler: Sampler) -> (SdkTracerProvider, Instrumentation) {
            let provider = SdkTracerProvider::builder().with_sampler(sampler).build();
            let instrumentation = Instrumentation::builder()
                .with_tracer_provider(&provider)
                .build();
            (provider, instrumentation)
        }

        fn remote(flags: u8) -> Context {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(TRACE),
                SpanId::from(PARENT),
                TraceFlags::new(flags),
                true,
                TraceState::from_key_value([("congo", "t61rcWkgMzE")]).expect("valid"),
            ))
        }

        /// The `traceparent` flags and `tracestate` a span's context injects.
        fn injected(cx: &Context) -> (String, String) {
            let injected = Propagation::global().inject(cx);
            let get = |key: &str| {
                injected
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_owned())
                    .unwrap_or_default()
            };
            let traceparent = get("traceparent");
            let flags = traceparent
                .rsplit('-')
                .next()
                .unwrap_or_default()
                .to_owned();
            (flags, get("tracestate"))
        }

        fn process(instrumentation: &Instrumentation, parent: &Context) -> MessagingSpan {
            MessagingSpanBuilder::new("kafka", OperationType::Process, "process")
                .with_destination("orders")
                .start(instrumentation, parent)
        }

        fn send(instrumentation: &Instrumentation, parent: &Context) -> MessagingSpan {
            MessagingSpanBuilder::new("kafka", OperationType::Send, "send")
                .with_destination("replies")
                .start(instrumentation, parent)
        }

        #[test]
        fn random_unsampled_context_stays_random_through_process_and_send() {
            let (_provider, instrumentation) =
                instrumentation(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
            let process = process(&instrumentation, &remote(0x02));
            let sc = process.span_context();
            assert!(!process.context().span().is_recording());
            assert_eq!(sc.trace_flags(), TraceFlags::new(0x02));
            assert_eq!(sc.trace_id(), TraceId::from(TRACE));
            assert_ne!(
                sc.span_id(),
                SpanId::from(PARENT),
                "the process span's own id"
            );
            assert!(!sc.is_remote());
            assert_eq!(
                injected(process.context()),
                ("02".to_owned(), "congo=t61rcWkgMzE".to_owned())
            );
            let reply = send(&instrumentation, process.context());
            assert_eq!(reply.span_context().trace_flags(), TraceFlags::new(0x02));
            assert_eq!(injected(reply.context()).0, "02");
            reply.end();
            process.end();
        }

        #[test]
        fn random_sampled_context_stays_random_and_sampled() {
            let (_provider, instrumentation) =
                instrumentation(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
            let process = process(&instrumentation, &remote(0x03));
            assert!(process.context().span().is_recording());
            assert_eq!(injected(process.context()).0, "03");
            let reply = send(&instrumentation, process.context());
            assert_eq!(injected(reply.context()).0, "03");
        }

        #[test]
        fn a_local_drop_clears_sampled_and_keeps_random() {
            let (_provider, instrumentation) = instrumentation(Sampler::AlwaysOff);
            let process = process(&instrumentation, &remote(0x03));
            assert_eq!(injected(process.context()).0, "02");
            let reply = send(&instrumentation, process.context());
            assert_eq!(injected(reply.context()).0, "02");
        }

        #[test]
        fn unsampled_context_without_random_stays_00() {
            let (_provider, instrumentation) =
                instrumentation(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
            let process = process(&instrumentation, &remote(0x00));
            assert_eq!(injected(process.context()).0, "00");
        }

        #[test]
        fn a_new_trace_does_not_inherit_the_random_flag_of_the_one_it_links_to() {
            // ParentMode::Link: the process span roots a new trace id; the random flag said
            // something about the producer's trace id only.
            let (_provider, instrumentation) = instrumentation(Sampler::AlwaysOff);
            let process = process(&instrumentation, &Context::new());
            let sc = process.span_context();
            assert_ne!(sc.trace_id(), TraceId::from(TRACE));
            assert_eq!(sc.trace_flags(), TraceFlags::new(0x00));
        }

        #[test]
        fn local_roots_carry_no_random_flag_sampled_or_not() {
            // mqtrace's local roots take the SDK's flags: 01 sampled, 00 not. Neither sets the
            // random flag (the SDK 0.33.1 never does for a new trace id), so an unsampled root
            // stays consistent with a sampled one.
            let (_on, sampled) = instrumentation(Sampler::AlwaysOn);
            let (_off, unsampled) = instrumentation(Sampler::AlwaysOff);
            let root = send(&sampled, &Context::new());
            assert_eq!(root.span_context().trace_flags(), TraceFlags::SAMPLED);
            let root = send(&unsampled, &Context::new());
            assert_eq!(root.span_context().trace_flags(), TraceFlags::NOT_SAMPLED);
            assert_eq!(injected(root.context()).0, "00");
        }
    }

    #[test]
    fn a_dropped_span_still_carries_its_context_onward() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .build();
        let instrumentation = Instrumentation::builder()
            .with_tracer_provider(&provider)
            .build();
        let trace_id = TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c_u128);
        let parent = Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            SpanId::from(0xb7ad_6b71_6920_3331_u64),
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        ));
        let span = MessagingSpanBuilder::new("kafka", OperationType::Send, "send")
            .with_destination("orders")
            .start(&instrumentation, &parent);
        let sc = span.span_context();
        assert!(sc.is_valid() && !sc.is_sampled() && !sc.is_remote());
        assert_eq!(sc.trace_id(), trace_id);
        assert_ne!(sc.span_id(), SpanId::from(0xb7ad_6b71_6920_3331_u64));
        assert!(!span.context().span().is_recording());
        let injected = instrumentation.propagation().inject(span.context());
        let traceparent = injected
            .iter()
            .find(|(key, _)| *key == "traceparent")
            .map(|(_, value)| value.to_owned());
        assert_eq!(
            traceparent,
            Some(format!("00-{trace_id}-{}-00", sc.span_id()))
        );
        span.end();
    }

    #[test]
    fn span_names_are_interned_and_exact() {
        let first = interned_span_name("send", Some("orders"));
        assert_eq!(first, "send orders");
        assert!(matches!(first, Cow::Borrowed(_)));
        let again = interned_span_name("send", Some("orders"));
        assert!(std::ptr::eq(first.as_ptr(), again.as_ptr()));
        // Names that share a prefix or a suffix are not confused.
        assert_eq!(interned_span_name("send", Some("order")), "send order");
        assert_eq!(interned_span_name("sen", Some("d orders")), "sen d orders");
        assert_eq!(
            interned_span_name("process", Some("orders")),
            "process orders"
        );
        assert_eq!(interned_span_name("poll", None), "poll");
    }

    #[test]
    fn parse_server_handles_odd_input() {
        assert_eq!(parse_server("localhost"), None);
        assert_eq!(parse_server("host:notaport"), None);
        assert_eq!(parse_server("PLAINTEXT://k:9093"), Some(("k".into(), 9093)));
    }
}
