//! Prometheus names of OpenTelemetry metrics, as the Collector's Prometheus exporter writes
//! them, and the metric names a PromQL query or a Grafana dashboard asks for.
//!
//! The OpenTelemetry Collector's `prometheus` exporter (default translation strategy
//! `UnderscoreEscapingWithSuffixes`, the old `add_metric_suffixes: true`, no `namespace`)
//! renames every metric it exposes; [`prometheus_name`] does the same, rule for rule, as the
//! Prometheus `otlptranslator` library the exporter uses:
//!
//! - the name is split at every character outside `[a-zA-Z0-9:]` and rejoined with `_`
//!   (`mqtrace.worker.messages.in_flight` → `mqtrace_worker_messages_in_flight`);
//! - the unit becomes a suffix: `s` → `_seconds`, `ms` → `_milliseconds`, `By` → `_bytes`
//!   (and the rest of the UCUM table), `X/Y` → `_X_per_Y`, unless the name already has that
//!   word; annotations in braces (`{message}`) and `1` add nothing;
//! - monotonic counters end in `_total`; gauges with unit `1` end in `_ratio`;
//! - histograms are stored as `_bucket`, `_sum` and `_count` series ([`prometheus_series`]).
//!
//! [`MQTRACE_METRICS`] lists every instrument mqtrace records (name, unit, kind): the
//! deployment tests check the Grafana dashboard against it, and an end-to-end test can check
//! it against what a real process exports. [`SPANMETRICS_METRICS`] lists what the Collector's
//! `spanmetrics` connector derives from spans.
//!
//! ```
//! use mqtrace_testkit::prometheus::{MetricKind, prometheus_name, promql_metric_names};
//!
//! assert_eq!(
//!     prometheus_name("messaging.process.duration", "s", MetricKind::Histogram),
//!     "messaging_process_duration_seconds"
//! );
//! let names = promql_metric_names(
//!     "histogram_quantile(0.99, sum by (le) (rate(messaging_process_duration_seconds_bucket[5m])))",
//! );
//! assert_eq!(names.into_iter().collect::<Vec<_>>(), ["messaging_process_duration_seconds_bucket"]);
//! ```

use std::collections::BTreeSet;

use mqtrace_core::semconv;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric::Data};

/// The kind of an OpenTelemetry instrument, which decides its Prometheus suffixes.
///
/// # Example
///
/// ```
/// use mqtrace_testkit::prometheus::{MetricKind, prometheus_name};
///
/// assert_eq!(prometheus_name("jobs", "{job}", MetricKind::Counter), "jobs_total");
/// assert_eq!(prometheus_name("jobs", "{job}", MetricKind::UpDownCounter), "jobs");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// A monotonic sum (a counter): `_total`.
    Counter,
    /// A non-monotonic sum (an up-down counter): exposed as a Prometheus gauge, no `_total`.
    UpDownCounter,
    /// A gauge: no suffix but the unit (and `_ratio` for unit `1`).
    Gauge,
    /// An explicit-bucket histogram: `_bucket`, `_sum` and `_count` series.
    Histogram,
}

impl MetricKind {
    /// The kind of a metric received over OTLP, or `None` for what has no classic
    /// Prometheus series of its own (exponential histograms become native histograms;
    /// summaries; a metric without data).
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_testkit::prometheus::MetricKind;
    /// use opentelemetry_proto::tonic::metrics::v1::{Metric, Sum, metric::Data};
    ///
    /// let metric = Metric {
    ///     name: "mqtrace.worker.dead_lettered".into(),
    ///     data: Some(Data::Sum(Sum { is_monotonic: true, ..Default::default() })),
    ///     ..Default::default()
    /// };
    /// assert_eq!(MetricKind::of_otlp(&metric), Some(MetricKind::Counter));
    /// ```
    pub fn of_otlp(metric: &Metric) -> Option<Self> {
        match metric.data.as_ref()? {
            Data::Sum(sum) if sum.is_monotonic => Some(Self::Counter),
            Data::Sum(_) => Some(Self::UpDownCounter),
            Data::Gauge(_) => Some(Self::Gauge),
            Data::Histogram(_) => Some(Self::Histogram),
            Data::ExponentialHistogram(_) | Data::Summary(_) => None,
        }
    }
}

