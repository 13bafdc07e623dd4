//! A traced RabbitMQ round trip: publish requests with publisher confirms, each inside its own
//! `inference.request` span, consume them, and check that every delivery continued its
//! producer's trace. Needs a RabbitMQ: `AMQP_ADDR` or `MQTRACE_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f` (`docker compose up -d rabbitmq` starts one).
//!
//! ```text
//! cargo run --release --example amqp_roundtrip -- --messages 20
//! ```
//!
//! Traces go to `./telemetry/traces.jsonl`, or over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use mqtrace::amqp::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use mqtrace::amqp::lapin::types::{AMQPValue, FieldTable};
use mqtrace::amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
use mqtrace::amqp::{TracedConsumer, TracedPublisher};
use mqtrace::telemetry::{self, Destination, TelemetryConfig};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

#[derive(Debug, Parser)]
#[command(about = "Publish and consume traced RabbitMQ messages")]
struct Args {
    /// Number of requests to publish and consume.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// The queue to use (declared if missing; it expires a minute after its last use).
    #[arg(long, default_value = "mqtrace-amqp-roundtrip")]
    queue: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = std::env::var("AMQP_ADDR")
        .or_else(|_| std::env::var("MQTRACE_AMQP_URL"))
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let telemetry = telemetry::init_with(
        TelemetryConfig::from_env()?.with_default_service_name("amqp-roundtrip"),
    )?;

    let connection = match tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(connection)) => Arc::new(connection),
        Ok(Err(error)) => bail!(
            "cannot connect to RabbitMQ at {url}: {error}\n\
             start one (`rabbitmq-server -detached`, or `docker compose up -d rabbitmq`) or set AMQP_ADDR"
        ),
        Err(_) => bail!(
            "no answer from RabbitMQ at {url} within 10 s; is it running? set AMQP_ADDR to point elsewhere"
        ),
    };
    let channel = connection.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    channel
        .queue_declare(
            args.queue.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .with_context(|| format!("declaring queue {}", args.queue))?;

    let publisher = TracedPublisher::open(Arc::clone(&connection))
        .await?
        .with_server_from_url(&url);
    let tracer = opentelemetry::global::tracer("amqp_roundtrip");
    let mut produced = HashSet::with_capacity(args.messages);
    for i in 0..args.messages {
        let span = tracer
            .span_builder("inference.request")
            .with_kind(SpanKind::Internal)
            .with_attributes([KeyValue::new("request.index", i as i64)])
            .start(&tracer);
        let cx = Context::current_with_span(span);
        let payload = format!("{{\"request\":{i}}}");
        publisher
            .publish_with_context(
                "",
                &args.queue,
                BasicPublishOptions::default(),
                payload.as_bytes(),
                BasicProperties::default().with_message_id(format!("request-{i}").into()),
                &cx,
            )
            .await?;
        let trace_id = cx.span().span_context().trace_id();
        cx.span().end();
        println!("published request {i:>3}  trace {trace_id}");
        produced.insert(trace_id);
    }

    let consumer = channel
        .basic_consume(
            args.queue.as_str().into(),
            "amqp-roundtrip".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = TracedConsumer::new(consumer).with_server_from_url(&url);
    let mut continued = 0;
    for _ in 0..args.messages {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .context("timed out waiting for a delivery")?
            .context("the consumer was cancelled")??;
        let trace = delivery
            .extracted()
            .remote_span_context()
            .map(|sc| sc.trace_id());
        consumer
            .process(&delivery, async { Ok::<_, std::io::Error>(()) })
            .await?;
        delivery.ack(BasicAckOptions::default()).await?;
        match trace {
            Some(trace) if produced.contains(&trace) => {
                continued += 1;
                println!(
                    "consumed delivery {:>3}  continued trace {trace}",
                    delivery.delivery_tag
                );
            }
            _ => println!(
                "consumed delivery {:>3}  NO producer trace",
                delivery.delivery_tag
            ),
        }
    }

    telemetry.flush();
    println!(
        "\n{continued}/{} deliveries continued their producer's trace",
        args.messages
    );
    match telemetry.destination() {
        Destination::Files { dir } => println!("traces: {}", dir.join("traces.jsonl").display()),
        Destination::Otlp { endpoint, .. } => println!("traces: sent over OTLP to {endpoint}"),
        _ => println!("traces: telemetry disabled (OTEL_SDK_DISABLED)"),
    }
    if continued != args.messages {
        bail!(
            "{} deliveries lost their trace context",
            args.messages - continued
        );
    }
    Ok(())
}
