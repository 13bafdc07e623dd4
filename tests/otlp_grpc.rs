//! OTLP/gRPC end to end: the Kafka round trip and the batch worker export through
//! opentelemetry-otlp to the testkit's real OTLP receiver, and what arrived is checked the way
//! a collector sees it (see `common/otlp_e2e.rs`). One test per file: telemetry is global.

#[path = "common/otlp_e2e.rs"]
mod otlp_e2e;

use mqtrace::telemetry::OtlpProtocol;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_and_batch_worker_arrive_over_otlp_grpc() {
    otlp_e2e::run(OtlpProtocol::Grpc).await;
}
