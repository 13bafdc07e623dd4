//! The deployment stack, checked offline (no Docker engine, no network): `docker-compose.yml`,
//! the `Dockerfile` and everything under `integration/` parse, refer to files that exist and
//! agree with each other — ports, service names, the Collector's pipelines, its tail-sampling
//! policies and attribute deny list — and the Grafana dashboard queries only metric names the
//! Collector's Prometheus exporter really produces from mqtrace's instruments
//! ([`mqtrace_testkit::prometheus::MQTRACE_METRICS`]) or from its `spanmetrics` connector.
//!
//! `scripts/check-compose` validates the compose file against the Compose schema; this file
//! checks what a schema cannot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mqtrace_testkit::prometheus::{
    MQTRACE_METRICS, MetricKind, OtelMetric, SPANMETRICS_METRICS, SPANMETRICS_NAMESPACE,
    prometheus_series, promql_metric_names, series_names,
};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

const COMPOSE: &str = "docker-compose.yml";
const COLLECTOR: &str = "integration/otel-collector.yaml";
const PROMETHEUS: &str = "integration/prometheus.yml";
const DATASOURCES: &str = "integration/grafana/provisioning/datasources/datasources.yaml";
const DASHBOARD_PROVIDERS: &str = "integration/grafana/provisioning/dashboards/dashboards.yaml";
const DASHBOARD: &str = "integration/grafana/dashboards/mqtrace.json";

/// Compose service names the other files refer to.
const COLLECTOR_SERVICE: &str = "otel-collector";
const JAEGER_SERVICE: &str = "jaeger";
const WORKER_SERVICE: &str = "worker";
const GRAFANA_SERVICE: &str = "grafana";
const PROMETHEUS_SERVICE: &str = "prometheus";

/// Where Jaeger v2's all-in-one configuration takes OTLP over gRPC, on
/// `${JAEGER_LISTEN_HOST}` (its image sets 0.0.0.0; the binary's default is localhost).
const JAEGER_OTLP_GRPC_PORT: u16 = 4317;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Yaml {
    serde_yaml_ng::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn json(relative: &str) -> Json {
    serde_json::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// `value[keys[0]][keys[1]]...`, or a panic naming the missing path.
fn at<'a>(value: &'a Yaml, keys: &[&str]) -> &'a Yaml {
    let mut current = value;
    for (i, key) in keys.iter().enumerate() {
        current = current
            .get(*key)
            .unwrap_or_else(|| panic!("missing {}", keys[..=i].join(".")));
    }
    current
}

fn text(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn strings(value: &Yaml) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {value:?}"))
        .iter()
        .map(text)
        .collect()
}

fn keys(value: &Yaml) -> Vec<String> {
    value
        .as_mapping()
        .map(|map| map.keys().map(text).collect())
        .unwrap_or_default()
}

/// The type of a Collector component id: `otlp_grpc/jaeger` -> `otlp_grpc`.
fn component_type(id: &str) -> &str {
    id.split('/').next().unwrap_or(id)
}

/// The port at the end of `host:port` or `scheme://host:port/path`.
fn host_port(address: &str) -> (String, u16) {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{address}: no port"));
    let port = port
        .parse()
        .unwrap_or_else(|e| panic!("{address}: port {port}: {e}"));
    (host.to_owned(), port)
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    at(compose, &["services", name])
}

/// A service's environment, from either the map or the `KEY=value` list form.
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Yaml::Mapping(map)) => map.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Some(Yaml::Sequence(items)) => items
            .iter()
            .map(text)
            .filter_map(|item| {
                item.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Published ports as (host port, container port), from `"H:C"`, `"IP:H:C"`, `"H:C/tcp"`.
fn published_ports(service: &Yaml) -> Vec<(u16, u16)> {
    service
        .get("ports")
        .map(strings)
        .unwrap_or_default()
        .iter()
        .map(|spec| {
            let spec = spec.split('/').next().unwrap_or(spec);
            let parts: Vec<&str> = spec.split(':').collect();
            let port =
                |s: &str| -> u16 { s.parse().unwrap_or_else(|e| panic!("port {spec}: {e}")) };
            match parts.as_slice() {
                [host, container] | [_, host, container] => (port(host), port(container)),
                _ => panic!("port {spec}: expected HOST:CONTAINER"),
            }
        })
        .collect()
}

/// Bind-mount sources and targets (short `SRC:DST[:ro]` and long `{type: bind}` syntax).
fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
    let Some(volumes) = service.get("volumes").and_then(Yaml::as_sequence) else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter_map(|volume| match volume {
            Yaml::String(spec) => {
                let mut parts = spec.split(':');
                let source = parts.next()?.to_owned();
                let target = parts.next()?.to_owned();
                (source.starts_with('.') || source.starts_with('/')).then_some((source, target))
            }
            Yaml::Mapping(_) if volume.get("type").map(text).as_deref() == Some("bind") => {
                Some((text(at(volume, &["source"])), text(at(volume, &["target"]))))
            }
            _ => None,
        })
        .collect()
}

/// A service's command as a list of arguments.
fn command(service: &Yaml) -> Vec<String> {
    match service.get("command") {
        Some(Yaml::Sequence(_)) => strings(at(service, &["command"])),
        Some(value) => text(value).split_whitespace().map(str::to_owned).collect(),
        None => Vec::new(),
    }
}

/// The value of `--flag=value` or `--flag value` in `args`.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, arg)| {
        if let Some(value) = arg.strip_prefix(&format!("{name}=")) {
            Some(value.to_owned())
        } else if arg == name {
            args.get(i + 1).cloned()
        } else {
            None
        }
    })
}