/// One OpenTelemetry instrument: its name, UCUM unit and kind.
///
/// # Example
///
/// ```
/// use mqtrace_testkit::prometheus::{MetricKind, OtelMetric};
///
/// let metric = OtelMetric::new("hw.gpu.memory.usage", "By", MetricKind::Gauge);
/// assert_eq!(metric.prometheus_name(), "hw_gpu_memory_usage_bytes");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OtelMetric {
    /// The instrument name, e.g. `messaging.process.duration`.
    pub name: &'static str,
    /// The instrument unit, e.g. `s` or `{message}`.
    pub unit: &'static str,
    /// What kind of instrument it is.
    pub kind: MetricKind,
}

impl OtelMetric {
    /// An instrument description.
    pub const fn new(name: &'static str, unit: &'static str, kind: MetricKind) -> Self {
        Self { name, unit, kind }
    }

    /// Its Prometheus metric name ([`prometheus_name`]).
    pub fn prometheus_name(&self) -> String {
        prometheus_name(self.name, self.unit, self.kind)
    }

    /// The series names Prometheus stores for it ([`prometheus_series`]).
    ///
    /// ```
    /// use mqtrace_testkit::prometheus::{MetricKind, OtelMetric};
    ///
    /// let wait = OtelMetric::new("mqtrace.worker.queue.wait", "s", MetricKind::Histogram);
    /// assert_eq!(wait.prometheus_series()[0], "mqtrace_worker_queue_wait_seconds_bucket");
    /// ```
    pub fn prometheus_series(&self) -> Vec<String> {
        prometheus_series(self.name, self.unit, self.kind)
    }
}

/// Every instrument mqtrace records, in one place: the messaging instruments of
/// `mqtrace-core`, the telemetry pipeline's own counter, and the worker and model metrics of
/// `mqtrace-inference`.
///
/// # Example
///
/// ```
/// use mqtrace_testkit::prometheus::{MQTRACE_METRICS, series_names};
///
/// let series = series_names(MQTRACE_METRICS);
/// assert!(series.contains("messaging_client_sent_messages_total"));
/// assert!(series.contains("mqtrace_worker_queue_wait_seconds_bucket"));
/// ```
pub const MQTRACE_METRICS: &[OtelMetric] = &[
    // mqtrace-core: semconv messaging metrics (crates/mqtrace-core/src/metrics.rs)
    OtelMetric::new(
        semconv::MESSAGING_CLIENT_OPERATION_DURATION,
        "s",
        MetricKind::Histogram,
    ),
    OtelMetric::new(
        semconv::MESSAGING_CLIENT_SENT_MESSAGES,
        "{message}",
        MetricKind::Counter,
    ),
    OtelMetric::new(
        semconv::MESSAGING_CLIENT_CONSUMED_MESSAGES,
        "{message}",
        MetricKind::Counter,
    ),
    OtelMetric::new(
        semconv::MESSAGING_PROCESS_DURATION,
        "s",
        MetricKind::Histogram,
    ),
    OtelMetric::new(
        semconv::MQTRACE_PROPAGATION_INVALID,
        "{message}",
        MetricKind::Counter,
    ),
    // mqtrace-telemetry: the export pipeline (crates/mqtrace-telemetry/src/span_queue.rs)
    OtelMetric::new(
        semconv::MQTRACE_TELEMETRY_SPANS_DROPPED,
        "{span}",
        MetricKind::Counter,
    ),
    // mqtrace-inference: worker and model (crates/mqtrace-inference/src/metrics.rs)
    OtelMetric::new(
        "mqtrace.worker.batch.size",
        "{message}",
        MetricKind::Histogram,
    ),
    OtelMetric::new("mqtrace.worker.queue.wait", "s", MetricKind::Histogram),
    OtelMetric::new(
        "mqtrace.worker.messages.in_flight",
        "{message}",
        MetricKind::UpDownCounter,
    ),
    OtelMetric::new(
        "mqtrace.worker.dead_lettered",
        "{message}",
        MetricKind::Counter,
    ),
    OtelMetric::new("mqtrace.inference.duration", "s", MetricKind::Histogram),
    OtelMetric::new(
        "mqtrace.inference.decisions",
        "{request}",
        MetricKind::Counter,
    ),
    OtelMetric::new(
        "mqtrace.inference.feature.missing",
        "{value}",
        MetricKind::Counter,
    ),
    OtelMetric::new(
        "mqtrace.inference.schema.mismatch",
        "{value}",
        MetricKind::Counter,
    ),
    OtelMetric::new("hw.gpu.memory.usage", "By", MetricKind::Gauge),
    OtelMetric::new("hw.gpu.memory.limit", "By", MetricKind::Gauge),
];

