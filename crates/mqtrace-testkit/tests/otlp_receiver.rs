//! The OTLP receiver's HTTP side answered by hand-written requests (what a non-Rust exporter
//! would send), and its lifecycle: refusing, stopping (connections refused), restarting on the
//! same port with what it already received kept. The gRPC side is exercised by the facade's
//! OTLP end-to-end tests through opentelemetry-otlp.

use std::time::Duration;

use mqtrace_testkit::otlp::{Behaviour, OtlpReceiver, Protocol};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one HTTP/1.1 request and returns the status code.
async fn post(
    base: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<u16> {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(status)
}

fn one_span(name: &str) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![7; 16],
                    span_id: vec![8; 8],
                    name: name.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

const PROTOBUF: &str = "application/x-protobuf";

#[tokio::test]
async fn http_answers_as_the_otlp_specification_says() {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let base = receiver.http_endpoint();
    let ok = post(&base, "POST", "/v1/traces", PROTOBUF, &one_span("a")).await;
    assert_eq!(ok.expect("request"), 200);
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name(), "a");
    assert_eq!(spans[0].origin.protocol, Protocol::HttpProtobuf);
    assert_eq!(spans[0].trace_id(), "07".repeat(16));

    let status = |method, path, content_type, body: Vec<u8>| {
        let base = base.clone();
        async move {
            post(&base, method, path, content_type, &body)
                .await
                .expect("request")
        }
    };
    assert_eq!(
        status("POST", "/v1/spans", PROTOBUF, one_span("b")).await,
        404
    );
    assert_eq!(status("GET", "/v1/traces", PROTOBUF, Vec::new()).await, 405);
    assert_eq!(
        status("POST", "/v1/traces", "application/json", b"{}".to_vec()).await,
        415
    );
    assert_eq!(
        status("POST", "/v1/traces", PROTOBUF, vec![0xff; 9]).await,
        400
    );
    assert_eq!(receiver.span_count(), 1, "nothing stored from bad requests");

    receiver.set_behaviour(Behaviour::Failing);
    assert_eq!(
        status("POST", "/v1/traces", PROTOBUF, one_span("c")).await,
        503
    );
    assert_eq!(receiver.refused_requests(), 1);
    assert_eq!(receiver.span_count(), 1, "a refused export is not kept");
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_takes_the_same_port_back() {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let base = receiver.http_endpoint();
    assert_eq!(
        post(&base, "POST", "/v1/traces", PROTOBUF, &one_span("before"))
            .await
            .expect("up"),
        200
    );
    receiver.stop().await;
    assert!(!receiver.is_running());
    assert!(
        post(&base, "POST", "/v1/traces", PROTOBUF, &one_span("down"))
            .await
            .is_err(),
        "a stopped receiver refuses connections"
    );
    receiver.restart().await.expect("restart");
    assert_eq!(receiver.http_endpoint(), base, "same port");
    assert_eq!(
        post(&base, "POST", "/v1/traces", PROTOBUF, &one_span("after"))
            .await
            .expect("up again"),
        200
    );
    let names: Vec<String> = receiver
        .spans()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    assert_eq!(names, ["before", "after"]);
}

#[tokio::test]
async fn a_slow_receiver_holds_requests_until_released() {
    let receiver = std::sync::Arc::new(OtlpReceiver::start().await.expect("receiver"));
    receiver.set_behaviour(Behaviour::Slow(Duration::MAX));
    let base = receiver.http_endpoint();
    let pending = tokio::spawn(async move {
        post(&base, "POST", "/v1/traces", PROTOBUF, &one_span("held")).await
    });
    // Held: nothing is accepted however long we look.
    assert!(
        !receiver
            .wait_until(Duration::from_millis(300), |r| r.accepted_requests() > 0)
            .await
    );
    receiver.set_behaviour(Behaviour::Normal);
    assert_eq!(pending.await.expect("task").expect("request"), 200);
    assert_eq!(receiver.span_count(), 1);
}