#[test]
fn every_config_file_parses() {
    let mut parsed = Vec::new();
    let mut pending = vec![root().join("integration")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(root())
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            match path.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => {
                    let value = yaml(&relative);
                    assert!(value.is_mapping(), "{relative}: not a YAML mapping");
                    parsed.push(relative);
                }
                Some("json") => {
                    let value = json(&relative);
                    assert!(value.is_object(), "{relative}: not a JSON object");
                    parsed.push(relative);
                }
                _ => {}
            }
        }
    }
    assert!(yaml(COMPOSE).is_mapping());
    for required in [
        COLLECTOR,
        PROMETHEUS,
        DATASOURCES,
        DASHBOARD_PROVIDERS,
        DASHBOARD,
    ] {
        assert!(
            parsed.iter().any(|p| p == required),
            "{required} missing (parsed: {parsed:?})"
        );
    }
}

#[test]
fn compose_refers_only_to_files_that_exist() {
    let compose = yaml(COMPOSE);
    let services = at(&compose, &["services"]);
    assert!(!keys(services).is_empty());
    for name in keys(services) {
        let service = service(&compose, &name);
        assert!(
            service.get("image").is_some() || service.get("build").is_some(),
            "service {name} has neither image nor build"
        );
        if let Some(build) = service.get("build") {
            let (context, dockerfile) = match build {
                Yaml::String(context) => (context.clone(), "Dockerfile".to_owned()),
                _ => (
                    text(at(build, &["context"])),
                    build
                        .get("dockerfile")
                        .map(text)
                        .unwrap_or_else(|| "Dockerfile".to_owned()),
                ),
            };
            let context = root().join(context);
            assert!(context.is_dir(), "{name}: build context {context:?}");
            assert!(
                context.join(&dockerfile).is_file(),
                "{name}: Dockerfile {dockerfile} not in {context:?}"
            );
        }
        for (source, _) in bind_mounts(service) {
            let path = root().join(&source);
            assert!(
                path.exists(),
                "{name}: volume source {source} does not exist"
            );
        }
        for depends in service
            .get("depends_on")
            .map(|d| match d {
                Yaml::Sequence(_) => strings(d),
                _ => keys(d),
            })
            .unwrap_or_default()
        {
            assert!(
                services.get(depends.as_str()).is_some(),
                "{name} depends on unknown service {depends}"
            );
        }
    }

    // the collector reads the file it is given
    let collector = service(&compose, COLLECTOR_SERVICE);
    let config = flag(&command(collector), "--config").expect("collector --config");
    assert!(
        bind_mounts(collector)
            .iter()
            .any(|(source, target)| *target == config
                && Path::new(source).ends_with("otel-collector.yaml")),
        "the collector's --config {config} is not integration/otel-collector.yaml"
    );
    let prometheus = service(&compose, PROMETHEUS_SERVICE);
    let config = flag(&command(prometheus), "--config.file").expect("prometheus --config.file");
    assert!(
        bind_mounts(prometheus)
            .iter()
            .any(|(source, target)| *target == config
                && Path::new(source).ends_with("prometheus.yml")),
        "prometheus --config.file {config} is not integration/prometheus.yml"
    );
}

#[test]
fn worker_image_is_multi_stage_non_root_and_runs_the_example() {
    let dockerfile = read("Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|line| line.trim_start().starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert!(stages[0].contains("rust:"), "builder: {}", stages[0]);
    assert!(
        stages[stages.len() - 1].contains("debian:bookworm-slim"),
        "runtime: {}",
        stages[stages.len() - 1]
    );
    assert!(dockerfile.contains("--example batch_inference"));
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("USER "))
        .expect("a USER line");
    assert!(!["root", "0"].contains(&user.trim()), "runs as {user}");

    let ignore = read(".dockerignore");
    for excluded in ["target", "telemetry"] {
        assert!(
            ignore
                .lines()
                .any(|line| line.trim().trim_end_matches('/') == excluded),
            ".dockerignore does not exclude {excluded}/"
        );
    }
}