/// The `namespace` the Collector's `spanmetrics` connector must be configured with for
/// [`SPANMETRICS_METRICS`] to hold (it is also the connector's default).
pub const SPANMETRICS_NAMESPACE: &str = "traces.span.metrics";

/// The metrics the Collector's `spanmetrics` connector derives from spans, with
/// `namespace: traces.span.metrics` ([`SPANMETRICS_NAMESPACE`]) and `histogram.unit: ms`:
/// `traces_span_metrics_calls_total` and `traces_span_metrics_duration_milliseconds_*`,
/// labelled `service_name`, `span_name`, `span_kind` and `status_code`.
pub const SPANMETRICS_METRICS: &[OtelMetric] = &[
    OtelMetric::new("traces.span.metrics.calls", "", MetricKind::Counter),
    OtelMetric::new("traces.span.metrics.duration", "ms", MetricKind::Histogram),
];

/// The Prometheus name the Collector's Prometheus exporter gives an OpenTelemetry metric
/// (translation strategy `UnderscoreEscapingWithSuffixes`, no namespace).
///
/// A name with no character in `[a-zA-Z0-9:]` gives an empty string: the exporter refuses
/// such a metric.
///
/// # Example
///
/// ```
/// use mqtrace_testkit::prometheus::{MetricKind, prometheus_name};
///
/// let name = |n, u, k| prometheus_name(n, u, k);
/// assert_eq!(name("messaging.client.sent.messages", "{message}", MetricKind::Counter),
///            "messaging_client_sent_messages_total");
/// assert_eq!(name("mqtrace.worker.queue.wait", "s", MetricKind::Histogram),
///            "mqtrace_worker_queue_wait_seconds");
/// assert_eq!(name("hw.gpu.memory.usage", "By", MetricKind::Gauge), "hw_gpu_memory_usage_bytes");
/// assert_eq!(name("cpu.utilization", "1", MetricKind::Gauge), "cpu_utilization_ratio");
/// assert_eq!(name("net.io", "By/s", MetricKind::Counter), "net_io_bytes_per_second_total");
/// ```
pub fn prometheus_name(otel_name: &str, unit: &str, kind: MetricKind) -> String {
    let mut tokens: Vec<String> = otel_name
        .split(|c: char| !is_metric_char(c))
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
        .collect();

    let (main, per) = unit_suffixes(unit);
    let mut main = clean_up_unit(&main);
    let per = clean_up_unit(&per);
    if tokens.contains(&main) {
        main.clear();
    }
    let per = if per == "per_" {
        String::new()
    } else {
        let per = per.strip_suffix('_').unwrap_or(&per).to_owned();
        if tokens.contains(&per) {
            String::new()
        } else {
            per
        }
    };
    if !per.is_empty()
        && let Some(trimmed) = main.strip_suffix('_')
    {
        main = trimmed.to_owned();
    }
    if !main.is_empty() {
        tokens.push(main);
    }
    if !per.is_empty() {
        tokens.push(per);
    }

    if kind == MetricKind::Counter {
        tokens.retain(|token| token != "total");
        tokens.push("total".to_owned());
    }
    if unit == "1" && kind == MetricKind::Gauge {
        tokens.retain(|token| token != "ratio");
        tokens.push("ratio".to_owned());
    }

    let name = tokens.join("_");
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{name}")
    } else {
        name
    }
}

