//! Kafka for tests and local development: an embedded broker (librdkafka's mock cluster, a
//! real Kafka-protocol broker inside the process) or an external one.
//!
//! The mock cluster speaks the Kafka protocol on loopback ports, so any client (rdkafka,
//! kcat, Python) can use it. Things to know, measured with rdkafka 0.39:
//! - create topics with [`EmbeddedKafka::create_topic`]; the Admin API's CreateTopics is not
//!   supported by the mock broker (it times out), but its Metadata requests work, and a
//!   producer's auto-creates a topic with 4 partitions;
//! - a consumer group takes about 3 s to get its assignment (use `assign` where the test is
//!   not about groups);
//! - each partition keeps only a few MiB: consume while producing, or spread large loads over
//!   partitions, or the oldest messages are gone before they are read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::types::{RDKafkaApiKey, RDKafkaErrorCode, RDKafkaRespErr};

/// Environment variable naming an external broker list to test against instead of the
/// embedded one.
pub const BOOTSTRAP_ENV: &str = "MQTRACE_KAFKA_BOOTSTRAP";

/// How long [`KafkaFixture`] waits for an external broker to answer a metadata request
/// before it reports the broker unreachable.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a CreateTopics request to an external broker may take. The mock broker never
/// answers one (it has no Admin API), so this is also how long finding that out takes.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The external broker did not answer a metadata request in time.
    #[error(
        "cannot reach the Kafka broker at {bootstrap} within {} s: {reason} (is it running, and is {bootstrap} its address? check --bootstrap or {BOOTSTRAP_ENV})",
        REACH_TIMEOUT.as_secs()
    )]
    Unreachable {
        /// The broker list.
        bootstrap: String,
        /// librdkafka's error.
        reason: String,
    },
    /// Creating a topic on an external broker failed.
    #[error(
        "cannot create topic '{topic}' on {bootstrap}: {reason} (an `mqtrace mock-kafka` has no Admin API: set {} to the control= address it printed; on another broker, create the topic with its tools)",
        crate::kafka_control::CONTROL_ENV
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

impl Error {
    /// Whether this says that the topic to be created exists already.
    pub fn is_topic_exists(&self) -> bool {
        matches!(
            self,
            Error::Mock {
                source: KafkaError::MockCluster(RDKafkaErrorCode::TopicAlreadyExists),
                ..
            }
        )
    }
}