#[test]
fn worker_sends_otlp_to_the_collector_and_reaches_the_brokers() {
    let compose = yaml(COMPOSE);
    let collector = yaml(COLLECTOR);
    let grpc = host_port(&text(at(
        &collector,
        &["receivers", "otlp", "protocols", "grpc", "endpoint"],
    )));
    let http = host_port(&text(at(
        &collector,
        &["receivers", "otlp", "protocols", "http", "endpoint"],
    )));
    assert_eq!((grpc.0.as_str(), grpc.1), ("0.0.0.0", 4317));
    assert_eq!((http.0.as_str(), http.1), ("0.0.0.0", 4318));
    let published = published_ports(service(&compose, COLLECTOR_SERVICE));
    for port in [grpc.1, http.1] {
        assert!(
            published.iter().any(|(_, container)| *container == port),
            "collector OTLP port {port} not published: {published:?}"
        );
    }

    let worker = service(&compose, WORKER_SERVICE);
    let env = environment(worker);
    let protocol = env
        .get("OTEL_EXPORTER_OTLP_PROTOCOL")
        .expect("OTEL_EXPORTER_OTLP_PROTOCOL");
    let endpoint = env
        .get("OTEL_EXPORTER_OTLP_ENDPOINT")
        .expect("OTEL_EXPORTER_OTLP_ENDPOINT");
    assert!(endpoint.starts_with("http://"), "{endpoint}");
    let (host, port) = host_port(endpoint);
    assert_eq!(host, COLLECTOR_SERVICE);
    let expected = if protocol == "grpc" { grpc.1 } else { http.1 };
    assert_eq!(port, expected, "{endpoint} with protocol {protocol}");
    assert_eq!(protocol, "grpc");
    assert_eq!(
        env.get("OTEL_TRACES_SAMPLER").map(String::as_str),
        Some("parentbased_traceidratio")
    );
    let ratio: f64 = env
        .get("OTEL_TRACES_SAMPLER_ARG")
        .expect("OTEL_TRACES_SAMPLER_ARG")
        .parse()
        .expect("a ratio");
    assert_eq!(
        ratio, 1.0,
        "head sampling keeps all; the collector tail-samples"
    );
    assert!(env.get("OTEL_SERVICE_NAME").is_some_and(|s| !s.is_empty()));
    assert!(env.get("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
        a.split(',')
            .any(|kv| kv == "deployment.environment.name=compose")
    }));

    // --bootstrap names the broker as Kafka advertises it to other containers
    let args = command(worker);
    let bootstrap = flag(&args, "--bootstrap").expect("--bootstrap");
    let (kafka_host, kafka_port) = host_port(&bootstrap);
    let kafka = service(&compose, &kafka_host);
    let advertised = environment(kafka)
        .get("KAFKA_ADVERTISED_LISTENERS")
        .cloned()
        .expect("KAFKA_ADVERTISED_LISTENERS");
    assert!(
        advertised
            .split(',')
            .any(|listener| host_port(listener) == (kafka_host.clone(), kafka_port)),
        "{bootstrap} is not among Kafka's advertised listeners {advertised}"
    );
    assert!(args.iter().any(|a| a == "--generate"), "{args:?}");
    assert!(
        flag(&args, "--rate").is_some(),
        "continuous traffic needs --rate: {args:?}"
    );
    if let Some(url) = flag(&args, "--amqp-url") {
        let (host, port) = host_port(&url);
        let rabbit = service(&compose, host.rsplit('@').next().unwrap_or(&host));
        assert!(
            published_ports(rabbit).iter().any(|(_, c)| *c == port),
            "{url}: port {port} is not RabbitMQ's"
        );
    }
}

#[test]
fn prometheus_scrapes_the_collector_exporter() {
    let compose = yaml(COMPOSE);
    let collector = yaml(COLLECTOR);
    let exporter_port = host_port(&text(at(
        &collector,
        &["exporters", "prometheus", "endpoint"],
    )))
    .1;
    assert_eq!(
        text(at(
            &collector,
            &[
                "exporters",
                "prometheus",
                "resource_to_telemetry_conversion",
                "enabled"
            ]
        )),
        "true"
    );
    assert!(
        at(&collector, &["exporters", "prometheus"])
            .get("namespace")
            .is_none(),
        "a namespace would prefix every name the dashboard queries"
    );
    let prometheus = yaml(PROMETHEUS);
    let targets: Vec<String> = at(&prometheus, &["scrape_configs"])
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| {
            job.get("static_configs")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
                .flat_map(|c| strings(at(c, &["targets"])))
        })
        .collect();
    assert!(
        targets.contains(&format!("{COLLECTOR_SERVICE}:{exporter_port}")),
        "no scrape target {COLLECTOR_SERVICE}:{exporter_port} in {targets:?}"
    );
    assert!(service(&compose, COLLECTOR_SERVICE).is_mapping());
}