/// The series names Prometheus stores for a metric: the name itself, or for a histogram its
/// `_bucket`, `_sum` and `_count` series.
///
/// # Example
///
/// ```
/// use mqtrace_testkit::prometheus::{MetricKind, prometheus_series};
///
/// assert_eq!(
///     prometheus_series("mqtrace.worker.batch.size", "{message}", MetricKind::Histogram),
///     [
///         "mqtrace_worker_batch_size_bucket",
///         "mqtrace_worker_batch_size_sum",
///         "mqtrace_worker_batch_size_count",
///     ]
/// );
/// assert_eq!(
///     prometheus_series("mqtrace.worker.messages.in_flight", "{message}", MetricKind::UpDownCounter),
///     ["mqtrace_worker_messages_in_flight"]
/// );
/// ```
pub fn prometheus_series(otel_name: &str, unit: &str, kind: MetricKind) -> Vec<String> {
    let name = prometheus_name(otel_name, unit, kind);
    match kind {
        MetricKind::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|suffix| format!("{name}{suffix}"))
            .collect(),
        MetricKind::Counter | MetricKind::UpDownCounter | MetricKind::Gauge => vec![name],
    }
}

/// Every series name the given metrics expose in Prometheus.
///
/// # Example
///
/// ```
/// use mqtrace_testkit::prometheus::{SPANMETRICS_METRICS, series_names};
///
/// let series = series_names(SPANMETRICS_METRICS);
/// assert!(series.contains("traces_span_metrics_calls_total"));
/// assert!(series.contains("traces_span_metrics_duration_milliseconds_bucket"));
/// ```
pub fn series_names(metrics: &[OtelMetric]) -> BTreeSet<String> {
    metrics
        .iter()
        .flat_map(OtelMetric::prometheus_series)
        .collect()
}

/// The metric names a PromQL expression selects: every identifier that is not a function,
/// an aggregation operator, a keyword, a label name (in matchers, `by (…)`, `on (…)` and the
/// like), a number, a duration or a Grafana variable (`$__rate_interval`, `${job}`), plus
/// names given as `{__name__="…"}` or as a quoted name in braces (`{"metric.name"}`).
///
/// # Example
///
/// ```
/// use mqtrace_testkit::prometheus::promql_metric_names;
///
/// let names = promql_metric_names(
///     r#"sum by (mqtrace_dead_letter_reason) (rate(mqtrace_worker_dead_lettered_total{job="fraud-scoring"}[$__rate_interval]))
///        / on () group_left sum(rate(messaging_client_consumed_messages_total[5m] offset 1m))"#,
/// );
/// assert_eq!(
///     names.into_iter().collect::<Vec<_>>(),
///     ["messaging_client_consumed_messages_total", "mqtrace_worker_dead_lettered_total"]
/// );
/// ```
pub fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let tokens = tokenize(expr);
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word) => {
                let lower = word.to_ascii_lowercase();
                let next_is_paren = matches!(tokens.get(i + 1), Some(Token::Open('(')));
                if GROUPING_KEYWORDS.contains(&lower.as_str()) {
                    if next_is_paren {
                        // the label list: `by (le)`, `on (job)`, `group_left (x)`
                        i = skip_group(&tokens, i + 1, '(', ')');
                        continue;
                    }
                } else if next_is_paren
                    || KEYWORDS.contains(&lower.as_str())
                    || AGGREGATIONS.contains(&lower.as_str())
                {
                    // a function call, an aggregation, an operator keyword or a literal
                } else {
                    names.insert(word.clone());
                }
            }
            Token::Open('{') => {
                let end = skip_group(&tokens, i, '{', '}');
                let inner_end = match tokens.get(end.wrapping_sub(1)) {
                    Some(Token::Close('}')) if end > i + 1 => end - 1,
                    _ => end,
                };
                matcher_names(&tokens[i + 1..inner_end], &mut names);
                i = end;
                continue;
            }
            Token::Open('[') => {
                // ranges and subqueries: `[5m]`, `[$__rate_interval]`, `[1h:5m]`
                i = skip_group(&tokens, i, '[', ']');
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// Every metric name the `expr` queries of a Grafana dashboard select
/// ([`promql_metric_names`] over every `"expr"` string anywhere in the JSON: panels,
/// panels inside rows, every target).
///
/// # Example
///
/// ```
/// use mqtrace_testkit::prometheus::dashboard_metric_names;
///
/// let dashboard = serde_json::json!({
///     "panels": [
///         {"id": 1, "targets": [{"expr": "sum(rate(mqtrace_inference_decisions_total[5m]))"}]},
///         {"id": 2, "type": "row", "panels": [
///             {"id": 3, "targets": [{"expr": "hw_gpu_memory_usage_bytes"}]}
///         ]}
///     ]
/// });
/// assert_eq!(
///     dashboard_metric_names(&dashboard).into_iter().collect::<Vec<_>>(),
///     ["hw_gpu_memory_usage_bytes", "mqtrace_inference_decisions_total"]
/// );
/// ```
pub fn dashboard_metric_names(json: &serde_json::Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    collect_dashboard_names(json, &mut names);
    names
}

fn collect_dashboard_names(value: &serde_json::Value, names: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value {
                    serde_json::Value::String(expr) if key == "expr" => {
                        names.extend(promql_metric_names(expr));
                    }
                    _ => collect_dashboard_names(value, names),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_dashboard_names(item, names);
            }
        }
        _ => {}
    }
}