/// A topic [`KafkaFixture::create_named_topic`] made sure of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamedTopic {
    /// Its partitions: as asked for when it was created; as they are when it existed (an
    /// existing topic is used as it is, never given more partitions: that would move keys
    /// to other partitions), or the broker's default when the broker auto-created it.
    pub partitions: i32,
    /// Whether it was created now (it did not exist).
    pub created: bool,
}

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
    /// Set once a CreateTopics request timed out: the broker has no Admin API.
    admin_unsupported: AtomicBool,
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
            admin_unsupported: AtomicBool::new(false),
        }
    }

    /// Creates topics through the control port at `addr` (`HOST:PORT`) instead of the Admin
    /// API.
    pub fn with_control(mut self, addr: &str) -> Self {
        self.control = Some(addr.trim().to_owned());
        self
    }

    /// Creates topics with the Admin API even when `MQTRACE_KAFKA_CONTROL` is set.
    pub fn without_control(mut self) -> Self {
        self.control = None;
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
            admin_unsupported: AtomicBool::new(false),
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
        self.create_named_topic(&topic, partitions).await?;
        Ok(topic)
    }

    /// Makes sure topic `name` (no unique suffix, for demos and tools with a fixed topology)
    /// exists: an existing topic is used as it is, whatever its partition count (compare
    /// [`NamedTopic::partitions`] with what you asked for), so a job can run again and again
    /// against one broker.
    ///
    /// On an external broker, a metadata request comes first: a broker that does not answer
    /// within [`REACH_TIMEOUT`] is [`Error::Unreachable`]. A missing topic is then created
    /// through the control port when there is one, else with the Admin API, else (a broker
    /// without an Admin API, such as `mqtrace mock-kafka`) by asking the broker to auto-create
    /// it, with its default partition count.
    pub async fn create_named_topic(&self, name: &str, partitions: i32) -> Result<NamedTopic> {
        let created = NamedTopic {
            partitions,
            created: true,
        };
        match &self.embedded {
            Some(kafka) => match kafka.create_topic(name, partitions) {
                Ok(()) => Ok(created),
                Err(error) if error.is_topic_exists() => self.existing_topic(name).await,
                Err(error) => Err(error),
            },
            None => {
                if let Some(&partitions) = self.topic_partitions().await?.get(name) {
                    return Ok(NamedTopic {
                        partitions,
                        created: false,
                    });
                }
                match &self.control {
                    Some(control) => {
                        let note = crate::kafka_control::request(
                            control,
                            &format!("create-topic {name} {partitions}"),
                        )
                        .await?;
                        if note == crate::kafka_control::TOPIC_EXISTS {
                            self.existing_topic(name).await
                        } else {
                            Ok(created)
                        }
                    }
                    None => self.create_with_admin(name, partitions).await,
                }
            }
        }
    }

    /// The partition count of every topic on the broker, from a metadata request.
    async fn topic_partitions(&self) -> Result<HashMap<String, i32>> {
        let config = self.client_config();
        let bootstrap = self.bootstrap.clone();
        let unreachable = move |reason: String| Error::Unreachable {
            bootstrap: bootstrap.clone(),
            reason,
        };
        let metadata = tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = config.create()?;
            client.fetch_metadata(None, REACH_TIMEOUT)
        })
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .map_err(|e| unreachable(e.to_string()))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|topic| topic.error().is_none())
            .map(|topic| {
                let partitions = i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX);
                (topic.name().to_owned(), partitions)
            })
            .collect())
    }

    /// `name` as it is on the broker, which said it exists.
    async fn existing_topic(&self, name: &str) -> Result<NamedTopic> {
        match self.topic_partitions().await?.get(name) {
            Some(&partitions) => Ok(NamedTopic {
                partitions,
                created: false,
            }),
            None => Err(Error::CreateTopic {
                topic: name.to_owned(),
                bootstrap: self.bootstrap.clone(),
                reason: "the broker said it exists, but its metadata does not list it".to_owned(),
            }),
        }
    }

    async fn create_with_admin(&self, topic: &str, partitions: i32) -> Result<NamedTopic> {
        let failed = |reason: String| Error::CreateTopic {
            topic: topic.to_owned(),
            bootstrap: self.bootstrap.clone(),
            reason,
        };
        if !self.admin_unsupported.load(Ordering::Relaxed) {
            let admin: AdminClient<DefaultClientContext> = self
                .client_config()
                .create()
                .map_err(|e| failed(e.to_string()))?;
            let options = AdminOptions::new()
                .request_timeout(Some(ADMIN_TIMEOUT))
                .operation_timeout(Some(ADMIN_TIMEOUT));
            let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
            match admin.create_topics(&[new_topic], &options).await {
                Ok(results) => match results.into_iter().next() {
                    Some(Ok(_)) | None => {
                        return Ok(NamedTopic {
                            partitions,
                            created: true,
                        });
                    }
                    Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
                        return self.existing_topic(topic).await;
                    }
                    Some(Err((_, code))) => return Err(failed(format!("{code:?}"))),
                },
                // No answer: a broker without the Admin API (the mock broker), or one too
                // busy to create topics. Either way, try auto-creation.
                Err(KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut)) => {
                    self.admin_unsupported.store(true, Ordering::Relaxed);
                }
                Err(error) => return Err(failed(error.to_string())),
            }
        }
        self.auto_create(topic).await?;
        match self.topic_partitions().await?.get(topic) {
            Some(&partitions) => Ok(NamedTopic {
                partitions,
                created: true,
            }),
            None => Err(failed(format!(
                "CreateTopics got no answer within {} s and the broker did not auto-create it",
                ADMIN_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Asks the broker to auto-create `topic`: a producer's metadata request for it.
    async fn auto_create(&self, topic: &str) -> Result<()> {
        let config = self.client_config();
        let name = topic.to_owned();
        let failed = |reason: String| Error::CreateTopic {
            topic: topic.to_owned(),
            bootstrap: self.bootstrap.clone(),
            reason,
        };
        tokio::task::spawn_blocking(move || {
            let producer: BaseProducer = config.create()?;
            producer.client().fetch_metadata(Some(&name), REACH_TIMEOUT)
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map(drop)
        .map_err(|e| failed(format!("auto-creation: {e}")))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kafka_control::ControlServer;

    fn served() -> (Arc<EmbeddedKafka>, ControlServer) {
        let kafka = Arc::new(EmbeddedKafka::start(1).expect("kafka"));
        let addr = "127.0.0.1:0".parse().expect("addr");
        let control = ControlServer::spawn(kafka.clone(), addr).expect("control");
        (kafka, control)
    }

    #[tokio::test]
    async fn a_named_topic_is_created_once_and_reused_as_it_is_after() {
        let (kafka, control) = served();
        let fixture = KafkaFixture::external(kafka.bootstrap_servers())
            .with_control(&control.local_addr().to_string());
        let first = fixture
            .create_named_topic("orders", 3)
            .await
            .expect("create");
        assert_eq!(
            first,
            NamedTopic {
                partitions: 3,
                created: true
            }
        );
        let again = fixture
            .create_named_topic("orders", 6)
            .await
            .expect("reuse");
        assert_eq!(
            again,
            NamedTopic {
                partitions: 3,
                created: false
            },
            "an existing topic is used as it is, and says how many partitions it has"
        );
        // The embedded fixture's own cluster too.
        let embedded = KafkaFixture::embedded(1).expect("embedded");
        embedded.create_named_topic("t", 2).await.expect("create");
        let again = embedded.create_named_topic("t", 2).await.expect("reuse");
        assert!(!again.created);
        assert_eq!(again.partitions, 2);
    }

    #[tokio::test]
    async fn without_a_control_port_topics_come_from_the_admin_api_or_auto_creation() {
        let (kafka, _control) = served();
        kafka.create_topic("existing", 2).expect("create");
        let fixture = KafkaFixture::external(kafka.bootstrap_servers()).without_control();
        let existing = fixture
            .create_named_topic("existing", 4)
            .await
            .expect("reuse");
        assert_eq!(
            existing,
            NamedTopic {
                partitions: 2,
                created: false
            }
        );
        // The mock broker has no Admin API: the topic is auto-created, with its default count.
        let fresh = fixture
            .create_named_topic("fresh", 1)
            .await
            .expect("create");
        assert!(fresh.created);
        assert_eq!(fresh.partitions, 4);
        let again = fixture.create_named_topic("fresh", 1).await.expect("reuse");
        assert!(!again.created);
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_reported_with_its_address() {
        // A port nothing listens on: bind one, then free it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let fixture = KafkaFixture::external(&addr.to_string()).without_control();
        let error = fixture
            .create_named_topic("requests", 1)
            .await
            .expect_err("nothing listens there");
        assert!(matches!(error, Error::Unreachable { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("cannot reach"), "{message}");
    }
}
