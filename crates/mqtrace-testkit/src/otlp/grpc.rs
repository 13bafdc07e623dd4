//! The OTLP/gRPC side: opentelemetry-proto's generated tonic services for traces, metrics
//! and logs, served over HTTP/2 by hyper on connections the receiver accepts itself (so a
//! stop can cut them).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpStream;
use tonic::codegen::Service;
use tonic::{Request, Response, Status};

use super::received::{Protocol, flatten_logs, flatten_metrics, flatten_spans};
use super::{ConnectionServer, Shared};

/// The three OTLP services over one shared store.
#[derive(Debug, Clone)]
pub(super) struct Server {
    traces: TraceServiceServer<Sink>,
    metrics: MetricsServiceServer<Sink>,
    logs: LogsServiceServer<Sink>,
}

impl Server {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let sink = Sink { shared };
        // Exporters may send large batches; the collector's default is 4 MiB, take more.
        let limit = 64 * 1024 * 1024;
        Self {
            traces: TraceServiceServer::new(sink.clone()).max_decoding_message_size(limit),
            metrics: MetricsServiceServer::new(sink.clone()).max_decoding_message_size(limit),
            logs: LogsServiceServer::new(sink).max_decoding_message_size(limit),
        }
    }

    fn route(
        &self,
        request: http::Request<Incoming>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>
    {
        let path = request.uri().path();
        if path.starts_with("/opentelemetry.proto.collector.metrics.v1.MetricsService/") {
            let mut svc = self.metrics.clone();
            Box::pin(async move { svc.call(request).await })
        } else if path.starts_with("/opentelemetry.proto.collector.logs.v1.LogsService/") {
            let mut svc = self.logs.clone();
            Box::pin(async move { svc.call(request).await })
        } else {
            // Traces, and anything else: the generated service answers UNIMPLEMENTED for
            // paths it does not know.
            let mut svc = self.traces.clone();
            Box::pin(async move { svc.call(request).await })
        }
    }
}

impl ConnectionServer for Server {
    async fn serve(self, stream: TcpStream) {
        let service = hyper::service::service_fn(move |request| self.route(request));
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }
}

/// Stores what the services receive.
#[derive(Debug, Clone)]
struct Sink {
    shared: Arc<Shared>,
}

fn unavailable() -> Status {
    Status::unavailable("mqtrace-testkit OTLP receiver is set to refuse exports")
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        if !self.shared.admit().await {
            return Err(unavailable());
        }
        let spans = flatten_spans(Protocol::Grpc, request.into_inner());
        self.shared.keep(|store| store.spans.extend(spans));
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        if !self.shared.admit().await {
            return Err(unavailable());
        }
        let metrics = flatten_metrics(Protocol::Grpc, request.into_inner());
        self.shared.keep(|store| store.metrics.extend(metrics));
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        if !self.shared.admit().await {
            return Err(unavailable());
        }
        let logs = flatten_logs(Protocol::Grpc, request.into_inner());
        self.shared.keep(|store| store.logs.extend(logs));
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}