/// `[a-zA-Z0-9:]`, the characters that survive in a Prometheus metric name token.
fn is_metric_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == ':'
}

/// The main and the `per_` unit suffix of a UCUM unit, before clean-up.
fn unit_suffixes(unit: &str) -> (String, String) {
    let (main, per) = match unit.split_once('/') {
        Some((main, per)) => (main, Some(per)),
        None => (unit, None),
    };
    let has_braces = |s: &str| s.contains(['{', '}']);
    let main = main.trim();
    let main = if main.is_empty() || has_braces(main) {
        String::new()
    } else {
        unit_word(main).unwrap_or(main).to_owned()
    };
    let per = match per.map(str::trim) {
        Some(per) if !per.is_empty() && !has_braces(per) => {
            format!("per_{}", per_unit_word(per).unwrap_or(per))
        }
        _ => String::new(),
    };
    (main, per)
}

/// Characters outside `[a-zA-Z0-9:]` become `_`, runs of `_` become one, a leading `_` goes.
fn clean_up_unit(unit: &str) -> String {
    let mut out = String::with_capacity(unit.len());
    for c in unit.chars() {
        let c = if is_metric_char(c) { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    match out.strip_prefix('_') {
        Some(rest) => rest.to_owned(),
        None => out,
    }
}

/// The Prometheus word for a UCUM unit (otlptranslator's `unitMap`).
fn unit_word(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        _ => return None,
    })
}

/// The Prometheus word for the unit after `/` (otlptranslator's `perUnitMap`).
fn per_unit_word(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        _ => return None,
    })
}

/// Keywords after which a parenthesised list holds label names, not expressions.
const GROUPING_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Binary-operator keywords, modifiers and literals.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// Aggregation operators (they may be followed by `by`/`without` before their parenthesis).
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Open(char),
    Close(char),
    Comma,
    Op(String),
    /// Numbers, durations and Grafana variables: never a metric name.
    Other,
}

