//! The OTLP/gRPC span exporter behind `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`: spans encoded
//! straight from [`SpanData`] ([`super::otlp_proto`]) and sent as the
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` unary call over a tonic
//! channel, with the already-encoded bytes as the message (a pass-through codec).
//!
//! It replaces `opentelemetry-otlp`'s tonic exporter for the same reason as the HTTP one
//! ([`super::otlp_http`]): that one builds `opentelemetry-proto`'s structs per batch and was
//! called one batch at a time, and at the main job's load it dropped half the spans. Calls run
//! on a small Tokio runtime of the exporter's own (one thread), driven from the export thread:
//! on the application's runtime, whose threads were busy scoring batches, the channel's I/O
//! waited its turn and export fell behind. Several calls may be in flight
//! (`OTEL_BSP_MAX_CONCURRENT_EXPORTS`).
//!
//! `OTEL_EXPORTER_OTLP_HEADERS`/`_TRACES_HEADERS` travel as request metadata; the status
//! codes the [OTLP specification] calls retryable (`CANCELLED`, `DEADLINE_EXCEEDED`,
//! `ABORTED`, `OUT_OF_RANGE`, `UNAVAILABLE`, `DATA_LOSS`, and `RESOURCE_EXHAUSTED`) are
//! retried ([`super::otlp_retry`]); others fail the batch at once. With compression asked
//! for, [`super::build`] uses `opentelemetry-otlp`'s exporter instead.
//!
//! [OTLP specification]: https://opentelemetry.io/docs/specs/otlp/#failures

use std::fmt;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use reqwest::header::HeaderMap;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::otlp_proto::SharedTraceEncoder;
use super::otlp_retry::{Attempt, with_retries};
use crate::error::Error;

/// The trace service's export method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Exports spans as OTLP over gRPC (see the [module docs](self)).
pub(crate) struct OtlpGrpcSpanExporter {
    endpoint: String,
    timeout: Duration,
    channel: Channel,
    metadata: MetadataMap,
    /// The exporter's own runtime; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    encoder: SharedTraceEncoder,
}

impl fmt::Debug for OtlpGrpcSpanExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpGrpcSpanExporter")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OtlpGrpcSpanExporter {
    /// An exporter calling the collector at `endpoint` (`http://host:4317`), each batch given
    /// at most `timeout` (retries included), with `headers` as metadata.
    pub(crate) fn new(
        endpoint: &str,
        timeout: Duration,
        headers: &HeaderMap,
    ) -> crate::error::Result<Self> {
        let setup = |reason: String| Error::ExporterSetup {
            signal: "traces",
            endpoint: endpoint.to_owned(),
            reason,
        };
        if endpoint.starts_with("https:") {
            return Err(setup(
                "https needs TLS, which this build of mqtrace does not include: use http:// (e.g. a Collector sidecar) or terminate TLS in front of it".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mqtrace-otlp-grpc")
            // The channel's own `tracing` events (h2, tower) must not become telemetry: a log
            // bridge would feed them back into the export queue. The threads are the
            // exporter's alone, so they stay suppressed for their whole life.
            .on_thread_start(|| {
                std::mem::forget(opentelemetry::Context::enter_telemetry_suppressed_scope())
            })
            .enable_all()
            .build()
            .map_err(|e| setup(format!("cannot start its runtime: {e}")))?;
        let channel = {
            let _entered = runtime.enter();
            Endpoint::from_shared(endpoint.to_owned())
                .map_err(|e| setup(format!("invalid endpoint: {e}")))?
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .connect_lazy()
        };
        let mut metadata = MetadataMap::new();
        for (name, value) in headers {
            let key = MetadataKey::from_bytes(name.as_str().as_bytes())
                .map_err(|e| setup(format!("header {name} is not valid gRPC metadata: {e}")))?;
            let value = MetadataValue::try_from(value.as_bytes())
                .map_err(|e| setup(format!("header {name}'s value is not valid metadata: {e}")))?;
            metadata.insert(key, value);
        }
        Ok(Self {
            endpoint: endpoint.to_owned(),
            timeout,
            channel,
            metadata,
            runtime: Some(runtime),
            encoder: SharedTraceEncoder::default(),
        })
    }

    /// One call with `body`, within `left`.
    fn call(&self, body: Bytes, left: Duration) -> Attempt {
        let mut client = tonic::client::Grpc::new(self.channel.clone());
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(left);
        let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
        let Some(runtime) = &self.runtime else {
            return Attempt::Failed("the exporter was shut down".into());
        };
        let outcome = runtime.handle().block_on(async move {
            let call = async {
                client
                    .ready()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                client.unary(request, path, PassThrough).await
            };
            match tokio::time::timeout(left, call).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded(
                    "the collector did not answer in time",
                )),
            }
        });
        match outcome {
            Ok(_) => Attempt::Delivered,
            Err(status) => {
                let error = format!("{:?}: {}", status.code(), status.message());
                if matches!(
                    status.code(),
                    Code::Cancelled
                        | Code::DeadlineExceeded
                        | Code::Aborted
                        | Code::OutOfRange
                        | Code::Unavailable
                        | Code::DataLoss
                        | Code::ResourceExhausted
                ) {
                    Attempt::Retryable { error, after: None }
                } else {
                    Attempt::Failed(error)
                }
            }
        }
    }
}

impl SpanExporter for OtlpGrpcSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = self.encoder.request(&batch);
        drop(batch);
        with_retries(self.timeout, |left| self.call(body.clone(), left)).map_err(|error| {
            OTelSdkError::InternalFailure(format!(
                "OTLP/gRPC export to {} failed: {error}",
                self.endpoint
            ))
        })
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.encoder.set_resource(resource);
    }
}

impl Drop for OtlpGrpcSpanExporter {
    fn drop(&mut self) {
        // Without waiting: dropping a runtime blocks, which panics inside an async context.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A codec whose messages are already-encoded protobuf: sends the bytes as they are and
/// ignores the answer's body (an `ExportTraceServiceResponse`).
#[derive(Debug, Clone, Copy, Default)]
struct PassThrough;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = PassThrough;
    type Decoder = PassThrough;

    fn encoder(&mut self) -> Self::Encoder {
        PassThrough
    }

    fn decoder(&mut self) -> Self::Decoder {
        PassThrough
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PassThrough {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