#[test]
fn grafana_data_sources_point_at_compose_services() {
    let compose = yaml(COMPOSE);
    let datasources = yaml(DATASOURCES);
    let mut types = BTreeSet::new();
    for source in at(&datasources, &["datasources"])
        .as_sequence()
        .expect("datasources")
    {
        let kind = text(at(source, &["type"]));
        let url = text(at(source, &["url"]));
        let (host, port) = host_port(&url);
        let service = service(&compose, &host);
        assert!(
            published_ports(service).iter().any(|(_, c)| *c == port),
            "data source {url}: service {host} does not listen on {port}"
        );
        let expected_service = match kind.as_str() {
            "prometheus" => PROMETHEUS_SERVICE,
            "jaeger" => JAEGER_SERVICE,
            other => panic!("unexpected data source type {other}"),
        };
        assert_eq!(host, expected_service, "{kind} data source url {url}");
        types.insert(kind);
    }
    assert_eq!(
        types,
        BTreeSet::from(["jaeger".into(), "prometheus".into()])
    );

    // provisioning and dashboards are mounted where Grafana and the provider look
    let grafana = service(&compose, GRAFANA_SERVICE);
    let mounts = bind_mounts(grafana);
    let mounted = |target: &str| mounts.iter().any(|(_, t)| t == target);
    assert!(
        mounted("/etc/grafana/provisioning/datasources"),
        "{mounts:?}"
    );
    assert!(
        mounted("/etc/grafana/provisioning/dashboards"),
        "{mounts:?}"
    );
    let providers = yaml(DASHBOARD_PROVIDERS);
    for provider in at(&providers, &["providers"])
        .as_sequence()
        .expect("providers")
    {
        let path = text(at(provider, &["options", "path"]));
        assert!(
            mounts.iter().any(|(source, target)| *target == path
                && root().join(source).join("mqtrace.json").is_file()),
            "dashboard provider path {path} is not the mounted integration/grafana/dashboards"
        );
    }
    let env = environment(grafana);
    assert_eq!(
        env.get("GF_AUTH_ANONYMOUS_ENABLED").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        env.get("GF_AUTH_ANONYMOUS_ORG_ROLE").map(String::as_str),
        Some("Admin")
    );
}

#[test]
fn collector_sends_traces_to_jaeger_otlp() {
    let compose = yaml(COMPOSE);
    let collector = yaml(COLLECTOR);
    let exporters = at(&collector, &["exporters"]);
    let jaeger_exporters: Vec<String> = keys(exporters)
        .into_iter()
        .filter(|id| ["otlp", "otlp_grpc"].contains(&component_type(id)))
        .collect();
    assert_eq!(jaeger_exporters.len(), 1, "{jaeger_exporters:?}");
    let exporter = at(exporters, &[jaeger_exporters[0].as_str()]);
    let (host, port) = host_port(&text(at(exporter, &["endpoint"])));
    assert_eq!(host, JAEGER_SERVICE);
    assert_eq!(port, JAEGER_OTLP_GRPC_PORT);
    assert_eq!(text(at(exporter, &["tls", "insecure"])), "true");
    let jaeger = service(&compose, JAEGER_SERVICE);
    assert_eq!(
        environment(jaeger)
            .get("JAEGER_LISTEN_HOST")
            .map(String::as_str),
        Some("0.0.0.0"),
        "Jaeger must listen beyond localhost for the collector to reach it"
    );
    assert!(
        published_ports(jaeger).iter().any(|(_, c)| *c == 16686),
        "Jaeger UI"
    );
    assert!(
        !published_ports(jaeger)
            .iter()
            .any(|(h, _)| *h == 4317 || *h == 4318),
        "the host's OTLP ports belong to the collector"
    );
}

/// A pipeline of the Collector configuration: its id and component ids.
struct Pipeline {
    id: String,
    receivers: Vec<String>,
    processors: Vec<String>,
    exporters: Vec<String>,
}

impl Pipeline {
    fn signal(&self) -> &str {
        component_type(&self.id)
    }
}

fn pipelines(collector: &Yaml) -> Vec<Pipeline> {
    let pipelines = at(collector, &["service", "pipelines"]);
    keys(pipelines)
        .into_iter()
        .map(|id| {
            let pipeline = at(pipelines, &[id.as_str()]);
            let list = |key: &str| pipeline.get(key).map(strings).unwrap_or_default();
            Pipeline {
                receivers: list("receivers"),
                processors: list("processors"),
                exporters: list("exporters"),
                id,
            }
        })
        .collect()
}

