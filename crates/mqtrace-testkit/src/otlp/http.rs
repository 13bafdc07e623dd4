//! The OTLP/HTTP side with protobuf bodies: `POST /v1/traces`, `/v1/metrics`, `/v1/logs`
//! over HTTP/1.1, answered as the OTLP specification says (200 with an empty protobuf
//! response; 400 for an undecodable body, 404 for other paths, 405 for other methods,
//! 415 for JSON, 503 when refusing).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::net::TcpStream;

use super::received::{Protocol, flatten_logs, flatten_metrics, flatten_spans};
use super::{ConnectionServer, Shared};

const PROTOBUF: &str = "application/x-protobuf";

#[derive(Debug, Clone)]
pub(super) struct Server {
    shared: Arc<Shared>,
}

impl Server {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn handle(
        self,
        request: http::Request<Incoming>,
    ) -> Result<http::Response<Full<Bytes>>, Infallible> {
        let signal = match request.uri().path() {
            "/v1/traces" => Signal::Traces,
            "/v1/metrics" => Signal::Metrics,
            "/v1/logs" => Signal::Logs,
            other => {
                return Ok(text(
                    StatusCode::NOT_FOUND,
                    format!("no OTLP signal at {other}"),
                ));
            }
        };
        if request.method() != Method::POST {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "use POST".into()));
        }
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with(PROTOBUF) {
            return Ok(text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("this receiver takes {PROTOBUF}, got '{content_type}'"),
            ));
        }
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) => return Ok(text(StatusCode::BAD_REQUEST, err.to_string())),
        };
        if !self.shared.admit().await {
            return Ok(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "mqtrace-testkit OTLP receiver is set to refuse exports".into(),
            ));
        }
        let accepted = match signal {
            Signal::Traces => ExportTraceServiceRequest::decode(body).map(|r| {
                let spans = flatten_spans(Protocol::HttpProtobuf, r);
                self.shared.keep(|store| store.spans.extend(spans));
                ExportTraceServiceResponse::default().encode_to_vec()
            }),
            Signal::Metrics => ExportMetricsServiceRequest::decode(body).map(|r| {
                let metrics = flatten_metrics(Protocol::HttpProtobuf, r);
                self.shared.keep(|store| store.metrics.extend(metrics));
                ExportMetricsServiceResponse::default().encode_to_vec()
            }),
            Signal::Logs => ExportLogsServiceRequest::decode(body).map(|r| {
                let logs = flatten_logs(Protocol::HttpProtobuf, r);
                self.shared.keep(|store| store.logs.extend(logs));
                ExportLogsServiceResponse::default().encode_to_vec()
            }),
        };
        Ok(match accepted {
            Ok(response) => http::Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, PROTOBUF)
                .body(Full::new(Bytes::from(response)))
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, String::new())),
            Err(err) => text(
                StatusCode::BAD_REQUEST,
                format!("not an OTLP protobuf message: {err}"),
            ),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Traces,
    Metrics,
    Logs,
}

fn text(status: StatusCode, body: String) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

impl ConnectionServer for Server {
    async fn serve(self, stream: TcpStream) {
        let service = hyper::service::service_fn(move |request| self.clone().handle(request));
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }
}
