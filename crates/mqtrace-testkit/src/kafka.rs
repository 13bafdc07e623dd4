//! Kafka for tests and local development: an embedded broker (librdkafka's mock cluster, a
//! real Kafka-protocol broker inside the process) or an external one.
//!
//! The mock cluster speaks the Kafka protocol on loopback ports, so any client (rdkafka,
//! kcat, Python) can use it. Things to know, measured with rdkafka 0.39:
//! - create topics with [`EmbeddedKafka::create_topic`]; the Admin API's CreateTopics is not
//!   supported by the mock broker;
//! - a consumer group takes about 3 s to get its assignment (use `assign` where the test is
//!   not about groups);
//! - each partition keeps only a few MiB: consume while producing, or spread large loads over
//!   partitions, or the oldest messages are gone before they are read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// Environment variable naming an external broker list to test against instead of the
/// embedded one.
pub const BOOTSTRAP_ENV: &str = "MQTRACE_KAFKA_BOOTSTRAP";

/// Errors from the Kafka fixtures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// librdkafka could not start the mock cluster.
    #[error("cannot start the embedded Kafka cluster: {0}")]
    Start(#[source] KafkaError),
    /// A mock-cluster operation failed.
    #[error("embedded Kafka: {operation} failed: {source}")]
    Mock {
        /// What was attempted.
        operation: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The thread that owns the mock cluster is gone.
    #[error("the embedded Kafka cluster has stopped")]
    Stopped,
    /// The external mock cluster's control port refused or could not be reached.
    #[error(transparent)]
    Control(#[from] crate::kafka_control::ControlError),
    /// Creating a topic on an external broker failed.
    #[error(
        "cannot create topic '{topic}' on {bootstrap}: {reason} (is the broker at {bootstrap} reachable? unset {BOOTSTRAP_ENV} to use the embedded one)"
    )]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker list.
        bootstrap: String,
        /// Why.
        reason: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

type Reply = mpsc::Sender<Result<(), KafkaError>>;

enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: Reply,
    },
    BrokerDown {
        broker: i32,
        reply: Reply,
    },
    BrokerUp {
        broker: i32,
        reply: Reply,
    },
    RequestErrors {
        api: RDKafkaApiKey,
        errors: Vec<RDKafkaRespErr>,
        reply: Reply,
    },
    ClearRequestErrors {
        api: RDKafkaApiKey,
        reply: Reply,
    },
    Stop,
}

/// An embedded Kafka cluster (librdkafka's mock cluster) owned by a background thread, so
/// the handle is `Send + Sync` and can live in a test's state or a server's.
///
/// # Example
///
/// ```
/// use mqtrace_testkit::kafka::EmbeddedKafka;
///
/// let kafka = EmbeddedKafka::start(1)?;
/// kafka.create_topic("requests", 3)?;
/// assert!(kafka.bootstrap_servers().contains(':'));
/// # Ok::<_, mqtrace_testkit::kafka::Error>(())
/// ```
#[derive(Debug)]
pub struct EmbeddedKafka {
    bootstrap: String,
    brokers: i32,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a cluster of `brokers` brokers on ephemeral loopback ports.
    pub fn start(brokers: i32) -> Result<Self> {
        let (commands, inbox) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, KafkaError>>();
        let thread = std::thread::Builder::new()
            .name("mqtrace-embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(cluster) => cluster,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                serve(&cluster, &inbox);
            })
            .map_err(|e| Error::Mock {
                operation: "spawning its thread".into(),
                source: KafkaError::ClientCreation(e.to_string()),
            })?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| Error::Stopped)?
            .map_err(Error::Start)?;
        Ok(Self {
            bootstrap,
            brokers,
            commands,
            thread: Some(thread),
        })
    }

    /// The `bootstrap.servers` list, e.g. `127.0.0.1:40123`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The number of brokers (their ids are `1..=brokers`).
    pub fn brokers(&self) -> i32 {
        self.brokers
    }

    fn call(&self, operation: String, make: impl FnOnce(Reply) -> Command) -> Result<()> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| Error::Stopped)?;
        answer
            .recv()
            .map_err(|_| Error::Stopped)?
            .map_err(|source| Error::Mock { operation, source })
    }

    /// Creates `name` with `partitions` partitions (replication factor 1).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let owned = name.to_owned();
        self.call(format!("creating topic '{name}'"), |reply| {
            Command::CreateTopic {
                name: owned,
                partitions,
                reply,
            }
        })
    }

    /// Takes broker `broker` down: its connections are closed and it refuses new ones.
    pub fn broker_down(&self, broker: i32) -> Result<()> {
        self.call(format!("taking broker {broker} down"), |reply| {
            Command::BrokerDown { broker, reply }
        })
    }

    /// Brings broker `broker` back up.
    pub fn broker_up(&self, broker: i32) -> Result<()> {
        self.call(format!("bringing broker {broker} up"), |reply| {
            Command::BrokerUp { broker, reply }
        })
    }

    /// Makes the next requests of kind `api` fail with `errors`, one per request, in order.
    pub fn push_request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) -> Result<()> {
        let errors = errors.to_vec();
        self.call(format!("injecting {api:?} errors"), |reply| {
            Command::RequestErrors { api, errors, reply }
        })
    }

    /// Forgets errors injected for `api`.
    pub fn clear_request_errors(&self, api: RDKafkaApiKey) -> Result<()> {
        self.call(format!("clearing {api:?} errors"), |reply| {
            Command::ClearRequestErrors { api, reply }
        })
    }
}