/// What is wrong with the Collector configuration's pipelines, if anything.
fn pipeline_problems(collector: &Yaml) -> Vec<String> {
    let mut problems = Vec::new();
    let defined = |section: &str| -> BTreeSet<String> {
        collector
            .get(section)
            .map(keys)
            .unwrap_or_default()
            .into_iter()
            .collect()
    };
    let (receivers, processors, exporters, connectors) = (
        defined("receivers"),
        defined("processors"),
        defined("exporters"),
        defined("connectors"),
    );
    let pipelines = pipelines(collector);
    if pipelines.is_empty() {
        problems.push("no pipelines".to_owned());
    }
    let (mut used_receivers, mut used_processors, mut used_exporters) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for pipeline in &pipelines {
        let id = &pipeline.id;
        if !["traces", "metrics", "logs"].contains(&pipeline.signal()) {
            problems.push(format!("{id}: unknown signal"));
        }
        if pipeline.receivers.is_empty() || pipeline.exporters.is_empty() {
            problems.push(format!("{id}: needs receivers and exporters"));
        }
        for r in &pipeline.receivers {
            if !receivers.contains(r) && !connectors.contains(r) {
                problems.push(format!("{id}: receiver {r} is not defined"));
            }
            used_receivers.insert(r.clone());
        }
        for p in &pipeline.processors {
            if !processors.contains(p) {
                problems.push(format!("{id}: processor {p} is not defined"));
            }
            used_processors.insert(p.clone());
        }
        for e in &pipeline.exporters {
            if !exporters.contains(e) && !connectors.contains(e) {
                problems.push(format!("{id}: exporter {e} is not defined"));
            }
            used_exporters.insert(e.clone());
        }
        let types: Vec<&str> = pipeline
            .processors
            .iter()
            .map(|p| component_type(p))
            .collect();
        if types.first() != Some(&"memory_limiter") {
            problems.push(format!("{id}: memory_limiter is not first: {types:?}"));
        }
        if types.last() != Some(&"batch") {
            problems.push(format!("{id}: batch is not last: {types:?}"));
        }
    }
    for r in receivers.difference(&used_receivers) {
        problems.push(format!("receiver {r} is defined but unused"));
    }
    for p in processors.difference(&used_processors) {
        problems.push(format!("processor {p} is defined but unused"));
    }
    for e in exporters.difference(&used_exporters) {
        problems.push(format!("exporter {e} is defined but unused"));
    }
    for c in &connectors {
        let exporting: Vec<&str> = pipelines
            .iter()
            .filter(|p| p.exporters.contains(c))
            .map(|p| p.id.as_str())
            .collect();
        let receiving: Vec<&str> = pipelines
            .iter()
            .filter(|p| p.receivers.contains(c))
            .map(|p| p.id.as_str())
            .collect();
        if exporting.is_empty() || receiving.is_empty() {
            problems.push(format!(
                "connector {c} must be an exporter in one pipeline and a receiver in another \
                 (exporter in {exporting:?}, receiver in {receiving:?})"
            ));
        }
        if exporting.iter().any(|e| receiving.contains(e)) {
            problems.push(format!("connector {c} feeds its own pipeline"));
        }
    }
    let extensions = defined("extensions");
    let enabled: BTreeSet<String> = collector
        .get("service")
        .and_then(|s| s.get("extensions"))
        .map(strings)
        .unwrap_or_default()
        .into_iter()
        .collect();
    if extensions != enabled {
        problems.push(format!(
            "extensions defined {extensions:?} but enabled {enabled:?}"
        ));
    }
    problems
}

#[test]
fn collector_pipelines_use_exactly_what_is_defined() {
    let collector = yaml(COLLECTOR);
    let problems = pipeline_problems(&collector);
    assert!(problems.is_empty(), "{problems:#?}");

    let pipelines = pipelines(&collector);
    for signal in ["traces", "metrics", "logs"] {
        assert!(
            pipelines.iter().any(|p| p.signal() == signal),
            "no {signal} pipeline"
        );
    }
    // span metrics count every span: the traces pipeline feeding the connector must not
    // sample, and its metrics must reach the Prometheus exporter
    let spanmetrics: Vec<String> = keys(at(&collector, &["connectors"]))
        .into_iter()
        .filter(|c| component_type(c) == "spanmetrics")
        .collect();
    assert_eq!(spanmetrics.len(), 1);
    for pipeline in &pipelines {
        if pipeline.exporters.contains(&spanmetrics[0]) {
            assert_eq!(pipeline.signal(), "traces");
            assert!(
                !pipeline
                    .processors
                    .iter()
                    .any(|p| component_type(p) == "tail_sampling"),
                "{}: spanmetrics behind tail sampling counts only kept traces",
                pipeline.id
            );
        }
        if pipeline.receivers.contains(&spanmetrics[0]) {
            assert_eq!(pipeline.signal(), "metrics");
            assert!(pipeline.exporters.iter().any(|e| e == "prometheus"));
        }
    }
}

