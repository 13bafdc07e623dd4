//! An "orders" service on rust-rdkafka and `tracing`, before mqtrace: it takes orders from a
//! topic, checks each in a `#[tracing::instrument]` handler, sends a confirmation and
//! commits. `orders_traced.rs` is the same service after moving onto mqtrace;
//! `tests/migration.rs` holds the difference to at most 10 % of the lines, with no public
//! signature changed.
//!
//! ```text
//! cargo run --example orders_untraced          # on an embedded Kafka
//! ```

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt as _;
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

const TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong while taking orders.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    /// The broker or the client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// An order that cannot be confirmed.
    #[error("order {0:?} is not valid")]
    Invalid(String),
}

/// The service: orders in, confirmations out.
#[allow(missing_debug_implementations)] // rdkafka's clients are not `Debug`
pub struct Orders {
    producer: FutureProducer,
    consumer: StreamConsumer,
}

impl Orders {
    /// Connects to the brokers in `config`, consuming orders as `group`.
    pub fn connect(config: &ClientConfig, group: &str) -> Result<Self, OrdersError> {
        let producer = config.create()?;
        let mut config = config.clone();
        config
            .set("group.id", group)
            .set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer = config.create()?;
        consumer.subscribe(&["orders"])?;
        Ok(Self { producer, consumer })
    }

    /// Places an order.
    pub async fn place(&self, order: &str) -> Result<(), OrdersError> {
        let record = FutureRecord::to("orders").key(order).payload(order);
        let sent = self.producer.send(record, TIMEOUT);
        sent.await.map_err(|(e, _)| e)?;
        Ok(())
    }

    /// Confirms `count` orders, committing each once its confirmation is sent.
    pub async fn serve(&self, count: usize) -> Result<usize, OrdersError> {
        let mut stream = self.consumer.stream().take(count);
        let mut confirmed = 0;
        while let Some(message) = stream.next().await {
            let message = message?;
            let order = String::from_utf8_lossy(message.payload().unwrap_or_default());
            let confirming = self.confirm(&order);
            confirming.await?;
            self.consumer.commit_message(&message, CommitMode::Async)?;
            confirmed += 1;
        }
        Ok(confirmed)
    }

    /// Checks an order and sends its confirmation.
    async fn confirm(&self, order: &str) -> Result<(), OrdersError> {
        let confirmation = check(order).await?;
        let record = FutureRecord::<(), _>::to("confirmations").payload(&confirmation);
        let sent = self.producer.send(record, TIMEOUT);
        sent.await.map_err(|(e, _)| e)?;
        Ok(())
    }

    /// Waits until every confirmation is delivered.
    pub fn flush(&self) -> Result<(), OrdersError> {
        Ok(self.producer.flush(TIMEOUT)?)
    }
}

/// Checks an order and writes its confirmation.
#[tracing::instrument]
async fn check(order: &str) -> Result<String, OrdersError> {
    if order.is_empty() {
        return Err(OrdersError::Invalid(order.to_owned()));
    }
    tracing::info!("order accepted");
    Ok(format!("confirmed: {order}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The service's own OpenTelemetry pipeline, bridged from `tracing`. This demo keeps the
    // spans in memory to count their traces; a real service exports them (OTLP).
    let spans = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("orders")))
        .init();

    let kafka = KafkaFixture::start()?;
    kafka.create_named_topic("orders", 1).await?;
    kafka.create_named_topic("confirmations", 1).await?;
    let orders = Orders::connect(&kafka.producer_config(), &unique_name("orders"))?;
    for n in 0..10 {
        orders.place(&format!("order-{n}")).await?;
    }
    let confirmed = orders.serve(10).await?;
    orders.flush()?;

    let spans = spans.get_finished_spans()?;
    let traces: HashSet<_> = spans.iter().map(|s| s.span_context.trace_id()).collect();
    println!(
        "{confirmed} orders confirmed: {} spans in {} traces",
        spans.len(),
        traces.len()
    );
    Ok(())
}
