//! A traced Kafka round trip: produce requests, each inside its own `inference.request`
//! span, consume them in a consumer group, and check that every consumed message continued
//! its producer's trace.
//!
//! ```text
//! cargo run --release --example kafka_roundtrip                      # embedded Kafka
//! cargo run --release --example kafka_roundtrip -- --bootstrap localhost:9092 --messages 50
//! ```
//!
//! Traces, metrics and logs go to `./telemetry/*.jsonl` (OTLP-JSON), or over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use mqtrace::kafka::rdkafka::consumer::CommitMode;
use mqtrace::kafka::rdkafka::message::Message;
use mqtrace::kafka::rdkafka::producer::FutureRecord;
use mqtrace::kafka::{TracedConsumer, TracedProducer};
use mqtrace::telemetry::{self, Destination, TelemetryConfig};
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use opentelemetry::trace::{SpanKind, TraceContextExt, TraceId, Tracer};
use opentelemetry::{Context, KeyValue};

#[derive(Debug, Parser)]
#[command(about = "Produce and consume traced Kafka messages")]
struct Args {
    /// Number of requests to produce and consume.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// External Kafka bootstrap servers; an embedded broker is started when absent.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Give up if the messages have not all been consumed after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = telemetry::init_with(
        TelemetryConfig::from_env()?.with_default_service_name("kafka-roundtrip"),
    )?;

    // An embedded broker unless one was named (here or in MQTRACE_KAFKA_BOOTSTRAP).
    let kafka = match &args.bootstrap {
        Some(bootstrap) => KafkaFixture::external(bootstrap),
        None => KafkaFixture::start().context("starting the embedded Kafka")?,
    };
    let topic = "inference-requests".to_owned();
    kafka.create_named_topic(&topic, 3).await?;
    println!("kafka: {}  topic: {topic}", kafka.bootstrap_servers());

    // Consumer first, so its group join overlaps with producing.
    let group = unique_name("scorers");
    let consumer = TracedConsumer::from_config(&kafka.consumer_config(&group))?;
    consumer.subscribe(&[&topic])?;
    let expected = args.messages;
    let consuming = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(expected);
        while seen.len() < expected {
            let message = consumer.recv().await?;
            let producer_trace = message
                .extracted()
                .remote_span_context()
                .map(|sc| sc.trace_id());
            consumer
                .process(&message, async {
                    // The handler's own work joins the request's trace.
                    let tracer = opentelemetry::global::tracer("kafka_roundtrip");
                    let _score = tracer.start("score");
                    Ok::<_, std::io::Error>(())
                })
                .await?;
            consumer.commit_message(&message, CommitMode::Async)?;
            seen.push((message.partition(), message.offset(), producer_trace));
        }
        anyhow::Ok(seen)
    });

    // Each request gets its own trace: an `inference.request` span around the send.
    let producer = TracedProducer::from_config(&kafka.producer_config())?;
    let tracer = opentelemetry::global::tracer("kafka_roundtrip");
    let mut produced = HashSet::with_capacity(args.messages);
    for i in 0..args.messages {
        let span = tracer
            .span_builder("inference.request")
            .with_kind(SpanKind::Internal)
            .with_attributes([KeyValue::new("request.index", i as i64)])
            .start(&tracer);
        let cx = Context::current_with_span(span);
        let payload = format!("{{\"request\":{i},\"features\":[0.1,0.2,0.3]}}");
        let key = format!("user-{}", i % 7);
        let delivery = producer
            .send_with_context(
                FutureRecord::to(&topic).payload(&payload).key(&key),
                Duration::from_secs(5),
                &cx,
            )
            .await?;
        let trace_id = cx.span().span_context().trace_id();
        cx.span().end();
        println!(
            "produced request {i:>3} -> partition {} offset {:>3}  trace {trace_id}",
            delivery.partition, delivery.offset
        );
        produced.insert(trace_id);
    }

    let seen = tokio::time::timeout(Duration::from_secs(args.timeout_secs), consuming)
        .await
        .context("timed out waiting for the consumer")???;
    let mut continued = 0;
    for (partition, offset, trace) in &seen {
        match trace {
            Some(trace) if produced.contains(trace) => {
                continued += 1;
                println!(
                    "consumed partition {partition} offset {offset:>3}  continued trace {trace}"
                );
            }
            other => println!(
                "consumed partition {partition} offset {offset:>3}  NO producer trace ({})",
                other.map_or("none".to_owned(), |t: TraceId| t.to_string())
            ),
        }
    }

    telemetry.flush();
    println!(
        "\n{continued}/{} consumed messages continued their producer's trace",
        seen.len()
    );
    match telemetry.destination() {
        Destination::Files { dir } => println!("traces: {}", dir.join("traces.jsonl").display()),
        Destination::Otlp { endpoint, .. } => println!("traces: sent over OTLP to {endpoint}"),
        _ => println!("traces: telemetry disabled (OTEL_SDK_DISABLED)"),
    }
    if continued != seen.len() {
        bail!(
            "{} message(s) lost their trace context",
            seen.len() - continued
        );
    }
    Ok(())
}