#[test]
fn broken_pipelines_are_reported() {
    let good = yaml(COLLECTOR);
    let mutate = |edit: &dyn Fn(&mut Yaml)| {
        let mut collector = good.clone();
        edit(&mut collector);
        pipeline_problems(&collector)
    };
    let pipeline = |c: &mut Yaml, id: &str, key: &str| -> Vec<Yaml> {
        c["service"]["pipelines"][id][key]
            .as_sequence()
            .cloned()
            .expect("list")
    };
    // batch moved to the front of the metrics pipeline
    let problems = mutate(&|c| {
        let mut processors = pipeline(c, "metrics", "processors");
        processors.reverse();
        c["service"]["pipelines"]["metrics"]["processors"] = Yaml::Sequence(processors);
    });
    assert!(
        problems
            .iter()
            .any(|p| p.contains("memory_limiter is not first")),
        "{problems:?}"
    );
    // an undefined exporter, and the connector no longer received anywhere
    let problems = mutate(&|c| {
        c["service"]["pipelines"]["metrics"]["receivers"] =
            Yaml::Sequence(vec![Yaml::String("otlp".into())]);
        c["service"]["pipelines"]["logs"]["exporters"] =
            Yaml::Sequence(vec![Yaml::String("nowhere".into())]);
    });
    assert!(
        problems
            .iter()
            .any(|p| p.contains("exporter nowhere is not defined")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("connector spanmetrics")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("exporter debug is defined but unused")),
        "{problems:?}"
    );
}

/// The tail-sampling policies of the processor used in the pipeline that exports to Jaeger.
fn sampling_policies(collector: &Yaml) -> Vec<Yaml> {
    let jaeger = pipelines(collector)
        .into_iter()
        .find(|p| {
            p.exporters
                .iter()
                .any(|e| component_type(e).starts_with("otlp"))
        })
        .expect("a traces pipeline exporting to Jaeger");
    let sampler = jaeger
        .processors
        .iter()
        .find(|p| component_type(p) == "tail_sampling")
        .expect("tail sampling in front of Jaeger");
    at(collector, &["processors", sampler.as_str(), "policies"])
        .as_sequence()
        .cloned()
        .expect("policies")
}

#[test]
fn tail_sampling_keeps_errors_slow_traces_and_a_share_of_the_rest() {
    let policies = sampling_policies(&yaml(COLLECTOR));
    let of_type = |kind: &str| -> Vec<&Yaml> {
        policies
            .iter()
            .filter(|p| p.get("type").map(text).as_deref() == Some(kind))
            .collect()
    };
    let errors = of_type("status_code");
    assert!(
        errors
            .iter()
            .any(|p| strings(at(p, &["status_code", "status_codes"]))
                .iter()
                .any(|c| c == "ERROR")),
        "no policy keeps ERROR traces"
    );
    let threshold: u64 = of_type("latency")
        .iter()
        .map(|p| {
            text(at(p, &["latency", "threshold_ms"]))
                .parse()
                .expect("ms")
        })
        .min()
        .expect("a latency policy");
    assert!(
        (1..=10_000).contains(&threshold),
        "latency threshold {threshold} ms"
    );
    let share: f64 = of_type("probabilistic")
        .iter()
        .map(|p| {
            text(at(p, &["probabilistic", "sampling_percentage"]))
                .parse()
                .expect("percentage")
        })
        .fold(0.0, f64::max);
    assert!(
        share > 0.0 && share < 100.0,
        "probabilistic share {share} %"
    );
    for policy in &policies {
        let kind = text(at(policy, &["type"]));
        assert!(
            policy.get(kind.as_str()).is_some() || kind == "always_sample",
            "{policy:?}"
        );
    }
}

/// Attribute keys the redaction processors of `pipeline` delete or hash.
fn redacted_keys(collector: &Yaml, pipeline: &Pipeline) -> BTreeSet<String> {
    let mut redacted = BTreeSet::new();
    for id in &pipeline.processors {
        let processor = at(collector, &["processors", id.as_str()]);
        match component_type(id) {
            "attributes" => {
                for action in processor
                    .get("actions")
                    .and_then(Yaml::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    let kind = action.get("action").map(text).unwrap_or_default();
                    if let (Some(key), "delete" | "hash") = (action.get("key"), kind.as_str()) {
                        redacted.insert(text(key));
                    }
                }
            }
            "redaction" => {
                for key in processor
                    .get("blocked_key_patterns")
                    .map(strings)
                    .unwrap_or_default()
                {
                    redacted.insert(key);
                }
            }
            _ => {}
        }
    }
    redacted
}

