//! The OTLP/HTTP (protobuf) span exporter behind `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`:
//! spans encoded straight from [`SpanData`] ([`super::otlp_proto`]) and POSTed to
//! `{endpoint}/v1/traces` with a blocking HTTP client, on the export thread.
//!
//! Why not `opentelemetry-otlp`'s exporter: it converts every batch to `opentelemetry-proto`'s
//! structs first (a `String` per attribute key and value), and freeing those was most of the
//! export thread's time; at the main job's load it fell behind and dropped a quarter of the
//! spans. This one writes the same bytes with no allocation per span.
//!
//! Behaviour follows the [OTLP/HTTP specification]: `Content-Type: application/x-protobuf`;
//! `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (`key=value,...`,
//! percent-decoded) are sent with every request; `429`, `502`, `503` and `504` and connection
//! failures are retried ([`super::otlp_retry`], honouring `Retry-After`); any other status fails the batch at once with
//! the status and the start of the collector's answer. When compression is asked for
//! (`OTEL_EXPORTER_OTLP_COMPRESSION`), [`super::build`] uses `opentelemetry-otlp`'s exporter
//! instead, which implements it.
//!
//! [OTLP/HTTP specification]: https://opentelemetry.io/docs/specs/otlp/#otlphttp

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use reqwest::blocking::Client;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::otlp_proto::SharedTraceEncoder;
use super::otlp_retry::{Attempt, with_retries};
use crate::error::Error;

/// How much of a failed answer's body goes into the error.
const ERROR_BODY_BYTES: usize = 512;

/// Exports spans as OTLP protobuf over HTTP: protobuf written straight from the span data,
/// `OTEL_EXPORTER_OTLP_*HEADERS`, retries on 429/502/503/504 within the timeout, and calls from
/// several threads at once allowed.
///
/// [`super::build`] sets it up from the environment; build one yourself to export spans
/// through a pipeline of your own.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mqtrace_telemetry::OtlpHttpSpanExporter;
///
/// let exporter =
///     OtlpHttpSpanExporter::new("http://localhost:4318/v1/traces", Duration::from_secs(5))?;
/// # drop(exporter);
/// # Ok::<_, mqtrace_telemetry::Error>(())
/// ```
pub struct OtlpHttpSpanExporter {
    url: String,
    timeout: Duration,
    /// `None` after shutdown.
    client: Mutex<Option<Client>>,
    encoder: SharedTraceEncoder,
}

impl fmt::Debug for OtlpHttpSpanExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpHttpSpanExporter")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OtlpHttpSpanExporter {
    /// An exporter POSTing to `url` (the full `.../v1/traces` address), each batch given at
    /// most `timeout` (retries included).
    pub fn new(url: impl Into<String>, timeout: Duration) -> crate::error::Result<Self> {
        Self::with_headers(url.into(), timeout, HeaderMap::new())
    }

    /// Like [`OtlpHttpSpanExporter::new`], with `headers` on every request.
    pub(crate) fn with_headers(
        url: String,
        timeout: Duration,
        headers: HeaderMap,
    ) -> crate::error::Result<Self> {
        let mut default_headers = headers;
        default_headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        let builder = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .default_headers(default_headers);
        // The blocking client runs its own runtime: it must not be built inside an async
        // context (the caller may be in one), so it is built on a thread of its own.
        let client = std::thread::spawn(move || builder.build())
            .join()
            .map_err(|_| Error::ExporterSetup {
                signal: "traces",
                endpoint: url.clone(),
                reason: "building the HTTP client panicked".into(),
            })?
            .map_err(|e| Error::ExporterSetup {
                signal: "traces",
                endpoint: url.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            url,
            timeout,
            client: Mutex::new(Some(client)),
            encoder: SharedTraceEncoder::default(),
        })
    }

    /// POSTs `body`, retrying what the specification calls retryable while time is left.
    fn send(&self, client: &Client, body: Bytes) -> OTelSdkResult {
        with_retries(self.timeout, |_| {
            match client.post(&self.url).body(body.clone()).send() {
                Ok(response) if response.status().is_success() => Attempt::Delivered,
                Ok(response) => {
                    let status = response.status();
                    let after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let answer = response.bytes().unwrap_or_default();
                    let answer =
                        String::from_utf8_lossy(&answer[..answer.len().min(ERROR_BODY_BYTES)]);
                    let error = format!("HTTP {status}: {answer}");
                    if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                        Attempt::Retryable { error, after }
                    } else {
                        Attempt::Failed(error)
                    }
                }
                Err(e) if e.is_connect() || e.is_timeout() => Attempt::Retryable {
                    error: e.to_string(),
                    after: None,
                },
                Err(e) => Attempt::Failed(e.to_string()),
            }
        })
        .map_err(|error| {
            OTelSdkError::InternalFailure(format!(
                "OTLP/HTTP export to {} failed: {error}",
                self.url
            ))
        })
    }
}

impl SpanExporter for OtlpHttpSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = self.encoder.request(&batch);
        // The spans are freed before the request waits on the network.
        drop(batch);
        let client = self
            .client
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("HTTP client lock poisoned".into()))?
            .clone()
            .ok_or(OTelSdkError::AlreadyShutdown)?;
        self.send(&client, body)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        let client = self
            .client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        // Dropping the blocking client stops its runtime: never inside an async context.
        if let Some(client) = client {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.encoder.set_resource(resource);
    }
}