fn tokenize(expr: &str) -> Vec<Token> {
    let chars: Vec<char> = expr.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            _ if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '"' | '\'' | '`' => {
                let quote = c;
                let mut value = String::new();
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    if chars[i] == '\\' && quote != '`' && i + 1 < chars.len() {
                        i += 1;
                    }
                    value.push(chars[i]);
                    i += 1;
                }
                i += 1;
                tokens.push(Token::Str(value));
            }
            '$' => {
                // Grafana variables: `$__rate_interval`, `$job`, `${job}`, `${job:regex}`
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
                tokens.push(Token::Other);
            }
            _ if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // numbers (`0.99`, `1e-3`, `0x1f`) and durations (`5m`, `1h30m`)
                let start = i;
                i += 1;
                while i < chars.len() {
                    let d = chars[i];
                    let exponent_sign = (d == '+' || d == '-')
                        && matches!(chars[i - 1], 'e' | 'E')
                        && !(chars[start] == '0'
                            && matches!(chars.get(start + 1), Some('x' | 'X')));
                    if d.is_ascii_alphanumeric() || d == '.' || d == '_' || exponent_sign {
                        i += 1;
                    } else {
                        break;
                    }
                }
                tokens.push(Token::Other);
            }
            _ if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
            '(' | '{' | '[' => {
                tokens.push(Token::Open(c));
                i += 1;
            }
            ')' | '}' | ']' => {
                tokens.push(Token::Close(c));
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && "+-*/%^=!<>~@;".contains(chars[i]) {
                    i += 1;
                }
                if i == start {
                    i += 1; // a character PromQL does not know: skip it
                    continue;
                }
                tokens.push(Token::Op(chars[start..i].iter().collect()));
            }
        }
    }
    tokens
}