#[test]
fn message_keys_never_reach_the_trace_store() {
    let collector = yaml(COLLECTOR);
    let traces: Vec<Pipeline> = pipelines(&collector)
        .into_iter()
        .filter(|p| p.signal() == "traces" || p.signal() == "logs")
        .collect();
    assert!(!traces.is_empty());
    for pipeline in &traces {
        let redacted = redacted_keys(&collector, pipeline);
        assert!(
            redacted.contains("messaging.kafka.message.key"),
            "{}: messaging.kafka.message.key is not deleted or hashed ({redacted:?})",
            pipeline.id
        );
        // before sampling and batching
        let position = |kind: &str| {
            pipeline
                .processors
                .iter()
                .position(|p| component_type(p) == kind)
        };
        let redaction = position("attributes")
            .or(position("redaction"))
            .expect("a redaction step");
        if let Some(sampling) = position("tail_sampling") {
            assert!(
                redaction < sampling,
                "{}: redact before sampling",
                pipeline.id
            );
        }
    }
}

/// Every panel of a dashboard, rows' collapsed panels included.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut all = Vec::new();
    let mut pending: Vec<&Json> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = pending.pop() {
        if let Some(children) = panel["panels"].as_array() {
            pending.extend(children);
        }
        all.push(panel);
    }
    all
}

/// The Prometheus series a dashboard may query: what the Collector exports for mqtrace's
/// instruments, plus the span metrics when the Collector defines the connector as the
/// names assume.
fn allowed_series(collector: &Yaml) -> BTreeSet<String> {
    let mut allowed = series_names(MQTRACE_METRICS);
    if let Some(connector) = collector
        .get("connectors")
        .and_then(|c| c.get("spanmetrics"))
    {
        let namespace = connector
            .get("namespace")
            .map(text)
            .unwrap_or_else(|| SPANMETRICS_NAMESPACE.to_owned());
        let unit = connector
            .get("histogram")
            .and_then(|h| h.get("unit"))
            .map(text)
            .unwrap_or_else(|| "ms".to_owned());
        assert_eq!(namespace, SPANMETRICS_NAMESPACE);
        assert_eq!(unit, "ms");
        allowed.extend(series_names(SPANMETRICS_METRICS));
    }
    allowed
}

/// What is wrong with the dashboard's queries, panel by panel.
fn query_problems(dashboard: &Json, allowed: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let names = promql_metric_names(expr);
            if names.is_empty() {
                problems.push(format!("{title}: no metric in {expr}"));
            }
            for name in names.difference(allowed) {
                problems.push(format!(
                    "{title}: {name} is not a metric mqtrace exports ({expr})"
                ));
            }
        }
    }
    problems
}

#[test]
fn dashboard_queries_only_metrics_that_exist() {
    let dashboard = json(DASHBOARD);
    let allowed = allowed_series(&yaml(COLLECTOR));
    let problems = query_problems(&dashboard, &allowed);
    assert!(problems.is_empty(), "{problems:#?}");

    // the panels the stack promises
    let queried = mqtrace_testkit::prometheus::dashboard_metric_names(&dashboard);
    let series = |name, unit, kind| prometheus_series(name, unit, kind);
    for (what, wanted) in [
        (
            "messages sent",
            series(
                "messaging.client.sent.messages",
                "{message}",
                MetricKind::Counter,
            ),
        ),
        (
            "messages consumed",
            series(
                "messaging.client.consumed.messages",
                "{message}",
                MetricKind::Counter,
            ),
        ),
        (
            "process duration",
            series("messaging.process.duration", "s", MetricKind::Histogram),
        ),
        (
            "batch size",
            series(
                "mqtrace.worker.batch.size",
                "{message}",
                MetricKind::Histogram,
            ),
        ),
        (
            "queue wait",
            series("mqtrace.worker.queue.wait", "s", MetricKind::Histogram),
        ),
        (
            "inference duration",
            series("mqtrace.inference.duration", "s", MetricKind::Histogram),
        ),
        (
            "GPU memory",
            series("hw.gpu.memory.usage", "By", MetricKind::Gauge),
        ),
        (
            "dead-lettered",
            series(
                "mqtrace.worker.dead_lettered",
                "{message}",
                MetricKind::Counter,
            ),
        ),
        (
            "dropped spans",
            series(
                "mqtrace.telemetry.spans.dropped",
                "{span}",
                MetricKind::Counter,
            ),
        ),
    ] {
        assert!(
            wanted.iter().any(|s| queried.contains(s)),
            "no panel shows {what} ({wanted:?})"
        );
    }
    // quantiles read buckets, not the histogram's bare name
    for name in &queried {
        assert!(allowed.contains(name));
    }
    let histograms: BTreeSet<String> = MQTRACE_METRICS
        .iter()
        .filter(|m| m.kind == MetricKind::Histogram)
        .map(OtelMetric::prometheus_name)
        .collect();
    assert!(queried.is_disjoint(&histograms));
}