impl Drop for OtlpHttpSpanExporter {
    fn drop(&mut self) {
        let _ = self.shutdown_with_timeout(Duration::ZERO);
    }
}

/// The headers of `OTEL_EXPORTER_OTLP_HEADERS`, then `OTEL_EXPORTER_OTLP_TRACES_HEADERS`
/// (which wins for a key both set), read through `lookup`. A pair that is not `key=value` or
/// not a valid header is an error naming the variable.
pub(crate) fn headers_from(
    lookup: impl Fn(&str) -> Option<String>,
) -> crate::error::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for variable in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        let Some(value) = lookup(variable) else {
            continue;
        };
        for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let invalid = || Error::InvalidEnv {
                name: variable,
                value: value.clone(),
                expected: "comma-separated key=value pairs (values percent-encoded)",
            };
            let (key, raw) = pair.split_once('=').ok_or_else(invalid)?;
            let name = HeaderName::from_bytes(key.trim().as_bytes()).map_err(|_| invalid())?;
            let decoded = percent_decode(raw.trim()).ok_or_else(invalid)?;
            let header = HeaderValue::from_str(&decoded).map_err(|_| invalid())?;
            headers.insert(name, header);
        }
    }
    Ok(headers)
}

/// `%XX` decoding (the W3C baggage encoding the OTLP header variables use).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp_json::tests::{sample_resource, sample_spans};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::Instant;

    /// One received request: its headers (lower-cased names) and body.
    type Received = (Vec<(String, String)>, Vec<u8>);

    /// A real HTTP/1.1 server on loopback answering each request with the next status of
    /// `statuses` (then 200); every request is sent back on the channel.
    fn server(statuses: Vec<u16>) -> (String, mpsc::Receiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let mut headers = Vec::new();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).expect("header");
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = header.split_once(':') {
                            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
                            if k == "content-length" {
                                length = v.parse().expect("length");
                            }
                            headers.push((k, v));
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).expect("body");
                    let _ = tx.send((headers, body));
                    let status = statuses.next().unwrap_or(200);
                    let answer = if status == 200 {
                        ""
                    } else {
                        "collector says no"
                    };
                    let _ = write!(
                        reader.get_mut(),
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                }
            }
        });
        (format!("http://{address}/v1/traces"), rx)
    }

    fn to(url: String, headers: HeaderMap) -> OtlpHttpSpanExporter {
        let mut exporter = OtlpHttpSpanExporter::with_headers(url, Duration::from_secs(5), headers)
            .expect("exporter");
        exporter.set_resource(&sample_resource());
        exporter
    }

    #[test]
    fn posts_the_batch_as_protobuf_with_the_configured_headers() {
        let (url, received) = server(vec![]);
        let headers = headers_from(|name| {
            (name == "OTEL_EXPORTER_OTLP_HEADERS").then(|| "api-key=s%3Dcret, tenant=a".into())
        })
        .expect("headers");
        let exporter = to(url, headers);
        let spans = sample_spans();
        futures_executor::block_on(exporter.export(spans.clone())).expect("exported");
        let (headers, body) = received.recv().expect("one request");
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("content-type"), Some("application/x-protobuf"));
        assert_eq!(header("api-key"), Some("s=cret"));
        assert_eq!(header("tenant"), Some("a"));
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("protobuf");
        let names: Vec<_> = request.resource_spans[0]
            .scope_spans
            .iter()
            .flat_map(|s| s.spans.iter().map(|span| span.name.clone()))
            .collect();
        assert_eq!(names.len(), spans.len());
    }

    #[test]
    fn retryable_answers_are_retried_and_others_fail_at_once() {
        let (url, received) = server(vec![503, 429]);
        let exporter = to(url, HeaderMap::new());
        futures_executor::block_on(exporter.export(sample_spans())).expect("third try succeeds");
        assert_eq!(received.try_iter().count(), 3);

        let (url, received) = server(vec![400]);
        let exporter = to(url, HeaderMap::new());
        let error = futures_executor::block_on(exporter.export(sample_spans()))
            .expect_err("400 is not retried");
        assert!(error.to_string().contains("400"), "{error}");
        assert!(error.to_string().contains("collector says no"), "{error}");
        assert_eq!(received.try_iter().count(), 1);
    }

    #[test]
    fn an_absent_collector_fails_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
        drop(listener);
        let exporter =
            OtlpHttpSpanExporter::new(url, Duration::from_millis(500)).expect("exporter");
        let started = Instant::now();
        let error =
            futures_executor::block_on(exporter.export(sample_spans())).expect_err("refused");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(error.to_string().contains("OTLP/HTTP export to"), "{error}");
    }

    #[test]
    fn header_variables_are_validated() {
        let err = headers_from(|name| {
            (name == "OTEL_EXPORTER_OTLP_TRACES_HEADERS").then(|| "no-equals-sign".into())
        })
        .expect_err("invalid");
        assert!(
            err.to_string()
                .contains("OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
            "{err}"
        );
        let headers = headers_from(|name| match name {
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("a=1,b=2".into()),
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => Some("b=3".into()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(headers.get("a").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert_eq!(headers.get("b").map(|v| v.as_bytes()), Some(&b"3"[..]));
    }
}