/// The index just past the bracket that closes the one opening at `start` (or the end).
fn skip_group(tokens: &[Token], start: usize, open: char, close: char) -> usize {
    let mut depth = 0_usize;
    for (offset, token) in tokens[start..].iter().enumerate() {
        match token {
            Token::Open(c) if *c == open => depth += 1,
            Token::Close(c) if *c == close => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return start + offset + 1;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// Metric names inside a label-matcher list: `__name__="x"` and a bare quoted `"x"`.
fn matcher_names(tokens: &[Token], names: &mut BTreeSet<String>) {
    for matcher in tokens.split(|token| *token == Token::Comma) {
        match matcher {
            [Token::Str(name)] => {
                names.insert(name.clone());
            }
            [
                Token::Ident(label) | Token::Str(label),
                Token::Op(op),
                Token::Str(value),
            ] if label == "__name__" && op == "=" => {
                names.insert(value.clone());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        promql_metric_names(expr).into_iter().collect()
    }

    #[test]
    fn translates_mqtrace_metrics_as_the_collector_does() {
        let expected = [
            "messaging_client_operation_duration_seconds",
            "messaging_client_sent_messages_total",
            "messaging_client_consumed_messages_total",
            "messaging_process_duration_seconds",
            "mqtrace_propagation_invalid_total",
            "mqtrace_telemetry_spans_dropped_total",
            "mqtrace_worker_batch_size",
            "mqtrace_worker_queue_wait_seconds",
            "mqtrace_worker_messages_in_flight",
            "mqtrace_worker_dead_lettered_total",
            "mqtrace_inference_duration_seconds",
            "mqtrace_inference_decisions_total",
            "mqtrace_inference_feature_missing_total",
            "mqtrace_inference_schema_mismatch_total",
            "hw_gpu_memory_usage_bytes",
            "hw_gpu_memory_limit_bytes",
        ];
        let actual: Vec<String> = MQTRACE_METRICS
            .iter()
            .map(OtelMetric::prometheus_name)
            .collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn spanmetrics_names() {
        let series = series_names(SPANMETRICS_METRICS);
        assert_eq!(
            series.into_iter().collect::<Vec<_>>(),
            [
                "traces_span_metrics_calls_total",
                "traces_span_metrics_duration_milliseconds_bucket",
                "traces_span_metrics_duration_milliseconds_count",
                "traces_span_metrics_duration_milliseconds_sum",
            ]
        );
        assert!(
            SPANMETRICS_METRICS
                .iter()
                .all(|m| m.name.starts_with(SPANMETRICS_NAMESPACE))
        );
    }

    #[test]
    fn unit_rules() {
        use MetricKind::*;
        // the unit word is not repeated when the name has it already
        assert_eq!(
            prometheus_name("process.cpu.time.seconds", "s", Counter),
            "process_cpu_time_seconds_total"
        );
        // `total` moves to the end, once
        assert_eq!(
            prometheus_name("requests.total.count", "", Counter),
            "requests_count_total"
        );
        // unknown units are kept, cleaned
        assert_eq!(
            prometheus_name("queue.depth", "msg", Gauge),
            "queue_depth_msg"
        );
        assert_eq!(
            prometheus_name("x", "a.b-c", Gauge),
            "x_a_b_c",
            "non-metric characters in units become underscores"
        );
        // per-units, known and unknown, and an annotation on either side
        assert_eq!(
            prometheus_name("throughput", "By/s", Gauge),
            "throughput_bytes_per_second"
        );
        assert_eq!(
            prometheus_name("rate", "{request}/min", Gauge),
            "rate_per_min"
        );
        assert_eq!(prometheus_name("rate", "m/{x}", Gauge), "rate_meters");
        assert_eq!(prometheus_name("rate", "1/s", Gauge), "rate_per_second");
        // ratio only for gauges with unit 1
        assert_eq!(prometheus_name("util", "1", Gauge), "util_ratio");
        assert_eq!(prometheus_name("util", "1", UpDownCounter), "util");
        assert_eq!(prometheus_name("util", "1", Counter), "util_total");
        assert_eq!(prometheus_name("util", "%", Gauge), "util_percent");
        // names: runs of separators collapse, a leading digit gets an underscore
        assert_eq!(prometheus_name("a..b__c-d", "", Gauge), "a_b_c_d");
        assert_eq!(prometheus_name("2xx.count", "", Gauge), "_2xx_count");
        assert_eq!(prometheus_name("ns:sub.x", "", Gauge), "ns:sub_x");
        assert_eq!(prometheus_name("...", "", Gauge), "");
    }

    #[test]
    fn a_wrong_kind_or_unit_gives_a_different_name() {
        let right = prometheus_name(
            "mqtrace.worker.dead_lettered",
            "{message}",
            MetricKind::Counter,
        );
        let gauge = prometheus_name(
            "mqtrace.worker.dead_lettered",
            "{message}",
            MetricKind::Gauge,
        );
        let seconds = prometheus_name("mqtrace.worker.dead_lettered", "s", MetricKind::Counter);
        assert_ne!(right, gauge);
        assert_ne!(right, seconds);
        assert!(!series_names(MQTRACE_METRICS).contains("mqtrace_worker_dead_lettered"));
        assert!(
            !series_names(MQTRACE_METRICS).contains("mqtrace_worker_batch_size_messages_bucket")
        );
    }

    #[test]
    fn histogram_series() {
        assert_eq!(
            prometheus_series("messaging.process.duration", "s", MetricKind::Histogram),
            [
                "messaging_process_duration_seconds_bucket",
                "messaging_process_duration_seconds_sum",
                "messaging_process_duration_seconds_count",
            ]
        );
        assert_eq!(
            prometheus_series("hw.gpu.memory.limit", "By", MetricKind::Gauge),
            ["hw_gpu_memory_limit_bytes"]
        );
    }

    #[test]
    fn promql_functions_aggregations_and_labels_are_not_names() {
        assert_eq!(
            names(
                "histogram_quantile(0.99, sum by (le) (rate(messaging_process_duration_seconds_bucket[5m])))"
            ),
            ["messaging_process_duration_seconds_bucket"]
        );
        assert_eq!(
            names("sum(rate(a_total[1m])) by (job, le) / ignoring(le) group_left(instance) b"),
            ["a_total", "b"]
        );
        assert_eq!(
            names("topk(5, sum without (instance) (x)) > bool 3 and on(job) y unless z"),
            ["x", "y", "z"]
        );
        assert_eq!(
            names("SUM BY (le) (rate(x[5m])) OR vector(0)"),
            ["x"],
            "keywords are case-insensitive"
        );
        assert_eq!(names("count_values(\"le\", up)"), ["up"]);
        assert_eq!(
            names("quantile(0.9, up) + absent(missing{job=\"a\"})"),
            ["missing", "up"]
        );
        assert_eq!(
            names("time() - process_start_time_seconds"),
            ["process_start_time_seconds"]
        );
        assert_eq!(
            names("sum (rate (x [5m]))"),
            ["x"],
            "spaces before parentheses"
        );
    }

    #[test]
    fn promql_matchers_durations_and_variables() {
        assert_eq!(
            names(
                r#"rate(x_total{job=~"fraud.*", le!="+Inf", reason="queue_full"}[$__rate_interval])"#
            ),
            ["x_total"]
        );
        assert_eq!(names("max_over_time(x[1h:5m] offset -5m @ start())"), ["x"]);
        assert_eq!(names("x offset 1h30m"), ["x"]);
        assert_eq!(names(r#"{__name__="by_name", job="a"}"#), ["by_name"]);
        assert_eq!(names(r#"{__name__=~"regex.*"}"#), Vec::<String>::new());
        assert_eq!(
            names(r#"{"utf8.metric.name", "label.x"="v"}"#),
            ["utf8.metric.name"]
        );
        assert_eq!(names("rate(x[${interval}]) * ${factor} + $scale"), ["x"]);
        assert_eq!(names("1e-3 * x + 0x1F - .5 + Inf + NaN"), ["x"]);
        assert_eq!(names("x # a comment naming y\n + z"), ["x", "z"]);
        assert_eq!(
            names(r#"label_replace(up, "dst", "$1", "src", "(.*)")"#),
            ["up"]
        );
        assert_eq!(
            names("ns:recording:rule_rate5m"),
            ["ns:recording:rule_rate5m"]
        );
    }

    #[test]
    fn promql_garbage_does_not_panic() {
        for expr in [
            "",
            "(",
            "{",
            "[",
            "sum by (",
            "x{a=\"",
            "rate(x[5m",
            "$",
            "${",
            "1e",
            "}",
        ] {
            let _ = promql_metric_names(expr);
        }
        assert_eq!(names("x{"), ["x"]);
    }

    #[test]
    fn dashboard_names_walk_rows_and_targets() {
        let dashboard = serde_json::json!({
            "panels": [
                {"id": 1, "targets": [
                    {"expr": "rate(a_total[5m])"},
                    {"expr": "b", "legendFormat": "{{x}}"}
                ]},
                {"id": 2, "type": "row", "collapsed": true, "panels": [
                    {"id": 3, "targets": [{"expr": "histogram_quantile(0.5, sum by (le) (rate(c_bucket[5m])))"}]}
                ]},
                {"id": 4, "targets": [{"query": "not_an_expr"}]}
            ],
            "templating": {"list": [{"name": "x", "query": "label_values(d, job)"}]}
        });
        assert_eq!(
            dashboard_metric_names(&dashboard)
                .into_iter()
                .collect::<Vec<_>>(),
            ["a_total", "b", "c_bucket"]
        );
    }

    #[test]
    fn kinds_from_otlp() {
        use opentelemetry_proto::tonic::metrics::v1::{
            ExponentialHistogram, Gauge, Histogram, Sum,
        };
        let of = |data| {
            MetricKind::of_otlp(&Metric {
                data,
                ..Default::default()
            })
        };
        assert_eq!(
            of(Some(Data::Sum(Sum {
                is_monotonic: false,
                ..Default::default()
            }))),
            Some(MetricKind::UpDownCounter)
        );
        assert_eq!(
            of(Some(Data::Gauge(Gauge::default()))),
            Some(MetricKind::Gauge)
        );
        assert_eq!(
            of(Some(Data::Histogram(Histogram::default()))),
            Some(MetricKind::Histogram)
        );
        assert_eq!(
            of(Some(Data::ExponentialHistogram(
                ExponentialHistogram::default()
            ))),
            None
        );
        assert_eq!(of(None), None);
    }
}