#[test]
fn a_wrong_metric_name_in_the_dashboard_is_rejected() {
    let allowed = allowed_series(&yaml(COLLECTOR));
    let original = read(DASHBOARD);
    for (right, wrong) in [
        // the unit suffix forgotten
        (
            "mqtrace_worker_queue_wait_seconds_bucket",
            "mqtrace_worker_queue_wait_bucket",
        ),
        // _total on a gauge-like up-down counter
        (
            "(mqtrace_worker_messages_in_flight)",
            "(mqtrace_worker_messages_in_flight_total)",
        ),
        // a counter without _total
        (
            "mqtrace_worker_dead_lettered_total",
            "mqtrace_worker_dead_lettered",
        ),
        // the OTel name with dots, as in a UTF-8 query
        ("hw_gpu_memory_usage_bytes", "hw_gpu_memory_usage"),
    ] {
        assert!(
            original.contains(right),
            "the dashboard no longer queries {right}"
        );
        let broken: Json = serde_json::from_str(&original.replace(right, wrong)).expect("json");
        let problems = query_problems(&broken, &allowed);
        let wrong_name = wrong.trim_matches(['(', ')']);
        assert!(
            problems.iter().any(|p| p.contains(wrong_name)),
            "{wrong} was not rejected: {problems:?}"
        );
    }
}

/// What is wrong with the dashboard's panel ids and data sources.
fn panel_problems(dashboard: &Json, provisioned: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        match panel["id"].as_u64() {
            Some(id) if !ids.insert(id) => problems.push(format!("{title}: duplicate id {id}")),
            Some(_) => {}
            None => problems.push(format!("{title}: no numeric id")),
        }
        let mut sources = vec![&panel["datasource"]];
        let mut ref_ids = BTreeSet::new();
        for target in panel["targets"].as_array().into_iter().flatten() {
            sources.push(&target["datasource"]);
            if let Some(ref_id) = target["refId"].as_str()
                && !ref_ids.insert(ref_id)
            {
                problems.push(format!("{title}: duplicate refId {ref_id}"));
            }
        }
        if panel["type"] != "row" && panel["targets"].as_array().is_none_or(Vec::is_empty) {
            problems.push(format!("{title}: no queries"));
        }
        for source in sources.into_iter().filter(|s| !s.is_null()) {
            let uid = source["uid"].as_str().unwrap_or_default();
            let kind = source["type"].as_str().unwrap_or_default();
            match provisioned.get(uid) {
                Some(provisioned_kind) if provisioned_kind == kind => {}
                Some(provisioned_kind) => problems.push(format!(
                    "{title}: data source {uid} is a {provisioned_kind}, not a {kind}"
                )),
                None => problems.push(format!(
                    "{title}: data source uid {uid:?} is not provisioned"
                )),
            }
        }
    }
    problems
}

fn provisioned_datasources() -> BTreeMap<String, String> {
    at(&yaml(DATASOURCES), &["datasources"])
        .as_sequence()
        .expect("datasources")
        .iter()
        .map(|s| (text(at(s, &["uid"])), text(at(s, &["type"]))))
        .collect()
}

#[test]
fn dashboard_panels_have_unique_ids_and_provisioned_data_sources() {
    let dashboard = json(DASHBOARD);
    let provisioned = provisioned_datasources();
    let problems = panel_problems(&dashboard, &provisioned);
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));

    // and the check can fail
    let mut broken = dashboard.clone();
    broken["panels"][2]["id"] = broken["panels"][1]["id"].clone();
    broken["panels"][1]["targets"][0]["datasource"]["uid"] = "prom".into();
    let problems = panel_problems(&broken, &provisioned);
    assert!(
        problems.iter().any(|p| p.contains("duplicate id")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("\"prom\" is not provisioned")),
        "{problems:?}"
    );
}

#[test]
fn check_compose_script_is_executable() {
    let script = root().join("scripts/check-compose");
    let text = read("scripts/check-compose");
    assert!(text.starts_with("#!"));
    assert!(text.contains("docker-compose -f docker-compose.yml config -q"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&script)
            .expect("metadata")
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "scripts/check-compose is not executable");
    }
    #[cfg(not(unix))]
    assert!(script.is_file());
}