fn serve(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    inbox: &mpsc::Receiver<Command>,
) {
    while let Ok(command) = inbox.recv() {
        match command {
            Command::CreateTopic {
                name,
                partitions,
                reply,
            } => {
                let _ = reply.send(cluster.create_topic(&name, partitions, 1));
            }
            Command::BrokerDown { broker, reply } => {
                let _ = reply.send(cluster.broker_down(broker));
            }
            Command::BrokerUp { broker, reply } => {
                let _ = reply.send(cluster.broker_up(broker));
            }
            Command::RequestErrors { api, errors, reply } => {
                cluster.request_errors(api, &errors);
                let _ = reply.send(Ok(()));
            }
            Command::ClearRequestErrors { api, reply } => {
                cluster.clear_request_errors(api);
                let _ = reply.send(Ok(()));
            }
            Command::Stop => return,
        }
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A name no other test (in this or another process) will use: `{prefix}-{pid}-{n}-{nanos}`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The broker a test runs against: the one named by `MQTRACE_KAFKA_BOOTSTRAP`, or an
/// embedded cluster started for the test.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), mqtrace_testkit::kafka::Error> {
/// use mqtrace_testkit::kafka::KafkaFixture;
///
/// let kafka = KafkaFixture::start()?;
/// let topic = kafka.create_topic("orders", 1).await?;
/// let producer_config = kafka.producer_config();
/// # let _ = (topic, producer_config); Ok(()) }
/// ```
#[derive(Debug)]
pub struct KafkaFixture {
    bootstrap: String,
    control: Option<String>,
    embedded: Option<EmbeddedKafka>,
}

impl KafkaFixture {
    /// Uses `MQTRACE_KAFKA_BOOTSTRAP` when set (see [`KafkaFixture::external`]), else starts
    /// a one-broker embedded cluster.
    pub fn start() -> Result<Self> {
        match std::env::var(BOOTSTRAP_ENV) {
            Ok(bootstrap) if !bootstrap.trim().is_empty() => Ok(Self::external(&bootstrap)),
            _ => Self::embedded(1),
        }
    }

    /// Uses the external broker list `bootstrap`. Topics are created with the Admin API, or,
    /// when `MQTRACE_KAFKA_CONTROL` is set, through that control port of an `mqtrace
    /// mock-kafka` process (see [`crate::kafka_control`]).
    pub fn external(bootstrap: &str) -> Self {
        let control = std::env::var(crate::kafka_control::CONTROL_ENV)
            .ok()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty());
        Self {
            bootstrap: bootstrap.trim().to_owned(),
            control,
            embedded: None,
        }
    }

    /// Creates topics through the control port at `addr` (`HOST:PORT`) instead of the Admin
    /// API.
    pub fn with_control(mut self, addr: &str) -> Self {
        self.control = Some(addr.trim().to_owned());
        self
    }

    /// Always starts an embedded cluster of `brokers` brokers (for fault tests that need to
    /// control the broker).
    pub fn embedded(brokers: i32) -> Result<Self> {
        let kafka = EmbeddedKafka::start(brokers)?;
        Ok(Self {
            bootstrap: kafka.bootstrap_servers().to_owned(),
            control: None,
            embedded: Some(kafka),
        })
    }

    /// The `bootstrap.servers` list.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The embedded cluster, when the fixture runs one.
    pub fn embedded_cluster(&self) -> Option<&EmbeddedKafka> {
        self.embedded.as_ref()
    }

    /// Creates a topic with a unique name starting with `prefix` and returns the name.
    pub async fn create_topic(&self, prefix: &str, partitions: i32) -> Result<String> {
        let topic = unique_name(prefix);
        match &self.embedded {
            Some(kafka) => kafka.create_topic(&topic, partitions)?,
            None => self.create_external_topic(&topic, partitions).await?,
        }
        Ok(topic)
    }

    /// Creates `name` as is (no unique suffix), for demos and tools with a fixed topology.
    /// On an external broker an existing topic of that name is fine.
    pub async fn create_named_topic(&self, name: &str, partitions: i32) -> Result<()> {
        match &self.embedded {
            Some(kafka) => kafka.create_topic(name, partitions),
            None => self.create_external_topic(name, partitions).await,
        }
    }

    async fn create_external_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        if let Some(control) = &self.control {
            crate::kafka_control::request(control, &format!("create-topic {topic} {partitions}"))
                .await?;
            return Ok(());
        }
        let failed = |reason: String| Error::CreateTopic {
            topic: topic.to_owned(),
            bootstrap: self.bootstrap.clone(),
            reason,
        };
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .map_err(|e| failed(e.to_string()))?;
        let options =
            AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &options,
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(failed(format!("{code:?}"))),
            }
        }
        Ok(())
    }

    /// Client settings shared by producers and consumers in tests.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// Producer settings: acks=all, fast batching.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000");
        config
    }

    /// Consumer settings for `group`: earliest offsets, manual commits, and fetches that
    /// return within 10 ms (librdkafka's mock cluster answers a fetch only when
    /// `fetch.wait.max.ms` runs out, 500 ms by default, even when data is there: `mqtrace
    /// journeys` showed it as half of every request's latency).
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", "10");
        config
    }
}
