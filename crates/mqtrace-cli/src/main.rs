//! The `mqtrace` command.
//!
//! - `mqtrace mock-kafka`: a zero-install Kafka for local development. It runs librdkafka's
//!   mock cluster (a real Kafka-protocol broker) in this process, prints
//!   `bootstrap=HOST:PORT[,...]` as its first line of standard output and
//!   `control=HOST:PORT` as its second (the port where other processes create topics, see
//!   `mqtrace_testkit::kafka_control`), and serves any Kafka client (rdkafka, kcat, Python)
//!   until Ctrl-C, SIGTERM or `--duration`.
//! - `mqtrace journeys [FILE|DIR]...`: each request's journey rebuilt from exported OTLP-JSON
//!   traces (see [`mqtrace_cli::journeys`]): whether spans were dropped (from the metrics
//!   beside the traces, or `--metrics FILE`), a stage table, the slowest requests, the broken
//!   and the incomplete ones; `--json` for machines, `--html PATH` for a page with a timeline.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mqtrace_cli::journeys::{
    MAX_ROWS, MetricSet, Report, SpanSet, metrics_beside, rebuild_with, render_html,
};
use mqtrace_testkit::kafka::EmbeddedKafka;
use mqtrace_testkit::kafka_control::ControlServer;

#[derive(Debug, Parser)]
#[command(
    name = "mqtrace",
    version,
    about = "Tools for keeping traces unbroken across message queues"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an embedded Kafka broker (librdkafka's mock cluster) for local development.
    MockKafka(MockKafkaArgs),
    /// Rebuild each request's journey (queue, batch, model, reply) from exported traces.
    Journeys(JourneysArgs),
}

#[derive(Debug, clap::Args)]
struct JourneysArgs {
    /// OTLP-JSON lines files, or directories holding them (traces*.jsonl, Collector file
    /// exporter output).
    #[arg(default_value = "telemetry")]
    paths: Vec<PathBuf>,
    /// OTLP-JSON metrics files holding `mqtrace.telemetry.spans.dropped` (and the producers'
    /// `messaging.client.sent.messages`); repeatable. Default: the `metrics*.jsonl` beside
    /// each traces path.
    #[arg(long, value_name = "FILE")]
    metrics: Vec<PathBuf>,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML page with a timeline of the slowest requests.
    #[arg(long, value_name = "PATH")]
    html: Option<PathBuf>,
    /// How many of the slowest requests to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

#[derive(Debug, clap::Args)]
struct MockKafkaArgs {
    /// Number of brokers in the cluster.
    #[arg(long, default_value_t = 1)]
    brokers: i32,
    /// Topics to create up front, comma-separated (clients may also auto-create topics).
    #[arg(long, value_delimiter = ',')]
    topics: Vec<String>,
    /// Partitions for each topic created with --topics.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    duration: Option<u64>,
    /// Where to serve control commands (create-topic, broker-down, broker-up); port 0 picks
    /// a free port. Printed as the second line, `control=HOST:PORT`.
    #[arg(long, default_value = "127.0.0.1:0")]
    control: std::net::SocketAddr,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::MockKafka(args) => mock_kafka(args),
        Command::Journeys(args) => journeys(args),
    }
}

fn journeys(args: JourneysArgs) -> Result<()> {
    let mut spans = SpanSet::new();
    for path in &args.paths {
        spans.read_path(path)?;
    }
    for error in spans.errors.iter().take(10) {
        eprintln!("mqtrace journeys: skipped {error}");
    }
    if spans.errors.len() > 10 {
        eprintln!(
            "mqtrace journeys: ... and {} more unreadable lines",
            spans.errors.len() - 10
        );
    }
    let metrics = read_metrics(&args)?;
    let journeys = rebuild_with(&spans, &metrics.dropped_spans());
    // The HTML page shows up to MAX_ROWS of the slowest requests, whatever --top says; the
    // listing then keeps the --top slowest of them.
    let mut report =
        Report::new(&journeys, &spans.errors, args.top.max(MAX_ROWS)).with_metrics(&metrics);
    if let Some(path) = &args.html {
        let source = args
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(path, render_html(&report, &source))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("mqtrace journeys: wrote {}", path.display());
    }
    report.slowest.truncate(args.top);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_text());
    }
    if journeys.journeys.is_empty() && report.requests() > 0 {
        eprintln!(
            "mqtrace journeys: the producers' metrics count {} requests, but none left a span to rebuild it from (unsampled, or every span dropped)",
            report.requests()
        );
    } else if journeys.journeys.is_empty() {
        eprintln!(
            "mqtrace journeys: no requests found: no PRODUCER span goes to a destination that a batch span (CONSUMER with messaging.batch.message_count) consumes"
        );
    }
    Ok(())
}

/// The metrics named with `--metrics`, else those beside the traces paths.
fn read_metrics(args: &JourneysArgs) -> Result<MetricSet> {
    let files: Vec<PathBuf> = if args.metrics.is_empty() {
        args.paths.iter().flat_map(|p| metrics_beside(p)).collect()
    } else {
        args.metrics.clone()
    };
    let mut metrics = MetricSet::new();
    for file in &files {
        metrics.read_file(file)?;
    }
    for error in metrics.errors.iter().take(10) {
        eprintln!("mqtrace journeys: skipped {error}");
    }
    Ok(metrics)
}

fn mock_kafka(args: MockKafkaArgs) -> Result<()> {
    if args.brokers < 1 {
        bail!("--brokers must be at least 1 (got {})", args.brokers);
    }
    if args.partitions < 1 {
        bail!("--partitions must be at least 1 (got {})", args.partitions);
    }
    let kafka = std::sync::Arc::new(
        EmbeddedKafka::start(args.brokers).context("starting the embedded Kafka cluster")?,
    );
    for topic in args
        .topics
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
    {
        kafka
            .create_topic(topic, args.partitions)
            .with_context(|| format!("creating topic '{topic}'"))?;
    }
    let control = ControlServer::spawn(kafka.clone(), args.control)
        .context("starting the control port (--control)")?;
    // Both lines in one write. A reader that only wanted the first line may have closed the
    // pipe already: that must not stop the broker, so write errors are ignored.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(
            format!(
                "bootstrap={}\ncontrol={}\n",
                kafka.bootstrap_servers(),
                control.local_addr()
            )
            .as_bytes(),
        )
        .and_then(|()| stdout.flush());
    drop(stdout);
    eprintln!(
        "mqtrace mock-kafka: {} broker(s) at {}, control port {}; {}",
        args.brokers,
        kafka.bootstrap_servers(),
        control.local_addr(),
        match args.duration {
            Some(secs) => format!("stopping in {secs} s"),
            None => "press Ctrl-C to stop".to_owned(),
        }
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    runtime.block_on(async {
        match args.duration {
            Some(secs) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                    signal = tokio::signal::ctrl_c() => signal.context("waiting for Ctrl-C")?,
                }
            }
            None => {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("waiting for SIGTERM")?;
                tokio::select! {
                    _ = term.recv() => {}
                    signal = tokio::signal::ctrl_c() => signal.context("waiting for Ctrl-C")?,
                }
            }
        }
        anyhow::Ok(())
    })?;
    drop(control);
    drop(kafka);
    eprintln!("mqtrace mock-kafka: stopped");
    Ok(())
}
